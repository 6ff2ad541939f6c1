"""Sharding-aware candidate checks: a candidate's tables placed for the target topology, its
memory checked against every device, its step cost estimated by the shipped cost net, before it is
trained; and the checks that make a whole search impossible (nothing fits, the reference does not
fit, a step-cost budget or cap that nothing is within or that has no cost model), run before
anything is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from recsearch.search.objective import over_cost_budget
from recsearch.search.settings import Resolved
from recsearch.search.space import SearchSpace, user_model_problems
from recsearch.types import TableSpec, Topology, TrialSpec


@dataclass(frozen=True)
class Check:
    """A candidate's placement verdict: rejected (with why) or placed (with its cost)."""

    rejected: str | None
    placement: dict[str, int] = field(default_factory=dict)  # table -> rank
    memory_bytes_per_device: tuple[int, ...] = ()
    est_step_cost_ms: float | None = None


class Checker:
    """Places a candidate's tables for the target topology, checks memory, estimates step cost."""

    def __init__(self, tables: tuple[TableSpec, ...], topology: Topology, placer_name: str, seed: int):
        self.tables = tables
        self.topology = topology
        self.placer_name, self.placer = _make_placer(placer_name, topology, seed)
        self.cost_net, self.cost_note = _load_cost_net(topology.compute_device)

    def tables_for(self, spec: TrialSpec) -> list[TableSpec]:
        return [replace(t, dim=spec.arch.embedding_dim) for t in self.tables]

    def check(self, spec: TrialSpec) -> Check:
        from recsearch.placement.types import PlacementError, check_fits

        tables = self.tables_for(spec)
        optimizer = spec.hparams.embedding_optimizer
        try:
            check_fits(tables, self.topology, optimizer)
            placement = self.placer.place(tables, self.topology)
            placement.validate(tables, self.topology, optimizer)
        except (PlacementError, ValueError) as err:
            return Check(rejected=f"does not fit {self.topology.world_size} x {self.topology.device_memory_bytes / 2**20:.0f} MiB: {err}")
        est = None
        if self.cost_net is not None:
            cost = self.cost_net.predict(tables, placement, self.topology)
            # The net predicts at the batch its samples were measured at; lookup work and
            # all-to-all bytes grow linearly with the batch, so scale to this trial's global batch.
            scale = spec.hparams.batch_size * self.topology.world_size / self.cost_net.meta.batch_size
            est = round(cost.total_ms * scale, 4)
        return Check(
            rejected=None,
            placement=placement.to_dict(tables),
            memory_bytes_per_device=tuple(placement.memory_per_rank(tables, optimizer)),
            est_step_cost_ms=est,
        )


def _make_placer(name: str, topology: Topology, seed: int):
    from recsearch.placement.registry import make_placer

    if name != "auto":
        return name, make_placer(name, seed=seed)
    try:
        placer = make_placer("learned", seed=seed)
        probe = [TableSpec(name=f"probe_{i}", num_rows=10, dim=4) for i in range(2)]
        placer.place(probe, Topology(topology.world_size, 2**30, topology.compute_device))
        return "learned", placer
    except (ValueError, FileNotFoundError, RuntimeError, ImportError):
        # no learned policy for this device (yet): DreamShard's strongest simple baseline
        return "size_lookup_greedy", make_placer("size_lookup_greedy", seed=seed)


def _load_cost_net(device: str):
    try:
        from recsearch.placement.cost_net import load_shipped

        return load_shipped(device), f"shipped {device} cost net"
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as err:
        return None, f"no step-cost estimate ({err})"


def feasibility_problems(res: Resolved, checker: Checker, reference: TrialSpec | None) -> list[str]:
    """An empty or contradictory space, found before any training: nothing fits the topology, the
    reference does not fit, or no candidate is within the step-cost budget or cap
    (`step_cost_problems`)."""
    space, cfg = res.space, res.cfg
    # Every embedding_dim x embedding_optimizer at the smallest batch: the model's other decisions
    # change neither the tables' memory nor their step cost, and the cost grows with the batch.
    probes = [
        (probe, checker.check(probe))
        for probe in (_probe(space, dim, opt, min(space.space.batch_size))
                      for dim in space.space.embedding_dim for opt in space.space.embedding_optimizer)
    ]
    fitting = [(probe, check) for probe, check in probes if check.rejected is None]
    problems = []
    if not fitting:
        problems.append(
            f"space.embedding_dim: no embedding_dim x embedding_optimizer option fits the topology "
            f"({cfg.topology.devices} x {cfg.topology.memory_per_device_mb:g} MB): {probes[0][1].rejected}; "
            f"give smaller embedding_dim options or more topology.memory_per_device_mb"
        )
    if reference is not None:
        check = checker.check(reference)
        if check.rejected:
            problems.append(f"reference config: {check.rejected}")
    return problems + step_cost_problems(res, checker, fitting)


