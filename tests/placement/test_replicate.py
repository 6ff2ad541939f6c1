"""Replicated (data-parallel) tables: the placement contract, their cost (all-to-all, all-reduce,
measured kernel), refine leaving them be, and ReplicatingPlacer's choice under the cost net."""

import json

import pytest

from recsearch.placement.comm import CommModel, comm_costs, measured_comm_costs
from recsearch.placement.types import (
    REPLICATED,
    REPLICATED_NAME,
    Placement,
    PlacementError,
    allreduce_bytes,
    alltoall_bytes,
    load_placement,
    save_placement,
    table_memory_bytes,
)
from recsearch.types import TableSpec, Topology

from .conftest import hand_tables

MODEL = CommModel(latency_ms=0.5, bytes_per_ms=1000.0)


def test_placement_with_replicated_tables():
    tables = hand_tables()
    p = Placement((0, REPLICATED, 1, 0, REPLICATED), 2)
    assert p.replicated == (1, 4)
    assert p.groups() == [(0, 3), (2,)]  # replicated tables are on no rank's own list
    assert p.tables_on(1) == (2,)
    assert p.dim_per_rank(tables) == [8 + 4, 32]  # outputs in the all-to-all only
    rep = table_memory_bytes(tables[1]) + table_memory_bytes(tables[4])
    assert p.memory_per_rank(tables) == [
        table_memory_bytes(tables[0]) + table_memory_bytes(tables[3]) + rep,
        table_memory_bytes(tables[2]) + rep,
    ]
    assert Placement((0, 1, 1, 0, 0), 2).with_replicated([1, 4]) == p
    with pytest.raises(PlacementError, match="outside"):
        Placement((0, -2), 2)


def test_replicated_copies_count_against_every_cap():
    tables = hand_tables()
    p = Placement((0, 1, 1, 0, REPLICATED), 2)
    need = max(p.memory_per_rank(tables))
    p.validate(tables, Topology(2, need))
    with pytest.raises(PlacementError, match="memory cap exceeded"):
        p.validate(tables, Topology(2, need - 1))


def test_allreduce_and_alltoall_bytes():
    tables = hand_tables()
    p = Placement((0, REPLICATED, 1, 0, REPLICATED), 2)
    grads = (50 * 16 + 20 * 4) * 4  # B and E, fp32, every row
    assert allreduce_bytes(p, tables) == round(2 * (2 - 1) / 2 * grads)
    assert allreduce_bytes(Placement((0, 1, 1, 0, 0), 2), tables) == 0
    assert allreduce_bytes(Placement((REPLICATED,) * 5, 1), tables) == 0  # one rank: nothing
    # the all-to-all sees only the table-wise tables: as if B and E were not there
    rest = [t for i, t in enumerate(tables) if i not in (1, 4)]
    assert alltoall_bytes(p, tables, 64) == alltoall_bytes(Placement((0, 1, 0), 2), rest, 64)


def test_comm_costs_add_the_allreduce_once_per_rank():
    tables = hand_tables()
    p = Placement((0, REPLICATED, 1, 0, REPLICATED), 2)
    plain = Placement((0, 1, 0), 2)
    rest = [t for i, t in enumerate(tables) if i not in (1, 4)]
    reduce_ms = MODEL.ms(allreduce_bytes(p, tables))
    assert reduce_ms > MODEL.latency_ms
    got = comm_costs(p, tables, 64, MODEL)
    want = [c + reduce_ms for c in comm_costs(plain, rest, 64, MODEL)]
    assert got == pytest.approx(want)


def test_comm_measured_for_real_refuses_replicated_tables(monkeypatch):
    from recsearch.placement import measure as m

    with pytest.raises(ValueError, match="all-reduce"):
        measured_comm_costs(Placement((0, REPLICATED), 2), hand_tables()[:2], 64)

    def no_timing(*args, **kwargs):
        raise AssertionError("timed a kernel before refusing")

    monkeypatch.setattr(m, "time_device_kernel", no_timing)
    with pytest.raises(ValueError, match="all-reduce"):  # refused before any kernel is timed
        m.measure_placement(hand_tables()[:2], Placement((0, REPLICATED), 2), None, 64, "cpu", comm="measure")


