"""Resume tier: a run killed (SIGKILL) or stopped (SIGTERM) at a chosen iteration, then resumed,
ends bit-identical to the uninterrupted run: weights, optimizer and callback state, metric
accumulators, every row of metrics.csv, the final numbers, and (where W&B is on) one history
entry per metric and iteration in the `.wandb` logs.

Faults come from the REPRODUCE_FAULT hook (reproduce/callbacks/checkpoint.py): the run signals
itself at an iteration, so nothing here depends on how fast the machine is.
"""
import glob
import json
import random
import signal
from pathlib import Path

import pytest
import torch

from reproduce.module import TRAIN_SUMS
from reproduce.runs import read_rows

from .conftest import run_cli
from .wandb_files import read_run

# resnet8 on synthetic data, 24 iterations of batch 16: lr halved at 12 and 18, evaluations every 6,
# checkpoints every 4 (so some evaluations fall between checkpoints), one thread (deterministic).
BASE = ["resnet", "--smoke", "models=[resnet8]", "data.batch_size=16", "schedule.ref_batch=16",
        "schedule.max_steps=24", "schedule.milestones=[12,18]", "trainer.checkpoint_every=4",
        "trainer.eval_every=6", "trainer.log_every=2", "trainer.deterministic=true", "trainer.threads=1"]
NO_WANDB = ["wandb.mode=disabled"]

CASES = {
    # the Figure 6 schedule, logged to W&B offline
    "milestones": [],
    # Section 4.2's ResNet-110 warmup: lr 0.01 until train/err < 85% (a tiny net on synthetic data
    # crosses it around iteration 8-12), then back to the schedule
    "warmup_until_err": ["schedule.warmup=constant", "schedule.warmup_lr=0.01", "schedule.warmup_until_err=85",
                         *NO_WANDB],
    # batch doubling instead of lr decay, after a gradual (Goyal et al.) warmup from the lr of batch
    # 16 to the linearly scaled lr of batch 32. Iterations are stated at the reference batch 16:
    # 12 iterations at 32 (4 of warmup), 3 at 64, 2 at 128
    "batch_decay_gradual_warmup": ["schedule.decay=batch", "schedule.warmup=gradual", "schedule.warmup_steps=8",
                                   "data.batch_size=32", "schedule.max_steps=48", "schedule.milestones=[24,36]",
                                   *NO_WANDB],
    # ImageNet's plateau rule: the drops are decided by evaluations, which a resume must not lose
    "on_plateau": ["schedule.on_plateau=true", "schedule.plateau_patience=1", "schedule.plateau_threshold=50",
                   "trainer.eval_every=4", "trainer.checkpoint_every=8", *NO_WANDB],
    # the eager step asked for by name (what a CUDA-graph run is without the capture)
    "eager_step": ["trainer.train_step=eager", *NO_WANDB],
    # gradient accumulation, the noise scale (read from the accumulated gradients) and two seeds
    "accumulate_noise_seeds": ["trainer.accumulate=2", "trainer.noise_scale=true", "trainer.noise_every=4",
                               "seeds=[0,1]", *NO_WANDB],
}


