import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Real CIFAR-10 for the real-data tier: .ci/run prepares it here from ../shared/data.
CIFAR_ROOT = Path(os.environ.get("REPRODUCE_CIFAR_ROOT", ROOT / "data"))


# Test tiers (README, "Development"; docs/ci.md): every test carries exactly one of these markers, set by its module
# below or by an explicit `@pytest.mark.<tier>` on the test, which wins. `python -m pytest -m unit`
# is the fast tier; CI runs them all. A new test module names its tier here, or collection fails.
TIERS = ("unit", "smoke", "slow", "ddp")
MODULE_TIERS = {
    "test_ci": "unit", "test_config": "unit", "test_data": "unit", "test_imagenet": "unit", "test_models": "unit",
    "test_progress": "unit", "test_report": "unit", "test_schedules": "unit", "test_wandb_io": "unit",
    "test_keys": "unit", "test_units": "unit", "test_train_step": "unit", "test_temperature_report": "unit",
    "test_smoke": "smoke", "test_reliability": "smoke", "test_trained_model": "smoke", "test_wandb_sweep": "smoke",
    "test_run_dir": "smoke", "test_stack": "smoke",
    "test_bench": "slow", "test_real_data": "slow", "test_wheel": "slow", "test_resume": "slow", "test_gpu_path": "slow",
    "test_ddp": "ddp",
}


@pytest.hookimpl(tryfirst=True)  # before `-m` selects: the markers must be there by then
def pytest_collection_modifyitems(config, items):
    for item in items:
        explicit = [m.name for m in item.iter_markers() if m.name in TIERS]
        if len(explicit) > 1:
            raise pytest.UsageError(f"{item.nodeid}: more than one test tier ({', '.join(explicit)})")
        if explicit:
            continue
        module = item.module.__name__.rsplit(".", 1)[-1]
        if module not in MODULE_TIERS:
            raise pytest.UsageError(f"{item.nodeid}: no test tier; add '{module}' to MODULE_TIERS in tests/conftest.py "
                                    f"or mark the test with one of {', '.join(TIERS)}")
        item.add_marker(MODULE_TIERS[module])


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
