import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from recsearch.search.store import JournalStore
from recsearch.types import ArchSpec, HParams, Topology, TrialResult, TrialSpec, TrialState


def _spec(lr: float = 0.1) -> TrialSpec:
    return TrialSpec(
        trial_id=-1,
        arch=ArchSpec(embedding_dim=8, bottom_mlp=(32, 8), top_mlp=(16, 1)),
        hparams=HParams(dense_lr=lr),
        train_rows=1000,
        topology=Topology(world_size=2, device_memory_bytes=1 << 30),
        extra={"note": "x"},
    )


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_trials_survive_reopen_with_states_and_results(tmp_path):
    store = JournalStore(tmp_path)
    a = store.create_trial(_spec(0.1))
    b = store.create_trial(_spec(0.2))
    assert (a.trial_id, b.trial_id) == (0, 1)
    store.set_state(0, TrialState.RUNNING)
    result = TrialResult(trial_id=0, state=TrialState.COMPLETE, auc=0.79, log_loss=0.45)
    store.set_state(0, TrialState.COMPLETE, result=result, notes={"run_dir": "t0"})
    reopened = JournalStore(tmp_path)
    records = reopened.trials()
    assert [r.state for r in records] == [TrialState.COMPLETE, TrialState.PENDING]
    assert records[0].result == result and records[0].notes == {"run_dir": "t0"}
    assert records[0].attempts == 1
    assert records[1].spec == TrialSpec(**{**_spec(0.2).__dict__, "trial_id": 1})
    assert reopened.trials(states=(TrialState.PENDING,))[0].trial_id == 1


def test_torn_last_line_is_ignored_and_overwritten(tmp_path):
    store = JournalStore(tmp_path)
    store.create_trial(_spec())
    with open(store.path, "ab") as fh:
        fh.write(b'{"op": "create", "trial_id": 1, "sp')  # writer killed mid-line
    reopened = JournalStore(tmp_path)
    assert len(reopened.trials()) == 1
    reopened.create_trial(_spec())
    lines = store.path.read_text().splitlines()
    assert len(lines) == 2 and all(line.startswith("{") and line.endswith("}") for line in lines)
    assert [r.trial_id for r in JournalStore(tmp_path).trials()] == [0, 1]


def test_corrupt_middle_line_is_a_clear_error(tmp_path):
    store = JournalStore(tmp_path)
    store.create_trial(_spec())
    with open(store.path, "ab") as fh:
        fh.write(b"not json\n")
    with pytest.raises(ValueError, match=r"journal.jsonl: line 2: not a JSON line"):
        JournalStore(tmp_path)


def test_stale_running_trials_are_failed(tmp_path):
    clock = _Clock()
    store = JournalStore(tmp_path, clock=clock)
    for _ in range(3):
        store.create_trial(_spec())
    store.set_state(0, TrialState.RUNNING)
    store.set_state(1, TrialState.RUNNING)
    clock.now += 50
    store.heartbeat(1)
    clock.now += 50
    assert store.fail_stale(timeout_s=60) == [0]
    record = store.get(0)
    assert record.state == TrialState.FAILED and "stale" in record.result.error
    assert store.get(1).state == TrialState.RUNNING and store.get(2).state == TrialState.PENDING


def _create_many(root: str, n: int) -> None:
    store = JournalStore(root)
    for _ in range(n):
        store.create_trial(_spec())


