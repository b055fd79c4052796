"""Process set-up shared by the stages: the one Accelerator factory (Stage 1, Stage 2 and
evaluation), seeding, and the stop signals through which a training run is preempted
(docs/reliability.md)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sccl import dist
from sccl.config import ConfigError


def build_accelerator(mixed_precision: str | None = None, grad_accum_steps: int = 1,
                      logging_dir: Path | None = None, tensorboard: bool = False,
                      collective_timeout_s: float | None = None):
    """Accelerator for any stage (the inference stages keep the defaults).

    With ``collective_timeout_s`` (Stage 1's run.collective_timeout_s) every collective and
    barrier gives up after that many seconds and raises, so a rank whose peer hangs, or whose
    node is lost without its sockets being closed, ends instead of waiting out torch's default
    (30 min for gloo, 10 min for NCCL); its launcher then exits non-zero and `srun
    --kill-on-bad-exit` ends the other nodes' ranks (docs/reliability.md, "Two nodes").
    None keeps torch's defaults: Stage 2 and evaluation, where rank 0 alone writes the report
    (bootstrap, plots) while the others wait in a barrier, for a time that grows with the sets.

    Several processes on a machine without CUDA (CI, tests) need two things Accelerate 1.15
    does not do by itself (both measured): CPU mode, without which ranks run undistributed
    (no DDP: silently unsynchronised weights) unless ACCELERATE_USE_CPU=true happens to be set
    (`use_cpu: true` in a multi-GPU config file does not set it); and a gloo process group,
    without which DeepSpeed starts its own and Accelerate reports world size 1 (docs/design.md).
    DeepSpeed and FSDP must not get CPU mode (Accelerate then turns them off); FSDP on CPU is
    switched on by ``_fsdp_without_cuda``. A plain single process gets neither. The scheduler
    (if any) is stepped by the trainer only after real optimizer steps, once per step whatever
    the world size."""
    from accelerate import Accelerator  # here, so that --help does not import it
    from accelerate.utils import DistributedType, ProjectConfiguration

    launched = int(os.environ.get("LOCAL_RANK", -1)) != -1  # torchrun / accelerate launch
    sharded = {name: os.environ.get(f"ACCELERATE_USE_{name}", "false").lower() == "true"
               for name in ("DEEPSPEED", "FSDP")}
    no_cuda = launched and not torch.cuda.is_available()
    project = None if logging_dir is None else ProjectConfiguration(
        project_dir=str(logging_dir), logging_dir=str(logging_dir))
    accelerator = Accelerator(
        cpu=no_cuda and not any(sharded.values()),
        gradient_accumulation_steps=grad_accum_steps,
        mixed_precision=mixed_precision,
        log_with="tensorboard" if tensorboard else None,
        project_config=project,
        kwargs_handlers=_process_group_kwargs(no_cuda, collective_timeout_s),
        step_scheduler_with_optimizer=False,
    )
    if sharded["FSDP"] and no_cuda:
        _fsdp_without_cuda(accelerator)
    if accelerator.distributed_type == DistributedType.FSDP:
        _fsdp_precision(accelerator)
    if dist.get_world_size() > 1 and accelerator.distributed_type == DistributedType.NO:
        raise ConfigError(f"{dist.get_world_size()} processes were launched but Accelerate "
                          "does not distribute them; check the accelerate launch config")
    return accelerator


def _process_group_kwargs(no_cuda: bool, timeout_s: float | None) -> list:
    """Accelerate's process-group settings: gloo without CUDA, and the collective timeout
    (None: torch's default for the backend, 30 min for gloo and 10 min for NCCL)."""
    from accelerate.utils import InitProcessGroupKwargs

    if not no_cuda and timeout_s is None:
        return []
    timeout = None if timeout_s is None else timedelta(seconds=timeout_s)
    return [InitProcessGroupKwargs(backend="gloo" if no_cuda else "nccl", timeout=timeout)]


def _fsdp_without_cuda(accelerator) -> None:
    """Turn FSDP on for processes launched without CUDA (CPU tests on gloo).

    Accelerate 1.15 enables FSDP only for GPU-like distributed types (``AcceleratorState.
    __init__``: the ``ACCELERATE_USE_FSDP`` branch sits under ``elif self.distributed_type in
    [MULTI_GPU, MULTI_MLU, ...]``, which neither MULTI_CPU nor NO is in), so on CPU the
    launcher's FSDP settings are dropped and every rank would train a full replica without
    any gradient reduction. torch's FSDP2 itself runs on CPU tensors with gloo: this does what
    that branch would have done (the plugin from the launcher's FSDP_* variables, the
    distributed type), on the gloo group Accelerate has already started."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    state.fsdp_plugin = FullyShardedDataParallelPlugin()
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def _fsdp_precision(accelerator) -> None:
    """bf16 under FSDP2: compute with bf16 parameters (every unit casts its inputs to bf16),
    but reduce-scatter the gradients in fp32. Accelerate's bf16 policy reduces in bf16, which
    sums every rank's gradient with an 8-bit mantissa; DDP under autocast reduces fp32
    gradients. Outputs keep their dtype (an fp32 output_dtype would hand the last layer's
    fp32 output to the bf16 final layer norm, which CPU refuses); the model returns fp32 z."""
    if accelerator.mixed_precision != "bf16":
        return
    from torch.distributed.fsdp import MixedPrecisionPolicy

    accelerator.state.fsdp_plugin.mixed_precision_policy = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def fill_deepspeed_auto(accelerator, micro_batch: int, grad_clip: float, hidden_size: int) -> None:
    """Fill the DeepSpeed config's "auto" values that Accelerate cannot infer from our
    (non-DataLoader) loader and model (no ``model.config``), from the stage config: the
    per-rank micro batch, gradient clipping (Accelerate would put 1.0 there) and ZeRO's
    bucket sizes, which Accelerate derives from the encoder width ``hidden_size`` with the
    same rule (H*H reduce bucket, 0.9*H*H prefetch bucket, 10*H persistence threshold:
    ZeRO-3 keeps parameters smaller than that unpartitioned). Non-"auto" values that disagree
    with the training config are errors: it is the one source of truth; so is a ZeRO-3 config
    that cannot gather the full weights for best/ and last/. No-op without DeepSpeed."""
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
    zero = ds.get("zero_optimization", {})
    if zero.get("stage") == 3 and zero.get("stage3_gather_16bit_weights_on_model_save") is not True:
        raise ConfigError("DeepSpeed config: ZeRO-3 needs zero_optimization."
                          "stage3_gather_16bit_weights_on_model_save true (best/ and last/ are "
                          "the full weights, gathered from every rank's partition on export)")
    for key, value in zero_bucket_sizes(hidden_size).items():
        if zero.get(key) == "auto":
            zero[key] = value


def zero_bucket_sizes(hidden_size: int) -> dict[str, int]:
    """ZeRO's "auto" bucket sizes for an encoder of width ``hidden_size``, by Accelerate's rule
    (it cannot apply it itself: SupConModel has no ``config.hidden_size``)."""
    return {"reduce_bucket_size": hidden_size * hidden_size,
            "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
            "stage3_param_persistence_threshold": 10 * hidden_size}


def params_sharded(accelerator) -> bool:
    """Whether the parameters are split across ranks (ZeRO-3, FSDP): gathering them is then a
    collective that every rank must join."""
    if accelerator.distributed_type == "FSDP":
        return True
    plugin = accelerator.state.deepspeed_plugin
    return plugin is not None and plugin.deepspeed_config["zero_optimization"].get("stage") == 3


def local_shards(model) -> list[torch.Tensor]:
    """The part of each parameter that this rank holds: the whole parameter under DDP and
    ZeRO-2, the local shard of a DTensor (FSDP2), the rank's partition under ZeRO-3 (whose
    ``param`` itself is an empty placeholder outside forward/backward; the partition's
    padding past the parameter's end is uninitialised memory and left out; parameters below
    ZeRO-3's persistence threshold are also kept whole on every rank, 4 % of the tiny
    preset's elements, yet each has a partition, which is what this returns). Over all ranks
    the shards of a sharded model cover every element exactly once."""
    from torch.distributed.tensor import DTensor

    out = []
    for p in model.parameters():
        if hasattr(p, "ds_tensor"):
            part = p.ds_tensor.numel()
            start = part * dist.get_rank(p.ds_process_group)
            out.append(p.ds_tensor.narrow(0, 0, max(0, min(part, p.ds_numel - start))))
        else:
            out.append(p.to_local() if isinstance(p, DTensor) else p)
    return out


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
