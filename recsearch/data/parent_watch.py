"""Worker processes that end with the process that started them.

`recsearch data preprocess` parses chunks in a ProcessPoolExecutor whose workers are forked by a
forkserver. When the preprocess process itself is SIGKILLed (the OOM killer, `kill -9`, a
scheduler), nothing tells those workers: each holds the write end of its own task queue (so its
read never sees EOF) and a copy of the forkserver's liveness pipe (so the forkserver never exits
either), and they stay, with a chunk's memory each, until the machine reboots. Linux's parent
death signal does not help: their parent is the forkserver, not the process that died.

`exit_with(parent_pid)`, the pool's initializer, starts a thread in each worker that waits for
parent_pid to exit (a pidfd, Linux >= 5.3; elsewhere a 1 s poll) and then ends the worker with
os._exit, without running any cleanup of the parent's state. A worker that ends normally (the
pool shut down) stops and joins that thread on its way out (a multiprocessing finalizer, which
the worker runs at exit). Standard library only.
"""

from __future__ import annotations

import multiprocessing.util
import os
import select
import threading

PARENT_GONE_EXIT = 3  # a worker's exit status when the process it worked for has died
POLL_INTERVAL_S = 1.0  # where there is no pidfd


class ParentWatch:
    """The thread of exit_with; `stop()` ends it and joins it (idempotent)."""

    def __init__(self, parent_pid: int):
        stop_read, self._stop_write = os.pipe()
        # a function, not a bound method, as the thread's target (the package's thread rule)
        self.thread = threading.Thread(target=_wait_then_exit, args=(parent_pid, stop_read),
                                       name="recsearch-parent-watch", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self._stop_write < 0:
            return
        os.write(self._stop_write, b"x")
        self.thread.join()
        os.close(self._stop_write)
        self._stop_write = -1


def _wait_then_exit(parent_pid: int, stop_read: int) -> None:
    """os._exit once parent_pid has exited; return when stop_read becomes readable first."""
    try:
        pidfd = os.pidfd_open(parent_pid)  # readable once the process has exited
    except (AttributeError, OSError):  # no pidfd here, or the parent is already gone
        pidfd = None
    try:
        if pidfd is None:
            while _alive(parent_pid):
                if select.select([stop_read], [], [], POLL_INTERVAL_S)[0]:
                    return  # stopped
        elif select.select([pidfd, stop_read], [], [])[0] == [stop_read]:
            return  # stopped, the parent alive
    finally:
        os.close(stop_read)
        if pidfd is not None:
            os.close(pidfd)
    os._exit(PARENT_GONE_EXIT)


def exit_with(parent_pid: int) -> ParentWatch:
    """End this process once parent_pid has exited (a pool initializer; returns at once). The
    watch is stopped and joined when this process runs multiprocessing's exit finalizers (a pool
    worker's normal end)."""
    watch = ParentWatch(parent_pid)
    multiprocessing.util.Finalize(watch, watch.stop, exitpriority=0)
    return watch


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
