"""Resuming a run gives the same result as never stopping; bad checkpoints are clear errors."""

import json
import shutil

import pytest

from recsearch.train import checkpoint, trainer
from tests.train.test_trainer import TRAIN_ROWS, BATCH, _write_config

COMPARED = ("steps", "samples", "epochs_completed", "last_loss", "metrics")


def _run(tmp_path, data, out, *overrides):
    cfg = _write_config(tmp_path, data, epochs=2, latency_batch_sizes=[], output_dir=str(out))
    code = trainer.main(["--config", str(cfg), "hparams.seed=5", *overrides])
    return code, json.loads((out / trainer.RESULT_FILE).read_text())


@pytest.mark.slow
def test_stop_and_resume_equals_training_straight_through(tmp_path, learnable_data):
    steps_per_epoch = TRAIN_ROWS // BATCH
    total = 2 * steps_per_epoch
    stop_at = steps_per_epoch + 3  # mid-epoch, inside the second epoch's shuffled order
    code, straight = _run(tmp_path, learnable_data, tmp_path / "straight")
    assert code == 0 and straight["steps"] == total

    out = tmp_path / "resumed"
    code, first = _run(tmp_path, learnable_data, out, f"max_steps={stop_at}", f"checkpoint_every_steps={stop_at}")
    assert code == 0 and first["steps"] == stop_at
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step_{stop_at:08d}"
    code, resumed = _run(tmp_path, learnable_data, out, f"max_steps={total}", "resume_from=latest")
    assert code == 0
    for key in COMPARED:
        assert resumed[key] == straight[key], key
    # The logged losses match too from the first full logging window after the resume (the window
    # in progress at the stop restarts there; throughput differs: it is wall-clock time).
    first_full = stop_at + 2 * 12
    tail = [(h["step"], h["loss"]) for h in resumed["history"] if h["step"] >= first_full]
    assert tail and tail == [(h["step"], h["loss"]) for h in straight["history"] if h["step"] >= first_full]


def test_missing_and_corrupt_checkpoints_are_clear_errors(tmp_path, learnable_data, capsys):
    out = tmp_path / "run"
    code, _ = _run(tmp_path, learnable_data, out, "resume_from=latest")
    assert code == 2
    assert "resume_from=latest: no checkpoint in" in capsys.readouterr().err
    assert _result_of(out)["status"] == "failed"

    code, _ = _run(tmp_path, learnable_data, out, "max_steps=4", "checkpoint_every_steps=2")
    assert code == 0
    latest = checkpoint.resolve("latest", out)
    assert latest.name == "step_00000004" and len(list((out / "checkpoints").glob("step_*"))) == 2
    for shard in latest.glob("*.distcp"):
        shard.write_bytes(b"\0" * 16)  # corrupt the tensor data
    code, _ = _run(tmp_path, learnable_data, out, "max_steps=6", "resume_from=latest")
    assert code == 2
    err = capsys.readouterr().err
    assert f"checkpoint {latest} refused: {latest / '__0_0.distcp'}: 16 bytes, the manifest says" in err
    assert _result_of(out)["status"] == "failed"
    shutil.rmtree(latest)
    (out / "checkpoints" / "latest").write_text("step_00000004\n")
    with pytest.raises(checkpoint.CheckpointError, match="not a complete checkpoint"):
        checkpoint.resolve("latest", out)


def _result_of(out):
    return json.loads((out / trainer.RESULT_FILE).read_text())
