#!/usr/bin/env bash
# The GPU checks and benchmarks in one call, offline (the GPU machine has no
# network; jax, optax and flax are preinstalled there). Writes JSON/markdown to
# $OUT (default /tmp/bort_gpu) and prints one summary table last.
#
#   bash benchmarks/gpu.sh            # ~5 minutes on an H100/H200
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/bort_gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import jax, optax, flax; print('jax', jax.__version__, 'optax', \
optax.__version__, 'flax', flax.__version__, jax.devices())"

echo "== 1. correctness on the GPU: corrections vs jax.grad, optax contract"
timeout 150 $PY -m pytest -q -p no:cacheprovider -x tests/core/test_penalty.py \
  tests/core/test_transform.py -k "not property" 2>&1 | tail -3

echo "== 2. one optimizer step: bort_adamw vs optax.adamw"
timeout 300 $PY benchmarks/step_overhead.py --reduced --repeats 20 \
  --json "$OUT/step_overhead.json" | tee "$OUT/step_overhead.md"

if [ -f benchmarks/scaling.py ]; then
  echo "== 3. scaling against m and n"
  timeout 120 $PY benchmarks/scaling.py --quick | tee "$OUT/scaling.md"
fi

echo "== summary"
$PY benchmarks/summarize_gpu.py "$OUT/step_overhead.json"
