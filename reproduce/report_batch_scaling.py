"""Figure and table of the batch-scaling experiment (batch_scaling.py): Goyal et al. 2017's Figure 1 on
CIFAR-10, Smith et al. 2018's lr decay against batch growth, and the gradient noise scale."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .report import markdown_table  # noqa: E402
from .schedules import Schedule  # noqa: E402
from .wandb_io import log_experiment_summary  # noqa: E402


def examples_at(run_cfg, steps) -> List[int]:
    """Examples seen before each of `steps`: the x axis that puts runs at different batches side by side."""
    s = Schedule.for_run(run_cfg)
    return [s.examples(x) for x in steps]


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
                                         f"{Schedule.for_run(run['cfg']).phases[0].lr:.4g}"))
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
                ex = np.array(examples_at(run["cfg"], steps)) / run["train_size"]
                ax.plot(ex, vals, style, ms=3, lw=width, label=f"{run['mode']} ({key.split('/')[0]} err)")
        phases = Schedule.for_run(run["cfg"]).phases
        if by_lr:  # the schedule's milestones, where decay-lr drops the lr and decay-batch grows B
            for start in Schedule.for_run(run["cfg"]).milestone_steps():
                ax.axvline(examples_at(run["cfg"], [start])[0] / run["train_size"], color="grey", lw=0.8, ls=":")
        table.append(_result_row(run["mode"], run, "→".join(str(p.batch_size) for p in phases),
                                 "→".join(f"{p.lr:.3g}" for p in phases)))
    _label(ax, "epochs", "error (%)", "increase B instead of decaying lr (Smith et al. 2018); milestones dotted", 7)

    ax = axes[2]
    noise_b = []
    for name, run in runs.items():
        pts = run["metrics"].get("noise_scale", [])
        if pts:
            steps, vals = zip(*pts)
            ax.plot(np.array(examples_at(run["cfg"], steps)) / run["train_size"], vals, color="C4", label="B_simple")
            noise_b = vals
    ax.set_xlabel("epochs")
    ax.set_ylabel("gradient noise scale B_simple")
    ax.set_yscale("log")
    ax.set_title("noise scale (McCandlish et al. 2018)")
    for b in cfg.sweep.batches:
        ax.axhline(b, color="grey", lw=0.6, ls=":")
    ax.grid(alpha=0.3)
    fig.suptitle(f"batch-scaling ({cfg.profile} profile): lr {cfg.schedule.lr} at batch {cfg.schedule.ref_batch}, "
                 f"x{cfg.schedule.factor} at {', '.join(f'{m:,}' for m in cfg.schedule.milestones)} iterations' worth of "
                 f"examples (at batch {cfg.schedule.ref_batch})", fontsize=10)
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
    log_experiment_summary(cfg, group, exp_dir, figure, table)
    return {"figure": figure, "results": results}
