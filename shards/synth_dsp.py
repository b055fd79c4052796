"""Small numpy/scipy signal helpers for the synthetic corpus (STFT, LPC, filters).

Everything works on float64 mono signals at 16 kHz, and is vectorised over frames so that a
whole utterance costs a few milliseconds: the default corpus must generate in under a minute
on two cores. Spectra are laid out frames-first: ``(T, F)`` with ``F = n_fft // 2 + 1``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import signal

SR = 16000


def stft_frames(x: np.ndarray, n_fft: int = 512, hop: int = 128) -> np.ndarray:
    """Hann-windowed, centred analysis frames of ``x`` (N,) -> ``(T, n_fft)``."""
    if n_fft % hop:
        raise ValueError(f"hop {hop} must divide n_fft {n_fft}")
    pad = n_fft // 2
    xp = np.pad(x, (pad, pad + (-len(x)) % hop), mode="reflect" if len(x) > pad else "constant")
    return np.lib.stride_tricks.sliding_window_view(xp, n_fft)[::hop] * np.hanning(n_fft + 1)[:-1]


def stft(x: np.ndarray, n_fft: int = 512, hop: int = 128) -> np.ndarray:
    """STFT of ``x`` (N,) -> complex ``(T, n_fft // 2 + 1)`` on :func:`stft_frames`."""
    return np.fft.rfft(stft_frames(x, n_fft, hop), axis=-1)


def istft(spec: np.ndarray, length: int, n_fft: int = 512, hop: int = 128) -> np.ndarray:
    """Weighted overlap-add inverse of :func:`stft`; returns ``(length,)``."""
    win = np.hanning(n_fft + 1)[:-1]
    frames = np.fft.irfft(spec, n=n_fft, axis=-1) * win  # (T, n_fft)
    n_frames, ratio = frames.shape[0], n_fft // hop
    out = np.zeros((n_frames + ratio - 1) * hop)
    norm = np.zeros_like(out)
    # OLA as `ratio` strided adds instead of a Python loop over frames.
    for r in range(ratio):
        seg = slice(r * hop, r * hop + n_frames * hop)
        out[seg] += frames[:, r * hop : (r + 1) * hop].reshape(-1)
        norm[seg] += np.tile(win[r * hop : (r + 1) * hop] ** 2, n_frames)
    out = out / np.maximum(norm, 1e-8)
    pad = n_fft // 2
    y = out[pad : pad + length]
    return np.pad(y, (0, length - len(y)))


def griffin_lim(
    mag: np.ndarray, length: int, rng: np.random.Generator, n_iter: int,
    n_fft: int = 512, hop: int = 128, phase: np.ndarray | None = None,
) -> np.ndarray:
    """Signal whose STFT magnitude approximates ``mag`` (T, F), from random (or given) phase."""
    if phase is None:
        phase = np.exp(2j * np.pi * rng.random(mag.shape))
    for _ in range(n_iter):
        spec = stft(istft(mag * phase, length, n_fft, hop), n_fft, hop)[: len(mag)]
        phase = spec / np.maximum(np.abs(spec), 1e-9)
    return istft(mag * phase, length, n_fft, hop)


def band_matrix(
    n_bands: int, n_fft: int = 512, fmin: float = 60.0, fmax: float = SR / 2
) -> np.ndarray:
    """Triangular mel-spaced filterbank ``(n_bands, n_fft // 2 + 1)``, each row peak 1."""
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    edges_mel = np.linspace(mel(fmin), mel(fmax), n_bands + 2)
    edges = 700.0 * (10 ** (edges_mel / 2595.0) - 1.0)
    freqs = np.linspace(0, SR / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs - lo) / (mid - lo)
    down = (hi - freqs) / (hi - mid)
    return np.clip(np.minimum(up, down), 0.0, None)


def lpc(frames: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Autocorrelation LPC of windowed frames (T, N) -> (a (T, order+1) with a[:,0]=1, err (T,)).

    Levinson-Durbin runs its order recursion in Python but is vectorised over frames.
    """
    n = frames.shape[1]
    spec = np.fft.rfft(frames, n=2 * n, axis=-1)
    r = np.fft.irfft(np.abs(spec) ** 2, axis=-1)[:, : order + 1]
    r[:, 0] = r[:, 0] * (1.0 + 1e-6) + 1e-10  # white-noise correction keeps the filter stable
    a = np.zeros((frames.shape[0], order + 1))
    a[:, 0] = 1.0
    err = r[:, 0].copy()
    for i in range(1, order + 1):
        k = -(r[:, i] + np.einsum("tj,tj->t", a[:, 1:i], r[:, i - 1 : 0 : -1])) / err
        a[:, 1:i] = a[:, 1:i] + k[:, None] * a[:, i - 1 : 0 : -1]
        a[:, i] = k
        err = err * (1.0 - k**2)
    return a, np.maximum(err, 1e-12)


def lpc_envelope_filter(x: np.ndarray, a: np.ndarray, gain: np.ndarray,
                        n_fft: int = 512, hop: int = 128) -> np.ndarray:
    """Shape ``x`` (N,) frame by frame with the all-pole envelopes ``gain / A(z)`` (a (T, p+1),
    gain (T,), one per :func:`stft` frame) in the STFT domain: unlike switching IIR filters
    this has no transients at frame boundaries."""
    spec = stft(x, n_fft, hop)
    n = min(len(spec), len(a))
    resp = gain[:n, None] / np.fft.rfft(a[:n], n=n_fft, axis=-1)  # (T, F) minimum-phase-like
    out = np.zeros_like(spec)
    out[:n] = spec[:n] * resp
    return istft(out, len(x), n_fft, hop)


def resonator_poly(freqs: np.ndarray, bws: np.ndarray) -> np.ndarray:
    """All-pole denominators for cascaded 2-pole resonators: freqs, bws (T, K) Hz ->
    ``(T, 2K+1)`` coefficients, built by vectorised polynomial products over frames."""
    r = np.exp(-np.pi * bws / SR)
    c1, c2 = -2.0 * r * np.cos(2 * np.pi * freqs / SR), r**2
    a = np.ones((freqs.shape[0], 1))
    for k in range(freqs.shape[1]):
        nxt = np.zeros((a.shape[0], a.shape[1] + 2))
        nxt[:, :-2] += a
        nxt[:, 1:-1] += a * c1[:, k : k + 1]
        nxt[:, 2:] += a * c2[:, k : k + 1]
        a = nxt
    return a


def smooth(x: np.ndarray, width: int, axis: int = 0) -> np.ndarray:
    """Moving average of odd-ish ``width`` along ``axis`` with edge padding (same length)."""
    if width <= 1:
        return x
    kernel = np.ones(width) / width
    pad = [(0, 0)] * x.ndim
    pad[axis] = (width // 2, width - 1 - width // 2)
    xp = np.pad(x, pad, mode="edge")
    return np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="valid"), axis, xp)


@lru_cache(maxsize=128)
def butter_sos(kind: str, cutoff: float | tuple[float, float], order: int = 4) -> np.ndarray:
    """Butterworth SOS at 16 kHz (``kind`` in lowpass/highpass/bandpass); cached, read-only."""
    return signal.butter(order, cutoff, btype=kind, fs=SR, output="sos")


def normalise(x: np.ndarray, rms_db: float) -> np.ndarray:
    """Scale to the given RMS level in dBFS, then soft-limit peaks below full scale."""
    rms = np.sqrt(np.mean(x**2)) + 1e-12
    y = x * (10 ** (rms_db / 20.0) / rms)
    peak = np.max(np.abs(y))
    return y * (0.95 / peak) if peak > 0.95 else y
