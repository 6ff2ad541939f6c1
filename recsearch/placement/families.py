"""Table families: pools of tables shaped like the embedding tables of different kinds of data,
for testing whether a placer generalizes to tables it never saw (leave-one-family-out).

A family is a named way of drawing a pool of TableSpecs (rows, dim, pooling factor, reuse
histogram). Seven families:

- `lognormal`: the generator the shipped cost nets and policies were trained on
  (`tables.generate_pool`: log-normal rows and pooling, dims 4..256, Zipf reuse).
- `criteo_kaggle`: the 26 categorical features of the Criteo Kaggle (Display Advertising
  Challenge) data, at their real cardinalities (3 to 10.1M ids), one-hot, each at dims 16, 32,
  64 and 128.
- `criteo_terabyte`: the 26 features of Criteo Terabyte as MLPerf's DLRM hashes them (at most
  40M ids), one-hot, each at dims 32, 64 and 128.
- `avazu`: 22 one-hot features with the cardinalities of Avazu's CTR data (hour of day to 6.7M
  device ips, approximate), each at dims 8, 16, 32 and 64.
- `heavy_multihot`: multi-hot tables with log-normal pooling factors up to hundreds of ids per
  sample, rows from tens to millions, dims 8..96.
- `tiny_huge`: many tiny tables (a few to a thousand rows, dims 4..16, one or two ids per sample)
  with a few huge ones (millions of rows, dims 64..128).
- `mixed_dims`: every dim from 4 to 512 in steps of 4 (log-uniform), so that the tables' widths
  are not the powers of two the other families use.

Reuse histograms come from Zipf-skewed ids sampled at the pool's reuse batch size, as for the
generated pools (`tables.zipf_reuse_hist`); real-cardinality families draw a Zipf exponent per
table (the public data gives the cardinalities, not per-id counts). `max_table_bytes` cuts rows so
that no table's weights exceed it (the CPU measurements keep every table under 256 MiB; a GPU pool
can keep the real sizes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from recsearch.placement.tables import (
    REUSE_HIST_KIND,
    PoolConfig,
    Task,
    generate_pool,
    make_task,
    save_task,
    zipf_reuse_hist,
)
from recsearch.tables import read_table_file, save_tables
from recsearch.types import TableSpec

# Criteo Kaggle's categorical cardinalities (C1..C26), as TorchRec's DLRM example lists them.
CRITEO_KAGGLE_ROWS = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)
# Criteo Terabyte's, hashed to at most 40M ids (MLPerf DLRM's setting).
CRITEO_TERABYTE_ROWS = (
    39884406, 39043, 17289, 7420, 20263, 3, 7120, 1543, 63, 38532951, 2953546, 403346, 10,
    2208, 11938, 155, 4, 976, 14, 39979771, 25641295, 39664984, 585935, 12972, 108, 36,
)
# Avazu's 22 categorical fields (hour of day, C1, banner_pos, site_*, app_*, device_*, C14..C21),
# approximate distinct counts of its 40M-row train file.
AVAZU_ROWS = (
    24, 7, 7, 4737, 7745, 26, 8552, 559, 36, 2686408, 6729486, 8251, 5, 4,
    2626, 8, 9, 435, 4, 68, 172, 60,
)


@dataclass(frozen=True)
class FamilySettings:
    """What every family's pool shares."""

    num_tables: int = 200  # for the generated families (real-cardinality ones have their own)
    seed: int = 0
    max_table_bytes: int = 256 * 2**20  # weights; rows are cut so rows * dim * bytes stays under
    reuse_batch_size: int = 8192
    bytes_per_value: int = 4


@dataclass(frozen=True)
class Family:
    """One family: its name, a line saying what it is, and how its tables are drawn."""

    name: str
    description: str

    def tables(self, settings: FamilySettings) -> tuple[TableSpec, ...]:
        raise NotImplementedError


@dataclass(frozen=True)
class LogNormalFamily(Family):
    def tables(self, settings: FamilySettings) -> tuple[TableSpec, ...]:
        pool = generate_pool(
            PoolConfig(
                num_tables=settings.num_tables,
                seed=settings.seed,
                max_table_bytes=settings.max_table_bytes,
                reuse_batch_size=settings.reuse_batch_size,
                bytes_per_value=settings.bytes_per_value,
            )
        )
        return tuple(replace(t, name=f"{self.name}_{t.name}") for t in pool.tables)


