"""Placements as TorchRec sharding plans and a TorchRec drop-in planner around any Placer (named
placers come from registry.py; TorchRec's own planner as a baseline is torchrec_placer.py). With
torchrec_placer.py, the only placement modules that import torchrec.distributed.

Switching an existing TorchRec pipeline to a learned (or baseline) placement is one line:

    planner = EmbeddingShardingPlanner(topology=topology, batch_size=B, constraints=c)  # before
    planner = LearnedShardingPlanner(topology=topology, batch_size=B, constraints=c)   # after
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    model = DistributedModelParallel(model, plan=plan, sharders=sharders, ...)

The planner's steps, each a small function or class here or in shards.py / best_of.py:
enumerate_tables (every table of a module a sharder takes: EmbeddingBagCollection,
EmbeddingCollection, ...; the sharding types and kernels its constraint and sharder allow) ->
each rank's cap (the Topology's own per device, less the StorageReservation) -> split_tables
(whole tables, or column-/row-wise pieces of those too big for a device) -> the Placer places the
pieces (a few more tables split a step finer if it cannot pack them) -> build_plan
(construct_module_sharding_plan with table_wise / column_wise / row_wise / data_parallel and the
chosen kernel; plan keys are module
paths relative to the module given, e.g. "model.sparse_arch.embedding_bag_collection" for
recsearch's DLRMTrain). With LearnedShardingPlanner(data_parallel=True) the placer may also
replicate whole tables (types.REPLICATED), which become data_parallel.

APIs used are in both TorchRec 1.6.1 and 1.8.0 (checked against 1.4 and 1.8 sources):
construct_module_sharding_plan, table_wise / column_wise(ranks) / row_wise() / data_parallel()
with compute_kernel, get_default_sharders, ModuleSharder.sharding_types / compute_kernels /
shardable_parameters / fused_params, EmbeddingShardingPlanner(topology, batch_size,
storage_reservation, constraints), Topology(world_size, compute_device, hbm_cap, ddr_cap,
local_world_size).devices[r].storage, StorageReservation.reserve(topology, batch_size, module,
sharders, constraints), ParameterConstraints, ParameterSharding's per-table options.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.planner import Topology as TorchRecTopology
from torchrec.distributed.planner.constants import BATCH_SIZE as TORCHREC_BATCH_SIZE
from torchrec.distributed.planner.storage_reservations import (
    FixedPercentageStorageReservation,
    HeuristicalStorageReservation,
)
from torchrec.distributed.planner.types import (
    ParameterConstraints,
    StorageReservation,
)
from torchrec.distributed.sharding_plan import (
    column_wise,
    construct_module_sharding_plan,
    data_parallel,
    get_default_sharders,
    row_wise,
    table_wise,
)
from torchrec.distributed.types import ModuleSharder, ShardingPlan
from torchrec.modules.embedding_configs import DataType, EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from recsearch.placement.registry import planner_placer
from recsearch.placement.shards import (
    SUPPORTED_SHARDING,
    ShardingKind,
    Split,
    TableRequest,
    split_tables,
)
from recsearch.placement.types import (
    DEFAULT_OPTIMIZER,
    OPTIMIZER_STATE,
    REPLICATED,
    CappedTopology,
    Placement,
    PlacementError,
    Placer,
    SequenceTableSpec,
    describe_caps,
    format_bytes,
    rank_of,
)
from recsearch.placement.torchrec_placer import default_local_world_size, torchrec_topology
from recsearch.types import TableSpec, Topology

FUSED = EmbeddingComputeKernel.FUSED.value
DENSE = EmbeddingComputeKernel.DENSE.value
# optimizer class (applied in backward) / FBGEMM EmbOptimType value -> the memory rule's name
_OPTIMIZER_BY_CLASS = {
    "SGD": "sgd",
    "RowWiseAdagrad": "rowwise_adagrad",
    "Adagrad": "adagrad",
    "Adam": "adam",
}
_OPTIMIZER_BY_FUSED = {
    "sgd": "sgd",
    "exact_sgd": "sgd",
    "exact_row_wise_adagrad": "rowwise_adagrad",
    "row_wise_adagrad": "rowwise_adagrad",
    "exact_adagrad": "adagrad",
    "adam": "adam",
}
# placement attempts: each splits one step finer the 1, 2, 4, ... tables with the largest pieces
MAX_SPLIT_ROUNDS = 16
# ParameterConstraints fields TorchRec's planner copies onto the table's ParameterSharding
# (ParameterSharding has each in TorchRec 1.6.1 and 1.8.0; copied deep, as TorchRec does)
_CONSTRAINT_OPTIONS = (
    "cache_params",
    "enforce_hbm",
    "stochastic_rounding",
    "bounds_check_mode",
    "output_dtype",
    "key_value_params",
)
# ParameterConstraints fields the planner does not use, with the value that asks for nothing
# (a constraint setting another value gets a warning naming the field and the tables)
IGNORED_CONSTRAINT_FIELDS = {
    "is_weighted": False,
    "feature_names": None,
    "device_group": None,
    "use_virtual_table": False,  # TorchRec 1.8
}

# Where recsearch's DLRMTrain keeps its EmbeddingBagCollection (recsearch.model.dlrm.EBC_MODULE_PATH;
# repeated here because placement does not import the model package).
DLRM_EBC_PATH = "model.sparse_arch.embedding_bag_collection"


# --------------------------------------------------------------------------------------------
# Reading tables from a module


def find_ebcs(module: nn.Module) -> dict[str, EmbeddingBagCollection]:
    """Module path -> EmbeddingBagCollection for every EBC in module (outermost only)."""
    found: dict[str, EmbeddingBagCollection] = {}
    for path, sub in module.named_modules():
        if isinstance(sub, EmbeddingBagCollection) and not any(
            path.startswith(p + ".") for p in found if p
        ):
            found[path] = sub
    return found


def tables_of(
    ebcs: Mapping[str, EmbeddingBagCollection], stats: Sequence[TableSpec] | None = None
) -> list[TableSpec]:
    """TableSpecs of the EBCs' tables in config order; pooling factor and reuse histogram from
    stats (matched by table name) when given, else pooling 1 and no histogram."""
    by_name = {t.name: t for t in stats or ()}
    tables, seen = [], set()
    for path, ebc in ebcs.items():
        for cfg in ebc.embedding_bag_configs():
            if cfg.name in seen:
                raise PlacementError(
                    f"table name {cfg.name!r} occurs twice (again in {path or '<root>'})"
                )
            seen.add(cfg.name)
            known = by_name.get(cfg.name)
            tables.append(
                TableSpec(
                    name=cfg.name,
                    num_rows=cfg.num_embeddings,
                    dim=cfg.embedding_dim,
                    pooling_factor=known.pooling_factor if known else 1.0,
                    reuse_hist=known.reuse_hist if known else (),
                    feature_names=tuple(cfg.feature_names),
                    bytes_per_value=2 if cfg.data_type in (DataType.FP16, DataType.BF16) else 4,
                )
            )
    return tables


# --------------------------------------------------------------------------------------------
# Placement -> ShardingPlan


def _sharder_for(module: nn.Module, sharders: Sequence[ModuleSharder[nn.Module]] | None) -> Any:
    for s in sharders or ():
        if isinstance(module, s.module_type):
            return s
    return None  # construct_module_sharding_plan picks the default sharder


def plan_from_ranks(
    ebcs: Mapping[str, EmbeddingBagCollection],
    ranks: Mapping[str, int],
    world_size: int,
    device_type: str = "cpu",
    sharders: Sequence[ModuleSharder[nn.Module]] | None = None,
    local_size: int | None = None,
    compute_kernel: str | None = None,
) -> ShardingPlan:
    """ShardingPlan putting table name -> rank (table-wise) for every table of the EBCs; a table
    whose rank is REPLICATED gets data_parallel() (the dense kernel, on every rank)."""
    local = local_size or default_local_world_size(world_size, device_type)
    plan = {}
    for path, ebc in ebcs.items():
        names = [c.name for c in ebc.embedding_bag_configs()]
        missing = [n for n in names if n not in ranks]
        if missing:
            raise PlacementError(f"no rank for tables {missing[:10]} of {path or '<root>'}")
        bad = {
            n: ranks[n] for n in names if not 0 <= ranks[n] < world_size and ranks[n] != REPLICATED
        }
        if bad:
            raise PlacementError(f"ranks outside 0..{world_size - 1}: {bad}")
        kernel = compute_kernel or FUSED  # as TorchRec's planner picks
        plan[path] = construct_module_sharding_plan(
            ebc,
            per_param_sharding={
                n: data_parallel()
                if ranks[n] == REPLICATED
                else table_wise(rank=ranks[n], compute_kernel=kernel)
                for n in names
            },
            sharder=_sharder_for(ebc, sharders),
            local_size=local,
            world_size=world_size,
            device_type=device_type,
        )
    return ShardingPlan(plan)


def to_sharding_plan(
    ebc: EmbeddingBagCollection,
    placement: Placement | Mapping[str, int],
    module_path: str = DLRM_EBC_PATH,
    device_type: str = "cpu",
    world_size: int | None = None,
    **kwargs: Any,
) -> ShardingPlan:
    """A table-wise ShardingPlan for one EBC at module_path (relative to the module that
    DistributedModelParallel wraps). A Placement is indexed in the EBC's config order; a mapping
    is table name -> rank. REPLICATED tables get data_parallel()."""
    names = [c.name for c in ebc.embedding_bag_configs()]
    if isinstance(placement, Placement):
        if len(placement) != len(names):
            raise PlacementError(f"placement has {len(placement)} tables, the EBC has {len(names)}")
        ranks = dict(zip(names, placement.ranks))
        world = world_size or placement.world_size
    else:
        ranks = {name: rank_of(value) for name, value in placement.items()}  # files: "data_parallel"
        placed = [r for r in ranks.values() if r != REPLICATED]
        if not world_size and not placed:
            raise PlacementError(
                "every table is replicated: give world_size, the mapping does not say it"
            )
        world = world_size or (max(placed) + 1)
    return plan_from_ranks({module_path: ebc}, ranks, world, device_type, **kwargs)


def plan_ranks(plan: ShardingPlan) -> dict[str, dict[str, tuple[str, list[int]]]]:
    """module path -> table -> (sharding type, ranks): for checks and logs."""
    return {
        path: {t: (ps.sharding_type, list(ps.ranks or [])) for t, ps in mp.items()}  # type: ignore[union-attr]
        for path, mp in plan.plan.items()
    }


# --------------------------------------------------------------------------------------------
# The planner: enumerate tables, device caps, split, place, build the plan


@dataclass(frozen=True)
class ShardableTable:
    """One table of a shardable module, as the planner sees it: where it is, its sharder, its
    TableSpec, the sharding types it may get and the compute kernel it gets."""

    path: str
    module: nn.Module
    sharder: ModuleSharder[nn.Module]
    spec: TableSpec
    request: TableRequest
    kernels: tuple[str, ...]  # allowed kernels by sharding type order: see kernel_for
    constraint: ParameterConstraints | None


def _configs_of(module: nn.Module) -> dict[str, Any]:
    """Table name -> its EmbeddingBagConfig / EmbeddingConfig, when the module exposes them."""
    for getter in ("embedding_bag_configs", "embedding_configs"):
        if hasattr(module, getter):
            return {c.name: c for c in getattr(module, getter)()}
    return {}


def shardable_modules(
    module: nn.Module, sharders: Sequence[ModuleSharder[nn.Module]]
) -> dict[str, tuple[nn.Module, ModuleSharder[nn.Module]]]:
    """Module path -> (module, its sharder) for every outermost submodule a sharder takes, as
    TorchRec's planner finds them (exact module type)."""
    by_type = {s.module_type: s for s in sharders}
    found: dict[str, tuple[nn.Module, ModuleSharder[nn.Module]]] = {}
    for path, sub in module.named_modules():
        if any(path == p or path.startswith(p + ".") for p in found if p) or "" in found:
            continue
        sharder = by_type.get(type(sub))
        if sharder is not None:
            found[path] = (sub, sharder)
    return found


