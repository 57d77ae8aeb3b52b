"""Train a stack: runs of a sweep whose nets have the same parameter shapes, as one network.

`trainer.stack` (on | off | auto) groups the runs of a sweep that differ only in seed, plain or
residual, and their lr schedule (`stack_key`), up to `trainer.stack_max` per stack. A stack is one
process and one Lightning Trainer around `StackedModule` (models/stacked.py: one grouped kernel
per layer for all runs, the step's host work paid once), and each of its runs stays a run:

  - its own net initialised from its seed (`train.build_run`, as alone), its own data order and
    augmentation (its TrainBatches, the same (seed, iteration) draws), its own lr at every step
    (its LRSchedule: the ResNet-110 warmup ends at its own 80% crossing);
  - the loss is the sum of the runs' mean losses, so run i's gradient is that of its own loss; SGD's
    momentum and weight decay act on each slice alone (StackedSGD), with no global norm or loss
    scale that would couple them (fp16's GradScaler is refused: config.stack_blockers);
  - its own directory, metrics.csv, status.json, W&B run and `checkpoints/last.ckpt`. The
    checkpoint is the one that run would have written alone (`StackCheckpointIO` cuts the stacked
    state into per-run files, Lightning's own format), so it loads as that model alone, continues
    unstacked, and N of them at one iteration continue as a stack;
  - a run whose loss or weights turn non-finite is FAILED at that iteration and frozen (lr 0, its
    loss out of the sum, no more checkpoints); the others train on.
"""
from __future__ import annotations

import io
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import List

import pytorch_lightning as pl
from pytorch_lightning.plugins.io import CheckpointIO
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from .callbacks import AtomicCheckpoint, LRSchedule, StopAtLastStep
from .callbacks.progress import duration
from .callbacks.checkpoint import LAST, Fault, checkpoint_step
from .config import ConfigError, stack_blockers, to_dict
from .graph_step import GraphedStep, uses_cuda_graph
from .lightning import iteration_in_progress, logger_step
from .models import build
from .models.stacked import StackedCifarNet, StackedSGD, stack_states, unstack_state
from .module import PIXEL_MEAN, TRAIN_SUMS
from .runs import RunDir, write_error
from .schedules import Schedule
from .train import Run, conclude, fit, precision_for

STACK_RUNS = "stack_runs"  # key of a stacked checkpoint (in memory only): each run's LRSchedule state and sums
# What may differ between the runs of one stack: everything else in their configs is equal
PER_RUN_KEYS = ("seed", "models", "schedule.lr", "schedule.warmup", "schedule.warmup_lr",
                "schedule.warmup_steps", "schedule.warmup_until_err")
# Where `trainer.stack=auto` stacks: the devices on which a benchmark in docs/performance.md showed a
# stack faster than its runs one after another
STACK_FASTER_ON: tuple = ()


def stacking(cfg, cuda_available: bool | None = None) -> bool:
    """Whether this sweep's same-shape runs train as stacks (`trainer.stack` resolved here)."""
    t = cfg.trainer
    if t.stack != "auto":
        return t.stack == "on"
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    device = "cuda" if cuda and t.accelerator in ("auto", "gpu", "cuda") else "cpu"
    return device in STACK_FASTER_ON and not stack_blockers(cfg)


def stack_key(run_cfg) -> str:
    """Runs with equal keys can train as one stack: the same config but for PER_RUN_KEYS, and the
    same parameter shapes."""
    d = to_dict(run_cfg)
    for key in PER_RUN_KEYS:
        *path, last = key.split(".")
        node = d
        for part in path:
            node = node[part]
        node.pop(last, None)
    with torch.device("meta"):
        shapes = [tuple(p.shape) for p in build(run_cfg.models[0]).parameters()]
    return json.dumps([d, shapes], sort_keys=True, default=str)


