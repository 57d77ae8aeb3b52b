"""The batch-scaling plugin: effective batch, scaled lr and temperature, checked and logged.

The arithmetic (linear/sqrt scaling rule, gradual warmup, batch-size schedule) lives in
`schedules.Schedule`; this callback ties it to the running Trainer: the effective batch is
per-device batch x devices x accumulation steps, and it checks every step that the batch the
loader delivered is the schedule's share for this rank, so the lr and the batch can never drift
apart. Every `log_every` steps it logs `lr`, `batch_size` (effective), `temperature` = lr / batch
and `epoch`.
"""
from __future__ import annotations

import pytorch_lightning as pl

from ..lightning import log_now
from ..schedules import Schedule


def effective_batch(per_device: int, devices: int, accumulate: int) -> int:
    return per_device * devices * accumulate


class BatchScaling(pl.Callback):
    def __init__(self, schedule: Schedule, log_every: int):
        self.schedule, self.log_every = schedule, log_every

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step
        want = self.schedule.batch_size(step)
        got = effective_batch(len(batch[1]), trainer.world_size, pl_module.accumulate)
        if got != want:
            raise RuntimeError(f"effective batch {got} at step {step} != scheduled {want}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not pl_module.stepped:
            return
        step = trainer.global_step  # already advanced: this is the step just taken, 1-based
        if step % self.log_every and step != trainer.max_steps:
            return
        # the lr the optimizer actually used for this step, and the batch the loader delivered
        lr, b = trainer.optimizers[0].param_groups[0]["lr"], self.schedule.batch_size(step - 1)
        log_now(trainer, {"lr": lr, "batch_size": float(b), "temperature": lr / b,
                          "epoch": self.schedule.examples(step) / trainer.datamodule.train_size}, step)
