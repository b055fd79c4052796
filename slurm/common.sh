# shellcheck shell=bash
# Shared bash for slurm/*.sh: sourced, never run. Functions only; nothing runs on source.
#
# Environment knobs (all optional; the stage scripts' headers list them too):
#   SCCL_ENV              environment hook, run once per job before anything else:
#                         a directory = a virtual environment (its bin/activate is sourced),
#                         anything else = a shell line to eval, e.g.
#                         SCCL_ENV='module load cuda/12.4 && source ~/envs/sccl/bin/activate'.
#                         Unset: the environment sbatch was called from (Slurm exports it).
#   SCCL_LAUNCH           how Stage 1 is distributed: ddp (default, launch/multi_gpu.yaml) |
#                         deepspeed (ZeRO-2, launch/deepspeed_zero2.yaml) | deepspeed3 (ZeRO-3,
#                         launch/deepspeed_zero3.yaml) | fsdp (FSDP2, launch/fsdp.yaml) |
#                         cpu (launch/cpu_2proc.yaml). Stage 2 and evaluation hold a frozen
#                         encoder with nothing to shard: they launch with ddp's file for the
#                         sharded choices (cpu stays cpu)
#   SCCL_LAUNCH_CONFIG    another Accelerate config file (wins over SCCL_LAUNCH's file)
#   SCCL_DS_CONFIG        DeepSpeed JSON for deepspeed / deepspeed3 (default
#                         launch/ds_zero2.json / launch/ds_zero3.json)
#   SCCL_PROCS_PER_NODE   processes per node (default: the GPUs Slurm gave the node;
#                         SCCL_LAUNCH=cpu: SCCL_CPU_PROCS, default 2)
#   SCCL_MASTER_PORT      rendezvous port on the head node (default 20000 + job id % 12000,
#                         so jobs sharing a node do not collide)
#   SCCL_LAUNCH_DRYRUN=1  print the command each node would run instead of running it
#   SCCL_REQUEUE=0        Stage 1: do not requeue a preempted job (default 1)
#   SCCL_MAX_REQUEUES     Stage 1: give up after this many requeues (default 20)

sccl_log() { printf '[sccl %s] %s\n' "$(date '+%F %T')" "$*" >&2; }
sccl_die() { printf 'error: %s\n' "$*" >&2; exit 2; }
sccl_dryrun() { [ "${SCCL_LAUNCH_DRYRUN:-0}" != 0 ]; }

# ----------------------------------------------------------------------- arguments

# sccl_parse_args STAGE ARGS...: sets SCCL_RUN (absolute run dir) and the array SCCL_ARGS
# (arguments for the Python stage). ARGS is `RUN [STAGE ARGS...]`, or, for job arrays made by
# grid.sh, `--grid FILE [STAGE ARGS...]`: RUN and the task's config come from FILE's row
# for $SLURM_ARRAY_TASK_ID (grid overrides go last so they win over the common args).
sccl_parse_args() {
    local stage=$1
    shift
    [ $# -ge 1 ] || sccl_die "usage: $stage.sh RUN_DIR [ARGS...]  (or --grid FILE [ARGS...])"
    SCCL_ARGS=()
    local run
    if [ "$1" = --grid ]; then
        [ $# -ge 2 ] || sccl_die "--grid needs the grid file written by slurm/grid.sh"
        local grid=$2
        shift 2
        sccl_grid_row "$grid" "${SLURM_ARRAY_TASK_ID:-}"
        run="$(dirname -- "$grid")/${SCCL_GRID_ROW[1]}"
        SCCL_ARGS=("$@")
        if [ "$stage" = stage1 ]; then
            SCCL_ARGS+=("${SCCL_GRID_ROW[@]:2}")
        fi
    else
        run=$1
        shift
        SCCL_ARGS=("$@")
    fi
    case "$run" in
    "" | -*) sccl_die "usage: $stage.sh RUN_DIR [ARGS...]: the first argument is the run" \
        "directory, got '$run'" ;;
    esac
    local a
    for a in "${SCCL_ARGS[@]}"; do
        case "$a" in
        --run.dir | --run.dir=*) sccl_die "$stage: give the run directory as the first" \
            "argument, not as --run.dir (the script needs it for logs and requeueing)" ;;
        esac
    done
    SCCL_RUN=$(realpath -m -- "$run")
    export SCCL_RUN
}

