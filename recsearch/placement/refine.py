"""Local search after a placer: move single tables off the bottleneck devices while the cost
net says the step gets cheaper.

A placer (learned or greedy) decides each table once, in order; afterwards the device that sets
the step time (the slowest compute, or the largest all-to-all) may still hold a table that
another device could take more cheaply. `refine` tries every such move under the cost net and
the memory caps, applies the best one, and repeats until no move helps or the time is up.

Costs come from the cost net's heads on summed per-table pre-activations (`HeadEvaluator.pre`), so
a move costs two head evaluations, batched over all candidate moves; the all-to-all is the comm
model's rule on each device's sum of dims (`comm.comm_ms_of_dims`). Estimates are kept monotone:
a device's estimate never falls when a table joins it and never rises when one leaves (the net's
bounded interaction term can say otherwise, and a search would seek out exactly those errors).
The objective is the step estimate (max compute + max all-to-all) plus a small share of the mean
device time, so that ties at the maximum (two devices equally slow) can be broken one move at a
time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recsearch.placement.comm import comm_ms_of_dims
from recsearch.placement.cost_net import CostNet
from recsearch.placement.types import (
    DEFAULT_OPTIMIZER,
    Placement,
    Placer,
    rank_caps,
    table_memory_bytes,
)
from recsearch.types import TableSpec, Topology

TIE_BREAK = 1e-3  # weight of the mean device time beside the step estimate


@dataclass(frozen=True)
class RefineReport:
    """What one refine call did: moves applied, the estimate before and after, seconds spent."""

    moves: int
    start_ms: float
    end_ms: float
    seconds: float
    stopped: str  # "converged", "max_moves" or "time"


def refine(
    tables: Sequence[TableSpec],
    topology: Topology,
    placement: Placement,
    cost_net: CostNet,
    optimizer: str = DEFAULT_OPTIMIZER,
    max_seconds: float = 1.0,
    max_moves: int = 10_000,
) -> tuple[Placement, RefineReport]:
    """The placement after best-improvement single-table moves under cost_net (see the module
    docstring); the input placement when nothing helps. Memory caps are kept."""
    t0 = time.perf_counter()
    world = placement.world_size
    meta = cost_net.meta
    if meta is None:
        raise ValueError("the cost net has no metadata (was it trained?)")
    heads = cost_net.heads()
    table_pre = heads.pre(cost_net.encode_tables(tables).numpy().astype(np.float64))  # [T, M, P]
    dims = np.asarray([t.dim for t in tables], dtype=np.float64)
    mem = np.asarray([table_memory_bytes(t, optimizer) for t in tables], dtype=np.int64)
    caps = np.asarray(rank_caps(topology), dtype=np.int64)
    ranks = np.asarray(placement.ranks, dtype=np.int64)
    dev_pre = np.zeros((world, *table_pre.shape[1:]))
    np.add.at(dev_pre, ranks, table_pre)
    dev_dims = np.bincount(ranks, weights=dims, minlength=world).astype(np.float64)
    dev_mem = np.bincount(ranks, weights=mem, minlength=world).astype(np.int64)
    counts = np.bincount(ranks, minlength=world)
    dev_ms = np.where(counts > 0, heads.ms_from_pre(dev_pre).sum(-1), 0.0)  # fwd + bwd per device

    def comm(d: np.ndarray) -> np.ndarray:
        return comm_ms_of_dims(d, cost_net.comm_model, meta.batch_size, world)

    def objective(compute: np.ndarray, comm_ms: np.ndarray) -> np.ndarray:
        """Step estimate + TIE_BREAK x mean device time, over the last axis."""
        return compute.max(-1) + comm_ms.max(-1) + TIE_BREAK * (compute + comm_ms).mean(-1)

    now = float(objective(dev_ms, comm(dev_dims)))
    start = float(dev_ms.max() + comm(dev_dims).max())
    moves, stopped = 0, "converged"
    while True:
        if moves >= max_moves:
            stopped = "max_moves"
            break
        if time.perf_counter() - t0 > max_seconds:
            stopped = "time"
            break
        comm_now = comm(dev_dims)
        sources = {int(np.argmax(dev_ms)), int(np.argmax(comm_now))}
        cand = np.flatnonzero(np.isin(ranks, list(sources)))  # tables on a bottleneck device
        if cand.size == 0:
            break
        src = ranks[cand]  # [C]
        # source without the table (monotone: never dearer than before)
        left = np.minimum(heads.ms_from_pre(dev_pre[src] - table_pre[cand]).sum(-1), dev_ms[src])
        left = np.where(counts[src] > 1, left, 0.0)
        # every destination with the table (monotone: never cheaper than before)
        joined = heads.ms_from_pre(dev_pre[None, :] + table_pre[cand][:, None]).sum(-1)  # [C, D]
        joined = np.maximum(joined, dev_ms[None, :])
        diag = np.arange(world)[None, :] == src[:, None]  # "moving" a table to its own device
        # [C, D(dest), D]: every device's time and dims after moving candidate c to dest
        new_dims = np.broadcast_to(dev_dims, (cand.size, world, world)).copy()  # [C, D(dest), D]
        c_idx = np.arange(cand.size)
        new_dims[c_idx, :, src] -= dims[cand][:, None]
        new_dims[:, np.arange(world), np.arange(world)] += dims[cand][:, None]
        full = np.broadcast_to(dev_ms, (cand.size, world, world)).copy()  # [C, D(dest), D]
        full[c_idx, :, src] = left[:, None]
        full[:, np.arange(world), np.arange(world)] = joined
        scores = objective(full, comm(new_dims))  # [C, D]
        fits = dev_mem[None, :] + mem[cand][:, None] <= caps[None, :]
        scores = np.where(fits & ~diag, scores, np.inf)
        best = np.unravel_index(int(np.argmin(scores)), scores.shape)
        if not scores[best] < now * (1 - 1e-9):
            break
        c, dest = int(best[0]), int(best[1])
        t, s = int(cand[c]), int(src[c])
        dev_pre[s] -= table_pre[t]
        dev_pre[dest] += table_pre[t]
        dev_dims[s] -= dims[t]
        dev_dims[dest] += dims[t]
        dev_mem[s] -= mem[t]
        dev_mem[dest] += mem[t]
        counts[s] -= 1
        counts[dest] += 1
        dev_ms[s], dev_ms[dest] = left[c], joined[c, dest]
        ranks[t] = dest
        now = float(scores[best])
        moves += 1
    end = float(dev_ms.max() + comm(dev_dims).max())
    out = Placement(tuple(int(r) for r in ranks), world)
    return out, RefineReport(moves, start, end, time.perf_counter() - t0, stopped)


class RefinedPlacer:
    """Any placer followed by `refine` under a cost net (by default the placer's own, when it has
    one: a LearnedPlacer's or a BestOfPlacer's judge). last_report: the last refine's report."""

    def __init__(
        self,
        placer: Placer,
        cost_net: CostNet,
        optimizer: str = DEFAULT_OPTIMIZER,
        max_seconds: float = 1.0,
    ):
        self.placer, self.cost_net = placer, cost_net
        self.optimizer, self.max_seconds = optimizer, max_seconds
        self.last_report: RefineReport | None = None

    def place(self, tables: Sequence[TableSpec], topology: Topology) -> Placement:
        first = self.placer.place(tables, topology)
        placement, self.last_report = refine(
            tables, topology, first, self.cost_net, self.optimizer, self.max_seconds
        )
        return placement
