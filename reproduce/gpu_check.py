"""The one GPU check (`bash scripts/gpu_check.sh --data ARCHIVE`): every speed measurement in one run.

A GPU machine may be lent for a few minutes from a bare start, so this measures everything in one
command that ends within `--budget-s` seconds, writing what it has after every phase (a later phase
killed by the machine's time limit loses nothing earlier):

  1. data     CIFAR-10 from --data: this project's JPEG archive (prepared here, in parallel) or a
              folder holding cifar-10-batches-py/;
  2. bench    `python -m reproduce bench`: plain loop vs the package's run_one, fp32 vs bf16,
              eager vs torch.compile (CUDA graphs), images/s and ratios from one process; the
              per-step host overhead on resnet8 at batch 2;
  3. resnet20 ResNet-20 for 64k iterations with the paper's ÷10 schedule and with the default
              (halved twice), two processes at once, with the fastest variant that worked in 2;
              beside them an eager fp32 reference run (`--no-reference` leaves it out) that may go
              on until the end of 4, for "compiled/bf16 test error within seed noise of eager fp32";
  4. sweep    Figure 6 (`python -m reproduce resnet`, 9 models, ResNet-110 included) with
              trainer.parallel, its length sized from the rates measured in 3 so that it ends in
              time; when that is under 64k iterations the schedule is scaled (milestones at the same
              fractions, 64 evaluation points) and the output says so. At the deadline its workers
              are stopped (SIGTERM: a checkpoint, then exit) and the report is drawn from what they logged.

Outputs in --out (default $OUT, else ./gpu-check-out): gpu_check.json (every number), gpu_check.log
(this log) and gpu_check.tar.gz (results.md, figures, each run's metrics.csv / status.json / log).
`--cpu-smoke` runs the same phases on a CPU with tiny models and lengths in about a minute.

This orchestrator imports torch, Lightning and the package's own modules inside the phases that use
them, so that an import failing on a bare GPU machine is recorded as that phase's failure in
gpu_check.json instead of ending the check before it wrote anything.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

PAPER = {"max_steps": 64000, "milestones": [32000, 48000], "eval_every": 1000}  # Section 4.2
SMOKE = {"max_steps": 8, "milestones": [4, 6], "eval_every": 4}
FIG6 = ["plain20", "plain32", "plain44", "plain56", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]
SMOKE_SWEEP = ["plain8", "resnet8"]
TARGETS = {"resnet20_64k_s": 120, "sweep_s": 900}  # README, "GPU": ResNet-20 64k <= 2 min, Figure 6 <= 15 min


def variant_overrides(variant: str) -> list[str]:
    """The run overrides of one of the bench's variants (bench.VARIANTS is the one table of them)."""
    from .bench import VARIANTS  # inside: imports torch, which a phase records if it fails
    precision, compiled, train_step = VARIANTS[variant]
    return [f"trainer.precision={precision}", f"trainer.compile={str(compiled).lower()}",
            f"trainer.train_step={train_step}"]


def plan_schedule(fit_steps: float, full: dict) -> dict:
    """The longest schedule of the paper's shape that fits in `fit_steps` iterations: the full one
    when it fits, else the same number of evaluation points, milestones at the same fractions."""
    if fit_steps >= full["max_steps"]:
        return {**full, "scaled": False}
    points = full["max_steps"] // full["eval_every"]
    eval_every = max(1, int(fit_steps) // points)
    steps = max(eval_every * points, 4)
    milestones = [max(1, round(m * steps / full["max_steps"])) for m in full["milestones"]]
    return {"max_steps": steps, "milestones": milestones, "eval_every": eval_every, "scaled": True}


def schedule_overrides(plan: dict) -> list[str]:
    return [f"schedule.max_steps={plan['max_steps']}", f"schedule.milestones=[{','.join(map(str, plan['milestones']))}]",
            f"trainer.eval_every={plan['eval_every']}", f"trainer.log_every={min(50, plan['eval_every'])}"]


def last_logged_step(csv_path: Path) -> int | None:
    """The step of metrics.csv's last row (read from the file's end; None before the first row)."""
    try:
        with open(csv_path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 400))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        head = line.split(",", 1)[0]
        if head.isdigit():
            return int(head)
    return None


