"""Compare placers on held-out tasks by *measured* cost: `recsearch place eval`.

`recsearch place eval --tasks DIR [DIR ...] --methods round_robin ... learned learned_k16 --out results.json [--md docs/BENCHMARKS.md]`

For every task and method: the placement (planning time, feasibility), the cost network's
estimate, and unless --no-measure the real cost on this machine (`measure_placement`: every
device's fused FBGEMM kernel timed in turn; communication from the calibrated comm model, since
one 2-core machine cannot run 16 ranks' all-to-alls for real). The cost network is not the judge:
it is the model the learned placer optimizes, so ranking methods by it would flatter the learned
placer; it is reported beside the measurement to show how far to trust it on unseen tables.

Methods: the baselines of recsearch.placement.baselines (random, round_robin, size_greedy,
dim_greedy, lookup_greedy, size_lookup_greedy, torchrec), `learned` (greedy decoding of the
policy) and `learned_kK` (K sampled placements plus greedy, the cheapest under the cost net kept).

Measurement on a shared machine. A task's distinct placements are measured in --rounds rounds,
each round in a fresh random order, and every method gets the median over rounds: all methods of a
task see the same conditions, and a burst of other load hits one round of one method, not its
result. Kernels are timed with the clock the cost net's samples were (on CPU normally the kernel
thread's CPU time, which other processes' time slices do not inflate); the load average before and
after is recorded.

Summary: per method, the mean over tasks of cost / (cost of the best baseline *method*, the one
with the lowest mean cost relative to the per-task best baseline) and of cost / (cheapest baseline
on that task, a per-task oracle), so tasks of different sizes weigh the same.
With --md the results become the `place_eval` section (or --section) of that markdown file.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsearch import remote
from recsearch.placement.baselines import PLACERS, make_placer
from recsearch.placement.types import PlacementError, Placer

BASELINES = tuple(p for p in PLACERS if p != "learned")
_LEARNED = re.compile(r"^learned(?:_k(\d+))?$")


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 4096
    warmup: int = 3
    iters: int = 10
    measure: bool = True
    seed: int = 0
    threads: int = 1
    row_cap: int | None = None
    rounds: int = 3  # interleaved measurement rounds per task; medians over rounds
    clock: str = "thread"  # CPU kernel clock (measure.CLOCKS)
    bound: bool = True  # also measure the task's lower bound (measure_bound)


def method_placer(
    name: str, optimizer: str, cfg: EvalConfig, policy: str | None = None, device: str = "cpu"
) -> Placer:
    """A placer by method name; learned ones from --policy or the shipped policy for device,
    loaded here so that planning times do not include reading model files."""
    m = _LEARNED.match(name)
    if m:
        from recsearch.placement.policy import SHIPPED, LearnedPlacer

        k = int(m.group(1) or 0)
        return LearnedPlacer.load(
            policy or SHIPPED[device], samples=k, seed=cfg.seed, optimizer=optimizer
        )
    if name not in BASELINES:
        raise ValueError(
            f"unknown method {name!r}; known: {', '.join(BASELINES)}, learned, learned_kK"
        )
    kw = {"batch_size": cfg.batch_size} if name == "torchrec" else {}
    return make_placer(name, optimizer, cfg.seed, **kw)


def evaluate_tasks(
    tasks: Sequence[Any],
    methods: Sequence[str],
    cost_net: Any,
    cfg: EvalConfig = EvalConfig(),
    policy: str | None = None,
    device: str = "cpu",
    progress: Any = None,
) -> list[dict[str, Any]]:
    """Per task: {name, tables, devices, cap, results: {method: {...}}}."""
    out = []
    placers: dict[tuple[str, str], Placer] = {}
    for n_task, task in enumerate(tasks):
        topo = task.topology
        results: dict[str, dict[str, Any]] = {}
        placements: dict[str, Any] = {}
        for name in methods:
            key = (name, task.optimizer)
            if key not in placers:
                placers[key] = method_placer(name, task.optimizer, cfg, policy, device)
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
        if cfg.measure and placements:
            for name, cost in _measure_interleaved(task, placements, cost_net, cfg, device, n_task).items():
                results[name].update(cost)
        row = {
            "task": task.name,
            "tables": len(task.tables),
            "devices": task.world_size,
            "cap_bytes": task.device_memory_bytes,
            "results": results,
        }
        if cfg.measure and cfg.bound:
            row["bound"] = measure_bound(task, cost_net.comm_model, cfg, device)
        out.append(row)
        if progress is not None:
            progress(row)
    return out


def _measure_interleaved(
    task: Any,
    placements: dict[str, Any],
    cost_net: Any,
    cfg: EvalConfig,
    device: str,
    n_task: int,
) -> dict[str, dict[str, Any]]:
    """Measure a task's distinct placements in cfg.rounds rounds, each in a fresh random order;
    per method the median over rounds of the step cost and of the slowest device's compute, the
    per-round totals and the spread (max - min) / median."""
    from recsearch.placement.measure import measure_placement

    rng = np.random.default_rng([cfg.seed, n_task])
    distinct: dict[tuple[int, ...], Any] = {}
    for p in placements.values():
        distinct.setdefault(p.ranks, p)
    keys = list(distinct)
    totals: dict[tuple[int, ...], list[float]] = {k: [] for k in keys}
    computes: dict[tuple[int, ...], list[float]] = {k: [] for k in keys}
    comm: dict[tuple[int, ...], float] = {}
    for _ in range(max(1, cfg.rounds)):
        for i in rng.permutation(len(keys)):
            key = keys[int(i)]
            cost = measure_placement(
                task.tables,
                distinct[key],
                task.topology,
                cfg.batch_size,
                device,
                task.optimizer,
                cfg.warmup,
                cfg.iters,
                cost_net.comm_model,
                seed=cfg.seed,
                row_cap=cfg.row_cap,
                threads=cfg.threads,
                clock=cfg.clock,
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


def measure_bound(task: Any, comm_model: Any, cfg: EvalConfig, device: str) -> dict[str, Any]:
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
    (median over cfg.rounds) and every table alone (once).
    Communication: each rank receives every other rank's pooled output for its own samples, so
    the largest all-to-all moves at least local batch x total dim x (world - 1) / world values,
    whatever the placement (modeled with the same comm model as the placements).
    The bound is not attainable in general (it assumes perfect balance); it says how much room
    any placer, learned or not, has left above it."""
    from recsearch.placement.measure import time_device_kernel

    tables = list(task.tables)
    world = task.world_size
    kw = {"seed": cfg.seed, "row_cap": cfg.row_cap, "threads": cfg.threads, "clock": cfg.clock}

    def compute_ms(group: Sequence[Any]) -> float:
        t = time_device_kernel(
            group, cfg.batch_size, device, task.optimizer, cfg.warmup, cfg.iters, **kw
        )
        return t.fwd_ms + t.bwd_ms

    fused = float(np.median([compute_ms(tables) for _ in range(max(1, cfg.rounds))]))
    alone = {t.name: compute_ms([t]) for t in tables}
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
    """Per method: mean over tasks of measured cost / the task's lower bound (1.0 = no placer can
    do better); and how many tasks the heaviest table alone binds."""
    have = [r for r in rows if "bound" in r]
    out: dict[str, Any] = {"tasks": len(have), "methods": {}}
    if not have:
        return out
    out["heaviest_table_binds"] = sum(r["bound"]["binding"] == "heaviest table" for r in have)
    for m in methods:
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
    policy: str | None = None,
    device: str = "cpu",
    num_tables: int = 200,
    world_size: int = 16,
    repeats: int = 3,
) -> dict[str, Any]:
    """Median wall time of each method planning num_tables fresh tables on world_size devices
    (a pool drawn for this, seed 0, cap as the task generator sets it), one CPU thread."""
    from recsearch.placement.tables import PoolConfig, generate_pool, make_task

    pool = generate_pool(PoolConfig(num_tables=num_tables, seed=0))
    task = make_task(pool.tables, num_tables, world_size, seed=0)
    times: dict[str, Any] = {}
    for name in methods:
        placer = method_placer(name, task.optimizer, cfg, policy, device)
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


