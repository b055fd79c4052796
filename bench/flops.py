"""Analytic FLOP count of one SupConModel forward pass, for MFU (model FLOPs utilisation).

A multiply-add counts 2 FLOPs. Only matrix products and convolutions are counted, the ops
that run on the tensor cores and bound the step; norms, activations, softmax, dropout,
residual adds, the hidden-state average and the masked mean are O(F*H) each against the
O(F*H^2) counted below and are left out (as torch.utils.flop_counter does). Padding is
computed like real audio, so the count depends on the padded length only.

For one utterance of T samples, with the encoder's Wav2Vec2Config (XLS-R 300M: conv_dim
7 x 512, kernels 10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2, H = 1024, L = 24 layers, I = 4096,
positional conv K = 128 in G = 16 groups) and the head's projection size P (256):

    conv feature encoder   sum_i 2 * F_i * C_i * C_{i-1} * k_i,  C_0 = 1,
                           F_i = floor((F_{i-1} - k_i) / s_i) + 1,  F_0 = T;  F = F_7
    feature projection     2 * F * C_7 * H                           (Linear 512 -> 1024)
    positional conv        2 * F_pos * H * (H / G) * K,  F_pos = F + 2*floor(K/2) - K + 1
    per transformer layer  8 * F * H^2        q, k, v and output projections
                         + 4 * F^2 * H        scores Q K^T and the weighted sum A V
                         + 4 * F * H * I      feed-forward H -> I -> H
    projection head        2 * F * H * P                             (Linear 1024 -> 256)

    forward(T) = conv + projection + positional conv + L * layer + head
    train step(T) = 3 * forward(T)        (backward = 2 x forward: gradients with respect to
                                           both the activations and the weights)

The training count is the usual MFU convention: it leaves out the recomputation of gradient
checkpointing (the hardware then does 4x forward) and slightly over-counts the first conv
layer, whose input (the wave) needs no gradient. The SupCon loss (2 * B * (B + |Q|) * P per
batch) is not part of the model and is reported separately.

Other families: HuBERT has the same counted ops; data2vec-audio's positional embedding is a
stack of num_conv_pos_embeddings convs of odd kernel conv_pos_kernel_size (each
2 * F * H * (H / G) * kernel); WavLM adds a gated relative position bias per layer
(O(F^2 * heads), about 0.2 % at the tiny preset's width), which is not counted.

XLS-R 300M at 16 kHz: 4 s (F = 199) -> 147.4 GFLOP forward per utterance, 10 s (F = 499)
-> 384.1 GFLOP; tests/test_flops.py checks the formula against
torch.utils.flop_counter.FlopCounterMode.
"""

from __future__ import annotations

from typing import Any


def conv_lengths(num_samples: int, kernels: tuple[int, ...], strides: tuple[int, ...]) -> list[int]:
    """Output length of every conv layer for an input of num_samples (empty input -> error)."""
    if len(kernels) != len(strides):
        raise ValueError(f"conv_kernel has {len(kernels)} layers but conv_stride {len(strides)}")
    lengths, length = [], int(num_samples)
    for k, s in zip(kernels, strides, strict=True):
        length = (length - k) // s + 1
        if length < 1:
            raise ValueError(f"{num_samples} samples are too short for the conv stack "
                             f"(kernels {kernels})")
        lengths.append(length)
    return lengths


def forward_flops(config: Any, num_samples: int, proj_dim: int) -> dict[str, int]:
    """FLOPs of one utterance's forward pass, by part, plus "total" (formula: module docstring).

    config: a transformers Wav2Vec2Config (or any object with its attribute names);
    num_samples: padded wave length T; proj_dim: the projection head's output size P."""
    if num_samples < 1 or proj_dim < 1:
        raise ValueError(f"need num_samples >= 1 and proj_dim >= 1, got {num_samples}, {proj_dim}")
    c = config
    lengths = conv_lengths(num_samples, tuple(c.conv_kernel), tuple(c.conv_stride))
    conv, c_in = 0, 1
    for length, c_out, k in zip(lengths, c.conv_dim, c.conv_kernel, strict=True):
        conv += 2 * length * c_out * c_in * k
        c_in = c_out
    f, h, inter = lengths[-1], c.hidden_size, c.intermediate_size
    k, groups = c.num_conv_pos_embeddings, c.num_conv_pos_embedding_groups
    parts = {
        "conv_encoder": conv,
        "feature_projection": 2 * f * c_in * h,
        "positional_conv": _positional_flops(c, f, h, h // groups),
        "attention_projections": c.num_hidden_layers * 8 * f * h * h,
        "attention_scores": c.num_hidden_layers * 4 * f * f * h,
        "feed_forward": c.num_hidden_layers * 4 * f * h * inter,
        "head": 2 * f * h * proj_dim,
    }
    parts["total"] = sum(parts.values())
    parts["frames"] = f
    return parts


def _positional_flops(c: Any, f: int, h: int, per_group: int) -> int:
    """The convolutional positional embedding: one grouped conv of kernel
    num_conv_pos_embeddings (wav2vec2, HuBERT, WavLM; padding k // 2, so an even kernel gives
    one more output, which is dropped), or data2vec-audio's stack of num_conv_pos_embeddings
    convs of odd kernel conv_pos_kernel_size (output length f each)."""
    k = c.num_conv_pos_embeddings
    if getattr(c, "model_type", "") == "data2vec-audio":
        return k * 2 * f * h * per_group * c.conv_pos_kernel_size
    return 2 * (f + 2 * (k // 2) - k + 1) * h * per_group * k


def train_flops(config: Any, num_samples: int, proj_dim: int) -> int:
    """FLOPs of one utterance in a training step: 3 x forward (module docstring)."""
    return 3 * forward_flops(config, num_samples, proj_dim)["total"]


def loss_flops(batch: int, queue: int, proj_dim: int) -> int:
    """Forward FLOPs of the SupCon similarity matrix for a batch against batch + queue."""
    return 2 * batch * (batch + queue) * proj_dim


def model_flops(model: Any, num_samples: int) -> dict[str, int]:
    """forward_flops for a SupConModel (reads its encoder config and projection size)."""
    return forward_flops(model.encoder.config, num_samples, model.cfg.proj_dim)
