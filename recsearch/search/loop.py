"""The search loop: `recsearch search --config configs/search/<name>.yaml [--out DIR] [key=value ...]`
and `recsearch search --resume DIR`.

    controller.propose -> model tables -> placement for the target topology -> memory check
      -> estimated step cost -> runner.submit (lowest fidelity first) -> result.json
      -> reward (AUC vs the latency / step-cost budget) -> successive halving -> controller.observe

Candidates whose tables do not fit the topology (or whose estimated step cost is over a step-cost
budget) are never trained: they are recorded PRUNED with the reason, the controller is given a
penalty reward, and they are counted. The reference config (the base train config as given, the
hand-tuned model) is trained once first: it is the human baseline and, by default, sets the
latency budget.

Everything lives in the search directory, so a search killed at any instant resumes where it was:

    search.yaml      the resolved config (written once; --resume reads it back)
    journal.jsonl    every trial, its state, result and notes (recsearch.search.store)
    controller.pt    the controller's state, rewritten after every proposal and observation
    trials/<id>/     the trial's `recsearch train` output: trial.yaml (its exact config),
                     placement.json, result.json, tb/ events, train.log, progress.json
                     (what the stall detector watches); lower rungs' runs
                     are kept in rung_<k>/, failed attempts in attempt_<n>/

A runner that raises is one trial's problem, never the search's: a submit that raises (no process
could be started, the scheduler refused the job, remote storage failed) fails that trial with the
error; a poll that raises (sacct or the API server unreachable a moment) is asked again with
backoff (`PollRetry`: 6 tries in a row over 135 s by default) before that trial is failed and its
job cancelled. Only Ctrl-C, SIGTERM (taken the same way: the running trials are cancelled, exit
143 instead of 130) and errors of the search itself end it.

On resume: the journal is replayed; a torchx job a dead search left behind (its handle is the
trial's `app_handle` note) is cancelled first, so it does not write into the trial's directory
beside its retry; trials still RUNNING in the journal were running when the search was killed:
they are failed saying so and retried (`runner.retries` times at the rung they were running; a
run the search cancelled itself on Ctrl-C or SIGTERM was journaled back to PENDING, uncounted,
and simply runs again); a search.yaml edited in a key the finished trials were judged by (see
`settings.RESUME_CHANGEABLE`) is refused against search.started.yaml; finished trials are
never run again; the controller is reloaded from controller.pt (finished trials it had not yet
observed are fed to it), or, when there is none, a fresh controller is fed every finished trial.
A damaged journal or controller.pt, a lost journal beside earlier trials, or a directory that is
not a search is refused with the file (and line) at fault, never silently restarted.

Every problem with the settings, the base train config, the data and the space is reported before
the search directory is created; the only threads started here (the heartbeat) are joined before
`Search.run` returns, and no trial it started outlives it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from recsearch import config, logs, remote
from recsearch.signals import interrupt_exit_code, interrupt_name, interrupts_ignored, sigterm_as_interrupt
from recsearch.search import controllers as ctl
from recsearch.search.asha import Status, SuccessiveHalving
from recsearch.search.checks import Check, Checker, preflight_problems, reference_spec, step_cost_budget_ms
from recsearch.search.objective import judged_latency_note, latency_for_budget, over_cost_budget, reward
from recsearch.search.pareto import pareto_front
from recsearch.search.runners import (
    LOG_FILE,
    TRIAL_CONFIG,
    Handle,
    TrialRunner,
    make_runner,
    result_notes,
)
from recsearch.search.results import describe, fmt, is_reference
from recsearch.search.settings import Resolved, load_search_config, resume_change_problems, resume_changes
from recsearch.search.store import JOURNAL_FILE, JournalError, JournalStore, TrialRecord
from recsearch.train.config import LatencyReference, TrainConfig
from recsearch.train.progress import last_activity_s
from recsearch.types import TrialResult, TrialSpec, TrialState

SEARCH_CONFIG = "search.yaml"
# search.yaml as the search started, never edited: --resume refuses changes that would judge the
# rest of the search by other rules than its finished trials (settings.resume_changes)
STARTED_CONFIG = "search.started.yaml"
CONTROLLER_FILE = "controller.pt"
TRIALS_DIR = "trials"
PLACEMENT_FILE = "placement.json"
LOCK_FILE = "search.lock"
DEVICE_LOCK_FILE = "device.lock"  # trials on this host: training shared, latency timing exclusive
FINAL = (TrialState.COMPLETE, TrialState.FAILED, TrialState.PRUNED)
NOTHING_TRAINED_EXIT = 1  # the search ended without one candidate trained to a result


@dataclass(frozen=True)
class PollRetry:
    """How long a trial whose poll raises (a transient scheduler error: sacct or the Kubernetes
    API unreachable for a moment) is asked again before it is FAILED with the error: `attempts`
    polls in a row that raise, the first retry after first_delay_s, each next one after twice
    the delay, at most max_delay_s. The default: 6 polls, retried after 5, 10, 20, 40 and 60 s
    (135 s of errors). A poll that succeeds in between starts the count again."""

    attempts: int = 6
    first_delay_s: float = 5.0
    max_delay_s: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.first_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError(f"PollRetry needs attempts >= 1 and delays >= 0, got {self}")

    def delay_s(self, failures: int) -> float:
        """The wait after the failures-th poll error in a row."""
        return min(self.max_delay_s, self.first_delay_s * 2 ** (failures - 1))


# ---- the heartbeat thread ------------------------------------------------------------------------
class Heartbeat:
    """Journals a heartbeat for every trial whose run is under way, every interval_s.

    The rule for every thread recsearch starts: it is joined before its owner returns, or it owns
    nothing that holds tensors. This one is both. Its body is a module function that gets only the
    store, the set of trial ids and their lock, never the Search (whose controller holds tensors: a
    bound method as the target kept them alive on a daemon thread past interpreter shutdown, and
    freeing them there aborted the process, "terminate called without an active exception"); and
    `running()` is a context manager that stops and joins the thread on every way out."""

    def __init__(self, store: JournalStore, interval_s: float):
        self.store = store
        self.interval_s = interval_s
        self._ids: set[int] = set()
        self._lock = threading.Lock()

    def add(self, trial_id: int) -> None:
        with self._lock:
            self._ids.add(trial_id)

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self._ids.discard(trial_id)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        stop = threading.Event()
        thread = threading.Thread(target=_beat, args=(self.store, self.interval_s, self._ids, self._lock, stop),
                                  name="recsearch-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def _beat(store: JournalStore, interval_s: float, ids: set[int], lock: threading.Lock, stop: threading.Event) -> None:
    while not stop.wait(interval_s):
        with lock:
            beating = sorted(ids)
        for trial_id in beating:
            if stop.is_set():
                return
            try:
                store.heartbeat(trial_id)
            except (OSError, KeyError, ValueError):
                pass  # a heartbeat is advisory; the loop reports real journal problems


# ---- the search ----------------------------------------------------------------------------------
class Search:
    """One search directory: its store, controller, runner, scheduler and the loop over them."""

    def __init__(self, res: Resolved, search_dir: Path, runner: TrialRunner | None = None, echo=None,
                 checker: Checker | None = None, poll_retry: PollRetry = PollRetry()):
        self.res = res
        self.cfg = res.cfg
        self.dir = Path(search_dir)
        self.echo = echo or logs.get("search").info  # progress lines (recsearch.logs)
        self.store = JournalStore(self.dir)
        self.topology = self.cfg.topology.topology()
        self._owns_runner = runner is None  # a runner made here is closed by run()
        self.runner = runner or make_runner(
            self.cfg.runner.kind, self.cfg.objective.serving_batch, self.cfg.runner.threads or None,
            self.cfg.runner.torchx, concurrency=self.cfg.runner.concurrency,
        )
        f = self.cfg.fidelity
        self.sched = SuccessiveHalving(tuple(f.train_rows), f.eta, f.bracket_size)
        self.controller = ctl.make_controller(self.cfg.controller, res.space, self.cfg.seed)
        self.checker = checker or Checker(res.tables, self.topology, self.cfg.placer, self.cfg.seed)
        self.running: dict[int, tuple[Handle, int]] = {}  # trial -> (handle, rung)
        # while the reference runs beside candidates: candidate runs that ended before it, recorded
        # once its result (the latency budget their reward needs) is known; None otherwise
        self._held: dict[int, tuple[Handle, int]] | None = None
        self._told_wait = False  # said why proposals wait for the reference (_proposals_wait)
        self.poll_retry = poll_retry
        # trial -> (poll errors in a row, when to poll it again): trials whose poll raised
        self._poll_errors: dict[int, tuple[int, float]] = {}
        self.budget_ms: float | None = self.cfg.objective.budget_ms
        # the reference trial's p50 over the fresh reference model timed in its rounds
        self.reference_ratio: float | None = None
        self.started_s = time.time()
        self.proposals_closed = False
        self._tb_warned = False
        self.heartbeat = Heartbeat(self.store, self.cfg.heartbeat_s)  # trials whose run is under way

    # ---- setup and resume ---------------------------------------------------------------------
    def reference_spec(self) -> TrialSpec:
        return reference_spec(self.res)

    def prepare(self) -> None:
        started = self._started_config()
        problems = preflight_problems(self.res, self.checker, config.Origins.of(self.dir / SEARCH_CONFIG).locate)
        if problems:
            raise config.ConfigError(problems)
        if self.cfg.objective.metric == "step_cost" and self.budget_ms is None:
            self.budget_ms = step_cost_budget_ms(self.res, self.checker)
        self._restore()
        if started is None:  # a new search, or one started before this copy was kept
            _write_atomically(self.dir / STARTED_CONFIG, (
                f"# Written by recsearch search: {SEARCH_CONFIG} as this search started. Do not edit: --resume "
                f"compares {SEARCH_CONFIG} with it and refuses changes that finished trials were not judged by.\n"
                + yaml.safe_dump(self.res.resolved_dict(self.dir), sort_keys=False)))

    def _started_config(self) -> dict[str, Any] | None:
        """The config as the search started (STARTED_CONFIG; None: not written yet), after checking
        that search.yaml changes none of its keys that --resume must keep (a ConfigError naming each
        key, its old and new value, and what may change), before anything is loaded or written."""
        path = self.dir / STARTED_CONFIG
        if not path.exists():
            return None
        started = config.load_yaml(path)
        # a budget no candidate's reward was computed with yet (the failed reference's advice)
        rewarded = any(not is_reference(r) and not r.notes.get("rejected") and r.notes.get("reward") is not None
                       for r in self.store.trials())
        changes = resume_changes(started, yaml.safe_load(yaml.safe_dump(self.res.resolved_dict(self.dir))),
                                 () if rewarded else ("objective.budget_ms",))
        if changes:
            raise config.ConfigError(resume_change_problems(changes, self.dir / SEARCH_CONFIG, path))
        return started

    def _restore(self) -> None:
        """Rebuild the scheduler and controller from the journal (a no-op for a new search)."""
        records = self.store.trials()
        controller_path = self.dir / CONTROLLER_FILE
        fresh_controller = not controller_path.exists()
        if not fresh_controller:
            ctl.load_state(self.controller, controller_path)
        for rec in records:
            if is_reference(rec) or rec.notes.get("rejected"):
                continue
            self.sched.add(rec.trial_id)
            for rung, entry in sorted(rec.notes.get("rungs", {}).items(), key=lambda kv: int(kv[0])):
                self.sched.record(rec.trial_id, int(rung), entry.get("score"))
        # Finished trials the controller has not seen: all of them for a fresh controller, else
        # those finished after its state was last saved.
        for rec in records:
            if is_reference(rec) or rec.state not in FINAL:
                continue
            if fresh_controller or not rec.notes.get("observed"):
                score = None if rec.notes.get("rejected") or rec.state is TrialState.FAILED else rec.notes.get("reward")
                self._observe(rec.trial_id, rec.spec, score)
        if fresh_controller and not records and self.cfg.warm_start:
            self._warm_start(self.cfg.warm_start)
        orphans = [r for r in records if r.state is TrialState.RUNNING]
        for rec in orphans:
            self._cancel_orphan_job(rec)
        for rec in orphans:  # this process holds the directory lock: their search was killed
            self._retry_or_fail(self._fail_orphan(rec))
        self._revive_reference()
        ref = next((r for r in self.store.trials() if is_reference(r)), None)
        if ref and ref.state is TrialState.COMPLETE and self._budget_awaits_reference():
            self.budget_ms = ref.result.latency_p50_ms
            self.reference_ratio = ref.result.latency_ratio
        if len(self.sched.trials()) >= self.cfg.trials:
            self._close_proposals()
        for bracket in {self.sched.bracket_of(t) for t in self.sched.trials()}:
            self._reconcile(bracket)
        if records:
            done = sum(r.state in FINAL for r in records)
            self.echo(f"[search] resumed {self.dir}: {len(records)} trials in the journal, {done} finished, "
                      f"{len(orphans)} were running when the search died")

    def _cancel_orphan_job(self, rec: TrialRecord) -> None:
        """A trial that was running when the search died may have a job that outlived it (a torchx
        job on a cluster: its handle is the `app_handle` note). Cancel it before the trial runs
        again, so two runs never write into its directory; best effort, and said either way."""
        app_handle = rec.notes.get("app_handle")
        if not app_handle:
            return
        cancel = getattr(self.runner, "cancel_orphan", None)
        if cancel is None:
            outcome = (f"not cancelled: the {type(self.runner).__name__} cannot cancel a job by its handle; "
                       f"if it still runs, end it yourself")
        else:
            try:
                outcome = cancel(str(app_handle))
            except Exception as err:  # noqa: BLE001 - best effort: the retry goes ahead, and the user is told
                outcome = (f"could not cancel it ({type(err).__name__}: {err}); if it still runs it writes "
                           f"into {self.dir / TRIALS_DIR / str(rec.trial_id)} beside the retry: end it yourself")
        self.echo(f"[search] trial {rec.trial_id:>3}: job {app_handle} of the search that died: {outcome}")
        self.store.add_notes(rec.trial_id, {"app_handle": None, "orphan_job": f"{app_handle}: {outcome}"})

    def _warm_start(self, storage_file: str) -> None:
        """Feed a study's completed trials to the new controller (recsearch.search.optuna_io); they
        are observations, not trials of this search: its journal and budget do not count them."""
        from recsearch.search import optuna_io

        warm = optuna_io.warm_start(storage_file, self.res.space)
        for spec, score in warm.observations:
            self.controller.observe(spec, score)
        ctl.save_state(self.controller, self.dir / CONTROLLER_FILE)
        skipped = f"; {len(warm.skipped)} skipped ({warm.skipped[0]}{', ...' if len(warm.skipped) > 1 else ''})" if warm.skipped else ""
        self.echo(f"[search] warm start: the controller observed {len(warm.observations)} trials of {storage_file}{skipped}")

    def _fail_orphan(self, rec: TrialRecord) -> TrialRecord:
        """A trial found RUNNING on resume: its search was killed while it ran (a search that is
        interrupted or terminated releases its runs, `JournalStore.release_run`), so that run
        counts as an attempt. It is FAILED saying so, and whether runner.retries allows another;
        `died_with_search` notes the rung (a reference failed so is run again once the retries
        are raised: `_revive_reference`)."""
        rung = int(rec.notes.get("rung", 0))
        tries, retries = rec.runs_counted(rung), self.cfg.runner.retries
        quiet_s = time.time() - max(rec.heartbeat_at_s, rec.updated_at_s)
        error = (f"the search was killed while it ran (its run {tries} at rung {rung}; last heartbeat "
                 f"{quiet_s:.0f} s before this --resume)")
        if tries > retries:
            error += (f"; runner.retries {retries} used up, so it is not run again (a trial that kills its "
                      f"machine must not loop): raise runner.retries in {self.dir / SEARCH_CONFIG} and "
                      f"--resume to run it again")
        result = TrialResult(rec.trial_id, TrialState.FAILED, error=error)
        return self.store.set_state(rec.trial_id, TrialState.FAILED, result=result, notes={"died_with_search": rung})

    def _retry_or_fail(self, rec: TrialRecord) -> None:
        """A trial whose run died with the previous search process (now FAILED by `_fail_orphan`):
        within the retry budget it is set PENDING and runs again; otherwise its failure stands.
        Retries count per rung: a promoted trial's run at rung k is its first attempt there,
        however many runs its lower rungs took; runs the search itself cancelled (Ctrl-C,
        SIGTERM) are not counted."""
        rung = int(rec.notes.get("rung", 0))
        tries = rec.runs_counted(rung)
        if tries <= self.cfg.runner.retries:
            self.store.set_state(rec.trial_id, TrialState.PENDING,
                                 notes={"retry": f"attempt {tries} at rung {rung} died with the search process "
                                                 f"(killed while it ran; runner.retries {self.cfg.runner.retries})"})
            return
        if not is_reference(rec):
            self._record_rung(rec.trial_id, rung, rec.result, None, {})

    def _revive_reference(self) -> None:
        """A FAILED reference blocks a search whose budget is its latency. One that failed on its
        own (a submission the scheduler refused, a crash: the search said "fix it") runs again on
        every --resume, the user's or a requeue's, which is how a fix is tried; one FAILED because
        its search was killed too often (`_fail_orphan`: it may kill its machine) runs again only
        once runner.retries is raised past its counted runs."""
        ref = next((r for r in self.store.trials() if is_reference(r)), None)
        if ref is None or ref.state is not TrialState.FAILED or not self._budget_awaits_reference():
            return
        if ref.notes.get("died_with_search") is None:
            error = ref.result.error if ref.result else "unknown"
            self.store.set_state(ref.trial_id, TrialState.PENDING, notes={
                "retry": f"the reference failed ({error[:300]}); it sets the latency budget, so --resume runs it again"})
            self.echo(f"[search] the reference (trial {ref.trial_id}) failed before; it sets the latency budget: "
                      "running it again")
            return
        rung = int(ref.notes["died_with_search"])
        tries = ref.runs_counted(rung)
        if tries <= self.cfg.runner.retries:
            self.store.set_state(ref.trial_id, TrialState.PENDING, notes={
                "retry": f"{tries} runs at rung {rung} died with the search process; runner.retries is now "
                         f"{self.cfg.runner.retries}"})

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> int:
        """The search to its budget; 0 when done (or a dryrun printed), 1 when it ended without
        one candidate trained to a result (every one rejected or failed: the summary says why),
        130 when interrupted (Ctrl-C), 143 when terminated (SIGTERM). Whatever way it ends, the
        heartbeat thread is joined and no trial it started is left running (a crash, Ctrl-C or
        SIGTERM cancels them; --resume retries them)."""
        with sigterm_as_interrupt(take_over=True):  # the search owns its process
            try:
                self.prepare()
                self.echo(f"[search] space: {self.res.space.describe()}")
                with self.heartbeat.running():
                    try:
                        self._loop()
                    except _DryRun:
                        self.echo("[search] dryrun: printed the first trial's request; nothing ran "
                                  "(drop runner.torchx.dryrun and use a new --out to run the search)")
                        return 0
                    except KeyboardInterrupt as err:
                        self._cancel_running(release=err)
                        return self._interrupted(err)
                    except BaseException:
                        self._cancel_running()
                        raise
            except KeyboardInterrupt as err:  # before the loop (nothing running yet) or leaving it
                return self._interrupted(err)
            finally:
                close = getattr(self.runner, "close", None)
                if self._owns_runner and close is not None:
                    close()
        counts = self.summary()["counts"]
        if counts["complete"] + counts["pruned"] == 0:
            self.echo(f"[search] no candidate was trained to a result: {self._why_nothing_trained()}")
            return NOTHING_TRAINED_EXIT
        return 0

    def _interrupted(self, err: KeyboardInterrupt) -> int:
        self.echo(f"[search] {interrupt_name(err)}; resume with: recsearch search --resume {self.dir}")
        return interrupt_exit_code(err)

    def _why_nothing_trained(self) -> str:
        """What became of the candidates, with the first reason of each kind."""
        cands = [r for r in self.store.trials() if not is_reference(r)]
        if not cands:
            return "the controller proposed none"
        rejected = [r for r in cands if r.notes.get("rejected")]
        failed = [r for r in cands if not r.notes.get("rejected") and r.state is TrialState.FAILED]
        parts = []
        if rejected:
            parts.append(f"{len(rejected)} rejected before training (first: {str(rejected[0].notes['rejected'])[:300]})")
        if failed:
            error = failed[0].result.error if failed[0].result and failed[0].result.error else "no error recorded"
            parts.append(f"{len(failed)} failed (first: trial {failed[0].trial_id}: {error[:300]})")
        others = len(cands) - len(rejected) - len(failed)
        if others:
            parts.append(f"{others} without a result")
        return "; ".join(parts)

    def _loop(self) -> None:
        if self.cfg.reference:
            self._run_reference()
        while True:
            self._fill_slots()
            if not self.running:
                if not self.proposals_closed:
                    self._close_proposals()
                    continue
                if not self.sched.runnable():
                    break
                continue
            self._wait_one()

    def _cancel_running(self, release: KeyboardInterrupt | None = None) -> None:
        """Cancel every running trial. `release`: the search was interrupted (Ctrl-C, SIGTERM), so
        each run cancelled for sure is journaled back to PENDING as not counted (`_release`; a
        second Ctrl-C can still stop a cancel that hangs, not a journal line). A run whose cancel
        failed may still be running (a torchx job the scheduler did not hear about) and stays
        RUNNING: --resume cancels its job by its handle first and counts it; so does an error of
        the search itself."""
        for trial_id, (handle, rung) in list(self.running.items()):
            if self._cancel_quietly(handle) and release is not None:
                self._release(trial_id, rung, release, "was cancelled")

    def _release(self, trial_id: int, rung: int, err: KeyboardInterrupt, what: str) -> None:
        """Journal that the search ended this trial's run itself: back to PENDING, no attempt used
        (a no-op for a trial whose result is already journaled). Signals wait while the line is
        written: another Ctrl-C or SIGTERM must not cut it short."""
        why = (f"its run at rung {rung} {what} by the search ({interrupt_name(err)}); not counted "
               f"against runner.retries, it runs again on --resume")
        try:
            with interrupts_ignored():
                self.store.release_run(trial_id, why)
        except (OSError, KeyError, JournalError) as journal_err:  # then --resume counts it as killed
            self.echo(f"[search] warning: could not journal trial {trial_id}'s cancelled run "
                      f"({type(journal_err).__name__}: {journal_err}); --resume counts it as an attempt")

    def _run_reference(self) -> None:
        refs = [r for r in self.store.trials() if is_reference(r)]
        held: dict[int, tuple[Handle, int]] = {}  # candidate runs that ended before the reference
        if refs and refs[0].state in FINAL:
            rec = refs[0]
        else:
            # one journal line: no kill can leave the reference without its note
            rec = refs[0] if refs else self.store.create_trial(self.reference_spec(), notes={"reference": True})
            if not rec.notes.get("reference"):  # an older search killed between its two lines
                rec = self.store.add_notes(rec.trial_id, {"reference": True})
            self._submit(rec.trial_id, rec.spec, len(self.cfg.fidelity.train_rows) - 1)
            held = self._run_beside(rec.trial_id)
            rec = self.store.get(rec.trial_id)
        unrecorded = dict(held)
        try:
            self._take_budget_from(rec)
            for trial_id in sorted(held):  # held only while the budget awaited the reference: known now
                self._finish(trial_id, *held[trial_id])
                del unrecorded[trial_id]
        except KeyboardInterrupt as err:  # the ones not recorded yet run again, uncounted
            self._release_held(unrecorded, err)
            raise

    def _take_budget_from(self, rec: TrialRecord) -> None:
        """The latency budget, where the reference's latency is it; RuntimeError where the
        reference gives none (the held runs stay RUNNING in the journal: --resume reruns them)."""
        if rec.state is not TrialState.COMPLETE:
            error = rec.result.error if rec.result else "unknown"
            if self._budget_awaits_reference():
                raise RuntimeError(f"the reference config failed ({error}); it sets the latency budget: fix "
                                   f"the cause (runner.* in {self.dir / SEARCH_CONFIG} may be edited) and "
                                   f"`recsearch search --resume {self.dir}` runs it again, or set objective.budget_ms there")
        elif self._budget_awaits_reference():
            if rec.result.latency_p50_ms is None:  # a config check should have refused this search
                raise RuntimeError(f"the reference config (trial {rec.trial_id}) completed without a latency at batch "
                                   f"{self.cfg.objective.serving_batch} (its result.json's latency_setup.notes say why); "
                                   "it sets the latency budget: set objective.budget_ms")
            self.budget_ms = rec.result.latency_p50_ms
            self.reference_ratio = rec.result.latency_ratio
            self.echo(f"[search] latency budget: {self.budget_ms:.3f} ms at batch "
                      f"{self.cfg.objective.serving_batch} (the reference config's p50)")

    def _release_held(self, held: dict[int, tuple[Handle, int]], err: KeyboardInterrupt) -> None:
        for trial_id, (_, rung) in sorted(held.items()):
            self._release(trial_id, rung, err, "ended unrecorded (the reference had not finished) and was dropped")

    def _run_beside(self, reference_id: int) -> dict[int, tuple[Handle, int]]:
        """Wait for the reference's run, with candidates in the other slots meanwhile: their
        proposals and checks do not need the reference's result (a step_cost budget is an
        estimate known from the start). The reference trains at the top rung, several rung-0 runs
        long: without this, concurrency - 1 slots idled through it.

        Where the budget is the reference's latency, their rewards need its result: a candidate
        run that ends first is held, not recorded, and returned for recording once the budget is
        known (held runs are RUNNING in the journal: a search killed now reruns them), and a
        controller that learns proposes no more candidates meanwhile than `_proposals_wait`
        allows. Otherwise (objective.budget_ms set, metric step_cost or none) nothing waits for
        the reference: runs are recorded as they end, and brackets decide and promote as usual."""
        self._held = {} if self._budget_awaits_reference() else None
        try:
            while reference_id in self.running:
                self._fill_slots()
                self._wait_one()
            return self._held or {}
        except KeyboardInterrupt as err:  # held runs ended, unrecorded: they run again, uncounted
            self._release_held(self._held or {}, err)
            raise
        finally:
            self._held = None

    def _budget_awaits_reference(self) -> bool:
        """Whether a candidate's reward needs the reference's result: the budget is its latency."""
        return self.cfg.objective.metric == "latency" and self.budget_ms is None

    def _proposals_wait(self) -> bool:
        """While candidate results are held (`_run_beside`), every proposal is blind to them: a
        controller that learns from its observations (all but random) then proposes at most
        max(bracket size, concurrency) candidates, what the search proposes blind without the
        overlap too (its first fill of the slots; the first bracket, whose first decision is the
        first feedback). Unbounded, concurrency - 1 slots through a reference about
        eta ** (rungs - 1) rung-0 runs long proposed that many times over: in configs/search/
        kaggle_cluster.yaml 7 x 9, its whole budget of 60, before the controller saw one result."""
        if self._held is None or self.cfg.controller == "random":
            return False
        cap = max(self.sched.bracket_size, self.cfg.runner.concurrency)
        if len(self.sched.trials()) < cap:
            return False
        if not self._told_wait:
            self._told_wait = True
            self.echo(f"[search] {cap} candidates proposed while the reference trains: the {self.cfg.controller} "
                      f"controller proposes more once the reference's latency (the budget) scores their results")
        return True

    def _fill_slots(self) -> None:
        while len(self.running) < self.cfg.runner.concurrency:
            due = [(t, r) for t, r in self.sched.runnable() if t not in self.running and t not in (self._held or {})]
            if due:
                trial_id, rung = due[0]
                self._submit(trial_id, self.store.get(trial_id).spec, rung)
                continue
            if self.proposals_closed or self._proposals_wait() or not self._propose_one():
                return

    def _propose_one(self) -> bool:
        """Propose until one candidate is admitted (True) or proposals end (False)."""
        max_rejected = self.cfg.max_rejected or 10 * self.cfg.trials
        while True:
            if len(self.sched.trials()) >= self.cfg.trials:
                self._close_proposals()
                return False
            rejected = len([r for r in self.store.trials() if r.notes.get("rejected")])
            if rejected >= max_rejected:
                self.echo(f"[search] stopping proposals: {rejected} candidates rejected (max_rejected {max_rejected})")
                self._close_proposals()
                return False
            spec = self.controller.propose()
            if spec is None:
                self.echo("[search] the controller has nothing left to propose (space exhausted)")
                self._close_proposals()
                return False
            spec = replace(spec, train_rows=self.cfg.fidelity.train_rows[0])
            check = self.checker.check(spec)
            why = check.rejected
            if why is None and check.est_step_cost_ms is not None:
                why = over_cost_budget(self.cfg.objective, check.est_step_cost_ms, self.budget_ms)
            notes = _check_notes(check)
            if why is not None:  # created rejected, in one journal line: never trained, even after a kill
                rec = self.store.create_trial(spec, TrialState.PRUNED, notes={**notes, "rejected": why})
                self._observe(rec.trial_id, spec, None)
                self.echo(f"[search] trial {rec.trial_id:>3} rejected before training: {describe(spec)}: {why[:300]}"
                          f" ({rejected + 1} rejected so far)")
                self._log_tb(rec.trial_id)
                continue
            rec = self.store.create_trial(spec, notes=notes)
            # the bracket is informational (a resume rebuilds brackets from the order of the trials)
            bracket = self.sched.add(rec.trial_id)
            ctl.save_state(self.controller, self.dir / CONTROLLER_FILE)
            self._submit(rec.trial_id, rec.spec, 0, notes={"bracket": bracket})
            return True

    def _close_proposals(self) -> None:
        self.proposals_closed = True
        self.sched.close()
        for bracket in {self.sched.bracket_of(t) for t in self.sched.trials()}:
            self._reconcile(bracket)

    def _submit(self, trial_id: int, spec: TrialSpec, rung: int, notes: dict[str, Any] | None = None) -> None:
        """Start the trial's run at `rung` (notes: more for its RUNNING line). A runner that
        cannot start it fails the trial with its error; the search goes on."""
        rows = self.cfg.fidelity.train_rows[rung]
        spec = replace(spec, trial_id=trial_id, train_rows=rows)
        workdir = self.dir / TRIALS_DIR / str(trial_id)
        # placed once, when it was proposed (the journal's note); only the reference is placed here
        known = self.store.get(trial_id).notes
        _archive_previous(workdir, rung, promoted=str(rung - 1) in known.get("rungs", {}))
        workdir.mkdir(parents=True, exist_ok=True)
        placement = known.get("placement") or self.checker.check(spec).placement
        if placement:
            (workdir / PLACEMENT_FILE).write_text(json.dumps({"placement": placement}, indent=1) + "\n")
        trial = self.trial_config(spec, workdir, bool(placement), top_rung=rung == len(self.cfg.fidelity.train_rows) - 1,
                                measure_latency=self._earlier_latency(trial_id, rung) is None)
        (workdir / TRIAL_CONFIG).write_text(yaml.safe_dump(config.to_dict(trial), sort_keys=False))
        running = {"rung": rung, "train_rows": rows, **(notes or {})}
        if known.get("died_with_search") is not None:
            running["died_with_search"] = None  # that run's death is not this one's
        if known.get("app_handle"):
            running["app_handle"] = None  # an earlier run's job, not this one's
        self.store.set_state(trial_id, TrialState.RUNNING, notes=running)
        self.heartbeat.add(trial_id)
        try:
            handle = self.runner.submit(spec, workdir)  # in-process: returns when the run has ended
        except KeyboardInterrupt as err:  # the search's own Ctrl-C / SIGTERM as it started the run
            self.heartbeat.discard(trial_id)
            with interrupts_ignored():
                self._release(trial_id, rung, err, "was cancelled as it started")
            raise
        except Exception as err:  # noqa: BLE001 - this trial's failure, not the search's
            self.heartbeat.discard(trial_id)
            error = f"the {type(self.runner).__name__} could not start it: {type(err).__name__}: {err}"
            self._finish(trial_id, _failed_handle(trial_id, workdir, error), rung)
            return
        if "dryrun" in handle.info:  # torchx dryrun: show the job request; nothing runs
            self.store.set_state(trial_id, TrialState.PENDING, notes={"dryrun": True})
            self.echo(f"[search] dryrun: trial {trial_id}'s job request:\n{handle.info['dryrun']}")
            raise _DryRun()
        self.running[trial_id] = (handle, rung)
        if handle.info.get("app_handle") is not None:  # a job that may outlive this process: --resume cancels it
            self.store.add_notes(trial_id, {"app_handle": str(handle.info["app_handle"])})

    def trial_config(
        self, spec: TrialSpec, workdir: Path, placed: bool, top_rung: bool = True, measure_latency: bool = True,
    ) -> TrainConfig:
        """The exact `recsearch train` config of a trial: the base config with the candidate's
        architecture, hyperparameters, fidelity, placement and output directory. Below the top
        rung only the validation split is evaluated (the test split decides nothing there), and
        latency is timed at the serving batch only, once per trial: a promoted trial serves the
        same architecture, so its rung reuses the latency an earlier rung measured
        (`measure_latency=False`; `_finish` copies it in)."""
        base = self.res.base
        latency_metric = self.cfg.objective.metric == "latency"
        return replace(
            base,
            data_dir=str(Path(self.cfg.data_dir).resolve()),
            output_dir=str(workdir.resolve()),
            arch=spec.arch,
            hparams=spec.hparams,
            model_args={**base.model_args, **spec.model_args},  # a user model's searched decisions
            train_rows=spec.train_rows,
            tensorboard=True,
            tensorboard_hparams=False,  # the search's tensorboard/ holds the trial's one HParams entry
            resume_from=None,
            plan=str((workdir / PLACEMENT_FILE).resolve()) if placed else base.plan,
            eval_splits=base.eval_splits if top_rung else ("val",),
            device_memory_fraction=self.cfg.runner.memory_share(self.cfg.topology.compute_device) or base.device_memory_fraction,
            latency_batch_sizes=(self.cfg.objective.serving_batch,) if measure_latency else (),
            # Latency with the device to itself (trials on this host share one lock file) and the
            # reference config's model timed in the same rounds (recsearch.train.latency): the
            # built-in DLRM of the base arch, or a model of the user's own at the base model_args.
            device_lock=str((self.dir / DEVICE_LOCK_FILE).resolve())
            if latency_metric and self.cfg.runner.kind != "torchx" else base.device_lock,
            latency_reference=LatencyReference(
                arch=base.arch, embedding_precision=base.embedding_precision, dense_precision=base.dense_precision,
                model=base.model, model_args=dict(base.model_args),
            ) if latency_metric else base.latency_reference,
        )

    def _wait_one(self) -> None:
        """Block until at least one running trial ends (or runs out of time, then is killed);
        record every one that did."""
        while True:
            ended = [t for t, (h, _) in list(self.running.items()) if self._ended(t, h)]
            if ended:
                break
            timeout_s = self.cfg.runner.poll_s
            if self._poll_errors:  # wake for the next retry of a poll that raised
                next_try = min(at for _, at in self._poll_errors.values())
                timeout_s = max(0.0, min(timeout_s, next_try - time.time()))
            wait = getattr(self.runner, "wait", None)  # wakes as soon as a run ends, where it can
            if wait is None:
                time.sleep(timeout_s)
                continue
            try:
                wait([h for h, _ in self.running.values()], timeout_s)
            except Exception:  # noqa: BLE001 - a runner's wait is a shortcut: the next polls say what happened
                time.sleep(timeout_s)
        for trial_id in ended:
            handle, rung = self.running.pop(trial_id)
            self.heartbeat.discard(trial_id)
            if self._held is not None and not is_reference(self.store.get(trial_id)):
                self._held[trial_id] = (handle, rung)  # recorded when the reference is (_run_beside)
                continue
            try:
                self._finish(trial_id, handle, rung)
            except KeyboardInterrupt as err:
                if trial_id not in self.running:  # interrupted before its result was journaled (else a no-op)
                    self._release(trial_id, rung, err, "ended, and was interrupted while it was being recorded,")
                raise

    def _ended(self, trial_id: int, handle: Handle) -> bool:
        """Whether the trial's run is over (or timed out and was killed). A poll that raises is
        retried as `self.poll_retry` says; after its last try the trial is FAILED with the error
        and its run cancelled (best effort), and the other trials go on."""
        failures, retry_at = self._poll_errors.get(trial_id, (0, 0.0))
        if failures and time.time() < retry_at:
            return self._timed_out(handle)
        try:
            state = self.runner.poll(handle)
        except Exception as err:  # noqa: BLE001 - one trial's poll, retried, never the search's end
            failures += 1
            what = f"{type(err).__name__}: {err}"
            if failures >= self.poll_retry.attempts:
                self._poll_errors.pop(trial_id, None)
                self._cancel_quietly(handle)
                handle.fail(f"the {type(self.runner).__name__} could not poll it: {failures} errors in a row "
                            f"(runner poll retries exhausted), the last: {what}")
                return True
            delay_s = self.poll_retry.delay_s(failures)
            self._poll_errors[trial_id] = (failures, time.time() + delay_s)
            self.echo(f"[search] warning: polling trial {trial_id} failed ({what}); try {failures + 1} of "
                      f"{self.poll_retry.attempts} in {delay_s:g} s")
            return self._timed_out(handle)
        self._poll_errors.pop(trial_id, None)
        return state is not TrialState.RUNNING or self._timed_out(handle)

    def _cancel_quietly(self, handle: Handle) -> bool:
        """Cancel a run whose end the search decided (timeout, polls that kept failing, the search's
        own end); a cancel that raises is reported (False), and the others are still cancelled."""
        try:
            self.runner.cancel(handle)
        except Exception as err:  # noqa: BLE001 - the trial is failed either way
            self.echo(f"[search] warning: could not cancel trial {handle.trial_id}: {type(err).__name__}: {err}")
            return False
        return True

    def _timed_out(self, handle: Handle) -> bool:
        """Past runner.trial_timeout_s since it started, or no sign of work for runner.stall_timeout_s:
        kill it; it is then FAILED ("timed out", "stalled")."""
        if self._stalled(handle):
            return True
        limit = self.cfg.runner.trial_timeout_s
        if limit is None or handle.running_s < limit:
            return False
        self._cancel_quietly(handle)
        handle.expire(f"timed out: still running {handle.running_s:.0f} s after it started "
                      f"(runner.trial_timeout_s {limit:g}); killed")
        self.echo(f"[search] trial {handle.trial_id:>3} timed out after {limit:g} s (runner.trial_timeout_s); killed")
        return True

    def _stalled(self, handle: Handle) -> bool:
        """A local run (subprocess, pool) whose progress.json and train.log have not changed for
        runner.stall_timeout_s since it started is hung (a deadlocked collective, a wedged device, a
        data read that never returns): kill it. torchx jobs are left to trial_timeout_s and their
        scheduler (their files may live on another host; a queued job shows no work)."""
        limit = self.cfg.runner.stall_timeout_s
        if limit is None or self.cfg.runner.kind not in ("subprocess", "pool") or handle.started_at_s is None:
            return False
        # what was last seen of it: its files are looked at again only once that is limit old
        # (their times only move on), not on every poll of every running trial
        last_s = max(handle.started_at_s, handle.info.get("active_at_s", 0.0))
        if time.time() - last_s < limit:
            return False
        last_s = max(last_s, last_activity_s(handle.workdir, LOG_FILE) or 0.0)
        handle.info["active_at_s"] = last_s
        quiet_s = time.time() - last_s
        if quiet_s < limit:
            return False
        self._cancel_quietly(handle)
        handle.expire(f"stalled: no progress for {quiet_s:.0f} s (its progress.json and train.log unchanged; "
                      f"runner.stall_timeout_s {limit:g}); killed")
        self.echo(f"[search] trial {handle.trial_id:>3} stalled: no progress for {quiet_s:.0f} s "
                  "(runner.stall_timeout_s); killed")
        return True

    def _finish(self, trial_id: int, handle: Handle, rung: int) -> None:
        self._poll_errors.pop(trial_id, None)
        if "runner_error" in handle.info:  # the runner failed (submit, poll): that is the result
            result = TrialResult(trial_id, TrialState.FAILED, error=handle.info["runner_error"])
        else:
            try:
                result = self.runner.result(handle)
            except Exception as err:  # noqa: BLE001 - this trial's failure, not the search's
                result = TrialResult(trial_id, TrialState.FAILED,
                                     error=f"the {type(self.runner).__name__} could not read its result: "
                                           f"{type(err).__name__}: {err}")
        rec = self.store.get(trial_id)
        extra = {**result_notes(handle.workdir), "wall_s": round(handle.wall_s, 2)}
        if handle.info.get("expired"):
            extra["timed_out"] = handle.error
        if is_reference(rec):
            state = result.state
            self.store.set_state(trial_id, state, result=result, notes=extra)
            self._progress(self.store.get(trial_id), rung, "reference")
            self._log_tb(trial_id)
            return
        earlier = self._earlier_latency(trial_id, rung)
        if result.state is TrialState.COMPLETE and result.latency_p50_ms is None and earlier is not None:
            from_rung, result = earlier[0], replace(result, **earlier[1])
            extra["latency_from_rung"] = from_rung
        score = None
        if result.state is TrialState.COMPLETE:
            score = reward(self.cfg.objective, result.auc, self._latency_for_budget(result), self.budget_ms)
        self._record_rung(trial_id, rung, result, score, extra)

    def _earlier_latency(self, trial_id: int, rung: int) -> tuple[int, dict[str, float | None]] | None:
        """The latency a lower rung of this trial measured (rung, TrialResult latency fields), or
        None: none did (or this is rung 0)."""
        rungs = self.store.get(trial_id).notes.get("rungs", {})
        for below in range(rung - 1, -1, -1):
            entry = rungs.get(str(below)) or {}
            if entry.get("latency_p50_ms") is not None:
                return below, {
                    "latency_p50_ms": entry["latency_p50_ms"], "latency_p99_ms": entry.get("latency_p99_ms"),
                    "latency_spread": entry.get("latency_spread"),
                    "latency_reference_p50_ms": entry.get("latency_reference_p50_ms"),
                    "latency_vs_reference": entry.get("latency_vs_reference"),
                }
        return None

    def _latency_for_budget(self, result: TrialResult) -> float | None:
        """The trial's latency against the budget: scaled by the reference timed in its own
        rounds when the budget is the reference's latency (objective.latency_for_budget)."""
        budget_is_reference = self.cfg.objective.budget_ms is None
        return latency_for_budget(
            result.latency_p50_ms, result.latency_ratio, self.budget_ms, budget_is_reference, self.reference_ratio
        )

    def _judged_note(self, result: TrialResult, digits: int) -> str:
        """' (judged X ms = Rx budget)' where the latency budget judges the trial on another number
        than its raw p50 (the paired ratio to the reference: objective.judged_latency_note)."""
        if self.cfg.objective.metric != "latency" or self.budget_ms is None:
            return ""
        return judged_latency_note(result.latency_p50_ms, self._latency_for_budget(result), self.budget_ms, digits)

    def _record_rung(self, trial_id: int, rung: int, result: TrialResult | None, score: float | None, extra: dict) -> None:
        rec = self.store.get(trial_id)
        if result is None:
            result = TrialResult(trial_id, TrialState.FAILED, error="no result")
        rungs = dict(rec.notes.get("rungs", {}))
        rungs[str(rung)] = {
            "train_rows": self.cfg.fidelity.train_rows[rung], "score": score, "auc": result.auc,
            "latency_p50_ms": result.latency_p50_ms, "latency_p99_ms": result.latency_p99_ms,
            "latency_spread": result.latency_spread, "latency_reference_p50_ms": result.latency_reference_p50_ms,
            "latency_vs_reference": _round(result.latency_ratio),
            "wall_s": extra.get("wall_s"), "error": result.error,
        }
        self.sched.record(trial_id, rung, score)
        status = self.sched.status(trial_id)
        # PENDING: trained, not running; _reconcile gives it its final state when one is decided
        self.store.set_state(trial_id, TrialState.PENDING, result=result, notes={**extra, "rungs": rungs, "reward": score})
        self._reconcile(self.sched.bracket_of(trial_id), quiet=trial_id)
        status_text = status.status.value
        if status.status is Status.PRUNED:
            status_text = f"pruned (rank {status.rank} of {status.of})"
        self._progress(self.store.get(trial_id), rung, status_text)

    def _reconcile(self, bracket: int, quiet: int | None = None) -> None:
        """Give every trial of the bracket whose scheduler status is final that state in the store,
        and feed it to the controller."""
        for trial_id in [t for t in self.sched.trials() if self.sched.bracket_of(t) == bracket]:
            status = self.sched.status(trial_id)
            target = {Status.PRUNED: TrialState.PRUNED, Status.COMPLETE: TrialState.COMPLETE,
                      Status.FAILED: TrialState.FAILED}.get(status.status)
            rec = self.store.get(trial_id)
            if target is None or rec.state is target:
                continue
            notes: dict[str, Any] = {}
            if target is TrialState.PRUNED:
                notes["pruned"] = (f"not promoted at rung {status.rung} ({self.cfg.fidelity.train_rows[status.rung]:,} rows):"
                                   f" rank {status.rank} of {status.of}, top {max(1, (status.of or 0) // self.sched.eta)} promoted")
            result = rec.result
            if target is TrialState.FAILED and (result is None or result.state is not TrialState.FAILED):
                result = TrialResult(trial_id, TrialState.FAILED, error="failed")
            self.store.set_state(trial_id, target, result=result, notes=notes)
            self._observe(trial_id, rec.spec, rec.notes.get("reward") if target is not TrialState.FAILED else None)
            if target is TrialState.PRUNED and trial_id != quiet:
                self.echo(f"[search] trial {trial_id:>3} pruned: {notes['pruned']}")
            self._log_tb(trial_id)

    def _observe(self, trial_id: int, spec: TrialSpec, score: float | None) -> None:
        self.controller.observe(spec, score)
        ctl.save_state(self.controller, self.dir / CONTROLLER_FILE)
        self.store.set_state(trial_id, self.store.get(trial_id).state, notes={"observed": True})

    def _log_tb(self, trial_id: int) -> None:
        try:
            from recsearch.search import tb
        except ImportError:
            return
        try:
            tb.log_trial(self.dir, self.store.get(trial_id))
        except Exception as err:  # the HParams log is a view; a bug there must not end a search
            if not self._tb_warned:
                self.echo(f"[search] warning: TensorBoard HParams logging failed ({type(err).__name__}: {err}); "
                          f"the search goes on")
                self._tb_warned = True

    # ---- what the user sees -------------------------------------------------------------------
    def _progress(self, rec: TrialRecord, rung: int, status: str) -> None:
        r = rec.result
        top = len(self.cfg.fidelity.train_rows) - 1
        auc = f"AUC {r.auc:.4f}" if r and r.auc is not None else "AUC  -    "
        lat = f"lat {r.latency_p50_ms:.2f} ms{self._judged_note(r, 2)}" if r and r.latency_p50_ms is not None else "lat -"
        wall = rec.notes.get("wall_s")
        best = self.best()
        # "best" is by reward (AUC less any latency penalty), so say both: a higher AUC elsewhere
        # on the screen belongs to a trial the objective ranks lower
        best_text = (f"best: trial {best.trial_id} AUC {best.result.auc:.4f} reward {best.notes.get('reward'):.4f}"
                     if best and best.notes.get("reward") is not None else "best -")
        tail = f" | {r.error[:200]}" if r and r.state is TrialState.FAILED and r.error else ""
        from recsearch.search.eta import progress_eta

        # the budget counts trained candidates: a rejected one (never trained) is not among them
        trials = [t for t in self.store.trials() if not is_reference(t) and not t.notes.get("rejected")]
        f = self.cfg.fidelity
        budget = len(self.sched.trials()) if self.proposals_closed else self.cfg.trials
        eta = progress_eta([t.notes.get("rungs", {}) for t in trials], sum(t.state in FINAL for t in trials), budget,
                           self.sched.bracket_size, f.eta, f.train_rows, self.cfg.runner.concurrency)
        self.echo(
            f"[search] trial {rec.trial_id:>3} rung {rung}/{top} ({rec.notes.get('train_rows', 0):,} rows) "
            f"{describe(rec.spec)} | {auc} {lat} | {wall if wall is not None else 0:.1f} s | {status} | {best_text} "
            f"| {eta}{tail}"
        )

    def best(self, n: int = 1) -> Any:
        done = [r for r in self.store.trials((TrialState.COMPLETE,)) if not is_reference(r)]
        done.sort(key=lambda r: (-(r.notes.get("reward") if r.notes.get("reward") is not None else -math.inf), r.trial_id))
        if n == 1:
            return done[0] if done else None
        return done[:n]

    def summary(self) -> dict[str, Any]:
        records = self.store.trials()
        ref = next((r for r in records if is_reference(r)), None)
        cands = [r for r in records if not is_reference(r)]
        rejected = [r for r in cands if r.notes.get("rejected")]
        trained = [r for r in cands if not r.notes.get("rejected")]
        counts = {
            "trained": len(trained), "budget": self.cfg.trials, "rejected": len(rejected),
            "complete": sum(r.state is TrialState.COMPLETE for r in trained),
            "pruned": sum(r.state is TrialState.PRUNED for r in trained),
            "failed": sum(r.state is TrialState.FAILED for r in trained),
        }
        wall = max((r.updated_at_s for r in records), default=self.started_s) - min((r.created_at_s for r in records), default=self.started_s)
        self.echo("")
        self.echo(f"[search] done: {counts['trained']}/{counts['budget']} configurations trained "
                  f"({counts['complete']} complete, {counts['pruned']} pruned by successive halving, "
                  f"{counts['failed']} failed); {counts['rejected']} rejected before training; "
                  f"wall time {wall:.0f} s; {self.dir}")
        if ref and ref.result:
            self.echo(f"[search] reference config (trial {ref.trial_id}): val AUC {fmt(ref.result.auc)}, "
                      f"latency {fmt(ref.result.latency_p50_ms, 3)} ms" + (f", {ref.result.error}" if ref.result.error else ""))
        if self.budget_ms is not None:
            self.echo(f"[search] budget ({self.cfg.objective.metric}): {self.budget_ms:.3f} ms")
        for rec in self.best(3):
            r, score = rec.result, rec.notes.get("reward")
            self.echo(f"[search] best: trial {rec.trial_id} val AUC {fmt(r.auc)} test AUC {fmt(rec.notes.get('test_auc'))} "
                      f"latency {fmt(r.latency_p50_ms, 3)} ms{self._judged_note(r, 3)} reward {fmt(score)}: "
                      f"{describe(rec.spec)}")
        # the same front as `recsearch report` (recsearch.search.pareto: exact ties stay on it)
        front = pareto_front((r.trial_id, r.result.auc, r.result.latency_p50_ms) for r in records
                             if r.state is TrialState.COMPLETE and r.result).points
        if front:
            self.echo("[search] Pareto front (AUC vs latency): " + ", ".join(
                f"trial {p.trial_id}{' (reference)' if ref and p.trial_id == ref.trial_id else ''} {p.value:.4f} @ {p.cost:.3f} ms" for p in front))
        return {"counts": counts, "wall_s": wall, "pareto": [p.trial_id for p in front]}