def enumerate_tables(
    module: nn.Module,
    sharders: Sequence[ModuleSharder[nn.Module]],
    constraints: Mapping[str, ParameterConstraints] | None,
    device_type: str,
    stats: Sequence[TableSpec] | None = None,
    data_parallel: bool = False,
    batch_size: int = TORCHREC_BATCH_SIZE,
) -> list[ShardableTable]:
    """Every shardable table of module with the sharding types and compute kernels it may get:
    its constraint's (TorchRec's ParameterConstraints by table name) intersected with its
    sharder's for device_type. A table left to choose (no sharding_types constraint) never gets
    data_parallel unless data_parallel is True (LearnedShardingPlanner(data_parallel=True)).
    Pooling factors: stats (TableSpecs by name), else the constraint's lookups per sample
    (constraint_pooling: its pooling_factors, num_poolings and batch_sizes against batch_size,
    the planner's per-rank batch), else 1.
    Tables are keyed by (module path, name), as TorchRec plans them: one name may occur in several
    modules (constraints and stats, by name, then apply to each); such tables are handed to the
    placer as placement_name's "name@module/path" so that the pieces' names stay unique."""
    constraints = dict(constraints or {})
    by_name = {t.name: t for t in stats or ()}
    out: list[ShardableTable] = []
    for path, (sub, sharder) in shardable_modules(module, sharders).items():
        configs = _configs_of(sub)
        for name, param in sharder.shardable_parameters(sub).items():
            cfg = configs.get(name)
            constraint = constraints.get(name)
            known = by_name.get(name)
            pooling = 1.0
            if known is not None:
                pooling = known.pooling_factor
            elif constraint is not None and constraint.pooling_factors:
                pooling = constraint_pooling(constraint, batch_size, name)
            rows, dim = int(param.shape[0]), int(param.shape[1])
            # an EmbeddingCollection's tables are not pooled: their all-to-all is per id
            spec_type = SequenceTableSpec if isinstance(cfg, EmbeddingConfig) else TableSpec
            spec = spec_type(
                name=name,
                num_rows=rows,
                dim=dim,
                pooling_factor=pooling,
                reuse_hist=known.reuse_hist if known is not None else (),
                feature_names=tuple(cfg.feature_names) if cfg is not None else (),
                bytes_per_value=param.element_size(),
            )
            offered = list(sharder.sharding_types(device_type))
            wanted = list(constraint.sharding_types) if constraint and constraint.sharding_types else None
            where = f"{path or '<root>'} ({type(sub).__name__})"
            if wanted is not None:
                allowed = [s for s in wanted if s in offered]
                if not allowed:
                    raise PlacementError(
                        f"table {name!r} in {where} is constrained to {wanted}, but its sharder "
                        f"{type(sharder).__name__} offers only {offered} on {device_type}"
                    )
            else:
                allowed = [s for s in SUPPORTED_SHARDING if s in offered]
                # left to choose, a table is data_parallel only when the planner was asked for
                # it (data_parallel=True): those are dense parameters the dense optimizer trains
                # (TorchRec's planner may choose it; a constraint asks for it per table)
                if not data_parallel:
                    allowed = [s for s in allowed if s != ShardingKind.DATA_PARALLEL]
            kernels = tuple(constraint.compute_kernels) if constraint and constraint.compute_kernels else ()
            out.append(
                ShardableTable(
                    path=path,
                    module=sub,
                    sharder=sharder,
                    spec=spec,
                    request=TableRequest(
                        spec,
                        tuple(allowed),
                        constraint.min_partition if constraint else None,
                        where,
                    ),
                    kernels=kernels,
                    constraint=constraint,
                )
            )
    counts = Counter(t.spec.name for t in out)
    return [
        t
        if counts[t.spec.name] == 1
        else dataclasses.replace(
            t,
            request=dataclasses.replace(
                t.request,
                table=dataclasses.replace(t.spec, name=placement_name(t.path, t.spec.name)),
            ),
        )
        for t in out
    ]


