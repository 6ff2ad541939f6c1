"""Worker processes that end with the process that started them.

`recsearch data preprocess` parses chunks in a ProcessPoolExecutor whose workers are forked by a
forkserver. When the preprocess process itself is SIGKILLed (the OOM killer, `kill -9`, a
scheduler), nothing tells those workers: each holds the write end of its own task queue (so its
read never sees EOF) and a copy of the forkserver's liveness pipe (so the forkserver never exits
either), and they stay, with a chunk's memory each, until the machine reboots. Linux's parent
death signal does not help: their parent is the forkserver, not the process that died.

`exit_with(parent_pid)`, the pool's initializer, starts a daemon thread in each worker that waits
for parent_pid to exit (a pidfd, Linux >= 5.3; elsewhere a 1 s poll) and then ends the worker
with os._exit, without running any cleanup of the parent's state. Standard library only.
"""

from __future__ import annotations

import os
import select
import threading
import time

PARENT_GONE_EXIT = 3  # a worker's exit status when the process it worked for has died
POLL_INTERVAL_S = 1.0  # where there is no pidfd


def exit_with(parent_pid: int) -> None:
    """End this process once parent_pid has exited (a pool initializer; returns at once)."""
    threading.Thread(target=_wait_then_exit, args=(parent_pid,), name="recsearch-parent-watch",
                     daemon=True).start()


def _wait_then_exit(parent_pid: int) -> None:
    try:
        pidfd = os.pidfd_open(parent_pid)  # readable once the process has exited
    except (AttributeError, OSError):  # no pidfd here, or the parent is already gone
        while _alive(parent_pid):
            time.sleep(POLL_INTERVAL_S)
    else:
        select.select([pidfd], [], [])
    os._exit(PARENT_GONE_EXIT)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
