import json
import re
import struct

import pytest
import yaml

from recsearch import config
from recsearch.search import report
from recsearch.search.results import NoSearchError, read_search
from recsearch.train.trainer import TrainConfig
from recsearch.types import TrialState
from tests.conftest import write_dataset
from tests.search.fake_search import FakeSearch, choices, space


def _png_size(path):
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


@pytest.fixture
def search(tmp_path):
    """Reference 0.75 @ 1.00 ms; candidates 1-4 trained, 5 failed, 6 rejected, 7 stopped early,
    8 still running. Within the reference's latency the best is trial 2 (0.76 @ 0.95 ms);
    trial 3 (0.77 @ 1.30 ms) is better but slower."""
    data = tmp_path / "data"
    write_dataset(data)
    s = FakeSearch(tmp_path / "search", data)
    assert s.reference(0.75, 1.00) == 0
    s.candidate(choices(bottom_width=0), 0.74, 0.80)
    s.candidate(choices(bottom_width=1), 0.76, 0.95, wall_s=4.5)
    s.candidate(choices(bottom_width=2), 0.77, 1.30)
    s.candidate(choices(bottom_width=1, embedding_dim=1), 0.755, 1.10)
    s.candidate(choices(batch_size=1), None, None, error="RuntimeError: CUDA out of memory | at step 3")
    s.rejected(choices(embedding_dim=1, bottom_width=2))
    s.candidate(choices(interaction=1), 0.71, 0.9, pruned=True)
    s.running(choices(top_width=1))
    return s


