"""Stage 1: supervised contrastive (SupCon) fine-tuning of an XLS-R encoder + projection head.

    accelerate launch --config_file launch/multi_gpu.yaml sccl/train_supcon.py \\
        --config my_run.yaml --run.dir runs/cos_q4096 [--loss.temperature 0.3 ...]
    python -m sccl.train_supcon --config my_run.yaml --run.dir RUN       # one process
    python -m sccl.train_supcon --help                                   # every option

Reads balanced batches of LA19 train shards (sccl/data.py), trains with cosine or angular
SupCon and an optional warm-started global queue, evaluates the balanced dev SupCon loss
after every epoch and stops early on it. Writes ``<run>/stage1`` (layout in
sccl/runtime.py): config.yaml, log.jsonl, tb/, checkpoints/step-N (resumable), best/ and
last/ (``SupConModel.save_pretrained``; Stage 2 reads best/).

Resume: rerun the same command (``--run.resume auto``, the default; a damaged newest
checkpoint is skipped with a warning). SIGTERM, SIGINT or SIGUSR1 (to the launcher, or to every
process of the job at once as Slurm sends them) make every rank checkpoint at the next
optimizer step, or at once during the dev evaluation, and exit 0. The stage directory is
locked while the run lasts: a second run on it exits 2 naming the holder. Guarantees and their
tests: docs/reliability.md. Exit codes: 0 done or preempted, 2 bad input (config, model path,
shards, a run directory in use, no intact checkpoint), 3 too many non-finite losses.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from sccl import dist
from sccl import runtime as rt
from sccl.config import (
    ConfigError,
    RunConfig,
    flatten,
    parse_config,
    report_input_error,
    to_dict,
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


@dataclass
class OptimConfig:
    """AdamW, clipping, schedule, length of training and model selection (defaults: the
    study's, docs/study.md)."""

    epochs: int = 100  # maximum number of epochs
    patience: int = 10  # stop after this many epochs without a better dev loss (0 = never)
    encoder_lr: float = 1e-5  # learning rate of the XLS-R encoder
    head_lr: float = 5e-4  # learning rate of the projection head (and layer weights)
    weight_decay: float = 3e-3  # AdamW decoupled weight decay
    exclude_norm_bias: bool = False  # no decay on biases/norm gains (the study decays all)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.999  # AdamW beta2
    eps: float = 1e-8  # AdamW epsilon
    grad_clip: float = 5.0  # max gradient norm over clip_scope's parameters (0 = no clipping)
    clip_scope: Literal["head", "all"] = "head"
    """Gradients that grad_clip clips: "head" = the projection head's only (the study),
    "all" = encoder and head together (the only scope DeepSpeed can do: it clips inside its
    own step, so "head" is refused there)."""
    grad_accum_steps: int = 1  # micro-batches per optimizer step (the remainder of an epoch is dropped)
    scheduler: Literal["none", "cosine", "linear"] = "none"  # lr decay to 0 (the study: none)
    warmup_steps: int = 0  # linear warm-up optimizer steps (scheduler cosine/linear only)
    select_after_queue_start: bool = True
    """With a queue (loss.queue_size > 0): forget the best dev loss and the patience count at
    the end of the first epoch that used the queue, so best/ and early stopping only consider
    epochs trained with it (no early stop before it); false = every epoch competes."""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.patience < 0 or self.grad_accum_steps < 1:
            raise ValueError("need epochs >= 1, patience >= 0 and grad_accum_steps >= 1")
        if min(self.encoder_lr, self.head_lr, self.weight_decay, self.grad_clip) < 0:
            raise ValueError("learning rates, weight_decay and grad_clip must be >= 0")


@dataclass
class LossConfig:
    """SupCon similarity, temperature, cross-batch queue and gathered-batch option."""

    similarity: Literal["cosine", "angular"] = "cosine"  # s_ij: dot product or 1 - 2*theta/pi
    temperature: float = 0.3  # the study: 0.3 for cosine, 0.07 for angular
    queue_size: int = 0  # global queue of past embeddings (0 = off; the study: 256..8192)
    queue_start_epoch: int = 1  # first epoch that uses the queue (6 = the study's delayed queue)
    queue_start_step: int = 0  # and first global optimizer step (0 = no step condition)
    queue_positives: bool = False  # same-label queue entries count as positives (XBM style)
    gather_batch: bool = False  # contrast local anchors with the batch of every rank

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


def supcon_forward(model, batch, queue, cfg: LossConfig, device):
    """Forward + loss on one micro-batch -> (loss to back-propagate, global mean loss as a
    float, z (B, D) detached, labels (B,), and the batch of every rank (z, labels) when
    gather_batch gathered it already, else None). The queue is read here, before it gets
    this batch."""
    wave, mask = batch["wave"].to(device), batch["attention_mask"].to(device)
    labels = batch["label"].to(device)
    queue_z, queue_labels = queue.get() if queue is not None else (None, None)
    z = model(wave, mask)  # (B, D) L2-normalised fp32
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
    return loss, float(value), z.detach(), labels, gathered


@torch.no_grad()
def dev_loss(model, cfg: TrainConfig, accelerator, stop: rt.StopSignal) -> tuple[float | None, bool]:
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
            with rt.stop_signals_deferred():
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
    if deepspeed and o.grad_accum_steps > 1:
        # DeepSpeed steps inside backward() on the last micro-batch and owns the gradient
        # buffers, so a NaN/inf micro-batch could not be dropped from its window.
        raise ConfigError("optim.grad_accum_steps > 1 is not supported under DeepSpeed: "
                          "raise data.batch_size or use DDP (launch/multi_gpu.yaml)")
    if deepspeed and o.grad_clip > 0 and o.clip_scope == "head":
        # DeepSpeed clips every gradient inside its step, which backward() already took.
        raise ConfigError("optim.clip_scope=head cannot be honoured under DeepSpeed (it clips "
                          "encoder and head together inside its step): set --optim.clip_scope "
                          "all, or --optim.grad_clip 0, or use DDP (launch/multi_gpu.yaml)")
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


def train(cfg: TrainConfig, stop: rt.StopSignal) -> int:
    """Set up (accelerator, data, lock, model, optimizer, queue, resume) and run the epochs.
    ``stop`` is installed before anything slow, so an early signal is not lost."""
    if not cfg.run.dir:
        raise ConfigError("run.dir is required (the run directory, e.g. --run.dir runs/exp1)")
    if not cfg.data.train_shards:
        raise ConfigError("data.train_shards is required (a directory from sccl-shards build)")
    absolute_paths(cfg)
    paths = rt.StagePaths(Path(cfg.run.dir), "stage1")
    accelerator = rt.build_accelerator(cfg.run.mixed_precision, cfg.optim.grad_accum_steps,
                                       paths.dir, cfg.run.tensorboard)
    steps_per_epoch = check_config(cfg, accelerator) // cfg.optim.grad_accum_steps
    claim = rt.StageClaim(accelerator, paths, "Stage 1", cfg.run.resume)  # exits 2 if in use
    try:
        return run_epochs(cfg, accelerator, paths, claim.resume_from, steps_per_epoch, stop)
    finally:
        claim.release()
        accelerator.end_training()


def run_epochs(cfg: TrainConfig, accelerator, paths: rt.StagePaths, resume_from: Path | None,
               steps_per_epoch: int, stop: rt.StopSignal) -> int:
    rank = accelerator.process_index
    rt.seed_all(cfg.run.seed)  # identical initial weights on every rank
    model = SupConModel(cfg.model)
    cfg.model = model.cfg  # the SpecAugment values it resolved go into config.yaml
    o = cfg.optim
    groups = model.param_groups(o.encoder_lr, o.head_lr, o.weight_decay,
                                exclude_norm_bias=o.exclude_norm_bias)
    optimizer, scheduler = rt.build_optimizer(groups, o, steps_per_epoch * o.epochs)
    rt.fill_deepspeed_auto(accelerator, cfg.data.batch_size // accelerator.num_processes,
                           cfg.optim.grad_clip)
    model, optimizer = accelerator.prepare(model, optimizer)
    if scheduler is not None:
        accelerator.register_for_checkpointing(scheduler)
    queue = EmbeddingQueue(cfg.loss.queue_size, cfg.model.proj_dim, device=accelerator.device)
    state = rt.TrainerState()
    if resume_from is not None:  # weights, optimizer, scheduler and every rank's RNG
        state = rt.load_checkpoint(accelerator, resume_from, queue)
    else:
        rt.seed_all(cfg.run.seed + rank)  # distinct dropout on every rank from here on
    rt.record_run(accelerator, cfg, paths, resume_from, stage="Stage 1")
    if state.finished:
        accelerator.print("this run has already finished; nothing to do")
        return 0
    if stop.agreed(accelerator.device):
        accelerator.print("stopped by a signal before the first step; nothing new to save; "
                          "rerun the same command to resume")
        return 0
    if cfg.run.tensorboard:
        accelerator.init_trackers("tb", config=rt.tracker_config(flatten(to_dict(cfg))))
    # a fresh run (no checkpoint) starts a fresh log.jsonl
    logger = rt.JsonlLogger(paths.log, accelerator.is_main_process,
                            resume_step=state.global_step if resume_from else None)
    r = Run(cfg, accelerator, model, optimizer, scheduler, queue, state, paths, logger, stop)
    for epoch in range(state.epoch, cfg.optim.epochs + 1):
        state.epoch = epoch
        if train_epoch(r, epoch) or end_epoch(r, epoch):
            break
    return 0


@dataclass
class Run:
    """What the loop works on, in one place."""

    cfg: TrainConfig
    accelerator: Any
    model: Any
    optimizer: Any
    scheduler: Any
    queue: EmbeddingQueue
    state: rt.TrainerState
    paths: rt.StagePaths
    logger: rt.JsonlLogger
    stop: rt.StopSignal
    meter: rt.StepMeter = field(default_factory=rt.StepMeter)
    # gathered (z, labels) of this accumulation window, enqueued after its optimizer step
    pending: list = field(default_factory=list)

    def save(self, exports: tuple = (), info: dict | None = None) -> bool:
        """Export the weights to each path in ``exports``, then checkpoint. Never writes
        non-finite weights, and no checkpoint right after a skipped (NaN/inf) step: the
        newest checkpoint is always one taken after a good step. True if one was written."""
        rt.check_finite_weights(self.model, self.accelerator.device, self.state)
        for path in exports:
            rt.export_weights(self.accelerator, self.model, path, info)
        if self.state.nonfinite_consecutive:
            self.accelerator.print("warning: no checkpoint after a skipped non-finite step")
            return False
        queue_state = self.queue.state_dict() if self.queue.size else None
        rt.save_checkpoint(self.accelerator, self.paths.checkpoints, self.state, queue_state,
                           self.cfg.run.keep_checkpoints)
        return True


def train_epoch(r: Run, epoch: int) -> bool:
    """Train (the rest of) one epoch; True when the run must stop (signal or max_steps)."""
    cfg, acc, state = r.cfg, r.accelerator, r.state
    loader = build_train_loader(cfg.data, rank=acc.process_index, world_size=acc.num_processes,
                                epoch=epoch, start_step=state.step_in_epoch)
    batches = iter(loader)
    n_micro = len(loader) // cfg.optim.grad_accum_steps * cfg.optim.grad_accum_steps
    bar = rt.progress(n_micro, state.step_in_epoch, f"epoch {epoch}",
                      enabled=acc.is_main_process and cfg.run.progress)
    r.meter.reset()
    r.model.train()
    for micro in range(state.step_in_epoch, n_micro):
        lc = cfg.loss
        active = queue_active(epoch, state.global_step, size=lc.queue_size,
                              start_epoch=lc.queue_start_epoch, start_step=lc.queue_start_step)
        state.queue_started |= active
        # DataLoader start-up draws a seed from torch's RNG (a resumed run would draw it at
        # another point), and forks the workers (which must not die of a stop signal)
        with torch.random.fork_rng(devices=[]), rt.stop_signals_deferred():
            batch = next(batches)
        step_ok = train_micro_batch(r, batch, active)
        bar.update(1)
        if step_ok is not None:  # an optimizer step boundary
            state.step_in_epoch = micro + 1
            if after_step(r, step_ok, active, bar):
                bar.close()
                return True
    bar.close()
    return False


def train_micro_batch(r: Run, batch: dict, active: bool) -> bool | None:
    """Forward/backward one micro-batch (enqueue it when the queue is active); at the end of
    an accumulation window take the optimizer step. Returns None inside a window, else
    whether the step was taken (False: skipped for a NaN/inf loss or gradient norm)."""
    acc, world = r.accelerator, r.accelerator.num_processes
    with acc.accumulate(r.model):
        loss, value, z, labels, gathered = supcon_forward(
            r.model, batch, r.queue if active else None, r.cfg.loss, acc.device)
        finite = math.isfinite(value)  # a global value: every rank takes the same branch
        if finite:  # no backward for a NaN/inf loss, so the gradients stay clean
            acc.backward(loss)
            if active:  # every micro-batch of a window reads the queue as it was at its start
                # the batch of every rank, in rank order (gather_batch gathered it already)
                # every rank holds the same per-rank batch size: no size gather needed
                sizes = [len(labels)] * world
                r.pending.append(gathered or (dist.all_gather_no_grad(z, sizes),
                                              dist.all_gather_no_grad(labels, sizes)))
        r.meter.add(value if finite else None, len(labels) * world)
        r.state.samples_seen += len(labels) * world
        if not acc.sync_gradients:
            return None
        grad_norm = clip_gradients(r)
        # fp16: the grad scaler skips overflowing steps itself; DeepSpeed has stepped already
        norm_ok = (grad_norm is None or math.isfinite(grad_norm) or acc.scaler is not None
                   or acc.distributed_type == "DEEPSPEED")
        step_ok = r.meter.end_window(grad_norm, r.optimizer) and norm_ok
        if step_ok:
            r.optimizer.step()
            # fp16: an overflow makes the grad scaler skip the update; count it as skipped
            step_ok = not (acc.scaler is not None and r.optimizer.step_was_skipped)
        if step_ok:
            if r.scheduler is not None:
                r.scheduler.step()
            for queued in r.pending:  # after the step, in micro-batch order, on every rank
                r.queue.enqueue(*queued)
        r.pending.clear()  # a skipped window's embeddings never reach the queue
        r.optimizer.zero_grad(set_to_none=True)
        return step_ok


def clip_gradients(r: Run) -> float | None:
    """Clip the gradients of ``optim.clip_scope`` to norm ``optim.grad_clip``; their norm
    before clipping (None without clipping, and under DeepSpeed, which clips in its step)."""
    o = r.cfg.optim
    if o.grad_clip <= 0:
        return None
    params = (r.model.parameters() if o.clip_scope == "all"
              else r.accelerator.unwrap_model(r.model).head.parameters())
    norm = r.accelerator.clip_grad_norm_(params, o.grad_clip)
    return None if norm is None else float(norm)


def after_step(r: Run, step_ok: bool, active: bool, bar) -> bool:
    """Bookkeeping after an optimizer step: counters, logs, checkpoints, stop signals.
    True when the run must stop now (checkpoint written)."""
    cfg, acc, state = r.cfg, r.accelerator, r.state
    state.record_step(step_ok, cfg.run.max_consecutive_nonfinite)  # raises after too many
    state.global_step += int(step_ok)
    if step_ok and state.global_step % cfg.run.log_every == 0:
        record = rt.train_record(state, r.meter, len(r.queue) if active else 0, acc.num_processes)
        if cfg.run.rank_checksums:
            record.update(rt.rank_checksums(r.queue, r.model, acc.device))
        r.logger.log(record)
        acc.log({f"train/{k}": v for k, v in rt.scalars(record).items()}, step=state.global_step)
        bar.set_postfix(loss=f"{record['loss']:.4f}")
    if step_ok and acc.process_index == 0 and state.global_step == cfg.run.stop_after_steps:
        rt.send_stop_to_self()  # debug: a preemption that only rank 0 sees
    preempted = r.stop.agreed(acc.device)
    done = 0 < cfg.run.max_steps <= state.global_step
    every = cfg.run.save_every_steps
    saved = False
    if preempted or done or (step_ok and every and state.global_step % every == 0):
        state.finished = done
        # Stage 2 reads best/: a run that ends before its first dev evaluation exports it too
        exports = () if not done else (
            (r.paths.last,) if state.best_epoch else (r.paths.best, r.paths.last))
        saved = r.save(exports, rt.weights_info(state, None, state.epoch))
    if done:
        acc.print(f"\nreached run.max_steps={cfg.run.max_steps}; last weights in {r.paths.last}")
    elif preempted:
        where = "checkpoint saved" if saved else "no new checkpoint (the last step was skipped)"
        acc.print(f"\nstopped by a signal at step {state.global_step}; {where}; "
                  "rerun the same command to resume")
    return preempted or done


def end_epoch(r: Run, epoch: int) -> bool:
    """Dev loss, model selection, early stopping, best/last weights and a checkpoint; True =
    stop the run. A stop signal during the dev evaluation checkpoints the finished epoch
    without it (the resumed run evaluates it)."""
    cfg, acc, state = r.cfg, r.accelerator, r.state
    loss_dev, interrupted = dev_loss(r.model, cfg, acc, r.stop)
    if interrupted:
        saved = r.save()
        acc.print(f"\nstopped by a signal during the dev evaluation of epoch {epoch}; "
                  f"{'checkpoint saved' if saved else 'no new checkpoint'}; rerun the same "
                  "command to resume")
        return True
    state.epoch, state.step_in_epoch = epoch + 1, 0
    waiting = restart_selection(r, epoch)
    improved = loss_dev is None or state.record_dev_loss(loss_dev, epoch)
    info = rt.weights_info(state, loss_dev, epoch)
    r.logger.log({"event": "epoch", **info, "nonfinite_total": state.nonfinite_total,
                  "world_size": acc.num_processes})
    if loss_dev is not None:
        acc.log({"dev/loss": loss_dev}, step=state.global_step)
    acc.print(f"epoch {epoch}: dev loss {_fmt(loss_dev)}, best {_fmt(state.best_dev_loss)} "
              f"(epoch {state.best_epoch})")
    patience = cfg.optim.patience
    early = bool(patience) and state.bad_epochs >= patience and not waiting
    state.finished = early or epoch == cfg.optim.epochs
    r.save((r.paths.best, r.paths.last) if improved else (r.paths.last,), info)
    if state.finished:
        acc.print(f"finished after epoch {epoch}{' (early stop)' if early else ''}; best "
                  f"weights (epoch {state.best_epoch}) in {r.paths.best}")
        return True
    if r.stop.agreed(acc.device):
        acc.print(f"stopped by a signal after epoch {epoch}; rerun the same command to resume")
        return True
    return False


def restart_selection(r: Run, epoch: int) -> bool:
    """optim.select_after_queue_start: at the end of the first epoch that used the queue,
    forget the best dev loss and the patience count (logged and printed). True while the
    queue has not started yet (no early stopping then)."""
    cfg, state = r.cfg, r.state
    if not (cfg.optim.select_after_queue_start and cfg.loss.queue_size):
        return False
    if not state.queue_started:
        return True
    if not state.selection_from:
        state.selection_from = epoch
        forgotten = state.best_epoch
        state.best_dev_loss, state.best_epoch, state.bad_epochs = None, 0, 0
        if not forgotten:  # the queue ran from the first evaluated epoch: nothing to reset
            return False
        r.logger.log({"event": "selection_reset", "epoch": epoch,
                      "global_step": state.global_step, "reason": "queue started"})
        r.accelerator.print(f"epoch {epoch}: first epoch with the queue: best dev loss and "
                            f"patience reset; best/ is chosen from epoch {epoch} on")
    return False


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.5g}"


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit code 0 done/preempted, 2 bad input, 3 too many NaN/inf losses."""
    try:
        cfg = parse_config(TrainConfig, argv, prog="python -m sccl.train_supcon")
    except ConfigError as e:
        return report_input_error(e)
    stop = rt.StopSignal()  # before anything slow: a signal from here on is not lost
    try:
        return train(cfg, stop)
    except (ConfigError, ModelLoadError, ShardDirError, CorruptDataError) as e:
        return report_input_error(e)
    except rt.NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    finally:
        stop.close()


if __name__ == "__main__":
    sys.exit(main())
