"""Replication (data_parallel) chosen by the placer, with
LearnedShardingPlanner(data_parallel=True): the split's rules for REPLICATED pieces, the planner
with a given and a named placer, and the plan under DistributedModelParallel on 2 CPU ranks
(gloo), where the replicas stay in sync."""

import pytest
import torch
from torch import nn
from torchrec.distributed.planner import ParameterConstraints
from torchrec.distributed.planner import Topology as TorchRecTopology
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from recsearch.placement.plan import LearnedShardingPlanner, enumerate_tables, to_sharding_plan
from recsearch.placement.shards import TableRequest, split_tables
from recsearch.placement.types import REPLICATED, Placement, PlacementError, table_memory_bytes
from recsearch.types import TableSpec, Topology
from tests.placement.two_ranks import gather_to_file, gloo_group, run_two_ranks

TINY = [10, 20, 40, 100]  # rows of t0..t3: replicated by ReplicateTiny
BIG = [5_000, 8_000, 12_000]  # rows of t4..t6: table-wise
DIM = 8
LR = 0.5


def _ebc(rows=(*TINY, *BIG), dim=DIM, device="meta"):
    return EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(
                name=f"t{i}", embedding_dim=dim, num_embeddings=r, feature_names=[f"f{i}"]
            )
            for i, r in enumerate(rows)
        ],
        device=torch.device(device),
    )


class Model(nn.Module):
    """One EmbeddingBagCollection; the loss has distinct gradients per table, row and column."""

    def __init__(self, rows=(*TINY, *BIG)):
        super().__init__()
        self.ebc = _ebc(rows)

    def forward(self, features):
        return ((self.ebc(features).values() - 0.3) ** 2).sum()


class ReplicateTiny:
    """Replicates every piece with at most max_rows rows (and, when given, may(piece)), places
    the rest round-robin."""

    def __init__(self, max_rows=100, may=None):
        self.max_rows, self.may = max_rows, may

    def place(self, tables, topology):
        ranks, k = [], 0
        for t in tables:
            if t.num_rows <= self.max_rows and (self.may is None or self.may(t)):
                ranks.append(REPLICATED)
            else:
                ranks.append(k % topology.world_size)
                k += 1
        return Placement(tuple(ranks), topology.world_size)


def _planner(placer, data_parallel=True, **kwargs):
    return LearnedShardingPlanner(
        topology=Topology(2, 1 << 30, "cpu"),
        batch_size=64,
        data_parallel=data_parallel,
        placer=placer,
        debug=False,
        **kwargs,
    )


def _sharding(plan, path="ebc"):
    return {
        t: (ps.sharding_type, list(ps.ranks), ps.compute_kernel)
        for t, ps in plan.plan[path].items()
    }


# --------------------------------------------------------------------------------------------
# The split: REPLICATED pieces


def _requests(data_parallel=True):
    kinds = (
        ("table_wise", "column_wise", "data_parallel")
        if data_parallel
        else ("table_wise", "column_wise")
    )
    return [
        TableRequest(TableSpec("small", 10, 8), kinds, where="ebc"),
        TableRequest(TableSpec("big", 1000, 16), kinds, where="ebc"),
    ]


def test_split_makes_a_replicated_whole_table_data_parallel_and_counts_it_on_every_rank():
    split = split_tables(_requests(), [1 << 20, 1 << 20], "sgd")
    placement = Placement((REPLICATED, 1), 2)
    assert split.ranks(placement) == [("data_parallel", (0, 1)), ("table_wise", (1,))]
    small, big = (table_memory_bytes(t, "sgd") for t in split.tables)
    assert split.memory_per_rank(placement, "sgd") == [small, small + big]
    # the same as the Placement's own rule
    assert split.memory_per_rank(placement, "sgd") == placement.memory_per_rank(split.pieces, "sgd")


def test_split_refuses_a_replicated_table_whose_request_does_not_allow_data_parallel():
    split = split_tables(_requests(data_parallel=False), [1 << 20, 1 << 20], "sgd")
    with pytest.raises(
        PlacementError, match=r"table 'small' in ebc.*data_parallel=True.*ParameterConstraints"
    ):
        split.ranks(Placement((REPLICATED, 0), 2))


