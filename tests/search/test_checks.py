"""The preflight of a search (recsearch.search.checks): a step-cost cap or budget that no candidate
of the space is within is refused before anything is written, with the limit and the cheapest
candidate's estimate; a limit the cheapest candidate meets is no problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from recsearch.search import checks, loop
from recsearch.search.settings import Resolved, load_search_config
from tests.conftest import write_dataset
from tests.search.configs import tiny_search


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("checks_data")
    write_dataset(root, day_rows=(6144, 512))  # 6,144 train rows: the tiny search's top rung
    return root


def _resolved(tmp_path: Path, data: Path, **settings) -> tuple[Path, Resolved]:
    raw = tiny_search(data, **{"space.embedding_dim": [4, 8], "space.batch_size": [256, 512], **settings})
    path = tmp_path / f"search_{len(list(tmp_path.glob('search_*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, load_search_config(path)


def _checker(res: Resolved) -> checks.Checker:
    return checks.Checker(res.tables, res.cfg.topology.topology(), res.cfg.placer, res.cfg.seed)


def _cheapest_ms(res: Resolved, checker: checks.Checker) -> float:
    """The smallest estimate over every embedding dim at the smallest batch (the shipped CPU net)."""
    estimates = [checker.check(checks._probe(res.space, dim, "rowwise_adagrad", 256)).est_step_cost_ms for dim in (4, 8)]
    assert all(e is not None and e > 0 for e in estimates), estimates
    largest_batch = checker.check(checks._probe(res.space, 4, "rowwise_adagrad", 512)).est_step_cost_ms
    assert largest_batch > min(estimates)  # the smallest batch is the cheap corner
    return min(estimates)


def test_a_step_cost_cap_below_the_cheapest_candidate_is_refused_with_the_numbers(tmp_path, data):
    _, probe = _resolved(tmp_path, data)
    checker = _checker(probe)
    cheapest = _cheapest_ms(probe, checker)
    cap = round(cheapest / 2, 6)
    _, res = _resolved(tmp_path, data, **{"objective.max_step_cost_ms": cap})
    problems = checks.preflight_problems(res, checker)
    assert len(problems) == 1, problems
    assert problems[0].startswith("objective.max_step_cost_ms: no candidate can be trained: the cheapest in the space")
    assert f"estimated step cost {cheapest:.3f} ms is over objective.max_step_cost_ms = {cap:.3f} ms" in problems[0]
    assert "batch_size 256" in problems[0]

    # a cap the cheapest candidate meets (the batch-512 ones may be over it: they are rejected one by one)
    _, res = _resolved(tmp_path, data, **{"objective.max_step_cost_ms": round(cheapest * 1.01, 6)})
    assert checks.preflight_problems(res, checker) == []


def test_a_step_cost_budget_below_the_cheapest_candidate_is_refused(tmp_path, data):
    _, probe = _resolved(tmp_path, data)
    checker = _checker(probe)
    cheapest = _cheapest_ms(probe, checker)
    budget = round(cheapest / 2, 6)
    _, res = _resolved(tmp_path, data, **{"objective.metric": "step_cost", "objective.budget_ms": budget})
    (problem,) = checks.preflight_problems(res, checker)
    assert problem.startswith("objective.budget_ms: no candidate can be trained")
    assert f"estimated step cost {cheapest:.3f} ms is over the budget of {budget:.3f} ms" in problem

    # the budget from the reference config: one cheaper than every candidate (dim 4 at batch 128
    # beside a space of batch 512 only) leaves nothing within it
    _, res = _resolved(tmp_path, data, **{"objective.metric": "step_cost", "space.batch_size": [512],
                                          "base.hparams.batch_size": 128})
    (problem,) = checks.preflight_problems(res, checker)
    assert problem.startswith("objective.budget_ms: no candidate can be trained")
    assert "batch_size 512" in problem and "(the reference config's estimate)" in problem
    _, res = _resolved(tmp_path, data, **{"objective.metric": "step_cost"})  # reference at batch 256: fine
    assert checks.preflight_problems(res, checker) == []


def test_recsearch_search_refuses_an_unmeetable_cap_before_writing_anything(tmp_path, data, capsys):
    path, _ = _resolved(tmp_path, data, **{"objective.max_step_cost_ms": 1e-6})
    out = tmp_path / "never"
    assert loop.main(["--config", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: objective.max_step_cost_ms: no candidate can be trained" in err
    assert "is over objective.max_step_cost_ms = 0.000 ms" in err
    assert not out.exists()
    path, _ = _resolved(tmp_path, data)  # the same cap given on the command line is named there
    assert loop.main(["--config", str(path), "--out", str(out), "objective.max_step_cost_ms=1e-6"]) == 2
    assert "command line: objective.max_step_cost_ms=1e-6: no candidate can be trained" in capsys.readouterr().err
    assert not out.exists()


def test_preflight_problems_name_the_command_line_value_that_caused_them(tmp_path, data):
    from recsearch import config

    path, res = _resolved(tmp_path, data, **{"objective.max_step_cost_ms": 1e-6})
    overrides = ["objective.max_step_cost_ms=1e-6"]
    (problem,) = checks.preflight_problems(res, _checker(res), config.Origins.of(path, overrides).locate)
    assert problem.startswith("command line: objective.max_step_cost_ms=1e-6: no candidate can be trained: "
                              "the cheapest in the space (embedding_dim 4, batch_size 256, rowwise_adagrad): "
                              "estimated step cost"), problem
    # without the override, the file
    (problem,) = checks.preflight_problems(res, _checker(res), config.Origins.of(path).locate)
    assert problem.startswith(f"{path}: objective.max_step_cost_ms: no candidate can be trained")
    path, res = _resolved(tmp_path, data, **{"topology.memory_per_device_mb": 0.001})
    problem, *rest = checks.preflight_problems(res, _checker(res), config.Origins.of(path, ["space.embedding_dim=[4,8]"]).locate)
    assert [p.split(": ")[:2] for p in rest] == [[str(path), "reference config"]]  # the reference does not fit either
    assert problem.startswith("command line: space.embedding_dim=[4,8]: no embedding_dim x embedding_optimizer "
                              "option fits the topology (1 x 0.001 MB)"), problem


def test_a_users_model_with_built_in_dlrm_knobs_searched_is_refused_before_anything_is_written(tmp_path, data, capsys):
    model = "examples.two_tower:two_tower"
    settings = {"base.model": model, "base.model_args": {"tower": [8, 4], "split": 13},
                "space.model_args": {"split": [6, 13]}, "space.bottom_width": [8, 16], "space.interaction": ["dot", "dcn"],
                "space.top_width": [8], "space.dcn_num_layers": [1], "space.dcn_low_rank_dim": [64]}
    path, res = _resolved(tmp_path, data, **settings)
    problems = checks.preflight_problems(res, _checker(res))
    assert [p.split(":")[0] for p in problems] == ["space.bottom_width", "space.interaction"]
    assert problems[1] == (f"space.interaction: [dot, dcn]: a knob of the built-in DLRM, and the base model {model} "
                           f"does not receive it: fix it to one option (e.g. space.interaction=[dot]); the model's "
                           f"own decisions go under space.model_args")
    out = tmp_path / "never"
    assert loop.main(["--config", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: space.bottom_width: [8, 16]: a knob of the built-in DLRM" in err and "space.interaction" in err
    assert not out.exists()
    # hyperparameters and the tables' width train any model: searched as before
    _, res = _resolved(tmp_path, data, **{**settings, "space.bottom_width": [8], "space.interaction": ["dot"]})
    assert checks.preflight_problems(res, _checker(res)) == []
