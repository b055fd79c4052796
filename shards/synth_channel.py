"""Channel effects that make the synthetic 2021 and In-the-Wild-like sets harder.

- ASVspoof 2021 LA-like: telephony codecs (A-law, mu-law, a G.722-like sub-band coder,
  GSM-like and Opus-like coarse spectral coding, PSTN) and transmission channels with packet
  loss, applied to bona fide and spoof alike, named in the key file's codec/transmission
  columns.
- ASVspoof 2021 DF-like: lossy-compression-like spectral quantisation at two "bitrates"
  (mp3/m4a/ogg names, and the chained mp3m4a/oggm4a conditions).
- In-the-Wild-like: microphone colouration, reverberation, background noise, level drifts
  and clipping.
All are cheap (a few ms per utterance) and depend only on the given generator.
"""

from __future__ import annotations

import numpy as np
from scipy import signal

from shards.synth_dsp import SR, band_matrix, butter_sos, istft, smooth, stft

LA21_CODECS = ("none", "alaw", "ulaw", "pstn", "g722", "gsm", "opus")
LA21_TRANSMISSIONS = ("ita_tx", "sin_tx", "loc_tx", "mad_tx", "usa_tx")
# Per transmission: packet-loss probability per 20 ms frame, line-noise level (dB re speech).
_TX_PARAMS = {"ita_tx": (0.03, -45), "sin_tx": (0.06, -40), "loc_tx": (0.0, -55),
              "mad_tx": (0.04, -38), "usa_tx": (0.015, -48)}
DF_CODECS = ("nocodec", "low_mp3", "high_mp3", "low_m4a", "high_m4a", "low_ogg", "high_ogg",
             "mp3m4a", "oggm4a")
# Per DF codec family and bitrate: (lowpass Hz, dynamic range kept dB, log-magnitude step dB,
# noise filling of holes).
_DF_PARAMS = {("mp3", "low"): (5500, 32, 4.0, False), ("mp3", "high"): (7200, 48, 2.0, False),
              ("m4a", "low"): (6000, 36, 3.0, True), ("m4a", "high"): (7600, 52, 1.5, True),
              ("ogg", "low"): (5000, 30, 3.5, True), ("ogg", "high"): (7000, 46, 2.0, True)}


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2)) + 1e-12)


def companding(x: np.ndarray, law: str, bits: int = 8) -> np.ndarray:
    """G.711-style mu-law / A-law: compress, quantise to ``bits``, expand (x scaled to +-1)."""
    peak = np.max(np.abs(x)) + 1e-12
    v = np.clip(x / peak * 0.7, -1, 1)  # telephone level, no clipping
    if law == "ulaw":
        c = np.sign(v) * np.log1p(255 * np.abs(v)) / np.log1p(255)
    else:
        a = 87.6
        av = np.abs(v)
        c = np.where(av < 1 / a, a * av, 1 + np.log(np.maximum(a * av, 1))) / (1 + np.log(a))
        c = np.sign(v) * c
    step = 2.0 / 2**bits
    c = np.round(c / step) * step
    if law == "ulaw":
        y = np.sign(c) * np.expm1(np.abs(c) * np.log1p(255)) / 255
    else:
        ac = np.abs(c) * (1 + np.log(87.6))
        y = np.sign(c) * np.where(ac < 1, ac / 87.6, np.exp(ac - 1) / 87.6)
    return y * peak / 0.7


