"""The GPU fast path as far as a CPU shows it: torch.compile (train and evaluation), bf16 autocast,
W&B not installed, and the one GPU check script end to end in its --cpu-smoke mode."""
import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch

from reproduce.config import ConfigError, compose
from reproduce.data.cifar10 import CLASSES, load_cifar10
from reproduce.train import compile_mode_for, run_one

from .conftest import ROOT

sys.path.insert(0, str(ROOT))  # benchmarks/ sits beside the package, not in it
from benchmarks.gpu_check import PAPER, Progress, last_logged_step, plan_schedule  # noqa: E402


def test_compile_and_bf16_on_cpu_train_and_evaluate_with_one_graph_each(tmp_path):
    import torch._dynamo
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    # val and test both 256 images in one batch: the evaluations and the final test share a shape
    cfg = compose("resnet", "smoke", ["models=[resnet8]", "trainer.compile=true", "trainer.precision=bf16-mixed",
                                      "wandb.mode=disabled", "data.synthetic_train=1280", "data.val_size=256"])
    status = run_one(cfg, tmp_path / "run", group="test")
    assert status["status"] == "done", status
    assert 0 <= status["final_test_err"] <= 100
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    # compiled in place (nn.Module.compile): the checkpoint holds the net's own keys, so it loads uncompiled
    assert "model.conv1.weight" in state["state_dict"] and not any("_orig_mod" in k for k in state["state_dict"])
    # one graph for training (forward + backward under bf16 autocast), one for evaluation: the final
    # test under inference_mode and the training precision reuses the periodic evaluations' graph
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2, dict(torch._dynamo.utils.counters["stats"])


def test_compile_mode_auto_is_cuda_graphs_on_gpu_only():
    assert compile_mode_for("auto", "cpu") == "default"
    assert compile_mode_for("max-autotune", "cpu") == "max-autotune"
    assert compile_mode_for("auto", "auto") == ("reduce-overhead" if torch.cuda.is_available() else "default")
    with pytest.raises(ConfigError, match="trainer.compile_mode"):
        compose("resnet", "smoke", ["trainer.compile_mode=fast"])


BLOCK_WANDB = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "wandb" or name.startswith("wandb."):
            raise ModuleNotFoundError("No module named 'wandb' (hidden by the test)")
