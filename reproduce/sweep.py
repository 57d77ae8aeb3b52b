"""The sweep: its directory, resume, the run loop and parallel workers. Knows no experiment kinds.

A sweep lives in `out_dir/<experiment>/`: sweep.yaml (the resolved config), sweep.json (W&B group,
start time), one directory per run (train.py's files), then the kind's report (figure.png,
results.md). `run_plans` trains the (name, run config) pairs a kind's `plans` gives it.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List

import torch
from omegaconf import OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from .callbacks.checkpoint import LAST, checkpoint_step
from .callbacks.progress import SWEEP, PlannedRun, duration
from .config import RESUME_KEYS, ConfigError, quick_equivalent
from .models import build
from .schedules import Schedule
from .runs import LOCK_FILE, SWEEP_PID_ENV, RunDir, lock_dir, read_status, unlock
from .stacked import execute_stack, finish_renames, stack_groups, stacking
from .train import build_run, run_one

SWEEP_CONFIG, SWEEP_META = "sweep.yaml", "sweep.json"
TINY_IMAGEFOLDER = "tiny"  # data.root=tiny: a generated ImageFolder for smoke runs


PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")


def plain_name(name: str, what: str) -> str:
    """A directory name that stays inside its parent: no '/', no '..', not absolute."""
    if not PLAIN_NAME.fullmatch(str(name)) or ".." in str(name):
        raise ConfigError(f"{what} {name!r} is not a plain name (letters, digits, . _ + = -; no '/' or '..'), "
                          f"so its directory would not stay inside out_dir")
    return name


def experiment_dir(cfg) -> Path:
    return Path(cfg.out_dir).expanduser() / plain_name(cfg.experiment, "experiment")


def run_name(model: str, seed: int, seeds: List[int]) -> str:
    return model if len(seeds) == 1 else f"{model}-seed{seed}"


def sweep_group(meta_path: Path) -> str:
    try:
        return json.loads(meta_path.read_text())["group"]
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        raise ConfigError(f"{meta_path} is damaged; restore it, or start the sweep again with --overwrite") from None


def is_worker() -> bool:
    """A worker of a parallel sweep (run_parallel): the sweep, its parent, holds the sweep's lock."""
    return os.environ.get(SWEEP_PID_ENV) == str(os.getppid())


# this process's locks (fds), held until it exits: one sweep at most, the run it trains
_LOCKS: Dict[Path, int] = {}


def lock_sweep(exp_dir: Path) -> None:
    if rank_zero_only.rank == 0 and not is_worker() and exp_dir not in _LOCKS:
        _LOCKS[exp_dir] = lock_dir(exp_dir)