@dataclass(frozen=True)
class CardinalityFamily(Family):
    """Real cardinalities, one-hot, each feature at every one of dims."""

    rows: tuple[int, ...] = ()
    dims: tuple[int, ...] = ()
    zipf_mean: float = 1.0
    zipf_sd: float = 0.2

    def tables(self, settings: FamilySettings) -> tuple[TableSpec, ...]:
        rng = np.random.default_rng([settings.seed, 0xCA4D])
        specs = []
        for f, rows in enumerate(self.rows):
            exponent = float(np.clip(rng.normal(self.zipf_mean, self.zipf_sd), 0.3, 1.6))
            for dim in self.dims:
                specs.append(
                    _table(f"{self.name}_c{f + 1}_d{dim}", rows, dim, 1.0, exponent, settings,
                           hist_seed=(f, dim))
                )
        return tuple(specs)


@dataclass(frozen=True)
class TableKind:
    """A kind of table in a DrawnFamily: rows log-uniform in rows, dim uniform over dims, pooling
    log-normal (median, sigma of its log) clipped to [1, max_pooling]; share: how often drawn."""

    share: float
    rows: tuple[int, int]
    dims: tuple[int, ...]
    pooling_median: float = 1.0
    pooling_sigma: float = 0.0
    max_pooling: float = 1.0


@dataclass(frozen=True)
class DrawnFamily(Family):
    """Tables drawn one by one: a mix of kinds, each with its own rows/dims/pooling laws."""

    kinds: tuple[TableKind, ...] = ()

    def tables(self, settings: FamilySettings) -> tuple[TableSpec, ...]:
        rng = np.random.default_rng([settings.seed, 0xD4A1])
        shares = np.asarray([k.share for k in self.kinds], dtype=np.float64)
        picks = rng.choice(len(self.kinds), size=settings.num_tables, p=shares / shares.sum())
        width = len(str(settings.num_tables - 1))
        specs = []
        for i, k in enumerate(picks):
            kind = self.kinds[int(k)]
            rows = int(round(math.exp(rng.uniform(math.log(kind.rows[0]), math.log(kind.rows[1])))))
            dim = int(rng.choice(np.asarray(kind.dims)))
            pooling = float(np.clip(math.exp(rng.normal(math.log(kind.pooling_median), kind.pooling_sigma)),
                                    1.0, kind.max_pooling))
            exponent = float(np.clip(rng.normal(0.8, 0.2), 0.0, 1.5))
            specs.append(_table(f"{self.name}_t{i:0{width}d}", rows, dim, round(pooling, 3), exponent,
                                settings, hist_seed=(i,)))
        return tuple(specs)


