# The recsearch image for torchx's Kubernetes scheduler (and any container runtime): the
# checkout at /workspace/recsearch, installed editable into /opt/venv by tools/install.sh at the
# versions of requirements/lock.txt. docs/SEARCH.md ("Images and the torchx workspace") says how
# to build, push and use it, and what torchx's workspace patch does on top of it.
#
#   docker build -t REGISTRY/recsearch:TAG .                      # CUDA stack (GPU nodes)
#   docker build --build-arg STACK=cpu -t REGISTRY/recsearch:TAG-cpu .
#
# PyPI's torch and fbgemm-gpu wheels carry their CUDA runtime (nvidia-* wheels), so a plain
# Python base image serves GPU nodes too; the node needs the NVIDIA driver and container toolkit.
# STACK=cpu takes torch from PyTorch's CPU wheel index (CPU_INDEX, as README's CPU recipe does):
# PyPI's Linux torch is the CUDA build, gigabytes of nvidia-* wheels a CPU image has no use for.
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG STACK=cuda
ARG CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# torchx's workspace patch copies the local checkout into WORKDIR (`COPY . .`); with the editable
# install below, the patched code is the code that runs.
WORKDIR /workspace/recsearch

# The dependencies first (a layer that survives code changes), then the code.
COPY pyproject.toml README.md ./
COPY requirements/ requirements/
COPY tools/install.sh tools/install.sh
COPY recsearch/__init__.py recsearch/__init__.py
RUN if [ "${STACK}" = cpu ]; then export PIP_EXTRA_INDEX_URL="${CPU_INDEX}"; fi && RECSEARCH_STACK=${STACK} VENV=/opt/venv tools/install.sh

COPY . .
ENV PATH=/opt/venv/bin:${PATH} \
    VIRTUAL_ENV=/opt/venv
# The build fails unless the stack loads (a few seconds; tools/image_check.py): torch, FBGEMM's
# kernels and TorchRec, and a CPU image holds the CPU build of torch. Then the CLI.
RUN python tools/image_check.py "${STACK}" \
    && recsearch --version
