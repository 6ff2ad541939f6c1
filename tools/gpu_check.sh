#!/usr/bin/env bash
# One command for a GPU machine: makes the data, runs issue 12's trainer targets, the engines side
# by side (same losses), the bare-TorchRec and plain-PyTorch anchors, the `gpu` tests, (step
# `search`, not in the default STEPS) issue 13's search throughput on the GPU, (step `place`,
# not in the default STEPS) issue 14's measured placement comparison, (step `families`, not in the
# default STEPS) issue 14's leave-one-family-out generalization, and
# writes the docs/BENCHMARKS.md GPU section to $OUT/BENCHMARKS_gpu.md (copy it into the docs with
# `python tools/bench_gpu.py report --out <dir with results.jsonl> --md docs/BENCHMARKS.md`).
#
#   OUT=/tmp/gpu_out bash tools/gpu_check.sh            # on the GPU machine, from the repo root
#   OUT=/tmp/gpu_out STEPS=place bash tools/gpu_check.sh  # only `recsearch place eval --device cuda`
#
# With ../shared/gpu copied to .gpu (see ../shared/GPU.md) it first installs that bundle (fbgemm-gpu
# 1.6.0 + torchrec 1.6.1 for torch 2.11). Each step has its own timeout and appends to
# $OUT/results.jsonl as it goes, so a step that fails or runs out of time loses nothing before it.
# STEPS picks and orders the steps (default: all but search and place, the targets first); the
# synthetic data is made only for the steps that train on it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check_out}
DATA=${DATA:-/tmp/recsearch_synth_kaggle}
RUNS=${RUNS:-/tmp/recsearch_gpu_runs}
STEPS=${STEPS:-"targets equality mlperf anchors host pytest"}
PY=${PYTHON:-python3}
QUICK=${QUICK:+--quick}  # QUICK=1: tiny steps and batches, to check the script itself on a CPU
mkdir -p "$OUT" "$RUNS"
if [ -d .gpu ] && command -v nvidia-smi >/dev/null 2>&1; then
  bash .gpu/setup.sh >> "$OUT/steps.log" 2>&1 || { echo "gpu bundle setup failed"; tail "$OUT/steps.log"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee -a "$OUT/steps.log"

step() {  # step NAME SECONDS COMMAND...: run with a timeout, append its output to $OUT/steps.log,
  # print its summary lines (at most 8 files come back from the GPU machine: keep to 3)
  local name=$1 limit=$2; shift 2
  local started=$SECONDS
  echo "== $name (limit ${limit}s)" | tee -a "$OUT/steps.log"
  timeout "$limit" "$@" > "$OUT/step.tmp" 2>&1
  local rc=$?
  cat "$OUT/step.tmp" >> "$OUT/steps.log"
  grep -E "^\[bench_gpu\]|passed|failed|skipped|Error|^ *(Name|[a-z_:]+.*[0-9]+\.[0-9]+(ms|us))|^\[ *[0-9]+ s\]|best baseline|device kernels|^\[[0-9][0-9]:[0-9][0-9]:[0-9][0-9]\] |_vs_task_best" "$OUT/step.tmp" | tail -30
  rm -f "$OUT/step.tmp"
  echo "   $name: exit $rc after $((SECONDS - started))s" | tee -a "$OUT/steps.log"
}

needs_data=
for group in $STEPS; do
  case $group in targets|equality|mlperf|host|profile) needs_data=1 ;; esac
done
if [ -n "$needs_data" ] && [ ! -f "$DATA/meta.json" ]; then
  step synth 150 "$PY" -m recsearch.cli data synth --config configs/data/synthetic_kaggle.yaml --out "$DATA" \
    --workers 16 num_days=4 rows_per_day=2000000
