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
