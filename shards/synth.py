"""Synthetic corpus in the real datasets' layouts: the embedded default for demos and tests.

    from shards.synth import generate
    summary = generate("corpus", size="default", seed=0, workers=2)
    # CLI: sccl-shards synth --out corpus [--size default|tiny] [--seed N] [--workers N]

writes, under ``out_dir``, ASVspoof 2019 LA train/dev/eval (FLAC + CM protocols), ASVspoof
2021 LA and DF eval (FLAC + trial_metadata keys), an In-the-Wild-like set (WAV +
meta.csv) and an ASVspoof 5-like train/dev/eval (flac_T/flac_D/flac_E_eval + protocols), so the shard builder runs on it exactly as on the released data. Bona fide audio
is speech-like (synth_speech); spoofs are the same kind of utterances passed through
artefact-producing attacks (synth_attacks); the 2021/ITW-like sets add codec, compression,
noise and reverberation (synth_channel). What is generated is decided by synth_layout.

Every random draw comes from a generator seeded by ``(seed, part, index)``, so the output is
byte-identical for any number of workers. Audio files are written whole and atomically;
the protocol files and the ``synth.json`` marker (``"complete": true``) come last. A rerun
into the same directory with the same parameters renders only what is missing; a directory
holding anything else is refused.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import soundfile as sf

from sccl.fileio import atomic_write_json, atomic_write_text
from shards.errors import ShardsError
from shards.synth_attacks import Utterance, apply_attack
from shards.synth_channel import df_compression, la21_channel, wild_channel
from shards.synth_dsp import SR, normalise
from shards.synth_layout import (
    AS5_CODECS,
    PART_BY_KEY,
    SIZES,
    Row,
    asv_score_files,
    part_counts,
    plan_corpus,
    protocol_files,
)
from shards.synth_speech import Speaker, make_speaker, plan_utterance, record, render

__all__ = ["generate", "synthesize", "SIZES", "MARKER"]

MARKER = "synth.json"
GENERATOR = "sccl-shards synth"
VERSION = 1  # bump whenever the same (size, seed) would give different audio
_CHUNK = 12  # rows per worker task: large enough to amortise pickling, small enough to balance


@lru_cache(maxsize=256)
def speaker_voice(seed: int, num: int) -> Speaker:
    """Voice of speaker number ``num`` (odd numbers female), fixed by ``seed``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1000, num]))
    return make_speaker(rng, female=num % 2 == 1)


def _trim_silence(x: np.ndarray, floor_db: float = -40.0) -> np.ndarray:
    """Cut leading/trailing 10 ms frames quieter than ``floor_db`` re the loudest frame."""
    frames = x[: len(x) // 160 * 160].reshape(-1, 160)
    level = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    loud = np.flatnonzero(level > level.max() + floor_db)
    return x[max(0, loud[0] - 2) * 160 : (loud[-1] + 3) * 160]


def synthesize(row: Row, seed: int) -> np.ndarray:
    """Waveform of one corpus row, float64 (N,) at 16 kHz within [-1, 1]."""
    part = PART_BY_KEY[row.part]
    rng = np.random.default_rng(np.random.SeedSequence([seed, part.code, row.index + 1]))
    spk = speaker_voice(seed, row.speaker_num)
    plan = plan_utterance(spk, row.seconds, rng)
    wave = record(render(plan, spk, rng), spk, rng)
    if row.label == "spoof":
        wave = apply_attack(row.system, Utterance(plan, spk, wave), rng)
    channel = part.channel
    if channel == "la21":
        wave = la21_channel(wave, row.codec, row.transmission, rng)
    elif channel == "df21":
        wave = df_compression(wave, row.codec, rng)
    elif channel == "wild":
        wave = wild_channel(wave, rng)
    elif channel == "as5" and row.codec != "-":
        family, codec = AS5_CODECS[row.codec]
        wave = (la21_channel(wave, codec, "loc_tx", rng) if family == "la21"
                else df_compression(wave, codec, rng))
    if row.trim == "trim":
        wave = _trim_silence(wave)
    return normalise(wave, rng.uniform(-30.0, -20.0))


def _encode(wave: np.ndarray, path: str) -> bytes:
    """16-bit FLAC or WAV bytes (container from the file extension)."""
    buf = io.BytesIO()
    fmt = "FLAC" if path.endswith(".flac") else "WAV"
    sf.write(buf, np.clip(wave, -1.0, 1.0), SR, format=fmt, subtype="PCM_16")
    return buf.getvalue()


def _write_whole(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary sibling, then rename it over ``path``: a killed run never
    leaves a partial audio file under its real name. No fsync per file (thousands of small
    files); the protocols and the marker, written last, go through shards.atomic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as err:  # a full disk names no file: name the one being written
        raise OSError(err.errno, err.strerror, str(path)) from err
    finally:
        tmp.unlink(missing_ok=True)


def _render_chunk(out: str, rows: list[Row], seed: int) -> dict[str, int]:
    """Render and write ``rows`` under ``out``; returns {path: num_samples}."""
    lengths = {}
    for row in rows:
        try:
            wave = synthesize(row, seed)
            _write_whole(Path(out) / row.path, _encode(wave, row.path))
        except OSError:  # a full or read-only disk: it names its file (one line in the CLI)
            raise
        except Exception as err:  # name the utterance: a bare numpy error says nothing
            raise RuntimeError(f"synth: rendering {row.path} ({row.system}) failed: {err}") from err
        lengths[row.path] = len(wave)
    return lengths


def _render_all(out: Path, rows: list[Row], seed: int, workers: int) -> dict[str, int]:
    """Render ``rows`` in-process (workers=1) or in a spawn pool; worker errors propagate."""
    chunks = [rows[i : i + _CHUNK] for i in range(0, len(rows), _CHUNK)]
    if workers == 1 or len(chunks) <= 1:
        return _render_chunk(str(out), rows, seed)
    lengths: dict[str, int] = {}
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_render_chunk, str(out), chunk, seed) for chunk in chunks]
        try:
            for fut in as_completed(futures):
                lengths.update(fut.result())
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    return lengths


