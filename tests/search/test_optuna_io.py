"""A real search exported as an Optuna study (journal file) and read back with Optuna: values,
states, Pareto front and importance; an Optuna study's trials as a controller's warm start."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from recsearch import cli
from recsearch.search import controllers as ctl
from recsearch.search import loop, optuna_io
from recsearch.search.pareto import pareto_front
from recsearch.search.results import row_of
from recsearch.search.store import JournalStore
from recsearch.types import TrialState
from tests.train.conftest import write_learnable_dataset


@pytest.fixture(scope="module")
def search_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("optuna_search")
    data = root / "data"
    write_learnable_dataset(data)
    raw = {
        "data_dir": str(data),
        "base": {
            "arch": {"embedding_dim": 4, "bottom_mlp": [8, 4], "top_mlp": [8, 1]},
            "hparams": {"batch_size": 256},
            "latency_iters": 2, "latency_batch_sizes": [1], "log_every_steps": 8, "tensorboard": False,
        },
        "space": {
            "embedding_dim": [4], "bottom_depth": [1], "bottom_width": [8, 16], "top_depth": [1],
            "top_width": [8, 16], "interaction": ["dot"], "batch_size": [256],
            "embedding_lr": {"low": 0.03, "high": 0.1, "num": 2}, "dense_lr": {"low": 0.05, "high": 0.05, "num": 1},
        },
        "fidelity": {"train_rows": [2048, 6144], "eta": 2},
        "controller": "random", "trials": 4, "runner": {"kind": "inprocess"},
        "objective": {"serving_batch": 64}, "heartbeat_s": 0.2,
    }
    config = root / "search.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert loop.main(["--config", str(config), "--out", str(root / "search")]) == 0
    return root / "search"


def _study(path: Path) -> optuna.Study:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    return optuna.load_study(study_name=None, storage=storage)


@pytest.mark.slow
def test_export_writes_every_finished_trial_with_its_objectives(search_dir, tmp_path, capsys):
    out = tmp_path / "study.log"
    assert cli.main(["optuna", "export", str(search_dir), "--out", str(out)]) == 0
    assert f"view it with: optuna-dashboard {out}" in capsys.readouterr().out
    study = _study(out)
    assert study.study_name == "search" and study.metric_names == ["auc", "latency_p50_ms"]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    rows = {r.trial_id: r for r in map(row_of, JournalStore(search_dir).trials())}
    trials = study.get_trials()
    assert sorted(t.user_attrs["recsearch_trial_id"] for t in trials) == sorted(rows)
    states = {s: 0 for s in optuna.trial.TrialState}
    for trial in trials:
        row = rows[trial.user_attrs["recsearch_trial_id"]]
        states[trial.state] += 1
        assert trial.params == row.params
        if row.state is TrialState.COMPLETE:
            assert trial.state is optuna.trial.TrialState.COMPLETE
            assert trial.values == [row.auc, row.latency_p50_ms]
            if row.reward is None:  # the reference: trained for the budget, not rewarded
                assert row.kind == "reference" and "reward" not in trial.user_attrs
            else:
                assert math.isclose(trial.user_attrs["reward"], row.reward)
        elif row.state is TrialState.PRUNED:
            assert trial.state is optuna.trial.TrialState.PRUNED and trial.values is None
    assert states[optuna.trial.TrialState.PRUNED] >= 1  # successive halving stopped someone
    assert states[optuna.trial.TrialState.COMPLETE] >= 2

    # Optuna's own analyses run on it and agree with recsearch's.
    complete = [r for r in rows.values() if r.state is TrialState.COMPLETE]
    front = {p.trial_id for p in pareto_front((r.trial_id, r.auc, r.latency_p50_ms) for r in complete).points}
    assert {t.user_attrs["recsearch_trial_id"] for t in study.best_trials} == front
    importance = optuna.importance.get_param_importances(study, target=lambda t: t.values[0])
    varied = {k for k in importance if len({r.params.get(k) for r in complete}) > 1}
    assert varied <= set(importance) and math.isclose(sum(importance.values()), 1.0)
    axes = optuna.visualization.matplotlib.plot_pareto_front(study)
    assert axes is not None

    # A second export is refused without --force; unknown objectives are refused by name.
    assert cli.main(["optuna", "export", str(search_dir), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert cli.main(["optuna", "export", str(search_dir), "--out", str(tmp_path / "x.log"), "--objectives", "speed"]) == 2
    assert "objectives must be some of" in capsys.readouterr().err
    single = tmp_path / "reward.log"
    assert cli.main(["optuna", "export", str(search_dir), "--out", str(single), "--objectives", "reward"]) == 0
    assert _study(single).best_trial.user_attrs["recsearch_trial_id"] == max(
        (r for r in complete if r.reward is not None), key=lambda r: r.reward).trial_id


@pytest.mark.slow
def test_a_study_warm_starts_a_controller(search_dir, tmp_path):
    out = tmp_path / "study.log"
    optuna_io.export_study(search_dir, out)
    space = loop.load_search_config(search_dir / "search.yaml").space
    warm = optuna_io.warm_start(out, space)
    complete = [t for t in _study(out).get_trials() if t.state is optuna.trial.TrialState.COMPLETE]
    assert len(warm.observations) + len(warm.skipped) == len(complete)
    by_choice = {space.choices_of(spec): reward for spec, reward in warm.observations}
    for trial in complete:
        if not trial.user_attrs["kind"] == "reference":
            assert any(math.isclose(r, trial.user_attrs["reward"]) for r in by_choice.values())
    # The reference (bottom_mlp [8, 4]: width 8, depth 1) is in this space; the lr grid decides.
    # A random controller told of them never proposes those configurations again.
    controller = ctl.RandomController(space, seed=1)
    for spec, reward in warm.observations:
        controller.observe(spec, reward)
    proposed = []
    while (spec := controller.propose()) is not None:
        proposed.append(space.choices_of(spec))
    assert len(proposed) == space.cardinality - len(by_choice)
    assert not set(proposed) & set(by_choice)
    # TPE starts from them.
    bayes = ctl.BayesianController(space, seed=0)
    for spec, reward in warm.observations:
        bayes.observe(spec, reward)
    assert len(bayes.study.trials) == len(warm.observations)


# A DLRM configuration as a foreign study's trial names it (bottom_width set per trial).
FOREIGN_BASE = {"embedding_dim": 16, "bottom_depth": 2, "top_depth": 1, "top_width": 256, "interaction": "dot",
                "batch_size": 2048, "embedding_optimizer": "rowwise_adagrad", "embedding_lr": 0.01,
                "dense_optimizer": "adagrad", "dense_lr": 0.003, "warmup_steps": 0, "decay_steps": 0}


def _foreign_study(path, name: str, direction: str, trials) -> None:
    """A study written by someone else's Optuna code: (params, value) trials, each parameter a
    one-choice categorical, in a journal file at `path`."""
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    study = optuna.create_study(storage=storage, study_name=name, direction=direction)
    dist = optuna.distributions.CategoricalDistribution
    for params, value in trials:
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: dist([v]) for k, v in params.items()}, value=value))


def _small_space():
    from recsearch.search.space import SearchSpace, SpaceConfig
    from recsearch.types import Topology

    return SearchSpace(SpaceConfig(bottom_width=(128, 256), top_width=(256,)), Topology(1, 2**30), 10_000)


def test_a_foreign_single_objective_study_maps_onto_the_space(tmp_path):
    space = _small_space()
    path = tmp_path / "mine.log"
    _foreign_study(path, "mine", "minimize",
                   [({**FOREIGN_BASE, "bottom_width": width}, loss) for width, loss in ((128, 0.45), (256, 0.44), (512, 0.43))])
    warm = optuna_io.warm_start(path, space)
    assert [(s.arch.bottom_mlp, r) for s, r in warm.observations] == [((128, 128, 16), -0.45), ((256, 256, 16), -0.44)]
    assert len(warm.skipped) == 1 and "bottom_width=512 is not an option of this space" in warm.skipped[0]
    with pytest.raises(ValueError, match="no study 'other'"):
        optuna_io.warm_start(path, space, study_name="other")


def test_a_search_config_warm_starts_its_controller_from_a_study(search_dir, tmp_path, capsys):
    study = tmp_path / "study.log"
    optuna_io.export_study(search_dir, study)
    raw = yaml.safe_load((search_dir / "search.yaml").read_text())
    raw.update(train=None, trials=1, warm_start=str(study), output_dir=str(tmp_path / "warm"))
    config = tmp_path / "warm.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert loop.main(["--config", str(config)]) == 0
    warm = optuna_io.warm_start(study, loop.load_search_config(config).space)
    assert f"[search] warm start: the controller observed {len(warm.observations)} trials of {study}" in capsys.readouterr().out
    # the new search's one trial is none of the configurations the study had already tried
    space = loop.load_search_config(config).space
    new = [r for r in JournalStore(tmp_path / "warm").trials() if not r.notes.get("reference")]
    assert len(new) == 1 and space.choices_of(new[0].spec) not in {space.choices_of(s) for s, _ in warm.observations}
    # a file that is not there is refused before anything is written
    raw.update(warm_start=str(tmp_path / "missing.log"), output_dir=str(tmp_path / "never"))
    config.write_text(yaml.safe_dump(raw))
    assert loop.main(["--config", str(config)]) == 2
    assert "warm_start: " in capsys.readouterr().err and not (tmp_path / "never").exists()


# ---- a warm-start file or a missing optuna: refused when the config is loaded --------------------
@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    from tests.conftest import write_dataset

    root = tmp_path_factory.mktemp("warm_data")
    write_dataset(root, day_rows=(6144, 512))  # the tiny search's top rung: 6,144 train rows
    return root


def _config_with(tmp_path: Path, data: Path, **settings) -> Path:
    from tests.search.configs import tiny_search

    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(tiny_search(data, **settings)))
    return path


def _studies(path: Path, names: tuple[str, ...]) -> Path:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    for name in names:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
        params = {"bottom_width": 8, "top_width": 16, "embedding_lr": 0.01, "dense_lr": 0.003}
        study.add_trial(optuna.trial.create_trial(
            params=params, value=0.7,
            distributions={k: optuna.distributions.CategoricalDistribution([v]) for k, v in params.items()}))
    return path


def _problems(config: Path) -> list[str]:
    from recsearch import config as rconfig

    with pytest.raises(rconfig.ConfigError) as err:
        loop.load_search_config(config)
    return err.value.problems


def test_a_warm_start_file_holding_two_studies_is_refused_before_anything_is_written(tmp_path, small_data, capsys):
    study = _studies(tmp_path / "two.log", ("first", "second"))
    config = _config_with(tmp_path, small_data, warm_start=str(study))
    (problem,) = _problems(config)
    assert problem.startswith(f"{config}: warm_start: {study} holds 2 studies (first, second): a warm start "
                              "reads a file with exactly one")
    out = tmp_path / "never"
    assert loop.main(["--config", str(config), "--out", str(out)]) == 2
    assert "holds 2 studies" in capsys.readouterr().err and not out.exists()
    # one study: it loads, and its trial maps onto the space (dim 4, bottom 8, top 16, the lowest lrs)
    one = _studies(tmp_path / "one.log", ("only",))
    res = loop.load_search_config(_config_with(tmp_path, small_data, warm_start=str(one)))
    warm = optuna_io.warm_start(one, res.space)
    assert [(s.arch.bottom_mlp, r) for s, r in warm.observations] == [((8, 4), 0.7)] and not warm.skipped


@pytest.mark.parametrize("content, why", [
    (b"", "holds 0 studies: a warm start reads a file with exactly one"),
    (b"not json at all\n{\"op_code\": 0}\n", "not a readable Optuna journal file (JSONDecodeError"),
    (b"{\"op_code\": 0}\n", "not a readable Optuna journal file (KeyError"),
])
def test_an_empty_or_corrupt_warm_start_file_is_a_config_error(tmp_path, small_data, content, why):
    study = tmp_path / "bad.log"
    study.write_bytes(content)
    (problem,) = _problems(_config_with(tmp_path, small_data, warm_start=str(study)))
    assert f"warm_start: {study}" in problem and why in problem, problem


def test_without_optuna_the_bayesian_controller_and_a_warm_start_are_config_errors(tmp_path, small_data, monkeypatch):
    study = _studies(tmp_path / "one.log", ("only",))
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    problems = _problems(_config_with(tmp_path, small_data, controller="bayesian", warm_start=str(study)))
    assert len(problems) == 2, problems
    assert f"warm_start: reading the Optuna study {study} needs optuna" in problems[0]
    assert "controller: bayesian needs optuna, which cannot be imported" in problems[1]
    assert "pip install 'recsearch[search]'" in problems[1]


def test_a_study_of_another_model_is_skipped_with_the_reason_not_credited_to_this_space(tmp_path):
    # a two-tower search's study (its model_args decisions beside the DLRM knobs it was decoded
    # with) warm-starting a plain DLRM search: its AUCs were earned by another model
    space = _small_space()
    path = tmp_path / "tt.log"
    base = {**FOREIGN_BASE, "bottom_width": 128}
    _foreign_study(path, "tt", "maximize", [({**base, "model_args.tower": "[16, 8]"}, 0.70),
                                            ({**base, "model_args.split": 6}, 0.71), (base, 0.69)])
    warm = optuna_io.warm_start(path, space)
    assert [r for _, r in warm.observations] == [0.69]
    assert warm.skipped == [
        "trial 0: model_args.tower: not a decision of this space (a trial of another model or search space)",
        "trial 1: model_args.split: not a decision of this space (a trial of another model or search space)",
    ]


def test_an_export_onto_an_existing_file_names_the_force_flag(tmp_path, capsys):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "journal.jsonl").write_text("")
    out = tmp_path / "study.log"
    out.write_text("keep")
    assert cli.main(["optuna", "export", str(tmp_path / "s"), "--out", str(out)]) == 2
    assert f"{out} exists: pass --force to replace it" in capsys.readouterr().err
    assert out.read_text() == "keep"
