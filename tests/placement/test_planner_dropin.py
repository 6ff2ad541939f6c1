"""LearnedShardingPlanner as a drop-in for TorchRec's EmbeddingShardingPlanner, in one process:
TorchRec's constructor arguments, constraints, per-device caps, storage reservation, kernels,
optimizer state, EmbeddingCollection, and the split of tables larger than a device."""

import warnings

import pytest
import torch
from torch import nn
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints
from torchrec.distributed.planner import Topology as TorchRecTopology
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

from recsearch.placement.plan import LearnedShardingPlanner, plan_ranks
from recsearch.placement.types import PlacementError, table_memory_bytes
from recsearch.types import TableSpec, Topology

ROWS = [100, 200, 300, 400]
DIM = 8


class TwoCollections(nn.Module):
    """An EmbeddingBagCollection (bag_0..3) and an EmbeddingCollection (seq_0) on meta."""

    def __init__(self, rows=ROWS, dim=DIM, seq_rows=50):
        super().__init__()
        self.ebc = EmbeddingBagCollection(
            tables=[
                EmbeddingBagConfig(
                    name=f"bag_{i}", embedding_dim=dim, num_embeddings=r, feature_names=[f"f{i}"]
                )
                for i, r in enumerate(rows)
            ],
            device=torch.device("meta"),
        )
        self.ec = EmbeddingCollection(
            tables=[
                EmbeddingConfig(
                    name="seq_0", embedding_dim=dim, num_embeddings=seq_rows, feature_names=["s0"]
                )
            ],
            device=torch.device("meta"),
        )

    def forward(self, bags, seq):
        """A loss with distinct gradients per table, row and column (for the 2-rank tests)."""
        pooled = self.ebc(bags).values()
        looked_up = self.ec(seq)["s0"].values()
        return ((pooled - 0.3) ** 2).sum() + ((looked_up - 0.1) ** 2).sum()


def _cpu_topology(caps, world=2):
    topo = TorchRecTopology(world_size=world, compute_device="cpu", hbm_cap=0, ddr_cap=max(caps))
    for dev, cap in zip(topo.devices, caps):
        dev.storage.ddr = cap
    return topo


def _sharders():
    return [EmbeddingBagCollectionSharder(), EmbeddingCollectionSharder()]


def test_takes_torchrec_planner_arguments_and_plans_both_collection_types():
    planner = LearnedShardingPlanner(
        topology=TorchRecTopology(world_size=2, compute_device="cpu"),
        batch_size=64,
        storage_reservation=FixedPercentageStorageReservation(0.1),
        constraints={"bag_0": ParameterConstraints(sharding_types=["table_wise"])},
        debug=False,
        placer="dim_greedy",
    )
    plan = plan_ranks(planner.plan(TwoCollections(), _sharders()))
    assert set(plan) == {"ebc", "ec"}
    assert set(plan["ebc"]) == {f"bag_{i}" for i in range(4)} and set(plan["ec"]) == {"seq_0"}
    assert all(st == "table_wise" for mod in plan.values() for st, _ in mod.values())
    # TorchRec's own planner accepts the same call
    EmbeddingShardingPlanner(
        topology=TorchRecTopology(world_size=2, compute_device="cpu"),
        batch_size=64,
        storage_reservation=FixedPercentageStorageReservation(0.1),
        constraints={"bag_0": ParameterConstraints(sharding_types=["table_wise"])},
        debug=False,
    ).plan(TwoCollections(), _sharders())


