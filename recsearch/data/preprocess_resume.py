"""The resume state of `recsearch data preprocess` (recsearch.data.criteo; docs/DATA.md, "Resuming").

The row pass handles its chunks (byte ranges of the inputs) in a fixed order, and the parent
appends each chunk's rows to the day files in that order. Every checkpoint_s seconds and at the end
of each input file it fsyncs the day files and then atomically replaces `resume.json` in the work
folder (`write_state`): the chunks done, the rows of each day file, the counters the rest of the
run needs (lines read per input, max ids, dense minima, bad rows), the size each .partial file had,
and the run's fingerprint (`fingerprint`): the inputs (resolved path, size, mtime_ns) and every
option that changes the output (OUTPUT_OPTIONS; not those in OTHER_OPTIONS).

A later run with the same --out finds a dead process's folder holding that file. When the
fingerprint is exactly its own and the files the state counts are all there (`choose_resumable`),
it takes the folder over, cuts each day file back to the recorded rows (what a killed run appended
after its last state) and goes on with the next chunk: the output is byte for byte that of one
uninterrupted run. Otherwise the folder is deleted, saying why. With --vocab-threshold the state is
first written once the vocabularies are saved, so a resumed run does not count again; torchrec's
dense transform runs after the row pass and replaces each day's raw dense file by its transformed
copy (a rename: the header's dtype says which days are done).

This module holds the state (what it records, how it is written and read, whether a folder may be
resumed); recsearch.data.criteo does the renames and deletions of work folders, and the row pass.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from recsearch.data import layout
from recsearch.types import NUM_SPARSE_FEATURES

if TYPE_CHECKING:
    from recsearch.data.criteo import PreprocessOptions

RESUME_FILE = "resume.json"
RESUME_FORMAT = "recsearch-preprocess-resume"
RESUME_VERSION = 1  # part of the fingerprint: raise it when the same run would write other bytes
# Every PreprocessOptions field is in exactly one of these two (tests/data/test_preprocess_resume.py
# checks it, so that a new option cannot be forgotten): those that change the bytes written, with
# the flag that sets them (the fingerprint's keys), and those that do not.
OUTPUT_OPTIONS = {
    "days": "--days",
    "dense_transform": "--dense-transform",
    "hash_size": "--hash-size",
    "vocab_threshold": "--vocab-threshold",
    "vocab_from": "--vocab-from",
    "skip_bad_rows": "--skip-bad-rows",
    "chunk_bytes": "--chunk-mb (chunk bytes)",  # the chunks are the units of the state
}
OTHER_OPTIONS = frozenset({"workers", "force", "progress", "checkpoint_s", "restart"})


def fingerprint(paths: list[Path], options: PreprocessOptions) -> dict[str, object]:
    """What a resumed run must share with the run it continues (JSON values)."""
    vocab_from = None
    if options.vocab_from is not None:
        root = Path(options.vocab_from)
        vocab_from = {
            "path": str(root.resolve()),
            "files": [_stamp(root / f"vocab_{t}.npy") for t in range(NUM_SPARSE_FEATURES)],
        }
    chosen = {
        "days": options.days if len(paths) == 1 else None,  # several inputs: one day each
        "dense_transform": options.dense_transform,
        "hash_size": list(options.hash_size) if options.hash_size is not None else None,
        "vocab_threshold": options.vocab_threshold,
        "vocab_from": vocab_from,
        "skip_bad_rows": options.skip_bad_rows,
        "chunk_bytes": options.chunk_bytes,
    }
    assert chosen.keys() == OUTPUT_OPTIONS.keys()
    return {"version": RESUME_VERSION, "inputs": [_stamp(p) for p in paths], **chosen}


def _stamp(path: Path) -> dict[str, object]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def fingerprint_differences(old: object, new: dict[str, object]) -> list[str]:
    """How a resume state's fingerprint differs from this run's, in words (empty: the same).
    Every key counts, whether or not it has words of its own."""
    if not isinstance(old, dict) or old.get("version") != new["version"]:
        version = old.get("version") if isinstance(old, dict) else None
        return [f"it was written by another version of preprocess (resume format {version!r})"]
    if old == new:
        return []
    found = []
    old_inputs, new_inputs = old.get("inputs") or [], new["inputs"]
    old_paths = [i.get("path") for i in old_inputs if isinstance(i, dict)]
    new_paths = [i["path"] for i in new_inputs]  # type: ignore[index, union-attr]
    if old_paths != new_paths:
        found.append(f"its inputs were {' '.join(map(str, old_paths))}")
    else:
        for before, now in zip(old_inputs, new_inputs):  # type: ignore[call-overload]
            if before != now:
                found.append(
                    f"input {now['path']} changed since (size {before.get('size')} -> "
                    f"{now['size']}, mtime_ns {before.get('mtime_ns')} -> {now['mtime_ns']})"
                )
    others = sorted((old.keys() | new.keys()) - OUTPUT_OPTIONS.keys() - {"version", "inputs"})
    for key in [*OUTPUT_OPTIONS, *others]:
        before, now = old.get(key), new.get(key)
        if before == now:
            continue
        flag = OUTPUT_OPTIONS.get(key, key)
        if (
            key == "vocab_from"
            and isinstance(before, dict)
            and isinstance(now, dict)
            and before.get("path") == now.get("path")
        ):
            found.append(f"the vocabularies in {flag} {now['path']} changed since")
        else:
            was, is_now = (v["path"] if isinstance(v, dict) else v for v in (before, now))
            found.append(f"{flag} was {was}, now {is_now}")
    return found or ["its fingerprint differs"]


def fresh_progress(num_inputs: int, num_days: int, num_tasks: int) -> dict[str, object]:
    """The resume state's progress of a run that has done nothing yet."""
    return {
        "vocab_done": False,  # the vocabulary pass (--vocab-threshold) is done and saved
        "tasks_total": num_tasks,  # chunks of the row pass
        "tasks_done": 0,  # chunks whose rows are in the day files (the first tasks_done)
        "day_rows": [0] * num_days,
        "files": {},  # .partial file name -> its size when the state was written
        "lines_seen": [0] * num_inputs,  # lines of each input read by the chunks done
        "dense_min": [0] * num_inputs,  # TorchRec's min includes the 0 of missing values
        "max_ids": [0] * NUM_SPARSE_FEATURES,
        "bad_rows": 0,
        "bad_examples": [],
    }


