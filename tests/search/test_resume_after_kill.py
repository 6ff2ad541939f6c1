"""What a search killed at an awkward instant leaves, and how --resume copes: a job that outlived
the search (a torchx job on a cluster) is cancelled by its journaled handle before the trial runs
again; a reference trial from an older journal, killed between its create line and its note, is
still the reference; SIGTERM ends a search as Ctrl-C does (its trials cancelled, the journal
ready for --resume)."""

from __future__ import annotations

import itertools
import signal
import subprocess
from pathlib import Path

import pytest

from recsearch.search.runners import Handle
from recsearch.search.store import JournalStore
from recsearch.types import TrialState
from tests.procs import all_dead, children_within
from tests.reliability.search_helpers import (
    CLI,
    REPO,
    FakeRunner,
    env,
    journal_lines,
    resume,
    start_search,
    tiny_config,
    write_config,
)
from tests.search.test_loop import learnable_data  # noqa: F401  (the fixture)


class _Killed(BaseException):
    """Stands for SIGKILL of the search process (no cleanup of its own runs)."""


class ClusterJobs(FakeRunner):
    """Jobs with scheduler handles that outlive the process that submitted them. `kill_on_poll`:
    the search "dies" at its first poll (after the job was submitted and journaled)."""

    def __init__(self, kill_on_poll: bool = False, orphan_outcome: str | Exception = "cancelled (it was RUNNING)",
                 first_job: int = 1000):
        super().__init__()
        self.kill_on_poll = kill_on_poll
        self.orphan_outcome = orphan_outcome
        self.events: list[tuple[str, object]] = []
        self._job_ids = itertools.count(first_job)

    def submit(self, spec, workdir):
        handle = super().submit(spec, workdir)
        handle.info["app_handle"] = f"slurm://cluster/{next(self._job_ids)}"
        self.events.append(("submit", spec.trial_id))
        if self.kill_on_poll:
            handle.state, handle.finished_at_s = TrialState.RUNNING, None
        return handle

    def poll(self, handle: Handle) -> TrialState:
        if self.kill_on_poll:
            raise _Killed()
        return handle.state

    def cancel_orphan(self, app_handle: str) -> str:
        self.events.append(("cancel_orphan", app_handle))
        if isinstance(self.orphan_outcome, Exception):
            raise self.orphan_outcome
        return self.orphan_outcome


class NoOrphanCancel(FakeRunner):
    """A runner that cannot cancel a job by its handle."""


def _killed_with_a_job_running(tmp_path: Path, data: Path) -> tuple[Path, int]:
    search, out = start_search(tmp_path, tiny_config(data, trials=2), runner=ClusterJobs(kill_on_poll=True))
    with pytest.raises(_Killed):
        search.run()
    (victim,) = [r for r in JournalStore(out).trials() if r.state is TrialState.RUNNING]
    return out, victim.trial_id


@pytest.mark.parametrize(("runner", "said"), [
    (ClusterJobs(first_job=2000), "cancelled (it was RUNNING)"),
    (ClusterJobs(orphan_outcome=ConnectionError("scontrol: Unable to contact slurm controller"), first_job=2000),
     "could not cancel it (ConnectionError: scontrol: Unable to contact slurm controller); if it still runs it "
     "writes into"),
    (NoOrphanCancel(), "not cancelled: the NoOrphanCancel cannot cancel a job by its handle"),
], ids=["cancelled", "cancel-raises", "runner-cannot"])
def test_a_job_left_running_by_a_killed_search_is_cancelled_before_the_trial_runs_again(
        tmp_path, learnable_data, runner, said):  # noqa: F811
    out, victim = _killed_with_a_job_running(tmp_path, learnable_data)
    record = JournalStore(out).get(victim)
    assert record.notes["app_handle"] == "slurm://cluster/1000"  # journaled once submitted
    # the handle is a notes line right after the RUNNING line, not a second attempt
    ops = [(e["op"], e.get("state")) for e in journal_lines(out) if e["trial_id"] == victim and e["op"] != "heartbeat"]
    assert ops[-2:] == [("state", "RUNNING"), ("notes", None)] and record.attempts == 1

    lines: list[str] = []
    search = resume(out, runner=runner)
    search.echo = lines.append
    assert search.run() == 0
    after = JournalStore(out).get(victim)
    assert after.state is TrialState.COMPLETE and after.attempts == 2
    assert after.notes["orphan_job"].startswith(f"slurm://cluster/1000: {said}")
    assert any(f"trial   {victim}: job slurm://cluster/1000 of the search that died: {said}" in x for x in lines)
    if isinstance(runner, ClusterJobs):
        # cancelled before anything was submitted; the retry's own job is the trial's handle now
        assert runner.events[0] == ("cancel_orphan", "slurm://cluster/1000")
        assert runner.events[1] == ("submit", victim)
        assert after.notes["app_handle"] == "slurm://cluster/2000"
    else:
        assert "app_handle" not in after.notes or after.notes["app_handle"] is None


