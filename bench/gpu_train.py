"""Training sections of bench/gpu.py: fast vs naive step, options, queue overhead, largest
batch, profile. Each section takes (ctx, args, done) — done = the sections already run, for
reference figures — and returns a JSON-able dict; gpu.py time-boxes and records it."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, replace

import torch
import torch.nn.functional as F

from bench.gpu_step import (
    Ctx,
    Setting,
    build_model,
    build_optimizer,
    free_memory,
    host_batch,
    largest_fitting,
    make_step,
    measure_setting,
    naive,
    peak_memory_gib,
    summarise,
)
from sccl.dist import all_gather_no_grad
from sccl.losses import supcon_loss
from sccl.memory import EmbeddingQueue

# Seconds a setting needs to be worth starting; below this it is "skipped: time budget".
SETTING_MIN_LEFT = 3.0

OPTIONS = (  # (name, Setting changes against the fast setting); order = priority
    ("eager attention", {"attn": "eager"}),
    ("AdamW unfused (foreach)", {"fused_adam": False}),
    ("gradient checkpointing", {"checkpointing": True}),
    ("cudnn.benchmark", {"cudnn_benchmark": True}),
    ("half the rows 50 % padding", {"pad_share": 0.5}),
    ("fp32 + TF32 matmuls (no autocast)", {"precision": "fp32", "tf32": True}),
)
NOT_APPLICABLE = {
    "channels_last": "applies to 4-D (N, C, H, W) tensors; the feature encoder is Conv1d on "
                     "(B, C, T), whose memory layout is already the one cuDNN wants",
    "fused conv": "no fusion switch for Conv1d + LayerNorm + GELU in eager PyTorch; "
                  "torch.compile (section compile) is the way to fuse it, and "
                  "cudnn.benchmark (options) picks the fastest conv algorithm",
}


def guarded(ctx: Ctx, s: Setting, **kw) -> dict:
    """measure_setting, or a row saying why it did not run (budget, error)."""
    if ctx.remaining() < SETTING_MIN_LEFT:
        return {"setting": asdict(s), "status": "skipped: time budget"}
    try:
        return measure_setting(ctx, s, **kw) | {"status": "ok"}
    except Exception as err:  # one failed setting must not lose the rest of a one-shot run
        return {"setting": asdict(s), "status": f"error: {type(err).__name__}: {err}"[:500]}
    finally:
        free_memory(ctx)


def rate(row: dict | None) -> float | None:
    return row.get("samples_per_s") if row and row.get("status") == "ok" else None


def best_row(done: dict, crop: float) -> dict | None:
    rows = done.get("train", {}).get("results", [])
    return next((r for r in rows if r["setting"]["name"] == "best"
                 and r["setting"]["crop_s"] == crop and r.get("status") == "ok"), None)


def section_train(ctx: Ctx, args, done: dict) -> dict:
    """Fast setting (bf16 autocast, SDPA, fused AdamW) and naive setting at every crop."""
    rows, speedup = [], {}
    for crop in args.crops:
        best = guarded(ctx, Setting("best", crop, args.batch))
        slow = guarded(ctx, naive("naive", crop, args.batch))
        rows += [best, slow]
        if rate(best) and rate(slow):
            speedup[str(crop)] = rate(best) / rate(slow)
    return {"results": rows, "speedup_vs_naive": speedup,
            "note": "speed-up = samples/s ratio (the batches can differ after an OOM retry)"}


def section_options(ctx: Ctx, args, done: dict) -> dict:
    """Each option changed alone against the fast setting at the first crop."""
    crop = args.crops[0]
    ref = best_row(done, crop)
    rows = []
    for name, change in OPTIONS:
        row = guarded(ctx, replace(Setting(name, crop, args.batch), **change))
        if rate(row) and rate(ref):
            row["speed_vs_best"] = rate(row) / rate(ref)
            if ref.get("peak_mem_gib") is not None:
                row["mem_vs_best_gib"] = row["peak_mem_gib"] - ref["peak_mem_gib"]
        rows.append(row)
    return {"crop_s": crop, "reference": "best", "results": rows, "not_applicable": NOT_APPLICABLE}


def filled_queue(ctx: Ctx, size: int) -> EmbeddingQueue:
    """A full queue of random unit vectors and binary labels (the steady state)."""
    queue = EmbeddingQueue(size, ctx.proj_dim, device=ctx.device)
    z = F.normalize(torch.randn(size, ctx.proj_dim, device=ctx.device), dim=-1)
    queue.enqueue(z, torch.randint(0, 2, (size,), device=ctx.device))
    return queue


def section_queue(ctx: Ctx, args, done: dict) -> dict:
    """Step time with |Q| = each size (0 = no queue, no gather), one model, interleaved
    rounds so drift hits every size alike; plus the queue's own cost timed in isolation."""
    crop, s = args.crops[0], Setting("best", args.crops[0], args.batch)
    model = build_model(ctx, s)
    optimizer = build_optimizer(model, s.fused_adam)
    host = host_batch(ctx, s.batch, crop)
    steps = {q: make_step(ctx, model, optimizer, host, s.precision,
                          filled_queue(ctx, q) if q else None) for q in args.queue_sizes}
    for step in steps.values():
        for _ in range(ctx.timing.warmup):
            step()
    per_size = max(ctx.timing.min_steps, min(20, ctx.timing.max_steps))
    rounds = min(4, per_size)
    times: dict[int, list[float]] = {q: [] for q in steps}
    for _ in range(rounds):
        for q, step in steps.items():
            for _ in range(math.ceil(per_size / rounds)):
                ctx.sync()
                start = time.perf_counter()
                step()
                ctx.sync()
                times[q].append(time.perf_counter() - start)
        if ctx.remaining() < 0:
            break
    del steps, model, optimizer
    free_memory(ctx)
    return _queue_summary(ctx, args, times, isolated_queue_cost(ctx, args.queue_sizes, s.batch))


