"""The one GPU check (`bash scripts/gpu_check.sh --data ARCHIVE --budget-s N`): every GPU check in one run.

A GPU machine may be lent for a few minutes from a bare start, so this checks everything in one
command that ends within `--budget-s` seconds, writing what it has after every phase (a later phase
killed by the machine's time limit loses nothing earlier):

  1. setup  versions, the device;
  2. data   CIFAR-10 from --data: this project's JPEG archive (prepared here, in parallel) or a
            folder holding cifar-10-batches-py/;
  3. bench  `scripts/bench.py` on the device, bf16 + the CUDA-graph step (STACK_OVERRIDES): one
            run_one of each of STACK_MODELS against the plain loop (the single run's rate), then
            stacks of STACK_SIZES runs of each (`trainer.stack`, stacked.py), every model's stack of
            N before any larger N. From these rates, the wall time of the training steps of
            Figure 6 and of table6 as the package stacks them (`stack_groups` of their plans), and
            of their runs one after another unstacked, printed beside the targets (TARGETS);
  4. tests  the tests that need a CUDA device (CUDA_TESTS, `pytest -k cuda`; skipped on a CPU);
  5. sweep  Figure 6 (`python -m reproduce resnet`, 9 models, ResNet-110 included) at its full
            64k iterations with `trainer.stack=on` and STACK_OVERRIDES, until the deadline: then
            the stack training is stopped (SIGTERM: a checkpoint, then exit) and the report is
            drawn from what the runs logged; each reached stack's rate (evaluations included)
            projects its 64k wall time.

Outputs in --out (default ./gpu-check-out): gpu_check.json (every number), gpu_check.log (this log)
and gpu_check.tar.gz (results.md, the sweep's figure, each run's metrics.csv / status.json / log);
the runs and the prepared data in --work (default OUT/work). `--cpu-smoke` runs the same phases on
a CPU with tiny models and lengths.

This orchestrator imports torch and the package inside the phases that use them, so that an import
failing on a bare GPU machine is recorded as that phase's failure in gpu_check.json instead of
ending the check before it wrote anything.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PAPER = {"max_steps": 64000, "milestones": [32000, 48000], "eval_every": 1000}  # Section 4.2
SMOKE = {"max_steps": 8, "milestones": [4, 6], "eval_every": 4}
FIG6 = ["plain20", "plain32", "plain44", "plain56", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]
SMOKE_SWEEP = ["plain8", "resnet8"]
CUDA_TESTS = ["tests/test_train_step.py", "tests/test_gpu_path.py"]
# README, "GPU": ResNet-20 64k <= 2 min; issue 26: on one H200, Figure 6 (9 runs of 64k) <= 10 min
# and table6 (25 runs of 64k) <= 30 min
TARGETS = {"resnet20_64k_s": 120, "figure6_s": 600, "table6_s": 1800}
STACK_OVERRIDES = ["trainer.precision=bf16-mixed", "trainer.train_step=cuda-graph"]
# the depths measured, the shallowest, a middle one and the deepest of Figure 6 (the ones between
# are interpolated), and the stack sizes: 1 (the stacked net's cost against the net itself),
# Figure 6's 2, table6's 5, and larger ones. A sweep trains a run without a partner as run_one
# (sweep.run_plans), so the projections take a lone run at run_one's rate
STACK_MODELS, STACK_SIZES = ["resnet20", "resnet56", "resnet110"], [1, 2, 5, 10, 20]
# the experiments projected: (experiment, overrides of its paper profile)
PROJECTED = {"figure6": ("resnet", []), "table6": ("table6", [])}
# --cpu-smoke: the same code paths, tiny (depth 14 between the two measured)
SMOKE_STACK_MODELS, SMOKE_STACK_SIZES = ["resnet8", "resnet20"], [1, 2]
SMOKE_PROJECTED = {"figure6": ("resnet", ["models=[plain8,resnet8,plain14,resnet14,resnet20]"]),
                   "table6": ("table6", ["models=[resnet8,resnet14,resnet20]", "seeds=[0,1]"])}


def stack_rates(bench: dict) -> tuple[dict, dict]:
    """From a bench report: {(depth, N): iterations/s of a stack of N} and {(depth, 1): iterations/s
    of one run_one} (the variant the stacks ran), medians over the interleaved pairs."""
    from reproduce.model_names import depth_of
    stack, batch = bench.get("stack", {}), bench.get("batch")
    rates = {(depth_of(m), int(n)): e["stack"]["median"] / (int(n) * batch)
             for m, entries in stack.get("models", {}).items() for n, e in entries.items() if "stack" in e}
    single = {(depth_of(m), 1): v[stack["variant"]]["package"]["median"] / batch
              for m, v in bench.get("models", {}).items() if "package" in v.get(stack.get("variant"), {})}
    return rates, single


def rate_at(rates: dict, depth: int, n: int) -> float | None:
    """Iterations/s of a stack of n nets of `depth`: measured, or interpolated between the nearest
    measured depths at that n, linearly in seconds per iteration (a deeper CIFAR net is more of the
    same blocks); None where no measured depth lies on both sides."""
    if (depth, n) in rates:
        return rates[depth, n]
    below = [d for d, k in rates if k == n and d < depth]
    above = [d for d, k in rates if k == n and d > depth]
    if not below or not above:
        return None
    a, b = max(below), min(above)
    s_a, s_b = 1 / rates[a, n], 1 / rates[b, n]
    return 1 / (s_a + (s_b - s_a) * (depth - a) / (b - a))


def experiment_stacks(experiment: str, overrides: list[str]) -> list[tuple[list[str], int, int]]:
    """The stacks `trainer.stack=on` trains for an experiment (paper profile): [(run names, depth,
    iterations)], grouped by the package's own `stack_groups`."""
    from reproduce.config import compose
    from reproduce.experiments import kind_of
    from reproduce.model_names import depth_of
    from reproduce.schedules import Schedule
    from reproduce.stacked import stack_groups
    cfg = compose(experiment, "paper", ["trainer.stack=on", *overrides])
    groups = stack_groups(kind_of(cfg).plans(cfg), cfg.trainer.stack_max)
    return [([name for name, _ in g], depth_of(g[0][1].models[0]), Schedule.for_run(g[0][1]).total_steps)
            for g in groups]


