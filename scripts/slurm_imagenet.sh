#!/bin/bash
# Figure 4 (or Goyal et al.'s recipe) on a SLURM cluster with Lightning's DDP: one task per GPU.
# Lightning reads the SLURM environment (SLURM_NTASKS, SLURM_PROCID, ...), so the same command runs
# on every task; trainer.devices and trainer.num_nodes must match --ntasks-per-node and --nodes.
#
#   sbatch scripts/slurm_imagenet.sh                      # Figure 4: plain/ResNet-18/34, 8 GPUs
#   EXPERIMENT=imagenet-goyal NODES=4 sbatch --nodes=4 scripts/slurm_imagenet.sh   # 32 GPUs, B=1024
#
#SBATCH --job-name=reproduce-imagenet
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=10
#SBATCH --time=72:00:00
#SBATCH --signal=SIGTERM@300        # checkpoint 5 minutes before the time limit
#SBATCH --requeue                   # a preempted job comes back and resumes
set -euo pipefail
EXPERIMENT=${EXPERIMENT:-imagenet}
NODES=${NODES:-${SLURM_JOB_NUM_NODES:-1}}
GPUS=${GPUS:-8}
DATA=${DATA:-/datasets/imagenet}          # holds train/<class>/*.JPEG and val/<class>/*.JPEG
OUT=${OUT:-$HOME/reproduce-runs}

ARGS=(trainer.accelerator=gpu trainer.devices="$GPUS" trainer.num_nodes="$NODES" trainer.strategy=ddp
      data.root="$DATA" data.workers="${SLURM_CPUS_PER_TASK:-8}" out_dir="$OUT")
if [ -f "$OUT/$EXPERIMENT/sweep.json" ]; then
  srun python -m reproduce "$EXPERIMENT" --resume "$OUT" "${ARGS[@]}"
else
  srun python -m reproduce "$EXPERIMENT" "${ARGS[@]}"
fi
