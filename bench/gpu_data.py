"""Scoring throughput and data-feeding sections of bench/gpu.py.

eval: bf16 inference of the Stage 1 model (what scoring runs per trial) over a small batch
sweep, host-to-device copy included.
rawboost: batched RawBoost on the device vs in one CPU worker (one thread, as DataLoader
workers run), the per-worker decode rate of the pipeline's own crop function on in-memory
FLAC bytes, the recommended codec mix (sccl/configs/codec_augmentation.yaml) in one worker,
and from these how many CPU workers keep the device fed."""

from __future__ import annotations

import contextlib
import io
import math
import time

import numpy as np
import torch

from bench.gpu_step import Ctx, Setting, build_model, free_memory, host_batch, summarise, to_device
from bench.gpu_train import best_row, rate
from sccl.rawboost import RawBoost, RawBoostConfig

TRIALS = 900_000  # about the four study eval sets together (issue 6)


def section_eval(ctx: Ctx, args, done: dict) -> dict:
    """Utterances/s of bf16 scoring at each crop over the batch sweep; stops a crop's sweep at
    the first out-of-memory."""
    model = build_model(ctx, Setting("eval", args.crops[0], 1)).eval()
    rows, best = [], {}
    for crop in args.crops:
        for b in args.eval_batches:
            if ctx.remaining() < 2:
                rows.append({"crop_s": crop, "batch": b, "status": "skipped: time budget"})
                continue
            row = _score_rate(ctx, model, crop, b)
            rows.append(row)
            if row["status"] != "ok":
                break
            if row["utt_per_s"] > best.get(str(crop), {}).get("utt_per_s", 0):
                best[str(crop)] = {"batch": b, "utt_per_s": row["utt_per_s"],
                                   "minutes_for_900k_trials": TRIALS / row["utt_per_s"] / 60}
    return {"results": rows, "best": best, "precision": "bf16 autocast, inference_mode",
            "note": "model forward to z (B, 256) and copy to host; the Stage 2 linear layer "
                    "(256 -> 1) and decoding are not included"}


def _score_rate(ctx: Ctx, model, crop: float, batch: int) -> dict:
    free_memory(ctx)
    host = host_batch(ctx, batch, crop)

    def once() -> None:
        wave, mask, _ = to_device(ctx, host)
        with torch.inference_mode(), torch.autocast(ctx.device.type, dtype=torch.bfloat16):
            model(wave, mask).cpu()  # scores go to the host: synchronises

    try:
        for _ in range(max(1, ctx.timing.warmup - 1)):
            once()
        times, end = [], time.monotonic() + min(ctx.timing.setting_box, 5.0)
        while len(times) < ctx.timing.max_steps:
            start = time.perf_counter()
            once()
            times.append(time.perf_counter() - start)
            if len(times) >= ctx.timing.min_steps and (
                    sum(times) >= ctx.timing.min_time / 2 or time.monotonic() > end):
                break
    except torch.OutOfMemoryError:
        return {"crop_s": crop, "batch": batch, "status": "out of memory"}
    except RuntimeError as err:  # e.g. a cuDNN size limit at the largest batches
        return {"crop_s": crop, "batch": batch, "status": f"error: {err}"[:300]}
    step = summarise(times)
    return {"crop_s": crop, "batch": batch, "status": "ok", "utt_per_s": batch / step["median"],
            "batch_s": step, "peak_mem_gib": (torch.cuda.max_memory_allocated(ctx.device) / 2**30
                                              if ctx.cuda else None)}