def project(stacks: list[tuple[list[str], int, int]], rates: dict, single: dict) -> dict:
    """Seconds of training steps (evaluation and start-up excluded) of `stacks` one after another,
    stacked at the measured stack rates (a stack of one at run_one's: the sweep trains it so), and
    as their runs one after another, each at run_one's rate."""
    rows = []
    for names, depth, steps in stacks:
        r1 = rate_at(single, depth, 1)
        r = r1 if len(names) == 1 else rate_at(rates, depth, len(names))
        rows.append({"runs": names, "depth": depth, "iterations": steps, "it_per_s": r,
                     "steps_s": steps / r if r else None, "unstacked_steps_s": len(names) * steps / r1 if r1 else None})

    def total(key):
        return round(sum(row[key] for row in rows)) if all(row[key] for row in rows) else None
    return {"stacks": rows, "stacked_steps_s": total("steps_s"), "unstacked_steps_s": total("unstacked_steps_s")}


def schedule_overrides(plan: dict) -> list[str]:
    """The sweep's schedule: `plan`'s length, lr drops and evaluation interval."""
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
        self.args, self.smoke, self.t0 = args, args.cpu_smoke, time.monotonic()
        self.deadline = self.t0 + args.budget_s
        self.out, self.work = Path(args.out), Path(args.work)
        self.report_dir = self.work / "report"
        self.report_dir.mkdir(parents=True, exist_ok=True)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out / "gpu_check.log"
        self.log_path.write_text("")
        self.result = {"mode": "cpu-smoke" if self.smoke else "gpu", "budget_s": args.budget_s,
                       "started": time.strftime("%Y-%m-%d %H:%M:%S"), "notes": [], "phases": {}}
        self.data = ["data.dataset=synthetic", "data.synthetic_train=640", "data.synthetic_test=128"]

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

    def run(self, name: str, cmd: list[str], cap_s: float, progress: dict = (), env: dict | None = None) -> dict:
        """`cmd` (in the repository, its output in report/NAME.log) until it ends or `cap_s` passes,
        sampling `progress`; then SIGTERM to its process group (runs checkpoint and stop after their
        step), SIGKILL if it is still there. Returns {rc, wall_s, stopped}."""
        log = self.report_dir / f"{name}.log"
        self.log("$ " + " ".join(cmd))
        started = time.monotonic()
        # a session of its own: a deadline stops the process and all its workers at once
        proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        while proc.poll() is None and time.monotonic() < started + cap_s:
            for p in dict(progress).values():
                p.sample()
            time.sleep(0.2 if self.smoke else 1.0)
        stopped = proc.poll() is None
        for sig, grace in ((signal.SIGTERM, 3 if self.smoke else 15), (signal.SIGKILL, 5)):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=grace)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        for p in dict(progress).values():
            p.sample()
        return {"rc": proc.returncode, "wall_s": round(time.monotonic() - started, 1), "stopped": stopped}

    def phase_setup(self) -> None:
        import pytorch_lightning as pl
        import torch
        import reproduce
        env = {"python": platform.python_version(), "torch": torch.__version__, "lightning": pl.__version__,
               "cpu_count": os.cpu_count(), "cuda": torch.cuda.is_available(),
               "reproduce_from": str(Path(reproduce.__file__).parent.parent)}
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
            env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1)
        elif not self.smoke:
            self.note("no CUDA device: this is a CPU machine; use --cpu-smoke here")
        self.result["env"] = env
        self.log(f"environment: {env}")

    def phase_data(self) -> None:
        t, src = time.monotonic(), self.args.data
        if src is None:
            self.result["phases"]["data"] = {"source": "synthetic (no --data)"}
            return
        src = Path(src).resolve()  # the runs start in the repository
        root = src if (src / "cifar-10-batches-py").is_dir() else self.work / "data"
        if root != src:
            subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_cifar10.py"), str(src), str(root)], check=True)
        from reproduce.data.cifar10 import load_cifar10
        train_x, _, test_x, _ = load_cifar10(root, download=False)
        self.data = [f"data.root={root}", *(["data.val_size=40"] if self.smoke else [])]
        self.result["phases"]["data"] = {"source": str(src), "root": str(root), "train_images": len(train_x),
                                         "test_images": len(test_x), "wall_s": round(time.monotonic() - t, 1)}
        self.log(f"data: {self.result['phases']['data']}")

    def phase_tests(self) -> None:
        status = self.run("tests", [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *CUDA_TESTS,
                                    "-k", "cuda"], self.left() * 0.2 if self.smoke else min(self.left() * 0.3, 120))
        lines = (self.report_dir / "tests.log").read_text(errors="replace").strip().splitlines()
        self.result["phases"]["tests"] = {**status, "summary": lines[-1] if lines else ""}
        self.log(f"tests: {self.result['phases']['tests']}")
        if status["rc"] != 0:
            self.note(f"the CUDA tests failed (exit {status['rc']}): report/tests.log")

    def phase_bench(self) -> None:
        from reproduce.model_names import depth_of
        path = self.work / "bench.json"
        models = SMOKE_STACK_MODELS if self.smoke else STACK_MODELS
        # bench.py's --cpu-smoke: its tiny batch, windows and data, the CPU's fp32
        args = (["--cpu-smoke", "--models", *models, "--variants", "fp32", "--repeats", "2", "--stack",
                 *map(str, SMOKE_STACK_SIZES)] if self.smoke else
                ["--models", *models, "--variants", "bf16-graph", "--stack", *map(str, STACK_SIZES),
                 "--stack-variant", "bf16-graph", "--warmup", "20", "--steps", "50", "--repeats", "4"])
        # the smoke run is cut only by the whole budget, so that it does not depend on the machine's speed
        cap = self.left() * 0.5 if self.smoke else min(self.left() * 0.5, 240)
        status = self.run("bench", [sys.executable, "scripts/bench.py", *args, "--no-overhead", "--wandb", "disabled",
                                    "--json-out", str(path)], cap)
        bench = json.loads(path.read_text()) if path.exists() else {}
        self.result["phases"]["bench"] = {**bench, **status, "cap_s": round(cap)}
        if status["stopped"]:
            self.note(f"bench stopped at its {cap:.0f} s cap; the measurements made by then are kept")
        for model, variants in bench.get("models", {}).items():
            for variant, e in variants.items():
                self.log(f"bench {model} {variant}: " + (f"FAILED {e['error']}" if "error" in e else
                         f"plain {e['plain']['median']:.0f} img/s, package {e['package']['median']:.0f} img/s, "
                         f"ratio {e['ratio']['median']:.3f} (quartiles {e['ratio']['q1']:.3f}-{e['ratio']['q3']:.3f})"))
        rates, single = stack_rates(bench) if bench else ({}, {})
        for model, entries in bench.get("stack", {}).get("models", {}).items():
            for n, e in entries.items():
                one = single.get((depth_of(model), 1))
                self.log(f"bench {model} stack of {n}: " + (f"FAILED {e['error']}" if "error" in e else
                         f"{e['stack']['median']:.0f} img/s ({e['stack']['median'] / (int(n) * bench['batch']):.1f} it/s), "
                         f"plain loop {e['plain']['median']:.0f} img/s, stack/plain {e['ratio']['median']:.3f} "
                         f"(quartiles {e['ratio']['q1']:.3f}-{e['ratio']['q3']:.3f})" +
                         (f", {e['stack']['median'] / (bench['batch'] * one):.2f}x the images/s of one run_one (of {n} "
                          f"run_one's one after another)" if one else "")))
        projections = self.result["projections"] = {}
        for name, (experiment, overrides) in (SMOKE_PROJECTED if self.smoke else PROJECTED).items():
            projections[name] = p = project(experiment_stacks(experiment, overrides), rates, single)
            target = TARGETS[f"{name}_s"]
            self.log(f"projection {name} ({len(p['stacks'])} stacks, training steps only): stacked "
                     f"{p['stacked_steps_s']} s, unstacked one run after another {p['unstacked_steps_s']} s; "
                     f"target <= {target} s" + ("" if p["stacked_steps_s"] is None else
                                                " (met)" if p["stacked_steps_s"] <= target else " (NOT met)"))

    def phase_sweep(self) -> None:
        full, models = (SMOKE, SMOKE_SWEEP) if self.smoke else (PAPER, FIG6)
        overrides = [] if self.smoke else STACK_OVERRIDES  # a CPU has neither bf16 kernels worth timing nor graphs
        window = self.left() - (8 if self.smoke else 30)  # the report and packing after it
        sweep = self.result["phases"]["sweep"] = {"models": models, "stack": "on", "overrides": overrides,
                                                  "window_s": round(window), "plan": full}
        exp_dir = self.work / "sweep" / "resnet"
        small = ["data.batch_size=16", "schedule.ref_batch=16", "data.eval_batch_size=64", "trainer.checkpoint_every=4"]
        cmd = [sys.executable, "-m", "reproduce", "resnet", f"models=[{','.join(models)}]", "trainer.stack=on",
               "trainer.parallel=1", f"out_dir={self.work / 'sweep'}", "wandb.mode=disabled", "trainer.progress=false",
               *overrides, *self.data, *(small if self.smoke else []), *schedule_overrides(full)]
        progress = {m: Progress(exp_dir / m, time.monotonic()) for m in models}
        sweep["process"] = self.run("sweep", cmd, window, progress)
        self.record_sweep(exp_dir, models, progress)

    def record_sweep(self, exp_dir: Path, models: list[str], progress: dict) -> None:
        from reproduce.report import curves_figure, load_runs, results_rows, write_results
        from reproduce.runs import read_status
        sweep = self.result["phases"]["sweep"]
        sweep["runs"] = {}
        for m in models:
            st = read_status(exp_dir / m)
            sweep["runs"][m] = {**progress[m].summary(), **{k: st.get(k) for k in (
                "status", "step", "total_steps", "wall_s", "final_test_err", "best_test_err", "last_train_err", "error",
                "stack")}}
            self.log(f"sweep {m}: {sweep['runs'][m]}")
        sweep["complete"] = done = all(r.get("status") == "done" for r in sweep["runs"].values())
        if not done:
            self.note("the sweep did not finish in time: its figure and table show what the runs logged by the deadline")
        runs = load_runs([exp_dir / m for m in models])
        if runs:
            plan = sweep["plan"]
            title = (f"Figure 6 sweep on {self.result.get('env', {}).get('gpu', 'cpu')}, stacked: {plan['max_steps']} "
                     f"iterations, lr x0.5 at {plan['milestones']}{'' if done else ' — stopped at the deadline'}")
            curves_figure(runs, self.report_dir / "sweep.png", title)
            write_results(results_rows(runs), self.report_dir / "sweep-results.md", f"# {title}")
        for m in models:
            for name in ("metrics.csv", "status.json", "worker.log"):
                if (exp_dir / m / name).exists():  # the tail of a long file: the tarball stays small
                    (self.report_dir / "sweep" / m).mkdir(parents=True, exist_ok=True)
                    (self.report_dir / "sweep" / m / name).write_bytes((exp_dir / m / name).read_bytes()[-400_000:])

    def targets(self) -> None:
        ph, out = self.result["phases"], {}
        bench = ph.get("bench", {}).get("models", {}).get("resnet20", {})
        rates = [e["package"]["median"] / ph["bench"]["batch"] for e in bench.values() if "package" in e]
        if rates:  # the training steps alone, one process with the device to itself
            out["resnet20_64k_s"] = {"target": TARGETS["resnet20_64k_s"], "steps_only_s": round(PAPER["max_steps"] / max(rates)),
                                     "met": PAPER["max_steps"] / max(rates) <= TARGETS["resnet20_64k_s"]}
        for name, p in self.result.get("projections", {}).items():
            target = TARGETS[f"{name}_s"]
            out[f"{name}_s"] = {"target": target, "stacked_steps_only_s": p["stacked_steps_s"],
                                "unstacked_steps_only_s": p["unstacked_steps_s"],
                                "met": None if p["stacked_steps_s"] is None else p["stacked_steps_s"] <= target}
        sweep = ph.get("sweep", {})
        if sweep.get("process"):
            steps, wall = sweep["plan"]["max_steps"], sweep["process"]["wall_s"]
            stacks = {}
            for m, r in sweep["runs"].items():
                stacks.setdefault(tuple(r.get("stack") or [m]), r)
            # each stack reached: the sweep's time to the stack's first logged step (the stacks
            # before it, its start-up, data and capture) plus its length at its steady rate,
            # evaluations included: when the sweep would be done with it
            reached = [{"runs": list(names), "steady_it_per_s": r["steady_it_per_s"],
                        "projected_end_s": round(r["first_logged_at_s"] + steps / r["steady_it_per_s"])}
                       for names, r in stacks.items() if r.get("steady_it_per_s")]
            out["sweep"] = {"target_s": TARGETS["figure6_s"], "iterations": steps, "wall_s": wall,
                            "complete": sweep["complete"], "measured_s": wall if sweep["complete"] else None,
                            "stacks": reached}
        self.result["targets"] = out


