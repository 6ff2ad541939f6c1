"""Checkpoint and resume of a training run.

A checkpoint is a directory `<output_dir>/checkpoints/step_<N>/` holding
- the sharded model and both optimizers (fused embedding + dense), written by
  torch.distributed.checkpoint (each rank writes its own shards; ShardedTensors are handled),
  together with the torch RNG state;
- `loop_state.json`: step, epoch, batch position in the epoch, counters and history.

The run's `checkpoints/latest` file names the newest *complete* checkpoint and is replaced
atomically only after every rank finished writing, so a run killed mid-save resumes from the
previous one. Checkpoints are taken between training stretches, when the pipeline holds no batch,
so the data position is exact: resuming replays `iter_from(batch_in_epoch)` of the same epoch
order (the shuffle is a function of seed and epoch, the LR schedule a function of the step).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from recsearch import remote

CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "latest"
LOOP_STATE_FILE = "loop_state.json"
KEEP_CHECKPOINTS = 2


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or does not match the run."""


def save(out_dir: Path | str, step: int, model: torch.nn.Module, optimizer: Any, loop_state: dict) -> Path:
    """Write a checkpoint of every rank's shards (a collective: all ranks call it)."""
    root = Path(out_dir) / CHECKPOINT_DIR
    path = root / f"step_{step:08d}"
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0 and path.exists():
        shutil.rmtree(path)  # a leftover of an interrupted save of this very step
    _barrier()
    state = {"model": model.state_dict(), "optim": optimizer.state_dict(), "rng": {"torch": torch.get_rng_state()}}
    try:
        dcp.save(state, checkpoint_id=str(path))
    except CheckpointException as err:  # not an Exception subclass: convert, keep the cause
        raise CheckpointError(f"writing checkpoint {path} failed: {err}") from err
    if rank == 0:
        remote.write_text(path / LOOP_STATE_FILE, json.dumps(loop_state, allow_nan=True) + "\n")
    _barrier()
    if rank == 0:
        remote.write_text(root / LATEST_FILE, path.name + "\n")
        for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return path


def resolve(resume_from: str, out_dir: Path | str) -> Path:
    """`latest` (the run's newest complete checkpoint) or a checkpoint directory."""
    if resume_from == "latest":
        pointer = Path(out_dir) / CHECKPOINT_DIR / LATEST_FILE
        if not pointer.exists():
            raise CheckpointError(f"resume_from=latest: no checkpoint in {Path(out_dir) / CHECKPOINT_DIR}")
        path = pointer.parent / pointer.read_text().strip()
    else:
        path = Path(resume_from)
    if not (path / LOOP_STATE_FILE).exists() or not (path / ".metadata").exists():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {LOOP_STATE_FILE} or .metadata)")
    return path


def load(path: Path, model: torch.nn.Module, optimizer: Any) -> dict:
    """Restore model, optimizers and RNG in place from `path`; return the loop state."""
    try:
        loop_state = json.loads((path / LOOP_STATE_FILE).read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path / LOOP_STATE_FILE}: corrupt ({err})") from err
    state = {"model": model.state_dict(), "optim": optimizer.state_dict(), "rng": {"torch": torch.get_rng_state()}}
    try:
        dcp.load(state, checkpoint_id=str(path))
    except (CheckpointException, RuntimeError, ValueError, KeyError, OSError) as err:
        raise CheckpointError(f"{path}: cannot restore the run from it ({type(err).__name__}: {err})") from err
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optim"])
    torch.set_rng_state(state["rng"]["torch"])
    return loop_state


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
