"""W&B beyond the logger: end-of-run summary and artifacts, and a reader for offline runs.

`read_wandb_file` parses an offline run's `.wandb` transaction log with wandb's protobuf
messages alone (wandb 0.31's own reader, `wandb leet inspect --json`, is a command line tool; the
tests check this reader against it): a 7-byte header (":W&B", a 2-byte magic, a 1-byte version), then the
LevelDB log format (32 KiB blocks of records: crc32c(4) length(2) type(1) payload, a message
split across blocks as FIRST/MIDDLE/LAST), each message a `wandb_internal_pb2.Record`.
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from .loggers import decide_mode, say_offline, summary_tags, wandb_config, wandb_settings
from .models import depth_of, is_residual
from .paper import PAPER_TABLE6


TABLE_ROWS = 10_000  # the rows a wandb.Table logged to a run keeps (wandb.Table.MAX_ROWS; a test checks)

BLOCK = 32 * 1024
HEADER_LEN = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def finish_run(wandb_logger, status: dict, checkpoint: Path, cfg) -> None:
    """Summary (final/best test error beside the paper's; the last validation error, `val/err`,
    which a W&B sweep optimises), checkpoint artifact, then finish."""
    import wandb  # optional: wandb.mode=disabled runs without it installed
    run = wandb_logger.experiment
    summary = {k: v for k, v in status.items() if k in ("status", "final_test_err", "best_test_err", "step", "error")}
    if status.get("last_val_err") is not None:
        summary["val/err"] = status["last_val_err"]
    paper = PAPER_TABLE6.get(status["model"])
    if paper is not None:
        summary["paper_test_err"] = paper
        if status.get("final_test_err") is not None:
            summary["diff_vs_paper"] = status["final_test_err"] - paper
    run.summary.update(summary)
    if cfg.wandb.log_model and Path(checkpoint).exists():
        art = wandb.Artifact(f"model-{run.id}", type="model",
                             metadata={"model": status["model"], "step": status.get("step")})
        art.add_file(str(checkpoint), name="last.ckpt")
        run.log_artifact(art, aliases=["latest"])
    run.finish()


def summary_run_id(group: str) -> str:
    """The summary run's W&B id, a function of the sweep's group alone: a `--resume` of the sweep
    continues that run instead of adding another. Hashed, since a group may hold characters a run
    id may not."""
    return "summary-" + hashlib.sha1(group.encode()).hexdigest()[:16]


def log_experiment_summary(cfg, group: str, exp_dir: Path, figure: Path, rows: List[dict],
                           more_tables: Optional[Dict[str, List[dict]]] = None) -> None:
    """One extra run in the sweep's group (job type `summary`) holding the sweep's resolved config,
    the figure, the results table and any more tables."""
    mode = decide_mode(cfg.wandb.mode)
    if mode == "disabled":
        return
    import wandb  # optional: wandb.mode=disabled runs without it installed
    if mode == "offline":
        say_offline(exp_dir / "summary")
    (exp_dir / "summary").mkdir(parents=True, exist_ok=True)

    def init(mode: str):
        return wandb.init(project=cfg.wandb.project, entity=cfg.wandb.entity, group=group, id=summary_run_id(group),
                          name=f"{cfg.experiment}-summary", job_type="summary", tags=summary_tags(cfg),
                          config=wandb_config(cfg, group, run=False), dir=str(exp_dir / "summary"), mode=mode,
                          resume="allow", reinit="create_new", settings=wandb_settings(cfg.wandb))
    try:
        run = init(mode)
    except Exception:
        if mode != "online":
            raise
        wandb.teardown()  # wandb's service holds the failed attempt's run id as in use until it stops
        run = init("offline")
    if figure.exists():
        run.log({"figure": wandb.Image(str(figure))})
    for key, table in {"results": rows, **(more_tables or {})}.items():
        if table:
            run.log({key: to_wandb_table(table)})
    run.finish()


def to_wandb_table(rows: List[dict]):
    """One type per column, as a W&B Table insists: a column of numbers (None where missing)
    stays numeric, so a report can plot it; any other column goes as text."""
    import wandb  # optional: wandb.mode=disabled runs without it installed
    columns = list(rows[0].keys())
    numeric = {c for c in columns if all(r.get(c) is None or (isinstance(r.get(c), (int, float))
                                                                and not isinstance(r.get(c), bool)) for r in rows)}
    return wandb.Table(columns=columns, data=[[r.get(c) if c in numeric else str(r.get(c)) for c in columns]
                                              for r in rows])


def curve_rows(runs: List[dict], max_rows: int = TABLE_ROWS) -> List[dict]:
    """Figure 6 as one long table: (model, family, depth, iteration, metric, value) for the
    training error and the test error (validation error for ImageNet, as Figure 4) of every run,
    so a W&B report redraws the figure without the CSVs. A W&B Table logged to a run keeps at
    most `max_rows` rows, so long training-error series are thinned evenly (the last point kept);
    the evaluation points, one per `eval_every`, stay."""
    eval_key = "test/err" if any(r["metrics"].get("test/err") for r in runs) else "val/err"  # as report.curves_figure
    series = [(r, key) for r in runs for key in ("train/err", eval_key) if r["metrics"].get(key)]
    per_series = max_rows // max(len(series), 1)
    out = []
    for r, key in series:
        points = r["metrics"][key]
        stride = -(-len(points) // per_series)
        kept = points[::stride] if points[::stride][-1] == points[-1] else points[::stride] + [points[-1]]
        out += [{"model": r["model"], "family": "resnet" if is_residual(r["model"]) else "plain",
                 "depth": depth_of(r["model"]), "iteration": step, "metric": key, "value": value}
                for step, value in kept]
    return out


# --------------------------------------------------------------------------------------------
# reading offline runs


def _payloads(data: bytes) -> Iterator[bytes]:
    pos, pending = HEADER_LEN, b""
    while pos + 7 <= len(data):
        left_in_block = BLOCK - (pos % BLOCK)
        if left_in_block < 7:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:  # zero padding
            pos += left_in_block
            continue
        payload = data[pos + 7: pos + 7 + length]
        if len(payload) < length:
            return  # a record cut off by a kill: everything before it is intact
        pos += 7 + length
        if kind == FULL:
            yield payload
        elif kind == FIRST:
            pending = payload
        elif kind == MIDDLE:
            pending += payload
        elif kind == LAST:
            yield pending + payload
            pending = b""


def read_wandb_file(path: str | Path) -> List:
    """All `Record` messages of an offline run's `.wandb` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb  # optional: read only when wandb is installed
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log (no ':W&B' header)")
    records = []
    for payload in _payloads(data):
        rec = pb.Record()
        rec.ParseFromString(payload)
        records.append(rec)
    return records


