"""Where a dataset is built and how it replaces what is there: the output directory of
`recsearch data preprocess` and `recsearch data synth`.

A run builds the dataset in `<out>.incomplete-<pid>` beside the output directory (the same
filesystem, so the final move is a rename) and, once meta.json is written there, swaps it in
(`swap_in`). See the comment above WORK_TAG for every step and what a kill at each one leaves.
Needs no pyarrow: `data synth` runs where only numpy is installed (the GPU machine).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from recsearch.data import layout
from recsearch.data.preprocess_resume import RESUME_FILE

DATASET_FILE = re.compile(
    r"(day_\d+_(dense|sparse|labels|sparse_multi_hot)\.npy|vocab_\d+\.npy|meta\.json)"
)


# A run builds the dataset in `<out>.incomplete-<pid>` beside the output directory (the same
# filesystem, so the final move is a rename) and, once meta.json is written there, swaps it in:
#   1. rename <out> to <out>.replaced-<pid>   (the old dataset, whole, under a clear name)
#   2. rename <out>.incomplete-<pid> to <out> (the new dataset, whole)
#   3. move the user's other files (not dataset files) from the old folder into the new one, and
#      delete the old folder.
# A dataset directory is therefore either the old dataset or the new one, complete. A run killed
# before step 2 leaves the old dataset in place and a `.incomplete-<pid>` folder that the next run
# resumes (it holds a resume state of the same inputs and options: recsearch.data.preprocess_resume)
# or deletes (first renamed to `<out>.incomplete-<its own pid>.discard`: discard);
# killed between 1 and 2 (out is missing), the next run renames the old dataset back; killed in
# step 3, the next run finishes it. Leftovers of a process that is still alive (a concurrent run)
# are not touched.
WORK_TAG = ".incomplete-"
DISCARD_TAG = ".discard"  # `<out>.incomplete-<pid>.discard`: a dead run's folder being deleted
REPLACED_TAG = ".replaced-"
STATS_FILE = "stats.json"  # `recsearch data stats`' usual output beside the dataset


def target_dir(out: Path) -> Path:
    """The directory that is swapped: out as an absolute path, a symlink resolved."""
    absolute = Path(os.path.abspath(out))
    return absolute.resolve() if absolute.is_symlink() else absolute


def is_dataset_file(name: str) -> bool:
    """A file of a dataset (day files, vocabularies, meta.json) or a partial one."""
    return bool(DATASET_FILE.fullmatch(name.removesuffix(layout.PARTIAL_SUFFIX)))


def check_out_dir(out: Path, target: Path, force: bool) -> None:
    """Refuse to replace a dataset without force; refuse what cannot be swapped by renames."""
    if not target.exists():
        return
    if not target.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if os.path.ismount(target):
        raise ValueError(
            f"{out} is a mount point: a dataset is built beside its output directory and moved "
            "into place by renaming, so use a directory inside it, e.g. --out "
            f"{out / 'dataset'}"
        )
    ours = [p for p in target.iterdir() if DATASET_FILE.fullmatch(p.name)]
    if ours and not force:
        what = (
            "a finished dataset"
            if (target / layout.META_FILE).exists()
            else "dataset files without meta.json (an unfinished dataset, or TorchRec's own output)"
        )
        raise FileExistsError(f"{out} already holds {what}; pass --force to replace it")


def work_path(target: Path) -> Path:
    return target.with_name(f"{target.name}{WORK_TAG}{os.getpid()}")


def make_work_dir(target: Path) -> Path:
    work = work_path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if work.exists():  # left by an earlier call in this very process
            shutil.rmtree(work)
        work.mkdir()
    except OSError as err:
        raise ValueError(
            f"cannot create {work} beside the output directory (the dataset is built there and "
            f"moved into place when complete): {err}"
        ) from err
    return work


@dataclass(frozen=True)
class OutputBuild:
    """A dataset being built beside its output directory, to be swapped in whole (above); used by
    `data synth` as by preprocess."""

    out: Path  # the output directory as given
    target: Path  # the directory that is swapped (out absolute, a symlink resolved)
    work: Path  # `<target>.incomplete-<pid>`: every file is written here


def begin_output(out_dir: Path | str, force: bool) -> OutputBuild:
    """Finish or undo what killed runs left beside out_dir, refuse to replace a dataset without
    force, and make the work folder."""
    out = Path(out_dir)
    target = target_dir(out)
    recover(target)
    check_out_dir(out, target, force)
    return OutputBuild(out, target, make_work_dir(target))


def finish_output(build: OutputBuild, force: bool) -> None:
    """Swap the finished work folder (meta.json written last) in for the output directory."""
    swap_in(build.work, build.out, build.target, force)


def abandon_output(build: OutputBuild) -> None:
    """Delete the work folder of a run that failed or was interrupted."""
    shutil.rmtree(build.work, ignore_errors=True)


def swap_in(work: Path, out: Path, target: Path, force: bool) -> None:
    """Move the finished dataset in `work` to `target`, replacing what is there (see above)."""
    if not target.exists():
        os.rename(work, target)
        return
    # A concurrent run may have put a dataset there since the check at the start.
    check_out_dir(out, target, force)
    old = target.with_name(f"{target.name}{REPLACED_TAG}{os.getpid()}")
    if old.exists():
        shutil.rmtree(old)
    os.rename(target, old)
    try:
        os.rename(work, target)
    except BaseException:
        os.rename(old, target)
        raise
    carry_over(old, target)
    shutil.rmtree(old)


def carry_over(old: Path, target: Path) -> None:
    """Move the files of the old output directory that are not dataset files into target, except
    a stats.json that records other data than target's (`data stats` stamps what it described):
    it goes with the old dataset."""
    for entry in old.iterdir():
        if entry.name == STATS_FILE and _stale_stats(entry, target):
            print(f"recsearch data: {entry.name} described the replaced dataset (other rows or tables): "
                  f"not kept; run `recsearch data stats {target} --out {target / STATS_FILE}` again",
                  file=sys.stderr)
            continue
        if not is_dataset_file(entry.name) and not (target / entry.name).exists():
            os.rename(entry, target / entry.name)


def _stale_stats(stats_path: Path, target: Path) -> bool:
    try:
        meta = layout.read_meta(target)
    except (FileNotFoundError, ValueError):
        return False
    return layout.stats_describe_other_data(stats_path, meta)


def recover(target: Path, keep_resumable: bool = False) -> list[Path]:
    """Finish or undo what killed runs left beside target (see above). Work folders of dead
    processes are deleted, except, with keep_resumable, those holding a resume state: they are
    returned, for the caller to resume or delete."""
    resumable: list[Path] = []
    parent = target.parent
    if not parent.is_dir():
        return resumable
    for tag in (REPLACED_TAG, WORK_TAG):  # the old dataset first: it may have to move back
        for leftover in sorted(parent.glob(f"{glob.escape(target.name)}{tag}*")):
            rest = leftover.name[len(target.name) + len(tag) :]
            pid = rest.removesuffix(DISCARD_TAG) if tag == WORK_TAG else rest
            if not pid.isdigit() or not leftover.is_dir() or alive(int(pid)):
                continue
            if tag == WORK_TAG:
                if keep_resumable and pid == rest and (leftover / RESUME_FILE).is_file():
                    resumable.append(leftover)
                else:
                    discard(leftover, target)
            elif not target.exists():
                os.rename(leftover, target)
                print(
                    f"recsearch data: {target} was missing and {leftover.name} held "
                    "the dataset a killed run was replacing: moved it back",
                    file=sys.stderr,
                )
            else:
                carry_over(leftover, target)
                shutil.rmtree(leftover, ignore_errors=True)
    return resumable


def discard(folder: Path, target: Path) -> None:
    """Delete the work folder of a dead run. Another run may be taking the same folder over to
    resume it at this moment, so it is first taken by a rename to a name of this process's
    (`<work folder>.discard`; atomic: of two renames one gets the folder whole, the other
    FileNotFoundError), never deleted under a run that resumes it."""
    own = work_path(target)
    taken = own.with_name(own.name + DISCARD_TAG)
    if folder not in (own, taken):  # a folder named after this (live) process: no other run's
        shutil.rmtree(taken, ignore_errors=True)
        try:
            os.rename(folder, taken)
        except FileNotFoundError:
            return  # another run took it first
        except OSError:  # cannot be renamed (not ours): delete what we may, as before
            taken = folder
        folder = taken
    with contextlib.suppress(OSError):  # first: never resumable once half deleted
        (folder / RESUME_FILE).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is not writing there now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except OverflowError:
        return False
    return True


