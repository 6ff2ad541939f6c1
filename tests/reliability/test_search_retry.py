"""A search killed while a promoted trial trains its next rung: after --resume the trial is
retried at that rung (runner.retries counts runs per rung), never failed for good because its
earlier rung's run was counted as an attempt."""

from __future__ import annotations

import pytest

from recsearch.search.store import JournalStore
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


def test_retries_still_end_at_runner_retries_per_rung(tmp_path, learnable_data):
    """Killed at rung 1 twice with retries 1: the second death is final (FAILED, the search goes on
    and ends)."""
    raw = tiny_config(learnable_data, **{"fidelity.train_rows": [2048, 6144], "fidelity.eta": 2, "trials": 2,
                                         "runner.retries": 1})
    search, out = start_search(tmp_path, raw, runner=_KillAtRung(6144))
    with pytest.raises(_Killed):
        search.run()
    with pytest.raises(_Killed):
        resume(out, runner=_KillAtRung(6144)).run()
    victim = next(r for r in JournalStore(out).trials() if r.state is TrialState.RUNNING)
    assert victim.rung_attempts == {0: 1, 1: 2}
    runner = FakeRunner()
    assert resume(out, runner=runner).run() == 0
    after = JournalStore(out).get(victim.trial_id)
    assert after.state is TrialState.FAILED and "stale" in after.result.error
    assert runner.submitted == []
    assert all(r.state.finished for r in JournalStore(out).trials())
