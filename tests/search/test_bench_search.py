"""tools/bench_search.py: the summary arithmetic on hand-made trajectories, and one real quick run
whose section is checked against the searches' own journals."""

import re
import struct

import pytest

from recsearch.search.results import CANDIDATE, REFERENCE, read_search
from recsearch.types import TrialState
from tools import bench_search


def _traj(controller, seed, aucs, lats, ref_auc=0.70, ref_lat=5.0, entropy=None):
    return bench_search.Trajectory(
        controller=controller, seed=seed, aucs=tuple(aucs), latencies_ms=tuple(lats),
        test_aucs=tuple(None if a is None else a - 0.001 for a in aucs),
        elapsed_s=tuple(10.0 * (i + 1) for i in range(len(aucs))),
        reference_auc=ref_auc, reference_latency_ms=ref_lat, rejected=1, failed=sum(a is None for a in aucs),
        entropy=entropy, wall_s=25.0,
    )


def test_trajectory_best_so_far_latency_filter_and_reaching_the_reference():
    t = _traj("random", 0, [0.68, None, 0.72, 0.71, 0.75], [4.0, None, 6.0, 4.5, 7.0])
    assert t.best_so_far() == [0.68, 0.68, 0.72, 0.72, 0.75]
    assert t.best_at(2) == 0.68 and t.best_at(5) == 0.75
    assert t.best_index(5) == 4 and t.best_index(3) == 2
    assert t.best_within_latency(5) == 0.71  # 0.72 and 0.75 are slower than the reference's 5 ms
    assert t.reached_reference() == (4, 40.0)  # the first with AUC >= 0.70 at <= 5 ms
    slow = _traj("random", 1, [0.72], [5.5])
    assert slow.reached_reference() is None and slow.best_within_latency(1) is None
    assert bench_search.budgets_for(20) == [5, 10, 15, 20] and bench_search.budgets_for(3) == [3]


def test_summary_and_verdicts_use_medians_over_seeds(tmp_path):
    trajs = [
        _traj("actor_critic", 0, [0.70, 0.74], [4.0, 4.0], entropy=(0.70, 0.40)),
        _traj("actor_critic", 1, [0.71, 0.73], [4.0, 6.0], entropy=(0.72, 0.50)),
        _traj("actor_critic", 2, [0.69, 0.72], [4.0, 4.0], entropy=(0.71, 0.45)),
        _traj("random", 0, [0.70, 0.71], [4.0, 4.0]),
        _traj("random", 1, [0.74, 0.70], [4.0, 4.0]),
        _traj("random", 2, [0.69, 0.72], [4.0, 4.0]),
    ]
    budgets = [2]
    summaries = [bench_search.summarize([t for t in trajs if t.controller == c], budgets) for c in ("actor_critic", "random")]
    ac, rnd = summaries
    assert ac.best_at[2] == [0.74, 0.73, 0.72] and rnd.best_at[2] == [0.71, 0.74, 0.72]
    assert ac.best_within_latency == [0.74, 0.71, 0.72]
    assert ac.failed == 0 and ac.rejected == 3 and len(ac.reached) == 3
    setup = {"date": "2026-01-01", "machine": "test", "wall_min": 1.0, "reused": 0, "rows_per_day": 1000, "train_rows": 2000,
             "val_rows": 500, "epochs": 2, "seeds": "0, 1, 2", "space_text": "x", "notes": ["n"]}
    text = bench_search.render_section(summaries, trajs, budgets, 0.80, setup, None, "cmd", tmp_path)
    assert "| actor_critic | 0.7300 [0.7200-0.7400] |" in text
    assert "| random | 0.7200 [0.7100-0.7400] |" in text
    assert "actor-critic median best val AUC >= random at 2 trials: 0.7300 vs 0.7200 (met)" in text
    assert "no slower than the reference (what the latency-budgeted objective asks for): 0.7200 vs 0.7200 (met)" in text
    assert "3 of 3 seeds (met)" in text
    # per seed: 0.74 > 0.71, 0.73 < 0.74, 0.72 = 0.72
    assert ("seed by seed at 2 trials, actor-critic's best val AUC vs random's: higher in 1, equal in 1, lower in 1 "
            "of 3 seeds; mean difference +0.0067; two-sided sign test p = 1.00") in text
    # all trials: AC (0.70 + 0.74 + 0.71 + 0.73 + 0.69 + 0.72) / 6; second half: (0.74 + 0.73 + 0.72) / 3
    assert "mean val AUC of the trials actor_critic proposed: 0.7150 over all 6, 0.7300 over trials 2-2" in text
    assert "mean val AUC of the trials random proposed: 0.7100 over all 6, 0.7100 over trials 2-2" in text
    assert "the 6 searches took 2.5 min of wall time in all" in text
    assert "entropy 0.710 nats at its first update, 0.450 at its last" in text
    assert "gap to the Bayes ceiling of the best model found by any search: 0.0600 AUC" in text


