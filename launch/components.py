"""torchx components for recsearch: `torchx run -s <scheduler> launch/components.py:<name> ...`.

Each component is a pure function returning an AppDef; its docstring is the CLI help. They wrap
torchx's `dist.ddp`, so the same component runs on local_cwd, Slurm and Kubernetes, e.g.:

    torchx run -s local_cwd launch/components.py:train --nproc_per_node 2 \
        --config configs/train/quickstart.yaml -- hparams.batch_size=4096
    torchx run --dryrun -s slurm launch/components.py:train --nnodes 2 --nproc_per_node 8 --gpu 8 \
        --cpu 64 --memMB 480000 --config configs/train/kaggle_reference.yaml

A bad argument (`--nproc_per_node 0`, more ranks than GPUs) is refused with one line
(ComponentArgError: torchx prints "Failed to run component ... got errors: <why>" and exits 1).
"""

import re
from pathlib import Path
from typing import Dict, List, Optional

from torchx import specs
from torchx.components import dist
from torchx.specs.finder import ComponentValidationException

# The default --image: none that could silently be wrong. torchx's own default
# (ghcr.io/pytorch/torchx) lacks recsearch and its dependencies, so a Kubernetes (or Docker) job
# must name an image built from the repository's Dockerfile; a job that does not fails to pull
# this name, which says what to do. local_cwd and Slurm ignore the image (they run the checkout).
IMAGE_NOT_SET = "recsearch-image-not-set:pass-image-built-from-the-dockerfile"

CPU_PER_RANK = 4  # train's default --cpu: CPUs per host = 4 x nproc_per_node
MEM_MB_PER_RANK = 16384  # train's default --memMB: memory per host = 16 GiB x nproc_per_node

DEFAULT_SEARCH_CONFIG = "configs/search/quickstart.yaml"


class ComponentArgError(ComponentValidationException, ValueError):
    """A component argument that cannot make a valid job. A ComponentValidationException, so
    `torchx run` prints its message in one line instead of a traceback; a ValueError for callers."""


def role_name(name: str, fallback: str) -> str:
    """The role name for a job name: Slurm names each job `<role>-<replica>` (what squeue shows),
    so the role carries the job's name. Hyphens and other characters become `_`: Kubernetes
    (Volcano) derives the rank-0 host variable from the role name with hyphens turned to `_`,
    and torchx looks it up with them removed, so a role name with `-` would break multi-node
    rendezvous there."""
    cleaned = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_")
    return cleaned or fallback


def _resources(nproc_per_node: int, cpu: int, gpu: int, memMB: int, h: Optional[str]) -> tuple:
    """(cpu, memMB) per host, 0 meaning the default scaled to the ranks; refuses counts no host
    can run. (0 rather than None: torchx passes an Optional[int] argument on as a string.)"""
    if cpu < 0 or memMB < 0 or gpu < 0:
        raise ComponentArgError(f"cpu, memMB and gpu must be >= 0, got cpu={cpu}, memMB={memMB}, gpu={gpu}")
    cpu = cpu or CPU_PER_RANK * nproc_per_node
    memMB = memMB or MEM_MB_PER_RANK * nproc_per_node
    gpus_per_host = gpu
    if h:
        try:
            gpus_per_host = specs.get_named_resources(h).gpu
        except KeyError as err:
            raise ComponentArgError(f"h={h!r} is not a registered named resource ({err})") from err
    if gpus_per_host > 0 and nproc_per_node > gpus_per_host:
        raise ComponentArgError(
            f"nproc_per_node={nproc_per_node} is more ranks than the {gpus_per_host} GPUs per host "
            f"({'h=' + h if h else 'gpu'}): each rank needs a GPU of its own; pass --nproc_per_node "
            f"{gpus_per_host} (or fewer), or more GPUs per host with --gpu"
        )
    return cpu, memMB


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
        raise ComponentArgError(f"nnodes and nproc_per_node must be >= 1, got nnodes={nnodes}, nproc_per_node={nproc_per_node}")
    cpu, memMB = _resources(nproc_per_node, cpu, gpu, memMB, h)
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
    # ddp names the role after the module (`cli`); name it after the job, so that Slurm's job
    # names (`<role>-<replica>`) tell jobs apart.
    app.roles[0].name = role_name(name, role)
    return app


def _names_resume_from(config: str, overrides: tuple) -> bool:
    """Whether the run already says how to resume: a resume_from override, or a resume_from in
    the config file (read where it is a local file: a path in the image or a URL is not read)."""
    if any(o.split("=", 1)[0].strip() == "resume_from" for o in overrides if "=" in o):
        return True
    path = Path(config)
    if "://" in config or not path.is_file():
        return False
    try:
        import yaml

        raw = yaml.safe_load(path.read_text())
    except Exception:  # noqa: BLE001 - the trainer reports a bad config itself
        return False
    return isinstance(raw, dict) and raw.get("resume_from") is not None