def test_placement_file_round_trip_with_replicated(tmp_path):
    tables = hand_tables()
    p = Placement((0, REPLICATED, 1, 0, REPLICATED), 2)
    path = tmp_path / "p.json"
    save_placement(path, p, tables)
    raw = json.loads(path.read_text())
    assert raw["placement"]["B"] == REPLICATED_NAME and raw["placement"]["A"] == 0
    assert load_placement(path, tables) == p
    raw["placement"]["B"] = -1  # an int must be a rank: -1 is not how a file says "replicated"
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="data_parallel"):
        load_placement(path, tables)
    with pytest.raises(PlacementError, match="int >= 0"):
        Placement.from_dict({"A": 0, "B": -1, "C": 0, "D": 0, "E": 0}, tables, 2)
    raw["placement"]["B"] = "everywhere"
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="data_parallel"):
        load_placement(path, tables)


def test_measured_replicated_kernel_is_one_ranks_share(monkeypatch):
    """measure_placement adds the replicated tables' kernel, timed at batch / world, to every
    device, and times it once per round."""
    from recsearch.placement import measure as m

    calls = []

    def fake_kernel(tables, batch_size, *args, **kwargs):
        calls.append((tuple(t.name for t in tables), batch_size))
        return m.KernelTiming(float(batch_size) / 100, float(len(tables)))

    monkeypatch.setattr(m, "time_device_kernel", fake_kernel)
    tables = hand_tables()
    p = Placement((0, REPLICATED, 1, 0, REPLICATED), 2)
    timer = m.DeviceTimer(tables, 64, "cpu", warmup=0, iters=1)
    cost = m.measure_placement(tables, p, Topology(2, 10**9), 64, "cpu", warmup=0, iters=1, comm=MODEL, timer=timer)
    assert sorted(calls) == [(("A", "D"), 64), (("B", "E"), 32), (("C",), 64)]
    # each device: its own kernel (batch 64) + the replicas' (batch 32, 2 tables)
    assert [d.fwd_ms for d in cost.per_device] == pytest.approx([0.64 + 0.32, 0.64 + 0.32])
    assert [d.bwd_ms for d in cost.per_device] == pytest.approx([2 + 2, 1 + 2])
    m.measure_placement(tables, p, Topology(2, 10**9), 64, "cpu", warmup=0, iters=1, comm=MODEL, timer=timer)
    assert len(calls) == 3  # the same round: every kernel looked up
    timer.new_round()
    m.measure_placement(tables, p, Topology(2, 10**9), 64, "cpu", warmup=0, iters=1, comm=MODEL, timer=timer)
    assert len(calls) == 6
    assert timer.stats().kernels_timed == 6 and timer.stats().kernels_looked_up == 3
    timer.close()


def test_cost_net_adds_the_replicas_share_to_every_device(cpu_cost_net):
    tables = hand_tables()
    p = Placement((0, REPLICATED, 1, 0, REPLICATED), 2)
    got = cpu_cost_net.predict(tables, p)
    own = cpu_cost_net.device_costs(tables, p.groups())
    (rf, rb), = cpu_cost_net.device_costs(tables, [p.replicated])
    for d, (f, b) in zip(got.per_device, own):
        assert d.fwd_ms == pytest.approx(f + rf / 2)
        assert d.bwd_ms == pytest.approx(b + rb / 2)
    comm = comm_costs(p, tables, cpu_cost_net.meta.batch_size, cpu_cost_net.comm_model)
    assert [d.comm_ms for d in got.per_device] == pytest.approx(comm)


