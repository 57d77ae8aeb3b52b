import math

import pytest

from reproduce.config import compose
from reproduce.schedules import Schedule, scale_rule


def paper(**kw):
    args = dict(lr=0.1, ref_batch=128, batch_size=128, milestones=[32000, 48000], max_steps=64000, factor=0.5)
    args.update(kw)
    return Schedule(**args)


def test_halved_twice_on_both_sides_of_each_milestone():
    s = paper()
    assert s.total_steps == 64000
    assert s.lr(0) == 0.1 and s.lr(31999) == 0.1
    assert s.lr(32000) == 0.05 and s.lr(47999) == 0.05
    assert s.lr(48000) == 0.025 and s.lr(63999) == 0.025
    assert s.milestone_steps() == [32000, 48000]


def test_paper_divides_by_ten():
    s = paper(factor=0.1)
    assert s.lr(31999) == 0.1
    assert math.isclose(s.lr(32000), 0.01) and math.isclose(s.lr(48000), 0.001)


def test_resnet_config_is_halving_and_override_gives_the_paper():
    assert compose("resnet").schedule.factor == 0.5
    assert compose("resnet", overrides=["schedule.factor=0.1"]).schedule.factor == 0.1
    assert compose("resnet-paper").schedule.factor == 0.1
    cfg = compose("resnet")
    assert list(cfg.schedule.milestones) == [32000, 48000] and cfg.schedule.max_steps == 64000


def test_resnet110_warmup_goes_back_to_0_1():
    s = paper(warmup="constant", warmup_lr=0.01, warmup_until_err=80.0)
    assert s.lr(0) == 0.01 and s.lr(399) == 0.01  # training error has not dropped below 80% yet
    assert s.lr(399, warmup_ended_at=400) == 0.01
    assert s.lr(400, warmup_ended_at=400) == 0.1  # back to 0.1, and it stays there
    assert s.lr(31999, warmup_ended_at=400) == 0.1
    assert s.lr(32000, warmup_ended_at=400) == 0.05


def test_fixed_length_constant_warmup():
    s = paper(warmup="constant", warmup_lr=0.01, warmup_steps=400)
    assert s.lr(399) == 0.01 and s.lr(400) == 0.1


@pytest.mark.parametrize("rule,k,expected", [("linear", 8, 8), ("sqrt", 4, 2), ("none", 8, 1)])
def test_scaling_rules(rule, k, expected):
    assert scale_rule(rule, k) == expected


def test_linear_scaling_keeps_milestones_in_examples():
    s = paper(batch_size=1024)  # k = 8
    assert s.lr(0) == pytest.approx(0.8)
    assert s.total_steps == 8000
    assert s.milestone_steps() == [4000, 6000]
    assert s.lr(3999) == pytest.approx(0.8) and s.lr(4000) == pytest.approx(0.4)
    assert s.examples(4000) == 32000 * 128


def test_gradual_warmup_from_reference_to_scaled_lr():
    # Goyal et al. 2017: from lr at the reference batch to k*lr, linearly per step
    s = paper(batch_size=1024, warmup="gradual", warmup_steps=1600)  # 1600 x 128 examples = 200 steps of 1024
    assert s.lr(0) == pytest.approx(0.1)
    assert s.lr(100) == pytest.approx(0.1 + (0.8 - 0.1) * 0.5)
    assert s.lr(199) < 0.8 and s.lr(200) == pytest.approx(0.8)


def test_batch_size_schedule_replaces_lr_decay():
    s = paper(decay="batch")
    assert [p.batch_size for p in s.phases] == [128, 256, 512]
    assert all(p.lr == pytest.approx(0.1) for p in s.phases)
    assert s.milestone_steps() == [32000, 40000]  # same examples, fewer steps
    assert s.total_steps == 32000 + 8000 + 4000
    assert s.batch_size(39999) == 256 and s.batch_size(40000) == 512
    lr_decay = paper()
    for step_b, step_lr in ((0, 0), (32000, 32000), (40000, 48000)):
        t_b = s.lr(step_b) / s.batch_size(step_b)
        t_lr = lr_decay.lr(step_lr) / lr_decay.batch_size(step_lr)
        assert t_b == pytest.approx(t_lr)  # the temperature lr/B follows the same path


def test_batch_schedule_cap_falls_back_to_lr_decay():
    s = paper(decay="batch", max_batch=256)
    assert [p.batch_size for p in s.phases] == [128, 256, 256]
    assert s.phases[2].lr == pytest.approx(0.05)  # capped: lr decays instead, lr/B still x0.25


def test_examples_is_monotone_and_exact():
    s = paper(decay="batch")
    assert s.examples(0) == 0 and s.examples(32000) == 32000 * 128
    assert s.examples(s.total_steps) == 64000 * 128


def test_cycle_multipliers():
    s = paper(milestones=[100, 200, 300], max_steps=400, cycle=[1.0, 0.1, 1.0, 0.1])
    assert [round(s.lr(x), 6) for x in (99, 100, 200, 300)] == [0.1, 0.01, 0.1, 0.01]
