"""sccl.codec_aug: real codecs change the signal as they should, stay aligned, seeded, configurable."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.signal import correlate, lfilter

from sccl import codec_aug
from sccl.codec_aug import CodecConfig, augment
from sccl.config import ConfigError, field_docs, parse_config

SR = 16000


def _speech_like(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    """Coloured noise in bursts: not periodic, so a cross-correlation peak is unambiguous."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    x = lfilter([1.0], [1.0, -1.6, 0.8], rng.standard_normal(n))
    bursts = np.repeat(rng.random(n // 800 + 1) > 0.3, 800)[:n]
    return (0.3 * x / max(np.abs(x).max(), 1e-9) * bursts).astype(np.float32)


def _lag_and_corr(y: np.ndarray, x: np.ndarray, span: int = 2000) -> tuple[int, float]:
    """Lag of y behind x with the highest correlation (within +-span) and the normalised
    correlation at lag 0."""
    c = correlate(y, x, mode="full", method="fft")
    mid = len(x) - 1
    lag = int(np.argmax(c[mid - span : mid + span + 1])) - span
    return lag, float(c[mid] / np.sqrt(np.dot(x, x) * np.dot(y, y)))


@pytest.mark.parametrize(("codec", "level"), [("mp3", 0.5), ("mp3", 0.85), ("mp3", 0.95),
                                              ("vorbis", 0.0),
                                              ("vorbis", 1.0), ("opus", 0.8), ("opus", 0.96)])
def test_lossy_codecs_change_the_signal_and_keep_length_and_timing(codec, level):
    x = _speech_like()
    y = getattr(codec_aug, codec)(x, SR, level)
    assert y.dtype == np.float32 and y.shape == x.shape
    lag, corr = _lag_and_corr(y, x)
    assert lag == 0 and corr > 0.9  # aligned with the input ...
    assert np.abs(y - x).max() > 1e-3  # ... and really coded


def test_mp3_delay_is_found_and_cut():
    # At 16 kbps LAME resamples internally and libsndfile returns its delay and padding too:
    # without the cross-correlation step the output would lag the input by ~1100 samples.
    x = _speech_like()
    raw = codec_aug._round_trip(x, SR, "MP3", "MPEG_LAYER_III", compression_level=0.95,
                             bitrate_mode="CONSTANT")
    assert len(raw) > len(x) and _lag_and_corr(raw[: len(x)], x)[0] > 500
    assert _lag_and_corr(codec_aug.mp3(x, SR, 0.95), x)[0] == 0


def test_bitrate_follows_the_level():
    x = _speech_like()
    for fmt, sub, extra in (("MP3", "MPEG_LAYER_III", {"bitrate_mode": "CONSTANT"}),
                            ("OGG", "VORBIS", {}), ("OGG", "OPUS", {})):
        sizes = []
        for level in (0.2, 0.6, 0.95):
            buf = codec_aug.io.BytesIO()
            codec_aug.sf.write(buf, x, SR, format=fmt, subtype=sub, compression_level=level, **extra)
            sizes.append(buf.tell())
        assert sizes[0] > sizes[1] > sizes[2], (sub, sizes)


def test_g711_quantisation_error_is_bounded():
    x = _speech_like()
    for fn in (codec_aug.mulaw, codec_aug.alaw):
        y = fn(x, SR)
        err = np.abs(y - x)
        # 8-bit logarithmic companding: within ~3 % of the value, plus the finest step near 0
        assert (err <= 0.035 * np.abs(x) + 5e-4).all() and err.max() > 1e-4
    assert not np.array_equal(codec_aug.mulaw(x, SR), codec_aug.alaw(x, SR))


def _band_energy(x: np.ndarray, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SR)
    return float(spec[(f >= lo) & (f < hi)].sum() / spec.sum())


def test_telephone_keeps_the_phone_band_only():
    white = np.random.default_rng(1).uniform(-0.5, 0.5, SR).astype(np.float32)
    assert _band_energy(white, 4000, 8000) > 0.4
    narrow = codec_aug.telephone(white, SR, bandpass=False)
    band = codec_aug.telephone(white, SR, bandpass=True)
    assert narrow.shape == band.shape == white.shape and band.dtype == np.float32
    # half the input's energy lay above 4 kHz; resample_poly's filter rolls off by 4.5 kHz
    assert _band_energy(narrow, 4500, 8000) < 1e-4 and _band_energy(band, 4000, 8000) < 1e-5
    assert _band_energy(band, 0, 200) < 0.01 * _band_energy(narrow, 0, 200)  # the 300 Hz edge
    tone = (0.5 * np.sin(2 * np.pi * 1000 * np.arange(SR) / SR)).astype(np.float32)
    lag, corr = _lag_and_corr(codec_aug.telephone(tone, SR), tone, span=4)
    assert lag == 0 and corr > 0.99  # in-band audio passes, in time


def _batch(lengths, T=4000, scale=0.3):
    wave = torch.zeros(len(lengths), T)
    for i, n in enumerate(lengths):
        if n > 0:
            wave[i, :n] = torch.from_numpy(scale / 0.3 * _speech_like(n / SR, seed=i))
    return wave


MIX = CodecConfig(mp3_p=0.2, vorbis_p=0.2, opus_p=0.2, mulaw_p=0.2, alaw_p=0.2, telephone_p=0.5)


def test_augment_is_seeded_keeps_padding_float32_and_clips():
    lengths = [4000, 3000, 1, 10, 0, 4000, 2500, 4000]
    wave = _batch(lengths, scale=1.5)  # peaks above full scale
    wave[5] = 0.0  # silence
    runs = []
    for seed in (3, 3, 4):
        w = wave.clone()
        assert augment(MIX, w, lengths, SR, np.random.default_rng(seed)) == []
        runs.append(w)
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    out = runs[0]
    assert out.dtype == torch.float32 and out.abs().max() <= 1.0
    for i, n in enumerate(lengths):
        assert (out[i, n:] == 0).all()  # padding untouched
    assert not torch.equal(out[:3], wave[:3])


def test_probabilities_zero_is_identity_and_default_is_off():
    assert not CodecConfig().enabled
    wave = _batch([4000, 2000])
    out = wave.clone()
    assert augment(CodecConfig(), out, [4000, 2000], SR, np.random.default_rng(0)) == []
    assert torch.equal(out, wave)


def test_a_failing_codec_passes_the_clip_through_and_is_reported():
    # libopus cannot encode at 22.05 kHz: a real encoder failure
    wave = _batch([4000, 4000])
    out = wave.clone()
    failed = augment(CodecConfig(opus_p=1.0), out, [4000, 4000], 22050,
                     np.random.default_rng(0))
    assert [(i, name) for i, name, _ in failed] == [(0, "opus"), (1, "opus")]
    assert torch.equal(out, wave)


def test_bad_values_are_one_line_errors_naming_the_key(tmp_path):
    from sccl.train_supcon import TrainConfig

    base = ["--data.train_shards", "x", "--run.dir", str(tmp_path)]
    for argv, key in ((["--data.codec.mp3_p", "1.5"], "mp3_p"),
                      (["--mp3_p", "0.6", "--opus_p", "0.6"], "mp3_p + vorbis_p"),
                      (["--data.codec.mp3_level_max", "1.0"], "mp3_level_max"),
                      (["--opus_p", "0.1", "--data.sample_rate", "22050"], "codec.opus_p"),
                      (["--data.codec.telephone_p", "x"], "data.codec.telephone_p")):
        with pytest.raises(ConfigError, match=re.escape(key)) as err:
            parse_config(TrainConfig, base + argv)
        assert "\n" not in str(err.value)
    cfg = parse_config(TrainConfig, base + ["--telephone_p", "0.3"])
    assert cfg.data.codec.telephone_p == 0.3 and cfg.data.codec.enabled
    docs = field_docs(CodecConfig)
    assert [f.name for f in fields(CodecConfig) if not docs.get(f.name)] == []


def test_a_codec_this_soundfile_cannot_encode_is_refused_at_start(monkeypatch, tmp_path):
    # e.g. soundfile < 0.13 (no compression_level) or a libsndfile without MPEG: the run must
    # not train silently without the codec it asked for
    from sccl.train_supcon import TrainConfig

    def unsupported(x, sr, level):
        raise TypeError("write() got an unexpected keyword argument 'compression_level'")

    monkeypatch.setitem(codec_aug._APPLY, "mp3", unsupported)
    base = ["--data.train_shards", "x", "--run.dir", str(tmp_path)]
    with pytest.raises(ConfigError, match=r"codec\.mp3_p > 0 but soundfile .* cannot encode mp3"):
        parse_config(TrainConfig, base + ["--data.codec.mp3_p", "0.1"])
    assert parse_config(TrainConfig, base + ["--data.codec.opus_p", "0.1"]).data.codec.opus_p


def test_example_mix_config_loads():
    from sccl.train_supcon import TrainConfig

    path = Path(codec_aug.__file__).parent / "configs" / "codec_augmentation.yaml"
    cfg = parse_config(TrainConfig, ["--config", str(path), "--data.train_shards", "x"])
    c = cfg.data.codec
    assert c.enabled and 0 < sum(c.codec_p) <= 1 and cfg.data.rawboost