def test_refine_keeps_replicated_tables_and_their_room(cpu_cost_net, tiny_pool):
    from recsearch.placement.baselines import make_baseline
    from recsearch.placement.refine import refine

    tables = list(tiny_pool.tables[:24])
    topo = Topology(4, 10**9)
    start = make_baseline("round_robin").place(tables, topo)
    small = sorted(range(len(tables)), key=lambda i: tables[i].num_rows)[:6]
    p = start.with_replicated(small)
    out, report = refine(tables, topo, p, cpu_cost_net, max_seconds=2.0)
    assert out.replicated == p.replicated
    out.validate(tables, topo)
    assert report.moves > 0  # round-robin leaves work to do
    before = cpu_cost_net.predict(tables, p, topo).total_ms
    after = cpu_cost_net.predict(tables, out, topo).total_ms
    assert after < before and report.end_ms == pytest.approx(after)


def _one_hot_tables() -> list[TableSpec]:
    """Criteo-like: a few one-hot tables of 5-600 rows and a few of 10^5 rows, dims 32-128."""
    tiny = [TableSpec(f"tiny{i}", num_rows=5 + 60 * i, dim=(32, 64, 128)[i % 3]) for i in range(10)]
    big = [TableSpec(f"big{i}", num_rows=100_000 + i, dim=(32, 64, 128)[i % 3]) for i in range(6)]
    return tiny + big


def test_replication_sets_grow_with_the_threshold():
    from recsearch.placement.replicate import replication_sets

    tables = _one_hot_tables()
    sets = replication_sets(tables, 4, 4096)  # thresholds 256, 512, 1024, 2048 rows
    assert [len(s) for s in sets] == [5, 9, 10]  # rows 5, 65, ..., 545 (the 2048 set repeats 1024's)
    assert all(set(a) < set(b) for a, b in zip(sets, sets[1:]))
    assert replication_sets(tables, 1, 4096) == []
    only_even = replication_sets(tables, 4, 4096, may_replicate=lambda t: t.name[-1] in "02468")
    assert all(int(tables[i].name[-1]) % 2 == 0 for s in only_even for i in s)


def test_replicating_placer_picks_the_cheapest_under_the_net(cpu_cost_net):
    from recsearch.placement.baselines import make_baseline
    from recsearch.placement.replicate import ReplicatingPlacer, replication_sets

    tables = _one_hot_tables()
    topo = Topology(4, 10**9)
    inner = make_baseline("dim_greedy")
    placer = ReplicatingPlacer(inner, lambda _t: cpu_cost_net)
    got = placer.place(tables, topo)
    got.validate(tables, topo)
    got_ms = cpu_cost_net.predict(tables, got, topo).total_ms
    # never rated worse than the table-wise placement, and the best of the candidate sets
    plain_ms = cpu_cost_net.predict(tables, inner.place(tables, topo), topo).total_ms
    assert got_ms <= plain_ms
    assert placer.last_choice == len(got.replicated)
    # one-hot outputs cross a slow all-to-all: replicating the tiny tables pays here
    assert got.replicated and all(tables[i].num_rows < 4096 / 4 * 2 for i in got.replicated)
    assert got_ms < plain_ms * 0.95
    for chosen in replication_sets(tables, 4, cpu_cost_net.meta.batch_size):
        rest = [i for i in range(len(tables)) if i not in chosen]
        sub = inner.place([tables[i] for i in rest], topo)
        ranks = [REPLICATED] * len(tables)
        for j, i in enumerate(rest):
            ranks[i] = sub.ranks[j]
        assert got_ms <= cpu_cost_net.predict(tables, Placement(tuple(ranks), 4), topo).total_ms + 1e-9
    # may_replicate: nothing allowed, nothing replicated
    none = ReplicatingPlacer(inner, lambda _t: cpu_cost_net, may_replicate=lambda t: False)
    assert none.place(tables, topo).replicated == ()


