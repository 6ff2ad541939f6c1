"""Pool workers end with the process they work for, SIGKILL included (recsearch.data.parent_watch)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from recsearch.data import parent_watch
from tests.procs import all_dead, pid_alive

REPO = Path(__file__).resolve().parents[2]


def test_forkserver_workers_end_when_their_parent_is_sigkilled(tmp_path):
    # (without the initializer both workers were still running 10 s later, checked 2026-12-05)
    # the parent starts a forkserver pool of 2 as preprocess does, prints its workers' pids, waits
    script = textwrap.dedent("""
        import concurrent.futures, json, multiprocessing, os, sys, time
        from recsearch.data import parent_watch

        def pid_after(seconds):
            time.sleep(seconds)  # both workers get one of the first two
            return os.getpid()

        if __name__ == "__main__":
            ctx = multiprocessing.get_context("forkserver")
            pool = concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx, initializer=parent_watch.exit_with,
                                                          initargs=(os.getpid(),))
            pids = set()
            while len(pids) < 2:
                pids |= {f.result() for f in [pool.submit(pid_after, 0.3) for _ in range(2)]}
            print(json.dumps(sorted(pids)), flush=True)
            time.sleep(600)
    """)
    (tmp_path / "parent.py").write_text(script)
    parent = subprocess.Popen([sys.executable, str(tmp_path / "parent.py")], cwd=REPO, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        workers = json.loads(parent.stdout.readline())
        assert len(workers) == 2 and all(pid_alive(p) for p in workers)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        assert all_dead(workers, timeout=10), f"workers {workers} outlived their parent"
    finally:
        parent.kill()
        parent.wait()


def test_a_worker_whose_parent_is_already_gone_exits_at_once(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    worker = subprocess.run(
        [sys.executable, "-c", f"import time; from recsearch.data import parent_watch; "
                               f"parent_watch.exit_with({gone.pid}); time.sleep(30)"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=20, check=False)
    assert worker.returncode == parent_watch.PARENT_GONE_EXIT


def test_a_stopped_watch_is_joined_and_the_process_goes_on():
    # the parent of this test process is alive: the watch waits until stopped, then its thread ends
    watch = parent_watch.exit_with(os.getppid())
    assert watch.thread.is_alive()
    watch.stop()
    watch.stop()  # a second stop (the exit finalizer after an explicit one) does nothing
    assert not watch.thread.is_alive()
    assert "recsearch-parent-watch" not in [t.name for t in threading.enumerate()]
