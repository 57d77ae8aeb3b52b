import pytest
import torch
from torch import nn

from reproduce.cli import dry_run
from reproduce.config import compose
from reproduce.data.imagefolder import ImageFolderDataModule, make_tiny_imagefolder
from reproduce.models import build
from reproduce.schedules import Schedule

# He et al. 2015, Table 1: FLOPs (multiply-adds) at 224x224
TABLE1_FLOPS = {"resnet18": 1.8e9, "resnet34": 3.6e9, "resnet50": 3.8e9, "resnet101": 7.6e9, "resnet152": 11.3e9}


def multiply_adds(model: nn.Module, size: int = 224) -> int:
    total = 0

    def conv_hook(m, inp, out):
        nonlocal total
        total += out.numel() // out.shape[0] * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def fc_hook(m, inp, out):
        nonlocal total
        total += m.in_features * m.out_features

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(fc_hook) for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, size, size))
    for h in hooks:
        h.remove()
    return total


@pytest.mark.parametrize("name,flops", TABLE1_FLOPS.items())
def test_flops_match_table1(name, flops):
    assert abs(multiply_adds(build(name, shortcut="B")) / flops - 1) < 0.05


def test_option_a_is_parameter_free_and_option_c_projects_everywhere():
    a, b, c = (sum(p.numel() for p in build("resnet34", shortcut=s).parameters()) for s in "ABC")
    assert a == sum(p.numel() for p in build("plain34").parameters()) < b < c


def test_zero_init_residual_makes_blocks_start_as_identity():
    model = build("resnet50", zero_init_residual=True)
    assert all(float(m.bn3.weight.abs().sum()) == 0 for m in model.modules() if hasattr(m, "bn3"))


def test_imagefolder_transforms(tmp_path):
    root = make_tiny_imagefolder(tmp_path / "tiny", classes=3, per_class=4, size=48)
    cfg = compose("imagenet", "smoke").data
    cfg.root = str(root)
    sched = Schedule(lr=0.1, ref_batch=8, batch_size=8, milestones=[], max_steps=4)
    dm = ImageFolderDataModule(cfg, sched, seed=0)
    dm.setup()
    assert dm.num_classes == 3 and dm.train_size == 12
    x, y = dm.train_set[0]
    assert x.shape == (3, 32, 32)  # random shorter side in [37, 69], 32 crop (224 scaled to 32)
    v, _ = dm.val_set[0]
    assert v.shape == (3, 32, 32)
    assert abs(float(v.mean())) < 1.0  # mean subtracted


def test_imagenet_dry_run_with_8_gpus_shows_global_batch_scaled_lr_and_warmup():
    text = dry_run(compose("imagenet-goyal", "paper", ["trainer.devices=8", "trainer.num_nodes=4"]))
    assert "global batch 1024 = 32 per device x 32 devices" in text
    assert "-> 0.4" in text  # 0.1 x 1024 / 256
    assert "warmup (gradual): lr 0.1 until 25025 iterations at batch 256" in text
    text = dry_run(compose("imagenet", "paper", ["trainer.devices=8"]))
    assert "global batch 256 = 32 per device x 8 devices" in text and "-> 0.1" in text


def test_plateau_drops_replace_milestones():
    s = Schedule(lr=0.1, ref_batch=256, batch_size=256, milestones=[100], max_steps=1000, factor=0.1)
    assert s.lr(500, plateau_drops=[]) == pytest.approx(0.1)
    assert s.lr(500, plateau_drops=[300]) == pytest.approx(0.01)
    assert s.lr(299, plateau_drops=[300, 600]) == pytest.approx(0.1)
    assert s.lr(700, plateau_drops=[300, 600]) == pytest.approx(0.001)
