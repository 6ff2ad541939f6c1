import dataclasses
import json
import logging

import numpy as np
import pytest

from recsearch.data import layout, stats
from recsearch.tables import load_tables, reuse_histogram
from recsearch.types import NUM_REUSE_BINS, TableSpec
from tests.conftest import write_dataset


def test_reuse_histogram_by_hand():
    # 7 once; 3 twice; 5 three times; 9 five times -> 11 lookups
    ids = np.array([7, 3, 9, 3, 5, 9, 5, 9, 5, 9, 9])
    expected = np.zeros(NUM_REUSE_BINS)
    expected[0] = 1 / 11  # reuse 1 in (0, 1]
    expected[1] = 2 / 11  # reuse 2 in (1, 2]
    expected[2] = 3 / 11  # reuse 3 in (2, 4]
    expected[3] = 5 / 11  # reuse 5 in (4, 8]
    np.testing.assert_allclose(reuse_histogram(ids), expected)
    # bin edges: reuse 4 is in (2, 4], 2^15 in (2^14, 2^15], 2^15 + 1 in the last bin
    assert reuse_histogram(np.zeros(4, int))[2] == 1.0
    assert reuse_histogram(np.zeros(2**15, int))[15] == 1.0
    assert reuse_histogram(np.zeros(2**15 + 1, int))[16] == 1.0
    assert reuse_histogram(np.arange(10)).tolist() == [1.0] + [0.0] * 16
    assert not reuse_histogram(np.array([], int)).any()
    assert stats.reuse_bin_labels()[:4] == ["1", "2", "3-4", "5-8"]
    assert (
        stats.reuse_bin_labels()[-1] == ">32768" and len(stats.reuse_bin_labels()) == NUM_REUSE_BINS
    )


def _write_known_ids(root, day_rows, ids_for_table0, multi_hot_sizes=None):
    """A dataset whose table 0 ids are given (the rest come from the fixture)."""
    write_dataset(root, day_rows=day_rows, num_embeddings=11, multi_hot_sizes=multi_hot_sizes)
    kind = "sparse" if multi_hot_sizes is None else "sparse_multi_hot"
    width = 1 if multi_hot_sizes is None else multi_hot_sizes[0]
    ids = np.asarray(ids_for_table0).reshape(sum(day_rows), width)
    first = 0
    for day, rows in enumerate(day_rows):
        path = layout.day_file(root, day, kind)
        sparse = np.load(path)
        sparse[:, :width] = ids[first : first + rows]
        np.save(path, sparse)
        first += rows


def test_histogram_averages_full_batches_of_the_split(tmp_path):
    # batch 0 (rows 0..3): ids 1 1 1 2 -> 3 lookups of reuse 3, 1 of reuse 1
    # batch 1 (rows 4..7): ids 5 5 6 6 -> 4 lookups of reuse 2; rows 8..9 never read (max_batches)
    ids = np.array([1, 1, 1, 2, 5, 5, 6, 6, 7, 7, 0, 0])
    _write_known_ids(tmp_path, (6, 4, 2), ids)
    tables, run = stats.table_stats(tmp_path, batch_size=4, max_batches=2)
    assert (run.batches, run.rows, run.partial_batch) == (2, 8, False)
    hist = tables[0].spec.reuse_hist
    assert hist[0] == pytest.approx((1 / 4 + 0) / 2)
    assert hist[1] == pytest.approx((0 + 1) / 2)
    assert hist[2] == pytest.approx((3 / 4 + 0) / 2)
    assert tables[0].unique_ids == 4  # 1, 2, 5, 6
    for t in tables:
        assert sum(t.spec.reuse_hist) == pytest.approx(1.0)
    # hashed into 3 rows: 1 1 1 2 | 2 2 0 0 -> batch 1 has reuse 2 twice, batch 0 as before
    hashed, _ = stats.table_stats(
        tmp_path, batch_size=4, max_batches=3, num_embeddings_per_feature=[3] * 26
    )
    assert hashed[0].spec.num_rows == 3 and hashed[0].unique_ids == 3
    assert hashed[0].spec.reuse_hist[1] == pytest.approx(1 / 2)  # only 2 full batches in 10 rows


def test_multi_hot_pooling_factor_and_reuse(tmp_path):
    sizes = (3, 2) + (1,) * 24
    ids = np.array([4, 4, 4, 4, 4, 4, 1, 2, 3, 1, 2, 3] + [0] * 3 * 16)  # 20 rows x 3 ids
    _write_known_ids(tmp_path, (12, 8), ids, multi_hot_sizes=sizes)
    tables, run = stats.table_stats(tmp_path, batch_size=4, max_batches=1, embedding_dim=8)
    assert [t.spec.pooling_factor for t in tables[:3]] == [3.0, 2.0, 1.0]
    # batch 0: id 4 six times, ids 1, 2, 3 twice each -> 6 lookups of reuse 6, 6 of reuse 2
    assert tables[0].spec.reuse_hist[3] == pytest.approx(0.5) and tables[0].spec.reuse_hist[
        1
    ] == pytest.approx(0.5)
    assert (
        tables[0].unique_ids == 4
        and tables[0].spec.dim == 8
        and tables[0].spec.features == ("cat_0",)
    )


