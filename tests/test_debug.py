"""sccl.debug: the queue checksum and the per-rank fields that the distributed tests compare
across ranks (one process here; 2 ranks in tests/test_train_supcon.py and tests/test_sharded.py)."""

from __future__ import annotations

import torch

from sccl.debug import queue_checksum, rank_checksums
from sccl.memory import EmbeddingQueue


def test_queue_checksum_tracks_content_and_pointer():
    q = EmbeddingQueue(4, 2)
    empty = queue_checksum(q.state_dict())
    q.enqueue(torch.ones(1, 2), torch.tensor([1]))
    one = queue_checksum(q.state_dict())
    assert empty != one and queue_checksum(None) == "none"
    q2 = EmbeddingQueue(4, 2)
    q2.enqueue(torch.ones(1, 2), torch.tensor([1]))
    assert queue_checksum(q2.state_dict()) == one


def test_rank_checksums_count_and_sum_the_parameters_a_rank_holds():
    model = torch.nn.Linear(3, 2)  # 8 elements
    with torch.no_grad():
        model.weight.fill_(0.5)
        model.bias.fill_(-1.0)
    out = rank_checksums(EmbeddingQueue(4, 2), model, torch.device("cpu"))
    assert out["param_elements"] == [8] and out["weight_checksums"] == ["1"]
    assert out["queue_checksums"] == [queue_checksum(EmbeddingQueue(4, 2).state_dict())[:13]]
