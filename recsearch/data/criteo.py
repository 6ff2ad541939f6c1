"""Criteo TSV click logs -> TorchRec's npy layout.

`recsearch data preprocess --input FILE [FILE ...] --out DIR [options]`

Input rows: label, 13 integer features, 26 categorical features (up to 8 hex digits), separated by
tabs; any feature may be empty. One Kaggle `train.txt` is split into `--days` contiguous day files
(7 by default, facebookresearch/dlrm's convention for Kaggle); several Terabyte `day_N` files become
day_0, day_1, ... in the order given. Splits are then TorchRec's (layout.split_ranges).

Conventions (docs/DATA.md, "Preprocessing Criteo TSV"):
- dense, `--dense-transform log1p` (default): missing or negative -> 0, then log(1 + x), as
  facebookresearch/dlrm and MLPerf; `torchrec`: missing -> 0, then log(x - min + 2) with min over
  the whole input file, exactly TorchRec's `BinaryCriteoUtils.tsv_to_npys`. Stored float32.
- categorical, default ("raw"): the hex value itself, missing -> 0, int64, like TorchRec's
  npy_preproc_criteo; the loader hashes. `--hash-size N`: 1 + (value mod (N - 1)), index 0 reserved
  for missing. `--vocab-threshold K`: values seen at least K times get indices 1..V in increasing
  value order (vocabulary in DIR/vocab_{t}.npy), missing and rarer values -> 0. `--vocab-from DIR`
  maps with the vocabularies of an earlier run (a held-out file mapped like the training data).

How: each input is cut into byte ranges that end at line ends; worker processes parse one range at
a time with pyarrow (every field as bytes), validate and convert with vectorized numpy, and hand the
arrays back; the parent appends them, in input order, to `.partial` npy files (at most workers + 1
ranges in flight, so memory does not grow with the input). All of it happens in a folder beside the
output directory, `<out>.incomplete-<pid>`, which becomes the output directory (by renames) only
once it holds the whole dataset and its meta.json; a dataset already there is replaced (with
--force) at that moment and not before. On an error (a bad row included) the folder is removed.

Resuming: during the row pass the parent saves a resume state in the folder (`resume.json`, at
most every `--checkpoint-s` seconds and after each input file, once the rows it counts are
fsynced). A run killed (SIGKILL, a crash), stopped by SIGTERM, interrupted by Ctrl-C or failed by
the machine (an OSError: a full disk, an I/O error) leaves its folder, and the next run with the same --out, inputs (path, size, mtime) and output options takes
it over: it cuts the day files back to the saved rows and goes on with the next chunk, writing
exactly the bytes one uninterrupted run writes. A folder of other inputs or options is deleted,
saying what differed; `--restart` deletes it anyway. With --vocab-threshold the saved vocabularies
are kept, so the counting pass is not repeated (a kill during it starts over). The state itself:
recsearch.data.preprocess_resume.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import io
import itertools
import multiprocessing
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from tqdm import tqdm

from recsearch.cliargs import list_flag
from recsearch.data import layout, output_dir, parent_watch
from recsearch.data.cpus import usable_cpus
from recsearch.data.preprocess_resume import (
    ResumeLog,
    choose_resumable,
    fresh_progress,
    fsync_dir,
    partial_sizes,
    progress_words,
    read_state,
    remove_state,
)
from recsearch.data.preprocess_resume import fingerprint as resume_fingerprint
from recsearch.types import NUM_DENSE_FEATURES, NUM_SPARSE_FEATURES

NUM_FIELDS = 1 + NUM_DENSE_FEATURES + NUM_SPARSE_FEATURES
FIELD_NAMES = ("label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27)))
# The stored id of a missing categorical value in every mode (and of a rare value in vocab mode).
MISSING_ID = 0
HASH_RULE = "1 + value mod (size - 1); 0 = missing"  # --hash-size, as meta.json states it
INT_PATTERN = r"^-?[0-9]{1,18}$"  # what counts as an integer field; 18 digits always fit int64
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
MAX_BAD_ROW_EXAMPLES = 5  # skipped rows described in meta.extra (and printed) with --skip-bad-rows
GZIP_MAGIC = b"\x1f\x8b"
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
    dense_transform: str = "log1p"  # one of layout.DENSE_TRANSFORMS
    hash_size: tuple[int, ...] | None = None  # one table size for all features, or 26
    vocab_threshold: int | None = None  # min occurrences for a value to get its own index
    vocab_from: Path | None = None  # dataset directory whose vocab_{t}.npy files map the ids
    skip_bad_rows: bool = False
    workers: int | None = None  # processes; None: the usable CPUs (recsearch.data.cpus.usable_cpus)
    chunk_bytes: int = 32 << 20  # input bytes per work item (memory per worker ~ 10x this)
    force: bool = False  # replace a dataset already in the output directory
    progress: bool = True  # tqdm bars (bytes) on stderr
    # Resume state (the work folder's resume.json) written at most this often during the row pass
    # (seconds; 0: after every chunk), and at the end of each input file.
    checkpoint_s: float = 30.0
    restart: bool = False  # delete a killed run's resumable work folder instead of resuming it

    def __post_init__(self) -> None:
        if self.dense_transform not in layout.DENSE_TRANSFORMS:
            raise ValueError(f"dense_transform must be one of {layout.DENSE_TRANSFORMS}")
        chosen = [
            name
            for name, value in (
                ("--hash-size", self.hash_size),
                ("--vocab-threshold", self.vocab_threshold),
                ("--vocab-from", self.vocab_from),
            )
            if value is not None
        ]
        if len(chosen) > 1:
            raise ValueError(f"choose one categorical mode, got {' and '.join(chosen)}")
        if self.hash_size is not None and (
            len(self.hash_size) not in (1, NUM_SPARSE_FEATURES) or min(self.hash_size) < 2
        ):
            raise ValueError(f"--hash-size takes 1 or {NUM_SPARSE_FEATURES} values, each >= 2")
        if self.vocab_threshold is not None and self.vocab_threshold < 1:
            raise ValueError("--vocab-threshold must be >= 1")
        if self.days < 2:
            raise ValueError("--days must be >= 2 (train days + a val/test day)")
        if self.workers is not None and self.workers < 1:
            raise ValueError("--workers must be >= 1")
        if self.chunk_bytes < 1:
            raise ValueError("chunk_bytes must be positive")
        if not self.checkpoint_s >= 0:
            raise ValueError("checkpoint_s must be >= 0")

    @property
    def categorical(self) -> str:
        """How categorical values are stored: "raw", "hash" or "vocab"."""
        if self.hash_size is not None:
            return "hash"
        if self.vocab_threshold is not None or self.vocab_from is not None:
            return "vocab"
        return "raw"

    def hash_sizes(self) -> tuple[int, ...] | None:
        if self.hash_size is None:
            return None
        return (
            tuple(self.hash_size) * NUM_SPARSE_FEATURES
            if len(self.hash_size) == 1
            else self.hash_size
        )


# ---- the id conventions, public so that other data can be mapped the same way --------------------
def hash_ids(values: np.ndarray, hash_sizes: Sequence[int]) -> np.ndarray:
    """Categorical values [n, 26] (-1 = missing) -> ids in [0, size): 1 + value mod (size - 1),
    0 for missing. int32 when every size fits, else int64."""
    sizes = np.asarray(hash_sizes, dtype=np.int64)
    ids = np.where(values < 0, MISSING_ID, 1 + values % (sizes - 1))
    return ids.astype(_id_dtype(int(sizes.max())))


def load_vocabularies(root: Path | str) -> list[np.ndarray]:
    """The 26 vocabularies of a `--vocab-threshold` dataset: sorted uint32 values; a value's id is
    its position + 1."""
    vocabularies = []
    for t in range(NUM_SPARSE_FEATURES):
        path = Path(root) / f"vocab_{t}.npy"
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: {root} was not preprocessed with --vocab-threshold"
            )
        vocab = np.load(path, mmap_mode="r")
        if (
            vocab.ndim != 1
            or vocab.dtype != np.uint32
            or (len(vocab) > 1 and not (np.diff(vocab) > 0).all())
        ):
            raise ValueError(
                f"{path}: expected sorted unique uint32 values, got {vocab.dtype} {vocab.shape}"
            )
        vocabularies.append(vocab)
    return vocabularies


def apply_vocabularies(values: np.ndarray, vocabularies: Sequence[np.ndarray]) -> np.ndarray:
    """Categorical values [n, 26] (-1 = missing) -> vocabulary ids: position + 1 when the value is
    in its feature's vocabulary, else 0 (missing or rare)."""
    out = np.zeros(values.shape, dtype=_id_dtype(max(len(v) for v in vocabularies) + 1))
    for t, vocab in enumerate(vocabularies):
        if len(vocab) == 0:
            continue
        # Query as uint32 (the vocabulary's dtype) so searchsorted does not copy the vocabulary;
        # missing values (-1) wrap to 2^32 - 1 and are masked below.
        query = values[:, t].astype(np.uint32)
        pos = np.searchsorted(vocab, query)
        hit = (
            (pos < len(vocab))
            & (vocab[np.minimum(pos, len(vocab) - 1)] == query)
            & (values[:, t] >= 0)
        )
        out[:, t] = np.where(hit, pos + 1, MISSING_ID)
    return out


