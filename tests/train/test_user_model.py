"""A model of the user's own (recsearch.model.factory): the two-tower example in examples/ trains
on both engines to the same losses and on 2 ranks to the same model as on one, the built-in DLRM
comes through the same contract, a factory that breaks the contract is refused with what is wrong,
and its latency is timed beside the same model at the reference's model_args."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from recsearch import config
from recsearch.model.factory import ModelFactoryError, ModelInputs, build_user_model, load_factory
from recsearch.train import trainer
from recsearch.train.config import LatencyReference, TrainConfig
from recsearch.types import SettingsError
from tests.train.engines import SMALL_ARCH, small_config

TWO_TOWER = ["model=examples.two_tower:two_tower", "model_args={tower: [16, 8], split: 13}"]
# the same two-tower model as the latency reference (its arch: the tables' width, a valid DLRM arch)
TWO_TOWER_REFERENCE = [
    "latency_reference.arch.embedding_dim=8", "latency_reference.arch.bottom_mlp=[16,8]",
    "latency_reference.arch.top_mlp=[16,1]", "latency_reference.model=examples.two_tower:two_tower",
    "latency_reference.model_args={tower: [16, 8], split: 13}",
]
LOSS_RTOL = 1e-5
# 2 ranks vs 1 on the same full-batch steps: equal to 6 decimals measured; 20x below the closest
# broken variant (another seed: val AUC -0.021, see the test)
TWO_RANK_METRIC_TOLERANCE = 1e-3
LEARNS = ["hparams.embedding_optimizer=rowwise_adagrad", "hparams.embedding_lr=0.1",
          "hparams.dense_optimizer=adagrad", "hparams.dense_lr=0.05"]  # as tests/train/test_engines.py: the engines differ only in float op order


def _losses(result) -> list[float]:
    return [h["loss"] for h in result.history]


def _two_tower_dense_parameters(tower: list[int], split: int, dim: int = 8) -> int:
    """What examples.two_tower has beside its tables: a user tower (the first `split` tables and
    the 13 dense features in), an item tower (the other tables in), each an MLP of `tower`
    widths, and a bias."""
    def mlp(width_in: int) -> int:
        return sum(a * b + b for a, b in zip([width_in, *tower], tower))

    return mlp(split * dim + 13) + mlp((26 - split) * dim) + 1


def test_a_two_tower_model_of_ones_own_trains_on_both_engines_to_the_same_losses(tmp_path, learnable_data):
    common = ["max_steps=40", "epochs=2", "eval_rows=1024", *TWO_TOWER, *LEARNS]
    single = trainer.train(small_config(learnable_data, tmp_path / "single", "engine=single", *common))
    pipeline = trainer.train(small_config(learnable_data, tmp_path / "pipeline", "engine=pipeline", *common))
    assert single.status == pipeline.status == "completed" and single.engine["engine"] == "single"
    assert _losses(single) == pytest.approx(_losses(pipeline), rel=LOSS_RTOL)
    assert _losses(single)[-1] < _losses(single)[0] - 0.05  # it learns
    assert single.auc("val") > 0.7 and single.auc("val") == pytest.approx(pipeline.auc("val"), abs=1e-4)
    # its towers are what it has beside the tables: 2 MLPs of 16 and 8 units and a bias
    assert single.dense_parameters == _two_tower_dense_parameters([16, 8], 13) == 3841
    assert sorted(single.plan) == sorted(f"t_cat_{i}" for i in range(26))


def test_the_built_in_dlrm_through_the_factory_contract_trains_like_the_default_path(tmp_path, learnable_data):
    arch = ["arch.embedding_dim=8", "model=recsearch.model.dlrm:dlrm", "model_args={bottom_mlp: [16, 8], top_mlp: [16, 1]}"]
    common = ["max_steps=30", "eval_rows=1024", "engine=single"]
    via_factory = trainer.train(small_config(learnable_data, tmp_path / "factory", *common, *arch))
    default = trainer.train(small_config(learnable_data, tmp_path / "default", *common))
    assert _losses(via_factory) == pytest.approx(_losses(default), rel=LOSS_RTOL)
    assert via_factory.dense_parameters == default.dense_parameters


def test_a_factory_that_breaks_the_contract_is_refused_with_what_is_wrong():
    tables = [config for config in _tables()]
    inputs = ModelInputs(tables, 13)
    with pytest.raises(ModelFactoryError, match="is not 'package.module:function'"):
        load_factory("examples.two_tower")
    with pytest.raises(ModelFactoryError, match="cannot import 'examples.nope'"):
        load_factory("examples.nope:model")
    with pytest.raises(ModelFactoryError, match="examples.two_tower has no function 'missing'"):
        load_factory("examples.two_tower:missing")
    with pytest.raises(ModelFactoryError, match="returned dict, not a torch.nn.Module"):
        build_user_model("tests.train.test_user_model:_returns_a_dict", inputs)
    with pytest.raises(ModelFactoryError, match="exactly one torchrec EmbeddingBagCollection .* it holds 0"):
        build_user_model("tests.train.test_user_model:_no_tables", inputs)
    with pytest.raises(ModelFactoryError, match="must be built from ModelInputs.tables"):
        build_user_model("tests.train.test_user_model:_other_tables", inputs)
    with pytest.raises(ValueError, match=r"two_tower: unknown model_args \['depth'\]"):
        build_user_model("examples.two_tower:two_tower", ModelInputs(tables, 13, {"depth": 2}))


def test_settings_that_only_the_built_in_dlrms_have_are_refused_for_a_model_of_ones_own(learnable_data, tmp_path):
    with pytest.raises(config.ConfigError) as err:
        config.build(TrainConfig, config.apply_overrides({}, [
            f"data_dir={learnable_data}", *TWO_TOWER, "compile_dense=true", "dense_precision=bf16"]))
    text = str(err.value)
    assert "compile_dense compiles the built-in DLRMs' dense parts" in text and "leave dense_precision fp32" in text
    with pytest.raises(SettingsError, match="model_args are the decisions of a model factory"):
        TrainConfig(data_dir=str(learnable_data), model_args={"tower": [8]})
    with pytest.raises(SettingsError, match="model must be 'package.module:function'"):
        TrainConfig(data_dir=str(learnable_data), model="examples.two_tower")


def test_a_model_of_ones_own_is_timed_beside_itself_at_the_reference_model_args(tmp_path, learnable_data):
    """A latency reference with `model` is the user's model at the reference's model_args, built as
    the run builds its own (fused tables, this run's table optimizer): a run of the very same
    model times two equal models (ratio near 1), a run of a much wider tower one far slower model."""
    timing = ["max_steps=2", "latency_batch_sizes=[64]", "latency_iters=20", "latency_max_seconds=3", "engine=single"]
    same = trainer.train(small_config(learnable_data, tmp_path / "same", *timing, *TWO_TOWER, *TWO_TOWER_REFERENCE))
    wide = trainer.train(small_config(learnable_data, tmp_path / "wide", *timing, *TWO_TOWER_REFERENCE,
                                      "model=examples.two_tower:two_tower", "model_args={tower: [1024, 1024, 64], split: 13}"))
    base_parameters = _two_tower_dense_parameters([16, 8], 13)
    # the reference timed is the two-tower model at {tower: [16, 8]}, not the DLRM of latency_reference.arch
    for run in (same, wide):
        assert run.status == "completed" and run.latency_setup["reference_dense_parameters"] == base_parameters
        assert run.latency_setup["notes"] == []
    assert same.dense_parameters == base_parameters
    assert wide.dense_parameters == _two_tower_dense_parameters([1024, 1024, 64], 13)
    same_ratio, wide_ratio = same.latency(64).vs_reference, wide.latency(64).vs_reference
    # measured here: 0.97-1.03 and about 14 (one intra-op thread, recsearch.train.latency); loose
    # bounds, as the CPU is shared with other jobs (the ratio is paired round by round)
    assert 0.67 < same_ratio < 1.5 and wide_ratio > 2.0, (same_ratio, wide_ratio)
    # the built-in reference is still the DLRM of latency_reference.arch (it has no model)
    dlrm_reference = [r for r in TWO_TOWER_REFERENCE if ".model" not in r]
    against_dlrm = trainer.train(small_config(learnable_data, tmp_path / "dlrm", *timing, *TWO_TOWER, *dlrm_reference))
    dlrm = trainer.train(small_config(learnable_data, tmp_path / "dlrm_self", "max_steps=2", "engine=single"))
    assert against_dlrm.latency_setup["reference_dense_parameters"] == dlrm.dense_parameters != base_parameters
    # a sharded model's forward is collective: no reference beside it, and result.json says so
    sharded = trainer.train(small_config(learnable_data, tmp_path / "sharded", *timing, "engine=pipeline",
                                         *TWO_TOWER, *TWO_TOWER_REFERENCE))
    assert sharded.latency(64).vs_reference is None and sharded.latency_setup["reference_dense_parameters"] is None
    assert sharded.latency_setup["notes"] == [
        "latency_reference not timed: the pipeline engine's forward is collective (sharded tables); "
        "a reference is timed beside a single-engine run"]


def test_a_latency_reference_of_ones_own_model_is_checked_and_shown_like_the_other_keys(tmp_path, learnable_data, capsys):
    from recsearch import cli

    args = [f"data_dir={learnable_data}", *SMALL_ARCH, *TWO_TOWER, *TWO_TOWER_REFERENCE]
    assert cli.main(["config", "show", "train", *args]) == 0
    text = capsys.readouterr().out
    printed = yaml.safe_load(text)
    assert printed["latency_reference"]["model"] == "examples.two_tower:two_tower"
    assert printed["latency_reference"]["model_args"] == {"tower": [16, 8], "split": 13}
    lines = text.splitlines()
    at = lines.index("latency_reference:")
    shown_model = lines.index("  model: examples.two_tower:two_tower", at)  # one key a line, under the section
    assert lines[shown_model + 1 : shown_model + 4] == ["  model_args:", "    tower: [16, 8]", "    split: 13"]
    shown = tmp_path / "shown.yaml"
    shown.write_text(text)
    assert config.load(TrainConfig, shown) == config.build(TrainConfig, config.apply_overrides({}, args))
    with pytest.raises(config.ConfigError) as err:
        config.build(TrainConfig, config.apply_overrides({}, [
            f"data_dir={learnable_data}", "latency_reference.model_args={tower: [8]}",
            "latency_reference.model=examples.two_tower", "latency_reference.dense_precision=bf16"]))
    assert sorted(str(err.value).splitlines()[1:]) == sorted([
        "  <config>: latency_reference.model must be 'package.module:function' (a TorchRec model factory) "
        "or null, got 'examples.two_tower'",
        "  <config>: latency_reference.dense_precision autocasts the built-in DLRMs; a model of your own (model) "
        "casts itself: leave dense_precision fp32",
    ])
    with pytest.raises(SettingsError, match="model_args are the decisions of a model factory"):
        LatencyReference(model_args={"tower": [8]})


@pytest.mark.slow
@pytest.mark.multiproc
def test_a_model_of_ones_own_trains_on_two_ranks_to_the_model_one_rank_trains(tmp_path, learnable_data):
    """examples.two_tower on 2 gloo ranks (DistributedModelParallel + TrainPipelineSparseDist, its
    tables where a placement file puts them) against 1 rank at the same global batch. With a train
    split of one global batch both runs take the same full-batch steps (the ranks' halves swap
    between epochs, which a mean over the batch does not see), so they train the same model:
    measured, val and test AUC and log loss equal to 6 decimals. What a broken 2-rank run would
    give instead, measured on this data (val AUC 0.8651 on both): each rank's gradients summed,
    not averaged (twice the learning rates) 0.48; one rank's half alone 0.80; another seed 0.84."""
    from tests.train.test_multi_rank import _config, _run_one_rank, _run_two_ranks

    rows, epochs = 2048, 30  # 30 steps of all 2048 rows: 1 x 2048 or 2 x 1024
    user_model = {"model": "examples.two_tower:two_tower", "model_args": {"tower": [16, 8], "split": 13}}
    placement = {f"t_cat_{i}": int(i >= 20) for i in range(26)}  # 20 tables on rank 0, 6 on rank 1
    (tmp_path / "placement.json").write_text(json.dumps(placement))
    settings = [f"train_rows={rows}", f"epochs={epochs}", "log_every_steps=5"]
    two = _run_two_ranks(_config(tmp_path, learnable_data, "two", rows // 2, **user_model,
                                 plan=str(tmp_path / "placement.json")), *settings)
    one = _run_one_rank(_config(tmp_path, learnable_data, "one", rows, **user_model), *settings)
    assert two["status"] == one["status"] == "completed" and (two["world_size"], one["world_size"]) == (2, 1)
    assert two["steps"] == one["steps"] == epochs and two["samples"] == one["samples"] == rows * epochs
    assert two["engine"]["engine"] == "pipeline" and two["dense_parameters"] == _two_tower_dense_parameters([16, 8], 13)
    # the tables lie where the placement file put them, each whole on its rank
    assert {t: p["ranks"] for t, p in two["plan"].items()} == {t: [r] for t, r in placement.items()}
    assert {p["sharding_type"] for p in two["plan"].values()} == {"table_wise"}
    table_bytes = 20 * 8 * 4  # 20 rows of 8 fp32 values
    assert two["embedding_bytes_per_rank"] == [20 * table_bytes, 6 * table_bytes]
    for split in ("val", "test"):
        mine, theirs = two["metrics"][split], one["metrics"][split]
        assert mine["rows"] == theirs["rows"] == 2048
        assert mine["auc"] == pytest.approx(theirs["auc"], abs=TWO_RANK_METRIC_TOLERANCE), split
        assert mine["log_loss"] == pytest.approx(theirs["log_loss"], abs=TWO_RANK_METRIC_TOLERANCE), split
    assert one["metrics"]["val"]["auc"] > 0.8  # it learned: not two untrained models compared
    assert (tmp_path / "two" / "out" / "result.json").is_file()


def _tables():
    from recsearch.model.dlrm import embedding_configs

    return embedding_configs([20] * 26, 8)


def _returns_a_dict(inputs: ModelInputs) -> dict:
    return {}


def _no_tables(inputs: ModelInputs) -> torch.nn.Module:
    return torch.nn.Linear(13, 1)


def _other_tables(inputs: ModelInputs) -> torch.nn.Module:
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    from recsearch.model.dlrm import embedding_configs

    return EmbeddingBagCollection(tables=embedding_configs([7] * 26, 8), device=inputs.device)


@pytest.mark.slow
def test_a_search_over_a_model_of_ones_own_searches_its_declared_decisions(tmp_path, learnable_data):
    import math

    import yaml

    from recsearch.search import loop
    from recsearch.search.store import JournalStore
    from recsearch.train.result import TrainResult

    raw = {
        "data_dir": str(learnable_data),
        "base": {
            "arch": {"embedding_dim": 8, "bottom_mlp": [16, 8], "top_mlp": [16, 1]},  # width of the tables
            "model": "examples.two_tower:two_tower", "model_args": {"tower": [16, 8], "split": 13},
            "hparams": {"batch_size": 256, "embedding_optimizer": "rowwise_adagrad", "embedding_lr": 0.1,
                        "dense_optimizer": "adagrad", "dense_lr": 0.05},
            "latency_iters": 2, "log_every_steps": 8, "tensorboard": False,
        },
        "space": {  # the built-in architecture's knobs fixed; the two-tower's own decisions searched
            "embedding_dim": [8], "bottom_depth": [1], "bottom_width": [16], "top_depth": [1], "top_width": [16],
            "interaction": ["dot"], "batch_size": [256],
            "model_args": {"tower": [[16, 8], [32, 16], [8]], "split": [6, 13, 20]},
        },
        "fidelity": {"train_rows": [2048]}, "controller": "random", "trials": 4,
        "runner": {"kind": "inprocess"}, "objective": {"serving_batch": 64}, "heartbeat_s": 0.2,
    }
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(raw))
    res = loop.load_search_config(config)
    assert {d.name for d in res.space.decisions[-2:]} == {"model_args.tower", "model_args.split"}
    assert res.space.cardinality == 9 * math.prod(len(d.options) for d in res.space.decisions[:-2])
    assert loop.main(["--config", str(config), "--out", str(tmp_path / "s")]) == 0
    trials = [r for r in JournalStore(tmp_path / "s").trials() if not r.notes.get("reference")]
    assert len(trials) == 4 and all(r.result is not None and r.result.auc > 0.5 for r in trials)
    seen = set()
    for r in trials:
        trial_cfg = yaml.safe_load((tmp_path / "s" / "trials" / str(r.trial_id) / "trial.yaml").read_text())
        # each trial trained the decisions it was given: the journal's spec, its trial.yaml, its model
        assert trial_cfg["model"] == "examples.two_tower:two_tower"
        assert trial_cfg["model_args"] == r.spec.model_args and set(r.spec.model_args) == {"tower", "split"}
        seen.add((tuple(r.spec.model_args["tower"]), r.spec.model_args["split"]))
    assert len(seen) == 4  # the random controller never proposes one configuration twice
    # latency (the objective's metric): every trial, the reference config's too, timed beside the
    # two-tower model at the base config's model_args, not beside a DLRM
    base_parameters = _two_tower_dense_parameters([16, 8], 13)
    for r in JournalStore(tmp_path / "s").trials():
        trial_dir = tmp_path / "s" / "trials" / str(r.trial_id)
        reference = yaml.safe_load((trial_dir / "trial.yaml").read_text())["latency_reference"]
        assert reference["model"] == "examples.two_tower:two_tower"
        assert reference["model_args"] == {"tower": [16, 8], "split": 13}
        result = TrainResult.read(trial_dir / "result.json")
        assert result.latency_setup["reference_dense_parameters"] == base_parameters
        assert result.latency(64).vs_reference is not None
        if r.notes.get("reference"):  # the reference config is the very model it is timed beside
            assert result.dense_parameters == base_parameters and 0.5 < result.latency(64).vs_reference < 2
        else:
            tower, split = r.spec.model_args["tower"], r.spec.model_args["split"]
            assert result.dense_parameters == _two_tower_dense_parameters(tower, split)
    # a space with a user model's decisions but no model is refused before anything is written
    raw["base"].pop("model")
    raw["base"].pop("model_args")
    config.write_text(yaml.safe_dump(raw))
    assert loop.main(["--config", str(config), "--out", str(tmp_path / "never")]) == 2
    assert not (tmp_path / "never").exists()
