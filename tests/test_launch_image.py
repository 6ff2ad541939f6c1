"""The container image recipe (Dockerfile, .dockerignore) and what torchx's Kubernetes workspace
patch builds from a checkout; the search component's Kubernetes job retries and resumes. No image is
built here (no Docker daemon in CI): the build's steps are checked where they can be."""

from __future__ import annotations

import os
import posixpath
import re
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest
from torchx.workspace.api import walk_workspace

REPO = Path(__file__).resolve().parents[1]


def _workspace_files() -> set[str]:
    """The files torchx puts in the build context of its workspace patch (.dockerignore applied)."""
    out = set()
    for directory, _dirs, files in walk_workspace(fsspec.filesystem("file"), str(REPO), ".dockerignore"):
        for name in files:
            out.add(posixpath.relpath(posixpath.join(directory, name), str(REPO)))
    return out


def test_the_build_context_holds_the_checkout_and_leaves_out_environments_and_outputs():
    files = _workspace_files()
    needed = {"pyproject.toml", "README.md", "tools/install.sh", "requirements/lock.txt",
              "recsearch/__init__.py", "recsearch/cli.py", "launch/components.py",
              "configs/search/quickstart.yaml", "recsearch/placement/data/policy_cpu.pt"}
    assert needed <= files, needed - files
    leaked = {f for f in files if f.split("/")[0] in (".venv", "runs", ".git", "data", "build")
              or "__pycache__" in f or ".egg-info" in f}
    assert not leaked, sorted(leaked)[:5]


def test_the_dockerfile_copies_files_that_exist_and_installs_with_the_lock():
    text = (REPO / "Dockerfile").read_text()
    context = _workspace_files()
    for line in text.splitlines():
        if line.startswith("COPY ") and line != "COPY . .":
            *sources, _dest = line.split()[1:]
            for source in sources:
                assert source.rstrip("/") in context or any(f.startswith(source) for f in context), source
    run = next(line for line in text.splitlines() if line.startswith("RUN") and "tools/install.sh" in line)
    assert re.search(r"RECSEARCH_STACK=\$\{STACK\} VENV=/opt/venv tools/install.sh", run)
    assert "WORKDIR /workspace/recsearch" in text  # where torchx's patch copies the workspace


def test_install_sh_refuses_an_unknown_stack_before_creating_anything(tmp_path):
    venv = tmp_path / "venv"
    proc = subprocess.run(
        ["bash", str(REPO / "tools" / "install.sh")], capture_output=True, text=True, timeout=60,
        env={**os.environ, "RECSEARCH_STACK": "gpu", "VENV": str(venv)}, check=False,
    )
    assert proc.returncode == 2
    assert "RECSEARCH_STACK must be auto, cpu or cuda, got 'gpu'" in proc.stderr
    assert not venv.exists()


