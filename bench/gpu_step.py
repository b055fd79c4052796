"""The measured unit of bench/gpu.py: one Stage 1 training step, its settings and its timing.

The step is sccl/train_supcon.py's step reduced to its compute: copy a balanced batch to the
device, read the queue, forward under bf16 autocast (or fp32), cosine SupCon (T = 0.3),
backward, clip the gradient norm to 5.0, AdamW, enqueue the gathered batch, and `loss.item()`
(the trainer reads the loss every step, which synchronises the device). The batch is random
audio-like noise, built once per setting: data loading is measured on its own
(bench/gpu_data.py). Timings are per step, synchronised, warm-up steps excluded.
"""

from __future__ import annotations

import contextlib
import gc
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch

from bench.flops import forward_flops
from sccl.dist import all_gather_no_grad
from sccl.losses import supcon_loss
from sccl.memory import EmbeddingQueue
from sccl.model import ModelConfig, SupConModel

TEMPERATURE = 0.3  # the study's cosine temperature
GRAD_CLIP = 5.0
ENCODER_LR, HEAD_LR, WEIGHT_DECAY = 1e-5, 5e-4, 3e-3  # the study's (docs/study.md)


@dataclass(frozen=True)
class Setting:
    """One way to run the step. The defaults are the fast setting ("best")."""

    name: str
    crop_s: float
    batch: int
    precision: str = "bf16"  # "bf16": fp32 weights + bf16 autocast; "fp32": no autocast
    attn: str = "sdpa"  # encoder attention kernel: "sdpa" | "eager"
    fused_adam: bool = True  # AdamW(fused=True); False = torch's default (foreach on CUDA)
    checkpointing: bool = False  # recompute each encoder layer in backward
    compile: str = "none"  # torch.compile: "none" | "regional" | "model" (see compile_model)
    compile_backend: str = "inductor"
    cudnn_benchmark: bool = False  # let cuDNN time its conv algorithms for these shapes
    tf32: bool = False  # fp32 matmuls on tensor cores (float32_matmul_precision "high")
    pad_share: float = 0.0  # share of rows whose second half is padding (attention mask)


def naive(name: str, crop_s: float, batch: int) -> Setting:
    """What most research code runs: fp32, eager attention, default AdamW, no compile."""
    return Setting(name, crop_s, batch, precision="fp32", attn="eager", fused_adam=False)


@dataclass
class Timing:
    warmup: int = 3  # steps run before timing (allocations, cuDNN/cuBLAS set-up, compile)
    min_steps: int = 5  # timed steps at least ...
    max_steps: int = 40  # ... and at most
    min_time: float = 2.0  # stop after this many timed seconds once min_steps are done
    setting_box: float = 20.0  # seconds of timed steps for one setting at most


@dataclass
class Ctx:
    """What every section needs: device, preset, the global deadline and timing policy."""

    device: torch.device
    preset: str
    deadline: float  # time.monotonic() after which no new work starts
    timing: Timing = field(default_factory=Timing)
    peak_flops: float | None = None  # device's dense bf16 peak, FLOP/s (None on CPU)
    sample_rate: int = 16000
    proj_dim: int = 256
    _flops: dict = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def samples(self, crop_s: float) -> int:
        return int(round(crop_s * self.sample_rate))

    def flops(self, crop_s: float, config) -> dict[str, int]:
        """forward_flops for one utterance of crop_s (cached per crop)."""
        if crop_s not in self._flops:
            self._flops[crop_s] = forward_flops(config, self.samples(crop_s), self.proj_dim)
        return self._flops[crop_s]


def free_memory(ctx: Ctx) -> None:
    gc.collect()
    if ctx.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(ctx.device)


def peak_memory_gib(ctx: Ctx) -> float | None:
    return torch.cuda.max_memory_allocated(ctx.device) / 2**30 if ctx.cuda else None


@contextlib.contextmanager
def backend_flags(s: Setting):
    """cuDNN autotuning and TF32 matmuls for the setting, restored afterwards."""
    old_bench, old_prec = torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()
    torch.backends.cudnn.benchmark = s.cudnn_benchmark
    torch.set_float32_matmul_precision("high" if s.tf32 else "highest")
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old_bench
        torch.set_float32_matmul_precision(old_prec)


