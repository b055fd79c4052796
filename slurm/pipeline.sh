#!/bin/bash
# Submit Stage 1 -> Stage 2 -> evaluation for one run directory as three chained jobs.
#
#   slurm/pipeline.sh [--wait] [--dry-run] RUN [STAGE1 ARGS...] [--stage2-args ARGS...]
#                     [--eval-args ARGS...]
#
#   slurm/pipeline.sh runs/cos_q4096 --config my_run.yaml \
#       --eval-args --eval.sets la19=shards/la19_eval,itw=shards/itw
#
# Run it where you run sbatch (it is not itself a batch job). Each job starts after the
# previous one succeeded (--dependency=afterok) and is cancelled if that one failed
# (--kill-on-invalid-dep=yes); then a one-minute guard job writes RUN/logs/FAILED, naming the
# stage that failed, its log and the line of that log that says why. Prints `stage1 JOBID`,
# `stage2 JOBID`, `eval JOBID`. Logs: RUN/logs/<stage>-<jobid>.out.
# --wait: block until the chain has ended; exit 0 only when RUN/eval/results.json was
# written (then print the results table). --dry-run: print the sbatch commands only.
# Both are taken wherever they stand (also after RUN or --eval-args).
#
# Before submitting anything, each stage's job is put to `sbatch --test-only`: a request
# the cluster cannot meet (no GPUs, fewer CPUs) is one line naming the variable to set.
# SCCL_LAUNCH=cpu (CPU nodes) makes every job ask for --gpus-per-node=0 and one CPU per
# process (SCCL_CPU_PROCS, default 2) unless the options below say otherwise.
#
# sbatch options (word-split, e.g. "--partition=gpu --account=abc"): SCCL_SBATCH_ARGS for
# every job, SCCL_STAGE1_SBATCH / SCCL_STAGE2_SBATCH / SCCL_EVAL_SBATCH for one stage
# (e.g. SCCL_STAGE1_SBATCH="--nodes=2 --gpus-per-node=4 --time=48:00:00").
# The jobs get this shell's environment (SCCL_ENV, SCCL_LAUNCH, ...: slurm/common.sh).
set -euo pipefail
if [ -z "${SCCL_ROOT:-}" ]; then  # the guard job runs a copy from Slurm's spool: SCCL_ROOT is set
    SCCL_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
fi
export SCCL_ROOT
# shellcheck source=slurm/common.sh
source "$SCCL_ROOT/slurm/common.sh"

USAGE="usage: pipeline.sh [--wait] [--dry-run] RUN [STAGE1 ARGS...] [--stage2-args ARGS...]"
USAGE+=" [--eval-args ARGS...]"

# why_line LOG JOB: the line of a failed stage's log that says why, as `LOG line N: TEXT`.
# First choice: sccl's own one-line `error: ...` (the entry points and slurm/*.sh write
# those; later ones are consequences); then Slurm's (time limit, out of memory); then the
# exception line ending a Python traceback; then the last line that mentions an error.
why_line() {
    local log=$1 job=$2 hit
    if ! [ -f "$log" ]; then
        printf '%s, which does not exist: the job never started (%s; sacct -j %s)' \
            "$log" "cancelled or refused" "$job"
        return
    fi
    hit=$(grep -n -m1 -E '^error( \(rank [0-9]+\))?: ' -- "$log") ||
        hit=$(grep -n -m1 -E 'slurmstepd: error: ' -- "$log") ||
        hit=$(awk '{ line = $0; sub(/^\[rank[0-9]+\]: ?/, "", line) }
            line ~ /^Traceback \(most recent call last\):/ { tb = 1; next }
            tb && line ~ /^[^ \t]/ { print NR ":" line; found = 1; exit }
            END { exit !found }' "$log") ||
        hit=$(grep -n -i -E 'error|killed|fail' -- "$log" | grep -v -E '^[0-9]+:\[sccl ' |
            tail -n1 | grep .) ||
        { printf '%s, which says nothing about why (its state: sacct -j %s)' "$log" "$job"
            return; }
    printf '%s line %s: %s' "$log" "${hit%%:*}" "${hit#*:}"
}

# The guard job: which stage of the chain failed? Judged from what the stages left in RUN
# (newer than the submission's RUN/logs/jobs.txt), not from job states, which may be gone.
report_failure() {
    local run=$1 stamp="$1/logs/jobs.txt" stage log job
    # a subshell: an environment that cannot be activated means Stage 1 did not finish either
    if ! (sccl_activate_env && sccl_stage1_finished "$run"); then
        stage="Stage 1" log=stage1 job=$2
    elif ! [ "$run/stage2/meta.json" -nt "$stamp" ]; then
        stage="Stage 2" log=stage2 job=$3
    else
        stage="evaluation" log=eval job=$4
    fi
    printf 'error: the chain for %s stopped: %s (job %s) failed and %s; see %s\n' \
        "$run" "$stage" "$job" "later stages were cancelled" \
        "$(why_line "$run/logs/$log-$job.out" "$job")" |
        tee "$run/logs/FAILED" >&2
    exit 1
}

# sbatch_opts NAME EXTRA_VAR: OPTS = the sbatch options of stage NAME's job. On CPU nodes
# (SCCL_LAUNCH=cpu) no GPUs and a CPU per process replace the #SBATCH GPU defaults; they go
# before the user's options so that theirs win.
sbatch_opts() {
    OPTS=(--job-name="sccl-$1" --output="$run/logs/$1-%j.out")
    sccl_cpu_job_opts
    # shellcheck disable=SC2206  # the *_SBATCH variables are option lists: split them
    OPTS+=(${SCCL_SBATCH_ARGS:-} ${!2:-})
}

# submit NAME EXTRA_VAR ARGS...: sbatch with the stage's options -> job id (--dry-run:
# prints the command instead and returns a placeholder id).
submit() {
    local name=$1 extra=$2
    shift 2
    sbatch_opts "$name" "$extra"
    if [ "$dry" = 1 ]; then
        printf '%q ' sbatch --parsable "${OPTS[@]}" "$@" >&2
        printf '\n' >&2
        printf '%s\n' "DRYRUN-$name"
        return
    fi
    sbatch --parsable "${OPTS[@]}" "$@" | cut -d';' -f1
}

# Block until none of the jobs is known to slurmctld any more (done, failed or cancelled).
wait_for_jobs() {
    local ids=" $* " left
    while :; do
        left=$(squeue -h -o '%i' 2>/dev/null | while read -r id; do
            [[ "$ids" == *" $id "* ]] && printf '%s ' "$id"
        done) || true
        [ -z "$left" ] && return 0
        sleep "${SCCL_POLL_SECONDS:-10}"
    done
}

if [ "${1:-}" = --report-failure ]; then
    [ $# -eq 5 ] || sccl_die "--report-failure RUN JOB1 JOB2 JOB3"
    report_failure "$2" "$3" "$4" "$5"
fi
# The chain's own options count wherever they stand: after RUN they would otherwise reach a
# stage as an unknown argument and fail there, after the earlier stages had run.
wait_chain=0 dry=0 args=()
for a in "$@"; do
    case "$a" in
    --wait) wait_chain=1 ;;
    --dry-run) dry=1 ;;
    -h | --help) printf '%s\n' "$USAGE"; exit 0 ;;
    *) args+=("$a") ;;
    esac