def constraint_pooling(constraint: ParameterConstraints, batch_size: int, table: str) -> float:
    """Ids a table looks up per sample of the planner's per-rank batch, as TorchRec's planner
    counts its lookups: the sum over features of pooling_factor x num_poolings (default 1)
    x batch_sizes (default batch_size), over batch_size. The lists must match in length."""
    factors = [float(f) for f in constraint.pooling_factors]
    poolings = [float(n) for n in constraint.num_poolings or [1.0] * len(factors)]
    batches = [int(b) for b in constraint.batch_sizes or [batch_size] * len(factors)]
    if not len(factors) == len(poolings) == len(batches):
        raise PlacementError(
            f"table {table!r}: ParameterConstraints pooling_factors, num_poolings and batch_sizes "
            f"must match in length (one per feature), got {len(factors)}, {len(poolings)} and "
            f"{len(batches)}"
        )
    lookups = sum(f * n * b for f, n, b in zip(factors, poolings, batches))
    if lookups <= 0:
        raise PlacementError(f"table {table!r}: the constraint's lookups per batch are {lookups}")
    return lookups / batch_size


def ignored_constraints(constraints: Mapping[str, ParameterConstraints]) -> dict[str, list[str]]:
    """ParameterConstraints field -> the tables (sorted) whose constraint sets a field the planner
    does not use (IGNORED_CONSTRAINT_FIELDS) to something other than its default."""
    found: dict[str, list[str]] = {}
    for field_name, unset in IGNORED_CONSTRAINT_FIELDS.items():
        tables = sorted(
            name for name, c in constraints.items() if getattr(c, field_name, unset) not in (unset, None)
        )
        if tables:
            found[field_name] = tables
    return found


