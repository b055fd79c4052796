"""Stage 1's optimizer: its config section, AdamW with the lr schedule, gradient clipping
and the guarded optimizer step (skipped for a NaN/inf loss or gradient norm)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from sccl.logs import StepMeter


@dataclass
class OptimConfig:
    """AdamW, clipping, schedule, length of training and model selection (defaults: the
    study's, docs/study.md)."""

    epochs: int = 100
    """Maximum number of epochs."""
    patience: int = 10
    """Stop after this many epochs without a better dev loss (0 = never)."""
    encoder_lr: float = 1e-5
    """Learning rate of the XLS-R encoder."""
    head_lr: float = 5e-4
    """Learning rate of the projection head (and layer weights)."""
    weight_decay: float = 3e-3
    """AdamW decoupled weight decay."""
    exclude_norm_bias: bool = False
    """No decay on biases/norm gains (the study decays all)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.999
    """AdamW beta2."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 5.0
    """Max gradient norm over clip_scope's parameters (0 = no clipping)."""
    clip_scope: Literal["head", "all"] = "head"
    """Gradients that grad_clip clips: "head" = the projection head's only (the study),
    "all" = encoder and head together (the only scope DeepSpeed can do, ZeRO-2 and ZeRO-3
    alike: it clips inside its own step, so "head" is refused there; FSDP2 does both)."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step (the remainder of an epoch is dropped)."""
    scheduler: Literal["none", "cosine", "linear"] = "none"
    """Learning-rate decay to 0 (the study: none)."""
    warmup_steps: int = 0
    """Linear warm-up optimizer steps (scheduler cosine/linear only)."""
    select_after_queue_start: bool = True
    """With a queue (loss.queue_size > 0): forget the best dev loss and the patience count at
    the end of the first epoch that used the queue, so best/ and early stopping only consider
    epochs trained with it (no early stop before it); false = every epoch competes."""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.patience < 0 or self.grad_accum_steps < 1:
            raise ValueError("need epochs >= 1, patience >= 0 and grad_accum_steps >= 1")
        if min(self.encoder_lr, self.head_lr, self.weight_decay, self.grad_clip) < 0:
            raise ValueError("learning rates, weight_decay and grad_clip must be >= 0")


def build_optimizer(groups: list[dict], cfg: OptimConfig, total_steps: int):
    """AdamW over parameter ``groups`` (each with its lr and weight_decay) and the lr
    schedule: None for "none", else linear warm-up then cosine or linear decay to 0 at
    total_steps."""
    optimizer = torch.optim.AdamW(groups, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if cfg.scheduler == "none":
        return optimizer, None

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        return 0.5 * (1 + math.cos(math.pi * progress)) if cfg.scheduler == "cosine" else 1 - progress

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def clip_gradients(accelerator, model, cfg: OptimConfig) -> float | None:
    """Clip the gradients of ``cfg.clip_scope`` to norm ``cfg.grad_clip``; their norm before
    clipping (None without clipping). Under FSDP2 the head's gradients are shards (DTensors):
    Accelerate's clipping then sums the squared norms over ranks and returns a replicated
    DTensor, read here as the plain number every rank agrees on."""
    if cfg.grad_clip <= 0:
        return None
    params = (model.parameters() if cfg.clip_scope == "all"
              else accelerator.unwrap_model(model).head.parameters())
    norm = accelerator.clip_grad_norm_(params, cfg.grad_clip)
    if norm is None:
        return None
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def optimizer_step(accelerator, model, optimizer, scheduler, meter: StepMeter,
                   cfg: OptimConfig) -> bool:
    """At the end of an accumulation window: clip, step the optimizer and the schedule, zero
    the gradients. False when the step was skipped: a NaN/inf loss in the window, a NaN/inf
    gradient norm, or an fp16 overflow (the grad scaler skips those steps itself)."""
    grad_norm = clip_gradients(accelerator, model, cfg)
    # fp16: the grad scaler skips overflowing steps itself; DeepSpeed has stepped already
    norm_ok = (grad_norm is None or math.isfinite(grad_norm) or accelerator.scaler is not None
               or accelerator.distributed_type == "DEEPSPEED")
    step_ok = meter.end_window(grad_norm, optimizer) and norm_ok
    if step_ok:
        optimizer.step()
        step_ok = not (accelerator.scaler is not None and optimizer.step_was_skipped)
    if step_ok and scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return step_ok
