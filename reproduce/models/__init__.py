"""Models by name: `build("resnet20")`, `build("plain56")`, `build("resnet34")`.

CIFAR nets (Section 4.2) are `resnetD` / `plainD` for any depth D = 6n+2; the ImageNet nets of
Table 1 are `resnet18/34/50/101/152` and `plain18/34`, whose names take precedence (50 and 152 are
also 6n+2: the CIFAR nets of those depths are `cifar_resnet50`, `cifar_plain152`, ...).
"""
from __future__ import annotations

import re

from torch import nn

from ..errors import ConfigError
from . import cifar, imagenet
from .cifar import BasicBlock, CifarNet, plain, resnet  # noqa: F401

_CIFAR = re.compile(r"^(?:cifar_)?(resnet|plain)(\d+)$")


def check_name(name: str) -> None:
    """Raise a one-line ConfigError unless `name` is a model `build` can make."""
    if name in imagenet.MODELS:
        return
    m = _CIFAR.match(name)
    if not m:
        raise ConfigError(f"unknown model '{name}'; valid: resnetD or plainD with D = 6n+2 "
                          f"(resnet20, plain56, ...) or {', '.join(imagenet.MODELS)}")
    depth = int(m.group(2))
    if depth < 8 or (depth - 2) % 6:
        lower = max(8, depth - (depth - 2) % 6)
        raise ConfigError(f"model '{name}': CIFAR nets have 6n+2 layers, {depth} is not; "
                          f"nearest valid: {m.group(1)}{lower}, {m.group(1)}{lower + 6}")


def is_residual(name: str) -> bool:
    return "resnet" in name


def depth_of(name: str) -> int:
    return int(re.findall(r"\d+", name)[-1])


def is_imagenet(name: str) -> bool:
    return name in imagenet.MODELS


def build(name: str, num_classes: int | None = None, **kwargs) -> nn.Module:
    check_name(name)
    if name in imagenet.MODELS:
        return imagenet.MODELS[name](num_classes=num_classes or 1000, **kwargs)
    family, depth = _CIFAR.match(name).groups()
    make = cifar.resnet if family == "resnet" else cifar.plain
    model = make(int(depth), num_classes=num_classes or 10)
    if kwargs.pop("zero_init_residual", False) and family == "resnet":
        for block in model.modules():
            if isinstance(block, BasicBlock):
                nn.init.zeros_(block.bn2.weight)  # Goyal et al. 2017, Section 5.1
    if kwargs:
        raise TypeError(f"unexpected options for CIFAR net {name}: {sorted(kwargs)}")
    return model


def available() -> list[str]:
    cifar_names = [f"{f}{d}" for f in ("plain", "resnet") for d in (20, 32, 44, 56, 110)] + ["resnet1202"]
    return cifar_names + list(imagenet.MODELS)
