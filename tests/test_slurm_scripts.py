"""slurm/pipeline.sh and slurm/grid.sh as a newcomer meets them: their own options wherever
they stand, jobs the cluster cannot run refused before anything is submitted (with the
variable to set), CPU jobs from SCCL_LAUNCH=cpu alone, and a FAILED marker that quotes the
log line saying why.

The fast tests put stub `sbatch` / `squeue` on PATH (each call is recorded; `--test-only`
answers as Slurm would); one test runs the chain on a real one-node Slurm without GPUs.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.slurm_cluster import slurm_cluster

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "slurm"
GRES_ERROR = "sbatch: error: Invalid generic resource (gres) specification"
CPU_ERROR = "allocation failure: More processors requested than permitted"

SBATCH_STUB = """#!/bin/bash
printf '%s\\x1f' "$@" >>"$STUB_LOG"
printf '\\n' >>"$STUB_LOG"
case " $* " in
*" --test-only "*)
    [ -z "${STUB_REFUSE:-}" ] || { echo "$STUB_REFUSE" >&2; exit 1; }
    echo "sbatch: Job 9 to start at now using 2 processors on nodes vm in partition debug" >&2
    exit 0 ;;
esac
echo "$((100 + $(wc -l <"$STUB_LOG")))"
"""


def stub_env(tmp_path: Path, **env: str) -> dict[str, str]:
    """An environment whose sbatch records its arguments and whose squeue knows no job."""
    stub = tmp_path / "bin"
    stub.mkdir(exist_ok=True)
    (stub / "sbatch").write_text(SBATCH_STUB)
    (stub / "squeue").write_text("#!/bin/sh\nexit 0\n")
    for name in ("sbatch", "squeue"):
        (stub / name).chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SCCL_", "SLURM_"))}
    return {**base, "PATH": f"{stub}:{os.environ['PATH']}", "STUB_LOG": str(tmp_path / "calls"),
            "SCCL_POLL_SECONDS": "0", **env}


def sbatch_calls(tmp_path: Path) -> list[list[str]]:
    """Every recorded sbatch call's arguments (--test-only probes included)."""
    log = tmp_path / "calls"
    lines = log.read_text().splitlines() if log.exists() else []
    return [line.split("\x1f")[:-1] for line in lines]


def submitted(tmp_path: Path) -> list[list[str]]:
    return [c for c in sbatch_calls(tmp_path) if "--test-only" not in c]


def chain(tmp_path: Path, *args: str, script: str = "pipeline.sh",
          **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SLURM / script), *args], env=stub_env(tmp_path, **env),
                          capture_output=True, text=True, timeout=60)


def after(call: list[str], script: str) -> list[str]:
    """The arguments a submitted job's batch script gets (those after the script's path)."""
    return call[call.index(str(SLURM / script)) + 1:]


@pytest.mark.parametrize("where", [1, 3, 7], ids=["before-run", "after-run", "after-eval"])
def test_pipeline_wait_wherever_it_stands(tmp_path, where):
    """`--wait` after the run directory used to reach evaluation as an argument, which then
    failed once Stage 1 and 2 had run."""
    run = tmp_path / "a run"
    args = [str(run), "--config", "c.yaml", "--stage2-args", "--x", "--eval-args", "--e"]
    args.insert(where - 1, "--wait")
    proc = chain(tmp_path, *args)
    # it waited (the stub queue is empty at once) and found no results
    assert proc.returncode == 1 and f"ended without {run}/eval/results.json" in proc.stderr
    calls = submitted(tmp_path)
    assert [c[c.index("--parsable") + 1].split("=")[1] for c in calls] == \
        ["sccl-stage1", "sccl-stage2", "sccl-eval", "sccl-guard"]
    assert after(calls[0], "stage1.sh") == [str(run), "--config", "c.yaml"]
    assert after(calls[1], "stage2.sh") == [str(run), "--x"]
    assert after(calls[2], "eval.sh") == [str(run), "--e"]