# sccl_grid_row FILE INDEX: SCCL_GRID_ROW = the tab-separated fields of row INDEX
# (index, run name, Stage 1 overrides...).
sccl_grid_row() {
    local file=$1 index=$2 line
    [ -f "$file" ] || sccl_die "grid file $file does not exist"
    [ -n "$index" ] || sccl_die "--grid needs a job array task (SLURM_ARRAY_TASK_ID is unset)"
    line=$(awk -F '\t' -v i="$index" '$1 == i { print; exit }' "$file")
    [ -n "$line" ] || sccl_die "$file has no row for array task $index"
    IFS=$'\t' read -r -a SCCL_GRID_ROW <<<"$line"
}

# ----------------------------------------------------------------------- run directory, env

# sccl_setup_run STAGE: RUN/logs exists and holds (a link to) this job's Slurm log, whose
# path #SBATCH --output cannot put under the run (it takes no variables).
sccl_setup_run() {
    local stage=$1 out
    mkdir -p -- "$SCCL_RUN/logs" || sccl_die "cannot create $SCCL_RUN/logs"
    if [ -n "${SLURM_JOB_ID:-}" ] && command -v scontrol >/dev/null; then
        out=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *StdOut=//p' | head -n1)
        case "$out" in
        "" | "$SCCL_RUN/logs/"*) ;;
        *) [ -e "$out" ] && ln -sfn -- "$out" "$SCCL_RUN/logs/$stage-${SLURM_JOB_ID}.out" ;;
        esac
    fi
    sccl_log "$stage: run $SCCL_RUN; job ${SLURM_JOB_ID:-none} on ${SLURM_JOB_NODELIST:-${HOSTNAME:-?}}" \
        "(${SLURM_JOB_NUM_NODES:-1} node(s)); restart ${SLURM_RESTART_COUNT:-0}"
}

# sccl_activate_env: the one environment hook (SCCL_ENV, see the top of this file).
sccl_activate_env() {
    if [ -n "${SCCL_ENV:-}" ]; then
        set +u  # activate scripts and module systems often read unset variables
        if [ -d "$SCCL_ENV" ]; then
            [ -f "$SCCL_ENV/bin/activate" ] || { set -u; sccl_die "SCCL_ENV=$SCCL_ENV has no bin/activate"; }
            # shellcheck disable=SC1091
            source "$SCCL_ENV/bin/activate"
        else
            eval "$SCCL_ENV" || { set -u; sccl_die "SCCL_ENV command failed: $SCCL_ENV"; }
        fi
        set -u
    fi
    sccl_dryrun && return 0
    command -v accelerate >/dev/null ||
        sccl_die "accelerate not found on PATH: set SCCL_ENV to your venv or module line"
}

# ----------------------------------------------------------------------- launcher

# Head node address: the first host of the allocation (the batch script runs there).
sccl_head_addr() {
    if [ -n "${SCCL_HEAD_ADDR:-}" ]; then
        printf '%s\n' "$SCCL_HEAD_ADDR"
    elif [ -n "${SLURM_JOB_NODELIST:-}" ]; then
        scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1
    else
        printf '%s\n' "${HOSTNAME:-localhost}"
    fi
}

sccl_port() {
    local job=${SLURM_JOB_ID:-0}
    printf '%s\n' "${SCCL_MASTER_PORT:-$((20000 + job % 12000))}"
}

