import json

import numpy as np
import pytest

from recsearch.data import stats
from recsearch.types import NUM_REUSE_BINS
from tests.conftest import write_dataset


def test_reuse_histogram_by_hand():
    # ids: 7 once; 3 twice; 5 three times; 9 five times -> 11 lookups
    ids = np.array([7, 3, 3, 5, 5, 5, 9, 9, 9, 9, 9])
    hist = stats.reuse_histogram(ids)
    assert hist.shape == (NUM_REUSE_BINS,)
    expected = np.zeros(NUM_REUSE_BINS)
    expected[0] = 1 / 11  # reuse 1
    expected[1] = 2 / 11  # reuse 2
    expected[2] = 3 / 11  # reuse 3 in (2, 4]
    expected[3] = 5 / 11  # reuse 5 in (4, 8]
    np.testing.assert_allclose(hist, expected)
    assert stats.reuse_histogram(np.zeros(100_000, dtype=int))[-1] == 1.0  # reuse > 2^15


def test_table_stats_and_json_round_trip(tmp_path):
    sizes = (3,) * 2 + (1,) * 24
    write_dataset(tmp_path / "d", day_rows=(64, 64, 32), num_embeddings=11, multi_hot_sizes=sizes)
    tables = stats.table_stats(tmp_path / "d", batch_size=32, max_batches=4, embedding_dim=8)
    assert len(tables) == 26 and tables[0].name == "t_cat_0" and tables[0].features == ("cat_0",)
    assert tables[0].pooling_factor == 3.0 and tables[5].pooling_factor == 1.0
    assert tables[3].num_rows == 110 and tables[3].dim == 8  # the fixture's raw id range
    for t in tables:
        assert abs(sum(t.reuse_hist) - 1.0) < 1e-5
    # 32 samples x 3 ids over 11 rows: every row is hit several times, never once on average
    assert tables[0].reuse_hist[0] < tables[5].reuse_hist[0]
    path = tmp_path / "stats.json"
    stats.save_tables(path, tables, {"dataset": "d"})
    assert stats.load_tables(path) == tables
    path.write_text(json.dumps({"tables": [{"name": "x"}]}))
    with pytest.raises(ValueError, match="not a table statistics file"):
        stats.load_tables(path)


def test_cli_prints_and_writes(tmp_path, capsys):
    write_dataset(tmp_path / "d")
    out = tmp_path / "s.json"
    assert stats.main([str(tmp_path / "d"), "--batch-size", "30", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "t_cat_25" in printed and "wrote" in printed
    raw = json.loads(out.read_text())
    assert raw["batch_size"] == 30 and len(raw["unique_ids"]) == 26 and len(raw["tables"]) == 26
    assert stats.main([str(tmp_path / "missing")]) == 2
