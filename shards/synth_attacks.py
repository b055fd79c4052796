"""Spoofing "attacks" of the synthetic corpus: each turns a planned utterance into a spoof.

Every attack leaves a different artefact, standing in for the systems of ASVspoof 2019 LA:
phase reconstruction from magnitude (Griffin-Lim), channel-vocoder and LPC resynthesis,
band limitation with aliasing, over-smoothed F0 and formants, concatenation glitches, a
buzzy robotic source, harmonic-model resynthesis, cepstral smoothing, formant warping,
phase-vocoder time stretching, noise filling. Train/dev use A01-A06; eval uses A07-A19,
where A16 = A04 and A19 = A06 (as in the real set) and the others are new or harder
variants. Each attack costs at most a few tens of milliseconds for a 4 s utterance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from scipy import signal

from shards.synth_dsp import (
    SR,
    band_matrix,
    griffin_lim,
    istft,
    lpc,
    lpc_envelope_filter,
    smooth,
    stft,
    stft_frames,
)
from shards.synth_speech import HOP, Plan, Speaker, flatten_plan, render, steady_voice


@dataclass(frozen=True)
class Utterance:
    """A planned utterance, its speaker and its recorded bona fide rendering ``wave`` (N,)."""

    plan: Plan
    speaker: Speaker
    wave: np.ndarray


def _per_sample(plan: Plan, track: np.ndarray, n: int | None = None) -> np.ndarray:
    """Frame track (T,) -> per-sample values (n,) by linear interpolation."""
    n = plan.n if n is None else n
    return np.interp(np.arange(n) / HOP, np.arange(len(track)), track)


def _excitation(u: Utterance, rng: np.random.Generator, natural: bool) -> np.ndarray:
    """Unit-power vocoder excitation: pulses where voiced, white noise elsewhere -> (N,).

    ``natural`` adds jitter to the pulse train and aspiration noise to voiced parts (a
    mixed-excitation vocoder); otherwise it is a strictly periodic impulse train.
    """
    v = np.clip(_per_sample(u.plan, u.plan.voicing), 0, 1)
    if not natural:  # hard voiced/unvoiced decision
        v = (v > 0.5).astype(float)
    f0 = _per_sample(u.plan, u.plan.f0)
    if natural:
        wobble = 1 + u.speaker.jitter * rng.standard_normal(len(u.plan.f0))
        f0 = f0 * _per_sample(u.plan, wobble)
    phase = np.cumsum(f0) / SR
    pulses = np.diff(np.floor(phase), prepend=0.0) * np.sqrt(SR / f0)  # unit power
    if natural:
        pulses = (pulses + 0.35 * rng.standard_normal(u.plan.n)) / np.sqrt(1 + 0.35**2)
    return v * pulses + (1 - v) * rng.standard_normal(u.plan.n)


def gl_phase(u: Utterance, rng: np.random.Generator, n_fft=512, n_iter=(3, 6), mels=80,
             fmax=(6800, 7600)) -> np.ndarray:
    """A01/A07: TTS-style mel-spectrogram inversion: the magnitude is reduced to ``mels``
    bands up to ``fmax`` Hz and spread back (harmonics above ~1 kHz smear, nothing above
    fmax), phase from a few Griffin-Lim steps."""
    hop = n_fft // 4
    power = np.abs(stft(u.wave, n_fft, hop)) ** 2
    fb = band_matrix(mels, n_fft, fmax=float(round(rng.uniform(*fmax), -2)))  # (M, F)
    mag = np.sqrt((power @ fb.T) @ (fb / np.maximum(fb.sum(axis=0), 1e-9)))
    return griffin_lim(mag, len(u.wave), rng, int(rng.integers(*n_iter)), n_fft, hop)


def channel_vocoder(
    u: Utterance, rng: np.random.Generator, bands=20, natural=False, width=3
) -> np.ndarray:
    """A02/A10: band envelopes of the speech imposed on a pulse/noise carrier."""
    fb = band_matrix(bands)  # (K, F)
    fbn = fb / np.maximum(fb.sum(axis=0, keepdims=True), 1e-9)
    env = smooth(np.sqrt(np.abs(stft(u.wave)) ** 2 @ fb.T), width)  # (T, K)
    carrier = stft(_excitation(u, rng, natural))
    cenv = np.sqrt(np.abs(carrier) ** 2 @ fb.T) + 1e-9
    return istft(carrier * ((env / cenv) @ fbn), u.plan.n)


def smoothed_f0(u: Utterance, rng: np.random.Generator) -> np.ndarray:
    """A03: parametric-TTS style: flat, jitter-free F0 and sluggish formants."""
    return render(flatten_plan(u.plan, 61, 25), steady_voice(u.speaker), rng)


def lpc_resynth(
    u: Utterance, rng: np.random.Generator, order=16, natural=False, hold=2
) -> np.ndarray:
    """A04/A15/A16: LPC vocoder: frame-wise all-pole envelope driving a pulse/noise
    excitation; parameters held for ``hold`` 8 ms frames and gains quantised to 2 dB steps
    (a coarse parametric coder), unless ``hold`` is 1."""
    a, err = lpc(stft_frames(u.wave), order)
    gain = np.sqrt(err / np.sum(np.hanning(513)[:-1] ** 2))
    if hold > 1:
        keep = np.arange(len(a)) // hold * hold
        a, gain = a[keep], np.exp(np.round(np.log(gain[keep] + 1e-12) / 0.23) * 0.23)
    return lpc_envelope_filter(_excitation(u, rng, natural), a, gain)


def band_limit(u: Utterance, rng: np.random.Generator,
               rates=((1, 2), (11, 16), (3, 4))) -> np.ndarray:
    """A05: resampled through a lower rate with a short (aliasing) filter and back."""
    up, down = rates[rng.integers(len(rates))]
    win = ("kaiser", 2.0)
    low = signal.resample_poly(u.wave, up, down, window=win)
    y = signal.resample_poly(low, down, up, window=win)[: len(u.wave)]
    return np.pad(y, (0, len(u.wave) - len(y)))


def concat_glitch(u: Utterance, rng: np.random.Generator) -> np.ndarray:
    """A06/A19: units of 40-120 ms joined with dropped/repeated samples and gain steps."""
    x, pieces, start = u.wave, [], 0
    while start < len(x):
        stop = min(len(x), start + int(rng.uniform(0.04, 0.12) * SR))
        piece = x[start:stop] * 10 ** (rng.uniform(-3, 3) / 20)
        jump = int(rng.integers(32, 128))
        pieces.append(piece[jump:] if rng.random() < 0.5 else np.concatenate([piece[:jump], piece]))
        start = stop
    return np.concatenate(pieces)


def robotic_buzz(u: Utterance, rng: np.random.Generator) -> np.ndarray:
    """A08: monotone F0 and a sawtooth source: a robotic voice."""
    flat = replace(u.plan, f0=np.full_like(u.plan.f0, np.median(u.plan.f0)))
    return render(flat, steady_voice(u.speaker), rng, pulse="saw")


def harmonic_model(u: Utterance, rng: np.random.Generator, max_harm=40) -> np.ndarray:
    """A09: sum of phase-locked harmonics weighted by an LPC envelope, noise when unvoiced."""
    hop = 128
    a, err = lpc(stft_frames(u.wave, 512, hop), 16)
    f0 = _per_sample(u.plan, u.plan.f0)
    t_frames = np.arange(len(a))
    ks = np.arange(1, max_harm + 1)
    f0_frames = np.interp(t_frames * hop, np.arange(u.plan.n), f0)  # (T,)
    freqs = np.minimum(f0_frames[:, None] * ks, SR / 2 - 100)  # (T, H)
    z = np.exp(-2j * np.pi * freqs / SR)
    # Harmonic k of a unit-power pulse train has amplitude 2 sqrt(f0 / SR).
    gain = np.sqrt(err / np.sum(np.hanning(513)[:-1] ** 2)) * 2 * np.sqrt(f0_frames / SR)
    gain = gain[:, None]
    env = gain / np.abs(_polyval(a, z)) * (f0_frames[:, None] * ks < SR / 2 - 200)
    at = np.arange(u.plan.n) / hop
    amp = np.stack([np.interp(at, t_frames, env[:, h]) for h in range(max_harm)])  # (H, N)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voiced = np.einsum("hn,hn->n", amp, np.cos(ks[:, None] * phase[None, :]))
    v = np.clip(_per_sample(u.plan, u.plan.voicing), 0, 1)
    noise = lpc_resynth(u, rng) * (1 - v)
    return voiced * v + noise


def _polyval(a: np.ndarray, z: np.ndarray) -> np.ndarray:
    """A(z) = sum_i a[t, i] z^-i for each frame t: a (T, p+1), z (T, H) -> (T, H)."""
    out = np.zeros(z.shape, dtype=complex)
    for i in range(a.shape[1]):
        out += a[:, i : i + 1] * z**i
    return out


def cepstral_smooth(u: Utterance, rng: np.random.Generator) -> np.ndarray:
    """A11: harmonic fine structure flattened (log-spectral liftering), then a mel-GL
    waveform generator (the A01 back-end, as the real A11 used Griffin-Lim)."""
    spec = stft(u.wave)
    logmag = np.log(np.abs(spec) + 1e-7)
    cep = np.fft.irfft(logmag, axis=1)
    keep = int(rng.integers(24, 40))
    cep[:, keep:-keep] = 0.0
    env = np.fft.rfft(cep, axis=1).real
    mix = rng.uniform(0.35, 0.6)
    smoothed = istft(np.exp(env + mix * (logmag - env)) * np.exp(1j * np.angle(spec)), u.plan.n)
    return gl_phase(replace(u, wave=smoothed), rng, n_iter=(3, 5), fmax=(7000, 7800))


def formant_warp(u: Utterance, rng: np.random.Generator) -> np.ndarray:
    """A12: voice-conversion-like frequency warping of the magnitude, phase re-estimated."""
    spec = stft(u.wave)
    w = rng.uniform(1.05, 1.12) ** rng.choice([-1, 1])
    bins = np.arange(spec.shape[1])
    mag = np.stack([np.interp(bins / w, bins, row) for row in np.abs(spec)])
    phase = np.exp(1j * np.angle(spec))
    return griffin_lim(mag, u.plan.n, rng, 2, phase=phase)


def unit_selection(u: Utterance, rng: np.random.Generator) -> np.ndarray:
    """A13: units taken from three renderings with different F0/timbre, 5 ms cross-fades."""
    takes = []
    for _ in range(3):
        spk = replace(u.speaker, f0=u.speaker.f0 * rng.uniform(0.94, 1.06))
        plan = replace(u.plan, formants=u.plan.formants * rng.uniform(0.96, 1.04),
                       f0=u.plan.f0 * spk.f0 / u.speaker.f0)
        takes.append(render(plan, spk, rng))
    n, fade = u.plan.n, 80
    bounds = np.cumsum(rng.uniform(0.1, 0.25, n // 1600 + 2) * SR).astype(int)
    spans = np.diff(np.r_[0, bounds, max(bounds[-1], n) + 1])
    choice = np.repeat(rng.integers(3, size=len(bounds) + 1), spans)[:n]
    weights = np.stack([smooth((choice == i).astype(float), fade) for i in range(3)])
    return np.einsum("kn,kn->n", weights, np.stack(takes))


def smoothed_gl(u: Utterance, rng: np.random.Generator) -> np.ndarray:
    """A14: A03-style over-smoothed rendering, then Griffin-Lim phase."""
    return gl_phase(replace(u, wave=smoothed_f0(u, rng)), rng, n_iter=(4, 6))


def pv_stretch(u: Utterance, rng: np.random.Generator) -> np.ndarray:
    """A17: phase-vocoder time stretch by 0.85-1.15 (phasiness, smeared transients)."""
    n_fft, hop = 512, 128
    spec = stft(u.wave, n_fft, hop)
    rate = rng.uniform(0.87, 1.15)
    pos = np.arange(0, len(spec) - 1, rate)
    lo = pos.astype(int)
    frac = (pos - lo)[:, None]
    mag = (1 - frac) * np.abs(spec[lo]) + frac * np.abs(spec[lo + 1])
    dphi = np.angle(spec[lo + 1]) - np.angle(spec[lo])
    expected = 2 * np.pi * hop * np.arange(spec.shape[1]) / n_fft
    dphi = expected + np.angle(np.exp(1j * (dphi - expected)))
    phase = np.cumsum(np.vstack([np.angle(spec[:1]), dphi[:-1]]), axis=0)
    return istft(mag * np.exp(1j * phase), len(pos) * hop, n_fft, hop)


def noise_fill(u: Utterance, rng: np.random.Generator) -> np.ndarray:
    """A18: low-energy bins floored with random-phase noise (a noisy vocoder's hiss), then
    resampled through a lower rate (A05's back-end)."""
    spec = stft(u.wave)
    mag = np.abs(spec)
    floor = mag.max(axis=1, keepdims=True) * 10 ** (rng.uniform(-68, -58) / 20)
    fill = mag < floor
    phase = np.where(fill, np.exp(2j * np.pi * rng.random(mag.shape)), np.exp(1j * np.angle(spec)))
    hissy = griffin_lim(np.maximum(mag, floor), u.plan.n, rng, 1, phase=phase)
    return band_limit(replace(u, wave=hissy), rng, rates=((11, 16), (3, 4)))


Attack = Callable[[Utterance, np.random.Generator], np.ndarray]

ATTACKS: dict[str, Attack] = {
    "A01": gl_phase,
    "A02": channel_vocoder,
    "A03": smoothed_f0,
    "A04": lpc_resynth,
    "A05": band_limit,
    "A06": concat_glitch,
    "A07": lambda u, r: gl_phase(u, r, n_fft=1024, n_iter=(5, 9), mels=100, fmax=(7200, 7900)),
    "A08": robotic_buzz,
    "A09": harmonic_model,
    "A10": lambda u, r: channel_vocoder(u, r, bands=32, natural=True, width=5),
    "A11": cepstral_smooth,
    "A12": formant_warp,
    "A13": unit_selection,
    "A14": smoothed_gl,
    "A15": lambda u, r: lpc_resynth(u, r, order=24, natural=True, hold=1),
    "A16": lpc_resynth,  # = A04, as in ASVspoof 2019
    "A17": pv_stretch,
    "A18": noise_fill,
    "A19": concat_glitch,  # = A06, as in ASVspoof 2019
}
TRAIN_ATTACKS = tuple(f"A{i:02d}" for i in range(1, 7))
EVAL_ATTACKS = tuple(f"A{i:02d}" for i in range(7, 20))


def apply_attack(name: str, utt: Utterance, rng: np.random.Generator) -> np.ndarray:
    """Spoofed waveform of ``utt`` by attack ``name`` (one of ATTACKS)."""
    if name not in ATTACKS:
        raise KeyError(f"unknown synthetic attack {name!r}; known: {sorted(ATTACKS)}")
    y = ATTACKS[name](utt, rng)
    if not np.all(np.isfinite(y)):
        raise FloatingPointError(f"attack {name} produced non-finite samples")
    return y
