#!/usr/bin/env bash
# The device check: one device command, run in the repository root of a lent GPU machine.
#   bash bench/gpu/check.sh              <= 300 s: scbert-base only, a 20-step stop-and-go (10 + 10)
#   bash bench/gpu/check.sh --full       <= 540 s: both families, a 50-step stop-and-go (25 + 25)
#   bash bench/gpu/check.sh --dry-run    on CPU (CI runs it): every step but the CUDA ones; the stop-and-go runs a
#                                        tiny fp32 model for 4 steps; nothing is installed
# Prepare here first: bash bench/gpu/prepare.sh (fills .whl/ and .gpu/counts/, both carried; COUNTS=DIR overrides), then with the device
# tool: run(command="bash bench/gpu/check.sh", carry=[".whl", ".gpu"], timeout_s=360).
# Every step has its own timeout (their sum is the budget above); the first failed import stops the check with the
# reason. Logs and figures go to $OUT (the device tool's folder) or bench/gpu/out; the last step prints one table
# (backend parity, predicted vs measured MFU, tokens/s varlen vs padded SDPA, stop-and-go, peak memory) and writes
# it to $OUT/summary.md.
set -uo pipefail
cd "$(dirname "$0")/../.."
FULL=0
DRY=0
for arg in "$@"; do
  case "$arg" in
    --full) FULL=1 ;;
    --dry-run) DRY=1 ;;
    *) echo "check.sh: unknown argument '$arg'; allowed: --full, --dry-run" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-bench/gpu/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
WORK=${WORK:-/tmp/scgrn-gpu}
rm -rf "$WORK" && mkdir -p "$WORK"
status=0
step() { echo; echo "=== $* ($(date +%T))"; }
if [ "$DRY" = 1 ]; then
  PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
  COUNTS=${COUNTS:-$( [ -d .gpu/counts ] && echo .gpu/counts || echo ../shared/data/counts )}
else
  PY=${PY:-python3}
  COUNTS=${COUNTS:-.gpu/counts}
fi
# budgets in seconds: install, imports, gpu tests, cost model, bench train gpu, stop-and-go (straight, first, resumed)
if [ "$FULL" = 1 ]; then
  T_INSTALL=30 T_IMPORTS=30 T_TESTS=60 T_MODEL=20 T_BENCH=200 T_STRAIGHT=75 T_FIRST=55 T_RESUMED=60
  CONFIGS=scbert-base,exceiver-base STEPS=50
else
  T_INSTALL=30 T_IMPORTS=30 T_TESTS=60 T_MODEL=20 T_BENCH=75 T_STRAIGHT=35 T_FIRST=25 T_RESUMED=25
  CONFIGS=scbert-base STEPS=20
fi
echo "budget: $((T_INSTALL + T_IMPORTS + T_TESTS + T_MODEL + T_BENCH + T_STRAIGHT + T_FIRST + T_RESUMED)) s" \
  "(full=$FULL, dry run=$DRY)"

step "1 install the carried wheels"
if [ "$DRY" = 1 ]; then
  echo "dry run: not installing; $PY is used as it is"
