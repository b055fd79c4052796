"""The synthetic corpus as LA19 train/dev shard directories, for end-to-end runs.

``la19_shards(root)`` generates ``shards.synth`` (size "tiny" by default) under
``root/corpus`` and builds ``root/la19_train`` and ``root/la19_dev`` with
``sccl-shards build --split-by-label``; both steps skip work already done, so a cached
``root`` costs nothing the second time. Used by tests/test_train_supcon.py and the
training benchmark.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from shards.synth import generate

_PROTOCOLS = "LA/ASVspoof2019_LA_cm_protocols/ASVspoof2019.LA.cm.{}.txt"


def la19_shards(root: str | Path, *, size: str = "tiny", workers: int = 1) -> dict[str, Path]:
    """{"train": shard dir, "dev": shard dir, "corpus": synthetic corpus dir}."""
    root = Path(root)
    corpus = root / "corpus"
    generate(corpus, size=size, seed=0, workers=workers)
    out = {"corpus": corpus}
    for split, proto in (("train", "train.trn"), ("dev", "dev.trl")):
        out[split] = root / f"la19_{split}"
        if (out[split] / "manifest.json").is_file():
            continue
        cmd = [sys.executable, "-m", "shards", "build", "--format", "asvspoof2019",
               "--protocol", str(corpus / _PROTOCOLS.format(proto)),
               "--audio-dir", str(corpus / f"LA/ASVspoof2019_LA_{split}"),
               "--out", str(out[split]), "--split-by-label",
               "--shard-size", "4" if size == "tiny" else "200",
               "--workers", str(workers), "--no-progress"]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out
