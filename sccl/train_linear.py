"""Stage 2: a linear classifier on frozen Stage 1 embeddings.

    accelerate launch sccl/train_linear.py --run.dir RUN [--embed.seconds 10 ...]
    python -m sccl.train_linear --run.dir RUN          # one process
    python -m sccl.train_linear --help                 # every option

Loads RUN/stage1 (config.yaml for the shard directories, best/ weights), freezes encoder and
head, and embeds LA19 train and dev with every rank taking a share (each utterance once,
deduplicated by key, checked against the shard metadata). The embeddings are cached in
RUN/stage2/embeddings and reused while the Stage 1 weights, shards and crop stay the same.
Then, on the main process, ``Linear(256, 1)`` is trained with BCEWithLogits (pos_weight =
#spoof / #bona fide, label 1 = bona fide) and AdamW, early-stopped on the dev EER; the best
epoch's classifier, its dev EER threshold and RUN/export (``SpoofDetector``) are written.
Layout of RUN/stage2: sccl/linear.py. The stage directory is locked while the stage runs (a
second run on it exits 2 naming the holder; docs/reliability.md). Paths are saved absolute.
Rerunning a finished Stage 2 with settings that change its classifier (all but STAGE2_FREE)
is refused unless ``--run.allow_config_change true``; every run's settings are kept in
RUN/stage2/config_history.jsonl. Exit codes: see main().
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from sccl import dist
from sccl.accel import build_accelerator, exit_on_stop_signals, exit_process
from sccl.checkpoint import StageClaim
from sccl.config import (
    ConfigError,
    parse_config,
    report_input_error,
    report_storage_error,
)
from sccl.data import DataConfig, ShardDirError
from sccl.embed import EmbedError, EmbedOptions, check_embed_window, collect, embed_share
from sccl.fileio import file_sha256
from sccl.linear import (
    META,
    LinearConfig,
    RunMismatchError,
    fingerprint,
    load_cache,
    save_cache,
    save_classifier,
    stage1_data_config,
    stage1_weights,
    train_classifier,
)
from sccl.logs import JsonlLogger, StagePaths, record_run, refuse_changes
from sccl.model import ModelLoadError, SupConModel


@dataclass
class Stage2RunConfig:
    """Which run, which Stage 1 weights, what to write."""

    dir: str = ""
    """Run directory holding stage1/ (required); writes <dir>/stage2."""
    stage1: Literal["best", "last"] = "best"
    """Stage 1 weights to freeze: "best" or "last"."""
    export: bool = True
    """Also write <dir>/export (SpoofDetector.save_pretrained)."""
    progress: bool = True
    """Print one line per epoch on the main process."""
    allow_config_change: bool = False
    """Rerun a finished Stage 2 with settings that change its classifier (Stage 1 weights,
    shards, embedding, classifier training), replacing it and <dir>/export. Without it such a
    rerun is refused (exit 2) listing each changed key; the same settings rerun freely. Each
    run's settings stay in <dir>/stage2/config_history.jsonl."""


@dataclass
class Stage2DataConfig:
    """Shards to embed; empty = what Stage 1 trained on (its config.yaml)."""

    train_shards: str = ""
    """LA19 train shard directory ("" = Stage 1's data.train_shards)."""
    dev_shards: str = ""
    """LA19 dev shard directory ("" = Stage 1's data.dev_shards)."""
    num_workers: int = -1
    """Loader workers per rank (-1 = Stage 1's data.num_workers)."""


@dataclass
class Stage2Config:
    """Stage 2 configuration (``python -m sccl.train_linear --help`` lists every key)."""

    run: Stage2RunConfig = field(default_factory=Stage2RunConfig)
    data: Stage2DataConfig = field(default_factory=Stage2DataConfig)
    embed: EmbedOptions = field(default_factory=EmbedOptions)
    linear: LinearConfig = field(default_factory=LinearConfig)