def prepare_sweep(cfg, overwrite: bool = False) -> tuple[Path, str]:
    """Create (or, when resuming, reopen) the sweep directory and take its lock; returns (dir, W&B group).
    Nothing is deleted but a sweep's own directory, and that only with `overwrite`."""
    exp_dir = experiment_dir(cfg)
    meta_path = exp_dir / SWEEP_META
    if rank_zero_only.rank != 0:
        # a DDP worker that Lightning started by re-running this command: rank 0 owns the directory
        return exp_dir, sweep_group(meta_path) if meta_path.exists() else ""
    if cfg.resume:
        if not meta_path.exists():
            raise ConfigError(f"nothing to resume in {exp_dir}: no {SWEEP_META} (start it without --resume)")
        lock_sweep(exp_dir)
        return exp_dir, sweep_group(meta_path)
    try:
        exp_dir.mkdir(parents=True, exist_ok=True)
        probe = exp_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"out_dir={cfg.out_dir}: cannot write {exp_dir} ({e.strerror})") from None
    lock_sweep(exp_dir)  # before anything is deleted: a live sweep is never replaced under itself
    contents = [p for p in exp_dir.iterdir() if p.name != LOCK_FILE]
    if meta_path.exists() or (exp_dir / SWEEP_CONFIG).exists():
        if not overwrite:
            raise ConfigError(f"{exp_dir} already holds a sweep; continue it with --resume {cfg.out_dir}, "
                              f"replace it with --overwrite, or choose another out_dir=")
        for p in contents:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    elif contents:
        raise ConfigError(f"{exp_dir} holds files but no sweep ({SWEEP_META}), so --overwrite will not delete them; "
                          f"choose another out_dir=, or empty that directory yourself")
    group = cfg.wandb.group or f"{cfg.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
    OmegaConf.save(cfg, exp_dir / SWEEP_CONFIG)
    meta_path.write_text(json.dumps({"group": group, "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
    return exp_dir, group


def resume_action(name: str, run_cfg, run_dir: Path) -> str:
    """On --resume, what a run does: 'skip' (finished), 'continue' (from its checkpoint) or 'fresh'
    (nothing it trained was kept). The checkpoint is the truth of where a run is, status.json a
    summary of it; a run that trained past a checkpoint that is now missing stops the sweep, since
    starting it again would discard those iterations."""
    files = RunDir(run_dir)
    ckpt = files.checkpoint_dir / LAST
    try:
        status = files.status(strict=True)
    except ConfigError as e:
        print(f"{name}: {e}; {'the checkpoint decides' if ckpt.exists() else 'read as no status'}", flush=True)
        status = {}
    files.metrics()  # a damaged metrics.csv fails here, naming it, before any run trains
    if ckpt.exists():
        step = checkpoint_step(ckpt, run_cfg.trainer.accumulate)
        if status.get("status") == "done" and step >= Schedule.for_run(run_cfg).total_steps:
            return "skip"
        return "continue"
    if status.get("status") == "done":
        return "skip"  # finished; its checkpoint removed since (status.json and metrics.csv hold the results)
    reached = max([s for series in files.metrics().values() for s, _ in series] + [status.get("step") or 0])
    # a checkpoint is written every checkpoint_every iterations and when a signal stops the run:
    # logs past the first one, or a stop, mean one existed
    if status.get("status") == "interrupted" or reached > run_cfg.trainer.checkpoint_every:
        raise ConfigError(f"{name}: {ckpt} is missing, but the run had trained to iteration {reached} "
                          f"({files.metrics_path.name}, {files.status_path.name}); nothing was changed. To train "
                          f"{name} again from iteration 0 delete {run_dir} and --resume, or start the sweep again "
                          f"with --overwrite")
    return "fresh"


def run_actions(cfg, plans: List[tuple], exp_dir: Path) -> Dict[str, str]:
    """Each run's resume_action, decided for all runs before any trains; a run directory that
    another process holds (an orphaned worker, a second sweep) stops the sweep here."""
    actions = {}
    names = [plain_name(name, "run name") for name, _ in plans]
    if cfg.resume and rank_zero_only.rank == 0:
        for line in finish_renames(exp_dir, names, cfg.trainer.accumulate):
            print(line, flush=True)
    for name, run_cfg in plans:
        if rank_zero_only.rank == 0 and (exp_dir / name).exists():
            unlock(lock_dir(exp_dir / name))
        actions[name] = resume_action(name, run_cfg, exp_dir / name) if cfg.resume else "fresh"
    return actions


def start_step(run_dir: Path, action: str, cfg) -> int | None:
    """The iteration a run continues from (its checkpoint's), None when it starts fresh."""
    return checkpoint_step(run_dir / "checkpoints" / LAST, cfg.trainer.accumulate) if action == "continue" else None


def run_stack(group: List[tuple], exp_dir: Path, sweep_group_name: str, actions: Dict[str, str]) -> List[dict]:
    """Train the runs `group` as one stack (stacked.py); their locks held meanwhile."""
    names = [name for name, _ in group]
    locks = [lock_dir(exp_dir / name) for name in names]
    try:
        eta = SWEEP.eta()  # before the stack's runs start: each counted whole
        for name in names:
            SWEEP.start(name, actions[name] == "continue")
        say(f"stack of {len(names)}: {', '.join(names)}"
            + (", continuing from their checkpoints" if actions[names[0]] == "continue" else "")
            + (f" (sweep ETA {duration(eta)})" if eta is not None else ""))
        runs = [build_run(run_cfg, exp_dir / name, sweep_group_name, resume=actions[name] == "continue", name=name)
                for name, run_cfg in group]
        statuses = execute_stack(runs, debug=debug_mode())
    finally:
        for lock in locks:
            unlock(lock)
    for name, status in zip(names, statuses):
        for line in SWEEP.finish(name, status["status"], status.get("wall_s", 0) / len(names), status.get("step")):
            say(line)
        if status["status"] == "failed":
            print(f"{name}: FAILED ({status.get('error')}); going on with the others", flush=True)
    if any(s["status"] == "interrupted" for s in statuses):
        raise KeyboardInterrupt
    return statuses


def run_plans(cfg, plans: List[tuple], exp_dir: Path, group_name: str) -> List[dict]:
    """Train each (run name, run config) in turn. On resume a finished run is skipped and an
    unfinished one continues from its checkpoint; a failed run is recorded and the rest go on.
    With trainer.parallel > 1 the runs go to that many worker processes instead. The plan and
    each run's outcome go to `SWEEP`, which prints the estimates; status.json tells the CLI what failed."""
    if cfg.only:
        unknown = set(cfg.only) - {name for name, _ in plans}
        if unknown:
            raise ConfigError(f"only: no run named {sorted(unknown)} in this sweep; runs: {[n for n, _ in plans]}")
        plans = [(name, run_cfg) for name, run_cfg in plans if name in cfg.only]
    parallel = cfg.trainer.parallel > 1 and cfg.trainer.devices * cfg.trainer.num_nodes == 1 and not cfg.only
    actions = run_actions(cfg, plans, exp_dir)
    announce(cfg, plans, cfg.trainer.parallel if parallel else 1)
    if parallel:
        return run_parallel(cfg, plans, exp_dir, actions)
    statuses = []
    for name, _ in plans:
        if actions[name] == "skip":
            print(f"{name}: finished earlier, skipped", flush=True)
            SWEEP.skip(name)
    todo = [(name, run_cfg) for name, run_cfg in plans if actions[name] != "skip"]
    if stacking(cfg) and not cfg.only:
        stacks = stack_groups(todo, cfg.trainer.stack_max, lambda n: start_step(exp_dir / n, actions[n], cfg))
        todo = [group[0] for group in stacks if len(group) == 1]
        for group in stacks:
            if len(group) > 1:
                statuses += run_stack(group, exp_dir, group_name, actions)
    for name, run_cfg in todo:
        run_dir = exp_dir / name
        resume = actions[name] == "continue"
        lock = lock_dir(run_dir) if rank_zero_only.rank == 0 else None
        say(SWEEP.start(name, resume))
        try:
            status = run_one(run_cfg, run_dir, group_name, resume=resume, name=name, debug=debug_mode())
        finally:
            if lock is not None:
                unlock(lock)
        statuses.append(status)
        for line in SWEEP.finish(name, status["status"]):
            say(line)
        if status["status"] == "interrupted":
            raise KeyboardInterrupt
        if status["status"] == "failed":
            print(f"{name}: FAILED ({status.get('error')}); going on with the others", flush=True)
    return statuses


def trial_dir(cfg, sweep_id: str, run_id: str) -> Path:
    """Where one trial of a W&B sweep lives: out_dir/wandb-sweep-<sweep id>/<run id>/, a run
    directory like any other (train.py's files), one per agent run."""
    return Path(cfg.out_dir).expanduser() / f"wandb-sweep-{sweep_id}" / run_id


def run_trial(cfg, plans: List[tuple], sweep_id: str, run_id: str) -> Dict[str, Path]:
    """One trial of a W&B sweep (`wandb agent`): the one run the config expands to, in its own
    directory, under the agent's W&B run; no sweep directory, report or summary run (W&B's sweep
    view compares the trials). The agent may start a run id again (a preempted trial): an
    unfinished one continues from its checkpoint, a finished one is skipped."""
    if len(plans) != 1:
        raise ConfigError(f"under a W&B sweep agent (WANDB_SWEEP_ID={sweep_id}) each trial is one run, but this "
                          f"config makes {len(plans)} ({', '.join(name for name, _ in plans[:4])}"
                          f"{', ...' if len(plans) > 4 else ''}); set one model and one seed in the sweep's "
                          f"command, e.g. models=[resnet20] (configs/_wandb-sweep.yaml)")
    run_dir = trial_dir(cfg, sweep_id, run_id)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"out_dir={cfg.out_dir}: cannot write {run_dir} ({e.strerror})") from None
    if rank_zero_only.rank == 0:
        RunDir(run_dir).wandb_id_path.write_text(run_id)  # the agent's run: build_run reads the id from here
    trial = OmegaConf.merge(cfg, {"resume": True, "trainer": {"parallel": 1}})
    run_plans(trial, [(run_id, plans[0][1])], run_dir.parent, cfg.wandb.group)
    return {"run": run_dir}


# `--debug` (cli.py) sets this: a failed run then raises with its traceback instead of being recorded and
# skipped. An environment variable, so that the parallel workers (subprocesses) inherit it; set it by
# hand to debug a sweep launched by a script (as HYDRA_FULL_ERROR=1 does for Hydra apps).
DEBUG_ENV = "REPRODUCE_DEBUG"


def debug_mode() -> bool:
    return os.environ.get(DEBUG_ENV) == "1"


def say(line: str) -> None:
    if rank_zero_only.rank == 0:
        print(line, file=sys.stderr, flush=True)


def device_of(cfg) -> tuple[str, bool]:
    """(what the runs train on, in words; whether that is a CPU)."""
    if cfg.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return f"{cfg.trainer.devices * cfg.trainer.num_nodes} x {torch.cuda.get_device_name(0)}", False
    return f"cpu ({cfg.trainer.threads or torch.get_num_threads()} threads)", True


def run_cost(run_cfg) -> tuple[int, float]:
    """(iterations, relative cost = parameters x images seen) of one run, for the sweep estimate.
    Parameters track a CIFAR net's FLOPs per image (both grow as the number of blocks)."""
    sched = Schedule.for_run(run_cfg)
    with torch.device("meta"):  # the parameter count without allocating or initialising weights
        params = sum(p.numel() for p in build(run_cfg.models[0]).parameters())
    return sched.total_steps, float(params) * sched.examples(sched.total_steps)


def quick_hint(cfg) -> str | None:
    if cfg.profile != "paper":
        return None
    quick = quick_equivalent(cfg.experiment)
    # the quick profiles are sized for a laptop's CPU; what they took is measured in docs/results.md
    return (f"that is long for a CPU: `python -m reproduce {quick} --quick` runs the same comparison "
            f"in a laptop-sized run (docs/results.md gives its measured time)")


def announce(cfg, plans: List[tuple], parallel: int) -> None:
    """Print the plan (runs, iterations, device) before anything trains."""
    runs = []
    for name, run_cfg in plans:
        steps, cost = run_cost(run_cfg)
        runs.append(PlannedRun(name, steps, cost))
    device, on_cpu = device_of(cfg)
    say(SWEEP.plan(runs, device, on_cpu, quick_hint(cfg), parallel))


def watch_parent() -> None:
    """In a worker of a parallel sweep: a SIGTERM when the sweep dies (SIGKILL included), so that
    the run stops at its next step boundary with its checkpoint and nothing trains unowned."""
    if not os.environ.get(SWEEP_PID_ENV):
        return
    parent = int(os.environ[SWEEP_PID_ENV])
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):  # elsewhere: poll the parent
        def poll():
            while os.getppid() == parent:
                time.sleep(1)
            os.kill(os.getpid(), signal.SIGTERM)
        threading.Thread(target=poll, daemon=True).start()
    if os.getppid() != parent:  # it died before the watch began
        os.kill(os.getpid(), signal.SIGTERM)


def runtime_overrides(cfg) -> List[str]:
    """The run-time keys (config.RESUME_KEYS) of this sweep's command, for its workers, which read
    the rest from sweep.yaml. JSON values read back as the same YAML values."""
    return [f"{key}={json.dumps(OmegaConf.select(cfg, key))}" for key in RESUME_KEYS
            if key not in ("only", "trainer.parallel", "trainer.threads")]


def mark_failed(run_dir: Path, run_cfg, returncode: int) -> dict:
    """A worker that ended without a status (it could not start the run): the run is FAILED in the
    report, with the worker's last line, rather than missing from it."""
    files = RunDir(run_dir)
    log = run_dir / "worker.log"
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    status = {"model": run_cfg.models[0], "name": run_dir.name, "seed": run_cfg.seed, "status": "failed", "step": 0,
              "error": f"the worker exited {returncode}: {lines[-1] if lines else 'no output'} ({log})"}
    if not files.config_path.exists():
        OmegaConf.save(run_cfg, files.config_path)
    files.write_status(**status)
    return status


def run_parallel(cfg, plans: List[tuple], exp_dir: Path, actions: Dict[str, str]) -> List[dict]:
    """Train the sweep's runs `trainer.parallel` at a time, each in its own process
    (`python -m reproduce EXPERIMENT --resume DIR only=[NAME]`), on GPU i % n_gpus; one ResNet-20
    at batch 128 leaves most of a large GPU idle. On a CPU the cores are split between workers."""
    n_gpus = torch.cuda.device_count()
    # the cores split between workers, on a GPU too: workers that each take every core's threads
    # fight over the host, which is what a small net's step waits on (docs/gpu.md)
    threads = max(1, (os.cpu_count() or 1) // cfg.trainer.parallel)
    queue = [name for name, _ in plans if actions[name] != "skip"]
    for name, _ in plans:
        if name not in queue:
            SWEEP.skip(name)
    running: Dict[str, subprocess.Popen] = {}
    slot = 0
    try:
        while queue or running:
            while queue and len(running) < cfg.trainer.parallel:
                name = queue.pop(0)
                env = {**os.environ, SWEEP_PID_ENV: str(os.getpid())}
                if n_gpus:
                    env["CUDA_VISIBLE_DEVICES"] = str(slot % n_gpus)
                slot += 1
                cmd = [sys.executable, "-m", "reproduce", cfg.experiment, "--resume", str(exp_dir), f"only=[{name}]",
                       "trainer.parallel=1", f"trainer.threads={threads}", *runtime_overrides(cfg)]
                (exp_dir / name).mkdir(parents=True, exist_ok=True)
                log = open(exp_dir / name / "worker.log", "a")
                running[name] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
                print(f"{name}: started (worker log {exp_dir / name / 'worker.log'})", flush=True)
            for name, proc in list(running.items()):
                if proc.poll() is not None:
                    del running[name]
                    st = read_status(exp_dir / name)
                    if proc.returncode not in (0, 130) and st.get("status") not in ("done", "failed", "interrupted"):
                        st = mark_failed(exp_dir / name, dict(plans)[name], proc.returncode)
                    print(f"{name}: {st.get('status', 'no status')} (exit {proc.returncode})"
                          + (f" {st.get('error')}" if st.get("error") else ""), flush=True)
                    for line in SWEEP.finish(name, st.get("status", "failed"), st.get("wall_s"), st.get("step")):
                        say(line)
                    eta = SWEEP.eta()
                    say(f"{len(plans) - len(queue) - len(running)} of {len(plans)} runs finished"
                        + (f"; sweep ETA {duration(eta)}" if eta is not None and (queue or running) else ""))
            time.sleep(0.5)
    except KeyboardInterrupt:  # SIGINT or SIGTERM (cli.main turns it into this)
        for proc in running.values():
            proc.terminate()  # SIGTERM: each worker checkpoints at its next step boundary and stops
        for name, proc in running.items():
            proc.wait()
            st = read_status(exp_dir / name)
            print(f"{name}: {st.get('status', 'no status')} at iteration {st.get('step', 0)} (exit {proc.returncode})",
                  flush=True)
        raise
    return [read_status(exp_dir / name) for name, _ in plans]
