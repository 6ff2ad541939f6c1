import pytest

from recsearch.placement.types import (
    Cost,
    CostModel,
    CostSample,
    DeviceCost,
    Placement,
    PlacementError,
    Placer,
    SequenceTableSpec,
    alltoall_bytes,
    alltoall_width,
    check_fits,
    combine_costs,
    load_placement,
    save_placement,
    table_memory_bytes,
)
from recsearch.types import TableSpec, Topology

from .conftest import hand_tables


def test_table_memory_counts_weights_and_optimizer_state():
    t = TableSpec("t", num_rows=1000, dim=16)
    assert table_memory_bytes(t, "sgd") == 1000 * 16 * 4
    assert table_memory_bytes(t, "rowwise_adagrad") == 1000 * 16 * 4 + 1000 * 4
    assert table_memory_bytes(t) == table_memory_bytes(t, "rowwise_adagrad")  # the default
    assert table_memory_bytes(t, "adagrad") == 2 * 1000 * 16 * 4
    assert table_memory_bytes(t, "adam") == 3 * 1000 * 16 * 4
    half = TableSpec("h", num_rows=1000, dim=16, bytes_per_value=2)
    assert table_memory_bytes(half, "rowwise_adagrad") == 1000 * 16 * 2 + 1000 * 4  # fp32 state
    with pytest.raises(ValueError, match="unknown embedding optimizer 'lion'"):
        table_memory_bytes(t, "lion")


def test_placement_helpers():
    tables = hand_tables()
    p = Placement((1, 1, 0, 0, 1), 3)
    assert p.tables_on(0) == (2, 3) and p.tables_on(1) == (0, 1, 4) and p.tables_on(2) == ()
    assert p.groups() == [(2, 3), (0, 1, 4), ()]
    assert p.memory_per_rank(tables, "sgd") == [1280 + 6400, 3200 + 3200 + 320, 0]
    assert p.dim_per_rank(tables) == [36, 28, 0]
    assert p.to_dict(tables) == {"A": 1, "B": 1, "C": 0, "D": 0, "E": 1}
    assert Placement.from_dict(p.to_dict(tables), tables, 3) == p
    with pytest.raises(PlacementError, match="ranks outside 0..1"):
        Placement((0, 2), 2)
    with pytest.raises(PlacementError, match="placement has 5 tables, the task has 4"):
        p.memory_per_rank(tables[:4])


def test_validate_names_the_overfull_rank_and_sizes():
    tables = hand_tables()
    p = Placement((0, 0, 0, 0, 1), 2)
    p.validate(tables, Topology(2, 20_000), "sgd")
    with pytest.raises(PlacementError) as err:
        p.validate(tables, Topology(2, 10_000), "sgd")
    msg = str(err.value)
    assert "rank 0 holds" in msg and "14,080 bytes" in msg and "10,000 bytes" in msg
    assert "A, B, C, D" in msg
    with pytest.raises(PlacementError, match="placement is for 2 ranks, topology has 4"):
        p.validate(tables, Topology(4, 20_000), "sgd")


def test_table_larger_than_any_device_is_a_clear_error():
    big = TableSpec("huge_table", num_rows=1_000_000, dim=64)
    with pytest.raises(PlacementError) as err:
        check_fits([TableSpec("ok", 10, 4), big], Topology(4, 100 * 2**20), "rowwise_adagrad")
    msg = str(err.value)
    assert "'huge_table'" in msg and "'ok'" not in msg
    assert f"{1_000_000 * 64 * 4 + 1_000_000 * 4:,} bytes" in msg
    assert f"{100 * 2**20:,} bytes" in msg and "rowwise_adagrad" in msg


def test_step_cost_is_slowest_device_plus_alltoall():
    cost = combine_costs(
        [DeviceCost(1.0, 2.0, 0.5), DeviceCost(2.0, 2.5, 0.7), DeviceCost(0.0, 0.0, 0.6)]
    )
    assert (cost.fwd_ms, cost.bwd_ms, cost.comm_ms) == (2.0, 2.5, 0.7)
    assert cost.total_ms == pytest.approx(5.2)
    assert len(cost.per_device) == 3
    assert Cost.from_dict(cost.to_dict()) == cost
    assert combine_costs([]).total_ms == 0


def test_alltoall_bytes():
    tables = hand_tables()  # dims 8, 16, 32, 4, 4
    p = Placement((0, 0, 1, 1, 1), 2)  # rank 0: 24 dims, rank 1: 40 dims
    assert alltoall_bytes(p, tables, batch_size=100) == [
        (50 * 24 * 4, 50 * 40 * 4),
        (50 * 40 * 4, 50 * 24 * 4),
    ]
    assert alltoall_bytes(Placement((0,) * 5, 1), tables, 100) == [(0, 0)]
    four = alltoall_bytes(Placement((0, 1, 2, 3, 3), 4), tables, 400)
    assert four[0] == (3 * 100 * 8 * 4, 100 * (64 - 8) * 4)


def test_alltoall_width_of_shared_and_sequence_tables():
    # single-feature pooled tables price exactly their dim, as before (the benchmarks' tables)
    for t in hand_tables():
        assert alltoall_width(t) == t.dim
    assert alltoall_width(TableSpec("t", 10, 8, feature_names=("t",))) == 8
    # an EBC table shared by 3 features sends one pooled row per feature per sample
    shared = TableSpec("s", 10, 8, pooling_factor=6.0, feature_names=("a", "b", "c"))
    assert alltoall_width(shared) == 24
    # an EmbeddingCollection table sends one row per looked-up id (pooling summed over features)
    seq = SequenceTableSpec("q", 10, 8, pooling_factor=5.0, feature_names=("a", "b"))
    assert alltoall_width(seq) == 40
    plain = TableSpec("p", 10, 4)
    p = Placement((0, 1, 1), 2)
    assert p.dim_per_rank([shared, seq, plain]) == [24, 44]
    assert alltoall_bytes(p, [shared, seq, plain], batch_size=100) == [
        (50 * 24 * 4, 50 * 44 * 4),
        (50 * 44 * 4, 50 * 24 * 4),
    ]


def test_cost_sample_round_trip():
    tables = tuple(hand_tables())
    s = CostSample(
        tables,
        2048,
        combine_costs([DeviceCost(1, 2, 3)]),
        Placement((0, 0, 1, 1, 0), 2),
        hardware="cpu:x",
        extra={"k": 1},
    )
    back = CostSample.from_dict(s.to_dict())
    assert back == s and back.extra == {"k": 1}


def test_placement_file_round_trip(tmp_path):
    tables = hand_tables()
    p = Placement((0, 1, 1, 0, 1), 2)
    save_placement(tmp_path / "p.json", p, tables, placer="x")
    assert load_placement(tmp_path / "p.json", tables) == p
    # the trainer's format: a bare {table: rank}
    (tmp_path / "bare.json").write_text('{"A": 0, "B": 1, "C": 1, "D": 0, "E": 1}')
    assert load_placement(tmp_path / "bare.json", tables, 2) == p
    with pytest.raises(PlacementError, match="no rank for tables"):
        load_placement(tmp_path / "bare.json", [*tables, TableSpec("F", 1, 4)], 2)


def test_protocols_are_structural():
    class P:
        def place(self, tables, topology):
            return Placement((0,) * len(tables), topology.world_size)

    class M:
        def predict(self, tables, placement, topology):
            return Cost(0, 0, 0, 0)

        def fit(self, samples):
            pass

    assert isinstance(P(), Placer) and isinstance(M(), CostModel)
