"""Build a shard directory: parse, plan, write shards in parallel, resume, manifest last.

Resume: ``.build-state.json`` in the output directory records the build's arguments, the
plan digest, the plan's shard names and one entry (bytes, sha256, counts, duration) per
finished shard; the parent process rewrites it atomically as each shard finishes, so a
kill -9 loses at most the shards in flight. A rerun with the same arguments and plan skips
each shard whose file still hashes to its recorded sha256 and rebuilds the rest.
``manifest.json`` is written last (its presence = build complete) and the state file is then
removed; a complete manifest serves as the state for later reruns. Any other build found in
the directory is an error; ``overwrite`` removes the files that build recorded (nothing
else: shards.outdir) and builds afresh. The whole build holds ``sccl.lock.DirLock`` on the
directory, so a second build into it stops at once, naming the first.

    from shards.build import BuildOptions, build
    manifest = build(BuildOptions(fmt="asvspoof2019", protocol=..., audio_dir=..., out_dir=...))
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sccl.fileio import atomic_write_json, file_sha256
from sccl.lock import DirLock, LockHeldError
from shards.errors import ShardsError
from shards.outdir import (
    BUILDER,
    MANIFEST,
    STATE,
    clear_temporaries,
    make_out_dir,
    read_record,
    recorded_names,
    refuse_foreign_tars,
    remove_build,
)
from shards.plan import (
    MISSING_RECORDED,
    make_plan,
    missing_error,
    order_items,
    plan_digest,
    resolve_audio,
)
from shards.pool import run_tasks
from shards.protocols import FORMATS, check_split, default_split, load_protocol
from shards.writer import SHORT_SAMPLES, SampleOptions, file_mode, write_shard

FORMAT_VERSION = 1
TRANSCODES = ("flac16k",)


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
    finite_check: bool = True  # False: float audio holding NaN/Inf is not looked for
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


def _differences(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)


def prepare_out_dir(out: Path, args: dict, digest: str, overwrite: bool) -> dict:
    """Check ``out`` (locked, existing) against any earlier build; return the finished
    shard entries to reuse.

    Same arguments and plan: resume (reuse its entries). Another build: an error, or with
    ``overwrite`` the files it recorded are removed (shards.outdir says which).
    """
    manifest, state = read_record(out / MANIFEST), read_record(out / STATE)
    previous = state or manifest
    recorded = recorded_names(out, manifest, state)  # checked: safe to delete
    refuse_foreign_tars(out, recorded)
    if previous is None:
        return {}
    if overwrite:
        remove_build(out, recorded)
        return {}
    why = _differences(previous.get("build_args", {}), args)
    if not why and previous.get("plan_sha256") != digest:
        why = "the input changed (protocol entries or audio file sizes)"
    if why:
        raise ShardsError(
            f"output dir {out} holds another build ({why});\n  pass --overwrite to replace "
            "it, or choose another --out")
    clear_temporaries(out, recorded)
    entries = {s["name"]: s for s in (manifest or {}).get("shards", [])}
    entries.update((state or {}).get("shards", {}))
    return entries


# Entry fields a reused shard must carry (entries of older builders lack some: rebuilt).
_ENTRY_FIELDS = ("counts", "attacks", "subsets", "codecs", "short", "sample_rates")


def _is_done(out: Path, plan, entry: dict | None) -> bool:
    path = out / plan.name
    return (entry is not None and entry.get("name") == plan.name
            and entry.get("num_samples") == len(plan.items)
            and all(k in entry for k in _ENTRY_FIELDS)
            and path.is_file() and path.stat().st_size == entry.get("bytes")
            and file_sha256(path) == entry.get("sha256"))


def _label_counts(entries: list[dict], field: str) -> dict[str, dict[str, int]]:
    """Sum the entries' ``{group: {label: n}}`` tables (subsets, codecs)."""
    table: dict[str, Counter] = {}
    for e in entries:
        for group, counts in e[field].items():
            table.setdefault(group, Counter(bonafide=0, spoof=0)).update(counts)
    return {g: dict(c) for g, c in sorted(table.items())}