# Processes on this node: explicit, CPU fallback, or the GPUs in this node's allocation.
sccl_procs_per_node() {
    local n=${SCCL_PROCS_PER_NODE:-}
    if [ -z "$n" ] && [ "${SCCL_LAUNCH:-ddp}" = cpu ]; then
        n=${SCCL_CPU_PROCS:-2}
    elif [ -z "$n" ] && [ -n "${SLURM_GPUS_ON_NODE:-}" ]; then
        n=$SLURM_GPUS_ON_NODE
    elif [ -z "$n" ] && [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
        n=$(tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c .)
    fi
    case "$n" in
    '' | 0) sccl_die "no GPUs in this allocation (SLURM_GPUS_ON_NODE and CUDA_VISIBLE_DEVICES" \
        "are unset): on GPU nodes submit with --gpus-per-node=N; on CPU nodes export" \
        "SCCL_LAUNCH=cpu before sbatch and submit with --gpus-per-node=0 --cpus-per-task=2," \
        "or set SCCL_PROCS_PER_NODE" ;;
    *[!0-9]*) sccl_die "processes per node must be a positive integer, got '$n'" ;;
    esac
    printf '%s\n' "$n"
}

# sccl_launch_mode SCRIPT: the SCCL_LAUNCH choice that applies to SCRIPT. Only Stage 1
# (train_supcon.py) trains the encoder; the other stages use ddp's config for sharded choices.
sccl_launch_mode() {
    local mode=${SCCL_LAUNCH:-ddp}
    case "$mode" in
    ddp | cpu) ;;
    deepspeed | deepspeed3 | fsdp) [ "$(basename -- "${1:-}")" = train_supcon.py ] || mode=ddp ;;
    *) sccl_die "SCCL_LAUNCH must be ddp, deepspeed, deepspeed3, fsdp or cpu, got '$mode'" ;;
    esac
    printf '%s\n' "$mode"
}

# sccl_launch_config MODE: the Accelerate config file of a launch mode (SCCL_LAUNCH_CONFIG wins).
sccl_launch_config() {
    if [ -n "${SCCL_LAUNCH_CONFIG:-}" ]; then
        printf '%s\n' "$SCCL_LAUNCH_CONFIG"
        return
    fi
    case "$1" in
    ddp) printf '%s\n' "$SCCL_ROOT/launch/multi_gpu.yaml" ;;
    deepspeed) printf '%s\n' "$SCCL_ROOT/launch/deepspeed_zero2.yaml" ;;
    deepspeed3) printf '%s\n' "$SCCL_ROOT/launch/deepspeed_zero3.yaml" ;;
    fsdp) printf '%s\n' "$SCCL_ROOT/launch/fsdp.yaml" ;;
    cpu) printf '%s\n' "$SCCL_ROOT/launch/cpu_2proc.yaml" ;;
    esac
}

# sccl_node_command SCRIPT ARGS...: SCCL_NODE_CMD = this node's `accelerate launch` line.
# Runs ON EACH NODE (inside srun): SLURM_NODEID is this node's rank there, and only there.
sccl_node_command() {
    local nnodes=${SLURM_NNODES:-${SLURM_JOB_NUM_NODES:-1}} rank=${SLURM_NODEID:-0}
    local ppn config port mode
    mode=$(sccl_launch_mode "${1:-}") || exit $?
    config=$(sccl_launch_config "$mode")
    ppn=$(sccl_procs_per_node) || exit $?
    port=$(sccl_port)
    [ -f "$config" ] || sccl_die "Accelerate config $config does not exist"
    SCCL_NODE_CMD=(accelerate launch --config_file "$config"
        --num_machines "$nnodes" --machine_rank "$rank"
        --num_processes "$((nnodes * ppn))" --main_process_port "$port")
    if [ "$nnodes" -gt 1 ]; then
        # c10d: the ranks meet at the head node's port (an elastic store, no fixed start order).
        SCCL_NODE_CMD+=(--main_process_ip "$(sccl_head_addr)" --rdzv_backend c10d)
    fi
    if [ "$mode" = deepspeed ] || [ "$mode" = deepspeed3 ]; then
        # Absolute JSON path (the config's is relative to the repo; jobs run in the submit dir);
        # "standard" = torchrun on every node instead of DeepSpeed's pdsh/ssh launcher.
        local json=ds_zero2.json
        [ "$mode" = deepspeed ] || json=ds_zero3.json
        SCCL_NODE_CMD+=(--deepspeed_config_file "${SCCL_DS_CONFIG:-$SCCL_ROOT/launch/$json}"
            --deepspeed_multinode_launcher standard)
    fi
    SCCL_NODE_CMD+=("$@")
}

