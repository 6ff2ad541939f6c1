"""A search killed while a promoted trial trains its next rung: after --resume the trial is
retried at that rung (runner.retries counts runs per rung), never failed for good because its
earlier rung's run was counted as an attempt."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from recsearch.search import loop
from recsearch.search.runners import Handle
from recsearch.search.store import JournalStore
from recsearch.signals import Terminated
from recsearch.types import TrialState
from tests.reliability.search_helpers import FakeRunner, journal_lines, resume, start_search, tiny_config


class _Killed(BaseException):
    """Stands for SIGKILL: raised out of submit after the journal says RUNNING, like a kill there."""


class _KillAtRung(FakeRunner):
    def __init__(self, rows: int):
        super().__init__()
        self.rows = rows

    def submit(self, spec, workdir):
        if spec.train_rows == self.rows:
            (workdir / "train.log").write_text("step 8 loss 0.6\n")  # a run under way
            raise _Killed()
        return super().submit(spec, workdir)


@pytest.mark.parametrize("retries", [1, 2])
def test_a_kill_during_rung_1_is_retried_at_rung_1_after_resume(tmp_path, learnable_data, retries):
    raw = tiny_config(learnable_data, **{"fidelity.train_rows": [2048, 6144], "fidelity.eta": 2, "trials": 2,
                                         "runner.retries": retries})
    search, out = start_search(tmp_path, raw, runner=_KillAtRung(6144))
    with pytest.raises(_Killed):
        search.run()
    # what the kill left: both candidates trained rung 0, the winner was promoted and is RUNNING at rung 1
    killed = [r for r in JournalStore(out).trials() if r.state is TrialState.RUNNING]
    assert len(killed) == 1
    victim = killed[0]
    assert victim.notes["rung"] == 1 and victim.attempts == 2 and victim.rung_attempts == {0: 1, 1: 1}
    assert "0" in victim.notes["rungs"] and victim.result.state is TrialState.COMPLETE  # its rung-0 result

    runner = FakeRunner()
    assert resume(out, runner=runner).run() == 0
    after = JournalStore(out).get(victim.trial_id)
    assert after.state is TrialState.COMPLETE, (after.state, after.result)
    assert after.rung_attempts == {0: 1, 1: 2} and "attempt 1 at rung 1 died with the search" in after.notes["retry"]
    assert after.notes["rungs"]["1"]["train_rows"] == 6144 and after.result.auc is not None
    assert runner.submitted == [(victim.trial_id, 6144)]  # only the interrupted run, at its rung
    # the killed run's files were set aside, the rung-0 run kept
    trial_dir = out / "trials" / str(victim.trial_id)
    assert (trial_dir / "rung_0" / "result.json").exists() and (trial_dir / "attempt_1" / "train.log").exists()
    # the journal: FAILED as stale, PENDING for the retry, RUNNING again at rung 1
    states = [(e["state"], e.get("notes", {}).get("rung")) for e in journal_lines(out)
              if e["op"] == "state" and e["trial_id"] == victim.trial_id]
    assert ("FAILED", None) in states and states.count(("RUNNING", 1)) == 2


def _killed_twice(tmp_path, raw, rows: int):
    """A search whose run at `rows` is killed, then killed again on --resume; its directory."""
    search, out = start_search(tmp_path, raw, runner=_KillAtRung(rows))
    with pytest.raises(_Killed):
        search.run()
    with pytest.raises(_Killed):
        resume(out, runner=_KillAtRung(rows)).run()
    return out


def test_retries_still_end_at_runner_retries_per_rung(tmp_path, learnable_data):
    """Killed at rung 1 twice with retries 1: the second death is final (FAILED, the search goes on
    and ends)."""
    raw = tiny_config(learnable_data, **{"fidelity.train_rows": [2048, 6144], "fidelity.eta": 2, "trials": 2,
                                         "runner.retries": 1})
    out = _killed_twice(tmp_path, raw, 6144)
    victim = next(r for r in JournalStore(out).trials() if r.state is TrialState.RUNNING)
    assert victim.rung_attempts == {0: 1, 1: 2}
    runner = FakeRunner()
    assert resume(out, runner=runner).run() == 0
    after = JournalStore(out).get(victim.trial_id)
    assert after.state is TrialState.FAILED
    assert after.result.error.startswith("the search was killed while it ran (its run 2 at rung 1;")
    assert "runner.retries 1 used up" in after.result.error and "heartbeating" not in after.result.error
    assert runner.submitted == []
    assert all(r.state.finished for r in JournalStore(out).trials())


class _InterruptAtRung(FakeRunner):
    """Ctrl-C (or SIGTERM) reaches the search while the run at `rows` trains: its poll raises
    the interrupt, as the signal would in the search's main thread."""

    def __init__(self, rows: int, interrupt: type[KeyboardInterrupt] = KeyboardInterrupt):
        super().__init__()
        self.rows, self.interrupt = rows, interrupt
        self.cancelled: list[int] = []

    def submit(self, spec, workdir):
        if spec.train_rows != self.rows:
            return super().submit(spec, workdir)
        self.submitted.append((spec.trial_id, spec.train_rows))
        (workdir / "train.log").write_text("step 8 loss 0.6\n")
        now = time.time()
        return Handle(spec.trial_id, Path(workdir), now, started_at_s=now)  # RUNNING

    def poll(self, handle):
        if handle.state is TrialState.RUNNING:
            raise self.interrupt()
        return handle.state

    def cancel(self, handle):
        self.cancelled.append(handle.trial_id)


