"""The training step's one option: replay forward, loss and backward as a CUDA graph.

A ResNet-20 step at batch 128 is launch-bound on a large GPU: its forward and backward are
hundreds of small kernels, each launched from Python (docs/gpu.md). With `trainer.train_step`
`cuda-graph` (what `auto` picks on one CUDA device) `GraphedStep` captures forward, loss,
backward and the training-metric sums of one batch shape once (`torch.cuda.graph`) and then
replays them as a single launch per step. What stays outside the graph, per step:
  - the batch: sampled and augmented on the device as before (a generator seeded by the step, so
    a resumed run draws the same crops), then copied into the graph's static input;
  - the optimizer step, through Lightning (`opt.step()` of manual optimization), so
    `global_step`, the checkpoint's optimizer state and the lr schedule (a float set per step by
    LRSchedule) work unchanged; on CUDA it is the fused SGD kernel.
The forward and backward inside the graph are the same operations as eager; only their launch
changes. Each batch shape (a batch-size schedule has several) gets its own graph, captured after
`WARMUP_STEPS` eager steps of that shape on a side stream (cudnn.benchmark picks its kernels
then; PyTorch requires the warmup before capture).
"""
from __future__ import annotations

from typing import Callable

import torch

from .config import graph_blockers
from .errors import ConfigError

WARMUP_STEPS = 3  # eager steps per batch shape before its capture (PyTorch's CUDA-graph docs use 3)


def uses_cuda_graph(cfg, cuda_available: bool | None = None) -> bool:
    """Whether this run's step is captured: `trainer.train_step` resolved on this machine (`auto`:
    wherever it can be); an explicit `cuda-graph` without a CUDA device fails in one line.
    The device-independent rules are checked with the config (config.graph_blockers)."""
    t = cfg.trainer
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    on_cuda = cuda and t.accelerator in ("auto", "gpu", "cuda")
    if t.train_step == "eager":
        return False
    if t.train_step == "cuda-graph":
        if not on_cuda:
            raise ConfigError(f"trainer.train_step=cuda-graph needs a CUDA device (trainer.accelerator={t.accelerator}, "
                              f"CUDA {'available' if cuda else 'not available'}); use auto or eager")
        return True
    return on_cuda and not graph_blockers(t)


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
