"""While the reference trains (at the top rung, several rung-0 runs long), candidates use the
other slots; a candidate run that ends first is recorded only once the reference's latency, its
reward's budget, is known (recsearch.search.loop.Search._run_beside)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from recsearch.search.runners import RESULT_FILE, Handle
from recsearch.search.store import JournalStore
from recsearch.types import TrialSpec, TrialState
from tests.reliability.search_helpers import SERVING_BATCH, journal_lines, resume, start_search, write_fake_result
from tests.search.test_loop import learnable_data, search_config  # noqa: F401  (the fixture)

REFERENCE_P50_MS = 0.5  # the budget; every candidate's p50 is 1.0 ms: twice over it


class SlowReference:
    """Candidates end as they are submitted; the reference (trial 0) ends once 3 candidate runs
    have, with p50 REFERENCE_P50_MS."""

    def __init__(self, reference_fails: bool = False) -> None:
        self.events: list[str] = []  # submissions and the reference's end, in order
        self.candidate_runs = 0
        self.reference_fails = reference_fails
        self.submitted: list[tuple[int, int]] = []  # (trial id, train rows)

    def submit(self, spec: TrialSpec, workdir: Path) -> Handle:
        self.events.append(f"submit {spec.trial_id}")
        self.submitted.append((spec.trial_id, spec.train_rows))
        now = time.time()
        handle = Handle(spec.trial_id, Path(workdir), now, started_at_s=now)
        if spec.trial_id == 0:
            handle.info["spec"] = spec
            return handle  # RUNNING until poll says otherwise
        write_fake_result(workdir, spec)
        self.candidate_runs += 1
        handle.state, handle.finished_at_s = TrialState.COMPLETE, now
        return handle

    def poll(self, handle: Handle) -> TrialState:
        if handle.trial_id == 0 and handle.state is TrialState.RUNNING and self.candidate_runs >= 3 and self.reference_fails:
            handle.state, handle.finished_at_s, handle.error = TrialState.FAILED, time.time(), "RuntimeError: simulated"
            self.events.append("reference ended")
        elif handle.trial_id == 0 and handle.state is TrialState.RUNNING and self.candidate_runs >= 3:
            write_fake_result(handle.workdir, handle.info["spec"])
            result = json.loads((handle.workdir / RESULT_FILE).read_text())
            result["latency_ms"][str(SERVING_BATCH)]["p50_ms"] = REFERENCE_P50_MS
            (handle.workdir / RESULT_FILE).write_text(json.dumps(result))
            handle.state, handle.finished_at_s = TrialState.COMPLETE, time.time()
            self.events.append("reference ended")
        return handle.state

    def result(self, handle: Handle):
        from recsearch.search.runners import read_result

        return read_result(handle.workdir, handle.trial_id, SERVING_BATCH, handle.error)

    def cancel(self, handle: Handle) -> None:
        pass


def test_candidates_train_beside_the_reference_and_are_scored_against_its_budget(tmp_path, learnable_data):  # noqa: F811
    raw = search_config(learnable_data, **{"runner.kind": "subprocess", "runner.concurrency": 2, "runner.poll_s": 0.01,
                                           "trials": 4, "objective.penalty": 0.1})
    runner = SlowReference()
    search, out = start_search(tmp_path, raw, runner=runner)
    assert search.run() == 0
    # three candidate runs started (and ended) while the reference was still running
    assert runner.events[0] == "submit 0"
    assert runner.events.index("reference ended") == 4, runner.events
    records = {r.trial_id: r for r in JournalStore(out).trials()}
    assert records[0].result.latency_p50_ms == REFERENCE_P50_MS
    # every candidate's reward counts its latency against the reference's: 1.0 ms over 0.5 ms
    for trial_id, rec in records.items():
        if trial_id == 0:
            continue
        for rung, entry in rec.notes["rungs"].items():
            assert abs(entry["score"] - (entry["auc"] - 0.1 * (1.0 / REFERENCE_P50_MS - 1.0))) < 1e-9, (trial_id, rung, entry)
    # and none was recorded before the reference: their first result line comes after its
    lines = journal_lines(out)
    first_ref_result = next(i for i, line in enumerate(lines) if line.get("trial_id") == 0 and line.get("result"))
    assert all(i > first_ref_result for i, line in enumerate(lines) if line.get("trial_id") != 0 and line.get("result"))


def test_with_a_fixed_budget_a_failed_reference_leaves_the_runs_beside_it_recorded_not_rerun(tmp_path, learnable_data):  # noqa: F811
    raw = search_config(learnable_data, **{"runner.kind": "subprocess", "runner.concurrency": 2, "runner.poll_s": 0.01,
                                           "trials": 4, "objective.budget_ms": 2.0})
    runner = SlowReference(reference_fails=True)
    search, out = start_search(tmp_path, raw, runner=runner)
    assert search.run() == 0
    records = {r.trial_id: r for r in JournalStore(out).trials()}
    assert records[0].state is TrialState.FAILED
    # the three candidate runs beside the reference were recorded (against the fixed budget: as
    # they ended, nothing waits for the reference), not run again: each rung-0 run submitted once
    assert runner.events.index("reference ended") == 4
    rung0 = [trial_id for trial_id, rows in runner.submitted if rows == 2048]
    assert sorted(rung0) == sorted(set(rung0)) and {1, 2, 3} <= set(rung0)
    for trial_id in (1, 2, 3):
        assert records[trial_id].notes["rungs"]["0"]["score"] is not None


class _Killed(BaseException):
    """Stands for SIGKILL: raised out of submit after the journal says RUNNING, like a kill there."""


class PatientReference(SlowReference):
    """SlowReference whose reference also ends after `max_polls` polls of it (so a search that
    stops proposing while it runs still ends); `kill_at`: the candidate run whose submit is
    killed (_Killed), the reference still running."""

    def __init__(self, runs: int = 3, max_polls: int = 10**9, kill_at: int | None = None) -> None:
        super().__init__()
        self.runs, self.max_polls, self.kill_at = runs, max_polls, kill_at
        self.reference_polls = 0

    def submit(self, spec: TrialSpec, workdir: Path) -> Handle:
        if spec.trial_id == 0:
            (Path(workdir) / "train.log").write_text("step 8 loss 0.6\n")  # a run under way
        elif self.kill_at is not None and self.candidate_runs + 1 == self.kill_at:
            raise _Killed()
        return super().submit(spec, workdir)

    def poll(self, handle: Handle) -> TrialState:
        if handle.trial_id == 0 and handle.state is TrialState.RUNNING:
            self.reference_polls += 1
            if self.candidate_runs >= self.runs or self.reference_polls >= self.max_polls:
                self.candidate_runs = max(self.candidate_runs, 3)  # SlowReference's condition
                return super().poll(handle)
            return handle.state
        return super().poll(handle)


def _before_reference(runner: SlowReference) -> list[tuple[int, int]]:
    """The candidate runs (trial id, rows) submitted before the reference ended."""
    n = sum(e.startswith("submit") for e in runner.events[:runner.events.index("reference ended")])
    return [s for s in runner.submitted[:n] if s[0] != 0]


def test_with_a_fixed_budget_candidates_are_recorded_as_they_end_beside_the_reference(tmp_path, learnable_data):  # noqa: F811
    """Their reward needs nothing of the reference (objective.budget_ms set): nothing is held, so
    brackets decide and promote while the reference still trains, and the controller learns."""
    raw = search_config(learnable_data, **{"runner.kind": "subprocess", "runner.concurrency": 2, "runner.poll_s": 0.01,
                                           "trials": 4, "objective.budget_ms": 2.0})
    runner = PatientReference(runs=4)
    search, out = start_search(tmp_path, raw, runner=runner)
    assert search.run() == 0
    # bracket 0 (trials 1 and 2, eta 2) decided and its winner trained rung 1 beside the reference
    assert any(rows == 6144 for _, rows in _before_reference(runner)), runner.events
    lines = journal_lines(out)
    first_ref_result = next(i for i, line in enumerate(lines) if line.get("trial_id") == 0 and line.get("result"))
    assert any(i < first_ref_result for i, line in enumerate(lines) if line.get("trial_id") != 0 and line.get("result"))
    records = {r.trial_id: r for r in JournalStore(out).trials()}
    assert all(r.state.finished for r in records.values())


@pytest.mark.parametrize("controller, proposed", [("actor_critic", 2), ("random", 5)])
def test_a_learning_controller_proposes_no_more_blind_while_results_are_held(tmp_path, learnable_data, controller, proposed):  # noqa: F811
    """While the reference sets the budget, candidate results are held, so every proposal then is
    blind to them: a controller that learns proposes only max(bracket size, concurrency) (what the
    search proposes blind without the overlap too: its first fill and first bracket), not the
    whole budget; the random controller learns nothing and keeps every slot busy."""
    raw = search_config(learnable_data, **{"runner.kind": "subprocess", "runner.concurrency": 2, "runner.poll_s": 0.01,
                                           "trials": 6, "controller": controller})
    runner = PatientReference(runs=5, max_polls=100)
    search, out = start_search(tmp_path, raw, runner=runner)
    assert search.run() == 0
    assert len(_before_reference(runner)) == proposed, runner.events
    records = {r.trial_id: r for r in JournalStore(out).trials()}
    assert len(records) == 7 and all(r.state.finished for r in records.values())


def test_a_search_killed_beside_the_reference_reruns_the_held_runs_and_the_reference_once(tmp_path, learnable_data):  # noqa: F811
    """Killed while the reference trains, two candidate runs held and a third starting: the journal
    says RUNNING for all four; --resume reruns each once (one retry at its rung), sets the killed reference
    attempt aside as attempt_1/ (not rung_0/, a rung it never ran), and scores every candidate
    against the reference's budget."""
    raw = search_config(learnable_data, **{"runner.kind": "subprocess", "runner.concurrency": 2, "runner.poll_s": 0.01,
                                           "trials": 4, "objective.penalty": 0.1})
    search, out = start_search(tmp_path, raw, runner=PatientReference(kill_at=3))
    with pytest.raises(_Killed):
        search.run()
    killed = {r.trial_id: r for r in JournalStore(out).trials()}
    assert {t: r.state for t, r in killed.items()} == {0: TrialState.RUNNING, 1: TrialState.RUNNING,
                                                       2: TrialState.RUNNING, 3: TrialState.RUNNING}
    assert all(r.result is None for r in killed.values())  # the held runs were not recorded

    runner = PatientReference()
    assert resume(out, runner=runner).run() == 0
    records = {r.trial_id: r for r in JournalStore(out).trials()}
    assert all(r.state.finished for r in records.values())
    assert records[0].state is TrialState.COMPLETE and records[0].rung_attempts == {1: 2}
    for t in (1, 2, 3):  # held (1, 2) or running (3) when killed
        assert records[t].rung_attempts[0] == 2 and "died with the search" in records[t].notes["retry"]
    for t in (1, 2, 3, 4):
        for entry in records[t].notes["rungs"].values():
            assert abs(entry["score"] - (entry["auc"] - 0.1 * (1.0 / REFERENCE_P50_MS - 1.0))) < 1e-9
    rung0 = [t for t, rows in runner.submitted if rows == 2048]
    assert sorted(rung0) == [1, 2, 3, 4]  # each once after the resume (4: proposed after it)
    ref_dir = out / "trials" / "0"
    assert (ref_dir / "attempt_1" / "train.log").exists() and not (ref_dir / "rung_0").exists()


