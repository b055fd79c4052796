"""sccl.rawboost: batched LnL / SSI / ISD noise and the p = 0.7 / 0.5 / 0.5 schedule."""

from __future__ import annotations

import pytest
import torch

from sccl.rawboost import RawBoost, RawBoostConfig, _fast_size

SR = 16000


def _batch(b=8, t=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(b, t, generator=g)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, t // 2 :] = False  # a padded row
    return x * mask, mask


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_shapes_finite_and_padding_untouched():
    x, mask = _batch()
    y = RawBoost(RawBoostConfig(p=1.0, ssi_p=1.0, isd_p=1.0)).apply(x, mask, _gen(1))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all()
    assert torch.all(y[~mask] == 0)
    assert (y - x).abs().amax(dim=1).min() > 0  # every row augmented


def test_deterministic_by_generator_seed():
    x, mask = _batch()
    rb = RawBoost()
    a, b, c = (rb.apply(x, mask, _gen(s)) for s in (5, 5, 6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_p0_is_identity():
    x, mask = _batch()
    assert torch.equal(RawBoost(RawBoostConfig(p=0.0)).apply(x, mask, _gen(0)), x)


def test_share_of_augmented_rows_follows_p():
    x, mask = _batch(b=400, t=600)
    y = RawBoost(RawBoostConfig(p=0.7)).apply(x, mask, _gen(2))
    changed = ((y - x).abs().amax(dim=1) > 0).float().mean().item()
    assert 0.62 < changed < 0.78, changed


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtypes(dtype):
    x, mask = _batch(b=4, t=2000)
    y = RawBoost(RawBoostConfig(p=1.0, ssi_p=1.0, isd_p=1.0)).apply(x.to(dtype), mask, _gen(3))
    assert y.dtype == dtype and torch.isfinite(y.float()).all()


def test_notch_filter_cuts_its_band_and_keeps_dc():
    cfg = RawBoostConfig(min_coeff=100, max_coeff=100, min_bw=1000, max_bw=1000,
                         min_freq=3000, max_freq=5000)
    rb = RawBoost(cfg)
    g = _gen(4)
    h = rb._band_kernels(16, g, "cpu")  # (16, taps)
    # Replay the generator to learn each kernel's centre frequency.
    fc = cfg.min_freq + (cfg.max_freq - cfg.min_freq) * torch.rand(16, generator=_gen(4))
    n = 8000
    resp = torch.fft.rfft(h, n=n).abs()  # (16, n/2+1), bin = 2 Hz at 16 kHz
    centre = resp[torch.arange(16), (fc * n / SR).round().long()]
    assert torch.allclose(resp[:, 0], torch.ones(16), atol=1e-5)  # unit gain at DC
    assert centre.max() < 0.1, centre


def test_lnl_keeps_peak_and_changes_spectrum():
    x, mask = _batch(b=6)
    y = RawBoost().lnl(x, mask, _gen(5))
    assert torch.allclose(y.abs().amax(dim=1), x.abs().amax(dim=1), rtol=1e-4)
    assert torch.all(y[~mask] == 0)
    assert ((y - x).norm(dim=1) / x.norm(dim=1)).min() > 0.05


def test_ssi_snr_in_range():
    x, mask = _batch(b=64, t=3000)
    y = RawBoost().ssi(x, mask, _gen(6))
    noise = y - x
    snr = 10 * torch.log10(x.pow(2).sum(dim=1) / noise.pow(2).sum(dim=1))
    assert snr.min() >= 10 - 1e-3 and snr.max() <= 40 + 1e-3
    assert snr.max() - snr.min() > 15  # actually random over the range
    assert torch.all(noise[~mask] == 0)


def test_isd_touches_up_to_p_percent():
    x, mask = _batch(b=200, t=5000)
    y = RawBoost().isd(x, mask, _gen(7))
    touched = ((y != x) & mask).float().sum(dim=1) / mask.float().sum(dim=1)
    assert touched.max() <= 0.10 + 0.01  # share drawn uniformly in [0, P = 10 %]
    assert abs(touched.mean().item() - 0.05) < 0.01
    assert torch.all(y[~mask] == 0)
    ratio = ((y - x) / x)[y != x].abs()  # impulse = x * g_sd * v, |v| <= 1
    assert ratio.max() <= 2.0 + 1e-4


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="B, T"):
        RawBoost().apply(torch.zeros(10))
    with pytest.raises(ValueError, match="mask shape"):
        RawBoost().apply(torch.zeros(2, 10), torch.ones(2, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="p must be"):
        RawBoostConfig(p=1.5)


def test_fast_fft_size():
    for n in (1, 7, 1000, 64250, 160250):
        m = _fast_size(n)
        assert m >= n and m < 1.25 * n + 2
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        assert k == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_code_on_gpu():
    x, mask = _batch(b=4, t=3000)
    g = torch.Generator(device="cuda").manual_seed(0)
    y = RawBoost(RawBoostConfig(p=1.0)).apply(x.cuda(), mask.cuda(), g)
    assert y.device.type == "cuda" and torch.isfinite(y).all()
    assert torch.all(y[~mask.cuda()] == 0)
