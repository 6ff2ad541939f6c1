"""The whole path on real Criteo rows (../shared/data, 100 Kaggle rows): preprocess the TSV, train
with periodic checkpoints, evaluate on val/test, and resume from the last checkpoint. Too few rows to learn anything: this checks the plumbing on real
values (empty fields, hex ids, negative dense values), not the AUC."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from recsearch import cli
from recsearch.data import layout
from recsearch.train import trainer
from tests.conftest import KAGGLE_SAMPLE

ROWS = 100
DAYS = 4  # 25 rows a day: train = days 0-2 (75 rows), val/test = halves of day 3


@pytest.fixture(scope="module")
def real_data(tmp_path_factory) -> Path:
    if not KAGGLE_SAMPLE.exists():
        pytest.skip(f"{KAGGLE_SAMPLE} is not there (../shared/data beside the checkout)")
    out = tmp_path_factory.mktemp("real") / "data"
    code = cli.main(["data", "preprocess", "--input", str(KAGGLE_SAMPLE), "--out", str(out),
                     "--days", str(DAYS), "--vocab-threshold", "1", "--workers", "1", "--no-progress"])
    assert code == 0
    return out


def _config(tmp_path: Path, data: Path, out: Path, **extra) -> Path:
    raw = {
        "data_dir": str(data),
        "output_dir": str(out),
        "arch": {"embedding_dim": 4, "bottom_mlp": [8, 4], "top_mlp": [8, 1]},
        "hparams": {"batch_size": 8, "embedding_lr": 0.05, "dense_lr": 0.01},
        "epochs": 2,
        "log_every_steps": 3,
        "eval_every_steps": 6,
        "checkpoint_every_steps": 6,
        "latency_batch_sizes": [1],
        "latency_iters": 2,
        **extra,
    }
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
def test_preprocess_train_evaluate_checkpoint_and_resume_on_real_rows(tmp_path, real_data):
    meta = layout.read_meta(real_data)
    assert sum(meta.day_rows) == ROWS and len(meta.day_rows) == DAYS
    labels = np.concatenate([np.load(layout.day_file(real_data, d, "labels")).ravel() for d in range(DAYS)])
    assert labels.sum() == 29  # the sample's clicks: cut -f1 FILE | sort | uniq -c

    out = tmp_path / "run"
    assert trainer.main(["--config", str(_config(tmp_path, real_data, out))]) == 0
    result = json.loads((out / trainer.RESULT_FILE).read_text())
    train_rows = sum(meta.day_rows[:-1])
    steps_per_epoch = -(-train_rows // 8)  # the last batch is short, and kept
    assert result["status"] == "completed" and result["steps"] == 2 * steps_per_epoch
    assert result["metrics"]["val"]["rows"] + result["metrics"]["test"]["rows"] == meta.day_rows[-1]
    for split in ("val", "test"):
        m = result["metrics"][split]
        assert 0.0 <= m["accuracy"] <= 1.0 and np.isfinite(m["log_loss"]) and m["log_loss"] > 0
    assert np.isfinite(result["last_loss"]) and result["latency_ms"]["1"]["p50_ms"] > 0
    saved = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert saved[-1] == f"step_{2 * steps_per_epoch:08d}"

    # Resume from the last checkpoint for a third epoch: the count goes on from where it stopped.
    more = _config(tmp_path, real_data, out, epochs=3, resume_from="latest")
    assert trainer.main(["--config", str(more)]) == 0
    resumed = json.loads((out / trainer.RESULT_FILE).read_text())
    assert resumed["status"] == "completed" and resumed["steps"] == 3 * steps_per_epoch
    assert resumed["epochs_completed"] == 3