class _StuckCandidates(SlowReference):
    """Candidate runs after the first two stay RUNNING until cancelled; when the reference is
    polled after 3 candidate runs started, it fails (`how` "fails") or Ctrl-C comes ("ctrl-c")."""

    def __init__(self, how: str) -> None:
        super().__init__(reference_fails=True)
        self.how = how
        self.cancelled: list[int] = []

    def submit(self, spec: TrialSpec, workdir: Path) -> Handle:
        if spec.trial_id != 0 and self.candidate_runs >= 2:
            self.events.append(f"submit {spec.trial_id}")
            self.candidate_runs += 1
            now = time.time()
            return Handle(spec.trial_id, Path(workdir), now, started_at_s=now)
        return super().submit(spec, workdir)

    def poll(self, handle: Handle) -> TrialState:
        if handle.trial_id == 0 and self.how == "ctrl-c" and self.candidate_runs >= 3:
            raise KeyboardInterrupt()
        return super().poll(handle)

    def cancel(self, handle: Handle) -> None:
        self.cancelled.append(handle.trial_id)


@pytest.mark.parametrize("how", ["fails", "ctrl-c"])
def test_a_reference_that_fails_or_ctrl_c_beside_candidates_cancels_the_running_ones(tmp_path, learnable_data, how):  # noqa: F811
    """The budget is the reference's latency. It fails (RuntimeError: the search cannot score
    anything) or Ctrl-C comes while two candidate runs are held and two still run: the running
    ones are cancelled and none is recorded. After Ctrl-C the journal puts all four back to
    PENDING, no attempt counted (the search ended them itself); after the search's own error it
    says RUNNING (a resume counts and reruns them)."""
    raw = search_config(learnable_data, **{"runner.kind": "subprocess", "runner.concurrency": 3, "runner.poll_s": 0.01,
                                           "trials": 6})
    runner = _StuckCandidates(how)
    search, out = start_search(tmp_path, raw, runner=runner)
    if how == "fails":
        with pytest.raises(RuntimeError, match="reference config failed"):
            search.run()
    else:
        assert search.run() == 130
    assert sorted(runner.cancelled) == ([0, 3, 4] if how == "ctrl-c" else [3, 4])
    records = {r.trial_id: r for r in JournalStore(out).trials()}
    after = TrialState.PENDING if how == "ctrl-c" else TrialState.RUNNING
    assert [records[t].state for t in (1, 2, 3, 4)] == [after] * 4
    assert all(records[t].result is None for t in (1, 2, 3, 4))


class _NoLatencyReference(SlowReference):
    """The reference completes with an AUC and no latency entry at the serving batch."""

    def poll(self, handle: Handle) -> TrialState:
        state = super().poll(handle)
        if handle.trial_id == 0 and state is TrialState.COMPLETE:
            result = json.loads((handle.workdir / RESULT_FILE).read_text())
            if result["latency_ms"]:
                result["latency_ms"] = {}
                (handle.workdir / RESULT_FILE).write_text(json.dumps(result))
        return state


def test_a_reference_without_a_latency_is_a_clear_error_not_a_crash(tmp_path, learnable_data):  # noqa: F811
    raw = search_config(learnable_data, **{"runner.kind": "subprocess", "runner.concurrency": 2, "runner.poll_s": 0.01,
                                           "trials": 4})
    search, _ = start_search(tmp_path, raw, runner=_NoLatencyReference())
    with pytest.raises(RuntimeError, match=r"reference config \(trial 0\) completed without a latency at batch 64"):
        search.run()
