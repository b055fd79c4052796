"""sccl.debug: the queue checksum that the distributed tests compare across ranks."""

from __future__ import annotations

import torch

from sccl.debug import queue_checksum
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
