"""Train one run: model + data + module + callbacks + loggers -> pl.Trainer.fit.

Each run lives in its own directory: config.yaml (resolved), metrics.csv, checkpoints/last.ckpt,
status.json (running | done | failed | interrupted, with the final numbers) and wandb/.
"""
from __future__ import annotations

import errno
import os
import subprocess
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only
import torch
from omegaconf import OmegaConf

from . import __version__
from .callbacks import AtomicCheckpoint, BatchScaling, EvalLines, GradientNoiseScale, IterationBar, LRSchedule, StopAtLastStep
from .callbacks.checkpoint import Fault, RunInterrupted, checkpoint_step
from .errors import ConfigError
from .graph_step import uses_cuda_graph
from .data import build_datamodule
from .data.cifar10 import DataError
from .lightning import ignore_known_warnings
from .loggers import CSVMetrics, backfill_wandb, make_wandb_logger, run_tags
from .loggers import wandb_config as run_wandb_config
from .models import is_imagenet
from .module import ClassifierModule, NonFiniteLoss
from .wandb_io import finish_run, logged_in_wandb
from .runs import RunDir
from .schedules import Schedule

def environment() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except Exception:
        commit = None
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"reproduce": __version__, "torch": torch.__version__, "lightning": pl.__version__,
            "git_commit": commit, "device": device, "cpu_threads": torch.get_num_threads()}


def precision_for(requested: str, accelerator: str) -> str:
    if requested != "auto":
        return requested
    on_gpu = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    return "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true"


def compile_mode_for(requested: str, accelerator: str) -> str:
    if requested != "auto":
        return requested
    on_gpu = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    # CUDA graphs replay a whole step as one launch: a ResNet-20 step at batch 128 is launch-bound on a large GPU
    return "reduce-overhead" if on_gpu else "default"


def evaluate(module: pl.LightningModule, batches, normalize):
    """Top-1 error (%) over all batches, without gradients (the final full test set): a float for
    one net ([B, classes] logits), a list of each run's for a stack ([B, N, classes])."""
    module.eval()
    wrong, total = 0, 0
    with torch.no_grad():
        for x, y in batches:
            x, y = normalize(x.to(module.device)), y.to(module.device)
            predicted = module(x).argmax(-1)
            wrong = wrong + predicted.ne(y.view(-1, *[1] * (predicted.dim() - 1))).sum(0)
            total += len(y)
    wrong = torch.as_tensor(wrong).tolist()  # integer counts: the division below is the host's, on every device
    return [w * 100 / max(total, 1) for w in wrong] if isinstance(wrong, list) else wrong * 100 / max(total, 1)


def model_options(cfg, model_name: str) -> dict:
    opts = {}
    if cfg.model.shortcut is not None:
        if not is_imagenet(model_name):
            raise ConfigError("model.shortcut applies to the ImageNet nets; CIFAR nets use option A (Section 4.2)")
        opts["shortcut"] = None if cfg.model.shortcut in ("none", "None") else cfg.model.shortcut
    if cfg.model.zero_init_residual:
        opts["zero_init_residual"] = True
    return opts


@dataclass
class Run:
    """The parts of one run, built and not yet trained (`build_run`); `execute` trains them."""
    cfg: Any
    files: RunDir
    name: str
    trainer: pl.Trainer
    module: ClassifierModule
    datamodule: pl.LightningDataModule
    checkpoint: AtomicCheckpoint
    resume_from: Optional[Path]  # the checkpoint to continue from, None for a fresh start
    wandb: Any  # the W&B logger, None when W&B is disabled
    status: dict  # what status.json says while the run trains


