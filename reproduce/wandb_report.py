"""`python -m reproduce report RUN_DIR | GROUP [--dry-run]`: a W&B report that recreates the figure.

Built with the `wandb-workspaces` package: per family (plain, ResNet) a panel of training error
(dashed) and test error (bold) against iterations, one line per depth; the lr panel; the sweep's
results table and its training-error step at each lr drop. `--dry-run` writes the report's JSON
spec locally (no login, no network); otherwise it is saved to W&B and its URL printed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from .config import ConfigError
from .loggers import has_wandb_login
from .models import is_residual
from .sweep import SWEEP_CONFIG, SWEEP_META, run_name


def _sweep_info(source: str) -> dict:
    """Group, project, entity, experiment and the runs (name, id, family) of a sweep."""
    path = Path(source).expanduser()
    candidates = [path] + sorted(p.parent for p in path.glob(f"*/{SWEEP_META}")) if path.is_dir() else []
    for d in candidates:
        if (d / SWEEP_META).exists() and (d / SWEEP_CONFIG).exists():
            cfg = OmegaConf.load(d / SWEEP_CONFIG)
            runs = []
            for model in cfg.models:
                for seed in cfg.seeds:
                    rd = d / run_name(model, seed, list(cfg.seeds))
                    rid = (rd / "wandb_id.txt").read_text().strip() if (rd / "wandb_id.txt").exists() else None
                    runs.append({"name": model, "id": rid, "family": "resnet" if is_residual(model) else "plain"})
            return {"group": json.loads((d / SWEEP_META).read_text())["group"], "project": cfg.wandb.project,
                    "entity": cfg.wandb.entity, "experiment": cfg.experiment, "runs": runs, "dir": d,
                    "milestones": list(cfg.schedule.milestones), "factor": cfg.schedule.factor}
    if path.exists():
        raise ConfigError(f"{source}: no sweep there (looked for {SWEEP_META} in it and its subfolders)")
    return {"group": source, "project": None, "entity": None, "experiment": source.split("-")[0], "runs": [],
            "dir": None, "milestones": [], "factor": None}


def build_report(info: dict, entity: str, project: str):
    import wandb_workspaces.reports.v2 as wr  # optional: the `report` extra

    def runset(name: str, only: str):
        """The sweep's runs (its group) of one job type (`train`, `summary`), or of one family's
        training runs (the `family:` tag, which train.py gives each run)."""
        where = f"Tags() in ['family:{only}']" if only in ("plain", "resnet") else f"JobType = '{only}'"
        filters = f"Group = '{info['group']}' and {where}"
        # no entity/project of their own: the report's are used, so no login is needed to build it
        return wr.Runset(entity="", project="", name=name, filters=filters)

    def error_panel(title: str, family: str):
        marks, widths = {}, {}
        for r in info["runs"]:
            if r["family"] == family and r["id"]:
                marks[f"{r['id']}:train/err"], widths[f"{r['id']}:train/err"] = "dashed", 1.0
                marks[f"{r['id']}:test/err"], widths[f"{r['id']}:test/err"] = "solid", 2.5
        return wr.LinePlot(title=title, x="trainer/global_step", y=["train/err", "test/err"],
                           title_x="iterations", title_y="error (%)", range_y=(0, 100),
                           line_marks=marks or None, line_widths=widths or None)

    drops = (f"lr x{info['factor']} at iterations {info['milestones']}" if info["factor"] is not None else "")
    blocks = [
        wr.H1(f"{info['experiment']}: plain nets vs ResNets (He et al. 2015, Figure 6)"),
        wr.P(f"Sweep {info['group']}. Dashed: training error; bold: test error; one line per depth. {drops}"),
        wr.H2("Plain nets"),
        wr.PanelGrid(runsets=[runset("plain", "plain")], panels=[error_panel("plain nets: error vs iterations", "plain")]),
        wr.H2("ResNets"),
        wr.PanelGrid(runsets=[runset("ResNet", "resnet")],
                     panels=[error_panel("ResNets: error vs iterations", "resnet")]),
        wr.H2("Learning rate and temperature"),
        wr.PanelGrid(runsets=[runset("all runs", "train")],
                     panels=[wr.LinePlot(title="lr", x="trainer/global_step", y=["lr"], title_x="iterations"),
                             wr.LinePlot(title="temperature = lr / batch", x="trainer/global_step", y=["temperature"],
                                         title_x="iterations", log_y=True)]),
        wr.H2("Results"),
        wr.PanelGrid(runsets=[runset("summary", "summary")],
                     panels=[wr.WeavePanelSummaryTable(table_name="results"),
                             wr.WeavePanelSummaryTable(table_name="lr_drops"), wr.MediaBrowser(media_keys=["figure"])]),
    ]
    return wr.Report(entity=entity, project=project, title=f"reproduce: {info['experiment']} ({info['group']})"[:128],
                     description="Plain vs residual nets on CIFAR-10; the learning rate as a temperature.",
                     blocks=blocks, width="fluid")


def main(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m reproduce report")
    p.add_argument("source", help="a sweep directory (out_dir/EXPERIMENT or out_dir) or a W&B group name")
    p.add_argument("--dry-run", action="store_true", help="write the report spec as JSON; contact nobody")
    p.add_argument("--entity", default=None)
    p.add_argument("--project", default=None)
    p.add_argument("--out", default=None, help="where --dry-run writes the spec (default: SWEEP/report.json)")
    args = p.parse_args(argv)
    info = _sweep_info(args.source)
    project = args.project or info["project"] or "reproduce"
    entity = args.entity or info["entity"]
    if entity is None:
        if args.dry_run:
            entity = "your-entity"
        else:
            if not has_wandb_login():
                raise ConfigError("report: not logged in to W&B; run `wandb login` (or use --dry-run)")
            import wandb  # optional: wandb.mode=disabled runs without it installed
            entity = wandb.Api().default_entity
    report = build_report(info, entity, project)
    if args.dry_run:
        spec = report._to_model().model_dump(by_alias=True, exclude_none=True, mode="json")
        out = Path(args.out) if args.out else (info["dir"] or Path(".")) / "report.json"
        out.write_text(json.dumps(spec, indent=1))
        print(f"report spec: {out}")
        return 0
    report.save()
    print(f"report: {report.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