def _write_atomically(path: Path, text: str) -> None:
    """A whole file or none: written beside it, then renamed over it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _failed_handle(trial_id: int, workdir: Path, error: str) -> Handle:
    """The handle of a run the runner could not start: over as soon as it began, with the error."""
    now = time.time()
    handle = Handle(trial_id, workdir, now, started_at_s=now)
    handle.fail(error)
    return handle


def _round(ratio: float | None) -> float | None:
    return round(ratio, 5) if ratio is not None else None


class _DryRun(Exception):
    """Raised after the first trial's torchx request is printed in dryrun mode."""


def _check_notes(check: Check) -> dict[str, Any]:
    notes: dict[str, Any] = {}
    if check.placement:
        notes["placement"] = check.placement  # table -> rank: every rung trains with this one
    if check.est_step_cost_ms is not None:
        notes["est_step_cost_ms"] = check.est_step_cost_ms
    if check.memory_bytes_per_device:
        notes["memory_bytes_per_device"] = list(check.memory_bytes_per_device)
    return notes


def _archive_previous(workdir: Path, rung: int, promoted: bool) -> None:
    """Move an earlier run's files out of the trial dir, so it holds only the new run: the run of
    the rung below (a promotion: `promoted`, the trial has a result there) goes to rung_<k>/,
    anything else (a failed or orphaned attempt at this rung, such as the reference's, which only
    ever runs the top rung) to attempt_<n>/."""
    if not workdir.exists():
        return
    entries = [p for p in workdir.iterdir() if not p.name.startswith(("rung_", "attempt_"))]
    if not entries:
        return
    name = f"rung_{rung - 1}"
    if rung == 0 or not promoted or (workdir / name).exists():
        n = 1
        while (workdir / f"attempt_{n}").exists():
            n += 1
        name = f"attempt_{n}"
    dest = workdir / name
    dest.mkdir()
    for p in entries:
        shutil.move(str(p), str(dest / p.name))


