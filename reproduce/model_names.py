"""What a model's name says, without building it (no torch): the registry of model families.

CIFAR nets (Section 4.2) are `resnetD` / `plainD` for any depth D = 6n+2; the ImageNet nets of
Table 1 are `resnet18/34/50/101/152` and `plain18/34`, whose names take precedence (50 and 152 are
also 6n+2: the CIFAR nets of those depths are `cifar_resnet50`, `cifar_plain152`, ...).
`models.build(name)` makes the net a spec names.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from .errors import ConfigError


@dataclass(frozen=True)
class ModelSpec:
    """What the rest of the package may know about a model: never read out of its name."""
    name: str
    residual: bool  # which Figure 6 / Figure 4 panel it is drawn in: ResNets or plain nets
    depth: int  # weighted layers, as the paper counts them
    dataset: str  # "cifar" (32x32, 10 classes by default) | "imagenet"


_CIFAR = re.compile(r"^(?:cifar_)?(resnet|plain)(\d+)$")
# Table 1: weighted layers (convolutions and the fc layer), as the names count them
IMAGENET_NETS = ("plain18", "plain34", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


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
    return ModelSpec(name, kind == "resnet", depth, "cifar")


def imagenet_family(name: str) -> Optional[ModelSpec]:
    """Table 1: plain18/34, resnet18/34/50/101/152."""
    if name not in IMAGENET_NETS:
        return None
    return ModelSpec(name, name.startswith("resnet"), int(name.lstrip("plainresnet")), "imagenet")


# The registry: each family claims the names it can build. Earlier entries win (ImageNet's
# resnet50 before the CIFAR net of depth 50). A new family is one parser here and its nets in
# models/ (models.build).
FAMILIES = [imagenet_family, cifar_family]


def spec(name: str) -> ModelSpec:
    """The model called `name`; a name that no family claims fails in one line."""
    for family in FAMILIES:
        found = family(name)
        if found is not None:
            return found
    raise ConfigError(f"unknown model '{name}'; valid: resnetD or plainD with D = 6n+2 "
                      f"(resnet20, plain56, ...) or {', '.join(IMAGENET_NETS)}")


def check_name(name: str) -> None:
    """Raise a one-line ConfigError unless `name` is a model `build` can make."""
    spec(name)


def is_residual(name: str) -> bool:
    return spec(name).residual


def depth_of(name: str) -> int:
    return spec(name).depth


def is_imagenet(name: str) -> bool:
    return spec(name).dataset == "imagenet"
