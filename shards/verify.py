"""``sccl-shards verify`` (re-hash, optionally decode, everything) and ``sccl-shards info``.

verify checks each shard's bytes and sha256 against manifest.json, then reads every sample
the way webdataset groups them (key = member name up to its first '.') and checks its json
(fields, utt_id == key, label group, sha256 of the audio bytes), optionally decoding the
audio with soundfile. Problems are reported per shard and key, never raised one at a time.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections import Counter
from itertools import groupby
from pathlib import Path

from sccl.fileio import file_sha256
from shards.build import MANIFEST, STATE
from shards.errors import ShardsError
from shards.outdir import name_problem
from shards.pool import run_tasks
from shards.writer import SHORT_SAMPLES

REQUIRED = ("utt_id", "label", "attack", "speaker", "dataset", "subset", "sample_rate",
            "num_samples", "duration", "sha256", "source")
AUDIO_EXTS = ("flac", "wav")


def load_manifest(shard_dir: str | Path) -> dict:
    """manifest.json of a complete build, or a ShardsError saying what the dir holds."""
    d = Path(shard_dir)
    if not (d / MANIFEST).is_file():
        if (d / STATE).is_file():
            raise ShardsError(f"{d}: build incomplete (no {MANIFEST}, a {STATE} is there); "
                              "rerun the same build command to resume it")
        raise ShardsError(f"{d}: not a shard directory (no {MANIFEST})")
    try:
        manifest = json.loads((d / MANIFEST).read_text(encoding="utf-8"))
    except ValueError as err:
        raise ShardsError(f"{d / MANIFEST}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards", []), list):
        raise ShardsError(f"{d / MANIFEST}: not a manifest (a JSON object with a list of "
                          "shards)")
    return manifest


def _check_sample(key: str, members: dict, group: str | None,
                  decode: bool) -> tuple[list[str], str | None]:
    """(problems, label) of one sample (``members``: extension -> bytes)."""
    audio = [e for e in members if e in AUDIO_EXTS]
    if "json" not in members or len(audio) != 1 or len(members) != 2:
        return [f"{key}: expected one audio member and one .json, found {sorted(members)}"], None
    try:
        meta = json.loads(members["json"].decode("utf-8"))
    except ValueError as err:
        return [f"{key}: unreadable json ({err})"], None
    problems = [f"{key}: json lacks {f!r}" for f in REQUIRED if f not in meta]
    raw = members[audio[0]]
    if meta.get("utt_id") != key:
        problems.append(f"{key}: json utt_id is {meta.get('utt_id')!r}")
    if meta.get("label") not in ("bonafide", "spoof") or group not in (None, meta["label"]):
        problems.append(f"{key}: label {meta.get('label')!r} in a {group or 'mixed'} shard")
    if meta.get("sha256") != hashlib.sha256(raw).hexdigest():
        problems.append(f"{key}: audio sha256 differs from its json")
    if decode:
        problems += _check_decode(key, audio[0], raw, meta)
    return problems, meta.get("label")


def _check_decode(key: str, ext: str, raw: bytes, meta: dict) -> list[str]:
    import numpy as np
    import soundfile as sf

    try:
        wave, rate = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    except Exception as err:  # libsndfile raises several types for bad data
        return [f"{key}: audio does not decode ({err})"]
    problems = []
    if rate != meta.get("sample_rate") or len(wave) != meta.get("num_samples"):
        problems.append(f"{key}: decodes to {len(wave)} frames at {rate} Hz, json says "
                        f"{meta.get('num_samples')} at {meta.get('sample_rate')}")
    bad = int(np.count_nonzero(~np.isfinite(wave)))
    if bad:  # the loaders refuse it (sccl.audio): better found here, naming its shard
        problems.append(f"{key}.{ext}: decoded audio holds {bad} non-finite value(s) "
                        "(NaN or inf)")
    return problems


def _tar_samples(path: Path):
    """Yield (key, {ext: bytes}) grouped like webdataset (consecutive members, first '.')."""
    with tarfile.open(path, "r:") as tar:
        def members():
            for m in tar:
                if m.isfile():
                    key, _, ext = m.name.partition(".")
                    yield key, ext.lower(), tar.extractfile(m).read()
        for key, group in groupby(members(), key=lambda t: t[0]):
            yield key, {ext: data for _, ext, data in group}


def verify_shard(path: str, entry: dict, decode: bool) -> dict:
    """Check one shard against its manifest entry: {"problems", "keys", "counts"}."""
    name, p = entry["name"], Path(path)
    out = {"problems": [], "keys": [], "counts": Counter()}
    if not p.is_file():
        out["problems"].append(f"{name}: missing")
        return out
    if p.stat().st_size != entry.get("bytes") or file_sha256(p) != entry.get("sha256"):
        out["problems"].append(f"{name}: size/sha256 differ from manifest.json")
    try:
        for key, members in _tar_samples(p):
            out["keys"].append(key)
            problems, label = _check_sample(key, members, entry.get("label"), decode)
            out["problems"] += [f"{name}: {m}" for m in problems]
            out["counts"][label] += 1
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        out["problems"].append(f"{name}: unreadable tar ({err})")
        return out
    if len(out["keys"]) != entry.get("num_samples"):
        out["problems"].append(f"{name}: {len(out['keys'])} samples, manifest says "
                               f"{entry.get('num_samples')}")
    return out


def verify(shard_dir: str | Path, *, decode: bool = False, workers: int = 1,
           progress: bool = True) -> list[str]:
    """Every problem found in ``shard_dir`` (empty list = all good)."""
    d = Path(shard_dir)
    manifest = load_manifest(d)
    shards, problems = _openable(d, manifest.get("shards", []))
    tasks = [(e["name"], (str(d / e["name"]), e, decode), e.get("num_samples", 0))
             for e in shards]
    first_shard, counts = {}, Counter()
    results = dict(run_tasks(verify_shard, tasks, workers=workers, desc="verify",
                             unit="sample", progress=progress))
    for e in shards:  # report in manifest order, whatever order the workers finished in
        res = results[e["name"]]
        problems += res["problems"]
        counts.update(res["counts"])
        for key in res["keys"]:
            other = first_shard.setdefault(key, e["name"])
            if other != e["name"]:
                problems.append(f"{e['name']}: {key}: duplicate key (also in {other})")
    for label, n in manifest.get("counts", {}).items():
        if counts[label] != n:
            problems.append(f"manifest.json: {n} {label} samples listed, {counts[label]} found")
    listed = {e["name"] for e in shards}
    problems += [f"{n}: .tar file not listed in manifest.json"
                 for n in sorted(os.listdir(d)) if n.endswith(".tar") and n not in listed]
    return problems


def _openable(d: Path, entries: list) -> tuple[list[dict], list[str]]:
    """(entries naming a .tar file inside ``d``, a problem for each other one). A manifest
    is text anyone can edit: a name like ``../x.tar`` or a symlink out of ``d`` is reported,
    never opened (shards.outdir.name_problem, the builder's check)."""
    good, problems = [], []
    for i, e in enumerate(entries):
        name = e.get("name") if isinstance(e, dict) else None
        why = name_problem(d, name) if isinstance(e, dict) else "is not an object"
        if why:
            problems.append(f"{MANIFEST}: shards[{i}] {name!r} {why}; not opened")
        else:
            good.append(e)
    return good, problems


def _hms(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}h {s % 3600 // 60:02d}m {s % 60:02d}s"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def info(shard_dir: str | Path) -> str:
    """A readable summary of a shard directory (its manifest)."""
    m = load_manifest(shard_dir)
    n = m["num_samples"]
    by_group = Counter(s["label"] or "mixed" for s in m["shards"])
    lines = [
        f"shard dir    {Path(shard_dir).resolve()}",
        f"dataset      {m['dataset']} (format {m['format']}), split {m['split']}, "
        f"subset {m['subset']}",
        f"samples      {n}  (" + ", ".join(f"{k} {v}" for k, v in m["counts"].items()) + ")",
        f"shards       {len(m['shards'])}  ("
        + ", ".join(f"{k} {v}" for k, v in sorted(by_group.items()))
        + f"), {_size(m.get('total_bytes', 0))}",
        f"duration     {_hms(m['total_duration'])}  (mean {m['total_duration'] / max(n, 1):.2f} s)",
        "sample rates " + ", ".join(f"{r} Hz: {c}" for r, c in m["sample_rates"].items()),
        f"missing      {m['missing']['count']}"
        + (f"  (e.g. {', '.join(m['missing']['examples'][:5])})" if m["missing"]["count"] else ""),
        f"builder      {m['builder']}",
    ]
    lines += _tables(m)
    return "\n".join(lines)


def _labelled(counts: dict[str, int]) -> str:
    return f"{sum(counts.values())}  (bonafide {counts.get('bonafide', 0)}, " \
        f"spoof {counts.get('spoof', 0)})"


def _tables(m: dict) -> list[str]:
    """Per-subset and per-codec counts (manifests of builders before 0.2 lack them: the
    line says so) and short clips, then attacks."""
    lines = []
    if "short" in m:
        lines.append(f"short clips  {m['short']['count']}  (< {SHORT_SAMPLES} samples at 16 kHz)"
                     + (f"  e.g. {', '.join(m['short']['examples'][:5])}"
                        if m["short"]["count"] else ""))
    if "subsets" not in m:
        lines.append("subsets      not recorded (built by an older sccl-shards; rebuild with "
                     "--overwrite to count them)")
    for title in ("subsets", "codecs"):
        if m.get(title):
            lines.append(title)
            lines += [f"  {g:<12} {_labelled(c)}" for g, c in m[title].items()]
    lines.append("attacks")
    lines += [f"  {a:<12} {c}" for a, c in m["attacks"].items()]
    return lines
