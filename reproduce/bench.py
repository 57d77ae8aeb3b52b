"""`python -m reproduce bench` (or `python scripts/bench.py`): the speed of the path users run.

Two ways of training the same model on the same in-memory data, with the same augmentation and SGD:
  plain    a hand-written PyTorch loop (index a batch, normalise, crop/flip, forward, backward,
           SGD step): the reference, no framework;
  package  `reproduce.train.run_one` itself, exactly as the CLI calls it: Trainer, DataModule, every
           callback (lr schedule, batch check, atomic checkpoint, evaluation lines), the CSV logger
           and W&B (offline; off when wandb is not installed).
Each variant (fp32 | bf16 autocast; Lightning's eager step, the manual step, the CUDA-graph step of
graph_step.py, or torch.compile) is one `run_one` call with the plain loop interleaved inside its
fit (`Interleaved`): `--steps` steps of the plain loop, then `--steps` steps of the package, and so
on for `--repeats` pairs. A pair is two neighbouring slices of the same moments of a shared
machine, so its ratio is free of the slow spells that made the earlier design (one `run_one`
call per repeat, seconds apart) spread by ±20% on this project's 2-core machine. The ratio is taken
per pair; the median and quartiles are reported, in images/s.

Per-step host overhead: on a tiny model (resnet8, batch 2, 1 thread) the device work is small, so
what the framework adds per step shows: ms per step of the fit minus the plain loop's, per pair of
`--overhead-steps` windows, evaluation taken out; and, since milliseconds on a shared machine
spread, the function calls per step, counted (the same on any machine). Measured for run_one
(`--overhead-variants`) and for `BareModule`, the same step in the least LightningModule (no
metrics, callbacks, loggers or DataModule) with Lightning's automatic and its manual loop:
Lightning's own floor for one step per Lightning batch; the difference is the package's own
cost. With `trainer.steps_per_call` K > 1 (the default on one device, graph_step.py) the package
pays Lightning's per-batch work once per K steps and goes under that floor: the difference is then
negative, and what is left over the plain loop is the package's per-iteration work.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from .config import compose
from .data.augment import random_crop_flip, step_generator
from .data.datamodule import load_arrays
from .graph_step import AUTO_STEPS_PER_CALL, GraphedStep
from .lightning import Callback
from .loggers import wandb_installed
from .models import build
from .module import ClassifierModule
from .train import compile_mode_for, run_one

# the per-step overhead's model, batch and threads: little device work, so the host's shows
OVERHEAD_MODEL = ("resnet8", 2, 1)
# the overhead entries of BareModule: Lightning's own floor, automatic and manual loop
LIGHTNING_FLOORS = {"lightning-floor": "fp32", "lightning-floor-manual": "fp32-manual"}
# name -> (Lightning precision, torch.compile, trainer.train_step)
VARIANTS = {"fp32": ("32-true", False, "lightning"), "bf16": ("bf16-mixed", False, "lightning"),
            "fp32-manual": ("32-true", False, "manual"),
            "fp32-graph": ("32-true", False, "cuda-graph"), "bf16-graph": ("bf16-mixed", False, "cuda-graph"),
            "fp32-compiled": ("32-true", True, "lightning"), "bf16-compiled": ("bf16-mixed", True, "lightning")}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def summary(values: list[float]) -> dict:
    """Median, range and quartiles (the middle half of the pairs) of a list of measurements."""
    med = statistics.median(values)
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else (med, med, med)
    return {"median": med, "min": min(values), "max": max(values), "q1": q1, "q3": q3,
            "spread_pct": 100 * (max(values) - min(values)) / (2 * med) if med else 0.0, "values": values}


# --------------------------------------------------------------------------------------------
# the plain loop


class PlainData:
    """The plain loop's data on the device: batch i is the i-th slice of one permutation,
    normalised and cropped/flipped with a generator seeded by (seed, i), as the package does."""

    def __init__(self, arrays, batch: int, device: torch.device, seed: int = 0):
        self.x, self.y = arrays[0].to(device), arrays[1].to(device)
        self.mean = (self.x.double().mean(0).float() / 255).to(device)
        self.batch, self.device, self.seed = batch, device, seed
        self.perm = torch.randperm(len(self.y), device=device)

    def indices(self, i: int) -> torch.Tensor:
        start = (i * self.batch) % (len(self.y) - self.batch + 1)
        return self.perm[start:start + self.batch]

    def images(self, idx: torch.Tensor, i: int) -> torch.Tensor:
        return random_crop_flip(self.x[idx].float().div_(255).sub_(self.mean), step_generator(self.seed, i, self.device))


class PlainLoop:
    """The reference: the package's model, data, augmentation and SGD without any framework."""

    def __init__(self, model_name: str, arrays, batch: int, device: torch.device, precision: str,
                 compile_mode: str | None, seed: int = 0, graphed: bool = False):
        self.data = PlainData(arrays, batch, device, seed)
        self.device, self.i = device, 0
        self.bf16 = precision.startswith("bf16")
        model = build(model_name).to(device).to(memory_format=torch.channels_last)
        self.model = torch.compile(model, mode=compile_mode, dynamic=False) if compile_mode else model
        self.opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4,
                                   fused=True if graphed else None)
        # the same capture as the package's cuda-graph step: forward, loss and backward replayed
        self.graph = GraphedStep(list(model.parameters()), torch.empty(batch, 3, 32, 32, device=device),
                                 self.data.y[:batch], self.loss, channels_last=True) if graphed else None

    def loss(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False):
            return F.cross_entropy(self.model(xb), yb)

    def step(self) -> None:
        idx = self.data.indices(self.i)
        xb, yb = self.data.images(idx, self.i), self.data.y[idx]
        if self.graph is not None:
            self.graph(xb, yb)
        else:
            # gradients freed before the forward, not after it: the forward reuses their memory,
            # which was the faster order at ResNet-20 batch 128 on 2 CPU cores
            self.opt.zero_grad(set_to_none=True)
            loss = self.loss(xb.contiguous(memory_format=torch.channels_last), yb)
            loss.backward()
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


