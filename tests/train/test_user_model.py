"""A model of the user's own (recsearch.model.factory): the two-tower example in examples/ trains
on both engines to the same losses, the built-in DLRM comes through the same contract, and a
factory that breaks the contract is refused with what is wrong."""

from __future__ import annotations

import pytest
import torch

from recsearch import config
from recsearch.model.factory import ModelFactoryError, ModelInputs, build_user_model, load_factory
from recsearch.train import trainer
from recsearch.train.config import TrainConfig
from recsearch.types import SettingsError
from tests.train.engines import small_config

TWO_TOWER = ["model=examples.two_tower:two_tower", "model_args={tower: [16, 8], split: 13}"]
LOSS_RTOL = 1e-5
LEARNS = ["hparams.embedding_optimizer=rowwise_adagrad", "hparams.embedding_lr=0.1",
          "hparams.dense_optimizer=adagrad", "hparams.dense_lr=0.05"]  # as tests/train/test_engines.py: the engines differ only in float op order


def _losses(result) -> list[float]:
    return [h["loss"] for h in result.history]


def test_a_two_tower_model_of_ones_own_trains_on_both_engines_to_the_same_losses(tmp_path, learnable_data):
    common = ["max_steps=40", "epochs=2", "eval_rows=1024", *TWO_TOWER, *LEARNS]
    single = trainer.train(small_config(learnable_data, tmp_path / "single", "engine=single", *common))
    pipeline = trainer.train(small_config(learnable_data, tmp_path / "pipeline", "engine=pipeline", *common))
    assert single.status == pipeline.status == "completed" and single.engine["engine"] == "single"
    assert _losses(single) == pytest.approx(_losses(pipeline), rel=LOSS_RTOL)
    assert _losses(single)[-1] < _losses(single)[0] - 0.05  # it learns
    assert single.auc("val") > 0.7 and single.auc("val") == pytest.approx(pipeline.auc("val"), abs=1e-4)
    # its towers are what it has beside the tables: 2 MLPs of 16 and 8 units and a bias
    user_in, item_in = 13 * 8 + 13, 13 * 8
    assert single.dense_parameters == (user_in * 16 + 16 + 16 * 8 + 8) + (item_in * 16 + 16 + 16 * 8 + 8) + 1
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
    # a space with a user model's decisions but no model is refused before anything is written
    raw["base"].pop("model")
    raw["base"].pop("model_args")
    config.write_text(yaml.safe_dump(raw))
    assert loop.main(["--config", str(config), "--out", str(tmp_path / "never")]) == 2
    assert not (tmp_path / "never").exists()
