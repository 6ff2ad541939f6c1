#!/usr/bin/env bash
# Creates a virtual environment (default .venv) and installs recsearch with its pinned stack:
# the package and its extras as pyproject.toml declares them, at the exact versions of
# requirements/lock.txt: torch 2.13.0, FBGEMM 1.8.0 (fbgemm-gpu-cpu without a GPU, fbgemm-gpu with
# one), torchrec 1.8.0 (on a CPU machine with --no-deps: it declares the CUDA-only fbgemm-gpu,
# which would replace the CPU build), torchx, tensorboard, optuna. The package is built by the
# backend pyproject.toml declares (setuptools, fetched by pip into an isolated build environment),
# so the venv needs no setuptools of its own (Python 3.12's venvs have none). Safe to re-run: an
# environment already built from the same lock and pyproject.toml is kept.
#
#   tools/install.sh            # -> .venv
#   VENV=/path/env tools/install.sh
#   RECSEARCH_STACK=cuda tools/install.sh   # the CUDA stack without a GPU here (a Docker build);
#                                           # auto (default): cuda when nvidia-smi lists a GPU
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}

STACK=${RECSEARCH_STACK:-auto}
HAS_GPU=false
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  HAS_GPU=true
fi
case "$STACK" in
  auto) if [ "$HAS_GPU" = true ]; then STACK=cuda; else STACK=cpu; fi ;;
  cpu|cuda) ;;
  *) echo "recsearch: RECSEARCH_STACK must be auto, cpu or cuda, got '$STACK'" >&2; exit 2 ;;
esac
if [ "$STACK" = cuda ]; then
  FBGEMM="fbgemm-gpu==1.8.0"
  EXTRAS="cuda,search,launch,test"
  TORCHREC_APART=false
else
  FBGEMM="fbgemm-gpu-cpu==1.8.0"
  EXTRAS="cpu,search,launch,test"
  TORCHREC_APART=true  # torchrec without its dependency fbgemm-gpu (the CUDA build)
fi
stamp_want="$(cat requirements/lock.txt pyproject.toml | sha256sum | cut -c1-16) $FBGEMM"
stamp_file="$VENV/.recsearch-installed"
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp_want" ]; then
  echo "recsearch: environment $VENV is up to date"
  exit 0
fi

echo "recsearch: creating $VENV with $("$PY" --version) and $FBGEMM"
"$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip
# The lock pins fbgemm-gpu-cpu; on a GPU machine that line is swapped for the CUDA build.
lock=$(mktemp)
trap 'rm -f "$lock"' EXIT
grep -v -i '^fbgemm' requirements/lock.txt > "$lock"
"${PIP[@]}" install -q -c "$lock" "$FBGEMM" -e ".[$EXTRAS]"
if [ "$TORCHREC_APART" = true ]; then
  "${PIP[@]}" install -q -c "$lock" --no-deps torchrec
fi
if [ "$STACK" = cuda ] && [ "$HAS_GPU" = false ]; then
  echo "recsearch: the CUDA build is not loaded here (no GPU visible); on a GPU host check it with:" \
    "python -c 'import fbgemm_gpu, torchrec'"
else
  "$VENV/bin/python" - <<'PY'
import fbgemm_gpu, torch, torchrec  # noqa: F401  (fails loudly if the FBGEMM build does not load)
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist  # noqa: F401
print(f"recsearch: torch {torch.__version__}, torchrec ok, fbgemm_gpu ok")
PY
fi
echo "$stamp_want" > "$stamp_file"
echo "recsearch: installed; activate with: source $VENV/bin/activate"
