"""wav2vec2-family encoder + SupCon projection head: raw 16 kHz waves -> unit vectors z.

    wave (B, T) -> encoder -> hidden states (L+1) x (B, F, H) -> aggregate -> (B, F, H)
      -> per frame Dropout -> LeakyReLU -> Linear(H -> P) -> masked mean over valid frames
      -> L2-normalise -> z (B, P)

The encoder is one of the wav2vec2 family, chosen by `ModelConfig.encoder` and built with the
transformers class that config.json's `model_type` names (`_FAMILIES`): wav2vec2
(Wav2Vec2Model: XLS-R 300M/1B/2B, MMS), hubert (HubertModel), wavlm (WavLMModel),
data2vec-audio (Data2VecAudioModel). `encoder` is
  "facebook/wav2vec2-xls-r-300m"  (the default: the study's encoder) or any other hub id or
                      local directory of one of these families (microsoft/wavlm-large,
                      facebook/hubert-large-ll60k, facebook/mms-1b, ...). Compute nodes often
                      cannot reach the hub: download on a machine with internet with
                      `hf download facebook/wav2vec2-xls-r-300m --local-dir DIR` (huggingface_hub
                      >= 1.0; older: huggingface-cli download), then set encoder to DIR. A hub id
                      already in the local Hugging Face cache loads without the network; one that
                      is not fails at once under HF_HUB_OFFLINE=1, and after one short probe of
                      the hub otherwise (no minute of retries on every rank);
  a preset (`PRESETS`): random init with the full architecture of a published checkpoint,
                      for speed and memory measurements: "xlsr-300m" (alias
                      "xlsr-300m-random"), "xlsr-1b", "xlsr-2b", "mms-300m", "mms-1b",
                      "hubert-large", "wavlm-large", "data2vec-audio-large"; or a reduced-width
                      one for CPU tests and the demo: "tiny" (wav2vec2), "tiny-hubert",
                      "tiny-wavlm", "tiny-data2vec".
Padding: with the attention mask, a padded wave gives the same z as alone, except with
data2vec-audio, whose 5 stacked positional convolutions carry the zero padding into the valid
frames next to it (transformers' model: cosine > 0.9 to the unpadded z, not 1).
`SupConModel.save_pretrained(dir)` writes the weights and both configs (the encoder's with its
model_type), so a run directory loads with `SupConModel.from_pretrained(dir)` without the hub,
and `integrity.json`: the size and sha256 of every file it wrote. `from_pretrained` checks
them when the record is there (a changed or damaged file is one `ModelLoadError` naming it);
directories saved before it had one load unchecked, as before. The export of Stage 2
(sccl/scoring.py) uses the same record (`write_record`, `check_record`).

transformers is imported only when an encoder is built: importing this module (as every entry
script does before parsing its arguments, and `--help`) stays cheap.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save as safetensors_save
from torch import nn

from sccl.fileio import atomic_write_bytes, atomic_write_json, file_sha256, read_json_object

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

XLSR_300M_HUB_ID = "facebook/wav2vec2-xls-r-300m"
Aggregation = Literal["mean_all", "last", "weighted"]
AttnImplementation = Literal["sdpa", "eager", "flash_attention_2", "flex_attention"]
CONFIG_NAME = "model_config.json"
WEIGHTS_NAME = "model.safetensors"
RECORD_NAME = "integrity.json"  # not manifest.json: that name marks shard and checkpoint dirs
FORMAT_VERSION = 1
# Present only when SpecAugment masking is on (mask_*_prob > 0): tolerated when absent/extra.
_OPTIONAL_KEYS = frozenset({"encoder.masked_spec_embed"})

# config.json's model_type -> (transformers config class, model class, attention kernels it
# supports beyond "eager"). WavLM has only its own attention (gated relative position bias).
_FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "wav2vec2": ("Wav2Vec2Config", "Wav2Vec2Model", ("sdpa", "flash_attention_2", "flex_attention")),
    "hubert": ("HubertConfig", "HubertModel", ("sdpa", "flash_attention_2", "flex_attention")),
    "wavlm": ("WavLMConfig", "WavLMModel", ()),
    "data2vec-audio": ("Data2VecAudioConfig", "Data2VecAudioModel",
                       ("sdpa", "flash_attention_2", "flex_attention")),
}


@dataclass(frozen=True)
class Preset:
    """A random-init encoder: its family, architecture values and the checkpoint they copy."""

    model_type: str
    """config.json's model_type: a key of _FAMILIES."""
    kwargs: dict[str, Any]
    """Arguments of the family's transformers config class."""
    checkpoint: str | None = None
    """The published checkpoint whose architecture this is; None for reduced-width test sizes."""


