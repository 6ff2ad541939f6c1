"""Screened against full replication search on held-out tasks, judged by the cost net (no kernel
is timed).

    python tools/bench_replication_screen.py --work /work/lofo/run5 [--keep 1 2] [--out results.json]

For every task in WORK/tasks/<family>/*.json, with the policy trained without that family
(WORK/lofo/<family>/policy, and the cost net recorded beside it), `place eval`'s
dp_refined_best_learned as evaluate.method_placer builds it (replicate.ReplicatingPlacer around
the learned stack, with registry.REPLICATION_SCREEN as its screen: the learned stack places every
table and the --keep most promising candidate sets), against the same ReplicatingPlacer without
a screen (the learned stack places every table and every candidate set: the behaviour before
the screen). Per task and variant: the cost net's estimate of the result at --batch (the eval's
global batch; CostNet.predict(..., batch)), the tables replicated, the planning time (wall
clock, one thread) and what was screened and placed (ReplicationReport). Printed as a table and
a summary (ratio screened / full estimate: mean and worst; tasks that replicate a different
set, and whose placement is identical; mean planning time); --out writes every row as JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as `python tools/bench_replication_screen.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from recsearch.placement.evaluate import EvalConfig, method_placer  # noqa: E402
from recsearch.placement.replicate import ReplicatingPlacer  # noqa: E402
from recsearch.placement.tables import Task, load_tasks  # noqa: E402

METHOD = "dp_refined_best_learned"


@dataclass(frozen=True)
class Outcome:
    """One variant's result on one task: the cost net's estimate at the batch (ms), the
    placement's ranks (types.REPLICATED for a replica), the replicated tables' indices, planning
    seconds, candidate sets (that fit), how many the screen placed and how many the learned
    stack placed besides every table."""

    estimate_ms: float
    ranks: tuple[int, ...]
    replicated: tuple[int, ...]
    seconds: float
    sets: int
    screened: int
    placed: int


def run_variant(placer: ReplicatingPlacer, task: Task, batch: int) -> Outcome:
    topology = task.topology
    start = time.perf_counter()
    placement = placer.place(task.tables, topology)
    seconds = time.perf_counter() - start
    placement.validate(task.tables, topology, task.optimizer)
    net = placer.cost_net_for(topology)
    report = placer.last_report
    assert report is not None
    return Outcome(
        estimate_ms=float(net.predict(task.tables, placement, topology, batch).total_ms),
        ranks=placement.ranks,
        replicated=placement.replicated,
        seconds=seconds,
        sets=report.sets,
        screened=report.screened,
        placed=report.placed,
    )


def variants(policy: Path, optimizer: str, keeps: list[int], batch: int) -> dict[str, ReplicatingPlacer]:
    """'full' (no screen) and 'keepK' for every K: the same learned stack, net and policy."""
    cfg = EvalConfig(batch_size=batch, device="cpu", policy=str(policy))
    screened = method_placer(METHOD, optimizer, cfg)
    assert isinstance(screened, ReplicatingPlacer) and screened.screen is not None
    out = {}
    for keep in keeps:
        v = copy.copy(screened)
        v.screen_keep = keep
        out[f"keep{keep}"] = v
    full = copy.copy(screened)
    full.screen = None
    out["full"] = full
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="a tools/bench_place_families.py work folder")
    parser.add_argument("--keep", type=int, nargs="+", default=[1], help="screen_keep values to compare")
    parser.add_argument("--batch", type=int, default=EvalConfig().batch_size)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for family_dir in sorted((args.work / "tasks").iterdir()):
        family = family_dir.name
        for task in load_tasks(family_dir):
            policy = args.work / "lofo" / family / "policy"
            placers = variants(policy, task.optimizer, args.keep, args.batch)
            outcomes = {name: run_variant(p, task, args.batch) for name, p in placers.items()}
            rows.append({"task": task.name, "family": family, **{n: asdict(o) for n, o in outcomes.items()}})
            full = outcomes["full"]
            print(
                f"{task.name:28s} sets {full.sets} | full {full.estimate_ms:8.3f} ms rep {len(full.replicated):3d} "
                f"{full.seconds:5.2f} s | "
                + " | ".join(
                    f"{n} {o.estimate_ms / full.estimate_ms:.4f} rep {len(o.replicated):3d} placed {o.placed} "
                    f"{o.seconds:5.2f} s"
                    for n, o in outcomes.items()
                    if n != "full"
                ),
                flush=True,
            )
    print()
    for name in [f"keep{k}" for k in args.keep]:
        ratios = [r[name]["estimate_ms"] / r["full"]["estimate_ms"] for r in rows]
        differ = sum(r[name]["replicated"] != r["full"]["replicated"] for r in rows)
        same = sum(r[name]["ranks"] == r["full"]["ranks"] for r in rows)
        print(
            f"{name}: {len(rows)} tasks, estimate / full: mean {statistics.mean(ratios):.4f}, worst "
            f"{max(ratios):.4f}, best {min(ratios):.4f}; tasks replicating a different set: {differ}, "
            f"identical placements: {same}; "
            f"planning mean {statistics.mean(r[name]['seconds'] for r in rows):.3f} s against "
            f"{statistics.mean(r['full']['seconds'] for r in rows):.3f} s in full; learned-stack placements "
            f"besides all tables: {sum(r[name]['placed'] for r in rows)} against "
            f"{sum(r['full']['placed'] for r in rows)}"
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
