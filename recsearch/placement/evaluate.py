"""Compare placers on held-out tasks by *measured* cost: `run_eval(tasks, methods, cost_net,
EvalConfig) -> EvalReport`; its markdown is eval_markdown.render_markdown.

Command line (recsearch.placement.cli.eval):
`recsearch place eval --tasks DIR [DIR ...] --methods round_robin ... learned learned_k16 --out results.json [--md docs/BENCHMARKS.md]`

For every task and method: the placement (planning time, feasibility), the cost network's
estimate, and unless --no-measure the real cost on this machine (`measure_placement`: every
device's fused FBGEMM kernel timed in turn; communication from the calibrated comm model, since
one 2-core machine cannot run 16 ranks' all-to-alls for real). The cost network is not the judge:
it is the model the learned placer optimizes, so ranking methods by it would flatter the learned
placer; it is reported beside the measurement to show how far to trust it on unseen tables.

Methods: the baselines of recsearch.placement.registry (random, round_robin, size_greedy,
dim_greedy, lookup_greedy, size_lookup_greedy, torchrec), `learned` (greedy decoding of the
policy) and `learned_kK` (K sampled placements plus greedy, the cheapest under the cost net kept).

Measurement on a shared machine. A task's distinct placements are measured in --rounds rounds,
each round in a fresh random order, and every method gets the median over rounds: all methods of a
task see the same conditions, and a burst of other load hits one round of one method, not its
result. Kernels are timed with the clock the cost net's samples were (on CPU normally the kernel
thread's CPU time, which other processes' time slices do not inflate); the load average before and
after is recorded.

Measuring fast (measure.DeviceTimer, InputCache). Within a round a device table set is timed once:
a placement that gives a device the same tables as one measured earlier in the round reuses that
timing (each task's `measurement` says how many kernels were timed and how many looked up). Each
table's synthetic ids are generated once per run (in parallel threads, kept on the device) and
reused by every method, round and task that holds the table; a device's kernel reads its tables'
ids concatenated. Warm-up, timed iterations and medians are those of time_device_kernel.

Summary: per method, the mean over tasks of cost / (cost of the best baseline *method*, the one
with the lowest mean cost relative to the per-task best baseline) and of cost / (cheapest baseline
on that task, a per-task oracle), so tasks of different sizes weigh the same.
With --md the results become the `place_eval` section (or --section) of that markdown file.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from recsearch.placement.comm import CommModel
from recsearch.placement.cost_net import CostNet
from recsearch.placement.hardware import hardware_string
from recsearch.placement.measure import DeviceTimer, InputCache, measure_placement
from recsearch.placement.policy import SHIPPED, LearnedPlacer
from recsearch.placement.registry import (
    PLACERS,
    REFINE_SECONDS,
    checked_and_refined,
    placer_for_batch,
    replicating,
)
from recsearch.placement.tables import PoolConfig, Task, generate_pool, make_task
from recsearch.placement.types import REPLICATED, PlacementError, Placer

BASELINES = tuple(p for p in PLACERS if p != "learned")
# learned, learned_kK (K sampled placements besides greedy); best_ in front: the placement the
# policy's cost net rates cheapest among the learned one and best_of.DEFAULT_RIVALS' (what
# LearnedShardingPlanner's default placer did before refining); refined_ in front of either: then
# refined under the cost net (refine.py: moves and exchanges, at most REFINE_SECONDS, as the
# planner's default placer, which is refined_best_learned); dp_ in front of any of these: small
# tables replicated where the cost net says it pays (replicate.ReplicatingPlacer,
# LearnedShardingPlanner(data_parallel=True)). dp_<baseline> (e.g. dp_dim_greedy): the same
# replication around a baseline, under the policy's cost net: the ablation that says how much of
# dp_'s gain is the replication alone.
_LEARNED = re.compile(r"^(dp_)?(refined_)?(best_)?learned(?:_k(\d+))?$")
_DP_BASELINE = re.compile(r"^dp_(\w+)$")


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 4096  # global batch measured (the cost net's own, normally)
    warmup: int = 3
    iters: int = 10
    measure: bool = True  # False: cost-net estimates only
    seed: int = 0
    threads: int = 1
    row_cap: int | None = None
    rounds: int = 3  # interleaved measurement rounds per task; medians over rounds
    clock: str = "thread"  # CPU kernel clock (measure.CLOCKS)
    bound: bool = True  # also measure the task's lower bound (measure_bound)
    device: str = "cpu"  # where kernels are timed; the shipped policy is this device's
    policy: str | None = None  # policy prefix for learned methods (None: the shipped one)
    planning_timing: bool = True  # also time every method on a fresh 200-table, 16-device task


def is_learned_method(name: str) -> bool:
    """A method of the learned placer's stack (it plans with the policy's cost net): learned,
    learned_kK and their best_/refined_/dp_ forms, and dp_<baseline>."""
    if _LEARNED.match(name) is not None:
        return True
    m = _DP_BASELINE.match(name)
    return m is not None and m.group(1) in BASELINES


def check_methods(methods: Sequence[str]) -> None:
    for m in methods:
        if not is_learned_method(m) and m not in BASELINES:
            raise ValueError(
                f"unknown method {m!r}; known: {', '.join(BASELINES)}, learned, learned_kK, "
                f"best_learned, best_learned_kK, refined_ before either, dp_ before any of "
                f"these or a baseline"
            )


def method_placer(name: str, optimizer: str, cfg: EvalConfig) -> Placer:
    """A placer by method name; learned ones from cfg.policy or the shipped policy for
    cfg.device, loaded here so that planning times do not include reading model files."""
    check_methods([name])
    m = _LEARNED.match(name)
    dp = _DP_BASELINE.match(name) if m is None else None
    if m is None and dp is None:
        return placer_for_batch(name, optimizer, cfg.seed, cfg.batch_size)
    k = int(m.group(4) or 0) if m else 0
    learned = LearnedPlacer.load(
        cfg.policy or SHIPPED[cfg.device], samples=k, seed=cfg.seed, optimizer=optimizer
    )
    if dp is not None:  # the replication ablation around a baseline
        inner = placer_for_batch(dp.group(1), optimizer, cfg.seed, cfg.batch_size)
        return replicating(inner, lambda _topology: learned.cost_net, optimizer, batch_size=cfg.batch_size)
    return checked_and_refined(
        learned,
        lambda _topology: learned.cost_net,
        primary_name=name.removeprefix("dp_").split("best_")[-1],
        optimizer=optimizer,
        best_of=bool(m.group(3)),
        refine_seconds=REFINE_SECONDS if m.group(2) else 0.0,
        replicate=bool(m.group(1)),
        batch_size=cfg.batch_size,
    )


def evaluate_tasks(
    tasks: Sequence[Task],
    methods: Sequence[str],
    cost_net: CostNet,
    cfg: EvalConfig = EvalConfig(),
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Per task: {name, tables, devices, cap, results: {method: {...}}}, and when measured what
    the measurement did (`measurement`: kernels timed and looked up, where the time went)."""
    out = []
    placers: dict[tuple[str, str], Placer] = {}
    # every table's synthetic ids, generated once for the whole run (tables recur across tasks)
    inputs = InputCache(cfg.batch_size, cfg.device, seed=cfg.seed, row_cap=cfg.row_cap)
    for n_task, task in enumerate(tasks):
        t_task = time.perf_counter()
        topo = task.topology
        results: dict[str, dict[str, Any]] = {}
        placements: dict[str, Any] = {}
        for name in methods:
            key = (name, task.optimizer)
            if key not in placers:
                placers[key] = method_placer(name, task.optimizer, cfg)
            placer = placers[key]
            t0 = time.perf_counter()
            try:
                placement = placer.place(task.tables, topo)
                placement.validate(task.tables, topo, task.optimizer)
            except PlacementError as err:
                results[name] = {"feasible": False, "error": str(err)}
                continue
            plan_ms = (time.perf_counter() - t0) * 1e3
            est = cost_net.predict(task.tables, placement, topo)
            placements[name] = placement
            results[name] = {
                "feasible": True,
                "plan_ms": round(plan_ms, 2),
                "estimate_ms": round(est.total_ms, 4),
                "estimate_compute_ms": round(est.fwd_ms + est.bwd_ms, 4),
                "ranks": list(placement.ranks),
            }
        row: dict[str, Any] = {
            "task": task.name,
            "tables": len(task.tables),
            "devices": task.world_size,
            "cap_bytes": task.device_memory_bytes,
            "results": results,
        }
        if cfg.measure:
            timer = task_timer(task, cfg, inputs)
            if placements or cfg.bound:
                timer.prepare()  # every table's ids at once, in parallel
            if placements:
                measured = _measure_interleaved(task, placements, cost_net, cfg, n_task, timer)
                for name, cost in measured.items():
                    results[name].update(cost)
            if cfg.bound:
                row["bound"] = measure_bound(task, cost_net.comm_model, cfg, timer)
            timer.close()
            row["measurement"] = {
                **timer.stats().to_dict(),
                "seconds": round(time.perf_counter() - t_task, 3),
            }
        out.append(row)
        if progress is not None:
            progress(row)
    inputs.clear()
    return out


