"""`python -m reproduce batch-scaling`: the linear scaling rule on CIFAR-10.

ResNet-20 at several batch sizes, every run seeing the same number of examples (the schedule is
stated in examples: iterations at the reference batch), three ways (Goyal et al. 2017):
`linear+warmup` (lr = lr_ref B / B_ref, gradual warmup over sweep.warmup_epochs),
`linear` (no warmup) and `none` (lr_ref at every B). Final test error against B is the CIFAR
analogue of their Figure 1. Beside it, Smith et al. 2018: at the reference batch, dividing the lr
by 10 at the milestones (`decay-lr`) against multiplying B by 10 there instead (`decay-batch`);
plotted against epochs the curves should match. The decay-lr run also logs the gradient noise
scale (McCandlish et al. 2018), the batch size beyond which the linear rule stops paying off.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from omegaconf import OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from .config import for_model
from .report_batch_scaling import batch_scaling_report
from .sweep import run_plans
from .data.datamodule import train_size_of
from .runs import read_metrics
from .runs import read_status


def batch_scaling_plans(cfg) -> List[tuple]:
    """[(name, mode, run config)]; the reference batch runs once and serves every mode."""
    base = for_model(cfg, cfg.models[0], cfg.seed)
    ref = base.schedule.ref_batch
    warmup_steps = round(cfg.sweep.warmup_epochs * train_size_of(base.data) / ref)  # iterations at ref batch
    plans = []
    reference = OmegaConf.merge(base, {"data": {"batch_size": ref}, "trainer": {"noise_scale": True}})
    plans.append((f"b{ref}-decay-lr", "decay-lr", reference))
    for mode in cfg.sweep.modes:
        for b in cfg.sweep.batches:
            if b == ref:
                continue
            scaling = "none" if mode == "none" else ("sqrt" if mode == "sqrt" else "linear")
            sched = {"scaling": scaling}
            if mode == "linear+warmup":
                sched.update(warmup="gradual", warmup_steps=max(warmup_steps, 1))
            plans.append((f"b{b}-{mode.replace('+', '-')}", mode,
                          OmegaConf.merge(base, {"data": {"batch_size": b}, "schedule": sched})))
    plans.append((f"b{ref}-decay-batch", "decay-batch",
                   OmegaConf.merge(base, {"data": {"batch_size": ref}, "schedule": {"decay": "batch"}})))
    return plans


def run_batch_scaling(cfg, exp_dir: Path, group: str) -> Dict[str, Path]:
    plans = batch_scaling_plans(cfg)
    run_plans(cfg, [(name, run_cfg) for name, _, run_cfg in plans], exp_dir, group)
    if rank_zero_only.rank != 0 or cfg.only:
        return {}
    runs = {}
    for name, mode, run_cfg in plans:
        d = exp_dir / name
        entry = {"cfg": run_cfg, "mode": mode, "status": read_status(d), "train_size": train_size_of(run_cfg.data),
                 "metrics": read_metrics(d / "metrics.csv") if (d / "metrics.csv").exists() else {}}
        runs[name] = entry
        if mode == "decay-lr":  # the reference-batch point of every scaling mode
            for m in cfg.sweep.modes:
                runs[f"{name}-as-{m}"] = {**entry, "mode": m}
    return batch_scaling_report(cfg, exp_dir, group, runs)
