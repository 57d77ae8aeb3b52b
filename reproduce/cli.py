"""reproduce EXPERIMENT [--quick | --smoke] [--dry-run] [--resume [DIR]] [key=value ...]  (or python -m reproduce)

Mistakes in the command line, the config or the data end in one line on stderr and exit code 2;
`--debug` shows the full traceback instead. A sweep in which a run failed still trains the others
and writes its report, then exits with code 1.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import pytorch_lightning  # noqa: F401  (imported before quiet_libraries: it sets its loggers' levels on import)
from omegaconf import OmegaConf

from . import __version__
from .callbacks.checkpoint import Fault
from .config import (CONFIG_DIR, ConfigError, _merge, apply_override, check_resume_changes, compose, derive, experiments,
                     load_yaml, new_config, stack_blockers, validate)
from .data.cifar10 import DataError
from .data.datamodule import train_size_of
from .experiments import failed_runs, kind_of, run_experiment
from .lightning import ignore_known_warnings
from .schedules import Schedule
from .stacked import stack_groups, stacking
from .loggers import sweep_agent
from .runs import read_status, write_error
from .sweep import DEBUG_ENV, SWEEP_CONFIG, run_trial, watch_parent
from .wandb_report import main as report_main

USAGE = """reproduce EXPERIMENT [--quick | --smoke] [--dry-run] [--resume [DIR]] [--overwrite] [--debug] [key=value ...]
       reproduce list
       reproduce report RUN_DIR [--dry-run] [--entity E] [--project P]
       reproduce --version"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reproduce", usage=USAGE, add_help=True,
                                description="Reproduce He et al. 2015's CIFAR-10 curves and the 'learning rate "
                                            "is a temperature' experiments.",
                                epilog="Commands: `list` names the experiments; `report RUN_DIR` builds a W&B report "
                                       "of a sweep. " + __doc__.split("\n\n", 1)[1].replace("\n", " ").strip())
    p.add_argument("experiment", help="an experiment's name (reproduce list)")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value or --key=value (e.g. schedule.factor=0.1)")
    prof = p.add_mutually_exclusive_group()
    prof.add_argument("--quick", action="store_true", help="sized for a laptop CPU (about 20 min on 2 cores)")
    prof.add_argument("--smoke", action="store_true", help="synthetic data, a few steps of every run (CI)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and schedule; train nothing")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="DIR",
                   help="continue the sweep in DIR (default: out_dir): finished runs are skipped")
    p.add_argument("--overwrite", action="store_true", help="replace an existing sweep in out_dir")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.add_argument("--version", action="version", version=f"reproduce {__version__}")
    return p


# the command's own options that take a value as --option=VALUE; any other --KEY=VALUE is an override
VALUE_OPTIONS = ("--resume",)


def dotlist_style(argv):
    """`--schedule.lr=0.05` as `schedule.lr=0.05`: the style in which a W&B sweep agent passes its
    parameters (`${args}`), beside the OmegaConf dot-list style of the overrides."""
    return [a[2:] if a.startswith("--") and "=" in a and a.split("=", 1)[0] not in VALUE_OPTIONS else a for a in argv]


