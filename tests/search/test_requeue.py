"""A search job the scheduler runs again (Slurm --requeue, torchx max_retries, a preempted pod)
continues its directory: the torchx `search` component's command passes --resume-if-exists."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from launch import components
from recsearch.search import loop
from recsearch.search.store import JournalStore
from recsearch.types import TrialState
from tests.search.configs import tiny_search
from tests.train.conftest import write_learnable_dataset

REPO = Path(__file__).resolve().parents[2]
TRIALS = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("requeue_data")
    write_learnable_dataset(root)
    return root


def _config(tmp_path: Path, data: Path) -> Path:
    raw = tiny_search(data, **{"fidelity": {"train_rows": [6144]}, "trials": TRIALS})
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _job_command(config: Path, out: Path) -> list[str]:
    """What the scheduler runs for `torchx run launch/components.py:search`."""
    role = components.search(config=str(config), out=str(out)).roles[0]
    assert role.entrypoint == "python"
    return [sys.executable, *role.args]


def _run_job(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _completed(out: Path) -> dict[int, float]:
    """Finished trial id -> its result.json's modification time."""
    done = JournalStore(out).trials((TrialState.COMPLETE,))
    return {r.trial_id: (out / "trials" / str(r.trial_id) / "result.json").stat().st_mtime_ns for r in done}


def test_the_search_component_resumes_by_default_and_can_be_told_not_to():
    role = components.search("trials=4", config="c.yaml", out="runs/s").roles[0]
    assert role.args == ["-m", "recsearch.cli", "search", "--config", "c.yaml", "--out", "runs/s",
                         "--resume-if-exists", "trials=4"]
    assert "--resume-if-exists" not in components.search(config="c.yaml", resume_if_exists=False).roles[0].args


@pytest.mark.slow
def test_a_preempted_search_job_run_again_resumes_its_directory(tmp_path, data):
    config, out = _config(tmp_path, data), tmp_path / "search"
    command = _job_command(config, out)
    # First attempt: killed (SIGKILL, as a preemption) once the reference and one trial are done.
    job = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and job.poll() is None:
            if (out / "journal.jsonl").exists() and len(_completed(out)) >= 2:
                break
            time.sleep(0.2)
    finally:
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=60)
    before = _completed(out)
    assert len(before) >= 2 and len(before) < TRIALS + 1, "the first attempt should die mid-search"

    # Without the flag the same command is refused, as before.
    refused = _run_job([c for c in command if c != "--resume-if-exists"])
    assert refused.returncode == 2 and "already holds a search" in refused.stderr

    # The requeued job: the same command continues the search and finishes the budget.
    second = _run_job(command)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"{out} already holds a search: resuming it" in second.stdout
    after = _completed(out)
    assert len(after) == TRIALS + 1  # the reference and every trial
    assert all(after[t] == mtime for t, mtime in before.items())  # finished trials not trained again

    # Run once more (a retry after the end): nothing is trained again.
    third = _run_job(command)
    assert third.returncode == 0, third.stderr[-3000:]
    assert _completed(out) == after


def test_resume_if_exists_starts_a_search_where_there_is_none(tmp_path, data, monkeypatch):
    out = tmp_path / "fresh"
    config = _config(tmp_path, data)
    raw = yaml.safe_load(config.read_text())
    raw["trials"] = 1
    config.write_text(yaml.safe_dump(raw))
    assert loop.main(["--config", str(config), "--out", str(out), "--resume-if-exists"]) == 0
    assert len(_completed(out)) == 2  # the reference and the one trial
