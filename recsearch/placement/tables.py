"""Table pools and placement tasks: generated, split, written to files, read back.

`recsearch place tables pool  --out-dir DIR [--num-tables 1000] [--seed 0] [--test-fraction 0.5]`
`recsearch place tables tasks --pool DIR/pool_train.json --tables 50 100 --devices 4 8 --num 10 --out-dir DIR/tasks/train`
`recsearch place tables suite --pool-dir DIR [--num 10]`   (the standard train/test task sets)
(command line: recsearch.placement.cli.tables)

A *pool* is a set of tables described the way placement sees them (TableSpec: rows, dim, pooling
factor, bytes per value, reuse histogram). Generated tables follow what production DLRM tables look
like: log-normal rows, dims from {4, ..., 256}, log-normal pooling factors (>= 1), and Zipf-skewed
ids. The reuse histogram is not made up: for each table a batch of ids is sampled from its Zipf
distribution and histogrammed exactly as `recsearch data stats` does for real data (share of the
batch's lookups per power-of-two reuse bin), at a recorded batch size. The default Zipf exponents
are calibrated so that a pool's lookup-weighted reuse histogram is close to the aggregate of Meta's
DLRM datasets: the `embedding_bag/202{1,2}/locality_stats.txt` files of the public repository
facebookresearch/dlrm_datasets (not shipped here; `load_locality_stats` reads one, `calibrate_zipf`
fits the exponents to it).

A pool is split into disjoint train and test pools (DreamShard's protocol); a *task* draws T tables
from one pool for D devices with a per-device memory cap that is tight but feasible: the tables'
total memory x slack / D, never below the largest table, raised until a first-fit-decreasing
packing succeeds and until the key-greedy baselines can place them too (`feasible_cap`). Pools
and tasks are JSON files, so every result can be reproduced from them; tables are also read from
YAML and CSV (recsearch.tables owns the table-file format: pool files are `recsearch data stats`
files).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from recsearch import remote
from recsearch.placement.baselines import make_baseline
from recsearch.placement.types import (
    DEFAULT_OPTIMIZER,
    OPTIMIZER_STATE,
    PlacementError,
    table_memory_bytes,
)
from recsearch.tables import read_table_file, reuse_histogram, save_tables, table_from_dict
from recsearch.types import NUM_REUSE_BINS, TableSpec, Topology

POOL_KIND = "recsearch.placement.pool"
TASK_KIND = "recsearch.placement.task"
FORMAT_VERSION = 1
REUSE_HIST_KIND = (
    "lookup_share"  # share of lookups per reuse bin (recsearch.tables.reuse_histogram)
)
_ZIPF_HEAD = 1 << 16  # rows sampled from the exact discrete CDF; the tail from the continuous law


# --------------------------------------------------------------------------------------------
# Zipf ids and reuse histograms


def zipf_ids(rng: np.random.Generator, num_rows: int, exponent: float, n: int) -> np.ndarray:
    """n ids in [0, num_rows) with P(id = k) proportional to (k + 1) ** -exponent (bounded Zipf;
    exponent 0 is uniform). Rank 0 is the hottest id; callers permute ids if position matters.

    Exact for the first 2^16 ranks; beyond, the tail is drawn from the continuous power law over
    [head + 0.5, num_rows + 0.5), whose mass approximates the discrete sum to < 1e-6 relative.
    """
    if num_rows <= 0 or n < 0:
        raise ValueError(f"num_rows must be positive and n >= 0, got {num_rows}, {n}")
    s = float(exponent)
    if s == 0.0:
        return rng.integers(0, num_rows, n, dtype=np.int64)
    head = min(num_rows, _ZIPF_HEAD)
    weights = np.arange(1, head + 1, dtype=np.float64) ** -s
    cdf = np.cumsum(weights)
    head_mass = cdf[-1]
    tail_mass = _power_integral(head + 0.5, num_rows + 0.5, s) if num_rows > head else 0.0
    u = rng.random(n) * (head_mass + tail_mass)
    ids = np.empty(n, dtype=np.int64)
    in_head = u < head_mass
    ids[in_head] = np.minimum(np.searchsorted(cdf, u[in_head], side="right"), head - 1)
    if tail_mass > 0:
        v = (u[~in_head] - head_mass) / tail_mass  # uniform in [0, 1) over the tail
        x = _power_inverse(head + 0.5, num_rows + 0.5, s, v)
        ids[~in_head] = np.clip(np.floor(x - 0.5).astype(np.int64), head, num_rows - 1)
    return ids


def _power_integral(a: float, b: float, s: float) -> float:
    if abs(s - 1.0) < 1e-12:
        return math.log(b / a)
    return (b ** (1 - s) - a ** (1 - s)) / (1 - s)


def _power_inverse(a: float, b: float, s: float, v: np.ndarray) -> np.ndarray:
    """x in [a, b) with density proportional to x^-s, from uniform v."""
    if abs(s - 1.0) < 1e-12:
        return a * np.exp(v * math.log(b / a))
    lo, hi = a ** (1 - s), b ** (1 - s)
    return (lo + v * (hi - lo)) ** (1 / (1 - s))


def sample_lengths(rng: np.random.Generator, pooling_factor: float, batch_size: int) -> np.ndarray:
    """Ids per sample for one table: Poisson with mean pooling_factor (zero-length bags occur, as in
    real data)."""
    return rng.poisson(pooling_factor, batch_size).astype(np.int64)


def zipf_reuse_hist(
    rng: np.random.Generator, num_rows: int, pooling_factor: float, exponent: float, batch_size: int
) -> tuple[float, ...]:
    """The reuse histogram of one sampled batch of a Zipf table."""
    n = int(sample_lengths(rng, pooling_factor, batch_size).sum())
    hist = reuse_histogram(zipf_ids(rng, num_rows, exponent, n))
    return tuple(round(float(x), 6) for x in hist)


# --------------------------------------------------------------------------------------------
# Pools


@dataclass(frozen=True)
class PoolConfig:
    """How a synthetic table pool is drawn. Defaults keep every table measurable on one CPU
    (weights <= max_table_bytes) while spanning three to four orders of magnitude in rows."""

    num_tables: int = 1000
    seed: int = 0
    rows_median: float = 50_000
    rows_sigma: float = 2.0  # of log(rows)
    min_rows: int = 100
    max_rows: int = 5_000_000
    max_table_bytes: int = 256 * 2**20  # weights; rows are cut so rows * dim * 4 stays under it
    dims: tuple[int, ...] = (4, 8, 16, 32, 64, 128, 256)
    dim_probs: tuple[float, ...] = (0.05, 0.15, 0.25, 0.25, 0.15, 0.10, 0.05)
    pooling_median: float = 6.0
    pooling_sigma: float = 1.2  # of log(pooling factor)
    max_pooling: float = 150.0
    # Zipf exponent per table ~ Normal(zipf_mean, zipf_sd) clipped to [zipf_min, zipf_max];
    # calibrated against the DLRM datasets' aggregate reuse (calibrate_zipf).
    zipf_mean: float = 0.8
    zipf_sd: float = 0.2
    zipf_min: float = 0.0
    zipf_max: float = 1.5
    reuse_batch_size: int = 8192  # the global batch the reuse histograms describe
    bytes_per_value: int = 4

    def __post_init__(self) -> None:
        if self.num_tables <= 0:
            raise ValueError(f"num_tables must be positive, got {self.num_tables}")
        if len(self.dims) != len(self.dim_probs) or abs(sum(self.dim_probs) - 1) > 1e-6:
            raise ValueError("dims and dim_probs must have equal length and dim_probs sum to 1")
        if not 1 <= self.min_rows <= self.max_rows:
            raise ValueError(
                f"need 1 <= min_rows <= max_rows, got {self.min_rows}, {self.max_rows}"
            )
        if self.reuse_batch_size <= 0:
            raise ValueError("reuse_batch_size must be positive")


@dataclass(frozen=True)
class TablePool:
    tables: tuple[TableSpec, ...]
    zipf_exponents: tuple[float, ...]  # parallel to tables
    config: PoolConfig
    split: str = "all"

    def subset(self, indices: Sequence[int], split: str) -> TablePool:
        return TablePool(
            tuple(self.tables[i] for i in indices),
            tuple(self.zipf_exponents[i] for i in indices),
            self.config,
            split,
        )


def generate_pool(config: PoolConfig = PoolConfig()) -> TablePool:
    """Draw config.num_tables tables; the same config gives the same pool, table for table."""
    rng = np.random.default_rng([config.seed, 0x7AB1E])
    n = config.num_tables
    dims = rng.choice(np.asarray(config.dims), size=n, p=np.asarray(config.dim_probs))
    rows = np.exp(rng.normal(math.log(config.rows_median), config.rows_sigma, n))
    byte_rows = config.max_table_bytes // (dims * config.bytes_per_value)
    rows = np.clip(np.minimum(rows, byte_rows), config.min_rows, config.max_rows).astype(np.int64)
    pooling = np.exp(rng.normal(math.log(config.pooling_median), config.pooling_sigma, n))
    pooling = np.clip(pooling, 1.0, config.max_pooling)
    exponents = np.clip(
        rng.normal(config.zipf_mean, config.zipf_sd, n), config.zipf_min, config.zipf_max
    )
    width = len(str(n - 1))
    tables, zipfs = [], []
    for i in range(n):
        hist_rng = np.random.default_rng([config.seed, 0x5EED, i])
        pf = round(float(pooling[i]), 3)
        s = round(float(exponents[i]), 4)
        tables.append(
            TableSpec(
                name=f"t{i:0{width}d}",
                num_rows=int(rows[i]),
                dim=int(dims[i]),
                pooling_factor=pf,
                reuse_hist=zipf_reuse_hist(hist_rng, int(rows[i]), pf, s, config.reuse_batch_size),
                bytes_per_value=config.bytes_per_value,
            )
        )
        zipfs.append(s)
    return TablePool(tuple(tables), tuple(zipfs), config)


def split_pool(
    pool: TablePool, test_fraction: float = 0.5, seed: int = 0
) -> tuple[TablePool, TablePool]:
    """Disjoint train and test pools (a random partition of the tables)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng([seed, 0x5B11]).permutation(len(pool.tables))
    n_test = max(1, round(len(order) * test_fraction))
    test_idx = sorted(order[:n_test].tolist())
    train_idx = sorted(order[n_test:].tolist())
    return pool.subset(train_idx, "train"), pool.subset(test_idx, "test")


