"""The ImageNet nets of He et al. 2015, Table 1 (Section 3.4), for Figure 4 and Table 2.

A 7x7/2 conv stem with 64 filters and a 3x3/2 max-pool, four stages (64, 128, 256, 512 filters
for basic blocks; x4 outputs for bottlenecks) that halve the feature map at their first block,
global average pooling and a 1000-way fc. Shortcuts (Section 3.3): "A" zero-pads the new channels
(parameter-free, used for Figure 4 and Table 2 so plain and residual nets match), "B" uses 1x1
projections only where the shape changes, "C" projects everywhere. `shortcut=None` is the plain net.
"""
from __future__ import annotations


import torch
from torch import nn
import torch.nn.functional as F

from .cifar import PadShortcut, init_weights


def _projection(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


def make_shortcut(kind: str | None, in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
    if kind is None:
        return None
    changes_shape = stride != 1 or in_ch != out_ch
    if kind == "C" or (kind == "B" and changes_shape):
        return _projection(in_ch, out_ch, stride)
    if kind in ("A", "B"):
        return PadShortcut(in_ch, out_ch, stride) if changes_shape else nn.Identity()
    raise ValueError(f"shortcut must be 'A', 'B', 'C' or None, got {kind!r}")


class ImageNetBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int, shortcut: str | None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.shortcut = make_shortcut(shortcut, in_ch, width, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x) if self.shortcut is not None else out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), Figure 5 right. The stride sits on the first 1x1 as in the
    paper's models (3.8 GFLOPs for ResNet-50, Table 1); torchvision's "v1.5" moves it to the 3x3
    (4.1 GFLOPs, same parameters)."""
    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int, shortcut: str | None):
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, stride, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut = make_shortcut(shortcut, in_ch, out_ch, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x) if self.shortcut is not None else out)


class ImageNetNet(nn.Module):
    def __init__(self, block, layers, shortcut: str | None = "A", num_classes: int = 1000,
                 zero_init_residual: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch, stages = 64, []
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for j in range(n):
                blocks.append(block(in_ch, width, 2 if (i > 0 and j == 0) else 1, shortcut))
                in_ch = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self)
        if zero_init_residual and shortcut is not None:
            # Goyal et al. 2017, Section 5.1: each residual block starts as the identity.
            for m in self.modules():
                if hasattr(m, "last_bn"):
                    nn.init.zeros_(m.last_bn().weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _net(block, layers, default_shortcut):
    def make(num_classes: int = 1000, shortcut: str | None = default_shortcut, zero_init_residual: bool = False):
        return ImageNetNet(block, layers, shortcut, num_classes, zero_init_residual)
    return make


MODELS = {
    "plain18": _net(ImageNetBasicBlock, (2, 2, 2, 2), None),
    "plain34": _net(ImageNetBasicBlock, (3, 4, 6, 3), None),
    "resnet18": _net(ImageNetBasicBlock, (2, 2, 2, 2), "A"),
    "resnet34": _net(ImageNetBasicBlock, (3, 4, 6, 3), "A"),
    # Bottleneck nets use option B (Section 3.4, "deeper bottleneck architectures").
    "resnet50": _net(Bottleneck, (3, 4, 6, 3), "B"),
    "resnet101": _net(Bottleneck, (3, 4, 23, 3), "B"),
    "resnet152": _net(Bottleneck, (3, 8, 36, 3), "B"),
}