def build_model(ctx: Ctx, s: Setting) -> SupConModel:
    """Random-init model of ctx.preset, built directly on the device (no host copy)."""
    cfg = ModelConfig(encoder=ctx.preset, attn_implementation=s.attn,
                      gradient_checkpointing=s.checkpointing, proj_dim=ctx.proj_dim)
    torch.manual_seed(0)
    with torch.device(ctx.device):
        model = SupConModel(cfg)
    return model.train()


def compile_model(model: SupConModel, mode: str, backend: str):
    """torch.compile in place -> the module to call. "regional": the conv feature encoder and
    each transformer layer (identical layers share one compiled graph, so compile time does
    not grow with depth); "model": the whole SupConModel; loss and optimizer stay eager."""
    if mode == "model":
        return torch.compile(model, backend=backend)
    if mode == "regional":
        model.encoder.feature_extractor.compile(backend=backend)
        for layer in model.encoder.encoder.layers:
            layer.compile(backend=backend)
    elif mode != "none":
        raise ValueError(f"compile mode must be none, regional or model, got {mode!r}")
    return model


def build_optimizer(model: SupConModel, fused: bool) -> torch.optim.Optimizer:
    """The trainer's AdamW over the encoder/head groups; fused=True uses the fused kernel."""
    groups = model.param_groups(ENCODER_LR, HEAD_LR, WEIGHT_DECAY, exclude_norm_bias=False)
    return torch.optim.AdamW(groups, fused=True) if fused else torch.optim.AdamW(groups)


def host_batch(ctx: Ctx, batch: int, crop_s: float, pad_share: float = 0.0) -> dict:
    """Balanced batch on the host (pinned on CUDA): wave (B, T) float32, mask (B, T) bool,
    label (B,) long alternating 0/1; the first round(pad_share * B) rows are half padding."""
    samples = ctx.samples(crop_s)
    gen = torch.Generator().manual_seed(batch * 7919 + samples)
    wave = 0.1 * torch.randn(batch, samples, generator=gen)
    mask = torch.ones(batch, samples, dtype=torch.bool)
    mask[: round(pad_share * batch), samples // 2 :] = False
    out = {"wave": wave * mask, "mask": mask, "label": torch.arange(batch) % 2}
    return {k: v.pin_memory() for k, v in out.items()} if ctx.cuda else out


def to_device(ctx: Ctx, host: dict, dtype: torch.dtype = torch.float32) -> tuple:
    wave = host["wave"].to(ctx.device, dtype, non_blocking=True)
    return wave, host["mask"].to(ctx.device, non_blocking=True), host["label"].to(ctx.device)


def make_step(ctx: Ctx, model, optimizer, host: dict, precision: str,
              queue: EmbeddingQueue | None = None) -> Callable[[], float]:
    """One training step on the fixed host batch -> loss (float)."""
    bf16 = precision == "bf16"

    def step() -> float:
        wave, mask, labels = to_device(ctx, host)
        queue_z, queue_labels = queue.get() if queue is not None else (None, None)
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=bf16):
            z = model(wave, mask)  # (B, D) fp32
        loss = supcon_loss(z, labels, temperature=TEMPERATURE, queue_z=queue_z,
                           queue_labels=queue_labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if queue is not None:  # after backward: the views read above are no longer needed
            queue.enqueue(all_gather_no_grad(z.detach()), all_gather_no_grad(labels))
        return loss.item()

    return step


def time_steps(ctx: Ctx, step: Callable[[], float], box: float | None = None) -> dict:
    """Warm-up steps, then timed steps until min_steps and min_time (or the box/deadline).

    Returns per-step seconds (median, mean, min, max, n) and the warm-up step times."""
    t = ctx.timing
    warm = []
    for _ in range(t.warmup):
        start = time.perf_counter()
        step()
        ctx.sync()
        warm.append(time.perf_counter() - start)
    end = min(time.monotonic() + (t.setting_box if box is None else box), ctx.deadline)
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < t.max_steps:
        start = time.perf_counter()
        loss = step()
        ctx.sync()
        times.append(time.perf_counter() - start)
        if not math.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss} in a timed step")
        enough = time.perf_counter() - began >= t.min_time or time.monotonic() >= end
        if len(times) >= t.min_steps and enough:
            break
    return {"step_s": summarise(times), "warmup_s": [round(w, 4) for w in warm]}


