"""`python scripts/bench.py`: the speed of the path users run, against a plain PyTorch loop.

Two ways of training the same model on the same in-memory data, with the same augmentation and SGD:
  plain    a hand-written PyTorch loop (index a batch, normalise, crop/flip, forward, backward,
           SGD step): the reference, no framework;
  package  `reproduce.train.run_one` itself (its two halves, `build_run` then `execute`, so the
           timer can join the Trainer's callbacks): Trainer, DataModule, every callback, the CSV
           logger and W&B (offline; off when wandb is not installed).
Each variant (fp32 | bf16 autocast; the eager step, the CUDA-graph step, or torch.compile) is one
`run_one` call with the plain loop interleaved inside its fit (`Interleaved`): `--steps` steps of
the plain loop, then `--steps` steps of the package, and so on for `--repeats` pairs. A pair is two
neighbouring slices of the same moments of a shared machine, so a slow spell hits both halves;
the ratio package/plain is taken per pair and reported as median and quartiles.

The per-step host overhead is measured the same way on a model small enough that the host's work
shows (OVERHEAD_MODEL): ms per step of the fit minus the plain loop's, per pair of windows.

Stacks (`--stack N ...`): N runs of one model (seeds 0..N-1, each built by `train.build_run`)
trained as one stacked network by `stacked.execute_stack`, with the plain loop (one net, the same
batch) interleaved inside the stack's fit as above. A stack's window is ceil(steps / N) of its
iterations, so both halves of a pair train about the same number of images. Images/s of the stack
(N x batch per iteration) over the plain loop's, per pair, is the stack's speed-up over N runs
trained one after another at the plain loop's speed; the unstacked package's own ratio to the plain
loop is the variants' measurement in the same report.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from reproduce.config import compose, for_model
from reproduce.data.augment import random_crop_flip, step_generator
from reproduce.data.datamodule import load_arrays
from reproduce.graph_step import GraphedStep
from reproduce.loggers import wandb_installed
from reproduce.models import build
from reproduce.stacked import execute_stack
from reproduce.train import build_run, compile_mode_for, execute

# the per-step overhead's model, batch and threads: little device work, so the host's shows
OVERHEAD_MODEL = ("resnet8", 2, 1)
# name -> (trainer.precision, trainer.compile, trainer.train_step)
VARIANTS = {"fp32": ("32-true", False, "eager"), "bf16": ("bf16-mixed", False, "eager"),
            "fp32-graph": ("32-true", False, "cuda-graph"), "bf16-graph": ("bf16-mixed", False, "cuda-graph"),
            "fp32-compiled": ("32-true", True, "eager"), "bf16-compiled": ("bf16-mixed", True, "eager")}
GPU_DEFAULT = ["fp32-graph", "bf16-graph", "fp32", "bf16-compiled"]  # the fast path first: a cap may cut the rest
# a stack trains one grouped network (stacked.py), which trainer.compile cannot compile
STACK_VARIANTS = sorted(v for v, (_, compiled, _) in VARIANTS.items() if not compiled)
# --cpu-smoke: every code path on a CPU in seconds, tiny model and windows (numbers meaningless);
# options given explicitly win over these
CPU_SMOKE = {"models": ["resnet8"], "variants": ["fp32", "bf16"], "batch": 8, "warmup": 1, "steps": 1,
             "repeats": 3, "overhead_steps": 2, "overhead_repeats": 2, "stack": [1, 2]}
DEFAULTS = {"models": ["resnet20", "resnet56"], "batch": 128, "repeats": 10, "stack": []}
SMOKE_DATA = ["data.synthetic_train=512", "data.synthetic_test=64", "data.val_size=64", "data.eval_batch_size=64"]


def variant_overrides(variant: str) -> list[str]:
    precision, compiled, train_step = VARIANTS[variant]
    return [f"trainer.precision={precision}", f"trainer.compile={str(compiled).lower()}",
            f"trainer.train_step={train_step}"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def summary(values: list[float]) -> dict:
    """Median, range and quartiles (the middle half of the pairs) of a list of measurements."""
    med = statistics.median(values)
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else (med, med, med)
    return {"median": med, "min": min(values), "max": max(values), "q1": q1, "q3": q3,
            "spread_pct": 100 * (max(values) - min(values)) / (2 * med) if med else 0.0, "values": values}


class PlainLoop:
    """The reference: the package's model, data, augmentation and SGD without any framework.
    Batch i is the i-th slice of one permutation, normalised and cropped/flipped on the device
    with a generator seeded by the step, as the package's DataModule does."""

    def __init__(self, model_name: str, arrays, batch: int, device: torch.device, variant: str):
        precision, compiled, train_step = VARIANTS[variant]
        self.x, self.y = arrays[0].to(device), arrays[1].to(device)
        self.mean = (self.x.double().mean(0).float() / 255).to(device)
        self.perm = torch.randperm(len(self.y), device=device)
        self.batch, self.device, self.i, self.bf16 = batch, device, 0, precision.startswith("bf16")
        model = build(model_name).to(device).to(memory_format=torch.channels_last)
        self.model = torch.compile(model, mode=compile_mode_for("auto", device.type), dynamic=False) if compiled else model
        graphed = train_step == "cuda-graph"
        self.opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4,
                                   fused=True if graphed else None)  # the package's kernel choice (module.sgd_kernel)
        # the same capture as the package's cuda-graph step: forward, loss and backward replayed
        self.graph = GraphedStep(list(model.parameters()), torch.empty(batch, 3, 32, 32, device=device),
                                 self.y[:batch], self.loss, channels_last=True) if graphed else None

    def loss(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False):
            return F.cross_entropy(self.model(xb), yb)

    def step(self) -> None:
        start = (self.i * self.batch) % (len(self.y) - self.batch + 1)
        idx = self.perm[start:start + self.batch]
        xb = random_crop_flip(self.x[idx].float().div_(255).sub_(self.mean), step_generator(0, self.i, self.device))
        yb = self.y[idx]
        if self.graph is not None:
            self.graph(xb, yb)
        else:
            self.opt.zero_grad(set_to_none=True)
            self.loss(xb.contiguous(memory_format=torch.channels_last), yb).backward()
        self.opt.step()
        self.i += 1

    def run(self, steps: int) -> float:
        """Seconds for `steps` steps, the device synchronised at both ends."""
        _sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        _sync(self.device)
        return time.perf_counter() - t0


