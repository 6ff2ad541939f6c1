"""Communication cost of a placement: the forward all-to-all of pooled embeddings and the
backward one of their gradients (bytes per rank from `types.alltoall_bytes`), plus the all-reduce
of replicated tables' gradients (`types.allreduce_bytes`, modeled with the same latency and
bandwidth: one more collective over the same links), either modeled with
a `CommModel` (comm_ms = latency + bytes / bandwidth, fitted on measured all-to-alls by
`calibrate_comm`) or timed for real with one gloo process per rank on loopback
(`measure_alltoall`, `measured_comm_costs`).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsearch.placement.hardware import hardware_string
from recsearch.placement.types import Placement, allreduce_bytes, alltoall_bytes
from recsearch.types import TableSpec


@dataclass(frozen=True)
class CommModel:
    """comm_ms(bytes) = latency_ms + bytes / bytes_per_ms for one all-to-all in which a rank sends
    (or receives, whichever is more) `bytes`; zero bytes cost nothing (no collective is needed)."""

    latency_ms: float
    bytes_per_ms: float
    hardware: str = ""
    source: str = "default"  # "default" or how it was calibrated
    points: tuple[tuple[int, float], ...] = ()  # (bytes, median ms) it was fitted on

    def ms(self, nbytes: float) -> float:
        return 0.0 if nbytes <= 0 else self.latency_ms + nbytes / self.bytes_per_ms

    def save(self, path: Path | str) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path | str) -> CommModel:
        raw = json.loads(Path(path).read_text())
        return cls(
            float(raw["latency_ms"]),
            float(raw["bytes_per_ms"]),
            raw.get("hardware", ""),
            raw.get("source", str(path)),
            tuple(tuple(p) for p in raw.get("points", ())),
        )


# Without a calibration file. cpu: `--calibrate-comm` on this project's 2-core AMD EPYC box, idle
# (two runs: 0.29 ms + 1.22 GB/s, 0.34 ms + 1.05 GB/s); cuda: TorchRec planner's intra-node
# bandwidth (600 GiB/s) and a 20 us latency: calibrate on a multi-GPU host for real numbers.
DEFAULT_COMM = {
    "cpu": CommModel(
        latency_ms=0.3, bytes_per_ms=1.1e6, source="default: gloo loopback, 2-core CPU"
    ),
    "cuda": CommModel(
        latency_ms=0.02,
        bytes_per_ms=600 * 2**30 / 1000,
        source="default: torchrec INTRA_NODE_BANDWIDTH",
    ),
}


def comm_costs(
    placement: Placement, tables: Sequence[TableSpec], batch_size: int, model: CommModel
) -> list[float]:
    """Per rank: forward all-to-all (pooled embeddings) + backward all-to-all (gradients) + the
    all-reduce of the replicated tables' gradients, ms."""
    reduce_ms = model.ms(allreduce_bytes(placement, tables))
    out = []
    for send, recv in alltoall_bytes(placement, tables, batch_size):
        nbytes = max(send, recv)
        out.append(2 * model.ms(nbytes) + reduce_ms)  # backward: the same bytes the other way
    return out


def comm_ms_of_dims(dim_sums: np.ndarray, model: CommModel, batch_size: int, world: int) -> np.ndarray:
    """Per rank (last axis of dim_sums, each rank's sum of all-to-all widths,
    types.alltoall_width: the dim of a single-feature pooled table): forward + backward
    all-to-all time, the rule of comm_costs (types.alltoall_bytes: a rank sends its pooled
    embeddings for the other ranks' samples and receives the others' for its own), vectorized
    over leading axes for placers that try many placements at once."""
    if world == 1:
        return np.zeros_like(dim_sums, dtype=np.float64)
    local = batch_size / world
    total = dim_sums.sum(-1, keepdims=True)
    send = (world - 1) * local * dim_sums * 4
    recv = local * (total - dim_sums) * 4
    nbytes = np.maximum(send, recv)
    return 2 * np.where(nbytes > 0, model.latency_ms + nbytes / model.bytes_per_ms, 0.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _a2a_worker(
    rank: int, world: int, port: int, jobs: list[dict[str, Any]], warmup: int, iters: int, out: str
) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        results = []
        for job in jobs:
            in_splits = [int(x) for x in job["send"][rank]]  # floats to each rank (incl. self)
            out_splits = [int(job["send"][p][rank]) for p in range(world)]
            src = torch.randn(sum(in_splits))
            dst = torch.empty(sum(out_splits))
            times = []
            for it in range(warmup + iters):
                dist.barrier()
                t0 = time.perf_counter()
                _all_to_all(dst, src, out_splits, in_splits)
                times.append((time.perf_counter() - t0) * 1e3)
            results.append(times[warmup:])
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, results)
        if rank == 0:
            Path(out).write_text(json.dumps(gathered))
    finally:
        dist.destroy_process_group()


