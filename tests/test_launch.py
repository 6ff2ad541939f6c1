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
    assert app.roles[0].args[-4:] == ["train", "--config", "c.yaml", "hparams.seed=3"] or (
        "train --config c.yaml hparams.seed=3" in " ".join(app.roles[0].args)
    )
