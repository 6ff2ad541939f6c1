"""Latency that ranks correctly: the device lock keeps training off the device while latency is
timed, the measurement repeats until it is reproducible, and the reference is timed alongside."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import math
import time

import pytest
import torch

from recsearch.train import trainer
from recsearch.train.latency import DeviceLock, measure_interleaved
from recsearch.train.result import TrainResult
from tests.train.engines import small_config

CPU = torch.device("cpu")

_HOLDER = textwrap.dedent(
    """
    import sys, time
    from recsearch.train.latency import DeviceLock
    lock = DeviceLock(sys.argv[1])
    mode, hold_s = sys.argv[2], float(sys.argv[3])
    start = time.time()
    if mode == "shared":
        lock.hold_shared()
    else:
        cm = lock.exclusive(); cm.__enter__()
    print(f"got {time.time():.3f}", flush=True)
    time.sleep(hold_s)
    print(f"done {time.time():.3f}", flush=True)
    """
)


def _start(path, mode: str, hold_s: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _HOLDER, str(path), mode, str(hold_s)], stdout=subprocess.PIPE, text=True)


def _times(proc: subprocess.Popen, read_before: str = "") -> dict[str, float]:
    """What the holder printed ("got <t>", "done <t>"), including lines the test already read."""
    out, _ = proc.communicate(timeout=60)
    return {word: float(value) for word, value in (line.split() for line in (read_before + out).splitlines())}


def test_the_device_lock_gives_a_measurement_the_device_alone_and_prefers_it(tmp_path):
    """A trainer's window (shared) delays a measurement (exclusive) until it ends; a window asked
    for while the measurement waits starts only after the measurement: no overlap either way."""
    path = tmp_path / "device.lock"
    trainer_a = _start(path, "shared", 1.5)
    a_got = trainer_a.stdout.readline()  # A holds its window (a condition, not a guessed delay)
    assert a_got.startswith("got ")
    measurement = _start(path, "exclusive", 1.0)
    # the measurement waits for A, holding the turnstile (nothing outside it shows when it has
    # started waiting: a fixed delay, well inside A's remaining window)
    time.sleep(0.5)
    trainer_b = _start(path, "shared", 0.1)
    a, m, b = _times(trainer_a, a_got), _times(measurement), _times(trainer_b)
    assert m["got"] >= a["done"] - 0.05  # the measurement started only after A's window ended
    assert b["got"] >= m["done"] - 0.05  # B waited for the measurement though asked before it began
    # two trainers share: without a measurement, windows overlap
    first, second = _start(path, "shared", 1.0), _start(path, "shared", 1.0)
    f, s = _times(first), _times(second)
    assert s["got"] < f["done"] and f["got"] < s["done"]


def test_a_trainer_sees_a_waiting_measurement_and_lets_it_in_after_its_step(tmp_path):
    path = tmp_path / "device.lock"
    lock = DeviceLock(path)
    assert lock.measurement_waiting() is False  # not holding it: nothing to give way to
    lock.hold_shared()
    assert lock.measurement_waiting() is False  # nobody waits
    measurement = _start(path, "exclusive", 0.1)
    deadline = time.time() + 30
    while not lock.measurement_waiting():  # the measurement holds the turnstile and waits for us
        assert time.time() < deadline, "the waiting measurement was never seen"
        time.sleep(0.01)
    assert measurement.poll() is None  # still waiting: the trainer holds the device
    lock.release()
    m = _times(measurement)  # it gets the device once the trainer lets go
    assert m["got"] <= m["done"]
    lock.close()


def test_no_lock_path_locks_nothing():
    lock = DeviceLock(None)
    lock.hold_shared()
    with lock.exclusive() as waited:
        assert waited == 0.0
    lock.close()


def test_interleaved_rounds_stop_once_the_spread_is_met():
    calls = {"fast": lambda: sum(range(2000)), "slow": lambda: sum(range(20000))}
    stats = measure_interleaved(calls, CPU, target_spread=0.5, max_seconds=10.0, calls_per_round=5, min_rounds=2)
    assert stats["fast"].calls >= 10 and stats["fast"].calls % 5 == 0
    assert stats["fast"].p50_ms < stats["slow"].p50_ms  # ranks them
    assert all(s.spread <= 0.5 for s in stats.values())
    assert all(s.p99_ms >= s.p50_ms > 0 for s in stats.values())
    # a model that keeps slowing down never reproduces: the time cap stops it, and the spread it
    # reached is reported
    calls_made = []

    def drifting() -> None:
        calls_made.append(1)
        time.sleep(0.0002 * len(calls_made))

    started = time.perf_counter()
    capped = measure_interleaved({"x": drifting}, CPU, target_spread=0.03, max_seconds=0.5, calls_per_round=5)
    assert time.perf_counter() - started < 3.0 and capped["x"].spread > 0.03


def test_the_ratio_to_a_reference_is_paired_round_by_round_while_the_machine_drifts():
    # the machine slows down threefold while it measures: each call of either model takes longer
    # than the one before, but within a round the model takes twice the reference's time
    calls_made = []

    def work(units: int):
        def call() -> None:
            calls_made.append(1)
            time.sleep(0.001 * units * (1 + 2 * len(calls_made) / 400))
        return call

    # a spread target no drift of this size exceeds: the timing stops at min_rounds, 40 rounds
    stats = measure_interleaved({"model": work(2), "ref": work(1)}, CPU, target_spread=0.99, max_seconds=30.0,
                                calls_per_round=5, min_rounds=40, warmup_calls=0, reference="ref")
    assert stats["model"].calls == stats["ref"].calls == 200
    assert stats["model"].vs_reference == pytest.approx(2.0, rel=0.1)
    assert stats["model"].vs_reference_spread < 0.1 and stats["ref"].vs_reference is None
    assert stats["model"].spread > 0.3  # its own p50 is not reproducible: the machine drifted
    with pytest.raises(ValueError, match="reference 'nope' is not one of the timed calls"):
        measure_interleaved({"model": work(1)}, CPU, reference="nope")


def test_a_run_times_the_reference_in_the_same_rounds(tmp_path, learnable_data):
    cfg = small_config(
        learnable_data, tmp_path / "out", "max_steps=4", "latency_batch_sizes=[64]", "latency_iters=20",
        f"device_lock={tmp_path / 'device.lock'}", "latency_reference.arch.embedding_dim=8",
        "latency_reference.arch.bottom_mlp=[64,32,8]", "latency_reference.arch.top_mlp=[256,128,1]",
    )
    result = trainer.train(cfg)
    entry = result.latency(64)
    assert entry.calls >= 20 and 0 <= entry.spread and entry.p99_ms >= entry.p50_ms > 0
    assert entry.reference_p50_ms > 0 and entry.reference_spread >= 0
    assert entry.vs_reference > 0 and entry.vs_reference_spread >= 0
    assert result.latency_setup["device_to_itself"] is True
    assert "eager" in result.latency_setup["serving"] and entry.serving == "eager"  # on the CPU
    assert result.latency_setup["batch_sizes"] == [64] and result.latency_setup["notes"] == []
    # the file says what the run returned
    assert TrainResult.read(tmp_path / "out" / "result.json").latency(64) == entry
    # without a reference there is no reference entry, and nothing is locked
    plain = trainer.train(small_config(learnable_data, tmp_path / "plain", "max_steps=4", "latency_batch_sizes=[64]"))
    assert plain.latency(64).reference_p50_ms is None and plain.latency(64).vs_reference is None
    assert plain.latency_setup["device_to_itself"] is False


@pytest.mark.slow
def test_the_latency_against_a_reference_in_the_same_rounds_is_reproducible(tmp_path, learnable_data):
    """On a shared machine a p50 drifts between runs (measured here: 0.59-1.24 ms for one model
    across four runs in one process), while the ratio to a reference timed in the same rounds
    stays put (1.008-1.027 for a reference of the same architecture): the search compares that
    ratio with its budget. Two runs whose measurements report themselves reproducible (spread
    within the 3 % target): each ratio near 1 and the two within 6 % (margin for a busy CI
    machine). A run that other processes disturb reports a spread over the target instead
    (seen here at load average 3.6: 1.6); such pairs are retried, and a machine too busy to give
    one clean pair skips the test rather than judge it."""
    same_arch = [f"latency_reference.arch.{k}={v}" for k, v in (("embedding_dim", 8), ("bottom_mlp", "[16,8]"), ("top_mlp", "[16,1]"))]
    clean_pairs = []
    for attempt in range(3):
        entries = []
        for name in ("a", "b"):
            cfg = small_config(learnable_data, tmp_path / f"{attempt}{name}", "max_steps=2", "latency_batch_sizes=[256]",
                               "latency_iters=40", *same_arch)
            entries.append(trainer.train(cfg).latency(256))
        if all(e.spread <= 0.03 and e.reference_spread <= 0.03 for e in entries):
            ratios = [e.vs_reference for e in entries]
            clean_pairs.append(ratios)
            if all(0.9 < r < 1.1 for r in ratios) and abs(ratios[0] - ratios[1]) / min(ratios) < 0.06:
                return
    if not clean_pairs:
        pytest.skip("the machine was too busy for any measurement to reach its spread target")
    raise AssertionError(f"ratios of measurements that reported themselves reproducible disagree: {clean_pairs}")


def test_a_graphed_latency_on_the_cpu_is_refused_before_training(tmp_path, learnable_data):
    cfg = small_config(learnable_data, tmp_path / "out", "max_steps=4", "latency_batch_sizes=[64]", "latency_cuda_graph=true")
    with pytest.raises(ValueError, match="latency_cuda_graph=true needs a CUDA device"):
        trainer.train(cfg)
    assert not (tmp_path / "out" / "result.json").exists()


def test_lockstep_makes_the_same_number_of_calls_whatever_the_timings():
    """Collective calls (a sharded model) need the same count on every rank: with lockstep every
    callable runs warm-up + min_rounds x (one settling call + calls_per_round), however fast it is
    and whatever spread it shows (without lockstep a fast call settles for 2 ms: many calls)."""
    counts = {"fast": 0, "slow": 0}

    def call(name: str, seconds: float):
        def run() -> None:
            counts[name] += 1
            time.sleep(seconds)
        return run

    calls = {"fast": call("fast", 0.0), "slow": call("slow", 0.001)}
    stats = measure_interleaved(calls, torch.device("cpu"), calls_per_round=4, min_rounds=3, warmup_calls=2,
                                reference="fast", target_spread=0.0, max_seconds=0.0, lockstep=True)
    assert counts == {"fast": 2 + 3 * 5, "slow": 2 + 3 * 5}
    assert stats["fast"].calls == stats["slow"].calls == 12
    counts.update(fast=0, slow=0)
    measure_interleaved(calls, torch.device("cpu"), calls_per_round=4, min_rounds=3, warmup_calls=2,
                        target_spread=math.inf)
    assert counts["fast"] > 2 + 3 * 5  # time-based settling: a count of its own
