"""Smoke tier: every experiment end to end through the real CLI on synthetic data."""
import glob
import json
import re
from pathlib import Path

import pytest

from reproduce.config import experiments
from reproduce.runs import read_metrics
from .conftest import run_cli
from .wandb_files import read_run


@pytest.fixture(scope="module")
def resnet_smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    # wandb samples system metrics every 15 s by default, longer than a smoke run: every second here
    proc = run_cli("resnet", "--smoke", f"out_dir={out}", timeout=300, env={"WANDB_X_STATS_SAMPLING_INTERVAL": "1"})
    return out / "resnet", proc


def test_resnet_smoke_writes_figure_table_csv_checkpoints(resnet_smoke):
    exp, proc = resnet_smoke
    assert (exp / "figure.png").stat().st_size > 10_000
    table = (exp / "results.md").read_text()
    models = ["plain20", "plain32", "plain44", "plain56", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]
    for model in models:
        assert f"| {model} |" in table
        run = exp / model
        assert (run / "checkpoints" / "last.ckpt").exists() and (run / "config.yaml").exists()
        metrics = read_metrics(run / "metrics.csv")
        assert [s for s, _ in metrics["test/err"]] == [4, 8]  # every eval_every=4 iterations, and the last
        assert {"train/loss", "train/err", "lr", "batch_size", "temperature", "val/err"} <= set(metrics)
    assert "| resnet110 | 1 | 8 |" in table and "FAILED" not in table
    assert "6.43" in table  # the paper's Table 6 beside ours
    assert "## Error at each lr drop" in table and "| at 4: before → after |" in table
    assert "## Figure 6's claims on these runs" in table  # verdicts (too few points at smoke length)


def test_lr_logged_is_the_schedule_halved_twice(resnet_smoke):
    exp, _ = resnet_smoke
    lr = dict(read_metrics(exp / "resnet20" / "metrics.csv")["lr"])
    # smoke: 8 iterations, lr halved at 4 and 6; the lr logged at iteration k is the one step k used
    assert lr[2] == pytest.approx(0.1) and lr[4] == pytest.approx(0.1)
    assert lr[6] == pytest.approx(0.05) and lr[8] == pytest.approx(0.025)


def test_resnet110_warmup_is_logged(resnet_smoke):
    exp, _ = resnet_smoke
    m = read_metrics(exp / "resnet110" / "metrics.csv")
    lr, err = dict(m["lr"]), dict(m["train/err"])
    assert lr[2] == pytest.approx(0.01)  # Section 4.2: warm up at 0.01 ...
    for step in sorted(lr)[1:]:  # ... until train/err < 80% at a log step, then the schedule's lr
        prev = max(s for s in err if s < step)
        ended = any(err[s] < 80 for s in err if s <= prev)
        expected = {True: {4: 0.1, 6: 0.05, 8: 0.025}, False: {4: 0.01, 6: 0.01, 8: 0.01}}[ended][step]
        assert lr[step] == pytest.approx(expected), (step, lr, err)


def test_wandb_offline_files_hold_config_history_summary_artifacts(resnet_smoke):
    exp, proc = resnet_smoke
    files = glob.glob(str(exp / "resnet20" / "wandb" / "offline-run-*" / "*.wandb"))
    assert len(files) == 1
    log = read_run(files[0])
    assert log["run"]["name"] == "resnet20" and log["run"]["group"].startswith("resnet-")
    assert log["run"]["tags"] == ["experiment:resnet", "family:resnet", "depth:20", "profile:smoke"]
    assert log["run"]["job_type"] == "train"
    cfg = log["config"]
    assert cfg["schedule"]["factor"] == 0.5 and cfg["schedule"]["milestones"] == [4, 6]
    assert cfg["effective_batch"] == 16 and cfg["lr_used"] == pytest.approx(0.1)
    assert cfg["env"]["torch"]
    rows = log["history"]
    lr_at = {r["trainer/global_step"]: r["lr"] for r in rows if "lr" in r}
    assert lr_at[4] == pytest.approx(0.1) and lr_at[6] == pytest.approx(0.05) and lr_at[8] == pytest.approx(0.025)
    assert sorted(r["trainer/global_step"] for r in rows if "test/err" in r) == [4, 8]
    steps_of = lambda key: sorted(r["trainer/global_step"] for r in rows if key in r)  # noqa: E731
    assert steps_of("lr") == steps_of("train/err") == [2, 4, 6, 8]  # each once per log step
    assert log["summary"]["status"] == "done" and "final_test_err" in log["summary"]
    assert log["summary"]["paper_test_err"] == 8.75
    assert any(a["type"] == "model" for a in log["artifacts"])
    summary = glob.glob(str(exp / "summary" / "wandb" / "offline-run-*" / "*.wandb"))
    assert summary, "the sweep's summary run with the figure and the table"
    s = read_run(summary[0])
    keys = {k.split(".")[0] for r in s["history"] for k in r}
    assert {"figure", "results", "lr_drops"} <= keys  # an image and W&B Tables
    assert any(a["type"] == "run_table" for a in s["artifacts"])
    assert "wandb sync" in proc.stderr
    assert "wandb: WARNING" not in proc.stderr + proc.stdout