def placement_name(path: str, name: str) -> str:
    """The name a table whose name occurs in several modules has among the placer's pieces:
    "name@module/path" (dots become slashes: the TorchRec placer makes the pieces an
    EmbeddingBagCollection, whose table names may not hold dots)."""
    return f"{name}@{path.replace('.', '/') or '<root>'}"


def kernel_for(table: ShardableTable, sharding_type: str, device_type: str) -> str:
    """The compute kernel: the first of the table's constraint's kernels (or, unconstrained,
    of fused then dense, as TorchRec's planner prefers the fused TBE) that its sharder offers
    for this sharding type. Memory is counted as in device memory, so kernels that keep tables
    elsewhere (UVM, key-value, SSD) are refused with the table named."""
    offered = list(table.sharder.compute_kernels(sharding_type, device_type))
    preferred = list(table.kernels) or [FUSED, DENSE]
    usable = [k for k in preferred if k in offered and k in (FUSED, DENSE)]
    if not usable:
        raise PlacementError(
            f"table {table.spec.name!r} in {table.request.where} sharded {sharding_type} may use "
            f"kernels {preferred}, its sharder offers {offered} on {device_type}; "
            f"LearnedShardingPlanner places tables in device memory with '{FUSED}' or '{DENSE}'"
        )
    return usable[0]


