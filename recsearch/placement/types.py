"""The placement contract: what a placement is, what it costs, and who makes or predicts one.

A *placement* puts every table of a task on one rank (table-wise sharding, as TorchRec's
``table_wise(rank=...)``) or, where a placer chooses to, on every rank (`REPLICATED`: TorchRec's
``data_parallel()``, each rank holding a copy and looking it up for its own samples). Its *cost* is
the time of one training step's embedding work:

- per device: the forward and backward time of the one fused FBGEMM lookup kernel
  (SplitTableBatchedEmbeddingBagsCodegen) over exactly the tables on that device, for the global
  batch (table-wise: every device looks its tables up for all samples), plus the replicated
  tables' kernel for the device's own batch_size / world_size samples, and
- communication: the all-to-all of pooled embeddings in forward and of their gradients in
  backward (table-wise tables only), and the all-reduce of the replicated tables' gradients
  (`allreduce_bytes`).

The step cost is the slowest device's compute plus the all-to-all time (`combine_costs`, the one
place that rule lives). Memory per table is `table_memory_bytes`, used by every placer, task
generator and check.

Standard library plus recsearch.types and recsearch.tables (numpy; TableSpec dicts are read there),
so cost models and placers can import it cheaply (no torch).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from recsearch.tables import table_from_dict
from recsearch.types import TableSpec, Topology

# Embedding optimizers (the names HParams.embedding_optimizer uses) -> optimizer state they keep,
# as (fp32 values per row, fp32 values per weight). FBGEMM keeps optimizer state in fp32 whatever
# the weight precision.
OPTIMIZER_STATE: dict[str, tuple[int, int]] = {
    "sgd": (0, 0),
    "rowwise_adagrad": (1, 0),  # one sum of squared gradients per row
    "adagrad": (0, 1),
    "adam": (0, 2),  # first and second moments
}
DEFAULT_OPTIMIZER = "rowwise_adagrad"  # the usual DLRM embedding optimizer (TorchRec's examples)
# refining a placement is bounded by a count of evaluations (refine.MAX_EVALUATIONS); this many
# seconds are only its safety net (a warning when they bind), about 20x what the budget takes on
# 504 tables x 64 ranks here
REFINE_SAFETY_SECONDS = 10.0
OPTIMIZER_STATE_BYTES = 4


def table_memory_bytes(table: TableSpec, optimizer: str = DEFAULT_OPTIMIZER) -> int:
    """Bytes a table occupies on its device: weights plus optimizer state.

    The one memory rule for placement: placers, task generators and the checks all use it.
    rowwise_adagrad (default) adds one fp32 per row; adagrad one per weight; adam two; sgd none.
    """
    try:
        per_row, per_weight = OPTIMIZER_STATE[optimizer]
    except KeyError:
        raise ValueError(
            f"unknown embedding optimizer {optimizer!r}; known: {', '.join(OPTIMIZER_STATE)}"
        ) from None
    state = table.num_rows * (per_row + per_weight * table.dim) * OPTIMIZER_STATE_BYTES
    return table.size_bytes + state


@dataclass(frozen=True)
class SequenceTableSpec(TableSpec):
    """A table of an EmbeddingCollection (sequence embeddings, not pooled): its all-to-all
    carries one row of dim per looked-up id (pooling_factor ids per sample, over all its
    features) instead of one pooled row per feature. The type is the flag; dataclasses.replace
    (column pieces) keeps it."""


def alltoall_width(table: TableSpec) -> float:
    """Values per sample that a table's output adds to the forward all-to-all: dim per feature
    for a pooled (EmbeddingBagCollection) table, dim x pooling_factor for a sequence table
    (SequenceTableSpec). A single-feature pooled table: its dim."""
    if isinstance(table, SequenceTableSpec):
        return table.dim * table.pooling_factor
    return table.dim * len(table.features)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n} B"  # unreachable


class PlacementError(ValueError):
    """A placement that cannot be made or is not allowed (a table fits no device, a device is over
    its memory cap, a rank outside the world). The message names the table and the sizes."""


def describe_caps(caps_bytes: Sequence[int]) -> str:
    """Each rank's cap, for messages: "6.80 MiB on each of 2 ranks" or "rank 0: 6.80 MiB,
    rank 1: 6.77 MiB"."""
    if len(set(caps_bytes)) == 1:
        return f"{format_bytes(caps_bytes[0])} on each of {len(caps_bytes)} ranks"
    return ", ".join(f"rank {r}: {format_bytes(c)}" for r, c in enumerate(caps_bytes))


