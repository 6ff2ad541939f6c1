"""README's first command, tools/quickstart.sh, end to end at a small size: data, statistics, the
search (reference + actor-critic candidates, two subprocess trials at a time, halving) and the
report, with the files the README promises. (The full-size run is timed in README.md.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsearch.search.store import JournalStore
from recsearch.types import TrialState

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quickstart_script_runs_a_search_and_writes_report_and_tensorboard(tmp_path):
    out = tmp_path / "qs"
    env = dict(os.environ, OUT=str(out), QUICKSTART_INSTALL="0", VENV=str(Path(sys.executable).parent.parent),
               DATA_ARGS="rows_per_day=4000 --workers 1",
               SEARCH_ARGS="trials=3 fidelity.train_rows=[4000,12000] base.latency_iters=5")
    proc = subprocess.run(["bash", str(REPO / "tools" / "quickstart.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    assert "[search] actor_critic controller; 3 trials, rungs [4000, 12000] rows (eta 3); pool runner x 2" in text
    assert "[search] space: 11 decisions, 41,472 configurations: embedding_dim [8, 16, 32, 64]; " in text
    assert "[search] done: 3/3 configurations trained" in text
    meta = json.loads((out / "data" / "meta.json").read_text())
    assert meta["day_rows"] == [4000] * 4 and (out / "data" / "stats.json").exists()
    records = JournalStore(out / "search").trials()
    ref = [r for r in records if r.notes.get("reference")]
    cands = [r for r in records if not r.notes.get("reference") and not r.notes.get("rejected")]
    assert len(ref) == 1 and ref[0].state is TrialState.COMPLETE and ref[0].result.auc > 0.5
    assert len(cands) == 3 and all(r.state.finished for r in cands)
    # every rejected candidate is dim 64 (the 64 MiB cap), never trained
    assert all(r.spec.arch.embedding_dim == 64 for r in records if r.notes.get("rejected"))
    report = out / "search" / "report"
    for name in ("report.md", "summary.json", "pareto.png", "auc_vs_trial.png", "best_train.yaml"):
        assert (report / name).stat().st_size > 0, name
    assert list((out / "search" / "tensorboard").glob("trial_*/events.out.tfevents.*"))
    assert list((out / "search" / "trials").glob("*/tb/events.out.tfevents.*"))