def _table(name: str, rows: int, dim: int, pooling: float, exponent: float, settings: FamilySettings,
           hist_seed: tuple[int, ...]) -> TableSpec:
    rows = max(1, min(rows, settings.max_table_bytes // (dim * settings.bytes_per_value)))
    hist_rng = np.random.default_rng([settings.seed, 0x5EED, *hist_seed])
    return TableSpec(
        name=name,
        num_rows=rows,
        dim=dim,
        pooling_factor=pooling,
        reuse_hist=zipf_reuse_hist(hist_rng, rows, pooling, exponent, settings.reuse_batch_size),
        bytes_per_value=settings.bytes_per_value,
    )


def families() -> dict[str, Family]:
    """Every family by name (a fresh dict: callers may not change what others see)."""
    found: list[Family] = [
        LogNormalFamily("lognormal", "log-normal rows and pooling, dims 4..256 (the shipped nets' generator)"),
        CardinalityFamily("criteo_kaggle", "Criteo Kaggle's 26 real cardinalities, one-hot, dims 16/32/64/128",
                          rows=CRITEO_KAGGLE_ROWS, dims=(16, 32, 64, 128)),
        CardinalityFamily("criteo_terabyte", "Criteo Terabyte's 26 cardinalities (<= 40M), one-hot, dims 32/64/128",
                          rows=CRITEO_TERABYTE_ROWS, dims=(32, 64, 128)),
        CardinalityFamily("avazu", "Avazu-like 22 cardinalities, one-hot, dims 8/16/32/64",
                          rows=AVAZU_ROWS, dims=(8, 16, 32, 64), zipf_mean=0.9),
        DrawnFamily("heavy_multihot", "multi-hot, pooling log-normal (median 20, up to 300), dims 8..96",
                    kinds=(TableKind(1.0, (20, 3_000_000), (8, 16, 24, 32, 48, 64, 96), 20.0, 0.9, 300.0),)),
        DrawnFamily("tiny_huge", "90% tiny tables (<= 1,000 rows, dims 4..16) and 10% huge ones (1M-20M rows, dims 64/128)",
                    kinds=(TableKind(0.9, (2, 1000), (4, 8, 16), 1.2, 0.3, 4.0),
                           TableKind(0.1, (1_000_000, 20_000_000), (64, 128), 2.0, 1.0, 40.0))),
        DrawnFamily("mixed_dims", "every dim 4..512 in steps of 4, log-uniform; moderate pooling",
                    kinds=(TableKind(1.0, (100, 2_000_000), _log_uniform_dims(4, 512), 4.0, 1.0, 80.0),)),
    ]
    return {f.name: f for f in found}


def _log_uniform_dims(lo: int, hi: int) -> tuple[int, ...]:
    """Multiples of 4 in [lo, hi], each repeated so that a uniform pick is about log-uniform."""
    dims: list[int] = []
    for d in range(lo, hi + 1, 4):
        dims.extend([d] * max(1, round(64 / d)))
    return tuple(dims)


def family_tables(name: str, settings: FamilySettings = FamilySettings()) -> tuple[TableSpec, ...]:
    """The pool of one family; an unknown name is a ValueError listing the known ones."""
    known = families()
    if name not in known:
        raise ValueError(f"unknown table family {name!r}; known: {', '.join(known)}")
    return known[name].tables(settings)


def family_names() -> Sequence[str]:
    return tuple(families())


# Held-out task shapes per family, (tables, devices): three per family, sized to the pool.
FAMILY_TASK_SHAPES: dict[str, tuple[tuple[int, int], ...]] = {
    "lognormal": ((50, 4), (75, 6), (90, 16)),
    "criteo_kaggle": ((52, 4), (78, 6), (104, 8)),
    "criteo_terabyte": ((39, 3), (52, 4), (78, 6)),
    "avazu": ((44, 4), (66, 6), (88, 8)),
    "heavy_multihot": ((40, 3), (60, 4), (80, 8)),
    "tiny_huge": ((80, 4), (120, 8), (160, 12)),
    "mixed_dims": ((50, 4), (75, 6), (100, 8)),
}


def family_tasks(
    name: str,
    tables: Sequence[TableSpec],
    *,
    seed: int = 0,
    compute_device: str = "cpu",
    pool_name: str = "",
    reuse_batch_size: int | None = None,
) -> list[Task]:
    """One task per FAMILY_TASK_SHAPES entry of the family, drawn from its tables (a shape with
    more tables than the pool takes them all), named `<family>_t<T>_d<D>`."""
    if name not in FAMILY_TASK_SHAPES:
        raise ValueError(f"no task shapes for family {name!r}; known: {', '.join(FAMILY_TASK_SHAPES)}")
    return [
        make_task(tables, min(t, len(tables)), d, seed, name=f"{name}_t{min(t, len(tables))}_d{d}",
                  compute_device=compute_device, pool_name=pool_name, reuse_batch_size=reuse_batch_size)
        for t, d in FAMILY_TASK_SHAPES[name]
    ]


def save_family(
    out_dir: Path | str, name: str, settings: FamilySettings = FamilySettings(), compute_device: str = "cpu"
) -> tuple[Path, list[Path]]:
    """Write a family's pool (OUT/pools/<name>.json) and its tasks (OUT/tasks/<name>/*.json).
    Files already there are kept (the same settings give the same files), so a rerun only adds
    what is missing. Returns the pool's path and the task paths."""
    out = Path(out_dir)
    pool = out / "pools" / f"{name}.json"
    if not pool.exists():
        pool.parent.mkdir(parents=True, exist_ok=True)
        save_tables(pool, family_tables(name, settings), {
            "family": name, "seed": settings.seed, "max_table_bytes": settings.max_table_bytes,
            "batch_size": settings.reuse_batch_size, "reuse_hist_kind": REUSE_HIST_KIND,
        })
    task_dir = out / "tasks" / name
    paths = sorted(task_dir.glob("*.json")) if task_dir.exists() else []
    if not paths:
        tables, info = read_table_file(pool)
        task_dir.mkdir(parents=True, exist_ok=True)
        for task in family_tasks(name, tables, seed=settings.seed, compute_device=compute_device,
                                 pool_name=str(pool), reuse_batch_size=info.get("batch_size")):
            save_task(task_dir / f"{task.name}.json", task)
            paths.append(task_dir / f"{task.name}.json")
    return pool, paths
