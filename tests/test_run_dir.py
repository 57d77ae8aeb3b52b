"""A run directory is never silently thrown away, raced or trusted blindly: the checkpoint decides
where a run is, one process owns a directory, signals reach a parallel sweep's workers, damaged
files are named, nothing in a received file runs. The CLI is driven as a user or a scheduler
would; faults land at iterations chosen by REPRODUCE_FAULT, never at a wall-clock moment.
"""
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from reproduce.runs import LOCK_FILE, read_rows

from .conftest import ROOT, run_cli

# resnet8 on synthetic data, 16 iterations of batch 16: checkpoints every 4, logs every 2
BASE = ["resnet", "--smoke", "models=[resnet8]", "schedule.max_steps=16", "schedule.milestones=[8,12]",
        "trainer.threads=1", "trainer.deterministic=true", "wandb.mode=disabled"]


def one_line_exit_2(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """One run SIGKILLed at iteration 10: its checkpoint is at 8, metrics.csv runs to 10. Each test
    takes a copy (`copy_of`)."""
    out = tmp_path_factory.mktemp("killed")
    proc = run_cli(*BASE, f"out_dir={out}", env={"REPRODUCE_FAULT": "kill:step:10"}, check=False, new_session=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    return out


@pytest.fixture
def copy_of(killed, tmp_path):
    def copy():
        shutil.copytree(killed, tmp_path / "out")
        return tmp_path / "out", tmp_path / "out" / "resnet" / "resnet8"
    return copy


def no_duplicates(run: Path) -> None:
    pairs = Counter((r["step"], r["metric"]) for r in read_rows(run / "metrics.csv"))
    assert max(pairs.values()) == 1, [p for p, n in pairs.items() if n > 1]


# --- 1. the checkpoint is the truth of where a run is -------------------------------------------

def resume_action(run: Path) -> str:
    """What `--resume` decides for this run directory (sweep.resume_action), in-process."""
    from reproduce.runs import RunDir
    from reproduce.sweep import resume_action
    return resume_action(run.name, RunDir(run).config(), run)


def test_a_damaged_status_is_named_and_the_checkpoint_decides(copy_of, capsys):
    out, run = copy_of()
    (run / "status.json").write_text("[1, 2]")
    assert resume_action(run) == "continue"
    assert f"{run / 'status.json'} is damaged (not a JSON object); the checkpoint decides" in capsys.readouterr().out


def test_a_missing_status_continues_from_the_checkpoint(copy_of):
    out, run = copy_of()
    before = [r for r in read_rows(run / "metrics.csv") if r["step"] <= 8]
    status = run / "status.json"
    status.unlink()
    proc = run_cli("resnet", "--resume", out)
    assert "continuing from its checkpoint" in proc.stderr
    rows = read_rows(run / "metrics.csv")
    assert [r for r in rows if r["step"] <= 8] == before  # the iterations before the checkpoint kept, not retrained
    no_duplicates(run)
    assert json.loads(status.read_text())["status"] == "done"


def test_a_deleted_checkpoint_stops_and_changes_nothing(copy_of):
    from reproduce.config import ConfigError
    out, run = copy_of()
    (run / "checkpoints" / "last.ckpt").unlink()
    metrics = (run / "metrics.csv").read_bytes()
    with pytest.raises(ConfigError) as e:
        resume_action(run)
    for needle in (run / "checkpoints" / "last.ckpt", "iteration 10", "--overwrite"):
        assert str(needle) in str(e.value), str(e.value)
    assert (run / "metrics.csv").read_bytes() == metrics


def test_a_directory_that_is_no_sweep_is_never_deleted(tmp_path):
    from reproduce.config import ConfigError, compose
    from reproduce.sweep import prepare_sweep
    keep = tmp_path / "resnet" / "notes.txt"
    keep.parent.mkdir()
    keep.write_text("mine")
    with pytest.raises(ConfigError, match=f"{tmp_path / 'resnet'} holds files but no sweep"):
        prepare_sweep(compose("resnet", "smoke", [f"out_dir={tmp_path}"]), overwrite=True)
    assert keep.read_text() == "mine"


# --- 2. one process per run directory -----------------------------------------------------------

def _wait_stopped(pid: int) -> None:
    """Until the process has stopped itself (SIGSTOP from the fault hook): a state, not a clock."""
    while (state := Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "T":
        assert state != "Z", f"process {pid} exited instead of stopping itself"
        time.sleep(0.05)


def test_a_live_directory_is_refused_to_a_second_process(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "REPRODUCE_FAULT": "stop:step:6"}
    live = subprocess.Popen([sys.executable, "-m", "reproduce", *BASE, f"out_dir={tmp_path}"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_stopped(live.pid)
        sweep = tmp_path / "resnet"
        for args in (["resnet", "--resume", tmp_path], [*BASE, f"out_dir={tmp_path}", "--overwrite"]):
            one_line_exit_2(run_cli(*args, check=False), f"{sweep} is in use by process {live.pid}")
        assert (sweep / "resnet8" / "checkpoints" / "last.ckpt").exists()  # --overwrite deleted nothing
    finally:
        live.send_signal(signal.SIGCONT)
        _, err = live.communicate(timeout=300)
    assert live.returncode == 0, err[-3000:]
    no_duplicates(tmp_path / "resnet" / "resnet8")
    assert json.loads((tmp_path / "resnet" / "resnet8" / "status.json").read_text())["step"] == 16


# --- 3. signals reach every worker of a parallel sweep ------------------------------------------

PARALLEL = [*BASE, "models=[resnet8,plain8]", "trainer.parallel=2"]


def _wait_unlocked(lock: Path) -> None:
    """Until no process holds `lock` (the run's worker has exited): a state, not a clock."""
    while subprocess.run(["flock", "-n", lock, "true"]).returncode != 0:
        time.sleep(0.1)


def _stopped_at_a_boundary(run: Path, after: int) -> None:
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted" and status["step"] >= after, status
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == status["step"]


def test_sigkill_of_a_parallel_sweep_stops_its_workers(tmp_path):
    """SIGKILL of the sweep alone: its workers see their parent die and stop by themselves."""
    proc = run_cli(*PARALLEL, f"out_dir={tmp_path}", env={"REPRODUCE_FAULT": "kill-sweep:step:5:resnet8"},
                   check=False, new_session=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    for name in ("resnet8", "plain8"):
        _wait_unlocked(tmp_path / "resnet" / name / LOCK_FILE)  # both workers exited: nothing trains unowned
    _stopped_at_a_boundary(tmp_path / "resnet" / "resnet8", 5)


# --- 4. no code runs from data ------------------------------------------------------------------

class Payload:
    """What an attacker's pickle holds: a call that runs when the file is unpickled."""
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_with_a_pickle_payload_is_refused_and_runs_nothing(copy_of, tmp_path):
    out, run = copy_of()
    ckpt, marker = run / "checkpoints" / "last.ckpt", tmp_path / "ran"
    torch.save({"global_step": Payload(marker), "state_dict": {}}, ckpt)
    one_line_exit_2(run_cli("resnet", "--resume", out, check=False), ckpt, "--overwrite")
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_checkpoint_is_named(damage, killed, tmp_path):
    from reproduce.callbacks.checkpoint import checkpoint_step
    from reproduce.config import ConfigError
    good = killed / "resnet" / "resnet8" / "checkpoints" / "last.ckpt"
    assert checkpoint_step(good, 1) == 8
    bad = tmp_path / "resnet8" / "checkpoints" / "last.ckpt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(good.read_bytes()[:5000] if damage == "truncated" else b"not a checkpoint" * 100)
    with pytest.raises(ConfigError, match=f"{bad} is damaged or not a checkpoint of this package"):
        checkpoint_step(bad, 1)


def test_a_cifar_batch_with_a_pickle_payload_runs_nothing(tmp_path):
    import numpy as np
    from reproduce.data.cifar10 import TRAIN_FILES
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in TRAIN_FILES + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({"data": np.zeros((10, 3072), np.uint8), "labels": [0] * 10,
                                                  "filenames": ["a.png"] * 10}))
    marker = tmp_path / "ran"
    (folder / "data_batch_3").write_bytes(pickle.dumps({"data": Payload(marker), "labels": [0] * 10}))
    from reproduce.data.cifar10 import load_cifar10
    from reproduce.errors import DataError
    with pytest.raises(DataError, match=re.escape(f"{folder / 'data_batch_3'} is not a CIFAR batch (refused "
                                                  f"{os.system.__module__}.system")):
        load_cifar10(tmp_path / "cifar", download=False)
    assert not marker.exists()


# --- 5. paths stay inside out_dir ---------------------------------------------------------------

@pytest.mark.parametrize("override,key", [("experiment=../../elsewhere", "experiment"), ("profile=quick", "profile"),
                                          ("resume=true", "resume"), ("seed=3", "seed")])
def test_keys_only_the_cli_sets_are_refused(override, key):
    from reproduce.config import ConfigError, compose
    with pytest.raises(ConfigError, match=f"'{key}' cannot be set"):
        compose("resnet", "smoke", [override])


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", "..", ".hidden", ""])
def test_a_name_that_is_no_plain_name_is_refused(name):
    from reproduce.config import ConfigError
    from reproduce.sweep import plain_name
    with pytest.raises(ConfigError, match="not a plain name"):
        plain_name(name, "run name")
    assert plain_name("b512-linear-warmup", "run name") == "b512-linear-warmup"


# --- 6. --resume runs what was started ----------------------------------------------------------

@pytest.mark.parametrize("override,key,before,after", [
    ("schedule.lr=0.2", "schedule.lr", 0.1, 0.2), ("schedule.max_steps=32", "schedule.max_steps", 16, 32),
    ("data.batch_size=32", "data.batch_size", 16, 32), ("models=[resnet8,plain8]", "models", ["resnet8"], ["resnet8", "plain8"])])
def test_resume_refuses_an_override_that_changes_training(override, key, before, after, killed):
    from reproduce.cli import _resume_config
    from reproduce.config import ConfigError
    with pytest.raises(ConfigError, match=f"--resume cannot change {key}: .* has {re.escape(repr(before))}, "
                                          f"the override gives {re.escape(repr(after))}"):
        _resume_config("resnet", str(killed), [override])
    cfg = _resume_config("resnet", str(killed), ["trainer.progress=false", "wandb.mode=offline", "trainer.threads=2"])
    assert (cfg.trainer.progress, cfg.wandb.mode, cfg.trainer.threads) == (False, "offline", 2)


def test_a_parallel_sweep_worker_death_sigterm_and_resume_overrides(tmp_path):
    """A parallel worker SIGKILLed (an OOM kill): its run is FAILED in results.md, not missing.
    Resumed with wandb.mode=offline (the sweep ran with W&B off), then SIGTERM to the sweep alone (a
    scheduler's preemption): it stops its worker at a step boundary with its checkpoint and exits 130.
    Resumed again: the workers log to W&B, so the run-time override reached them."""
    proc = run_cli(*PARALLEL, f"out_dir={tmp_path}", env={"REPRODUCE_FAULT": "kill:step:5:resnet8"}, check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    row = next(line for line in (tmp_path / "resnet" / "results.md").read_text().splitlines() if line.startswith("| resnet8 |"))
    assert "FAILED" in row and "worker exited -9" in row, row
    proc = run_cli("resnet", "--resume", tmp_path, "wandb.mode=offline", env={"REPRODUCE_FAULT": "term-sweep:step:10:resnet8"},
                   check=False, new_session=True)
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "resnet8: interrupted at iteration" in proc.stdout
    _wait_unlocked(tmp_path / "resnet" / "resnet8" / LOCK_FILE)  # free at once: the sweep waited for its worker
    _stopped_at_a_boundary(tmp_path / "resnet" / "resnet8", 10)
    run_cli("resnet", "--resume", tmp_path, "wandb.mode=offline")
    for name in ("resnet8", "plain8"):
        status = json.loads((tmp_path / "resnet" / name / "status.json").read_text())
        assert status["status"] == "done" and status["step"] == 16, status
        no_duplicates(tmp_path / "resnet" / name)
    assert list((tmp_path / "resnet" / "resnet8" / "wandb").glob("offline-run-*/*.wandb"))


# --- 7. checkpoints are finite ------------------------------------------------------------------

def test_the_kept_checkpoint_of_a_diverging_run_is_finite(tmp_path):
    proc = run_cli(*BASE, f"out_dir={tmp_path}", "schedule.lr=1000", "trainer.checkpoint_every=1",
                   "trainer.log_every=8", "trainer.eval_every=8", check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    run = tmp_path / "resnet" / "resnet8"
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and "found before its checkpoint" in status["error"], status
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == status["step"] - 1
    for key, value in ckpt["state_dict"].items():
        assert torch.isfinite(value.float()).all(), key


# --- 8. damaged files and a full disk -----------------------------------------------------------

def test_a_cut_off_last_metrics_line_is_dropped(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("step,metric,value\r\n2,train/loss,2.5\r\n4,train/loss,2.2")  # cut mid-number
    assert read_rows(path) == [{"step": 2, "metric": "train/loss", "value": 2.5}]


def test_a_damaged_metrics_file_is_named(copy_of):
    from reproduce.config import ConfigError
    out, run = copy_of()
    (run / "metrics.csv").write_text("step,metric,value\r\nx,train/loss,1\r\n")
    with pytest.raises(ConfigError, match=f"{run / 'metrics.csv'}: line 2 is not a"):
        resume_action(run)


@pytest.mark.parametrize("name,content", [("sweep.yaml", "models: [a\n  b: ]: ["), ("sweep.json", "[]")])
def test_a_damaged_sweep_file_is_named(name, content, copy_of):
    from reproduce.cli import _resume_config
    from reproduce.config import ConfigError
    from reproduce.sweep import prepare_sweep
    out, run = copy_of()
    path = run.parent / name
    path.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        prepare_sweep(_resume_config("resnet", str(out), []))


@pytest.mark.parametrize("content", ["{garbage", "[1, 2]", "\xff\xfe"])
def test_a_damaged_status_reads_as_none_or_fails_naming_the_file(content, tmp_path):
    from reproduce.config import ConfigError
    from reproduce.runs import RunDir
    files = RunDir(tmp_path)
    files.status_path.write_bytes(content.encode("latin1"))
    assert files.status() == {}
    with pytest.raises(ConfigError, match=f"{files.status_path} is damaged"):
        files.status(strict=True)


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path):
    """ENOSPC while the checkpoint of iteration 8 is written (simulated by the fault hook): the sweep
    stops, naming the file; the checkpoint of 4 is intact, status.json says failed, no temp file."""
    proc = run_cli(*BASE, "models=[resnet8,plain8]", f"out_dir={tmp_path}", env={"REPRODUCE_FAULT": "enospc:checkpoint:8"},
                   check=False)
    assert proc.returncode == 1
    run = tmp_path / "resnet" / "resnet8"
    line = proc.stderr.strip().splitlines()[-1]
    assert line == f"error: cannot write {run / 'checkpoints' / 'last.ckpt'}: No space left on device; free some space " \
                   f"there, then continue with --resume", line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 4
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and "No space left on device" in status["error"]
    assert not (tmp_path / "resnet" / "plain8").exists()  # the sweep stopped: every run would hit the full disk


# --- 9. every bad input is one line, before anything trains -------------------------------------

@pytest.mark.parametrize("override,message", [
    ("data.val_size=-5", "data.val_size must be in 1..10000"), ("data.val_size=-40000", "data.val_size must be in 1..10000"),
    ("data.val_size=60000", "data.val_size must be in 1..10000"), ("data.val_size=0", "data.val_size must be in 1..10000"),
    ("trainer.num_nodes=0", "trainer.num_nodes must be at least 1"), ("schedule.lr=inf", "schedule.lr must be a finite"),
    ("schedule.lr=nan", "schedule.lr must be a finite"), ("seeds=[-1]", "seeds: -1 is not a seed"),
    ("seeds=[4294967296]", "seeds: 4294967296 is not a seed"), ("optim.momentum=-1", "optim.momentum must be in [0, 1)"),
    ("optim.momentum=1", "optim.momentum must be in [0, 1)"), ("optim.weight_decay=-1e-4", "optim.weight_decay must be >= 0"),
    ("trainer.noise_every=0", "trainer.noise_every must be at least 1"),
    ("data.synthetic_train=0", "data.synthetic_train must be at least 1"),
    ("trainer.threads=-1", "trainer.threads must be at least 1"), ("trainer.precision=bogus", "trainer.precision='bogus'"),
    ("trainer.accelerator=tpu", "trainer.accelerator='tpu'"), ("models=[resnet8,resnet8]", "models lists a model twice"),
    ("schedule.milestones=[4,20]", "schedule.milestones [20] are not below schedule.max_steps=16"),
    ("data.eval_limit=0", "data.eval_limit must be at least 1"), ("data.train_limit=0", "data.train_limit must be at least 1"),
])
def test_a_bad_value_is_one_line(override, message):
    from reproduce.config import ConfigError, compose
    overrides = [a for a in BASE[2:] if "=" in a] + ["data.dataset=cifar10", override]
    with pytest.raises(ConfigError) as e:
        compose("resnet", "smoke", overrides)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize("spec", ["kill:step:\u00b2", "kill:step:-1", "term:soon:3", "kill:step"])
def test_a_bad_fault_spec_is_one_line(spec, monkeypatch):
    from reproduce.callbacks.checkpoint import FAULT_ENV, Fault
    from reproduce.config import ConfigError
    monkeypatch.setenv(FAULT_ENV, spec)
    with pytest.raises(ConfigError, match=FAULT_ENV):
        Fault.spec_parts()


def test_bad_input_from_the_command_line_trains_nothing(tmp_path):
    one_line_exit_2(run_cli(*BASE, f"out_dir={tmp_path}", "data.val_size=-5", env={"REPRODUCE_FAULT": "kill:step:\u00b2"},
                            check=False), "REPRODUCE_FAULT")
    assert not (tmp_path / "resnet").exists()


def test_dry_run_states_the_split():
    from reproduce.cli import dry_run
    from reproduce.config import compose
    text = dry_run(compose("resnet", "smoke", ["data.dataset=cifar10", "data.val_size=2000"]))
    assert "# data: 48,000 training images, 2,000 validation (of 50,000, split by data.split_seed=0), 10,000 test, " \
           "the first 256 of val and of test at each evaluation" in text
