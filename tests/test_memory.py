from __future__ import annotations

import io

import pytest
import torch

from sccl.memory import EmbeddingQueue, queue_active


def _batch(first_id, n, dim=3):
    """Rows whose every value is the row's global id, so positions can be checked."""
    ids = torch.arange(first_id, first_id + n)
    return ids[:, None].float().expand(n, dim).clone(), ids


def _fill(q, sizes):
    next_id = 0
    for n in sizes:
        q.enqueue(*_batch(next_id, n, q.dim))
        next_id += n
    return next_id


def test_new_queue_is_empty():
    q = EmbeddingQueue(8, 3)
    z, labels = q.get()
    assert len(q) == 0 and z.shape == (0, 3) and labels.shape == (0,)
    assert q.z.abs().sum() == 0 and q.z.dtype == torch.float32 and q.labels.dtype == torch.long


def test_partial_fill_returns_filled_part_in_order():
    q = EmbeddingQueue(8, 3)
    _fill(q, [2, 3])
    z, labels = q.get()
    assert len(q) == 5 and q.ptr == 5
    assert labels.tolist() == [0, 1, 2, 3, 4] and z[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_fifo_wrap_around_overwrites_oldest():
    q = EmbeddingQueue(5, 3)
    _fill(q, [3, 3])
    assert q.labels.tolist() == [5, 1, 2, 3, 4] and q.ptr == 1 and len(q) == 5
    q.enqueue(*_batch(6, 3))
    assert q.labels.tolist() == [5, 6, 7, 8, 4] and q.ptr == 4
    assert q.get()[0][:, 0].tolist() == [5, 6, 7, 8, 4]


@pytest.mark.parametrize("sizes", [[12], [3, 11], [2, 5, 7, 1, 9, 4], [7, 7, 7], [6, 0, 1]])
def test_item_k_lives_in_slot_k_mod_size(sizes):
    """Whatever the batch sizes (oversize ones included), the queue holds the newest
    min(total, size) items and item k sits in slot k % size, as writing one by one would."""
    q = EmbeddingQueue(7, 3)
    total = _fill(q, sizes)
    newest = range(max(0, total - 7), total)
    assert sorted(q.get()[1].tolist()) == list(newest)
    for k in newest:
        assert q.labels[k % 7] == k and torch.all(q.z[k % 7] == k)
    assert q.ptr == total % 7 and len(q) == min(total, 7)


def test_stores_detached_fp32_long():
    q = EmbeddingQueue(4, 3)
    z = torch.randn(2, 3, requires_grad=True)
    q.enqueue(z.bfloat16(), torch.tensor([1, 0], dtype=torch.int32))
    qz, ql = q.get()
    assert not qz.requires_grad and qz.dtype == torch.float32 and ql.dtype == torch.long
    torch.testing.assert_close(qz, z.detach().bfloat16().float())


def test_state_round_trip_and_continuation():
    a = EmbeddingQueue(6, 3)
    _fill(a, [4, 5])
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    b = EmbeddingQueue(6, 3)
    b.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert (b.ptr, len(b)) == (a.ptr, len(a))
    assert torch.equal(b.z, a.z) and torch.equal(b.labels, a.labels)
    for q in (a, b):
        q.enqueue(*_batch(100, 4))
    assert torch.equal(b.z, a.z) and torch.equal(b.labels, a.labels) and b.ptr == a.ptr


def test_state_dict_is_a_snapshot():
    q = EmbeddingQueue(4, 3)
    state = q.state_dict()
    q.enqueue(*_batch(1, 2))
    assert state["fill"] == 0 and state["z"].abs().sum() == 0


@pytest.mark.parametrize("size, dim", [(5, 3), (6, 4)])
def test_load_rejects_other_shape(size, dim):
    state = EmbeddingQueue(6, 3).state_dict()
    with pytest.raises(ValueError, match="size=6 dim=3"):
        EmbeddingQueue(size, dim).load_state_dict(state)


def test_load_rejects_bad_state():
    q = EmbeddingQueue(6, 3)
    with pytest.raises(KeyError, match="ptr"):
        q.load_state_dict({k: v for k, v in q.state_dict().items() if k != "ptr"})
    with pytest.raises(ValueError, match="inconsistent"):
        q.load_state_dict({**q.state_dict(), "ptr": 2})


def test_reset_and_to():
    q = EmbeddingQueue(4, 3)
    _fill(q, [3])
    q.reset()
    assert len(q) == 0 and q.ptr == 0 and q.labels.abs().sum() == 0
    assert q.to("meta") is q and q.device.type == "meta" and q.labels.device.type == "meta"


def test_size_zero_queue_stays_empty():
    q = EmbeddingQueue(0, 3)
    _fill(q, [4, 2])
    assert len(q) == 0 and q.get()[0].shape == (0, 3)
    EmbeddingQueue(0, 3).load_state_dict(q.state_dict())


@pytest.mark.parametrize(
    "z, labels, err",
    [
        (torch.zeros(2, 4), torch.zeros(2).long(), ValueError),
        (torch.zeros(2, 3), torch.zeros(3).long(), ValueError),
        (torch.zeros(2, 3), torch.zeros(2), TypeError),
        (torch.full((2, 3), float("nan")), torch.zeros(2).long(), ValueError),
    ],
)
def test_enqueue_checks(z, labels, err):
    with pytest.raises(err):
        EmbeddingQueue(4, 3).enqueue(z, labels)


@pytest.mark.parametrize("size, dim", [(-1, 3), (4, 0), (2.5, 3)])
def test_constructor_checks(size, dim):
    with pytest.raises(ValueError):
        EmbeddingQueue(size, dim)


def test_delayed_start_by_epoch():
    # the study: epochs 1-5 without a queue, created empty at epoch 6
    active = [queue_active(e, 0, size=4096, start_epoch=6) for e in range(1, 9)]
    assert active == [False] * 5 + [True] * 3
    assert queue_active(1, 0, size=4096, start_epoch=1)
    assert not queue_active(10, 10_000, size=0, start_epoch=1)


def test_start_step_combines_with_and():
    assert not queue_active(7, 99, size=8, start_epoch=6, start_step=100)
    assert queue_active(7, 100, size=8, start_epoch=6, start_step=100)
    assert not queue_active(5, 1_000, size=8, start_epoch=6, start_step=100)
    assert queue_active(1, 100, size=8, start_step=100)


@pytest.mark.parametrize(
    "args", [dict(epoch=0), dict(step=-1), dict(start_epoch=0), dict(size=-2), dict(epoch=1.5)]
)
def test_queue_active_checks(args):
    kw = dict(epoch=1, step=0, size=8, start_epoch=1, start_step=0) | args
    with pytest.raises(ValueError, match=next(iter(args))):
        queue_active(kw.pop("epoch"), kw.pop("step"), **kw)
