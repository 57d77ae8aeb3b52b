"""The gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018, Appendix A.1).

From the squared norms of a small-batch gradient (B_small) and a big-batch gradient (B_big)
taken at the same weights, the unbiased estimates are
    |G|^2  ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(S)  ~ (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big)
and B_simple is the ratio of their exponential moving averages (the ratio of the averages, not
the average of the ratios, as the paper recommends), every `every` iterations:

- without gradient accumulation, B_big is the training batch and B_small its first `micro`
  examples, whose gradient costs one extra forward/backward (BN in eval mode, so the running
  statistics do not move). It runs before the step's own backward, whose zero_grad discards it.
- with accumulation, the two gradients are already there: B_small is the first micro-batch
  (read after its backward) and B_big the whole effective batch (read before the optimizer step),
  so nothing extra runs and the accumulated gradient is never touched.

The value is written to the loggers at the iteration it was measured, once (see `log_now`).
"""
from __future__ import annotations

import pytorch_lightning as pl
import torch.nn.functional as F

from ..lightning import iteration_in_progress, log_now


def noise_scale_estimates(g_small_sq: float, g_big_sq: float, b_small: int, b_big: int) -> tuple[float, float]:
    """Unbiased (|G|^2, tr(Sigma)) from squared gradient norms at two batch sizes."""
    g2 = (b_big * g_big_sq - b_small * g_small_sq) / (b_big - b_small)
    trace = (g_small_sq - g_big_sq) / (1 / b_small - 1 / b_big)
    return g2, trace


def _sq_norm_of_grads(model) -> float:
    return float(sum((p.grad.float() ** 2).sum() for p in model.parameters() if p.grad is not None))


def _grad_sq_norm(model, x, y) -> float:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    total = _sq_norm_of_grads(model)
    model.zero_grad(set_to_none=True)
    return total


class GradientNoiseScale(pl.Callback):
    def __init__(self, every: int = 50, micro: int = 16, beta: float = 0.9):
        self.every, self.micro, self.beta = every, micro, beta
        self.ema_g2 = self.ema_trace = None
        self._small: tuple[float, int] | None = None  # (|g_small|^2, B_small) of the current step
        self._micro_batch = 0

    def _measures(self, trainer) -> bool:
        return iteration_in_progress(trainer) % self.every == 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._micro_batch = len(batch[1])
        if pl_module.accumulate > 1 or trainer.world_size > 1 or not self._measures(trainer):
            return
        x, y = batch
        if len(y) <= self.micro:
            return
        was_training = pl_module.training
        pl_module.eval()  # BN in eval mode: the estimate should not move the running stats
        g_small = _grad_sq_norm(pl_module, x[: self.micro], y[: self.micro])
        g_big = _grad_sq_norm(pl_module, x, y)
        pl_module.train(was_training)
        self._update(trainer, g_small, g_big, self.micro, len(y))

    def on_after_backward(self, trainer, pl_module):
        n = pl_module.accumulate
        if n > 1 and pl_module.micro_batch == 0 and self._measures(trainer):
            # the step divides each micro-batch's loss by the accumulation steps
            self._small = (_sq_norm_of_grads(pl_module) * n ** 2, self._micro_batch)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self._small is not None:
            (g_small, b_small), self._small = self._small, None
            b_big = self._micro_batch * pl_module.accumulate * trainer.world_size
            self._update(trainer, g_small, _sq_norm_of_grads(pl_module), b_small, b_big)

    def _update(self, trainer, g_small: float, g_big: float, b_small: int, b_big: int) -> None:
        g2, trace = noise_scale_estimates(g_small, g_big, b_small, b_big)
        b = self.beta
        self.ema_g2 = g2 if self.ema_g2 is None else b * self.ema_g2 + (1 - b) * g2
        self.ema_trace = trace if self.ema_trace is None else b * self.ema_trace + (1 - b) * trace
        if self.ema_g2 > 0:
            log_now(trainer, {"noise_scale": self.ema_trace / self.ema_g2}, iteration_in_progress(trainer))

    def state_dict(self):
        return {"ema_g2": self.ema_g2, "ema_trace": self.ema_trace}

    def load_state_dict(self, state):
        self.ema_g2, self.ema_trace = state["ema_g2"], state["ema_trace"]
