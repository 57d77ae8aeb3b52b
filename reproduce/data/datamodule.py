"""The in-memory DataModule for CIFAR-10 and the synthetic set.

Images stay uint8 [N, 3, 32, 32] tensors, on the training device when `data.on_device` (the
whole of CIFAR-10 is 180 MB), and batches are cut from a per-epoch permutation by index, so
a training step costs no host work. Mean subtraction and augmentation run batched on the device,
as each micro-batch is cut (`TrainBatches`, `training_batch`).

The order of batches is a pure function of (seed, step, batch-size schedule), so a resumed run
continues with exactly the batches an uninterrupted one would have seen: the loader is rebuilt
from `trainer.global_step`, no iterator state to save. To Lightning the whole run is one epoch of
`total_steps x accumulate` micro-batches; a resumed run's loader keeps that length and starts
where the checkpoint left off, which is how Lightning counts a restored mid-epoch position.
"""
from __future__ import annotations

import math
from typing import Callable

import pytorch_lightning as pl
import torch

from ..schedules import Schedule
from .augment import random_crop_flip, step_generator
from .cifar10 import load_cifar10
from .imagefolder import ImageFolderDataModule
from .synthetic import make_synthetic


def train_size_of(data_cfg) -> int:
    """Images in the training split, known from the config alone (for epochs and warmup)."""
    c = data_cfg
    if c.dataset == "cifar10":
        n = 50000 - c.val_size
    elif c.dataset == "synthetic":
        n = c.synthetic_train - min(c.val_size, c.synthetic_train // 5)
    else:
        n = 1281167  # ImageNet-1k training set
    return min(n, c.train_limit) if c.train_limit else n


_LOADED: dict = {}


def load_arrays(data_cfg):
    """The dataset as uint8 tensors, read once per process (a sweep's runs share it)."""
    c = data_cfg
    key = (c.dataset, str(c.root), c.synthetic_train, c.synthetic_test)
    if key not in _LOADED:
        _LOADED.clear()
        if c.dataset == "cifar10":
            _LOADED[key] = load_cifar10(c.root, c.download)
        else:
            _LOADED[key] = make_synthetic(c.synthetic_train, c.synthetic_test)
    return _LOADED[key]


class TrainBatches:
    """Yields (images, labels) micro-batches for optimizer steps `start_step` .. `total_steps`.

    Each optimizer step takes the next B(step) indices of the epoch's permutation (a new epoch
    starts when fewer than B remain); its B indices are split into `accumulate` x `world`
    micro-batches, and this rank gets its own share of each, so the global batch is B whatever the
    number of devices. `prepare(x, y, draw)` (normalisation and augmentation) gets each
    micro-batch's number in the run, `step x accumulate + micro-batch`, which seeds its crops.
    """

    def __init__(self, x, y, schedule: Schedule, seed: int, start_step: int = 0, accumulate: int = 1,
                 rank: int = 0, world: int = 1, prepare: Callable | None = None):
        self.x, self.y, self.schedule, self.seed = x, y, schedule, seed
        self.start_step, self.accumulate, self.rank, self.world = start_step, accumulate, rank, world
        self.prepare = prepare

    def __len__(self) -> int:
        # the whole run, not what is left of it: Lightning restores how many batches of the epoch
        # were done and ends the epoch at this length
        return self.schedule.total_steps * self.accumulate

    def _permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(len(self.y), generator=g).to(self.x.device)

    def _position(self, step: int) -> tuple[int, int]:
        """(epoch, offset in its permutation) before `step`, replaying the batch sizes."""
        n, epoch, pos = len(self.y), 0, 0
        for s in range(step):
            b = self.schedule.batch_size(s)
            if pos + b > n:
                epoch, pos = epoch + 1, 0
            pos += b
        return epoch, pos

    def __iter__(self):
        n = len(self.y)
        epoch, pos = self._position(self.start_step)
        perm = self._permutation(epoch)
        for step in range(self.start_step, self.schedule.total_steps):
            b = self.schedule.batch_size(step)
            if b > n:
                raise ValueError(f"batch size {b} at step {step} exceeds the {n} training images")
            if pos + b > n:
                epoch, pos = epoch + 1, 0
                perm = self._permutation(epoch)
            idx = perm[pos:pos + b]
            pos += b
            micro = len(idx) // (self.accumulate * self.world)
            for a in range(self.accumulate):
                start = (a * self.world + self.rank) * micro
                part = idx[start:start + micro]
                x, y = self.x[part], self.y[part]
                yield self.prepare(x, y, step * self.accumulate + a) if self.prepare is not None else (x, y)


class EvalBatches:
    """This rank's contiguous share of an evaluation set, in large batches."""

    def __init__(self, x, y, batch_size: int, rank: int = 0, world: int = 1):
        per_rank = math.ceil(len(y) / world)
        self.x, self.y = x[rank * per_rank:(rank + 1) * per_rank], y[rank * per_rank:(rank + 1) * per_rank]
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self):
        for i in range(0, len(self.y), self.batch_size):
            yield self.x[i:i + self.batch_size], self.y[i:i + self.batch_size]


