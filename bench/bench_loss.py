"""Forward + backward time of ``supcon_loss`` against a per-anchor loop, by queue size.

    python bench/bench_loss.py                       # B=32, D=256, CPU, Markdown table
    python bench/bench_loss.py --queue-sizes 0 4096 --json bench/results/loss.json

The loop version computes the same loss one anchor at a time (the pattern docs/design.md
warns against); both are checked to agree before timing. Times are medians over --repeats runs.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from sccl.fileio import atomic_write_json
from sccl.losses import pairwise_similarity, supcon_loss


def loop_supcon(z, labels, *, temperature, similarity, queue_z, queue_labels):
    """Same loss (queue entries as negatives only), one anchor per Python iteration."""
    z = z.float()
    terms = []
    for i in range(z.shape[0]):
        others = torch.arange(z.shape[0]) != i
        keys, key_labels = z[others], labels[others]
        if queue_z is not None:
            negatives = queue_labels != labels[i]
            keys = torch.cat([keys, queue_z[negatives]])
            key_labels = torch.cat([key_labels, queue_labels[negatives]])
        logits = pairwise_similarity(z[i : i + 1], keys, similarity)[0] / temperature  # (K,)
        positive = key_labels == labels[i]
        if positive.any():
            terms.append(torch.logsumexp(logits, 0) - logits[positive].mean())
    return torch.stack(terms).mean() if terms else z.sum() * 0


def time_fwd_bwd(fn, z, repeats: int, warmup: int) -> float:
    """Median seconds of one forward + backward through ``fn(z)``."""
    times = []
    for k in range(warmup + repeats):
        leaf = z.detach().clone().requires_grad_()
        start = time.perf_counter()
        fn(leaf).backward()
        if k >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_one(batch, dim, q_size, similarity, repeats, warmup, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(batch, dim, generator=g), dim=1)
    labels = torch.arange(batch) % 2  # balanced binary batch, as in the study
    queue_z = F.normalize(torch.randn(q_size, dim, generator=g), dim=1) if q_size else None
    queue_labels = torch.randint(0, 2, (q_size,), generator=g) if q_size else None
    kw = dict(temperature=0.3 if similarity == "cosine" else 0.07, similarity=similarity,
              queue_z=queue_z, queue_labels=queue_labels)  # fmt: skip
    fast = supcon_loss(z, labels, **kw).item()
    slow = loop_supcon(z, labels, **kw).item()
    if not math.isclose(fast, slow, rel_tol=1e-4):
        raise RuntimeError(f"implementations disagree: {fast} vs {slow} ({similarity}, Q={q_size})")
    vec = time_fwd_bwd(lambda x: supcon_loss(x, labels, **kw), z, repeats, warmup)
    loop = time_fwd_bwd(lambda x: loop_supcon(x, labels, **kw), z, repeats, warmup)
    return {"similarity": similarity, "queue": q_size, "vectorised_ms": vec * 1e3,
            "loop_ms": loop * 1e3, "speedup": loop / vec}  # fmt: skip


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--queue-sizes", type=int, nargs="+", default=[0, 256, 1024, 4096, 8192, 65536])
    p.add_argument("--similarities", nargs="+", default=["cosine", "angular"])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = leave)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [
        bench_one(args.batch, args.dim, q, s, args.repeats, args.warmup)
        for s in args.similarities
        for q in args.queue_sizes
    ]
    print(f"supcon_loss forward+backward, B={args.batch}, D={args.dim}, CPU, "
          f"{torch.get_num_threads()} thread(s), median of {args.repeats}\n")  # fmt: skip
    print("| similarity | queue | vectorised (ms) | per-anchor loop (ms) | loop / vectorised |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['similarity']} | {r['queue']} | {r['vectorised_ms']:.2f} | "
              f"{r['loop_ms']:.2f} | {r['speedup']:.1f}x |")  # fmt: skip
    if args.json:
        meta = {"batch": args.batch, "dim": args.dim, "threads": torch.get_num_threads(),
                "torch": torch.__version__, "machine": platform.processor() or platform.machine()}  # fmt: skip
        atomic_write_json(args.json, {"meta": meta, "results": rows})


if __name__ == "__main__":
    main()
