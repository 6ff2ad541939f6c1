"""Trial runners: result files to TrialResults, in-process failures, concurrent and killed
subprocess trials, torchx jobs (dryrun on Slurm and Kubernetes, a real one on local_cwd)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from dataclasses import replace

import pytest
import torch.distributed as dist
import yaml

from recsearch.search import die_with_parent, runners
from recsearch.search.runners import InProcessRunner, SubprocessRunner, TorchxRunner, TorchxSettings, read_result
from recsearch.types import ArchSpec, HParams, Topology, TrialSpec, TrialState
from tests.procs import all_dead, pid_alive, wait_until
from tests.search.test_loop import learnable_data  # noqa: F401  (the fixture)

REPO = Path(__file__).resolve().parents[2]


def _spec(trial_id: int = 0, world_size: int = 1) -> TrialSpec:
    return TrialSpec(trial_id, ArchSpec(8, (16, 8), (16, 1)), HParams(batch_size=256), 2048, Topology(world_size, 2**30))


def _trial_dir(tmp_path: Path, data: Path, name: str = "t0", **settings) -> Path:
    workdir = tmp_path / name
    workdir.mkdir(parents=True)
    raw = {
        "data_dir": str(data), "output_dir": str(workdir),
        "arch": {"embedding_dim": 8, "bottom_mlp": [16, 8], "top_mlp": [16, 1]},
        "hparams": {"batch_size": 256, "embedding_optimizer": "rowwise_adagrad", "embedding_lr": 0.1,
                    "dense_optimizer": "adagrad", "dense_lr": 0.05},
        "train_rows": 4096, "latency_iters": 3, "latency_batch_sizes": [1, 64], "log_every_steps": 8,
        "tensorboard": False,
    }
    raw.update(settings)
    (workdir / runners.TRIAL_CONFIG).write_text(yaml.safe_dump(raw))
    return workdir


def _write_result(workdir: Path, **raw) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / runners.RESULT_FILE).write_text(json.dumps(raw))


def test_read_result_takes_validation_auc_and_latency_at_the_serving_batch(tmp_path):
    _write_result(
        tmp_path, status="completed", step_time_ms=3.5,
        metrics={"val": {"auc": 0.77, "log_loss": 0.5, "accuracy": 0.8}, "test": {"auc": 0.76}},
        latency_ms={"1": {"p50_ms": 1.0, "p99_ms": 2.0}, "256": {"p50_ms": 4.0, "p99_ms": 9.0}},
        config={"train_rows": 5000}, samples_per_s=1000.0, peak_memory_mb_per_rank=[12.0],
    )
    r = read_result(tmp_path, 7, serving_batch=256)
    assert (r.trial_id, r.state, r.auc, r.log_loss, r.accuracy) == (7, TrialState.COMPLETE, 0.77, 0.5, 0.8)
    assert (r.latency_p50_ms, r.latency_p99_ms, r.step_time_ms) == (4.0, 9.0, 3.5)
    notes = runners.result_notes(tmp_path)
    assert notes["test_auc"] == 0.76 and notes["train_rows"] == 5000 and notes["peak_memory_mb_per_rank"] == [12.0]


def test_read_result_turns_every_bad_ending_into_a_failure_with_its_reason(tmp_path):
    r = read_result(tmp_path / "none", 1, 256, runner_error="process killed by SIGKILL")
    assert r.state is TrialState.FAILED and "SIGKILL" in r.error and "result.json missing" in r.error
    _write_result(tmp_path / "nan", status="diverged", steps=8, last_loss=float("nan"), metrics={})
    r = read_result(tmp_path / "nan", 1, 256)
    assert r.state is TrialState.FAILED and r.error == "non-finite loss (diverged) at step 8: last loss nan"
    _write_result(tmp_path / "crash", status="failed", error="RuntimeError: boom")
    assert read_result(tmp_path / "crash", 1, 256).error == "RuntimeError: boom"
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "result.json").write_text('{"status": "compl')
    assert "unreadable result" in read_result(tmp_path / "torn", 1, 256).error
    _write_result(tmp_path / "noauc", status="completed", metrics={"val": {"auc": float("nan")}})
    assert "no finite validation AUC" in read_result(tmp_path / "noauc", 1, 256).error


def test_inprocess_runner_records_an_exception_and_leaves_no_process_group(tmp_path):
    def crashing_trainer(argv):
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        raise RuntimeError("CUDA out of memory (simulated by this test's trainer)")

    workdir = tmp_path / "t"
    workdir.mkdir()
    runner = InProcessRunner(serving_batch=64, train_main=crashing_trainer)
    handle = runner.submit(_spec(), workdir)
    assert runner.poll(handle) is TrialState.FAILED
    r = runner.result(handle)
    assert "RuntimeError: CUDA out of memory" in r.error
    assert not dist.is_initialized()


def test_inprocess_runner_trains_for_real_and_reports_diverged_runs(tmp_path, learnable_data):  # noqa: F811
    runner = InProcessRunner(serving_batch=64)
    ok = runner.submit(_spec(0), _trial_dir(tmp_path, learnable_data, "ok"))
    r = runner.result(ok)
    assert r.state is TrialState.COMPLETE and 0.6 < r.auc < 1 and r.latency_p50_ms > 0
    assert "completed: val AUC" in (tmp_path / "ok" / runners.LOG_FILE).read_text()
    bad = runner.submit(_spec(1), _trial_dir(tmp_path, learnable_data, "nan", hparams={
        "batch_size": 256, "dense_optimizer": "sgd", "dense_lr": 1e12}))
    assert runner.poll(bad) is TrialState.FAILED and "non-finite loss" in runner.result(bad).error


@pytest.mark.slow
def test_subprocess_runner_runs_two_trials_at_once_and_reports_a_killed_one(tmp_path, learnable_data):  # noqa: F811
    runner = SubprocessRunner(serving_batch=64, threads=1)
    handles = [runner.submit(_spec(i), _trial_dir(tmp_path, learnable_data, f"t{i}")) for i in range(2)]
    both_running = all(runner.poll(h) is TrialState.RUNNING for h in handles)
    victim = runner.submit(_spec(2), _trial_dir(tmp_path, learnable_data, "victim", train_rows=12288, epochs=50))
    assert wait_until(lambda: all(runner.poll(h) is not TrialState.RUNNING for h in handles), 300), "trials still running"
    assert both_running  # the two were in flight together
    for h in handles:
        r = runner.result(h)
        assert r.state is TrialState.COMPLETE and 0.6 < r.auc < 1, r.error
        assert h.info["returncode"] == 0 and h.wall_s > 0
    # SIGKILL (what the OOM killer sends) mid-training: FAILED, saying so
    assert wait_until(lambda: "step" in (tmp_path / "victim" / runners.LOG_FILE).read_text(), 300), "victim never trained"
    os.kill(victim.info["pid"], signal.SIGKILL)
    assert wait_until(lambda: runner.poll(victim) is not TrialState.RUNNING, 60), "SIGKILLed trial still RUNNING"
    r = runner.result(victim)
    assert r.state is TrialState.FAILED and "killed by SIGKILL" in r.error and "result.json missing" in r.error


def test_subprocess_runner_reports_a_bad_config_with_the_log_tail(tmp_path, learnable_data):  # noqa: F811
    runner = SubprocessRunner(serving_batch=64)
    h = runner.submit(_spec(), _trial_dir(tmp_path, learnable_data, "bad", epochs=0))
    assert wait_until(lambda: runner.poll(h) is not TrialState.RUNNING, 120), "bad trial still running"
    r = runner.result(h)
    assert r.state is TrialState.FAILED and "exited with code 2" in r.error and "epochs must be >= 1" in r.error


def test_train_command_is_an_argument_list_with_torchrun_for_several_ranks(tmp_path):
    assert runners.train_command(tmp_path / "t.yaml", 1) == [
        sys.executable, "-m", "recsearch.cli", "train", "--config", str(tmp_path / "t.yaml")]
    cmd = runners.train_command(tmp_path / "t.yaml", 4)
    assert cmd[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4"]


def test_torchx_dryrun_renders_slurm_and_kubernetes_trial_jobs(tmp_path):
    workdir = tmp_path / "trials" / "3"
    workdir.mkdir(parents=True)
    slurm = TorchxRunner(TorchxSettings(scheduler="slurm", gpu=8, dryrun=True, cfg={"partition": "gpu"}))
    h = slurm.submit(_spec(3, world_size=8), workdir)
    text = h.info["dryrun"]
    assert h.state is TrialState.PENDING and "#SBATCH --job-name=recsearch_trial_3-0" in text
    assert "--partition=gpu" in text and "--gpus-per-task=8" in text
    assert f"recsearch.cli train --config {workdir / 'trial.yaml'}" in text and "--nproc_per_node 8" in text
    k8s = TorchxRunner(TorchxSettings(scheduler="kubernetes", gpu=2, image="ghcr.io/acme/recsearch:0.1",
                                      cfg={"queue": "research"}, dryrun=True))
    text = k8s.submit(_spec(3, world_size=2), workdir).info["dryrun"]
    assert "image: ghcr.io/acme/recsearch:0.1" in text and "queue: research" in text
    assert "nvidia.com/gpu: '2'" in text and f"--config {workdir / 'trial.yaml'}" in text
    with pytest.raises(RuntimeError, match="dryrun"):
        k8s.result(h)


def test_torchx_trials_without_the_search_filesystem_exchange_files_through_a_url(tmp_path, learnable_data):  # noqa: F811
    """remote_dir: the job's config and placement are staged under a fresh attempt directory at the
    URL, with the job's own output_dir and upload_to; the request names the URL, not the local
    file; a later submission of the same trial gets a new attempt directory."""
    import uuid

    from recsearch import remote

    url = f"memory://recsearch-search-{uuid.uuid4().hex}"
    workdir = _trial_dir(tmp_path / "search" / "trials", learnable_data, "3", plan=str(tmp_path / "placement.json"))
    (tmp_path / "placement.json").write_text('{"placement": {"t_cat_0": 0}}')
    runner = TorchxRunner(TorchxSettings(scheduler="slurm", dryrun=True, remote_dir=url, job_output_dir="/scratch"))
    h = runner.submit(_spec(3), workdir)
    staged = h.info["remote_url"]
    assert staged.startswith(f"{url}/trials/3/attempt-")
    assert f"recsearch.cli train --config {staged}/trial.yaml" in h.info["dryrun"]
    job_cfg = yaml.safe_load(remote.read_text(f"{staged}/trial.yaml"))
    assert job_cfg["upload_to"] == staged and job_cfg["plan"] == f"{staged}/placement.json"
    assert job_cfg["output_dir"].startswith("/scratch/search/3-attempt-")
    assert json.loads(remote.read_text(job_cfg["plan"])) == {"placement": {"t_cat_0": 0}}
    assert job_cfg["data_dir"] == str(learnable_data)  # the data must be reachable by the job
    assert yaml.safe_load((workdir / "trial.yaml").read_text())["output_dir"] == str(workdir)  # local copy kept
    assert runner.submit(_spec(3), workdir).info["remote_url"] != staged
    # fetching: the job's uploads land in the trial directory, where read_result finds them
    remote.write_text(f"{staged}/tb/events.out.1", "ev")
    remote.write_text(f"{staged}/result.json", json.dumps(
        {"status": "completed", "metrics": {"val": {"auc": 0.71}}, "latency_ms": {"256": {"p50_ms": 1.5}}}))
    h.state = TrialState.RUNNING
    runner.fetch_remote(h)
    assert (workdir / "tb" / "events.out.1").read_text() == "ev"
    assert read_result(workdir, 3, 256).auc == 0.71
    with pytest.raises(ValueError, match="must be an fsspec URL"):
        TorchxSettings(remote_dir="/shared/runs")


def test_torchx_components_load_outside_the_repository_root(tmp_path):
    """The `recsearch` console script does not put the checkout on sys.path: the torchx runner
    still finds launch/components.py (it used to fail with 'run the search from the repository root')."""
    import subprocess

    code = ("from recsearch.search.runners import load_components; m = load_components(); "
            "print(m.__file__); print(m.search(config='c.yaml').roles[0].args[-3:])")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == str(REPO / "launch" / "components.py") and lines[1] == "['--config', 'c.yaml', '--resume-if-exists']"


@pytest.mark.slow
def test_torchx_local_cwd_trial_runs_for_real_and_reports_through_its_result_file(tmp_path, learnable_data, monkeypatch):  # noqa: F811
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    runner = TorchxRunner(TorchxSettings(scheduler="local_cwd", cfg={"log_dir": str(tmp_path / "torchx")}), serving_batch=64)
    h = runner.submit(_spec(5), _trial_dir(tmp_path, learnable_data, "tx"))
    assert h.info["app_handle"].startswith("local_cwd://")
    assert wait_until(lambda: runner.poll(h) is not TrialState.RUNNING, 300, interval_s=0.2), "job still running after 300 s"
    r = runner.result(h)
    assert r.state is TrialState.COMPLETE and 0.6 < r.auc < 1 and r.latency_p50_ms > 0, r.error


@pytest.mark.slow
def test_torchx_local_cwd_trial_through_a_remote_dir_runs_for_real(tmp_path, learnable_data, monkeypatch):  # noqa: F811
    """The whole remote path with a real job: config from a file:// URL, result and TensorBoard
    logs uploaded by the job and fetched by the runner into the trial directory."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    remote_dir = (tmp_path / "bucket").as_uri()
    settings = TorchxSettings(scheduler="local_cwd", cfg={"log_dir": str(tmp_path / "torchx")}, remote_dir=remote_dir,
                              job_output_dir=str(tmp_path / "job_scratch"))
    runner = TorchxRunner(settings, serving_batch=64)
    workdir = _trial_dir(tmp_path / "search" / "trials", learnable_data, "6", tensorboard=True)
    h = runner.submit(_spec(6), workdir)
    assert wait_until(lambda: runner.poll(h) is not TrialState.RUNNING, 300, interval_s=0.2), "job still running after 300 s"
    r = runner.result(h)
    assert r.state is TrialState.COMPLETE and 0.6 < r.auc < 1 and r.latency_p50_ms > 0, r.error
    scratch = next((tmp_path / "job_scratch" / "search").iterdir())
    assert json.loads((workdir / "result.json").read_text()) == json.loads((scratch / "result.json").read_text())
    assert list((workdir / "tb").rglob("events.out.tfevents.*")), "TensorBoard logs were not fetched"


