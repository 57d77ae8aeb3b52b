"""The package as a user installs it: a wheel in a fresh virtual environment, run from elsewhere.

The wheel is built offline from a copy of the sources (so the checkout gets no build/ or
egg-info), installed with --no-deps into a new venv, and given this interpreter's dependencies by
a .pth file naming its site-packages: a path line in a .pth adds that directory to sys.path but
runs none of the .pth files inside it, so an editable install of the checkout there stays
invisible, and every import of `reproduce` must come from the wheel.
"""
import os
import shutil
import site
import subprocess
import sys
import sysconfig

from .conftest import ROOT

SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "LICENSE", "reproduce")


def _run(cmd, cwd, env, timeout=300):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_wheel_installed_elsewhere_runs_every_experiment(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", tmp_path / "dist", src], cwd=tmp_path, env=env)
    wheel = next((tmp_path / "dist").glob("reproduce-*.whl"))

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path, env=env)
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", "--no-index", wheel],
         cwd=tmp_path, env=env)
    purelib = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env).strip()
    shared = dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (venv / purelib.split(str(venv) + "/", 1)[1] / "_shared_deps.pth").write_text("\n".join(shared) + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run([py, "-c", "import reproduce; print(reproduce.__file__)"], elsewhere, env).strip()
    assert where.startswith(str(venv)), f"reproduce imported from {where}, not from the wheel"

    exe = venv / "bin" / "reproduce"
    from reproduce import __version__
    assert _run([exe, "--version"], elsewhere, env).strip() == f"reproduce {__version__}"
    listed = [line.split()[0] for line in _run([exe, "list"], elsewhere, env).splitlines()]
    from reproduce.config import experiments
    assert listed == experiments() and "resnet" in listed
    # one run of the smoke sweep, W&B off: this checks the install, the tiers check the sweep
    out = _run([exe, "resnet", "--smoke", "models=[resnet20]", "wandb.mode=disabled", f"out_dir={tmp_path / 'runs'}"],
               elsewhere, env)
    assert (tmp_path / "runs" / "resnet" / "figure.png").exists() and "results:" in out
    assert not (elsewhere / "runs").exists() and os.listdir(elsewhere) == []
