"""Global cross-batch queue of past embeddings (negatives, or positives too, for SupCon).

A plain object kept outside the wrapped model (not a DDP buffer, never broadcast or
averaged): every rank enqueues the same gathered batch in the same order, so every rank
holds the same queue. Typical step (the study's queue: docs/study.md "Queue"; the contract:
docs/design.md):

    if queue_active(epoch, step, size=Q, start_epoch=6, start_step=0):
        qz, ql = queue.get()                      # before the forward: the batch is never in it
        loss = supcon_loss(z, y, ..., queue_z=qz, queue_labels=ql)
    ...backward, optimizer step...
    if active: queue.enqueue(all_gather_no_grad(z), all_gather_no_grad(y))

``get`` returns views of the buffers: enqueue only after backward (autograd would raise if
the buffers it saved were overwritten before it ran).
"""

from __future__ import annotations

from typing import Any

import torch


def queue_active(
    epoch: int, step: int, *, size: int, start_epoch: int = 1, start_step: int = 0
) -> bool:
    """Whether the queue is used (read and filled) at this step.

    epoch is 1-based as in docs/study.md (the study's delayed queue, "created empty at epoch 6",
    is start_epoch 6; 1 = from the start); step is the global optimizer step about to run (0 = the first step of
    the run); start_step 0 = no step condition. Both conditions must hold (AND); size 0 turns
    the queue off. The queue fills only while active, so it starts empty."""
    for name, value, low in (
        ("epoch", epoch, 1),
        ("step", step, 0),
        ("size", size, 0),
        ("start_epoch", start_epoch, 1),
        ("start_step", start_step, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"queue_active: {name} must be an int >= {low}, got {value!r}")
    return size > 0 and epoch >= start_epoch and step >= start_step


class EmbeddingQueue:
    """FIFO ring buffer of ``size`` embeddings (float32, detached) and their labels (long).

    Zero-initialised; ``ptr`` is the next slot to write, ``fill`` how many slots hold data.
    Slots fill from 0 upward, so the filled part is always ``[:fill]``. size 0 = always empty.
    """

    def __init__(self, size: int, dim: int, device: torch.device | str = "cpu") -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"queue size must be an int >= 0, got {size!r}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"queue dim must be an int >= 1, got {dim!r}")
        self.size, self.dim = size, dim
        self.z = torch.zeros(size, dim, dtype=torch.float32, device=device)  # (size, D)
        self.labels = torch.zeros(size, dtype=torch.long, device=device)  # (size,)
        self.ptr = 0
        self.fill = 0

    @property
    def device(self) -> torch.device:
        return self.z.device

    def __len__(self) -> int:
        return self.fill

    def to(self, device: torch.device | str) -> EmbeddingQueue:
        """Move the buffers (in place) and return self."""
        self.z, self.labels = self.z.to(device), self.labels.to(device)
        return self

    def reset(self) -> None:
        """Empty the queue (buffers zeroed, pointer back to slot 0)."""
        self.z.zero_()
        self.labels.zero_()
        self.ptr = self.fill = 0

    def get(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(z (fill, D) float32, labels (fill,) long): the filled part only, as views."""
        return self.z[: self.fill], self.labels[: self.fill]

    @torch.no_grad()
    def enqueue(self, z: torch.Tensor, labels: torch.Tensor) -> None:
        """Write a batch (N, D), (N,) (already gathered from every rank) over the oldest slots.

        Wraps around the end; a batch larger than the queue keeps its newest ``size`` rows,
        leaving the pointer where writing all N rows one by one would have left it."""
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"enqueue: z must be (N, {self.dim}), got {tuple(z.shape)}")
        if labels.shape != (z.shape[0],):
            raise ValueError(f"enqueue: labels must be ({z.shape[0]},), got {tuple(labels.shape)}")
        if labels.is_floating_point() or labels.is_complex():
            raise TypeError(f"enqueue: labels must be integers, got {labels.dtype}")
        if not bool(torch.isfinite(z).all()):
            raise ValueError("enqueue: z holds NaN/inf; it would poison every later loss")
        n = z.shape[0]
        if self.size == 0 or n == 0:
            return
        keep = min(n, self.size)
        # Rows older than the newest `keep` would be overwritten within this call: skip them.
        start = (self.ptr + n - keep) % self.size
        slots = (start + torch.arange(keep, device=self.device)) % self.size  # (keep,)
        self.z[slots] = z[n - keep :].detach().to(self.device, torch.float32)
        self.labels[slots] = labels[n - keep :].to(self.device, torch.long)
        self.ptr = (self.ptr + n) % self.size
        self.fill = min(self.fill + n, self.size)

    def state_dict(self) -> dict[str, Any]:
        """CPU copies of the buffers plus pointer, fill and shape (for checkpoints)."""
        return {
            "size": self.size,
            "dim": self.dim,
            "ptr": self.ptr,
            "fill": self.fill,
            "z": self.z.detach().cpu().clone(),
            "labels": self.labels.detach().cpu().clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict``; the saved size and dim must match this queue's."""
        missing = {"size", "dim", "ptr", "fill", "z", "labels"} - set(state)
        if missing:
            raise KeyError(f"queue state is missing keys {sorted(missing)}")
        if (state["size"], state["dim"]) != (self.size, self.dim):
            raise ValueError(
                f"queue state has size={state['size']} dim={state['dim']} but this queue has "
                f"size={self.size} dim={self.dim} (queue_size or the projection dim changed?)"
            )
        ptr, fill = int(state["ptr"]), int(state["fill"])
        if not (0 <= fill <= self.size and 0 <= ptr < max(self.size, 1)):
            raise ValueError(f"queue state has ptr={ptr} fill={fill} outside size {self.size}")
        if fill < self.size and ptr != fill:
            raise ValueError(f"queue state is inconsistent: ptr={ptr} but fill={fill} < size")
        if tuple(state["z"].shape) != (self.size, self.dim) or tuple(state["labels"].shape) != (
            self.size,
        ):
            raise ValueError("queue state tensors do not have shapes (size, dim) and (size,)")
        self.z.copy_(state["z"])
        self.labels.copy_(state["labels"])
        self.ptr, self.fill = ptr, fill
