"""Offline W&B runs read back for the tests, by the package's reader and, where the installed wandb
has it, by W&B's own (`wandb leet inspect --json`, wandb >= 0.31): the two must agree."""
import functools
import glob
import json
import shutil
import subprocess
import sys
from pathlib import Path

from reproduce.wandb_io import summarize_wandb_file


@functools.lru_cache(maxsize=None)
def wandb_command():
    """The `wandb` command of this interpreter's environment when it has `leet inspect`, else None."""
    exe = Path(sys.executable).with_name("wandb")
    exe = str(exe) if exe.exists() else shutil.which("wandb")
    if exe is None:
        return None
    probe = subprocess.run([exe, "leet", "inspect", "--help"], capture_output=True, text=True, timeout=60)
    return exe if probe.returncode == 0 and "--json" in probe.stdout else None



def leet_summary(path) -> dict:
    """The fields of `summarize_wandb_file`, from W&B's own reader of the transaction log."""
    proc = subprocess.run([wandb_command(), "leet", "inspect", "--json", str(path)], capture_output=True, text=True,
                          timeout=120, check=True)
    out = {"config": {}, "history": [], "summary": {}, "artifacts": [], "stats": [], "run": None}
    for line in proc.stdout.splitlines():
        rec = json.loads(line)
        kind, body = rec["type"], rec.get(rec["type"], {})
        if kind == "run":
            out["run"] = {"id": body.get("run_id", ""), "name": body.get("display_name", ""),
                          "group": body.get("run_group", ""), "tags": body.get("tags", []),
                          "job_type": body.get("job_type", ""), "sweep_id": body.get("sweep_id", "")}
            out["config"].update(body.get("config", {}).get("update", {}))
        elif kind == "config":
            out["config"].update(body.get("update", {}))
        elif kind == "history":
            out["history"].append(body.get("item", {}))
        elif kind == "summary":
            out["summary"].update(body.get("update", {}))
        elif kind == "artifact":
            out["artifacts"].append({"name": body["name"], "type": body["type"],
                                     "files": [e["path"] for e in body.get("manifest", {}).get("contents", [])]})
        elif kind == "stats":
            out["stats"].append(body.get("item", {}))
    return out


def read_run(path) -> dict:
    """`summarize_wandb_file(path)`, checked against W&B's reader when wandb has one."""
    ours = summarize_wandb_file(path)
    if wandb_command() is not None:
        theirs = leet_summary(path)
        for key in ours:
            assert ours[key] == theirs[key], f"{path}: the package's reader and `wandb leet inspect` disagree on {key}"
    return ours


def offline_runs(run_dir) -> list:
    """Every `.wandb` file under a run directory's wandb/ (one per attempt), oldest first."""
    return sorted(glob.glob(str(Path(run_dir) / "wandb" / "*run-*" / "*.wandb")))
