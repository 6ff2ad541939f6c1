import numpy as np
import pytest
import torch
from torchrec.datasets.criteo import InMemoryBinaryCriteoIterDataPipe

from recsearch.data import layout
from recsearch.data.loader import FEATURE_NAMES, NpyBatchLoader, read_split_arrays
from tests.conftest import write_dataset

HASH = (97,) * 26  # the fixture's ids go up to 970


def _rows(batch):
    return batch.dense_features[:, 0].long().tolist()


def _all_rows(loader):
    return [r for b in loader for r in _rows(b)]


def test_batches_are_rows_in_order_across_day_boundary(tiny_dataset):
    loader = NpyBatchLoader(tiny_dataset, "train", 16, prefetch_batches=0, num_embeddings_per_feature=HASH)
    batches = list(loader)
    assert len(loader) == len(batches) == 6  # 90 rows: 5 full + 1 partial
    assert _all_rows(loader) == list(range(90))
    b = batches[3]  # rows 48..63 straddle day_0 (50 rows) and day_1
    sparse = np.concatenate([np.load(layout.day_file(tiny_dataset, d, "sparse")) for d in (0, 1)])
    labels = np.concatenate([np.load(layout.day_file(tiny_dataset, d, "labels")) for d in (0, 1)])
    kjt = b.sparse_features
    assert kjt.keys() == list(FEATURE_NAMES) and kjt.stride() == 16
    np.testing.assert_array_equal(kjt["cat_5"].values().numpy(), sparse[48:64, 5] % 97)
    assert (kjt.lengths() == 1).all()
    np.testing.assert_array_equal(b.labels.numpy(), labels[48:64, 0].astype(np.float32))
    assert len(list(NpyBatchLoader(tiny_dataset, "train", 16, drop_last=True))) == 5


def test_val_and_test_are_halves_of_the_last_day(tiny_dataset):
    assert _all_rows(NpyBatchLoader(tiny_dataset, "val", 8)) == list(range(90, 105))
    assert _all_rows(NpyBatchLoader(tiny_dataset, "test", 8)) == list(range(105, 120))


