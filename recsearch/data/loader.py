"""Batches for training: whole-batch slices of memory-mapped day files -> torchrec Batch.

No per-sample Python: a batch is one contiguous row range of the split (possibly straddling two day
files), copied out of the memory maps with a few numpy slices, and turned into a KeyedJaggedTensor
with one fused transpose (+ modulo, when ids are hashed) per batch. Lengths and offsets are
the same for every batch of a given size, so they are built once.

Sharding across ranks follows TorchRec's InMemoryBinaryCriteoIterDataPipe: global batch b goes to
rank b % world_size. Every rank must yield the same number of batches (DMP's collectives would hang
otherwise), so with several ranks only full rounds of full batches are used for training; TorchRec
instead splits the last partial round into smaller, nearly equal batches (sizes may differ by one
row). An evaluation must see every row exactly once: with `pad_last_round` the last round is
completed instead, every rank's batch padded to the full batch size with copies of the split's
first row (so the all-to-all shapes stay equal across ranks), and `real_rows(i)` says how many
leading rows of local batch i are the split's own; the metrics take only those.

Shuffling is "in blocks": the order of batch-sized blocks is permuted and the rows inside a block
are permuted, deterministically from (seed, epoch); each batch is still a single slice + gather.
The partial block at the end of the split, if any, stays last, so the batches that are dropped
(drop_last, or several ranks) are always the same tail rows, as in TorchRec.

With `in_memory` (default: when every rank of this host can hold the split in a quarter of the
available memory) the split is read into RAM once and hashed once, as TorchRec's in-memory pipe
does; otherwise batches are sliced from the memory maps (shared between ranks through the page
cache) and hashed per batch. Ids are hashed only when they can exceed the requested table sizes.

A process that builds many loaders over the same data (a search's pool worker, trial after
trial) can pass a `SplitCache`: the loaded, hashed split is then kept and the next in-memory
loader of the same split, table sizes and at most as many rows takes views of it instead of
reading the files again.

A background thread builds `prefetch_batches` batches ahead (numpy copies release the GIL, so
this overlaps with the training step), optionally straight into pinned memory so the trainer's
host-to-device copies can be asynchronous.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsearch.data import layout
from recsearch.data.dataset import ids_within_sizes
from recsearch.data.split_cache import SplitCache
from recsearch.data.split_cache import available_memory_bytes as _available_memory_bytes
from recsearch.tables import feature_name
from recsearch.types import NUM_DENSE_FEATURES, NUM_SPARSE_FEATURES

FEATURE_NAMES = tuple(feature_name(i) for i in range(NUM_SPARSE_FEATURES))  # TorchRec's default keys
_INDEX_PER_KEY = {name: i for i, name in enumerate(FEATURE_NAMES)}


@dataclass(frozen=True)
class _DayArrays:
    first_row: int  # position of this slice's first row in the split's row space
    dense: np.ndarray
    sparse: np.ndarray  # [rows, 26] or multi-hot [rows, sum(sizes)]
    labels: np.ndarray


@dataclass(frozen=True)
class _KjtShape:
    """The parts of a KeyedJaggedTensor that depend only on the batch's row count."""

    lengths: torch.Tensor  # int32 [26 * rows]: key t's rows each have hotness[t] ids
    offsets: torch.Tensor  # int32, cumulative lengths with a leading 0
    length_per_key: list[int]
    offset_per_key: list[int]


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
        copy_batches: bool = False,
        meta: layout.DatasetMeta | None = None,
        split_cache: SplitCache | None = None,
        pad_last_round: bool = False,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if max_rows is not None and max_rows <= 0:
            raise ValueError(f"max_rows must be positive, got {max_rows}")
        if pad_last_round and drop_last:
            raise ValueError("pad_last_round (every row once) and drop_last exclude each other")
        self.root = Path(root)
        self.meta = meta if meta is not None else layout.read_meta(self.root)
        self.split = split
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.seed = seed
        self.prefetch_batches = max(0, prefetch_batches)
        # Pinned memory only exists with an accelerator; on a CPU-only machine it is a no-op.
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.epoch = 0
        sizes = tuple(
            int(s)
            for s in (
                self.meta.num_embeddings_per_feature
                if num_embeddings_per_feature is None
                else num_embeddings_per_feature
            )
        )
        if len(sizes) != NUM_SPARSE_FEATURES or min(sizes) <= 0:
            raise ValueError(
                f"num_embeddings_per_feature needs {NUM_SPARSE_FEATURES} positive sizes"
            )
        self.num_embeddings_per_feature = sizes
        self.hotness = self.meta.multi_hot_sizes or (1,) * NUM_SPARSE_FEATURES
        # A description of TorchRec's files with sizes from the config bounds no id (raw 32-bit
        # Criteo hashes): hashed always; sizes derived from the data bound them (dataset doc).
        needs_hash = not ids_within_sizes(self.meta) or any(
            s < m for s, m in zip(sizes, self.meta.num_embeddings_per_feature, strict=True)
        )
        # One modulus per stored sparse column (a multi-hot feature repeats its table size).
        hash_per_column = np.repeat(np.asarray(sizes, np.int64), self.hotness)

        days = _open_split(self.root, self.meta, split, max_rows)
        self.num_rows = sum(len(d.labels) for d in days)
        if self.num_rows == 0:
            raise ValueError(f"{self.root}: split {split!r} has no rows")
        if in_memory is None:
            # Each rank of this host holds its own copy (torchrun sets LOCAL_WORLD_SIZE).
            ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
            in_memory = _split_bytes(days) * ranks_here < _available_memory_bytes() // 4
        self.in_memory = bool(in_memory)
        if self.in_memory:
            key = None
            if split_cache is not None:
                key = split_cache.key(self.root, split, tuple(hash_per_column.tolist()) if needs_hash else None)
            cached = split_cache.get(key, self.num_rows) if key is not None else None
            if cached is not None:
                dense, sparse, labels = cached
            else:
                dense, sparse, labels = _slice_rows(days, 0, self.num_rows)  # fresh, writable copies
                if needs_hash:
                    # In place: a full-split int64 temporary would double the peak memory.
                    np.remainder(sparse, hash_per_column, out=sparse, casting="same_kind")
                # Labels as float32 once (BCEWithLogits takes floats), not per batch.
                labels = labels.astype(np.float32)
                if key is not None:
                    split_cache.put(key, (dense, sparse, labels))
            needs_hash = False
            days = [_DayArrays(0, dense, sparse, labels)]
        self._days = days
        # In memory, unshuffled batches hand out views of the loaded split's dense features and
        # labels, as TorchRec's in-memory pipe does: no copy per batch, but a consumer must not
        # modify a batch in place. copy_batches=True gives every batch its own memory.
        self._views = self.in_memory and not copy_batches and not self.pin_memory
        self._hash_per_column = hash_per_column if needs_hash else None
        # KJT values keep the stored width, as TorchRec's in-memory pipe does: int32 files give
        # int32 ids (half the bytes to transpose and copy to the device), which EmbeddingBag and
        # FBGEMM's TBE take with the int32 offsets. Hashed ids are below the table size, so they
        # still fit.
        self.values_dtype = torch.int32 if days[0].sparse.dtype == np.int32 else torch.int64

        full_batches = self.num_rows // batch_size
        all_batches = -(-self.num_rows // batch_size)
        # Several ranks, every row: the last round is completed with padded (and empty) batches.
        self._pad = pad_last_round and world_size > 1
        if self._pad:
            self._global_batches = -(-all_batches // world_size) * world_size
        elif world_size > 1:
            self._global_batches = full_batches // world_size * world_size
        else:
            self._global_batches = full_batches if drop_last else all_batches
        # Only two batch sizes ever occur: full batches and the split's partial tail (padded to a
        # full batch with pad_last_round on several ranks).
        tail_rows = 0 if self._pad else self.num_rows % batch_size
        self._kjt_shapes = {rows: self._kjt_shape(rows) for rows in {batch_size, tail_rows} if rows}

    def __len__(self) -> int:
        return self._global_batches // self.world_size

    def real_rows(self, local_batch: int, rank: int | None = None) -> int:
        """How many leading rows of this rank's (or `rank`'s) local batch `local_batch` are rows of
        the split; the rest is padding (pad_last_round). The same in every epoch: the only short
        block stays last in any shuffle, and the padding batches come after it."""
        if not 0 <= local_batch < len(self):
            raise IndexError(f"local batch {local_batch} outside 0..{len(self) - 1}")
        first_row = (local_batch * self.world_size + (self.rank if rank is None else rank)) * self.batch_size
        return max(0, min(self.batch_size, self.num_rows - first_row))

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle order of the iterators made from now on."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_from(0)

    def iter_from(self, start_batch: int) -> Iterator[Batch]:
        """This rank's batches of the current epoch, starting at its local batch `start_batch`.

        With prefetching, the iterator owns a thread; it stops when the iterator is exhausted,
        closed (`close()`), or garbage collected.
        """
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} outside 0..{len(self)}")
        epoch = self.epoch  # fixed now: a later set_epoch must not change this iterator's order
        block_order = self._block_order(epoch)
        local = range(start_batch, len(self))
        if self._pad:  # padding batches are blocks past the split's end: all of their rows are padding
            block_order = np.append(block_order, np.arange(len(block_order), self._global_batches))
        blocks = [int(block_order[self.rank + i * self.world_size]) for i in local]
        batches = (self._make_batch(block, epoch) for block in blocks)
        if self.prefetch_batches == 0:
            return batches
        return _Prefetcher(batches, self.prefetch_batches)

    # ---- the split as whole arrays (the single-device engine's data on the device) ------------------
    def resident_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The loaded split as the batches draw from it: dense float32 [N, 13], ids [N, columns]
        already hashed to the table sizes (stored width), labels float32 [N]. Only in memory."""
        if not self.in_memory:
            raise ValueError("resident_arrays needs an in-memory loader (in_memory=True)")
        split = self._days[0]
        return split.dense, split.sparse, split.labels.reshape(-1)

    def epoch_rows(self, epoch: int) -> np.ndarray:
        """Row indices (int64) of this rank's batches of `epoch`, in order, concatenated: batch b
        of the epoch is rows [b * batch_size, (b + 1) * batch_size) of the result (the last one
        may be short). The same rows, in the same order, as iterating the loader."""
        if self._pad:
            raise ValueError("epoch_rows describes unpadded batches; this loader pads its last round")
        block_order = self._block_order(epoch)
        pieces = []
        for i in range(len(self)):
            block = int(block_order[self.rank + i * self.world_size])
            start = block * self.batch_size
            stop = min(start + self.batch_size, self.num_rows)
            if self.shuffle:
                pieces.append(start + self._row_order(block, epoch, stop - start))
            else:
                pieces.append(np.arange(start, stop, dtype=np.int64))
        return np.concatenate(pieces).astype(np.int64, copy=False) if pieces else np.zeros(0, np.int64)

    def _row_order(self, block: int, epoch: int, rows: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, block]).permutation(rows)

    # ---- building one batch ----------------------------------------------------------------------
    def _block_order(self, epoch: int) -> np.ndarray:
        blocks = -(-self.num_rows // self.batch_size)
        if not self.shuffle:
            return np.arange(blocks)
        if self.num_rows % self.batch_size == 0:
            return np.random.default_rng([self.seed, epoch]).permutation(blocks)
        # The partial block stays last: only it may be dropped, and only it is short.
        full = np.random.default_rng([self.seed, epoch]).permutation(blocks - 1)
        return np.append(full, blocks - 1)

    def _make_batch(self, block: int, epoch: int) -> Batch:
        start = block * self.batch_size
        stop = min(start + self.batch_size, self.num_rows)
        if self._pad and stop - start < self.batch_size:
            dense, sparse, labels = self._padded_rows(block, start, stop, epoch)
        elif self._views and not self.shuffle:
            split = self._days[0]
            return Batch(
                dense_features=torch.from_numpy(split.dense[start:stop]),
                sparse_features=self._kjt(split.sparse[start:stop]),
                labels=torch.from_numpy(split.labels[start:stop].reshape(-1)),
            )
        else:
            dense, sparse, labels = self._block_rows(block, start, stop, epoch)
        return Batch(
            dense_features=self._to_tensor(dense, torch.float32),
            sparse_features=self._kjt(sparse),
            labels=self._to_tensor(labels.reshape(-1), torch.float32),  # BCEWithLogits takes floats
        )

    def _block_rows(self, block: int, start: int, stop: int, epoch: int) -> tuple[np.ndarray, ...]:
        """Rows [start, stop) of block `block`, in this epoch's order: a gather when shuffled, else
        read-only views when the rows lie in one array (_kjt and _to_tensor copy them)."""
        if self.shuffle:
            return _gather_rows(self._days, start, stop, self._row_order(block, epoch, stop - start))
        return _slice_rows(self._days, start, stop, copy=False)

    def _padded_rows(self, block: int, start: int, stop: int, epoch: int) -> tuple[np.ndarray, ...]:
        """The block's rows (none for a padding batch, which starts past the split's end), then
        copies of the split's first row up to a full batch: fresh arrays."""
        pad = self.batch_size - max(0, stop - start)
        padding = [np.repeat(a, pad, axis=0) for a in _slice_rows(self._days, 0, 1, copy=False)]
        if stop <= start:
            return tuple(padding)
        real = self._block_rows(block, start, stop, epoch)
        return tuple(np.concatenate([r, p]) for r, p in zip(real, padding, strict=True))

    def _empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, pin_memory=self.pin_memory)

    def _to_tensor(self, array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        """A tensor that owns its memory. Read-only arrays are views of the data (memory map or
        in-memory split) and are copied; a writable array is already this batch's own copy."""
        if not self.pin_memory and array.flags.writeable and array.flags.c_contiguous:
            tensor = torch.from_numpy(array)
            if tensor.dtype == dtype:
                return tensor
        out = self._empty(array.shape, dtype)
        np.copyto(out.numpy(), array, casting="unsafe")
        return out

    def _kjt(self, sparse: np.ndarray) -> KeyedJaggedTensor:
        rows = sparse.shape[0]
        shape = self._kjt_shapes[rows]
        values = self._empty((shape.offset_per_key[-1],), self.values_dtype)
        out = values.numpy()
        hashes = self._hash_per_column
        # Key-major values (all rows of cat_0, then cat_1, ...), each key row-major over its ids:
        # one pass that transposes, casts and hashes at once.
        if self.meta.multi_hot_sizes is None:
            _copy_ids(sparse.T, None if hashes is None else hashes[:, None], out.reshape(-1, rows))
        else:
            column = 0
            for t, ids_per_row in enumerate(self.hotness):
                _copy_ids(
                    sparse[:, column : column + ids_per_row],
                    None if hashes is None else hashes[column],
                    out[shape.offset_per_key[t] : shape.offset_per_key[t + 1]].reshape(rows, -1),
                )
                column += ids_per_row
        return KeyedJaggedTensor(
            keys=list(FEATURE_NAMES),
            values=values,
            lengths=shape.lengths,
            offsets=shape.offsets,
            stride=rows,
            length_per_key=shape.length_per_key,
            offset_per_key=shape.offset_per_key,
            index_per_key=_INDEX_PER_KEY,
        )

    def _kjt_shape(self, rows: int) -> _KjtShape:
        lengths = np.repeat(np.asarray(self.hotness, np.int32), rows)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        length_per_key = [h * rows for h in self.hotness]
        shape = _KjtShape(
            lengths=torch.from_numpy(lengths),
            offsets=torch.from_numpy(offsets),
            length_per_key=length_per_key,
            offset_per_key=[0, *np.cumsum(length_per_key).tolist()],
        )
        if self.pin_memory:  # pinned once here, instead of per batch by Batch.pin_memory()
            shape = dataclasses.replace(
                shape, lengths=shape.lengths.pin_memory(), offsets=shape.offsets.pin_memory()
            )
        return shape


def _copy_ids(src: np.ndarray, modulus: np.ndarray | np.integer | None, dst: np.ndarray) -> None:
    """dst[...] = src (% modulus), cast to dst's dtype without a temporary."""
    if modulus is None:
        np.copyto(dst, src, casting="unsafe")
    else:
        np.remainder(src, modulus, out=dst, casting="unsafe")


def read_split_arrays(
    root: Path | str,
    split: str,
    max_rows: int | None = None,
    meta: layout.DatasetMeta | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The whole split (or its first max_rows rows) as in-memory numpy arrays: dense float32
    [N, 13], sparse [N, 26] (multi-hot: [N, sum(multi_hot_sizes)]) with the ids as stored (not
    hashed), labels [N] as stored (int32 0/1)."""
    meta = meta if meta is not None else layout.read_meta(root)
    days = _open_split(Path(root), meta, split, max_rows)
    total = sum(len(d.labels) for d in days)
    dense, sparse, labels = _slice_rows(days, 0, total)
    return dense, sparse, labels.reshape(-1)


def _open_split(
    root: Path, meta: layout.DatasetMeta, split: str, max_rows: int | None
) -> list[_DayArrays]:
    """Memory maps of the split's row ranges, cut to its first max_rows rows; checks shapes and
    dtypes against meta (the layout's: dense float32, ids meta.sparse_dtype, labels int32)."""
    sparse_kind = "sparse" if meta.multi_hot_sizes is None else "sparse_multi_hot"
    sparse_width = sum(meta.multi_hot_sizes or (1,) * NUM_SPARSE_FEATURES)
    widths = {"dense": NUM_DENSE_FEATURES, sparse_kind: sparse_width, "labels": 1}
    dtypes = {"dense": np.dtype(np.float32), sparse_kind: np.dtype(meta.sparse_dtype), "labels": np.dtype(np.int32)}
    days, first = [], 0
    for day, start, stop in layout.split_ranges(meta, split):
        if max_rows is not None:
            stop = min(stop, start + max_rows - first)
        if stop <= start:
            break
        arrays = {}
        for kind, width in widths.items():
            path = layout.day_file(root, day, kind)
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing: the dataset in {root} is incomplete")
            array = np.load(path, mmap_mode="r")
            expected = (meta.day_rows[day], width)
            if array.shape != expected and not (kind == "labels" and array.shape == expected[:1]):
                raise ValueError(
                    f"{path}: shape {array.shape} does not match meta.json (expected {expected})"
                )
            if array.dtype != dtypes[kind]:
                raise ValueError(
                    f"{path}: dtype {array.dtype.name} does not match meta.json (expected {dtypes[kind].name})"
                )
            arrays[kind] = array[start:stop]
        days.append(_DayArrays(first, arrays["dense"], arrays[sparse_kind], arrays["labels"]))
        first += stop - start
    return days


def _split_bytes(days: list[_DayArrays]) -> int:
    return sum(d.dense.nbytes + d.sparse.nbytes + d.labels.nbytes for d in days)


def _gather_rows(
    days: list[_DayArrays], start: int, stop: int, order: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Rows start + order of the split (order: a permutation of range(stop - start)): a view of
    the block when it lies in one array, then one gather per array."""
    dense, sparse, labels = _slice_rows(days, start, stop, copy=False)
    return dense[order], sparse[order], labels[order]


def _slice_rows(
    days: list[_DayArrays], start: int, stop: int, copy: bool = True
) -> tuple[np.ndarray, ...]:
    """Rows [start, stop) of the split: a copy out of the memory maps, or, with copy=False and the
    rows in one day, read-only views."""
    pieces = []
    for day in days:
        lo, hi = max(start, day.first_row), min(stop, day.first_row + len(day.labels))
        if lo < hi:
            rows = slice(lo - day.first_row, hi - day.first_row)
            pieces.append((day.dense[rows], day.sparse[rows], day.labels[rows]))
    if len(pieces) == 1:
        if copy:
            return tuple(np.array(a) for a in pieces[0])
        views = tuple(a.view(np.ndarray) for a in pieces[0])
        for view in views:
            view.flags.writeable = False  # the in-memory split is shared by every batch
        return views
    return tuple(np.concatenate(parts) for parts in zip(*pieces, strict=True))


# ---- background prefetch -------------------------------------------------------------------------
_END = object()  # the producer is done


@dataclass(frozen=True)
class _Failure:
    error: BaseException


def _produce(batches: Iterator[Batch], out: queue.Queue, stop: threading.Event) -> None:
    """Thread body. It holds no reference to the consumer, so an abandoned consumer is collected
    and its finalizer sets `stop`, which ends this thread at its next hand-off."""
    try:
        for batch in batches:
            if not _offer(out, batch, stop):
                return
        _offer(out, _END, stop)
    except BaseException as err:  # noqa: BLE001 - every failure goes to the consumer
        _offer(out, _Failure(err), stop)


def _offer(out: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put item, waiting while the queue is full, unless the consumer has gone."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)  # the timeout bounds how long a stopped thread lingers
            return True
        except queue.Full:
            continue
    return False


class _Prefetcher(Iterator[Batch]):
    """Runs a batch generator in a daemon thread, `depth` batches ahead of the consumer.

    The thread is always joined: by close(), or, for an iterator its consumer dropped without
    closing (an exception in the training loop), when it is garbage collected, or at interpreter
    exit at the latest (weakref.finalize runs at exit). It builds batches (tensors), and a daemon
    thread still inside a torch op when the interpreter shuts down aborts the process
    ("terminate called without an active exception")."""

    # Joining from a finalizer: the garbage collector may run it at any point of the consumer's
    # code, even while the consumer holds the queue's lock the producer needs to finish its
    # hand-off; a bounded wait cannot deadlock there (the producer then ends at its next hand-off).
    FINALIZER_JOIN_S = 10.0

    def __init__(self, batches: Iterator[Batch], depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(
            target=_produce,
            args=(batches, self._queue, self._stop),
            name="recsearch-prefetch",
            daemon=True,
        )
        self._thread.start()
        # holds the event and the thread, never self: the finalizer must not keep the iterator alive
        self._finalizer = weakref.finalize(self, _Prefetcher._halt, self._stop, self._thread, self.FINALIZER_JOIN_S)

    @staticmethod
    def _halt(stop: threading.Event, thread: threading.Thread, timeout: float | None) -> None:
        stop.set()
        if thread is not threading.current_thread():  # a collection on the producer itself
            thread.join(timeout)

    def __next__(self) -> Batch:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._finished = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._finished = True
            raise item.error
        return item

    def close(self) -> None:
        """Stop the producer thread and wait for it (it exits within its hand-off timeout, after
        the batch it is building). Waiting matters: a daemon thread still inside a torch op when
        the interpreter exits aborts the process ("terminate called without an active exception"),
        and one still building batches would compete with whatever the caller times next."""
        self._finished = True
        self._finalizer.detach()
        self._halt(self._stop, self._thread, None)