def results_markdown(result: dict) -> str:
    """The human summary: environment, tests, bench table, sweep, targets, notes."""
    env, ph = result.get("env", {}), result["phases"]
    lines = [f"# GPU check ({result['mode']}), {result['started']}", "",
             f"{env.get('gpu', 'no GPU')}; torch {env.get('torch')}, Lightning {env.get('lightning')}, "
             f"Python {env.get('python')}, {env.get('cpu_count')} CPUs. Budget {result['budget_s']} s, "
             f"elapsed {result.get('elapsed_s')} s.", ""]
    if result["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in result["notes"]] + [""]
    if "tests" in ph:
        lines += [f"CUDA tests ({' '.join(CUDA_TESTS)} -k cuda): {ph['tests'].get('summary')}", ""]
    bench = ph.get("bench", {})
    cell = lambda s, d: f"{s['median']:.{d}f} ({s['q1']:.{d}f}-{s['q3']:.{d}f})"  # noqa: E731
    if bench.get("models"):
        lines += ["## Bench (images/s, median (quartiles) of interleaved pairs of windows)", "",
                  "| model | variant | plain loop | package (run_one) | package/plain |", "|---|---|---|---|---|"]
        for model, variants in bench["models"].items():
            for variant, e in variants.items():
                lines.append(f"| {model} | {variant} | failed: {e['error']} | | |" if "error" in e else
                             f"| {model} | {variant} | {cell(e['plain'], 0)} | {cell(e['package'], 0)} | {cell(e['ratio'], 3)} |")
        for variant, o in bench.get("overhead", {}).items():
            lines += ["", f"Per-step host overhead over the plain loop, {variant}: " + (f"failed: {o['error']}" if "error" in o
                      else f"{cell(o['overhead_ms'], 2)} ms ({o['model']}, batch {o['batch']}, {o['threads']} thread, "
                           f"{o['pairs']} interleaved pairs of {o['window']} steps)")]
        lines.append("")
    stack = bench.get("stack", {})
    if stack.get("models"):
        lines += [f"## Stacks ({stack['variant']}): images/s of all N runs, median (quartiles) of interleaved pairs", "",
                  "| model | N | plain loop (one net) | stack | stack/plain |", "|---|---|---|---|---|"]
        for model, entries in stack["models"].items():
            for n, e in entries.items():
                lines.append(f"| {model} | {n} | failed: {e['error']} | | |" if "error" in e else
                             f"| {model} | {n} | {cell(e['plain'], 0)} | {cell(e['stack'], 0)} | {cell(e['ratio'], 3)} |")
        lines.append("")
    for name, p in result.get("projections", {}).items():
        lines += [f"## Projected {name}: training steps only (evaluation and start-up excluded), target "
                  f"<= {TARGETS[name + '_s']} s", "",
                  f"Stacked: {p['stacked_steps_s']} s; its runs one after another unstacked: {p['unstacked_steps_s']} s.", "",
                  "| stack | depth | iterations | it/s | s |", "|---|---|---|---|---|"]
        lines += [f"| {', '.join(r['runs'])} | {r['depth']} | {r['iterations']} | "
                  f"{'' if r['it_per_s'] is None else round(r['it_per_s'], 1)} | "
                  f"{'' if r['steps_s'] is None else round(r['steps_s'])} |" for r in p["stacks"]]
        lines.append("")
    sweep = ph.get("sweep", {})
    if sweep.get("runs"):
        plan = sweep["plan"]
        lines += [f"## Figure 6 sweep, trainer.stack=on: {plan['max_steps']} iterations, milestones {plan['milestones']}, "
                  f"{' '.join(sweep['overrides']) or 'defaults'}", "",
                  "| run | stack | status | step | wall (s) | first log at (s) | steady it/s | final test err (%) |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {m} | {', '.join(r.get('stack') or [])} | {r.get('status')} | {r.get('step') or r.get('last_logged_step')} | "
                  f"{r.get('wall_s')} | {r.get('first_logged_at_s')} | {r.get('steady_it_per_s')} | {r.get('final_test_err')} |"
                  for m, r in sweep["runs"].items()]
        lines += ["", "![sweep](sweep.png)", ""]
    if result.get("targets"):
        lines += ["## Targets", "", "```", json.dumps(result["targets"], indent=1), "```", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bash scripts/gpu_check.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="cifar10-jpeg.tar.xz, or a folder holding cifar-10-batches-py/ "
                                                "(needed on a GPU; --cpu-smoke without it uses synthetic data)")
    p.add_argument("--out", default="gpu-check-out", help="gpu_check.json, .log and .tar.gz (default: ./gpu-check-out)")
    p.add_argument("--work", default=None, help="the runs and the prepared data (default: OUT/work)")
    p.add_argument("--budget-s", type=float, default=480.0, help="wall seconds for everything after the install")
    p.add_argument("--cpu-smoke", action="store_true", help="the same phases on a CPU, tiny")
    args = p.parse_args(argv)
    if args.budget_s <= 0:
        p.error(f"--budget-s must be positive, got {args.budget_s:g}")
    if args.data is not None and not Path(args.data).exists():
        p.error(f"--data {args.data}: no such file or folder")
    if args.data is None and not args.cpu_smoke:
        p.error("--data ARCHIVE|FOLDER is needed (e.g. --data .device/cifar10-jpeg.tar.xz)")
    args.out = str(Path(args.out).resolve())
    args.work = str(Path(args.work).resolve()) if args.work else str(Path(args.out) / "work")
    check = Check(args)
    check.log(f"gpu_check: budget {args.budget_s:.0f} s, out {check.out}, work {check.work}")
    for name in ("setup", "data", "bench", "tests", "sweep"):  # the numbers wanted most first
        t = time.monotonic()
        check.log(f"=== phase {name} ({check.left():.0f} s left)")
        try:
            getattr(check, f"phase_{name}")()
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
