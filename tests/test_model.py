"""Tests for sccl.model: tiny preset on CPU; the XLS-R 300M preset only on the meta device."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import torch.nn.functional as F
from transformers import Wav2Vec2Config, Wav2Vec2Model

from bench.flops import model_flops
from sccl.model import (
    _TINY,
    CONFIG_NAME,
    RECORD_NAME,
    WEIGHTS_NAME,
    ModelConfig,
    ModelLoadError,
    SupConModel,
)


def make(**kw) -> SupConModel:
    torch.manual_seed(0)
    return SupConModel(ModelConfig(**{"encoder": "tiny", **kw}))


def padded_batch(lengths: list[int], total: int, seed: int = 1):
    """Waves of the given lengths, zero-padded to `total`, with their mask and the originals."""
    gen = torch.Generator().manual_seed(seed)
    waves = [torch.randn(n, generator=gen) for n in lengths]
    batch = torch.zeros(len(lengths), total)
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
        mask[i, : len(w)] = 1
    return batch, mask, waves


@pytest.fixture
def hf_tiny_dir(tmp_path):
    """A Hugging Face style Wav2Vec2 directory whose config has the hub's layerdrop/masking."""
    torch.manual_seed(0)
    cfg = Wav2Vec2Config(**_TINY, layerdrop=0.1, mask_time_prob=0.075)
    encoder = Wav2Vec2Model(cfg)
    encoder.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf", encoder


def test_output_is_unit_norm_fp32():
    model = make().eval()
    wave = torch.randn(3, 16000)
    z = model(wave)
    assert z.shape == (3, 256) and z.dtype == torch.float32
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(3))
    assert model.receptive_field == 400
    _, frame_mask = model.embed_frames(wave)
    assert frame_mask.shape == (3, 49) and frame_mask.all()  # (16000 - 400) // 320 + 1 frames


@pytest.mark.parametrize("aggregation", ["mean_all", "last", "weighted"])
@pytest.mark.parametrize("normalize_wave", [False, True])
def test_padding_with_mask_gives_unpadded_result(aggregation, normalize_wave):
    model = make(aggregation=aggregation, normalize_wave=normalize_wave).eval()
    batch, mask, waves = padded_batch([8000, 12345, 4000], total=16000)
    with torch.no_grad():
        z_batch = model(batch, mask)
        z_alone = torch.cat([model(w[None]) for w in waves])
        z_unmasked = model(batch)
    torch.testing.assert_close(z_batch, z_alone, atol=1e-5, rtol=1e-4)
    assert (z_unmasked[0] - z_alone[0]).abs().max() > 1e-3  # the mask really matters


def test_mean_all_and_last_follow_the_encoder_outputs():
    model = make().eval()
    wave = torch.randn(2, 9000)
    with torch.no_grad():
        out = model.encoder(wave, output_hidden_states=True)
        frames, _ = model.embed_frames(wave)
        states = (*out.hidden_states[:-1], out.last_hidden_state)
        assert len(states) == 3  # input to layer 1 + 2 layers
        torch.testing.assert_close(frames, torch.stack(states).mean(0))
        model.cfg.aggregation = "last"
        torch.testing.assert_close(model.embed_frames(wave)[0], out.last_hidden_state)


def test_weighted_starts_as_mean_and_learns():
    weighted, mean_all = make(aggregation="weighted").eval(), make().eval()
    wave = torch.randn(2, 9000)
    with torch.no_grad():
        torch.testing.assert_close(weighted(wave), mean_all(wave))
        weighted.layer_weights.copy_(torch.tensor([0.0, 30.0, 0.0]))  # ~ one-hot on layer 1
        out = weighted.encoder(wave, output_hidden_states=True)
        torch.testing.assert_close(weighted.embed_frames(wave)[0], out.hidden_states[1])
    weighted.train()
    weighted(wave).sum().backward()
    assert weighted.layer_weights.grad is not None and weighted.layer_weights.grad.abs().sum() > 0


