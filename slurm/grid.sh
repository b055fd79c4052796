#!/bin/bash
# Submit the study's grid as three job arrays: every task is one configuration's full
# Stage 1 -> Stage 2 -> evaluation chain in its own run directory RUNS/<name>.
#
#   slurm/grid.sh [--dry-run] RUNS [STAGE1 ARGS...] [--stage2-args ARGS...] [--eval-args ARGS...]
#
# --dry-run (taken wherever it stands): write the table and print the sbatch commands only.
#
#   slurm/grid.sh runs/study --config my_run.yaml \
#       --eval-args --eval.sets la19=shards/la19_eval,itw=shards/itw,la21=shards/la21,df21=shards/df21
#   sccl-report runs/study          # once the tasks have finished
#
# Axes (space-separated; override any with the variable):
#   SCCL_GRID_SIMILARITY  "cosine angular"               loss.similarity
#   SCCL_GRID_QUEUE       "0 256 1024 2048 4096 8192"    loss.queue_size
#   SCCL_GRID_DELAYED     "yes no"                        yes: loss.queue_start_epoch =
#                                                         SCCL_GRID_DELAY_EPOCH (6), no: 1
#   SCCL_GRID_SEEDS       "42 1337 2024"                  run.seed and data.seed
# Temperature per similarity (the study's best): SCCL_TEMP_COSINE=0.3, SCCL_TEMP_ANGULAR=0.07.
# Queue size 0 has no delayed variant (no queue to delay): those combinations are skipped,
# so the default grid is 2 x (1 + 5 x 2) x 3 = 66 runs, named like cosine-q4096-d6-s42
# (d = first epoch with the queue). The grid's axis values go after STAGE1 ARGS, so they win.
#
# Task i of the Stage 2 array starts when task i of the Stage 1 array succeeded
# (--dependency=aftercorr), and likewise for evaluation; a failed task cancels only its own
# chain. The task -> configuration table is RUNS/grid-<time>.tsv. Logs: RUNS/logs/ (linked
# into each RUNS/<name>/logs). SCCL_GRID_PARALLEL=N: at most N tasks of an array at once.
# sbatch options: SCCL_SBATCH_ARGS, SCCL_STAGE1_SBATCH, SCCL_STAGE2_SBATCH, SCCL_EVAL_SBATCH
# (as for slurm/pipeline.sh). As there, each array is put to `sbatch --test-only` before
# anything is submitted, and SCCL_LAUNCH=cpu asks for CPU jobs (--gpus-per-node=0).
set -euo pipefail
SCCL_ROOT=${SCCL_ROOT:-$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)}
export SCCL_ROOT
# shellcheck source=slurm/common.sh
source "$SCCL_ROOT/slurm/common.sh"

USAGE="usage: grid.sh [--dry-run] RUNS [STAGE1 ARGS...] [--stage2-args ARGS...] [--eval-args ARGS...]"

temperature() {
    local var
    var="SCCL_TEMP_${1^^}"
    case "$1" in
    cosine) printf '%s\n' "${!var:-0.3}" ;;
    angular) printf '%s\n' "${!var:-0.07}" ;;
    *) sccl_die "similarity must be cosine or angular, got '$1'" ;;
    esac
}

check_ints() {
    local what=$1 v
    shift
    for v in "$@"; do
        [[ "$v" =~ ^[0-9]+$ ]] || sccl_die "$what: '$v' is not a non-negative integer"
    done
}

# write_grid FILE: one row per run: index, name, Stage 1 overrides (tab-separated).
write_grid() {
    local file=$1 sim q delayed seed start temp i=0
    local -a sims queues delays seeds
    read -r -a sims <<<"${SCCL_GRID_SIMILARITY:-cosine angular}"
    read -r -a queues <<<"${SCCL_GRID_QUEUE:-0 256 1024 2048 4096 8192}"
    read -r -a delays <<<"${SCCL_GRID_DELAYED:-yes no}"
    read -r -a seeds <<<"${SCCL_GRID_SEEDS:-42 1337 2024}"
    check_ints SCCL_GRID_QUEUE "${queues[@]}"
    check_ints SCCL_GRID_SEEDS "${seeds[@]}"
    check_ints SCCL_GRID_DELAY_EPOCH "${SCCL_GRID_DELAY_EPOCH:-6}"
    : >"$file"
    for sim in "${sims[@]}"; do
        temp=$(temperature "$sim")
        for q in "${queues[@]}"; do
            for delayed in "${delays[@]}"; do
                case "$delayed" in
                yes) start=${SCCL_GRID_DELAY_EPOCH:-6} ;;
                no) start=1 ;;
                *) sccl_die "SCCL_GRID_DELAYED: '$delayed' must be yes or no" ;;
                esac
                if [ "$q" -eq 0 ] && [ "$delayed" = yes ]; then
                    continue  # no queue: nothing to delay (same run as delayed=no)
                fi
                for seed in "${seeds[@]}"; do
                    {
                        printf '%s\t%s' "$i" "$sim-q$q-d$start-s$seed"
                        printf '\t%s' --loss.similarity "$sim" --loss.temperature "$temp" \
                            --loss.queue_size "$q" --loss.queue_start_epoch "$start" \
                            --run.seed "$seed" --data.seed "$seed"
                        printf '\n'
                    } >>"$file"
                    i=$((i + 1))
                done
            done
        done
    done
    [ "$i" -gt 0 ] || sccl_die "the grid is empty (check the SCCL_GRID_* variables)"
}

