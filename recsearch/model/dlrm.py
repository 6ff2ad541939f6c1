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
from torchrec.modules.embedding_configs import EmbeddingBagConfig
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


def build_model(arch: ArchSpec, rows: Sequence[int], device: torch.device | str = "meta") -> DLRMTrain:
    """A DLRMTrain (loss + logits) for the architecture, with one table per categorical feature."""
    ebc = EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(
                name=f"t_cat_{i}",
                embedding_dim=arch.embedding_dim,
                num_embeddings=int(n),
                feature_names=[f"cat_{i}"],
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
    return DLRMTrain(model)


def dense_parameter_count(model: torch.nn.Module) -> int:
    return sum(
        p.numel() for name, p in model.named_parameters() if "embedding_bag_collection" not in name
    )
