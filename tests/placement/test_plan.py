import pytest
import torch
from torch import nn
from torchrec.distributed.planner import Topology as TorchRecTopology
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from recsearch.placement.plan import (
    DLRM_EBC_PATH,
    LearnedShardingPlanner,
    find_ebcs,
    plan_ranks,
    tables_of,
    to_sharding_plan,
)
from recsearch.placement.registry import make_placer
from recsearch.placement.types import Placement, PlacementError
from recsearch.types import TableSpec, Topology


def _ebc(n=4):
    return EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(
                name=f"t{i}",
                embedding_dim=4 * (i + 1),
                num_embeddings=100 * (i + 1),
                feature_names=[f"f{i}"],
            )
            for i in range(n)
        ],
        device=torch.device("meta"),
    )


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.sparse = nn.Module()
        self.sparse.ebc = _ebc()
        self.dense = nn.Linear(3, 1)


def test_to_sharding_plan_is_table_wise_on_the_chosen_ranks():
    plan = to_sharding_plan(_ebc(), Placement((2, 0, 1, 2), 3), device_type="cpu")
    got = plan_ranks(plan)[DLRM_EBC_PATH]
    assert got == {
        "t0": ("table_wise", [2]),
        "t1": ("table_wise", [0]),
        "t2": ("table_wise", [1]),
        "t3": ("table_wise", [2]),
    }
    ps = plan.plan[DLRM_EBC_PATH]["t0"]
    assert ps.sharding_spec.shards[0].placement.rank() == 2
    assert ps.sharding_spec.shards[0].shard_sizes == [100, 4]
    by_name = to_sharding_plan(_ebc(), {"t0": 1, "t1": 0, "t2": 0, "t3": 1}, module_path="ebc")
    assert plan_ranks(by_name)["ebc"]["t3"] == ("table_wise", [1])
    with pytest.raises(PlacementError, match="no rank for tables"):
        to_sharding_plan(_ebc(), {"t0": 0}, world_size=2)


def test_tables_read_from_the_module_with_stats():
    ebcs = find_ebcs(Model())
    assert list(ebcs) == ["sparse.ebc"]
    stats = [TableSpec("t1", 200, 8, pooling_factor=7.5, reuse_hist=(1.0,) + (0.0,) * 16)]
    tables = tables_of(ebcs, stats)
    assert [t.name for t in tables] == ["t0", "t1", "t2", "t3"]
    assert tables[1].pooling_factor == 7.5 and tables[1].reuse_hist[0] == 1.0
    assert tables[0].pooling_factor == 1.0 and tables[2].num_rows == 300 and tables[2].dim == 12
    assert tables[0].feature_names == ("f0",)


def test_learned_planner_plan_uses_the_placer_and_checks_memory():
    model = Model()
    planner = LearnedShardingPlanner(make_placer("dim_greedy"), Topology(2, 1 << 20, "cpu"))
    plan = planner.plan(model, None)
    ranks = plan_ranks(plan)["sparse.ebc"]
    expected = planner.last_placement.to_dict(planner.last_tables)
    assert {t: r[1][0] for t, r in ranks.items()} == expected
    assert all(st == "table_wise" for st, _ in ranks.values())
    assert len(set(expected.values())) == 2

    class Overcommit:
        def place(self, tables, topology):
            return Placement((0,) * len(tables), topology.world_size)

    tight = LearnedShardingPlanner(
        Overcommit(), Topology(2, 30_000, "cpu")
    )  # each table fits, all 52,000 B do not
    with pytest.raises(PlacementError, match="memory cap exceeded"):
        tight.plan(model, None)


def test_learned_planner_accepts_a_torchrec_topology():
    topo = TorchRecTopology(world_size=2, compute_device="cpu", hbm_cap=0, ddr_cap=1 << 20)
    planner = LearnedShardingPlanner(make_placer("round_robin"), topo)
    plan = planner.plan(Model())
    assert {r[1][0] for r in plan_ranks(plan)["sparse.ebc"].values()} == {0, 1}


def test_two_planners_on_the_same_inputs_give_the_same_plan():
    """Ranks may call plan() each on its own (TorchRec's plan() is deterministic): the learned
    stack's refinement is bounded by a count of evaluations, not the clock, so fresh planners
    agree even where the budget, not convergence, ends the search."""
    from recsearch.placement.tables import PoolConfig, generate_pool

    pool = generate_pool(PoolConfig(num_tables=200, seed=3)).tables
    ebc = EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(
                name=f"t{i}", embedding_dim=t.dim, num_embeddings=t.num_rows, feature_names=[f"f{i}"]
            )
            for i, t in enumerate(pool)
        ],
        device=torch.device("meta"),
    )
    plans, reports = [], []
    for _ in range(2):
        planner = LearnedShardingPlanner(topology=Topology(32, 1 << 40, "cuda"), debug=False)
        # a budget this search reaches (the default's 100,000 would let it converge)
        planner.placer_for("rowwise_adagrad").max_evaluations = 20_000
        plans.append(plan_ranks(planner.plan(ebc)))
        reports.append(planner.placer_for(planner.last_optimizer).last_report)
    assert plans[0] == plans[1]
    assert reports[0].evaluations == reports[1].evaluations and reports[0].moves == reports[1].moves
    assert reports[0].stopped == "budget"
