"""Real costs of table placements: FBGEMM kernel times, plus communication (comm.py).

Command line (recsearch.placement.cli.measure):
`recsearch place measure --pool POOL --samples N --out OUT.jsonl [--device cpu|cuda] [--minutes M]`
    collect cost samples: random subsets of the pool (1..--max-tables tables), each timed as one
    device's fused lookup; appended to a JSONL file (samples.py), resumable; --minutes stops
    between samples (tools/gpu_collect.sh: 8 minutes of GPU samples).
`recsearch place measure --task TASK --placement FILE_OR_PLACER [--comm model|measure]`
    measure one placement: every device's table set in turn, plus communication.
`recsearch place measure --calibrate-comm OUT.json`
    time gloo all-to-alls between 2 processes on loopback and fit comm_ms = latency + bytes / bw.

Kernel cost. Under TorchRec table-wise sharding all tables on a device are fused into one
SplitTableBatchedEmbeddingBagsCodegen (TBE). A device's cost is that kernel's forward (pooled
lookup) and backward (gradient + fused optimizer update) over exactly its tables for the global
batch (every device looks its tables up for all samples). Ids are synthetic but shaped like the
table: bag lengths are Poisson with the table's pooling factor, and ids repeat so that the batch
has the table's reuse histogram (`ids_from_reuse_hist`, batched by `make_inputs`). Times are
medians over timed iterations after warm-up; CUDA uses events and synchronizes. On CPU this times
CPU kernels (HOST/CPU), on a GPU CUDA kernels (DEVICE/CUDA), one device's table set at a time.
Many kernels over tables of one task or pool (recsearch place eval) share work: InputCache draws
each table's ids once and keeps them on the device, DeviceTimer times a table set once per round.

Communication (comm.py). Forward sends each rank's pooled embeddings to the ranks owning the
samples (all-to-all), backward sends the gradients back: bytes per rank come from
`recsearch.placement.types.alltoall_bytes`. With several processes they can be timed for real
(gloo on loopback, `comm.measure_alltoall`); otherwise they are modeled with a `comm.CommModel`
whose latency and bandwidth were fitted on measured all-to-alls (`comm.calibrate_comm`).

Timings on a shared machine are noisy: use medians (done here), enough warm-up, one thread per
kernel (`threads`, default 1, recorded in every sample).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsearch.placement.types import (
    DEFAULT_OPTIMIZER,
    Cost,
    CostSample,
    DeviceCost,
    Placement,
    combine_costs,
)
from recsearch.placement.comm import (
    DEFAULT_COMM,
    CommModel,
    check_measurable,
    comm_costs,
    measured_comm_costs,
)
from recsearch.placement.hardware import hardware_info, hardware_string
from recsearch.placement.samples import append_sample, read_jsonl, truncate_torn_tail
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


def table_inputs(
    table: TableSpec, batch_size: int, rng: np.random.Generator, row_cap: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, lengths) of one table for one batch: bag lengths Poisson with the table's pooling
    factor, ids with its reuse histogram (ids_from_reuse_hist), int64."""
    lengths = rng.poisson(table.pooling_factor, batch_size).astype(np.int64)
    ids = ids_from_reuse_hist(rng, _rows(table, row_cap), table.reuse_hist, int(lengths.sum()))
    return ids, lengths


def make_inputs(
    tables: Sequence[TableSpec],
    batch_size: int,
    rng: np.random.Generator,
    row_cap: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, offsets) for a TBE over tables, table-major ([table][sample]), int64."""
    all_ids, all_lengths = [], []
    for t in tables:
        ids, lengths = table_inputs(t, batch_size, rng, row_cap)
        all_ids.append(ids)
        all_lengths.append(lengths)
    lengths = np.concatenate(all_lengths) if all_lengths else np.zeros(0, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.concatenate(all_ids) if all_ids else np.zeros(0, dtype=np.int64)
    return torch.from_numpy(ids), torch.from_numpy(offsets)


# threads that generate tables' ids for an InputCache (numpy releases the GIL in its shuffles,
# Poisson draws and array copies, so tables are generated partly side by side)
DEFAULT_INPUT_WORKERS = 8


# what a table's synthetic ids depend on: rows (capped), pooling factor, reuse histogram
InputKey = tuple[int, float, tuple[float, ...]]


def input_key(table: TableSpec, row_cap: int | None) -> InputKey:
    """What a table's synthetic ids depend on (not its name or dim)."""
    return (_rows(table, row_cap), float(table.pooling_factor), tuple(table.reuse_hist))