class Interleaved(pl.Callback):
    """Alternates the plain loop and the fit it rides in, `window` steps each, `pairs` times.

    At the batch start of steps `start`, `start + window`, ... it closes the fit's open window,
    runs the plain loop for `window` steps (timed), and opens the fit's next window. Everything the
    fit does between two marks is in its window (data, every callback, logging, checkpoints) except
    the evaluation loop, which is timed apart (`eval_seconds`) and taken out: the plain loop does
    not evaluate. The device is synchronised at the marks only. `plain_window` (default `window`):
    the plain loop's steps per window, where a fit's step is not one net's (a stack's).
    """

    def __init__(self, plain, start: int, window: int, pairs: int, clock=time.perf_counter,
                 plain_window: int | None = None):
        self.plain, self.start, self.window, self.pairs, self.clock = plain, start, window, pairs, clock
        self.plain_window = plain_window or window
        self.plain_seconds: list[float] = []
        self.fit_seconds: list[float] = []
        self.eval_seconds = self._eval_in_window = self._eval_t0 = 0.0
        self._t0: float | None = None  # the open fit window's start

    @property
    def last_step(self) -> int:
        """The fit's max_steps: the batch start of step start + pairs * window closes the last window."""
        return self.start + self.pairs * self.window + 1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step
        if step < self.start or (step - self.start) % self.window or len(self.fit_seconds) == self.pairs:
            return
        if self._t0 is not None:
            _sync(pl_module.device)
            self.fit_seconds.append(self.clock() - self._t0 - self._eval_in_window)
            self._t0 = None
        if len(self.plain_seconds) < self.pairs:
            self.plain_seconds.append(self.plain.run(self.plain_window))  # synchronised at both ends
            self._eval_in_window = 0.0
            self._t0 = self.clock()

    def on_validation_epoch_start(self, trainer, pl_module):
        _sync(pl_module.device)
        self._eval_t0 = self.clock()

    def on_validation_epoch_end(self, trainer, pl_module):
        _sync(pl_module.device)
        seconds = self.clock() - self._eval_t0
        self.eval_seconds += seconds
        if self._t0 is not None:
            self._eval_in_window += seconds


