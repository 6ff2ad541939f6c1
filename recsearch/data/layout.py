"""The on-disk dataset layout: TorchRec's npy files plus a `meta.json` that marks completion.

A dataset directory holds, for each day ``i``::

    day_{i}_dense.npy     float32 [N, 13]   dense features, already transformed (see DenseTransform)
    day_{i}_sparse.npy    int32/int64 [N, 26]  one categorical id per feature (TorchRec's layout)
    day_{i}_labels.npy    int32 [N, 1]      click labels 0/1
    day_{i}_sparse_multi_hot.npy  int32 [N, sum(multi_hot_sizes)]  only for multi-hot datasets:
                          feature t's ids are columns [off_t, off_t + multi_hot_sizes[t])

and ``meta.json`` (DatasetMeta), written last and atomically: a directory without it is incomplete.
Directories preprocessed by TorchRec's own scripts (no meta.json) are read with ``infer_meta``
(``recsearch.data.dataset.dataset_meta`` picks between the two and finds the table sizes).

Splits follow TorchRec's InMemoryBinaryCriteoIterDataPipe: ``train`` is every day but the last,
``val`` the first half of the last day and ``test`` its second half.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from recsearch import remote
from recsearch.types import NUM_SPARSE_FEATURES

META_FILE = "meta.json"
FORMAT_NAME = "recsearch-criteo-npy"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
# The fewest rows `data preprocess` lets a split have: val and test are scored by AUC, which needs a
# click and a non-click, so at least 2 rows (whether both labels occur is up to the data).
MIN_SPLIT_ROWS = 2
PARTIAL_SUFFIX = ".partial"
DENSE_TRANSFORMS = ("log1p", "torchrec")
TORCHREC_NPY_SOURCE = "torchrec_npy"  # the source of an infer_meta description (no meta.json)


@dataclass(frozen=True)
class SplitBayes:
    """The ceiling of one split: metrics of the true click probabilities (synthetic data only)."""

    auc: float
    log_loss: float
    rows: int


@dataclass(frozen=True)
class DatasetMeta:
    source: str  # "synthetic", "criteo_kaggle", "criteo_terabyte", "torchrec_npy"
    day_rows: tuple[int, ...]  # rows in day_0, day_1, ...
    num_embeddings_per_feature: tuple[int, ...]  # id range of each categorical feature
    # "log1p": log(1 + max(x, 0)) (facebookresearch/dlrm, MLPerf);
    # "torchrec": log(x - min(file) + 2) (torchrec.datasets.criteo.BinaryCriteoUtils.tsv_to_npys).
    dense_transform: str = "log1p"
    multi_hot_sizes: tuple[int, ...] | None = None  # ids per sample of each feature, when multi-hot
    sparse_dtype: str = "int32"
    bayes: dict[str, SplitBayes] = field(default_factory=dict)  # split -> ceiling (synthetic)
    extra: dict[str, object] = field(default_factory=dict)  # source-specific facts (seed, options)

    def __post_init__(self) -> None:
        if len(self.num_embeddings_per_feature) != NUM_SPARSE_FEATURES:
            raise ValueError(
                f"num_embeddings_per_feature needs {NUM_SPARSE_FEATURES} values, "
                f"got {len(self.num_embeddings_per_feature)}"
            )
        if self.multi_hot_sizes is not None and len(self.multi_hot_sizes) != NUM_SPARSE_FEATURES:
            raise ValueError(f"multi_hot_sizes needs {NUM_SPARSE_FEATURES} values")
        if self.dense_transform not in DENSE_TRANSFORMS:
            raise ValueError(
                f"dense_transform must be one of {DENSE_TRANSFORMS}, got {self.dense_transform!r}"
            )
        if len(self.day_rows) < 1:
            raise ValueError("a dataset needs at least one day file")

    @property
    def num_days(self) -> int:
        return len(self.day_rows)

    @property
    def total_rows(self) -> int:
        return sum(self.day_rows)

    def to_json(self) -> dict[str, object]:
        out = dataclasses.asdict(self)
        out["format"] = FORMAT_NAME
        out["version"] = FORMAT_VERSION
        return out

    @classmethod
    def from_json(cls, raw: dict[str, object], origin: str = META_FILE) -> DatasetMeta:
        if raw.get("format") != FORMAT_NAME:
            raise ValueError(f"{origin}: not a recsearch dataset (format={raw.get('format')!r})")
        if raw.get("version") != FORMAT_VERSION:
            raise ValueError(f"{origin}: unsupported format version {raw.get('version')!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in raw.items() if k in known}
        try:
            kwargs["day_rows"] = tuple(int(x) for x in kwargs["day_rows"])  # type: ignore[union-attr]
            kwargs["num_embeddings_per_feature"] = tuple(
                int(x) for x in kwargs["num_embeddings_per_feature"]  # type: ignore[union-attr]
            )
            if kwargs.get("multi_hot_sizes") is not None:
                kwargs["multi_hot_sizes"] = tuple(
                    int(x) for x in kwargs["multi_hot_sizes"]  # type: ignore[union-attr]
                )
            kwargs["bayes"] = {
                k: SplitBayes(**v)  # type: ignore[arg-type]
                for k, v in dict(kwargs.get("bayes") or {}).items()  # type: ignore[call-overload]
            }
            return cls(**kwargs)  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{origin}: malformed dataset metadata: {err}") from err


def day_file(root: Path | str, day: int, kind: str) -> Path:
    """Path of one npy file; kind is dense, sparse, labels or sparse_multi_hot."""
    return Path(root) / f"day_{day}_{kind}.npy"


def write_meta(root: Path | str, meta: DatasetMeta) -> Path:
    """Atomically write meta.json: the last step of producing a dataset."""
    path = Path(root) / META_FILE
    remote.write_text(path, json.dumps(meta.to_json(), indent=2, sort_keys=True) + "\n")
    return path


def read_meta(root: Path | str) -> DatasetMeta:
    path = Path(root) / META_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: {root} is not a finished recsearch dataset. Without meta.json "
            "a dataset is incomplete: `recsearch data preprocess` or `synth` did not finish "
            "there (run it again; a preprocess run builds in <out>.incomplete-<pid> and leaves "
            "nothing usable behind). Data preprocessed by TorchRec's own scripts has no "
            "meta.json either: recsearch.data.dataset.dataset_meta describes it (train and "
            "search take its table sizes as num_embeddings_per_feature, or derive them)"
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err
    return DatasetMeta.from_json(raw, origin=str(path))


def infer_meta(root: Path | str, num_embeddings_per_feature: tuple[int, ...]) -> DatasetMeta:
    """Describe a directory of day_{i}_*.npy files written by TorchRec's preprocessing scripts."""
    root = Path(root)
    days = sorted(
        int(m.group(1))
        for p in root.glob("day_*_labels.npy")
        if (m := re.fullmatch(r"day_(\d+)_labels\.npy", p.name))
    )
    if not days or days != list(range(len(days))):
        raise FileNotFoundError(f"{root}: expected day_0.._labels.npy files, found days {days}")
    rows = tuple(
        int(np.load(day_file(root, d, "labels"), mmap_mode="r").shape[0]) for d in days
    )
    sparse_dtype = str(np.load(day_file(root, 0, "sparse"), mmap_mode="r").dtype)
    return DatasetMeta(
        source=TORCHREC_NPY_SOURCE,
        day_rows=rows,
        num_embeddings_per_feature=tuple(num_embeddings_per_feature),
        dense_transform="torchrec",
        sparse_dtype=sparse_dtype,
    )


