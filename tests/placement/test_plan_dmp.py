"""LearnedShardingPlanner under DistributedModelParallel: 2 CPU ranks (gloo on loopback)."""

import json
import socket

import pytest
import torch
import torch.multiprocessing as mp

from recsearch.placement.types import Placement

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]


class FixedPlacer:
    """Puts table i on rank ranks[i]."""

    def __init__(self, ranks):
        self.ranks = tuple(ranks)

    def place(self, tables, topology):
        return Placement(self.ranks, topology.world_size)


def _worker(rank: int, port: int, ranks: list[int], out: str) -> None:
    import torch.distributed as dist
    from torchrec.datasets.utils import Batch
    from torchrec.distributed import DistributedModelParallel
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from recsearch.model.dlrm import EBC_MODULE_PATH, build_model
    from recsearch.placement.plan import LearnedShardingPlanner, plan_ranks
    from recsearch.types import ArchSpec, Topology

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        arch = ArchSpec(embedding_dim=8, bottom_mlp=(16, 8), top_mlp=(8, 1))
        rows = [10 + i for i in range(26)]
        model = build_model(arch, rows, device="meta")
        planner = LearnedShardingPlanner(FixedPlacer(ranks), Topology(2, 1 << 30, "cpu"))
        plan = planner.collective_plan(model, None, dist.GroupMember.WORLD)
        dmp = DistributedModelParallel(module=model, device=torch.device("cpu"), plan=plan)
        batch_size = 4
        lengths = torch.ones(26 * batch_size, dtype=torch.int32)
        values = torch.cat([torch.randint(0, rows[t], (batch_size,)) for t in range(26)])
        batch = Batch(
            dense_features=torch.rand(batch_size, 13),
            sparse_features=KeyedJaggedTensor.from_lengths_sync(
                keys=[f"cat_{i}" for i in range(26)], values=values, lengths=lengths
            ),
            labels=torch.randint(0, 2, (batch_size,)),
        )
        loss, _ = dmp(batch)
        loss.backward()
        owned = []
        for key, value in dmp.state_dict().items():
            if "embedding_bags" in key and hasattr(value, "local_shards") and value.local_shards():
                owned.append(key.split("embedding_bags.")[1].split(".")[0])
        result = {
            "rank": rank,
            "loss": float(loss.detach()),
            "owned": sorted(owned),
            "plan": {t: v for t, v in plan_ranks(plan)[EBC_MODULE_PATH].items()},
        }
        gathered = [None, None]
        dist.all_gather_object(gathered, result)
        if rank == 0:
            with open(out, "w") as f:
                json.dump(gathered, f)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dmp_with_learned_planner_puts_tables_on_the_placers_ranks(tmp_path):
    ranks = [0 if i % 3 else 1 for i in range(26)]  # uneven on purpose
    out = str(tmp_path / "result.json")
    mp.spawn(_worker, args=(_free_port(), ranks, out), nprocs=2, join=True)
    with open(out) as f:
        results = json.load(f)
    for r in results:
        assert r["loss"] == pytest.approx(r["loss"]) and r["loss"] > 0  # finite, positive BCE
        assert r["owned"] == sorted(f"t_cat_{i}" for i in range(26) if ranks[i] == r["rank"])
        for i in range(26):
            assert r["plan"][f"t_cat_{i}"] == ["table_wise", [ranks[i]]]
