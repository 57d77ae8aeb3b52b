"""Figures and tables of the temperature and batch-scaling experiments."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .report import markdown_table  # noqa: E402
from .schedules import Schedule  # noqa: E402


RULE_NAMES = {"linear": "lr ∝ B", "none": "fixed lr", "reference": "reference batch, both rules"}


def _sched(run_cfg) -> Schedule:
    return Schedule.from_config(run_cfg.schedule, run_cfg.data.batch_size)


def _examples(run_cfg, steps):
    s = _sched(run_cfg)
    return [s.examples(x) for x in steps]


def temperature_report(cfg, exp_dir: Path, group: str, quad: dict, runs: Dict[str, dict]) -> Dict[str, Path]:
    from .temperature import plateau
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))

    # (a) measured vs predicted stationary excess loss
    ax = axes[0]
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

    # (b) heating and cooling
    ax = axes[1]
    cycle_name = next(n for n in runs if n.startswith("cycle-"))
    cyc = runs[cycle_name]
    loss = cyc["metrics"].get("train/loss", [])
    lr = cyc["metrics"].get("lr", [])
    phase_rows = []
    if loss:
        xs, ys = zip(*loss)
        ax.plot(xs, ys, color="C3", lw=1.2, label="training loss")
        ax2 = ax.twinx()
        lx, ly = zip(*lr)
        ax2.step(lx, ly, color="grey", lw=1, where="post")
        ax2.set_yscale("log")
        ax2.set_ylabel("lr (grey)")
        sched = _sched(cyc["cfg"])
        bounds = [p.start_step for p in sched.phases] + [sched.total_steps]
        for i, p in enumerate(sched.phases):
            level = plateau(loss, bounds[i], bounds[i + 1])
            phase_rows.append({"phase": i + 1, "iterations": f"{bounds[i]}-{bounds[i + 1]}", "lr": f"{p.lr:.4g}",
                               "state": "hot" if p.lr >= max(q.lr for q in sched.phases) else "cold",
                               "train loss, last 30% of phase": f"{level:.4f}"})
            ax.hlines(level, bounds[i] + 0.7 * (bounds[i + 1] - bounds[i]), bounds[i + 1], color="k", lw=2)
    ax.set_xlabel("iterations")
    ax.set_ylabel("training loss")
    ax.set_title(f"(b) heating and cooling {cyc['cfg'].models[0]}")

    # (c) batch size as temperature
    ax = axes[2]
    batch_rows = []
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
        ex = _examples(run["cfg"], steps)
        style = {"linear": "-", "none": ":", "reference": "-"}[rule]
        colour = f"C{sorted(cfg.sweep.batches).index(b)}"
        s = _sched(run["cfg"])
        ax.plot(ex, vals, style, color=colour,
                label=f"B={b}, lr={s.phases[0].lr:.3g} ({RULE_NAMES[rule]})", lw=2.4 if rule == "reference" else 1.4)
        batch_rows.append({"batch": b, "rule": RULE_NAMES[rule],
                           "lr": f"{s.phases[0].lr:.4g}", "lr/B": f"{s.phases[0].lr / b:.3g}",
                           "train loss, last 30%": f"{plateau(pts, 0, s.total_steps):.4f}"})
    ax.set_xlabel("examples seen")
    ax.set_ylabel("training loss")
    ax.set_title("(c) batch size: dotted fixed lr, solid lr ∝ B")
    ax.legend(fontsize=7)
    fig.tight_layout()
    figure = exp_dir / "figure.png"
    fig.savefig(figure, dpi=110)
    plt.close(fig)

    verdicts = []
    levels = [float(r["train loss, last 30% of phase"]) for r in phase_rows]
    states = [r["state"] for r in phase_rows]
    for i in range(1, len(levels)):
        change = "down" if levels[i] < levels[i - 1] else "up"
        expected = "down" if states[i] == "cold" else "up"
        verdicts.append(f"- phase {i} → {i + 1} ({states[i - 1]} → {states[i]}): loss {levels[i - 1]:.3f} → "
                        f"{levels[i]:.3f}, {change} ({'as predicted' if change == expected else 'NOT as predicted'})")
    for state in ("hot", "cold"):
        same = [lv for lv, st in zip(levels, states) if st == state]
        if len(same) > 1:
            verdicts.append(f"- {state} phases settle at {', '.join(f'{v:.3f}' for v in same)}: spread "
                            f"{max(same) - min(same):.3f} ({100 * (max(same) - min(same)) / max(same):.0f}% of the level)")
    fixed = sorted((r["batch"], float(r["train loss, last 30%"])) for r in batch_rows if r["rule"] != RULE_NAMES["linear"])
    linear = sorted((r["batch"], float(r["train loss, last 30%"])) for r in batch_rows if r["rule"] != RULE_NAMES["none"])
    if len(fixed) > 1:
        lower = all(b[1] < a[1] for a, b in zip(fixed, fixed[1:]))
        verdicts.append(f"- fixed lr: loss by batch {', '.join(f'B={b}: {v:.3f}' for b, v in fixed)} — larger B "
                        f"{'settles lower, as predicted' if lower else 'does NOT settle lower in this run'}")
    if len(linear) > 1:
        vals = [v for _, v in linear]
        verdicts.append(f"- lr ∝ B: loss by batch {', '.join(f'B={b}: {v:.3f}' for b, v in linear)} — spread "
                        f"{max(vals) - min(vals):.3f} (fixed lr: {max(v for _, v in fixed) - min(v for _, v in fixed):.3f})")

    qrows = [{"lr": r["lr"], "B": r["batch"], "lr/B": f"{r['temperature']:.3g}", "measured": f"{r['measured']:.4g}",
              "predicted lr tr(C)/4B": f"{r['predicted']:.4g}", "measured/predicted": f"{r['ratio']:.3f}"} for r in rows]
    text = [f"# temperature — {cfg.profile} profile", "",
            "## (a) SGD on a quadratic: stationary excess loss against lr/B", "",
            f"Slope of log(excess) on log(lr/B): **{quad['slope']:.3f} ± {quad['slope_se']:.3f}** (theory: 1; "
            f"within 10%: {'yes' if quad['slope_within_10pct'] else 'NO'}). Prediction lr·tr(C)/(4B), C = σ²H "
            f"(Mandt et al. 2017, small-lr limit); largest lr·λmax = {quad['lr_max_eig']:.3g}.", "",
            markdown_table(qrows), "## (b) heating and cooling a ResNet", "", markdown_table(phase_rows),
            "## (c) batch size as temperature", "", markdown_table(sorted(batch_rows, key=lambda r: (r["rule"], r["batch"]))),
            "## What held", "", *verdicts, ""]
    results = exp_dir / "results.md"
    results.write_text("\n".join(text))
    from .wandb_io import log_experiment_summary
    log_experiment_summary(cfg, group, exp_dir, figure, qrows)
    return {"figure": figure, "results": results}


def _label(ax, x: str, y: str, title: str, legend_size: int) -> None:
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title)
    ax.legend(fontsize=legend_size)
    ax.grid(alpha=0.3)


def _result_row(mode: str, run: dict, batch: str, lr: str) -> dict:
    st = run["status"]
    return {"mode": mode, "batch": batch, "lr": lr,
            "final test err (%)": f"{st.get('final_test_err', float('nan')):.2f}",
            "final train err (%)": f"{st.get('last_train_err', float('nan')):.2f}", "status": st.get("status", "?")}


def batch_scaling_report(cfg, exp_dir: Path, group: str, runs: Dict[str, dict]) -> Dict[str, Path]:
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    ax = axes[0]
    table = []
    for i, mode in enumerate(cfg.sweep.modes):
        pts = []
        for name, run in runs.items():
            if run["mode"] == mode and run["status"].get("final_test_err") is not None:
                pts.append((run["cfg"].data.batch_size, run["status"]["final_test_err"]))
            if run["mode"] == mode:
                table.append(_result_row(mode, run, str(run["cfg"].data.batch_size),
                                         f"{_sched(run['cfg']).phases[0].lr:.4g}"))
        if pts:
            pts.sort()
            ax.semilogx(*zip(*pts), "o-", color=f"C{i}", label=mode, base=2)
    _label(ax, "batch size", "final test error (%)", "test error vs batch size (cf. Goyal et al. 2017, Fig. 1)", 8)

    ax = axes[1]
    for name, run in runs.items():
        if run["mode"] not in ("decay-lr", "decay-batch"):
            continue
        by_lr = run["mode"] == "decay-lr"
        for key, style, width in (("train/err", "-" if by_lr else "--", 1.4), ("test/err", "o-" if by_lr else "s--", 2)):
            pts = run["metrics"].get(key, [])
            if pts:
                steps, vals = zip(*pts)
                ex = np.array(_examples(run["cfg"], steps)) / run["train_size"]
                ax.plot(ex, vals, style, ms=3, lw=width, label=f"{run['mode']} ({key.split('/')[0]} err)")
        phases = _sched(run["cfg"]).phases
        table.append(_result_row(run["mode"], run, "→".join(str(p.batch_size) for p in phases),
                                 "→".join(f"{p.lr:.3g}" for p in phases)))
    _label(ax, "epochs", "error (%)", "increase B instead of decaying lr (Smith et al. 2018)", 7)

    ax = axes[2]
    noise_b = []
    for name, run in runs.items():
        pts = run["metrics"].get("noise_scale", [])
        if pts:
            steps, vals = zip(*pts)
            ax.plot(np.array(_examples(run["cfg"], steps)) / run["train_size"], vals, color="C4", label="B_simple")
            noise_b = vals
    ax.set_xlabel("epochs")
    ax.set_ylabel("gradient noise scale B_simple")
    ax.set_yscale("log")
    ax.set_title("noise scale (McCandlish et al. 2018)")
    for b in cfg.sweep.batches:
        ax.axhline(b, color="grey", lw=0.6, ls=":")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    figure = exp_dir / "figure.png"
    fig.savefig(figure, dpi=110)
    plt.close(fig)
    lines = [f"# batch-scaling — {cfg.profile} profile", "",
             f"lr {cfg.schedule.lr} at batch {cfg.schedule.ref_batch}; every run sees the same number of examples.", "",
             markdown_table(table)]
    if len(noise_b):
        tail = noise_b[len(noise_b) // 2:]
        lines += [f"Gradient noise scale B_simple over the second half of training: median {np.median(tail):.0f} "
                  f"(range {min(tail):.0f}-{max(tail):.0f}). McCandlish et al. predict the linear rule to hold for "
                  f"B well below it and to stop paying off above it.", ""]
    results = exp_dir / "results.md"
    results.write_text("\n".join(lines))
    from .wandb_io import log_experiment_summary
    log_experiment_summary(cfg, group, exp_dir, figure, table)
    return {"figure": figure, "results": results}
