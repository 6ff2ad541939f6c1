"""SplitCache: a loader given the cache reuses a split an earlier loader read (same dataset, split
and hashing, no more rows), with the same batches a fresh read gives; anything else reads anew."""

import numpy as np
import torch

from recsearch.data import layout
from recsearch.data.loader import NpyBatchLoader
from recsearch.data.split_cache import SplitCache
from tests.conftest import write_dataset

HASH = (97,) * 26


def _loader(root, split="train", cache=None, **kwargs):
    settings = {"num_embeddings_per_feature": HASH, "prefetch_batches": 0, "in_memory": True, **kwargs}
    return NpyBatchLoader(root, split, 16, split_cache=cache, **settings)


def _batches(loader, epoch=0):
    loader.set_epoch(epoch)
    return [(b.dense_features.clone(), b.sparse_features.values().clone(), b.labels.clone()) for b in loader]


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(x, y, strict=True))


def test_a_second_loader_reuses_the_split_and_gives_the_same_batches(tiny_dataset):
    cache = SplitCache()
    first = _loader(tiny_dataset, cache=cache, shuffle=True, seed=3)
    second = _loader(tiny_dataset, cache=cache, shuffle=True, seed=3)
    assert (cache.misses, cache.hits, len(cache)) == (1, 1, 1)
    assert np.shares_memory(first.resident_arrays()[1], second.resident_arrays()[1])  # not read again
    fresh = _loader(tiny_dataset, shuffle=True, seed=3)
    for epoch in (0, 1):
        _same(_batches(second, epoch), _batches(fresh, epoch))
    _same(_batches(_loader(tiny_dataset, "val", cache=cache)), _batches(_loader(tiny_dataset, "val")))
    for ours, theirs in zip(second.resident_arrays(), fresh.resident_arrays(), strict=True):
        assert np.array_equal(ours, theirs) and ours.dtype == theirs.dtype
    assert second.resident_arrays()[1].max() < 97  # hashed once, when it was read


def test_fewer_rows_are_a_prefix_of_the_cached_split_more_rows_are_read_again(tiny_dataset):
    cache = SplitCache()
    _loader(tiny_dataset, cache=cache, max_rows=60)
    small = _loader(tiny_dataset, cache=cache, max_rows=30, shuffle=True)
    assert (cache.hits, small.num_rows) == (1, 30)
    _same(_batches(small), _batches(_loader(tiny_dataset, max_rows=30, shuffle=True)))
    big = _loader(tiny_dataset, cache=cache)  # all 90 train rows: a miss, and now the entry
    assert (cache.misses, len(cache), big.num_rows) == (2, 1, 90)
    _loader(tiny_dataset, cache=cache, max_rows=60)
    assert cache.hits == 2


def test_other_hashing_another_dataset_or_a_replaced_one_are_not_served_from_the_cache(tmp_path):
    root = tmp_path / "data"
    write_dataset(root)
    cache = SplitCache()
    _loader(root, cache=cache)
    other_hash = _loader(root, cache=cache, num_embeddings_per_feature=(31,) * 26)
    assert cache.hits == 0 and other_hash.resident_arrays()[1].max() < 31
    write_dataset(tmp_path / "other", seed=1)
    _loader(tmp_path / "other", cache=cache)
    assert cache.hits == 0 and len(cache) == 3
    # preprocess replaces a dataset whole (a new meta.json): the old entry is not used
    write_dataset(root, seed=2)
    meta = layout.read_meta(root)
    (root / layout.META_FILE).unlink()
    layout.write_meta(root, meta)
    again = _loader(root, cache=cache)
    assert cache.hits == 0
    _same(_batches(again), _batches(_loader(root)))


def test_memory_mapped_loaders_bypass_the_cache_and_the_cache_is_bounded(tiny_dataset):
    cache = SplitCache()
    _loader(tiny_dataset, cache=cache, in_memory=False)
    assert (cache.hits, cache.misses, len(cache)) == (0, 0, 0)
    one = _loader(tiny_dataset, "train", cache=cache).resident_arrays()
    split_bytes = sum(a.nbytes for a in one)
    small = SplitCache(max_bytes=split_bytes + 1)
    _loader(tiny_dataset, "train", cache=small)
    _loader(tiny_dataset, "val", cache=small)  # the least recently used entry goes
    assert len(small) == 1 and small.nbytes <= small.max_bytes
    _loader(tiny_dataset, "val", cache=small)
    assert small.hits == 1
    tiny = SplitCache(max_bytes=1)
    _loader(tiny_dataset, cache=tiny)
    assert len(tiny) == 0  # larger than the cache: not kept
