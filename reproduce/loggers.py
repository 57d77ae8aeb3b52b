"""Loggers: an append-only CSV that survives kills and resumes, and W&B with a decided mode.

Both record `iteration` = optimizer steps completed when the value was measured (Lightning's
logger step is 0-based, the step *before* the update), so an evaluation after 1,000 iterations is
logged at 1000, as the paper's x-axis counts.

metrics.csv is long-format (step, metric, value): every log call appends and flushes, so a
SIGKILL loses nothing already logged, and a resumed run first drops the rows after its
checkpoint so the history has neither gaps nor duplicate steps.
"""
from __future__ import annotations

import csv
import importlib.util
import netrc
import os
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Optional

from omegaconf import OmegaConf
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities import rank_zero_only

from .config import SWEEP_KEYS
from .models import depth_of, is_residual
from .runs import METRICS_FILE, read_rows, write_rows


class CSVMetrics(Logger):
    def __init__(self, run_dir: str | Path, resume_step: Optional[int] = None):
        super().__init__()
        self.path = Path(run_dir) / METRICS_FILE
        self._resume_step = resume_step
        self._ready = False
        if rank_zero_only.rank == 0:
            self._prepare()  # the file exists (or is trimmed to the checkpoint) before the first step

    @property
    def name(self) -> str:
        return "csv"

    @property
    def version(self) -> str:
        return "0"

    @property
    def log_dir(self) -> str:
        return str(self.path.parent)

    def _prepare(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._resume_step is not None and self.path.exists():
            kept = [r for r in read_rows(self.path) if r["step"] <= self._resume_step]
            write_rows(self.path, kept)
        elif not self.path.exists() or self._resume_step is None:
            write_rows(self.path, [])
        self._ready = True

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass  # the resolved config is saved as config.yaml beside the metrics

    @rank_zero_only
    def log_metrics(self, metrics: Dict[str, float], step: Optional[int] = None) -> None:
        if not self._ready:
            self._prepare()
        with open(self.path, "a", newline="") as f:
            w = csv.writer(f)
            for key, value in without_lightning_epoch(metrics).items():
                w.writerow([step + 1, key, float(value)])


def without_lightning_epoch(metrics: Dict[str, float]) -> Dict[str, float]:
    """Lightning adds its integer epoch to every log call (0 throughout our one-epoch runs); the
    fractional `epoch` that BatchScaling logs with `lr` is the meaningful one."""
    if "epoch" in metrics and "lr" not in metrics:
        return {k: v for k, v in metrics.items() if k != "epoch"}
    return metrics


# --------------------------------------------------------------------------------------------
# Weights & Biases


def has_wandb_login() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1]
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_installed() -> bool:
    try:
        return importlib.util.find_spec("wandb") is not None
    except ImportError:  # a finder that refuses it
        return False


_told_missing = False


def decide_mode(requested: str) -> str:
    """The W&B mode of a run. wandb is imported only where a run is created, so `disabled` (and
    `auto` without wandb installed, e.g. a bare GPU machine) needs no wandb at all."""
    global _told_missing
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "online"):
        return os.environ["WANDB_MODE"]
    if not wandb_installed():
        if not _told_missing:
            print("W&B: wandb is not installed; W&B logging is off (metrics.csv is written as always)", file=sys.stderr)
            _told_missing = True
        return "disabled"
    return "online" if has_wandb_login() else "offline"


_told_offline = False


def say_offline(run_dir: Path) -> None:
    global _told_offline
    if not _told_offline:
        print(f"W&B: not logged in, logging offline; upload later with: wandb sync {run_dir.parent}/*/wandb/offline-run-*",
              file=sys.stderr)
        _told_offline = True


PACKAGE_DIR = Path(__file__).resolve().parent
CODE_ARTIFACT = "source-reproduce"  # one name for every run: identical sources are one version in W&B


def log_source(run) -> None:
    """The package's source with the run (W&B's Code tab), so a report links the exact code that
    ran; the git commit is in the run's config (env.git_commit). Only the package directory is
    walked: wandb walks every file under the root it is given, and a checkout's root holds the
    venv, the data and the runs. The experiment's YAML is in the run's config, resolved."""
    run.log_code(root=str(PACKAGE_DIR), name=CODE_ARTIFACT, include_fn=lambda path, root: path.endswith(".py"))


def sweep_agent() -> Optional[tuple]:
    """(sweep id, run id) when a W&B sweep agent (`wandb agent`) started this process, else None.
    The agent sets WANDB_SWEEP_ID and WANDB_RUN_ID, and wandb.init takes the run's id, project and
    entity from them (and ignores those passed to it)."""
    sweep_id, run_id = os.environ.get("WANDB_SWEEP_ID"), os.environ.get("WANDB_RUN_ID")
    return (sweep_id, run_id) if sweep_id and run_id else None


