"""A pool worker: one long-lived process that runs `recsearch train` trials back to back.

    python -m recsearch.search.worker [--threads N] [--parent-pid PID] [--train-main module:function]

The pool runner (recsearch.search.runners.PoolRunner) starts one per concurrency slot. The worker
pays once for what every trial of a subprocess runner pays again: the interpreter, the imports
(torch, torchrec, fbgemm), the CUDA context, and, through a SplitCache it owns, the loaded data
splits. Then it reads jobs, one JSON line each on stdin:

    {"job": 3, "trial_id": 7, "config": ".../trials/7/trial.yaml", "log": ".../trials/7/train.log"}

and runs each exactly as `recsearch train --config <config>` would run in a fresh process (the
trainer's main(argv) in this process), with the trial's stdout and stderr, C-level output
included, appended to its log. The trial reports through its result.json, as with every runner.
After each job one JSON line goes back on stdout (its original descriptor, kept only for this):

    {"event": "done", "job": 3, "trial_id": 7, "returncode": 0, "seconds": 4.2, "retire": null, ...}

Between trials the worker puts back what a trial may change in a process: the environment
variables and working directory, the torch.distributed process group (destroyed), compiled graphs
(torch._dynamo.reset), CUDA memory (freed to the driver, peak counters reset), torch's thread
count, default dtype, grad mode and matmul settings, the process's peak-RSS counter (so result.json's
peak memory is this trial's), and it seeds Python's and numpy's global generators from the trial's
seed (the trainer seeds torch itself). Model, optimizer state and TensorBoard writers are the
trainer's locals: they are gone when it returns, and a garbage collection frees them before the
next job. A trial that raises (rather than returning an exit code), or that leaves a thread
running, retires its worker: the worker says so in the done line and exits, and the runner starts
a fresh one. A crash, a kill or an out-of-memory death of the process is seen by the runner as
the process's end.

The worker dies with the search process (PR_SET_PDEATHSIG, set first thing, then a check that the
parent is still the one that started it) and exits when its stdin closes.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import os
import random
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from recsearch.search.die_with_parent import request_parent_death_signal

DEFAULT_TRAIN_MAIN = "recsearch.train.trainer:main"
# how long threads a trial started may take to end after it returned (a prefetcher's hand-off)
THREAD_GRACE_S = 2.0


def _die_with_parent(parent_pid: int | None) -> None:
    """Linux: SIGKILL this process when its parent dies; exit now if it already has."""
    request_parent_death_signal()
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(0)  # the search died before the request above was in place


def load_train_main(spec: str) -> Callable[..., int]:
    """'module:function' -> the function (by default the trainer's main(argv) -> int)."""
    module_name, _, name = spec.partition(":")
    return getattr(importlib.import_module(module_name), name or "main")


class _TorchSettings:
    """Process-wide torch settings a trial may change, put back after it."""

    def __init__(self, torch: Any):
        self.torch = torch
        self.threads = torch.get_num_threads()
        self.dtype = torch.get_default_dtype()
        self.grad = torch.is_grad_enabled()
        self.deterministic = torch.are_deterministic_algorithms_enabled()
        self.deterministic_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        self.matmul_precision = torch.get_float32_matmul_precision()
        self.cuda_matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
        self.cudnn = (torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
                      torch.backends.cudnn.deterministic)

    def restore(self) -> None:
        torch = self.torch
        torch.set_num_threads(self.threads)
        torch.set_default_dtype(self.dtype)
        torch.set_grad_enabled(self.grad)
        torch.use_deterministic_algorithms(self.deterministic, warn_only=self.deterministic_warn_only)
        torch.set_float32_matmul_precision(self.matmul_precision)
        torch.backends.cuda.matmul.allow_tf32 = self.cuda_matmul_tf32
        (torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
         torch.backends.cudnn.deterministic) = self.cudnn


def _trial_seed(config_path: str) -> int:
    """hparams.seed of the trial's config (0 when it cannot be read: the trainer will say why)."""
    import yaml

    try:
        raw = yaml.safe_load(Path(config_path).read_text()) or {}
        seed = int((raw.get("hparams") or {}).get("seed", 0))
    except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError):
        return 0
    return seed % 2**32


def _reset_peak_rss() -> None:
    """Linux: start the process's peak-RSS counter (ru_maxrss, which the trainer reports on a CPU)
    afresh at the current RSS, so a trial's peak is its own, not the worker's."""
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


