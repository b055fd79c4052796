"""Audio decoding and cropping: encoded bytes -> float32 mono torch tensors at one sample rate.

Shards carry the original audio bytes (FLAC or WAV), so decoding happens here, in the loader
workers, through soundfile (libsndfile) on an in-memory buffer. A crop only reads the frames
it keeps (libsndfile seeks inside FLAC and WAV), so a 4 s crop of a 30 s file decodes 4 s.
Resampling (only when a file's rate differs from the target) is scipy's polyphase
resample_poly, the shard builder's resampler too (sccl-shards transcodes to 16 kHz with it), so
a clip resampled at build time and one resampled at load time go through the same filter;
stereo is downmixed by averaging channels.

Conventions: a wave is (T,) float32; a batch is (B, T) with an attention mask (B, T) bool,
True = real audio, False = zero padding at the end.
"""

from __future__ import annotations

import io
import math

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly

# Only floating-point encodings can hold NaN/Inf; integer PCM (FLAC, most WAV) cannot.
_FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")


class AudioDecodeError(ValueError):
    """The bytes could not be decoded as audio (corrupt, truncated or unknown container)."""


def _open(data: bytes) -> sf.SoundFile:
    try:
        return sf.SoundFile(io.BytesIO(data))
    except Exception as err:  # libsndfile raises several types for bad input
        raise AudioDecodeError(f"cannot read audio header: {err}") from None


