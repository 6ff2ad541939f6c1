"""End-to-end runs of the trainer: one process through the CLI, two ranks on gloo, divergence,
early stopping, bad configs and crashes. Every run leaves result.json, the file a search reads."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from recsearch import config
from recsearch.train import trainer
from tests.train.conftest import DAY_ROWS
from tests.spawn import spawn_ranks

REPO = Path(__file__).resolve().parents[2]
BATCH = 256
TRAIN_ROWS = sum(DAY_ROWS[:-1])
VAL_ROWS = DAY_ROWS[-1] // 2


def _write_config(tmp_path: Path, data: Path, **settings) -> Path:
    raw = {
        "data_dir": str(data),
        "output_dir": str(tmp_path / "out"),
        "arch": {"embedding_dim": 8, "bottom_mlp": [16, 8], "top_mlp": [16, 1]},
        "hparams": {
            "batch_size": BATCH,
            "embedding_optimizer": "rowwise_adagrad",
            "embedding_lr": 0.1,
            "dense_optimizer": "adagrad",
            "dense_lr": 0.05,
        },
        "epochs": 1,
        "log_every_steps": 12,
        "latency_iters": 3,
        "latency_batch_sizes": [1, 64],
        "tensorboard": False,
    }
    raw.update(settings)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _result(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "out" / trainer.RESULT_FILE).read_text())


@pytest.mark.slow
def test_cli_run_learns_and_reports_everything(tmp_path, learnable_data):
    cfg = _write_config(tmp_path, learnable_data, epochs=2, eval_every_steps=20, tensorboard=True)
    started_s = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "recsearch.cli", "train", "--config", str(cfg), "hparams.seed=3"],
        capture_output=True, text=True, timeout=600, cwd=REPO, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    process_s = time.monotonic() - started_s
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "completed: val AUC" in proc.stdout
    result = _result(tmp_path)
    steps_per_epoch = TRAIN_ROWS // BATCH
    assert result["status"] == "completed"
    assert result["steps"] == 2 * steps_per_epoch and result["epochs_completed"] == 2
    assert result["samples"] == 2 * TRAIN_ROWS
    assert result["config"]["hparams"]["seed"] == 3 and result["config"]["epochs"] == 2

    # Learning is visible: the loss falls, and AUC is far above chance yet below the ceiling.
    losses = [h["loss"] for h in result["history"]]
    assert [h["step"] for h in result["history"]][-1] == 2 * steps_per_epoch
    assert losses[-1] < losses[0] - 0.1
    val, test, bayes = result["metrics"]["val"], result["metrics"]["test"], result["bayes"]
    assert val["rows"] == VAL_ROWS and test["rows"] == VAL_ROWS
    assert 0.75 < val["auc"] <= bayes["val"]["auc"] + 0.02  # chance: 0.5 +- 0.02 on 2048 rows
    assert 0.75 < test["auc"] <= bayes["test"]["auc"] + 0.02
    assert bayes["val"]["log_loss"] - 0.02 < val["log_loss"] < 0.6
    assert 0.5 < val["accuracy"] < 1
    assert 0 < val["ne"] < 0.95  # learned: below the constant click-rate predictor's 1

    # Speed, memory and placement facts.
    assert result["step_time_ms"] > 0 and result["samples_per_s"] > 0
    # the training time is part of the process's wall time (which adds start-up, evaluation and
    # latency), so the throughput is at least the samples over the whole process's time
    assert 0 < result["train_seconds"] < process_s
    assert result["samples_per_s"] > result["samples"] / process_s
    assert 0 <= result["data_wait_fraction"] < 1
    assert len(result["peak_memory_mb_per_rank"]) == 1 and result["peak_memory_mb_per_rank"][0] > 50
    assert sorted(result["plan"]) == sorted(f"t_cat_{i}" for i in range(26))
    assert {p["compute_kernel"] for p in result["plan"].values()} == {"fused"}
    assert all(p["ranks"] == [0] for p in result["plan"].values())
    assert set(result["latency_ms"]) == {"1", "64"}

    # TensorBoard: training scalars, periodic and final evaluations, and the hparams run.
    events = EventAccumulator(str(tmp_path / "out" / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr_embedding", "train/lr_dense", "train/samples_per_s"} <= tags
    assert {"val/auc", "val/log_loss", "test/auc"} <= tags
    assert [e.step for e in events.Scalars("val/auc")] == [20, 40, 60, 80, 96]
    assert list((tmp_path / "out" / "tb" / "hparams").glob("events.out.tfevents.*"))


def test_early_stop_at_the_auc_threshold(tmp_path, learnable_data):
    cfg = _write_config(tmp_path, learnable_data, epochs=2, eval_every_steps=10, auc_threshold=0.6)
    assert trainer.main(["--config", str(cfg), "latency_batch_sizes=[]"]) == 0
    result = _result(tmp_path)
    assert result["status"] == "early_stopped"
    assert result["steps"] % 10 == 0 and result["steps"] < 2 * TRAIN_ROWS // BATCH
    assert result["metrics"]["val"]["auc"] >= 0.6  # the final evaluation sees the same model
    assert result["latency_ms"] == {}


def test_eval_splits_choose_what_the_final_evaluation_reads(tmp_path, learnable_data, monkeypatch):
    evaluated = []
    real = trainer.evaluate
    monkeypatch.setattr(trainer, "evaluate", lambda model, loader, device, **kw: evaluated.append(loader.split) or real(model, loader, device, **kw))
    cfg = _write_config(tmp_path, learnable_data, max_steps=4)
    assert trainer.main(["--config", str(cfg), "eval_splits=[val]", "latency_batch_sizes=[]"]) == 0
    result = _result(tmp_path)
    assert evaluated == ["val"] and list(result["metrics"]) == ["val"] and result["latency_ms"] == {}
    assert trainer.main(["--config", str(cfg), "eval_splits=[test, val]", "latency_batch_sizes=[64]", "overwrite_output=true"]) == 0
    assert evaluated[1:] == ["test", "val"] and list(_result(tmp_path)["latency_ms"]) == ["64"]


@pytest.mark.parametrize(
    ("log_every_steps", "epochs", "stopped_at_step"),
    [(4, 1, 4), (1000, 2, TRAIN_ROWS // BATCH)],  # the check at the end of the epoch catches it
)
def test_a_non_finite_loss_is_recorded_as_diverged(
    tmp_path, learnable_data, log_every_steps, epochs, stopped_at_step
):
    cfg = _write_config(tmp_path, learnable_data, log_every_steps=log_every_steps, epochs=epochs)
    huge_lrs = [
        "hparams.embedding_optimizer=sgd", "hparams.embedding_lr=1e30",
        "hparams.dense_optimizer=sgd", "hparams.dense_lr=1e30",
    ]
    assert trainer.main(["--config", str(cfg), *huge_lrs]) == 1
    result = _result(tmp_path)
    assert result["status"] == "diverged"
    assert result["steps"] == stopped_at_step and result["history"] == []  # the first check
    assert result["metrics"] == {} and result["latency_ms"] == {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_one_rank(rank: int, cfg_path: str, port: int, results) -> None:
    # The environment torchrun gives each rank: the trainer joins the group from it.
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
    )
    result = trainer.train(config.load(trainer.TrainConfig, cfg_path)).to_dict()
    results[rank] = {k: result[k] for k in ("status", "steps", "metrics", "plan", "world_size")}
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.multiproc
def test_two_ranks_with_a_table_wise_placement_agree(tmp_path, learnable_data):
    placement = {f"t_cat_{i}": i % 2 for i in range(26)}  # even tables on rank 0, odd on rank 1
    (tmp_path / "placement.json").write_text(json.dumps({"placement": placement}))
    # Evaluations every 10 steps detach the pipeline mid-epoch on both ranks.
    cfg = _write_config(
        tmp_path, learnable_data, plan=str(tmp_path / "placement.json"), eval_every_steps=10
    )
    results = mp.Manager().dict()
    spawn_ranks(_train_one_rank, (str(cfg), _free_port(), results))

    rank0, rank1 = results[0], results[1]
    assert rank0 == rank1  # same status, steps, plan and exactly the same metrics
    assert rank0["status"] == "completed" and rank0["world_size"] == 2
    assert rank0["steps"] == TRAIN_ROWS // (2 * BATCH)
    for table, rank in placement.items():
        assert rank0["plan"][table]["sharding_type"] == "table_wise"
        assert rank0["plan"][table]["ranks"] == [rank]
    assert rank0["metrics"]["val"]["rows"] == VAL_ROWS  # 2048: whole rounds of 2 x 256
    assert rank0["metrics"]["val"]["auc"] > 0.7
    written = _result(tmp_path)  # rank 0 writes the file
    assert written["metrics"] == rank0["metrics"] and len(written["peak_memory_mb_per_rank"]) == 2


def test_config_errors_name_the_key(tmp_path, learnable_data, capsys):
    cfg = _write_config(tmp_path, learnable_data)
    with pytest.raises(config.ConfigError) as err:
        config.load(trainer.TrainConfig, cfg, ["hparams.batchsize=4", "epochs=two"])
    # given on the command line: the problem names the override as typed, not the file
    assert any(p.startswith("command line: hparams.batchsize=4: unknown key") for p in err.value.problems)
    assert "command line: epochs=two: expected an integer, got 'two'" in err.value.problems
    assert trainer.main(["--config", str(cfg), "hparams.batchsize=4"]) == 2
    assert "command line: hparams.batchsize=4: unknown key (did you mean 'batch_size'?)" in capsys.readouterr().err
    (tmp_path / "no_data.yaml").write_text("epochs: 1\n")
    assert trainer.main(["--config", str(tmp_path / "no_data.yaml")]) == 2
    assert "data_dir: required key is missing" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing ran


@pytest.mark.parametrize(
    ("placement", "message"),
    [({"t_cat_0": 0}, "no rank for 25 of the model's tables"), ({f"t_cat_{i}": 1 for i in range(26)}, "outside 0..0")],
)
def test_a_bad_placement_fails_with_a_result_file(tmp_path, learnable_data, capsys, placement, message):
    (tmp_path / "p.json").write_text(json.dumps(placement))
    cfg = _write_config(tmp_path, learnable_data, plan=str(tmp_path / "p.json"))
    assert trainer.main(["--config", str(cfg)]) == 2
    assert message in capsys.readouterr().err
    result = _result(tmp_path)
    assert result["status"] == "failed" and message in result["error"]
    assert result["metrics"] == {} and result["config"]["plan"] == str(tmp_path / "p.json")


class _NotAnException(BaseException):
    """Like torch.distributed.checkpoint's CheckpointException: a BaseException only."""