class ArrayDataModule(pl.LightningDataModule):
    """CIFAR-10 (or synthetic) with the paper's split, per-pixel mean and augmentation."""

    num_classes = 10
    eval_splits = ("val", "test")  # the order of val_dataloader()'s loaders
    split_tensors = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y", "full_test_x", "full_test_y", "mean")

    def __init__(self, data_cfg, schedule: Schedule, seed: int, accumulate: int = 1, arrays=None):
        super().__init__()
        self.cfg, self.schedule, self.seed, self.accumulate = data_cfg, schedule, seed, accumulate
        self.augment = data_cfg.augment  # read every step: a plain bool, not an OmegaConf lookup
        self._arrays = arrays
        self.mean = None

    def load_arrays(self):
        if self._arrays is None:
            self._arrays = load_arrays(self.cfg)
        return self._arrays

    def setup(self, stage: str | None = None) -> None:
        if self.mean is not None:
            return
        train_x, train_y, test_x, test_y = self.load_arrays()
        # Section 4.2: 45k/5k train/val split; fixed by data.split_seed, not the run's seed.
        order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(self.cfg.split_seed))
        val_size = min(self.cfg.val_size, len(train_y) // 5)
        val_idx, train_idx = order[:val_size], order[val_size:]
        if self.cfg.train_limit:
            train_idx = train_idx[: self.cfg.train_limit]
        self.train_x, self.train_y = train_x[train_idx], train_y[train_idx]
        self.val_x, self.val_y = train_x[val_idx], train_y[val_idx]
        self.test_x, self.test_y = test_x, test_y
        self.full_test_x, self.full_test_y = test_x, test_y  # the final evaluation uses all of it
        if self.cfg.eval_limit:
            self.val_x, self.val_y = self.val_x[: self.cfg.eval_limit], self.val_y[: self.cfg.eval_limit]
            self.test_x, self.test_y = self.test_x[: self.cfg.eval_limit], self.test_y[: self.cfg.eval_limit]
        # Section 4.2: "the per-pixel mean subtracted", computed on the training split only.
        # Pixels are scaled to [0, 1] first; BN after the first conv makes the scale immaterial.
        self.mean = self.train_x.double().mean(0).float() / 255
        device = self._device()
        for name in self.split_tensors if self.cfg.on_device else ("mean",):
            setattr(self, name, getattr(self, name).to(device))

    @property
    def train_size(self) -> int:
        return len(self.train_y)

    def _device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def train_dataloader(self):
        rank, world = self._rank_world()
        start = self.trainer.global_step if self.trainer is not None else 0
        return TrainBatches(self.train_x, self.train_y, self.schedule, self.seed, start,
                            self.accumulate, rank, world, self.training_batch)

    def val_dataloader(self):
        rank, world = self._rank_world()
        bs = self.cfg.eval_batch_size
        return [EvalBatches(self.val_x, self.val_y, bs, rank, world),
                EvalBatches(self.test_x, self.test_y, bs, rank, world)]

    def test_dataloader(self):
        """The whole test set (the final evaluation, run once on rank 0)."""
        return EvalBatches(self.full_test_x, self.full_test_y, self.cfg.eval_batch_size)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255).sub_(self.mean.to(x.device))
        # in the precision's dtype (float64 under 64-true): the batches are cut here, not by
        # Lightning's loader, which would convert them
        return self.trainer.precision_plugin.convert_input(x) if self.trainer is not None else x

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.trainer is not None and self.trainer.training:
            return batch  # TrainBatches prepared it (training_batch)
        x, y = batch
        return self.normalize(x), y

    def training_batch(self, x: torch.Tensor, y: torch.Tensor, draw: int):
        """A training batch on the training device, normalised and, with `data.augment`, cropped
        and flipped by the generator of `draw` (the micro-batch's number in the run), on this rank."""
        device = self._device()
        x = self.normalize(x.to(device))
        if self.augment:
            rank = self.trainer.global_rank if self.trainer is not None else 0
            x = random_crop_flip(x, step_generator(self.seed * 7 + rank, draw, x.device))
        return x, y.to(device)


def build_datamodule(cfg, schedule: Schedule):
    if cfg.data.dataset == "imagefolder":
        return ImageFolderDataModule(cfg.data, schedule, cfg.seed, cfg.trainer.accumulate)
    return ArrayDataModule(cfg.data, schedule, cfg.seed, cfg.trainer.accumulate)
