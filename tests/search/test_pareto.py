import itertools
import math
import random

from recsearch.search.pareto import ParetoPoint, dominates, pareto_front


def _brute_force(points):
    return {p.trial_id for p in points if not any(dominates(q, p) for q in points if q is not p)}


def test_front_keeps_only_non_dominated_points_in_cost_order():
    front = pareto_front([(0, 0.75, 1.0), (1, 0.74, 0.8), (2, 0.76, 0.95), (3, 0.77, 1.3), (4, 0.755, 1.1)])
    assert front.trial_ids == (1, 2, 3)  # 0 and 4 are beaten by 2 on both axes
    assert [p.cost for p in front.points] == [0.8, 0.95, 1.3]
    assert front.considered == 5 and front.missing == ()


def test_ties():
    # same cost, different value: only the higher value; same value, different cost: only the cheaper
    assert pareto_front([(0, 0.70, 1.0), (1, 0.72, 1.0)]).trial_ids == (1,)
    assert pareto_front([(0, 0.72, 1.2), (1, 0.72, 1.0)]).trial_ids == (1,)
    # exact ties do not dominate each other: both stay, lower trial id first
    assert pareto_front([(5, 0.72, 1.0), (2, 0.72, 1.0), (3, 0.70, 0.5)]).trial_ids == (3, 2, 5)
    # a tie of a dominated point is dominated too
    assert pareto_front([(0, 0.70, 1.0), (1, 0.70, 1.0), (2, 0.71, 0.9)]).trial_ids == (2,)


def test_missing_and_non_finite_numbers_are_left_out_and_counted():
    front = pareto_front([(0, None, 1.0), (1, 0.7, None), (2, math.nan, 1.0), (3, 0.7, math.inf), (4, 0.6, 2.0)])
    assert front.trial_ids == (4,)
    assert front.missing == (0, 1, 2, 3) and front.considered == 1
    empty = pareto_front([])
    assert empty.points == () and empty.considered == 0


def test_matches_brute_force_on_random_points_with_many_ties():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 12)
        raw = [(i, rng.choice([0.6, 0.65, 0.7, 0.75]), rng.choice([1.0, 1.5, 2.0])) for i in range(n)]
        points = [ParetoPoint(*t) for t in raw]
        front = pareto_front(raw)
        assert set(front.trial_ids) == _brute_force(points)
        costs = [p.cost for p in front.points]
        assert costs == sorted(costs)
        for a, b in itertools.combinations(front.points, 2):
            assert not dominates(a, b) and not dominates(b, a)
