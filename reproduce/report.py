"""Figures and tables from logged metrics (metrics.csv of each run), in the paper's style."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Dict, List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from .runs import read_metrics, read_status  # noqa: E402
from .models import depth_of, is_residual  # noqa: E402
from .schedules import Schedule  # noqa: E402
from .wandb_io import PAPER_TABLE6  # noqa: E402

DEPTH_COLOURS = {20: "#e69f00", 32: "#56b4e9", 44: "#009e73", 56: "#d55e00", 110: "#000000", 1202: "#cc79a7",
                 18: "#e69f00", 34: "#d55e00", 8: "#999999", 14: "#0072b2", 26: "#f0e442", 38: "#882255"}


def colour(depth: int) -> str:
    return DEPTH_COLOURS.get(depth, f"C{depth % 10}")


def load_runs(run_dirs: List[Path]) -> List[dict]:
    runs = []
    for d in run_dirs:
        if not (d / "config.yaml").exists():
            continue
        cfg = OmegaConf.load(d / "config.yaml")
        metrics = read_metrics(d / "metrics.csv") if (d / "metrics.csv").exists() else {}
        runs.append({"dir": d, "cfg": cfg, "model": cfg.models[0], "metrics": metrics, "status": read_status(d)})
    return runs


def milestone_steps(cfg) -> List[int]:
    return Schedule.from_config(cfg.schedule, cfg.data.batch_size).milestone_steps()


def curves_figure(runs: List[dict], path: Path, title: str = "") -> Path:
    """Figure 6 layout: plain nets left, ResNets right; dashed = training error, bold = test error."""
    families = [("plain", [r for r in runs if not is_residual(r["model"])]),
                ("ResNet", [r for r in runs if is_residual(r["model"])])]
    families = [(n, rs) for n, rs in families if rs]
    fig, axes = plt.subplots(1, len(families), figsize=(6 * len(families), 4.2), squeeze=False, sharey=True)
    top = 0.0
    # CIFAR plots test error (Figure 6); ImageNet plots validation error (Figure 4)
    eval_key = "test/err" if any(r["metrics"].get("test/err") for r in runs) else "val/err"
    for ax, (family, fam_runs) in zip(axes[0], families):
        seen = set()
        for r in sorted(fam_runs, key=lambda r: depth_of(r["model"])):
            c, label = colour(depth_of(r["model"])), f"{family}-{depth_of(r['model'])}"
            for key, style, width in (("train/err", "--", 1.0), (eval_key, "-", 2.2)):
                pts = r["metrics"].get(key, [])
                if not pts:
                    continue
                xs, ys = zip(*pts)
                ax.plot(xs, ys, style, color=c, lw=width, label=label if label not in seen else None)
                seen.add(label)
                top = max(top, max(ys[len(ys) // 10:]) if len(ys) > 10 else max(ys))
        for m in milestone_steps(fam_runs[0]["cfg"]):
            ax.axvline(m, color="grey", lw=0.8, ls=":")
        ax.set_title(("plain nets" if family == "plain" else "ResNets") + (" (lr drops dotted)" if milestone_steps(fam_runs[0]["cfg"]) else ""))
        ax.set_xlabel("iterations")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    axes[0][0].set_ylabel(f"error (%)   dashed: training, bold: {eval_key.split('/')[0]}")
    axes[0][0].set_ylim(0, min(100, top * 1.1 + 1))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def results_rows(runs: List[dict]) -> List[dict]:
    """One row per model (mean ± std over seeds where there are several)."""
    by_model: Dict[str, List[dict]] = {}
    for r in runs:
        by_model.setdefault(r["model"], []).append(r)
    rows = []
    for model, rs in by_model.items():
        def values(key):
            return [r["status"][key] for r in rs if r["status"].get(key) is not None]

        def fmt(vals):
            if not vals:
                return "—"
            if len(vals) == 1:
                return f"{vals[0]:.2f}"
            return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}"

        failed = [r["status"].get("error", r["status"].get("status")) for r in rs if r["status"].get("status") != "done"]
        rows.append({"model": model, "runs": len(rs), "iterations": rs[0]["status"].get("step"),
                     "final test err (%)": fmt(values("final_test_err")),
                     "best test err (%)": fmt(values("best_test_err")),
                     "final train err (%)": fmt(values("last_train_err")),
                     "paper Table 6 (%)": f"{PAPER_TABLE6[model]:.2f}" if model in PAPER_TABLE6 else "—",
                     "status": "ok" if not failed else "FAILED: " + "; ".join(str(f) for f in failed)})
    return sorted(rows, key=lambda r: (is_residual(r["model"]), depth_of(r["model"])))


def step_at_drop(points: List[tuple], drop: int, window: float) -> Optional[dict]:
    """How far training error falls at an lr drop beyond what its trend predicts.

    A line fitted to the points in (drop - 2*window, drop] predicts the window after the drop;
    ``step`` is that prediction minus the mean of the points in (drop, drop + window]: positive when
    the error steps down faster than it was already falling (the cooling of Section 4.2's drops),
    about 0 when the drop only continues the trend. ``noise`` is the scatter (sd) of one point about
    the fitted line, for judging whether a step is larger than chance.
    """
    pre = np.array([(x, y) for x, y in points if drop - 2 * window < x <= drop])
    post = np.array([(x, y) for x, y in points if drop < x <= drop + window])
    if len(pre) < 3 or not len(post):
        return None
    line = np.polynomial.Polynomial.fit(pre[:, 0], pre[:, 1], 1)
    after = float(post[:, 1].mean())
    return {"before": float(line(drop)), "after": after, "step": float(line(post[:, 0]).mean()) - after,
            "noise": float((pre[:, 1] - line(pre[:, 0])).std())}


def drop_rows(runs: List[dict]) -> List[dict]:
    """Training error around each lr drop, one row per run: the evidence for "a step at each drop"."""
    rows = []
    for r in sorted(runs, key=lambda r: (is_residual(r["model"]), depth_of(r["model"]))):
        drops = milestone_steps(r["cfg"])
        pts = r["metrics"].get("train/err", [])
        if not drops or not pts:
            continue
        last = pts[-1][0]
        bounds = [0] + list(drops) + [last]
        row = {"model": r["dir"].name}
        for i, drop in enumerate(drops, start=1):
            # 10% of training, never reaching past the next drop nor back over half the previous phase
            window = min(0.1 * last, bounds[i + 1] - drop, (drop - bounds[i - 1]) / 2)
            s = step_at_drop(pts, drop, window) if window > 0 else None
            row[f"at {drop}: before → after"] = f"{s['before']:.1f} → {s['after']:.1f}" if s else "—"
            row[f"at {drop}: step (point sd)"] = f"{s['step']:+.1f} ({s['noise']:.1f})" if s else "—"
        rows.append(row)
    return rows


DROP_SECTION = ("## Training error at each lr drop\n\nError (%) on the training batches just before (the trend "
                "line fitted over the preceding 20% of training, at the drop) and just after (mean over the next "
                "10%); step = how much lower it is after than the trend predicts, beside the scatter of one logged "
                "point.\n\n")


def markdown_table(rows: List[dict]) -> str:
    if not rows:
        return "(no runs)\n"
    cols = list(rows[0].keys())
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_results(rows: List[dict], path: Path, header: str, drops: List[dict] = ()) -> Path:
    """results.md: the header, the results table and, when given, the table of steps at the drops."""
    drop_text = f"\n{DROP_SECTION}{markdown_table(drops)}" if drops else ""
    path.write_text(f"{header}\n\n{markdown_table(rows)}{drop_text}")
    return path