def test_layerdrop_and_masking_overridden(hf_tiny_dir):
    path, _ = hf_tiny_dir
    model = SupConModel(ModelConfig(encoder=str(path), mask_time_prob=0.0, mask_feature_prob=0.0))
    assert model.encoder.config.layerdrop == 0.0 and model.encoder.config.mask_time_prob == 0.0
    assert not hasattr(model.encoder, "masked_spec_embed")
    model.train()
    assert len(model.encoder(torch.randn(1, 4000), output_hidden_states=True).hidden_states) == 3
    masked = make(mask_time_prob=0.3, mask_feature_prob=0.2)
    assert masked.encoder.config.mask_time_prob == 0.3
    assert masked.encoder.config.mask_feature_prob == 0.2
    with pytest.raises(ValueError, match="layerdrop"):
        ModelConfig(layerdrop=0.1)
    assert make(layerdrop=0.1, aggregation="last").encoder.config.layerdrop == 0.1


@pytest.mark.parametrize("kw", [{"aggregation": "max"}, {"attn_implementation": "flash"},
                                {"proj_dim": 0}, {"head_dropout": 1.0}, {"encoder": ""}])
def test_config_rejects_bad_values(kw):
    with pytest.raises(ValueError):
        ModelConfig(**kw)


def test_input_checks():
    model = make()
    with pytest.raises(ValueError, match="float"):
        model(torch.randn(16000))
    with pytest.raises(ValueError, match=">= 400"):
        model(torch.randn(2, 399))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.randn(2, 800), torch.ones(2, 700))
    mask = torch.ones(2, 800, dtype=torch.long)
    mask[1, 300:] = 0
    with pytest.raises(ValueError, match="valid samples"):
        model(torch.randn(2, 800), mask)


def test_save_load_round_trip(tmp_path):
    model = make(aggregation="weighted", proj_dim=16).eval()
    with torch.no_grad():
        model.layer_weights.copy_(torch.tensor([0.5, -1.0, 2.0]))
    model.save_pretrained(tmp_path / "run")
    meta = json.loads((tmp_path / "run" / CONFIG_NAME).read_text())
    assert meta["model_config"]["proj_dim"] == 16
    assert meta["encoder_config"]["hidden_size"] == 32
    loaded = SupConModel.from_pretrained(tmp_path / "run").eval()
    batch, mask, _ = padded_batch([6000, 9000], total=9000)
    with torch.no_grad():
        assert torch.equal(model(batch, mask), loaded(batch, mask))
    again = SupConModel.from_pretrained(tmp_path / "run", gradient_checkpointing=True)
    assert again.cfg.gradient_checkpointing and again.cfg.proj_dim == 16
    with pytest.raises(ValueError, match="proj_dim"):
        SupConModel.from_pretrained(tmp_path / "run", proj_dim=8)


def test_shared_tensors_survive_save_and_load(tmp_path):
    model = make().eval()
    layers = model.encoder.encoder.layers
    layers[1].feed_forward.intermediate_dense.weight = layers[0].feed_forward.intermediate_dense.weight
    model.save_pretrained(tmp_path)  # plain safetensors would refuse the shared storage
    loaded = SupConModel.from_pretrained(tmp_path).eval()
    wave = torch.randn(2, 5000)
    with torch.no_grad():
        assert torch.equal(model(wave), loaded(wave))


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="model_config.json: missing"):
        SupConModel.from_pretrained(tmp_path / "nothing")
    make().save_pretrained(tmp_path)
    (tmp_path / RECORD_NAME).unlink()  # as saved before the record: each file is parsed
    weights, config = tmp_path / WEIGHTS_NAME, tmp_path / CONFIG_NAME
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        SupConModel.from_pretrained(tmp_path)
    weights.unlink()
    with pytest.raises(ModelLoadError, match="model.safetensors: missing"):
        SupConModel.from_pretrained(tmp_path)
    text = config.read_text()
    config.write_text(text.replace('"proj_dim": 256', '"proj_dim": 256,,'))
    with pytest.raises(ModelLoadError, match=r"model_config.json:\d+:\d+: invalid JSON"):
        SupConModel.from_pretrained(tmp_path)
    config.write_text(text.replace('"proj_dim"', '"proj_size"'))
    with pytest.raises(ModelLoadError, match="proj_size"):
        SupConModel.from_pretrained(tmp_path)
    config.write_text(json.dumps({"format_version": 1, "model_config": {}}))
    with pytest.raises(ModelLoadError, match="'encoder_config' missing"):
        SupConModel.from_pretrained(tmp_path)


