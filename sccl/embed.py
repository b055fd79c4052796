"""Distributed embedding extraction from shard directories (Stage 2 and evaluation).

Every rank iterates its share of a shard directory (``sccl.data.build_eval_loader``: each
utterance exactly once overall, padding duplicates flagged ``valid = False``), embeds it
with the frozen Stage 1 model, and the shares are gathered onto every rank in rank order.
Rows are then deduplicated by key and the set of keys is checked against the shard
metadata: a missing or duplicated utterance is an error, never a silently wrong EER.

Crop policies (``EmbedOptions.crop``):
  "first"    the first ``seconds`` of each utterance, as in training (the study: 10 s);
  "full"     the whole utterance (padding masked);
  "windows"  windows of ``seconds`` every ``hop_seconds`` covering the utterance; the
             utterance's embedding is the mean of its window embeddings (not renormalised),
             so a linear classifier's score on it is the mean of the window scores.
"""

from __future__ import annotations

import contextlib
import json
import math
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch

from sccl import dist
from sccl.data_shards import inside_name

Crop = Literal["first", "full", "windows"]
CROPS = get_args(Crop)


class EmbedError(RuntimeError):
    """Shard contents disagree with the manifest, or trials are missing/duplicated."""


@dataclass
class EmbedOptions:
    """How utterances are cropped and batched for embedding."""

    crop: Crop = "first"
    """"first": the first `seconds` of each utterance (as in training); "full": the whole
    utterance; "windows": windows of `seconds` every `hop_seconds`, the utterance's embedding
    being the mean of its windows' (so a linear score is the mean of the window scores)."""
    seconds: float = 10.0
    """Crop length ("first") or window length ("windows")."""
    hop_seconds: float = 0.0
    """Window hop ("windows" only); 0 = seconds / 2."""
    batch_size: int = 16
    """Utterances (or windows) per forward pass on each rank."""
    bf16: bool = True
    """Use bf16 autocast on CUDA devices that support it; fp32 elsewhere."""

    def __post_init__(self) -> None:
        if self.crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {self.crop!r}")
        if self.crop != "full" and self.seconds <= 0:
            raise ValueError(f"crop={self.crop!r} needs seconds > 0, got {self.seconds}")
        if not 0 <= self.hop_seconds <= max(self.seconds, 0):
            raise ValueError(f"hop_seconds must be in [0, seconds], got {self.hop_seconds}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def check_window(opts: EmbedOptions, model, sample_rate: int,
                 names: tuple[str, str] = ("seconds", "hop_seconds")) -> None:
    """ValueError (one line) for a crop or window under one encoder frame's receptive field
    (the encoder's convolutions refuse it with a traceback) or a hop under one frame (it
    only repeats work); ``names``: how the message calls the two options."""
    if opts.crop == "full":
        return
    field = model.receptive_field  # 400 samples (0.025 s at 16 kHz) for every preset
    frame = math.prod(model.encoder.config.conv_stride)  # samples per frame: 320
    if round(opts.seconds * sample_rate) < field:
        raise ValueError(f"{names[0]} {opts.seconds:g} is under one encoder frame's "
                         f"receptive field: use >= {field / sample_rate:g} ({field} samples "
                         f"at {sample_rate} Hz)")
    if opts.crop == "windows" and opts.hop_seconds \
            and round(opts.hop_seconds * sample_rate) < frame:
        raise ValueError(f"{names[1]} {opts.hop_seconds:g} is under one encoder frame: "
                         f"use >= {frame / sample_rate:g} ({frame} samples at {sample_rate} "
                         "Hz), or 0 for half the window")


def check_embed_window(opts: EmbedOptions, model, sample_rate: int) -> None:
    """``check_window`` of the ``embed`` section of Stage 2 and evaluation: an ``EmbedError``,
    their one-line input error."""
    try:
        check_window(opts, model, sample_rate, ("embed.seconds", "embed.hop_seconds"))
    except ValueError as err:
        raise EmbedError(str(err)) from None


@dataclass
class Embedded:
    """Gathered, deduplicated embeddings of one shard directory, in key order of the metadata."""

    keys: list[str]  # (N,)
    z: np.ndarray  # float32 (N, D)
    meta: list[dict]  # (N,) the samples' .json metadata


# ------------------------------------------------------------------------ shard metadata


