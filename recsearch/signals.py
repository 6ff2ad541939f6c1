"""SIGTERM taken as Ctrl-C: a scheduler's stop (Slurm preemption, `kill`, Kubernetes ending a
pod) ends a command the way an interrupt does, through its cleanup, instead of killing it
where it stands."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

TERMINATED_EXIT = 143  # 128 + SIGTERM
INTERRUPTED_EXIT = 130  # 128 + SIGINT


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so it leaves the way Ctrl-C does."""


def interrupt_exit_code(err: KeyboardInterrupt) -> int:
    """The exit code of a shell command ended by that signal: 143 for SIGTERM, 130 for Ctrl-C."""
    return TERMINATED_EXIT if isinstance(err, Terminated) else INTERRUPTED_EXIT


def interrupt_name(err: KeyboardInterrupt) -> str:
    return "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted (Ctrl-C)"


@contextlib.contextmanager
def sigterm_as_interrupt(take_over: bool = False) -> Iterator[bool]:
    """While inside, SIGTERM raises Terminated in the main thread; a second SIGTERM while the
    first is handled is ignored; the previous handler is restored on the way out.

    Yields whether it took SIGTERM over: only in the main thread, and, unless `take_over` (the
    program that owns the process: the search), only where nobody else handles it already (a
    search running a trial in its own process keeps its handler: the interrupt is the search's)."""
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or (not take_over and previous != signal.SIG_DFL):
        yield False
        return
    terminating = threading.Event()

    def on_sigterm(signum: int, frame: Any) -> None:
        if terminating.is_set():
            return
        terminating.set()
        raise Terminated()

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield True
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def handlers_kept(during: Any = None) -> Iterator[None]:
    """The SIGINT and SIGTERM handlers as they were before the block, whatever it installs (a
    library that sets its own, as torchx's local scheduler does when it is created). `during`: a
    handler (signal.SIG_IGN, ...) both signals get while inside. Main thread only (elsewhere
    signals are neither delivered nor settable): outside it nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    if during is not None:
        for sig in previous:
            signal.signal(sig, during)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def interrupts_ignored() -> contextlib.AbstractContextManager[None]:
    """SIGINT and SIGTERM ignored while inside: a journal line written after an interrupt is not
    cut short by another."""
    return handlers_kept(during=signal.SIG_IGN)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM that come while inside wait for the block to end (a checkpoint being
    written completes, so the newest one is whole: a scheduler's SIGTERM leaves time for that),
    then are raised again, to whatever handled them before. A second Ctrl-C meanwhile acts at once
    (a save that hangs). Signals ignored before stay ignored; outside the main thread, nothing
    changes. A block that raises drops them: its error ends the run anyway."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and signal.SIGINT in caught:
            raise KeyboardInterrupt()
        caught.append(signum)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous = {sig: handler for sig, handler in previous.items() if handler not in (signal.SIG_IGN, None)}
    for sig in previous:
        signal.signal(sig, hold)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for sig in dict.fromkeys(caught):
        signal.raise_signal(sig)
