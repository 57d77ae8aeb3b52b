"""Progress for long runs and sweeps: Lightning's bar on a terminal, one line per evaluation elsewhere.

A sweep trains its runs one after another in one process, so one `SweepClock` per process (`SWEEP`)
holds the plan: which run of how many, and an estimate of the time the whole sweep has left. The
estimate comes from the first iterations of the first run and is refined as the sweep goes:
  - the run in progress: its own iterations so far, evaluations included, at its own pace;
  - the runs still to come: their cost (parameters x images) at the seconds per unit of cost
    measured so far, since a ResNet-110 iteration costs about 5.5 ResNet-20 iterations.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable, List, Optional

from pytorch_lightning.callbacks import TQDMProgressBar
from tqdm.auto import tqdm

import pytorch_lightning as pl

FIRST_ESTIMATE_AFTER_S = 10.0  # enough iterations for a steady pace, short against any real sweep
LONG_ON_CPU_S = 3600.0  # beyond this on a CPU, say that --quick exists


def duration(seconds: float) -> str:
    """12 s, 7 min, 3 h 05 min: precise enough for an estimate."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min"


@dataclass
class PlannedRun:
    name: str
    steps: int  # optimizer steps of the whole run
    cost: float  # relative cost of the whole run: parameters x images seen
    start_step: int = 0  # > 0 when the run continued from its checkpoint (known at its first iteration)
    state: str = "pending"  # pending | running | done | failed | skipped
    wall: Optional[float] = None  # seconds it took, once finished
    done: int = 0  # iterations timed in `wall` (a failed run stops early)