# The architecture values of the published config.json files (not readable offline). Sources:
# torchaudio 2.11's builders of the same released checkpoints (torchaudio.models.wav2vec2_xlsr_300m,
# _1b, _2b, hubert_large, wavlm_large: same widths, depths, heads, FFN sizes, conv bias, layer-norm
# conv stack, pre-norm ("layer_norm_first") encoder, positional conv 128/16, WavLM's 320 buckets
# and distance 800), whose parameter counts equal these presets' (tests/test_frontends.py); the
# MMS paper and model cards (MMS 300m/1b are the XLS-R 300M/1B architectures, pretrained on more
# languages); the data2vec paper for data2vec-audio Large (24 blocks, 1024, FFN 4096, 16 heads;
# transformers' Data2VecAudioConfig defaults for its 5-layer positional conv, kernel 19).
# Dropouts are the hubs' to our knowledge and change neither architecture nor count. The conv
# feature encoder of every one: receptive field 400 samples, stride 320 (Wav2Vec2Config's
# defaults as well).
_CONV_KERNEL, _CONV_STRIDE = (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)
_LARGE = dict(  # the 24-layer, 1024-wide pre-norm encoder shared by all families' Large sizes
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
    hidden_act="gelu", conv_dim=(512,) * 7, conv_kernel=_CONV_KERNEL, conv_stride=_CONV_STRIDE,
    feat_extract_activation="gelu", layer_norm_eps=1e-5, hidden_dropout=0.1,
    attention_dropout=0.1, activation_dropout=0.0, feat_proj_dropout=0.1,
)
_STABLE = dict(feat_extract_norm="layer", do_stable_layer_norm=True,  # not in data2vec-audio
               num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16)
_XLSR_300M = {**_LARGE, **_STABLE, "conv_bias": True}
_XLSR_1B = {**_XLSR_300M, "hidden_size": 1280, "num_hidden_layers": 48, "intermediate_size": 5120}
_XLSR_2B = {**_XLSR_300M, "hidden_size": 1920, "num_hidden_layers": 48, "intermediate_size": 7680}
_HUBERT_LARGE = {**_LARGE, **_STABLE, "conv_bias": False, "feat_proj_layer_norm": True}
_WAVLM_LARGE = {**_LARGE, **_STABLE, "conv_bias": False, "num_buckets": 320,
                "max_bucket_distance": 800}
_DATA2VEC_LARGE = {**_LARGE, "conv_bias": False, "num_conv_pos_embeddings": 5,
                   "conv_pos_kernel_size": 19, "num_conv_pos_embedding_groups": 16}
# Reduced widths, same conv kernels/strides (receptive field 400, stride 320: 16 kHz -> 50
# frames/s, identical frame counts) and each family's code path. 16 channels per
# positional-conv group: with 4-12, torch 2.11's oneDNN bf16 grouped conv1d returns wrong
# values on AVX512 CPUs (measured), which would break CPU bf16 runs.
_SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
          "intermediate_size": 64, "conv_dim": (32,) * 7, "num_conv_pos_embedding_groups": 2}
_TINY = {**_XLSR_300M, **_SMALL, "num_conv_pos_embeddings": 16}
PRESETS: dict[str, Preset] = {
    "tiny": Preset("wav2vec2", _TINY),
    "tiny-hubert": Preset("hubert", {**_HUBERT_LARGE, **_SMALL, "num_conv_pos_embeddings": 16}),
    "tiny-wavlm": Preset("wavlm", {**_WAVLM_LARGE, **_SMALL, "num_conv_pos_embeddings": 16,
                                   "num_buckets": 16, "max_bucket_distance": 40}),
    "tiny-data2vec": Preset("data2vec-audio", {**_DATA2VEC_LARGE, **_SMALL,
                                               "num_conv_pos_embeddings": 2}),
    "xlsr-300m": Preset("wav2vec2", _XLSR_300M, "facebook/wav2vec2-xls-r-300m"),
    "xlsr-300m-random": Preset("wav2vec2", _XLSR_300M, "facebook/wav2vec2-xls-r-300m"),
    "xlsr-1b": Preset("wav2vec2", _XLSR_1B, "facebook/wav2vec2-xls-r-1b"),
    "xlsr-2b": Preset("wav2vec2", _XLSR_2B, "facebook/wav2vec2-xls-r-2b"),
    "mms-300m": Preset("wav2vec2", _XLSR_300M, "facebook/mms-300m"),
    "mms-1b": Preset("wav2vec2", _XLSR_1B, "facebook/mms-1b"),
    "hubert-large": Preset("hubert", _HUBERT_LARGE, "facebook/hubert-large-ll60k"),
    "wavlm-large": Preset("wavlm", _WAVLM_LARGE, "microsoft/wavlm-large"),
    "data2vec-audio-large": Preset("data2vec-audio", _DATA2VEC_LARGE,
                                   "facebook/data2vec-audio-large"),
}


class ModelLoadError(OSError):
    """A model or encoder could not be loaded; the message names the path/key and a fix."""