def stack_groups(plans: List[tuple], limit: int, start_step=lambda name: None) -> List[List[tuple]]:
    """The plans in stacks (lists of (name, run config)), in plan order; a stack holds runs with
    one `stack_key` and one starting iteration (`start_step(name)`: its checkpoint's, None fresh),
    at most `limit` of them (more are split into stacks of near-equal size). A run alone is a stack of one."""
    groups: dict = {}
    for name, run_cfg in plans:
        groups.setdefault((stack_key(run_cfg), start_step(name)), []).append((name, run_cfg))
    stacks = []
    for group in groups.values():
        k = math.ceil(len(group) / limit)
        stacks += [group[i::k] for i in range(k)]
    return stacks


def finish_renames(exp_dir: Path, names: List[str], accumulate: int) -> List[str]:
    """Where a stack was killed between its N renames (StackCheckpointIO.save_checkpoint), some of
    its runs hold checkpoint K and the others K's file still under its temporary name: complete,
    since all N are written before the first rename. Those are renamed, so that the stack continues
    as one, from K (a temporary file no stack-mate's checkpoint vouches for is left alone: the
    kill may have cut it short). Returns the lines saying what was renamed."""
    def step(path: Path) -> int | None:
        try:
            return checkpoint_step(path, accumulate) if path.exists() else None
        except ConfigError:
            return None

    lines = []
    for name in names:
        tmp, last = exp_dir / name / "checkpoints" / f".{LAST}.tmp", exp_dir / name / "checkpoints" / LAST
        k = step(tmp)
        if k is None or (step(last) or 0) >= k:
            continue
        mates = RunDir(exp_dir / name).status().get("stack")
        mates = [m for m in mates if m in names and m != name] if isinstance(mates, list) else []
        if any(step(exp_dir / m / "checkpoints" / LAST) == k for m in mates):
            os.replace(tmp, last)
            lines.append(f"{name}: its checkpoint of iteration {k}, written with its stack's before a kill, "
                         f"is now its {LAST}")
    return lines


