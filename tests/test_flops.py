"""bench/flops.py against torch.utils.flop_counter.FlopCounterMode on real SupConModels."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import Wav2Vec2Config

import sccl.model as model_module
from bench.flops import conv_lengths, forward_flops, loss_flops, model_flops, train_flops
from sccl.model import ModelConfig, SupConModel


def _model(monkeypatch, preset: str) -> SupConModel:
    """Eager attention: FlopCounterMode counts its matmuls on CPU (CPU flash SDPA has no
    formula). "xlsr-1layer" = the full XLS-R 300M widths with one transformer layer."""
    if preset == "xlsr-1layer":
        kwargs = {**model_module._XLSR_300M, "num_hidden_layers": 1}
        monkeypatch.setitem(model_module.PRESETS, preset, model_module.Preset("wav2vec2", kwargs))
    torch.manual_seed(0)
    return SupConModel(ModelConfig(encoder=preset, attn_implementation="eager"))


def _counted(model: SupConModel, batch: int, samples: int, backward: bool) -> dict:
    wave = torch.randn(batch, samples)
    mask = torch.ones(batch, samples, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        z = model(wave, mask)
        if backward:
            z.sum().backward()
    return counter.get_flop_counts()


@pytest.mark.parametrize(("preset", "samples"), [("tiny", 8000), ("tiny", 16000),
                                                 ("xlsr-1layer", 16000), ("tiny-hubert", 16000),
                                                 ("tiny-data2vec", 16000)])
def test_forward_matches_flop_counter(monkeypatch, preset, samples):
    model = _model(monkeypatch, preset)
    counts = _counted(model, 2, samples, backward=False)
    expected = model_flops(model, samples)
    assert sum(counts["Global"].values()) == 2 * expected["total"]


def test_training_is_three_forwards(monkeypatch):
    """fwd + bwd = 3 x fwd, once torch 2.11's grouped-conv backward formula (it ignores
    `groups`, over-counting the positional conv's input gradient G times) is replaced by the
    true 2 x forward of that conv."""
    model = _model(monkeypatch, "tiny")
    counts = _counted(model, 2, 8000, backward=True)
    pos = counts["SupConModel.encoder.encoder.pos_conv_embed.conv"]
    pos_fwd = pos[torch.ops.aten.convolution]
    pos_bwd = pos[torch.ops.aten.convolution_backward]
    assert pos_bwd > 2 * pos_fwd  # the counter's over-count is still there (else drop this fix)
    total = sum(counts["Global"].values()) - pos_bwd + 2 * pos_fwd
    assert total == 2 * train_flops(model.encoder.config, 8000, model.cfg.proj_dim)


def test_xlsr_300m_reference_numbers():
    from sccl.model import _XLSR_300M

    config = Wav2Vec2Config(**_XLSR_300M)
    four, ten = forward_flops(config, 64000, 256), forward_flops(config, 160000, 256)
    assert (four["frames"], ten["frames"]) == (199, 499)  # 50 frames/s, receptive field 400
    assert round(four["total"] / 1e9, 1) == 147.4 and round(ten["total"] / 1e9, 1) == 384.1
    # The feed-forward and the projections dominate at 4 s; attention scores grow as F^2.
    assert four["feed_forward"] > four["attention_projections"] > four["conv_encoder"]
    assert ten["attention_scores"] / four["attention_scores"] == pytest.approx((499 / 199) ** 2)


def test_helpers_and_errors():
    kernels, strides = (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)
    assert conv_lengths(400, kernels, strides) == [79, 39, 19, 9, 4, 2, 1]
    with pytest.raises(ValueError, match="too short"):
        conv_lengths(399, kernels, strides)
    with pytest.raises(ValueError, match="proj_dim"):
        forward_flops(Wav2Vec2Config(), 16000, 0)
    assert loss_flops(32, 8192, 256) == 2 * 32 * (32 + 8192) * 256