def embedding_optimizer(
    tables: Sequence[ShardableTable], default: str = DEFAULT_OPTIMIZER
) -> str:
    """The embedding optimizer whose state the placement must hold, read as TorchRec's planner
    reads it: the optimizer applied in backward to the tables' parameters, else the sharders'
    fused_params["optimizer"], else default."""
    names: set[str] = set()
    # each module's parameters listed once (per sharder), not once per table: a module of N
    # tables would otherwise cost N^2 parameter lookups (0.4 s for 504 tables)
    params: dict[tuple[int, int], dict[str, nn.Parameter]] = {}
    for t in tables:
        key = (id(t.sharder), id(t.module))
        if key not in params:
            params[key] = t.sharder.shardable_parameters(t.module)
        param = params[key].get(t.spec.name)
        for cls in getattr(param, "_optimizer_classes", ()) or ():
            names.add(_OPTIMIZER_BY_CLASS.get(cls.__name__, cls.__name__))
        fused = (t.sharder.fused_params or {}).get("optimizer")
        if fused is not None and not getattr(param, "_optimizer_classes", None):
            value = str(getattr(fused, "value", fused))
            names.add(_OPTIMIZER_BY_FUSED.get(value, value))
    unknown = sorted(n for n in names if n not in OPTIMIZER_STATE)
    if unknown:
        raise PlacementError(
            f"embedding optimizer(s) {unknown} unknown to the planner's memory rule "
            f"(known: {', '.join(OPTIMIZER_STATE)}); pass optimizer= to say which state to count"
        )
    if not names:
        return default
    # the largest state decides what must fit
    return max(names, key=lambda n: sum(OPTIMIZER_STATE[n]) * 1000 + OPTIMIZER_STATE[n][0])


def _caps_of(topology: TorchRecTopology) -> tuple[int, ...]:
    """Each rank's memory for tables: HBM on cuda, DDR on cpu (the fused kernel's home)."""
    if topology.compute_device == "cuda":
        return tuple(int(d.storage.hbm) for d in topology.devices)
    return tuple(int(d.storage.ddr) for d in topology.devices)


