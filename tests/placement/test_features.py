"""Per-table features: shape, order and the documented fixed normalisation."""

import math
from pathlib import Path

import numpy as np
import pytest

from recsearch.placement.features import (
    FEATURE_NAMES,
    NUM_FEATURES,
    features_matrix,
    table_features,
)
from recsearch.tables import load_tables
from recsearch.types import NUM_REUSE_BINS, TableSpec

DATA = Path(__file__).parents[2] / "recsearch" / "placement" / "data"


def _f(table):
    return dict(zip(FEATURE_NAMES, table_features(table).tolist()))


def test_shape_and_names():
    assert NUM_FEATURES == len(FEATURE_NAMES) == 13 + NUM_REUSE_BINS
    assert FEATURE_NAMES[13:] == tuple(f"reuse_{b}" for b in range(NUM_REUSE_BINS))
    v = table_features(TableSpec("a", 1000, 16))
    assert v.shape == (NUM_FEATURES,) and v.dtype == np.float32
    assert features_matrix([]).shape == (0, NUM_FEATURES)
    m = features_matrix([TableSpec("a", 1000, 16), TableSpec("b", 10, 4, 3.0)])
    assert m.shape == (2, NUM_FEATURES)
    np.testing.assert_array_equal(m[1], table_features(TableSpec("b", 10, 4, 3.0)))


def test_documented_normalisation_values():
    hist = [0.0] * NUM_REUSE_BINS
    hist[0], hist[1] = 1.0, 1.0  # not normalised on purpose: features normalise to shares
    f = _f(TableSpec("t", num_rows=10**6, dim=64, pooling_factor=16.0, reuse_hist=tuple(hist)))
    assert f["dim"] == pytest.approx(0.25)
    assert f["log2_dim"] == pytest.approx(6 / 8)
    assert f["log10_rows"] == pytest.approx(6 / 7)
    assert f["pooling"] == pytest.approx(0.25)
    assert f["log2_pooling"] == pytest.approx(0.5)
    assert f["lookup"] == pytest.approx(1024 / 4096)
    assert f["log2_lookup"] == pytest.approx(10 / 16)
    assert f["log2_size"] == pytest.approx(math.log2(10**6 * 64 * 4) / 32)
    assert f["fp16"] == 0.0 and f["has_hist"] == 1.0
    assert f["reuse_0"] == pytest.approx(0.5) and f["reuse_1"] == pytest.approx(0.5)
    # half the lookups touch a new row, half a row used twice (bin 1: reuse 2^0.5)
    distinct = 0.5 + 0.5 / math.sqrt(2)
    assert f["distinct_share"] == pytest.approx(distinct, rel=1e-6)
    assert f["new_row_lookup"] == pytest.approx(1024 * distinct / 4096, rel=1e-6)
    assert f["size"] == pytest.approx(10**6 * 64 * 4 / 2**28)


def test_unknown_histogram_is_flagged_and_zero():
    f = _f(TableSpec("t", 100, 8, bytes_per_value=2))
    assert f["has_hist"] == 0.0 and f["distinct_share"] == 0.0 and f["fp16"] == 1.0
    assert f["new_row_lookup"] == 0.0
    assert f["size"] == pytest.approx(100 * 8 * 2 / 2**28)  # fp16: half the bytes
    assert all(f[f"reuse_{b}"] == 0.0 for b in range(NUM_REUSE_BINS))


@pytest.mark.parametrize("pool", ["pool_train.json", "pool_test.json"])
def test_shipped_pools_land_in_the_documented_range(pool):
    m = features_matrix(load_tables(DATA / pool))
    assert np.isfinite(m).all()
    assert m.min() >= 0.0
    linear = [FEATURE_NAMES.index(n) for n in ("dim", "pooling", "lookup")]
    others = [i for i in range(NUM_FEATURES) if i not in linear]
    assert m[:, others].max() <= 1.5, m[:, others].max(0)
    assert m[:, linear].max() <= 10.0
    # reuse shares sum to one for every table with a histogram
    np.testing.assert_allclose(m[:, FEATURE_NAMES.index("reuse_0") :].sum(1), 1.0, atol=1e-5)