def test_a_finished_trials_job_is_not_cancelled_on_resume(tmp_path, learnable_data):  # noqa: F811
    """Only trials that were RUNNING have a job to end: a finished trial's handle stays a note."""
    search, out = start_search(tmp_path, tiny_config(learnable_data, trials=1), runner=ClusterJobs())
    assert search.run() == 0
    runner = ClusterJobs()
    assert resume(out, runner=runner).run() == 0
    assert runner.events == [] and JournalStore(out).get(0).notes["app_handle"] == "slurm://cluster/1000"


def test_a_reference_whose_note_was_lost_by_a_kill_is_still_the_reference(tmp_path, learnable_data):  # noqa: F811
    """An older search wrote the reference's create line and its `reference` note in two lines; a
    kill between them left a reference without the note. It is still the reference on resume
    (its spec says so), trained once as the reference, and the note is written back."""
    raw = tiny_config(learnable_data, reference=True, trials=2)
    search, out = start_search(tmp_path, raw)
    search.store.create_trial(search.reference_spec())  # the old create line, and then the kill
    assert "notes" not in journal_lines(out)[0]
    runner = FakeRunner()
    assert resume(out, runner=runner).run() == 0
    records = JournalStore(out).trials()
    refs = [r for r in records if r.spec.extra.get("reference")]
    assert [r.trial_id for r in refs] == [0] and refs[0].notes["reference"] is True
    assert refs[0].state is TrialState.COMPLETE and "rungs" not in refs[0].notes  # not a candidate
    assert len(records) == 3 and all(r.state is TrialState.COMPLETE for r in records)
    assert runner.submitted[0] == (0, 2048)


def test_the_search_writes_each_trial_in_one_create_line(tmp_path, learnable_data):  # noqa: F811
    search, out = start_search(tmp_path, tiny_config(learnable_data, reference=True, trials=2))
    assert search.run() == 0
    lines = journal_lines(out)
    creates = {e["trial_id"]: e for e in lines if e["op"] == "create"}
    assert creates[0]["notes"] == {"reference": True}
    assert all("placement" in creates[t]["notes"] for t in (1, 2))  # the candidate's check, with it
    # a candidate's next line is its run (with its bracket: one trial a bracket on one rung), none between
    for t in (1, 2):
        mine = [e for e in lines if e["trial_id"] == t and e["op"] != "heartbeat"]
        assert mine[1]["state"] == "RUNNING" and mine[1]["notes"]["bracket"] == t - 1


@pytest.mark.slow
def test_sigterm_cancels_the_running_trial_exits_143_and_resume_finishes(tmp_path, learnable_data):  # noqa: F811
    """SIGTERM to the search process alone (as a scheduler ending the job, or `kill`): the search
    cancels its trial (the trainer child dies), says how to resume, exits 143; the trial is
    journaled back to PENDING (the cancelled run not counted as an attempt), and --resume runs it
    again and finishes the budget."""
    raw = tiny_config(learnable_data, **{"runner.kind": "subprocess", "trials": 2, "fidelity.train_rows": [12288]})
    out = tmp_path / "out"
    proc = subprocess.Popen([*CLI, "search", "--config", str(write_config(tmp_path, raw)), "--out", str(out)],
                            cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # once a trial it runs has written its train.log: the search's children are then its trainers
        children = children_within(proc.pid, 120, lambda: any((out / "trials").glob("*/train.log")))
        assert children, "no trial started"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, output[-3000:]
    assert f"[search] terminated (SIGTERM); resume with: recsearch search --resume {out}" in output
    assert all_dead(children), "the trial's trainer outlived the search"
    assert not [r for r in JournalStore(out).trials() if r.state is TrialState.RUNNING]
    (running,) = [r for r in JournalStore(out).trials() if r.notes.get("interrupted")]
    assert running.state is TrialState.PENDING and running.runs_counted(0) == 0
    assert "cancelled by the search (terminated (SIGTERM))" in running.notes["interrupted"]
    assert not (out / "trials" / str(running.trial_id) / "result.json").exists()

    runner = FakeRunner()
    assert resume(out, runner=runner).run() == 0
    after = JournalStore(out).trials()
    assert len(after) == 2 and all(r.state is TrialState.COMPLETE for r in after)
    assert (running.trial_id, 12288) in runner.submitted and JournalStore(out).get(running.trial_id).attempts == 2

