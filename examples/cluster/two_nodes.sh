#!/usr/bin/env bash
# Two machines without a scheduler: run this on each, with the same MASTER_ADDR (node 0's address, reachable
# from node 1) and NODE_RANK 0 on the first machine, 1 on the second:
#   node 0:  MASTER_ADDR=10.0.0.1 NODE_RANK=0 bash examples/cluster/two_nodes.sh
#   node 1:  MASTER_ADDR=10.0.0.1 NODE_RANK=1 bash examples/cluster/two_nodes.sh
# Extra flags override the recipe (e.g. --nproc_per_node 4). The output directory must be shared by both.
set -euo pipefail
: "${MASTER_ADDR:?set MASTER_ADDR to the address of node 0}"
: "${NODE_RANK:?set NODE_RANK to 0 on node 0 and 1 on node 1}"
exec wb sft --config "${RECIPE:-examples/cluster/recipe.yaml}" --nnodes 2 --node_rank "$NODE_RANK" \
    --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}" "$@"
