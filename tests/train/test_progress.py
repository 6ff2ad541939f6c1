"""The run's progress file (recsearch.train.progress): rewritten at most every interval while a
run works, atomically, by rank 0 only; the trainer beats through every phase of a run."""

from __future__ import annotations

import json
import os
import time
from types import SimpleNamespace

from recsearch.train import progress as progress_module
from recsearch.train import trainer
from recsearch.train.progress import PROGRESS_FILE, ProgressFile, last_activity_s
from tests.train.test_trainer import _write_config


def test_beats_are_written_at_most_once_per_interval(tmp_path, monkeypatch):
    clock = [100.0]
    # the module's clock only (time.monotonic itself stays: pytest and threads read it too)
    monkeypatch.setattr(progress_module, "time", SimpleNamespace(monotonic=lambda: clock[0], time=time.time))
    beacon = ProgressFile(tmp_path, interval_s=5.0)
    beacon.beat("setup", 0)
    first = json.loads((tmp_path / PROGRESS_FILE).read_text())
    assert first["phase"] == "setup" and first["step"] == 0 and abs(first["time_s"] - time.time()) < 60
    clock[0] += 4.9
    beacon.beat("train", 7)  # within the interval: nothing written
    assert json.loads((tmp_path / PROGRESS_FILE).read_text())["phase"] == "setup"
    clock[0] += 0.1
    beacon.beat("train", 8)
    assert json.loads((tmp_path / PROGRESS_FILE).read_text()) | {"time_s": 0} == {"phase": "train", "step": 8, "time_s": 0}
    assert sorted(os.listdir(tmp_path)) == [PROGRESS_FILE]  # no temporary left behind


def test_other_ranks_write_nothing_and_a_failed_write_is_not_the_runs_end(tmp_path):
    ProgressFile(None).beat("train", 1)
    gone = tmp_path / "gone"
    ProgressFile(gone).beat("train", 1)  # its directory does not exist: skipped, no exception
    assert not gone.exists()


def test_last_activity_is_the_newer_of_progress_and_log(tmp_path):
    assert last_activity_s(tmp_path, "train.log") is None
    (tmp_path / "train.log").write_text("x")
    os.utime(tmp_path / "train.log", (1000.0, 1000.0))
    assert last_activity_s(tmp_path, "train.log") == 1000.0
    ProgressFile(tmp_path).beat("train", 3)
    assert last_activity_s(tmp_path, "train.log") > 1000.0
    os.utime(tmp_path / PROGRESS_FILE, (500.0, 500.0))
    assert last_activity_s(tmp_path, "train.log") == 1000.0 and last_activity_s(tmp_path) == 500.0


def test_the_trainer_beats_in_every_phase_of_a_run(tmp_path, learnable_data, monkeypatch):
    beats: list[tuple[str, int]] = []

    class Recorded(ProgressFile):
        def beat(self, phase: str, step: int) -> None:
            if self.path is not None:
                beats.append((phase, step))
            super().beat(phase, step)

    monkeypatch.setattr(trainer, "ProgressFile", Recorded)
    cfg = _write_config(tmp_path, learnable_data, max_steps=6, eval_every_steps=3, checkpoint_every_steps=3)
    assert trainer.main(["--config", str(cfg), "latency_batch_sizes=[64]"]) == 0
    phases = [phase for phase, _ in beats]
    assert phases[0] == "setup"
    assert [step for phase, step in beats if phase == "train"] == [1, 2, 3, 4, 5, 6]
    # periodic evaluation at step 3, then the final one at step 6 (a beat per batch), checkpoints
    # at 3 and 6, the latency batch size
    assert {step for phase, step in beats if phase == "evaluate"} == {3, 6}
    assert [step for phase, step in beats if phase == "checkpoint"] == [3, 6]
    assert [step for phase, step in beats if phase == "latency"] == [6]
    written = json.loads((tmp_path / "out" / PROGRESS_FILE).read_text())
    assert (written["phase"], written["step"]) == ("completed", 6)  # the run's last word: how it ended