def build_run(cfg, run_dir: Path, group: str, resume: bool = False, name: str | None = None) -> Run:
    """Model, data, module, callbacks, loggers and Trainer of `cfg.models[0]` with `cfg.seed`.

    Writes config.yaml and the W&B run id, and (on resume) back-fills W&B from metrics.csv; trains
    nothing. `execute` trains what this builds: `run_one` is the two in a row.
    """
    run_dir = Path(run_dir)
    files = RunDir(run_dir)
    model_name = cfg.models[0]
    name = name or model_name
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_cb = AtomicCheckpoint(files.checkpoint_dir, cfg.trainer.checkpoint_every, cfg.trainer.eval_every,
                               Fault.from_env(name), stop_check_every=cfg.trainer.log_every)
    ckpt_path = ckpt_cb.last_path if resume and ckpt_cb.last_path.exists() else None
    resume_step = checkpoint_step(ckpt_path, cfg.trainer.accumulate) if ckpt_path else None  # the tensors load later, inside fit
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    schedule = Schedule.for_run(cfg)
    s = cfg.schedule
    lr_cb = LRSchedule(schedule, s.on_plateau, s.plateau_patience, s.plateau_threshold, s.max_drops)
    callbacks = [lr_cb, BatchScaling(schedule, cfg.trainer.log_every), StopAtLastStep(), EvalLines(name)]
    if cfg.trainer.noise_scale:
        callbacks.append(GradientNoiseScale(cfg.trainer.noise_every))
    progress_bar = cfg.trainer.progress and os.isatty(2)
    if progress_bar:
        callbacks.append(IterationBar())
    callbacks.append(ckpt_cb)  # last: a checkpoint holds what every other callback did in that step

    cuda_graph = uses_cuda_graph(cfg)
    dm = build_datamodule(cfg, schedule)
    o = cfg.optim
    optim = {"momentum": o.momentum, "weight_decay": o.weight_decay, "nesterov": o.nesterov}
    module = ClassifierModule(model_name, optim, cfg.trainer.log_every, cfg.trainer.channels_last,
                              dm.num_classes, dm.eval_splits, cfg.trainer.accumulate, cuda_graph,
                              model_options(cfg, model_name))
    if precision_for(cfg.trainer.precision, cfg.trainer.accelerator) == "64-true":
        # float64 before fit: Lightning restores a checkpoint's weights before it converts the
        # module to the precision, so a float32 module would round a resumed run's weights
        module = module.double()
    if cfg.trainer.compile:
        # static shapes: one graph (and one CUDA graph) per batch shape, train and eval alike; the
        # module compiled in place keeps its state_dict keys, so its checkpoint loads uncompiled
        module.model.compile(mode=compile_mode_for(cfg.trainer.compile_mode, cfg.trainer.accelerator), dynamic=False)

    if not resume or not files.config_path.exists():
        OmegaConf.save(cfg, files.config_path)
    run_id = files.wandb_id(create=True)
    loggers = [CSVMetrics(run_dir, resume_step)]
    wandb_config = {**run_wandb_config(cfg, group), "effective_batch": cfg.data.batch_size, "lr_used": schedule.lr(0),
                    "train_step_used": "cuda-graph" if cuda_graph else "eager", "total_steps": schedule.total_steps,
                    "env": environment()}
    tags = run_tags(cfg, model_name)
    # a resumed run re-computes, bit for bit, the iterations after its checkpoint: what W&B already
    # holds of them is not sent twice
    already_logged = logged_in_wandb(run_dir) if resume else set()
    wb = make_wandb_logger(cfg.wandb, run_dir, name, group, run_id, tags, wandb_config, already_logged)
    if wb is not None:
        loggers.append(wb)
        if resume_step is not None and rank_zero_only.rank == 0:
            backfill_wandb(wb, files.metrics_path, resume_step, already_logged)

    accelerator = cfg.trainer.accelerator
    trainer = pl.Trainer(
        accelerator=accelerator, devices=cfg.trainer.devices, num_nodes=cfg.trainer.num_nodes,
        strategy=cfg.trainer.strategy, precision=precision_for(cfg.trainer.precision, accelerator),
        # the step accumulates itself (ClassifierModule): to Lightning a batch is one micro-batch
        max_steps=schedule.total_steps, val_check_interval=cfg.trainer.eval_every * cfg.trainer.accumulate,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0, log_every_n_steps=cfg.trainer.log_every, logger=loggers, callbacks=callbacks,
        enable_checkpointing=False, enable_model_summary=False, deterministic=cfg.trainer.deterministic,
        enable_progress_bar=progress_bar, benchmark=torch.cuda.is_available(),
        default_root_dir=str(run_dir),
    )
    status = {"model": model_name, "name": name, "seed": cfg.seed, "run_id": run_id, "status": "running",
              "total_steps": schedule.total_steps}
    return Run(cfg, files, name, trainer, module, dm, ckpt_cb, ckpt_path, wb, status)


