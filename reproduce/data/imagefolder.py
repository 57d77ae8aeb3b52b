"""ImageNet-style data: `root/train/<class>/*.jpg`, `root/val/<class>/*.jpg` (torchvision ImageFolder).

Training augmentation as in Section 3.4 of He et al. 2015: the shorter side resized at random in
[256, 480] (scale augmentation), a 224x224 crop and its horizontal flip, the mean subtracted,
optionally the standard colour augmentation (Krizhevsky et al. 2012's PCA lighting noise).
Validation: shorter side 256, centre 224 crop. Decoding runs in `data.workers` processes per
device.

Resuming is exact here too: the training loader is `ImageBatches`, whose order is a pure function
of (seed, epoch) and whose position comes from the restored iteration, and each image's random
augmentation is seeded by (seed, epoch, image), whichever worker decodes it. Each rank reads its
own slice of every epoch's permutation (the loader shards itself; Lightning's DistributedSampler
applies to the validation loader only).
"""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from PIL import Image
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets, transforms as T

from .cifar10 import DataError

# ImageNet RGB mean (of [0, 1] pixels): the per-pixel mean of Section 3.4, which for random
# crops at random scales is the same at every pixel.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
# PCA of ImageNet pixel colours (Krizhevsky et al. 2012, Section 4.1), as used by fb.resnet.torch
PCA_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
PCA_EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])


class RandomShorterSide:
    """Resize so the shorter side is uniform in [low, high] (Section 3.4, following [41])."""

    def __init__(self, low: int, high: int):
        self.low, self.high = low, high

    def __call__(self, img):
        size = int(torch.randint(self.low, self.high + 1, (1,)))
        return T.functional.resize(img, size)


class Lighting:
    """AlexNet-style PCA colour noise with std `alphastd`."""

    def __init__(self, alphastd: float = 0.1):
        self.alphastd = alphastd

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        alpha = torch.randn(3) * self.alphastd
        rgb = (PCA_EIGVEC * alpha * PCA_EIGVAL).sum(1)
        return x + rgb.view(3, 1, 1)


def imagenet_transforms(crop: int, scale_low: int, scale_high: int, val_resize: int, color: bool):
    mean_only = T.Normalize(IMAGENET_MEAN, (1.0, 1.0, 1.0))  # subtract the mean, as the paper does
    train = [RandomShorterSide(scale_low, scale_high), T.RandomCrop(crop), T.RandomHorizontalFlip(), T.ToTensor()]
    if color:
        train.append(Lighting())
    train.append(mean_only)
    val = [T.Resize(val_resize), T.CenterCrop(crop), T.ToTensor(), mean_only]
    return T.Compose(train), T.Compose(val)