def narrowband(x: np.ndarray, low: float = 300.0, high: float = 3400.0) -> np.ndarray:
    """Through 8 kHz sampling and a telephone band-pass, back at 16 kHz."""
    nb = signal.resample_poly(x, 1, 2)
    sos = signal.butter(4, (low, high), btype="bandpass", fs=SR // 2, output="sos")
    nb = signal.sosfilt(sos, nb)
    return signal.resample_poly(nb, 2, 1)[: len(x)]


def spectral_codec(x: np.ndarray, rng: np.random.Generator, cutoff: float, keep_db: float,
                   step_db: float, noise_fill: bool) -> np.ndarray:
    """Lossy-coder-like: low-pass, bins below the per-frame masking floor dropped (spectral
    holes, optionally noise-filled), log magnitudes quantised with ``step_db``; phase kept."""
    spec = stft(x)
    mag = np.abs(spec)
    freqs = np.linspace(0, SR / 2, spec.shape[1])
    floor = mag.max(axis=1, keepdims=True) * 10 ** (-keep_db / 20)
    holes = (mag < floor) | (freqs > cutoff)
    q = np.exp(np.round(np.log(mag + 1e-9) / (step_db / 8.686)) * (step_db / 8.686))
    q = np.where(holes, 0.0, q)
    phase = np.exp(1j * np.angle(spec))
    if noise_fill:  # parametric noise substitution inside the band, at the floor level
        fill = holes & (freqs <= cutoff)
        phase = np.where(fill, np.exp(2j * np.pi * rng.random(mag.shape)), phase)
        q = np.where(fill, 0.5 * floor * rng.random(mag.shape), q)
    return istft(q * phase, len(x))


def packet_loss(x: np.ndarray, rng: np.random.Generator, p: float) -> np.ndarray:
    """Lose 20 ms frames with probability ``p``; concealed by repeating the previous frame."""
    frame = SR // 50
    y = x.copy()
    for i in np.flatnonzero(rng.random(len(x) // frame) < p):
        if i > 0:
            y[i * frame : (i + 1) * frame] = y[(i - 1) * frame : i * frame] * 0.7
    return y


def la21_channel(x: np.ndarray, codec: str, tx: str, rng: np.random.Generator) -> np.ndarray:
    """ASVspoof 2021 LA-like transmission of ``x`` through ``codec`` over channel ``tx``."""
    if codec == "none":
        return x
    if codec in ("alaw", "ulaw"):
        y = companding(narrowband(x), codec)
    elif codec == "pstn":
        y = companding(narrowband(x, 350, 3200), "ulaw")
        y = np.tanh(2.0 * y / (np.max(np.abs(y)) + 1e-12))  # line non-linearity
    elif codec == "g722":  # wideband: fine low band, coarse high band
        lo = signal.sosfilt(butter_sos("lowpass", 4000, 8), x)
        hi = signal.sosfilt(butter_sos("bandpass", (4000, 7000), 4), x)
        y = lo + spectral_codec(hi, rng, 7000, 24, 6.0, True)
    elif codec == "gsm":
        y = spectral_codec(narrowband(x), rng, 3400, 30, 4.0, False)
    elif codec == "opus":
        y = spectral_codec(x, rng, 6500, 34, 3.0, True)
    else:
        raise ValueError(f"unknown LA21 codec {codec!r}; known: {LA21_CODECS}")
    loss, noise_db = _TX_PARAMS[tx]
    y = packet_loss(y, rng, loss)
    return y + _rms(y) * 10 ** (noise_db / 20) * rng.standard_normal(len(y))


def df_compression(x: np.ndarray, codec: str, rng: np.random.Generator) -> np.ndarray:
    """ASVspoof 2021 DF-like lossy compression ``codec`` (one of DF_CODECS)."""
    if codec == "nocodec":
        return x
    if codec in ("mp3m4a", "oggm4a"):  # two lossy coders in a row
        first = df_compression(x, "high_" + codec[:3], rng)
        return df_compression(first, "low_m4a", rng)
    rate, _, family = codec.partition("_")
    if (family, rate) not in _DF_PARAMS:
        raise ValueError(f"unknown DF codec {codec!r}; known: {DF_CODECS}")
    return spectral_codec(x, rng, *_DF_PARAMS[(family, rate)])


def _room(rng: np.random.Generator) -> np.ndarray:
    """Synthetic room impulse response: direct path + exponentially decaying noise tail."""
    rt60 = rng.uniform(0.15, 0.7)
    n = int(min(rt60, 0.5) * SR)
    t = np.arange(n) / SR
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    tail = signal.sosfilt(butter_sos("lowpass", float(round(rng.uniform(3000, 7000), -2)), 2), tail)
    rir = tail * rng.uniform(0.2, 0.6) / (_rms(tail) * np.sqrt(n / SR * 20))
    rir[0] = 1.0
    return rir


def wild_channel(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """In-the-Wild-like recording: colouration, reverb, noise, level drift, clipping."""
    spec = stft(x)  # microphone/room colouration: smooth random EQ of +-6 dB
    pts = rng.uniform(-6, 6, 8)
    eq = np.interp(np.linspace(0, 7, spec.shape[1]), np.arange(8), pts)
    y = istft(spec * 10 ** (smooth(eq, 9) / 20), len(x))
    if rng.random() < 0.6:
        y = signal.fftconvolve(y, _room(rng))[: len(x)]
    if rng.random() < 0.8:  # speech-shaped, slowly modulated background noise
        fb = band_matrix(12)
        shape = fb.T @ rng.uniform(0.2, 1.0, 12)
        noise = istft(stft(rng.standard_normal(len(x))) * shape, len(x))
        noise = noise * (1 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.2, 3) * np.arange(len(x)) / SR))
        y = y + noise * _rms(y) / _rms(noise) * 10 ** (-rng.uniform(8, 35) / 20)
    y = y * 10 ** (np.linspace(0, rng.uniform(-8, 8), len(y)) / 20)  # level drift
    if rng.random() < 0.2:
        lim = np.max(np.abs(y)) * rng.uniform(0.3, 0.7)
        y = np.clip(y, -lim, lim)
    if rng.random() < 0.3:  # re-uploaded through a lossy coder
        y = df_compression(y, DF_CODECS[rng.integers(1, 7)], rng)
    return y
