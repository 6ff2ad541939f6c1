"""Inference latency that ranks models correctly: measured with the device to itself, repeated
until it is reproducible, and beside a reference model timed in the same window.

A search trains several trials at once on one machine, and a latency measured while another
trial trains is noise that decides which candidates win. The remedies:

- `DeviceLock`: trainers hold it shared while they run steps (released at every log window, after
  the host has waited for the device), a latency measurement holds it exclusive. Writer-preferring
  (a turnstile file): once a measurement asks, no new training window starts, the running ones end
  after their current step (a trainer checks for a waiting measurement after every step), and the
  measurement runs alone. Plain fcntl locks on files in the search
  directory: they work across the processes of one host and are released by the kernel when a
  process dies.
- `measure_interleaved`: every model is timed in rounds, in an order that alternates (A B, B A,
  ...), so a drift of the machine's speed hits them alike; rounds continue until the p50 of the
  first half of the rounds and that of the second half differ by at most `target_spread` (the
  same model measured twice) for every model, and so does each model's ratio to the reference
  (paired round by round), or `max_seconds` pass. The spreads reached are reported either way.
- The reference: a trial times a model of the search's reference architecture (random weights:
  the latency of a forward does not depend on them) in the same rounds, so the search can compare
  a candidate with the budget as a ratio measured under the same conditions.
- No model's time carries its neighbour's. On the CPU every call runs on one intra-op thread
  (`cpu_threads`): with a team of threads each parallel region waits for all of them, and on a
  CPU that other processes use, a worker that lost its core costs scheduler ticks (measured on 2
  shared cores: one x.add_(1) over 200k floats 0.013 ms on one thread; on two 0.010 ms or 12 ms,
  depending on where the worker was). Where it was depends on what ran before: the [16, 8]
  two-tower reference (examples/two_tower.py) took 4.7 ms alone and 40 ms beside a [1024, 1024,
  64] one, or 40 ms alone and 0.38 ms beside it, for 0.33 ms on one thread, and their ratio came
  out anywhere from 1.7 to 45 for 15. And every block of a round starts with untimed calls
  (`settle_ms`): after the other model a model's first calls find the caches holding that
  model's data (the light model's first call about 2x its p50, the next three about 12, 5 and 3 %
  over).
  Measured so, each model's p50 beside the other is within a few percent of its p50 alone, and
  so is the ratio (tests/train/test_latency_interference.py).

Serving setup measured: `model(batch)` under torch.no_grad() in eval mode, one batch at a time,
batch already on the device, host synchronised with the device before and after each call, on
the CPU on one intra-op thread (as a server that runs one request per core); on CUDA
(`latency_cuda_graph`, default auto) the forward is captured once as a CUDA graph and each
timed call is a replay, as a GPU server that graphs its model serves it (at batch 256 an eager
forward is mostly kernel launches); eager where capture fails (the reason is recorded) or on CPU.
"""

from __future__ import annotations

import fcntl
import gc
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

SERVING_SETUP = {
    "eager": "eager model(batch), torch.no_grad, eval mode, batch on the device, synchronised per call, "
             "one intra-op thread on the CPU",
    "cuda_graph": "model(batch) captured as one CUDA graph, timed replays, torch.no_grad, eval mode, "
                  "static batch on the device, synchronised per call",
}