def test_unknown_keyword_is_a_type_error_and_unused_torchrec_parts_warn():
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['bogus'\\]"):
        LearnedShardingPlanner(topology=Topology(2, 1 << 20), bogus=1)
    with pytest.warns(UserWarning, match="does not use TorchRec's timeout_seconds"):
        LearnedShardingPlanner(topology=Topology(2, 1 << 20), timeout_seconds=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LearnedShardingPlanner(topology=Topology(2, 1 << 20), batch_size=8, debug=True)


def test_positional_arguments_are_torchrecs_in_torchrecs_order():
    import inspect

    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD,)
    theirs = [
        p.name
        for p in inspect.signature(EmbeddingShardingPlanner.__init__).parameters.values()
        if p.kind in kinds and p.name != "self"
    ]
    ours = [
        p.name
        for p in inspect.signature(LearnedShardingPlanner.__init__).parameters.values()
        if p.kind in kinds and p.name != "self"
    ]
    assert ours == theirs  # recsearch's own (placer, table_stats, ...) are keyword-only
    assert theirs[-1] == "plan_loader" and len(theirs) == 13
    # plan_loader as TorchRec's 13th positional argument: accepted, unused (a warning says so)
    args = [Topology(2, 1 << 20), 8, None, None, None, None, None, None, None, False, None, None]
    with pytest.warns(UserWarning, match="does not use TorchRec's plan_loader"):
        planner = LearnedShardingPlanner(*args, object())
    assert planner.batch_size == 8 and planner.debug is False


