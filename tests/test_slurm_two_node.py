"""slurm/*.sh on a real two-node Slurm (tests/slurm_cluster.py's TwoNodeCluster): node1 and
node2 are two slurmd, each in its own network, UTS and mount namespace on this machine, so
`sbatch --nodes=2` really starts one launcher per node and the ranks meet over the nodes'
own addresses (MASTER_ADDR = node1, resolved on the nodes to its NodeAddr), not loopback.

Select alone with `pytest -k two_node`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.corpus import la19_shards
from tests.slurm_cluster import two_node_cluster

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "slurm"
VENV = Path(sys.executable).parent.parent
TIMEOUT = 300  # the chain and the reference run are wrapped in `timeout`


def tiny_config(root: Path) -> tuple[Path, dict[str, Path]]:
    """Tiny Stage 1: 8 samples per epoch in global batches of 4 over 2 ranks, the gathered
    batch and a queue from the first step, so the weights depend on both ranks' data."""
    shards = la19_shards(root / "data")
    cfg = {"data": {"train_shards": str(shards["train"]), "dev_shards": str(shards["dev"]),
                    "crop_seconds": 0.5, "eval_seconds": 0.5, "batch_size": 4,
                    "num_workers": 0, "shuffle_buffer": 8, "rawboost": False,
                    "train_crop": "random"},
           "model": {"encoder": "tiny", "proj_dim": 16},
           "optim": {"epochs": 2, "patience": 0},
           "loss": {"gather_batch": True, "queue_size": 8, "queue_start_epoch": 1},
           "run": {"log_every": 1, "progress": False, "tensorboard": False}}
    config = root / "tiny config.yaml"
    config.write_text(yaml.safe_dump(cfg))
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


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.dist
def test_two_node_chain_equals_one_node(tmp_path):
    """`pipeline.sh --wait` with --nodes=2 for every job: Stage 1 (sbatch slurm/stage1.sh)
    ends with the weights and queue of a one-node 2-process run, bit for bit; Stage 2 and
    evaluation also run on both nodes, and evaluation scores every trial exactly once."""
    root = tmp_path / "shared fs"  # the run directory every node sees
    config, shards = tiny_config(root)
    run = root / "two nodes"
    with two_node_cluster(tmp_path / "slurm") as cluster:
        # The one-node 2-process reference (stage1.sh outside Slurm) runs meanwhile.
        ref_env = {**job_env(os.environ, 2), "SCCL_MASTER_PORT": str(free_port())}
        ref = subprocess.Popen(["timeout", str(TIMEOUT), "bash", str(SLURM / "stage1.sh"),
                                str(root / "one node"), "--config", str(config)],
                               env=ref_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
        env = {**job_env(cluster.env, 1), "SCCL_POLL_SECONDS": "2",
               "SCCL_SBATCH_ARGS": "--nodes=2 --time=00:10:00"}
        proc = subprocess.run(
            ["timeout", str(TIMEOUT), "bash", str(SLURM / "pipeline.sh"), "--wait", str(run),
             "--config", str(config),
             "--stage2-args", "--embed.seconds", "0.5", "--linear.max_epochs", "5",
             "--eval-args", "--eval.sets", f"la19={shards['dev']}", "--embed.seconds", "0.5",
             "--eval.bootstrap", "10", "--eval.tsne_points", "0"],
            env=env, cwd=root, capture_output=True, text=True)
        ref_out = ref.communicate()[0]
    logs = {p.name.split("-")[0]: p.read_text() for p in (run / "logs").glob("*-*.out")}
    assert proc.returncode == 0, proc.stderr + "\n".join(logs.values())
    assert ref.returncode == 0, ref_out
    for stage in ("stage1", "stage2", "eval"):
        assert "on node[1-2] (2 node(s))" in logs[stage], logs[stage]
        assert "  world size 2  " in logs[stage], logs[stage]  # 1 process on each node
    got, want = final_state(run), final_state(root / "one node")
    assert got.keys() == want.keys() and int(got["queue/fill"]) == 8  # the queue is full
    for key in want:  # gloo's 2-rank reductions are the same on loopback and across nodes
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)
    protocol = shards["corpus"] / "LA/ASVspoof2019_LA_cm_protocols/ASVspoof2019.LA.cm.dev.trl.txt"
    want_ids = sorted(line.split()[1] for line in protocol.read_text().splitlines())
    assert sorted(trial_ids(run / "eval" / "scores" / "la19.txt")) == want_ids
