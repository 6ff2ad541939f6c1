"""Real costs of table placements: FBGEMM kernel times and all-to-all communication.

`recsearch place measure --pool POOL --samples N --out samples.jsonl [--device cpu|cuda] [--batch-size 8192]`
    collect cost samples: random subsets of the pool (1..--max-tables tables), each timed as one
    device's fused lookup; appended to a JSONL file, resumable.
`recsearch place measure --task TASK --placement FILE_OR_PLACER [--comm model|measure]`
    measure one placement: every device's table set in turn, plus communication.
`recsearch place measure --calibrate-comm OUT.json`
    time gloo all-to-alls between 2 processes on loopback and fit comm_ms = latency + bytes / bw.

Kernel cost. Under TorchRec table-wise sharding all tables on a device are fused into one
SplitTableBatchedEmbeddingBagsCodegen (TBE). A device's cost is that kernel's forward (pooled
lookup) and backward (gradient + fused optimizer update) over exactly its tables for the global
batch (every device looks its tables up for all samples). Ids are synthetic but shaped like the
table: bag lengths are Poisson with the table's pooling factor, and ids repeat so that the batch
has the table's reuse histogram (`ids_for_table`). Times are medians over timed iterations after
warm-up; CUDA uses events and synchronizes. On CPU this times CPU kernels (HOST/CPU), on a GPU
CUDA kernels (DEVICE/CUDA), one device's table set at a time.

Communication. Forward sends each rank's pooled embeddings to the ranks owning the samples
(all-to-all), backward sends the gradients back: bytes per rank come from
`recsearch.placement.types.alltoall_bytes`. With several processes they can be timed for real
(gloo on loopback, `measure_alltoall`); otherwise they are modeled with a `CommModel` whose latency
and bandwidth were fitted on measured all-to-alls (`calibrate_comm`).

Timings on a shared machine are noisy: use medians (done here), enough warm-up, one thread per
kernel (`threads`, default 1, recorded in every sample).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsearch.placement.types import (
    DEFAULT_OPTIMIZER,
    OPTIMIZER_STATE,
    Cost,
    CostSample,
    DeviceCost,
    Placement,
    PlacementError,
    alltoall_bytes,
    combine_costs,
)
from recsearch.types import NUM_REUSE_BINS, TableSpec, Topology

# --------------------------------------------------------------------------------------------
# FBGEMM: the one place that touches its module layout (same in fbgemm-gpu 1.6 and 1.8).


def _fbgemm() -> Any:
    from fbgemm_gpu.split_embedding_configs import EmbOptimType, SparseType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import (
        ComputeDevice,
        EmbeddingLocation,
    )
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        SplitTableBatchedEmbeddingBagsCodegen,
    )

    class NS:
        pass

    ns = NS()
    ns.TBE, ns.EmbOptimType, ns.SparseType = (
        SplitTableBatchedEmbeddingBagsCodegen,
        EmbOptimType,
        SparseType,
    )
    ns.EmbeddingLocation, ns.ComputeDevice = EmbeddingLocation, ComputeDevice
    return ns


# HParams.embedding_optimizer names -> FBGEMM's (the ones TorchRec's fused optimizers map to).
_FBGEMM_OPTIMIZER = {
    "sgd": "EXACT_SGD",
    "rowwise_adagrad": "EXACT_ROWWISE_ADAGRAD",
    "adagrad": "EXACT_ADAGRAD",
    "adam": "ADAM",  # CUDA only in FBGEMM
}


def build_tbe(
    tables: Sequence[TableSpec],
    device: torch.device | str = "cpu",
    optimizer: str = DEFAULT_OPTIMIZER,
    row_cap: int | None = None,
    learning_rate: float = 0.01,
) -> torch.nn.Module:
    """One fused TBE over exactly these tables, as TorchRec builds for one device's table-wise
    shards. Weights are fp16 when every table says bytes_per_value=2, else fp32. row_cap bounds
    the rows allocated per table (ids are drawn within the cap); None allocates the real size."""
    fb = _fbgemm()
    device = torch.device(device)
    if optimizer not in _FBGEMM_OPTIMIZER:
        raise ValueError(
            f"unknown embedding optimizer {optimizer!r}; known: {', '.join(_FBGEMM_OPTIMIZER)}"
        )
    if optimizer == "adam" and device.type != "cuda":
        raise ValueError(
            "FBGEMM has no CPU kernel for adam; measure with sgd, adagrad or rowwise_adagrad"
        )
    if device.type == "cuda":
        location, compute = fb.EmbeddingLocation.DEVICE, fb.ComputeDevice.CUDA
    else:
        location, compute = fb.EmbeddingLocation.HOST, fb.ComputeDevice.CPU
    fp16 = all(t.bytes_per_value == 2 for t in tables)
    return fb.TBE(
        [(_rows(t, row_cap), t.dim, location, compute) for t in tables],
        optimizer=getattr(fb.EmbOptimType, _FBGEMM_OPTIMIZER[optimizer]),
        learning_rate=learning_rate,
        eps=1e-8,
        weights_precision=fb.SparseType.FP16 if fp16 else fb.SparseType.FP32,
        device=device,
    )


def _rows(table: TableSpec, row_cap: int | None) -> int:
    return min(table.num_rows, row_cap) if row_cap else table.num_rows


# --------------------------------------------------------------------------------------------
# Synthetic ids with a table's pooling factor and reuse


def ids_from_reuse_hist(
    rng: np.random.Generator, num_rows: int, reuse_hist: Sequence[float], n: int
) -> np.ndarray:
    """n ids in [0, num_rows) whose batch reuse histogram (share of lookups per power-of-two reuse
    bin) follows reuse_hist: for bin b, rows are given reuse counts drawn uniformly from
    (2^(b-1), 2^b] until they cover the bin's share of the n lookups; the rows are distinct random
    rows of the table, and the lookups are shuffled. Uniform ids when the histogram is unknown.
    When the table has fewer rows than the histogram needs, rows repeat (more reuse than asked)."""
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    if not reuse_hist or sum(reuse_hist) <= 0:
        return rng.integers(0, num_rows, n, dtype=np.int64)
    hist = np.asarray(reuse_hist, dtype=np.float64)
    hist = hist / hist.sum()
    targets = np.floor(hist * n).astype(np.int64)
    targets[int(np.argmax(hist))] += n - targets.sum()  # rounding remainder to the biggest bin
    counts = []
    for b, k in enumerate(targets):
        if k <= 0:
            continue
        lo, hi = (1, 1) if b == 0 else (2 ** (b - 1) + 1, 2**b)
        if b == NUM_REUSE_BINS - 1:
            hi = 2 * lo  # open-ended last bin: (2^15, 2^16]
        lo, hi = min(lo, k), min(hi, k)
        drawn = rng.integers(lo, hi + 1, int(k // lo) + 1)  # sums to > k: each >= lo
        cum = np.cumsum(drawn)
        stop = int(np.searchsorted(cum, k))  # first index where cum >= k
        c = drawn[: stop + 1].copy()
        c[-1] -= int(cum[stop] - k)
        counts.append(c[c > 0])
    counts_arr = np.concatenate(counts)
    distinct = counts_arr.size
    if distinct <= num_rows:
        rows = rng.choice(num_rows, size=distinct, replace=False)
    else:
        rows = rng.integers(0, num_rows, distinct)
    ids = np.repeat(rows.astype(np.int64), counts_arr)
    rng.shuffle(ids)
    return ids


def make_inputs(
    tables: Sequence[TableSpec],
    batch_size: int,
    rng: np.random.Generator,
    row_cap: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, offsets) for a TBE over tables, table-major ([table][sample]), int64."""
    all_ids, all_lengths = [], []
    for t in tables:
        lengths = rng.poisson(t.pooling_factor, batch_size).astype(np.int64)
        all_ids.append(
            ids_from_reuse_hist(rng, _rows(t, row_cap), t.reuse_hist, int(lengths.sum()))
        )
        all_lengths.append(lengths)
    lengths = np.concatenate(all_lengths) if all_lengths else np.zeros(0, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.concatenate(all_ids) if all_ids else np.zeros(0, dtype=np.int64)
    return torch.from_numpy(ids), torch.from_numpy(offsets)


# --------------------------------------------------------------------------------------------
# Kernel timing


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    if not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


CLOCKS = ("wall", "thread")


@dataclass(frozen=True)
class KernelTiming:
    fwd_ms: float  # medians
    bwd_ms: float
    fwd_samples: tuple[float, ...] = ()
    bwd_samples: tuple[float, ...] = ()

    def spread(self) -> dict[str, float]:
        """Interquartile ranges, relative to the median (the noise the cost net should expect)."""

        def iqr(x: Sequence[float], med: float) -> float:
            if len(x) < 2 or med <= 0:
                return 0.0
            q1, q3 = np.percentile(x, [25, 75])
            return round(float((q3 - q1) / med), 4)

        return {
            "fwd_iqr_rel": iqr(self.fwd_samples, self.fwd_ms),
            "bwd_iqr_rel": iqr(self.bwd_samples, self.bwd_ms),
        }


def time_device_kernel(
    tables: Sequence[TableSpec],
    batch_size: int,
    device: torch.device | str = "cpu",
    optimizer: str = DEFAULT_OPTIMIZER,
    warmup: int = 3,
    iters: int = 10,
    *,
    seed: int = 0,
    row_cap: int | None = None,
    threads: int | None = 1,
    input_sets: int = 2,
    clock: str = "wall",
) -> KernelTiming:
    """Forward and backward time of one fused TBE over tables (the work of one device).

    input_sets different id batches are cycled, so the timing is not of one cached batch.
    clock (CPU only; CUDA always uses events): "wall" (perf_counter) or "thread", the CPU time of
    the calling thread, which runs the whole kernel when threads=1 (autograd runs CPU backward on
    the calling thread). On a machine shared with other processes the thread clock does not count
    the time the kernel waits for a core, so it stays what the kernel costs on a core of its own
    (wall time on an idle machine) while wall time swings with the other load.
    """
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; known: {', '.join(CLOCKS)}")
    if not tables:
        return KernelTiming(0.0, 0.0)
    if warmup < 0 or iters < 1:
        raise ValueError(f"need warmup >= 0 and iters >= 1, got {warmup}, {iters}")
    device = torch.device(device)
    cuda = device.type == "cuda"
    if clock == "thread" and not cuda and threads != 1:
        raise ValueError("clock='thread' needs threads=1 (the kernel must run on this thread)")
    now = time.thread_time if clock == "thread" else time.perf_counter
    rng = np.random.default_rng([seed, batch_size, len(tables)])
    with _threads(None if cuda else threads):
        op = build_tbe(tables, device, optimizer, row_cap)
        inputs = [
            tuple(x.to(device) for x in make_inputs(tables, batch_size, rng, row_cap))
            for _ in range(max(1, input_sets))
        ]
        grad = torch.randn(batch_size, sum(t.dim for t in tables), device=device)
        fwd, bwd = [], []
        for it in range(warmup + iters):
            indices, offsets = inputs[it % len(inputs)]
            if cuda:
                start, mid, end = (torch.cuda.Event(enable_timing=True) for _ in range(3))
                torch.cuda.synchronize(device)
                start.record()
                out = op(indices, offsets)
                mid.record()
                out.backward(grad)
                end.record()
                torch.cuda.synchronize(device)
                f, b = start.elapsed_time(mid), mid.elapsed_time(end)
            else:
                t0 = now()
                out = op(indices, offsets)
                t1 = now()
                out.backward(grad)
                t2 = now()
                f, b = (t1 - t0) * 1e3, (t2 - t1) * 1e3
            del out
            if it >= warmup:
                fwd.append(f)
                bwd.append(b)
    del op
    if cuda:
        torch.cuda.empty_cache()
    return KernelTiming(float(np.median(fwd)), float(np.median(bwd)), tuple(fwd), tuple(bwd))


def measure_device_cost(
    tables: Sequence[TableSpec],
    batch_size: int,
    device: torch.device | str = "cpu",
    optimizer: str = DEFAULT_OPTIMIZER,
    warmup: int = 3,
    iters: int = 10,
    **kwargs: Any,
) -> tuple[float, float]:
    """(fwd_ms, bwd_ms): medians of one device's fused lookup over exactly these tables."""
    t = time_device_kernel(tables, batch_size, device, optimizer, warmup, iters, **kwargs)
    return t.fwd_ms, t.bwd_ms


# --------------------------------------------------------------------------------------------
# Communication


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
    """Per rank: forward all-to-all (pooled embeddings) + backward all-to-all (gradients), ms."""
    out = []
    for send, recv in alltoall_bytes(placement, tables, batch_size):
        nbytes = max(send, recv)
        out.append(2 * model.ms(nbytes))  # backward moves the same bytes the other way
    return out


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


def measured_comm_costs(
    placement: Placement,
    tables: Sequence[TableSpec],
    batch_size: int,
    warmup: int = 3,
    iters: int = 10,
) -> list[float]:
    """Per rank: the real forward + backward all-to-all times of this placement, with one gloo
    process per rank on loopback (CPU)."""
    world = placement.world_size
    if world == 1:
        return [0.0]
    dims = placement.dim_per_rank(tables)
    local = batch_size // world
    fwd = [[local * dims[r] for _ in range(world)] for r in range(world)]
    bwd = [[local * dims[p] for p in range(world)] for _ in range(world)]
    f, b = measure_alltoall([fwd, bwd], warmup, iters)
    return [f[r] + b[r] for r in range(world)]


# --------------------------------------------------------------------------------------------
# Placements


def measure_placement(
    tables: Sequence[TableSpec],
    placement: Placement,
    topology: Topology | None = None,
    batch_size: int = 8192,
    device: torch.device | str | None = None,
    optimizer: str = DEFAULT_OPTIMIZER,
    warmup: int = 3,
    iters: int = 10,
    comm: CommModel | str = "model",
    **kwargs: Any,
) -> Cost:
    """Measured step cost of a placement: each device's table set timed in turn on this machine's
    device, communication modeled (comm="model" or a CommModel) or timed with one gloo process per
    rank (comm="measure", CPU). total = max over devices of (fwd + bwd) + all-to-all time."""
    if topology is not None:
        placement.validate(tables, topology, optimizer)
    device = torch.device(device or (topology.compute_device if topology else "cpu"))
    per_rank = []
    for group in placement.groups():
        per_rank.append(
            time_device_kernel(
                [tables[i] for i in group], batch_size, device, optimizer, warmup, iters, **kwargs
            )
        )
    if comm == "measure":
        comms = measured_comm_costs(placement, tables, batch_size, warmup, iters)
    else:
        model = comm if isinstance(comm, CommModel) else DEFAULT_COMM[device.type]
        comms = comm_costs(placement, tables, batch_size, model)
    return combine_costs([DeviceCost(k.fwd_ms, k.bwd_ms, c) for k, c in zip(per_rank, comms)])


# --------------------------------------------------------------------------------------------
# Sample collection


def hardware_info(device: torch.device | str = "cpu", threads: int | None = 1) -> dict[str, Any]:
    import fbgemm_gpu

    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_model()
    return {
        "device": device.type,
        "name": name,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__.split("+")[0],
        "fbgemm_gpu": getattr(fbgemm_gpu, "__version__", "?"),
        "host": platform.node(),
    }


def hardware_string(
    device: torch.device | str = "cpu", threads: int | None = 1, clock: str = "wall"
) -> str:
    """e.g. 'cpu:AMD EPYC|cpus=2|threads=1|torch=2.13.0|fbgemm_gpu=1.8.0': samples with equal
    strings are comparable. CPU times taken with the thread clock say so ('|clock=thread'), as
    they are a different quantity from wall times under load."""
    h = hardware_info(device, threads)
    tail = "|clock=thread" if clock == "thread" and h["device"] == "cpu" else ""
    return (
        f"{h['device']}:{h['name']}|cpus={h['cpu_count']}|threads={h['threads']}"
        f"|torch={h['torch']}|fbgemm_gpu={h['fbgemm_gpu']}{tail}"
    )


def clock_of(hardware: str) -> str:
    """The CPU clock samples with this hardware string were timed with ('wall' unless marked)."""
    return "thread" if "|clock=thread" in hardware else "wall"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class CollectConfig:
    batch_size: int = 8192  # global batch the kernel sees
    device: str = "cpu"
    optimizer: str = DEFAULT_OPTIMIZER
    warmup: int = 3
    iters: int = 10
    min_tables: int = 1
    max_tables: int = 32
    threads: int | None = 1
    row_cap: int | None = None
    seed: int = 0
    clock: str = "wall"  # CPU: "wall" or "thread" (time_device_kernel)
    extra: dict[str, Any] = field(default_factory=dict)


def read_samples(path: Path | str) -> list[CostSample]:
    """Every complete line of a samples JSONL file (a torn last line is skipped)."""
    return [CostSample.from_dict(raw) for raw in _read_jsonl(Path(path))]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # torn tail of an interrupted run
    return out


def _truncate_torn_tail(path: Path) -> None:
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def collect_samples(
    pool: Sequence[TableSpec],
    num_samples: int,
    out: Path | str,
    config: CollectConfig = CollectConfig(),
    progress: bool = True,
) -> int:
    """Measure random table subsets of the pool (sizes uniform in min..max_tables, tables without
    replacement) as single-device kernels and append one JSON line per subset to out. Sample i
    uses seed (config.seed, i), so an interrupted run resumes where it stopped with the samples it
    would have taken: lines already in out (same seed) are kept and skipped. Returns the number of
    samples taken now."""
    from tqdm import tqdm

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _truncate_torn_tail(out)
    done = {
        int(raw["extra"]["sample_index"])
        for raw in _read_jsonl(out)
        if raw.get("extra", {}).get("seed") == config.seed
        and "sample_index" in raw.get("extra", {})
    }
    todo = [i for i in range(num_samples) if i not in done]
    hw = hardware_string(config.device, config.threads, config.clock)
    hw_info = hardware_info(config.device, config.threads)
    hi = min(config.max_tables, len(pool))
    lo = min(config.min_tables, hi)
    taken = 0
    with (
        out.open("a") as f,
        tqdm(
            total=num_samples,
            initial=num_samples - len(todo),
            disable=not progress,
            desc="measure",
            unit="sample",
        ) as bar,
    ):
        for i in todo:
            rng = np.random.default_rng([config.seed, i])
            k = int(rng.integers(lo, hi + 1))
            ids = sorted(rng.choice(len(pool), size=k, replace=False).tolist())
            tables = tuple(pool[j] for j in ids)
            t0 = time.perf_counter()
            timing = time_device_kernel(
                tables,
                config.batch_size,
                config.device,
                config.optimizer,
                config.warmup,
                config.iters,
                seed=config.seed * 1_000_003 + i,
                row_cap=config.row_cap,
                threads=config.threads,
                clock=config.clock,
            )
            cost = Cost(
                timing.fwd_ms,
                timing.bwd_ms,
                0.0,
                timing.fwd_ms + timing.bwd_ms,
                (DeviceCost(timing.fwd_ms, timing.bwd_ms, 0.0),),
            )
            sample = CostSample(
                tables=tables,
                batch_size=config.batch_size,
                cost=cost,
                hardware=hw,
                optimizer=config.optimizer,
                device=config.device,
                extra={
                    "sample_index": i,
                    "seed": config.seed,
                    "pool_ids": ids,
                    "warmup": config.warmup,
                    "iters": config.iters,
                    "threads": config.threads,
                    "row_cap": config.row_cap,
                    "clock": config.clock,
                    **timing.spread(),
                    "seconds": round(time.perf_counter() - t0, 3),
                    "hardware_info": hw_info,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    **config.extra,
                },
            )
            f.write(json.dumps(sample.to_dict(), separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())
            taken += 1
            bar.update(1)
            bar.set_postfix(tables=k, fwd=f"{timing.fwd_ms:.2f}", bwd=f"{timing.bwd_ms:.2f}")
    return taken


# --------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="recsearch place measure", description="Measure real embedding lookup costs."
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--pool", help="table file to draw random table sets from (collect samples)")
    mode.add_argument("--task", help="task file whose placement to measure (with --placement)")
    mode.add_argument("--calibrate-comm", metavar="OUT", help="fit the gloo comm model, write JSON")
    parser.add_argument("--samples", type=int, default=100, help="with --pool: samples to collect")
    parser.add_argument(
        "--out", help="--pool: samples JSONL (appended, resumable); --task: cost JSON"
    )
    parser.add_argument("--placement", help="--task: placement file, or a baseline placer name")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=8192, help="global batch")
    parser.add_argument(
        "--optimizer",
        default=None,
        choices=sorted(OPTIMIZER_STATE),
        help=f"default: the task's, else {DEFAULT_OPTIMIZER}",
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads per kernel (0: torch's default)"
    )
    parser.add_argument("--min-tables", type=int, default=1)
    parser.add_argument("--max-tables", type=int, default=32)
    parser.add_argument("--row-cap", type=int, help="allocate at most this many rows per table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--comm",
        default="model",
        choices=("model", "measure"),
        help="--task: model comm from bytes, or time it with one gloo process per rank",
    )
    parser.add_argument("--comm-model", help="CommModel JSON from --calibrate-comm")
    parser.add_argument(
        "--clock",
        default="wall",
        choices=CLOCKS,
        help="CPU: wall time, or the kernel thread's CPU time (robust to other load; threads=1)",
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "recsearch place measure: --device cuda but no CUDA device is available",
            file=sys.stderr,
        )
        return 2
    threads = args.threads or None
    try:
        if args.calibrate_comm:
            model = calibrate_comm(iters=args.iters)
            model.save(args.calibrate_comm)
            print(
                f"gloo loopback all-to-all: latency {model.latency_ms:.3f} ms, "
                f"bandwidth {model.bytes_per_ms / 1e6:.3f} GB/s ({model.bytes_per_ms:,.0f} bytes/ms)"
            )
            for b, t in model.points:
                print(f"  {b:>12,} bytes  {t:8.3f} ms  (model {model.ms(b):8.3f})")
            print(f"wrote {args.calibrate_comm}")
            return 0
        if args.pool:
            from recsearch.placement.tables import load_tables

            if not args.out:
                parser.error("--pool needs --out")
            pool = load_tables(args.pool)
            cfg = CollectConfig(
                batch_size=args.batch_size,
                device=args.device,
                optimizer=args.optimizer or DEFAULT_OPTIMIZER,
                warmup=args.warmup,
                iters=args.iters,
                min_tables=args.min_tables,
                max_tables=args.max_tables,
                threads=threads,
                row_cap=args.row_cap,
                seed=args.seed,
                clock=args.clock,
                extra={"pool": str(args.pool)},
            )
            taken = collect_samples(
                pool, args.samples, args.out, cfg, progress=not args.no_progress
            )
            print(f"{taken} new samples ({args.samples} wanted) in {args.out}")
            return 0
        return _measure_task(args, threads)
    except (FileNotFoundError, ValueError, PlacementError) as err:
        print(f"recsearch place measure: {err}", file=sys.stderr)
        return 2


def _measure_task(args: argparse.Namespace, threads: int | None) -> int:
    from recsearch.placement.baselines import PLACERS, make_placer
    from recsearch.placement.tables import load_task
    from recsearch.placement.types import load_placement, placement_summary

    if not args.placement:
        raise ValueError(
            "--task needs --placement (a placement file or one of: " + ", ".join(PLACERS) + ")"
        )
    task = load_task(args.task)
    optimizer = args.optimizer or task.optimizer
    topo = Topology(task.world_size, task.device_memory_bytes, args.device)
    if args.placement in PLACERS:
        kw = {"batch_size": args.batch_size} if args.placement == "torchrec" else {}
        placement = make_placer(args.placement, optimizer, args.seed, **kw).place(task.tables, topo)
    else:
        placement = load_placement(args.placement, task.tables, task.world_size)
    comm: CommModel | str = (
        "measure"
        if args.comm == "measure"
        else (CommModel.load(args.comm_model) if args.comm_model else DEFAULT_COMM[args.device])
    )
    cost = measure_placement(
        task.tables,
        placement,
        topo,
        args.batch_size,
        args.device,
        optimizer,
        args.warmup,
        args.iters,
        comm,
        seed=args.seed,
        row_cap=args.row_cap,
        threads=threads,
        clock=args.clock,
    )
    print(
        f"{task.name} / {args.placement}: total {cost.total_ms:.3f} ms = slowest device "
        f"(fwd {cost.fwd_ms:.3f} + bwd {cost.bwd_ms:.3f}) + comm {cost.comm_ms:.3f}"
    )
    for s, d in zip(placement_summary(placement, task.tables, optimizer), cost.per_device):
        print(
            f"  rank {s['rank']:>2}: {s['tables']:>3} tables, dims {s['dim_sum']:>5}, "
            f"fwd {d.fwd_ms:8.3f}  bwd {d.bwd_ms:8.3f}  comm {d.comm_ms:7.3f} ms"
        )
    if args.out:
        sample = CostSample(
            tables=task.tables,
            batch_size=args.batch_size,
            cost=cost,
            placement=placement,
            hardware=hardware_string(args.device, threads, args.clock),
            optimizer=optimizer,
            device=args.device,
            extra={
                "task": task.name,
                "placement": args.placement,
                "comm": args.comm,
                "warmup": args.warmup,
                "iters": args.iters,
            },
        )
        Path(args.out).write_text(json.dumps(sample.to_dict(), indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
