"""The files of one run directory, owned in one place (no Lightning, no torch: reports read runs
without importing the training stack).

    <run>/config.yaml            the resolved config of the run (written before training)
    <run>/status.json            running | done | failed | interrupted, with the final numbers
    <run>/metrics.csv            long format (step, metric, value), appended and flushed per log
    <run>/checkpoints/last.ckpt  the last step-boundary checkpoint
    <run>/wandb_id.txt           the W&B run id, kept across resumes
    <run>/wandb/                 W&B's own files (the .wandb transaction logs)
"""
from __future__ import annotations

import csv
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

METRICS_FILE = "metrics.csv"


def write_rows(path: Path, rows: List[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "metric", "value"])
        for r in rows:
            w.writerow([r["step"], r["metric"], r["value"]])
    os.replace(tmp, path)


def read_rows(path: str | Path) -> List[dict]:
    with open(path, newline="") as f:
        return [{"step": int(r["step"]), "metric": r["metric"], "value": float(r["value"])}
                for r in csv.DictReader(f) if r.get("value") not in (None, "")]


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

    def status(self) -> dict:
        """The run's status.json, or {} before it was first written (or if a kill cut it)."""
        try:
            return json.loads(self.status_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def write_status(self, **status) -> None:
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status, indent=1))
        os.replace(tmp, self.status_path)

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
