"""slurm/*.sh on a real one-node Slurm (tests/slurm_cluster.py), plus the multi-node command
lines and the grid table, which need no daemons.

The cluster tests run the real stages on CPU (tiny encoder, tiny synthetic corpus): the
pipeline chain, a failing chain, a 2-task grid + sccl-report, a preempted and requeued
Stage 1, SIGUSR1 delivery through srun and `accelerate launch`, and GPU counts from an
allocation of fake GPUs. Every path involved holds a space.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from tests.corpus import la19_shards, slurm_stage1_config
from tests.slurm_cluster import slurm_cluster

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "slurm"
VENV = Path(sys.executable).parent.parent  # the hook under test: SCCL_ENV=<venv>
# Job resources on the 2-CPU test node; the GPU defaults in the #SBATCH headers are overridden.
CPU_JOB = "--gpus-per-node=0 --cpus-per-task=2 --time=00:10:00"
ONE_PROC = "--export=ALL,SCCL_CPU_PROCS=1"
TIMEOUT = 300  # every sbatch --wait / chain is wrapped in `timeout`


# ---------------------------------------------------------------- no daemons needed


def node_command(env: dict[str, str], tmp_path: Path, *args: str) -> tuple[int, str, str]:
    """Run sccl_node_main (the per-node launcher) with a fake allocation in dry-run mode."""
    stub = tmp_path / "bin"
    stub.mkdir(exist_ok=True)
    scontrol = stub / "scontrol"  # `scontrol show hostnames LIST` of a 2-node allocation
    scontrol.write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && printf "gpu-07\\ngpu-08\\n"\n')
    scontrol.chmod(0o755)
    full = {"PATH": f"{stub}:{os.environ['PATH']}", "SCCL_ROOT": str(REPO),
            "SCCL_LAUNCH_DRYRUN": "1", **env}
    proc = subprocess.run(["bash", "-c", 'source "$SCCL_ROOT/slurm/common.sh"; sccl_node_main "$@"',
                           "x", *args], env=full, capture_output=True, text=True, timeout=30)
    return proc.returncode, proc.stdout, proc.stderr


def parse_launch(line: str) -> tuple[str, dict[str, str], list[str]]:
    """'sccl-node R/host: accelerate launch --k v ... SCRIPT ARGS' -> (prefix, options, rest)."""
    prefix, _, cmd = line.partition(": ")
    words = shlex.split(cmd)
    assert words[:2] == ["accelerate", "launch"], line
    opts, i = {}, 2
    while words[i].startswith("--"):
        opts[words[i][2:]] = words[i + 1]
        i += 2
    return prefix, opts, words[i:]


def test_multinode_command_lines(tmp_path):
    alloc = {"SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu-[07-08]", "SLURM_JOB_ID": "123456",
             "SLURM_GPUS_ON_NODE": "4"}
    lines = []
    for rank in ("0", "1"):
        rc, out, err = node_command({**alloc, "SLURM_NODEID": rank}, tmp_path,
                                    "sccl/train_supcon.py", "--run.dir", "/runs/a b")
        assert rc == 0, err
        lines.append(parse_launch(out.strip()))
    for rank, (prefix, opts, rest) in enumerate(lines):
        assert prefix.startswith(f"sccl-node {rank}/")
        assert opts["machine_rank"] == str(rank)  # SLURM_NODEID as seen on that node
        assert opts["num_machines"] == "2" and opts["num_processes"] == "8"  # 2 nodes x 4 GPUs
        assert opts["main_process_ip"] == "gpu-07"  # first host of the allocation
        assert opts["main_process_port"] == str(20000 + 123456 % 12000)  # same on every node
        assert opts["rdzv_backend"] == "c10d"
        assert opts["config_file"] == str(REPO / "launch" / "multi_gpu.yaml")
        assert rest == ["sccl/train_supcon.py", "--run.dir", "/runs/a b"]  # the space survives

    rc, out, _ = node_command({**alloc, "SLURM_NODEID": "1", "SCCL_LAUNCH": "deepspeed",
                               "SLURM_GPUS_ON_NODE": "", "CUDA_VISIBLE_DEVICES": "0,1",
                               "SCCL_MASTER_PORT": "31000"}, tmp_path,
                              "sccl/train_supcon.py")
    _, opts, _ = parse_launch(out.strip())
    assert opts["config_file"].endswith("launch/deepspeed_zero2.yaml")
    assert opts["num_processes"] == "4" and opts["main_process_port"] == "31000"
    assert opts["deepspeed_multinode_launcher"] == "standard"
    assert opts["deepspeed_config_file"] == str(REPO / "launch" / "ds_zero2.json")

    one = {"SLURM_GPUS_ON_NODE": "2"}
    for mode, config, ds_json in (("deepspeed3", "deepspeed_zero3.yaml", "ds_zero3.json"),
                               ("fsdp", "fsdp.yaml", None)):
        rc, out, err = node_command({**one, "SCCL_LAUNCH": mode}, tmp_path,
                                    str(REPO / "sccl" / "train_supcon.py"))
        assert rc == 0, err
        _, opts, _ = parse_launch(out.strip())
        assert opts["config_file"] == str(REPO / "launch" / config)
        assert (REPO / "launch" / config).is_file()
        assert opts.get("deepspeed_config_file") == (ds_json and str(REPO / "launch" / ds_json))
        # Stage 2 and evaluation embed with a frozen encoder: nothing to shard, DDP's config
        for script in ("sccl/train_linear.py", "sccl/evaluate.py"):
            rc, out, err = node_command({**one, "SCCL_LAUNCH": mode}, tmp_path, script)
            _, opts, _ = parse_launch(out.strip())
            assert opts["config_file"] == str(REPO / "launch" / "multi_gpu.yaml"), err
            assert "deepspeed_config_file" not in opts

    rc, out, _ = node_command({"SCCL_LAUNCH": "cpu", "SCCL_CPU_PROCS": "3"}, tmp_path, "s.py")
    _, opts, _ = parse_launch(out.strip())
    assert opts["num_machines"] == "1" and opts["num_processes"] == "3"
    assert "rdzv_backend" not in opts and "main_process_ip" not in opts  # one node: static
    assert opts["config_file"].endswith("launch/cpu_2proc.yaml")

    rc, out, err = node_command({}, tmp_path, "s.py")  # no GPUs, no CPU fallback asked for
    assert rc == 2 and "no GPUs in this allocation" in err and not out
    rc, _, err = node_command({"SCCL_LAUNCH": "tpu"}, tmp_path, "s.py")
    assert rc == 2 and "SCCL_LAUNCH must be ddp, deepspeed, deepspeed3, fsdp or cpu" in err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


PROBE = """import os, sys, time
from pathlib import Path
out = Path(sys.argv[1]); rank = os.environ["RANK"]
(out / f"rank{rank}").write_text(" ".join(os.environ[k] for k in
    ("RANK", "WORLD_SIZE", "GROUP_RANK", "LOCAL_RANK")))
