"""Stacking (reproduce/stacked.py, models/stacked.py): runs of one parameter shape trained as one
network are, slice by slice, the runs trained alone.

Equivalence is checked in float64, where the only differences are the order of floating-point sums
(grouped vs single convolutions), far below 1e-9: the net and optimizer alone (unit), then whole
sweeps through the CLI with `trainer.precision=64-true`, stacked against unstacked, and resumed
across the two (smoke, slow).
"""
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from reproduce.config import ConfigError, compose, for_model
from reproduce.models import build
from reproduce.models.stacked import StackedCifarNet, StackedSGD, unstack_state
from reproduce.module import TRAIN_SUMS, load_classifier
from reproduce.runs import read_rows
from reproduce.schedules import Schedule
from reproduce.stacked import stack_groups, stacking

from .conftest import run_cli
from .test_resume import assert_same_run
from .wandb_files import read_run

TOL = 1e-9


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def nets(names_seeds):
    out = []
    for name, seed in names_seeds:
        torch.manual_seed(seed)
        out.append(build(name).double())
    return out


@pytest.mark.unit
def test_every_slice_trains_as_its_run_alone_in_float64():
    """20 iterations spanning an lr drop (10) and, for one run, a warmup switch (6): every slice's
    logits, loss, gradients, parameters, momentum buffers and BN statistics equal its run's."""
    runs = [("resnet8", 0), ("resnet8", 1), ("plain8", 2)]
    alone = nets(runs)
    stacked = StackedCifarNet(nets(runs)).double()
    n = len(runs)
    schedules = [Schedule(0.1, 8, 8, [10], 20), Schedule(0.2, 8, 8, [10], 20),
                 Schedule(0.1, 8, 8, [10], 20, warmup="constant", warmup_lr=0.01, warmup_steps=6)]
    assert schedules[2].lr(5) == 0.01 and schedules[2].lr(6) == 0.1 and schedules[0].lr(10) < schedules[0].lr(9)
    opts = [torch.optim.SGD(m.parameters(), lr=0.0, momentum=0.9, weight_decay=1e-4) for m in alone]
    sopt = StackedSGD(stacked.parameters(), n, 0.9, 1e-4)
    g = torch.Generator().manual_seed(0)
    for step in range(20):
        xs = [torch.randn(8, 3, 32, 32, generator=g, dtype=torch.float64) for _ in runs]
        ys = [torch.randint(0, 10, (8,), generator=g) for _ in runs]
        lrs = [s.lr(step) for s in schedules]
        logits = stacked(torch.cat(xs, 1))
        losses = F.cross_entropy(logits.flatten(0, 1), torch.stack(ys, 1).flatten(), reduction="none").view(8, n).mean(0)
        sopt.zero_grad()
        losses.sum().backward()
        sopt.param_groups[0]["lr"] = lrs
        sopt.step()
        state = stacked.state_dict()
        grads = {k: p.grad for k, p in stacked.named_parameters()}
        for i, (net, opt) in enumerate(zip(alone, opts)):
            out = net(xs[i])
            loss = F.cross_entropy(out, ys[i])
            opt.zero_grad()
            loss.backward()
            for group in opt.param_groups:
                group["lr"] = lrs[i]
            opt.step()
            assert rel(logits[:, i], out) < TOL and rel(losses[i], loss) < TOL
            for k, p in net.named_parameters():
                assert rel(grads[k].unflatten(0, (n, -1))[i], p.grad) < TOL, (step, i, k)
            mine = unstack_state(state, n, i)
            for k, v in net.state_dict().items():  # weights after the step, BN running mean/var, batch count
                assert rel(mine[k].double(), v.double()) < TOL if v.is_floating_point() else torch.equal(mine[k], v), k
            for p, sp in zip(net.parameters(), stacked.parameters()):
                buf = sopt.state[sp]["momentum_buffer"].unflatten(0, (n, -1))[i]
                assert rel(buf, opt.state[p]["momentum_buffer"]) < TOL


