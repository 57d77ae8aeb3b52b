"""Atomic checkpoints every N iterations, at the end, and when SIGTERM/SIGINT arrives.

The checkpoint is written to a temporary file and renamed over `last.ckpt` (os.replace is
atomic on POSIX), so a kill during the write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytorch_lightning as pl

LAST = "last.ckpt"


class AtomicCheckpoint(pl.Callback):
    def __init__(self, dirpath: str | Path, every_n_steps: int):
        self.dirpath, self.every_n_steps = Path(dirpath), every_n_steps
        self.stop_signal: int | None = None
        self._previous_handlers = {}

    @property
    def last_path(self) -> Path:
        return self.dirpath / LAST

    def save(self, trainer: pl.Trainer) -> None:
        tmp = self.dirpath / f".{LAST}.tmp"
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(tmp)  # collective under DDP; rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, self.last_path)

    def _on_signal(self, signum, frame):
        self.stop_signal = signum  # acted on at the end of the current step

    def on_train_start(self, trainer, pl_module):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous_handlers[sig] = signal.signal(sig, self._on_signal)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.fit_loop.epoch_loop._should_accumulate():
            return
        stop = self.stop_signal is not None
        if stop or trainer.global_step % self.every_n_steps == 0:
            self.save(trainer)
        if stop:
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module):
        self.save(trainer)
        self._restore_handlers()

    def on_exception(self, trainer, pl_module, exception):
        # The state after an exception (a NaN loss, say) is not worth keeping: the last periodic
        # checkpoint stays as it was.
        self._restore_handlers()

    def _restore_handlers(self):
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers.clear()
