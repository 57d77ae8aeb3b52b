"""The CIFAR-10 networks of He et al. 2015, Section 4.2.

6n+2 weighted layers: a 3x3 conv with 16 filters, then three stages of n basic blocks (2n layers
each) on feature maps of 32, 16 and 8 pixels with 16, 32 and 64 filters, then global average
pooling and a 10-way fully connected layer. The first block of stages 2 and 3 subsamples with
stride 2. Shortcuts are "option A" (Section 3.3): identity, with the extra channels zero-padded
and the subsampling done by taking every other pixel, so a ResNet has exactly as many parameters
as the plain net of the same depth. A plain net is the same network with the shortcuts removed.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

STAGE_WIDTHS = (16, 32, 64)


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by `stride`, zero-pad the channels up to `out_channels`.

    Parameter-free, so plain and residual nets of one depth have the same size (Section 3.3).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            half = self.extra_channels // 2
            x = F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))
        return x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra_channels}"


class BasicBlock(nn.Module):
    """Two 3x3 convs, BN after each (Section 3.4), ReLU after the addition.

    `shortcut="A"` adds the option-A identity; `shortcut=None` gives the plain block.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, shortcut: str | None = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if shortcut not in ("A", None):
            raise ValueError(f"shortcut must be 'A' or None for CIFAR nets, got {shortcut!r}")
        self.shortcut = PadShortcut(in_channels, out_channels, stride) if shortcut == "A" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


class CifarNet(nn.Module):
    """A 6n+2-layer CIFAR net; `residual=False` is the paper's plain baseline."""

    def __init__(self, depth: int, residual: bool = True, num_classes: int = 10):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR nets have 6n+2 layers (8, 14, 20, 26, 32, ...); got depth {depth}")
        n = (depth - 2) // 6
        self.depth, self.residual = depth, residual
        shortcut = "A" if residual else None
        self.conv1 = nn.Conv2d(3, STAGE_WIDTHS[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        stages, in_ch = [], STAGE_WIDTHS[0]
        for i, width in enumerate(STAGE_WIDTHS):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_ch, width, stride, shortcut))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(STAGE_WIDTHS[-1], num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def init_weights(model: nn.Module) -> None:
    """He et al. 2015 ("Delving deep") initialisation for convs; BN starts as the identity."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def resnet(depth: int, num_classes: int = 10) -> CifarNet:
    return CifarNet(depth, residual=True, num_classes=num_classes)


def plain(depth: int, num_classes: int = 10) -> CifarNet:
    return CifarNet(depth, residual=False, num_classes=num_classes)


def resnet20(**kw) -> CifarNet: return resnet(20, **kw)
def resnet32(**kw) -> CifarNet: return resnet(32, **kw)
def resnet44(**kw) -> CifarNet: return resnet(44, **kw)
def resnet56(**kw) -> CifarNet: return resnet(56, **kw)
def resnet110(**kw) -> CifarNet: return resnet(110, **kw)
def resnet1202(**kw) -> CifarNet: return resnet(1202, **kw)
def plain20(**kw) -> CifarNet: return plain(20, **kw)
def plain32(**kw) -> CifarNet: return plain(32, **kw)
def plain44(**kw) -> CifarNet: return plain(44, **kw)
def plain56(**kw) -> CifarNet: return plain(56, **kw)
def plain110(**kw) -> CifarNet: return plain(110, **kw)
