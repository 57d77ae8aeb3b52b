"""Models by name: `build("resnet20")`, `build("plain56")`, `build("resnet34")`.

CIFAR nets (Section 4.2) are `resnetD` / `plainD` for any depth D = 6n+2; the ImageNet nets of
Table 1 are `resnet18/34/50/101/152` and `plain18/34`, whose names take precedence (50 and 152 are
also 6n+2: the CIFAR nets of those depths are `cifar_resnet50`, `cifar_plain152`, ...).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

from torch import nn

from ..errors import ConfigError
from . import cifar, imagenet
from .cifar import BasicBlock, CifarNet, plain, resnet  # noqa: F401


@dataclass(frozen=True)
class ModelSpec:
    """What the rest of the package may know about a model: never read out of its name."""
    name: str
    residual: bool  # which Figure 6 / Figure 4 panel it is drawn in: ResNets or plain nets
    depth: int  # weighted layers, as the paper counts them
    dataset: str  # "cifar" (32x32, 10 classes by default) | "imagenet"
    make: Callable[..., nn.Module]  # make(num_classes=..., **options)


_CIFAR = re.compile(r"^(?:cifar_)?(resnet|plain)(\d+)$")


def cifar_family(name: str) -> Optional[ModelSpec]:
    """Section 4.2: `resnetD` / `plainD` for any D = 6n+2 (`cifar_` prefix where an ImageNet name
    is the same)."""
    m = _CIFAR.match(name)
    if not m:
        return None
    kind, depth = m.group(1), int(m.group(2))
    if depth < 8 or (depth - 2) % 6:
        lower = max(8, depth - (depth - 2) % 6)
        raise ConfigError(f"model '{name}': CIFAR nets have 6n+2 layers, {depth} is not; "
                          f"nearest valid: {kind}{lower}, {kind}{lower + 6}")
    make = cifar.resnet if kind == "resnet" else cifar.plain

    def build_cifar(num_classes=None, zero_init_residual=False, **options):
        if options:
            raise TypeError(f"unexpected options for CIFAR net {name}: {sorted(options)}")
        model = make(depth, num_classes=num_classes or 10)
        if zero_init_residual and kind == "resnet":
            for block in model.modules():
                if isinstance(block, BasicBlock):
                    nn.init.zeros_(block.bn2.weight)  # Goyal et al. 2017, Section 5.1
        return model
    return ModelSpec(name, kind == "resnet", depth, "cifar", build_cifar)


def imagenet_family(name: str) -> Optional[ModelSpec]:
    """Table 1: plain18/34, resnet18/34/50/101/152."""
    if name not in imagenet.MODELS:
        return None
    factory = imagenet.MODELS[name]
    return ModelSpec(name, name.startswith("resnet"), imagenet.DEPTHS[name], "imagenet",
                     lambda num_classes=None, **options: factory(num_classes=num_classes or 1000, **options))


# The registry: each family claims the names it can build. Earlier entries win (ImageNet's
# resnet50 before the CIFAR net of depth 50). A new family is one module and one line here.
FAMILIES = [imagenet_family, cifar_family]


def spec(name: str) -> ModelSpec:
    """The model called `name`; a name that no family claims fails in one line."""
    for family in FAMILIES:
        found = family(name)
        if found is not None:
            return found
    raise ConfigError(f"unknown model '{name}'; valid: resnetD or plainD with D = 6n+2 "
                      f"(resnet20, plain56, ...) or {', '.join(imagenet.MODELS)}")


def check_name(name: str) -> None:
    """Raise a one-line ConfigError unless `name` is a model `build` can make."""
    spec(name)


def is_residual(name: str) -> bool:
    return spec(name).residual


def depth_of(name: str) -> int:
    return spec(name).depth


def is_imagenet(name: str) -> bool:
    return spec(name).dataset == "imagenet"


def build(name: str, num_classes: int | None = None, **options) -> nn.Module:
    return spec(name).make(num_classes=num_classes, **options)


def available() -> list[str]:
    cifar_names = [f"{f}{d}" for f in ("plain", "resnet") for d in (20, 32, 44, 56, 110)] + ["resnet1202"]
    return cifar_names + list(imagenet.MODELS)
