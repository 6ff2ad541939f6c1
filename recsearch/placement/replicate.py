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

Screening. Placing every candidate set with an expensive placer (the learned stack: policy,
best-of and refine, about a second on 500 tables and 64 ranks) multiplies its time by up to 1 +
len(SHARES). With a `screen` (a fast placer; registry.checked_and_refined passes dim_greedy
and screen_keep 2), the screen places every table and the rest of every set, and the wrapped
placer places, besides every table, only the screen_keep sets the screen's placements rate
cheapest, of those they rate cheaper than the screen's table-wise placement (none when no set
is). The result is still never rated worse than the wrapped placer alone (its table-wise
placement is always a candidate); what a screen can miss is a set the wrapped placer would have
made pay where the screen's placements do not. `tools/bench_replication_screen.py` measures
that on held-out tasks. When the screen cannot place every table, every set is placed by the
wrapped placer, as without a screen.

Training semantics: TorchRec trains a data-parallel table with the dense kernel, so its
optimizer is the one the model applies to it in backward (or the dense optimizer), not the fused
embedding optimizer; that is why replication is opt-in (LearnedShardingPlanner(data_parallel=True),
`place eval`'s dp_ methods).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from recsearch.placement.cost_net import CostNet
from recsearch.placement.types import (
    DEFAULT_OPTIMIZER,
    BesideCopies,
    Placement,
    PlacementError,
    Placer,
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


@dataclass(frozen=True)
class ReplicationReport:
    """What one ReplicatingPlacer.place did. sets: the candidate sets whose copies fit every
    rank; screened: how many of them the screen placed (0 without a screen, or when it could
    not place every table); promising: how many of those the screen rated cheaper than its
    table-wise placement; placed: how many sets the wrapped placer placed (its placement of
    every table not counted); chosen: how many tables the kept placement replicates; seconds:
    the time spent."""

    sets: int
    screened: int
    placed: int
    promising: int
    chosen: int
    seconds: float


@dataclass(frozen=True)
class Shortlist:
    """What a screen kept: sets, the ones the wrapped placer is to place (cheapest under the
    screen first); promising: how many sets the screen rated cheaper than every table placed
    table-wise."""

    sets: tuple[tuple[int, ...], ...]
    promising: int


class ReplicatingPlacer:
    """A table-wise placer, and the same placer on what is left after replicating each
    candidate set of small tables; the placement the cost net rates cheapest (module docstring).

    cost_net_for: the judge for a topology. batch_size: the global batch the placement is for
    (None: the net's own), which sets the thresholds and the estimate (CostNet.predict's
    batch_size).
    screen: a fast placer that shortlists the candidate sets (None: every set is placed by
    placer, as the module docstring says). With one, the screen places every table and the rest
    of every candidate set, and only the screen_keep sets it rates cheapest, among those it rates
    cheaper than its own table-wise placement, are placed by placer; the result is still the
    cheapest of placer's table-wise placement and those, so never rated worse than placer alone.
    For an expensive placer (the learned stack, seconds on hundreds of tables) beside fast ones.
    last_choice: how many tables the kept placement replicates; last_seconds: time spent;
    last_report: both and what was screened and placed (ReplicationReport)."""

    def __init__(
        self,
        placer: Placer,
        cost_net_for: Callable[[Topology], CostNet],
        optimizer: str = DEFAULT_OPTIMIZER,
        shares: Sequence[float] = SHARES,
        may_replicate: Callable[[TableSpec], bool] | None = None,
        batch_size: int | None = None,
        screen: Placer | None = None,
        screen_keep: int = 1,
    ):
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if screen_keep < 1:
            raise ValueError(f"screen_keep must be >= 1, got {screen_keep}")
        self.placer, self.cost_net_for = placer, cost_net_for
        self.optimizer, self.shares, self.may_replicate = optimizer, tuple(shares), may_replicate
        self.batch_size = batch_size
        self.screen, self.screen_keep = screen, screen_keep
        self.last_choice = 0
        self.last_seconds = 0.0
        self.last_report: ReplicationReport | None = None

    def place(self, tables: Sequence[TableSpec], topology: Topology) -> Placement:
        t0 = time.perf_counter()
        net = self.cost_net_for(topology)
        if net.meta is None:
            raise ValueError("the cost net has no metadata (was it trained?)")
        batch = self.batch_size or net.meta.batch_size

        def estimate(placement: Placement) -> float:
            return net.predict(tables, placement, topology, batch).total_ms

        best = self.placer.place(tables, topology)
        best_ms = estimate(best)
        chosen_len = 0
        sets = self._fitting_sets(tables, topology, batch)
        shortlist = self._shortlist(tables, topology, sets, estimate) if sets else None
        to_place = sets if shortlist is None else list(shortlist.sets)
        placed = 0
        for chosen in to_place:
            placement = self._place_rest(self.placer, tables, chosen, topology)
            if placement is None:
                continue
            placed += 1
            ms = estimate(placement)
            if ms < best_ms:
                best, best_ms, chosen_len = placement, ms, len(chosen)
        self.last_choice = chosen_len
        self.last_seconds = time.perf_counter() - t0
        self.last_report = ReplicationReport(
            sets=len(sets),
            screened=0 if shortlist is None else len(sets),
            placed=placed,
            promising=0 if shortlist is None else shortlist.promising,
            chosen=chosen_len,
            seconds=self.last_seconds,
        )
        return best

    def _shortlist(
        self,
        tables: Sequence[TableSpec],
        topology: Topology,
        sets: Sequence[tuple[int, ...]],
        estimate: Callable[[Placement], float],
    ) -> Shortlist | None:
        """The screen_keep sets the screen's placements rate cheapest, of those they rate cheaper
        than the screen's placement of every table (cheapest first); None without a screen, or
        when the screen cannot place every table (then placer places every set)."""
        if self.screen is None:
            return None
        try:
            plain_ms = estimate(self.screen.place(tables, topology))
        except PlacementError:
            return None
        rated = []
        for n, chosen in enumerate(sets):
            rest = self._place_rest(self.screen, tables, chosen, topology)
            if rest is not None and (ms := estimate(rest)) < plain_ms:
                rated.append((ms, n, chosen))
        best = [chosen for _ms, _n, chosen in sorted(rated)[: self.screen_keep]]
        return Shortlist(tuple(best), len(rated))

    def _fitting_sets(
        self, tables: Sequence[TableSpec], topology: Topology, batch: int
    ) -> list[tuple[int, ...]]:
        """The candidate sets whose copies fit every rank's cap, smallest first (the sets only
        grow: after the first that does not fit, none does)."""
        out = []
        for chosen in replication_sets(
            tables, topology.world_size, batch, self.shares, self.may_replicate
        ):
            if not BesideCopies.of(tables, chosen, topology, self.optimizer).fits():
                break
            out.append(chosen)
        return out

    def _place_rest(
        self,
        placer: Placer,
        tables: Sequence[TableSpec],
        chosen: tuple[int, ...],
        topology: Topology,
    ) -> Placement | None:
        """The tables in chosen replicated and placer's placement of the rest on the room the
        copies leave each rank; None when placer finds no placement there."""
        part = BesideCopies.of(tables, chosen, topology, self.optimizer)
        rest_ranks: tuple[int, ...] = ()
        if part.rest:
            try:
                rest_ranks = placer.place(part.tables(tables), part.topology()).ranks
            except PlacementError:
                return None
        placement = part.merged(rest_ranks)
        placement.validate(tables, topology, self.optimizer)
        return placement
