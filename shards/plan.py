"""Turn parsed protocol records into a shard plan: which file goes into which shard, in order.

The plan is a pure function of the protocol, the audio files' sizes and the build options,
so a rerun reproduces it exactly; its digest is what a resumed build checks it against.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from shards.errors import ShardsError
from shards.protocols import Record

MISSING_EXAMPLES = 5  # how many missing files an error message names
MISSING_RECORDED = 100  # how many the manifest keeps (the count is always exact)


@dataclass(frozen=True)
class Item:
    """One sample to write: its protocol record, where its audio is, and how big it is."""

    record: Record
    src: str  # path to read the audio from
    source: str  # path relative to the audio dir, recorded in the sample's json
    size: int  # bytes of the source audio file


@dataclass(frozen=True)
class ShardPlan:
    name: str  # "<split>[-<label>]-NNNNNN.tar"
    label: str | None  # label group when split by label, else None
    items: tuple[Item, ...]


def resolve_audio(records: list[Record], audio_dir: str | Path, fmt: str):
    """Locate each record's audio file under ``audio_dir``.

    ASVspoof protocols name only the utterance: the audio lives in ``<audio_dir>/flac/`` when
    that folder exists (``--audio-dir .../ASVspoof2019_LA_train``), else in ``audio_dir``
    itself. Returns (items found, sources missing) both in protocol order.
    """
    root = Path(audio_dir)
    if not root.is_dir():
        raise ShardsError(f"--audio-dir {audio_dir}: not a directory")
    prefix = ""
    if fmt.startswith("asvspoof") and (root / "flac").is_dir():
        prefix = "flac/"
    items, missing = [], []
    for rec in records:
        source = prefix + rec.path
        src = os.path.join(root, source)
        try:
            st = os.stat(src)
        except (FileNotFoundError, NotADirectoryError):
            missing.append(source)
            continue
        if not os.path.isfile(src):
            missing.append(source)
            continue
        items.append(Item(record=rec, src=src, source=source, size=st.st_size))
    return items, missing


def missing_error(missing: list[str], total: int, audio_dir: str | Path) -> ShardsError:
    examples = ", ".join(missing[:MISSING_EXAMPLES])
    return ShardsError(
        f"{len(missing)} of {total} audio files listed in the protocol are missing under "
        f"{audio_dir}, e.g. {examples}\n  (pass --skip-missing to build without them; "
        "they are then recorded in manifest.json)")


def order_items(items: list[Item], *, shuffle: bool, seed: int) -> list[Item]:
    """Sorted by utt_id; with ``shuffle``, a seeded permutation of that sorted order
    (so the result depends only on the set of utterances and the seed, not the file order)."""
    ordered = sorted(items, key=lambda it: it.record.utt_id)
    if shuffle:
        random.Random(seed).shuffle(ordered)
    return ordered


def chunk(items: list[Item], shard_size: int, shard_bytes: int) -> list[list[Item]]:
    """Cut ``items`` into consecutive shards of at most ``shard_size`` samples and at most
    ``shard_bytes`` source audio bytes (0 = no limit). A file bigger than ``shard_bytes``
    gets a shard of its own rather than an error."""
    shards: list[list[Item]] = []
    cur: list[Item] = []
    cur_bytes = 0
    for it in items:
        full = shard_size and len(cur) >= shard_size
        over = shard_bytes and cur and cur_bytes + it.size > shard_bytes
        if full or over:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append(it)
        cur_bytes += it.size
    if cur:
        shards.append(cur)
    return shards


def make_plan(items: list[Item], *, split: str, split_by_label: bool, shard_size: int,
              shard_bytes: int) -> list[ShardPlan]:
    """Shards in write order; numbering restarts at 000000 in each label group."""
    groups: list[tuple[str | None, list[Item]]] = [(None, items)]
    if split_by_label:
        groups = [(lab, [it for it in items if it.record.label == lab])
                  for lab in ("bonafide", "spoof")]
    plan = []
    for label, group in groups:
        stem = f"{split}-{label}" if label else split
        for i, shard in enumerate(chunk(group, shard_size, shard_bytes)):
            plan.append(ShardPlan(name=f"{stem}-{i:06d}.tar", label=label, items=tuple(shard)))
    return plan


def plan_digest(plan: list[ShardPlan]) -> str:
    """sha256 over every shard's name and its (utt_id, source, size) list."""
    desc = [[p.name, [[it.record.utt_id, it.source, it.size] for it in p.items]] for p in plan]
    return hashlib.sha256(json.dumps(desc, separators=(",", ":")).encode()).hexdigest()

