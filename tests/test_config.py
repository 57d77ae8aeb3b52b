import pytest

from reproduce.cli import dry_run
from reproduce.config import ConfigError, compose, experiments

from .conftest import run_cli


def test_every_experiment_composes_and_each_profile_changes_the_run():
    """Each YAML composes in every profile, its `kind` is the one it declares, and --quick and
    --smoke really change what runs (the smoke profile: synthetic data, a few iterations)."""
    from reproduce.config import CONFIG_DIR, load_yaml, to_dict
    for name in experiments():
        paper, quick, smoke = (compose(name, p) for p in ("paper", "quick", "smoke"))
        declared = load_yaml(CONFIG_DIR / f"{name}.yaml").get("kind")
        assert declared is None or paper.kind == declared
        strip = lambda c: {k: v for k, v in to_dict(c).items() if k != "profile"}  # noqa: E731
        assert strip(quick) != strip(paper) and strip(smoke) != strip(quick), name
        assert smoke.schedule.max_steps <= 64 and (smoke.data.dataset == "synthetic" or smoke.data.root == "tiny"), name


@pytest.mark.parametrize("overrides,message", [
    (["schedule.lrr=0.1"], "did you mean 'schedule.lr'"),
    (["scheduel.lr=0.1"], "did you mean 'schedule'"),
    (["trainer.max_steps=10"], "did you mean 'schedule.max_steps'"),  # the right name in the wrong section
    (["data.lr=0.2"], "did you mean 'schedule.lr'"),
    (["data.batch_size=big"], "data.batch_size"),
    (["schedule.lr=0"], "schedule.lr must be positive"),
    (["data.batch_size=-5"], "data.batch_size must be positive"),
    (["models=[resnet22]"], "6n+2"),
    (["trainer.devices=3"], "not divisible"),
    (["schedule.factor=2"], "schedule.factor"),
    (["schedule.milestones=[48000,32000]"], "increasing"),
    (["schedule.scaling=cubic"], "linear, sqrt, none"),
    (["lr"], "key=value"),
])
def test_bad_config_is_one_line(overrides, message):
    with pytest.raises(ConfigError) as e:
        compose("resnet", "paper", overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_one_value_for_a_list_key_is_a_list_of_one():
    assert list(compose("resnet", "paper", ["models=resnet20"]).models) == ["resnet20"]
    assert list(compose("resnet", "paper", ["models=resnet20,plain20"]).models) == ["resnet20", "plain20"]
    assert list(compose("resnet", "paper", ["seeds=3"]).seeds) == [3]
    assert list(compose("resnet", "paper", ["schedule.milestones=100", "schedule.max_steps=200"]).schedule.milestones) == [100]


def test_no_experiment_configs_is_an_error(tmp_path):
    """An install without the package data must say so, not list nothing."""
    with pytest.raises(ConfigError, match="lacks the package data"):
        experiments(tmp_path)
    with pytest.raises(ConfigError, match="lacks the package data"):
        experiments(tmp_path / "absent")


def test_unknown_experiment_suggests():
    with pytest.raises(ConfigError, match="did you mean 'resnet'"):
        compose("resnt")


def test_dry_run_shows_the_halving_schedule_and_the_paper_override():
    text = dry_run(compose("resnet"))
    assert "lr 0.1, batch 128" in text and "lr 0.05, batch 128" in text and "lr 0.025, batch 128" in text
    assert "64,000 iterations = 182.0 epochs" in text and "[32000, 48000]" in text
    assert "warmup (constant): lr 0.01 until training error < 80.0%" in text  # ResNet-110 only
    paper = dry_run(compose("resnet", overrides=["schedule.factor=0.1"]))
    assert "lr 0.01, batch 128" in paper and "lr 0.001, batch 128" in paper


@pytest.mark.smoke  # subprocesses of the CLI
def test_cli_errors_exit_2_with_one_line(tmp_path):
    cases = [
        (["resnt"], "unknown experiment"),
        (["resnet", "schedule.lrr=1"], "did you mean"),
        (["resnet", "--smoke", "models=[plain21]"], "6n+2"),
        (["resnet", "--resume", str(tmp_path / "nothing")], "no run to resume"),
    ]
    for args, message in cases:
        proc = run_cli(*args, check=False, timeout=120)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, proc.stderr)
        assert "Traceback" not in proc.stderr


@pytest.mark.smoke  # subprocesses of the CLI
def test_cli_list_and_dry_run():
    out = run_cli("list", timeout=120).stdout
    for name in ("resnet", "plain", "residual", "resnet-paper"):
        assert name in out
    out = run_cli("resnet", "--dry-run", timeout=120).stdout
    assert "factor: 0.5" in out and "lr 0.025" in out


@pytest.mark.smoke  # subprocesses of the CLI
def test_cli_help_version_and_a_closed_pipe():
    from reproduce import __version__
    proc = run_cli("--help", timeout=120)
    for flag in ("--quick", "--smoke", "--resume", "--dry-run", "--overwrite", "--version"):
        assert flag in proc.stdout, flag
    assert run_cli("--version", timeout=120).stdout.strip() == f"reproduce {__version__}"
    assert run_cli("resnet", "--version", timeout=120).stdout.strip() == f"reproduce {__version__}"
    # `reproduce list | head -1`: the reader is gone before the listing is written (closed here at
    # once; the child needs seconds to import torch), so its write meets a closed pipe
    import subprocess
    import sys
    from .conftest import ROOT
    lister = subprocess.Popen([sys.executable, "-m", "reproduce", "list"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    lister.stdout.close()
    err = lister.stderr.read().decode()
    assert lister.wait(timeout=120) == 141 and err == "", err
