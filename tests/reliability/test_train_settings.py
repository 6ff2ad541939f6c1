"""Settings that would hang a run, make it lie or crash it late are refused up front, by key.

Before: checkpoint_every_steps=-1 or eval_every_steps=-1 trained forever, max_steps=0 reported
"completed" with AUC 0.5, latency_iters=0 crashed after the whole training, and a negative batch
size was refused without naming the key.
"""

import subprocess
import sys

import pytest

from recsearch import cli, config
from recsearch.train.config import TrainConfig
from recsearch.types import ArchSpec, HParams, SettingsError

# (overrides, the exact problem lines; each is reported as 'command line: <the override>: ...', the
# override that set its key, see _as_reported)
REFUSED = [
    (["hparams.batch_size=-4"], ["hparams.batch_size must be >= 1, got -4"]),
    (["hparams.batch_size=0"], ["hparams.batch_size must be >= 1, got 0"]),
    (["hparams.embedding_lr=0"], ["hparams.embedding_lr must be a finite number > 0, got 0.0"]),
    (["hparams.dense_lr=-0.1"], ["hparams.dense_lr must be a finite number > 0, got -0.1"]),
    (["hparams.dense_lr=.nan"], ["hparams.dense_lr must be a finite number > 0, got nan"]),
    (["hparams.embedding_lr=.inf"], ["hparams.embedding_lr must be a finite number > 0, got inf"]),
    (["hparams.warmup_steps=-1"], ["hparams.warmup_steps must be >= 0, got -1"]),
    (["hparams.decay_start_step=-1"], ["hparams.decay_start_step must be >= 0, got -1"]),
    (["hparams.decay_steps=-5"], ["hparams.decay_steps must be >= 0, got -5"]),
    (["hparams.seed=-1"], ["hparams.seed must be in 0..9223372036854775807, got -1"]),
    (
        ["hparams.warmup_steps=10", "hparams.decay_start_step=5", "hparams.decay_steps=3"],
        ["hparams.decay_start_step must be >= warmup_steps (10) when decay_steps > 0 "
         "(decay may not start inside warmup), got 5"],
    ),
    (["arch.embedding_dim=0"], ["arch.embedding_dim must be >= 1, got 0"]),
    (["arch.top_mlp=[16,0,1]"], ["arch.top_mlp must be a non-empty list of integers >= 1, got (16, 0, 1)"]),
    (["arch.top_mlp=[]"], ["arch.top_mlp must be a non-empty list of integers >= 1, got ()"]),
    (["arch.dcn_num_layers=0"], ["arch.dcn_num_layers must be >= 1, got 0"]),
    (["arch.dcn_low_rank_dim=-2"], ["arch.dcn_low_rank_dim must be >= 1, got -2"]),
    (["max_steps=0"], ["max_steps must be >= 1 or null, got 0"]),
    (["epochs=0"], ["epochs must be >= 1, got 0"]),
    (["eval_every_steps=-1"], ["eval_every_steps must be >= 0, got -1"]),
    (["checkpoint_every_steps=-1"], ["checkpoint_every_steps must be >= 0, got -1"]),
    (["latency_iters=0"], ["latency_iters must be >= 1, got 0"]),
    (["latency_batch_sizes=[1,0]"], ["latency_batch_sizes must be a list of integers >= 1, got (1, 0)"]),
    (["log_every_steps=0"], ["log_every_steps must be >= 1, got 0"]),
    (["device_memory_fraction=0"], ["device_memory_fraction must be a finite number > 0 and <= 1 or null, got 0.0"]),
    (["device_memory_fraction=1.5"], ["device_memory_fraction must be a finite number > 0 and <= 1 or null, got 1.5"]),
    (["eval_splits=[val,train]"], ["eval_splits must be a list of distinct splits out of ['val', 'test'], got ('val', 'train')"]),
    (["eval_splits=[test,test]"], ["eval_splits must be a list of distinct splits out of ['val', 'test'], got ('test', 'test')"]),
    (["prefetch_batches=-1"], ["prefetch_batches must be >= 0, got -1"]),
    (["train_rows=0"], ["train_rows must be >= 1 or null, got 0"]),
    (["eval_rows=-3"], ["eval_rows must be >= 1 or null, got -3"]),
    (["max_rows_per_table=0"], ["max_rows_per_table must be >= 1 or null, got 0"]),
    (["eval_every_steps=10", "auc_threshold=0"], ["auc_threshold must be in (0, 1] or null, got 0.0"]),
    (["eval_every_steps=10", "auc_threshold=1.5"], ["auc_threshold must be in (0, 1] or null, got 1.5"]),
    (
        ["auc_threshold=0.7"],
        ["auc_threshold needs eval_every_steps > 0: it is checked at the periodic evaluations, and "
         "with eval_every_steps = 0 there are none"],
    ),
    (["plan="], ["plan must be a non-empty string, got ''"]),
    # several at once, in every section, all reported by one run
    (
        ["hparams.batch_size=-4", "max_steps=0", "arch.embedding_dim=0", "latency_iters=0"],
        ["arch.embedding_dim must be >= 1, got 0", "hparams.batch_size must be >= 1, got -4",
         "max_steps must be >= 1 or null, got 0", "latency_iters must be >= 1, got 0"],
    ),
]


