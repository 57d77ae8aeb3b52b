"""`python -m reproduce temperature`: the learning rate (and the batch) as a temperature.

(a) Theory on a quadratic. SGD on least squares, L(w) = E[(x.w - y)^2] / 2 with y = x.w* + noise
    (std sigma) and x ~ N(0, H), has per-example gradient-noise covariance C = sigma^2 H at the
    optimum. A minibatch of B drawn with replacement divides it by B. For small lr the iterates
    settle into a stationary distribution whose covariance S solves the Lyapunov equation
    H S + S H = lr C / B (Mandt, Hoffman & Blei 2017, "Stochastic Gradient Descent as Approximate
    Bayesian Inference", Eq. 10 with A = H, BB^T = C/B), so S = lr sigma^2 / (2B) I and the
    excess loss is tr(H S) / 2 = lr tr(C) / (4B): proportional to lr / B, the temperature.
    We measure the stationary excess loss over a grid of lr and B and fit the slope of
    log(excess) against log(lr / B), which the formula predicts to be 1.
(b) Heating and cooling a ResNet: the lr steps between a high and a low value (sweep.cycle);
    the training loss drops on cooling and climbs back on heating, to the same level each time.
    That is a claim about stationary levels, so the cycle must start from a net at its noise
    floor and each period must last until the loss stops drifting: a repeated multiplier in
    sweep.cycle lengthens a period (lr_periods). Each period's level is reported with its scatter
    and its drift (phase_level), so that a period that has not settled shows as such.
(c) Batch size as temperature: at a fixed lr a larger batch settles lower; with lr proportional
    to B (the linear scaling rule) runs at different B follow one curve against examples seen.
    Both statements hold at equal SDE time t = lr x iterations (Mandt et al. 2017; Smith & Le
    2018): lr proportional to B gives equal t at equal examples, but a fixed lr gives equal t only
    at equal iterations, so the fixed-lr runs are compared at common iteration counts.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from omegaconf import OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from .config import for_model
from .loggers import read_metrics


# ------------------------------------------------------------------------------------------
# (a) the quadratic


def quadratic_excess(lr: float, batch: int, dim: int, sigma: float, eigs: torch.Tensor, steps: int,
                     chains: int, seed: int = 0) -> float:
    """Stationary excess loss of minibatch SGD on least squares, averaged over the second half of
    `steps` and over `chains` independent chains (drawn fresh each step: an infinite dataset)."""
    g = torch.Generator().manual_seed(seed)
    sqrt_h = eigs.sqrt()
    delta = torch.zeros(chains, dim, dtype=torch.float64)  # w - w*, starting at the optimum
    total, count = 0.0, 0
    for step in range(steps):
        x = torch.randn(chains, batch, dim, generator=g, dtype=torch.float64) * sqrt_h  # x ~ N(0, H)
        noise = torch.randn(chains, batch, generator=g, dtype=torch.float64) * sigma
        residual = torch.einsum("cbd,cd->cb", x, delta) - noise  # x.w - y
        grad = torch.einsum("cb,cbd->cd", residual, x) / batch
        delta -= lr * grad
        if step >= steps // 2:
            total += float((0.5 * (delta ** 2 * eigs).sum(1)).mean())
            count += 1
    return total / count


def predicted_excess(lr: float, batch: int, sigma: float, eigs: torch.Tensor) -> float:
    """lr tr(C) / (4B) with C = sigma^2 H (Mandt et al. 2017; small-lr limit)."""
    return lr * sigma ** 2 * float(eigs.sum()) / (4 * batch)


def fit_slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares slope of y on x and its standard error."""
    a = np.vstack([x, np.ones_like(x)]).T
    coef, res, *_ = np.linalg.lstsq(a, y, rcond=None)
    dof = max(len(x) - 2, 1)
    resid = y - a @ coef
    se = math.sqrt((resid @ resid) / dof / ((x - x.mean()) ** 2).sum())
    return float(coef[0]), se