# --------------------------------------------------------------------------------------------
# the package: run_one, with the plain loop interleaved inside its fit


class CallCounter:
    """Function calls on the main thread while on (Python functions, and C functions called from
    Python: `sys.setprofile` events): the host work of a step counted rather than timed, so the same
    code gives the same count on any machine, however loaded."""

    def __init__(self):
        self.calls = 0

    def _event(self, frame, event, arg):
        if event in ("call", "c_call"):
            self.calls += 1

    def on(self) -> None:
        sys.setprofile(self._event)

    def off(self) -> None:
        sys.setprofile(None)


class Interleaved(Callback):
    """Alternates the plain loop and the fit it rides in, `window` steps each, `pairs` times.

    At the first batch start at or after optimizer step `start`, and then at the first one at
    least `window` steps after the last mark, it closes the fit's open window, runs the plain
    loop for `window` steps (timed), and opens the fit's next window, so each pair is two neighbouring slices
    of the same second of the machine's life: a slow spell of a shared machine hits both. A fit
    that runs K iterations per Lightning batch (trainer.steps_per_call) has batch starts only
    every K steps, so its windows are `window` steps rounded up to whole chunks: `fit_steps`
    holds each window's steps, and every rate is per step. Everything the fit does between two
    marks is in its window (data, every callback, logging, checkpoints) except the evaluation
    loop, which is timed apart (`eval_seconds`) and taken out: the plain loop does not evaluate.
    What runs after that loop (the evaluation line, the checkpoint of an evaluated iteration)
    stays in, as the package's cost. The device is synchronised at the marks only.

    With `count_calls`, one more pair follows, untimed, with the function calls counted
    (`CallCounter`): `plain_calls` and `fit_calls` per step.
    """

    def __init__(self, plain: "PlainLoop", start: int, window: int, pairs: int, clock=time.perf_counter,
                 count_calls: bool = False):
        self.plain, self.start, self.window, self.pairs, self.clock = plain, start, window, pairs, clock
        self.plain_seconds: list[float] = []
        self.fit_seconds: list[float] = []
        self.fit_steps: list[int] = []
        self.eval_seconds = 0.0
        self.count_calls = count_calls
        self.plain_calls = self.fit_calls = None  # per step, with count_calls
        self._counter: CallCounter | None = None
        self._t0: float | None = None
        self._mark: int | None = None  # the step at which the open window began
        self._done = False  # every window closed
        self.steps_per_call = 1  # of the fit, read when it starts
        self._eval_in_window = self._eval_t0 = 0.0

    def on_train_start(self, trainer, pl_module):
        self.steps_per_call = getattr(pl_module, "steps_per_call", 1)  # BareModule: one step per batch

    @property
    def last_step(self) -> int:
        """The fit must run at least to here (max_steps) for every window to close, with chunks of
        up to AUTO_STEPS_PER_CALL iterations; a multiple of it, so that `auto` picks for a run of
        this length what it picks for the paper's 64k (graph_step.steps_per_call_for)."""
        k = AUTO_STEPS_PER_CALL
        end = self.start + k + (self.window + k) * (self.pairs + self.count_calls) + k
        return -(-end // k) * k

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step
        if self._done or step < self.start or (self._mark is not None and step - self._mark < self.window):
            return
        windows_done = len(self.fit_seconds) + (self.fit_calls is not None)
        if self._t0 is not None:  # the fit's timed window ends here
            _sync(pl_module.device)
            self.fit_seconds.append(self.clock() - self._t0 - self._eval_in_window)
            self.fit_steps.append(step - self._mark)
            self._t0 = None
            windows_done += 1
        elif self._counter is not None:  # the counted window ends here
            self.fit_calls = self._counter.calls / (step - self._mark)
            self._stop_counting()
            windows_done += 1
        self._mark = step
        if windows_done < self.pairs:
            self.plain_seconds.append(self.plain.run(self.window))  # synchronised at both ends
            self._eval_in_window = 0.0
            self._t0 = self.clock()
        elif windows_done == self.pairs and self.count_calls and self.fit_calls is None:
            # the counted pair: the plain loop's window, then the fit's
            counter = CallCounter()
            counter.on()
            try:
                self.plain.run(self.window)
            finally:
                counter.off()
            self.plain_calls = counter.calls / self.window
            self._counter = CallCounter()
            self._counter.on()
        else:
            self._done = True

    def on_validation_epoch_start(self, trainer, pl_module):
        if self._counter is not None:
            self._counter.off()
        _sync(pl_module.device)
        self._eval_t0 = self.clock()

    def on_validation_epoch_end(self, trainer, pl_module):
        _sync(pl_module.device)
        seconds = self.clock() - self._eval_t0
        self.eval_seconds += seconds
        if self._t0 is not None:
            self._eval_in_window += seconds
        if self._counter is not None:
            self._counter.on()

    def _stop_counting(self) -> None:
        if self._counter is not None:
            self._counter.off()
            self._counter = None

    def on_exception(self, trainer, pl_module, exception):
        self._stop_counting()  # a fit that failed inside the counted window

    def teardown(self, trainer, pl_module, stage):
        self._stop_counting()  # a fit stopped early inside it


@contextlib.contextmanager
def extra_callbacks(callbacks: list):
    """Attach callbacks to every ClassifierModule through Lightning's own `configure_callbacks` hook,
    so `run_one` runs unchanged with the timer beside its callbacks."""
    own = ClassifierModule.__dict__.get("configure_callbacks")
    ClassifierModule.configure_callbacks = lambda self: list(callbacks)
    try:
        yield
    finally:
        if own is None:
            del ClassifierModule.configure_callbacks
        else:
            ClassifierModule.configure_callbacks = own


def package_config(model_name: str, batch: int, total_steps: int, variant: str, wandb_mode: str,
                   threads: int | None = None, data: list[str] = ()):
    """The CLI's config (paper profile) for a run of `total_steps` iterations at `batch`; `data`:
    overrides of where the images come from (default: synthetic) and any others."""
    precision, compiled, train_step = VARIANTS[variant]
    overrides = [f"models=[{model_name}]", f"data.batch_size={batch}", f"schedule.ref_batch={batch}",
                 f"schedule.max_steps={total_steps}", "schedule.milestones=[]", f"trainer.precision={precision}",
                 f"trainer.compile={str(compiled).lower()}", f"trainer.train_step={train_step}",
                 f"wandb.mode={wandb_mode}", "trainer.progress=false",
                 *([f"trainer.threads={threads}"] if threads else []), *(data or ["data.dataset=synthetic"])]
    return compose("resnet", "paper", overrides)


def run_package(cfg, run_dir: Path, callbacks: list = ()) -> float:
    """Wall seconds of one `run_one` call (the whole call: setup, fit, final evaluation, W&B), with
    `callbacks` beside its own."""
    t0 = time.perf_counter()
    with extra_callbacks(list(callbacks)):
        status = run_one(cfg, run_dir, group="bench", name=run_dir.name)
    seconds = time.perf_counter() - t0
    if status["status"] != "done":
        raise RuntimeError(f"run_one ended '{status['status']}': {status.get('error')}")
    return seconds


# --------------------------------------------------------------------------------------------
# Lightning's own floor: its loop around the plain loop's step, nothing of the package


class BareModule(pl.LightningModule):
    """The plain loop's step (index, normalise, crop/flip, forward) as the least LightningModule:
    no metrics, no callbacks, no loggers, no DataModule; Lightning's automatic optimization, or
    with `manual` its manual loop (zero_grad, manual_backward, step). What it costs over the plain
    loop is Lightning's loop of that kind itself, which no package built on it can go under."""

    def __init__(self, model_name: str, data: PlainData, manual: bool = False):
        super().__init__()
        self.automatic_optimization = not manual
        self.model = build(model_name).to(memory_format=torch.channels_last)
        self.data = data

    def training_step(self, batch, batch_idx):
        idx, y = batch
        xb = self.data.images(idx, batch_idx)
        if self.automatic_optimization:
            return F.cross_entropy(self.model(xb.contiguous(memory_format=torch.channels_last)), y)
        opt = self.optimizers()
        opt.zero_grad()
        loss = F.cross_entropy(self.model(xb.contiguous(memory_format=torch.channels_last)), y)
        self.manual_backward(loss)
        opt.step()
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)


