"""Resuming a run gives the same result as never stopping; bad checkpoints are clear errors; FBGEMM's
iteration counter and the data order are saved and checked; an evaluation runs before the
checkpoint of its step."""

import dataclasses
import json
import shutil

import pytest
import torch

from recsearch.data import layout
from recsearch.train import checkpoint, trainer
from tests.train.conftest import DAY_ROWS
from tests.train.engines import engine_and_loader, small_config, train_steps
from tests.train.test_trainer import TRAIN_ROWS, BATCH, _write_config

CPU = torch.device("cpu")

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
    # the refused resume trained nothing: the result of the run that finished there stays
    assert f"{out / 'result.json'} is left as it was" in err and _result_of(out)["status"] == "completed"
    (out / "result.json").unlink()  # as if that run had been killed after its checkpoint
    code, _ = _run(tmp_path, learnable_data, out, "max_steps=6", "resume_from=latest")
    assert code == 2 and _result_of(out)["status"] == "failed" and "refused" in _result_of(out)["error"]
    (latest / checkpoint.METADATA_FILE).unlink()
    with pytest.raises(checkpoint.CheckpointError, match="not a complete checkpoint"):
        checkpoint.resolve("latest", out)
    shutil.rmtree(latest)
    with pytest.raises(checkpoint.CheckpointError, match="latest names step_00000004, which is not there"):
        checkpoint.resolve("latest", out)
    with pytest.raises(checkpoint.CheckpointError, match=r"resume_from=.*nowhere: no such checkpoint directory"):
        checkpoint.resolve(str(tmp_path / "nowhere"), out)


def _result_of(out):
    return json.loads((out / trainer.RESULT_FILE).read_text())


# ---- FBGEMM's iteration counter (Adam's bias correction) -------------------------------------------
def test_the_embedding_kernels_iteration_counter_is_found_set_and_continued(tmp_path, learnable_data):
    """FBGEMM keeps an Adam-family table's step count in each TBE's `iter` buffer, which no
    state_dict holds. set_embedding_iteration finds the TBEs (also the ones torchrec's fused
    collection keeps out of modules(), and DMP's shards) and sets them; FBGEMM's next forward
    continues from there. (CPU kernels refuse Adam: row-wise Adagrad advances the same counter.)"""
    rowwise = "hparams.embedding_optimizer=rowwise_adagrad"
    engine, _ = engine_and_loader(small_config(learnable_data, tmp_path / "s", "engine=single", rowwise), CPU)
    kernels = checkpoint.embedding_kernels(engine.model)
    assert kernels and {id(k) for k in kernels} == {id(t) for t in engine._tbes}
    assert checkpoint.embedding_iteration(engine.model) == 0
    assert checkpoint.set_embedding_iteration(engine.model, 7) == len(kernels)
    assert [int(k.iter.item()) for k in kernels] == [7] * len(kernels)
    assert checkpoint.embedding_iteration(engine.model) == 7
    train_steps(engine, 2)
    assert [(int(k.iter.item()), int(k.iter_cpu.item())) for k in kernels] == [(9, 9)] * len(kernels)

    pipeline, _ = engine_and_loader(small_config(learnable_data, tmp_path / "p", "engine=pipeline", rowwise), CPU)
    sharded = checkpoint.embedding_kernels(pipeline.model)
    assert sharded and checkpoint.set_embedding_iteration(pipeline.model, 11) == len(sharded)
    assert checkpoint.embedding_iteration(pipeline.model) == 11


def test_a_checkpoint_saves_the_iteration_counter_and_a_resume_restores_it(tmp_path, learnable_data):
    """4 steps and one evaluation of 2 batches at step 2: the counter is 6 (FBGEMM counts every
    forward, evaluations too), saved beside the loop state and set back by load()."""
    out = tmp_path / "run"
    code, _ = _run(tmp_path, learnable_data, out, "max_steps=4", "checkpoint_every_steps=4", "eval_every_steps=2",
                   "eval_rows=512")
    assert code == 0
    path = checkpoint.resolve("latest", out)
    saved = json.loads((path / checkpoint.LOOP_STATE_FILE).read_text())
    assert saved["step"] == 4 and saved[checkpoint.SAVED_BY_CHECKPOINT]["embedding_iteration"] == 6
    cfg = small_config(learnable_data, tmp_path / "fresh", "engine=single", "hparams.embedding_optimizer=rowwise_adagrad",
                       "hparams.dense_optimizer=adagrad", "hparams.dense_lr=0.05", "arch.embedding_dim=8")
    fresh, _ = engine_and_loader(cfg, CPU)
    loop_state = checkpoint.load(path, fresh.model, fresh.optimizer)
    assert checkpoint.SAVED_BY_CHECKPOINT not in loop_state and loop_state["step"] == 4
    assert checkpoint.embedding_iteration(fresh.model) == 6


