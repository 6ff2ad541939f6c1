"""Logistic regression on the same data and splits as `recsearch train`: the floor a DLRM must
clear to be worth its embeddings and MLPs.

    recsearch baseline logreg --data DIR [--out DIR/logreg] [--epochs 1] [--batch-size 1024]
                              [--lr 0.05] [--l2 0] [--max-rows-per-table N] [--eval-rows N]

The model is p(click) = sigmoid(b + w . dense + sum_t v_t[id_t]): one weight per dense feature and
one per categorical value (the classic one-hot logistic regression for CTR), with ids wrapped into
the same table sizes the trainer uses. Adagrad (sparse updates for the id weights), like the
trainer's default optimizers. It writes `result.json` ({"status", "metrics": {"val"|"test": auc,
log_loss, accuracy, rows}, "bayes", "train_seconds", "config"}) in the output directory, and prints
val/test AUC beside the data's Bayes ceiling when the data is synthetic.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recsearch import remote
from recsearch.data.dataset import dataset_meta
from recsearch.data.loader import read_split_arrays
from recsearch.model.dlrm import table_rows
from recsearch.train.metrics import MetricAccumulator
from recsearch.train.result import SplitMetrics, TrainResult
from recsearch.types import MAX_SEED, RESULT_FILE, SettingsError, check_int, check_number, check_table_sizes


@dataclass(frozen=True)
class LogRegConfig:
    data_dir: str
    output_dir: str
    epochs: int = 1
    batch_size: int = 1024
    lr: float = 0.05
    l2: float = 0.0  # weight decay on the dense weights and, per touched row, on the id weights
    max_rows_per_table: int | None = None
    num_embeddings_per_feature: tuple[int, ...] | None = None  # as `recsearch train`'s key
    train_rows: int | None = None
    eval_rows: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        problems: list[str] = []
        check_int(problems, "epochs", self.epochs, 1)
        check_int(problems, "batch_size", self.batch_size, 1)
        check_number(problems, "lr", self.lr, above=0)
        check_number(problems, "l2", self.l2, minimum=0)
        for key in ("max_rows_per_table", "train_rows", "eval_rows"):
            check_int(problems, key, getattr(self, key), 1, optional=True)
        check_int(problems, "seed", self.seed, 0, maximum=MAX_SEED)
        check_table_sizes(problems, "num_embeddings_per_feature", self.num_embeddings_per_feature)
        if problems:
            raise SettingsError(problems)


class LogisticRegression(nn.Module):
    """Bias + dense weights + one weight per (table, id), the id weights in one flat table."""

    def __init__(self, rows_per_table: list[int], num_dense: int):
        super().__init__()
        self.dense = nn.Linear(num_dense, 1)
        self.ids = nn.Embedding(sum(rows_per_table), 1, sparse=True)
        nn.init.zeros_(self.ids.weight)
        nn.init.zeros_(self.dense.weight)
        starts = np.concatenate([[0], np.cumsum(rows_per_table)[:-1]]).astype(np.int64)
        self.register_buffer("table_starts", torch.from_numpy(starts), persistent=False)

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """dense [B, 13], ids [B, 26] already wrapped into each table -> logits [B]."""
        return self.dense(dense).squeeze(1) + self.ids(ids + self.table_starts).sum(dim=(1, 2))


def _wrapped(sparse: np.ndarray, rows: list[int]) -> torch.Tensor:
    return torch.from_numpy(sparse.astype(np.int64) % np.asarray(rows, dtype=np.int64))


def evaluate(model: LogisticRegression, dense: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor,
             batch_size: int) -> SplitMetrics:
    acc = MetricAccumulator(torch.device("cpu"))
    with torch.no_grad():
        for lo in range(0, len(labels), batch_size):
            acc.update(model(dense[lo : lo + batch_size], ids[lo : lo + batch_size]), labels[lo : lo + batch_size])
    return acc.compute()


def train(cfg: LogRegConfig) -> TrainResult:
    torch.manual_seed(cfg.seed)
    meta = dataset_meta(cfg.data_dir, cfg.num_embeddings_per_feature)
    if meta.multi_hot_sizes is not None:
        raise ValueError(f"{cfg.data_dir}: multi-hot data is not supported by the logistic-regression baseline")
    rows = table_rows(meta.num_embeddings_per_feature, cfg.max_rows_per_table)
    dense_np, sparse_np, labels_np = read_split_arrays(cfg.data_dir, "train", cfg.train_rows, meta)
    dense, ids = torch.from_numpy(dense_np), _wrapped(sparse_np, rows)
    labels = torch.from_numpy(labels_np.astype(np.float32))
    model = LogisticRegression(rows, dense.shape[1])
    dense_opt = torch.optim.Adagrad(model.dense.parameters(), lr=cfg.lr, weight_decay=cfg.l2)
    id_opt = torch.optim.Adagrad(model.ids.parameters(), lr=cfg.lr)
    loss_fn = nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(cfg.seed)
    started = time.perf_counter()
    steps = 0
    last_loss = math.nan
    for _epoch in range(cfg.epochs):
        order = torch.randperm(len(labels), generator=generator)
        for lo in range(0, len(labels), cfg.batch_size):
            rows_idx = order[lo : lo + cfg.batch_size]
            batch_ids = ids[rows_idx]
            loss = loss_fn(model(dense[rows_idx], batch_ids), labels[rows_idx])
            if cfg.l2:  # L2 on the id weights this batch touched (the sparse form of weight decay)
                loss = loss + cfg.l2 * model.ids(batch_ids + model.table_starts).pow(2).sum() / len(rows_idx)
            dense_opt.zero_grad(set_to_none=True)
            id_opt.zero_grad(set_to_none=True)
            loss.backward()
            dense_opt.step()
            id_opt.step()
            steps += 1
            if steps % 200 == 0:
                last_loss = float(loss.detach())
                if not math.isfinite(last_loss):
                    raise FloatingPointError(f"loss is {last_loss} at step {steps}; lower --lr")
    train_seconds = time.perf_counter() - started
    metrics = {}
    for split in ("val", "test"):
        d, s, y = read_split_arrays(cfg.data_dir, split, cfg.eval_rows, meta)
        metrics[split] = evaluate(model, torch.from_numpy(d), _wrapped(s, rows),
                                  torch.from_numpy(y.astype(np.float32)), 8192)
    return TrainResult(
        status="completed",
        model="logistic_regression",
        config=dataclasses.asdict(cfg),
        metrics=metrics,
        bayes={k: dataclasses.asdict(v) for k, v in meta.bayes.items()},
        steps=steps,
        train_rows=len(labels),
        train_seconds=round(train_seconds, 3),
        last_loss=last_loss,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="recsearch baseline logreg", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset directory (npy layout)")
    p.add_argument("--out", help="output directory (default: DATA/../logreg)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--l2", type=float, default=0.0)
    p.add_argument("--max-rows-per-table", type=int)
    p.add_argument("--train-rows", type=int)
    p.add_argument("--eval-rows", type=int)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    # torch warns on every sparse Adagrad step that it skips its invariant checks; nothing to act on
    warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
    out = Path(args.out) if args.out else Path(args.data).resolve().parent / "logreg"
    try:
        cfg = LogRegConfig(
            data_dir=args.data, output_dir=str(out), epochs=args.epochs, batch_size=args.batch_size,
            lr=args.lr, l2=args.l2, max_rows_per_table=args.max_rows_per_table,
            train_rows=args.train_rows, eval_rows=args.eval_rows, seed=args.seed,
        )  # fmt: skip
    except SettingsError as err:  # every bad option at once, named as it was given
        for problem in err.problems:
            key, _, what = problem.partition(" ")
            what = what.replace(" or null", " (or left out)")
            print(f"recsearch baseline logreg: error: --{key.replace('_', '-')} {what}", file=sys.stderr)
        return 2
    try:
        result = train(cfg)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"recsearch baseline logreg: error: {err}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    remote.write_text(out / RESULT_FILE, result.to_json())
    m = result.metrics
    bayes = result.bayes
    ceiling = f" (Bayes ceiling {bayes['val']['auc']:.4f} / {bayes['test']['auc']:.4f})" if "val" in bayes else ""
    print(
        f"[recsearch baseline logreg] val AUC {m['val'].auc:.4f} log loss {m['val'].log_loss:.4f}; "
        f"test AUC {m['test'].auc:.4f}{ceiling}; {result.train_seconds:.1f} s; result in {out / RESULT_FILE}"
    )
    return 0
