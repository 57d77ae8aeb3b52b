import pytest
import torch
import torchvision

from reproduce.config import ConfigError
from reproduce.models import BasicBlock, build
from reproduce.models.cifar import PadShortcut


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# He et al. 2015, Table 6 ("# params" column), in millions
TABLE6 = {"resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66, "resnet56": 0.85, "resnet110": 1.7, "resnet1202": 19.4}


@pytest.mark.parametrize("name,millions", TABLE6.items())
def test_parameter_counts_match_table6(name, millions):
    count = n_params(build(name)) / 1e6
    digits = 1 if millions >= 1 else 2
    assert round(count, digits) == millions, (name, count)


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_plain_net_is_the_same_net_without_shortcuts(depth):
    plain, res = build(f"plain{depth}"), build(f"resnet{depth}")
    assert n_params(plain) == n_params(res)  # option A shortcuts are parameter-free
    assert all(b.shortcut is None for b in plain.modules() if isinstance(b, BasicBlock))
    assert all(isinstance(b.shortcut, PadShortcut) for b in res.modules() if isinstance(b, BasicBlock))
    convs = [m for m in res.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) + 1 == depth  # 6n+2 weighted layers: convs + the fc


@pytest.mark.parametrize("name", ["resnet20", "plain20", "resnet8"])
def test_output_shape_and_feature_maps(name):
    model = build(name).eval()
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 10)
    maps = []
    for stage in (model.layer1, model.layer2, model.layer3):
        x = stage(x if maps else torch.relu(model.bn1(model.conv1(x))))
        maps.append(tuple(x.shape[1:]))
    assert maps == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]  # Section 4.2


def test_option_a_shortcut_pads_zeros_and_subsamples():
    sc = PadShortcut(16, 32, 2)
    x = torch.randn(1, 16, 8, 8)
    out = sc(x)
    assert out.shape == (1, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0


def test_residual_blocks_start_near_identity_path():
    block = BasicBlock(16, 16)
    x = torch.randn(4, 16, 8, 8)
    torch.nn.init.zeros_(block.bn2.weight)
    assert torch.allclose(block(x), torch.relu(x))


@pytest.mark.parametrize("bad", ["resnet21", "plain7", "resnet", "vgg16"])
def test_bad_model_names_fail_with_one_line(bad):
    with pytest.raises(ConfigError) as e:
        build(bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_imagenet_option_b_counts_match_torchvision(name):
    ours = n_params(build(name, shortcut="B"))
    theirs = n_params(getattr(torchvision.models, name)())
    assert ours == theirs


@pytest.mark.parametrize("depth", [18, 34])
def test_imagenet_plain_and_option_a_have_equal_size(depth):
    assert n_params(build(f"plain{depth}")) == n_params(build(f"resnet{depth}"))


def test_imagenet_shapes():
    model = build("resnet18").eval()
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