# --------------------------------------------------------------------------------------------
# Tasks


@dataclass(frozen=True)
class Task:
    """T tables to place on D devices under a per-device memory cap."""

    name: str
    tables: tuple[TableSpec, ...]
    world_size: int
    device_memory_bytes: int
    compute_device: str = "cpu"
    optimizer: str = DEFAULT_OPTIMIZER
    seed: int = 0
    slack: float = 1.1
    pool: str = ""  # the pool file the tables came from (informational)
    table_ids: tuple[int, ...] = ()  # their positions in that pool
    reuse_batch_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def topology(self) -> Topology:
        return Topology(self.world_size, self.device_memory_bytes, self.compute_device)


# Baselines every generated task must admit (a cap only first-fit-decreasing can meet would make
# the key-greedy baselines fail instead of being compared); "random" retries and is left out.
CAP_PLACERS = ("round_robin", "size_greedy", "dim_greedy", "lookup_greedy", "size_lookup_greedy")


def feasible_cap(
    tables: Sequence[TableSpec],
    world_size: int,
    slack: float,
    optimizer: str = DEFAULT_OPTIMIZER,
    placers: Sequence[str] = CAP_PLACERS,
) -> int:
    """Per-device cap = total memory x slack / world_size, at least the largest table, raised in
    2% steps until first-fit-decreasing packs the tables and every baseline in placers places
    them (so every task has solutions and every baseline a result)."""
    if slack < 1:
        raise ValueError(f"slack must be >= 1 (a cap below total/D is infeasible), got {slack}")
    mems = [table_memory_bytes(t, optimizer) for t in tables]
    cap = max(math.ceil(sum(mems) * slack / world_size), max(mems))

    def admits(cap: int) -> bool:
        if not _ffd_packs(mems, world_size, cap):
            return False
        topo = Topology(world_size, cap)
        for name in placers:
            try:
                make_baseline(name, optimizer=optimizer).place(tables, topo)
            except PlacementError:
                return False
        return True

    while not admits(cap):
        cap = math.ceil(cap * 1.02)
    return cap


