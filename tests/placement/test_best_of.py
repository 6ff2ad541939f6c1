"""The planner's default placer never returns a placement its own cost net rates worse than a
baseline's: BestOfPlacer scores the learned and the baseline placements and keeps the cheapest."""

from pathlib import Path

import pytest

from recsearch.placement.best_of import DEFAULT_RIVALS, BestOfPlacer
from recsearch.placement.cost_net import load_shipped
from recsearch.placement.registry import learned_or_better, make_placer
from recsearch.placement.tables import load_tasks
from recsearch.placement.types import Placement, PlacementError
from recsearch.types import Topology

TASKS = Path(__file__).parents[2] / "recsearch" / "placement" / "data" / "tasks_test"


class AllOnRankZero:
    """A bad primary: every table on rank 0 (when it fits)."""

    def place(self, tables, topology):
        return Placement((0,) * len(tables), topology.world_size)


def test_learned_or_better_is_never_rated_worse_than_a_baseline():
    tasks = load_tasks(TASKS)[:6]
    net = load_shipped("cpu")
    placer = learned_or_better(refine_seconds=0)
    for task in tasks:
        chosen = placer.place(task.tables, task.topology)
        chosen_ms = net.predict(task.tables, chosen, task.topology).total_ms
        names = [c.name for c in placer.last_candidates]
        assert names == ["learned", *DEFAULT_RIVALS]
        for name in DEFAULT_RIVALS:
            rival = make_placer(name).place(task.tables, task.topology)
            assert chosen_ms <= net.predict(task.tables, rival, task.topology).total_ms + 1e-9
        by_name = {c.name: c for c in placer.last_candidates}
        assert by_name[placer.last_choice].estimate_ms == pytest.approx(chosen_ms)


def test_the_planners_default_refines_the_best_of_placement(cpu_cost_net, test_tasks):
    """learned_or_better(): best-of, then refine under the same net: never rated worse than the
    best-of placement, and better on some tasks."""
    from recsearch.placement.refine import RefinedPlacer

    net = cpu_cost_net
    refined = learned_or_better()
    assert isinstance(refined, RefinedPlacer) and isinstance(refined.placer, BestOfPlacer)
    better = 0
    for task in test_tasks[:6]:
        final = net.predict(task.tables, refined.place(task.tables, task.topology), task.topology).total_ms
        by_name = {c.name: c for c in refined.placer.last_candidates}
        chosen = by_name[refined.placer.last_choice].estimate_ms
        assert final <= chosen * (1 + 1e-9)
        assert refined.last_report is not None and refined.last_report.seconds < 5
        better += final < chosen * 0.999
    assert better >= 1


def test_a_worse_primary_loses_to_the_baselines_and_failures_are_skipped():
    task = load_tasks(TASKS)[0]
    roomy = Topology(task.world_size, 1 << 40, "cpu")  # all on rank 0 fits, but is slow
    net = load_shipped("cpu")
    placer = BestOfPlacer(
        AllOnRankZero(),
        {"lookup_greedy": make_placer("lookup_greedy")},
        lambda topology: net,
        primary_name="rank0",
    )
    placement = placer.place(task.tables, roomy)
    assert placer.last_choice == "lookup_greedy"
    assert len(set(placement.ranks)) == task.world_size
    # under the task's own cap, all-on-rank-0 is over the cap: skipped, with the reason kept
    placer.place(task.tables, task.topology)
    (primary,) = [c for c in placer.last_candidates if c.name == "rank0"]
    assert primary.estimate_ms is None and "memory cap exceeded" in primary.error
    # nobody can place: every placer's reason in one error
    with pytest.raises(PlacementError, match="no placer found a placement: rank0: .* lookup_greedy: "):
        placer.place(task.tables, Topology(task.world_size, 1000, "cpu"))
