"""Learning-rate and batch-size schedules as pure functions of the optimizer step.

Like timm's schedulers and nanoGPT's `get_lr`, the caller passes the step; nothing here keeps
hidden state, so a resumed run gets the same values from the step alone.

Everything is stated per reference batch (`ref_batch`, 128 in Section 4.2 of He et al. 2015):
`lr` is the rate for that batch and the milestones, warmup and `max_steps` are iterations at that
batch, i.e. positions in *examples seen* (iterations x ref_batch). When the batch B differs:

- the lr used is `lr * rule(B / ref_batch)`: the linear scaling rule of Goyal et al. 2017
  (Section 2.1, "multiply the learning rate by k"), `sqrt`, or `none`;
- milestones stay at the same number of examples (so at fewer iterations for a larger B);
- with `decay="batch"` (Smith et al. 2018, "Don't decay the learning rate, increase the batch
  size") each milestone divides B by `factor` instead of multiplying the lr by it, so lr/B, the
  SGD temperature, follows the same path either way.
"""
from __future__ import annotations

import bisect
import inspect
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence


def scale_rule(rule: str, k: float) -> float:
    """The lr multiplier for a batch k times the reference batch."""
    if rule == "linear":
        return k
    if rule == "sqrt":
        return math.sqrt(k)
    if rule == "none":
        return 1.0
    raise ValueError(f"unknown scaling rule {rule!r}")


@dataclass(frozen=True)
class Phase:
    start_step: int
    start_example: int
    batch_size: int
    lr: float


class Schedule:
    """lr(step), batch_size(step), examples(step), and the phases between milestones."""

    def __init__(self, lr: float, ref_batch: int, batch_size: int, milestones: Sequence[int],
                 max_steps: int, factor: float = 0.1, scaling: str = "linear", decay: str = "lr",
                 max_batch: Optional[int] = None, warmup: str = "none", warmup_steps: int = 0,
                 warmup_lr: Optional[float] = None, warmup_until_err: Optional[float] = None,
                 cycle: Sequence[float] = ()):
        self.ref_lr, self.ref_batch, self.batch0 = lr, ref_batch, batch_size
        self.factor, self.scaling, self.decay = factor, scaling, decay
        self.warmup, self.warmup_lr, self.warmup_until_err = warmup, warmup_lr, warmup_until_err
        self.warmup_examples = warmup_steps * ref_batch
        bounds = [m * ref_batch for m in milestones if m < max_steps] + [max_steps * ref_batch]
        self.milestone_examples = bounds[:-1]
        base = lr * scale_rule(scaling, batch_size / ref_batch)
        self.phases: List[Phase] = []
        step, example = 0, 0
        for i, end in enumerate(bounds):
            temperature = cycle[i] if cycle else factor ** i  # lr/B relative to the start
            if decay == "batch":
                batch = round(batch_size / temperature) if not cycle else batch_size
                if max_batch:
                    batch = min(batch, max_batch)
                phase_lr = base * temperature * batch / batch_size
            else:
                batch, phase_lr = batch_size, base * temperature
            self.phases.append(Phase(step, example, batch, phase_lr))
            step += math.ceil((end - example) / batch)
            example = end
        self.total_steps = step
        self._starts = [p.start_step for p in self.phases]

    @classmethod
    def for_run(cls, run_cfg) -> "Schedule":
        """The schedule of one run: its `schedule:` section at its batch (`data.batch_size`).

        Every `schedule.*` key named like a parameter of `__init__` is passed on, so a new key of
        the rule needs no second list here; the rest (`on_plateau`, `plateau_*`, `max_drops`) belong
        to the LRSchedule callback, which decides the plateau drops at run time.
        """
        keys = inspect.signature(cls.__init__).parameters.keys() - {"self", "batch_size"}
        s = run_cfg.schedule
        return cls(batch_size=run_cfg.data.batch_size,
                   **{k: list(s[k]) if k in ("milestones", "cycle") else s[k] for k in keys})

    def phase(self, step: int) -> Phase:
        return self.phases[max(0, bisect.bisect_right(self._starts, step) - 1)]

    def batch_size(self, step: int) -> int:
        return self.phase(step).batch_size

    def examples(self, step: int) -> int:
        """Examples seen before optimizer step `step`."""
        p = self.phase(step)
        return p.start_example + (step - p.start_step) * p.batch_size

    def milestone_steps(self) -> List[int]:
        return [p.start_step for p in self.phases[1:]]

    def in_warmup(self, step: int, warmup_ended_at: Optional[int] = None) -> bool:
        if self.warmup == "none":
            return False
        if self.warmup_until_err is not None:  # Section 4.2: until training error < 80%
            ended = warmup_ended_at is not None and step >= warmup_ended_at
            capped = self.warmup_examples > 0 and self.examples(step) >= self.warmup_examples
            return not (ended or capped)
        return self.examples(step) < self.warmup_examples

    def lr(self, step: int, warmup_ended_at: Optional[int] = None,
           plateau_drops: Optional[Sequence[int]] = None) -> float:
        """The learning rate for optimizer step `step` (0-based). With `plateau_drops` (the steps
        at which validation error plateaued, Section 3.4) those replace the milestones."""
        if plateau_drops is None:
            target = self.phase(step).lr
        else:
            target = self.phases[0].lr * self.factor ** sum(1 for d in plateau_drops if d <= step)
        if not self.in_warmup(step, warmup_ended_at):
            return target
        if self.warmup == "constant":
            return self.warmup_lr if self.warmup_lr is not None else self.ref_lr
        # gradual (Goyal et al. 2017, Section 2.2): from the reference lr to the scaled lr, per step
        return self.ref_lr + (target - self.ref_lr) * self.examples(step) / self.warmup_examples

    def describe(self, train_size: int) -> List[str]:
        """Human-readable phases, for --dry-run."""
        lines = []
        for i, p in enumerate(self.phases):
            end = self.phases[i + 1].start_step if i + 1 < len(self.phases) else self.total_steps
            end_ex = self.examples(end) if i + 1 < len(self.phases) else self.examples(self.total_steps)
            lines.append(f"  iterations {p.start_step:>7,} - {end:>7,}: lr {p.lr:.4g}, batch {p.batch_size}, "
                         f"lr/batch {p.lr / p.batch_size:.3g}, epochs {p.start_example / train_size:.1f}"
                         f" - {end_ex / train_size:.1f}")
        if self.warmup != "none":
            until = (f"training error < {self.warmup_until_err}%" if self.warmup_until_err is not None
                     else f"{self.warmup_examples // self.ref_batch} iterations at batch {self.ref_batch}")
            start = self.warmup_lr if self.warmup == "constant" and self.warmup_lr else self.ref_lr
            lines.insert(0, f"  warmup ({self.warmup}): lr {start:.4g} until {until}, then back to the schedule")
        return lines
