"""Per-table feature vectors for the cost network and the placement policy.

Why fixed transforms and not statistics fitted on the training pool: the cost network must score
tables it has never seen (a test pool, a user's real tables), so a feature must mean the same thing
whatever set of tables the model was trained on. Every feature is therefore a fixed function of
one table, scaled so that the log and share features of the tables placement meets (dims 1..1024,
rows 10..10^9, pooling factors 1..1000) land in about [0, 1.5], and the linear work terms (dim,
pooling, lookup) are 1 for a typical heavy table (dim 256, pooling 64, 4096 values per sample) and
stay below ~10 for the heaviest (dim 256 x pooling 150):

| feature         | value                                  | why it matters for a fused lookup       |
|-----------------|----------------------------------------|-----------------------------------------|
| dim             | dim / 256                              | bytes moved per lookup (linear)         |
| log2_dim        | log2(dim) / 8                          | vector width effects (SIMD lanes)       |
| log10_rows      | log10(rows) / 7                        | working set vs caches                   |
| pooling         | pooling / 64                           | lookups per sample (linear)             |
| log2_pooling    | log2(pooling) / 8                      | bag-length effects                      |
| lookup          | dim x pooling / 4096                   | values gathered per sample (linear)     |
| log2_lookup     | log2(dim x pooling) / 16               |                                         |
| log2_size       | log2(weight bytes) / 32                | footprint                               |
| fp16            | 1 if bytes_per_value == 2              | half-precision kernels                  |
| has_hist        | 1 if the reuse histogram is known      | tells the net the bins below are zeros  |
| distinct_share  | sum_b hist[b] / reuse(b)               | share of lookups that touch a new row:  |
|                 |                                        | a cache-miss proxy (0 when unknown)     |
| new_row_lookup  | lookup x distinct_share / 4096         | values read from rows not yet in cache  |
| size            | weight bytes / 2^28                    | footprint (linear): page/TLB pressure   |
| reuse_0..16     | the 17-bin reuse histogram (shares)    | DreamShard's access-frequency input     |

reuse(b) is the geometric middle of reuse bin b (1, 2, 2^(b-0.5) ...), the bins being the
power-of-two lookup-share bins of `recsearch data stats` (recsearch.placement.tables.reuse_histogram).

The linear terms matter: a device's cost is close to a sum over its tables of (lookups x cost per
lookup), and the networks sum per-table encodings over a device, so features linear in the work
let a small encoder represent that sum well.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from recsearch.types import NUM_REUSE_BINS, TableSpec

SCALAR_FEATURES = (
    "dim",
    "log2_dim",
    "log10_rows",
    "pooling",
    "log2_pooling",
    "lookup",
    "log2_lookup",
    "log2_size",
    "fp16",
    "has_hist",
    "distinct_share",
    "new_row_lookup",
    "size",
)
FEATURE_NAMES: tuple[str, ...] = SCALAR_FEATURES + tuple(
    f"reuse_{b}" for b in range(NUM_REUSE_BINS)
)
NUM_FEATURES = len(FEATURE_NAMES)

# Representative reuse count of each bin: bin 0 is reuse 1, bin b covers (2^(b-1), 2^b].
_BIN_REUSE = np.array([1.0] + [2 ** (b - 0.5) for b in range(1, NUM_REUSE_BINS)])


def table_features(table: TableSpec) -> np.ndarray:
    """The NUM_FEATURES-long float32 vector of one table (FEATURE_NAMES order)."""
    dim, pooling = float(table.dim), float(table.pooling_factor)
    lookup = dim * pooling
    hist = np.asarray(table.reuse_hist, dtype=np.float64)
    has_hist = hist.size == NUM_REUSE_BINS and hist.sum() > 0
    if has_hist:
        hist = hist / hist.sum()
    else:
        hist = np.zeros(NUM_REUSE_BINS)
    distinct = float((hist / _BIN_REUSE).sum()) if has_hist else 0.0
    scalars = [
        dim / 256.0,
        math.log2(dim) / 8.0,
        math.log10(table.num_rows) / 7.0,
        pooling / 64.0,
        math.log2(max(pooling, 1e-3)) / 8.0,
        lookup / 4096.0,
        math.log2(max(lookup, 1e-3)) / 16.0,
        math.log2(max(table.size_bytes, 1)) / 32.0,
        1.0 if table.bytes_per_value == 2 else 0.0,
        1.0 if has_hist else 0.0,
        distinct,
        lookup * distinct / 4096.0,
        table.size_bytes / 2.0**28,
    ]
    return np.concatenate([np.asarray(scalars), hist]).astype(np.float32)


def features_matrix(tables: Sequence[TableSpec]) -> np.ndarray:
    """[len(tables), NUM_FEATURES] float32: table_features for each table, in order."""
    if not tables:
        return np.zeros((0, NUM_FEATURES), dtype=np.float32)
    return np.stack([table_features(t) for t in tables])
