"""Criteo TSV click logs -> TorchRec's npy layout.

`recsearch data preprocess --input FILE [FILE ...] --out DIR [options]`

Input rows: label, 13 integer features, 26 categorical features (up to 8 hex digits), separated by
tabs; any field may be empty. One Kaggle `train.txt` is split into `--days` contiguous day files
(7 by default, facebookresearch/dlrm's convention for Kaggle); several Terabyte `day_N` files become
day_0, day_1, ... in the order given. Splits are then TorchRec's (layout.split_ranges).

Conventions (see docs/DATA.md):
- dense, `--dense-transform log1p` (default): missing or negative -> 0, then log(1 + x), as
  facebookresearch/dlrm and MLPerf; `torchrec`: missing -> 0, then log(x - min + 2) with min over the
  whole input file, exactly TorchRec's `BinaryCriteoUtils.tsv_to_npys`. Applied here, stored float32.
- categorical, default: the hex value itself (missing -> 0), int64, like TorchRec's
  npy_preproc_criteo; the loader hashes. `--hash-size N`: 1 + (value mod (N - 1)), with index 0
  reserved for missing. `--vocab-threshold K`: values seen at least K times in the inputs get indices
  1..V in increasing value order (vocabulary in DIR/vocab_{t}.npy), missing and rarer values -> 0.

The file is read in byte ranges aligned to line ends, parsed by worker processes with pyarrow (all
fields as strings, then validated and converted with vectorized numpy), and written in order as
`.partial` files, committed only when everything succeeded. Memory is bounded by chunk size x
workers, whatever the input size.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from tqdm import tqdm

from recsearch.data import layout
from recsearch.types import NUM_DENSE_FEATURES, NUM_SPARSE_FEATURES

NUM_FIELDS = 1 + NUM_DENSE_FEATURES + NUM_SPARSE_FEATURES
FIELD_NAMES = ("label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27)))
INT_PATTERN = r"^-?[0-9]{1,18}$"
NIBBLES = np.full(256, -1, dtype=np.int8)  # ASCII byte -> hex digit value, -1 if not a hex digit
NIBBLES[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
NIBBLES[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
NIBBLES[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)
NIBBLES.setflags(write=False)


class PreprocessError(ValueError):
    """Bad input: names the file, the 1-based line and the field."""


@dataclass(frozen=True)
class PreprocessOptions:
    days: int = 7  # day files a single input is split into (several inputs: one day each)
    dense_transform: str = "log1p"
    hash_size: tuple[int, ...] | None = None  # one size for all features, or 26
    vocab_threshold: int | None = None
    skip_bad_rows: bool = False
    workers: int | None = None
    chunk_bytes: int = 32 << 20
    force: bool = False

    def __post_init__(self) -> None:
        if self.dense_transform not in layout.DENSE_TRANSFORMS:
            raise ValueError(f"dense_transform must be one of {layout.DENSE_TRANSFORMS}")
        if self.hash_size is not None and self.vocab_threshold is not None:
            raise ValueError("use either --hash-size or --vocab-threshold, not both")
        if self.hash_size is not None and (
            len(self.hash_size) not in (1, NUM_SPARSE_FEATURES) or min(self.hash_size) < 2
        ):
            raise ValueError(f"--hash-size takes 1 or {NUM_SPARSE_FEATURES} values >= 2")
        if self.vocab_threshold is not None and self.vocab_threshold < 1:
            raise ValueError("--vocab-threshold must be >= 1")
        if self.days < 2:
            raise ValueError("--days must be >= 2 (train days + a val/test day)")

    def hash_sizes(self) -> np.ndarray | None:
        if self.hash_size is None:
            return None
        sizes = self.hash_size * NUM_SPARSE_FEATURES if len(self.hash_size) == 1 else self.hash_size
        return np.asarray(sizes, dtype=np.int64)


@dataclass(frozen=True)
class ChunkTask:
    path: Path
    file_index: int
    chunk_index: int
    start_byte: int
    stop_byte: int
    mode: str  # "parse" (write rows) or "count" (vocabulary pass)
    options: PreprocessOptions
    vocab_dir: Path | None = None


@dataclass
class ChunkResult:
    task: ChunkTask
    dense: np.ndarray | None = None  # float32 (log1p) or int32 raw (torchrec transform pending)
    sparse: np.ndarray | None = None
    labels: np.ndarray | None = None
    dense_min: int = 0  # smallest raw dense value (missing counts as 0), for the torchrec transform
    counts: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # vocab pass
    bad_rows: int = 0
    error: tuple[int, str] | None = None  # (line within the chunk, message)
    nbytes: int = 0


def preprocess(inputs: list[Path | str], out_dir: Path | str, options: PreprocessOptions) -> layout.DatasetMeta:
    paths = [Path(p) for p in inputs]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: input file not found")
    out = Path(out_dir)
    if (out / layout.META_FILE).exists() and not options.force:
        raise FileExistsError(f"{out} already holds a finished dataset; pass --force to replace it")
    out.mkdir(parents=True, exist_ok=True)
    (out / layout.META_FILE).unlink(missing_ok=True)
    started = time.perf_counter()
    workers = max(1, options.workers or os.cpu_count() or 1)
    ranges = [_byte_ranges(p, options.chunk_bytes) for p in paths]
    vocab_sizes = None
    if options.vocab_threshold is not None:
        vocab_sizes = _build_vocabularies(paths, ranges, out, options, workers)
    day_plan = _day_plan(paths, options.days)
    writers: list[_DayWriter] = []
    try:
        stats = _write_days(paths, ranges, out, options, workers, day_plan, writers)
        files = [f for w in writers for f in w.files]
        if options.dense_transform == "torchrec":
            for w in writers:
                _apply_torchrec_dense(w.files[0], stats.dense_min_per_file[w.file_index])
        layout.commit_partials(files)
    except BaseException:
        for w in writers:
            w.abort()
        raise
    if options.hash_size is not None:
        num_embeddings = tuple(int(x) for x in options.hash_sizes())  # type: ignore[union-attr]
    elif vocab_sizes is not None:
        num_embeddings = tuple(v + 1 for v in vocab_sizes)
    else:
        num_embeddings = tuple(int(m) + 1 for m in stats.max_ids)
    elapsed_s = time.perf_counter() - started
    meta = layout.DatasetMeta(
        source="criteo_kaggle" if len(paths) == 1 else "criteo_terabyte",
        day_rows=tuple(w.rows for w in writers),
        num_embeddings_per_feature=num_embeddings,
        dense_transform=options.dense_transform,
        sparse_dtype="int64" if options.hash_size is None and vocab_sizes is None else "int32",
        extra={
            "inputs": [str(p) for p in paths],
            "bad_rows_skipped": stats.bad_rows,
            "categorical": "vocab" if vocab_sizes else ("hash" if options.hash_size else "raw"),
            "vocab_threshold": options.vocab_threshold,
            "preprocess_s": round(elapsed_s, 3),
            "workers": workers,
        },
    )
    layout.write_meta(out, meta)
    return meta


# ---- planning ------------------------------------------------------------------------------------
def _byte_ranges(path: Path, chunk_bytes: int) -> list[tuple[int, int]]:
    """[start, stop) byte ranges of about chunk_bytes, each ending just after a newline."""
    size = path.stat().st_size
    bounds = [0]
    with open(path, "rb") as fh:
        while bounds[-1] < size:
            target = bounds[-1] + chunk_bytes
            if target >= size:
                bounds.append(size)
                break
            fh.seek(target)
            fh.readline()  # advance to the end of the line that straddles the target
            bounds.append(min(fh.tell(), size))
    return list(zip(bounds[:-1], bounds[1:]))


def _count_lines(path: Path, stop_byte: int | None = None) -> int:
    """Lines in the file (or its first stop_byte bytes); a last line without newline counts."""
    lines, last = 0, b"\n"
    remaining = path.stat().st_size if stop_byte is None else stop_byte
    with open(path, "rb") as fh:
        while remaining > 0:
            block = fh.read(min(1 << 24, remaining))
            if not block:
                break
            lines += block.count(b"\n")
            last = block[-1:]
            remaining -= len(block)
    return lines + (last != b"\n")


def _day_plan(paths: list[Path], days: int) -> list[tuple[int, int]]:
    """(input file, planned rows) per output day. One input is split like facebookresearch/dlrm."""
    if len(paths) > 1:
        return [(i, -1) for i in range(len(paths))]  # one day per file, whatever its length
    total = _count_lines(paths[0])
    per_day, extra = divmod(total, days)
    return [(0, per_day + (d < extra)) for d in range(days)]


# ---- the row pass --------------------------------------------------------------------------------
@dataclass
class _PassStats:
    dense_min_per_file: dict[int, int] = field(default_factory=dict)
    max_ids: np.ndarray = field(default_factory=lambda: np.zeros(NUM_SPARSE_FEATURES, np.int64))
    bad_rows: int = 0


class _DayWriter:
    """The npy files of one day, streamed block by block."""

    def __init__(self, out: Path, day: int, file_index: int, planned_rows: int, options: PreprocessOptions):
        self.file_index = file_index
        self.planned_rows = planned_rows
        dense_dtype = np.int32 if options.dense_transform == "torchrec" else np.float32
        raw_ids = options.hash_size is None and options.vocab_threshold is None
        self.files = [layout.day_file(out, day, k) for k in ("dense", "sparse", "labels")]
        self._writers = [
            layout.NpyAppendWriter(self.files[0], dense_dtype, (NUM_DENSE_FEATURES,)),
            layout.NpyAppendWriter(self.files[1], np.int64 if raw_ids else np.int32, (NUM_SPARSE_FEATURES,)),
            layout.NpyAppendWriter(self.files[2], np.int32, (1,)),
        ]

    @property
    def rows(self) -> int:
        return self._writers[2].rows

    def room(self) -> int:
        return self.planned_rows - self.rows if self.planned_rows >= 0 else 1 << 62

    def append(self, dense: np.ndarray, sparse: np.ndarray, labels: np.ndarray) -> None:
        for writer, block in zip(self._writers, (dense, sparse, labels)):
            writer.append(block)

    def close(self) -> None:
        for writer in self._writers:
            writer.close()

    def abort(self) -> None:
        self.close()
        for path in self.files:
            layout.partial_path(path).unlink(missing_ok=True)


def _write_days(
    paths: list[Path],
    ranges: list[list[tuple[int, int]]],
    out: Path,
    options: PreprocessOptions,
    workers: int,
    day_plan: list[tuple[int, int]],
    writers: list[_DayWriter],
) -> _PassStats:
    stats = _PassStats()
    vocab_dir = out if options.vocab_threshold is not None else None
    tasks = _tasks(paths, ranges, "parse", options, vocab_dir)
    day = 0
    for result in _run(tasks, workers, "preprocess"):
        _raise_if_bad(result)
        stats.bad_rows += result.bad_rows
        f = result.task.file_index
        stats.dense_min_per_file[f] = min(stats.dense_min_per_file.get(f, 0), result.dense_min)
        if result.sparse is not None and len(result.sparse):
            stats.max_ids = np.maximum(stats.max_ids, result.sparse.max(axis=0))
        rows = (result.dense, result.sparse, result.labels)
        offset, n = 0, len(result.labels)  # type: ignore[arg-type]
        while offset < n or not writers:
            if not writers or writers[-1].room() == 0 or writers[-1].file_index != f:
                if writers:
                    writers[-1].close()
                if day >= len(day_plan):
                    raise PreprocessError(f"{paths[f]}: more rows than planned (file changed while reading?)")
                writers.append(_DayWriter(out, day, day_plan[day][0], day_plan[day][1], options))
                day += 1
                continue
            take = min(writers[-1].room(), n - offset)
            writers[-1].append(*(a[offset : offset + take] for a in rows))  # type: ignore[index]
            offset += take
    while day < len(day_plan):  # days left empty because rows were skipped
        if writers:
            writers[-1].close()
        writers.append(_DayWriter(out, day, day_plan[day][0], day_plan[day][1], options))
        day += 1
    writers[-1].close()
    if any(w.rows == 0 for w in writers):
        raise PreprocessError(f"too few rows for {len(writers)} day files: {[w.rows for w in writers]}")
    return stats


def _apply_torchrec_dense(path: Path, file_min: int) -> None:
    """Raw int32 dense -> float32 log(x - min + 2), in place (same item size), block by block."""
    partial = layout.partial_path(path)
    raw = np.load(partial, mmap_mode="r+")
    as_float = raw.view(np.float32)
    shift = np.int64(file_min) - 2
    for start in range(0, len(raw), 1 << 20):
        block = raw[start : start + (1 << 20)].astype(np.int64) - shift
        as_float[start : start + len(block)] = np.log(block, dtype=np.float32)
    as_float.flush()
    del raw, as_float
    with open(partial, "r+b") as fh:  # the header's dtype becomes float32 (same header size)
        header = fh.read(128)
        fh.seek(0)
        fh.write(header.replace(b"'<i4'", b"'<f4'"))


# ---- the vocabulary pass ---------------------------------------------------------------------------
def _build_vocabularies(
    paths: list[Path], ranges: list[list[tuple[int, int]]], out: Path, options: PreprocessOptions, workers: int
) -> list[int]:
    merged: list[tuple[np.ndarray, np.ndarray]] = [
        (np.zeros(0, np.int64), np.zeros(0, np.int64)) for _ in range(NUM_SPARSE_FEATURES)
    ]
    for result in _run(_tasks(paths, ranges, "count", options, None), workers, "vocabulary"):
        _raise_if_bad(result)
        for t, (values, counts) in enumerate(result.counts):
            merged[t] = _merge_counts(merged[t], (values, counts))
    sizes = []
    for t, (values, counts) in enumerate(merged):
        keep = values[(counts >= options.vocab_threshold) & (values >= 0)]
        np.save(out / f"vocab_{t}.npy", keep)  # sorted values; index = position + 1
        sizes.append(len(keep))
    return sizes


def _merge_counts(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    values = np.concatenate([a[0], b[0]])
    counts = np.concatenate([a[1], b[1]])
    unique, inverse = np.unique(values, return_inverse=True)
    return unique, np.bincount(inverse, weights=counts, minlength=len(unique)).astype(np.int64)


# ---- workers ---------------------------------------------------------------------------------------
def _tasks(paths, ranges, mode, options, vocab_dir) -> list[ChunkTask]:
    return [
        ChunkTask(path, f, c, start, stop, mode, options, vocab_dir)
        for f, path in enumerate(paths)
        for c, (start, stop) in enumerate(ranges[f])
    ]


def _run(tasks: list[ChunkTask], workers: int, desc: str) -> Iterator[ChunkResult]:
    total = sum(t.stop_byte - t.start_byte for t in tasks)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=desc, file=sys.stderr)
    try:
        if workers == 1 or len(tasks) == 1:
            results: Iterator[ChunkResult] = map(_process_chunk, tasks)
            for r in results:
                bar.update(r.nbytes)
                yield r
        else:
            ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
            with ctx.Pool(min(workers, len(tasks))) as pool:
                for r in pool.imap(_process_chunk, tasks):  # imap keeps the file order
                    bar.update(r.nbytes)
                    yield r
    finally:
        bar.close()


def _raise_if_bad(result: ChunkResult) -> None:
    if result.error is None:
        return
    local_line, message = result.error
    task = result.task
    line = _count_lines(task.path, task.start_byte) + local_line
    raise PreprocessError(
        f"{task.path}, line {line}: {message} (pass --skip-bad-rows to skip and count such rows)"
    )


def _process_chunk(task: ChunkTask) -> ChunkResult:
    with open(task.path, "rb") as fh:
        fh.seek(task.start_byte)
        data = fh.read(task.stop_byte - task.start_byte)
    result = ChunkResult(task=task, nbytes=len(data))
    table, wrong_width = _parse(data)
    opts = task.options
    columns = [table.column(i) for i in range(NUM_FIELDS)]
    bad, reasons, ids = _validate(columns)
    first_bad_line = None
    if wrong_width:
        line, width = wrong_width[0]
        first_bad_line = (line, f"expected {NUM_FIELDS} tab-separated fields, found {width}")
    if bad.any():
        row = int(np.argmax(bad))
        line = _line_of_row(row, [w[0] for w in wrong_width])
        if first_bad_line is None or line < first_bad_line[0]:
            first_bad_line = (line, reasons[row])
    if first_bad_line is not None and not opts.skip_bad_rows:
        result.error = first_bad_line
        return result
    result.bad_rows = len(wrong_width) + int(bad.sum())
    good = ~bad
    ids = ids[good]
    if task.mode == "count":
        result.counts = [tuple(np.unique(ids[:, t], return_counts=True)) for t in range(NUM_SPARSE_FEATURES)]
        return result
    labels = _int_column(columns[0], bad)[good].astype(np.int32).reshape(-1, 1)  # type: ignore[index]
    dense_raw = np.stack([_int_column(c, bad) for c in columns[1 : 1 + NUM_DENSE_FEATURES]], axis=1)[good]  # type: ignore[misc]
    if opts.dense_transform == "torchrec":
        result.dense = dense_raw.astype(np.int32)  # TorchRec casts to int32 before its transform
        result.dense_min = int(result.dense.min()) if len(result.dense) else 0
    else:
        result.dense = np.log1p(np.maximum(dense_raw, 0)).astype(np.float32)
    result.sparse = _map_ids(ids, opts, task.vocab_dir)
    result.labels = labels
    return result


def _parse(data: bytes) -> tuple[pa.Table, list[tuple[int, int]]]:
    """All fields as strings; rows with the wrong field count are set aside as (line, width)."""
    wrong_width: list[tuple[int, int]] = []

    def on_invalid(row: pa_csv.InvalidRow) -> str:
        wrong_width.append((int(row.number), int(row.actual_columns)))
        return "skip"

    if not data.strip():
        empty = pa.table({name: pa.array([], pa.string()) for name in FIELD_NAMES})
        return empty, wrong_width
    table = pa_csv.read_csv(
        io.BytesIO(data),
        read_options=pa_csv.ReadOptions(column_names=list(FIELD_NAMES), use_threads=False, block_size=1 << 26),
        parse_options=pa_csv.ParseOptions(delimiter="\t", quote_char=False, invalid_row_handler=on_invalid),
        convert_options=pa_csv.ConvertOptions(
            column_types={name: pa.string() for name in FIELD_NAMES},
            strings_can_be_null=False,
        ),
    )
    return table, wrong_width


def _line_of_row(row: int, skipped_lines: list[int]) -> int:
    """1-based line within the chunk of parsed row `row`, given lines the parser skipped."""
    line = row + 1
    for skipped in sorted(skipped_lines):
        if skipped <= line:
            line += 1
    return line


def _validate(columns: list[pa.ChunkedArray]) -> tuple[np.ndarray, dict[int, str], np.ndarray]:
    """Per row: is anything malformed, and for bad rows a message naming the first bad field;
    also the categorical values, parsed on the way."""
    n = len(columns[0])
    bad = np.zeros(n, dtype=bool)
    reasons: dict[int, str] = {}

    def mark(mask: np.ndarray, field_index: int, what: str, column: pa.ChunkedArray) -> None:
        new = mask & ~bad
        for row in np.flatnonzero(new)[:1]:
            reasons[int(row)] = f"field {FIELD_NAMES[field_index]}: {what}, got {column[int(row)].as_py()!r}"
        for row in np.flatnonzero(new)[1:]:
            reasons[int(row)] = f"field {FIELD_NAMES[field_index]}: {what}"
        bad[:] |= mask

    label_ok = pc.is_in(columns[0], value_set=pa.array(["0", "1"])).to_numpy(zero_copy_only=False)
    mark(~label_ok, 0, "label must be 0 or 1", columns[0])
    for i in range(1, 1 + NUM_DENSE_FEATURES):
        col = columns[i]
        if _int_column(col) is not None:
            continue  # the fast cast succeeded: every value is an integer or empty
        ok = pc.or_(pc.equal(col, ""), pc.match_substring_regex(col, INT_PATTERN))
        mark(~ok.to_numpy(zero_copy_only=False), i, "not an integer", col)
    ids, hex_bad = _hex_columns(columns[1 + NUM_DENSE_FEATURES :])
    for t in range(NUM_SPARSE_FEATURES):
        column = columns[1 + NUM_DENSE_FEATURES + t]
        mark(hex_bad[:, t], 1 + NUM_DENSE_FEATURES + t, "not a hex id of at most 8 digits", column)
    return bad, reasons, ids


def _int_column(column: pa.ChunkedArray, bad_rows: np.ndarray | None = None) -> np.ndarray | None:
    """Integer strings -> int64 (empty -> 0). Returns None when some value is not an integer,
    unless bad_rows (rows already known to be malformed) is given: those rows then read as 0."""
    filled = pc.if_else(pc.equal(column, ""), "0", column)
    if bad_rows is not None and bad_rows.any():
        filled = pc.if_else(pa.array(bad_rows), "0", filled)
    try:
        return pc.cast(filled, pa.int64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        if bad_rows is not None:
            raise
        return None


def _hex_columns(columns: list[pa.ChunkedArray]) -> tuple[np.ndarray, np.ndarray]:
    """Hex strings -> int64 values [n, 26] (empty -> -1) and a bad mask, vectorized over bytes."""
    n = len(columns[0])
    values = np.empty((n, len(columns)), dtype=np.int64)
    bad = np.zeros((n, len(columns)), dtype=bool)
    for t, column in enumerate(columns):
        arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + n + 1]
        data_buf = arr.buffers()[2]
        data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
        # 8 zero bytes in front, so the 8 bytes ending at any string's end can be read.
        data = np.concatenate([np.zeros(8, np.uint8), data])
        lengths = np.diff(offsets)
        last8 = np.lib.stride_tricks.sliding_window_view(data, 8)[offsets[1:]]  # [n, 8] copy
        if ((lengths == 8) | (lengths == 0)).all():
            value, ok = _hex8(last8)
        else:
            value, ok = _hex_any_length(last8, lengths)
        bad[:, t] = (lengths > 0) & ~ok
        values[:, t] = np.where(lengths == 0, -1, value)
    return values, bad


def _hex8(text: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of exactly 8 ASCII hex digits -> (value, valid), as 64-bit SWAR arithmetic."""
    is_digit = (text - np.uint8(48)) < 10  # '0'..'9' (uint8 arithmetic wraps below '0')
    is_letter = ((text | np.uint8(0x20)) - np.uint8(97)) < 6  # 'a'..'f' or 'A'..'F'
    ok = (is_digit | is_letter).view(np.uint64)[:, 0] == np.uint64(0x0101010101010101)
    x = text.view(np.uint64)[:, 0]  # little-endian: the first character is the lowest byte
    # Each byte -> its digit: the low nibble, plus 9 for letters (bit 6 set in 'A'-'F', 'a'-'f').
    x = (x & np.uint64(0x0F0F0F0F0F0F0F0F)) + np.uint64(9) * ((x >> np.uint64(6)) & np.uint64(0x0101010101010101))
    # Pairs of digits -> bytes (first digit high), then pairs of bytes, then pairs of 16-bit words.
    x = ((x & np.uint64(0x000F000F000F000F)) << np.uint64(4)) | ((x & np.uint64(0x0F000F000F000F00)) >> np.uint64(8))
    x = ((x & np.uint64(0x000000FF000000FF)) << np.uint64(8)) | ((x & np.uint64(0x00FF000000FF0000)) >> np.uint64(16))
    x = ((x & np.uint64(0xFFFF)) << np.uint64(16)) | ((x >> np.uint64(32)) & np.uint64(0xFFFF))
    return x.astype(np.int64), ok