def _ffd_packs(mems: Sequence[int], bins: int, cap: int) -> bool:
    loads = [0] * bins
    for m in sorted(mems, reverse=True):
        best = min(
            (b for b in range(bins) if loads[b] + m <= cap), key=lambda b: loads[b], default=None
        )
        if best is None:
            return False
        loads[best] += m
    return True


def make_task(
    pool: Sequence[TableSpec],
    num_tables: int,
    world_size: int,
    seed: int,
    *,
    slack: float = 1.1,
    cap_placers: Sequence[str] = CAP_PLACERS,
    optimizer: str = DEFAULT_OPTIMIZER,
    compute_device: str = "cpu",
    name: str | None = None,
    pool_name: str = "",
    reuse_batch_size: int | None = None,
) -> Task:
    """Draw num_tables distinct tables of the pool (seeded) for world_size devices."""
    if not 0 < num_tables <= len(pool):
        raise ValueError(f"cannot draw {num_tables} tables from a pool of {len(pool)}")
    rng = np.random.default_rng([seed, num_tables, world_size])
    ids = tuple(sorted(rng.choice(len(pool), size=num_tables, replace=False).tolist()))
    tables = tuple(pool[i] for i in ids)
    cap = feasible_cap(tables, world_size, slack, optimizer, cap_placers)
    mems = [table_memory_bytes(t, optimizer) for t in tables]
    return Task(
        name=name or f"t{num_tables}_d{world_size}_s{seed}",
        tables=tables,
        world_size=world_size,
        device_memory_bytes=cap,
        compute_device=compute_device,
        optimizer=optimizer,
        seed=seed,
        slack=slack,
        pool=pool_name,
        table_ids=ids,
        reuse_batch_size=reuse_batch_size,
        extra={
            "total_memory_bytes": sum(mems),
            "largest_table_bytes": max(mems),
            "cap_over_mean_load": round(cap * world_size / sum(mems), 4),
        },
    )


