"""Never worse than the baselines under the placer's own cost model: run a primary placer (the
learned policy) and the baseline placers, score every feasible placement with the cost model,
keep the cheapest (the primary on ties).

What it costs is the baselines' planning (greedy: milliseconds) plus one cost-model estimate
per candidate; `tools/bench_planner.py` measures it (docs/BENCHMARKS.md `bench_planner`).
The learned placer checked against DEFAULT_RIVALS is `registry.learned_or_better`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from recsearch.placement.types import (
    DEFAULT_OPTIMIZER,
    CostModel,
    Placement,
    PlacementError,
    Placer,
)
from recsearch.types import TableSpec, Topology

# the baselines a learned placement is checked against: deterministic and fast (random is never
# the best and TorchRec's planner takes seconds on hundreds of tables)
DEFAULT_RIVALS = ("round_robin", "size_greedy", "dim_greedy", "lookup_greedy", "size_lookup_greedy")


@dataclass(frozen=True)
class Candidate:
    """One placer's result: its cost-model estimate (None if it failed) and planning time."""

    name: str
    estimate_ms: float | None
    plan_seconds: float
    error: str = ""


class BestOfPlacer:
    """The primary placer and its rivals; the placement the cost model rates cheapest.

    cost_model_for: the cost model to judge with for a topology (the learned placer's own net,
    which depends on the compute device). last_candidates / last_choice say what was compared.
    """

    def __init__(
        self,
        primary: Placer,
        rivals: Mapping[str, Placer],
        cost_model_for: Callable[[Topology], CostModel],
        primary_name: str = "learned",
        optimizer: str = DEFAULT_OPTIMIZER,
    ):
        if primary_name in rivals:
            raise ValueError(f"rival name {primary_name!r} is the primary's")
        self.primary, self.rivals = primary, dict(rivals)
        self.cost_model_for = cost_model_for
        self.primary_name, self.optimizer = primary_name, optimizer
        self.last_candidates: tuple[Candidate, ...] = ()
        self.last_choice = ""

    def place(self, tables: Sequence[TableSpec], topology: Topology) -> Placement:
        model = self.cost_model_for(topology)
        best: tuple[float, str, Placement] | None = None
        candidates, errors = [], []
        for name, placer in [(self.primary_name, self.primary), *self.rivals.items()]:
            start = time.perf_counter()
            try:
                placement = placer.place(tables, topology)
                placement.validate(tables, topology, self.optimizer)
                estimate = float(model.predict(tables, placement, topology).total_ms)
            except PlacementError as err:
                seconds = time.perf_counter() - start
                candidates.append(Candidate(name, None, seconds, str(err)))
                errors.append(f"{name}: {err}")
                continue
            candidates.append(Candidate(name, estimate, time.perf_counter() - start))
            if best is None or estimate < best[0]:
                best = (estimate, name, placement)
        self.last_candidates = tuple(candidates)
        if best is None:
            raise PlacementError("no placer found a placement: " + " | ".join(errors))
        self.last_choice = best[1]
        return best[2]
