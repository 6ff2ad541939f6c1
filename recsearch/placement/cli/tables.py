"""`recsearch place tables pool|tasks|suite`: generate table pools and placement tasks
(recsearch.placement.tables)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from recsearch.cliargs import list_flag
from recsearch.placement.cli import run_reporting
from recsearch.placement.families import FamilySettings, family_names, save_family
from recsearch.placement.tables import (
    TEST_SHAPES,
    TRAIN_SHAPES,
    PoolConfig,
    Task,
    generate_pool,
    generate_tasks,
    save_pool,
    save_task,
    split_pool,
)
from recsearch.placement.types import (
    DEFAULT_OPTIMIZER,
    OPTIMIZER_STATE,
    format_bytes,
)
from recsearch.tables import read_table_file


def _pool_main(args: argparse.Namespace) -> int:
    cfg = PoolConfig(
        num_tables=args.num_tables,
        seed=args.seed,
        reuse_batch_size=args.reuse_batch_size,
        max_table_bytes=args.max_table_mb * 2**20,
    )
    pool = generate_pool(cfg)
    train, test = split_pool(pool, args.test_fraction, args.seed)
    out = Path(args.out_dir)
    for p in (train, test):
        save_pool(out / f"pool_{p.split}.json", p)
    sizes = [t.size_bytes for t in pool.tables]
    print(
        f"{len(pool.tables)} tables (seed {args.seed}): rows {min(t.num_rows for t in pool.tables):,}.."
        f"{max(t.num_rows for t in pool.tables):,}, weights {format_bytes(sum(sizes))} "
        f"(largest {format_bytes(max(sizes))}); reuse at batch {cfg.reuse_batch_size:,}"
    )
    print(
        f"wrote {out / 'pool_train.json'} ({len(train.tables)} tables), {out / 'pool_test.json'} ({len(test.tables)} tables)"
    )
    return 0


def _write_tasks(tasks: Sequence[Task], out_dir: Path) -> None:
    for task in tasks:
        save_task(out_dir / f"{task.name}.json", task)
    print(f"wrote {len(tasks)} tasks to {out_dir}")


def _tasks_main(args: argparse.Namespace) -> int:
    if len(args.tables) != len(args.devices):
        print(
            "recsearch place tables tasks: --tables and --devices need the same count",
            file=sys.stderr,
        )
        return 2
    pool, info = read_table_file(args.pool)
    tasks = generate_tasks(
        pool,
        list(zip(args.tables, args.devices)),
        args.num,
        args.seed,
        prefix=args.prefix,
        slack=args.slack,
        optimizer=args.optimizer,
        compute_device=args.compute_device,
        pool_name=str(args.pool),
        reuse_batch_size=info.get("batch_size"),
    )
    _write_tasks(tasks, Path(args.out_dir))
    return 0


def _suite_main(args: argparse.Namespace) -> int:
    root = Path(args.pool_dir)
    for split, shapes in (("train", TRAIN_SHAPES), ("test", TEST_SHAPES)):
        path = root / f"pool_{split}.json"
        pool, info = read_table_file(path)
        usable = [(t, d) for t, d in shapes if t <= len(pool)]
        tasks = generate_tasks(
            pool,
            usable,
            args.num,
            args.seed,
            slack=args.slack,
            optimizer=args.optimizer,
            compute_device=args.compute_device,
            pool_name=str(path),
            reuse_batch_size=info.get("batch_size"),
        )
        _write_tasks(tasks, root / "tasks" / split)
    return 0


def _families_main(args: argparse.Namespace) -> int:
    known = family_names()
    unknown = [f for f in args.families if f not in known]
    if unknown:
        raise ValueError(f"unknown table families {unknown}; known: {', '.join(known)}")
    settings = FamilySettings(seed=args.seed, max_table_bytes=args.max_table_mb * 2**20)
    for name in args.families:
        pool, tasks = save_family(args.out_dir, name, settings, args.compute_device)
        tables, _ = read_table_file(pool)
        print(f"{name:16} {len(tables):4} tables ({format_bytes(sum(t.size_bytes for t in tables))}) -> {pool}; "
              f"{len(tasks)} tasks in {tasks[0].parent if tasks else '-'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="recsearch place tables", description="Generate table pools and placement tasks."
    )
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("pool", help="generate a table pool split into disjoint train/test pools")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--num-tables", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-fraction", type=float, default=0.5)
    p.add_argument("--reuse-batch-size", type=int, default=PoolConfig.reuse_batch_size)
    p.add_argument("--max-table-mb", type=int, default=PoolConfig.max_table_bytes // 2**20)
    for name, helptext in (
        ("tasks", "draw tasks from one pool"),
        ("suite", "standard train/test task sets"),
    ):
        t = sub.add_parser(name, help=helptext)
        if name == "tasks":
            t.add_argument("--pool", required=True, help="table file (.json/.yaml/.csv)")
            t.add_argument("--tables", **list_flag(int), required=True, help="T per shape (comma-separated)")
            t.add_argument("--devices", **list_flag(int), required=True, help="D per shape (comma-separated)")
            t.add_argument("--out-dir", required=True)
            t.add_argument("--prefix", default="")
        else:
            t.add_argument(
                "--pool-dir", required=True, help="directory with pool_{train,test}.json"
            )
        t.add_argument("--num", type=int, default=10, help="tasks per shape")
        t.add_argument("--seed", type=int, default=0)
        t.add_argument("--slack", type=float, default=1.1, help="cap = total memory x slack / D")
        t.add_argument("--optimizer", default=DEFAULT_OPTIMIZER, choices=sorted(OPTIMIZER_STATE))
        t.add_argument("--compute-device", default="cpu", choices=("cpu", "cuda"))
    f = sub.add_parser("families", help="pools and held-out tasks of the table families (placement/families.py)")
    f.add_argument("--out-dir", required=True, help="writes OUT/pools/<family>.json and OUT/tasks/<family>/")
    f.add_argument("--families", **list_flag(str), default=list(family_names()),
                   help="comma-separated (default: all): " + ", ".join(family_names()))
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--max-table-mb", type=int, default=FamilySettings.max_table_bytes // 2**20,
                   help="cut rows so that no table's weights exceed this (CPU measurement)")
    f.add_argument("--compute-device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args(argv)
    run = {"pool": _pool_main, "tasks": _tasks_main, "suite": _suite_main, "families": _families_main}[args.what]
    return run_reporting(f"recsearch place tables {args.what}", lambda: run(args))


if __name__ == "__main__":
    raise SystemExit(main())
