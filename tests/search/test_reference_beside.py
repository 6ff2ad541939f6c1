"""While the reference trains (at the top rung, several rung-0 runs long), candidates use the
other slots; a candidate run that ends first is recorded only once the reference's latency, its
reward's budget, is known (recsearch.search.loop.Search._run_beside)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from recsearch.search.runners import RESULT_FILE, Handle
from recsearch.search.store import JournalStore
from recsearch.types import TrialSpec, TrialState
from tests.reliability.search_helpers import SERVING_BATCH, journal_lines, start_search, write_fake_result
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


def test_candidates_train_beside_the_reference_and_are_scored_against_its_budget(tmp_path, learnable_data):
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


def test_with_a_fixed_budget_a_failed_reference_leaves_the_held_runs_recorded_not_rerun(tmp_path, learnable_data):
    raw = search_config(learnable_data, **{"runner.kind": "subprocess", "runner.concurrency": 2, "runner.poll_s": 0.01,
                                           "trials": 4, "objective.budget_ms": 2.0})
    runner = SlowReference(reference_fails=True)
    search, out = start_search(tmp_path, raw, runner=runner)
    assert search.run() == 0
    records = {r.trial_id: r for r in JournalStore(out).trials()}
    assert records[0].state is TrialState.FAILED
    # the three candidate runs held while the reference ran were recorded (against the fixed
    # budget), not run again: each trial's rung-0 run was submitted once
    assert runner.events.index("reference ended") == 4
    rung0 = [trial_id for trial_id, rows in runner.submitted if rows == 2048]
    assert sorted(rung0) == sorted(set(rung0)) and {1, 2, 3} <= set(rung0)
    for trial_id in (1, 2, 3):
        assert records[trial_id].notes["rungs"]["0"]["score"] is not None
