"""Figure, tables and verdicts of the temperature experiment (temperature.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .levels import cycle_verdicts, lr_periods, phase_level  # noqa: E402
from .report import markdown_table  # noqa: E402
from .schedules import Schedule  # noqa: E402
from .wandb_io import log_experiment_summary  # noqa: E402


RULE_NAMES = {"linear": "lr ∝ B", "none": "fixed lr", "reference": "reference batch, both rules"}


def quadratic_panel(ax, quad: dict) -> list:
    """(a) measured against predicted stationary excess loss; returns the table rows."""
    rows = quad["rows"]
    batches = sorted({r["batch"] for r in rows})
    for i, b in enumerate(batches):
        rs = [r for r in rows if r["batch"] == b]
        ax.loglog([r["temperature"] for r in rs], [r["measured"] for r in rs], "o", color=f"C{i}", label=f"B={b}")
    t = np.array(sorted(r["temperature"] for r in rows))
    k = rows[0]["predicted"] / rows[0]["temperature"]
    ax.loglog(t, k * t, "k--", lw=1, label="lr tr(C)/(4B)")
    ax.set_xlabel("temperature lr / B")
    ax.set_ylabel("stationary excess loss")
    ax.set_title(f"(a) quadratic: slope {quad['slope']:.3f} ± {quad['slope_se']:.3f} (theory 1)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return [{"lr": r["lr"], "B": r["batch"], "lr/B": f"{r['temperature']:.3g}", "measured": f"{r['measured']:.4g}",
             "predicted lr tr(C)/4B": f"{r['predicted']:.4g}", "measured/predicted": f"{r['ratio']:.3f}"} for r in rows]


def cycle_panel(ax, cyc: dict) -> tuple[list, list, list]:
    """(b) the heat/cool run's training loss, the lr, and each period's level; returns the table
    rows, the levels (levels.phase_level) and the periods' states (hot / cold)."""
    loss = cyc["metrics"].get("train/loss", [])
    lr = cyc["metrics"].get("lr", [])
    phase_rows, levels, states = [], [], []
    if loss:
        xs, ys = zip(*loss)
        ax.plot(xs, ys, color="C3", lw=1.2, label="training loss")
        ax2 = ax.twinx()
        lx, ly = zip(*lr)
        ax2.step(lx, ly, color="grey", lw=1, where="post")
        ax2.set_yscale("log")
        ax2.set_ylabel("lr (grey)")
        sched = Schedule.for_run(cyc["cfg"])
        bounds = [p.start_step for p in sched.phases] + [sched.total_steps]
        periods = lr_periods(bounds, [p.lr for p in sched.phases])
        hot = max(p.lr for p in sched.phases)
        for start, _, _ in periods[1:]:  # where the lr changes: the heating and the cooling
            ax.axvline(start, color="grey", lw=0.8, ls=":")
        changes = ", ".join(f"{start:,}" for start, _, _ in periods[1:])
        for i, (start, end, p_lr) in enumerate(periods):
            lv = phase_level(loss, start, end)
            levels.append(lv)
            states.append("hot" if p_lr >= hot else "cold")
            phase_rows.append({"period": i + 1, "iterations": f"{start}-{end}", "lr": f"{p_lr:.4g}", "state": states[-1],
                               "level: train loss, last 30% (point sd)": f"{lv['level']:.4f} ({lv['sd']:.4f})",
                               "drift over the last 30%": f"{lv['drift']:+.4f}",
                               "stopped drifting": "yes" if lv["settled"] else "no"})
            ax.hlines(lv["level"], start + 0.7 * (end - start), end, color="k", lw=2)
        ax.legend(fontsize=7, loc="upper right")
    ax.set_xlabel("iterations")
    ax.set_ylabel("training loss")
    ax.set_title(f"(b) heating and cooling {cyc['cfg'].models[0]}" + (f": lr changes at {changes} (dotted)" if loss else ""),
                 fontsize=10)
    return phase_rows, levels, states


def batch_panel(ax, runs: Dict[str, dict], batches: List[int]) -> tuple[list, dict]:
    """(c) training loss against SDE time lr x iterations (temperature.py's docstring) for every
    batch run; returns the table rows and the fixed-lr runs {batch: (points, iterations)}."""
    batch_rows, fixed_runs = [], {}
    for name, run in runs.items():
        if not name.startswith("batch"):
            continue
        pts = run["metrics"].get("train/loss", [])
        if not pts:
            continue
        b, rule = run["cfg"].data.batch_size, run["cfg"].schedule.scaling
        if b == run["cfg"].schedule.ref_batch:
            rule = "reference"
        steps, vals = zip(*pts)
        style = {"linear": "-", "none": ":", "reference": "-"}[rule]
        colour = f"C{sorted(batches).index(b)}"
        s = Schedule.for_run(run["cfg"])
        lr0 = s.phases[0].lr
        ax.plot(np.array(steps) * lr0, vals, style, color=colour,
                label=f"B={b}, lr={lr0:.3g} ({RULE_NAMES[rule]})", lw=2.4 if rule == "reference" else 1.4)
        if rule != "linear":
            fixed_runs[b] = (pts, s.total_steps)
        lv = phase_level(pts, 0, s.total_steps)
        batch_rows.append({"batch": b, "rule": RULE_NAMES[rule], "lr": f"{lr0:.4g}", "lr/B": f"{lr0 / b:.3g}",
                           "iterations": s.total_steps,
                           "train loss, last 30% (point sd)": f"{lv['level']:.4f} ({lv['sd']:.4f})",
                           "drift over the last 30%": f"{lv['drift']:+.4f}"})
    ax.set_xlabel("lr × iterations (SDE time)")
    ax.set_ylabel("training loss")
    ax.set_title("(c) batch size: dotted fixed lr, solid lr ∝ B")
    ax.legend(fontsize=7)
    return batch_rows, fixed_runs