def no_room_error(
    placer: str, table: TableSpec, need_bytes: int, used_bytes: Sequence[int], caps_bytes: Sequence[int]
) -> PlacementError:
    """A placer's error for a table no rank has room for: what it needs, and each rank's room
    left of its own cap (ranks' caps may differ: a storage reservation, pinned row-wise shards)."""
    room = ", ".join(
        f"rank {r}: {format_bytes(c - u)} of {format_bytes(c)} ({c:,} bytes)"
        for r, (u, c) in enumerate(zip(used_bytes, caps_bytes))
    )
    return PlacementError(
        f"{placer}: table {table.name!r} needs {format_bytes(need_bytes)} ({need_bytes:,} bytes) "
        f"but no rank has that much left of its cap; left of each rank's cap: {room}"
    )


@dataclass(frozen=True)
class CappedTopology(Topology):
    """A Topology whose devices have different memory caps (rank r: caps_bytes[r]); what the
    planner hands placers when a TorchRec Topology, a storage reservation or pinned row-wise
    shards leave ranks with different room. device_memory_bytes is the largest cap."""

    caps_bytes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "caps_bytes", tuple(int(c) for c in self.caps_bytes))
        if len(self.caps_bytes) != self.world_size:
            raise ValueError(
                f"caps_bytes has {len(self.caps_bytes)} entries for {self.world_size} ranks"
            )
        if any(c < 0 for c in self.caps_bytes):
            raise ValueError(f"caps_bytes must be >= 0, got {self.caps_bytes}")
        if max(self.caps_bytes) != self.device_memory_bytes:
            raise ValueError(
                f"device_memory_bytes ({self.device_memory_bytes}) must be the largest cap "
                f"({max(self.caps_bytes)})"
            )

    @classmethod
    def of(cls, caps_bytes: Sequence[int], compute_device: str = "cpu") -> CappedTopology:
        caps = tuple(int(c) for c in caps_bytes)
        if not caps or max(caps) <= 0:
            raise PlacementError(f"no device has any memory left for tables: caps {caps}")
        return cls(len(caps), max(caps), compute_device, caps)


def rank_caps(topology: Topology) -> tuple[int, ...]:
    """Each rank's memory cap in bytes: CappedTopology's own, else device_memory_bytes for all."""
    caps = getattr(topology, "caps_bytes", ())
    return tuple(caps) if caps else (topology.device_memory_bytes,) * topology.world_size


def check_fits(
    tables: Sequence[TableSpec], topology: Topology, optimizer: str = DEFAULT_OPTIMIZER
) -> None:
    """Raise PlacementError naming every table larger than the largest device memory cap."""
    cap = max(rank_caps(topology))
    too_big = [(t, table_memory_bytes(t, optimizer)) for t in tables]
    too_big = [(t, m) for t, m in too_big if m > cap]
    if too_big:
        lines = [
            f"table {t.name!r} ({t.num_rows:,} rows x dim {t.dim}, {format_bytes(m)} = {m:,} bytes "
            f"with {optimizer} state) does not fit a device's memory cap of {format_bytes(cap)} "
            f"({cap:,} bytes)"
            for t, m in too_big
        ]
        raise PlacementError("; ".join(lines))


