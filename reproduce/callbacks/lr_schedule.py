"""Sets the optimizer's lr to `Schedule.lr(step)` before every step; nothing else."""
from __future__ import annotations

import pytorch_lightning as pl

from ..schedules import Schedule


class LRSchedule(pl.Callback):
    """Applies the pure schedule; remembers only when a train-error warmup ended (Section 4.2:
    ResNet-110 trains at 0.01 "until the training error is below 80%", then goes back to 0.1)."""

    def __init__(self, schedule: Schedule):
        self.schedule = schedule
        self.warmup_ended_at: int | None = None

    def lr(self, step: int) -> float:
        return self.schedule.lr(step, self.warmup_ended_at)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        lr = self.lr(trainer.global_step)
        for opt in trainer.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        threshold = self.schedule.warmup_until_err
        err = getattr(pl_module, "last_train_err", None)
        if threshold is not None and self.warmup_ended_at is None and err is not None and err < threshold:
            self.warmup_ended_at = trainer.global_step

    def state_dict(self):
        return {"warmup_ended_at": self.warmup_ended_at}

    def load_state_dict(self, state):
        self.warmup_ended_at = state["warmup_ended_at"]
