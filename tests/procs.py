"""Process checks shared by the runner, pool and reliability tests (Linux: reads /proc)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie (a killed child its parent has not reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split()[2] != "Z"
    except FileNotFoundError:  # gone between the two checks
        return False


def all_dead(pids: Iterable[int], timeout: float = 10.0) -> bool:
    """Wait up to timeout for every process to end; whether they all did."""
    pids = list(pids)
    deadline = time.time() + timeout
    while any(pid_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.05)
    return not any(pid_alive(p) for p in pids)


def wait_for_file(path: Path, timeout: float = 120.0) -> Path:
    """Wait until path exists (e.g. a pid file a trial writes); return it."""
    deadline = time.time() + timeout
    while not path.exists() and time.time() < deadline:
        time.sleep(0.05)
    return path


def wait_until(done: Callable[[], bool], timeout_s: float = 120.0, interval_s: float = 0.05) -> bool:
    """Call done() until it returns true or timeout_s pass; whether it did (so a test asserts on
    it, with its own message, instead of looping forever)."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)
    return True


def children_within(pid: int, timeout_s: float = 60.0, ready: Callable[[], bool] = lambda: True) -> list[int]:
    """pid's child processes (pgrep -P), polled until there is at least one and ready() is true,
    or timeout_s pass; then those found ([] if none, or if ready() never was)."""
    found: list[int] = []

    def done() -> bool:
        found[:] = [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                                   text=True).stdout.split()]
        return bool(found) and ready()

    return found if wait_until(done, timeout_s) else []