def run_quadratic(sweep, out_dir: Path) -> dict:
    lo, hi = sweep.quadratic_eig_range
    eigs = torch.logspace(math.log10(lo), math.log10(hi), sweep.quadratic_dim, dtype=torch.float64)
    rows = []
    for lr in sweep.quadratic_lrs:
        for b in sweep.quadratic_batches:
            measured = quadratic_excess(lr, b, sweep.quadratic_dim, sweep.quadratic_noise, eigs,
                                        sweep.quadratic_steps, sweep.quadratic_chains)
            predicted = predicted_excess(lr, b, sweep.quadratic_noise, eigs)
            rows.append({"lr": lr, "batch": b, "temperature": lr / b, "measured": measured,
                         "predicted": predicted, "ratio": measured / predicted})
    t = np.log([r["temperature"] for r in rows])
    slope, se = fit_slope(t, np.log([r["measured"] for r in rows]))
    result = {"rows": rows, "slope": slope, "slope_se": se, "lr_max_eig": max(sweep.quadratic_lrs) * hi,
              "slope_within_10pct": abs(slope - 1) <= 0.1}
    (out_dir / "quadratic.json").write_text(json.dumps(result, indent=1))
    return result


# ------------------------------------------------------------------------------------------
# (b), (c): ResNet runs


def plateau(points: List[tuple], start: int, end: int, tail: float = 0.3) -> float:
    """Mean of the values logged in the last `tail` fraction of [start, end]."""
    return phase_level(points, start, end, tail)["level"]


def phase_level(points: List[tuple], start: int, end: int, tail: float = 0.3) -> dict:
    """The level a curve settles at in the last `tail` fraction of [start, end], and whether it has settled.

    level: mean of the points there; sd: scatter of one point about the line fitted to them (n - 2
    degrees of freedom); drift: the change of that line across the window (its slope x the window's
    length), drift_se its standard error. A phase has stopped drifting when |drift| is below sd (the
    trend across the window is smaller than the scatter of one logged point) or below 3 drift_se (no
    trend distinguishable from the scatter): the mean is then a level, not a snapshot of a descent.
    """
    lo = end - (end - start) * tail
    pts = np.array([(x, v) for x, v in points if lo < x <= end], dtype=float)
    if len(pts) < 3:
        level = float(pts[:, 1].mean()) if len(pts) else float("nan")
        return {"level": level, "sd": float("nan"), "drift": float("nan"), "drift_se": float("nan"), "n": len(pts),
                "settled": False}
    slope, icpt = np.polyfit(pts[:, 0], pts[:, 1], 1)
    resid = pts[:, 1] - (slope * pts[:, 0] + icpt)
    sd = float(np.sqrt((resid ** 2).sum() / (len(pts) - 2)))
    span = pts[-1, 0] - pts[0, 0]
    drift = float(slope * span)
    drift_se = float(sd * span / np.sqrt(((pts[:, 0] - pts[:, 0].mean()) ** 2).sum()))
    return {"level": float(pts[:, 1].mean()), "sd": sd, "drift": drift, "drift_se": drift_se, "n": len(pts),
            "settled": abs(drift) < max(sd, 3 * drift_se)}


def lr_periods(bounds: List[int], lrs: List[float]) -> List[tuple]:
    """Merge consecutive schedule phases at the same lr into one period: (start, end, lr) each.

    sweep.cycle lists one lr multiplier per equal-length phase, so a repeated multiplier makes a
    longer period: [1, 1, 0.1, 0.1, 0.1, 0.1, ...] holds the hot lr for 2 phases and the cold lr
    for 4 (the cold lr needs more iterations to cover the same SDE time lr x iterations).
    """
    out = []
    for i, lr in enumerate(lrs):
        if out and out[-1][2] == lr:
            out[-1] = (out[-1][0], bounds[i + 1], lr)
        else:
            out.append((bounds[i], bounds[i + 1], lr))
    return out