def test_constraint_fields_it_does_not_use_warn_once_naming_field_and_tables():
    constraints = {
        "bag_0": ParameterConstraints(is_weighted=True),
        "bag_1": ParameterConstraints(device_group="cpu", feature_names=["f1"]),
        "bag_2": ParameterConstraints(device_group="cpu"),
        "bag_3": ParameterConstraints(),  # defaults ask for nothing
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        LearnedShardingPlanner(Topology(2, 1 << 20), constraints=constraints)
    messages = [str(w.message) for w in caught if "ParameterConstraints" in str(w.message)]
    assert messages == [
        "LearnedShardingPlanner does not use these ParameterConstraints fields: is_weighted "
        "(table 'bag_0'); feature_names (table 'bag_1'); device_group (tables 'bag_1', 'bag_2')"
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LearnedShardingPlanner(
            Topology(2, 1 << 20),
            constraints={"bag_0": ParameterConstraints(sharding_types=["table_wise"])},
        )


def test_num_poolings_and_batch_sizes_scale_the_lookups_as_torchrec_counts_them():
    # TorchRec's lookups per batch: sum of pooling_factor x num_poolings x batch_sizes; per
    # sample of the planner's batch of 64: bag_0 2 x 3 x 32 / 64 = 3, bag_1 4 x 1 x 64 / 64 = 4
    constraints = {
        "bag_0": ParameterConstraints(pooling_factors=[2.0], num_poolings=[3.0], batch_sizes=[32]),
        "bag_1": ParameterConstraints(pooling_factors=[4.0]),
    }
    planner = LearnedShardingPlanner(
        Topology(2, 1 << 20), batch_size=64, constraints=constraints, placer="round_robin"
    )
    planner.plan(TwoCollections(), _sharders())
    pooling = {t.name: t.pooling_factor for t in planner.last_tables}
    assert pooling["bag_0"] == 3.0 and pooling["bag_1"] == 4.0 and pooling["bag_2"] == 1.0
    bad = {"bag_0": ParameterConstraints(pooling_factors=[2.0], num_poolings=[1.0, 1.0])}
    with pytest.raises(PlacementError, match="table 'bag_0'.*must match in length.*1, 2 and 1"):
        LearnedShardingPlanner(Topology(2, 1 << 20), constraints=bad).plan(
            TwoCollections(), _sharders()
        )


def test_per_table_options_are_copied_onto_the_plan_as_torchrec_does():
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode
    from torchrec.distributed.types import KeyValueParams

    kv = KeyValueParams(ssd_storage_directory="/tmp/kv_not_used")
    constraints = {
        "bag_1": ParameterConstraints(
            stochastic_rounding=False, bounds_check_mode=BoundsCheckMode.NONE, key_value_params=kv
        )
    }
    ours = LearnedShardingPlanner(
        Topology(2, 1 << 20), constraints=constraints, placer="round_robin", debug=False
    ).plan(TwoCollections(), _sharders())
    theirs = EmbeddingShardingPlanner(
        topology=TorchRecTopology(world_size=2, compute_device="cpu"),
        constraints=constraints,
        debug=False,
    ).plan(TwoCollections(), _sharders())
    a, b = ours.plan["ebc"]["bag_1"], theirs.plan["ebc"]["bag_1"]
    for key in ("stochastic_rounding", "bounds_check_mode", "key_value_params"):
        assert getattr(a, key) == getattr(b, key) == getattr(constraints["bag_1"], key)
    assert a.key_value_params is not kv  # a copy, as TorchRec's
    assert ours.plan["ebc"]["bag_0"].key_value_params is None


def test_kernel_is_fused_by_default_and_dense_only_when_constrained():
    model = TwoCollections()
    planner = LearnedShardingPlanner(Topology(2, 1 << 20), placer="round_robin", debug=False)
    plan = planner.plan(model, _sharders())
    kernels = {t: ps.compute_kernel for mp in plan.plan.values() for t, ps in mp.items()}
    assert set(kernels.values()) == {"fused"}
    dp = LearnedShardingPlanner(
        Topology(2, 1 << 20),
        constraints={"bag_1": ParameterConstraints(sharding_types=["data_parallel"])},
        placer="round_robin",
        debug=False,
    ).plan(model, _sharders())
    ps = dp.plan["ebc"]["bag_1"]
    assert (ps.sharding_type, ps.compute_kernel, ps.ranks) == ("data_parallel", "dense", [0, 1])


def test_constraints_give_the_sharding_type_torchrec_would_or_name_the_table():
    model = TwoCollections()
    constraints = {
        "bag_2": ParameterConstraints(sharding_types=["column_wise"], min_partition=4),
        "seq_0": ParameterConstraints(sharding_types=["row_wise"]),
    }
    ours = LearnedShardingPlanner(
        Topology(2, 1 << 20), constraints=constraints, placer="round_robin", debug=False
    ).plan(model, _sharders())
    theirs = EmbeddingShardingPlanner(
        topology=TorchRecTopology(world_size=2, compute_device="cpu"),
        constraints=constraints,
        debug=False,
    ).plan(model, _sharders())
    for path, table in (("ebc", "bag_2"), ("ec", "seq_0")):
        a, b = ours.plan[path][table], theirs.plan[path][table]
        assert a.sharding_type == b.sharding_type == constraints[table].sharding_types[0]
        assert a.compute_kernel == b.compute_kernel == "fused"
    # row-wise: the same shards as TorchRec's planner makes (ceil(rows / world) per rank)
    assert [s.shard_sizes for s in ours.plan["ec"]["seq_0"].sharding_spec.shards] == [
        s.shard_sizes for s in theirs.plan["ec"]["seq_0"].sharding_spec.shards
    ]
    # column-wise at min_partition 4: two pieces of 4 columns, each placed
    cw = ours.plan["ebc"]["bag_2"].sharding_spec.shards
    assert [s.shard_sizes for s in cw] == [[300, 4], [300, 4]]
    # a sharding type the EBC sharder does not offer on cpu: the table is named
    with pytest.raises(PlacementError, match="table 'bag_0' in ebc .*constrained to \\['row_wise'\\]"):
        LearnedShardingPlanner(
            Topology(2, 1 << 20),
            constraints={"bag_0": ParameterConstraints(sharding_types=["row_wise"])},
            placer="round_robin",
        ).plan(model, _sharders())
    # one TorchRec supports but this planner does not make
    with pytest.raises(PlacementError, match="table 'bag_3'.*table_column_wise.*makes table_wise"):
        LearnedShardingPlanner(
            Topology(2, 1 << 20),
            constraints={"bag_3": ParameterConstraints(sharding_types=["table_column_wise"])},
            placer="round_robin",
        ).plan(model, _sharders())
    # a kernel that keeps the table outside device memory
    with pytest.raises(PlacementError, match="table 'bag_1'.*kernels \\['fused_uvm'\\]"):
        LearnedShardingPlanner(
            Topology(2, 1 << 20),
            constraints={"bag_1": ParameterConstraints(compute_kernels=["fused_uvm"])},
            placer="round_robin",
        ).plan(model, _sharders())


def test_each_rank_keeps_to_its_own_cap_from_a_torchrec_topology():
    rows = [1000] * 6  # 1000 x 8 fp32 + rowwise state: 36,000 bytes each
    model = TwoCollections(rows=rows)
    per_table = table_memory_bytes(TableSpec("t", 1000, DIM))
    seq = table_memory_bytes(TableSpec("s", 50, DIM))
    caps = [6 * per_table, 1 * per_table + seq]  # rank 1 takes at most one bag table
    planner = LearnedShardingPlanner(
        topology=_cpu_topology(caps),
        storage_reservation=FixedPercentageStorageReservation(0.0),
        placer="round_robin",  # alternates ranks when both have room
        debug=False,
    )
    plan = plan_ranks(planner.plan(model, _sharders()))
    assert planner.last_caps_bytes == tuple(caps)
    on_1 = [t for mod in plan.values() for t, (_, r) in mod.items() if r == [1]]
    assert len([t for t in on_1 if t.startswith("bag")]) <= 1
    mem = planner.last_split.memory_per_rank(planner.last_placement, "rowwise_adagrad")
    assert all(m <= c for m, c in zip(mem, caps))
    # with rank 0's cap on both ranks the same placer spreads the tables evenly
    even = LearnedShardingPlanner(
        topology=_cpu_topology([caps[0], caps[0]]),
        storage_reservation=FixedPercentageStorageReservation(0.0),
        placer="round_robin",
        debug=False,
    )
    even_plan = plan_ranks(even.plan(model, _sharders()))
    assert sum(r == [1] for mod in even_plan.values() for _, r in mod.values()) >= 3


def test_storage_reservation_takes_its_share_of_each_rank():
    big = table_memory_bytes(TableSpec("t", 400, DIM))  # bag_3, 14,400 bytes
    cap = 26_000
    model = TwoCollections()
    fits = LearnedShardingPlanner(
        topology=_cpu_topology([cap] * 4, world=4),
        storage_reservation=FixedPercentageStorageReservation(0.0),
        placer="size_greedy",
        debug=False,
    )
    assert plan_ranks(fits.plan(model, _sharders()))["ebc"]["bag_3"][0] == "table_wise"
    # reserving half leaves 13,000 bytes per rank: bag_3 no longer fits whole and is split
    reserved = LearnedShardingPlanner(
        topology=_cpu_topology([cap] * 4, world=4),
        storage_reservation=FixedPercentageStorageReservation(0.5),
        placer="size_greedy",
        debug=False,
    )
    plan = reserved.plan(model, _sharders())
    assert reserved.last_caps_bytes == (cap // 2,) * 4 and cap // 2 < big
    assert plan.plan["ebc"]["bag_3"].sharding_type == "column_wise"
    mem = reserved.last_split.memory_per_rank(reserved.last_placement, "rowwise_adagrad")
    assert max(mem) <= cap // 2


def test_optimizer_state_is_read_from_the_module():
    model = TwoCollections()
    apply_optimizer_in_backward(torch.optim.Adam, model.parameters(), {"lr": 0.1})
    planner = LearnedShardingPlanner(Topology(2, 1 << 20), placer="round_robin", debug=False)
    planner.plan(model, _sharders())
    assert planner.last_optimizer == "adam"
    fused = [EmbeddingBagCollectionSharder(fused_params={"optimizer": "exact_sgd"})]
    planner = LearnedShardingPlanner(Topology(2, 1 << 20), placer="round_robin", debug=False)
    planner.plan(TwoCollections(), fused)
    assert planner.last_optimizer == "sgd"


def test_a_table_larger_than_a_device_is_split_not_refused():
    # bag_3: 40,000 rows x 64 = 10.24 MB + row state > a 4 MiB device; the rest are small
    rows = [100, 200, 300, 40_000]
    model = TwoCollections(rows=rows, dim=64)
    planner = LearnedShardingPlanner(Topology(4, 4 << 20), placer="lookup_greedy", debug=False)
    plan = planner.plan(model, _sharders())
    big = plan.plan["ebc"]["bag_3"]
    assert big.sharding_type == "column_wise"
    widths = [s.shard_sizes[1] for s in big.sharding_spec.shards]
    assert sum(widths) == 64 and len(widths) == 4  # the fewest equal pieces that fit: 4 x 16
    assert [s.shard_offsets[1] for s in big.sharding_spec.shards] == [0, 16, 32, 48]
    assert len(set(big.ranks)) == 4  # the placer spread the pieces
    mem = planner.last_split.memory_per_rank(planner.last_placement, "rowwise_adagrad")
    assert max(mem) <= 4 << 20
    # an EmbeddingCollection table that cannot be split by columns (dim 4) goes row-wise
    seq = TwoCollections(rows=[10] * 4, dim=4, seq_rows=400_000)  # 8 MB with row state
    plan = LearnedShardingPlanner(Topology(4, 4 << 20), placer="round_robin", debug=False).plan(
        seq, _sharders()
    )
    rw = plan.plan["ec"]["seq_0"]
    assert rw.sharding_type == "row_wise" and rw.ranks == [0, 1, 2, 3]
    assert [s.shard_sizes for s in rw.sharding_spec.shards] == [[100_000, 4]] * 4
    # too big even row-wise: the error names the table and what was tried
    with pytest.raises(PlacementError, match="table 'seq_0'.*row_wise needs"):
        LearnedShardingPlanner(Topology(2, 2 << 20), placer="round_robin").plan(seq, _sharders())


def _big_and_mid(mid_dim):
    """big (1000 x 32: 128,000 B with sgd, no state) fits no rank of 2 x 100,000 B; mid is
    60,000 B at width mid_dim. Split only what fits no rank, big -> 2 x 64,000, and
    64 + 64 + 60 cannot be packed: the planner must split finer. The model, and the planner."""
    model = EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(name="big", embedding_dim=32, num_embeddings=1000, feature_names=["a"]),
            EmbeddingBagConfig(
                name="mid", embedding_dim=mid_dim, num_embeddings=15_000 // mid_dim, feature_names=["b"]
            ),
        ],
        device=torch.device("meta"),
    )
    planner = LearnedShardingPlanner(
        Topology(2, 100_000), placer="size_greedy", optimizer="sgd", debug=False
    )
    return model, planner


@pytest.mark.parametrize("mid_dim", [8, 4])
def test_pieces_too_big_to_pack_are_split_finer_and_placed_again(mid_dim):
    # the table with the largest pieces is split one step finer first (big 4 x 32,000): that
    # packs, so mid stays whole, whether or not it has a column split of its own (dim 8: it
    # has; dim 4: it has none and the CPU sharder offers no row_wise)
    model, planner = _big_and_mid(mid_dim)
    plan = planner.plan(model, [EmbeddingBagCollectionSharder()])
    widths = {t: [s.shard_sizes[1] for s in ps.sharding_spec.shards] for t, ps in plan.plan[""].items()}
    assert widths == {"big": [8, 8, 8, 8], "mid": [mid_dim]}
    memory = planner.last_split.memory_per_rank(planner.last_placement, "sgd")
    assert sorted(memory) == [92_000, 96_000]
    ranks = plan_ranks(plan)[""]
    mid_rank = ranks["mid"][1][0]
    assert ranks["big"][1].count(mid_rank) == 1 and ranks["big"][1].count(1 - mid_rank) == 3
    # a table that cannot be split (table_wise only) and does not fit: named, nothing relaxed
    with pytest.raises(PlacementError, match="table 'big'.*fits no rank"):
        LearnedShardingPlanner(
            Topology(2, 100_000),
            constraints={"big": ParameterConstraints(sharding_types=["table_wise"])},
            placer="size_greedy",
            optimizer="sgd",
        ).plan(model, [EmbeddingBagCollectionSharder()])


def _three_tables(rows, data_type):
    """3 tables of dim 16 that fit no 2 ranks whole (two would share one): a model that fits
    when one of them is split column-wise in 2 (the ux report's p6_split)."""
    from torchrec.modules.embedding_configs import DataType

    return EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(
                name=f"t{i}",
                embedding_dim=16,
                num_embeddings=rows,
                feature_names=[f"f{i}"],
                data_type=getattr(DataType, data_type),
            )
            for i in range(3)
        ],
        device=torch.device("meta"),
    )


