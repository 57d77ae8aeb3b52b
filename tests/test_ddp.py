"""Lightning DDP on CPU (gloo, 2 processes): the effective batch and the scaled lr that were used."""
import glob

import pytest

from reproduce.runs import read_metrics, read_rows
from reproduce.schedules import Schedule

from .conftest import run_cli


def test_two_process_ddp_uses_the_global_batch_and_scaled_lr(tmp_path):
    # global batch 64 = 2 devices x 16 per device x 2 accumulation steps; the recipe is stated at
    # batch 16 (lr 0.1, 32 iterations, halved at 16 and 24), so at 64: lr 0.4, 8 iterations, drops at 4 and 6
    run_cli("resnet", "--smoke", "models=[resnet8]", "trainer.accelerator=cpu", "trainer.devices=2",
            "trainer.strategy=ddp", "trainer.accumulate=2", "data.batch_size=64", "schedule.max_steps=32",
            "schedule.milestones=[16,24]", "trainer.eval_every=4", "trainer.threads=1", f"out_dir={tmp_path}",
            timeout=600)
    run = tmp_path / "resnet" / "resnet8"
    m = read_metrics(run / "metrics.csv")
    assert {v for _, v in m["batch_size"]} == {64.0}  # checked each step against what the loader delivered
    lr = dict(m["lr"])  # read from the optimizer after each step
    assert lr == pytest.approx({2: 0.4, 4: 0.4, 6: 0.2, 8: 0.1})
    s = Schedule(lr=0.1, ref_batch=16, batch_size=64, milestones=[16, 24], max_steps=32, factor=0.5)
    assert s.total_steps == 8 and [s.lr(k - 1) for k in (2, 4, 6, 8)] == pytest.approx([0.4, 0.4, 0.2, 0.1])
    assert [k for k, _ in m["test/err"]] == [4, 8]
    assert '"status": "done"' in (run / "status.json").read_text()
    assert len(glob.glob(str(run / "wandb" / "offline-run-*"))) == 1  # rank 0 alone created the W&B run


def test_two_process_ddp_trains_the_same_weights_as_one_process_accumulating(tmp_path):
    """2 ranks x 8 images per step against 1 process x 2 accumulated micro-batches of 8: the same
    micro-batches (each rank's share is a micro-batch), the same averaged gradient, so the same
    weights up to float rounding. Without augmentation, whose draws are seeded per rank. BN
    running statistics differ by design (each rank sees its share), so only parameters compare."""
    import torch
    common = ["resnet", "--smoke", "models=[resnet8]", "trainer.accelerator=cpu", "data.batch_size=16",
              "schedule.max_steps=6", "schedule.milestones=[3]", "trainer.eval_every=6", "trainer.threads=1",
              "data.augment=false", "wandb.mode=disabled"]
    run_cli(*common, "trainer.devices=2", "trainer.strategy=ddp", f"out_dir={tmp_path / 'ddp'}", timeout=600)
    run_cli(*common, "trainer.accumulate=2", f"out_dir={tmp_path / 'one'}", timeout=600)
    ddp, one = (torch.load(tmp_path / d / "resnet" / "resnet8" / "checkpoints" / "last.ckpt", map_location="cpu",
                           weights_only=False)["state_dict"] for d in ("ddp", "one"))
    params = [k for k in ddp if k.endswith((".weight", ".bias"))]  # conv, BN affine and fc parameters
    assert len(params) > 10
    for k in params:
        assert torch.allclose(ddp[k], one[k], atol=1e-5, rtol=1e-4), k
    # the logged training loss and error cover both ranks' micro-batches, as one process's cover both of its own
    logged = {d: read_metrics(tmp_path / d / "resnet" / "resnet8" / "metrics.csv") for d in ("ddp", "one")}
    for key in ("train/loss", "train/err"):
        ddp_points, one_points = logged["ddp"][key], logged["one"][key]
        assert [k for k, _ in ddp_points] == [k for k, _ in one_points] and ddp_points, key
        assert [v for _, v in ddp_points] == pytest.approx([v for _, v in one_points], rel=1e-4), key


def test_ddp_runs_stopped_by_sigterm_or_sigkill_resume_exactly(tmp_path):
    """The ranks agree on a stop only every `trainer.log_every` iterations (one all-reduce there, not
    a host sync per step): SIGTERM after iteration 5 stops both ranks at 8, with a checkpoint there.
    That run, and one killed between a checkpoint and a log step, resume to the weights and the
    logged rows of an uninterrupted run."""
    import json

    import torch
    common = ["resnet", "--smoke", "models=[resnet8]", "trainer.accelerator=cpu", "trainer.devices=2",
              "trainer.strategy=ddp", "data.batch_size=16", "schedule.max_steps=12", "schedule.milestones=[6]",
              "trainer.eval_every=6", "trainer.log_every=4", "trainer.checkpoint_every=100", "trainer.threads=1",
              "wandb.mode=disabled"]
    run_cli(*common, f"out_dir={tmp_path / 'whole'}", timeout=600)
    proc = run_cli(*common, f"out_dir={tmp_path / 'cut'}", env={"REPRODUCE_FAULT": "term:step:5"}, check=False,
                   timeout=600)
    assert proc.returncode == 130, proc.stderr[-3000:]
    run = tmp_path / "cut" / "resnet" / "resnet8"
    status = json.loads((run / "status.json").read_text())
    assert (status["status"], status["step"]) == ("interrupted", 8)
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 8
    run_cli("resnet", "--resume", tmp_path / "cut", timeout=600)
    # SIGKILL at 7, after the checkpoint of 6 and before the log step 8: the resumed ranks continue
    # the training-metric sums of iterations 5-6 that rank 0's checkpoint holds for both
    proc = run_cli(*common, "trainer.checkpoint_every=6", f"out_dir={tmp_path / 'killed'}",
                   env={"REPRODUCE_FAULT": "kill:step:7"}, check=False, timeout=600, new_session=True)
    assert proc.returncode != 0
    run_cli("resnet", "--resume", tmp_path / "killed", timeout=600)
    whole = tmp_path / "whole" / "resnet" / "resnet8"
    for d in ("cut", "killed"):
        run = tmp_path / d / "resnet" / "resnet8"
        ref, got = (torch.load(r / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
                    for r in (whole, run))
        for k in ref:
            assert torch.equal(ref[k], got[k]), (d, k)
        ref_rows, got_rows = read_rows(whole / "metrics.csv"), read_rows(run / "metrics.csv")
        assert [(r["step"], r["metric"]) for r in got_rows] == [(r["step"], r["metric"]) for r in ref_rows], d
        for r, g in zip(ref_rows, got_rows):  # sums added in another order after a resume: float rounding only
            assert g["value"] == pytest.approx(r["value"], rel=1e-6), (d, r)