def _queue_summary(ctx: Ctx, args, times: dict, isolated: dict) -> dict:
    base = summarise(times[0])["median"] if 0 in times else None
    rows = []
    for q, ts in times.items():
        step = summarise(ts)
        row = {"queue_size": q, "step_s": step, "isolated_ms": isolated[q] * 1e3}
        if base:
            row["step_overhead_pct"] = 100 * (step["median"] / base - 1)
            row["isolated_overhead_pct"] = 100 * (isolated[q] - isolated[0]) / base
        rows.append(row)
    return {"crop_s": args.crops[0], "batch": args.batch, "results": rows,
            "note": "step_overhead_pct: whole-step medians (noisy at the 1 % level); "
                    "isolated_overhead_pct: extra loss fwd+bwd + all_gather_no_grad + enqueue "
                    "time over the |Q| = 0 step time (the goal is judged on this one)"}


def isolated_queue_cost(ctx: Ctx, sizes, batch: int) -> dict[int, float]:
    """Median seconds of SupCon fwd+bwd (+ gather + enqueue when |Q| > 0) on a (B, D) leaf."""
    z0 = F.normalize(torch.randn(batch, ctx.proj_dim, device=ctx.device), dim=-1)
    labels = torch.arange(batch, device=ctx.device) % 2
    out = {}
    for q in sizes:
        queue = filled_queue(ctx, q) if q else None
        times = []
        for k in range(5 + max(10, 5 * ctx.timing.min_steps)):
            ctx.sync()
            start = time.perf_counter()
            z = z0.clone().requires_grad_()
            qz, ql = queue.get() if queue is not None else (None, None)
            supcon_loss(z, labels, temperature=0.3, queue_z=qz, queue_labels=ql).backward()
            if queue is not None:
                queue.enqueue(all_gather_no_grad(z.detach()), all_gather_no_grad(labels))
            ctx.sync()
            if k >= 5:  # warm-up excluded
                times.append(time.perf_counter() - start)
        out[q] = summarise(times)["median"]
    return out


def section_max_batch(ctx: Ctx, args, done: dict) -> dict:
    """Largest batch whose training step fits (fast setting), by doubling then bisection;
    each crop gets half of what the section has left."""
    out = {}
    for i, crop in enumerate(args.crops):
        share = ctx.remaining() / (len(args.crops) - i)
        out[str(crop)] = _largest(ctx, args, crop, time.monotonic() + share)
    return {"results": out, "cap": args.max_batch_cap}


def _largest(ctx: Ctx, args, crop: float, deadline: float) -> dict:
    s = Setting("best", crop, args.batch)
    model = build_model(ctx, s)
    optimizer = build_optimizer(model, s.fused_adam)
    peaks: dict[int, float | None] = {}
    errors: dict[int, str] = {}

    def probe(b: int) -> bool:
        free_memory(ctx)
        try:
            make_step(ctx, model, optimizer, host_batch(ctx, b, crop), s.precision)()
            fits = True
        except RuntimeError as err:  # OOM, or a library's own limit (cuBLAS/cuDNN sizes)
            fits = False
            if not isinstance(err, torch.OutOfMemoryError):
                errors[b] = f"{type(err).__name__}: {err}"[:300]
        optimizer.zero_grad(set_to_none=True)  # gradients left by a failed backward
        peaks[b] = peak_memory_gib(ctx)
        return fits

    start = max(2, args.batch // 2 * 2)
    found = largest_fitting(probe, start=start, cap=max(start, args.max_batch_cap),
                            deadline=min(deadline, ctx.deadline))
    found["peak_mem_gib_at_largest"] = peaks.get(found["largest"])
    found["non_oom_failures"] = errors  # batches that failed for another reason than memory
    return found


def section_profile(ctx: Ctx, args, done: dict) -> dict:
    """torch.profiler over a few fast-setting steps at the first crop: where the time goes."""
    s = Setting("best", args.crops[0], args.batch)
    model = build_model(ctx, s)
    step = make_step(ctx, model, build_optimizer(model, s.fused_adam),
                     host_batch(ctx, s.batch, s.crop_s), s.precision)
    for _ in range(max(1, ctx.timing.warmup)):
        step()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if ctx.cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    n = args.profile_steps
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(n):
            step()
        ctx.sync()
    return {"crop_s": s.crop_s, "batch": s.batch, "steps": n, **_profile_tables(ctx, prof, n)}


def _profile_tables(ctx: Ctx, prof, n: int) -> dict:
    """Top ops (and, on CUDA, top kernels) by self time per step, with shares of the total.
    On CUDA the total is the kernels' time; an op's self device time is that of the kernels
    it launched itself, so ops and kernels are two views of the same time."""
    from torch.autograd import DeviceType

    events = list(prof.key_averages())
    attr = "self_device_time_total" if ctx.cuda else "self_cpu_time_total"
    ops = [e for e in events if e.device_type == DeviceType.CPU and getattr(e, attr) > 0]
    kernels = [e for e in events if e.device_type != DeviceType.CPU and getattr(e, attr) > 0]
    total = sum(getattr(e, attr) for e in (kernels if ctx.cuda else ops)) or 1.0

    def top(items) -> list[dict]:
        items = sorted(items, key=lambda e: getattr(e, attr), reverse=True)[:15]
        return [{"name": e.key[:120], "ms_per_step": getattr(e, attr) / 1e3 / n,
                 "share": getattr(e, attr) / total, "calls_per_step": e.count / n} for e in items]

    return {"time": attr, "total_ms_per_step": total / 1e3 / n, "top": top(ops),
            "top_kernels": top(kernels)}