@pytest.mark.parametrize("rows, data_type", [(100_000, "FP16"), (55_000, "FP32")])
@pytest.mark.parametrize("placer", ["size_greedy", "learned"])
def test_splits_one_table_in_two_when_that_is_enough(rows, data_type, placer):
    # 2 ranks of 8 MiB DDR, TorchRec's default 15% reservation: 6.80 MiB each. Whole, t0..t2
    # are 3.6 MB (FP16, with row-wise state) / 3.74 MB (FP32): two do not share a rank. Split
    # them all in 4 (as the planner did) and the row-wise state per piece no longer fits
    # (FP16); splitting t0 alone in 2 does. TorchRec's own planner plans it too.
    from torchrec.distributed.sharding_plan import get_default_sharders

    topo = TorchRecTopology(world_size=2, compute_device="cpu", ddr_cap=8 << 20)
    planner = LearnedShardingPlanner(topology=topo, batch_size=8, placer=placer, debug=False)
    plan = planner.plan(_three_tables(rows, data_type), get_default_sharders())
    got = {t: (kind, tuple(ranks)) for t, (kind, ranks) in plan_ranks(plan)[""].items()}
    assert got["t0"] in (("column_wise", (0, 1)), ("column_wise", (1, 0)))
    assert {got["t1"], got["t2"]} == {("table_wise", (0,)), ("table_wise", (1,))}
    memory = planner.last_split.memory_per_rank(planner.last_placement, planner.last_optimizer)
    assert all(m <= c for m, c in zip(memory, planner.last_caps_bytes))
    # deterministic: the same plan again
    again = LearnedShardingPlanner(topology=topo, batch_size=8, placer=placer, debug=False)
    assert plan_ranks(again.plan(_three_tables(rows, data_type), get_default_sharders())) == (
        plan_ranks(plan)
    )


