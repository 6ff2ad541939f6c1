"""Batches for training: whole-batch slices of memory-mapped day files -> torchrec Batch.

No per-sample Python: a batch is one contiguous row range of the split (possibly straddling two day
files), copied out of the memory maps with a few numpy slices, hashed with one vectorized modulo
and wrapped in a KeyedJaggedTensor whose lengths/offsets are built once per batch size.

Sharding across ranks follows TorchRec's InMemoryBinaryCriteoIterDataPipe: global batch b goes to
rank b % world_size. Every rank must yield the same number of batches (DMP's collectives would hang
otherwise), so with several ranks only full rounds of full batches are used.

Shuffling is "in blocks": the order of batch-sized blocks is permuted and the rows inside a block
are permuted, deterministically from (seed, epoch); each batch is still a single slice + gather.

With `in_memory` (default: when the split takes under a quarter of the machine's available memory)
the split is read into RAM once and hashed once, as TorchRec's in-memory pipe does; otherwise
batches are sliced from the memory maps and hashed per batch. Ids are hashed only when the
requested table sizes are smaller than the dataset's id ranges.

A background thread builds `prefetch_batches` batches ahead (numpy copies release the GIL, so
this overlaps with the training step), optionally into pinned memory for asynchronous H2D copies.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsearch.data import layout
from recsearch.types import NUM_SPARSE_FEATURES

FEATURE_NAMES = tuple(f"cat_{i}" for i in range(NUM_SPARSE_FEATURES))  # TorchRec's default keys


@dataclass(frozen=True)
class _DayArrays:
    first_row: int  # position of this slice's first row in the split's row space
    dense: np.ndarray
    sparse: np.ndarray  # [rows, 26] or multi-hot [rows, sum(sizes)]
    labels: np.ndarray


class NpyBatchLoader:
    """Iterable of torchrec Batches over one split of a dataset directory (see layout.py)."""

    def __init__(
        self,
        root: Path | str,
        split: str,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        num_embeddings_per_feature: Sequence[int] | None = None,
        max_rows: int | None = None,
        prefetch_batches: int = 2,
        pin_memory: bool = False,
        in_memory: bool | None = None,
        meta: layout.DatasetMeta | None = None,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.root = Path(root)
        self.meta = meta if meta is not None else layout.read_meta(self.root)
        self.split = split
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.seed = seed
        self.prefetch_batches = prefetch_batches
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.epoch = 0
        sizes = num_embeddings_per_feature or self.meta.num_embeddings_per_feature
        if len(sizes) != NUM_SPARSE_FEATURES or min(sizes) <= 0:
            raise ValueError(f"num_embeddings_per_feature needs {NUM_SPARSE_FEATURES} positive sizes")
        self.hotness = self.meta.multi_hot_sizes or (1,) * NUM_SPARSE_FEATURES
        # One modulus per sparse column (a multi-hot feature repeats its table size); None when
        # every stored id is already inside its table.
        needs_hash = any(s < m for s, m in zip(sizes, self.meta.num_embeddings_per_feature))
        self._hash_sizes = np.repeat(np.asarray(sizes, np.int64), self.hotness) if needs_hash else None
        self._days = _open_split(self.root, self.meta, split, max_rows)
        self.num_rows = sum(len(d.labels) for d in self._days)
        if in_memory is None:
            in_memory = _split_bytes(self._days) < _available_memory_bytes() // 4
        if in_memory and self.num_rows:
            dense, sparse, labels = _slice_rows(self._days, 0, self.num_rows)
            if self._hash_sizes is not None:
                sparse = (sparse % self._hash_sizes).astype(sparse.dtype)
                self._hash_sizes = None
            self._days = [_DayArrays(0, dense, sparse, labels)]
        self.in_memory = bool(in_memory)
        if self.num_rows == 0:
            raise ValueError(f"{self.root}: split {split!r} has no rows")
        full_batches = self.num_rows // batch_size
        if world_size > 1:
            self._global_batches = full_batches // world_size * world_size
        else:
            self._global_batches = full_batches if drop_last else -(-self.num_rows // batch_size)
        self._kjt_shape_cache: dict[int, tuple[torch.Tensor, list[int]]] = {}

    def __len__(self) -> int:
        return self._global_batches // self.world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_from(0)

    def iter_from(self, start_batch: int) -> Iterator[Batch]:
        """This rank's batches of the current epoch, starting at its local batch `start_batch`."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} outside 0..{len(self)}")
        block_order = self._block_order()
        local = range(start_batch, len(self))
        blocks = (int(block_order[self.rank + i * self.world_size]) for i in local)
        batches = (self._make_batch(block) for block in blocks)
        if self.prefetch_batches <= 0:
            return batches
        return _Prefetcher(batches, self.prefetch_batches)

    # ---- building one batch ----------------------------------------------------------------------
    def _block_order(self) -> np.ndarray:
        blocks = -(-self.num_rows // self.batch_size)
        if not self.shuffle:
            return np.arange(blocks)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(blocks)
        if self._global_batches < blocks:
            # Dropped batches must be the partial block: keep it last so every used block is full.
            partial = blocks - 1 if self.num_rows % self.batch_size else -1
            order = np.concatenate([order[order != partial], order[order == partial]])
        return order

    def _make_batch(self, block: int) -> Batch:
        start = block * self.batch_size
        stop = min(start + self.batch_size, self.num_rows)
        if self.shuffle:
            rows = start + np.random.default_rng([self.seed, self.epoch, block]).permutation(stop - start)
            dense, sparse, labels = _gather_rows(self._days, rows)
        else:
            dense, sparse, labels = _slice_rows(self._days, start, stop, copy=not self.in_memory)
        if self._hash_sizes is not None:
            sparse = sparse % self._hash_sizes
        batch = Batch(
            dense_features=torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32)),
            sparse_features=self._kjt(sparse),
            labels=torch.from_numpy(labels.reshape(-1).astype(np.float32)),
        )
        return batch.pin_memory() if self.pin_memory else batch

    def _kjt(self, sparse: np.ndarray) -> KeyedJaggedTensor:
        rows = sparse.shape[0]
        if self.meta.multi_hot_sizes is None:
            # key-major (all rows of cat_0, then cat_1, ...): one copy does transpose and cast
            values = np.ascontiguousarray(sparse.T, dtype=np.int64).reshape(-1)
        else:
            bounds = np.cumsum((0, *self.hotness))
            values = np.concatenate(
                [sparse[:, bounds[t] : bounds[t + 1]].reshape(-1) for t in range(NUM_SPARSE_FEATURES)]
            ).astype(np.int64, copy=False)
        if rows not in self._kjt_shape_cache:
            lengths = torch.from_numpy(np.repeat(np.asarray(self.hotness, np.int32), rows))
            self._kjt_shape_cache[rows] = (lengths, [h * rows for h in self.hotness])
        lengths, length_per_key = self._kjt_shape_cache[rows]
        return KeyedJaggedTensor(
            keys=list(FEATURE_NAMES),
            values=torch.from_numpy(values),
            lengths=lengths,
            stride=rows,
            length_per_key=length_per_key,
        )


