"""N CIFAR nets of one depth as one network: each run a slice of every layer.

A 3x3 conv of N nets is one grouped conv (`groups=N`) whose weight is the N weights stacked; a
BatchNorm over N x C channels is N BatchNorms (its statistics are per channel); the classifier is
a batched matmul. Input [B, N*3, H, W] (run i's own images in channels 3i..3i+2), logits
[B, N, classes]. The
plain net of a depth is the ResNet with its shortcuts weighted 0 (Section 3.3: option A has no
parameters), so plain and residual nets of one depth stack too. This is how HFTA (Wang et al.,
MLSys 2021) fuses models of one shape. The state dict has the single net's keys, every tensor N
of them stacked along dim 0 (`unstack_state` / `stack_states` convert; the one 0-dim tensor, BN's
`num_batches_tracked`, is shared: the runs step together).
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from .cifar import CifarNet


class StackedConv(nn.Module):
    def __init__(self, convs: Sequence[nn.Conv2d]):
        super().__init__()
        c = convs[0]
        self.weight = nn.Parameter(torch.cat([m.weight.detach() for m in convs]))
        self.stride, self.padding, self.groups = c.stride, c.padding, len(convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, None, self.stride, self.padding, 1, self.groups)


def stacked_bn(bns: Sequence[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    w = bns[0].weight
    bn = nn.BatchNorm2d(sum(b.num_features for b in bns), eps=bns[0].eps, momentum=bns[0].momentum,
                        device=w.device, dtype=w.dtype)
    bn.load_state_dict(stack_states([b.state_dict() for b in bns]))
    return bn


class StackedShortcut(nn.Module):
    """Option A for each run: subsample, zero-pad its own channels; times 0 for a plain run."""

    def __init__(self, n: int, in_channels: int, out_channels: int, stride: int, weight: torch.Tensor):
        super().__init__()
        self.n, self.in_channels, self.out_channels, self.stride = n, in_channels, out_channels, stride
        self.register_buffer("weight", weight, persistent=False)  # [N*out, 1, 1]: 1 residual, 0 plain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_channels - self.in_channels
        if extra:
            x = x.unflatten(1, (self.n, self.in_channels))
            x = F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2)).flatten(1, 2)
        return x * self.weight


class StackedBlock(nn.Module):
    def __init__(self, blocks: Sequence[nn.Module], residual: torch.Tensor):
        super().__init__()
        b = blocks[0]
        self.conv1, self.bn1 = StackedConv([m.conv1 for m in blocks]), stacked_bn([m.bn1 for m in blocks])
        self.conv2, self.bn2 = StackedConv([m.conv2 for m in blocks]), stacked_bn([m.bn2 for m in blocks])
        in_ch, out_ch = b.conv1.in_channels, b.conv1.out_channels
        weight = residual.repeat_interleave(out_ch).view(-1, 1, 1)
        self.shortcut = StackedShortcut(len(blocks), in_ch, out_ch, b.conv1.stride[0], weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class StackedCifarNet(nn.Module):
    """The nets `nets` (CifarNets of one depth, plain or residual) as one; their weights copied."""

    def __init__(self, nets: Sequence[CifarNet]):
        super().__init__()
        if len({n.depth for n in nets}) != 1:
            raise ValueError(f"stacked nets need one depth, got {sorted({n.depth for n in nets})}")
        self.n = len(nets)
        w = nets[0].conv1.weight
        residual = torch.tensor([1.0 if net.residual else 0.0 for net in nets], device=w.device, dtype=w.dtype)
        self.conv1, self.bn1 = StackedConv([m.conv1 for m in nets]), stacked_bn([m.bn1 for m in nets])
        for name in ("layer1", "layer2", "layer3"):
            stages = [getattr(net, name) for net in nets]
            setattr(self, name, nn.Sequential(*(StackedBlock(blocks, residual) for blocks in zip(*stages))))
        fc = nets[0].fc
        self.fc = nn.Linear(fc.in_features, self.n * fc.out_features, device=fc.weight.device, dtype=fc.weight.dtype)
        self.fc.load_state_dict(stack_states([net.fc.state_dict() for net in nets]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N*3, H, W] -> [B, N, classes]."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).view(len(x), self.n, -1)  # [B, N, 64]
        w = self.fc.weight.view(self.n, -1, x.shape[-1])  # [N, classes, 64]
        return torch.einsum("bnf,ncf->bnc", x, w) + self.fc.bias.view(self.n, -1)


def stack_states(states: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """N state dicts (or optimizer states) of one shape -> the stacked one."""
    out = {}
    for key, first in states[0].items():
        out[key] = first.clone() if first.dim() == 0 else torch.cat([s[key] for s in states])
    return out


def unstack_state(state: Dict[str, torch.Tensor], n: int, i: int) -> Dict[str, torch.Tensor]:
    """Run `i`'s slice of a stacked state dict: a state dict of the single net."""
    return {k: v.clone() if v.dim() == 0 else v.unflatten(0, (n, -1))[i].clone() for k, v in state.items()}


class StackedSGD(torch.optim.Optimizer):
    """torch.optim.SGD (momentum, weight decay, optionally Nesterov; torch's formulation, the lr
    applied to the momentum buffer) with one lr per run: the group's `lr` is a list of N rates,
    run i's applied to slice i of every parameter. Momentum and weight decay are elementwise, so
    each slice follows exactly SGD's update of that run alone. Multi-tensor ops (as torch's own
    `foreach` SGD) keep the step's kernel launches independent of the depth; each parameter's
    per-element lr is rebuilt only when a run's lr changes."""

    def __init__(self, params, n: int, momentum: float, weight_decay: float, nesterov: bool = False):
        super().__init__(params, {"lr": [0.0] * n, "momentum": momentum, "weight_decay": weight_decay,
                                  "nesterov": nesterov})
        self.n = n
        self._lr_key, self._lr_tensors = None, []

    def _lrs(self, lrs: list, params: list) -> list:
        key = (tuple(lrs), tuple(id(p) for p in params))
        if key != self._lr_key:
            p0 = params[0]
            rates = torch.tensor(lrs, dtype=p0.dtype, device=p0.device)
            self._lr_tensors = [rates.view(-1, *[1] * p.dim()).expand(p.unflatten(0, (self.n, -1)).shape)
                                .reshape(p.shape) for p in params]
            self._lr_key = key
        return self._lr_tensors

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:  # Lightning's: its on_before_optimizer_step hook and gradient clipping
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            mu, wd = group["momentum"], group["weight_decay"]
            grads = [p.grad for p in params]
            if wd:
                grads = torch._foreach_add(grads, params, alpha=wd)
            if mu:
                if any("momentum_buffer" not in self.state[p] for p in params):
                    for p, g in zip(params, grads):
                        self.state[p]["momentum_buffer"] = g.clone()
                    bufs = [self.state[p]["momentum_buffer"] for p in params]
                else:
                    bufs = [self.state[p]["momentum_buffer"] for p in params]
                    torch._foreach_mul_(bufs, mu)
                    torch._foreach_add_(bufs, grads)
                grads = torch._foreach_add(grads, bufs, alpha=mu) if group["nesterov"] else bufs
            torch._foreach_addcmul_(params, grads, self._lrs(group["lr"], params), value=-1)
        return loss
