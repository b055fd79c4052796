"""Every wav2vec2-family front-end: Stage 1 from a directory written by the family's own
transformers class, reload of the run, the per-family hidden-state aggregation, the error for
an unsupported family, and the parameter counts of the full-size presets (meta device)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file

from sccl.model import (
    CONFIG_NAME,
    PRESETS,
    ModelConfig,
    ModelLoadError,
    SupConModel,
    encoder_config,
)
from sccl.train_supcon import main
from tests.corpus import la19_shards

# family (config.json's model_type) -> (its reduced-width preset, transformers model class)
FAMILIES = {
    "wav2vec2": ("tiny", "Wav2Vec2Model"),
    "hubert": ("tiny-hubert", "HubertModel"),
    "wavlm": ("tiny-wavlm", "WavLMModel"),
    "data2vec-audio": ("tiny-data2vec", "Data2VecAudioModel"),
}
# Encoder parameters of the full presets, computed on the meta device (masked_spec_embed, the
# SpecAugment vector that exists only with masking on, not included). torchaudio 2.11's
# builders of the same released checkpoints give the same numbers (test below). Published
# totals they are compared with in the README: XLS-R 300M 315,438,720 with masked_spec_embed
# (the hub checkpoint); HuBERT Large 316.61M and WavLM Large 316.62M (WavLM paper, Table 1:
# both include the pretraining heads, final projection 1024 -> 768 and label embeddings,
# 1.17M); XLS-R 1B / 2B and MMS 300M / 1B published only as "1 billion", "2 billion",
# "300m" parameters (model cards, XLS-R paper).
FULL_COUNTS = {
    "xlsr-300m": 315_437_696, "xlsr-300m-random": 315_437_696, "mms-300m": 315_437_696,
    "xlsr-1b": 962_496_128, "mms-1b": 962_496_128, "xlsr-2b": 2_159_257_728,
    "hubert-large": 315_434_112, "wavlm-large": 315_452_096,
    "data2vec-audio-large": 313_275_392,
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return la19_shards(tmp_path_factory.mktemp("la19"))


def family_encoder(model_type: str):
    """A reduced-width encoder built by the family's own transformers class, with hub-like
    LayerDrop and SpecAugment in its config (the loader must override/inherit them)."""
    preset = PRESETS[FAMILIES[model_type][0]]
    config = encoder_config(FAMILIES[model_type][0]).__class__(
        **preset.kwargs, layerdrop=0.1, mask_time_prob=0.05)
    torch.manual_seed(0)
    return getattr(transformers, FAMILIES[model_type][1])(config)


def embed(model: SupConModel, wave: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(wave, mask)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_family_trains_from_its_own_directory_and_reloads(model_type, corpus, tmp_path):
    hf = tmp_path / "hf"
    family_encoder(model_type).save_pretrained(hf)
    cfg = {"data": {"train_shards": str(corpus["train"]), "dev_shards": str(corpus["dev"]),
                    "crop_seconds": 0.5, "eval_seconds": 1.0, "batch_size": 4,
                    "num_workers": 0, "rawboost": False},
           "model": {"encoder": str(hf), "proj_dim": 8},
           "optim": {"epochs": 1, "encoder_lr": 1e-3},
           "run": {"progress": False, "tensorboard": False}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with warnings.catch_warnings():  # WavLM's attention: torch's key_padding_mask notice
        warnings.simplefilter("ignore", UserWarning)
        assert main(["--config", str(tmp_path / "cfg.json"), "--run.dir", str(tmp_path)]) == 0
    stage = tmp_path / "stage1"
    meta = json.loads((stage / "last" / CONFIG_NAME).read_text())
    assert meta["encoder_config"]["model_type"] == model_type
    loaded = SupConModel.from_pretrained(stage / "last")
    assert type(loaded.encoder).__name__ == FAMILIES[model_type][1]
    assert loaded.cfg.mask_time_prob == 0.05 and loaded.encoder.config.layerdrop == 0.0
    # The same network rebuilt the other way: from the family's directory plus the trained
    # weights of the last checkpoint; and training changed the encoder.
    (checkpoint,) = (stage / "checkpoints").iterdir()
    rebuilt = SupConModel(ModelConfig(encoder=str(hf), proj_dim=8))
    initial = {k: v.clone() for k, v in rebuilt.state_dict().items()}
    rebuilt.load_state_dict(load_file(checkpoint / "model.safetensors"))
    changed = [k for k, v in rebuilt.state_dict().items() if not torch.equal(v, initial[k])]
    assert any(k.startswith("encoder.encoder.layers.") for k in changed)
    wave = torch.randn(3, 9000, generator=torch.Generator().manual_seed(3))
    mask = torch.ones(3, 9000, dtype=torch.long)
    mask[1, 6000:] = 0
    z = embed(loaded, wave, mask)
    assert torch.equal(z, embed(rebuilt, wave, mask))
    assert torch.equal(z, embed(SupConModel.from_pretrained(stage / "last"), wave, mask))


@pytest.mark.parametrize("model_type", FAMILIES)
def test_hidden_states_and_padding_per_family(model_type):
    """mean_all = mean of the L+1 states, the last one after the final layer norm where the
    family's encoder has one (pre-norm: do_stable_layer_norm); padding with a mask changes
    nothing, except in data2vec-audio, whose 5 stacked positional convolutions carry the
    padding into the valid frames next to it (transformers' model: a known limit, stated in the
    model docs). Also the FSDP wrap classes and the family's attention kernel."""
    torch.manual_seed(0)
    model = SupConModel(ModelConfig(encoder=FAMILIES[model_type][0])).eval()
    assert model.encoder.config.model_type == model_type
    assert model._no_split_modules == [type(model.encoder.encoder.layers[0]).__name__]
    assert model.cfg.attn_implementation == ("eager" if model_type == "wavlm" else "sdpa")
    wave = torch.randn(2, 9000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = model.encoder(wave, output_hidden_states=True)
        states = list(out.hidden_states)
        assert len(states) == 3  # input to layer 1 + 2 layers
        pre_norm = getattr(model.encoder.config, "do_stable_layer_norm", False)
        if pre_norm:  # transformers 5 records the last layer's output before the final norm
            assert not torch.allclose(states[-1], out.last_hidden_state)
            states[-1] = model.encoder.encoder.layer_norm(states[-1])
        torch.testing.assert_close(states[-1], out.last_hidden_state, rtol=0, atol=0)
        torch.testing.assert_close(model.embed_frames(wave)[0], torch.stack(states).mean(0))
        batch = torch.zeros(2, 12000)
        batch[:, :9000] = wave
        mask = torch.zeros(2, 12000, dtype=torch.long)
        mask[:, :9000] = 1
        padded, alone = model(batch, mask), model(wave)
        if model_type == "data2vec-audio":
            assert 0.9 < F.cosine_similarity(padded, alone).min() < 1 - 1e-6
        else:
            torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-4)