def test_replicating_placer_skips_sets_whose_copies_do_not_fit(cpu_cost_net):
    """4 ranks, one 5 MB table each; 5 small tables (100 rows) and 5 wide middling ones (600
    rows x dim 1024, 2.5 MB, also under B / W = 1,024 rows): each rank has room for a big table,
    two middling ones and the small tables' copies, but not for all ten copies, so the ten-table
    set is never handed to the inner placer."""
    from recsearch.placement.baselines import make_baseline
    from recsearch.placement.replicate import ReplicatingPlacer, replication_sets

    small = [TableSpec(f"s{i}", num_rows=100, dim=64) for i in range(5)]
    mid = [TableSpec(f"m{i}", num_rows=600, dim=1024) for i in range(5)]
    big = [TableSpec(f"b{i}", num_rows=20_000, dim=64) for i in range(4)]
    tables = small + mid + big
    sets = replication_sets(tables, 4, cpu_cost_net.meta.batch_size)
    assert [len(s) for s in sets] == [5, 10]
    mem = [table_memory_bytes(t) for t in tables]
    cap = mem[-1] + sum(mem[:5]) + 2 * mem[5] + 50_000  # a big table, the small copies, 2 middling
    assert sum(mem[:10]) > cap  # all ten copies alone do not fit a rank
    topo = Topology(4, cap)
    inner = make_baseline("dim_greedy")
    calls = []

    class Counting:
        def place(self, ts, topology):
            calls.append(len(ts))
            return inner.place(ts, topology)

    got = ReplicatingPlacer(Counting(), lambda _t: cpu_cost_net).place(tables, topo)
    got.validate(tables, topo)
    assert calls == [14, 9]  # all tables, then the rest beside the five small copies; not the ten
    assert set(got.replicated) <= set(range(5))


class _Counting:
    """A placer that records the number of tables of every call, then asks inner."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def place(self, tables, topology):
        self.calls.append(len(tables))
        return self.inner.place(tables, topology)


class _Refusing:
    """A screen that can place nothing."""

    def place(self, tables, topology):
        raise PlacementError("no room")


class _AllOnRankZero:
    """A screen whose placements of a set's rest are hopeless: every table on rank 0, but the
    whole table set spread (dim_greedy), so no set screens cheaper than not replicating."""

    def __init__(self, n_all):
        from recsearch.placement.baselines import make_baseline

        self.n_all, self.spread = n_all, make_baseline("dim_greedy")

    def place(self, tables, topology):
        if len(tables) == self.n_all:
            return self.spread.place(tables, topology)
        return Placement((0,) * len(tables), topology.world_size)


def _estimate(net, tables, placement, topo):
    return net.predict(tables, placement, topo).total_ms


def test_screened_replication_places_at_most_keep_sets_with_the_expensive_placer(cpu_cost_net):
    """With a screen, the expensive placer places every table and at most screen_keep sets;
    where replicating the tiny one-hot tables pays it still replicates, and the result is never
    rated worse than the expensive placer's table-wise placement."""
    from recsearch.placement.baselines import make_baseline
    from recsearch.placement.refine import RefinedPlacer
    from recsearch.placement.replicate import ReplicatingPlacer, replication_sets

    tables = _one_hot_tables()
    topo = Topology(4, 10**9)
    sets = replication_sets(tables, 4, cpu_cost_net.meta.batch_size)
    assert len(sets) == 3
    expensive = RefinedPlacer(make_baseline("round_robin"), cpu_cost_net, max_seconds=2.0)
    plain_ms = _estimate(cpu_cost_net, tables, expensive.place(tables, topo), topo)
    for keep in (1, 2):
        counting = _Counting(expensive)
        screen = _Counting(make_baseline("dim_greedy"))
        placer = ReplicatingPlacer(counting, lambda _t: cpu_cost_net, screen=screen, screen_keep=keep)
        got = placer.place(tables, topo)
        got.validate(tables, topo)
        assert counting.calls[0] == len(tables) and len(counting.calls) == 1 + keep
        assert len(screen.calls) == 1 + len(sets)  # every table, then every set's rest
        report = placer.last_report
        assert report.sets == report.screened == report.promising == 3  # each screens cheaper
        assert report.placed == keep and report.chosen == placer.last_choice
        got_ms = _estimate(cpu_cost_net, tables, got, topo)
        assert got_ms <= plain_ms
        assert got.replicated and got_ms < plain_ms * 0.95  # replicating clearly pays here
        assert placer.last_choice == len(got.replicated)


