"""Shard build throughput (files/s, MB/s of source audio) with 1 and 2 worker processes.

Generates ``--files`` noisy-tone FLAC (or WAV) files of ``--seconds`` each, lists them in a
CSV protocol and times ``shards.build.build`` into a fresh directory per setting (so no run
resumes another). A benchmark, not a test: run it by hand and copy the table.

    python bench/bench_build.py                       # 400 x 3 s FLAC, workers 1 and 2
    python bench/bench_build.py --files 2000 --workers 1 2 4 --transcode
    python bench/bench_build.py --format wav --subtype FLOAT --finite-check on off
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from shards.build import BuildOptions, build


def make_corpus(root: Path, files: int, seconds: float, fmt: str, rate: int,
                subtype: str | None = None) -> int:
    """Write the audio files and ``list.csv``; return the total audio bytes."""
    rng = np.random.default_rng(0)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    lines, total = ["path,label"], 0
    for i in range(files):
        wave = 0.3 * np.sin(2 * np.pi * (100 + i % 200) * t) + 0.05 * rng.standard_normal(n)
        path = root / "audio" / f"utt{i:06d}.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, wave.astype(np.float32), rate, subtype=subtype)
        lines.append(f"{path.name},{'bonafide' if i % 4 == 0 else 'spoof'}")
        total += path.stat().st_size
    (root / "list.csv").write_text("\n".join(lines) + "\n")
    return total


def time_build(root: Path, workers: int, shard_size: int, transcode: bool,
               finite_check: bool = True) -> float:
    out = root / f"out-w{workers}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    build(BuildOptions(fmt="csv", protocol=str(root / "list.csv"), audio_dir=str(root / "audio"),
                       out_dir=str(out), split="bench", shard_size=shard_size, workers=workers,
                       transcode="flac16k" if transcode else None,
                       finite_check=finite_check, progress=False))
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--files", type=int, default=400)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--format", default="flac", choices=("flac", "wav"))
    p.add_argument("--rate", type=int, default=16000, help="sample rate of the generated audio")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--shard-size", type=int, default=50)
    p.add_argument("--subtype", help="soundfile subtype of the generated files, e.g. FLOAT "
                   "(float WAV: the only kind the finite check decodes); default: soundfile's")
    p.add_argument("--transcode", action="store_true", help="also re-encode to 16 kHz FLAC")
    p.add_argument("--finite-check", nargs="+", default=["on"], choices=("on", "off"),
                   help="time the build with the NaN/Inf check on and/or off (default: on)")
    p.add_argument("--repeats", type=int, default=2, help="best of N timings per setting")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_build_") as tmp:
        root = Path(tmp)
        total = make_corpus(root, a.files, a.seconds, a.format, a.rate, a.subtype)
        print(f"{a.files} x {a.seconds:g} s {a.format.upper()} {a.subtype or ''} at {a.rate} "
              f"Hz, {total / 1e6:.1f} MB; shard size {a.shard_size}; transcode {a.transcode}; "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
        print(f"{'workers':>7} {'finite':>6} {'seconds':>8} {'files/s':>9} {'MB/s':>7}")
        for w in a.workers:
            for check in a.finite_check:
                best = min(time_build(root, w, a.shard_size, a.transcode, check == "on")
                           for _ in range(a.repeats))
                print(f"{w:>7} {check:>6} {best:>8.2f} {a.files / best:>9.0f} "
                      f"{total / 1e6 / best:>7.1f}")


if __name__ == "__main__":
    main()
