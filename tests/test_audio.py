"""sccl.audio: decoding from bytes, resampling, downmix, crops and collation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch

from sccl import audio
from tests.data_fixtures import encode, make_wave

SR = 16000


@pytest.fixture(scope="module")
def clip():
    wave = make_wave(np.random.default_rng(0), 1.0, SR)  # (16000,)
    return wave, encode(wave, SR, "flac")


@pytest.mark.parametrize("fmt", ["flac", "wav"])
def test_decode_matches_pcm16_source(fmt):
    wave = make_wave(np.random.default_rng(1), 0.5, SR)
    out = audio.decode(encode(wave, SR, fmt), sample_rate=SR)
    assert out.dtype == torch.float32 and out.shape == (len(wave),)
    assert np.abs(out.numpy() - wave).max() <= 1.0 / 32768 + 1e-7  # PCM16 quantisation only


def test_stereo_is_downmixed_by_mean():
    stereo = make_wave(np.random.default_rng(2), 0.25, SR, channels=2)  # (T, 2)
    out = audio.decode(encode(stereo, SR, "wav"), sample_rate=SR)
    assert out.shape == (stereo.shape[0],)
    assert np.abs(out.numpy() - stereo.mean(axis=1)).max() < 2.0 / 32768


def test_resample_keeps_duration_and_frequency():
    t = np.arange(8000) / 8000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)  # 1 s at 8 kHz
    out = audio.decode(encode(tone, 8000, "flac"), sample_rate=SR)
    assert out.shape == (SR,)
    spectrum = np.abs(np.fft.rfft(out.numpy()))
    assert abs(np.argmax(spectrum) * SR / len(out) - 440) <= 1.0


def test_random_crop_reads_the_right_window(clip):
    wave, data = clip
    full = audio.decode(data, sample_rate=SR)
    length = 4000
    starts = set()
    for u in (0.0, 0.3, 0.999):
        crop, n = audio.random_crop(data, sample_rate=SR, length=length, u=u)
        off = int(u * (SR - length + 1))
        assert crop.shape == (length,) and n == length
        assert torch.equal(crop, full[off : off + length])  # partial read == slice of full
        starts.add(off)
    assert len(starts) == 3
    a, _ = audio.random_crop(data, sample_rate=SR, length=length, u=0.42)
    b, _ = audio.random_crop(data, sample_rate=SR, length=length, u=0.42)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="u must be"):
        audio.random_crop(data, sample_rate=SR, length=length, u=1.0)


def test_random_crop_with_resampling_matches_full_resample():
    wave = make_wave(np.random.default_rng(3), 1.0, 22050)
    data = encode(wave, 22050, "flac")
    full = audio.decode(data, sample_rate=SR)
    crop, n = audio.random_crop(data, sample_rate=SR, length=3200, u=0.5)
    off = int(0.5 * (len(full) - 3200 + 1))
    assert n == 3200
    # The read starts on a common sample grid: equal to the slice of the whole file resampled,
    # up to float rounding and the resampler's edge effects in the last few samples.
    err = (crop[:-50] - full[off : off + 3150]).abs().max()
    assert err < 1e-4, err


def test_short_clip_is_zero_padded_with_real_length():
    wave = make_wave(np.random.default_rng(4), 0.1, SR)  # 1600 samples
    data = encode(wave, SR, "flac")
    crop, n = audio.random_crop(data, sample_rate=SR, length=4000, u=0.7)
    assert n == 1600 and crop.shape == (4000,)
    assert torch.all(crop[1600:] == 0) and crop[:1600].abs().sum() > 0


def test_head_crop_first_seconds_and_full_length(clip):
    wave, data = clip
    full = audio.decode(data, sample_rate=SR)
    head, n = audio.head_crop(data, sample_rate=SR, length=5000)
    assert n == 5000 and torch.equal(head, full[:5000])
    whole, n = audio.head_crop(data, sample_rate=SR, length=None)
    assert n == SR and torch.equal(whole, full)
    long, n = audio.head_crop(data, sample_rate=SR, length=2 * SR)
    assert n == SR and long.shape == (2 * SR,) and torch.all(long[SR:] == 0)


def test_collate_pads_and_masks():
    waves = [torch.ones(5), torch.ones(3), torch.ones(7)]
    wave, mask = audio.collate(waves)
    assert wave.shape == (3, 7) and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == [5, 3, 7]
    assert torch.equal(wave != 0, mask)
    wave, mask = audio.collate(waves, [5, 2, 7], length=6)  # explicit lengths, cut to 6
    assert wave.shape == (3, 6) and mask.sum(dim=1).tolist() == [5, 2, 6]
    same = [torch.ones(4), torch.tensor([1.0, 1.0, 0.0, 0.0])]  # equal lengths: fast path
    wave, mask = audio.collate(same, [4, 2])
    assert torch.equal(wave, torch.stack(same)) and mask.sum(dim=1).tolist() == [4, 2]
    with pytest.raises(ValueError):
        audio.collate([])


def test_undecodable_bytes_raise_decode_error():
    with pytest.raises(audio.AudioDecodeError):
        audio.decode(b"definitely not audio" * 20, sample_rate=SR)
    with pytest.raises(audio.AudioDecodeError):
        audio.random_crop(b"", sample_rate=SR, length=100, u=0.0)


def test_float_wav_with_nan_is_rejected():
    buf = io.BytesIO()
    sf.write(buf, np.array([0.1, np.nan, 0.2] * 100, dtype=np.float32), SR, format="WAV",
             subtype="FLOAT")
    with pytest.raises(audio.AudioDecodeError, match="NaN"):
        audio.random_crop(buf.getvalue(), sample_rate=SR, length=100, u=0.0)


def test_crop_read_equals_soundfile_read():
    rng = np.random.default_rng(0)
    for fmt in ("flac", "wav"):
        data = encode(make_wave(rng, 1.3, SR), SR, fmt)  # 20800 frames
        for u, length in ((0.0, 4000), (0.4, 4000), (0.9, 4000), (0.5, 30000)):
            offset = int(u * (20800 - length + 1)) if length < 20800 else 0
            with sf.SoundFile(io.BytesIO(data)) as f:
                f.seek(offset)
                ref = torch.from_numpy(f.read(length, dtype="float32"))
            out = torch.full((length,), 5.0)
            n = audio.crop_into(data, out, sample_rate=SR, u=u)
            assert n == len(ref) and torch.equal(out[:n], ref) and not out[n:].any()
