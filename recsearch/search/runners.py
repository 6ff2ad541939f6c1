"""Trial runners: where a trial's `recsearch train` run happens.

    handle = runner.submit(spec, workdir)   # workdir/trial.yaml is the exact train config
    runner.poll(handle)                     # RUNNING until the run ends, then COMPLETE or FAILED
    runner.result(handle)                   # TrialResult read from workdir/result.json

Whatever runs the trial, it reports back the same way: the trainer writes `result.json` into its
output directory (the trial's workdir), and `read_result` turns it into a TrialResult. A run that
dies without writing one (killed, out of memory, a crashed interpreter) is FAILED with what the
runner saw (return code, signal, the log's last line).

- InProcessRunner: calls the trainer in this process (tests, debugging); every exception and a
  non-finite loss become a FAILED result, so the search goes on.
- SubprocessRunner: `python -m recsearch.cli train --config trial.yaml` as child processes, as
  many at a time as the loop submits; they die with the search process (PR_SET_PDEATHSIG, which
  each child sets itself at its start: recsearch.search.die_with_parent), so a killed search
  leaves no orphan writing into a trial a resumed search will retry.
- PoolRunner: persistent worker processes (`python -m recsearch.search.worker`), one per
  concurrency slot, each running `recsearch train` trials back to back in-process on the trial's
  trial.yaml: imports, CUDA context and loaded data splits are paid once per worker, not per
  trial. A trial that crashes, is killed or times out takes its worker down; a fresh one
  replaces it. Workers die with the search process, each in its own process group.
- TorchxRunner: the `train` component of launch/components.py as one torchx job per trial
  (local_cwd, slurm, kubernetes, ...); the workdir must be on storage the job can write
  (a shared filesystem for Slurm, a mounted volume for Kubernetes), or, with remote_dir, trial
  files travel through an fsspec URL (recsearch.remote). dryrun=True only renders the scheduler
  request (tested for Slurm and Kubernetes). A job can outlive the search (a SIGKILLed search's
  cluster job): `cancel_orphan(app_handle)` ends it by its handle when the search resumes.

A runner's submit or poll may raise (no process could be started, the scheduler could not be
asked); the search fails that one trial, after retrying a poll (recsearch.search.loop.PollRetry).
"""

from __future__ import annotations

import contextlib
import json
import select
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import yaml

from recsearch import remote
from recsearch.search.die_with_parent import command_for
from recsearch.signals import handlers_kept
from recsearch.train.result import ResultError, TrainResult, finite
from recsearch.types import RESULT_FILE, TrialResult, TrialSpec, TrialState

TRIAL_CONFIG = "trial.yaml"
LOG_FILE = "train.log"


@dataclass
class Handle:
    """A submitted run. `native` is the runner's own handle (process, torchx app handle)."""

    trial_id: int
    workdir: Path
    submitted_at_s: float
    native: Any = None
    state: TrialState = TrialState.RUNNING
    error: str | None = None  # what the runner saw when the run ended badly
    finished_at_s: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    # when the run itself began (a queued torchx job: when the scheduler first reports it
    # RUNNING); None while it waits. The trial timeout counts from here.
    started_at_s: float | None = None

    @property
    def wall_s(self) -> float:
        end = self.finished_at_s if self.finished_at_s is not None else time.time()
        return end - self.submitted_at_s

    @property
    def running_s(self) -> float:
        """Seconds since the run began (0 while it waits in a queue)."""
        if self.started_at_s is None:
            return 0.0
        end = self.finished_at_s if self.finished_at_s is not None else time.time()
        return end - self.started_at_s

    def expire(self, error: str) -> None:
        """The run was stopped from outside (the trial timeout, after runner.cancel). Its result
        is then FAILED with this error, unless it had already written a complete result.json
        (a trainer that finished but did not exit): that result stands."""
        self.error = error
        self.finished_at_s = time.time()
        self.state = TrialState.FAILED
        self.info["expired"] = True

    def fail(self, error: str) -> None:
        """The runner itself failed the run (it could not start it, or its polls kept raising):
        the trial's result is FAILED with this error; the search reads no result.json for it."""
        self.error = error
        self.finished_at_s = time.time()
        self.state = TrialState.FAILED
        self.info["runner_error"] = error


class TrialRunner(Protocol):
    """What the search asks of a runner. A runner may also have `wait(handles, timeout_s)`:
    block until one of the runs may have ended or timeout_s pass (the search sleeps its poll
    interval instead where a runner has none)."""

    def submit(self, spec: TrialSpec, workdir: Path) -> Handle: ...

    def poll(self, handle: Handle) -> TrialState: ...

    def result(self, handle: Handle) -> TrialResult: ...

    def cancel(self, handle: Handle) -> None: ...


