"""Atomic checkpoints at step boundaries, a clean stop on SIGTERM/SIGINT, and a fault hook.

A checkpoint holds everything that decides the rest of a run: weights, optimizer, the callbacks'
state (plateau drops, warmup end, noise-scale averages), the training-metric accumulators
(persistent torchmetrics states) and Lightning's loop counters. The data position needs no
state: batches and augmentation are pure functions of (seed, iteration).

It is written at a *step boundary*: after iteration k has trained and, when k is an evaluation
iteration, after that evaluation has been logged (in `on_validation_end`, the point at which
Lightning's own restart logic expects a checkpoint of an evaluated step). A resumed run therefore
starts at iteration k + 1 with nothing of iteration k left to redo or skip. The file is written
to a temporary name and renamed over `last.ckpt` (os.replace is atomic on POSIX), so a kill
during the write leaves the previous checkpoint intact.

A SIGTERM or SIGINT (a scheduler's preemption, Ctrl-C) is acted on at the next step boundary: the
checkpoint is written there and the run stops by raising `RunInterrupted`, which skips
Lightning's stop-time evaluation and logging, so no off-schedule row reaches the logs. Under DDP
the signal may reach one rank only, so the ranks agree on stopping with an all-reduce; that costs a
host sync, so they do it only every `stop_check_every` iterations (the CLI passes
`trainer.log_every`, where the training metrics sync anyway), and a signal waits at most that many
iterations. A single process checks at every step boundary, for free.

Fault injection for the resume tests: `REPRODUCE_FAULT=SIGNAL:POINT:K[:RUN]` makes the run send
itself SIGNAL (`kill` = SIGKILL, `term` = SIGTERM, `stop` = SIGSTOP, to hold a live run still while
a second process tries its directory) at POINT of iteration K, or send it to the parallel sweep
that started the run (`term-sweep`, `kill-sweep`; the run itself when no sweep started it), or
(`enospc`, at `checkpoint` only) make the checkpoint write of K fail as on a full disk: `step` (right after
the optimizer step of K, before its evaluation and checkpoint), `eval` (during the evaluation at
K) or `checkpoint` (right after the checkpoint of K is written). RUN restricts it to the run of
that name in a sweep. Faults land at an iteration, never at a wall-clock moment.
"""
from __future__ import annotations

import errno
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn

from ..config import ConfigError
from ..lightning import check_step_count
from ..module import NonFiniteLoss
from ..runs import SWEEP_PID_ENV, write_error

LAST = "last.ckpt"
FAULT_ENV = "REPRODUCE_FAULT"
FAULT_POINTS = ("step", "eval", "checkpoint")
FAULT_SIGNALS = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "stop": signal.SIGSTOP,
                 "term-sweep": signal.SIGTERM, "kill-sweep": signal.SIGKILL, "enospc": None}


def checkpoint_step(path: Path, accumulate: int) -> int:
    """The iteration a checkpoint holds, its loop counters checked (lightning.check_step_count).
    Only its header is read (mmap); weights_only: a received file runs no code. A file that is not
    a checkpoint of this package fails naming it."""
    try:
        peek = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        check_step_count(peek, accumulate, str(path))
        return int(peek["global_step"])
    except (FileNotFoundError, ConfigError):
        raise
    except Exception as e:
        raise ConfigError(f"{path} is damaged or not a checkpoint of this package ({type(e).__name__}); "
                          f"delete its run directory {path.parent.parent} to train that run again from "
                          f"iteration 0, or start the sweep again with --overwrite") from None


def check_finite(trainer: pl.Trainer) -> None:
    """Before a checkpoint: the loss since the last log step, every weight and buffer finite. A
    diverging run can leave inf in BatchNorm's running_var several steps before the logged loss
    turns NaN; a checkpoint of that state could not be resumed. One host sync per checkpoint."""
    module = trainer.lightning_module
    tensors = [module.loss_sum, *module.parameters(), *module.buffers()]
    finite = torch.stack([torch.isfinite(t).all() for t in tensors if t.is_floating_point()])
    if not bool(finite.all()):
        raise NonFiniteLoss(f"the training loss or weights became non-finite by iteration {trainer.global_step} "
                            f"(found before its checkpoint: the kept checkpoint is the last finite one)")


