"""DeepSpeed ZeRO-2 vs plain DDP on one device, a bigger encoder under ZeRO-3 and FSDP2, and
torch.compile, for bench/gpu.py.

zero2: one process, world size 1. DeepSpeed's bf16 mode keeps bf16 weights and activations
with fp32 master weights inside the ZeRO optimizer (not autocast); the optimizer is torch's
AdamW handed to deepspeed.initialize (no JIT-built DeepSpeed op is needed on CUDA).
sharded: the 1B preset (--big-preset) at the first crop and --big-batch, world size 1: plain
(no wrapper), ZeRO-3 (launch/ds_zero3.json, what Stage 1 runs with under
SCCL_LAUNCH=deepspeed3) and FSDP2 (torch's fully_shard on every encoder layer and the root,
bf16 parameters, fp32 gradient reduction: what launch/fsdp.yaml asks Accelerate for), each with
and without activation checkpointing. One device shards nothing: the rows measure what the
wrappers cost and the peak memory of one GPU's share at world size 1 (the memory table in the
README computes the other world sizes). The
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
from dataclasses import asdict, replace
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
from bench.memory_table import preset_counts
from sccl.accel import zero_bucket_sizes
from sccl.losses import supcon_loss
from sccl.model import encoder_config

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init_single_process(ctx: Ctx, deepspeed_init: bool = True) -> None:
    """A world-1 process group (NCCL on CUDA, gloo on CPU), through DeepSpeed when it will
    be used (it then knows the group), else through torch."""
    os.environ["MASTER_PORT"] = str(_free_port())  # a fresh one for every section
    for key, value in (("MASTER_ADDR", "127.0.0.1"), ("RANK", "0"), ("LOCAL_RANK", "0"),
                       ("WORLD_SIZE", "1")):
        os.environ.setdefault(key, value)
    if ctx.cuda:
        torch.cuda.set_device(ctx.device)
    backend = "nccl" if ctx.cuda else "gloo"
    if not deepspeed_init:
        torch.distributed.init_process_group(backend)
        return
    import deepspeed

    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)


def zero2_config(batch: int, name: str = "ds_zero2.json", hidden_size: int = 1024) -> dict:
    """launch/<name> (what training runs with) with its "auto" values filled in as Stage 1
    does for one process: micro batch = batch, no accumulation, clip 5.0, bf16, and ZeRO's
    bucket sizes from the encoder width (sccl.accel.zero_bucket_sizes)."""
    config = json.loads((REPO / "launch" / name).read_text())
    zero = config.get("zero_optimization", {})
    for key, value in zero_bucket_sizes(hidden_size).items():
        if zero.get(key) == "auto":
            zero[key] = value
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
                                      config=zero2_config(s.batch, _DS_JSON[s.name.split()[0]],
                                                          model.encoder.config.hidden_size))
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


_DS_JSON = {"zero2": "ds_zero2.json", "zero3": "ds_zero3.json"}  # by the setting's first word


def fsdp2_builder(ctx: Ctx, s: Setting):
    """FSDP2 as Stage 1 runs it: every encoder layer and the whole model fully_shard-ed,
    bf16 parameters in compute, fp32 gradients reduced and stepped."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    model = build_model(ctx, s)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in model.encoder.encoder.layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    # DTensor parameters: torch's default (foreach) AdamW, as Accelerate builds it
    step = make_step(ctx, model, build_optimizer(model, fused=False),
                     host_batch(ctx, s.batch, s.crop_s), s.precision)
    return step, model.encoder.config


def section_sharded(ctx: Ctx, args, done: dict) -> dict:
    """The bigger encoder (--big-preset) at world size 1: plain, ZeRO-3 and FSDP2, with and
    without activation checkpointing: samples/s, step time, peak memory."""
    big = replace(ctx, preset=args.big_preset)
    crop = args.crops[0]
    try:
        import deepspeed
        ds = deepspeed.__version__ if ctx.cuda or args.deepspeed_cpu else None
        ds_note = None if ds else ("skipped: DeepSpeed on CPU JIT-compiles its shared-memory "
                                   "comm op (minutes on 2 cores); pass --deepspeed-cpu")
    except Exception as err:  # ImportError, or a broken install raising anything else
        ds, ds_note = None, f"skipped: deepspeed does not import ({type(err).__name__}: {err})"
    _init_single_process(big, deepspeed_init=ds is not None)
    rows = []
    try:
        for ckpt in (False, True):
            tag = " + act. ckpt" if ckpt else ""
            base = Setting("plain" + tag, crop, args.big_batch, checkpointing=ckpt)
            rows.append(guarded(big, base))
            rows.append(guarded(big, replace(base, name="fsdp2" + tag, fused_adam=False),
                                builder=fsdp2_builder))
            zero3 = replace(base, name="zero3" + tag, fused_adam=False)
            rows.append(guarded(big, zero3, builder=zero2_builder) if ds else
                        {"setting": asdict(zero3), "status": ds_note})
    finally:
        torch.distributed.destroy_process_group()
    for plain, *wrapped in (rows[:3], rows[3:]):
        for row in wrapped:
            if rate(row) and rate(plain):
                row["speed_vs_plain"] = rate(row) / rate(plain)
    return {"preset": args.big_preset, "crop_s": crop, "batch": args.big_batch,
            "parameters": preset_counts(args.big_preset).total, "deepspeed": ds, "results": rows,
            "zero3_config": zero2_config(args.big_batch, "ds_zero3.json",
                                         encoder_config(args.big_preset).hidden_size) if ds else None}


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
