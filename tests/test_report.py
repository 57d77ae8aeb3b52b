import json

from .conftest import run_cli


def test_wandb_report_dry_run_writes_the_figure_panels(tmp_path):
    run_cli("resnet", "--smoke", "models=[plain8,resnet8]", f"out_dir={tmp_path}", timeout=300)
    run_cli("report", tmp_path, "--dry-run", timeout=120)
    spec = json.loads((tmp_path / "resnet" / "report.json").read_text())
    text = json.dumps(spec)
    ids = {d.name: (d / "wandb_id.txt").read_text() for d in (tmp_path / "resnet").iterdir() if (d / "wandb_id.txt").exists()}
    for panel in ("plain nets: error vs iterations", "ResNets: error vs iterations", "temperature = lr / batch"):
        assert panel in text
    assert "train/err" in text and "test/err" in text and "trainer/global_step" in text
    assert f"{ids['plain8']}:train/err" in text and "dashed" in text  # training error dashed, per run
    group = json.loads((tmp_path / "resnet" / "sweep.json").read_text())["group"]
    assert group in text