def _id_dtype(id_range: int) -> type:
    """int32 when ids 0..id_range-1 fit, else int64."""
    return np.int32 if id_range <= INT32_MAX + 1 else np.int64


# ---- work items ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChunkTask:
    path: Path
    file_index: int
    start_byte: int
    stop_byte: int
    count_only: bool  # vocabulary pass: return value counts, not rows
    options: PreprocessOptions
    vocab_files: tuple[Path, ...] | None = None  # vocabularies to map ids with (vocab mode)


@dataclass(frozen=True, eq=False)
class ChunkResult:
    task: ChunkTask
    nbytes: int
    lines: int  # lines in the byte range (a last line without newline counts)
    error: tuple[int, str] | None = None  # first bad line (1-based within the range), message
    error_skippable: bool = True  # whether --skip-bad-rows could have skipped it
    bad_rows: int = 0  # skipped (with skip_bad_rows)
    bad_examples: tuple[tuple[int, str], ...] = ()  # first skipped lines (1-based in range), why
    kept_lines: np.ndarray | None = None  # 0-based line in range of each kept row; None: all lines
    labels: np.ndarray | None = None  # int32 [n, 1]
    dense: np.ndarray | None = None  # float32 (log1p), or raw int32 (torchrec: transformed later)
    sparse: np.ndarray | None = None
    dense_min: int | None = None  # smallest raw dense value (missing counts as 0), torchrec mode
    max_ids: np.ndarray | None = None  # int64 [26], largest stored id per feature
    counts: tuple[tuple[np.ndarray, np.ndarray], ...] | None = None  # per feature: values, counts


@dataclass(frozen=True)
class _DaySpan:
    """Output day `day` holds lines [first_line, stop_line) (0-based) of input `file_index`."""

    file_index: int
    first_line: int
    stop_line: int | None  # None: to the end of the file


def preprocess(
    inputs: Sequence[Path | str], out_dir: Path | str, options: PreprocessOptions
) -> layout.DatasetMeta:
    """Convert Criteo TSV files into a finished dataset in out_dir; returns its metadata.

    The dataset is built in `<out_dir>.incomplete-<pid>` beside out_dir and moved into place
    only once it is complete (meta.json included): a dataset already in out_dir (replaced with
    force) stays untouched until then, whatever happens to this run. A run that was killed,
    interrupted or failed by an OSError (a full disk) leaves that folder with a resume state, and a later run with the same inputs and
    options continues it (recsearch.data.preprocess_resume) unless options.restart."""
    started = time.perf_counter()
    paths = _check_inputs(inputs)
    out = Path(out_dir)
    target = output_dir.target_dir(out)
    source_vocabularies = None
    if options.vocab_from is not None:
        if Path(options.vocab_from).resolve() == target:
            raise ValueError("--vocab-from must name another dataset than --out")
        source_vocabularies = load_vocabularies(options.vocab_from)
    fingerprint = resume_fingerprint(paths, options)
    resumable = output_dir.recover(target, keep_resumable=True)
    output_dir.check_out_dir(out, target, options.force)
    work, state = _resume_or_start(target, resumable, fingerprint, options.restart)
    log = ResumeLog(work, fingerprint, options.checkpoint_s, state)
    workers = options.workers or usable_cpus()
    created: list[Path] = []  # every file this run writes (in `work`)
    try:
        ranges = [_byte_ranges(p, options.chunk_bytes) for p in paths]
        spans = _plan_days(paths, options.days)
        progress = (
            state
            if state is not None
            else fresh_progress(len(paths), len(spans), sum(len(r) for r in ranges))
        )
        vocab_files: tuple[Path, ...] | None = None
        vocab_sizes: list[int] | None = None
        if options.vocab_threshold is not None:
            if progress["vocab_done"]:  # a resumed run: the counting pass is not done again
                vocab_sizes = [
                    _saved_vocabulary(work, t, created) for t in range(NUM_SPARSE_FEATURES)
                ]
            else:
                vocab_sizes = _build_vocabularies(paths, ranges, work, options, workers, created)
                progress = {**progress, "vocab_done": True, "files": partial_sizes(created)}
                log.write(progress)
        elif source_vocabularies is not None:
            # A dataset is self-describing: it carries the vocabularies its ids were mapped with.
            vocab_sizes = [
                _save_vocabulary(work, t, np.asarray(vocab), created)
                for t, vocab in enumerate(source_vocabularies)
            ]
        if vocab_sizes is not None:
            vocab_files = tuple(
                layout.partial_path(work / f"vocab_{t}.npy") for t in range(NUM_SPARSE_FEATURES)
            )
        summary = _write_days(
            paths, ranges, work, options, workers, spans, vocab_files, created, log, progress
        )
        torchrec_dense = options.dense_transform == "torchrec"
        if torchrec_dense:
            for day, span in enumerate(spans):
                _apply_torchrec_dense(
                    layout.day_file(work, day, "dense"), summary.dense_min[span.file_index]
                )
        if options.categorical == "hash":
            num_embeddings = options.hash_sizes()
        elif vocab_sizes is not None:
            num_embeddings = tuple(size + 1 for size in vocab_sizes)  # + the shared index 0
        else:
            num_embeddings = tuple(int(m) + 1 for m in summary.max_ids)
        meta = layout.DatasetMeta(
            source="criteo_kaggle" if len(paths) == 1 else "criteo_terabyte",
            day_rows=tuple(summary.day_rows),
            num_embeddings_per_feature=num_embeddings,  # type: ignore[arg-type]
            dense_transform=options.dense_transform,
            sparse_dtype=summary.sparse_dtype,
            extra={
                "inputs": [str(p) for p in paths],
                "categorical": options.categorical,
                "missing_id": MISSING_ID,
                "hash": HASH_RULE if options.categorical == "hash" else None,
                "vocab_threshold": options.vocab_threshold,
                "vocab_from": str(options.vocab_from) if options.vocab_from is not None else None,
                "torchrec_dense_min": summary.dense_min if torchrec_dense else None,
                "bad_rows_skipped": summary.bad_rows,
                "bad_row_examples": list(summary.bad_examples),
                "preprocess_s": round(time.perf_counter() - started, 3),
                "workers": workers,
                "chunk_bytes": options.chunk_bytes,
            },
        )
        # No longer resumable from here (a kill in the seconds left: the next run starts over).
        remove_state(work)
        layout.commit_partials(created)
        layout.write_meta(work, meta)  # the work folder is now a complete dataset
        output_dir.swap_in(work, out, target, options.force)
    except (KeyboardInterrupt, SystemExit, OSError) as err:
        # Ctrl-C, a termination, or the machine failing the run (a full disk, an I/O error): keep
        # what a later run can resume, as a kill would. Errors of the data stay errors (below).
        saved = read_state(work)
        if saved is None:  # nothing saved yet (or no longer resumable): as before
            shutil.rmtree(work, ignore_errors=True)
        else:
            why = "interrupted" if not isinstance(err, OSError) else f"failed ({err})"
            fix = "" if not isinstance(err, OSError) else "fix that, then "
            print(
                f"recsearch data preprocess: {why}; {work} keeps "
                f"{progress_words(saved['progress'])}: {fix}run the same command again to resume "  # type: ignore[arg-type]
                "(--restart starts over; or delete that folder to free its space)",
                file=sys.stderr,
            )
        raise
    except BaseException:  # an error (a bad row too): leave nothing half-built behind
        shutil.rmtree(work, ignore_errors=True)
        raise
    return meta


