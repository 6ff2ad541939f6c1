"""A torchx trial that fails, is lost or is cancelled, and a search interrupted while one runs:
TorchxRunner against a fake torchx Runner (the scheduler's side scripted), so every ending a real
cluster can give is seen without one."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from torchx.specs import AppState, AppStatus

from recsearch.search.runners import TorchxRunner, TorchxSettings
from recsearch.search.store import JournalStore
from recsearch.types import TrialState
from tests.reliability.search_helpers import start_search, tiny_config
from tests.search.test_loop import learnable_data  # noqa: F401
from tests.search.test_runners import _spec


@dataclass
class FakeTorchx:
    """The part of torchx.runner.Runner TorchxRunner uses. `endings` scripts each job: a list of
    what status() returns on successive calls (an AppState, None for a job the scheduler no
    longer knows, or an exception to raise); the last entry repeats."""

    endings: dict[int, list] = field(default_factory=dict)
    jobs: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    closed: bool = False

    def run(self, app, scheduler: str, cfg=None) -> str:
        handle = f"{scheduler}://torchx/{app.name}-{len(self.jobs)}"
        self.jobs.append(handle)
        return handle

    def status(self, handle: str) -> AppStatus | None:
        if handle in self.cancelled:
            return AppStatus(AppState.CANCELLED)
        if handle not in self.jobs:
            return None  # not a job of this scheduler (or long forgotten)
        script = self.endings.get(self.jobs.index(handle), [AppState.RUNNING])
        now = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(now, BaseException):
            raise now
        if now is None:
            return None
        return AppStatus(now, msg="OOMKilled: memory limit 8192 MB" if now is AppState.FAILED else "")

    def cancel(self, handle: str) -> None:
        self.cancelled.append(handle)

    def close(self) -> None:
        self.closed = True


def _runner(tmp_path: Path, fake: FakeTorchx) -> TorchxRunner:
    runner = TorchxRunner(TorchxSettings(scheduler="local_cwd", cfg={"log_dir": str(tmp_path / "torchx")}),
                          serving_batch=64)
    runner._runner = fake  # the scheduler side; everything of TorchxRunner's own runs for real
    return runner


@pytest.mark.parametrize(("script", "error"), [
    ([AppState.PENDING, AppState.RUNNING, AppState.FAILED],
     "torchx job local_cwd://torchx/recsearch-trial-0-0 ended FAILED: OOMKilled: memory limit 8192 MB"),
    ([AppState.RUNNING, None], "torchx lost the job local_cwd://torchx/recsearch-trial-0-0"),
    ([AppState.RUNNING, AppState.UNKNOWN, AppState.CANCELLED],
     "torchx job local_cwd://torchx/recsearch-trial-0-0 ended CANCELLED"),
])
def test_a_torchx_job_that_fails_is_lost_or_is_cancelled_is_a_failed_trial_with_the_reason(tmp_path, script, error):
    fake = FakeTorchx({0: list(script)})
    runner = _runner(tmp_path, fake)
    handle = runner.submit(_spec(0), tmp_path)
    assert fake.jobs == ["local_cwd://torchx/recsearch-trial-0-0"] and handle.native == fake.jobs[0]
    states = [runner.poll(handle) for _ in script]
    assert states[:-1] == [TrialState.RUNNING] * (len(script) - 1) and states[-1] is TrialState.FAILED
    # a job the scheduler reported RUNNING started its trial's clock (the timeout counts from it)
    assert handle.started_at_s is not None and handle.finished_at_s >= handle.started_at_s
    result = runner.result(handle)
    assert result.state is TrialState.FAILED and error in result.error, result.error
    assert runner.poll(handle) is TrialState.FAILED and len(fake.jobs) == 1  # settled: not asked again


def test_cancel_asks_the_scheduler_once_and_only_for_a_running_job(tmp_path):
    fake = FakeTorchx()
    runner = _runner(tmp_path, fake)
    handle = runner.submit(_spec(0), tmp_path)
    assert runner.poll(handle) is TrialState.RUNNING
    runner.cancel(handle)
    assert fake.cancelled == [handle.native]
    assert runner.poll(handle) is TrialState.FAILED and "ended CANCELLED" in runner.result(handle).error
    runner.cancel(handle)  # already over: nothing more to cancel
    assert fake.cancelled == [handle.native]
    runner.close()
    assert fake.closed


def test_ctrl_c_during_a_torchx_trial_cancels_its_job_and_the_search_returns_130(tmp_path, learnable_data):  # noqa: F811
    """Ctrl-C while the search waits on a running job (raised out of the scheduler's status
    call, as a signal would be): the job is cancelled at the scheduler, the search returns 130
    (what `recsearch search` exits with) and the trial is back to PENDING in the journal, its run
    not counted against runner.retries, for --resume to run again."""
    fake = FakeTorchx({0: [AppState.RUNNING, AppState.RUNNING, KeyboardInterrupt()]})
    raw = tiny_config(learnable_data, **{"runner.poll_s": 0.01})
    search, out = start_search(tmp_path, raw, runner=_runner(tmp_path, fake))
    assert search.run() == 130
    assert fake.jobs and fake.cancelled == [fake.jobs[0]]
    (record,) = [r for r in JournalStore(out).trials() if r.trial_id == 0]
    assert record.state is TrialState.PENDING and "not counted against runner.retries" in record.notes["interrupted"]
    assert not fake.closed  # a runner the caller passed in is the caller's to close


class _Killed(BaseException):
    """Stands for SIGKILL of the search process."""


def test_a_torchx_trials_job_handle_is_in_the_journal_while_it_runs(tmp_path, learnable_data):  # noqa: F811
    """What --resume needs to end a job a killed search left behind (tests/search/test_resume_after_kill.py)."""
    fake = FakeTorchx({0: [AppState.RUNNING, _Killed()]})
    search, out = start_search(tmp_path, tiny_config(learnable_data, **{"runner.poll_s": 0.01}),
                               runner=_runner(tmp_path, fake))
    with pytest.raises(_Killed):
        search.run()
    record = JournalStore(out).get(0)
    assert record.state is TrialState.RUNNING and record.notes["app_handle"] == fake.jobs[0] == \
        "local_cwd://torchx/recsearch-trial-0-0"


def test_cancel_orphan_ends_a_job_the_scheduler_still_runs_and_says_what_it_found(tmp_path):
    fake = FakeTorchx({0: [AppState.RUNNING], 1: [AppState.SUCCEEDED]})
    fake.jobs = ["slurm://torchx/4001", "slurm://torchx/4002"]  # submitted by a search that died
    runner = _runner(tmp_path, fake)
    assert runner.cancel_orphan("slurm://torchx/4001") == "cancelled (it was RUNNING)"
    assert runner.cancel_orphan("slurm://torchx/4002") == "already ended (SUCCEEDED)"
    assert fake.cancelled == ["slurm://torchx/4001"]  # only the running one
    unknown = runner.cancel_orphan("local_cwd://torchx/recsearch-trial-3-0")
    assert unknown.startswith("the scheduler does not know it") and "end it yourself" in unknown
    assert fake.cancelled == ["slurm://torchx/4001"]
