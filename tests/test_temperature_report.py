"""The analysis of temperature (b) on synthetic curves: periods, levels, drift, verdicts."""
import numpy as np

from reproduce.levels import cycle_verdicts, lr_periods, phase_level


def _noisy(levels, phase=300, every=10, sd=0.02, slope=0.0, seed=0):
    """A loss logged every `every` iterations that sits at levels[i] in phase i (plus a slope per iteration)."""
    rng = np.random.default_rng(seed)
    return [(x, levels[(x - 1) // phase] + slope * x + rng.normal(0, sd)) for x in range(every, phase * len(levels) + 1, every)]


def _levels(points, n, phase=300):
    return [phase_level(points, i * phase, (i + 1) * phase) for i in range(n)]


def test_lr_periods_merge_consecutive_phases_at_one_lr():
    bounds = [0, 100, 200, 300, 400, 500, 600]
    assert lr_periods(bounds, [0.1, 0.1, 0.01, 0.01, 0.01, 0.1]) == [(0, 200, 0.1), (200, 500, 0.01), (500, 600, 0.1)]
    assert lr_periods(bounds[:5], [0.1, 0.01, 0.1, 0.01]) == [(0, 100, 0.1), (100, 200, 0.01), (200, 300, 0.1),
                                                              (300, 400, 0.01)]


def test_phase_level_measures_level_scatter_and_drift():
    flat = phase_level(_noisy([1.0]), 0, 300)
    assert abs(flat["level"] - 1.0) < 0.02 and 0.01 < flat["sd"] < 0.04 and flat["settled"]
    falling = phase_level([(x, 2.0 - 0.001 * x) for x in range(10, 301, 10)], 0, 300)
    assert abs(falling["drift"] - (-0.001 * 80)) < 1e-9 and falling["sd"] < 1e-9 and not falling["settled"]


def test_cycle_verdicts_hold_for_a_stationary_cycle():
    states = ["hot", "cold", "hot", "cold"]
    pts = _noisy([1.4, 0.9, 1.4, 0.9])
    v = cycle_verdicts(_levels(pts, 4), states)
    assert all(x["holds"] for x in v), v
    claims = " ".join(x["claim"] for x in v)
    assert "hot periods (1, 3)" in claims and "cold periods (2, 4)" in claims


def test_cycle_verdicts_fail_when_the_net_is_still_learning():
    """The earlier quick run: hot 1.461 then 1.079, cold 1.161 then 0.771, each phase still descending."""
    states = ["hot", "cold", "hot", "cold"]
    pts = _noisy([2.2, 1.9, 1.8, 1.5], slope=-0.002)  # -0.16 per 30% of a phase
    v = {x["claim"].split(" (")[0]: x for x in cycle_verdicts(_levels(pts, 4), states)}
    assert [lv["settled"] for lv in _levels(pts, 4)] == [False] * 4
    assert not v["every period has stopped drifting"]["holds"]
    assert not v["the hot periods"]["holds"] and not v["the cold periods"]["holds"]
    assert v["period 1 → 2"]["holds"]  # cooling still lowers the loss