class IndexBatches:
    """The plain loop's batches for a Trainer: the indices of each batch and their labels (the
    images are gathered and augmented in BareModule.training_step, as PlainLoop.step does)."""

    def __init__(self, data: PlainData, steps: int):
        self.data, self.steps = data, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for i in range(self.steps):
            idx = self.data.indices(i)
            yield idx, self.data.y[idx]


def fit_bare(model_name: str, arrays, batch: int, device: torch.device, timer: Interleaved, manual: bool) -> None:
    data = PlainData(arrays, batch, device)
    trainer = pl.Trainer(accelerator=device.type, devices=1, max_steps=timer.last_step, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, callbacks=[timer])
    trainer.fit(BareModule(model_name, data, manual), train_dataloaders=IndexBatches(data, timer.last_step))


# --------------------------------------------------------------------------------------------
# the measurements


def interleaved(path: str, model_name: str, variant: str, arrays, data: list[str], batch: int, warmup: int,
                window: int, pairs: int, device: torch.device, wandb_mode: str, run_dir: Path,
                threads: int | None = None, count_calls: bool = False) -> Interleaved:
    """`pairs` windows of `window` steps of the plain loop and of `path` ("package": run_one;
    "lightning": BareModule with the variant's kind of loop), interleaved in one fit after `warmup`
    steps of each."""
    precision, compiled, train_step = VARIANTS[variant]
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        plain = PlainLoop(model_name, arrays, batch, device, precision,
                          compile_mode_for("auto", device.type) if compiled else None,
                          graphed=train_step == "cuda-graph")
        plain.run(warmup)
        timer = Interleaved(plain, warmup, window, pairs, count_calls=count_calls)
        if path == "package":
            cfg = package_config(model_name, batch, timer.last_step, variant, wandb_mode, threads, data)
            run_package(cfg, run_dir, [timer])
        else:
            fit_bare(model_name, arrays, batch, device, timer, manual=train_step != "lightning")
    finally:
        sys.setprofile(None)  # whatever happened inside the counted window
        torch.set_num_threads(before)
    return timer


