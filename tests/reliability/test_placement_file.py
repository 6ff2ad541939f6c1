"""Placement files must fit the model exactly: unknown table names are refused, not ignored."""

import json

import pytest

from recsearch.train.placement_file import PlacementFileError, load_placement

NAMES = [f"t_cat_{i}" for i in range(26)]
GOOD = {name: i % 2 for i, name in enumerate(NAMES)}


def _file(tmp_path, content):
    path = tmp_path / "placement.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.mark.parametrize("content", [GOOD, {"kind": "recsearch.placement", "world_size": 2, "placement": GOOD}])
def test_a_file_that_fits_gives_every_tables_rank(tmp_path, content):
    assert load_placement(_file(tmp_path, content), NAMES, 2) == GOOD


def test_unknown_table_names_are_refused_and_named(tmp_path):
    path = _file(tmp_path, {"placement": {**GOOD, "t_cat_26": 0, "t_cat3": 1}})
    with pytest.raises(PlacementFileError) as err:
        load_placement(path, NAMES, 2)
    assert str(err.value) == (
        f"{path}: 2 table name(s) the model does not have: ['t_cat3', 't_cat_26'] (the model's tables: "
        "['t_cat_0', 't_cat_1', 't_cat_2', 't_cat_3', 't_cat_4', 't_cat_5', 't_cat_6', 't_cat_7', ... (18 more)])"
    )


@pytest.mark.parametrize(("content", "message"), [
    ({k: v for k, v in GOOD.items() if k not in ("t_cat_3", "t_cat_9")},
     "no rank for 2 of the model's tables: ['t_cat_3', 't_cat_9']"),
    ({**GOOD, "t_cat_3": 2, "t_cat_4": -1}, "ranks outside 0..1 (world size 2): {'t_cat_3': 2, 't_cat_4': -1}"),
    ({**GOOD, "t_cat_3": True, "t_cat_4": "1", "t_cat_5": 1.0},
     "ranks must be integers, got {'t_cat_3': true, 't_cat_4': \"1\", 't_cat_5': 1.0}"),
    ({**GOOD, "t_cat_3": "data_parallel"},
     "1 table(s) are 'data_parallel' (['t_cat_3']): the trainer shards every table table-wise so that its fused "
     "embedding optimizer trains it; replicated tables are for LearnedShardingPlanner(data_parallel=True) in your "
     "own pipeline"),
    ([0, 1], "expected a JSON object of table name -> rank (or {\"placement\": {...}}), but the file is an array"),
    ({"placement": None}, "expected a JSON object of table name -> rank (or {\"placement\": {...}}), but \"placement\" is null"),
    ('{"t_cat_0": 0, "t_cat_0": 1}', "key 't_cat_0' appears more than once"),
    ('{"t_cat_0": 0,', "not valid JSON: Expecting property name enclosed in double quotes: line 1 column 15 (char 14)"),
])
def test_bad_files_name_the_file_and_the_problem(tmp_path, content, message):
    path = _file(tmp_path, content)
    with pytest.raises(PlacementFileError) as err:
        load_placement(path, NAMES, 2)
    assert str(err.value) == f"{path}: {message}"


def test_every_problem_is_reported_at_once(tmp_path):
    content = {k: v for k, v in GOOD.items() if k != "t_cat_0"} | {"extra": 0, "t_cat_1": 7}
    path = _file(tmp_path, content)
    with pytest.raises(PlacementFileError) as err:
        load_placement(path, NAMES, 2)
    assert str(err.value).split("; ") == [
        f"{path}: 1 table name(s) the model does not have: ['extra'] (the model's tables: "
        "['t_cat_0', 't_cat_1', 't_cat_2', 't_cat_3', 't_cat_4', 't_cat_5', 't_cat_6', 't_cat_7', ... (18 more)])",
        "no rank for 1 of the model's tables: ['t_cat_0']",
        "ranks outside 0..1 (world size 2): {'t_cat_1': 7}",
    ]


def test_a_missing_file_and_a_bad_world_size(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"^placement file {tmp_path / 'nope.json'} not found$"):
        load_placement(tmp_path / "nope.json", NAMES, 2)
    with pytest.raises(ValueError, match="^world_size must be an integer >= 1, got 0$"):
        load_placement(_file(tmp_path, GOOD), NAMES, 0)


def test_a_url_works_like_a_path():
    import fsspec

    with fsspec.open("memory://recsearch-test/placement.json", "w") as f:
        f.write(json.dumps({"placement": GOOD}))
    assert load_placement("memory://recsearch-test/placement.json", NAMES, 2) == GOOD