def test_ranks_partition_batches_equally(tiny_dataset):
    per_rank = [NpyBatchLoader(tiny_dataset, "train", 8, rank=r, world_size=2) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 5  # 11 full batches -> 5 rounds of 2
    rows = [_all_rows(loader) for loader in per_rank]
    assert not set(rows[0]) & set(rows[1])
    assert sorted(rows[0] + rows[1]) == list(range(80))
    assert _rows(next(iter(per_rank[1]))) == list(range(8, 16))


@pytest.mark.parametrize("in_memory", [True, False])
def test_shuffle_is_a_deterministic_permutation_per_epoch(tiny_dataset, in_memory):
    loader = NpyBatchLoader(tiny_dataset, "train", 16, shuffle=True, seed=3, in_memory=in_memory)
    first = _all_rows(loader)
    assert sorted(first) == list(range(90)) and first != list(range(90))
    assert _all_rows(NpyBatchLoader(tiny_dataset, "train", 16, shuffle=True, seed=3)) == first
    loader.set_epoch(1)
    assert _all_rows(loader) != first
    sharded = [NpyBatchLoader(tiny_dataset, "train", 8, rank=r, world_size=2, shuffle=True) for r in (0, 1)]
    for s in sharded:
        assert all(len(_rows(b)) == 8 for b in s)  # the partial block is never used
    assert not set(_all_rows(sharded[0])) & set(_all_rows(sharded[1]))


def test_iter_from_resumes_the_same_sequence(tiny_dataset):
    loader = NpyBatchLoader(tiny_dataset, "train", 16, shuffle=True, seed=1)
    loader.set_epoch(2)
    full = [_rows(b) for b in loader]
    assert [_rows(b) for b in loader.iter_from(4)] == full[4:]
    assert list(loader.iter_from(len(loader))) == []
    with pytest.raises(ValueError, match="outside"):
        loader.iter_from(len(loader) + 1)


@pytest.mark.parametrize("in_memory", [True, False])
def test_hashing_max_rows_and_prefetch_equivalence(tiny_dataset, in_memory):
    sizes = [5 + i for i in range(26)]
    loader = NpyBatchLoader(tiny_dataset, "train", 10, num_embeddings_per_feature=sizes, max_rows=35, in_memory=in_memory)
    batches = list(loader)
    assert _all_rows(loader) == list(range(35))
    for t in range(26):
        assert batches[0].sparse_features[f"cat_{t}"].values().max() < sizes[t]
    sync = NpyBatchLoader(tiny_dataset, "train", 10, num_embeddings_per_feature=sizes, max_rows=35, prefetch_batches=0, in_memory=not in_memory)
    for a, b in zip(batches, sync):
        assert torch.equal(a.dense_features, b.dense_features)
        assert torch.equal(a.sparse_features.values(), b.sparse_features.values())


def test_multi_hot_kjt(tmp_path):
    sizes = (2,) * 13 + (1,) * 13
    write_dataset(tmp_path, day_rows=(20, 10), multi_hot_sizes=sizes)
    batch = next(iter(NpyBatchLoader(tmp_path, "train", 4, num_embeddings_per_feature=HASH)))
    multi = np.load(layout.day_file(tmp_path, 0, "sparse_multi_hot")) % 97
    kjt = batch.sparse_features
    assert kjt["cat_0"].lengths().tolist() == [2, 2, 2, 2]
    np.testing.assert_array_equal(kjt["cat_0"].values().numpy(), multi[:4, 0:2].reshape(-1))
    np.testing.assert_array_equal(kjt["cat_13"].values().numpy(), multi[:4, 26])
    assert kjt.values().numel() == 4 * sum(sizes)


def test_producer_errors_reach_the_consumer(tiny_dataset, monkeypatch):
    loader = NpyBatchLoader(tiny_dataset, "train", 16)

    def broken(block):
        raise OSError("read failed")

    monkeypatch.setattr(loader, "_make_batch", broken)
    with pytest.raises(OSError, match="read failed"):
        list(loader)


def test_missing_files_are_clear_errors(tiny_dataset, tmp_path):
    layout.day_file(tiny_dataset, 1, "sparse").unlink()
    with pytest.raises(FileNotFoundError, match="day_1_sparse.npy is missing"):
        NpyBatchLoader(tiny_dataset, "train", 8)
    with pytest.raises(FileNotFoundError, match="not a finished recsearch dataset"):
        NpyBatchLoader(tmp_path / "nothing", "train", 8)


def test_read_split_arrays(tiny_dataset):
    dense, sparse, labels = read_split_arrays(tiny_dataset, "test")
    assert dense.shape == (15, 13) and sparse.shape == (15, 26) and labels.shape == (15,)
    assert dense[0, 0] == 105


@pytest.mark.parametrize("batch_size", [10, 16])
@pytest.mark.parametrize("stage", ["train", "val", "test"])
def test_matches_torchrec_in_memory_pipe(tiny_dataset, batch_size, stage):
    days = [0, 1] if stage == "train" else [2]
    paths = {k: [str(layout.day_file(tiny_dataset, d, k)) for d in days] for k in ("dense", "sparse", "labels")}
    theirs = InMemoryBinaryCriteoIterDataPipe(
        stage, paths["dense"], paths["sparse"], paths["labels"], batch_size=batch_size,
        rank=0, world_size=1, hashes=[97] * 26,
    )
    ours = NpyBatchLoader(tiny_dataset, stage, batch_size, num_embeddings_per_feature=HASH)
    pairs = list(zip(ours, theirs, strict=True))
    assert len(pairs) == len(ours)
    for a, b in pairs:
        assert torch.equal(a.dense_features, b.dense_features)
        assert torch.equal(a.sparse_features.values(), b.sparse_features.values().long())
        assert torch.equal(a.sparse_features.lengths(), b.sparse_features.lengths()[: a.sparse_features.lengths().numel()])
        assert torch.equal(a.labels, b.labels.float())
