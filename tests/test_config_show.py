"""`recsearch config show KIND` and `recsearch train|search --print-config`: the resolved config as
YAML, every key present, refused with the command's own messages (exit 2)."""

import dataclasses

import pytest
import yaml

from recsearch import cli, config
from recsearch.data.synthetic import SynthConfig
from recsearch.search.settings import SearchConfig, load_search_config
from recsearch.train.config import TrainConfig
from tests.search.test_loop import learnable_data, search_config, write_config  # noqa: F401


def _keys(cls: type, prefix: str = "") -> set[str]:
    """Every dotted key of dataclass cls, nested dataclass fields included."""
    out = set()
    for f in dataclasses.fields(cls):
        out.add(f"{prefix}{f.name}")
        if dataclasses.is_dataclass(f.type):
            out |= _keys(f.type, f"{prefix}{f.name}.")
    return out


def _printed_keys(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in tree.items():
        out.add(f"{prefix}{key}")
        if isinstance(value, dict) and key not in ("model_args",):
            out |= _printed_keys(value, f"{prefix}{key}.")
    return out


def test_train_config_is_printed_with_every_key_and_reads_back_as_the_same_config(tmp_path, capsys):
    path = tmp_path / "train.yaml"
    path.write_text("data_dir: /data/x\narch:\n  embedding_dim: 8\n  bottom_mlp: [32, 8]\n")
    args = ["--config", str(path), "hparams.batch_size=64", "arch.top_mlp=[16,1]"]
    assert cli.main(["config", "show", "train", *args]) == 0
    text = capsys.readouterr().out
    printed = yaml.safe_load(text)
    expected = config.load(TrainConfig, path, args[2:])
    assert printed == config.to_dict(expected)
    assert printed["hparams"]["batch_size"] == 64 and printed["arch"]["top_mlp"] == [16, 1]
    assert printed["epochs"] == 1 and printed["output_dir"] == "runs/train"  # defaults, not in the file
    # one key a line, lists on one line as configs write them; a value that is not the default says it
    lines = text.splitlines()
    assert "data_dir: /data/x  # required" in lines
    assert "  bottom_mlp: [32, 8]  # default: [512, 256, 64, 16]" in lines
    assert "  batch_size: 64  # default: 2048" in lines
    assert "  embedding_dim: 8  # default: 16" in lines and "epochs: 1" in lines  # a default: no comment
    keys = _printed_keys(printed)
    assert {k for k in _keys(TrainConfig) if not k.startswith("latency_reference.")} <= keys
    again = tmp_path / "printed.yaml"
    again.write_text(text)
    assert config.load(TrainConfig, again) == expected  # the output is a config `recsearch train` takes
    assert cli.main(["train", "--print-config", *args]) == 0
    assert capsys.readouterr().out == text


def test_synth_defaults_print_without_a_file(capsys):
    assert cli.main(["config", "show", "synth", "rows_per_day=500"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == config.to_dict(SynthConfig(rows_per_day=500))
    assert set(printed) == {f.name for f in dataclasses.fields(SynthConfig)}


def test_train_defaults_print_without_a_file_with_data_dir_left_to_fill_in(capsys):
    assert cli.main(["config", "show", "train", "hparams.seed=3"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0] == "data_dir: null  # required"
    printed = yaml.safe_load(text)
    expected = config.to_dict(config.build(TrainConfig, {"data_dir": "x", "hparams": {"seed": 3}}))
    assert printed == {**expected, "data_dir": None}


def test_a_refused_config_exits_2_with_the_commands_messages(tmp_path, capsys):
    path = tmp_path / "train.yaml"
    path.write_text("data_dir: /data/x\nepochs: 0\n")
    assert cli.main(["config", "show", "train", "--config", str(path), "hparams.batchsize=4"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[0] == "recsearch config show: invalid config:"
    assert sorted(lines[1:]) == sorted([
        f"  {path}: epochs must be >= 1, got 0",
        "  command line: hparams.batchsize=4: unknown key (did you mean 'batch_size'?); known keys: batch_size, "
        "decay_start_step, decay_steps, dense_lr, dense_optimizer, embedding_lr, embedding_optimizer, seed, "
        "warmup_steps",
    ])
    assert cli.main(["train", "--config", str(path), "hparams.batchsize=4"]) == 2
    assert capsys.readouterr().err.splitlines()[1:] == lines[1:]  # the same messages as the command
    (tmp_path / "empty.yaml").write_text("epochs: 2\n")
    assert cli.main(["config", "show", "train", "--config", str(tmp_path / "empty.yaml")]) == 2
    assert capsys.readouterr().err.endswith(f"  {tmp_path / 'empty.yaml'}: data_dir: required key is missing\n")
    assert cli.main(["config", "show", "train", "--config", str(tmp_path / "none.yaml")]) == 2
    assert f"{tmp_path / 'none.yaml'}: file not found" in capsys.readouterr().err


def test_search_print_config_is_the_search_yaml_the_search_would_write(tmp_path, learnable_data, capsys):  # noqa: F811
    path = write_config(tmp_path, search_config(learnable_data))
    out = tmp_path / "out"
    assert cli.main(["search", "--print-config", "--config", str(path), "--out", str(out), "trials=5"]) == 0
    text = capsys.readouterr().out
    printed = yaml.safe_load(text)
    assert not out.exists()  # printing writes nothing
    assert printed == load_search_config(path, ["trials=5"]).resolved_dict(out)
    assert printed["trials"] == 5 and printed["output_dir"] == str(out.resolve())
    assert printed["base"]["hparams"]["batch_size"] == 256
    assert {f.name for f in dataclasses.fields(SearchConfig)} <= set(printed)
    assert set(printed["base"]) >= {f.name for f in dataclasses.fields(TrainConfig)} - {"output_dir"}
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(text)  # what `recsearch search --resume` reads back
    assert load_search_config(resolved).cfg.trials == 5
    assert cli.main(["config", "show", "search", "--config", str(path), "trials=0"]) == 2
    assert "command line: trials=0: must be >= 1" in capsys.readouterr().err


def test_search_print_config_runs_the_searchs_placement_checks(tmp_path, learnable_data, capsys):  # noqa: F811
    path = write_config(tmp_path, search_config(learnable_data, **{"topology.memory_per_device_mb": 0.001}))
    argv = ["--config", str(path), "--out", str(tmp_path / "out")]
    assert cli.main(["search", "--print-config", *argv]) == 2
    shown = capsys.readouterr()
    assert shown.out == "" and f"{path}: space.embedding_dim: no embedding_dim x embedding_optimizer option fits" in shown.err
    assert cli.main(["search", *argv]) == 2
    assert capsys.readouterr().err.replace("recsearch search:", "recsearch search --print-config:", 1) == shown.err
    assert cli.main(["search", "--print-config", "--resume", str(tmp_path)]) == 2
    assert "--print-config shows a new search's config" in capsys.readouterr().err


def test_annotated_yaml_quotes_what_yaml_needs_and_reads_back():
    from recsearch.config_show import REQUIRED, annotated_yaml

    tree = {"path": "a: b #c", "empty": "", "nested": {"xs": [1, "two", None], "flag": True}, "args": {},
            "no": "no", "n": 1.5e-9}
    defaults = {"path": REQUIRED, "empty": "x", "nested": {"xs": [], "flag": True}, "args": {}, "no": "no"}
    lines = annotated_yaml(tree, defaults)
    assert yaml.safe_load("\n".join(lines)) == tree
    assert lines[0] == "path: 'a: b #c'  # required"
    assert lines[1] == "empty: ''  # default: x"
    assert "  xs: [1, two, null]  # default: []" in lines and "  flag: true" in lines
    assert "'no': 'no'" in lines  # neither read back as false


def test_config_show_without_a_kind_says_which_are_known(capsys):
    with pytest.raises(SystemExit) as err:
        cli.main(["config", "show", "tran", "data_dir=x"])
    assert err.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "recsearch config show: error: say which config: one of train, search, synth")


def test_the_trainer_lists_print_config_and_takes_it_anywhere_on_its_line(tmp_path, capsys):
    from recsearch.train import trainer

    with pytest.raises(SystemExit):
        trainer.main(["--help"])
    assert "--print-config" in capsys.readouterr().out
    path = tmp_path / "train.yaml"
    path.write_text("data_dir: /data/x\n")
    assert cli.main(["train", "hparams.seed=3", "--config", str(path), "--print-config", "epochs=2"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["hparams"]["seed"] == 3 and printed["epochs"] == 2 and printed["data_dir"] == "/data/x"