done
set -- "${args[@]}"
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    sccl_die "$USAGE"
fi
run=$(realpath -m -- "$1")
shift
sccl_split_chain_args "$@"
sccl_launch_mode "" >/dev/null  # an unknown SCCL_LAUNCH: refused here, not in every job
mkdir -p -- "$run/logs"
sccl_check_job stage1 SCCL_STAGE1_SBATCH "$SCCL_ROOT/slurm/stage1.sh"
sccl_check_job stage2 SCCL_STAGE2_SBATCH "$SCCL_ROOT/slurm/stage2.sh"
sccl_check_job eval SCCL_EVAL_SBATCH "$SCCL_ROOT/slurm/eval.sh"
if [ "$dry" = 0 ]; then
    rm -f -- "$run/logs/FAILED"
    : >"$run/logs/jobs.txt"  # the submission time stamp report_failure compares against
fi

dep=(--kill-on-invalid-dep=yes)
j1=$(submit stage1 SCCL_STAGE1_SBATCH "$SCCL_ROOT/slurm/stage1.sh" "$run" "${s1[@]}")
j2=$(submit stage2 SCCL_STAGE2_SBATCH "${dep[@]}" --dependency="afterok:$j1" \
    "$SCCL_ROOT/slurm/stage2.sh" "$run" "${s2[@]}")
j3=$(submit eval SCCL_EVAL_SBATCH "${dep[@]}" --dependency="afterok:$j2" \
    "$SCCL_ROOT/slurm/eval.sh" "$run" "${ev[@]}")
# afternotok on any stage ('?' = or): runs only after a failure; when every stage succeeds
# its dependency can never be met and Slurm cancels it.
guard=$(SCCL_GUARD_SBATCH="${SCCL_GUARD_SBATCH:---gpus-per-node=0 --cpus-per-task=1 --time=00:05:00}" \
    submit guard SCCL_GUARD_SBATCH "${dep[@]}" \
    --dependency="afternotok:$j1?afternotok:$j2?afternotok:$j3" \
    "$SCCL_ROOT/slurm/pipeline.sh" --report-failure "$run" "$j1" "$j2" "$j3")
[ "$dry" = 0 ] || exit 0
printf 'stage1 %s\nstage2 %s\neval %s\nguard %s\n' "$j1" "$j2" "$j3" "$guard" >"$run/logs/jobs.txt"
printf 'stage1 %s\nstage2 %s\neval %s\n' "$j1" "$j2" "$j3"
sccl_log "submitted the chain for $run; logs in $run/logs"
[ "$wait_chain" = 1 ] || exit 0

wait_for_jobs "$j1" "$j2" "$j3" "$guard"
if [ -f "$run/eval/results.json" ] && [ "$run/eval/results.json" -nt "$run/logs/jobs.txt" ]; then
    cat -- "$run/eval/results.md" 2>/dev/null || true
    sccl_log "chain finished: $run/eval/results.json"
    exit 0
fi
cat -- "$run/logs/FAILED" >&2 2>/dev/null ||
    echo "error: the chain for $run ended without $run/eval/results.json; see $run/logs" >&2
exit 1
