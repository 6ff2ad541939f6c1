"""Planner benchmark: LearnedShardingPlanner at production scale, and what keeping the best of
the learned and the baseline placements (under the learned placer's own cost net) costs and buys.

    python tools/bench_planner.py [--tables 500] [--devices 64] [--repeats 3] [--out-md docs/BENCHMARKS.md]

1. Scale: --tables tables drawn from the synthetic pool generator (PoolConfig seed 7: log-normal
   rows, dims 4..256) plus --giants tables of 10M, 15M, ... rows x dim 128 that fit no device, in one
   EmbeddingBagCollection on the meta device, planned for --devices ranks whose cap is 1.5 x an
   even share of all tables' memory (weights + rowwise_adagrad state) on cpu and on cuda
   (the cuda policy and cost net; the EBC sharder offers row-wise there, not on cpu). Timed:
   LearnedShardingPlanner.plan() end to end (caps, split, placement, ShardingPlan), the median of
   --repeats after one cold call (which loads the policy and cost net, reported apart), with the
   default placer (learned, best of learned and 5 baselines) and with the learned policy alone.
   Then LearnedShardingPlanner(data_parallel=True) against the default on the same tables (cpu),
   at --dp-devices and --devices ranks: what trying to replicate small tables costs, and how
   many candidate sets were screened and how many placed by the learned stack.
2. Best-of on the held-out task sets (recsearch/placement/data/tasks_test on cpu, tasks_h100 on
   cuda): per task the cost net's estimate of the learned placement and of the cheapest baseline
   placement, how often a baseline was kept, and the extra planning time.

One thread (torch.set_num_threads(1)); wall clock. The section between the bench_planner markers
of --out-md is rewritten.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

if __package__ in (None, ""):  # run as `python tools/bench_planner.py`: make recsearch importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder  # noqa: E402
from torchrec.modules.embedding_configs import EmbeddingBagConfig  # noqa: E402
from torchrec.modules.embedding_modules import EmbeddingBagCollection  # noqa: E402

from recsearch import benchmd  # noqa: E402
from recsearch.placement.replicate import ReplicationReport  # noqa: E402
from recsearch.placement.plan import LearnedShardingPlanner  # noqa: E402
from recsearch.placement.policy import ShippedLearnedPlacer  # noqa: E402
from recsearch.placement.registry import learned_or_better  # noqa: E402
from recsearch.placement.tables import PoolConfig, generate_pool, load_tasks  # noqa: E402
from recsearch.placement.types import table_memory_bytes  # noqa: E402
from recsearch.types import TableSpec, Topology  # noqa: E402

SECTION = "bench_planner"
DATA = Path(__file__).resolve().parents[1] / "recsearch" / "placement" / "data"


def scale_tables(n: int, giants: int) -> list[TableSpec]:
    pool = generate_pool(PoolConfig(num_tables=n, seed=7))
    tables = [replace(t, name=f"t{i}", feature_names=(f"f{i}",)) for i, t in enumerate(pool.tables)]
    for g in range(giants):
        rows = 10_000_000 + 5_000_000 * g
        tables.append(TableSpec(f"giant{g}", rows, 128, pooling_factor=20.0, feature_names=(f"g{g}",)))
    return tables


def ebc_of(tables: list[TableSpec]) -> EmbeddingBagCollection:
    return EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(
                name=t.name, embedding_dim=t.dim, num_embeddings=t.num_rows, feature_names=list(t.features)
            )
            for t in tables
        ],
        device=torch.device("meta"),
    )


def time_plan(planner: LearnedShardingPlanner, module: torch.nn.Module, repeats: int) -> tuple[float, list[float]]:
    sharders = [EmbeddingBagCollectionSharder()]
    start = time.perf_counter()
    planner.plan(module, sharders)
    cold = time.perf_counter() - start
    warm = []
    for _ in range(repeats):
        start = time.perf_counter()
        planner.plan(module, sharders)
        warm.append(time.perf_counter() - start)
    return cold, warm


def scale_rows(args: argparse.Namespace) -> list[str]:
    tables = scale_tables(args.tables, args.giants)
    module = ebc_of(tables)
    small = [t for t in tables if not t.name.startswith("giant")]
    total = sum(table_memory_bytes(t) for t in tables)
    cap = int(1.5 * total / args.devices)
    assert all(table_memory_bytes(t) < cap for t in small)
    rows = [
        f"{len(tables)} tables ({args.giants} of 10M-{10 + 5 * (args.giants - 1)}M rows x 128, larger than one "
        f"device), {total / 2**30:.1f} GiB with rowwise_adagrad state, on {args.devices} devices of "
        f"{cap / 2**30:.2f} GiB:",
        "",
        "| device | placer | cold (s) | planning, median of "
        f"{args.repeats} (s) | min-max (s) | tables split | pieces placed | chosen |",
        "|---|---|---:|---:|---:|---|---:|---|",
    ]
    for device in ("cpu", "cuda"):
        topology = Topology(args.devices, cap, device)
        for label, placer in (
            ("learned (best of learned + 5 baselines, refined)", "learned"),
            ("learned policy alone", ShippedLearnedPlacer()),
        ):
            planner = LearnedShardingPlanner(topology=topology, placer=placer, debug=False)
            cold, warm = time_plan(planner, module, args.repeats)
            split = planner.last_split
            assert split is not None
            kinds = [
                f"{s.sharding_type} x{len(s.pieces) or args.devices}"
                for s in split.shardings
                if s.sharding_type != "table_wise"
            ]
            named = planner.placer_for(planner.last_optimizer)
            chosen = getattr(getattr(named, "placer", named), "last_choice", "-")
            rows.append(
                f"| {device} | {label} | {cold:.2f} | **{statistics.median(warm):.2f}** | "
                f"{min(warm):.2f}-{max(warm):.2f} | {len(kinds)}: {', '.join(kinds) or '-'} | {len(split.pieces)} | {chosen} |"
            )
            print(rows[-1], flush=True)
    return rows


def replication_rows(args: argparse.Namespace) -> list[str]:
    """What LearnedShardingPlanner(data_parallel=True) costs in planning time: the default
    planner and the replicating one on the same tables (cpu), at --devices and --dp-devices
    ranks. The replicating placer screens each distinct set of tables under 0.25-2 x the global
    batch / world rows with dim_greedy and reruns best-of + refine for at most the two the
    screen rates cheapest, of those it rates cheaper than not replicating (replicate.py)."""
    tables = scale_tables(args.tables, args.giants)
    module = ebc_of(tables)
    total = sum(table_memory_bytes(t) for t in tables)
    rows = [
        "| devices | planner | candidate sets | screened cheaper | placed by the learned stack | "
        f"planning, median of {args.repeats} (s) | min-max (s) | tables replicated |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for devices in (args.dp_devices, args.devices):
        topology = Topology(devices, int(1.5 * total / devices), "cpu")
        for label, dp in (("default", False), ("data_parallel=True", True)):
            planner = LearnedShardingPlanner(topology=topology, data_parallel=dp, debug=False)
            _cold, warm = time_plan(planner, module, args.repeats)
            assert planner.last_placement is not None
            report = getattr(planner.placer_for(planner.last_optimizer), "last_report", None)
            if dp:
                assert isinstance(report, ReplicationReport)
                counts = f"{report.sets} | {report.promising} | {report.placed}"
            else:
                counts = "- | - | -"
            rows.append(
                f"| {devices} | {label} | {counts} | **{statistics.median(warm):.2f}** | "
                f"{min(warm):.2f}-{max(warm):.2f} | {len(planner.last_placement.replicated)} |"
            )
            print(rows[-1], flush=True)
    return rows


def best_of_rows() -> list[str]:
    rows = [
        "| task set | device | tasks | baseline kept | learned / cheapest baseline (estimate) | "
        "chosen / cheapest baseline | refined / cheapest baseline | planning: learned alone, mean (ms) | "
        "best-of, mean (ms) | best-of + refine, mean (ms) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for folder, device in (("tasks_test", "cpu"), ("tasks_h100", "cuda")):
        tasks = load_tasks(DATA / folder)
        placer = learned_or_better()  # the planner's default: best-of, then refined
        best_of = placer.placer
        learned_ratio, chosen_ratio, refined_ratio, kept = [], [], [], 0
        alone_ms, best_ms, total_ms = [], [], []
        for task in tasks:
            topology = Topology(task.world_size, task.device_memory_bytes, device)
            placer.place(task.tables, topology)  # warm (loads the policy once)
            start = time.perf_counter()
            final = placer.place(task.tables, topology)
            total_ms.append(1000 * (time.perf_counter() - start))
            start = time.perf_counter()
            best_of.place(task.tables, topology)  # the same best-of again, timed alone
            best_ms.append(1000 * (time.perf_counter() - start))
            cands = {c.name: c for c in best_of.last_candidates}
            learned = cands["learned"]
            alone_ms.append(1000 * learned.plan_seconds)
            base = min(c.estimate_ms for n, c in cands.items() if n != "learned" and c.estimate_ms is not None)
            chosen = cands[best_of.last_choice].estimate_ms
            assert learned.estimate_ms is not None and chosen is not None
            refined = placer.cost_net(topology).predict(task.tables, final, topology).total_ms
            learned_ratio.append(learned.estimate_ms / base)
            chosen_ratio.append(chosen / base)
            refined_ratio.append(refined / base)
            kept += best_of.last_choice != "learned"
        rows.append(
            f"| {folder} | {device} | {len(tasks)} | {kept} | {statistics.mean(learned_ratio):.3f} "
            f"(worst {max(learned_ratio):.3f}) | {statistics.mean(chosen_ratio):.3f} (worst {max(chosen_ratio):.3f}) | "
            f"{statistics.mean(refined_ratio):.3f} (worst {max(refined_ratio):.3f}) | "
            f"{statistics.mean(alone_ms):.0f} | {statistics.mean(best_ms):.0f} | {statistics.mean(total_ms):.0f} |"
        )
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", type=int, default=500)
    parser.add_argument("--giants", type=int, default=4)
    parser.add_argument("--devices", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dp-devices", type=int, default=8,
                        help="also time data_parallel=True at this many devices (and at --devices)")
    parser.add_argument("--out-md", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    scale = scale_rows(args)
    replication = replication_rows(args)
    best = best_of_rows()
    command = "python tools/bench_planner.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    body = "\n".join(
        [
            "## Planner at scale, and best-of (bench_planner)",
            "",
            f"`{command}` ({date.today().isoformat()}, {platform.processor() or platform.machine()}, "
            f"1 thread, torch {torch.__version__}; a 2-core machine shared with other work). "
            "Planning time is LearnedShardingPlanner.plan() end to end: caps, split of the tables too "
            "big for a device, placement, TorchRec ShardingPlan.",
            "",
            *scale,
            "",
            "LearnedShardingPlanner(data_parallel=True), which may replicate small tables, against "
            "the default planner on the same tables (cpu, TorchRec's default per-rank batch; "
            "candidate sets: the distinct sets of tables it tries replicating, each placed by "
            "dim_greedy (the screen); screened cheaper: those the screen rates cheaper than its "
            "own table-wise placement; placed by the learned stack: how many of those, at most "
            "the two cheapest, the learned stack (policy, best-of, refine) places besides every "
            "table; last plan call):",
            "",
            *replication,
            "",
            "Best-of under the learned placer's own cost net (estimates, not measurements) on the "
            "held-out task sets; a baseline is kept when the net rates it cheaper than the learned "
            "placement:",
            "",
            *best,
        ]
    )
    if args.out_md:
        benchmd.write_section(args.out_md, SECTION, body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