def cycle_verdicts(levels: List[dict], states: List[str]) -> List[dict]:
    """The claims of (b) on per-period levels (phase_level dicts) and their states (hot / cold).

    Each cooling lowers and each heating raises the level by more than the scatter; every period has
    stopped drifting (the first one too: the cycle must start from a net at its noise floor); all hot
    periods sit at one level and all cold periods at another, within the scatter of one point (the
    largest sd of the periods compared).
    """
    out = []
    idx = list(range(len(levels)))
    for i, j in zip(idx, idx[1:]):
        if states[i] == states[j]:
            continue
        a, b = levels[i], levels[j]
        expected = -1 if states[j] == "cold" else 1
        change = b["level"] - a["level"]
        tol = max(a["sd"], b["sd"])
        out.append({"claim": f"period {i + 1} → {j + 1} ({states[i]} → {states[j]}): level "
                             f"{'falls' if expected < 0 else 'rises'} by more than the scatter",
                    "holds": change * expected > tol,
                    "numbers": f"{a['level']:.3f} → {b['level']:.3f} ({change:+.3f}; scatter {tol:.3f})"})
    unsettled = [f"period {i + 1} drifts {levels[i]['drift']:+.3f} (sd {levels[i]['sd']:.3f}, se "
                 f"{levels[i]['drift_se']:.3f})" for i in idx
                 if not levels[i]["settled"]]
    out.append({"claim": "every period has stopped drifting (|drift over the last 30%| < max(sd, 3 se))",
                "holds": not unsettled,
                "numbers": "; ".join(unsettled) if unsettled else "all settled"})
    for state in ("hot", "cold"):
        same = [i for i in idx if states[i] == state]
        if len(same) < 2:
            continue
        vals = [levels[i]["level"] for i in same]
        tol = max(levels[i]["sd"] for i in same)
        out.append({"claim": f"the {state} periods ({', '.join(str(i + 1) for i in same)}) return to one level, within "
                             f"the scatter", "holds": max(vals) - min(vals) <= tol,
                    "numbers": f"{', '.join(f'{v:.3f}' for v in vals)}: spread {max(vals) - min(vals):.3f}, "
                               f"scatter {tol:.3f}"})
    return out


def temperature_plans(cfg) -> List[tuple]:
    model = cfg.models[0]
    base = for_model(cfg, model, cfg.seed)
    plans = []
    s = base.schedule
    # (b) heat/cool: equal phases, the lr multiplied by sweep.cycle[i] in phase i, no scaling
    n = len(cfg.sweep.cycle)
    cycle = OmegaConf.merge(base, {"schedule": {"cycle": list(cfg.sweep.cycle), "scaling": "none",
                                                "milestones": [s.max_steps * i // n for i in range(1, n)]}})
    plans.append((f"cycle-{model}", cycle))
    # (c) at a fixed lr (no scaling) and with lr proportional to B (linear): same examples seen
    for rule in ("none", "linear"):
        for b in cfg.sweep.batches:
            if b == s.ref_batch and rule == "linear":
                continue  # at the reference batch both rules give the same run
            run = OmegaConf.merge(base, {"data": {"batch_size": b}, "schedule": {"scaling": rule, "milestones": []}})
            suffix = "ref" if b == s.ref_batch else ("fixed-lr" if rule == "none" else "linear")
            plans.append((f"batch{b}-{suffix}", run))
    return plans


def run_temperature(cfg, exp_dir: Path, group: str) -> Dict[str, Path]:
    from .experiments import run_plans
    if rank_zero_only.rank == 0 and not cfg.only:
        quad = run_quadratic(cfg.sweep, exp_dir)
        print(f"quadratic: slope of log(excess) on log(lr/B) = {quad['slope']:.3f} ± {quad['slope_se']:.3f} "
              f"(theory: 1)", flush=True)
    plans = temperature_plans(cfg)
    run_plans(cfg, plans, exp_dir, group)
    if rank_zero_only.rank != 0 or cfg.only:
        return {}
    quad = json.loads((exp_dir / "quadratic.json").read_text())
    runs = {name: {"cfg": run_cfg, "metrics": read_metrics(exp_dir / name / "metrics.csv")
                   if (exp_dir / name / "metrics.csv").exists() else {}} for name, run_cfg in plans}
    from .report_temperature import temperature_report
    return temperature_report(cfg, exp_dir, group, quad, runs)
