#!/bin/bash
# Stage 1 (SupCon fine-tuning, sccl/train_supcon.py) as a Slurm batch job, 1 to N nodes.
#
#   sbatch slurm/stage1.sh RUN --config my_run.yaml [--section.key VALUE ...]
#   sbatch --nodes=4 --gpus-per-node=4 slurm/stage1.sh RUN --config my_run.yaml
#   SCCL_LAUNCH=deepspeed sbatch slurm/stage1.sh RUN --config my_run.yaml
#   SCCL_LAUNCH=deepspeed3 sbatch slurm/stage1.sh RUN --config my_run.yaml \
#       --model.encoder /models/wav2vec2-xls-r-1b --optim.clip_scope all    # ZeRO-3 (fsdp: FSDP2)
#
# Everything after RUN goes to sccl/train_supcon.py, after `--run.dir RUN --run.resume auto`
# (so a requeued job continues from RUN/stage1/checkpoints). Submit from the repository root
# (or set SCCL_ROOT); relative paths are relative to the submit directory.
# Options below are defaults: the sbatch command line (or SBATCH_* variables) override them.
# Environment hook and launcher knobs (SCCL_ENV, SCCL_LAUNCH, ...): slurm/common.sh.
#
# Preemption / time limit: Slurm sends SIGUSR1 to the training processes 120 s before the
# limit (or scancel --signal=USR1 JOB); they checkpoint at the next optimizer step and exit 0;
# this script then sees an unfinished run and requeues the job, which resumes.
#
#SBATCH --job-name=sccl-stage1
# One srun task per node; each runs `accelerate launch`, which starts one process per GPU.
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
# The study: 2 GPUs x 16 = global batch 32 (data.batch_size is global). CPU: --gpus-per-node=0.
#SBATCH --gpus-per-node=2
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
# #SBATCH takes no variables: the log goes to the submit directory and is linked into
# RUN/logs (slurm/pipeline.sh and grid.sh pass --output RUN/logs/... instead).
#SBATCH --output=slurm-%x-%j.out

set -euo pipefail
# sbatch runs a copy of this file from its spool directory, so these lines, the same in every
# sbatch script, must find the repository before slurm/common.sh can help: SCCL_ROOT if set,
# else the path the job was submitted with (scontrol's Command=), the submit directory, or
# this file's parent (when run with bash instead of sbatch).
if [ -z "${SCCL_ROOT:-}" ]; then
    cmd=$(scontrol show job "${SLURM_JOB_ID:-none}" 2>/dev/null | sed -n 's/^ *Command=//p') || true
    for SCCL_ROOT in "${cmd%/slurm/*.sh*}" "${SLURM_SUBMIT_DIR:-.}" "$(dirname -- "$0")/.."; do
        [ -f "$SCCL_ROOT/slurm/common.sh" ] && break
    done
fi
[ -f "$SCCL_ROOT/slurm/common.sh" ] ||
    { echo "error: sccl repository not found: submit from its root or set SCCL_ROOT" >&2; exit 2; }
SCCL_ROOT=$(cd -- "$SCCL_ROOT" && pwd) && export SCCL_ROOT
# shellcheck source=slurm/common.sh
source "$SCCL_ROOT/slurm/common.sh"

sccl_parse_args stage1 "$@"
sccl_setup_run stage1
sccl_activate_env

rc=0
sccl_launch "$SCCL_ROOT/sccl/train_supcon.py" --run.dir "$SCCL_RUN" --run.resume auto \
    "${SCCL_ARGS[@]}" || rc=$?
sccl_dryrun && exit "$rc"

if sccl_stage1_finished "$SCCL_RUN"; then
    sccl_log "Stage 1 finished: $SCCL_RUN/stage1"
    exit 0
fi
if [ "$rc" -eq 0 ]; then
    sccl_requeue  # exits
fi
sccl_log "Stage 1 failed (exit $rc): see the log above; rerun the same command to resume"
exit "$rc"