# ---- resuming (the state itself: recsearch.data.preprocess_resume) --------------------------------
def _resume_or_start(
    target: Path, resumable: list[Path], fingerprint: dict[str, object], restart: bool
) -> tuple[Path, dict[str, object] | None]:
    """This run's work folder and the progress it continues: the resumable folder of a dead
    process that preprocess_resume.choose_resumable picks, renamed to this process's; otherwise a
    new folder and None. Every other resumable folder is deleted, saying why."""
    prefix = "recsearch data preprocess"
    chosen, rejected = choose_resumable(resumable, fingerprint, restart)
    for folder, why in rejected:
        print(f"{prefix}: {why}", file=sys.stderr)
        output_dir.discard(folder, target)
    if chosen is None:
        return output_dir.make_work_dir(target), None
    folder, progress = chosen
    work = output_dir.work_path(target)
    if folder != work:
        if work.exists():  # left by an earlier call in this very process, not resumable
            shutil.rmtree(work)
        try:
            os.rename(folder, work)  # atomic: a concurrent run cannot take it as well
        except FileNotFoundError:
            print(
                f"{prefix}: not resuming {folder}: another run took it first; starting over",
                file=sys.stderr,
            )
            return output_dir.make_work_dir(target), None
    print(
        f"{prefix}: resuming {folder}: {progress_words(progress)} already written",
        file=sys.stderr,
    )
    return work, progress


# ---- planning ------------------------------------------------------------------------------------
def _check_inputs(inputs: Sequence[Path | str]) -> list[Path]:
    paths = [Path(p) for p in inputs]
    if not paths:
        raise ValueError("no input files given")
    for path in paths:
        if path.is_dir():
            raise ValueError(
                f"{path}: a directory; --input takes the TSV files themselves: train.txt, or "
                f"day_0 day_1 ... day_23 in day order (e.g. --input {path}/day_{{0..23}})"
            )
        if not path.is_file():
            raise FileNotFoundError(f"{path}: input file not found")
        with open(path, "rb") as fh:
            if fh.read(2) == GZIP_MAGIC:
                raise PreprocessError(
                    f"{path}: gzip-compressed; decompress it first (gunzip -k {path}): the file is "
                    "read in parallel byte ranges, which needs the plain text"
                )
    if len({p.resolve() for p in paths}) != len(paths):
        raise ValueError("an input file is given twice")
    # Day order decides the split (the last day is val/test), and a shell glob sorts day_10
    # before day_2: refuse a numeric order that is not ascending rather than guess.
    numbers = [int(m.group(1)) for p in paths if (m := re.fullmatch(r"day_(\d+)(\.\w+)?", p.name))]
    if len(numbers) == len(paths) and numbers != sorted(numbers):
        raise ValueError(
            f"inputs named day_N must be given in day order, got {[p.name for p in paths]} "
            "(a glob sorts day_10 before day_2; use e.g. day_{0..23})"
        )
    return paths


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
            fh.seek(target - 1)
            fh.readline()  # to the end of the line holding byte target-1 (a range ends after \n)
            bounds.append(min(fh.tell(), size))
    return list(itertools.pairwise(bounds))


def _count_lines(path: Path) -> int:
    """Lines in the file; a last line without newline counts."""
    lines, last = 0, b"\n"
    with open(path, "rb") as fh:
        while block := fh.read(1 << 24):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


def _lines_up_to(path: Path, limit: int) -> int:
    """Lines in the file (a last line without newline counts), counted up to about limit."""
    lines, last = 0, b"\n"
    with open(path, "rb") as fh:
        while lines < limit and (block := fh.read(1 << 16)):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


def _plan_days(paths: list[Path], days: int) -> list[_DaySpan]:
    """One input is cut into `days` contiguous line ranges like facebookresearch/dlrm's Kaggle
    split (divmod; the first lines % days days one line longer); several inputs are a day each.
    Inputs that would leave a split fewer than layout.MIN_SPLIT_ROWS rows are refused here,
    before the row pass."""
    if len(paths) > 1:
        _check_input_days(paths)
        return [_DaySpan(f, 0, None) for f in range(len(paths))]
    total = _count_lines(paths[0])
    if total < days:
        raise PreprocessError(f"{paths[0]}: {total} lines, fewer than --days {days}")
    per_day, extra = divmod(total, days)
    lines = [per_day + (d < extra) for d in range(days)]
    _check_cut_days(paths[0], lines)
    stops = np.cumsum(lines)
    return [_DaySpan(0, int(stop - n), int(stop)) for n, stop in zip(lines, stops)]


def _check_cut_days(path: Path, lines: list[int]) -> None:
    """One input cut into len(lines) days: its last day must hold val and test."""
    if not _too_small_splits(lines):
        return
    days, total = len(lines), sum(lines)
    need = 2 * layout.MIN_SPLIT_ROWS  # lines of the last day
    fix = f", or at most --days {total // need}" if total // need >= 2 else ""
    raise PreprocessError(
        f"{path}: {total} lines cut into --days {days} leave the last day (day {days - 1}, split "
        f"into val and test) {lines[-1]} of the {need} lines it needs: "
        f"{_split_shortage(lines)}. Give at least {days * need} lines{fix}"
    )


