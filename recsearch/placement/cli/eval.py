"""`recsearch place eval`: compare placers on tasks by measured cost (evaluate.run_eval), write
the results JSON and, with --md, the markdown section (eval_markdown.render_markdown)."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recsearch import remote
from recsearch.benchmd import write_section
from recsearch.cliargs import list_flag
from recsearch.placement.cli import run_reporting
from recsearch.placement.cost_net import CostNet, load_shipped
from recsearch.placement.eval_markdown import render_markdown
from recsearch.placement.evaluate import (
    BASELINES,
    EvalConfig,
    EvalReport,
    check_methods,
    run_eval,
    stale_net_warning,
)
from recsearch.placement.hardware import clock_of
from recsearch.placement.measure import CLOCKS
from recsearch.placement.tables import Task, load_tasks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="recsearch place eval", description="Compare placers on tasks by measured cost."
    )
    parser.add_argument("--tasks", nargs="+", required=True, help="task files or directories")
    parser.add_argument(
        "--methods",
        **list_flag(str),
        default=[*BASELINES, "learned", "learned_k16"],
        help="comma-separated: baselines (torchrec_dp: TorchRec's planner allowed data_parallel), learned, learned_kK; best_ and refined_ in front of a learned one; dp_ in front of either or of a baseline: small tables replicated where the cost net says it pays (see docs/PLACEMENT.md)",
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
        choices=CLOCKS,
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
    parser.add_argument(
        "--row-cap",
        type=int,
        help="allocate at most this many rows per table (ids drawn within it; for quick checks)",
    )
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
    argv_list = list(sys.argv[1:] if argv is None else argv)
    return run_reporting("recsearch place eval", lambda: _run(args, argv_list))


def _run(args: argparse.Namespace, argv_list: list[str]) -> int:
    check_methods(args.methods)
    tasks = [t for path in args.tasks for t in load_tasks(path)]
    if not tasks:
        raise ValueError(f"no task files in {args.tasks}")
    if args.limit:
        tasks = tasks[: args.limit]
    cost_net = CostNet.load(args.cost_net) if args.cost_net else load_shipped(args.device)
    meta = cost_net.meta
    if meta is None:
        raise ValueError("the cost net has no metadata (was it trained?)")
    batch = args.batch_size or meta.batch_size
    if batch != meta.batch_size:
        print(
            f"note: the cost net predicts batch {meta.batch_size}, measuring at {batch}",
            file=sys.stderr,
        )
    cfg = EvalConfig(
        batch_size=batch,
        warmup=args.warmup,
        iters=args.iters,
        measure=not args.no_measure,
        seed=args.seed,
        rounds=args.rounds,
        clock=args.clock or clock_of(meta.hardware),
        bound=args.bound,
        device=args.device,
        policy=args.policy,
        planning_timing=args.timing,
        row_cap=args.row_cap,
    )
    t0 = time.perf_counter()

    def progress(row: dict[str, Any]) -> None:
        shown = "  ".join(
            f"{m} {r.get('measured_ms', r.get('estimate_ms')):.2f}"
            for m, r in row["results"].items()
            if r.get("feasible")
        )
        m = row.get("measurement")
        kernels = (
            f"  ({m['kernels_timed']} kernels timed, {m['kernels_looked_up']} looked up, "
            f"{m['seconds']:.1f} s)"
            if m
            else ""
        )
        print(f"[{time.perf_counter() - t0:6.0f} s] {row['task']}: {shown}{kernels}", flush=True)

    report = run_eval(tasks, args.methods, cost_net, cfg, progress)
    notes = _notes(report, cost_net, tasks, args, argv_list)
    if report.planning:
        timing = report.planning
        print(
            f"planning {timing['tables']} tables on {timing['devices']} devices (median ms): "
            + ", ".join(f"{m} {v}" for m, v in timing["median_ms"].items())
        )
    if report.placement_error is not None:
        e = report.placement_error
        print(
            f"cost net vs measurement over {e['placements']} placements: mean relative error "
            f"{e['mre']:.1%} (slowest device's compute {e['compute_mre']:.1%}, median estimate / "
            f"measured {e['compute_bias']:.2f})"
        )
        warning = stale_net_warning(e, meta.hardware)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
            notes.append(f"warning: {warning}")
    if report.measurement is not None:
        m = report.measurement
        print(
            f"device kernels: {m['kernels_timed']} timed, {m['kernels_looked_up']} looked up; "
            f"inputs of {m['tables_generated']} tables generated in {m['inputs_s']:.1f} s, "
            f"kernels built and timed in {m['kernels_s']:.1f} s, tasks {m['seconds']:.1f} s"
        )
    as_dict = report.to_dict(args.title, notes)
    out = Path(args.out)
    remote.write_text(out, json.dumps(as_dict, indent=1) + "\n")
    key = report.key
    s = report.summary[key]
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
        write_section(Path(args.md), args.section, render_markdown(as_dict))
        print(f"wrote section {args.section} of {args.md}")
    print(f"wrote {out}")
    return 0


def _notes(
    report: EvalReport,
    cost_net: CostNet,
    tasks: Sequence[Task],
    args: argparse.Namespace,
    argv_list: Sequence[str],
) -> list[str]:
    """The section's notes: where and how it was measured (or that it was not), the inputs, the
    command that made it."""
    cfg = report.config
    comm = cost_net.comm_model
    meta = cost_net.meta
    assert meta is not None
    if cfg.measure:
        clock_text = (
            "the kernel thread's CPU time (time.thread_time: what the kernel costs on a core of "
            "its own; other processes' time slices on this shared machine are not counted)"
            if cfg.clock == "thread" and cfg.device == "cpu"
            else ("CUDA events" if cfg.device == "cuda" else "wall time")
        )
        notes = [
            f"hardware: {report.hardware}, measured {time.strftime('%Y-%m-%d')}; load average "
            f"(1 min) {report.load_average_before[0]:.1f} before, "
            f"{report.load_average_after[0]:.1f} after",
            f"tasks: {len(tasks)} from {', '.join(args.tasks)}; global batch {cfg.batch_size}; "
            f"each device's fused kernel (forward + backward with the fused {tasks[0].optimizer} "
            f"update) timed by {clock_text}, median of {cfg.iters} iterations after "
            f"{cfg.warmup} warm-up; {cfg.rounds} rounds per task, methods in a fresh random "
            "order each round, median over rounds",
            f"communication (all-to-all of pooled embeddings and gradients) is modeled, not "
            f"measured: {comm.source}, {comm.latency_ms} ms + bytes / "
            f"{comm.bytes_per_ms:,.0f} B/ms per all-to-all",
        ]
        if report.measurement is not None:
            m = report.measurement
            notes.append(
                f"device kernels: {m['kernels_timed']} timed, {m['kernels_looked_up']} looked up "
                "(a device given the same tables as one timed earlier in the round); each "
                "table's ids generated once and reused by every method, round and task"
            )
    else:
        notes = [
            f"NOT measured: estimates of the cost network trained on {meta.hardware} "
            f"(batch {meta.batch_size}); communication {comm.source}, {comm.latency_ms} ms + "
            f"bytes / {comm.bytes_per_ms:,.0f} B/ms",
            f"tasks: {len(tasks)} from {', '.join(args.tasks)}",
        ]
    return notes + [
        f"cost net: {args.cost_net or 'shipped for ' + args.device}; policy: "
        f"{args.policy or 'shipped for ' + args.device}",
        f"command: `recsearch place eval {' '.join(_quote(a) for a in argv_list)}` "
        f"({report.elapsed_s / 60:.1f} min)",
        *args.note,
    ]


def _quote(a: str) -> str:
    return a if re.fullmatch(r"[\w./:=@+-]+", a) else json.dumps(a)


if __name__ == "__main__":
    raise SystemExit(main())
