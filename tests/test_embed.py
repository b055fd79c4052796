"""sccl/embed.py: the embedding window's limits and the manifest names it reads."""

from __future__ import annotations

import json
import types

import pytest

from sccl.embed import EmbedError, EmbedOptions, check_window, embed_share, read_shard_metadata
from sccl.model import ModelConfig, SupConModel


@pytest.fixture(scope="module")
def tiny():
    return SupConModel(ModelConfig(encoder="tiny", proj_dim=8)).eval()


def test_windows_under_one_encoder_frame_are_one_input_error(tiny):
    # 0.025 s = 400 samples at 16 kHz: the encoder's receptive field; a hop of 320 = one frame.
    check_window(EmbedOptions(crop="windows", seconds=0.025, hop_seconds=0.02), tiny, 16000)
    check_window(EmbedOptions(crop="full", seconds=0.001), tiny, 16000)  # no window at all
    with pytest.raises(ValueError, match=r"^seconds 0.001 is under one encoder frame's "
                                         r"receptive field: use >= 0.025 \(400 samples"):
        check_window(EmbedOptions(crop="first", seconds=0.001), tiny, 16000)
    with pytest.raises(ValueError, match=r"^hop_seconds 1e-05 is under one encoder frame: "
                                         r"use >= 0.02 \(320 samples"):
        check_window(EmbedOptions(crop="windows", seconds=1.0, hop_seconds=1e-5), tiny, 16000)
    # Stage 2 and evaluation reach it through embed_share, on every rank, before any loading:
    # an EmbedError (their one-line input error) naming the config key.
    data_cfg = types.SimpleNamespace(sample_rate=16000)
    with pytest.raises(EmbedError, match="^embed.seconds 0.001 is under") as err:
        embed_share(tiny, "/nonexistent", data_cfg, EmbedOptions(seconds=0.001), rank=0,
                    world_size=1)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["../outside.tar", "/etc/hostname", "..", ""])
def test_manifest_names_outside_the_shard_dir_are_never_read(tmp_path, name):
    shard_dir = tmp_path / "set"
    shard_dir.mkdir()
    (tmp_path / "outside.tar").write_bytes(b"not read")
    manifest = {"num_samples": 1, "shards": [{"name": name, "num_samples": 1}]}
    (shard_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EmbedError, match="is not a file name inside the directory"):
        read_shard_metadata(shard_dir)
