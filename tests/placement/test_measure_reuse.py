"""Measuring fast and resumably: device table sets timed once a round (DeviceTimer), each table's
ids generated once (InputCache), and the sample collector's time budget and resume."""

import itertools
import json

import numpy as np
import pytest
import torch

from recsearch.placement import measure as M
from recsearch.placement.cli import measure as measure_cli
from recsearch.placement.cost_net import load_shipped
from recsearch.placement.evaluate import EvalConfig, run_eval, task_timer
from recsearch.placement.samples import read_jsonl
from recsearch.placement.tables import make_task, save_pool
from recsearch.placement.types import Placement

SETTINGS = {"warmup": 1, "iters": 2}


@pytest.fixture()
def counted(monkeypatch):
    """Count the TBEs built and the tables whose ids were generated, calling the real ones."""
    calls = {"build_tbe": 0, "table_inputs": 0}
    build, inputs = M.build_tbe, M.table_inputs

    def counting_build(*args, **kwargs):
        calls["build_tbe"] += 1
        return build(*args, **kwargs)

    def counting_inputs(*args, **kwargs):
        calls["table_inputs"] += 1  # from worker threads: += on a dict entry under the GIL
        return inputs(*args, **kwargs)

    monkeypatch.setattr(M, "build_tbe", counting_build)
    monkeypatch.setattr(M, "table_inputs", counting_inputs)
    return calls


def test_placements_sharing_device_sets_time_each_set_once_a_round(tiny_pool, counted):
    task = make_task(tiny_pool.tables, 6, 3, seed=0, slack=3.0, name="t6")
    cfg = EvalConfig(batch_size=64, row_cap=500, **SETTINGS)
    same_sets = Placement((0, 0, 1, 1, 2, 2), 3)
    relabeled = Placement((2, 2, 0, 0, 1, 1), 3)  # another placement, the same three table sets
    one_shared = Placement((0, 0, 1, 2, 1, 2), 3)  # shares {0, 1} only
    timer = task_timer(task, cfg)
    rounds = []
    for _ in range(2):
        timer.new_round()
        rounds.append(
            [
                M.measure_placement(task.tables, p, task.topology, 64, "cpu", task.optimizer,
                                    comm="model", timer=timer, **SETTINGS)  # fmt: skip
                for p in (same_sets, relabeled, one_shared)
            ]
        )
    stats = timer.stats()
    # 9 device kernels asked per round, 5 distinct sets: {0,1} {2,3} {4,5} {2,4} {3,5}
    assert (stats.kernels_timed, stats.kernels_looked_up) == (10, 8)
    assert counted["build_tbe"] == 10
    distinct_tables = {M.input_key(t, 500) for t in task.tables}
    # every table's ids once per input set, for every placement and both rounds
    assert counted["table_inputs"] == 2 * len(distinct_tables)
    assert stats.tables_generated == len(distinct_tables)
    for a, b, c in rounds:
        # the same table sets have the same timings: identical compute, device by device
        assert sorted(d.fwd_ms for d in a.per_device) == sorted(d.fwd_ms for d in b.per_device)
        assert a.fwd_ms + a.bwd_ms == b.fwd_ms + b.bwd_ms
        shared = c.per_device[0]  # rank 0 of one_shared holds {0, 1}, as rank 0 of same_sets
        assert (shared.fwd_ms, shared.bwd_ms) == (a.per_device[0].fwd_ms, a.per_device[0].bwd_ms)
    timer.close()


def test_timer_keeps_warmup_iters_and_medians(tiny_pool):
    tables = list(tiny_pool.tables[:3])
    timer = M.DeviceTimer(tables, 64, "cpu", warmup=2, iters=5, row_cap=500)
    t = timer.time([2, 0])
    assert len(t.fwd_samples) == len(t.bwd_samples) == 5
    assert t.fwd_ms == pytest.approx(float(np.median(t.fwd_samples)))
    assert t.bwd_ms == pytest.approx(float(np.median(t.bwd_samples)))
    assert timer.time([0, 2]) is t  # the key is the sorted table indices
    assert timer.time([]) == M.KernelTiming(0.0, 0.0)
    assert timer.stats().kernels_timed == 1 and timer.stats().kernels_looked_up == 1


