"""Per-table statistics that embedding placement needs.

`recsearch data stats DIR [--split train] [--batch-size 65536] [--max-batches 8] [--out stats.json]`

For each table: rows (its id range), pooling factor (ids looked up per sample), unique ids seen,
and DreamShard's access-frequency histogram. Within one batch, a row's *reuse* is how many lookups
hit it; the histogram is the share of the batch's lookups whose row's reuse falls in the bins
(0,1], (1,2], (2,4], ..., (2^15, inf) (NUM_REUSE_BINS bins), averaged over batches. The result is
the same table description the placement module reads (`load_tables`).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from recsearch.data import layout
from recsearch.data.loader import read_split_arrays
from recsearch.types import NUM_REUSE_BINS, NUM_SPARSE_FEATURES, TableSpec


def reuse_histogram(ids: np.ndarray) -> np.ndarray:
    """Share of lookups per power-of-two reuse bin for one batch of one table's ids."""
    if ids.size == 0:
        return np.zeros(NUM_REUSE_BINS)
    _, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    reuse_per_lookup = counts[inverse]
    # reuse r falls in bin ceil(log2(r)): 1 -> 0, 2 -> 1, 3..4 -> 2, 5..8 -> 3, ...
    bins = np.minimum(np.ceil(np.log2(reuse_per_lookup)).astype(np.int64), NUM_REUSE_BINS - 1)
    return np.bincount(bins, minlength=NUM_REUSE_BINS) / ids.size


def table_stats(
    root: Path | str,
    split: str = "train",
    batch_size: int = 65536,
    max_batches: int = 8,
    embedding_dim: int = 16,
) -> list[TableSpec]:
    meta = layout.read_meta(root)
    rows_used = min(layout.split_rows(meta, split), batch_size * max_batches)
    _, sparse, _ = read_split_arrays(root, split, max_rows=rows_used, meta=meta)
    hotness = meta.multi_hot_sizes or (1,) * NUM_SPARSE_FEATURES
    bounds = np.cumsum((0, *hotness))
    batches = max(1, rows_used // batch_size)  # a partial last batch would skew the reuse counts
    tables = []
    for t in range(NUM_SPARSE_FEATURES):
        n_rows = meta.num_embeddings_per_feature[t]
        ids = sparse[:, bounds[t] : bounds[t + 1]].astype(np.int64) % n_rows
        per_batch = [
            reuse_histogram(ids[b * batch_size : (b + 1) * batch_size].reshape(-1))
            for b in range(batches)
        ]
        tables.append(
            TableSpec(
                name=f"t_cat_{t}",
                num_rows=n_rows,
                dim=embedding_dim,
                pooling_factor=float(hotness[t]),
                reuse_hist=tuple(round(float(x), 6) for x in np.mean(per_batch, axis=0)),
                feature_names=(f"cat_{t}",),
            )
        )
    return tables


def unique_ids(root: Path | str, split: str, max_rows: int) -> list[int]:
    meta = layout.read_meta(root)
    _, sparse, _ = read_split_arrays(root, split, max_rows=max_rows, meta=meta)
    hotness = meta.multi_hot_sizes or (1,) * NUM_SPARSE_FEATURES
    bounds = np.cumsum((0, *hotness))
    return [
        int(np.unique(sparse[:, bounds[t] : bounds[t + 1]] % meta.num_embeddings_per_feature[t]).size)
        for t in range(NUM_SPARSE_FEATURES)
    ]


def save_tables(path: Path | str, tables: list[TableSpec], info: dict[str, object]) -> None:
    payload = {**info, "tables": [asdict(t) for t in tables]}
    layout.write_text_atomic(Path(path), json.dumps(payload, indent=2) + "\n")


def load_tables(path: Path | str) -> list[TableSpec]:
    """Tables from a `recsearch data stats` JSON file."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
        return [
            TableSpec(
                **{
                    **t,
                    "reuse_hist": tuple(t.get("reuse_hist", ())),
                    "feature_names": tuple(t.get("feature_names", ())),
                }
            )
            for t in raw["tables"]
        ]
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a table statistics file: {err}") from err


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="recsearch data stats", description="Per-table statistics for embedding placement."
    )
    parser.add_argument("root", help="dataset directory")
    parser.add_argument("--split", default="train", choices=layout.SPLITS)
    parser.add_argument("--batch-size", type=int, default=65536, help="batch for reuse counts")
    parser.add_argument("--max-batches", type=int, default=8)
    parser.add_argument("--embedding-dim", type=int, default=16, help="dim recorded per table")
    parser.add_argument("--out", help="write JSON here (default: print only)")
    args = parser.parse_args(argv)
    try:
        meta = layout.read_meta(args.root)
        tables = table_stats(args.root, args.split, args.batch_size, args.max_batches, args.embedding_dim)
    except (FileNotFoundError, ValueError) as err:
        print(f"recsearch data stats: {err}", file=sys.stderr)
        return 2
    rows_used = min(layout.split_rows(meta, args.split), args.batch_size * args.max_batches)
    uniques = unique_ids(args.root, args.split, rows_used)
    print(f"{args.root} ({meta.source}, {meta.total_rows:,} rows; {args.split}: {rows_used:,} rows, batch {args.batch_size:,})")
    print(f"{'table':<10} {'rows':>10} {'pool':>5} {'unique':>9} {'MB@dim':>8}  lookups with reuse 1 / 2 / 3-4 / >4")
    for t, unique in zip(tables, uniques):
        h = t.reuse_hist
        print(
            f"{t.name:<10} {t.num_rows:>10,} {t.pooling_factor:>5.1f} {unique:>9,} "
            f"{t.size_bytes / 2**20:>8.1f}  {h[0]:.2f} / {h[1]:.2f} / {h[2]:.2f} / {sum(h[3:]):.2f}"
        )
    if meta.bayes:
        ceilings = ", ".join(f"{k} {v.auc:.4f}" for k, v in meta.bayes.items())
        print(f"Bayes-optimal AUC: {ceilings}")
    if args.out:
        save_tables(
            args.out,
            tables,
            {"dataset": str(args.root), "split": args.split, "batch_size": args.batch_size,
             "rows_used": rows_used, "unique_ids": uniques},
        )
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