@dataclass
class ModelConfig:
    """Stage 1 model: encoder choice, hidden-state aggregation and projection head."""

    encoder: str = XLSR_300M_HUB_ID
    """A hub id or local directory of a wav2vec2-family checkpoint (default: the study's XLS-R
    300M), loaded with the transformers class of its config.json's model_type: wav2vec2 (XLS-R,
    MMS), hubert, wavlm or data2vec-audio. Or a random-init preset with a published
    checkpoint's architecture: "xlsr-300m" (= "xlsr-300m-random"), "xlsr-1b", "xlsr-2b",
    "mms-300m", "mms-1b", "hubert-large", "wavlm-large", "data2vec-audio-large"; or a
    reduced-width one for tests: "tiny" (also the demo's), "tiny-hubert", "tiny-wavlm",
    "tiny-data2vec". Presets win over a directory with the same name."""
    aggregation: Aggregation = "mean_all"
    """"mean_all": mean of all L+1 hidden states (input to layer 1 + every layer; 25 for
    XLS-R), as the study; "last": last layer only; "weighted": learned softmax-weighted sum
    (weights start uniform, i.e. equal to mean_all)."""
    proj_dim: int = 256
    """Size of z, the output of the projection head."""
    head_dropout: float = 0.1
    """Dropout on each frame before LeakyReLU -> Linear."""
    gradient_checkpointing: bool = False
    """Recompute each encoder layer in backward (non-reentrant): activation memory of one
    layer instead of all, for one extra forward pass of the layers."""
    freeze_feature_encoder: bool = False
    """Freeze the conv feature encoder (the study fine-tunes everything)."""
    layerdrop: float = 0.0
    """Encoder LayerDrop; overrides the loaded config (XLS-R's says 0.1). Must be 0 unless
    aggregation is "last": a dropped layer removes a hidden state from the aggregate."""
    mask_time_prob: float | None = None
    """SpecAugment time masking inside the encoder in train mode; null = the loaded
    checkpoint's own value (as the study; the hub's XLS-R 300M config turns it on), 0 for the
    random-init presets; a number overrides. The resolved value is saved with the run."""
    mask_feature_prob: float | None = None
    """SpecAugment feature masking inside the encoder in train mode; null = the checkpoint's
    value (presets: 0); a number overrides."""
    attn_implementation: AttnImplementation = "sdpa"
    """Encoder attention kernel: "sdpa" (torch scaled_dot_product_attention), "eager",
    "flash_attention_2" (needs CUDA and flash-attn) or "flex_attention". WavLM has only its own
    ("eager") and runs it whatever is set here; the value used is saved with the run."""
    normalize_wave: bool = False
    """Zero-mean/unit-variance per utterance over its valid samples, as the XLS-R checkpoint's
    feature extractor (do_normalize=True) does; off = the waves as the data pipeline gives them."""

    def __post_init__(self) -> None:
        if not isinstance(self.encoder, str) or not self.encoder:
            raise ValueError(f"model.encoder must be a non-empty string, got {self.encoder!r}")
        for name, choices in (("aggregation", get_args(Aggregation)),
                              ("attn_implementation", get_args(AttnImplementation))):
            if getattr(self, name) not in choices:
                raise ValueError(f"model.{name} must be one of {choices}, got "
                                 f"{getattr(self, name)!r}")
        if not isinstance(self.proj_dim, int) or self.proj_dim < 1:
            raise ValueError(f"model.proj_dim must be a positive int, got {self.proj_dim!r}")
        for name in ("head_dropout", "layerdrop", "mask_time_prob", "mask_feature_prob"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1), got {value!r}")
        if self.layerdrop > 0 and self.aggregation != "last":
            raise ValueError(
                f"model.layerdrop={self.layerdrop} drops whole layers at random, which breaks "
                f"aggregation={self.aggregation!r}; use layerdrop=0 or aggregation='last'"
            )

    def receptive_field(self) -> int:
        """Samples the encoder needs for one frame, read without building it: from the preset,
        the local directory's config.json or a cached hub config, else the conv stack that
        every published wav2vec 2.0 / XLS-R checkpoint shares (400)."""
        if self.encoder in PRESETS:
            kw = PRESETS[self.encoder].kwargs
            return receptive_field(kw["conv_kernel"], kw["conv_stride"])
        path = Path(self.encoder).expanduser() / "config.json"
        if not path.is_file():
            path = _cached_hub_file(self.encoder, "config.json")
        try:
            conf = json.loads(path.read_text(encoding="utf-8")) if path else {}
        except (OSError, ValueError):
            conf = {}  # building the encoder reports the bad file
        conf = conf if isinstance(conf, dict) else {}
        return receptive_field(conf.get("conv_kernel", _CONV_KERNEL),
                               conf.get("conv_stride", _CONV_STRIDE))


