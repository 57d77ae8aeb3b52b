import pickle

import numpy as np
import pytest
import torch

from reproduce.config import compose
from reproduce.data.augment import random_crop_flip, step_generator
from reproduce.data.cifar10 import DataError, load_cifar10
from reproduce.data.datamodule import ArrayDataModule, TrainBatches
from reproduce.data.synthetic import make_synthetic
from reproduce.schedules import Schedule


def test_crop_offsets_within_4_pixels_and_flip_rate_half():
    n = 4000
    # channel 0 holds each pixel's column + 1, channel 1 its row + 1: the centre pixel of a crop
    # reveals the crop's offset; a flipped crop shows columns decreasing to the right
    grid = torch.arange(32, dtype=torch.float32) + 1
    x = torch.stack([grid.expand(32, 32), grid[:, None].expand(32, 32)]).expand(n, 2, 32, 32)
    out = random_crop_flip(x, step_generator(0, 0, torch.device("cpu")))
    assert out.shape == x.shape
    flipped = out[:, 0, 16, 15] > out[:, 0, 16, 16]
    assert 0.45 < flipped.float().mean() < 0.55
    dx = torch.where(flipped, out[:, 0, 16, 15], out[:, 0, 16, 16]) - 17
    dy = out[:, 1, 16, 16] - 17
    for d in (dx, dy):
        assert sorted(torch.unique(d).tolist()) == list(range(-4, 5))  # every offset in [-4, 4], nothing else
        assert abs(d.mean()) < 0.2  # uniform, centred


def test_augmentation_is_a_function_of_seed_and_step():
    x = torch.randn(64, 3, 32, 32)
    a = random_crop_flip(x, step_generator(1, 5, x.device))
    b = random_crop_flip(x, step_generator(1, 5, x.device))
    c = random_crop_flip(x, step_generator(1, 6, x.device))
    assert torch.equal(a, b) and not torch.equal(a, c)


def _schedule(batch=32, steps=40):
    return Schedule(lr=0.1, ref_batch=batch, batch_size=batch, milestones=[], max_steps=steps)


def test_train_batches_resume_exactly_and_cover_epochs():
    x = torch.arange(100).view(100, 1, 1, 1).expand(100, 3, 2, 2).to(torch.uint8)
    y = torch.arange(100)
    full = [b[1] for b in TrainBatches(x, y, _schedule(), seed=3)]
    assert len(full) == 40 and all(len(b) == 32 for b in full)
    # an epoch is 3 batches of 32 (the last 4 images dropped): no image repeats inside one
    assert len(torch.unique(torch.cat(full[:3]))) == 96
    resumed = [b[1] for b in TrainBatches(x, y, _schedule(), seed=3, start_step=17)]
    assert all(torch.equal(a, b) for a, b in zip(full[17:], resumed))


def test_ranks_and_accumulation_split_the_global_batch():
    x, y = torch.zeros(200, 3, 2, 2, dtype=torch.uint8), torch.arange(200)
    single = [b[1] for b in TrainBatches(x, y, _schedule(), seed=0)]
    parts = [[b[1] for b in TrainBatches(x, y, _schedule(), seed=0, accumulate=2, rank=r, world=2)] for r in (0, 1)]
    step0 = torch.cat([parts[0][0], parts[1][0], parts[0][1], parts[1][1]])
    assert sorted(step0.tolist()) == sorted(single[0].tolist())


def test_split_mean_and_sizes():
    cfg = compose("resnet", "smoke").data
    dm = ArrayDataModule(cfg, _schedule(), seed=0, arrays=make_synthetic(1000, 100))
    dm.setup()
    assert dm.train_size == 800 and len(dm.val_y) == 200
    assert dm.train_x.dtype == torch.uint8 and dm.train_x.shape[1:] == (3, 32, 32)
    expected = dm.train_x.double().mean(0) / 255
    assert torch.allclose(dm.mean.double(), expected, atol=1e-6)
    dm2 = ArrayDataModule(cfg, _schedule(), seed=5, arrays=make_synthetic(1000, 100))
    dm2.setup()
    assert torch.equal(dm.val_y, dm2.val_y)  # the split does not depend on the run's seed


def _write_fake_cifar(root, n=20):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": np.zeros((n, 3072), np.uint8), "labels": [i % 10 for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    return folder


def test_reads_the_standard_layout(tmp_path):
    _write_fake_cifar(tmp_path)
    tx, ty, vx, vy = load_cifar10(tmp_path, download=False)
    assert tx.shape == (100, 3, 32, 32) and tx.dtype == torch.uint8 and vy.shape == (20,)


def test_missing_data_names_where_it_looked(tmp_path):
    with pytest.raises(DataError) as e:
        load_cifar10(tmp_path / "nowhere", download=False)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in str(e.value) and "data.download=true" in str(e.value)
    assert "../shared" not in str(e.value)


def test_truncated_batch_file_is_named(tmp_path):
    folder = _write_fake_cifar(tmp_path)
    data = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="data_batch_3 is truncated or corrupt"):
        load_cifar10(tmp_path, download=False)


def test_wrong_shape_batch_file_is_named(tmp_path):
    folder = _write_fake_cifar(tmp_path)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((5, 100), np.uint8), "labels": [0] * 5}))
    with pytest.raises(DataError, match="test_batch has the wrong shape"):
        load_cifar10(tmp_path, download=False)
