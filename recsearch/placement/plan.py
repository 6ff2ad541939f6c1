"""Placements as TorchRec sharding plans, a TorchRec-compatible planner around any Placer, and
TorchRec's own planner as a baseline. The only placement module that imports torchrec.distributed.

Switching an existing TorchRec pipeline to a learned (or baseline) placement is one line:

    planner = EmbeddingShardingPlanner(topology=topology)             # before
    planner = LearnedShardingPlanner(placer=my_placer, topology=topology)  # after
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    model = DistributedModelParallel(model, plan=plan, ...)

LearnedShardingPlanner reads the tables from every EmbeddingBagCollection in the module (rows,
dim, dtype, features; pooling factors and reuse histograms from optional TableSpec statistics by
table name), asks the placer for a table -> rank placement, checks it against the memory cap, and
returns the table-wise ShardingPlan that `construct_module_sharding_plan` + `table_wise(rank=...)`
build (plan keys are module paths relative to the module given, e.g.
"model.sparse_arch.embedding_bag_collection" for recsearch's DLRMTrain).

APIs used are in both TorchRec 1.6.1 and 1.8.0: construct_module_sharding_plan, table_wise,
EmbeddingShardingPlanner(topology, batch_size, storage_reservation, constraints), Topology(world_size,
compute_device, hbm_cap, ddr_cap, local_world_size), ParameterConstraints(sharding_types,
pooling_factors), FixedPercentageStorageReservation, apply_optimizer_in_backward.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner import Topology as TorchRecTopology
from torchrec.distributed.planner.storage_reservations import (
    FixedPercentageStorageReservation,
)
from torchrec.distributed.planner.types import ParameterConstraints, PlannerError
from torchrec.distributed.sharding_plan import (
    construct_module_sharding_plan,
    table_wise,
)
from torchrec.distributed.types import ModuleSharder, ShardingPlan, ShardingType
from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from recsearch.placement.types import (
    DEFAULT_OPTIMIZER,
    Placement,
    PlacementError,
    Placer,
    check_fits,
    format_bytes,
)
from recsearch.types import TableSpec, Topology

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


def _local_size(world_size: int, device_type: str) -> int:
    if "LOCAL_WORLD_SIZE" in os.environ:
        return int(os.environ["LOCAL_WORLD_SIZE"])
    if device_type == "cuda" and torch.cuda.is_available():
        return min(world_size, torch.cuda.device_count())
    return world_size


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
    """ShardingPlan putting table name -> rank (table-wise) for every table of the EBCs."""
    local = local_size or _local_size(world_size, device_type)
    plan = {}
    for path, ebc in ebcs.items():
        names = [c.name for c in ebc.embedding_bag_configs()]
        missing = [n for n in names if n not in ranks]
        if missing:
            raise PlacementError(f"no rank for tables {missing[:10]} of {path or '<root>'}")
        bad = {n: ranks[n] for n in names if not 0 <= ranks[n] < world_size}
        if bad:
            raise PlacementError(f"ranks outside 0..{world_size - 1}: {bad}")
        kernel = {"compute_kernel": compute_kernel} if compute_kernel else {}
        plan[path] = construct_module_sharding_plan(
            ebc,
            per_param_sharding={n: table_wise(rank=ranks[n], **kernel) for n in names},
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
    is table name -> rank."""
    names = [c.name for c in ebc.embedding_bag_configs()]
    if isinstance(placement, Placement):
        if len(placement) != len(names):
            raise PlacementError(f"placement has {len(placement)} tables, the EBC has {len(names)}")
        ranks = dict(zip(names, placement.ranks))
        world = world_size or placement.world_size
    else:
        ranks = dict(placement)
        world = world_size or (max(ranks.values()) + 1)
    return plan_from_ranks({module_path: ebc}, ranks, world, device_type, **kwargs)


def plan_ranks(plan: ShardingPlan) -> dict[str, dict[str, tuple[str, list[int]]]]:
    """module path -> table -> (sharding type, ranks): for checks and logs."""
    return {
        path: {t: (ps.sharding_type, list(ps.ranks or [])) for t, ps in mp.items()}  # type: ignore[union-attr]
        for path, mp in plan.plan.items()
    }


# --------------------------------------------------------------------------------------------
# The planner