def test_nothing_fits_reports_the_closest_split_and_each_ranks_cap():
    # t0..t2: 1000 x 16 fp32 with row-wise state, 68,000 B whole, 36,000 B per half. Ranks of
    # 103,000 and 103,500 B: whole, largest-first packing leaves one table (68,000 B) over;
    # t0 in 2 (208,000 B in all, more than the 206,500 B the ranks hold) leaves both halves
    # (72,000 B) over, and no finer split can fit: the whole-table attempt is the closest
    from recsearch.placement.types import describe_caps

    model = EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(name=f"t{i}", embedding_dim=16, num_embeddings=1000, feature_names=[f"f{i}"])
            for i in range(3)
        ],
        device=torch.device("meta"),
    )
    topo = _cpu_topology([103_000, 103_500])
    planner = LearnedShardingPlanner(
        topo, storage_reservation=FixedPercentageStorageReservation(0.0), placer="size_greedy"
    )
    with pytest.raises(PlacementError) as err:
        planner.plan(model, [EmbeddingBagCollectionSharder()])
    message = str(err.value)
    assert "split 1 of 2 tried, the closest to fitting (no table split; 66.41 KiB left over" in message
    assert "needs 66.41 KiB (68,000 bytes) but no rank has that much left of its cap" in message
    assert (
        "left of each rank's cap: rank 0: 34.18 KiB of 100.59 KiB (103,000 bytes), "
        "rank 1: 34.67 KiB of 101.07 KiB (103,500 bytes)"
    ) in message
    assert describe_caps((103_000, 103_500)) in message
    assert "under the cap of" not in message


