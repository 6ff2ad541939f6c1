"""The torchx components produce valid jobs for local, Slurm and Kubernetes (dryrun, as a user runs it)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TORCHX = [sys.executable, "-m", "torchx.cli.main"]


def _dryrun(*args: str) -> str:
    proc = subprocess.run(
        [*TORCHX, *args], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_train_component_slurm_dryrun_runs_torchrun_over_all_nodes():
    out = _dryrun(
        "run", "--dryrun", "-s", "slurm", "launch/components.py:train",
        "--nnodes", "2", "--nproc_per_node", "4", "--gpu", "4",
        "--config", "configs/train/kaggle_reference.yaml", "--", "hparams.batch_size=4096",
    )
    # the job is named after --name (default recsearch-train), one Slurm job per host
    assert "#SBATCH --job-name=recsearch_train-0" in out and "#SBATCH hetjob" in out
    assert "#SBATCH --job-name=recsearch_train-1" in out
    # resources scale with the ranks: 4 CPUs and 16 GiB per rank, per host
    assert "--cpus-per-task=16 --mem=65536 --gpus-per-task=4" in out
    assert "--nnodes 2 --nproc_per_node 4" in out
    # a retry or a requeue (--requeue) reruns the command: resume_from=auto continues the run
    assert "--requeue" in out
    assert (
        "-m recsearch.cli train --config configs/train/kaggle_reference.yaml hparams.batch_size=4096"
        " resume_from=auto" in out
    )


@pytest.mark.slow
def test_readme_slurm_train_command_names_the_job_and_requests_realistic_resources():
    out = _dryrun(
        "run", "--dryrun", "-s", "slurm", "launch/components.py:train", "--name", "kaggle-ref",
        "--nnodes", "2", "--nproc_per_node", "8", "--gpu", "8", "--cpu", "64", "--memMB", "480000",
        "--max_retries", "3", "--config", "configs/train/kaggle_reference.yaml", "--",
        "output_dir=/shared/runs/kaggle_ref", "checkpoint_every_steps=2000",
    )
    assert "#SBATCH --job-name=kaggle_ref-0" in out and "#SBATCH --job-name=kaggle_ref-1" in out
    assert "--cpus-per-task=64 --mem=480000 --gpus-per-task=8" in out
    assert "checkpoint_every_steps=2000 resume_from=auto" in out
    # without --cpu/--memMB: 4 CPUs and 16 GiB per rank
    out = _dryrun("run", "--dryrun", "-s", "slurm", "launch/components.py:train", "--nnodes", "2",
                  "--nproc_per_node", "8", "--gpu", "8")
    assert "--cpus-per-task=32 --mem=131072 --gpus-per-task=8" in out


@pytest.mark.slow
def test_a_bad_rank_count_is_one_line_from_torchx_not_a_traceback():
    for args, why in ((["--nproc_per_node", "0"], "nproc_per_node must be >= 1"),
                      (["--nproc_per_node", "8", "--gpu", "4"], "nproc_per_node=8 is more ranks than the 4 GPUs")):
        proc = subprocess.run(
            [*TORCHX, "run", "--dryrun", "-s", "slurm", "launch/components.py:train", *args],
            cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
        )
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert why in proc.stderr and "Failed to run component" in proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
def test_train_component_kubernetes_dryrun_has_image_queue_and_resources():
    out = _dryrun(
        "run", "--workspace", "", "--dryrun", "-s", "kubernetes", "-cfg", "queue=research",
        "launch/components.py:train", "--nproc_per_node", "2", "--gpu", "2",
        "--image", "ghcr.io/acme/recsearch:0.1", "--config", "configs/train/quickstart.yaml",
    )
    assert "kind: Job" in out and "queue: research" in out
    assert "image: ghcr.io/acme/recsearch:0.1" in out
    assert "nvidia.com/gpu: '2'" in out
    assert "--nproc_per_node 2" in out and "recsearch.cli train --config" in out


@pytest.mark.slow
def test_train_component_kubernetes_two_hosts_find_rank0_under_the_named_role():
    """The role is named after --name with `-` as `_`: Volcano's task is `recsearchtrain-0` and the
    second host looks rank 0 up as VC_RECSEARCHTRAIN_0_HOSTS (a `-` in the role would break it)."""
    out = _dryrun(
        "run", "--workspace", "", "--dryrun", "-s", "kubernetes", "-cfg", "queue=research",
        "launch/components.py:train", "--nnodes", "2", "--nproc_per_node", "2", "--gpu", "2",
        "--image", "ghcr.io/acme/recsearch:0.1",
    )
    assert "name: recsearchtrain-0" in out and "name: recsearchtrain-1" in out
    assert "${VC_RECSEARCHTRAIN_0_HOSTS:=localhost}" in out


def test_train_component_rejects_bad_rank_counts():
    from launch import components

    with pytest.raises(ValueError, match="nproc_per_node must be >= 1"):
        components.train(nproc_per_node=0)
    with pytest.raises(ValueError, match=r"nproc_per_node=8 is more ranks than the 4 GPUs per host"):
        components.train(nproc_per_node=8, gpu=4)
    with pytest.raises(ValueError, match="cpu, memMB and gpu must be >= 0"):
        components.train(cpu=-1)
    components.train(nproc_per_node=2, gpu=8)  # fewer ranks than GPUs: allowed
    components.train(nproc_per_node=4)  # CPU ranks: no GPU count to check against
    app = components.train("hparams.seed=3", config="c.yaml", nproc_per_node=2)
    assert app.roles[0].name == "recsearch_train"
    assert app.roles[0].resource.cpu == 8 and app.roles[0].resource.memMB == 32768
    # ddp runs one shell command: torchrun ... -m <module> <args>
    assert app.roles[0].args[0] == "-c"
    assert app.roles[0].args[-1].endswith("-m recsearch.cli train --config c.yaml hparams.seed=3 resume_from=auto")


def test_train_component_resumes_its_own_run_unless_told_otherwise(tmp_path):
    from launch import components

    def command(*overrides, **kwargs):
        return components.train(*overrides, **kwargs).roles[0].args[-1]

    assert command(config="c.yaml").endswith("train --config c.yaml resume_from=auto")
    assert command(config="c.yaml", resume_if_exists=False).endswith("train --config c.yaml")
    # a resume_from of the user's own wins: an override, or one in the (local) config file
    assert command("resume_from=latest", config="c.yaml").endswith("train --config c.yaml resume_from=latest")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("resume_from: /shared/runs/x/checkpoints/step_00000100\n")
    assert command(config=str(cfg)).endswith(f"train --config {cfg}")
    cfg.write_text("resume_from: null\nmax_steps: 5\n")
    assert command(config=str(cfg)).endswith(f"train --config {cfg} resume_from=auto")


def test_job_names_follow_the_name_argument():
    from launch import components

    assert components.train(name="kaggle-ref").roles[0].name == "kaggle_ref"
    assert components.search(name="my search!").roles[0].name == "my_search"
    assert components.search().roles[0].name == "recsearch_search"
    assert components.train(name="--").roles[0].name == "train"


def test_the_default_image_is_no_image_that_could_run_the_wrong_code():
    from launch import components

    for app in (components.train(), components.search()):
        assert app.roles[0].image == components.IMAGE_NOT_SET and "ghcr.io/pytorch/torchx" not in app.roles[0].image
    assert components.train(image="reg/recsearch:1").roles[0].image == "reg/recsearch:1"


def test_search_component_refuses_out_config_and_overrides_with_resume():
    from launch import components

    args = components.search(resume="/shared/runs/kaggle").roles[0].args
    assert args == ["-m", "recsearch.cli", "search", "--resume", "/shared/runs/kaggle"]
    for kwargs, named in ((dict(out="/other"), "--out /other"), (dict(config="c.yaml"), "--config c.yaml")):
        with pytest.raises(ValueError, match=f"would be ignored.*{named}|{named}.*would be ignored"):
            components.search(resume="/shared/runs/kaggle", **kwargs)
    with pytest.raises(ValueError, match=r"trials=80 would be ignored.*edit /shared/runs/kaggle/search.yaml"):
        components.search("trials=80", resume="/shared/runs/kaggle/")
    args = components.search("trials=8", out="/o").roles[0].args
    assert args[2:] == ["search", "--config", "configs/search/quickstart.yaml", "--out", "/o", "--resume-if-exists", "trials=8"]


@pytest.mark.slow
def test_search_resume_with_out_is_refused_by_torchx_run():
    proc = subprocess.run(
        [*TORCHX, "run", "--dryrun", "-s", "slurm", "launch/components.py:search", "--resume",
         "/shared/runs/kaggle", "--out", "/other", "--", "trials=80"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "--out /other, trials=80 would be ignored" in proc.stderr and "/shared/runs/kaggle/search.yaml" in proc.stderr


@pytest.mark.slow
@pytest.mark.multiproc
def test_train_component_runs_two_ranks_on_local_cwd(tmp_path):
    """The real thing: torchx launches torchrun with 2 ranks here, training finishes, result written."""
    import json
    import os

    from tests.conftest import write_dataset

    write_dataset(tmp_path / "data", day_rows=(4096, 4096, 2048), num_embeddings=50)
    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*TORCHX, "run", "-s", "local_cwd", "launch/components.py:train", "--nproc_per_node", "2",
         "--config", "configs/train/quickstart.yaml", "--", f"data_dir={tmp_path / 'data'}",
         f"output_dir={out}", "max_steps=6", "hparams.batch_size=256", "latency_batch_sizes=[1]",
         "tensorboard=false", "eval_every_steps=0"],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False, env=env,
    )
    assert proc.returncode == 0 and "SUCCEEDED" in proc.stderr + proc.stdout, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "completed" and result["world_size"] == 2 and result["steps"] == 6
