"""Worker side of the training/dev loader: whole balanced batches from two label streams.

Layout of one epoch (planned from manifest counts only, identical on every rank):
- `steps` batches per rank; a rank's batch j is produced by loader slot v = j mod K (K = the
  number of DataLoader workers, 1 without workers). torch's DataLoader returns worker results
  round-robin in order, so the rank sees batches 0, 1, 2, ... whatever the worker timing.
- Each label has an infinite sample sequence (sccl.data_shards.ShardSequence). Slots own
  consecutive ranges of it, ordered (rank, slot): slot (r, v) takes batches_of(v) * n_label
  samples. Bona fide: a shard order drawn afresh every epoch, read as a ring from a random
  start, so an epoch reads each bona fide sample at most once while its quota fits in one pass
  (exactly once when the quota equals the count), and what is left over differs every epoch.
  Spoof ranges continue where the previous epoch stopped (every spoof sample once before any
  twice).
- Inside a slot each label stream goes through a seeded shuffle buffer computed on positions
  (data_shards.buffer_order), so skipping the first batches (resume) needs no decoding, and
  shards holding only skipped samples are not opened at all.
- A sample that cannot be decoded, or is too short for the encoder (fewer real samples than
  min_samples: 0-sample clips included), is replaced by the next usable sample of the same
  stream (looked ahead, not consumed: the stream's own order is untouched, so resumed and
  uninterrupted runs agree) and reported to the main process with the batch. The batch keeps
  its shape and label balance, so every rank still takes the same steps.
- Augmentation runs on the finished batch, in the worker: RawBoost (torch, batched), then
  codecs and the telephone channel (sccl.codec_aug, per clip); each has its own seed stream from
  (seed, epoch, rank, batch), so a batch is the same whichever worker makes it, and resumed.
- Data errors raised in a worker (ShardDirError, CorruptDataError) travel to the main process
  as a batch holding only "_error", which sccl.data raises there: one clear message instead of
  the DataLoader's wrapped worker traceback.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sccl import audio, codec_aug
from sccl.data_shards import (
    CorruptDataError,
    Item,
    ShardDirError,
    ShardSequence,
    ShardSet,
    buffer_order,
    iter_wanted,
)
from sccl.rawboost import RawBoost, RawBoostConfig

_LOOKAHEAD = 64  # stream items tried as replacements for an undecodable sample
# Keep the seed streams of different uses apart.
_TAG_SHUFFLE, _TAG_BATCH, _TAG_ROTATE, _TAG_CODEC = 11, 13, 17, 19


@dataclass
class TrainPlan:
    """Everything a worker needs to produce its batches (picklable, no open files)."""

    shard_set: ShardSet
    rank: int
    world_size: int
    epoch: int
    start_step: int
    steps: int  # batches per rank this epoch
    n_bonafide: int  # per rank batch
    n_spoof: int
    num_slots: int  # K: DataLoader workers, or 1 in the main process
    seed: int
    shuffle_buffer: int
    sample_rate: int
    crop_len: int  # samples
    crop_mode: str  # "random" | "head"
    label_mode: str  # "binary" | "attack"
    attacks: list[str]  # spoof attacks, sorted: attack class k+1
    rawboost: RawBoostConfig | None = None
    codec: codec_aug.CodecConfig | None = None  # after RawBoost
    min_samples: int = 1  # fewer real samples in the crop: too short for the encoder, replaced

    def slot_batches(self, v: int) -> range:
        return range(v, self.steps, self.num_slots)

    def per_batch(self, label: str) -> int:
        return self.n_bonafide if label == "bonafide" else self.n_spoof

    def stream_range(self, label: str, v: int) -> tuple[ShardSequence, int, int, str | None,
                                                        bool]:
        """(sequence, start, sample count, label filter, mapped) of slot v's `label` stream;
        see data_shards.iter_wanted."""
        ss, per = self.shard_set, self.per_batch(label)
        before = self.rank * self.steps + sum(len(self.slot_batches(w)) for w in range(v))
        count = len(self.slot_batches(v)) * per
        n_label = ss.counts[label]
        mixed, exact = not ss.split_by_label, ss.split_by_label or ss.has_label_counts
        shards = ss.label_view(label) if mixed and exact else ss.of_label(label)
        if label == "bonafide":
            # A fresh shard order every epoch, read as a ring from a random point: the epoch's
            # quota (<= one pass) is distinct samples, and the few left over when the quota is
            # short of a pass are a different window every epoch.
            key = (self.seed, 0, self.epoch)
            rot = int(np.random.default_rng([*key, _TAG_ROTATE]).integers(n_label))
            seq = ShardSequence(shards, key, same_order=True)
            start = rot + before * per
        else:  # continue through the spoof passes epoch after epoch
            seq = ShardSequence(shards, (self.seed, 1))
            start = (self.epoch * self.steps * self.world_size + before) * per
        if not mixed:
            return seq, start, count, None, True
        if exact:  # positions count `label` samples of each shard exactly (manifest counts)
            return seq, start, count, label, True
        # Mixed shards without per-shard counts: place the start by the label's overall share
        # (approximate: local label density varies), then keep only `label` samples.
        return seq, start * ss.num_samples // n_label, count, label, False


class _Stream:
    """One label stream of one slot: items in shuffle-buffer order, with lookahead."""

    def __init__(self, plan: TrainPlan, label: str, v: int):
        per, code = plan.per_batch(label), int(label != "bonafide")
        seq, start, count, filt, mapped = plan.stream_range(label, v)
        rng = np.random.default_rng([plan.seed, plan.epoch, plan.rank, v, _TAG_SHUFFLE, code])
        order = buffer_order(count, plan.shuffle_buffer, rng)
        skip = sum(1 for j in plan.slot_batches(v) if j < plan.start_step) * per
        self.label, self.order, self.i = label, order[skip:].tolist(), 0
        self._items = iter_wanted(seq, start, count, set(self.order), filt, mapped)
        self._pending: dict[int, Item] = {}
        self.last_good: Item | None = None
        self.where = plan.shard_set.root

    def _fetch(self, pos: int) -> Item:
        while pos not in self._pending:
            try:
                p, item = next(self._items)
            except StopIteration:
                raise RuntimeError(f"{self.where}: {self.label} stream ended early") from None
            self._pending[p] = item
        return self._pending[pos]

    def pop(self) -> Item:
        item = self._fetch(self.order[self.i])
        del self._pending[self.order[self.i]]
        self.i += 1
        return item

    def peek(self, k: int) -> Item | None:
        return self._fetch(self.order[self.i + k]) if self.i + k < len(self.order) else None


def _label_of(plan: TrainPlan, item: Item, label: str) -> int:
    meta = item.meta or {}
    if plan.shard_set.split_by_label and meta.get("label", label) != label:
        raise ShardDirError(f"{plan.shard_set.root}/{item.shard}: sample {item.key} is labelled "
                            f"{meta.get('label')!r} in a {label} shard")
    if plan.label_mode == "binary":
        return int(label == "bonafide")
    if label == "bonafide":
        return 0
    attack = meta.get("attack")
    if attack not in plan.attacks:
        raise ShardDirError(f"{plan.shard_set.root}/{item.shard}: sample {item.key} has attack "
                            f"{attack!r}, not among the training attacks {plan.attacks}")
    return 1 + plan.attacks.index(attack)


class _TooShort(audio.AudioDecodeError):
    """Decodable, but fewer real samples than the encoder needs."""

    def __init__(self, samples: int):
        super().__init__(f"{samples} samples")
        self.samples = samples


def _decode(plan: TrainPlan, item: Item, u: float, out: torch.Tensor) -> int:
    """Decode item's crop into `out` (crop_len,); returns its real samples (>= min_samples)."""
    if item.error is not None:
        raise audio.AudioDecodeError(item.error)
    n = audio.crop_into(item.audio, out, sample_rate=plan.sample_rate,
                        u=u if plan.crop_mode == "random" else None)
    if n < plan.min_samples:
        raise _TooShort(n)
    return n


