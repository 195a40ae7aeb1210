#!/usr/bin/env bash
# Distributed training with torchrun: tools/dist_train.sh CONFIG GPUS [train.py args]
# GPUS processes on this node; without GPUs they train on CPU with the gloo backend.
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
# the interpreter with torch and mmslora, e.g. PYTHON=.venv/bin/python
PYTHON=${PYTHON:-python}
cd "$(dirname "$0")/.." || exit 1
PYTHONPATH="$PWD:${PYTHONPATH:-}" \
"$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --node_rank="$NODE_RANK" \
  --master_addr="$MASTER_ADDR" --nproc_per_node="$GPUS" --master_port="$PORT" \
  tools/train.py "$CONFIG" --launcher pytorch "${@:3}"