def _check_input_days(paths: list[Path]) -> None:
    """Several inputs, a day each: refuse an empty input, and inputs that would leave a split
    fewer than layout.MIN_SPLIT_ROWS rows (the last input holds val and test). Reads only the
    first lines of each input."""
    need = 2 * layout.MIN_SPLIT_ROWS
    lines = [_lines_up_to(p, need) for p in paths]
    if 0 in lines:
        day = lines.index(0)
        raise PreprocessError(f"{paths[day]}: an empty file (it would be day {day}, with no rows)")
    if _too_small_splits(lines):
        raise PreprocessError(
            f"{_split_shortage(lines)}. Each input is one day, and the last ({paths[-1]}, day "
            f"{len(paths) - 1}) is split into val and test: it needs at least {need} lines, and "
            f"the train inputs before it {layout.MIN_SPLIT_ROWS} lines in all"
        )


def _too_small_splits(day_rows: Sequence[int]) -> list[tuple[str, int]]:
    """(split, rows) of each split of these days with fewer than layout.MIN_SPLIT_ROWS rows."""
    rows = [(split, layout.day_split_rows(day_rows, split)) for split in layout.SPLITS]
    return [(split, n) for split, n in rows if n < layout.MIN_SPLIT_ROWS]


def _split_shortage(day_rows: Sequence[int]) -> str:
    """What _too_small_splits finds, in words."""
    short = ", ".join(f"{split} {n}" for split, n in _too_small_splits(day_rows))
    return (
        f"too few rows ({short}); every split needs at least {layout.MIN_SPLIT_ROWS} (val and "
        "test are scored by AUC, which needs a click and a non-click)"
    )


# ---- the row pass --------------------------------------------------------------------------------
@dataclass(frozen=True)
class _WriteSummary:
    day_rows: list[int]
    dense_min: list[int]  # per input file, torchrec mode
    max_ids: np.ndarray
    sparse_dtype: str
    bad_rows: int
    bad_examples: list[str]


def _write_days(
    paths: list[Path],
    ranges: list[list[tuple[int, int]]],
    out: Path,
    options: PreprocessOptions,
    workers: int,
    spans: list[_DaySpan],
    vocab_files: tuple[Path, ...] | None,
    created: list[Path],
    log: ResumeLog,
    progress: dict[str, object],
) -> _WriteSummary:
    """The row pass, from the chunk after progress's tasks_done on (0: all of it), writing the
    resume state to log as it goes (recsearch.data.preprocess_resume)."""
    torchrec_dense = options.dense_transform == "torchrec"
    dense_dtype = np.int32 if torchrec_dense else np.float32
    sizes = options.hash_sizes()
    if sizes is not None:
        sparse_dtype = np.dtype(_id_dtype(max(sizes)))
    elif vocab_files is not None:
        sparse_dtype = np.dtype(
            _id_dtype(max(len(np.load(f, mmap_mode="r")) for f in vocab_files) + 1)
        )
    else:
        sparse_dtype = np.dtype(np.int64)  # raw hex values reach 2^32 - 1
    tasks = _tasks(paths, ranges, False, options, vocab_files)
    done = int(progress["tasks_done"])  # type: ignore[call-overload]
    if progress["tasks_total"] != len(tasks) or len(progress["day_rows"]) != len(spans):  # type: ignore[arg-type]
        raise RuntimeError(
            f"{log.work}: the resume state records {progress['tasks_total']} chunks and "
            f"{len(progress['day_rows'])} days, this run has {len(tasks)} and {len(spans)}"  # type: ignore[arg-type]
        )
    writers: list[tuple[layout.NpyAppendWriter | None, ...]] = []
    dense_min: list[int] = list(progress["dense_min"])  # type: ignore[call-overload]
    max_ids = np.array(progress["max_ids"], np.int64)
    bad_rows: int = int(progress["bad_rows"])  # type: ignore[call-overload]
    bad_examples: list[str] = list(progress["bad_examples"])  # type: ignore[call-overload]
    lines_seen: list[int] = list(progress["lines_seen"])  # type: ignore[call-overload]
    kept_files: dict[str, int] = dict(progress["files"])  # type: ignore[call-overload]
    row_shapes = ((NUM_DENSE_FEATURES,), (NUM_SPARSE_FEATURES,), (1,))

    def open_writer(path: Path, dtype: np.dtype, row_shape: tuple[int, ...], day: int):
        if done == 0:
            return layout.NpyAppendWriter(path, dtype, row_shape)
        if torchrec_dense and row_shape == row_shapes[0] and done == len(tasks):
            if np.load(layout.partial_path(path), mmap_mode="r").dtype == np.float32:
                return None  # transformed after the row pass by the run this one resumes
        return layout.NpyAppendWriter.reopen(path, dtype, row_shape, progress["day_rows"][day])  # type: ignore[index]

    def snapshot(tasks_done: int) -> dict[str, object]:
        """The progress after the first tasks_done chunks (copies: the run goes on changing)."""
        files = dict(kept_files)
        for day_writers in writers:
            for writer in day_writers:
                if writer is not None:
                    files[layout.partial_path(writer.path).name] = writer.nbytes
        return {
            **progress,
            "tasks_done": tasks_done,
            "day_rows": [w[2].rows for w in writers],  # type: ignore[union-attr]
            "files": files,
            "lines_seen": list(lines_seen),
            "dense_min": list(dense_min),
            "max_ids": max_ids.tolist(),
            "bad_rows": bad_rows,
            "bad_examples": list(bad_examples),
        }

    def checkpoint(state: dict[str, object]) -> None:
        for day_writers in writers:
            for writer in day_writers:
                if writer is not None:
                    writer.sync()  # the rows first, then the state that counts them
        log.write(state)

    latest: dict[str, object] | None = None  # progress after the last chunk fully appended
    try:
        for day in range(len(spans)):
            files = [layout.day_file(out, day, kind) for kind in ("dense", "sparse", "labels")]
            created.extend(files)
            writers.append(
                tuple(
                    open_writer(path, dtype, row_shape, day)
                    for path, dtype, row_shape in zip(
                        files, (dense_dtype, sparse_dtype, np.int32), row_shapes
                    )
                )
            )
        results = _checked_results(
            paths,
            tasks[done:],
            workers,
            "preprocess",
            options.progress,
            lines_before=lines_seen,
            done_bytes=sum(t.stop_byte - t.start_byte for t in tasks[:done]),
        )
        for index, (result, first_line) in enumerate(results, start=done):
            f = result.task.file_index
            lines_seen[f] = first_line + result.lines
            bad_rows += result.bad_rows
            for line, why in result.bad_examples:
                if len(bad_examples) < MAX_BAD_ROW_EXAMPLES:
                    bad_examples.append(f"{paths[f]}, line {first_line + line}: {why}")
            if result.labels is not None and len(result.labels) > 0:
                if result.dense_min is not None:
                    dense_min[f] = min(dense_min[f], result.dense_min)
                max_ids = np.maximum(max_ids, result.max_ids)  # type: ignore[arg-type]
                n = len(result.labels)
                kept = result.kept_lines if result.kept_lines is not None else np.arange(n)
                row_lines = first_line + kept  # 0-based line in the file of each row
                for day, span in enumerate(spans):
                    if span.file_index != f:
                        continue
                    lo = int(np.searchsorted(row_lines, span.first_line))
                    hi = (
                        n
                        if span.stop_line is None
                        else int(np.searchsorted(row_lines, span.stop_line))
                    )
                    if hi > lo:
                        for writer, block in zip(
                            writers[day], (result.dense, result.sparse, result.labels)
                        ):
                            writer.append(block[lo:hi])  # type: ignore[index, union-attr]
            latest = snapshot(index + 1)
            file_done = index + 1 == len(tasks) or tasks[index + 1].file_index != f
            if file_done or log.due():
                checkpoint(latest)
    except (KeyboardInterrupt, SystemExit, OSError):
        if latest is not None and latest is not log.state:
            with contextlib.suppress(Exception):  # else the last state written stands
                checkpoint(latest)
        raise
    finally:
        for day_writers in writers:
            for writer in day_writers:
                if writer is not None:
                    writer.close()
    if spans[-1].stop_line is not None and lines_seen[0] != spans[-1].stop_line:
        raise PreprocessError(
            f"{paths[0]}: read {lines_seen[0]} lines, counted {spans[-1].stop_line}; did it change?"
        )
    day_rows = [w[2].rows for w in writers]  # type: ignore[union-attr]
    _check_rows_written(day_rows, bad_rows, bad_examples)
    return _WriteSummary(day_rows, dense_min, max_ids, str(sparse_dtype), bad_rows, bad_examples)


