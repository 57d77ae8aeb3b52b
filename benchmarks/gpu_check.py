"""The one GPU check (`bash scripts/gpu_check.sh --data ARCHIVE --budget-s N`): every GPU check in one run.

A GPU machine may be lent for a few minutes from a bare start, so this checks everything in one
command that ends within `--budget-s` seconds, writing what it has after every phase (a later phase
killed by the machine's time limit loses nothing earlier):

  1. setup  versions, the device;
  2. data   CIFAR-10 from --data: this project's JPEG archive (prepared here, in parallel) or a
            folder holding cifar-10-batches-py/;
  3. tests  the tests that need a CUDA device (CUDA_TESTS, `pytest -k cuda`; skipped on a CPU);
  4. bench  `scripts/bench.py` on the device: plain loop vs the package's run_one, fp32 vs bf16,
            eager vs the CUDA-graph step vs torch.compile; the per-step host overhead;
  5. sweep  Figure 6 (`python -m reproduce resnet`, 9 models, ResNet-110 included) with
            trainer.parallel and the fastest variant the bench ran, its length sized from the
            bench's rate so that it ends in time; when that is under 64k iterations the schedule
            is scaled (milestones at the same fractions, 64 evaluation points) and the output says
            so. At the deadline its workers are stopped (SIGTERM: a checkpoint, then exit) and the
            report is drawn from what they logged.

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
import math
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
TARGETS = {"resnet20_64k_s": 120, "sweep_s": 900}  # README, "GPU": ResNet-20 64k <= 2 min, Figure 6 <= 15 min
# an allowance, not a measurement: the sweep's processes start, load the data and capture their
# graphs (compile, for a compiled variant) before their first step
STARTUP_S = {"gpu": 60, "compiled": 180, "smoke": 5}


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
                                    "-k", "cuda"], self.left() * 0.2 if self.smoke else min(self.left() * 0.2, 150))
        lines = (self.report_dir / "tests.log").read_text(errors="replace").strip().splitlines()
        self.result["phases"]["tests"] = {**status, "summary": lines[-1] if lines else ""}
        self.log(f"tests: {self.result['phases']['tests']}")
        if status["rc"] != 0:
            self.note(f"the CUDA tests failed (exit {status['rc']}): report/tests.log")

    def phase_bench(self) -> None:
        path = self.work / "bench.json"
        args = (["--cpu-smoke"] if self.smoke else ["--models", "resnet20", "--repeats", "8", "--overhead-repeats", "8"])
        # the smoke run is cut only by the whole budget, so that it does not depend on the machine's speed
        cap = self.left() * 0.5 if self.smoke else min(self.left() * 0.35, 170)
        status = self.run("bench", [sys.executable, "scripts/bench.py", *args, "--wandb", "disabled",
                                    "--json-out", str(path)], cap)
        bench = json.loads(path.read_text()) if path.exists() else {}
        self.result["phases"]["bench"] = {**bench, **status, "cap_s": round(cap)}
        if status["stopped"]:
            self.note(f"bench stopped at its {cap:.0f} s cap; the variants measured by then are kept")
        for model, variants in bench.get("models", {}).items():
            for variant, e in variants.items():
                self.log(f"bench {model} {variant}: " + (f"FAILED {e['error']}" if "error" in e else
                         f"plain {e['plain']['median']:.0f} img/s, package {e['package']['median']:.0f} img/s, "
                         f"ratio {e['ratio']['median']:.3f} (quartiles {e['ratio']['q1']:.3f}-{e['ratio']['q3']:.3f})"))
        for variant, o in bench.get("overhead", {}).items():
            self.log(f"bench per-step overhead, {variant}: " +
                     (f"FAILED {o['error']}" if "error" in o else f"{o['overhead_ms']['median']:.2f} ms"))

    def choose_variant(self) -> tuple[str, list[str], float]:
        """The fastest variant the bench ran without error: its name, overrides and package rate (it/s)."""
        bench = self.result["phases"].get("bench", {})
        measured = bench.get("models", {}).get("resnet8" if self.smoke else "resnet20", {})
        ok = {v: e["package"]["median"] / bench["batch"] for v, e in measured.items() if "package" in e}
        if any("error" in e for e in measured.values()):
            self.note(f"variants that failed in the bench: {[v for v, e in measured.items() if 'error' in e]}")
        if not ok:
            self.note("the bench measured no variant; the sweep uses the defaults with a guessed rate")
            return "default", [], 20.0 if self.smoke else 200.0
        best = max(ok, key=ok.get)
        return best, measured[best]["overrides"], ok[best]

    def phase_sweep(self) -> None:
        from reproduce.models import depth_of
        variant, overrides, rate = self.choose_variant()
        full, models = (SMOKE, SMOKE_SWEEP) if self.smoke else (PAPER, FIG6)
        window = self.left() - (8 if self.smoke else 30)  # the report and packing after it
        startup = STARTUP_S["smoke" if self.smoke else "compiled" if "compiled" in variant else "gpu"]
        # the bench's one process in ResNet-20 steps/s stands for the device (a lower bound where
        # several processes fill the device better than one)
        work_per_step = sum(depth_of(m) for m in models) / depth_of(models[-1] if self.smoke else "resnet20")
        plan = plan_schedule(math.inf if self.smoke else (window - startup) * rate / work_per_step / 1.2, full)
        parallel = min(self.args.parallel, len(models))
        sweep = self.result["phases"]["sweep"] = {"models": models, "parallel": parallel, "variant": variant,
                                                  "overrides": overrides, "window_s": round(window),
                                                  "bench_it_per_s": round(rate, 1), "plan": plan}
        if plan["scaled"]:
            self.note(f"Figure 6 sweep SCALED to {plan['max_steps']} iterations (milestones {plan['milestones']}, "
                      f"evaluation every {plan['eval_every']}) to fit {window:.0f} s; the paper's is {full['max_steps']}")
        exp_dir = self.work / "sweep" / "resnet"
        small = ["data.batch_size=16", "schedule.ref_batch=16", "data.eval_batch_size=64", "trainer.checkpoint_every=4"]
        cmd = [sys.executable, "-m", "reproduce", "resnet", f"models=[{','.join(models)}]", f"trainer.parallel={parallel}",
               f"out_dir={self.work / 'sweep'}", "wandb.mode=disabled", "trainer.progress=false", *overrides, *self.data,
               *(small if self.smoke else []), *schedule_overrides(plan)]
        progress = {m: Progress(exp_dir / m, time.monotonic()) for m in models}
        threads = {"TORCHINDUCTOR_COMPILE_THREADS": str(max(1, (os.cpu_count() or 1) // parallel))}
        sweep["process"] = self.run("sweep", cmd, window, progress, threads)
        self.record_sweep(exp_dir, models, progress)

    def record_sweep(self, exp_dir: Path, models: list[str], progress: dict) -> None:
        from reproduce.report import curves_figure, load_runs, results_rows, write_results
        from reproduce.runs import read_status
        sweep = self.result["phases"]["sweep"]
        sweep["runs"] = {}
        for m in models:
            st = read_status(exp_dir / m)
            sweep["runs"][m] = {**progress[m].summary(), **{k: st.get(k) for k in (
                "status", "step", "total_steps", "wall_s", "final_test_err", "best_test_err", "last_train_err", "error")}}
            self.log(f"sweep {m}: {sweep['runs'][m]}")
        sweep["complete"] = done = all(r.get("status") == "done" for r in sweep["runs"].values())
        if not done:
            self.note("the sweep did not finish in time: its figure and table show what the runs logged by the deadline")
        runs = load_runs([exp_dir / m for m in models])
        if runs:
            plan = sweep["plan"]
            title = (f"Figure 6 sweep on {self.result.get('env', {}).get('gpu', 'cpu')}: {plan['max_steps']} iterations"
                     f"{' (SCALED from 64k)' if plan['scaled'] else ''}, lr x0.5 at {plan['milestones']}"
                     f"{'' if done else ' — stopped at the deadline'}")
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
        sweep = ph.get("sweep", {})
        if sweep.get("process"):
            steps, wall = sweep["plan"]["max_steps"], sweep["process"]["wall_s"]
            firsts = [r["first_logged_at_s"] for r in sweep["runs"].values() if r.get("first_logged_at_s") is not None]
            start = min(max(firsts), wall) if firsts else 0.0  # start-up and compile: paid once, not per iteration
            out["sweep"] = {"target_s": TARGETS["sweep_s"], "iterations": steps, "wall_s": wall, "complete": sweep["complete"],
                            "projected_64k_s": round(start + (wall - start) * PAPER["max_steps"] / steps)
                            if sweep["complete"] else None}
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
    if bench.get("models"):
        lines += ["## Bench (images/s, median (quartiles) of interleaved pairs of windows)", "",
                  "| model | variant | plain loop | package (run_one) | package/plain |", "|---|---|---|---|---|"]
        cell = lambda s, d: f"{s['median']:.{d}f} ({s['q1']:.{d}f}-{s['q3']:.{d}f})"  # noqa: E731
        for model, variants in bench["models"].items():
            for variant, e in variants.items():
                lines.append(f"| {model} | {variant} | failed: {e['error']} | | |" if "error" in e else
                             f"| {model} | {variant} | {cell(e['plain'], 0)} | {cell(e['package'], 0)} | {cell(e['ratio'], 3)} |")
        for variant, o in bench.get("overhead", {}).items():
            lines += ["", f"Per-step host overhead over the plain loop, {variant}: " + (f"failed: {o['error']}" if "error" in o
                      else f"{cell(o['overhead_ms'], 2)} ms ({o['model']}, batch {o['batch']}, {o['threads']} thread, "
                           f"{o['pairs']} interleaved pairs of {o['window']} steps)")]
        lines.append("")
    sweep = ph.get("sweep", {})
    if sweep.get("runs"):
        plan = sweep["plan"]
        lines += [f"## Figure 6 sweep: {plan['max_steps']} iterations{' (SCALED)' if plan['scaled'] else ''}, milestones "
                  f"{plan['milestones']}, variant {sweep['variant']}", "",
                  "| run | status | step | wall (s) | first log at (s) | steady it/s | final test err (%) |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {m} | {r.get('status')} | {r.get('step') or r.get('last_logged_step')} | {r.get('wall_s')} | "
                  f"{r.get('first_logged_at_s')} | {r.get('steady_it_per_s')} | {r.get('final_test_err')} |"
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
    p.add_argument("--parallel", type=int, default=9, help="trainer.parallel of the Figure 6 sweep")
    p.add_argument("--cpu-smoke", action="store_true", help="the same phases on a CPU, tiny")
    args = p.parse_args(argv)
    if args.budget_s <= 0 or args.parallel <= 0:
        p.error("--budget-s and --parallel must be positive")
    if args.data is not None and not Path(args.data).exists():
        p.error(f"--data {args.data}: no such file or folder")
    if args.data is None and not args.cpu_smoke:
        p.error("--data ARCHIVE|FOLDER is needed (e.g. --data .device/cifar10-jpeg.tar.xz)")
    args.out = str(Path(args.out).resolve())
    args.work = str(Path(args.work).resolve()) if args.work else str(Path(args.out) / "work")
    check = Check(args)
    check.log(f"gpu_check: budget {args.budget_s:.0f} s, out {check.out}, work {check.work}")
    for name in ("setup", "data", "tests", "bench", "sweep"):
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
