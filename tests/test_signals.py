"""recsearch.signals: SIGTERM taken as Ctrl-C, and stops deferred past a block (a checkpoint save)."""

import signal

import pytest

from recsearch.signals import Terminated, interrupts_deferred, sigterm_as_interrupt


def test_a_stop_during_a_deferred_block_lands_after_it_to_the_handler_before():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            signal.raise_signal(signal.SIGINT)
            done.append("the save")  # not cut short
    assert done == ["the save"]
    with sigterm_as_interrupt() as took_over:
        assert took_over
        with pytest.raises(Terminated):
            with interrupts_deferred():
                signal.raise_signal(signal.SIGTERM)
                done.append("the next save")
    assert done == ["the save", "the next save"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_acts_at_once_and_an_ignored_signal_stays_ignored():
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)  # a save that hangs: the second one is obeyed
            raise AssertionError("not reached")
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts_deferred():
            signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