def split_ranges(meta: DatasetMeta, split: str) -> list[tuple[int, int, int]]:
    """(day, first_row, stop_row) slices that make up a split, in TorchRec's convention."""
    return day_split_ranges(meta.day_rows, split)


def day_split_ranges(day_rows: Sequence[int], split: str) -> list[tuple[int, int, int]]:
    """split_ranges of day files holding day_rows rows (day 0, day 1, ...)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    last = len(day_rows) - 1
    if split == "train":
        if len(day_rows) < 2:
            raise ValueError("a dataset with one day file has no train split (need >= 2 days)")
        return [(d, 0, day_rows[d]) for d in range(last)]
    half = (day_rows[last] + 1) // 2  # TorchRec: val gets the extra row of an odd day
    if split == "val":
        return [(last, 0, half)]
    return [(last, half, day_rows[last])]


def split_rows(meta: DatasetMeta, split: str) -> int:
    return day_split_rows(meta.day_rows, split)


def day_split_rows(day_rows: Sequence[int], split: str) -> int:
    return sum(stop - start for _, start, stop in day_split_ranges(day_rows, split))


def partial_path(path: Path | str) -> Path:
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


def commit_partials(paths: list[Path]) -> None:
    """Rename each finished ``<path>.partial`` to ``<path>``."""
    for path in paths:
        os.replace(partial_path(path), path)


def _without_rows(header: bytes) -> bytes:
    """An npy header with the row count of its shape blanked out."""
    return re.sub(rb"'shape': \(\d+,", b"'shape': (,", header).rstrip(b" \n")


def _npy_header(dtype: np.dtype, shape: tuple[int, ...], header_bytes: int) -> bytes:
    """A version-1.0 npy header padded with spaces to exactly header_bytes (incl. 10-byte prefix)."""
    descr = np.lib.format.dtype_to_descr(np.dtype(dtype))
    body = repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    body_len = header_bytes - 10
    if len(body) + 1 > body_len:
        raise ValueError(f"npy header for shape {shape} does not fit in {header_bytes} bytes")
    body = body.ljust(body_len - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + body_len.to_bytes(2, "little") + body.encode("latin1")


class NpyAppendWriter:
    """Writes a C-order npy file row block by row block when the row count is not known upfront.

    The file is written as ``<path>.partial``; ``close()`` fixes the header's shape and fsyncs, and
    ``commit_partials`` moves it into place. Memory use is one block, whatever the file size.
    ``sync()`` makes the rows appended so far durable (the header's shape is fixed only by close),
    and ``reopen(path, dtype, row_shape, rows)`` continues such a file after its first ``rows`` rows
    (a resumed run: whatever a killed writer appended after them is cut off).
    """

    _HEADER_BYTES = 128  # room for any shape up to 10^18 rows

    def __init__(self, path: Path | str, dtype: np.dtype | str, row_shape: tuple[int, ...]):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(row_shape)
        self.rows = 0
        self._fh: BinaryIO | None = open(partial_path(self.path), "wb")
        self._fh.write(_npy_header(self.dtype, (0, *self.row_shape), self._HEADER_BYTES))

    @classmethod
    def reopen(
        cls, path: Path | str, dtype: np.dtype | str, row_shape: tuple[int, ...], rows: int
    ) -> NpyAppendWriter:
        """Continue ``<path>.partial``, written by a writer of this dtype and row shape, after its
        first ``rows`` rows: the file is truncated there and appends follow; close() rewrites the
        header with the row count as usual. ValueError when the file is not such a file or holds
        fewer rows."""
        self = cls.__new__(cls)
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(row_shape)
        self.rows = int(rows)
        partial = partial_path(self.path)
        fh = open(partial, "r+b")
        try:
            header = fh.read(cls._HEADER_BYTES)
            expected = _npy_header(self.dtype, (0, *self.row_shape), cls._HEADER_BYTES)
            # Everything but the shape's row count must be what this writer writes.
            if len(header) != cls._HEADER_BYTES or _without_rows(header) != _without_rows(expected):
                raise ValueError(
                    f"{partial}: not a {self.dtype} npy file of rows {self.row_shape} "
                    "written by NpyAppendWriter"
                )
            size = cls._HEADER_BYTES + self.rows * self.row_bytes
            if rows < 0 or os.fstat(fh.fileno()).st_size < size:
                raise ValueError(
                    f"{partial}: holds {os.fstat(fh.fileno()).st_size} bytes, fewer than "
                    f"{rows} rows need ({size})"
                )
            fh.truncate(size)
            fh.seek(size)
        except BaseException:
            fh.close()
            raise
        self._fh = fh
        return self

    @property
    def row_bytes(self) -> int:
        return self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes of the file once its rows are written: header and data."""
        return self._HEADER_BYTES + self.rows * self.row_bytes

    def sync(self) -> None:
        """Make every row appended so far durable (flush and fsync; the header is fixed on close)."""
        if self._fh is None:
            raise ValueError(f"{self.path}: writer is closed")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def append(self, block: np.ndarray) -> None:
        if self._fh is None:
            raise ValueError(f"{self.path}: writer is closed")
        if tuple(block.shape[1:]) != self.row_shape:
            raise ValueError(
                f"{self.path}: block rows have shape {block.shape[1:]}, expected {self.row_shape}"
            )
        self._fh.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
        self.rows += block.shape[0]

    def close(self) -> None:
        if self._fh is None:
            return
        self._fh.seek(0)
        self._fh.write(_npy_header(self.dtype, (self.rows, *self.row_shape), self._HEADER_BYTES))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None

    def __enter__(self) -> NpyAppendWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- statistics beside a dataset (recsearch data stats --out DIR/stats.json) ---------------------
STATS_DATASET_KEY = "dataset_stamp"  # stats.json's record of the dataset it was computed from


def dataset_stamp(meta: DatasetMeta) -> dict[str, object]:
    """The facts of a dataset its statistics depend on (JSON values): rows per day and id ranges."""
    return {"day_rows": list(meta.day_rows), "num_embeddings_per_feature": list(meta.num_embeddings_per_feature)}


def stats_describe_other_data(stats_path: Path, meta: DatasetMeta) -> bool:
    """Whether the stats.json at stats_path records a dataset other than meta's (False when it
    records none: written before the stamp, or by hand)."""
    try:
        stamp = json.loads(stats_path.read_text()).get(STATS_DATASET_KEY)
    except (OSError, ValueError, AttributeError):
        return False
    return stamp is not None and stamp != dataset_stamp(meta)
