"""Batched augmentation on the training device (no per-image PIL work in the training loop).

Section 4.2 of He et al. 2015: "4 pixels are padded on each side, and a 32x32 crop is randomly
sampled from the padded image or its horizontal flip". Padding happens after the per-pixel mean is
subtracted, so the padded border is the mean image's value (zero) rather than black.

Randomness comes from a generator seeded by (seed, step), so a resumed run draws exactly the
crops and flips an uninterrupted run would have, with no RNG state to save.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

PAD = 4


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step * 7919 + 17) % (2 ** 63))
    return g


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = PAD) -> torch.Tensor:
    """x: float [N, C, H, W]. Zero-pad by `pad`, crop back to H x W at random offsets, flip half."""
    n, c, h, w = x.shape
    dev = x.device
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=dev)
    flips = torch.rand(n, generator=generator, device=dev) < 0.5
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (offsets[0, :, None] + torch.arange(h, device=dev))[:, None, :, None]  # [N,1,H,1]
    cols = torch.arange(w, device=dev).expand(n, w)
    cols = torch.where(flips[:, None], w - 1 - cols, cols) + offsets[1, :, None]  # flip = read columns backwards
    idx_n = torch.arange(n, device=dev)[:, None, None, None]
    idx_c = torch.arange(c, device=dev)[None, :, None, None]
    return padded[idx_n, idx_c, rows, cols[:, None, None, :]]