def wait_readable(fds: list[int], timeout_s: float) -> None:
    """Block until one of the file descriptors is readable (a worker wrote, a pipe closed, a
    process's pidfd signalled its exit) or timeout_s pass."""
    if not fds:
        time.sleep(timeout_s)
        return
    with contextlib.suppress(OSError, ValueError):
        select.select(fds, [], [], timeout_s)


# ---- result.json -> TrialResult ------------------------------------------------------------------
def read_result(
    workdir: Path, trial_id: int, serving_batch: int, runner_error: str | None = None
) -> TrialResult:
    """The trial's outcome from its result.json (recsearch.train.result.TrainResult). Validation
    AUC is the AUC; latency is the p50/p99 at the serving batch. A missing, unreadable or failed
    result is FAILED with the reason."""
    path = Path(workdir) / RESULT_FILE
    if not path.exists():
        error = runner_error or "the run ended without writing result.json"
        return TrialResult(trial_id, TrialState.FAILED, error=f"{error} ({path} missing)")
    try:
        run = TrainResult.read(path)
    except ResultError as err:
        return TrialResult(trial_id, TrialState.FAILED, error=str(err))
    if not run.ok:
        if run.status == "diverged":
            error = f"non-finite loss (diverged) at step {run.steps}: last loss {run.last_loss}"
        else:
            error = run.error or f"run ended with status {run.status!r}"
        if runner_error and runner_error not in error:
            error = f"{error}; {runner_error}"
        return TrialResult(trial_id, TrialState.FAILED, error=error)
    auc = run.auc("val")
    if auc is None:
        return TrialResult(trial_id, TrialState.FAILED, error=f"{path}: no finite validation AUC")
    val = run.metrics["val"]
    latency = run.latency(serving_batch)
    return TrialResult(
        trial_id=trial_id,
        state=TrialState.COMPLETE,
        auc=auc,
        log_loss=finite(val.log_loss),
        accuracy=finite(val.accuracy),
        step_time_ms=finite(run.step_time_ms),
        latency_p50_ms=finite(latency.p50_ms) if latency else None,
        latency_p99_ms=finite(latency.p99_ms) if latency else None,
        latency_spread=finite(latency.spread) if latency else None,
        latency_reference_p50_ms=finite(latency.reference_p50_ms) if latency else None,
        latency_vs_reference=finite(latency.vs_reference) if latency else None,
    )


def result_notes(workdir: Path) -> dict[str, Any]:
    """Numbers from result.json that have no TrialResult field (for the store's notes)."""
    try:
        run = TrainResult.read(Path(workdir) / RESULT_FILE)
    except ResultError:
        return {}
    notes: dict[str, Any] = {}
    test_auc = run.auc("test")
    if test_auc is not None:
        notes["test_auc"] = test_auc
    val = run.metrics.get("val")
    if val is not None and finite(val.ne) is not None:
        notes["val_ne"] = val.ne
    for key in ("samples_per_s", "steps", "train_seconds", "dense_parameters"):
        value = finite(getattr(run, key))
        if value is not None:
            notes[key] = int(value) if key in ("steps", "dense_parameters") else value
    if run.peak_memory_mb_per_rank:
        notes["peak_memory_mb_per_rank"] = run.peak_memory_mb_per_rank
    rows = run.config.get("train_rows")
    if isinstance(rows, int):
        notes["train_rows"] = rows
    return notes


def _record_exit(handle: Handle, code: int) -> None:
    """A trial's run ended with this exit code (negative: the signal that killed it): when, the
    code, and for a bad ending the error the runners report (the signal, the log's tail)."""
    handle.finished_at_s = time.time()
    handle.info["returncode"] = code
    if code != 0:
        tail = _log_tail(handle.workdir)
        handle.error = _signal_error(code) + (f"; log: {tail}" if tail and code > 0 else "")