def test_a_crash_outside_exception_still_leaves_a_failed_result(tmp_path, learnable_data, monkeypatch):
    def crash(cfg, **_kwargs):
        raise _NotAnException("checkpoint write failed on rank 0")

    monkeypatch.setattr(trainer, "train", crash)
    with pytest.raises(_NotAnException):
        trainer.main(["--config", str(_write_config(tmp_path, learnable_data))])
    result = _result(tmp_path)
    assert result["status"] == "failed"
    assert result["error"] == "_NotAnException: checkpoint write failed on rank 0"
    assert "crash" in result["traceback"]


def test_config_and_placement_from_a_url_and_outputs_uploaded(tmp_path, learnable_data):
    """How a torchx trial without the search's filesystem runs: config and placement read from an
    fsspec URL, result.json and the TensorBoard logs uploaded to one when the run ends."""
    import uuid

    from recsearch import remote

    url = f"memory://recsearch-train-{uuid.uuid4().hex}"
    remote.write_text(f"{url}/placement.json", json.dumps({"placement": {f"t_cat_{i}": 0 for i in range(26)}}))
    local_cfg = _write_config(tmp_path, learnable_data, plan=f"{url}/placement.json", upload_to=f"{url}/out",
                              tensorboard=True, train_rows=2048)
    remote.write_text(f"{url}/train.yaml", local_cfg.read_text())
    assert trainer.main(["--config", f"{url}/train.yaml"]) == 0
    local = _result(tmp_path)
    assert local["status"] == "completed" and local["config"]["plan"] == f"{url}/placement.json"
    assert json.loads(remote.read_text(f"{url}/out/result.json")) == local
    uploaded = remote.download_tree(f"{url}/out/tb", tmp_path / "tb_copy")
    assert uploaded and all(p.startswith(("events.", "hparams/")) for p in uploaded), uploaded
    assert sorted(uploaded) == sorted(p.relative_to(tmp_path / "out" / "tb").as_posix()
                                      for p in (tmp_path / "out" / "tb").rglob("*") if p.is_file())


