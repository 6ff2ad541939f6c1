"""Table families (placement/families.py) and the leave-one-family-out report
(tools/bench_place_families.py): what each family's tables look like, tasks every baseline can
place, resumable files, and the report's ratios."""

import json
import math
import os

import numpy as np
import pytest

from recsearch.placement.baselines import make_baseline
from recsearch.placement.cli.tables import main as tables_main
from recsearch.placement.families import (
    CRITEO_KAGGLE_ROWS,
    FAMILY_TASK_SHAPES,
    FamilySettings,
    family_names,
    family_tables,
    family_tasks,
    save_family,
)
from recsearch.placement.tables import CAP_PLACERS
from recsearch.placement.types import table_memory_bytes
from tools.bench_place_families import family_summary

SMALL = FamilySettings(num_tables=40, seed=3)


@pytest.mark.parametrize("name", family_names())
def test_each_family_is_reproducible_valid_and_within_the_byte_cap(name):
    a, b = family_tables(name, SMALL), family_tables(name, SMALL)
    assert a == b and len(a) >= 22
    assert len({t.name for t in a}) == len(a) and all(t.name.startswith(name + "_") for t in a)
    for t in a:
        assert t.num_rows >= 1 and t.dim % 4 == 0 and t.pooling_factor >= 1
        assert t.num_rows * t.dim * t.bytes_per_value <= SMALL.max_table_bytes
        assert math.isclose(sum(t.reuse_hist), 1.0, abs_tol=1e-3)
    assert family_tables(name, FamilySettings(num_tables=40, seed=4)) != a  # the seed matters


def test_families_differ_in_the_way_they_say():
    kaggle = family_tables("criteo_kaggle", SMALL)
    assert len(kaggle) == 26 * 4 and {t.pooling_factor for t in kaggle} == {1.0}
    cap = SMALL.max_table_bytes
    for f, rows in enumerate(CRITEO_KAGGLE_ROWS):
        for t in (t for t in kaggle if t.name.startswith(f"criteo_kaggle_c{f + 1}_d")):
            assert t.num_rows == min(rows, cap // (t.dim * 4))  # real cardinality, cut only by the cap
    heavy = family_tables("heavy_multihot", FamilySettings(num_tables=200))
    assert np.median([t.pooling_factor for t in heavy]) > 10 and max(t.pooling_factor for t in heavy) > 100
    tiny = family_tables("tiny_huge", FamilySettings(num_tables=200))
    small_share = np.mean([t.num_rows <= 1000 for t in tiny])
    assert 0.8 <= small_share <= 0.97 and any(t.num_rows >= 1_000_000 for t in tiny)
    mixed = family_tables("mixed_dims", FamilySettings(num_tables=200))
    dims = {t.dim for t in mixed}
    assert max(dims) <= 512 and len(dims) > 40 and any(d & (d - 1) for d in dims)  # not only powers of two


def test_unknown_family_is_named():
    with pytest.raises(ValueError, match="unknown table family 'netflix'; known: lognormal"):
        family_tables("netflix")


@pytest.mark.parametrize("name", ["avazu", "tiny_huge"])
def test_family_tasks_have_the_listed_shapes_and_every_baseline_places_them(name):
    tables = family_tables(name, FamilySettings(seed=1))
    tasks = family_tasks(name, tables, seed=1)
    assert [(len(t.tables), t.world_size) for t in tasks] == [(min(n, len(tables)), d) for n, d in FAMILY_TASK_SHAPES[name]]
    for task in tasks:
        assert task.device_memory_bytes >= max(table_memory_bytes(t, task.optimizer) for t in task.tables)
        for placer in CAP_PLACERS:
            make_baseline(placer, optimizer=task.optimizer).place(task.tables, task.topology).validate(
                task.tables, task.topology, task.optimizer)


def test_save_family_keeps_what_is_there_and_the_cli_writes_every_family(tmp_path, capsys):
    pool, tasks = save_family(tmp_path, "avazu")
    stamps = [os.stat(p).st_mtime_ns for p in (pool, *tasks)]
    again_pool, again_tasks = save_family(tmp_path, "avazu")
    assert (again_pool, again_tasks) == (pool, tasks)
    assert [os.stat(p).st_mtime_ns for p in (pool, *tasks)] == stamps  # not rewritten
    assert tables_main(["families", "--out-dir", str(tmp_path), "--families", "avazu,criteo_terabyte"]) == 0
    assert sorted(p.name for p in (tmp_path / "pools").iterdir()) == ["avazu.json", "criteo_terabyte.json"]
    assert len(list((tmp_path / "tasks" / "criteo_terabyte").glob("*.json"))) == 3
    assert tables_main(["families", "--out-dir", str(tmp_path), "--families", "avazu,nope"]) == 2
    assert "unknown table families ['nope']" in capsys.readouterr().err


def test_report_ratios_are_against_the_cheapest_baseline_of_each_task_and_the_best_method():
    def res(**ms):
        return {m: {"feasible": True, "measured_ms": v} for m, v in ms.items()}

    baselines = dict(random=20.0, round_robin=12.0, size_greedy=11.0, dim_greedy=13.0, lookup_greedy=10.0,
                     size_lookup_greedy=10.5, torchrec=14.0)
    rows = [
        {"task": "a", "results": res(**baselines, learned=9.0, learned_k16=8.0)},
        {"task": "b", "results": res(**{**baselines, "size_greedy": 8.0}, learned=10.0, learned_k16=8.4)},
    ]
    eval_json = {"rows": rows, "summary": {"measured_ms": {"best_baseline": "lookup_greedy"}},
                 "cost_net_placement_error": {"mre": 0.12, "compute_mre": 0.1}}
    net_json = {"metrics": {"test": {"f.jsonl": {"errors": {"total": 0.2}}}}}
    got = family_summary(eval_json, net_json, "learned_k16")
    a, b = got["tasks"]
    assert a["cheapest_baseline"] == "lookup_greedy" and a["learned_k16_vs_task_best"] == 0.8
    assert b["cheapest_baseline"] == "size_greedy" and b["learned_k16_vs_task_best"] == 1.05
    assert b["learned_k16_vs_best_method"] == 0.84 and b["learned_vs_task_best"] == 1.25
    assert got["cost_net_heldout_samples_mre"] == 0.2 and got["cost_net_placement_mre"] == 0.12
    assert json.loads(json.dumps(got)) == got


def test_the_shipped_family_samples_read_back_gzipped():
    """recsearch/placement/data/families_cpu: the leave-one-family-out bench's measured samples,
    150 per family, gzipped; the sample reader takes .gz files as they are."""
    from pathlib import Path

    from recsearch.placement.samples import read_samples

    root = Path(__file__).parents[2] / "recsearch" / "placement" / "data" / "families_cpu"
    for name in family_names():
        samples = read_samples(root / f"{name}.jsonl.gz")
        assert len(samples) == 150
        assert all(t.name.startswith(name + "_") for s in samples for t in s.tables)
        assert all(s.batch_size == 4096 and s.cost.fwd_ms > 0 and s.cost.bwd_ms > 0 for s in samples)
