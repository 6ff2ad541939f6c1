import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from recsearch import tables as RT
from recsearch.placement import tables as T
from recsearch.placement.cli import tables as tables_cli
from recsearch.placement.types import table_memory_bytes
from recsearch.types import NUM_REUSE_BINS, TableSpec

from .conftest import TINY_POOL

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
LOCALITY_2021 = SHARED / "dlrm_datasets_2021_locality_stats.txt"
needs_locality = pytest.mark.skipif(not LOCALITY_2021.exists(), reason=f"{LOCALITY_2021} not here")


def test_zipf_ids_follow_the_law():
    rng = np.random.default_rng(0)
    ids = T.zipf_ids(rng, 1000, 1.2, 200_000)
    assert ids.min() >= 0 and ids.max() < 1000
    weights = np.arange(1, 1001) ** -1.2
    expected = weights[:3] / weights.sum()
    observed = np.bincount(ids, minlength=1000)[:3] / ids.size
    assert np.allclose(observed, expected, rtol=0.03)
    uniform = T.zipf_ids(rng, 50, 0.0, 50_000)
    assert np.bincount(uniform, minlength=50).min() > 800
    # beyond the exact head the tail is continuous: the hottest tail id is still inside the table
    big = T.zipf_ids(rng, 3_000_000, 1.0, 100_000)
    assert big.max() < 3_000_000 and (big >= 1 << 16).any()


def test_more_skew_means_more_reuse():
    rng = np.random.default_rng(2)
    flat = T.zipf_reuse_hist(rng, 100_000, 4.0, 0.2, 1024)
    skewed = T.zipf_reuse_hist(rng, 100_000, 4.0, 1.3, 1024)
    assert len(flat) == NUM_REUSE_BINS and sum(flat) == pytest.approx(1, abs=1e-4)
    assert flat[0] > 0.8 and skewed[0] < flat[0] and sum(skewed[4:]) > sum(flat[4:])


def test_pool_is_seeded_and_in_range(tiny_pool):
    again = T.generate_pool(TINY_POOL)
    assert again == tiny_pool
    other = T.generate_pool(replace(TINY_POOL, seed=4))
    assert other.tables != tiny_pool.tables
    for t in tiny_pool.tables:
        assert TINY_POOL.min_rows <= t.num_rows <= TINY_POOL.max_rows
        assert t.dim in TINY_POOL.dims and t.pooling_factor >= 1
        assert len(t.reuse_hist) == NUM_REUSE_BINS and sum(t.reuse_hist) == pytest.approx(
            1, abs=1e-4
        )
    assert len({t.dim for t in tiny_pool.tables}) >= 4
    assert len({t.name for t in tiny_pool.tables}) == len(tiny_pool.tables)


def test_pool_split_is_disjoint_and_complete(tiny_pool):
    train, test = T.split_pool(tiny_pool, 0.25, seed=0)
    names_train = {t.name for t in train.tables}
    names_test = {t.name for t in test.tables}
    assert not names_train & names_test
    assert names_train | names_test == {t.name for t in tiny_pool.tables}
    assert len(test.tables) == 10 and train.split == "train" and test.split == "test"


def test_task_cap_is_feasible_tight_and_reproducible(tiny_pool):
    task = T.make_task(tiny_pool.tables, 20, 4, seed=7, slack=1.1)
    assert task == T.make_task(tiny_pool.tables, 20, 4, seed=7, slack=1.1)
    assert task.table_ids != T.make_task(tiny_pool.tables, 20, 4, seed=8).table_ids
    mems = [table_memory_bytes(t, task.optimizer) for t in task.tables]
    assert task.device_memory_bytes >= max(mems)
    assert task.device_memory_bytes * 4 >= sum(mems) * 1.1
    assert len(set(task.table_ids)) == 20
    # tight: not far above what the rules ask for
    floor = max(max(mems), int(sum(mems) * 1.1 / 4))
    assert task.device_memory_bytes <= floor * 1.6


def test_generate_tasks_names_and_stability(tiny_pool):
    tasks = T.generate_tasks(tiny_pool.tables, [(10, 2), (20, 4)], 2, seed=0, prefix="tr_")
    assert [t.name for t in tasks] == [
        "tr_t10_d2_000",
        "tr_t10_d2_001",
        "tr_t20_d4_000",
        "tr_t20_d4_001",
    ]
    more = T.generate_tasks(tiny_pool.tables, [(10, 2)], 3, seed=0, prefix="tr_")
    assert more[:2] == tasks[:2]  # adding tasks leaves the earlier ones unchanged


