"""Data: CIFAR-10 and a synthetic stand-in held in memory, and an ImageFolder module for ImageNet."""
from .datamodule import ArrayDataModule, build_datamodule  # noqa: F401
