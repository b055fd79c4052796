"""slurm/*.sh on a real two-node Slurm (tests/slurm_cluster.py's TwoNodeCluster): node1 and
node2 are two slurmd, each in its own network, UTS and mount namespace on this machine, so
`sbatch --nodes=2` really starts one launcher per node and the ranks meet over the nodes'
own addresses (MASTER_ADDR = node1, resolved on the nodes to its NodeAddr), not loopback.

Select alone with `pytest -k two_node`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.corpus import la19_shards, slurm_stage1_config
from tests.slurm_cluster import two_node_cluster

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "slurm"
VENV = Path(sys.executable).parent.parent
TIMEOUT = 300  # the chain and the reference run are wrapped in `timeout`
# A test-only hook (the directory goes on the jobs' PYTHONPATH): with SCCL_TEST_HOLD=DIR:S,...
# every rank holds after optimizer step S until DIR/release-S exists, announced by
# DIR/held-S-RANK, so that a signal or a hang lands at a known step however fast training is.
# It wraps sccl.debug.after_step, which the trainer calls after every optimizer step, as that
# module is first imported; sccl itself is unchanged.
HOLD_HOOK = '''import importlib.abc, importlib.util, os, sys, time
from pathlib import Path
def hold(step):
    where, steps = os.environ["SCCL_TEST_HOLD"].rsplit(":", 1)
    release = Path(where) / f"release-{step}"
    if str(step) in steps.split(",") and not release.exists():
        (Path(where) / f"held-{step}-{os.environ.get('RANK', '0')}").write_text("")
        while not release.exists():
            time.sleep(0.1)
class Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "sccl.debug":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module
        def exec_module(module):
            load(module)
            after_step = module.after_step
            def held(run, step_ok, log_now, step, *rest):
                out = after_step(run, step_ok, log_now, step, *rest)
                hold(step)
                return out
            module.after_step = held
        spec.loader.exec_module = exec_module
        return spec
if os.environ.get("SCCL_TEST_HOLD"):
    sys.meta_path.insert(0, Finder())
'''


def tiny_config(root: Path) -> tuple[Path, dict[str, Path]]:
    """Tiny Stage 1: 8 samples per epoch in global batches of 4 over 2 ranks, the gathered
    batch and a queue from the first step, so the weights depend on both ranks' data."""
    shards = la19_shards(root / "data")
    config = slurm_stage1_config(root / "tiny config.yaml", shards,
                                 optim={"epochs": 2, "patience": 0},
                                 loss={"gather_batch": True, "queue_size": 8,
                                       "queue_start_epoch": 1})
    return config, shards


