"""Search settings that would hang, flood or lie are refused up front, each naming the file and
the key, all at once, before anything is written; a trial that hangs is killed at
runner.trial_timeout_s and recorded FAILED while the search goes on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recsearch import config
from recsearch.search import loop
from recsearch.search.runners import SubprocessRunner
from tests.procs import all_dead
from tests.reliability.search_helpers import CLI, REPO, env, run_past_a_hung_trial_0, start_search, tiny_config
from tests.search.test_loop import write_config


@pytest.mark.parametrize("key, value, message", [
    ("heartbeat_s", 0, "heartbeat_s: must be >= 0.1 s, got 0.0"),
    ("heartbeat_s", -1.0, "heartbeat_s: must be >= 0.1 s, got -1.0"),
    ("heartbeat_s", float("nan"), "heartbeat_s: must be >= 0.1 s, got nan"),
    ("trials", 0, "trials: must be >= 1, got 0"),
    ("max_rejected", -1, "max_rejected: must be >= 0, got -1"),
    ("seed", -3, "seed: must be >= 0, got -3"),
    ("runner.concurrency", 0, "runner.concurrency: must be >= 1, got 0"),
    ("runner.threads", -1, "runner.threads: must be >= 0, got -1"),
    ("runner.retries", -1, "runner.retries: must be >= 0, got -1"),
    ("runner.poll_s", 0, "runner.poll_s: must be >= 0.01 s, got 0.0"),
    ("runner.trial_timeout_s", 0, "runner.trial_timeout_s: must be >= 1 s (or null: no limit), got 0.0"),
    ("runner.stall_timeout_s", 10, "runner.stall_timeout_s: must be >= 30 s (or null: no stall detection), got 10.0"),
    ("runner.torchx.memMB", 0, "runner.torchx.memMB: must be >= 1, got 0"),
    ("runner.device_memory_share", 0, "runner.device_memory_share: must be in (0, 1] or null, got 0.0"),
    ("runner.device_memory_share", 0.75, "runner.device_memory_share: 0.75 x runner.concurrency 2 = 1.5 > 1: "
                                         "the trials sharing a device would be promised more memory than it has"),
    ("fidelity.eta", 1, "fidelity.eta: must be >= 2, got 1"),
    ("fidelity.bracket_size", -2, "fidelity.bracket_size: must be >= 0, got -2"),
    ("fidelity.train_rows", [2048, 0], "fidelity.train_rows: must be positive and strictly increasing, got [2048, 0]"),
    ("topology.devices", 0, "topology.devices: must be >= 1, got 0"),
    ("topology.memory_per_device_mb", -5.0, "topology.memory_per_device_mb: must be a positive number, got -5.0"),
    ("objective.penalty", -0.5, "objective.penalty: must be >= 0, got -0.5"),
    ("objective.serving_batch", 0, "objective.serving_batch: must be >= 1, got 0"),
    ("objective.budget_ms", 0.0, "objective.budget_ms: must be positive (or null), got 0.0"),
])
def test_each_numeric_setting_is_checked_with_file_and_key(tmp_path, learnable_data, key, value, message):
    runner_kind = {"runner.kind": "subprocess", "runner.concurrency": 2} if key.startswith("runner.") and key != "runner.concurrency" else {}
    path = write_config(tmp_path, tiny_config(learnable_data, **runner_kind, **{key: value}))
    with pytest.raises(config.ConfigError) as err:
        loop.load_search_config(path)
    assert f"{path}: {message}" in err.value.problems, err.value.problems


def test_every_bad_setting_is_reported_at_once(tmp_path, learnable_data):
    path = write_config(tmp_path, tiny_config(learnable_data, **{
        "heartbeat_s": 0, "trials": 0, "runner.retries": -1, "fidelity.eta": 1, "base.hparams.batch_size": 0}))
    with pytest.raises(config.ConfigError) as err:
        loop.load_search_config(path)
    text = str(err.value)
    for key in ("heartbeat_s", "trials", "runner.retries", "fidelity.eta"):
        assert f"{path}: {key}: must be" in text
    assert "batch_size" in text  # the base train config's own check (or the search's)


def test_the_inprocess_runner_cannot_take_a_trial_timeout(tmp_path, learnable_data):
    path = write_config(tmp_path, tiny_config(learnable_data, **{"runner.trial_timeout_s": 60}))
    with pytest.raises(config.ConfigError, match=r"runner.trial_timeout_s: the inprocess runner cannot stop"):
        loop.load_search_config(path)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "search", *args], cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=300, check=False)


def test_cli_refuses_bad_settings_before_writing_anything(tmp_path, learnable_data):
    """heartbeat_s=0 (100k fsynced journal lines in 40 s) and a negative base batch size (the
    reference trained before the failure) are refused with exit 2, naming the override given on
    the command line, and the search directory is never created."""
    cfg = write_config(tmp_path, tiny_config(learnable_data, reference=True))
    for override, key in (("heartbeat_s=0", "heartbeat_s"), ("base.hparams.batch_size=-4", "batch_size")):
        out = tmp_path / f"out_{key}"
        proc = _cli("--config", str(cfg), "--out", str(out), override)
        assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert f"command line: {override}: must be >= " in proc.stderr and "Traceback" not in proc.stderr
        assert not out.exists()


def test_a_space_nothing_fits_is_refused_before_the_directory_exists(tmp_path, learnable_data, capsys):
    path = write_config(tmp_path, tiny_config(learnable_data, **{"topology.memory_per_device_mb": 0.001}))
    assert loop.main(["--config", str(path), "--out", str(tmp_path / "out")]) == 2
    assert f"{path}: space.embedding_dim: no embedding_dim x embedding_optimizer option fits" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---- the trial timeout -------------------------------------------------------------------------
HANG = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(sys.argv[1], "w").write(f"{os.getpid()} {child.pid}")
time.sleep(600)
"""
FINISH = """
import json, sys
rows = int(sys.argv[2])
json.dump({"status": "completed", "metrics": {"val": {"auc": 0.7}, "test": {"auc": 0.7}},
           "latency_ms": {"64": {"p50_ms": 1.0, "p99_ms": 1.5}}, "config": {"train_rows": rows}},
          open(sys.argv[1] + "/result.json", "w"))
"""


