"""A runner that raises is one trial's problem, never the search's: a submit that raises fails that
trial with the error, a poll that raises is retried with backoff (PollRetry) and only then fails
that trial (its run cancelled), the other trials and the search go on; a search that trains no
candidate to a result exits 1 and says why. The real loop, store and controller, with scripted
runners whose trials "train" instantly (tests/reliability/search_helpers.py)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from recsearch.search import loop
from recsearch.search.loop import PollRetry
from recsearch.search.runners import Handle
from recsearch.search.store import JournalStore
from recsearch.types import TrialState
from tests.reliability.search_helpers import FakeRunner, start_search, tiny_config, write_config
from tests.search.test_loop import learnable_data  # noqa: F401  (the fixture)

FAST_RETRY = PollRetry(attempts=3, first_delay_s=0.01, max_delay_s=0.02)


class ScriptedPolls(FakeRunner):
    """Trials that run for a few polls. `polls[trial_id]` scripts what poll does on successive
    calls: "raise" (a scheduler error), "running", "done"; the last entry repeats. Unscripted
    trials end at their first poll."""

    def __init__(self, polls: dict[int, list[str]]):
        super().__init__()
        self.polls = {t: list(script) for t, script in polls.items()}
        self.poll_calls: dict[int, int] = {}
        self.cancelled: list[int] = []

    def submit(self, spec, workdir):
        handle = super().submit(spec, workdir)  # writes the result.json the run will leave
        handle.state, handle.finished_at_s = TrialState.RUNNING, None
        return handle

    def poll(self, handle: Handle) -> TrialState:
        if handle.state is not TrialState.RUNNING:
            return handle.state
        self.poll_calls[handle.trial_id] = self.poll_calls.get(handle.trial_id, 0) + 1
        script = self.polls.get(handle.trial_id, ["done"])
        now = script.pop(0) if len(script) > 1 else script[0]
        if now == "raise":
            raise OSError(f"sacct: error: slurmdbd unreachable (poll {self.poll_calls[handle.trial_id]})")
        if now == "running":
            return TrialState.RUNNING
        handle.state, handle.finished_at_s = TrialState.COMPLETE, time.time()
        return handle.state

    def cancel(self, handle: Handle) -> None:
        self.cancelled.append(handle.trial_id)


class FailingSubmits(FakeRunner):
    """submit raises for the trials in `fail` (all when None), as Popen does on EAGAIN."""

    def __init__(self, fail: set[int] | None = None):
        super().__init__()
        self.fail = fail

    def submit(self, spec, workdir):
        if self.fail is None or spec.trial_id in self.fail:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return super().submit(spec, workdir)


def _search(tmp_path: Path, data: Path, runner, trials: int = 3, **settings) -> tuple[loop.Search, Path, list[str]]:
    raw = tiny_config(data, **{"trials": trials, "runner.poll_s": 0.01, **settings})
    search, out = start_search(tmp_path, raw, runner=runner)
    lines: list[str] = []
    search.echo = lines.append
    search.poll_retry = FAST_RETRY
    return search, out, lines


def test_a_poll_that_raises_a_few_times_is_retried_and_the_trial_completes(tmp_path, learnable_data):  # noqa: F811
    runner = ScriptedPolls({0: ["running", "raise", "raise", "running", "raise", "done"]})
    search, out, lines = _search(tmp_path, learnable_data, runner)
    assert search.run() == 0
    records = {r.trial_id: r for r in JournalStore(out).trials()}
    assert [records[t].state for t in (0, 1, 2)] == [TrialState.COMPLETE] * 3
    assert records[0].result.auc is not None and records[0].attempts == 1
    assert runner.cancelled == [] and runner.poll_calls[0] == 6  # every poll asked; nothing cancelled
    warnings = [x for x in lines if "polling trial 0 failed" in x]
    # two errors in a row (try 2, then 3 of 3), a success resets the count, one more error (try 2)
    assert len(warnings) == 3 and "OSError: sacct: error: slurmdbd unreachable" in warnings[0]
    assert ["try 2 of 3" in warnings[0], "try 3 of 3" in warnings[1], "try 2 of 3" in warnings[2]] == [True] * 3


def test_a_poll_that_keeps_raising_fails_that_trial_only_and_cancels_its_run(tmp_path, learnable_data):  # noqa: F811
    runner = ScriptedPolls({0: ["raise"], 1: ["running", "running", "done"]})
    search, out, lines = _search(tmp_path, learnable_data, runner, **{"runner.kind": "subprocess", "runner.concurrency": 2})
    started = time.monotonic()
    assert search.run() == 0
    assert time.monotonic() - started < 30
    records = {r.trial_id: r for r in JournalStore(out).trials()}
    assert records[0].state is TrialState.FAILED
    error = records[0].result.error
    assert "could not poll it: 3 errors in a row" in error and "slurmdbd unreachable (poll 3)" in error, error
    assert runner.poll_calls[0] == 3 and runner.cancelled == [0]  # given up after 3 polls; its run cancelled
    assert [records[t].state for t in (1, 2)] == [TrialState.COMPLETE] * 2  # the others unaffected
    assert any("trial   0" in x and "could not poll it" in x for x in lines)


def test_a_submit_that_raises_fails_that_trial_with_the_error_and_the_search_goes_on(tmp_path, learnable_data):  # noqa: F811
    runner = FailingSubmits(fail={1})
    search, out, _ = _search(tmp_path, learnable_data, runner)
    assert search.run() == 0
    records = {r.trial_id: r for r in JournalStore(out).trials()}
    assert [records[t].state for t in (0, 1, 2)] == [TrialState.COMPLETE, TrialState.FAILED, TrialState.COMPLETE]
    assert records[1].result.error == ("the FailingSubmits could not start it: BlockingIOError: "
                                       "[Errno 11] Resource temporarily unavailable")
    assert records[1].notes["rungs"]["0"]["error"] == records[1].result.error and records[1].notes["observed"]
    assert [t for t, _ in runner.submitted] == [0, 2]


def test_a_search_that_trains_nothing_exits_1_and_says_why(tmp_path, learnable_data, capsys):  # noqa: F811
    # every submit fails
    search, out, lines = _search(tmp_path, learnable_data, FailingSubmits(), trials=2)
    assert search.run() == loop.NOTHING_TRAINED_EXIT == 1
    why = next(x for x in lines if "no candidate was trained to a result" in x)
    assert "2 failed (first: trial 0: the FailingSubmits could not start it: BlockingIOError" in why
    assert all(r.state is TrialState.FAILED for r in JournalStore(out).trials())


def test_recsearch_search_exits_1_when_every_candidate_is_rejected(tmp_path, learnable_data, monkeypatch, capsys):  # noqa: F811
    """Every candidate over the step-cost budget (the checker's verdict forced after the preflight):
    `recsearch search` returns 1 and prints how many were rejected and why; nothing trained."""

    class RejectingSearch(loop.Search):
        def prepare(self) -> None:
            super().prepare()
            check = self.checker.check

            def over_budget(spec):
                return replace(check(spec), rejected="estimated step cost 9.000 ms is over the budget 1.000 ms")

            self.checker.check = over_budget

    monkeypatch.setattr(loop, "Search", RejectingSearch)
    raw = tiny_config(learnable_data, **{"trials": 2, "max_rejected": 3})
    out = tmp_path / "out"
    code = loop.main(["--config", str(write_config(tmp_path, raw)), "--out", str(out)])
    assert code == 1
    text = capsys.readouterr().out
    assert ("no candidate was trained to a result: 3 rejected before training "
            "(first: estimated step cost 9.000 ms is over the budget 1.000 ms)") in text
    records = JournalStore(out).trials()
    assert len(records) == 3 and all(r.notes.get("rejected") for r in records)
    assert not (out / "trials").exists()


def test_poll_retry_delays_double_up_to_the_cap_and_bad_settings_are_refused():
    retry = PollRetry()
    assert [retry.delay_s(n) for n in range(1, retry.attempts)] == [5.0, 10.0, 20.0, 40.0, 60.0]
    with pytest.raises(ValueError, match="attempts >= 1"):
        PollRetry(attempts=0)