def batch_verdicts(batch_rows: list, fixed_runs: dict) -> tuple[list, list]:
    """(c)'s claims: at a fixed lr, compared at equal iterations (equal SDE time), each larger batch
    settles lower; with lr ∝ B the loss at equal examples is about the same for every B. Returns
    the equal-iteration table and the verdict lines."""
    verdicts, step_rows = [], []
    # fixed lr at equal iterations: the level over the last 30% of the first k iterations, for k up
    # to the shortest fixed-lr run
    if len(fixed_runs) > 1:
        shortest = min(n for _, n in fixed_runs.values())
        for k in (shortest // 4, shortest // 2, shortest):
            row = {"iterations": k}
            for b in sorted(fixed_runs):
                lv = phase_level(fixed_runs[b][0], 0, k)
                row[f"B={b}"] = f"{lv['level']:.4f} ({lv['sd']:.4f})"
            step_rows.append(row)
            lows = [phase_level(fixed_runs[b][0], 0, k) for b in sorted(fixed_runs)]
            ok = all(hi["level"] - lo["level"] > max(hi["sd"], lo["sd"]) for hi, lo in zip(lows, lows[1:]))
            verdicts.append(f"- fixed lr, after {k} iterations: each larger batch lower by more than the scatter: "
                            f"**{'holds' if ok else 'does not hold'}** ("
                            + ", ".join(f"B={b}: {lv['level']:.3f}" for b, lv in zip(sorted(fixed_runs), lows)) + ")")
    linear = sorted((r["batch"], float(r["train loss, last 30% (point sd)"].split()[0])) for r in batch_rows
                    if r["rule"] != RULE_NAMES["none"])
    fixed_end = [float(r["train loss, last 30% (point sd)"].split()[0]) for r in batch_rows if r["rule"] != RULE_NAMES["linear"]]
    if len(linear) > 1:
        vals = [v for _, v in linear]
        verdicts.append(f"- lr ∝ B, at equal examples (equal SDE time): loss by batch "
                        f"{', '.join(f'B={b}: {v:.3f}' for b, v in linear)} — spread {max(vals) - min(vals):.3f} "
                        f"(fixed lr at equal examples: {max(fixed_end) - min(fixed_end):.3f})")
    return step_rows, verdicts


def temperature_report(cfg, exp_dir: Path, group: str, quad: dict, runs: Dict[str, dict]) -> Dict[str, Path]:
    """figure.png (panels a, b, c), results.md (tables and verdicts) and the W&B summary run."""
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    qrows = quadratic_panel(axes[0], quad)
    cycle_name = next(n for n in runs if n.startswith("cycle-"))
    phase_rows, levels, states = cycle_panel(axes[1], runs[cycle_name])
    batch_rows, fixed_runs = batch_panel(axes[2], runs, cfg.sweep.batches)
    fig.suptitle(f"temperature ({cfg.profile} profile): the lr as a temperature; (c) runs at a constant lr", fontsize=10)
    fig.tight_layout()
    figure = exp_dir / "figure.png"
    fig.savefig(figure, dpi=110)
    plt.close(fig)

    verdicts = [f"- {v['claim']}: **{'holds' if v['holds'] else 'does not hold'}** ({v['numbers']})"
                for v in cycle_verdicts(levels, states)] if levels else []
    step_rows, more = batch_verdicts(batch_rows, fixed_runs)
    verdicts += more
    text = [f"# temperature — {cfg.profile} profile", "",
            "## (a) SGD on a quadratic: stationary excess loss against lr/B", "",
            f"Slope of log(excess) on log(lr/B): **{quad['slope']:.3f} ± {quad['slope_se']:.3f}** (theory: 1; "
            f"within 10%: {'yes' if quad['slope_within_10pct'] else 'NO'}). Prediction lr·tr(C)/(4B), C = σ²H "
            f"(Mandt et al. 2017, small-lr limit); largest lr·λmax = {quad['lr_max_eig']:.3g}.", "",
            markdown_table(qrows), "## (b) heating and cooling a ResNet", "",
            f"lr multipliers per phase {list(cfg.sweep.cycle)}; consecutive phases at one lr form a period. Level = "
            "mean training loss over the last 30% of the period; point sd = scatter of one logged point about the "
            "line fitted there; drift = that line's change across the window.", "",
            markdown_table(phase_rows),
            "## (c) batch size as temperature", "", markdown_table(sorted(batch_rows, key=lambda r: (r["rule"], r["batch"]))),
            "Fixed lr at equal iterations (equal SDE time lr × iterations): training loss over the last 30% of the "
            "first k iterations (point sd).", "", markdown_table(step_rows) if step_rows else "(no fixed-lr runs)\n",
            "## What held", "", *verdicts, ""]
    results = exp_dir / "results.md"
    results.write_text("\n".join(text))
    log_experiment_summary(cfg, group, exp_dir, figure, qrows)
    return {"figure": figure, "results": results}
