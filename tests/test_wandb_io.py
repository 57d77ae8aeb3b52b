"""The W&B tables of a sweep's summary run, without a run."""
import wandb

from reproduce.wandb_io import TABLE_ROWS, curve_rows, to_wandb_table


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