def receptive_field(kernels, strides) -> int:
    """Receptive field in samples of a stack of 1-d convolutions (kernel, stride per layer)."""
    rf, jump = 1, 1
    for k, s in zip(kernels, strides, strict=True):
        rf, jump = rf + (k - 1) * jump, jump * s
    return rf


def _overrides(cfg: ModelConfig, model_type: str) -> dict[str, Any]:
    """Encoder config values that ModelConfig decides, whatever the checkpoint says (mask
    probabilities only when set: null keeps the checkpoint's; the attention kernel only where
    the family has a choice)."""
    attention = cfg.attn_implementation if cfg.attn_implementation in _FAMILIES[model_type][2] \
        else "eager"
    out = dict(layerdrop=cfg.layerdrop, attn_implementation=attention)
    for name in ("mask_time_prob", "mask_feature_prob"):
        if getattr(cfg, name) is not None:
            out[name] = getattr(cfg, name)
    return out


def _family(model_type: Any, source: str | Path) -> tuple[type, type]:
    """(config class, model class) of a model_type, or one clear error naming ``source``."""
    if model_type not in _FAMILIES:
        raise ModelLoadError(f"{source}: model_type {model_type!r} is not a supported encoder "
                             f"family; supported: {', '.join(_FAMILIES)}")
    import transformers

    config_name, model_name, _ = _FAMILIES[model_type]
    return getattr(transformers, config_name), getattr(transformers, model_name)


def _family_of_file(path: Path) -> tuple[str, type]:
    """(model_type, model class) named by a checkpoint's config.json."""
    model_type = read_json_object(path, ModelLoadError, "a checkpoint's config").get("model_type")
    return model_type, _family(model_type, path)[1]


def encoder_config(name_or_cfg: str | ModelConfig) -> PretrainedConfig:
    """The transformers config of a preset (by name, or a ModelConfig naming one), with the
    values ModelConfig decides (layerdrop, attention kernel, SpecAugment: off unless set)."""
    cfg = name_or_cfg if isinstance(name_or_cfg, ModelConfig) else ModelConfig(encoder=name_or_cfg)
    if cfg.encoder not in PRESETS:
        raise ModelLoadError(f"{cfg.encoder!r} is not a preset; presets: {', '.join(PRESETS)}")
    preset = PRESETS[cfg.encoder]
    config_cls, _ = _family(preset.model_type, f"preset {cfg.encoder!r}")
    kwargs = {"mask_time_prob": 0.0, "mask_feature_prob": 0.0,
              **_overrides(cfg, preset.model_type)}
    return config_cls(**preset.kwargs, **kwargs)


def build_encoder(cfg: ModelConfig, encoder_config_dict: dict | None = None) -> PreTrainedModel:
    """The encoder for `cfg`: from `encoder_config_dict` (a saved encoder config dict, family
    from its model_type; random init, the caller loads the weights), a preset, or
    `from_pretrained` on a directory/hub id."""
    if encoder_config_dict is not None:
        model_type = encoder_config_dict.get("model_type", "wav2vec2")
        config_cls, model_cls = _family(model_type, "encoder_config")
        return model_cls(config_cls.from_dict(encoder_config_dict, **_overrides(cfg, model_type)))
    if cfg.encoder in PRESETS:  # random init: SpecAugment off unless asked for
        _, model_cls = _family(PRESETS[cfg.encoder].model_type, f"preset {cfg.encoder!r}")
        return model_cls(encoder_config(cfg))
    return _load_pretrained_encoder(cfg)


def _load_pretrained_encoder(cfg: ModelConfig) -> PreTrainedModel:
    name = cfg.encoder
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() and (path / CONFIG_NAME).is_file():
            raise ModelLoadError(
                f"could not load encoder '{name}': it is a SupConModel directory "
                f"({CONFIG_NAME}); load it with SupConModel.from_pretrained"
            )
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"could not load encoder '{name}' (local directory): no "
                                 "config.json (a checkpoint written by save_pretrained)")
        model_type, model_cls = _family_of_file(path / "config.json")
        try:
            return model_cls.from_pretrained(str(path), **_overrides(cfg, model_type))
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"could not load encoder '{name}' (local directory): {err}") from err
    missing = f"could not load encoder: no such directory: {name}"
    if path.exists():
        raise ModelLoadError(f"could not load encoder '{name}': not a directory: {path} (a "
                             "local encoder is a directory with config.json and weights)")
    if not _looks_like_hub_id(name):
        raise ModelLoadError(missing)
    cached = _cached_hub_file(name, "config.json")
    if cached is not None:  # a hub id already in the local cache: no network at all
        model_type, model_cls = _family_of_file(cached)
        try:
            return model_cls.from_pretrained(name, local_files_only=True,
                                             **_overrides(cfg, model_type))
        except (OSError, ValueError):
            pass
    download = (f"download it on a machine with internet (`hf download {name} --local-dir DIR`) "
                "and set the encoder to DIR")
    if _hub_offline():
        raise ModelLoadError(f"{missing}; as a hub id it is not in the local Hugging Face cache "
                             f"and HF_HUB_OFFLINE is set: {download}")
    _probe_hub(name, f"{missing}; as a hub id", download)
    return _download_encoder(cfg, f"{missing}; as a hub id it could not be loaded")


