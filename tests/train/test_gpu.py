"""The single-device engine on CUDA: graph capture and replay, the copy-stream data path, and the
CUDA step against the CPU step. `pytest -m gpu` on a GPU machine (tools/gpu_check.sh runs it);
without CUDA every test here is skipped."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsearch.data.loader import NpyBatchLoader
from tests.train.engines import engine_and_loader, small_config, train_steps

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device("cuda")
SCHEDULE = ["hparams.warmup_steps=4", "hparams.decay_start_step=12", "hparams.decay_steps=8"]


def _losses(tmp_path, data, steps: int, *overrides: str) -> tuple[list[float], object]:
    losses, engine = _train(tmp_path, data, steps, *overrides)
    return losses, engine.report


def _train(tmp_path, data, steps: int, *overrides: str):  # type: ignore[no-untyped-def]
    engine, _ = engine_and_loader(small_config(data, tmp_path, "engine=single", "device=cuda", *overrides), CUDA)
    losses = []
    engine.start_stretch(0, 0)
    for step in range(steps):
        warm = min(1.0, (step + 1) / 4)  # a changing lr, as the schedule gives
        engine.set_lr_multiplier(warm)
        assert engine.step() == 256
        losses.append(engine.take_loss_sum())
    engine.end_stretch()
    return losses, engine


@pytest.mark.parametrize(
    "optimizers",
    [["hparams.embedding_optimizer=sgd", "hparams.dense_optimizer=sgd", *SCHEDULE],
     ["hparams.embedding_optimizer=rowwise_adagrad", "hparams.dense_optimizer=adam", "hparams.dense_lr=0.01"]],
)
def test_graph_replay_trains_like_the_eager_step(tmp_path, learnable_data, optimizers):
    graphed, g_engine = _train(tmp_path / "g", learnable_data, 16, "cuda_graph=true", *optimizers)
    eager, e_engine = _train(tmp_path / "e", learnable_data, 16, "cuda_graph=false", *optimizers)
    report, eager_report = g_engine.report, e_engine.report
    assert report.cuda_graph and report.graphed_steps >= 8, report
    assert not eager_report.cuda_graph and eager_report.graphed_steps == 0
    np.testing.assert_allclose(graphed, eager, rtol=1e-5)
    # the replays really trained: every table and layer ends where the eager steps took it
    fresh, _ = engine_and_loader(small_config(learnable_data, tmp_path / "f", "engine=single", "device=cuda"), CUDA)
    start = fresh.model.state_dict()
    g_state, e_state = g_engine.model.state_dict(), e_engine.model.state_dict()
    moved = 0
    for name, value in g_state.items():
        torch.testing.assert_close(value, e_state[name], rtol=1e-5, atol=1e-6)
        moved += not torch.equal(value, start[name])
    assert moved == len(g_state)


def test_pinned_host_batches_through_the_copy_stream_match_device_data(tmp_path, learnable_data):
    on_device, report = _losses(tmp_path / "d", learnable_data, 12, "data_on_device=true")
    from_host, host_report = _losses(tmp_path / "h", learnable_data, 12, "data_on_device=false")
    assert report.data_on_device and not host_report.data_on_device
    assert host_report.cuda_graph, host_report.cuda_graph_note
    np.testing.assert_allclose(from_host, on_device, rtol=1e-6)


def test_a_cuda_step_computes_what_the_cpu_step_computes(tmp_path, learnable_data):
    cfg_cpu = small_config(learnable_data, tmp_path / "c", "engine=single", "device=cpu", "cuda_graph=false")
    cfg_gpu = small_config(learnable_data, tmp_path / "g", "engine=single", "device=cuda", "cuda_graph=false")
    cpu_engine, _ = engine_and_loader(cfg_cpu, torch.device("cpu"))
    gpu_engine, _ = engine_and_loader(cfg_gpu, CUDA)
    # CPU and CUDA random generators differ: start the CUDA model from the CPU model's weights
    gpu_engine.model.load_state_dict(cpu_engine.model.state_dict())
    cpu = train_steps(cpu_engine, 6)
    gpu = train_steps(gpu_engine, 6)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-4)


def test_a_pinned_batch_round_trips(learnable_data):
    loader = NpyBatchLoader(learnable_data, "val", 128, pin_memory=True, num_embeddings_per_feature=[20] * 26)
    batch = next(iter(loader))
    assert batch.dense_features.is_pinned() and batch.sparse_features.values().is_pinned()
    moved = batch.to(CUDA, non_blocking=True)
    torch.cuda.synchronize()
    assert torch.equal(moved.dense_features.cpu(), batch.dense_features)
    assert torch.equal(moved.sparse_features.values().cpu(), batch.sparse_features.values())


def test_a_run_over_its_device_memory_share_fails_alone_and_the_next_run_is_uncapped(tmp_path, learnable_data):
    from recsearch.train import trainer

    # a share of about 140 kB of the device cannot hold the tables: the run fails with CUDA's
    # out-of-memory error (what the search records as the trial's failure), nothing else does
    capped = small_config(learnable_data, tmp_path / "capped", "device=cuda", "max_steps=2", "device_memory_fraction=0.000001")
    with pytest.raises(torch.cuda.OutOfMemoryError):
        trainer.train(capped)
    # the next run in the same process (a pool worker's next trial) sets its own cap: none
    result = trainer.train(small_config(learnable_data, tmp_path / "free", "device=cuda", "max_steps=2")).to_dict()
    assert result["status"] == "completed" and result["steps"] == 2
    # CUDA branches of the trainer: the device it set, and the peak device memory of the run
    assert result["device"] == "cuda:0" and len(result["peak_memory_mb_per_rank"]) == 1
    assert result["peak_memory_mb_per_rank"][0] > 0


def test_serving_latency_is_timed_as_cuda_graph_replays_that_compute_the_eager_forward(tmp_path, learnable_data):
    from recsearch.train import trainer
    from recsearch.train.latency import graphed

    engine, loader = engine_and_loader(small_config(learnable_data, tmp_path / "e", "engine=single", "device=cuda"), CUDA)
    model = engine.model.eval()
    batch = next(iter(loader)).to(CUDA)
    with torch.no_grad():
        eager = model(batch)[1][1].clone()
        outputs = []
        replay = graphed(lambda: outputs.append(model(batch)[1][1]), CUDA)
        outputs[-1].zero_()  # the captured output buffer: a replay must write it again
        replay()
        torch.cuda.synchronize()
    torch.testing.assert_close(outputs[-1], eager, rtol=1e-5, atol=1e-6)
    result = trainer.train(small_config(learnable_data, tmp_path / "run", "device=cuda", "max_steps=2",
                                        "latency_batch_sizes=[64]", "latency_iters=10")).to_dict()
    assert result["latency_ms"]["64"]["serving"] == "cuda_graph" and "CUDA graph" in result["latency_setup"]["serving"]
    assert result["latency_setup"]["notes"] == [] and result["latency_ms"]["64"]["p50_ms"] > 0


@pytest.mark.parametrize("engine", ["single", "pipeline"])
def test_a_resumed_run_with_adam_tables_trains_like_one_never_stopped(tmp_path, learnable_data, engine):
    """FBGEMM's Adam keeps its step count (bias correction) in the TBE's `iter` buffer, outside every
    state_dict: the checkpoint saves it and the resume sets it back. Restarted at 0, the first
    steps after the resume would take bias-corrected steps of ~10x the size (1 - 0.9 vs
    1 - 0.9^13) and the losses would part at once. An evaluation before the checkpoint advances
    the counter too (FBGEMM counts every forward)."""
    from recsearch.train import trainer

    common = [f"engine={engine}", "device=cuda", "epochs=2", "max_steps=24", "hparams.embedding_optimizer=adam",
              "hparams.embedding_lr=0.01", "eval_every_steps=6", "eval_rows=512"]
    straight = trainer.train(small_config(learnable_data, tmp_path / "straight", *common)).to_dict()
    out = tmp_path / "split"
    first = trainer.train(small_config(learnable_data, out, *common, "checkpoint_every_steps=12", "max_steps=12")).to_dict()
    assert first["steps"] == 12
    resumed = trainer.train(small_config(learnable_data, out, *common, "resume_from=latest")).to_dict()
    assert resumed["steps"] == straight["steps"] == 24
    tail = [h["loss"] for h in resumed["history"] if h["step"] > 12]
    assert len(tail) == 12
    np.testing.assert_allclose(tail, [h["loss"] for h in straight["history"] if h["step"] > 12], rtol=1e-5)
    assert resumed["metrics"]["val"]["auc"] == pytest.approx(straight["metrics"]["val"]["auc"], abs=1e-4)
