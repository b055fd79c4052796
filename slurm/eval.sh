#!/bin/bash
# Evaluation (sccl/evaluate.py) of a finished Stage 2 run as a Slurm batch job: score files,
# EER per set, pooled and mean EER, results.json / results.md and plots in RUN/eval.
#
#   sbatch slurm/eval.sh RUN --eval.sets la19=DIR,itw=DIR,la21=DIR,df21=DIR [--key VALUE ...]
#   SCCL_EVAL_SETS=la19=DIR,itw=DIR sbatch slurm/eval.sh RUN
#
# Everything after RUN goes to sccl/evaluate.py after `--run.dir RUN` (and
# `--eval.sets $SCCL_EVAL_SETS` when that is set). Scoring is spread over all processes.
# Options below are defaults: the sbatch command line (or SBATCH_* variables) override them.
# Environment hook and launcher knobs (SCCL_ENV, SCCL_LAUNCH, ...): slurm/common.sh.
#
#SBATCH --job-name=sccl-eval
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
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

sccl_parse_args eval "$@"
sccl_setup_run eval
sccl_activate_env
if ! sccl_dryrun; then
    sccl_require_files "evaluation needs Stage 2 of $SCCL_RUN (run slurm/stage2.sh first)" \
        "$SCCL_RUN/stage2/meta.json" "$SCCL_RUN/stage2/classifier.safetensors" \
        "$SCCL_RUN/stage2/threshold.json"
fi
sets=()
if [ -n "${SCCL_EVAL_SETS:-}" ]; then
    sets=(--eval.sets "$SCCL_EVAL_SETS")
fi

rc=0
sccl_launch "$SCCL_ROOT/sccl/evaluate.py" --run.dir "$SCCL_RUN" "${sets[@]}" "${SCCL_ARGS[@]}" ||
    rc=$?
[ "$rc" -eq 0 ] || sccl_log "evaluation failed (exit $rc): see the log above"
exit "$rc"
