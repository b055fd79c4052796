"""Stage 1: supervised contrastive (SupCon) fine-tuning of an XLS-R encoder + projection head.

    accelerate launch --config_file launch/multi_gpu.yaml sccl/train_supcon.py \\
        --config my_run.yaml --run.dir runs/cos_q4096 [--loss.temperature 0.3 ...]
    python -m sccl.train_supcon --config my_run.yaml --run.dir RUN       # one process
    python -m sccl.train_supcon --help                                   # every option

Reads balanced batches of LA19 train shards (sccl/data.py), trains with cosine or angular
SupCon and an optional warm-started global queue, evaluates the balanced dev SupCon loss
after every epoch and stops early on it. Writes ``<run>/stage1`` (layout in
sccl/logs.py): config.yaml, log.jsonl, tb/, checkpoints/step-N (resumable), best/ and
last/ (``SupConModel.save_pretrained`` of the full weights, gathered from every rank's shards
under ZeRO-3 and FSDP2; Stage 2 reads best/). Launch configs (DDP, ZeRO-2, ZeRO-3, FSDP2):
launch/README.md.

Resume: rerun the same command (``--run.resume auto``, the default; a damaged newest
checkpoint is skipped with a warning). SIGTERM, SIGINT or SIGUSR1 (to the launcher, or to every
process of the job at once as Slurm sends them) make every rank checkpoint at the next
optimizer step, or at once during the dev evaluation, and exit 0. The stage directory is
locked while the run lasts: a second run on it exits 2 naming the holder. A resume refuses
settings that change the training unless ``--run.allow_config_change true`` (the keys it may
change freely: RESUME_FREE, docs/config.md); every start's settings are kept in
config_history.jsonl. Guarantees and their tests: docs/reliability.md. Exit codes: see main().
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import torch

from sccl import accel, debug, dist, logs
from sccl import checkpoint as ck
from sccl.config import (
    ConfigError,
    RunConfig,
    parse_config,
    report_input_error,
    report_storage_error,
)
from sccl.data import (
    CorruptDataError,
    DataConfig,
    ShardDirError,
    build_dev_loader,
    build_train_loader,
)
from sccl.losses import supcon_loss, supcon_loss_terms
from sccl.memory import EmbeddingQueue, queue_active
from sccl.model import ModelConfig, ModelLoadError, SupConModel
from sccl.optim import OptimConfig, build_optimizer, optimizer_step


@dataclass
class LossConfig:
    """SupCon similarity, temperature, cross-batch queue and gathered-batch option."""

    similarity: Literal["cosine", "angular"] = "cosine"
    """Similarity s_ij: "cosine" = dot product of unit vectors, "angular" = 1 - 2*theta/pi."""
    temperature: float = 0.3
    """Softmax temperature T (the study: 0.3 for cosine, 0.07 for angular)."""
    queue_size: int = 0
    """Global queue of past embeddings (0 = off; the study: 256..8192)."""
    queue_start_epoch: int = 1
    """First epoch that uses the queue (6 = the study's delayed queue)."""
    queue_start_step: int = 0
    """First global optimizer step that uses the queue too (0 = no step condition)."""
    queue_positives: bool = False
    """Same-label queue entries count as positives (XBM style)."""
    gather_batch: bool = False
    """Contrast local anchors with the batch of every rank."""

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.queue_size < 0 or self.queue_start_epoch < 1 or self.queue_start_step < 0:
            raise ValueError("need queue_size >= 0, queue_start_epoch >= 1, queue_start_step >= 0")


@dataclass
class TrainConfig:
    """Stage 1 configuration (``python -m sccl.train_supcon --help`` lists every key)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    run: RunConfig = field(default_factory=RunConfig)


# Keys a resume may change freely: where the run lives, how it resumes, logs, checkpoints and
# when it gives up or stops, and gradient checkpointing (the same gradients for less memory).
# Every other key changes what the resumed run trains (data and its order, augmentation,
# model, loss, batch, optimizer, seed, precision): changing one needs run.allow_config_change.
RESUME_FREE = ("run.dir", "run.resume", "run.log_every", "run.save_every_steps",
               "run.keep_checkpoints", "run.max_consecutive_nonfinite", "run.max_steps",
               "run.tensorboard", "run.progress", "run.stop_after_steps", "run.rank_checksums",
               "run.allow_config_change", "run.collective_timeout_s", "data.max_corrupt_share",
               "model.gradient_checkpointing")


def supcon_step_loss(z, labels, queue_z, queue_labels, cfg: LossConfig):
    """SupCon loss of one micro-batch, z (B, D) L2-normalised with labels (B,), against the
    queue (queue_z (Q, D), queue_labels (Q,), or None) -> (loss to back-propagate, global mean
    loss as a float, and the batch of every rank (z (world*B, D) detached, labels) when
    gather_batch gathered it already, else None)."""
    contrast_z, contrast_labels, offset = (
        dist.gather_for_contrast(z, labels) if cfg.gather_batch else (None, None, 0))
    per_anchor, valid = supcon_loss_terms(
        z, labels, temperature=cfg.temperature, similarity=cfg.similarity, queue_z=queue_z,
        queue_labels=queue_labels, queue_positives=cfg.queue_positives, contrast_z=contrast_z,
        contrast_labels=contrast_labels, anchor_offset=offset)
    # Mean over the valid anchors of all ranks, scaled so DDP's gradient averaging yields its
    # gradient; the logged value is the same number on every rank (so NaN is agreed too).
    loss, value = dist.global_valid_mean(per_anchor, valid)
    gathered = (contrast_z.detach(), contrast_labels) if cfg.gather_batch else None
    return loss, float(value), gathered


@torch.no_grad()
def dev_loss(model, cfg: TrainConfig, accelerator, stop: accel.StopSignal) -> tuple[float | None, bool]:
    """(mean balanced dev SupCon loss (no queue) over the batches gathered from all ranks, so
    the value does not depend on the world size, or None without dev shards; whether a stop
    signal cut the evaluation short). RNG-neutral, so an evaluation cut short and rerun after
    resuming leaves the training random streams as an uninterrupted run's."""
    if not cfg.data.dev_shards:
        return None, False
    model.eval()
    total, count = 0.0, 0
    loader = build_dev_loader(cfg.data, rank=accelerator.process_index,
                              world_size=accelerator.num_processes)
    batches = iter(loader)
    with torch.random.fork_rng(devices=[]):
        while not (stopped := stop.agreed(accelerator.device)):  # same count on every rank
            with accel.stop_signals_deferred():
                batch = next(batches, None)
            if batch is None:
                break
            z = model(batch["wave"].to(accelerator.device),
                      batch["attention_mask"].to(accelerator.device))
            labels = batch["label"].to(accelerator.device)
            loss = supcon_loss(dist.all_gather_no_grad(z), dist.all_gather_no_grad(labels),
                               temperature=cfg.loss.temperature, similarity=cfg.loss.similarity)
            total, count = total + float(loss), count + 1
    model.train()
    return (None if stopped or not count else total / count), stopped


def absolute_paths(cfg: TrainConfig) -> None:
    """Store every path of the config absolute, so the saved config.yaml works from any
    directory (Stage 2 and evaluation read it). A model.encoder that names no existing
    path is a preset or hub id and stays as it is."""
    cfg.run.dir = str(Path(cfg.run.dir).expanduser().resolve())
    for name in ("train_shards", "dev_shards"):
        if value := getattr(cfg.data, name):
            setattr(cfg.data, name, str(Path(value).expanduser().resolve()))
    if Path(cfg.model.encoder).expanduser().exists():
        cfg.model.encoder = str(Path(cfg.model.encoder).expanduser().resolve())
    if cfg.run.resume not in ("auto", "never"):
        cfg.run.resume = str(Path(cfg.run.resume).expanduser().resolve())


def check_config(cfg: TrainConfig, accelerator) -> int:
    """Input checks that need the world size; returns the number of batches per epoch.
    Planning the epoch-1 and dev loaders checks the shards before a model is built."""
    world, o = accelerator.num_processes, cfg.optim
    deepspeed = accelerator.distributed_type == "DEEPSPEED"
    if accelerator.distributed_type in ("DEEPSPEED", "FSDP") and o.grad_accum_steps > 1:
        # A NaN/inf micro-batch could not be dropped from its window: DeepSpeed steps inside
        # backward() and owns the gradient buffers; FSDP2 holds the window's unreduced
        # gradients until the last micro-batch's backward, which a non-finite loss skips, so
        # they would be added into the next window's step.
        name = "DeepSpeed" if deepspeed else "FSDP"
        raise ConfigError(f"optim.grad_accum_steps > 1 is not supported under {name}: raise "
                          "data.batch_size (with model.gradient_checkpointing if memory is "
                          "short), or use DDP (launch/multi_gpu.yaml)")
    if deepspeed and o.grad_clip > 0 and o.clip_scope == "head":
        # DeepSpeed clips every gradient inside its step, which backward() already took.
        raise ConfigError("optim.clip_scope=head cannot be honoured under DeepSpeed (it clips "
                          "encoder and head together inside its step): set --optim.clip_scope "
                          "all, or --optim.grad_clip 0, or use DDP (launch/multi_gpu.yaml) or FSDP2 "
                          "(launch/fsdp.yaml)")
    if (accelerator.distributed_type == "FSDP" and accelerator.mixed_precision == "fp16"
            and o.grad_clip > 0 and o.clip_scope == "head"):
        # Accelerate 1.15 unscales the fp16 gradients twice when FSDP clips a subset of the
        # parameters (Accelerator.clip_grad_norm_), which the grad scaler refuses mid-run.
        raise ConfigError("optim.clip_scope=head with fp16 is not supported under FSDP: use "
                          "--run.mixed_precision bf16, or --optim.clip_scope all")
    cfg.data.check_encoder(cfg.model.receptive_field())  # crops the encoder can frame
    bona, spoof = cfg.data.rank_rows(world)  # each rank batch holds both labels
    if min(bona, spoof) < 2 and not cfg.loss.gather_batch and accelerator.is_main_process:
        print(f"warning: {bona + spoof} rows per rank leave some anchors without a positive "
              "(their loss is 0); raise data.batch_size or set loss.gather_batch", file=sys.stderr)
    rank = accelerator.process_index
    n_batches = len(build_train_loader(cfg.data, rank=rank, world_size=world, epoch=1))
    if cfg.data.dev_shards:
        build_dev_loader(cfg.data, rank=rank, world_size=world)
    if n_batches < o.grad_accum_steps:
        raise ConfigError(f"{cfg.data.train_shards}: {n_batches} batches of data.batch_size="
                          f"{cfg.data.batch_size} per epoch, fewer than optim.grad_accum_steps")
    return n_batches


def train(cfg: TrainConfig, stop: accel.StopSignal) -> int:
    """Set-up, then one loop over epochs and optimizer steps; returns the exit code. ``stop``
    is installed before anything slow, so an early signal is not lost."""
    if not cfg.run.dir:
        raise ConfigError("run.dir is required (the run directory, e.g. --run.dir runs/exp1)")
    if not cfg.data.train_shards:
        raise ConfigError("data.train_shards is required (a directory from sccl-shards build)")
    absolute_paths(cfg)
    o, lc, paths = cfg.optim, cfg.loss, logs.StagePaths(Path(cfg.run.dir), "stage1")
    acc = accel.build_accelerator(cfg.run.mixed_precision, o.grad_accum_steps, paths.dir,
                                  cfg.run.tensorboard, cfg.run.collective_timeout_s)
    rank, world, device = acc.process_index, acc.num_processes, acc.device
    n_micro = check_config(cfg, acc) // o.grad_accum_steps * o.grad_accum_steps  # per epoch
    claim = ck.StageClaim(acc, paths, "Stage 1", cfg.run.resume)  # exits 2 if the dir is in use
    try:
        accel.seed_all(cfg.run.seed)  # identical initial weights on every rank
        model = SupConModel(cfg.model)
        cfg.model = model.cfg  # the SpecAugment values it resolved go into config.yaml
        if claim.resume_from is not None:  # the checkpoint was trained with config.yaml's
            logs.refuse_changes(acc, cfg, paths, RESUME_FREE, cfg.run.allow_config_change,
                                f"resuming from {claim.resume_from.name}")
        groups = model.param_groups(o.encoder_lr, o.head_lr, o.weight_decay,
                                    exclude_norm_bias=o.exclude_norm_bias)
        optimizer, scheduler = build_optimizer(groups, o, n_micro // o.grad_accum_steps * o.epochs)
        accel.fill_deepspeed_auto(acc, sum(cfg.data.rank_rows(world)), o.grad_clip,
                                  model.encoder.config.hidden_size)
        model, optimizer = acc.prepare(model, optimizer)
        if scheduler is not None:
            acc.register_for_checkpointing(scheduler)
        queue = EmbeddingQueue(lc.queue_size, cfg.model.proj_dim, device=device)
        state = ck.TrainerState()
        if claim.resume_from is not None:  # weights, optimizer, scheduler, every rank's RNG
            state = ck.load_checkpoint(acc, claim.resume_from, queue)
        else:
            accel.seed_all(cfg.run.seed + rank)  # distinct dropout on every rank from here on
        if state.finished:  # writes nothing: config.yaml stays what trained the weights
            acc.print("this run has already finished; nothing to do")
            return 0
        logs.record_run(acc, cfg, paths, claim.resume_from, "Stage 1", state.global_step)
        if stop.agreed(device):
            acc.print("stopped by a signal before the first step; nothing new to save; "
                      "rerun the same command to resume")
            return 0
        if cfg.run.tensorboard:
            acc.init_trackers("tb", config=logs.tracker_config(cfg))
        logger = logs.JsonlLogger(paths.log, acc.is_main_process,  # a fresh run: a fresh log.jsonl
                                  resume_step=state.global_step if claim.resume_from else None)
        save = partial(ck.save_training, acc, model, queue, state, paths, cfg.run.keep_checkpoints)
        meter = logs.StepMeter()
        window = []  # the batch of every rank per micro-batch, enqueued after the window's step
        select_late = o.select_after_queue_start and lc.queue_size > 0

        for epoch in range(state.epoch, o.epochs + 1):
            state.epoch = epoch
            loader = build_train_loader(cfg.data, rank=rank, world_size=world, epoch=epoch,
                                        start_step=state.step_in_epoch)
            batches = iter(loader)
            bar = logs.progress(n_micro, state.step_in_epoch, f"epoch {epoch}",
                                enabled=acc.is_main_process and cfg.run.progress)
            meter.reset()
            model.train()
            for micro in range(state.step_in_epoch, n_micro):
                active = queue_active(epoch, state.global_step, size=lc.queue_size,
                                      start_epoch=lc.queue_start_epoch,
                                      start_step=lc.queue_start_step)
                state.queue_started |= active
                # DataLoader start-up draws a seed from torch's RNG (a resumed run would draw it
                # at another point), and forks the workers (which must not die of a stop signal)
                with torch.random.fork_rng(devices=[]), accel.stop_signals_deferred():
                    batch = next(batches)
                labels = batch["label"].to(device)
                # queue read: every micro-batch of a window sees the queue as at its start
                queue_z, queue_labels = queue.get() if active else (None, None)
                with acc.accumulate(model):  # DDP syncs gradients on a window's last micro-batch
                    z = model(batch["wave"].to(device), batch["attention_mask"].to(device))  # (B, D)
                    loss, value, gathered = supcon_step_loss(z, labels, queue_z, queue_labels, lc)
                    finite = math.isfinite(value)  # a global value: every rank agrees
                    if finite:  # no backward for a NaN/inf loss, so the gradients stay clean
                        acc.backward(loss)
                        if active:  # every rank holds the same batch size: known gather sizes
                            sizes = [len(labels)] * world
                            window.append(gathered or (dist.all_gather_no_grad(z.detach(), sizes),
                                                       dist.all_gather_no_grad(labels, sizes)))
                meter.add(value if finite else None, len(labels) * world)
                state.samples_seen += len(labels) * world
                bar.update(1)
                if not acc.sync_gradients:
                    continue  # inside an accumulation window
                step_ok = optimizer_step(acc, model, optimizer, scheduler, meter, o)
                for rows in window if step_ok else ():  # enqueue, in micro-batch order
                    queue.enqueue(*rows)
                window.clear()  # a skipped window's embeddings never reach the queue
                state.step_in_epoch = micro + 1
                state.record_step(step_ok, cfg.run.max_consecutive_nonfinite)  # raises if too many
                state.global_step += int(step_ok)
                log_now = step_ok and state.global_step % cfg.run.log_every == 0
                checks = debug.after_step(cfg.run, step_ok, log_now, state.global_step, acc, queue,
                                          model)
                if log_now:
                    record = log_record(state, meter, len(queue) if active else 0, world, checks)
                    logger.log(record)
                    acc.log({f"train/{k}": v for k, v in logs.scalars(record).items()},
                            step=state.global_step)
                    bar.set_postfix(loss=f"{record['loss']:.4f}")
                preempted = stop.agreed(device)
                done = 0 < cfg.run.max_steps <= state.global_step
                every = cfg.run.save_every_steps
                if preempted or done or (step_ok and every and state.global_step % every == 0):
                    state.finished = done
                    # Stage 2 reads best/: a run that ends before its first dev evaluation
                    # exports it too
                    exports = (paths.last,) if state.best_epoch else (paths.best, paths.last)
                    saved = save(exports if done else (), state.weights_info(None, epoch))
                if done:
                    acc.print(f"\nreached run.max_steps={cfg.run.max_steps}; last weights in "
                              f"{paths.last}")
                    return 0
                if preempted:
                    where = ("checkpoint saved" if saved
                             else "no new checkpoint (the last step was skipped)")
                    acc.print(f"\nstopped by a signal at step {state.global_step}; {where}; "
                              "rerun the same command to resume")
                    return 0
            bar.close()

            # end of the epoch: dev loss, model selection, best/ and last/, checkpoint, stop
            loss_dev, interrupted = dev_loss(model, cfg, acc, stop)
            if interrupted:  # checkpoint the finished epoch; the resumed run evaluates it
                saved = save()
                acc.print(f"\nstopped by a signal during the dev evaluation of epoch {epoch}; "
                          f"{'checkpoint saved' if saved else 'no new checkpoint'}; rerun the "
                          "same command to resume")
                return 0
            state.epoch, state.step_in_epoch = epoch + 1, 0
            waiting = select_late and not state.queue_started  # no early stop before the queue
            if select_late and state.queue_started and not state.selection_from:
                if state.start_selection(epoch):
                    logger.log({"event": "selection_reset", "epoch": epoch,
                                "global_step": state.global_step, "reason": "queue started"})
                    acc.print(f"epoch {epoch}: first epoch with the queue: best dev loss and "
                              f"patience reset; best/ is chosen from epoch {epoch} on")
            improved = loss_dev is None or state.record_dev_loss(loss_dev, epoch)
            info = state.weights_info(loss_dev, epoch)
            logger.log({"event": "epoch", **info, "nonfinite_total": state.nonfinite_total,
                        "world_size": world, **loader_counts(loader, device)})
            if loss_dev is not None:
                acc.log({"dev/loss": loss_dev}, step=state.global_step)
            acc.print(f"epoch {epoch}: dev loss {_fmt(loss_dev)}, best "
                      f"{_fmt(state.best_dev_loss)} (epoch {state.best_epoch})")
            early = bool(o.patience) and state.bad_epochs >= o.patience and not waiting
            state.finished = early or epoch == o.epochs
            save((paths.best, paths.last) if improved else (paths.last,), info)
            if state.finished:
                acc.print(f"finished after epoch {epoch}{' (early stop)' if early else ''}; "
                          f"best weights (epoch {state.best_epoch}) in {paths.best}")
                return 0
            if stop.agreed(device):
                acc.print(f"stopped by a signal after epoch {epoch}; rerun the same command "
                          "to resume")
                return 0
        return 0
    finally:
        claim.release()
        acc.end_training()


def log_record(state: ck.TrainerState, meter: logs.StepMeter, queue_fill: int, world_size: int,
               checks: dict) -> dict:
    """One log.jsonl line for a logging step."""
    return {"global_step": state.global_step, "epoch": state.epoch,
            "step_in_epoch": state.step_in_epoch, **meter.take(), "lr": meter.lrs,
            "grad_norm": meter.grad_norm, "queue_fill": queue_fill,
            "samples_seen": state.samples_seen, "nonfinite_total": state.nonfinite_total,
            "world_size": world_size, "time": time.time(), **checks}


def loader_counts(loader, device: torch.device) -> dict[str, int]:
    """Training samples of this epoch (since a resume: of its rest) that every rank's loader
    replaced (undecodable, too short) or left unaugmented (a codec failed), summed over ranks:
    a collective."""
    keys = ("corrupt_count", "short_count", "codec_failures")
    mine = torch.tensor([float(getattr(loader, k)) for k in keys], device=device)
    return dict(zip(keys, map(int, dist.all_reduce_sum(mine).tolist()), strict=True))


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.5g}"


def main(argv: list[str] | None = None) -> int:
    """Entry point; the exit code: 0 done or preempted; 2 bad input (config, model path,
    shards, a run directory in use, no intact checkpoint, a resume with settings that change
    the training) or storage that fails (the run directory's disk full, over quota,
    read-only, forbidden), in one line ``error: ...`` naming the file or key (the path and
    the cause for storage; rank k > 0 of a launch writes ``error (rank k): ...``); 3 too
    many NaN/inf losses in a row. Anything else raises, with its traceback (exit 1)."""
    try:
        cfg = parse_config(TrainConfig, argv, prog="python -m sccl.train_supcon")
    except ConfigError as e:
        return report_input_error(e)
    except OSError as e:  # the config file cannot be read
        return report_storage_error(e, None)
    stop = accel.StopSignal()  # before anything slow: a signal from here on is not lost
    try:
        return train(cfg, stop)
    except (ConfigError, ModelLoadError, ShardDirError, CorruptDataError) as e:
        return report_input_error(e)
    except ck.NonFiniteLossError as e:
        return report_input_error(e, code=3)
    except OSError as e:  # a full disk, a quota, a read-only run directory
        return report_storage_error(e, cfg.run.dir)
    finally:
        stop.close()


if __name__ == "__main__":
    accel.exit_process(main())
