"""Tiny table pools, the shipped CPU cost net and the shipped held-out tasks for placement tests."""

from pathlib import Path

import pytest

from recsearch.placement.tables import PoolConfig, generate_pool
from recsearch.types import TableSpec

TINY_POOL = PoolConfig(
    num_tables=40, seed=3, rows_median=2000, rows_sigma=1.5, max_rows=50_000, reuse_batch_size=256
)


@pytest.fixture(scope="session")
def tiny_pool():
    return generate_pool(TINY_POOL)


@pytest.fixture(scope="session")
def cpu_cost_net():
    """The shipped CPU cost net (recsearch/placement/data/cost_net_cpu)."""
    from recsearch.placement.cost_net import load_shipped  # torch

    return load_shipped("cpu")


@pytest.fixture(scope="session")
def test_tasks():
    """The 18 shipped held-out tasks (recsearch/placement/data/tasks_test)."""
    from recsearch.placement.tables import load_tasks

    return load_tasks(Path(__file__).parents[2] / "recsearch" / "placement" / "data" / "tasks_test")


def hand_tables() -> list[TableSpec]:
    """Five tables whose greedy placements on 2 devices are worked out by hand in the tests."""
    return [
        TableSpec("A", num_rows=100, dim=8, pooling_factor=1.0),  # 3,200 B
        TableSpec("B", num_rows=50, dim=16, pooling_factor=2.0),  # 3,200 B
        TableSpec("C", num_rows=10, dim=32, pooling_factor=1.0),  # 1,280 B
        TableSpec("D", num_rows=400, dim=4, pooling_factor=8.0),  # 6,400 B
        TableSpec("E", num_rows=20, dim=4, pooling_factor=1.0),  # 320 B
    ]
