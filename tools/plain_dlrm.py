"""A plain PyTorch DLRM, the way a competent engineer writes one without TorchRec: one
`nn.EmbeddingBag` per table with sparse gradients, the dot interaction, `torch.optim.SGD` over
everything, whole batches sliced from arrays held in memory. tools/bench_train.py runs it as the
"plain PyTorch" reference next to recsearch and facebookresearch/dlrm on the same data.

    python tools/plain_dlrm.py --data DIR --batch-size 2048 --steps 200 \
        --dim 16 --bottom 512,256,64,16 --top 512,256,1 [--device cuda] [--lr 0.1]

Prints one JSON line last: steps, wall seconds of the training loop (data slicing included), samples/s,
the mean loss of the last 10% of steps, and the peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

if __package__ in (None, ""):  # run as `python tools/plain_dlrm.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from recsearch.data import layout  # noqa: E402
from recsearch.data.loader import read_split_arrays  # noqa: E402


def mlp(sizes: list[int], last_relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or last_relu:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class PlainDLRM(nn.Module):
    """DLRM with the dot interaction: bottom MLP on the dense features, one pooled embedding per
    table, pairwise dot products of all of them (upper triangle), top MLP -> one logit."""

    def __init__(self, table_rows: list[int], dim: int, bottom: list[int], top: list[int], dense_in: int):
        super().__init__()
        if bottom[-1] != dim:
            raise ValueError(f"bottom MLP must end in the embedding dim {dim}, got {bottom}")
        self.bottom = mlp([dense_in, *bottom], last_relu=True)
        self.tables = nn.ModuleList(nn.EmbeddingBag(r, dim, mode="sum", sparse=True) for r in table_rows)
        n = len(table_rows) + 1
        self.register_buffer("pairs", torch.triu_indices(n, n, offset=1), persistent=False)
        self.top = mlp([dim + n * (n - 1) // 2, *top], last_relu=False)

    def forward(self, dense: torch.Tensor, ids_per_table: list[torch.Tensor]) -> torch.Tensor:
        x = self.bottom(dense)
        pooled = [table(ids) for table, ids in zip(self.tables, ids_per_table)]  # each [B, dim]
        stacked = torch.stack([x, *pooled], dim=1)  # [B, n, dim]
        dots = torch.bmm(stacked, stacked.transpose(1, 2))  # [B, n, n]
        pairwise = dots[:, self.pairs[0], self.pairs[1]]
        return self.top(torch.cat([x, pairwise], dim=1)).squeeze(1)


def load_train_split(data_dir: Path, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """The train split's first rows in memory: dense [N,13] float32, ids [26,N] int64 (one
    contiguous row per table, so a batch's ids of a table are one slice), labels [N] float32, and
    the table sizes (ids at or above a table's size wrap around, as in TorchRec's reader)."""
    meta = layout.read_meta(data_dir)
    dense, sparse, labels = read_split_arrays(data_dir, "train", rows, meta)
    sizes = list(meta.num_embeddings_per_feature)
    ids = np.ascontiguousarray((sparse.astype(np.int64) % np.asarray(sizes, dtype=np.int64)).T)
    return dense.astype(np.float32, copy=False), ids, labels.astype(np.float32), sizes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="recsearch/TorchRec npy dataset directory")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--bottom", default="512,256,64,16")
    p.add_argument("--top", default="512,256,1")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=0, help="print 'step N loss L' every N steps (0: never)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    rows_needed = args.batch_size * args.steps
    dense, ids, labels, sizes = load_train_split(args.data, rows_needed)
    if len(labels) < rows_needed:
        raise SystemExit(f"{args.data}: {len(labels)} train rows < {args.steps} steps x batch {args.batch_size}")
    model = PlainDLRM(sizes, args.dim, [int(x) for x in args.bottom.split(",")],
                      [int(x) for x in args.top.split(",")], dense.shape[1]).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    loss_fn = nn.BCEWithLogitsLoss()
    dense_t, ids_t, labels_t = torch.from_numpy(dense), torch.from_numpy(ids), torch.from_numpy(labels)
    losses = torch.zeros(args.steps, device=device)
    start = time.perf_counter()
    for step in range(args.steps):
        lo, hi = step * args.batch_size, (step + 1) * args.batch_size
        x = dense_t[lo:hi].to(device, non_blocking=True)
        per_table = [ids_t[t, lo:hi].view(-1, 1).to(device, non_blocking=True) for t in range(len(sizes))]
        y = labels_t[lo:hi].to(device, non_blocking=True)
        loss = loss_fn(model(x, per_table), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses[step] = loss.detach()
        if args.log_every and (step + 1) % args.log_every == 0:
            print(f"step {step + 1} loss {float(losses[step]):.4f}", flush=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall_s = time.perf_counter() - start
    tail = max(1, args.steps // 10)
    print(json.dumps({
        "steps": args.steps,
        "train_seconds": wall_s,
        "samples_per_s": args.steps * args.batch_size / wall_s,
        "final_loss": float(losses[-tail:].mean()),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