def _config(tmp_path):
    path = tmp_path / "train.yaml"
    # data_dir does not exist: the settings are refused before anything is read or written
    path.write_text(f"data_dir: {tmp_path / 'no_data'}\noutput_dir: {tmp_path / 'out'}\n")
    return path


def _as_reported(line: str, overrides: list[str]) -> str:
    """'hparams.batch_size must be >= 1, got -4' given on the command line as hparams.batch_size=-4
    is reported as 'command line: hparams.batch_size=-4: must be >= 1, got -4'."""
    (item,) = [o for o in overrides if line.startswith(o.partition("=")[0] + " ")]
    return f"command line: {item}: {line[len(item.partition('=')[0]) + 1:]}"


@pytest.mark.parametrize(("overrides", "lines"), REFUSED, ids=[" ".join(o) for o, _ in REFUSED])
def test_train_refuses_the_setting_by_key_before_writing_anything(tmp_path, capsys, overrides, lines):
    path = _config(tmp_path)
    assert cli.main(["train", "--config", str(path), *overrides]) == 2
    expected = "recsearch train: invalid config:\n" + "".join(f"  {_as_reported(line, overrides)}\n" for line in lines)
    assert sorted(capsys.readouterr().err.splitlines()) == sorted(expected.splitlines())
    assert not (tmp_path / "out").exists()


def test_the_boundaries_themselves_are_accepted(tmp_path):
    cfg = config.load(TrainConfig, _config(tmp_path), [
        "max_steps=1", "eval_every_steps=0", "checkpoint_every_steps=0", "latency_iters=1",
        "log_every_steps=1", "prefetch_batches=0", "train_rows=1", "eval_rows=1",
        "max_rows_per_table=1", "latency_batch_sizes=[]", "hparams.batch_size=1",
        "hparams.warmup_steps=0", "hparams.decay_steps=0", "hparams.seed=0",
        "hparams.embedding_lr=1e-9", "arch.embedding_dim=1", "arch.bottom_mlp=[1]", "arch.top_mlp=[1]",
    ])
    assert cfg.max_steps == 1 and cfg.hparams.batch_size == 1 and cfg.arch.embedding_dim == 1
    with_threshold = config.load(TrainConfig, _config(tmp_path), ["eval_every_steps=5", "auc_threshold=1"])
    assert with_threshold.auc_threshold == 1.0


def test_settings_built_in_code_are_checked_too():
    with pytest.raises(SettingsError) as err:
        HParams(batch_size=-4, dense_lr=0.0)
    assert err.value.problems == ["batch_size must be >= 1, got -4", "dense_lr must be a finite number > 0, got 0.0"]
    with pytest.raises(SettingsError, match=r"^max_steps must be >= 1 or null, got 0$"):
        TrainConfig(data_dir="d", max_steps=0)
    with pytest.raises(SettingsError, match=r"^latency_iters must be an integer, got 2.5$"):
        TrainConfig(data_dir="d", latency_iters=2.5)
    with pytest.raises(SettingsError, match=r"^embedding_dim must be an integer, got True$"):
        ArchSpec(embedding_dim=True)


@pytest.mark.slow
def test_the_installed_command_exits_2_with_the_key(tmp_path):
    path = _config(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "recsearch.cli", "train", "--config", str(path), "hparams.batch_size=-4"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.endswith("recsearch train: invalid config:\n  command line: hparams.batch_size=-4: must be >= 1, got -4\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--batch-size", "-4"], "--batch-size must be >= 1, got -4"),
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--lr", "0"], "--lr must be a finite number > 0, got 0.0"),
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--l2", "-1"], "--l2 must be a finite number >= 0, got -1.0"),
    (["--train-rows", "0"], "--train-rows must be >= 1 (or left out), got 0"),
])
def test_logreg_baseline_refuses_bad_options_by_name(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    code = cli.main(["baseline", "logreg", "--data", str(tmp_path / "no_data"), "--out", str(out), *args])
    assert code == 2
    assert capsys.readouterr().err == f"recsearch baseline logreg: error: {message}\n"
    assert not out.exists()
