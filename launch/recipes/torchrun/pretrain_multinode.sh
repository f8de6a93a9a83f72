#!/usr/bin/env bash
# Multi-node pretraining with torchrun: start this same script on every node.
#
#   NNODES=4 GPUS_PER_NODE=8 MASTER_ADDR=<node 0's address> \
#       bash launch/recipes/torchrun/pretrain_multinode.sh launch/configs/pretrain/scbert-base.yaml [key=value ...]
#
# Rendezvous (RDZV):
#   c10d (default): every node runs the identical command; the nodes meet at the c10d store on
#               MASTER_ADDR:MASTER_PORT (--rdzv_backend c10d --rdzv_endpoint), which hands out node ranks.
#   static:     fixed node ranks, the classic --nnodes/--node_rank/--master_addr/--master_port form:
#               NODE_RANK=<0 on MASTER_ADDR, 1, 2, ...> RDZV=static bash launch/recipes/torchrun/pretrain_multinode.sh ...
# Try it on one machine as two 1-process "nodes" (CPU is fine):
#   NNODES=2 GPUS_PER_NODE=1 RDZV=static NODE_RANK=0 bash launch/recipes/torchrun/pretrain_multinode.sh \
#       launch/configs/pretrain/debug.yaml train.steps=4 &
#   NNODES=2 GPUS_PER_NODE=1 RDZV=static NODE_RANK=1 bash launch/recipes/torchrun/pretrain_multinode.sh \
#       launch/configs/pretrain/debug.yaml train.steps=4
# torchrun sets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT, which `python -m pretrain` reads.
# `scgrn launch --launcher torchrun --nodes N --gpus-per-node G --config CFG --dry-run` prints the command with the
# batch and memory arithmetic checked.
set -euo pipefail
CONFIG=${1:?usage: pretrain_multinode.sh CONFIG [key=value ...]}
shift

NNODES=${NNODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-1}  # processes on a CPU-only machine
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
if [ "${RDZV:-c10d}" = c10d ]; then
  rdzv=(--rdzv_id "${RDZV_ID:-scgrn}" --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT")
else
  rdzv=(--node_rank "${NODE_RANK:?set NODE_RANK: 0 on MASTER_ADDR, then 1, 2, ...}"
        --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
fi

exec torchrun --nnodes "$NNODES" --nproc_per_node "$GPUS_PER_NODE" "${rdzv[@]}" \
  -m pretrain --config "$CONFIG" "$@"
