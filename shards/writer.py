"""Write one tar shard (runs inside a worker process): probe, hash, optionally transcode.

Tar members get fixed metadata (mtime 0, uid/gid 0, empty user/group names, mode 0644) and
sample json is dumped with sorted keys, so the same input gives byte-identical shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections import Counter
from dataclasses import dataclass

from sccl.fileio import atomic_open
from shards.errors import ShardsError
from shards.plan import Item, ShardPlan

TARGET_RATE = 16000
# Clips shorter than this at 16 kHz cannot fill one frame of a wav2vec2-style encoder (its
# convolutional front end spans 400 samples). They are kept but listed ("short" in the
# manifest): whether they are usable depends on the encoder and the loader's padding,
# which the builder does not know. Empty clips are rejected outright.
SHORT_SAMPLES = 400
# libsndfile container name -> the member extension the readers expect.
_CONTAINERS = {"FLAC": "flac", "WAV": "wav", "WAVEX": "wav"}
# Only floating-point encodings can hold NaN/Inf (integer PCM, FLAC included, decodes to
# finite values by construction), so only these are decoded for the finite check.
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")


@dataclass(frozen=True)
class SampleOptions:
    """What every sample of a build shares (sent to each worker with its shard)."""

    dataset: str
    split: str
    transcode: str | None = None  # None | "flac16k"
    decode_check: bool = False
    finite_check: bool = True  # decode float audio to reject NaN/Inf (see _check_finite)


class _HashingWriter:
    """File wrapper that hashes and counts what tarfile writes, so a shard is not reread."""

    def __init__(self, f):
        self._f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self._f.write(data)

    def tell(self) -> int:
        return self.size


def file_mode() -> int:
    """0666 less the umask: the mode ``open()`` gives a new file. (sccl.fileio.atomic_open
    already gives its temporaries this mode, so shards are readable by the other users of a
    shared dataset directory without a chmod of their own.)"""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Append ``name`` holding ``data`` with deterministic metadata."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _probe(raw: bytes, src: str):
    import soundfile as sf

    try:
        return sf.info(io.BytesIO(raw))
    except Exception as err:  # libsndfile raises several types for bad data
        raise ShardsError(f"unreadable or corrupt audio: {src} ({err})") from None


def _decode(raw: bytes, src: str):
    """(wave (T, C) float32, rate); a ShardsError for undecodable or non-finite audio."""
    import numpy as np
    import soundfile as sf

    try:
        wave, rate = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    except Exception as err:
        raise ShardsError(f"corrupt audio (decode failed): {src} ({err})") from None
    if not np.isfinite(wave).all():
        raise ShardsError(f"corrupt audio: {src} holds non-finite samples (NaN or inf)")
    return wave, rate


def _reject_empty(info, raw: bytes, src: str) -> None:
    # A FLAC header may leave the length unknown (0): only a decode proves emptiness.
    if info.frames == 0 and len(_decode(raw, src)[0]) == 0:
        raise ShardsError(f"empty audio (0 samples): {src}; remove it from the protocol")


def _check_finite(info, raw: bytes, src: str) -> None:
    """Reject float audio holding NaN/Inf: it passes the header probe, then fails every
    later decode (sccl.audio refuses it), far from its source file. Only float WAV
    (``FLOAT_SUBTYPES``) is decoded for it: 0.08-0.17 ms per 4 s float32 clip on one core
    of a 2-core EPYC VM, about 14% of a 1-worker build of 3 s float WAV
    (bench/bench_build.py --format wav --subtype FLOAT --finite-check on off)."""
    if info.subtype in FLOAT_SUBTYPES:
        _decode(raw, src)


def transcode_flac16k(raw: bytes, src: str) -> bytes:
    """Decode, downmix to mono, resample to 16 kHz (polyphase), encode 16-bit FLAC."""
    import numpy as np
    import soundfile as sf

    wave, rate = _decode(raw, src)  # (T, C)
    mono = wave.mean(axis=1)
    if rate != TARGET_RATE:
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(TARGET_RATE, rate)
        mono = resample_poly(mono, TARGET_RATE // g, rate // g)
    buf = io.BytesIO()
    sf.write(buf, np.clip(mono, -1.0, 1.0), TARGET_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def encode_sample(item: Item, opts: SampleOptions) -> tuple[str, bytes, dict]:
    """(extension, audio bytes, json metadata) of one sample."""
    try:
        with open(item.src, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise ShardsError(f"cannot read audio {item.src}: {err}") from None
    info = _probe(raw, item.src)
    _reject_empty(info, raw, item.src)
    rec, extra = item.record, {}
    if opts.transcode == "flac16k":
        extra = {"source_sha256": hashlib.sha256(raw).hexdigest(),
                 "source_sample_rate": info.samplerate, "transcode": "flac16k"}
        raw = transcode_flac16k(raw, item.src)
        info = _probe(raw, item.src)
    elif opts.decode_check:
        wave, _ = _decode(raw, item.src)
        if len(wave) != info.frames:
            raise ShardsError(f"corrupt audio: {item.src} decodes to {len(wave)} frames, "
                              f"its header says {info.frames}")
    elif opts.finite_check:
        _check_finite(info, raw, item.src)
    ext = _CONTAINERS.get(info.format)
    if ext is None:
        raise ShardsError(f"{item.src}: audio container {info.format} is neither FLAC nor WAV; "
                          "rebuild with --transcode flac16k")
    meta = {
        **rec.extras, **extra,
        "utt_id": rec.utt_id, "label": rec.label, "attack": rec.attack, "speaker": rec.speaker,
        "dataset": opts.dataset, "split": opts.split, "subset": rec.subset,
        "sample_rate": info.samplerate, "num_samples": info.frames, "channels": info.channels,
        "duration": info.frames / info.samplerate, "sha256": hashlib.sha256(raw).hexdigest(),
        "source": item.source,
    }
    return ext, raw, meta


def _is_short(meta: dict) -> bool:
    return meta["num_samples"] * TARGET_RATE < SHORT_SAMPLES * meta["sample_rate"]


def write_shard(plan: ShardPlan, out_dir: str, opts: SampleOptions) -> dict:
    """Write ``plan`` to ``out_dir/plan.name`` atomically; return its manifest entry."""
    duration, rates, counts = 0.0, Counter(), Counter({"bonafide": 0, "spoof": 0})
    attacks, subsets, codecs, short = Counter(), {}, {}, []
    with atomic_open(f"{out_dir}/{plan.name}", "wb") as f:
        os.fchmod(f.fileno(), file_mode())
        out = _HashingWriter(f)
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for item in plan.items:
                ext, audio, meta = encode_sample(item, opts)
                key = item.record.utt_id
                add_member(tar, f"{key}.{ext}", audio)
                text = json.dumps(meta, sort_keys=True, ensure_ascii=False)
                add_member(tar, f"{key}.json", text.encode("utf-8"))
                duration += meta["duration"]
                rates[str(meta["sample_rate"])] += 1
                counts[meta["label"]] += 1
                attacks[meta["attack"]] += 1
                _count(subsets, meta["subset"], meta["label"])
                if "codec" in meta:
                    _count(codecs, meta["codec"], meta["label"])
                if _is_short(meta):
                    short.append(key)
    return {
        "name": plan.name, "label": plan.label, "num_samples": len(plan.items),
        "bytes": out.size, "sha256": out.sha.hexdigest(), "duration": round(duration, 3),
        "counts": dict(counts), "attacks": dict(sorted(attacks.items())),
        "subsets": dict(sorted(subsets.items())), "codecs": dict(sorted(codecs.items())),
        "short": short, "sample_rates": dict(sorted(rates.items())),
    }


def _count(table: dict[str, dict[str, int]], group: str, label: str) -> None:
    counts = table.setdefault(group, {"bonafide": 0, "spoof": 0})
    counts[label] += 1
