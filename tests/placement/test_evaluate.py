"""`recsearch place eval`: measured per-task, per-method results, summary and markdown section."""

import json

import pytest

from recsearch.placement.cli.eval import main
from recsearch.placement.eval_markdown import render_markdown
from recsearch.placement.evaluate import bound_summary, summarize
from recsearch.placement.cost_net import load_shipped
from recsearch.placement.tables import load_task, make_task, save_task


@pytest.fixture()
def task_dir(tiny_pool, tmp_path):
    d = tmp_path / "tasks"
    for t, dev in ((10, 2), (12, 3)):
        task = make_task(tiny_pool.tables, t, dev, seed=t, slack=1.3, name=f"t{t}_d{dev}")
        save_task(d / f"t{t}_d{dev}.json", task)
    return d


def test_eval_measures_every_method_and_writes_its_section(task_dir, tmp_path, capsys):
    md = tmp_path / "BENCH.md"
    md.write_text("# Benchmarks\n\n<!-- other:start -->\nkeep me\n<!-- other:end -->\n")
    out = tmp_path / "results.json"
    methods = ["round_robin", "lookup_greedy", "torchrec", "learned", "learned_k4"]
    rc = main(
        ["--tasks", str(task_dir), "--methods", *methods, "--out", str(out), "--batch-size", "256",
         "--warmup", "1", "--iters", "2", "--md", str(md), "--section", "place_eval_test"]
    )
    assert rc == 0
    report = json.loads(out.read_text())
    assert [r["task"] for r in report["rows"]] == ["t10_d2", "t12_d3"]
    assert report["hardware"].startswith("cpu:")
    for row in report["rows"]:
        assert set(row["results"]) == set(methods)
        for m, r in row["results"].items():
            assert r["feasible"], (m, r)
            assert r["measured_ms"] > 0 and r["estimate_ms"] > 0 and r["plan_ms"] >= 0
            assert r["measured_ms"] == pytest.approx(r["measured_compute_ms"] + r["measured_comm_ms"], abs=2e-4)
            assert len(r["ranks"]) == row["tables"] and max(r["ranks"]) < row["devices"]
        # identical placements are measured once, so they carry identical costs
        if row["results"]["learned"]["ranks"] == row["results"]["learned_k4"]["ranks"]:
            assert row["results"]["learned"]["measured_ms"] == row["results"]["learned_k4"]["measured_ms"]
        # the measured lower bound: compute from the fused-all and heaviest-alone timings, the
        # least all-to-all from the task's total dim alone (the shipped cost net's comm model)
        comm = load_shipped("cpu").comm_model
        b = row["bound"]
        task = load_task(task_dir / f"{row['task']}.json")
        world = row["devices"]
        assert b["all_fused_ms"] > 0 and len(b["singles_ms"]) == row["tables"]  # every table alone
        assert b["heaviest_alone_ms"] == max(b["singles_ms"].values())
        assert b["cheapest_alone_ms"] == min(b["singles_ms"].values())
        assert b["sum_alone_ms"] == pytest.approx(sum(b["singles_ms"].values()), abs=1e-3)
        # balance: the smaller of the sub-additive (all fused) and additive (sum alone, less the
        # overheads of the calls fusion saves) totals, shared out perfectly
        summed = b["sum_alone_ms"] - (row["tables"] - world) * b["cheapest_alone_ms"]
        assert b["balance_ms"] == pytest.approx(min(b["all_fused_ms"], summed) / world, abs=2e-4)
        assert b["bound_compute_ms"] == pytest.approx(max(b["balance_ms"], b["heaviest_alone_ms"]), abs=2e-4)
        least_bytes = 256 / world * sum(t.dim for t in task.tables) * (world - 1) / world * 4
        assert b["bound_comm_ms"] == pytest.approx(2 * comm.ms(least_bytes), abs=2e-4)
        # no placement's modeled all-to-all is below the least one
        assert all(r["measured_comm_ms"] >= b["bound_comm_ms"] - 2e-4 for r in row["results"].values())
        assert b["binding"] in ("heaviest table", "balance")
    assert report["bound"]["tasks"] == 2 and set(report["bound"]["methods"]) == set(methods)
    s = report["summary"]["measured_ms"]
    assert s["tasks"] == 2 and s["best_baseline"] in ("round_robin", "lookup_greedy", "torchrec")
    assert s["methods"][s["best_baseline"]]["ratio_vs_best_baseline"] == 1.0
    text = md.read_text()
    assert "keep me" in text and "<!-- place_eval_test:start -->" in text
    assert "| t10_d2 | 10 | 2 |" in text and "| t12_d3 | 12 | 3 |" in text
    assert "**Room left: measured cost / the task's lower bound**" in text and "| lower bound |" in text
    assert report["hardware"] in text
    assert "best baseline method" in capsys.readouterr().out


