"""Build a shard directory: parse, plan, write shards in parallel, resume, manifest last.

Resume: ``.build-state.json`` in the output directory records the build's arguments, the
plan digest and one entry (bytes, sha256, counts, duration) per finished shard; it is
rewritten atomically after every shard. A rerun with the same arguments and plan skips each
shard whose file still hashes to its recorded sha256 and rebuilds the rest. ``manifest.json``
is written last (its presence = build complete) and the state file is then removed; a
complete manifest serves as the state for later reruns. Any other build found in the
directory is an error; ``overwrite`` removes whatever build it holds (only that build's files:
manifest, state, shard-named tars, temporaries) and builds afresh.

    from shards.build import BuildOptions, build
    manifest = build(BuildOptions(fmt="asvspoof2019", protocol=..., audio_dir=..., out_dir=...))
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from shards import __version__
from shards.atomic import atomic_write_json
from shards.errors import ShardsError
from shards.plan import (
    MISSING_RECORDED,
    file_sha256,
    make_plan,
    missing_error,
    order_items,
    plan_digest,
    resolve_audio,
)
from shards.pool import run_tasks
from shards.protocols import FORMATS, check_split, default_split, load_protocol
from shards.writer import SampleOptions, file_mode, write_shard

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STATE = ".build-state.json"
TRANSCODES = ("flac16k",)
# Files a build writes (shards, atomic_open temporaries): the only ones --overwrite removes.
_SHARD_RE = re.compile(r"^[A-Za-z0-9_]+-(?:bonafide-|spoof-)?\d{6}\.tar$")
_TMP_RE = re.compile(r"^\.(?:manifest\.json|\.build-state\.json|[A-Za-z0-9_]+-(?:bonafide-|spoof-)?"
                     r"\d{6}\.tar)\.[a-z0-9_]{8}\.tmp$")


@dataclass
class BuildOptions:
    """Arguments of one build (the CLI's flags; see ``sccl-shards build --help``)."""

    fmt: str
    protocol: str
    audio_dir: str
    out_dir: str
    split: str | None = None  # None: inferred (protocols.default_split)
    subset: str | None = None  # ASVspoof 2021 only: eval (default) | progress | hidden_track | all
    dataset: str | None = None  # ASVspoof 2021 only: la | df (None: from the column count)
    shard_size: int = 1000  # samples per shard (0 = no limit)
    shard_bytes: int = 0  # source audio bytes per shard (0 = no limit)
    split_by_label: bool = False
    shuffle: bool = False
    seed: int = 0
    transcode: str | None = None
    workers: int = 1
    skip_missing: bool = False
    decode_check: bool = False
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.fmt not in FORMATS:
            raise ShardsError(f"unknown format {self.fmt!r}; expected one of {', '.join(FORMATS)}")
        if self.fmt != "asvspoof2021":
            for flag, value in (("--subset", self.subset), ("--dataset", self.dataset)):
                if value is not None:
                    raise ShardsError(f"{flag} applies to --format asvspoof2021 only")
        elif self.subset is None:
            self.subset = "eval"
        if self.shard_size < 0 or self.shard_bytes < 0:
            raise ShardsError("--shard-size and --shard-bytes must be >= 0 (0 = no limit)")
        if self.shard_size == 0 and self.shard_bytes == 0:
            raise ShardsError("set --shard-size or --shard-bytes (both 0 = one unbounded shard)")
        if self.transcode not in (None, *TRANSCODES):
            raise ShardsError(f"--transcode {self.transcode!r}: expected {', '.join(TRANSCODES)}")
        if self.workers < 1:
            raise ShardsError(f"--workers must be >= 1, got {self.workers}")
        self.split = check_split(self.split or default_split(self.fmt, self.protocol))


def build_args(opts: BuildOptions, dataset: str) -> dict:
    """What decides the content of the shards; a resume must match it exactly."""
    return {
        "format": opts.fmt, "protocol": str(Path(opts.protocol).resolve()),
        "protocol_sha256": file_sha256(opts.protocol),
        "audio_dir": str(Path(opts.audio_dir).resolve()), "dataset": dataset,
        "split": opts.split, "subset": opts.subset or opts.split,
        "shard_size": opts.shard_size, "shard_bytes": opts.shard_bytes,
        "split_by_label": opts.split_by_label, "shuffle": opts.shuffle,
        "seed": opts.seed if opts.shuffle else None, "transcode": opts.transcode,
        "skip_missing": opts.skip_missing,
    }


def _write_json(path: Path, obj: dict) -> None:
    atomic_write_json(path, obj)
    os.chmod(path, file_mode())


def _read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ShardsError(f"{path}: unreadable ({err}); use --overwrite to rebuild") from None


def _remove_build(out: Path, entries: dict) -> None:
    """Delete one earlier build's files only: its manifest/state, shards, temporaries."""
    for name in os.listdir(out):
        if name in (MANIFEST, STATE) or name in entries or _SHARD_RE.match(name) \
                or _TMP_RE.match(name):
            os.unlink(out / name)


def _differences(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)


def prepare_out_dir(out: Path, args: dict, digest: str, overwrite: bool) -> dict:
    """Check ``out`` against any earlier build; return the finished shard entries to reuse.

    Same arguments and plan: resume (reuse its entries). Another build: an error, or with
    ``overwrite`` its files are removed. Unrecorded .tar files are never touched.
    """
    out.mkdir(parents=True, exist_ok=True)
    manifest, state = _read_json(out / MANIFEST), _read_json(out / STATE)
    previous = state or manifest
    entries = {s["name"]: s for s in (manifest or {}).get("shards", [])}
    entries.update((state or {}).get("shards", {}))
    if previous is None:
        foreign = sorted(n for n in os.listdir(out) if n.endswith(".tar"))
        if foreign:
            raise ShardsError(
                f"output dir {out} holds .tar files that no sccl-shards build recorded "
                f"(e.g. {foreign[0]}); remove them or choose another --out")
        return {}
    if overwrite:
        _remove_build(out, entries)
        return {}
    why = _differences(previous.get("build_args", {}), args)
    if not why and previous.get("plan_sha256") != digest:
        why = "the input changed (protocol entries or audio file sizes)"
    if why:
        raise ShardsError(
            f"output dir {out} holds another build ({why});\n  pass --overwrite to replace "
            "it, or choose another --out")
    # Temporaries of shards that were being written when the previous run died.
    for name in os.listdir(out):
        if _TMP_RE.match(name):
            os.unlink(out / name)
    return entries


def _is_done(out: Path, plan, entry: dict | None) -> bool:
    path = out / plan.name
    return (entry is not None and entry.get("num_samples") == len(plan.items)
            and path.is_file() and path.stat().st_size == entry.get("bytes")
            and file_sha256(path) == entry.get("sha256"))


def make_manifest(opts: BuildOptions, dataset: str, args: dict, digest: str,
                  entries: list[dict], missing: list[str]) -> dict:
    """The manifest of a complete build; ``entries`` in plan order."""
    counts, attacks, rates = Counter(bonafide=0, spoof=0), Counter(), Counter()
    for e in entries:
        counts.update(e["counts"])
        attacks.update(e["attacks"])
        rates.update(e["sample_rates"])
    return {
        "format_version": FORMAT_VERSION, "builder": f"sccl-shards {__version__}",
        "format": opts.fmt, "dataset": dataset, "split": opts.split, "subset": args["subset"],
        "build_args": args, "plan_sha256": digest,
        "num_samples": sum(e["num_samples"] for e in entries), "counts": dict(counts),
        "attacks": dict(sorted(attacks.items())),
        "total_duration": round(sum(e["duration"] for e in entries), 3),
        "total_bytes": sum(e["bytes"] for e in entries),
        "sample_rates": dict(sorted(rates.items())),
        "missing": {"count": len(missing), "examples": missing[:MISSING_RECORDED]},
        "shards": entries,
    }


def build(opts: BuildOptions) -> dict:
    """Build (or resume) the shard directory ``opts.out_dir``; return its manifest."""
    protocol = load_protocol(opts.fmt, opts.protocol, split=opts.split,
                             subset=opts.subset or "eval", dataset=opts.dataset)
    items, missing = resolve_audio(protocol.records, opts.audio_dir, opts.fmt)
    if missing and not opts.skip_missing:
        raise missing_error(missing, len(protocol.records), opts.audio_dir)
    if not items:
        raise ShardsError(f"none of the {len(protocol.records)} listed audio files exist "
                          f"under {opts.audio_dir}")
    plan = make_plan(order_items(items, shuffle=opts.shuffle, seed=opts.seed),
                     split=opts.split, split_by_label=opts.split_by_label,
                     shard_size=opts.shard_size, shard_bytes=opts.shard_bytes)
    args, digest = build_args(opts, protocol.dataset), plan_digest(plan)
    out = Path(opts.out_dir)
    entries = prepare_out_dir(out, args, digest, opts.overwrite)
    done = {p.name: entries[p.name] for p in plan if _is_done(out, p, entries.get(p.name))}
    todo = [p for p in plan if p.name not in done]
    state = {"format_version": FORMAT_VERSION, "build_args": args, "plan_sha256": digest,
             "shards": done}
    if todo:
        _write_json(out / STATE, state)
        # The build is incomplete from here on: no manifest may claim otherwise.
        (out / MANIFEST).unlink(missing_ok=True)
    sample_opts = SampleOptions(dataset=protocol.dataset, split=opts.split,
                                transcode=opts.transcode, decode_check=opts.decode_check)
    tasks = [(p.name, (p, str(out), sample_opts), len(p.items)) for p in todo]
    for name, entry in run_tasks(write_shard, tasks, workers=opts.workers,
                                 progress=opts.progress, desc=f"build {out.name}"):
        state["shards"][name] = entry
        _write_json(out / STATE, state)
    manifest = make_manifest(opts, protocol.dataset, args, digest,
                             [state["shards"][p.name] for p in plan], missing)
    _write_json(out / MANIFEST, manifest)
    (out / STATE).unlink(missing_ok=True)
    return manifest
