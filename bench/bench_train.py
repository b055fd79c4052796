"""Stage 1 training throughput on CPU: samples/s of the tiny preset, queue off vs on.

    python bench/bench_train.py [--steps 60] [--batch-size 8] [--crop-seconds 1.0] \\
        [--queues 0,4096] [--threads 1] [--num-workers 1] [--work bench/results/train]

Builds the synthetic corpus (``--corpus default``: 200 bona fide + 600 spoof LA19-like train
clips) as shards once, cached under ``--work``, then runs ``python -m sccl.train_supcon``
(one process, fp32, no dev set) for ``--steps`` optimizer steps per queue size and reads
samples/s from its log.jsonl, leaving out the first log interval (start-up). Prints a
Markdown table. The queue fills by batch_size rows per step, so its fill at the end is
reported: a queue that is not full yet costs less than a full one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.corpus import la19_shards  # noqa: E402


def run_once(shards: dict, queue: int, args: argparse.Namespace, out: Path) -> dict:
    """Train ``args.steps`` steps with queue size ``queue``; return the measured figures."""
    cmd = [sys.executable, "-m", "sccl.train_supcon", "--run.dir", str(out),
           "--data.train_shards", str(shards["train"]), "--data.dev_shards", "",
           "--data.batch_size", str(args.batch_size), "--data.crop_seconds", str(args.crop_seconds),
           "--data.num_workers", str(args.num_workers), "--model.encoder", "tiny",
           "--data.rawboost", "false", "--data.train_crop", "random",
           "--loss.queue_size", str(queue), "--run.max_steps", str(args.steps),
           "--run.log_every", str(args.log_every), "--run.tensorboard", "false",
           "--run.progress", "false", "--run.mixed_precision", "no"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"training failed (queue {queue}):\n{proc.stderr[-3000:]}")
    lines = [json.loads(x) for x in (out / "stage1" / "log.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "event" not in x][1:]  # the first interval includes start-up
    if not steps:
        raise SystemExit("too few steps for a measurement: raise --steps or lower --log-every")
    samples = len(steps) * args.log_every * args.batch_size
    seconds = sum(args.log_every * args.batch_size / x["samples_per_s"] for x in steps)
    return {"queue": queue, "samples_per_s": samples / seconds,
            "step_ms": 1000 * seconds / (len(steps) * args.log_every),
            "fill": lines[-1]["queue_fill"], "loss": lines[-1]["loss"]}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    p.add_argument("--log-every", type=int, default=10, help="steps per measured interval")
    p.add_argument("--batch-size", type=int, default=8, help="global batch (half bona fide)")
    p.add_argument("--crop-seconds", type=float, default=1.0)
    p.add_argument("--queues", default="0,4096", help="comma-separated queue sizes")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the trainer")
    p.add_argument("--num-workers", type=int, default=1, help="data loader workers")
    p.add_argument("--corpus", choices=("default", "tiny"), default="default")
    p.add_argument("--work", default=str(REPO / "bench" / "results" / "train"),
                   help="cache for the corpus and shards")
    args = p.parse_args()
    shards = la19_shards(Path(args.work) / args.corpus, size=args.corpus, workers=2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for q in (int(x) for x in args.queues.split(",")):
            rows.append(run_once(shards, q, args, Path(tmp) / f"q{q}"))
    print(f"Stage 1 training, tiny preset, 1 process on CPU ({cpu_name()}, "
          f"{os.cpu_count()} cores visible, OMP_NUM_THREADS={args.threads}, "
          f"{args.num_workers} loader worker(s)); batch {args.batch_size}, "
          f"{args.crop_seconds:g} s crops, {args.steps} steps\n")
    print("| queue size | queue fill at end | samples/s | ms/step |")
    print("| ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['queue']} | {r['fill']} | {r['samples_per_s']:.1f} | {r['step_ms']:.0f} |")


if __name__ == "__main__":
    main()
