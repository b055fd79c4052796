"""Score audio with a trained run: ``sccl-score``, and the exported detector.

    sccl-score --run RUN PATHS... [--out scores.tsv]     # RUN: a run dir or RUN/export
    -> TSV with a header: path <TAB> score <TAB> decision ("bonafide" | "spoof") <TAB> llr

A path holding a tab, a line break or a double quote is written in double quotes with each
double quote doubled (the CSV convention; Python's ``csv.reader(f, delimiter="\\t")`` on a
file opened with ``newline=""`` and ``pandas.read_csv(sep="\\t")`` give the name back); other
paths are written as they are, bytes that are not UTF-8 included (as the file system holds
them).

PATHS may be audio files (anything soundfile reads, any sample rate: resampled; stereo:
downmixed), directories (searched recursively for audio files) or shard directories
(``manifest.json``; each sample is reported as ``<shard tar>/<member>``). The score is the
classifier's logit (higher = bona fide); the decision uses the threshold fixed on the dev set
by Stage 2 (EER threshold, bona fide if score > threshold). The llr column is the score as a
log-likelihood ratio: the run's calibrated LLR where ``sccl.evaluate --eval.calibrate dev``
stored one, else the logit minus Stage 2's training prior log-odds (sccl/linear.py). Long
files are scored as the mean over windows of the Stage 2 crop length (``--crop windows``, the
default); a window needs one encoder frame's receptive field (400 samples, 0.025 s at
16 kHz, for every preset and published checkpoint) and a hop at least one frame (320 samples,
0.02 s). A clip under a tenth of the window is scored with a warning naming it. An input
that cannot be read is reported on stderr (one line naming it) and the others are still
scored; the exit code is then 1 (``--strict``: stop at the first, no TSV). ``--out`` is
tried before scoring (a read-only or forbidden place: exit 2 at once); if writing it fails
at the end (a full disk), the TSV goes to stdout instead and the exit code is 3.

``SpoofDetector`` holds encoder, projection head and classifier. ``save_pretrained(dir)``
writes a Hugging Face style directory of data only, no code: config.json (with the wav2vec2
config inside), model.safetensors and integrity.json (size and sha256 of every other file),
so ``SpoofDetector.from_pretrained(dir)`` needs neither the hub nor the run directory. Stage
2 writes one to ``RUN/export/``. Loading checks everything before any weight is used: every
file the record lists (config.json and model.safetensors must be among them; unlisted files
are never read), every key and shape, the config's fields and types, finite weights and
threshold; a problem is one ``ScoringError`` naming file and key. Exports of format 1 and 2
(no record covering config.json) are refused with the command that writes them again. A
hash finds changes and damage, not a forger who rewrites the record as well: that would
need a signature.
``score_array(wave, sample_rate)`` and ``score_file(path)`` score one utterance from Python.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import numbers
import os
import re
import shutil
import sys
import tarfile
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import nn

from sccl.config import ConfigError, from_dict
from sccl.data_shards import inside_name
from sccl.embed import EmbedOptions, check_window, embed_waves
from sccl.fileio import atomic_write_bytes, read_json_object, replace_dir, storage_problem
from sccl.linear import RunMismatchError, linear_scores, llr_map, load_stage2
from sccl.model import (
    RECORD_NAME,
    ModelConfig,
    ModelLoadError,
    SupConModel,
    check_record,
    json_bytes,
    read_weights,
    save_tensors,
    write_record,
)

EXPORT_FORMAT = "sccl-spoof-detector"
# 3: integrity.json covers every file (2: config.json held the weights' sha256 only; 1: no
# hash). 1 and 2 are refused with the command that writes the export again.
EXPORT_VERSION = 3
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
REEXPORT = ("export it again from its run: python -c \"from sccl.scoring import export_run; "
            "export_run('RUN')\"")
FAR_SHORTER = 10  # a clip under 1/10 of the window is scored with a warning
# config.json fields: name -> check of the value (model_config is checked as a ModelConfig)
_FIELDS: dict[str, tuple[str, Callable[[object], bool]]] = {
    "model_type": ("the string " + repr(EXPORT_FORMAT), lambda v: v == EXPORT_FORMAT),
    "format_version": (f"the integer {EXPORT_VERSION}", lambda v: v == EXPORT_VERSION),
    "model_config": ("an object", lambda v: isinstance(v, dict)),
    "encoder_config": ("an object", lambda v: isinstance(v, dict)),
    "proj_dim": ("a positive integer", lambda v: _is_int(v) and v > 0),
    "threshold": ("a finite number", lambda v: _is_number(v) and math.isfinite(v)),
    "sample_rate": ("a positive integer", lambda v: _is_int(v) and v > 0),
    "seconds": ("a finite number > 0", lambda v: _is_number(v) and math.isfinite(v) and v > 0),
    "score": ("a string", lambda v: isinstance(v, str)),
}
# Optional config.json fields (absent in exports written before them): checked when present.
_OPTIONAL: dict[str, tuple[str, Callable[[object], bool]]] = {
    "llr": ("an object with a finite scale > 0, a finite offset and calibrated true/false",
            lambda v: isinstance(v, dict) and set(v) == {"scale", "offset", "calibrated"}
            and _is_number(v["scale"]) and math.isfinite(v["scale"]) and v["scale"] > 0
            and _is_number(v["offset"]) and math.isfinite(v["offset"])
            and isinstance(v["calibrated"], bool)),
}


class ScoringError(RuntimeError):
    """Unreadable input or a model directory that cannot be loaded (one line, names the file)."""


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One utterance's result."""

    score: float  # the classifier's logit; higher = bona fide
    probability: float  # sigmoid(score): P(bona fide) under the classifier's balanced training
    decision: str  # "bonafide" if score > the dev EER threshold, else "spoof"
    llr: float  # the score as a log-likelihood ratio (calibrated where the run has it)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _one_line(err: BaseException) -> str:
    """An exception's message on one line (libraries' messages may span several), without
    object reprs (soundfile names its input "<_io.BytesIO object at 0x...>")."""
    text = " ".join(str(err).split()) or type(err).__name__
    text = re.sub(r"<[^<>]* object at 0x[0-9a-fA-F]+>", "the file", text)
    return text if len(text) <= 300 else text[:297] + "..."


