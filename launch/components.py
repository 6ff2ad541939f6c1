"""torchx components for recsearch: `torchx run -s <scheduler> launch/components.py:<name> ...`.

Each component is a pure function returning an AppDef; its docstring is the CLI help. They wrap
torchx's `dist.ddp`, so the same component runs on local_cwd, Slurm and Kubernetes, e.g.:

    torchx run -s local_cwd launch/components.py:train --nproc_per_node 2 \
        --config configs/train/quickstart.yaml -- hparams.batch_size=4096
    torchx run --dryrun -s slurm launch/components.py:train --nnodes 2 --nproc_per_node 8 --gpu 8
"""

from typing import Dict, List, Optional

import torchx
from torchx import specs
from torchx.components import dist


def _ddp(
    module_args: List[str],
    *,
    role: str,
    name: str,
    nnodes: int,
    nproc_per_node: int,
    image: str,
    cpu: int,
    gpu: int,
    memMB: int,
    h: Optional[str],
    env: Optional[Dict[str, str]],
    max_retries: int,
    mounts: Optional[List[str]],
) -> specs.AppDef:
    if nnodes < 1 or nproc_per_node < 1:
        raise ValueError(f"nnodes and nproc_per_node must be >= 1, got {nnodes}, {nproc_per_node}")
    app = dist.ddp(
        *module_args,
        m="recsearch.cli",
        image=image,
        name=name,
        h=h,
        cpu=cpu,
        gpu=gpu,
        memMB=memMB,
        j=f"{nnodes}x{nproc_per_node}",
        env={"PYTHONUNBUFFERED": "1", **(env or {})},
        max_retries=max_retries,
        mounts=mounts,
    )
    # ddp names the role after the module (`cli`); name it after the recsearch command instead.
    app.roles[0].name = role
    return app


def train(
    *overrides: str,
    config: str = "configs/train/quickstart.yaml",
    name: str = "recsearch-train",
    nnodes: int = 1,
    nproc_per_node: int = 1,
    image: str = torchx.IMAGE,
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 8192,
    h: Optional[str] = None,
    env: Optional[Dict[str, str]] = None,
    max_retries: int = 0,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """Trains one DLRM with `recsearch train` on nnodes x nproc_per_node ranks.

    Args:
        overrides: key=value config overrides, e.g. hparams.batch_size=4096 output_dir=runs/x
        config: training config YAML (a path inside the image / working directory)
        name: job name
        nnodes: number of hosts
        nproc_per_node: ranks per host (at most the GPUs per host on GPU hosts)
        image: container image (local_cwd: the working directory)
        cpu: CPUs per host
        gpu: GPUs per host
        memMB: memory per host in MB
        h: a registered named resource; takes precedence over cpu, gpu and memMB
        env: extra environment variables, e.g. NCCL_DEBUG=INFO
        max_retries: scheduler retries allowed
        mounts: mounts, e.g. type=bind,src=/data,dst=/data
    """
    return _ddp(
        ["train", "--config", config, *overrides],
        role="train",
        name=name,
        nnodes=nnodes,
        nproc_per_node=nproc_per_node,
        image=image,
        cpu=cpu,
        gpu=gpu,
        memMB=memMB,
        h=h,
        env=env,
        max_retries=max_retries,
        mounts=mounts,
    )


def search(
    *overrides: str,
    config: str = "configs/search/quickstart.yaml",
    out: Optional[str] = None,
    resume: Optional[str] = None,
    resume_if_exists: bool = True,
    name: str = "recsearch-search",
    image: str = torchx.IMAGE,
    cpu: int = 2,
    memMB: int = 8192,
    h: Optional[str] = None,
    env: Optional[Dict[str, str]] = None,
    max_retries: int = 0,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """Runs a search (`recsearch search`) as one job: the search process itself, which launches its
    trials with the runner its config names (for runner.kind torchx, each trial is its own job).
    The job can be run again as it is: a retry (max_retries), a Slurm requeue or a preempted
    Kubernetes pod continues the search in its directory (`recsearch search --resume-if-exists`).

    Args:
        overrides: key=value search config overrides, e.g. trials=40 runner.concurrency=8
        config: search config YAML (ignored with resume)
        out: search directory (default: the config's output_dir)
        resume: continue the search in this directory instead of starting one
        resume_if_exists: if the search directory (out, or the config's output_dir) already holds
            a search, continue it instead of failing with "already holds a search"
        name: job name
        image: container image (local_cwd: the working directory)
        cpu: CPUs for the search process (and in-process/subprocess trials)
        memMB: memory in MB
        h: a registered named resource; takes precedence over cpu and memMB
        env: extra environment variables
        max_retries: scheduler retries allowed
        mounts: mounts, e.g. type=bind,src=/data,dst=/data
    """
    if resume:
        args = ["search", "--resume", resume]
    else:
        args = ["search", "--config", config, *(["--out", out] if out else []),
                *(["--resume-if-exists"] if resume_if_exists else []), *overrides]
    return specs.AppDef(
        name=name,
        roles=[
            specs.Role(
                name="search",
                image=image,
                entrypoint="python",
                args=["-m", "recsearch.cli", *args],
                env={"PYTHONUNBUFFERED": "1", **(env or {})},
                resource=specs.resource(cpu=cpu, gpu=0, memMB=memMB, h=h),
                max_retries=max_retries,
                mounts=specs.parse_mounts(mounts) if mounts else [],
            )
        ],
    )
