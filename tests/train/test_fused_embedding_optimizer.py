"""The embedding optimizer really is fused into backward, and the LR schedule really reaches it."""

import json

import pytest
import torch
import torch.distributed as dist
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from recsearch.data.loader import NpyBatchLoader
from recsearch.model.dlrm import EBC_MODULE_PATH, build_model
from recsearch.train import trainer
from recsearch.train.optim import embedding_optimizer
from recsearch.train.pipeline_engine import sharding_plan
from recsearch.train.schedule import apply_lr
from recsearch.types import ArchSpec, HParams
from tests.conftest import write_dataset

ARCH = ArchSpec(embedding_dim=4, bottom_mlp=(8, 4), top_mlp=(8, 1))
ROWS = [50] * 26
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def world_of_one():
    """A single-process gloo group, as `recsearch train` makes without torchrun."""
    if dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _sharded(plan_name: str, tmp_path, embedding_lr: float = 1.0) -> DistributedModelParallel:
    torch.manual_seed(0)  # same initial weights in every call
    model = build_model(ARCH, ROWS, device="meta")
    apply_optimizer_in_backward(
        torch.optim.SGD, model.model.sparse_arch.parameters(), {"lr": embedding_lr}
    )
    cfg = trainer.TrainConfig(data_dir=str(tmp_path), plan=plan_name, hparams=HParams(batch_size=16))
    plan = sharding_plan(cfg, model, CPU, world_size=1)
    return DistributedModelParallel(module=model, device=CPU, plan=plan)


def test_torchrec_plan_keeps_the_embedding_optimizer(world_of_one, tmp_path):
    dmp = _sharded("torchrec", tmp_path)
    tables = dmp.plan.plan[EBC_MODULE_PATH]
    assert len(tables) == 26
    # Not data_parallel/dense: those tables would be trained by the dense optimizer instead.
    assert {(p.sharding_type, p.compute_kernel) for p in tables.values()} <= {
        ("table_wise", "fused"), ("column_wise", "fused"), ("table_row_wise", "fused"),
    }
    assert dmp.fused_optimizer.param_groups
    dense_names = [name for name, _ in in_backward_optimizer_filter(dmp.named_parameters())]
    assert dense_names and not [n for n in dense_names if "embedding_bags" in n]


def _embedding_update_norm(dmp: DistributedModelParallel, data_root, lr_multiplier: float) -> float:
    """Norm of the change of all embedding weights after one pipelined step at base_lr x mult."""
    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(dmp.named_parameters())),
        lambda params: torch.optim.SGD(params, lr=0.0),
    )
    optimizer = CombinedOptimizer([dmp.fused_optimizer, dense])
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    apply_lr(optimizer, base_lrs, lr_multiplier)

    def embeddings() -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1).clone() for n, p in dmp.named_parameters() if "embedding_bags" in n])

    before = embeddings()
    pipeline = TrainPipelineSparseDist(dmp, optimizer, CPU)
    batches = iter(NpyBatchLoader(data_root, "train", 16, num_embeddings_per_feature=ROWS, prefetch_batches=0))
    pipeline.progress(batches)
    pipeline.detach()
    return float((embeddings() - before).norm())


def test_lr_multiplier_scales_the_fused_embedding_update(world_of_one, tmp_path):
    data = tmp_path / "data"
    write_dataset(data, day_rows=(32, 32, 16), num_embeddings=5)
    (tmp_path / "placement.json").write_text(json.dumps({f"t_cat_{i}": 0 for i in range(26)}))
    placement = str(tmp_path / "placement.json")
    full = _embedding_update_norm(_sharded(placement, tmp_path), data, 1.0)
    scaled = _embedding_update_norm(_sharded(placement, tmp_path), data, 0.01)
    frozen = _embedding_update_norm(_sharded(placement, tmp_path), data, 0.0)
    assert full > 1e-4
    # SGD, same weights, same batch: the update is lr x gradient, so it scales with the LR.
    assert scaled == pytest.approx(0.01 * full, rel=1e-3)
    assert frozen == 0.0


@pytest.mark.parametrize(
    ("name", "state_slots"),
    [("sgd", set()), ("adagrad", {"t_cat_0.momentum1"}), ("rowwise_adagrad", {"t_cat_0.momentum1"})],
)
def test_each_cpu_embedding_optimizer_runs_fused(world_of_one, tmp_path, name, state_slots):
    data = tmp_path / "data"
    write_dataset(data, day_rows=(32, 32, 16), num_embeddings=5)
    (tmp_path / "placement.json").write_text(json.dumps({f"t_cat_{i}": 0 for i in range(26)}))
    model = build_model(ARCH, ROWS, device="meta")
    cls, kwargs = embedding_optimizer(name, 0.1, "cpu")
    apply_optimizer_in_backward(cls, model.model.sparse_arch.parameters(), kwargs)
    cfg = trainer.TrainConfig(data_dir=str(data), plan=str(tmp_path / "placement.json"))
    dmp = DistributedModelParallel(model, device=CPU, plan=sharding_plan(cfg, model, CPU, 1))
    state = dmp.fused_optimizer.state_dict()["state"]
    assert len(state) == 26
    assert set(state["model.sparse_arch.embedding_bag_collection.embedding_bags.t_cat_0.weight"]) == state_slots
    assert _embedding_update_norm(dmp, data, 1.0) > 0


def test_adam_embeddings_are_refused_on_cpu():
    assert embedding_optimizer("adam", 0.1, "cuda")[0] is torch.optim.Adam
    with pytest.raises(ValueError, match="'adam' needs a GPU"):
        embedding_optimizer("adam", 0.1, "cpu")
