"""Sets the optimizer's lr to `Schedule.lr(step)` before every step; nothing else."""
from __future__ import annotations

import pytorch_lightning as pl

from ..schedules import Schedule


class LRSchedule(pl.Callback):
    """Applies the pure schedule; remembers only when a train-error warmup ended (Section 4.2:
    ResNet-110 trains at 0.01 "until the training error is below 80%", then goes back to 0.1)."""

    def __init__(self, schedule: Schedule, on_plateau: bool = False, patience: int = 3,
                 threshold: float = 0.1, max_drops: int = 2):
        self.schedule = schedule
        self.warmup_ended_at: int | None = None
        # Section 3.4 (ImageNet): "divided by 10 when the error plateaus"; the drop steps are
        # recorded, so the lr stays a function of the step given them
        self.on_plateau, self.patience, self.threshold, self.max_drops = on_plateau, patience, threshold, max_drops
        self.drops: list[int] = []
        self.best, self.bad_evals = float("inf"), 0

    def lr(self, step: int) -> float:
        return self.schedule.lr(step, self.warmup_ended_at, self.drops if self.on_plateau else None)

    def on_validation_end(self, trainer, pl_module):
        err = trainer.callback_metrics.get("val/err")
        if not self.on_plateau or err is None or trainer.sanity_checking:
            return
        err = float(err)
        if err < self.best - self.threshold:
            self.best, self.bad_evals = err, 0
        else:
            self.bad_evals += 1
        if self.bad_evals >= self.patience and len(self.drops) < self.max_drops:
            self.drops.append(trainer.global_step)
            self.best, self.bad_evals = err, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        lr = self.lr(trainer.global_step)  # the 0-based step about to be taken
        for opt in trainer.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.note_train_err(trainer.global_step, getattr(pl_module, "last_train_err", None))

    def note_train_err(self, step: int, err: float | None) -> None:
        """After iteration `step`, with the last logged training error: has the warmup ended?"""
        threshold = self.schedule.warmup_until_err
        if threshold is not None and self.warmup_ended_at is None and err is not None and err < threshold:
            self.warmup_ended_at = step

    def state_dict(self):
        return {"warmup_ended_at": self.warmup_ended_at, "drops": self.drops, "best": self.best,
                "bad_evals": self.bad_evals}

    def load_state_dict(self, state):
        self.warmup_ended_at = state["warmup_ended_at"]
        self.drops, self.best, self.bad_evals = state.get("drops", []), state.get("best", float("inf")), state.get("bad_evals", 0)
