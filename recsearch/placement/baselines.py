"""Baseline placers, as DreamShard (Zha et al., NeurIPS 2022) defines them, each a `Placer`.

`recsearch place baseline --task TASK.json [--placer size_greedy ...] --out-dir DIR`
(recsearch.placement.cli.baseline); every placer by name: recsearch.placement.registry.

- random: each table (largest first) on a uniformly random device that still has room.
- round_robin: table i on device i mod D (the next device with room if that one is full).
- greedy on a per-table key: sort tables by key, largest first; put each on the device with the
  smallest accumulated key among those that still have memory for it (ties: least memory used,
  then lowest rank). Keys: size_greedy = weight bytes; dim_greedy = dim; lookup_greedy =
  dim x pooling factor; size_lookup_greedy = dim x pooling factor x log10(rows).
- torchrec: TorchRec's EmbeddingShardingPlanner restricted to table-wise
  (recsearch.placement.torchrec_placer).

Every placer respects the topology's memory cap with `table_memory_bytes` (weights + optimizer
state) and raises PlacementError naming the table and the sizes when a table fits no device.
No torch import here: placers are cheap to construct and call.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from recsearch.placement.types import (
    DEFAULT_OPTIMIZER,
    Placement,
    PlacementError,
    Placer,
    check_fits,
    no_room_error,
    rank_caps,
    table_memory_bytes,
)
from recsearch.types import TableSpec, Topology


def _no_room(
    table: TableSpec, need: int, loads: Sequence[int], caps: Sequence[int], placer: str
) -> PlacementError:
    return no_room_error(placer, table, need, loads, caps)


class _MemoryTracker:
    def __init__(self, tables: Sequence[TableSpec], topology: Topology, optimizer: str):
        check_fits(tables, topology, optimizer)
        self.mem = [table_memory_bytes(t, optimizer) for t in tables]
        self.caps = rank_caps(topology)
        self.loads = [0] * topology.world_size

    def fits(self, index: int, rank: int) -> bool:
        return self.loads[rank] + self.mem[index] <= self.caps[rank]

    def add(self, index: int, rank: int) -> None:
        self.loads[rank] += self.mem[index]


class GreedyPlacer:
    """Sort tables by key (largest first); each to the device with the smallest key sum that has
    room. Ties in key order follow DreamShard: larger size, then larger index first."""

    def __init__(
        self, key: Callable[[TableSpec], float], name: str, optimizer: str = DEFAULT_OPTIMIZER
    ):
        self.key = key
        self.name = name
        self.optimizer = optimizer

    def place(self, tables: Sequence[TableSpec], topology: Topology) -> Placement:
        memory = _MemoryTracker(tables, topology, self.optimizer)
        world = topology.world_size
        order = sorted(
            range(len(tables)),
            key=lambda i: (self.key(tables[i]), tables[i].size_bytes, i),
            reverse=True,
        )
        sums = [0.0] * world
        ranks = [0] * len(tables)
        for i in order:
            legal = [r for r in range(world) if memory.fits(i, r)]
            if not legal:
                raise _no_room(tables[i], memory.mem[i], memory.loads, memory.caps, self.name)
            r = min(legal, key=lambda r: (sums[r], memory.loads[r], r))
            ranks[i] = r
            sums[r] += self.key(tables[i])
            memory.add(i, r)
        return Placement(tuple(ranks), world)

    def __repr__(self) -> str:
        return f"GreedyPlacer({self.name})"


class RandomPlacer:
    """Uniformly random device per table among those with room, largest tables first (so random
    placements of tight tasks still succeed); a few retries before giving up."""

    def __init__(self, seed: int = 0, optimizer: str = DEFAULT_OPTIMIZER, attempts: int = 20):
        self.rng = random.Random(seed)
        self.optimizer = optimizer
        self.attempts = attempts

    def place(self, tables: Sequence[TableSpec], topology: Topology) -> Placement:
        last: PlacementError | None = None
        for _ in range(self.attempts):
            memory = _MemoryTracker(tables, topology, self.optimizer)
            order = sorted(range(len(tables)), key=lambda i: memory.mem[i], reverse=True)
            ranks = [0] * len(tables)
            try:
                for i in order:
                    legal = [r for r in range(topology.world_size) if memory.fits(i, r)]
                    if not legal:
                        raise _no_room(tables[i], memory.mem[i], memory.loads, memory.caps, "random")
                    ranks[i] = self.rng.choice(legal)
                    memory.add(i, ranks[i])
                return Placement(tuple(ranks), topology.world_size)
            except PlacementError as err:
                last = err
        assert last is not None
        raise last


class RoundRobinPlacer:
    """Table i on device i mod D (DreamShard's 'naive'); if that device is full, the next one
    (cyclically) with room."""

    def __init__(self, optimizer: str = DEFAULT_OPTIMIZER):
        self.optimizer = optimizer

    def place(self, tables: Sequence[TableSpec], topology: Topology) -> Placement:
        memory = _MemoryTracker(tables, topology, self.optimizer)
        world = topology.world_size
        ranks = []
        for i, t in enumerate(tables):
            for step in range(world):
                r = (i + step) % world
                if memory.fits(i, r):
                    break
            else:
                raise _no_room(t, memory.mem[i], memory.loads, memory.caps, "round_robin")
            ranks.append(r)
            memory.add(i, r)
        return Placement(tuple(ranks), world)


# DreamShard's cost keys.
def size_key(t: TableSpec) -> float:
    return float(t.size_bytes)


def dim_key(t: TableSpec) -> float:
    return float(t.dim)


def lookup_key(t: TableSpec) -> float:
    return t.dim * t.pooling_factor


def size_lookup_key(t: TableSpec) -> float:
    return t.dim * t.pooling_factor * math.log10(max(t.num_rows, 2))


GREEDY_KEYS: dict[str, Callable[[TableSpec], float]] = {
    "size_greedy": size_key,
    "dim_greedy": dim_key,
    "lookup_greedy": lookup_key,
    "size_lookup_greedy": size_lookup_key,
}
BASELINES = ("random", "round_robin", *GREEDY_KEYS)


def make_baseline(name: str, optimizer: str = DEFAULT_OPTIMIZER, seed: int = 0) -> Placer:
    """One of this module's placers by name (BASELINES); recsearch.placement.registry.make_placer
    knows every placer (these, TorchRec's planner and the learned one)."""
    if name == "random":
        return RandomPlacer(seed=seed, optimizer=optimizer)
    if name == "round_robin":
        return RoundRobinPlacer(optimizer=optimizer)
    if name in GREEDY_KEYS:
        return GreedyPlacer(GREEDY_KEYS[name], name, optimizer=optimizer)
    raise ValueError(f"unknown baseline placer {name!r}; known: {', '.join(BASELINES)}")
