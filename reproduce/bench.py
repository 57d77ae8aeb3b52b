"""`python scripts/bench.py` / `python -m reproduce bench`: training-step speed, three ways, one run.

For ResNet-20 and ResNet-56 at batch 128 (data already in memory, augmentation included):
  plain    a hand-written PyTorch loop: index a batch, normalise, crop/flip, forward, backward,
           SGD step; the same model, the same math, no framework (the reference);
  package  this package's Lightning path (Trainer, ClassifierModule, the DataModule, callbacks,
           loggers) with its defaults;
  fastest  the package with its fastest settings for the device (bf16 autocast and torch.compile
           on a GPU; on a CPU, compile when --compile is given).
Each is timed over several repeats after a warm-up; the median and the spread (min-max) are
printed in images/s, with the ratio package/plain. The data pipeline (index, normalise, augment)
is also timed on its own, against the rate the model consumes images.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from .data.augment import random_crop_flip, step_generator


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def synthetic_cifar(n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return x.to(device), torch.randint(0, 10, (n,), generator=g).to(device)


def bench_plain(model_name: str, x, y, batch: int, warmup: int, steps: int, repeats: int, device,
                bf16: bool = False, compile: bool = False) -> list[float]:
    from .models import build
    model = build(model_name).to(device).to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    mean = x[:4096].float().mean(0) / 255
    n = len(y)

    def step(i):
        idx = torch.randint(0, n, (batch,), device=device)
        xb = x[idx].float().div_(255).sub_(mean)
        xb = random_crop_flip(xb, step_generator(0, i, device)).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(warmup):
        step(i)
    rates = []
    for r in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for i in range(steps):
            step(warmup + r * steps + i)
        _sync(device)
        rates.append(batch * steps / (time.perf_counter() - t0))
    return rates


class StepTimer(pl.Callback):
    """Images/s over windows of `steps` optimizer steps after `warmup` steps."""

    def __init__(self, batch: int, warmup: int, steps: int, device):
        self.batch, self.warmup, self.steps, self.device = batch, warmup, steps, device
        self.rates, self.t0 = [], None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        k = trainer.global_step
        if k >= self.warmup and (k - self.warmup) % self.steps == 0:
            _sync(self.device)
            now = time.perf_counter()
            if self.t0 is not None:
                self.rates.append(self.batch * self.steps / (now - self.t0))
            self.t0 = now


def bench_package(model_name: str, arrays, batch: int, warmup: int, steps: int, repeats: int, device,
                  fastest: bool, compile: bool, tmpdir: str) -> list[float]:
    from .callbacks import BatchScaling, LRSchedule
    from .config import compose
    from .data.datamodule import ArrayDataModule
    from .models import build
    from .module import ClassifierModule
    from .schedules import Schedule
    cfg = compose("resnet", "paper", [f"data.batch_size={batch}", "data.dataset=synthetic", "wandb.mode=disabled"])
    total = warmup + steps * repeats + 1
    schedule = Schedule(lr=0.1, ref_batch=batch, batch_size=batch, milestones=[], max_steps=total)
    dm = ArrayDataModule(cfg.data, schedule, seed=0, arrays=arrays)
    model = build(model_name)
    if compile:
        model = torch.compile(model)
    module = ClassifierModule(model, cfg.optim, cfg.trainer.log_every, channels_last=True)
    timer = StepTimer(batch, warmup, steps, device)
    lr_cb = LRSchedule(schedule)
    precision = "bf16-mixed" if (fastest and device.type == "cuda") else "32-true"
    trainer = pl.Trainer(accelerator=device.type, devices=1, max_steps=total, precision=precision,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         log_every_n_steps=cfg.trainer.log_every, benchmark=device.type == "cuda",
                         callbacks=[lr_cb, BatchScaling(schedule, dm, cfg.trainer.log_every), timer],
                         default_root_dir=tmpdir)
    trainer.fit(module, datamodule=dm)
    return timer.rates[:repeats]


def bench_pipeline(x, y, batch: int, steps: int, device) -> float:
    mean = x[:4096].float().mean(0) / 255
    n = len(y)
    _sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        idx = torch.randint(0, n, (batch,), device=device)
        xb = random_crop_flip(x[idx].float().div_(255).sub_(mean), step_generator(0, i, device))
        _ = y[idx]
    _sync(device)
    return batch * steps / (time.perf_counter() - t0)


def _summary(rates: list[float]) -> dict:
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "repeats": len(rates)}


def main(argv=None) -> int:
    import logging
    import tempfile
    import warnings
    p = argparse.ArgumentParser(prog="python scripts/bench.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="include torch.compile in the fastest settings on CPU")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    arrays = synthetic_cifar(10000, "cpu") + synthetic_cifar(1000, "cpu")
    x, y = arrays[0].to(device), arrays[1].to(device)
    on_gpu = device.type == "cuda"
    compile_fast = on_gpu or args.compile
    report = {"device": torch.cuda.get_device_name(0) if on_gpu else f"cpu ({torch.get_num_threads()} threads)",
              "batch": args.batch, "torch": torch.__version__, "models": {}}
    w, s, r = args.warmup, args.steps, args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            plain = bench_plain(name, x, y, args.batch, w, s, r, device)
            package = bench_package(name, arrays, args.batch, w, s, r, device, fastest=False, compile=False, tmpdir=tmp)
            entry = {"plain": _summary(plain), "package": _summary(package)}
            entry["package/plain"] = entry["package"]["median"] / entry["plain"]["median"]
            if on_gpu or args.compile:
                fast = bench_package(name, arrays, args.batch, w + (10 if compile_fast else 0), s, r, device,
                                     fastest=True, compile=compile_fast, tmpdir=tmp)
                fast_plain = bench_plain(name, x, y, args.batch, w + (10 if compile_fast else 0), s, r, device,
                                         bf16=on_gpu, compile=compile_fast)
                entry["fastest"] = _summary(fast)
                entry["plain_fastest"] = _summary(fast_plain)
                entry["fastest/plain_fastest"] = entry["fastest"]["median"] / entry["plain_fastest"]["median"]
            report["models"][name] = entry
            if not args.json:
                print(f"{name}: plain {entry['plain']['median']:.0f} img/s, package {entry['package']['median']:.0f} "
                      f"img/s, ratio {entry['package/plain']:.3f}", file=sys.stderr, flush=True)
    pipeline = bench_pipeline(x, y, args.batch, 50, device)
    consumed = max(e["package"]["median"] for e in report["models"].values())
    report["pipeline"] = {"images_per_s": pipeline, "x_model_rate": pipeline / consumed}
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"device: {report['device']}, batch {args.batch}, torch {report['torch']}; images/s, median (min-max) of "
          f"{r} repeats x {s} steps after {w} warm-up steps")
    print(f"{'model':10} {'plain loop':>22} {'package':>22} {'package/plain':>14} {'fastest':>22}")
    for name, e in report["models"].items():
        def cell(k):
            if k not in e:
                return "-"
            return f"{e[k]['median']:.0f} ({e[k]['min']:.0f}-{e[k]['max']:.0f})"
        print(f"{name:10} {cell('plain'):>22} {cell('package'):>22} {e['package/plain']:>14.3f} {cell('fastest'):>22}")
    print(f"data pipeline alone: {pipeline:.0f} images/s = {report['pipeline']['x_model_rate']:.1f}x the fastest "
          f"model's consumption")
    return 0