def _check_finite(state: dict[str, torch.Tensor], where: str) -> None:
    for key, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ScoringError(f"{where}: tensor {key!r} holds {bad} non-finite value(s) "
                               "(NaN/Inf); the model is broken, re-export it from a good run")


class SpoofDetector(nn.Module):
    """Stage 1 encoder + head (frozen) and the Stage 2 linear classifier, in eval mode."""

    def __init__(self, model: SupConModel, weight: torch.Tensor, bias: torch.Tensor, *,
                 threshold: float, sample_rate: int = 16000, seconds: float = 10.0,
                 llr: tuple[float, float] = (1.0, 0.0), calibrated: bool = False) -> None:
        super().__init__()
        if not math.isfinite(float(threshold)):
            raise ScoringError(f"threshold is {threshold}: a decision needs a finite threshold")
        self.model = model.eval()
        self.classifier = nn.Linear(weight.shape[1], 1)
        with torch.no_grad():
            self.classifier.weight.copy_(weight.reshape(1, -1))
            self.classifier.bias.copy_(bias.reshape(1))
        self.threshold = float(threshold)
        self.sample_rate = int(sample_rate)
        self.seconds = float(seconds)  # the Stage 2 crop length: the window length here
        self.llr_map = (float(llr[0]), float(llr[1]))  # LLR = scale * score + offset
        self.calibrated = bool(calibrated)
        self.eval()

    @classmethod
    def from_run(cls, run: str | Path) -> SpoofDetector:
        """Load RUN/stage1/<weights> + RUN/stage2 (checked to belong together)."""
        run = Path(run)
        meta, weight, bias, thr = load_stage2(run)
        _check_finite({"weight": weight, "bias": bias}, str(run / "stage2" / "classifier.safetensors"))
        model = SupConModel.from_pretrained(run / "stage1" / meta.get("stage1_which", "best"))
        raw, cal = llr_map(run, meta)
        return cls(model, weight, bias, threshold=thr["threshold"],
                   sample_rate=meta.get("sample_rate", 16000),
                   seconds=meta.get("embed", {}).get("seconds", 10.0), llr=cal or raw,
                   calibrated=cal is not None)

    def save_pretrained(self, directory: str | Path) -> Path:
        """model.safetensors (every tensor copied: no shared storage), integrity.json (size
        and sha256 of it and of config.json), config.json. Non-finite weights are refused.
        A file added to the export later (a README.md model card) must go into the record."""
        directory = Path(directory)
        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in self.state_dict().items()}
        _check_finite(state, f"export to {directory}")
        weights_sha256 = save_tensors(directory / WEIGHTS, state, {})
        config = json_bytes({
            "model_type": EXPORT_FORMAT, "format_version": EXPORT_VERSION,
            "model_config": dataclasses.asdict(self.model.cfg),
            "encoder_config": self.model.encoder.config.to_dict(),
            "proj_dim": self.classifier.in_features, "threshold": self.threshold,
            "sample_rate": self.sample_rate, "seconds": self.seconds,
            "score": "logit of Linear(z); higher = bona fide; bona fide if score > threshold",
            "llr": {"scale": self.llr_map[0], "offset": self.llr_map[1],
                    "calibrated": self.calibrated},  # LLR = scale * score + offset
        })
        write_record(directory, {
            WEIGHTS: ((directory / WEIGHTS).stat().st_size, weights_sha256),
            CONFIG: (len(config), hashlib.sha256(config).hexdigest())})
        atomic_write_bytes(directory / CONFIG, config)  # last: a directory with it is complete
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> SpoofDetector:
        """Load a ``save_pretrained`` directory (CPU; move it with ``.to(device)``).

        Raises ScoringError (one line naming the file and key) unless every file listed in
        integrity.json (config.json and model.safetensors among them) has the size and sha256
        recorded at export, config.json is complete and well-typed, and the tensors are
        exactly the model's keys with the model's shapes, all finite."""
        directory = Path(directory)
        _check_export_files(directory)
        cfg = _read_export_config(directory / CONFIG)
        weights = directory / WEIGHTS
        det = _build_detector(cfg, directory / CONFIG)
        try:
            state = read_weights(weights)
        except ModelLoadError as err:
            raise ScoringError(_one_line(err)) from None
        _check_state(weights, state, det.state_dict())
        det.load_state_dict(state, strict=True)
        return det.eval()

    @torch.no_grad()
    def score(self, wave: torch.Tensor, mask: torch.Tensor, opts: EmbedOptions) -> np.ndarray:
        """Scores (B,) float64 of a batch wave (B, T), mask (B, T) at ``self.sample_rate``."""
        z = embed_waves(self.model, wave, mask, opts, self.sample_rate)
        return linear_scores(z.cpu(), self.classifier.weight.cpu(), self.classifier.bias.cpu())

    def llr(self, scores: np.ndarray) -> np.ndarray:
        """The scores (N,) as log-likelihood ratios (calibrated where the run has it)."""
        return self.llr_map[0] * np.asarray(scores, dtype=np.float64) + self.llr_map[1]

    def decide(self, scores: np.ndarray) -> list[str]:
        return ["bonafide" if s > self.threshold else "spoof" for s in np.asarray(scores)]

    def options(self, crop: str = "windows", seconds: float | None = None,
                hop_seconds: float | None = None, batch_size: int = 8) -> EmbedOptions:
        """sccl-score's embedding options: windows of the Stage 2 crop length by default.
        ValueError (one line) for a window under one encoder frame's receptive field or a
        hop under one frame: the encoder refuses the first, the second only repeats work."""
        for name, value in (("seconds", seconds), ("hop_seconds", hop_seconds)):
            if value is not None and not (isinstance(value, numbers.Real)
                                          and not isinstance(value, bool)
                                          and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        opts = EmbedOptions(crop=crop,
                            seconds=float(seconds or self.seconds),  # 0: the default
                            hop_seconds=float(hop_seconds or 0.0), batch_size=max(1, batch_size))
        if crop != "full":
            check_window(opts, self.model, self.sample_rate,
                         ("seconds (--seconds)", "hop_seconds (--hop-seconds)"))
        return opts

    def score_array(self, wave, sample_rate: int, **options) -> Verdict:
        """Score one utterance given as numbers: ``wave`` (T,) mono or (T, C) channels last
        (as ``soundfile.read`` returns; channels are averaged), float in [-1, 1], signed
        integer PCM (scaled by its type's range) or uint8 (8-bit WAV: offset binary, 128 =
        silence), at any integer ``sample_rate`` (resampled). ``options``: crop, seconds,
        hop_seconds (as sccl-score's flags). Raises ValueError on unusable input; warns
        (``warnings.warn``) when the wave is under a tenth of the window."""
        x = _as_mono(wave)
        if not isinstance(sample_rate, numbers.Integral) or isinstance(sample_rate, bool) \
                or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
        from sccl.audio import resample

        w = resample(torch.from_numpy(x), int(sample_rate), self.sample_rate)
        return self._verdict("the wave", w, options)

    def score_file(self, path: str | Path, **options) -> Verdict:
        """Score one audio file exactly as sccl-score does; ScoringError names an unreadable
        file. ``options`` and the warning as in ``score_array``."""
        name, data = _read(Path(path))
        if isinstance(data, ScoringError):
            raise data
        return self._verdict(name, _decode(name, data, self.sample_rate), options)

    def short_clip(self, name: str, samples: int, opts: EmbedOptions) -> str | None:
        """A warning when a clip of ``samples`` is under a tenth of the window: its score rests
        on far less audio than a window holds (a rule of thumb, not a measured limit)."""
        if opts.crop == "full" or samples * FAR_SHORTER >= opts.seconds * self.sample_rate:
            return None
        return (f"{name}: {samples / self.sample_rate:.3g} s, under a tenth of the "
                f"{opts.seconds:g} s window: its score rests on little audio")

    def _verdict(self, name: str, w: torch.Tensor, options: dict) -> Verdict:
        opts = self.options(**options)
        note = self.short_clip(name, w.shape[0], opts)
        if note:
            warnings.warn(note, stacklevel=3)
        w = _pad_to(w, self.model.receptive_field)
        s = float(self.score(w[None], torch.ones(1, w.shape[0], dtype=torch.long), opts)[0])
        probability = 0.5 * (1.0 + math.tanh(s / 2))  # = sigmoid(s), no overflow
        return Verdict(s, probability, "bonafide" if s > self.threshold else "spoof",
                       float(self.llr(np.array([s]))[0]))


def _as_mono(wave) -> np.ndarray:
    """(T,) float32 of (T,) / (T, C) numbers; integer PCM scaled to [-1, 1)."""
    x = np.asarray(wave)
    if x.ndim == 2 and x.shape[1] > x.shape[0]:
        raise ValueError(f"wave of shape {x.shape} looks channels-first; pass (T, C) "
                         "(channels last, as soundfile.read returns), e.g. wave.T")
    if x.ndim not in (1, 2) or x.size == 0:
        raise ValueError(f"wave must be (T,) or (T, C) with samples, got shape {x.shape}")
    if x.dtype == np.uint8:  # 8-bit WAV PCM is offset binary: 128 is silence
        x = (x.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(x.dtype, np.signedinteger):
        x = x / float(-np.iinfo(x.dtype).min)  # int16: / 32768, as soundfile does
    elif not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"wave dtype {x.dtype} is not supported: pass float in [-1, 1], "
                         "signed integer PCM (int16, int32) or uint8 (8-bit WAV)")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError("wave holds NaN or Inf")
    return np.ascontiguousarray(x.mean(axis=1) if x.ndim == 2 else x)


def _pad_to(wave: torch.Tensor, min_len: int) -> torch.Tensor:
    # Shorter than one encoder frame: pad with silence rather than refuse (a 20 ms clip).
    return nn.functional.pad(wave, (0, max(0, min_len - wave.shape[0])))


# ------------------------------------------------------------------------ export checks


def _check_export_files(directory: Path) -> None:
    """Every file integrity.json lists has its recorded size and sha256, and config.json and
    model.safetensors are listed; an export of format 1 or 2 (no record) is told apart."""
    if not (directory / RECORD_NAME).is_file():
        version = _peek_version(directory / CONFIG)
        if version in (1, 2):
            raise ScoringError(f"{directory / CONFIG}: export format {version} has no "
                               f"{RECORD_NAME} covering {CONFIG}; {REEXPORT}")
        raise ScoringError(f"{directory / RECORD_NAME}: missing; an export directory holds "
                           f"{RECORD_NAME}, {CONFIG} and {WEIGHTS} "
                           f"(SpoofDetector.save_pretrained); {REEXPORT}")
    check_record(directory, (CONFIG, WEIGHTS), ScoringError, REEXPORT)


def _peek_version(path: Path) -> object:
    """config.json's format_version, or None: only to name an old export in an error."""
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format_version")
    except (OSError, ValueError, AttributeError):
        return None


def _read_export_config(path: Path) -> dict:
    """config.json of an export, every field present and of the right type."""
    cfg = read_json_object(path, ScoringError, f"an export directory holds {CONFIG} and "
                           f"{WEIGHTS} (SpoofDetector.save_pretrained)")
    if cfg.get("model_type") != EXPORT_FORMAT:
        raise ScoringError(f"{path}: not an sccl detector export (model_type must be "
                           f"{EXPORT_FORMAT!r})")
    if cfg.get("format_version") in (1, 2):
        raise ScoringError(f"{path}: export format {cfg['format_version']} is no longer read; "
                           f"{REEXPORT}")
    unknown = sorted(set(cfg) - set(_FIELDS) - set(_OPTIONAL))
    if unknown:
        raise ScoringError(f"{path}: unknown key {unknown[0]!r}")
    for key, (what, ok) in {**_FIELDS, **_OPTIONAL}.items():
        if key in _FIELDS and key not in cfg:
            raise ScoringError(f"{path}: key {key!r} missing")
        if key in cfg and not ok(cfg[key]):
            raise ScoringError(f"{path}: {key} must be {what}")
    return cfg


def _build_detector(cfg: dict, path: Path) -> SpoofDetector:
    """The detector described by config.json, randomly initialised (weights loaded next)."""
    try:
        model_cfg = from_dict(ModelConfig, cfg["model_config"], source=f"{path}: model_config")
    except ConfigError as err:
        raise ScoringError(_one_line(err)) from None
    if model_cfg.proj_dim != cfg["proj_dim"]:
        raise ScoringError(f"{path}: proj_dim {cfg['proj_dim']} differs from model_config."
                           f"proj_dim {model_cfg.proj_dim}")
    try:
        model = SupConModel(model_cfg, encoder_config=cfg["encoder_config"])
    except Exception as err:  # transformers/torch raise many types for a bad encoder config
        raise ScoringError(f"{path}: encoder_config: cannot build the encoder: "
                           f"{type(err).__name__}: {_one_line(err)}") from None
    d, llr = cfg["proj_dim"], cfg.get("llr", {"scale": 1.0, "offset": 0.0, "calibrated": False})
    return SpoofDetector(model, torch.zeros(1, d), torch.zeros(1), threshold=cfg["threshold"],
                         sample_rate=cfg["sample_rate"], seconds=cfg["seconds"],
                         llr=(llr["scale"], llr["offset"]), calibrated=llr["calibrated"])


def _check_state(path: Path, state: dict[str, torch.Tensor],
                 expected: dict[str, torch.Tensor]) -> None:
    """Exactly the expected keys, each with the expected shape, every value finite."""
    missing = [k for k in expected if k not in state]
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        what = (f"missing {len(missing)} tensor(s), e.g. {missing[0]!r}" if missing
                else f"{len(extra)} unexpected tensor(s), e.g. {extra[0]!r}")
        raise ScoringError(f"{path}: {what}; it does not match the model in {CONFIG}")
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise ScoringError(f"{path}: tensor {key!r} has shape {tuple(state[key].shape)}, "
                               f"the model in {CONFIG} needs {tuple(ref.shape)}")
    _check_finite(state, str(path))


def load_detector(path: str | Path) -> SpoofDetector:
    """A run directory (stage1 + stage2) or an export directory (config.json)."""
    path = Path(path)
    if (path / CONFIG).is_file() or (path / RECORD_NAME).is_file():
        return SpoofDetector.from_pretrained(path)
    if not path.is_dir():
        raise ScoringError(f"--run {path}: not a directory")
    try:
        return SpoofDetector.from_run(path)
    except (RunMismatchError, ModelLoadError) as err:
        raise ScoringError(_one_line(err)) from None


def export_run(run: str | Path, out: str | Path | None = None) -> Path:
    """Write RUN/export (or ``out``) from a finished Stage 2 run, whole or not at all: it is
    written beside, then renamed over the old one (a full disk leaves the old export)."""
    det = SpoofDetector.from_run(run)
    out = Path(out) if out else Path(run) / "export"
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        det.save_pretrained(tmp)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ------------------------------------------------------------------------------ inputs


def _audio_suffixes() -> set[str]:
    return {"." + ext.lower() for ext in sf.available_formats()} | {".mp3", ".opus"}


Input = tuple[str, "bytes | ScoringError"]  # (name, encoded audio, or why it is unreadable)


def _read(path: Path) -> Input:
    try:
        return str(path), path.read_bytes()
    except OSError as err:
        return str(path), ScoringError(f"{path}: cannot read: {err.strerror or _one_line(err)}")


def iter_inputs(paths: list[str]) -> Iterator[Input]:
    """(name, encoded audio bytes or a ScoringError) for every file, directory (recursive) or
    shard dir; an unreadable input is yielded as its error, so the others are still scored."""
    suffixes = _audio_suffixes()
    for p in map(Path, paths):
        if (p / "manifest.json").is_file():
            yield from _iter_shard_dir(p)
        elif p.is_dir():
            files = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in suffixes)
            if not files:
                yield str(p), ScoringError(f"{p}: no audio files in this directory")
            yield from map(_read, files)
        elif p.is_file():
            yield _read(p)
        else:
            yield str(p), ScoringError(f"{p}: no such file or directory")


