#!/usr/bin/env bash
# The GPU checks and benchmarks in one call, offline: it installs nothing and
# downloads nothing (jax, optax and flax must be installed; Python 3.11+).
# Runs, each under a timeout and all within $GPU_SH_BUDGET seconds (default
# 460, under 8 minutes on one H100/H200):
#   1. the correctness pass: a focused subset of tests/core on the GPU;
#   2. benchmarks/step_overhead.py: the optimizer step, device-side loop;
#   3. benchmarks/train_step.py --recommended: the whole training step,
#      device-side loop, at the aliases' default setting and the amortised
#      candidates (l2-full, huber-fullrow "ada"; every step and every=4)
#      against AdamW, beside each one's arithmetic floor;
#   4. benchmarks/gpu_train.py, if present: models trained within a budget
#      (the full-width SimpleCNN at the authors' recipe, ResNet-18, ViT;
#      alone, `python benchmarks/gpu_train.py --budget-seconds 540` gives
#      each model three minutes, under 10 minutes in all).
# Logs and JSON go to $OUT (default /tmp/bort_gpu; only the script's own
# files there are replaced); one summary table is printed last
# (benchmarks/summarize_gpu.py). The exit status is 1 when a stage failed,
# timed out or was skipped for the budget.
#
#   bash benchmarks/gpu.sh                          # on the GPU machine
#   GPU_SH_QUICK=1 PYTHON=.venv/bin/python bash benchmarks/gpu.sh  # CPU smoke
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 PIP_NO_INDEX=1
OUT=${OUT:-/tmp/bort_gpu}
mkdir -p "$OUT"
# Only the files this script writes: $OUT may hold a user's own.
for own in tests.log tests.txt step_overhead.md step_overhead.json \
    train_step.md train_step.json gpu_train.md gpu_train.json; do
  rm -f "$OUT/$own"
done
FAILED=0  # the exit status: 1 when a stage failed, timed out or was skipped
PY=${PYTHON:-python3}
QUICK=${GPU_SH_QUICK:-0}
BUDGET=${GPU_SH_BUDGET:-460}
START=$SECONDS
RESERVE=15  # for the summary

# stage NAME CAP LOG cmd...: runs cmd under min(CAP, what is left) seconds,
# its output shown and kept in $OUT/LOG.
stage() {
  local name=$1 cap=$2 log=$3
  shift 3
  local left=$((BUDGET - RESERVE - (SECONDS - START)))
  local limit=$((cap < left ? cap : left))
  echo "== $name (at most ${limit} s)"
  if [ "$limit" -le 5 ]; then
    echo "skipped: the budget of ${BUDGET} s is spent" | tee "$OUT/$log"
    FAILED=1
    return
  fi
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "timed out after ${limit} s" | tee -a "$OUT/$log"
  elif [ "$rc" -ne 0 ]; then
    echo "exit status $rc" | tee -a "$OUT/$log"
  fi
  [ "$rc" -eq 0 ] || FAILED=1
}

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
$PY -c "import sys, jax, optax, flax; print('python', sys.version.split()[0], \
'jax', jax.__version__, 'optax', optax.__version__, 'flax', flax.__version__, \
jax.devices())"

# Per-stage caps (seconds); the quick CPU smoke run checks the plumbing with
# tiny workloads and looser caps.
if [ "$QUICK" = 1 ]; then
  BUDGET=${GPU_SH_BUDGET:-1200}
  CAPS=(300 300 300 300)
  TESTS=(tests/core/test_penalty.py
         -k "ada_amplitude or unknown_mode or vector_is_not")
  STEP_ARGS=(--sets deit_s --configs "l2-full c=1" --repeats 1
             --matmul-size 512)
  TRAIN_ARGS=(--models mlp --width mlp=16 --optimizers adamw
              --configs "recommended,huber-fullrow ada" --every 2
              --repeats 1 --steps 2)
  GPU_TRAIN_ARGS=(--quick --models simple-cnn,resnet18 --budget-seconds 40)
else
  CAPS=(80 100 170 150)
  TESTS=(tests/core/test_penalty.py tests/core/test_transform.py
         tests/core/test_every.py -k "not property")
  STEP_ARGS=(--reduced --repeats 10)
  TRAIN_ARGS=(--recommended --optimizers adamw
              --models resnet18,vit,mlp,mlp-784,cnn,simple-cnn
              --repeats 5 --steps 20)
  GPU_TRAIN_ARGS=(--budget-seconds 150)
fi

stage "1. correctness on the device: corrections vs jax.grad, optax contract" \
  "${CAPS[0]}" tests.log $PY -m pytest -q -p no:cacheprovider "${TESTS[@]}"
tail -n 1 "$OUT/tests.log" > "$OUT/tests.txt"

stage "2. the optimizer step: bort_adamw vs optax.adamw (device-side loop)" \
  "${CAPS[1]}" step_overhead.md $PY benchmarks/step_overhead.py "${STEP_ARGS[@]}" \
  --json "$OUT/step_overhead.json"

stage "3. the whole training step: the default and amortised Bort vs AdamW" \
  "${CAPS[2]}" train_step.md $PY benchmarks/train_step.py "${TRAIN_ARGS[@]}" \
  --json "$OUT/train_step.json"

GPU_TRAIN=()
if [ -f benchmarks/gpu_train.py ]; then
  stage "4. trained models within a budget (benchmarks/gpu_train.py)" \
    "${CAPS[3]}" gpu_train.md $PY benchmarks/gpu_train.py "${GPU_TRAIN_ARGS[@]}" \
    --out "$OUT/gpu_train.json"
  GPU_TRAIN=(--gpu-train "$OUT/gpu_train.json")
fi

echo "== summary ($((SECONDS - START)) s in all; logs and JSON in $OUT)"
$PY benchmarks/summarize_gpu.py --tests "$OUT/tests.txt" \
  --step-overhead "$OUT/step_overhead.json" \
  --train-step "$OUT/train_step.json" "${GPU_TRAIN[@]}"
exit $FAILED