def test_saved_directory_is_covered_by_its_record(tmp_path):
    """integrity.json lists both files; a changed model_config.json (a loadable JSON edit
    that would change every embedding) is refused naming it; files the record does not
    list (info.json, written later by Stage 1) are not read; without a record it loads."""
    model = make().eval()
    model.save_pretrained(tmp_path)
    (tmp_path / "info.json").write_text("{}")
    record = json.loads((tmp_path / RECORD_NAME).read_text())
    assert sorted(record["files"]) == sorted([WEIGHTS_NAME, CONFIG_NAME])
    config = tmp_path / CONFIG_NAME
    text = config.read_text()
    # same size (padded with spaces): only the hash can tell
    config.write_text(text.replace('"aggregation": "mean_all"', '"aggregation": "last"    '))
    with pytest.raises(ModelLoadError) as err:
        SupConModel.from_pretrained(tmp_path)
    message = str(err.value)
    assert message.startswith(f"{config}: sha256 differs from the one recorded in "
                              "integrity.json") and "\n" not in message
    (tmp_path / RECORD_NAME).unlink()  # a directory of older sccl: loads unchecked
    assert SupConModel.from_pretrained(tmp_path).cfg.aggregation == "last"


@pytest.mark.parametrize(("files", "expected"), [
    ({"../model.safetensors": {"size": 1, "sha256": "0" * 64}}, "is not a file name"),
    ({"/dev/zero": {"size": 0, "sha256": "0" * 64}}, "is not a file name"),
    ({CONFIG_NAME: {"size": -1, "sha256": "0" * 64}}, "must be {\"size\""),
    ({CONFIG_NAME: {"size": 1, "sha256": "0" * 64}}, f"does not list {WEIGHTS_NAME}"),
], ids=["parent", "device", "size", "unlisted-weights"])
def test_a_bad_record_is_refused(tmp_path, files, expected):
    make().save_pretrained(tmp_path)
    (tmp_path / RECORD_NAME).write_text(json.dumps({"format": 1, "files": files}))
    with pytest.raises(ModelLoadError) as err:
        SupConModel.from_pretrained(tmp_path)  # at once: /dev/zero would never end
    message = str(err.value)
    assert message.startswith(f"{tmp_path / RECORD_NAME}: ") and expected in message


def test_local_hf_directory_loads_its_weights(hf_tiny_dir):
    path, encoder = hf_tiny_dir
    model = SupConModel(ModelConfig(encoder=str(path), attn_implementation="eager"))
    assert model.encoder.config._attn_implementation == "eager"
    mine, theirs = model.encoder.state_dict(), encoder.state_dict()
    assert set(theirs) == set(mine)  # masking inherited: masked_spec_embed loaded as well
    for name, tensor in mine.items():
        assert torch.equal(tensor, theirs[name]), name


