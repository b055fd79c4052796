"""Small shard directories in the format of docs/design.md, written from generated audio.

Independent of the real shard builder (shards/build.py) on purpose: the data pipeline's tests
pin the format itself, so a builder bug cannot hide a reader bug or the other way round.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import soundfile as sf

from sccl.fileio import atomic_write_json


def make_wave(rng: np.random.Generator, seconds: float, sr: int, channels: int = 1) -> np.ndarray:
    """A tone plus noise, (T,) or (T, C) float32 in [-0.5, 0.5]."""
    t = np.arange(int(seconds * sr)) / sr
    f0 = rng.uniform(150, 900)
    x = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.05 * rng.standard_normal(t.shape)
    if channels > 1:
        x = np.stack([x * (c + 1) / channels for c in range(channels)], axis=1)
    return x.astype(np.float32)


def encode(wave: np.ndarray, sr: int, fmt: str = "flac") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format=fmt.upper(), subtype="PCM_16")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    tar.addfile(info, io.BytesIO(data))


def _samples(n_bonafide, n_spoof, attacks, rng, split):
    out = [(f"{split}_bona_{i:04d}", "bonafide", "-") for i in range(n_bonafide)]
    out += [(f"{split}_spoof_{i:04d}", "spoof", attacks[i % len(attacks)]) for i in range(n_spoof)]
    order = rng.permutation(len(out))  # mixed shards interleave the labels
    return [out[i] for i in order]


def write_shards(out_dir, *, n_bonafide: int = 8, n_spoof: int = 8, split_by_label: bool = True,
                 n_shards: tuple[int, int] | int = (2, 2), attacks=("A01", "A02", "A03"),
                 sample_rate: int = 16000, seconds=(0.15, 0.3), fmt: str = "flac",
                 channels: int = 1, split: str = "train", seed: int = 0,
                 corrupt: tuple[str, ...] = (), shard_counts: bool = False,
                 lengths: dict[str, int] | None = None) -> dict:
    """Write a shard directory; returns its manifest.

    n_shards: (bona fide shards, spoof shards) when split by label, else the total number.
    corrupt: utt_ids whose audio bytes are replaced by garbage.
    shard_counts: add per-shard "counts" (the sccl-shards builder's extension) to the entries.
    lengths: utt_id -> samples its clip is cut to (short clips; written as WAV, which unlike
        FLAC can hold 0 samples).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples = _samples(n_bonafide, n_spoof, list(attacks), rng, split)
    if split_by_label:
        groups = [(lab, [s for s in samples if s[1] == lab], n)
                  for lab, n in zip(("bonafide", "spoof"), n_shards, strict=True)]
    else:
        groups = [(None, samples, n_shards)]
    entries, total = [], 0.0
    for label, group, n in groups:
        for k, part in enumerate(np.array_split(np.arange(len(group)), n)):
            name = f"{split}-{label + '-' if label else ''}{k:06d}.tar"
            dur = _write_tar(out / name, [group[i] for i in part], rng, sample_rate, seconds,
                             fmt, channels, split, corrupt, lengths or {})
            data = (out / name).read_bytes()
            entries.append({"name": name, "label": label, "num_samples": len(part),
                            "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                            "duration": dur})
            if shard_counts:
                labs = [group[i][1] for i in part]
                entries[-1]["counts"] = {k: labs.count(k) for k in ("bonafide", "spoof")}
            total += dur
    manifest = {
        "format_version": 1, "builder": "tests.data_fixtures", "format": "csv",
        "dataset": "fixture", "split": split, "subset": split, "build_args": {"seed": seed},
        "num_samples": n_bonafide + n_spoof,
        "counts": {"bonafide": n_bonafide, "spoof": n_spoof},
        "attacks": {"-": n_bonafide, **{a: sum(1 for s in samples if s[2] == a)
                                        for a in attacks if n_spoof}},
        "total_duration": total, "sample_rates": {str(sample_rate): n_bonafide + n_spoof},
        "shards": entries,
    }
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def _write_tar(path, samples, rng, sr, seconds, fmt, channels, split, corrupt, lengths) -> float:
    total = 0.0
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for utt, label, attack in samples:
            wave, ext = make_wave(rng, rng.uniform(*seconds), sr, channels), fmt
            if utt in lengths:
                wave, ext = wave[:lengths[utt]], "wav"
            audio = b"this is not audio" * 10 if utt in corrupt else encode(wave, sr, ext)
            meta = {"utt_id": utt, "label": label, "attack": attack, "speaker": "spk",
                    "dataset": "fixture", "subset": split, "sample_rate": sr,
                    "num_samples": len(wave), "duration": len(wave) / sr,
                    "sha256": hashlib.sha256(audio).hexdigest(), "source": f"{utt}.{ext}"}
            _add(tar, f"{utt}.{ext}", audio)
            _add(tar, f"{utt}.json", json.dumps(meta).encode("utf-8"))
            total += len(wave) / sr
    return total