def test_split_refuses_a_replicated_column_wise_piece():
    big = table_memory_bytes(TableSpec("big", 1000, 16), "sgd")
    split = split_tables(_requests(), [big // 2 + 100, big // 2 + 100], "sgd")
    assert [p.name for p in split.pieces] == ["small", "big/col0", "big/col1"]
    assert split.memory_per_rank(Placement((0, REPLICATED, 1), 2), "sgd")[0] > big // 2
    with pytest.raises(PlacementError, match=r"column-wise piece of table 'big'.*whole tables"):
        split.ranks(Placement((0, REPLICATED, 1), 2))


def test_to_sharding_plan_makes_replicated_tables_data_parallel():
    plan = to_sharding_plan(_ebc(device="cpu"), Placement((REPLICATED, 1, 0, 0, 1, 0, 1), 2), "ebc")
    got = _sharding(plan)
    assert got["t0"] == ("data_parallel", [0, 1], "dense")
    assert got["t1"] == ("table_wise", [1], "fused")


# --------------------------------------------------------------------------------------------
# The planner with a given placer


def test_planner_makes_the_placers_replicated_tables_data_parallel():
    planner = _planner(ReplicateTiny())
    got = _sharding(planner.plan(Model()))
    for i in range(len(TINY)):
        assert got[f"t{i}"] == ("data_parallel", [0, 1], "dense")
    for i in range(len(TINY), len(TINY) + len(BIG)):
        kind, ranks, kernel = got[f"t{i}"]
        assert (kind, kernel) == ("table_wise", "fused") and len(ranks) == 1
    assert planner.last_placement.replicated == tuple(range(len(TINY)))
    # replicas count on every rank
    mem = planner.last_split.memory_per_rank(planner.last_placement, planner.last_optimizer)
    copies = sum(
        table_memory_bytes(t, planner.last_optimizer) for t in planner.last_tables[: len(TINY)]
    )
    assert min(mem) >= copies


def test_without_data_parallel_a_replicating_placer_is_refused():
    with pytest.raises(PlacementError, match=r"replicated table 't0'.*data_parallel=True"):
        _planner(ReplicateTiny(), data_parallel=False).plan(Model())
    # a table constrained to table_wise is refused too, with data_parallel on
    constrained = _planner(
        ReplicateTiny(), constraints={"t1": ParameterConstraints(sharding_types=["table_wise"])}
    )
    with pytest.raises(PlacementError, match=r"replicated table 't1'.*\['table_wise'\]"):
        constrained.plan(Model())
    # ... and a constraint allowing data_parallel lets it through without data_parallel=True
    allowed = _planner(
        ReplicateTiny(),
        data_parallel=False,
        constraints={
            f"t{i}": ParameterConstraints(sharding_types=["table_wise", "data_parallel"])
            for i in range(len(TINY))
        },
    )
    got = _sharding(allowed.plan(Model()))
    assert {got[f"t{i}"][0] for i in range(len(TINY))} == {"data_parallel"}


def test_data_parallel_keeps_it_among_the_allowed_types_of_tables_left_to_choose():
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder

    constraints = {"t1": ParameterConstraints(sharding_types=["table_wise"])}
    for dp in (False, True):
        tables = enumerate_tables(
            Model(), [EmbeddingBagCollectionSharder()], constraints, "cpu", data_parallel=dp
        )
        kinds = {t.spec.name: t.request.sharding_types for t in tables}
        assert ("data_parallel" in kinds["t0"]) == dp
        assert kinds["t1"] == ("table_wise",)


def test_may_replicate_is_whole_tables_that_allow_data_parallel():
    big_rows = 50_000  # does not fit one rank whole: split column-wise
    model = Model(rows=(*TINY, big_rows))
    may = _RecordedMayReplicate()
    topology = Topology(
        2, table_memory_bytes(TableSpec("b", big_rows, DIM), "rowwise_adagrad") * 3 // 4, "cpu"
    )
    planner = LearnedShardingPlanner(
        topology=topology,
        batch_size=64,
        data_parallel=True,
        placer=ReplicateTiny(max_rows=10**9, may=may),  # replicate whatever it may
        constraints={"t0": ParameterConstraints(sharding_types=["table_wise"])},
        debug=False,
    )
    may.planner = planner
    got = _sharding(planner.plan(model))
    seen = may.seen
    pieces = [n for n in seen if n.startswith("t4/col")]
    assert pieces and not any(seen[n] for n in pieces)
    assert seen["t0"] is False and all(seen[f"t{i}"] for i in range(1, len(TINY)))
    assert got["t4"][0] == "column_wise" and got["t0"][0] == "table_wise"
    assert {got[f"t{i}"][0] for i in range(1, len(TINY))} == {"data_parallel"}


# --------------------------------------------------------------------------------------------
# The planner with a named placer


def test_named_placer_is_built_to_replicate_only_with_data_parallel():
    from recsearch.placement.replicate import ReplicatingPlacer

    on, off = _planner("dim_greedy"), _planner("dim_greedy", data_parallel=False)
    assert isinstance(on.placer_for("sgd"), ReplicatingPlacer)
    assert not isinstance(off.placer_for("sgd"), ReplicatingPlacer)
    on.data_parallel = False  # the cache is keyed by the setting as well
    assert not isinstance(on.placer_for("sgd"), ReplicatingPlacer)


def test_learned_with_data_parallel_replicates_tiny_one_hot_tables():
    """Tiny one-hot tables beside big ones, dim 64, 2 CPU ranks: under the shipped CPU cost net
    (batch 512 per rank: a global batch of 1,024) replicating the tiny tables makes the step
    cheaper."""
    rows = (10, 20, 50, 100, 30, 40, 100_000, 200_000, 50_000, 80_000)
    model = EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(
                name=f"t{i}", embedding_dim=64, num_embeddings=r, feature_names=[f"f{i}"]
            )
            for i, r in enumerate(rows)
        ],
        device=torch.device("meta"),
    )
    planner = LearnedShardingPlanner(
        topology=TorchRecTopology(world_size=2, compute_device="cpu"),
        batch_size=512,
        storage_reservation=FixedPercentageStorageReservation(0.15),
        data_parallel=True,
        debug=False,
    )
    got = _sharding(planner.plan(model), "")
    replicated = [f"t{i}" for i in planner.last_placement.replicated]
    assert replicated, "expected the shipped CPU net to replicate some tiny tables"
    for name, (kind, ranks, kernel) in got.items():
        if name in replicated:
            assert (kind, ranks, kernel) == ("data_parallel", [0, 1], "dense")
        else:
            assert kind == "table_wise" and kernel == "fused"
    assert all(rows[int(n[1:])] <= 100 for n in replicated)  # never the big ones


