"""Synthetic Criteo-like click data with a planted model and a known ceiling.

`recsearch data synth --out DIR [--config FILE] [key=value ...]`

Each row has 13 dense count features and 26 categorical ids drawn from a power law (Zipf) per
table. Its click probability comes from a planted model in which embeddings and their interactions
matter, so a DLRM can beat logistic regression on it:

    logit = bias + dense_scale * <w, d>                        (dense features, standardized)
                 + first_order_scale * mean_t u[t, id_t]        (what logistic regression can learn)
                 + pair_scale * sum_{(s,t) in pairs} <v[s, id_s], v[t, id_t]> / sqrt(k * |pairs|)
                 + dense_cross_scale * <A d, v[c, id_c]> over a few tables c (dense x embedding)

u and v are a deterministic function of (seed, table, id) through an integer hash, so nothing
per-id is stored and a 10M-row table costs no memory. Because the generator knows each row's
true probability, it reports the Bayes-optimal AUC and log loss of every split: the ceiling any
model can reach on that data.

Rows are generated in chunks seeded by (seed, chunk index), written into preallocated memory maps
by worker processes, so output bytes do not depend on the worker count and memory use is a chunk.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from recsearch import config
from recsearch.data import layout
from recsearch.types import NUM_DENSE_FEATURES, NUM_SPARSE_FEATURES

# Criteo Kaggle's per-feature cardinalities, as used by facebookresearch/dlrm and TorchRec.
KAGGLE_CARDINALITIES = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
    5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)  # fmt: skip
AUC_HISTOGRAM_BINS = 1 << 20  # bins over p in [0, 1] for the streamed Bayes AUC
PILOT_ROWS = 20_000  # rows used to calibrate the bias and the dense standardization


@dataclass(frozen=True)
class SynthConfig:
    """`recsearch data synth` settings (configs/data/*.yaml)."""

    num_days: int = 3  # the last day is split in val and test halves (TorchRec's convention)
    rows_per_day: int = 100_000
    cardinality_scale: float = 0.01  # Kaggle's cardinalities times this (at least 2 rows)
    cardinalities: tuple[int, ...] | None = None  # explicit 26 table sizes; overrides the scale
    zipf_exponent_min: float = 0.9  # per-table Zipf exponents drawn uniformly in [min, max]
    zipf_exponent_max: float = 1.2
    multi_hot_sizes: tuple[int, ...] | None = None  # ids per sample of each table (default 1)
    click_rate: float = 0.25
    latent_dim: int = 4
    num_pairs: int = 40  # interacting table pairs in the planted model
    dense_scale: float = 0.4
    first_order_scale: float = 0.5
    pair_scale: float = 1.1
    dense_cross_scale: float = 0.4
    seed: int = 0
    chunk_rows: int = 131_072

    def __post_init__(self) -> None:
        if self.num_days < 2:
            raise ValueError(f"num_days must be >= 2 (train days + a val/test day), got {self.num_days}")
        if self.rows_per_day < 2:
            raise ValueError(f"rows_per_day must be >= 2, got {self.rows_per_day}")
        if not 0.0 < self.click_rate < 1.0:
            raise ValueError(f"click_rate must be in (0, 1), got {self.click_rate}")
        if self.cardinalities is not None and len(self.cardinalities) != NUM_SPARSE_FEATURES:
            raise ValueError(f"cardinalities needs {NUM_SPARSE_FEATURES} values")
        if self.cardinalities is not None and min(self.cardinalities) < 1:
            raise ValueError("cardinalities must be >= 1")
        if self.multi_hot_sizes is not None and (
            len(self.multi_hot_sizes) != NUM_SPARSE_FEATURES or min(self.multi_hot_sizes) < 1
        ):
            raise ValueError(f"multi_hot_sizes needs {NUM_SPARSE_FEATURES} values >= 1")
        if not 0.0 < self.zipf_exponent_min <= self.zipf_exponent_max:
            raise ValueError("need 0 < zipf_exponent_min <= zipf_exponent_max")
        if self.latent_dim < 1 or self.num_pairs < 0 or self.chunk_rows < 1:
            raise ValueError("latent_dim and chunk_rows must be >= 1, num_pairs >= 0")

    @property
    def table_rows(self) -> tuple[int, ...]:
        if self.cardinalities is not None:
            return tuple(int(c) for c in self.cardinalities)
        return tuple(max(2, round(c * self.cardinality_scale)) for c in KAGGLE_CARDINALITIES)

    @property
    def hotness(self) -> tuple[int, ...]:
        return self.multi_hot_sizes or (1,) * NUM_SPARSE_FEATURES

    @property
    def total_rows(self) -> int:
        return self.num_days * self.rows_per_day


@dataclass(frozen=True)
class PlantedModel:
    """Everything but per-id values, which are hashed on the fly (see _hash_uniform)."""

    table_rows: tuple[int, ...]
    hotness: tuple[int, ...]
    zipf_exponents: np.ndarray  # [26]
    id_multipliers: np.ndarray  # [26] rank -> id bijection: id = (a * rank + shift) mod rows
    id_shifts: np.ndarray  # [26]
    dense_zero_prob: np.ndarray  # [13]
    dense_log_mean: np.ndarray  # [13]
    dense_log_std: np.ndarray  # [13]
    dense_weights: np.ndarray  # [13]
    dense_cross: np.ndarray  # [13, k]
    cross_tables: tuple[int, ...]
    pairs: tuple[tuple[int, int], ...]
    dense_center: np.ndarray  # [13] standardization of log1p(counts), from a pilot sample
    dense_spread: np.ndarray  # [13]
    bias: float
    cfg: SynthConfig


def build_planted_model(cfg: SynthConfig) -> PlantedModel:
    """Draw the model's global parameters from the seed, then calibrate bias and dense scaling."""
    rng = np.random.default_rng([cfg.seed, 0x5EED])
    rows = cfg.table_rows
    exponents = rng.uniform(cfg.zipf_exponent_min, cfg.zipf_exponent_max, NUM_SPARSE_FEATURES)
    multipliers = np.array([_coprime_multiplier(n, rng) for n in rows], dtype=np.int64)
    shifts = np.array([rng.integers(0, n) for n in rows], dtype=np.int64)
    all_pairs = [(s, t) for s in range(NUM_SPARSE_FEATURES) for t in range(s + 1, NUM_SPARSE_FEATURES)]
    pick = rng.choice(len(all_pairs), size=min(cfg.num_pairs, len(all_pairs)), replace=False)
    model = PlantedModel(
        table_rows=rows,
        hotness=cfg.hotness,
        zipf_exponents=exponents,
        id_multipliers=multipliers,
        id_shifts=shifts,
        dense_zero_prob=rng.uniform(0.05, 0.4, NUM_DENSE_FEATURES),
        dense_log_mean=rng.uniform(0.5, 4.0, NUM_DENSE_FEATURES),
        dense_log_std=rng.uniform(0.5, 1.5, NUM_DENSE_FEATURES),
        dense_weights=rng.normal(0.0, 1.0, NUM_DENSE_FEATURES) / math.sqrt(NUM_DENSE_FEATURES),
        dense_cross=rng.normal(0.0, 1.0, (NUM_DENSE_FEATURES, cfg.latent_dim))
        / math.sqrt(NUM_DENSE_FEATURES),
        cross_tables=tuple(int(t) for t in rng.choice(NUM_SPARSE_FEATURES, 3, replace=False)),
        pairs=tuple((int(all_pairs[i][0]), int(all_pairs[i][1])) for i in sorted(pick)),
        dense_center=np.zeros(NUM_DENSE_FEATURES),
        dense_spread=np.ones(NUM_DENSE_FEATURES),
        bias=0.0,
        cfg=cfg,
    )
    # Calibrate on a pilot sample drawn from its own stream (not part of the dataset).
    pilot_rng = np.random.default_rng([cfg.seed, 0x9110])
    dense, ids = _draw_features(model, pilot_rng, PILOT_ROWS)
    center, spread = dense.mean(axis=0), dense.std(axis=0) + 1e-6
    model = _replace(model, dense_center=center, dense_spread=spread)
    logit_no_bias = _logits(model, dense, ids)
    return _replace(model, bias=_solve_bias(logit_no_bias, cfg.click_rate))


@dataclass(frozen=True)
class ChunkTask:
    """One chunk of rows for a worker; carries the (small) planted model so workers hold no state."""

    model: PlantedModel
    out_dir: Path
    index: int
    day: int
    day_start: int  # first row of the chunk within its day
    rows: int
    split: np.ndarray  # [rows] split index per row: 0 train, 1 val, 2 test


@dataclass(frozen=True)
class ChunkSummary:
    """Per split: sparse histograms of p for positives and negatives, and log-loss sums."""

    index: int
    bins: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]  # (pos_bins, pos_n, neg_bins, neg_n)
    log_loss_sum: np.ndarray  # [3]
    rows: np.ndarray  # [3]
    clicks: int


def generate(
    cfg: SynthConfig, out_dir: Path | str, workers: int | None = None, force: bool = False
) -> layout.DatasetMeta:
    """Write the dataset described by cfg to out_dir and return its metadata."""
    out = Path(out_dir)
    if (out / layout.META_FILE).exists() and not force:
        raise FileExistsError(f"{out} already holds a finished dataset; pass --force to replace it")
    out.mkdir(parents=True, exist_ok=True)
    (out / layout.META_FILE).unlink(missing_ok=True)  # the dataset is unfinished from here on
    model = build_planted_model(cfg)
    day_rows = (cfg.rows_per_day,) * cfg.num_days
    meta = layout.DatasetMeta(
        source="synthetic",
        day_rows=day_rows,
        num_embeddings_per_feature=model.table_rows,
        dense_transform="log1p",
        multi_hot_sizes=cfg.multi_hot_sizes,
        sparse_dtype="int32",
    )
    files = _allocate_files(out, meta, sum(model.hotness))
    tasks = _chunk_tasks(cfg, meta, model, out)
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    summaries: list[ChunkSummary] = []
    started = time.perf_counter()
    try:
        if workers == 1:
            results = map(_run_chunk, tasks)
            summaries = list(tqdm(results, total=len(tasks), unit="chunk", desc="synth", file=sys.stderr))
        else:
            ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
            with ctx.Pool(workers) as pool:
                results = pool.imap_unordered(_run_chunk, tasks)
                summaries = list(
                    tqdm(results, total=len(tasks), unit="chunk", desc="synth", file=sys.stderr)
                )
    except BaseException:
        for path in files:
            layout.partial_path(path).unlink(missing_ok=True)
        raise
    elapsed_s = time.perf_counter() - started
    layout.commit_partials(files)
    bayes = _bayes_ceiling(sorted(summaries, key=lambda s: s.index))
    clicks = sum(s.clicks for s in summaries)
    meta = layout.DatasetMeta(
        **{
            **meta.__dict__,
            "bayes": bayes,
            "extra": {
                "seed": cfg.seed,
                "config": config.to_dict(cfg),
                "click_rate": clicks / meta.total_rows,
                "bias": model.bias,
                "generation_s": round(elapsed_s, 3),
                "workers": workers,
            },
        }
    )
    layout.write_meta(out, meta)
    return meta


# ---- the planted model ---------------------------------------------------------------------------
def _replace(model: PlantedModel, **changes: object) -> PlantedModel:
    return PlantedModel(**{**model.__dict__, **changes})


def _coprime_multiplier(n: int, rng: np.random.Generator) -> int:
    if n <= 2:
        return 1
    while True:
        a = int(rng.integers(1, n))
        if math.gcd(a, n) == 1:
            return a


def _hash_uniform(seed: int, table: int, component: int, ids: np.ndarray) -> np.ndarray:
    """Uniform(-sqrt(3), sqrt(3)) (unit variance) per id: splitmix64 of (seed, table, component, id)."""
    with np.errstate(over="ignore"):
        key = np.uint64((seed * 1_000_003 + table * 1_009 + component) & 0xFFFFFFFFFFFFFFFF)
        x = ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + key * np.uint64(0xD1B54A32D192ED03)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    unit = (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    return (unit * 2.0 - 1.0) * math.sqrt(3.0)


def _zipf_ids(rng: np.random.Generator, n_rows: int, exponent: float, a: int, shift: int, size: tuple) -> np.ndarray:
    """Ids whose popularity rank follows a bounded power law, mapped through a fixed bijection."""
    u = rng.random(size)
    if abs(exponent - 1.0) < 1e-9:
        rank = np.exp(u * math.log(n_rows + 1.0))
    else:
        one_minus = 1.0 - exponent
        rank = ((math.pow(n_rows + 1.0, one_minus) - 1.0) * u + 1.0) ** (1.0 / one_minus)
    rank = np.clip(np.floor(rank).astype(np.int64) - 1, 0, n_rows - 1)
    return (rank * a + shift) % n_rows


def _draw_features(model: PlantedModel, rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """log1p(dense counts) [n, 13] and per-table id arrays [n, hotness_t]."""
    zero = rng.random((n, NUM_DENSE_FEATURES)) < model.dense_zero_prob
    log_counts = rng.normal(model.dense_log_mean, model.dense_log_std, (n, NUM_DENSE_FEATURES))
    counts = np.where(zero, 0.0, np.floor(np.exp(log_counts)))
    dense = np.log1p(counts).astype(np.float32)
    ids = [
        _zipf_ids(
            rng,
            model.table_rows[t],
            float(model.zipf_exponents[t]),
            int(model.id_multipliers[t]),
            int(model.id_shifts[t]),
            (n, model.hotness[t]),
        )
        for t in range(NUM_SPARSE_FEATURES)
    ]
    return dense, ids


def _table_latent(model: PlantedModel, table: int, ids: np.ndarray) -> np.ndarray:
    """Mean latent vector of each sample's ids in one table: [n, k]."""
    k = model.cfg.latent_dim
    comps = [_hash_uniform(model.cfg.seed, table, 1 + c, ids).mean(axis=1) for c in range(k)]
    return np.stack(comps, axis=1)


def _logits(model: PlantedModel, dense: np.ndarray, ids: list[np.ndarray]) -> np.ndarray:
    cfg = model.cfg
    d = (dense - model.dense_center) / model.dense_spread
    logit = cfg.dense_scale * (d @ model.dense_weights)
    first = sum(_hash_uniform(cfg.seed, t, 0, ids[t]).mean(axis=1) for t in range(NUM_SPARSE_FEATURES))
    logit += cfg.first_order_scale * first / math.sqrt(NUM_SPARSE_FEATURES)
    needed = {t for pair in model.pairs for t in pair} | set(model.cross_tables)
    latent = {t: _table_latent(model, t, ids[t]) for t in sorted(needed)}
    if model.pairs:
        pair_sum = sum(np.einsum("nk,nk->n", latent[s], latent[t]) for s, t in model.pairs)
        logit += cfg.pair_scale * pair_sum / math.sqrt(cfg.latent_dim * len(model.pairs))
    cross_query = d @ model.dense_cross  # [n, k]
    cross = sum(np.einsum("nk,nk->n", cross_query, latent[t]) for t in model.cross_tables)
    logit += cfg.dense_cross_scale * cross / math.sqrt(len(model.cross_tables))
    return logit + model.bias


def _solve_bias(logit_no_bias: np.ndarray, click_rate: float) -> float:
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if _sigmoid(logit_no_bias + mid).mean() < click_rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# ---- chunked, parallel writing ---------------------------------------------------------------------
def _allocate_files(out: Path, meta: layout.DatasetMeta, multi_hot_width: int) -> list[Path]:
    files = []
    for day, rows in enumerate(meta.day_rows):
        shapes = {
            "dense": (np.float32, (rows, NUM_DENSE_FEATURES)),
            "sparse": (np.int32, (rows, NUM_SPARSE_FEATURES)),
            "labels": (np.int32, (rows, 1)),
        }
        if meta.multi_hot_sizes is not None:
            shapes["sparse_multi_hot"] = (np.int32, (rows, multi_hot_width))
        for kind, (dtype, shape) in shapes.items():
            path = layout.day_file(out, day, kind)
            np.lib.format.open_memmap(layout.partial_path(path), mode="w+", dtype=dtype, shape=shape).flush()
            files.append(path)
    return files


def _chunk_tasks(
    cfg: SynthConfig, meta: layout.DatasetMeta, model: PlantedModel, out: Path
) -> list[ChunkTask]:
    last = meta.num_days - 1
    val_rows = layout.split_rows(meta, "val")
    tasks = []
    for day, rows in enumerate(meta.day_rows):
        for start in range(0, rows, cfg.chunk_rows):
            n = min(cfg.chunk_rows, rows - start)
            if day < last:
                split = np.zeros(n, dtype=np.int8)
            else:
                split = np.where(np.arange(start, start + n) < val_rows, 1, 2).astype(np.int8)
            tasks.append(ChunkTask(model, out, len(tasks), day, start, n, split))
    return tasks


def _run_chunk(task: ChunkTask) -> ChunkSummary:
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
        np.stack([ids_t[:, 0] for ids_t in ids], axis=1).astype(np.int32),
    )
    if model.cfg.multi_hot_sizes is not None:
        _write_rows(
            layout.day_file(out, task.day, "sparse_multi_hot"),
            rows,
            np.concatenate(ids, axis=1).astype(np.int32),
        )
    return _summarize(task, p, labels)


def _write_rows(path: Path, rows: slice, values: np.ndarray) -> None:
    array = np.load(layout.partial_path(path), mmap_mode="r+")
    array[rows] = values
    array.flush()
    del array


def _summarize(task: ChunkTask, p: np.ndarray, labels: np.ndarray) -> ChunkSummary:
    bins = np.minimum((p * AUC_HISTOGRAM_BINS).astype(np.int64), AUC_HISTOGRAM_BINS - 1)
    p_clipped = np.clip(p, 1e-12, 1 - 1e-12)
    row_loss = -(labels * np.log(p_clipped) + (1 - labels) * np.log1p(-p_clipped))
    per_split, loss, count = [], np.zeros(3), np.zeros(3, dtype=np.int64)
    for split in range(3):
        mask = task.split == split
        pos = mask & (labels == 1)
        neg = mask & (labels == 0)
        pos_bins, pos_n = np.unique(bins[pos], return_counts=True)
        neg_bins, neg_n = np.unique(bins[neg], return_counts=True)
        per_split.append((pos_bins, pos_n, neg_bins, neg_n))
        loss[split] = row_loss[mask].sum()
        count[split] = mask.sum()
    return ChunkSummary(task.index, per_split, loss, count, int(labels.sum()))


def histogram_auc(pos_hist: np.ndarray, neg_hist: np.ndarray) -> tuple[float, float]:
    """AUC from per-bin positive/negative counts of a monotone score; returns (auc, error bound).

    Pairs in the same bin count as ties (1/2); the exact AUC differs by at most half the share of
    positive-negative pairs that share a bin, which is returned as the bound.
    """
    pos_hist = pos_hist.astype(np.float64)
    neg_hist = neg_hist.astype(np.float64)
    n_pos, n_neg = pos_hist.sum(), neg_hist.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan"), 0.0
    neg_below = np.cumsum(neg_hist) - neg_hist
    same_bin = float((pos_hist * neg_hist).sum())
    auc = (float((pos_hist * neg_below).sum()) + 0.5 * same_bin) / (n_pos * n_neg)
    return auc, 0.5 * same_bin / (n_pos * n_neg)


def _bayes_ceiling(summaries: list[ChunkSummary]) -> dict[str, layout.SplitBayes]:
    out = {}
    for split, name in enumerate(layout.SPLITS):
        pos = np.zeros(AUC_HISTOGRAM_BINS)
        neg = np.zeros(AUC_HISTOGRAM_BINS)
        loss, rows = 0.0, 0
        for s in summaries:
            pos_bins, pos_n, neg_bins, neg_n = s.bins[split]
            np.add.at(pos, pos_bins, pos_n)
            np.add.at(neg, neg_bins, neg_n)
            loss += float(s.log_loss_sum[split])
            rows += int(s.rows[split])
        if rows == 0:
            continue
        auc, _ = histogram_auc(pos, neg)
        out[name] = layout.SplitBayes(auc=round(float(auc), 6), log_loss=round(loss / rows, 6), rows=rows)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="recsearch data synth",
        description="Generate a synthetic Criteo-like dataset with a known Bayes-optimal ceiling.",
    )
    parser.add_argument("--out", required=True, help="output dataset directory")
    parser.add_argument("--config", help="YAML file of SynthConfig fields (configs/data/)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--force", action="store_true", help="replace a finished dataset in --out")
    parser.add_argument("overrides", nargs="*", help="key=value settings, e.g. rows_per_day=50000")
    args = parser.parse_args(argv)
    try:
        if args.config:
            cfg = config.load(SynthConfig, args.config, args.overrides)
        else:
            raw = config.apply_overrides({}, args.overrides)
            cfg = config.build(SynthConfig, raw, origin="<command line>")
        meta = generate(cfg, args.out, workers=args.workers, force=args.force)
    except (config.ConfigError, FileExistsError, ValueError) as err:
        print(f"recsearch data synth: {err}", file=sys.stderr)
        return 2
    extra = meta.extra
    print(
        f"wrote {meta.total_rows:,} rows in {meta.num_days} days to {args.out} "
        f"({extra['generation_s']:.1f}s, {meta.total_rows / max(float(extra['generation_s']), 1e-9):,.0f} rows/s, "
        f"{extra['workers']} workers); click rate {float(extra['click_rate']):.3f}"
    )
    for split, ceiling in meta.bayes.items():
        print(f"  {split:5s} rows {ceiling.rows:>10,}  Bayes AUC {ceiling.auc:.4f}  log loss {ceiling.log_loss:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