def _runs(case):
    return ["resnet8-seed0", "resnet8-seed1"] if "seeds=[0,1]" in CASES[case] else ["resnet8"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run of each case, made once."""
    made = {}

    def get(case):
        if case not in made:
            out = tmp_path_factory.mktemp(f"ref-{case}")
            run_cli(*BASE, *CASES[case], f"out_dir={out}", timeout=300)
            made[case] = out / "resnet"
        return made[case]
    return get


def _checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def _wandb_history(run_dir: Path) -> list:
    rows = []
    for path in sorted(glob.glob(str(run_dir / "wandb" / "*run-*" / "*.wandb"))):
        rows += read_run(path)["history"]
    return [(int(r["trainer/global_step"]), k, v) for r in rows if "trainer/global_step" in r
            for k, v in r.items() if not k.startswith("_") and k != "trainer/global_step"]


def assert_same_run(ref_run: Path, cut_run: Path) -> None:
    ref, cut = _checkpoint(ref_run), _checkpoint(cut_run)
    assert ref["global_step"] == cut["global_step"]
    assert ref["state_dict"].keys() == cut["state_dict"].keys()
    for key in ref["state_dict"]:  # weights and BN statistics
        assert torch.equal(ref["state_dict"][key], cut["state_dict"][key]), key
    assert torch.equal(ref[TRAIN_SUMS], cut[TRAIN_SUMS])  # the train-metric accumulators
    for ref_state, cut_state in zip(ref["optimizer_states"][0]["state"].values(),
                                    cut["optimizer_states"][0]["state"].values()):
        assert torch.equal(ref_state["momentum_buffer"], cut_state["momentum_buffer"])
    assert ref["callbacks"] == cut["callbacks"]  # lr drops, warmup end, noise-scale averages
    # every row, in order, with the same value: no gap, duplicate, stale or off-schedule row
    assert read_rows(cut_run / "metrics.csv") == read_rows(ref_run / "metrics.csv")
    ref_status, cut_status = (json.loads((d / "status.json").read_text()) for d in (ref_run, cut_run))
    assert cut_status["status"] == "done"
    for key in ("final_test_err", "last_train_err", "last_val_err", "last_test_err", "best_test_err", "step"):
        assert cut_status.get(key) == ref_status.get(key), key
    assert "final_test_err" in cut_status and "last_val_err" in cut_status


def kill_and_resume(case: str, fault: str, out: Path, reference) -> Path:
    """Run `case` with REPRODUCE_FAULT=fault, check that it stopped there, resume, compare."""
    sig = {"kill": -signal.SIGKILL, "term": 130}[fault.split(":")[0]]
    proc = run_cli(*BASE, *CASES[case], f"out_dir={out}", env={"REPRODUCE_FAULT": fault}, check=False,
                   timeout=300, new_session=True)
    assert proc.returncode == sig, (proc.returncode, proc.stderr[-3000:])
    target = fault.split(":")[3] if fault.count(":") == 3 else _runs(case)[0]
    status = json.loads((out / "resnet" / target / "status.json").read_text())
    assert status["status"] == ("running" if sig < 0 else "interrupted"), status
    run_cli("resnet", "--resume", out, timeout=300)
    for name in _runs(case):
        assert_same_run(reference(case) / name, out / "resnet" / name)
    return out / "resnet"


FIGURE6_FAULTS = [
    "kill:step:3",        # early in the first quarter, before the first checkpoint
    "term:step:5",        # SIGTERM early: stops at the next step boundary, checkpoint 5
    "kill:checkpoint:4",  # right after the first checkpoint (the case that replayed batches)
    "kill:step:7",        # between checkpoints, after an evaluation
    "kill:step:12",       # at the first lr drop
    "term:eval:18",       # SIGTERM during the evaluation at the second drop
    "kill:eval:12",       # SIGKILL during an evaluation that no checkpoint covers yet
    "kill:step:24",       # at the last iteration, before its evaluation and final checkpoint
]


@pytest.mark.parametrize("fault", FIGURE6_FAULTS)
def test_figure6_schedule_resumes_exactly(fault, tmp_path, reference):
    exp = kill_and_resume("milestones", fault, tmp_path, reference)
    # W&B: the same run id continued, each metric once per iteration, the same values
    run = exp / "resnet8"
    ids = {Path(f).name for f in glob.glob(str(run / "wandb" / "*run-*" / "*.wandb"))}
    assert len(ids) == 1 and len(glob.glob(str(run / "wandb" / "*run-*"))) == 2
    cut, ref = _wandb_history(run), _wandb_history(reference("milestones") / "resnet8")
    assert len({(s, k) for s, k, _ in cut}) == len(cut), "a metric logged twice at one iteration"
    assert sorted(cut) == sorted(ref)


def test_random_iterations_resume_exactly(tmp_path, reference):
    """Two iterations drawn under a fixed seed, one SIGKILL and one SIGTERM."""
    rng = random.Random(11)
    for i, sig in enumerate(("kill", "term")):
        kill_and_resume("milestones", f"{sig}:step:{rng.randint(1, 23)}", tmp_path / str(i), reference)


@pytest.mark.parametrize("case,fault", [
    ("warmup_until_err", "kill:checkpoint:4"),   # during the warmup
    ("warmup_until_err", "term:step:15"),        # after the switch back
    ("batch_decay_gradual_warmup", "kill:step:3"),   # during the gradual warmup
    ("batch_decay_gradual_warmup", "term:step:14"),  # after the batch has doubled
    ("on_plateau", "kill:step:10"),              # the case: patience, eval every 4, ckpt every 8
    ("on_plateau", "term:eval:16"),
    ("eager_step", "kill:checkpoint:4"),
    ("eager_step", "term:eval:18"),
    ("accumulate_noise_seeds", "kill:step:8:resnet8-seed1"),  # the second run of the sweep
    ("accumulate_noise_seeds", "term:eval:12:resnet8-seed0"),
])
def test_every_schedule_feature_resumes_exactly(case, fault, tmp_path, reference):
    kill_and_resume(case, fault, tmp_path, reference)


def test_the_cases_exercise_what_they_claim(reference):
    """Guards the cases above against going vacuous: the warmup switches back inside the run,
    the plateau rule drops, the batch doubles, the noise scale is logged."""
    def series(case, name, metric):
        return dict((r["step"], r["value"]) for r in read_rows(reference(case) / name / "metrics.csv")
                    if r["metric"] == metric)
    lr = series("warmup_until_err", "resnet8", "lr")
    assert lr[2] == pytest.approx(0.01) and lr[24] == pytest.approx(0.025)
    switch = min(s for s, v in lr.items() if v > 0.02)
    assert 4 < switch <= 16, lr  # between the two faults of that case
    drops = _checkpoint(reference("on_plateau") / "resnet8")["callbacks"]
    assert any(state.get("drops") for state in drops.values()), drops
    assert set(series("batch_decay_gradual_warmup", "resnet8", "batch_size").values()) == {32.0, 64.0, 128.0}
    noise = series("accumulate_noise_seeds", "resnet8-seed1", "noise_scale")
    assert sorted(noise) == [4, 8, 12, 16, 20, 24]


def test_noise_scale_leaves_training_unchanged_under_accumulation(tmp_path):
    """The estimator reads gradients; it must not change them (it once zeroed the accumulated ones)."""
    args = [*BASE, "trainer.accumulate=2", "schedule.max_steps=6", "schedule.milestones=[3,4]", "wandb.mode=disabled"]
    run_cli(*args, "trainer.noise_scale=true", "trainer.noise_every=2", f"out_dir={tmp_path / 'on'}", timeout=300)
    run_cli(*args, f"out_dir={tmp_path / 'off'}", timeout=300)
    on, off = (_checkpoint(tmp_path / d / "resnet" / "resnet8")["state_dict"] for d in ("on", "off"))
    for key in on:
        assert torch.equal(on[key], off[key]), key


def test_imagefolder_resumes_exactly(tmp_path):
    args = ["imagenet", "--smoke", "models=[resnet18]", "schedule.max_steps=8", "schedule.milestones=[4,6]",
            "trainer.checkpoint_every=2", "trainer.eval_every=4", "trainer.deterministic=true", "trainer.threads=1",
            "wandb.mode=disabled"]
    run_cli(*args, f"out_dir={tmp_path / 'ref'}", timeout=300)
    proc = run_cli(*args, f"out_dir={tmp_path / 'cut'}", env={"REPRODUCE_FAULT": "kill:step:5"}, check=False,
                   timeout=300, new_session=True)
    assert proc.returncode == -signal.SIGKILL
    run_cli("imagenet", "--resume", tmp_path / "cut", timeout=300)
    assert_same_run(tmp_path / "ref" / "imagenet" / "resnet18", tmp_path / "cut" / "imagenet" / "resnet18")


def test_fault_spec_errors_are_one_line(tmp_path):
    proc = run_cli(*BASE, *NO_WANDB, f"out_dir={tmp_path}", env={"REPRODUCE_FAULT": "kill:soon:3"}, check=False,
                   timeout=120)
    assert proc.returncode == 2 and "REPRODUCE_FAULT" in proc.stderr.strip().splitlines()[-1]
