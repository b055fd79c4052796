"""Contamination guard: eval trials that also occur in the data a run was trained on.

An eval set that shares utterance ids or audio content (sha256 of the audio bytes, and of the
source bytes for transcoded shards) with the training or dev shards does not measure
generalisation; evaluation warns loudly on stderr and records every finding in results.json,
but still reports the numbers (a deliberate in-domain check is legitimate).
"""

from __future__ import annotations

import sys
from pathlib import Path

from sccl.embed import EmbedError, read_shard_metadata

HASH_FIELDS = ("sha256", "source_sha256")
EXAMPLES = 5


def training_sources(data_cfg, stage2_meta: dict) -> dict[str, list[dict] | str]:
    """{"<role> <dir>": metadata list, or an error text when unreadable} for every shard dir
    that trained the run: Stage 1 train and dev, Stage 2 train and dev (each dir once)."""
    dirs = [("Stage 1 train", data_cfg.train_shards), ("Stage 1 dev", data_cfg.dev_shards),
            ("Stage 2 train", stage2_meta.get("train_shards", "")),
            ("Stage 2 dev", stage2_meta.get("dev_shards", ""))]
    out: dict[str, list[dict] | str] = {}
    seen: set[str] = set()
    for role, d in dirs:
        if not d or str(Path(d).resolve()) in seen:
            continue
        seen.add(str(Path(d).resolve()))
        try:
            out[f"{role} {d}"] = read_shard_metadata(d)[1]
        except EmbedError as err:
            out[f"{role} {d}"] = str(err)
    return out


def _hashes(metas: list[dict]) -> set[str]:
    return {m[f] for m in metas for f in HASH_FIELDS if m.get(f)}


def contamination_report(eval_sets: dict[str, list[dict]],
                         sources: dict[str, list[dict] | str]) -> list[dict]:
    """One finding per (eval set, training source) that overlap, plus one per source that
    could not be checked. Each finding: set, source, shared_utt_ids, shared_hashes, examples,
    message."""
    findings: list[dict] = []
    for source, metas in sources.items():
        if isinstance(metas, str):
            findings.append({"set": None, "source": source, "shared_utt_ids": None,
                             "shared_hashes": None, "examples": [],
                             "message": f"could not check contamination against {source}: {metas}"})
            continue
        train_ids, train_hashes = {m.get("utt_id") for m in metas}, _hashes(metas)
        for name, ev in eval_sets.items():
            ids = sorted({m.get("utt_id") for m in ev} & train_ids)
            hashes = _hashes(ev) & train_hashes
            if not ids and not hashes:
                continue
            examples = ids[:EXAMPLES] or sorted(m.get("utt_id") for m in ev
                                                if _hashes([m]) & hashes)[:EXAMPLES]
            findings.append({
                "set": name, "source": source, "shared_utt_ids": len(ids),
                "shared_hashes": len(hashes), "examples": examples,
                "message": (f"eval set {name!r} shares {len(ids)} utterance id(s) and "
                            f"{len(hashes)} audio hash(es) with {source} (e.g. {examples}); "
                            "its EER is not a held-out result")})
    return findings


def warn(findings: list[dict]) -> None:
    """Print every finding to stderr, framed so it cannot be missed in a log."""
    for f in findings:
        bar = "!" * 78
        print(f"{bar}\nWARNING (contamination): {f['message']}\n{bar}", file=sys.stderr,
              flush=True)
