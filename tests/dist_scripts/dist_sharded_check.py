"""Checks of a sharded model on 2 processes: what each rank holds, the finite-weights guard,
the gathered export and (FSDP2) head-only clipping, against a full replica in each process.

Run by tests/test_sharded.py:
    accelerate launch --config_file launch/fsdp.yaml (or deepspeed_zero3.yaml) \
        tests/dist_scripts/dist_sharded_check.py OUT_DIR
Each rank writes OUT_DIR/rank<r>.json: {check name: value}.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

from sccl import accel, dist
from sccl.checkpoint import NonFiniteLossError, TrainerState, check_finite_weights
from sccl.fileio import atomic_write_json
from sccl.model import ModelConfig, SupConModel
from sccl.optim import OptimConfig, clip_gradients


def head_clipping(acc, model, replica) -> dict:
    """One backward of the same batch on every rank, then clip_scope head: the norm must be
    the replica's head gradient norm (ranks' equal gradients average to themselves). Under
    bf16 (FSDP2's mixed-precision policy) also the dtypes the sharded gradients are reduced
    and kept in, which must be fp32."""
    wave = torch.randn(2, 16000, generator=torch.Generator().manual_seed(3))
    for m in (model, replica):
        m.eval()  # no dropout: the same function on both
        m(wave).sum().backward()
    grad_dtypes = sorted({str(p.grad.dtype) for p in model.parameters() if p.grad is not None})
    norm = clip_gradients(acc, model, OptimConfig(grad_clip=1e-3, clip_scope="head"))
    want = torch.nn.utils.get_total_norm([p.grad for p in replica.head.parameters()])
    policy = getattr(acc.state.fsdp_plugin, "mixed_precision_policy", None)
    return {"head_norm": norm, "head_norm_replica": float(want), "grad_dtypes": grad_dtypes,
            "mixed_precision": acc.mixed_precision,
            "policy": None if policy is None else [str(policy.param_dtype),
                                                   str(policy.reduce_dtype)]}


def main() -> None:
    acc = accel.build_accelerator()
    deepspeed = acc.distributed_type == "DEEPSPEED"
    accel.seed_all(0)
    model = SupConModel(ModelConfig(encoder="tiny", proj_dim=8, head_dropout=0.0))
    replica = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    accel.fill_deepspeed_auto(acc, 2, 1.0, model.encoder.config.hidden_size)
    model, optimizer = acc.prepare(model, optimizer)
    result = {"distributed_type": str(acc.distributed_type),
              "total": sum(p.numel() for p in replica.parameters()),
              "held": sum(p.numel() for p in accel.local_shards(model))}

    state = acc.get_state_dict(model)  # what export_weights writes: every rank calls it
    if acc.is_main_process:
        want = replica.state_dict()
        result["export_equal"] = state.keys() == want.keys() and all(
            torch.equal(state[k].float(), want[k].float()) for k in want)
    if not deepspeed:  # ZeRO-3 clips inside its own step (clip_scope head is refused there)
        result |= head_clipping(acc, model, replica)

    if acc.process_index == 1:  # a NaN in one shard of one rank only
        with torch.no_grad():
            next(s for s in accel.local_shards(model) if s.numel()).view(-1)[0] = float("nan")
    try:
        check_finite_weights(model, acc.device, TrainerState())
        result["nan_found"] = False
    except NonFiniteLossError:
        result["nan_found"] = True
    atomic_write_json(Path(sys.argv[1]) / f"rank{dist.get_rank()}.json", result)
    acc.wait_for_everyone()


if __name__ == "__main__":
    main()
    accel.exit_process(0)
