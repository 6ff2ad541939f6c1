"""Whether a run's embedding tables can fit the memory that will hold them, checked before
anything is allocated.

Why: a dataset preprocessed without a categorical option keeps the raw 32-bit ids, so its tables
have up to 2^32 rows (docs/DATA.md); FBGEMM initialises every row of a table it allocates, so on
a CPU such a run is not refused by the allocator (Linux overcommits) but killed by the OOM killer
part way through initialisation, without a word. The check is deliberately coarse: weights plus
the fused optimizer's state (placement.types.table_memory_bytes, the planner's own rule) against
what the devices of the run have free, so it only refuses runs that cannot fit in any placement;
TorchRec's planner (several ranks) and the allocator still judge the ones close to the line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from recsearch.data.split_cache import available_memory_bytes
from recsearch.placement.types import table_memory_bytes
from recsearch.types import TableSpec

BYTES_PER_VALUE = {"fp32": 4, "fp16": 2}  # embedding_precision -> bytes per table weight
GIB = 1 << 30


@dataclass(frozen=True)
class MemoryRoom:
    """What the run's devices have free for tables, and where that figure comes from."""

    free_bytes: int
    source: str  # e.g. "MemAvailable of this host" or "free memory of 2 x cuda:0"


def memory_room(device: torch.device, world_size: int, memory_fraction: float | None = None) -> MemoryRoom:
    """Free memory for the run's tables: on a GPU, once per rank, what this process may still
    take there: the device's free memory, and at most the run's memory fraction of the device
    (torch.cuda.set_per_process_memory_fraction: trials sharing a GPU each get their share); on
    the CPU, the host's MemAvailable once per host (the ranks of one host share it;
    LOCAL_WORLD_SIZE, as torchrun sets it, says how many that is)."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        per_rank = free if memory_fraction is None else min(free, int(total * memory_fraction))
        return MemoryRoom(per_rank * world_size, f"free memory of {world_size} x {device}")
    ranks_per_host = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
    hosts = max(1, -(-world_size // ranks_per_host))
    return MemoryRoom(available_memory_bytes() * hosts, f"MemAvailable of {hosts} host(s)")


def tables_memory_problem(
    rows: Sequence[int], dim: int, embedding_precision: str, optimizer: str, room: MemoryRoom,
) -> str | None:
    """Why the tables (one per entry of `rows`, each `dim` wide) cannot fit `room`, or None."""
    tables = [TableSpec(name=f"t_{i}", num_rows=int(n), dim=dim, bytes_per_value=BYTES_PER_VALUE[embedding_precision])
              for i, n in enumerate(rows)]
    need = [table_memory_bytes(t, optimizer) for t in tables]
    needed_bytes = sum(need)
    if needed_bytes <= room.free_bytes:
        return None
    largest = max(range(len(tables)), key=need.__getitem__)
    # the row cap that would make the tables fit at this width (the largest tables shrink first)
    cap = _row_cap_that_fits(rows, needed_bytes, room.free_bytes)
    hint = (f"cap them with max_rows_per_table={cap} or lower (ids are hashed onto the cap), or "
            if cap else "")
    return (
        f"the {len(tables)} embedding tables need {needed_bytes / GIB:,.1f} GiB ({embedding_precision} "
        f"weights, dim {dim}, plus {optimizer}'s state; the largest, table {largest}, has "
        f"{int(rows[largest]):,} rows) but the run has {room.free_bytes / GIB:,.1f} GiB ({room.source}): "
        f"{hint}preprocess the data with --hash-size or --vocab-threshold (docs/DATA.md)"
    )


def _row_cap_that_fits(rows: Sequence[int], needed_bytes: int, free_bytes: int) -> int | None:
    """The largest row cap under which the tables take at most 90% of free_bytes (bytes scale
    with rows at a fixed width and optimizer), or None if no cap of at least 1,000 rows does."""
    per_row = needed_bytes / sum(int(n) for n in rows)
    budget_rows = 0.9 * free_bytes / per_row
    lo, hi = 1_000, max(int(n) for n in rows)
    if sum(min(int(n), lo) for n in rows) > budget_rows:
        return None
    while lo < hi:  # the largest cap whose capped total stays in the budget
        mid = (lo + hi + 1) // 2
        if sum(min(int(n), mid) for n in rows) <= budget_rows:
            lo = mid
        else:
            hi = mid - 1
    return _round_down_2_digits(lo)


def _round_down_2_digits(n: int) -> int:
    """n rounded down to two significant digits (9,876,543 -> 9,800,000): a cap to type."""
    scale = 10 ** max(0, len(str(n)) - 2)
    return n // scale * scale