def resample(wave: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Resample (..., T) float32 from orig_sr to new_sr (identity when equal)."""
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    if orig_sr == new_sr:
        return wave
    g = math.gcd(int(orig_sr), int(new_sr))
    y = resample_poly(wave.numpy(), new_sr // g, orig_sr // g, axis=-1)
    return torch.from_numpy(y.astype(np.float32, copy=False))


def _read(f: sf.SoundFile, start: int, frames: int) -> np.ndarray:
    """`frames` frames (< 0: to the end) from `start` of an open file -> (n,) float32 mono."""
    try:
        if start > 0:
            f.seek(start)
        x = f.read(frames, dtype="float32", always_2d=True)  # (n, C)
    except Exception as err:
        raise AudioDecodeError(f"cannot decode audio: {err}") from None
    x = x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
    if f.subtype in _FLOAT_SUBTYPES and not np.isfinite(x).all():
        raise AudioDecodeError("decoded audio contains NaN or Inf")
    return np.ascontiguousarray(x)


def decode(data: bytes, *, sample_rate: int = 16000) -> torch.Tensor:
    """Whole file -> (T,) float32 mono at `sample_rate`."""
    with _open(data) as f:
        x, sr = _read(f, 0, -1), f.samplerate
    return resample(torch.from_numpy(x), sr, sample_rate)


def _window(f: sf.SoundFile, sample_rate: int, offset: int, length: int) -> torch.Tensor:
    if offset < 0 or length <= 0:
        raise ValueError(f"need offset >= 0 and length > 0, got offset={offset}, length={length}")
    frames, sr = f.frames, f.samplerate
    if sr == sample_rate:
        return torch.from_numpy(_read(f, offset, length))
    g = math.gcd(sr, sample_rate)
    a, b = sr // g, sample_rate // g  # a source frames span exactly b target samples
    # Extra frames read around the window so the filter has real context at both edges:
    # resample_poly's kernel reaches 10 * max(a, b) upsampled steps each side, i.e. at most
    # 10 * max(a, b) / min(a, b) samples at either rate.
    margin = 10 * max(a, b) // min(a, b) + 1
    blocks = max(0, offset - margin) // b
    t0 = blocks * b  # target index of the first source frame read
    n_src = math.ceil((offset + length - t0) * a / b) + margin
    y = resample(torch.from_numpy(_read(f, blocks * a, n_src)), sr, sample_rate)
    total = math.ceil(frames * b / a)  # length of the whole file at the target rate
    return y[offset - t0 : min(offset + length, total) - t0]


def crop_into(data: bytes, out: torch.Tensor, *, sample_rate: int, u: float | None) -> int:
    """Decode a crop of len(out) samples straight into `out` (1-D float32 CPU), zero-padded.

    u in [0, 1): a window at a position chosen by u (training; the position depends only on u
    and the file length, so a seeded u gives a reproducible crop); u None: the first samples.
    Returns the number of real samples. Mono files at the target rate are decoded in place
    (no intermediate copy): this is the loader's hot path.
    """
    length = out.shape[0]
    if u is not None and not 0.0 <= u < 1.0:
        raise ValueError(f"u must be in [0, 1), got {u}")
    with _open(data) as f:
        total = math.ceil(f.frames * sample_rate / f.samplerate)  # length at the target rate
        offset = int(u * (total - length + 1)) if u is not None and total > length else 0
        if f.samplerate == sample_rate and f.channels == 1:
            buf = out.numpy()
            try:
                if offset:
                    f.seek(offset)
                n = f.read(dtype="float32", out=buf).shape[0]
            except Exception as err:
                raise AudioDecodeError(f"cannot decode audio: {err}") from None
            if f.subtype in _FLOAT_SUBTYPES and not np.isfinite(buf[:n]).all():
                raise AudioDecodeError("decoded audio contains NaN or Inf")
            if n < length:
                buf[n:] = 0.0  # numpy: a few us less than torch's slice fill, per row
        else:
            wave = _window(f, sample_rate, offset, length)
            n = min(wave.shape[0], length)
            out[:n] = wave[:n]
            out[n:] = 0.0
    return n


def random_crop(data: bytes, *, sample_rate: int, length: int,
                u: float) -> tuple[torch.Tensor, int]:
    """Training crop: ((length,) wave, real samples) of a window chosen by u in [0, 1)."""
    out = torch.empty(length, dtype=torch.float32)
    return out, crop_into(data, out, sample_rate=sample_rate, u=u)


def head_crop(data: bytes, *, sample_rate: int, length: int | None) -> tuple[torch.Tensor, int]:
    """Evaluation crop: the first `length` samples, zero-padded; None = the whole file unpadded.

    Returns ((length,) or (T,) wave, number of real samples).
    """
    if length is None:
        wave = decode(data, sample_rate=sample_rate)
        return wave, wave.shape[0]
    out = torch.empty(length, dtype=torch.float32)
    return out, crop_into(data, out, sample_rate=sample_rate, u=None)


def length_mask(lengths: list[int], length: int) -> torch.Tensor:
    """Attention mask (B, length) bool: row i True on its first lengths[i] samples."""
    # Filled in numpy: torch's broadcast compare and slice fills are ~10x slower on one core.
    mask = np.ones((len(lengths), length), dtype=bool)
    for i, n in enumerate(lengths):
        if n < length:
            mask[i, max(n, 0):] = False
    return torch.from_numpy(mask)


def collate(
    waves: list[torch.Tensor], lengths: list[int] | None = None, *, length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (T_i,) waves into (B, T) with an attention mask (B, T) bool (True = real sample).

    `lengths[i]` = real samples of waves[i] (default: all of it); samples past it must already
    be zero padding.
    T = `length` if given (longer waves are cut), else the longest wave.
    """
    if not waves:
        raise ValueError("collate needs at least one wave")
    if lengths is None:
        lengths = [w.shape[0] for w in waves]
    if len(lengths) != len(waves):
        raise ValueError(f"{len(waves)} waves but {len(lengths)} lengths")
    T = length if length is not None else max(w.shape[0] for w in waves)
    if all(w.shape[0] == T for w in waves):  # e.g. fixed-length crops: one copy, in C
        return torch.stack(waves).float(), length_mask(lengths, T)
    out = torch.empty(len(waves), T, dtype=torch.float32)  # every element written once below
    for i, (w, n) in enumerate(zip(waves, lengths, strict=True)):
        n = min(n, w.shape[0], T)
        out[i, :n] = w[:n]
        out[i, n:] = 0.0
    return out, length_mask([min(n, w.shape[0]) for n, w in zip(lengths, waves, strict=True)],
                            T)
