"""The search with runner.kind pool keeps the guarantees of docs/RELIABILITY.md: a hung trial is
killed at runner.trial_timeout_s (its worker's whole process group) and recorded FAILED, a crashed
trial is FAILED while the search goes on in a fresh worker, an interrupted search cancels its
trials and --resume finishes the budget, and no worker outlives the search's run()."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from recsearch import config
from recsearch.search import loop, settings
from recsearch.search.store import JournalStore
from recsearch.types import TrialState
from tests.reliability.search_helpers import resume, run_past_a_hung_trial_0, start_search, tiny_config
from tests.search.test_loop import write_config
from tests.procs import all_dead, pid_alive
from tests.search.test_pool_runner import FakePool


class ScriptedPool(FakePool):
    """Each trial does what `actions` says for its trial id (default: finishes at once); every
    worker pid is remembered."""

    def __init__(self, actions: dict[int, str], **kwargs):
        super().__init__(serving_batch=64, threads=1, **kwargs)
        self.actions = actions
        self.pids: set[int] = set()

    def submit(self, spec, workdir):
        (Path(workdir) / "action").write_text(self.actions.get(spec.trial_id, "ok"))
        handle = super().submit(spec, workdir)
        self.pids |= {w.pid for w in self.workers}
        return handle


def _pool_config(data, **settings):
    return tiny_config(data, **{"runner.kind": "pool", "runner.poll_s": 0.05, **settings})


def test_a_hung_trial_is_killed_at_the_timeout_its_worker_replaced_and_the_search_goes_on(tmp_path, learnable_data):
    raw = _pool_config(learnable_data, **{"runner.trial_timeout_s": 1, "trials": 3})
    with ScriptedPool({0: "hang"}) as pool:
        search, out = start_search(tmp_path, raw, runner=pool)
        run_past_a_hung_trial_0(search, out, timeout_s=1)
        # the hung trial's worker and the child its trial started were killed together
        child = int((out / "trials" / "0" / "child.pid").read_text())
        assert all_dead([child])
        assert pool.started == 2  # the killed worker, and the one that ran trials 1 and 2
    assert all_dead(pool.pids)


def test_a_trial_without_progress_is_killed_as_stalled_and_one_that_beats_is_not(tmp_path, learnable_data, monkeypatch):
    # runner.stall_timeout_s 1 s (its floor of 30 s lowered for the test): trial 0 hangs silently,
    # trial 1 works for 3 s while rewriting its progress.json; no trial timeout is set
    monkeypatch.setattr(settings, "MIN_STALL_TIMEOUT_S", 0.5)
    raw = _pool_config(learnable_data, **{"runner.stall_timeout_s": 1, "trials": 3})
    with ScriptedPool({0: "hang", 1: "slow_beating"}) as pool:
        search, out = start_search(tmp_path, raw, runner=pool)
        assert search.run() == 0
        child = int((out / "trials" / "0" / "child.pid").read_text())
        assert all_dead([child])
    records = {r.trial_id: r for r in JournalStore(out).trials()}
    stalled = records[0]
    assert stalled.state is TrialState.FAILED
    assert stalled.result.error.startswith("stalled: no progress for ")
    assert "runner.stall_timeout_s 1)" in stalled.result.error
    assert 1 <= stalled.notes["wall_s"] < 10
    assert [records[i].state for i in (1, 2)] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert records[1].notes["wall_s"] >= 3  # three times the stall timeout, alive all along
    assert json.loads((out / "trials" / "1" / "progress.json").read_text())["phase"] == "train"
    assert all_dead(pool.pids)


@pytest.mark.parametrize("action, error", [
    ("segv", "process killed by SIGSEGV"),
    ("raise", "RuntimeError: CUDA out of memory (simulated by the fake trainer)"),
    ("exit2", "process exited with code 2; log: "),
])
def test_a_crashed_trial_is_failed_with_its_error_and_the_search_goes_on(tmp_path, learnable_data, action, error):
    raw = _pool_config(learnable_data, **{"trials": 3, "runner.concurrency": 2})
    with ScriptedPool({1: action}, size=2) as pool:
        search, out = start_search(tmp_path, raw, runner=pool)
        assert search.run() == 0
    records = {r.trial_id: r for r in JournalStore(out).trials()}
    assert records[1].state is TrialState.FAILED and error in records[1].result.error
    assert [records[i].state for i in (0, 2)] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert all_dead(pool.pids)


class _Interrupt(ScriptedPool):
    """Ctrl-C while trial 1 runs (hung): raised out of poll, as a signal would be."""

    def poll(self, handle):
        state = super().poll(handle)
        if handle.trial_id == 1 and (Path(handle.workdir) / "child.pid").exists():
            raise KeyboardInterrupt
        return state


def test_ctrl_c_cancels_the_running_trial_and_resume_finishes_the_budget(tmp_path, learnable_data):
    raw = _pool_config(learnable_data, **{"trials": 3})
    with _Interrupt({1: "hang"}) as pool:
        search, out = start_search(tmp_path, raw, runner=pool)
        assert search.run() == 130
        child = int((out / "trials" / "1" / "child.pid").read_text())
        assert all_dead([child]) and not any(w.job for w in pool.workers)
    records = {r.trial_id: r for r in JournalStore(out).trials()}
    assert records[0].state is TrialState.COMPLETE and records[1].state is TrialState.PENDING
    assert records[1].rung_cancelled == {0: 1} and "cancelled by the search" in records[1].notes["interrupted"]
    with ScriptedPool({}) as again:
        assert resume(out, runner=again).run() == 0
    after = {r.trial_id: r for r in JournalStore(out).trials()}
    assert len(after) == 3 and all(r.state is TrialState.COMPLETE for r in after.values())
    assert after[1].attempts == 2 and after[1].runs_counted(0) == 1 and "retry" not in after[1].notes
    assert after[0].attempts == 1  # finished before the interrupt: never run again
    assert all_dead(pool.pids | again.pids)


def test_a_search_with_its_own_pool_leaves_no_worker_behind(tmp_path, learnable_data, monkeypatch):
    """runner.kind pool built by the search itself (make_runner, `concurrency` workers) is closed
    when run() returns: every worker process has ended."""
    monkeypatch.setattr(loop, "make_runner", _fake_make_runner)
    raw = _pool_config(learnable_data, **{"trials": 3, "runner.concurrency": 2})
    res = loop.load_search_config(write_config(tmp_path, raw))
    search = loop.Search(res, tmp_path / "out", echo=lambda *a: None)
    assert isinstance(search.runner, ScriptedPool) and search.runner.size == 2
    assert search.run() == 0
    assert all(r.state is TrialState.COMPLETE for r in JournalStore(tmp_path / "out").trials())
    assert search.runner.workers == [] and all_dead(search.runner.pids)


def _fake_make_runner(kind, serving_batch, threads, torchx, concurrency=1):
    assert kind == "pool"
    return ScriptedPool({}, size=concurrency)


def test_the_pool_runner_trains_one_rank_trials_only(tmp_path, learnable_data):
    path = write_config(tmp_path, _pool_config(learnable_data, **{"topology.devices": 2}))
    with pytest.raises(config.ConfigError, match=r"runner.kind: pool trains on one rank; topology.devices is 2"):
        loop.load_search_config(path)


def test_a_worker_dies_with_the_process_that_started_it(tmp_path):
    """PR_SET_PDEATHSIG: a pool whose search process is SIGKILLed leaves no worker (the worker
    also exits at once if its parent is already gone when it starts)."""
    import subprocess
    import sys

    script = (
        "import sys, time\n"
        "from tests.search.test_pool_runner import FakePool\n"
        "pool = FakePool(serving_batch=64, size=2)\n"
        "pool._top_up()\n"
        # each worker says "ready" after its imports, so well after it set its death signal
        "deadline = time.monotonic() + 120\n"
        "while not all(w.ready_info for w in pool.workers) and time.monotonic() < deadline:\n"
        "    [w.read() for w in pool.workers]\n"
        "    time.sleep(0.02)\n"
        "print(' '.join(str(w.pid) for w in pool.workers if w.ready_info), flush=True)\n"
        "time.sleep(600)\n"
    )
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=repo, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(repo)})
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2 and all(pid_alive(p) for p in pids)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert all_dead(pids)


def test_torchx_trials_ask_for_a_gpu_per_rank(tmp_path, learnable_data):
    raw = _pool_config(learnable_data, **{"topology.devices": 8, "runner.kind": "torchx", "runner.torchx.gpu": 4})
    with pytest.raises(config.ConfigError, match=r"runner.torchx.gpu: each torchx trial runs topology.devices=8 ranks "
                                                 r"on one host, a GPU each, and asks for 4 GPUs"):
        loop.load_search_config(write_config(tmp_path, raw))
