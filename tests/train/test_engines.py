"""The single-device engine against the DMP pipeline engine: same weights at the start, same
losses step by step, same metrics; no host synchronisation inside a step; exact resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from recsearch import config
from recsearch.train import trainer
from recsearch.train.dispatch import HostSyncError, HostSyncGuard
from recsearch.train.engine import choose_engine
from tests.train.engines import engine_and_loader, small_config

CPU = torch.device("cpu")
SCHEDULE = ["hparams.warmup_steps=5", "hparams.decay_start_step=20", "hparams.decay_steps=15"]
# Combinations of the fused table optimizer, the dense optimizer, precisions and interaction.
SETUPS = {
    "sgd+sgd, lr schedule": ["hparams.embedding_optimizer=sgd", "hparams.dense_optimizer=sgd", *SCHEDULE],
    "rowwise_adagrad+adam, schedule": [
        "hparams.embedding_optimizer=rowwise_adagrad", "hparams.dense_optimizer=adam",
        "hparams.dense_lr=0.01", *SCHEDULE,
    ],
    "adagrad+lamb, dcn": [
        "hparams.embedding_optimizer=adagrad", "hparams.dense_optimizer=lamb", "hparams.dense_lr=0.01",
        "arch.interaction=dcn",
    ],
    "fp16 tables, bf16 dense, adagrad, projection": [
        "embedding_precision=fp16", "dense_precision=bf16", "hparams.dense_optimizer=adagrad",
        "arch.interaction=projection", "arch.projection_branch1=[16,8]", "arch.projection_branch2=[16,8]",
    ],
}
# Same kernels (FBGEMM's TBE, the same dense optimizer), same data order: the two engines differ
# only in the order of a few floating-point operations (DDP's world-of-one gradient division,
# SGD's schedule applied to the gradient instead of the lr). Measured: <= 2e-7 relative over 40
# steps; allowed 1e-5 (a real difference, e.g. one skipped or repeated batch, moves the loss by
# more than 1e-3 on this data).
LOSS_RTOL = 1e-5


def _run(tmp_path, data, name: str, *overrides: str) -> dict:
    cfg = small_config(data, tmp_path / name, "max_steps=40", "epochs=2", "eval_rows=1024", *overrides)
    return trainer.train(cfg).to_dict()


@pytest.mark.slow
@pytest.mark.parametrize("setup", list(SETUPS))
def test_single_and_pipeline_engines_train_to_the_same_losses(tmp_path, learnable_data, setup):
    results = {
        name: _run(tmp_path, learnable_data, name, f"engine={engine}", *extra, *SETUPS[setup])
        for name, engine, extra in (
            ("pipeline", "pipeline", []),
            ("single", "single", []),
            ("single_on_device", "single", ["data_on_device=true"]),
        )
    }
    reference = [h["loss"] for h in results["pipeline"]["history"]]
    assert len(reference) == 40  # one loss per step, two epochs' worth of steps (an epoch is 48)
    for name in ("single", "single_on_device"):
        r = results[name]
        assert r["engine"]["engine"] == "single" and r["engine"]["data_on_device"] == (name == "single_on_device")
        assert r["engine"]["cuda_graph"] is False and "CUDA device" in r["engine"]["cuda_graph_note"]
        losses = [h["loss"] for h in r["history"]]
        np.testing.assert_allclose(losses, reference, rtol=LOSS_RTOL)
        for split in ("val", "test"):
            assert r["metrics"][split]["auc"] == pytest.approx(results["pipeline"]["metrics"][split]["auc"], abs=1e-4)
        # the single engine needs fewer host-dispatched ops per step than DMP + the pipeline
        assert r["engine"]["ops_per_step"] < results["pipeline"]["engine"]["ops_per_step"]
    assert results["pipeline"]["engine"]["engine"] == "pipeline"
    assert set(results["single"]["plan"]) == set(results["pipeline"]["plan"])  # the same 26 tables


def test_both_engines_start_from_the_same_weights(tmp_path, learnable_data):
    """The tables' initial weights are a function of (seed, table, row): the same on one device
    and after DMP's sharding, so the first step's loss is the same on both engines."""
    cfg = small_config(learnable_data, tmp_path / "a", "engine=single")
    single, _ = engine_and_loader(cfg, CPU)
    pipeline, _ = engine_and_loader(small_config(learnable_data, tmp_path / "b", "engine=pipeline"), CPU)
    s_state, p_state = single.model.state_dict(), pipeline.model.state_dict()
    table = "model.sparse_arch.embedding_bag_collection.embedding_bags.t_cat_3.weight"
    sharded = p_state[table]
    p_weight = sharded.local_shards()[0].tensor if hasattr(sharded, "local_shards") else sharded
    assert torch.equal(s_state[table], p_weight)
    bound = math.sqrt(1 / 20)  # TorchRec's default range for a 20-row table
    assert s_state[table].abs().max() <= bound and s_state[table].std() > bound / 3
    dense = "model.dense_arch.model._mlp.0._linear.weight"
    assert torch.equal(s_state[dense], p_state[dense])
    other_seed, _ = engine_and_loader(small_config(learnable_data, tmp_path / "c", "hparams.seed=1"), CPU)
    assert not torch.equal(other_seed.model.state_dict()[table], s_state[table])


def test_a_single_engine_step_never_waits_for_the_device(tmp_path, learnable_data):
    """Every op of a step runs under a guard that fails on .item(), nonzero, data-dependent shapes
    and the like: on a GPU each would stall the host. FBGEMM's own host-side counters (CPU
    tensors on a GPU too) are the only scalars read. FBGEMM copies its device-side iteration count
    to the host once, at a table module's first forward (to resume its counter): the first step
    runs unguarded, as the graphed engine runs its first steps eagerly."""
    for extra in (["data_on_device=true", *SCHEDULE], ["hparams.embedding_optimizer=rowwise_adagrad", "hparams.dense_optimizer=adam"]):
        engine, _ = engine_and_loader(small_config(learnable_data, tmp_path, "engine=single", *extra), CPU)
        host_side = [t for tbe in engine._tbes for t in (tbe.iter_cpu, tbe.learning_rate_tensor)]
        engine.set_lr_multiplier(0.5)
        engine.start_stretch(0, 0)
        assert engine.step() == 256
        guard = HostSyncGuard(host_side)
        for _ in range(4):
            with guard:
                assert engine.step() == 256
        engine.end_stretch()
        assert guard.seen == []

    # the guard does catch a host read of a device value (the pattern the engine avoids)
    with pytest.raises(HostSyncError, match="_local_scalar_dense"):
        with HostSyncGuard():
            float(torch.ones(2).sum())


def test_engine_choice_and_its_errors(tmp_path, learnable_data):
    assert choose_engine("auto", 1) == "single" and choose_engine("auto", 2) == "pipeline"
    assert choose_engine("pipeline", 1) == "pipeline"
    with pytest.raises(ValueError, match="engine=single trains on one device, but this run has 2 ranks"):
        choose_engine("single", 2)
    with pytest.raises(ValueError, match="cuda_graph=true needs a CUDA device"):
        engine_and_loader(small_config(learnable_data, tmp_path, "cuda_graph=true", "device=cpu"), CPU)
    with pytest.raises(config.ConfigError, match="engine must be auto or single or pipeline, got 'fast'"):
        small_config(learnable_data, tmp_path, "engine=fast")


@pytest.mark.slow
def test_resume_on_the_single_engine_is_exact(tmp_path, learnable_data):
    """40 steps straight vs 20 + checkpoint + a fresh process-like resume for the last 20: the
    same losses and the same final weights, with a stateful optimizer on both sides."""
    common = ["engine=single", "max_steps=40", "epochs=2", "hparams.embedding_optimizer=rowwise_adagrad",
              "hparams.dense_optimizer=adam", "hparams.dense_lr=0.01", *SCHEDULE, "eval_rows=512"]
    straight = trainer.train(small_config(learnable_data, tmp_path / "straight", *common)).to_dict()
    out = tmp_path / "split"
    first = trainer.train(small_config(learnable_data, out, *common, "checkpoint_every_steps=20", "max_steps=20")).to_dict()
    assert first["steps"] == 20
    resumed = trainer.train(small_config(learnable_data, out, *common, "resume_from=latest")).to_dict()
    assert resumed["steps"] == 40
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in straight["history"]]
    assert resumed["metrics"]["val"]["auc"] == straight["metrics"]["val"]["auc"]
    saved = json.loads((out / "result.json").read_text())
    assert saved["engine"]["engine"] == "single"


def test_device_resident_batches_equal_the_loaders_for_multi_hot_data(tmp_path):
    """The resident path gathers rows itself (three index_selects, the KJT's key-major order
    built on the device): with multi-hot features of different hotness it must train on exactly
    the loader's batches, so the losses are identical."""
    from tests.conftest import write_dataset

    data = tmp_path / "data"
    write_dataset(data, day_rows=(600, 300, 200), num_embeddings=20, multi_hot_sizes=(1, 3, 2, *(1,) * 23))
    losses = {}
    for placement in ("true", "false"):
        result = trainer.train(small_config(
            data, tmp_path / placement, "engine=single", f"data_on_device={placement}",
            "hparams.batch_size=64", "max_steps=12", "epochs=2",
        ))
        assert result.engine["data_on_device"] == (placement == "true")
        losses[placement] = [h["loss"] for h in result.history]
    assert len(losses["true"]) == 12 and losses["true"] == losses["false"]