def _signal_error(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (the kernel's OOM killer, or someone, killed it)" if -returncode == signal.SIGKILL else ""
        return f"process killed by {name}{hint}"
    return f"process exited with code {returncode}"


def _log_tail(workdir: Path, lines: int = 3) -> str:
    try:
        text = (Path(workdir) / LOG_FILE).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


# ---- in-process ----------------------------------------------------------------------------------
TrainMain = Callable[[list[str]], int]


def _trainer_main(argv: list[str]) -> int:
    from recsearch.train import trainer  # imports torchrec: only when a trial runs here

    return trainer.main(argv)


class InProcessRunner:
    """Runs each trial to the end inside submit(); poll() then reports how it ended.

    One trial at a time (the trainer owns this process's default process group while it runs).
    The trainer's output goes to the trial's train.log, not the search's terminal."""

    def __init__(self, serving_batch: int = 256, threads: int | None = 1, train_main: TrainMain = _trainer_main):
        self.serving_batch = serving_batch
        self.threads = threads
        self.train_main = train_main

    def submit(self, spec: TrialSpec, workdir: Path) -> Handle:
        import torch

        handle = Handle(spec.trial_id, Path(workdir), time.time())
        handle.started_at_s = handle.submitted_at_s
        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with open(Path(workdir) / LOG_FILE, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                code = self.train_main(["--config", str(Path(workdir) / TRIAL_CONFIG)])
            handle.info["returncode"] = code
            if code != 0:
                tail = _log_tail(Path(workdir))
                handle.error = f"trainer returned {code}" + (f"; log: {tail}" if tail else "")
        except Exception as err:  # any failure of a trial is its result, never the search's end
            handle.error = f"{type(err).__name__}: {err}"
        finally:
            torch.set_num_threads(before)
            _destroy_process_group()
        handle.finished_at_s = time.time()
        handle.state = self.result(handle).state
        return handle

    def poll(self, handle: Handle) -> TrialState:
        return handle.state

    def result(self, handle: Handle) -> TrialResult:
        return read_result(handle.workdir, handle.trial_id, self.serving_batch, handle.error)

    def cancel(self, handle: Handle) -> None:
        """Nothing to cancel: a submitted in-process trial has already finished."""


def _destroy_process_group() -> None:
    """A trainer that crashed before its own cleanup may leave the default group behind; the next
    in-process trial must start from none."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---- subprocesses --------------------------------------------------------------------------------
def child_env(extra: dict[str, str], threads: int | None) -> dict[str, str]:
    """The environment of a trial process or pool worker: this one's, plus `extra`, with the
    repository importable, unbuffered output and `threads` OpenMP threads (when given)."""
    repo_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def train_command(config_path: Path, world_size: int) -> list[str]:
    """The argument list that trains one trial locally on world_size ranks."""
    train = ["-m", "recsearch.cli", "train", "--config", str(config_path)]
    if world_size == 1:
        return [sys.executable, *train]
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc_per_node", str(world_size), *train,
    ]


class SubprocessRunner:
    """Each trial a `recsearch train` child process (torchrun for several ranks). threads: the
    OMP/torch threads each trial may use (trials share the machine's cores)."""

    def __init__(self, serving_batch: int = 256, threads: int | None = 1, env: dict[str, str] | None = None):
        self.serving_batch = serving_batch
        self.threads = threads
        self.env = dict(env or {})

    def command(self, spec: TrialSpec, workdir: Path) -> list[str]:
        """The trial's argument list (`recsearch train` on its trial.yaml)."""
        return train_command(Path(workdir) / TRIAL_CONFIG, spec.topology.world_size)

    def submit(self, spec: TrialSpec, workdir: Path) -> Handle:
        workdir = Path(workdir)
        env = child_env(self.env, self.threads)
        command = self.command(spec, workdir)
        if sys.platform.startswith("linux"):  # the child asks to die with this process, then runs the trial
            command = command_for(os.getpid(), command)
        log = open(workdir / LOG_FILE, "ab")
        try:
            # its own process group, so cancel() (Ctrl-C, the trial timeout) ends torchrun's
            # ranks too, not only their launcher. No preexec_fn: Python code between fork and
            # exec is unsafe while the search's heartbeat thread runs.
            proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,
            )
        finally:
            log.close()  # the child holds its own descriptor
        now = time.time()
        return Handle(spec.trial_id, workdir, now, native=proc, info={"pid": proc.pid}, started_at_s=now)

    def poll(self, handle: Handle) -> TrialState:
        if handle.state is not TrialState.RUNNING:
            return handle.state
        proc: subprocess.Popen = handle.native
        code = proc.poll()
        if code is None:
            return TrialState.RUNNING
        _record_exit(handle, code)
        handle.state = read_result(handle.workdir, handle.trial_id, self.serving_batch, handle.error).state
        return handle.state

    def result(self, handle: Handle) -> TrialResult:
        if handle.state is TrialState.RUNNING:
            raise RuntimeError(f"trial {handle.trial_id} is still running")
        return read_result(handle.workdir, handle.trial_id, self.serving_batch, handle.error)

    def wait(self, handles: list[Handle], timeout_s: float) -> None:
        """Until one of the trial processes exits (a pidfd per process, where Linux has them) or
        timeout_s pass."""
        fds: list[int] = []
        try:
            for handle in handles:
                if handle.state is TrialState.RUNNING and hasattr(os, "pidfd_open"):
                    with contextlib.suppress(OSError):
                        fds.append(os.pidfd_open(handle.native.pid))
            wait_readable(fds, timeout_s)
        finally:
            for fd in fds:
                os.close(fd)

    def cancel(self, handle: Handle) -> None:
        """Kill the trial's whole process group (SIGKILL) and reap it."""
        proc: subprocess.Popen = handle.native
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
            proc.wait()


# ---- a pool of persistent workers ----------------------------------------------------------------
class _PoolWorker:
    """A worker process as the pool runner sees it: its pipes, the job it runs, what it said."""

    def __init__(self, proc: subprocess.Popen, index: int):
        self.proc = proc
        self.index = index
        self.pid = proc.pid
        self.job: int | None = None  # the job (number) it is running
        self.trials = 0  # jobs it has finished
        self.ready_info: dict[str, Any] | None = None  # its "ready" message, once imports are done
        self.done: dict[int, dict[str, Any]] = {}  # job -> its "done" message, until collected
        self.retiring = False  # said it will exit after its last job
        self.eof = False  # its end of the pipe is closed (it is exiting or has exited)
        self._buffer = b""
        os.set_blocking(proc.stdout.fileno(), False)

    @property
    def exited(self) -> bool:
        """Whether the worker has ended. It is not reaped here (WNOWAIT): until kill() reaps it,
        its pid cannot be reused, so killing its process group kills only what it left."""
        if self.proc.returncode is not None:
            return True
        if not hasattr(os, "waitid"):
            return self.proc.poll() is not None
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return self.proc.poll() is not None

    def read(self) -> None:
        """Take whatever the worker has written (without waiting)."""
        fd = self.proc.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                break
            if not chunk:
                self.eof = True
                break
            self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue  # not the protocol (nothing else writes here); ignore
            if message.get("event") == "ready":
                self.ready_info = message
            elif message.get("event") == "done":
                self.done[int(message["job"])] = message
                if message.get("retire"):
                    self.retiring = True

    def send(self, job: dict[str, Any]) -> bool:
        """Hand the worker a job; False if it is gone."""
        try:
            self.proc.stdin.write((json.dumps(job) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            return False
        self.job = int(job["job"])
        return True

    def kill(self) -> None:
        """SIGKILL its whole process group (the worker, if it still runs, and whatever its trial
        started), then reap it."""
        if self.proc.returncode is None:  # not reaped yet: the group is still the worker's
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                with contextlib.suppress(OSError):
                    self.proc.kill()
        self.proc.wait()
        self.close_pipes()

    def close_pipes(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                pipe.close()


class PoolRunner:
    """Trials run back to back in persistent worker processes, `size` of them (one per
    concurrency slot; more are started if more trials run at once).

    Each worker (`python -m recsearch.search.worker`, its own process group, dying with this
    process) imports the trainer once, keeps its CUDA context and a cache of loaded data splits,
    and runs each submitted trial's `recsearch train --config trial.yaml` in-process, its output
    appended to the trial's train.log. The trial reports through result.json as under every
    runner, and a run that ends badly is FAILED with the same errors the subprocess runner gives:
    a trial that exits non-zero (`process exited with code 2; log: ...`), raises (code 1 and its
    traceback in the log; its worker is then replaced), or whose worker dies (`process killed by
    SIGKILL ...`, a segfault, the OOM killer). cancel() (the trial timeout, Ctrl-C) kills the
    worker's process group; a fresh worker takes its place. Workers are started when the first
    trial is submitted (all `size` at once: the spares import while the first trial trains) and
    when one is lost; close() ends them. threads: torch/OpenMP threads per worker."""

    def __init__(self, serving_batch: int = 256, threads: int | None = 1, size: int = 1,
                 env: dict[str, str] | None = None):
        self.serving_batch = serving_batch
        self.threads = threads
        self.size = max(1, int(size))
        self.env = dict(env or {})
        self.workers: list[_PoolWorker] = []
        self.started = 0  # workers started so far (a replaced worker counts again)
        self.spare_error: str | None = None  # why the last spare worker could not be started
        self._jobs = 0

    def worker_command(self) -> list[str]:
        """The worker's argument list (an injection point for tests)."""
        command = [sys.executable, "-m", "recsearch.search.worker", "--parent-pid", str(os.getpid()),
                   # the workers' split caches together hold at most a quarter of the memory
                   "--cache-fraction", f"{0.25 / self.size:.6g}"]
        if self.threads:
            command += ["--threads", str(self.threads)]
        return command

    def _start_worker(self) -> _PoolWorker:
        env = child_env(self.env, self.threads)
        # its own session: cancel() kills the worker and anything its trial started; the worker
        # itself asks to die with this process (PR_SET_PDEATHSIG) before importing anything
        proc = subprocess.Popen(
            self.worker_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=env, start_new_session=True,
        )
        worker = _PoolWorker(proc, self.started)
        self.started += 1
        self.workers.append(worker)
        return worker

    def _reap(self) -> None:
        """Forget idle workers that have exited (a retired one, or one killed between trials)."""
        for worker in list(self.workers):
            if worker.job is None and worker.exited:
                self._drop(worker)

    def _top_up(self) -> None:
        """Start workers until `size` of them can take trials (a retiring one cannot)."""
        while len([w for w in self.workers if not w.retiring]) < self.size:
            self._start_worker()

    def _top_up_spares(self) -> None:
        """_top_up where a trial has already been handed out or has ended: a worker that cannot be
        started now (EAGAIN, ENOMEM) is no error of that trial; the next submit starts it, or
        fails then with the reason."""
        try:
            self._top_up()
        except OSError as err:
            self.spare_error = f"{type(err).__name__}: {err}"

    def submit(self, spec: TrialSpec, workdir: Path) -> Handle:
        if spec.topology.world_size != 1:
            raise ValueError(f"runner pool runs one-rank trials; trial {spec.trial_id} has "
                             f"{spec.topology.world_size} ranks (use runner.kind subprocess)")
        workdir = Path(workdir)
        self._jobs += 1
        job = {"job": self._jobs, "trial_id": spec.trial_id, "config": str(workdir / TRIAL_CONFIG),
               "log": str(workdir / LOG_FILE)}
        for _ in range(self.size + 3):
            for worker in self.workers:
                worker.read()
            self._reap()
            idle = [w for w in self.workers if w.job is None and not w.retiring and not w.exited]
            # a warm worker first (imports done), then the one started first
            idle.sort(key=lambda w: (w.ready_info is None, w.index))
            worker = idle[0] if idle else self._start_worker()
            if worker.send(job):
                break
            worker.kill()  # it had died: its pipe is closed
            self.workers.remove(worker)
        else:
            raise RuntimeError(f"runner pool: could not hand trial {spec.trial_id} to a worker "
                               f"(workers exit as they start: see {workdir / LOG_FILE})")
        self._top_up_spares()
        now = time.time()
        info = {"pid": worker.pid, "worker": worker.index, "worker_trials": worker.trials, "job": job["job"]}
        return Handle(spec.trial_id, workdir, now, native=worker, info=info, started_at_s=now)

    def poll(self, handle: Handle) -> TrialState:
        if handle.state is not TrialState.RUNNING:
            return handle.state
        worker: _PoolWorker = handle.native
        worker.read()
        message = worker.done.pop(handle.info["job"], None)
        if message is None and worker.exited:
            worker.read()  # it may have finished the job just before it died
            message = worker.done.pop(handle.info["job"], None)
        if message is not None:
            self._finished(handle, worker, int(message["returncode"]))
            handle.info["worker_seconds"] = message.get("seconds")
            if message.get("retire"):  # it exits now; its replacement imports meanwhile
                handle.info["worker_retired"] = message["retire"]
                self._top_up_spares()
            if "cache" in message:
                handle.info["split_cache"] = message["cache"]
        elif worker.exited:
            self._drop(worker)  # kills what is left of its process group, reaps it
            self._finished(handle, worker, worker.proc.returncode)
            self._top_up_spares()  # the replacement imports while the search decides what is next
        else:
            return TrialState.RUNNING
        handle.state = read_result(handle.workdir, handle.trial_id, self.serving_batch, handle.error).state
        return handle.state

    def _finished(self, handle: Handle, worker: _PoolWorker, code: int) -> None:
        """The worker is free again; the trial is recorded as a subprocess that exited with code."""
        worker.job = None
        worker.trials += 1
        _record_exit(handle, code)

    def _drop(self, worker: _PoolWorker) -> None:
        if worker in self.workers:
            self.workers.remove(worker)
        worker.kill()

    def result(self, handle: Handle) -> TrialResult:
        if handle.state is TrialState.RUNNING:
            raise RuntimeError(f"trial {handle.trial_id} is still running")
        return read_result(handle.workdir, handle.trial_id, self.serving_batch, handle.error)

    def wait(self, handles: list[Handle], timeout_s: float) -> None:
        """Until a worker running one of the trials writes (its "done" message) or exits (its
        pipe closes), or timeout_s pass."""
        fds, pidfds = [], []
        try:
            for handle in handles:
                worker: _PoolWorker = handle.native
                if handle.state is not TrialState.RUNNING or worker.proc.stdout.closed:
                    continue
                if not worker.eof:
                    fds.append(worker.proc.stdout.fileno())
                elif hasattr(os, "pidfd_open"):  # a closed pipe stays readable: wait for the exit itself
                    with contextlib.suppress(OSError):
                        pidfds.append(os.pidfd_open(worker.pid))
            wait_readable(fds + pidfds, timeout_s)
        finally:
            for fd in pidfds:
                os.close(fd)

    def cancel(self, handle: Handle) -> None:
        """Kill the worker running the trial (its whole process group) and reap it; unless the
        trial has already ended, then its worker is left to run the next one."""
        worker: _PoolWorker = handle.native
        if worker.job != handle.info.get("job"):
            return  # this trial's job is over; the worker may be running another one
        worker.read()
        message = worker.done.pop(handle.info["job"], None)
        if message is not None:  # it finished just now: its worker is free again
            worker.job = None
            worker.trials += 1
            handle.info["returncode"] = int(message["returncode"])
            return
        self._drop(worker)

    def close(self) -> None:
        """End every worker: idle ones when their stdin closes (a few seconds at most), busy ones
        (a trial nobody cancelled) by SIGKILL of their group."""
        for worker in self.workers:
            if worker.job is None:
                with contextlib.suppress(OSError):
                    worker.proc.stdin.close()
            else:
                worker.kill()
        deadline = time.time() + 10.0
        while time.time() < deadline and not all(w.exited for w in self.workers):
            time.sleep(0.02)
        for worker in self.workers:  # not reaped yet: kill() also ends what their trials left
            worker.kill()
        self.workers.clear()

    def __enter__(self) -> PoolRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- torchx --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TorchxSettings:
    """The search config's `runner.torchx:` section: where and how each trial job runs."""

    scheduler: str = "local_cwd"  # local_cwd | slurm | kubernetes | any torchx scheduler
    cfg: dict[str, str] = field(default_factory=dict)  # scheduler run options (torchx -cfg)
    image: str = ""  # container image; "" = torchx's default (local_cwd: the working directory)
    cpu: int = 2
    gpu: int = 0
    memMB: int = 8192
    h: str | None = None  # a named resource, instead of cpu/gpu/memMB
    mounts: tuple[str, ...] = ()  # e.g. type=bind,src=/data,dst=/data
    dryrun: bool = False  # only render the scheduler request of each trial (no job runs)
    # An fsspec URL (s3://bucket/searches/x, gs://..., file:///shared/x) through which trials and
    # the search exchange files when the jobs cannot see the search directory: each job reads its
    # config (and placement) from remote_dir/trials/<id>/<attempt>/ and uploads result.json and
    # tb/ there; the search downloads them into the trial's directory when the job ends.
    # "" = the jobs share the search directory's filesystem (the default).
    remote_dir: str = ""
    job_output_dir: str = "/tmp/recsearch-jobs"  # with remote_dir: the job's own scratch output

    def __post_init__(self) -> None:
        if self.remote_dir and not remote.is_url(self.remote_dir):
            raise ValueError(
                f"runner.torchx.remote_dir must be an fsspec URL (s3://..., gs://..., file:///...), "
                f"got {self.remote_dir!r}; for a shared filesystem leave it empty"
            )


def load_components() -> Any:
    """launch/components.py, the torchx components. It lives beside the package, not in it: under
    `python -m` from the repository root it imports as `launch.components`; under the `recsearch`
    console script the repository root is not on sys.path, so load it from the checkout by path."""
    try:
        from launch import components

        return components
    except ImportError:
        pass
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "launch" / "components.py"
    if not path.is_file():
        raise RuntimeError(f"runner torchx uses launch/components.py, which is not at {path}: "
                           f"run the search from a recsearch checkout")
    spec = importlib.util.spec_from_file_location("recsearch_launch_components", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


class TorchxRunner:
    """One torchx job per trial, running the `train` component on the trial's config."""

    def __init__(self, settings: TorchxSettings = TorchxSettings(), serving_batch: int = 256):
        try:
            from torchx.runner import get_runner
        except ImportError as err:  # optional dependency (the `launch` extra)
            raise RuntimeError("runner torchx needs torchx installed: pip install torchx") from err
        self.settings = settings
        self.serving_batch = serving_batch
        if settings.remote_dir:  # each trial's files go there: no backend, no trial could run
            try:
                remote.check_backend(settings.remote_dir)
            except remote.RemoteError as err:
                raise RuntimeError(f"runner.torchx.remote_dir: {err}") from err
        self._runner = get_runner()
        # A missing or mistyped scheduler option fails here, before any trial, not at submission.
        # (Creating torchx's local scheduler sets SIGINT and SIGTERM handlers of its own, which
        # would turn the search's Ctrl-C into torchx's SignalException: the search's are kept.)
        try:
            with handlers_kept():
                self._runner.scheduler_run_opts(settings.scheduler).resolve(dict(settings.cfg))
        except KeyError as err:
            raise RuntimeError(f"runner.torchx.scheduler: {err.args[0]}") from err
        except Exception as err:  # torchx's InvalidRunConfigException (and ValueError on bad types)
            raise RuntimeError(f"runner.torchx.cfg for scheduler {settings.scheduler!r}: {err}") from err
        if settings.scheduler == "kubernetes":
            if not settings.image:
                raise RuntimeError(
                    "runner.torchx.image is required for scheduler 'kubernetes': an image built from the "
                    "repository's Dockerfile, pushed where the cluster pulls from (docs/SEARCH.md, \"Images and "
                    "the torchx workspace\"); trials run it as it is"
                )
            if not settings.dryrun:  # a dry run renders requests without the cluster
                self._runner.close()
                self._runner = get_runner(client=kubernetes_api_client())

    def app(self, spec: TrialSpec, workdir: Path, config_at: str | None = None):  # -> AppDef
        """The trial's job: the `train` component on workdir/trial.yaml (or config_at, a URL)."""
        components = load_components()
        s = self.settings
        env = {}
        if s.scheduler.startswith("local"):
            # torchx's ddp runs `torchrun` from PATH: the one installed beside this interpreter
            env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        kwargs: dict[str, Any] = {
            "config": config_at or str(Path(workdir) / TRIAL_CONFIG),
            "name": f"recsearch-trial-{spec.trial_id}",
            "nproc_per_node": spec.topology.world_size,
            "cpu": s.cpu, "gpu": s.gpu, "memMB": s.memMB, "h": s.h, "env": env,
            "mounts": list(s.mounts) or None,
        }
        if s.image:
            kwargs["image"] = s.image
        return components.train(**kwargs)

    def stage_remote(self, spec: TrialSpec, workdir: Path) -> str:
        """Put the trial's config (and placement) under a fresh remote_dir/trials/<id>/<attempt>/
        with the job's own output_dir and `upload_to` that directory; returns its URL. A fresh
        attempt directory per submission means a retried trial or a later rung never reads an
        earlier attempt's result."""
        s = self.settings
        attempt = f"attempt-{time.time_ns()}"
        url = remote.join(s.remote_dir, "trials", str(spec.trial_id), attempt)
        raw = yaml.safe_load((Path(workdir) / TRIAL_CONFIG).read_text())
        search = Path(workdir).resolve().parent.parent.name
        raw["output_dir"] = f"{s.job_output_dir.rstrip('/')}/{search}/{spec.trial_id}-{attempt}"
        raw["upload_to"] = url
        plan = raw.get("plan")
        if plan and plan != "torchrec" and not remote.is_url(plan):
            raw["plan"] = remote.join(url, Path(plan).name)
            remote.write_text(raw["plan"], Path(plan).read_text())
        remote.write_text(remote.join(url, TRIAL_CONFIG), yaml.safe_dump(raw, sort_keys=False))
        return url

    def fetch_remote(self, handle: Handle) -> None:
        """Download the job's tb/ and result.json into the trial's directory (nothing if the job
        uploaded nothing: then the result is missing, and read_result says so)."""
        url = handle.info.get("remote_url")
        if not url:
            return
        try:
            remote.download_tree(remote.join(url, "tb"), Path(handle.workdir) / "tb")
            text = remote.read_text(remote.join(url, RESULT_FILE))
        except FileNotFoundError:
            return
        except OSError as err:
            handle.error = f"{handle.error + '; ' if handle.error else ''}cannot fetch from {url}: {err}"
            return
        remote.write_text(Path(handle.workdir) / RESULT_FILE, text)

    def submit(self, spec: TrialSpec, workdir: Path) -> Handle:
        s = self.settings
        handle = Handle(spec.trial_id, Path(workdir), time.time())
        config_at = None
        if s.remote_dir:
            handle.info["remote_url"] = self.stage_remote(spec, workdir)
            config_at = remote.join(handle.info["remote_url"], TRIAL_CONFIG)
        app = self.app(spec, workdir, config_at)
        if s.dryrun:
            handle.info["dryrun"] = repr(self._runner.dryrun(app, s.scheduler, cfg=dict(s.cfg) or None))
            handle.state = TrialState.PENDING
            return handle
        handle.native = self._runner.run(app, s.scheduler, cfg=dict(s.cfg) or None)
        handle.info["app_handle"] = handle.native
        return handle

    def poll(self, handle: Handle) -> TrialState:
        if handle.state is not TrialState.RUNNING:
            return handle.state
        from torchx.specs import AppState, is_terminal

        status = self._runner.status(handle.native)
        if status is None:
            handle.error = f"torchx lost the job {handle.native}"
        elif not is_terminal(status.state):
            if status.state is AppState.RUNNING and handle.started_at_s is None:
                handle.started_at_s = time.time()
            return TrialState.RUNNING
        elif status.state is not AppState.SUCCEEDED:
            handle.error = f"torchx job {handle.native} ended {status.state.name}"
            if status.msg:
                handle.error += f": {status.msg}"
        handle.finished_at_s = time.time()
        self.fetch_remote(handle)
        handle.state = read_result(handle.workdir, handle.trial_id, self.serving_batch, handle.error).state
        return handle.state

    def result(self, handle: Handle) -> TrialResult:
        if handle.state is TrialState.PENDING:
            raise RuntimeError(f"trial {handle.trial_id} was a dryrun: no result")
        return read_result(handle.workdir, handle.trial_id, self.serving_batch, handle.error)

    def cancel(self, handle: Handle) -> None:
        if handle.native is not None and handle.state is TrialState.RUNNING:
            self._runner.cancel(handle.native)

    def cancel_orphan(self, app_handle: str) -> str:
        """End a job an earlier search process submitted (its handle from the journal) if the
        scheduler still runs it; returns what happened, for the log. torchx's local schedulers
        know only the jobs of their own process: a local_cwd job of a search that was SIGKILLed
        is unknown here (on SIGTERM or Ctrl-C the search ended it itself)."""
        from torchx.specs import is_terminal

        status = self._runner.status(app_handle)
        if status is None:
            return ("the scheduler does not know it (it ended and was forgotten, or it was a local job of the "
                    "process that died: torchx reaches those only from that process); if it still runs, end it yourself")
        if is_terminal(status.state):
            return f"already ended ({status.state.name})"
        self._runner.cancel(app_handle)
        return f"cancelled (it was {status.state.name})"

    def close(self) -> None:
        """Release torchx's schedulers (local_cwd: ends any job still running)."""
        self._runner.close()


def kubernetes_api_client() -> Any:
    """A Kubernetes API client for torchx's kubernetes scheduler, from the kube config (KUBECONFIG
    or ~/.kube/config) or else, in a pod, from its service account (in-cluster config). torchx
    0.7.0 only tries the kube config and, without one, warns and goes on with a client that has no
    host: each trial then fails at submission (`LocationValueError: No host specified.`). Without
    either, this fails up front (RuntimeError), before the search writes any trial."""
    try:
        from kubernetes import client, config
    except ImportError as err:
        raise RuntimeError("runner.torchx.scheduler kubernetes needs the kubernetes client: "
                           "pip install kubernetes (torchx[kubernetes])") from err
    configuration = client.Configuration()
    try:
        config.load_kube_config(client_configuration=configuration)
    except Exception as kube_err:  # noqa: BLE001 - ConfigException, an unreadable file, ...
        try:
            config.load_incluster_config(client_configuration=configuration)
        except Exception as pod_err:  # noqa: BLE001
            raise RuntimeError(
                "runner.torchx.scheduler kubernetes: no Kubernetes credentials to submit trials with: "
                f"no kube config ({kube_err}) and no in-cluster config ({pod_err}). The search submits "
                "each trial as a Volcano job: run it where a kubeconfig (KUBECONFIG or ~/.kube/config) "
                "reaches the cluster, or in a pod whose service account may create, get and delete "
                "jobs.batch.volcano.sh (and get pods and their logs) in the namespace"
            ) from pod_err
    return client.ApiClient(configuration)


def make_runner(kind: str, serving_batch: int, threads: int | None, torchx: TorchxSettings,
                concurrency: int = 1) -> TrialRunner:
    if kind == "inprocess":
        return InProcessRunner(serving_batch, threads)
    if kind == "subprocess":
        return SubprocessRunner(serving_batch, threads)
    if kind == "pool":
        return PoolRunner(serving_batch, threads, size=concurrency)
    if kind == "torchx":
        return TorchxRunner(torchx, serving_batch)
    raise ValueError(f"runner must be inprocess, subprocess, pool or torchx, got {kind!r}")