def package_config(model_name: str, batch: int, total_steps: int, variant: str, wandb_mode: str,
                   threads: int | None = None, data: list[str] = ()):
    """The CLI's config (paper profile) for a run of `total_steps` iterations at `batch`; `data`:
    overrides of where the images come from (default: synthetic) and any others."""
    overrides = [f"models=[{model_name}]", f"data.batch_size={batch}", f"schedule.ref_batch={batch}",
                 f"schedule.max_steps={total_steps}", "schedule.milestones=[]", *variant_overrides(variant),
                 f"wandb.mode={wandb_mode}", "trainer.progress=false",
                 *([f"trainer.threads={threads}"] if threads else []), *(data or ["data.dataset=synthetic"])]
    return compose("resnet", "paper", overrides)


def run_package(cfg, run_dir: Path, callbacks: list = ()) -> dict:
    """`run_one(cfg, run_dir)` with `callbacks` beside the Trainer's own; its status."""
    run = build_run(cfg, run_dir, group="bench", name=run_dir.name)
    run.trainer.callbacks.extend(callbacks)
    status = execute(run)
    if status["status"] != "done":
        raise RuntimeError(f"run_one ended '{status['status']}': {status.get('error')}")
    return status


def run_stack(cfg, n: int, run_dir: Path, callbacks: list = ()) -> list[dict]:
    """Runs of `cfg.models[0]` with seeds 0..n-1, built as a sweep builds them (`build_run`, in
    run_dir/SEED) and trained as one stack (`execute_stack`) with `callbacks`; their statuses."""
    model = cfg.models[0]
    runs = [build_run(for_model(cfg, model, seed), run_dir / f"seed{seed}", group="bench", name=f"{model}-seed{seed}")
            for seed in range(n)]
    statuses = execute_stack(runs, callbacks=tuple(callbacks))
    bad = [s for s in statuses if s["status"] != "done"]
    if bad:
        raise RuntimeError(f"a stack of {n} ended '{bad[0]['status']}': {bad[0].get('error')}")
    return statuses