def read_manifest(shard_dir: str | Path) -> dict:
    path = Path(shard_dir) / "manifest.json"
    if not path.is_file():
        raise EmbedError(f"{shard_dir}: no manifest.json (not a shard directory, or its build "
                         "is incomplete: run `sccl-shards build` again)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise EmbedError(f"{path}: invalid JSON: {err}") from None


def read_shard_metadata(shard_dir: str | Path) -> tuple[dict, list[dict]]:
    """(manifest, every sample's .json metadata in shard order), checked against the manifest.

    Only the small .json members are read; tar headers let the audio be skipped by seeking."""
    shard_dir = Path(shard_dir)
    manifest = read_manifest(shard_dir)
    metas: list[dict] = []
    for entry in manifest.get("shards", []):
        name = entry["name"]
        if not inside_name(name):  # never read outside the shard directory
            raise EmbedError(f"{shard_dir / 'manifest.json'}: shard name {name!r} is not a "
                             "file name inside the directory")
        path = shard_dir / name
        if not path.is_file():
            raise EmbedError(f"{path}: listed in manifest.json but missing")
        found = _shard_json(path)
        if len(found) != entry["num_samples"]:
            raise EmbedError(f"{path}: {len(found)} samples, manifest.json says "
                             f"{entry['num_samples']}")
        metas += found
    if len(metas) != manifest.get("num_samples"):
        raise EmbedError(f"{shard_dir}: {len(metas)} samples in the shards, manifest.json says "
                         f"{manifest.get('num_samples')}")
    return manifest, metas


def _shard_json(path: Path) -> list[dict]:
    out = []
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if not member.name.endswith(".json"):
                    continue
                meta = json.loads(tar.extractfile(member).read().decode("utf-8"))
                key = member.name[: -len(".json")]
                if meta.get("utt_id") != key:
                    raise EmbedError(f"{path}: member {member.name} holds utt_id "
                                     f"{meta.get('utt_id')!r}")
                out.append(meta)
    except (tarfile.TarError, OSError, ValueError) as err:
        raise EmbedError(f"{path}: unreadable shard: {err}") from None
    return out


def duplicate_keys(keys: list[str]) -> list[str]:
    """Keys that occur more than once, in first-occurrence order."""
    seen, dups = set(), []
    for k in keys:
        if k in seen and k not in dups:
            dups.append(k)
        seen.add(k)
    return dups


# -------------------------------------------------------------------------- collectives


def gather_strings(items: list[str], device: torch.device | str = "cpu") -> list[str]:
    """Every rank's ``items`` concatenated in rank order (single process: a copy).

    Strings travel as UTF-8 bytes joined by newlines through ``dist.all_gather_no_grad``
    (uneven sizes allowed), so no object collective is needed."""
    if any("\n" in s for s in items):
        raise ValueError("gather_strings: items may not contain newlines")
    data = bytearray("".join(s + "\n" for s in items).encode("utf-8"))
    t = torch.frombuffer(data, dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)
    gathered = dist.all_gather_no_grad(t.to(device)).cpu().numpy().tobytes()
    return gathered.decode("utf-8").split("\n")[:-1]


# ---------------------------------------------------------------------------- windowing


def window_starts(length: int, window: int, hop: int) -> list[int]:
    """Start samples of windows of ``window`` every ``hop`` covering ``length`` samples; the
    last window is aligned to the end so the tail is never dropped. One window if short."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, hop))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


def make_windows(wave: torch.Tensor, lengths: list[int], window: int, hop: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut utterances into windows.

    wave (B, T) right-padded, lengths (B,) valid samples -> windows (M, W'), mask (M, W')
    (1 = real sample), owner (M,) long index of each window's utterance; W' = min(window,
    longest length)."""
    width = min(window, max(lengths))
    pieces, masks, owner = [], [], []
    for b, n in enumerate(lengths):
        for s in window_starts(n, window, hop):
            piece = wave[b, s: s + min(window, n)]
            pad = width - piece.shape[0]
            pieces.append(torch.nn.functional.pad(piece, (0, pad)))
            masks.append(torch.arange(width, device=wave.device) < piece.shape[0])
            owner.append(b)
    return (torch.stack(pieces), torch.stack(masks).long(),
            torch.tensor(owner, dtype=torch.long, device=wave.device))


def autocast_context(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA with bf16 support; a no-op elsewhere (CPU runs stay fp32)."""
    if bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def embed_waves(model: torch.nn.Module, wave: torch.Tensor, mask: torch.Tensor,
                opts: EmbedOptions, sample_rate: int) -> torch.Tensor:
    """z (B, D) fp32 of a batch wave (B, T), mask (B, T), per ``opts.crop``."""
    device = next(model.parameters()).device
    wave, mask = wave.to(device), mask.to(device)
    window = int(round(opts.seconds * sample_rate))
    if opts.crop == "first":  # a no-op on eval-loader batches, which arrive cropped
        wave, mask = wave[:, :window], mask[:, :window]
    if opts.crop != "windows":
        with autocast_context(device, opts.bf16):
            return model(wave, mask).float()
    lengths = mask.long().sum(-1).tolist()
    hop = int(round((opts.hop_seconds or opts.seconds / 2) * sample_rate))
    windows, wmask, owner = make_windows(wave, lengths, window, hop)
    parts = []
    for i in range(0, windows.shape[0], opts.batch_size):
        with autocast_context(device, opts.bf16):
            parts.append(model(windows[i: i + opts.batch_size],
                               wmask[i: i + opts.batch_size]).float())
    zw = torch.cat(parts)  # (M, D)
    z = torch.zeros(wave.shape[0], zw.shape[1], device=device).index_add_(0, owner, zw)
    counts = torch.bincount(owner, minlength=wave.shape[0]).clamp_min(1)
    return z / counts.unsqueeze(1).to(z.dtype)  # mean over each utterance's windows


# ------------------------------------------------------------------------ shard directories


@torch.no_grad()
def embed_share(model: torch.nn.Module, shard_dir: str | Path, data_cfg, opts: EmbedOptions, *,
                rank: int, world_size: int) -> tuple[list[str], torch.Tensor]:
    """Every rank: embed this rank's share of ``shard_dir``, then gather all shares.

    Returns (keys (M,), z (M, D) fp32 on CPU) in rank order, padding rows dropped (M may
    exceed the number of trials only if the loader repeated a valid row; see ``collect``)."""
    from sccl.data import build_eval_loader

    check_embed_window(opts, model, data_cfg.sample_rate)  # every rank: the same EmbedError
    device = next(model.parameters()).device
    seconds = opts.seconds if opts.crop == "first" else 0.0
    loader = build_eval_loader(str(shard_dir), data_cfg, rank=rank, world_size=world_size,
                               batch_size=opts.batch_size, seconds=seconds)
    keys: list[str] = []
    parts = [torch.zeros(0, model.cfg.proj_dim, device=device)]
    for batch in loader:
        valid = batch["valid"].bool()
        if not valid.any():  # padding batch: equalises steps, never reaches a metric
            continue
        z = embed_waves(model, batch["wave"][valid], batch["attention_mask"][valid], opts,
                        data_cfg.sample_rate)
        parts.append(z)
        keys += [k for k, v in zip(batch["utt_id"], valid.tolist(), strict=True) if v]
    z_all = dist.all_gather_no_grad(torch.cat(parts))
    return gather_strings(keys, device), z_all.float().cpu()


def collect(shard_dir: str | Path, keys: list[str], z: torch.Tensor) -> Embedded:
    """Main process: dedup gathered rows by key and check them against the shard metadata.

    Raises EmbedError for duplicate utterance ids in the shards, trials nobody scored (e.g.
    undecodable audio) and rows whose key the shards do not hold."""
    _, metas = read_shard_metadata(shard_dir)
    meta_keys = [m["utt_id"] for m in metas]
    dups = duplicate_keys(meta_keys)
    if dups:
        raise EmbedError(f"{shard_dir}: {len(dups)} duplicate trial id(s) in the shards, e.g. "
                         f"{dups[:3]}; each trial must appear once")
    first: dict[str, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)  # the same key twice = a repeated row: keep one
    missing = [k for k in meta_keys if k not in first]
    if missing:
        raise EmbedError(f"{shard_dir}: {len(missing)} of {len(meta_keys)} trials were not "
                         f"scored (undecodable audio?), e.g. {missing[:3]}")
    extra = sorted(set(first) - set(meta_keys))
    if extra:
        raise EmbedError(f"{shard_dir}: scored {len(extra)} ids the shards do not list, "
                         f"e.g. {extra[:3]}")
    order = torch.tensor([first[k] for k in meta_keys], dtype=torch.long)
    return Embedded(meta_keys, z[order].numpy().astype(np.float32), metas)