fi
for group in $STEPS; do
  case $group in
    targets)  step targets 240 "$PY" tools/bench_gpu.py run --data "$DATA" --out "$OUT" --runs "$RUNS" --group targets $QUICK ;;
    equality) step equality 150 "$PY" tools/bench_gpu.py run --data "$DATA" --out "$OUT" --runs "$RUNS" --group equality $QUICK ;;
    mlperf)   step mlperf 200 "$PY" tools/bench_gpu.py run --data "$DATA" --out "$OUT" --runs "$RUNS" --group mlperf $QUICK ;;
    host)     step host 90 "$PY" tools/bench_gpu.py run --data "$DATA" --out "$OUT" --runs "$RUNS" --group host $QUICK ;;
    profile)  step profile 120 "$PY" tools/bench_gpu.py profile --data "$DATA" --out "$OUT" $QUICK ;;
    anchors)  step anchors 150 "$PY" tools/bench_gpu.py anchors --out "$OUT" --anchor-script .gpu/bench_anchor.py $QUICK ;;
    search)   # issue 13: quickstart-sized searches on the GPU, today's runner (subprocess, 2 at a time)
              # against the pool runner with 4 trials sharing the GPU; writes $OUT/BENCHMARKS_search.md
              step search 300 "$PY" tools/bench_trial_overhead.py --device cuda --trials 9 --breakdown-runs 2 \
                --concurrency subprocess=2 --concurrency pool=4 --workdir "$RUNS/search" \
                --data "$RUNS/quickstart_data" --out-md "$OUT/BENCHMARKS_search.md" ;;
    place)    # issue 14: every method placed and measured on the 18 H100 tasks (50-200 tables on 2-16
              # devices), one round, batch 65536 (the H100 cost net's); target <= 300 s. Writes
              # $OUT/place_eval_h100.json and the markdown section $OUT/BENCHMARKS_place.md
              # (QUICK=1: one task on the CPU, tiny batch and tables, to check the step itself)
              place_args=(--device cuda)
              [ -n "$QUICK" ] && place_args=(--device cpu --limit 1 --batch-size 256 --warmup 0 --iters 1 --row-cap 1000 --no-timing)
              place_start=$(date +%s)
              echo "   place eval started $(date -u +%FT%TZ)" | tee -a "$OUT/steps.log"
              step place 400 "$PY" -m recsearch.cli place eval --tasks recsearch/placement/data/tasks_h100 \
                --rounds 1 "${place_args[@]}" --out "$OUT/place_eval_h100.json" --md "$OUT/BENCHMARKS_place.md" \
                --section place_eval_h100_measured --title "Embedding-table placement on one GPU, measured (place_eval_h100_measured)"
              echo "   place eval finished $(date -u +%FT%TZ): $(($(date +%s) - place_start)) s wall (target <= 300 s)" | tee -a "$OUT/steps.log" ;;
    families) # issue 14 target 1 on the GPU: leave-one-family-out (7 table families; per held-out family a
              # cost net and policy trained on the others' GPU samples, then its 3 tasks measured). Sized
              # for one window: 60 samples per family, at most 0.6 min each; nets and policies on 8 CPU
              # jobs. Resumable: $RUNS/families is kept while the machine stays warm, and its small
              # files come back in $OUT/families_work.tar.gz to carry into the next window.
              fam_args=(--device cuda --samples 60 --sample-minutes 0.6 --jobs 8 --epochs 2000 --policy-minutes 1.5 --linear-work 2)
              [ -n "$QUICK" ] && fam_args=(--device cpu --families avazu criteo_terabyte --samples 4 --max-tables 4 \
                --epochs 30 --policy-minutes 0.1 --policy-iters 2 --samples-k 2 --jobs 1 --linear-work 2)
              [ -f "$OUT/families_work.tar.gz" ] && tar -xzf "$OUT/families_work.tar.gz" -C "$RUNS"
              step families 540 "$PY" tools/bench_place_families.py --work "$RUNS/families" "${fam_args[@]}" \
                --out-json "$OUT/place_families_gpu.json" --out-md "$OUT/BENCHMARKS_families.md"
              [ -d "$RUNS/families" ] && tar -czf "$OUT/families_work.tar.gz" -C "$RUNS" --exclude='*.log' families ;;
    pytest)   step pytest 180 "$PY" -m pytest -q -m gpu tests/train/test_gpu.py tests/placement/test_gpu_measure.py tests/placement/test_measure_reuse.py -p no:cacheprovider
              "$PY" tools/bench_gpu.py record --out "$OUT" --group pytest --case "pytest -q -m gpu tests/train/test_gpu.py tests/placement/test_gpu_measure.py tests/placement/test_measure_reuse.py" \
                --summary "$(grep -E '(passed|failed|skipped|error)' "$OUT/steps.log" | tail -1)" ;;
  esac
done
# steps that record no results.jsonl (place, families, search) leave nothing to report here; that
# is not a failure of the script
if [ -f "$OUT/results.jsonl" ]; then
  "$PY" tools/bench_gpu.py report --out "$OUT" --md "$OUT/BENCHMARKS_gpu.md" > /dev/null 2>> "$OUT/steps.log" \
    && sed -n '1,60p' "$OUT/BENCHMARKS_gpu.md"
fi
