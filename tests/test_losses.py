"""supcon_loss against independent implementations: a per-anchor loop written from the
docs/study.md formula, and the SupContrast (Khosla et al.) recipe re-derived here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sccl.losses import supcon_loss, supcon_loss_terms

SIMS = ("cosine", "angular")


def _emb(n, d=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1).to(dtype)


def _sim(a, b, similarity):
    """Scalar similarity of two vectors, in float64."""
    c = torch.dot(a, b)
    if similarity == "cosine":
        return c
    return 1 - 2 * torch.acos(c.clamp(-1 + 1e-7, 1 - 1e-7)) / math.pi


def naive_supcon(z, labels, t, similarity, qz=None, ql=None, qpos=False):
    """One anchor at a time, one pair at a time, straight from the formula (float64)."""
    z = z.double()
    losses = []
    for i in range(len(z)):
        contrast, positives = [], []
        for j in range(len(z)):
            if j != i:
                s = _sim(z[i], z[j], similarity) / t
                contrast.append(s)
                if labels[j] == labels[i]:
                    positives.append(s)
        for k in range(0 if qz is None else len(qz)):
            same = bool(ql[k] == labels[i])
            if same and not qpos:
                continue  # same-label queue entries are left out entirely
            s = _sim(z[i], qz[k].double(), similarity) / t
            contrast.append(s)
            if same:
                positives.append(s)
        if positives:
            log_denom = torch.logsumexp(torch.stack(contrast), 0)
            losses.append(-sum(p - log_denom for p in positives) / len(positives))
    return torch.stack(losses).mean() if losses else z.sum() * 0


def hobbitlong_supcon(features, labels, temperature, base_temperature):
    """SupContrast recipe, contrast_mode='all': features (B, V, D) -> scalar."""
    b, v, _ = features.shape
    contrast = torch.cat(torch.unbind(features, dim=1))  # (V*B, D), view-major
    logits = contrast @ contrast.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()  # stability only
    same = (labels[:, None] == labels[None, :]).float().repeat(v, v)
    not_self = 1 - torch.eye(b * v)
    same = same * not_self
    log_prob = logits - torch.log((torch.exp(logits) * not_self).sum(1, keepdim=True))
    mean_log_prob_pos = (same * log_prob).sum(1) / same.sum(1)
    return (-(temperature / base_temperature) * mean_log_prob_pos).mean()


LAYOUTS = {
    "binary": [0, 1, 0, 1, 1, 0, 0, 1],
    "singleton": [0, 0, 1, 2, 2, 2, 3, 1],  # anchor 6 has no positive
    "one_class": [4, 4, 4, 4, 4],
}


@pytest.mark.parametrize("similarity", SIMS)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("queue", [None, "neg", "pos"])
def test_matches_naive_loop(similarity, layout, queue):
    labels = torch.tensor(LAYOUTS[layout])
    t = 0.3 if similarity == "cosine" else 0.07
    z = _emb(len(labels), seed=1).requires_grad_()
    kw, nkw = {}, {}
    if queue is not None:
        qz, ql = _emb(11, seed=2), torch.tensor([0, 1, 2, 3, 5, 0, 1, 4, 4, 3, 7])
        kw = dict(queue_z=qz, queue_labels=ql, queue_positives=queue == "pos")
        nkw = dict(qz=qz, ql=ql, qpos=queue == "pos")
    loss = supcon_loss(z, labels, temperature=t, similarity=similarity, **kw)
    z64 = z.detach().double().requires_grad_()
    ref = naive_supcon(z64, labels, t, similarity, **nkw)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(z.grad, z64.grad.float(), rtol=1e-4, atol=1e-5)


def test_singleton_anchor_skipped_not_nan():
    labels = torch.tensor(LAYOUTS["singleton"])
    per, valid = supcon_loss_terms(_emb(8), labels, temperature=0.1)
    assert valid.tolist() == [True] * 6 + [False, True]
    assert per[6].item() == 0.0 and torch.isfinite(per).all()


def test_queue_positive_makes_singleton_valid():
    labels = torch.tensor([0, 0, 9])
    qz, ql = _emb(2, seed=3), torch.tensor([9, 1])
    _, neg = supcon_loss_terms(_emb(3), labels, temperature=0.1, queue_z=qz, queue_labels=ql)
    _, pos = supcon_loss_terms(
        _emb(3), labels, temperature=0.1, queue_z=qz, queue_labels=ql, queue_positives=True
    )
    assert neg.tolist() == [True, True, False] and pos.tolist() == [True, True, True]


@pytest.mark.parametrize("similarity", SIMS)
def test_no_positive_batch_is_zero_with_graph(similarity):
    z = _emb(4).requires_grad_()
    loss = supcon_loss(z, torch.tensor([0, 1, 2, 3]), temperature=0.1, similarity=similarity)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_single_anchor_and_empty_batch():
    z = _emb(1).requires_grad_()
    supcon_loss(z, torch.tensor([0]), temperature=0.1).backward()  # empty contrast set
    assert torch.isfinite(z.grad).all()
    empty = torch.zeros(0, 8, requires_grad=True)
    loss = supcon_loss(empty, torch.zeros(0, dtype=torch.long), temperature=0.1)
    assert loss.item() == 0.0 and loss.requires_grad


def test_empty_queue_equals_no_queue():
    z, labels = _emb(6), torch.tensor([0, 1, 0, 1, 2, 2])
    a = supcon_loss(z, labels, temperature=0.2)
    b = supcon_loss(
        z, labels, temperature=0.2, queue_z=torch.zeros(0, 8), queue_labels=torch.zeros(0).long()
    )
    assert a.item() == b.item()


@pytest.mark.parametrize("views", [1, 2])
def test_matches_supcontrast_recipe_cosine(views):
    b, t = 6, 0.3
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    feats = _emb(b * views, seed=4).reshape(b, views, 8)
    ref = hobbitlong_supcon(feats, labels, t, base_temperature=t)
    flat = torch.cat(torch.unbind(feats, dim=1))  # same view-major order as the recipe
    ours = supcon_loss(flat, labels.repeat(views), temperature=t)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.parametrize("similarity", SIMS)
def test_bf16_input_computed_in_fp32(similarity):
    z, labels = _emb(16, d=32, seed=5), torch.tensor([0, 1] * 8)
    t = 0.3 if similarity == "cosine" else 0.07
    zb = z.bfloat16()
    loss_b = supcon_loss(zb, labels, temperature=t, similarity=similarity)
    assert loss_b.dtype == torch.float32
    # exactly the fp32 computation on the upcast input, even under bf16 autocast
    assert (
        loss_b.item()
        == supcon_loss(zb.float(), labels, temperature=t, similarity=similarity).item()
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_ac = supcon_loss(zb, labels, temperature=t, similarity=similarity)
    assert loss_ac.dtype == torch.float32 and loss_ac.item() == loss_b.item()
    ref = supcon_loss(z, labels, temperature=t, similarity=similarity).item()
    assert loss_b.item() == pytest.approx(ref, rel=2e-2)


@pytest.mark.parametrize("similarity", SIMS)
@pytest.mark.parametrize("queue_positives", [False, True])
def test_gradients_finite_for_duplicates_and_antipodes(similarity, queue_positives):
    base = _emb(3, seed=6)
    z = torch.cat([base, base, -base]).requires_grad_()  # cos = +1 and -1 pairs
    labels = torch.tensor([0, 1, 0, 0, 1, 0, 1, 0, 1])
    loss = supcon_loss(
        z,
        labels,
        temperature=0.07,
        similarity=similarity,
        queue_z=torch.cat([base, -base]),
        queue_labels=torch.tensor([0, 1, 0, 1, 0, 1]),
        queue_positives=queue_positives,
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    assert z.grad.abs().sum() > 0


@pytest.mark.parametrize("similarity", SIMS)
@pytest.mark.parametrize("split", [4, 3])
@pytest.mark.parametrize("with_queue", [False, True])
def test_gathered_batch_mode_equals_full_batch(similarity, split, with_queue):
    labels = torch.tensor([0, 1, 0, 1, 2, 0, 1, 3])  # label 3: an anchor with no positive
    kw = {}
    if with_queue:
        kw = dict(queue_z=_emb(5, seed=8), queue_labels=torch.tensor([0, 1, 2, 3, 1]))
    zf = _emb(8, seed=7).requires_grad_()
    full = supcon_loss(zf, labels, temperature=0.1, similarity=similarity, **kw)
    full.backward()

    zs = zf.detach().clone().requires_grad_()
    total, count = 0.0, 0
    for lo, hi in ((0, split), (split, 8)):
        per, valid = supcon_loss_terms(
            zs[lo:hi], labels[lo:hi], temperature=0.1, similarity=similarity,
            contrast_z=zs, contrast_labels=labels, anchor_offset=lo, **kw,
        )  # fmt: skip
        total, count = total + per.sum(), count + valid.sum()
    mean = total / count
    mean.backward()
    assert mean.item() == pytest.approx(full.item(), rel=1e-6)
    torch.testing.assert_close(zs.grad, zf.grad, rtol=1e-5, atol=1e-6)


def test_gathered_mode_replaces_local_rows():
    z, labels = _emb(4, seed=9), torch.tensor([0, 1, 0, 1])
    junk = torch.cat([torch.full((2, 8), 7.0), z[2:]])  # local rows of contrast_z are ignored
    kw = dict(temperature=0.2, contrast_labels=labels, anchor_offset=0)
    a = supcon_loss(z[:2], labels[:2], contrast_z=junk, **kw)
    b = supcon_loss(z[:2], labels[:2], contrast_z=z, **kw)
    assert a.item() == b.item()


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(z=torch.zeros(4)), ValueError, "z must be a"),
        (dict(z=torch.zeros(4, 8).long()), TypeError, "floating point"),
        (dict(labels=torch.zeros(3).long()), ValueError, "labels must have shape"),
        (dict(labels=torch.zeros(4)), TypeError, "integer"),
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(temperature=float("nan")), ValueError, "temperature"),
        (dict(similarity="dot"), ValueError, "similarity"),
        (dict(queue_z=torch.zeros(2, 8)), ValueError, "together"),
        (dict(queue_z=torch.zeros(2, 5), queue_labels=torch.zeros(2).long()), ValueError, "queue_z"),
        (dict(queue_z=torch.zeros(2, 8), queue_labels=torch.zeros(3).long()), ValueError, "queue_labels"),
        (dict(anchor_offset=1), ValueError, "anchor_offset"),
        (dict(contrast_z=torch.zeros(6, 8), contrast_labels=torch.zeros(6).long(), anchor_offset=3), ValueError, "does not fit"),
        (dict(contrast_z=torch.zeros(6, 8), contrast_labels=torch.ones(6).long(), anchor_offset=0), ValueError, "must equal labels"),
    ],
)  # fmt: skip
def test_argument_checks(kwargs, err, match):
    args = dict(z=torch.zeros(4, 8), labels=torch.zeros(4).long(), temperature=0.1)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        supcon_loss(args.pop("z"), args.pop("labels"), **args)