else
  ls .whl/*.whl > /dev/null 2>&1 || { echo "no .whl/*.whl: run bash bench/gpu/prepare.sh here and carry .whl"; exit 2; }
  timeout "$T_INSTALL" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "wheel install failed: run bench/gpu/prepare.sh again and carry .whl"; exit 2; }
  export PYTHONPATH="/tmp/site:$PWD"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/device.txt" 2>&1 \
    || echo "nvidia-smi failed" > "$OUT/device.txt"
fi
[ "$DRY" = 1 ] && echo "CPU ($(uname -m)), dry run" > "$OUT/device.txt"
cat "$OUT/device.txt"

step "2 imports"
timeout "$T_IMPORTS" "$PY" bench/gpu/imports.py "$OUT" || { echo "check stopped at the imports (see above)"; exit 3; }
if [ "$DRY" = 0 ]; then
  timeout 30 "$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device';
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" \
    | tee -a "$OUT/device.txt" || { echo "check stopped: torch cannot use the GPU"; exit 3; }
fi

step "3 backend parity and no host syncs (gpu marker)"
GPU_TESTS=(tests/pretrain/test_attention.py tests/pretrain/test_host_sync.py)
if [ "$DRY" = 1 ]; then
  timeout "$T_TESTS" "$PY" -m pytest -q --collect-only -m gpu -p no:cacheprovider "${GPU_TESTS[@]}" \
    > "$OUT/gpu_tests_collected.log" 2>&1 || status=1
  tail -1 "$OUT/gpu_tests_collected.log"
else
  timeout "$T_TESTS" "$PY" -m pytest -q -m gpu -p no:cacheprovider "${GPU_TESTS[@]}" \
    > "$OUT/gpu_tests.log" 2>&1 || status=1
  tail -15 "$OUT/gpu_tests.log"
fi

step "4 cost model (predicted, not measured)"
timeout "$T_MODEL" "$PY" -m launch.cli bench train model --config "$CONFIGS" --gpu H100 --counts "$COUNTS" \
  --json "$OUT/model.json" 2>&1 | tee "$OUT/model.log" || status=1

step "5 bench train gpu ($CONFIGS)"
# the real cells, sharded once: the bench and the stop-and-go train on this corpus
timeout 60 "$PY" -c "import sys; from bench.train_bench import prepare_corpus; print(prepare_corpus(*sys.argv[1:]))" \
  "$COUNTS" "$WORK/bench" > "$OUT/corpus.log" 2>&1 || { status=1; tail -5 "$OUT/corpus.log"; }
CORPUS="$WORK/bench/corpus_$(basename "$COUNTS")"
if [ "$DRY" = 1 ]; then
  echo "dry run: needs CUDA; would run: $PY -m launch.cli bench train gpu --configs $CONFIGS --counts $COUNTS"
else
  timeout "$T_BENCH" "$PY" -m launch.cli bench train gpu --configs "$CONFIGS" --counts "$COUNTS" \
    --workdir "$WORK/bench" --json "$OUT/train_gpu.json" > "$OUT/train_gpu.log" 2>&1 || status=1
  tail -12 "$OUT/train_gpu.log"
fi

step "6 ZeRO-2 stop and go"
if [ "$DRY" = 1 ]; then  # the same three runs on CPU: a tiny fp32 model, 4 steps (2 + 2)
  STEPS=4
  COMMON=(--config launch/configs/pretrain/debug.yaml "data.corpus=$CORPUS" parallel.zero_stage=2
    train.precision=fp32 train.steps=$STEPS train.warmup_steps=1 train.save_every=2 train.eval_every=100
    train.log_every=1 data.micro_batch_cells=4 data.block_cells=16 data.num_workers=0)
else
  COMMON=(--config launch/configs/pretrain/scbert-small.yaml "data.corpus=$CORPUS"
    parallel.zero_stage=2 train.precision=bf16 train.steps=$STEPS train.warmup_steps=5 train.save_every=$((STEPS / 2))
    train.eval_every=1000 train.log_every=5 model.activation_checkpointing=false data.num_workers=2
    train.peak_tflops=989)
fi
HALF=$((STEPS / 2))
timeout "$T_STRAIGHT" "$PY" -m pretrain "${COMMON[@]}" "train.out_dir=$WORK/straight" train.resume=none \
  > "$OUT/stopgo_straight.log" 2>&1 || { status=1; tail -5 "$OUT/stopgo_straight.log"; }
timeout "$T_FIRST" "$PY" -m pretrain "${COMMON[@]}" "train.out_dir=$WORK/stopgo" train.resume=none \
  "train.stop_after=$HALF" > "$OUT/stopgo_first.log" 2>&1 || { status=1; tail -5 "$OUT/stopgo_first.log"; }
timeout "$T_RESUMED" "$PY" -m pretrain "${COMMON[@]}" "train.out_dir=$WORK/stopgo" train.resume=auto \
  > "$OUT/stopgo_resumed.log" 2>&1 || { status=1; tail -5 "$OUT/stopgo_resumed.log"; }
"$PY" bench/gpu/stopgo.py "$WORK/straight" "$WORK/stopgo" "$HALF" "$OUT" || status=1

step "7 summary"
if [ "$DRY" = 1 ]; then "$PY" bench/gpu/summary.py "$OUT" --dry-run; else "$PY" bench/gpu/summary.py "$OUT"; fi
echo "check finished with status $status"
exit $status
