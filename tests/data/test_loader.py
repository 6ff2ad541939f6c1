import dataclasses
import gc
import threading
import time

import numpy as np
import pytest
import torch
from torchrec.datasets.criteo import InMemoryBinaryCriteoIterDataPipe

from recsearch.data import layout
from recsearch.data.loader import FEATURE_NAMES, NpyBatchLoader, read_split_arrays
from tests.conftest import write_dataset

HASH = (97,) * 26  # the fixture's raw ids go up to 970


def _rows(batch):
    """The split positions of a batch's rows (the fixture stores them in dense column 0)."""
    return batch.dense_features[:, 0].long().tolist()


def _all_rows(batches):
    return [r for b in batches for r in _rows(b)]


def _day_arrays(root, days, kind):
    return np.concatenate([np.load(layout.day_file(root, d, kind)) for d in days])


def _assert_same_batch(ours, theirs):
    assert torch.equal(ours.dense_features, theirs.dense_features)
    assert torch.equal(ours.labels, theirs.labels.float())
    a, b = ours.sparse_features, theirs.sparse_features
    assert a.keys() == b.keys() and a.stride() == b.stride()
    assert torch.equal(a.values().long(), b.values().long())
    assert torch.equal(a.lengths(), b.lengths()) and torch.equal(a.offsets(), b.offsets())
    assert a.length_per_key() == b.length_per_key() and a.offset_per_key() == b.offset_per_key()


def _torchrec_pipe(root, stage, batch_size, days, **kwargs):
    paths = {
        k: [str(layout.day_file(root, d, k)) for d in days] for k in ("dense", "sparse", "labels")
    }
    return InMemoryBinaryCriteoIterDataPipe(
        stage, paths["dense"], paths["sparse"], paths["labels"], batch_size=batch_size, **kwargs
    )


def test_batches_are_the_npy_rows_in_order_across_a_day_boundary(tiny_dataset):
    loader = NpyBatchLoader(
        tiny_dataset, "train", 16, prefetch_batches=0, num_embeddings_per_feature=HASH
    )
    batches = list(loader)
    assert len(loader) == len(batches) == 6  # 90 rows: 5 full + 1 partial
    assert [b.labels.numel() for b in batches] == [16] * 5 + [10]
    dense, sparse, labels = (
        _day_arrays(tiny_dataset, (0, 1), k) for k in ("dense", "sparse", "labels")
    )
    b = batches[3]  # rows 48..63 straddle day_0 (50 rows) and day_1
    assert _rows(b) == list(range(48, 64))
    np.testing.assert_array_equal(b.dense_features.numpy(), dense[48:64])
    assert b.dense_features.dtype == torch.float32 and b.labels.dtype == torch.float32
    np.testing.assert_array_equal(b.labels.numpy(), labels[48:64, 0])
    kjt = b.sparse_features
    assert kjt.keys() == list(FEATURE_NAMES) and kjt.stride() == 16
    assert kjt.values().dtype == torch.int32 and (kjt.lengths() == 1).all()  # the stored width
    # key-major: all 16 ids of cat_0, then cat_1, ...
    np.testing.assert_array_equal(kjt.values().numpy(), (sparse[48:64] % 97).T.reshape(-1))
    np.testing.assert_array_equal(kjt["cat_5"].values().numpy(), sparse[48:64, 5] % 97)
    assert _all_rows(batches) == list(range(90))
    dropped = NpyBatchLoader(tiny_dataset, "train", 16, drop_last=True)
    assert len(dropped) == 5 and _all_rows(dropped) == list(range(80))