def read_split_arrays(
    root: Path | str, split: str, max_rows: int | None = None, meta: layout.DatasetMeta | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The whole split as (dense [N,13], sparse [N,26 or sum(hotness)], labels [N]) numpy arrays."""
    meta = meta if meta is not None else layout.read_meta(root)
    days = _open_split(Path(root), meta, split, max_rows)
    total = sum(len(d.labels) for d in days)
    dense, sparse, labels = _slice_rows(days, 0, total)
    return dense, sparse, labels.reshape(-1)


def _open_split(
    root: Path, meta: layout.DatasetMeta, split: str, max_rows: int | None
) -> list[_DayArrays]:
    sparse_kind = "sparse" if meta.multi_hot_sizes is None else "sparse_multi_hot"
    days, first = [], 0
    for day, start, stop in layout.split_ranges(meta, split):
        if max_rows is not None:
            stop = min(stop, start + max_rows - first)
        if stop <= start:
            break
        arrays = {}
        for kind in ("dense", sparse_kind, "labels"):
            path = layout.day_file(root, day, kind)
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing: the dataset in {root} is incomplete")
            arrays[kind] = np.load(path, mmap_mode="r")[start:stop]
        days.append(_DayArrays(first, arrays["dense"], arrays[sparse_kind], arrays["labels"]))
        first += stop - start
    return days


def _split_bytes(days: list[_DayArrays]) -> int:
    return sum(d.dense.nbytes + d.sparse.nbytes + d.labels.nbytes for d in days)


def _available_memory_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30  # unknown platform: assume a small machine


def _gather_rows(days: list[_DayArrays], rows: np.ndarray) -> tuple[np.ndarray, ...]:
    """Rows at sorted-or-not split positions `rows` (all inside one block), one gather per array."""
    lo, hi = int(rows.min()), int(rows.max()) + 1
    dense, sparse, labels = _slice_rows(days, lo, hi, copy=False)
    local = rows - lo
    return dense[local], sparse[local], labels[local]


def _slice_rows(
    days: list[_DayArrays], start: int, stop: int, copy: bool = True
) -> tuple[np.ndarray, ...]:
    """Rows [start, stop) of the split; a copy out of the memory maps unless copy=False and the
    rows lie in one day (then views)."""
    pieces = []
    for day in days:
        lo, hi = max(start, day.first_row), min(stop, day.first_row + len(day.labels))
        if lo < hi:
            rows = slice(lo - day.first_row, hi - day.first_row)
            pieces.append((day.dense[rows], day.sparse[rows], day.labels[rows]))
    if len(pieces) == 1:
        return tuple(np.array(a) for a in pieces[0]) if copy else pieces[0]
    return tuple(np.concatenate(parts) for parts in zip(*pieces))


class _Prefetcher(Iterator[Batch]):
    """Runs a batch generator in a daemon thread, `depth` batches ahead of the consumer."""

    _DONE = object()

    def __init__(self, batches: Iterator[Batch], depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(batches,), daemon=True)
        self._thread.start()
        self._finished = False

    def _produce(self, batches: Iterator[Batch]) -> None:
        try:
            for batch in batches:
                if not self._put(batch):
                    return
            self._put(self._DONE)
        except BaseException as err:  # hand any failure to the consumer
            self._put(err)

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __next__(self) -> Batch:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is self._DONE:
            self._finished = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._finished = True

    def __del__(self) -> None:
        self._stop.set()
