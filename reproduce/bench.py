"""`python -m reproduce bench` (or `python scripts/bench.py`): the speed of the path users run.

Two ways of training the same model on the same in-memory data, with the same augmentation and SGD:
  plain    a hand-written PyTorch loop (index a batch, normalise, crop/flip, forward, backward,
           SGD step): the reference, no framework;
  package  `reproduce.train.run_one` itself, exactly as the CLI calls it: Trainer, DataModule, every
           callback (lr schedule, batch check, atomic checkpoint, evaluation lines), the CSV logger
           and W&B (offline; off when wandb is not installed).
Each variant (fp32 | bf16 autocast; Lightning's eager step, the manual step, the CUDA-graph step of
graph_step.py, or torch.compile) is timed over `--repeats` repeats,
plain and package interleaved (a plain repeat, then a package repeat, ...), so a slow spell of a
shared machine hits both; each package repeat is one `run_one` call whose steps `warmup` ..
`warmup + steps` are timed from inside `fit` (a callback that synchronises the device at the two
marks only). The ratio package/plain is taken per pair of repeats; the median, min and max are
reported, in images/s.

Per-step host overhead: on a tiny model (resnet8, batch 2, 1 thread) the device work is small, so
what the framework adds per step shows. It is the marginal time per iteration between two run
lengths, (T(L2) - T(L1)) / (L2 - L1), of whole `run_one` calls (setup, W&B, final evaluation and
everything else that does not grow with the run cancels) minus the same for the plain loop.
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
from .graph_step import GraphedStep
from .loggers import wandb_installed
from .models import build
from .module import ClassifierModule
from .train import compile_mode_for, run_one

# name -> (Lightning precision, torch.compile, trainer.train_step)
VARIANTS = {"fp32": ("32-true", False, "lightning"), "bf16": ("bf16-mixed", False, "lightning"),
            "fp32-manual": ("32-true", False, "manual"),
            "fp32-graph": ("32-true", False, "cuda-graph"), "bf16-graph": ("bf16-mixed", False, "cuda-graph"),
            "fp32-compiled": ("32-true", True, "lightning"), "bf16-compiled": ("bf16-mixed", True, "lightning")}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def summary(values: list[float]) -> dict:
    med = statistics.median(values)
    return {"median": med, "min": min(values), "max": max(values),
            "spread_pct": 100 * (max(values) - min(values)) / (2 * med) if med else 0.0, "values": values}


# --------------------------------------------------------------------------------------------
# the plain loop


class PlainLoop:
    """The reference: the package's model, data, augmentation and SGD without any framework."""

    def __init__(self, model_name: str, arrays, batch: int, device: torch.device, precision: str,
                 compile_mode: str | None, seed: int = 0, graphed: bool = False):
        train_x, train_y = arrays[0], arrays[1]
        self.x, self.y = train_x.to(device), train_y.to(device)
        self.mean = (self.x.double().mean(0).float() / 255).to(device)
        self.batch, self.device, self.seed, self.i = batch, device, seed, 0
        self.bf16 = precision.startswith("bf16")
        model = build(model_name).to(device).to(memory_format=torch.channels_last)
        self.model = torch.compile(model, mode=compile_mode, dynamic=False) if compile_mode else model
        self.opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4,
                                   fused=True if graphed else None)
        self.perm = torch.randperm(len(self.y), device=device)
        # the same capture as the package's cuda-graph step: forward, loss and backward replayed
        self.graph = GraphedStep(list(model.parameters()), torch.empty(batch, 3, 32, 32, device=device),
                                 self.y[:batch], self.loss, channels_last=True) if graphed else None

    def loss(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False):
            return F.cross_entropy(self.model(xb), yb)

    def step(self) -> None:
        n = len(self.y)
        start = (self.i * self.batch) % (n - self.batch + 1)
        idx = self.perm[start:start + self.batch]
        xb = self.x[idx].float().div_(255).sub_(self.mean)
        xb = random_crop_flip(xb, step_generator(self.seed, self.i, self.device))
        if self.graph is not None:
            self.graph(xb, self.y[idx])
        else:
            loss = self.loss(xb.contiguous(memory_format=torch.channels_last), self.y[idx])
            self.opt.zero_grad(set_to_none=True)
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
# the package: run_one, timed from inside fit


