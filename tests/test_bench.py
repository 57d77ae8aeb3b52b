import json
import statistics
import subprocess
import sys

import pytest

from .conftest import ROOT


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run([sys.executable, "scripts/bench.py", "--models", "resnet8", "--variants", "fp32", "bf16",
                           "--warmup", "1", "--steps", "2", "--repeats", "2", "--batch", "32", "--overhead-steps", "3", "7",
                           "--overhead-repeats", "2", "--json", "--json-out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), json.loads(out.read_text())


def test_bench_json_structure_and_paired_ratios(bench):
    report, written = bench
    assert report == written  # --json-out holds the same report
    assert report["batch"] == 32 and report["steps"] == 2 and report["repeats"] == 2
    assert report["wandb_mode"] == "offline"  # run_one exactly as the CLI runs it without a login
    for variant in ("fp32", "bf16"):
        e = report["models"]["resnet8"][variant]
        for key in ("plain", "package", "ratio"):
            s = e[key]
            assert len(s["values"]) == 2 and s["median"] == pytest.approx(statistics.median(s["values"]))
            assert s["min"] == min(s["values"]) and s["max"] == max(s["values"])
            assert s["spread_pct"] == pytest.approx(100 * (s["max"] - s["min"]) / (2 * s["median"]))
        # the ratio is taken per interleaved pair of repeats
        assert e["ratio"]["values"] == pytest.approx([p / q for p, q in zip(e["package"]["values"], e["plain"]["values"])])
    assert report["pipeline"]["images_per_s"] > 0


def test_overhead_is_the_marginal_time_between_two_run_lengths(bench):
    assert set(bench[0]["overhead"]) == {"fp32", "fp32-manual"}  # the CPU default: Lightning's step and the manual one
    o = bench[0]["overhead"]["fp32-manual"]
    assert (o["model"], o["batch"], o["threads"], o["lengths"]) == ("resnet8", 2, 1, [3, 7])
    for path in ("plain", "package"):
        s = o["seconds"][path]
        assert len(s["3"]) == len(s["7"]) == 2
        assert o[f"{path}_ms_per_step"] == pytest.approx([1000 * (b - a) / 4 for a, b in zip(s["3"], s["7"])])
    diffs = [p - q for p, q in zip(o["package_ms_per_step"], o["plain_ms_per_step"])]
    assert o["overhead_ms"]["values"] == pytest.approx(diffs)
    assert o["overhead_ms"]["median"] == pytest.approx(statistics.median(diffs))


def test_bench_times_run_one_with_the_clis_callbacks(tmp_path):
    """The package path is run_one itself: the timer rides beside run_one's own callbacks, the run
    writes the CLI's files, and the hook is gone afterwards."""
    from reproduce.bench import WindowTimer, package_config, run_package
    from reproduce.module import ClassifierModule
    cfg = package_config("resnet8", 8, 5, "fp32", "disabled", data=["data.dataset=synthetic", "data.synthetic_train=320"])
    timer = WindowTimer(1, 4)
    run_package(cfg, tmp_path / "run", timer)
    assert timer.seconds is not None and timer.seconds > 0
    assert {"metrics.csv", "status.json", "config.yaml", "checkpoints"} <= {p.name for p in (tmp_path / "run").iterdir()}
    assert "configure_callbacks" not in ClassifierModule.__dict__
