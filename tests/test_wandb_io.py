"""What goes to W&B, without a run: the summary run's tables, each run's config and tags, and the
command line a sweep agent gives a trial."""
import re
from pathlib import Path

import pytest
import wandb
import yaml

from reproduce.config import SWEEP_KEYS, SweepConfig, compose, experiments, for_model
from reproduce.loggers import run_tags, summary_tags, wandb_config
from reproduce.wandb_io import TABLE_ROWS, curve_rows, to_wandb_table

ROOT = Path(__file__).resolve().parent.parent
SWEEP_YAML = ROOT / "configs" / "_wandb-sweep.yaml"


def _run(model, n_train, n_eval, every=10):
    train = [(s * every, 90.0 - s * 0.001) for s in range(1, n_train + 1)]
    test = [(s * 1000, 50.0) for s in range(1, n_eval + 1)]
    return {"model": model, "metrics": {"train/err": train, "test/err": test, "lr": [(10, 0.1)]}}


def test_curve_rows_keep_every_evaluation_and_thin_long_training_series():
    runs = [_run("plain20", 6400, 64), _run("resnet110", 6400, 64)]
    rows = curve_rows(runs, max_rows=1000)
    assert len(rows) <= 1000
    assert set(rows[0]) == {"model", "family", "depth", "iteration", "metric", "value"}
    for model, family, depth in (("plain20", "plain", 20), ("resnet110", "resnet", 110)):
        mine = [r for r in rows if r["model"] == model]
        assert {(r["family"], r["depth"]) for r in mine} == {(family, depth)}
        assert [r["iteration"] for r in mine if r["metric"] == "test/err"] == [s * 1000 for s in range(1, 65)]
        train = [r["iteration"] for r in mine if r["metric"] == "train/err"]
        assert train[0] == 10 and train[-1] == 64000 and train == sorted(train)
    assert not any(r["metric"] == "lr" for r in rows)


def test_short_series_are_kept_whole_and_imagenet_plots_validation_error():
    run = _run("resnet8", 4, 2)
    assert len(curve_rows([run])) == 6
    run["metrics"]["val/err"] = run["metrics"].pop("test/err")
    assert {r["metric"] for r in curve_rows([run])} == {"train/err", "val/err"}


def test_numeric_columns_stay_numeric():
    table = to_wandb_table([{"model": "resnet20", "iteration": 4, "value": 1.5, "note": None},
                            {"model": "plain20", "iteration": 8, "value": None, "note": "FAILED"}])
    assert table.data == [["resnet20", 4, 1.5, "None"], ["plain20", 8, None, "FAILED"]]


def test_table_rows_is_what_wandb_keeps():
    assert TABLE_ROWS == wandb.Table.MAX_ROWS


# --------------------------------------------------------------------------------------------
# what a run's W&B config, tags and command line hold

def test_agent_style_overrides_are_overrides_and_the_commands_options_stay():
    from reproduce.cli import _parser, dotlist_style
    argv = ["resnet", "--quick", "--schedule.lr=0.05", "--optim.weight_decay=1e-05", "models=[resnet20]",
            "--resume=runs"]
    args = _parser().parse_intermixed_args(dotlist_style(argv))
    assert args.overrides == ["schedule.lr=0.05", "optim.weight_decay=1e-05", "models=[resnet20]"]
    assert args.quick and args.resume == "runs"
    cfg = compose("resnet", "quick", args.overrides)
    assert cfg.schedule.lr == 0.05 and cfg.optim.weight_decay == 1e-05


def test_a_trial_is_one_run(tmp_path, monkeypatch, capsys):
    from reproduce.cli import main
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep1")
    monkeypatch.setenv("WANDB_RUN_ID", "trial1")
    assert main(["resnet", "--smoke", f"--out_dir={tmp_path}"]) == 2  # nine models
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: under a W&B sweep agent") and "models=[resnet20]" in err[0]
    assert not list(tmp_path.iterdir())


def test_the_sweep_example_is_not_an_experiment_and_its_parameters_are_config_keys():
    sweep = yaml.safe_load(SWEEP_YAML.read_text())
    assert SWEEP_YAML.stem not in experiments()
    assert sweep["method"] == "bayes" and sweep["metric"] == {"name": "val/err", "goal": "minimize"}
    command = [c for c in sweep["command"] if not c.startswith("${")]
    assert command[:4] == ["-m", "reproduce", "resnet", "--quick"] and "${args}" in sweep["command"]
    for bound in ("min", "max"):
        overrides = command[4:] + [f"{k}={v[bound]}" for k, v in sweep["parameters"].items()]
        cfg = compose("resnet", "quick", overrides)
        assert list(cfg.models) == ["resnet20"] and cfg.schedule.max_steps == compose("resnet", "quick").schedule.max_steps
        for key, v in sweep["parameters"].items():
            section, leaf = key.split(".")
            assert cfg[section][leaf] == v[bound]


def test_tags_cannot_collide():
    cfg = compose("resnet", "quick", ["wandb.tags=[mine]"])
    assert run_tags(cfg, "resnet20") == ["experiment:resnet", "family:resnet", "depth:20", "profile:quick", "mine"]
    assert run_tags(cfg, "plain56")[1:3] == ["family:plain", "depth:56"]
    assert summary_tags(cfg) == ["experiment:resnet", "profile:quick", "mine"]


def test_a_runs_config_holds_what_applies_to_it():
    cfg = compose("resnet", "smoke")
    run = wandb_config(for_model(cfg, "resnet110", 0), "g1")
    assert run["schedule"]["warmup"] == "constant" and run["models"] == ["resnet110"]  # its per_model entry, merged
    assert "per_model" not in run and "sweep" not in run and run["wandb"]["group"] == "g1"
    assert "group" not in wandb_config(for_model(cfg, "resnet20", 0), None)["wandb"]
    summary = wandb_config(cfg, "g1", run=False)
    assert summary["per_model"]["resnet110"]["schedule"]["warmup"] == "constant" and len(summary["models"]) == 9
    temperature = compose("temperature", "smoke")
    assert set(wandb_config(temperature, "g")["sweep"]) == set(SWEEP_KEYS["temperature"])
    assert set(wandb_config(compose("batch-scaling", "smoke"), "g")["sweep"]) == {"batches", "modes", "warmup_epochs"}


@pytest.mark.parametrize("kind,modules", [("temperature", ["temperature.py", "report_temperature.py"]),
                                          ("batch_scaling", ["batch_scaling.py", "report_batch_scaling.py"]),
                                          ("curves", ["experiments.py", "report.py"])])
def test_sweep_keys_are_those_each_kind_reads(kind, modules):
    fields = set(SweepConfig.__dataclass_fields__)
    source = "\n".join((ROOT / "reproduce" / m).read_text() for m in modules)
    assert set(re.findall(r"sweep\.(\w+)", source)) & fields == set(SWEEP_KEYS.get(kind, ()))
