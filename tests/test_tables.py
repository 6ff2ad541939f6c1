"""recsearch.tables: names, the reuse histogram and the table-file format, shared by the data,
model, placement and search packages."""

import json

import numpy as np
import pytest

from recsearch import tables as RT
from recsearch.types import NUM_REUSE_BINS, TableSpec


def test_names():
    assert RT.feature_name(3) == "cat_3" and RT.table_name(3) == "t_cat_3"


def test_reuse_histogram_is_the_lookup_share_per_power_of_two_bin():
    assert RT.reuse_histogram(np.array([5, 5, 7])).tolist()[:2] == pytest.approx([1 / 3, 2 / 3])
    assert RT.reuse_histogram(np.zeros(2**15 + 1, int))[NUM_REUSE_BINS - 1] == 1.0
    assert not RT.reuse_histogram(np.array([], int)).any()
    ids = np.random.default_rng(0).zipf(1.3, 20_000) % 5000
    hist = RT.reuse_histogram(ids)
    assert hist.sum() == pytest.approx(1.0)
    # from the rows' reuse counts: the same numbers
    _, counts = np.unique(ids, return_counts=True)
    assert np.array_equal(RT.histogram_of_counts(counts), hist)


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".csv"])
def test_table_files_round_trip(tmp_path, suffix):
    tables = [
        TableSpec("a", 100, 8, 2.0, reuse_hist=tuple([1.0] + [0.0] * (NUM_REUSE_BINS - 1))),
        TableSpec("f", 10, 4, 2.5, feature_names=("x", "y"), bytes_per_value=2),
    ]
    RT.save_tables(tmp_path / f"t{suffix}", tables, {"note": 1})
    back, info = RT.read_table_file(tmp_path / f"t{suffix}")
    assert back == tables and info == ({} if suffix == ".csv" else {"note": 1})


def test_unknown_per_table_keys_are_ignored_and_broken_files_named(tmp_path):
    path = tmp_path / "stats.json"
    raw = RT.tables_payload([TableSpec("a", 100, 8)], {"batch_size": 4})
    raw["tables"][0]["future_fact"] = 1
    path.write_text(json.dumps(raw))
    assert RT.load_tables(path) == [TableSpec("a", 100, 8)]
    path.write_text(json.dumps({"tables": [{"name": "x"}]}))
    with pytest.raises(ValueError, match="stats.json: not a table statistics file"):
        RT.load_tables(path)
