"""``sccl.checkpoint.StageClaim``'s check that every rank sees the run directory, on two
processes where rank 1 runs in a mount namespace of its own with a tmpfs over LOCAL: its
LOCAL is a node-local disk, as another node's would be. Run by tests/test_checkpoint.py:
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 \\
        tests/dist_scripts/shared_dir_check.py OUT SHARED LOCAL
A claim on SHARED/stage1 holds on both ranks; one on LOCAL/stage1 fails on both. Each rank
writes OUT/rank<r>.json: what it sees in SHARED/stage1 while holding the claim, the error
of the LOCAL claim (null if none) and what is left in LOCAL after it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

if __name__ == "__main__" and os.environ["RANK"] == "1" and "SCCL_OWN_MOUNTS" not in os.environ:
    # Before any thread exists (unshare refuses a threaded process); exec keeps the pid,
    # which torchrun watches. Private propagation: the tmpfs stays out of everyone's view.
    os.environ["SCCL_OWN_MOUNTS"] = "1"
    os.execvp("unshare", ["unshare", "--mount", "--propagation", "private",
                          sys.executable, *sys.argv])

from accelerate import Accelerator  # noqa: E402

from sccl import checkpoint as ck  # noqa: E402
from sccl.config import ConfigError  # noqa: E402
from sccl.fileio import atomic_write_json  # noqa: E402
from sccl.logs import StagePaths  # noqa: E402


def main(out: Path, shared: Path, local: Path) -> None:
    rank = int(os.environ["RANK"])
    if rank == 1:
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(local)], check=True)
    ck.SHARED_WAIT = 0.5  # the refusal waits this long (5 s by default): keeps the test short
    acc = Accelerator()
    seen: dict = {}
    with ck.StageClaim(acc, StagePaths(shared, "stage1"), "Stage 1", "auto"):
        acc.wait_for_everyone()  # the token is gone on every rank's view now
        seen["shared"] = sorted(os.listdir(shared / "stage1"))
    try:
        ck.StageClaim(acc, StagePaths(local, "stage1"), "Stage 1", "auto").release()
        seen["local"] = None
    except ConfigError as e:
        seen["local"] = str(e)
    seen["left"] = sorted(os.listdir(local))
    atomic_write_json(out / f"rank{rank}.json", seen)


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:4]))