def test_missing_encoder_gives_clear_error_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    for local in (str(tmp_path / "missing"), "./models/xlsr-300m", "~/no/such/dir", "a/b/c"):
        with pytest.raises(ModelLoadError, match="no such directory: ") as err:
            SupConModel(ModelConfig(encoder=local))
        assert "hf download" not in str(err.value)  # a path, not a hub id: no download advice
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelLoadError, match="not a directory"):
        SupConModel(ModelConfig(encoder="file"))
    probes = _spy_on_hub_requests(monkeypatch)
    for hub_shaped in ("models/xlsr-300m", "facebook/wav2vec2-xls-r-300m"):
        with pytest.raises(ModelLoadError, match=f"no such directory: {hub_shaped}; as a hub id "
                           "it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"):
            SupConModel(ModelConfig(encoder=hub_shaped))
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        SupConModel(ModelConfig())  # the default encoder is the study's hub model
    assert probes == []  # offline: not one request (so no retries either)
    make().save_pretrained(tmp_path / "run")
    with pytest.raises(ModelLoadError, match="SupConModel.from_pretrained"):
        SupConModel(ModelConfig(encoder=str(tmp_path / "run")))


def loss_and_grads(model: SupConModel, batch, mask):
    torch.manual_seed(123)  # same dropout masks in both runs
    z = model(batch, mask)
    loss = (z @ z.T).pow(2).sum()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_gradient_checkpointing_same_loss_and_grads():
    plain, ckpt = make().train(), make(gradient_checkpointing=True).train()
    assert all(layer.gradient_checkpointing for layer in ckpt.encoder.encoder.layers)
    batch, mask, _ = padded_batch([7000, 9000], total=9000)
    loss_a, grads_a = loss_and_grads(plain, batch, mask)
    loss_b, grads_b = loss_and_grads(ckpt, batch, mask)
    torch.testing.assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], msg=name)


def test_freeze_feature_encoder_freezes_only_the_conv_stack():
    model = make(freeze_feature_encoder=True).train()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    conv = {n for n, _ in model.named_parameters() if n.startswith("encoder.feature_extractor.")}
    assert frozen == conv and len(conv) == 7 * 4  # conv weight + bias + LayerNorm gain + bias
    model(torch.randn(2, 4000)).sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n in conv)
    conv_size = sum(model.get_parameter(n).numel() for n in conv)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == sum(p.numel() for p in model.parameters()) - conv_size


def test_param_groups_partition_trainable_parameters():
    model = make(aggregation="weighted", freeze_feature_encoder=True)
    groups = model.param_groups(encoder_lr=1e-5, head_lr=5e-4, weight_decay=3e-3)
    assert [g["name"] for g in groups] == ["encoder", "encoder_no_decay", "head", "head_no_decay"]
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert len(ids) == len(set(ids)) and set(ids) == set(trainable)
    by_name = {g["name"]: g for g in groups}
    assert by_name["encoder"]["lr"] == 1e-5 and by_name["head"]["lr"] == 5e-4
    assert by_name["head"]["weight_decay"] == 3e-3 and by_name["head_no_decay"]["weight_decay"] == 0
    assert any(p is model.layer_weights for p in by_name["head_no_decay"]["params"])
    assert all(p.ndim >= 2 for g in groups if "no_decay" not in g["name"] for p in g["params"])
    flat = model.param_groups(1e-5, 5e-4, 3e-3, exclude_norm_bias=False)
    assert [g["name"] for g in flat] == ["encoder", "head"]
    optimizer = torch.optim.AdamW(groups)
    model(torch.randn(2, 4000)).sum().backward()
    optimizer.step()
    with pytest.raises(ValueError, match=">= 0"):
        model.param_groups(-1.0, 1e-3, 0.0)


