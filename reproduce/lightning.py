"""Lightning in one place: the warnings the package silences, the step-counting rule, `log_now`,
and the one Lightning internal that exact resume needs.

The internal is the layout of the checkpoint's loop counters (`MANUAL_STEPS`, `BATCH_PROGRESS`):
Lightning restores `global_step` from the first and decides evaluations by the second, so a
checkpoint that counts them otherwise (written with automatic optimization, or several iterations
per batch, by an older version of this package) would restart at 0 or evaluate off schedule.
`check_step_count` refuses it in one line. tests/test_units.py fails if a Lightning release moves
those counters.

Step counting. Lightning's `trainer.global_step` counts optimizer steps already taken. Inside
`training_step` (before the update) the step being computed is `global_step + 1`; in
`on_train_batch_end` and in validation (after the update) `global_step` is that same step. The
package calls an optimizer step an *iteration* and numbers them from 1, as the paper's x-axis
does, so every metric carries the iteration it was measured after.
"""
from __future__ import annotations

import warnings

import pytorch_lightning as pl

from .errors import ConfigError

# Lightning's advice that does not apply here: our loaders are in-memory iterables (no workers),
# we log to CSV and W&B (no TensorBoard), torch's LeafSpec deprecation comes from inside it, and a
# resume mid-epoch is exact without a resumable loader (TrainBatches starts at the restored step).
IGNORED_WARNINGS = (r".*(does not have many workers|TensorBoard|LeafSpec|litlogger|Encountered `nan`|anonymous setting"
                    r"|dataloader is not resumable).*")

MANUAL_STEPS = "epoch_loop.manual_optimization.optim_step_progress"
BATCH_PROGRESS = "epoch_loop.batch_progress"


def ignore_known_warnings() -> None:
    warnings.filterwarnings("ignore", message=IGNORED_WARNINGS)


def iteration_in_progress(trainer: pl.Trainer) -> int:
    """The 1-based iteration that `training_step` is computing (before the optimizer step)."""
    return trainer.global_step + 1


def logger_step(iteration: int) -> int:
    """Lightning's loggers receive a 0-based step (batches stepped before this one); ours write
    the iteration, so a logger adds 1 (see `loggers.py`) and a direct call passes this."""
    return iteration - 1


def log_now(trainer: pl.Trainer, metrics: dict, iteration: int) -> None:
    """Write metrics to every logger now, at `iteration` (rank 0 only).

    Not `self.log`: Lightning writes those later (training metrics after `on_train_batch_end`, so
    after a checkpoint taken there), re-sends the last value of an `on_step` metric at each later
    log step, and stamps them with its count of batches, which with gradient accumulation is not
    the iteration. Written here, everything of iteration k is on disk before its checkpoint."""
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=logger_step(iteration))


def check_step_count(checkpoint: dict, accumulate: int, path: str = "the checkpoint") -> None:
    """Refuse a checkpoint whose loop counters this run's step would misread, instead of restarting
    it at iteration 0 or evaluating at the wrong iterations: one written with Lightning's automatic
    optimization, or with several iterations per Lightning batch, by an older version of this
    package, or one whose count of batches is not `accumulate` per iteration."""
    loops = checkpoint.get("loops", {}).get("fit_loop", {})
    steps, batches = loops.get(MANUAL_STEPS), loops.get(BATCH_PROGRESS)
    step = checkpoint.get("global_step", 0)
    done = steps["total"]["completed"] if steps else 0
    processed = batches["total"]["processed"] if batches else 0
    if done != step or processed != step * accumulate:
        raise ConfigError(f"{path}: its loop counters ({done} optimizer steps, {processed} batches at iteration {step}) "
                          f"are not this version's ({step} steps, {step * accumulate} batches with trainer.accumulate="
                          f"{accumulate}); it was written by an older version of reproduce or with another "
                          f"trainer.accumulate: continue it with that, or start the run again with --overwrite")