class DeviceLock:
    """Shared for training, exclusive for a latency measurement (see the module docstring).
    `DeviceLock(None)` locks nothing (a run outside a search)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self._device_fd: int | None = None
        self._turnstile_fd: int | None = None
        self._shared = False

    def _open(self) -> tuple[int, int]:
        if self._device_fd is None:
            assert self.path is not None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._device_fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            self._turnstile_fd = os.open(self.path.with_name(self.path.name + ".turnstile"), os.O_RDWR | os.O_CREAT, 0o644)
        assert self._turnstile_fd is not None
        return self._device_fd, self._turnstile_fd

    def hold_shared(self) -> None:
        """Start (or keep) a training window: waits while a measurement runs or waits to run."""
        if self.path is None or self._shared:
            return
        device_fd, turnstile_fd = self._open()
        fcntl.flock(turnstile_fd, fcntl.LOCK_SH)  # blocks while a measurement holds the turnstile
        fcntl.flock(turnstile_fd, fcntl.LOCK_UN)
        fcntl.flock(device_fd, fcntl.LOCK_SH)
        self._shared = True

    def measurement_waiting(self) -> bool:
        """Whether a latency measurement waits for the device (holds the turnstile) while this
        process holds it shared: the trainer then ends its window after the current step instead
        of at its next log line, so the measurement waits one step, not a whole log window. One
        non-blocking flock call."""
        if self.path is None or not self._shared:
            return False
        assert self._turnstile_fd is not None
        try:
            fcntl.flock(self._turnstile_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(self._turnstile_fd, fcntl.LOCK_UN)
        return False

    def release(self) -> None:
        """End a training window. Call it only once the device has finished the window's work."""
        if self.path is None or not self._shared:
            return
        assert self._device_fd is not None
        fcntl.flock(self._device_fd, fcntl.LOCK_UN)
        self._shared = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        self.hold_shared()
        try:
            yield
        finally:
            self.release()

    @contextmanager
    def exclusive(self) -> Iterator[float]:
        """The device to itself; yields the seconds spent waiting for it."""
        if self.path is None:
            yield 0.0
            return
        self.release()
        device_fd, turnstile_fd = self._open()
        started = time.perf_counter()
        fcntl.flock(turnstile_fd, fcntl.LOCK_EX)  # no new training window starts from now on
        try:
            fcntl.flock(device_fd, fcntl.LOCK_EX)  # the running windows have ended
            try:
                yield time.perf_counter() - started
            finally:
                fcntl.flock(device_fd, fcntl.LOCK_UN)
        finally:
            fcntl.flock(turnstile_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self.release()
        for fd in (self._device_fd, self._turnstile_fd):
            if fd is not None:
                os.close(fd)
        self._device_fd = self._turnstile_fd = None


def graphed(call: Callable[[], object], device: torch.device, warmup_calls: int = 3) -> Callable[[], object]:
    """`call` captured as a CUDA graph; returns its replay. The call's inputs must stay where they
    are (a static batch). Warm-up calls run first on a side stream (lazy initialisation, caches
    a capture may not fill), as capture requires. Raises what the capture raises."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup_calls):
            call()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    torch.cuda.synchronize(device)
    return graph.replay


@dataclass(frozen=True)
class LatencyStats:
    """One model's latency at one batch size."""

    p50_ms: float
    p99_ms: float
    spread: float  # |p50 of the first half of the rounds - p50 of the second half| / p50
    calls: int  # timed calls (warm-up excluded)
    # with a reference timed in the same rounds: the median over rounds of (this model's median in
    # the round / the reference's), paired round by round so that a drift of the machine's speed
    # cancels; and its spread (first half of the rounds vs second half, as `spread`)
    vs_reference: float | None = None
    vs_reference_spread: float | None = None


# untimed calls' time at the start of each block of a round (see _settle)
SETTLE_MS = 2.0


def measure_interleaved(
    calls: Mapping[str, Callable[[], object]],
    device: torch.device,
    target_spread: float = 0.03,
    max_seconds: float = 20.0,
    calls_per_round: int = 10,
    min_rounds: int = 4,
    warmup_calls: int = 5,
    reference: str | None = None,
    settle_ms: float = SETTLE_MS,
    cpu_threads: int | None = 1,
    lockstep: bool = False,
) -> dict[str, LatencyStats]:
    """Time every callable in alternating rounds until each one's spread (and, with `reference`
    naming one of them, each one's spread of its ratio to it) is within the target, or max_seconds
    pass; return their statistics. Each block of calls_per_round timed calls follows untimed
    ones (at least one, until `settle_ms` have passed); on a CPU `device` every call runs on
    `cpu_threads` intra-op threads (torch.set_num_threads, restored after; None: the process's).

    lockstep: the calls are collective (a model sharded over ranks), so every rank must make the
    same number of them: nothing may depend on time or on this rank's measurements. Then exactly
    min_rounds rounds run and each block settles with one untimed call."""
    if lockstep:
        target_spread, max_seconds, settle_ms = math.inf, math.inf, 0.0
    names = list(calls)
    if reference is not None and reference not in calls:
        raise ValueError(f"reference {reference!r} is not one of the timed calls {names}")
    with _intra_op_threads(device, cpu_threads):
        for name in names:
            for _ in range(warmup_calls):
                _timed(calls[name], device)
        collecting = gc.isenabled()
        gc.disable()  # a collection would land on whichever call happens to trigger it (as timeit does)
        try:
            return _rounds(calls, names, device, target_spread, max_seconds, calls_per_round, max(2, min_rounds),
                           reference, settle_ms)
        finally:
            if collecting:
                gc.enable()


@contextmanager
def _intra_op_threads(device: torch.device, threads: int | None) -> Iterator[None]:
    """`threads` intra-op threads while timing on the CPU (see the module docstring: a team of
    threads makes a small model's time depend on what ran before it on a shared CPU)."""
    if device.type != "cpu" or threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _rounds(
    calls: Mapping[str, Callable[[], object]], names: list[str], device: torch.device, target_spread: float,
    max_seconds: float, calls_per_round: int, min_rounds: int, reference: str | None, settle_ms: float,
) -> dict[str, LatencyStats]:
    rounds: dict[str, list[list[float]]] = {name: [] for name in names}
    others = [name for name in names if reference is not None and name != reference]
    started = time.perf_counter()
    round_index = 0
    while True:
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            _settle(calls[name], device, settle_ms)
            rounds[name].append([_timed(calls[name], device) for _ in range(calls_per_round)])
        round_index += 1
        if round_index < min_rounds:
            continue
        spreads = [_spread(rounds[name]) for name in names]
        spreads += [_spread(_round_ratios(rounds[name], rounds[reference])) for name in others]  # type: ignore[index]
        if all(s <= target_spread for s in spreads) or time.perf_counter() - started > max_seconds:
            break
    out = {}
    for name in names:
        times = sorted(t for block in rounds[name] for t in block)
        ratios = _round_ratios(rounds[name], rounds[reference]) if name in others else None  # type: ignore[index]
        out[name] = LatencyStats(
            p50_ms=statistics.median(times),
            p99_ms=times[min(len(times) - 1, int(round(0.99 * (len(times) - 1))))],
            spread=_spread(rounds[name]),
            calls=len(times),
            vs_reference=statistics.median(r for (r,) in ratios) if ratios else None,
            vs_reference_spread=_spread(ratios) if ratios else None,
        )
    return out


def _settle(call: Callable[[], object], device: torch.device, settle_ms: float) -> None:
    """Untimed calls, at least one, until settle_ms have passed: after the other model a model's
    first calls run slow (its data left the caches; measured after a heavy two-tower on the CPU:
    the light model's first call about 2x its p50, the next three about 12, 5 and 3 % over,
    whether or not the CPU idled 3 ms between: calls bring it back, not time), and a short call
    needs several to be back at its own speed."""
    started = time.perf_counter()
    _timed(call, device)
    while (time.perf_counter() - started) * 1000.0 < settle_ms:
        _timed(call, device)


def _spread(rounds: list[list[float]]) -> float:
    """|median of the first half of the rounds' values - median of the second half| / their middle:
    the same quantity measured twice."""
    half = len(rounds) // 2
    first = statistics.median(t for block in rounds[:half] for t in block)
    second = statistics.median(t for block in rounds[half:] for t in block)
    return abs(first - second) / statistics.median([first, second])


def _round_ratios(model_rounds: list[list[float]], reference_rounds: list[list[float]]) -> list[list[float]]:
    """Per round (one value each, in _spread's shape): the model's median call over the
    reference's (the two timed back to back)."""
    return [[statistics.median(m) / statistics.median(r)] for m, r in zip(model_rounds, reference_rounds)]


def _timed(call: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1000.0