# Keys a rerun of a finished Stage 2 may change freely: where the run is, what it prints and
# exports, and how fast it embeds (loader workers; the batch size, which the embeddings do not
# depend on: sccl.linear.fingerprint). Every other key changes the classifier.
STAGE2_FREE = ("run.dir", "run.export", "run.progress", "run.allow_config_change",
               "data.num_workers", "embed.batch_size")


def labels_of(metas: list[dict], where: str) -> np.ndarray:
    """int64 (N,) 1 = bona fide, 0 = spoof, from the samples' metadata."""
    bad = [m.get("utt_id") for m in metas if m.get("label") not in ("bonafide", "spoof")]
    if bad:
        raise EmbedError(f"{where}: {len(bad)} samples without label bonafide/spoof, "
                         f"e.g. {bad[:3]}")
    return np.array([m["label"] == "bonafide" for m in metas], dtype=np.int64)


def embeddings(split: str, shard_dir: str, model, data_cfg: DataConfig, opts: EmbedOptions,
               weights_sha: str, stage2: Path, accelerator) -> tuple[np.ndarray, np.ndarray] | None:
    """Cached or freshly extracted (z, label) of one split; None on non-main ranks."""
    fp = fingerprint(shard_dir, weights_sha, opts, data_cfg.sample_rate)
    path = stage2 / "embeddings" / f"{split}.safetensors"
    cached = load_cache(path, fp) if accelerator.is_main_process else None
    if dist.broadcast_object(cached is not None):
        accelerator.print(f"{split}: cached embeddings {path}")
        return cached[:2] if cached is not None else None
    t0 = time.perf_counter()
    keys, z = embed_share(model, shard_dir, data_cfg, opts, rank=accelerator.process_index,
                          world_size=accelerator.num_processes)
    if not accelerator.is_main_process:
        return None
    emb = collect(shard_dir, keys, z)
    label = labels_of(emb.meta, shard_dir)
    save_cache(path, emb.z, label, emb.keys, fp)
    accelerator.print(f"{split}: embedded {len(emb.keys)} utterances of {shard_dir} in "
                      f"{time.perf_counter() - t0:.1f} s")
    return emb.z, label


def run_stage2(cfg: Stage2Config) -> int:
    if not cfg.run.dir:
        raise ConfigError("run.dir is required (the run directory of a finished Stage 1)")
    if cfg.run.stage1 not in ("best", "last"):
        raise ConfigError(f"run.stage1 must be 'best' or 'last', got {cfg.run.stage1!r}")
    run = Path(cfg.run.dir).expanduser().resolve()
    d = cfg.data
    data_cfg = stage1_data_config(run, _absolute(d.train_shards), _absolute(d.dev_shards),
                                  d.num_workers, need=("train_shards", "dev_shards"))
    cfg.run.dir = str(run)  # recorded as resolved, absolute
    cfg.data = dataclasses.replace(d, train_shards=data_cfg.train_shards,
                                   dev_shards=data_cfg.dev_shards)
    weights = stage1_weights(run, cfg.run.stage1)
    paths = StagePaths(run, "stage2")
    accelerator = build_accelerator()
    model = SupConModel.from_pretrained(weights.parent).to(accelerator.device).eval()
    model.requires_grad_(False)
    check_embed_window(cfg.embed, model, data_cfg.sample_rate)  # before recording
    claim = StageClaim(accelerator, paths, "Stage 2", None)  # exits 2 if in use
    try:
        weights_sha = file_sha256(weights)
        finished = accelerator.is_main_process and finished_and_current(
            run, paths, cfg.run.stage1, weights_sha)  # rank 0's answer counts alone
        refuse_changes(accelerator, cfg, paths, STAGE2_FREE, cfg.run.allow_config_change,
                       "rerunning a finished Stage 2 (replacing its classifier and export)",
                       guarded=finished)
        record_run(accelerator, cfg, paths, None, stage="Stage 2")
        splits = {}
        for split, shard_dir in (("train", data_cfg.train_shards), ("dev", data_cfg.dev_shards)):
            splits[split] = embeddings(split, shard_dir, model, data_cfg, cfg.embed, weights_sha,
                                       paths.dir, accelerator)
        if accelerator.is_main_process:
            fit_and_save(cfg, run, paths, splits, weights_sha, data_cfg)
        accelerator.wait_for_everyone()
    finally:
        claim.release()
        accelerator.end_training()
    return 0