class _HangFirst(SubprocessRunner):
    """Trial 0 hangs (and starts a child of its own); every other trial finishes at once."""

    def command(self, spec, workdir):
        if spec.trial_id == 0:
            return [sys.executable, "-c", HANG, str(Path(workdir) / "pids")]
        return [sys.executable, "-c", FINISH, str(workdir), str(spec.train_rows)]


def test_a_hung_trial_is_killed_at_the_timeout_and_the_search_goes_on(tmp_path, learnable_data):
    raw = tiny_config(learnable_data, **{"runner.kind": "subprocess", "runner.trial_timeout_s": 2,
                                         "runner.poll_s": 0.1, "trials": 3})
    search, out = start_search(tmp_path, raw, runner=_HangFirst(serving_batch=64))
    run_past_a_hung_trial_0(search, out, timeout_s=2)
    # the trial's whole process group was killed, its own child included
    pids = [int(p) for p in (out / "trials" / "0" / "pids").read_text().split()]
    assert all_dead(pids, timeout=5)


def test_cuda_trials_sharing_a_device_are_each_capped_at_their_share_of_its_memory():
    from recsearch.search.settings import RunnerConfig as share

    assert share(kind="pool", concurrency=4).memory_share("cuda") == 0.25
    assert share(kind="subprocess", concurrency=2, device_memory_share=0.3).memory_share("cuda") == 0.3
    assert share(kind="subprocess", concurrency=1).memory_share("cuda") is None  # alone: no cap
    assert share(kind="pool", concurrency=4).memory_share("cpu") is None
    assert share(kind="torchx", concurrency=4).memory_share("cuda") is None  # the scheduler gives each its devices


def test_a_placer_that_replicates_tables_is_refused(tmp_path, learnable_data):
    """Trials shard every table table-wise: torchrec_dp (which may make tables data_parallel) is
    not a placer the search takes, and the error says why and what it does take."""
    path = write_config(tmp_path, tiny_config(learnable_data, placer="torchrec_dp"))
    with pytest.raises(config.ConfigError) as err:
        loop.load_search_config(path)
    text = str(err.value)
    assert f"{path}: placer: 'torchrec_dp' is not one of auto, " in text
    assert "dim_greedy" in text and "table-wise" in text
