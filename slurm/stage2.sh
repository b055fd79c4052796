#!/bin/bash
# Stage 2 (linear classifier on frozen Stage 1 embeddings, sccl/train_linear.py) as a
# Slurm batch job. Needs a finished Stage 1 in RUN.
#
#   sbatch slurm/stage2.sh RUN [--section.key VALUE ...]
#
# Everything after RUN goes to sccl/train_linear.py after `--run.dir RUN`. Embedding is
# spread over all processes (--gpus-per-node=N); the classifier trains on the main process.
# Options below are defaults: the sbatch command line (or SBATCH_* variables) override them.
# Environment hook and launcher knobs (SCCL_ENV, SCCL_LAUNCH, ...): slurm/common.sh.
# A preempted job simply reruns (the embeddings cache in RUN/stage2 is reused).
#
#SBATCH --job-name=sccl-stage2
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --requeue
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

sccl_parse_args stage2 "$@"
sccl_setup_run stage2
sccl_activate_env
if ! sccl_dryrun; then
    sccl_require_files "Stage 2 needs Stage 1 of $SCCL_RUN" \
        "$SCCL_RUN/stage1/config.yaml" "$SCCL_RUN/stage1/best/model.safetensors"
    sccl_stage1_finished "$SCCL_RUN" ||
        sccl_die "Stage 1 of $SCCL_RUN has not finished (newest checkpoint not final): run slurm/stage1.sh first"
fi

rc=0
sccl_launch "$SCCL_ROOT/sccl/train_linear.py" --run.dir "$SCCL_RUN" "${SCCL_ARGS[@]}" || rc=$?
[ "$rc" -eq 0 ] || sccl_log "Stage 2 failed (exit $rc): see the log above"
exit "$rc"
