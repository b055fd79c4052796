"""Every collective of the project, each one a no-op (or identity) in a single process.

Without an initialised process group, or with a world of one, the functions return their
input (gathers and reductions), 1 / 0 (world size / rank) or do nothing (barrier), so the
same code runs in tests, on one GPU and under ``accelerate launch``.

Limits, as with any collective: every rank must call the same functions in the same order
with tensors of the same dtype and trailing shape (only the first dimension of a gather may
differ), on the device the backend expects (CUDA for NCCL, CPU for gloo).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def is_dist() -> bool:
    """True when a process group is initialised and has more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_rank(group: Any = None) -> int:
    """This process's rank in ``group`` (default: the world)."""
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def gather_sizes(n: int, device: torch.device | str = "cpu") -> list[int]:
    """First-dimension size of every rank, in rank order: [n] in a single process.

    ``device`` must suit the backend (the tensor being gathered's device is right)."""
    if not is_dist():
        return [int(n)]
    mine = torch.tensor([int(n)], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(mine) for _ in range(get_world_size())]
    dist.all_gather(sizes, mine)
    return [int(s.item()) for s in sizes]


def _gather_padded(t: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenate every rank's ``t`` in rank order; rows beyond each rank's size dropped.

    all_gather needs equal shapes, so each rank pads to the largest size first."""
    longest = max(sizes)
    if longest == 0:
        return t.new_empty((0, *t.shape[1:]))
    padded = t.new_zeros((longest, *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


def _check_sizes(t: torch.Tensor, sizes: list[int] | None) -> list[int]:
    """Validate ``t`` (and ``sizes`` when given) on every path, single process included."""
    if t.dim() == 0:
        raise ValueError("gathers concatenate along dim 0: a 0-d tensor has none")
    if sizes is None:
        return gather_sizes(t.shape[0], t.device)
    if len(sizes) != get_world_size() or sizes[get_rank()] != t.shape[0]:
        raise ValueError(f"sizes {sizes} do not match this rank's {t.shape[0]} rows")
    return list(sizes)


@torch.no_grad()
def all_gather_no_grad(t: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Every rank's ``t`` (n_r, ...) concatenated in rank order -> (sum n_r, ...), no grad.

    Ranks may hold different n_r (last batch). ``sizes`` (from ``gather_sizes``) saves one
    collective when already known. Single process: ``t`` itself (detached)."""
    sizes = _check_sizes(t, sizes)
    if not is_dist():
        return t.detach()
    return _gather_padded(t.detach().contiguous(), sizes)


class _GatherWithGrad(torch.autograd.Function):
    """Forward: padded all_gather. Backward: each rank holds the gradient of its own loss
    w.r.t. the whole gathered tensor; summing those over ranks (all_reduce) and keeping this
    rank's rows gives the gradient of the sum of all ranks' losses w.r.t. the local input
    (the reduce-scatter of torch.distributed.nn.functional.all_gather, but for uneven sizes
    and on gloo). Every rank must run the backward, as with DDP."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        ctx.sizes = sizes
        return _gather_padded(t.contiguous(), sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: get_rank()])
        return grad[start : start + ctx.sizes[get_rank()]], None


def all_gather_with_grad(t: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Like ``all_gather_no_grad`` but differentiable: the gradient that any rank's loss
    puts on rows owned by rank r reaches rank r's ``t`` (summed over ranks). The local
    slice therefore keeps its gradient. Single process: ``t`` itself (graph kept)."""
    sizes = _check_sizes(t, sizes)
    if not is_dist():
        return t
    return _GatherWithGrad.apply(t, sizes)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks, as a new tensor (the input is left alone); no autograd."""
    out = t.detach().clone()
    if is_dist():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over ranks (floating point), as a new tensor; no autograd."""
    if not t.is_floating_point():
        raise TypeError(f"all_reduce_mean needs a floating point tensor, got {t.dtype}")
    return all_reduce_sum(t) / get_world_size()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank (the argument elsewhere is ignored)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_for_contrast(
    z: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Gathered-batch contrast set for ``losses.supcon_loss_terms``.

    z (B, D) local embeddings with grad, labels (B,) -> (contrast_z (M, D) with grad to
    every owner, contrast_labels (M,), anchor_offset) where M is the sum of B over ranks."""
    sizes = gather_sizes(z.shape[0], z.device)
    contrast_z = all_gather_with_grad(z, sizes)
    contrast_labels = all_gather_no_grad(labels, sizes)
    return contrast_z, contrast_labels, sum(sizes[: get_rank()])


def global_valid_mean(
    per_item: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact mean over the valid items of all ranks, shaped for DDP.

    per_item (B,) (0 where invalid), valid (B,) bool. Returns (loss to back-propagate,
    global mean for logging, detached). The first is this rank's sum divided by the global
    valid count and multiplied by the world size, because DDP (and DeepSpeed) average the
    gradients over ranks: the averaged gradient is then that of the global mean.
    A rank without valid items still returns a graph-connected value."""
    local_sum = per_item.sum()
    # one all_reduce for both numbers: (valid count, loss sum) of every rank
    stats = all_reduce_sum(torch.stack([valid.sum().to(local_sum.dtype), local_sum.detach()]))
    count = stats[0].clamp_min(1)
    return local_sum * (get_world_size() / count), stats[1] / count
