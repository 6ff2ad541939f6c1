"""One list syntax on the command line (recsearch.cliargs, recsearch.config): comma-separated
values, in flags and in key=value overrides; list flags still take separate words."""

import argparse
from dataclasses import dataclass

import pytest

from recsearch import cliargs, config
from recsearch.placement import tables as T
from recsearch.placement.cli import tables as tables_cli
from recsearch.search import optuna_cli


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t")
    p.add_argument("--devices", **cliargs.list_flag(int))
    p.add_argument("--placer", **cliargs.list_flag(str, ["a", "b"]))
    p.add_argument("--objectives", **cliargs.list_flag(str, words=False))
    p.add_argument("root", nargs="?")
    return p


def test_list_flags_take_commas_words_or_both():
    p = _parser()
    assert p.parse_args(["--devices", "2,4"]).devices == [2, 4]
    assert p.parse_args(["--devices", "2", "4"]).devices == [2, 4]
    assert p.parse_args(["--devices", "2,4", "8"]).devices == [2, 4, 8]
    assert p.parse_args(["--placer", "b,a"]).placer == ["b", "a"]
    # a one-word list flag leaves the positional argument after it alone
    args = p.parse_args(["--objectives", "auc,latency_p50_ms", "DIR"])
    assert (args.objectives, args.root) == (["auc", "latency_p50_ms"], "DIR")


@pytest.mark.parametrize(("argv", "message"), [
    (["--devices", "2,x"], "argument --devices: 'x' is not a valid int"),
    (["--devices", "2,,4"], "argument --devices: '2,,4': an empty item in a comma-separated list"),
    (["--placer", "a,c"], "argument --placer: 'c' is not one of: a, b"),
])
def test_a_bad_item_is_named(argv, message, capsys):
    with pytest.raises(SystemExit) as err:
        _parser().parse_args(argv)
    assert err.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"t: error: {message}"


@dataclass(frozen=True)
class _Run:
    sizes: tuple[int, ...] = (1,)
    splits: tuple[str, ...] = ("val",)
    name: str = "x"


def test_overrides_take_the_same_comma_lists_as_yaml_lists(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: a,b\n")
    commas = config.load(_Run, path, ["sizes=512,256,64", "splits=val,test"])
    brackets = config.load(_Run, path, ["sizes=[512, 256, 64]", "splits=[val, test]"])
    assert commas == brackets == _Run((512, 256, 64), ("val", "test"), "a,b")  # a string key keeps its commas
    with pytest.raises(config.ConfigError) as err:
        config.load(_Run, path, ["sizes=512,x", "splits=val"])
    assert err.value.problems == [
        "command line: sizes=512,x: sizes[1]: expected an integer, got 'x'",
        "command line: splits=val: expected a list (a,b,c or [a, b, c]), got 'val'",
    ]


def test_place_tables_tasks_reads_commas_as_it_reads_words(tmp_path, capsys):
    pools = tmp_path / "pools"
    assert tables_cli.main(["pool", "--out-dir", str(pools), "--num-tables", "24", "--reuse-batch-size", "128"]) == 0
    base = ["tasks", "--pool", str(pools / "pool_train.json"), "--num", "1"]
    assert tables_cli.main([*base, "--tables", "5,6", "--devices", "2,3", "--out-dir", str(tmp_path / "c")]) == 0
    assert tables_cli.main([*base, "--tables", "5", "6", "--devices", "2", "3", "--out-dir", str(tmp_path / "w")]) == 0
    commas, words = T.load_tasks(tmp_path / "c"), T.load_tasks(tmp_path / "w")
    assert commas == words and sorted((len(t.tables), t.world_size) for t in commas) == [(5, 2), (6, 3)]
    capsys.readouterr()


def test_optuna_export_objectives_are_one_comma_list(tmp_path, capsys):
    with pytest.raises(SystemExit):
        optuna_cli.main([str(tmp_path), "--out", str(tmp_path / "s.log"), "--objectives", "auc,"])
    assert "'auc,': an empty item in a comma-separated list" in capsys.readouterr().err
