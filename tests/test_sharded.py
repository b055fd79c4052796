"""Sharded Stage 1 on 2 CPU processes (gloo): ZeRO-3 (launch/deepspeed_zero3.yaml) and FSDP2
(launch/fsdp.yaml) against one DDP run (launch/cpu_2proc.yaml) of the same config, in fp32,
with the queue and the gathered batch on and clipping over every parameter (the one scope
DeepSpeed can do).

Each sharded run is preempted at step 3 (SIGTERM to rank 0, mid epoch 2, after best/ and last/
of epoch 1 were exported) and resumed; its losses, dev losses and exported weights must be
DDP's within float tolerance. The tolerance (1e-5) is 50 times the largest difference
measured between the strategies (2e-7 on the weights) and far below what a resume that lost
the optimizer moments, the dropout RNG or the queue produces (measured under DDP by breaking
each in turn: the final weights move by 5e-3, 3e-3 and 4e-3), so the one resumed run per
strategy also checks that resuming is exact (measured: equal to the uninterrupted sharded
run to the last bit under both).
Runs reuse the helpers of tests/test_train_supcon.py. tests/dist_scripts/dist_sharded_check.py
checks the pieces on a prepared model against a full replica in each process."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from sccl.model import SupConModel
from tests.test_train_supcon import (
    REPO,
    check_ok,
    command,
    corpus,  # noqa: F401  (session fixture)
    free_port,
    log_lines,
    run,
    tiny_config,
    weights,
)

pytestmark = [pytest.mark.slow, pytest.mark.dist]
ATOL = 1e-5
LAUNCHES = [pytest.param("deepspeed_zero3.yaml", id="zero3"), pytest.param("fsdp.yaml", id="fsdp2")]


@pytest.mark.parametrize("launch", LAUNCHES)
def test_sharded_model_pieces_on_two_processes(tmp_path, launch):
    if launch.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    bf16 = ["--mixed_precision", "bf16"] if launch == "fsdp.yaml" else []  # its default on GPUs
    proc = run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(REPO / "launch" / launch), "--main_process_port", free_port(), *bf16,
                str(REPO / "tests" / "dist_scripts" / "dist_sharded_check.py"), str(tmp_path)])
    check_ok(proc)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    total = ranks[0]["total"]
    assert sum(r["held"] for r in ranks) == total  # the shards cover the model once
    assert all(0.45 * total < r["held"] < 0.55 * total for r in ranks), ranks
    assert ranks[0]["export_equal"]  # the gathered full state dict is the replica's
    assert all(r["nan_found"] for r in ranks)  # a NaN in one shard of rank 1 stops every rank
    if launch == "fsdp.yaml":  # head-only clipping of DTensor gradient shards, in bf16:
        for r in ranks:  # bf16 compute, gradients reduced and kept in fp32
            assert r["mixed_precision"] == "bf16"
            assert r["policy"] == ["torch.bfloat16", "torch.float32"]
            assert r["grad_dtypes"] == ["torch.float32"]
            assert r["head_norm"] == pytest.approx(r["head_norm_replica"], rel=2e-2)
            assert r["head_norm"] != pytest.approx(r["head_norm_replica"], rel=1e-7)  # bf16 ran


@pytest.fixture(scope="module")
def ddp_reference(corpus, tmp_path_factory):  # noqa: F811
    """The config and its uninterrupted DDP run."""
    tmp = tmp_path_factory.mktemp("sharded")
    cfg = tiny_config(tmp, corpus, optim={"grad_clip": 1.0, "clip_scope": "all"},
                      loss={"queue_size": 12, "gather_batch": True}, run={"rank_checksums": True})
    ddp = tmp / "ddp"
    check_ok(run(command(cfg, ddp, launch="cpu_2proc.yaml")))
    return tmp, cfg, ddp


@pytest.mark.parametrize(("launch", "kind", "sharded_files"), [
    ("deepspeed_zero3.yaml", "DEEPSPEED", ("pytorch_model/zero_pp_rank_0_mp_rank_00_optim_states.pt",
                                           "pytorch_model/zero_pp_rank_1_mp_rank_00_optim_states.pt")),
    ("fsdp.yaml", "FSDP", ("pytorch_model_fsdp_0/__0_0.distcp", "pytorch_model_fsdp_0/__1_0.distcp",
                           "optimizer_0/__0_0.distcp", "optimizer_0/__1_0.distcp")),
], ids=["zero3", "fsdp2"])
def test_sharded_run_matches_ddp_and_resumes(ddp_reference, launch, kind, sharded_files):
    if kind == "DEEPSPEED":
        pytest.importorskip("deepspeed")
    tmp, cfg, ddp = ddp_reference
    cut = tmp / kind.lower()
    stopped = run(command(cfg, cut, "--run.stop_after_steps", "3", launch=launch), timeout=300)
    check_ok(stopped)
    assert "stopped by a signal at step 3" in stopped.stdout
    stage = cut / "stage1"
    info = json.loads((stage / "run_info.json").read_text())
    assert info["distributed_type"] == f"DistributedType.{kind}" and info["world_size"] == 2
    ckpt = stage / "checkpoints" / "step-00000003"
    assert all((ckpt / f).is_file() for f in sharded_files), sorted(ckpt.rglob("*"))
    resumed = run(command(cfg, cut, launch=launch), timeout=300)
    check_ok(resumed)
    assert "resuming from" in resumed.stdout

    steps, epochs = log_lines(cut)
    ref_steps, ref_epochs = log_lines(ddp)
    assert [s["global_step"] for s in steps] == [1, 2, 3, 4]
    assert [s["queue_fill"] for s in steps] == [4, 8, 12, 12]
    for key in ("loss", "grad_norm"):
        assert [s[key] for s in steps] == pytest.approx([s[key] for s in ref_steps], abs=ATOL)
    assert [e["dev_loss"] for e in epochs] == pytest.approx([e["dev_loss"] for e in ref_epochs],
                                                            abs=ATOL)
    # Sharded: each rank holds about half of the elements, and the shards add up to the model
    # (to its weights too: the ranks' partial sums add up to DDP's replica sum).
    total = sum(p.numel() for p in SupConModel.from_pretrained(stage / "last").parameters())
    for s, ref in zip(steps, ref_steps, strict=True):
        assert all(0.45 * total < n < 0.55 * total for n in s["param_elements"]), s
        assert sum(s["param_elements"]) == total and ref["param_elements"] == [total, total]
        assert len(set(s["queue_checksums"])) == 1
        assert sum(map(float, s["weight_checksums"])) == pytest.approx(
            float(ref["weight_checksums"][0]), abs=1e-3)
    # best/ (epoch 1, before the stop) and last/ (after the resume): full weights, DDP's
    for which in ("best", "last"):
        SupConModel.from_pretrained(stage / which)
        got, want = weights(cut, which), weights(ddp, which)
        assert got.keys() == want.keys()
        for name in want:
            assert got[name].dtype == torch.float32, name
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=ATOL, msg=name)