class _SleepingTrial(SubprocessRunner):
    """A 'trial' that writes its pid and sleeps: what the runner does around it is under test."""

    def command(self, spec, workdir):
        return [sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(600)"]


def test_a_subprocess_trial_dies_with_the_search_process_and_sets_that_up_itself(tmp_path):
    """The trial process asks for PR_SET_PDEATHSIG itself (recsearch.search.die_with_parent, then
    exec: same pid), not in a preexec_fn while the search's threads run: SIGKILL of the process
    that started it (with a thread running, as the search's heartbeat) ends the trial too."""
    script = (
        "import sys, threading, time\n"
        "from pathlib import Path\n"
        "from tests.search.test_runners import _SleepingTrial, _spec\n"
        "threading.Thread(target=time.sleep, args=(600,), name='beat', daemon=True).start()\n"
        f"workdir = Path({str(tmp_path)!r})\n"
        "handle = _SleepingTrial(serving_batch=64).submit(_spec(0), workdir)\n"
        "deadline = time.monotonic() + 60\n"
        "while not (workdir / 'train.log').read_text().strip() and time.monotonic() < deadline:\n"
        "    time.sleep(0.02)\n"
        "print(handle.info['pid'], flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        pid = int(proc.stdout.readline())
        # the pid the runner holds is the trial itself: the launcher exec'd into it
        assert (tmp_path / runners.LOG_FILE).read_text().split() == [str(pid)]
        assert b"time.sleep(600)" in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert pid_alive(pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert all_dead([pid]), "the trial outlived the process that started it"
    finally:
        proc.kill()


def test_a_trial_whose_starter_is_gone_never_runs(tmp_path):
    """die_with_parent given a parent that is not its own (the starter died before the death
    signal was in place, so the trial was re-parented): it exits 3 and does not run the command."""
    marker = tmp_path / "ran"
    done = subprocess.run(
        [sys.executable, "-m", "recsearch.search.die_with_parent", "1", sys.executable, "-c",
         f"open({str(marker)!r}, 'w')"], cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == die_with_parent.PARENT_GONE_EXIT == 3 and not marker.exists()
    assert "process 1 that started this trial has exited; not running it" in done.stderr
    ran = subprocess.run(die_with_parent.command_for(os.getpid(), [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]),
                         cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 0 and marker.exists(), ran.stderr


def _no_kube_config(monkeypatch, in_cluster_host=None):
    """No kube config here; in a pod (in_cluster_host) the service account's config loads."""
    from kubernetes import config

    def no_file(*_args, **_kwargs):
        raise config.ConfigException("Invalid kube-config file. No configuration found.")

    def in_cluster(client_configuration=None, **_kwargs):
        if in_cluster_host is None:
            raise config.ConfigException("Service host/port is not set.")
        client_configuration.host = in_cluster_host

    monkeypatch.setattr(config, "load_kube_config", no_file)
    monkeypatch.setattr(config, "load_incluster_config", in_cluster)


def test_torchx_kubernetes_without_credentials_fails_up_front(monkeypatch):
    """torchx 0.7.0 only warns without a kube config and each trial then fails at submission with
    `LocationValueError: No host specified.`; the runner refuses to start instead."""
    _no_kube_config(monkeypatch)
    settings = TorchxSettings(scheduler="kubernetes", image="ghcr.io/acme/recsearch:0.1", cfg={"queue": "research"})
    with pytest.raises(RuntimeError, match=r"no Kubernetes credentials.*no kube config \(Invalid kube-config.*"
                                           r"no in-cluster config \(Service host/port is not set.\).*jobs.batch.volcano.sh"):
        TorchxRunner(settings)
    TorchxRunner(replace(settings, dryrun=True)).close()  # a dry run needs no cluster
    with pytest.raises(RuntimeError, match="runner.torchx.image is required for scheduler 'kubernetes'"):
        TorchxRunner(TorchxSettings(scheduler="kubernetes", cfg={"queue": "research"}, dryrun=True))


def test_torchx_kubernetes_in_a_pod_uses_the_service_account(monkeypatch):
    """In a pod without a kube config, the in-cluster config is loaded and handed to torchx's
    scheduler (which would only have tried the kube config)."""
    _no_kube_config(monkeypatch, in_cluster_host="https://10.0.0.1:443")
    runner = TorchxRunner(TorchxSettings(scheduler="kubernetes", image="ghcr.io/acme/recsearch:0.1",
                                         cfg={"queue": "research"}))
    try:
        scheduler = runner._runner._scheduler("kubernetes")
        assert scheduler._api_client().configuration.host == "https://10.0.0.1:443"
    finally:
        runner.close()


def test_torchx_local_scheduler_does_not_take_the_searchs_ctrl_c_and_sigterm():
    """torchx's local scheduler sets SIGINT and SIGTERM handlers of its own when it is created
    (its SignalException would replace the search's KeyboardInterrupt and Terminated); the
    runner keeps the handlers it found."""
    from recsearch.signals import sigterm_as_interrupt

    with sigterm_as_interrupt(take_over=True):
        before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
        runner = TorchxRunner(TorchxSettings(scheduler="local_cwd"))
        try:
            assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
        finally:
            runner.close()


def test_a_remote_dir_without_its_fsspec_backend_fails_before_any_trial():
    with pytest.raises(RuntimeError, match=r"runner.torchx.remote_dir: nosuchproto://bucket/x: no fsspec backend"):
        TorchxRunner(TorchxSettings(scheduler="slurm", dryrun=True, remote_dir="nosuchproto://bucket/x"))
    TorchxRunner(TorchxSettings(scheduler="slurm", dryrun=True, remote_dir="memory://bucket/x")).close()