def task_timer(task: Task, cfg: EvalConfig, inputs: InputCache | None = None) -> DeviceTimer:
    """The DeviceTimer that measures a task's device table sets with cfg's settings."""
    return DeviceTimer(
        task.tables,
        cfg.batch_size,
        cfg.device,
        task.optimizer,
        cfg.warmup,
        cfg.iters,
        seed=cfg.seed,
        row_cap=cfg.row_cap,
        threads=cfg.threads,
        clock=cfg.clock,
        input_cache=inputs,
    )


def _measure_interleaved(
    task: Task,
    placements: dict[str, Any],
    cost_net: CostNet,
    cfg: EvalConfig,
    n_task: int,
    timer: DeviceTimer,
) -> dict[str, dict[str, Any]]:
    """Measure a task's distinct placements in cfg.rounds rounds, each in a fresh random order;
    per method the median over rounds of the step cost and of the slowest device's compute, the
    per-round totals and the spread (max - min) / median. Within a round a device table set is
    timed once (timer): placements that give a device the same tables share its timing."""
    rng = np.random.default_rng([cfg.seed, n_task])
    distinct: dict[tuple[int, ...], Any] = {}
    for p in placements.values():
        distinct.setdefault(p.ranks, p)
    keys = list(distinct)
    totals: dict[tuple[int, ...], list[float]] = {k: [] for k in keys}
    computes: dict[tuple[int, ...], list[float]] = {k: [] for k in keys}
    comm: dict[tuple[int, ...], float] = {}
    for _ in range(max(1, cfg.rounds)):
        timer.new_round()
        for i in rng.permutation(len(keys)):
            key = keys[int(i)]
            cost = measure_placement(
                task.tables,
                distinct[key],
                task.topology,
                cfg.batch_size,
                cfg.device,
                task.optimizer,
                cfg.warmup,
                cfg.iters,
                cost_net.comm_model,
                timer,
            )
            totals[key].append(cost.total_ms)
            computes[key].append(cost.fwd_ms + cost.bwd_ms)
            comm[key] = cost.comm_ms  # modeled: the same every round
    out = {}
    for name, p in placements.items():
        t, c = totals[p.ranks], computes[p.ranks]
        med = float(np.median(t))
        out[name] = {
            "measured_ms": round(med, 4),
            "measured_compute_ms": round(float(np.median(c)), 4),
            "measured_comm_ms": round(comm[p.ranks], 4),
            "measured_rounds_ms": [round(x, 4) for x in t],
            "measured_spread": round((max(t) - min(t)) / med, 4) if med > 0 else 0.0,
        }
    return out