class Progress:
    """Samples (seconds since start, last logged step) of a run's metrics.csv while it trains, for
    its steady rate (a line fitted through the second half of the samples: compile and start-up
    excluded) and the time to its first logged step."""

    def __init__(self, run_dir: Path, t0: float):
        self.csv, self.t0, self.samples = run_dir / "metrics.csv", t0, []

    def sample(self) -> None:
        step = last_logged_step(self.csv)
        if step is not None and (not self.samples or step != self.samples[-1][1]):
            self.samples.append((time.monotonic() - self.t0, step))

    def summary(self) -> dict:
        out = {"first_logged_at_s": round(self.samples[0][0], 1) if self.samples else None,
               "last_logged_step": self.samples[-1][1] if self.samples else None}
        pts = self.samples[len(self.samples) // 2:]
        if len(pts) >= 3 and pts[-1][1] > pts[0][1]:
            t, s = np.array(pts, dtype=float).T
            out["steady_it_per_s"] = round(float(np.polyfit(t, s, 1)[0]), 1)
        return out


class Check:
    def __init__(self, args):
        self.args, self.t0 = args, time.monotonic()
        self.deadline = self.t0 + args.budget_s
        self.out, self.work = Path(args.out), Path(args.work)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.report_dir = self.work / "report"
        self.report_dir.mkdir(exist_ok=True)
        self.log_path = self.out / "gpu_check.log"
        self.log_path.write_text("")
        self.result = {"mode": "cpu-smoke" if args.cpu_smoke else "gpu", "budget_s": args.budget_s,
                       "started": time.strftime("%Y-%m-%d %H:%M:%S"), "notes": [], "phases": {}}
        self.smoke = args.cpu_smoke
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    # ---- bookkeeping

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def log(self, msg: str) -> None:
        line = f"[{self.elapsed():6.1f}s] {msg}"
        print(line, flush=True)
        with open(self.log_path, "a") as f:
            f.write(line + "\n")

    def note(self, msg: str) -> None:
        self.result["notes"].append(msg)
        self.log("NOTE: " + msg)

    def save(self) -> None:
        """gpu_check.json and gpu_check.tar.gz as they stand now (after every phase)."""
        self.result["elapsed_s"] = round(self.elapsed(), 1)
        tmp = self.out / ".gpu_check.json.tmp"
        tmp.write_text(json.dumps(self.result, indent=1, default=str))
        os.replace(tmp, self.out / "gpu_check.json")
        (self.report_dir / "results.md").write_text(results_markdown(self.result))
        tmp = self.out / ".gpu_check.tar.gz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(self.report_dir, arcname="gpu_check")
        os.replace(tmp, self.out / "gpu_check.tar.gz")

    # ---- processes

    def start(self, cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log("$ " + " ".join(cmd))
        # a session of its own: a deadline stops the process and all its workers at once
        return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env={**self.env, **(env or {})},
                                start_new_session=True, cwd=self.args.repo)

    def stop(self, proc: subprocess.Popen, grace_s: float) -> None:
        """SIGTERM to the process group (runs checkpoint and stop after their step), SIGKILL after grace_s."""
        if proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def wait(self, procs: dict, until: float, progress: dict | None = None, keep: tuple = ()) -> dict:
        """Wait for `procs` (name -> Popen) until the monotonic time `until`, sampling progress; stop the
        ones still running then (except those named in `keep`). Returns name -> {rc, wall_s, stopped}."""
        started = time.monotonic()
        done: dict = {}
        while True:
            for name, p in procs.items():
                if name not in done and p.poll() is not None:
                    done[name] = {"rc": p.returncode, "wall_s": round(time.monotonic() - started, 1), "stopped": False}
            for pr in (progress or {}).values():
                pr.sample()
            waiting = [n for n in procs if n not in done and n not in keep]
            if not waiting or time.monotonic() >= until:
                break
            time.sleep(1.0 if not self.smoke else 0.2)
        for name in waiting:
            self.stop(procs[name], grace_s=3 if self.smoke else 15)
            done[name] = {"rc": procs[name].returncode, "wall_s": round(time.monotonic() - started, 1), "stopped": True}
        return done

    def python(self, *args) -> list[str]:
        return [sys.executable, *args]

    # ---- phases

    def phase_setup(self) -> None:
        import torch
        import reproduce
        env = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
               "cuda": torch.cuda.is_available(), "reproduce_from": str(Path(reproduce.__file__).parent.parent)}
        try:
            import pytorch_lightning as pl
            env["lightning"] = pl.__version__
        except ImportError as e:
            env["lightning"] = f"missing ({e})"
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
            env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1)
            try:
                env["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm",
                                                    "--format=csv,noheader"], capture_output=True, text=True,
                                                   timeout=20).stdout.strip()
            except (OSError, subprocess.TimeoutExpired) as e:
                env["nvidia_smi"] = f"unavailable ({e})"
        elif not self.smoke:
            self.note("no CUDA device: this is a CPU machine; use --cpu-smoke here")
        self.result["env"] = env
        self.log(f"environment: {env}")

    def phase_data(self) -> None:
        t = time.monotonic()
        src = self.args.data
        if src is None:
            self.data = ["data.dataset=synthetic", "data.synthetic_train=640", "data.synthetic_test=128"]
            self.result["phases"]["data"] = {"source": "synthetic (no --data)"}
            return
        src = Path(src)
        if (src / "cifar-10-batches-py").is_dir():
            root = src
        else:
            from .data.prepare import prepare
            root = self.work / "data"
            prepare(src, root)
        from .data.cifar10 import load_cifar10
        train_x, _, test_x, _ = load_cifar10(root, download=False)
        self.data = [f"data.root={root}"]
        if self.smoke:
            self.data += ["data.val_size=40"]
        self.result["phases"]["data"] = {"source": str(src), "root": str(root), "train_images": len(train_x),
                                         "test_images": len(test_x), "wall_s": round(time.monotonic() - t, 1)}
        self.log(f"data: {self.result['phases']['data']}")

    def phase_bench(self) -> None:
        # the smoke run must not depend on the machine's speed: it is cut only by the whole budget
        cap = self.left() * 0.5 if self.smoke else min(self.left() * 0.35, 170)
        path = self.work / "bench.json"
        if self.smoke:
            args = ["--models", "resnet8", "--batch", "16", "--variants", "fp32", "bf16", "fp32-manual", "--warmup", "1",
                    "--steps", "2", "--repeats", "2", "--overhead-steps", "4", "--overhead-repeats", "2",
                    "--overhead-variants", "fp32-manual"]
        else:
            # the CUDA-graph step first (the fast path), then Lightning's eager step (measured on the
            # H200 before: 2.68 ms overhead, docs/gpu-h200), torch.compile last (its compile is
            # slow, so the cap may cut it); the overhead of the graph step and Lightning's own floor
            args = ["--models", "resnet20", "--variants", "fp32-graph", "bf16-graph", "fp32", "bf16-compiled",
                    "--warmup", "30", "--steps", "100", "--repeats", "8", "--overhead-steps", "200",
                    "--overhead-repeats", "8", "--overhead-variants", "fp32-graph"]
        proc = self.start(self.python("-m", "reproduce", "bench", *args, "--wandb", "disabled", "--json-out", str(path)),
                          self.report_dir / "bench.log")
        status = self.wait({"bench": proc}, time.monotonic() + cap)["bench"]
        bench = json.loads(path.read_text()) if path.exists() else {}
        self.result["phases"]["bench"] = {**bench, **status, "cap_s": round(cap)}
        if status["stopped"]:
            self.note(f"bench stopped at its {cap:.0f} s cap; the variants measured by then are kept")
        for model, variants in bench.get("models", {}).items():
            for variant, e in variants.items():
                if "error" in e:
                    self.log(f"bench {model} {variant}: FAILED {e['error']}")
                else:
                    self.log(f"bench {model} {variant}: plain {e['plain']['median']:.0f} img/s, package "
                             f"{e['package']['median']:.0f} img/s, ratio {e['ratio']['median']:.3f} "
                             f"(quartiles {e['ratio']['q1']:.3f}-{e['ratio']['q3']:.3f}; "
                             f"{e.get('steps_per_call', 1)} steps per call)")
        for variant, o in bench.get("overhead", {}).items():
            self.log(f"bench per-step overhead, {variant}: " +
                     (f"FAILED {o['error']}" if "error" in o else
                      f"{o['overhead_ms']['median']:.2f} ms, {o['extra_calls_per_step']:+.0f} calls per step, "
                      f"{o.get('steps_per_call', 1)} steps per call"
                      + (f" ({o['own_calls_per_step']:+.0f} against Lightning's one-step-per-batch floor)" if "own_calls_per_step" in o else "")))

    def choose_variant(self) -> tuple[str, float]:
        """The fastest variant the bench ran without error, and its package rate (it/s) there."""
        bench = self.result["phases"].get("bench", {})
        model = "resnet8" if self.smoke else "resnet20"
        measured = bench.get("models", {}).get(model, {})
        ok = {v: e["package"]["median"] / bench["batch"] for v, e in measured.items() if "package" in e}
        if not ok:
            fallback = "fp32"
            self.note(f"the bench measured no variant; phases 3-4 use {fallback} with a guessed rate")
            return fallback, 20.0 if self.smoke else 200.0
        best = max(ok, key=ok.get)
        if any("error" in e for e in measured.values()):
            self.note(f"variants that failed in the bench: {[v for v, e in measured.items() if 'error' in e]}")
        return best, ok[best]

    def common(self, variant: str) -> list[str]:
        base = ["wandb.mode=disabled", "trainer.progress=false", *variant_overrides(variant), *self.data]
        if self.smoke:
            base += ["data.batch_size=16", "schedule.ref_batch=16", "data.eval_batch_size=64", "trainer.checkpoint_every=4"]
        return base

    def phase_resnet20(self) -> None:
        variant, rate = self.choose_variant()
        self.variant = variant
        full = SMOKE if self.smoke else PAPER
        model = "resnet8" if self.smoke else "resnet20"
        window = max(self.left() * 0.5, 1.0)  # the other half for the sweep and the report
        startup = 5 if self.smoke else (90 if "compiled" in variant else 20)
        fit = (window - startup) * rate / 1.3  # 1.3: two or three runs share the device
        plan = plan_schedule(math.inf if self.smoke else fit, full)  # smoke: always the same tiny runs
        self.result["phases"]["resnet20"] = {"variant": variant, "bench_it_per_s": round(rate, 1),
                                             "window_s": round(window), "plan": plan, "runs": {}}
        if plan["scaled"]:
            self.note(f"ResNet-20 runs SCALED to {plan['max_steps']} iterations (milestones {plan['milestones']}) to fit "
                      f"{window:.0f} s at the bench's {rate:.0f} it/s; the paper's is {full['max_steps']}")
        dirs = {"resnet20-div10": self.work / "r20" / "resnet-paper" / model,
                "resnet20-halved": self.work / "r20" / "resnet" / model}
        cmds = {"resnet20-div10": ["resnet-paper"], "resnet20-halved": ["resnet"]}
        sched = schedule_overrides(plan)
        t_start = time.monotonic()
        procs, progress = {}, {}
        workers = len(cmds) + (0 if self.args.no_reference else 1)
        threads = {"TORCHINDUCTOR_COMPILE_THREADS": str(max(1, (os.cpu_count() or 1) // workers))}
        for name, (experiment,) in cmds.items():
            procs[name] = self.start(self.python("-m", "reproduce", experiment, f"models=[{model}]",
                                                 f"out_dir={self.work / 'r20'}", *self.common(variant), *sched),
                                     self.report_dir / "resnet20" / f"{name}.log", threads)
            progress[name] = Progress(dirs[name], t_start)
        if not self.args.no_reference:
            # the same schedule as resnet20-div10 in eager fp32: the reference for the compiled/bf16 test error
            dirs["resnet20-eager-fp32"] = self.work / "r20-ref" / "resnet-paper" / model
            procs["resnet20-eager-fp32"] = self.start(
                self.python("-m", "reproduce", "resnet-paper", f"models=[{model}]", f"out_dir={self.work / 'r20-ref'}",
                            *self.common(variant), *variant_overrides("fp32"), *sched),
                self.report_dir / "resnet20" / "resnet20-eager-fp32.log")
            progress["resnet20-eager-fp32"] = Progress(dirs["resnet20-eager-fp32"], t_start)
        self.r20 = (procs, progress, dirs, t_start)
        waited = self.wait(procs, t_start + window, progress, keep=("resnet20-eager-fp32",))
        self.record_r20(waited)
        self.save()

    def record_r20(self, waited: dict) -> None:
        from .runs import read_status
        procs, progress, dirs, _ = self.r20
        runs = self.result["phases"]["resnet20"]["runs"]
        for name in procs:
            st = read_status(dirs[name])
            entry = {"process": waited.get(name), **progress[name].summary(),
                     **{k: st.get(k) for k in ("status", "step", "total_steps", "wall_s", "final_test_err",
                                               "best_test_err", "last_train_err", "error")}}
            rate = entry.get("steady_it_per_s")
            if rate and entry["first_logged_at_s"] is not None:
                entry["projected_64k_s"] = round(entry["first_logged_at_s"] + PAPER["max_steps"] / rate)
            runs[name] = entry
            self.log(f"{name}: {entry}")
        draw_resnet20(dirs, self.report_dir / "resnet20.png")

    def phase_sweep(self) -> None:
        r20 = self.result["phases"]["resnet20"]
        full = SMOKE if self.smoke else PAPER
        models = SMOKE_SWEEP if self.smoke else FIG6
        window = self.left() - (8 if self.smoke else 30)  # the report and packing after it
        rates = [r.get("steady_it_per_s") for n, r in r20["runs"].items() if n != "resnet20-eager-fp32"]
        rates = [r for r in rates if r]
        firsts = [r["first_logged_at_s"] for n, r in r20["runs"].items()
                  if n != "resnet20-eager-fp32" and r.get("first_logged_at_s") is not None]
        # device throughput in ResNet-20 steps/s: the runs of phase 3 together (a lower bound if the
        # device was not yet saturated), or the bench's single run if that was faster
        throughput = max(sum(rates), r20["bench_it_per_s"]) if rates else r20["bench_it_per_s"]
        startup = (max(firsts) if firsts else 10) * (1 if self.smoke else 2.5)  # deeper nets compile longer
        work_per_step = sum(depth(m) for m in models) / depth(models[-1] if self.smoke else "resnet20")
        fit = (window - startup) * throughput / work_per_step / 1.2
        plan = plan_schedule(math.inf if self.smoke else fit, full)
        parallel = min(self.args.parallel, len(models))
        self.result["phases"]["sweep"] = {"models": models, "parallel": parallel, "variant": self.variant,
                                          "window_s": round(window), "throughput_r20_it_per_s": round(throughput, 1),
                                          "startup_allowance_s": round(startup), "plan": plan}
        if plan["scaled"]:
            self.note(f"Figure 6 sweep SCALED to {plan['max_steps']} iterations (milestones {plan['milestones']}, "
                      f"evaluation every {plan['eval_every']}) to fit {window:.0f} s; the paper's is {full['max_steps']}")
        exp_dir = self.work / "sweep" / "resnet"
        t_start = time.monotonic()
        threads = {"TORCHINDUCTOR_COMPILE_THREADS": str(max(1, (os.cpu_count() or 1) // parallel))}
        proc = self.start(self.python("-m", "reproduce", "resnet", f"models=[{','.join(models)}]",
                                      f"trainer.parallel={parallel}", f"out_dir={self.work / 'sweep'}",
                                      *self.common(self.variant), *schedule_overrides(plan)),
                          self.report_dir / "sweep" / "sweep.log", threads)
        progress = {m: Progress(exp_dir / m, t_start) for m in models}
        r20_procs, r20_progress, _, _ = self.r20
        ref = {k: v for k, v in r20_procs.items() if k == "resnet20-eager-fp32" and v.poll() is None}
        waited = self.wait({"sweep": proc, **ref}, self.deadline - (5 if self.smoke else 20),
                           {**progress, **{k: r20_progress[k] for k in ref}})
        if ref:
            self.record_r20({**{n: r["process"] for n, r in r20["runs"].items()}, **{k: waited[k] for k in ref}})
        self.record_sweep(exp_dir, models, waited["sweep"], progress)

    def record_sweep(self, exp_dir: Path, models: list[str], waited: dict, progress: dict) -> None:
        from .report import curves_figure, load_runs, results_rows, write_results
        from .runs import read_status
        sweep = self.result["phases"]["sweep"]
        sweep["process"] = waited
        sweep["runs"] = {}
        for m in models:
            st = read_status(exp_dir / m)
            sweep["runs"][m] = {**progress[m].summary(), **{k: st.get(k) for k in (
                "status", "step", "total_steps", "wall_s", "final_test_err", "best_test_err", "last_train_err", "error")}}
            self.log(f"sweep {m}: {sweep['runs'][m]}")
        done = all(r.get("status") == "done" for r in sweep["runs"].values())
        sweep["complete"] = done
        if not done:
            self.note("the sweep did not finish in time: its figure and table show what the runs logged by the deadline")
        runs = load_runs([exp_dir / m for m in models])
        if runs:
            plan = sweep["plan"]
            title = (f"Figure 6 sweep on {self.result['env'].get('gpu', 'cpu')}: {plan['max_steps']} iterations"
                     f"{' (SCALED from 64k)' if plan['scaled'] and not self.smoke else ''}, lr x0.5 at {plan['milestones']}"
                     f"{'' if done else ' — stopped at the deadline'}")
            curves_figure(runs, self.report_dir / "sweep.png", title)
            write_results(results_rows(runs), self.report_dir / "sweep-results.md", f"# {title}")
        for m in models:
            for name in ("metrics.csv", "status.json", "worker.log"):
                src = exp_dir / m / name
                if src.exists():
                    dest = self.report_dir / "sweep" / m / name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(tail_bytes(src))
        for name, d in self.r20[2].items():
            for fname in ("metrics.csv", "status.json"):
                if (d / fname).exists():
                    dest = self.report_dir / "resnet20" / name / fname
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(tail_bytes(d / fname))
        self.save()

    def targets(self) -> None:
        r20 = self.result["phases"].get("resnet20", {}).get("runs", {})
        sweep = self.result["phases"].get("sweep", {})
        out = {}
        proj = [r.get("projected_64k_s") for n, r in r20.items() if n != "resnet20-eager-fp32" and r.get("projected_64k_s")]
        if proj:
            out["resnet20_64k_s"] = {"target": TARGETS["resnet20_64k_s"], "measured_or_projected": max(proj),
                                     "met": max(proj) <= TARGETS["resnet20_64k_s"]}
        if sweep.get("process"):
            steps, wall = sweep["plan"]["max_steps"], sweep["process"]["wall_s"]
            firsts = [r["first_logged_at_s"] for r in sweep["runs"].values() if r.get("first_logged_at_s") is not None]
            start = min(max(firsts), wall) if firsts else 0.0  # start-up and compile: paid once, not per iteration
            out["sweep"] = {"target_s": TARGETS["sweep_s"], "iterations": steps, "wall_s": wall,
                            "complete": sweep.get("complete"),
                            "projected_64k_s": round(start + (wall - start) * PAPER["max_steps"] / steps)
                            if sweep.get("complete") else None}
        ref, fast = r20.get("resnet20-eager-fp32", {}), r20.get("resnet20-div10", {})
        if ref.get("final_test_err") is not None and fast.get("final_test_err") is not None:
            out["test_err_fast_vs_eager_fp32"] = {"fast": fast["final_test_err"], "eager_fp32": ref["final_test_err"],
                                                  "difference": round(fast["final_test_err"] - ref["final_test_err"], 2)}
        self.result["targets"] = out


def fmt(value) -> str:
    return "—" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def depth(model: str) -> int:
    from .models import depth_of
    return depth_of(model)


def tail_bytes(path: Path, limit: int = 400_000) -> bytes:
    data = path.read_bytes()
    return data if len(data) <= limit else b"...(cut)...\n" + data[-limit:]


def draw_resnet20(dirs: dict, path: Path) -> None:
    """Training (dashed) and test (bold) error of the phase-3 runs against iterations."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .runs import read_metrics
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for (name, d), c in zip(dirs.items(), ("#d55e00", "#0072b2", "#444444")):
        if not (d / "metrics.csv").exists():
            continue
        m = read_metrics(d / "metrics.csv")
        for key, style, width in (("train/err", "--", 1.0), ("test/err", "-", 2.0)):
            if m.get(key):
                xs, ys = zip(*m[key])
                ax.plot(xs, ys, style, color=c, lw=width, label=name if key == "test/err" else None)
    ax.set_xlabel("iterations")
    ax.set_ylabel("error (%)   dashed: training, bold: test")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def results_markdown(result: dict) -> str:
    """The human summary: environment, bench table, ResNet-20 runs, sweep, targets, notes."""
    env, ph = result.get("env", {}), result["phases"]
    lines = [f"# GPU check ({result['mode']}), {result['started']}", "",
             f"{env.get('gpu', 'no GPU')}; torch {env.get('torch')}, Lightning {env.get('lightning')}, "
             f"Python {env.get('python')}, {env.get('cpu_count')} CPUs. Budget {result['budget_s']} s, "
             f"elapsed {result.get('elapsed_s')} s.", ""]
    if result["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in result["notes"]] + [""]
    bench = ph.get("bench", {})
    if bench.get("models"):
        lines += ["## Bench (images/s, median (quartiles) of interleaved pairs of windows)", "",
                  "| model | variant | plain loop | package (run_one) | package/plain |", "|---|---|---|---|---|"]
        for model, variants in bench["models"].items():
            for variant, e in variants.items():
                if "error" in e:
                    lines.append(f"| {model} | {variant} | failed: {e['error']} | | |")
                    continue
                cell = [f"{e[k]['median']:.0f} ({e[k]['q1']:.0f}-{e[k]['q3']:.0f})" for k in ("plain", "package")]
                lines.append(f"| {model} | {variant} | {cell[0]} | {cell[1]} | {e['ratio']['median']:.3f} "
                             f"({e['ratio']['q1']:.3f}-{e['ratio']['q3']:.3f}) |")
        for variant, o in bench.get("overhead", {}).items():
            if "error" in o:
                lines += ["", f"Per-step host overhead, {variant}: failed: {o['error']}"]
                continue
            h = o["overhead_ms"]
            lines += ["", f"Per-step host overhead over the plain loop, {variant} ({o.get('steps_per_call', 1)} steps per "
                      f"call; {o['model']}, batch {o['batch']}, "
                      f"{o['threads']} thread, {o['pairs']} interleaved pairs of {o['window']} steps): {h['median']:.2f} ms "
                      f"(quartiles {h['q1']:.2f}-{h['q3']:.2f}), {o['extra_calls_per_step']:+.0f} function calls "
                      + (f"({o['own_calls_per_step']:+.0f} against Lightning's one-step-per-batch floor of the same loop) "
                         if "own_calls_per_step" in o else "")
                      + f"per step; the plain loop {statistics.median(o['plain_ms_per_step']):.2f} ms per step."]
        lines.append("")
    for key, title in (("resnet20", "ResNet-20 runs"), ("sweep", "Figure 6 sweep")):
        p = ph.get(key)
        if not p or not p.get("runs"):
            continue
        plan = p["plan"]
        lines += [f"## {title}: {plan['max_steps']} iterations{' (SCALED)' if plan['scaled'] else ''}, milestones "
                  f"{plan['milestones']}, variant {p['variant']}", "",
                  "| run | status | step | wall (s) | first log at (s) | steady it/s | projected 64k (s) | final test err (%) |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, r in p["runs"].items():
            lines.append(f"| {name} | {r.get('status')} | {r.get('step') or r.get('last_logged_step')} | {r.get('wall_s')} | "
                         f"{fmt(r.get('first_logged_at_s'))} | {fmt(r.get('steady_it_per_s'))} | {r.get('projected_64k_s', '—')} | "
                         f"{fmt(r.get('final_test_err'))} |")
        lines += ["", f"![{key}]({'resnet20.png' if key == 'resnet20' else 'sweep.png'})", ""]
    if result.get("targets"):
        lines += ["## Targets", "", "```", json.dumps(result["targets"], indent=1), "```", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bash scripts/gpu_check.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="cifar10-jpeg.tar.xz, or a folder holding cifar-10-batches-py/ "
                                                "(needed on a GPU; --cpu-smoke without it uses synthetic data)")
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu-check-out")
    p.add_argument("--work", default=None, help="runs and prepared data (default: /tmp/gpu-check)")
    p.add_argument("--budget-s", type=float, default=480.0, help="wall seconds for everything after the install")
    p.add_argument("--parallel", type=int, default=9, help="trainer.parallel of the Figure 6 sweep")
    p.add_argument("--no-reference", action="store_true", help="leave out the eager fp32 reference run")
    p.add_argument("--cpu-smoke", action="store_true", help="the same phases on a CPU, tiny, in about a minute")
    p.add_argument("--repo", default=str(Path(__file__).resolve().parent.parent))
    args = p.parse_args(argv)
    if args.budget_s <= 0 or args.parallel <= 0:
        p.error("--budget-s and --parallel must be positive")
    if args.data is not None and not Path(args.data).exists():
        p.error(f"--data {args.data}: no such file or folder")
    if args.data is None and not args.cpu_smoke:
        p.error("--data ARCHIVE|FOLDER is needed (e.g. --data .device/cifar10-jpeg.tar.xz)")
    args.work = args.work or ("/tmp/gpu-check-smoke" if args.cpu_smoke else "/tmp/gpu-check")
    check = Check(args)
    check.log(f"gpu_check: budget {args.budget_s:.0f} s, out {check.out}, work {check.work}")
    phases = [("setup", check.phase_setup), ("data", check.phase_data), ("bench", check.phase_bench),
              ("resnet20", check.phase_resnet20), ("sweep", check.phase_sweep)]
    for name, phase in phases:
        t = time.monotonic()
        check.log(f"=== phase {name} ({check.left():.0f} s left)")
        try:
            phase()
        except Exception as e:  # one phase failing must not lose the others' results
            check.note(f"phase {name} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            if name == "data":
                check.save()
                return 1
        check.result["phases"].setdefault(name, {})["phase_wall_s"] = round(time.monotonic() - t, 1)
        check.targets()
        check.save()
    check.log(f"done in {check.elapsed():.0f} s: {check.out / 'gpu_check.json'}, {check.out / 'gpu_check.tar.gz'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