def run_tags(cfg, model_name: str) -> List[str]:
    """`key:value` tags: the experiment `resnet` and the family `resnet` stay apart."""
    family = "resnet" if is_residual(model_name) else "plain"
    return [f"experiment:{cfg.experiment}", f"family:{family}", f"depth:{depth_of(model_name)}",
            f"profile:{cfg.profile}", *cfg.wandb.tags]


def summary_tags(cfg) -> List[str]:
    return [f"experiment:{cfg.experiment}", f"profile:{cfg.profile}", *cfg.wandb.tags]


def wandb_config(cfg, group: Optional[str], run: bool = True) -> dict:
    """What a W&B run's config holds: the keys that apply to it. A run's own `per_model` entry is
    already merged into its config (config.for_model), so `per_model` goes from a run (the summary
    run keeps it: it is the sweep's); `sweep.*` keeps only the keys of this kind
    (config.SWEEP_KEYS); `wandb.group` is the group the run is in (absent when it is in none)."""
    out = OmegaConf.to_container(cfg, resolve=True)
    if run:
        out.pop("per_model", None)
    used = SWEEP_KEYS.get(cfg.kind, ())
    out["sweep"] = {k: v for k, v in out["sweep"].items() if k in used}
    if not out["sweep"]:
        del out["sweep"]
    out["wandb"] = {k: v for k, v in out["wandb"].items() if k != "group"}
    if group:
        out["wandb"]["group"] = group
    return out


def wandb_settings(wcfg, **more):
    import wandb  # optional: wandb.mode=disabled runs without it installed
    return wandb.Settings(init_timeout=wcfg.init_timeout, silent=True, **more)


def make_wandb_logger(wcfg, run_dir: Path, name: str, group: str, run_id: str, tags: List[str], config: dict,
                      already_logged: frozenset = frozenset()):
    """A WandbLogger whose run exists already (online, or offline after a failed online init).
    Values in `already_logged` ({(iteration, metric)}, from an earlier attempt of a resumed run)
    are not sent again, so the run's history has each metric once per iteration.

    The run is created here with wandb.init and handed to Lightning (`WandbLogger(experiment=run)`,
    Lightning's documented way to log to a run of one's own), so that wandb.init gets only the
    arguments meant for it: Lightning's own call passes `anonymous`, which wandb 0.31 answers with a
    warning on every run. Under a sweep agent the agent's run is used (its id, project and entity)."""
    mode = decide_mode(wcfg.mode)
    if mode == "disabled":
        return None
    from pytorch_lightning.loggers import WandbLogger  # imports wandb, which is optional

    class IterationWandbLogger(WandbLogger):
        def log_metrics(self, metrics, step=None):
            metrics = without_lightning_epoch(metrics)
            iteration = None if step is None else step + 1
            if iteration is not None and already_logged:
                metrics = {k: v for k, v in metrics.items() if (iteration, k) not in already_logged}
                if not metrics:
                    return
            super().log_metrics(metrics, iteration)

    if rank_zero_only.rank != 0:
        return IterationWandbLogger(log_model=False)  # Lightning creates no run on the other ranks
    import wandb  # optional: wandb.mode=disabled runs without it installed

    os.environ.setdefault("WANDB_SILENT", "true")
    # under a sweep agent wandb.init takes the agent's run (id, project, entity) and W&B names it
    where = {} if sweep_agent() else {"project": wcfg.project, "entity": wcfg.entity, "id": run_id, "name": name}

    def attempt(mode: str):
        run = wandb.init(**where, group=group, tags=tags, job_type="train", dir=str(run_dir), mode=mode,
                         resume="allow", config=config,
                         reinit="create_new",  # a stack's runs are live at once (stacked.py), each its own run
                         settings=wandb_settings(wcfg, x_transaction_log_flush_interval=wcfg.flush_every_s))
        # every panel plots against iterations; epochs are there too
        run.define_metric("trainer/global_step")
        run.define_metric("*", step_metric="trainer/global_step", step_sync=True)
        log_source(run)
        return IterationWandbLogger(experiment=run, save_dir=str(run_dir), log_model=False)

    if mode == "online":
        try:
            return attempt("online")
        except Exception as e:
            warnings.warn(f"W&B online init failed ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                          f"logging offline instead")
            wandb.teardown()  # wandb's service holds the failed attempt's run id as in use until it stops
            mode = "offline"
    say_offline(run_dir)
    return attempt("offline")


def backfill_wandb(wandb_logger, csv_path: Path, up_to: int, already_logged: frozenset) -> None:
    """On resume, send W&B the rows of metrics.csv (up to the checkpoint's iteration) that its logs
    lack: a SIGKILL loses what W&B had not flushed yet, while metrics.csv is flushed at each write."""
    missing: Dict[int, Dict[str, float]] = {}
    for r in read_rows(csv_path) if Path(csv_path).exists() else []:
        if r["step"] <= up_to and (r["step"], r["metric"]) not in already_logged:
            missing.setdefault(r["step"], {})[r["metric"]] = r["value"]
    for iteration, metrics in sorted(missing.items()):
        wandb_logger.log_metrics(metrics, step=iteration - 1)
