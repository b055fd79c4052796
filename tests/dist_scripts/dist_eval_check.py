"""Run under ``accelerate launch --num_processes 2`` by tests/test_evaluate.py.

    dist_eval_check.py RUN SETS REPORT_JSON

Counts each rank's share of every eval set as the eval loader gives it (valid rows and
padding rows), then runs the evaluation stage itself (sccl.evaluate.main) on all ranks. The
main process writes REPORT_JSON: world size, per-set shares and padding rows per rank.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from sccl import dist
from sccl.accel import build_accelerator
from sccl.data import build_eval_loader
from sccl.evaluate import main as eval_main
from sccl.evaluate import parse_sets
from sccl.linear import stage1_data_config

BATCH = 3  # per rank, as the test passes --embed.batch_size


def shares(run: str, spec: str, rank: int, world: int) -> tuple[dict, dict]:
    data_cfg = stage1_data_config(Path(run))
    valid, padding = {}, {}
    for name, shard_dir in parse_sets(spec.split(",")):
        loader = build_eval_loader(shard_dir, data_cfg, rank=rank, world_size=world,
                                   batch_size=BATCH, seconds=1.0)
        v = p = 0
        for batch in loader:
            v += int(batch["valid"].sum())
            p += int((~batch["valid"]).sum())
        counts = dist.all_gather_no_grad(torch.tensor([[v, p]]))  # (world, 2)
        valid[name], padding[name] = counts[:, 0].tolist(), counts[:, 1].tolist()
    return valid, padding


def main() -> int:
    run, spec, report = sys.argv[1:4]
    acc = build_accelerator()
    valid, padding = shares(run, spec, acc.process_index, acc.num_processes)
    world = acc.num_processes
    rc = eval_main(["--run.dir", run, "--eval.sets", spec, "--embed.seconds", "1",
                    "--embed.batch_size", str(BATCH), "--eval.bootstrap", "20",
                    "--eval.plots", "false", "--eval.tsne_points", "0"])
    if rc == 0 and acc.is_main_process:
        with open(report, "w") as f:
            json.dump({"world_size": world, "shares": valid, "padding": padding}, f)
    return rc


if __name__ == "__main__":
    sys.exit(main())