def test_val_and_test_are_halves_of_the_last_day(tmp_path):
    write_dataset(tmp_path, day_rows=(50, 40, 31))  # odd last day: val takes the extra row
    assert _all_rows(NpyBatchLoader(tmp_path, "val", 8)) == list(range(90, 106))
    assert _all_rows(NpyBatchLoader(tmp_path, "test", 8)) == list(range(106, 121))


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_partition_the_batches_equally(tiny_dataset, world_size):
    per_rank = [
        NpyBatchLoader(tiny_dataset, "train", 8, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    rounds = 90 // 8 // world_size  # 11 full batches; the last partial round is dropped
    assert all(len(loader) == rounds for loader in per_rank)
    rows = [_all_rows(loader) for loader in per_rank]
    assert [len(r) for r in rows] == [8 * rounds] * world_size
    assert sorted(sum(rows, [])) == list(range(8 * rounds * world_size))  # disjoint and complete
    for r, loader in enumerate(per_rank):  # global batch b goes to rank b % world_size
        assert [_rows(b)[0] // 8 for b in loader] == list(range(r, rounds * world_size, world_size))


@pytest.mark.parametrize("in_memory", [True, False])
def test_shuffle_is_a_deterministic_permutation_per_epoch(tiny_dataset, in_memory):
    loader = NpyBatchLoader(tiny_dataset, "train", 16, shuffle=True, seed=3, in_memory=in_memory)
    first = [_rows(b) for b in loader]
    flat = sum(first, [])
    assert sorted(flat) == list(range(90)) and flat != list(range(90))
    assert first[-1] != sorted(first[-1]) and sorted(first[-1]) == list(
        range(80, 90)
    )  # tail stays last
    for batch in first:  # a batch is one block of 16 rows, permuted inside
        assert max(batch) - min(batch) < 16 and min(batch) % 16 == 0
    again = NpyBatchLoader(tiny_dataset, "train", 16, shuffle=True, seed=3, in_memory=not in_memory)
    assert [_rows(b) for b in again] == first  # same order from (seed, epoch) in either mode
    loader.set_epoch(1)
    assert [_rows(b) for b in loader] != first
    loader.set_epoch(0)
    assert [_rows(b) for b in loader] == first
    assert [
        _rows(b) for b in NpyBatchLoader(tiny_dataset, "train", 16, shuffle=True, seed=4)
    ] != first


def test_shuffled_ranks_use_only_full_blocks_and_stay_disjoint(tiny_dataset):
    for epoch in range(3):
        rows = []
        for r in range(2):
            loader = NpyBatchLoader(tiny_dataset, "train", 8, rank=r, world_size=2, shuffle=True)
            loader.set_epoch(epoch)
            batches = list(loader)
            assert len(batches) == 5 and all(b.labels.numel() == 8 for b in batches)
            rows.append(_all_rows(batches))
        assert not set(rows[0]) & set(rows[1]) and max(rows[0] + rows[1]) < 88  # 88..89: partial


def test_iter_from_resumes_the_same_sequence(tiny_dataset):
    loader = NpyBatchLoader(tiny_dataset, "train", 16, shuffle=True, seed=1)
    loader.set_epoch(2)
    full = [_rows(b) for b in loader]
    for k in (0, 1, 4, 5):
        assert [_rows(b) for b in loader.iter_from(k)] == full[k:]
    assert list(loader.iter_from(len(loader))) == []
    with pytest.raises(ValueError, match="outside"):
        loader.iter_from(len(loader) + 1)
    sharded = NpyBatchLoader(tiny_dataset, "train", 8, rank=1, world_size=2, shuffle=True)
    assert [_rows(b) for b in sharded.iter_from(3)] == [_rows(b) for b in sharded][3:]


def test_an_iterator_keeps_the_epoch_it_was_made_in(tiny_dataset):
    loader = NpyBatchLoader(tiny_dataset, "train", 16, shuffle=True, prefetch_batches=0)
    expected = [_rows(b) for b in loader]
    it = iter(loader)
    loader.set_epoch(1)  # e.g. the trainer moving on before this iterator is drained
    assert [_rows(b) for b in it] == expected


@pytest.mark.parametrize("in_memory", [True, False])
def test_hashing_max_rows_and_prefetch_give_identical_batches(tiny_dataset, in_memory):
    sizes = [5 + i for i in range(26)]
    kwargs = dict(num_embeddings_per_feature=sizes, max_rows=35)
    prefetched = list(
        NpyBatchLoader(tiny_dataset, "train", 10, in_memory=in_memory, prefetch_batches=3, **kwargs)
    )
    sync = list(
        NpyBatchLoader(
            tiny_dataset, "train", 10, in_memory=not in_memory, prefetch_batches=0, **kwargs
        )
    )
    assert _all_rows(prefetched) == list(range(35)) and len(prefetched) == 4
    sparse = _day_arrays(tiny_dataset, (0,), "sparse")
    for t in range(26):
        ids = torch.cat([b.sparse_features[f"cat_{t}"].values() for b in prefetched])
        np.testing.assert_array_equal(ids.numpy(), sparse[:35, t] % sizes[t])
    for a, b in zip(prefetched, sync, strict=True):
        _assert_same_batch(a, b)
    # tables at least as large as the id range: the ids are used as they are
    unhashed = next(
        iter(NpyBatchLoader(tiny_dataset, "train", 10, num_embeddings_per_feature=[970] * 26))
    )
    np.testing.assert_array_equal(
        unhashed.sparse_features["cat_0"].values().numpy(), sparse[:10, 0]
    )


def test_int64_ids_stay_int64(tmp_path):
    write_dataset(tmp_path, day_rows=(10, 10))
    for day in (0, 1):
        path = layout.day_file(tmp_path, day, "sparse")
        np.save(path, np.load(path).astype(np.int64) + 2**40)  # raw ids beyond int32
    layout.write_meta(tmp_path, dataclasses.replace(layout.read_meta(tmp_path), sparse_dtype="int64"))
    batch = next(iter(NpyBatchLoader(tmp_path, "train", 4, num_embeddings_per_feature=HASH)))
    values = batch.sparse_features.values()
    sparse = np.load(layout.day_file(tmp_path, 0, "sparse"))
    assert values.dtype == torch.int64
    np.testing.assert_array_equal(values.numpy(), (sparse[:4] % 97).T.reshape(-1))


def test_max_rows_spans_days_and_validates(tiny_dataset):
    assert _all_rows(NpyBatchLoader(tiny_dataset, "train", 16, max_rows=70)) == list(range(70))
    assert NpyBatchLoader(tiny_dataset, "train", 16, max_rows=10**9).num_rows == 90
    with pytest.raises(ValueError, match="max_rows"):
        NpyBatchLoader(tiny_dataset, "train", 16, max_rows=0)


@pytest.mark.parametrize("in_memory", [True, False])
def test_multi_hot_kjt(tmp_path, in_memory):
    sizes = (3, 1, 2) + (1,) * 23
    write_dataset(tmp_path, day_rows=(20, 10), multi_hot_sizes=sizes)
    loader = NpyBatchLoader(
        tmp_path, "train", 4, num_embeddings_per_feature=HASH, shuffle=False, in_memory=in_memory
    )
    batches = list(loader)
    assert len(batches) == 5
    multi = np.load(layout.day_file(tmp_path, 0, "sparse_multi_hot")) % 97
    kjt = batches[1].sparse_features  # rows 4..7
    assert kjt.stride() == 4 and kjt.values().numel() == 4 * sum(sizes)
    assert kjt.lengths().tolist() == [3] * 4 + [1] * 4 + [2] * 4 + [1] * 4 * 23
    assert kjt.offsets().tolist() == [0, *np.cumsum(kjt.lengths().tolist())]
    assert kjt.length_per_key()[:3] == [12, 4, 8]
    np.testing.assert_array_equal(kjt["cat_0"].values().numpy(), multi[4:8, 0:3].reshape(-1))
    np.testing.assert_array_equal(kjt["cat_1"].values().numpy(), multi[4:8, 3])
    np.testing.assert_array_equal(kjt["cat_2"].values().numpy(), multi[4:8, 4:6].reshape(-1))
    np.testing.assert_array_equal(kjt["cat_25"].values().numpy(), multi[4:8, -1])
    assert kjt.to_dict()["cat_2"].to_dense()[1].tolist() == multi[5, 4:6].tolist()  # per sample


def test_producer_errors_reach_the_consumer(tiny_dataset, monkeypatch):
    loader = NpyBatchLoader(tiny_dataset, "train", 16)
    calls = []

    def broken(block, epoch):
        calls.append(block)
        if len(calls) == 3:
            raise OSError("read failed")
        return block

    monkeypatch.setattr(loader, "_make_batch", broken)
    it = iter(loader)
    assert [next(it), next(it)] == [0, 1]
    with pytest.raises(OSError, match="read failed"):
        next(it)
    assert list(it) == []  # the iterator is finished after its error


def test_abandoned_and_closed_iterators_stop_their_threads(tiny_dataset):
    loader = NpyBatchLoader(tiny_dataset, "train", 4, prefetch_batches=1)
    before = threading.active_count()
    for _ in range(3):
        it = iter(loader)
        next(it)  # its producer is now blocked on the full queue
        assert threading.active_count() > before
    del it
    closed = iter(loader)
    next(closed)
    closed.close()
    assert list(closed) == []
    gc.collect()
    deadline = time.monotonic() + 3
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before


def test_by_default_in_memory_batches_are_views_like_torchrec(tiny_dataset):
    loader = NpyBatchLoader(tiny_dataset, "train", 16, in_memory=True, num_embeddings_per_feature=HASH)
    first = next(iter(loader))
    first.dense_features[0, 1] = 123.0  # documented: modifying a batch modifies the loaded split
    assert next(iter(loader)).dense_features[0, 1] == 123.0
    assert first.labels.dtype == torch.float32


def test_copy_batches_do_not_alias_the_in_memory_split(tiny_dataset):
    loader = NpyBatchLoader(
        tiny_dataset, "train", 16, in_memory=True, num_embeddings_per_feature=HASH, copy_batches=True
    )
    first = next(iter(loader))
    expected = first.dense_features.clone(), first.sparse_features.values().clone()
    first.dense_features.zero_()
    first.sparse_features.values().zero_()
    again = next(iter(loader))
    assert torch.equal(again.dense_features, expected[0])
    assert torch.equal(again.sparse_features.values(), expected[1])


def test_missing_or_inconsistent_files_are_clear_errors(tiny_dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a finished recsearch dataset"):
        NpyBatchLoader(tmp_path / "nothing", "train", 8)
    layout.day_file(tiny_dataset, 1, "sparse").unlink()
    with pytest.raises(FileNotFoundError, match="day_1_sparse.npy is missing"):
        NpyBatchLoader(tiny_dataset, "train", 8)
    assert len(NpyBatchLoader(tiny_dataset, "val", 8)) == 2  # val reads only the last day
    np.save(layout.day_file(tiny_dataset, 2, "dense"), np.zeros((29, 13), np.float32))
    with pytest.raises(ValueError, match=r"day_2_dense.npy: shape \(29, 13\) does not match"):
        NpyBatchLoader(tiny_dataset, "val", 8)
    with pytest.raises(ValueError, match="split must be one of"):
        NpyBatchLoader(tiny_dataset, "eval", 8)


def test_read_split_arrays(tiny_dataset):
    dense, sparse, labels = read_split_arrays(tiny_dataset, "test")
    assert dense.shape == (15, 13) and sparse.shape == (15, 26) and labels.shape == (15,)
    np.testing.assert_array_equal(sparse, np.load(layout.day_file(tiny_dataset, 2, "sparse"))[15:])
    dense, sparse, labels = read_split_arrays(tiny_dataset, "train", max_rows=60)
    assert dense[:, 0].tolist() == list(range(60)) and sparse.max() >= 97  # raw ids, not hashed
    np.testing.assert_array_equal(labels, _day_arrays(tiny_dataset, (0, 1), "labels")[:60, 0])


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")  # TorchRec's mmap mode
@pytest.mark.parametrize("mmap_mode", [False, True])
@pytest.mark.parametrize("batch_size", [5, 10, 16])  # 5 and 10 divide every split; 16 divides none
@pytest.mark.parametrize("stage", ["train", "val", "test"])
def test_matches_torchrec_in_memory_pipe(tmp_path, stage, batch_size, mmap_mode):
    write_dataset(tmp_path, day_rows=(50, 40, 30))
    days = [0, 1] if stage == "train" else [2]
    theirs = list(
        _torchrec_pipe(
            tmp_path,
            stage,
            batch_size,
            days,
            rank=0,
            world_size=1,
            mmap_mode=mmap_mode,
            hashes=list(HASH),
        )
    )
    ours = NpyBatchLoader(tmp_path, stage, batch_size, num_embeddings_per_feature=HASH)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):  # the last, partial batch included
        _assert_same_batch(a, b)
        if (
            not mmap_mode
        ):  # TorchRec's mmap mode widens hashed ids to int64; in memory it keeps int32
            assert (
                a.sparse_features.values().dtype == b.sparse_features.values().dtype == torch.int32
            )


@pytest.mark.parametrize(
    "batch_size", [15, 16]
)  # 90 train rows: 3 rounds of 2 x 15 exactly; 16 leaves 26
def test_matches_torchrec_on_two_ranks_except_the_partial_round(tmp_path, batch_size):
    write_dataset(tmp_path, day_rows=(50, 40, 30))
    for rank in range(2):
        theirs = list(
            _torchrec_pipe(
                tmp_path, "train", batch_size, [0, 1], rank=rank, world_size=2, hashes=list(HASH)
            )
        )
        ours = list(
            NpyBatchLoader(
                tmp_path,
                "train",
                batch_size,
                rank=rank,
                world_size=2,
                num_embeddings_per_feature=HASH,
            )
        )
        for a, b in zip(ours, theirs[: len(ours)], strict=True):
            _assert_same_batch(a, b)
        if batch_size == 15:
            assert len(ours) == len(theirs) == 3
        else:  # TorchRec splits the last 26 rows into one 13-row batch per rank; we drop them
            assert len(ours) == 2 and [b.labels.numel() for b in theirs[2:]] == [13]


def test_torchrec_preprocessed_directory_without_meta(tmp_path):
    write_dataset(tmp_path, day_rows=(30, 21))
    (tmp_path / layout.META_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="meta.json"):
        NpyBatchLoader(tmp_path, "train", 8)
    # infer_meta records the table sizes asked for, not the ids' range: the ids are hashed anyway
    meta = layout.infer_meta(tmp_path, HASH)
    ours = NpyBatchLoader(tmp_path, "val", 4, meta=meta)
    theirs = _torchrec_pipe(tmp_path, "val", 4, [1], rank=0, world_size=1, hashes=list(HASH))
    for a, b in zip(ours, theirs, strict=True):
        _assert_same_batch(a, b)


@pytest.mark.parametrize("in_memory", [True, False])
def test_pin_memory(tiny_dataset, in_memory):
    kwargs = dict(num_embeddings_per_feature=HASH, in_memory=in_memory, shuffle=True)
    pinned = NpyBatchLoader(tiny_dataset, "train", 16, pin_memory=True, **kwargs)
    assert pinned.pin_memory == torch.cuda.is_available()  # without an accelerator: ignored
    plain = NpyBatchLoader(tiny_dataset, "train", 16, prefetch_batches=0, **kwargs)
    for a, b in zip(pinned, plain, strict=True):
        _assert_same_batch(a, b)
        if pinned.pin_memory:
            k = a.sparse_features
            tensors = (a.dense_features, a.labels, k.values(), k.lengths(), k.offsets())
            assert all(t.is_pinned() for t in tensors)
            on_device = a.to(torch.device("cuda"), non_blocking=True)
            _assert_same_batch(on_device.to(torch.device("cpu")), b)


def test_close_returns_only_after_the_producer_thread_has_exited(tiny_dataset):
    """close() joins: no prefetch thread may still be inside a torch op when the caller times
    something next or the interpreter exits (a daemon thread there aborted `recsearch train`)."""
    loader = NpyBatchLoader(tiny_dataset, "train", 4, prefetch_batches=2)
    it = iter(loader)
    next(it)
    producers = [t for t in threading.enumerate() if t.name == "recsearch-prefetch"]
    assert producers and all(t.is_alive() for t in producers)
    it.close()
    assert not any(t.is_alive() for t in producers)


@pytest.mark.parametrize("in_memory", [True, False])
@pytest.mark.parametrize(("split", "batch_size", "world_size"), [("train", 8, 2), ("train", 16, 3), ("val", 8, 2), ("val", 64, 2)])
def test_pad_last_round_gives_every_row_once_in_full_batches(tiny_dataset, in_memory, split, batch_size, world_size):
    """Evaluation's rule: every rank yields as many full batches; their real rows (real_rows) are
    each row of the split exactly once; the padding is copies of the split's first row."""
    split_rows = {"train": 90, "val": 15}[split]
    first_row = {"train": 0, "val": 90}[split]
    loaders = [
        NpyBatchLoader(tiny_dataset, split, batch_size, rank=r, world_size=world_size, in_memory=in_memory,
                       num_embeddings_per_feature=HASH, pad_last_round=True)
        for r in range(world_size)
    ]
    rounds = -(-(-(-split_rows // batch_size)) // world_size)  # ceil(ceil(rows / batch) / ranks)
    assert [len(loader) for loader in loaders] == [rounds] * world_size
    real, padding = [], []
    for loader in loaders:
        for i, batch in enumerate(loader):
            assert batch.labels.numel() == batch_size and batch.sparse_features.stride() == batch_size
            rows = _rows(batch)
            real += rows[: loader.real_rows(i)]
            padding += rows[loader.real_rows(i):]
    assert sorted(real) == list(range(first_row, first_row + split_rows))
    assert len(padding) == rounds * world_size * batch_size - split_rows and set(padding) <= {first_row}
    # the loader without padding drops rows on several ranks (the training rule)
    plain = [NpyBatchLoader(tiny_dataset, split, batch_size, rank=r, world_size=world_size) for r in range(world_size)]
    assert sum(len(_all_rows(loader)) for loader in plain) < split_rows


def test_pad_last_round_on_one_rank_is_the_plain_order(tiny_dataset):
    padded = NpyBatchLoader(tiny_dataset, "train", 16, pad_last_round=True)
    assert [_rows(b) for b in padded] == [_rows(b) for b in NpyBatchLoader(tiny_dataset, "train", 16)]
    assert [padded.real_rows(i) for i in range(len(padded))] == [16] * 5 + [10]
    with pytest.raises(IndexError, match="local batch 6 outside 0..5"):
        padded.real_rows(6)
    with pytest.raises(ValueError, match="exclude each other"):
        NpyBatchLoader(tiny_dataset, "train", 16, pad_last_round=True, drop_last=True)


def test_shuffled_padded_rounds_keep_every_row_once(tiny_dataset):
    rows = []
    for r in range(2):
        loader = NpyBatchLoader(tiny_dataset, "train", 16, rank=r, world_size=2, shuffle=True, seed=5,
                                pad_last_round=True)
        rows += [row for i, b in enumerate(loader) for row in _rows(b)[: loader.real_rows(i)]]
    assert sorted(rows) == list(range(90))


@pytest.mark.parametrize(("kind", "wrong"), [("dense", np.float64), ("labels", np.float32), ("sparse", np.int64)])
def test_a_day_file_of_another_dtype_than_meta_is_refused(tiny_dataset, kind, wrong):
    path = layout.day_file(tiny_dataset, 2, kind)
    np.save(path, np.load(path).astype(wrong))
    expected = {"dense": "float32", "labels": "int32", "sparse": "int32"}[kind]
    with pytest.raises(ValueError, match=rf"{path.name}: dtype {np.dtype(wrong).name} does not match meta.json "
                                         rf"\(expected {expected}\)"):
        NpyBatchLoader(tiny_dataset, "val", 8)