def measure_bound(
    task: Task, comm_model: CommModel, cfg: EvalConfig, timer: DeviceTimer | None = None
) -> dict[str, Any]:
    """A measured lower bound on the step cost of any table-wise placement of the task.

    Compute. Every device runs one fused kernel over its tables. A fused kernel costs at least its
    heaviest table alone (monotone: adding tables adds work), so the slowest device costs at least
    the heaviest table of the task alone. For balance, the sum over devices of their costs is
    bounded from below in two ways, and the bound takes the smaller, so it holds whichever way
    fusion goes on this hardware:
    - if fusing is sub-additive (one launch instead of several), the devices together cost at
      least all tables fused as one kernel;
    - if the tables' work adds up (or fusing costs extra, e.g. cache misses of a larger working
      set: super-additive, which is what this CPU shows) and each kernel call pays an overhead of
      at most the cheapest table alone, they cost at least the sum of the tables alone minus
      (tables - devices) such overheads.
    The slowest device costs at least that sum / devices. Timed here: all tables as one kernel
    (median over cfg.rounds rounds) and every table alone (once), with timer (task_timer; given
    the one that timed the task's placements, the first fused timing and the singles join its
    last round, so a table that was a device alone there is looked up, not timed again).
    Communication: each rank receives every other rank's pooled output for its own samples, so
    the largest all-to-all moves at least local batch x total dim x (world - 1) / world values,
    whatever the placement (modeled with the same comm model as the placements).
    The bound is not attainable in general (it assumes perfect balance); it says how much room
    any placer, learned or not, has left above it."""
    tables = list(task.tables)
    world = task.world_size
    own = timer is None
    if timer is None:
        timer = task_timer(task, cfg)

    def compute_ms(group: Sequence[int]) -> float:
        t = timer.time(group)
        return t.fwd_ms + t.bwd_ms

    try:
        # in the timer's current round (the placements' last): a lone table of a placement's
        # device is looked up, not timed again
        alone = {t.name: compute_ms([i]) for i, t in enumerate(tables)}
        fused_rounds = [compute_ms(range(len(tables)))]
        for _ in range(max(1, cfg.rounds) - 1):
            timer.new_round()
            fused_rounds.append(compute_ms(range(len(tables))))
        fused = float(np.median(fused_rounds))
    finally:
        if own:
            timer.close()
            timer.input_cache.clear()
    heaviest = max(alone.values())
    overhead = min(alone.values())
    summed = sum(alone.values()) - max(0, len(tables) - world) * overhead
    balance = min(fused, summed) / world
    total_dim = sum(t.dim for t in tables)
    bpv = max(t.bytes_per_value for t in tables)
    min_bytes = (cfg.batch_size / world) * total_dim * (world - 1) / world * bpv
    comm_ms = 2 * comm_model.ms(min_bytes) if world > 1 else 0.0
    compute = max(balance, heaviest)
    return {
        "bound_ms": round(compute + comm_ms, 4),
        "bound_compute_ms": round(compute, 4),
        "bound_comm_ms": round(comm_ms, 4),
        "balance_ms": round(balance, 4),
        "all_fused_ms": round(fused, 4),
        "sum_alone_ms": round(sum(alone.values()), 4),
        "heaviest_alone_ms": round(heaviest, 4),
        "cheapest_alone_ms": round(overhead, 4),
        "singles_ms": {n: round(v, 4) for n, v in alone.items()},
        "binding": "heaviest table" if heaviest >= balance else "balance",
    }


