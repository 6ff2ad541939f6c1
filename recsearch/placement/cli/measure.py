"""`recsearch place measure`: collect cost samples from a pool, measure one placement of a task,
or calibrate the communication model (recsearch.placement.measure / comm)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from recsearch.placement.cli import run_reporting
from recsearch.placement.comm import DEFAULT_COMM, CommModel, calibrate_comm
from recsearch.placement.hardware import hardware_string
from recsearch.placement.measure import (
    CLOCKS,
    CollectConfig,
    collect_samples,
    collected_indices,
    measure_placement,
)
from recsearch.placement.registry import PLACERS, placer_for_batch
from recsearch.placement.tables import load_task
from recsearch.placement.types import (
    DEFAULT_OPTIMIZER,
    OPTIMIZER_STATE,
    CostSample,
    load_placement,
    placement_summary,
)
from recsearch.tables import load_tables
from recsearch.types import Topology


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="recsearch place measure", description="Measure real embedding lookup costs."
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--pool", help="table file to draw random table sets from (collect samples)")
    mode.add_argument("--task", help="task file whose placement to measure (with --placement)")
    mode.add_argument("--calibrate-comm", metavar="OUT", help="fit the gloo comm model, write JSON")
    parser.add_argument("--samples", type=int, default=100, help="with --pool: samples to collect")
    parser.add_argument(
        "--minutes",
        type=float,
        help="--pool: start no sample after this many minutes (the one under way is finished and "
        "written); rerun the same command to continue",
    )
    parser.add_argument(
        "--reuse-inputs",
        action="store_true",
        help="--pool: generate each pool table's ids once and reuse them in every sample holding "
        "it (faster; the default draws a sample's ids afresh)",
    )
    parser.add_argument(
        "--out", help="--pool: samples JSONL (appended, resumable); --task: cost JSON"
    )
    parser.add_argument("--placement", help="--task: placement file, or a baseline placer name")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=8192, help="global batch")
    parser.add_argument(
        "--optimizer",
        default=None,
        choices=sorted(OPTIMIZER_STATE),
        help=f"default: the task's, else {DEFAULT_OPTIMIZER}",
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads per kernel (0: torch's default)"
    )
    parser.add_argument("--min-tables", type=int, default=1)
    parser.add_argument("--max-tables", type=int, default=32)
    parser.add_argument("--row-cap", type=int, help="allocate at most this many rows per table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--comm",
        default="model",
        choices=("model", "measure"),
        help="--task: model comm from bytes, or time it with one gloo process per rank",
    )
    parser.add_argument("--comm-model", help="CommModel JSON from --calibrate-comm")
    parser.add_argument(
        "--clock",
        default="wall",
        choices=CLOCKS,
        help="CPU: wall time, or the kernel thread's CPU time (robust to other load; threads=1)",
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "recsearch place measure: --device cuda but no CUDA device is available",
            file=sys.stderr,
        )
        return 2
    return run_reporting("recsearch place measure", lambda: _run(args, parser))


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    threads = args.threads or None
    if args.calibrate_comm:
        model = calibrate_comm(iters=args.iters)
        model.save(args.calibrate_comm)
        print(
            f"gloo loopback all-to-all: latency {model.latency_ms:.3f} ms, "
            f"bandwidth {model.bytes_per_ms / 1e6:.3f} GB/s ({model.bytes_per_ms:,.0f} bytes/ms)"
        )
        for b, t in model.points:
            print(f"  {b:>12,} bytes  {t:8.3f} ms  (model {model.ms(b):8.3f})")
        print(f"wrote {args.calibrate_comm}")
        return 0
    if args.pool:
        if not args.out:
            parser.error("--pool needs --out")
        pool = load_tables(args.pool)
        cfg = CollectConfig(
            batch_size=args.batch_size,
            device=args.device,
            optimizer=args.optimizer or DEFAULT_OPTIMIZER,
            warmup=args.warmup,
            iters=args.iters,
            min_tables=args.min_tables,
            max_tables=args.max_tables,
            threads=threads,
            row_cap=args.row_cap,
            seed=args.seed,
            clock=args.clock,
            reuse_inputs=args.reuse_inputs,
            extra={"pool": str(args.pool)},
        )
        budget_s = None if args.minutes is None else args.minutes * 60
        try:
            taken = collect_samples(
                pool, args.samples, args.out, cfg, progress=not args.no_progress, budget_s=budget_s
            )
        except KeyboardInterrupt:  # every sample written so far is whole: a rerun continues
            have = sum(i < args.samples for i in collected_indices(args.out, args.seed))
            print(
                f"interrupted: {have} of the {args.samples} wanted in {args.out}; rerun the same "
                "command to continue",
                file=sys.stderr,
            )
            return 130
        have = sum(i < args.samples for i in collected_indices(args.out, args.seed))
        print(f"{taken} new samples; {have} of the {args.samples} wanted in {args.out}")
        if have < args.samples and args.minutes is not None:
            print(f"stopped by the {args.minutes} min budget: rerun the same command to continue")
        return 0
    return _measure_task(args, threads)


def _measure_task(args: argparse.Namespace, threads: int | None) -> int:
    if not args.placement:
        raise ValueError(
            "--task needs --placement (a placement file or one of: " + ", ".join(PLACERS) + ")"
        )
    task = load_task(args.task)
    optimizer = args.optimizer or task.optimizer
    topo = Topology(task.world_size, task.device_memory_bytes, args.device)
    if args.placement in PLACERS:
        placer = placer_for_batch(args.placement, optimizer, args.seed, args.batch_size)
        placement = placer.place(task.tables, topo)
    else:
        placement = load_placement(args.placement, task.tables, task.world_size)
    comm: CommModel | str = (
        "measure"
        if args.comm == "measure"
        else (CommModel.load(args.comm_model) if args.comm_model else DEFAULT_COMM[args.device])
    )
    cost = measure_placement(
        task.tables,
        placement,
        topo,
        args.batch_size,
        args.device,
        optimizer,
        args.warmup,
        args.iters,
        comm,
        seed=args.seed,
        row_cap=args.row_cap,
        threads=threads,
        clock=args.clock,
    )
    print(
        f"{task.name} / {args.placement}: total {cost.total_ms:.3f} ms = slowest device "
        f"(fwd {cost.fwd_ms:.3f} + bwd {cost.bwd_ms:.3f}) + comm {cost.comm_ms:.3f}"
    )
    for s, d in zip(placement_summary(placement, task.tables, optimizer), cost.per_device):
        print(
            f"  rank {s['rank']:>2}: {s['tables']:>3} tables, dims {s['dim_sum']:>5}, "
            f"fwd {d.fwd_ms:8.3f}  bwd {d.bwd_ms:8.3f}  comm {d.comm_ms:7.3f} ms"
        )
    if args.out:
        sample = CostSample(
            tables=task.tables,
            batch_size=args.batch_size,
            cost=cost,
            placement=placement,
            hardware=hardware_string(args.device, threads, args.clock),
            optimizer=optimizer,
            device=args.device,
            extra={
                "task": task.name,
                "placement": args.placement,
                "comm": args.comm,
                "warmup": args.warmup,
                "iters": args.iters,
            },
        )
        Path(args.out).write_text(json.dumps(sample.to_dict(), indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
