"""Every use of a Lightning internal, and the package's step-counting rule, in one place.

Checked against pytorch-lightning 2.5.0 and 2.6.6 (setup.cfg: >=2.5.0,<2.7): the private names
used here are `fit_loop.epoch_loop._should_accumulate()`, `fit_loop.epoch_loop.batch_idx`,
`LightningModule._trainer`, the layout of the checkpoint's step counters (`carry_step_count`,
`align_batch_count`), the manual loop's step counter and the loggers' step (`count_optimizer_step`,
`set_logger_step`: a chunk of several iterations per batch) and the rule that a callback hook which
is not callable is skipped (`Callback`).
If a Lightning release renames them, this module is the one to change, and the resume tests
(tests/test_resume.py) are the ones that notice.

Step counting. Lightning's `trainer.global_step` counts optimizer steps already taken. Inside
`training_step` (before the update) the step being computed is `global_step + 1`; in
`on_train_batch_end` and in validation (after the update) `global_step` is that same step. The
package calls an optimizer step an *iteration* and numbers them from 1, as the paper's x-axis
does, so every metric carries the iteration it was measured after.
"""
from __future__ import annotations

import warnings

import pytorch_lightning as pl

# Lightning's advice that does not apply here: our loaders are in-memory iterables (no workers),
# we log to CSV and W&B (no TensorBoard), torch's LeafSpec deprecation comes from inside it, and a
# resume mid-epoch is exact without a resumable loader (TrainBatches starts at the restored step).
IGNORED_WARNINGS = (r".*(does not have many workers|TensorBoard|LeafSpec|litlogger|Encountered `nan`|anonymous setting"
                    r"|dataloader is not resumable).*")


# Lightning calls these hooks of every callback at every step (with gradient accumulation, at every
# micro-batch) through `trainer/call.py:_call_callback_hooks`, which enters a profiler context and
# formats the callback's name per call: ~20 function calls each, even for an empty hook
PER_STEP_HOOKS = ("on_train_batch_start", "on_before_backward", "on_after_backward", "on_before_optimizer_step",
                  "on_before_zero_grad", "on_train_batch_end")


class Callback(pl.Callback):
    """A Lightning callback that costs nothing on the per-step hooks it does not define.

    `_call_callback_hooks` runs a hook only if `callable(getattr(callback, hook))`: each per-step
    hook a subclass leaves as pl.Callback's empty method is set to None on the subclass, so
    Lightning skips it instead of dispatching an empty call (so an override calls no `super()`
    version of a hook unless a base really defines one). The package's five callbacks define 7 of
    their 30 per-step hooks. `python -m reproduce bench` counts the calls of a whole step (README,
    "Speed": the package's own work over Lightning's floor fell from 821 calls a step to 364 with
    this and the other cuts listed there).

    With `trainer.steps_per_call` K > 1 a Lightning batch is a chunk of K iterations:
    `on_train_batch_start`/`_end` run once per chunk, at its first iteration's start and its last
    one's end (log, evaluation and checkpoint steps are always chunk ends), and the backward,
    optimizer-step and zero-grad hooks do not run inside it, so a callback that defines one of
    those gets one iteration per batch (graph_step.steps_per_call_for), as does one that says it
    must see every iteration's batch hooks with `every_iteration = True`."""

    every_iteration = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for hook in PER_STEP_HOOKS:
            # the first real definition in the method order, wherever it is (another callback mixed
            # in may define a hook that a Callback before it in the order left as None)
            defined = next((vars(base)[hook] for base in cls.__mro__
                            if base is not pl.Callback and vars(base).get(hook) is not None), None)
            setattr(cls, hook, defined)


def ignore_known_warnings() -> None:
    warnings.filterwarnings("ignore", message=IGNORED_WARNINGS)


def completes_step(trainer: pl.Trainer) -> bool:
    """True in a training hook when the current micro-batch is the last of its optimizer step
    (always, without gradient accumulation)."""
    return not trainer.fit_loop.epoch_loop._should_accumulate()


def attached_trainer(module: pl.LightningModule) -> pl.Trainer | None:
    """The module's Trainer, or None when it is used outside one (`module.trainer` raises then)."""
    return module._trainer


def iteration_in_progress(trainer: pl.Trainer) -> int:
    """The 1-based iteration that `training_step` is computing (before the optimizer step)."""
    return trainer.global_step + 1