@pytest.mark.unit
def test_one_runs_loss_leaves_exactly_zero_gradient_in_the_other_slices():
    n = 3
    stacked = StackedCifarNet(nets([("resnet8", 0), ("plain8", 1), ("resnet8", 2)]))
    logits = stacked(torch.randn(4, 3 * n, 32, 32, dtype=torch.float64))
    F.cross_entropy(logits[:, 1], torch.randint(0, 10, (4,))).backward()
    for name, p in stacked.named_parameters():
        g = p.grad.unflatten(0, (n, -1))
        assert torch.count_nonzero(g[0]) == 0 and torch.count_nonzero(g[2]) == 0, name
        assert torch.count_nonzero(g[1]) > 0, name


@pytest.mark.unit
def test_a_stack_of_one_is_the_single_net():
    net = nets([("resnet14", 0)])[0]
    stacked = StackedCifarNet([net])
    assert stacked.state_dict().keys() == net.state_dict().keys()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    assert rel(stacked(x)[:, 0], net(x)) < 1e-12
    assert all(torch.equal(a, b) for a, b in zip(unstack_state(stacked.state_dict(), 1, 0).values(),
                                                 net.state_dict().values()))


@pytest.mark.unit
def test_stacks_hold_runs_of_one_shape_and_config():
    cfg = compose("resnet", "smoke", ["models=[resnet8,plain8,resnet14]", "seeds=[0,1,2]", "trainer.stack=on",
                                      "per_model.plain8.schedule.lr=0.05"])
    plans = [(f"{m}-{s}", for_model(cfg, m, s)) for m in cfg.models for s in cfg.seeds]
    groups = [[name for name, _ in g] for g in stack_groups(plans, 20)]
    # seeds, plain and residual of one depth, and their lr go together; another depth does not
    assert groups == [["resnet8-0", "resnet8-1", "resnet8-2", "plain8-0", "plain8-1", "plain8-2"],
                      ["resnet14-0", "resnet14-1", "resnet14-2"]]
    assert [len(g) for g in stack_groups(plans, 4)] == [3, 3, 3]  # the limit splits evenly
    other = for_model(compose("resnet", "smoke", ["optim.weight_decay=0.001"]), "resnet8", 0)
    assert len(stack_groups(plans[:1] + [("other", other)], 20)) == 2  # another recipe: another stack
    # resumed runs stack only with runs at their checkpoint's iteration
    assert len(stack_groups(plans[:2], 20, {"resnet8-0": 4, "resnet8-1": 8}.get)) == 2


@pytest.mark.unit
def test_stack_settings_are_checked_in_one_line():
    assert compose("resnet", "smoke", ["trainer.stack=on"]).trainer.stack == "on"  # not the YAML boolean
    assert compose("resnet", "smoke", ["trainer.stack=off"]).trainer.stack == "off"
    for override, words in (("trainer.accumulate=2", "trainer.accumulate=1"), ("trainer.precision=16-mixed", "fp16"),
                            ("trainer.parallel=2", "trainer.parallel=1"), ("schedule.on_plateau=true", "on_plateau"),
                            ("data.dataset=imagefolder", "in-memory data")):
        with pytest.raises(ConfigError, match=words):
            compose("resnet", "smoke", ["trainer.stack=on", override])
    with pytest.raises(ConfigError, match="trainer.stack"):
        compose("resnet", "smoke", ["trainer.stack=maybe"])
    # auto: only where docs/performance.md measured a stack faster
    assert not stacking(compose("resnet", "smoke", []), cuda_available=False)


# Runs of one shape: plain and residual, two seeds, 20 iterations with lr drops at 10 and 15, plain8's
# warmup ending at 6 and resnet8's at each seed's own crossing of 86% training error, in float64
F64 = ["resnet", "--smoke", "models=[resnet8,plain8]", "seeds=[0,1]", "schedule.max_steps=20",
       "schedule.milestones=[10,15]", "per_model.plain8.schedule.warmup=constant",
       "per_model.plain8.schedule.warmup_lr=0.01", "per_model.plain8.schedule.warmup_steps=6",
       "per_model.resnet8.schedule.warmup=constant", "per_model.resnet8.schedule.warmup_lr=0.01",
       "per_model.resnet8.schedule.warmup_until_err=86",
       "trainer.precision=64-true", "trainer.deterministic=true", "trainer.threads=1", "trainer.eval_every=5",
       "trainer.checkpoint_every=4"]
