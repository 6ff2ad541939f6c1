from dataclasses import dataclass, field

import pytest

from recsearch import config
from recsearch.types import ArchSpec, HParams, Interaction


@dataclass(frozen=True)
class _Run:
    name: str
    arch: ArchSpec = field(default_factory=ArchSpec)
    hparams: HParams = field(default_factory=HParams)
    rows: int | None = None


def test_builds_nested_dataclasses_with_enums_and_tuples(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "name: a\narch:\n  embedding_dim: 8\n  bottom_mlp: [32, 8]\n  interaction: dcn\n"
        "hparams:\n  dense_lr: 1\n"
    )
    run = config.load(_Run, path, ["hparams.batch_size=64", "rows=100"])
    assert run.arch.bottom_mlp == (32, 8)
    assert run.arch.interaction is Interaction.DCN
    assert run.hparams.dense_lr == 1.0 and isinstance(run.hparams.dense_lr, float)
    assert run.hparams.batch_size == 64
    assert run.rows == 100
    assert config.to_dict(run)["arch"]["interaction"] == "dcn"


def test_reports_every_problem_with_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("arch:\n  embeding_dim: 8\nhparams:\n  batch_size: big\n  seed: true\n")
    with pytest.raises(config.ConfigError) as err:
        config.load(_Run, path)
    problems = err.value.problems
    assert any("arch.embeding_dim: unknown key" in p and "embedding_dim" in p for p in problems)
    assert any("hparams.batch_size: expected an integer" in p for p in problems)
    assert any("hparams.seed: expected an integer" in p for p in problems)
    assert any("name: required key is missing" in p for p in problems)
    assert all(p.startswith(str(path)) for p in problems)


def test_value_errors_from_dataclass_checks_are_reported(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\narch:\n  embedding_dim: 8\n  bottom_mlp: [32, 16]\n")
    with pytest.raises(config.ConfigError, match="bottom_mlp must end in embedding_dim=8"):
        config.load(_Run, path)


def test_bad_override_and_bad_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: a\n")
    with pytest.raises(config.ConfigError, match="not of the form key=value"):
        config.load(_Run, path, ["rows"])
    path.write_text("name: [unclosed\n")
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        config.load(_Run, path)
    with pytest.raises(config.ConfigError, match="file not found"):
        config.load(_Run, tmp_path / "missing.yaml")


def _problems(tmp_path, text: str, overrides: list[str]) -> tuple:
    """(the file, the problems config.load reports) for a run.yaml of `text` and the overrides."""
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as err:
        config.load(_Run, path, overrides)
    return path, err.value.problems


def test_a_bad_override_names_the_command_line_and_a_bad_file_key_names_the_file(tmp_path):
    path, problems = _problems(tmp_path, "name: a\nhparams:\n  seed: true\n",
                               ["hparams.batchsize=4", "rows=many", "hparams.batch_size=-4"])
    assert f"{path}: hparams.seed: expected an integer, got True" in problems
    assert "command line: rows=many: expected an integer, got 'many'" in problems
    assert any(p.startswith("command line: hparams.batchsize=4: unknown key (did you mean 'batch_size'?); known keys: ")
               for p in problems)
    assert "command line: hparams.batch_size=-4: must be >= 1, got -4" in problems
    assert len(problems) == 4


def test_a_whole_section_given_on_the_command_line_names_it_with_the_inner_key(tmp_path):
    _, problems = _problems(tmp_path, "name: a\n", ["arch={embedding_dim: 8, bottom_mlp: [32, x]}"])
    assert problems == [
        "command line: arch={embedding_dim: 8, bottom_mlp: [32, x]}: arch.bottom_mlp[1]: expected an integer, got 'x'"
    ]


def test_override_syntax_errors_name_the_override(tmp_path):
    _, problems = _problems(tmp_path, "name: a\nrows: 5\n", ["rows", "rows.x=1", "name=[unclosed"])
    assert problems[0] == "command line: rows: not of the form key=value (e.g. hparams.batch_size=4096)"
    assert problems[1] == "command line: rows.x=1: rows is not a section"
    assert problems[2].startswith("command line: name=[unclosed: cannot parse the value as YAML: ")
    assert len(problems) == 3


def test_origins_of_a_section_strip_its_name():
    origins = config.Origins.of("s.yaml", ["base.hparams.seed=x", "trials=3"])
    base = origins.section("base", "s.yaml: base")
    assert base.locate("hparams.seed: expected an integer, got 'x'") == (
        "command line: base.hparams.seed=x: expected an integer, got 'x'")
    assert base.locate("hparams.batch_size: bad") == "s.yaml: base: hparams.batch_size: bad"
    assert origins.locate("trials must be >= 1") == "command line: trials=3: must be >= 1"
