#!/usr/bin/env bash
# The device check (issue 13): run from a clean accelerator machine, in the repository root, in under 8 minutes.
# Prepare on the CPU machine first: bash bench/gpu/prepare.sh (fills .whl/ and .gpu/counts/, both carried).
# Writes its logs and figures under $OUT (the device tool's folder) or bench/gpu/out.
#   1. installs the carried wheels (no network there) into /tmp/site
#   2. the `gpu` test marker: varlen / flash / sdpa parity forward and backward in bf16 at head dim 64, model-level
#      varlen vs sdpa
#   3. scgrn bench train gpu: tokens/s, cells/s, MFU of scbert-base and exceiver-base per available backend,
#      and varlen vs padded SDPA on the same real cells
#   4. one-GPU DeepSpeed ZeRO-2 bf16, 50 steps straight vs 25 + resume to 50 (losses compared)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-bench/gpu/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
status=0
step() { echo; echo "=== $* ($(date +%T))"; }

step install
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed: run bench/gpu/prepare.sh here and carry .whl"; exit 2; }
export PYTHONPATH="/tmp/site:$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, deepspeed, zarr, anndata; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'deepspeed', deepspeed.__version__, 'zarr', zarr.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/device.txt"

step "gpu tests"
timeout 180 python3 -m pytest -q -m gpu -p no:cacheprovider tests/pretrain/test_attention.py 2>&1 \
  | tee "$OUT/gpu_tests.log" | tail -25 || status=1

step "bench train gpu"
timeout 240 python3 -m launch.cli bench train gpu --counts .gpu/counts --workdir /tmp/scgrn-gpu \
  --json "$OUT/train_gpu.json" 2>&1 | tee "$OUT/train_gpu.log" || status=1

step "ZeRO-2 bf16 stop and resume"
CORPUS=/tmp/scgrn-gpu/corpus_counts
COMMON=(--config launch/configs/pretrain/scbert-small.yaml "data.corpus=$CORPUS" parallel.zero_stage=2
  train.precision=bf16 train.steps=50 train.warmup_steps=5 train.save_every=25 train.eval_every=25 train.log_every=5
  model.activation_checkpointing=false data.num_workers=2 train.peak_tflops=989)
timeout 150 python3 -m pretrain "${COMMON[@]}" train.out_dir=/tmp/zero2-straight train.resume=none \
  > "$OUT/zero2_straight.log" 2>&1 || { status=1; tail -20 "$OUT/zero2_straight.log"; }
timeout 100 python3 -m pretrain "${COMMON[@]}" train.out_dir=/tmp/zero2-stopgo train.resume=none train.stop_after=25 \
  > "$OUT/zero2_first.log" 2>&1 || { status=1; tail -20 "$OUT/zero2_first.log"; }
timeout 100 python3 -m pretrain "${COMMON[@]}" train.out_dir=/tmp/zero2-stopgo train.resume=auto \
  > "$OUT/zero2_resumed.log" 2>&1 || { status=1; tail -20 "$OUT/zero2_resumed.log"; }
python3 - "$OUT" <<'PY' || status=1
import json, sys
straight = json.load(open("/tmp/zero2-straight/run_summary.json"))
resumed = json.load(open("/tmp/zero2-stopgo/run_summary.json"))
a, b = straight["loss_history"][25:], resumed["loss_history"]
diff = max(abs(x - y) for x, y in zip(a, b))
line = f"ZeRO-2 bf16: straight final loss {a[-1]:.4f}, resumed {b[-1]:.4f}, steps 26-50 max |diff| {diff:.2e}"
print(line)
open(f"{sys.argv[1]}/zero2.txt", "w").write(line + "\n")
sys.exit(0 if len(b) == 25 and diff < 1e-3 else 1)
PY
grep -h "tokens_per_s\|mfu" /tmp/zero2-straight/tensorboard 2>/dev/null | head -0
echo; echo "check finished with status $status"
exit $status
