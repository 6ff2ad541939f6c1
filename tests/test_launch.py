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
    assert "#SBATCH --job-name=train-0" in out and "#SBATCH hetjob" in out
    assert "--gpus-per-task=4" in out
    assert "--nnodes 2 --nproc_per_node 4" in out
    assert (
        "-m recsearch.cli train --config configs/train/kaggle_reference.yaml hparams.batch_size=4096"
        in out
    )


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


def test_train_component_rejects_bad_rank_counts():
    from launch import components

    with pytest.raises(ValueError, match="nproc_per_node must be >= 1"):
        components.train(nproc_per_node=0)
    app = components.train("hparams.seed=3", config="c.yaml", nproc_per_node=2)
    assert app.roles[0].name == "train"
    # ddp runs one shell command: torchrun ... -m <module> <args>
    assert app.roles[0].args[0] == "-c"
    assert app.roles[0].args[-1].endswith("-m recsearch.cli train --config c.yaml hparams.seed=3")


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