def test_sweep_states_its_plan_estimate_and_progress(resnet_smoke):
    _, proc = resnet_smoke
    err = proc.stderr
    models = "plain20, plain32, plain44, plain56, resnet20, resnet32, resnet44, resnet56, resnet110"
    assert f"plan: 9 runs ({models}), 8 iterations each (72 in all), on cpu (" in err
    assert err.index("plan: 9 runs") < err.index("run 1 of 9: plain20, 8 iterations") < err.index("run 9 of 9: resnet110")
    assert len(re.findall(r"^estimate: the sweep takes about \d+ (s|min|h)", err, re.M)) == 1
    assert err.index("estimate:") < err.index("sweep ETA")  # stated before any progress line uses it
    evals = re.findall(r"^ +(\w+)  run (\d) of 9  iteration +(\d+)/8  .*, sweep ETA \d+ (?:s|min|h)", err, re.M)
    assert ("resnet56", "8", "4") in evals and ("resnet110", "9", "8") in evals
    assert "--quick" not in err  # the hint is for the paper profile on a CPU


def test_wandb_keeps_the_code_system_metrics_and_a_curves_table(resnet_smoke):
    exp, _ = resnet_smoke
    log = read_run(glob.glob(str(exp / "resnet20" / "wandb" / "offline-run-*" / "*.wandb"))[0])
    code = [a for a in log["artifacts"] if a["type"] == "code"]
    assert len(code) == 1 and {"train.py", "callbacks/progress.py", "models/cifar.py"} <= set(code[0]["files"])
    assert log["config"]["_wandb"]["code_path"] == code[0]["name"]  # the run's Code tab
    assert log["stats"], "offline runs keep W&B's system metrics"
    assert any({"memory_percent", "proc.memory.rssMB"} & set(sample) for sample in log["stats"])
    summary_dir = glob.glob(str(exp / "summary" / "wandb" / "offline-run-*"))[0]
    table = json.loads(Path(glob.glob(f"{summary_dir}/files/media/table/curves_*.table.json")[0]).read_text())
    assert table["columns"] == ["model", "family", "depth", "iteration", "metric", "value"]
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    for model in ("plain56", "resnet110"):
        assert sorted(r["iteration"] for r in rows if r["model"] == model and r["metric"] == "test/err") == [4, 8]
        assert sorted(r["iteration"] for r in rows if r["model"] == model and r["metric"] == "train/err") == [2, 4, 6, 8]
    assert {r["family"] for r in rows if r["model"] == "resnet110"} == {"resnet"}
    s = read_run(glob.glob(f"{summary_dir}/*.wandb")[0])
    assert any("curves" in k for r in s["history"] for k in r)


def test_progress_bar_on_a_terminal_names_the_run_and_the_sweep_eta(tmp_path):
    """On a (pseudo-)terminal: Lightning's bar, whose description carries the run and the sweep ETA."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    from .conftest import ROOT
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))  # tqdm draws nothing at 0 columns
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "reproduce", "resnet", "--smoke", "models=[resnet8,plain8]",
                             "trainer.progress=true", "wandb.mode=disabled", f"out_dir={tmp_path}"],
                            cwd=ROOT, env=env, stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=300) == 0
    screen = b"".join(chunks).decode(errors="replace")
    assert re.search(r"plain8 \(run 2 of 2, sweep ETA \d+ (s|min|h)", screen), screen[-3000:]
    assert re.search(r"resnet8  run 1 of 2  iteration +8/8", screen)  # the evaluation lines, above the bar


@pytest.mark.parametrize("name", [e for e in experiments() if e not in ("resnet",)])
def test_every_other_experiment_smokes(name, tmp_path):
    run_cli(name, "--smoke", f"out_dir={tmp_path}", "wandb.mode=disabled", timeout=300)
    assert (tmp_path / name / "results.md").exists()
    assert list((tmp_path / name).glob("*.png"))


def test_parallel_workers_train_a_sweep_and_the_parent_reports(tmp_path):
    proc = run_cli("resnet", "--smoke", "models=[resnet8,plain8,resnet14]", "trainer.parallel=2",
                   f"out_dir={tmp_path}", "wandb.mode=disabled", timeout=300)
    exp = tmp_path / "resnet"
    for name in ("resnet8", "plain8", "resnet14"):
        assert '"status": "done"' in (exp / name / "status.json").read_text()
        assert (exp / name / "worker.log").exists()
        assert f"{name}: done (exit 0)" in proc.stdout
    table = (exp / "results.md").read_text()
    assert "| resnet14 | 1 | 8 |" in table and "FAILED" not in table
    assert (exp / "figure.png").exists()