def _prepare(out: Path, params: dict) -> None:
    """Refuse an ``out`` holding anything but a synthetic corpus made with ``params``."""
    if out.exists() and not out.is_dir():
        raise ShardsError(f"synth: {out} exists and is not a directory")
    marker = out / MARKER
    if out.is_dir() and any(out.iterdir()):
        if not marker.is_file():
            found = sorted(p.name for p in out.iterdir())[:5]
            raise ShardsError(
                f"synth: {out} is not empty and holds no {MARKER} (found {found}); "
                "give an empty or new directory")
        try:
            old = json.loads(marker.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ShardsError(
                f"synth: {marker} is unreadable ({err}); refusing to overwrite") from err
        if old.get("generator") != GENERATOR or old.get("params") != params:
            raise ShardsError(
                f"synth: {out} holds a synthetic corpus made with {old.get('params')}, "
                f"not {params}; give another directory")
    atomic_write_json(marker, {"generator": GENERATOR, "params": params, "complete": False})


def _summary(parts: dict[str, list[Row]], lengths: dict[str, int]) -> dict:
    """Counts per dataset/split (label, attack, 2021 subsets/codecs) and durations."""
    datasets: dict = defaultdict(dict)
    for key, rows in parts.items():
        part = PART_BY_KEY[key]
        counts = part_counts(rows)
        counts["duration"] = round(sum(lengths[r.path] for r in rows) / SR, 3)
        datasets[part.dataset][part.split] = counts
    return dict(datasets)


def generate(
    out_dir: str | Path, *, size: str = "default", seed: int = 0, workers: int = 1
) -> dict:
    """Write the synthetic corpus under ``out_dir``; returns a summary dict.

    Summary keys: out_dir, size, seed, workers, seconds (wall time), generated/skipped (audio
    files rendered now / already present from an identical earlier run), num_files,
    total_duration (s), datasets ({dataset: {split: {num_files, bonafide, spoof, attacks,
    duration[, subsets, codecs]}}}) and protocols (relative paths of the protocol files).
    """
    if size not in SIZES:
        raise ValueError(f"synth: unknown size {size!r}; choose from {sorted(SIZES)}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"synth: seed must be a non-negative int, got {seed!r}")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"synth: workers must be a positive int, got {workers!r}")
    start = time.perf_counter()
    out = Path(out_dir)
    params = {"size": size, "seed": seed, "version": VERSION}
    _prepare(out, params)
    parts = plan_corpus(size, seed)
    rows = [r for part_rows in parts.values() for r in part_rows]
    for folder in {(out / r.path).parent for r in rows}:  # leftovers of a killed run
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
    done = [r for r in rows if (out / r.path).is_file()]
    todo = [r for r in rows if not (out / r.path).is_file()]
    lengths = {r.path: sf.info(str(out / r.path)).frames for r in done}
    lengths.update(_render_all(out, todo, seed, workers))
    protocols = {**protocol_files(parts), **asv_score_files(parts, seed)}
    for rel, text in protocols.items():  # after the audio: a listed file always exists
        atomic_write_text(out / rel, text)
    summary = {
        "out_dir": str(out), "size": size, "seed": seed, "workers": workers,
        "generated": len(todo), "skipped": len(done), "num_files": len(rows),
        "total_duration": round(sum(lengths.values()) / SR, 3),
        "datasets": _summary(parts, lengths), "protocols": sorted(protocols),
    }
    summary["seconds"] = round(time.perf_counter() - start, 3)
    atomic_write_json(out / MARKER, {"generator": GENERATOR, "params": params, "complete": True,
                                     "summary": summary})
    return summary
