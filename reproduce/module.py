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

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from .graph_step import GraphedStep
from .lightning import iteration_in_progress, log_now
from .models import build


TRAIN_SUMS = "train_metric_sums"  # checkpoint key of ClassifierModule.train_sums
PIXEL_MEAN = "pixel_mean"  # checkpoint key of the training split's per-pixel mean (Section 4.2)


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf; the run stops with its logs and last checkpoint kept."""


class ClassifierModule(pl.LightningModule):
    """One training step on Lightning's manual optimization: the package sets the lr, cuts the
    batches and keeps the metric sums itself, so Lightning's automatic loop would add nothing.
    A Lightning batch is one micro-batch; with `accumulate` N an iteration is N of them, the
    optimizer stepping after the last (as Lightning documents gradient accumulation for manual
    optimization). `cuda_graph`: forward, loss and backward replayed as one CUDA graph (graph_step.py).

    `model` is a model name (`models.build`), or a net already built (then the checkpoint cannot
    rebuild it alone). With a name, `ClassifierModule.load_from_checkpoint(path)` needs nothing
    else: the arguments are the checkpoint's hyperparameters (plain values, so it loads with
    `weights_only=True`)."""

    def __init__(self, model: str | torch.nn.Module = "resnet20", optim_cfg=None, log_every: int = 50,
                 channels_last: bool = True, num_classes: int = 10, eval_splits=("val", "test"),
                 accumulate: int = 1, cuda_graph: bool = False, model_options: dict | None = None):
        super().__init__()
        # Section 4.2's SGD unless given: {momentum, weight_decay, nesterov}, plain values
        optim = {"momentum": 0.9, "weight_decay": 1e-4, "nesterov": False, **dict(optim_cfg or {})}
        model_options = dict(model_options or {})
        if isinstance(model, str):
            self.save_hyperparameters({"model": model, "optim_cfg": optim, "log_every": log_every,
                                       "channels_last": channels_last, "num_classes": num_classes,
                                       "eval_splits": list(eval_splits), "accumulate": accumulate,
                                       "cuda_graph": cuda_graph, "model_options": model_options}, logger=False)
            model = build(model, num_classes=num_classes, **model_options)
        self.automatic_optimization = False
        self.accumulate, self.cuda_graph = accumulate, cuda_graph
        self.micro_batch = 0  # which micro-batch of the iteration the step is computing (0 .. accumulate - 1)
        self.stepped = False  # whether the last training batch ended with an optimizer step (callbacks read it)
        self.graphs: dict[tuple, GraphedStep] = {}  # batch shape -> its captured step
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        self.optim_cfg, self.log_every, self.channels_last = optim, log_every, channels_last
        # since the last log step: the sum of micro-batch losses and of wrong predictions (device),
        # micro-batches and examples (host). No NaN check per step (it would sync the host): a
        # non-finite loss is caught at the next log step instead (NonFiniteLoss)
        self.loss_sum, self.wrong_sum = torch.zeros(()), torch.zeros(())
        self.counts = [0, 0]
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
        x, y = batch
        opt = self.optimizers()
        self.counts[0] += 1
        self.counts[1] += len(y)
        if self.cuda_graph:  # one micro-batch per iteration (graph_step.train_step_for)
            key = (tuple(x.shape), tuple(y.shape), x.dtype)
            if key not in self.graphs:
                self.graphs[key] = GraphedStep(list(self.parameters()), x, y, self.loss_and_sums, self.channels_last)
            loss = self.graphs[key](x, y)
        else:
            if self.micro_batch == 0:
                opt.zero_grad()
            loss = self.loss_and_sums(x, y)
            # the mean over the iteration's examples: each micro-batch's mean divided by their number
            self.manual_backward(loss / self.accumulate if self.accumulate > 1 else loss)
        self.stepped = self.micro_batch == self.accumulate - 1
        if self.stepped:
            step = iteration_in_progress(self.trainer)  # before opt.step() advances global_step
            opt.step()
            self.micro_batch = 0
            self._log_if_due(step)
        else:
            self.micro_batch += 1
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
        # moved once, before any capture: a CUDA graph keeps the address of these sums
        self.loss_sum, self.wrong_sum = self.loss_sum.to(self.device), self.wrong_sum.to(self.device)

    def on_train_end(self):
        # each captured graph holds a private memory pool with its own gradients: free them
        # before the final test (and before the next run when a sweep shares the process)
        self.graphs.clear()

    def _attached_trainer(self) -> pl.Trainer | None:
        try:
            return self.trainer
        except RuntimeError:  # used outside a Trainer
            return None

    def on_save_checkpoint(self, checkpoint):
        sums = self.train_sums  # built fresh: nothing shared with the running sums
        trainer = self._attached_trainer()
        if trainer is not None and trainer.world_size > 1:
            # only rank 0's checkpoint is written, so it carries every rank's sums (every rank
            # saves at the same step boundary, so this collective is matched)
            sums = trainer.strategy.reduce(sums, reduce_op="sum")
        checkpoint[TRAIN_SUMS] = sums.cpu()
        mean = getattr(trainer.datamodule, "mean", None) if trainer is not None else None
        if torch.is_tensor(mean):  # what a user of the trained net subtracts (load_classifier)
            checkpoint[PIXEL_MEAN] = mean.cpu()

    def on_load_checkpoint(self, checkpoint):
        # SGD's kernel choice is saved in its param groups and load_state_dict would bring it back:
        # a CUDA-graph checkpoint resumed on a CPU must not ask for the fused CUDA kernel
        for opt_state in checkpoint.get("optimizer_states", []):
            for group in opt_state.get("param_groups", []):
                group.update(self.sgd_kernel())
        if TRAIN_SUMS in checkpoint:
            # the saved sums are those of all ranks together: rank 0 continues them, the others restart at 0
            sums = checkpoint[TRAIN_SUMS].clone()
            self.train_sums = sums if self.global_rank == 0 else torch.zeros_like(sums)

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        x, y = batch
        self.eval_acc[dataloader_idx].update(self(x), y)

    def on_validation_epoch_end(self):
        # top-1 error in %, micro-averaged; torchmetrics syncs the counts across DDP ranks. Written
        # with log_now at the iteration; self.log only for the callbacks (callback_metrics)
        errs = {}
        for split, metric in zip(self.eval_splits, self.eval_acc):
            errs[f"{split}/err"] = (1 - metric.compute()) * 100
            self.log(f"{split}/err", errs[f"{split}/err"], logger=False)
            metric.reset()
        log_now(self.trainer, {k: float(v) for k, v in errs.items()}, self.trainer.global_step)

    def configure_optimizers(self):
        o = self.optim_cfg
        # Section 4.2: SGD, momentum 0.9, weight decay 1e-4 on all weights; the lr is set per step
        # by the LRSchedule callback.
        return torch.optim.SGD(self.parameters(), lr=0.0, momentum=o["momentum"],
                               weight_decay=o["weight_decay"], nesterov=o["nesterov"], **self.sgd_kernel())

    def sgd_kernel(self) -> dict:
        """CUDA graph: the fused kernel (one launch per step instead of a few per parameter group);
        otherwise torch's default choice."""
        return {"fused": True if self.cuda_graph else None, "foreach": None}


class Classifier(torch.nn.Module):
    """A trained net as a plain classifier: raw uint8 CIFAR images [N, 3, 32, 32] in, logits out
    (scaled to [0, 1] and the training split's per-pixel mean subtracted, as in training)."""

    def __init__(self, model: torch.nn.Module, mean: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.float().div(255).sub(self.mean))


def load_classifier(path, map_location="cpu") -> Classifier:
    """`last.ckpt` of a CIFAR run -> a `Classifier` in eval mode (weights loaded with
    `weights_only=True`: no code in the file runs)."""
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    if PIXEL_MEAN not in checkpoint or "hyper_parameters" not in checkpoint:
        raise ValueError(f"{path}: no per-pixel mean in this checkpoint (an ImageFolder run, or written by an "
                         f"older version of reproduce): load it with ClassifierModule.load_from_checkpoint")
    module = ClassifierModule(**checkpoint["hyper_parameters"])  # what load_from_checkpoint does
    module.load_state_dict(checkpoint["state_dict"])
    return Classifier(module.model, checkpoint[PIXEL_MEAN]).eval()
