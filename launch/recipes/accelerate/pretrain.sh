#!/usr/bin/env bash
# Pretraining with `accelerate launch` and the DeepSpeed plugin (configs in launch/configs/accelerate/).
#
# One machine, 2 CPU processes (gloo):
#   bash launch/recipes/accelerate/pretrain.sh launch/configs/accelerate/cpu-2proc.yaml \
#       launch/configs/pretrain/debug.yaml train.steps=4
# One node, 8 GPUs:
#   bash launch/recipes/accelerate/pretrain.sh launch/configs/accelerate/zero2-1node.yaml \
#       launch/configs/pretrain/scbert-base.yaml
# Multi-node: on every node, with that node's rank (0 on MASTER_ADDR):
#   MACHINE_RANK=<0..N-1> MASTER_ADDR=<node 0's address> bash launch/recipes/accelerate/pretrain.sh \
#       launch/configs/accelerate/zero2-multinode.yaml launch/configs/pretrain/scbert-base.yaml
# i.e. accelerate launch --config_file YAML [--machine_rank R --main_process_ip ADDR] --main_process_port PORT
#      -m pretrain --config CFG [key=value ...]
# `python -m pretrain` creates no Accelerator: it reads the RANK / WORLD_SIZE / LOCAL_RANK / MASTER_* variables that
# accelerate launch sets and takes its ZeRO settings from the pretrain YAML, so the accelerate YAML's deepspeed_config
# must match it; `scgrn launch --launcher accelerate ... --dry-run` checks that.
set -euo pipefail
usage="usage: pretrain.sh ACCELERATE_YAML CONFIG [key=value ...]"
ACCELERATE_CONFIG=${1:?$usage}
CONFIG=${2:?$usage}
shift 2

args=(--config_file "$ACCELERATE_CONFIG" --main_process_port "${MASTER_PORT:-29500}")
if [ -n "${MACHINE_RANK:-}" ]; then
  args+=(--machine_rank "$MACHINE_RANK" --main_process_ip "${MASTER_ADDR:?set MASTER_ADDR to the address of node 0}")
fi

exec accelerate launch "${args[@]}" -m pretrain --config "$CONFIG" "$@"