def interleaved(model_name: str, variant: str, arrays, data: list[str], batch: int, warmup: int, window: int,
                pairs: int, device: torch.device, wandb_mode: str, run_dir: Path, threads: int | None = None,
                stack: int | None = None, plain_window: int | None = None, fit_warmup: int | None = None):
    """`pairs` windows of `window` steps of the plain loop and of run_one (a stack of `stack` runs
    when given), interleaved in one fit after `warmup` steps of the plain loop and `fit_warmup`
    (default `warmup`) of the fit; the timer and the fit's status(es)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        plain = PlainLoop(model_name, arrays, batch, device, variant)
        plain.run(warmup)
        timer = Interleaved(plain, fit_warmup or warmup, window, pairs, plain_window=plain_window)
        cfg = package_config(model_name, batch, timer.last_step, variant, wandb_mode, threads, data)
        status = run_package(cfg, run_dir, [timer]) if stack is None else run_stack(cfg, stack, run_dir, [timer])
    finally:
        torch.set_num_threads(before)
        _release(device)
    if len(timer.fit_seconds) < pairs:
        raise RuntimeError(f"the fit stopped before its last window ({len(timer.fit_seconds)} of {pairs} timed)")
    return timer, status


def bench_variant(model_name: str, variant: str, arrays, data: list[str], batch: int, warmup: int, steps: int,
                  repeats: int, device: torch.device, wandb_mode: str, tmp: Path) -> dict:
    """Images/s of the plain loop and of run_one over `repeats` interleaved pairs, and their ratio per pair."""
    t, status = interleaved(model_name, variant, arrays, data, batch, warmup, steps, repeats, device, wandb_mode,
                            tmp / f"{model_name}-{variant}")
    plain = [batch * steps / s for s in t.plain_seconds]
    package = [batch * steps / s for s in t.fit_seconds]
    return {"overrides": variant_overrides(variant), "plain": summary(plain), "package": summary(package),
            "ratio": summary([p / q for p, q in zip(package, plain)]), "eval_s_excluded": t.eval_seconds}


def bench_stack(model_name: str, n: int, variant: str, arrays, data: list[str], batch: int, warmup: int, steps: int,
                repeats: int, device: torch.device, wandb_mode: str, tmp: Path) -> dict:
    """Images/s of a stack of `n` runs (all of them together) and of the plain loop of one net over
    `repeats` interleaved pairs, and their ratio per pair: the stack's speed-up over n runs in a row."""
    window = math.ceil(steps / n)  # about `steps` x batch images in each half of a pair
    # the fit's untimed start in its own iterations: at least a few (cudnn.benchmark's choice, the
    # CUDA graph's capture), about `warmup` nets' worth of work beyond that
    fit_warmup = min(warmup, max(5, math.ceil(warmup / n)))
    t, _ = interleaved(model_name, variant, arrays, data, batch, warmup, window, repeats, device, wandb_mode,
                       tmp / f"stack{n}-{model_name}-{variant}", stack=n, plain_window=steps, fit_warmup=fit_warmup)
    plain = [batch * steps / s for s in t.plain_seconds]
    stacked = [n * batch * window / s for s in t.fit_seconds]
    return {"n": n, "window": window, "plain_window": steps, "fit_warmup": fit_warmup, "plain": summary(plain),
            "stack": summary(stacked), "ratio": summary([p / q for p, q in zip(stacked, plain)]),
            "eval_s_excluded": t.eval_seconds}


def _release(device: torch.device) -> None:
    """Free what the last fit left (its graphs, N datasets on the device) before the next one."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bench_overhead(variant: str, arrays, data: list[str], window: int, pairs: int, device: torch.device,
                   wandb_mode: str, tmp: Path) -> dict:
    """ms per step of run_one minus the plain loop's, per interleaved pair, on OVERHEAD_MODEL."""
    model_name, batch, threads = OVERHEAD_MODEL
    t, _ = interleaved(model_name, variant, arrays, data, batch, window // 2 + 1, window, pairs, device,
                       wandb_mode, tmp / f"overhead-{variant}", threads)
    plain = [1000 * s / window for s in t.plain_seconds]
    fit = [1000 * s / window for s in t.fit_seconds]
    return {"model": model_name, "batch": batch, "threads": threads, "window": window, "pairs": pairs,
            "plain_ms_per_step": plain, "package_ms_per_step": fit,
            "overhead_ms": summary([p - q for p, q in zip(fit, plain)])}


def failure(e: Exception) -> dict:
    return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}


def _write(report: dict, path: str | None) -> None:
    if path:
        tmp = Path(path).with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(path)


def _fmt(s: dict, digits: int) -> str:
    return f"{s['median']:.{digits}f} ({s['q1']:.{digits}f}-{s['q3']:.{digits}f})"