def split_line(cfg) -> str:
    """The split the runs will use, as the datamodule makes it (a synthetic val split is capped at a fifth)."""
    d = cfg.data
    if d.dataset == "imagefolder":
        return f"# data: {d.root}/train for training, {d.root}/val for evaluation"
    total = 50000 if d.dataset == "cifar10" else d.synthetic_train
    val = min(d.val_size, total // 5)
    limit = f", the first {d.eval_limit:,} of val and of test at each evaluation" if d.eval_limit else ""
    return (f"# data: {train_size_of(d):,} training images, {val:,} validation (of {total:,}, split by "
            f"data.split_seed={d.split_seed}), {'10,000' if d.dataset == 'cifar10' else f'{d.synthetic_test:,}'} test{limit}")


def dry_run(cfg) -> str:
    lines = [OmegaConf.to_yaml(cfg).rstrip(), "", split_line(cfg), "",
             f"# schedule ({cfg.profile} profile; iterations are optimizer steps)"]
    n = train_size_of(cfg.data)
    plans = kind_of(cfg).plans(cfg)
    shown = {}
    for name, run in plans:
        sched = Schedule.for_run(run)
        text = "\n".join(sched.describe(n))
        shown.setdefault(text, []).append((name, sched, run))
    for text, items in shown.items():
        sched, run = items[0][1], items[0][2]
        world = run.trainer.devices * run.trainer.num_nodes
        lines.append(f"{', '.join(m for m, _, _ in items)}:")
        lines.append(f"  global batch {run.data.batch_size} = {run.data.batch_size // (world * run.trainer.accumulate)} "
                     f"per device x {world} devices x {run.trainer.accumulate} accumulation; lr {run.schedule.lr} at "
                     f"batch {run.schedule.ref_batch}, scaling rule {run.schedule.scaling} -> {sched.phases[0].lr:.4g}")
        lines.append(f"  {sched.total_steps:,} iterations = {sched.examples(sched.total_steps) / n:.1f} epochs of {n:,} "
                     f"images; " + (f"lr multipliers {list(run.schedule.cycle)} by phase, phases start at iterations "
                     f"{sched.milestone_steps()}" if run.schedule.cycle else
                     f"lr drops (x{run.schedule.factor}) at iterations {sched.milestone_steps()}"
                     if sched.milestone_steps() else "constant lr"))
        lines.append(text)
    if stacking(cfg) and not cfg.only:  # as sweep.run_plans decides
        stacks = stack_groups(plans, cfg.trainer.stack_max)
        lines += ["", f"# stacks (trainer.stack={cfg.trainer.stack}: each trains as one network, stacked.py"
                  + ("; on --resume, runs continuing from checkpoints of different iterations train in separate "
                     "stacks" if cfg.resume else "") + ")"]
        lines += [f"  {', '.join(name for name, _ in group)}" for group in stacks]
    elif cfg.trainer.stack != "off":
        why = ("only= trains the runs it names one by one" if cfg.only else "; ".join(stack_blockers(cfg))
               or "trainer.stack=auto stacks only on devices where docs/performance.md measured a stack faster")
        lines += ["", f"# stacks: none ({why})"]
    return "\n".join(lines)


def _resume_config(experiment: str, where: str, overrides):
    base = Path(where).expanduser()
    for candidate in (base / SWEEP_CONFIG, base / experiment / SWEEP_CONFIG):
        if candidate.exists():
            saved = _merge(new_config(), load_yaml(candidate), str(candidate))
            if saved.experiment != experiment:
                raise ConfigError(f"--resume {where}: that sweep is '{saved.experiment}', not '{experiment}'")
            cfg = saved
            for item in overrides:
                cfg = apply_override(cfg, item)
            cfg.out_dir, cfg.resume = str(candidate.parent.parent), True
            cfg = derive(cfg)
            check_resume_changes(saved, cfg, str(candidate))
            validate(cfg)
            return cfg
    raise ConfigError(f"--resume {where}: no run to resume there (looked for {base / SWEEP_CONFIG} "
                      f"and {base / experiment / SWEEP_CONFIG})")


def quiet_libraries() -> None:
    """Lightning's info lines (GPU available, tips) and wandb's chatter drown the progress lines."""
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("WANDB_SILENT", "true")
    ignore_known_warnings()


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # a scheduler's SIGTERM stops as Ctrl-C does; during training the checkpoint callback takes it


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_libraries()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    watch_parent()
    debug = "--debug" in argv
    if debug:
        os.environ[DEBUG_ENV] = "1"
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, so that a closed pipe is caught below and not at interpreter exit
        return code
    except BrokenPipeError:  # `reproduce list | head -1`: the reader left; end quietly, as shell tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # killed by SIGPIPE
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint and all logs are kept; continue with --resume", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        if isinstance(e, (ConfigError, DataError)):
            print(f"error: {e}", file=sys.stderr)
            return 2
        if isinstance(e, OSError) and e.filename:  # a full disk, a lost mount: the file and what to do
            print(f"error: {write_error(Path(e.filename), e)}", file=sys.stderr)
            return 1
        print(f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


def _main(argv) -> int:
    if not argv or argv[0] in ("-h", "--help", "--version"):
        if argv and argv[0] == "--version":
            print(f"reproduce {__version__}")
        else:
            print(_parser().format_help().rstrip())
        return 0 if argv else 2
    if argv[0] == "list":
        for name in experiments():
            desc = load_yaml(CONFIG_DIR / f"{name}.yaml").get("description", "")
            print(f"{name:16} {desc}")
        return 0
    if argv[0] == "report":
        return report_main(argv[1:])
    args = _parser().parse_intermixed_args(dotlist_style(argv))
    Fault.spec_parts()  # a malformed REPRODUCE_FAULT fails here, in one line, before any run
    if args.resume is not None:
        cfg = _resume_config(args.experiment, args.resume or _out_dir(args.overrides), args.overrides)
    else:
        profile = "quick" if args.quick else "smoke" if args.smoke else "paper"
        cfg = compose(args.experiment, profile, args.overrides)
    kind = kind_of(cfg)
    if args.dry_run:
        print(dry_run(cfg))
        return 0
    agent = sweep_agent()
    if agent:  # one trial of a W&B sweep
        outputs = run_trial(cfg, kind.plans(cfg), *agent)
        failed, total = [agent[1]] if read_status(outputs["run"]).get("status") == "failed" else [], 1
    else:
        outputs = run_experiment(cfg, overwrite=args.overwrite)
        failed = failed_runs(cfg)
        total = len([n for n, _ in kind.plans(cfg) if not cfg.only or n in cfg.only])
    for name, path in outputs.items():
        print(f"{name}: {path}")
    if failed:  # the report marks them FAILED; the exit status tells scripts and CI
        print(f"error: {len(failed)} of {total} runs failed ({', '.join(failed)}); "
              f"see their status.json, or results.md", file=sys.stderr)
        return 1
    return 0


def _out_dir(overrides) -> str:
    for item in overrides:
        if item.startswith("out_dir="):
            return item.split("=", 1)[1]
    return "runs"
