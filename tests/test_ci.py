"""The GitHub workflow for users' forks, and the dependency ranges it tests."""
import configparser
import os
import re
import shutil
import subprocess

import pytest
import yaml

from .conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"


def test_workflow_passes_actionlint():
    exe = shutil.which("actionlint")
    if exe is None:
        if os.environ.get("REQUIRE_ACTIONLINT"):  # set by the workflow, which installs the lint extra
            pytest.fail("actionlint missing: install the lint extra (pip install -e '.[lint]')")
        pytest.skip("actionlint not installed (pip install -e '.[lint]'; it downloads the binary from GitHub)")
    proc = subprocess.run([exe, str(WORKFLOW)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _workflow():
    return yaml.safe_load(WORKFLOW.read_text())


def _steps(job) -> str:
    return "\n".join(str(step) for step in job["steps"])


def test_workflow_smokes_every_experiment_on_the_matrix():
    smoke = _workflow()["jobs"]["smoke"]
    matrix = smoke["strategy"]["matrix"]
    assert matrix["python"] == ["3.10", "3.12"] and matrix["deps"] == ["lowest", "newest"]
    steps = _steps(smoke)
    assert "pytest -m unit" in steps
    assert "$(python -m reproduce list" in steps and '"$experiment" --smoke' in steps
    assert "-c constraints-lowest.txt" in steps and "cache': 'pip'" in steps
    upload = next(s for s in smoke["steps"] if "upload-artifact" in s.get("uses", ""))
    assert "results.md" in upload["with"]["path"] and "*.png" in upload["with"]["path"]
    assert _workflow()["env"]["WANDB_MODE"] == "offline" and "wandb sync" in steps
    assert "../shared" not in WORKFLOW.read_text()


def _install_requires() -> dict:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    reqs = {}
    for line in cfg["options"]["install_requires"].strip().splitlines():
        name, spec = re.match(r"([A-Za-z0-9_.-]+)(.*)", line.strip()).groups()
        reqs[name.lower()] = spec
    return reqs


def test_lowest_constraints_pin_the_declared_floors():
    reqs = _install_requires()
    pins = dict(line.split("==") for line in (ROOT / "constraints-lowest.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    for name, version in pins.items():
        assert f">={version}" in reqs[name.lower()], (name, version, reqs[name.lower()])
    for name in ("pytorch-lightning", "torchmetrics", "omegaconf", "wandb"):
        assert name in pins, f"{name}'s floor is not pinned in constraints-lowest.txt"
    assert "<" in reqs["pytorch-lightning"], "the code uses Lightning internals: bound it above"
