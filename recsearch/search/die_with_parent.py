"""`python -m recsearch.search.die_with_parent PARENT_PID COMMAND [ARG ...]`: become COMMAND (exec,
same pid) after asking Linux to SIGKILL this process when PARENT_PID, its parent, dies.

SubprocessRunner starts each trial through this, so a trial's trainer dies with the search
process (SIGKILL included) and never writes into a trial directory a resumed search retries. The
death signal is set here, in the trial's own process at its start, not in a `preexec_fn` between
fork and exec: the search has a heartbeat thread running, and Python code after fork in a
threaded process may deadlock. PR_SET_PDEATHSIG survives the exec into COMMAND. If the parent is
already gone when this starts (it died between the fork and the request), the trial never runs.
Standard library only: it runs before anything else is imported.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_GONE_EXIT = 3  # COMMAND not run: the process that started it had already died


def request_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask Linux to send sig to this process when its parent thread ends; False where not Linux
    or the call failed."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return False
    return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def command_for(parent_pid: int, command: list[str]) -> list[str]:
    """The argument list that runs command as a child of parent_pid which dies with it."""
    return [sys.executable, "-m", "recsearch.search.die_with_parent", str(parent_pid), *command]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or not args[0].isdigit():
        print("usage: python -m recsearch.search.die_with_parent PARENT_PID COMMAND [ARG ...]", file=sys.stderr)
        return 2
    parent_pid, command = int(args[0]), args[1:]
    request_parent_death_signal()
    if os.getppid() != parent_pid:
        print(f"recsearch: process {parent_pid} that started this trial has exited; not running it", file=sys.stderr)
        return PARENT_GONE_EXIT
    try:
        os.execvp(command[0], command)
    except OSError as err:
        print(f"recsearch: cannot run {command[0]}: {err}", file=sys.stderr)
        return 127
    return 0  # not reached: execvp returns only by raising


if __name__ == "__main__":
    raise SystemExit(main())
