"""Trainers for pool-worker tests, loaded by the worker with --train-main tests.search.pool_trainers:NAME.

- `fake`: does what the file `action` beside the trial's config says (ok, exit2, raise, segv,
  hang, slow_beating, leak_env, leak_thread), and for ok writes a result.json (what a trainer writes) that
  also records what it found in the process: environment, global random generators, pid.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

SERVING_BATCH = 64


def _result(workdir: Path, **extra) -> None:
    import numpy as np

    (workdir / "result.json").write_text(json.dumps({
        "status": "completed",
        "metrics": {"val": {"auc": 0.7, "log_loss": 0.5}, "test": {"auc": 0.7}},
        "latency_ms": {str(SERVING_BATCH): {"p50_ms": 1.0, "p99_ms": 1.5}},
        "train_seconds": 0.01,
        "seen": {"leak": os.environ.get("RECSEARCH_TEST_LEAK"), "random": random.random(),
                 "numpy": float(np.random.random()), "pid": os.getpid(), "cwd": os.getcwd()},
        **extra,
    }))


def fake(argv: list[str]) -> int:
    config = Path(argv[argv.index("--config") + 1])
    workdir = config.parent
    action = (workdir / "action").read_text().strip() if (workdir / "action").exists() else "ok"
    print(f"fake trainer: {action}", flush=True)
    if action == "exit2":
        print("recsearch train: train.yaml: epochs must be >= 1, got 0", file=sys.stderr)
        return 2
    if action == "raise":
        raise RuntimeError("CUDA out of memory (simulated by the fake trainer)")
    if action == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if action == "hang":
        # a child in the trial's process group, as torchrun's ranks or a compile pool would be
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        (workdir / "child.pid").write_text(str(child.pid))
        time.sleep(600)
    if action == "slow_beating":
        # works for 3 s, saying so in its progress file as the trainer does (every 0.2 s here),
        # and prints nothing: longer than the tests' stall timeout, and never stalled
        from recsearch.train.progress import ProgressFile

        progress = ProgressFile(workdir, interval_s=0.2)
        for step in range(150):
            progress.beat("train", step)
            time.sleep(0.02)
    if action == "leak_env":
        os.environ["RECSEARCH_TEST_LEAK"] = "1"
        os.chdir("/")
        random.random()
    if action == "leak_thread":
        threading.Thread(target=time.sleep, args=(30,), name="recsearch-test-leak", daemon=True).start()
    _result(workdir)
    return 0
