"""DeepSpeed ZeRO-2 vs plain DDP on one device, and torch.compile, for bench/gpu.py.

zero2: one process, world size 1. DeepSpeed's bf16 mode keeps bf16 weights and activations
with fp32 master weights inside the ZeRO optimizer (not autocast); the optimizer is torch's
AdamW handed to deepspeed.initialize (no JIT-built DeepSpeed op is needed on CUDA). The
forward also runs under bf16 autocast: without it SupConModel's fp32 hidden-state average
meets the bf16 head Linear and fails with a dtype error (as it would under Accelerate's
DeepSpeed bf16, which adds no autocast).
compile: run in a child process (`python -m bench.gpu --compile-worker FILE ...`) so that a
compilation running past its time box can be killed; compile time is reported apart from
the steady-state step time."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from bench.gpu_step import (
    TEMPERATURE,
    Ctx,
    Setting,
    build_model,
    build_optimizer,
    free_memory,
    host_batch,
    make_step,
    to_device,
)
from bench.gpu_train import best_row, guarded, rate
from sccl.losses import supcon_loss

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init_single_process(ctx: Ctx) -> None:
    """A world-1 process group through DeepSpeed (NCCL on CUDA, gloo on CPU)."""
    import deepspeed

    for key, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(_free_port())),
                       ("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(key, value)
    if ctx.cuda:
        torch.cuda.set_device(ctx.device)
    deepspeed.init_distributed(dist_backend="nccl" if ctx.cuda else "gloo",
                               auto_mpi_discovery=False, verbose=False)


def zero2_config(batch: int) -> dict:
    """launch/ds_zero2.json (what training runs with) with its "auto" values filled in as
    Accelerate would for one process: micro batch = batch, no accumulation, clip 5.0, bf16."""
    config = json.loads((REPO / "launch" / "ds_zero2.json").read_text())
    config.update(train_micro_batch_size_per_gpu=batch, train_batch_size=batch,
                  gradient_accumulation_steps=1, gradient_clipping=5.0)
    config["bf16"] = {"enabled": True}
    config["fp16"] = {"enabled": False}
    return config


def ddp_builder(ctx: Ctx, s: Setting):
    model = build_model(ctx, s)
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[ctx.device.index or 0] if ctx.cuda else None)
    step = make_step(ctx, ddp, build_optimizer(model, s.fused_adam),
                     host_batch(ctx, s.batch, s.crop_s), s.precision)
    return step, model.encoder.config


def zero2_builder(ctx: Ctx, s: Setting):
    import deepspeed

    model = build_model(ctx, s)
    optimizer = build_optimizer(model, fused=False)  # ZeRO steps one flat fp32 partition
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer,
                                      config=zero2_config(s.batch))
    host = host_batch(ctx, s.batch, s.crop_s)

    def step() -> float:
        wave, mask, labels = to_device(ctx, host, torch.bfloat16)
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16):  # see the module docstring
            z = engine(wave, mask)
        loss = supcon_loss(z, labels, temperature=TEMPERATURE)
        engine.backward(loss)
        engine.step()  # clips to 5.0 and zeroes the gradients
        return loss.item()

    return step, model.encoder.config


def section_zero2(ctx: Ctx, args, done: dict) -> dict:
    """Plain DDP (world 1) and DeepSpeed ZeRO-2 (world 1) at the first crop, vs "best"."""
    if not ctx.cuda and not args.deepspeed_cpu:
        return {"status": "skipped: DeepSpeed on CPU JIT-compiles its shared-memory comm op "
                          "(minutes on 2 cores); pass --deepspeed-cpu to run it anyway"}
    try:
        import deepspeed
    except Exception as err:  # ImportError, or a broken install raising anything else
        return {"status": f"skipped: deepspeed does not import ({type(err).__name__}: {err})"}
    _init_single_process(ctx)
    try:
        crop = args.crops[0]
        ref = best_row(done, crop)
        base = Setting("ddp", crop, args.batch)
        rows = [guarded(ctx, base, builder=ddp_builder),
                guarded(ctx, replace(base, name="zero2", fused_adam=False), builder=zero2_builder)]
        for row in rows:
            if rate(row) and rate(ref):
                row["speed_vs_best"] = rate(row) / rate(ref)
    finally:
        torch.distributed.destroy_process_group()
    return {"crop_s": crop, "deepspeed": deepspeed.__version__, "results": rows,
            "reference": "best (no DDP wrapper)", "zero2_config": zero2_config(args.batch)}


def section_compile(ctx: Ctx, args, done: dict) -> dict:
    """torch.compile of the model (fast setting, first crop) in a child process with a time
    box: compile seconds (first steps) and steady-state samples/s vs "best"."""
    box = ctx.remaining() - 2
    if box < args.compile_min_s:
        return {"status": f"skipped: time budget ({box:.0f} s left, {args.compile_min_s} s needed)"}
    free_memory(ctx)  # the child needs the device memory
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "compile.json"
        cmd = [sys.executable, "-m", "bench.gpu", "--compile-worker", str(out),
               "--preset", ctx.preset, "--crops", str(args.crops[0]), "--batch", str(args.batch),
               "--compile-backend", args.compile_backend, "--compile-mode", args.compile_mode,
               "--budget", str(int(box)),
               *args.timing_argv]
        began = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=box)
        except subprocess.TimeoutExpired as err:
            tail = (err.stdout or b"")[-1500:]
            return {"status": f"skipped: compile did not finish within {box:.0f} s",
                    "log_tail": tail.decode() if isinstance(tail, bytes) else tail}
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"compile worker exited {proc.returncode}: "
                               f"{(proc.stderr or proc.stdout)[-1500:]}")
        row = json.loads(out.read_text())
    warm = row.get("warmup_s") or [0.0]
    row["compile_s"] = sum(warm) - len(warm) * row["step_s"]["median"] if "step_s" in row else None
    row["worker_wall_s"] = time.monotonic() - began
    if rate(row) and rate(best_row(done, args.crops[0])):
        row["speed_vs_best"] = rate(row) / rate(best_row(done, args.crops[0]))
    return {"results": [row], "backend": args.compile_backend, "mode": args.compile_mode,
            "note": "compile_s = warm-up steps' time minus as many steady steps (first "
                    "forward + backward compilation and any recompilation)"}


def compile_worker(ctx: Ctx, args, out: Path) -> None:
    """Child side of section_compile: time the compiled fast setting, write its row."""
    ctx.timing.warmup = max(3, ctx.timing.warmup)
    s = Setting(f"compiled ({args.compile_mode})", args.crops[0], args.batch,
                compile=args.compile_mode, compile_backend=args.compile_backend)
    out.write_text(json.dumps(guarded(ctx, s)))
