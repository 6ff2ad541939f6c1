"""Scaffolding of the 2-rank DistributedModelParallel tests (gloo on loopback): spawn, process
group, a batch with one lookup per table and sample, the tables a rank holds, results gathered to
a JSON file. Workers are module-level functions worker(rank, port, *args, out)."""

import contextlib
import json
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tests.spawn import spawn_ranks

NUM_SPARSE = 26  # Criteo's categorical features: cat_0 .. cat_25


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_ranks(worker: Callable[..., None], out: Path, *args: Any) -> list[dict[str, Any]]:
    """Spawn worker(rank, port, *args, str(out)) on ranks 0 and 1; what gather_to_file wrote."""
    spawn_ranks(worker, (free_port(), *args, str(out)))
    with open(out) as f:
        return json.load(f)


@contextlib.contextmanager
def gloo_group(rank: int, port: int) -> Iterator[None]:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        yield
        # both ranks are done before either tears the group down: a rank that exits while the
        # other still talks to its store can abort the other at exit (seen once under heavy load)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def one_lookup_batch(
    rows: Sequence[int], batch_size: int, generator: torch.Generator | None = None
) -> Any:
    """A torchrec Batch: 13 dense features, one random id per table cat_i (rows[i] rows) and
    sample, random labels."""
    from torchrec.datasets.utils import Batch
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    values = torch.cat(
        [torch.randint(0, rows[t], (batch_size,), generator=generator) for t in range(NUM_SPARSE)]
    )
    return Batch(
        dense_features=torch.rand(batch_size, 13, generator=generator),
        sparse_features=KeyedJaggedTensor.from_lengths_sync(
            keys=[f"cat_{i}" for i in range(NUM_SPARSE)],
            values=values,
            lengths=torch.ones(NUM_SPARSE * batch_size, dtype=torch.int32),
        ),
        labels=torch.randint(0, 2, (batch_size,), generator=generator),
    )


def owned_embeddings(dmp: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Table name -> a copy of this rank's shard, for the tables this rank holds."""
    got = {}
    for key, value in dmp.state_dict().items():
        if "embedding_bags" in key and hasattr(value, "local_shards") and value.local_shards():
            got[key.split("embedding_bags.")[1].split(".")[0]] = value.local_shards()[0].tensor.clone()
    return got


def gather_to_file(result: dict[str, Any], out: str) -> None:
    """All-gather each rank's result; rank 0 writes the list as JSON to out."""
    import torch.distributed as dist

    gathered = [None, None]
    dist.all_gather_object(gathered, result)
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(gathered, f)
