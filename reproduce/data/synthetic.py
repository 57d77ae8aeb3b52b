"""A CIFAR-shaped synthetic dataset for smoke runs: learnable, tiny, deterministic.

Each class has its own random 32x32 colour template; an image is its class template plus noise,
stored as uint8 like the real data, so every code path (mean subtraction, augmentation, the
models) runs unchanged and a few dozen steps already lower the error.
"""
from __future__ import annotations

import torch


def make_synthetic(train: int = 2048, test: int = 512, classes: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand(classes, 3, 32, 32, generator=g) * 160 + 48

    def draw(n: int):
        y = torch.randint(0, classes, (n,), generator=g)
        x = templates[y] + torch.randn(n, 3, 32, 32, generator=g) * 40
        return x.clamp(0, 255).to(torch.uint8), y

    train_x, train_y = draw(train)
    test_x, test_y = draw(test)
    return train_x, train_y, test_x, test_y