def bench_variant(model_name: str, variant: str, arrays, data: list[str], batch: int, warmup: int, steps: int,
                  repeats: int, device: torch.device, wandb_mode: str, tmp: Path) -> dict:
    """Images/s of the plain loop and of run_one over `repeats` interleaved pairs of `steps`-step
    windows, and their ratio per pair."""
    t = interleaved("package", model_name, variant, arrays, data, batch, warmup, steps, repeats, device, wandb_mode,
                    tmp / f"{model_name}-{variant}")
    plain = [batch * steps / s for s in t.plain_seconds]
    package = [batch * n / s for n, s in zip(t.fit_steps, t.fit_seconds)]
    return {"steps_per_call": t.steps_per_call, "fit_window_steps": t.fit_steps,
            "plain": summary(plain), "package": summary(package),
            "ratio": summary([p / q for p, q in zip(package, plain)]), "eval_s_excluded": t.eval_seconds}


def bench_overhead(window: int, pairs: int, device: torch.device, wandb_mode: str, tmp: Path,
                   variant: str = "fp32", path: str = "package") -> dict:
    """Per-step host overhead (ms) on a model small enough that the host work shows (OVERHEAD_MODEL):
    ms per step of `path` minus the plain loop's, per interleaved pair of `window`-step windows, and
    the function calls per step of each (one more pair, counted: `CallCounter`). `path` "package" is
    run_one in `variant` (its plain loop of the same kind: eager, or graphed for a graph variant);
    "lightning" is BareModule with the variant's kind of loop, Lightning's own floor (eager)."""
    model_name, batch, threads = OVERHEAD_MODEL
    arrays = load_arrays(package_config(model_name, batch, 1, "fp32", "disabled").data)
    t = interleaved(path, model_name, variant, arrays, [], batch, max(10, window // 2), window, pairs, device,
                    wandb_mode, tmp / f"overhead-{path}-{variant}", threads, count_calls=True)
    if t.fit_calls is None or len(t.fit_seconds) < pairs:
        raise RuntimeError(f"the fit stopped before its last window ({len(t.fit_seconds)} of {pairs} timed, "
                           f"calls {'not ' if t.fit_calls is None else ''}counted)")
    plain = [1000 * s / window for s in t.plain_seconds]
    fit = [1000 * s / n for n, s in zip(t.fit_steps, t.fit_seconds)]
    return {"model": model_name, "batch": batch, "threads": threads, "window": window, "pairs": pairs,
            "steps_per_call": t.steps_per_call, "fit_window_steps": t.fit_steps,
            "plain_ms_per_step": plain, f"{path}_ms_per_step": fit,
            "overhead_ms": summary([p - q for p, q in zip(fit, plain)]),
            "plain_calls_per_step": t.plain_calls, f"{path}_calls_per_step": t.fit_calls,
            "extra_calls_per_step": t.fit_calls - t.plain_calls}


def bench_pipeline(arrays, batch: int, steps: int, device: torch.device) -> float:
    """Images/s of the data pipeline alone (index, normalise, crop/flip on the device)."""
    data = PlainData(arrays, batch, device)
    _sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        data.images(torch.randint(0, len(data.y), (batch,), device=device), i)
    _sync(device)
    return batch * steps / (time.perf_counter() - t0)


def own_calls(overhead: dict) -> None:
    """Adds to each run_one entry `own_calls_per_step`: its calls per step minus those of
    Lightning's floor of the same kind of loop (automatic for `lightning`, manual for `manual` and
    `cuda-graph`), the package's own per-step work, counted."""
    for variant, o in overhead.items():
        if variant in LIGHTNING_FLOORS or "error" in o:
            continue
        floor = overhead.get("lightning-floor" if VARIANTS[variant][2] == "lightning" else "lightning-floor-manual", {})
        if "extra_calls_per_step" in floor:
            o["own_calls_per_step"] = o["extra_calls_per_step"] - floor["extra_calls_per_step"]


def _write(report: dict, path: str | None) -> None:
    if path:
        tmp = Path(path).with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(path)


def _fmt(s: dict, digits: int) -> str:
    return f"{s['median']:.{digits}f} ({s['q1']:.{digits}f}-{s['q3']:.{digits}f})"


def _print_table(report: dict) -> None:
    print(f"device: {report['device']}, batch {report['batch']}, torch {report['torch']}, W&B {report['wandb_mode']}; "
          f"images/s, median (quartiles) of {report['repeats']} interleaved pairs of {report['steps']}-step windows "
          f"after {report['warmup']} warm-up steps")
    print(f"{'model':10} {'variant':14} {'plain loop':>18} {'package (run_one)':>18} {'package/plain':>22}")
    for name, variants in report["models"].items():
        for variant, e in variants.items():
            if "error" in e:
                print(f"{name:10} {variant:14} failed: {e['error']}")
                continue
            print(f"{name:10} {variant:14} {_fmt(e['plain'], 0):>18} {_fmt(e['package'], 0):>18} "
                  f"{_fmt(e['ratio'], 3):>22}  ({e.get('steps_per_call', 1)} steps per call)")
    overhead = report.get("overhead", {})
    if overhead:
        model, batch, threads = OVERHEAD_MODEL
        print(f"per-step host overhead over the plain loop: ms, median (quartiles) of interleaved pairs; calls counted "
              f"({model}, batch {batch}, {threads} thread):")
    for key, o in overhead.items():
        label = f"Lightning's own floor, {key} (BareModule)" if key in LIGHTNING_FLOORS else f"package, {key}"
        if "error" in o:
            print(f"  {label}: failed: {o['error']}")
            continue
        own = f" ({o['own_calls_per_step']:+.0f} against Lightning's one-step-per-batch floor)" \
            if "own_calls_per_step" in o else ""
        if key not in LIGHTNING_FLOORS:
            label += f" ({o.get('steps_per_call', 1)} steps per call)"
        print(f"  {label}: {_fmt(o['overhead_ms'], 2)} ms, {o['extra_calls_per_step']:+.0f}{own} function calls per step "
              f"(plain loop {statistics.median(o['plain_ms_per_step']):.2f} ms and {o['plain_calls_per_step']:.0f} "
              f"calls per step; {o['pairs']} pairs of {o['window']} steps)")
    if "pipeline" in report:
        pl_ = report["pipeline"]
        print(f"data pipeline alone: {pl_['images_per_s']:.0f} images/s = {pl_['x_model_rate']:.1f}x the fastest "
              f"package rate")


def main(argv=None) -> int:
    on_gpu_default = torch.cuda.is_available()
    p = argparse.ArgumentParser(prog="python -m reproduce bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=None,
                   help="default: fp32 fp32-graph bf16-graph bf16-compiled on a GPU, fp32-manual (the step "
                        "trainer.train_step=auto picks there) on a CPU (add fp32-compiled with --compile)")
    p.add_argument("--compile", action="store_true", help="on a CPU, also time fp32-compiled")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3 on CPU, 30 on GPU)")
    p.add_argument("--steps", type=int, default=None, help="steps per timed window (default 10 on CPU, the chunk `trainer.steps_per_call=auto` "
                   "picks there; 100 on GPU)")
    p.add_argument("--repeats", type=int, default=None,
                   help="interleaved pairs of windows, plain and package (default 10 on CPU and GPU)")
    p.add_argument("--overhead-steps", type=int, default=None,
                   help="steps per window of the per-step overhead measurement (default 100 on CPU, 200 on GPU)")
    p.add_argument("--overhead-repeats", type=int, default=None, help="its pairs of windows (default 20 on CPU, 10 on GPU)")
    p.add_argument("--overhead-variants", nargs="+", choices=sorted(VARIANTS), default=None,
                   help="default: fp32 and fp32-graph on a GPU, fp32 and fp32-manual on a CPU; Lightning's own floor "
                        "(BareModule) is measured beside them")
    p.add_argument("--no-overhead", action="store_true")
    p.add_argument("--data-root", default=None, help="time on CIFAR-10 from this data.root (default: synthetic)")
    p.add_argument("--wandb", choices=("offline", "disabled"), default=None,
                   help="W&B mode of the package runs (default: offline, as the CLI without a login; disabled without wandb)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--json-out", default=None, help="also write the JSON here, after every measurement")
    p.add_argument("--device", default="cuda" if on_gpu_default else "cpu")
    args = p.parse_args(argv)
    for key in ("batch", "warmup", "steps", "repeats", "overhead_steps", "overhead_repeats"):
        value = getattr(args, key)
        if value is not None and value <= 0:
            p.error(f"--{key.replace('_', '-')} must be positive, got {value}")
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    if on_gpu and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    variants = args.variants or (["fp32", "fp32-graph", "bf16-graph", "bf16-compiled"] if on_gpu else
                                 ["fp32-manual", "fp32-compiled"] if args.compile else ["fp32-manual"])
    warmup = args.warmup or (30 if on_gpu else 3)
    steps = args.steps or (100 if on_gpu else AUTO_STEPS_PER_CALL)
    repeats = args.repeats or 10
    wandb_mode = args.wandb or ("offline" if wandb_installed() else "disabled")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    if on_gpu:
        torch.backends.cudnn.benchmark = True  # as the package's Trainer sets it on GPUs
    data = [f"data.root={args.data_root}"] if args.data_root else []
    arrays = load_arrays(package_config(args.models[0], args.batch, 1, "fp32", "disabled", data=data).data)
    report = {"device": torch.cuda.get_device_name(device) if on_gpu else f"cpu ({torch.get_num_threads()} threads)",
              "torch": torch.__version__, "lightning": pl.__version__, "batch": args.batch, "warmup": warmup,
              "steps": steps, "repeats": repeats, "wandb_mode": wandb_mode,
              "data": args.data_root or "synthetic", "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_overhead:  # first: a time limit that cuts the slow compiled variants keeps it
            report["overhead"] = {}
            window = args.overhead_steps or (200 if on_gpu else 100)
            pairs = args.overhead_repeats or (10 if on_gpu else 20)
            for variant in [*(args.overhead_variants or (["fp32", "fp32-graph"] if on_gpu else ["fp32", "fp32-manual"])),
                            *LIGHTNING_FLOORS]:
                try:
                    report["overhead"][variant] = bench_overhead(
                        window, pairs, device, wandb_mode, Path(tmp),
                        *((LIGHTNING_FLOORS[variant], "lightning") if variant in LIGHTNING_FLOORS else (variant, "package")))
                except Exception as e:  # reported like a failed variant below; the rest go on
                    report["overhead"][variant] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
                _write(report, args.json_out)
            own_calls(report["overhead"])
        for name in args.models:
            report["models"][name] = {}
            for variant in variants:
                try:
                    entry = bench_variant(name, variant, arrays, data, args.batch, warmup, steps, repeats,
                                          device, wandb_mode, Path(tmp))
                except Exception as e:  # a variant that fails (compile on an odd machine) is reported, the rest go on
                    entry = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
                report["models"][name][variant] = entry
                _write(report, args.json_out)
                if not args.json and "error" not in entry:
                    print(f"{name} {variant}: plain {entry['plain']['median']:.0f} img/s, package "
                          f"{entry['package']['median']:.0f} img/s, ratio {entry['ratio']['median']:.3f}",
                          file=sys.stderr, flush=True)
    rates = [e["package"]["median"] for v in report["models"].values() for e in v.values() if "package" in e]
    if rates:
        pipeline = bench_pipeline(arrays, args.batch, 50, device)
        report["pipeline"] = {"images_per_s": pipeline, "x_model_rate": pipeline / max(rates)}
    _write(report, args.json_out)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        _print_table(report)
    return 0