def _iter_shard_dir(shard_dir: Path) -> Iterator[Input]:
    manifest_path = shard_dir / "manifest.json"
    try:
        entries = json.loads(manifest_path.read_text(encoding="utf-8"))["shards"]
        names = [e["name"] for e in entries]
    except (OSError, ValueError, KeyError, TypeError) as err:
        yield str(manifest_path), ScoringError(f"{manifest_path}: unreadable shard manifest: "
                                               f"{_one_line(err)}")
        return
    for name in names:
        if not inside_name(name):  # a manifest is data: never open a file outside the dir
            yield str(manifest_path), ScoringError(f"{manifest_path}: shard name {name!r} is "
                                                   "not a file name inside the directory")
            continue
        tar_path = shard_dir / name
        try:
            with tarfile.open(tar_path, mode="r:") as tar:
                for m in tar:
                    if m.isfile() and not m.name.endswith(".json"):
                        yield f"{tar_path}/{m.name}", tar.extractfile(m).read()
        except (tarfile.TarError, OSError) as err:
            yield str(tar_path), ScoringError(f"{tar_path}: unreadable shard: {_one_line(err)}")


def _decode(name: str, data: bytes, sample_rate: int) -> torch.Tensor:
    from sccl.audio import AudioDecodeError, decode

    try:
        wave = decode(data, sample_rate=sample_rate)
    except AudioDecodeError as err:
        raise ScoringError(f"{name}: {_one_line(err)}") from None
    if wave.numel() == 0:
        raise ScoringError(f"{name}: no audio samples")
    return wave


