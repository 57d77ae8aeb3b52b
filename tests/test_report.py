import json

import pytest

from .conftest import run_cli


@pytest.mark.smoke  # a smoke sweep through the CLI
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
    assert "lr_drops" in text  # the table of training-error steps at each drop


def test_step_at_drop_separates_a_step_from_a_falling_trend():
    from reproduce.report import step_at_drop
    trend = [(x, 60.0 - 0.05 * x) for x in range(10, 561, 10)]
    flat = step_at_drop(trend, 280, 56)
    assert abs(flat["step"]) < 1e-9 and abs(flat["before"] - 46.0) < 1e-9 and flat["noise"] < 1e-9
    stepped = [(x, y - (6.0 if x > 280 else 0.0)) for x, y in trend]
    s = step_at_drop(stepped, 280, 56)
    assert abs(s["step"] - 6.0) < 1e-9 and abs(s["after"] - (46.0 - 6.0 - 0.05 * 30)) < 1e-9
    assert step_at_drop(trend[:2], 280, 56) is None  # too few points before the drop to fit a trend


def test_drop_rows_report_each_milestone_in_iterations(tmp_path):
    from omegaconf import OmegaConf

    from reproduce.config import compose
    from reproduce.report import drop_rows
    cfg = compose("resnet", profile="quick", overrides=["models=[resnet20]"])
    pts = [(x, 60.0 - 0.05 * x - (5.0 if x > 280 else 0.0) - (3.0 if x > 420 else 0.0)) for x in range(10, 561, 10)]
    run = {"dir": tmp_path / "resnet20", "cfg": OmegaConf.create(OmegaConf.to_container(cfg)), "model": "resnet20",
           "metrics": {"train/err": pts}}
    (row,) = drop_rows([run])
    assert row["at 280: step (point sd)"] == "+5.0 (0.0)" and row["at 420: step (point sd)"] == "+3.0 (0.0)"
