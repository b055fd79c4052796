"""RawBoost data augmentation, batched in torch so one code path runs in CPU workers and on GPU.

Implemented from the published algorithm description (Tak et al., "RawBoost: a raw data
boosting and augmentation method applied to automatic speaker verification anti-spoofing",
ICASSP 2022). Three noise types, each drawn independently per utterance:

- LnL, linear and non-linear convolutive noise: y = sum_{j=1..N_f} g_j * (h_j conv x^j), where
  every h_j is a cascade of `n_bands` FIR notch (band-stop) filters with random centre
  frequency, bandwidth and odd length, normalised to a peak response of 1 and scaled by a gain
  G_j in dB; the non-linear terms (j >= 2) are attenuated by a further random bias in dB. The
  result is rescaled to the input's peak amplitude.
- SSI, stationary signal-independent noise: white noise coloured by one random multi-band
  notch filter, added at a random SNR in [snr_min, snr_max] dB.
- ISD, impulsive signal-dependent noise: a random share (uniform in [0, P] %) of the samples
  gets x[n] * g_sd * v with v the product of two uniform draws in [-1, 1].

Schedule (the study's, docs/study.md): with probability `p` an utterance is augmented at all; an
augmented utterance always gets LnL, then SSI with probability `ssi_p`, then ISD with
probability `isd_p`.

Filtering is an FFT convolution with zero-phase (centred) kernels, so the output stays aligned
with the input and its attention mask; padding stays exactly zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class RawBoostConfig:
    """RawBoost parameters; defaults are the study's (docs/study.md)."""

    p: float = 0.7
    """Probability that an utterance is augmented at all."""
    sample_rate: int = 16000
    """Sample rate of the waves (Hz)."""
    n_bands: int = 5
    """Notch filters in each cascade of the multi-band filters (shared by LnL and SSI)."""
    min_freq: float = 20.0
    """Lowest centre frequency of a notch filter (Hz)."""
    max_freq: float = 8000.0
    """Highest centre frequency of a notch filter (Hz)."""
    min_bw: float = 100.0
    """Smallest notch filter bandwidth (Hz)."""
    max_bw: float = 1000.0
    """Largest notch filter bandwidth (Hz)."""
    min_coeff: int = 10
    """Shortest FIR filter (taps; made odd)."""
    max_coeff: int = 100
    """Longest FIR filter (taps; made odd)."""
    min_gain_db: float = 0.0
    """Lowest filter gain G (dB)."""
    max_gain_db: float = 0.0
    """Highest filter gain G (dB)."""
    n_f: int = 5
    """LnL: polynomial order N_f (terms x, x^2, ..., x^N_f)."""
    min_bias_db: float = 5.0
    """LnL: least extra attenuation of the non-linear terms (dB)."""
    max_bias_db: float = 20.0
    """LnL: most extra attenuation of the non-linear terms (dB)."""
    ssi_p: float = 0.5
    """SSI: probability of adding filtered noise."""
    snr_min: float = 10.0
    """SSI: lowest signal-to-noise ratio (dB)."""
    snr_max: float = 40.0
    """SSI: highest signal-to-noise ratio (dB)."""
    isd_p: float = 0.5
    """ISD: probability of adding impulsive noise."""
    isd_max_percent: float = 10.0
    """ISD: P, at most this % of samples get impulses."""
    isd_g_sd: float = 2.0
    """ISD: scale of the impulses' amplitudes (g_sd)."""

    def __post_init__(self) -> None:
        for name in ("p", "ssi_p", "isd_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"RawBoostConfig.{name} must be in [0, 1], got "
                                 f"{getattr(self, name)}")
        pairs = [("min_freq", "max_freq"), ("min_bw", "max_bw"), ("min_coeff", "max_coeff"),
                 ("min_gain_db", "max_gain_db"), ("min_bias_db", "max_bias_db"),
                 ("snr_min", "snr_max")]
        for lo, hi in pairs:
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"RawBoostConfig.{lo} > {hi}: "
                                 f"{getattr(self, lo)} > {getattr(self, hi)}")
        if self.min_coeff < 1 or self.n_bands < 1 or self.n_f < 1 or self.sample_rate <= 0:
            raise ValueError("RawBoostConfig needs min_coeff, n_bands, n_f, sample_rate >= 1")
        if not 0.0 <= self.isd_max_percent <= 100.0:
            raise ValueError("RawBoostConfig.isd_max_percent must be in [0, 100], got "
                             f"{self.isd_max_percent}")