def finished_and_current(run: Path, paths: StagePaths, which: str, weights_sha: str) -> bool:
    """Whether RUN/stage2 holds a finished Stage 2 that still matches the Stage 1 weights it
    was trained on: what a rerun with other settings would replace. A stale one (Stage 1
    trained again since; evaluation refuses it) is replaced freely."""
    try:
        meta = json.loads((paths.dir / META).read_text(encoding="utf-8"))
        used = meta.get("stage1_which", "best")
        sha = weights_sha if used == which else file_sha256(stage1_weights(run, used))
    except (OSError, ValueError, AttributeError, RunMismatchError):
        return False
    return meta.get("stage1_weights_sha256") == sha


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve()) if path else ""


def fit_and_save(cfg: Stage2Config, run: Path, paths: StagePaths, splits: dict,
                 weights_sha: str, data_cfg: DataConfig) -> None:
    """Main process: train the classifier, write classifier/threshold/meta and the export."""
    logger = JsonlLogger(paths.log, True)
    paths.log.unlink(missing_ok=True)  # one training per file: a rerun starts it afresh

    def on_epoch(rec: dict) -> None:
        logger.log(rec)
        if cfg.run.progress:
            print(f"epoch {rec['epoch']}: train loss {rec['train_loss']:.4f}  dev loss "
                  f"{rec['dev_loss']:.4f}  dev EER {100 * rec['dev_eer']:.2f} %", flush=True)

    res = train_classifier(splits["train"], splits["dev"], cfg.linear, on_epoch)
    y_tr, y_dev = splits["train"][1], splits["dev"][1]
    meta = {
        "stage1_weights_sha256": weights_sha, "stage1_which": cfg.run.stage1,
        "sample_rate": data_cfg.sample_rate, "embed": dataclasses.asdict(cfg.embed),
        "train_shards": data_cfg.train_shards, "dev_shards": data_cfg.dev_shards,
        "train_counts": {"bonafide": int(y_tr.sum()), "spoof": int((1 - y_tr).sum())},
        "dev_counts": {"bonafide": int(y_dev.sum()), "spoof": int((1 - y_dev).sum())},
        "pos_weight": res.pos_weight, "best_epoch": res.best_epoch,
        "epochs_run": res.epochs_run, "dev_eer": res.dev_eer, "threshold": res.threshold,
    }
    save_classifier(paths.dir, res, meta)
    print(f"Stage 2: best epoch {res.best_epoch} of {res.epochs_run}, dev EER "
          f"{100 * res.dev_eer:.2f} %, threshold {res.threshold:.4f}; wrote {paths.dir}")
    if cfg.run.export:
        from sccl.scoring import export_run

        print(f"exported the detector to {export_run(run)}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; the exit code: 0 done; 2 bad input (config, run directory, shards, a
    rerun of a finished Stage 2 with settings that change it) or storage that fails (the run
    directory's disk full, over quota, read-only, forbidden), in one line ``error: ...``
    naming the file or key (the path and the cause for storage; rank k > 0 of a launch writes
    ``error (rank k): ...``); 128 + the signal when SIGTERM / SIGUSR1 stopped it. Anything
    else raises, with its traceback (exit 1)."""
    cfg = None
    try:
        cfg = parse_config(Stage2Config, argv, prog="python -m sccl.train_linear")
        with exit_on_stop_signals():  # a stop unwinds: the stage lock is released
            return run_stage2(cfg)
    except (ConfigError, ModelLoadError, RunMismatchError, EmbedError, ShardDirError) as e:
        return report_input_error(e)
    except OSError as e:  # a full disk, a quota, a read-only run directory
        return report_storage_error(e, cfg.run.dir if cfg else None)


if __name__ == "__main__":
    exit_process(main())