@pytest.mark.slow
def test_quick_run_writes_its_section_from_the_searches_it_ran(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n<!-- other:start -->\nkeep me\n<!-- other:end -->\n")
    png = tmp_path / "bench_search.png"
    argv = ["--seeds", "0", "--trials", "2", "--controllers", "actor_critic", "random", "--rows-per-day", "3000",
            "--workdir", str(tmp_path / "work"), "--out-md", str(md), "--png", str(png)]
    assert bench_search.main(argv) == 0
    text = md.read_text()
    assert "<!-- other:start -->\nkeep me\n<!-- other:end -->" in text  # only its own section
    section = text.split("<!-- bench_search:start -->")[1].split("<!-- bench_search:end -->")[0]
    assert "train 6,000 rows, val 1,500" in section and "![best val AUC vs trials](bench_search.png)" in section
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24])[0] > 300

    for controller in ("actor_critic", "random"):
        rows = read_search(tmp_path / "work" / "searches" / f"{controller}_seed0").rows
        cands = [r for r in rows if r.kind == CANDIDATE]
        ref = next(r for r in rows if r.kind == REFERENCE)
        assert len(cands) == 2 and ref.state is TrialState.COMPLETE
        assert ref.summary.startswith("dim 16, bottom 128-64, top 128-64, dot, batch 256")
        best = max(r.auc for r in cands if r.state is TrialState.COMPLETE)
        # the table's number is the journal's: best val AUC after 2 trials (one seed: no spread)
        assert re.search(rf"\| {controller} \| {best:.4f} \|", section), (controller, best, section)
    assert re.search(r"mean per-decision entropy \d\.\d{3} nats at its first update", section)
    # a second run reuses the finished searches and writes the same table
    table = section.split("Best val AUC found")[1].split("At 2 trials")[0]
    assert bench_search.main(argv) == 0
    again = md.read_text().split("<!-- bench_search:start -->")[1].split("<!-- bench_search:end -->")[0]
    assert again.split("Best val AUC found")[1].split("At 2 trials")[0] == table
    assert "0 searches reused" in section and "2 searches reused" in again


def test_load_note_says_busy_only_when_the_load_was_above_the_cores():
    assert bench_search.load_note(1.2, 2.5, 2, 0) == ("1-minute load average 1.2 when this invocation started and "
                                                      "2.5 when it ended, on 2 cores: above the core count, other jobs "
                                                      "shared the machine, and wall times and latencies are those of a busy machine.")
    quiet = bench_search.load_note(0.4, 1.1, 2, 30)
    assert "busy" not in quiet and "(searches reused from --workdir ran earlier" in quiet and quiet.endswith(".")


def test_sign_test_p_values():
    assert bench_search.sign_test_p(5, 5) == 1.0 and bench_search.sign_test_p(0, 0) == 1.0
    assert bench_search.sign_test_p(10, 0) == pytest.approx(2 / 1024)  # two-sided, 10 of 10
    assert bench_search.sign_test_p(3, 7) == bench_search.sign_test_p(7, 3) == pytest.approx(2 * 176 / 1024)