def _row(plan: TrainPlan, stream: _Stream, u: float, out: torch.Tensor, corrupt: list,
         short: list) -> tuple:
    """Decode the stream's next sample (or its replacement) into `out` -> (length, label, key)."""
    item = stream.pop()
    try:
        n = _decode(plan, item, u, out)
        stream.last_good = item
        return n, _label_of(plan, item, stream.label), item.key
    except _TooShort as err:
        short.append((item.key, item.shard, err.samples, "skipped"))
    except audio.AudioDecodeError as err:
        corrupt.append((item.key, item.shard, str(err)))
    spares = [s for s in [stream.peek(k) for k in range(_LOOKAHEAD)] + [stream.last_good] if s]
    for spare in spares:
        if spare.error is not None:
            continue
        try:
            n = _decode(plan, spare, u, out)
        except audio.AudioDecodeError:
            continue
        return n, _label_of(plan, spare, stream.label), spare.key
    raise CorruptDataError(
        f"{plan.shard_set.root}: no usable {stream.label} sample: {item.key} ({item.shard}) and "
        f"the {len(spares)} tried in its place are undecodable or shorter than "
        f"{plan.min_samples} samples; check the shards with `sccl-shards verify`")


def make_batch(plan: TrainPlan, j: int, streams: dict[str, _Stream]) -> dict:
    """Batch j of this rank: n_bonafide + n_spoof rows in a seeded random row order."""
    rng = np.random.default_rng([plan.seed, plan.epoch, plan.rank, j, _TAG_BATCH])
    B = plan.n_bonafide + plan.n_spoof
    u, perm = rng.random(B), rng.permutation(B)
    where = np.argsort(perm)  # row i of the label-ordered draw goes to batch row where[i]
    labels = ["bonafide"] * plan.n_bonafide + ["spoof"] * plan.n_spoof
    wave = torch.empty(B, plan.crop_len, dtype=torch.float32)  # decoded into in place
    rows, corrupt, short = [None] * B, [], []
    for i, lab in enumerate(labels):
        rows[where[i]] = _row(plan, streams[lab], float(u[i]), wave[where[i]], corrupt, short)
    mask = audio.length_mask([r[0] for r in rows], plan.crop_len)  # (B, T)
    if plan.rawboost is not None:
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        wave = RawBoost(plan.rawboost).apply(wave, mask, gen)
    failed = []
    if plan.codec is not None:  # its own stream: batches without it stay as they were
        crng = np.random.default_rng([plan.seed, plan.epoch, plan.rank, j, _TAG_CODEC])
        failed = [(rows[i][2], name, why) for i, name, why in
                  codec_aug.augment(plan.codec, wave, [r[0] for r in rows], plan.sample_rate, crng)]
    return {"wave": wave, "attention_mask": mask,
            "label": torch.tensor([r[1] for r in rows], dtype=torch.long),
            "utt_id": [r[2] for r in rows], "_corrupt": corrupt, "_short": short, "_seen": B,
            "_codec_failed": failed}


class TrainBatches(torch.utils.data.IterableDataset):
    """Yields this worker's batches of one rank's epoch, from `plan.start_step` on."""

    def __init__(self, plan: TrainPlan):
        super().__init__()
        self.plan = plan

    def __iter__(self):
        plan, info = self.plan, torch.utils.data.get_worker_info()
        p, k = (0, 1) if info is None else (info.id, info.num_workers)
        if k != plan.num_slots:
            raise RuntimeError(f"planned for {plan.num_slots} workers, running in {k}")
        # Physical worker p serves slot v so that the first batch out (p = 0 first, by the
        # DataLoader's round-robin) is batch start_step.
        v = (p + plan.start_step) % k
        try:
            streams = {lab: _Stream(plan, lab, v) for lab in ("bonafide", "spoof")}
            for j in plan.slot_batches(v):
                if j >= plan.start_step:
                    yield make_batch(plan, j, streams)
        except (ShardDirError, CorruptDataError) as err:
            yield {"_error": err}