def make_manifest(opts: BuildOptions, dataset: str, args: dict, digest: str,
                  entries: list[dict], missing: list[str]) -> dict:
    """The manifest of a complete build; ``entries`` in plan order."""
    counts, attacks, rates = Counter(bonafide=0, spoof=0), Counter(), Counter()
    for e in entries:
        counts.update(e["counts"])
        attacks.update(e["attacks"])
        rates.update(e["sample_rates"])
    short = [key for e in entries for key in e["short"]]
    return {
        "format_version": FORMAT_VERSION, "builder": BUILDER,
        "format": opts.fmt, "dataset": dataset, "split": opts.split, "subset": args["subset"],
        "build_args": args, "plan_sha256": digest,
        "num_samples": sum(e["num_samples"] for e in entries), "counts": dict(counts),
        "attacks": dict(sorted(attacks.items())),
        "subsets": _label_counts(entries, "subsets"), "codecs": _label_counts(entries, "codecs"),
        "total_duration": round(sum(e["duration"] for e in entries), 3),
        "total_bytes": sum(e["bytes"] for e in entries),
        "sample_rates": dict(sorted(rates.items())),
        "missing": {"count": len(missing), "examples": missing[:MISSING_RECORDED]},
        "short": {"count": len(short), "examples": short[:MISSING_RECORDED]},
        "shards": entries,
    }


def _plan(opts: BuildOptions):
    """(protocol, plan, missing sources): everything decided before ``--out`` is touched."""
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
    return protocol, plan, missing


def build(opts: BuildOptions) -> dict:
    """Build (or resume) the shard directory ``opts.out_dir``; return its manifest.

    Input errors come before ``--out`` is created. The directory is locked for the whole
    build (``sccl.lock.DirLock``): a second build into it stops at once naming the first.
    """
    protocol, plan, missing = _plan(opts)
    out = Path(opts.out_dir)
    make_out_dir(out)
    try:
        lock = DirLock(out, what=f"shard directory {out}").acquire()
    except LockHeldError as err:
        raise ShardsError(str(err)) from None
    try:
        manifest = _build_locked(opts, out, protocol, plan, missing)
    finally:
        lock.release()
    if manifest["short"]["count"]:
        print(f"sccl-shards: warning: {out}: {manifest['short']['count']} clip(s) shorter than "
              f"{SHORT_SAMPLES} samples at 16 kHz (e.g. {manifest['short']['examples'][0]}); "
              "kept and listed in manifest.json, training skips and counts them",
              file=sys.stderr)
    return manifest


def _build_locked(opts: BuildOptions, out: Path, protocol, plan, missing) -> dict:
    args, digest = build_args(opts, protocol.dataset), plan_digest(plan)
    entries = prepare_out_dir(out, args, digest, opts.overwrite)
    done = {p.name: entries[p.name] for p in plan if _is_done(out, p, entries.get(p.name))}
    todo = [p for p in plan if p.name not in done]
    state = {"format_version": FORMAT_VERSION, "builder": BUILDER, "build_args": args,
             "plan_sha256": digest, "planned": [p.name for p in plan], "shards": done}
    if todo:
        # Recorded before any shard is written (see shards.outdir); from here on the build
        # is incomplete, so no manifest may claim otherwise.
        _write_json(out / STATE, state)
        (out / MANIFEST).unlink(missing_ok=True)
    if done and todo:
        print(f"sccl-shards: resuming {out}: {len(done)} of {len(plan)} shards already "
              f"built, building {len(todo)}", file=sys.stderr)
    sample_opts = SampleOptions(dataset=protocol.dataset, split=opts.split,
                                transcode=opts.transcode, decode_check=opts.decode_check,
                                finite_check=opts.finite_check)
    tasks = [(p.name, (p, str(out), sample_opts), len(p.items)) for p in todo]
    for name, entry in run_tasks(write_shard, tasks, workers=opts.workers,
                                 progress=opts.progress, desc=f"build {out.name}"):
        state["shards"][name] = entry
        _write_json(out / STATE, state)  # one finished shard at a time survives a kill
    manifest = make_manifest(opts, protocol.dataset, args, digest,
                             [state["shards"][p.name] for p in plan], missing)
    _write_json(out / MANIFEST, manifest)
    (out / STATE).unlink(missing_ok=True)
    return manifest
