"""Spawning test ranks: mp.spawn, with each rank leaving through os._exit once its function
returned.

Why: a rank that finished (results written, process group destroyed) can still abort while the
interpreter shuts down: "terminate called without an active exception", SIGABRT, from a C++
thread object still joinable when static objects are destroyed. Seen in about 1 of 30 two-rank
runs on this machine, in different tests, loaded or quiet, and it fails the test although the
rank's work is done. Leaving through recsearch.cli.hard_exit(0) (os._exit after flushing) after
a normal return skips that teardown; a rank that raises still exits through mp.spawn's error
path, so its traceback is reported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.multiprocessing as mp

from recsearch.cli import hard_exit


def spawn_ranks(fn: Callable[..., None], args: Sequence[Any], nprocs: int = 2) -> None:
    """fn(rank, *args) on nprocs spawned ranks; raises as mp.spawn does when a rank fails."""
    mp.spawn(_run_then_exit, args=(fn, tuple(args)), nprocs=nprocs, join=True)


def _run_then_exit(rank: int, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
    fn(rank, *args)
    hard_exit(0)
