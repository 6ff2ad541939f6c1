"""Ctrl-C / SIGTERM of a search at the awkward moments: a cancel that fails, runs ended and held
beside the reference, a result being recorded, and the budget the failed reference's advice sets.
A run the search ended itself is not counted against runner.retries; one that may still be
running stays RUNNING, for --resume to cancel its job first."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from recsearch.search.runners import Handle
from recsearch.search.store import JournalStore
from recsearch.types import TrialState
from tests.reliability.search_helpers import FakeRunner, resume, start_search, tiny_config
from tests.search.test_loop import search_config
from tests.search.test_reference_beside import SlowReference
from tests.train.conftest import learnable_data  # noqa: F401 - the fixture


class _Cluster(FakeRunner):
    """torchx-like: jobs outlive the search (app_handle); cancel() fails (the API server is
    unreachable as the search job is preempted); the poll after `interrupt_after` is SIGTERM."""

    def __init__(self, interrupt_after: int | None = None):
        super().__init__()
        self.polls = 0
        self.interrupt_after = interrupt_after
        self.orphans_cancelled: list[str] = []

    def submit(self, spec, workdir):
        self.submitted.append((spec.trial_id, spec.train_rows))
        now = time.time()
        handle = Handle(spec.trial_id, Path(workdir), now, started_at_s=now)
        handle.native = handle.info["app_handle"] = f"k8s://ns/job-{spec.trial_id}-{len(self.submitted)}"
        return handle

    def poll(self, handle):
        self.polls += 1
        if self.interrupt_after is not None and self.polls >= self.interrupt_after:
            raise KeyboardInterrupt()
        return handle.state

    def cancel(self, handle):
        raise ConnectionError("API server unreachable")

    def cancel_orphan(self, app_handle):
        self.orphans_cancelled.append(app_handle)
        return "cancelled (it was RUNNING)"


def test_a_run_whose_cancel_failed_stays_running_and_resume_cancels_its_job(tmp_path, learnable_data):  # noqa: F811
    search, out = start_search(tmp_path, tiny_config(learnable_data, **{"trials": 1, "runner.poll_s": 0.01}),
                               runner=_Cluster(interrupt_after=3))
    assert search.run() == 130
    record = JournalStore(out).get(0)
    assert record.state is TrialState.RUNNING and record.notes["app_handle"] == "k8s://ns/job-0-1"
    again = _Cluster()
    resume(out, runner=again).prepare()
    assert again.orphans_cancelled == ["k8s://ns/job-0-1"]  # no second job writes into trials/0/


def test_ctrl_c_while_the_held_runs_are_recorded_releases_the_rest_uncounted(tmp_path, learnable_data):  # noqa: F811
    raw = search_config(learnable_data, **{"runner.kind": "subprocess", "runner.concurrency": 2, "runner.poll_s": 0.01,
                                           "trials": 4, "objective.penalty": 0.1, "runner.retries": 0})
    search, out = start_search(tmp_path, raw, runner=SlowReference())

    def echo(line: str) -> None:  # Ctrl-C lands as the first held run's progress line is printed
        if "trial   1 rung" in line:
            raise KeyboardInterrupt()

    search.echo = echo
    assert search.run() == 130
    after = {r.trial_id: r for r in JournalStore(out).trials()}
    assert after[0].state is TrialState.COMPLETE  # the reference
    held = [t for t in (1, 2, 3) if after[t].rung_cancelled]
    assert held and all(after[t].state is TrialState.PENDING for t in held)
    resume(out, runner=SlowReference()).run()
    final = {r.trial_id: r for r in JournalStore(out).trials()}
    # with retries 0, a counted run would have failed them for good
    assert all(final[t].state is not TrialState.FAILED for t in (1, 2, 3))


class _CtrlCOnResult(FakeRunner):
    """Ctrl-C lands while trial 1's result is read (a torchx result is fetched)."""

    def __init__(self):
        super().__init__()
        self.fired = False

    def result(self, handle):
        if handle.trial_id == 1 and not self.fired:
            self.fired = True
            raise KeyboardInterrupt()
        return super().result(handle)


def test_ctrl_c_while_a_result_is_recorded_releases_that_run_uncounted(tmp_path, learnable_data):  # noqa: F811
    raw = tiny_config(learnable_data, **{"runner.concurrency": 1, "trials": 3, "runner.retries": 0})
    search, out = start_search(tmp_path, raw, runner=_CtrlCOnResult())
    assert search.run() == 130
    record = JournalStore(out).get(1)
    assert record.state is TrialState.PENDING and record.rung_cancelled == {0: 1}
    assert "interrupted while it was being recorded" in record.notes["interrupted"]
    assert resume(out).run() == 0
    assert JournalStore(out).get(1).state is TrialState.COMPLETE


class _ReferenceFails(FakeRunner):
    def submit(self, spec, workdir):
        handle = super().submit(spec, workdir)
        if spec.trial_id == 0:
            (Path(workdir) / "result.json").unlink()
            handle.state, handle.error = TrialState.FAILED, "RuntimeError: simulated"
        return handle


def test_the_failed_references_advice_objective_budget_ms_is_taken_by_resume(tmp_path, learnable_data):  # noqa: F811
    raw = tiny_config(learnable_data, **{"reference": True, "objective.budget_ms": None, "trials": 2})
    search, out = start_search(tmp_path, raw, runner=_ReferenceFails())
    try:
        search.run()
        raise AssertionError("the search went on without its budget")
    except RuntimeError as err:
        assert "`recsearch search --resume" in str(err) and "runs it again, or set objective.budget_ms there" in str(err)
    edited = yaml.safe_load((out / "search.yaml").read_text())
    edited["objective"]["budget_ms"] = 2.0
    (out / "search.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
    assert resume(out).run() == 0  # no candidate had a reward: nothing was judged by the old budget
    assert [r.state for r in JournalStore(out).trials()][1:] == [TrialState.COMPLETE] * 2


def test_a_reference_that_failed_on_its_own_runs_again_on_resume(tmp_path, learnable_data, capsys):  # noqa: F811
    """A submission the scheduler refused, a crash: the search says to fix the cause and resume,
    and --resume runs the reference again (it was FAILED for good, and every resume or requeue
    repeated the same error)."""
    raw = tiny_config(learnable_data, **{"reference": True, "objective.budget_ms": None, "trials": 2})
    search, out = start_search(tmp_path, raw, runner=_ReferenceFails())
    try:
        search.run()
        raise AssertionError("the search went on without its budget")
    except RuntimeError:
        pass
    assert JournalStore(out).get(0).state is TrialState.FAILED
    runner = FakeRunner()  # the cause fixed
    assert resume(out, runner=runner).run() == 0
    reference = JournalStore(out).get(0)
    assert reference.state is TrialState.COMPLETE and "the reference failed (RuntimeError: simulated" in reference.notes["retry"]
    assert [t for t, _ in runner.submitted][:1] == [0]