def test_the_resident_row_order_is_built_once_per_epoch_across_stretches(tmp_path, learnable_data):
    """Evaluations and checkpoints cut an epoch into stretches; the device-resident row order is
    built and uploaded once per epoch, not per stretch, and the stretches still train exactly the
    loader's batches (the same losses as batches from the loader, bit for bit)."""
    stretches = ((0, 0, 3), (0, 3, 2), (0, 5, 1), (1, 0, 2), (1, 2, 2))  # (epoch, first batch, steps)
    losses = {}
    for placement in ("true", "false"):
        engine, loader = engine_and_loader(
            small_config(learnable_data, tmp_path / placement, "engine=single", f"data_on_device={placement}"), CPU
        )
        built: list[int] = []
        real = loader.epoch_rows
        loader.epoch_rows = lambda epoch, real=real, built=built: built.append(epoch) or real(epoch)
        engine.set_lr_multiplier(1.0)
        losses[placement] = []
        for epoch, first, steps in stretches:
            engine.start_stretch(epoch, first)
            for _ in range(steps):
                assert engine.step() == 256
                losses[placement].append(engine.take_loss_sum())
            engine.end_stretch()
        assert engine.report.data_on_device == (placement == "true")
        assert built == ([0, 1] if placement == "true" else [])
    assert len(losses["true"]) == 10 and losses["true"] == losses["false"]
