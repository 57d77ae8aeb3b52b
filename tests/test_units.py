"""Unit tier for parts the end-to-end runs cannot pin down: the noise-scale estimator against a
known answer, the plateau rule's state, and how a sweep expands into runs."""
from types import SimpleNamespace

import numpy as np
import pytest

from reproduce.callbacks import LRSchedule
from reproduce.callbacks.noise_scale import noise_scale_estimates
from reproduce.config import compose
from reproduce.experiments import model_plans
from reproduce.schedules import Schedule


def test_noise_scale_estimates_are_unbiased_for_a_known_gradient_noise():
    """Per-example gradients G + e with Cov(e) = diag(s^2): |G|^2 and tr(Sigma) are known."""
    rng = np.random.default_rng(0)
    dim, b_small, b_big, draws = 20, 4, 64, 4000
    grad, sd = rng.normal(size=dim), rng.uniform(0.5, 2.0, size=dim)
    g2s, traces = [], []
    for _ in range(draws):
        per_example = grad + rng.normal(size=(b_big, dim)) * sd
        small, big = per_example[:b_small].mean(0), per_example.mean(0)
        g2, trace = noise_scale_estimates(float(small @ small), float(big @ big), b_small, b_big)
        g2s.append(g2)
        traces.append(trace)
    assert np.mean(g2s) == pytest.approx(grad @ grad, rel=0.05)
    assert np.mean(traces) == pytest.approx((sd ** 2).sum(), rel=0.05)
    # the naive |g_big|^2 is biased upwards by tr(Sigma) / B_big: the estimator removes that
    assert abs(np.mean(g2s) - grad @ grad) < (sd ** 2).sum() / b_big / 2


def _validation(cb, step, err):
    trainer = SimpleNamespace(callback_metrics={"val/err": err}, sanity_checking=False, global_step=step)
    cb.on_validation_end(trainer, None)


def test_plateau_rule_drops_after_patience_and_remembers_it():
    s = Schedule(lr=0.1, ref_batch=128, batch_size=128, milestones=[], max_steps=100, factor=0.1)
    cb = LRSchedule(s, on_plateau=True, patience=2, threshold=0.5, max_drops=2)
    for step, err in [(10, 50.0), (20, 40.0), (30, 39.8), (40, 39.9)]:  # two evaluations without 0.5 gained
        _validation(cb, step, err)
    assert cb.drops == [40] and cb.lr(39) == pytest.approx(0.1) and cb.lr(40) == pytest.approx(0.01)
    restored = LRSchedule(s, on_plateau=True, patience=2, threshold=0.5, max_drops=2)
    restored.load_state_dict(cb.state_dict())  # what a checkpoint carries
    for cbk in (cb, restored):
        for step, err in [(50, 39.9), (60, 39.9), (70, 39.9), (80, 39.9), (90, 39.9)]:
            _validation(cbk, step, err)
    assert cb.drops == restored.drops == [40, 60]  # and no third drop: max_drops
    assert cb.lr(99) == pytest.approx(0.001)


def test_plateau_rule_is_off_unless_asked():
    s = Schedule(lr=0.1, ref_batch=128, batch_size=128, milestones=[50], max_steps=100, factor=0.1)
    cb = LRSchedule(s)
    for step in range(10, 100, 10):
        _validation(cb, step, 50.0)
    assert cb.drops == [] and cb.lr(49) == pytest.approx(0.1) and cb.lr(50) == pytest.approx(0.01)


def test_a_sweep_expands_into_one_run_per_model_and_seed_with_its_overrides():
    cfg = compose("resnet", "smoke", ["models=[plain8,resnet8]", "seeds=[0,1]",
                                      "per_model.resnet8.schedule.lr=0.05"])
    plans = model_plans(cfg)
    assert [name for name, _ in plans] == ["plain8-seed0", "plain8-seed1", "resnet8-seed0", "resnet8-seed1"]
    assert [(run.models[0], run.seed, run.schedule.lr) for _, run in plans] == [
        ("plain8", 0, 0.1), ("plain8", 1, 0.1), ("resnet8", 0, 0.05), ("resnet8", 1, 0.05)]
    single = model_plans(compose("resnet", "smoke", ["models=[resnet8]", "seeds=[4]"]))
    assert [(name, run.seed) for name, run in single] == [("resnet8", 4)]  # one seed: no suffix


def test_predicted_excess_matches_simulated_sgd_and_scales_as_lr_over_batch():
    """The temperature claim in its exact setting: the stationary excess loss of SGD on least
    squares is lr tr(C) / 4B in the small-lr limit, so doubling lr or halving B doubles it."""
    import torch

    from reproduce.temperature import predicted_excess, quadratic_excess
    eigs = torch.linspace(0.1, 1.0, 4, dtype=torch.float64)
    for lr, batch in ((0.01, 4), (0.02, 4), (0.02, 8)):
        simulated = quadratic_excess(lr, batch, 4, 1.0, eigs, steps=3000, chains=256)
        assert simulated == pytest.approx(predicted_excess(lr, batch, 1.0, eigs), rel=0.1), (lr, batch)
    assert predicted_excess(0.02, 4, 1.0, eigs) == pytest.approx(2 * predicted_excess(0.01, 4, 1.0, eigs))
    assert predicted_excess(0.02, 8, 1.0, eigs) == pytest.approx(predicted_excess(0.01, 4, 1.0, eigs))


def test_training_metric_sums_travel_in_the_checkpoint():
    """The sums live outside the state_dict (DDP would overwrite a buffer with rank 0's)."""
    import torch
    from omegaconf import OmegaConf

    from reproduce.config import OptimConfig
    from reproduce.module import TRAIN_SUMS, ClassifierModule
    module = ClassifierModule("resnet8", OmegaConf.structured(OptimConfig))
    module.train_sums += torch.tensor([4.6, 2.0, 100.0, 256.0])
    saved = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(saved)
    assert "train_sums" not in saved["state_dict"]
    fresh = ClassifierModule("resnet8", OmegaConf.structured(OptimConfig))
    fresh.on_load_checkpoint(saved)
    assert torch.equal(fresh.train_sums, saved[TRAIN_SUMS])
