"""recsearch's progress output through the logging module: one format, levels, one switch.

Every component logs under the `recsearch` logger (`recsearch.train`, `recsearch.search`, ...) and
its messages say which component they are from (`[recsearch train] step 50/400 ...`, `[search]
trial 3 ...`). `configure` gives that logger one handler (standard output, the message as it is)
at a level: `recsearch --log-level warning ...` (or the environment's RECSEARCH_LOG_LEVEL, which a
search's trial processes inherit) keeps only warnings and errors; `debug` shows more. A program
that embeds recsearch and configures logging itself simply does not call `configure`.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

LEVELS = ("debug", "info", "warning", "error")
LEVEL_ENV = "RECSEARCH_LOG_LEVEL"
ROOT = "recsearch"
FORMAT = "%(message)s"  # the message names its component
TORCH_FX_TRACE_LOGGER = "torch.fx._symbolic_trace"


class _Handler(logging.StreamHandler):
    """recsearch's own handler (so that configure replaces it instead of adding another). Without
    a stream of its own it writes to whatever sys.stdout is when a record comes: an in-process
    trial's output, redirected to its train.log, goes there, and the search's lines stay where
    they were."""

    def __init__(self, stream: TextIO | None = None):
        super().__init__(stream if stream is not None else sys.stdout)
        self._follows_stdout = stream is None

    def emit(self, record: logging.LogRecord) -> None:
        if self._follows_stdout:
            self.stream = sys.stdout
        super().emit(record)


def level_from_env() -> str:
    """The level RECSEARCH_LOG_LEVEL names (info when unset); a bad value is an error naming it."""
    level = os.environ.get(LEVEL_ENV, "info").lower()
    if level not in LEVELS:
        raise ValueError(f"{LEVEL_ENV}={level!r}: expected one of {', '.join(LEVELS)}")
    return level


def configure(level: str | None = None, stream: TextIO | None = None) -> None:
    """Send recsearch's log records at `level` (default: RECSEARCH_LOG_LEVEL, else info) and
    above to `stream` (default: standard output, as it is when each record is written). Called by
    every command's main; calling it again replaces the handler."""
    level = (level or level_from_env()).lower()
    if level not in LEVELS:
        raise ValueError(f"log level {level!r}: expected one of {', '.join(LEVELS)}")
    root = logging.getLogger(ROOT)
    for handler in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(handler)
    handler = _Handler(stream)
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
    # TorchRec's modules call torch.fx's is_fx_tracing, which warns once per process (on every
    # train, stats and trial) about an API change that concerns TorchRec, not the user: shown at
    # debug only
    logging.getLogger(TORCH_FX_TRACE_LOGGER).setLevel(logging.DEBUG if level == "debug" else logging.ERROR)


def get(component: str) -> logging.Logger:
    """The logger of one component (`train`, `search`, ...)."""
    return logging.getLogger(f"{ROOT}.{component}")
