"""Replicating small tables (data-parallel) where the cost model says the step gets cheaper.

Under table-wise sharding every table's pooled output crosses the all-to-all, forward and
backward, whatever its size. A replicated table (TorchRec's data_parallel: a copy on every rank,
looked up for the rank's own samples) sends nothing there; instead its dense gradient, every row,
is all-reduced once a step. Per table, with W ranks, global batch B, R rows and dim d, a balanced
all-to-all moves about 2 (W - 1) / W^2 x B x d values per rank for it (forward and backward), the
ring all-reduce 2 (W - 1) / W x R x d: replicating pays when R is below about B / W, one rank's
share of the batch. That is where one-hot public data sets spend their step on a slow
interconnect: most of Criteo's and Avazu's 22-26 features have fewer rows than a rank's batch.

`ReplicatingPlacer` wraps any table-wise placer: it places all tables, then for each threshold
(tables with fewer rows than share x B / W, for every share in SHARES) places the rest on the room
the copies leave and scores the whole placement with the cost model (each rank's compute plus
the replicas' kernel for its own samples; the all-to-all of the rest plus the all-reduce,
`comm.comm_costs`); the cheapest is kept, the table-wise one on ties, so it is never rated worse
than the wrapped placer alone. B is the batch the placement is for (the planner's global batch);
the cost net knows kernels at its samples' batch, so its compute estimates are scaled by B over
that batch (kernel work is linear in the samples), while the all-to-all is priced at B and the
all-reduce, which moves the gradient whatever the batch, as it is (`CostNet.predict`'s
batch_size). Only tables `may_replicate` allows are candidates (the drop-in
planner: tables whose constraints and sharder allow data_parallel).

Training semantics: TorchRec trains a data-parallel table with the dense kernel, so its
optimizer is the one the model applies to it in backward (or the dense optimizer), not the fused
embedding optimizer; that is why replication is opt-in (LearnedShardingPlanner(data_parallel=True),
`place eval`'s dp_ methods).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from recsearch.placement.cost_net import CostNet
from recsearch.placement.types import (
    DEFAULT_OPTIMIZER,
    REPLICATED,
    CappedTopology,
    Placement,
    PlacementError,
    Placer,
    rank_caps,
    table_memory_bytes,
)
from recsearch.types import TableSpec, Topology

# row thresholds tried, as multiples of one rank's share of the global batch (B / W)
SHARES = (0.25, 0.5, 1.0, 2.0)


def replication_sets(
    tables: Sequence[TableSpec],
    world_size: int,
    batch_size: int,
    shares: Sequence[float] = SHARES,
    may_replicate: Callable[[TableSpec], bool] | None = None,
) -> list[tuple[int, ...]]:
    """The distinct, non-empty sets of table indices with fewer rows than share x batch / world,
    smallest threshold first (each set contains the one before)."""
    if world_size <= 1:
        return []
    out: list[tuple[int, ...]] = []
    for share in sorted(shares):
        limit = share * batch_size / world_size
        chosen = tuple(
            i
            for i, t in enumerate(tables)
            if t.num_rows < limit and (may_replicate is None or may_replicate(t))
        )
        if chosen and (not out or chosen != out[-1]):
            out.append(chosen)
    return out


class ReplicatingPlacer:
    """A table-wise placer, and the same placer on what is left after replicating each
    candidate set of small tables; the placement the cost net rates cheapest (module docstring).

    cost_net_for: the judge for a topology. batch_size: the global batch the placement is for
    (None: the net's own), which sets the thresholds and the estimate (CostNet.predict's
    batch_size).
    last_choice: how many tables the kept placement replicates; last_seconds: time spent."""

    def __init__(
        self,
        placer: Placer,
        cost_net_for: Callable[[Topology], CostNet],
        optimizer: str = DEFAULT_OPTIMIZER,
        shares: Sequence[float] = SHARES,
        may_replicate: Callable[[TableSpec], bool] | None = None,
        batch_size: int | None = None,
    ):
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.placer, self.cost_net_for = placer, cost_net_for
        self.optimizer, self.shares, self.may_replicate = optimizer, tuple(shares), may_replicate
        self.batch_size = batch_size
        self.last_choice = 0
        self.last_seconds = 0.0

    def place(self, tables: Sequence[TableSpec], topology: Topology) -> Placement:
        t0 = time.perf_counter()
        net = self.cost_net_for(topology)
        if net.meta is None:
            raise ValueError("the cost net has no metadata (was it trained?)")
        world = topology.world_size
        batch = self.batch_size or net.meta.batch_size
        best = self.placer.place(tables, topology)
        best_ms = net.predict(tables, best, topology, batch).total_ms
        self.last_choice = 0
        caps = rank_caps(topology)
        for chosen in replication_sets(tables, world, batch, self.shares, self.may_replicate):
            copies = sum(table_memory_bytes(tables[i], self.optimizer) for i in chosen)
            room = [c - copies for c in caps]
            if min(room) < 0:
                break  # the sets only grow: no larger one fits either
            picked = set(chosen)
            rest = [i for i in range(len(tables)) if i not in picked]
            ranks = [REPLICATED] * len(tables)
            if rest:
                try:
                    sub = self.placer.place(
                        [tables[i] for i in rest], CappedTopology.of(room, topology.compute_device)
                    )
                except PlacementError:
                    continue
                for j, i in enumerate(rest):
                    ranks[i] = sub.ranks[j]
            placement = Placement(tuple(ranks), world)
            placement.validate(tables, topology, self.optimizer)
            ms = net.predict(tables, placement, topology, batch).total_ms
            if ms < best_ms:
                best, best_ms, self.last_choice = placement, ms, len(chosen)
        self.last_seconds = time.perf_counter() - t0
        return best
