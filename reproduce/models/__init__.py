"""Models by name: `build("resnet20")`, `build("plain56")`, `build("resnet34")`.

The names and what they say (residual, depth, dataset) are `model_names`; this builds the nets:
`cifar.py` (Section 4.2) and `imagenet.py` (Table 1).
"""
from __future__ import annotations

from torch import nn

from ..model_names import check_name, depth_of, is_imagenet, is_residual, spec  # noqa: F401
from . import cifar, imagenet
from .cifar import BasicBlock, CifarNet, plain, resnet  # noqa: F401


def build(name: str, num_classes: int | None = None, zero_init_residual: bool = False, **options) -> nn.Module:
    s = spec(name)
    if s.dataset == "imagenet":
        return imagenet.MODELS[name](num_classes=num_classes or 1000, zero_init_residual=zero_init_residual, **options)
    if options:
        raise TypeError(f"unexpected options for CIFAR net {name}: {sorted(options)}")
    model = (cifar.resnet if s.residual else cifar.plain)(s.depth, num_classes=num_classes or 10)
    if zero_init_residual and s.residual:
        for block in model.modules():
            if isinstance(block, BasicBlock):
                nn.init.zeros_(block.bn2.weight)  # Goyal et al. 2017, Section 5.1
    return model