RUNS = ["resnet8-seed0", "resnet8-seed1", "plain8-seed0", "plain8-seed1"]


def ckpt(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def assert_equivalent(a: Path, b: Path, tol: float = TOL) -> None:
    """Two sweeps' runs agree: every metrics.csv row (train sums are float32, hence 1e-6), every
    weight, BN statistic and momentum buffer (1e-9), the checkpoint's layout and the final error."""
    for name in RUNS:
        ra, rb = read_rows(a / name / "metrics.csv"), read_rows(b / name / "metrics.csv")
        assert [(r["step"], r["metric"]) for r in ra] == [(r["step"], r["metric"]) for r in rb], name
        for x, y in zip(ra, rb):
            assert abs(x["value"] - y["value"]) <= 1e-6 * max(abs(y["value"]), 1.0), (name, x, y)
        ca, cb = ckpt(a / name), ckpt(b / name)
        assert ca.keys() == cb.keys() and ca["loops"] == cb["loops"] and ca["callbacks"] == cb["callbacks"]
        assert ca["optimizer_states"][0]["param_groups"] == cb["optimizer_states"][0]["param_groups"]
        for k, v in cb["state_dict"].items():
            assert (rel(ca["state_dict"][k], v) <= tol) if v.is_floating_point() else torch.equal(ca["state_dict"][k], v), k
        for k, v in cb["optimizer_states"][0]["state"].items():
            assert rel(ca["optimizer_states"][0]["state"][k]["momentum_buffer"], v["momentum_buffer"]) <= tol
        assert torch.allclose(ca[TRAIN_SUMS], cb[TRAIN_SUMS], rtol=1e-6)
        sa, sb = (json.loads((d / name / "status.json").read_text()) for d in (a, b))
        assert sa["status"] == sb["status"] == "done" and sa["final_test_err"] == sb["final_test_err"], name


@pytest.fixture(scope="module")
def unstacked(tmp_path_factory):
    out = tmp_path_factory.mktemp("unstacked")
    run_cli(*F64, "trainer.stack=off", "wandb.mode=disabled", f"out_dir={out}", timeout=600)
    return out / "resnet"


@pytest.fixture(scope="module")
def stacked(tmp_path_factory):
    out = tmp_path_factory.mktemp("stacked")
    proc = run_cli(*F64, "trainer.stack=on", f"out_dir={out}", timeout=600)
    assert "stack of 4: resnet8-seed0, resnet8-seed1, plain8-seed0, plain8-seed1" in proc.stderr
    return out / "resnet"


def test_a_stacked_sweep_is_the_unstacked_sweep_in_float64(stacked, unstacked):
    assert_equivalent(stacked, unstacked)
    for name in RUNS:
        status = json.loads((stacked / name / "status.json").read_text())
        assert status["stack"] == RUNS
        # each run's W&B run holds its own metrics.csv, read by W&B's reader or the package's
        logged = {(int(r["trainer/global_step"]), k, v) for path in (stacked / name / "wandb").glob("*run-*/*.wandb")
                  for r in read_run(path)["history"] for k, v in r.items()
                  if "trainer/global_step" in r and not k.startswith(("_", "trainer/"))}
        assert logged == {(r["step"], r["metric"], r["value"]) for r in read_rows(stacked / name / "metrics.csv")}
        classifier = load_classifier(stacked / name / "checkpoints" / "last.ckpt")  # one model alone
        assert classifier.model.residual == name.startswith("resnet")
    def lrs(name):
        return [r["value"] for r in read_rows(stacked / name / "metrics.csv") if r["metric"] == "lr"]
    assert lrs("plain8-seed0")[:4] == [0.01, 0.01, 0.01, 0.1]  # warmup_steps=6, lr logged every 2
    # each ResNet's warmup ends at its own crossing of 86% training error: seed 0's at 4, seed 1's never
    assert lrs("resnet8-seed0")[:3] == [0.01, 0.01, 0.1] and set(lrs("resnet8-seed1")) == {0.01}
    assert (stacked / "results.md").read_text() == (unstacked / "results.md").read_text()
    assert (stacked / "figure.png").exists()


def test_a_diverging_run_fails_alone_and_the_others_train_on(tmp_path):
    common = ["resnet", "--smoke", "trainer.precision=64-true", "trainer.threads=1", "wandb.mode=disabled"]
    proc = run_cli(*common, "models=[resnet8,plain8]", "trainer.stack=on", "per_model.plain8.schedule.lr=1e30",
                   f"out_dir={tmp_path / 'stack'}", check=False, timeout=300)
    assert proc.returncode == 1 and "1 of 2 runs failed (plain8)" in proc.stderr, proc.stderr[-2000:]
    failed, done = (json.loads((tmp_path / "stack" / "resnet" / name / "status.json").read_text())
                    for name in ("plain8", "resnet8"))
    assert failed["status"] == "failed" and "became" in failed["error"], failed
    assert failed["step"] < 8 and done["status"] == "done" and done["step"] == 8
    assert not (tmp_path / "stack" / "resnet" / "plain8" / "checkpoints" / "last.ckpt").exists() \
        or ckpt(tmp_path / "stack" / "resnet" / "plain8")["global_step"] < failed["step"]  # its last finite one
    # resnet8 trained on as if plain8 were not there: its rows are those of resnet8 alone
    run_cli(*common, "models=[resnet8]", "trainer.stack=off", f"out_dir={tmp_path / 'alone'}", timeout=300)
    ra = read_rows(tmp_path / "stack" / "resnet" / "resnet8" / "metrics.csv")
    rb = read_rows(tmp_path / "alone" / "resnet" / "resnet8" / "metrics.csv")
    assert [(r["step"], r["metric"]) for r in ra] == [(r["step"], r["metric"]) for r in rb]
    assert all(abs(x["value"] - y["value"]) <= 1e-6 * max(abs(y["value"]), 1) for x, y in zip(ra, rb))


def test_dry_run_names_the_stacks():
    proc = run_cli("resnet", "--smoke", "models=[resnet8,plain8,resnet14]", "seeds=[0,1]", "trainer.stack=on",
                   "--dry-run")
    assert "# stacks (trainer.stack=on" in proc.stdout
    assert "  resnet8-seed0, resnet8-seed1, plain8-seed0, plain8-seed1\n  resnet14-seed0, resnet14-seed1" in proc.stdout
    # Table 6 stacks each depth's 5 seeds; Figure 6 each depth's plain and ResNet, ResNet-110 alone
    table6 = run_cli("table6", "trainer.stack=on", "--dry-run").stdout.split("# stacks")[1].splitlines()[1:]
    assert table6 == [f"  {', '.join(f'resnet{d}-seed{s}' for s in range(5))}" for d in (20, 32, 44, 56, 110)]
    figure6 = run_cli("resnet", "trainer.stack=on", "--dry-run").stdout.split("# stacks")[1].splitlines()[1:]
    assert figure6 == [f"  resnet{d}, plain{d}" for d in (20, 32, 44, 56)] + ["  resnet110"] or \
        figure6 == [f"  plain{d}, resnet{d}" for d in (20, 32, 44, 56)] + ["  resnet110"], figure6


F32 = [a for a in F64 if a != "trainer.precision=64-true"]


@pytest.fixture(scope="module")
def stacked32(tmp_path_factory):
    out = tmp_path_factory.mktemp("stacked32")
    run_cli(*F32, "trainer.stack=on", "wandb.mode=disabled", f"out_dir={out}", timeout=600)
    return out / "resnet"


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["kill:step:7", "term:eval:10", "kill:checkpoint:12:plain8-seed1"])
def test_a_killed_stack_resumes_bit_identical(fault, tmp_path, stacked32):
    """float32, deterministic, one thread: every weight, buffer, momentum and metrics.csv row as
    the uninterrupted stack's (test_resume.py's check, per run)."""
    proc = run_cli(*F32, "trainer.stack=on", "wandb.mode=disabled", f"out_dir={tmp_path}",
                   env={"REPRODUCE_FAULT": fault}, check=False, timeout=600, new_session=True)
    assert proc.returncode in (-9, 130), proc.stderr[-3000:]
    if fault.endswith("plain8-seed1"):  # killed between the renames: plain8-seed1's file of 12 not yet in place
        assert [ckpt(tmp_path / "resnet" / name)["global_step"] for name in RUNS] == [12, 12, 12, 8]
        assert (tmp_path / "resnet" / "plain8-seed1" / "checkpoints" / ".last.ckpt.tmp").exists()
    proc = run_cli("resnet", "--resume", tmp_path, timeout=600)
    assert "stack of 4" in proc.stderr
    assert ("plain8-seed1: its checkpoint of iteration 12" in proc.stdout) == fault.endswith("plain8-seed1")
    for name in RUNS:
        assert_same_run(stacked32 / name, tmp_path / "resnet" / name)


