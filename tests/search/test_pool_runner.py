"""The pool runner: persistent worker processes that run trials back to back. Trials in a used
worker give exactly what a fresh process gives; a trial that exits badly, raises, crashes, hangs or
leaks is recorded as the subprocess runner records it and only its worker is replaced."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from recsearch.search import runners
from recsearch.search.runners import PoolRunner, SubprocessRunner
from recsearch.types import TrialState
from tests.procs import all_dead, pid_alive, wait_for_file
from tests.search.test_loop import learnable_data  # noqa: F401  (the fixture)
from tests.search.test_runners import _spec, _trial_dir


class FakePool(PoolRunner):
    """Workers that run tests.search.pool_trainers:fake instead of the trainer."""

    train_main = "tests.search.pool_trainers:fake"

    def worker_command(self) -> list[str]:
        return [*super().worker_command(), "--train-main", self.train_main]


def _fake_trial(tmp_path: Path, name: str, action: str = "ok", seed: int = 0) -> Path:
    workdir = tmp_path / name
    workdir.mkdir(parents=True)
    (workdir / runners.TRIAL_CONFIG).write_text(yaml.safe_dump({"hparams": {"seed": seed}}))
    (workdir / "action").write_text(action)
    return workdir


def _wait(runner, handle, timeout: float = 300.0) -> TrialState:
    deadline = time.time() + timeout
    while runner.poll(handle) is TrialState.RUNNING:
        assert time.time() < deadline, f"trial {handle.trial_id} still running after {timeout} s"
        time.sleep(0.02)
    return handle.state


def _run(runner, tmp_path: Path, name: str, action: str = "ok", seed: int = 0, trial_id: int = 0):
    handle = runner.submit(_spec(trial_id), _fake_trial(tmp_path, name, action, seed))
    _wait(runner, handle)
    return handle, runner.result(handle)


def _seen(workdir: Path) -> dict:
    return json.loads((workdir / runners.RESULT_FILE).read_text())["seen"]


def test_trials_run_back_to_back_in_one_worker_with_nothing_carried_over(tmp_path):
    with FakePool(serving_batch=64, size=1) as pool:
        first, r1 = _run(pool, tmp_path, "a", "leak_env", seed=3)
        second, r2 = _run(pool, tmp_path, "b", "ok", seed=3, trial_id=1)
        assert r1.state is r2.state is TrialState.COMPLETE and r2.auc == 0.7
        assert first.info["pid"] == second.info["pid"] and pool.started == 1
        assert (first.info["worker_trials"], second.info["worker_trials"]) == (0, 1)
        assert first.info["returncode"] == second.info["returncode"] == 0
        # the first trial set an environment variable, changed directory and drew random numbers:
        # the second sees none of it, and its generators start where a fresh worker's do
        a, b = _seen(tmp_path / "a"), _seen(tmp_path / "b")
        assert a["cwd"] == "/" and b["cwd"] == os.getcwd()
        assert a["leak"] == "1" and b["leak"] is None
        _run(pool, tmp_path, "c", "ok", seed=3, trial_id=2)
        c = _seen(tmp_path / "c")
        assert (b["random"], b["numpy"]) == (c["random"], c["numpy"]) and a["random"] != b["random"]
        assert "fake trainer: ok" in (tmp_path / "b" / runners.LOG_FILE).read_text()
        pid = first.info["pid"]
    assert all_dead([pid]), "close() left the worker running"


def test_a_bad_exit_code_fails_the_trial_like_a_subprocess_and_keeps_the_worker(tmp_path):
    with FakePool(serving_batch=64, size=1) as pool:
        bad, r = _run(pool, tmp_path, "bad", "exit2")
        assert r.state is TrialState.FAILED
        assert r.error.startswith("process exited with code 2; log: ") and "epochs must be >= 1" in r.error
        assert "result.json missing" in r.error
        after, r2 = _run(pool, tmp_path, "ok", trial_id=1)
        assert r2.state is TrialState.COMPLETE and after.info["pid"] == bad.info["pid"]


def test_a_trial_that_raises_fails_with_its_traceback_and_its_worker_is_replaced(tmp_path):
    with FakePool(serving_batch=64, size=1) as pool:
        bad, r = _run(pool, tmp_path, "bad", "raise")
        assert r.state is TrialState.FAILED and r.error.startswith("process exited with code 1; log: ")
        assert "RuntimeError: CUDA out of memory (simulated" in r.error
        assert bad.info["worker_retired"] == "the trial raised an exception"
        log = (tmp_path / "bad" / runners.LOG_FILE).read_text()
        assert "Traceback (most recent call last)" in log and "retiring this worker" in log
        assert all_dead([bad.info["pid"]])
        after, r2 = _run(pool, tmp_path, "ok", trial_id=1)
        assert r2.state is TrialState.COMPLETE and after.info["pid"] != bad.info["pid"]
        assert after.info["worker_trials"] == 0 and pool.started == 2


def test_a_segfault_fails_the_trial_and_a_fresh_worker_takes_the_next(tmp_path):
    with FakePool(serving_batch=64, size=1) as pool:
        bad, r = _run(pool, tmp_path, "bad", "segv")
        assert r.state is TrialState.FAILED and r.error.startswith("process killed by SIGSEGV")
        assert "result.json missing" in r.error and bad.info["returncode"] == -signal.SIGSEGV
        after, r2 = _run(pool, tmp_path, "ok", trial_id=1)
        assert r2.state is TrialState.COMPLETE and after.info["pid"] != bad.info["pid"]


def test_a_worker_killed_mid_trial_fails_the_trial_like_the_oom_killer(tmp_path):
    with FakePool(serving_batch=64, size=1) as pool:
        handle = pool.submit(_spec(0), _fake_trial(tmp_path, "victim", "hang"))
        child = wait_for_file(tmp_path / "victim" / "child.pid")
        os.kill(handle.info["pid"], signal.SIGKILL)
        assert _wait(pool, handle) is TrialState.FAILED
        r = pool.result(handle)
        assert "killed by SIGKILL (the kernel's OOM killer, or someone, killed it)" in r.error
        assert "result.json missing" in r.error
        after, r2 = _run(pool, tmp_path, "ok", trial_id=1)
        assert r2.state is TrialState.COMPLETE and after.info["pid"] != handle.info["pid"]
        # the dead worker's own child was in its process group: the runner killed the group
        assert all_dead([int(child.read_text())])


def test_cancel_kills_the_workers_process_group_and_the_pool_goes_on(tmp_path):
    with FakePool(serving_batch=64, size=1) as pool:
        handle = pool.submit(_spec(0), _fake_trial(tmp_path, "hung", "hang"))
        child = wait_for_file(tmp_path / "hung" / "child.pid")
        assert pool.poll(handle) is TrialState.RUNNING
        pool.cancel(handle)  # what the search does at runner.trial_timeout_s, then expire()
        handle.expire("timed out: still running 1 s after it started (runner.trial_timeout_s 1); killed")
        assert not pid_alive(handle.info["pid"]) and all_dead([int(child.read_text())])
        r = pool.result(handle)
        assert r.state is TrialState.FAILED and r.error.startswith("timed out")
        after, r2 = _run(pool, tmp_path, "ok", trial_id=1)
        assert r2.state is TrialState.COMPLETE and after.info["pid"] != handle.info["pid"]
        pool.cancel(after)  # a finished trial: nothing to cancel, the worker stays
        assert pid_alive(after.info["pid"])


def test_a_trial_that_leaves_a_thread_running_retires_its_worker(tmp_path):
    with FakePool(serving_batch=64, size=1) as pool:
        leaky, r = _run(pool, tmp_path, "leaky", "leak_thread")
        assert r.state is TrialState.COMPLETE  # its result stands; its worker does not
        assert "recsearch-test-leak" in leaky.info["worker_retired"]
        after, _ = _run(pool, tmp_path, "ok", trial_id=1)
        assert after.info["pid"] != leaky.info["pid"]


def test_size_workers_start_with_the_first_trial_and_trials_run_at_once(tmp_path):
    with FakePool(serving_batch=64, size=2) as pool:
        hung = pool.submit(_spec(0), _fake_trial(tmp_path, "hung", "hang"))
        assert pool.started == 2  # the spare imports while the first trial runs
        other, r = _run(pool, tmp_path, "ok", trial_id=1)
        assert r.state is TrialState.COMPLETE and other.info["pid"] != hung.info["pid"]
        assert pool.poll(hung) is TrialState.RUNNING
        pids = [w.pid for w in pool.workers]
    assert all_dead(pids)  # close(): the busy one killed, the idle one ended


def test_the_worker_command_is_an_argument_list_that_splits_the_cache_cap_between_workers():
    command = PoolRunner(serving_batch=64, threads=2, size=2).worker_command()
    assert command[1:3] == ["-m", "recsearch.search.worker"] and command[command.index("--threads") + 1] == "2"
    assert command[command.index("--cache-fraction") + 1] == "0.125"
    assert command[command.index("--parent-pid") + 1] == str(os.getpid())


def test_multi_rank_trials_are_refused():
    pool = PoolRunner(serving_batch=64)
    with pytest.raises(ValueError, match="one-rank trials"):
        pool.submit(_spec(0, world_size=2), Path("/nonexistent"))
    assert pool.started == 0


def _metrics_and_losses(workdir: Path) -> dict:
    raw = json.loads((workdir / runners.RESULT_FILE).read_text())
    return {
        "status": raw["status"], "metrics": raw["metrics"], "steps": raw["steps"], "samples": raw["samples"],
        "last_loss": raw["last_loss"], "losses": [(h["step"], h["loss"]) for h in raw["history"]],
        "dense_parameters": raw["dense_parameters"], "embedding_bytes": raw["embedding_bytes_per_rank"],
    }


@pytest.mark.slow
def test_a_trial_in_a_used_worker_equals_the_same_trial_in_a_fresh_process(tmp_path, learnable_data):  # noqa: F811
    """Trial B after a different trial A (another architecture, interaction, optimizer, seed and
    row count) in one worker gives exactly the metrics and loss history B gives in a fresh
    `recsearch train` process, although B reads A's splits from the worker's split cache."""
    trial_b = {"arch": {"embedding_dim": 8, "bottom_mlp": [32, 8], "top_mlp": [16, 1], "interaction": "dcn",
                        "dcn_num_layers": 2, "dcn_low_rank_dim": 8},
               "hparams": {"batch_size": 256, "embedding_optimizer": "rowwise_adagrad", "embedding_lr": 0.1,
                           "dense_optimizer": "adam", "dense_lr": 0.01, "seed": 5},
               "train_rows": 6144, "eval_every_steps": 8}
    trial_a = {"arch": {"embedding_dim": 4, "bottom_mlp": [16, 4], "top_mlp": [8, 1]},
               "hparams": {"batch_size": 512, "embedding_optimizer": "rowwise_adagrad", "embedding_lr": 0.05,
                           "dense_optimizer": "sgd", "dense_lr": 0.1, "seed": 1},
               "train_rows": 12288, "tensorboard": True}
    fresh = SubprocessRunner(serving_batch=64, threads=1)
    h = fresh.submit(_spec(9), _trial_dir(tmp_path, learnable_data, "fresh", **trial_b))
    assert _wait(fresh, h) is TrialState.COMPLETE, fresh.result(h).error
    with PoolRunner(serving_batch=64, threads=1, size=1) as pool:
        handles = []
        for i, (name, settings) in enumerate([("a", trial_a), ("b", trial_b)]):
            handles.append(pool.submit(_spec(i), _trial_dir(tmp_path, learnable_data, name, **settings)))
            assert _wait(pool, handles[-1]) is TrialState.COMPLETE, pool.result(handles[-1]).error
    first, second = handles
    assert first.info["pid"] == second.info["pid"] and second.info["worker_trials"] == 1
    assert _metrics_and_losses(tmp_path / "b") == _metrics_and_losses(tmp_path / "fresh")
    assert len(_metrics_and_losses(tmp_path / "b")["losses"]) >= 3
    cache = second.info["split_cache"]
    # A loaded train (12,288 rows), val and test; B's 6,144 train rows were a prefix of A's
    assert cache["used"] and cache["hits"] >= 3 and cache["entries"] == 3
    assert 0 < cache["bytes"] <= cache["max_bytes"]


@pytest.mark.slow
def test_a_pool_search_trains_what_an_inprocess_search_trains(tmp_path, learnable_data):  # noqa: F811
    """The same search (random controller, halving on AUC alone) with runner.kind pool, two
    workers, and with the in-process runner: the same trials reach the same rungs with the same
    validation AUC; the journal and report see no difference but the runner."""
    from recsearch.search import loop
    from recsearch.search.store import JournalStore
    from tests.search.test_loop import search_config, write_config

    def run(kind: str, **settings) -> dict:
        raw = search_config(learnable_data, **{"runner.kind": kind, "objective.metric": "none", "trials": 4,
                                               "runner.poll_s": 0.05, **settings})
        out = tmp_path / kind
        assert loop.main(["--config", str(write_config(tmp_path, raw, f"{kind}.yaml")), "--out", str(out)]) == 0
        return {r.trial_id: (r.state, {k: v["auc"] for k, v in r.notes.get("rungs", {}).items()}, r.result.auc)
                for r in JournalStore(out).trials()}

    pooled = run("pool", **{"runner.concurrency": 2})
    assert pooled == run("inprocess")
    assert sum(state is TrialState.COMPLETE for state, _, _ in pooled.values()) == 3  # reference + 2


def _wait_with_runner(runner, handle, timeout_s: float = 120.0) -> tuple[TrialState, int]:
    """Poll only after runner.wait wakes up; returns the state and how many waits it took."""
    waits = 0
    while runner.poll(handle) is TrialState.RUNNING:
        runner.wait([handle], timeout_s)
        waits += 1
        assert waits <= 5, "wait kept waking without the trial ending"
    return handle.state, waits


@pytest.mark.parametrize("action, expected", [("ok", TrialState.COMPLETE), ("segv", TrialState.FAILED)])
def test_wait_wakes_when_a_worker_reports_or_dies_not_at_its_timeout(tmp_path, action, expected):
    # a worker's "done" message (or its closed pipe) ends the wait at once: with a 120 s timeout the
    # trial's end is seen within a few wake-ups, each of which only a write or an exit causes
    with FakePool(serving_batch=64, size=1) as pool:
        handle = pool.submit(_spec(0), _fake_trial(tmp_path, "a", action))
        started = time.monotonic()
        state, waits = _wait_with_runner(pool, handle)
        assert state is expected and waits >= 1
        assert time.monotonic() - started < 60.0


def test_the_subprocess_runner_waits_on_the_trial_process_exit(tmp_path):
    class Sleeper(SubprocessRunner):
        def command(self, spec, workdir):
            return [os.sys.executable, "-c", "import time; time.sleep(0.5)"]

    runner = Sleeper(serving_batch=64)
    handle = runner.submit(_spec(0), _fake_trial(tmp_path, "a"))
    started = time.monotonic()
    state, waits = _wait_with_runner(runner, handle)
    assert waits == 1 and time.monotonic() - started < 60.0  # one wake-up: the exit itself
    assert state is TrialState.FAILED  # it wrote no result.json