def test_task_file_round_trip(tmp_path, tiny_pool):
    task = T.make_task(tiny_pool.tables, 8, 2, seed=1, pool_name="p.json", reuse_batch_size=256)
    T.save_task(tmp_path / "a.json", task)
    back = T.load_task(tmp_path / "a.json")
    assert back == task and back.extra == task.extra
    assert back.topology.world_size == 2
    assert T.load_tasks(tmp_path) == [task]
    (tmp_path / "bad.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(ValueError, match="bad.json: not a placement task"):
        T.load_task(tmp_path / "bad.json")


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".csv"])
def test_table_files_round_trip(tmp_path, tiny_pool, suffix):
    tables = list(tiny_pool.tables[:5]) + [
        TableSpec("f", 10, 4, 2.5, feature_names=("a", "b"), bytes_per_value=2)
    ]
    RT.save_tables(tmp_path / f"t{suffix}", tables, {"note": 1})
    assert RT.load_tables(tmp_path / f"t{suffix}") == tables


def test_pool_file_is_a_data_stats_file(tmp_path, tiny_pool):
    T.save_pool(tmp_path / "pool.json", tiny_pool)
    assert RT.load_tables(tmp_path / "pool.json") == list(tiny_pool.tables)
    back = T.load_pool(tmp_path / "pool.json")
    assert back.tables == tiny_pool.tables and back.zipf_exponents == tiny_pool.zipf_exponents
    assert back.config == tiny_pool.config


@needs_locality
def test_locality_stats_parse():
    blocks = T.load_locality_stats(LOCALITY_2021)
    assert len(blocks) == 17 and blocks[0]["batch_size"] == 65536
    assert blocks[0]["rows"][0] == 0.473 and blocks[0]["lookups"][0] == 0.069
    assert blocks[0]["lookups"][-1] == 0.019
    for b in blocks:
        assert sum(b["lookups"]) == pytest.approx(1, abs=0.01)


@needs_locality
def test_default_pool_reuse_resembles_the_dlrm_datasets():
    """Coarse: at the real batch (65536) the default Zipf skew puts lookups in the same range of
    reuse bins as Meta's 2021 DLRM data (measured L1 distance about 0.3 on 48 tables)."""
    target = np.mean([b["lookups"] for b in T.load_locality_stats(LOCALITY_2021)], 0)
    cfg = T.PoolConfig(
        num_tables=12, seed=1, reuse_batch_size=65536, max_pooling=20, max_rows=200_000
    )
    agg = T.pool_lookup_hist(T.generate_pool(cfg).tables)
    assert np.abs(agg - target).sum() < 0.6
    # uniform ids would put nearly all lookups in the first bins
    flat = T.pool_lookup_hist(T.generate_pool(replace(cfg, zipf_mean=0.0, zipf_sd=0.0)).tables)
    assert np.abs(flat - target).sum() > np.abs(agg - target).sum() + 0.3


def test_cli_pool_tasks_suite(tmp_path, capsys):
    out = tmp_path / "pools"
    assert (
        tables_cli.main(["pool", "--out-dir", str(out), "--num-tables", "24", "--reuse-batch-size", "128"])
        == 0
    )
    train = RT.load_tables(out / "pool_train.json")
    test = RT.load_tables(out / "pool_test.json")
    assert len(train) == len(test) == 12 and not {t.name for t in train} & {t.name for t in test}
    assert (
        tables_cli.main(
            [
                "tasks",
                "--pool",
                str(out / "pool_train.json"),
                "--tables",
                "6",
                "--devices",
                "2",
                "--num",
                "2",
                "--out-dir",
                str(tmp_path / "tasks"),
            ]
        )
        == 0
    )
    first = T.load_tasks(tmp_path / "tasks")
    assert len(first) == 2 and first[0].reuse_batch_size == 128
    tables_cli.main(
        [
            "tasks",
            "--pool",
            str(out / "pool_train.json"),
            "--tables",
            "6",
            "--devices",
            "2",
            "--num",
            "2",
            "--out-dir",
            str(tmp_path / "tasks2"),
        ]
    )
    assert T.load_tasks(tmp_path / "tasks2") == first  # same seed, same tasks
    assert (
        tables_cli.main(
            [
                "tasks",
                "--pool",
                str(out / "pool_train.json"),
                "--tables",
                "6",
                "7",
                "--devices",
                "2",
                "--out-dir",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert (
        tables_cli.main(["suite", "--pool-dir", str(out), "--num", "1"]) == 0
    )  # shapes larger than the pool skipped
    capsys.readouterr()
