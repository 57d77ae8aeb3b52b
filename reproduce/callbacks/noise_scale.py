"""The gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018, Appendix A.1).

From the squared norms of a small-batch gradient (B_small) and a big-batch gradient (B_big)
taken at the same weights, the unbiased estimates are
    |G|^2  ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(S)  ~ (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big)
and B_simple is the ratio of their exponential moving averages (the ratio of the averages, not
the average of the ratios, as the paper recommends). Here B_big is the training batch and B_small
a micro-batch of it (`micro` examples); the extra backward pass runs only every `every` steps.
"""
from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F


def noise_scale_estimates(g_small_sq: float, g_big_sq: float, b_small: int, b_big: int) -> tuple[float, float]:
    """Unbiased (|G|^2, tr(Sigma)) from squared gradient norms at two batch sizes."""
    g2 = (b_big * g_big_sq - b_small * g_small_sq) / (b_big - b_small)
    trace = (g_small_sq - g_big_sq) / (1 / b_small - 1 / b_big)
    return g2, trace


def _grad_sq_norm(model, x, y) -> float:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    total = sum((p.grad.float() ** 2).sum() for p in model.parameters() if p.grad is not None)
    model.zero_grad(set_to_none=True)
    return float(total)


class GradientNoiseScale(pl.Callback):
    def __init__(self, every: int = 50, micro: int = 16, beta: float = 0.9):
        self.every, self.micro, self.beta = every, micro, beta
        self.ema_g2 = self.ema_trace = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step % self.every or trainer.world_size > 1:
            return
        x, y = batch
        if len(y) <= self.micro:
            return
        was_training = pl_module.training
        pl_module.eval()  # BN in eval mode: the estimate should not move the running stats
        g_small = _grad_sq_norm(pl_module, x[: self.micro], y[: self.micro])
        g_big = _grad_sq_norm(pl_module, x, y)
        pl_module.train(was_training)
        g2, trace = noise_scale_estimates(g_small, g_big, self.micro, len(y))
        b = self.beta
        self.ema_g2 = g2 if self.ema_g2 is None else b * self.ema_g2 + (1 - b) * g2
        self.ema_trace = trace if self.ema_trace is None else b * self.ema_trace + (1 - b) * trace
        if self.ema_g2 > 0:
            pl_module.log("noise_scale", self.ema_trace / self.ema_g2, on_step=True, on_epoch=False)

    def state_dict(self):
        return {"ema_g2": self.ema_g2, "ema_trace": self.ema_trace}

    def load_state_dict(self, state):
        self.ema_g2, self.ema_trace = state["ema_g2"], state["ema_trace"]