def test_a_save_whose_returned_metadata_lists_no_files_reads_them_back(tmp_path, learnable_data, monkeypatch):
    """torch 2.11's dcp.save returns metadata without storage_data (FileSystemWriter.finish
    records the files on a copy): the manifest must still list and hash every data file, read
    back from the `.metadata` written."""
    real_save = checkpoint.dcp.save
    monkeypatch.setattr(checkpoint.dcp, "save",
                        lambda *a, **k: dataclasses.replace(real_save(*a, **k), storage_data=None))
    out = tmp_path / "run"
    code, _ = _run(tmp_path, learnable_data, out, "max_steps=4", "checkpoint_every_steps=4")
    assert code == 0
    path = checkpoint.resolve("latest", out)
    metadata, _ = checkpoint.verify(path)
    shards = checkpoint._shard_names(metadata)
    manifest = json.loads((path / checkpoint.MANIFEST_FILE).read_text())
    assert shards and set(manifest["files"]) == {*shards, checkpoint.METADATA_FILE, checkpoint.LOOP_STATE_FILE}
    # a failed read back is tested at the unit level: tests/reliability/test_checkpoints.py


# ---- the data order a position counts in -----------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("hparams.batch_size=128", "hparams.batch_size=256 there, 128 here"),
        ("hparams.seed=6", "hparams.seed=5 there, 6 here"),
        ("train_rows=8000", f"train_rows={TRAIN_ROWS} there, 8000 here"),
    ],
)
def test_a_resume_with_another_data_order_is_refused_naming_the_key(tmp_path, learnable_data, capsys, change, message):
    out = tmp_path / "run"
    code, _ = _run(tmp_path, learnable_data, out, "max_steps=4", "checkpoint_every_steps=4")
    assert code == 0
    code, result = _run(tmp_path, learnable_data, out, "max_steps=8", "resume_from=latest", change)
    assert code == 2
    err = capsys.readouterr().err
    path = checkpoint.resolve("latest", out)
    assert f"checkpoint {path} was saved with another data order ({message})" in err
    assert "position (epoch 0, batch 4)" in err
    assert result["status"] == "completed" and "is left as it was" in err  # the finished run's result stays


def test_a_checkpoint_without_the_saved_extras_still_resumes(tmp_path, learnable_data):
    """Checkpoints written before the data order and the iteration counter were saved load as
    before (not checked; the counter is set from the step)."""
    out = tmp_path / "run"
    _checkpoint_as_an_older_save_wrote_it(tmp_path, learnable_data, out, lambda old: old.pop(checkpoint.SAVED_BY_CHECKPOINT))
    code, resumed = _run(tmp_path, learnable_data, out, "max_steps=8", "resume_from=latest", "hparams.batch_size=128")
    assert code == 0 and resumed["steps"] == 8  # nothing recorded to compare the batch size with


def _checkpoint_as_an_older_save_wrote_it(tmp_path, data, out, edit) -> None:
    """Train 4 steps to a checkpoint in `out`, then rewrite its loop state with `edit` (what an
    older version did not save) and the manifest's digest of it, as that version wrote them."""
    code, _ = _run(tmp_path, data, out, "max_steps=4", "checkpoint_every_steps=4")
    assert code == 0
    path = checkpoint.resolve("latest", out)
    state_file = path / checkpoint.LOOP_STATE_FILE
    old = json.loads(state_file.read_text())
    edit(old)
    state_file.write_text(json.dumps(old) + "\n")
    manifest = json.loads((path / checkpoint.MANIFEST_FILE).read_text())
    manifest["files"][checkpoint.LOOP_STATE_FILE] = checkpoint._digest(state_file)
    (path / checkpoint.MANIFEST_FILE).write_text(json.dumps(manifest))


