"""Per-table statistics that embedding placement needs.

`recsearch data stats DIR [--split train] [--batch-size 65536] [--max-batches 8]
[--embedding-dim 16] [--max-rows-per-table N] [--out stats.json]`

For each table: rows, pooling factor (ids looked up per sample), unique ids seen, and DreamShard's
access-frequency histogram. Within one batch, a row's *reuse* is how many lookups hit it; the
histogram is the share of the batch's lookups whose row's reuse falls in the bins
(0,1], (1,2], (2,4], ..., (2^15, inf) (NUM_REUSE_BINS bins), averaged over batches.

The batches are the training loader's own (NpyBatchLoader, unshuffled, ids hashed into the table
sizes), so the statistics describe the lookups the model will actually make. The JSON file holds
one entry per table with TableSpec's fields: a table file (recsearch.tables), read back by
`recsearch.tables.load_tables`; the reuse histogram is `recsearch.tables.reuse_histogram`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsearch import remote
from recsearch.cliargs import list_flag
from recsearch.data import layout
from recsearch.data.dataset import dataset_meta, expand_sizes
from recsearch.data.loader import FEATURE_NAMES, NpyBatchLoader
from recsearch.tables import (
    histogram_of_counts,
    reuse_bin_labels,
    table_name,
    tables_payload,
)
from recsearch.types import NUM_REUSE_BINS, NUM_SPARSE_FEATURES, TableSpec


@dataclass(frozen=True)
class TableStats:
    """One table's statistics: its placement description plus what placement does not use."""

    spec: TableSpec
    unique_ids: int  # distinct rows looked up in the batches read


@dataclass(frozen=True)
class StatsRun:
    """What was read to compute the statistics."""

    batch_size: int
    batches: int
    rows: int
    partial_batch: bool  # the split was smaller than one batch: reuse counts are lower than real


def table_stats(
    root: Path | str,
    split: str = "train",
    batch_size: int = 65536,
    max_batches: int = 8,
    embedding_dim: int = 16,
    *,
    num_embeddings_per_feature: Sequence[int] | None = None,
    meta: layout.DatasetMeta | None = None,
) -> tuple[list[TableStats], StatsRun]:
    """Statistics of every table over the first max_batches full batches of a split.

    num_embeddings_per_feature: table sizes the ids are hashed into (default: the dataset's id
    ranges, i.e. no hashing). meta: for directories without meta.json (layout.infer_meta).
    """
    if max_batches <= 0:
        raise ValueError(f"max_batches must be positive, got {max_batches}")
    meta = meta if meta is not None else layout.read_meta(root)
    available = layout.split_rows(meta, split)
    loader = NpyBatchLoader(
        root,
        split,
        batch_size,
        # A partial batch would understate reuse; use one only when there is nothing else.
        drop_last=available >= batch_size,
        num_embeddings_per_feature=num_embeddings_per_feature,
        max_rows=batch_size * max_batches,
        prefetch_batches=0,
        in_memory=False,  # one batch at a time: multi-hot splits can be large
        meta=meta,
    )
    hist_sums = np.zeros((NUM_SPARSE_FEATURES, NUM_REUSE_BINS))
    ids_per_table = np.zeros(NUM_SPARSE_FEATURES, np.int64)
    seen: list[list[np.ndarray]] = [[] for _ in range(NUM_SPARSE_FEATURES)]
    samples = batches = 0
    for batch in loader:
        kjt = batch.sparse_features
        values, offsets = kjt.values().numpy(), kjt.offset_per_key()
        for t in range(NUM_SPARSE_FEATURES):
            rows, reuse = np.unique(values[offsets[t] : offsets[t + 1]], return_counts=True)
            hist_sums[t] += histogram_of_counts(reuse)
            ids_per_table[t] += offsets[t + 1] - offsets[t]
            seen[t].append(rows)
        samples += kjt.stride()
        batches += 1
    tables = []
    for t in range(NUM_SPARSE_FEATURES):
        spec = TableSpec(
            name=table_name(t),
            num_rows=loader.num_embeddings_per_feature[t],
            dim=embedding_dim,
            pooling_factor=float(ids_per_table[t] / samples),
            reuse_hist=tuple(float(x) for x in hist_sums[t] / batches),
            feature_names=(FEATURE_NAMES[t],),
        )
        tables.append(TableStats(spec, unique_ids=int(np.unique(np.concatenate(seen[t])).size)))
    return tables, StatsRun(batch_size, batches, samples, partial_batch=available < batch_size)