class SeededItems(Dataset):
    """`dataset[index]` with the global RNG seeded by (seed, epoch, index) for its transforms, so
    an image's crop, scale and flip are the same in a resumed run; the caller's RNG is untouched."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, epoch = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + epoch * 2_000_029 + index) % (2 ** 63))
            return self.dataset[index]


class ImageBatches:
    """This rank's micro-batches for iterations `start_step + 1 .. total_steps`, decoded by a
    DataLoader per epoch. Epoch e is the permutation seeded by (seed, e); rank r takes every
    world-th image of it and drops the last partial batch, as DistributedSampler(drop_last) does.
    Like `TrainBatches`, its length is the whole run (Lightning restores the position)."""

    def __init__(self, dataset, batch: int, seed: int, start_step: int, total_steps: int, accumulate: int = 1,
                 rank: int = 0, world: int = 1, workers: int = 0, pin_memory: bool = False):
        self.dataset, self.batch, self.seed = dataset, batch, seed
        self.start_step, self.total_steps, self.accumulate = start_step, total_steps, accumulate
        self.rank, self.world, self.workers, self.pin_memory = rank, world, workers, pin_memory
        self.per_epoch = len(dataset) // world // batch
        if self.per_epoch == 0:
            raise DataError(f"{len(dataset)} training images are fewer than one batch of {batch} per device "
                            f"x {world} devices")

    def __len__(self) -> int:
        return self.total_steps * self.accumulate

    def epoch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        mine = torch.randperm(len(self.dataset), generator=g)[self.rank::self.world]
        return mine[: self.per_epoch * self.batch]

    def __iter__(self):
        epoch, offset = divmod(self.start_step * self.accumulate, self.per_epoch)
        left = (self.total_steps - self.start_step) * self.accumulate
        items = SeededItems(self.dataset, self.seed)
        while left > 0:
            order = self.epoch_order(epoch)[offset * self.batch:]
            keys = [(int(i), epoch) for i in order[: left * self.batch]]
            loader = DataLoader(items, batch_size=self.batch, sampler=keys, drop_last=True,
                                num_workers=self.workers, pin_memory=self.pin_memory)
            for batch in loader:
                yield batch
                left -= 1
            epoch, offset = epoch + 1, 0


class ImageFolderDataModule(pl.LightningDataModule):
    eval_splits = ("val",)

    def __init__(self, data_cfg, schedule, seed: int, accumulate: int = 1):
        super().__init__()
        self.cfg, self.schedule, self.seed, self.accumulate = data_cfg, schedule, seed, accumulate
        self.root = Path(data_cfg.root).expanduser()
        for split in ("train", "val"):
            if not (self.root / split).is_dir():
                raise DataError(f"ImageFolder data not found: {self.root / split} is missing; data.root must hold "
                                f"train/<class>/*.jpg and val/<class>/*.jpg (e.g. ImageNet-1k)")
        self.classes = sorted(p.name for p in (self.root / "train").iterdir() if p.is_dir())
        if not self.classes:
            raise DataError(f"{self.root / 'train'} holds no class folders")
        self.num_classes = len(self.classes)
        c = data_cfg
        crop = c.image_size
        scale = (round(crop * 256 / 224), round(crop * 480 / 224))  # [256, 480] at crop 224
        self.train_tf, self.val_tf = imagenet_transforms(crop, scale[0], scale[1], scale[0], c.color_aug)

    @property
    def train_size(self) -> int:
        return len(self.train_set) if hasattr(self, "train_set") else 0

    def setup(self, stage=None):
        if not hasattr(self, "train_set"):
            self.train_set = datasets.ImageFolder(str(self.root / "train"), self.train_tf)
            self.val_set = datasets.ImageFolder(str(self.root / "val"), self.val_tf)

    def _per_device_batch(self) -> int:
        world = self.trainer.world_size if self.trainer is not None else 1
        return self.schedule.batch_size(0) // (world * self.accumulate)

    def train_dataloader(self):
        t = self.trainer
        rank, world = (t.global_rank, t.world_size) if t is not None else (0, 1)
        start = t.global_step if t is not None else 0
        return ImageBatches(self.train_set, self._per_device_batch(), self.seed, start, self.schedule.total_steps,
                            self.accumulate, rank, world, self.cfg.workers, torch.cuda.is_available())

    def val_dataloader(self):
        return [DataLoader(self.val_set, batch_size=self.cfg.eval_batch_size, num_workers=self.cfg.workers,
                           pin_memory=torch.cuda.is_available())]

    def test_dataloader(self):
        return self.val_dataloader()[0]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x  # transforms already subtracted the mean on the workers


def make_tiny_imagefolder(root: Path, classes: int = 4, per_class: int = 12, size: int = 48, seed: int = 0) -> Path:
    """A few generated JPEGs per class (each class its own colour pattern), for smoke runs."""
    g = torch.Generator().manual_seed(seed)
    for split, n in (("train", per_class), ("val", max(2, per_class // 3))):
        for c in range(classes):
            d = Path(root) / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            base = torch.rand(3, 1, 1, generator=g) * 200
            for i in range(n):
                img = (base + torch.rand(3, size, size, generator=g) * 55).clamp(0, 255).byte()
                Image.fromarray(img.permute(1, 2, 0).numpy()).save(d / f"{i}.jpg", quality=90)
    return Path(root)