def generate_tasks(
    pool: Sequence[TableSpec],
    shapes: Sequence[tuple[int, int]],
    num_per_shape: int,
    seed: int = 0,
    prefix: str = "",
    **kwargs: Any,
) -> list[Task]:
    """num_per_shape tasks for each (num_tables, world_size); task k of a shape uses seed + k, so
    adding tasks never changes the earlier ones."""
    tasks = []
    for num_tables, world_size in shapes:
        for k in range(num_per_shape):
            name = f"{prefix}t{num_tables}_d{world_size}_{k:03d}"
            tasks.append(make_task(pool, num_tables, world_size, seed + k, name=name, **kwargs))
    return tasks


# --------------------------------------------------------------------------------------------
# Files


def save_pool(path: Path | str, pool: TablePool) -> None:
    info = {
        "kind": POOL_KIND,
        "version": FORMAT_VERSION,
        "split": pool.split,
        "reuse_hist_kind": REUSE_HIST_KIND,
        "batch_size": pool.config.reuse_batch_size,  # the key `recsearch data stats` uses
        "config": asdict(pool.config),
        "zipf_exponent": {t.name: s for t, s in zip(pool.tables, pool.zipf_exponents)},
    }
    save_tables(path, pool.tables, info)


def load_pool(path: Path | str) -> TablePool:
    tables, info = read_table_file(path)
    cfg_raw = info.get("config") or {}
    cfg = (
        PoolConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg_raw.items()})
        if cfg_raw
        else PoolConfig(num_tables=len(tables))
    )
    zipf = info.get("zipf_exponent") or {}
    return TablePool(
        tuple(tables),
        tuple(float(zipf.get(t.name, math.nan)) for t in tables),
        cfg,
        info.get("split", "all"),
    )


# The standard sets: DreamShard-like shapes for training, the same shapes plus device counts never
# seen in training for testing, on the disjoint test pool.
TRAIN_SHAPES = ((50, 4), (100, 8), (200, 16))
TEST_SHAPES = TRAIN_SHAPES + ((60, 2), (75, 6), (150, 12))


def task_to_dict(task: Task) -> dict[str, Any]:
    return {
        "kind": TASK_KIND,
        "version": FORMAT_VERSION,
        "name": task.name,
        "world_size": task.world_size,
        "device_memory_bytes": task.device_memory_bytes,
        "compute_device": task.compute_device,
        "optimizer": task.optimizer,
        "seed": task.seed,
        "slack": task.slack,
        "pool": task.pool,
        "table_ids": list(task.table_ids),
        "reuse_batch_size": task.reuse_batch_size,
        "extra": task.extra,
        "tables": [asdict(t) for t in task.tables],
    }


