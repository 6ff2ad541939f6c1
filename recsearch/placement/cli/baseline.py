"""`recsearch place baseline --task TASK.json [--placer ...] [--out-dir DIR]`: place a task's
tables with baseline placers (any name in registry.PLACERS) and print memory and lookup balance."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recsearch.cliargs import list_flag
from recsearch.placement.registry import BASELINES, PLACERS, placer_for_batch
from recsearch.placement.tables import load_task
from recsearch.placement.types import (
    PlacementError,
    format_bytes,
    placement_summary,
    save_placement,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="recsearch place baseline", description="Place a task's tables with baseline placers."
    )
    parser.add_argument("--task", required=True, help="task file (recsearch place tables tasks)")
    parser.add_argument(
        "--placer",
        **list_flag(str, PLACERS),
        default=list(BASELINES),
        help=f"comma-separated, each one of {', '.join(PLACERS)} (default: the baselines)",
    )
    parser.add_argument("--seed", type=int, default=0, help="for random")
    parser.add_argument("--batch-size", type=int, default=8192, help="global batch (torchrec)")
    parser.add_argument("--out-dir", help="write <task>.<placer>.json placement files here")
    args = parser.parse_args(argv)
    try:
        task = load_task(args.task)
    except (FileNotFoundError, ValueError) as err:
        print(f"recsearch place baseline: {err}", file=sys.stderr)
        return 2
    topo = task.topology
    print(
        f"{task.name}: {len(task.tables)} tables on {topo.world_size} x {topo.compute_device}, "
        f"cap {format_bytes(topo.device_memory_bytes)} ({task.optimizer})"
    )
    status = 0
    for name in args.placer:
        try:
            placer = placer_for_batch(name, task.optimizer, args.seed, args.batch_size)
            placement = placer.place(task.tables, topo)
            placement.validate(task.tables, topo, task.optimizer)
        except PlacementError as err:
            print(f"  {name:<19} failed: {err}")
            status = 1
            continue
        summary = placement_summary(placement, task.tables, task.optimizer)
        mem = max(s["memory_bytes"] for s in summary) / topo.device_memory_bytes
        lookups = [s["lookup_dims"] for s in summary]
        print(
            f"  {name:<19} max mem {mem:5.1%} of cap, lookup-dims per rank "
            f"max {max(lookups):,.0f} / mean {sum(lookups) / len(lookups):,.0f}"
        )
        if args.out_dir:
            path = Path(args.out_dir) / f"{task.name}.{name}.json"
            save_placement(path, placement, task.tables, task=task.name, placer=name)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
