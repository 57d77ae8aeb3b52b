import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Real CIFAR-10 for the real-data tier: .ci/run prepares it here from ../shared/data.
CIFAR_ROOT = Path(os.environ.get("REPRODUCE_CIFAR_ROOT", ROOT / "data"))


@pytest.fixture(autouse=True)
def isolated_wandb(tmp_path, monkeypatch):
    """Every W&B directory inside the test's temp dir; never online."""
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")


def run_cli(*args, cwd=ROOT, timeout=600, env=None, check=True, new_session=False):
    """`python -m reproduce ARGS` in a subprocess, as a user runs it. `new_session`: in its own
    process group, as a batch job is (what a REPRODUCE_FAULT kill takes down with it)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "reproduce", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, start_new_session=new_session)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-5000:]}")
    return proc


def have_cifar() -> bool:
    return (CIFAR_ROOT / "cifar-10-batches-py" / "test_batch").exists()


def require_cifar():
    if not have_cifar():
        if os.environ.get("CI"):
            pytest.fail(f"CIFAR-10 missing at {CIFAR_ROOT}: .ci/run should have prepared it")
        pytest.skip(f"CIFAR-10 not prepared at {CIFAR_ROOT} (python ../shared/data/make_cifar10.py data)")