@pytest.mark.multiproc
def test_concurrent_writers_get_unique_ids(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_create_many, args=(str(tmp_path), 15)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert [r.trial_id for r in JournalStore(tmp_path).trials()] == list(range(30))


@pytest.mark.multiproc
def test_sigkill_mid_write_loses_no_acknowledged_trial(tmp_path):
    child = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {os.getcwd()!r})
        from tests.search.test_store import _spec
        from recsearch.search.store import JournalStore
        store = JournalStore({str(tmp_path)!r})
        while True:
            rec = store.create_trial(_spec())
            print(rec.trial_id, flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    acknowledged = [int(proc.stdout.readline()) for _ in range(40)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    ids = [r.trial_id for r in JournalStore(tmp_path).trials()]
    assert ids == list(range(len(ids)))  # no gaps, no duplicates
    assert set(acknowledged) <= set(ids)  # every acknowledged create survived


def _journal(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "journal.jsonl").read_text().splitlines()]


def test_a_trial_is_created_with_its_state_and_notes_in_one_line(tmp_path):
    store = JournalStore(tmp_path)
    ref = store.create_trial(_spec(), notes={"reference": True})
    rejected = store.create_trial(_spec(), TrialState.PRUNED, notes={"rejected": "does not fit"})
    assert (ref.state, ref.notes) == (TrialState.PENDING, {"reference": True})
    assert (rejected.state, rejected.notes) == (TrialState.PRUNED, {"rejected": "does not fit"})
    lines = _journal(tmp_path)
    assert [(e["op"], e.get("state"), e.get("notes")) for e in lines] == [
        ("create", None, {"reference": True}), ("create", "PRUNED", {"rejected": "does not fit"})]
    again = {r.trial_id: r for r in JournalStore(tmp_path).trials()}
    assert again[0].notes == {"reference": True} and again[1].state is TrialState.PRUNED
    assert again[1].attempts == 0 and again[1].rung_attempts == {}
    with pytest.raises(ValueError, match="created PENDING or finished"):
        store.create_trial(_spec(), TrialState.RUNNING)
    assert len(_journal(tmp_path)) == 2  # refused before anything was written


def test_a_journal_of_create_then_state_lines_reads_as_before(tmp_path):
    """The layout older searches wrote: the create line without notes, the notes on the next line."""
    spec = JournalStore(tmp_path).create_trial(_spec()).spec  # its create line is the one to keep
    create = json.loads((tmp_path / "journal.jsonl").read_text())
    (tmp_path / "journal.jsonl").write_text(
        json.dumps(create) + "\n"
        + json.dumps({"op": "state", "trial_id": 0, "state": "PENDING", "notes": {"reference": True}, "time_s": 5.0}) + "\n"
        + json.dumps({"op": "state", "trial_id": 0, "state": "RUNNING", "notes": {"rung": 1}, "time_s": 6.0}) + "\n"
    )
    (record,) = JournalStore(tmp_path).trials()
    assert record.spec == spec and record.notes == {"reference": True, "rung": 1}
    assert record.state is TrialState.RUNNING and record.attempts == 1 and record.rung_attempts == {1: 1}
    # a create line that claims a run is refused by name
    (tmp_path / "journal.jsonl").write_text(json.dumps({**create, "state": "RUNNING"}) + "\n")
    with pytest.raises(ValueError, match=r"line 1: create of trial 0 as RUNNING"):
        JournalStore(tmp_path)


def test_notes_lines_merge_notes_without_a_new_attempt(tmp_path):
    store = JournalStore(tmp_path)
    store.create_trial(_spec())
    store.set_state(0, TrialState.RUNNING, notes={"rung": 0})
    store.add_notes(0, {"app_handle": "slurm://torchx/123"})
    record = JournalStore(tmp_path).get(0)
    assert record.state is TrialState.RUNNING and record.attempts == 1 and record.rung_attempts == {0: 1}
    assert record.notes == {"rung": 0, "app_handle": "slurm://torchx/123"}
    with pytest.raises(KeyError, match="no trial 5"):
        store.add_notes(5, {"x": 1})


def _snapshot(root) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def test_a_read_only_store_writes_nothing_and_refuses_writes(tmp_path):
    store = JournalStore(tmp_path)
    store.create_trial(_spec())
    (tmp_path / "journal.jsonl.lock").unlink()  # as a copy of the directory without it would be
    before = _snapshot(tmp_path)
    reader = JournalStore(tmp_path, read_only=True)
    assert [r.trial_id for r in reader.trials()] == [0] and reader.get(0).state is TrialState.PENDING
    for write in (lambda: reader.create_trial(_spec()), lambda: reader.set_state(0, TrialState.FAILED),
                  lambda: reader.heartbeat(0), lambda: reader.fail_stale(0.0), lambda: reader.add_notes(0, {})):
        with pytest.raises(PermissionError, match="opened read-only"):
            write()
    assert _snapshot(tmp_path) == before  # no lock file created, nothing touched
    # it sees what a writer appends later (and takes the writer's lock, shared, once there is one)
    store.set_state(0, TrialState.RUNNING)
    assert reader.get(0).state is TrialState.RUNNING
    with pytest.raises(FileNotFoundError, match="no such journal"):
        JournalStore(tmp_path / "elsewhere", read_only=True)
    assert not (tmp_path / "elsewhere").exists()


def test_a_run_the_search_cancelled_is_pending_again_and_not_counted(tmp_path):
    store = JournalStore(tmp_path)
    rec = store.create_trial(_spec())
    store.set_state(rec.trial_id, TrialState.RUNNING, notes={"rung": 1})
    after = store.release_run(rec.trial_id, "its run at rung 1 was cancelled by the search")
    assert after.state is TrialState.PENDING and after.rung_attempts == {1: 1} and after.rung_cancelled == {1: 1}
    assert after.runs_counted(1) == 0 and after.notes["interrupted"].startswith("its run at rung 1")
    store.release_run(rec.trial_id, "again")  # not RUNNING: nothing written
    lines = [json.loads(x) for x in (tmp_path / "journal.jsonl").read_text().splitlines()]
    assert [e.get("cancelled") for e in lines] == [None, None, True]
    # replayed the same by another reader; a counted run after it counts
    store.set_state(rec.trial_id, TrialState.RUNNING, notes={"rung": 1})
    assert JournalStore(tmp_path).get(rec.trial_id).runs_counted(1) == 1


def test_a_cancelled_line_for_a_trial_that_was_not_running_is_a_damaged_journal(tmp_path):
    store = JournalStore(tmp_path)
    store.create_trial(_spec())
    with open(tmp_path / "journal.jsonl", "a") as fh:
        fh.write(json.dumps({"op": "state", "trial_id": 0, "state": "PENDING", "cancelled": True, "time_s": 1.0}) + "\n")
    with pytest.raises(ValueError, match=r"journal.jsonl: line 2: a cancelled run of trial 0 must take it from RUNNING"):
        JournalStore(tmp_path)