def test_bf16_autocast_forward_and_backward_on_cpu():
    model = make().eval()
    wave = torch.randn(2, 16000)
    with torch.no_grad():
        reference = model(wave)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z = model(wave)
    assert z.dtype == torch.float32 and torch.isfinite(z).all()
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(2))
    # A broken bf16 kernel (e.g. oneDNN grouped conv) shows up as cosine ~0.3, not 0.999.
    assert F.cosine_similarity(z, reference).min() > 0.999
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(wave).sum()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_group_norm_encoder_runs_with_padding(tmp_path):
    torch.manual_seed(0)
    kwargs = {**_TINY, "feat_extract_norm": "group", "do_stable_layer_norm": False}
    Wav2Vec2Model(Wav2Vec2Config(**kwargs)).save_pretrained(tmp_path)
    model = SupConModel(ModelConfig(encoder=str(tmp_path))).eval()
    batch, mask, _ = padded_batch([5000, 8000], total=8000)
    with torch.no_grad():
        z = model(batch, mask)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(2))


def test_xlsr_300m_preset_architecture_on_meta_device():
    with torch.device("meta"):
        model = SupConModel(ModelConfig(encoder="xlsr-300m-random"))
    c = model.encoder.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (
        24, 1024, 16, 4096)
    assert c.feat_extract_norm == "layer" and c.do_stable_layer_norm and c.conv_bias
    assert list(c.conv_dim) == [512] * 7 and list(c.conv_stride) == [5, 2, 2, 2, 2, 2, 2]
    assert (c.num_conv_pos_embeddings, c.num_conv_pos_embedding_groups) == (128, 16)
    encoder_params = sum(p.numel() for p in model.encoder.parameters())
    assert encoder_params == 315_437_696  # the hub model's 315,438,720 minus masked_spec_embed
    assert sum(p.numel() for p in model.parameters()) == encoder_params + 1024 * 256 + 256
    assert model.num_hidden_states == 25 and model.receptive_field == 400
    assert 0.35e12 < model_flops(model, 160_000)["total"] < 0.42e12  # 10 s: ~0.38 TFLOP


def test_bf16_weights_without_autocast():
    """DeepSpeed bf16 casts the weights themselves and runs no autocast: fp32 input must work."""
    torch.manual_seed(0)
    model = SupConModel(ModelConfig(encoder="tiny", head_dropout=0.0)).eval()
    wave = torch.randn(2, 16000)
    ref = model(wave)
    z = model.to(torch.bfloat16)(wave)
    assert z.dtype == torch.float32 and z.shape == ref.shape
    assert torch.nn.functional.cosine_similarity(z, ref).min() > 0.99


def test_unused_spec_embed_is_frozen_for_ddp():
    """Feature masking alone makes transformers create masked_spec_embed without using it; a
    trainable unused parameter would stall DDP, so it is frozen (and left out of the groups)."""
    model = SupConModel(ModelConfig(encoder="tiny", mask_feature_prob=0.1))
    assert not model.encoder.masked_spec_embed.requires_grad
    grouped = {id(p) for g in model.param_groups(1e-5, 1e-3, 0.0) for p in g["params"]}
    assert id(model.encoder.masked_spec_embed) not in grouped
    timed = SupConModel(ModelConfig(encoder="tiny", mask_time_prob=0.1))
    assert timed.encoder.masked_spec_embed.requires_grad


def test_default_encoder_is_the_studys_hub_model():
    assert ModelConfig().encoder == "facebook/wav2vec2-xls-r-300m"


def test_unreachable_hub_fails_after_one_probe(tmp_path, monkeypatch):
    # Connection refused at once; from_pretrained alone retries for ~40 s on a dead network.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    probes = _spy_on_hub_requests(monkeypatch)
    with pytest.raises(ModelLoadError, match="no such directory: sccl-tests/none; as a hub id "
                       "the hub is unreachable"):
        SupConModel(ModelConfig(encoder="sccl-tests/none"))
    # one probe, and no download attempt (from_pretrained's own retries) after it failed
    assert probes == ["model_info sccl-tests/none"]


