"""TorchRec's own planner as a placement baseline (`make_placer("torchrec")`), and the TorchRec
Topology of a recsearch Topology (each rank's cap as its HBM on cuda, DDR on cpu), which the
drop-in planner (plan.py) uses too. Imports torchrec.distributed; nothing in placement imports
this module at import time except plan.py.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import torch
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner import Topology as TorchRecTopology
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.planner.types import ParameterConstraints, PlannerError
from torchrec.distributed.types import ShardingType
from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from recsearch.placement.types import (
    DEFAULT_OPTIMIZER,
    REPLICATED,
    Placement,
    PlacementError,
    check_fits,
    format_bytes,
    rank_caps,
)
from recsearch.types import TableSpec, Topology


def default_local_world_size(world_size: int, device_type: str) -> int:
    """Ranks per host: LOCAL_WORLD_SIZE, else the visible GPUs (cuda), else every rank."""
    if "LOCAL_WORLD_SIZE" in os.environ:
        return int(os.environ["LOCAL_WORLD_SIZE"])
    if device_type == "cuda" and torch.cuda.is_available():
        return min(world_size, torch.cuda.device_count())
    return world_size


def torchrec_topology(
    topology: Topology, local_world_size: int | None = None
) -> TorchRecTopology:
    """TorchRec's Topology with each rank's cap (HBM on cuda, DDR on cpu)."""
    caps = rank_caps(topology)
    device = topology.compute_device
    trec = TorchRecTopology(
        world_size=topology.world_size,
        compute_device=device,
        local_world_size=local_world_size or default_local_world_size(topology.world_size, device),
        **({"hbm_cap": max(caps)} if device == "cuda" else {"hbm_cap": 0, "ddr_cap": max(caps)}),
    )
    for dev, cap in zip(trec.devices, caps):
        if device == "cuda":
            dev.storage.hbm = cap
        else:
            dev.storage.ddr = cap
    return trec




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


class _NoSpecWarning(logging.Filter):
    """Drops TorchRec's "Sharding spec not found" warning, which its planner logs for every
    data-parallel table (a replica has no shard spec): expected, not a problem."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Sharding spec not found")


class TorchRecPlacer:
    """TorchRec's EmbeddingShardingPlanner, table-wise only (or, with data_parallel, table-wise
    or data-parallel as its performance model prefers: `make_placer("torchrec_dp")`), as a Placer.

    The tables become an EmbeddingBagCollection on the meta device with the embedding optimizer
    applied in backward (so the planner counts its state like table_memory_bytes does), each
    constrained to table_wise with the fused kernel (whole table in device memory) and its pooling
    factor; the planner gets a Topology of the same
    world size with the cap as HBM (cuda) or DDR (cpu) and no storage reservation. TorchRec also
    reserves room for each shard's input/output buffers, so on very tight caps it can fail where
    the greedy placers succeed: that is reported as PlacementError, not relaxed.
    batch_size: the global batch (TorchRec's planner takes the per-rank one: batch / world).
    data_parallel: also offer TorchRec's planner data_parallel (dense kernel, a copy on every
    rank) for every table; its data-parallel tables come back REPLICATED. Constraints are per
    table, not per sharding type, so the dense kernel is then offered for table_wise too and
    TorchRec's model may rank a table-wise option by it; only the ranks are taken (and measured
    with the fused kernel, as every table-wise table here). may_replicate: with data_parallel,
    only the tables it allows are offered data_parallel (LearnedShardingPlanner passes its own:
    whole tables whose constraints allow it); None: every table.
    """

    def __init__(
        self,
        batch_size: int = 8192,
        optimizer: str = DEFAULT_OPTIMIZER,
        reservation: float = 0.0,
        data_parallel: bool = False,
        may_replicate: Callable[[TableSpec], bool] | None = None,
    ):
        self.batch_size = batch_size
        self.may_replicate = may_replicate
        self.optimizer = optimizer
        self.reservation = reservation
        self.data_parallel = data_parallel

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
                    # unique per table: column-wise pieces of one table share its features
                    feature_names=[f"{t.name}:{j}" for j in range(len(t.features))],
                    data_type=DataType.FP16 if t.bytes_per_value == 2 else DataType.FP32,
                )
                for t in tables
            ],
            device=torch.device("meta"),
        )
        opt_cls, opt_kwargs = _optimizer_class(self.optimizer)
        apply_optimizer_in_backward(opt_cls, ebc.parameters(), opt_kwargs)
        world = topology.world_size
        cap = max(rank_caps(topology))
        trec_topo = torchrec_topology(topology, local_world_size=world)
        table_wise = ([ShardingType.TABLE_WISE.value], [EmbeddingComputeKernel.FUSED.value])
        # TorchRec's data_parallel runs the dense kernel only
        either = (
            [ShardingType.TABLE_WISE.value, ShardingType.DATA_PARALLEL.value],
            [EmbeddingComputeKernel.FUSED.value, EmbeddingComputeKernel.DENSE.value],
        )

        def options(t: TableSpec) -> tuple[list[str], list[str]]:
            """(sharding types, compute kernels) TorchRec may choose from for t."""
            if self.data_parallel and (self.may_replicate is None or self.may_replicate(t)):
                return either
            return table_wise

        constraints = {
            t.name: ParameterConstraints(
                sharding_types=list(kinds),
                # whole tables in device memory: on cuda the planner would otherwise pick UVM
                # caching and keep tables in host memory, outside the cap
                compute_kernels=list(kernels),
                # the spec's pooling is the sum over its features; TorchRec's is per feature
                pooling_factors=[t.pooling_factor / len(t.features)] * len(t.features),
            )
            for t in tables
            for kinds, kernels in (options(t),)
        }
        planner = EmbeddingShardingPlanner(
            topology=trec_topo,
            batch_size=max(1, self.batch_size // world),
            storage_reservation=FixedPercentageStorageReservation(self.reservation),
            constraints=constraints,
            debug=False,
        )
        quiet = _NoSpecWarning()  # TorchRec warns once per data-parallel table: it has no shards
        logging.getLogger().addFilter(quiet)
        try:
            plan = planner.plan(ebc, [EmbeddingBagCollectionSharder()])
        except PlannerError as err:
            total = sum(t.size_bytes for t in tables)
            kind = "table-wise or data-parallel" if self.data_parallel else "table-wise"
            raise PlacementError(
                f"torchrec planner found no {kind} plan for {len(tables)} tables "
                f"({format_bytes(total)} of weights) on {world} x {format_bytes(cap)}: "
                f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
            ) from err
        finally:
            logging.getLogger().removeFilter(quiet)
        ranks = {
            name: REPLICATED
            if ps.sharding_type == ShardingType.DATA_PARALLEL.value
            else list(ps.ranks or [])[0]
            for name, ps in plan.plan[""].items()  # type: ignore[union-attr]
        }
        placement = Placement(tuple(ranks[t.name] for t in tables), world)
        placement.validate(tables, topology, self.optimizer)  # never hand back an over-commit
        return placement