class StackedModule(pl.LightningModule):
    """The runs `runs` (train.build_run, not trained) as one LightningModule; it logs each run's
    metrics to that run's own loggers, at the iterations an unstacked run logs them."""

    def __init__(self, runs: List[Run], cuda_graph: bool = False):
        super().__init__()
        self.runs, self.n = runs, len(runs)
        first = runs[0].module
        self.automatic_optimization = False
        self.stepped = True  # one Lightning batch per iteration (callbacks read it)
        self.cuda_graph, self.graphs = cuda_graph, {}
        self.channels_last, self.log_every = first.channels_last, first.log_every
        self.optim_cfg = first.optim_cfg
        self.model = StackedCifarNet([r.module.model for r in runs])
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.schedules = [next(cb for cb in r.trainer.callbacks if isinstance(cb, LRSchedule)) for r in runs]
        self.loss_sum, self.wrong_sum, self.counts = torch.zeros(self.n), torch.zeros(self.n), [0, 0]
        self.active = torch.ones(self.n, dtype=torch.bool)  # False: failed, frozen
        self.failures: dict = {}  # run index -> (iteration, error)
        self.last_train_err: list = [None] * self.n
        self.started = None  # (time, iteration) at the start of training
        self.eval_splits = first.eval_splits
        classes = runs[0].datamodule.num_classes
        self.eval_acc = torch.nn.ModuleList(torch.nn.ModuleList(MulticlassAccuracy(classes, average="micro")
                                                                for _ in runs) for _ in self.eval_splits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, N, classes] of each run's images [B, N, 3, H, W], or of one batch [B, 3, H, W] for all."""
        if x.dim() == 4:
            x = x.unsqueeze(1).expand(-1, self.n, -1, -1, -1)
        x = x.flatten(1, 2)  # [B, N, 3, H, W] -> [B, N*3, H, W]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def loss_and_sums(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The sum of the active runs' mean losses; adds each run's loss and wrong predictions to
        its device sums (no host sync; a CUDA graph captures this)."""
        logits = self(x)  # [B, N, classes]
        losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(0)
        self.loss_sum.add_(losses.detach())
        self.wrong_sum.add_(logits.detach().argmax(2).ne(y).sum(0))
        return torch.where(self.active, losses, torch.zeros_like(losses)).sum()

    def run_lrs(self, step: int) -> list:
        """Each run's lr for the 0-based step `step`; 0 for a frozen run."""
        return [0.0 if i in self.failures else s.lr(step) for i, s in enumerate(self.schedules)]

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt = self.optimizers()
        step = iteration_in_progress(self.trainer)
        opt.param_groups[0]["lr"] = lrs = self.run_lrs(step - 1)
        self.counts[0] += 1
        self.counts[1] += len(y)
        if self.cuda_graph:
            key = (tuple(x.shape), tuple(y.shape), x.dtype)
            if key not in self.graphs:
                self.graphs[key] = GraphedStep(list(self.parameters()), x, y, self.loss_and_sums, False)
            loss = self.graphs[key](x, y)
        else:
            opt.zero_grad()
            loss = self.loss_and_sums(x, y)
            self.manual_backward(loss)
        opt.step()
        if step % self.log_every == 0 or step == self.trainer.max_steps:
            self._log(step, lrs)
        return loss

    def log_run(self, i: int, metrics: dict, iteration: int) -> None:
        for logger in self.runs[i].trainer.loggers:
            logger.log_metrics(metrics, step=logger_step(iteration))

    def fail(self, i: int, step: int, error: str) -> None:
        """Run i diverged: FAILED at `step`, frozen from now on (its lr 0, its loss out of the sum)."""
        if i not in self.failures:
            self.failures[i] = (step, error)
            self.active[i] = False
            if not bool(self.active.any()):
                self.trainer.should_stop = True

    def _log(self, step: int, lrs: list) -> None:
        """What ClassifierModule and BatchScaling log at a log step, for each active run."""
        micro_batches, examples = self.counts
        loss = (self.loss_sum / micro_batches).tolist()
        err = (self.wrong_sum / examples * 100).tolist()
        self.loss_sum.zero_()
        self.wrong_sum.zero_()
        self.counts = [0, 0]
        schedule = self.runs[0].datamodule.schedule
        b = schedule.batch_size(step - 1)
        epoch = schedule.examples(step) / self.trainer.datamodule.train_size
        for i in range(self.n):
            if i in self.failures:
                continue
            if not math.isfinite(loss[i]):
                self.fail(i, step, f"the training loss became {loss[i]} by iteration {step}")
                continue
            self.last_train_err[i] = err[i]
            self.log_run(i, {"train/loss": loss[i], "train/err": err[i]}, step)
            self.schedules[i].note_train_err(step, err[i])
            self.log_run(i, {"lr": lrs[i], "batch_size": float(b), "temperature": lrs[i] / b, "epoch": epoch}, step)

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        x, y = batch
        logits = self(x)
        for i, metric in enumerate(self.eval_acc[dataloader_idx]):
            metric.update(logits[:, i], y)

    def on_validation_epoch_end(self):
        step = self.trainer.global_step
        lines = []
        for i in range(self.n):
            errs = {}
            for split, metrics in zip(self.eval_splits, self.eval_acc):
                errs[f"{split}/err"] = float((1 - metrics[i].compute()) * 100)
                metrics[i].reset()
            if i not in self.failures:
                self.log_run(i, errs, step)
                train = f"train/err {self.last_train_err[i]:.2f}  " if self.last_train_err[i] is not None else ""
                lines.append(f"{self.runs[i].name:>12}  iteration {step:>6}/{self.trainer.max_steps}  {train}"
                             + "  ".join(f"{k} {v:.2f}" for k, v in errs.items()))
        if self.started is not None and self.started[1] < step < self.trainer.max_steps:
            pace = (time.monotonic() - self.started[0]) / (step - self.started[1])
            lines.append(f"stack of {self.n}: about {duration(pace * (self.trainer.max_steps - step))} left")
        print("\n".join(lines), file=sys.stderr, flush=True)

    def on_train_start(self):
        self.started = (time.monotonic(), self.trainer.global_step)
        self.loss_sum, self.wrong_sum = self.loss_sum.to(self.device), self.wrong_sum.to(self.device)
        self.active = self.active.to(self.device)

    def on_train_end(self):
        self.graphs.clear()

    def configure_optimizers(self):
        o = self.optim_cfg
        return StackedSGD(self.parameters(), self.n, o["momentum"], o["weight_decay"], o["nesterov"])

    def on_save_checkpoint(self, checkpoint):
        sums = torch.stack([self.loss_sum, self.loss_sum.new_full((self.n,), float(self.counts[0])), self.wrong_sum,
                            self.loss_sum.new_full((self.n,), float(self.counts[1]))], 1).cpu()
        checkpoint[STACK_RUNS] = [{"lr_schedule": s.state_dict(), TRAIN_SUMS: sums[i]}
                                  for i, s in enumerate(self.schedules)]
        checkpoint[PIXEL_MEAN] = self.trainer.datamodule.mean.cpu()

    def on_load_checkpoint(self, checkpoint):
        for i, state in enumerate(checkpoint[STACK_RUNS]):
            self.schedules[i].load_state_dict(state["lr_schedule"])
            sums = state[TRAIN_SUMS]
            self.loss_sum[i], self.wrong_sum[i] = sums[0], sums[2]
        first = checkpoint[STACK_RUNS][0][TRAIN_SUMS]
        self.counts = [int(first[1]), int(first[3])]

    def single_checkpoint(self, checkpoint: dict, i: int) -> dict:
        """Run i's part of the stacked checkpoint `checkpoint`: the file it would have written alone."""
        run = self.runs[i].module
        out = {k: v for k, v in checkpoint.items() if k not in (STACK_RUNS, "state_dict", "optimizer_states")}
        prefix = "model."
        model_state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
        out["state_dict"] = {prefix + k: v for k, v in unstack_state(model_state, self.n, i).items()}
        stacked = checkpoint["optimizer_states"][0]
        single = torch.optim.SGD(run.parameters(), lr=0.0, momentum=run.optim_cfg["momentum"],
                                 weight_decay=run.optim_cfg["weight_decay"], nesterov=run.optim_cfg["nesterov"])
        group = {**single.state_dict()["param_groups"][0], "lr": stacked["param_groups"][0]["lr"][i]}
        state = {k: unstack_state(v, self.n, i) for k, v in stacked["state"].items()}
        out["optimizer_states"] = [{"state": state, "param_groups": [group]}]
        out["callbacks"] = {self.schedules[i].state_key: checkpoint[STACK_RUNS][i]["lr_schedule"]}
        out[TRAIN_SUMS] = checkpoint[STACK_RUNS][i][TRAIN_SUMS]
        out["hyper_parameters"] = dict(run.hparams)
        if hasattr(run, "_hparams_name"):
            out["hparams_name"] = run._hparams_name
        return out

    def stacked_checkpoint(self, singles: List[dict]) -> dict:
        """The runs' own checkpoints (one iteration) -> the stacked checkpoint Lightning restores."""
        out = {k: v for k, v in singles[0].items()
               if k not in ("state_dict", "optimizer_states", "callbacks", TRAIN_SUMS, "hyper_parameters", "hparams_name")}
        out["state_dict"] = stack_states([c["state_dict"] for c in singles])
        groups = [c["optimizer_states"][0]["param_groups"][0] for c in singles]
        states = [c["optimizer_states"][0]["state"] for c in singles]
        o = self.optim_cfg
        out["optimizer_states"] = [{
            "state": {k: stack_states([s[k] for s in states]) for k in states[0]},
            "param_groups": [{"lr": [g["lr"] for g in groups], "momentum": o["momentum"],
                              "weight_decay": o["weight_decay"], "nesterov": o["nesterov"],
                              "params": groups[0]["params"]}]}]
        out["callbacks"] = {}
        out[STACK_RUNS] = [{"lr_schedule": c["callbacks"][s.state_key], TRAIN_SUMS: c[TRAIN_SUMS]}
                           for c, s in zip(singles, self.schedules)]
        return out

    def finite(self, i: int) -> bool:
        """Run i's slice of every weight and buffer, and its loss sum, finite (one host sync)."""
        tensors = [t.unflatten(0, (self.n, -1))[i] for t in (*self.parameters(), *self.buffers()) if t.dim() > 0
                   and t.is_floating_point()]
        return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()) and bool(self.loss_sum[i].isfinite())


