"""Every thread recsearch starts is joined before its owner returns, or owns nothing that holds
tensors: `recsearch search` and `--resume` exit 0 (a daemon thread still holding the search's
controller tensors at interpreter shutdown aborted them: exit 134, "terminate called without an
active exception")."""

from __future__ import annotations

import ast
import gc
import subprocess
import threading
import weakref

import pytest

from recsearch.data.loader import NpyBatchLoader
from recsearch.search import loop
from recsearch.search.store import JournalStore
from recsearch.types import TrialState
from tests.reliability.search_helpers import CLI, REPO, env, start_search, tiny_config
from tests.search.test_loop import write_config

PACKAGE = REPO / "recsearch"


def _thread_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name == "Thread":
                yield node


def test_every_thread_in_the_package_is_named_and_never_runs_a_bound_method():
    """The structural half of the rule, checked on the source: each threading.Thread the package
    creates is named recsearch-* (so the runtime checks below can find it) and its target is not a
    method of an object (a bound method keeps its owner, e.g. the Search and its controller's
    tensors, alive on the thread)."""
    sites = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for call in _thread_calls(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(REPO)}:{call.lineno}"
            sites.append(where)
            kwargs = {k.arg: k.value for k in call.keywords}
            name = kwargs.get("name")
            assert isinstance(name, ast.Constant) and str(name.value).startswith("recsearch-"), \
                f"{where}: threading.Thread without name='recsearch-...'"
            target = kwargs.get("target")
            assert target is not None, f"{where}: a Thread subclass or a target-less Thread"
            assert not (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                        and target.value.id == "self"), f"{where}: target is a bound method (self.{target.attr})"
    assert any("search/loop.py" in s for s in sites) and any("data/loader.py" in s for s in sites), sites


def _ours_or_blocking(threads) -> list[str]:
    return [f"{t.name} (daemon={t.daemon})" for t in threads
            if t.is_alive() and (t.name.startswith("recsearch-") or not t.daemon) and t is not threading.main_thread()]


def test_no_thread_outlives_an_inprocess_search_and_the_search_can_be_freed(tmp_path, learnable_data):
    """A real in-process search (the trainer's prefetch thread and TensorBoard writer included):
    when run() returns, no recsearch-* or non-daemon thread it started is alive, and nothing (no
    thread) keeps the Search object alive."""
    before = set(threading.enumerate())
    raw = tiny_config(learnable_data, **{"trials": 1, "controller": "actor_critic", "heartbeat_s": 0.1})
    res = loop.load_search_config(write_config(tmp_path, raw))
    out = tmp_path / "out"
    search = loop.Search(res, out, echo=lambda *a: None)  # its own InProcessRunner: real training
    assert search.run() == 0
    assert [r.state for r in JournalStore(out).trials()] == [TrialState.COMPLETE]
    left = [t for t in threading.enumerate() if t not in before]
    assert _ours_or_blocking(left) == []
    ref = weakref.ref(search)
    del search
    gc.collect()
    assert ref() is None, [type(r).__name__ for r in gc.get_referrers(ref())]


def test_the_heartbeat_thread_is_joined_however_run_ends(tmp_path, learnable_data):
    # a BaseException: a runner's Exception fails only its trial (tests/search/test_runner_errors.py),
    # so this stands for what does end the search (SystemExit, a kill raised out of the runner)
    class Boom(BaseException):
        pass

    class Exploding:
        def submit(self, spec, workdir):
            raise Boom("runner broke")

    search, _ = start_search(tmp_path, tiny_config(learnable_data, heartbeat_s=0.1), runner=Exploding())
    before = set(threading.enumerate())
    with pytest.raises(Boom):
        search.run()
    assert [t.name for t in threading.enumerate() if t not in before] == []  # joined, not just told to stop


def test_an_abandoned_prefetch_iterator_is_joined_when_collected(tiny_dataset):
    """The prefetcher's producer thread builds tensors: dropping its iterator without close()
    (an exception in a training loop) must still end and join the thread, not leave it to run
    into interpreter shutdown."""
    loader = NpyBatchLoader(tiny_dataset, "train", 4, prefetch_batches=1)
    it = iter(loader)
    next(it)
    producers = [t for t in threading.enumerate() if t.name == "recsearch-prefetch" and t.is_alive()]
    assert len(producers) == 1
    del it
    gc.collect()
    assert not producers[0].is_alive()  # joined by the finalizer, not merely told to stop


@pytest.mark.slow
def test_search_then_resume_ten_times_in_subprocesses_always_exits_0(tmp_path, learnable_data):
    """The issue's reproduction: a tiny actor-critic search (controller tensors), then --resume of
    the finished search 10 times; each a fresh interpreter that must exit 0."""
    raw = tiny_config(learnable_data, **{"trials": 1, "controller": "actor_critic", "heartbeat_s": 10.0})
    cfg = write_config(tmp_path, raw)
    out = tmp_path / "out"
    runs = [subprocess.run([*CLI, "search", "--config", str(cfg), "--out", str(out)], cwd=REPO, env=env(),
                           capture_output=True, text=True, timeout=600, check=False)]
    assert runs[0].returncode == 0, runs[0].stdout[-2000:] + runs[0].stderr[-2000:]
    for _ in range(10):
        runs.append(subprocess.run([*CLI, "search", "--resume", str(out)], cwd=REPO, env=env(),
                                   capture_output=True, text=True, timeout=600, check=False))
    codes = [r.returncode for r in runs]
    aborted = [r.stderr[-500:] for r in runs if r.returncode != 0]
    assert codes == [0] * 11, (codes, aborted)
    assert all("configurations trained" in r.stdout for r in runs)
    assert not any("terminate called" in r.stderr for r in runs)