def test_report_numbers_tables_plots_and_best_config(search, tmp_path):
    out = tmp_path / "rep"
    assert report.main([str(search.root), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()

    # the running trial has not finished a run: not trained, counted apart
    assert ("trained configurations: 6 of the 12 budgeted (4 complete, 1 failed, 1 pruned by successive halving); "
            "1 running (no run finished yet)") in md
    assert "rejected before training (did not fit / over the step-cost budget): 1" in md
    assert "**Partial:** 1 trial(s) not finished" in md
    assert "budget on latency p50 (ms): 1.0000 ms (the reference config's (trial 0))" in md
    assert "Trial 2: val AUC **0.7600**, latency p50 (ms) 0.9500, test AUC 0.7590" in md
    assert "Best regardless of latency p50 (ms): trial 3, val AUC 0.7700, latency p50 (ms) 1.3000" in md
    assert "Best minus reference: +0.0100 val AUC." in md
    # elapsed and compute: the trials' own wall times summed (5 + 3 + 4.5 + 3 + 3 + 3 + 3)
    assert "trial compute: 24 s" in md

    front = md.split("## Pareto front")[1].split("## Parameter importance")[0]
    front_rows = [line.split("|")[1].strip() for line in front.splitlines() if line.startswith("| ") and "trial" not in line]
    assert front_rows == ["1", "2", "3"]
    assert "3 of 5 trained trials are on the front" in front

    trials = md.split("## Trials")[1]
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in trials.splitlines() if line.startswith("| ")]
    rows = {int(c[0]): c for c in cells if c[0].isdigit()}
    assert sorted(rows) == list(range(9))
    assert rows[5][2] == "FAILED" and rows[5][11] == "RuntimeError: CUDA out of memory \\| at step 3"
    assert rows[6][1:3] == ["rejected", "REJECTED"] and rows[6][11].startswith("does not fit")
    assert rows[7][2] == "PRUNED" and rows[7][4] == "0.7100" and rows[7][11].startswith("not promoted")
    assert rows[8][2] == "RUNNING" and rows[8][4] == "-"
    assert rows[0][1] == "reference" and rows[0][3].startswith("dim 16, bottom 64-32, top 64, dot, batch 512")
    assert rows[2][4:10] == ["0.7600", "0.4400", "0.7400", "0.9500", "0.4000", "4096"]  # auc, log loss, NE, ...

    # 4 complete candidates < 5: importance is refused with the counts
    assert "needs at least 5 complete trials with a finite auc; this search has 4 (of 9 trials" in md
    assert not (out / "importance.png").exists()

    for name in ("pareto.png", "auc_vs_trial.png"):
        width, height = _png_size(out / name)
        assert width >= 600 and height >= 400
        assert (out / name).stat().st_size > 10_000

    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"]["trial_id"] == 2 and summary["best_overall"]["trial_id"] == 3
    assert summary["pareto_front"] == [1, 2, 3]
    assert summary["counts"] == {"trials": 9, "trained": 6, "complete": 4, "failed": 1, "pruned": 1,
                                 "rejected": 1, "unfinished": 1, "reference": 1, "undecided": 0, "running": 1}
    assert summary["bayes_auc"] is None  # write_dataset's data has no planted ceiling

    best_yaml = out / "best_train.yaml"
    assert best_yaml.read_text().startswith(f"# Used by: recsearch train --config {best_yaml}")
    cfg = config.load(TrainConfig, best_yaml)
    spec = search.store.get(2).spec
    assert cfg.arch == spec.arch and cfg.hparams == spec.hparams
    assert cfg.arch.bottom_mlp == (64, 8) and cfg.train_rows == 4096
    assert cfg.plan == str((out / "best_placement.json").resolve())
    assert json.loads((out / "best_placement.json").read_text())["placement"]["t_cat_0"] == 0
    assert cfg.output_dir == str((search.root / "best_run").resolve()) and cfg.resume_from is None


def test_budget_from_search_config_and_other_axes(search, tmp_path):
    raw = yaml.safe_load((search.root / "search.yaml").read_text())
    raw["objective"]["budget_ms"] = 1.5
    (search.root / "search.yaml").write_text(yaml.safe_dump(raw))
    rep = report.write_report(search.root, tmp_path / "a")
    assert rep.budget.limit == 1.5 and rep.best.trial_id == 3 and rep.best is rep.best_overall
    assert "Best regardless" not in (tmp_path / "a" / "report.md").read_text()
    # by log loss (lower is better; the fake sets it to 1.2 - AUC) against the estimated step cost
    # (0.4 ms for every candidate, 0.5 for the reference): trial 3 alone is on the front
    rep = report.write_report(search.root, tmp_path / "b", metric="log_loss", cost_key="est_step_cost_ms")
    assert rep.front.trial_ids == (3,) and rep.best.trial_id == 3
    assert "| 3 | candidate | 0.4300 | 0.4000 |" in (tmp_path / "b" / "report.md").read_text()


def test_nothing_within_budget_exports_best_overall(search, tmp_path):
    raw = yaml.safe_load((search.root / "search.yaml").read_text())
    raw["objective"]["budget_ms"] = 0.1
    (search.root / "search.yaml").write_text(yaml.safe_dump(raw))
    rep = report.write_report(search.root, tmp_path / "r")
    assert rep.best is None and rep.best_overall.trial_id == 3
    md = (tmp_path / "r" / "report.md").read_text()
    assert "No complete candidate within the budget" in md
    assert "trial 3, best overall: none is within the latency p50 (ms) budget" in md
    assert config.load(TrainConfig, tmp_path / "r" / "best_train.yaml").arch == search.store.get(3).spec.arch


def test_missing_trial_yaml_is_rebuilt_from_search_base(search, tmp_path):
    (search.root / "trials" / "2" / "trial.yaml").unlink()
    report.write_report(search.root, tmp_path / "r")
    cfg = config.load(TrainConfig, tmp_path / "r" / "best_train.yaml")
    assert cfg.arch == search.store.get(2).spec.arch and cfg.max_rows_per_table == 1000 and cfg.plan == "torchrec"


def test_a_moved_search_exports_the_trials_own_placement_and_says_when_it_is_lost(search, tmp_path):
    """trial.yaml names its placement by the absolute path the search had; after the directory is
    moved the file is found in the trial's directory, and only when it is gone too does the
    export fall back to TorchRec's planner, with a warning in report.md, the file and on stderr."""
    old = search.root
    trial_yaml = old / "trials" / "2" / "trial.yaml"
    raw = yaml.safe_load(trial_yaml.read_text())
    assert raw["plan"] == str(old / "trials" / "2" / "placement.json")
    raw["device_lock"] = str(old / "device.lock")  # as a latency-budgeted search writes it
    trial_yaml.write_text(yaml.safe_dump(raw, sort_keys=False))
    moved = tmp_path / "moved"
    old.rename(moved)

    report.write_report(moved, tmp_path / "r")
    cfg = config.load(TrainConfig, tmp_path / "r" / "best_train.yaml")
    assert cfg.plan == str((tmp_path / "r" / "best_placement.json").resolve())
    assert (tmp_path / "r" / "best_placement.json").read_text() == (moved / "trials" / "2" / "placement.json").read_text()
    assert cfg.device_lock is None and not old.exists()  # the old directory is not recreated
    assert "warning" not in (tmp_path / "r" / "report.md").read_text()

    (moved / "trials" / "2" / "placement.json").unlink()
    with pytest.warns(UserWarning, match="trial 2's placement is lost"):
        report.write_report(moved, tmp_path / "lost")
    best = tmp_path / "lost" / "best_train.yaml"
    assert config.load(TrainConfig, best).plan == "torchrec" and not (tmp_path / "lost" / "best_placement.json").exists()
    lost = (f"trial 2's placement is lost (neither {old / 'trials' / '2' / 'placement.json'} nor "
            f"{moved / 'trials' / '2' / 'placement.json'} exists): plan set to torchrec")
    assert f"# Warning: {lost}" in best.read_text()
    assert f"(trial 2, best within the budget; warning: {lost}" in (tmp_path / "lost" / "report.md").read_text()


def test_killed_search_with_torn_journal_tail(search, tmp_path):
    with open(search.root / "journal.jsonl", "ab") as fh:
        fh.write(b'{"op": "state", "trial_id": 8, "sta')  # the search died mid-append
    rep = report.write_report(search.root, tmp_path / "r")
    assert rep.counts.unfinished == 1 and rep.best.trial_id == 2


def test_importance_section_and_plot_with_enough_trials(tmp_path):
    data = tmp_path / "data"
    write_dataset(data)
    s = FakeSearch(tmp_path / "search", data)
    sizes = dict(zip([d.name for d in space().decisions], space().sizes))
    for i in range(12):  # AUC is driven by bottom_width alone
        width = i % sizes["bottom_width"]
        s.candidate(choices(bottom_width=width, embedding_dim=(i // 3) % 2, batch_size=(i // 2) % 2),
                    0.70 + 0.03 * width + 0.0001 * i, 1.0)
    rep = report.write_report(s.root, tmp_path / "r")
    assert rep.importance.scores[0][0] == "bottom_width"
    md = (tmp_path / "r" / "report.md").read_text()
    section = md.split("## Parameter importance")[1].split("## Trials")[0]
    assert "over 12 complete candidates" in section
    assert section.index("| bottom_width |") < section.index("| embedding_dim |")
    assert "Not ranked (one value in every trial): " in section and "top_depth" in section
    assert _png_size(tmp_path / "r" / "importance.png")[0] >= 500
    # no reference: no latency budget, so the best is the best overall
    assert rep.reference is None and rep.budget.limit is None and rep.best.trial_id == 11


def test_no_journal_is_a_clear_error(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no journal.jsonl, so no search has run here" in err
    assert not (tmp_path / "journal.jsonl").exists()  # reading never creates one
    assert report.main([str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err
    with pytest.raises(NoSearchError):
        read_search(tmp_path)


def test_bad_search_yaml_and_bad_flags(search, tmp_path, capsys):
    with pytest.raises(SystemExit):
        report.main([str(search.root), "--metric", "speed"])
    (search.root / "search.yaml").write_text("- a list\n")
    assert report.main([str(search.root)]) == 2
    assert "search.yaml: top level must be a mapping" in capsys.readouterr().err


def test_empty_journal_reports_nothing_yet(tmp_path):
    (tmp_path / "journal.jsonl").touch()
    rep = report.write_report(tmp_path, tmp_path / "r")
    assert rep.counts.trials == 0 and rep.best is None
    md = (tmp_path / "r" / "report.md").read_text()
    assert "No `best_train.yaml`: no complete candidate to export" in md
    assert not (tmp_path / "r" / "pareto.png").exists()


def test_the_report_judges_the_latency_budget_as_the_search_did():
    """A candidate slower than the reference's own measurement but faster than the reference
    timed in its rounds is within a reference budget (as its reward said), not within an explicit
    one."""
    from recsearch.search.report import Budget, _against_budget
    from recsearch.search.results import CANDIDATE, TrialRow

    row = TrialRow(trial_id=3, kind=CANDIDATE, state=TrialState.COMPLETE, params={}, latency_p50_ms=1.5,
                   latency_vs_reference=1.5 / 1.6)
    by_reference = Budget("latency_p50_ms", 1.0, "the reference config's (trial 0)")
    explicit = Budget("latency_p50_ms", 1.0, "objective.budget_ms in search.yaml")
    assert _against_budget(row, "latency_p50_ms", by_reference) == pytest.approx(1.5 / 1.6)
    assert _against_budget(row, "latency_p50_ms", explicit) == 1.5
    assert _against_budget(row, "latency_p99_ms", by_reference) is None
    # judged beside the reference trial's own ratio (its trained model vs a fresh one)
    reference = TrialRow(trial_id=0, kind="reference", state=TrialState.COMPLETE, params={}, latency_p50_ms=1.0,
                         latency_vs_reference=0.9)
    assert _against_budget(row, "latency_p50_ms", by_reference, reference) == pytest.approx(1.5 / 1.6 / 0.9)


def _fake(tmp_path):
    data = tmp_path / "data"
    write_dataset(data)
    return FakeSearch(tmp_path / "search", data)


def test_compute_and_wall_include_every_rung_and_running_trials_are_not_trained(tmp_path):
    from recsearch.search.store import JournalStore

    s = _fake(tmp_path)
    s.reference(0.75, 1.0, wall_s=5.0)
    # promoted: rung 0 in 1.5 s, the top rung in 4 s (the trial's wall_s note holds the last rung only)
    promoted = s.candidate(choices(bottom_width=1), 0.76, 0.95, wall_s=4.0)
    s.store.set_state(promoted, TrialState.COMPLETE, notes={"rungs": {
        "0": {"auc": 0.74, "wall_s": 1.5, "error": None}, "1": {"auc": 0.76, "wall_s": 4.0, "error": None}}})
    # trained at rung 0 (2.5 s), its bracket not decided; two more running their first run
    waiting = s.running(choices(bottom_width=2))
    s.store.set_state(waiting, TrialState.PENDING, notes={"rungs": {"0": {"auc": 0.7, "wall_s": 2.5}}, "wall_s": 2.5})
    s.running(choices(top_width=1))
    s.running(choices(batch_size=1))
    out = tmp_path / "rep"
    assert report.main([str(s.root), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert ("- trained configurations: 2 of the 12 budgeted (1 complete, 0 failed, 0 pruned by successive "
            "halving, 1 trained at a lower rung and not decided yet); 2 running (no run finished yet)") in md
    # 5 (reference) + 1.5 + 4 (both rungs of the promoted trial) + 2.5
    assert "trial compute: 13 s (sum of the wall times of every run: each rung of a promoted trial" in md
    trials = md.split("## Trials")[1]
    assert "| wall (s), all rungs |" in trials
    cells = {int(c[0]): c for c in ([x.strip() for x in re.split(r"(?<!\\)\|", ln)[1:-1]]
                                    for ln in trials.splitlines() if ln.startswith("| ")) if c[0].isdigit()}
    assert cells[promoted][10] == "5.5" and cells[waiting][10] == "2.5"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["compute_s"] == pytest.approx(13.0)
    assert summary["counts"]["running"] == 2 and summary["counts"]["undecided"] == 1
    # a search whose every candidate is still in its first run: nothing trained yet
    rows = read_search(s.root).rows
    fresh = [r for r in rows if r.kind != "candidate" or r.state is TrialState.RUNNING]
    c = report.count(fresh, {r.trial_id: report.finished_runs(r) for r in JournalStore(s.root, read_only=True).trials()})
    assert (c.trained, c.running) == (0, 2)


def test_the_budget_verdict_shows_the_latency_it_judged_beside_the_raw_p50(tmp_path):
    from dataclasses import replace

    s = _fake(tmp_path)
    ref = s.reference(0.75, 1.175)
    # raw p50 1.1672 is under the 1.175 budget, but timed beside the reference it was 5 % slower
    slow = s.candidate(choices(bottom_width=1), 0.78, 1.1672)
    for trial_id, ratio in ((ref, 1.0), (slow, 1.05)):
        rec = s.store.get(trial_id)
        s.store.set_state(trial_id, rec.state, result=replace(rec.result, latency_vs_reference=ratio))
    out = tmp_path / "rep"
    rep = report.write_report(s.root, out)
    assert rep.best is None and rep.best_overall.trial_id == slow
    md = (out / "report.md").read_text()
    assert "No complete candidate within the budget on latency p50 (ms)." in md
    assert (f"Best regardless of latency p50 (ms): trial {slow}, val AUC 0.7800, latency p50 (ms) 1.1672 "
            f"(judged against the budget: 1.2338)") in md
    assert f"Reference config (trial {ref}, COMPLETE): val AUC 0.7500, latency p50 (ms) 1.1750 (judged against the budget: 1.1750)" in md
    assert "Within the budget is judged as the search's reward judged it" in md
    assert json.loads((out / "summary.json").read_text())["best_overall"]["judged_cost"] == pytest.approx(1.23375)
    # an explicit budget judges the raw p50: no judged figure, no note
    raw = yaml.safe_load((s.root / "search.yaml").read_text())
    raw["objective"]["budget_ms"] = 1.17
    (s.root / "search.yaml").write_text(yaml.safe_dump(raw))
    md = report.render_markdown(report.build_report(read_search(s.root)), {}, None, "x")
    assert f"Trial {slow}: val AUC **0.7800**, latency p50 (ms) 1.1672, test AUC" in md and "judged" not in md
