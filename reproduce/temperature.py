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
from .sweep import run_plans
from .report_temperature import temperature_report
from .runs import read_metrics


# ------------------------------------------------------------------------------------------
# (a) the quadratic


def quadratic_excess(lr, batch: int, dim: int, sigma: float, eigs: torch.Tensor, steps: int,
                     chains: int, seed: int = 0):
    """Stationary excess loss of minibatch SGD on least squares, averaged over the second half of
    `steps` and over `chains` independent chains (drawn fresh each step: an infinite dataset).

    `lr` may be a list: the chains of every lr then see the same draws (the same seed), one Python
    step for all of them, and a list of excess losses comes back, one per lr."""
    lrs = torch.tensor([lr] if np.isscalar(lr) else list(lr), dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    sqrt_h = eigs.sqrt()
    delta = torch.zeros(len(lrs), chains, dim, dtype=torch.float64)  # w - w*, starting at the optimum
    total = torch.zeros(len(lrs), dtype=torch.float64)
    count = 0
    for step in range(steps):
        x = torch.randn(chains, batch, dim, generator=g, dtype=torch.float64) * sqrt_h  # x ~ N(0, H)
        noise = torch.randn(chains, batch, generator=g, dtype=torch.float64) * sigma
        residual = torch.einsum("cbd,lcd->lcb", x, delta) - noise  # x.w - y
        grad = torch.einsum("lcb,cbd->lcd", residual, x) / batch
        delta -= lrs[:, None, None] * grad
        if step >= steps // 2:
            total += (0.5 * (delta ** 2 * eigs).sum(2)).mean(1)
            count += 1
    out = (total / count).tolist()
    return out[0] if np.isscalar(lr) else out


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
    measured = {b: quadratic_excess(list(sweep.quadratic_lrs), b, sweep.quadratic_dim, sweep.quadratic_noise, eigs,
                                    sweep.quadratic_steps, sweep.quadratic_chains) for b in sweep.quadratic_batches}
    for i, lr in enumerate(sweep.quadratic_lrs):
        for b in sweep.quadratic_batches:
            predicted = predicted_excess(lr, b, sweep.quadratic_noise, eigs)
            rows.append({"lr": lr, "batch": b, "temperature": lr / b, "measured": measured[b][i],
                         "predicted": predicted, "ratio": measured[b][i] / predicted})
    t = np.log([r["temperature"] for r in rows])
    slope, se = fit_slope(t, np.log([r["measured"] for r in rows]))
    result = {"rows": rows, "slope": slope, "slope_se": se, "lr_max_eig": max(sweep.quadratic_lrs) * hi,
              "slope_within_10pct": abs(slope - 1) <= 0.1}
    (out_dir / "quadratic.json").write_text(json.dumps(result, indent=1))
    return result


# ------------------------------------------------------------------------------------------
# (b), (c): ResNet runs


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
    return temperature_report(cfg, exp_dir, group, quad, runs)