def execute(run: Run, debug: bool = False) -> dict:
    """Train a built run to its last step (or from its checkpoint), evaluate the whole test set,
    and write status.json; returns the status. A failure is recorded, not raised (the sweep goes on
    with the other runs), except bad data, which every run would hit; with `debug` it is raised."""
    trainer, files, status = run.trainer, run.files, dict(run.status)
    if trainer.is_global_zero:
        files.write_status(**status)
    t0 = time.time()
    outcome, disk_full = fit(trainer, run.module, run.datamodule, run.resume_from, debug)
    status.update(outcome, wall_s=round(time.time() - t0, 1))
    conclude(run, status, trainer.is_global_zero, disk_full)
    if disk_full is not None:
        raise disk_full
    return status


def fit(trainer: pl.Trainer, module, dm, resume_from: Path | None, debug: bool) -> tuple[dict, OSError | None]:
    """`trainer.fit`, then the whole test set once on rank 0. Returns the outcome for status.json
    (status, step, final_test_err or the error) and, for a full disk, the error to raise once the
    statuses are written: the sweep stops there, since every run would hit it."""
    disk_full = None
    try:
        with warnings.catch_warnings():
            ignore_known_warnings()
            trainer.fit(module, datamodule=dm, ckpt_path=str(resume_from) if resume_from else None)
        outcome = {"status": "done", "step": trainer.global_step}
        if trainer.is_global_zero:
            with trainer.precision_plugin.forward_context():  # the precision of the periodic evaluations
                outcome["final_test_err"] = evaluate(module, dm.test_dataloader(), dm.normalize)
    except RunInterrupted as e:
        outcome = {"status": "interrupted", "step": e.step, "error": str(e)}
    except NonFiniteLoss as e:
        outcome = {"status": "failed", "error": str(e), "step": trainer.global_step}
    except DataError:
        raise  # the data is wrong for every run: stop the sweep with one line
    except Exception as e:
        outcome = {"status": "failed", "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                   "step": trainer.global_step, "traceback": traceback.format_exc()}
        if debug:
            raise
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            disk_full = e
            outcome["error"] = e.strerror
    return outcome, disk_full


def conclude(run: Run, status: dict, global_zero: bool = True, disk_full: OSError | None = None) -> None:
    """A trained (or stopped) run's summary from its metrics.csv into `status`, then status.json
    and the end of its W&B run."""
    files = run.files
    metrics = files.metrics()
    for key in ("train/err", "val/err", "test/err"):
        if metrics.get(key):
            status[f"last_{key.replace('/', '_')}"] = metrics[key][-1][1]
    if metrics.get("test/err"):
        status["best_test_err"] = min(v for _, v in metrics["test/err"])
    if global_zero:
        try:
            files.write_status(**status)
        except OSError as e:
            if disk_full is None:
                raise
            status["error"] += f" (and {files.status_path}: {e.strerror})"
        if run.wandb is not None:
            finish_run(run.wandb, status, run.checkpoint.last_path, run.cfg)


def run_one(cfg, run_dir: Path, group: str, resume: bool = False, name: str | None = None,
            debug: bool = False) -> dict:
    """Train `cfg.models[0]` with `cfg.seed`; returns the status dict also written to status.json."""
    return execute(build_run(cfg, run_dir, group, resume, name), debug)
