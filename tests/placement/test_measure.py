import json
from dataclasses import replace

import numpy as np
import pytest

from recsearch.placement import measure as M
from recsearch.placement.cli import measure as measure_cli
from recsearch.placement.comm import calibrate_comm
from recsearch.placement.samples import read_samples
from recsearch.placement.tables import make_task, reuse_histogram, save_pool, save_task
from recsearch.placement.types import Placement
from recsearch.types import TableSpec, Topology

TINY = {"warmup": 1, "iters": 3, "threads": 1}


def test_ids_reproduce_the_reuse_histogram(tiny_pool):
    rng = np.random.default_rng(0)
    for t in tiny_pool.tables[:8]:
        n = int(t.pooling_factor * 256)
        ids = M.ids_from_reuse_hist(rng, t.num_rows, t.reuse_hist, n)
        assert ids.size == n and ids.min() >= 0 and ids.max() < t.num_rows
        assert np.abs(reuse_histogram(ids) - np.array(t.reuse_hist)).sum() < 0.2
    uniform = M.ids_from_reuse_hist(rng, 10, (), 1000)
    assert set(uniform.tolist()) == set(range(10))


def test_make_inputs_layout():
    tables = [TableSpec("a", 100, 4, 3.0), TableSpec("b", 7, 8, 1.0)]
    idx, off = M.make_inputs(tables, 50, np.random.default_rng(0))
    assert off.shape == (2 * 50 + 1,) and off[0] == 0 and off[-1] == idx.numel()
    assert idx[off[50] :].max() < 7  # table b's ids in b's range
    assert 100 < off[50] < 200  # about 3 ids per sample for table a


def test_kernel_cost_positive_and_grows_with_work():
    small = [TableSpec("s", 100, 4, 1.0)]
    big = [TableSpec(f"b{i}", 20_000, 64, 8.0) for i in range(20)]
    # the least of three interleaved measurements: a busy shared machine only ever adds time
    runs = [(M.measure_device_cost(small, 512, "cpu", "rowwise_adagrad", **TINY),
             M.measure_device_cost(big, 512, "cpu", "rowwise_adagrad", **TINY)) for _ in range(3)]  # fmt: skip
    fs, bs = (min(r[0][k] for r in runs) for k in (0, 1))
    fb, bb = (min(r[1][k] for r in runs) for k in (0, 1))
    assert fs > 0 and bs > 0
    # ~2,500x the lookups; the tiny table's cost is mostly fixed per-call overhead (about 1 ms
    # on a loaded 2-core machine), so only a clear growth is asserted
    assert fb > 2 * fs and bb > 2 * bs, (fs, bs, fb, bb)
    assert M.measure_device_cost([], 512) == (0.0, 0.0)


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_other_optimizers_run(optimizer):
    f, b = M.measure_device_cost([TableSpec("t", 50, 8, 2.0)], 64, "cpu", optimizer, **TINY)
    assert f > 0 and b > 0


def test_adam_on_cpu_is_refused_clearly():
    with pytest.raises(ValueError, match="no CPU kernel for adam"):
        M.build_tbe([TableSpec("t", 10, 4)], "cpu", "adam")


def test_comm_model_is_monotone_in_bytes():
    model = M.CommModel(latency_ms=0.2, bytes_per_ms=1e6)
    values = [model.ms(b) for b in (1, 10**3, 10**5, 10**7)]
    assert values == sorted(values) and values[0] > 0.2 and model.ms(0) == 0
    tables = [TableSpec(f"t{i}", 10, 16 * (i + 1)) for i in range(4)]
    balanced = M.comm_costs(Placement((0, 1, 1, 0), 2), tables, 1024, model)
    skewed = M.comm_costs(Placement((0, 0, 0, 1), 2), tables, 1024, model)
    assert max(skewed) > max(balanced) and M.comm_costs(
        Placement((0,) * 4, 1), tables, 1024, model
    ) == [0.0]


def test_comm_model_file_round_trip(tmp_path):
    m = M.CommModel(0.1, 2e5, "cpu:x", "test", ((100, 0.2), (1000, 0.3)))
    m.save(tmp_path / "c.json")
    assert M.CommModel.load(tmp_path / "c.json") == m


def test_measure_placement_is_slowest_device_plus_comm():
    tables = [
        TableSpec("a", 500, 8, 2.0),
        TableSpec("b", 2000, 32, 6.0),
        TableSpec("c", 100, 4, 1.0),
    ]
    model = M.CommModel(0.1, 1e5)
    cost = M.measure_placement(
        tables, Placement((0, 1, 0), 2), Topology(2, 1 << 30), 256, comm=model, **TINY
    )
    assert len(cost.per_device) == 2 and all(d.fwd_ms > 0 and d.bwd_ms > 0 for d in cost.per_device)
    slowest = max(d.fwd_ms + d.bwd_ms for d in cost.per_device)
    assert cost.total_ms == pytest.approx(slowest + cost.comm_ms)
    # rank 1 sends its 32 dims for rank 0's 128 samples (rank 0 sends only 12 dims)
    assert cost.comm_ms == pytest.approx(2 * model.ms(128 * 32 * 4))


