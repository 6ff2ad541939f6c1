"""ArchSpec -> a TorchRec DLRM (dot, DCNv2 or projection interaction) wrapped for training.

The 26 Criteo features each get their own table `t_cat_{i}` in one EmbeddingBagCollection, which
DistributedModelParallel shards onto FBGEMM's fused TBE kernels. Tables are created on the meta
device when a sharder will materialize them (no memory is spent on weights the plan puts
elsewhere). On one device the collection is TorchRec's FusedEmbeddingBagCollection instead: the
same FBGEMM TBE kernel with the optimizer fused into backward, no sharding machinery, and the same
parameter names (`...embedding_bag_collection.embedding_bags.t_cat_{i}.weight`).

Table weights are initialized by `init_table_weights`, a function of (seed, table, row) alone, so
a model starts from the same weights whatever its engine, sharding or number of devices.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from fbgemm_gpu.split_embedding_configs import SparseType
from torchrec.models.dlrm import DLRM, DLRM_DCN, DLRM_Projection, DLRMTrain, InteractionArch, SparseArch
from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recsearch.model.factory import ModelInputs, build_user_model
from recsearch.tables import feature_name, table_name
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
            name=table_name(i),
            num_rows=int(n),
            dim=arch.embedding_dim,
            pooling_factor=float(pooling[i]),
            feature_names=(feature_name(i),),
        )
        for i, n in enumerate(rows)
    ]


# keyed by recsearch.train.config's EMBEDDING_PRECISIONS / DENSE_PRECISIONS (tests check they agree)
EMBEDDING_DTYPES = {"fp32": DataType.FP32, "fp16": DataType.FP16}
_TBE_WEIGHT_TYPES = {DataType.FP32: SparseType.FP32, DataType.FP16: SparseType.FP16}
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
    fused_optimizer: tuple[type[torch.optim.Optimizer], dict[str, Any]] | None = None,
) -> DLRMTrain:
    """A DLRMTrain (loss + logits) for the architecture, with one table per categorical feature.
    embedding_dtype "fp16" stores the tables (and their fused optimizer's updates) in half
    precision: half the memory and memory traffic of the lookups; pooled outputs stay fp32.
    dense_dtype "bf16" runs the MLPs and the interaction under bf16 autocast (weights stay fp32)
    on `compute_device_type` (where training will run: "cpu" or "cuda").

    With `fused_optimizer` (class, kwargs as for apply_optimizer_in_backward) the tables are a
    FusedEmbeddingBagCollection on `device` (not meta): one FBGEMM TBE that applies the optimizer
    in its backward, for training on that one device without DistributedModelParallel. The dense
    parts' initial weights do not depend on this choice (the CPU random stream they are drawn
    from is left as a meta-device build leaves it)."""
    if embedding_dtype not in EMBEDDING_DTYPES:
        raise ValueError(f"embedding dtype must be one of {sorted(EMBEDDING_DTYPES)}, got {embedding_dtype!r}")
    if dense_dtype not in DENSE_DTYPES:
        raise ValueError(f"dense dtype must be one of {sorted(DENSE_DTYPES)}, got {dense_dtype!r}")
    configs = embedding_configs(rows, arch.embedding_dim, embedding_dtype)
    if fused_optimizer is None:
        ebc: torch.nn.Module = EmbeddingBagCollection(tables=configs, device=torch.device(device))
    else:
        with torch.random.fork_rng(devices=[]):  # its throwaway uniform_ init must not shift the dense init
            ebc = ScaledGradFusedEBC(configs, *fused_optimizer, device=torch.device(device))
    # The MLPs are small: with meta tables they are built on the CPU, and DistributedModelParallel's
    # data-parallel wrapper moves them to the training device. With fused tables on a device they
    # are also built on the CPU (from the CPU random stream, so they start from the same weights as
    # on the sharded path) and moved below.
    fused_on_device = fused_optimizer is not None
    dense_device = torch.device("cpu") if torch.device(device).type == "meta" or fused_on_device else torch.device(device)
    common = {
        "embedding_bag_collection": ebc,
        "dense_in_features": NUM_DENSE_FEATURES,
        "dense_arch_layer_sizes": list(arch.bottom_mlp),
        "over_arch_layer_sizes": list(arch.top_mlp),
        "dense_device": dense_device,
    }
    if arch.interaction is Interaction.DOT:
        model = DLRM(**common)
        model.inter_arch = GatherDotInteraction(num_sparse_features=len(rows))
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
    if fused_on_device:  # every dense part, buffers included (the interaction's index buffers)
        for name, child in model.named_children():
            if name != "sparse_arch":
                child.to(torch.device(device))
        model.sparse_arch = ViewSparseArch(ebc)
    autocast_dtype = DENSE_DTYPES[dense_dtype]
    return DLRMTrain(model) if autocast_dtype is None else AutocastDLRMTrain(model, autocast_dtype, compute_device_type)


def embedding_configs(rows: Sequence[int], dim: int, embedding_dtype: str = "fp32") -> list[EmbeddingBagConfig]:
    """One table per categorical feature (the data's feature names), `dim` wide."""
    if embedding_dtype not in EMBEDDING_DTYPES:
        raise ValueError(f"embedding dtype must be one of {sorted(EMBEDDING_DTYPES)}, got {embedding_dtype!r}")
    return [
        EmbeddingBagConfig(
            name=table_name(i), embedding_dim=dim, num_embeddings=int(n), feature_names=[feature_name(i)],
            data_type=EMBEDDING_DTYPES[embedding_dtype],
        )
        for i, n in enumerate(rows)
    ]


def dlrm(inputs: ModelInputs) -> DLRMTrain:
    """The built-in DLRMs (torchrec's DLRM, DLRM_DCN, DLRM_Projection) through the model-factory
    contract (recsearch.model.factory): `model: recsearch.model.dlrm:dlrm` with `model_args` the
    architecture's fields (bottom_mlp, top_mlp, interaction, dcn_num_layers, ...); the embedding
    dim is the tables'. The trainer's default path (`model: null`) builds the same model with its
    engine extras (fused tables, bf16 autocast)."""
    if inputs.dense_in_features != NUM_DENSE_FEATURES:
        raise ValueError(f"the built-in DLRMs take {NUM_DENSE_FEATURES} dense features, got {inputs.dense_in_features}")
    dims = {t.embedding_dim for t in inputs.tables}
    if len(dims) != 1:
        raise ValueError(f"the built-in DLRMs need one embedding dim for every table, got {sorted(dims)}")
    decisions = {k: tuple(v) if isinstance(v, list) else v for k, v in inputs.decisions.items()}
    arch = ArchSpec(**{**decisions, "embedding_dim": dims.pop()})
    dtypes = {t.data_type for t in inputs.tables}
    dtype = next((name for name, d in EMBEDDING_DTYPES.items() if {d} == dtypes), None)
    if dtype is None:
        raise ValueError(f"the built-in DLRMs need one table data type, one of {sorted(EMBEDDING_DTYPES)}")
    return build_model(arch, [t.num_embeddings for t in inputs.tables], device=inputs.device, embedding_dtype=dtype)


class GatherDotInteraction(InteractionArch):
    """TorchRec's dot interaction (the pairwise dot products of the dense output and the F
    embeddings, strictly upper triangle, after the dense output), computing the same values, but
    reading the triangle with one index_select on the flattened [B, (F+1)^2] products instead of
    advanced indexing with two index tensors. Why: the backward of advanced indexing is
    index_put_ with accumulation, which sorts all B x F(F+1)/2 indices every step (a quarter of
    the GPU time of an MLPerf-sized step, measured); index_select's backward is a plain
    index_add. No parameters; the same (non-persistent) buffer as TorchRec's."""

    def __init__(self, num_sparse_features: int) -> None:
        super().__init__(num_sparse_features)
        rows, cols = self.triu_indices
        self.register_buffer("triu_flat", rows * (self.F + 1) + cols, persistent=False)

    def forward(self, dense_features: torch.Tensor, sparse_features: torch.Tensor) -> torch.Tensor:
        if self.F <= 0:
            return dense_features
        combined = torch.cat((dense_features.unsqueeze(1), sparse_features), dim=1)
        interactions = torch.bmm(combined, combined.transpose(1, 2))
        upper = interactions.flatten(1).index_select(1, self.triu_flat)
        return torch.cat((dense_features, upper), dim=1)


class ViewSparseArch(SparseArch):
    """TorchRec's SparseArch for a collection whose pooled output is already [B, F * D] in the
    order of its features (one feature per table, one dim: a FusedEmbeddingBagCollection of
    recsearch's DLRM): it returns a view of that output as [B, F, D] instead of splitting it per
    feature and concatenating the pieces again, which copies B x F x D values in the forward and
    again in the backward. The same values and gradients; any other layout takes SparseArch's path."""

    def __init__(self, embedding_bag_collection: torch.nn.Module) -> None:
        super().__init__(embedding_bag_collection)  # type: ignore[arg-type]
        configs = embedding_bag_collection.embedding_bag_configs()
        self._viewable = all(len(c.feature_names) == 1 and c.embedding_dim == self.D for c in configs)

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        if not self._viewable:
            return super().forward(features)
        # one feature per table, in table order: exactly SparseArch's sparse_feature_names order
        pooled: KeyedTensor = self.embedding_bag_collection(features)
        return pooled.values().view(-1, self.F, self.D)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by a (device) scalar tensor."""

    @staticmethod
    def forward(ctx, values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(scale)
        return values.view_as(values)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (scale,) = ctx.saved_tensors
        return grad * scale, None


class ScaledGradFusedEBC(FusedEmbeddingBagCollection):
    """TorchRec's FusedEmbeddingBagCollection (FBGEMM TBE, optimizer fused into backward) whose
    backward can scale the gradient reaching the tables by a device tensor, `grad_scale`.

    Why: FBGEMM reads the fused optimizer's learning rate on the host when it launches the
    backward kernel, so a CUDA graph would replay the lr of the step it captured. For SGD the
    update is lr * grad, so a graph-held multiplier on the gradient applies a learning-rate
    schedule exactly: base_lr * (m * grad) == (base_lr * m) * grad (up to one rounding)."""

    def __init__(self, tables, optimizer_type, optimizer_kwargs, device: torch.device):  # type: ignore[no-untyped-def]
        kwargs = dict(optimizer_kwargs)
        # The same TBE settings as DistributedModelParallel's fused kernel: weights stored in the
        # table's data type, pooled outputs in fp32.
        kwargs.setdefault("weights_precision", _TBE_WEIGHT_TYPES[tables[0].data_type])
        kwargs.setdefault("output_dtype", SparseType.FP32)
        if len({t.data_type for t in tables}) != 1:
            raise ValueError("all tables of a fused collection must share one data type")
        super().__init__(tables, optimizer_type, kwargs, device=device)
        self.grad_scale: torch.Tensor | None = None

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        pooled = super().forward(features)
        if self.grad_scale is None or not torch.is_grad_enabled():
            return pooled
        return KeyedTensor(
            keys=pooled.keys(),
            values=_ScaleGrad.apply(pooled.values(), self.grad_scale),
            length_per_key=pooled.length_per_key(),
        )

    def tbe_modules(self) -> list[torch.nn.Module]:
        """FBGEMM's SplitTableBatchedEmbeddingBagsCodegen modules behind the collection."""
        return [lookup._emb_module for lookup in self._emb_modules]


# Rows of a table initialized from one random stream: a shard draws only the chunks it overlaps,
# so the weights do not depend on how the table is split.
INIT_CHUNK_VALUES = 1 << 22


def init_table_weights(
    weight: torch.Tensor,
    seed: int,
    table_index: int,
    num_rows: int,
    row_offset: int = 0,
    col_offset: int = 0,
    dim: int | None = None,
) -> None:
    """Fill `weight` (a table, or a shard of it starting at row_offset/col_offset) in place with
    uniform(-sqrt(1/num_rows), sqrt(1/num_rows)) values, TorchRec's default range, drawn as a
    function of (seed, table, row, column) alone: the table's rows are cut in fixed chunks, each
    from its own generator on the weight's device. The same seed gives the same table on one
    device or sharded over many (per device type: CPU and CUDA generators differ)."""
    dim = weight.shape[1] + col_offset if dim is None else dim
    bound = math.sqrt(1.0 / num_rows)
    chunk_rows = max(1, INIT_CHUNK_VALUES // dim)
    stop = row_offset + weight.shape[0]
    generator = torch.Generator(device=weight.device)
    with torch.no_grad():
        for chunk in range(row_offset // chunk_rows, -(-stop // chunk_rows)):
            first = chunk * chunk_rows
            rows_here = min(chunk_rows, num_rows - first)
            generator.manual_seed(_chunk_seed(seed, table_index, chunk))
            values = torch.empty(rows_here, dim, device=weight.device).uniform_(-bound, bound, generator=generator)
            lo, hi = max(first, row_offset), min(first + rows_here, stop)
            weight[lo - row_offset : hi - row_offset].copy_(
                values[lo - first : hi - first, col_offset : col_offset + weight.shape[1]]
            )


def _chunk_seed(seed: int, table_index: int, chunk: int) -> int:
    return ((seed * 1_000_003 + table_index) * 1_000_033 + chunk) % (1 << 62)


def init_model_tables(model: torch.nn.Module, tables: Sequence[EmbeddingBagConfig], seed: int) -> None:
    """Initialize every table of the model with init_table_weights: plain tensors (one device) or
    each local shard of a sharded model (at its offsets in the table). `tables`: the collection's
    configs, in order (the table index is part of the random stream)."""
    configs = {c.name: (i, c) for i, c in enumerate(tables)}
    for name, tensor in model.state_dict().items():
        table = _table_of(name)
        if table is None or table not in configs:
            continue
        index, table_config = configs[table]
        for shard, row_offset, col_offset in _local_pieces(tensor):
            init_table_weights(
                shard, seed, index, table_config.num_embeddings, row_offset, col_offset, table_config.embedding_dim
            )


def table_configs(model: torch.nn.Module) -> list[EmbeddingBagConfig]:
    """The configs of an (unsharded) DLRMTrain's tables, in order."""
    return list(model.get_submodule(EBC_MODULE_PATH).embedding_bag_configs())


def user_model(
    factory: str, model_args: dict[str, Any], rows: Sequence[int], dim: int, embedding_dtype: str = "fp32",
) -> tuple[torch.nn.Module, str]:
    """A model of the user's own (recsearch.model.factory) over one `dim`-wide table per feature,
    its tables on the meta device; and the attribute path of its EmbeddingBagCollection."""
    inputs = ModelInputs(embedding_configs(rows, dim, embedding_dtype), NUM_DENSE_FEATURES, dict(model_args))
    return build_user_model(factory, inputs)


def _table_of(state_key: str) -> str | None:
    marker = ".embedding_bags."
    if marker not in state_key or not state_key.endswith(".weight"):
        return None
    return state_key.split(marker, 1)[1][: -len(".weight")]


def _local_pieces(tensor: Any) -> Iterator[tuple[torch.Tensor, int, int]]:
    shards = tensor.local_shards() if hasattr(tensor, "local_shards") else None
    if shards is None:
        yield tensor, 0, 0
        return
    for shard in shards:
        row_offset, col_offset = shard.metadata.shard_offsets
        yield shard.tensor, int(row_offset), int(col_offset)


def compile_dense_parts(model: torch.nn.Module) -> None:
    """torch.compile the DLRM's dense parts in place (nn.Module.compile keeps parameter names, so
    plans, optimizers and checkpoints are unchanged). The embeddings stay eager: FBGEMM's fused
    kernels (and the input all-to-all, when sharded) are already single ops."""
    dlrm = model.model
    for name in ("dense_arch", "inter_arch", "over_arch"):
        getattr(dlrm, name).compile(dynamic=False)


def dense_parameter_count(model: torch.nn.Module) -> int:
    """Parameters outside the embedding tables (any model holding a torchrec collection)."""
    return sum(p.numel() for name, p in model.named_parameters() if ".embedding_bags." not in name)