class RunInterrupted(Exception):
    """A signal stopped the run at a step boundary, after its checkpoint was written."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by signal {signum} at iteration {step}")
        self.signum, self.step = signum, step


@dataclass(frozen=True)
class Fault:
    signum: Optional[int]  # None: enospc (AtomicCheckpoint.save)
    point: str
    step: int
    to_sweep: bool = False
    run: Optional[str] = None  # the run the spec names (its 4th field), None for every run

    @staticmethod
    def spec_parts() -> Optional[list]:
        """The REPRODUCE_FAULT fields, checked (the CLI calls this before anything runs)."""
        spec = os.environ.get(FAULT_ENV, "")
        if not spec:
            return None
        parts = spec.split(":")
        if len(parts) not in (3, 4) or parts[0] not in FAULT_SIGNALS or parts[1] not in FAULT_POINTS \
                or not (parts[2].isascii() and parts[2].isdigit()):
            raise ConfigError(f"{FAULT_ENV}={spec!r}: expected SIGNAL:POINT:K[:RUN] with SIGNAL in "
                              f"{'/'.join(FAULT_SIGNALS)}, POINT in {'/'.join(FAULT_POINTS)}, e.g. kill:step:12")
        return parts

    @classmethod
    def from_env(cls, run_name: str) -> Optional["Fault"]:
        parts = cls.spec_parts()
        if parts is None or (len(parts) == 4 and parts[3] != run_name):
            return None
        return cls(FAULT_SIGNALS[parts[0]], parts[1], int(parts[2]), parts[0].endswith("-sweep"),
                   parts[3] if len(parts) == 4 else None)

    def fill_disk(self, step: int, tmp: Path) -> None:
        """An `enospc:checkpoint:K` fault at checkpoint `step`: a disk that fills up mid-write of `tmp`."""
        if self.signum is None and (self.point, self.step) == ("checkpoint", step):
            tmp.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

    def fire(self, point: str, step: int) -> None:
        if point != self.point or step != self.step or self.signum is None:
            return
        if self.to_sweep and os.environ.get(SWEEP_PID_ENV):
            os.kill(int(os.environ[SWEEP_PID_ENV]), self.signum)
            return
        if self.signum == signal.SIGKILL:
            # as a preempted job: the run's helper processes (W&B's service) die with it, so
            # nothing of this attempt writes after the kill
            for pid in _descendants(os.getpid()):
                os.kill(pid, signal.SIGKILL)
        os.kill(os.getpid(), self.signum)


def _descendants(pid: int) -> list:
    """Child processes of `pid`, and theirs (Linux /proc)."""
    children: dict = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class AtomicCheckpoint(pl.Callback):
    def __init__(self, dirpath: str | Path, every_n_steps: int, eval_every: int, fault: Optional[Fault] = None,
                 stop_check_every: int = 1):
        self.dirpath, self.every_n_steps, self.eval_every = Path(dirpath), every_n_steps, eval_every
        self.stop_check_every = stop_check_every
        self.fault = fault
        self.stop_signal: int | None = None
        self._previous_handlers = {}

    @property
    def last_path(self) -> Path:
        return self.dirpath / LAST

    def save(self, trainer: pl.Trainer) -> None:
        check_finite(trainer)
        tmp = self.dirpath / f".{LAST}.tmp"
        try:
            if trainer.is_global_zero:
                self.dirpath.mkdir(parents=True, exist_ok=True)
            if self.fault is not None:
                self.fault.fill_disk(trainer.global_step, tmp)
            trainer.save_checkpoint(tmp)  # collective under DDP; rank 0 writes
            if trainer.is_global_zero:
                os.replace(tmp, self.last_path)
        except OSError as e:
            tmp.unlink(missing_ok=True)  # a full disk: the previous last.ckpt stays, no partial file
            raise OSError(e.errno, write_error(self.last_path, e), str(self.last_path)) from None

    def _on_signal(self, signum, frame):
        self.stop_signal = signum  # acted on at the next step boundary

    def on_train_start(self, trainer, pl_module):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous_handlers[sig] = signal.signal(sig, self._on_signal)

    def _fire(self, point: str, step: int) -> None:
        if self.fault is not None:
            self.fault.fire(point, step)

    def _evaluates(self, trainer, step: int) -> bool:
        return step % self.eval_every == 0 or step >= trainer.max_steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not pl_module.stepped:
            return
        step = trainer.global_step
        self._fire("step", step)
        if not self._evaluates(trainer, step):
            self._step_boundary(trainer, step)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and dataloader_idx == 0 and not trainer.sanity_checking:
            self._fire("eval", trainer.global_step)  # mid-evaluation: one batch done, the rest not

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking and trainer.state.fn == TrainerFn.FITTING:
            self._step_boundary(trainer, trainer.global_step)

    def _stop_requested(self, trainer, step: int) -> bool:
        local = self.stop_signal is not None
        if trainer.world_size == 1:
            return local
        if step % self.stop_check_every:
            return False  # every rank skips the same steps, so all reach the next check together
        return trainer.strategy.reduce_boolean_decision(local, all=False)  # one rank's signal stops all

    def _step_boundary(self, trainer, step: int) -> None:
        if step >= trainer.max_steps:
            return  # the run is complete: on_train_end writes the final checkpoint
        stop = self._stop_requested(trainer, step)
        if stop or step % self.every_n_steps == 0:
            self.save(trainer)
            self._fire("checkpoint", step)
        if stop:
            raise RunInterrupted(self.stop_signal or signal.SIGTERM, step)

    def on_train_end(self, trainer, pl_module):
        self.save(trainer)
        self._restore_handlers()

    def on_exception(self, trainer, pl_module, exception):
        # After an exception (a NaN loss, a signal) the last checkpoint written at a step boundary
        # is the one to resume from: nothing is saved here.
        self._restore_handlers()

    def _restore_handlers(self):
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers.clear()