def _download_encoder(cfg: ModelConfig, prefix: str) -> PreTrainedModel:
    """config.json first (its model_type picks the class), then the weights."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        model_type, model_cls = _family_of_file(Path(hf_hub_download(cfg.encoder, "config.json")))
        return model_cls.from_pretrained(cfg.encoder, **_overrides(cfg, model_type))
    except ModelLoadError:
        raise
    except (OSError, ValueError, HfHubHTTPError) as err:
        raise ModelLoadError(f"{prefix}: {err}") from err


def _looks_like_hub_id(name: str) -> bool:
    """"org/name" or "name": no leading ./~//, no backslash, at most one slash."""
    return (not name.startswith((".", "~", "/")) and "\\" not in name and name.count("/") <= 1
            and not name.endswith("/"))


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    return flag or bool(constants.HF_HUB_OFFLINE)


def _probe_hub(name: str, prefix: str, download: str) -> None:
    """One request without retries (from_pretrained retries a dead network for ~40 s)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        HfApi().model_info(name, timeout=10)
    except RepositoryNotFoundError as err:
        raise ModelLoadError(f"{prefix} the hub has no such model (or it needs a login): "
                             f"{type(err).__name__}") from err
    except Exception as err:  # network errors of the HTTP client, timeouts, HTTP errors
        raise ModelLoadError(f"{prefix} the hub is unreachable ({type(err).__name__}: {err}); "
                             f"{download}") from err


def _cached_hub_file(name: str, filename: str) -> Path | None:
    if not _looks_like_hub_id(name):
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(name, filename)
    except ValueError:  # not a valid repo id after all
        return None
    return Path(found) if isinstance(found, str) else None


class SupConModel(nn.Module):
    """wav2vec2-family encoder + aggregation + projection head -> L2-normalised z (B, proj_dim)."""

    def __init__(self, cfg: ModelConfig, *, encoder_config: dict | None = None) -> None:
        super().__init__()
        self.encoder = build_encoder(cfg, encoder_config)
        # The config as run: null mask probabilities replaced by the encoder's own values, so
        # that config.yaml and save_pretrained record what was used.
        self.cfg = dataclasses.replace(cfg, mask_time_prob=self.encoder.config.mask_time_prob,
                                       mask_feature_prob=self.encoder.config.mask_feature_prob,
                                       attn_implementation=self.encoder.config._attn_implementation)
        hidden = self.encoder.config.hidden_size
        self.num_hidden_states = self.encoder.config.num_hidden_layers + 1
        if cfg.aggregation == "weighted":  # zeros -> softmax uniform -> starts as mean_all
            self.layer_weights = nn.Parameter(torch.zeros(self.num_hidden_states))
        self.head = nn.Sequential(
            nn.Dropout(cfg.head_dropout), nn.LeakyReLU(), nn.Linear(hidden, cfg.proj_dim)
        )
        if cfg.gradient_checkpointing:
            _enable_checkpointing(self.encoder)
        if cfg.freeze_feature_encoder:
            self.encoder.freeze_feature_encoder()
        spec = getattr(self.encoder, "masked_spec_embed", None)
        if spec is not None and self.cfg.mask_time_prob == 0:
            # transformers creates it when either mask probability is > 0 but only time
            # masking uses it: an unused trainable parameter breaks DDP's gradient reduction.
            spec.requires_grad_(False)

    def forward(self, wave: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """wave float (B, T), attention_mask (B, T) 1 = real sample, right padding -> z fp32 (B, P)."""
        frames, frame_mask = self.embed_frames(wave, attention_mask)
        # Under DeepSpeed bf16 the weights themselves are bf16 and no autocast runs: meet them
        # in their dtype (a no-op for fp32 weights, with or without autocast).
        y = self.head(frames.to(self.head[-1].weight.dtype))  # (B, F, P)
        m = frame_mask.unsqueeze(-1).to(torch.float32)  # (B, F, 1)
        pooled = (y.float() * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, P), padding excluded
        return F.normalize(pooled, dim=-1)

    def embed_frames(
        self, wave: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Aggregated hidden states (B, F, H) fp32 and the valid-frame mask (B, F) bool."""
        mask = self._check_inputs(wave, attention_mask)
        if self.cfg.normalize_wave:
            wave = _normalize_wave(wave, mask)
        # Layer-norm feature encoders (XLS-R, the Large sizes; data2vec-audio's has no other)
        # were trained with padding masks; group-norm ones (the Base sizes) normalise over time
        # and expect zero padding without a mask.
        norm = getattr(self.encoder.config, "feat_extract_norm", "layer")
        pass_mask = mask if norm == "layer" else None
        want_all = self.cfg.aggregation != "last"
        wave = wave.to(self.encoder.dtype)  # bf16 weights (DeepSpeed) take bf16 input
        out = self.encoder(wave, attention_mask=pass_mask, output_hidden_states=want_all)
        num_frames = out.last_hidden_state.shape[1]
        if mask is None:
            frame_mask = wave.new_ones(wave.shape[0], num_frames, dtype=torch.bool)
        else:
            frame_mask = self.encoder._get_feature_vector_attention_mask(num_frames, mask)
        return self._aggregate(out), frame_mask

    def _check_inputs(self, wave: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
        if wave.dim() != 2 or not wave.is_floating_point():
            raise ValueError(f"wave must be float (B, T), got {wave.dtype} {tuple(wave.shape)}")
        min_len = self.receptive_field
        if wave.shape[1] < min_len:
            raise ValueError(f"wave has {wave.shape[1]} samples; the encoder needs >= {min_len}")
        if mask is None:
            return None
        if mask.shape != wave.shape:
            raise ValueError(f"attention_mask {tuple(mask.shape)} != wave {tuple(wave.shape)}")
        mask = mask.long()
        if (mask.sum(-1) < min_len).any():  # would give an empty masked mean
            raise ValueError(f"every wave needs >= {min_len} valid samples (attention_mask)")
        return mask

    def _aggregate(self, out: Any) -> torch.Tensor:
        """(B, F, H) fp32 from the encoder output, per cfg.aggregation."""
        if self.cfg.aggregation == "last":
            return out.last_hidden_state.float()
        states = out.hidden_states
        if len(states) != self.num_hidden_states:
            raise RuntimeError(f"encoder returned {len(states)} hidden states, expected "
                               f"{self.num_hidden_states} (layerdrop must be 0)")
        # transformers 5 records each layer's output, so a pre-norm encoder's last state comes
        # before its final layer norm (wav2vec2, hubert and wavlm with do_stable_layer_norm);
        # transformers 4 returned the normed one, as the study's code saw: take it from
        # last_hidden_state. Post-norm encoders (data2vec-audio, the Base sizes) have no final
        # norm: there the two are the same tensor.
        states = (*states[:-1], out.last_hidden_state)
        if self.cfg.aggregation == "mean_all":
            weights = [1.0 / len(states)] * len(states)
        else:
            weights = torch.softmax(self.layer_weights.float(), dim=0).unbind(0)
        # Running sum in fp32: no (L+1, B, F, H) stack, and bf16 states do not lose precision.
        total = states[0].float() * weights[0]
        for w, h in zip(weights[1:], states[1:], strict=True):
            total = total + w * h
        return total

    @property
    def _no_split_modules(self) -> list[str]:
        """Class names of the encoder's layers (e.g. Wav2Vec2EncoderLayerStableLayerNorm): the
        blocks Accelerate's FSDP transformer-based auto wrap shards as units. transformers'
        own attribute is missing (wav2vec2, wavlm, data2vec-audio) or names the post-norm layer
        only (hubert), so it is read from the layers built."""
        return sorted({type(layer).__name__ for layer in self.encoder.encoder.layers})

    @property
    def receptive_field(self) -> int:
        """Samples needed for one frame (400 for every preset and published checkpoint)."""
        return receptive_field(self.encoder.config.conv_kernel, self.encoder.config.conv_stride)

    def param_groups(
        self, encoder_lr: float, head_lr: float, weight_decay: float, *, exclude_norm_bias: bool = True
    ) -> list[dict]:
        """AdamW parameter groups: encoder vs head (head + layer_weights), each split into
        decayed weights and, when exclude_norm_bias, undecayed biases/norm gains/1-d params and
        the positional conv's weight-norm magnitude. Frozen parameters are left out; empty
        groups are dropped. Each group carries a "name"."""
        if min(encoder_lr, head_lr, weight_decay) < 0:
            raise ValueError(f"learning rates and weight_decay must be >= 0, got "
                             f"{encoder_lr}, {head_lr}, {weight_decay}")
        buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            part = "encoder" if name.startswith("encoder.") else "head"
            no_decay = p.ndim < 2 or name.endswith("parametrizations.weight.original0")
            buckets.setdefault((part, exclude_norm_bias and no_decay), []).append(p)
        groups = []
        for part, lr in (("encoder", encoder_lr), ("head", head_lr)):
            for no_decay in (False, True):
                params = buckets.get((part, no_decay), [])
                if params:
                    groups.append({"name": part + ("_no_decay" if no_decay else ""), "params": params,
                                   "lr": lr, "weight_decay": 0.0 if no_decay else weight_decay})
        return groups

    def save_pretrained(self, directory: str | Path,
                        state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Write model.safetensors and model_config.json (ModelConfig + the encoder's full
        config with its model_type, so the directory loads without the hub), each atomically.
        ``state_dict``: the weights to write instead of ``self.state_dict()``, for a sharded
        model (ZeRO-3, FSDP) whose own parameters are shards: the full one gathered by
        Accelerate's ``get_state_dict``. ``integrity.json`` records the size and sha256 of both
        (files added later, as ``info.json`` by sccl/checkpoint.py, are not in it)."""
        directory = Path(directory)
        if state_dict is None:
            state_dict = self.state_dict()
        elif state_dict.keys() != self.state_dict().keys():
            diff = sorted(state_dict.keys() ^ self.state_dict().keys())
            raise ValueError(f"save_pretrained: state_dict keys differ from the model's: {diff[:5]}")
        tensors, aliases = _dedupe_shared(state_dict)
        weights = directory / WEIGHTS_NAME
        sha = save_tensors(weights, tensors, {"aliases": json.dumps(aliases)})
        config = json_bytes({
            "format_version": FORMAT_VERSION,
            "model_config": dataclasses.asdict(self.cfg),
            "encoder_config": self.encoder.config.to_dict(),
        })
        write_record(directory, {WEIGHTS_NAME: (weights.stat().st_size, sha),
                                 CONFIG_NAME: (len(config), hashlib.sha256(config).hexdigest())})
        atomic_write_bytes(directory / CONFIG_NAME, config)  # last, as before the record
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides: Any) -> SupConModel:
        """Rebuild from a save_pretrained directory (CPU, no hub). `overrides` replace
        ModelConfig fields that leave the weights' shapes alone (gradient_checkpointing,
        attn_implementation, head_dropout, ...; not encoder, aggregation, proj_dim). Every file
        that ``integrity.json`` lists must have its recorded size and sha256."""
        directory = Path(directory)
        fixed = sorted(set(overrides) & {"encoder", "aggregation", "proj_dim"})
        if fixed:
            raise ValueError(f"from_pretrained cannot override {fixed}: they define the weights")
        if (directory / RECORD_NAME).is_file():  # older directories have none: unchecked
            check_record(directory, (CONFIG_NAME, WEIGHTS_NAME), ModelLoadError,
                         "restore the directory from a copy or save it again")
        meta = _read_model_config(directory / CONFIG_NAME)
        try:
            cfg = ModelConfig(**meta["model_config"])
        except (TypeError, ValueError) as err:
            raise ModelLoadError(f"{directory / CONFIG_NAME}: model_config: {err}") from err
        cfg = dataclasses.replace(cfg, **overrides)
        try:
            model = cls(cfg, encoder_config=meta["encoder_config"])
        except ModelLoadError as err:  # unsupported model_type
            raise ModelLoadError(f"{directory / CONFIG_NAME}: {err}") from err
        except (TypeError, ValueError, KeyError) as err:
            raise ModelLoadError(f"{directory / CONFIG_NAME}: encoder_config: {err}") from err
        state = read_weights(directory / WEIGHTS_NAME)
        try:
            result = model.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shape mismatch
            raise ModelLoadError(f"{directory / WEIGHTS_NAME}: {err}") from err
        bad = sorted((set(result.missing_keys) | set(result.unexpected_keys)) - _OPTIONAL_KEYS)
        if bad:
            raise ModelLoadError(f"{directory / WEIGHTS_NAME}: does not match {CONFIG_NAME}: "
                                 f"missing {result.missing_keys[:5]}, unexpected "
                                 f"{result.unexpected_keys[:5]}")
        return model


def _enable_checkpointing(encoder: PreTrainedModel) -> None:
    kwargs = {"use_reentrant": False}  # works with a frozen conv stack and DDP
    if hasattr(encoder, "activation_checkpointing_enable"):  # later 5.x; the old name warns
        encoder.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _normalize_wave(wave: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per-utterance zero mean / unit variance over valid samples; padding stays 0. (B, T)."""
    m = torch.ones_like(wave) if mask is None else mask.to(wave.dtype)
    n = m.sum(-1, keepdim=True)
    mean = (wave * m).sum(-1, keepdim=True) / n
    var = ((wave - mean) ** 2 * m).sum(-1, keepdim=True) / n
    return (wave - mean) / torch.sqrt(var + 1e-7) * m


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
                 ) -> str:
    """Write ``tensors`` (copied to CPU, contiguous) as one safetensors file with ``metadata``
    (+ format "pt"), atomically; return its sha256. The one writer of sccl's own weights
    files: SupConModel directories, the Stage 2 classifier and embedding cache, the export."""
    cpu = {k: t.detach().to("cpu").contiguous() for k, t in tensors.items()}
    blob = safetensors_save(cpu, metadata={"format": "pt", **metadata})
    atomic_write_bytes(path, blob)
    return hashlib.sha256(blob).hexdigest()