def progress_words(progress: dict[str, object]) -> str:
    """e.g. "1,234 of 5,678 chunks (21%)"."""
    done, total = int(progress["tasks_done"]), int(progress["tasks_total"])  # type: ignore[call-overload]
    words = f"{done:,} of {total:,} chunks ({100 * done // max(total, 1)}%)"
    if progress.get("vocab_done"):
        words += " and the counted vocabularies"
    return words


def partial_sizes(created: list[Path]) -> dict[str, int]:
    """name -> size of each created file's .partial (the vocabularies before the row pass)."""
    return {layout.partial_path(p).name: layout.partial_path(p).stat().st_size for p in created}


class ResumeLog:
    """Writes a run's resume state into its work folder; `state` is the last progress written (or
    the one the run resumed from), None before the first. The caller makes the files the progress
    counts durable before each write."""

    def __init__(
        self,
        work: Path,
        fingerprint: dict[str, object],
        interval_s: float,
        state: dict[str, object] | None,
    ) -> None:
        self.work = work
        self.fingerprint = fingerprint
        self.interval_s = interval_s
        self.state = state
        self._last_write_s = time.monotonic()

    def due(self) -> bool:
        """Whether interval_s have passed since the last write (one clock read)."""
        return self.interval_s <= 0 or time.monotonic() - self._last_write_s >= self.interval_s

    def write(self, progress: dict[str, object]) -> None:
        write_state(
            self.work,
            {"format": RESUME_FORMAT, "fingerprint": self.fingerprint, "progress": progress},
        )
        self.state = progress
        self._last_write_s = time.monotonic()


def write_state(work: Path, state: dict[str, object]) -> None:
    """Atomically replace work/resume.json (written, fsynced, renamed, the folder fsynced)."""
    tmp = work / f"{RESUME_FILE}.tmp"
    with open(tmp, "w") as fh:
        json.dump(state, fh, indent=1)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, work / RESUME_FILE)
    fsync_dir(work)


def remove_state(work: Path) -> None:
    """The folder is no longer resumable (a kill from here on: the next run deletes it)."""
    (work / RESUME_FILE).unlink(missing_ok=True)
    (work / f"{RESUME_FILE}.tmp").unlink(missing_ok=True)  # a killed write's, if any


def read_state(folder: Path) -> dict[str, object] | None:
    """A work folder's resume state, None when it cannot be read."""
    try:
        state = json.loads((folder / RESUME_FILE).read_text())
    except (OSError, ValueError):
        return None
    if (
        not isinstance(state, dict)
        or state.get("format") != RESUME_FORMAT
        or not isinstance(state.get("progress"), dict)
        or not set(fresh_progress(0, 0, 0)) <= set(state["progress"])
    ):
        return None
    return state


def missing_files(folder: Path, progress: dict[str, object]) -> str | None:
    """What of the files a resume state counts on is not in folder (None: all there)."""
    for name, size in dict(progress.get("files") or {}).items():  # type: ignore[call-overload]
        path = folder / name
        if not path.is_file() or path.stat().st_size < size:
            return f"{name} is missing or shorter than its resume state records"
    return None


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def choose_resumable(
    folders: list[Path], fingerprint: dict[str, object], restart: bool
) -> tuple[tuple[Path, dict[str, object]] | None, list[tuple[Path, str]]]:
    """Of the work folders of dead runs that hold a resume state: the one to resume with its
    progress (the fingerprint is this run's, its files are there; of several, the one with the
    most chunks done), or None; and every other folder with a sentence saying why it is deleted
    (restart: all of them)."""

    def chunks_done(state: dict[str, object] | None) -> int:
        try:
            return int(state["progress"]["tasks_done"])  # type: ignore[index]
        except (TypeError, KeyError, ValueError):
            return -1

    states = [(folder, read_state(folder)) for folder in folders]
    states.sort(key=lambda folder_state: -chunks_done(folder_state[1]))  # most progress first
    chosen: tuple[Path, dict[str, object]] | None = None
    rejected: list[tuple[Path, str]] = []
    for folder, state in states:
        if state is None:
            why = "its resume state is unreadable"
        else:
            progress: dict[str, object] = state["progress"]  # type: ignore[assignment]
            if restart:
                words = progress_words(progress)
                rejected.append((folder, f"--restart: deleting {folder} ({words} written by a killed run)"))
                continue
            differences = fingerprint_differences(state.get("fingerprint"), fingerprint)
            if differences:
                why = "; ".join(differences)
            elif (missing := missing_files(folder, progress)) is not None:
                why = missing
            elif chosen is not None:
                why = f"{chosen[0].name} resumes the same run further on"
            else:
                chosen = (folder, progress)
                continue
        rejected.append((folder, f"not resuming {folder}: {why}; deleted it"))
    return chosen, rejected