def test_screened_replication_places_no_set_the_screen_rates_dearer(cpu_cost_net):
    """No set screens cheaper than not replicating: the expensive placer runs once and its
    table-wise placement is the result."""
    from recsearch.placement.baselines import make_baseline
    from recsearch.placement.replicate import ReplicatingPlacer

    tables = _one_hot_tables()
    topo = Topology(4, 10**9)
    counting = _Counting(make_baseline("size_greedy"))
    placer = ReplicatingPlacer(
        counting, lambda _t: cpu_cost_net, screen=_AllOnRankZero(len(tables)), screen_keep=2
    )
    got = placer.place(tables, topo)
    assert counting.calls == [len(tables)]
    assert got == make_baseline("size_greedy").place(tables, topo)
    assert placer.last_report.promising == 0 and placer.last_report.placed == 0
    assert placer.last_choice == 0


def test_screen_that_places_nothing_leaves_every_set_to_the_placer(cpu_cost_net):
    """A screen that cannot place every table decides nothing: every set is placed by the
    wrapped placer, as without a screen, with the same result."""
    from recsearch.placement.baselines import make_baseline
    from recsearch.placement.replicate import ReplicatingPlacer

    tables = _one_hot_tables()
    topo = Topology(4, 10**9)
    counting = _Counting(make_baseline("dim_greedy"))
    screened = ReplicatingPlacer(counting, lambda _t: cpu_cost_net, screen=_Refusing())
    got = screened.place(tables, topo)
    assert counting.calls == [16, 11, 7, 6]  # every table, then the rest of each of the 3 sets
    assert screened.last_report.screened == 0 and screened.last_report.placed == 3
    unscreened = ReplicatingPlacer(make_baseline("dim_greedy"), lambda _t: cpu_cost_net)
    assert got == unscreened.place(tables, topo)
    with pytest.raises(ValueError, match="screen_keep"):
        ReplicatingPlacer(counting, lambda _t: cpu_cost_net, screen=_Refusing(), screen_keep=0)


def test_cost_net_estimate_at_another_batch(cpu_cost_net):
    """At the net's batch the estimate is predict's; at twice it, compute and all-to-all double
    in work, the replicas' gradient all-reduce does not."""
    tables = _one_hot_tables()
    topo = Topology(4, 10**9)
    p = Placement(tuple(REPLICATED if i < 4 else i % 4 for i in range(len(tables))), 4)
    batch = cpu_cost_net.meta.batch_size
    assert cpu_cost_net.predict(tables, p, topo, batch).total_ms == pytest.approx(
        cpu_cost_net.predict(tables, p, topo).total_ms
    )
    cost = cpu_cost_net.predict(tables, p, topo)
    comm = comm_costs(p, tables, 2 * batch, cpu_cost_net.comm_model)
    want = max(2 * d.compute_ms for d in cost.per_device) + max(comm)
    assert cpu_cost_net.predict(tables, p, topo, 2 * batch).total_ms == pytest.approx(want)
    reduce_ms = cpu_cost_net.comm_model.ms(allreduce_bytes(p, tables))
    a2a_ms = [c - reduce_ms for c in comm]
    half = comm_costs(p, tables, batch, cpu_cost_net.comm_model)
    assert [h - reduce_ms for h in half] == pytest.approx(
        [2 * cpu_cost_net.comm_model.ms(0.5 * (a / 2 - cpu_cost_net.comm_model.latency_ms)
         * cpu_cost_net.comm_model.bytes_per_ms) for a in a2a_ms]
    )