# ------------------------------------------------------------------ integrity record


def json_bytes(obj: Any) -> bytes:
    """``obj`` as the JSON text sccl writes (indented, newline at the end), encoded: the
    bytes that are written and hashed."""
    return (json.dumps(obj, indent=2) + "\n").encode("utf-8")


def write_record(directory: Path, files: dict[str, tuple[int, str]]) -> None:
    """``integrity.json``: ``{"format": 1, "files": {name: {"size", "sha256"}}}`` for the
    files of ``directory`` given as name -> (size, sha256), computed by the writer from the
    bytes it wrote. The same shape as a Stage 1 checkpoint's manifest.json."""
    atomic_write_json(directory / RECORD_NAME, {"format": 1, "files": {
        name: {"size": size, "sha256": sha} for name, (size, sha) in sorted(files.items())}})


def check_record(directory: Path, required: tuple[str, ...], error: type[Exception],
                 fix: str) -> None:
    """Raise ``error`` (one line naming the file, then ``fix``) unless ``integrity.json``
    lists every name in ``required`` and every file it lists has its recorded size and
    sha256. Files it does not list are not checked: no loader reads them, and copies
    gather such files (a hub download's .gitattributes and .cache/)."""
    path = directory / RECORD_NAME
    files = _record_files(path, error)
    for name in required:
        if name not in files:
            raise error(f"{path}: does not list {name}; {fix}")
    for name, (size, sha) in files.items():
        problem = _file_problem(directory / name, size, sha)
        if problem:
            raise error(f"{directory / name}: {problem}; {fix}")


