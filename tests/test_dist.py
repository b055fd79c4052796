"""sccl.dist in a single process (no process group), and on 2 CPU processes (gloo) via
``accelerate launch`` running tests/dist_scripts/dist_core_check.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sccl import dist

SCRIPT = Path(__file__).parent / "dist_scripts" / "dist_core_check.py"
ROOT = Path(__file__).resolve().parents[1]


def test_single_process_identities():
    assert (dist.get_world_size(), dist.get_rank()) == (1, 0)
    assert dist.is_main_process() and not dist.is_dist()
    dist.barrier()
    t = torch.randn(3, 2, requires_grad=True)
    assert dist.all_gather_with_grad(t) is t
    gathered = dist.all_gather_no_grad(t)
    assert torch.equal(gathered, t) and not gathered.requires_grad
    assert dist.gather_sizes(3) == [3]
    assert dist.broadcast_object({"a": 1}) == {"a": 1}


def test_single_process_reductions_copy():
    t = torch.tensor([1.0, 2.0])
    s = dist.all_reduce_sum(t)
    s += 1
    assert t.tolist() == [1.0, 2.0] and dist.all_reduce_mean(t).tolist() == [1.0, 2.0]
    with pytest.raises(TypeError):
        dist.all_reduce_mean(torch.tensor([1, 2]))


def test_gather_argument_checks():
    with pytest.raises(ValueError, match="0-d"):
        dist.all_gather_no_grad(torch.tensor(1.0))
    with pytest.raises(ValueError, match="do not match"):
        dist.all_gather_no_grad(torch.zeros(2, 2), sizes=[3])


def test_contrast_helpers_single_process():
    z = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 1])
    cz, cl, offset = dist.gather_for_contrast(z, labels)
    assert cz is z and torch.equal(cl, labels) and offset == 0
    per = torch.tensor([1.0, 2.0, 0.0, 3.0], requires_grad=True)
    loss, value = dist.global_valid_mean(per, torch.tensor([True, True, False, True]))
    assert loss.item() == pytest.approx(2.0) and value.item() == pytest.approx(2.0)
    loss, _ = dist.global_valid_mean(per * 0, torch.zeros(4, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.dist
@pytest.mark.timeout(180)
def test_two_processes(tmp_path):
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
        "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        str(SCRIPT), str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    for rank, res in enumerate(results):
        assert (res["rank"], res["world"], res["is_dist"]) == (rank, 2, True)
        assert res["main"] == (rank == 0)
        assert res["sizes"] == [3, 5] and res["gather_shape"] == [8, 4]
        assert res["gather_no_grad_ok"] and res["gather_labels_ok"]
        assert res["gather_with_grad_values_ok"] and res["gather_with_grad_grad_ok"]
        assert res["queue_fill"] == 16
        assert res["queue_equal_rank0"] and res["queue_equal_reference"]
        assert (res["reduce_sum"], res["reduce_mean"]) == (3.0, 1.5)
        assert res["broadcast"] == {"from": 0}
        losses = {k: v for k, v in res.items() if k.startswith("loss_")}
        assert len(losses) == 4
        for name, check in losses.items():
            assert check["offset_ok"] and check["loss_ok"], (rank, name, check)
            assert check["grad_ok"], (rank, name, check)
    # both ranks report the same global loss
    for name in (k for k in results[0] if k.startswith("loss_")):
        assert results[0][name]["loss"] == pytest.approx(results[1][name]["loss"], rel=1e-6)
