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
from benchmarks.gpu_check import (PROJECTED, TARGETS, Progress, experiment_stacks, last_logged_step,  # noqa: E402
                                  project, rate_at, stack_rates)


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


def stack_checkpoints(out, accelerator: str, train_step: str) -> dict:
    """A stack of plain8 and resnet8 (the smoke schedule: 8 iterations, lr drops) trained by
    execute_stack in fp32; each run's last checkpoint."""
    from reproduce.experiments import model_plans
    from reproduce.stacked import execute_stack
    from reproduce.train import build_run
    cfg = compose("resnet", "smoke", ["models=[plain8,resnet8]", "trainer.stack=on", f"trainer.accelerator={accelerator}",
                                      "trainer.precision=32-true", f"trainer.train_step={train_step}",
                                      "wandb.mode=disabled", "trainer.progress=false"])
    plans = model_plans(cfg)
    statuses = execute_stack([build_run(run_cfg, out / name, "test", name=name) for name, run_cfg in plans])
    assert [s["status"] for s in statuses] == ["done", "done"], statuses
    return {name: torch.load(out / name / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
            for name, _ in plans}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_stack_trains_as_the_eager_stack(tmp_path):
    """trainer.train_step=cuda-graph for a stack (one GraphedStep around StackedModule's loss and
    sums): every run's weights, BN statistics and momentum buffers match the eager stack's up to
    kernel rounding, at the same iteration."""
    eager, graphed = (stack_checkpoints(tmp_path / mode, "gpu", mode) for mode in ("eager", "cuda-graph"))
    for name, e in eager.items():
        g = graphed[name]
        assert g["global_step"] == e["global_step"] == 8 and g["state_dict"].keys() == e["state_dict"].keys()
        for k, v in e["state_dict"].items():
            torch.testing.assert_close(g["state_dict"][k].float(), v.float(), rtol=1e-3, atol=1e-4, msg=f"{name} {k}")
        for k, v in e["optimizer_states"][0]["state"].items():
            torch.testing.assert_close(g["optimizer_states"][0]["state"][k]["momentum_buffer"], v["momentum_buffer"],
                                       rtol=1e-3, atol=1e-4)


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


@pytest.mark.unit
def test_projections_stack_figure6_and_table6_as_the_package_does():
    fig6, table6 = (experiment_stacks(*PROJECTED[name]) for name in ("figure6", "table6"))
    assert [(names, depth) for names, depth, _ in fig6] == [
        (["plain20", "resnet20"], 20), (["plain32", "resnet32"], 32), (["plain44", "resnet44"], 44),
        (["plain56", "resnet56"], 56), (["resnet110"], 110)]
    assert [(len(names), depth) for names, depth, _ in table6] == [(5, 20), (5, 32), (5, 44), (5, 56), (5, 110)]
    assert {steps for _, _, steps in fig6 + table6} == {64000}
    assert TARGETS["figure6_s"] == 600 and TARGETS["table6_s"] == 1800  # issue 26, on one H200


@pytest.mark.unit
def test_projection_interpolates_seconds_per_iteration_in_depth():
    rates = {(20, 2): 100.0, (56, 2): 25.0, (110, 1): 1.0}
    assert rate_at(rates, 20, 2) == 100.0
    assert rate_at(rates, 38, 2) == pytest.approx(1 / ((0.01 + 0.04) / 2))  # halfway: the mean of the seconds
    assert rate_at(rates, 110, 2) is None and rate_at(rates, 14, 2) is None and rate_at(rates, 56, 1) is None
    # a run alone trains as run_one (the sweep does not stack it): its rate is run_one's, not a stack of one's
    single = {(20, 1): 80.0, (56, 1): 20.0, (110, 1): 10.0}
    p = project([(["plain20", "resnet20"], 20, 1000), (["plain56", "resnet56"], 56, 1000), (["resnet110"], 110, 1000)],
                rates, single)
    assert [r["steps_s"] for r in p["stacks"]] == pytest.approx([10, 40, 100])
    assert p["stacked_steps_s"] == 150 and p["unstacked_steps_s"] == round(2 * 1000 / 80 + 2 * 1000 / 20 + 100)
    assert project([(["resnet32"] * 5, 32, 1000)], rates, single)["stacked_steps_s"] is None  # no stack of 5 measured
    bench = {"batch": 10, "models": {"resnet20": {"bf16-graph": {"package": {"median": 800.0}}}},
             "stack": {"variant": "bf16-graph", "models": {"resnet20": {"2": {"stack": {"median": 2000.0}},
                                                                       "5": {"error": "OOM"}}}}}
    assert stack_rates(bench) == ({(20, 2): 100.0}, {(20, 1): 80.0})  # images/s of N runs -> iterations/s


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
    bench = ph["bench"]
    for model in ("resnet8", "resnet20"):  # one run_one of each against the plain loop, then their stacks of 1 and 2
        e = bench["models"][model]["fp32"]
        assert e["ratio"]["values"] == pytest.approx([p / q for p, q in zip(e["package"]["values"], e["plain"]["values"])])
        assert set(bench["stack"]["models"][model]) == {"1", "2"}
        assert all("error" not in e for e in bench["stack"]["models"][model].values())
    # the projections: every stack's rate measured (depths 8 and 20), interpolated (14), or run_one's (resnet20 alone)
    fig6 = result["projections"]["figure6"]
    assert [(r["runs"], r["depth"]) for r in fig6["stacks"]] == [
        (["plain8", "resnet8"], 8), (["plain14", "resnet14"], 14), (["resnet20"], 20)]
    assert all(r["it_per_s"] > 0 for r in fig6["stacks"]) and fig6["stacked_steps_s"] > 0 and fig6["unstacked_steps_s"] > 0
    assert [len(r["runs"]) for r in result["projections"]["table6"]["stacks"]] == [2, 2, 2]
    assert {"figure6_s", "table6_s"} <= set(result["targets"])
    sweep = ph["sweep"]
    assert sweep["complete"] and set(sweep["runs"]) == {"plain8", "resnet8"}
    assert all(r["status"] == "done" and r["step"] == 8 and r["stack"] == ["plain8", "resnet8"]
               for r in sweep["runs"].values()), sweep["runs"]
    assert result["targets"]["sweep"]["measured_s"] == sweep["process"]["wall_s"]
    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        names = set(tar.getnames())
    assert "## Stacks" in (out / "work" / "report" / "results.md").read_text()
    assert {"gpu_check/results.md", "gpu_check/sweep.png", "gpu_check/tests.log", "gpu_check/bench.log",
            "gpu_check/sweep/resnet8/metrics.csv"} <= names


@pytest.mark.parametrize("args,message", [
    (["--data", "nope.tar.xz"], "--data nope.tar.xz: no such file or folder"),
    ([], "--data ARCHIVE|FOLDER is needed"),
    (["--cpu-smoke", "--budget-s", "0"], "--budget-s must be positive, got 0"),
])
def test_gpu_check_refuses_bad_input_in_one_line(tmp_path, args, message):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert not (tmp_path / "gpu-check-out").exists()  # refused before anything is written