class WindowTimer(pl.Callback):
    """Seconds between the starts of optimizer steps `start` and `stop` (device synchronised there only)."""

    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop
        self.t0 = self.seconds = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step not in (self.start, self.stop):
            return
        _sync(pl_module.device)
        if trainer.global_step == self.start:
            self.t0 = time.perf_counter()
        else:
            self.seconds = time.perf_counter() - self.t0


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
    """The CLI's config (paper profile) for a run of `total_steps` iterations at `batch`."""
    precision, compiled, train_step = VARIANTS[variant]
    overrides = [f"models=[{model_name}]", f"data.batch_size={batch}", f"schedule.ref_batch={batch}",
                 f"schedule.max_steps={total_steps}", "schedule.milestones=[]", f"trainer.precision={precision}",
                 f"trainer.compile={str(compiled).lower()}", f"trainer.train_step={train_step}",
                 f"wandb.mode={wandb_mode}", "trainer.progress=false",
                 *([f"trainer.threads={threads}"] if threads else []), *(data or ["data.dataset=synthetic"])]
    return compose("resnet", "paper", overrides)


def run_package(cfg, run_dir: Path, timer: WindowTimer | None = None) -> float:
    """Wall seconds of one `run_one` call (the whole call: setup, fit, final evaluation, W&B)."""
    t0 = time.perf_counter()
    with extra_callbacks([timer] if timer else []):
        status = run_one(cfg, run_dir, group="bench", name=run_dir.name)
    seconds = time.perf_counter() - t0
    if status["status"] != "done":
        raise RuntimeError(f"run_one ended '{status['status']}': {status.get('error')}")
    return seconds


def bench_variant(model_name: str, variant: str, arrays, data: list[str], batch: int, warmup: int, steps: int,
                  repeats: int, device: torch.device, wandb_mode: str, tmp: Path) -> dict:
    """Plain and package, `repeats` interleaved pairs; images/s of each and their ratio per pair."""
    precision, compiled, train_step = VARIANTS[variant]
    plain = PlainLoop(model_name, arrays, batch, device, precision,
                      compile_mode_for("auto", device.type) if compiled else None, graphed=train_step == "cuda-graph")
    plain.run(warmup)
    plain_rates, package_rates = [], []
    for r in range(repeats):
        plain_rates.append(batch * steps / plain.run(steps))
        cfg = package_config(model_name, batch, warmup + steps + 1, variant, wandb_mode, data=data)
        timer = WindowTimer(warmup, warmup + steps)
        run_package(cfg, tmp / f"{model_name}-{variant}-{r}", timer)
        package_rates.append(batch * steps / timer.seconds)
    ratios = [p / q for p, q in zip(package_rates, plain_rates)]
    return {"plain": summary(plain_rates), "package": summary(package_rates), "ratio": summary(ratios)}


def bench_overhead(lengths: tuple[int, int], repeats: int, device: torch.device, wandb_mode: str, tmp: Path,
                   model_name: str = "resnet8", batch: int = 2, threads: int = 1, variant: str = "fp32") -> dict:
    """Per-step host overhead (ms) of `variant`: marginal time per iteration of run_one minus the
    plain loop's (the plain loop of the same kind: eager, or graphed for a graph variant)."""
    precision, _, train_step = VARIANTS[variant]
    short, long_ = lengths
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    seconds = {"plain": {str(short): [], str(long_): []}, "package": {str(short): [], str(long_): []}}
    try:
        for r in range(repeats):
            for n in (short, long_):
                cfg = package_config(model_name, batch, n, variant, wandb_mode, threads=threads)
                t0 = time.perf_counter()
                PlainLoop(model_name, load_arrays(cfg.data), batch, device, precision, None,
                          graphed=train_step == "cuda-graph").run(n)
                seconds["plain"][str(n)].append(time.perf_counter() - t0)
                seconds["package"][str(n)].append(run_package(cfg, tmp / f"overhead-{variant}-{n}-{r}"))
    finally:
        torch.set_num_threads(before)
    out = {"model": model_name, "batch": batch, "threads": threads, "lengths": [short, long_], "seconds": seconds}
    for path in ("plain", "package"):
        s = seconds[path]
        out[f"{path}_ms_per_step"] = [1000 * (b - a) / (long_ - short) for a, b in zip(s[str(short)], s[str(long_)])]
    out["overhead_ms"] = summary([p - q for p, q in zip(out["package_ms_per_step"], out["plain_ms_per_step"])])
    return out


def bench_pipeline(arrays, batch: int, steps: int, device: torch.device) -> float:
    """Images/s of the data pipeline alone (index, normalise, crop/flip on the device)."""
    x, y = arrays[0].to(device), arrays[1].to(device)
    mean = x.double().mean(0).float() / 255
    _sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        idx = torch.randint(0, len(y), (batch,), device=device)
        random_crop_flip(x[idx].float().div_(255).sub_(mean), step_generator(0, i, device))
    _sync(device)
    return batch * steps / (time.perf_counter() - t0)


def _write(report: dict, path: str | None) -> None:
    if path:
        tmp = Path(path).with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(path)


