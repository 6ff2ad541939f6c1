#!/usr/bin/env bash
# Builds a second virtual environment with the GPU machine's stack (../shared/GPU.md): Python 3.12,
# torch 2.11.0, FBGEMM 1.6.0 (the CPU build, fbgemm-gpu-cpu), torchrec 1.6.1 and the versions of
# torchrec's dependencies that machine has (tensordict 0.12.4, iopath 0.1.9, torchmetrics 1.9.0),
# so that API drift between that stack and the lock's (torch 2.13, torchrec 1.8) shows up in the
# test suite on a CPU machine instead of in a 15-minute GPU window. Everything else is at the
# lock's versions. The project itself is installed editable with --no-deps (pyproject.toml asks
# for torch 2.13 and torchrec 1.8). docs/DEVELOPING.md "The GPU machine's stack on a CPU".
#
#   tools/compat_venv.sh                      # -> ../venv_compat (beside the checkout)
#   VENV=/path/env PYTHON=python3.12 tools/compat_venv.sh
#   OMP_WAIT_POLICY=PASSIVE ../venv_compat/bin/python -m pytest -q -p no:cacheprovider
#
# torch 2.11.0 on PyPI is the CUDA 13 build: it brings the nvidia-* libraries (about 2.6 GB of
# downloads, 5 GB installed), which load without a GPU. Safe to re-run: an environment already
# built from the same pins and lock is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-../venv_compat}

# the GPU machine's Python is 3.12 (the bundle's wheels are cp312); pyenv's 3.12 where it is
# not on the PATH; another Python 3 only with a warning
find_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  if command -v python3.12 >/dev/null 2>&1 && python3.12 -c '' >/dev/null 2>&1; then
    command -v python3.12; return
  fi
  local root
  root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
  local candidate
  for candidate in "$root"/versions/3.12*/bin/python3.12; do
    if [ -x "$candidate" ]; then echo "$candidate"; return; fi
  done
  echo "recsearch: no Python 3.12 found (the GPU machine's); using python3" >&2
  command -v python3
}
PY=$(find_python)

# The GPU machine's stack. torchrec goes in with --no-deps (it declares the CUDA fbgemm-gpu);
# its dependencies at the versions of ../shared/gpu/wheels and the machine's own torchmetrics.
TORCH=(torch==2.11.0)
FBGEMM=(fbgemm-gpu-cpu==1.6.0)
TORCHREC=(torchrec==1.6.1)
TORCHREC_DEPS=(tensordict==0.12.4 iopath==0.1.9 torchmetrics==1.9.0 pyre-extensions==0.0.32
  cloudpickle==3.1.2 orjson==3.13.0 portalocker==4.4.2 pyvers==0.2.3 importlib_metadata packaging)
# the project's other dependencies (pyproject.toml's, and the search, launch and test extras), at
# the lock's versions
PROJECT_DEPS=(numpy pyyaml fsspec tqdm pyarrow tensorboard optuna matplotlib "torchx[kubernetes]"
  pytest pytest-timeout)

stamp_want="$( (printf '%s\n' "$PY" "${TORCH[@]}" "${FBGEMM[@]}" "${TORCHREC[@]}" \
  "${TORCHREC_DEPS[@]}" "${PROJECT_DEPS[@]}"; cat requirements/lock.txt) | sha256sum | cut -c1-16)"
stamp_file="$VENV/.recsearch-compat-installed"
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp_want" ]; then
  echo "recsearch: compat environment $VENV is up to date"
  exit 0
fi

echo "recsearch: creating $VENV with $("$PY" --version)"
"$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
# the lock's pins, less the packages this environment holds at other versions
lock=$(mktemp)
trap 'rm -f "$lock"' EXIT
grep -v -i -E '^(torch|fbgemm|torchrec|torchmetrics|tensordict|iopath|cloudpickle|portalocker|pyvers|orjson)[-_=]' \
  requirements/lock.txt > "$lock"
"${PIP[@]}" install -q -c "$lock" "${TORCH[@]}" "${FBGEMM[@]}" "${TORCHREC_DEPS[@]}" "${PROJECT_DEPS[@]}"
"${PIP[@]}" install -q --no-deps "${TORCHREC[@]}"
# the package itself, editable (its metadata and the `recsearch` script, which the tests check)
"${PIP[@]}" install -q --no-deps -e .
"$VENV/bin/python" - <<'PY'
import fbgemm_gpu, torch, torchrec  # noqa: F401  (fails loudly if the FBGEMM build does not load)
from importlib.metadata import version
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist  # noqa: F401
print(f"recsearch: compat stack torch {torch.__version__}, fbgemm-gpu-cpu {version('fbgemm-gpu-cpu')},"
      f" torchrec {version('torchrec')}, torchmetrics {version('torchmetrics')},"
      f" tensordict {version('tensordict')}")
PY
echo "$stamp_want" > "$stamp_file"
echo "recsearch: compat environment $VENV ready; run the suite with:" \
  "OMP_WAIT_POLICY=PASSIVE $VENV/bin/python -m pytest -q -p no:cacheprovider"