def _spy_on_hub_requests(monkeypatch) -> list[str]:
    """Record the hub probe and every from_pretrained that may reach the network."""
    from transformers import Wav2Vec2Model

    calls: list[str] = []
    real_info, real_load = huggingface_hub.HfApi.model_info, Wav2Vec2Model.from_pretrained.__func__

    def model_info(self, repo_id, **kw):
        calls.append(f"model_info {repo_id}")
        return real_info(self, repo_id, **kw)

    def from_pretrained(cls, name, *args, **kw):
        if not kw.get("local_files_only") and not Path(str(name)).is_dir():
            calls.append(f"from_pretrained {name}")
        return real_load(cls, name, *args, **kw)

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(Wav2Vec2Model, "from_pretrained", classmethod(from_pretrained))
    return calls


@pytest.mark.parametrize("prob", [0.05, 0.0])
def test_specaugment_inherited_from_the_checkpoint_unless_set(tmp_path, prob):
    Wav2Vec2Model(Wav2Vec2Config(**_TINY, mask_time_prob=prob)).save_pretrained(tmp_path / "hf")
    inherited = SupConModel(ModelConfig(encoder=str(tmp_path / "hf")))
    assert inherited.encoder.config.mask_time_prob == prob
    assert inherited.cfg.mask_time_prob == prob and inherited.cfg.mask_feature_prob == 0.0
    set_ = SupConModel(ModelConfig(encoder=str(tmp_path / "hf"), mask_time_prob=0.2,
                                   mask_feature_prob=0.1))
    assert set_.encoder.config.mask_time_prob == 0.2 and set_.cfg.mask_time_prob == 0.2
    assert set_.encoder.config.mask_feature_prob == 0.1
    inherited.save_pretrained(tmp_path / "run")  # the resolved values travel with the weights
    assert SupConModel.from_pretrained(tmp_path / "run").cfg.mask_time_prob == prob
    meta = json.loads((tmp_path / "run" / CONFIG_NAME).read_text())
    assert meta["model_config"]["mask_time_prob"] == prob


def test_random_init_presets_leave_specaugment_off():
    for preset in ("tiny",):
        model = SupConModel(ModelConfig(encoder=preset))
        assert model.cfg.mask_time_prob == 0.0 and model.cfg.mask_feature_prob == 0.0
        assert model.encoder.config.mask_time_prob == 0.0


def test_receptive_field_without_building_the_encoder(tmp_path):
    assert ModelConfig(encoder="tiny").receptive_field() == 400
    assert ModelConfig(encoder="xlsr-300m-random").receptive_field() == 400
    assert ModelConfig().receptive_field() == 400  # hub id not cached: wav2vec 2.0's stack
    conf = {"conv_kernel": [10, 3], "conv_stride": [5, 2]}
    (tmp_path / "config.json").write_text(json.dumps(conf))
    assert ModelConfig(encoder=str(tmp_path)).receptive_field() == 20  # 10 + 2 * 5
    assert make().receptive_field == 400


def test_importing_the_library_does_not_import_transformers():
    # `--help` of every entry script paid ~10 s for transformers before parsing its arguments.
    code = ("import sys, sccl.model, sccl.data, sccl.config, sccl.audio, sccl.rawboost; "
            "sys.exit('transformers' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_save_pretrained_writes_a_given_state_dict(tmp_path):
    """A sharded model (ZeRO-3, FSDP) saves the full state dict gathered for it instead of its
    own (sharded) parameters."""
    model, other = make().eval(), SupConModel(ModelConfig(encoder="tiny")).eval()
    with torch.no_grad():
        other.head[-1].weight.add_(1.0)
    model.save_pretrained(tmp_path / "run", state_dict=other.state_dict())
    loaded = SupConModel.from_pretrained(tmp_path / "run").eval()
    wave = torch.randn(2, 5000)
    with torch.no_grad():
        assert torch.equal(loaded(wave), other(wave)) and not torch.equal(loaded(wave), model(wave))
    with pytest.raises(ValueError, match="keys differ from the model's: \\['encoder"):
        model.save_pretrained(tmp_path / "bad", state_dict={
            f"module.{k}": v for k, v in model.state_dict().items()})