"""


@pytest.mark.slow
@pytest.mark.dist
def test_two_node_command_lines_rendezvous(tmp_path):
    """Both nodes' command lines, run side by side on this machine, meet via c10d."""
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    env = {**os.environ, "PATH": f"{VENV / 'bin'}:{os.environ['PATH']}", "SCCL_ROOT": str(REPO),
           "SCCL_LAUNCH": "cpu", "SCCL_CPU_PROCS": "1", "SCCL_HEAD_ADDR": "127.0.0.1",
           "SLURM_NNODES": "2", "SCCL_MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    script = 'source "$SCCL_ROOT/slurm/common.sh"; sccl_node_main "$@"'

    def node(rank: int) -> subprocess.Popen:
        return subprocess.Popen(["timeout", "120", "bash", "-c", script, "x", str(probe),
                                 str(tmp_path)], env={**env, "SLURM_NODEID": str(rank)},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    # Here both "nodes" are 127.0.0.1, so node 1's agent could take the store port before
    # node 0 checks it is free: start node 1 once node 0 listens (on a cluster they differ).
    procs = [node(0)]
    deadline = time.monotonic() + 90
    while not port_open(int(env["SCCL_MASTER_PORT"])) and procs[0].poll() is None:
        assert time.monotonic() < deadline, "node 0 never opened its rendezvous port"
        time.sleep(0.2)
    procs.append(node(1))
    outs = [p.communicate()[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    seen = sorted((tmp_path / f"rank{r}").read_text() for r in (0, 1))
    assert seen == ["0 2 0 0", "1 2 1 0"]  # RANK WORLD_SIZE GROUP_RANK(node) LOCAL_RANK


def grid_rows(tmp_path: Path, **axes: str) -> list[list[str]]:
    env = {**os.environ, **axes}
    proc = subprocess.run(["bash", str(SLURM / "grid.sh"), "--dry-run", str(tmp_path / "r s")],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("sbatch --parsable --array=") == 3
    (grid,) = (tmp_path / "r s").glob("grid-*.tsv")
    return [line.split("\t") for line in grid.read_text().splitlines()]


def test_grid_table(tmp_path):
    rows = grid_rows(tmp_path)
    assert len(rows) == 2 * (1 + 5 * 2) * 3 == 66
    assert [r[0] for r in rows] == [str(i) for i in range(66)]
    names = [r[1] for r in rows]
    assert len(set(names)) == 66 and "cosine-q4096-d6-s42" in names
    assert not [n for n in names if "-q0-d6-" in n]  # no delayed start without a queue
    first = dict(zip(rows[21][2::2], rows[21][3::2], strict=True))
    assert rows[21][1] == "cosine-q4096-d6-s42"
    assert first == {"--loss.similarity": "cosine", "--loss.temperature": "0.3",
                     "--loss.queue_size": "4096", "--loss.queue_start_epoch": "6",
                     "--run.seed": "42", "--data.seed": "42"}
    angular = [dict(zip(r[2::2], r[3::2], strict=True)) for r in rows if r[1].startswith("ang")]
    assert {a["--loss.temperature"] for a in angular} == {"0.07"}

    small = grid_rows(tmp_path / "b", SCCL_GRID_SIMILARITY="angular", SCCL_GRID_QUEUE="0 64",
                      SCCL_GRID_DELAYED="yes", SCCL_GRID_SEEDS="7", SCCL_TEMP_ANGULAR="0.1",
                      SCCL_GRID_DELAY_EPOCH="3")
    assert [r[1] for r in small] == ["angular-q64-d3-s7"]
    assert "0.1" in small[0]
    bad = subprocess.run(["bash", str(SLURM / "grid.sh"), "--dry-run", str(tmp_path / "c")],
                         env={**os.environ, "SCCL_GRID_QUEUE": "big"}, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "error: SCCL_GRID_QUEUE: 'big'" in bad.stderr


def test_missing_slurm_skips_or_fails(monkeypatch):
    import tests.slurm_cluster as sc

    monkeypatch.setattr(sc, "_which", lambda name: None if name == "slurmd" else "/bin/true")
    monkeypatch.delenv("SCCL_REQUIRE_SLURM", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"missing: slurmd\); apt-get install"):
        sc.require_slurm()
    monkeypatch.setenv("SCCL_REQUIRE_SLURM", "1")
    with pytest.raises(pytest.fail.Exception, match="SCCL_REQUIRE_SLURM is set but Slurm"):
        sc.require_slurm()


def test_scripts_lint():
    scripts = sorted(str(p) for p in SLURM.glob("*.sh"))
    assert len(scripts) == 6
    for s in scripts:
        subprocess.run(["bash", "-n", s], check=True)
    if subprocess.run(["which", "shellcheck"], capture_output=True).returncode == 0:
        proc = subprocess.run(["shellcheck", "-x", *scripts], cwd=REPO, capture_output=True,
                              text=True)
        assert proc.returncode == 0, proc.stdout


# ---------------------------------------------------------------- a real cluster

@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with slurm_cluster(tmp_path_factory.mktemp("slurm"), gpus=2) as c:
        yield c


@pytest.fixture(scope="module")
def work(tmp_path_factory, cluster) -> dict:
    """Shards of the tiny synthetic corpus, a tiny Stage 1 config, the jobs' environment."""
    root = tmp_path_factory.mktemp("slurm work") / "with space"
    shards = la19_shards(root / "data")
    itw = root / "data" / "itw"
    subprocess.run([sys.executable, "-m", "shards", "build", "--format", "itw", "--protocol",
                    str(shards["corpus"] / "release_in_the_wild" / "meta.csv"), "--audio-dir",
                    str(shards["corpus"] / "release_in_the_wild"), "--out", str(itw),
                    "--no-progress"], check=True, capture_output=True)
    # 4 bona fide + 4 spoof per epoch in steps of 4 over 2 ranks: gather_batch gives every
    # anchor a positive (a real loss, so the weights really depend on the data order).
    config = slurm_stage1_config(root / "tiny config.yaml", shards,
                                 optim={"epochs": 3, "patience": 0}, loss={"gather_batch": True})
    env = {**cluster.env, "SCCL_ENV": str(VENV), "SCCL_LAUNCH": "cpu", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "SCCL_SBATCH_ARGS": CPU_JOB, "SCCL_STAGE2_SBATCH": ONE_PROC,
           "SCCL_EVAL_SBATCH": ONE_PROC, "SCCL_POLL_SECONDS": "2"}
    env.pop("SCCL_ROOT", None)
    stage2 = ["--stage2-args", "--embed.seconds", "0.5", "--linear.max_epochs", "5"]
    sets = f"la19={shards['dev']},itw={itw}"
    evals = ["--eval-args", "--eval.sets", sets, "--embed.seconds", "0.5",
             "--eval.bootstrap", "10", "--eval.tsne_points", "0"]
    return {"root": root, "config": str(config), "env": env, "tail": stage2 + evals}


def run(cmd: list[str], work: dict, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("env", work["env"])
    kw.setdefault("cwd", work["root"])
    return subprocess.run(["timeout", str(TIMEOUT), *cmd], capture_output=True, text=True, **kw)


def wait_idle(cluster, timeout: float = TIMEOUT) -> None:
    """Until slurmctld knows no job (all finished, failed or cancelled)."""
    deadline = time.monotonic() + timeout
    while cluster.queue():
        assert time.monotonic() < deadline, f"jobs still queued: {cluster.queue()}"
        time.sleep(1)


def logs(run_dir: Path) -> str:
    """Every Slurm log of a run, for assertion messages."""
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')}"
                     for p in sorted((run_dir / "logs").glob("*.out")) if p.exists())


@pytest.fixture(scope="module")
def chain(work, cluster) -> dict:
    """`pipeline.sh --wait` on the tiny corpus: Stage 1 on 2 processes -> Stage 2 -> eval.
    Stage 1 stops at step 3 as on a preemption signal (run.stop_after_steps: the trainer
    sends itself SIGTERM), so the chain also goes through a requeue."""
    run_dir = work["root"] / "runs" / "chain run"
    t0 = time.monotonic()
    proc = run(["bash", str(SLURM / "pipeline.sh"), "--wait", str(run_dir),
                "--config", work["config"], "--run.stop_after_steps", "3", *work["tail"]], work)
    wait_idle(cluster)  # the guard job is cancelled once the chain has succeeded
    return {"run": run_dir, "proc": proc, "seconds": time.monotonic() - t0}


@pytest.mark.slurm
@pytest.mark.slow
def test_pipeline_chain(chain):
    proc, run_dir = chain["proc"], chain["run"]
    assert proc.returncode == 0, proc.stdout + proc.stderr + logs(run_dir)
    ids = dict(line.split() for line in proc.stdout.splitlines()[:3])
    assert list(ids) == ["stage1", "stage2", "eval"]
    assert int(ids["stage1"]) < int(ids["stage2"]) < int(ids["eval"])
    res = json.loads((run_dir / "eval" / "results.json").read_text())
    assert set(res["sets"]) == {"la19", "itw"} and 0 <= res["pooled_eer"]["eer"] <= 1
    table = (run_dir / "eval" / "results.md").read_text()
    assert "| run | LA19 | ITW | pooled | mean |" in table and table in proc.stdout
    for stage, job in ids.items():
        assert (run_dir / "logs" / f"{stage}-{job}.out").is_file()
    stage1 = (run_dir / "logs" / f"stage1-{ids['stage1']}.out").read_text()
    # preempted at step 3, requeued (same job id, log appended), resumed, finished; only
    # then did Stage 2 start
    assert "stopped by a signal at step 3" in stage1 and f"requeueing job {ids['stage1']}" in stage1
    assert "; restart 1" in stage1 and "step-00000003" in stage1.split("; restart 1")[1]
    assert "Stage 1 finished" in stage1
    assert (run_dir / "stage2" / "meta.json").is_file() and not (run_dir / "logs" / "FAILED").exists()


@pytest.mark.slurm
@pytest.mark.slow
def test_failed_stage_stops_the_chain(work, cluster):
    run_dir = work["root"] / "runs" / "broken run"
    env = {**work["env"], "SCCL_STAGE1_SBATCH": "--export=ALL,SCCL_ENV=/no-such-env"}
    proc = run(["bash", str(SLURM / "pipeline.sh"), "--wait", str(run_dir),
                "--config", work["config"], *work["tail"]], work, env=env)
    wait_idle(cluster)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    j1 = proc.stdout.split()[1]
    failed = (run_dir / "logs" / "FAILED").read_text()
    assert f"Stage 1 (job {j1}) failed" in failed and failed in proc.stderr
    assert "SCCL_ENV command failed: /no-such-env" in (run_dir / "logs" / f"stage1-{j1}.out").read_text()
    assert not list((run_dir / "logs").glob("stage2-*")) and not (run_dir / "stage2").exists()
    assert not list((run_dir / "logs").glob("eval-*"))  # cancelled before they ran


@pytest.mark.slurm
@pytest.mark.slow
def test_grid_arrays_and_report(work, cluster):
    runs = work["root"] / "grid runs"
    # One process and one CPU per job: the two tasks of each array run side by side.
    env = {**work["env"], "SCCL_GRID_SIMILARITY": "cosine", "SCCL_GRID_QUEUE": "8",
           "SCCL_GRID_DELAYED": "no", "SCCL_GRID_SEEDS": "42 1337", "SCCL_CPU_PROCS": "1",
           "SCCL_SBATCH_ARGS": CPU_JOB.replace("--cpus-per-task=2", "--cpus-per-task=1"),
           "SCCL_STAGE2_SBATCH": "", "SCCL_EVAL_SBATCH": ""}
    proc = run(["bash", str(SLURM / "grid.sh"), str(runs), "--config", work["config"],
                *work["tail"]], work, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "(2 runs)" in proc.stdout
    wait_idle(cluster)
    names = ["cosine-q8-d1-s42", "cosine-q8-d1-s1337"]
    for name in names:
        assert (runs / name / "eval" / "results.json").is_file(), logs(runs)
        cfg = yaml.safe_load((runs / name / "stage1" / "config.yaml").read_text())
        assert cfg["loss"]["queue_size"] == 8 and cfg["loss"]["temperature"] == 0.3
        assert cfg["run"]["seed"] == int(name.rsplit("s", 1)[1])
        assert any(p.is_symlink() for p in (runs / name / "logs").glob("stage1-*.out"))
    rep = subprocess.run([str(VENV / "bin" / "sccl-report"), str(runs)], capture_output=True,
                         text=True, timeout=120)
    assert rep.returncode == 0, rep.stderr
    (row,) = list(csv.DictReader((runs / "report.csv").open()))
    assert (row["similarity"], row["queue_size"], row["n_runs"], row["seeds"]) == \
        ("cosine", "8", "2", "42 1337")
    itw = [json.loads((runs / n / "eval" / "results.json").read_text())["sets"]["itw"]["eer"]
           for n in names]
    assert float(row["itw_mean_pct"]) == pytest.approx(100 * np.mean(itw), abs=1e-3)
    assert (runs / "itw_vs_queue.png").stat().st_size > 1000 and (runs / "report.md").is_file()


@pytest.mark.slurm
@pytest.mark.slow
def test_preempted_stage1_ends_like_an_uninterrupted_run(work, chain):
    """`sbatch slurm/stage1.sh` as a user would (default log in the submit directory, linked
    into RUN/logs), uninterrupted: the same weights as the chain's preempted Stage 1."""
    assert chain["proc"].returncode == 0, "the preempted chain run failed"
    run_dir = work["root"] / "runs" / "uninterrupted run"
    submit = work["root"] / "submit dir"
    submit.mkdir()
    proc = run(["sbatch", "--wait", "--parsable", *CPU_JOB.split(), str(SLURM / "stage1.sh"),
                str(run_dir), "--config", work["config"]], work, cwd=submit)
    job = proc.stdout.strip()
    (log,) = submit.glob(f"slurm-sccl-stage1-{job}.out")
    text = log.read_text()
    assert proc.returncode == 0, text
    assert (run_dir / "logs" / f"stage1-{job}.out").resolve() == log.resolve()
    assert "Stage 1 finished" in text and "requeue" not in text
    for which in ("best", "last"):
        ref = load_file(run_dir / "stage1" / which / "model.safetensors")
        got = load_file(chain["run"] / "stage1" / which / "model.safetensors")
        assert ref.keys() == got.keys()
        for key in ref:
            np.testing.assert_array_equal(got[key], ref[key], err_msg=f"{which}/{key}")


PROBE_USR1 = """import os, signal, sys, time
from pathlib import Path
out = Path(sys.argv[1]); rank = os.environ.get("RANK", "0")
def stop(*_):
    (out / f"got{rank}").write_text("USR1")
    sys.exit(0)
signal.signal(signal.SIGUSR1, stop)
(out / f"ready{rank}").write_text("")
time.sleep(60)
sys.exit(3)
"""

PROBE_JOB = """#!/bin/bash
set -euo pipefail
source "$SCCL_ROOT/slurm/common.sh"
rc=0
sccl_launch "$PROBE" "$OUT" || rc=$?
echo "launch rc=$rc"
"""


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.parametrize("how", [[], ["--batch"]], ids=["to-steps", "to-batch-shell"])
def test_usr1_reaches_the_training_processes(work, cluster, how, tmp_path):
    """SIGUSR1 (what `#SBATCH --signal=USR1@120` sends to the job's steps, or --batch to the
    batch shell only, which forwards it) reaches both training processes under srun +
    `accelerate launch`, whose launcher survives it (it ignores USR1)."""
    out = tmp_path / "probe out"
    out.mkdir()
    (tmp_path / "probe.py").write_text(PROBE_USR1)
    (tmp_path / "job.sh").write_text(PROBE_JOB)
    env = {**work["env"], "SCCL_ROOT": str(REPO), "SCCL_CPU_PROCS": "2",
           "PROBE": str(tmp_path / "probe.py"), "OUT": str(out),
           "PATH": f"{VENV / 'bin'}:{work['env']['PATH']}"}
    job = run(["sbatch", "--parsable", *CPU_JOB.split(), f"--output={out}/job.out",
               str(tmp_path / "job.sh")], work, env=env).stdout.strip()
    deadline = time.monotonic() + 120
    while len(list(out.glob("ready*"))) < 2:
        assert time.monotonic() < deadline and cluster.queue(), (out / "job.out").read_text()
        time.sleep(0.5)
    cluster.run(["scancel", "--signal=USR1", *how, job])
    wait_idle(cluster, 120)
    text = (out / "job.out").read_text()
    assert sorted(p.name for p in out.glob("got*")) == ["got0", "got1"], text
    assert "launch rc=0" in text


@pytest.mark.slurm
@pytest.mark.slow
def test_processes_from_the_gpu_allocation(work, cluster):
    if not cluster.gpus:
        pytest.skip("no fake GPUs here (mknod not permitted)")
    run_dir = work["root"] / "runs" / "gpu dry run"
    run_dir.parent.mkdir(exist_ok=True)  # the job's log goes next to it (Slurm makes no dirs)
    env = {**work["env"], "SCCL_LAUNCH_DRYRUN": "1", "SCCL_LAUNCH": "deepspeed3"}
    proc = run(["sbatch", "--wait", "--parsable", "--gpus-per-node=2", "--cpus-per-task=1",
                f"--output={run_dir}-%j.out", str(SLURM / "stage1.sh"), str(run_dir),
                "--config", "c.yaml", "--model.encoder", "xlsr-1b"], work, env=env)
    job = proc.stdout.strip()
    text = Path(f"{run_dir}-{job}.out").read_text()
    assert proc.returncode == 0, text
    (line,) = [x for x in text.splitlines() if x.startswith("sccl-node ")]
    prefix, opts, rest = parse_launch(line)
    assert prefix.startswith("sccl-node 0/")
    assert (opts["num_processes"], opts["num_machines"], opts["machine_rank"]) == ("2", "1", "0")
    assert opts["main_process_port"] == str(20000 + int(job) % 12000)
    assert opts["config_file"].endswith("launch/deepspeed_zero3.yaml")  # a bigger encoder
    assert rest[1:] == ["--run.dir", str(run_dir), "--run.resume", "auto", "--config", "c.yaml",
                        "--model.encoder", "xlsr-1b"]
    # eval.sh checks its inputs before launching anything
    empty = work["root"] / "runs" / "empty run"
    proc = run(["sbatch", "--wait", "--parsable", *CPU_JOB.split(), f"--output={empty}-%j.out",
                str(SLURM / "eval.sh"), str(empty)], work)
    text = Path(f"{empty}-{proc.stdout.strip()}.out").read_text()
    assert proc.returncode == 2 and "error: evaluation needs Stage 2" in text
    assert "stage2/meta.json is missing" in text