def _stable_seed(key: InputKey) -> int:
    """A 64-bit seed from an input key, the same in every process (unlike hash())."""
    return int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=8).digest(), "little")


class InputCache:
    """Synthetic inputs of tables, generated once and kept where the kernels run.

    Each table gets input_sets id batches (table_inputs) from a generator seeded by (seed, batch
    size, set, the table's rows, pooling factor and reuse histogram), so a table has the same
    inputs in every device set, placement, round and task it is timed in, whatever the order they
    come in, and a run that stops and resumes draws the same ids. A device set's inputs are its
    tables' batches concatenated table-major (the layout make_inputs builds), made on the device:
    on CUDA each table's ids are uploaded once, not once per kernel. Tables not seen yet are
    generated in `workers` threads. Memory: every table's ids stay until clear() (on CUDA in
    device memory: 8 bytes x batch x pooling factor x input_sets per table).
    """

    def __init__(
        self,
        batch_size: int,
        device: torch.device | str = "cpu",
        *,
        seed: int = 0,
        row_cap: int | None = None,
        input_sets: int = 2,
        workers: int = DEFAULT_INPUT_WORKERS,
    ) -> None:
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.seed = seed
        self.row_cap = row_cap
        self.input_sets = max(1, input_sets)
        self.workers = max(1, workers)
        self.generated = 0  # tables generated so far
        self.seconds = 0.0  # spent generating and uploading them
        self._batches: dict[InputKey, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def prepare(self, tables: Sequence[TableSpec]) -> None:
        """Generate the inputs of the tables not seen yet (in parallel threads)."""
        todo = {}
        for t in tables:
            key = input_key(t, self.row_cap)
            if key not in self._batches:
                todo.setdefault(key, t)
        if not todo:
            return
        t0 = time.perf_counter()
        with ThreadPoolExecutor(min(self.workers, len(todo))) as pool:
            for key, sets in zip(todo, pool.map(self._generate, todo.values())):
                self._batches[key] = [
                    (
                        torch.from_numpy(ids).to(self.device),
                        torch.from_numpy(lengths).to(self.device),
                    )
                    for ids, lengths in sets
                ]
        self.generated += len(todo)
        self.seconds += time.perf_counter() - t0

    def _generate(self, table: TableSpec) -> list[tuple[np.ndarray, np.ndarray]]:
        seed = _stable_seed(input_key(table, self.row_cap))
        return [
            table_inputs(
                table,
                self.batch_size,
                np.random.default_rng([self.seed, self.batch_size, s, seed]),
                self.row_cap,
            )
            for s in range(self.input_sets)
        ]

    def inputs(self, tables: Sequence[TableSpec]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(indices, offsets) per input set for one TBE over tables, on the device."""
        self.prepare(tables)
        out = []
        for s in range(self.input_sets):
            parts = [self._batches[input_key(t, self.row_cap)][s] for t in tables]
            lengths = torch.cat([p[1] for p in parts])
            offsets = torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)])
            out.append((torch.cat([p[0] for p in parts]), offsets))
        return out

    def clear(self) -> None:
        """Forget every table's inputs (and on CUDA hand the memory back)."""
        self._batches.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


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
    inputs: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
    release: bool = True,
) -> KernelTiming:
    """Forward and backward time of one fused TBE over tables (the work of one device).

    input_sets different id batches are cycled, so the timing is not of one cached batch; they
    are drawn here (seeded by seed, batch size and table count) unless inputs gives them,
    (indices, offsets) per batch on the device (an InputCache's, which reuses them across calls).
    release=False leaves the freed TBE's memory in torch's CUDA cache for the next kernel
    instead of handing it back to the driver after every call.
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
        if inputs is None:
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
    if cuda and release:
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
# Device table sets of one task, and placements


@dataclass(frozen=True)
class TimerStats:
    """What a DeviceTimer did: kernels timed and looked up, and where its time went."""

    kernels_timed: int
    kernels_looked_up: int
    tables_generated: int  # tables whose inputs its InputCache generated for it
    inputs_s: float  # generating and uploading those inputs
    kernels_s: float  # building and timing the kernels

    def to_dict(self) -> dict[str, Any]:
        return {
            "kernels_timed": self.kernels_timed,
            "kernels_looked_up": self.kernels_looked_up,
            "tables_generated": self.tables_generated,
            "inputs_s": round(self.inputs_s, 3),
            "kernels_s": round(self.kernels_s, 3),
        }


class DeviceTimer:
    """Times device table sets drawn from one list of tables (a task's), each set once a round.

    time(group) is time_device_kernel over tables[i] for i in group, with inputs from an
    InputCache (each table's ids generated once). Within a round a set is timed once: when
    another placement gives a device the same tables, its timing is looked up. The timer holds
    one batch size, device, optimizer and measurement settings, so the key is the sorted table
    indices. new_round() forgets the timings (not the inputs): the next round times every set
    afresh, so rounds stay independent measurements. On CUDA freed kernels' memory stays in
    torch's cache between kernels; close() hands it back.
    """

    def __init__(
        self,
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
        clock: str = "wall",
        input_sets: int = 2,
        input_cache: InputCache | None = None,
    ) -> None:
        self.tables = tuple(tables)
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.optimizer = optimizer
        self.warmup, self.iters = warmup, iters
        self.threads, self.clock = threads, clock
        if input_cache is None:
            input_cache = InputCache(
                batch_size, self.device, seed=seed, row_cap=row_cap, input_sets=input_sets
            )
        elif (input_cache.batch_size, input_cache.device, input_cache.row_cap) != (
            batch_size,
            self.device,
            row_cap,
        ):
            raise ValueError(
                f"the input cache is for batch {input_cache.batch_size} on {input_cache.device} "
                f"with row cap {input_cache.row_cap}, the timer for batch {batch_size} on "
                f"{self.device} with row cap {row_cap}"
            )
        self.input_cache = input_cache
        self._round: dict[tuple[int, ...], KernelTiming] = {}
        self._timed = self._looked_up = self._generated = 0
        self._inputs_s = self._kernels_s = 0.0
        self._local: dict[int, DeviceTimer] = {}  # batch -> timer of one rank's share

    def local(self, world_size: int) -> DeviceTimer:
        """A timer of the same tables and settings for one rank's share of the batch,
        ceil(batch_size / world_size) samples: what a replicated (data-parallel) table's kernel
        looks up on each rank. Made once per share, with inputs of its own; new_round, stats
        and close cover it."""
        batch = -(-self.batch_size // world_size)
        if batch == self.batch_size:
            return self
        timer = self._local.get(batch)
        if timer is None:
            cache = self.input_cache
            timer = DeviceTimer(
                self.tables,
                batch,
                self.device,
                self.optimizer,
                self.warmup,
                self.iters,
                seed=cache.seed,
                row_cap=cache.row_cap,
                threads=self.threads,
                clock=self.clock,
                input_sets=cache.input_sets,
            )
            self._local[batch] = timer
        return timer

    def time(self, group: Sequence[int]) -> KernelTiming:
        """The fused kernel's timing of these tables (indices into the timer's tables)."""
        key = tuple(sorted(group))
        if not key:
            return KernelTiming(0.0, 0.0)
        if key in self._round:
            self._looked_up += 1
            return self._round[key]
        tables = [self.tables[i] for i in key]
        self._prepare(tables)
        batches = self.input_cache.inputs(tables)
        t0 = time.perf_counter()
        timing = time_device_kernel(
            tables,
            self.batch_size,
            self.device,
            self.optimizer,
            self.warmup,
            self.iters,
            threads=self.threads,
            clock=self.clock,
            inputs=batches,
            release=False,
        )
        self._kernels_s += time.perf_counter() - t0
        self._timed += 1
        self._round[key] = timing
        return timing

    def prepare(self) -> None:
        """Generate every table's inputs now (in parallel) rather than kernel by kernel."""
        self._prepare(self.tables)

    def _prepare(self, tables: Sequence[TableSpec]) -> None:
        """The cache's prepare, counting what it generated for this timer."""
        cache = self.input_cache
        generated, spent = cache.generated, cache.seconds
        cache.prepare(tables)
        self._generated += cache.generated - generated
        self._inputs_s += cache.seconds - spent

    def new_round(self) -> None:
        self._round.clear()
        for timer in self._local.values():
            timer.new_round()

    def stats(self) -> TimerStats:
        own = TimerStats(
            self._timed, self._looked_up, self._generated, self._inputs_s, self._kernels_s
        )
        for timer in self._local.values():
            s = timer.stats()
            own = TimerStats(
                own.kernels_timed + s.kernels_timed,
                own.kernels_looked_up + s.kernels_looked_up,
                own.tables_generated + s.tables_generated,
                own.inputs_s + s.inputs_s,
                own.kernels_s + s.kernels_s,
            )
        return own

    def close(self) -> None:
        """Forget the timings; on CUDA hand the kernels' cached memory back (the inputs stay
        with the InputCache, which may serve other timers; a local() timer's own inputs go)."""
        self._round.clear()
        for timer in self._local.values():
            timer.close()
            timer.input_cache.clear()
        self._local.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


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
    timer: DeviceTimer | None = None,
    **kwargs: Any,
) -> Cost:
    """Measured step cost of a placement: each device's table set timed in turn on this machine's
    device, communication modeled (comm="model" or a CommModel) or timed with one gloo process per
    rank (comm="measure", CPU). total = max over devices of (fwd + bwd) + all-to-all time.
    Replicated tables: their kernel timed once for one rank's share of the batch (every rank
    runs the same) and added to each device; their gradient all-reduce is in the comm model.

    timer: a DeviceTimer over these tables with these settings, to share inputs and timings
    with other placements of the same tables (recsearch place eval); without one, a timer of
    its own (kwargs: seed, row_cap, threads, clock, input_sets)."""
    if topology is not None:
        placement.validate(tables, topology, optimizer)
    if comm == "measure":
        check_measurable(placement)  # before any kernel is timed
    device = torch.device(device or (topology.compute_device if topology else "cpu"))
    own = timer is None
    if timer is None:
        timer = DeviceTimer(tables, batch_size, device, optimizer, warmup, iters, **kwargs)
    elif (timer.tables, timer.batch_size, timer.device, timer.optimizer) != (
        tuple(tables),
        batch_size,
        device,
        optimizer,
    ) or (timer.warmup, timer.iters) != (warmup, iters):
        raise ValueError("the DeviceTimer was made for other tables or measurement settings")
    try:
        per_rank = [timer.time(group) for group in placement.groups()]
        if placement.replicated:
            rep = timer.local(placement.world_size).time(placement.replicated)
            per_rank = [KernelTiming(k.fwd_ms + rep.fwd_ms, k.bwd_ms + rep.bwd_ms) for k in per_rank]
    finally:
        if own:
            timer.close()
            timer.input_cache.clear()
    if comm == "measure":
        comms = measured_comm_costs(placement, tables, batch_size, warmup, iters)
    else:
        model = comm if isinstance(comm, CommModel) else DEFAULT_COMM[device.type]
        comms = comm_costs(placement, tables, batch_size, model)
    return combine_costs([DeviceCost(k.fwd_ms, k.bwd_ms, c) for k, c in zip(per_rank, comms)])


# --------------------------------------------------------------------------------------------
# Sample collection


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
    # True: each pool table's ids are generated once (InputCache, seeded by the table) and reused
    # by every sample holding it, instead of drawn afresh per sample: on a GPU drawing the ids
    # took most of a sample's time. Recorded in every sample (extra["inputs"]).
    reuse_inputs: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


# the settings a resumed collection must share with the samples already in its file
_RESUME_KEYS = ("batch_size", "device", "optimizer")
_RESUME_EXTRA_KEYS = ("warmup", "iters", "row_cap")


def collected_indices(out: Path | str, seed: int) -> set[int]:
    """Sample indices of the given seed already in a sample file (none if it does not exist)."""
    out = Path(out)
    if not out.exists():
        return set()
    return {
        int(raw["extra"]["sample_index"])
        for raw in read_jsonl(out)
        if raw.get("extra", {}).get("seed") == seed and "sample_index" in raw.get("extra", {})
    }


def _check_resumable(out: Path, pool: Sequence[TableSpec], config: CollectConfig) -> None:
    """Refuse to continue a file whose samples of this seed were taken from another pool or with
    other settings: their indices would stand for other table sets."""
    want = {k: getattr(config, k) for k in (*_RESUME_KEYS, *_RESUME_EXTRA_KEYS)}
    for raw in read_jsonl(out):
        extra = raw.get("extra", {})
        if extra.get("seed") != config.seed or "sample_index" not in extra:
            continue
        # a key the line does not record (older files) is not compared; a recorded None (no
        # row cap) is, against a cap now
        got = {k: raw[k] for k in _RESUME_KEYS if k in raw} | {
            k: extra[k] for k in _RESUME_EXTRA_KEYS if k in extra
        }
        differ = [f"{k} {got[k]} (now {v})" for k, v in want.items() if k in got and got[k] != v]
        ids = extra.get("pool_ids", [])
        if any(j >= len(pool) for j in ids) or [
            (t["name"], t["num_rows"], t["dim"]) for t in raw.get("tables", [])
        ] != [(pool[j].name, pool[j].num_rows, pool[j].dim) for j in ids]:
            differ.append("tables from another pool")
        if differ:
            raise ValueError(
                f"{out} holds samples of seed {config.seed} taken differently (sample "
                f"{extra['sample_index']}: {', '.join(differ)}); continue with the same pool and "
                "settings, or use another output file or seed"
            )


def collect_samples(
    pool: Sequence[TableSpec],
    num_samples: int,
    out: Path | str,
    config: CollectConfig = CollectConfig(),
    progress: bool = True,
    budget_s: float | None = None,
    now: Callable[[], float] = time.monotonic,
) -> int:
    """Measure random table subsets of the pool (sizes uniform in min..max_tables, tables without
    replacement) as single-device kernels and append one JSON line per subset to out. Sample i
    uses seed (config.seed, i), so an interrupted run resumes where it stopped with the samples it
    would have taken: lines already in out (same seed) are kept and skipped, and a file whose
    samples of this seed came from another pool or other settings is refused. budget_s: start no
    sample once that many seconds (by now()) have passed since the call began; the sample under
    way is finished and written, so the file stays whole and a rerun continues. Returns the
    number of samples taken now."""
    from tqdm import tqdm

    started = now()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    truncate_torn_tail(out)
    if out.exists():
        _check_resumable(out, pool, config)
    done = collected_indices(out, config.seed)
    todo = [i for i in range(num_samples) if i not in done]
    hw = hardware_string(config.device, config.threads, config.clock)
    hw_info = hardware_info(config.device, config.threads)
    hi = min(config.max_tables, len(pool))
    lo = min(config.min_tables, hi)
    cache = None
    if config.reuse_inputs and todo:
        cache = InputCache(
            config.batch_size, config.device, seed=config.seed, row_cap=config.row_cap
        )
        cache.prepare(pool)  # every table, in parallel, rather than a sample's few at a time
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
            if budget_s is not None and now() - started >= budget_s:
                break
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
                inputs=None if cache is None else cache.inputs(tables),
                release=cache is None,
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
                    "inputs": "per_table" if cache is not None else "per_sample",
                    **timing.spread(),
                    "seconds": round(time.perf_counter() - t0, 3),
                    "hardware_info": hw_info,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    **config.extra,
                },
            )
            append_sample(f, sample)
            taken += 1
            bar.update(1)
            bar.set_postfix(tables=k, fwd=f"{timing.fwd_ms:.2f}", bwd=f"{timing.bwd_ms:.2f}")
    if cache is not None:
        cache.clear()
    return taken
