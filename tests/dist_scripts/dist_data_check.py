"""Two-process check of sccl.data under `accelerate launch` (run by tests/test_data.py).

Usage: accelerate launch --num_processes 2 ... dist_data_check.py TRAIN_DIR EVAL_DIR OUT_DIR
Writes OUT_DIR/rank<r>.json with what this rank's train and eval loaders produced.
"""

from __future__ import annotations

import json
import os
import sys

import torch.distributed as torch_dist
from accelerate import Accelerator

from sccl.data import DataConfig, build_eval_loader, build_train_loader


def main() -> None:
    train_dir, eval_dir, out_dir = sys.argv[1:4]
    Accelerator()
    if torch_dist.is_available() and torch_dist.is_initialized():
        rank, world = torch_dist.get_rank(), torch_dist.get_world_size()
    else:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    cfg = DataConfig(train_shards=train_dir, batch_size=2 * world, crop_seconds=0.05,
                     num_workers=2, shuffle_buffer=4, eval_seconds=0.05, rawboost=False,
                     train_crop="random")
    train = build_train_loader(cfg, rank=rank, world_size=world, epoch=0)
    train_ids = [b["utt_id"] for b in train]
    evl = build_eval_loader(eval_dir, cfg, rank=rank, world_size=world, batch_size=5)
    batches = list(evl)
    valid = [u for b in batches for u, v in zip(b["utt_id"], b["valid"].tolist(), strict=True) if v]
    result = {"rank": rank, "world_size": world, "train_len": len(train),
              "train_ids": train_ids, "eval_len": len(evl), "eval_batches": len(batches),
              "eval_valid": valid}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(result, f)
    if torch_dist.is_initialized():
        torch_dist.barrier()  # both ranks finished their loaders: equal steps, no hang


if __name__ == "__main__":
    main()
