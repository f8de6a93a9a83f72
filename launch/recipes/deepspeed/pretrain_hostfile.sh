#!/usr/bin/env bash
# Pretraining with the DeepSpeed launcher and a hostfile (one `hostname slots=GPUs` line per node).
#
# Multi-node: run on the FIRST host of the hostfile (it ssh-es into the others with pdsh; passwordless ssh needed):
#   bash launch/recipes/deepspeed/pretrain_hostfile.sh launch/recipes/deepspeed/hostfile \
#       launch/configs/pretrain/scbert-base.yaml
# One machine, no ssh (2 CPU processes or 2 GPUs):
#   bash launch/recipes/deepspeed/pretrain_hostfile.sh launch/recipes/deepspeed/hostfile.localhost \
#       launch/configs/pretrain/debug.yaml train.steps=4
# Arguments after the config are pretrain key=value overrides. Env: MASTER_ADDR (default: the first host),
# MASTER_PORT (default 29500). `scgrn launch --launcher deepspeed --hostfile H --nodes N --gpus-per-node G --config CFG
# --dry-run` prints the same command after checking the hostfile's shape and the batch and memory arithmetic.
set -euo pipefail
usage="usage: pretrain_hostfile.sh HOSTFILE CONFIG [key=value ...]"
HOSTFILE=${1:?$usage}
CONFIG=${2:?$usage}
shift 2

hosts=$(grep -v '^[[:space:]]*#' "$HOSTFILE" | awk 'NF {print $1}')
first_host=$(echo "$hosts" | head -n 1)
extra=()
if [ "$(echo "$hosts" | wc -l)" -eq 1 ] && { [ "$first_host" = localhost ] || [ "$first_host" = 127.0.0.1 ]; }; then
  # A single local host: DeepSpeed would still ssh into it, once to check it and once to ask its address
  # (`ssh localhost hostname -I`); skip both, and the ranks start as local processes.
  extra=(--no_ssh_check)
  MASTER_ADDR=127.0.0.1
fi

exec deepspeed --hostfile "$HOSTFILE" "${extra[@]}" \
  --master_addr "${MASTER_ADDR:-$first_host}" --master_port "${MASTER_PORT:-29500}" \
  --module pretrain --config "$CONFIG" "$@"
