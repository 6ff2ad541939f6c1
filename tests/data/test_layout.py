import json

import numpy as np
import pytest

from recsearch.data import layout


def _meta(**kw):
    base = dict(source="synthetic", day_rows=(10, 10, 7), num_embeddings_per_feature=(5,) * 26)
    base.update(kw)
    return layout.DatasetMeta(**base)


def test_append_writer_streams_blocks_into_a_valid_npy(tmp_path):
    path = tmp_path / "day_0_dense.npy"
    rng = np.random.default_rng(0)
    blocks = [rng.random((n, 13), dtype=np.float32) for n in (3, 0, 1000, 17)]
    with layout.NpyAppendWriter(path, np.float32, (13,)) as writer:
        for block in blocks:
            writer.append(block)
    assert not path.exists()  # only the partial file until committed
    layout.commit_partials([path])
    got = np.load(path, mmap_mode="r")
    assert got.shape == (1020, 13) and got.dtype == np.float32
    np.testing.assert_array_equal(got, np.concatenate(blocks))
    with pytest.raises(ValueError, match="expected"):
        with layout.NpyAppendWriter(tmp_path / "x.npy", np.int32, (26,)) as writer:
            writer.append(np.zeros((2, 13), np.int32))


def test_meta_round_trip_and_splits_follow_torchrec(tmp_path):
    meta = _meta(bayes={"val": layout.SplitBayes(auc=0.8, log_loss=0.4, rows=4)})
    layout.write_meta(tmp_path, meta)
    assert layout.read_meta(tmp_path) == meta
    assert layout.split_ranges(meta, "train") == [(0, 0, 10), (1, 0, 10)]
    assert layout.split_ranges(meta, "val") == [(2, 0, 4)]  # odd day: val gets the extra row
    assert layout.split_ranges(meta, "test") == [(2, 4, 7)]
    assert layout.split_rows(meta, "test") == 3


def test_missing_or_foreign_meta_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a finished recsearch dataset"):
        layout.read_meta(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a recsearch dataset"):
        layout.read_meta(tmp_path)
    (tmp_path / "meta.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        layout.read_meta(tmp_path)
    with pytest.raises(ValueError, match="26 values"):
        _meta(num_embeddings_per_feature=(5,) * 3)


def test_infer_meta_reads_torchrec_preprocessed_days(tmp_path):
    for day, rows in enumerate((4, 6)):
        np.save(layout.day_file(tmp_path, day, "dense"), np.zeros((rows, 13), np.float32))
        np.save(layout.day_file(tmp_path, day, "sparse"), np.zeros((rows, 26), np.int64))
        np.save(layout.day_file(tmp_path, day, "labels"), np.zeros((rows, 1), np.int32))
    meta = layout.infer_meta(tmp_path, (100,) * 26)
    assert meta.day_rows == (4, 6) and meta.sparse_dtype == "int64"
    assert meta.dense_transform == "torchrec"


def test_day_split_rows_follow_split_ranges():
    assert [layout.day_split_rows((5, 6, 5), s) for s in layout.SPLITS] == [11, 3, 2]
    assert layout.day_split_ranges((5, 6, 5), "test") == [(2, 3, 5)]
    assert layout.MIN_SPLIT_ROWS == 2