sys.meta_path.insert(0, Block())
from reproduce.cli import main
code = main(sys.argv[1:])
assert "wandb" not in sys.modules
sys.exit(code)
"""


@pytest.mark.parametrize("mode", ["disabled", "auto"])
def test_runs_without_wandb_installed(tmp_path, mode):
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    proc = subprocess.run([sys.executable, "-c", BLOCK_WANDB, "resnet", "--smoke", "models=[resnet8]",
                           f"wandb.mode={mode}", f"out_dir={tmp_path}"], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "resnet" / "resnet8" / "status.json").read_text())["status"] == "done"
    assert not (tmp_path / "resnet" / "resnet8" / "wandb").exists()
    if mode == "auto":
        assert "wandb is not installed" in proc.stderr


def test_plan_schedule_keeps_the_papers_shape():
    assert plan_schedule(70000, PAPER) == {**PAPER, "scaled": False}
    plan = plan_schedule(10000, PAPER)
    # 64 evaluation points as the paper's 64k / 1k; milestones at 50% and 75%
    assert plan == {"max_steps": 9984, "milestones": [4992, 7488], "eval_every": 156, "scaled": True}
    small = plan_schedule(10, PAPER)
    assert small["max_steps"] >= 4 and 0 < small["milestones"][0] < small["milestones"][1] < small["max_steps"]


def test_progress_rate_is_the_slope_of_the_later_samples(tmp_path):
    csv = tmp_path / "metrics.csv"
    assert last_logged_step(csv) is None
    csv.write_text("step,metric,value\n")
    assert last_logged_step(csv) is None
    csv.write_text("step,metric,value\n50,train/loss,2.1\n100,train/err,80.5\n")
    assert last_logged_step(csv) == 100
    p = Progress(tmp_path, 0.0)
    # start-up of 30 s, then 200 it/s: the fit over the second half sees only the steady part
    p.samples = [(30.0, 0)] + [(30.0 + k, 200 * k) for k in range(1, 9)]
    s = p.summary()
    assert s["first_logged_at_s"] == 30.0 and s["last_logged_step"] == 1600
    assert s["steady_it_per_s"] == pytest.approx(200.0)


def make_archive(path, per_class_train=10, per_class_test=2):
    from PIL import Image
    rng = np.random.default_rng(1)
    with tarfile.open(path, "w:xz") as tar:
        for split, n in (("train", per_class_train), ("test", per_class_test)):
            for cls in CLASSES:
                for i in range(n):
                    buf = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG", quality=75)
                    info = tarfile.TarInfo(f"{split}/{cls}/{i:04d}.jpg")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)
    return path


def test_prepare_writes_the_cifar_layout_from_the_archive(tmp_path):
    archive = make_archive(tmp_path / "tiny.tar.xz")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "prepare_cifar10.py"), str(archive), str(tmp_path / "data")],
                   check=True, timeout=300)
    train_x, train_y, test_x, test_y = load_cifar10(tmp_path / "data", download=False)
    assert train_x.shape == (100, 3, 32, 32) and test_x.shape == (20, 3, 32, 32)
    assert sorted(np.bincount(train_y.numpy()).tolist()) == [10] * 10
    assert sorted(np.bincount(test_y.numpy()).tolist()) == [2] * 10


def test_gpu_check_cpu_smoke_end_to_end_without_installing_the_package(tmp_path):
    archive = make_archive(tmp_path / "cifar10-jpeg.tar.xz")
    # a bare environment: no PYTHONPATH, started from elsewhere; the script finds the repository itself
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OUT")}
    env["PYTHON"] = sys.executable
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--cpu-smoke", "--data", archive.name,
                           "--budget-s", "1500"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "gpu-check-out"  # the default --out, in the current folder; the runs in its work/
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log", "gpu_check.tar.gz", "work"]
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["env"]["reproduce_from"] == str(ROOT) and not result["notes"], result["notes"]
    ph = result["phases"]
    assert ph["data"]["train_images"] == 100 and ph["data"]["test_images"] == 20
    assert ph["tests"]["rc"] == 0 and "skipped" in ph["tests"]["summary"]  # the CUDA tests, skipped on a CPU
    for variant in ("fp32", "bf16"):  # bf16 autocast measured on the CPU too
        e = ph["bench"]["models"]["resnet8"][variant]
        assert e["ratio"]["values"] == pytest.approx([p / q for p, q in zip(e["package"]["values"], e["plain"]["values"])])
    assert "overhead_ms" in ph["bench"]["overhead"]["fp32"]
    sweep = ph["sweep"]
    assert sweep["complete"] and sweep["parallel"] == 2 and set(sweep["runs"]) == {"plain8", "resnet8"}
    assert sweep["overrides"] == ph["bench"]["models"]["resnet8"][sweep["variant"]]["overrides"]  # the fastest measured
    assert all(r["status"] == "done" and r["step"] == 8 for r in sweep["runs"].values()), sweep["runs"]
    assert "sweep" in result["targets"]
    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"gpu_check/results.md", "gpu_check/sweep.png", "gpu_check/tests.log", "gpu_check/bench.log",
            "gpu_check/sweep/resnet8/metrics.csv"} <= names


@pytest.mark.parametrize("args,message", [
    (["--data", "nope.tar.xz"], "--data nope.tar.xz: no such file or folder"),
    ([], "--data ARCHIVE|FOLDER is needed"),
    (["--cpu-smoke", "--budget-s", "0"], "--budget-s and --parallel must be positive"),
])
def test_gpu_check_refuses_bad_input_in_one_line(tmp_path, args, message):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert not (tmp_path / "gpu-check-out").exists()  # refused before anything is written
