"""Reliability tier: finished runs skipped on resume, failed runs inside a sweep, bad input as one line.
(Kill-and-resume exactness: test_resume.py.)"""
import glob

import pytest

from .conftest import run_cli


def test_finished_runs_are_skipped_on_resume(tmp_path):
    run_cli("resnet", "--smoke", "models=[resnet8,plain8]", f"out_dir={tmp_path}", "wandb.mode=disabled", timeout=300)
    before = (tmp_path / "resnet" / "resnet8" / "checkpoints" / "last.ckpt").stat().st_mtime
    proc = run_cli("resnet", "--resume", tmp_path, timeout=300)
    assert "resnet8: finished earlier, skipped" in proc.stdout
    assert (tmp_path / "resnet" / "resnet8" / "checkpoints" / "last.ckpt").stat().st_mtime == before


def test_a_diverging_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    proc = run_cli("resnet", "--smoke", "models=[resnet8,plain8]", "per_model.resnet8.schedule.lr=1e30",
                   f"out_dir={tmp_path}", "wandb.mode=disabled", timeout=300, check=False)
    assert proc.returncode == 1, proc.stderr  # the sweep finished, but CI must go red
    assert proc.stderr.strip().splitlines()[-1] == \
        "error: 1 of 2 runs failed (resnet8); see their status.json, or results.md"
    table = (tmp_path / "resnet" / "results.md").read_text()
    assert "| resnet8 |" in table and "FAILED: the training loss became" in table
    plain_row = next(line for line in table.splitlines() if line.startswith("| plain8 |"))
    assert plain_row.startswith("| plain8 | 1 | 8 |") and plain_row.endswith("| ok |")
    assert "by iteration" in proc.stdout
    assert (tmp_path / "resnet" / "plain8" / "checkpoints" / "last.ckpt").exists()
    assert (tmp_path / "resnet" / "resnet8" / "metrics.csv").exists()  # the failed run's logs are kept


@pytest.mark.parametrize("args,message", [
    (["data.dataset=cifar10", "data.root=/nonexistent/cifar", "data.download=false"], "/nonexistent/cifar/cifar-10-batches-py"),
    (["out_dir=/proc/forbidden"], "out_dir=/proc/forbidden: cannot write"),
    (["trainer.devices=3"], "not divisible by devices"),
    (["schedule.lr=-0.1"], "schedule.lr must be positive"),
    (["data.batch_size=0"], "data.batch_size must be positive"),
])
def test_bad_input_is_one_line_exit_2(args, message, tmp_path):
    extra = [] if any(a.startswith("out_dir") for a in args) else [f"out_dir={tmp_path}"]
    proc = run_cli("resnet", "--smoke", "models=[resnet8]", "wandb.mode=disabled", *args, *extra, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr, proc.stderr


def test_corrupt_batch_file_is_named(tmp_path):
    from reproduce.data.cifar10 import TRAIN_FILES
    import pickle
    import numpy as np
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in TRAIN_FILES + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({"data": np.zeros((10, 3072), np.uint8), "labels": [0] * 10}))
    (folder / "data_batch_2").write_bytes(b"\x80\x04garbage")
    proc = run_cli("resnet", "--smoke", "models=[resnet8]", "wandb.mode=disabled", "data.dataset=cifar10",
                   f"data.root={tmp_path / 'cifar'}", f"out_dir={tmp_path / 'out'}", check=False, timeout=120)
    assert proc.returncode == 2 and "data_batch_2 is truncated or corrupt" in proc.stderr.strip().splitlines()[-1]


def test_wandb_online_failure_falls_back_to_offline(tmp_path):
    # a login and a server that refuses every connection (WANDB_MODE=online: conftest sets offline)
    env = {"WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_MODE": "online"}
    proc = run_cli("resnet", "--smoke", "models=[resnet8]", "wandb.mode=online", "wandb.init_timeout=10",
                   f"out_dir={tmp_path}", env=env, timeout=300)
    assert "logging offline instead" in proc.stderr
    assert glob.glob(str(tmp_path / "resnet" / "resnet8" / "wandb" / "offline-run-*" / "*.wandb"))
    assert glob.glob(str(tmp_path / "resnet" / "summary" / "wandb" / "offline-run-*" / "*.wandb"))  # the summary run too
    assert (tmp_path / "resnet" / "results.md").exists()


def test_existing_sweep_is_not_overwritten_silently(tmp_path):
    args = ["resnet", "--smoke", "models=[resnet8]", "wandb.mode=disabled", f"out_dir={tmp_path}"]
    run_cli(*args, timeout=120)
    proc = run_cli(*args, check=False, timeout=120)
    assert proc.returncode == 2 and "--resume" in proc.stderr and "--overwrite" in proc.stderr
