"""Every placer by name: the one place that maps names to Placers.

- `PLACERS`: the names `make_placer` takes (the baselines, TorchRec's planner table-wise and,
  as `torchrec_dp`, allowed data_parallel too, the learned one);
- `make_placer(name)`: a Placer (`types.Placer`); `placer_for_batch(name, ...)`: the same, with
  TorchRec's planner planning for a given global batch;
- `learned_or_better()`: the shipped learned placer checked against the fast baselines under its
  own cost net (best_of.BestOfPlacer), then refined under that net (refine.RefinedPlacer), what
  the drop-in planner uses for "learned";
- `planner_placer(name, ...)`: the placer LearnedShardingPlanner builds for a name.

The registry sits above the placers (baselines, policy, torchrec_placer, best_of) and below
their users (plan.py, evaluate.py, the command line, the search and the trainer). Importing it
costs no torch: the learned placer (torch) and TorchRec's planner (torchrec.distributed) are
imported when one is made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from recsearch.placement.baselines import BASELINES, make_baseline
from recsearch.placement.best_of import DEFAULT_RIVALS, BestOfPlacer
from recsearch.placement.types import DEFAULT_OPTIMIZER, REFINE_SAFETY_SECONDS, Placer
from recsearch.types import TableSpec, Topology

if TYPE_CHECKING:
    from recsearch.placement.cost_net import CostNet
    from recsearch.placement.policy import ShippedLearnedPlacer

TORCHREC_PLACERS = ("torchrec", "torchrec_dp")  # TorchRec's planner: table-wise, or data_parallel too
PLACERS = (*BASELINES, *TORCHREC_PLACERS, "learned")
# the placers the trainer's `plan:` and the search's `placer:` take: every table table-wise, so
# the fused embedding optimizer trains it (torchrec_dp may replicate tables: the dense kernel)
TRAIN_PLACERS = tuple(p for p in PLACERS if p != "torchrec_dp")
# the planner's default placer refines its best-of placement within refine.MAX_EVALUATIONS
# candidate evaluations (deterministic: the same plan on every call), types.REFINE_SAFETY_SECONDS
# its safety net
REFINE_SECONDS = REFINE_SAFETY_SECONDS
# the fast placer that screens the replication sets for the learned stack (checked_and_refined
# with replicate): one placer for every table and for every set's rest, so the estimates differ
# by what replicating changes; dim_greedy evens out the all-to-all (each rank's sum of dims),
# which is what replicating small tables shortens, and costs one greedy pass and one estimate
REPLICATION_SCREEN = "dim_greedy"
# how many screened sets the learned stack places: the two the screen rates cheapest (on the 21
# held-out family tasks of /work/lofo/run5, one set: estimates 0.26% above placing every set on
# average, 7 tasks replicating another set; two: 0.09%, 1 task; tools/bench_replication_screen.py)
REPLICATION_SCREEN_KEEP = 2


def make_placer(
    name: str, optimizer: str = DEFAULT_OPTIMIZER, seed: int = 0, **kwargs: Any
) -> Placer:
    """A placer by name (PLACERS). kwargs go to the TorchRec placer (batch_size, ...) or to the
    learned one (samples: K sampled placements besides greedy); "learned" is the shipped policy
    for the topology's compute device (recsearch.placement.policy)."""
    if name in BASELINES:
        return make_baseline(name, optimizer=optimizer, seed=seed)
    if name in TORCHREC_PLACERS:
        from recsearch.placement.torchrec_placer import TorchRecPlacer  # torchrec.distributed

        return TorchRecPlacer(optimizer=optimizer, data_parallel=name == "torchrec_dp", **kwargs)
    if name == "learned":
        from recsearch.placement.policy import ShippedLearnedPlacer  # torch

        return ShippedLearnedPlacer(seed=seed, optimizer=optimizer, **kwargs)
    raise ValueError(f"unknown placer {name!r}; known: {', '.join(PLACERS)}")


def placer_for_batch(
    name: str, optimizer: str, seed: int, batch_size: int
) -> Placer:
    """make_placer(name, optimizer, seed), TorchRec's planner planning for batch_size (the other
    placers do not depend on the batch)."""
    kwargs = {"batch_size": batch_size} if name in TORCHREC_PLACERS else {}
    return make_placer(name, optimizer, seed, **kwargs)


def replicating(
    placer: Placer,
    net_for: Callable[[Topology], CostNet],
    optimizer: str = DEFAULT_OPTIMIZER,
    may_replicate: Callable[[TableSpec], bool] | None = None,
    batch_size: int | None = None,
    screen: Placer | None = None,
    screen_keep: int = 1,
) -> Placer:
    """placer, and the same on what is left after replicating each candidate set of small tables,
    judged by net_for(topology) (replicate.ReplicatingPlacer; may_replicate: which tables may be;
    batch_size: the global batch the placement is for, None: the net's; screen: a fast placer
    whose placements pick the screen_keep sets placer places besides every table, None: placer
    places every set)."""
    from recsearch.placement.replicate import ReplicatingPlacer  # torch

    return ReplicatingPlacer(
        placer,
        net_for,
        optimizer,
        may_replicate=may_replicate,
        batch_size=batch_size,
        screen=screen,
        screen_keep=screen_keep,
    )


