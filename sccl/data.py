"""Streaming data pipeline: shard directories -> balanced, equal-length batches on every rank.

    cfg = DataConfig(train_shards="shards/la19_train", dev_shards="shards/la19_dev")
    loader = build_train_loader(cfg, rank=r, world_size=w, epoch=e, start_step=k)
    for batch in loader:   # len(loader) = steps per epoch, the same on every rank
        wave, mask, label = batch["wave"], batch["attention_mask"], batch["label"]

Epoch (the study's, docs/study.md: all bona fide + an equal random draw of spoof): with n_b bona
fide in the manifest, an epoch is n_b * (1 + spoof_per_bonafide) samples, i.e.
    steps = floor(n_b * (1 + spoof_per_bonafide) / (world_size * B)),  B = batch_size // world_size,
each rank batch holding round(B * bonafide_share) bona fide and the rest spoof. With the
defaults (share 0.5, 1 spoof per bona fide) an epoch reads every bona fide sample once, except
fewer than world_size * B/2 left over (different ones each epoch, the order being reshuffled),
and as many spoof samples, taken in turn from a reshuffled spoof sequence so that every spoof
sample is used once before any is used twice. Steps come from manifest counts only, so every
rank gets the same number and DDP never waits on a rank that ran out. How samples are split
between ranks and workers, and why resuming is exact: sccl/data_train.py.

Mixed (not split-by-label) shards work too: both label streams read the same shards and keep
their label. When the manifest's shard entries carry per-label "counts" (sccl-shards writes
them) the plan is as exact as with split shards; without them slot boundaries are placed by the
label's overall share, so bona fide coverage is approximate (a few samples may repeat or be
missed near slot boundaries). --split-by-label remains cheaper: a stream reads only its label.
"""

from __future__ import annotations

import logging
import math
import signal
from dataclasses import dataclass, field
from typing import Literal

import torch

from sccl.accel import StopSignal
from sccl.codec_aug import CodecConfig
from sccl.config import ConfigError
from sccl.data_eval import EvalBatches, EvalPlan, padding_batch
from sccl.data_shards import CorruptDataError, ShardDirError, load_shard_set
from sccl.data_train import TrainBatches, TrainPlan
from sccl.rawboost import RawBoostConfig

__all__ = ["DataConfig", "TrainLoader", "EvalLoader", "CorruptDataError", "ShardDirError",
           "build_train_loader", "build_dev_loader", "build_eval_loader"]

log = logging.getLogger("sccl.data")