def _print_table(report: dict) -> None:
    print(f"device: {report['device']}, batch {report['batch']}, torch {report['torch']}, W&B {report['wandb_mode']}; "
          f"images/s, median (min-max) of {report['repeats']} interleaved repeats x {report['steps']} steps "
          f"after {report['warmup']} warm-up steps")
    print(f"{'model':10} {'variant':14} {'plain loop':>22} {'package (run_one)':>22} {'package/plain':>22}")
    for name, variants in report["models"].items():
        for variant, e in variants.items():
            if "error" in e:
                print(f"{name:10} {variant:14} failed: {e['error']}")
                continue
            cells = [f"{e[k]['median']:.0f} ({e[k]['min']:.0f}-{e[k]['max']:.0f})" for k in ("plain", "package")]
            ratio = f"{e['ratio']['median']:.3f} ({e['ratio']['min']:.3f}-{e['ratio']['max']:.3f})"
            print(f"{name:10} {variant:14} {cells[0]:>22} {cells[1]:>22} {ratio:>22}")
    for variant, o in report.get("overhead", {}).items():
        if "error" in o:
            print(f"per-step host overhead, {variant}: failed: {o['error']}")
            continue
        p, q = statistics.median(o["plain_ms_per_step"]), statistics.median(o["package_ms_per_step"])
        h = o["overhead_ms"]
        print(f"per-step host overhead, {variant} ({o['model']}, batch {o['batch']}, {o['threads']} thread, marginal "
              f"time per iteration between {o['lengths'][0]} and {o['lengths'][1]} iterations): plain {p:.2f} ms, "
              f"package {q:.2f} ms, overhead {h['median']:.2f} ms (min {h['min']:.2f}, max {h['max']:.2f})")
    if "pipeline" in report:
        pl_ = report["pipeline"]
        print(f"data pipeline alone: {pl_['images_per_s']:.0f} images/s = {pl_['x_model_rate']:.1f}x the fastest "
              f"package rate")


def main(argv=None) -> int:
    on_gpu_default = torch.cuda.is_available()
    p = argparse.ArgumentParser(prog="python -m reproduce bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=None,
                   help="default: fp32 fp32-graph bf16-graph bf16-compiled on a GPU, fp32 on a CPU (add fp32-compiled "
                        "with --compile)")
    p.add_argument("--compile", action="store_true", help="on a CPU, also time fp32-compiled")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3 on CPU, 30 on GPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per repeat (default 20 on CPU, 300 on GPU)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--overhead-steps", type=int, nargs=2, default=[200, 2200], metavar=("L1", "L2"),
                   help="the two run lengths of the per-step overhead measurement")
    p.add_argument("--overhead-repeats", type=int, default=3)
    p.add_argument("--overhead-variants", nargs="+", choices=sorted(VARIANTS), default=None,
                   help="default: fp32 and fp32-graph on a GPU, fp32 and fp32-manual on a CPU")
    p.add_argument("--no-overhead", action="store_true")
    p.add_argument("--data-root", default=None, help="time on CIFAR-10 from this data.root (default: synthetic)")
    p.add_argument("--wandb", choices=("offline", "disabled"), default=None,
                   help="W&B mode of the package runs (default: offline, as the CLI without a login; disabled without wandb)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--json-out", default=None, help="also write the JSON here, after every measurement")
    p.add_argument("--device", default="cuda" if on_gpu_default else "cpu")
    args = p.parse_args(argv)
    for key in ("batch", "warmup", "steps", "repeats", "overhead_repeats"):
        value = getattr(args, key)
        if value is not None and value <= 0:
            p.error(f"--{key.replace('_', '-')} must be positive, got {value}")
    if not 0 < args.overhead_steps[0] < args.overhead_steps[1]:
        p.error(f"--overhead-steps needs 0 < L1 < L2, got {args.overhead_steps}")
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    if on_gpu and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    variants = args.variants or (["fp32", "fp32-graph", "bf16-graph", "bf16-compiled"] if on_gpu else
                                 ["fp32", "fp32-compiled"] if args.compile else ["fp32"])
    warmup = args.warmup or (30 if on_gpu else 3)
    steps = args.steps or (300 if on_gpu else 20)
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
              "steps": steps, "repeats": args.repeats, "wandb_mode": wandb_mode,
              "data": args.data_root or "synthetic", "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_overhead:  # first: a time limit that cuts the slow compiled variants keeps it
            report["overhead"] = {}
            for variant in args.overhead_variants or (["fp32", "fp32-graph"] if on_gpu else ["fp32", "fp32-manual"]):
                try:
                    report["overhead"][variant] = bench_overhead(tuple(args.overhead_steps), args.overhead_repeats,
                                                                 device, wandb_mode, Path(tmp), variant=variant)
                except Exception as e:  # reported like a failed variant below; the rest go on
                    report["overhead"][variant] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
                _write(report, args.json_out)
        for name in args.models:
            report["models"][name] = {}
            for variant in variants:
                try:
                    entry = bench_variant(name, variant, arrays, data, args.batch, warmup, steps, args.repeats,
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
