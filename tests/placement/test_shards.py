"""shards.split_tables' ladder: each table at its coarsest sharding that fits, a step finer
where the planner asks (at_least), and what the planner reads off a Split to split further."""

from recsearch.placement.shards import TableRequest, split_tables
from recsearch.placement.types import table_memory_bytes
from recsearch.types import TableSpec

CPU = ("table_wise", "column_wise")  # what the CPU EBC sharder offers, data_parallel aside


def _requests(kinds=CPU):
    return [TableRequest(TableSpec(f"t{i}", 1000, 16), kinds) for i in range(3)]


def test_each_table_at_its_coarsest_fit_unless_asked_for_finer():
    whole = table_memory_bytes(TableSpec("t", 1000, 16))  # 68,000 B with row-wise state
    split = split_tables(_requests(), [whole, whole])
    assert [s.sharding_type for s in split.shardings] == ["table_wise"] * 3
    assert [s.step for s in split.shardings] == [0, 0, 0]
    assert all(s.finer for s in split.shardings)
    assert split.describe() == "no table split"
    # all three with 68,000 B pieces: the first in table order is split first
    assert split.finer_candidates() == [0, 1, 2]
    assert split.unpacked_bytes() == whole  # two ranks, three tables: one left over
    # one step finer for t0: column-wise in 2; t1, t2 stay whole
    finer = split_tables(_requests(), [whole, whole], at_least=[1, 0, 0])
    assert [p.name for p in finer.pieces] == ["t0/col0", "t0/col1", "t1", "t2"]
    assert finer.describe() == "t0 column_wise in 2"
    assert finer.finer_candidates() == [1, 2, 0]  # t1, t2 now have the largest pieces
    assert finer.total_bytes() == split.total_bytes() + 1000 * 4  # a second row-wise state
    assert finer.unpacked_bytes() == 72_000  # t1, t2 fill both ranks: both halves left over
    # past the end of its ladder (pieces of 4 columns, the finest): the finest that fits
    finest = split_tables(_requests(), [whole, whole], at_least=[99, 0, 0])
    assert [p.dim for p in finest.pieces[:4]] == [4, 4, 4, 4]
    assert not finest.shardings[0].finer and finest.finer_candidates() == [1, 2]


def test_row_wise_is_the_last_step_where_allowed():
    whole = table_memory_bytes(TableSpec("t", 1000, 16))
    kinds = ("table_wise", "column_wise", "row_wise")
    split = split_tables(_requests(kinds), [whole, whole], at_least=[4, 0, 0])  # 2, 4 cols, rows
    assert split.shardings[0].sharding_type == "row_wise"
    assert split.shardings[0].pinned_bytes == (34_000, 34_000)
    assert split.free_bytes == (whole - 34_000, whole - 34_000)
    assert not split.shardings[0].finer
    assert 0 not in split.finer_candidates()  # pinned: nothing left to split
