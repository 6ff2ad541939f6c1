"""`recsearch place policy train|place`: train the actor-critic placer on a cost network's
estimated MDP, or place a task with a trained (or the shipped) policy
(recsearch.placement.policy)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from recsearch.cliargs import list_flag
from recsearch.placement.cli import EXPECTED_ERRORS, run_reporting
from recsearch.placement.cost_net import CostNet, model_paths
from recsearch.placement.policy import (
    LearnedPlacer,
    PolicyShape,
    PPOConfig,
    load_shipped,
    train_policy,
    training_tasks_from_pools,
)
from recsearch.placement.tables import load_task
from recsearch.placement.types import placement_summary, save_placement
from recsearch.tables import load_tables


def _train_main(args: argparse.Namespace) -> int:
    cost_net = CostNet.load(args.cost_net)
    pools = [load_tables(p) for p in args.pool]
    cfg = PPOConfig(
        iters=args.iters,
        episodes=args.episodes,
        lr=args.lr,
        seed=args.seed,
        threads=args.threads,
        max_seconds=args.minutes * 60,
        max_tables=args.max_tables,
        devices=tuple(args.devices),
        monotone=args.monotone,
        num_tasks=args.num_tasks,
    )
    t0 = time.perf_counter()
    tasks = training_tasks_from_pools(pools, cfg)
    print(
        f"{len(tasks)} training tasks from {', '.join(args.pool)} ({sum(map(len, pools))} tables; devices "
        f"{sorted({t.world_size for _, t in tasks})}) in {time.perf_counter() - t0:.1f} s"
    )
    placer, info = train_policy(cost_net, tasks, cfg, PolicyShape(args.hidden), log=print)
    out = Path(args.out)
    cn_path = model_paths(args.cost_net)[0].with_suffix("")  # the cost net's prefix
    try:
        ref = os.path.relpath(cn_path.resolve(), out.resolve().parent)
    except ValueError:
        ref = str(cn_path.resolve())
    placer.info = {**info, "pool": args.pool[0] if len(args.pool) == 1 else list(args.pool)}
    pt, js = placer.save(out, ref)
    print(f"trained {info['iters_done']} PPO iterations in {info['train_seconds']} s; wrote {pt}, {js}")
    return 0


def _place_main(args: argparse.Namespace) -> int:
    task = load_task(args.task)
    if args.policy:
        placer = LearnedPlacer.load(args.policy, samples=args.samples, seed=args.seed, optimizer=task.optimizer)
    else:
        placer = load_shipped(task.compute_device, args.samples, args.seed, task.optimizer)
    t0 = time.perf_counter()
    placement = placer.place(task.tables, task.topology)
    ms = (time.perf_counter() - t0) * 1e3
    est = placer.cost_net.predict(task.tables, placement, task.topology)
    print(
        f"{task.name}: {len(task.tables)} tables on {task.world_size} devices placed in {ms:.0f} ms; "
        f"cost-net estimate {est.total_ms:.3f} ms (compute {est.fwd_ms + est.bwd_ms:.3f} + comm "
        f"{est.comm_ms:.3f})"
    )
    for s in placement_summary(placement, task.tables, task.optimizer):
        print(
            f"  rank {s['rank']:>2}: {s['tables']:>3} tables, dims {s['dim_sum']:>5}, "
            f"{s['memory_bytes'] / task.device_memory_bytes:6.1%} of cap"
        )
    if args.out:
        save_placement(
            args.out, placement, task.tables, task=task.name, placer="learned",
            samples=args.samples, estimate_ms=est.total_ms,
        )
        print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="recsearch place policy", description="Train / apply the actor-critic placer."
    )
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("train", help="PPO on the cost network's estimated MDP")
    t.add_argument("--cost-net", required=True, help="trained cost net prefix")
    t.add_argument("--pool", nargs="+", required=True,
                   help="table file(s) to draw training tasks from; several: the tasks are shared out, each from one file")
    t.add_argument("--out", required=True, help="writes OUT.pt and OUT.json")
    t.add_argument("--iters", type=int, default=PPOConfig.iters)
    t.add_argument("--episodes", type=int, default=PPOConfig.episodes)
    t.add_argument("--minutes", type=float, default=0.0, help="stop after this long (0: no limit)")
    t.add_argument("--lr", type=float, default=PPOConfig.lr)
    t.add_argument("--hidden", type=int, default=PolicyShape.hidden)
    t.add_argument("--max-tables", type=int, default=PPOConfig.max_tables)
    t.add_argument("--devices", **list_flag(int), default=list(PPOConfig.devices),
                   help="device counts to train on, comma-separated (default: %(default)s)")
    t.add_argument("--num-tasks", type=int, default=PPOConfig.num_tasks)
    t.add_argument(
        "--monotone",
        action="store_true",
        help="train on each device's running max of the cost net's estimates (not the raw one)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("place", help="place a task's tables with a trained policy")
    p.add_argument("--task", required=True)
    p.add_argument("--policy", help="policy prefix (default: the shipped one for the task's device)")
    p.add_argument("--samples", type=int, default=0, help="K sampled placements besides greedy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="placement JSON for `recsearch train plan=...`")
    args = parser.parse_args(argv)
    run = _train_main if args.what == "train" else _place_main
    return run_reporting(
        f"recsearch place policy {args.what}", lambda: run(args), (*EXPECTED_ERRORS, RuntimeError)
    )


if __name__ == "__main__":
    raise SystemExit(main())
