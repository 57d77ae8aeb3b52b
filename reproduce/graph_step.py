"""How the training step runs: Lightning's automatic optimization, a manual step, or a CUDA graph.

A ResNet-20 step at batch 128 is launch-bound on a large GPU: its forward and backward are ~600
small kernels, each launched from Python (measured on an H200: 100 it/s eager, against the
~1 ms the kernels themselves need; docs/gpu-h200). `cuda-graph` captures forward, loss, backward
and the training-metric sums of one batch shape once (`torch.cuda.graph`) and then replays them
as a single launch per step. What stays outside the graph, per step:
  - the batch: sampled and augmented on the device as before (a generator seeded by the step, so
    a resumed run draws the same crops), then copied into the graph's static input;
  - the optimizer step, through Lightning (`opt.step()`; inside a chunk of steps_per_call, the
    torch optimizer's, counted as Lightning counts it), so `global_step`, the checkpoint's
    optimizer state and the lr schedule (a float set per step by LRSchedule) work unchanged; on
    CUDA it is the fused SGD kernel.
The forward and backward inside the graph are the same operations as eager; only their launch
changes. Each batch shape (a batch-size schedule has several) gets its own graph, captured after
`WARMUP_STEPS` eager steps of that shape on a side stream (cudnn.benchmark picks its kernels
then; PyTorch requires the warmup before capture).

`manual` is the same step without the capture (eager, any device): what `auto` picks where no
graph can be captured (a CPU, DDP), since Lightning's manual loop costs less host work per step than
its automatic one, and the path the CPU tests run against the GPU's. `lightning` is automatic
optimization: needed for gradient accumulation and for the gradient-noise callback (which hooks
into backward), and kept for fp16 loss scaling and `trainer.compile`.

Steps per call (`trainer.steps_per_call`, Keras's `steps_per_execution`). Lightning's loop costs
about 1,200 Python function calls per batch on its own (`python -m reproduce bench`, its manual
floor): hooks, progress counters and logger bookkeeping, more than a small model's whole plain
step, and on an H200 as long as a graphed ResNet-20 step (README, "GPU"). With K steps per call,
one Lightning batch carries K iterations (`data.datamodule.StepChunk`) and `training_step` runs
them in a loop, each its own optimizer step (lr from the schedule, batch and crops from its step,
the raw SGD step, `global_step` counted as Lightning counts it), so Lightning's per-batch work is
paid once per K iterations. Everything that acts between iterations (logging, evaluation,
checkpoints, batch-size phases, the end) falls on a chunk's last iteration because K divides
their periods, which is what makes a chunked run bit-identical to K = 1 (tests/test_train_step.py)
and its checkpoints resumable with any K (lightning.align_batch_count).
"""
from __future__ import annotations

import math
from typing import Callable

import pytorch_lightning as pl
import torch

from .errors import ConfigError

TRAIN_STEPS = ("auto", "lightning", "manual", "cuda-graph")
WARMUP_STEPS = 3  # eager steps per batch shape before its capture (PyTorch's CUDA-graph docs use 3)
# `trainer.steps_per_call=0` (auto) takes the largest K up to this that divides every period: at 10
# Lightning's per-batch work is a tenth per step, and a SIGTERM (acted on at a chunk's end) waits
# at most 9 iterations
AUTO_STEPS_PER_CALL = 10
# Lightning's hooks around backward and the optimizer step, which the iterations of a chunk skip
# (a reproduce.lightning.Callback leaves the ones it does not define as None)
ITERATION_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad")


def train_step_for(cfg, cuda_available: bool | None = None) -> str:
    """The resolved `trainer.train_step`: what `auto` means for this run, and a one-line error
    naming the key when an explicit choice cannot work."""
    t = cfg.trainer
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    on_cuda = cuda and t.accelerator in ("auto", "gpu", "cuda")
    single = t.devices == 1 and t.num_nodes == 1
    blockers = []  # why a CUDA graph cannot capture this run's step
    if not on_cuda:
        blockers.append(f"it needs a CUDA device (trainer.accelerator={t.accelerator}, "
                        f"CUDA {'available' if cuda else 'not available'})")
    if not single:
        blockers.append(f"it needs trainer.devices=1 and trainer.num_nodes=1, got {t.devices} and {t.num_nodes} "
                        f"(DDP's gradient all-reduce is not captured)")
    if t.strategy not in ("auto", "single_device"):
        blockers.append(f"it needs trainer.strategy=auto, got {t.strategy} (a strategy's backward hooks are not captured)")
    if str(t.precision) in ("16", "16-mixed"):
        blockers.append(f"trainer.precision={t.precision} scales the loss with a GradScaler outside the graph "
                        f"(use bf16-mixed or 32-true)")
    if t.accumulate != 1:
        blockers.append("it needs trainer.accumulate=1")
    if t.compile:
        blockers.append("trainer.compile=true captures its own graphs")
    if t.noise_scale:
        blockers.append("trainer.noise_scale hooks into every backward")
    if t.train_step == "auto":
        if not blockers:
            return "cuda-graph"
        # elsewhere the same step uncaptured where it can be: Lightning's manual loop dispatches
        # fewer hooks than its automatic one (357 fewer function calls a step in run_one:
        # `python -m reproduce bench`, fp32 against fp32-manual), for bit-identical weights
        # (tests/test_train_step.py)
        manual_ok = t.accumulate == 1 and not t.noise_scale and not t.compile and str(t.precision) not in ("16", "16-mixed")
        return "manual" if manual_ok else "lightning"
    if t.train_step == "cuda-graph" and blockers:
        raise ConfigError(f"trainer.train_step=cuda-graph: {'; '.join(blockers)} (use auto, lightning or manual)")
    if t.train_step == "manual" and t.accumulate != 1:
        raise ConfigError("trainer.train_step=manual needs trainer.accumulate=1 (use lightning to accumulate)")
    return t.train_step