def step_cost_budget_ms(res: Resolved, checker: Checker) -> float | None:
    """The search's budget before any trial ran: objective.budget_ms, or with metric step_cost and
    no budget given, the reference config's estimated step cost (a latency budget comes from the
    trained reference instead)."""
    objective = res.cfg.objective
    if objective.metric == "step_cost" and objective.budget_ms is None:
        return checker.check(reference_spec(res)).est_step_cost_ms
    return objective.budget_ms


def step_cost_problems(res: Resolved, checker: Checker, fitting: list[tuple[TrialSpec, Check]]) -> list[str]:
    """A step-cost cap (objective.max_step_cost_ms) or budget (metric step_cost) that even the
    cheapest candidate breaks: the search would reject every proposal untrained. `fitting` are the
    placed probes of the space's cheapest corner (smallest batch, each embedding dim); without a
    cost estimate there is nothing to compare (preflight_problems reports that on its own)."""
    estimates = [(check.est_step_cost_ms, probe) for probe, check in fitting if check.est_step_cost_ms is not None]
    if not estimates:
        return []
    cheapest_ms, cheapest = min(estimates, key=lambda pair: pair[0])
    objective = res.cfg.objective
    budget_ms = step_cost_budget_ms(res, checker)
    source = " (the reference config's estimate)" if objective.budget_ms is None and budget_ms is not None else ""
    why = over_cost_budget(objective, cheapest_ms, budget_ms)
    if why is None:
        return []
    cap = objective.max_step_cost_ms
    key = "objective.max_step_cost_ms" if cap is not None and cheapest_ms > cap else "objective.budget_ms"
    h = cheapest.hparams
    return [
        f"{key}: no candidate can be trained: the cheapest in the space (embedding_dim "
        f"{cheapest.arch.embedding_dim}, batch_size {h.batch_size}, {h.embedding_optimizer}): {why}{source}; "
        f"raise the limit, or give the space smaller embedding_dim or batch_size options"
    ]


def reference_spec(res: Resolved) -> TrialSpec:
    """The base train config as a trial on the top rung (the human baseline)."""
    base = res.base
    return TrialSpec(
        trial_id=-1, arch=base.arch, hparams=base.hparams, train_rows=res.cfg.fidelity.train_rows[-1],
        topology=res.cfg.topology.topology(), extra={"reference": "1"},
        model_args=dict(base.model_args) if base.model is not None else {},  # what it trains (and is labelled by)
    )


def preflight_problems(res: Resolved, checker: Checker, locate: Callable[[str], str] | None = None) -> list[str]:
    """Everything that makes the search impossible and needs the placer or the cost net (or the
    base train config's model), found before anything is written: nothing fits, the reference does
    not fit, a step-cost budget or cap that no candidate is within, or one without a cost model,
    built-in DLRM decisions searched for a model of the user's own. Each problem starts with its
    key; `locate` (recsearch.config.Origins.locate of the config file and the command line's
    key=value overrides) puts where that key was set in front: 'command line:
    objective.max_step_cost_ms=0.1: ...' rather than the file's name."""
    problems = _preflight(res, checker)
    return [locate(p) for p in problems] if locate is not None else problems


def _preflight(res: Resolved, checker: Checker) -> list[str]:
    cfg = res.cfg
    problems = user_model_problems(cfg.space, res.base.model)
    problems += feasibility_problems(res, checker, reference_spec(res) if cfg.reference else None)
    if cfg.objective.metric == "step_cost" and cfg.objective.budget_ms is None:
        if checker.check(reference_spec(res)).est_step_cost_ms is None:
            problems.append(f"objective: step_cost budget from the reference needs a cost model: {checker.cost_note}")
    if cfg.objective.max_step_cost_ms is not None and checker.cost_net is None:
        problems.append(f"objective.max_step_cost_ms: needs a step-cost estimate, and there is none: {checker.cost_note}")
    return problems


def _probe(space: SearchSpace, dim: int, optimizer: str, batch: int) -> TrialSpec:
    choices = []
    for d in space.decisions:
        target = {"embedding_dim": dim, "embedding_optimizer": optimizer, "batch_size": batch}.get(d.name)
        choices.append(d.options.index(target) if target is not None else 0)
    return space.decode(tuple(choices))