def _check_rows_written(day_rows: list[int], bad_rows: int, bad_examples: list[str]) -> None:
    """What the row pass wrote: rows in every day and split. The inputs' lines were checked before
    the pass (_plan_days), so only skipped bad rows (or an input changed since) fail here."""
    if bad_rows and sum(day_rows) == 0:
        raise PreprocessError(
            f"no rows remain: all {bad_rows:,} lines were bad rows and skipped, the first: "
            f"{bad_examples[0]}"
        )
    after = f"after skipping {bad_rows:,} bad rows, " if bad_rows else ""
    if 0 in day_rows:
        raise PreprocessError(
            f"{after}day {day_rows.index(0)} would be empty (rows per day: {day_rows})"
        )
    if _too_small_splits(day_rows):
        raise PreprocessError(f"{after}{_split_shortage(day_rows)} (rows per day: {day_rows})")


def _apply_torchrec_dense(path: Path, file_min: int) -> None:
    """Raw int32 dense -> float32 log(x - min + 2), block by block, into a copy that then replaces
    the raw file (a rename, so a kill leaves either; a file already float32 was transformed by the
    run this one resumes, and is left as it is)."""
    partial = layout.partial_path(path)
    raw = np.load(partial, mmap_mode="r")
    if raw.dtype == np.float32:
        return
    header_bytes = raw.offset
    if raw.dtype != np.int32 or header_bytes != 128:
        raise RuntimeError(f"{partial}: expected NpyAppendWriter's int32 file, got {raw.dtype}")
    with open(partial, "rb") as fh:
        header = fh.read(header_bytes)
    shift = np.int64(file_min) - 2
    transformed = partial.with_name(partial.name + ".torchrec")
    with open(transformed, "wb") as fh:
        fh.write(header.replace(b"'<i4'", b"'<f4'"))  # same header size
        for start in range(0, len(raw), 1 << 20):
            # int64 so that x - min + 2 cannot wrap; TorchRec's int32 arithmetic equals it whenever
            # its own result is meaningful (max - min + 2 < 2^31).
            block = raw[start : start + (1 << 20)].astype(np.int64) - shift
            fh.write(np.log(block, dtype=np.float32))  # C-contiguous: its buffer, no copy
        fh.flush()
        os.fsync(fh.fileno())  # durable before it replaces the raw file
    del raw
    os.replace(transformed, partial)
    fsync_dir(partial.parent)


