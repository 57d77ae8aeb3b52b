"""ClassifierModule: cross-entropy, SGD, and the paper's error metrics.

Training metrics accumulate on the device every step and are read (one host sync) only every
`trainer.log_every` iterations, so logging costs nothing in the hot path. They go to the loggers
at once (`log_now`), so everything of iteration k is on disk before its checkpoint is written. Their accumulators are
persistent (part of the checkpoint), so the first `train/err` after a resume averages the same
iterations as in an uninterrupted run.
"""
from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from .lightning import completes_step, iteration_in_progress, log_now


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf; the run stops with its logs and last checkpoint kept."""


class ClassifierModule(pl.LightningModule):
    def __init__(self, model: torch.nn.Module, optim_cfg, log_every: int = 50,
                 channels_last: bool = True, num_classes: int = 10, eval_splits=("val", "test")):
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        self.optim_cfg, self.log_every, self.channels_last = optim_cfg, log_every, channels_last
        # nan_strategy="disable": torchmetrics' NaN check would sync the host every step; a
        # non-finite loss is caught at the next log step instead (NonFiniteLoss)
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.train_err = MeanMetric(nan_strategy="disable")
        self.train_loss.persistent(True)
        self.train_err.persistent(True)
        # one accuracy per evaluation loader, in the order the DataModule returns them
        self.eval_splits = tuple(eval_splits)
        self.eval_acc = torch.nn.ModuleList(MulticlassAccuracy(num_classes, average="micro") for _ in eval_splits)
        self.last_train_err: float | None = None  # host copy, refreshed at each log step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.train_loss.update(loss.detach())
        self.train_err.update((logits.detach().argmax(1) != y).float())
        if not completes_step(self.trainer):
            return loss
        step = iteration_in_progress(self.trainer)
        if step % self.log_every == 0 or step == self.trainer.max_steps:
            loss_value, err = self.train_loss.compute(), self.train_err.compute() * 100
            self.train_loss.reset()
            self.train_err.reset()
            if not math.isfinite(float(loss_value)):
                raise NonFiniteLoss(f"the training loss became {float(loss_value)} by iteration {step}")
            self.last_train_err = float(err)
            log_now(self.trainer, {"train/loss": float(loss_value), "train/err": self.last_train_err}, step)
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        x, y = batch
        self.eval_acc[dataloader_idx].update(self(x), y)

    def on_validation_epoch_end(self):
        # top-1 error in %, micro-averaged; torchmetrics syncs the counts across DDP ranks
        for split, metric in zip(self.eval_splits, self.eval_acc):
            self.log(f"{split}/err", (1 - metric.compute()) * 100)
            metric.reset()

    def configure_optimizers(self):
        o = self.optim_cfg
        # Section 4.2: SGD, momentum 0.9, weight decay 1e-4 on all weights; the lr is set per step
        # by the LRSchedule callback.
        return torch.optim.SGD(self.parameters(), lr=0.0, momentum=o.momentum,
                               weight_decay=o.weight_decay, nesterov=o.nesterov)
