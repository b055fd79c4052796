"""Benchmark of codec and channel augmentation (sccl.codec_aug) on one core.

    python bench/bench_codec.py [--clips 400] [--cost-clips 20] [--seconds 4] [--shards DIR]

CPU time of one thread (bench_data's method: best of --repeats, so load from other processes
slows every row alike). Two tables:
  cost          each augmentation alone on --crop-seconds crops: ms per clip, and the bitrate
                measured from the encoded size (what libsndfile's compression level gave)
  loader        build_train_loader (0 workers, random crops) with no augmentation, the study's
                RawBoost (p = 0.7), the recommended codec mix of
                sccl/configs/codec_augmentation.yaml, and both: clips/s per core, which is what
                one loader worker delivers, next to raw decode of the same bytes
Without --shards it writes bench_data's synthetic shards (tone + noise clips).
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_data import (  # noqa: E402
    _all_audio,
    _best_rates,
    _pipeline,
    _raw,
    _synthetic,
    loader_arguments,
)
from sccl import audio, codec_aug  # noqa: E402
from sccl.config import from_dict, read_config_file  # noqa: E402
from sccl.rawboost import RawBoost, RawBoostConfig  # noqa: E402

MIX_FILE = Path(codec_aug.__file__).parent / "configs" / "codec_augmentation.yaml"
# (name, function of a clip, libsndfile format/subtype/options for the bitrate, or None)
_LOSSY = {"mp3": ("MP3", "MPEG_LAYER_III", {"bitrate_mode": "CONSTANT"}),
          "vorbis": ("OGG", "VORBIS", {}), "opus": ("OGG", "OPUS", {})}


def recommended_mix() -> codec_aug.CodecConfig:
    """The codec section of sccl/configs/codec_augmentation.yaml (bench/gpu_data.py uses it too)."""
    data, _ = read_config_file(MIX_FILE)
    return from_dict(codec_aug.CodecConfig, data["data"]["codec"], source=str(MIX_FILE))


def _kbps(clip: np.ndarray, sr: int, codec: str, level: float) -> float:
    fmt, sub, options = _LOSSY[codec]
    buf = io.BytesIO()
    sf.write(buf, clip, sr, format=fmt, subtype=sub, compression_level=level, **options)
    return buf.tell() * 8 / (len(clip) / sr) / 1000


def _cost_jobs(clips: list[np.ndarray], sr: int, mix: codec_aug.CodecConfig):
    """(name, clips, fn, kbps) for every augmentation at the ends of its level range."""
    jobs = []
    for codec in _LOSSY:
        for level in (getattr(mix, f"{codec}_level_min"), getattr(mix, f"{codec}_level_max")):
            fn = getattr(codec_aug, codec)
            jobs.append((f"{codec}, level {level:g}", lambda f=fn, lv=level: [
                f(c, sr, lv) for c in clips], np.mean([_kbps(c, sr, codec, level) for c in clips])))
    for codec in ("mulaw", "alaw"):
        fn = getattr(codec_aug, codec)
        jobs.append((codec, lambda f=fn: [f(c, sr) for c in clips], 8 * sr / 1000))
    for bandpass in (True, False):
        jobs.append((f"telephone, band-pass {'on' if bandpass else 'off'}",
                     lambda b=bandpass: [codec_aug.telephone(c, sr, b) for c in clips], None))
    rb, gen = RawBoost(RawBoostConfig(p=1.0, sample_rate=sr)), torch.Generator().manual_seed(0)
    batch = torch.from_numpy(np.stack(clips))
    jobs.append(("RawBoost p = 1 (reference; batched)", lambda: rb.apply(batch, None, gen), None))
    return jobs


def _crops(blobs: list[bytes], sr: int, length: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [audio.random_crop(b, sample_rate=sr, length=length, u=float(rng.random()))[0].numpy()
            for b in blobs[:n]]  # zero-padded to length: every clip costs a full crop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    loader_arguments(ap, repeats=3)
    ap.add_argument("--cost-clips", type=int, default=20, help="clips per cost measurement")
    args = ap.parse_args()
    torch.set_num_threads(1)  # per-core figures
    sr, length, mix = args.sample_rate, round(args.crop_seconds * args.sample_rate), \
        recommended_mix()
    with tempfile.TemporaryDirectory() as tmp:
        shard_dir = args.shards or _synthetic(Path(tmp), args.clips, args.seconds)[0]
        blobs = _all_audio(shard_dir)
        clips = _crops(blobs, sr, length, args.cost_clips)
        costs = _cost_jobs(clips, sr, mix)
        cost_rates = dict(_best_rates([(n, len(clips), f) for n, f, _ in costs], args.repeats))
        pipe = functools.partial(_pipeline, shard_dir, sr, args.crop_seconds, args.batch)
        variants = [("no augmentation", {}), ("RawBoost p = 0.7 (the study)", {"rawboost": True}),
                    ("recommended codec mix", {"codec": mix}),
                    ("RawBoost p = 0.7 + recommended codec mix", {"rawboost": True, "codec": mix})]
        jobs = [("raw decode, whole file (soundfile, in memory)", len(blobs), lambda: _raw(blobs))]
        jobs += [(f"loader, {name}", pipe(**d), lambda d=d: pipe(**d)) for name, d in variants]
        rows = _best_rates(jobs, args.repeats)
    print(f"\n{len(clips)} crops of {args.crop_seconds} s at {sr} Hz, 1 thread, "
          f"{os.cpu_count()} CPUs visible, best of {args.repeats}\n")
    print("| augmentation | ms per clip | kbps (measured) |\n| --- | ---: | ---: |")
    for name, _, kbps in costs:
        print(f"| {name} | {1000 / cost_rates[name]:.2f} | "
              f"{'-' if kbps is None else f'{kbps:.1f}'} |")
    raw = rows[0][1]
    print(f"\n{len(blobs)} clips, loader crop {args.crop_seconds} s, batch {args.batch}\n")
    print("| measurement | clips/s per core (= per worker) | vs raw decode |\n"
          "| --- | ---: | ---: |")
    for name, rate in rows:
        print(f"| {name} | {rate:.0f} | {100 * rate / raw:.0f} % |")


if __name__ == "__main__":
    main()
