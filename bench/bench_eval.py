"""Evaluation benchmarks (a benchmark, not a test): EER cost, and scoring throughput.

    python bench/bench_eval.py                         # 1 M scores; tiny preset, 4 s clips
    python bench/bench_eval.py --scores 5000000 --clips 256 --seconds 10 --threads 2

1. ``sccl.metrics.compute_eer`` on ``--scores`` scores (10 % bona fide, as LA19 eval), the
   best of ``--repeats`` runs; plus the per-set bootstrap CI (``bootstrap_eer_ci``) and
   ``sccl.aggregate.bootstrap_cis`` (per-set CIs + the joint pooled/mean bootstrap) on a
   4-set split of the same scores; and ``sccl.dcf``'s min t-DCF (revised and legacy; ASV
   scores 10 % of --scores), min DCF, act DCF and Cllr on the same scores.
2. Scoring throughput of the full detector (``SpoofDetector``: tiny encoder + head +
   classifier, random weights) on CPU: utterances/s and real-time factor for the first-N-s
   crop and for windows (N s, hop N/2) over 2N-s clips.
Prints a Markdown table; ``--json FILE`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_eer(n: int, repeats: int, n_boot: int) -> dict:
    from sccl.aggregate import Trials, bootstrap_cis
    from sccl.metrics import bootstrap_eer_ci, compute_eer

    rng = np.random.default_rng(0)
    n_bona = n // 10
    bona, spoof = rng.normal(2, 1, n_bona), rng.normal(0, 1, n - n_bona)
    out = {"eer_s": best_of(lambda: compute_eer(bona, spoof), repeats)}
    out["bootstrap_per_set_s"] = best_of(lambda: bootstrap_eer_ci(bona, spoof, n=n_boot), 1)
    labels = np.r_[np.ones(n_bona, bool), np.zeros(n - n_bona, bool)]
    scores = np.r_[bona, spoof]
    parts = np.array_split(rng.permutation(n), 4)
    sets = [Trials(f"s{i}", [""] * len(p), scores[p], labels[p], np.full(len(p), "-", object))
            for i, p in enumerate(parts)]
    out["bootstrap_joint_s"] = best_of(lambda: bootstrap_cis(sets, n_boot=n_boot), 1)
    out.update(bench_dcf(bona, spoof, rng, repeats))
    return out


def bench_dcf(bona, spoof, rng, repeats: int) -> dict:
    from sccl.dcf import act_dcf, cllr, min_dcf, min_tdcf

    n_asv = (bona.size + spoof.size) // 30  # ASV target / nontarget / spoof, 10 % in all
    tar, non, asv_spoof = rng.normal(4, 2, n_asv), rng.normal(-4, 2, n_asv), rng.normal(2, 2, n_asv)
    fns = {"min_tdcf": lambda: min_tdcf(bona, spoof, tar, non, asv_spoof),
           "min_tdcf_legacy": lambda: min_tdcf(bona, spoof, tar, non, asv_spoof, legacy=True),
           "min_dcf": lambda: min_dcf(bona, spoof), "act_dcf": lambda: act_dcf(bona, spoof),
           "cllr": lambda: cllr(bona, spoof)}
    return {f"{name}_s": best_of(fn, repeats) for name, fn in fns.items()}


def bench_scoring(clips: int, seconds: float, batch: int) -> dict:
    from sccl.embed import EmbedOptions
    from sccl.model import ModelConfig, SupConModel
    from sccl.scoring import SpoofDetector

    torch.manual_seed(0)
    det = SpoofDetector(SupConModel(ModelConfig(encoder="tiny")), torch.randn(1, 256) * 0.1,
                        torch.zeros(1), threshold=0.0, seconds=seconds)
    out = {}
    for name, length, opts in (
            ("first", seconds, EmbedOptions(crop="first", seconds=seconds, batch_size=batch)),
            ("windows", 2 * seconds, EmbedOptions(crop="windows", seconds=seconds,
                                                  batch_size=batch))):
        wave = torch.randn(batch, int(length * 16000)) * 0.1
        mask = torch.ones_like(wave, dtype=torch.long)
        det.score(wave[:2], mask[:2], opts)  # warm-up
        n_batches = max(1, clips // batch)
        t0 = time.perf_counter()
        for _ in range(n_batches):
            det.score(wave, mask, opts)
        t = time.perf_counter() - t0
        utts = n_batches * batch
        out[name] = {"utt_per_s": utts / t, "audio_s_per_s": utts * length / t,
                     "clip_seconds": length}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scores", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bootstrap", type=int, default=100, help="bootstrap replicates timed")
    p.add_argument("--clips", type=int, default=128)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="also write the numbers to this file")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    eer = bench_eer(a.scores, a.repeats, a.bootstrap)
    scoring = bench_scoring(a.clips, a.seconds, a.batch)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch threads {a.threads}\n")
    print("| measurement | value |\n|---|---|")
    print(f"| compute_eer, {a.scores:,} scores | {eer['eer_s']:.3f} s |")
    for name in ("min_tdcf", "min_tdcf_legacy", "min_dcf", "act_dcf", "cllr"):
        print(f"| sccl.dcf.{name}, {a.scores:,} scores | {eer[name + '_s']:.3f} s |")
    print(f"| bootstrap_eer_ci, {a.bootstrap} replicates | {eer['bootstrap_per_set_s']:.2f} s |")
    print(f"| aggregate.bootstrap_cis (4 sets: per-set CIs + joint pooled/mean), "
          f"{a.bootstrap} replicates | "
          f"{eer['bootstrap_joint_s']:.2f} s |")
    for name, r in scoring.items():
        print(f"| scoring, tiny preset, {name} ({r['clip_seconds']:g} s clips, batch {a.batch}) "
              f"| {r['utt_per_s']:.1f} utt/s ({r['audio_s_per_s']:.0f} s of audio/s) |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"eer": eer, "scoring": scoring, "args": vars(a)}, f, indent=2)


if __name__ == "__main__":
    main()
