"""The objective: AUC under a soft latency budget, step-cost budgets and caps checked before
training, the Pareto front the search prints."""

import math

import pytest

from recsearch.search.objective import ObjectiveConfig, over_cost_budget, reward
from recsearch.search.pareto import pareto_front


def test_latency_budget_is_a_soft_penalty_proportional_to_the_overshoot():
    obj = ObjectiveConfig(metric="latency", penalty=0.1)
    assert reward(obj, 0.75, 4.0, 5.0) == 0.75  # within budget: the AUC
    assert reward(obj, 0.75, 5.0, 5.0) == 0.75
    assert reward(obj, 0.75, 7.5, 5.0) == pytest.approx(0.75 - 0.1 * 0.5)  # 50 % over
    assert reward(obj, 0.75, 10.0, 5.0) == pytest.approx(0.65)  # 100 % over: one whole penalty
    assert reward(obj, 0.75, None, 5.0) is None and reward(obj, 0.75, math.nan, 5.0) is None
    assert reward(obj, math.nan, 4.0, 5.0) is None and reward(obj, None, 4.0, 5.0) is None
    assert reward(obj, 0.75, 99.0, None) == 0.75  # no budget known (yet): the AUC
    assert reward(ObjectiveConfig(metric="none"), 0.7, 99.0, 5.0) == 0.7
    assert reward(ObjectiveConfig(metric="step_cost"), 0.7, 99.0, 5.0) == 0.7  # step cost is checked before training


def test_step_cost_budget_and_cap_reject_before_training_with_the_numbers():
    obj = ObjectiveConfig(metric="step_cost", tolerance=0.1)
    assert over_cost_budget(obj, 10.9, 10.0) is None
    why = over_cost_budget(obj, 11.5, 10.0)
    assert why == "estimated step cost 11.500 ms is over the budget of 10.000 ms (+10% tolerance)"
    assert over_cost_budget(ObjectiveConfig(metric="latency"), 1e6, 10.0) is None  # latency: no pre-training check
    capped = ObjectiveConfig(metric="latency", max_step_cost_ms=2.0)
    assert over_cost_budget(capped, 1.5, None) is None
    assert over_cost_budget(capped, 2.5, None) == "estimated step cost 2.500 ms is over objective.max_step_cost_ms = 2.000 ms"


@pytest.mark.parametrize("bad, message", [
    ({"metric": "speed"}, "objective.metric: must be one of latency, step_cost, none, got 'speed'"),
    ({"budget_ms": 0.0}, "objective.budget_ms: must be positive (or null), got 0.0"),
    ({"budget_ms": float("nan")}, "objective.budget_ms: must be positive (or null), got nan"),
    ({"serving_batch": 0}, "objective.serving_batch: must be >= 1, got 0"),
    ({"penalty": -1.0}, "objective.penalty: must be >= 0, got -1.0"),
    ({"tolerance": float("inf")}, "objective.tolerance: must be >= 0, got inf"),
    ({"max_step_cost_ms": -2.0}, "objective.max_step_cost_ms: must be positive (or null), got -2.0"),
])
def test_bad_objectives_are_clear_errors(bad, message):
    # the search config loader prefixes each with the file (tests/reliability/test_search_settings.py)
    assert ObjectiveConfig(**bad).problems() == [message]
    assert ObjectiveConfig().problems() == []


def test_pareto_front_of_auc_vs_latency():
    # the search's printed front is recsearch.search.pareto's (the report's), on (trial, AUC, latency)
    points = [(1, 0.70, 3.0), (2, 0.72, 5.0), (3, 0.71, 6.0), (4, 0.72, 4.0), (5, 0.69, 2.0)]
    assert list(pareto_front(points).trial_ids) == [5, 1, 4]


def test_latency_against_a_reference_budget_is_the_ratio_measured_in_the_same_rounds():
    from recsearch.search.objective import latency_for_budget

    # the budget is the reference's latency (1.0 ms, measured in its own trial); this trial timed
    # itself at 1.5 ms and at 1.5 / 1.6 of the reference in the same rounds: it is the faster one
    assert latency_for_budget(1.5, 1.5 / 1.6, 1.0, budget_is_reference=True) == pytest.approx(1.5 / 1.6)
    # an explicit budget in ms compares the measured latency itself
    assert latency_for_budget(1.5, 1.5 / 1.6, 1.0, budget_is_reference=False) == 1.5
    # no reference timed alongside (torchx trials, multi-rank) or nothing measured: the measured value
    assert latency_for_budget(1.5, None, 1.0, budget_is_reference=True) == 1.5
    assert latency_for_budget(None, 0.9, 1.0, budget_is_reference=True) is None
    # the reference trial timed its trained model 8 % slower than a fresh one of its architecture:
    # it meets its own budget exactly, and candidates are judged by the same yardstick
    assert latency_for_budget(1.08, 1.08, 1.0, True, reference_trial_ratio=1.08) == pytest.approx(1.0)
    assert latency_for_budget(1.5, 1.5 / 1.6, 1.0, True, reference_trial_ratio=1.08) == pytest.approx(1.5 / 1.6 / 1.08)