def test_grid_options_wherever_they_stand(tmp_path):
    """grid.sh's --dry-run after RUNS used to be passed to Stage 1 while the arrays were
    really submitted; pipeline.sh's --wait is refused before anything is."""
    runs = tmp_path / "runs"
    axes = {"SCCL_GRID_SIMILARITY": "cosine", "SCCL_GRID_QUEUE": "8", "SCCL_GRID_SEEDS": "1"}
    proc = chain(tmp_path, str(runs), "--config", "c.yaml", "--dry-run", script="grid.sh", **axes)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("sbatch --parsable --array=0-1") == 3
    assert "--dry-run" not in proc.stderr
    assert not sbatch_calls(tmp_path)  # a dry run asks nothing of Slurm
    proc = chain(tmp_path, str(runs / "b"), "--config", "c.yaml", "--wait", script="grid.sh",
                 **axes)
    assert proc.returncode == 2 and "grid.sh has no --wait" in proc.stderr
    assert not sbatch_calls(tmp_path) and not (runs / "b").exists()


@pytest.mark.parametrize("script", ["pipeline.sh", "grid.sh"])
def test_jobs_the_cluster_refuses_are_named_before_submitting(tmp_path, script):
    """Slurm's raw submit errors on a CPU-only or small cluster become one line naming the
    variable to set, and nothing is submitted (no half chain, no grid table left)."""
    run = tmp_path / "r"
    proc = chain(tmp_path, str(run), "--config", "c.yaml", script=script, STUB_REFUSE=GRES_ERROR)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: sbatch refuses the stage1 job (Invalid generic resource")
    assert "export SCCL_LAUNCH=cpu" in line and line.endswith("nothing was submitted")
    assert not submitted(tmp_path) and not list(run.glob("grid-*")) and not (run / "logs" /
                                                                            "jobs.txt").exists()
    proc = chain(tmp_path, str(run), script=script, STUB_REFUSE=CPU_ERROR)
    assert proc.returncode == 2 and "set SCCL_STAGE1_SBATCH=--cpus-per-task=N" in proc.stderr
    assert not submitted(tmp_path)
    proc = chain(tmp_path, str(run), script=script, SCCL_LAUNCH="tpu")
    assert proc.returncode == 2 and "SCCL_LAUNCH must be ddp, deepspeed" in proc.stderr
    # CPU jobs asked for without the CPU launcher: refused too, before sbatch is asked
    proc = chain(tmp_path, str(run), script=script, SCCL_SBATCH_ARGS="--gpus-per-node=0")
    assert proc.returncode == 2 and "export SCCL_LAUNCH=cpu" in proc.stderr
    assert not submitted(tmp_path)


def test_cpu_launch_asks_for_cpu_jobs(tmp_path):
    """SCCL_LAUNCH=cpu set once: every stage's job asks for no GPUs and a CPU per process,
    before the user's own options (the last one wins in sbatch)."""
    run = tmp_path / "r"
    proc = chain(tmp_path, str(run), SCCL_LAUNCH="cpu", SCCL_CPU_PROCS="3",
                 SCCL_EVAL_SBATCH="--cpus-per-task=6")
    assert proc.returncode == 0, proc.stderr
    calls = sbatch_calls(tmp_path)
    assert len(calls) == 3 + 4 and all("--test-only" in c for c in calls[:3])
    for call in calls[:6]:
        opts = call[:call.index(next(a for a in call if a.startswith(str(SLURM))))]
        assert opts[opts.index("--gpus-per-node=0") + 1] == "--cpus-per-task=3", call
    ev = calls[5]  # the evaluation job: the user's CPU count comes later, so it wins
    assert ev.index("--cpus-per-task=6") > ev.index("--cpus-per-task=3") and "eval.sh" in ev[-2]
    proc = chain(tmp_path, str(run), SCCL_LAUNCH="ddp")
    assert proc.returncode == 0 and "--gpus-per-node=0" not in submitted(tmp_path)[-4]


LOGS = {  # a failed Stage 1's log -> the line FAILED quotes
    "sccl": (["[sccl 1] stage1: run r", "Loading...", "error: --data.batch_size: must be even",
              "srun: error: vm: task 0: Exited with exit code 2", "error: later"],
             "line 3: error: --data.batch_size: must be even"),
    "rank": (["x", "error (rank 1): shards: /s/x.tar: truncated"],
             "line 2: error (rank 1): shards: /s/x.tar: truncated"),
    "time limit": (["x", "slurmstepd: error: *** JOB 11 ON vm CANCELLED DUE TO TIME LIMIT ***"],
                   "line 2: slurmstepd: error: *** JOB 11 ON vm CANCELLED DUE TO TIME LIMIT"),
    "traceback": (["[rank0]: Traceback (most recent call last):", '[rank0]:   File "t.py"',
                   "[rank0]:     raise ValueError('boom')", "[rank0]: ValueError: boom",
                   "subprocess.CalledProcessError: Command 'x' returned non-zero exit status 1."],
                  "line 4: ValueError: boom"),
    "silent": (["[sccl 1] stage1: run r", "[sccl 2] Stage 1 failed (exit 9)"],
               "which says nothing about why (its state: sacct -j 11)"),
    "no log": (None, "which does not exist: the job never started"),
}


@pytest.mark.parametrize("case", list(LOGS))
def test_failed_marker_quotes_the_line_that_says_why(tmp_path, case):
    """The guard job's RUN/logs/FAILED names the failed stage's log and the line in it that
    says why (the old marker named only the log)."""
    run = tmp_path / "a run"
    (run / "logs").mkdir(parents=True)
    (run / "logs" / "jobs.txt").touch()
    lines, expected = LOGS[case]
    log = run / "logs" / "stage1-11.out"
    if lines is not None:
        log.write_text("\n".join(lines) + "\n")
    # Stage 1 has not finished: python3 -m sccl.checkpoint finished RUN says no (exit 1)
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for name in ("python3", "accelerate"):
        (bin_ / name).write_text("#!/bin/sh\nexit 1\n")
        (bin_ / name).chmod(0o755)
    env = {**stub_env(tmp_path), "PATH": f"{bin_}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(SLURM / "pipeline.sh"), "--report-failure", str(run),
                           "11", "12", "13"], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    failed = (run / "logs" / "FAILED").read_text()
    assert failed.startswith(f"error: the chain for {run} stopped: Stage 1 (job 11) failed")
    assert f"see {log}" in failed and expected in failed and failed.count("\n") == 1


# ---------------------------------------------------------------- a real cluster, no GPUs


@pytest.mark.slurm
@pytest.mark.slow
def test_cpu_cluster_chain(tmp_path):
    """On a 2-CPU node without GPUs the README's chain command is refused with the variable
    to set; with SCCL_LAUNCH=cpu alone the three stages run (dry-run launches) in order."""
    with slurm_cluster(tmp_path / "slurm", cpus=2) as cluster:
        env = {k: v for k, v in cluster.env.items() if not k.startswith("SCCL_")}
        run = tmp_path / "a run"
        cmd = ["timeout", "120", "bash", str(SLURM / "pipeline.sh"), str(run), "--config", "c.yaml"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert "Invalid generic resource" in proc.stderr and "export SCCL_LAUNCH=cpu" in proc.stderr
        assert not cluster.queue()
        env.update(SCCL_LAUNCH="cpu", SCCL_LAUNCH_DRYRUN="1", SCCL_POLL_SECONDS="1")
        proc = subprocess.run([*cmd, "--wait"], env=env, capture_output=True, text=True,
                              cwd=tmp_path)
        # dry-run stages write no results: the chain ends without them, but every stage ran
        assert proc.returncode == 1 and "ended without" in proc.stderr, proc.stderr
        ids = dict(line.split() for line in proc.stdout.splitlines())
        for stage, script in (("stage1", "train_supcon.py"), ("stage2", "train_linear.py"),
                              ("eval", "evaluate.py")):
            text = (run / "logs" / f"{stage}-{ids[stage]}.out").read_text()
            (node,) = [x for x in text.splitlines() if x.startswith("sccl-node 0/")]
            assert "launch/cpu_2proc.yaml --num_machines 1 --machine_rank 0 --num_processes 2" \
                in node and script in node, text
        assert not (run / "logs" / "FAILED").exists()