def bound_summary(rows: Sequence[dict[str, Any]], methods: Sequence[str]) -> dict[str, Any]:
    """Per method: mean over tasks of measured cost / the task's lower bound (1.0 = no table-wise
    placer can do better); and how many tasks the heaviest table alone binds. The bound is of
    table-wise placements: a method that replicated a table on some task (dp_, torchrec_dp) is
    left out (replicas move no all-to-all and run at a rank's share of the batch)."""
    have = [r for r in rows if "bound" in r]
    out: dict[str, Any] = {"tasks": len(have), "methods": {}}
    if not have:
        return out
    out["heaviest_table_binds"] = sum(r["bound"]["binding"] == "heaviest table" for r in have)
    for m in methods:
        if any(REPLICATED in r["results"].get(m, {}).get("ranks", ()) for r in have):
            continue
        got = [
            r["results"][m]["measured_ms"] / r["bound"]["bound_ms"]
            for r in have
            if "measured_ms" in r["results"].get(m, {})
        ]
        if got:
            out["methods"][m] = round(float(np.mean(got)), 4)
    return out


def planning_times(
    methods: Sequence[str],
    cfg: EvalConfig,
    num_tables: int = 200,
    world_size: int = 16,
    repeats: int = 3,
) -> dict[str, Any]:
    """Median wall time of each method planning num_tables fresh tables on world_size devices
    (a pool drawn for this, seed 0, cap as the task generator sets it), one CPU thread."""
    pool = generate_pool(PoolConfig(num_tables=num_tables, seed=0))
    task = make_task(pool.tables, num_tables, world_size, seed=0)
    times: dict[str, Any] = {}
    for name in methods:
        placer = method_placer(name, task.optimizer, cfg)
        got = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            try:
                placer.place(task.tables, task.topology)
            except PlacementError:
                got = []
                break
            got.append((time.perf_counter() - t0) * 1e3)
        times[name] = round(float(np.median(got)), 1) if got else None
    return {"tables": num_tables, "devices": world_size, "median_ms": times}


# the cost net's mean error on the slowest device's compute, over the measured placements, above
# which `place eval` warns that the net does not describe the machine it measured on (the issue's
# 15% accuracy target; the shipped CPU net trained on a previous state of this VM was 33% off)
STALE_NET_ERROR = 0.15


