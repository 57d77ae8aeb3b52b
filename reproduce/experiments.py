"""Experiment kinds: the registry. Each kind says how a config expands into runs (`plans`, which
`--dry-run` shows and the sweep trains) and what it does with them (`run`: train through
`sweep.run_plans`, then draw its report). A new kind is one module with those two functions and
one line in `KINDS`; `kind:` in its YAML selects it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List

from pytorch_lightning.utilities import rank_zero_only

from .batch_scaling import batch_scaling_plans, run_batch_scaling
from .config import _suggest, for_model
from .errors import ConfigError
from .data.datamodule import load_arrays
from .data.imagefolder import ImageFolderDataModule, make_tiny_imagefolder
from .report import curves_figure, drop_rows, drops_title, load_runs, results_rows, write_results
from .runs import read_status
from .sweep import TINY_IMAGEFOLDER, experiment_dir, prepare_sweep, run_name, run_plans
from .temperature import run_temperature, temperature_plans
from .wandb_io import curve_rows, log_experiment_summary


def model_plans(cfg) -> List[tuple]:
    return [(run_name(m, s, list(cfg.seeds)), for_model(cfg, m, s)) for m in cfg.models for s in cfg.seeds]


def curves(cfg, exp_dir: Path, group: str) -> Dict[str, Path]:
    """Figure 6 (and Figure 4 for ImageNet): one run per model, curves and a results table."""
    plans = model_plans(cfg)
    run_plans(cfg, plans, exp_dir, group)
    if rank_zero_only.rank != 0 or cfg.only:
        return {}  # a DDP worker, or a parallel worker: the sweep's process draws the report
    runs = load_runs([exp_dir / name for name, _ in plans])
    drops = f"lr x{cfg.schedule.factor} at {list(cfg.schedule.milestones)} of {cfg.schedule.max_steps} iterations (batch {cfg.schedule.ref_batch})"
    fig = curves_figure(runs, exp_dir / "figure.png", drops_title(cfg))
    rows = results_rows(runs)
    final_on = "the full validation set" if cfg.kind == "imagenet" else "the full 10k test set"
    header = (f"# {cfg.experiment} — {cfg.profile} profile\n\n{cfg.description}\n\n{drops}. Final error on "
              f"{final_on}; best = lowest at any evaluation point (on `data.eval_limit` images when set).")
    steps = drop_rows(runs)
    table = write_results(rows, exp_dir / "results.md", header, steps, runs)
    log_experiment_summary(cfg, group, exp_dir, fig, rows, {"lr_drops": steps, "curves": curve_rows(runs)})
    return {"figure": fig, "results": table}


@dataclass(frozen=True)
class Kind:
    plans: Callable[..., List[tuple]]  # cfg -> [(run name, run config)]
    run: Callable[..., Dict[str, Path]]  # (cfg, sweep dir, W&B group) -> {output name: path}


KINDS: Dict[str, Kind] = {
    "curves": Kind(model_plans, curves),  # Figure 6
    "imagenet": Kind(model_plans, curves),  # Figure 4
    "temperature": Kind(temperature_plans, run_temperature),
    "batch_scaling": Kind(lambda cfg: [(name, run) for name, _, run in batch_scaling_plans(cfg)], run_batch_scaling),
}


def kind_of(cfg) -> Kind:
    """The kind `cfg.kind` names; an unknown one fails in one line, before anything runs."""
    if cfg.kind not in KINDS:
        raise ConfigError(f"kind={cfg.kind!r} is not valid{_suggest(cfg.kind, list(KINDS))}; "
                          f"choose one of: {', '.join(KINDS)}")
    return KINDS[cfg.kind]


def failed_runs(cfg) -> List[str]:
    """The runs of this sweep (those of `only` when set) whose status.json says failed."""
    names = [name for name, _ in kind_of(cfg).plans(cfg) if not cfg.only or name in cfg.only]
    return [name for name in names if read_status(experiment_dir(cfg) / name).get("status") == "failed"]


def run_experiment(cfg, overwrite: bool = False) -> Dict[str, Path]:
    kind = kind_of(cfg)
    if cfg.data.dataset in ("cifar10", "synthetic"):
        load_arrays(cfg.data)  # missing or broken data fails here, before any directory is made
    elif cfg.data.root != TINY_IMAGEFOLDER:
        ImageFolderDataModule(cfg.data, None, cfg.seed)  # checks data.root/{train,val}
    exp_dir, group = prepare_sweep(cfg, overwrite)
    if cfg.data.root == TINY_IMAGEFOLDER:
        root = make_tiny_imagefolder(exp_dir / "tiny-imagefolder")
        cfg.data.root = str(root)
    return kind.run(cfg, exp_dir, group)
