"""Synthetic Criteo-like click data with a planted model and a known ceiling.

`recsearch data synth --out DIR [--config FILE] [--workers N] [--force] [key=value ...]`

Each row has 13 dense count features and 26 categorical features whose ids follow a bounded power
law (Zipf) per table. Its click probability comes from a planted model in which embeddings and
their interactions matter, so a DLRM can beat logistic regression on it:

    logit = bias + dense_scale * <w, d>                         d: standardized log1p(counts)
                 + first_order_scale * sum_t u[t, x_t] / sqrt(26)            (what LR can learn)
                 + pair_scale * sum_{(s,t) in pairs} <v[s, x_s], v[t, x_t]> / sqrt(k |pairs|)
                 + dense_cross_scale * sum_{c in cross} <A d, v[c, x_c]> / sqrt(k |cross|)

u[t, id] and the k latent values v[t, id] are a hash of (seed, table, id), so nothing per id is
stored and a 10M-row table costs no memory. A multi-hot feature pools its ids by sum / sqrt(hotness)
(every term keeps unit variance). Each term is scaled to unit variance over random ids, so the
*_scale knobs are the standard deviations of the terms' contributions to the logit.

The generator knows every row's true probability, so it reports each split's Bayes-optimal AUC and
log loss (meta.json `bayes`): the ceiling no model can beat on that data.

Rows are generated in chunks seeded by (seed, chunk index) and written by worker processes into
preallocated `.partial` memory maps, so the output bytes depend on the config but not on the number
of workers, and memory use is about one chunk per worker.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import math
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from recsearch import config
from recsearch.data import layout, output_dir
from recsearch.data.cpus import usable_cpus
from recsearch.types import NUM_DENSE_FEATURES, NUM_SPARSE_FEATURES

# Criteo Kaggle's per-feature cardinalities, as used by facebookresearch/dlrm and TorchRec examples.
KAGGLE_CARDINALITIES = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
    5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)  # fmt: skip
# Criteo Terabyte with ids capped at 40M, as in the MLPerf DLRM benchmark (TorchRec's dlrm_main).
TERABYTE_MLPERF_CARDINALITIES = (
    40000000, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 40000000, 3067956, 405282, 10, 2209,
    11938, 155, 4, 976, 14, 40000000, 40000000, 40000000, 590152, 12973, 108, 36,
)  # fmt: skip
CARDINALITY_PRESETS = {
    "kaggle": KAGGLE_CARDINALITIES,
    "terabyte_mlperf": TERABYTE_MLPERF_CARDINALITIES,
}

# The streamed Bayes AUC bins p into 2^20 equal bins; see histogram_auc for its error bound.
AUC_HISTOGRAM_BINS = 1 << 20
PILOT_ROWS = 32_768  # rows used to calibrate the bias and the dense standardization
DEFAULT_ROWS_PER_DAY = 100_000
NUM_CROSS_TABLES = 3  # tables whose latent vectors meet the dense features in the planted model
_LATENT_BITS = 16  # each latent value takes 16 bits of a 64-bit hash: 4 values per hash
_LATENT_PER_HASH = 64 // _LATENT_BITS

# splitmix64 (Steele, Lea, Flood 2014) constants: a cheap, well-mixed 64-bit integer hash.
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class SynthConfig:
    """`recsearch data synth` settings (configs/data/*.yaml).

    Output bytes are a function of every field here (chunk_rows included: chunks are the unit of
    seeding), and of nothing else (not the number of workers).
    """

    num_days: int = 3  # the last day is split in val and test halves (TorchRec's convention)
    rows_per_day: int | None = None  # default 100_000; or give total_rows instead
    total_rows: int | None = None  # spread over num_days (the first days take the remainder)
    cardinality_preset: str = "kaggle"  # kaggle | terabyte_mlperf
    cardinality_scale: float = 0.01  # each table: max(2, round(preset size * scale))
    cardinalities: tuple[int, ...] | None = None  # explicit 26 table sizes; overrides preset/scale
    zipf_exponent_min: float = 0.9  # per-table Zipf exponents drawn from the seed in [min, max]
    zipf_exponent_max: float = 1.2
    zipf_exponents: tuple[float, ...] | None = None  # explicit 26 exponents; overrides min/max
    multi_hot_sizes: tuple[int, ...] | None = None  # ids per sample of each feature (default 1)
    click_rate: float = 0.25  # target mean click probability (the bias is calibrated to it)
    latent_dim: int = 4  # k: size of the planted per-id latent vectors
    num_pairs: int = 40  # interacting table pairs in the planted model (of 325)
    # Standard deviation of each planted term's contribution to the logit. The defaults give a
    # Bayes AUC near 0.80 (like the best Criteo models) of which logistic regression reaches
    # about 0.66: the pair and dense-cross terms need embeddings and interactions.
    dense_scale: float = 0.5
    first_order_scale: float = 0.8
    pair_scale: float = 1.0
    dense_cross_scale: float = 0.5
    seed: int = 0
    chunk_rows: int = 131_072  # rows per chunk: the unit of seeding, work and memory

    def __post_init__(self) -> None:
        problems = []
        if self.num_days < 2:
            problems.append(f"num_days must be >= 2 (train + val/test days), got {self.num_days}")
        if self.rows_per_day is not None and self.total_rows is not None:
            problems.append("give rows_per_day or total_rows, not both")
        if self.rows_per_day is not None and self.rows_per_day < 2:
            problems.append(f"rows_per_day must be >= 2, got {self.rows_per_day}")
        if self.total_rows is not None and self.total_rows < 2 * self.num_days:
            problems.append(f"total_rows must be >= 2 * num_days, got {self.total_rows}")
        if self.cardinality_preset not in CARDINALITY_PRESETS:
            problems.append(
                f"cardinality_preset must be one of {sorted(CARDINALITY_PRESETS)}, "
                f"got {self.cardinality_preset!r}"
            )
        if self.cardinality_scale <= 0:
            problems.append(f"cardinality_scale must be positive, got {self.cardinality_scale}")
        if self.cardinalities is not None and (
            len(self.cardinalities) != NUM_SPARSE_FEATURES or min(self.cardinalities) < 1
        ):
            problems.append(f"cardinalities needs {NUM_SPARSE_FEATURES} values >= 1")
        if self.table_rows and max(self.table_rows) >= 2**31:
            problems.append("table sizes must be < 2^31 (ids are stored as int32)")
        if not 0.0 < self.zipf_exponent_min <= self.zipf_exponent_max:
            problems.append("need 0 < zipf_exponent_min <= zipf_exponent_max")
        if self.zipf_exponents is not None and (
            len(self.zipf_exponents) != NUM_SPARSE_FEATURES or min(self.zipf_exponents) <= 0
        ):
            problems.append(f"zipf_exponents needs {NUM_SPARSE_FEATURES} positive values")
        if self.multi_hot_sizes is not None and (
            len(self.multi_hot_sizes) != NUM_SPARSE_FEATURES or min(self.multi_hot_sizes) < 1
        ):
            problems.append(f"multi_hot_sizes needs {NUM_SPARSE_FEATURES} values >= 1")
        if not 0.0 < self.click_rate < 1.0:
            problems.append(f"click_rate must be in (0, 1), got {self.click_rate}")
        if self.latent_dim < 1:
            problems.append(f"latent_dim must be >= 1, got {self.latent_dim}")
        if not 0 <= self.num_pairs <= NUM_SPARSE_FEATURES * (NUM_SPARSE_FEATURES - 1) // 2:
            problems.append(f"num_pairs must be in [0, 325], got {self.num_pairs}")
        scales = ("dense_scale", "first_order_scale", "pair_scale", "dense_cross_scale")
        problems += [f"{name} must be >= 0" for name in scales if getattr(self, name) < 0]
        if self.seed < 0:
            problems.append(f"seed must be >= 0, got {self.seed}")
        if self.chunk_rows < 1:
            problems.append(f"chunk_rows must be >= 1, got {self.chunk_rows}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def table_rows(self) -> tuple[int, ...]:
        if self.cardinalities is not None:
            return tuple(int(c) for c in self.cardinalities)
        preset = CARDINALITY_PRESETS.get(self.cardinality_preset, KAGGLE_CARDINALITIES)
        return tuple(max(2, round(c * self.cardinality_scale)) for c in preset)

    @property
    def hotness(self) -> tuple[int, ...]:
        return self.multi_hot_sizes or (1,) * NUM_SPARSE_FEATURES

    @property
    def day_rows(self) -> tuple[int, ...]:
        if self.total_rows is None:
            return (self.rows_per_day or DEFAULT_ROWS_PER_DAY,) * self.num_days
        base, extra = divmod(self.total_rows, self.num_days)
        return tuple(base + (day < extra) for day in range(self.num_days))


@dataclass(frozen=True, eq=False)  # eq=False: numpy fields have no single truth value
class PlantedModel:
    """The planted model's global parameters (per-id values are hashed on the fly)."""

    cfg: SynthConfig
    zipf_exponents: tuple[float, ...]  # [26]
    # rank -> id bijection per table, id = (multiplier * rank + shift) mod rows with
    # gcd(multiplier, rows) = 1, so the most popular ids are scattered, not 0, 1, 2, ...
    id_multipliers: tuple[int, ...]
    id_shifts: tuple[int, ...]
    dense_zero_prob: np.ndarray  # [13] share of zero counts per dense feature
    dense_log_mean: np.ndarray  # [13] nonzero counts are floor(lognormal(mean, std))
    dense_log_std: np.ndarray  # [13]
    dense_weights: np.ndarray  # [13] w, unit norm
    dense_cross: np.ndarray  # [13, k] A, unit-norm columns
    cross_tables: tuple[int, ...]
    pairs: tuple[tuple[int, int], ...]
    dense_center: np.ndarray  # [13] standardization of log1p(counts), from a pilot sample
    dense_spread: np.ndarray  # [13]
    bias: float


@dataclass(frozen=True)
class _ChunkTask:
    """One chunk of rows for a worker. Carries the (small) planted model: workers keep no state."""

    model: PlantedModel
    out_dir: Path
    index: int
    day: int
    day_start: int  # first row of the chunk within its day
    rows: int
    val_stop: int  # on the last day, rows before this are val and the rest test; -1 elsewhere


@dataclass(frozen=True)
class _ChunkSummary:
    """What a chunk reports for the Bayes ceiling: per split, sparse histograms of p by label."""

    # per split: (bins of positives, their counts, bins of negatives, their counts)
    histograms: tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], ...]
    log_loss_sums: tuple[float, float, float]
    rows: tuple[int, int, int]
    clicks: int


def generate(
    cfg: SynthConfig,
    out_dir: Path | str,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> layout.DatasetMeta:
    """Write the dataset described by cfg to out_dir and return its metadata.

    workers: processes (default: the usable CPUs, recsearch.data.cpus); the output does not
    depend on it. Raises FileExistsError when out_dir already holds a dataset (meta.json, or day
    files without it), unless force. The dataset is built in `<out_dir>.incomplete-<pid>` beside
    out_dir and swapped in whole once meta.json is written there, as `data preprocess` does
    (recsearch.data.output_dir.begin_output): out_dir is always the old dataset or the new one.
    """
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    started = time.perf_counter()
    build = output_dir.begin_output(out_dir, force)
    try:
        meta = _generate_into(build.work, cfg, workers, progress, started)
        output_dir.finish_output(build, force)
    except BaseException:  # KeyboardInterrupt too: nothing half-built is left behind
        output_dir.abandon_output(build)
        raise
    return meta


def _generate_into(
    out: Path, cfg: SynthConfig, workers: int | None, progress: bool, started: float
) -> layout.DatasetMeta:
    """Write the whole dataset (npy files, then meta.json) into the empty folder `out`."""
    model = build_planted_model(cfg)
    meta = layout.DatasetMeta(
        source="synthetic",
        day_rows=cfg.day_rows,
        num_embeddings_per_feature=cfg.table_rows,
        dense_transform="log1p",
        multi_hot_sizes=cfg.multi_hot_sizes if max(cfg.hotness) > 1 else None,
        sparse_dtype="int32",
    )
    shapes = _day_file_shapes(out, meta, sum(cfg.hotness))
    files = list(shapes)
    tasks = _chunk_tasks(meta, model, out)
    workers = max(1, min(workers or usable_cpus(), len(tasks)))
    ceiling = _CeilingAccumulator()
    for path, (dtype, shape) in shapes.items():
        _allocate(path, dtype, shape)
    bar = tqdm(total=meta.total_rows, unit="row", unit_scale=True, desc="synth",
               disable=not progress, file=sys.stderr)  # fmt: skip
    with bar, contextlib.closing(_run_chunks(tasks, workers)) as summaries:
        for summary in summaries:
            ceiling.add(summary)
            bar.update(sum(summary.rows))
    _fsync_partials(files)
    layout.commit_partials(files)
    elapsed_s = time.perf_counter() - started
    bayes, auc_error_bounds = ceiling.result()
    meta = dataclasses.replace(
        meta,
        bayes=bayes,
        extra={
            "seed": cfg.seed,
            "config": config.to_dict(cfg),
            "click_rate": ceiling.clicks / meta.total_rows,
            "bayes_auc_error_bound": auc_error_bounds,
            "planted": {
                "bias": model.bias,
                "zipf_exponents": [round(e, 6) for e in model.zipf_exponents],
                "pairs": [list(pair) for pair in model.pairs],
                "cross_tables": list(model.cross_tables),
            },
            "generation_s": round(elapsed_s, 3),
            "workers": workers,
        },
    )
    layout.write_meta(out, meta)  # last: the work folder is now a complete dataset
    return meta


def build_planted_model(cfg: SynthConfig) -> PlantedModel:
    """Draw the model's global parameters from the seed, then calibrate dense scaling and bias."""
    rng = np.random.default_rng([cfg.seed, 0x5EED])
    rows = cfg.table_rows
    exponents = rng.uniform(cfg.zipf_exponent_min, cfg.zipf_exponent_max, NUM_SPARSE_FEATURES)
    if cfg.zipf_exponents is not None:
        exponents = np.array(cfg.zipf_exponents, dtype=np.float64)
    tables = range(NUM_SPARSE_FEATURES)
    all_pairs = [(s, t) for s in tables for t in tables if s < t]
    picked = np.sort(rng.choice(len(all_pairs), size=cfg.num_pairs, replace=False))
    dense_weights = rng.normal(0.0, 1.0, NUM_DENSE_FEATURES)
    dense_cross = rng.normal(0.0, 1.0, (NUM_DENSE_FEATURES, cfg.latent_dim))
    model = PlantedModel(
        cfg=cfg,
        zipf_exponents=tuple(float(e) for e in exponents),
        id_multipliers=tuple(_coprime_multiplier(n, rng) for n in rows),
        id_shifts=tuple(int(rng.integers(0, n)) for n in rows),
        dense_zero_prob=rng.uniform(0.05, 0.4, NUM_DENSE_FEATURES),
        dense_log_mean=rng.uniform(0.5, 4.0, NUM_DENSE_FEATURES),
        dense_log_std=rng.uniform(0.5, 1.5, NUM_DENSE_FEATURES),
        dense_weights=dense_weights / np.linalg.norm(dense_weights),
        dense_cross=dense_cross / np.linalg.norm(dense_cross, axis=0),
        cross_tables=tuple(
            sorted(int(t) for t in rng.choice(NUM_SPARSE_FEATURES, NUM_CROSS_TABLES, replace=False))
        ),
        pairs=tuple(all_pairs[i] for i in picked),
        dense_center=np.zeros(NUM_DENSE_FEATURES),
        dense_spread=np.ones(NUM_DENSE_FEATURES),
        bias=0.0,
    )
    # Calibrate on a pilot sample from its own stream (not part of the dataset): standardize the
    # dense features so dense_scale means what it says, then find the bias giving click_rate.
    pilot_rng = np.random.default_rng([cfg.seed, 0x9110])
    dense, ids = _draw_features(model, pilot_rng, PILOT_ROWS)
    model = dataclasses.replace(
        model, dense_center=dense.mean(axis=0), dense_spread=dense.std(axis=0) + 1e-6
    )
    return dataclasses.replace(model, bias=_solve_bias(_logits(model, dense, ids), cfg.click_rate))


def click_probability(model: PlantedModel, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
    """True click probabilities [n] of rows read back from a dataset's files.

    dense: the stored log1p features [n, 13]; sparse: `day_i_sparse.npy` rows [n, 26], or for a
    multi-hot dataset `day_i_sparse_multi_hot.npy` rows [n, sum(multi_hot_sizes)].
    """
    hotness = model.cfg.hotness
    if sparse.shape[1] == NUM_SPARSE_FEATURES and max(hotness) > 1:
        raise ValueError("this dataset is multi-hot: pass the rows of day_i_sparse_multi_hot.npy")
    if sparse.shape[1] != sum(hotness):
        raise ValueError(f"sparse has {sparse.shape[1]} columns, expected {sum(hotness)}")
    offsets = np.cumsum((0,) + hotness)
    ids = [sparse[:, a:b].astype(np.int64) for a, b in itertools.pairwise(offsets)]
    return _sigmoid(_logits(model, np.asarray(dense, dtype=np.float32), ids))


def histogram_auc(pos_counts: np.ndarray, neg_counts: np.ndarray) -> tuple[float, float]:
    """AUC from per-bin counts of positives and negatives over bins ordered by score.

    Returns (auc, error_bound). Pairs in one bin count as ties (1/2), which is exact for true ties
    and off by at most 1/2 per pair otherwise, so |auc - exact AUC| <= error_bound = half the share
    of positive-negative pairs that share a bin. With 2^20 bins over p this is below 1e-5 unless p
    piles up in a few bins (it is reported in meta.json as extra.bayes_auc_error_bound).
    """
    pos = np.asarray(pos_counts, dtype=np.float64)
    neg = np.asarray(neg_counts, dtype=np.float64)
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan"), 0.0
    neg_below = np.cumsum(neg) - neg
    same_bin_pairs = float(np.dot(pos, neg))
    auc = (float(np.dot(pos, neg_below)) + 0.5 * same_bin_pairs) / (n_pos * n_neg)
    return auc, 0.5 * same_bin_pairs / (n_pos * n_neg)


# ---- the planted model ---------------------------------------------------------------------------
def _coprime_multiplier(n: int, rng: np.random.Generator) -> int:
    if n <= 2:
        return 1
    while True:
        a = int(rng.integers(1, n))
        if math.gcd(a, n) == 1:
            return a


def _mix64(x: int) -> int:
    """splitmix64's finalizer on one Python int (for hash keys)."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * _MIX1) & _MASK64
    x = ((x ^ (x >> 27)) * _MIX2) & _MASK64
    return x ^ (x >> 31)


def _id_hash(seed: int, table: int, stream: int, ids: np.ndarray) -> np.ndarray:
    """64 well-mixed bits per id (uint64, ids' shape), a function of (seed, table, stream, id)."""
    key = np.uint64(_mix64(_mix64(_mix64(seed) + table) + stream))
    x = ids.astype(np.uint64)  # a fresh array: the in-place steps below do not touch ids
    x *= np.uint64(_GOLDEN_GAMMA)  # uint64 arrays wrap modulo 2^64, as the hash wants
    x += key
    x ^= x >> np.uint64(30)
    x *= np.uint64(_MIX1)
    x ^= x >> np.uint64(27)
    x *= np.uint64(_MIX2)
    x ^= x >> np.uint64(31)
    return x


def _unit_uniform(bits: np.ndarray, width: int) -> np.ndarray:
    """Integers of `width` bits -> uniform values with mean 0 and variance 1 (half-open bins)."""
    values = bits.astype(np.float64)
    values += 0.5
    values *= 2.0 * math.sqrt(3.0) / (1 << width)
    values -= math.sqrt(3.0)  # in (-sqrt 3, sqrt 3)
    return values


def _first_order(model: PlantedModel, table: int, ids: np.ndarray) -> np.ndarray:
    """u[table, id] pooled over a sample's ids: [n] with unit variance."""
    values = _unit_uniform(_id_hash(model.cfg.seed, table, 0, ids) >> np.uint64(11), 53)
    if ids.shape[1] == 1:
        return values[:, 0]
    return values.sum(axis=1) / math.sqrt(ids.shape[1])


def _latent(model: PlantedModel, table: int, ids: np.ndarray) -> np.ndarray:
    """v[table, id] pooled over a sample's ids: [n, k], each component with unit variance."""
    k = model.cfg.latent_dim
    streams = range(1, 1 + math.ceil(k / _LATENT_PER_HASH))
    hashes = np.stack([_id_hash(model.cfg.seed, table, s, ids) for s in streams], axis=-1)
    # Each 64-bit hash split into four 16-bit fields; little-endian so every platform agrees.
    fields = np.ascontiguousarray(hashes, dtype="<u8").view("<u2")  # [n, hotness, 4 * streams]
    values = _unit_uniform(fields[..., :k], _LATENT_BITS)  # [n, hotness, k]
    if ids.shape[1] == 1:
        return values[:, 0]
    return values.sum(axis=1) / math.sqrt(ids.shape[1])


def _zipf_ids(
    n_rows: int, exponent: float, multiplier: int, shift: int, uniforms: np.ndarray
) -> np.ndarray:
    """Ids whose popularity rank r = 1..n has P(r) ~ r^-exponent, mapped through the bijection.

    Inverse CDF of the continuous power law on [1, n + 1), floored: exact-enough Zipf without a
    per-id table (the continuous law gives rank 1 a bit less mass than a discrete Zipf would).
    """
    x = uniforms  # consumed in place
    if abs(exponent - 1.0) < 1e-9:
        x *= math.log(n_rows + 1.0)
        np.exp(x, out=x)
    else:
        one_minus = 1.0 - exponent
        x *= math.pow(n_rows + 1.0, one_minus) - 1.0
        x += 1.0
        np.power(x, 1.0 / one_minus, out=x)
    rank = x.astype(np.int64)  # floor, as x >= 1
    rank -= 1
    np.minimum(rank, n_rows - 1, out=rank)  # rounding can land on n at the very top
    rank *= multiplier
    rank += shift
    rank %= n_rows
    return rank


def _draw_features(
    model: PlantedModel, rng: np.random.Generator, n: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """log1p(dense counts) [n, 13] float32 and per-table ids [n, hotness_t] int64."""
    zero = rng.random((n, NUM_DENSE_FEATURES)) < model.dense_zero_prob
    counts = rng.standard_normal((n, NUM_DENSE_FEATURES))
    counts *= model.dense_log_std
    counts += model.dense_log_mean
    np.exp(counts, out=counts)
    np.floor(counts, out=counts)  # heavy-tailed nonnegative integers, like Criteo's I1-I13
    counts[zero] = 0.0
    dense = np.log1p(counts).astype(np.float32)
    ids = []
    for t, n_rows in enumerate(model.cfg.table_rows):
        uniforms = rng.random((n, model.cfg.hotness[t]))
        ids.append(
            _zipf_ids(
                n_rows,
                model.zipf_exponents[t],
                model.id_multipliers[t],
                model.id_shifts[t],
                uniforms,
            )
        )
    return dense, ids


def _logits(model: PlantedModel, dense: np.ndarray, ids: list[np.ndarray]) -> np.ndarray:
    cfg = model.cfg
    d = (dense - model.dense_center) / model.dense_spread
    logit = model.bias + cfg.dense_scale * (d @ model.dense_weights)
    if cfg.first_order_scale:
        first = sum(_first_order(model, t, ids[t]) for t in range(NUM_SPARSE_FEATURES))
        logit += cfg.first_order_scale / math.sqrt(NUM_SPARSE_FEATURES) * first
    tables = {t for pair in model.pairs for t in pair} | set(model.cross_tables)
    latent = {t: _latent(model, t, ids[t]) for t in sorted(tables)}
    if model.pairs and cfg.pair_scale:
        pair_sum = sum(np.einsum("nk,nk->n", latent[s], latent[t]) for s, t in model.pairs)
        logit += cfg.pair_scale / math.sqrt(cfg.latent_dim * len(model.pairs)) * pair_sum
    if cfg.dense_cross_scale:
        query = d @ model.dense_cross  # [n, k]
        cross = sum(np.einsum("nk,nk->n", query, latent[t]) for t in model.cross_tables)
        logit += cfg.dense_cross_scale / math.sqrt(cfg.latent_dim * len(model.cross_tables)) * cross
    return logit


def _solve_bias(logit_no_bias: np.ndarray, click_rate: float) -> float:
    """The bias b with mean(sigmoid(logit + b)) = click_rate over the pilot logits.

    The mean is increasing in b, so Newton steps kept inside a shrinking bracket converge in a
    few iterations (each a pass over the pilot rows).
    """
    lo, hi = -40.0, 40.0
    bias = math.log(click_rate / (1 - click_rate)) - float(np.mean(logit_no_bias))
    for _ in range(100):
        p = _sigmoid(logit_no_bias + bias)
        gap = float(p.mean()) - click_rate
        if abs(gap) < 1e-10:
            break
        if gap < 0:
            lo = bias
        else:
            hi = bias
        slope = float(np.mean(p * (1 - p)))
        step = bias - gap / slope if slope > 0 else (lo + hi) / 2
        bias = step if lo < step < hi else (lo + hi) / 2
    return bias


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow warnings for large |x|


# ---- chunked, parallel writing ------------------------------------------------------------------
def _day_file_shapes(out: Path, meta: layout.DatasetMeta, multi_hot_width: int) -> dict:
    """Every npy file of the dataset: path -> (dtype, shape)."""
    files = {}
    for day, rows in enumerate(meta.day_rows):
        files[layout.day_file(out, day, "dense")] = (np.float32, (rows, NUM_DENSE_FEATURES))
        files[layout.day_file(out, day, "sparse")] = (np.int32, (rows, NUM_SPARSE_FEATURES))
        files[layout.day_file(out, day, "labels")] = (np.int32, (rows, 1))
        if meta.multi_hot_sizes is not None:
            multi_hot = layout.day_file(out, day, "sparse_multi_hot")
            files[multi_hot] = (np.int32, (rows, multi_hot_width))
    return files


def _allocate(path: Path, dtype: type, shape: tuple[int, int]) -> None:
    """Create `<path>.partial` at full size, so workers can fill any row range of it."""
    array = np.lib.format.open_memmap(layout.partial_path(path), "w+", dtype, shape)
    del array  # the file is sparse until written; each worker maps it again


def _chunk_tasks(meta: layout.DatasetMeta, model: PlantedModel, out: Path) -> list[_ChunkTask]:
    [(_, _, val_stop)] = layout.split_ranges(meta, "val")  # val: the last day's rows [0, val_stop)
    last = meta.num_days - 1
    chunk_rows = model.cfg.chunk_rows
    tasks = []
    for day, rows in enumerate(meta.day_rows):
        for start in range(0, rows, chunk_rows):
            n = min(chunk_rows, rows - start)
            tasks.append(
                _ChunkTask(model, out, len(tasks), day, start, n, val_stop if day == last else -1)
            )
    return tasks


def _run_chunks(tasks: list[_ChunkTask], workers: int):
    """Yield each chunk's summary as it finishes (in any order); closing it stops the workers."""
    if workers == 1:
        for task in tasks:
            yield _run_chunk(task)
        return
    # spawn, not fork: the caller may hold threads (tqdm's monitor, torch's pools) whose locks a
    # forked child could inherit held; a worker needs only numpy and this module.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap_unordered(_run_chunk, tasks)


def _run_chunk(task: _ChunkTask) -> _ChunkSummary:
    model, out = task.model, task.out_dir
    rng = np.random.default_rng([model.cfg.seed, 1, task.index])
    dense, ids = _draw_features(model, rng, task.rows)
    p = _sigmoid(_logits(model, dense, ids))
    labels = (rng.random(task.rows) < p).astype(np.int32)
    rows = slice(task.day_start, task.day_start + task.rows)
    _write_rows(layout.day_file(out, task.day, "dense"), rows, dense)
    _write_rows(layout.day_file(out, task.day, "labels"), rows, labels[:, None])
    _write_rows(
        layout.day_file(out, task.day, "sparse"),
        rows,
        np.stack([ids_t[:, 0] for ids_t in ids], axis=1),  # the first id of each feature
    )
    if max(model.cfg.hotness) > 1:
        _write_rows(
            layout.day_file(out, task.day, "sparse_multi_hot"), rows, np.concatenate(ids, axis=1)
        )
    return _summarize(task, p, labels)


def _write_rows(path: Path, rows: slice, values: np.ndarray) -> None:
    array = np.load(layout.partial_path(path), mmap_mode="r+")
    array[rows] = values  # casts to the file's dtype (ids < 2^31 are checked in SynthConfig)
    # No flush here: the pages are in the page cache whatever process wrote them, and syncing each
    # chunk would stall the worker on the disk. _fsync_partials makes the files durable once.
    del array


def _fsync_partials(files: list[Path]) -> None:
    """Make the finished `.partial` files durable before they are renamed into place."""
    for path in files:
        fd = os.open(layout.partial_path(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _summarize(task: _ChunkTask, p: np.ndarray, labels: np.ndarray) -> _ChunkSummary:
    """Sparse per-split histograms of p by label, log-loss sums and counts of one chunk."""
    bins = np.minimum((p * AUC_HISTOGRAM_BINS).astype(np.int64), AUC_HISTOGRAM_BINS - 1)
    p_safe = np.clip(p, 1e-15, 1 - 1e-15)
    row_loss = -np.where(labels == 1, np.log(p_safe), np.log1p(-p_safe))
    if task.val_stop < 0:
        split = np.zeros(task.rows, dtype=np.int8)  # train
    else:
        day_row = np.arange(task.day_start, task.day_start + task.rows)
        split = np.where(day_row < task.val_stop, 1, 2)  # val, test
    histograms, loss_sums, counts = [], [], []
    for s in range(len(layout.SPLITS)):
        mask = split == s
        pos = np.unique(bins[mask & (labels == 1)], return_counts=True)
        neg = np.unique(bins[mask & (labels == 0)], return_counts=True)
        histograms.append((pos[0], pos[1], neg[0], neg[1]))
        loss_sums.append(float(row_loss[mask].sum()))
        counts.append(int(mask.sum()))
    return _ChunkSummary(tuple(histograms), tuple(loss_sums), tuple(counts), int(labels.sum()))


class _CeilingAccumulator:
    """Merges chunk summaries into per-split histograms as they arrive: memory is the histograms
    (3 splits x 2 labels x 2^20 int64 = 48 MiB), not the rows. Integer counts and fsum make the
    result independent of the order chunks finish in."""

    def __init__(self) -> None:
        self.pos = np.zeros((len(layout.SPLITS), AUC_HISTOGRAM_BINS), dtype=np.int64)
        self.neg = np.zeros((len(layout.SPLITS), AUC_HISTOGRAM_BINS), dtype=np.int64)
        self.loss_sums: list[list[float]] = [[] for _ in layout.SPLITS]
        self.rows = [0] * len(layout.SPLITS)
        self.clicks = 0

    def add(self, summary: _ChunkSummary) -> None:
        for s, (pos_bins, pos_n, neg_bins, neg_n) in enumerate(summary.histograms):
            self.pos[s, pos_bins] += pos_n  # bins are unique within a summary
            self.neg[s, neg_bins] += neg_n
            self.loss_sums[s].append(summary.log_loss_sums[s])
            self.rows[s] += summary.rows[s]
        self.clicks += summary.clicks

    def result(self) -> tuple[dict[str, layout.SplitBayes], dict[str, float]]:
        bayes, bounds = {}, {}
        for s, name in enumerate(layout.SPLITS):
            if self.rows[s] == 0:
                continue
            auc, bound = histogram_auc(self.pos[s], self.neg[s])
            log_loss = math.fsum(self.loss_sums[s]) / self.rows[s]
            bayes[name] = layout.SplitBayes(auc=auc, log_loss=log_loss, rows=self.rows[s])
            bounds[name] = bound
        return bayes, bounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="recsearch data synth",
        description="Generate a synthetic Criteo-like dataset (TorchRec npy layout) whose "
        "Bayes-optimal AUC and log loss per split are known and stored in meta.json.",
    )
    parser.add_argument("--out", required=True, help="output dataset directory")
    parser.add_argument("--config", help="YAML file of SynthConfig fields (configs/data/*.yaml)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: the CPUs this process may use: affinity and cgroup quota)")
    parser.add_argument("--force", action="store_true", help="replace a dataset already in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", help="key=value settings, e.g. rows_per_day=50000")
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be >= 1")
    try:
        if args.config:
            cfg = config.load(SynthConfig, args.config, args.overrides)
        else:
            raw = config.apply_overrides({}, args.overrides)
            cfg = config.build(SynthConfig, raw, config.Origins.of(config.COMMAND_LINE, args.overrides))
        meta = generate(cfg, args.out, workers=args.workers, force=args.force,
                        progress=not args.no_progress)  # fmt: skip
    except (config.ConfigError, FileExistsError, ValueError) as err:
        print(f"recsearch data synth: {err}", file=sys.stderr)
        return 2
    seconds = float(meta.extra["generation_s"])  # type: ignore[arg-type]
    click_rate = float(meta.extra["click_rate"])  # type: ignore[arg-type]
    print(
        f"wrote {meta.total_rows:,} rows in {meta.num_days} days to {args.out} "
        f"({seconds:.1f}s, {meta.total_rows / max(seconds, 1e-9):,.0f} rows/s, "
        f"{meta.extra['workers']} workers); click rate {click_rate:.4f}"
    )
    for split, ceiling in meta.bayes.items():
        print(
            f"  {split:5s} rows {ceiling.rows:>12,}  Bayes AUC {ceiling.auc:.4f}  "
            f"Bayes log loss {ceiling.log_loss:.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