@pytest.mark.parametrize("interrupt, code", [(KeyboardInterrupt, 130), (Terminated, 143)])
def test_runs_cancelled_by_ctrl_c_or_sigterm_use_no_retry_however_often(tmp_path, learnable_data, interrupt, code):
    """A search interrupted three times while the same trial trains its rung 1, with retries 0:
    each time the search cancels the run and journals it back to PENDING, marked cancelled; the
    trial is never failed, and the fourth search finishes it."""
    raw = tiny_config(learnable_data, **{"fidelity.train_rows": [2048, 6144], "fidelity.eta": 2, "trials": 2,
                                         "runner.retries": 0})
    search, out = start_search(tmp_path, raw, runner=_InterruptAtRung(6144, interrupt))
    assert search.run() == code
    for _ in range(2):
        runner = _InterruptAtRung(6144, interrupt)
        assert resume(out, runner=runner).run() == code
        assert runner.cancelled and runner.submitted == [(runner.cancelled[0], 6144)]
    (victim,) = [r for r in JournalStore(out).trials() if r.notes.get("rung") == 1]
    assert victim.state is TrialState.PENDING  # not RUNNING: the search knew it ended the run
    assert victim.rung_attempts == {0: 1, 1: 3} and victim.rung_cancelled == {1: 3} and victim.runs_counted(1) == 0
    assert "cancelled by the search" in victim.notes["interrupted"] and "not counted" in victim.notes["interrupted"]
    released = [e for e in journal_lines(out) if e["trial_id"] == victim.trial_id and e.get("cancelled")]
    assert [e["state"] for e in released] == ["PENDING"] * 3

    runner = FakeRunner()
    assert resume(out, runner=runner).run() == 0
    after = JournalStore(out).get(victim.trial_id)
    assert after.state is TrialState.COMPLETE and after.notes["rungs"]["1"]["train_rows"] == 6144
    assert runner.submitted == [(victim.trial_id, 6144)]
    assert not any(e.get("state") == "FAILED" for e in journal_lines(out) if e["trial_id"] == victim.trial_id)


def test_a_sigkilled_reference_past_its_retries_names_the_kill_and_runs_again_once_retries_are_raised(
        tmp_path, learnable_data, capsys):
    """The reference, whose latency is the budget, is killed (SIGKILL: left RUNNING) twice with
    retries 1: --resume refuses with exit 2, saying the search was killed while it ran and that
    runner.retries is used up (not 'stopped heartbeating'); after raising runner.retries in
    search.yaml, --resume runs the reference again and finishes the search."""
    raw = tiny_config(learnable_data, **{"reference": True, "objective.budget_ms": None, "trials": 2,
                                         "runner.retries": 1})
    out = _killed_twice(tmp_path, raw, 2048)
    code = loop.main(["--resume", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "the reference config failed (the search was killed while it ran (its run 2 at rung 0;" in err
    assert "runner.retries 1 used up" in err and "raise runner.retries in" in err and "heartbeating" not in err
    ref = JournalStore(out).get(0)
    assert ref.state is TrialState.FAILED and ref.notes["died_with_search"] == 0

    text = (out / "search.yaml").read_text()
    (out / "search.yaml").write_text(text.replace("retries: 1", "retries: 3"))
    runner = FakeRunner()
    assert resume(out, runner=runner).run() == 0
    ref = JournalStore(out).get(0)
    assert ref.state is TrialState.COMPLETE and ref.notes["died_with_search"] is None
    assert runner.submitted[0] == (0, 2048) and "runner.retries is now 3" in ref.notes["retry"]