def test_unsupported_family_is_one_clear_line(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    with pytest.raises(ModelLoadError) as err:
        SupConModel(ModelConfig(encoder=str(tmp_path / "hf")))
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "hf" / "config.json") in message
    assert "'whisper' is not a supported encoder family; supported: wav2vec2, hubert, wavlm, " \
           "data2vec-audio" in message
    # A saved run: old directories (encoder_config without model_type) load as wav2vec2; an
    # unknown model_type names model_config.json.
    model = SupConModel(ModelConfig(encoder="tiny", proj_dim=8)).eval()
    model.save_pretrained(tmp_path / "run")
    (tmp_path / "run" / "integrity.json").unlink()  # an old directory: no record to check
    path = tmp_path / "run" / CONFIG_NAME
    meta = json.loads(path.read_text())
    del meta["encoder_config"]["model_type"]
    path.write_text(json.dumps(meta))
    wave, mask = torch.randn(2, 5000), torch.ones(2, 5000, dtype=torch.long)
    assert torch.equal(embed(SupConModel.from_pretrained(tmp_path / "run"), wave, mask),
                       embed(model, wave, mask))
    meta["encoder_config"]["model_type"] = "bert"
    path.write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match=f"^{path}: encoder_config: model_type 'bert' is "
                       "not a supported encoder family"):
        SupConModel.from_pretrained(tmp_path / "run")
    with pytest.raises(ModelLoadError, match="'nope' is not a preset; presets: tiny, "):
        encoder_config("nope")


def test_full_presets_parameter_counts_on_meta_device():
    full = {name: p for name, p in PRESETS.items() if p.checkpoint}
    assert set(full) == set(FULL_COUNTS)
    for name, preset in full.items():
        with torch.device("meta"):
            model = SupConModel(ModelConfig(encoder=name))
        assert model.encoder.config.model_type == preset.model_type, name
        assert sum(p.numel() for p in model.encoder.parameters()) == FULL_COUNTS[name], name
        hidden = model.encoder.config.hidden_size
        assert sum(p.numel() for p in model.head.parameters()) == hidden * 256 + 256
        assert model.receptive_field == 400 and model.num_hidden_states in (25, 49)
    # The hub's XLS-R 300M checkpoint holds 315,438,720 with SpecAugment's masked_spec_embed.
    with torch.device("meta"):
        masked = SupConModel(ModelConfig(encoder="xlsr-300m", mask_time_prob=0.05))
    assert sum(p.numel() for p in masked.encoder.parameters()) == 315_438_720


def test_full_presets_match_torchaudio_builders():
    """An independent implementation of the released checkpoints' architectures."""
    models = pytest.importorskip("torchaudio.models")
    builders = {"xlsr-300m": "wav2vec2_xlsr_300m", "xlsr-1b": "wav2vec2_xlsr_1b",
                "xlsr-2b": "wav2vec2_xlsr_2b", "hubert-large": "hubert_large",
                "wavlm-large": "wavlm_large"}
    with torch.device("meta"):
        for preset, builder in builders.items():
            count = sum(p.numel() for p in getattr(models, builder)().parameters())
            assert count == FULL_COUNTS[preset], preset


def test_cached_hub_id_of_another_family_loads_offline(tmp_path, monkeypatch):
    """A hub id in the local Hugging Face cache: its cached config.json picks the class."""
    import huggingface_hub.constants

    snapshot = tmp_path / "hub" / "models--org--wavlm-tiny" / "snapshots" / ("0" * 40)
    encoder = family_encoder("wavlm")
    encoder.save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = SupConModel(ModelConfig(encoder="org/wavlm-tiny"))
    assert type(model.encoder).__name__ == "WavLMModel"
    theirs = encoder.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in model.encoder.state_dict().items())