def shipped_net_for(learned: ShippedLearnedPlacer) -> Callable[[Topology], CostNet]:
    """The shipped learned placer's cost net for a topology's compute device."""
    return lambda topology: learned.policy_for(topology.compute_device).cost_net


def checked_and_refined(
    learned: Placer,
    net_for: Callable[[Topology], CostNet],
    primary_name: str,
    optimizer: str = DEFAULT_OPTIMIZER,
    best_of: bool = True,
    refine_seconds: float = REFINE_SECONDS,
    replicate: bool = False,
    may_replicate: Callable[[TableSpec], bool] | None = None,
    batch_size: int | None = None,
) -> Placer:
    """A learned placer, checked against DEFAULT_RIVALS under net_for(topology) (best_of: a
    best_of.BestOfPlacer that keeps the cheapest), then refined under the same net within
    refine.MAX_EVALUATIONS, refine_seconds its safety net (refine.RefinedPlacer; 0: not refined); with replicate, all that once for
    every table and once for the rest after replicating each of the REPLICATION_SCREEN_KEEP
    candidate sets of small tables that REPLICATION_SCREEN's placements rate cheapest, of
    those they rate cheaper than its table-wise placement (replicate.ReplicatingPlacer with
    that screen; may_replicate: which tables may be; batch_size: the global batch the
    placement is for, None: the net's). The one place that stacks these, for the planner's
    default (learned_or_better) and for `place eval`'s best_/refined_/dp_ methods."""
    placer = learned
    if best_of:
        rivals = {name: make_baseline(name, optimizer) for name in DEFAULT_RIVALS}
        placer = BestOfPlacer(learned, rivals, net_for, primary_name=primary_name, optimizer=optimizer)
    if refine_seconds > 0:
        from recsearch.placement.refine import RefinedPlacer  # torch

        placer = RefinedPlacer(placer, net_for, optimizer, max_seconds=refine_seconds)
    if replicate:
        screen = make_baseline(REPLICATION_SCREEN, optimizer)
        placer = replicating(
            placer, net_for, optimizer, may_replicate, batch_size, screen, REPLICATION_SCREEN_KEEP
        )
    return placer


def learned_or_better(
    samples: int = 0,
    seed: int = 0,
    optimizer: str = DEFAULT_OPTIMIZER,
    refine_seconds: float = REFINE_SECONDS,
    replicate: bool = False,
    may_replicate: Callable[[TableSpec], bool] | None = None,
    batch_size: int | None = None,
) -> Placer:
    """The shipped learned placer checked against DEFAULT_RIVALS under its own cost net, then
    refined under that net (refine.RefinedPlacer: moves and exchanges of tables while the net
    says the step gets cheaper, within refine.MAX_EVALUATIONS, refine_seconds its safety net;
    0: no refinement, the BestOfPlacer
    itself): what LearnedShardingPlanner uses for placer="learned". The refined placer's
    `.placer` is the BestOfPlacer (its last_candidates and last_choice say what was compared).
    replicate: also try replicating small tables (replicate.ReplicatingPlacer around all that;
    may_replicate: which tables may be; batch_size: the global batch), for
    LearnedShardingPlanner(data_parallel=True)."""
    from recsearch.placement.policy import ShippedLearnedPlacer  # torch

    learned = ShippedLearnedPlacer(samples=samples, seed=seed, optimizer=optimizer)
    primary = "learned" if samples == 0 else f"learned_k{samples}"
    return checked_and_refined(
        learned,
        shipped_net_for(learned),
        primary,
        optimizer,
        refine_seconds=refine_seconds,
        replicate=replicate,
        may_replicate=may_replicate,
        batch_size=batch_size,
    )


def planner_placer(
    name: str,
    optimizer: str,
    global_batch: int,
    replicate: bool = False,
    may_replicate: Callable[[TableSpec], bool] | None = None,
) -> Placer:
    """The placer LearnedShardingPlanner(placer=name) uses: "learned" is learned_or_better,
    "torchrec" plans for the planner's global batch, the rest are make_placer's. replicate
    (LearnedShardingPlanner(data_parallel=True)): "learned" also tries replicating small
    tables; a baseline is wrapped in replicate.ReplicatingPlacer under the shipped cost net for
    the device; "torchrec_dp" decides replication itself, among the tables may_replicate allows
    (offered data_parallel only for those)."""
    if name == "torchrec_dp" and may_replicate is not None:
        return make_placer(
            name, optimizer, 0, batch_size=global_batch, may_replicate=may_replicate
        )
    if name == "learned":
        return learned_or_better(
            optimizer=optimizer,
            replicate=replicate,
            may_replicate=may_replicate,
            batch_size=global_batch,
        )
    placer = placer_for_batch(name, optimizer, 0, global_batch)
    if not replicate or name in TORCHREC_PLACERS:
        return placer
    from recsearch.placement.policy import ShippedLearnedPlacer  # torch

    shipped = shipped_net_for(ShippedLearnedPlacer(optimizer=optimizer))
    return replicating(placer, shipped, optimizer, may_replicate, global_batch)