class StackCheckpointIO(CheckpointIO):
    """Lightning's checkpoint IO (its public plugin API) for a stack: a save writes each active
    run's own `last.ckpt` (StackedModule.single_checkpoint), each to a temporary name first, then
    all renamed; a load reads the runs' files back into the stacked checkpoint. The path Lightning
    passes is not used: the files are the runs'. The N renames are not one atomic step: a kill
    between two of them leaves the later runs' files complete under their temporary names, and
    `--resume` completes the renames (finish_renames). `kill:checkpoint:K:RUN` kills there: just
    before RUN's rename at checkpoint K."""

    def __init__(self, module: StackedModule, fault: Fault | None):
        super().__init__()
        self.module, self.fault = module, fault
        names = [r.name for r in module.runs]
        named_kill = fault is not None and fault.signum == signal.SIGKILL and fault.run in names
        self.kill_before = names.index(fault.run) if named_kill else None

    def paths(self, i: int) -> tuple[Path, Path]:
        d = self.module.runs[i].checkpoint.dirpath
        return d / f".{LAST}.tmp", d / LAST

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        m, step = self.module, checkpoint["global_step"]
        active = [i for i in range(m.n) if i not in m.failures]
        i = active[0]
        try:
            for i in active:
                tmp = self.paths(i)[0]
                tmp.parent.mkdir(parents=True, exist_ok=True)
                if self.fault is not None:
                    self.fault.fill_disk(step, tmp)
                buffer = io.BytesIO()  # written by Python, so that a full disk raises OSError (as Lightning's own save)
                torch.save(m.single_checkpoint(checkpoint, i), buffer)
                tmp.write_bytes(buffer.getbuffer())
        except OSError as e:
            for j in active:
                self.paths(j)[0].unlink(missing_ok=True)  # a full disk: every previous last.ckpt stays, no partial file
            raise OSError(e.errno, write_error(self.paths(i)[1], e), str(self.paths(i)[1])) from None
        for i in active:
            if i == self.kill_before:
                self.fault.fire("checkpoint", step)
            os.replace(*self.paths(i))

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        singles = [torch.load(self.paths(i)[1], map_location="cpu", weights_only=True) for i in range(self.module.n)]
        steps = {c["global_step"] for c in singles}
        if len(steps) != 1:
            raise RuntimeError(f"the runs of a stack are at different iterations {sorted(steps)}")
        return self.module.stacked_checkpoint(singles)

    def remove_checkpoint(self, path):
        pass