# ---- entry point ---------------------------------------------------------------------------------
class _DirLock:
    """One search process per directory: a resumed search must not race a live one."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise RuntimeError(f"another search is running in {path.parent} (it holds {path})") from None

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def resume_problems(search_dir: Path) -> list[str]:
    """Why DIR cannot be resumed: not a search directory, a search.yaml that recsearch search did
    not write (a user config), or a lost journal beside the trials and controller state of an
    earlier run (resuming would start over on top of them). A journal that holds no trial in a
    directory with nothing else is a search killed before its first trial: it starts afresh."""
    cfg_path = search_dir / SEARCH_CONFIG
    if not search_dir.is_dir():
        return [f"{search_dir}: no such directory"]
    if not cfg_path.exists():
        return [f"{search_dir}: no {SEARCH_CONFIG}: not a search directory"]
    try:
        raw = config.load_yaml(cfg_path)
    except config.ConfigError as err:
        return err.problems
    if raw.get("train") is not None or not isinstance(raw.get("base"), dict) or "data_dir" not in raw["base"]:
        return [f"{cfg_path}: not a search directory's resolved config (recsearch search writes it with "
                f"`train: null` and the whole base train config under `base:`); to start a search from "
                f"this file run: recsearch search --config {cfg_path} --out NEW_DIR"]
    journal = search_dir / JOURNAL_FILE
    has_lines = journal.exists() and journal.stat().st_size > 0 and b"\n" in journal.read_bytes()
    if has_lines:
        return []
    leftovers = [name for name in (TRIALS_DIR, CONTROLLER_FILE)
                 if (search_dir / name).exists() and not ((search_dir / name).is_dir() and not any((search_dir / name).iterdir()))]
    if leftovers:
        state = "empty" if journal.exists() else "missing"
        return [f"{journal}: {state}, but {search_dir} holds {' and '.join(leftovers)} of an earlier run: the "
                f"journal (the record of every trial) is lost, and resuming would start the search over on "
                f"top of them. Restore {JOURNAL_FILE} from a backup, or start a new search with another --out"]
    return []


def _resume_if_exists(args: argparse.Namespace) -> argparse.Namespace:
    """--resume-if-exists, for a job the scheduler may run again (requeued, preempted, retried):
    when the directory of --config/--out already holds a search, continue it as --resume DIR."""
    if not args.resume_if_exists or args.resume:
        return args
    search_dir = Path(args.out or load_search_config(args.config, args.overrides).cfg.output_dir)
    if not (search_dir / SEARCH_CONFIG).exists():
        return args
    logs.get("search").info(f"[search] {search_dir} already holds a search: resuming it (--resume-if-exists; it continues "
          f"as its {SEARCH_CONFIG} says, {args.config} and overrides are not read again)")
    return argparse.Namespace(**{**vars(args), "config": None, "out": None, "overrides": [], "resume": str(search_dir)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="recsearch search",
        description="Search DLRM architectures and hyperparameters (sharding-aware, multi-fidelity).",
    )
    parser.add_argument("--config", help="search YAML (configs/search/)")
    parser.add_argument("--out", help="search directory (default: the config's output_dir)")
    parser.add_argument("--resume", metavar="DIR", help="continue the search in DIR (reads DIR/search.yaml)")
    parser.add_argument("--resume-if-exists", action="store_true",
                        help="with --config: resume the search directory if it already holds a search "
                             "(a requeued or retried job) instead of refusing")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. trials=20 runner.concurrency=2")
    # key=value overrides may come anywhere, before or after the options
    args = parser.parse_intermixed_args(argv)
    try:
        logs.configure()
    except ValueError as err:
        print(f"recsearch search: {err}", file=sys.stderr)
        return 2
    if bool(args.config) == bool(args.resume):
        parser.error("give exactly one of --config FILE or --resume DIR")
    if args.resume and (args.out or args.overrides):
        parser.error("--resume DIR takes no --out or overrides: the search continues as configured in DIR/search.yaml")
    # Every problem with the config, the data, the base train config and the space is found here,
    # before anything is written: a refused search leaves no directory behind.
    refused = (config.ConfigError, RuntimeError, JournalError, ctl.ControllerStateError)
    lock = None
    try:
        args = _resume_if_exists(args)
        if args.resume:
            search_dir = Path(args.resume)
            problems = resume_problems(search_dir)
            if problems:
                raise RuntimeError("cannot resume: " + "\n  ".join(problems))
            res = load_search_config(search_dir / SEARCH_CONFIG)
            checker = None
        else:
            res = load_search_config(args.config, args.overrides)
            search_dir = Path(args.out or res.cfg.output_dir)
            if (search_dir / SEARCH_CONFIG).exists():
                raise config.ConfigError([f"{search_dir}: already holds a search; continue it with "
                                          f"--resume {search_dir} (or pass --resume-if-exists) or pick another --out"])
            checker = Checker(res.tables, res.cfg.topology.topology(), res.cfg.placer, res.cfg.seed)
            problems = preflight_problems(res, checker, config.Origins.of(args.config, args.overrides).locate)
            if problems:  # each named where its key was set: the file or the command line
                raise config.ConfigError(problems)
        search_dir.mkdir(parents=True, exist_ok=True)
        lock = _DirLock(search_dir / LOCK_FILE)
        if not args.resume:
            text = f"# Written by recsearch search: the resolved config; `recsearch search --resume {search_dir}` reads it.\n"
            text += yaml.safe_dump(res.resolved_dict(search_dir), sort_keys=False)
            remote.write_text(search_dir / SEARCH_CONFIG, text)
        search = Search(res, search_dir, checker=checker)
        logs.get("search").info(f"[search] {res.cfg.controller} controller; "
              f"{res.cfg.trials} trials, rungs {list(res.cfg.fidelity.train_rows)} rows (eta {res.cfg.fidelity.eta}); "
              f"{res.cfg.runner.kind} runner x {res.cfg.runner.concurrency}; placer {search.checker.placer_name}; "
              f"{search.checker.cost_note[:160]}; {search_dir}")
        return search.run()
    except refused as err:
        print(f"recsearch search: {err}", file=sys.stderr)
        return 2
    finally:
        if lock is not None:
            lock.release()


if __name__ == "__main__":
    raise SystemExit(main())
