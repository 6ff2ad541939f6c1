"""ArchSpec -> a TorchRec DLRM (dot, DCNv2 or projection interaction) wrapped for training.

The 26 Criteo features each get their own table `t_cat_{i}` in one EmbeddingBagCollection, which
DistributedModelParallel shards onto FBGEMM's fused TBE kernels. Tables are created on the meta
device when a sharder will materialize them (no memory is spent on weights the plan puts
elsewhere).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchrec.models.dlrm import DLRM, DLRM_DCN, DLRM_Projection, DLRMTrain
from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from recsearch.types import NUM_DENSE_FEATURES, ArchSpec, Interaction, TableSpec

EBC_MODULE_PATH = "model.sparse_arch.embedding_bag_collection"  # inside DLRMTrain


def table_rows(num_embeddings_per_feature: Sequence[int], max_rows_per_table: int | None) -> list[int]:
    """Rows of each table: the feature's id range, capped (ids are then hashed into the cap)."""
    cap = max_rows_per_table or max(num_embeddings_per_feature)
    return [max(1, min(int(n), cap)) for n in num_embeddings_per_feature]


def table_specs(
    arch: ArchSpec, rows: Sequence[int], pooling_factors: Sequence[float] | None = None
) -> list[TableSpec]:
    pooling = pooling_factors or [1.0] * len(rows)
    return [
        TableSpec(
            name=f"t_cat_{i}",
            num_rows=int(n),
            dim=arch.embedding_dim,
            pooling_factor=float(pooling[i]),
            feature_names=(f"cat_{i}",),
        )
        for i, n in enumerate(rows)
    ]


# keyed by recsearch.train.config's EMBEDDING_PRECISIONS / DENSE_PRECISIONS (tests check they agree)
EMBEDDING_DTYPES = {"fp32": DataType.FP32, "fp16": DataType.FP16}
DENSE_DTYPES = {"fp32": None, "bf16": torch.bfloat16}


class AutocastDLRMTrain(DLRMTrain):
    """DLRMTrain whose model forward (MLPs and interaction) runs under autocast to `dtype`, while
    the loss is computed in fp32 and backward runs outside autocast (as PyTorch recommends).
    The embedding lookups are FBGEMM ops that autocast leaves alone. Same parameter names as
    DLRMTrain, so plans and checkpoints are unchanged."""

    def __init__(self, dlrm_module: torch.nn.Module, dtype: torch.dtype, device_type: str):
        super().__init__(dlrm_module)
        self.autocast_dtype = dtype
        # a plain string, fixed here: TorchRec's pipeline traces this forward symbolically, where
        # the batch's device is a proxy
        self.autocast_device_type = device_type

    def forward(self, batch):  # type: ignore[no-untyped-def]
        with torch.autocast(self.autocast_device_type, dtype=self.autocast_dtype):
            logits = self.model(batch.dense_features, batch.sparse_features)
        logits = logits.squeeze(-1).float()
        loss = self.loss_fn(logits, batch.labels.float())
        return loss, (loss.detach(), logits.detach(), batch.labels.detach())


def build_model(
    arch: ArchSpec,
    rows: Sequence[int],
    device: torch.device | str = "meta",
    embedding_dtype: str = "fp32",
    dense_dtype: str = "fp32",
    compute_device_type: str = "cpu",
) -> DLRMTrain:
    """A DLRMTrain (loss + logits) for the architecture, with one table per categorical feature.
    embedding_dtype "fp16" stores the tables (and their fused optimizer's updates) in half
    precision: half the memory and memory traffic of the lookups; pooled outputs stay fp32.
    dense_dtype "bf16" runs the MLPs and the interaction under bf16 autocast (weights stay fp32)
    on `compute_device_type` (where training will run: "cpu" or "cuda")."""
    if embedding_dtype not in EMBEDDING_DTYPES:
        raise ValueError(f"embedding dtype must be one of {sorted(EMBEDDING_DTYPES)}, got {embedding_dtype!r}")
    if dense_dtype not in DENSE_DTYPES:
        raise ValueError(f"dense dtype must be one of {sorted(DENSE_DTYPES)}, got {dense_dtype!r}")
    ebc = EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(
                name=f"t_cat_{i}",
                embedding_dim=arch.embedding_dim,
                num_embeddings=int(n),
                feature_names=[f"cat_{i}"],
                data_type=EMBEDDING_DTYPES[embedding_dtype],
            )
            for i, n in enumerate(rows)
        ],
        device=torch.device(device),
    )
    # The MLPs are small: with meta tables they are built on the CPU, and DistributedModelParallel's
    # data-parallel wrapper moves them to the training device.
    dense_device = torch.device("cpu") if torch.device(device).type == "meta" else torch.device(device)
    common = {
        "embedding_bag_collection": ebc,
        "dense_in_features": NUM_DENSE_FEATURES,
        "dense_arch_layer_sizes": list(arch.bottom_mlp),
        "over_arch_layer_sizes": list(arch.top_mlp),
        "dense_device": dense_device,
    }
    if arch.interaction is Interaction.DOT:
        model = DLRM(**common)
    elif arch.interaction is Interaction.DCN:
        model = DLRM_DCN(
            **common,
            dcn_num_layers=arch.dcn_num_layers,
            dcn_low_rank_dim=arch.dcn_low_rank_dim,
        )
    else:
        model = DLRM_Projection(
            **common,
            interaction_branch1_layer_sizes=list(arch.projection_branch1),
            interaction_branch2_layer_sizes=list(arch.projection_branch2),
        )
    autocast_dtype = DENSE_DTYPES[dense_dtype]
    return DLRMTrain(model) if autocast_dtype is None else AutocastDLRMTrain(model, autocast_dtype, compute_device_type)


def dense_parameter_count(model: torch.nn.Module) -> int:
    return sum(
        p.numel() for name, p in model.named_parameters() if "embedding_bag_collection" not in name
    )