def _default_topology(world_size: int | None) -> TorchRecTopology:
    world = world_size or (dist.get_world_size() if dist.is_initialized() else 1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return TorchRecTopology(
        world_size=world, compute_device=device, local_world_size=default_local_world_size(world, device)
    )


def build_plan(
    tables: Sequence[ShardableTable],
    shardings: Sequence[tuple[str, tuple[int, ...]]],
    world_size: int,
    device_type: str,
    local_size: int,
) -> ShardingPlan:
    """The ShardingPlan giving each table its (sharding type, ranks), built per module with
    TorchRec's construct_module_sharding_plan and its sharder; per-table options of the
    constraints (cache_params, enforce_hbm, stochastic_rounding, bounds_check_mode,
    output_dtype, key_value_params) carried over as TorchRec's planner does."""
    per_module: dict[str, dict[str, Any]] = {}
    modules: dict[str, tuple[nn.Module, ModuleSharder[nn.Module]]] = {}
    for t, (kind, ranks) in zip(tables, shardings):
        kernel = kernel_for(t, kind, device_type)
        if kind == ShardingKind.TABLE_WISE:
            gen = table_wise(rank=ranks[0], compute_kernel=kernel)
        elif kind == ShardingKind.COLUMN_WISE:
            gen = column_wise(ranks=list(ranks), compute_kernel=kernel)
        elif kind == ShardingKind.ROW_WISE:
            gen = row_wise(compute_kernel=kernel)
        else:
            gen = data_parallel()
        per_module.setdefault(t.path, {})[t.spec.name] = gen
        modules[t.path] = (t.module, t.sharder)
    plan: dict[str, Any] = {}
    options = {t.spec.name: t.constraint for t in tables if t.constraint is not None}
    for path, gens in per_module.items():
        sub, sharder = modules[path]
        module_plan = construct_module_sharding_plan(
            sub,
            per_param_sharding=gens,
            sharder=sharder,
            local_size=local_size,
            world_size=world_size,
            device_type=device_type,
        )
        for name, ps in module_plan.items():  # type: ignore[union-attr]
            constraint = options.get(name)
            for key in _CONSTRAINT_OPTIONS:
                value = getattr(constraint, key, None)
                if value is not None and hasattr(ps, key):
                    setattr(ps, key, copy.deepcopy(value))
        plan[path] = module_plan
    return ShardingPlan(plan)


@dataclass(frozen=True)
class SplitFailure:
    """One split the placer could not place: the split, the placer's error, and the bytes that
    largest-first packing left over (Split.unpacked_bytes: how far it was from fitting)."""

    split: Split
    error: PlacementError
    unpacked_bytes: int


def closest_failure(failures: Sequence[SplitFailure], caps: Sequence[int]) -> PlacementError:
    """The error to raise when no split was placed: the placer's error on the attempt that came
    closest (fewest bytes left over; of those the coarsest, the first tried), saying which
    split it was, how many were tried and each rank's cap."""
    assert failures
    best = min(range(len(failures)), key=lambda i: (failures[i].unpacked_bytes, i))
    f = failures[best]
    tried = (
        f"the only split tried ({f.split.describe()})"
        if len(failures) == 1
        else f"split {best + 1} of {len(failures)} tried, the closest to fitting "
        f"({f.split.describe()}; {format_bytes(f.unpacked_bytes)} left over by largest-first "
        f"packing)"
    )
    return PlacementError(f"{f.error} [{tried}; room for tables: {describe_caps(caps)}]")


class LearnedShardingPlanner:
    """A drop-in for TorchRec's EmbeddingShardingPlanner: the same constructor arguments and
    plan / collective_plan, with a Placer (learned or baseline) choosing the ranks.

    topology: TorchRec's Topology (each device's HBM cap on cuda, DDR cap on cpu), a recsearch
    Topology (its cap is the room for tables), or None (the process group's world, TorchRec's
    default caps). storage_reservation: any TorchRec StorageReservation; default TorchRec's
    HeuristicalStorageReservation(0.15) for a TorchRec Topology or None, no reservation for a
    recsearch Topology. constraints: TorchRec's ParameterConstraints by table name
    (sharding_types, compute_kernels, min_partition; pooling_factors, num_poolings and
    batch_sizes for the lookups per sample; the per-table options copied onto the table's
    ParameterSharding: cache_params, enforce_hbm, stochastic_rounding, bounds_check_mode,
    output_dtype, key_value_params); the fields it does not use (IGNORED_CONSTRAINT_FIELDS:
    is_weighted, feature_names, device_group, use_virtual_table) warn once, naming the tables.
    batch_size: per rank, as TorchRec's (for the reservation, the constraints' batch_sizes and
    the torchrec placer). The positional order is TorchRec's, up to plan_loader; the arguments
    after it are keyword-only. TorchRec's search parts (enumerator, proposer, partitioner,
    performance_model, stats, callbacks, timeout_seconds, plan_loader) are accepted and not used:
    the placer replaces them; passing one warns.

    placer: a Placer or a name (recsearch.placement.registry.PLACERS); "learned" (the default)
    is the shipped policy checked against the baselines under its own cost net, the cheapest
    kept (best_of.learned_or_better). table_stats: TableSpecs with pooling factors and reuse
    histograms by table name. optimizer: the embedding optimizer whose state counts against
    memory; None reads it from the module (optimizer applied in backward, else the sharders'
    fused_params), else rowwise_adagrad.

    Tables: each gets table_wise when allowed and it fits a device; a table too big for any
    device is split column-wise or row-wise (recsearch.placement.shards) and the pieces placed.
    Kernels: fused unless constrained (data_parallel: dense).

    data_parallel: let the placer replicate whole tables (TorchRec's data_parallel: a copy on
    every rank, looked up for the rank's own samples, its gradient all-reduced), where the cost
    model says the step gets cheaper: mostly tables with fewer rows than one rank's share of the
    batch, on a slow interconnect. Tables left to choose (no sharding_types constraint) whose
    sharder offers data_parallel may then get it; a named placer is built to try replicating
    them (registry.planner_placer(..., replicate=True)), and a given placer may return
    REPLICATED for them. Off by default because it changes training: a replicated table runs
    TorchRec's dense kernel and is trained by the optimizer the model applies to it in
    backward, or the dense optimizer, not by the sharders' fused embedding optimizer (its
    fused_params). With it off, a placer that replicates a table is a PlacementError (unless
    the table's constraint allows data_parallel).
    The older form LearnedShardingPlanner(placer, topology) still works.
    """

    def __init__(
        self,
        topology: TorchRecTopology | Topology | None = None,
        batch_size: int | None = None,
        enumerator: Any = None,
        storage_reservation: StorageReservation | None = None,
        proposer: Any = None,
        partitioner: Any = None,
        performance_model: Any = None,
        stats: Any = None,
        constraints: Mapping[str, ParameterConstraints] | None = None,
        debug: bool = True,
        callbacks: Any = None,
        timeout_seconds: int | None = None,
        plan_loader: Any = None,
        *,
        placer: Placer | str = "learned",
        table_stats: Sequence[TableSpec] | None = None,
        optimizer: str | None = None,
        data_parallel: bool = False,
        **torchrec_kwargs: Any,
    ):
        if isinstance(topology, Placer):  # the older form: (placer, topology)
            placer, topology = topology, batch_size  # type: ignore[assignment]
            batch_size = None
        if topology is not None and not isinstance(topology, (Topology, TorchRecTopology)):
            raise TypeError(
                f"topology must be a TorchRec or recsearch Topology, got {type(topology).__name__}"
            )
        if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        unused = {
            "enumerator": enumerator,
            "proposer": proposer,
            "partitioner": partitioner,
            "performance_model": performance_model,
            "stats": stats,
            "callbacks": callbacks,
            "timeout_seconds": timeout_seconds,
            "plan_loader": plan_loader,
        }
        self.heuristic_percentage = float(
            torchrec_kwargs.pop("heuristical_storage_reservation_percentage", 0.15)
        )
        if torchrec_kwargs:
            raise TypeError(
                f"LearnedShardingPlanner got unexpected keyword arguments {sorted(torchrec_kwargs)}"
            )
        ignored = [k for k, v in unused.items() if v is not None]
        if ignored:
            warnings.warn(
                f"LearnedShardingPlanner does not use TorchRec's {', '.join(ignored)}: the "
                "placer chooses the ranks",
                stacklevel=2,
            )
        unused_fields = ignored_constraints(constraints or {})
        if unused_fields:
            listed = "; ".join(
                f"{field_name} (table{'s' if len(names) > 1 else ''} "
                f"{', '.join(repr(n) for n in names)})"
                for field_name, names in unused_fields.items()
            )
            warnings.warn(
                f"LearnedShardingPlanner does not use these ParameterConstraints fields: {listed}",
                stacklevel=2,
            )
        self.topology = topology
        self.batch_size = batch_size or TORCHREC_BATCH_SIZE
        self.storage_reservation = storage_reservation
        self.constraints = dict(constraints or {})
        self.debug = debug
        self.placer_name = placer if isinstance(placer, str) else type(placer).__name__
        self._placer = placer
        self._named: dict[tuple[str, int, bool], Placer] = {}
        self.table_stats = table_stats
        self.optimizer = optimizer
        self.data_parallel = bool(data_parallel)
        # the current plan call's tables that may be replicated (whole, data_parallel allowed)
        self._replicable: dict[str, TableSpec] = {}
        self.last_placement: Placement | None = None
        self.last_tables: list[TableSpec] = []  # the pieces placed (whole tables unless split)
        self.last_split: Split | None = None
        self.last_caps_bytes: tuple[int, ...] = ()
        self.last_optimizer = ""

    def placer_for(self, optimizer: str) -> Placer:
        """The placer: the one given, or the named one built for this optimizer, global batch
        and data_parallel setting (kept); with data_parallel it may replicate the pieces
        may_replicate allows."""
        if not isinstance(self._placer, str):
            return self._placer
        key = (optimizer, self._global_batch(), self.data_parallel)
        if key not in self._named:
            self._named[key] = planner_placer(
                self._placer,
                optimizer,
                key[1],
                replicate=self.data_parallel,
                # torchrec_dp replicates on its own: it may offer TorchRec data_parallel only
                # for the tables may_replicate allows, whatever the data_parallel setting
                may_replicate=self.may_replicate
                if self.data_parallel or self._placer == "torchrec_dp"
                else None,
            )
        return self._named[key]

    def may_replicate(self, piece: TableSpec) -> bool:
        """Whether the placer may replicate this piece in the current plan call: a whole table
        (not a column-wise piece) whose request allows data_parallel."""
        return self._replicable.get(piece.name) == piece

    def _global_batch(self) -> int:
        return self.batch_size * self._world()

    def _world(self) -> int:
        if self.topology is not None:
            return self.topology.world_size
        return dist.get_world_size() if dist.is_initialized() else 1

    def _caps(
        self, module: nn.Module, sharders: list[ModuleSharder[nn.Module]]
    ) -> tuple[tuple[int, ...], str, int]:
        """(each rank's room for tables after the storage reservation, device type, local size)."""
        if isinstance(self.topology, TorchRecTopology) or self.topology is None:
            trec = self.topology or _default_topology(None)
            reservation = self.storage_reservation or HeuristicalStorageReservation(
                percentage=self.heuristic_percentage
            )
        else:
            trec = torchrec_topology(self.topology)
            reservation = self.storage_reservation or FixedPercentageStorageReservation(0.0)
        if trec.compute_device == "cuda":
            reserved = reservation.reserve(
                trec, self.batch_size, module, sharders, constraints=self.constraints or None
            )
            return _caps_of(reserved), "cuda", trec.local_world_size
        # CPU tables live in DDR, but TorchRec's reservations shrink HBM only (on CPU its own
        # planner reserves nothing): reserve on a view whose HBM is the DDR, and take off what
        # the reservation took from either
        view = copy.deepcopy(trec)
        for dev in view.devices:
            dev.storage.hbm = dev.storage.ddr
        reserved = reservation.reserve(
            view, self.batch_size, module, sharders, constraints=self.constraints or None
        )
        caps = tuple(
            max(0, int(r.storage.hbm) + int(r.storage.ddr) - int(d.storage.ddr))
            for r, d in zip(reserved.devices, trec.devices)
        )
        return caps, trec.compute_device, trec.local_world_size

    def plan(
        self, module: nn.Module, sharders: list[ModuleSharder[nn.Module]] | None = None
    ) -> ShardingPlan:
        sharders = list(sharders) if sharders else get_default_sharders()
        start = time.perf_counter()
        caps, device, local = self._caps(module, sharders)
        tables = enumerate_tables(
            module,
            sharders,
            self.constraints,
            device,
            self.table_stats,
            self.data_parallel,
            self.batch_size,
        )
        if not tables:
            raise PlacementError(
                f"no table to shard in {type(module).__name__}: no submodule matches the "
                f"sharders {[type(s).__name__ for s in sharders]}"
            )
        optimizer = self.optimizer or embedding_optimizer(tables)
        split, placement = self._split_and_place(tables, caps, device, optimizer)
        shardings = split.ranks(placement)
        plan = build_plan(tables, shardings, len(caps), device, local)
        self.last_placement, self.last_tables, self.last_split = placement, list(split.pieces), split
        self.last_caps_bytes, self.last_optimizer = caps, optimizer
        if self.debug:
            logging.getLogger(__name__).info(
                "%s planned %d tables (%d pieces) on %d ranks in %.3f s; bytes per rank %s of %s",
                self.placer_name,
                len(tables),
                len(split.pieces),
                len(caps),
                time.perf_counter() - start,
                split.memory_per_rank(placement, optimizer),
                list(caps),
            )
        return plan

    def _split_and_place(
        self, tables: Sequence[ShardableTable], caps: tuple[int, ...], device: str, optimizer: str
    ) -> tuple[Split, Placement]:
        """Split (only what fits no rank), place the pieces; when the placer cannot pack them,
        split a few more tables one step finer (split_tables' ladder: whole, column-wise in 2,
        in more pieces, row-wise) and place again: first the table with the largest piece, then
        the 2, 4, 8, ... with the largest pieces (ties in table order), up to MAX_SPLIT_ROUNDS
        attempts. Splitting stops early when the ranks could not hold the pieces even together
        (a finer split never needs less). When no attempt is placed, the error is the placer's
        on the attempt that came closest (fewest bytes left over by largest-first packing; the
        coarsest of those)."""
        requests = [t.request for t in tables]
        # whole tables that may be replicated: data_parallel allowed, and a kernel it can run
        # (TorchRec's data_parallel is dense only: a table whose constraint pins other kernels
        # stays table-wise rather than failing the plan in build_plan)
        replicable = {
            t.request.table.name: t.request.table  # the spec the placer sees (names unique)
            for t in tables
            if ShardingKind.DATA_PARALLEL in t.request.sharding_types
            and (not t.kernels or DENSE in t.kernels)
        }
        placer = self.placer_for(optimizer)
        at_least = [0] * len(requests)
        failures: list[SplitFailure] = []
        for attempt in range(MAX_SPLIT_ROUNDS):
            split = split_tables(requests, caps, optimizer, at_least)
            if not split.pieces:
                return split, Placement((), len(caps))
            # ... and kept whole (table_wise) by this split: a column-wise piece, even one
            # as wide as its table, is never replicated (Split.ranks refuses it)
            self._replicable = {
                t.request.table.name: t.request.table
                for t, s in zip(tables, split.shardings)
                if t.request.table.name in replicable
                and s.sharding_type == ShardingKind.TABLE_WISE
            }
            free = CappedTopology.of(split.free_bytes, device)
            try:
                placement = placer.place(split.pieces, free)
                placement.validate(split.pieces, free, optimizer)
                return split, placement
            except PlacementError as err:
                failures.append(SplitFailure(split, err, split.unpacked_bytes(optimizer)))
            finer = split.finer_candidates(optimizer)
            if not finer or split.total_bytes(optimizer) > sum(caps):
                break  # nothing left to split, or no split could fit
            for i in finer[: 1 << attempt]:
                at_least[i] = split.shardings[i].step + 1
        raise closest_failure(failures, caps)

    def collective_plan(
        self,
        module: nn.Module,
        sharders: list[ModuleSharder[nn.Module]] | None = None,
        pg: dist.ProcessGroup | None = None,
    ) -> ShardingPlan:
        """Plan on rank 0 and broadcast (so every rank gets the same plan even if the placer is
        stochastic); an error on rank 0 is raised on every rank instead of hanging them."""
        if pg is None:
            if not dist.is_initialized():
                raise RuntimeError(
                    "collective_plan needs an initialized process group; use plan() otherwise"
                )
            pg = dist.GroupMember.WORLD
        if self.topology is None:
            self.topology = _default_topology(dist.get_world_size(pg))
        payload: list[Any] = [None]
        if dist.get_rank(pg) == 0:
            try:
                payload[0] = ("ok", self.plan(module, sharders))
            except Exception as err:  # noqa: BLE001 - re-raised on every rank below
                payload[0] = ("error", f"{type(err).__name__}: {err}")
        device = None
        if dist.get_backend(pg) == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        dist.broadcast_object_list(
            payload, src=dist.get_global_rank(pg, 0), group=pg, device=device
        )
        status, value = payload[0]
        if status != "ok":
            raise PlacementError(f"planning on rank 0 failed: {value}")
        return value