def callback_blockers(callbacks) -> list[str]:
    """Why these callbacks rule out chunks: one that must see every iteration's batch hooks
    (`every_iteration`), or that defines a hook a chunk does not call (ITERATION_HOOKS; pl.Callback's
    own empty ones do not count)."""
    def defines(c, hook):
        return callable(getattr(c, hook, None)) and getattr(type(c), hook, None) is not getattr(pl.Callback, hook)
    return ([f"{type(c).__name__} needs every iteration's hooks (every_iteration)"
             for c in callbacks if getattr(c, "every_iteration", False)]
            + [f"{type(c).__name__}.{hook} runs at every backward or optimizer step"
               for c in callbacks for hook in ITERATION_HOOKS if defines(c, hook)])


def steps_per_call_for(cfg, train_step: str, total_steps: int, phase_starts=(), fault_step: int | None = None,
                       resume_step: int | None = None, callbacks=()) -> int:
    """The resolved `trainer.steps_per_call`: K iterations per Lightning batch (see the module's
    docstring), 1 where a chunk cannot run; a one-line error for an explicit K that cannot.
    `callbacks`: the run's; `callback_blockers` says which of them rule chunks out."""
    t = cfg.trainer
    blockers = callback_blockers(callbacks)
    # a chunk calls backward and the optimizer directly: no fp16 loss scaling
    if str(t.precision) in ("16", "16-mixed"):
        blockers.append(f"trainer.precision={t.precision} scales the loss with Lightning's GradScaler, which a chunk skips")
    if train_step not in ("manual", "cuda-graph"):
        blockers.append(f"it needs trainer.train_step manual or cuda-graph (this run steps with {train_step})")
    if t.devices * t.num_nodes != 1 or t.strategy not in ("auto", "single_device"):
        blockers.append("it needs one device and trainer.strategy=auto (DDP reduces gradients once per forward call)")
    if cfg.data.dataset == "imagefolder":
        blockers.append("it needs an in-memory dataset (cifar10 or synthetic), not imagefolder")
    # every step at which something happens between iterations ends a chunk (a "step" fault of
    # REPRODUCE_FAULT too, so that it fires where it says), and chunks start where the checkpoint
    # resumed from was taken (a SIGTERM's checkpoint may be at any step of a run with K = 1)
    periods = {"trainer.log_every": t.log_every, "trainer.eval_every": t.eval_every,
               "trainer.checkpoint_every": t.checkpoint_every, "the run's total steps": total_steps,
               **{f"the batch-size phase starting at step {s}": s for s in phase_starts if s},
               **({"REPRODUCE_FAULT's step": fault_step} if fault_step else {}),
               **({"the step of the checkpoint resumed from": resume_step} if resume_step else {})}
    if t.steps_per_call == 0:
        if blockers:
            return 1
        g = math.gcd(*periods.values())
        return max(k for k in range(1, AUTO_STEPS_PER_CALL + 1) if g % k == 0)
    k = t.steps_per_call
    if k < 0:
        raise ConfigError(f"trainer.steps_per_call must be 0 (auto) or a positive number of iterations, got {k}")
    if k > 1 and blockers:
        raise ConfigError(f"trainer.steps_per_call={k}: {'; '.join(blockers)} (use 0 for auto, or 1)")
    for name, period in periods.items():
        if period % k:
            raise ConfigError(f"trainer.steps_per_call={k} must divide {name} ({period}): every chunk of {k} "
                              f"iterations ends where logging, evaluation or a checkpoint may happen "
                              f"(use 0 for auto, or a divisor of {period})")
    return k


class GraphedStep:
    """Forward, loss, backward and metric sums of one batch shape as one CUDA graph.

    `compute(x, y)` returns the loss and updates the module's on-device sums in place; it is
    traced once at capture and must not sync the host. Gradients live in the graph's memory: each
    replay rewrites the same `.grad` tensors, which the (eager) optimizer step then reads.
    """

    def __init__(self, params: list[torch.nn.Parameter], x: torch.Tensor, y: torch.Tensor,
                 compute: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], channels_last: bool):
        self.params, self.compute = params, compute
        fmt = torch.channels_last if channels_last and x.dim() == 4 else torch.contiguous_format
        self.x = torch.empty_like(x, memory_format=fmt)  # the graph's static input
        self.y = torch.empty_like(y)
        self.eager_steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.loss: torch.Tensor | None = None
        self.grads: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.x.copy_(x)
        self.y.copy_(y)
        if self.graph is not None:
            self._restore_grads()
            self.graph.replay()
            return self.loss
        for p in self.params:  # backward allocates fresh gradients (in the graph's pool at capture)
            p.grad = None
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        if self.eager_steps < WARMUP_STEPS:
            with torch.cuda.stream(side):
                loss = self.compute(self.x, self.y)
                loss.backward()
            torch.cuda.current_stream().wait_stream(side)
            self.eager_steps += 1
            return loss
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.loss = self.compute(self.x, self.y)
            self.loss.backward()
        self.graph, self.grads = graph, [p.grad for p in self.params]
        graph.replay()  # capture records without running: this step's work happens here
        return self.loss

    def _restore_grads(self) -> None:
        """Point `.grad` at this graph's gradients. Only whole-set moves happen (another batch
        shape's graph, or a zero_grad that sets every gradient to None), so the first parameter
        tells; checking all of them would cost a Python loop over every parameter each step."""
        if self.params and self.params[0].grad is not self.grads[0]:
            for p, g in zip(self.params, self.grads):
                p.grad = g