@dataclass
class DataConfig:
    """Where the shards are and how they become batches."""

    train_shards: str = ""
    """Training shard directory (manifest.json + tars); "" only when not training."""
    dev_shards: str = ""
    """Development shard directory, for the balanced dev SupCon loss."""
    sample_rate: int = 16000
    """Every clip is resampled to this rate (Hz) if it differs."""
    crop_seconds: float = 10.0
    """Training crop length in seconds (the study: 10 s = 160,000 samples, zero-padded)."""
    eval_seconds: float = 10.0
    """Evaluation keeps the first N seconds, zero-padded; 0 = whole utterances."""
    batch_size: int = 32
    """GLOBAL batch over all ranks; each rank gets batch_size // world_size (must divide)."""
    bonafide_share: float = 0.5
    """Share of bona fide rows in every rank batch: round(B * share), at least 1 of each label."""
    label_mode: Literal["binary", "attack"] = "binary"
    """"binary" (1 = bona fide, 0 = spoof) or "attack" (0 = bona fide, 1..K = attacks in the
    training manifest's sorted attack order)."""
    num_workers: int = 2
    """DataLoader worker processes per rank (0 = load in the main process). Resuming needs the
    same value as the interrupted run: batches depend on it."""
    shuffle_buffer: int = 1000
    """Shuffle buffer per label stream and worker, in samples (holds encoded bytes)."""
    rawboost: bool = True
    """Apply RawBoost (sccl.rawboost, the study's parameters) to training batches in the workers."""
    rawboost_p: float = 0.7
    """Probability that a training utterance is augmented by RawBoost."""
    codec: CodecConfig = field(default_factory=CodecConfig)
    """Codec and telephone-channel augmentation of training clips after RawBoost (sccl.codec_aug;
    off by default: the study uses RawBoost only)."""
    spoof_per_bonafide: float = 1.0
    """Epoch = all bona fide + this many times as many spoof (sets the steps per epoch)."""
    max_corrupt_share: float = 0.01
    """Undecodable samples are skipped and counted; more than this share of the samples seen
    (one is always tolerated unless 0) is an error."""
    seed: int = 42
    """Base seed: shard order, shuffle buffers, crops, RawBoost and codec augmentation derive
    from (seed, epoch, rank, worker/batch)."""
    train_crop: Literal["head", "random"] = "head"
    """Training crop: "head" = first crop_seconds (the study's code), or a "random" window."""
    min_clip_samples: int = 400
    """Clips with fewer real samples (after cropping) are too short for the encoder: training
    and dev batches skip them like undecodable ones (counted in short_count, named in the log);
    evaluation pads them with silence to this length and scores them. 400 = the receptive
    field of wav2vec 2.0 / XLS-R (one frame); check_encoder refuses less than the model's."""

    def __post_init__(self) -> None:
        checks = [
            # Literal choices: the config parser checks them; these catch direct construction
            (self.label_mode in ("binary", "attack"), "label_mode must be 'binary' or 'attack'"),
            (self.train_crop in ("random", "head"), "train_crop must be 'random' or 'head'"),
            (0.0 < self.bonafide_share < 1.0, "bonafide_share must be in (0, 1)"),
            (self.batch_size >= 2, "batch_size must be >= 2"),
            (self.sample_rate > 0, "sample_rate must be > 0"),
            (self.crop_seconds > 0, "crop_seconds must be > 0"),
            (self.eval_seconds >= 0, "eval_seconds must be >= 0"),
            (self.num_workers >= 0, "num_workers must be >= 0"),
            (self.shuffle_buffer >= 0, "shuffle_buffer must be >= 0"),
            (0.0 <= self.rawboost_p <= 1.0, "rawboost_p must be in [0, 1]"),
            (self.spoof_per_bonafide > 0, "spoof_per_bonafide must be > 0"),
            (0.0 <= self.max_corrupt_share <= 1.0, "max_corrupt_share must be in [0, 1]"),
            (self.min_clip_samples >= 1, "min_clip_samples must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"DataConfig: {msg}")
        self.codec.check_codecs(self.sample_rate)

    def rank_rows(self, world_size: int) -> tuple[int, int]:
        """(bona fide, spoof) rows of each rank batch for `world_size` processes; ConfigError
        when the batch cannot be split (call it before any work: WORLD_SIZE is known at
        launch)."""
        if world_size < 1 or self.batch_size % world_size:
            raise ConfigError(f"data.batch_size={self.batch_size} is the global batch: it must "
                              f"be divisible by the number of processes ({world_size})")
        rows = self.batch_size // world_size
        bona = math.floor(rows * self.bonafide_share + 0.5)
        if not 1 <= bona <= rows - 1:
            raise ConfigError(
                f"data.bonafide_share={self.bonafide_share} gives {bona} bona fide of {rows} rows "
                f"per process (data.batch_size={self.batch_size} over {world_size}); every rank "
                "batch needs at least one row of each label: raise data.batch_size or move "
                "data.bonafide_share towards 0.5")
        return bona, rows - bona

    def check_encoder(self, receptive_field: int) -> None:
        """ConfigError when a crop or min_clip_samples is shorter than the encoder's receptive
        field (ModelConfig.receptive_field()): the encoder would get no frame."""
        sizes = {"data.crop_seconds": round(self.crop_seconds * self.sample_rate),
                 "data.min_clip_samples": self.min_clip_samples}
        if self.eval_seconds > 0:
            sizes["data.eval_seconds"] = round(self.eval_seconds * self.sample_rate)
        for key, samples in sizes.items():
            if samples < receptive_field:
                raise ConfigError(
                    f"{key}={getattr(self, key.split('.')[1])} gives {samples} samples at "
                    f"{self.sample_rate} Hz, fewer than the encoder's receptive field "
                    f"({receptive_field} samples = {receptive_field / self.sample_rate:.4g} s)")


class _Loader:
    """What the train and eval loaders share: the plan, len() = its steps, and the corrupt-
    and short-sample bookkeeping (main process). Short clips are valid audio, so they do not
    count against max_corrupt_share."""

    def __init__(self, plan: TrainPlan | EvalPlan, num_workers: int, max_corrupt_share: float
                 ) -> None:
        self.plan, self.num_workers = plan, num_workers
        self.corrupt_count, self.short_count, self.seen_count, self.codec_failures = 0, 0, 0, 0
        self.corrupt_keys: list[str] = []
        self.short_keys: list[str] = []
        self._where, self._max_share = plan.shard_set.root, max_corrupt_share

    def __len__(self) -> int:
        return self.plan.steps

    def _account(self, batch: dict) -> dict:
        if "_error" in batch:  # raised in a loader worker: re-raised here as one line
            raise batch["_error"]
        self.seen_count += batch.pop("_seen")
        for key, shard, samples, action in batch.pop("_short"):
            self.short_count += 1
            if key not in self.short_keys:
                self.short_keys.append(key)
                log.warning("%s sample %s in %s/%s: %d samples, fewer than the encoder's "
                            "minimum (data.min_clip_samples)", action, key, self._where, shard,
                            samples)
        for key, name, why in batch.pop("_codec_failed", ()):
            self.codec_failures += 1
            if self.codec_failures == 1:
                log.warning("%s augmentation failed on sample %s, which passed through "
                            "unaugmented (later failures are only counted): %s", name, key, why)
        for key, shard, why in batch.pop("_corrupt"):
            self.corrupt_count += 1
            if key not in self.corrupt_keys:
                self.corrupt_keys.append(key)
                log.warning("skipped undecodable sample %s in %s/%s: %s", key, self._where,
                            shard, why)
        allowed = max(self._max_share * self.seen_count, 1.0 if self._max_share > 0 else 0.0)
        if self.corrupt_count > allowed:
            raise CorruptDataError(
                f"{self._where}: {self.corrupt_count} of {self.seen_count} samples seen could not "
                f"be decoded (max_corrupt_share={self._max_share}); first: "
                f"{self.corrupt_keys[:5]}. Check the shards with `sccl-shards verify`.")
        return batch


def _data_loader(dataset, num_workers: int) -> torch.utils.data.DataLoader:
    # batch_size=None: the dataset yields whole batches. in_order=True (the default) keeps the
    # round-robin worker order that the plans rely on.
    # collate_fn: batches are already tensors; the default would walk every list in them.
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=num_workers, in_order=True, collate_fn=_as_is,
        prefetch_factor=2 if num_workers else None, persistent_workers=False,
        worker_init_fn=_leave_stop_signals_to_main if num_workers else None)


def _leave_stop_signals_to_main(worker_id: int) -> None:
    """Loader workers ignore the stop signals. A scheduler that preempts a job (Slurm's
    scancel, requeue, node drain) signals every process of it, workers included; a worker that
    died of SIGTERM would make the main process raise before it could checkpoint. The main
    process owns the stop (it checkpoints and then shuts its workers down); a worker whose
    parent is gone exits by itself (torch's worker watchdog)."""
    for signum in StopSignal.SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _as_is(batch: dict) -> dict:
    return batch


class TrainLoader(_Loader):
    """One rank's batches of one epoch. len() = steps per epoch (same on every rank); iterating
    yields batches start_step .. len()-1. `corrupt_count` / `short_count` = undecodable / too
    short samples met (and replaced) so far; `codec_failures` = clips a codec augmentation
    failed on (passed through unaugmented)."""

    def __iter__(self):
        n, expected = 0, self.plan.steps - self.plan.start_step
        for batch in _data_loader(TrainBatches(self.plan), self.num_workers):
            n += 1
            yield self._account(batch)
        if n != expected:  # would desynchronise ranks: fail loudly instead of hanging DDP
            raise RuntimeError(f"{self._where}: produced {n} batches, planned {expected}")


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


def _balanced_plan(shard_dir: str, cfg: DataConfig, rank: int, world_size: int, epoch: int,
                   start_step: int, crop_mode: str, augment: bool, attacks_from: str) -> TrainPlan:
    _check_rank(rank, world_size)
    nb, n_spoof = cfg.rank_rows(world_size)
    B = nb + n_spoof
    ss = load_shard_set(shard_dir)
    n_b, n_s = ss.counts["bonafide"], ss.counts["spoof"]
    if n_b == 0 or n_s == 0:
        raise ShardDirError(f"{shard_dir}: balanced batches need both labels, counts are "
                            f"{ss.counts}")
    steps = math.floor(n_b * (1 + cfg.spoof_per_bonafide) / (world_size * B))
    if steps == 0:
        raise ShardDirError(f"{shard_dir}: {n_b} bona fide samples give no full step of "
                            f"{world_size} x {B} rows")
    if epoch < 0 or not 0 <= start_step <= steps:
        raise ValueError(f"need epoch >= 0 and 0 <= start_step <= {steps}, got epoch={epoch}, "
                         f"start_step={start_step}")
    if abs(steps * world_size * nb - n_b) > world_size * B:
        log.warning("%s: %d bona fide rows per epoch for %d bona fide samples: bonafide_share "
                    "%.3g and spoof_per_bonafide %.3g disagree", shard_dir,
                    steps * world_size * nb, n_b, cfg.bonafide_share, cfg.spoof_per_bonafide)
    attacks = ss.spoof_attacks
    if cfg.label_mode == "attack" and attacks_from:  # class numbers must match training's
        attacks = load_shard_set(attacks_from).spoof_attacks
    return TrainPlan(
        shard_set=ss, rank=rank, world_size=world_size, epoch=epoch, start_step=start_step,
        steps=steps, n_bonafide=nb, n_spoof=B - nb, num_slots=max(1, cfg.num_workers),
        seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer, sample_rate=cfg.sample_rate,
        crop_len=round(cfg.crop_seconds * cfg.sample_rate), crop_mode=crop_mode,
        label_mode=cfg.label_mode, attacks=attacks, min_samples=cfg.min_clip_samples,
        rawboost=RawBoostConfig(p=cfg.rawboost_p, sample_rate=cfg.sample_rate)
        if augment and cfg.rawboost else None,
        codec=cfg.codec if augment and cfg.codec.enabled else None)


def build_train_loader(cfg: DataConfig, *, rank: int, world_size: int, epoch: int,
                       start_step: int = 0) -> TrainLoader:
    """Training batches of `epoch` for `rank`; start_step > 0 resumes mid-epoch exactly (same
    batches as steps start_step.. of the uninterrupted loader; needs the same cfg)."""
    if not cfg.train_shards:
        raise ShardDirError("DataConfig.train_shards is empty: no training shard directory")
    plan = _balanced_plan(cfg.train_shards, cfg, rank, world_size, epoch, start_step,
                          cfg.train_crop, True, "")
    return TrainLoader(plan, cfg.num_workers, cfg.max_corrupt_share)


def build_dev_loader(cfg: DataConfig, *, rank: int, world_size: int) -> TrainLoader:
    """Balanced dev batches, identical every epoch: first crop_seconds of each clip, no
    RawBoost or codec augmentation, the epoch layout of epoch 0. Attack classes follow the
    training manifest."""
    if not cfg.dev_shards:
        raise ShardDirError("DataConfig.dev_shards is empty: no development shard directory")
    plan = _balanced_plan(cfg.dev_shards, cfg, rank, world_size, 0, 0, "head", False,
                          cfg.train_shards)
    return TrainLoader(plan, cfg.num_workers, cfg.max_corrupt_share)


class EvalLoader(_Loader):
    """One rank's share of an evaluation set; len() equal on every rank. Batches: "wave",
    "attention_mask", "label" (1 = bona fide, -1 if unreadable), "attack", "utt_id", "valid"
    (False for padding and undecodable trials: keep them out of metrics). Trials shorter than
    min_clip_samples are padded with silence to it and scored (counted in short_count)."""

    def __iter__(self):
        n, last = 0, None
        for batch in _data_loader(EvalBatches(self.plan), self.num_workers):
            n += 1
            last = self._account(batch)
            yield last
        for _ in range(self.plan.steps - n):  # equalise steps across ranks
            last = padding_batch(self.plan, last)
            yield last


def build_eval_loader(shard_dir: str, cfg: DataConfig, *, rank: int, world_size: int,
                      batch_size: int, seconds: float | None = None) -> EvalLoader:
    """Every trial of `shard_dir` exactly once over all ranks (with valid=True); `batch_size`
    is per rank; `seconds` = first N seconds (default cfg.eval_seconds; 0 = whole clips)."""
    _check_rank(rank, world_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    seconds = cfg.eval_seconds if seconds is None else seconds
    if seconds < 0:
        raise ValueError(f"seconds must be >= 0, got {seconds}")
    ss = load_shard_set(shard_dir)
    crop = round(seconds * cfg.sample_rate) if seconds > 0 else None
    # More workers than batches would only start idle processes.
    plan = EvalPlan(ss, rank, world_size, batch_size, cfg.sample_rate, crop, 1,
                    cfg.min_clip_samples)
    workers = min(cfg.num_workers, plan.rank_batches(rank))
    plan.num_slots = max(1, workers)
    return EvalLoader(plan, workers, cfg.max_corrupt_share)