def _fast_size(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n: FFT lengths that pocketfft/cuFFT handle quickly."""
    best = 1 << max(0, (n - 1).bit_length())
    f5 = 1
    while f5 < best:
        f35 = f5
        while f35 < best:
            m = f35
            while m < n:
                m *= 2
            best = min(best, m)
            f35 *= 3
        f5 *= 5
    return best


def _uniform(lo: float, hi: float, n: int, gen, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


class RawBoost:
    """Batched RawBoost. `RawBoost(cfg).apply(wave (B, T), mask (B, T) bool, generator)`."""

    def __init__(self, cfg: RawBoostConfig | None = None):
        self.cfg = cfg or RawBoostConfig()
        c = self.cfg
        self._taps = c.max_coeff | 1  # common odd kernel length holding every band filter
        self._half = (self._taps - 1) // 2
        self._span = c.n_bands * self._half  # one-sided support of a cascade, samples

    # ------------------------------------------------------------------ filters
    def _band_kernels(self, n: int, gen, device) -> torch.Tensor:
        """(n, taps) centred windowed-sinc notch kernels with random band and odd length."""
        c, t = self.cfg, torch.arange(self._taps, device=device) - self._half  # (L,)
        nyq = c.sample_rate / 2
        fc = _uniform(c.min_freq, c.max_freq, n, gen, device)
        bw = _uniform(c.min_bw, c.max_bw, n, gen, device)
        length = torch.randint(c.min_coeff, c.max_coeff + 1, (n,), generator=gen, device=device)
        half = (length // 2).unsqueeze(1)  # odd length 2*half+1 (even lengths rounded up)
        f1 = (fc - bw / 2).clamp(1.0, nyq - 2.0).unsqueeze(1) / c.sample_rate  # cycles/sample
        f2 = torch.maximum((fc + bw / 2).clamp(max=nyq - 1.0).unsqueeze(1) / c.sample_rate,
                           f1 + 1.0 / c.sample_rate)
        tt = t.unsqueeze(0).float()
        band_pass = 2 * f2 * torch.sinc(2 * f2 * tt) - 2 * f1 * torch.sinc(2 * f1 * tt)
        h = (t == 0).float() - band_pass  # ideal band-stop, (n, L)
        window = 0.54 + 0.46 * torch.cos(math.pi * tt / half.clamp(min=1))  # Hamming, centred
        h = torch.where(tt.abs() <= half, h * window, torch.zeros_like(h))
        return h / h.sum(dim=1, keepdim=True)  # unit gain at DC, as a notch filter should

    def _cascade_response(self, n: int, n_fft: int, gen, device, bias: torch.Tensor | None):
        """(n, n_fft//2+1) complex response of random notch cascades, zero-phase, gain G dB.

        `bias` (n,) dB is subtracted from the gain (LnL's non-linear terms).
        """
        c = self.cfg
        grid = 4096  # fine grid for the cascade's peak response
        resp = torch.ones(n, grid // 2 + 1, dtype=torch.complex64, device=device)
        for _ in range(c.n_bands):
            resp = resp * torch.fft.rfft(self._band_kernels(n, gen, device), n=grid)
        gain_db = _uniform(c.min_gain_db, c.max_gain_db, n, gen, device)
        if bias is not None:
            gain_db = gain_db - bias
        scale = 10.0 ** (gain_db / 20) / resp.abs().amax(dim=1).clamp(min=1e-8)
        taps = torch.fft.irfft(resp, n=grid)[:, : 2 * self._span + 1] * scale.unsqueeze(1)
        # Rotate so tap `span` (the cascade's centre) sits at index 0: a zero-phase filter.
        big = torch.zeros(n, n_fft, device=device)
        big[:, : self._span + 1] = taps[:, self._span :]
        if self._span:
            big[:, -self._span :] = taps[:, : self._span]
        return torch.fft.rfft(big)

    # ------------------------------------------------------------------ noises
    def lnl(self, x: torch.Tensor, mask: torch.Tensor, gen) -> torch.Tensor:
        """LnL convolutive noise on x (n, T) float32 -> (n, T), peak matched to the input."""
        c, (n, T) = self.cfg, x.shape
        n_fft = _fast_size(T + self._span)
        y = torch.zeros(n, n_fft // 2 + 1, dtype=torch.complex64, device=x.device)
        for j in range(1, c.n_f + 1):
            bias = None if j == 1 else _uniform(c.min_bias_db, c.max_bias_db, n, gen, x.device)
            h = self._cascade_response(n, n_fft, gen, x.device, bias)
            y = y + h * torch.fft.rfft(x**j, n=n_fft)
        out = torch.fft.irfft(y, n=n_fft)[:, :T] * mask
        peak_in = x.abs().amax(dim=1, keepdim=True)
        peak_out = out.abs().amax(dim=1, keepdim=True).clamp(min=1e-8)
        return out * (peak_in / peak_out)

    def ssi(self, x: torch.Tensor, mask: torch.Tensor, gen) -> torch.Tensor:
        """x + coloured noise at a random SNR in [snr_min, snr_max] dB over the real samples."""
        c, (n, T) = self.cfg, x.shape
        n_fft = _fast_size(T + self._span)
        white = torch.randn(n, T, generator=gen, device=x.device)
        h = self._cascade_response(n, n_fft, gen, x.device, None)
        noise = torch.fft.irfft(h * torch.fft.rfft(white, n=n_fft), n=n_fft)[:, :T] * mask
        snr_db = _uniform(c.snr_min, c.snr_max, n, gen, x.device).unsqueeze(1)
        p_sig = (x * mask).pow(2).sum(dim=1, keepdim=True)
        p_noise = noise.pow(2).sum(dim=1, keepdim=True).clamp(min=1e-12)
        return x + noise * torch.sqrt(p_sig / p_noise / 10.0 ** (snr_db / 10))

    def isd(self, x: torch.Tensor, mask: torch.Tensor, gen) -> torch.Tensor:
        """x with impulses on a random share (uniform in [0, P] %) of the real samples."""
        c, (n, T) = self.cfg, x.shape
        share = _uniform(0.0, c.isd_max_percent / 100, n, gen, x.device).unsqueeze(1)
        hit = (torch.rand(n, T, generator=gen, device=x.device) < share) & mask
        v = (2 * torch.rand(n, T, generator=gen, device=x.device) - 1) * (
            2 * torch.rand(n, T, generator=gen, device=x.device) - 1)
        return x + torch.where(hit, c.isd_g_sd * x * v, torch.zeros_like(x))

    # ------------------------------------------------------------------ schedule
    def apply(self, wave: torch.Tensor, mask: torch.Tensor | None = None,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a batch: wave (B, T) any float dtype, mask (B, T) bool -> (B, T) same dtype.

        Randomness comes only from `generator` (on wave's device), so a seeded generator gives
        the same output on every run. Computation is in float32 (FFTs need it).
        """
        if wave.dim() != 2:
            raise ValueError(f"RawBoost.apply expects wave (B, T), got shape {tuple(wave.shape)}")
        if mask is None:
            mask = torch.ones_like(wave, dtype=torch.bool)
        if mask.shape != wave.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} != wave shape {tuple(wave.shape)}")
        c, B = self.cfg, wave.shape[0]
        mask = mask.bool()
        u = torch.rand(B, 3, generator=generator, device=wave.device)  # one draw per decision
        chosen = u[:, 0] < c.p
        if B == 0 or not bool(chosen.any()):
            return wave
        x = wave.float() * mask
        steps = [(chosen, self.lnl), (chosen & (u[:, 1] < c.ssi_p), self.ssi),
                 (chosen & (u[:, 2] < c.isd_p), self.isd)]
        for rows, fn in steps:
            idx = rows.nonzero().squeeze(1)
            if idx.numel():
                x[idx] = fn(x[idx], mask[idx], generator)
        out = torch.where(chosen.unsqueeze(1), x, wave.float())
        return out.to(wave.dtype)

    __call__ = apply