def score_paths(det: SpoofDetector, paths: list[str], opts: EmbedOptions, batch_size: int = 8,
                on_error: Callable[[ScoringError], None] | None = None,
                on_warning: Callable[[str], None] | None = None
                ) -> Iterator[tuple[str, float, str, float]]:
    """(name, score, decision, llr) for every readable input, in input order, ``batch_size``
    files at once. An unreadable input goes to ``on_error`` (default: raise its
    ScoringError); a clip under a tenth of the window to ``on_warning`` (default:
    ``warnings.warn``)."""
    from sccl.audio import collate

    batch: list[tuple[str, torch.Tensor]] = []

    def flush():
        waves, masks = collate([w for _, w in batch])
        scores = det.score(waves, masks, opts)
        out = list(zip([n for n, _ in batch], scores.tolist(), det.decide(scores),
                       det.llr(scores).tolist(), strict=True))
        batch.clear()
        return out

    rf = det.model.receptive_field
    for name, data in iter_inputs(paths):
        try:
            if isinstance(data, ScoringError):
                raise data
            wave = _decode(name, data, det.sample_rate)
        except ScoringError as err:
            if on_error is None:
                raise
            on_error(err)
            continue
        note = det.short_clip(name, wave.shape[0], opts)
        if note:
            (on_warning or warnings.warn)(note)
        batch.append((name, _pad_to(wave, rf)))
        if len(batch) == batch_size:
            yield from flush()
    if batch:
        yield from flush()