# the "rank" of a replicated table (every rank holds a copy: TorchRec's data_parallel), in
# Placement.ranks; placement files write it as REPLICATED_NAME
REPLICATED = -1
REPLICATED_NAME = "data_parallel"


@dataclass(frozen=True)
class Placement:
    """Table index (position in the task's table list) -> rank (table-wise), or REPLICATED (a
    copy on every rank, data-parallel)."""

    ranks: tuple[int, ...]
    world_size: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "ranks", tuple(int(r) for r in self.ranks))
        if self.world_size <= 0:
            raise PlacementError(f"world_size must be positive, got {self.world_size}")
        bad = [
            (i, r)
            for i, r in enumerate(self.ranks)
            if not 0 <= r < self.world_size and r != REPLICATED
        ]
        if bad:
            raise PlacementError(
                f"ranks outside 0..{self.world_size - 1} (table index, rank): {bad[:10]}"
            )

    def __len__(self) -> int:
        return len(self.ranks)

    def tables_on(self, rank: int) -> tuple[int, ...]:
        """Indices of the tables placed on rank (table-wise), in task order."""
        return tuple(i for i, r in enumerate(self.ranks) if r == rank)

    def groups(self) -> list[tuple[int, ...]]:
        """tables_on(rank) for every rank (empty tuples for idle ranks); replicated tables are
        in none of them (see `replicated`)."""
        out: list[list[int]] = [[] for _ in range(self.world_size)]
        for i, r in enumerate(self.ranks):
            if r != REPLICATED:
                out[r].append(i)
        return [tuple(g) for g in out]

    @property
    def replicated(self) -> tuple[int, ...]:
        """Indices of the replicated (data-parallel) tables, in task order."""
        return tuple(i for i, r in enumerate(self.ranks) if r == REPLICATED)

    def with_replicated(self, indices: Iterable[int]) -> Placement:
        """The same placement with these tables replicated as well."""
        ranks = list(self.ranks)
        for i in indices:
            ranks[i] = REPLICATED
        return Placement(tuple(ranks), self.world_size)

    def memory_per_rank(
        self, tables: Sequence[TableSpec], optimizer: str = DEFAULT_OPTIMIZER
    ) -> list[int]:
        """Bytes on each rank: its table-wise tables, and every replicated table."""
        self._check_len(tables)
        mem = [0] * self.world_size
        for t, r in zip(tables, self.ranks):
            if r == REPLICATED:
                for d in range(self.world_size):
                    mem[d] += table_memory_bytes(t, optimizer)
            else:
                mem[r] += table_memory_bytes(t, optimizer)
        return mem

    def dim_per_rank(self, tables: Sequence[TableSpec]) -> list[float]:
        """Sum of the table-wise tables' all-to-all widths per rank (alltoall_width: the dim of
        a single-feature pooled table, dim per feature of a shared one, dim x pooling of a
        sequence table): the width of each rank's output in the all-to-all (replicated tables'
        outputs stay on their rank)."""
        self._check_len(tables)
        dims: list[float] = [0] * self.world_size
        for t, r in zip(tables, self.ranks):
            if r != REPLICATED:
                dims[r] += alltoall_width(t)
        return dims

    def validate(
        self, tables: Sequence[TableSpec], topology: Topology, optimizer: str = DEFAULT_OPTIMIZER
    ) -> None:
        """Raise PlacementError if the world sizes differ or any rank is over its memory cap."""
        self._check_len(tables)
        if self.world_size != topology.world_size:
            raise PlacementError(
                f"placement is for {self.world_size} ranks, topology has {topology.world_size}"
            )
        check_fits(tables, topology, optimizer)
        caps = rank_caps(topology)
        memory = self.memory_per_rank(tables, optimizer)
        over = [(r, m) for r, m in enumerate(memory) if m > caps[r]]
        if over:
            parts = []
            for r, m in over:
                names = [tables[i].name for i in self.tables_on(r)]
                shown = ", ".join(names[:8]) + (
                    f", ... ({len(names)} tables)" if len(names) > 8 else ""
                )
                parts.append(
                    f"rank {r} holds {format_bytes(m)} ({m:,} bytes) > cap "
                    f"{format_bytes(caps[r])} ({caps[r]:,} bytes): {shown}"
                )
            raise PlacementError(f"memory cap exceeded with {optimizer} state: " + "; ".join(parts))

    def to_dict(self, tables: Sequence[TableSpec]) -> dict[str, int | str]:
        """{table name: rank, or REPLICATED_NAME}: the placement file format `recsearch train
        plan=FILE` reads."""
        self._check_len(tables)
        return {t.name: REPLICATED_NAME if r == REPLICATED else r for t, r in zip(tables, self.ranks)}

    @classmethod
    def from_dict(
        cls, mapping: Mapping[str, int | str], tables: Sequence[TableSpec], world_size: int
    ) -> Placement:
        missing = [t.name for t in tables if t.name not in mapping]
        if missing:
            raise PlacementError(f"no rank for tables {missing[:10]}")
        return cls(tuple(rank_of(mapping[t.name]) for t in tables), world_size)

    def _check_len(self, tables: Sequence[TableSpec]) -> None:
        if len(tables) != len(self.ranks):
            raise PlacementError(
                f"placement has {len(self.ranks)} tables, the task has {len(tables)}"
            )


