"""Checks of sccl.dist, the queue and the gathered-batch loss on 2 processes.

Run by tests/test_dist.py:
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 ... \
        tests/dist_scripts/dist_core_check.py OUT_DIR
Each rank writes OUT_DIR/rank<r>.json: {check name: true/false or a value}. Every reference
is computed locally from data that every rank regenerates from the same seeds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import PartialState

from sccl import dist
from sccl.fileio import atomic_write_json
from sccl.losses import supcon_loss, supcon_loss_terms
from sccl.memory import EmbeddingQueue

SIZES = [3, 5]  # uneven per-rank first dimensions


def _data(seed: int, n: int, d: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def check_gather_no_grad(rank: int) -> dict:
    parts = [_data(10 + r, n, 4) for r, n in enumerate(SIZES)]
    labels = [torch.arange(n) + 100 * r for r, n in enumerate(SIZES)]
    got = dist.all_gather_no_grad(parts[rank])
    got_labels = dist.all_gather_no_grad(labels[rank])
    return {
        "gather_shape": list(got.shape),
        "gather_no_grad_ok": torch.equal(got, torch.cat(parts)) and not got.requires_grad,
        "gather_labels_ok": torch.equal(got_labels, torch.cat(labels)),
        "sizes": dist.gather_sizes(SIZES[rank]),
    }


def check_gather_with_grad(rank: int) -> dict:
    xs = [_data(20 + r, n, 4) for r, n in enumerate(SIZES)]
    weights = [_data(30 + r, sum(SIZES), 4) for r in range(2)]  # each rank's own loss weights
    x = xs[rank].clone().requires_grad_()
    gathered = dist.all_gather_with_grad(x)
    (gathered * weights[rank]).sum().backward()
    # Reference: one process holding everything; the loss is the sum of both ranks' losses.
    full = torch.cat(xs).requires_grad_()
    sum((full * w).sum() for w in weights).backward()
    start = sum(SIZES[:rank])
    return {
        "gather_with_grad_values_ok": torch.equal(gathered.detach(), torch.cat(xs)),
        "gather_with_grad_grad_ok": torch.allclose(x.grad, full.grad[start : start + SIZES[rank]]),
    }


def check_queues(rank: int) -> dict:
    queue, reference = EmbeddingQueue(16, 4), EmbeddingQueue(16, 4)
    for step in range(6):
        sizes = [(step + r) % 3 + 2 for r in range(2)]  # differ between ranks and steps
        zs = [F.normalize(_data(1000 * step + r, n, 4), dim=1) for r, n in enumerate(sizes)]
        ys = [torch.arange(n) % 2 for n in sizes]
        queue.enqueue(dist.all_gather_no_grad(zs[rank]), dist.all_gather_no_grad(ys[rank]))
        reference.enqueue(torch.cat(zs), torch.cat(ys))
    mine = queue.state_dict()
    theirs = dist.broadcast_object(mine, src=0)
    same = all(
        torch.equal(mine[k], theirs[k]) if torch.is_tensor(mine[k]) else mine[k] == theirs[k]
        for k in mine
    )
    ref = reference.state_dict()
    return {
        "queue_fill": len(queue),
        "queue_equal_rank0": same,
        "queue_equal_reference": all(
            torch.equal(mine[k], ref[k]) if torch.is_tensor(mine[k]) else mine[k] == ref[k]
            for k in mine
        ),
    }


def check_gathered_loss(rank: int, world: int, sizes: list[int], similarity: str) -> dict:
    """2 ranks x local batch (gathered-batch mode) vs 1 process x the whole batch."""
    total = sum(sizes)
    x = _data(7, total, 6)
    labels = torch.tensor([0, 1, 0, 1, 2, 1, 0, 3])[:total]  # label 3: no positive
    queue = dict(
        queue_z=F.normalize(_data(8, 5, 4), dim=1), queue_labels=torch.tensor([0, 1, 2, 3, 1])
    )
    temperature = 0.1 if similarity == "cosine" else 0.07
    w_init = _data(9, 6, 4)
    start = sum(sizes[:rank])

    w = w_init.clone().requires_grad_()  # stands for the DDP-wrapped model
    z = F.normalize(x[start : start + sizes[rank]] @ w, dim=1)
    contrast_z, contrast_labels, offset = dist.gather_for_contrast(
        z, labels[start : start + sizes[rank]]
    )
    per, valid = supcon_loss_terms(
        z, labels[start : start + sizes[rank]], temperature=temperature, similarity=similarity,
        contrast_z=contrast_z, contrast_labels=contrast_labels, anchor_offset=offset, **queue,
    )  # fmt: skip
    loss, value = dist.global_valid_mean(per, valid)
    loss.backward()
    grad = dist.all_reduce_mean(w.grad)  # what DDP does to the parameter gradients

    w_ref = w_init.clone().requires_grad_()
    z_ref = F.normalize(x @ w_ref, dim=1)
    ref = supcon_loss(z_ref, labels, temperature=temperature, similarity=similarity, **queue)
    ref.backward()
    return {
        "offset_ok": offset == start,
        "loss": value.item(),
        "loss_ref": ref.item(),
        "loss_ok": torch.allclose(value, ref.detach(), rtol=1e-6),
        "grad_ok": torch.allclose(grad, w_ref.grad, rtol=1e-5, atol=1e-7),
        "grad_max_abs_diff": (grad - w_ref.grad).abs().max().item(),
    }


def main() -> None:
    state = PartialState()  # initialises the gloo process group under accelerate launch
    rank, world = dist.get_rank(), dist.get_world_size()
    result = {
        "rank": rank,
        "world": world,
        "is_dist": dist.is_dist(),
        "main": dist.is_main_process(),
    }
    result |= check_gather_no_grad(rank)
    result |= check_gather_with_grad(rank)
    result |= check_queues(rank)
    for sizes in ([4, 4], SIZES):
        for similarity in ("cosine", "angular"):
            key = f"loss_{similarity}_{sizes[0]}x{sizes[1]}"
            result[key] = check_gathered_loss(rank, world, sizes, similarity)
    result["reduce_sum"] = dist.all_reduce_sum(torch.tensor([rank + 1.0])).item()
    result["reduce_mean"] = dist.all_reduce_mean(torch.tensor([rank + 1.0])).item()
    result["broadcast"] = dist.broadcast_object({"from": rank})
    dist.barrier()
    atomic_write_json(Path(sys.argv[1]) / f"rank{rank}.json", result)
    state.destroy_process_group()


if __name__ == "__main__":
    main()
