"""The durable trial store: an append-only JSON-lines journal, replayed on open.

Every change is one line, appended under an exclusive file lock, flushed and fsynced before the call
returns, so a search killed at any instant (SIGKILL included) loses nothing it was told had
happened. On open the journal is replayed; a torn last line (the process died mid-write: no
newline yet) is ignored and cut off before the next append. Any other line that is not a valid
entry (garbage, an unknown operation, state or trial) is a JournalError naming the file and the
line number: a damaged journal is never half-read. Workers that stop heartbeating are found with
`fail_stale`, and their trials are marked failed, so a resumed search never waits on a dead worker.

A trial is born whole: its create line carries its first state and notes (a reference, a rejected
candidate), so no kill can leave a trial without them. Journals written before that (a create line
and then a state line for the same trial) read the same. `add_notes` records what is learnt about
a trial without a state change (a torchx job's handle once submitted); it is no new attempt.

A run the search itself cancelled (Ctrl-C, SIGTERM: the search knew it was ending it) is put back
PENDING by `release_run`, one state line marked `"cancelled": true`; it does not count against the
trial's retries (`TrialRecord.runs_counted`). A run still RUNNING when a search is resumed was
not released: its search was killed (SIGKILL, a lost machine), and that run counts, so a trial
that kills its machine is not rerun forever.

`JournalStore(root, read_only=True)` reads a search without writing anything there (no journal
touched, no lock file created), for reports on a directory the reader may not write.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from recsearch import config
from recsearch.types import TrialResult, TrialSpec, TrialState

JOURNAL_FILE = "journal.jsonl"
OPS = ("create", "state", "heartbeat", "notes")


class JournalError(ValueError):
    """A journal line that is not a valid entry: 'journal.jsonl: line N: what'."""


@dataclass(frozen=True)
class TrialRecord:
    """A trial as the journal knows it."""

    spec: TrialSpec
    state: TrialState = TrialState.PENDING
    result: TrialResult | None = None
    created_at_s: float = 0.0
    updated_at_s: float = 0.0
    heartbeat_at_s: float = 0.0
    attempts: int = 0  # times it was set RUNNING
    # times it was set RUNNING at each rung (the `rung` note of the RUNNING entry, 0 without one):
    # a promotion to the next rung is a new run, not a retry of the last one
    rung_attempts: dict[int, int] = field(default_factory=dict)
    # runs at each rung the search itself cancelled (release_run: Ctrl-C, SIGTERM), not retries
    rung_cancelled: dict[int, int] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def trial_id(self) -> int:
        return self.spec.trial_id

    def runs_counted(self, rung: int) -> int:
        """Runs at `rung` that count against runner.retries: those set RUNNING there, less those the
        search itself cancelled. A journal without rung notes (older searches) counts every run."""
        started = self.rung_attempts.get(rung, self.attempts)
        return max(0, started - self.rung_cancelled.get(rung, 0))


class JournalStore:
    """Trials of one search, persisted in `<root>/journal.jsonl`."""

    def __init__(self, root: Path | str, clock: Any = time.time, read_only: bool = False):
        self.root = Path(root)
        self.path = self.root / JOURNAL_FILE
        self.read_only = read_only
        self._clock = clock
        self._records: dict[int, TrialRecord] = {}
        self._valid_bytes = 0  # journal prefix made of whole lines
        self._valid_lines = 0  # lines in that prefix
        if read_only:
            if not self.path.is_file():
                raise FileNotFoundError(f"{self.path}: no such journal (reading a search writes nothing, "
                                        f"so it is not created)")
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            self.path.touch(exist_ok=True)
        with self._locked():
            self._replay()

    # ---- reading -------------------------------------------------------------------------------
    def trials(self, states: tuple[TrialState, ...] | None = None) -> list[TrialRecord]:
        """All trials in id order (optionally only those in `states`); re-reads new lines first."""
        with self._locked():
            self._replay()
        records = [self._records[k] for k in sorted(self._records)]
        return [r for r in records if states is None or r.state in states]

    def get(self, trial_id: int) -> TrialRecord:
        with self._locked():
            self._replay()
        if trial_id not in self._records:
            raise KeyError(f"no trial {trial_id} in {self.path}")
        return self._records[trial_id]

    # ---- writing -------------------------------------------------------------------------------
    def create_trial(self, spec: TrialSpec, state: TrialState = TrialState.PENDING,
                     notes: dict[str, Any] | None = None) -> TrialRecord:
        """Record a new trial in `state` (PENDING by default) with its first notes, in one journal
        line. The spec's trial_id is replaced by the next free id."""
        self._writable()
        if state is TrialState.RUNNING:
            raise ValueError("create_trial: a trial is created PENDING or finished; set_state starts a run")
        with self._locked():
            self._replay()
            trial_id = max(self._records, default=-1) + 1
            spec = replace(spec, trial_id=trial_id)
            entry: dict[str, Any] = {"op": "create", "trial_id": trial_id, "spec": config.to_dict(spec)}
            if state is not TrialState.PENDING:
                entry["state"] = state.name
            if notes:
                entry["notes"] = notes
            self._append(entry)
        return self._records[trial_id]

    def add_notes(self, trial_id: int, notes: dict[str, Any]) -> TrialRecord:
        """Merge notes into a trial's without changing its state (not counted as an attempt)."""
        self._writable()
        with self._locked():
            self._replay()
            if trial_id not in self._records:
                raise KeyError(f"no trial {trial_id} in {self.path}")
            self._append({"op": "notes", "trial_id": trial_id, "notes": notes})
        return self._records[trial_id]

    def set_state(
        self,
        trial_id: int,
        state: TrialState,
        result: TrialResult | None = None,
        notes: dict[str, Any] | None = None,
    ) -> TrialRecord:
        self._writable()
        with self._locked():
            self._replay()
            if trial_id not in self._records:
                raise KeyError(f"no trial {trial_id} in {self.path}")
            entry: dict[str, Any] = {"op": "state", "trial_id": trial_id, "state": state.name}
            if result is not None:
                entry["result"] = config.to_dict(result)
            if notes:
                entry["notes"] = notes
            self._append(entry)
        return self._records[trial_id]

    def release_run(self, trial_id: int, why: str) -> TrialRecord:
        """A RUNNING trial whose run the search itself cancelled (Ctrl-C, SIGTERM) goes back to
        PENDING, with `why` as its `interrupted` note, in one line marked `"cancelled": true`: the
        run is not counted against its retries (`TrialRecord.runs_counted`), and the trial is not
        failed. A trial that is not RUNNING is left as it is."""
        self._writable()
        with self._locked():
            self._replay()
            if trial_id not in self._records:
                raise KeyError(f"no trial {trial_id} in {self.path}")
            if self._records[trial_id].state is TrialState.RUNNING:
                self._append({"op": "state", "trial_id": trial_id, "state": TrialState.PENDING.name,
                              "cancelled": True, "notes": {"interrupted": why}})
        return self._records[trial_id]

    def heartbeat(self, trial_id: int) -> None:
        self._writable()
        with self._locked():
            self._replay()
            self._append({"op": "heartbeat", "trial_id": trial_id})

    def fail_stale(self, timeout_s: float) -> list[int]:
        """Mark RUNNING trials without a heartbeat for timeout_s as FAILED; return their ids."""
        self._writable()
        now = self._clock()
        failed = []
        with self._locked():
            self._replay()
            for record in list(self._records.values()):
                if record.state != TrialState.RUNNING:
                    continue
                last_alive = max(record.heartbeat_at_s, record.updated_at_s)
                if now - last_alive > timeout_s:
                    error = f"worker stopped heartbeating for {now - last_alive:.0f}s (stale)"
                    result = TrialResult(trial_id=record.trial_id, state=TrialState.FAILED, error=error)
                    self._append(
                        {
                            "op": "state",
                            "trial_id": record.trial_id,
                            "state": TrialState.FAILED.name,
                            "result": config.to_dict(result),
                        }
                    )
                    failed.append(record.trial_id)
        return failed

    # ---- journal mechanics ---------------------------------------------------------------------
    def _locked(self) -> _FileLock:
        return _FileLock(self.root / (JOURNAL_FILE + ".lock"), shared=self.read_only)

    def _writable(self) -> None:
        if self.read_only:
            raise PermissionError(f"{self.path}: opened read-only (JournalStore(read_only=True)); nothing is written")

    def _append(self, entry: dict[str, Any]) -> None:
        entry["time_s"] = self._clock()
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        with open(self.path, "r+b") as fh:
            fh.seek(self._valid_bytes)
            fh.truncate()  # drop a torn tail left by a killed writer
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self._apply(entry, line_no=self._valid_lines + 1)
        self._valid_bytes += len(line)
        self._valid_lines += 1

    def _replay(self) -> None:
        """Apply the lines appended since the last replay (by this or another process)."""
        with open(self.path, "rb") as fh:
            fh.seek(self._valid_bytes)
            tail = fh.read()
        for raw in tail.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break  # torn last line: the writer died mid-append; ignored, cut off on next append
            line_no = self._valid_lines + 1
            try:
                entry = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise self._error(line_no, f"not a JSON line ({err}): {raw[:80]!r}") from err
            self._apply(entry, line_no=line_no)
            self._valid_bytes += len(raw)
            self._valid_lines += 1

    def _error(self, line_no: int, what: str) -> JournalError:
        return JournalError(
            f"{self.path}: line {line_no}: {what}; the journal is damaged (a torn last line from a kill "
            f"is ignored, any other bad line is not): repair or remove that line, or start a new search"
        )

    def _state_of(self, name: Any, line_no: int) -> TrialState:
        if not isinstance(name, str) or name not in TrialState.__members__:
            raise self._error(line_no, f"unknown trial state {name!r} (known: {', '.join(TrialState.__members__)})")
        return TrialState[name]

    def _apply(self, entry: Any, line_no: int) -> None:
        if not isinstance(entry, dict):
            raise self._error(line_no, f"expected a JSON object, got {type(entry).__name__}")
        op, trial_id, now = entry.get("op"), entry.get("trial_id"), entry.get("time_s", 0.0)
        if op not in OPS:
            raise self._error(line_no, f"unknown journal op {op!r} (known: {', '.join(OPS)})")
        if isinstance(trial_id, bool) or not isinstance(trial_id, int) or trial_id < 0:
            raise self._error(line_no, f"trial_id must be a non-negative integer, got {trial_id!r}")
        if isinstance(now, bool) or not isinstance(now, (int, float)):
            raise self._error(line_no, f"time_s must be a number, got {now!r}")
        now = float(now)
        notes = entry.get("notes", {})
        if not isinstance(notes, dict):
            raise self._error(line_no, f"notes must be a mapping, got {notes!r}")
        origin = f"{self.path}: line {line_no}"
        if op == "create":
            if trial_id in self._records:
                raise self._error(line_no, f"trial {trial_id} is created a second time")
            if not isinstance(entry.get("spec"), dict):
                raise self._error(line_no, f"create of trial {trial_id} without a spec")
            try:
                spec = config.build(TrialSpec, entry["spec"], origin=origin)
            except config.ConfigError as err:
                raise JournalError(f"{origin}: invalid trial spec: {'; '.join(err.problems)}") from err
            state = self._state_of(entry.get("state", TrialState.PENDING.name), line_no)
            if state is TrialState.RUNNING:
                raise self._error(line_no, f"create of trial {trial_id} as RUNNING (a run is set RUNNING by a state line)")
            self._records[trial_id] = TrialRecord(spec=spec, state=state, created_at_s=now, updated_at_s=now,
                                                  notes=dict(notes))
            return
        record = self._records.get(trial_id)
        if record is None:
            raise self._error(line_no, f"{op} for unknown trial {trial_id} (no create line before it)")
        if op == "heartbeat":
            self._records[trial_id] = replace(record, heartbeat_at_s=now)
            return
        if op == "notes":
            self._records[trial_id] = replace(record, notes={**record.notes, **notes})
            return
        state = self._state_of(entry.get("state"), line_no)
        result = record.result
        if "result" in entry:
            if not isinstance(entry["result"], dict):
                raise self._error(line_no, f"result must be a mapping, got {entry['result']!r}")
            try:
                result = config.build(TrialResult, entry["result"], origin=origin)
            except config.ConfigError as err:
                raise JournalError(f"{origin}: invalid trial result: {'; '.join(err.problems)}") from err
        rung_attempts, rung_cancelled = record.rung_attempts, record.rung_cancelled
        cancelled = entry.get("cancelled", False)
        if not isinstance(cancelled, bool):
            raise self._error(line_no, f"cancelled must be true or false, got {cancelled!r}")
        if cancelled and (state is not TrialState.PENDING or record.state is not TrialState.RUNNING):
            raise self._error(line_no, f"a cancelled run of trial {trial_id} must take it from RUNNING to PENDING "
                                       f"(it was {record.state.name}, this line says {state.name})")
        if state == TrialState.RUNNING or cancelled:
            rung = notes.get("rung", record.notes.get("rung", 0)) if not cancelled else record.notes.get("rung", 0)
            rung = rung if isinstance(rung, int) and not isinstance(rung, bool) else 0
            if cancelled:
                rung_cancelled = {**rung_cancelled, rung: rung_cancelled.get(rung, 0) + 1}
            else:
                rung_attempts = {**rung_attempts, rung: rung_attempts.get(rung, 0) + 1}
        self._records[trial_id] = replace(
            record,
            state=state,
            result=result,
            updated_at_s=now,
            attempts=record.attempts + (state == TrialState.RUNNING),
            rung_attempts=rung_attempts,
            rung_cancelled=rung_cancelled,
            notes={**record.notes, **notes},
        )


class _FileLock:
    """An exclusive flock on a side file: serializes writers across processes and threads.

    shared=True (a read-only store): a shared flock on the side file if it exists and can be
    opened for reading, so a reader does not see a writer's half-applied append; never created.
    Without one a reader still sees only whole lines (a torn tail is skipped by the replay)."""

    def __init__(self, path: Path, shared: bool = False):
        self.path = path
        self.shared = shared
        self._fd: int | None = None

    def __enter__(self) -> _FileLock:
        if self.shared:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except OSError:
                return self
            fcntl.flock(self._fd, fcntl.LOCK_SH)
            return self
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is None:
            return
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