def job_env(base: dict[str, str], procs: int) -> dict[str, str]:
    env = {k: v for k, v in base.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    env.update(SCCL_ENV=str(VENV), SCCL_LAUNCH="cpu", SCCL_CPU_PROCS=str(procs),
               SCCL_ROOT=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return env


def final_state(run: Path) -> dict[str, torch.Tensor]:
    """The exported weights (last/, best/) and the newest checkpoint's queue."""
    stage1 = run / "stage1"
    out = {f"{w}/{k}": v for w in ("last", "best")
           for k, v in load_file(stage1 / w / "model.safetensors").items()}
    ckpt = sorted((stage1 / "checkpoints").iterdir())[-1]
    queue = torch.load(ckpt / "queue.pt", weights_only=True)
    out.update({f"queue/{k}": torch.as_tensor(v) for k, v in queue.items()})  # z, labels, ptr
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trial_ids(score_file: Path) -> list[str]:
    return [line.split()[0] for line in score_file.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory) -> dict:
    """One two-node cluster for the module, the tiny config, and the one-node 2-process
    reference Stage 1 (stage1.sh outside Slurm), started at once and run meanwhile."""
    tmp = tmp_path_factory.mktemp("two_nodes")  # slurm.conf paths take no spaces
    root = tmp / "shared fs"  # the run directory every node sees
    config, shards = tiny_config(root)
    with two_node_cluster(tmp / "slurm") as cluster:
        ref_env = {**job_env(os.environ, 2), "SCCL_MASTER_PORT": str(free_port())}
        ref = subprocess.Popen(["timeout", str(TIMEOUT), "bash", str(SLURM / "stage1.sh"),
                                str(root / "one node"), "--config", str(config)],
                               env=ref_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
        yield {"cluster": cluster, "root": root, "config": config, "shards": shards, "ref": ref}
        if ref.returncode is None:  # a failed test never waited for it
            ref.kill()
            ref.communicate()


def reference(two_nodes: dict) -> dict[str, torch.Tensor]:
    """The one-node reference's final weights and queue (waits for it once)."""
    if "want" not in two_nodes:
        out = two_nodes["ref"].communicate()[0]
        assert two_nodes["ref"].returncode == 0, out
        two_nodes["want"] = final_state(two_nodes["root"] / "one node")
    return two_nodes["want"]


def assert_same_end(run: Path, two_nodes: dict) -> None:
    got, want = final_state(run), reference(two_nodes)
    assert got.keys() == want.keys() and int(got["queue/fill"]) == 8  # the queue is full
    for key in want:  # gloo's 2-rank reductions are the same on loopback and across nodes
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.dist
def test_two_node_chain_equals_one_node(two_nodes):
    """`pipeline.sh --wait` with --nodes=2 for every job: Stage 1 (sbatch slurm/stage1.sh)
    ends with the weights and queue of a one-node 2-process run, bit for bit; Stage 2 and
    evaluation also run on both nodes, and evaluation scores every trial exactly once."""
    root, shards, run = two_nodes["root"], two_nodes["shards"], two_nodes["root"] / "two nodes"
    env = {**job_env(two_nodes["cluster"].env, 1), "SCCL_POLL_SECONDS": "2",
           "SCCL_SBATCH_ARGS": "--nodes=2 --time=00:10:00"}
    proc = subprocess.run(
        ["timeout", str(TIMEOUT), "bash", str(SLURM / "pipeline.sh"), "--wait", str(run),
         "--config", str(two_nodes["config"]),
         "--stage2-args", "--embed.seconds", "0.5", "--linear.max_epochs", "5",
         "--eval-args", "--eval.sets", f"la19={shards['dev']}", "--embed.seconds", "0.5",
         "--eval.bootstrap", "10", "--eval.tsne_points", "0"],
        env=env, cwd=root, capture_output=True, text=True)
    logs = {p.name.split("-")[0]: p.read_text() for p in (run / "logs").glob("*-*.out")}
    assert proc.returncode == 0, proc.stderr + "\n".join(logs.values())
    for stage in ("stage1", "stage2", "eval"):
        assert "on node[1-2] (2 node(s))" in logs[stage], logs[stage]
        assert "  world size 2  " in logs[stage], logs[stage]  # 1 process on each node
    assert_same_end(run, two_nodes)
    protocol = shards["corpus"] / "LA/ASVspoof2019_LA_cm_protocols/ASVspoof2019.LA.cm.dev.trl.txt"
    want_ids = sorted(line.split()[1] for line in protocol.read_text().splitlines())
    assert sorted(trial_ids(run / "eval" / "scores" / "la19.txt")) == want_ids


def wait_until(done, what: str, log: Path, timeout: float = 120) -> float:
    """Poll `done()` every 0.2 s; the seconds it took, or fail with the job's log."""
    t0 = time.monotonic()
    while not done():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"{what}: not within {timeout:.0f} s\n"
                        + (log.read_text() if log.exists() else f"({log} missing)"))
        time.sleep(0.2)
    return time.monotonic() - t0


def freeze_job_processes(namespace: str) -> int:
    """SIGSTOP every process of the node's job steps (not slurmd or slurmstepd): the node
    hangs with its sockets open, so its peers hear neither data nor a closed connection, as
    with a frozen machine. Returns how many were stopped."""
    ip = shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin")
    pids = subprocess.run([ip, "netns", "pids", namespace], capture_output=True, text=True,
                          check=True).stdout.split()
    stopped = 0
    for pid in map(int, pids):
        with contextlib.suppress(OSError):  # gone meanwhile
            if Path(f"/proc/{pid}/comm").read_text().strip() not in ("slurmd", "slurmstepd"):
                os.kill(pid, signal.SIGSTOP)
                stopped += 1
    return stopped


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.dist
def test_two_node_requeue_and_a_hung_node_end_like_one_node(two_nodes, tmp_path):
    """One 2-node Stage 1 lineage (sbatch slurm/stage1.sh), ranks held at known steps by a
    test hook: `scontrol requeue` at step 1 (Slurm SIGTERMs every process on both nodes)
    checkpoints once and the requeued job resumes; at step 3 (mid epoch 2) every job process
    on node2 freezes, so node1's rank waits in a collective: run.collective_timeout_s (10 s
    here) ends the job within a bound (torch's default would hold it for 30 min), nothing
    half-written is left, and a resubmission resumes from the epoch-1 checkpoint and ends with
    the uninterrupted one-node run's weights and queue."""
    cluster, root = two_nodes["cluster"], two_nodes["root"]
    run, hold = root / "preempted", tmp_path / "hold"
    hold.mkdir()
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(HOLD_HOOK)
    env = {**job_env(cluster.env, 1), "PYTHONPATH": str(tmp_path / "hook"),
           "SCCL_TEST_HOLD": f"{hold}:1,3"}
    sbatch = ["sbatch", "--parsable", "--nodes=2", "--gpus-per-node=0", "--cpus-per-task=1",
              "--time=00:10:00", f"--output={root}/preempted-%j.out", str(SLURM / "stage1.sh"),
              str(run), "--config", str(two_nodes["config"]), "--run.collective_timeout_s", "10"]
    job = cluster.run(sbatch, env=env, cwd=root).stdout.strip()
    log = root / f"preempted-{job}.out"
    held = lambda step: len(list(hold.glob(f"held-{step}-*"))) == 2  # noqa: E731
    wait_until(lambda: held(1), "both ranks at step 1", log)
    cluster.run(["scontrol", "requeue", job])
    # both launchers report Slurm's SIGTERM; only then may the ranks go on to step 2
    wait_until(lambda: log.read_text().count("Received 15 death signal") == 2, "SIGTERM", log, 30)
    (hold / "release-1").write_text("")
    wait_until(lambda: held(3), "the requeued job at step 3", log)
    assert freeze_job_processes(cluster.network.namespaces[1]) >= 2  # launcher and rank
    (hold / "release-3").write_text("")
    took = wait_until(lambda: not cluster.queue(), "the job's end after node2 froze", log, 90)
    text = log.read_text()
    # one stop, at step 1: one line per node (Accelerate prints on each node's local main)
    assert re.findall(r"stopped by a signal at step (\d+)", text) == ["1", "1"], text
    assert f"resuming from {run}/stage1/checkpoints/step-00000001" in text, text
    # 10 s in the collective, then srun --kill-on-bad-exit ends node2's processes
    assert "Timed out waiting 10000ms" in text and "Stage 1 failed (exit" in text, text
    assert took < 60, (took, text)
    ckpts = sorted((run / "stage1" / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["step-00000001", "step-00000002"], ckpts
    assert all((p / "manifest.json").is_file() for p in ckpts)
    proc = cluster.run(["timeout", str(TIMEOUT), *sbatch[:1], "--wait", *sbatch[1:]],
                       env={**env, "SCCL_TEST_HOLD": ""}, cwd=root, timeout=TIMEOUT + 10)
    text = (root / f"preempted-{proc.stdout.strip()}.out").read_text()
    assert f"resuming from {run}/stage1/checkpoints/step-00000002" in text, text
    assert "Stage 1 finished" in text, text
    assert_same_end(run, two_nodes)