def test_a_failed_run_uploads_its_failure_too(tmp_path, learnable_data, capsys):
    import uuid

    from recsearch import remote

    url = f"memory://recsearch-train-{uuid.uuid4().hex}"
    cfg = _write_config(tmp_path, learnable_data, plan=f"{url}/missing.json", upload_to=url)
    assert trainer.main(["--config", str(cfg)]) == 2
    uploaded = json.loads(remote.read_text(f"{url}/result.json"))
    assert uploaded["status"] == "failed" and f"placement file {url}/missing.json not found" in uploaded["error"]


def test_epochs_and_max_steps_stop_at_whichever_ends_first(tmp_path, learnable_data, capsys):
    steps_per_epoch = TRAIN_ROWS // BATCH  # 48
    cfg = _write_config(tmp_path, learnable_data, latency_batch_sizes=[], eval_rows=256)
    assert trainer.main(["--config", str(cfg), "epochs=1", f"max_steps={steps_per_epoch + 20}"]) == 0
    result = _result(tmp_path)
    assert result["status"] == "completed" and result["steps"] == steps_per_epoch
    assert result["epochs_completed"] == 1 and result["samples"] == TRAIN_ROWS
    assert f"training 48 steps (epochs=1 of 48 steps end it before max_steps={steps_per_epoch + 20}) of" in capsys.readouterr().out
    assert trainer.main(["--config", str(cfg), "epochs=2", "max_steps=5", "overwrite_output=true"]) == 0
    assert _result(tmp_path)["steps"] == 5


