"""benchmarks/bench.py (`python scripts/bench.py`): its report, its pairing of windows and its input checks."""
import json
import statistics
import subprocess
import sys

import pytest

from .conftest import ROOT

sys.path.insert(0, str(ROOT))  # benchmarks/ sits beside the package, not in it


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run([sys.executable, "scripts/bench.py", "--cpu-smoke", "--json-out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def check_summary(s: dict, n: int) -> None:
    values = s["values"]
    assert len(values) == n and s["median"] == pytest.approx(statistics.median(values))
    assert s["min"] == min(values) and s["max"] == max(values)
    assert s["min"] <= s["q1"] <= s["median"] <= s["q3"] <= s["max"]
    assert s["spread_pct"] == pytest.approx(100 * (s["max"] - s["min"]) / (2 * s["median"]))


def test_bench_report_holds_paired_ratios_and_the_overhead(bench):
    report, table = bench
    assert (report["batch"], report["steps"], report["repeats"]) == (8, 1, 3)  # --cpu-smoke
    assert report["wandb_mode"] == "offline"  # run_one exactly as the CLI runs it without a login
    assert set(report["models"]["resnet8"]) == {"fp32", "bf16"}
    for variant, e in report["models"]["resnet8"].items():
        assert "error" not in e, e
        for key in ("plain", "package", "ratio"):
            check_summary(e[key], 3)
        # the ratio is taken per interleaved pair of windows
        assert e["ratio"]["values"] == pytest.approx([p / q for p, q in zip(e["package"]["values"], e["plain"]["values"])])
        assert f"trainer.precision={'bf16-mixed' if variant == 'bf16' else '32-true'}" in e["overrides"]
        assert f"resnet8    {variant}" in table
    o = report["overhead"]["fp32"]
    assert (o["model"], o["batch"], o["threads"], o["window"], o["pairs"]) == ("resnet8", 2, 1, 2, 2)
    check_summary(o["overhead_ms"], 2)
    diffs = [p - q for p, q in zip(o["package_ms_per_step"], o["plain_ms_per_step"])]
    assert o["overhead_ms"]["values"] == pytest.approx(diffs)


def test_bench_report_holds_stacks_against_the_plain_loop(bench):
    report, table = bench
    stack = report["stack"]
    assert stack["sizes"] == [1, 2] and stack["variant"] == "fp32" and "trainer.train_step=eager" in stack["overrides"]
    for n, e in stack["models"]["resnet8"].items():
        assert "error" not in e, e
        assert e["n"] == int(n) and e["plain_window"] == 1 and e["window"] == 1  # ceil(1 step / N)
        for key in ("plain", "stack", "ratio"):
            check_summary(e[key], 3)
        # images/s of all N runs over the plain loop's, per interleaved pair
        assert e["ratio"]["values"] == pytest.approx([p / q for p, q in zip(e["stack"]["values"], e["plain"]["values"])])
        assert f"resnet8    {n:>3} " in table


class FakeClock:
    """Seconds that pass only when a test says so: the bookkeeping is checked without timing anything."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_interleaving_alternates_windows_and_takes_evaluation_out(tmp_path):
    """Inside one run_one: the plain loop runs at the start of each window, the fit's windows are
    `window` steps of its own time, and evaluation inside a window is timed apart, not counted."""
    import pytorch_lightning as pl
    from benchmarks.bench import Interleaved, package_config, run_package

    clock = FakeClock()

    class Plain:
        def __init__(self):
            self.calls = []

        def run(self, steps):
            self.calls.append(steps)
            clock.now += 1.0 * steps  # the plain loop: 1 s per step
            return 1.0 * steps

    class Ticks(pl.Callback):  # the fit: 10 s per training step, 100 s per evaluation batch
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.now += 10.0

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            clock.now += 100.0

    plain = Plain()
    timer = Interleaved(plain, start=2, window=2, pairs=3, clock=clock)
    assert timer.last_step == 2 + 2 * 3 + 1
    # evaluations every 4 iterations, inside the first and the last window
    cfg = package_config("resnet8", 4, timer.last_step, "fp32", "disabled",
                         data=["data.dataset=synthetic", "data.synthetic_train=320", "data.synthetic_test=16",
                               "data.val_size=16", "trainer.eval_every=4"])
    run_package(cfg, tmp_path / "run", [timer, Ticks()])
    assert plain.calls == [2, 2, 2] and timer.plain_seconds == [2.0] * 3
    assert timer.fit_seconds == [20.0] * 3  # 10 s a step: the evaluations' 100 s each are not in the windows
    assert timer.eval_seconds > 0 and timer.eval_seconds % 100 == 0  # val and test loaders
    assert (tmp_path / "run" / "metrics.csv").exists()


def test_interleaving_rides_a_stack_with_its_own_plain_window(tmp_path):
    """The same timer inside execute_stack: a stack's iteration is N runs' steps, so the plain loop's
    window is set apart (here 3 of its steps against 2 of the stack's); each run keeps its files."""
    import pytorch_lightning as pl
    from benchmarks.bench import Interleaved, package_config, run_stack

    clock = FakeClock()

    class Plain:
        def __init__(self):
            self.calls = []

        def run(self, steps):
            self.calls.append(steps)
            clock.now += 1.0 * steps
            return 1.0 * steps

    class Ticks(pl.Callback):  # the stack: 10 s per iteration, 100 s per evaluation batch
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            assert pl_module.n == 2
            clock.now += 10.0

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            clock.now += 100.0

    plain = Plain()
    timer = Interleaved(plain, start=2, window=2, pairs=3, clock=clock, plain_window=3)
    cfg = package_config("resnet8", 4, timer.last_step, "fp32", "disabled",
                         data=["data.dataset=synthetic", "data.synthetic_train=320", "data.synthetic_test=16",
                               "data.val_size=16", "trainer.eval_every=4"])
    statuses = run_stack(cfg, 2, tmp_path / "stack", [timer, Ticks()])
    assert plain.calls == [3, 3, 3] and timer.plain_seconds == [3.0] * 3
    assert timer.fit_seconds == [20.0] * 3 and timer.eval_seconds > 0 and timer.eval_seconds % 100 == 0
    assert [s["stack"] for s in statuses] == [["resnet8-seed0", "resnet8-seed1"]] * 2
    assert all((tmp_path / "stack" / f"seed{i}" / "metrics.csv").exists() for i in (0, 1))


@pytest.mark.parametrize("args,message", [
    (["--repeats", "0"], "--repeats must be positive, got 0"),
    (["--stack", "2", "0"], "--stack: stack sizes must be positive, got 2 0"),
    (["--stack", "2", "--stack-variant", "bf16-graph", "--device", "cpu"],
     "--stack-variant bf16-graph: the CUDA-graph step needs --device cuda"),
    (["--stack-variant", "bf16-compiled"], "invalid choice: 'bf16-compiled'"),
    (["--variants", "fp32-graph", "--device", "cpu"], "--variants fp32-graph: the CUDA-graph step needs --device cuda"),
    (["--variants", "fp16"], "invalid choice: 'fp16'"),
])
def test_bench_refuses_bad_input_in_one_line(args, message, capsys):
    from benchmarks.bench import main
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err.strip().splitlines()[-1]