def test_row_blocks_are_torchrecs():
    from torchrec.distributed.sharding_plan import _calculate_rw_shard_sizes_and_offsets

    from recsearch.placement.shards import row_blocks

    for rows, world in ((10, 4), (5, 4), (400_000, 4), (7, 7), (3, 8)):
        sizes, _ = _calculate_rw_shard_sizes_and_offsets(rows, world, 4)
        assert row_blocks(rows, world) == [s[0] for s in sizes]


def test_sequence_tables_and_shared_features_price_their_real_alltoall():
    from recsearch.placement.types import SequenceTableSpec, alltoall_width

    planner = LearnedShardingPlanner(
        Topology(2, 1 << 20),
        constraints={"seq_0": ParameterConstraints(pooling_factors=[3.0])},
        placer="dim_greedy",
        debug=False,
    )
    planner.plan(TwoCollections(), _sharders())
    by_name = {t.name: t for t in planner.last_tables}
    assert isinstance(by_name["seq_0"], SequenceTableSpec)
    assert alltoall_width(by_name["seq_0"]) == 3 * DIM  # one row per id, not one per sample
    assert not isinstance(by_name["bag_0"], SequenceTableSpec)
    assert alltoall_width(by_name["bag_0"]) == DIM


def test_torchrec_placer_gives_torchrec_the_per_feature_pooling(monkeypatch):
    from recsearch.placement import torchrec_placer
    from recsearch.placement.torchrec_placer import TorchRecPlacer

    seen = {}
    real = torchrec_placer.EmbeddingShardingPlanner

    def recording(*args, **kwargs):
        seen.update(kwargs["constraints"])
        return real(*args, **kwargs)

    monkeypatch.setattr(torchrec_placer, "EmbeddingShardingPlanner", recording)
    tables = [
        TableSpec("shared", 100, 8, pooling_factor=6.0, feature_names=("a", "b", "c")),
        TableSpec("single", 100, 8, pooling_factor=2.0),
    ]
    TorchRecPlacer(optimizer="sgd").place(tables, Topology(2, 1 << 30, "cpu"))
    assert seen["shared"].pooling_factors == [2.0, 2.0, 2.0]  # 6 lookups per sample in all
    assert seen["single"].pooling_factors == [2.0]


