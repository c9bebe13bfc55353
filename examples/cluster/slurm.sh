#!/usr/bin/env bash
# Slurm: one task per node; each task relaunches itself under torchrun with --nproc_per_node processes.
#   sbatch examples/cluster/slurm.sh                      # the recipe as written (2 nodes x 8 GPUs)
#   sbatch examples/cluster/slurm.sh --max_steps 10       # extra flags override the recipe
# The output directory must be on a filesystem every node sees (checkpoints are written by rank 0, DeepSpeed's
# optimizer shards by every rank).
#SBATCH --job-name=wb-sft
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
set -euo pipefail
RECIPE=${RECIPE:-examples/cluster/recipe.yaml}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-29500}
export MASTER_ADDR MASTER_PORT
# single quotes: SLURM_NODEID is read by each task on its own node, not here
srun --ntasks-per-node=1 bash -c 'exec wb sft --config "$0" --nnodes "$SLURM_NNODES" --node_rank "$SLURM_NODEID" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" "${@}"' "$RECIPE" "$@"