class StackCheckpoint(AtomicCheckpoint):
    """AtomicCheckpoint's step boundaries, signals and faults for a stack; a non-finite run is
    frozen before the save (its last finite checkpoint stays), the others' files are written."""

    def save(self, trainer: pl.Trainer) -> None:
        m = trainer.lightning_module
        for i in range(m.n):
            if i not in m.failures and not m.finite(i):
                m.fail(i, trainer.global_step, f"the training loss or weights became non-finite by iteration "
                                               f"{trainer.global_step} (found before its checkpoint: the kept "
                                               f"checkpoint is the last finite one)")
        if len(m.failures) < m.n:
            trainer.save_checkpoint(self.last_path)


class StackedData(pl.LightningDataModule):
    """The runs' DataModules as one: a training batch is every run's own micro-batch, stacked
    [B, N, ...]; evaluation batches are shared (one split, data.split_seed, for all runs)."""

    def __init__(self, datamodules: list):
        super().__init__()
        self.dms = datamodules
        self.mean = None

    def setup(self, stage: str | None = None) -> None:
        first = self.dms[0]
        for dm in self.dms:
            dm.trainer = self.trainer
        first.setup(stage)
        for dm in self.dms[1:]:  # one data config (stack_key), so one copy of the split for all runs
            for name in first.split_tensors:
                setattr(dm, name, getattr(first, name))
        self.mean = first.mean

    @property
    def train_size(self) -> int:
        return self.dms[0].train_size

    def train_dataloader(self):
        return StackedBatches([dm.train_dataloader() for dm in self.dms])

    def val_dataloader(self):
        return self.dms[0].val_dataloader()

    def test_dataloader(self):
        return self.dms[0].test_dataloader()

    def normalize(self, x):
        return self.dms[0].normalize(x)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        return self.dms[0].on_after_batch_transfer(batch, dataloader_idx)


