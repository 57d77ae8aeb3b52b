"""Figures and tables from logged metrics (metrics.csv of each run), in the paper's style."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Dict, List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
import numpy as np  # noqa: E402

from .runs import RunDir  # noqa: E402
from .models import depth_of, is_residual  # noqa: E402
from .schedules import Schedule  # noqa: E402
from .paper import PAPER_TABLE6, PAPER_TABLE6_MEAN  # noqa: E402

DEPTH_COLOURS = {20: "#e69f00", 32: "#56b4e9", 44: "#009e73", 56: "#d55e00", 110: "#000000", 1202: "#cc79a7",
                 18: "#e69f00", 34: "#d55e00", 8: "#999999", 14: "#0072b2", 26: "#f0e442", 38: "#882255"}


def colour(depth: int) -> str:
    return DEPTH_COLOURS.get(depth, f"C{depth % 10}")


def load_runs(run_dirs: List[Path]) -> List[dict]:
    runs = []
    for d in map(Path, run_dirs):
        files = RunDir(d)
        cfg = files.config()
        if cfg is None:
            continue
        runs.append({"dir": d, "cfg": cfg, "model": cfg.models[0], "metrics": files.metrics(), "status": files.status()})
    return runs


def milestone_steps(cfg) -> List[int]:
    return Schedule.for_run(cfg).milestone_steps()


def style_handles(eval_name: str, drops: bool) -> list:
    """Legend entries for the line styles, drawn beside the per-model colours (Figure 6's key)."""
    handles = [Line2D([], [], color="k", ls="--", lw=1.0, label="training error"),
               Line2D([], [], color="k", ls="-", lw=2.2, label=f"{eval_name} error")]
    return handles + ([Line2D([], [], color="grey", ls=":", lw=0.8, label="lr drop")] if drops else [])


def error_ylim(values: List[float]) -> tuple:
    """A y-range that holds every point (none clipped), from 0 up to the highest error plus a margin."""
    top = max(values, default=100.0)
    return 0.0, min(100.0, top + max(2.0, 0.05 * top))


def drops_title(cfg) -> str:
    """What a curves figure's title says about its schedule: the lr drops and the run's length."""
    steps = milestone_steps(cfg)
    total = f"{Schedule.for_run(cfg).total_steps:,} iterations"
    drops = (f"lr x{cfg.schedule.factor} at iterations {' and '.join(f'{m:,}' for m in steps)} of {total} (dotted)"
             if steps else f"constant lr, {total}")
    return f"{cfg.experiment} ({cfg.profile} profile): {drops}"


def curves_figure(runs: List[dict], path: Path, title: str = "") -> Path:
    """Figure 6 layout: plain nets left, ResNets right; dashed = training error, bold = test error;
    the lr drops dotted. The title defaults to the schedule of the first run (`drops_title`)."""
    families = [("plain", [r for r in runs if not is_residual(r["model"])]),
                ("ResNet", [r for r in runs if is_residual(r["model"])])]
    families = [(n, rs) for n, rs in families if rs]
    fig, axes = plt.subplots(1, len(families), figsize=(6 * len(families), 4.4), squeeze=False, sharey=True)
    values: List[float] = []
    # CIFAR plots test error (Figure 6); ImageNet plots validation error (Figure 4)
    eval_key = "test/err" if any(r["metrics"].get("test/err") for r in runs) else "val/err"
    for ax, (family, fam_runs) in zip(axes[0], families):
        model_handles = []
        for r in sorted(fam_runs, key=lambda r: depth_of(r["model"])):
            c, label = colour(depth_of(r["model"])), f"{family}-{depth_of(r['model'])}"
            drawn = False
            for key, style, width in (("train/err", "--", 1.0), (eval_key, "-", 2.2)):
                pts = r["metrics"].get(key, [])
                if not pts:
                    continue
                xs, ys = zip(*pts)
                ax.plot(xs, ys, style, color=c, lw=width)
                values.extend(ys)
                drawn = True
            if drawn:
                model_handles.append(Line2D([], [], color=c, lw=2.2, label=label))
        drops = milestone_steps(fam_runs[0]["cfg"])
        for m in drops:
            ax.axvline(m, color="grey", lw=0.8, ls=":")
        ax.set_title("plain nets" if family == "plain" else "ResNets")
        ax.set_xlabel("iterations")
        ax.grid(alpha=0.3)
        models = ax.legend(handles=model_handles, loc="upper right", fontsize=8, title="model", title_fontsize=8)
        ax.add_artist(models)
        ax.legend(handles=style_handles(eval_key.split("/")[0], bool(drops)), loc="upper center", fontsize=8)
    axes[0][0].set_ylabel("error (%)")
    axes[0][0].set_ylim(*error_ylim(values))
    fig.suptitle(title or drops_title(runs[0]["cfg"]), fontsize=10)
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
        final = values("final_test_err")
        rows.append({"model": model, "runs": len(rs), "iterations": rs[0]["status"].get("step"),
                     "final test err (%)": fmt(final),
                     # the paper reports ResNet-110 over 5 runs as best and mean ± std (Table 6)
                     "min / max final (%)": f"{min(final):.2f} / {max(final):.2f}" if len(final) > 1 else "—",
                     "best test err (%)": fmt(values("best_test_err")),
                     "final train err (%)": fmt(values("last_train_err")),
                     "paper Table 6 (%)": paper_table6(model),
                     "status": "ok" if not failed else "FAILED: " + "; ".join(str(f) for f in failed)})
    if all(r["runs"] == 1 for r in rows):
        for r in rows:
            del r["min / max final (%)"]
    return sorted(rows, key=lambda r: (is_residual(r["model"]), depth_of(r["model"])))


def paper_table6(model: str) -> str:
    if model not in PAPER_TABLE6:
        return "—"
    mean = PAPER_TABLE6_MEAN.get(model)
    return f"{PAPER_TABLE6[model]:.2f}" + (f" (best of 5; mean {mean[0]:.2f} ± {mean[1]:.2f})" if mean else "")


def step_at_drop(points: List[tuple], drop: int, window: float) -> Optional[dict]:
    """How far an error curve falls at an lr drop beyond what its trend predicts.

    A line fitted to the points in (drop - 2*window, drop] predicts the window after the drop;
    ``step`` is that prediction minus the mean of the points in (drop, drop + window]: positive when
    the error steps down faster than it was already falling (the cooling of Section 4.2's drops),
    about 0 when the drop only continues the trend. ``noise`` is the scatter (sd) of one point about
    the fitted line (residual variance on n - 2 degrees of freedom), for judging whether a step is
    larger than chance; ``se`` is the standard error of ``step`` itself under that scatter (the
    post-drop mean plus the uncertainty of the extrapolated line).
    """
    pre = np.array([(x, y) for x, y in points if drop - 2 * window < x <= drop])
    post = np.array([(x, y) for x, y in points if drop < x <= drop + window])
    if len(pre) < 3 or not len(post):
        return None
    line = np.polynomial.Polynomial.fit(pre[:, 0], pre[:, 1], 1)
    after = float(post[:, 1].mean())
    resid = pre[:, 1] - line(pre[:, 0])
    noise = float(np.sqrt((resid ** 2).sum() / (len(pre) - 2)))
    sxx = float(((pre[:, 0] - pre[:, 0].mean()) ** 2).sum())
    se = noise * float(np.sqrt(1 / len(post) + 1 / len(pre) + (post[:, 0].mean() - pre[:, 0].mean()) ** 2 / sxx))
    return {"before": float(line(drop)), "after": after, "step": float(line(post[:, 0]).mean()) - after,
            "noise": noise, "se": se, "points": (len(pre), len(post))}


# A step counts when it is at least this many times the scatter of one point about the trend, so
# that one lucky evaluation cannot make it.
STEP_OVER_NOISE = 3.0
# Claim 4 (no overfitting regime): Figure 6's final test error lies within a few points of the
# training error.
TEST_TRAIN_GAP = 5.0


def _spacing(points: List[tuple]) -> float:
    xs = [x for x, _ in points]
    return float(np.median(np.diff(xs))) if len(xs) > 1 else 0.0


def drop_steps(run: dict, key: str) -> Dict[int, Optional[dict]]:
    """step_at_drop of metric `key` at each lr drop of one run.

    The window is 10% of training, widened to 3 evaluation intervals when the curve is sparser (the
    test curve, evaluated every `trainer.eval_every`), so that at least 3 points follow the drop;
    it never reaches past the next drop nor back over half the previous phase.
    """
    drops = milestone_steps(run["cfg"])
    pts = run["metrics"].get(key, [])
    if not drops or not pts:
        return {}
    last = pts[-1][0]
    bounds = [0] + list(drops) + [last]
    out = {}
    for i, drop in enumerate(drops, start=1):
        window = min(max(0.1 * last, 3 * _spacing(pts)), bounds[i + 1] - drop, (drop - bounds[i - 1]) / 2)
        out[drop] = step_at_drop(pts, drop, window) if window > 0 else None
    return out


def _eval_key(runs: List[dict]) -> str:
    return "test/err" if any(r["metrics"].get("test/err") for r in runs) else "val/err"


def _by_depth(runs: List[dict]) -> List[dict]:
    return sorted(runs, key=lambda r: (is_residual(r["model"]), depth_of(r["model"])))


def drop_rows(runs: List[dict]) -> List[dict]:
    """Training and test error around each lr drop, one row per run: the evidence for "a step at each drop"."""
    rows = []
    eval_key = _eval_key(runs)
    for r in _by_depth(runs):
        steps = {key: drop_steps(r, key) for key in ("train/err", eval_key)}
        if not steps["train/err"]:
            continue
        row = {"model": r["dir"].name}
        for drop in steps["train/err"]:
            for key in ("train/err", eval_key):
                s = steps[key].get(drop)
                name = "train" if key == "train/err" else key.split("/")[0]
                if key == "train/err":
                    row[f"at {drop}: before → after"] = f"{s['before']:.1f} → {s['after']:.1f}" if s else "—"
                    row[f"at {drop}: step (point sd)"] = f"{s['step']:+.1f} ({s['noise']:.1f})" if s else "—"
                elif s:
                    row[f"at {drop}: {name} before → after"] = f"{s['before']:.1f} → {s['after']:.1f}"
                    row[f"at {drop}: {name} step (point sd)"] = f"{s['step']:+.1f} ({s['noise']:.1f})"
        rows.append(row)
    return rows


def _holds(ok: bool) -> str:
    return "holds" if ok else "does not hold"


def verdict_rows(runs: List[dict]) -> List[dict]:
    """Figure 6's claims checked on the logged curves, one row per claim and seed.

    1. at each lr drop the training and the test error step down beyond their trend, each step at
       least STEP_OVER_NOISE times the scatter of one point (Section 4.2's drops);
    2. a deeper plain net ends with higher training and test error than a shallower one (the
       degradation problem, Section 4.2 and Figure 6 left);
    3. each ResNet ends below the plain net of its depth on training and test error (Figure 6);
    4. the final test error is within TEST_TRAIN_GAP points of the final training error, as in
       Figure 6 (no overfitting regime).
    Final training error = the last logged value; final test error = the full test set at the end.
    """
    eval_key = _eval_key(runs)
    name = eval_key.split("/")[0]
    rows = []
    for seed in sorted({int(r["cfg"].seed) for r in runs}):
        rs = [r for r in _by_depth(runs) if int(r["cfg"].seed) == seed and r["status"].get("status") == "done"]
        if not rs:
            continue

        def final(r, which):
            st = r["status"]
            if which == "train":
                return st.get("last_train_err")
            return st.get("final_test_err") if eval_key == "test/err" else st.get("last_val_err")

        def add(claim, ok, numbers):
            verdict = "not measurable (too few points)" if ok is None else _holds(ok)
            rows.append({"claim": claim, "seed": seed, "verdict": verdict, "numbers": numbers})

        # 1. steps at the drops
        found, ok = [], True
        for r in rs:
            for key in ("train/err", eval_key):
                for drop, s in drop_steps(r, key).items():
                    if s is None:
                        ok = None
                        found.append(f"{r['model']} {'train' if key == 'train/err' else name} at {drop}: too few points")
                        continue
                    good = s["step"] > 0 and s["step"] >= STEP_OVER_NOISE * s["noise"]
                    ok = ok and good if ok is not None else None
                    label = "train" if key == "train/err" else name
                    found.append(f"{r['model']} {label} at {drop}: " + (
                        f"{s['step']:+.1f} (sd {s['noise']:.1f}, {s['step'] / s['noise']:.1f}x)" if s["noise"] > 0
                        else f"{s['step']:+.1f}"))
        if found:
            add(f"1. {name} and training error step down at each lr drop, ≥ {STEP_OVER_NOISE:g}x the point sd", ok,
                "; ".join(found))
        plain = [r for r in rs if not is_residual(r["model"])]
        resnets = [r for r in rs if is_residual(r["model"])]
        # 2. degradation of plain nets with depth
        if len(plain) > 1:
            pairs, ok = [], True
            for a, b in zip(plain, plain[1:]):
                for which in ("train", name):
                    fa, fb = final(a, which), final(b, which)
                    good = fa is not None and fb is not None and fb > fa
                    ok &= good
                    pairs.append(f"{which} {b['model']} {fb:.2f} vs {a['model']} {fa:.2f}" if None not in (fa, fb)
                                 else f"{which}: missing")
            add("2. a deeper plain net ends with higher training and test error", ok, "; ".join(pairs))
        # 3. ResNet vs plain of the same depth
        pairs, ok = [], True
        for r in resnets:
            twin = next((p for p in plain if depth_of(p["model"]) == depth_of(r["model"])), None)
            if twin is None:
                continue
            for which in ("train", name):
                fr, fp = final(r, which), final(twin, which)
                good = fr is not None and fp is not None and fr < fp
                ok &= good
                pairs.append(f"{which} {r['model']} {fr:.2f} vs {twin['model']} {fp:.2f}" if None not in (fr, fp)
                             else f"{which}: missing")
        if pairs:
            add("3. each ResNet beats the plain net of its depth", ok, "; ".join(pairs))
        # 4. test close to training error
        gaps, ok = [], True
        for r in rs:
            ft, fe = final(r, "train"), final(r, name)
            if ft is None or fe is None:
                continue
            ok &= abs(fe - ft) <= TEST_TRAIN_GAP
            gaps.append(f"{r['model']} {fe:.2f} − {ft:.2f} = {fe - ft:+.2f}")
        if gaps:
            add(f"4. final {name} error within {TEST_TRAIN_GAP:g} points of final training error", ok, "; ".join(gaps))
    return rows


DROP_SECTION = ("## Error at each lr drop\n\nError (%) just before (the trend line fitted over the preceding window, "
                "at the drop) and just after (mean over the window after it); step = how much lower it is after than "
                "the trend predicts, beside the scatter (sd) of one point about the trend. Training error: the logged "
                "training batches, window 10% of training; test error: the `data.eval_limit` subset at each "
                "evaluation, window 10% of training or 3 evaluation intervals, whichever is wider.\n\n")
VERDICT_SECTION = "## Figure 6's claims on these runs\n\n"


def markdown_table(rows: List[dict]) -> str:
    if not rows:
        return "(no runs)\n"
    cols = list(rows[0].keys())
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_results(rows: List[dict], path: Path, header: str, drops: List[dict] = (),
                  runs: Optional[List[dict]] = None) -> Path:
    """results.md: the header, the results table, the claims of Figure 6 checked (verdict_rows), and,
    when given, the table of steps at the drops. Without `runs` the verdicts are computed from the
    run folders beside results.md (the sweep folder)."""
    if runs is None and drops:
        runs = load_runs(sorted(d for d in path.parent.iterdir() if d.is_dir()))
    verdicts = verdict_rows(runs) if runs else []
    verdict_text = f"\n{VERDICT_SECTION}{markdown_table(verdicts)}" if verdicts else ""
    drop_text = f"\n{DROP_SECTION}{markdown_table(drops)}" if drops else ""
    path.write_text(f"{header}\n\n{markdown_table(rows)}{verdict_text}{drop_text}")
    return path