def print_table(report: dict) -> None:
    print(f"device: {report['device']}, batch {report['batch']}, torch {report['torch']}, W&B {report['wandb_mode']}; "
          f"images/s, median (quartiles) of {report['repeats']} interleaved pairs of {report['steps']}-step windows "
          f"after {report['warmup']} warm-up steps")
    print(f"{'model':10} {'variant':14} {'plain loop':>18} {'package (run_one)':>18} {'package/plain':>22}")
    for name, variants in report["models"].items():
        for variant, e in variants.items():
            print(f"{name:10} {variant:14} failed: {e['error']}" if "error" in e else
                  f"{name:10} {variant:14} {_fmt(e['plain'], 0):>18} {_fmt(e['package'], 0):>18} {_fmt(e['ratio'], 3):>22}")
    for variant, o in report.get("overhead", {}).items():
        print(f"per-step host overhead over the plain loop, {variant}: " + (f"failed: {o['error']}" if "error" in o else
              f"{_fmt(o['overhead_ms'], 2)} ms ({o['model']}, batch {o['batch']}, {o['threads']} thread; plain loop "
              f"{statistics.median(o['plain_ms_per_step']):.2f} ms per step; {o['pairs']} pairs of {o['window']} steps)"))
    stack = report.get("stack")
    if stack and stack["models"]:
        print(f"stacks of N runs ({stack['variant']}): images/s of all N runs together against the plain loop of one "
              f"net, per pair; stack/plain = the speed-up over N runs one after another at the plain loop's speed")
        print(f"{'model':10} {'N':>3} {'plain loop':>18} {'stack':>18} {'stack/plain':>22}")
        for name, entries in stack["models"].items():
            for n, e in entries.items():
                print(f"{name:10} {n:>3} failed: {e['error']}" if "error" in e else
                      f"{name:10} {n:>3} {_fmt(e['plain'], 0):>18} {_fmt(e['stack'], 0):>18} {_fmt(e['ratio'], 3):>22}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/bench.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=None, help=f"default: {' '.join(DEFAULTS['models'])}")
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=None,
                   help=f"default: fp32 (the step trainer.train_step=auto picks there) on a CPU, "
                        f"{' '.join(GPU_DEFAULT)} on a GPU")
    p.add_argument("--batch", type=int, default=None, help=f"default: {DEFAULTS['batch']}")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3 on CPU, 30 on GPU)")
    p.add_argument("--steps", type=int, default=None, help="steps per timed window (default 10 on CPU, 100 on GPU)")
    p.add_argument("--repeats", type=int, default=None, help=f"interleaved pairs of windows, plain and package "
                   f"(default {DEFAULTS['repeats']})")
    p.add_argument("--overhead-steps", type=int, default=None, help="steps per window of the per-step overhead "
                   "measurement (default 100 on CPU, 200 on GPU)")
    p.add_argument("--overhead-repeats", type=int, default=None, help="its pairs of windows (default 20 on CPU, 10 on GPU)")
    p.add_argument("--overhead-variants", nargs="+", choices=sorted(VARIANTS), default=None,
                   help="default: fp32 on a CPU, fp32-graph on a GPU")
    p.add_argument("--no-overhead", action="store_true")
    p.add_argument("--stack", nargs="+", type=int, default=None, metavar="N",
                   help="also time stacks of N runs of each model (stacked.execute_stack; e.g. --stack 1 2 4) against "
                        "the plain loop of one net (default: none)")
    p.add_argument("--stack-variant", choices=STACK_VARIANTS, default=None,
                   help="the stacks' precision and step (default: fp32 on a CPU, bf16-graph on a GPU)")
    p.add_argument("--data-root", default=None, help="time on CIFAR-10 from this data.root (default: synthetic)")
    p.add_argument("--wandb", choices=("offline", "disabled"), default=None,
                   help="W&B mode of the package runs (default: offline, as the CLI without a login; disabled without wandb)")
    p.add_argument("--json-out", default=None, help="also write the report as JSON here, after every measurement")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cpu-smoke", action="store_true", help="every path on the CPU in seconds: " +
                   ", ".join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                             for k, v in CPU_SMOKE.items()) + " (options given explicitly win)")
    args = p.parse_args(argv)
    if args.cpu_smoke:
        args.device = "cpu"
    for key, value in {**DEFAULTS, **(CPU_SMOKE if args.cpu_smoke else {})}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("batch", "warmup", "steps", "repeats", "overhead_steps", "overhead_repeats"):
        value = getattr(args, key)
        if value is not None and value <= 0:
            p.error(f"--{key.replace('_', '-')} must be positive, got {value}")
    if any(n <= 0 for n in args.stack):
        p.error(f"--stack: stack sizes must be positive, got {' '.join(map(str, args.stack))}")
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    if on_gpu and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    variants = args.variants or (GPU_DEFAULT if on_gpu else ["fp32"])
    overhead_variants = [] if args.no_overhead else args.overhead_variants or (["fp32-graph"] if on_gpu else ["fp32"])
    stack_variant = args.stack_variant or ("bf16-graph" if on_gpu else "fp32")
    for flag, chosen in (("--variants", variants), ("--overhead-variants", overhead_variants),
                         ("--stack-variant", [stack_variant] if args.stack else [])):
        graphed = sorted({v for v in chosen if VARIANTS[v][2] == "cuda-graph"})
        if graphed and not on_gpu:
            p.error(f"{flag} {' '.join(graphed)}: the CUDA-graph step needs --device cuda")
    warmup, steps = args.warmup or (30 if on_gpu else 3), args.steps or (100 if on_gpu else 10)
    wandb_mode = args.wandb or ("offline" if wandb_installed() else "disabled")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    if on_gpu:
        torch.backends.cudnn.benchmark = True  # as the package's Trainer sets it on GPUs
    data = [f"data.root={args.data_root}" if args.data_root else "data.dataset=synthetic",
            *(SMOKE_DATA if args.cpu_smoke else []), f"trainer.accelerator={device.type}"]  # the package on --device
    arrays = load_arrays(package_config(args.models[0], args.batch, 1, "fp32", "disabled", data=data).data)
    report = {"device": torch.cuda.get_device_name(device) if on_gpu else f"cpu ({torch.get_num_threads()} threads)",
              "torch": torch.__version__, "lightning": pl.__version__, "batch": args.batch, "warmup": warmup,
              "steps": steps, "repeats": args.repeats, "wandb_mode": wandb_mode,
              "data": args.data_root or "synthetic", "models": {}, "overhead": {},
              "stack": {"variant": stack_variant, "overrides": variant_overrides(stack_variant), "sizes": args.stack,
                        "models": {}}}
    with tempfile.TemporaryDirectory() as tmp:  # the runs' own files: not results
        for variant in overhead_variants:
            try:
                report["overhead"][variant] = bench_overhead(
                    variant, arrays, data, args.overhead_steps or (200 if on_gpu else 100),
                    args.overhead_repeats or (10 if on_gpu else 20), device, wandb_mode, Path(tmp))
            except Exception as e:  # reported; the rest go on
                report["overhead"][variant] = failure(e)
            _write(report, args.json_out)
        for name in args.models:
            report["models"][name] = {}
            for variant in variants:
                try:
                    entry = bench_variant(name, variant, arrays, data, args.batch, warmup, steps, args.repeats,
                                          device, wandb_mode, Path(tmp))
                    print(f"{name} {variant}: plain {entry['plain']['median']:.0f} img/s, package "
                          f"{entry['package']['median']:.0f} img/s, ratio {entry['ratio']['median']:.3f}",
                          file=sys.stderr, flush=True)
                except Exception as e:  # a variant that fails (compile on an odd machine) is reported, the rest go on
                    entry = failure(e)
                report["models"][name][variant] = entry
                _write(report, args.json_out)
        for n in args.stack:  # every model's stack of n before any larger stack: a cap cuts the largest
            for name in args.models:
                try:
                    entry = bench_stack(name, n, stack_variant, arrays, data, args.batch, warmup, steps, args.repeats,
                                        device, wandb_mode, Path(tmp))
                    print(f"{name} stack of {n} ({stack_variant}): plain {entry['plain']['median']:.0f} img/s, stack "
                          f"{entry['stack']['median']:.0f} img/s, ratio {entry['ratio']['median']:.3f}",
                          file=sys.stderr, flush=True)
                except Exception as e:  # reported (a stack too large for the device's memory); the rest go on
                    entry = failure(e)
                report["stack"]["models"].setdefault(name, {})[str(n)] = entry
                _write(report, args.json_out)
    print_table(report)
    return 0
