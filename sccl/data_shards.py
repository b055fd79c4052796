"""Reading shard directories for sccl.data: the manifest, tar shards, and position streams.

A shard directory (format in docs/design.md, written by `sccl-shards build`) holds
`manifest.json` and tar shards. Everything sccl.data needs to plan an epoch comes from the
manifest (per-shard sample counts and labels), so every rank plans the same epoch without
reading any audio. Tars are read with webdataset's own reader.

Position model: the shards of one label group, concatenated in a seeded per-pass order and the
passes repeated, form an infinite sequence of samples. A loader slot (one rank's one worker)
owns a contiguous range of it and reads only the shards that range touches; positions that no
output needs are read past without being kept or decoded.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from webdataset import tariterators

LABELS = ("bonafide", "spoof")
AUDIO_EXTS = ("flac", "wav")
BONAFIDE_ATTACKS = ("-", "bonafide", "bona-fide")  # attack names the builders give bona fide


class ShardDirError(ValueError):
    """A shard directory or its manifest is missing, incomplete or inconsistent."""


class CorruptDataError(RuntimeError):
    """Too many undecodable samples (DataConfig.max_corrupt_share), or none usable at all."""


@dataclass(frozen=True)
class Shard:
    path: str
    label: str | None  # "bonafide" | "spoof" when built with --split-by-label, else None
    num_samples: int
    # Per-label sample counts when the manifest entry has them ("counts", an extension the
    # sccl-shards builder writes): lets mixed shards be planned as exactly as split ones.
    label_counts: dict[str, int] | None = None


@dataclass
class Item:
    """One sample as read from a tar: raw bytes, not decoded."""

    key: str
    shard: str  # shard file name, for error messages
    audio: bytes | None = None
    meta: dict | None = None
    error: str | None = None  # why the sample is unusable (read/format problem), if it is
    truncated: bool = False  # the tar could not be read past this point
    group: str | None = None  # the shard's label when split by label


@dataclass
class ShardSet:
    """A shard directory's manifest, checked; shards in manifest order."""

    root: str
    manifest: dict
    shards: list[Shard]
    counts: dict[str, int]
    split_by_label: bool
    spoof_attacks: list[str] = field(default_factory=list)  # sorted; class k+1 in attack mode

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    def of_label(self, label: str) -> list[Shard]:
        """Shards holding samples of `label` (all shards when not split by label)."""
        return [s for s in self.shards if s.label in (label, None)]

    @property
    def has_label_counts(self) -> bool:
        return all(s.label_counts is not None for s in self.shards)

    def label_view(self, label: str) -> list[Shard]:
        """Mixed shards seen as their `label` samples only (needs has_label_counts)."""
        return [Shard(s.path, None, s.label_counts[label]) for s in self.shards]


def load_shard_set(shard_dir: str) -> ShardSet:
    """Read and check `shard_dir/manifest.json`; ShardDirError naming the path if unusable."""
    if not shard_dir:
        raise ShardDirError("no shard directory given (empty path)")
    if not os.path.isdir(shard_dir):
        raise ShardDirError(f"shard directory {shard_dir!r} does not exist")
    path = os.path.join(shard_dir, "manifest.json")
    if not os.path.isfile(path):
        raise ShardDirError(f"{path} is missing: not a shard directory, or its build did not "
                            "finish (the manifest is written last)")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        entries = manifest["shards"]
        counts = {k: int(manifest["counts"].get(k, 0)) for k in LABELS}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ShardDirError(f"{path}: unreadable manifest ({type(err).__name__}: {err})") from None
    if manifest.get("format_version", 1) != 1:
        raise ShardDirError(f"{path}: format_version {manifest.get('format_version')} is not 1")
    shards = [_shard_entry(shard_dir, path, i, e) for i, e in enumerate(entries or [])]
    if not shards or sum(s.num_samples for s in shards) == 0:
        raise ShardDirError(f"{path}: the manifest lists no samples")
    split = shards[0].label is not None
    if any((s.label is not None) != split for s in shards):
        raise ShardDirError(f"{path}: some shards have a label and some not")
    _check_counts(path, shards, counts, split)
    attacks = sorted(a for a in manifest.get("attacks", {}) if a not in BONAFIDE_ATTACKS)
    return ShardSet(shard_dir, manifest, shards, counts, split, attacks)


def inside_name(name: object) -> bool:
    """Whether a manifest's shard ``name`` is a file name inside the shard directory: a
    manifest is data anyone can edit, and no reader may open ``../x`` or ``/abs/x`` for it."""
    return isinstance(name, str) and "/" not in name and name not in ("", ".", "..") \
        and "\0" not in name