def _all_to_all(
    dst: torch.Tensor, src: torch.Tensor, out_splits: list[int], in_splits: list[int]
) -> None:
    """all_to_all_single, or the same exchange by point-to-point ops where the backend lacks it
    (gloo's all_to_all support has varied between torch versions)."""
    import torch.distributed as dist

    try:
        dist.all_to_all_single(dst, src, out_splits, in_splits)
        return
    except (RuntimeError, NotImplementedError):
        pass
    rank = dist.get_rank()
    src_parts = list(src.split(in_splits))
    dst_parts = list(dst.split(out_splits))
    ops = []
    for p in range(dist.get_world_size()):
        if p == rank:
            dst_parts[p].copy_(src_parts[p])
        else:
            ops += [
                dist.P2POp(dist.isend, src_parts[p].contiguous(), p),
                dist.P2POp(dist.irecv, dst_parts[p], p),
            ]
    for req in dist.batch_isend_irecv(ops):
        req.wait()


def measure_alltoall(
    send_floats: Sequence[Sequence[Sequence[int]]], warmup: int = 3, iters: int = 10
) -> list[list[float]]:
    """Time all-to-alls between len(send_floats[0]) gloo processes on loopback.

    send_floats[j][r][p]: fp32 values rank r sends rank p in job j. Returns, per job, the median
    per rank of each iteration's time (ms), each iteration starting after a barrier.
    """
    import torch.multiprocessing as mp

    world = len(send_floats[0])
    jobs = [{"send": [list(map(int, row)) for row in job]} for job in send_floats]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "a2a.json")
        mp.spawn(
            _a2a_worker,
            args=(world, _free_port(), jobs, warmup, iters, out),
            nprocs=world,
            join=True,
        )
        gathered = json.loads(Path(out).read_text())  # [rank][job][iter]
    return [[float(np.median(gathered[r][j])) for r in range(world)] for j in range(len(jobs))]


def calibrate_comm(
    sizes_bytes: Sequence[int] = (2**12, 2**16, 2**18, 2**20, 2**22, 2**24),
    warmup: int = 3,
    iters: int = 15,
    world_size: int = 2,
) -> CommModel:
    """Fit latency and bandwidth on all-to-alls in which each rank sends sizes_bytes in total to
    its peers (split evenly), timed with world_size gloo processes on loopback. The time of a
    size is the slowest rank's median over iterations; the line is fitted on relative errors."""
    jobs = []
    for nbytes in sizes_bytes:
        per_peer = max(1, int(nbytes) // 4 // (world_size - 1))
        jobs.append([[per_peer] * world_size for _ in range(world_size)])
    medians = measure_alltoall(jobs, warmup, iters)
    sent = [4 * int(j[0][0]) * (world_size - 1) for j in jobs]
    ms = [max(m) for m in medians]
    # Relative residuals (weights 1/t): small messages pin the latency, large ones the bandwidth.
    y = np.asarray(ms, float)
    slope, intercept = np.polyfit(np.asarray(sent, float), y, 1, w=1.0 / np.maximum(y, 1e-6))
    slope = max(float(slope), 1e-12)
    return CommModel(
        latency_ms=max(float(intercept), 0.0),
        bytes_per_ms=1.0 / slope,
        hardware=hardware_string("cpu", 1),
        source=f"gloo all_to_all_single, {world_size} processes on loopback, median of {iters}",
        points=tuple((b, round(t, 4)) for b, t in zip(sent, ms)),
    )


def check_measurable(placement: Placement) -> None:
    """ValueError when measured_comm_costs cannot time this placement's communication: timing
    for real covers the all-to-alls, not a replicated table's gradient all-reduce."""
    if placement.replicated and placement.world_size > 1:
        raise ValueError(
            f"timing communication for real covers the all-to-alls only; this placement "
            f"replicates {len(placement.replicated)} table(s), whose gradient all-reduce it would "
            f"leave out: measure it with the comm model instead"
        )


def measured_comm_costs(
    placement: Placement,
    tables: Sequence[TableSpec],
    batch_size: int,
    warmup: int = 3,
    iters: int = 10,
) -> list[float]:
    """Per rank: the real forward + backward all-to-all times of this placement, with one gloo
    process per rank on loopback (CPU). Replicated tables' all-reduce is not timed for real: a
    placement with replicated tables is refused (measure it with the comm model)."""
    world = placement.world_size
    check_measurable(placement)
    if world == 1:
        return [0.0]
    dims = placement.dim_per_rank(tables)
    local = batch_size // world
    fwd = [[round(local * dims[r]) for _ in range(world)] for r in range(world)]
    bwd = [[round(local * dims[p]) for p in range(world)] for _ in range(world)]
    f, b = measure_alltoall([fwd, bwd], warmup, iters)
    return [f[r] + b[r] for r in range(world)]
