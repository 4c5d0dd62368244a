#!/usr/bin/env bash
# The DeepSpeed-launcher alternative to train.sbatch: one slurm task per node, and `deepspeed --hostfile` starts
# one rank per GPU on every node over ssh/pdsh (passwordless ssh between the nodes is required).
#
#   sbatch --nodes=2 --ntasks-per-node=1 --gpus-per-node=8 --cpus-per-task=64 --time=24:00:00 \
#       launch/slurm/deepspeed_hostfile.sh --model_name_or_path DIR --train_path train.jsonl --output_dir OUT
#   launch/slurm/deepspeed_hostfile.sh --print-only      # inside salloc: write the hostfile, show the command
#
# Environment: BIGRERANK_HOSTFILE (default: hostfile-<job id> in the submit directory), BIGRERANK_DS_CONFIG
# (default ds_configs/zero2.json), BIGRERANK_RESUME (default "latest"), MASTER_PORT (default: from the job id).
#SBATCH --job-name=bigrerank-ds
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1       # one launcher per node; deepspeed starts the per-GPU ranks
#SBATCH --gpus-per-node=8         # hostfile slots = GPUs per node
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

print_only=0
if [[ ${1:-} == --print-only ]]; then
    print_only=1
    shift
fi
cd "${BIGRERANK_REPO:-${SLURM_SUBMIT_DIR:-.}}"
HOSTFILE="${BIGRERANK_HOSTFILE:-hostfile-${SLURM_JOB_ID:-local}}"
DS_CONFIG="${BIGRERANK_DS_CONFIG:-ds_configs/zero2.json}"
RESUME="${BIGRERANK_RESUME-latest}"

bigrerank hostfile --output "$HOSTFILE"   # `host slots=N` per allocated node (GPUs, else tasks per node)
exports="$(python -m bigrerank.slurm rendezvous)"  # MASTER_ADDR (first node) and MASTER_PORT of this allocation
eval "$exports"

command=(deepspeed --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT"
         launch/train.py --ds_config "$DS_CONFIG")
[[ -n $RESUME ]] && command+=(--resume_from_checkpoint "$RESUME")
command+=("$@")

echo "hostfile $HOSTFILE:" >&2
cat "$HOSTFILE" >&2
printf '%q ' "${command[@]}" >&2
echo >&2
((print_only)) || exec "${command[@]}"
