"""tools/bench_trial_overhead.py: trial runs and their overheads read from a search directory (every
rung, lower rungs from rung_<k>/, the reference, failures apart), and the rendered section."""

from __future__ import annotations

import json
import time
from pathlib import Path

from recsearch.search.runners import RESULT_FILE, Handle
from recsearch.types import TrialState
from tests.reliability.search_helpers import FakeRunner, start_search, tiny_config, write_fake_result
from tests.search.test_loop import learnable_data  # noqa: F401  (the fixture)
from tools import bench_trial_overhead as bench

TRAIN_S = 0.25


class _Timed(FakeRunner):
    """Trials that report TRAIN_S of training, seen to end 1 s after their submission; the
    candidate with id 2 fails."""

    def submit(self, spec, workdir):
        self.submitted.append((spec.trial_id, spec.train_rows))
        now = time.time()
        handle = Handle(spec.trial_id, Path(workdir), now - 1.0, started_at_s=now - 1.0, finished_at_s=now)
        if spec.trial_id == 2:
            (Path(workdir) / RESULT_FILE).write_text(json.dumps({"status": "failed", "error": "boom"}))
            handle.state = TrialState.FAILED
            return handle
        write_fake_result(workdir, spec)
        raw = json.loads((Path(workdir) / RESULT_FILE).read_text())
        (Path(workdir) / RESULT_FILE).write_text(json.dumps({**raw, "train_seconds": TRAIN_S}))
        handle.state = TrialState.COMPLETE
        return handle


def test_every_trial_run_is_measured_from_the_journal_and_its_result(tmp_path, learnable_data):  # noqa: F811
    raw = tiny_config(learnable_data, **{"reference": True, "trials": 4, "fidelity.train_rows": [2048, 6144],
                                         "fidelity.eta": 2})
    search, out = start_search(tmp_path, raw, runner=_Timed())
    assert search.run() == 0
    walls, trains, failed = bench.measure(out)
    runs = len(search.runner.submitted)
    assert failed == 1 and len(walls) == len(trains) == runs - 1  # the failed candidate is apart
    assert all(abs(w - 1.0) < 0.05 for w in walls) and trains == [TRAIN_S] * len(trains)
    promoted = [t for t, rows in search.runner.submitted if rows == 6144 and (out / "trials" / str(t) / "rung_0").is_dir()]
    assert promoted  # a promoted trial: its rung-0 run is read from rung_0/, its top run from the trial dir
    assert bench.run_dirs(out / "trials" / str(promoted[0]), {"0": {}, "1": {}}) == {
        "0": out / "trials" / str(promoted[0]) / "rung_0", "1": out / "trials" / str(promoted[0])}


def test_the_section_compares_the_runners_and_states_the_target():
    runs = [bench.SearchRun("subprocess", 0, 90.0, [8.0, 7.0, 9.0], [10.0] * 3, [2.0] * 3, 3, 0),
            bench.SearchRun("pool", 0, 60.0, [2.0, 3.0, 2.5], [5.0] * 3, [2.5] * 3, 3, 0)]
    split = bench.Breakdown("trial 5", [
        {"total": 6.0, "train": 4.0, "evaluate": 1.0, "latency": 0.5, "other": 0.5},
        {"total": 5.0, "train": 4.0, "evaluate": 0.6, "latency": 0.2, "other": 0.2},
        {"total": 5.2, "train": 4.2, "evaluate": 0.6, "latency": 0.2, "other": 0.2}])
    text = bench.render(runs, "python tools/bench_trial_overhead.py", "setup", split)
    assert "| subprocess | 1 | 3 | 8.00 |" in text and "| pool | 1 | 3 | 2.50 |" in text
    # 3 runs in 90 s = 120 an hour, in 60 s = 180 an hour
    assert "| 90.0 | 120 |" in text and "| 60.0 | 180 |" in text
    assert ("median trial overhead 2.50 s vs 8.00 s (0.31x), search wall time 60.0 s vs 90.0 s (0.67x), "
            "trial runs per hour 1.50x") in text
    assert "Issue 13's CPU target, median overhead <= 1.0 s: not met (2.50 s with the pool runner)" in text
    before = bench.SearchRun("before (abc123, subprocess)", 0, 100.0, [9.0] * 3, [11.0] * 3, [2.0] * 3, 3, 0)
    with_before = bench.render([*runs, before], "python tools/bench_trial_overhead.py", "setup", split)
    assert ("pool (this commit) / before (abc123, subprocess): search wall time 60.0 s vs 100.0 s (0.60x), "
            "median trial overhead 2.50 s vs 9.00 s, trial runs per hour 1.67x") in with_before
    assert "same trials and fidelities: met (60%)" in with_before
    on_gpu = bench.render(runs, "python tools/bench_trial_overhead.py --device cuda", "setup", split, "cuda")
    assert "(one GPU)" in on_gpu and "Issue 13's GPU target, median overhead <= 1.5 s: not met (2.50 s" in on_gpu
    assert "| first (first-call costs) | 6.00 | 4.00 | 2.00 | 1.00 | 0.50 | 0.50 |" in text
    assert "| later (median of 2) | 5.10 | 4.10 | 1.00 | 0.60 | 0.20 | 0.20 |" in text