def test_input_cache_layout_and_reuse(tiny_pool):
    a, b, c = tiny_pool.tables[:3]
    cache = M.InputCache(32, "cpu", seed=1, row_cap=400, input_sets=2)
    sets = cache.inputs([a, b])
    assert len(sets) == 2 and cache.generated == 2
    for ids, offsets in sets:
        assert ids.dtype == offsets.dtype == torch.int64
        assert offsets.numel() == 2 * 32 + 1 and offsets[0] == 0 and offsets[-1] == ids.numel()
        assert bool((offsets[1:] >= offsets[:-1]).all())
        n_a = int(offsets[32])
        assert int(ids[:n_a].max()) < min(a.num_rows, 400)
        assert int(ids[n_a:].max()) < min(b.num_rows, 400)
    # b's ids are the same wherever it sits (second here, first there), and not drawn again
    (ids_bc, off_bc), _ = cache.inputs([b, c])
    n_a = int(sets[0][1][32])
    assert torch.equal(ids_bc[: int(off_bc[32])], sets[0][0][n_a:])
    assert cache.generated == 3
    # the sets differ (cycled so the timing is not of one cached batch)
    assert not torch.equal(sets[0][0], sets[1][0])
    # a fresh cache with the same seed draws the same ids (a resumed run); another seed others
    again = M.InputCache(32, "cpu", seed=1, row_cap=400).inputs([a, b])
    other = M.InputCache(32, "cpu", seed=2, row_cap=400).inputs([a, b])
    assert torch.equal(again[0][0], sets[0][0]) and not torch.equal(other[0][0], sets[0][0])
    with pytest.raises(ValueError, match="input cache is for batch 32"):
        M.DeviceTimer([a], 64, "cpu", input_cache=cache)


def test_eval_reports_kernels_timed_and_looked_up(tiny_pool, tmp_path, counted):
    tasks = [
        make_task(tiny_pool.tables, 8, 2, seed=1, slack=1.5, name="t8_d2"),
        make_task(tiny_pool.tables, 9, 3, seed=2, slack=1.5, name="t9_d3"),
    ]
    # round_robin and random often differ; dim_greedy vs size_greedy on equal dims coincide:
    # whatever they do, the counts below must add up
    methods = ["round_robin", "size_greedy", "dim_greedy", "lookup_greedy", "learned"]
    cfg = EvalConfig(batch_size=64, rounds=2, row_cap=500, planning_timing=False, **SETTINGS)
    report = run_eval(tasks, methods, load_shipped("cpu"), cfg)
    timed = looked_up = 0
    for row, task in zip(report.rows, tasks):
        placements = {tuple(r["ranks"]) for r in row["results"].values() if r["feasible"]}
        groups = [
            tuple(i for i, r in enumerate(p) if r == d)
            for p in placements
            for d in range(row["devices"])
            if d in p
        ]
        singles = [(i,) for i in range(row["tables"])]
        everything = tuple(range(row["tables"]))
        # asked: every placement's devices in each round, then the bound: each table alone and
        # all tables fused once per round, the first fused and the singles in the last round
        asked = cfg.rounds * len(groups) + len(singles) + cfg.rounds
        distinct = set(groups)
        expected_timed = (
            (cfg.rounds - 1) * len(distinct)
            + len(distinct | set(singles) | {everything})
            + (cfg.rounds - 1)
        )
        m = row["measurement"]
        assert m["kernels_timed"] + m["kernels_looked_up"] == asked
        assert m["kernels_timed"] == expected_timed
        assert m["seconds"] >= m["kernels_s"] > 0
        timed += m["kernels_timed"]
        looked_up += m["kernels_looked_up"]
        for name, r in row["results"].items():  # the results are as before
            assert r["measured_ms"] > 0 and len(r["measured_rounds_ms"]) == cfg.rounds, name
            parts = r["measured_compute_ms"] + r["measured_comm_ms"]
            assert r["measured_ms"] == pytest.approx(parts, abs=2e-4)
        assert len(row["bound"]["singles_ms"]) == row["tables"]
    assert counted["build_tbe"] == timed
    # ids generated once per distinct table of the whole run (tables recur across tasks)
    distinct_tables = {M.input_key(t, 500) for task in tasks for t in task.tables}
    assert counted["table_inputs"] == 2 * len(distinct_tables)
    total = report.measurement
    assert (total["kernels_timed"], total["kernels_looked_up"]) == (timed, looked_up)
    assert total["tasks"] == 2 and total["tables_generated"] == len(distinct_tables)
    as_dict = report.to_dict("T", [])
    assert as_dict["measurement"] == total and "cost_net_placement_error" in as_dict
    json.dumps(as_dict)  # the results JSON still serializes
    assert as_dict["cost_net_placement_error"]["placements"] >= 1


def _indices(path):
    return [raw["extra"]["sample_index"] for raw in read_jsonl(path)]


