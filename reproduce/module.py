"""ClassifierModule: cross-entropy, SGD, and the paper's error metrics.

Training metrics accumulate every step as running sums, the loss and the wrong predictions on the
device (two in-place adds: torchmetrics MeanMetric updates cost more Python per step than the
rest of the step's bookkeeping) and the micro-batch and example counts on the host, where they
are known without asking the device; they are read (one host sync) only every `trainer.log_every`
iterations. They go to the loggers at once (`log_now`), so everything of iteration k is on disk
before its checkpoint is written. The sums travel in the checkpoint (`on_save_checkpoint`), so
the first `train/err` after a resume averages the same iterations as in an uninterrupted run.
Under DDP they are summed over the ranks at each log step, so the logged values cover the global
batch. The device sums are plain tensors, not module buffers: DDP copies rank 0's buffers to
every rank before each forward, which would replace each rank's sums with rank 0's.
"""
from __future__ import annotations

import math
from typing import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from .data.datamodule import StepChunk
from .errors import ConfigError
from .graph_step import GraphedStep, callback_blockers
from .lightning import (align_batch_count, attached_trainer, carry_step_count, completes_step, count_optimizer_step,
                        iteration_in_progress, log_now, set_logger_step)


TRAIN_SUMS = "train_metric_sums"  # checkpoint key of ClassifierModule.train_sums


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf; the run stops with its logs and last checkpoint kept."""


class ClassifierModule(pl.LightningModule):
    def __init__(self, model: torch.nn.Module, optim_cfg, log_every: int = 50,
                 channels_last: bool = True, num_classes: int = 10, eval_splits=("val", "test"),
                 train_step: str = "lightning", steps_per_call: int = 1,
                 set_lr: Callable[[list, int], None] | None = None):
        super().__init__()
        # graph_step.py: "lightning" (automatic optimization), "manual" or "cuda-graph"
        self.train_step_mode = train_step
        # iterations per Lightning batch (graph_step.py); inside a chunk `set_lr(optimizers, step)`
        # (LRSchedule.apply) sets each iteration's lr, as LRSchedule does before every batch
        if steps_per_call > 1 and set_lr is None:
            raise ValueError("steps_per_call > 1 needs set_lr: the iterations inside a chunk set their own lr")
        self.steps_per_call, self.set_lr = steps_per_call, set_lr
        self.automatic_optimization = train_step == "lightning"
        self.graphs: dict[tuple, GraphedStep] = {}  # batch shape -> its captured step (cuda-graph)
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        self.optim_cfg, self.log_every, self.channels_last = optim_cfg, log_every, channels_last
        # since the last log step: the sum of micro-batch losses and of wrong predictions (device),
        # micro-batches and examples (host). No NaN check per step (it would sync the host): a
        # non-finite loss is caught at the next log step instead (NonFiniteLoss)
        self.loss_sum, self.wrong_sum = torch.zeros(()), torch.zeros(())
        self.counts = [0, 0]  # a list, not two attributes: nn.Module's __setattr__ costs per step
        # one accuracy per evaluation loader, in the order the DataModule returns them
        self.eval_splits = tuple(eval_splits)
        self.eval_acc = torch.nn.ModuleList(MulticlassAccuracy(num_classes, average="micro") for _ in eval_splits)
        self.last_train_err: float | None = None  # host copy, refreshed at each log step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    @property
    def train_sums(self) -> torch.Tensor:
        """[loss sum, micro-batches, wrong predictions, examples]: the form a checkpoint holds and
        DDP reduces (built on demand, at log steps and checkpoints)."""
        micro_batches, examples = self.counts
        return torch.stack([self.loss_sum, self.loss_sum.new_tensor(float(micro_batches)), self.wrong_sum,
                            self.loss_sum.new_tensor(float(examples))])

    @train_sums.setter
    def train_sums(self, sums: torch.Tensor) -> None:
        self.loss_sum, self.wrong_sum = sums[0].clone(), sums[2].clone()
        self.counts = [int(sums[1]), int(sums[3])]

    def loss_and_sums(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch; adds its loss and wrong predictions to the device's sums
        (no host sync; a CUDA graph captures this)."""
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.loss_sum.add_(loss.detach())
        self.wrong_sum.add_(logits.detach().argmax(1).ne(y).sum())
        return loss

    def training_step(self, batch, batch_idx):
        if isinstance(batch, StepChunk):
            return self._train_chunk(batch)
        x, y = batch
        step = iteration_in_progress(self.trainer)  # before a manual opt.step() advances global_step
        counts = self.counts
        counts[0] += 1
        counts[1] += len(y)
        if self.automatic_optimization:
            loss = self.loss_and_sums(x, y)  # Lightning runs backward and the optimizer step
            if not completes_step(self.trainer):
                return loss
        else:
            opt = self.optimizers()
            loss = self._gradients(opt, x, y, self.manual_backward)
            opt.step()
        self._log_if_due(step)
        return loss

    def _train_chunk(self, chunk: StepChunk) -> torch.Tensor:
        """The iterations of one chunk (trainer.steps_per_call, graph_step.py), each a whole step:
        its lr, its batch, gradients, the raw SGD step counted as Lightning counts it, and the
        log of a log step. Lightning's backward, optimizer-step and zero-grad hooks are not called
        inside a chunk (a run whose callbacks define one is not chunked: steps_per_call_for), and
        its batch hooks run once per chunk (LRSchedule's lr is `set_lr` for the later iterations)."""
        trainer = self.trainer
        opt = self.optimizers().optimizer  # the torch optimizer: Lightning's wrapper costs ~300 calls a step
        step = trainer.global_step  # iterations done before the chunk
        for i in range(len(chunk)):
            if i:  # the chunk's first lr was set by LRSchedule.on_train_batch_start
                self.set_lr(trainer.optimizers, step)
            x, y = chunk[i]
            step += 1
            self.counts[0] += 1
            self.counts[1] += len(y)
            loss = self._gradients(opt, x, y, torch.Tensor.backward)
            opt.step()
            # Lightning runs the whole training_step in one autocast region; before 2.5.5 that
            # region caches the bf16 casts of the weights, which the next iteration must not reuse
            torch.clear_autocast_cache()
            count_optimizer_step(trainer)
            self._log_if_due(step)
        set_logger_step(trainer, step)
        return loss

    def _gradients(self, opt, x: torch.Tensor, y: torch.Tensor, backward) -> torch.Tensor:
        """Forward, loss, metric sums and backward of one batch (replayed as one CUDA graph with
        `cuda-graph`); the caller steps the optimizer."""
        if self.train_step_mode == "cuda-graph":
            key = (tuple(x.shape), tuple(y.shape), x.dtype)
            if key not in self.graphs:
                self.graphs[key] = GraphedStep(list(self.parameters()), x, y, self.loss_and_sums, self.channels_last)
            return self.graphs[key](x, y)
        opt.zero_grad()
        loss = self.loss_and_sums(x, y)
        backward(loss)
        return loss

    def _log_if_due(self, step: int) -> None:
        """At a log step (and the last): train/loss and train/err averaged since the last one."""
        if step % self.log_every and step != self.trainer.max_steps:
            return
        sums = self.train_sums
        if self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        loss_value, err = sums[0] / sums[1], sums[2] / sums[3] * 100
        self.loss_sum.zero_()
        self.wrong_sum.zero_()
        self.counts = [0, 0]
        if not math.isfinite(float(loss_value)):
            raise NonFiniteLoss(f"the training loss became {float(loss_value)} by iteration {step}")
        self.last_train_err = float(err)
        log_now(self.trainer, {"train/loss": float(loss_value), "train/err": self.last_train_err}, step)

    def on_train_start(self):
        # the callbacks steps_per_call_for saw are build_run's; one added later (configure_callbacks,
        # a Trainer built elsewhere) that a chunk would skip fails here, before any step
        blockers = callback_blockers(self.trainer.callbacks) if self.steps_per_call > 1 else []
        if blockers:
            raise ConfigError(f"trainer.steps_per_call={self.steps_per_call}: {'; '.join(blockers)} (use 1)")
        # moved once, before any capture: a CUDA graph keeps the address of these sums
        self.loss_sum, self.wrong_sum = self.loss_sum.to(self.device), self.wrong_sum.to(self.device)

    def on_train_end(self):
        # each captured graph holds a private memory pool with its own gradients: free them
        # before the final test (and before the next run when a sweep shares the process)
        self.graphs.clear()

    def on_save_checkpoint(self, checkpoint):
        sums = self.train_sums  # built fresh: nothing shared with the running sums
        trainer = attached_trainer(self)
        if trainer is not None and trainer.world_size > 1:
            # only rank 0's checkpoint is written, so it carries every rank's sums (every rank
            # saves at the same step boundary, so this collective is matched)
            sums = trainer.strategy.reduce(sums, reduce_op="sum")
        checkpoint[TRAIN_SUMS] = sums.cpu()

    def on_load_checkpoint(self, checkpoint):
        # a run may resume with another train step (a GPU run continued on a CPU): Lightning counts
        # automatic and manual optimizer steps apart, so the count moves to the one this run uses
        carry_step_count(checkpoint, self.automatic_optimization)
        # and the count of batches done moves to this run's batch (a chunk of steps_per_call iterations)
        trainer = attached_trainer(self)
        if trainer is not None:
            align_batch_count(checkpoint, trainer.accumulate_grad_batches, self.steps_per_call)
        # SGD's kernel choice is saved in its param groups and load_state_dict would bring it back:
        # a cuda-graph checkpoint resumed on a CPU must not ask for the fused CUDA kernel, nor a
        # lightning checkpoint resumed as cuda-graph lose it
        for opt_state in checkpoint.get("optimizer_states", []):
            for group in opt_state.get("param_groups", []):
                group.update(self.sgd_kernel())
        state = checkpoint["state_dict"]
        if TRAIN_SUMS in checkpoint:
            sums = checkpoint[TRAIN_SUMS].clone()
        elif "train_loss.mean_value" in state:  # before the on-device sums: torchmetrics MeanMetric states
            sums = torch.stack([state.pop("train_loss.mean_value"), state.pop("train_loss.weight"),
                                state.pop("train_err.mean_value"), state.pop("train_err.weight")]).float()
        else:
            return
        # the saved sums are those of all ranks together: rank 0 continues them, the others restart at 0
        self.train_sums = sums if self.global_rank == 0 else torch.zeros_like(sums)

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
                               weight_decay=o.weight_decay, nesterov=o.nesterov, **self.sgd_kernel())

    def sgd_kernel(self) -> dict:
        """cuda-graph: the fused kernel (one launch per step instead of a few per parameter group);
        otherwise torch's default choice."""
        return {"fused": True if self.train_step_mode == "cuda-graph" else None, "foreach": None}
