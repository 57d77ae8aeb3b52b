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
                           "--warmup", "1", "--steps", "2", "--repeats", "3", "--batch", "32", "--overhead-steps", "4",
                           "--overhead-repeats", "2", "--json", "--json-out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), json.loads(out.read_text())


def check_summary(s: dict, n: int) -> None:
    values = s["values"]
    assert len(values) == n and s["median"] == pytest.approx(statistics.median(values))
    assert s["min"] == min(values) and s["max"] == max(values)
    assert s["min"] <= s["q1"] <= s["median"] <= s["q3"] <= s["max"]
    assert s["spread_pct"] == pytest.approx(100 * (s["max"] - s["min"]) / (2 * s["median"]))


def test_bench_json_structure_and_paired_ratios(bench):
    report, written = bench
    assert report == written  # --json-out holds the same report
    assert report["batch"] == 32 and report["steps"] == 2 and report["repeats"] == 3
    assert report["wandb_mode"] == "offline"  # run_one exactly as the CLI runs it without a login
    for variant in ("fp32", "bf16"):
        e = report["models"]["resnet8"][variant]
        for key in ("plain", "package", "ratio"):
            check_summary(e[key], 3)
        # the ratio is taken per interleaved pair of windows
        assert e["ratio"]["values"] == pytest.approx([p / q for p, q in zip(e["package"]["values"], e["plain"]["values"])])
    assert report["pipeline"]["images_per_s"] > 0


def test_overhead_per_pair_for_run_one_and_lightnings_floor(bench):
    overhead = bench[0]["overhead"]
    # the CPU default: Lightning's step and the manual one, and BareModule with each loop (Lightning's own floor)
    assert set(overhead) == {"fp32", "fp32-manual", "lightning-floor", "lightning-floor-manual"}
    calls = {key: o["extra_calls_per_step"] for key, o in overhead.items()}
    # counted, not timed: Lightning's manual loop does less than its automatic one, and more than
    # none; the package on the automatic loop (one step per batch) does more than that loop alone
    assert 0 < calls["lightning-floor-manual"] < calls["lightning-floor"] < calls["fp32"], calls
    # the package's own per-step work over Lightning's floor of the same loop (measured with
    # Lightning 2.6.6: 348 calls; 821 while Lightning still dispatched the callbacks' empty hooks):
    # a regression of that size fails here
    own = {key: overhead[key]["own_calls_per_step"] for key in ("fp32", "fp32-manual")}
    assert own == {"fp32": calls["fp32"] - calls["lightning-floor"],
                   "fp32-manual": calls["fp32-manual"] - calls["lightning-floor-manual"]}
    assert 0 < own["fp32"] < 450, own
    # the manual step runs 10 iterations per Lightning batch here (trainer.steps_per_call=auto), so
    # it pays Lightning's per-batch work once per 10 and goes under the one-step-per-batch floor
    # (measured: 141-154 calls a step over the plain loop, against 1,556 unchunked and the floor's
    # 1,213): per-iteration work of Lightning's size, or chunking switched off, fails here
    assert overhead["fp32-manual"]["steps_per_call"] == 10 and overhead["fp32"]["steps_per_call"] == 1
    assert all(n % 10 == 0 for n in overhead["fp32-manual"]["fit_window_steps"])
    assert 0 < calls["fp32-manual"] < 300 < calls["lightning-floor-manual"], calls
    for key, path in (("fp32", "package"), ("fp32-manual", "package"), ("lightning-floor", "lightning"),
                      ("lightning-floor-manual", "lightning")):
        o = overhead[key]
        assert (o["model"], o["batch"], o["threads"], o["window"], o["pairs"]) == ("resnet8", 2, 1, 4, 2)
        assert len(o["plain_ms_per_step"]) == len(o[f"{path}_ms_per_step"]) == 2
        check_summary(o["overhead_ms"], 2)
        assert o["extra_calls_per_step"] == o[f"{path}_calls_per_step"] - o["plain_calls_per_step"]
        diffs = [p - q for p, q in zip(o[f"{path}_ms_per_step"], o["plain_ms_per_step"])]
        assert o["overhead_ms"]["values"] == pytest.approx(diffs)


class FakeClock:
    """Seconds that pass only when a test says so: the bookkeeping is checked without timing anything."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("variant,steps_per_call", [("fp32", 1), ("fp32-manual", 5)])
def test_interleaving_alternates_windows_and_takes_evaluation_out(tmp_path, variant, steps_per_call):
    """Inside one run_one: the plain loop runs at the start of each window, the fit's windows are
    `window` steps of its own time (rounded up to whole chunks when a Lightning batch carries
    several iterations), and evaluation inside a window is timed apart, not counted."""
    import pytorch_lightning as pl
    from reproduce.bench import Interleaved, package_config, run_package
    from reproduce.module import ClassifierModule

    clock = FakeClock()

    class Plain:
        def __init__(self):
            self.calls = []

        def run(self, steps):
            self.calls.append(steps)
            clock.now += 1.0 * steps  # the plain loop: 1 s per step
            return 1.0 * steps

    class Ticks(pl.Callback):  # the fit: 10 s per training step, 100 s per evaluation batch
        step = 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.now += 10.0 * (trainer.global_step - self.step)
            self.step = trainer.global_step

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            clock.now += 100.0

    plain = Plain()
    timer = Interleaved(plain, start=2, window=3, pairs=4, clock=clock, count_calls=True)
    assert timer.last_step % 10 == 0 and timer.last_step >= 2 + (3 + 10) * 5 + 10  # room for 10-step chunks
    # evaluations every 5 iterations fall inside windows; with the manual step `auto` chunks this
    # run by 5 (the gcd of eval_every 5, log_every 50, checkpoint_every 2000 and 90 steps)
    cfg = package_config("resnet8", 8, timer.last_step, variant, "disabled",
                         data=["data.dataset=synthetic", "data.synthetic_train=320", "data.synthetic_test=16",
                               "data.val_size=16", "trainer.eval_every=5"])
    run_package(cfg, tmp_path / "run", [timer, Ticks()])
    assert plain.calls == [3, 3, 3, 3, 3]
    assert timer.plain_seconds == [3.0] * 4  # the counted pair is not timed
    assert timer.steps_per_call == steps_per_call and timer.fit_steps == [3 if steps_per_call == 1 else 5] * 4
    # 10 s a step: the evaluations' 100 s each are not in the windows
    assert [s / n for s, n in zip(timer.fit_seconds, timer.fit_steps)] == [10.0] * 4
    assert timer.eval_seconds > 0 and timer.eval_seconds % 100 == 0
    # the fake plain step is two Python calls; a Lightning step is thousands
    assert 0 < timer.plain_calls < 10 and timer.fit_calls > 1000
    assert sys.getprofile() is None
    assert (tmp_path / "run" / "metrics.csv").exists() and "configure_callbacks" not in ClassifierModule.__dict__