class StackedBatches:
    def __init__(self, loaders):
        self.loaders = loaders

    def __len__(self) -> int:
        return len(self.loaders[0])

    def __iter__(self):
        for parts in zip(*self.loaders):
            yield torch.stack([x for x, _ in parts], 1), torch.stack([y for _, y in parts], 1)


def build_stack(runs: List[Run], callbacks: tuple = ()) -> tuple:
    """The stack's module, data and Trainer, around runs built by train.build_run; `callbacks`
    join the Trainer's (the benchmark's timers)."""
    cfg = runs[0].cfg
    t = cfg.trainer
    module = StackedModule(runs, uses_cuda_graph(cfg))
    fault = next((f for f in (Fault.from_env(r.name) for r in runs) if f is not None), None)
    ckpt = StackCheckpoint(runs[0].checkpoint.dirpath, t.checkpoint_every, t.eval_every, fault,
                           stop_check_every=t.log_every)
    trainer = pl.Trainer(
        accelerator=t.accelerator, devices=1, precision=precision_for(t.precision, t.accelerator),
        max_steps=Schedule.for_run(cfg).total_steps, val_check_interval=t.eval_every, check_val_every_n_epoch=None,
        num_sanity_val_steps=0, logger=False, callbacks=[StopAtLastStep(), *callbacks, ckpt],
        plugins=[StackCheckpointIO(module, fault)], enable_checkpointing=False, enable_model_summary=False,
        deterministic=t.deterministic, enable_progress_bar=False, benchmark=torch.cuda.is_available(),
        default_root_dir=str(runs[0].files.path.parent))
    return module, StackedData([r.datamodule for r in runs]), trainer


def execute_stack(runs: List[Run], debug: bool = False, callbacks: tuple = ()) -> List[dict]:
    """Train the runs as one stack (train.execute for each, at once); returns their statuses."""
    module, data, trainer = build_stack(runs, callbacks)
    statuses = [dict(r.status, stack=[r.name for r in runs]) for r in runs]  # the stack-mates: finish_renames
    for run, status in zip(runs, statuses):
        run.files.write_status(**status)
    t0 = time.time()
    outcome, disk_full = fit(trainer, module, data, runs[0].resume_from, debug)
    final = outcome.pop("final_test_err", None)
    wall = round(time.time() - t0, 1)
    errors = []
    for i, (run, status) in enumerate(zip(runs, statuses)):
        if i in module.failures:
            step, error = module.failures[i]
            status.update(status="failed", step=step, error=error)
        else:
            status.update(outcome)
            if final is not None:
                status["final_test_err"] = final[i]
        status.update(wall_s=wall)
        try:
            conclude(run, status, True, disk_full)
        except Exception as e:  # the other runs are still concluded
            errors.append(e)
    if disk_full is not None:
        raise disk_full
    if errors:
        raise errors[0]
    return statuses