def _record_files(path: Path, error: type[Exception]) -> dict[str, tuple[int, str]]:
    """name -> (size, sha256) of a well-formed record; names are plain file names, so a
    hostile record cannot point the check at a file outside the directory (/dev/zero)."""
    data = read_json_object(path, error, "written by save_pretrained")
    files = data.get("files")
    if set(data) != {"format", "files"} or data["format"] != 1 or not isinstance(files, dict):
        raise error(f"{path}: not an integrity record ({{\"format\": 1, \"files\": {{...}}}})")
    out = {}
    for name, entry in files.items():
        if name in ("", ".", "..") or any(c in name for c in "/\\\0"):
            raise error(f"{path}: {name!r} is not a file name in this directory")
        if not (isinstance(entry, dict) and set(entry) == {"size", "sha256"}
                and type(entry["size"]) is int and entry["size"] >= 0
                and isinstance(entry["sha256"], str)
                and re.fullmatch("[0-9a-f]{64}", entry["sha256"])):
            raise error(f"{path}: entry {name!r} must be {{\"size\": bytes, \"sha256\": 64 "
                        "hex digits}")
        out[name] = (entry["size"], entry["sha256"])
    return out


def _file_problem(path: Path, size: int, sha: str) -> str | None:
    """What is wrong with ``path`` against its recorded size and sha256 (size first: cheap,
    and no file of another length is read), or None."""
    if not path.is_file():
        return f"missing, but listed in {RECORD_NAME}"
    try:
        actual = path.stat().st_size
        if actual != size:
            return (f"{actual} bytes, {size} recorded in {RECORD_NAME}: changed or truncated "
                    "since it was saved")
        if file_sha256(path) != sha:
            return (f"sha256 differs from the one recorded in {RECORD_NAME}: changed or "
                    "damaged since it was saved")
    except OSError as err:
        return f"cannot read: {err.strerror or err}"
    return None


def _dedupe_shared(state: dict[str, torch.Tensor]) -> tuple[dict, dict[str, str]]:
    """safetensors refuses tensors sharing storage: keep the first name of each, and map the
    others to it (restored on load)."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in state.items():
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), t.shape, t.stride())
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t
    return tensors, aliases


def _read_model_config(path: Path) -> dict:
    meta = read_json_object(path, ModelLoadError, f"a SupConModel directory holds {CONFIG_NAME} "
                            f"and {WEIGHTS_NAME} (written by SupConModel.save_pretrained)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(f"{path}: format_version {meta.get('format_version')!r}, "
                             f"this code reads {FORMAT_VERSION}")
    for key in ("model_config", "encoder_config"):
        if not isinstance(meta.get(key), dict):
            raise ModelLoadError(f"{path}: key '{key}' missing or not an object")
    return meta


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file written by ``save_tensors`` (aliases restored)."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: missing (written by SupConModel.save_pretrained)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
            state = {name: f.get_tensor(name) for name in f.keys()}
        for alias, source in aliases.items():
            state[alias] = state[source]
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise ModelLoadError(f"{path}: corrupt or truncated safetensors file: {err}") from err
    return state
