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


def slurm_stage1_config(path: Path, shards: dict[str, Path], **sections: dict) -> Path:
    """Write the tiny Stage 1 config the Slurm tests share to ``path`` (YAML; half-second
    crops, batches of 4, no workers, no RawBoost, no progress bars) with ``sections``
    (``optim={...}``, ``loss={...}``) merged over it; return ``path``."""
    import yaml

    cfg = {"data": {"train_shards": str(shards["train"]), "dev_shards": str(shards["dev"]),
                    "crop_seconds": 0.5, "eval_seconds": 0.5, "batch_size": 4,
                    "num_workers": 0, "shuffle_buffer": 8, "rawboost": False,
                    "train_crop": "random"},
           "model": {"encoder": "tiny", "proj_dim": 16},
           "run": {"log_every": 1, "progress": False, "tensorboard": False}}
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    path.write_text(yaml.safe_dump(cfg))
    return path
