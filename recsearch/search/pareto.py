"""The Pareto front of trials on two axes: a value to maximize (AUC) and a cost to minimize
(inference latency, or estimated step cost).

A trial is on the front when no other trial is at least as good on both axes and strictly better
on one. Two consequences spelled out, because they decide what users see:
- exact ties (same value, same cost) do not dominate each other, so all of them stay on the front;
- a trial missing either number (failed, never trained, latency not measured) cannot be placed on
  the plane: it is left out and counted in `Front.missing`, never treated as zero or infinity.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ParetoPoint:
    trial_id: int
    value: float  # higher is better (AUC)
    cost: float  # lower is better (ms)


@dataclass(frozen=True)
class Front:
    points: tuple[ParetoPoint, ...]  # on the front, by ascending cost (then trial id)
    considered: int  # points with both numbers
    missing: tuple[int, ...]  # trial ids left out for a missing or non-finite number

    @property
    def trial_ids(self) -> tuple[int, ...]:
        return tuple(p.trial_id for p in self.points)


def _finite(x: float | None) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def pareto_front(items: Iterable[tuple[int, float | None, float | None]]) -> Front:
    """Front of (trial_id, value to maximize, cost to minimize) triples.

    Sweep by ascending cost, best value first within a cost: a point is on the front iff its
    value beats every cheaper point's, or it ties exactly (value and cost) the point that set the
    running best. O(n log n)."""
    usable: list[ParetoPoint] = []
    missing: list[int] = []
    for trial_id, value, cost in items:
        if _finite(value) and _finite(cost):
            usable.append(ParetoPoint(int(trial_id), float(value), float(cost)))  # type: ignore[arg-type]
        else:
            missing.append(int(trial_id))
    usable.sort(key=lambda p: (p.cost, -p.value, p.trial_id))
    front: list[ParetoPoint] = []
    for p in usable:
        if not front or p.value > front[-1].value:
            front.append(p)
        elif p.value == front[-1].value and p.cost == front[-1].cost:
            front.append(p)  # an exact tie of a front point: equally non-dominated
    return Front(points=tuple(front), considered=len(usable), missing=tuple(missing))


def dominates(a: ParetoPoint, b: ParetoPoint) -> bool:
    """a is at least as good as b on both axes and strictly better on one."""
    return a.value >= b.value and a.cost <= b.cost and (a.value > b.value or a.cost < b.cost)
