"""The numbers of the papers this package reproduces, in one place.

Reports print them beside the measured ones; nothing here is used for training.
"""
from __future__ import annotations

# He et al. 2015, Table 6: CIFAR-10 test error (%) with the ÷10 schedule (lr 0.1, divided by 10 at
# 32k and 48k iterations, 64k in all; batch 128). ResNet-110: the best of 5 runs (their mean: 6.61 ± 0.16).
PAPER_TABLE6 = {
    "resnet20": 8.75, "resnet32": 7.51, "resnet44": 7.17, "resnet56": 6.97, "resnet110": 6.43, "resnet1202": 7.93,
}
# Table 6's ResNet-110 entry: mean ± std of the same 5 runs
PAPER_TABLE6_MEAN = {"resnet110": (6.61, 0.16)}
