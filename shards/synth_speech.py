"""Speech-like source for the synthetic corpus: speakers, utterance plans, rendering.

An utterance is first *planned* on a 5 ms frame grid (F0 contour, voicing, formant tracks,
syllabic amplitude, fricative noise), then *rendered* to a waveform with a glottal-pulse
source (per-period jitter and shimmer, aspiration noise) through a time-varying cascade of
formant resonators, plus band-limited noise for fricatives and plosive bursts.
Bona fide audio is ``render(plan, speaker)``; several spoofing attacks re-render a modified
plan (flattened F0, smoothed formants, buzz source), others process the rendered waveform.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from scipy import signal

from shards.synth_dsp import SR, butter_sos, lpc_envelope_filter, resonator_poly, smooth

HOP = 80  # plan frame = 5 ms

# F1..F4 (Hz) of a few vowels for an adult male vocal tract; speakers scale them.
VOWELS = np.array([
    [730, 1090, 2440, 3400],  # a
    [270, 2290, 3010, 3700],  # i
    [300, 870, 2240, 3300],  # u
    [530, 1840, 2480, 3500],  # e
    [570, 840, 2410, 3300],  # o
    [660, 1720, 2410, 3400],  # ae
    [490, 1350, 1690, 3300],  # er
    [520, 1190, 2390, 3400],  # uh
], dtype=float)
NASAL = np.array([250, 1100, 2300, 3300], dtype=float)
BANDWIDTHS = np.array([70, 100, 140, 200], dtype=float)
# Fricative noise bands: "s"-like, "sh"-like, broadband plosive burst.
FRIC_BANDS = (("bandpass", (3800, 7600)), ("bandpass", (1900, 5200)), ("highpass", 400))


@dataclass(frozen=True)
class Speaker:
    """Voice parameters of one synthetic speaker (all drawn once per speaker id)."""

    f0: float  # base F0 (Hz)
    formant_scale: float  # vocal-tract length factor applied to the vowel table
    jitter: float  # relative per-period F0 perturbation (std)
    shimmer: float  # relative per-period amplitude perturbation (std)
    breath: float  # aspiration noise level relative to the pulses
    open_quotient: float  # share of each period with the glottis open
    rate: float  # syllables per second
    room_db: float  # room tone of this speaker's recordings, dB re speech RMS
    mic_eq: tuple[float, ...]  # microphone colouration, dB at 8 evenly spaced frequencies


def make_speaker(rng: np.random.Generator, female: bool) -> Speaker:
    """Draw a speaker; ``female`` picks higher F0 and a shorter vocal tract."""
    return Speaker(
        f0=float(rng.uniform(165, 250) if female else rng.uniform(85, 140)),
        formant_scale=float(rng.uniform(1.08, 1.2) if female else rng.uniform(0.9, 1.02)),
        jitter=float(rng.uniform(0.006, 0.02)),
        shimmer=float(rng.uniform(0.04, 0.1)),
        breath=float(rng.uniform(0.04, 0.15)),
        open_quotient=float(rng.uniform(0.45, 0.7)),
        rate=float(rng.uniform(3.5, 5.5)),
        room_db=float(rng.uniform(-46, -36)),
        mic_eq=tuple(float(v) for v in rng.uniform(-1.5, 1.5, 8)),
    )


@dataclass(frozen=True)
class Plan:
    """Frame-level description of one utterance; every array has T = n // HOP + 1 rows."""

    n: int  # samples
    f0: np.ndarray  # (T,) Hz, defined everywhere (voicing says where it sounds)
    voicing: np.ndarray  # (T,) 0..1
    formants: np.ndarray  # (T, 4) Hz
    bandwidths: np.ndarray  # (T, 4) Hz
    amp: np.ndarray  # (T,) amplitude of the voiced part
    fric: np.ndarray  # (T, 3) amplitudes of the FRIC_BANDS noises


def _syllable(p: dict, t: int, dur: int, spk: Speaker, rng: np.random.Generator) -> None:
    """Fill one consonant+vowel syllable of ``dur`` frames starting at frame ``t`` into ``p``."""
    kind = rng.choice(5, p=[0.25, 0.3, 0.2, 0.15, 0.1])  # none, fric, plosive, nasal, voiced fric
    onset = 0 if kind == 0 else int(dur * rng.uniform(0.2, 0.35))
    vowel = VOWELS[rng.integers(len(VOWELS))] * spk.formant_scale
    vowel = vowel * (1 + 0.04 * rng.standard_normal(4))
    on, nuc = slice(t, t + onset), slice(t + onset, t + dur)
    if kind in (1, 4):
        p["fric"][on, rng.integers(2)] = rng.uniform(0.5, 1.0)
        if kind == 4:
            p["voicing"][on], p["amp"][on] = 0.6, 0.25
    elif kind == 2:
        burst = min(4, onset)
        p["fric"][t + onset - burst : t + onset, 2] = np.linspace(1.2, 0.3, burst)
    elif kind == 3:
        p["voicing"][on], p["amp"][on] = 1.0, 0.35
        p["keys"].append((t + onset / 2, NASAL * spk.formant_scale))
    u = np.linspace(0, 1, dur - onset + 2)[1:-1]
    p["voicing"][nuc] = 1.0
    p["amp"][nuc] = np.sin(np.pi * u) ** 0.6 * rng.uniform(0.6, 1.0)
    p["keys"].append((t + onset + (dur - onset) / 2, vowel))


