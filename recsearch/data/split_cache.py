"""Loaded data splits kept across the batch loaders of one process (numpy only, no torch): a search's
pool worker owns one and hands it to every NpyBatchLoader its trials build, so the second trial on
the same data reads no file (recsearch.data.loader, recsearch.search.worker)."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from recsearch.data import layout


class SplitCache:
    """Loaded splits kept across the NpyBatchLoaders of one process, owned by whoever builds the
    loaders (a pool worker keeps one for all its trials) and passed to each as `split_cache`.

    An entry is a split as an in-memory loader holds it: its first N rows read from the files,
    ids hashed to the table sizes, labels as float32. A loader of the same dataset directory (the
    same meta.json file: a dataset replaced by preprocess is a new file), split and hashing that
    needs at most N rows gets views of the entry's first rows, the same values a fresh read gives;
    one that needs more rows reads them and replaces the entry. Entries are shared, never copied:
    like the loader's in-memory batches, nothing may write into them. Least recently used entries
    are dropped beyond `max_bytes` (default: a quarter of the memory available when it is made)."""

    def __init__(self, max_bytes: int | None = None):
        self.max_bytes = available_memory_bytes() // 4 if max_bytes is None else int(max_bytes)
        self._entries: OrderedDict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(root: Path | str, split: str, moduli: tuple[int, ...] | None) -> tuple | None:
        """What identifies a loaded split: the dataset's meta.json (path, inode, size and mtime),
        the split and the table size each sparse column is hashed to (None: not hashed). None
        for a directory without meta.json (TorchRec's own layout): such splits are not cached."""
        meta_path = Path(root).resolve() / layout.META_FILE
        try:
            st = meta_path.stat()
        except OSError:
            return None
        return (str(meta_path), st.st_ino, st.st_size, st.st_mtime_ns, split, moduli)

    def get(self, key: tuple, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Views of the first `rows` rows of the entry, or None (counted as a miss)."""
        entry = self._entries.get(key)
        if entry is None or len(entry[2]) < rows:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return tuple(a[:rows] for a in entry)  # type: ignore[return-value]

    def put(self, key: tuple, arrays: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        self._entries.pop(key, None)
        if sum(a.nbytes for a in arrays) > self.max_bytes:
            return
        self._entries[key] = arrays
        while self.nbytes > self.max_bytes:
            self._entries.popitem(last=False)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for entry in self._entries.values() for a in entry)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (4 GiB where that is unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30  # unknown platform: assume a small machine
