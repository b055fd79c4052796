"""Codec and channel augmentation of training clips, in the loader workers, through real codecs.

Each training clip (after RawBoost) is, independently of the others:
1. with probability `telephone_p`, sent through a telephone channel: resampled to 8 kHz
   (scipy's resample_poly, as sccl.audio: its anti-alias filter keeps < 4 kHz), band-passed to
   300-3400 Hz (zero-phase Butterworth) unless `telephone_bandpass` is off, resampled back;
2. then through at most one codec, drawn with probabilities mp3_p, vorbis_p, opus_p, mulaw_p
   and alaw_p (they share [0, 1): their sum is at most 1): encoded in memory by libsndfile
   (soundfile) and decoded again. Encoders: LAME (MP3, constant bitrate), libvorbis, libopus,
   and libsndfile's G.711 mu-law / A-law in WAV. No codec is implemented here.

The "bitrate" knob is libsndfile's compression level in [0, 1] (soundfile's
`compression_level`; 0 = best quality). What it sets at 16 kHz mono, from encoded sizes
measured with libsndfile 1.2.2 (the formulas fit those measurements):
- MP3: the constant bitrate, 8 + (1 - level) * 152 kbps snapped by LAME to the MPEG-2 table
  (0.5 -> 80, 0.9 -> 24, 0.95 -> 16 kbps); level 1.0 is refused by libsndfile, so < 1 here;
- Opus: the target of its variable bitrate, about 6 + (1 - level) * 250 kbps (0.9 -> 31);
- Vorbis: the quality (1 - level) of its variable bitrate, not a bitrate: 60-70 kbps at level
  0 and 28-34 kbps at level 1 on noise-like test signals (content-dependent);
- mu-law / A-law: no knob (8 bits per sample: 128 kbps at 16 kHz).
bench/bench_codec.py prints the bitrates measured on its clips.

Alignment: libsndfile's decoders remove the codec's delay and end padding (gapless decoding),
returning exactly the input's samples; LAME at low bitrates (measured at 16 kHz: 32 kbps
and below, where it resamples internally) returns them with its delay and padding. The delay
is then found by cross-correlation with the input over the possible lags (0 .. extra
samples) and cut, so the output always has the input's length and timing
(tests/test_codec_aug.py checks both cases).

Output: float32, clipped to [-1, 1] (codecs carry full-scale audio); zero padding after a
clip's real samples stays zero. A clip a codec fails on passes through unaugmented and is
reported to the caller, which counts it and warns once (sccl.data).
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch
from scipy.signal import butter, correlate, resample_poly, sosfiltfilt

# Rates each encoder accepts (libopus: 8/12/16/24/48 kHz; LAME: the MPEG-1/2/2.5 rates).
_RATES = {"opus": (8000, 12000, 16000, 24000, 48000),
          "mp3": (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)}
_PHONE_RATE, _PHONE_BAND = 8000, (300.0, 3400.0)  # ITU-T narrowband telephone
CODECS = ("mp3", "vorbis", "opus", "mulaw", "alaw")


@dataclass
class CodecConfig:
    """Codec and channel augmentation of training clips (sccl.codec_aug); every probability 0 by
    default: the study trains with RawBoost only."""

    mp3_p: float = 0.0
    """Probability that a clip goes through MP3 (LAME, constant bitrate)."""
    vorbis_p: float = 0.0
    """Probability that a clip goes through Ogg Vorbis."""
    opus_p: float = 0.0
    """Probability that a clip goes through Ogg Opus (needs sample_rate 8/12/16/24/48 kHz)."""
    mulaw_p: float = 0.0
    """Probability that a clip goes through G.711 mu-law (8-bit companding, WAV)."""
    alaw_p: float = 0.0
    """Probability that a clip goes through G.711 A-law (8-bit companding, WAV)."""
    telephone_p: float = 0.0
    """Probability of the telephone channel (8 kHz round trip), drawn independently of the
    codecs and applied before the codec. The five codec probabilities add up to at most 1: a
    clip gets at most one codec."""
    telephone_bandpass: bool = True
    """Telephone channel: also band-pass to 300-3400 Hz (false: only the 8 kHz round trip's
    4 kHz low-pass)."""
    mp3_level_min: float = 0.5
    """MP3 bitrate: libsndfile compression level drawn uniformly in [min, max] per clip; at
    16 kHz, kbps = 8 + (1 - level) * 152 snapped to LAME's table (0.5 = 80 kbps)."""
    mp3_level_max: float = 0.95
    """Upper end of the MP3 level range, below 1 (0.95 = 16 kbps at 16 kHz)."""
    vorbis_level_min: float = 0.0
    """Vorbis quality: libsndfile compression level in [min, max] (0 = quality 1.0, 60-70
    kbps at 16 kHz on the benchmark's signals; variable bitrate, content-dependent)."""
    vorbis_level_max: float = 1.0
    """Upper end of the Vorbis level range (1 = quality 0, 28-34 kbps at 16 kHz)."""
    opus_level_min: float = 0.8
    """Opus bitrate: libsndfile compression level in [min, max]; target kbps about
    6 + (1 - level) * 250 (0.8 = 56 kbps)."""
    opus_level_max: float = 0.96
    """Upper end of the Opus level range (0.96 = 16 kbps)."""

    def __post_init__(self) -> None:
        for name in (*[f"{c}_p" for c in CODECS], "telephone_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"CodecConfig: {name} must be in [0, 1], got "
                                 f"{getattr(self, name)}")
        if sum(self.codec_p) > 1.0 + 1e-9:
            raise ValueError(f"CodecConfig: mp3_p + vorbis_p + opus_p + mulaw_p + alaw_p = "
                             f"{sum(self.codec_p):.4g} > 1 (a clip gets at most one codec)")
        for codec, top in (("mp3", 0.999), ("vorbis", 1.0), ("opus", 1.0)):
            lo, hi = getattr(self, f"{codec}_level_min"), getattr(self, f"{codec}_level_max")
            if not 0.0 <= lo <= hi <= top:
                raise ValueError(f"CodecConfig: need 0 <= {codec}_level_min <= {codec}_level_max"
                                 f" <= {top}, got {lo} and {hi}")

    @property
    def codec_p(self) -> list[float]:
        return [getattr(self, f"{c}_p") for c in CODECS]

    @property
    def enabled(self) -> bool:
        return self.telephone_p > 0 or sum(self.codec_p) > 0

    def check_codecs(self, sample_rate: int) -> None:
        """ValueError naming the key when a codec in use cannot encode at `sample_rate`, or
        this soundfile / libsndfile cannot encode it at all (a soundfile before 0.13 has no
        compression_level; some libsndfile builds lack MPEG or Opus). One 0.1 s test encode
        per codec in use: a run never trains silently without a codec it asked for."""
        probe = (0.1 * np.sin(np.arange(sample_rate // 10) * 0.3)).astype(np.float32)
        for codec in CODECS:
            if getattr(self, f"{codec}_p") == 0:
                continue
            rates = _RATES.get(codec, (sample_rate,))
            if sample_rate not in rates:
                raise ValueError(f"codec.{codec}_p > 0 needs sample_rate in {rates}, got "
                                 f"{sample_rate}")
            try:
                _APPLY[codec](probe, sample_rate, getattr(self, f"{codec}_level_min", 0.0))
            except Exception as err:  # libsndfile and soundfile raise several types
                raise ValueError(
                    f"codec.{codec}_p > 0 but soundfile {sf.__version__} with libsndfile "
                    f"{sf.__libsndfile_version__} cannot encode {codec} ({type(err).__name__}: "
                    f"{err}); install soundfile >= 0.13 with its bundled libsndfile") from err


def _round_trip(x: np.ndarray, sr: int, fmt: str, subtype: str, **options) -> np.ndarray:
    """Encode (n,) float32 with libsndfile into memory and decode it again."""
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt, subtype=subtype, **options)
    buf.seek(0)
    return sf.read(buf, dtype="float32")[0]


def _aligned(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """y cut to x's length and timing. A decoder that returns extra samples returned the
    codec's delay (before) and padding (after): the delay is the lag in 0..extra with the
    highest cross-correlation with the input."""
    n, extra = len(x), len(y) - len(x)
    if extra < 0:
        return np.concatenate([y, np.zeros(-extra, np.float32)])
    lag = int(np.argmax(correlate(y, x, mode="valid", method="fft"))) if extra else 0
    return y[lag : lag + n]


def mp3(x: np.ndarray, sr: int, level: float) -> np.ndarray:
    return _aligned(_round_trip(x, sr, "MP3", "MPEG_LAYER_III", compression_level=level,
                                bitrate_mode="CONSTANT"), x)


def vorbis(x: np.ndarray, sr: int, level: float) -> np.ndarray:
    return _aligned(_round_trip(x, sr, "OGG", "VORBIS", compression_level=level), x)


def opus(x: np.ndarray, sr: int, level: float) -> np.ndarray:
    return _aligned(_round_trip(x, sr, "OGG", "OPUS", compression_level=level), x)


def mulaw(x: np.ndarray, sr: int, level: float = 0.0) -> np.ndarray:
    return _round_trip(x, sr, "WAV", "ULAW")


def alaw(x: np.ndarray, sr: int, level: float = 0.0) -> np.ndarray:
    return _round_trip(x, sr, "WAV", "ALAW")


@functools.cache
def _phone_band() -> np.ndarray:
    return butter(4, _PHONE_BAND, btype="bandpass", fs=_PHONE_RATE, output="sos")


def telephone(x: np.ndarray, sr: int, bandpass: bool = True) -> np.ndarray:
    """8 kHz round trip (and 300-3400 Hz band-pass): (n,) float32 -> (n,) float32 at sr."""
    g = math.gcd(sr, _PHONE_RATE)
    up, down = _PHONE_RATE // g, sr // g
    low = resample_poly(x, up, down)
    if bandpass:  # filtfilt pads both edges by up to 3 * (2 * sections + 1) samples
        sos = _phone_band()
        low = sosfiltfilt(sos, low, padlen=min(3 * (2 * len(sos) + 1), len(low) - 1))
    return resample_poly(low, down, up)[: len(x)].astype(np.float32)


_APPLY = {"mp3": mp3, "vorbis": vorbis, "opus": opus, "mulaw": mulaw, "alaw": alaw}


def _level(cfg: CodecConfig, codec: str, u: float) -> float:
    if codec not in ("mp3", "vorbis", "opus"):
        return 0.0
    lo, hi = getattr(cfg, f"{codec}_level_min"), getattr(cfg, f"{codec}_level_max")
    return lo + (hi - lo) * u


def augment(cfg: CodecConfig, wave: torch.Tensor, lengths: list[int], sample_rate: int,
            rng: np.random.Generator) -> list[tuple[int, str, str]]:
    """Augment the real samples of each row of wave (B, T) float32 in place.

    Three uniform draws per row (channel, codec, level) are taken from `rng` whatever is
    applied, so a row's augmentation depends only on the seed and its position. Returns
    (row, augmentation, error) for each row an encoder failed on; those rows are unchanged.
    """
    u = rng.random((wave.shape[0], 3))
    edges = np.cumsum(cfg.codec_p)
    rows, failed = wave.numpy(), []
    for i, n in enumerate(lengths):
        steps = [("telephone", None)] if u[i, 0] < cfg.telephone_p else []
        k = int(np.searchsorted(edges, u[i, 1], side="right"))
        if k < len(CODECS):
            steps.append((CODECS[k], _level(cfg, CODECS[k], u[i, 2])))
        if not steps or n <= 0:
            continue
        x = np.clip(rows[i, :n], -1.0, 1.0)
        try:
            for name, level in steps:
                x = (telephone(x, sample_rate, cfg.telephone_bandpass) if name == "telephone"
                     else _APPLY[name](x, sample_rate, level))
        except Exception as err:  # libsndfile raises several types; one clip must not stop
            failed.append((i, name, f"{type(err).__name__}: {err}"))
            continue
        rows[i, :n] = np.clip(x, -1.0, 1.0)
    return failed