def micro_batch_index(trainer: pl.Trainer) -> int:
    """Which micro-batch of the current optimizer step this is (0 .. accumulate - 1)."""
    return trainer.fit_loop.epoch_loop.batch_idx % trainer.accumulate_grad_batches


def logger_step(iteration: int) -> int:
    """Lightning's loggers receive a 0-based step (batches stepped before this one); ours write
    the iteration, so a logger adds 1 (see `loggers.py`) and a direct call passes this."""
    return iteration - 1


def log_now(trainer: pl.Trainer, metrics: dict, iteration: int) -> None:
    """Write training-time metrics to every logger now, at `iteration` (rank 0 only).

    Not `self.log(on_step=True)`: Lightning writes those after `on_train_batch_end` (so after a
    checkpoint taken there), and re-sends the last value of every such metric at each later log
    step and when the trainer stops, which put stale and duplicate rows in the curves.
    Evaluation metrics still go through `self.log`; Lightning writes them before
    `on_validation_end`, where the checkpoint of an evaluated iteration is taken."""
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=logger_step(iteration))


AUTOMATIC_STEPS = "epoch_loop.automatic_optimization.optim_progress"
MANUAL_STEPS = "epoch_loop.manual_optimization.optim_step_progress"


def carry_step_count(checkpoint: dict, automatic: bool) -> None:
    """Move the optimizer-step count of a checkpoint to the counter the resuming run reads.

    Lightning keeps two counters (automatic and manual optimization) and `global_step` reads the
    one of the module's current mode, so a checkpoint written in the other mode (trainer.train_step
    differs, e.g. a cuda-graph run resumed on a CPU) would restart at step 0 without this."""
    loops = checkpoint.get("loops", {}).get("fit_loop", {})
    auto, manual = loops.get(AUTOMATIC_STEPS), loops.get(MANUAL_STEPS)
    if auto is None or manual is None:
        return
    auto_steps = auto["optimizer"]["step"]
    if automatic and manual["total"]["completed"] > auto_steps["total"]["completed"]:
        auto["optimizer"]["step"] = {k: dict(v) for k, v in manual.items()}
        auto["optimizer"]["zero_grad"] = {k: {**v, "started": v["completed"]} for k, v in manual.items()}
    elif not automatic and auto_steps["total"]["completed"] > manual["total"]["completed"]:
        loops[MANUAL_STEPS] = {k: dict(v) for k, v in auto_steps.items()}


def count_optimizer_step(trainer: pl.Trainer) -> None:
    """Count one optimizer step taken without Lightning's optimizer wrapper (an iteration inside a
    chunk), as `LightningOptimizer.step` counts it in manual optimization: `global_step` advances."""
    progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
    progress.increment_ready()
    progress.increment_completed()


def set_logger_step(trainer: pl.Trainer, iteration: int) -> None:
    """After a chunk ending at `iteration`: the step Lightning gives its loggers for what is logged
    before the batch ends (the evaluation after it) is `logger_step(iteration)`. Lightning counts
    that step in batches (`_batches_that_stepped`), which a chunk of K iterations is one of."""
    trainer.fit_loop.epoch_loop._batches_that_stepped = logger_step(iteration)


BATCH_PROGRESS = "epoch_loop.batch_progress"


def align_batch_count(checkpoint: dict, micro_batches_per_step: int, steps_per_call: int) -> None:
    """Make the checkpoint's count of training batches the one this run would have reached at its
    step: `global_step x micro_batches_per_step / steps_per_call`.

    Lightning restores how many batches of the (one) epoch were done and decides evaluations and
    the epoch's end by that count, so a run resumed with another `trainer.steps_per_call` (a
    chunked GPU run continued on a CPU, or the reverse) must count its batches in its own unit.
    Checkpoints are written only at step boundaries, where `processed` batches hold every
    finished step: the counters move together, keeping Lightning's restart arithmetic (which
    compares them) as it was. With an unchanged unit this changes nothing."""
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get(BATCH_PROGRESS)
    if progress is None:
        return
    done = checkpoint["global_step"] * micro_batches_per_step
    if done % steps_per_call:  # steps_per_call_for makes K divide the checkpoint's step
        raise RuntimeError(f"a checkpoint at step {checkpoint['global_step']} cannot resume in chunks of {steps_per_call}")
    shift = done // steps_per_call - progress["total"]["processed"]
    for scope in ("total", "current"):
        for key in ("ready", "started", "processed", "completed"):
            progress[scope][key] += shift