@pytest.mark.slow
def test_a_stacked_checkpoint_continues_unstacked(tmp_path, unstacked):
    proc = run_cli(*F64, "trainer.stack=on", "wandb.mode=disabled", f"out_dir={tmp_path}",
                   env={"REPRODUCE_FAULT": "kill:checkpoint:12:plain8-seed1"}, check=False, timeout=600,
                   new_session=True)
    assert proc.returncode == -9, proc.stderr[-3000:]
    proc = run_cli("resnet", "--resume", tmp_path, "trainer.stack=off", timeout=600)
    assert "stack of" not in proc.stderr
    assert_equivalent(tmp_path / "resnet", unstacked)


@pytest.mark.slow
def test_unstacked_checkpoints_continue_as_a_stack(tmp_path, unstacked):
    """Each run stopped alone at iteration 9 (SIGTERM), then the four continue as one stack."""
    for i, name in enumerate(RUNS):
        where = ["--resume", tmp_path] if i else [f"out_dir={tmp_path}"]
        proc = run_cli(*F64[:1], *where, *([] if i else F64[1:]), "trainer.stack=off", "wandb.mode=disabled",
                       f"only=[{name}]", env={"REPRODUCE_FAULT": "term:step:9"}, check=False, timeout=600)
        assert proc.returncode == 130, proc.stderr[-3000:]
    proc = run_cli("resnet", "--resume", tmp_path, "trainer.stack=on", "only=[]", timeout=600)
    assert "stack of 4" in proc.stderr and "continuing from their checkpoints" in proc.stderr
    assert_equivalent(tmp_path / "resnet", unstacked)