# The grid's own options count wherever they stand (after RUNS they would otherwise reach
# Stage 1 and fail there); pipeline.sh's --wait is refused before anything is submitted.
dry=0 args=()
for a in "$@"; do
    case "$a" in
    --dry-run) dry=1 ;;
    --wait) sccl_die "grid.sh has no --wait (that is pipeline.sh's): follow the arrays with" \
        "squeue, then run sccl-report RUNS" ;;
    -h | --help) printf '%s\n' "$USAGE"; exit 0 ;;
    *) args+=("$a") ;;
    esac
done
set -- "${args[@]}"
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    sccl_die "$USAGE"
fi
runs=$(realpath -m -- "$1")
shift
sccl_split_chain_args "$@"
sccl_launch_mode "" >/dev/null  # an unknown SCCL_LAUNCH: refused here, not in every job
mkdir -p -- "$runs/logs"
grid="$runs/grid-$(date +%Y%m%d-%H%M%S)-$$.tsv"
write_grid "$grid"
n=$(wc -l <"$grid")
array="0-$((n - 1))${SCCL_GRID_PARALLEL:+%$SCCL_GRID_PARALLEL}"

# sbatch_opts NAME EXTRA_VAR: OPTS = the sbatch options of stage NAME's array. On CPU nodes
# (SCCL_LAUNCH=cpu) no GPUs and a CPU per process replace the #SBATCH GPU defaults; they go
# before the user's options so that theirs win.
sbatch_opts() {
    OPTS=(--array="$array" --job-name="sccl-$1" --output="$runs/logs/$1-%A_%a.out")
    sccl_cpu_job_opts
    # shellcheck disable=SC2206  # the *_SBATCH variables are option lists: split them
    OPTS+=(${SCCL_SBATCH_ARGS:-} ${!2:-})
}

# submit NAME EXTRA_VAR ARGS...: one array job -> its id (prints the command with --dry-run).
submit() {
    local name=$1 extra=$2
    shift 2
    sbatch_opts "$name" "$extra"
    local -a cmd=(sbatch --parsable "${OPTS[@]}" "$@")
    if [ "$dry" = 1 ]; then
        printf '%q ' "${cmd[@]}" >&2
        printf '\n' >&2
        printf '%s\n' "DRYRUN-$name"
        return
    fi
    "${cmd[@]}" | cut -d';' -f1
}

# a subshell, so that a refused array also takes back the table (nothing was submitted)
(sccl_check_job stage1 SCCL_STAGE1_SBATCH "$SCCL_ROOT/slurm/stage1.sh" &&
    sccl_check_job stage2 SCCL_STAGE2_SBATCH "$SCCL_ROOT/slurm/stage2.sh" &&
    sccl_check_job eval SCCL_EVAL_SBATCH "$SCCL_ROOT/slurm/eval.sh") || { rm -f -- "$grid"; exit 2; }
dep=(--kill-on-invalid-dep=yes)
a1=$(submit stage1 SCCL_STAGE1_SBATCH "$SCCL_ROOT/slurm/stage1.sh" --grid "$grid" "${s1[@]}")
a2=$(submit stage2 SCCL_STAGE2_SBATCH "${dep[@]}" --dependency="aftercorr:$a1" \
    "$SCCL_ROOT/slurm/stage2.sh" --grid "$grid" "${s2[@]}")
a3=$(submit eval SCCL_EVAL_SBATCH "${dep[@]}" --dependency="aftercorr:$a2" \
    "$SCCL_ROOT/slurm/eval.sh" --grid "$grid" "${ev[@]}")
printf 'grid %s (%s runs)\nstage1 %s\nstage2 %s\neval %s\n' "$grid" "$n" "$a1" "$a2" "$a3"
sccl_log "when the arrays have finished: sccl-report $runs"