@contextlib.contextmanager
def one_thread():
    """torch on one thread, as in a DataLoader worker."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def flac_bytes(seconds: float, sample_rate: int = 16000, seed: int = 0) -> bytes:
    """A speech-like test file: noise under a syllable-rate envelope, 16-bit FLAC."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t) ** 2
    x = (0.2 * envelope * rng.standard_normal(n) + 0.1 * np.sin(2 * np.pi * 150 * t)) * 0.8
    buf = io.BytesIO()
    sf.write(buf, x.astype(np.float32), sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return summarise(times)["median"]


def section_rawboost(ctx: Ctx, args, done: dict) -> dict:
    """Per crop: RawBoost samples/s on the device and in one CPU worker, decode seconds per
    sample, and the workers needed to feed the fast training step with and without it."""
    rows = []
    for crop in args.crops:
        row = {"crop_s": crop, **_device_rawboost(ctx, crop, args.batch)}
        try:
            row.update(_cpu_worker(ctx, crop))
        except ImportError as err:  # soundfile missing (not carried): no decode rate
            row["cpu_worker"] = f"skipped: {err}"
        else:
            row.update(workers_needed(rate(best_row(done, crop)), row))
        rows.append(row)
    return {"results": rows, "rawboost": "study defaults (p = 0.7: LnL, then SSI p 0.5, ISD "
            "p 0.5)", "note": "one worker = one process on one core of this host; batch "
            "collation, IPC and the tar reading are not included; the test files are crop + 2 s "
            "long (a crop reads only its window)"}


def _device_rawboost(ctx: Ctx, crop: float, batch: int) -> dict:
    boost = RawBoost(RawBoostConfig())
    host = host_batch(ctx, batch, crop)
    wave, mask, _ = to_device(ctx, host)
    gen = torch.Generator(device=ctx.device).manual_seed(0)

    def once() -> None:
        boost.apply(wave, mask, gen)
        ctx.sync()

    once()  # warm-up: FFT plans, allocations
    reps = max(3, ctx.timing.min_steps)
    return {"device": str(ctx.device), "batch": batch,
            "device_samples_per_s": batch / _median_time(once, reps)}


def _cpu_worker(ctx: Ctx, crop: float) -> dict:
    from sccl.audio import random_crop

    data = flac_bytes(crop + 2.0, ctx.sample_rate)
    length = ctx.samples(crop)
    boost, gen = RawBoost(RawBoostConfig()), torch.Generator().manual_seed(0)
    rows = 2 if ctx.timing.min_steps <= 2 else 8
    with one_thread():
        us = iter(np.random.default_rng(0).random(10_000))
        decode_s = _median_time(lambda: random_crop(data, sample_rate=ctx.sample_rate,
                                                    length=length, u=float(next(us))), 10)
        wave = torch.stack([random_crop(data, sample_rate=ctx.sample_rate, length=length,
                                        u=float(next(us)))[0] for _ in range(rows)])
        mask = torch.ones_like(wave, dtype=torch.bool)
        boost_s = _median_time(lambda: boost.apply(wave, mask, gen), 3) / rows
        codec_s = _codec_mix_s(ctx, wave)
    return {"cpu_decode_s_per_sample": decode_s, "cpu_rawboost_s_per_sample": boost_s,
            "cpu_codec_mix_s_per_sample": codec_s,
            "cpu_worker_samples_per_s_decode": 1 / decode_s,
            "cpu_worker_samples_per_s_decode_rawboost": 1 / (decode_s + boost_s),
            "cpu_worker_samples_per_s_decode_rawboost_codecs": 1 / (decode_s + boost_s + codec_s)}


def _codec_mix_s(ctx: Ctx, wave: torch.Tensor) -> float:
    """Seconds per clip of the recommended codec mix in one worker: the mean over enough
    clips that the mix's draws (30 % of clips coded, Opus the dearest) average out."""
    from bench.bench_codec import recommended_mix
    from sccl import codec_aug

    cfg = recommended_mix()
    clips = wave.repeat(32 // len(wave) + 1, 1)[:32]
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(4):  # 128 draws: about 13 MP3 and 6 Opus clips expected
        codec_aug.augment(cfg, clips.clone(), [clips.shape[1]] * len(clips), ctx.sample_rate, rng)
    return (time.perf_counter() - start) / (4 * len(clips))


def workers_needed(train_rate: float | None, row: dict) -> dict:
    """CPU workers to feed `train_rate` samples/s: RawBoost in the workers, RawBoost on the
    device (which then spends 1/device_rate s per sample on it), or no RawBoost."""
    if not train_rate:
        return {"workers_note": "no training rate at this crop (section train did not run)"}
    decode, boost = row["cpu_decode_s_per_sample"], row["cpu_rawboost_s_per_sample"]
    fed = 1 / (1 / train_rate + 1 / row["device_samples_per_s"])
    return {"train_samples_per_s": train_rate,
            "workers_rawboost_in_workers": math.ceil(train_rate * (decode + boost)),
            "workers_rawboost_codecs_in_workers": math.ceil(
                train_rate * (decode + boost + row["cpu_codec_mix_s_per_sample"])),
            "workers_rawboost_on_device": math.ceil(fed * decode),
            "train_samples_per_s_with_device_rawboost": fed,
            "workers_no_rawboost": math.ceil(train_rate * decode)}