def _hex_any_length(last8: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """General case: 1..8 digits right-aligned in last8 (longer strings are invalid)."""
    digits = NIBBLES[last8].astype(np.int64)  # -1 where not a hex digit
    digits[np.arange(8) < (8 - lengths)[:, None]] = 0  # bytes before the string's start
    ok = (lengths <= 8) & (digits >= 0).all(axis=1)
    return digits @ (16 ** np.arange(7, -1, -1, dtype=np.int64)), ok


def _map_ids(ids: np.ndarray, options: PreprocessOptions, vocab_dir: Path | None) -> np.ndarray:
    """Hex values (-1 = missing) -> stored ids by the chosen categorical convention."""
    missing = ids < 0
    sizes = options.hash_sizes()
    if sizes is not None:
        return np.where(missing, 0, 1 + ids % (sizes - 1)).astype(np.int32)
    if vocab_dir is not None:
        out = np.zeros(ids.shape, dtype=np.int32)
        for t in range(NUM_SPARSE_FEATURES):
            vocab = np.load(vocab_dir / f"vocab_{t}.npy", mmap_mode="r")
            pos = np.searchsorted(vocab, ids[:, t])
            hit = (pos < len(vocab)) & (vocab[np.minimum(pos, max(len(vocab) - 1, 0))] == ids[:, t]) if len(vocab) else np.zeros(len(ids), bool)
            out[:, t] = np.where(hit & ~missing[:, t], pos + 1, 0)
        return out
    return np.where(missing, 0, ids)  # TorchRec's convention: missing -> int("0", 16) = 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="recsearch data preprocess",
        description="Criteo TSV (Kaggle train.txt or Terabyte day_N) -> TorchRec npy layout.",
    )
    parser.add_argument("--input", nargs="+", required=True, help="train.txt, or day_0 day_1 ...")
    parser.add_argument("--out", required=True, help="output dataset directory")
    parser.add_argument("--days", type=int, default=7, help="day files for a single input (default 7)")
    parser.add_argument("--dense-transform", choices=layout.DENSE_TRANSFORMS, default="log1p")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--hash-size", type=int, nargs="+", help="one size, or 26: id -> 1 + v mod (N-1)")
    group.add_argument("--vocab-threshold", type=int, help="keep values seen >= K times (two passes)")
    parser.add_argument("--skip-bad-rows", action="store_true", help="skip and count malformed rows")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--chunk-mb", type=float, default=32.0, help="bytes per work item, in MiB")
    parser.add_argument("--force", action="store_true", help="replace a finished dataset in --out")
    args = parser.parse_args(argv)
    try:
        options = PreprocessOptions(
            days=args.days,
            dense_transform=args.dense_transform,
            hash_size=tuple(args.hash_size) if args.hash_size else None,
            vocab_threshold=args.vocab_threshold,
            skip_bad_rows=args.skip_bad_rows,
            workers=args.workers,
            chunk_bytes=max(1, int(args.chunk_mb * (1 << 20))),
            force=args.force,
        )
        meta = preprocess(args.input, args.out, options)
    except (PreprocessError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"recsearch data preprocess: {err}", file=sys.stderr)
        return 2
    seconds = float(meta.extra["preprocess_s"])  # type: ignore[arg-type]
    print(
        f"wrote {meta.total_rows:,} rows in {meta.num_days} days to {args.out} in {seconds:.1f}s "
        f"({meta.total_rows / max(seconds, 1e-9):,.0f} rows/s, {meta.extra['workers']} workers)"
    )
    if meta.extra["bad_rows_skipped"]:
        print(f"skipped {meta.extra['bad_rows_skipped']:,} malformed rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