def plan_utterance(spk: Speaker, seconds: float, rng: np.random.Generator) -> Plan:
    """Plan an utterance of ``seconds``: words of 1-3 syllables, pauses, F0 declination."""
    n = int(round(seconds * SR))
    n_frames = n // HOP + 1
    p = {"voicing": np.zeros(n_frames), "amp": np.zeros(n_frames),
         "fric": np.zeros((n_frames, 3)), "keys": []}
    t = int(rng.uniform(0.05, 0.3) * SR / HOP)
    end = n_frames - int(rng.uniform(0.05, 0.3) * SR / HOP)
    accents = []
    while t < end:
        for s in range(int(rng.integers(1, 4))):
            dur = int(SR / HOP / spk.rate * rng.uniform(0.75, 1.3))
            if t + dur > end:
                break
            _syllable(p, t, dur, spk, rng)
            if s == 0 and rng.random() < 0.6:
                accents.append((t + dur / 2, rng.uniform(0.08, 0.25)))
            t += dur
        t += int(rng.uniform(0.08, 0.3) * SR / HOP) if rng.random() < 0.4 else 1
    if not p["keys"]:  # too short for a whole syllable: squeeze one in
        _syllable(p, max(0, end - 40), min(40, end), spk, rng)
    keys_t = np.array([k for k, _ in p["keys"]])
    keys_f = np.stack([f for _, f in p["keys"]])
    frames = np.arange(n_frames)
    formants = np.stack([np.interp(frames, keys_t, keys_f[:, i]) for i in range(4)], axis=1)
    return Plan(
        n=n, f0=_f0_contour(spk, n_frames, accents, rng),
        voicing=smooth(p["voicing"], 3), formants=smooth(formants, 7),
        bandwidths=np.tile(BANDWIDTHS * rng.uniform(0.85, 1.2, 4), (n_frames, 1)),
        amp=smooth(p["amp"], 3), fric=smooth(p["fric"], 4),
    )


def _f0_contour(spk: Speaker, n_frames: int, accents: list, rng: np.random.Generator) -> np.ndarray:
    """Declining F0 line with Gaussian accent bumps and slow drift -> (T,) Hz."""
    frames = np.arange(n_frames)
    contour = np.linspace(rng.uniform(1.08, 1.18), rng.uniform(0.82, 0.92), n_frames)
    for centre, height in accents:
        contour = contour + height * np.exp(-0.5 * ((frames - centre) / rng.uniform(8, 20)) ** 2)
    drift = 0.025 * np.sin(2 * np.pi * frames / rng.uniform(80, 200) + rng.uniform(0, 6.3))
    return spk.f0 * contour * (1 + drift) * rng.uniform(0.93, 1.07)


def glottal_source(
    f0: np.ndarray, spk: Speaker, rng: np.random.Generator, pulse: str = "rosenberg"
) -> np.ndarray:
    """Glottal flow derivative for a per-sample F0 ``f0`` (N,) with jitter/shimmer -> (N,)."""
    k = (np.cumsum(f0) / SR).astype(int)
    jit = 1.0 + spk.jitter * rng.standard_normal(k[-1] + 2)
    phase = np.cumsum(f0 * jit[k]) / SR
    k = phase.astype(int)
    frac = phase - k
    shim = 1.0 + spk.shimmer * rng.standard_normal(k[-1] + 2)
    if pulse == "saw":  # buzzy source: ramp with an abrupt reset every period
        flow = frac
    else:  # Rosenberg pulse: 2/3 of the open phase rising, 1/3 closing
        rise, fall = spk.open_quotient * 2 / 3, spk.open_quotient / 3
        flow = np.where(frac < rise, 0.5 * (1 - np.cos(np.pi * frac / rise)), 0.0)
        closing = (frac >= rise) & (frac < rise + fall)
        flow = np.where(closing, np.cos(0.5 * np.pi * (frac - rise) / fall), flow)
    # Derivative w.r.t. the period phase keeps the pulse height independent of F0.
    return np.diff(flow, prepend=flow[0]) * (SR / f0) * 0.05 * shim[k]


@lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """Fixed unit-RMS noises (5, 12 s): aspiration (> 1 kHz), the three FRIC_BANDS and pinkish
    room tone. Utterances read them at random offsets: much cheaper than filtering fresh
    noise for every utterance, and just as deterministic."""
    white = np.random.default_rng(20_260_000).standard_normal((5, _BANK))
    rows = [signal.sosfilt(butter_sos("highpass", 1000, 2), white[0])]
    rows += [signal.sosfilt(butter_sos(kind, cut), white[1 + b])
             for b, (kind, cut) in enumerate(FRIC_BANDS)]
    rows.append(signal.lfilter([1.0], [1.0, -0.9], white[4]) * 0.3 + white[4])
    bank = np.stack(rows)
    bank.flags.writeable = False
    return bank / np.sqrt(np.mean(bank**2, axis=1, keepdims=True))


_BANK = 12 * SR
_ASPIRATION, _ROOM = 0, 4


def bank_noise(rng: np.random.Generator, row: int, n: int) -> np.ndarray:
    """``n`` samples of noise-bank row ``row`` from a random offset, random sign -> (n,)."""
    if n > _BANK:
        raise ValueError(f"utterance of {n} samples exceeds the {_BANK}-sample noise bank")
    start = int(rng.integers(0, _BANK - n + 1))
    return _noise_bank()[row, start : start + n] * rng.choice([-1.0, 1.0])


def render(
    plan: Plan, spk: Speaker, rng: np.random.Generator, pulse: str = "rosenberg"
) -> np.ndarray:
    """Waveform (N,) of a plan spoken by ``spk`` (unnormalised level)."""
    pos = np.arange(plan.n) / HOP
    frames = np.arange(len(plan.f0))
    source = glottal_source(np.interp(pos, frames, plan.f0), spk, rng, pulse)
    asp = bank_noise(rng, _ASPIRATION, plan.n)
    # Aspiration is louder while the glottis is open (pulse-synchronous breathiness).
    open_share = np.abs(source) / (np.abs(source).max() + 1e-9)
    source = source + spk.breath * 0.3 * asp * (0.3 + open_share)
    source = source * np.interp(pos, frames, plan.voicing * plan.amp)
    # Formant cascade applied per 8 ms STFT frame (overlap-added, so no switching clicks);
    # DC gain normalised to 1.
    at = np.arange(-(-plan.n // 128) + 1) * 128 / HOP
    tracks = [np.stack([np.interp(at, frames, m[:, i]) for i in range(4)], axis=1)
              for m in (plan.formants, plan.bandwidths)]
    a = resonator_poly(*tracks)
    voiced = lpc_envelope_filter(source, a, a.sum(axis=1))
    level = np.sqrt(np.mean(voiced[np.interp(pos, frames, plan.voicing) > 0.5] ** 2) + 1e-12)
    fric = sum(bank_noise(rng, 1 + b, plan.n) * np.interp(pos, frames, plan.fric[:, b])
               for b in range(3))
    # A synthesiser's own faint noise floor: no output is digital silence.
    floor = bank_noise(rng, _ROOM, plan.n) * 10 ** (rng.uniform(-62, -48) / 20)
    return voiced + level * (0.3 * fric + floor)


@lru_cache(maxsize=256)
def _mic_fir(mic_eq: tuple[float, ...]) -> np.ndarray:
    """Linear-phase FIR (65 taps) for a speaker's microphone colouration, with a 70 Hz cut."""
    freqs = np.r_[0.0, 70.0, np.linspace(150, SR / 2, len(mic_eq))]
    gains = np.r_[0.0, 0.5, 10 ** (np.asarray(mic_eq) / 20)]
    return signal.firwin2(65, freqs, gains, fs=SR)


def record(x: np.ndarray, spk: Speaker, rng: np.random.Generator) -> np.ndarray:
    """What a microphone in a quiet room makes of ``x`` (N,): the speaker's colouration and
    coloured room tone (plus occasional mains hum). Bona fide audio goes through it; spoofs
    made by re-synthesis do not, unless they process the recorded signal."""
    y = signal.fftconvolve(x, _mic_fir(spk.mic_eq))[32 : 32 + len(x)]
    level = np.sqrt(np.mean(y**2)) * 10 ** ((spk.room_db + rng.uniform(-3, 3)) / 20)
    tone = bank_noise(rng, _ROOM, len(x)) * level
    if rng.random() < 0.3:
        t = np.arange(len(x)) / SR
        tone = tone + 2 * level * np.sin(2 * np.pi * rng.choice([50.0, 60.0]) * t)
    return y + tone


def flatten_plan(plan: Plan, f0_width: int, formant_width: int) -> Plan:
    """Over-smoothed copy of a plan, as statistical parametric TTS makes it: flat-ish F0,
    sluggish and broadened formants, compressed amplitude dynamics (low global variance)."""
    return replace(
        plan, f0=smooth(plan.f0, f0_width), formants=smooth(plan.formants, formant_width),
        bandwidths=plan.bandwidths * 1.4, amp=smooth(plan.amp, 9) ** 0.7,
        fric=smooth(plan.fric, 6) * 0.7,
    )


def steady_voice(spk: Speaker) -> Speaker:
    """The same speaker without jitter, shimmer or breath (a perfectly regular source)."""
    return replace(spk, jitter=0.0, shimmer=0.0, breath=0.005)
