"""A run's output folder: a fresh run never writes over another run's work.

`recsearch train` writes checkpoints/, tb/, result.json and progress.json into output_dir. A run
that does not resume (resume_from unset) in a folder that already holds another run's
checkpoints or finished result would mix its TensorBoard events with the old ones, replace the
old result and, as checkpoints are kept by recency, end the old run's resumability: it is refused
before anything is written, unless `overwrite_output: true` says to clear that run first. A
folder whose earlier run failed before it wrote a checkpoint holds nothing worth keeping and is
reused as it is (the usual retry after fixing a typo).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch.distributed as dist

from recsearch.train.checkpoint import CHECKPOINT_DIR, latest_named
from recsearch.train.progress import PROGRESS_FILE
from recsearch.types import RESULT_FILE

TENSORBOARD_DIR = "tb"
FINISHED_STATUSES = ("completed", "early_stopped", "diverged")  # a result.json worth keeping


class RunDirInUse(ValueError):
    """A fresh run's output_dir holds another run's work; nothing was written."""


def previous_run(out: Path) -> str | None:
    """What of another run `out` holds that a fresh run would lose, in words; None if nothing."""
    found = []
    checkpoints = out / CHECKPOINT_DIR
    steps = sorted(p.name for p in checkpoints.glob("step_*") if p.is_dir()) if checkpoints.is_dir() else []
    if steps:
        named = latest_named(out)
        newest = named.name if named is not None else steps[-1]
        found.append(f"{len(steps)} checkpoint{'s' if len(steps) > 1 else ''} (latest: {newest})")
    status = finished_status(out)
    if status is not None:
        found.append(f"the result of a {status} run ({RESULT_FILE})")
    return " and ".join(found) or None


def finished_status(out: Path) -> str | None:
    """The status in `out`'s result.json if it is a finished run's (completed, early_stopped,
    diverged); None for none, a failed run's, or an unreadable one (nothing worth keeping)."""
    try:
        status = json.loads((out / RESULT_FILE).read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None
    return status if status in FINISHED_STATUSES else None


def prepare_fresh_run(out: Path, overwrite: bool, rank: int) -> None:
    """Before a run that does not resume writes anything: refuse a folder holding another run's
    work (RunDirInUse, on every rank alike), or with `overwrite` clear that work (rank 0; the
    other ranks wait for it)."""
    found = previous_run(out)
    if found is None:
        return
    if not overwrite:
        raise RunDirInUse(
            f"output_dir {out} already holds another run: {found}. Continue that run with resume_from=latest, "
            "train into a new output_dir, or set overwrite_output=true to delete its checkpoints, tb/ and "
            f"{RESULT_FILE} first"
        )
    if rank == 0:
        for name in (CHECKPOINT_DIR, TENSORBOARD_DIR):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in (RESULT_FILE, PROGRESS_FILE):
            (out / name).unlink(missing_ok=True)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
