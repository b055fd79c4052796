"""Process set-up shared by the stages: the one Accelerator factory (Stage 1, Stage 2 and
evaluation), seeding, and the stop signals through which a training run is preempted
(docs/reliability.md)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sccl import dist
from sccl.config import ConfigError


def build_accelerator(mixed_precision: str | None = None, grad_accum_steps: int = 1,
                      logging_dir: Path | None = None, tensorboard: bool = False):
    """Accelerator for any stage (the inference stages keep the defaults).

    Several processes on a machine without CUDA (CI, tests) need two things Accelerate 1.15
    does not do by itself (both measured): CPU mode, without which ranks run undistributed
    (no DDP: silently unsynchronised weights) unless ACCELERATE_USE_CPU=true happens to be set
    (`use_cpu: true` in a multi-GPU config file does not set it); and a gloo process group,
    without which DeepSpeed starts its own and Accelerate reports world size 1 (docs/design.md).
    DeepSpeed must not get CPU mode (Accelerate then turns DeepSpeed off). A plain single
    process gets neither. The scheduler (if any) is stepped by the trainer only after real
    optimizer steps, once per step whatever the world size."""
    from accelerate import Accelerator  # here, so that --help does not import it
    from accelerate.utils import DistributedType, InitProcessGroupKwargs, ProjectConfiguration

    launched = int(os.environ.get("LOCAL_RANK", -1)) != -1  # torchrun / accelerate launch
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    no_cuda = launched and not torch.cuda.is_available()
    project = None if logging_dir is None else ProjectConfiguration(
        project_dir=str(logging_dir), logging_dir=str(logging_dir))
    accelerator = Accelerator(
        cpu=no_cuda and not deepspeed,
        gradient_accumulation_steps=grad_accum_steps,
        mixed_precision=mixed_precision,
        log_with="tensorboard" if tensorboard else None,
        project_config=project,
        kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")] if no_cuda else [],
        step_scheduler_with_optimizer=False,
    )
    if dist.get_world_size() > 1 and accelerator.distributed_type == DistributedType.NO:
        raise ConfigError(f"{dist.get_world_size()} processes were launched but Accelerate "
                          "does not distribute them; check the accelerate launch config")
    return accelerator


def fill_deepspeed_auto(accelerator, micro_batch: int, grad_clip: float) -> None:
    """Fill the DeepSpeed config's "auto" values that Accelerate cannot infer from our
    (non-DataLoader) loader, from the stage config: the per-rank micro batch and gradient
    clipping (Accelerate would put 1.0 there). Non-"auto" values that disagree are errors:
    the stage config is the one source of truth. No-op without DeepSpeed."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    for key, value in (("train_micro_batch_size_per_gpu", micro_batch),
                       ("gradient_clipping", float(grad_clip))):
        current = ds.get(key, "auto")
        if current == "auto":
            ds[key] = value
        elif float(current) != float(value):
            raise ConfigError(f"DeepSpeed config sets {key}={current} but the training config "
                              f"implies {value}; set it to \"auto\" in the DeepSpeed JSON")


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class StopSignal:
    """SIGTERM / SIGINT / SIGUSR1 set a flag; the trainer polls it at step boundaries (and
    between dev batches).

    The handler only records the signal (nothing unsafe runs inside it). ``agreed`` sums the
    flag over ranks so that every rank stops at the same step even when only some ranks (or
    only the launcher's first child) received the signal. SIGINT (Ctrl-C; torchrun forwards it
    to the ranks, which it starts in sessions of their own) is a stop request too, not an
    abort: SIGKILL aborts. Previous handlers come back on ``close``."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def agreed(self, device: torch.device) -> bool:
        """True on every rank when any rank got a signal (one small all_reduce)."""
        flag = torch.tensor([1.0 if self.received is not None else 0.0], device=device)
        return bool(dist.all_reduce_sum(flag).item() > 0)

    def close(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def exit_process(code: int) -> None:
    """End an entry script's process with ``code``, skipping interpreter finalization.

    Under ``accelerate launch`` on CPU, gloo's worker threads can still hold objects when
    Python tears itself down after the script's last line; releasing them then aborts the
    process ("terminate called without an active exception", SIGABRT), so a finished stage
    was reported failed (seen in about one 2-process Stage 2 run in six here). Everything a
    stage writes is closed by then (atomic writes, trackers ended, locks released), so the
    streams are flushed and the process leaves at once."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@contextlib.contextmanager
def exit_on_stop_signals():
    """For stages that simply rerun (Stage 2, evaluation): SIGTERM / SIGUSR1 raise SystemExit
    (exit code 128 + signal), so ``finally`` blocks run and the stage directory's lock is
    released at once (a lock left behind would block a requeued job on another node until it
    went stale). Previous handlers come back on exit."""

    def leave(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signals = (signal.SIGTERM, signal.SIGUSR1)
    previous = {s: signal.signal(s, leave) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def stop_signals_deferred():
    """Block the stop signals while a loader may fork its workers (pending ones are handled
    on exit). A forked worker inherits the blocked mask, so a signal sent to every process of
    the job (as Slurm does) cannot kill a worker before its ``worker_init_fn`` ignores it."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, StopSignal.SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