def test_collect_samples_appends_and_resumes(tmp_path, tiny_pool):
    out = tmp_path / "s.jsonl"
    cfg = M.CollectConfig(batch_size=64, warmup=0, iters=1, max_tables=3, row_cap=5000, seed=1)
    assert M.collect_samples(tiny_pool.tables, 2, out, cfg, progress=False) == 2
    with out.open("a") as f:
        f.write('{"torn": ')  # an interrupted write
    assert M.collect_samples(tiny_pool.tables, 3, out, cfg, progress=False) == 1
    samples = read_samples(out)
    assert [s.extra["sample_index"] for s in samples] == [0, 1, 2]
    for s in samples:
        assert 1 <= len(s.tables) <= 3 and s.batch_size == 64 and s.cost.total_ms > 0
        assert s.hardware.startswith("cpu:") and "fbgemm_gpu=" in s.hardware
        assert s.placement is None and s.extra["row_cap"] == 5000
    assert M.collect_samples(tiny_pool.tables, 3, out, cfg, progress=False) == 0
    assert len(out.read_text().splitlines()) == 3


def test_cli_pool_and_task(tmp_path, tiny_pool, capsys):
    save_pool(tmp_path / "pool.json", tiny_pool)
    rc = measure_cli.main(
        [
            "--pool",
            str(tmp_path / "pool.json"),
            "--samples",
            "1",
            "--out",
            str(tmp_path / "s.jsonl"),
            "--batch-size",
            "32",
            "--warmup",
            "0",
            "--iters",
            "1",
            "--max-tables",
            "2",
            "--no-progress",
        ]
    )
    assert rc == 0 and len(read_samples(tmp_path / "s.jsonl")) == 1
    task = make_task(tiny_pool.tables[:10], 4, 2, seed=0, name="tiny")
    save_task(tmp_path / "task.json", task)
    rc = measure_cli.main(
        [
            "--task",
            str(tmp_path / "task.json"),
            "--placement",
            "size_greedy",
            "--batch-size",
            "32",
            "--warmup",
            "0",
            "--iters",
            "1",
            "--out",
            str(tmp_path / "cost.json"),
        ]
    )
    assert rc == 0
    raw = json.loads((tmp_path / "cost.json").read_text())
    assert raw["placement"]["world_size"] == 2 and raw["cost"]["total_ms"] > 0
    assert "tiny / size_greedy" in capsys.readouterr().out
    assert measure_cli.main(["--task", str(tmp_path / "task.json")]) == 2  # no placement


@pytest.mark.multiproc
@pytest.mark.slow
def test_gloo_alltoall_measurement_and_calibration():
    model = calibrate_comm(sizes_bytes=(2**10, 2**14, 2**18), warmup=1, iters=3)
    assert model.latency_ms >= 0 and model.bytes_per_ms > 0
    # fitted on what each rank sent (the requested totals, split over its one peer) and measured
    assert [nbytes for nbytes, _ in model.points] == [2**10, 2**14, 2**18]
    assert all(ms > 0 for _, ms in model.points)
    # the line is the one through its own points, weighted by 1/time (relative errors), as an
    # independent least squares solves it (the points are rounded to 0.1 us; a loaded machine
    # makes them noisy, so nothing is asserted about how well a line fits them)
    sent, ms = (np.array(v, float) for v in zip(*model.points))
    weights = 1.0 / ms
    (slope, intercept), *_ = np.linalg.lstsq(np.stack([sent, np.ones_like(sent)], 1) * weights[:, None],
                                             ms * weights, rcond=None)
    for nbytes in (*sent, 2**20):  # (negative fitted latency or slope are clamped, as the tool does)
        line_ms = max(intercept, 0.0) + nbytes * max(slope, 1e-12)
        assert model.ms(nbytes) == pytest.approx(line_ms, rel=1e-2, abs=1e-3), (model, model.points)
    tables = [TableSpec("a", 10, 8), TableSpec("b", 10, 64)]
    comm = M.measured_comm_costs(Placement((0, 1), 2), tables, 256, warmup=1, iters=3)
    assert len(comm) == 2 and all(c > 0 for c in comm)


def test_a_bad_line_inside_a_sample_file_is_an_error_naming_it(tmp_path, tiny_pool):
    from recsearch.placement.samples import read_jsonl

    path = tmp_path / "s.jsonl"
    path.write_text('{"a": 1}\n{"b": 2}\n{"c": ')  # a torn last line: skipped
    assert read_jsonl(path) == [{"a": 1}, {"b": 2}]
    path.write_text('{"a": 1}\n{"b": \n{"c": 3}\n')  # a bad line before good ones
    with pytest.raises(ValueError, match=r"s\.jsonl:2: not a JSON line"):
        read_jsonl(path)
    path.write_text('{"a": 1}\n{"b": \n')  # unparsable but complete (newline): not torn
    with pytest.raises(ValueError, match=r"s\.jsonl:2: not a JSON line"):
        read_jsonl(path)
    # a collection resumed on such a file stops before measuring (it would re-measure and
    # append duplicates of the samples after the bad line)
    cfg = M.CollectConfig(batch_size=64, warmup=0, iters=1, max_tables=3, row_cap=5000, seed=1)
    with pytest.raises(ValueError, match=r"s\.jsonl:2"):
        M.collect_samples(tiny_pool.tables, 2, path, cfg, progress=False)
    assert path.read_text() == '{"a": 1}\n{"b": \n'


def test_resume_refuses_another_row_cap(tmp_path, tiny_pool):
    out = tmp_path / "s.jsonl"
    cfg = M.CollectConfig(batch_size=64, warmup=0, iters=1, max_tables=3, row_cap=5000, seed=1)
    assert M.collect_samples(tiny_pool.tables, 1, out, cfg, progress=False) == 1
    for other in (1000, None):
        with pytest.raises(ValueError, match=f"row_cap 5000 \\(now {other}\\)"):
            M.collect_samples(tiny_pool.tables, 2, out, replace(cfg, row_cap=other), progress=False)
    assert len(read_samples(out)) == 1
