"""The search progress line's ETA (recsearch.search.eta): the runs left at each rung, timed by the
finished runs of that rung, shared by the workers."""

import pytest

from recsearch.search import eta
from recsearch.search.store import JournalStore
from tests.search.test_loop import learnable_data, run_search, search_config  # noqa: F401


def test_planned_runs_follow_the_halving_per_bracket():
    # 20 trials in brackets of 9 (eta 3, rungs 3): 9+9+2 at rung 0; 3+3+1 at rung 1; 1+1+1 at rung 2
    assert eta.planned_runs(20, 9, 3, 3) == [20, 7, 3]
    assert eta.planned_runs(6, 3, 3, 2) == [6, 2]
    assert eta.planned_runs(1, 3, 3, 2) == [1, 1]


def test_remaining_time_uses_each_rungs_mean_wall_time_and_the_workers():
    rows = [100_000, 300_000]
    # 6 trials, brackets of 3: 6 runs at rung 0 (4 done, 10 s and 14 s mean 12 s), 2 at rung 1 (1 done, 40 s)
    notes = [{"0": {"wall_s": 10.0}, "1": {"wall_s": 40.0}}, {"0": {"wall_s": 14.0}}, {"0": {"wall_s": 10.0}},
             {"0": {"wall_s": 14.0}}]
    walls = eta.finished_walls(notes, 2)
    assert walls == [[10.0, 14.0, 10.0, 14.0], [40.0]]
    # left: 2 runs x 12 s + 1 run x 40 s = 64 s, on 2 workers
    assert eta.remaining_s(eta.planned_runs(6, 3, 3, 2), walls, rows, 2) == pytest.approx(32.0)
    assert eta.progress_eta(notes, 3, 6, 3, 3, rows, 2) == "3/6 trials done, ETA 32 s"


def test_a_rung_without_finished_runs_is_scaled_by_rows_from_the_nearest_one():
    rows = [100_000, 300_000]
    notes = [{"0": {"wall_s": 10.0}}]
    # rung 1 unseen: 10 s x 3 = 30 s a run; left: 5 x 10 s + 2 x 30 s = 110 s on one worker
    assert eta.rung_wall_s(eta.finished_walls(notes, 2), rows) == pytest.approx([10.0, 30.0])
    assert eta.progress_eta(notes, 0, 6, 3, 3, rows, 1) == "0/6 trials done, ETA 1 min 50 s"


def test_no_finished_run_gives_no_estimate_and_a_done_search_zero():
    assert eta.progress_eta([], 0, 6, 3, 3, [100, 300], 2) == "0/6 trials done, ETA -"
    done = [{"0": {"wall_s": 5.0}, "1": {"wall_s": 9.0}}] + [{"0": {"wall_s": 5.0}}] * 2
    assert eta.progress_eta(done, 3, 3, 3, 3, [100, 300], 1) == "3/3 trials done, ETA 0 s"


def test_durations_read_in_seconds_minutes_and_hours():
    assert [eta.format_duration(s) for s in (0.4, 59.6, 200, 3599, 7500)] == [
        "0 s", "1 min 00 s", "3 min 20 s", "59 min 59 s", "2 h 05 min"]


def test_a_search_prints_trials_done_and_an_eta_on_every_progress_line(tmp_path, learnable_data, capsys):  # noqa: F811
    code, out = run_search(tmp_path, search_config(learnable_data))
    assert code == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[search] trial") and " rung " in ln]
    records = JournalStore(out).trials()
    first = min(r.trial_id for r in records if not r.notes.get("reference"))
    # the reference trains first: no candidate has finished, so no estimate yet
    assert lines[0].endswith("| 0/4 trials done, ETA -")
    # after the first candidate's rung-0 run (w s): 3 more rung-0 runs and 2 top-rung runs of 3 x w
    # (3x the rows) are left, on one worker
    w = next(r for r in records if r.trial_id == first).notes["rungs"]["0"]["wall_s"]
    assert lines[1].startswith(f"[search] trial {first:>3} rung 0/1")
    assert lines[1].endswith(f"| 0/4 trials done, ETA {eta.format_duration(9 * w)}")
    done = [int(ln.rsplit("| ", 1)[1].split("/")[0]) for ln in lines]
    assert done == sorted(done) and lines[-1].endswith("| 4/4 trials done, ETA 0 s")


def _run(wall_s, auc=None, error=None):
    """A rung note as the search loop writes it (recsearch.search.loop._record_rung)."""
    return {"train_rows": 100, "score": auc, "auc": auc, "wall_s": wall_s, "error": error}


def test_failed_runs_count_as_done_and_take_away_the_rungs_above():
    rows = [100, 300]
    diverged = "non-finite loss (diverged) at step 40"
    # every candidate of a bracket of 3 diverged at rung 0: nothing is left (no rung-1 run can come)
    notes = [{"0": _run(0.8, error=diverged)}] * 3
    assert eta.failed_runs(notes, 2) == [3, 0] and eta.finished_runs(notes, 2) == [3, 0]
    assert eta.expected_runs(eta.planned_runs(3, 3, 3, 2), [3, 0]) == [3, 0]
    assert eta.progress_eta(notes, 3, 3, 3, 3, rows, 1) == "3/3 trials done, ETA 0 s"
    # even with a failed run that has no wall time (a runner error), the finished search is done
    assert eta.progress_eta([{"0": _run(None, error="submit failed")}] * 3, 3, 3, 3, 3, rows, 1) == \
        "3/3 trials done, ETA 0 s"


def test_failed_runs_neither_stay_planned_nor_shorten_the_estimate_of_trained_ones():
    rows = [100, 300]
    # 6 trials, brackets of 3 (rung 1 planned: 2 runs); 4 rung-0 runs finished, two of them failed
    # after 1 s, two trained in 10 s: 2 rung-0 runs left at 10 s (not the 5.5 s mean of all four),
    # and 2 rung-1 runs at 30 s (scaled by rows); 4 - 2 failed still leaves 2 for rung 1
    notes = [{"0": _run(10.0, auc=0.7)}, {"0": _run(10.0, auc=0.71)}, {"0": _run(1.0, error="x")},
             {"0": _run(1.0, error="y")}]
    assert eta.finished_walls(notes, 2) == [[10.0, 10.0], []]
    assert eta.progress_eta(notes, 2, 6, 3, 3, rows, 1) == "2/6 trials done, ETA 1 min 20 s"
    # with all four failed: 2 rung-0 runs left at their 1 s; rung 1 gets at most 6 - 4 = 2 survivors
    notes = [{"0": _run(1.0, error="x")}] * 4
    assert eta.expected_runs(eta.planned_runs(6, 3, 3, 2), eta.failed_runs(notes, 2)) == [6, 2]