def test_a_real_full_disk_keeps_every_checkpoint_and_names_the_file(tmp_path):
    """A stack writes its runs' files itself (StackCheckpointIO): plain8's temporary file is a link to
    /dev/full, so the write gets the OS's own ENOSPC, not the simulated one."""
    common = ["resnet", "--smoke", "models=[plain8,resnet8]", "wandb.mode=disabled", "trainer.checkpoint_every=2"]
    proc = run_cli(*common, "trainer.stack=on", f"out_dir={tmp_path}", env={"REPRODUCE_FAULT": "term:step:5"},
                   check=False, timeout=300)
    assert proc.returncode == 130, proc.stderr[-3000:]
    runs = tmp_path / "resnet"
    before = ckpt(runs / "plain8")["global_step"]
    (runs / "plain8" / "checkpoints" / ".last.ckpt.tmp").symlink_to("/dev/full")
    proc = run_cli("resnet", "--resume", tmp_path, check=False, timeout=300)
    last = runs / "plain8" / "checkpoints" / "last.ckpt"
    assert proc.returncode != 0 and f"cannot write {last}: No space left on device" in proc.stderr, proc.stderr[-3000:]
    assert not os.path.lexists(runs / "plain8" / "checkpoints" / ".last.ckpt.tmp")
    assert ckpt(runs / "plain8")["global_step"] == before  # the previous checkpoint, whole