@pytest.mark.parametrize("reuse_inputs", [False, True])
def test_budget_stops_between_samples_and_a_rerun_takes_the_rest(tmp_path, tiny_pool, reuse_inputs):
    cfg = M.CollectConfig(batch_size=32, warmup=0, iters=1, max_tables=4, row_cap=300, seed=5,
                          reuse_inputs=reuse_inputs)  # fmt: skip
    out = tmp_path / "s.jsonl"
    clock = itertools.count()  # one tick per look at the clock: start 0, then 1, 2, 3, ...
    taken = M.collect_samples(tiny_pool.tables, 8, out, cfg, progress=False, budget_s=2.5,
                              now=lambda: float(next(clock)))  # fmt: skip
    assert taken == 2 and _indices(out) == [0, 1]  # ticks 1 and 2 are within 2.5 s, tick 3 is not
    first = out.read_text()
    assert first.endswith("\n") and len(first.splitlines()) == 2
    assert M.collect_samples(tiny_pool.tables, 8, out, cfg, progress=False) == 6
    assert _indices(out) == list(range(8))  # the union, each once
    assert out.read_text().startswith(first)  # the earlier samples untouched
    # the same table sets as one uninterrupted run
    whole = tmp_path / "whole.jsonl"
    assert M.collect_samples(tiny_pool.tables, 8, whole, cfg, progress=False) == 8
    assert [r["extra"]["pool_ids"] for r in read_jsonl(out)] == [
        r["extra"]["pool_ids"] for r in read_jsonl(whole)
    ]
    assert {r["extra"]["inputs"] for r in read_jsonl(out)} == {
        "per_table" if reuse_inputs else "per_sample"
    }
    empty = tmp_path / "none.jsonl"  # a budget spent before the first sample: no sample
    assert M.collect_samples(tiny_pool.tables, 8, empty, cfg, progress=False, budget_s=0) == 0
    assert empty.read_text() == ""


def test_resuming_with_another_pool_or_batch_is_refused(tmp_path, tiny_pool):
    cfg = M.CollectConfig(batch_size=32, warmup=0, iters=1, max_tables=3, row_cap=300, seed=1)
    out = tmp_path / "s.jsonl"
    M.collect_samples(tiny_pool.tables, 2, out, cfg, progress=False)
    other_pool = list(reversed(tiny_pool.tables))
    with pytest.raises(ValueError, match="tables from another pool"):
        M.collect_samples(other_pool, 4, out, cfg, progress=False)
    bigger = M.CollectConfig(batch_size=64, warmup=0, iters=1, max_tables=3, row_cap=300, seed=1)
    with pytest.raises(ValueError, match="batch_size 32 \\(now 64\\)"):
        M.collect_samples(tiny_pool.tables, 4, out, bigger, progress=False)
    # another seed is another sequence of samples: it may share the file
    reseeded = M.CollectConfig(batch_size=64, warmup=0, iters=1, max_tables=3, row_cap=300, seed=2)
    assert M.collect_samples(tiny_pool.tables, 1, out, reseeded, progress=False) == 1


def test_cli_minutes_budget_and_resume(tmp_path, tiny_pool, capsys):
    save_pool(tmp_path / "pool.json", tiny_pool)
    out = tmp_path / "s.jsonl"
    base = ["--pool", str(tmp_path / "pool.json"), "--out", str(out), "--batch-size", "32",
            "--warmup", "0", "--iters", "1", "--max-tables", "3", "--row-cap", "300",
            "--no-progress", "--reuse-inputs"]  # fmt: skip
    assert measure_cli.main([*base, "--samples", "5", "--minutes", "0"]) == 0
    text = capsys.readouterr().out
    assert "0 new samples; 0 of the 5 wanted" in text and "rerun the same command" in text
    assert measure_cli.main([*base, "--samples", "2"]) == 0
    assert measure_cli.main([*base, "--samples", "5", "--minutes", "10"]) == 0
    assert "3 new samples; 5 of the 5 wanted" in capsys.readouterr().out
    assert _indices(out) == [0, 1, 2, 3, 4]
    assert measure_cli.main([*base, "--samples", "5", "--batch-size", "64"]) == 2
    assert "taken differently" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_timer_keeps_inputs_on_the_device_and_collects_within_budget(tmp_path, tiny_pool):
    tables = list(tiny_pool.tables[:4])
    timer = M.DeviceTimer(tables, 4096, "cuda", warmup=2, iters=5)
    timer.prepare()
    (ids, offsets), _ = timer.input_cache.inputs(tables[:2])
    assert ids.is_cuda and offsets.is_cuda and offsets.numel() == 2 * 4096 + 1
    a, b = timer.time([0, 1]), timer.time([1, 0])
    assert a is b and a.fwd_ms > 0 and a.bwd_ms > 0 and len(a.fwd_samples) == 5
    assert (timer.stats().kernels_timed, timer.stats().kernels_looked_up) == (1, 1)
    timer.close()
    cfg = M.CollectConfig(
        batch_size=4096, device="cuda", warmup=1, iters=2, max_tables=4, reuse_inputs=True
    )
    out = tmp_path / "s.jsonl"
    assert M.collect_samples(tiny_pool.tables, 3, out, cfg, progress=False, budget_s=600) == 3
    assert _indices(out) == [0, 1, 2]
