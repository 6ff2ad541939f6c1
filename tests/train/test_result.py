"""result.json as typed values: what the trainer writes is what the search, the report and the
bench tools read; unknown keys survive, wrong types are errors naming the file and the key."""

from __future__ import annotations

import json
import math

import pytest

from recsearch.train.result import LatencyEntry, ResultError, SplitMetrics, TrainResult


def _result(**overrides) -> TrainResult:
    values = dict(
        status="completed", steps=12, train_seconds=1.5, step_time_ms=125.0, samples_per_s=math.nan,
        metrics={"val": SplitMetrics(auc=0.71, log_loss=0.52, accuracy=0.75, rows=512)},
        latency_ms={"256": LatencyEntry(p50_ms=1.2, p99_ms=1.9, spread=0.01, calls=60, vs_reference=0.9,
                                        reference_p50_ms=1.3, reference_spread=0.02, vs_reference_spread=0.005)},
        history=[{"step": 12, "loss": 0.5}], config={"train_rows": 1000},
    )
    values.update(overrides)
    return TrainResult(**values)


def test_a_result_round_trips_through_its_file(tmp_path):
    path = tmp_path / "result.json"
    result = _result()
    path.write_text(result.to_json())
    back = TrainResult.read(path)
    assert back.metrics == result.metrics and back.latency(256) == result.latency(256)
    assert back.auc("val") == 0.71 and back.auc("test") is None and back.ok
    assert math.isnan(back.samples_per_s)  # NaN stays NaN (the trainer writes it for an empty run)
    raw = json.loads(path.read_text())
    assert "error" not in raw and raw["latency_ms"]["256"]["vs_reference"] == 0.9


def test_keys_it_does_not_know_are_kept_and_written_back(tmp_path):
    raw = _result().to_dict() | {"written_by_a_newer_version": {"x": 1}}
    back = TrainResult.from_dict(raw)
    assert back.extra == {"written_by_a_newer_version": {"x": 1}} and back.to_dict() == raw


@pytest.mark.parametrize(("change", "message"), [
    ({"status": "finished"}, "status must be one of completed, early_stopped, diverged, failed, got 'finished'"),
    ({"steps": "12"}, "steps: must be int or None, got str '12'"),
    ({"steps": True}, "steps: must be int or None, got bool True"),
    ({"metrics": {"val": {"log_loss": 0.7}}}, "metrics.val: missing auc"),
    ({"latency_ms": {"256": {"p99_ms": 1.0}}}, "latency_ms.256: missing p50_ms"),
    ({"metrics": {"val": {"auc": "high", "log_loss": 0.5, "accuracy": 0.7}}}, "metrics.val.auc: must be float, got str"),
    ({"latency_ms": [1, 2]}, "latency_ms: must be an object, got list"),
    ({"history": {"step": 1}}, "history: must be list[dict[str, Any]], got dict"),
])
def test_a_key_of_the_wrong_type_is_an_error_naming_the_file_and_the_key(tmp_path, change, message):
    path = tmp_path / "result.json"
    path.write_text(json.dumps(_result().to_dict() | change))
    with pytest.raises(ResultError) as err:
        TrainResult.read(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_an_unreadable_file_is_a_result_error(tmp_path):
    with pytest.raises(ResultError, match="unreadable result"):
        TrainResult.read(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ResultError, match="bad.json: unreadable result"):
        TrainResult.read(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ResultError, match="list.json: not a JSON object"):
        TrainResult.read(tmp_path / "list.json")
