"""Every config key the user can set takes effect, or fails in one line: none is accepted and ignored.

(`seed=1` once wrote `seed: 1` to sweep.yaml while every run trained seed 0.)
"""
import dataclasses
import inspect
import re
import typing
from pathlib import Path

import pytest

from reproduce.config import CHOICES, ConfigError, RunConfig, ScheduleConfig, compose, for_model
from reproduce.schedules import Schedule

PACKAGE = Path(__file__).resolve().parent.parent / "reproduce"
# keys that shape the sweep, not a run: each has its own test (test_config.py, test_reliability.py)
SWEEP_KEYS = {"models", "seeds", "only", "per_model", "out_dir", "resume", "experiment", "profile"}


def leaf_keys(cls=RunConfig, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            yield from leaf_keys(t, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", t, f


def other_value(key, t, f):
    """A valid value different from the default, as an override string, or None to skip."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if key in CHOICES:
        return next(v for v in CHOICES[key] if v != default)
    base = typing.get_args(t)[0] if typing.get_origin(t) is typing.Union else t
    if base is bool:
        return str(not default).lower()
    if base is int:
        return str((default or 1) * 2)
    if base is float:
        return str((default or 0.5) / 2)
    if base is str:
        return "other"
    if typing.get_origin(base) in (list, typing.List):
        item = typing.get_args(base)[0]
        return "[" + ",".join(str(item(1 + i)) for i in range(2)) + "]" if item in (int, float) else "[a,b]"
    return None


SCHEDULE_PARAMETERS = set(inspect.signature(Schedule.__init__).parameters) - {"self", "batch_size"}
KEYS = [k for k in leaf_keys() if k[0] not in SWEEP_KEYS]


@pytest.mark.parametrize("key,t,f", KEYS, ids=[k for k, _, _ in KEYS])
def test_each_key_reaches_the_run_config_or_fails_in_one_line(key, t, f):
    value = other_value(key, t, f)
    if value is None:
        pytest.skip(f"no generic value for {key}")
    try:
        cfg = compose("resnet", "smoke", [f"{key}={value}"])
        run = for_model(cfg, cfg.models[0], cfg.seeds[0])
    except ConfigError as e:
        assert "\n" not in str(e) and key.split(".")[-1] in str(e)  # refused, naming the key
        return
    section, _, leaf = key.rpartition(".")
    node = run[section] if section else run
    assert str(node[leaf]).lower().replace(" ", "").replace("'", "") == value.lower(), key


@pytest.mark.parametrize("key", [k for k, _, _ in KEYS])
def test_each_key_is_read_by_the_package(key):
    """A key nothing reads would be accepted and silently do nothing."""
    leaf = key.rsplit(".", 1)[-1]
    if key.startswith("schedule.") and leaf in SCHEDULE_PARAMETERS:
        return  # Schedule.for_run passes every schedule.* key named like a Schedule parameter
    source = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py") if p.name != "config.py")
    source += "\n".join(re.findall(r"^(?!\s+\w+: .*=).*$", (PACKAGE / "config.py").read_text(), re.M))
    assert re.search(rf"\.{leaf}\b|[\"']{re.escape(key)}[\"']", source), f"nothing reads {key}"


def test_every_schedule_parameter_is_a_config_key():
    """Schedule.for_run reads schedule.<parameter> for each parameter: a new one needs its key in ScheduleConfig."""
    assert SCHEDULE_PARAMETERS <= {f.name for f in dataclasses.fields(ScheduleConfig)}
    run = compose("resnet", "smoke", ["schedule.max_batch=32", "schedule.decay=batch"])
    assert [p.batch_size for p in Schedule.for_run(run).phases] == [16, 32, 32]


def test_seed_is_refused_with_the_way_to_run_it():
    with pytest.raises(ConfigError, match=r"use seeds=\[1\]"):
        compose("resnet", "smoke", ["seed=1"])


def test_empty_seeds_is_a_config_error():
    with pytest.raises(ConfigError, match="seeds is empty"):
        compose("resnet", "smoke", ["seeds=[]"])


def test_each_seed_runs_its_own_seed():
    cfg = compose("resnet", "smoke", ["seeds=[3,5]", "models=[resnet8]"])
    assert [for_model(cfg, "resnet8", s).seed for s in cfg.seeds] == [3, 5]


def test_an_experiment_named_like_a_command_is_refused(tmp_path):
    from reproduce.config import experiments
    (tmp_path / "resnet.yaml").write_text("kind: curves\n")
    assert experiments(tmp_path) == ["resnet"]
    (tmp_path / "report.yaml").write_text("kind: curves\n")
    with pytest.raises(ConfigError, match="'report' is a command"):
        experiments(tmp_path)
