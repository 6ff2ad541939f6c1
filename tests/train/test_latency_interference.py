"""A model timed beside another (recsearch.train.latency.measure_interleaved) takes the time it
takes alone: a light reference beside a heavy trial is not charged for the heavy one's work, so
their ratio is the ratio of their own times.

Found with examples/two_tower.py on a 2-core CPU that other jobs used: the [16, 8] reference's
p50 was 0.35 ms alone and 31 ms beside a [1024, 1024, 64] one (in other runs 4.7 ms and 40 ms, or
the other way round, 40 ms alone and 0.38 ms beside it). On two intra-op threads every parallel
region waited for a worker thread that the other processes had taken the core from, a scheduler
tick or more, and whether the worker was there depended on what ran before. Timed on one
intra-op thread, with the first calls after the other model untimed, the light two-tower's p50
beside the heavy one came within 7 % of its p50 alone (3 % typical), and the ratio within 6 % of
theirs."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

import pytest
import torch

from recsearch.train.latency import measure_interleaved

CPU = torch.device("cpu")
# bounds for a CPU other processes use as well: the fix keeps both within a few percent, what it
# fixed was off by up to a factor of 100
RATIO_RTOL = 0.25
LIGHT_INFLATION = 1.25


@pytest.fixture
def shared_cpu():
    """The condition the search meets on a shared machine, made here on any machine: a process
    spinning beside the test, and the process's intra-op team as wide as the CPU (torch's default
    outside a search worker)."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, os.cpu_count() or 2))
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        spinner.kill()
        spinner.wait()


def _mlp(widths: list[int]) -> torch.nn.Module:
    layers: list[torch.nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers).eval()


def _p50_alone_ms(call, seconds: float) -> float:
    """The serving setup's p50 (one intra-op thread on the CPU), by a plain loop of calls of this
    model alone: what measure_interleaved should report for it beside any other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(10):
            call()
        times: list[float] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 20:
            start = time.perf_counter()
            call()
            times.append((time.perf_counter() - start) * 1000.0)
        return statistics.median(times)
    finally:
        torch.set_num_threads(threads)


def test_a_light_model_beside_a_heavy_one_takes_its_time_alone_and_their_ratio_is_that_of_their_times(shared_cpu):
    """Measured here with the fix: the light model beside the heavy one within 1 % of alone, the
    ratio within 3 % (one run in five: the heavy model's time alone 25 % off, on a 2-core machine
    that two other jobs used besides the spinner). Without it: the light model 0.18 ms alone and
    12 ms or 0.11 ms beside the heavy one, the ratio 7 or 282 for 47, five runs in five."""
    torch.manual_seed(0)
    batch = torch.rand(128, 256)
    # outputs of 32k floats: element-wise ops that ATen splits over an intra-op team
    light, heavy = _mlp([256, 256]), _mlp([256, 1024, 1024, 256])
    with torch.no_grad():
        before = _p50_alone_ms(lambda: light(batch), seconds=0.3), _p50_alone_ms(lambda: heavy(batch), seconds=0.6)
        both = measure_interleaved({"heavy": lambda: heavy(batch), "light": lambda: light(batch)}, CPU,
                                   target_spread=0.03, max_seconds=1.5, calls_per_round=10, min_rounds=6,
                                   reference="light")
        after = _p50_alone_ms(lambda: light(batch), seconds=0.3), _p50_alone_ms(lambda: heavy(batch), seconds=0.6)
    # each model alone, before and after: the lower p50 of the two windows (a neighbour's burst only
    # ever slows a window; one CI run timed the light model alone at 0.251 ms in one window where
    # it takes 0.18 ms, and beside the heavy one at 0.184)
    light_alone, heavy_alone = min(before[0], after[0]), min(before[1], after[1])
    seen = dict(before=before, after=after, light_alone=light_alone, heavy_alone=heavy_alone, light_beside=both["light"].p50_ms,
                heavy_beside=both["heavy"].p50_ms, ratio_alone=heavy_alone / light_alone,
                ratio=both["heavy"].vs_reference)
    assert heavy_alone / light_alone > 10, seen  # two models of very different cost
    assert 1 / LIGHT_INFLATION < both["light"].p50_ms / light_alone < LIGHT_INFLATION, seen
    assert both["heavy"].vs_reference == pytest.approx(heavy_alone / light_alone, rel=RATIO_RTOL), seen
    assert torch.get_num_threads() == max(2, os.cpu_count() or 2)  # the process's setting is back


def test_on_the_cpu_every_call_runs_on_the_intra_op_threads_asked_for():
    seen: list[int] = []
    threads = torch.get_num_threads()
    timing = dict(target_spread=1.0, max_seconds=1.0, calls_per_round=2, min_rounds=2, warmup_calls=1, settle_ms=0.0)
    measure_interleaved({"x": lambda: seen.append(torch.get_num_threads())}, CPU, **timing)
    assert set(seen) == {1} and torch.get_num_threads() == threads
    seen.clear()
    measure_interleaved({"x": lambda: seen.append(torch.get_num_threads())}, CPU, cpu_threads=None, **timing)
    assert set(seen) == {threads}


def test_a_call_slow_just_after_the_other_model_is_not_timed():
    """Each block starts with untimed calls: the first call after the other model finds the
    caches holding that model's data (measured with the two-tower pair: 1.9x the light model's
    p50), which would otherwise show in the p99 of every model and in the p50 of a short one."""
    last = {"name": ""}

    def model(name: str, ms: float):
        def call() -> None:
            cold = last["name"] != name
            last["name"] = name
            time.sleep((ms * 20 if cold else ms) / 1000.0)
        return call

    calls = {"a": model("a", 1.0), "b": model("b", 2.0)}
    stats = measure_interleaved(calls, CPU, target_spread=1.0, max_seconds=5.0, calls_per_round=5, min_rounds=4,
                                reference="a")
    assert all(s.p99_ms < 10 * ms for s, ms in ((stats["a"], 1.0), (stats["b"], 2.0))), stats
