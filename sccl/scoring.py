"""Score audio with a trained run: ``sccl-score``, and the exported detector.

    sccl-score --run RUN PATHS... [--out scores.tsv]     # RUN: a run dir or RUN/export
    -> TSV with a header: path <TAB> score <TAB> decision ("bonafide" | "spoof")

PATHS may be audio files (anything soundfile reads, any sample rate: resampled; stereo:
downmixed), directories (searched recursively for audio files) or shard directories
(``manifest.json``; each sample is reported as ``<shard tar>/<member>``). The score is the
classifier's logit (higher = bona fide); the decision uses the threshold fixed on the dev set
by Stage 2 (EER threshold, bona fide if score > threshold). Long files are scored as the mean
over windows of the Stage 2 crop length (``--crop windows``, the default).

``SpoofDetector`` holds encoder, projection head and classifier. ``save_pretrained(dir)``
writes a Hugging Face style directory (config.json with the wav2vec2 config inside, and
model.safetensors), so ``SpoofDetector.from_pretrained(dir)`` needs neither the hub nor the
run directory. Stage 2 writes one to ``RUN/export/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_save
from torch import nn

from sccl.embed import EmbedOptions, embed_waves
from sccl.linear import RunMismatchError, linear_scores, load_stage2
from sccl.model import ModelConfig, ModelLoadError, SupConModel
from shards.atomic import atomic_open, atomic_write_bytes, atomic_write_json

EXPORT_FORMAT = "sccl-spoof-detector"
EXPORT_VERSION = 1


class ScoringError(RuntimeError):
    """Unreadable input or a model directory that cannot be loaded."""


class SpoofDetector(nn.Module):
    """Stage 1 encoder + head (frozen) and the Stage 2 linear classifier, in eval mode."""

    def __init__(self, model: SupConModel, weight: torch.Tensor, bias: torch.Tensor, *,
                 threshold: float, sample_rate: int = 16000, seconds: float = 10.0) -> None:
        super().__init__()
        self.model = model.eval()
        self.classifier = nn.Linear(weight.shape[1], 1)
        with torch.no_grad():
            self.classifier.weight.copy_(weight.reshape(1, -1))
            self.classifier.bias.copy_(bias.reshape(1))
        self.threshold = float(threshold)
        self.sample_rate = int(sample_rate)
        self.seconds = float(seconds)  # the Stage 2 crop length: the window length here
        self.eval()

    @classmethod
    def from_run(cls, run: str | Path) -> SpoofDetector:
        """Load RUN/stage1/<weights> + RUN/stage2 (checked to belong together)."""
        run = Path(run)
        meta, weight, bias, thr = load_stage2(run)
        model = SupConModel.from_pretrained(run / "stage1" / meta.get("stage1_which", "best"))
        return cls(model, weight, bias, threshold=thr["threshold"],
                   sample_rate=meta.get("sample_rate", 16000),
                   seconds=meta.get("embed", {}).get("seconds", 10.0))

    def save_pretrained(self, directory: str | Path) -> Path:
        """config.json + model.safetensors (every tensor copied: no shared storage)."""
        directory = Path(directory)
        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in self.state_dict().items()}
        atomic_write_bytes(directory / "model.safetensors",
                           safetensors_save(state, metadata={"format": "pt"}))
        atomic_write_json(directory / "config.json", {
            "model_type": EXPORT_FORMAT, "format_version": EXPORT_VERSION,
            "model_config": dataclasses.asdict(self.model.cfg),
            "encoder_config": self.model.encoder.config.to_dict(),
            "proj_dim": self.classifier.in_features, "threshold": self.threshold,
            "sample_rate": self.sample_rate, "seconds": self.seconds,
            "score": "logit of Linear(z); higher = bona fide; bona fide if score > threshold",
        })
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> SpoofDetector:
        """Load a ``save_pretrained`` directory (CPU; move it with ``.to(device)``)."""
        directory = Path(directory)
        cfg = _read_export_config(directory / "config.json")
        model = SupConModel(ModelConfig(**cfg["model_config"]),
                            encoder_config=cfg["encoder_config"])
        d = int(cfg["proj_dim"])
        det = cls(model, torch.zeros(1, d), torch.zeros(1), threshold=cfg["threshold"],
                  sample_rate=cfg["sample_rate"], seconds=cfg["seconds"])
        try:
            with safe_open(str(directory / "model.safetensors"), framework="pt") as f:
                state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        except Exception as err:  # safetensors has its own error types
            raise ScoringError(f"{directory / 'model.safetensors'}: unreadable: {err}") from None
        det.load_state_dict(state, strict=True)
        return det.eval()

    @torch.no_grad()
    def score(self, wave: torch.Tensor, mask: torch.Tensor, opts: EmbedOptions) -> np.ndarray:
        """Scores (B,) float64 of a batch wave (B, T), mask (B, T) at ``self.sample_rate``."""
        z = embed_waves(self.model, wave, mask, opts, self.sample_rate)
        return linear_scores(z.cpu(), self.classifier.weight.cpu(), self.classifier.bias.cpu())

    def decide(self, scores: np.ndarray) -> list[str]:
        return ["bonafide" if s > self.threshold else "spoof" for s in np.asarray(scores)]


def _read_export_config(path: Path) -> dict:
    if not path.is_file():
        raise ScoringError(f"{path}: missing; an export directory holds config.json and "
                           "model.safetensors (SpoofDetector.save_pretrained)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ScoringError(f"{path}: invalid JSON: {err}") from None
    if cfg.get("model_type") != EXPORT_FORMAT or cfg.get("format_version") != EXPORT_VERSION:
        raise ScoringError(f"{path}: not an sccl detector export (model_type "
                           f"{cfg.get('model_type')!r}, format_version "
                           f"{cfg.get('format_version')!r})")
    return cfg


def load_detector(path: str | Path) -> SpoofDetector:
    """A run directory (stage1 + stage2) or an export directory (config.json)."""
    path = Path(path)
    if (path / "config.json").is_file():
        return SpoofDetector.from_pretrained(path)
    if not path.is_dir():
        raise ScoringError(f"--run {path}: not a directory")
    return SpoofDetector.from_run(path)


def export_run(run: str | Path, out: str | Path | None = None) -> Path:
    """Write RUN/export (or ``out``) from a finished Stage 2 run."""
    det = SpoofDetector.from_run(run)
    return det.save_pretrained(Path(out) if out else Path(run) / "export")


# ------------------------------------------------------------------------------ inputs


def _audio_suffixes() -> set[str]:
    return {"." + ext.lower() for ext in sf.available_formats()} | {".mp3", ".opus"}


def iter_inputs(paths: list[str]) -> Iterator[tuple[str, bytes]]:
    """(name, encoded audio bytes) for every file, directory (recursive) or shard dir."""
    suffixes = _audio_suffixes()
    for p in map(Path, paths):
        if (p / "manifest.json").is_file():
            yield from _iter_shard_dir(p)
        elif p.is_dir():
            for f in sorted(q for q in p.rglob("*") if q.is_file()):
                if f.suffix.lower() in suffixes:
                    yield str(f), f.read_bytes()
        elif p.is_file():
            yield str(p), p.read_bytes()
        else:
            raise ScoringError(f"{p}: no such file or directory")


def _iter_shard_dir(shard_dir: Path) -> Iterator[tuple[str, bytes]]:
    manifest = json.loads((shard_dir / "manifest.json").read_text(encoding="utf-8"))
    for entry in manifest.get("shards", []):
        tar_path = shard_dir / entry["name"]
        try:
            with tarfile.open(tar_path, mode="r:") as tar:
                for m in tar:
                    if m.isfile() and not m.name.endswith(".json"):
                        yield f"{tar_path}/{m.name}", tar.extractfile(m).read()
        except (tarfile.TarError, OSError) as err:
            raise ScoringError(f"{tar_path}: unreadable shard: {err}") from None


def _decode(name: str, data: bytes, sample_rate: int, min_len: int) -> torch.Tensor:
    from sccl.audio import AudioDecodeError, decode

    try:
        wave = decode(data, sample_rate=sample_rate)
    except AudioDecodeError as err:
        raise ScoringError(f"{name}: {err}") from None
    if wave.numel() == 0:
        raise ScoringError(f"{name}: no audio samples")
    # Shorter than one encoder frame: pad with silence rather than refuse (a 20 ms clip).
    return nn.functional.pad(wave, (0, max(0, min_len - wave.shape[0])))


def score_paths(det: SpoofDetector, paths: list[str], opts: EmbedOptions,
                batch_size: int = 8) -> Iterator[tuple[str, float, str]]:
    """(name, score, decision) for every input, in input order, ``batch_size`` files at once."""
    from sccl.audio import collate

    batch: list[tuple[str, torch.Tensor]] = []

    def flush():
        waves, masks = collate([w for _, w in batch])
        scores = det.score(waves, masks, opts)
        out = list(zip([n for n, _ in batch], scores.tolist(), det.decide(scores), strict=True))
        batch.clear()
        return out

    rf = det.model.receptive_field
    for name, data in iter_inputs(paths):
        batch.append((name, _decode(name, data, det.sample_rate, rf)))
        if len(batch) == batch_size:
            yield from flush()
    if batch:
        yield from flush()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sccl-score", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run directory (stage1 + stage2) or RUN/export")
    p.add_argument("paths", nargs="+", help="audio files, directories, shard directories")
    p.add_argument("--out", help="write the TSV here (atomically) instead of stdout")
    p.add_argument("--crop", choices=("windows", "first", "full"), default="windows",
                   help="windows: mean over windows (default); first: first --seconds only")
    p.add_argument("--seconds", type=float, default=None,
                   help="window / crop length (default: the Stage 2 crop length)")
    p.add_argument("--hop-seconds", type=float, default=None, help="window hop (default: half)")
    p.add_argument("--batch-size", type=int, default=8, help="files per forward pass")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        det = load_detector(args.run)
        device = torch.device(("cuda" if torch.cuda.is_available() else "cpu")
                              if args.device == "auto" else args.device)
        det.to(device)
        seconds = args.seconds or det.seconds
        opts = EmbedOptions(crop=args.crop, seconds=seconds,
                            hop_seconds=args.hop_seconds or 0.0,
                            batch_size=max(1, args.batch_size))
        rows = list(score_paths(det, args.paths, opts, args.batch_size))
    except (ScoringError, RunMismatchError, ModelLoadError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = "path\tscore\tdecision\n" + "".join(f"{n}\t{s:.6f}\t{d}\n" for n, s, d in rows)
    if args.out:
        with atomic_open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

