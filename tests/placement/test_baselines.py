import pytest

from recsearch.placement import baselines
from recsearch.placement.baselines import GreedyPlacer, RandomPlacer, RoundRobinPlacer
from recsearch.placement.cli import baseline as baseline_cli
from recsearch.placement.registry import PLACERS, make_placer
from recsearch.placement.tables import make_task, save_task
from recsearch.placement.types import Placement, PlacementError, table_memory_bytes
from recsearch.types import TableSpec, Topology

from .conftest import hand_tables

ROOMY = Topology(2, 1 << 30, "cpu")


# Worked out by hand in conftest.hand_tables' terms (tables A..E, 2 devices, no memory pressure):
# dim keys C32 B16 A8 D4 E4 -> C:0, B:1, A:1 (16<32), D:1 (24<32), E:1 (28<32).
# size keys D6400 B3200 A3200 C1280 E320 (ties: bigger index first) -> D:0, B:1, A:1, C:0 (tie on
#   key sum and memory -> lowest rank), E:1.
# lookup keys (dim x pooling) D32 B32 C32 A8 E4 (ties by size) -> D:0, B:1, C:1 (tie on key sum,
#   rank 1 holds less memory), A:0, E:0.
# size-lookup keys D83.3 B54.4 C32 A16 E5.2 -> D:0, B:1, C:1, A:0, E:1.
@pytest.mark.parametrize(
    "name, expected",
    [
        ("dim_greedy", (1, 1, 0, 1, 1)),
        ("size_greedy", (1, 1, 0, 0, 1)),
        ("lookup_greedy", (0, 1, 1, 0, 0)),
        ("size_lookup_greedy", (0, 1, 1, 0, 1)),
    ],
)
def test_greedy_baselines_on_a_hand_made_case(name, expected):
    assert make_placer(name, optimizer="sgd").place(hand_tables(), ROOMY) == Placement(expected, 2)


def test_greedy_respects_the_memory_cap():
    # dim_greedy alone would put C on 0 and everything else on 1 (8,000 + 6,400... bytes); a cap of
    # 10,000 bytes forces D (6,400) to rank 0 once rank 1 is full.
    tables = hand_tables()
    p = make_placer("dim_greedy", optimizer="sgd").place(tables, Topology(2, 10_000))
    assert max(p.memory_per_rank(tables, "sgd")) <= 10_000
    assert p == Placement((1, 1, 0, 0, 1), 2)


def test_round_robin_and_its_overflow():
    tables = hand_tables()
    assert RoundRobinPlacer("sgd").place(tables, ROOMY) == Placement((0, 1, 0, 1, 0), 2)
    # cap 8,000: A0 B1 C0 D(->1 is 3,200+6,400 > cap; 0 has 4,480+6,400 > cap) fails
    with pytest.raises(PlacementError) as err:
        RoundRobinPlacer("sgd").place(tables, Topology(2, 8_000))
    assert (
        "'D'" in str(err.value)
        and "6,400 bytes" in str(err.value)
        and "8,000 bytes" in str(err.value)
    )


def test_random_is_seeded_and_respects_the_cap(tiny_pool):
    task = make_task(tiny_pool.tables, 20, 4, seed=1, slack=1.05)
    a = RandomPlacer(seed=5).place(task.tables, task.topology)
    assert a == RandomPlacer(seed=5).place(task.tables, task.topology)
    assert a != RandomPlacer(seed=6).place(task.tables, task.topology)
    a.validate(task.tables, task.topology)


@pytest.mark.parametrize("name", [p for p in PLACERS if p not in ("torchrec", "torchrec_dp")])
def test_every_baseline_fits_tight_tasks(tiny_pool, name):
    for seed in range(3):
        task = make_task(tiny_pool.tables, 24, 4, seed=seed, slack=1.15)
        p = make_placer(name, optimizer=task.optimizer, seed=seed).place(task.tables, task.topology)
        assert len(p) == 24 and p.world_size == 4
        assert max(p.memory_per_rank(task.tables, task.optimizer)) <= task.device_memory_bytes


def test_table_too_large_for_any_device_names_table_and_sizes():
    tables = [*hand_tables(), TableSpec("giant", num_rows=10_000, dim=8)]
    for name in ("size_greedy", "random", "round_robin"):
        with pytest.raises(PlacementError) as err:
            make_placer(name, optimizer="sgd").place(tables, Topology(2, 50_000))
        msg = str(err.value)
        assert "'giant'" in msg and "320,000 bytes" in msg and "50,000 bytes" in msg


def test_no_device_with_room_left_is_an_error_not_an_overcommit():
    tables = [TableSpec("x", 100, 16), TableSpec("y", 100, 16)]  # 6,400 B each with sgd
    with pytest.raises(PlacementError) as err:
        GreedyPlacer(baselines.size_key, "size_greedy", "sgd").place(tables, Topology(1, 10_000))
    assert "needs 6.25 KiB (6,400 bytes)" in str(err.value)
    assert "left of each rank's cap: rank 0: 3.52 KiB of 9.77 KiB (10,000 bytes)" in str(err.value)


def test_torchrec_planner_baseline_is_table_wise_and_within_cap(tiny_pool):
    task = make_task(tiny_pool.tables, 12, 3, seed=0, slack=1.5)
    p = make_placer("torchrec", optimizer=task.optimizer, batch_size=512).place(
        task.tables, task.topology
    )
    assert p.world_size == 3 and len(p) == 12
    p.validate(task.tables, task.topology, task.optimizer)


def test_torchrec_planner_reports_infeasible_caps():
    tables = [TableSpec("a", 1000, 16), TableSpec("b", 1000, 16)]
    cap = table_memory_bytes(tables[0]) + 100  # each fits alone, not both on one device
    with pytest.raises(PlacementError, match="torchrec planner found no table-wise plan"):
        make_placer("torchrec").place(tables, Topology(1, cap))


def test_cli_writes_placement_files(tmp_path, tiny_pool, capsys):
    task = make_task(tiny_pool.tables, 10, 2, seed=0, name="small")
    save_task(tmp_path / "small.json", task)
    rc = baseline_cli.main(
        [
            "--task",
            str(tmp_path / "small.json"),
            "--placer",
            "size_greedy",
            "dim_greedy",
            "--out-dir",
            str(tmp_path / "out"),
        ]
    )
    assert rc == 0
    assert (tmp_path / "out" / "small.size_greedy.json").exists()
    assert "dim_greedy" in capsys.readouterr().out