# --------------------------------------------------------------------------------------------
# Under DistributedModelParallel, 2 CPU ranks


def _init_value(table: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    return torch.sin(rows[:, None] * 0.37 + cols[None, :] * 0.11 + table)


def _tables(dmp, set_weights=False) -> dict[str, torch.Tensor]:
    """Table name -> this rank's copy (data_parallel) or local shard (table-wise); set_weights:
    first make every table a function of (table, row, column), the same on both ranks."""
    out = {}
    with torch.no_grad():
        for key, value in dmp.state_dict().items():
            if "embedding_bags" not in key:
                continue
            name = key.split("embedding_bags.")[1].split(".")[0]
            if hasattr(value, "local_shards"):
                if not value.local_shards():
                    continue
                tensor = value.local_shards()[0].tensor
            else:
                tensor = value
            if set_weights:
                n, d = tensor.shape
                tensor.copy_(_init_value(int(name[1:]), torch.arange(n), torch.arange(d)))
            out[name] = tensor.detach().clone()
    return out


def _dmp_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.optim.optimizers import in_backward_optimizer_filter
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    with gloo_group(rank, port):
        sharders = [
            EmbeddingBagCollectionSharder(
                fused_params={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": LR}
            )
        ]
        planner = LearnedShardingPlanner(
            topology=TorchRecTopology(world_size=2, compute_device="cpu"),
            batch_size=4,
            data_parallel=True,
            placer=ReplicateTiny(),
            debug=False,
        )
        model = Model()
        plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
        dmp = DistributedModelParallel(
            module=model, device=torch.device("cpu"), plan=plan, sharders=sharders
        )
        before = _tables(dmp, set_weights=True)
        # each rank its own ids: the tiny tables' rows 0..3 on rank 0, 5..8 on rank 1
        g = torch.Generator().manual_seed(rank)
        n = 4
        ids = [
            torch.randint(0, 4, (n,), generator=g) + 5 * rank
            if r <= 100
            else torch.randint(0, r, (n,), generator=g)
            for r in (*TINY, *BIG)
        ]
        ids[0] = torch.arange(4) + 5 * rank  # t0: every row of the rank's range
        features = KeyedJaggedTensor.from_lengths_sync(
            keys=[f"f{i}" for i in range(len(ids))],
            values=torch.cat(ids),
            lengths=torch.ones(len(ids) * n, dtype=torch.int32),
        )
        dense = dict(in_backward_optimizer_filter(dmp.named_parameters()))
        opt = torch.optim.SGD(list(dense.values()), lr=LR)
        loss = dmp(features)
        loss.backward()  # the fused SGD updates the table-wise tables; DDP all-reduces the rest
        opt.step()  # the dense optimizer steps the replicated tables
        after = _tables(dmp)
        result = {
            "rank": rank,
            "plan": {
                t: [ps.sharding_type, list(ps.ranks), ps.compute_kernel]
                for t, ps in plan.plan["ebc"].items()
            },
            "dense": sorted(dense),
            "before": {t: v.tolist() for t, v in before.items()},
            "after": {t: v.tolist() for t, v in after.items()},
            "ids": [i.tolist() for i in ids],
        }
        gather_to_file(result, out)


@pytest.mark.multiproc
@pytest.mark.slow
def test_replicated_tables_train_and_stay_in_sync_under_dmp(tmp_path):
    results = run_two_ranks(_dmp_worker, tmp_path / "result.json")
    r0, r1 = results
    assert r0["plan"] == r1["plan"]
    tiny = [f"t{i}" for i in range(len(TINY))]
    for t in tiny:
        assert r0["plan"][t] == ["data_parallel", [0, 1], "dense"]
    assert {r0["plan"][f"t{i}"][0] for i in range(len(TINY), len(TINY) + len(BIG))} == {
        "table_wise"
    }
    # the dense optimizer got the replicated tables only (the table-wise ones are fused)
    assert all(any(f".{t}." in name for t in tiny) for name in r0["dense"]) and len(
        r0["dense"]
    ) == len(tiny)
    for t in tiny:
        before0, before1 = torch.tensor(r0["before"][t]), torch.tensor(r1["before"][t])
        after0, after1 = torch.tensor(r0["after"][t]), torch.tensor(r1["after"][t])
        assert torch.equal(before0, before1)
        assert torch.allclose(after0, after1), t  # the replicas stay in sync
        # rows either rank looked up changed on both (the gradients were all-reduced); the
        # rest did not
        touched = {i for r in results for i in r["ids"][int(t[1:])]}
        changed = {i for i in range(after0.shape[0]) if not torch.equal(after0[i], before0[i])}
        assert changed == touched, t
    # the table-wise tables were trained by the fused optimizer on their owner
    for r in results:
        for t in r["after"]:
            if t not in tiny:
                assert r["after"][t] != r["before"][t], t


def test_to_sharding_plan_reads_a_placement_files_mapping():
    """A mapping as a placement file holds it ("data_parallel" for a replica) works as a
    Placement does; a mapping of replicas only needs world_size."""
    from recsearch.placement.plan import to_sharding_plan

    ebc = EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(name=f"t{i}", embedding_dim=8, num_embeddings=50, feature_names=[f"f{i}"])
            for i in range(3)
        ],
        device=torch.device("meta"),
    )
    got = _sharding(to_sharding_plan(ebc, {"t0": 0, "t1": "data_parallel", "t2": 1}, module_path=""), "")
    assert got["t1"][0] == "data_parallel" and got["t0"][:2] == ("table_wise", [0])
    assert got["t2"][:2] == ("table_wise", [1])
    with pytest.raises(PlacementError, match="world_size"):
        to_sharding_plan(ebc, {f"t{i}": "data_parallel" for i in range(3)}, module_path="")
    with pytest.raises(PlacementError, match="int >= 0"):
        to_sharding_plan(ebc, {"t0": 0, "t1": -1, "t2": 1}, module_path="")


