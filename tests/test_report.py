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
    cfg = compose("resnet", profile="quick", overrides=["models=[resnet20]", "schedule.max_steps=560",
                                                     "schedule.milestones=[280,420]"])
    pts = [(x, 60.0 - 0.05 * x - (5.0 if x > 280 else 0.0) - (3.0 if x > 420 else 0.0)) for x in range(10, 561, 10)]
    run = {"dir": tmp_path / "resnet20", "cfg": OmegaConf.create(OmegaConf.to_container(cfg)), "model": "resnet20",
           "metrics": {"train/err": pts}}
    (row,) = drop_rows([run])
    assert row["at 280: step (point sd)"] == "+5.0 (0.0)" and row["at 420: step (point sd)"] == "+3.0 (0.0)"


def _synthetic_run(tmp_path, model, seed=0, train_step=5.0, test_step=6.0, final_train=20.0, final_test=24.0):
    """A run of the quick profile with linear curves that step down by the given amounts at 400 and 600,
    plus a deterministic +-0.5 zigzag (point sd ~0.5) so that the scatter is not zero."""
    from omegaconf import OmegaConf

    from reproduce.config import compose
    cfg = compose("resnet", profile="quick", overrides=[f"models=[{model}]", f"seeds=[{seed}]", "schedule.max_steps=800",
                                                       "schedule.milestones=[400,600]", "trainer.eval_every=25"])
    cfg = OmegaConf.create(OmegaConf.to_container(cfg))
    cfg.seed = seed

    def curve(every, step):
        return [(x, 70.0 - 0.04 * x - step * ((x > 400) + (x > 600)) + (0.5 if (x // every) % 2 else -0.5))
                for x in range(every, 801, every)]
    return {"dir": tmp_path / f"{model}-seed{seed}", "cfg": cfg, "model": model,
            "metrics": {"train/err": curve(10, train_step), "test/err": curve(25, test_step)},
            "status": {"status": "done", "last_train_err": final_train, "final_test_err": final_test}}


def _step(numbers, what):
    import re
    return float(re.search(re.escape(what) + r": ([+-][0-9.]+)", numbers).group(1))


def _verdicts(runs):
    from reproduce.report import verdict_rows
    return {(r["claim"][:2], r["seed"]): r for r in verdict_rows(runs)}


def test_verdicts_hold_on_curves_shaped_like_figure_6(tmp_path):
    runs = [_synthetic_run(tmp_path, "plain20", final_train=30, final_test=33),
            _synthetic_run(tmp_path, "plain32", final_train=40, final_test=42),
            _synthetic_run(tmp_path, "resnet20", final_train=25, final_test=29),
            _synthetic_run(tmp_path, "resnet32", final_train=22, final_test=26)]
    v = _verdicts(runs)
    assert [k for k in v] == [("1.", 0), ("2.", 0), ("3.", 0), ("4.", 0)]
    assert all(r["verdict"] == "holds" for r in v.values()), v
    assert abs(_step(v[("1.", 0)]["numbers"], "resnet20 test at 400") - 6.0) < 0.5  # the zigzag biases it a little


def test_verdicts_fail_where_the_curves_do_not_look_like_figure_6(tmp_path):
    runs = [_synthetic_run(tmp_path, "plain20", test_step=1.0, final_train=30, final_test=45),  # test step < 3 sd
            _synthetic_run(tmp_path, "plain32", final_train=28, final_test=33),  # deeper plain trains better
            _synthetic_run(tmp_path, "resnet20", final_train=25, final_test=29),
            _synthetic_run(tmp_path, "resnet32", final_train=29, final_test=30)]  # worse than plain32 on train
    v = _verdicts(runs)
    assert {k[0]: r["verdict"] for k, r in v.items()} == {"1.": "does not hold", "2.": "does not hold",
                                                          "3.": "does not hold", "4.": "does not hold"}
    assert _step(v[("1.", 0)]["numbers"], "plain20 test at 400") < 1.5  # below 3x the point sd of ~0.5
    assert "plain20 45.00 − 30.00 = +15.00" in v[("4.", 0)]["numbers"]


def test_verdicts_are_given_per_seed(tmp_path):
    runs = [_synthetic_run(tmp_path, "resnet20", seed=s, test_step=6.0 if s == 0 else 0.0) for s in (0, 1)]
    v = _verdicts(runs)
    assert v[("1.", 0)]["verdict"] == "holds" and v[("1.", 1)]["verdict"] == "does not hold"


def test_results_md_carries_the_verdicts_and_the_test_steps(tmp_path):
    from reproduce.report import drop_rows, write_results
    runs = [_synthetic_run(tmp_path, "plain20"), _synthetic_run(tmp_path, "resnet20", final_train=15, final_test=18)]
    drops = drop_rows(runs)
    assert abs(float(drops[0]["at 400: test step (point sd)"].split()[0]) - 6.0) < 0.5
    text = write_results([{"model": "x"}], tmp_path / "results.md", "# header", drops, runs).read_text()
    assert "## Figure 6's claims on these runs" in text and "| 3. each ResNet beats the plain net of its depth | 0 | holds |" in text
    assert "at 600: test step (point sd)" in text


def test_a_step_without_enough_points_is_not_measurable_rather_than_failed(tmp_path):
    run = _synthetic_run(tmp_path, "resnet20")
    run["metrics"]["test/err"] = [(x, y) for x, y in run["metrics"]["test/err"] if x > 350]  # 2 points before 400
    v = _verdicts([run])
    assert v[("1.", 0)]["verdict"] == "not measurable (too few points)"
    assert "resnet20 test at 400: too few points" in v[("1.", 0)]["numbers"]


def test_several_seeds_give_mean_std_and_range_beside_the_paper(tmp_path):
    """Table 6 the way the paper reports ResNet-110: every depth over its seeds, mean ± std and
    min / max of the final test error, the paper's best and mean beside it."""
    from reproduce.report import results_rows
    runs = [_synthetic_run(tmp_path, "resnet110", seed=s, final_test=t) for s, t in enumerate((7.0, 6.5, 6.0))]
    runs += [_synthetic_run(tmp_path, "resnet20", seed=s, final_test=t) for s, t in enumerate((9.0, 8.0, 8.5))]
    rows = {r["model"]: r for r in results_rows(runs)}
    assert rows["resnet110"]["runs"] == 3
    assert rows["resnet110"]["final test err (%)"] == "6.50 ± 0.50"
    assert rows["resnet110"]["min / max final (%)"] == "6.00 / 7.00"
    assert rows["resnet110"]["paper Table 6 (%)"] == "6.43 (best of 5; mean 6.61 ± 0.16)"
    assert rows["resnet20"]["min / max final (%)"] == "8.00 / 9.00" and rows["resnet20"]["paper Table 6 (%)"] == "8.75"
    single = results_rows([_synthetic_run(tmp_path, "resnet20")])
    assert "min / max final (%)" not in single[0]  # one run per model: no range column


def test_curves_figure_keys_its_line_styles_holds_every_point_and_titles_its_drops(tmp_path, monkeypatch):
    """The legend names the line styles beside the models, no point lies outside the y-range
    (early errors near 90% included), and the title states the lr drops."""
    import matplotlib.pyplot as plt

    from reproduce import report
    from reproduce.config import compose, for_model
    cfg = compose("resnet")
    runs = [{"model": m, "cfg": for_model(cfg, m, 0),
             "metrics": {"train/err": [(0, 92.0), (32000, 20.0), (64000, 10.0)],
                         "test/err": [(0, 95.5), (32000, 24.0), (64000, 12.0)]}} for m in ("plain20", "resnet20")]
    drawn = {}
    monkeypatch.setattr(plt, "close", lambda fig: drawn.setdefault("fig", fig))
    report.curves_figure(runs, tmp_path / "figure.png", report.drops_title(cfg))
    fig = drawn["fig"]
    assert "32,000 and 48,000" in fig._suptitle.get_text()
    for ax in fig.axes:
        labels = [t.get_text() for leg in ax.findobj(plt.matplotlib.legend.Legend) for t in leg.get_texts()]
        assert {"training error", "test error", "lr drop"} <= set(labels), labels
        assert any(label.endswith("-20") for label in labels), labels
        low, high = ax.get_ylim()
        assert low <= 0 and high >= 95.5
    assert report.error_ylim([40.0, 49.0])[1] > 49.0 and report.error_ylim([99.0])[1] == 100.0
