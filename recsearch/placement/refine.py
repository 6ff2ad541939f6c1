"""Local search after a placer: move tables off the bottleneck devices, or exchange them with
tables elsewhere, while the cost net says the step gets cheaper.

A placer (learned or greedy) decides each table once, in order; afterwards the device that sets
the step time (the slowest compute, or the largest all-to-all) may still hold a table that
another device could take more cheaply. `refine` tries every such move under the cost net and
the memory caps and applies the best one; when no move helps, it tries every exchange of a table
on a bottleneck device with a table on another device and applies the best; it repeats until
neither helps or its budget of candidate evaluations (max_evaluations: every move or exchange
scored counts one) is spent. Moves come first because they are cheaper to search, and so
the result is never rated worse than refining with moves alone (swaps=False; budgets aside).

Deterministic: the budget is a count, not a time, so the same inputs give the same placement on
every call and every machine (ranks that call LearnedShardingPlanner.plan() each on their own
must agree on the plan). max_seconds is only a safety net (a warning when it stops a search:
the result may then differ between calls).

Why exchanges: where the all-to-all dominates (one-hot tables on a slow interconnect), a
dim-balanced placement is already at the all-to-all's floor and every single move unbalances it;
exchanging two tables of the same dim keeps it there while it evens out the compute.

Costs come from the cost net's heads on summed per-table pre-activations (`HeadEvaluator.pre`), so
a move or an exchange costs two head evaluations, batched over all candidates; the all-to-all is
the comm model's rule on each device's sum of dims (`comm.comm_ms_of_dims`). Estimates are kept
monotone: a device's estimate never falls when a table joins it and never rises when one leaves
(the net's bounded interaction term can say otherwise, and a search would seek out exactly those
errors); in an exchange, each device is no cheaper than it is without its leaving table.
The objective is the step estimate (max compute + max all-to-all) plus a small share of the mean
device time, so that ties at the maximum (two devices equally slow) can be broken one step at a
time. Exchanges of two tables alike in everything the net sees are not tried. The clamps let the
search's own device estimates drift from the net's, so the result is judged by the net itself at
the end: the input placement is returned unless the net rates the result cheaper.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from recsearch.placement.comm import comm_ms_of_dims
from recsearch.placement.cost_net import CostNet
from recsearch.placement.types import (
    DEFAULT_OPTIMIZER,
    REFINE_SAFETY_SECONDS,
    BesideCopies,
    Placement,
    Placer,
    alltoall_width,
    rank_caps,
    table_memory_bytes,
)
from recsearch.types import TableSpec, Topology

TIE_BREAK = 1e-3  # weight of the mean device time beside the step estimate
PAIR_CHUNK = 4096  # exchanges scored at once (bounds the arrays of one scoring pass)
# candidate evaluations (moves and exchanges scored) one refine may spend: what bounds it, the
# same on every call (about 0.5 s on a 2-core CPU for 504 tables x 64 devices, where it binds;
# 100,000 took 1 s there, estimated no better on the held-out tasks, and data_parallel=True on 8
# devices, which refines twice, to 2.7 s)
MAX_EVALUATIONS = 40_000


@dataclass(frozen=True)
class RefineReport:
    """What one refine call did: moves applied, the estimate before and after, seconds spent."""

    moves: int
    start_ms: float
    end_ms: float
    seconds: float
    stopped: str  # "converged", "max_moves", "budget" (max_evaluations spent), "time" (the
    # safety net) or "no gain" (the net rated the result no cheaper than the input, which was
    # kept: see the end of `refine`)
    evaluations: int = 0  # candidate moves and exchanges scored


def refine(
    tables: Sequence[TableSpec],
    topology: Topology,
    placement: Placement,
    cost_net: CostNet,
    optimizer: str = DEFAULT_OPTIMIZER,
    max_seconds: float = REFINE_SAFETY_SECONDS,
    max_moves: int = 10_000,
    swaps: bool = True,
    max_evaluations: int = MAX_EVALUATIONS,
) -> tuple[Placement, RefineReport]:
    """The placement after best-improvement single-table moves (and, with swaps, exchanges of two
    tables between devices) under cost_net (see the module docstring); the input placement when
    nothing helps. Memory caps are kept. Replicated tables stay replicated (_refine_rest).
    max_evaluations bounds the search (deterministic); max_seconds is a safety net that warns."""
    if placement.replicated:
        return _refine_rest(
            tables, topology, placement, cost_net, optimizer, max_seconds, max_moves, swaps,
            max_evaluations,
        )
    t0 = time.perf_counter()
    world = placement.world_size
    meta = cost_net.meta
    if meta is None:
        raise ValueError("the cost net has no metadata (was it trained?)")
    heads = cost_net.heads()
    table_pre = heads.pre(cost_net.encode_tables(tables).numpy().astype(np.float64))  # [T, M, P]
    dims = np.asarray([alltoall_width(t) for t in tables], dtype=np.float64)  # all-to-all widths
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

    def leave_ms(idx: np.ndarray) -> np.ndarray:
        """Each table's device without it (monotone: never dearer than before; 0 when alone)."""
        src = ranks[idx]
        left = np.minimum(heads.ms_from_pre(dev_pre[src] - table_pre[idx]).sum(-1), dev_ms[src])
        return np.where(counts[src] > 1, left, 0.0)

    def best_move(cand: np.ndarray) -> tuple[float, tuple[int, int], float, float]:
        """The best single move of a candidate table: (score, (table, dest), src ms, dest ms)."""
        src = ranks[cand]  # [C]
        left = leave_ms(cand)
        # every destination with the table (monotone: never cheaper than before)
        joined = heads.ms_from_pre(dev_pre[None, :] + table_pre[cand][:, None]).sum(-1)  # [C, D]
        joined = np.maximum(joined, dev_ms[None, :])
        diag = np.arange(world)[None, :] == src[:, None]  # "moving" a table to its own device
        # [C, D(dest), D]: every device's time and dims after moving candidate c to dest
        new_dims = np.broadcast_to(dev_dims, (cand.size, world, world)).copy()
        c_idx = np.arange(cand.size)
        new_dims[c_idx, :, src] -= dims[cand][:, None]
        new_dims[:, np.arange(world), np.arange(world)] += dims[cand][:, None]
        full = np.broadcast_to(dev_ms, (cand.size, world, world)).copy()
        full[c_idx, :, src] = left[:, None]
        full[:, np.arange(world), np.arange(world)] = joined
        scores = objective(full, comm(new_dims))  # [C, D]
        fits = dev_mem[None, :] + mem[cand][:, None] <= caps[None, :]
        scores = np.where(fits & ~diag, scores, np.inf)
        c, dest = np.unravel_index(int(np.argmin(scores)), scores.shape)
        return float(scores[c, dest]), (int(cand[c]), int(dest)), float(left[c]), float(joined[c, dest])

    # tables alike in everything the net and the caps see: exchanging two of them changes nothing
    signature = np.concatenate([table_pre.reshape(len(tables), -1), dims[:, None], mem[:, None]], 1)
    kind = np.unique(signature, axis=0, return_inverse=True)[1].reshape(-1)

    spent = [0]  # candidate evaluations so far

    def best_swap(cand: np.ndarray, deadline: float) -> tuple[float, tuple[int, int], float, float]:
        """The best exchange of a candidate table with an unlike table on another device:
        (score, (table a, table b), a's device ms, b's device ms after the exchange). Each side
        is kept monotone against the device without its leaving table (the arriving table never
        makes it cheaper). Pairs are built and scored a block of candidates at a time (memory
        bounded by PAIR_CHUNK pairs); once the evaluation budget is spent (or past the safety
        deadline) the best pair found so far is returned."""
        left = leave_ms(np.arange(len(tables)))
        best = (np.inf, (-1, -1), 0.0, 0.0)
        block = max(1, PAIR_CHUNK // len(tables))
        for lo in range(0, cand.size, block):
            if lo and (spent[0] >= max_evaluations or time.perf_counter() > deadline):
                break
            cb = cand[lo : lo + block]
            ok = (ranks[cb][:, None] != ranks[None, :]) & (kind[cb][:, None] != kind[None, :])
            ia, ib = np.nonzero(ok)
            if ia.size == 0:
                continue
            a, b = cb[ia], ib
            spent[0] += int(a.size)
            s, d = ranks[a], ranks[b]
            delta = table_pre[b] - table_pre[a]  # what device s gains (d loses it)
            s_ms = np.maximum(heads.ms_from_pre(dev_pre[s] + delta).sum(-1), left[a])
            d_ms = np.maximum(heads.ms_from_pre(dev_pre[d] - delta).sum(-1), left[b])
            n = a.size
            rows = np.arange(n)
            full = np.broadcast_to(dev_ms, (n, world)).copy()
            full[rows, s], full[rows, d] = s_ms, d_ms
            ddim = dims[b] - dims[a]
            new_dims = np.broadcast_to(dev_dims, (n, world)).copy()
            new_dims[rows, s] += ddim
            new_dims[rows, d] -= ddim
            dmem = mem[b] - mem[a]
            fits = (dev_mem[s] + dmem <= caps[s]) & (dev_mem[d] - dmem <= caps[d])
            scores = np.where(fits, objective(full, comm(new_dims)), np.inf)
            k = int(np.argmin(scores))
            if scores[k] < best[0]:
                best = (float(scores[k]), (int(a[k]), int(b[k])), float(s_ms[k]), float(d_ms[k]))
        return best

    def relocate(t: int, dest: int) -> None:
        s = int(ranks[t])
        dev_pre[s] -= table_pre[t]
        dev_pre[dest] += table_pre[t]
        dev_dims[s] -= dims[t]
        dev_dims[dest] += dims[t]
        dev_mem[s] -= mem[t]
        dev_mem[dest] += mem[t]
        counts[s] -= 1
        counts[dest] += 1
        ranks[t] = dest

    now = float(objective(dev_ms, comm(dev_dims)))
    start = float(dev_ms.max() + comm(dev_dims).max())
    moves, stopped = 0, "converged"
    while True:
        if moves >= max_moves:
            stopped = "max_moves"
            break
        if spent[0] >= max_evaluations:
            stopped = "budget"
            break
        if time.perf_counter() - t0 > max_seconds:
            stopped = "time"
            logging.getLogger(__name__).warning(
                "refine stopped on its %.1f s safety limit after %d moves and %d of %d "
                "evaluations: the placement may differ between calls (plan through "
                "collective_plan, or lower max_evaluations)",
                max_seconds, moves, spent[0], max_evaluations,
            )
            break
        comm_now = comm(dev_dims)
        sources = {int(np.argmax(dev_ms)), int(np.argmax(comm_now))}
        cand = np.flatnonzero(np.isin(ranks, list(sources)))  # tables on a bottleneck device
        if cand.size == 0:
            break
        spent[0] += int(cand.size) * world
        score, (t, dest), src_ms, dest_ms = best_move(cand)
        if score < now * (1 - 1e-9):
            s = int(ranks[t])
            relocate(t, dest)
            dev_ms[s], dev_ms[dest] = src_ms, dest_ms
        else:  # a local optimum of moves: try the exchanges (dearer to search)
            if not swaps or world == 1:
                break
            score, (a, b), a_ms, b_ms = best_swap(cand, t0 + max_seconds)
            if not score < now * (1 - 1e-9):
                break
            sa, sb = int(ranks[a]), int(ranks[b])
            relocate(a, sb)
            relocate(b, sa)
            dev_ms[sa], dev_ms[sb] = a_ms, b_ms
        now = score
        moves += 1
    out = Placement(tuple(int(r) for r in ranks), world)
    # The clamps make the search's own device estimates drift from the net's (a device that
    # lost a table keeps its old estimate where the net says it got dearer): judge the result
    # by the net itself, and keep the input unless the net rates the result cheaper.
    end = float(cost_net.predict(tables, out, topology).total_ms)
    if moves and not end < start:
        return placement, RefineReport(
            0, start, start, time.perf_counter() - t0, "no gain", spent[0]
        )
    return out, RefineReport(moves, start, end, time.perf_counter() - t0, stopped, spent[0])


def _refine_rest(
    tables: Sequence[TableSpec],
    topology: Topology,
    placement: Placement,
    cost_net: CostNet,
    optimizer: str,
    max_seconds: float,
    max_moves: int,
    swaps: bool,
    max_evaluations: int,
) -> tuple[Placement, RefineReport]:
    """refine the table-wise tables of a placement with replicated ones, on the room the
    replicas leave each rank. The replicas add the same compute to every device and the same
    all-reduce to every rank's communication, so they do not change which move is best: the
    rest is refined alone and the result judged by the net on the whole placement."""
    t0 = time.perf_counter()
    part = BesideCopies.of(tables, placement.replicated, topology, optimizer)
    start = float(cost_net.predict(tables, placement, topology).total_ms)
    if not part.rest or not part.fits():  # nothing to move (or an over-committed input: as is)
        return placement, RefineReport(0, start, start, time.perf_counter() - t0, "converged")
    sub = Placement(tuple(placement.ranks[i] for i in part.rest), placement.world_size)
    new_sub, report = refine(
        part.tables(tables), part.topology(), sub, cost_net, optimizer, max_seconds, max_moves,
        swaps, max_evaluations,
    )
    out = part.merged(new_sub.ranks)
    end = float(cost_net.predict(tables, out, topology).total_ms)
    if report.moves and not end < start:
        return placement, RefineReport(
            0, start, start, time.perf_counter() - t0, "no gain", report.evaluations
        )
    return out, RefineReport(
        report.moves, start, end, time.perf_counter() - t0, report.stopped, report.evaluations
    )


class RefinedPlacer:
    """Any placer followed by `refine` under a cost net: a CostNet, or a function of the topology
    that returns one (the shipped learned placer's net depends on the compute device).
    max_evaluations: refine's deterministic budget; max_seconds: its safety net.
    last_report: the last refine's report."""

    def __init__(
        self,
        placer: Placer,
        cost_net: CostNet | Callable[[Topology], CostNet],
        optimizer: str = DEFAULT_OPTIMIZER,
        max_seconds: float = REFINE_SAFETY_SECONDS,
        swaps: bool = True,
        max_evaluations: int = MAX_EVALUATIONS,
    ):
        self.placer, self.cost_net = placer, cost_net
        self.optimizer, self.max_seconds, self.swaps = optimizer, max_seconds, swaps
        self.max_evaluations = max_evaluations
        self.last_report: RefineReport | None = None

    def place(self, tables: Sequence[TableSpec], topology: Topology) -> Placement:
        first = self.placer.place(tables, topology)
        net = self.cost_net if isinstance(self.cost_net, CostNet) else self.cost_net(topology)
        placement, self.last_report = refine(
            tables, topology, first, net, self.optimizer, self.max_seconds, swaps=self.swaps,
            max_evaluations=self.max_evaluations,
        )
        return placement
