"""What a dataset directory holds, for every reader: its meta.json, or, for a directory of
TorchRec's own npy files (``day_{i}_{dense,sparse,labels}.npy`` as ``npy_preproc_criteo`` or
the contiguous/shuffle scripts write them, no meta.json), a description built from the files.

Such a directory carries no table sizes. They come, in this order, from

1. ``num_embeddings_per_feature`` in the train or search config: 26 sizes, or one for every
   table (TorchRec's ``--num_embeddings``); ids are hashed modulo them, as TorchRec's examples do;
2. the data: max id + 1 of each feature over every day file. That suits contiguous ids
   (``contiguous_preproc_criteo``), not raw 32-bit Criteo hashes (``npy_preproc_criteo`` keeps
   the hex values): ids of 2^31 or more are refused with the key to set instead. The scan reads
   every sparse file once; its result is cached under ``$RECSEARCH_CACHE_DIR`` (default
   ``~/.cache/recsearch``), keyed by the files' paths, sizes and modification times.

The meta says which in ``extra["num_embeddings_from"]``; a derivation is also logged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsearch.data import layout
from recsearch.types import NUM_SPARSE_FEATURES, check_table_sizes

KEY = "num_embeddings_per_feature"
# Derived sizes at or above this are raw hashes, not table sizes (and no sane table has 2^31 rows).
MAX_DERIVED_ROWS = 2**31
SCAN_BLOCK_ROWS = 1 << 20  # rows of a sparse file reduced at a time (26 x 8 B x 1M = 208 MB)
CACHE_DIR_ENV = "RECSEARCH_CACHE_DIR"
CACHE_FORMAT = "recsearch-derived-table-sizes/1"
DERIVED_FROM = "data: "  # extra["num_embeddings_from"] of sizes derived from the data
# `recsearch data preprocess` builds in `<out>.incomplete-<pid>` (recsearch.data.output_dir.WORK_TAG):
# whole day files and no meta.json there mean a run that died, never TorchRec's files.
WORK_FOLDER = re.compile(r".+\.incomplete-\d+")


@dataclass(frozen=True)
class DerivedSizes:
    """Table sizes read off the data: max id + 1 of each feature over every day file."""

    num_embeddings_per_feature: tuple[int, ...]
    rows_scanned: int
    from_cache: bool


def ids_within_sizes(meta: layout.DatasetMeta) -> bool:
    """Whether every id of the dataset is below meta's table size for its feature, so a reader
    need not hash them: so for a recsearch dataset (its meta.json records the true id ranges) and
    for sizes derived from the data (max id + 1); not for TorchRec's npy files described with
    sizes from the config (raw hashes, hashed modulo the sizes)."""
    return meta.source != layout.TORCHREC_NPY_SOURCE or meta.extra.get("num_embeddings_from", "").startswith(
        DERIVED_FROM
    )


def expand_sizes(sizes: Sequence[int], key: str = KEY) -> tuple[int, ...]:
    """26 table sizes from a config value (or `key`'s flag) of 26 sizes or one for every table."""
    problems: list[str] = []
    check_table_sizes(problems, key, list(sizes))
    if problems:
        raise ValueError(problems[0])
    if len(sizes) == 1:
        return (int(sizes[0]),) * NUM_SPARSE_FEATURES
    return tuple(int(s) for s in sizes)


def sizes_example(key: str = KEY) -> str:
    """How to give one size for every table with `key`: a config key (key=[10000000]) or a
    command's flag (--table-sizes 10000000)."""
    return f"{key} 10000000" if key.startswith("-") else f"{key}=[10000000]"


def dataset_meta(
    root: Path | str,
    num_embeddings_per_feature: Sequence[int] | None = None,
    *,
    cache_dir: Path | str | None = None,
    key: str = KEY,
) -> layout.DatasetMeta:
    """The DatasetMeta of a dataset directory: its meta.json, or, for TorchRec's own npy files,
    one built from the files with table sizes from the config or from the data (module doc).

    key: where the caller's table sizes come from, named in the advice about them (default the
    train/search config key; `recsearch data stats` passes its --table-sizes)."""
    root = Path(root)
    has_meta = (root / layout.META_FILE).exists()
    if has_meta or WORK_FOLDER.fullmatch(root.name):  # read_meta says why a work folder is unfinished
        if has_meta and num_embeddings_per_feature is not None:
            raise ValueError(
                f"{key} is set, but {root / layout.META_FILE} records the tables' sizes already: "
                f"{key} is for directories of TorchRec's own npy files (no meta.json). Remove it "
                "(cap the tables with max_rows_per_table instead)"
            )
        return layout.read_meta(root)
    days = torchrec_days(root)
    if num_embeddings_per_feature is not None:
        meta = layout.infer_meta(root, expand_sizes(num_embeddings_per_feature, key))
        source = f"option: {key}" if key.startswith("-") else f"config: {key}"
        return dataclasses.replace(meta, extra={"num_embeddings_from": source})
    derived = derive_sizes(root, days, cache_dir=cache_dir, key=key)
    logging.getLogger(__name__).warning(
        "%s has no meta.json and %s is not set: table sizes derived from the data (max id + 1 "
        "per feature over %s rows%s): %s; %s rows in all. Set %s to fix them: %d sizes, or one "
        "for every table, e.g. %s (ids are then hashed modulo the sizes)", root, key,
        f"{derived.rows_scanned:,}", ", cached" if derived.from_cache else "",
        list(derived.num_embeddings_per_feature), f"{sum(derived.num_embeddings_per_feature):,}",
        key, NUM_SPARSE_FEATURES, sizes_example(key),
    )
    meta = layout.infer_meta(root, derived.num_embeddings_per_feature)
    return dataclasses.replace(
        meta,
        extra={"num_embeddings_from": f"{DERIVED_FROM}max id + 1 over {derived.rows_scanned} rows"},
    )


def torchrec_days(root: Path) -> list[int]:
    """The day numbers 0..n-1 of a directory of TorchRec's npy files, or a FileNotFoundError that
    says what the directory is missing and which ways there are to describe it."""
    unfinished = sorted(p.name for p in root.glob(f"*{layout.PARTIAL_SUFFIX}"))
    if unfinished:
        raise FileNotFoundError(
            f"{root / layout.META_FILE} not found and {root} holds unfinished files "
            f"({', '.join(unfinished[:3])}): a `recsearch data preprocess` or `synth` run did not "
            "finish there; run it again"
        )
    days = sorted(
        int(m.group(1))
        for p in root.glob("day_*_sparse.npy")
        if (m := re.fullmatch(r"day_(\d+)_sparse\.npy", p.name))
    )
    if not days:
        kaggle = [n for n in ("train_sparse.npy", "test_sparse.npy") if (root / n).exists()]
        hint = (
            f" It holds {', '.join(kaggle)}: npy_preproc_criteo's criteo_kaggle output, one file "
            "that is not cut into days; preprocess train.txt with `recsearch data preprocess` "
            "instead (it cuts it into 7 days, as facebookresearch/dlrm does)."
            if kaggle else ""
        )
        raise FileNotFoundError(
            f"{root / layout.META_FILE} not found, and no day_0_sparse.npy either: {root} is "
            "neither a recsearch dataset nor TorchRec's npy files (`recsearch data preprocess` "
            f"and `synth` write meta.json last, so an interrupted run leaves neither).{hint}"
        )
    if days != list(range(len(days))):
        raise FileNotFoundError(f"{root}: day files must be numbered 0..n-1, found days {days}")
    for day in days:
        for kind in ("dense", "labels"):
            if not layout.day_file(root, day, kind).exists():
                raise FileNotFoundError(f"{layout.day_file(root, day, kind)} is missing")
    return days


def derive_sizes(
    root: Path, days: Sequence[int], *, cache_dir: Path | str | None = None, key: str = KEY
) -> DerivedSizes:
    """Max id + 1 of each feature over the sparse files of `days` (cached: module doc). key: the
    config key or option to set instead, named when the sizes cannot be derived (dataset_meta)."""
    files = [layout.day_file(root, d, "sparse") for d in days]
    cache = _cache_file(files, cache_dir)
    cached = _read_cache(cache)
    if cached is not None:
        return cached
    max_ids = np.full(NUM_SPARSE_FEATURES, -1, np.int64)
    rows = 0
    for path in files:
        sparse = np.load(path, mmap_mode="r")
        if sparse.ndim != 2 or sparse.shape[1] != NUM_SPARSE_FEATURES:
            raise ValueError(f"{path}: shape {sparse.shape}, expected [rows, {NUM_SPARSE_FEATURES}]")
        if not np.issubdtype(sparse.dtype, np.integer):
            raise ValueError(f"{path}: ids of dtype {sparse.dtype}; sparse ids must be integers")
        for start in range(0, sparse.shape[0], SCAN_BLOCK_ROWS):
            block = sparse[start : start + SCAN_BLOCK_ROWS]
            low = block.min(axis=0)
            if (low < 0).any():
                feature = int(np.argmax(low < 0))
                raise ValueError(
                    f"{path}: feature cat_{feature} has the negative id {int(low[feature])}: table "
                    f"sizes cannot be derived from such ids; set {key}, e.g. {sizes_example(key)} "
                    "(ids are then hashed modulo the sizes)"
                )
            np.maximum(max_ids, block.max(axis=0).astype(np.int64), out=max_ids)
        rows += sparse.shape[0]
    if rows == 0:
        raise ValueError(f"{root}: the sparse files hold no rows")
    sizes = tuple(int(m) + 1 for m in max_ids)
    too_big = [(t, n) for t, n in enumerate(sizes) if n >= MAX_DERIVED_ROWS]
    if too_big:
        t, n = too_big[0]
        raise ValueError(
            f"{root} has no meta.json and {key} is not set, and the table sizes cannot be derived "
            f"from the data: feature cat_{t}'s ids reach {n - 1:,} ({len(too_big)} of "
            f"{NUM_SPARSE_FEATURES} features reach 2^31 or more). These are raw 32-bit Criteo hashes "
            f"(TorchRec's npy_preproc_criteo keeps the hex values), not row numbers. Set {key}: "
            f"{NUM_SPARSE_FEATURES} table sizes, or one for every table, e.g. {sizes_example(key)}; "
            "ids are hashed modulo them, as TorchRec's examples do"
        )
    derived = DerivedSizes(sizes, rows, from_cache=False)
    _write_cache(cache, derived)
    return derived


def cache_root(cache_dir: Path | str | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "recsearch"


def _cache_file(files: Sequence[Path], cache_dir: Path | str | None) -> Path | None:
    """The cache entry of these files' current contents (path, size, mtime), None if unreadable."""
    try:
        stamps = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    except OSError:
        return None
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, stamps]).encode()).hexdigest()[:32]
    return cache_root(cache_dir) / "table_sizes" / f"{digest}.json"


def _read_cache(path: Path | None) -> DerivedSizes | None:
    if path is None or not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        sizes = tuple(int(s) for s in raw[KEY])
        if raw.get("format") != CACHE_FORMAT or len(sizes) != NUM_SPARSE_FEATURES:
            return None
        return DerivedSizes(sizes, int(raw["rows_scanned"]), from_cache=True)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a damaged entry is recomputed


def _write_cache(path: Path | None, derived: DerivedSizes) -> None:
    """Best effort: a cache directory that cannot be written only costs the next scan."""
    if path is None:
        return
    entry = {
        "format": CACHE_FORMAT,
        KEY: list(derived.num_embeddings_per_feature),
        "rows_scanned": derived.rows_scanned,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entry) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass
