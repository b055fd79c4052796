"""Stage 1's debug aids, kept out of the training loop, which calls ``after_step`` once per
optimizer step: ``run.stop_after_steps`` (a preemption that only rank 0 sees) and
``run.rank_checksums`` (every rank's queue and weight checksums and parameter element counts
in the log lines; the queue's gather keeps the queues equal and DDP the weights, and under
ZeRO-3 / FSDP2 the counts show the sharding, which the distributed tests check)."""

from __future__ import annotations

import hashlib
import os
import signal

import torch

from sccl import accel, dist
from sccl.config import RunConfig


def queue_checksum(queue_state: dict | None) -> str:
    """Short hash of a queue's content and pointers (to compare queues across ranks)."""
    if queue_state is None:
        return "none"
    h = hashlib.sha256()
    for key in ("ptr", "fill"):
        h.update(str(queue_state[key]).encode())
    h.update(queue_state["z"].numpy().tobytes())
    h.update(queue_state["labels"].numpy().tobytes())
    return h.hexdigest()[:16]


def rank_checksums(queue, model, device: torch.device) -> dict[str, list]:
    """Every rank's queue hash, weights fingerprint (the sum of the parameter elements it
    holds) and count of those elements, in rank order (a collective). Under DDP and ZeRO-2
    the fingerprints are equal; under ZeRO-3 and FSDP2 each rank holds a shard, so they add
    up to the full model's sum and the counts to its size."""
    digest = int(queue_checksum(queue.state_dict())[:13], 16)  # 52 bits: exact in float64
    shards = accel.local_shards(model)
    weight_sum = sum(float(p.detach().double().sum()) for p in shards)
    elements = sum(p.numel() for p in shards)
    mine = torch.tensor([[float(digest), weight_sum, float(elements)]], dtype=torch.float64,
                        device=device)
    rows = dist.all_gather_no_grad(mine).tolist()  # (world, 3)
    return {"queue_checksums": [f"{int(q):013x}" for q, _, _ in rows],
            "weight_checksums": [f"{w:.17g}" for _, w, _ in rows],
            "param_elements": [int(n) for _, _, n in rows]}


def after_step(run: RunConfig, step_ok: bool, log_now: bool, global_step: int, accelerator,
               queue, model) -> dict[str, list[str]]:
    """The debug aids after an optimizer step (every rank calls it); returns the fields to
    add to this step's log line (none unless run.rank_checksums and a log step)."""
    if step_ok and accelerator.process_index == 0 and global_step == run.stop_after_steps:
        os.kill(os.getpid(), signal.SIGTERM)  # the handler only sets the stop flag
    if log_now and run.rank_checksums:
        return rank_checksums(queue, model, accelerator.device)
    return {}
