"""The sweep's plan, estimate and progress, on a fake clock: nothing here depends on machine speed."""
import re

from reproduce.callbacks.progress import PlannedRun, SweepClock, duration
from reproduce.config import compose
from reproduce.sweep import quick_hint, run_cost


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _sweep(on_cpu=True, hint="use --quick"):
    clock = FakeClock()
    sweep = SweepClock(clock)
    runs = [PlannedRun("resnet20", 1000, cost=1.0), PlannedRun("resnet110", 1000, cost=5.0)]
    plan = sweep.plan(runs, "cpu (2 threads)", on_cpu, hint)
    return sweep, clock, plan


def _train(sweep, clock, name, steps, seconds_per_step, first=1):
    lines = []
    for step in range(first, steps + 1):
        clock.t += seconds_per_step
        lines += sweep.tick(step)
    return lines


def test_plan_names_runs_iterations_and_device():
    _, _, plan = _sweep()
    assert plan == "plan: 2 runs (resnet20, resnet110), 1,000 iterations each (2,000 in all), on cpu (2 threads)"


def test_estimate_after_the_first_iterations_scales_later_runs_by_cost():
    sweep, clock, _ = _sweep()
    assert sweep.start("resnet20") == "run 1 of 2: resnet20, 1,000 iterations"
    assert sweep.eta() is None  # nothing measured yet
    lines = _train(sweep, clock, "resnet20", 20, 1.0)  # the first is not timed; 10 s later comes the estimate
    assert lines[0].startswith("estimate: the sweep takes about ")
    assert "resnet20's first 10 timed iterations" in lines[0]
    # 980 iterations of resnet20 at 1 s, then resnet110: 5x the cost per iteration
    assert sweep.eta() == 980 + 5 * 1000
    assert lines[1] == "use --quick"  # on a CPU, more than an hour
    assert _train(sweep, clock, "resnet20", 40, 1.0, first=21) == []  # said once
    assert sweep.position("resnet110") == "run 2 of 2"


def test_no_quick_hint_on_a_gpu_or_for_a_short_sweep():
    sweep, clock, _ = _sweep(on_cpu=False)
    sweep.start("resnet20")
    assert len(_train(sweep, clock, "resnet20", 20, 1.0)) == 1
    sweep, clock, _ = _sweep()
    sweep.start("resnet20")
    assert len(_train(sweep, clock, "resnet20", 300, 0.05)) == 1  # 5 min in all


def test_refined_by_finished_runs_and_failures_recorded():
    sweep, clock, _ = _sweep()
    sweep.start("resnet20")
    _train(sweep, clock, "resnet20", 5, 1.0)  # 5 s: no estimate yet
    lines = sweep.finish("resnet20", "failed")  # a run that ended early still measured its pace
    assert lines and lines[0].startswith("estimate:") and "the first run" in lines[0]
    assert sweep.eta() == 5 * 1000  # 4 timed iterations at 1 s per unit of cost
    assert sweep.failed() == ["resnet20"]
    assert sweep.start("resnet110", resume=True).startswith("run 2 of 2: resnet110, 1,000 iterations, continuing")
    _train(sweep, clock, "resnet110", 600, 2.0, first=501)  # continued from 500, twice the expected pace
    assert sweep.runs[1].start_step == 500
    assert sweep.eta() == 400 * 2.0


def test_parallel_workers_report_their_wall_time():
    sweep, clock, _ = _sweep()
    sweep.parallel = 2
    sweep.finish("resnet20", "done", wall=100.0, step=1000)
    assert sweep.eta() == 500 / 2  # resnet110's cost at 0.1 s per unit, two at a time


def test_duration_words():
    assert [duration(s) for s in (12, 420, 3 * 3600 + 5 * 60, 30 * 3600)] == ["12 s", "7 min", "3 h 05 min", "30 h 00 min"]


def test_quick_hint_points_to_the_measured_time_and_only_for_the_paper_profile():
    assert "docs/results.md" in quick_hint(compose("resnet"))
    assert "--quick" in quick_hint(compose("plain"))
    assert quick_hint(compose("resnet", "quick")) is None and quick_hint(compose("resnet", "smoke")) is None


def test_quick_hint_names_the_experiment_whose_quick_run_it_is():
    # resnet-8k's quick run is resnet's (resnet's quick section overrides all it changes); resnet-paper
    # keeps its ÷10 schedule in its quick run, so it names itself
    assert "`python -m reproduce resnet --quick`" in quick_hint(compose("resnet-8k"))
    assert "`python -m reproduce resnet-paper --quick`" in quick_hint(compose("resnet-paper"))


def test_run_cost_grows_with_depth_and_images():
    steps20, cost20 = run_cost(compose("resnet", overrides=["models=[resnet20]"]))
    steps110, cost110 = run_cost(compose("resnet", overrides=["models=[resnet110]"]))
    assert steps20 == steps110 == 64000
    assert 5 < cost110 / cost20 < 7  # about (110 - 2) / (20 - 2), as the FLOPs per image
    assert re.fullmatch(r"\d+ s", duration(59.4))