def _shard_entry(shard_dir: str, path: str, i: int, entry) -> Shard:
    try:
        name, n, label = entry["name"], int(entry["num_samples"]), entry.get("label")
    except (KeyError, TypeError, ValueError) as err:
        raise ShardDirError(f"{path}: shards[{i}] is malformed ({err})") from None
    if label not in (*LABELS, None) or n < 0 or not inside_name(name):
        raise ShardDirError(f"{path}: shards[{i}] has a bad label, count or name: {entry}")
    tar = os.path.join(shard_dir, name)
    if not os.path.isfile(tar):
        raise ShardDirError(f"{tar} is listed in {path} but missing")
    counts = entry.get("counts")
    try:
        counts = {k: int(counts.get(k, 0)) for k in LABELS} if counts is not None else None
    except (AttributeError, TypeError, ValueError):
        raise ShardDirError(f"{path}: shards[{i}].counts is malformed: {counts!r}") from None
    if counts is not None and sum(counts.values()) != n:
        raise ShardDirError(f"{path}: shards[{i}].counts {counts} do not add up to {n}")
    return Shard(tar, label, n, counts)


def _check_counts(path: str, shards: list[Shard], counts: dict[str, int], split: bool) -> None:
    total = sum(s.num_samples for s in shards)
    if sum(counts.values()) != total:
        raise ShardDirError(f"{path}: counts {counts} do not add up to the shards' {total} samples")
    if split:
        for label in LABELS:
            n = sum(s.num_samples for s in shards if s.label == label)
            if n != counts[label]:
                raise ShardDirError(f"{path}: {label} shards hold {n} samples, counts say "
                                    f"{counts[label]}")


# ------------------------------------------------------------------------------- tar reading


def iter_shard(shard: Shard, first: int = 0, stop: int | None = None) -> Iterator[tuple[int, Item]]:
    """Yield (index, Item) for samples first <= index < stop of one tar, in tar order, as
    webdataset groups its members (tar_file_expander + group_by_keys).

    Samples before `first` are read but neither kept nor decoded. A tar that cannot be read
    further ends the iteration with one Item whose `error` says why (index = the first sample
    not returned).
    """
    name, i = os.path.basename(shard.path), first
    try:
        with open(shard.path, "rb", buffering=1 << 20) as stream:
            files = tariterators.tar_file_expander([{"url": shard.path, "stream": stream}])
            for sample in itertools.islice(tariterators.group_by_keys(files), first, stop):
                item = _to_item(sample, name)
                item.group = shard.label
                yield i, item
                i += 1
    except Exception as err:  # truncated/corrupt tar: report, never crash the epoch
        # webdataset appends " @ <stream>" to the message and (stream, url) to the args: the
        # Item already names the shard, keep the message alone
        why = str(err.args[0]).split(" @ <", 1)[0] if err.args else ""
        yield i, Item(f"{name}#{i}", name, error=f"tar read error: {type(err).__name__}: {why}",
                      truncated=True)


def _to_item(sample: dict, shard_name: str) -> Item:
    key = sample["__key__"]
    item = Item(key, shard_name)
    audio = [sample[e] for e in AUDIO_EXTS if e in sample]
    if len(audio) != 1 or "json" not in sample:
        item.error = f"needs one of .{'/.'.join(AUDIO_EXTS)} and .json, has {sorted(sample)}"
        return item
    item.audio = audio[0]
    try:
        item.meta = json.loads(sample["json"])
        if not isinstance(item.meta, dict):
            raise ValueError("not a JSON object")
    except ValueError as err:
        item.error = f"bad .json metadata: {err}"
    return item


def item_label(item: Item) -> str | None:
    """The sample's label: the shard's when split by label, else its metadata's (None if bad)."""
    if item.group is not None:
        return item.group
    label = (item.meta or {}).get("label")
    return label if label in LABELS else None


# ------------------------------------------------------------------------ position streams