def test_a_latency_batch_larger_than_the_test_split_is_skipped_with_the_reason(tmp_path, learnable_data):
    """The test split has 2048 rows: a batch of 4096 would time a short batch of 2048 and report it
    as 4096."""
    cfg = _write_config(tmp_path, learnable_data, max_steps=2, eval_rows=256, latency_batch_sizes=[64, 4096])
    assert trainer.main(["--config", str(cfg)]) == 0
    result = _result(tmp_path)
    assert list(result["latency_ms"]) == ["64"] and result["latency_setup"]["batch_sizes"] == [64]
    assert result["latency_setup"]["notes"] == [
        f"latency at batch 4096 skipped: the test split has {VAL_ROWS} rows, fewer than one batch of 4096"
    ]


def test_a_mistyped_optimizer_is_a_config_error_before_any_data_is_read(tmp_path, capsys):
    """Named with its key, its origin and the valid choices, before the data is opened (there is
    none here) or anything is written."""
    cfg = _write_config(tmp_path, tmp_path / "no_such_data")
    cfg.write_text(cfg.read_text().replace("embedding_optimizer: rowwise_adagrad", "embedding_optimizer: adamw"))
    assert trainer.main(["--config", str(cfg), "hparams.dense_optimizer=sdg"]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: hparams.embedding_optimizer must be one of sgd, adagrad, rowwise_adagrad, adam, got 'adamw'" in err
    assert "command line: hparams.dense_optimizer=sdg: must be one of sgd, adagrad, adam, lamb, got 'sdg'" in err
    assert not (tmp_path / "out").exists()


def test_a_mistyped_plan_fails_before_any_data_is_read(tmp_path, capsys):
    cfg = _write_config(tmp_path, tmp_path / "no_such_data", plan="size_greddy")
    assert trainer.main(["--config", str(cfg)]) == 2
    message = "plan: 'size_greddy' is no placer ("
    err = capsys.readouterr().err
    assert message in err and "size_greedy" in err and "learned" in err and "no placement file exists there" in err
    result = _result(tmp_path)  # not the missing data: the plan is checked first
    assert result["status"] == "failed" and message in result["error"] and "no_such_data" not in result["error"]


def test_tables_too_big_for_the_machine_fail_before_anything_is_allocated(tmp_path, capsys):
    """A dataset of raw 32-bit ids without a row cap: 26 tables of 4.3e9 rows (over 3 TiB at dim
    8) is refused before the model is built, naming the sizes and a cap that fits; with that cap
    the same data trains."""
    from tests.conftest import write_dataset

    data = tmp_path / "raw"
    write_dataset(data, num_embeddings=429_496_729)  # meta: 4,294,967,290 rows per table
    cfg = _write_config(tmp_path, data)
    assert trainer.main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "the 26 embedding tables need" in err and "4,294,967,290 rows" in err and "--hash-size" in err
    result = _result(tmp_path)
    assert result["status"] == "failed" and "embedding tables need" in result["error"]
    cap = int(err.split("max_rows_per_table=")[1].split()[0])
    assert 1_000_000 <= cap < 4_294_967_290
    capped = _write_config(tmp_path, data, max_rows_per_table=1000, max_steps=2, latency_batch_sizes=[])
    assert trainer.main(["--config", str(capped)]) == 0


def test_an_empty_evaluation_split_fails_before_training(tmp_path, learnable_data, capsys):
    """A last day of one row leaves the test split empty: found at setup, not after the run."""
    import dataclasses
    import shutil

    import numpy as np

    from recsearch.data import layout

    data = tmp_path / "data"
    shutil.copytree(learnable_data, data)
    last = len(DAY_ROWS) - 1
    for kind in ("dense", "sparse", "labels"):
        path = layout.day_file(data, last, kind)
        np.save(path, np.load(path)[:1])
    layout.write_meta(data, dataclasses.replace(layout.read_meta(data), day_rows=(*DAY_ROWS[:-1], 1), bayes={}))
    cfg = _write_config(tmp_path, data, max_steps=4, latency_batch_sizes=[])
    assert trainer.main(["--config", str(cfg)]) == 2
    captured = capsys.readouterr()
    assert f"{data}: split 'test' has no rows" in captured.err
    assert "step 4/4" not in captured.out and "training 4 steps" not in captured.out
    assert _result(tmp_path)["status"] == "failed"
