"""Real-data tier: a short run on the real CIFAR-10 must learn."""
from .conftest import CIFAR_ROOT, require_cifar, run_cli


def test_short_real_cifar_run_learns(tmp_path):
    require_cifar()
    # all 45k training images (the quick profile trains on 1k, to show its drops; not this test's point)
    run_cli("resnet", "--quick", "models=[resnet8]", f"data.root={CIFAR_ROOT}", "data.train_limit=null",
            "schedule.max_steps=200", "schedule.milestones=[150]", "trainer.eval_every=100", f"out_dir={tmp_path}",
            "wandb.mode=disabled", timeout=600)
    import json
    status = json.loads((tmp_path / "resnet" / "resnet8" / "status.json").read_text())
    assert status["status"] == "done" and status["step"] == 200
    assert status["final_test_err"] < 70, status  # chance is 90%; 200 iterations reach ~55-60%