class Worker:
    """Runs jobs in this process; owns the split cache and the clean state trials start from."""

    def __init__(self, train_main: Callable[..., int], split_cache: Any = None,
                 startup_error: str | None = None):
        self.train_main = train_main
        self.split_cache = split_cache
        self.startup_error = startup_error  # the imports failed: every job fails with this
        self.trials = 0
        self._pass_cache = False
        if split_cache is not None:
            import inspect

            try:
                self._pass_cache = "split_cache" in inspect.signature(train_main).parameters
            except (TypeError, ValueError):
                self._pass_cache = False

    def run(self, job: dict) -> dict:
        """One trial, its output appended to job['log']; returns the done message."""
        started = time.perf_counter()
        log_fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        _redirect_output(log_fd)
        os.close(log_fd)
        retire: str | None = None
        code = 1
        try:
            if self.startup_error is not None:
                sys.stderr.write(self.startup_error)
                retire = "the worker could not import the trainer"
            else:
                code, retire = self._train(job)
        finally:
            self.trials += 1
            _redirect_output(None)
        done = {"event": "done", "job": job["job"], "trial_id": job.get("trial_id"), "returncode": code,
                "retire": retire, "seconds": round(time.perf_counter() - started, 3), "trials": self.trials}
        cache = self.split_cache
        if cache is not None:
            done["cache"] = {"hits": cache.hits, "misses": cache.misses, "entries": len(cache),
                             "bytes": cache.nbytes, "max_bytes": cache.max_bytes, "used": self._pass_cache}
        return done

    def _train(self, job: dict) -> tuple[int, str | None]:
        torch = sys.modules.get("torch")  # imported with the trainer (a test's fake may not)
        env = dict(os.environ)
        cwd = os.getcwd()
        streams = (sys.stdout, sys.stderr)
        settings = _TorchSettings(torch) if torch is not None else None
        threads_before = set(threading.enumerate())
        seed = _trial_seed(job["config"])
        random.seed(seed)
        import numpy as np

        np.random.seed(seed)
        _reset_peak_rss()
        if torch is not None and torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()
        retire: str | None = None
        code = 1
        kwargs = {"split_cache": self.split_cache} if self._pass_cache else {}
        try:
            code = _exit_code(self.train_main(["--config", job["config"]], **kwargs))
        except SystemExit as exit_:  # argparse and explicit exits: the code a process would end with
            code = _exit_code(exit_.code)
            if exit_.code is not None and not isinstance(exit_.code, int):
                print(exit_.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 - what an uncaught exception does: traceback, exit 1
            traceback.print_exc()
            code = 1
            retire = "the trial raised an exception"
        finally:
            sys.stdout, sys.stderr = streams
            problem = self._clean_up(torch, env, cwd, settings, threads_before)
            if problem and retire is None:
                retire = problem
            if retire:
                print(f"[recsearch worker] retiring this worker: {retire}", file=sys.stderr, flush=True)
        return code, retire

    def _clean_up(self, torch: Any, env: dict, cwd: str, settings: _TorchSettings | None,
                  threads_before: set) -> str | None:
        """Put the process back as the trial found it; the reason the worker must retire, if any."""
        problem = None
        torch = torch or sys.modules.get("torch")  # a trial may have imported it
        dist = sys.modules.get("torch.distributed")
        try:
            if dist is not None and dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
        except Exception as err:  # noqa: BLE001
            problem = f"could not destroy the trial's process group ({type(err).__name__}: {err})"
        if os.environ != env:
            os.environ.clear()
            os.environ.update(env)
        with contextlib.suppress(OSError):
            os.chdir(cwd)
        if settings is not None:
            settings.restore()
        gc.collect()  # the trial's model, optimizer, loaders and their finalizers (prefetch threads)
        dynamo = sys.modules.get("torch._dynamo")
        if dynamo is not None:
            dynamo.reset()
        if torch is not None and torch.cuda.is_initialized():
            try:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            except Exception as err:  # noqa: BLE001 - a broken CUDA context: start afresh
                problem = problem or f"CUDA is unusable after the trial ({type(err).__name__}: {err})"
        deadline = time.monotonic() + THREAD_GRACE_S
        while True:
            left = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if left:
            problem = problem or f"threads still running after the trial: {', '.join(sorted(t.name for t in left))}"
        return problem


def _exit_code(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    return 1


def _redirect_output(fd: int | None) -> None:
    """Point descriptors 1 and 2 (and so sys.stdout / sys.stderr, and C-level output) at fd, or at
    /dev/null between trials."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    target = fd if fd is not None else os.open(os.devnull, os.O_WRONLY)
    os.dup2(target, 1)
    os.dup2(target, 2)
    if fd is None:
        os.close(target)


def _send(channel, message: dict) -> None:
    channel.write(json.dumps(message) + "\n")
    channel.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recsearch.search.worker",
                                     description="A search pool worker (started by runner.kind pool).")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per trial (0: leave as is)")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit if this is not the parent")
    parser.add_argument("--train-main", default=DEFAULT_TRAIN_MAIN, help="module:function run per job")
    parser.add_argument("--no-split-cache", action="store_true", help="read every trial's data afresh")
    parser.add_argument("--cache-fraction", type=float, default=0.25,
                        help="the split cache's cap, as a share of the memory available at start")
    args = parser.parse_args(argv)
    _die_with_parent(args.parent_pid)
    # The job and done channels get descriptors of their own; 0, 1 and 2 are the trials' (no stdin,
    # their log), so nothing a trial prints or reads can touch the protocol.
    jobs = os.fdopen(os.dup(0), "r")
    done = os.fdopen(os.dup(1), "w")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.close(null)
    _redirect_output(None)

    from recsearch import cli

    os.environ.setdefault("OMP_WAIT_POLICY", cli.OMP_WAIT_POLICY_DEFAULT)  # before torch starts OpenMP
    started = time.perf_counter()
    startup_error = None
    train_main: Callable[..., int] = lambda argv: 1  # noqa: E731 - replaced below unless imports fail
    split_cache = None
    try:
        train_main = load_train_main(args.train_main)  # torch, torchrec, fbgemm: once per worker
        torch = sys.modules.get("torch")
        if args.threads and torch is not None:
            torch.set_num_threads(args.threads)
        if not args.no_split_cache:
            from recsearch.data.split_cache import SplitCache, available_memory_bytes

            split_cache = SplitCache(int(available_memory_bytes() * args.cache_fraction))
    except BaseException:  # noqa: BLE001 - reported in the first job's log
        startup_error = traceback.format_exc()
    worker = Worker(train_main, split_cache, startup_error)
    _send(done, {"event": "ready", "pid": os.getpid(), "import_s": round(time.perf_counter() - started, 3)})
    while True:
        line = jobs.readline()
        if not line:
            return 0  # the runner closed the pool
        message = worker.run(json.loads(line))
        _send(done, message)
        if message["retire"]:
            return 0


if __name__ == "__main__":
    raise SystemExit(main())