def placement_error(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How far the cost net's estimates are from the measurements, over every distinct measured
    placement (methods that found the same placement count once): mean relative error of the step
    cost and of the slowest device's compute (the part the net predicts; comm is modeled)."""
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
        return {"placements": 0, "mre": float("nan"), "compute_mre": float("nan")}
    est, meas, c_est, c_meas = map(np.array, zip(*seen.values()))
    return {
        "placements": len(seen),
        "mre": round(float(np.mean(np.abs(est - meas) / meas)), 4),
        "compute_mre": round(float(np.mean(np.abs(c_est - c_meas) / c_meas)), 4),
    }


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


def task_ratios(
    row: dict[str, Any], method: str, best_baseline: str | None, key: str
) -> tuple[float | None, float | None]:
    """(cost / best baseline method's, cost / the task's cheapest baseline) of one method on one
    task; None where either side has no result."""
    results = row["results"]
    mine = results.get(method, {}).get(key)
    base = [r[key] for m, r in results.items() if m in BASELINES and key in r]
    if mine is None or not base:
        return None, None
    best = results.get(best_baseline or "", {}).get(key)
    return (mine / best if best else None), mine / min(base)


def render_markdown(report: dict[str, Any]) -> str:
    """The benchmark section: settings, summary per method, per-task table with the learned
    methods' ratios to the best baseline method and to the task's cheapest baseline."""
    methods = report["methods"]
    lines = [f"## {report['title']}", ""]
    lines += [f"- {line}" for line in report["notes"]]
    lines.append("")
    for label, key in (("measured", "measured_ms"), ("cost-net estimate", "estimate_ms")):
        s = report["summary"].get(key)
        if not s or not s["tasks"]:
            continue
        lines.append(
            f"**Summary, {label} cost** ({s['tasks']} tasks; best baseline method: "
            f"`{s['best_baseline']}`; ratio < 1 is cheaper):"
        )
        lines.append("")
        lines.append(
            "| method | mean cost (ms) | cost / best baseline | cost / per-task best baseline "
            "| tasks cheaper than best baseline | infeasible | mean planning time (ms) |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|---:|")
        for m in methods:
            v = s["methods"].get(m, {})
            if not v.get("tasks"):
                lines.append(f"| {m} | - | - | - | - | {v.get('infeasible', '-')} | - |")
                continue
            lines.append(
                f"| {m} | {v['mean_ms']:.3f} | {v['ratio_vs_best_baseline']:.3f} | "
                f"{v['ratio_vs_task_best']:.3f} | {v['wins_vs_best_baseline']}/{v['tasks']} | "
                f"{v['infeasible']} | {v['mean_plan_ms']} |"
            )
        lines.append("")
    bound = report.get("bound")
    if bound and bound.get("tasks"):
        lines.append(
            f"**Room left: measured cost / the task's lower bound** (mean over {bound['tasks']} "
            "tasks; 1.000 would be a perfect placement; the bound, measured per task, is the "
            "larger of the heaviest table alone and a perfectly balanced share of all tables' "
            "work, plus the least possible all-to-all (`measure_bound` in placement/evaluate.py); "
            f"the heaviest table alone binds on {bound['heaviest_table_binds']} of them): "
            + ", ".join(f"{m} {v:.3f}" for m, v in bound["methods"].items())
        )
        lines.append("")
    err = report.get("cost_net_placement_error")
    if err and err.get("placements"):
        lines.append(
            f"**Cost net vs measurement** over the {err['placements']} distinct placements above "
            f"(tables the net never saw): mean relative error {err['mre']:.1%} of the step cost, "
            f"{err['compute_mre']:.1%} of the slowest device's compute."
        )
        lines.append("")
    timing = report.get("planning_200")
    if timing:
        lines.append(
            f"**Planning time**, {timing['tables']} tables on {timing['devices']} devices "
            f"(median of 3, one CPU thread, ms): "
            + ", ".join(f"{m} {v}" for m, v in timing["median_ms"].items())
        )
        lines.append("")
    measured = any("measured_ms" in r for row in report["rows"] for r in row["results"].values())
    key = "measured_ms" if measured else "estimate_ms"
    best = (report["summary"].get(key) or {}).get("best_baseline")
    learned = [m for m in methods if _LEARNED.match(m)]
    unit = "measured ms (cost-net estimate)" if measured else "cost-net estimate, ms"
    has_bound = any("bound" in row for row in report["rows"])
    lines.append(
        f"**Per task**, {unit}; x = infeasible"
        + ("; lower bound: measured, * where the heaviest table alone binds" if has_bound else "")
        + (
            f"; last columns: learned cost / `{best}` (best baseline method) and / the task's "
            "cheapest baseline"
            if learned and best
            else ""
        )
        + ":"
    )
    lines.append("")
    ratio_heads = [f"{m} / {h}" for m in learned for h in ("best", "task best")] if best else []
    bound_heads = ["lower bound"] if has_bound else []
    heads = [*methods, *bound_heads, *ratio_heads]
    lines.append("| task | tables | devices | " + " | ".join(heads) + " |")
    lines.append("|---|---:|---:|" + "---:|" * len(heads))
    for row in report["rows"]:
        cells = []
        for m in methods:
            r = row["results"].get(m, {})
            if not r.get("feasible"):
                cells.append("x")
            elif measured and "measured_ms" in r:
                cells.append(f"{r['measured_ms']:.2f} ({r['estimate_ms']:.2f})")
            else:
                cells.append(f"{r['estimate_ms']:.3f}")
        if has_bound:
            b = row.get("bound")
            star = "*" if b and b["binding"] == "heaviest table" else ""
            cells.append(f"{b['bound_ms']:.2f}{star}" if b else "-")
        if ratio_heads:
            for m in learned:
                vs_best, vs_task = task_ratios(row, m, best, key)
                cells += [f"{v:.3f}" if v is not None else "-" for v in (vs_best, vs_task)]
        lines.append(
            f"| {row['task']} | {row['tables']} | {row['devices']} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="recsearch place eval", description="Compare placers on tasks by measured cost."
    )
    parser.add_argument("--tasks", nargs="+", required=True, help="task files or directories")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=[*BASELINES, "learned", "learned_k16"],
        help="baselines, learned, learned_kK",
    )
    parser.add_argument("--out", required=True, help="results JSON")
    parser.add_argument("--cost-net", help="cost net prefix (default: the shipped one for --device)")
    parser.add_argument("--policy", help="policy prefix (default: the shipped one for --device)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--batch-size", type=int, help="global batch (default: the one the cost net predicts)"
    )
    parser.add_argument("--warmup", type=int, default=EvalConfig.warmup)
    parser.add_argument("--iters", type=int, default=EvalConfig.iters)
    parser.add_argument("--rounds", type=int, default=EvalConfig.rounds, help="interleaved rounds")
    parser.add_argument(
        "--clock",
        choices=("wall", "thread"),
        help="CPU kernel clock (default: the one the cost net's samples were timed with)",
    )
    parser.add_argument("--no-measure", action="store_true", help="cost-net estimates only")
    parser.add_argument(
        "--no-bound",
        dest="bound",
        action="store_false",
        help="skip measuring each task's lower bound (all tables fused, heaviest tables alone)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0, help="first N tasks only (0: all)")
    parser.add_argument(
        "--no-timing",
        dest="timing",
        action="store_false",
        help="skip timing every method on a fresh 200-table, 16-device task",
    )
    parser.add_argument("--md", help="markdown file to write the section into")
    parser.add_argument("--section", default="place_eval")
    parser.add_argument("--title", default="Embedding-table placement")
    parser.add_argument("--note", action="append", default=[], help="extra line for the notes")
    args = parser.parse_args(argv)
    args.argv_list = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(args)
    except (FileNotFoundError, ValueError, PlacementError) as err:
        print(f"recsearch place eval: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    import logging

    import torch

    # TorchRec's planner warns on every call that its Topology was built directly: noise here
    logging.getLogger("torchrec.distributed.planner.types").setLevel(logging.ERROR)

    from recsearch.placement.cost_net import CostNet, load_shipped
    from recsearch.placement.measure import clock_of, hardware_string
    from recsearch.placement.tables import load_tasks

    for m in args.methods:
        if not _LEARNED.match(m) and m not in BASELINES:
            raise ValueError(
                f"unknown method {m!r}; known: {', '.join(BASELINES)}, learned, learned_kK"
            )
    tasks = [t for path in args.tasks for t in load_tasks(path)]
    if not tasks:
        raise ValueError(f"no task files in {args.tasks}")
    if args.limit:
        tasks = tasks[: args.limit]
    cost_net = CostNet.load(args.cost_net) if args.cost_net else load_shipped(args.device)
    meta = cost_net.meta
    assert meta is not None
    measure = not args.no_measure
    if measure and args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA device is available (use --no-measure)")
    batch = args.batch_size or meta.batch_size
    if batch != meta.batch_size:
        print(
            f"note: the cost net predicts batch {meta.batch_size}, measuring at {batch}",
            file=sys.stderr,
        )
    clock = args.clock or clock_of(meta.hardware)
    cfg = EvalConfig(
        batch,
        args.warmup,
        args.iters,
        measure,
        args.seed,
        rounds=args.rounds,
        clock=clock,
        bound=args.bound,
    )
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    t0 = time.perf_counter()

    def progress(row: dict[str, Any]) -> None:
        shown = "  ".join(
            f"{m} {r.get('measured_ms', r.get('estimate_ms')):.2f}"
            for m, r in row["results"].items()
            if r.get("feasible")
        )
        print(f"[{time.perf_counter() - t0:6.0f} s] {row['task']}: {shown}", flush=True)

    rows = evaluate_tasks(tasks, args.methods, cost_net, cfg, args.policy, args.device, progress)
    elapsed = time.perf_counter() - t0
    load_after = os.getloadavg()
    keys = ["estimate_ms"] + (["measured_ms"] if measure else [])
    summary = {k: summarize(rows, args.methods, k) for k in keys}
    comm = cost_net.comm_model
    if measure:
        hardware = hardware_string(args.device, 1, clock)
        clock_text = (
            "the kernel thread's CPU time (time.thread_time: what the kernel costs on a core of "
            "its own; other processes' time slices on this shared machine are not counted)"
            if clock == "thread" and args.device == "cpu"
            else ("CUDA events" if args.device == "cuda" else "wall time")
        )
        notes = [
            f"hardware: {hardware}, measured {time.strftime('%Y-%m-%d')}; load average "
            f"(1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after",
            f"tasks: {len(tasks)} from {', '.join(args.tasks)}; global batch {batch}; each "
            f"device's fused kernel (forward + backward with the fused {tasks[0].optimizer} "
            f"update) timed by {clock_text}, median of {args.iters} iterations after "
            f"{args.warmup} warm-up; {cfg.rounds} rounds per task, methods in a fresh random "
            "order each round, median over rounds",
            f"communication (all-to-all of pooled embeddings and gradients) is modeled, not "
            f"measured: {comm.source}, {comm.latency_ms} ms + bytes / "
            f"{comm.bytes_per_ms:,.0f} B/ms per all-to-all",
        ]
    else:
        hardware = f"estimates of {meta.hardware}"
        notes = [
            f"NOT measured: estimates of the cost network trained on {meta.hardware} "
            f"(batch {meta.batch_size}); communication {comm.source}, {comm.latency_ms} ms + "
            f"bytes / {comm.bytes_per_ms:,.0f} B/ms",
            f"tasks: {len(tasks)} from {', '.join(args.tasks)}",
        ]
    notes += [
        f"cost net: {args.cost_net or 'shipped for ' + args.device}; policy: "
        f"{args.policy or 'shipped for ' + args.device}",
        f"command: `recsearch place eval {' '.join(_quote(a) for a in args.argv_list)}` "
        f"({elapsed / 60:.1f} min)",
        *args.note,
    ]
    timing = planning_times(args.methods, cfg, args.policy, args.device) if args.timing else None
    if timing:
        print(
            f"planning {timing['tables']} tables on {timing['devices']} devices (median ms): "
            + ", ".join(f"{m} {v}" for m, v in timing["median_ms"].items())
        )
    report: dict[str, Any] = {
        "title": args.title,
        "notes": notes,
        "methods": list(args.methods),
        "hardware": hardware,
        "config": {
            "batch_size": batch,
            "warmup": args.warmup,
            "iters": args.iters,
            "rounds": cfg.rounds,
            "clock": clock,
            "measure": measure,
            "device": args.device,
            "load_average_before": list(load_before),
            "load_average_after": list(load_after),
        },
        "summary": summary,
        "bound": bound_summary(rows, args.methods) if measure else None,
        "planning_200": timing,
        "rows": rows,
    }
    key = "measured_ms" if measure else "estimate_ms"
    if measure:
        report["cost_net_placement_error"] = placement_error(rows)
        e = report["cost_net_placement_error"]
        print(
            f"cost net vs measurement over {e['placements']} placements: mean relative error "
            f"{e['mre']:.1%} (slowest device's compute {e['compute_mre']:.1%})"
        )
    out = Path(args.out)
    remote.write_text(out, json.dumps(report, indent=1) + "\n")
    s = summary[key]
    print(f"best baseline method ({key}): {s['best_baseline']}")
    for m, v in s["methods"].items():
        if v.get("tasks"):
            print(
                f"  {m:<19} cost / best baseline {v['ratio_vs_best_baseline']:.3f}  "
                f"/ per-task best {v['ratio_vs_task_best']:.3f}  infeasible {v['infeasible']}  "
                f"plan {v['mean_plan_ms']} ms"
            )
        else:
            print(f"  {m:<19} no results (infeasible {v['infeasible']})")
    if args.md:
        _write_section(Path(args.md), args.section, render_markdown(report))
        print(f"wrote section {args.section} of {args.md}")
    print(f"wrote {out}")
    return 0


def _quote(a: str) -> str:
    return a if re.fullmatch(r"[\w./:=@+-]+", a) else json.dumps(a)


def _write_section(md_path: Path, name: str, body: str) -> None:
    from recsearch.benchmd import write_section

    write_section(md_path, name, body)


if __name__ == "__main__":
    raise SystemExit(main())
