"""The TensorBoard HParams dashboard of a search: one entry per finished trial.

    tensorboard --logdir <search dir>

shows every trial's training curves (the trainer's own events under trials/<id>/tb/, and
trials/<id>/rung_<k>/tb/ for lower fidelities) and, in the HPARAMS tab, one row per trial: its
decisions, kind and state as hyperparameters, and its validation AUC, log loss, test AUC,
latency, estimated step cost, reward and wall time as metrics.

Each trial is one run, `<search dir>/tensorboard/trial_<id>/`, holding the hparams plugin's
session-start summary (made by torch.utils.tensorboard.summary.hparams), the metric scalars and a
session-end summary whose status follows the trial's state. No experiment summary is written:
TensorBoard then builds the table's columns from all trials' sessions (string decisions get a
discrete filter), so trials of a resumed search, or with different DCN knobs, need no shared header.

Idempotent: `tensorboard/logged.json` records a fingerprint of what was written per trial. Logging
a trial again with the same content is a no-op; with changed content (a trial retried after a
crash) its run directory is replaced, never appended to, so the table has one row per trial.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Self

from recsearch import remote
from recsearch.search.results import REJECTED, TrialRow, row_of
from recsearch.search.store import TrialRecord
from recsearch.types import TrialState

TB_DIR = "tensorboard"
MANIFEST = "logged.json"
LOCK = ".lock"
METRIC_PREFIX = "trial/"
# TrialRow fields logged as metrics, under METRIC_PREFIX + name.
METRIC_FIELDS = {
    "val_auc": "auc",
    "val_log_loss": "log_loss",
    "test_auc": "test_auc",
    "latency_p50_ms": "latency_p50_ms",
    "latency_p99_ms": "latency_p99_ms",
    "est_step_cost_ms": "est_step_cost_ms",
    "reward": "reward",
    "wall_s": "wall_s",
}


def run_name(trial_id: int) -> str:
    return f"trial_{trial_id:04d}"


def hparams_of(row: TrialRow) -> dict[str, Any]:
    """The trial's hyperparameter entry: decisions plus what kind of trial it is."""
    return {"trial_id": row.trial_id, "kind": row.kind, "state": row.state_label, **row.params,
            **({"train_rows": row.train_rows} if row.train_rows is not None else {})}


def metrics_of(row: TrialRow) -> dict[str, float]:
    """The trial's measured numbers (only those it has)."""
    out = {}
    for name, attr in METRIC_FIELDS.items():
        value = row.value(attr)
        if value is not None:
            out[METRIC_PREFIX + name] = value
    return out


def log_trial(search_dir: Path | str, record: TrialRecord) -> bool:
    """Write (or rewrite) the HParams entry of a finished trial; True if anything was written.

    Unfinished trials (PENDING, RUNNING) are skipped: their numbers may still change."""
    if not record.state.finished:
        return False
    row = row_of(record)
    hparams, metrics = hparams_of(row), metrics_of(row)
    fingerprint = hashlib.sha256(
        json.dumps({"h": hparams, "m": metrics}, sort_keys=True, default=str).encode()
    ).hexdigest()[:16]
    root = Path(search_dir) / TB_DIR
    root.mkdir(parents=True, exist_ok=True)
    with _Lock(root / LOCK):
        manifest = _read_manifest(root)
        key = str(record.trial_id)
        if manifest.get(key) == fingerprint and (root / run_name(record.trial_id)).is_dir():
            return False
        run_dir = root / run_name(record.trial_id)
        if run_dir.exists():
            shutil.rmtree(run_dir)  # a changed trial replaces its entry instead of adding one
        _write_run(run_dir, hparams, metrics, record.state, row.kind)
        manifest[key] = fingerprint
        _write_manifest(root, manifest)
    return True


def log_all(search_dir: Path | str, records: list[TrialRecord]) -> int:
    """Log every finished trial (backfill, e.g. for a search run by an older loop); returns how
    many entries were written."""
    return sum(log_trial(search_dir, r) for r in records)


def _write_run(run_dir: Path, hparams: dict[str, Any], metrics: dict[str, float], state: TrialState, kind: str) -> None:
    from torch.utils.tensorboard.summary import hparams as hparams_summary
    from torch.utils.tensorboard.summary import scalar
    from torch.utils.tensorboard.writer import FileWriter

    _experiment, session_start, _end = hparams_summary(hparams, metrics)
    writer = FileWriter(str(run_dir))
    try:
        writer.add_summary(session_start)
        for tag, value in metrics.items():
            writer.add_summary(scalar(tag, value), global_step=0)
        writer.add_summary(_session_end(state, kind))
    finally:
        writer.close()


def _session_end(state: TrialState, kind: str) -> Any:
    """A session-end summary whose status says how the trial's training ended (torch's always says
    success): FAILED -> failure; rejected (never trained) -> unknown; COMPLETE and stopped early by
    successive halving -> success. The `state` hparam tells the last two apart."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    if kind == REJECTED:
        status = api_pb2.STATUS_UNKNOWN
    elif state is TrialState.FAILED:
        status = api_pb2.STATUS_FAILURE
    else:
        status = api_pb2.STATUS_SUCCESS
    content = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(status=status),
        version=metadata.PLUGIN_DATA_VERSION,
    )
    smd = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString())
    )
    return Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=smd)])


def _read_manifest(root: Path) -> dict[str, str]:
    path = root / MANIFEST
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}  # rewritten below; worst case every entry is rewritten once, never duplicated
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _write_manifest(root: Path, manifest: dict[str, str]) -> None:
    remote.write_text(root / MANIFEST, json.dumps(manifest, sort_keys=True, indent=1) + "\n")


class _Lock:
    """Serializes writers of one search's tensorboard/ (the search loop and `recsearch report`)."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = -1

    def __enter__(self) -> Self:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)

