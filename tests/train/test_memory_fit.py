"""The up-front check that a run's embedding tables can fit the memory of its devices."""

import torch

from recsearch.placement.types import table_memory_bytes
from recsearch.train.memory_fit import MemoryRoom, memory_room, tables_memory_problem
from recsearch.types import TableSpec

GIB = 1 << 30
RAW_ROWS = [2**32] * 26  # a dataset preprocessed without a categorical option: raw 32-bit ids


def test_raw_id_tables_are_refused_with_the_sizes_and_a_cap_that_fits():
    room = MemoryRoom(20 * GIB, "MemAvailable of 1 host(s)")
    problem = tables_memory_problem(RAW_ROWS, 16, "fp32", "rowwise_adagrad", room)
    assert problem is not None
    # 26 x 2^32 rows x (16 x 4 B weights + 4 B row-wise state) = 7,072 GiB
    assert "need 7,072.0 GiB" in problem and "has 20.0 GiB (MemAvailable of 1 host(s))" in problem
    assert "4,294,967,296 rows" in problem and "--hash-size" in problem
    cap = int(problem.split("max_rows_per_table=")[1].split()[0])
    capped = [TableSpec(f"t{i}", min(n, cap), 16) for i, n in enumerate(RAW_ROWS)]
    used = sum(table_memory_bytes(t, "rowwise_adagrad") for t in capped)
    assert 0.8 * 0.9 * room.free_bytes < used <= 0.9 * room.free_bytes  # the cap uses the room, rounded down


def test_tables_that_fit_pass_and_precision_and_optimizer_count():
    rows = [1_000_000] * 4  # 4M rows x dim 64
    fp32_sgd = 4_000_000 * 64 * 4
    assert tables_memory_problem(rows, 64, "fp32", "sgd", MemoryRoom(fp32_sgd, "x")) is None
    assert tables_memory_problem(rows, 64, "fp32", "sgd", MemoryRoom(fp32_sgd - 1, "x")) is not None
    assert tables_memory_problem(rows, 64, "fp16", "sgd", MemoryRoom(fp32_sgd // 2, "x")) is None
    # adam keeps two fp32 moments per weight: three times sgd's fp32 bytes
    assert tables_memory_problem(rows, 64, "fp32", "adam", MemoryRoom(3 * fp32_sgd - 1, "x")) is not None


def test_no_cap_is_offered_when_even_small_tables_cannot_fit():
    problem = tables_memory_problem(RAW_ROWS, 16, "fp32", "sgd", MemoryRoom(1 << 20, "x"))
    assert problem is not None and "max_rows_per_table" not in problem and "--vocab-threshold" in problem


def test_the_cpu_room_is_the_hosts_available_memory_once_per_host(monkeypatch):
    monkeypatch.setattr("recsearch.train.memory_fit.available_memory_bytes", lambda: 8 * GIB)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert memory_room(torch.device("cpu"), 2) == MemoryRoom(8 * GIB, "MemAvailable of 1 host(s)")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert memory_room(torch.device("cpu"), 4) == MemoryRoom(16 * GIB, "MemAvailable of 2 host(s)")


def test_the_gpu_room_is_the_free_memory_within_the_runs_share(monkeypatch):
    """Trials sharing a GPU each get device_memory_fraction of it: the room is the device's free
    memory, at most that share of the device (not the free memory times the share)."""
    free, total = 100 * GIB, 140 * GIB
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free, total))
    cuda = torch.device("cuda", 0)
    assert memory_room(cuda, 1).free_bytes == 100 * GIB
    assert memory_room(cuda, 1, 0.25).free_bytes == 35 * GIB  # the share: 0.25 x 140
    assert memory_room(cuda, 2, 0.9).free_bytes == 2 * 100 * GIB  # the free memory bounds it
