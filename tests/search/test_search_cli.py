"""`recsearch search` as a user runs it: a subprocess-runner search SIGKILLed mid-trial, then
`--resume`: no finished trial is lost or run twice, the orphaned trial is retried, the budget is
met exactly; the search's own trainer children die with it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recsearch.search.store import JournalStore
from recsearch.types import TrialState
from tests.procs import all_dead, children_within
from tests.search.test_loop import learnable_data, search_config, write_config  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "recsearch.cli", "search"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["subprocess", "pool"])
def test_sigkill_mid_trial_then_resume_loses_nothing_and_duplicates_nothing(tmp_path, learnable_data, kind):  # noqa: F811
    """With either runner: the trainer children (subprocess) or the worker processes (pool) die
    with the search."""
    raw = search_config(
        learnable_data,
        **{"runner.kind": kind, "runner.concurrency": 1, "fidelity.train_rows": [6144],
           "trials": 3, "controller": "actor_critic", "heartbeat_s": 0.5}
    )
    out = tmp_path / "out"
    cfg = write_config(tmp_path, raw)
    proc = subprocess.Popen([*CLI, "--config", str(cfg), "--out", str(out)], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # wait until the reference and one candidate are finished and the next candidate is training
    deadline = time.time() + 400
    victim = None
    while time.time() < deadline and proc.poll() is None:
        if (out / "journal.jsonl").exists():
            records = JournalStore(out).trials()
            finished = [r for r in records if r.state.finished]
            running = [r for r in records if r.state is TrialState.RUNNING]
            if len(finished) >= 2 and running:
                log = out / "trials" / str(running[0].trial_id) / "train.log"
                if log.exists() and "step" in log.read_text():
                    victim = running[0]
                    break
        time.sleep(0.2)
    assert victim is not None, proc.communicate()[0][-3000:] if proc.poll() is not None else "timed out"
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {r.trial_id: r for r in JournalStore(out).trials() if r.state.finished}
    assert victim.trial_id not in before
    assert children and all_dead(int(p) for p in children), "trainer children outlived the search"

    resumed = subprocess.run([*CLI, "--resume", str(out)], cwd=REPO, env=_env(), capture_output=True,
                             text=True, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "1 were running when the search died" in resumed.stdout
    after = JournalStore(out).trials()
    cands = [r for r in after if not r.notes.get("reference")]
    assert len([r for r in after if r.notes.get("reference")]) == 1
    assert len(cands) == 3 and all(r.state.finished for r in cands)  # the budget, exactly
    for trial_id, rec in before.items():  # finished before the kill: untouched, never rerun
        now = next(r for r in after if r.trial_id == trial_id)
        assert (now.state, now.result, now.attempts) == (rec.state, rec.result, rec.attempts)
    retried = next(r for r in after if r.trial_id == victim.trial_id)
    assert retried.state is TrialState.COMPLETE and retried.attempts == 2 and "died with the search" in retried.notes["retry"]
    # the killed attempt's files were set aside; the trial dir holds the retry's finished run
    trial_dir = out / "trials" / str(victim.trial_id)
    assert (trial_dir / "attempt_1" / "train.log").exists()
    assert json.loads((trial_dir / "result.json").read_text())["status"] == "completed"
    # journal lines: each candidate created once; RUNNING set once per attempt
    lines = [json.loads(x) for x in (out / "journal.jsonl").read_text().splitlines()]
    creates = [e["trial_id"] for e in lines if e["op"] == "create"]
    assert len(creates) == len(set(creates)) == 4
    assert "configurations trained" in resumed.stdout and "Pareto front" in resumed.stdout


def _running_trial_log(out: Path, deadline_s: float) -> Path | None:
    """The train.log of a trial the journal says is RUNNING, once its trainer wrote one."""
    while time.monotonic() < deadline_s:
        if (out / "journal.jsonl").exists():
            running = [r for r in JournalStore(out).trials() if r.state is TrialState.RUNNING]
            for record in running:
                log = out / "trials" / str(record.trial_id) / "train.log"
                if log.exists():
                    return log
        time.sleep(0.05)
    return None


@pytest.mark.slow
def test_ctrl_c_cancels_the_running_trial_and_exits_130(tmp_path, learnable_data):  # noqa: F811
    """SIGINT to the search process alone (not its process group, so the trial's trainer is not
    signalled too): the search cancels the trial itself, says how to resume, exits 130, and
    journals the trial back to PENDING, its cancelled run not counted as an attempt, for --resume
    to run again."""
    raw = search_config(learnable_data, **{"runner.kind": "subprocess", "reference": False, "trials": 2,
                                           "objective.budget_ms": 100.0, "fidelity.train_rows": [12288]})
    out = tmp_path / "out"
    proc = subprocess.Popen([*CLI, "--config", str(write_config(tmp_path, raw)), "--out", str(out)], cwd=REPO,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log = _running_trial_log(out, time.monotonic() + 120)
        assert log is not None, "no trial started"
        # the runner creates train.log just before it starts the trainer: wait for the child itself
        children = children_within(proc.pid, 60)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, output[-3000:]
    assert f"[search] interrupted (Ctrl-C); resume with: recsearch search --resume {out}" in output
    assert children and all_dead(children), "the trial's trainer outlived the search"
    trial_id = int(log.parent.name)
    (record,) = [r for r in JournalStore(out).trials() if r.trial_id == trial_id]
    assert record.state is TrialState.PENDING and not (log.parent / "result.json").exists()
    assert record.runs_counted(0) == 0 and "cancelled by the search (interrupted (Ctrl-C))" in record.notes["interrupted"]


def test_search_help_and_argument_errors():
    proc = subprocess.run([*CLI, "--help"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and "--resume" in proc.stdout and "--config" in proc.stdout
    proc = subprocess.run(CLI, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "exactly one of --config FILE or --resume DIR" in proc.stderr


def test_torchx_dryrun_search_prints_the_first_trials_slurm_request_and_runs_nothing(tmp_path, learnable_data, capsys):  # noqa: F811
    from recsearch.search import loop

    raw = search_config(learnable_data, **{"runner.kind": "torchx", "runner.torchx": {
        "scheduler": "slurm", "dryrun": True, "gpu": 2, "cfg": {"partition": "gpu"}}})
    assert loop.main(["--config", str(write_config(tmp_path, raw)), "--out", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    trial_cfg = tmp_path / "out" / "trials" / "0" / "trial.yaml"
    assert "#SBATCH --job-name=recsearch_trial_0-0" in text and "--partition=gpu" in text
    assert f"recsearch.cli train --config {trial_cfg.resolve()}" in text
    assert trial_cfg.exists() and not (tmp_path / "out" / "trials" / "0" / "result.json").exists()


def test_torchx_dryrun_search_with_a_remote_dir_stages_the_trial_at_the_url(tmp_path, learnable_data, capsys):  # noqa: F811
    import uuid

    import yaml

    from recsearch import remote
    from recsearch.search import loop

    url = f"memory://recsearch-search-{uuid.uuid4().hex}"
    raw = search_config(learnable_data, **{"runner.kind": "torchx", "runner.torchx": {
        "scheduler": "kubernetes", "dryrun": True, "remote_dir": url, "image": "ghcr.io/acme/recsearch:0.1",
        "cfg": {"queue": "research"}}})
    assert loop.main(["--config", str(write_config(tmp_path, raw)), "--out", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    (attempt,) = remote._fs(f"{url}/trials/0")[0].ls(f"/{url.split('://')[1]}/trials/0", detail=False)
    staged = f"memory://{attempt.lstrip('/')}"
    assert f"--config {staged}/trial.yaml" in text and "image: ghcr.io/acme/recsearch:0.1" in text
    job_cfg = yaml.safe_load(remote.read_text(f"{staged}/trial.yaml"))
    local_cfg = yaml.safe_load((tmp_path / "out" / "trials" / "0" / "trial.yaml").read_text())
    assert job_cfg["upload_to"] == staged and job_cfg["arch"] == local_cfg["arch"]
    assert job_cfg["hparams"] == local_cfg["hparams"] and job_cfg["train_rows"] == local_cfg["train_rows"]


def test_a_missing_scheduler_option_stops_the_search_before_any_trial(tmp_path, learnable_data, capsys):  # noqa: F811
    from recsearch.search import loop

    raw = search_config(learnable_data, **{"runner.kind": "torchx", "runner.torchx": {"scheduler": "kubernetes"}})
    assert loop.main(["--config", str(write_config(tmp_path, raw)), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "runner.torchx.cfg for scheduler 'kubernetes'" in err and "Required run option: queue" in err
    assert not (tmp_path / "out" / "trials").exists()
    raw = search_config(learnable_data, **{"runner.kind": "torchx", "runner.torchx": {"scheduler": "slurmm"}})
    assert loop.main(["--config", str(write_config(tmp_path, raw)), "--out", str(tmp_path / "out2")]) == 2
    assert "Undefined scheduler backend: slurmm" in capsys.readouterr().err


def test_search_component_runs_the_search_command():
    from launch import components

    app = components.search("trials=4", config="configs/search/quickstart.yaml", out="runs/s")
    assert app.roles[0].args == ["-m", "recsearch.cli", "search", "--config", "configs/search/quickstart.yaml",
                                 "--out", "runs/s", "--resume-if-exists", "trials=4"]
    assert components.search(resume="runs/s").roles[0].args[-2:] == ["--resume", "runs/s"]


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "search").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_search_configs_are_valid(path):
    from recsearch import config
    from recsearch.search.settings import SearchConfig
    from recsearch.search.space import SearchSpace

    cfg = config.build(SearchConfig, config.load_yaml(path), origin=str(path))
    assert path.read_text().startswith("# Used by: recsearch search --config configs/search/")
    space = SearchSpace(cfg.space, cfg.topology.topology(), cfg.fidelity.train_rows[-1])
    assert space.cardinality > cfg.trials
    assert config.load_yaml(cfg.train)  # its base train config exists


def test_a_kubernetes_search_without_credentials_stops_before_any_trial(tmp_path, learnable_data, capsys, monkeypatch):  # noqa: F811
    from kubernetes import config

    from recsearch.search import loop

    def missing(*_args, **_kwargs):
        raise config.ConfigException("not here")

    monkeypatch.setattr(config, "load_kube_config", missing)
    monkeypatch.setattr(config, "load_incluster_config", missing)
    raw = search_config(learnable_data, **{"runner.kind": "torchx", "runner.torchx": {
        "scheduler": "kubernetes", "image": "ghcr.io/acme/recsearch:0.1", "cfg": {"queue": "research"}}})
    assert loop.main(["--config", str(write_config(tmp_path, raw)), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no Kubernetes credentials to submit trials with" in err and "jobs.batch.volcano.sh" in err
    assert not (tmp_path / "out" / "trials").exists()
