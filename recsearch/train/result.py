"""What a training run reports: `result.json`, as typed values (torch-free).

The trainer (`recsearch train`) and the logistic-regression baseline write it; the search's
runners, the report and the bench tools read it, all through `TrainResult`. The file is the
contract between a trial and the search: a trial may run in another process, another machine (a
torchx job), or an older version of recsearch, so reading is tolerant of keys it does not know (kept
in `extra`, written back) and strict about the ones it does (a wrong type is a `ResultError` naming
the file and the key).

    status       completed | early_stopped | diverged | failed
    metrics      split -> SplitMetrics (val, test: whatever the run evaluated)
    latency_ms   serving batch (as a string, JSON's keys) -> LatencyEntry
    ...          the rest: see the fields below
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OK_STATUSES = ("completed", "early_stopped")
STATUSES = (*OK_STATUSES, "diverged", "failed")


class ResultError(ValueError):
    """A result file that cannot be read as one: unreadable, not JSON, or a key of the wrong type."""


@dataclass(frozen=True)
class SplitMetrics:
    """A model's metrics on one split."""

    auc: float
    log_loss: float | None = None  # None: not recorded (a result written by another tool)
    accuracy: float | None = None
    rows: int | None = None  # rows evaluated
    ne: float | None = None  # normalized entropy (log loss / entropy of the split's click rate)


@dataclass(frozen=True)
class LatencyEntry:
    """The trained model's inference latency at one serving batch (recsearch.train.latency)."""

    p50_ms: float
    p99_ms: float | None = None
    # the same p50 measured twice (two halves of the rounds) differed by this share (None: not
    # recorded, a result from before the spread was measured)
    spread: float | None = None
    calls: int | None = None  # timed calls
    serving: str = "eager"  # eager | cuda_graph
    # with a reference architecture timed in the same rounds (a search's trials)
    reference_p50_ms: float | None = None
    reference_spread: float | None = None
    vs_reference: float | None = None  # this model's time over the reference's, paired by round
    vs_reference_spread: float | None = None


@dataclass(frozen=True)
class TrainResult:
    """One run's result.json. Numbers a run could not measure are None (or NaN where the trainer
    wrote NaN: a run with no steps has no step time)."""

    status: str
    metrics: dict[str, SplitMetrics] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # the run's settings, as it resolved them
    error: str | None = None  # failed: the exception, one line
    traceback: str | None = None
    model: str | None = None  # None: the DLRM trainer; "logistic_regression": the baseline
    steps: int | None = None
    epochs_completed: int | None = None
    samples: int | None = None
    train_rows: int | None = None  # the baseline: rows it trained on
    last_loss: float | None = None
    train_seconds: float | None = None  # the training steps only (not data loading, eval, latency)
    step_time_ms: float | None = None
    samples_per_s: float | None = None
    data_wait_fraction: float | None = None
    latency_ms: dict[str, LatencyEntry] = field(default_factory=dict)
    latency_setup: dict[str, Any] = field(default_factory=dict)
    plan: Any = None  # the placement it trained with (engine.plan_summary())
    engine: dict[str, Any] = field(default_factory=dict)  # recsearch.train.engine_report.EngineReport
    world_size: int | None = None
    device: str | None = None
    dense_parameters: int | None = None
    peak_memory_mb_per_rank: list[float] | None = None
    embedding_bytes_per_rank: list[int] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per log window
    bayes: dict[str, Any] = field(default_factory=dict)  # synthetic data: the planted model's metrics
    upload_error: str | None = None  # the copy to upload_to failed (the local file is complete)
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know

    @property
    def ok(self) -> bool:
        """The run trained and was evaluated (completed or stopped early at its AUC threshold)."""
        return self.status in OK_STATUSES

    def auc(self, split: str = "val") -> float | None:
        """The split's AUC, or None: not evaluated, or not a finite number."""
        metrics = self.metrics.get(split)
        return finite(metrics.auc) if metrics is not None else None

    def latency(self, batch: int) -> LatencyEntry | None:
        return self.latency_ms.get(str(batch))

    def to_dict(self) -> dict[str, Any]:
        raw: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "extra":
                continue
            if f.name == "metrics":
                value = {split: dataclasses.asdict(m) for split, m in value.items()}
            elif f.name == "latency_ms":
                value = {batch: dataclasses.asdict(e) for batch, e in value.items()}
            if value is None and f.name in _OMITTED_WHEN_NONE:
                continue
            raw[f.name] = value
        return {**raw, **self.extra}

    @classmethod
    def from_dict(cls, raw: Any, origin: str = "result") -> TrainResult:
        if not isinstance(raw, dict):
            raise ResultError(f"{origin}: not a JSON object")
        status = raw.get("status")
        if status not in STATUSES:
            raise ResultError(f"{origin}: status must be one of {', '.join(STATUSES)}, got {status!r}")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values: dict[str, Any] = {"extra": {k: v for k, v in raw.items() if k not in known}}
        for f in dataclasses.fields(cls):
            if f.name == "extra" or f.name not in raw:
                continue
            value = raw[f.name]
            where = f"{origin}: {f.name}"
            if f.name == "metrics":
                value = {split: _build(SplitMetrics, m, f"{where}.{split}") for split, m in _mapping(value, where).items()}
            elif f.name == "latency_ms":
                value = {str(b): _build(LatencyEntry, e, f"{where}.{b}") for b, e in _mapping(value, where).items()}
            else:
                _check_type(value, f.type, where)
            values[f.name] = value
        return cls(**values)

    @classmethod
    def read(cls, path: Path | str) -> TrainResult:
        """The result file at `path`; ResultError (saying why) if it cannot be read as one."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ResultError(f"{path}: unreadable result: {err}") from err
        return cls.from_dict(raw, str(path))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str, allow_nan=True) + "\n"


_OMITTED_WHEN_NONE = frozenset({"error", "traceback", "model", "train_rows", "upload_error"})


def finite(value: Any) -> float | None:
    """value as a float when it is a finite number, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _mapping(value: Any, where: str) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise ResultError(f"{where}: must be an object, got {type(value).__name__}")
    return value


def _build(cls: type, raw: Any, where: str) -> Any:
    """One nested dataclass from its JSON object: unknown keys ignored, known ones type-checked."""
    raw = _mapping(raw, where)
    names = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        if key in names:
            _check_type(value, names[key].type, f"{where}.{key}")
            values[key] = value
    missing = [f.name for f in names.values() if f.default is dataclasses.MISSING and f.name not in values]
    if missing:
        raise ResultError(f"{where}: missing {', '.join(missing)}")
    return cls(**values)


_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
    "dict": (dict,), "list": (list,),
}


def _check_type(value: Any, annotation: Any, where: str) -> None:
    """Check a JSON value against a field's annotation (a string under `from __future__ import
    annotations`: 'float | None', 'dict[str, Any]', 'list[int] | None', 'Any')."""
    text = str(annotation)
    if text == "Any":
        return
    options = [part.strip() for part in text.split("|")]
    if value is None:
        if "None" in options:
            return
        raise ResultError(f"{where}: must not be null")
    for option in options:
        base = option.split("[", 1)[0]
        allowed = _TYPES.get(base)
        if allowed is None:
            continue
        if isinstance(value, bool) and base in ("int", "float"):
            continue  # JSON true is not a number
        if isinstance(value, allowed):
            return
    raise ResultError(f"{where}: must be {' or '.join(options)}, got {type(value).__name__} {value!r}"[:300])