class ShardSequence:
    """Shards repeated in passes, each pass in a seeded order: an infinite sample sequence.

    `same_order`: every pass repeats the first pass's order, so any window of at most `total`
    consecutive positions holds distinct samples, wherever it starts.
    """

    def __init__(self, shards: list[Shard], key: tuple[int, ...], shuffle: bool = True,
                 same_order: bool = False):
        if not shards or sum(s.num_samples for s in shards) == 0:
            raise ValueError("ShardSequence needs shards holding at least one sample")
        self.shards, self.key, self.shuffle = shards, tuple(key), shuffle
        self.same_order = same_order
        self.total = sum(s.num_samples for s in shards)

    def order(self, p: int) -> list[Shard]:
        if not self.shuffle:
            return self.shards
        p = 0 if self.same_order else p
        perm = np.random.default_rng([*self.key, p]).permutation(len(self.shards))
        return [self.shards[i] for i in perm]

    def segments(self, start: int, stop: int | None) -> Iterator[tuple[Shard, int, int, int]]:
        """(shard, first, stop_in_shard, position of first) covering positions [start, stop)."""
        p, pos = divmod(start, self.total)
        pos = start - pos  # position where pass p begins
        while stop is None or pos < stop:
            for shard in self.order(p):
                lo, hi = max(start, pos), pos + shard.num_samples
                if stop is not None:
                    hi = min(hi, stop)
                if lo < hi:
                    yield shard, lo - pos, hi - pos, lo
                pos += shard.num_samples
                if stop is not None and pos >= stop:
                    return
            p += 1


def buffer_order(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Output order (n,) of positions 0..n-1 through a shuffle buffer of `size` items.

    Same process as webdataset's shuffle (fill, then each new item evicts a random one, then
    drain at random), but on positions: the order depends only on (n, size, rng), not on the
    data, which is what lets a resumed loader skip items without reading or decoding them.
    """
    if size <= 1 or n <= 1:
        return np.arange(n)
    out = np.empty(n, dtype=np.int64)
    buf = list(range(min(size, n)))
    picks = rng.integers(0, size, size=max(0, n - size))
    for t, i in enumerate(range(size, n)):
        k = picks[t]
        out[t], buf[k] = buf[k], i
    out[max(0, n - size) :] = rng.permutation(np.asarray(buf, dtype=np.int64))
    return out


def iter_wanted(seq: ShardSequence, start: int, count: int, wanted: set[int],
                label: str | None, mapped: bool = True) -> Iterator[tuple[int, Item]]:
    """(stream position, Item) for the wanted positions among the `count` label samples that
    follow sequence position `start`, in increasing position (except that a shard's missing
    samples, reported as Items with `error`, come after its readable ones).

    mapped: the sequence's shard sizes count exactly the stream's samples (split-by-label
    shards, or a ShardSet.label_view), so positions map to shards through the manifest and
    shards holding no wanted position are never opened; `label` (if any) filters inside a
    shard. Not mapped (mixed shards without per-shard counts): shards are scanned in turn
    from `start` and samples of other labels read past; slot boundaries are then approximate.
    """
    if count <= 0:
        return
    yield from (_iter_mapped if mapped else _iter_mixed)(seq, start, count, wanted, label)


def _label_samples(shard: Shard, label: str | None, first: int, stop: int):
    """(index among the shard's `label` samples, Item) for first <= index < stop."""
    j = 0
    for _, item in iter_shard(shard):
        if item.truncated:
            yield j, item
            return
        if item_label(item) != label:
            continue  # an unreadable label also lands here: reported as missing below
        if j >= stop:
            return
        if j >= first:
            yield j, item
        j += 1


def _iter_mapped(seq, start, count, wanted, label):
    for shard, first, stop, pos0 in seq.segments(start, start + count):
        rel0 = pos0 - start  # stream position of sample `first` of this shard
        need = [p for p in range(rel0, rel0 + stop - first) if p in wanted]
        if not need:
            continue  # nothing wanted here: the shard is never opened
        got, why = set(), "sample missing from tar (fewer samples than the manifest says)"
        lo = first + need[0] - rel0
        samples = iter_shard(shard, lo, stop) if label is None else \
            _label_samples(shard, label, lo, stop)
        for i, item in samples:
            if item.truncated:
                why = item.error
                break
            p = rel0 + i - first
            if p in wanted:
                got.add(p)
                yield p, item
        name = os.path.basename(shard.path)
        for p in need:
            if p not in got:
                yield p, Item(f"{name}#{first + p - rel0}", name, error=why)


def _iter_mixed(seq, start, count, wanted, label):
    found, scanned = 0, 0
    for shard, first, stop, _ in seq.segments(start, None):
        for _, item in iter_shard(shard, first, stop):
            scanned += 1
            if item.error is None and item_label(item) != label:
                if scanned > 2 * seq.total and found == 0:
                    raise ShardDirError(f"no {label!r} sample found in {seq.total} samples of "
                                        f"{os.path.dirname(shard.path)}: manifest counts wrong?")
                continue
            if found in wanted:
                yield found, item
            found += 1
            if found == count:
                return