def save_stats(path: Path | str, tables: list[TableStats], info: dict[str, object]) -> None:
    """Write the statistics JSON: `info` and `unique_ids` (one count per table, in table order) at
    the top level, and one entry per table holding exactly TableSpec's fields, so that any reader
    of TableSpec dicts (recsearch.placement too) can load it."""
    payload = tables_payload([t.spec for t in tables], {**info, "unique_ids": [t.unique_ids for t in tables]})
    remote.write_text(Path(path), json.dumps(payload, indent=2) + "\n")


def format_table(tables: list[TableStats]) -> str:
    labels = reuse_bin_labels()
    lines = [
        f"{'table':<10} {'rows':>12} {'pool':>6} {'unique':>10} {'MB':>9}  "
        "top reuse bins (reuse: share of lookups)"
    ]
    for t in tables:
        s = t.spec
        top = np.argsort(s.reuse_hist)[::-1][:3]
        bins = "  ".join(f"{labels[b]}: {s.reuse_hist[b]:.0%}" for b in top if s.reuse_hist[b] > 0)
        lines.append(
            f"{s.name:<10} {s.num_rows:>12,} {s.pooling_factor:>6.2f} {t.unique_ids:>10,} "
            f"{s.size_bytes / 2**20:>9.2f}  {bins}"
        )
    return "\n".join(lines)


# the option that gives this command's table sizes, named in recsearch.data.dataset's advice
TABLE_SIZES_OPTION = "--table-sizes"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="recsearch data stats", description="Per-table statistics for embedding placement."
    )
    parser.add_argument("root", help="dataset directory")
    parser.add_argument("--split", default="train", choices=layout.SPLITS)
    parser.add_argument(
        "--batch-size", type=int, default=65536, help="batch whose reuse is counted"
    )
    parser.add_argument("--max-batches", type=int, default=8, help="batches averaged")
    parser.add_argument(
        "--embedding-dim", type=int, default=16, help="dim recorded per table (sizes in MB)"
    )
    parser.add_argument(
        "--max-rows-per-table",
        type=int,
        help="cap table rows as training does (ids are hashed into the cap)",
    )
    parser.add_argument(
        TABLE_SIZES_OPTION,
        **list_flag(int, words=False),
        help=f"N or {NUM_SPARSE_FEATURES} comma-separated table sizes; for directories written by "
        "TorchRec's scripts (no meta.json) they default to max id + 1 per feature",
    )
    parser.add_argument("--out", help="write JSON here (default: print only)")
    args = parser.parse_args(argv)
    if args.batch_size <= 0 or args.max_batches <= 0 or args.embedding_dim <= 0:
        parser.error("--batch-size, --max-batches and --embedding-dim must be positive")
    try:
        table_sizes = (
            expand_sizes(args.table_sizes, TABLE_SIZES_OPTION) if args.table_sizes else None
        )
    except ValueError as err:
        parser.error(str(err))
    try:
        has_meta = (Path(args.root) / layout.META_FILE).exists()
        meta = dataset_meta(
            args.root, None if has_meta else table_sizes, key=TABLE_SIZES_OPTION
        )
        sizes = table_sizes or meta.num_embeddings_per_feature
        if args.max_rows_per_table:
            sizes = tuple(min(n, args.max_rows_per_table) for n in sizes)
        tables, run = table_stats(
            args.root,
            args.split,
            args.batch_size,
            args.max_batches,
            args.embedding_dim,
            num_embeddings_per_feature=sizes,
            meta=meta,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"recsearch data stats: {err}", file=sys.stderr)
        return 2
    print(
        f"{args.root} ({meta.source}, {meta.total_rows:,} rows): {args.split} split, "
        f"{run.batches} batch(es) of {run.batch_size:,}, dim {args.embedding_dim}"
    )
    if run.partial_batch:
        print(
            f"warning: the {args.split} split has only {run.rows:,} rows, fewer than one batch; "
            "reuse is lower than at the requested batch size",
            file=sys.stderr,
        )
    print(format_table(tables))
    total_mb = sum(t.spec.size_bytes for t in tables) / 2**20
    print(f"total embedding memory: {total_mb:,.1f} MB (weights only)")
    if meta.bayes:
        print("Bayes-optimal AUC: " + ", ".join(f"{k} {v.auc:.4f}" for k, v in meta.bayes.items()))
    if args.out:
        info = {
            "dataset": str(args.root),
            "source": meta.source,
            "split": args.split,
            "batch_size": run.batch_size,
            "batches": run.batches,
            "rows": run.rows,
            "embedding_dim": args.embedding_dim,
            # what the statistics describe: `data preprocess --force` leaves a stats.json of other
            # data behind with the replaced dataset instead of carrying it over
            layout.STATS_DATASET_KEY: layout.dataset_stamp(meta),
        }
        save_stats(args.out, tables, info)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