def train(
    *overrides: str,
    config: str = "configs/train/quickstart.yaml",
    name: str = "recsearch-train",
    nnodes: int = 1,
    nproc_per_node: int = 1,
    image: str = IMAGE_NOT_SET,
    cpu: int = 0,
    gpu: int = 0,
    memMB: int = 0,
    h: Optional[str] = None,
    env: Optional[Dict[str, str]] = None,
    max_retries: int = 0,
    mounts: Optional[List[str]] = None,
    resume_if_exists: bool = True,
) -> specs.AppDef:
    """Trains one DLRM with `recsearch train` on nnodes x nproc_per_node ranks.

    By default the job runs `recsearch train ... resume_from=auto`: run again as it is (a
    max_retries retry, a Slurm requeue, a preempted pod) it continues from output_dir's newest
    checkpoint (checkpoint_every_steps), and the first run starts fresh.

    Args:
        overrides: key=value config overrides, e.g. hparams.batch_size=4096 output_dir=runs/x
        config: training config YAML (a path inside the image / working directory)
        name: job name (also the Slurm job name, `<name>-<replica>`, with `-` as `_`)
        nnodes: number of hosts
        nproc_per_node: ranks per host (at most the GPUs per host on GPU hosts)
        image: container image, built from the repository's Dockerfile (required for
            Kubernetes/Docker; local_cwd and Slurm run the working directory and ignore it)
        cpu: CPUs per host (0, the default: 4 per rank, 4 x nproc_per_node)
        gpu: GPUs per host
        memMB: memory per host in MB (0, the default: 16384 per rank)
        h: a registered named resource; takes precedence over cpu, gpu and memMB
        env: extra environment variables, e.g. NCCL_DEBUG=INFO
        max_retries: scheduler retries allowed
        mounts: mounts, e.g. type=bind,src=/data,dst=/data
        resume_if_exists: pass resume_from=auto (continue output_dir's run if it has a
            checkpoint); False: a rerun into an output_dir holding a run is refused. A
            resume_from of your own (an override, or in a local config file) is used instead
    """
    resume = ["resume_from=auto"] if resume_if_exists and not _names_resume_from(config, overrides) else []
    return _ddp(
        ["train", "--config", config, *overrides, *resume],
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
    config: Optional[str] = None,
    out: Optional[str] = None,
    resume: Optional[str] = None,
    resume_if_exists: bool = True,
    name: str = "recsearch-search",
    image: str = IMAGE_NOT_SET,
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
        overrides: key=value search config overrides, e.g. trials=40 runner.concurrency=8 (not
            with resume: edit DIR/search.yaml to change trials or the runner of a search)
        config: search config YAML (default configs/search/quickstart.yaml; not with resume)
        out: search directory (default: the config's output_dir; not with resume)
        resume: continue the search in this directory instead of starting one (alone: no
            config, out or overrides)
        resume_if_exists: if the search directory (out, or the config's output_dir) already holds
            a search, continue it instead of failing with "already holds a search"
        name: job name (also the Slurm job name, `<name>-0`, with `-` as `_`)
        image: container image, built from the repository's Dockerfile (required for
            Kubernetes/Docker; local_cwd and Slurm run the working directory and ignore it)
        cpu: CPUs for the search process (and in-process/subprocess trials)
        memMB: memory in MB
        h: a registered named resource; takes precedence over cpu and memMB
        env: extra environment variables
        max_retries: scheduler retries allowed
        mounts: mounts, e.g. type=bind,src=/data,dst=/data
    """
    if resume:
        extra = [f"--config {config}"] * bool(config) + [f"--out {out}"] * bool(out) + list(overrides)
        if extra:
            raise ComponentArgError(
                f"resume={resume} continues that search with its own search.yaml, so {', '.join(extra)} "
                f"would be ignored (recsearch search refuses them with --resume too). To change what "
                f"--resume may change (trials, the runner, ...), edit {resume.rstrip('/')}/search.yaml "
                f"first; to start another search, pass --config/--out without --resume"
            )
        args = ["search", "--resume", resume]
    else:
        args = ["search", "--config", config or DEFAULT_SEARCH_CONFIG, *(["--out", out] if out else []),
                *(["--resume-if-exists"] if resume_if_exists else []), *overrides]
    if cpu < 1 or memMB < 1:
        raise ComponentArgError(f"cpu and memMB must be >= 1, got cpu={cpu}, memMB={memMB}")
    return specs.AppDef(
        name=name,
        roles=[
            specs.Role(
                name=role_name(name, "search"),
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
