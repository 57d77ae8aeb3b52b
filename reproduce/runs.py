"""The files of one run directory, owned in one place (no Lightning, no torch: reports read runs
without importing the training stack).

    <run>/config.yaml            the resolved config of the run (written before training)
    <run>/status.json            running | done | failed | interrupted, with the final numbers
    <run>/metrics.csv            long format (step, metric, value), appended and flushed per log
    <run>/checkpoints/last.ckpt  the last step-boundary checkpoint
    <run>/wandb_id.txt           the W&B run id, kept across resumes
    <run>/wandb/                 W&B's own files (the .wandb transaction logs)
    <dir>/.lock                  held by the process that owns a sweep or a run directory (`lock_dir`)
"""
from __future__ import annotations

import csv
import errno
import fcntl
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from .errors import ConfigError

METRICS_FILE = "metrics.csv"
LOCK_FILE = ".lock"
# Set by a parallel sweep in its workers' environment: the sweep's pid. The sweep holds the sweep
# directory's lock for them, they watch it (sweep.watch_parent), and a fault `term-sweep` signals it.
SWEEP_PID_ENV = "REPRODUCE_SWEEP_PID"


def lock_dir(path: Path) -> int:
    """Take the OS lock on `path` (a sweep or a run directory) for the life of this process; returns
    its fd (closing it releases the lock). An flock dies with its process, SIGKILL included, so a
    crash leaves no stale lock; the file holds the owner's pid for the message a second process gets."""
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConfigError(f"{path} is in use by process {holder} (it holds {path / LOCK_FILE}); let it finish "
                          f"or stop it (kill {holder}), then run this again") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def unlock(fd: int) -> None:
    os.close(fd)


def write_error(path: Path, e: OSError) -> str:
    """The one line for a file that could not be written (a full disk, a lost mount)."""
    if str(e.strerror).startswith("cannot write"):
        return e.strerror  # already this line
    return f"cannot write {path}: {e.strerror}" + ("; free some space there, then continue with --resume"
                                                    if e.errno == errno.ENOSPC else "")


def write_rows(path: Path, rows: List[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    try:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "metric", "value"])
            for r in rows:
                w.writerow([r["step"], r["metric"], r["value"]])
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a full disk: no partial file left behind
        raise


def read_rows(path: str | Path) -> List[dict]:
    """The rows of a metrics.csv. A last line without its newline was cut by a kill or a full disk
    mid-write: it is dropped, never read as a shorter number (on resume the checkpoint's iteration
    decides what is kept). Any other line that is not (step, metric, value) fails naming the file."""
    try:
        with open(path, newline="") as f:
            lines = f.read().splitlines(keepends=True)
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is damaged (not text); restore it, or start the sweep again with --overwrite") from None
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]
    rows = []
    for number, r in enumerate(csv.DictReader(lines), start=2):
        if r.get("value") in (None, ""):
            continue
        try:
            rows.append({"step": int(r["step"]), "metric": r["metric"], "value": float(r["value"])})
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: line {number} is not a (step, metric, value) row; restore the file, "
                              f"or start the sweep again with --overwrite") from None
    return rows


def read_metrics(path: str | Path) -> Dict[str, List[tuple]]:
    """metric -> [(step, value), ...] sorted by step."""
    series: Dict[str, List[tuple]] = {}
    for r in read_rows(path):
        series.setdefault(r["metric"], []).append((r["step"], r["value"]))
    return {k: sorted(v) for k, v in series.items()}


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def wandb_id_path(self) -> Path:
        return self.path / "wandb_id.txt"

    def status(self, strict: bool = False) -> dict:
        """The run's status.json, or {} before it was first written. A damaged file (cut, garbage,
        not an object) reads as {} too, or with `strict` fails naming the file: status.json is a
        summary, the checkpoint decides where a run is (sweep.resume_action)."""
        try:
            status = json.loads(self.status_path.read_text())
        except FileNotFoundError:
            return {}
        except (ValueError, UnicodeDecodeError):
            status = None
        if not isinstance(status, dict):
            if strict:
                raise ConfigError(f"{self.status_path} is damaged (not a JSON object)")
            return {}
        return status

    def write_status(self, **status) -> None:
        tmp = self.status_path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(status, indent=1))
            os.replace(tmp, self.status_path)
        except OSError:
            tmp.unlink(missing_ok=True)  # a full disk: no partial file left behind
            raise

    def config(self):
        """The run's resolved config (an OmegaConf DictConfig), or None before it was written."""
        from omegaconf import OmegaConf  # only readers of configs need it
        return OmegaConf.load(self.config_path) if self.config_path.exists() else None

    def metrics(self) -> Dict[str, List[tuple]]:
        return read_metrics(self.metrics_path) if self.metrics_path.exists() else {}

    def wandb_id(self, create: bool = False) -> Optional[str]:
        """The W&B run id: kept across resumes so W&B continues the same run."""
        if self.wandb_id_path.exists():
            return self.wandb_id_path.read_text().strip()
        if not create:
            return None
        run_id = uuid.uuid4().hex[:12]
        self.wandb_id_path.write_text(run_id)
        return run_id


def read_status(run_dir: str | Path) -> dict:
    return RunDir(Path(run_dir)).status()