# ---- the vocabulary pass -------------------------------------------------------------------------
class _ValueCounter:
    """Exact occurrence counts of one feature's values. Chunk counts wait in a list until they
    outnumber the merged values, so each value is re-sorted O(log chunks) times, not once per chunk.
    Memory: 12 bytes per distinct value (uint32 value, int64 count), plus a merge's temporaries."""

    def __init__(self, min_merge_values: int = 1 << 20) -> None:
        self.min_merge_values = min_merge_values  # no merge before this many values wait
        self.values = np.zeros(0, np.uint32)
        self.counts = np.zeros(0, np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_len = 0

    def add(self, values: np.ndarray, counts: np.ndarray) -> None:
        self._pending.append((values, counts))
        self._pending_len += len(values)
        if self._pending_len > max(len(self.values), self.min_merge_values):
            self.merge()

    def merge(self) -> None:
        if not self._pending:
            return
        values = np.concatenate([self.values, *(v for v, _ in self._pending)])
        counts = np.concatenate([self.counts, *(c for _, c in self._pending)])
        self._pending, self._pending_len = [], 0
        order = np.argsort(values, kind="stable")
        values, counts = values[order], counts[order]
        starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
        self.values = values[starts]
        self.counts = np.add.reduceat(counts, starts) if len(values) else counts


def _build_vocabularies(
    paths: list[Path],
    ranges: list[list[tuple[int, int]]],
    out: Path,
    options: PreprocessOptions,
    workers: int,
    created: list[Path],
) -> list[int]:
    counters = [_ValueCounter() for _ in range(NUM_SPARSE_FEATURES)]
    tasks = _tasks(paths, ranges, True, options, None)
    for result, _ in _checked_results(paths, tasks, workers, "vocabulary", options.progress):
        for counter, (values, counts) in zip(counters, result.counts or ()):
            counter.add(values, counts)
    sizes = []
    for t, counter in enumerate(counters):
        counter.merge()
        keep = counter.values[
            counter.counts >= options.vocab_threshold
        ]  # sorted: id = position + 1
        sizes.append(_save_vocabulary(out, t, keep, created))
    return sizes


def _saved_vocabulary(out: Path, feature: int, created: list[Path]) -> int:
    """The size of a vocabulary saved by the run this one resumes."""
    path = out / f"vocab_{feature}.npy"
    created.append(path)
    return len(np.load(layout.partial_path(path), mmap_mode="r"))


def _save_vocabulary(out: Path, feature: int, values: np.ndarray, created: list[Path]) -> int:
    path = out / f"vocab_{feature}.npy"
    created.append(path)
    with open(layout.partial_path(path), "wb") as fh:  # a file object: np.save would add ".npy"
        np.save(fh, values.astype(np.uint32), allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())
    return len(values)


# ---- running work items --------------------------------------------------------------------------
def _tasks(
    paths: list[Path],
    ranges: list[list[tuple[int, int]]],
    count_only: bool,
    options: PreprocessOptions,
    vocab_files: tuple[Path, ...] | None,
) -> list[ChunkTask]:
    return [
        ChunkTask(path, f, start, stop, count_only, options, vocab_files)
        for f, path in enumerate(paths)
        for start, stop in ranges[f]
    ]


def _checked_results(
    paths: list[Path],
    tasks: list[ChunkTask],
    workers: int,
    desc: str,
    progress: bool,
    lines_before: Sequence[int] | None = None,
    done_bytes: int = 0,
) -> Iterator[tuple[ChunkResult, int]]:
    """Results in input order with the 0-based line their range starts at; the first bad line
    (when rows are not skipped) raises PreprocessError naming the file, the line and the field.
    A resumed run passes the lines of each input its earlier chunks held (tasks go on from there)
    and their bytes (where the progress bar starts)."""
    lines_before = list(lines_before) if lines_before is not None else [0] * len(paths)
    with contextlib.closing(_run(tasks, workers, desc, progress, done_bytes)) as results:
        for result in results:
            f = result.task.file_index
            first_line = lines_before[f]
            lines_before[f] += result.lines
            if result.error is not None:
                line, message = result.error
                hint = (
                    " (pass --skip-bad-rows to skip and count such rows)"
                    if result.error_skippable
                    else ""
                )
                raise PreprocessError(f"{paths[f]}, line {first_line + line}: {message}{hint}")
            yield result, first_line


def _run(
    tasks: list[ChunkTask], workers: int, desc: str, progress: bool, done_bytes: int = 0
) -> Iterator[ChunkResult]:
    """_process_chunk over tasks, results in task order. With several workers at most workers + 1
    tasks are in flight, so finished results never pile up in the parent. The bar counts bytes
    and starts at done_bytes (what a resumed run's earlier chunks read)."""
    total = done_bytes + sum(t.stop_byte - t.start_byte for t in tasks)
    bar = tqdm(
        total=total,
        initial=done_bytes,
        unit="B",
        unit_scale=True,
        desc=desc,
        file=sys.stderr,
        disable=not progress,
    )
    try:
        if workers == 1 or len(tasks) <= 1:
            for task in tasks:
                result = _process_chunk(task)
                bar.update(result.nbytes)
                yield result
            return
        # Not fork: the parent may already run threads (pyarrow's pool, torch's, a trainer's), and
        # a child forked while one of them holds a lock can hang for good (seen once in the test
        # suite). A forkserver forks workers from a clean single-threaded process, started once per
        # parent with this module already imported, so later pools start in milliseconds too.
        ctx = multiprocessing.get_context("forkserver" if sys.platform == "linux" else "spawn")
        if sys.platform == "linux":
            ctx.set_forkserver_preload([__name__])
        # An executor, not multiprocessing.Pool: a worker that dies is a BrokenProcessPool here
        # (a Pool's result would never come), and leaving early (a bad row, Ctrl-C) cancels what
        # has not started and waits for the at most workers + 1 chunks in flight, instead of
        # Pool.terminate's SIGTERM to workers mid-task (a rare hang in the suite, 2026-12-05).
        # Each worker ends itself if this process dies without shutting the pool down (SIGKILL):
        # nothing else would end it (recsearch.data.parent_watch).
        pool = concurrent.futures.ProcessPoolExecutor(
            min(workers, len(tasks)), mp_context=ctx, initializer=parent_watch.exit_with,
            initargs=(os.getpid(),),
        )
        try:
            todo = iter(tasks)
            in_flight = collections.deque(
                pool.submit(_process_chunk, task) for task in _take(todo, workers + 1)
            )
            while in_flight:
                result = in_flight.popleft().result()
                for task in _take(todo, 1):
                    in_flight.append(pool.submit(_process_chunk, task))
                bar.update(result.nbytes)
                yield result
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()


def _take(items: Iterator[ChunkTask], n: int) -> list[ChunkTask]:
    return [item for _, item in zip(range(n), items)]


# ---- one work item -------------------------------------------------------------------------------
def _process_chunk(task: ChunkTask) -> ChunkResult:
    with open(task.path, "rb") as fh:
        fh.seek(task.start_byte)
        data = fh.read(task.stop_byte - task.start_byte)
    lines = data.count(b"\n") + (not data.endswith(b"\n"))
    base = {"task": task, "nbytes": len(data), "lines": lines}
    stray_cr = _first_stray_carriage_return(data)
    if stray_cr is not None:
        # pyarrow ends a line at a lone \r too, so the file's lines could not be followed.
        return ChunkResult(
            **base,
            error=(stray_cr, "carriage return (\\r) inside a line; not a Criteo TSV file?"),
            error_skippable=False,
        )
    table, wrong_width = _parse(data)
    columns = [table.column(i) for i in range(NUM_FIELDS)]
    opts = task.options
    checked = _validate(
        columns, int32_dense=opts.dense_transform == "torchrec", hex_prefix_possible=b"x" in data or b"X" in data
    )
    if len(table) + len(wrong_width) != lines:
        raise RuntimeError(
            f"{task.path}: parsed {len(table)} + {len(wrong_width)} rows of {lines} lines"
        )
    # The 0-based line (within the range) of each parsed row: lines minus the wrong-width ones.
    row_lines = np.delete(np.arange(lines), [line - 1 for line, _ in wrong_width])
    bad_lines = sorted(
        wrong_width[:MAX_BAD_ROW_EXAMPLES]
        + [
            (int(row_lines[r]) + 1, _why_bad(r, columns, checked))
            for r in np.flatnonzero(checked.bad)[:MAX_BAD_ROW_EXAMPLES]
        ]
    )
    if bad_lines and not opts.skip_bad_rows:
        return ChunkResult(**base, error=bad_lines[0])
    kept = ~checked.bad
    n_bad = len(wrong_width) + int(checked.bad.sum())
    skipped = {
        "bad_rows": n_bad,
        "bad_examples": tuple(bad_lines[:MAX_BAD_ROW_EXAMPLES]),
        "kept_lines": row_lines[kept] if n_bad else None,
    }
    values = checked.values[kept]
    if task.count_only:
        counts = []
        for t in range(NUM_SPARSE_FEATURES):
            present = values[:, t]
            present = present[present >= 0].astype(np.uint32)
            counts.append(tuple(np.unique(present, return_counts=True)))
        return ChunkResult(**base, **skipped, counts=tuple(counts))  # type: ignore[arg-type]
    dense_raw = checked.dense[kept]
    if opts.dense_transform == "torchrec":
        # Raw values now, the log once the file's minimum is known (TorchRec's int32 values).
        dense = dense_raw.astype(np.int32)
        dense_min = int(dense.min()) if len(dense) else None
    else:
        dense = np.log1p(np.maximum(dense_raw, 0)).astype(np.float32)
        dense_min = None
    sizes = opts.hash_sizes()
    if sizes is not None:
        sparse = hash_ids(values, sizes)
    elif task.vocab_files is not None:
        sparse = apply_vocabularies(values, [np.load(f, mmap_mode="r") for f in task.vocab_files])
    else:
        sparse = np.maximum(values, MISSING_ID)  # TorchRec's convention: missing -> int("0", 16)
    max_ids = sparse.max(axis=0) if len(sparse) else np.zeros(NUM_SPARSE_FEATURES)
    return ChunkResult(
        **base,
        **skipped,  # type: ignore[arg-type]
        labels=checked.labels[kept].reshape(-1, 1),
        dense=dense,
        sparse=sparse,
        dense_min=dense_min,
        max_ids=max_ids.astype(np.int64),
    )


def _first_stray_carriage_return(data: bytes) -> int | None:
    """1-based line of the first \\r not followed by \\n (\\r\\n line ends are fine), or None."""
    if b"\r" not in data or data.count(b"\r") == data.count(b"\r\n"):
        return None
    pos = data.find(b"\r")
    while data[pos + 1 : pos + 2] == b"\n":
        pos = data.find(b"\r", pos + 1)
    return data.count(b"\n", 0, pos) + 1


def _parse(data: bytes) -> tuple[pa.Table, list[tuple[int, str]]]:
    """Every field as bytes (no UTF-8 check: junk must become a row error, not a crash); rows with
    the wrong field count are set aside as (1-based line, what is wrong). Blank lines stay rows (of
    empty fields), so table rows and lines correspond."""
    if data.isascii():  # as Criteo's files are
        return _parse_arrow(data)
    # pyarrow decodes a malformed row's text as UTF-8 for its handler, and fails on other bytes
    return _parse_by_line(data)


def _parse_by_line(data: bytes) -> tuple[pa.Table, list[tuple[int, str]]]:
    """_parse, counting each line's fields here first: slower, for the chunks pyarrow fails on."""
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    kept, wrong_width = [], []
    for number, line in enumerate(lines, start=1):
        fields = line.count(b"\t") + 1
        if fields == NUM_FIELDS or line in (b"", b"\r"):  # a blank line is a row (of empty fields)
            kept.append(line)
        else:
            text = line.decode("utf-8", "backslashreplace")
            wrong_width.append((number, _field_count_problem(fields, text)))
    table, more = _parse_arrow(b"".join(line + b"\n" for line in kept))
    if more:
        raise RuntimeError(f"pyarrow set aside rows of {NUM_FIELDS} fields: {more[:3]}")
    return table, wrong_width


def _parse_arrow(data: bytes) -> tuple[pa.Table, list[tuple[int, str]]]:
    """_parse by pyarrow alone: it sets rows of the wrong field count aside."""
    wrong_width: list[tuple[int, str]] = []

    def on_invalid(row: pa_csv.InvalidRow) -> str:
        if row.number is None or row.number < 1:
            raise RuntimeError("pyarrow did not report the line of a malformed row")
        wrong_width.append((int(row.number), _field_count_problem(row.actual_columns, row.text)))
        return "skip"

    if not data:
        return pa.table({name: pa.array([], pa.binary()) for name in FIELD_NAMES}), wrong_width
    table = pa_csv.read_csv(
        io.BytesIO(data),
        read_options=pa_csv.ReadOptions(
            column_names=list(FIELD_NAMES),
            use_threads=False,
            block_size=max(1 << 20, len(data) + 1),
        ),
        parse_options=pa_csv.ParseOptions(
            delimiter="\t",
            quote_char=False,
            ignore_empty_lines=False,
            invalid_row_handler=on_invalid,
        ),
        convert_options=pa_csv.ConvertOptions(
            column_types={name: pa.binary() for name in FIELD_NAMES}, strings_can_be_null=False
        ),
    )
    return table, wrong_width


def _field_count_problem(fields: int, text: str) -> str:
    """Why a line of `fields` tab-separated fields is bad, with a guess at what the file is when
    the count says it (Criteo's test.txt: no label column; no tab at all: another separator)."""
    problem = f"expected {NUM_FIELDS} tab-separated fields, found {fields}"
    if fields == NUM_FIELDS - 1:
        return (
            f"{problem}: no label column? (Criteo's unlabeled test.txt has {NUM_FIELDS - 1}; "
            "only labeled data, train.txt or day_N, can be preprocessed)"
        )
    if fields == 1 and "," in text:
        return f"{problem}: no tab but commas; the fields must be tab-separated, not by commas"
    if fields == 1:
        return f"{problem}: no tab in the line; the fields must be tab-separated"
    return problem


@dataclass(frozen=True, eq=False)
class _Checked:
    """A parsed range, validated: per row the first problem, and the values of good fields."""

    bad: np.ndarray  # bool [n]
    problem: np.ndarray  # int16 [n]: index into problems of the row's first bad field, -1 if none
    problems: tuple[tuple[int, str], ...]  # (field index, what is wrong)
    labels: np.ndarray  # int32 [n]
    dense: np.ndarray  # int64 [n, 13], missing and bad fields 0
    values: np.ndarray  # int64 [n, 26] hex values, -1 missing


def _validate(columns: list[pa.ChunkedArray], int32_dense: bool, hex_prefix_possible: bool = True) -> _Checked:
    """hex_prefix_possible: whether a value may hold an x (the caller's chunk holds an 'x' or 'X'
    byte somewhere); without one, a column Arrow casts to int64 whose values are at most 18 bytes
    long keeps to INT_PATTERN and the regex is not run (Criteo's hex ids have no x)."""
    n = len(columns[0])
    problem = np.full(n, -1, dtype=np.int16)
    problems: list[tuple[int, str]] = []

    def mark(mask: np.ndarray, field_index: int, what: str) -> None:
        if mask.any():
            problem[mask & (problem < 0)] = len(problems)
            problems.append((field_index, what))

    label_col = columns[0]
    labels_ok = pc.is_in(label_col, value_set=pa.array([b"0", b"1"])).to_numpy(zero_copy_only=False)
    mark(~labels_ok, 0, "label must be 0 or 1")
    labels = pc.equal(label_col, b"1").to_numpy(zero_copy_only=False).astype(np.int32)
    dense = np.empty((n, NUM_DENSE_FEATURES), dtype=np.int64)
    for j in range(NUM_DENSE_FEATURES):
        col = columns[1 + j]
        filled = pc.if_else(pc.equal(col, b""), b"0", col)
        # The rule decides, for every value: Arrow's cast alone also takes "0x10" and 19-digit
        # values, so a chunk's verdict would depend on its other rows. What the cast takes beyond
        # the rule needs an x or more than 18 bytes; without either (every Criteo chunk) the cast
        # is the rule, and the regex (4x the cast's time) runs only where it could differ.
        try:
            as_int = pc.cast(filled, pa.int64())
            exact = not hex_prefix_possible and _longest(filled) <= 18
        except pa.ArrowInvalid:
            as_int, exact = None, False
        if not exact:
            ok = pc.match_substring_regex(filled, INT_PATTERN).to_numpy(zero_copy_only=False)
            if not ok.all():
                mark(~ok, 1 + j, "not an integer")
                filled = pc.if_else(pa.array(ok), filled, b"0")
                as_int = None
            if as_int is None:
                as_int = pc.cast(filled, pa.int64())
        dense[:, j] = as_int.to_numpy(zero_copy_only=False)
        if int32_dense:
            outside = (dense[:, j] < INT32_MIN) | (dense[:, j] > INT32_MAX)
            mark(
                outside,
                1 + j,
                "out of int32 range, which TorchRec's transform stores dense values in",
            )
    values, hex_bad = _hex_columns(columns[1 + NUM_DENSE_FEATURES :])
    for t in range(NUM_SPARSE_FEATURES):
        mark(hex_bad[:, t], 1 + NUM_DENSE_FEATURES + t, "not a hex id of at most 8 digits")
    return _Checked(problem >= 0, problem, tuple(problems), labels, dense, values)


def _longest(column: pa.ChunkedArray | pa.Array) -> int:
    """Bytes in the column's longest value; 0 for a column of no rows (every line of a chunk can
    be set aside for its field count, e.g. Criteo's unlabeled test.txt)."""
    longest = pc.max(pc.binary_length(column)).as_py()
    return 0 if longest is None else int(longest)


def _why_bad(row: int, columns: list[pa.ChunkedArray], checked: _Checked) -> str:
    if all(len(col[row].as_py()) == 0 for col in columns):
        return f"empty line (expected {NUM_FIELDS} tab-separated fields)"
    field_index, what = checked.problems[checked.problem[row]]
    value = columns[field_index][row].as_py().decode("utf-8", "backslashreplace")
    shown = repr(value if len(value) <= 40 else value[:40] + "...")
    return f"field {FIELD_NAMES[field_index]}: {what}, got {shown}"


def _hex_columns(columns: list[pa.ChunkedArray]) -> tuple[np.ndarray, np.ndarray]:
    """Hex strings -> int64 values [n, 26] (empty -> -1) and a bad mask, vectorized over bytes."""
    n = len(columns[0])
    values = np.empty((n, len(columns)), dtype=np.int64)
    bad = np.zeros((n, len(columns)), dtype=bool)
    for t, column in enumerate(columns):
        arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + n + 1]
        data_buf = arr.buffers()[2]
        data = (
            np.frombuffer(data_buf, dtype=np.uint8)
            if data_buf is not None
            else np.zeros(0, np.uint8)
        )
        # 8 zero bytes in front, so the 8 bytes ending at any string's end can be read.
        data = np.concatenate([np.zeros(8, np.uint8), data])
        lengths = np.diff(offsets)
        last8 = np.lib.stride_tricks.sliding_window_view(data, 8)[offsets[1:]]  # [n, 8] copy
        if ((lengths == 8) | (lengths == 0)).all():
            value, ok = _hex8(last8)
        else:
            value, ok = _hex_any_length(last8, lengths)
        bad[:, t] = (lengths > 0) & ~ok
        values[:, t] = np.where((lengths == 0) | ~ok, -1, value)
    return values, bad