def _as_topology(
    topology: Topology | TorchRecTopology | None, world_size: int | None = None
) -> Topology:
    if isinstance(topology, Topology):
        return topology
    if isinstance(topology, TorchRecTopology):
        dev = topology.compute_device
        storage = topology.devices[0].storage
        cap = storage.hbm if dev == "cuda" else storage.ddr
        return Topology(topology.world_size, int(cap), dev)
    world = world_size or (dist.get_world_size() if dist.is_initialized() else 1)
    if torch.cuda.is_available():
        cap = torch.cuda.get_device_properties(0).total_memory
        return Topology(world, int(cap), "cuda")
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return Topology(world, int(ram // _local_size(world, "cpu")), "cpu")


class LearnedShardingPlanner:
    """A drop-in for TorchRec's EmbeddingShardingPlanner (plan / collective_plan) that places
    tables table-wise with any Placer (learned policy or baseline).

    topology: recsearch Topology, a TorchRec planner Topology (its HBM cap on cuda, DDR cap on
    cpu), or None (the process group's world size and the device's whole memory).
    table_stats: TableSpecs with pooling factors / reuse histograms, matched by table name.
    """

    def __init__(
        self,
        placer: Placer,
        topology: Topology | TorchRecTopology | None = None,
        table_stats: Sequence[TableSpec] | None = None,
        optimizer: str = DEFAULT_OPTIMIZER,
        compute_kernel: str | None = None,
    ):
        self.placer = placer
        self.topology = topology
        self.table_stats = table_stats
        self.optimizer = optimizer
        self.compute_kernel = compute_kernel
        self.last_placement: Placement | None = None
        self.last_tables: list[TableSpec] = []

    def place(self, module: nn.Module) -> tuple[list[TableSpec], Placement, Topology]:
        ebcs = find_ebcs(module)
        if not ebcs:
            raise PlacementError(f"no EmbeddingBagCollection in {type(module).__name__}")
        tables = tables_of(ebcs, self.table_stats)
        topo = _as_topology(self.topology)
        placement = self.placer.place(tables, topo)
        placement.validate(tables, topo, self.optimizer)
        self.last_placement, self.last_tables = placement, tables
        return tables, placement, topo

    def plan(
        self, module: nn.Module, sharders: list[ModuleSharder[nn.Module]] | None = None
    ) -> ShardingPlan:
        tables, placement, topo = self.place(module)
        return plan_from_ranks(
            find_ebcs(module),
            placement.to_dict(tables),
            topo.world_size,
            topo.compute_device,
            sharders,
            compute_kernel=self.compute_kernel,
        )

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
            self.topology = _as_topology(None, dist.get_world_size(pg))
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


# --------------------------------------------------------------------------------------------
# TorchRec's planner as a baseline


def _optimizer_class(name: str) -> tuple[type[torch.optim.Optimizer], dict[str, float]]:
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    classes: dict[str, type[torch.optim.Optimizer]] = {
        "sgd": torch.optim.SGD,
        "adagrad": torch.optim.Adagrad,
        "rowwise_adagrad": RowWiseAdagrad,
        "adam": torch.optim.Adam,
    }
    if name not in classes:
        raise ValueError(f"unknown embedding optimizer {name!r}")
    return classes[name], {"lr": 0.01}


class TorchRecPlacer:
    """TorchRec's EmbeddingShardingPlanner, table-wise only, as a Placer.

    The tables become an EmbeddingBagCollection on the meta device with the embedding optimizer
    applied in backward (so the planner counts its state like table_memory_bytes does), each
    constrained to table_wise with the fused kernel (whole table in device memory) and its pooling
    factor; the planner gets a Topology of the same
    world size with the cap as HBM (cuda) or DDR (cpu) and no storage reservation. TorchRec also
    reserves room for each shard's input/output buffers, so on very tight caps it can fail where
    the greedy placers succeed: that is reported as PlacementError, not relaxed.
    batch_size: the global batch (TorchRec's planner takes the per-rank one: batch / world).
    """

    def __init__(
        self, batch_size: int = 8192, optimizer: str = DEFAULT_OPTIMIZER, reservation: float = 0.0
    ):
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.reservation = reservation

    def place(self, tables: Sequence[TableSpec], topology: Topology) -> Placement:
        from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
        from torchrec.optim.apply_optimizer_in_backward import (
            apply_optimizer_in_backward,
        )

        check_fits(tables, topology, self.optimizer)
        ebc = EmbeddingBagCollection(
            tables=[
                EmbeddingBagConfig(
                    name=t.name,
                    embedding_dim=t.dim,
                    num_embeddings=t.num_rows,
                    feature_names=list(t.features),
                    data_type=DataType.FP16 if t.bytes_per_value == 2 else DataType.FP32,
                )
                for t in tables
            ],
            device=torch.device("meta"),
        )
        opt_cls, opt_kwargs = _optimizer_class(self.optimizer)
        apply_optimizer_in_backward(opt_cls, ebc.parameters(), opt_kwargs)
        cap = topology.device_memory_bytes
        world = topology.world_size
        caps = (
            {"hbm_cap": cap}
            if topology.compute_device == "cuda"
            else {"hbm_cap": 0, "ddr_cap": cap}
        )
        trec_topo = TorchRecTopology(
            world_size=world, compute_device=topology.compute_device, local_world_size=world, **caps
        )
        constraints = {
            t.name: ParameterConstraints(
                sharding_types=[ShardingType.TABLE_WISE.value],
                # whole tables in device memory: on cuda the planner would otherwise pick UVM
                # caching and keep tables in host memory, outside the cap
                compute_kernels=[EmbeddingComputeKernel.FUSED.value],
                pooling_factors=[t.pooling_factor] * len(t.features),
            )
            for t in tables
        }
        planner = EmbeddingShardingPlanner(
            topology=trec_topo,
            batch_size=max(1, self.batch_size // world),
            storage_reservation=FixedPercentageStorageReservation(self.reservation),
            constraints=constraints,
            debug=False,
        )
        try:
            plan = planner.plan(ebc, [EmbeddingBagCollectionSharder()])
        except PlannerError as err:
            total = sum(t.size_bytes for t in tables)
            raise PlacementError(
                f"torchrec planner found no table-wise plan for {len(tables)} tables "
                f"({format_bytes(total)} of weights) on {world} x {format_bytes(cap)}: "
                f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
            ) from err
        ranks = {t: r[0] for t, (_, r) in plan_ranks(plan)[""].items()}
        placement = Placement(tuple(ranks[t.name] for t in tables), world)
        placement.validate(tables, topology, self.optimizer)  # never hand back an over-commit
        return placement