class SweepClock:
    """The plan of this process's sweep and the time it has left; `clock` is injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.runs: List[PlannedRun] = []
        self.device, self.on_cpu, self.quick_hint, self.parallel = "", False, None, 1
        self.told_estimate = False
        self._current: Optional[PlannedRun] = None
        self._t_first: Optional[float] = None  # when the current run finished its first iteration
        self._step_first = self._step = 0
        self._t_sweep: Optional[float] = None

    def plan(self, runs: List[PlannedRun], device: str, on_cpu: bool, quick_hint: Optional[str],
             parallel: int = 1) -> str:
        """Set the plan (one per sweep); returns the line that states it."""
        self.runs, self.device, self.on_cpu, self.quick_hint, self.parallel = runs, device, on_cpu, quick_hint, parallel
        self.told_estimate, self._current, self._t_first, self._t_sweep = False, None, None, self.clock()
        steps = sorted({r.steps for r in runs}) or [0]
        each = f"{steps[0]:,} iterations each" if len(steps) == 1 else f"{steps[0]:,}-{steps[-1]:,} iterations"
        names = ", ".join(r.name for r in runs)
        at_once = f", {parallel} at a time" if parallel > 1 else ""
        return (f"plan: {len(runs)} run{'s' * (len(runs) != 1)} ({names}), {each} "
                f"({sum(r.steps for r in runs):,} in all), on {device}{at_once}")

    def index(self, name: str) -> Optional[int]:
        return next((i for i, r in enumerate(self.runs) if r.name == name), None)

    def position(self, name: str) -> str:
        i = self.index(name)
        return "" if i is None else f"run {i + 1} of {len(self.runs)}"

    def skip(self, name: str) -> None:
        self.runs[self.index(name)].state = "skipped"

    def start(self, name: str, resume: bool = False) -> str:
        """A run begins (or continues from its checkpoint); returns its line."""
        run = self.runs[self.index(name)]
        run.state = "running"
        self._current, self._t_first, self._step_first, self._step = run, None, 0, 0
        eta = self.eta()
        return (f"{self.position(name)}: {name}, {run.steps:,} iterations"
                + (", continuing from its checkpoint" if resume else "")
                + (f" (sweep ETA {duration(eta)})" if eta is not None else ""))

    def tick(self, step: int) -> List[str]:
        """After each Lightning batch of the current run, at iteration `step`; returns the lines to
        print (the first estimate)."""
        if self._current is None:
            return []
        now = self.clock()
        if self._t_first is None:  # the first iteration carries the warm-up (allocation, cudnn, compile): not timed
            self._t_first, self._step_first = now, step
            self._current.start_step = step - 1  # > 0 when the run continued from its checkpoint
        self._step = step
        if not self.told_estimate and step - self._step_first >= 2 and now - self._t_first >= FIRST_ESTIMATE_AFTER_S:
            return self._estimate_lines()
        return []

    def finish(self, name: str, state: str, wall: Optional[float] = None, step: Optional[int] = None) -> List[str]:
        """A run ended; `wall` and `step` (its duration, its last iteration) when a worker process
        measured them. Returns the lines to print (the first estimate, if not given yet)."""
        run = self.runs[self.index(name)]
        run.state = state
        if wall is not None:
            run.wall, run.done = wall, (step or 0) - run.start_step
        elif run is self._current and self._t_first is not None:
            run.wall, run.done = self.clock() - self._t_first, self._step - self._step_first
        self._current = None
        return self.first_estimate()

    def first_estimate(self) -> List[str]:
        """The estimate lines, once, as soon as anything was measured (at the first evaluation, at
        the latest, so that no progress line shows a sweep ETA before the estimate was stated)."""
        return self._estimate_lines() if not self.told_estimate and self._spc() is not None else []

    def failed(self) -> List[str]:
        return [r.name for r in self.runs if r.state == "failed"]

    def _pace(self) -> Optional[float]:
        """Seconds per iteration of the current run so far."""
        if self._current is None or self._t_first is None or self._step <= self._step_first:
            return None
        return (self.clock() - self._t_first) / (self._step - self._step_first)

    def _spc(self) -> Optional[float]:
        """Seconds per unit of cost, over what was measured in this process."""
        wall = cost = 0.0
        for r in self.runs:
            if r.wall is not None:
                wall += r.wall
                cost += r.cost * r.done / r.steps
        pace = self._pace()
        if pace is not None:
            c = self._current
            wall += pace * (self._step - self._step_first)
            cost += c.cost * (self._step - self._step_first) / c.steps
        return wall / cost if cost > 0 else None

    def eta(self) -> Optional[float]:
        """Seconds the sweep has left, or None before anything was measured."""
        spc = self._spc()
        if spc is None:
            return None
        left = sum(r.cost * (r.steps - r.start_step) / r.steps for r in self.runs if r.state == "pending") * spc
        pace = self._pace()
        if self._current is not None:
            c = self._current
            left += (c.steps - self._step) * (pace if pace is not None else spc * c.cost / c.steps)
        return left / self.parallel

    def _estimate_lines(self) -> List[str]:
        self.told_estimate = True
        eta = self.eta()
        total = eta + (self.clock() - self._t_sweep)
        basis = (f"{self._current.name}'s first {self._step - self._step_first} timed iterations"
                 if self._current is not None else "the first run")
        lines = [f"estimate: the sweep takes about {duration(total)} on {self.device} ({duration(eta)} left; from "
                 f"{basis}, the other runs scaled by their size; refined in the progress lines)"]
        if self.on_cpu and total > LONG_ON_CPU_S and self.quick_hint:
            lines.append(self.quick_hint)
        return lines


SWEEP = SweepClock()


class EvalLines(pl.Callback):
    """After each evaluation, `name  run k of N  iteration i/T  train/err  val/err  test/err  (ETA)`;
    on a terminal the line goes above Lightning's bar, whose description carries the run and the
    sweep ETA."""

    def __init__(self, name: str, sweep: SweepClock = SWEEP):
        self.name, self.sweep, self.t0, self.step0, self._described = name, sweep, None, 0, 0.0

    def _bar(self, trainer):
        bar = trainer.progress_bar_callback
        return bar if isinstance(bar, TQDMProgressBar) and bar.is_enabled else None

    def _print(self, trainer, line: str) -> None:
        bar = self._bar(trainer)
        if bar is not None:
            bar.train_progress_bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def on_train_start(self, trainer, pl_module):
        self.t0, self.step0 = time.monotonic(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not pl_module.stepped or not trainer.is_global_zero or self.sweep.index(self.name) is None:
            return
        for line in self.sweep.tick(trainer.global_step):
            self._print(trainer, line)
        bar = self._bar(trainer)
        if bar is not None and time.monotonic() - self._described >= 1.0:
            self._described = time.monotonic()
            eta = self.sweep.eta()
            sweep_eta = f", sweep ETA {duration(eta)}" if eta is not None else ""
            bar.train_progress_bar.set_description(f"{self.name} ({self.sweep.position(self.name)}{sweep_eta})",
                                                   refresh=False)

    def on_validation_end(self, trainer, pl_module):
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        m, step, total = trainer.callback_metrics, trainer.global_step, trainer.max_steps
        rate = (step - self.step0) / max(time.monotonic() - self.t0, 1e-9)
        eta = (total - step) / rate if rate > 0 else float("nan")
        parts = [f"train/err {pl_module.last_train_err:.2f}"] if pl_module.last_train_err is not None else []
        parts += [f"{k} {float(m[k]):.2f}" for k in ("val/err", "test/err") if k in m]
        where = self.sweep.position(self.name)
        if where:
            for line in self.sweep.first_estimate():
                self._print(trainer, line)
        sweep_eta = self.sweep.eta() if where else None
        tail = f", sweep ETA {duration(sweep_eta)}" if sweep_eta is not None else ""
        self._print(trainer, f"{self.name:>12}  {where + '  ' if where else ''}iteration {step:>6}/{total}  "
                             f"{'  '.join(parts)}  ({rate:.1f} it/s, ETA {eta / 60:.1f} min{tail})")


class StopAtLastStep(pl.Callback):
    """Flags the final step as a stop so Lightning evaluates there, inside `fit`, whatever
    `eval_every` is; every metric then carries the iteration it was measured at."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= trainer.max_steps:
            trainer.should_stop = True


class IterationBar(TQDMProgressBar):
    """Lightning's bar on a terminal, counting iterations (optimizer steps: with gradient
    accumulation a Lightning batch is a micro-batch) of the whole run, resumed ones included; no
    validation bars (the evaluation lines say what they measured) and no `v_num`."""

    def on_train_epoch_start(self, trainer, *_):
        super().on_train_epoch_start(trainer)
        self.train_progress_bar.reset(total=trainer.max_steps)
        self.train_progress_bar.update(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        bar, step = self.train_progress_bar, trainer.global_step
        if pl_module.stepped and (step % self.refresh_rate == 0 or step >= trainer.max_steps):
            bar.update(step - bar.n)
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer, pl_module):
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics

    def init_validation_tqdm(self):
        return tqdm(disable=True)