# sccl_node_main SCRIPT ARGS...: what srun runs on every node.
sccl_node_main() {
    sccl_node_command "$@"
    if sccl_dryrun; then
        printf 'sccl-node %s/%s:' "${SLURM_NODEID:-0}" "${HOSTNAME:-?}"
        printf ' %q' "${SCCL_NODE_CMD[@]}"
        printf '\n'
        return 0
    fi
    # The launcher ignores SIGUSR1 (the preemption warning): Slurm signals every process of
    # the step, and only the training processes, which inherit SIG_IGN but install their own
    # handler, must react (checkpoint and exit 0). Default SIGUSR1 would kill the launcher.
    trap '' USR1
    exec "${SCCL_NODE_CMD[@]}"
}

# sccl_launch SCRIPT ARGS...: one srun task per node, each running sccl_node_main there.
# Returns the step's exit code. A SIGUSR1 sent to the batch shell only (sbatch
# --signal=B:USR1@T, scancel --batch) is forwarded to the step's processes.
sccl_launch() {
    local nnodes=${SLURM_JOB_NUM_NODES:-1} rc
    if [ -z "${SLURM_JOB_ID:-}" ]; then  # outside Slurm (a login shell, tests): this node only
        (sccl_node_main "$@")
        return
    fi
    # Single quotes: $SLURM_NODEID etc. are expanded by the bash on each node, not here.
    # shellcheck disable=SC2016
    srun --nodes="$nnodes" --ntasks="$nnodes" --ntasks-per-node=1 --kill-on-bad-exit=1 \
        bash -c 'set -euo pipefail; source "$SCCL_ROOT/slurm/common.sh"; sccl_node_main "$@"' \
        sccl-node "$@" &
    SCCL_STEP_PID=$!
    trap 'sccl_log "SIGUSR1: forwarding to the training processes"; scancel --signal=USR1 "$SLURM_JOB_ID" || true' USR1
    while :; do
        rc=0
        wait "$SCCL_STEP_PID" || rc=$?
        kill -0 "$SCCL_STEP_PID" 2>/dev/null || break  # else a trapped signal ended the wait
    done
    trap - USR1
    return "$rc"
}

# ----------------------------------------------------------------------- stage state

# Stage 1 of RUN has finished (its newest checkpoint says so): the trainer's own definition,
# sccl.checkpoint.stage1_finished, from this repository. Needs the environment
# (sccl_activate_env) first: the module imports torch.
sccl_stage1_finished() {
    PYTHONPATH="$SCCL_ROOT${PYTHONPATH:+:$PYTHONPATH}" \
        "$(command -v python3 || command -v python)" -m sccl.checkpoint finished "$1"
}

# Chain arguments -> arrays s1 (Stage 1), s2 (after --stage2-args), ev (after --eval-args).
sccl_split_chain_args() {
    # shellcheck disable=SC2034  # the arrays are read by the calling script
    s1=() s2=() ev=()
    local part=s1 a
    for a in "$@"; do
        case "$a" in
        --stage2-args) part=s2 ;;
        --eval-args) part=ev ;;
        *) eval "$part+=(\"\$a\")" ;;
        esac
    done
}

sccl_require_files() {
    local what=$1 f
    shift
    for f in "$@"; do
        [ -f "$f" ] || sccl_die "$what: $f is missing"
    done
}