def placement_error(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How far the cost net's estimates are from the measurements, over every distinct measured
    placement (methods that found the same placement count once): mean relative error of the step
    cost and of the slowest device's compute (the part the net predicts; comm is modeled), and
    compute_bias, the median of the compute estimate over the measurement (1: unbiased; 1.5:
    the net prices this machine's kernels half again too dear)."""
    seen: dict[tuple[str, tuple[int, ...]], tuple[float, float, float, float]] = {}
    for row in rows:
        for r in row["results"].values():
            if "measured_ms" in r:
                seen[(row["task"], tuple(r["ranks"]))] = (
                    r["estimate_ms"],
                    r["measured_ms"],
                    r["estimate_compute_ms"],
                    r["measured_compute_ms"],
                )
    if not seen:
        nan = float("nan")
        return {"placements": 0, "mre": nan, "compute_mre": nan, "compute_bias": nan}
    est, meas, c_est, c_meas = map(np.array, zip(*seen.values()))
    return {
        "placements": len(seen),
        "mre": round(float(np.mean(np.abs(est - meas) / meas)), 4),
        "compute_mre": round(float(np.mean(np.abs(c_est - c_meas) / c_meas)), 4),
        "compute_bias": round(float(np.median(c_est / c_meas)), 4),
    }


def stale_net_warning(error: dict[str, Any], net_hardware: str) -> str | None:
    """A warning when the cost net's compute estimates are more than STALE_NET_ERROR off the
    measured placements (placement_error's dict): the net was trained on other hardware, or on
    this machine in another state, so what it rates cheapest may not be; None otherwise."""
    if not error.get("placements") or not error["compute_mre"] > STALE_NET_ERROR:
        return None
    bias = error["compute_bias"]
    direction = "too dear" if bias > 1 else "too cheap"
    return (
        f"the cost net's compute estimates are {error['compute_mre']:.0%} off this machine's "
        f"measurements on average (median estimate / measured {bias:.2f}: it prices these "
        f"kernels {direction}); it was trained on {net_hardware}. Its placements may not be the "
        "cheapest here: measure samples on this machine (`recsearch place measure --pool ...`) "
        "and train a net on them (`recsearch place cost-net train`), docs/PLACEMENT.md, Reproduce"
    )


def measurement_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Totals of the tasks' `measurement` entries: device kernels timed and looked up (a table
    set timed earlier in the same round), tables whose inputs were generated, and the seconds
    spent generating inputs, building and timing kernels, and on the tasks altogether."""
    have = [r["measurement"] for r in rows if "measurement" in r]
    out: dict[str, Any] = {"tasks": len(have)}
    for k in ("kernels_timed", "kernels_looked_up", "tables_generated"):
        out[k] = sum(int(m[k]) for m in have)
    for k in ("inputs_s", "kernels_s", "seconds"):
        out[k] = round(sum(float(m[k]) for m in have), 3)
    return out


def summarize(rows: Sequence[dict[str, Any]], methods: Sequence[str], key: str) -> dict[str, Any]:
    """Per method: mean cost (key: measured_ms or estimate_ms), mean ratio to the best baseline
    method and to the per-task best baseline, wins, infeasible count, mean planning time.

    The best baseline method is the one with the lowest mean cost relative to the per-task best
    baseline, among the baselines with a result on every task (one that fails a task cannot be
    the method to beat); the per-task best is over the baselines with a result on that task.
    """
    base = [m for m in methods if m in BASELINES]
    complete = [m for m in base if rows and all(key in r["results"].get(m, {}) for r in rows)]
    per_method: dict[str, Any] = {}
    if not complete:
        return {"methods": per_method, "best_baseline": None, "tasks": 0}
    oracle = [min(r["results"][m][key] for m in base if key in r["results"].get(m, {})) for r in rows]
    rel = {
        m: float(np.mean([r["results"][m][key] / o for r, o in zip(rows, oracle)]))
        for m in complete
    }
    best = min(rel, key=rel.__getitem__)
    for m in methods:
        got = [(r, o) for r, o in zip(rows, oracle) if key in r["results"].get(m, {})]
        infeasible = sum(1 for r in rows if not r["results"].get(m, {}).get("feasible", False))
        plan = [r["results"][m]["plan_ms"] for r in rows if "plan_ms" in r["results"].get(m, {})]
        if not got:
            per_method[m] = {"tasks": 0, "infeasible": infeasible}
            continue
        vs_best = [r["results"][m][key] / r["results"][best][key] for r, _ in got]
        vs_oracle = [r["results"][m][key] / o for r, o in got]
        per_method[m] = {
            "tasks": len(got),
            "infeasible": infeasible,
            "mean_ms": round(float(np.mean([r["results"][m][key] for r, _ in got])), 3),
            "ratio_vs_best_baseline": round(float(np.mean(vs_best)), 4),
            "ratio_vs_task_best": round(float(np.mean(vs_oracle)), 4),
            "wins_vs_best_baseline": int(sum(v < 1 for v in vs_best)),
            "mean_plan_ms": round(float(np.mean(plan)), 2) if plan else None,
        }
    return {"methods": per_method, "best_baseline": best, "tasks": len(rows)}


@dataclass(frozen=True)
class EvalReport:
    """What run_eval found: per-task rows (every method's placement, estimate and, when measured,
    cost), summaries per cost key, the lower-bound summary, planning times and how far the cost
    net was from the measurements; with where and when it was measured."""

    methods: tuple[str, ...]
    config: EvalConfig
    rows: list[dict[str, Any]]
    summary: dict[str, dict[str, Any]]  # "estimate_ms" and (measured) "measured_ms" -> summarize()
    bound: dict[str, Any] | None
    planning: dict[str, Any] | None  # planning_times(), None when not timed
    placement_error: dict[str, Any] | None  # measured only
    measurement: dict[str, Any] | None  # measured only: measurement_summary()
    hardware: str
    load_average_before: tuple[float, float, float]
    load_average_after: tuple[float, float, float]
    elapsed_s: float

    @property
    def key(self) -> str:
        """The cost methods are ranked by: measured_ms when measured, else estimate_ms."""
        return "measured_ms" if self.config.measure else "estimate_ms"

    def to_dict(self, title: str, notes: Sequence[str]) -> dict[str, Any]:
        """The results JSON (and what render_markdown reads)."""
        cfg = self.config
        out: dict[str, Any] = {
            "title": title,
            "notes": list(notes),
            "methods": list(self.methods),
            "hardware": self.hardware,
            "config": {
                "batch_size": cfg.batch_size,
                "warmup": cfg.warmup,
                "iters": cfg.iters,
                "rounds": cfg.rounds,
                "clock": cfg.clock,
                "measure": cfg.measure,
                "device": cfg.device,
                "load_average_before": list(self.load_average_before),
                "load_average_after": list(self.load_average_after),
            },
            "summary": self.summary,
            "bound": self.bound,
            "planning_200": self.planning,
            "rows": self.rows,
        }
        if self.placement_error is not None:
            out["cost_net_placement_error"] = self.placement_error
        if self.measurement is not None:
            out["measurement"] = self.measurement
        return out


def run_eval(
    tasks: Sequence[Task],
    methods: Sequence[str],
    cost_net: CostNet,
    cfg: EvalConfig = EvalConfig(),
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> EvalReport:
    """Place every task with every method, estimate each placement with cost_net and, if
    cfg.measure, measure it on this machine (plus each task's lower bound if cfg.bound); then
    summarize. One torch thread. progress(row) is called after each task."""
    check_methods(methods)
    if not tasks:
        raise ValueError("no tasks to evaluate")
    if cfg.measure and cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA device is available (use --no-measure)")
    meta = cost_net.meta
    if meta is None:
        raise ValueError("the cost net has no metadata (was it trained?)")
    # TorchRec's planner warns on every call that its Topology was built directly: noise here
    logging.getLogger("torchrec.distributed.planner.types").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    rows = evaluate_tasks(tasks, methods, cost_net, cfg, progress)
    elapsed = time.perf_counter() - t0
    load_after = os.getloadavg()
    keys = ["estimate_ms"] + (["measured_ms"] if cfg.measure else [])
    summary = {k: summarize(rows, methods, k) for k in keys}
    if cfg.measure:
        hardware = hardware_string(cfg.device, 1, cfg.clock)
    else:
        hardware = f"estimates of {meta.hardware}"
    planning = planning_times(methods, cfg) if cfg.planning_timing else None
    return EvalReport(
        methods=tuple(methods),
        config=cfg,
        rows=rows,
        summary=summary,
        bound=bound_summary(rows, methods) if cfg.measure else None,
        planning=planning,
        placement_error=placement_error(rows) if cfg.measure else None,
        measurement=measurement_summary(rows) if cfg.measure else None,
        hardware=hardware,
        load_average_before=load_before,
        load_average_after=load_after,
        elapsed_s=elapsed,
    )
