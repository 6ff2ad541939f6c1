"""Tables -> the pieces a placer places, as TorchRec shards them.

A table that fits a device stays whole (table-wise: one piece). One that fits no device is split:
column-wise into k equal pieces of whole columns (TorchRec's `column_wise(ranks=...)`: each piece
is a table of dim / k, placed like any other table, and pieces may share a rank), or, when no
column split fits, row-wise over every rank (TorchRec's `row_wise()`: rank r holds rows
[r * ceil(R / W), ...), fixed, so those blocks are not placed but taken off each rank's room
first). Tables constrained to row_wise or data_parallel are pinned the same way; to column_wise,
they are split into pieces of `min_partition` columns (TorchRec's MIN_CW_DIM, 128, by default)
or narrower pieces if those do not fit. Those choices, coarsest first, are a table's ladder; the
planner asks for a step further down it (`at_least`) for a few tables at a time when the placer
cannot pack the pieces.

A placer may also replicate a whole table (`types.REPLICATED`: a copy on every rank, TorchRec's
`data_parallel()`): `Split.ranks` makes that table data_parallel when its request allows
data_parallel, and refuses it (PlacementError) for a column-wise piece or a table whose request
does not allow it.

Sharding types are TorchRec's names (ShardingType values); this module does not import torchrec,
so it is cheap and the rules can be tested on their own. Memory is `table_memory_bytes` (weights
+ optimizer state, per piece: FBGEMM keeps row-wise state per shard).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum

from recsearch.placement.types import (
    DEFAULT_OPTIMIZER,
    REPLICATED,
    Placement,
    PlacementError,
    format_bytes,
    table_memory_bytes,
)
from recsearch.types import TableSpec


class ShardingKind(str, Enum):
    """The sharding types the planner makes (values: TorchRec's ShardingType values), in the
    order it prefers them."""

    TABLE_WISE = "table_wise"
    COLUMN_WISE = "column_wise"
    ROW_WISE = "row_wise"
    DATA_PARALLEL = "data_parallel"


SUPPORTED_SHARDING = tuple(k.value for k in ShardingKind)
COLUMN_ALIGN = 4  # FBGEMM's TBE wants embedding dims that are multiples of 4
DEFAULT_MIN_PARTITION = 128  # TorchRec's MIN_CW_DIM: column-wise shard width when constrained


@dataclass(frozen=True)
class TableRequest:
    """One table and the sharding types it may get (constraints and its sharder, intersected).

    min_partition: the narrowest column-wise piece (ParameterConstraints.min_partition), or None
    (then DEFAULT_MIN_PARTITION sets the width of a table constrained to column_wise, and a
    table split only because it is too big may go down to COLUMN_ALIGN columns).
    where: the module path, for error messages.
    """

    table: TableSpec
    sharding_types: tuple[str, ...] = SUPPORTED_SHARDING
    min_partition: int | None = None
    where: str = ""


@dataclass(frozen=True)
class TableSharding:
    """How one table is sharded: the pieces the placer places (table_wise: the table itself;
    column_wise: its column slices in order), or, for row_wise / data_parallel, the bytes pinned
    on every rank."""

    sharding_type: str
    pieces: tuple[TableSpec, ...] = ()
    pinned_bytes: tuple[int, ...] = ()
    step: int = 0  # the step of the table's ladder (split_tables) it got: 0 the coarsest
    finer: bool = False  # whether a finer step of its ladder fits


@dataclass(frozen=True)
class Split:
    """Every table's sharding, the pieces to place (in table order) with their owner
    (table index, shard index), and each rank's room left after the pinned shards.

    requests: the tables' requests (split_tables keeps them), which say whether a table the
    placer replicates may be data_parallel; a Split without them allows no replication."""

    tables: tuple[TableSpec, ...]
    shardings: tuple[TableSharding, ...]
    pieces: tuple[TableSpec, ...]
    owners: tuple[tuple[int, int], ...]
    free_bytes: tuple[int, ...]
    requests: tuple[TableRequest, ...] = ()

    def ranks(self, placement: Placement) -> list[tuple[str, tuple[int, ...]]]:
        """(sharding type, ranks) per table for a placement of the pieces: the rank of the
        table (table_wise), of each column slice in order (column_wise), or every rank
        (row_wise, data_parallel). A table_wise table the placer replicated (REPLICATED)
        becomes data_parallel on every rank when its request allows data_parallel; a replicated
        column-wise piece, or a replicated table whose request does not allow data_parallel, is
        a PlacementError naming the table."""
        if len(placement) != len(self.pieces):
            raise PlacementError(
                f"placement has {len(placement)} pieces, the split has {len(self.pieces)}"
            )
        per_table: list[list[int]] = [[] for _ in self.tables]
        for (t, _shard), r in zip(self.owners, placement.ranks):
            per_table[t].append(r)
        world = len(self.free_bytes)
        out = []
        for i, (s, got) in enumerate(zip(self.shardings, per_table)):
            pinned = s.sharding_type in (ShardingKind.ROW_WISE, ShardingKind.DATA_PARALLEL)
            if pinned:
                out.append((s.sharding_type, tuple(range(world))))
            elif REPLICATED in got:
                self._check_replicable(i, s)
                out.append((ShardingKind.DATA_PARALLEL.value, tuple(range(world))))
            else:
                out.append((s.sharding_type, tuple(got)))
        return out

    def _check_replicable(self, i: int, sharding: TableSharding) -> None:
        """PlacementError unless table i, replicated by the placer, may be data_parallel."""
        t = self.tables[i]
        req = self.requests[i] if i < len(self.requests) else None
        where = f" in {req.where}" if req is not None and req.where else ""
        if sharding.sharding_type != ShardingKind.TABLE_WISE or len(sharding.pieces) != 1:
            names = [p.name for p in sharding.pieces]
            raise PlacementError(
                f"the placer replicated a column-wise piece of table {t.name!r}{where} (pieces "
                f"{names}); only whole tables may be replicated (data_parallel)"
            )
        allowed = list(req.sharding_types) if req is not None else []
        if ShardingKind.DATA_PARALLEL not in allowed:
            raise PlacementError(
                f"the placer replicated table {t.name!r}{where}, but it may only be sharded "
                f"{allowed or 'as the split says'} (data_parallel not allowed); allow it with "
                f"LearnedShardingPlanner(data_parallel=True) for tables left to choose, or a "
                f"ParameterConstraints(sharding_types=[..., 'data_parallel']) for this table"
            )

    def total_bytes(self, optimizer: str = DEFAULT_OPTIMIZER) -> int:
        """Bytes of every piece and pinned shard: what the ranks must hold together. A finer
        split never needs less (row-wise optimizer state is kept per piece)."""
        placed = sum(table_memory_bytes(p, optimizer) for p in self.pieces)
        return placed + sum(sum(s.pinned_bytes) for s in self.shardings)

    def unpacked_bytes(self, optimizer: str = DEFAULT_OPTIMIZER) -> int:
        """Bytes of the pieces that largest-first packing (each piece onto the rank with the
        most room left) cannot place: 0 when it packs them; how far this split is from fitting,
        to compare splits that no placer could pack."""
        room = [-f for f in self.free_bytes]  # a max-heap of the room left
        heapq.heapify(room)
        left = 0
        for need in sorted((table_memory_bytes(p, optimizer) for p in self.pieces), reverse=True):
            most = -room[0]
            if need <= most:
                heapq.heapreplace(room, -(most - need))
            else:
                left += need
        return left

    def finer_candidates(self, optimizer: str = DEFAULT_OPTIMIZER) -> list[int]:
        """Tables that a finer step of their ladder fits, placed ones (table_wise, column_wise)
        with the largest piece first (ties: table order): the ones to split further when the
        pieces cannot be packed."""
        largest = {
            i: max(table_memory_bytes(p, optimizer) for p in s.pieces)
            for i, s in enumerate(self.shardings)
            if s.finer and s.pieces
        }
        return sorted(largest, key=lambda i: (-largest[i], i))

    def describe(self) -> str:
        """The tables this split splits: "t2 column_wise in 2, t5 row_wise" (the first 8), or
        "no table split"."""
        parts = [
            f"{t.name} {s.sharding_type}" + (f" in {len(s.pieces)}" if s.pieces else "")
            for t, s in zip(self.tables, self.shardings)
            if s.sharding_type in (ShardingKind.COLUMN_WISE, ShardingKind.ROW_WISE)
        ]
        if not parts:
            return "no table split"
        more = f" and {len(parts) - 8} more" if len(parts) > 8 else ""
        return ", ".join(parts[:8]) + more

    def memory_per_rank(self, placement: Placement, optimizer: str = DEFAULT_OPTIMIZER) -> list[int]:
        """Bytes on each rank: the pinned shards plus the placed pieces (Placement's rule: a
        replicated piece on every rank)."""
        mem = placement.memory_per_rank(self.pieces, optimizer)
        for s in self.shardings:
            for r, b in enumerate(s.pinned_bytes):
                mem[r] += b
        return mem


def row_blocks(num_rows: int, world_size: int) -> list[int]:
    """Rows per rank under TorchRec's row_wise(): ceil(R / W) on each rank, the rest on the
    last ranks that still have rows (10 rows on 4 ranks: 3, 3, 3, 1)."""
    block = math.ceil(num_rows / world_size)
    return [max(0, min(block, num_rows - r * block)) for r in range(world_size)]


def column_splits(dim: int, min_width: int) -> list[int]:
    """Piece counts k > 1 that split dim into equal pieces of whole columns, each a multiple of
    COLUMN_ALIGN and at least min_width wide, fewest pieces first."""
    return [
        k
        for k in range(2, dim // max(1, min_width) + 1)
        if dim % k == 0 and (dim // k) % COLUMN_ALIGN == 0 and dim // k >= min_width
    ]


def column_pieces(table: TableSpec, k: int) -> tuple[TableSpec, ...]:
    if k == 1:
        return (table,)
    width = table.dim // k
    return tuple(replace(table, name=f"{table.name}/col{i}", dim=width) for i in range(k))


def _describe(t: TableSpec, optimizer: str) -> str:
    m = table_memory_bytes(t, optimizer)
    return f"table {t.name!r} ({t.num_rows:,} rows x dim {t.dim}, {format_bytes(m)} with {optimizer} state)"


def _ladder(req: TableRequest) -> list[tuple[ShardingKind, int]]:
    """A table's shardings from coarsest to finest, as (kind, column pieces): whole (when
    table_wise is allowed), its column splits (fewest pieces first), then row_wise (when
    allowed). A table constrained to column_wise starts at pieces of min_partition columns."""
    t, allowed = req.table, req.sharding_types
    rungs: list[tuple[ShardingKind, int]] = []
    if ShardingKind.TABLE_WISE in allowed:
        rungs.append((ShardingKind.TABLE_WISE, 1))
    if ShardingKind.COLUMN_WISE in allowed:
        if ShardingKind.TABLE_WISE in allowed:  # split only because it is too big
            counts = column_splits(t.dim, req.min_partition or COLUMN_ALIGN)
        else:  # constrained to column_wise: pieces of min_partition columns, or narrower
            first = max([1, *column_splits(t.dim, req.min_partition or DEFAULT_MIN_PARTITION)])
            counts = [first] + [
                k for k in column_splits(t.dim, req.min_partition or COLUMN_ALIGN) if k > first
            ]
        rungs.extend((ShardingKind.COLUMN_WISE, k) for k in counts)
    if ShardingKind.ROW_WISE in allowed:
        rungs.append((ShardingKind.ROW_WISE, 0))
    return rungs


def split_tables(
    requests: Sequence[TableRequest],
    caps_bytes: Sequence[int],
    optimizer: str = DEFAULT_OPTIMIZER,
    at_least: Sequence[int] | None = None,
) -> Split:
    """Decide every table's sharding for ranks with these memory caps (see the module
    docstring); PlacementError naming the table when none of its allowed sharding types fits.

    Each table gets the coarsest sharding of its ladder (_ladder: whole, column splits with
    fewest pieces first, row_wise) that fits the rank with the most room. at_least: per table,
    the ladder step to start from instead (0: the coarsest); the planner raises it, a few tables
    at a time, when the placer cannot pack the pieces. A step that does not fit is passed over
    for the next finer one that does, or the finest that fits. TableSharding.step / .finer say
    which step a table got and whether a finer one fits."""
    world = len(caps_bytes)
    if world == 0:
        raise PlacementError("no ranks to place tables on")
    if at_least is not None and len(at_least) != len(requests):
        raise ValueError(f"at_least has {len(at_least)} entries for {len(requests)} tables")
    free = [int(c) for c in caps_bytes]
    shardings: list[TableSharding | None] = [None] * len(requests)

    def row_wise_bytes(t: TableSpec) -> list[int]:
        return [
            table_memory_bytes(replace(t, num_rows=n), optimizer) if n else 0
            for n in row_blocks(t.num_rows, world)
        ]

    def pin(i: int, kind: ShardingKind, step: int = 0, finer: bool = False) -> None:
        req = requests[i]
        t = req.table
        if kind == ShardingKind.ROW_WISE:
            pinned = row_wise_bytes(t)
        else:
            pinned = [table_memory_bytes(t, optimizer)] * world
        short = [r for r in range(world) if pinned[r] > free[r]]
        if short:
            where = f" in {req.where}" if req.where else ""
            raise PlacementError(
                f"{_describe(t, optimizer)}{where} sharded {kind.value} needs "
                f"{format_bytes(max(pinned))} on every rank, but rank(s) {short} have only "
                + ", ".join(format_bytes(free[r]) for r in short)
                + " left"
            )
        for r in range(world):
            free[r] -= pinned[r]
        shardings[i] = TableSharding(kind.value, (), tuple(pinned), step, finer)

    for i, req in enumerate(requests):
        unsupported = [s for s in req.sharding_types if s not in SUPPORTED_SHARDING]
        allowed = [s for s in req.sharding_types if s in SUPPORTED_SHARDING]
        if not allowed:
            where = f" in {req.where}" if req.where else ""
            raise PlacementError(
                f"table {req.table.name!r}{where} may only be sharded {unsupported or 'no way'} "
                f"(constraints and sharder together); LearnedShardingPlanner makes "
                f"{', '.join(SUPPORTED_SHARDING)}"
            )
    # pinned-only tables first: they take room on every rank whatever the placer does
    for i, req in enumerate(requests):
        if ShardingKind.TABLE_WISE not in req.sharding_types and (
            ShardingKind.COLUMN_WISE not in req.sharding_types
        ):
            kind = (
                ShardingKind.ROW_WISE
                if ShardingKind.ROW_WISE in req.sharding_types
                else ShardingKind.DATA_PARALLEL
            )
            pin(i, kind)
    # the rest, largest first, so that a big table falling back to row_wise is decided before
    # the tables that must fit into what it leaves
    rest = sorted(
        (i for i in range(len(requests)) if shardings[i] is None),
        key=lambda i: -table_memory_bytes(requests[i].table, optimizer),
    )
    for i in rest:
        req = requests[i]
        t = req.table
        room = max(free)

        def fits(rung: tuple[ShardingKind, int]) -> bool:
            kind, k = rung
            if kind == ShardingKind.ROW_WISE:
                return all(b <= f for b, f in zip(row_wise_bytes(t), free))
            return table_memory_bytes(column_pieces(t, k)[0], optimizer) <= room

        rungs = _ladder(req)
        fitting = [j for j, rung in enumerate(rungs) if fits(rung)]
        if not fitting and ShardingKind.ROW_WISE in req.sharding_types:
            pin(i, ShardingKind.ROW_WISE)  # raises: names what row_wise needs on each rank
        if not fitting:
            where = f" in {req.where}" if req.where else ""
            raise PlacementError(
                f"{_describe(t, optimizer)}{where} fits no rank (the most room left on one is "
                f"{format_bytes(room)}) and its allowed sharding types {list(req.sharding_types)} "
                f"cannot split it small enough (column_wise needs dims in equal multiples of "
                f"{COLUMN_ALIGN}; row_wise must be allowed for a row split)"
            )
        start = at_least[i] if at_least is not None else 0
        step = next((j for j in fitting if j >= start), fitting[-1])
        finer = step < fitting[-1]
        kind, k = rungs[step]
        if kind == ShardingKind.ROW_WISE:
            pin(i, kind, step, finer)
        elif kind == ShardingKind.TABLE_WISE:
            shardings[i] = TableSharding(kind.value, (t,), (), step, finer)
        else:
            shardings[i] = TableSharding(kind.value, column_pieces(t, k), (), step, finer)
    done = [s for s in shardings if s is not None]
    assert len(done) == len(requests)
    pieces, owners = [], []
    for i, s in enumerate(done):
        for j, p in enumerate(s.pieces):
            pieces.append(p)
            owners.append((i, j))
    return Split(
        tables=tuple(r.table for r in requests),
        shardings=tuple(done),
        pieces=tuple(pieces),
        owners=tuple(owners),
        free_bytes=tuple(free),
        requests=tuple(requests),
    )