# Stage 1 stopped cleanly before finishing (a preemption signal): put the job back in the
# queue; the requeued job resumes from the newest checkpoint (--run.resume auto).
sccl_requeue() {
    local n=${SLURM_RESTART_COUNT:-0} max=${SCCL_MAX_REQUEUES:-20}
    if [ "${SCCL_REQUEUE:-1}" = 0 ] || [ -z "${SLURM_JOB_ID:-}" ]; then
        sccl_log "Stage 1 stopped before finishing (checkpoint saved); requeue is off:" \
            "resubmit the same command to resume"
        exit 1
    fi
    if [ "$n" -ge "$max" ]; then
        sccl_log "Stage 1 stopped again after $n requeues (SCCL_MAX_REQUEUES=$max); giving up"
        exit 1
    fi
    sccl_log "Stage 1 stopped before finishing (checkpoint saved): requeueing job" \
        "$SLURM_JOB_ID (restart $((n + 1)))"
    scontrol requeue "$SLURM_JOB_ID" ||
        { sccl_log "scontrol requeue failed: resubmit the same command to resume"; exit 1; }
    exit 0
}

# sccl_cpu_job_opts: on CPU nodes (SCCL_LAUNCH=cpu), append to OPTS no GPUs and a CPU per
# process, replacing the #SBATCH GPU defaults (before the user's options, which still win).
sccl_cpu_job_opts() {
    if [ "${SCCL_LAUNCH:-ddp}" = cpu ]; then
        OPTS+=(--gpus-per-node=0 "--cpus-per-task=${SCCL_PROCS_PER_NODE:-${SCCL_CPU_PROCS:-2}}")
    fi
}

# sccl_refusal_hint EXTRA_VAR SBATCH_ERROR: what to set when sbatch refuses a stage's job.
sccl_refusal_hint() {
    case "$2" in
    *"generic resource"* | *gres*)
        echo "this partition has no GPUs for --gpus-per-node: on CPU nodes export" \
            "SCCL_LAUNCH=cpu (the jobs then ask for --gpus-per-node=0), or name a GPU" \
            "partition in SCCL_SBATCH_ARGS=--partition=NAME" ;;
    *processors* | *CPU*)
        echo "a node has fewer CPUs than the job asks for (the scripts' default is" \
            "--cpus-per-task=8): set $1=--cpus-per-task=N (or SCCL_SBATCH_ARGS for every job)" ;;
    *) echo "fix the options in SCCL_SBATCH_ARGS or $1" ;;
    esac
}

# sccl_check_job NAME EXTRA_VAR SCRIPT: refuse, before anything is submitted, a job that
# could never run: sbatch's --test-only answer (skipped when the calling script's $dry is 1),
# and a GPU launch mode (SCCL_LAUNCH other than cpu) on a job that asks for
# --gpus-per-node=0. The options come from the calling script's sbatch_opts NAME EXTRA_VAR.
sccl_check_job() {
    local name=$1 extra=$2 script=$3 out gpus='' o
    sbatch_opts "$name" "$extra"
    for o in "${OPTS[@]}"; do
        case "$o" in --gpus-per-node=*) gpus=${o#*=} ;; esac
    done
    if [ "$gpus" = 0 ] && [ "${SCCL_LAUNCH:-ddp}" != cpu ] &&
        [ -z "${SCCL_PROCS_PER_NODE:-}" ]; then
        sccl_die "the $name job asks for --gpus-per-node=0 but SCCL_LAUNCH=${SCCL_LAUNCH:-ddp}" \
            "launches one process per GPU: export SCCL_LAUNCH=cpu for CPU nodes;" \
            "nothing was submitted"
    fi
    [ "${dry:-0}" = 1 ] && return 0
    out=$(sbatch --test-only "${OPTS[@]}" "$script" 2>&1) && return 0
    out=$(grep . <<<"$out" | tail -n1)
    sccl_die "sbatch refuses the $name job (${out#sbatch: error: }):" \
        "$(sccl_refusal_hint "$extra" "$out"); nothing was submitted"
}