def _key(item) -> str:
    """A history or summary key; a nested one (an image's or a table's fields) joined with dots,
    as W&B shows it."""
    return item.key or ".".join(item.nested_key)


def summarize_wandb_file(path: str | Path) -> dict:
    """{run, config, history (list of dicts), summary, artifacts (name, type, files), stats (the
    system-metrics samples, list of dicts)} from a `.wandb` file."""
    out = {"config": {}, "history": [], "summary": {}, "artifacts": [], "stats": [], "run": None}
    for rec in read_wandb_file(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["run"] = {"id": rec.run.run_id, "name": rec.run.display_name, "group": rec.run.run_group,
                          "tags": list(rec.run.tags), "job_type": rec.run.job_type, "sweep_id": rec.run.sweep_id}
            for item in rec.run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "history":
            row = {}
            for item in rec.history.item:
                row[_key(item)] = json.loads(item.value_json)
            out["history"].append(row)
        elif kind == "summary":
            for item in rec.summary.update:
                out["summary"][_key(item)] = json.loads(item.value_json)
        elif kind == "artifact":
            out["artifacts"].append({"name": rec.artifact.name, "type": rec.artifact.type,
                                     "files": [e.path for e in rec.artifact.manifest.contents]})
        elif kind == "stats":  # system metrics (CPU, memory, disk, network, GPU), sampled by wandb
            out["stats"].append({item.key: json.loads(item.value_json) for item in rec.stats.item})
    return out


def logged_in_wandb(run_dir: str | Path) -> set:
    """{(iteration, metric)} already in the W&B transaction logs of a run directory (every
    offline or online attempt of it), so a resumed run sends only what W&B does not hold yet.
    A kill can cut the newest log mid-record; what precedes the cut counts."""
    files = sorted(Path(run_dir).glob("wandb/*run-*/*.wandb"))
    logged = set()
    for path in files:
        for row in summarize_wandb_file(path)["history"]:
            step = row.get("trainer/global_step")
            if step is None:
                continue
            logged.update((int(step), key) for key in row if not key.startswith("_") and key != "trainer/global_step")
    return logged