def test_eval_methods_with_replication(cpu_cost_net):
    from recsearch.placement.evaluate import EvalConfig, check_methods, is_learned_method, method_placer
    from recsearch.placement.refine import RefinedPlacer
    from recsearch.placement.replicate import ReplicatingPlacer

    check_methods(["dp_refined_best_learned", "dp_learned_k4", "dp_dim_greedy", "torchrec_dp"])
    assert is_learned_method("dp_dim_greedy") and not is_learned_method("torchrec_dp")
    with pytest.raises(ValueError, match="unknown method"):
        check_methods(["dp_nonsense"])
    from recsearch.placement.registry import REPLICATION_SCREEN_KEEP

    placer = method_placer("dp_refined_best_learned", "rowwise_adagrad", EvalConfig())
    assert isinstance(placer, ReplicatingPlacer) and isinstance(placer.placer, RefinedPlacer)
    # the learned stack is screened (dim_greedy); the ablation around a baseline is not
    assert placer.screen is not None and placer.screen_keep == REPLICATION_SCREEN_KEEP
    ablation = method_placer("dp_dim_greedy", "rowwise_adagrad", EvalConfig())
    assert isinstance(ablation, ReplicatingPlacer) and ablation.screen is None
    tables = _one_hot_tables()
    topo = Topology(4, 10**9)
    got = placer.place(tables, topo)
    got.validate(tables, topo)
    assert got.replicated  # the shipped CPU net rates replicating the tiny one-hot tables cheaper
    assert placer.last_report.placed <= REPLICATION_SCREEN_KEEP


def test_torchrec_dp_baseline_returns_replicated_tables(caplog):
    from recsearch.placement.registry import make_placer

    # Avazu-like narrow one-hot tables (dims 8 and 16): TorchRec's model replicates the tiny ones
    tables = [TableSpec(f"tiny{i}", num_rows=5 + 60 * i, dim=(8, 16)[i % 2]) for i in range(10)]
    tables += [TableSpec(f"big{i}", num_rows=100_000 + i, dim=(8, 16)[i % 2]) for i in range(6)]
    topo = Topology(4, 10**9)
    with caplog.at_level("WARNING"):
        got = make_placer("torchrec_dp", batch_size=4096).place(tables, topo)
    got.validate(tables, topo)
    plain = make_placer("torchrec", batch_size=4096).place(tables, topo)
    assert plain.replicated == ()
    # TorchRec's performance model replicates some of the tiny tables, never the 10^5-row ones
    assert got.replicated and all(tables[i].num_rows < 1000 for i in got.replicated)
    assert not any("Sharding spec not found" in r.getMessage() for r in caplog.records)


def test_beside_copies_is_the_room_and_the_rest_a_replicated_set_leaves():
    """types.BesideCopies, shared by ReplicatingPlacer and refine: the copies come off every
    rank's cap, the rest keep their order, and merging puts the replicas back on every rank."""
    from recsearch.placement.types import REPLICATED, BesideCopies, CappedTopology, table_memory_bytes

    tables = [TableSpec(f"t{i}", 100 * (i + 1), 8) for i in range(4)]
    topology = CappedTopology.of([100_000, 200_000], "cpu")
    part = BesideCopies.of(tables, [2, 0], topology)
    copies = table_memory_bytes(tables[0]) + table_memory_bytes(tables[2])
    assert part.replicated == (0, 2) and part.rest == (1, 3)
    assert part.room_bytes == (100_000 - copies, 200_000 - copies) and part.fits()
    assert part.tables(tables) == [tables[1], tables[3]]
    assert part.topology().caps_bytes == part.room_bytes
    assert part.merged([1, 0]).ranks == (REPLICATED, 1, REPLICATED, 0)
    assert not BesideCopies.of(tables, [0, 1, 2, 3], CappedTopology.of([1, 1], "cpu")).fits()
