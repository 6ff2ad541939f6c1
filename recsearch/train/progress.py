"""A run's progress file, for whoever watches it from outside (the search's stall detector, a
liveness probe): `<output_dir>/progress.json`, rewritten while the run works.

The trainer calls `ProgressFile.beat(phase, step)` at every unit of work (a training step, an
evaluation batch, a latency batch size, a checkpoint); at most every `interval_s` that rewrites the
file with one JSON object: {"phase": "train", "step": 1200, "time_s": <unix time>}; when the run
ends, `end()` writes its outcome as the phase ("completed", "stopped", ...). A watcher reads
the file's modification time only: a run whose file has not changed for much longer than the
interval (and whose log has not grown) is stuck, not slow. The beat itself costs one monotonic
clock read when no write is due, so it may sit in the step loop; it never reads the device.

Only rank 0 writes (a collective hang stops rank 0 as well). Writes go to a temporary file that is
renamed over the old one, so a reader never sees half an object; a write that fails (a full disk)
is skipped: the file is advice, never the run's end.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

PROGRESS_FILE = "progress.json"
BEAT_INTERVAL_S = 5.0  # the file is rewritten at most this often


class ProgressFile:
    """`beat()` rewrites `directory/progress.json` when interval_s have passed since the last
    write; directory None: a no-op (ranks other than 0)."""

    def __init__(self, directory: Path | str | None, interval_s: float = BEAT_INTERVAL_S):
        self.path = Path(directory) / PROGRESS_FILE if directory is not None else None
        self.interval_s = interval_s
        self._last_write_s = -math.inf  # monotonic clock
        self._step = 0  # the last step beaten, for end()

    def beat(self, phase: str, step: int) -> None:
        if self.path is None:
            return
        self._step = step
        now_s = time.monotonic()
        if now_s - self._last_write_s < self.interval_s:
            return
        self._last_write_s = now_s
        self._write({"phase": phase, "step": step, "time_s": round(time.time(), 3)})

    def end(self, phase: str) -> None:
        """The run's last word, written now: how it ended (`completed`, `early_stopped`,
        `diverged`, or `stopped` by an error or interrupt) at the last step beaten."""
        if self.path is not None:
            self._write({"phase": phase, "step": self._step, "time_s": round(time.time(), 3)})

    def _write(self, record: dict[str, object]) -> None:
        assert self.path is not None
        temporary = self.path.with_name(f".{PROGRESS_FILE}.{os.getpid()}")
        try:
            temporary.write_text(json.dumps(record) + "\n")
            os.replace(temporary, self.path)
        except OSError:
            pass  # advice only (module doc)


def last_activity_s(directory: Path | str, log_name: str | None = None) -> float | None:
    """The latest modification time (unix seconds) of a run's progress file and, if named, its
    log file in `directory`; None when neither exists yet."""
    times = []
    for name in (PROGRESS_FILE, log_name):
        if name is None:
            continue
        try:
            times.append(os.stat(Path(directory) / name).st_mtime)
        except OSError:
            continue
    return max(times) if times else None
