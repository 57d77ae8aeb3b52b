"""The GitHub workflow for users' forks, and the dependency ranges it tests."""
import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"


def _lint_tool(name: str) -> str:
    """The executable of a tool the lint extra installs: beside this Python (a virtual environment
    that is not activated) or on PATH. The workflow installs the extra and sets REQUIRE_LINT, so
    there the test fails instead of skipping."""
    beside = Path(sys.executable).parent / name
    exe = str(beside) if beside.is_file() else shutil.which(name)
    if exe is None:
        if os.environ.get("REQUIRE_LINT"):
            pytest.fail(f"{name} missing: install the lint extra (pip install -e '.[lint]')")
        pytest.skip(f"{name} not installed (pip install -e '.[lint]')")
    return exe


def test_workflow_passes_actionlint():
    proc = subprocess.run([_lint_tool("actionlint"), str(WORKFLOW)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_workflows_pass_zizmor():
    """zizmor's offline audits of every workflow and of dependabot.yml (actions pinned by commit,
    no token left in .git/config, permissions, template injection, ...): no finding, and no
    input it could not read."""
    proc = subprocess.run([_lint_tool("zizmor"), "--offline", "--strict-collection", "--no-progress", "--color=never",
                           str(ROOT / ".github")], capture_output=True, text=True, timeout=60)
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


def test_workflow_pins_actions_by_commit_and_keeps_the_token_out_of_git():
    """Each action by full commit SHA with its tag in a comment (the version a reader and Dependabot see);
    every checkout without persisted credentials; no permission granted to the whole workflow,
    read access to the contents per job. zizmor checks this too where the lint extra is installed."""
    text = WORKFLOW.read_text()
    uses = re.findall(r"uses: (\S+)(.*)", text)
    assert uses
    for ref, comment in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref) and re.fullmatch(r" # v\d+\.\d+\.\d+", comment), ref + comment
    workflow = _workflow()
    assert workflow["permissions"] == {}
    for name, job in workflow["jobs"].items():
        assert job["permissions"] == {"contents": "read"}, name
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False, name


def test_workflow_runs_the_built_wheel_from_an_empty_directory():
    """The wheel job installs what a user installs: the wheel python -m build made from the sdist,
    not the checkout, and runs the console script outside the checkout."""
    job = _workflow()["jobs"]["wheel"]
    lines = [line.strip() for step in job["steps"] for line in step.get("run", "").splitlines()]
    assert "python -m build" in lines and '"$venv_python" -m pip install dist/reproduce-*.whl' in lines
    assert not any("pip install -e" in line for line in lines)
    run = job["steps"][-1]["run"].splitlines()
    after_cd = run[run.index('cd "$RUNNER_TEMP/empty"'):]
    for command in ("reproduce --version", "reproduce list | tee experiments.txt", "reproduce resnet --smoke"):
        assert command in after_cd, command
    assert any(line.startswith('grep -q "^resnet " experiments.txt') for line in after_cd)


def test_workflow_installs_torch_at_the_floor_in_the_lowest_entries():
    install = next(s["run"] for s in _workflow()["jobs"]["smoke"]["steps"] if "download.pytorch.org" in s.get("run", ""))
    torch_line = next(line for line in install.splitlines() if "download.pytorch.org" in line)
    assert '"${constraints[@]}"' in torch_line and "--no-deps" in torch_line, torch_line


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
    for name in ("torch", "torchvision", "pytorch-lightning", "torchmetrics", "omegaconf", "wandb"):
        assert name in pins, f"{name}'s floor is not pinned in constraints-lowest.txt"
    assert "<" in reqs["pytorch-lightning"], "the code uses Lightning internals: bound it above"
