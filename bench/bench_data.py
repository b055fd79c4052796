"""Benchmark of the data pipeline on one core (a benchmark, not a test).

    python bench/bench_data.py [--clips 400] [--seconds 4] [--crop-seconds 4] [--shards DIR]

Measures samples per CPU-second of one thread, all in the main process (num_workers=0):
  raw decode        soundfile.read of the same encoded bytes held in memory (the reference),
                    whole files, and only a crop window (seek + read)
  crop only         sccl.audio.random_crop on the same bytes (decode + crop, no pipeline)
  pipeline          sccl.data.build_train_loader over the shards: tar reading, shuffle
                    buffers, decode + random crop, collate (goal: >= 80 % of raw decode)
  tar reading       the shards' samples (bytes, not decoded) through webdataset's
                    tariterators (tar_file_expander + group_by_keys), as the pipeline reads them
  file per sample   the usual Dataset: soundfile.read(path) of one FLAC file per sample,
                    crop in numpy, stack
  RawBoost          sccl.rawboost on (16, crop) batches in float32, p = 1 and p = 0.7
Without --shards it writes a synthetic split-by-label shard directory (tests/data_fixtures)
and the same clips as FLAC files into a temporary directory. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import webdataset as wds

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sccl import audio  # noqa: E402
from sccl.data import DataConfig, build_train_loader  # noqa: E402
from sccl.data_shards import iter_shard, load_shard_set  # noqa: E402
from sccl.rawboost import RawBoost, RawBoostConfig  # noqa: E402


def _best_rates(jobs: list[tuple[str, int, object]], repeats: int) -> list[tuple[str, float]]:
    """samples per CPU-second of each (name, samples, fn), best of `repeats` runs taken in turn.

    CPU time of this (single-threaded) process rather than wall time: on a shared machine
    other processes then slow every measurement alike instead of whichever ran during a spike.
    """
    best = {name: float("inf") for name, _, _ in jobs}
    for _ in range(repeats):
        for name, _, fn in jobs:
            t = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - t)
    return [(name, n / best[name]) for name, n, _ in jobs]


def _all_audio(shard_dir: str) -> list[bytes]:
    ss = load_shard_set(shard_dir)
    return [it.audio for sh in ss.shards for _, it in iter_shard(sh) if it.audio]


def _raw(blobs):
    for b in blobs:
        sf.read(io.BytesIO(b), dtype="float32")


def _raw_window(blobs, length, rng):
    for b in blobs:
        with sf.SoundFile(io.BytesIO(b)) as f:
            off = int(rng.random() * max(0, f.frames - length + 1))
            f.seek(off)
            f.read(length, dtype="float32")


def _crop_only(blobs, sr, length, rng):
    for b in blobs:
        audio.random_crop(b, sample_rate=sr, length=length, u=float(rng.random()))


def _file_per_sample(paths, length, rng, batch=16):
    for i in range(0, len(paths), batch):
        rows = []
        for p in paths[i : i + batch]:
            x, _ = sf.read(p, dtype="float32")
            if x.ndim > 1:
                x = x.mean(axis=1)
            if len(x) > length:
                off = int(rng.random() * (len(x) - length + 1))
                x = x[off : off + length]
            rows.append(np.pad(x, (0, length - len(x))))
        torch.from_numpy(np.stack(rows))


def _tar_webdataset(paths):
    for p in paths:
        with open(p, "rb", buffering=1 << 20) as stream:
            files = wds.tariterators.tar_file_expander([{"url": p, "stream": stream}])
            for _ in wds.tariterators.group_by_keys(files):
                pass


def _pipeline(shard_dir, sr, crop_seconds, batch, **data) -> int:
    """Clips of one epoch through build_train_loader in this process; `data` overrides
    DataConfig fields (default: no augmentation)."""
    cfg = DataConfig(**{"train_shards": shard_dir, "sample_rate": sr, "crop_seconds": crop_seconds,
                        "batch_size": batch, "num_workers": 0, "shuffle_buffer": 1000,
                        "rawboost": False, "train_crop": "random", **data})
    return sum(b["wave"].shape[0] for b in build_train_loader(cfg, rank=0, world_size=1, epoch=0))


def _rawboost(p, length, batch, n_batches=4):
    rb, g = RawBoost(RawBoostConfig(p=p)), torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(batch, length, generator=g)
    return lambda: [rb.apply(x, None, g) for _ in range(n_batches)]


def _synthetic(root: Path, clips: int, seconds: float) -> tuple[str, list[str]]:
    from tests.data_fixtures import write_shards

    shard_dir = root / "shards"
    write_shards(shard_dir, n_bonafide=clips // 2, n_spoof=clips - clips // 2,
                 n_shards=(2, 2), seconds=(0.5 * seconds, 1.5 * seconds))
    files = root / "flac"
    files.mkdir()
    for i, b in enumerate(_all_audio(str(shard_dir))):
        (files / f"{i:06d}.flac").write_bytes(b)
    return str(shard_dir), sorted(str(p) for p in files.iterdir())


def loader_arguments(ap: argparse.ArgumentParser, repeats: int) -> None:
    """The options of the loader benchmarks (this one and bench_codec.py)."""
    ap.add_argument("--clips", type=int, default=400, help="synthetic clips (half bona fide)")
    ap.add_argument("--seconds", type=float, default=4.0, help="mean synthetic clip length")
    ap.add_argument("--crop-seconds", type=float, default=4.0)
    ap.add_argument("--sample-rate", type=int, default=16000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--shards", default="", help="a real shard directory instead of synthetic")
    ap.add_argument("--repeats", type=int, default=repeats, help="best of this many runs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    loader_arguments(ap, repeats=5)
    args = ap.parse_args()
    torch.set_num_threads(1)  # per-core figures
    sr, length = args.sample_rate, round(args.crop_seconds * args.sample_rate)
    with tempfile.TemporaryDirectory() as tmp:
        if args.shards:
            shard_dir, paths = args.shards, []
        else:
            shard_dir, paths = _synthetic(Path(tmp), args.clips, args.seconds)
        blobs = _all_audio(shard_dir)
        n_pipe = _pipeline(shard_dir, sr, args.crop_seconds, args.batch)  # also warms up
        rng = np.random.default_rng(0)
        jobs = [
            ("raw decode, whole file (soundfile, in memory)", len(blobs), lambda: _raw(blobs)),
            ("raw decode, crop window only (soundfile seek + read)", len(blobs),
             lambda: _raw_window(blobs, length, rng)),
            ("decode + crop (sccl.audio.random_crop)", len(blobs),
             lambda: _crop_only(blobs, sr, length, rng)),
            ("pipeline (build_train_loader, 0 workers)", n_pipe,
             lambda: _pipeline(shard_dir, sr, args.crop_seconds, args.batch)),
        ]
        tars = [sh.path for sh in load_shard_set(shard_dir).shards]
        jobs.append(("tar reading only (webdataset tariterators, as the pipeline)", len(blobs),
                     lambda: _tar_webdataset(tars)))
        if paths:
            jobs.append(("one FLAC file per sample (sf.read + numpy crop)", len(paths),
                         lambda: _file_per_sample(paths, length, rng)))
        for p in (1.0, 0.7):
            jobs.append((f"RawBoost p={p} (batches of {args.batch}, CPU)", 4 * args.batch,
                         _rawboost(p, length, args.batch)))
        rows = _best_rates(jobs, args.repeats)
    raw = rows[0][1]
    print(f"\n{len(blobs)} clips, crop {args.crop_seconds} s at {sr} Hz, 1 thread, "
          f"{os.cpu_count()} CPUs visible, best of {args.repeats}\n")
    print("| measurement | samples/s per core | vs raw decode |\n| --- | ---: | ---: |")
    for name, rate in rows:
        print(f"| {name} | {rate:.0f} | {100 * rate / raw:.0f} % |")


if __name__ == "__main__":
    main()
