"""Stationary levels of a logged curve, and the verdicts of the temperature experiment's claims.

Pure functions of (iteration, value) points, shared by the temperature experiment and its report.
"""
from __future__ import annotations

from typing import List

import numpy as np


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