@pytest.mark.slow
def test_the_search_job_on_kubernetes_retries_and_resumes():
    proc = subprocess.run(
        [sys.executable, "-m", "torchx.cli.main", "run", "--workspace", "", "--dryrun",
         "-s", "kubernetes", "-cfg", "queue=research", "launch/components.py:search",
         "--image", "registry.example/recsearch:0.1", "--out", "/mnt/runs/kaggle",
         "--config", "configs/search/kaggle_cluster.yaml", "--max_retries", "3",
         "--mounts", "type=volume,src=runs-pvc,dst=/mnt/runs", "--", "data_dir=/mnt/runs/data/kaggle",
         "runner.torchx.scheduler=kubernetes", "runner.torchx.image=registry.example/recsearch:0.1",
         "runner.torchx.cfg={queue: research}"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "maxRetry: 3" in out and "image: registry.example/recsearch:0.1" in out
    assert "--resume-if-exists" in out and "--out" in out and "/mnt/runs/kaggle" in out
    assert "claimName: runs-pvc" in out
    assert "- 'runner.torchx.cfg={queue: research}'" in out  # the trials' scheduler options, one argument


def test_a_cpu_image_takes_torch_from_the_cpu_index():
    """STACK=cpu: PyPI's Linux torch is the CUDA build (nvidia-* wheels); README's CPU recipe adds
    PyTorch's CPU index, and so does the image's install step."""
    text = (REPO / "Dockerfile").read_text()
    assert "ARG CPU_INDEX=https://download.pytorch.org/whl/cpu" in text
    run = next(line for line in text.splitlines() if line.startswith("RUN") and "tools/install.sh" in line)
    assert run.startswith('RUN if [ "${STACK}" = cpu ]; then export PIP_EXTRA_INDEX_URL="${CPU_INDEX}"; fi && ')
    for stack, index in (("cpu", "https://download.pytorch.org/whl/cpu"), ("cuda", None)):
        shell = run[len("RUN "):].replace("tools/install.sh", 'echo "index=${PIP_EXTRA_INDEX_URL:-none}"')
        shell = shell.replace("${STACK}", stack).replace("${CPU_INDEX}", "https://download.pytorch.org/whl/cpu")
        out = subprocess.run(["sh", "-c", shell], capture_output=True, text=True, timeout=30, check=True,
                             env={k: v for k, v in os.environ.items() if k != "PIP_EXTRA_INDEX_URL"}).stdout
        assert out.strip() == f"index={index or 'none'}", (stack, out)


@pytest.mark.slow
def test_the_image_build_check_imports_the_stack():
    """The build's check (not just `recsearch --version`) imports torch, fbgemm_gpu and torchrec
    and, for STACK=cpu, fails on a CUDA build of torch; run here as the CPU image runs it."""
    text = (REPO / "Dockerfile").read_text()
    check = next(line for line in text.splitlines() if line.startswith("RUN python tools/image_check.py"))
    assert '"${STACK}"' in check and "recsearch --version" in text.split(check, 1)[1]
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "image_check.py"), "cpu"], capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0 and "fbgemm_gpu and torchrec import" in proc.stdout, proc.stderr[-2000:]


def _doc_commands(path: Path) -> list[str]:
    """The shell commands in a Markdown file's ```bash blocks, continuation lines joined."""
    commands, block = [], None
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            block = [] if block is None and line.strip() == "```bash" else None
            continue
        if block is not None and line.strip() and not line.lstrip().startswith("#"):
            block.append(line)
            if not line.endswith("\\"):
                commands.append(" ".join(part.rstrip("\\").strip() for part in block))
                block.clear()
    return commands


def test_search_md_kubernetes_commands_carry_what_kubernetes_needs():
    """Each Kubernetes command in docs/SEARCH.md names a Volcano queue (kaggle_cluster.yaml's cfg
    holds Slurm options only) and an image; `torchx run` ones skip the Docker workspace patch."""
    commands = [c for c in _doc_commands(REPO / "docs" / "SEARCH.md") if "kubernetes" in c]
    searches = [c for c in commands if c.startswith("recsearch search")]
    jobs = [c for c in commands if c.startswith("torchx run")]
    assert len(searches) >= 2 and jobs
    for command in searches:
        assert "'runner.torchx.cfg={queue: research}'" in command and "runner.torchx.image=" in command, command
    for command in jobs:
        assert '--workspace ""' in command and "-cfg queue=" in command and "--image " in command, command


def test_the_image_check_lets_a_cuda_build_host_without_the_driver_pass_and_nothing_else(monkeypatch, capsys):
    import builtins
    import importlib.util

    spec = importlib.util.spec_from_file_location("image_check", REPO / "tools" / "image_check.py")
    image_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(image_check)
    real_import = builtins.__import__

    def no_driver(name, *args, **kwargs):
        if name == "fbgemm_gpu":
            raise OSError("libcuda.so.1: cannot open shared object file: No such file or directory")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_driver)
    assert image_check.main(["cuda"]) == 0
    assert "needs the NVIDIA driver to load, which this build host lacks" in capsys.readouterr().err
    with pytest.raises(OSError, match="libcuda"):
        image_check.main(["cpu"])  # a CPU image has no business needing it
