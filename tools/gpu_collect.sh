#!/usr/bin/env bash
# One command for a GPU machine: collect FBGEMM TBE cost samples (`recsearch place measure --pool`)
# for at most MINUTES (default 8) into OUT_JSONL, appending. Rerun the same command to continue:
# sample i is always the same table set, samples already in the file are skipped, and a sample cut
# short by the hard stop is dropped cleanly on the next run.
#
#   bash tools/gpu_collect.sh /tmp/h100_wide.jsonl                 # from any directory
#   MINUTES=3 bash tools/gpu_collect.sh /tmp/h100_wide.jsonl       # three more minutes of the same
#
# Settings of the shipped H100 samples (recsearch/placement/data/README.md): 1..32 tables per
# sample, batch 65,536, 5 warm-up and 20 timed iterations (medians, CUDA events), rowwise_adagrad,
# seed 0. The pool is pool_train_wide.json, not the shipped samples' pool_train.json: the H100
# evaluation tasks (tasks_h100, from pool_s1_test.json) hold 5 tables heavier (dim x pooling up to
# 19,017) than any of pool_train.json (at most 5,264), while the wide pool has 7 above 5,300 (up to
# 9,600); on the CPU the same change of pool took the cost net's error on unseen tables from 9.6% to
# 6.2%. Its 100 first tables are pool_train.json's, so the shipped samples stay usable beside the
# new ones. To continue the shipped file itself instead, copy it and set
# POOL=recsearch/placement/data/pool_train.json (a file of another pool or other settings is
# refused: its sample indices would stand for other table sets).
# Each pool table's ids are generated once and reused by every sample holding it (--reuse-inputs):
# drawing them afresh took most of a sample's 1.2 s on the H100.
#
# Environment: MINUTES (the hard limit; the collector stops starting samples STARTUP_S = 45 s
# before it, for start-up and the sample under way), POOL, SAMPLES (index to stop at, default
# 5000: the time is the limit), SEED, DEVICE, BATCH, WARMUP, ITERS, MAX_TABLES, ROW_CAP (rows
# allocated per table at most; unset: the real sizes), PYTHON. Check the script on a CPU:
#   DEVICE=cpu BATCH=64 WARMUP=0 ITERS=1 ROW_CAP=1000 SAMPLES=3 bash tools/gpu_collect.sh /tmp/x.jsonl
set -euo pipefail
OUT_JSONL=${1:?usage: bash tools/gpu_collect.sh OUT_JSONL}
OUT_JSONL=$(realpath -m "$OUT_JSONL")
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-8}
STARTUP_S=${STARTUP_S:-45}
POOL=${POOL:-recsearch/placement/data/pool_train_wide.json}
SAMPLES=${SAMPLES:-5000}
SEED=${SEED:-0}
DEVICE=${DEVICE:-cuda}
BATCH=${BATCH:-65536}
WARMUP=${WARMUP:-5}
ITERS=${ITERS:-20}
MAX_TABLES=${MAX_TABLES:-32}
ROW_CAP=${ROW_CAP:-}
PY=${PYTHON:-python3}
if [ -d .gpu ] && command -v nvidia-smi >/dev/null 2>&1; then
  bash .gpu/setup.sh > /dev/null
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

limit_s=$(awk -v m="$MINUTES" 'BEGIN { print m * 60 }')
budget_min=$(awk -v m="$MINUTES" -v s="$STARTUP_S" 'BEGIN { b = m - s / 60; print (b > 0 ? b : 0) }')
before=0
[ -f "$OUT_JSONL" ] && before=$(grep -c . "$OUT_JSONL" || true)
echo "collecting into $OUT_JSONL ($before lines there): pool $POOL, $DEVICE, batch $BATCH," \
  "warmup $WARMUP, iters $ITERS, 1..$MAX_TABLES tables, seed $SEED; ${budget_min} min budget," \
  "hard stop at ${limit_s} s"
started=$(date +%s)
rc=0
timeout --signal=INT --kill-after=15 "$limit_s" \
  "$PY" -m recsearch.cli place measure --pool "$POOL" --samples "$SAMPLES" --out "$OUT_JSONL" \
  --device "$DEVICE" --batch-size "$BATCH" --warmup "$WARMUP" --iters "$ITERS" \
  --max-tables "$MAX_TABLES" --seed "$SEED" ${ROW_CAP:+--row-cap "$ROW_CAP"} --reuse-inputs \
  --minutes "$budget_min" --no-progress \
  || rc=$?
after=0
[ -f "$OUT_JSONL" ] && after=$(grep -c . "$OUT_JSONL" || true)
echo "$((after - before)) new samples in $(($(date +%s) - started)) s; $after lines in $OUT_JSONL"
if [ "$rc" -eq 124 ]; then
  echo "hard stop at ${limit_s} s (the budget left too little for start-up): rerun to continue"
elif [ "$rc" -ne 0 ]; then
  echo "the collector failed (exit $rc)" >&2
  exit "$rc"
fi