def test_estimate_only_and_bad_method(task_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = main(["--tasks", str(task_dir), "--methods", "round_robin", "learned", "--out", str(out), "--no-measure"])
    assert rc == 0
    rows = json.loads(out.read_text())["rows"]
    assert all("measured_ms" not in r for row in rows for r in row["results"].values())
    assert main(["--tasks", str(task_dir), "--methods", "best_fit", "--out", str(out)]) == 2
    assert "unknown method 'best_fit'" in capsys.readouterr().err


def test_summary_ratios_and_infeasible_counts():
    rows = [
        {"task": "a", "tables": 2, "devices": 2, "results": {
            "round_robin": {"feasible": True, "measured_ms": 10.0, "estimate_ms": 9.0, "plan_ms": 1.0},
            "size_greedy": {"feasible": True, "measured_ms": 8.0, "estimate_ms": 9.0, "plan_ms": 1.0},
            "learned": {"feasible": True, "measured_ms": 6.0, "estimate_ms": 5.0, "plan_ms": 5.0}}},
        {"task": "b", "tables": 2, "devices": 2, "results": {
            "round_robin": {"feasible": True, "measured_ms": 4.0, "estimate_ms": 4.5, "plan_ms": 1.0},
            "size_greedy": {"feasible": True, "measured_ms": 5.0, "estimate_ms": 4.5, "plan_ms": 1.0},
            "learned": {"feasible": False, "error": "x"}}},
    ]
    s = summarize(rows, ["round_robin", "size_greedy", "learned"], "measured_ms")
    # relative to the per-task best: round_robin (1.25 + 1) / 2, size_greedy (1 + 1.25) / 2: tie,
    # broken by method order
    assert s["best_baseline"] == "round_robin"
    assert s["methods"]["learned"] == {
        "tasks": 1, "infeasible": 1, "mean_ms": 6.0, "ratio_vs_best_baseline": 0.6,
        "ratio_vs_task_best": 0.75, "wins_vs_best_baseline": 1, "mean_plan_ms": 5.0,
    }
    md = render_markdown({"title": "T", "notes": ["n"], "methods": ["round_robin", "size_greedy", "learned"],
                          "summary": {"measured_ms": s}, "rows": rows})
    assert "| a | 2 | 2 | 10.00 (9.00) | 8.00 (9.00) | 6.00 (5.00) |" in md
    assert "| b | 2 | 2 | 4.00 (4.50) | 5.00 (4.50) | x |" in md


def test_bound_summary_ratios_and_binding_count():
    rows = [
        {"task": "a", "bound": {"bound_ms": 5.0, "binding": "heaviest table"}, "results": {
            "lookup_greedy": {"measured_ms": 6.0}, "learned": {"measured_ms": 5.5}}},
        {"task": "b", "bound": {"bound_ms": 4.0, "binding": "balance"}, "results": {
            "lookup_greedy": {"measured_ms": 4.4}, "learned": {"feasible": False}}},
        {"task": "c", "results": {"lookup_greedy": {"measured_ms": 1.0}}},  # no bound: left out
    ]
    s = bound_summary(rows, ["lookup_greedy", "learned"])
    assert s["tasks"] == 2 and s["heaviest_table_binds"] == 1
    assert s["methods"] == {"lookup_greedy": pytest.approx((1.2 + 1.1) / 2), "learned": 1.1}


def test_run_eval_is_a_typed_function_with_its_markdown_apart(task_dir):
    """The library call behind the command: tasks, methods, a cost net and an EvalConfig in, an
    EvalReport out; its JSON form is what the command writes and what render_markdown reads."""
    from recsearch.placement.evaluate import EvalConfig, EvalReport, run_eval
    from recsearch.placement.tables import load_tasks

    tasks = load_tasks(task_dir)
    cfg = EvalConfig(batch_size=256, measure=False, planning_timing=False)
    report = run_eval(tasks, ["round_robin", "size_greedy", "learned"], load_shipped("cpu"), cfg)
    assert isinstance(report, EvalReport) and report.key == "estimate_ms"
    assert [r["task"] for r in report.rows] == [t.name for t in tasks]
    assert report.bound is None and report.planning is None and report.placement_error is None
    assert report.hardware.startswith("estimates of cpu:")
    as_dict = report.to_dict("T", ["a note"])
    assert list(as_dict) == ["title", "notes", "methods", "hardware", "config", "summary", "bound",
                             "planning_200", "rows"]  # fmt: skip
    text = render_markdown(as_dict)
    assert text.startswith("## T\n\n- a note\n") and "| learned |" in text
    with pytest.raises(ValueError, match="unknown method 'best_fit'"):
        run_eval(tasks, ["best_fit"], load_shipped("cpu"), cfg)


def test_best_learned_is_the_cheapest_estimate_among_learned_and_the_rivals():
    """best_learned / best_learned_kK: what LearnedShardingPlanner's default placer does, as an
    evaluation method: the learned placement unless a rival baseline's is rated cheaper by the
    policy's own cost net."""
    from pathlib import Path

    from recsearch.placement.best_of import DEFAULT_RIVALS
    from recsearch.placement.evaluate import EvalConfig, run_eval
    from recsearch.placement.tables import load_tasks

    tasks = load_tasks(Path(__file__).parents[2] / "recsearch/placement/data/tasks_test")[:6]
    cfg = EvalConfig(measure=False, planning_timing=False)
    methods = [*DEFAULT_RIVALS, "learned", "best_learned", "learned_k4", "best_learned_k4"]
    report = run_eval(tasks, methods, load_shipped("cpu"), cfg)
    kept_rival = 0
    for row in report.rows:
        est = {m: r["estimate_ms"] for m, r in row["results"].items()}
        for k in ("", "_k4"):
            cheapest = min(est[m] for m in (*DEFAULT_RIVALS, f"learned{k}"))
            assert est[f"best_learned{k}"] == pytest.approx(cheapest)
            kept_rival += est[f"best_learned{k}"] < est[f"learned{k}"]
    assert kept_rival >= 1  # on these tasks a baseline is sometimes rated cheaper (BENCHMARKS bench_planner)


def test_placement_error_reports_the_bias_and_warns_past_the_stale_line():
    """placement_error's compute_bias is the median estimate / measured of the slowest device's
    compute; stale_net_warning speaks only above STALE_NET_ERROR, and says which way it is off."""
    from recsearch.placement.evaluate import STALE_NET_ERROR, placement_error, stale_net_warning

    def row(task, pairs):
        return {"task": task, "results": {
            f"m{i}": {"ranks": [i], "estimate_ms": e + 1.0, "measured_ms": m + 1.0,
                      "estimate_compute_ms": e, "measured_compute_ms": m}
            for i, (e, m) in enumerate(pairs)}}  # fmt: skip

    err = placement_error([row("a", [(15.0, 10.0), (30.0, 20.0)]), row("b", [(12.0, 10.0)])])
    assert err["placements"] == 3 and err["compute_bias"] == 1.5
    assert err["compute_mre"] == pytest.approx((0.5 + 0.5 + 0.2) / 3, abs=1e-4)
    text = stale_net_warning(err, "cpu:Some CPU|cpus=2")
    assert text and "40% off" in text and "too dear" in text and "cpu:Some CPU|cpus=2" in text
    assert "recsearch place measure" in text and "cost-net train" in text
    cheap = placement_error([row("a", [(7.0, 10.0), (8.0, 10.0)])])
    assert cheap["compute_bias"] == 0.75 and "too cheap" in stale_net_warning(cheap, "x")
    close = placement_error([row("a", [(10.5, 10.0), (9.0, 10.0)])])
    assert close["compute_mre"] <= STALE_NET_ERROR and stale_net_warning(close, "x") is None
    assert stale_net_warning(placement_error([]), "x") is None  # nothing measured


def test_eval_warns_when_the_cost_net_is_off_this_machine(task_dir, tmp_path, capsys):
    """A net that prices every table three times too dear (the shipped CPU net, its work line
    scaled by 3): `place eval` measures, finds the net off, says so on stderr and in the notes."""
    import math

    import torch

    net = load_shipped("cpu")
    with torch.no_grad():
        net.net.work_log += math.log(3.0)
    net.save(tmp_path / "stale")
    out = tmp_path / "results.json"
    argv = ["--tasks", str(task_dir), "--methods", "round_robin", "dim_greedy", "--out", str(out),
            "--cost-net", str(tmp_path / "stale"), "--rounds", "1", "--warmup", "1", "--iters", "2",
            "--no-bound", "--no-timing"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    err = report["cost_net_placement_error"]
    assert err["compute_bias"] > 1.5 and err["compute_mre"] > 0.5
    warned = [n for n in report["notes"] if n.startswith("warning: the cost net's compute")]
    assert len(warned) == 1 and "too dear" in warned[0]
    assert "warning: the cost net's compute estimates are" in capsys.readouterr().err
