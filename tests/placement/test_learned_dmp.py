"""A DLRM trained for a few steps under DistributedModelParallel with a plan from the learned
placer, switched in with the one-line planner swap: 2 CPU ranks (gloo on loopback)."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.placement.two_ranks import (
    free_port,
    gather_to_file,
    gloo_group,
    one_lookup_batch,
    owned_embeddings,
    run_two_ranks,
)

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]

ROWS = [40 * (i + 1) for i in range(26)]  # uneven tables, so the placement matters
STEPS = 6


def _worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torchrec.distributed import DistributedModelParallel
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.keyed import KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    from recsearch.model.dlrm import EBC_MODULE_PATH, build_model
    from recsearch.placement.registry import make_placer
    from recsearch.placement.plan import LearnedShardingPlanner, plan_ranks
    from recsearch.types import ArchSpec, Topology

    with gloo_group(rank, port):
        torch.manual_seed(0)
        arch = ArchSpec(embedding_dim=8, bottom_mlp=(16, 8), top_mlp=(8, 1))
        model = build_model(arch, ROWS, device="meta")
        apply_optimizer_in_backward(torch.optim.SGD, model.model.sparse_arch.parameters(), {"lr": 0.5})
        # the one-line change: EmbeddingShardingPlanner(topology=...) -> LearnedShardingPlanner
        planner = LearnedShardingPlanner(make_placer("learned"), Topology(2, 1 << 30, "cpu"))
        plan = planner.collective_plan(model, None, dist.GroupMember.WORLD)
        dmp = DistributedModelParallel(module=model, device=torch.device("cpu"), plan=plan)
        dense = KeyedOptimizerWrapper(
            dict(in_backward_optimizer_filter(dmp.named_parameters())),
            lambda params: torch.optim.SGD(params, lr=0.1),
        )
        batch = one_lookup_batch(ROWS, batch_size=16, generator=torch.Generator().manual_seed(rank))
        before = owned_embeddings(dmp)
        losses = []
        for _ in range(STEPS):
            dense.zero_grad()
            loss, _ = dmp(batch)
            loss.backward()  # the embedding update is fused into the backward
            dense.step()
            losses.append(float(loss.detach()))
        after = owned_embeddings(dmp)
        result = {
            "rank": rank,
            "losses": losses,
            "owned": sorted(before),
            "changed": sorted(t for t in before if not torch.equal(before[t], after[t])),
            "plan": {t: v for t, v in plan_ranks(plan)[EBC_MODULE_PATH].items()},
            "placement": None
            if planner.last_placement is None
            else planner.last_placement.to_dict(planner.last_tables),
        }
        gather_to_file(result, out)


def test_dlrm_trains_under_dmp_with_the_learned_placers_plan(tmp_path):
    results = run_two_ranks(_worker, tmp_path / "result.json")
    placement = results[0]["placement"]  # planned on rank 0, broadcast
    assert results[1]["placement"] is None
    assert sorted(placement) == sorted(f"t_cat_{i}" for i in range(26))
    assert set(placement.values()) == {0, 1}  # both ranks hold tables
    for r in results:
        assert r["plan"] == {t: ["table_wise", [placement[t]]] for t in placement}
        assert r["owned"] == sorted(t for t in placement if placement[t] == r["rank"])
        # every table this rank owns was looked up in the batch and updated by the fused optimizer
        assert r["changed"] == r["owned"]
        assert all(math.isfinite(x) and 0 < x < 5 for x in r["losses"])  # finite BCE
        assert r["losses"][-1] < r["losses"][0]  # six steps on one batch lower its loss


DOC = Path(__file__).parents[2] / "docs" / "PLACEMENT.md"
EXAMPLE_TAG = "# example: learned plan under DMP"


def _doc_example() -> str:
    """The python block of docs/PLACEMENT.md that carries EXAMPLE_TAG."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    found = [b for b in blocks if EXAMPLE_TAG in b]
    assert len(found) == 1, f"{DOC} must hold exactly one python block tagged {EXAMPLE_TAG!r}"
    return found[0]


def test_the_documented_one_line_swap_runs_on_two_ranks(tmp_path):
    """Runs the docs' example as torchrun would (2 processes, env:// rendezvous, gloo)."""
    script = tmp_path / "example.py"
    script.write_text(_doc_example())
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2",
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append(out)
        assert p.returncode == 0, out[-3000:]
    owned, losses = {}, {}
    for rank, out in enumerate(outs):
        m = re.search(rf"rank {rank} holds (\d+) tables: (.*)", out)
        assert m, out[-2000:]
        owned[rank] = m.group(2).split(", ")
        assert len(owned[rank]) == int(m.group(1))
        losses[rank] = [float(x) for x in re.findall(rf"rank {rank} step \d+ loss ([\d.]+)", out)]
    # every table on exactly one rank, both ranks used, the learned placer made the plan
    assert sorted(owned[0] + owned[1]) == sorted(f"t_cat_{i}" for i in range(26))
    assert owned[0] and owned[1]
    assert "placed by learned" in outs[0]
    for rank in (0, 1):
        assert len(losses[rank]) == 5 and losses[rank][-1] < losses[rank][0]
