"""Tiny searches for the reliability tests: the real loop, store, controllers and checks, with
trials that "train" instantly (FakeRunner writes the result.json a trainer would), so a whole
search takes about a second; and the CLI in a subprocess for what only a real process shows."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import yaml

from recsearch.search import loop
from recsearch.search.runners import RESULT_FILE, Handle, read_result
from recsearch.search.store import JournalStore
from recsearch.types import TrialResult, TrialSpec, TrialState
from tests.search.test_loop import search_config, write_config

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "recsearch.cli"]
SERVING_BATCH = 64  # tests.search.test_loop.search_config's objective.serving_batch


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def fake_auc(spec: TrialSpec) -> float:
    """A deterministic AUC that grows with the rung's rows and differs between configurations."""
    choices = spec.extra.get("choices", "")
    return round(0.6 + 0.02 * (sum(map(ord, str(choices))) % 7) / 7 + spec.train_rows / 1e6, 6)


def write_fake_result(workdir: Path, spec: TrialSpec) -> None:
    auc = fake_auc(spec)
    (Path(workdir) / RESULT_FILE).write_text(json.dumps({
        "status": "completed",
        "metrics": {"val": {"auc": auc, "log_loss": 0.5}, "test": {"auc": auc}},
        "latency_ms": {str(SERVING_BATCH): {"p50_ms": 1.0, "p99_ms": 1.5}},
        "config": {"train_rows": spec.train_rows},
    }))


class FakeRunner:
    """The runner protocol, with trials that finish as they are submitted."""

    def __init__(self) -> None:
        self.submitted: list[tuple[int, int]] = []  # (trial id, train rows)

    def submit(self, spec: TrialSpec, workdir: Path) -> Handle:
        self.submitted.append((spec.trial_id, spec.train_rows))
        write_fake_result(workdir, spec)
        now = time.time()
        handle = Handle(spec.trial_id, Path(workdir), now, started_at_s=now, finished_at_s=now)
        handle.state = TrialState.COMPLETE
        return handle

    def poll(self, handle: Handle) -> TrialState:
        return handle.state

    def result(self, handle: Handle) -> TrialResult:
        return read_result(handle.workdir, handle.trial_id, SERVING_BATCH, handle.error)

    def cancel(self, handle: Handle) -> None:
        pass


def tiny_config(data: Path, **settings) -> dict:
    """tests/search's tiny search, without a reference (a fixed budget), random controller."""
    base = {"reference": False, "objective.budget_ms": 100.0, "controller": "random", "trials": 2,
            "fidelity.train_rows": [2048]}
    return search_config(data, **{**base, **settings})


def run_past_a_hung_trial_0(search: loop.Search, out: Path, timeout_s: float) -> dict:
    """Run a search of 3 trials whose trial 0 hangs under runner.trial_timeout_s `timeout_s`, and
    check what every runner promises (docs/RELIABILITY.md): the run ends well within a minute,
    trial 0 is FAILED as timed out after at least `timeout_s`, trials 1 and 2 complete. Returns
    the trial records by id, for the runner's own checks (what was killed)."""
    started = time.time()
    assert search.run() == 0
    assert time.time() - started < 60
    records = {r.trial_id: r for r in JournalStore(out).trials()}
    hung = records[0]
    assert hung.state is TrialState.FAILED
    assert "timed out" in hung.result.error and f"runner.trial_timeout_s {timeout_s}" in hung.result.error
    assert hung.notes["timed_out"].startswith("timed out") and timeout_s <= hung.notes["wall_s"] < 30
    assert [records[i].state for i in (1, 2)] == [TrialState.COMPLETE, TrialState.COMPLETE]
    return records


def start_search(tmp_path: Path, raw: dict, runner=None, out: str = "out") -> tuple[loop.Search, Path]:
    """What `recsearch search --config` does before running: validate, write search.yaml, build
    the Search (with the given runner)."""
    res = loop.load_search_config(write_config(tmp_path, raw, f"{out}.yaml"))
    search_dir = tmp_path / out
    search_dir.mkdir(parents=True)
    (search_dir / loop.SEARCH_CONFIG).write_text(yaml.safe_dump(res.resolved_dict(search_dir), sort_keys=False))
    return loop.Search(res, search_dir, runner=runner or FakeRunner(), echo=lambda *a: None), search_dir


def resume(search_dir: Path, runner=None) -> loop.Search:
    res = loop.load_search_config(search_dir / loop.SEARCH_CONFIG)
    return loop.Search(res, search_dir, runner=runner or FakeRunner(), echo=lambda *a: None)


def journal_lines(search_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (search_dir / "journal.jsonl").read_text().splitlines()]
