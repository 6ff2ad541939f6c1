"""The trainer's `plan:` setting ("torchrec", a placer name, a placement file) always goes
through LearnedShardingPlanner: the pipeline engine's sharding_plan on 2 gloo ranks gives the
placer's placement, fused kernels, and a placement file's ranks; names and files are told
apart, and a file cannot place a table the planner had to split."""

import json

import pytest
import torch

from recsearch.placement.types import PlacementError
from recsearch.train import placement_file
from recsearch.types import TableSpec, Topology
from tests.placement.two_ranks import gather_to_file, gloo_group, run_two_ranks

ROWS = [40 * (i + 1) for i in range(26)]


def _worker(rank: int, port: int, setting: str, data_dir: str, out: str) -> None:
    from recsearch.model.dlrm import build_model
    from recsearch.placement.plan import plan_ranks
    from recsearch.train.config import TrainConfig
    from recsearch.train.pipeline_engine import sharding_plan
    from recsearch.types import ArchSpec, HParams

    with gloo_group(rank, port):
        model = build_model(ArchSpec(embedding_dim=8, bottom_mlp=(16, 8), top_mlp=(8, 1)), ROWS, device="meta")
        cfg = TrainConfig(data_dir=data_dir, plan=setting, hparams=HParams(batch_size=16))
        plan = sharding_plan(cfg, model, torch.device("cpu"), world_size=2)
        kernels = sorted({ps.compute_kernel for mp in plan.plan.values() for ps in mp.values()})
        gather_to_file({"plan": plan_ranks(plan), "kernels": kernels}, out)


@pytest.mark.multiproc
@pytest.mark.slow
def test_placer_names_and_files_reach_the_plan_on_two_ranks(tmp_path):
    from recsearch.placement.registry import make_placer

    tables = [TableSpec(f"t_cat_{i}", r, 8, feature_names=(f"cat_{i}",)) for i, r in enumerate(ROWS)]
    expected = make_placer("size_greedy").place(tables, Topology(2, 1 << 30)).to_dict(tables)
    got = run_two_ranks(_worker, tmp_path / "greedy.json", "size_greedy", str(tmp_path))
    for r in got:
        assert r["kernels"] == ["fused"]
        (module_plan,) = r["plan"].values()
        assert {t: [st, ranks] for t, (st, ranks) in module_plan.items()} == {
            t: ["table_wise", [expected[t]]] for t in expected
        }
    placement = {f"t_cat_{i}": i % 2 for i in range(26)}
    (tmp_path / "placement.json").write_text(json.dumps({"placement": placement}))
    got = run_two_ranks(_worker, tmp_path / "file.json", str(tmp_path / "placement.json"), str(tmp_path))
    for r in got:
        (module_plan,) = r["plan"].values()
        assert {t: ranks[0] for t, (_, ranks) in module_plan.items()} == placement


def test_plan_setting_names_a_placer_or_a_file(tmp_path):
    assert placement_file.plan_placer("torchrec") == "torchrec"
    assert placement_file.plan_placer("learned") == "learned"
    assert placement_file.plan_placer("lookup_greedy") == "lookup_greedy"
    with pytest.raises(ValueError, match="torchrec_dp.*may replicate tables"):
        placement_file.plan_placer("torchrec_dp")
    placer = placement_file.plan_placer(str(tmp_path / "p.json"))
    assert isinstance(placer, placement_file.FilePlacer)
    with pytest.raises(FileNotFoundError, match="placement file .*nope.json not found"):
        placement_file.check_plan_setting(str(tmp_path / "nope.json"), ["a"], 1)
    placement_file.check_plan_setting("learned", ["a"], 1)  # names need no file


def test_a_file_cannot_place_a_table_the_planner_split(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"big": 0, "small": 1}))
    placer = placement_file.FilePlacer(path)
    whole = [TableSpec("big", 10, 8), TableSpec("small", 10, 8)]
    assert placer.place(whole, Topology(2, 1 << 20)).ranks == (0, 1)
    pieces = [TableSpec("big/col0", 10, 4), TableSpec("big/col1", 10, 4), TableSpec("small", 10, 8)]
    with pytest.raises(PlacementError, match="\\['big'\\] do not fit one device and are split"):
        placer.place(pieces, Topology(2, 1 << 20))