DESCRIPTION = """\
Score audio files with a trained run: one TSV line per file (path, score, decision, llr).
The score is the classifier's logit (higher = bona fide); the decision is "bonafide" when
the score exceeds the dev-set EER threshold fixed by Stage 2, else "spoof"; llr is the score
as a log-likelihood ratio (calibrated if sccl.evaluate --eval.calibrate dev was run).
Inputs: audio files of any format, rate and channel count, directories (searched
recursively) and shard directories. An unreadable input is reported on stderr and the rest
are still scored; so is a clip under a tenth of the window (a warning).
A path holding a tab, a line break or a double quote is written in double quotes with each
double quote doubled (CSV quoting: Python's csv.reader(f, delimiter="\\t") and
pandas.read_csv(sep="\\t") give it back); other paths are written as they are.
--out is tried before scoring: a place that cannot be written stops at once (exit 2); if
writing fails at the end (a full disk), the TSV goes to stdout instead (exit 3).
Exit codes: 0 all scored, 1 some input unreadable, 2 bad options or model, 3 --out could
not be written (the scores went to stdout)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sccl-score", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run directory (stage1 + stage2) or RUN/export")
    p.add_argument("paths", nargs="+", help="audio files, directories, shard directories")
    p.add_argument("--out", help="write the TSV here (atomically) instead of stdout; if that "
                                 "fails after scoring, the TSV goes to stdout (exit 3)")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first unreadable input and write no TSV")
    p.add_argument("--crop", choices=("windows", "first", "full"), default="windows",
                   help="windows: mean over windows (default); first: first --seconds only; "
                        "full: the whole file at once")
    p.add_argument("--seconds", type=float, default=None,
                   help="window / crop length (default or 0: the Stage 2 crop length); at "
                        "least one encoder frame's receptive field (0.025 at 16 kHz)")
    p.add_argument("--hop-seconds", type=float, default=None,
                   help="window hop (default: half the window); at least one encoder frame "
                        "(0.02 at 16 kHz)")
    p.add_argument("--batch-size", type=int, default=8, help="files per forward pass (default 8)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Exit code 0 all scored, 1 some input unreadable, 2 bad options or model, 3 --out could
    not be written (the TSV went to stdout)."""
    args = parse_args(argv)
    try:
        det = load_detector(args.run)
        device = torch.device(("cuda" if torch.cuda.is_available() else "cpu")
                              if args.device == "auto" else args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ScoringError(f"--device {args.device}: no CUDA device here")
        det.to(device)
        opts = det.options(args.crop, args.seconds, args.hop_seconds, args.batch_size)
        if args.out:
            _try_out(Path(args.out))
    except (ScoringError, ValueError, RuntimeError) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    failed: list[ScoringError] = []

    def report(err: ScoringError) -> None:
        print(f"error: {err}", file=sys.stderr, flush=True)
        failed.append(err)

    def warn(note: str) -> None:
        print(f"warning: {note}", file=sys.stderr, flush=True)

    try:
        rows = list(score_paths(det, args.paths, opts, max(1, args.batch_size),
                                on_error=None if args.strict else report, on_warning=warn))
    except ScoringError as err:  # --strict
        print(f"error: {err} (--strict: stopped, nothing written)", file=sys.stderr)
        return 1
    code = _write_tsv(_tsv_bytes(rows), args.out)
    if failed:
        print(f"error: {len(failed)} input(s) could not be scored (listed above); "
              f"{len(rows)} scored", file=sys.stderr)
    return code or (1 if failed else 0)


def _tsv_field(text: str) -> str:
    """``text`` as one TSV field: in double quotes, each one doubled, when it holds a tab, a
    line break or a double quote (the CSV convention, so csv readers give it back)."""
    if any(c in text for c in '\t\n\r"'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _tsv_bytes(rows: list[tuple[str, float, str, float]]) -> bytes:
    """The TSV of ``rows``, UTF-8; a name's bytes that are not UTF-8 (a file name decoded by
    Python with surrogateescape) are written back as they were."""
    text = "path\tscore\tdecision\tllr\n" + "".join(
        f"{_tsv_field(n)}\t{s:.6f}\t{d}\t{llr:.6f}\n" for n, s, d, llr in rows)
    return text.encode("utf-8", "surrogateescape")


def _try_out(out: Path) -> None:
    """Fail before scoring when a file cannot be created beside ``out`` (read-only, no
    permission, missing parent that cannot be made): ScoringError naming path and cause.
    A full disk often still lets an empty file be made: that is caught when writing."""
    if out.is_dir():
        raise ScoringError(f"--out {out}: is a directory; name a file")
    above = next(p for p in out.absolute().parents if p.exists())
    if not above.is_dir():
        raise ScoringError(f"--out {out}: {above} is not a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)  # as atomic_open would
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".probe", dir=out.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        named = OSError(err.errno, err.strerror, str(out))  # not the probe's random name
        cause = storage_problem(named) or f"{out}: {err.strerror or _one_line(err)}"
        raise ScoringError(f"--out {cause}") from None


def _write_tsv(data: bytes, out: str | None) -> int:
    """Write the TSV to ``out`` (atomically) or stdout; 0, or 3 when ``out`` could not be
    written and the TSV went to stdout instead (the scores are not lost)."""
    if out:
        try:
            atomic_write_bytes(out, data)
            return 0
        except OSError as err:
            cause = storage_problem(err) or f"{out}: {_one_line(err)}"
            print(f"error: --out {cause}; the scores follow on stdout instead", file=sys.stderr,
                  flush=True)
    binary = getattr(sys.stdout, "buffer", None)  # absent when stdout is a StringIO
    if binary is None:
        sys.stdout.write(data.decode("utf-8", "surrogateescape"))
    else:
        sys.stdout.flush()
        binary.write(data)
        binary.flush()
    return 3 if out else 0


if __name__ == "__main__":
    raise SystemExit(main())
