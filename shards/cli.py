"""``sccl-shards``: build, verify and summarise WebDataset shard dirs; make the synthetic corpus.

    sccl-shards build --format asvspoof2019 \\
        --protocol LA/ASVspoof2019_LA_cm_protocols/ASVspoof2019.LA.cm.train.trn.txt \\
        --audio-dir LA/ASVspoof2019_LA_train --out shards/la19_train --split-by-label --workers 8
    sccl-shards verify shards/la19_train --decode
    sccl-shards info shards/la19_train
    sccl-shards synth --out data/synth

Bad input, and a place that cannot be written (full, read-only: sccl.fileio.storage_problem),
exit with code 2 and one message; verify exits with 1 when it finds problems.
Heavy modules are imported inside the subcommands so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading

from sccl.fileio import storage_problem  # standard library only: --help stays instant
from shards import __version__
from shards.errors import ShardsError

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def byte_size(text: str) -> int:
    """``1000``, ``512M``, ``2G`` (binary units) -> bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a byte size: {text!r} (e.g. 1000, 512M, 2G)")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def _add_build(sub) -> None:
    p = sub.add_parser("build", help="write tar shards + manifest.json from a protocol",
                       description="Write WebDataset tar shards and manifest.json. A rerun "
                       "with the same arguments resumes, skipping finished shards.")
    p.add_argument("--format", required=True, dest="fmt",
                   choices=("asvspoof2019", "asvspoof2021", "asvspoof5", "itw", "csv"))
    p.add_argument("--protocol", required=True, help="protocol / trial_metadata / ASVspoof5.*.tsv / meta.csv / CSV")
    p.add_argument("--audio-dir", required=True,
                   help="audio root (ASVspoof 2019/2021: the set dir holding flac/, or flac/ "
                   "itself; ASVspoof 5: flac_T, flac_D or flac_E_eval)")
    p.add_argument("--out", required=True, help="output shard directory")
    p.add_argument("--split", help="shard name prefix (default: train/dev/eval from an LA19 "
                   "or ASVspoof 5 protocol name, 'eval' for 2021 and ITW, the file stem for "
                   "CSV)")
    p.add_argument("--subset", choices=("eval", "progress", "hidden_track", "all"),
                   help="ASVspoof 2021 trials to keep (default: eval)")
    p.add_argument("--dataset", choices=("la", "df"),
                   help="ASVspoof 2021 track (default: 8 columns = la, 13 = df)")
    p.add_argument("--shard-size", type=int, default=1000, help="max samples per shard (0 = no "
                   "limit; default 1000)")
    p.add_argument("--shard-bytes", type=byte_size, default=0,
                   help="max source audio bytes per shard, e.g. 512M (default: no limit)")
    p.add_argument("--split-by-label", action="store_true",
                   help="separate <split>-bonafide-* and <split>-spoof-* shards")
    p.add_argument("--shuffle", action="store_true", help="seeded shuffle instead of sorted order")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    p.add_argument("--transcode", choices=("flac16k",),
                   help="re-encode as 16 kHz mono 16-bit FLAC (default: original bytes)")
    p.add_argument("--workers", type=int, default=1, help="processes, one shard each (default 1)")
    p.add_argument("--skip-missing", action="store_true",
                   help="build without missing audio files (recorded in the manifest)")
    p.add_argument("--decode-check", action="store_true",
                   help="fully decode every file while building (catches truncated audio)")
    p.add_argument("--no-finite-check", action="store_true",
                   help="do not decode float WAV files to reject NaN/Inf samples (by default "
                   "such a file stops the build, naming it; FLAC and integer WAV cannot hold "
                   "NaN and are never decoded for this)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace another build found in --out (removes only the files it "
                   "recorded; never files it did not write)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _add_others(sub) -> None:
    p = sub.add_parser("verify", help="re-hash (and optionally decode) every shard and sample")
    p.add_argument("dir", help="shard directory (holding manifest.json)")
    p.add_argument("--decode", action="store_true", help="decode every sample with soundfile")
    p.add_argument("--workers", type=_count(1), default=1,
                   help="processes, one shard each (default 1)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p = sub.add_parser("info", help="summarise a shard directory (subsets, codecs, attacks)")
    p.add_argument("dir", help="shard directory (holding manifest.json)")
    p.add_argument("--json", action="store_true", help="print manifest.json without shard list")
    _add_synth(sub)


def _count(minimum: int):
    """argparse type: an int >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value
    return parse


def _add_synth(sub) -> None:
    p = sub.add_parser(
        "synth", help="write the synthetic corpus in the real datasets' layouts",
        description="Write a synthetic corpus laid out like the released datasets (ASVspoof "
        "2019 LA train/dev/eval with ASV scores, ASVspoof 2021 LA and DF eval keys with LA ASV "
        "scores, In-the-Wild meta.csv, ASVspoof 5 train/dev/eval protocols), so "
        "'sccl-shards build' runs on it exactly as on the real data. The same --size and "
        "--seed give byte-identical files for any --workers; a rerun into the same --out "
        "renders only what is missing.")
    p.add_argument("--out", required=True,
                   help="output directory (created; refused if it holds anything else)")
    p.add_argument("--size", default="default", choices=("default", "tiny"),
                   help="'default': 3059 files of 1-4 s (the demo's corpus); 'tiny': 79 files "
                   "of 1-2 s (tests); default: default")
    p.add_argument("--seed", type=_count(0), default=0,
                   help="seed of every random draw (ids, labels, audio); default 0")
    p.add_argument("--workers", type=_count(1), default=1,
                   help="processes rendering audio (the output does not depend on it); "
                   "default 1")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sccl-shards", description="Build, verify and summarise WebDataset shard "
        "directories of anti-spoofing datasets; write the synthetic corpus.")
    parser.add_argument("--version", action="version", version=f"sccl-shards {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_build(sub)
    _add_others(sub)
    return parser


def _build(a) -> int:
    from shards.build import BuildOptions, build

    m = build(BuildOptions(
        fmt=a.fmt, protocol=a.protocol, audio_dir=a.audio_dir, out_dir=a.out, split=a.split,
        subset=a.subset, dataset=a.dataset, shard_size=a.shard_size, shard_bytes=a.shard_bytes,
        split_by_label=a.split_by_label, shuffle=a.shuffle, seed=a.seed, transcode=a.transcode,
        workers=a.workers, skip_missing=a.skip_missing, decode_check=a.decode_check,
        finite_check=not a.no_finite_check, overwrite=a.overwrite,
        progress=not a.no_progress))
    counts = ", ".join(f"{k} {v}" for k, v in m["counts"].items())
    print(f"{a.out}: {m['num_samples']} samples ({counts}) in {len(m['shards'])} shards, "
          f"{m['total_duration'] / 3600:.2f} h; {m['missing']['count']} missing")
    return 0


def _verify(a) -> int:
    from shards.verify import verify

    problems = verify(a.dir, decode=a.decode, workers=a.workers, progress=not a.no_progress)
    for p in problems:
        print(p)
    print(f"{a.dir}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


def _info(a) -> int:
    from shards.verify import info, load_manifest

    if a.json:
        m = load_manifest(a.dir)
        m.pop("shards")
        print(json.dumps(m, indent=2))
    else:
        print(info(a.dir))
    return 0


def _synth(a) -> int:
    try:
        from shards import synth
    except ImportError as err:
        raise ShardsError(f"the synthetic corpus generator is not available ({err})") from None
    summary = synth.generate(a.out, size=a.size, seed=a.seed, workers=a.workers)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    run = {"build": _build, "verify": _verify, "info": _info, "synth": _synth}[args.command]
    # SIGTERM (scancel, preemption) unwinds a build like Ctrl-C: its lock on --out is released
    # at once, where a lock left by a dead process on another node only expires after minutes.
    previous = None
    if args.command == "build" and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run(args)
    except ShardsError as err:
        print(f"sccl-shards: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        storage = storage_problem(err, getattr(args, "out", None))
        if storage is None:
            raise
        print(f"sccl-shards: error: {storage}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sccl-shards: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:  # called in-process (tests, scripts): leave no handler behind
            signal.signal(signal.SIGTERM, previous)
