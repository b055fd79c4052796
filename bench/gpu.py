"""Stage 1 on the accelerator: training MFU, naive vs fast, options, queue overhead, scoring
throughput, RawBoost placement and CPU workers, largest batch, a 1B encoder under ZeRO-3 and
FSDP2, ZeRO-2, torch.compile.

    bash bench/gpu.sh                               # the prepared GPU run (<= 8 min)
    python -m bench.gpu                             # same, without the package checks
    python -m bench.gpu --smoke --out /tmp/b        # CPU check of every code path, < 60 s
    python -m bench.gpu --sections train queue --crops 4 --batch 16

Sections, in priority order (each a function returning a JSON-able dict):
  train      fast (bf16 autocast, SDPA, fused AdamW) vs naive (fp32, eager attention, default
             AdamW) at every crop: samples/s, step time, MFU, peak memory; speed-up ratio
  sharded    the 1B preset (--big-preset) under no wrapper, ZeRO-3 and FSDP2, world size 1,
             with and without activation checkpointing: step time and peak memory
  queue      step time at |Q| = 0 / 8192 / 65536 (gather + enqueue included), interleaved;
             the queue's own cost timed in isolation
  eval       bf16 scoring throughput (utterances/s) over a batch sweep at every crop
  rawboost   batched RawBoost on the device vs one CPU worker; decode rate; workers needed
  options    eager attention, unfused AdamW, gradient checkpointing, cudnn.benchmark,
             padded rows, fp32 + TF32 — each alone against the fast setting
  max_batch  largest training batch that fits (doubling, then bisection on OOM)
  profile    torch.profiler: top ops / kernels of the fast step
  zero2      plain DDP vs DeepSpeed ZeRO-2, world size 1 (needs deepspeed)
  compile    torch.compile (regional by default) in a time-boxed child process

Run from the repository root. Sections run in that order under one global deadline
(--budget); each also has its own time box (--box NAME=S); a section that does not fit is
recorded as "skipped: time budget", one that fails as "error: ...", and the rest go on.
The JSON report (every setting, versions, device, timings) and a Markdown table judged
against issue 6's goals are rewritten atomically after each section, under --out
(default: $OUT, else bench/results/). FLOPs: bench/flops.py. MFU uses the device's dense
bf16 peak from PEAK_BF16_TFLOPS (CPU: none, MFU null).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch

from bench import gpu_data, gpu_engines, gpu_train
from bench.gpu_report import judge, markdown
from bench.gpu_step import Ctx, Timing, free_memory
from sccl.fileio import atomic_write_json, atomic_write_text

# Datasheet dense (no sparsity) bf16 tensor-core peaks, TFLOP/s; first substring match wins.
PEAK_BF16_TFLOPS = (("H200", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0),
                    ("H100", 989.0), ("A100", 312.0))
SECTIONS = {  # priority order: what matters most runs first
    "train": gpu_train.section_train, "sharded": gpu_engines.section_sharded,
    "queue": gpu_train.section_queue,
    "eval": gpu_data.section_eval, "rawboost": gpu_data.section_rawboost,
    "options": gpu_train.section_options, "max_batch": gpu_train.section_max_batch,
    "profile": gpu_train.section_profile, "zero2": gpu_engines.section_zero2,
    "compile": gpu_engines.section_compile,
}
BOXES = {"train": 120, "queue": 40, "eval": 40, "rawboost": 40, "options": 90,
         "max_batch": 50, "profile": 20, "zero2": 50, "sharded": 90, "compile": 170}
GPU_DEFAULTS = dict(
    preset="xlsr-300m-random", crops=[4.0, 10.0], batch=32, budget=420.0,
    big_preset="xlsr-1b", big_batch=16,
    queue_sizes=[0, 8192, 65536], eval_batches=[16, 32, 64, 128, 256], max_batch_cap=2048,
    compile_backend="inductor", compile_min_s=60.0, profile_steps=3,
    warmup=3, min_steps=5, max_steps=40, min_time=2.0, setting_box=20.0)
SMOKE = dict(  # the compile check uses dynamo alone ("eager"): inductor takes minutes on CPU
    preset="tiny", crops=[0.5, 1.0], batch=4, budget=40.0, big_preset="tiny", big_batch=4,
    queue_sizes=[0, 64, 256], eval_batches=[2, 4], max_batch_cap=8,
    compile_backend="eager", compile_min_s=5.0, profile_steps=1,
    warmup=1, min_steps=2, max_steps=2, min_time=0.0, setting_box=5.0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny preset, short crops, 2 steps per "
                   "setting: checks every code path on CPU in < 60 s (values below override)")
    p.add_argument("--preset", help="model preset (default xlsr-300m-random; smoke: tiny)")
    p.add_argument("--crops", type=float, nargs="+", help="crop seconds (default 4 10)")
    p.add_argument("--batch", type=int, help="training batch, balanced (default 32)")
    p.add_argument("--budget", type=float, help="global time budget, seconds (default 420)")
    p.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    p.add_argument("--box", action="append", default=[], metavar="NAME=S",
                   help="time box of one section, seconds (repeatable)")
    p.add_argument("--queue-sizes", type=int, nargs="+", help="default 0 8192 65536")
    p.add_argument("--eval-batches", type=int, nargs="+", help="default 16 32 64 128 256")
    p.add_argument("--max-batch-cap", type=int, help="largest batch probed (default 2048)")
    p.add_argument("--compile-backend", help="torch.compile backend (default inductor)")
    p.add_argument("--compile-mode", choices=["regional", "model"], default="regional",
                   help="compile each encoder layer (default) or the whole model")
    p.add_argument("--compile-min-s", type=float, help="seconds compile needs to start (60)")
    p.add_argument("--profile-steps", type=int, help="steps under torch.profiler (default 3)")
    p.add_argument("--deepspeed-cpu", action="store_true",
                   help="run zero2 and sharded's ZeRO-3 on CPU too")
    p.add_argument("--big-preset", help="encoder of section sharded (default xlsr-1b)")
    p.add_argument("--big-batch", type=int, help="batch of section sharded (default 16)")
    for name, kind in (("warmup", int), ("min-steps", int), ("max-steps", int),
                       ("min-time", float), ("setting-box", float)):
        p.add_argument(f"--{name}", type=kind, help="step timing policy (see gpu_step.Timing)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--peak-tflops", type=float, help="override the device's bf16 peak")
    p.add_argument("--out", help="report directory (default $OUT, else bench/results)")
    p.add_argument("--note", default="", help="free text stored in the report")
    p.add_argument("--compile-worker", metavar="FILE", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for key, value in (SMOKE if args.smoke else GPU_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return _check(p, args)


def _check(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    if min(args.crops) <= 0 or args.batch < 1 or args.budget <= 0:
        p.error("--crops, --batch and --budget must be positive")
    if min(args.queue_sizes) < 0 or min(args.eval_batches) < 1 or args.max_batch_cap < 2:
        p.error("--queue-sizes >= 0, --eval-batches >= 1, --max-batch-cap >= 2")
    if 0 not in args.queue_sizes:  # the reference for the overhead
        args.queue_sizes = [0, *args.queue_sizes]
    args.boxes = dict(BOXES)
    for item in args.box:
        name, _, seconds = item.partition("=")
        if name not in BOXES or not seconds.replace(".", "", 1).isdigit():
            p.error(f"--box {item!r}: expected NAME=SECONDS with NAME in {sorted(BOXES)}")
        args.boxes[name] = float(seconds)
    args.timing_argv = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
                        ("warmup", "min_steps", "max_steps", "min_time", "setting_box")]
    return args


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
            raise SystemExit(2)
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def peak_for_name(name: str) -> tuple[float | None, str]:
    """(dense bf16 peak TFLOP/s or None, where it came from) for a CUDA device name."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops, f"datasheet dense bf16 for '{key}' (matched '{name}')"
    return None, f"'{name}' is not in PEAK_BF16_TFLOPS: pass --peak-tflops"


def peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "no peak for a CPU: MFU not computed"
    return peak_for_name(torch.cuda.get_device_name(device))


def matmul_tflops(device: torch.device) -> float:
    """Measured bf16 8192^3 matmul rate: the ceiling these kernels can reach on this card."""
    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    torch.cuda.synchronize(device)
    return 10 * 2 * 8192**3 / (start.elapsed_time(end) / 1e3) / 1e12


def device_label(device: torch.device) -> tuple[str, str]:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return p.name, (f"{device} {p.name} (sm_{p.major}{p.minor}, {p.total_memory / 2**30:.1f} "
                        f"GiB, {p.multi_processor_count} SMs)")
    model = next((ln.split(":", 1)[1].strip() for ln in _cpuinfo() if ln.startswith("model name")),
                 platform.processor() or "unknown CPU")
    return "cpu", f"cpu: {os.cpu_count()} cores, {model}, {torch.get_num_threads()} torch threads"


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parents[1],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def build_meta(args: argparse.Namespace, ctx: Ctx, peak: tuple) -> dict:
    import transformers

    name, label = device_label(ctx.device)
    keep = ("preset", "big_preset", "big_batch", "crops", "batch", "budget", "sections", "boxes",
            "queue_sizes", "eval_batches", "max_batch_cap", "compile_backend", "compile_mode",
            "deepspeed_cpu", "smoke", "note")
    return {
        "device_type": ctx.device.type, "device_name": name, "device_label": label,
        "peak_tflops": peak[0], "peak_source": peak[1],
        "matmul_bf16_tflops_measured": matmul_tflops(ctx.device) if ctx.cuda else None,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "accelerate": _version("accelerate"), "deepspeed": _version("deepspeed"),
        "python": platform.python_version(), "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if ctx.cuda else None,
        "git_revision": _git_revision(), "argv": sys.argv[1:],
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "timing": vars(ctx.timing), "sample_rate": ctx.sample_rate, "proj_dim": ctx.proj_dim,
        "env": {k: os.environ.get(k) for k in ("PYTORCH_CUDA_ALLOC_CONF", "OMP_NUM_THREADS",
                                               "CUDA_VISIBLE_DEVICES")},
        "defaults": {"float32_matmul_precision": torch.get_float32_matmul_precision(),
                     "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                     "cudnn_benchmark": torch.backends.cudnn.benchmark},
        **{k: getattr(args, k) for k in keep},
    }


def run_sections(ctx: Ctx, args: argparse.Namespace, report: dict, out_dir: Path) -> None:
    min_start = 1.0 if args.smoke else 10.0
    for name in args.sections:
        began = time.monotonic()
        if ctx.remaining() < min_start:
            result = {"status": "skipped: time budget"}
        else:
            box = args.boxes[name]
            sub = replace(ctx, deadline=min(ctx.deadline, began + box))
            try:
                result = SECTIONS[name](sub, args, report["sections"])
                result.setdefault("status", "ok")
            except Exception as err:  # recorded; the remaining sections still run
                result = {"status": f"error: {type(err).__name__}: {err}"[:500],
                          "traceback": traceback.format_exc()[-3000:]}
            free_memory(ctx)
            result["box_s"] = box
        result["seconds"] = time.monotonic() - began
        report["sections"][name] = result
        write_report(report, out_dir)
        print(f"[bench.gpu] {name}: {result['status'][:100]} ({result['seconds']:.1f} s)",
              flush=True)


def write_report(report: dict, out_dir: Path) -> None:
    report["goals"] = judge(report)
    atomic_write_json(out_dir / "gpu_report.json", report)
    atomic_write_text(out_dir / "gpu_report.md", markdown(report) + "\n")


def make_ctx(args: argparse.Namespace, started: float) -> tuple[Ctx, tuple]:
    device = pick_device(args.device)
    timing = Timing(args.warmup, args.min_steps, args.max_steps, args.min_time, args.setting_box)
    peak = peak_tflops(device, args.peak_tflops)
    ctx = Ctx(device, args.preset, started + args.budget, timing,
              peak_flops=None if peak[0] is None else peak[0] * 1e12)
    return ctx, peak


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    args = parse_args(argv)
    torch.manual_seed(0)
    ctx, peak = make_ctx(args, started)
    # Everything imported so far lives to the end: out of the collector's sight, the
    # gc.collect() between settings (to free device memory) costs ms instead of ~0.5 s.
    gc.freeze()
    if args.compile_worker:
        gpu_engines.compile_worker(ctx, args, Path(args.compile_worker))
        return 0
    out_dir = Path(args.out or os.environ.get("OUT") or Path(__file__).parent / "results")
    report = {"meta": build_meta(args, ctx, peak), "sections": {}}
    print(f"[bench.gpu] {report['meta']['device_label']}; preset {args.preset}; budget "
          f"{args.budget:.0f} s; report -> {out_dir}", flush=True)
    run_sections(ctx, args, report, out_dir)
    report["meta"]["wall_s"] = time.monotonic() - started
    write_report(report, out_dir)
    print(markdown(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
