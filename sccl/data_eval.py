"""Evaluation loader: every trial of a shard directory exactly once across ranks and workers.

The samples, in manifest order, are cut into W contiguous rank ranges of N*r//W .. N*(r+1)//W;
a rank's range is cut into batches, and each loader worker takes a contiguous run of those
batches (so it reads a contiguous part of the shards once). A rank with fewer batches than the
largest share repeats its last batch with `valid` all False until every rank has the same
`len()`; an undecodable sample keeps its row (utt_id, label) with `valid` False and is counted.
A decodable trial shorter than `min_samples` (the encoder's receptive field) is padded with
silence to that length and scored, so that every trial of a protocol gets a score and the EER
stays comparable with published ones; it is counted (short_count) and named in the log. An
empty trial (0 samples) has nothing to score: it is handled as undecodable.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from sccl import audio
from sccl.data_shards import Item, ShardSequence, ShardSet, item_label, iter_wanted

log = logging.getLogger("sccl.data")


@dataclass
class EvalPlan:
    shard_set: ShardSet
    rank: int
    world_size: int
    batch_size: int  # per rank
    sample_rate: int
    crop_len: int | None  # samples kept from the start; None = whole utterances
    num_slots: int
    min_samples: int = 1  # shorter trials are padded with silence to this length

    def rank_range(self, r: int) -> tuple[int, int]:
        n = self.shard_set.num_samples
        return n * r // self.world_size, n * (r + 1) // self.world_size

    def rank_batches(self, r: int) -> int:
        lo, hi = self.rank_range(r)
        return math.ceil((hi - lo) / self.batch_size)

    @property
    def steps(self) -> int:
        return max(self.rank_batches(r) for r in range(self.world_size))

    def slot_positions(self, v: int) -> tuple[int, int]:
        """Sample positions [start, stop) of slot v: a contiguous run of this rank's batches."""
        lo, hi = self.rank_range(self.rank)
        nb = self.rank_batches(self.rank)
        b0, b1 = nb * v // self.num_slots, nb * (v + 1) // self.num_slots
        return min(lo + b0 * self.batch_size, hi), min(lo + b1 * self.batch_size, hi)

    def sequence(self) -> ShardSequence:
        return ShardSequence(self.shard_set.shards, (), shuffle=False)


def _row(plan: EvalPlan, item: Item, corrupt: list, short: list) -> tuple:
    """(wave or None, real length, label, attack, utt_id) of one trial."""
    meta = item.meta or {}
    label = item_label(item)
    row = [None, 0, int(label == "bonafide") if label else -1, str(meta.get("attack", "")),
           str(meta.get("utt_id", item.key))]
    try:
        if item.error is not None:
            raise audio.AudioDecodeError(item.error)
        row[0], row[1] = audio.head_crop(item.audio, sample_rate=plan.sample_rate,
                                         length=plan.crop_len)
        if row[1] == 0:
            raise audio.AudioDecodeError("empty audio (0 samples)")
    except audio.AudioDecodeError as err:
        corrupt.append((item.key, item.shard, str(err)))
        row[0] = None
    if row[0] is not None and row[1] < plan.min_samples:
        short.append((item.key, item.shard, row[1], "padded and scored"))
        row[0], row[1] = _pad(row[0], plan.min_samples), plan.min_samples
    return tuple(row)


def _pad(wave: torch.Tensor, length: int) -> torch.Tensor:
    """(T,) wave zero-padded to at least `length` samples (a head crop is already padded)."""
    return torch.nn.functional.pad(wave, (0, max(0, length - wave.shape[0])))


def make_eval_batch(plan: EvalPlan, items: list[Item]) -> dict:
    """Decode and collate trials; rows that fail keep their ids with valid=False."""
    corrupt: list = []
    short: list = []
    rows = [_row(plan, it, corrupt, short) for it in items]
    good = [r for r in rows if r[0] is not None]
    filler = (good[0][0], good[0][1]) if good else (
        torch.zeros(plan.crop_len or plan.sample_rate), plan.crop_len or plan.sample_rate)
    waves = [r[0] if r[0] is not None else filler[0] for r in rows]
    lengths = [r[1] if r[0] is not None else filler[1] for r in rows]
    wave, mask = audio.collate(waves, lengths, length=plan.crop_len)
    return {"wave": wave, "attention_mask": mask,
            "label": torch.tensor([r[2] for r in rows], dtype=torch.long),
            "attack": [r[3] for r in rows], "utt_id": [r[4] for r in rows],
            "valid": torch.tensor([r[0] is not None for r in rows], dtype=torch.bool),
            "_corrupt": corrupt, "_short": short, "_seen": len(rows)}


def read_items(plan: EvalPlan, start: int, stop: int):
    """Items at sample positions [start, stop) in manifest order."""
    # iter_wanted reports a shard's missing samples after its readable ones: restore the order.
    pending, want, n = {}, 0, stop - start
    for p, item in iter_wanted(plan.sequence(), start, n, set(range(n)), None):
        pending[p] = item
        while want in pending:
            yield pending.pop(want)
            want += 1


class EvalBatches(torch.utils.data.IterableDataset):
    """Yields this worker's batches of one rank's share (only real trials; no padding)."""

    def __init__(self, plan: EvalPlan):
        super().__init__()
        self.plan = plan

    def __iter__(self):
        plan, info = self.plan, torch.utils.data.get_worker_info()
        v = 0 if info is None else info.id
        start, stop = plan.slot_positions(v)
        batch: list[Item] = []
        for item in read_items(plan, start, stop):
            batch.append(item)
            if len(batch) == plan.batch_size:
                yield make_eval_batch(plan, batch)
                batch = []
        if batch:
            yield make_eval_batch(plan, batch)


def padding_batch(plan: EvalPlan, last: dict | None) -> dict:
    """A batch with valid all False: a copy of `last`, or built from the first trial."""
    if last is None:
        last = make_eval_batch(plan, list(read_items(plan, 0, 1)))
    out = {k: (v.clone() if torch.is_tensor(v) else list(v))
           for k, v in last.items() if not k.startswith("_")}
    out["valid"] = torch.zeros_like(out["valid"])
    return out
