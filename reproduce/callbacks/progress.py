"""Progress for long runs: Lightning's bar on a terminal, one line per evaluation elsewhere."""
from __future__ import annotations

import sys
import time

import pytorch_lightning as pl


class EvalLines(pl.Callback):
    """Prints `name  iteration k/N  train/err  val/err  test/err  ETA` after each evaluation."""

    def __init__(self, name: str):
        self.name, self.t0, self.step0 = name, None, 0

    def on_train_start(self, trainer, pl_module):
        self.t0, self.step0 = time.monotonic(), trainer.global_step

    def on_validation_end(self, trainer, pl_module):
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        m, step, total = trainer.callback_metrics, trainer.global_step, trainer.max_steps
        rate = (step - self.step0) / max(time.monotonic() - self.t0, 1e-9)
        eta = (total - step) / rate if rate > 0 else float("nan")
        parts = [f"train/err {pl_module.last_train_err:.2f}"] if pl_module.last_train_err is not None else []
        parts += [f"{k} {float(m[k]):.2f}" for k in ("val/err", "test/err") if k in m]
        print(f"{self.name:>12}  iteration {step:>6}/{total}  {'  '.join(parts)}  ({rate:.1f} it/s, ETA {eta / 60:.1f} min)",
              file=sys.stderr, flush=True)


class StopAtLastStep(pl.Callback):
    """Flags the final step as a stop so Lightning evaluates there, inside `fit`, whatever
    `eval_every` is; every metric then carries the iteration it was measured at."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= trainer.max_steps:
            trainer.should_stop = True