def rank_of(value: Any) -> int:
    """A placement file's value for a table: a rank (int), or REPLICATED_NAME -> REPLICATED."""
    if value == REPLICATED_NAME:
        return REPLICATED
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PlacementError(
            f"a table's place must be a rank (an int >= 0) or {REPLICATED_NAME!r}, got {value!r}"
        )
    return value


@dataclass(frozen=True)
class DeviceCost:
    """One device's share of a step: its fused kernel's forward and backward, and the time of the
    all-to-alls as this device sees them (forward pooled embeddings + backward gradients)."""

    fwd_ms: float
    bwd_ms: float
    comm_ms: float = 0.0

    @property
    def compute_ms(self) -> float:
        return self.fwd_ms + self.bwd_ms


@dataclass(frozen=True)
class Cost:
    """Cost of one training step's embedding work under a placement, in milliseconds.

    fwd_ms / bwd_ms are those of the slowest device (by fwd + bwd); comm_ms the all-to-all time;
    total_ms the step cost (`combine_costs`). per_device is empty when only totals are known.
    """

    fwd_ms: float
    bwd_ms: float
    comm_ms: float
    total_ms: float
    per_device: tuple[DeviceCost, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Cost:
        return cls(
            fwd_ms=float(raw["fwd_ms"]),
            bwd_ms=float(raw["bwd_ms"]),
            comm_ms=float(raw["comm_ms"]),
            total_ms=float(raw["total_ms"]),
            per_device=tuple(DeviceCost(**d) for d in raw.get("per_device", ())),
        )


def combine_costs(per_device: Sequence[DeviceCost]) -> Cost:
    """Step cost of a placement from its devices' costs: max over devices of (fwd + bwd), plus the
    all-to-all time, which is one collective everyone waits for (max over devices of comm_ms).

    (The all-to-alls synchronize the devices, so max(fwd) + max(bwd) + comm would be a tighter
    model of the barrier; it differs only when the slowest forward and slowest backward are on
    different devices. This function is the one place to change the rule.)
    """
    if not per_device:
        return Cost(0.0, 0.0, 0.0, 0.0, ())
    slowest = max(per_device, key=lambda d: d.compute_ms)
    comm = max(d.comm_ms for d in per_device)
    return Cost(
        fwd_ms=slowest.fwd_ms,
        bwd_ms=slowest.bwd_ms,
        comm_ms=comm,
        total_ms=slowest.compute_ms + comm,
        per_device=tuple(per_device),
    )


def alltoall_bytes(
    placement: Placement,
    tables: Sequence[TableSpec],
    batch_size: int,
    bytes_per_value: int = 4,
) -> list[tuple[int, int]]:
    """(bytes sent, bytes received) per rank by the forward all-to-all of pooled embeddings.

    batch_size is the global batch; each rank holds batch_size / world_size samples' dense part
    and, for its tables, the pooled embeddings of every sample. Rank d sends each peer that peer's
    samples' rows of its own pooled output, and receives from each peer the peer's output for its
    own samples. The backward all-to-all of gradients moves the same bytes the other way.
    """
    world = placement.world_size
    if world == 1:
        return [(0, 0)]
    dims = placement.dim_per_rank(tables)  # table-wise tables only
    total = sum(dims)
    local = batch_size / world
    return [
        (
            round((world - 1) * local * dims[d] * bytes_per_value),
            round(local * (total - dims[d]) * bytes_per_value),
        )
        for d in range(world)
    ]


def allreduce_bytes(
    placement: Placement, tables: Sequence[TableSpec], bytes_per_value: int = 4
) -> int:
    """Bytes each rank sends (and receives) in the ring all-reduce of the replicated tables'
    gradients: 2 (W - 1) / W of their fp32 weight gradients (a replica's gradient is dense,
    every row of the table); 0 with one rank or no replicated table."""
    world = placement.world_size
    rep = placement.replicated
    if world == 1 or not rep:
        return 0
    grad = sum(tables[i].num_rows * tables[i].dim for i in rep) * bytes_per_value
    return round(2 * (world - 1) / world * grad)


@dataclass(frozen=True)
class CostSample:
    """One measurement: the tables of one device (placement None: all on one kernel) or of a whole
    placement, the global batch they were measured at, and what they cost."""

    tables: tuple[TableSpec, ...]
    batch_size: int
    cost: Cost
    placement: Placement | None = None
    hardware: str = ""  # e.g. "cpu:AMD EPYC|threads=1|torch=2.13.0|fbgemm_gpu=1.8.0"
    optimizer: str = DEFAULT_OPTIMIZER
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tables": [asdict(t) for t in self.tables],
            "batch_size": self.batch_size,
            "cost": self.cost.to_dict(),
            "placement": None
            if self.placement is None
            else {"ranks": list(self.placement.ranks), "world_size": self.placement.world_size},
            "hardware": self.hardware,
            "optimizer": self.optimizer,
            "device": self.device,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> CostSample:
        p = raw.get("placement")
        return cls(
            tables=tuple(table_from_dict(t) for t in raw["tables"]),
            batch_size=int(raw["batch_size"]),
            cost=Cost.from_dict(raw["cost"]),
            placement=None if p is None else Placement(tuple(p["ranks"]), int(p["world_size"])),
            hardware=str(raw.get("hardware", "")),
            optimizer=str(raw.get("optimizer", DEFAULT_OPTIMIZER)),
            device=str(raw.get("device", "cpu")),
            extra=dict(raw.get("extra", {})),
        )


@runtime_checkable
class CostModel(Protocol):
    """Predicts the step cost of a placement; learned ones are fit on measured samples."""

    def predict(
        self, tables: Sequence[TableSpec], placement: Placement, topology: Topology
    ) -> Cost: ...

    def fit(self, samples: Iterable[CostSample]) -> None: ...


@runtime_checkable
class Placer(Protocol):
    """Puts each table on one rank within the topology's memory cap, or raises PlacementError."""

    def place(self, tables: Sequence[TableSpec], topology: Topology) -> Placement: ...


def placement_summary(
    placement: Placement, tables: Sequence[TableSpec], optimizer: str = DEFAULT_OPTIMIZER
) -> list[dict[str, Any]]:
    """Per rank: tables, dims, memory, lookups (dim x pooling): for logs and reports."""
    mem = placement.memory_per_rank(tables, optimizer)
    out = []
    for r, group in enumerate(placement.groups()):
        out.append(
            {
                "rank": r,
                "tables": len(group),
                "dim_sum": sum(tables[i].dim for i in group),
                "memory_bytes": mem[r],
                "lookup_dims": round(
                    math.fsum(tables[i].dim * tables[i].pooling_factor for i in group), 3
                ),
            }
        )
    return out


PLACEMENT_KIND = "recsearch.placement"


def placement_to_json(
    placement: Placement, tables: Sequence[TableSpec], **info: Any
) -> dict[str, Any]:
    """A placement file: {"placement": {table: rank}, "world_size": D, ...info}. `recsearch train`
    reads it as `plan: FILE` (recsearch.train.placement_file.load_placement takes the "placement" mapping)."""
    return {
        "kind": PLACEMENT_KIND,
        **info,
        "world_size": placement.world_size,
        "placement": placement.to_dict(tables),
    }


def save_placement(
    path: Any, placement: Placement, tables: Sequence[TableSpec], **info: Any
) -> None:
    import json

    from recsearch import remote

    remote.write_text(path, json.dumps(placement_to_json(placement, tables, **info), indent=1) + "\n")


def load_placement(
    path: Any, tables: Sequence[TableSpec], world_size: int | None = None
) -> Placement:
    """A placement file ({"placement": {...}} or a bare {table: rank}) for these tables."""
    import json
    from pathlib import Path

    try:
        raw = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err
    mapping = raw.get("placement", raw) if isinstance(raw, dict) else None
    if not isinstance(mapping, dict) or not all(
        (isinstance(v, int) and not isinstance(v, bool) and v >= 0) or v == REPLICATED_NAME
        for v in mapping.values()
    ):
        raise ValueError(
            f"{path}: expected a JSON object of table name -> rank (int) or {REPLICATED_NAME!r}"
        )
    ranks = [v for v in mapping.values() if isinstance(v, int)]
    world = world_size or int(raw.get("world_size", 0)) or (max(ranks, default=0) + 1)
    try:
        return Placement.from_dict(mapping, tables, world)
    except PlacementError as err:
        raise PlacementError(f"{path}: {err}") from None


@dataclass(frozen=True)
class BesideCopies:
    """The table-wise part of a placement once some tables are replicated: the other tables'
    indices (rest, in table order) and the room the copies leave each rank (room_bytes: each
    rank's cap less the copies, negative where they do not fit). What ReplicatingPlacer places
    and what refine refines when a placement holds replicas."""

    replicated: tuple[int, ...]
    rest: tuple[int, ...]
    room_bytes: tuple[int, ...]
    compute_device: str

    @classmethod
    def of(
        cls,
        tables: Sequence[TableSpec],
        replicated: Sequence[int],
        topology: Topology,
        optimizer: str = DEFAULT_OPTIMIZER,
    ) -> BesideCopies:
        picked = set(replicated)
        copies = sum(table_memory_bytes(tables[i], optimizer) for i in picked)
        return cls(
            tuple(sorted(picked)),
            tuple(i for i in range(len(tables)) if i not in picked),
            tuple(c - copies for c in rank_caps(topology)),
            topology.compute_device,
        )

    def fits(self) -> bool:
        return min(self.room_bytes) >= 0

    def topology(self) -> CappedTopology:
        """The room as a topology for a placer (PlacementError when no rank has any)."""
        return CappedTopology.of(self.room_bytes, self.compute_device)

    def tables(self, tables: Sequence[TableSpec]) -> list[TableSpec]:
        return [tables[i] for i in self.rest]

    def merged(self, rest_ranks: Sequence[int]) -> Placement:
        """The whole placement: the replicated tables on every rank, rest[j] on rest_ranks[j]."""
        ranks = [REPLICATED] * (len(self.replicated) + len(self.rest))
        for i, r in zip(self.rest, rest_ranks, strict=True):
            ranks[i] = r
        return Placement(tuple(ranks), len(self.room_bytes))