def summarise(times: list[float]) -> dict:
    return {"median": statistics.median(times), "mean": statistics.fmean(times),
            "min": min(times), "max": max(times), "n": len(times)}


def result_row(ctx: Ctx, s: Setting, timing: dict, config, **extra) -> dict:
    """Setting + timing -> samples/s, achieved TFLOP/s, MFU (vs ctx.peak_flops), memory."""
    fl = ctx.flops(s.crop_s, config)
    rate = s.batch / timing["step_s"]["median"]
    achieved = 3 * fl["total"] * rate
    return {"setting": asdict(s), "samples_per_s": rate, **timing,
            "train_flops_per_sample": 3 * fl["total"], "achieved_tflops": achieved / 1e12,
            "mfu": achieved / ctx.peak_flops if ctx.peak_flops else None,
            "peak_mem_gib": peak_memory_gib(ctx), **extra}


Builder = Callable[[Ctx, Setting], tuple[Callable[[], float], object]]


def plain_builder(ctx: Ctx, s: Setting) -> tuple[Callable[[], float], object]:
    """Model + AdamW (+ torch.compile) for `s` -> (step, encoder config)."""
    model = build_model(ctx, s)
    optimizer = build_optimizer(model, s.fused_adam)
    runner = compile_model(model, s.compile, s.compile_backend)
    host = host_batch(ctx, s.batch, s.crop_s, s.pad_share)
    return make_step(ctx, runner, optimizer, host, s.precision), model.encoder.config


def measure_setting(ctx: Ctx, s: Setting, box: float | None = None,
                    builder: Builder = plain_builder) -> dict:
    """Build and time `s`; on out-of-memory retry at half the batch (down to 2), recording
    the batches that did not fit in "oom_at"."""
    ooms: list[int] = []
    while True:
        free_memory(ctx)
        try:
            return _build_and_time(ctx, s, box, builder) | {"oom_at": ooms}
        except torch.OutOfMemoryError:
            if s.batch <= 2:
                raise
            ooms.append(s.batch)
        s = replace(s, batch=s.batch // 2)  # outside `except`: the failed frame is gone


def _build_and_time(ctx: Ctx, s: Setting, box: float | None, builder: Builder) -> dict:
    # A function of its own so that the model dies with its frame after an OOM.
    with backend_flags(s):
        start = time.perf_counter()
        step, config = builder(ctx, s)
        build_s = time.perf_counter() - start
        timing = time_steps(ctx, step, box)
    return result_row(ctx, s, timing, config, build_s=build_s)


def largest_fitting(probe: Callable[[int], bool], *, start: int, cap: int, deadline: float,
                    quantum: int = 2) -> dict:
    """Largest batch (a multiple of quantum, <= cap) for which probe(batch) is True (fits).

    Doubles from start until a probe fails (out of memory) or cap, then bisects between the
    last fit and the first failure; stops early at the deadline (time.monotonic())."""
    if start < quantum or start % quantum or cap < start:
        raise ValueError(f"need quantum <= start <= cap, start a multiple of quantum; got "
                         f"start={start} cap={cap} quantum={quantum}")
    lo, hi, probes = 0, None, []  # lo: largest fit so far (0: none); hi: smallest failure

    def attempt(b: int) -> bool:
        began = time.perf_counter()
        fits = bool(probe(b))
        probes.append({"batch": b, "fits": fits, "s": round(time.perf_counter() - began, 3)})
        return fits

    b = start
    while time.monotonic() < deadline:
        if not attempt(b):
            hi = b
            break
        lo = b
        if b >= cap:
            break
        b = min(cap, 2 * b)
    while hi is not None and hi - lo > quantum and time.monotonic() < deadline:
        mid = (lo + hi) // 2 // quantum * quantum
        if mid <= lo:
            break
        lo, hi = (mid, hi) if attempt(mid) else (lo, mid)
    return {"largest": lo or None, "smallest_oom": hi, "capped": hi is None and lo == cap,
            "exact": hi is not None and hi - lo <= quantum, "cap": cap, "probes": probes,
            "timed_out": time.monotonic() >= deadline}
