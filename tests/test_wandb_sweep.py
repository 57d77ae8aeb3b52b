"""W&B as its users meet it: trials started by a sweep agent, the summary run, tags and configs.

The agent's side is wandb's own code: the command is built from configs/_wandb-sweep.yaml by
wandb's sweep utilities (`${args}` = `--key=value`), the parameter file is written as the agent
writes it, and the environment is the one `wandb agent` gives a trial. Only the profile is
shrunk (`--smoke` for `--quick`, ResNet-8 for ResNet-20) so that a trial takes seconds.
"""
import glob
import json
import sys
from pathlib import Path

import pytest
import yaml

from reproduce.wandb_io import summary_run_id

from .conftest import ROOT, run_cli
from .wandb_files import offline_runs, read_run

SWEEP_YAML = ROOT / "configs" / "_wandb-sweep.yaml"
SWEEP_ID = "testsweep1"


def agent_trial(out: Path, run_id: str, params: dict):
    """Start the CLI as `wandb agent` starts one trial (wandb_agent.Agent._command_run)."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils
    from wandb.sdk.lib import config_util
    args = {k: {"value": v} for k, v in params.items()}
    param_path = out / "wandb" / f"sweep-{SWEEP_ID}" / f"config-{run_id}.yaml"
    config_util.save_config_file_from_dict(str(param_path), args)
    sweep_vars = {**sweep_utils.create_sweep_command_args({"args": args}), "env": ["/usr/bin/env"],
                  "interpreter": [sys.executable]}
    command = []
    for chunk in sweep_utils.create_sweep_command(yaml.safe_load(SWEEP_YAML.read_text())["command"]):
        command += sweep_vars[chunk[2:-1]] if chunk.startswith("${") else [chunk]
    assert command[:4] == ["/usr/bin/env", sys.executable, "-m", "reproduce"]
    assert f"--schedule.lr={params['schedule.lr']}" in command  # the agent's style
    command = ["--smoke" if c == "--quick" else c for c in command[4:]] + ["models=[resnet8]", f"out_dir={out}"]
    env = {"WANDB_SWEEP_ID": SWEEP_ID, "WANDB_RUN_ID": run_id, "WANDB_PROJECT": "reproduce",
           "WANDB_SWEEP_PARAM_PATH": str(param_path), "WANDB_DIR": str(out)}
    return run_cli(*command, env=env, timeout=300)


def test_sweep_agent_trials_are_one_run_each_under_the_agents_id(tmp_path):
    trials = {"trial0001": {"schedule.lr": 0.05, "optim.weight_decay": 1.2e-05},
              "trial0002": {"schedule.lr": 0.2, "optim.weight_decay": 0.0003}}
    for run_id, params in trials.items():  # twice in the same out_dir, as an agent runs its trials
        proc = agent_trial(tmp_path, run_id, params)
        assert "wandb: WARNING" not in proc.stdout + proc.stderr
    sweep_dir = tmp_path / f"wandb-sweep-{SWEEP_ID}"
    assert sorted(p.name for p in sweep_dir.iterdir()) == sorted(trials)
    assert not (tmp_path / "resnet").exists()  # no sweep directory, no report
    every = glob.glob(str(tmp_path / "**" / "offline-run-*" / "*.wandb"), recursive=True)
    assert len(every) == 2, every  # one W&B run per trial, and no summary run
    for run_id, params in trials.items():
        (path,) = offline_runs(sweep_dir / run_id)
        log = read_run(path)
        assert log["run"]["id"] == run_id and log["run"]["sweep_id"] == SWEEP_ID and log["run"]["job_type"] == "train"
        assert log["run"]["tags"] == ["experiment:resnet", "family:resnet", "depth:8", "profile:smoke"]
        cfg = log["config"]
        assert cfg["schedule"]["lr"] == params["schedule.lr"] and cfg["lr_used"] == pytest.approx(params["schedule.lr"])
        assert cfg["optim"]["weight_decay"] == params["optim.weight_decay"]
        assert {k: cfg[k] for k in params} == params  # the sweep's own keys, as its controller reads them
        status = json.loads((sweep_dir / run_id / "status.json").read_text())
        assert status["status"] == "done"
        assert log["summary"]["val/err"] == pytest.approx(status["last_val_err"])  # the metric the sweep minimises


@pytest.fixture(scope="module")
def resumed_sweep(tmp_path_factory):
    """A two-run smoke sweep (ResNet-8 with a per_model lr), then a --resume of it, finished."""
    out = tmp_path_factory.mktemp("sweep")
    # as conftest.isolated_wandb, which is set up only after a module's fixtures
    env = {"WANDB_MODE": "offline", **{v: str(out / "wandb-home" / v.lower()) for v in
                                       ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR")}}
    run_cli("resnet", "--smoke", "models=[plain8,resnet8]", "per_model.resnet8.schedule.lr=0.2", f"out_dir={out}",
            env=env, timeout=300)
    proc = run_cli("resnet", "--resume", out, env=env, timeout=300)
    return out, proc


def test_summary_run_is_continued_by_resume_and_runs_hold_their_own_config(resumed_sweep):
    out, proc = resumed_sweep
    assert "wandb: WARNING" not in proc.stdout + proc.stderr
    exp = out / "resnet"
    group = json.loads((exp / "sweep.json").read_text())["group"]
    (path,) = offline_runs(exp / "resnet8")  # finished: the resume skipped it
    run = read_run(path)
    assert run["run"]["job_type"] == "train" and run["run"]["group"] == group
    cfg = run["config"]
    assert cfg["schedule"]["lr"] == 0.2 and cfg["models"] == ["resnet8"]  # its per_model entry, merged in
    assert "per_model" not in cfg and "sweep" not in cfg  # no other model's, no other kind's keys
    assert cfg["wandb"]["group"] == group
    summaries = [read_run(p) for p in offline_runs(exp / "summary")]
    assert len(summaries) == 2  # the first attempt and the resume's, of one run:
    assert {s["run"]["id"] for s in summaries} == {summary_run_id(group)}
    for s in summaries:
        assert s["run"]["job_type"] == "summary" and s["run"]["tags"] == ["experiment:resnet", "profile:smoke"]
        assert s["config"]["per_model"]["resnet8"] == {"schedule": {"lr": 0.2}}  # the sweep's config, whole
        assert s["config"]["models"] == ["plain8", "resnet8"] and s["config"]["wandb"]["group"] == group


def test_wandb_report_dry_run_writes_the_figure_panels(resumed_sweep):
    out, _ = resumed_sweep
    run_cli("report", out, "--dry-run", timeout=120)
    spec = json.loads((out / "resnet" / "report.json").read_text())
    text = json.dumps(spec)
    ids = {d.name: (d / "wandb_id.txt").read_text() for d in (out / "resnet").iterdir() if (d / "wandb_id.txt").exists()}
    for panel in ("plain nets: error vs iterations", "ResNets: error vs iterations", "temperature = lr / batch"):
        assert panel in text
    assert "train/err" in text and "test/err" in text and "trainer/global_step" in text
    assert f"{ids['plain8']}:train/err" in text and "dashed" in text  # training error dashed, per run
    group = json.loads((out / "resnet" / "sweep.json").read_text())["group"]
    assert "lr_drops" in text  # the table of training-error steps at each drop
    filters = {rs["name"]: rs["filters"]["filters"] for b in spec["spec"]["blocks"] if b.get("type") == "panel-grid"
               for rs in b["metadata"]["runSets"]}
    picked = {name: [(f["key"]["name"], f["value"]) for f in fs] for name, fs in filters.items()}
    assert picked == {"plain": [("group", group), ("tags", ["family:plain"])],
                      "ResNet": [("group", group), ("tags", ["family:resnet"])],
                      "all runs": [("group", group), ("jobType", "train")],
                      "summary": [("group", group), ("jobType", "summary")]}  # the tags and job types runs get