def test_a_table_whose_kernels_exclude_dense_is_not_offered_for_replication():
    planner = _planner(
        "dim_greedy",
        constraints={
            "t0": ParameterConstraints(sharding_types=["table_wise", "data_parallel"], compute_kernels=["fused"])
        },
    )
    planner.plan(Model())
    assert not planner.may_replicate(planner.last_tables[0])
    assert planner.may_replicate(planner.last_tables[1])


def test_a_single_column_wise_piece_as_wide_as_its_table_is_not_replicable():
    # t0 (dim 8) constrained to column_wise or data_parallel with min_partition 8: no column
    # split, so it becomes one column_wise piece equal to the table; may_replicate must say no,
    # or a replicating placer would replicate a column-wise piece and the plan fail
    may = _RecordedMayReplicate()
    planner = _planner(
        ReplicateTiny(may=may),
        constraints={
            "t0": ParameterConstraints(
                sharding_types=["column_wise", "data_parallel"], min_partition=8
            )
        },
    )
    may.planner = planner
    got = _sharding(planner.plan(Model()))
    assert may.seen["t0"] is False and may.seen["t1"] is True
    assert got["t0"][:2] == ("column_wise", [0])
    assert got["t1"][0] == "data_parallel"


def test_torchrec_dp_is_offered_data_parallel_only_where_allowed(monkeypatch):
    from recsearch.placement import torchrec_placer

    offered = {}
    real = torchrec_placer.EmbeddingShardingPlanner

    def recording(*args, **kwargs):
        offered.update({n: list(c.sharding_types) for n, c in kwargs["constraints"].items()})
        return real(*args, **kwargs)

    monkeypatch.setattr(torchrec_placer, "EmbeddingShardingPlanner", recording)
    constraints = {
        "t1": ParameterConstraints(sharding_types=["table_wise", "data_parallel"]),
        "t2": ParameterConstraints(sharding_types=["table_wise"]),
    }
    # data_parallel off: only t1 (whose constraint allows it) is offered data_parallel
    got = _sharding(_planner("torchrec_dp", data_parallel=False, constraints=constraints).plan(Model()))
    assert offered["t1"] == ["table_wise", "data_parallel"]
    assert all(offered[f"t{i}"] == ["table_wise"] for i in (0, 2, 3, 4, 5, 6))
    assert all(got[f"t{i}"][0] == "table_wise" for i in (0, 2, 3, 4, 5, 6))
    # data_parallel on: every table left to choose too, not the one constrained to table_wise
    offered.clear()
    _planner("torchrec_dp", constraints=constraints).plan(Model())
    assert offered["t2"] == ["table_wise"]
    assert all(offered[f"t{i}"] == ["table_wise", "data_parallel"] for i in (0, 1, 3, 4, 5, 6))


class _RecordedMayReplicate:
    """A placer's may-replicate callback that asks `planner` (bound once it is built) and records
    each piece's answer in `seen` (piece name -> bool)."""

    def __init__(self) -> None:
        self.planner = None
        self.seen: dict[str, bool] = {}

    def __call__(self, piece) -> bool:
        self.seen[piece.name] = self.planner.may_replicate(piece)
        return self.seen[piece.name]