def _copy_with_meta(data, to, **changes):
    """The dataset's files under `to`, its meta.json with `changes` (the same rows, other facts)."""
    shutil.copytree(data, to)
    meta = layout.read_meta(to)
    layout.write_meta(to, dataclasses.replace(meta, **changes))
    return to


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dense_transform": "torchrec"}, "data.dense_transform='log1p' there, 'torchrec' here"),
        ({"num_embeddings_per_feature": (21,) * 26}, "data.num_embeddings_per_feature=[20, 20,"),
        ({"extra": {"categorical": "hash"}}, "data.categorical=None there, 'hash' here"),
    ],
)
def test_a_resume_on_other_data_is_refused_naming_what_changed(tmp_path, learnable_data, capsys, changes, message):
    out = tmp_path / "run"
    code, _ = _run(tmp_path, learnable_data, out, "max_steps=4", "checkpoint_every_steps=4")
    assert code == 0
    saved = json.loads((checkpoint.resolve("latest", out) / checkpoint.LOOP_STATE_FILE).read_text())
    assert saved[checkpoint.SAVED_BY_CHECKPOINT]["data_order"]["data.day_rows"] == list(DAY_ROWS)
    other = _copy_with_meta(learnable_data, tmp_path / "other", **changes)
    code, result = _run(tmp_path, other, out, "max_steps=8", "resume_from=latest")
    assert code == 2
    err = capsys.readouterr().err
    assert "was saved with another data order (" in err and message in err and result["status"] == "completed"
    # the same data in another directory (or preprocessed again: timings differ) resumes
    same = _copy_with_meta(learnable_data, tmp_path / "same", extra={"preprocess_s": 1.5})
    code, resumed = _run(tmp_path, same, out, "max_steps=8", "resume_from=latest")
    assert code == 0 and resumed["steps"] == 8


def test_a_checkpoint_from_before_the_data_was_recorded_still_resumes_on_other_data(tmp_path, learnable_data):
    out = tmp_path / "run"

    def drop_the_data_facts(old: dict) -> None:
        saved = old[checkpoint.SAVED_BY_CHECKPOINT]
        saved["data_order"] = {k: v for k, v in saved["data_order"].items() if not k.startswith("data.")}

    _checkpoint_as_an_older_save_wrote_it(tmp_path, learnable_data, out, drop_the_data_facts)
    other = _copy_with_meta(learnable_data, tmp_path / "other", dense_transform="torchrec")
    code, resumed = _run(tmp_path, other, out, "max_steps=8", "resume_from=latest")
    assert code == 0 and resumed["steps"] == 8


# ---- the evaluation of a step runs before its checkpoint -------------------------------------------
def test_the_evaluation_runs_before_the_checkpoint_of_its_step_and_a_resume_keeps_its_early_stop(
    tmp_path, learnable_data, monkeypatch
):
    """Killed after the checkpoint of step N, a run resumes with step N's evaluation done: an early
    stop it decided holds (the run goes straight to its final evaluation), as without the kill."""
    calls: list[tuple[str, int]] = []
    real_evaluate, real_save = trainer.evaluate, checkpoint.save
    monkeypatch.setattr(trainer, "evaluate", lambda model, loader, device, **kw: calls.append(("eval", loader.split)) or real_evaluate(model, loader, device, **kw))
    monkeypatch.setattr(checkpoint, "save", lambda out, step, *a, **k: calls.append(("save", step)) or real_save(out, step, *a, **k))
    out = tmp_path / "run"
    settings = ["eval_every_steps=10", "checkpoint_every_steps=10", "auc_threshold=0.6"]
    code, stopped = _run(tmp_path, learnable_data, out, *settings)
    assert code == 0 and stopped["status"] == "early_stopped"
    stop = stopped["steps"]
    assert stop % 10 == 0 and stop < 2 * TRAIN_ROWS // BATCH
    periodic = [c for c in calls if c != ("eval", "test")][: 2 * stop // 10]
    assert periodic == [c for n in range(10, stop + 1, 10) for c in (("eval", "val"), ("save", n))]
    saved = json.loads((checkpoint.resolve("latest", out) / checkpoint.LOOP_STATE_FILE).read_text())
    assert saved["step"] == stop and saved["status"] == "early_stopped" and saved["val_auc"] >= 0.6

    code, resumed = _run(tmp_path, learnable_data, out, *settings, "resume_from=latest")
    assert code == 0 and resumed["status"] == "early_stopped" and resumed["steps"] == stop
    assert resumed["train_seconds"] == stopped["train_seconds"]  # no step trained after the resume
    assert resumed["metrics"] == stopped["metrics"]
    # without the threshold the run continues training from there
    code, continued = _run(tmp_path, learnable_data, out, "eval_every_steps=10", "checkpoint_every_steps=10",
                           "resume_from=latest", f"max_steps={stop + 2}")
    assert code == 0 and continued["status"] == "completed" and continued["steps"] == stop + 2
