"""Supervised contrastive loss (SupCon, "L_out") with cosine or angular similarity.

For anchor i with positives P(i) (same label, j != i) and contrast set A(i) (every j != i,
plus queue entries):

    l_i = -(1/|P(i)|) * sum_{p in P(i)} [ s_ip/T - log sum_{a in A(i)} exp(s_ia/T) ]

and the loss is the mean of l_i over anchors with |P(i)| >= 1 (no base-temperature factor).
Cosine: s = z_i . z_j; angular: s = 1 - 2*acos(clamp(z_i . z_j, -1+1e-7, 1-1e-7))/pi.

Pure functions of tensors: no process group, no model. The distributed "gathered batch"
option only needs the caller to pass the gathered batch (see ``supcon_loss_terms``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

SIMILARITIES = ("cosine", "angular")
# acos has an infinite slope at +-1: clamping inside (-1, 1) keeps gradients finite for
# duplicate (cos = 1) and antipodal (cos = -1) pairs. 1e-7 is representable next to 1 in fp32.
_ACOS_EPS = 1e-7
_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def pairwise_similarity(a: torch.Tensor, b: torch.Tensor, similarity: str) -> torch.Tensor:
    """Similarity of every row of ``a`` (N, D) with every row of ``b`` (M, D) -> (N, M).

    Inputs are expected L2-normalised and fp32 (the caller casts)."""
    cos = a @ b.T  # (N, M)
    if similarity == "cosine":
        return cos
    theta = torch.acos(cos.clamp(-1.0 + _ACOS_EPS, 1.0 - _ACOS_EPS))
    return 1.0 - 2.0 * theta / math.pi


def _check_pair(name: str, z: torch.Tensor | None, labels: torch.Tensor | None, dim: int) -> None:
    """Loud checks for an optional (embeddings, labels) pair: both or neither, shapes, dtypes."""
    if (z is None) != (labels is None):
        raise ValueError(f"{name}_z and {name}_labels must be given together")
    if z is None:
        return
    if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != dim:
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(f"{name}_z must be a (N, {dim}) tensor, got {shape}")
    if not z.is_floating_point():
        raise TypeError(f"{name}_z must be floating point, got {z.dtype}")
    if not isinstance(labels, torch.Tensor) or labels.shape != (z.shape[0],):
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"{name}_labels must have shape ({z.shape[0]},), got {shape}")
    if labels.dtype not in _INT_DTYPES:
        raise TypeError(f"{name}_labels must be an integer tensor, got {labels.dtype}")


def _check_args(z, labels, temperature, similarity, anchor_offset, contrast_z, contrast_labels):
    if not isinstance(z, torch.Tensor) or z.dim() != 2:
        raise ValueError(f"z must be a (B, D) tensor, got {getattr(z, 'shape', type(z))}")
    if not z.is_floating_point():
        raise TypeError(f"z must be floating point, got {z.dtype}")
    if not isinstance(labels, torch.Tensor) or labels.shape != (z.shape[0],):
        raise ValueError(
            f"labels must have shape ({z.shape[0]},), got {getattr(labels, 'shape', None)}"
        )
    if labels.dtype not in _INT_DTYPES:
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not (math.isfinite(temperature) and temperature > 0)
    ):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    _check_pair("contrast", contrast_z, contrast_labels, z.shape[1])
    if contrast_z is None:
        if anchor_offset != 0:
            raise ValueError("anchor_offset is only meaningful together with contrast_z")
        return
    b, m = z.shape[0], contrast_z.shape[0]
    if not isinstance(anchor_offset, int) or anchor_offset < 0 or anchor_offset + b > m:
        raise ValueError(
            f"anchor_offset={anchor_offset!r} with B={b} does not fit contrast_z of {m} rows"
        )
    if not torch.equal(
        contrast_labels[anchor_offset : anchor_offset + b].to(labels.device), labels
    ):
        raise ValueError(
            "contrast_labels[anchor_offset:anchor_offset+B] must equal labels: the anchors must "
            "be the local slice of the gathered batch (wrong offset or rank order?)"
        )


def _part_terms(logits, contrast, positive):
    """Per-anchor pieces of one block of the contrast set.

    logits (B, K) fp32 = s/T; contrast, positive (B, K) bool.
    Returns (log-sum-exp over the contrast entries (B,), sum of positive logits (B,),
    number of positives (B,)). Masked entries get the most negative finite fp32 value rather
    than -inf: a row with an empty contrast set then stays finite in value and gradient
    (logsumexp of all -inf rows back-propagates NaN even when multiplied by zero)."""
    masked = logits.masked_fill(~contrast, torch.finfo(logits.dtype).min)
    lse = torch.logsumexp(masked, dim=1)  # (B,)
    pos_sum = (logits * positive).sum(dim=1)  # (B,)
    return lse, pos_sum, positive.sum(dim=1)


def _batch_terms(logits, labels, key_labels, anchor_offset):
    """``_part_terms`` for the batch block: logits (B, M); anchor i is key anchor_offset + i,
    excluded from its own contrast and positive sets."""
    same = labels[:, None] == key_labels[None, :]  # (B, M)
    rows = torch.arange(labels.shape[0], device=labels.device)
    not_self = torch.ones_like(same)
    not_self[rows, rows + anchor_offset] = False
    return _part_terms(logits, not_self, same & not_self)


def supcon_loss_terms(
    z: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    similarity: str = "cosine",
    queue_z: torch.Tensor | None = None,
    queue_labels: torch.Tensor | None = None,
    queue_positives: bool = False,
    contrast_z: torch.Tensor | None = None,
    contrast_labels: torch.Tensor | None = None,
    anchor_offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor SupCon losses ``l_i`` (B,) fp32 and the mask of valid anchors (B,) bool.

    z (B, D) L2-normalised anchors (any float dtype; cast to fp32 here, autocast off);
    labels (B,) int. Invalid anchors (no positive) get loss 0 and ``valid`` False, so
    ``per.sum() / valid.sum()`` is the batch loss and sums of both over ranks give exact
    global means.

    queue_z (Q, D), queue_labels (Q,): extra contrast entries for every anchor, detached here
    (no gradient ever flows into the queue). queue_positives=False: a queue entry with the
    anchor's label is left out of that anchor's contrast set entirely (negatives only);
    True: it is a positive as well (XBM style).

    Gathered-batch mode: contrast_z (M, D), contrast_labels (M,) hold the batch of every rank
    concatenated in rank order, and the anchors are rows [anchor_offset, anchor_offset + B)
    of it (checked on the labels). Those rows of contrast_z are ignored and replaced by z, so
    the local slice always carries the local gradient; the other rows are used as given:
    from ``dist.all_gather_no_grad`` they are constants, from ``dist.all_gather_with_grad``
    their gradient goes back to the rank that owns them. Each anchor contrasts with all M-1
    other rows (plus the queue). Only the with-grad form makes N ranks x B train exactly like
    one rank x N*B; see ``dist.gather_for_contrast`` and ``dist.global_valid_mean``.
    """
    _check_args(z, labels, temperature, similarity, anchor_offset, contrast_z, contrast_labels)
    _check_pair("queue", queue_z, queue_labels, z.shape[1])
    # Autocast would run the matmuls in bf16/fp16 again whatever the input dtype.
    with torch.autocast(device_type=z.device.type, enabled=False):
        anchors = z.float()  # (B, D)
        keys, key_labels = anchors, labels
        if contrast_z is not None:
            c, end = contrast_z.float(), anchor_offset + z.shape[0]
            keys = torch.cat([c[:anchor_offset], anchors, c[end:]])  # (M, D)
            key_labels = contrast_labels.to(labels.device)
        sim = pairwise_similarity(anchors, keys, similarity)  # (B, M)
        lse, pos_sum, n_pos = _batch_terms(sim / temperature, labels, key_labels, anchor_offset)
        if queue_z is not None and queue_z.shape[0] > 0:
            q_sim = pairwise_similarity(anchors, queue_z.detach().float(), similarity)  # (B, Q)
            q_same = labels[:, None] == queue_labels.to(labels.device)[None, :]  # (B, Q)
            q_contrast = torch.ones_like(q_same) if queue_positives else ~q_same
            q_pos = q_same if queue_positives else torch.zeros_like(q_same)
            q_lse, q_pos_sum, q_n = _part_terms(q_sim / temperature, q_contrast, q_pos)
            lse = torch.logaddexp(lse, q_lse)
            pos_sum, n_pos = pos_sum + q_pos_sum, n_pos + q_n
        valid = n_pos > 0  # (B,)
        per_anchor = lse - pos_sum / n_pos.clamp_min(1)  # (B,)
        return torch.where(valid, per_anchor, torch.zeros_like(per_anchor)), valid


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, **options: Any) -> torch.Tensor:
    """SupCon loss: mean of ``l_i`` over the anchors that have a positive -> fp32 scalar.

    z (B, D) L2-normalised, labels (B,) int; keyword ``options`` (temperature required) as
    ``supcon_loss_terms``, which checks them. A batch in which no anchor has a positive gives
    0, still connected to the graph (zero gradients), so every rank can call backward. The loss itself needs no host synchronisation; with
    ``contrast_z`` the argument check does one (``torch.equal`` of the anchors' labels)."""
    per_anchor, valid = supcon_loss_terms(z, labels, **options)
    return per_anchor.sum() / valid.sum().clamp_min(1)
