"""LearnedShardingPlanner under DistributedModelParallel: 2 CPU ranks (gloo on loopback)."""

import math

import pytest
import torch

from recsearch.placement.types import Placement
from tests.placement.two_ranks import (
    gather_to_file,
    gloo_group,
    one_lookup_batch,
    owned_embeddings,
    run_two_ranks,
)

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]


class FixedPlacer:
    """Puts table i on rank ranks[i]."""

    def __init__(self, ranks):
        self.ranks = tuple(ranks)

    def place(self, tables, topology):
        return Placement(self.ranks, topology.world_size)


def _worker(rank: int, port: int, ranks: list[int], out: str) -> None:
    import torch.distributed as dist
    from torchrec.distributed import DistributedModelParallel

    from recsearch.model.dlrm import EBC_MODULE_PATH, build_model
    from recsearch.placement.plan import LearnedShardingPlanner, plan_ranks
    from recsearch.types import ArchSpec, Topology

    with gloo_group(rank, port):
        torch.manual_seed(0)
        arch = ArchSpec(embedding_dim=8, bottom_mlp=(16, 8), top_mlp=(8, 1))
        rows = [10 + i for i in range(26)]
        model = build_model(arch, rows, device="meta")
        planner = LearnedShardingPlanner(FixedPlacer(ranks), Topology(2, 1 << 30, "cpu"))
        plan = planner.collective_plan(model, None, dist.GroupMember.WORLD)
        dmp = DistributedModelParallel(module=model, device=torch.device("cpu"), plan=plan)
        loss, _ = dmp(one_lookup_batch(rows, batch_size=4))
        loss.backward()
        result = {
            "rank": rank,
            "loss": float(loss.detach()),
            "owned": sorted(owned_embeddings(dmp)),
            "plan": {t: v for t, v in plan_ranks(plan)[EBC_MODULE_PATH].items()},
        }
        gather_to_file(result, out)


def test_dmp_with_learned_planner_puts_tables_on_the_placers_ranks(tmp_path):
    ranks = [0 if i % 3 else 1 for i in range(26)]  # uneven on purpose
    results = run_two_ranks(_worker, tmp_path / "result.json", ranks)
    for r in results:
        assert math.isfinite(r["loss"]) and r["loss"] > 0  # finite, positive BCE
        assert r["owned"] == sorted(f"t_cat_{i}" for i in range(26) if ranks[i] == r["rank"])
        for i in range(26):
            assert r["plan"][f"t_cat_{i}"] == ["table_wise", [ranks[i]]]