def task_from_dict(raw: dict[str, Any], origin: str = "<task>") -> Task:
    try:
        if raw.get("kind", TASK_KIND) != TASK_KIND:
            raise ValueError(f"kind is {raw.get('kind')!r}, not {TASK_KIND!r}")
        optimizer = raw.get("optimizer", DEFAULT_OPTIMIZER)
        if optimizer not in OPTIMIZER_STATE:
            raise ValueError(f"unknown optimizer {optimizer!r}")
        return Task(
            name=str(raw["name"]),
            tables=tuple(table_from_dict(t) for t in raw["tables"]),
            world_size=int(raw["world_size"]),
            device_memory_bytes=int(raw["device_memory_bytes"]),
            compute_device=str(raw.get("compute_device", "cpu")),
            optimizer=optimizer,
            seed=int(raw.get("seed", 0)),
            slack=float(raw.get("slack", 1.0)),
            pool=str(raw.get("pool", "")),
            table_ids=tuple(int(i) for i in raw.get("table_ids", ())),
            reuse_batch_size=raw.get("reuse_batch_size"),
            extra=dict(raw.get("extra") or {}),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{origin}: not a placement task: {err}") from err


def save_task(path: Path | str, task: Task) -> None:
    remote.write_text(Path(path), json.dumps(task_to_dict(task), indent=1) + "\n")


def load_task(path: Path | str) -> Task:
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err
    return task_from_dict(raw, str(path))


def load_tasks(path: Path | str) -> list[Task]:
    """A task file, or every *.json task in a directory (sorted by name)."""
    path = Path(path)
    if path.is_dir():
        return [load_task(p) for p in sorted(path.glob("*.json"))]
    return [load_task(path)]


# --------------------------------------------------------------------------------------------
# Calibration against the DLRM datasets' aggregate reuse


def load_locality_stats(path: Path | str) -> list[dict[str, Any]]:
    """Blocks of facebookresearch/dlrm_datasets' locality_stats.txt: per .pt file, the batch size,
    'rows' (share of distinct rows per reuse bin: DreamShard's bins) and 'lookups' (share of
    lookups per reuse bin: recsearch's reuse_hist), each NUM_REUSE_BINS long."""
    blocks: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    target = None
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line.endswith(".pt"):
            current = {"file": line, "rows": [], "lookups": []}
            blocks.append(current)
        elif current is None:
            continue
        elif m := re.match(r"Locality stats after processing \d+ batches of size (\d+)", line):
            current["batch_size"] = int(m.group(1))
        elif line.startswith("Histogram of col sizes"):
            target = "rows"
        elif line.startswith("Ratio of index distribution"):
            target = "lookups"
        elif target and (m := re.match(r"\((\d+)(?:, \d+\]|\+):\s*([0-9.]+)", line)):
            current[target].append(float(m.group(2)))
    for b in blocks:
        if len(b["rows"]) != NUM_REUSE_BINS or len(b["lookups"]) != NUM_REUSE_BINS:
            raise ValueError(f"{path}: block {b['file']} does not have {NUM_REUSE_BINS} bins")
    return blocks


def pool_lookup_hist(tables: Sequence[TableSpec]) -> np.ndarray:
    """Lookup-weighted aggregate reuse histogram of a set of tables (what locality_stats reports
    over all tables of a batch)."""
    w = np.array([t.pooling_factor for t in tables])
    h = np.array([t.reuse_hist for t in tables])
    return (w[:, None] * h).sum(0) / w.sum()


def calibrate_zipf(
    target: Sequence[float],
    batch_size: int,
    config: PoolConfig = PoolConfig(num_tables=48),
    means: Sequence[float] = tuple(np.round(np.arange(0.6, 1.41, 0.05), 2)),
    sds: Sequence[float] = (0.1, 0.25, 0.4),
    grid: Sequence[float] = tuple(np.round(np.arange(0.0, 1.61, 0.1), 2)),
    max_ids: int = 2_000_000,
) -> list[tuple[float, float, float]]:
    """(L1 distance, zipf_mean, zipf_sd) for each candidate, best first: how far the pool's
    lookup-weighted reuse histogram at batch_size is from target. Per-table histograms are computed
    once per exponent on a grid and mixed with the candidate's normal weights (cheap)."""
    pool = generate_pool(replace(config, zipf_sd=0.0))  # rows / dims / pooling as configured
    hists = np.zeros((len(pool.tables), len(grid), NUM_REUSE_BINS))
    for i, t in enumerate(pool.tables):
        rng = np.random.default_rng([config.seed, 0xCA1, i])
        n = min(max_ids, round(t.pooling_factor * batch_size))
        for j, s in enumerate(grid):
            hists[i, j] = reuse_histogram(zipf_ids(rng, t.num_rows, s, n))
    w = np.array([t.pooling_factor for t in pool.tables])
    target_arr = np.asarray(target, dtype=np.float64)
    results = []
    g = np.asarray(grid)
    for mean in means:
        for sd in sds:
            p = np.exp(-0.5 * ((g - mean) / sd) ** 2)
            p /= p.sum()
            agg = np.einsum("t,tsb,s->b", w, hists, p) / w.sum()
            results.append((float(np.abs(agg - target_arr).sum()), float(mean), float(sd)))
    return sorted(results)


__all__ = [
    "PoolConfig",
    "TablePool",
    "Task",
    "calibrate_zipf",
    "feasible_cap",
    "generate_pool",
    "generate_tasks",
    "load_locality_stats",
    "load_pool",
    "load_task",
    "load_tasks",
    "make_task",
    "pool_lookup_hist",
    "sample_lengths",
    "save_pool",
    "save_task",
    "split_pool",
    "zipf_ids",
    "zipf_reuse_hist",
]