def test_json_round_trip_to_table_specs(tmp_path):
    write_dataset(tmp_path / "d", day_rows=(64, 64, 32), num_embeddings=11)
    tables, _ = stats.table_stats(tmp_path / "d", batch_size=32, max_batches=4, embedding_dim=8)
    path = tmp_path / "stats.json"
    stats.save_stats(path, tables, {"dataset": "d", "batch_size": 32})
    loaded = load_tables(path)
    assert loaded == [t.spec for t in tables] and all(isinstance(t, TableSpec) for t in loaded)
    assert loaded[3].num_rows == 110 and loaded[3].name == "t_cat_3"  # the fixture's raw id range
    raw = json.loads(path.read_text())
    assert raw["unique_ids"][3] == tables[3].unique_ids
    assert set(raw["tables"][3]) == {f.name for f in dataclasses.fields(TableSpec)}
    raw["tables"][3]["future_fact"] = 1  # unknown per-table keys are ignored
    path.write_text(json.dumps(raw))
    assert load_tables(path) == [t.spec for t in tables]
    path.write_text(json.dumps({"tables": [{"name": "x"}]}))
    with pytest.raises(ValueError, match="not a table statistics file"):
        load_tables(path)


def test_cli_prints_and_writes(tmp_path, capsys):
    write_dataset(tmp_path / "d")
    out = tmp_path / "s.json"
    args = [str(tmp_path / "d"), "--batch-size", "30", "--embedding-dim", "4", "--out", str(out)]
    assert stats.main([*args, "--max-rows-per-table", "50"]) == 0
    printed = capsys.readouterr().out
    assert "t_cat_25" in printed and "top reuse bins" in printed and f"wrote {out}" in printed
    raw = json.loads(out.read_text())
    assert (raw["batch_size"], raw["batches"], raw["rows"], raw["split"]) == (30, 3, 90, "train")
    assert len(raw["tables"]) == 26 and {t["num_rows"] for t in raw["tables"]} == {50}
    assert len(raw["unique_ids"]) == 26 and max(raw["unique_ids"]) <= 50
    assert all(t["dim"] == 4 and len(t["reuse_hist"]) == NUM_REUSE_BINS for t in raw["tables"])
    assert load_tables(out)[0].num_rows == 50
    assert stats.main([str(tmp_path / "d"), "--batch-size", "1000"]) == 0  # smaller split: warns
    assert "fewer than one batch" in capsys.readouterr().err
    assert stats.main([str(tmp_path / "missing")]) == 2
    assert "meta.json" in capsys.readouterr().err


def test_cli_reads_torchrec_directories_with_table_sizes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RECSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    write_dataset(tmp_path, day_rows=(20, 10))
    (tmp_path / layout.META_FILE).unlink()
    # Without --table-sizes, the sizes are max id + 1 of each feature (recsearch.data.dataset).
    derived = tmp_path / "derived.json"
    assert stats.main([str(tmp_path), "--batch-size", "10", "--out", str(derived)]) == 0
    sparse = np.concatenate([np.load(layout.day_file(tmp_path, d, "sparse")) for d in (0, 1)])
    assert [t.num_rows for t in load_tables(derived)] == (sparse.max(axis=0) + 1).tolist()
    out = tmp_path / "s.json"
    assert (
        stats.main([str(tmp_path), "--batch-size", "10", "--table-sizes", "7", "--out", str(out)])
        == 0
    )
    assert [t.num_rows for t in load_tables(out)] == [7] * 26
    with pytest.raises(SystemExit):
        stats.main([str(tmp_path), "--table-sizes", "1,2"])


def test_cli_advice_on_table_sizes_names_its_own_option(tmp_path, capsys, caplog, monkeypatch):
    """recsearch.data.dataset's table-size advice names the caller's option (dataset_meta /
    derive_sizes key=): --table-sizes for `data stats`, never the train and search config key
    it does not take, and once (no note of its own added)."""
    monkeypatch.setenv("RECSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    write_dataset(tmp_path, day_rows=(20, 10))
    (tmp_path / layout.META_FILE).unlink()
    with caplog.at_level(logging.WARNING, logger="recsearch.data.dataset"):
        assert stats.main([str(tmp_path), "--batch-size", "10"]) == 0  # sizes derived: a warning
    warned = " ".join(r.getMessage() for r in caplog.records if r.name == "recsearch.data.dataset")
    assert "has no meta.json and --table-sizes is not set: table sizes derived" in warned
    assert (
        "Set --table-sizes to fix them: 26 sizes, or one for every table, e.g. --table-sizes "
        "10000000 (ids are then hashed modulo the sizes)"
    ) in warned
    assert "num_embeddings_per_feature" not in warned
    assert "note:" not in capsys.readouterr().err
    for day in (0, 1):  # raw 32-bit hashes, as TorchRec's npy_preproc_criteo keeps them
        path = layout.day_file(tmp_path, day, "sparse")
        np.save(path, np.load(path).astype(np.int64) + 2**31)
    assert stats.main([str(tmp_path), "--batch-size", "10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recsearch data stats: ") and "cannot be derived" in err
    assert "has no meta.json and --table-sizes is not set" in err
    assert err.endswith(
        "Set --table-sizes: 26 table sizes, or one for every table, e.g. --table-sizes 10000000; "
        "ids are hashed modulo them, as TorchRec's examples do\n"
    )
    assert "num_embeddings_per_feature" not in err
    caplog.clear()
    assert stats.main([str(tmp_path), "--batch-size", "10", "--table-sizes", "1000"]) == 0
    assert "note:" not in capsys.readouterr().err
    assert not [r for r in caplog.records if r.name == "recsearch.data.dataset"]
