"""Progress output through the logging module: `recsearch --log-level` (and RECSEARCH_LOG_LEVEL,
which trial processes inherit) decides what a command prints; one handler, one format."""

from __future__ import annotations

import json
import logging
import os

import pytest

from recsearch import cli, logs
from tests.train.test_trainer import _write_config


@pytest.fixture(autouse=True)
def _restore_level(monkeypatch):
    # setenv (not delenv, which records nothing when the variable is unset): the level cli.main
    # puts into the environment is taken back after the test instead of leaking into later ones
    monkeypatch.setenv(logs.LEVEL_ENV, "info")
    yield
    logs.configure("info")


def test_the_log_level_decides_what_a_training_prints(tmp_path, learnable_data, capsys, monkeypatch):
    cfg = _write_config(tmp_path, learnable_data, max_steps=4, latency_batch_sizes=[])
    assert cli.main(["train", "--config", str(cfg)]) == 0
    chatty = capsys.readouterr().out
    assert "[recsearch train] training 4 steps" in chatty and "[recsearch train] completed: val AUC" in chatty
    assert cli.main(["--log-level", "warning", "train", "--config", str(cfg), "overwrite_output=true"]) == 0
    assert "[recsearch train]" not in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "result.json").read_text())["status"] == "completed"  # it ran
    assert os.environ[logs.LEVEL_ENV] == "warning"  # what a search's trial processes inherit


def test_a_bad_level_is_refused_by_name(capsys, monkeypatch):
    assert cli.main(["--log-level", "loud", "train"]) == 2
    assert "--log-level 'loud': expected one of debug, info, warning, error" in capsys.readouterr().err
    monkeypatch.setenv(logs.LEVEL_ENV, "verbose")
    from recsearch.train import trainer

    assert trainer.main(["--config", "unused.yaml"]) == 2
    assert "RECSEARCH_LOG_LEVEL='verbose': expected one of" in capsys.readouterr().err


def test_configuring_again_replaces_the_handler_instead_of_doubling_lines(capsys):
    logs.configure("info")
    logs.configure("debug")
    logs.get("search").debug("[search] one line")
    assert capsys.readouterr().out == "[search] one line\n"  # once, and at debug now
    logs.configure("info")
    logs.get("search").debug("[search] hidden")
    assert capsys.readouterr().out == ""


def test_torch_fx_tracing_notice_is_shown_at_debug_only():
    notice = logging.getLogger(logs.TORCH_FX_TRACE_LOGGER)
    logs.configure("info")
    assert not notice.isEnabledFor(logging.WARNING)
    logs.configure("debug")
    assert notice.isEnabledFor(logging.WARNING)
