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
  many at a time as the loop submits; they die with the search process (PR_SET_PDEATHSIG), so a
  killed search leaves no orphan writing into a trial a resumed search will retry.
- TorchxRunner: the `train` component of launch/components.py as one torchx job per trial
  (local_cwd, slurm, kubernetes, ...); the workdir must be on storage the job can write
  (a shared filesystem for Slurm, a mounted volume for Kubernetes), or, with remote_dir, trial
  files travel through an fsspec URL (recsearch.remote). dryrun=True only renders the scheduler
  request (tested for Slurm and Kubernetes).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
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
from recsearch.types import TrialResult, TrialSpec, TrialState

TRIAL_CONFIG = "trial.yaml"
RESULT_FILE = "result.json"  # what recsearch.train.trainer writes (trainer.RESULT_FILE)
LOG_FILE = "train.log"
OK_STATUSES = ("completed", "early_stopped")


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


class TrialRunner(Protocol):
    def submit(self, spec: TrialSpec, workdir: Path) -> Handle: ...

    def poll(self, handle: Handle) -> TrialState: ...

    def result(self, handle: Handle) -> TrialResult: ...

    def cancel(self, handle: Handle) -> None: ...


# ---- result.json -> TrialResult ------------------------------------------------------------------
def read_result(
    workdir: Path, trial_id: int, serving_batch: int, runner_error: str | None = None
) -> TrialResult:
    """The trial's outcome from its result.json. Validation AUC is the AUC; latency is the p50/p99
    at the serving batch. A missing, unreadable or failed result is FAILED with the reason."""
    path = Path(workdir) / RESULT_FILE
    if not path.exists():
        error = runner_error or "the run ended without writing result.json"
        return TrialResult(trial_id, TrialState.FAILED, error=f"{error} ({path} missing)")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return TrialResult(trial_id, TrialState.FAILED, error=f"{path}: unreadable result: {err}")
    status = raw.get("status")
    if status not in OK_STATUSES:
        if status == "diverged":
            error = f"non-finite loss (diverged) at step {raw.get('steps')}: last loss {raw.get('last_loss')}"
        else:
            error = raw.get("error") or f"run ended with status {status!r}"
        if runner_error and runner_error not in error:
            error = f"{error}; {runner_error}"
        return TrialResult(trial_id, TrialState.FAILED, error=error)
    val = raw.get("metrics", {}).get("val", {})
    latency = raw.get("latency_ms", {}).get(str(serving_batch), {})
    auc = _finite(val.get("auc"))
    if auc is None:
        return TrialResult(trial_id, TrialState.FAILED, error=f"{path}: no finite validation AUC")
    return TrialResult(
        trial_id=trial_id,
        state=TrialState.COMPLETE,
        auc=auc,
        log_loss=_finite(val.get("log_loss")),
        accuracy=_finite(val.get("accuracy")),
        step_time_ms=_finite(raw.get("step_time_ms")),
        latency_p50_ms=_finite(latency.get("p50_ms")),
        latency_p99_ms=_finite(latency.get("p99_ms")),
        latency_spread=_finite(latency.get("spread")),
        latency_reference_p50_ms=_finite(latency.get("reference_p50_ms")),
    )


def result_notes(workdir: Path) -> dict[str, Any]:
    """Numbers from result.json that have no TrialResult field (for the store's notes)."""
    try:
        raw = json.loads((Path(workdir) / RESULT_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    notes: dict[str, Any] = {}
    test_auc = _finite(raw.get("metrics", {}).get("test", {}).get("auc"))
    if test_auc is not None:
        notes["test_auc"] = test_auc
    for key in ("samples_per_s", "steps", "train_seconds", "dense_parameters"):
        value = raw.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            notes[key] = value
    if raw.get("peak_memory_mb_per_rank"):
        notes["peak_memory_mb_per_rank"] = raw["peak_memory_mb_per_rank"]
    rows = raw.get("config", {}).get("train_rows")
    if isinstance(rows, int):
        notes["train_rows"] = rows
    return notes


def _finite(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


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
def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: deliver SIGKILL to the child when the search process dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


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
        repo_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, **self.env}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)
        log = open(workdir / LOG_FILE, "ab")
        try:
            # its own process group, so cancel() (Ctrl-C, the trial timeout) ends torchrun's
            # ranks too, not only their launcher
            proc = subprocess.Popen(
                self.command(spec, workdir),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
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
        handle.finished_at_s = time.time()
        handle.info["returncode"] = code
        if code != 0:
            tail = _log_tail(handle.workdir)
            handle.error = _signal_error(code) + (f"; log: {tail}" if tail and code > 0 else "")
        handle.state = read_result(handle.workdir, handle.trial_id, self.serving_batch, handle.error).state
        return handle.state

    def result(self, handle: Handle) -> TrialResult:
        if handle.state is TrialState.RUNNING:
            raise RuntimeError(f"trial {handle.trial_id} is still running")
        return read_result(handle.workdir, handle.trial_id, self.serving_batch, handle.error)

    def cancel(self, handle: Handle) -> None:
        """Kill the trial's whole process group (SIGKILL) and reap it."""
        proc: subprocess.Popen = handle.native
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
            proc.wait()


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
        self._runner = get_runner()
        # A missing or mistyped scheduler option fails here, before any trial, not at submission.
        try:
            self._runner.scheduler_run_opts(settings.scheduler).resolve(dict(settings.cfg))
        except KeyError as err:
            raise RuntimeError(f"runner.torchx.scheduler: {err.args[0]}") from err
        except Exception as err:  # torchx's InvalidRunConfigException (and ValueError on bad types)
            raise RuntimeError(f"runner.torchx.cfg for scheduler {settings.scheduler!r}: {err}") from err

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

    def close(self) -> None:
        """Release torchx's schedulers (local_cwd: ends any job still running)."""
        self._runner.close()


def make_runner(kind: str, serving_batch: int, threads: int | None, torchx: TorchxSettings) -> TrialRunner:
    if kind == "inprocess":
        return InProcessRunner(serving_batch, threads)
    if kind == "subprocess":
        return SubprocessRunner(serving_batch, threads)
    if kind == "torchx":
        return TorchxRunner(torchx, serving_batch)
    raise ValueError(f"runner must be inprocess, subprocess or torchx, got {kind!r}")
