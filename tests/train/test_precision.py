"""Mixed precision: fp16 embedding tables and bf16 autocast of the dense part still learn, store
what they claim to store, and bad values are config errors naming the key."""

import json
from pathlib import Path

import pytest
import torch

from recsearch import config
from recsearch.model.dlrm import AutocastDLRMTrain, build_model
from recsearch.train import trainer
from recsearch.types import ArchSpec
from tests.train.test_trainer import _write_config


def _run(tmp_path: Path, data: Path, *overrides: str) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = _write_config(tmp_path, data, latency_batch_sizes=[1])
    assert trainer.main(["--config", str(cfg), *overrides]) == 0
    return json.loads((tmp_path / "out" / trainer.RESULT_FILE).read_text())


def test_fp16_tables_hold_half_the_bytes_and_still_learn(tmp_path, learnable_data):
    fp32 = _run(tmp_path / "fp32", learnable_data)
    fp16 = _run(tmp_path / "fp16", learnable_data, "embedding_precision=fp16")
    # 26 tables x 20 rows x dim 8: 16,640 bytes in fp32
    assert fp32["embedding_bytes_per_rank"] == [26 * 20 * 8 * 4]
    assert fp16["embedding_bytes_per_rank"] == [26 * 20 * 8 * 2]
    assert fp16["config"]["embedding_precision"] == "fp16"
    bayes = fp16["bayes"]["val"]["auc"]
    assert fp16["metrics"]["val"]["auc"] > 0.7  # chance is 0.5 +- 0.02 on these 2048 rows
    assert abs(fp16["metrics"]["val"]["auc"] - fp32["metrics"]["val"]["auc"]) < 0.03
    assert fp16["metrics"]["val"]["auc"] <= bayes + 0.02


def test_bf16_dense_runs_the_mlps_in_bf16_and_keeps_an_fp32_loss(tmp_path, learnable_data):
    arch = ArchSpec(embedding_dim=8, bottom_mlp=(16, 8), top_mlp=(16, 1))
    model = build_model(arch, [20] * 26, device="cpu", dense_dtype="bf16")
    assert isinstance(model, AutocastDLRMTrain)
    seen: list[torch.dtype] = []
    model.model.over_arch.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
    from torchrec.datasets.utils import Batch

    batch = Batch(
        dense_features=torch.rand(4, 13),
        sparse_features=KeyedJaggedTensor.from_lengths_sync(
            keys=[f"cat_{i}" for i in range(26)], values=torch.zeros(4 * 26, dtype=torch.long),
            lengths=torch.ones(4 * 26, dtype=torch.long),
        ),
        labels=torch.tensor([0, 1, 0, 1]),
    )
    loss, (_, logits, _) = model(batch)
    assert seen == [torch.bfloat16]  # the top MLP ran in bf16
    assert loss.dtype == torch.float32 and logits.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.model.over_arch.parameters())  # weights stay fp32

    result = _run(tmp_path, learnable_data, "dense_precision=bf16", "max_steps=20", "log_every_steps=10")
    assert result["status"] == "completed" and result["steps"] == 20
    assert result["history"][-1]["loss"] < result["history"][0]["loss"] + 0.05
    assert result["metrics"]["val"]["auc"] > 0.55


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("embedding_precision=fp8", "must be fp32 or fp16, got 'fp8'"),
        ("dense_precision=fp16", "must be fp32 or bf16, got 'fp16'"),
    ],
)
def test_an_unknown_precision_is_a_config_error(tmp_path, learnable_data, override, message):
    cfg = _write_config(tmp_path, learnable_data)
    with pytest.raises(config.ConfigError) as err:
        config.load(trainer.TrainConfig, cfg, [override])
    assert f"command line: {override}: {message}" in err.value.problems  # named as given, not the file
    assert trainer.main(["--config", str(cfg), override]) == 2
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_compiled_dense_parts_train_to_the_same_losses_as_eager(tmp_path, learnable_data):
    """compile_dense=true: the same model, the same numbers (within float reassociation), and a
    checkpoint-compatible state (parameter names unchanged by nn.Module.compile)."""
    steps = ["max_steps=12", "log_every_steps=4", "latency_batch_sizes=[1]", "latency_iters=2"]
    eager = _run(tmp_path / "eager", learnable_data, *steps)
    compiled = _run(tmp_path / "compiled", learnable_data, *steps, "compile_dense=true")
    assert compiled["config"]["compile_dense"] is True and compiled["status"] == "completed"
    losses = [h["loss"] for h in eager["history"]]
    assert len(losses) == 3
    assert [h["loss"] for h in compiled["history"]] == pytest.approx(losses, rel=1e-4)
    assert compiled["metrics"]["val"]["auc"] == pytest.approx(eager["metrics"]["val"]["auc"], abs=1e-3)

    arch = ArchSpec(embedding_dim=8, bottom_mlp=(16, 8), top_mlp=(16, 1))
    model = build_model(arch, [20] * 26, device="cpu")
    names = list(model.state_dict())
    trainer.compile_dense_parts(model)
    assert list(model.state_dict()) == names


def test_the_config_and_the_model_know_the_same_precisions():
    from recsearch.model.dlrm import DENSE_DTYPES, EMBEDDING_DTYPES
    from recsearch.train.config import DENSE_PRECISIONS, EMBEDDING_PRECISIONS

    assert tuple(EMBEDDING_DTYPES) == EMBEDDING_PRECISIONS
    assert tuple(DENSE_DTYPES) == DENSE_PRECISIONS
