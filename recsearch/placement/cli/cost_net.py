"""`recsearch place cost-net train|eval`: fit the placement cost network on measured samples
(JSONL from `recsearch place measure`) or report a trained net's errors
(recsearch.placement.cost_net)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from recsearch.placement.cli import run_reporting
from recsearch.placement.comm import CommModel
from recsearch.placement.cost_net import (
    ADDITIVE_MODES,
    CostNet,
    CostNetShape,
    Errors,
    TrainConfig,
    fwd_step_dims_for_batch,
    split_by_tables,
)
from recsearch.placement.samples import read_samples
from recsearch.placement.types import CostSample


def _read_all(paths: Sequence[str]) -> list[CostSample]:
    out: list[CostSample] = []
    for p in paths:
        if not Path(p).exists():
            raise FileNotFoundError(f"samples file {p} does not exist")
        got = read_samples(p)
        if not got:
            raise ValueError(f"samples file {p} has no samples")
        out.extend(got)
    return out


def _fwd_step_dims(value: str, samples: Sequence[CostSample]) -> int:
    """--fwd-step-dims: a whole number, or "auto": the sum(dim) at which a device's fp32 pooled
    output (batch x sum(dim) x 4 bytes) reaches 32 MiB, glibc's largest mmap threshold (2048 at
    batch 4096; see CostNetShape.fwd_step_dims)."""
    if value == "auto":
        batches = sorted({s.batch_size for s in samples})
        if len(batches) != 1:
            raise ValueError(f"--fwd-step-dims auto: samples mix batch sizes {batches}")
        return fwd_step_dims_for_batch(batches[0])
    try:
        return int(value)
    except ValueError:
        msg = f"--fwd-step-dims must be a whole number or 'auto', got {value!r}"
        raise ValueError(msg) from None


def _train_main(args: argparse.Namespace) -> int:
    samples = _read_all(args.samples)
    cfg = TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        threads=args.threads,
    )
    comm = CommModel.load(args.comm_model) if args.comm_model else None
    shape = CostNetShape(
        args.hidden,
        args.embed,
        args.members,
        args.additive,
        bound=args.bound,
        fwd_step_dims=_fwd_step_dims(args.fwd_step_dims, samples),
        linear_work=args.linear_work,
    )
    report: dict[str, Any] = {}
    if args.holdout_tables:
        names = {t.name for s in samples for t in s.tables}
        splits = []
        for k in range(args.holdout_splits):
            seen, unseen, held = split_by_tables(samples, args.holdout_tables, args.seed + k)
            probe = CostNet(shape, cfg, comm)
            probe.fit(seen)
            err = probe.evaluate(unseen)
            print(
                f"unseen-table split {k} (seed {args.seed + k}): {len(held)} of {len(names)} "
                f"tables held out; trained on {len(seen)} samples without them, tested on "
                f"{len(unseen)} samples with them: {err.line()}"
            )
            splits.append(
                {
                    "seed": args.seed + k,
                    "held_out_tables": held,
                    "train_samples": len(seen),
                    "errors": asdict(err),
                }
            )
        mean = {
            key: float(np.mean([sp["errors"][key] for sp in splits]))
            for key in ("fwd", "bwd", "total")
        }
        print(
            f"  held-out placements of unseen tables, mean of {len(splits)} split(s): MRE fwd "
            f"{mean['fwd']:.2%}  bwd {mean['bwd']:.2%}  fwd+bwd {mean['total']:.2%}"
        )
        report["unseen_tables_split"] = {
            "holdout_fraction": args.holdout_tables,
            "splits": splits,
            "mean_errors": mean,
        }
    model = CostNet(shape, cfg, comm)
    model.fit(samples)
    val = model.metrics.get("val")
    print(
        f"trained {model.metrics['members']} member(s) on {model.metrics['samples']} device "
        f"samples ({model.metrics['fit_seconds']} s, best epoch {model.metrics['best_epoch']})"
    )
    if val:
        print(f"  random held-out samples (out of bag): {Errors(**val).line()}")
    for path in args.test_samples or ():
        test = _read_all([path])
        err = model.evaluate(test)
        unseen = {t.name for s in test for t in s.tables} - set(model.meta.tables_seen)  # type: ignore[union-attr]
        print(f"  {path} ({len(unseen)} tables never seen in training): {err.line()}")
        report.setdefault("test", {})[path] = {"errors": asdict(err), "unseen_tables": len(unseen)}
    model.metrics = {**model.metrics, **report}
    pt, js = model.save(args.out)
    print(f"wrote {pt} and {js}")
    return 0


def _eval_main(args: argparse.Namespace) -> int:
    model = CostNet.load(args.model)
    for path in args.samples:
        err = model.evaluate(_read_all([path]))
        print(f"{path}: {err.line()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="recsearch place cost-net", description="Train / evaluate the placement cost network."
    )
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("train", help="fit on measured samples (JSONL from `place measure`)")
    t.add_argument("--samples", nargs="+", required=True)
    t.add_argument("--out", required=True, help="writes OUT.pt and OUT.json")
    t.add_argument("--test-samples", nargs="*", help="samples to report errors on (unseen tables)")
    t.add_argument(
        "--holdout-tables",
        type=float,
        default=0.0,
        help="also report the error on samples with this share of tables never seen in training",
    )
    t.add_argument(
        "--holdout-splits", type=int, default=1, help="how many such splits (seeds seed, seed+1..)"
    )
    t.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    t.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay)
    t.add_argument("--lr", type=float, default=TrainConfig.lr)
    t.add_argument("--hidden", type=int, default=CostNetShape.hidden)
    t.add_argument("--embed", type=int, default=CostNetShape.embed)
    t.add_argument("--members", type=int, default=CostNetShape.members, help="ensemble size")
    t.add_argument(
        "--additive",
        default=CostNetShape.additive,
        choices=ADDITIVE_MODES,
        help="per-table positive contributions (table) or softplus of the device sum (device)",
    )
    t.add_argument(
        "--bound",
        type=float,
        default=CostNetShape.bound,
        help="interaction correction bound: exp(bound * tanh(head)) (default %(default)s)",
    )
    t.add_argument(
        "--fwd-step-dims",
        default=str(CostNetShape.fwd_step_dims),
        help="learned forward cost for devices whose tables' dims sum to at least this (the fp32 "
        "output reaching 32 MiB); 'auto' derives it from the samples' batch size; 0: off",
    )
    t.add_argument(
        "--linear-work",
        type=float,
        default=CostNetShape.linear_work,
        metavar="B",
        help="B > 0: price each table as a learned non-negative linear function of its work (bags, "
        "rows, values, uncached values/rows, width) times a factor exp(B tanh(.)) from its "
        "encoding: extrapolates to heavier tables than the samples hold "
        "(CostNetShape.linear_work); 0: off",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--comm-model", help="CommModel JSON (`place measure --calibrate-comm`)")
    e = sub.add_parser("eval", help="errors of a trained net on measured samples")
    e.add_argument("--model", required=True, help="prefix (or .pt/.json) of a trained net")
    e.add_argument("--samples", nargs="+", required=True)
    args = parser.parse_args(argv)
    run = _train_main if args.what == "train" else _eval_main
    return run_reporting(
        f"recsearch place cost-net {args.what}",
        lambda: run(args),
        (FileNotFoundError, ValueError, RuntimeError),
    )


if __name__ == "__main__":
    raise SystemExit(main())