def _hex8(text: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of exactly 8 ASCII hex digits -> (value, valid), as 64-bit SWAR arithmetic."""
    is_digit = (text - np.uint8(48)) < 10  # '0'..'9' (uint8 arithmetic wraps below '0')
    is_letter = ((text | np.uint8(0x20)) - np.uint8(97)) < 6  # 'a'..'f' or 'A'..'F'
    ok = (is_digit | is_letter).view(np.uint64)[:, 0] == np.uint64(0x0101010101010101)
    x = text.view(np.uint64)[:, 0]  # little-endian: the first character is the lowest byte
    # Each byte -> its digit: the low nibble, plus 9 for letters (bit 6 set in 'A'-'F', 'a'-'f').
    x = (x & np.uint64(0x0F0F0F0F0F0F0F0F)) + np.uint64(9) * (
        (x >> np.uint64(6)) & np.uint64(0x0101010101010101)
    )
    # Pairs of digits -> bytes (first digit high), then pairs of bytes, then pairs of 16-bit words.
    x = ((x & np.uint64(0x000F000F000F000F)) << np.uint64(4)) | (
        (x & np.uint64(0x0F000F000F000F00)) >> np.uint64(8)
    )
    x = ((x & np.uint64(0x000000FF000000FF)) << np.uint64(8)) | (
        (x & np.uint64(0x00FF000000FF0000)) >> np.uint64(16)
    )
    x = ((x & np.uint64(0xFFFF)) << np.uint64(16)) | ((x >> np.uint64(32)) & np.uint64(0xFFFF))
    return x.astype(np.int64), ok


def _hex_any_length(last8: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """General case: 1..8 digits right-aligned in last8 (longer strings are invalid)."""
    digits = NIBBLES[last8].astype(np.int64)  # -1 where not a hex digit
    digits[np.arange(8) < (8 - lengths)[:, None]] = 0  # bytes before the string's start
    ok = (lengths <= 8) & (digits >= 0).all(axis=1)
    return digits @ (16 ** np.arange(7, -1, -1, dtype=np.int64)), ok


# ---- command line --------------------------------------------------------------------------------
@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM (a scheduler's stop, `kill`) raises SystemExit in the main thread, so a run stops
    as on Ctrl-C: it saves its resume state and leaves its work folder for the next run."""

    def on_sigterm(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        # None: a handler not installed from Python, which cannot be put back from here
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="recsearch data preprocess",
        description="Criteo TSV (Kaggle train.txt, or Terabyte day_0 day_1 ...) -> TorchRec npy "
        "layout (docs/DATA.md, 'Preprocessing Criteo TSV').",
    )
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        type=Path,
        help="train.txt, or day_0 day_1 ... in day order",
    )
    parser.add_argument("--out", required=True, type=Path, help="output dataset directory")
    parser.add_argument(
        "--days", type=int, default=None, help="day files a single input is cut into (default 7)"
    )
    parser.add_argument(
        "--dense-transform",
        choices=layout.DENSE_TRANSFORMS,
        default="log1p",
        help="log1p: log(1 + max(x, 0)) (default); torchrec: log(x - min(file) + 2)",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--hash-size",
        **list_flag(int),
        metavar="N",
        help="one table size, or 26 (comma-separated): id = 1 + value mod (N - 1), 0 = missing",
    )
    group.add_argument(
        "--vocab-threshold",
        type=int,
        metavar="K",
        help="values seen >= K times get ids 1.. (two passes; DIR/vocab_{t}.npy), others 0",
    )
    group.add_argument(
        "--vocab-from",
        type=Path,
        metavar="DIR",
        help="map ids with the vocabularies of an earlier --vocab-threshold dataset",
    )
    parser.add_argument(
        "--skip-bad-rows", action="store_true", help="skip and count malformed rows"
    )
    parser.add_argument("--workers", type=int, default=None, help="processes (default: the CPUs this process may use: affinity and cgroup quota)")
    parser.add_argument(
        "--chunk-mb", type=float, default=32.0, help="input MiB per work item (default 32)"
    )
    parser.add_argument("--force", action="store_true", help="replace a dataset already in --out")
    parser.add_argument(
        "--restart",
        action="store_true",
        help="start over: delete the work folder a killed or interrupted run left for resuming",
    )
    parser.add_argument(
        "--checkpoint-s",
        type=float,
        default=30.0,
        metavar="S",
        help="save the resume state at most every S seconds, and after each input file "
        "(default 30; 0: after every chunk)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.days is not None and len(args.input) > 1:
        parser.error("--days applies to a single input; several inputs are one day each")
    try:
        options = PreprocessOptions(
            days=7 if args.days is None else args.days,
            dense_transform=args.dense_transform,
            hash_size=tuple(args.hash_size) if args.hash_size else None,
            vocab_threshold=args.vocab_threshold,
            vocab_from=args.vocab_from,
            skip_bad_rows=args.skip_bad_rows,
            workers=args.workers,
            chunk_bytes=max(1, int(args.chunk_mb * (1 << 20))),
            force=args.force,
            progress=not args.no_progress,
            checkpoint_s=args.checkpoint_s,
            restart=args.restart,
        )
        with _terminate_as_exit():
            meta = preprocess(args.input, args.out, options)
    except (PreprocessError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"recsearch data preprocess: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the machine's (a full disk): preprocess() kept what it could resume
        print(f"recsearch data preprocess: {err}; {args.out} was not changed", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemExit) as err:
        print(
            f"recsearch data preprocess: interrupted; {args.out} was not changed",
            file=sys.stderr,
        )
        if isinstance(err, KeyboardInterrupt):
            return 130
        return err.code if isinstance(err.code, int) else 1  # SIGTERM: 143 (_terminate_as_exit)
    seconds = float(meta.extra["preprocess_s"])  # type: ignore[arg-type]
    print(
        f"wrote {meta.total_rows:,} rows in {meta.num_days} days to {args.out} in {seconds:.1f}s "
        f"({meta.total_rows / max(seconds, 1e-9):,.0f} rows/s, {meta.extra['workers']} workers)"
    )
    if meta.extra["bad_rows_skipped"]:
        print(f"skipped {meta.extra['bad_rows_skipped']:,} malformed rows, e.g.:")
        for example in meta.extra["bad_row_examples"]:  # type: ignore[attr-defined]
            print(f"  {example}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