@pytest.mark.parametrize("placer", ["size_greedy", "torchrec"])
def test_one_table_name_in_two_modules_is_planned_per_module(placer):
    class TwoTowers(nn.Module):
        def __init__(self):
            super().__init__()
            self.user = nn.Module()
            self.user.ebc = EmbeddingBagCollection(
                tables=[
                    EmbeddingBagConfig(name="id", embedding_dim=8, num_embeddings=3000, feature_names=["u"]),
                    EmbeddingBagConfig(name="age", embedding_dim=4, num_embeddings=100, feature_names=["a"]),
                ],
                device=torch.device("meta"),
            )
            self.item = EmbeddingBagCollection(
                tables=[
                    EmbeddingBagConfig(name="id", embedding_dim=16, num_embeddings=2000, feature_names=["i"]),
                ],
                device=torch.device("meta"),
            )

    planner = LearnedShardingPlanner(Topology(2, 1 << 30, "cpu"), placer=placer, debug=False)
    plan = planner.plan(TwoTowers(), [EmbeddingBagCollectionSharder()])
    got = plan_ranks(plan)
    assert set(got) == {"user.ebc", "item"}
    assert set(got["user.ebc"]) == {"id", "age"} and set(got["item"]) == {"id"}
    assert plan.plan["user.ebc"]["id"].sharding_spec.shards[0].shard_sizes == [3000, 8]
    assert plan.plan["item"]["id"].sharding_spec.shards[0].shard_sizes == [2000, 16]
    # the placer saw the two "id" tables under unique names
    names = {t.name: (t.num_rows, t.dim) for t in planner.last_tables}
    assert names == {"id@user/ebc": (3000, 8), "age": (100, 4), "id@item": (2000, 16)}
    placed = planner.last_placement.to_dict(planner.last_tables)
    assert got["user.ebc"]["id"][1] == [placed["id@user/ebc"]]
    assert got["item"]["id"][1] == [placed["id@item"]]
