"""Run directories and shard sets for the Stage 2 / evaluation / scoring tests.

A "Stage 1 run" here is what sccl/train_supcon.py leaves behind (config.yaml in its format,
best/ weights via SupConModel.save_pretrained) without training: a random tiny model is
enough to test the plumbing, and costs well under a second. Shard sets come from
tests/data_fixtures.py (short clips, arbitrary counts, mixed or split-by-label shards).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from sccl.config import save_config
from sccl.data import DataConfig
from sccl.model import ModelConfig, SupConModel
from tests.data_fixtures import write_shards

ROOT = Path(__file__).resolve().parents[1]
CLIP = (0.15, 0.4)  # clip lengths in seconds: short, so a tiny model embeds them in ms


def make_sets(root: Path) -> dict[str, Path]:
    """train/dev (split by label) and three eval sets with uneven shard counts/sizes."""
    root = Path(root)
    specs = {
        "train": dict(n_bonafide=6, n_spoof=10, n_shards=(2, 3), split="train", seed=1),
        "dev": dict(n_bonafide=4, n_spoof=6, n_shards=(1, 2), split="dev", seed=2),
        "evalA": dict(n_bonafide=3, n_spoof=8, split_by_label=False, n_shards=3,
                      attacks=("A07", "A08"), split="evalA", seed=3),
        "evalB": dict(n_bonafide=4, n_spoof=3, split_by_label=False, n_shards=2,
                      attacks=("A09",), split="evalB", seed=4),
        "evalC": dict(n_bonafide=2, n_spoof=3, split_by_label=False, n_shards=1,
                      attacks=("A10", "A11"), split="evalC", seed=5),
    }
    out = {}
    for name, kw in specs.items():
        out[name] = root / name
        if not (out[name] / "manifest.json").is_file():
            write_shards(out[name], seconds=CLIP, **kw)
    return out


def make_stage1_run(run: Path, train: Path, dev: Path, *, seed: int = 0) -> Path:
    """RUN/stage1/{config.yaml, best/} as Stage 1 writes them, with a random tiny model."""
    from sccl.train_supcon import TrainConfig

    cfg = TrainConfig(data=DataConfig(train_shards=str(train), dev_shards=str(dev),
                                      num_workers=0, batch_size=4, eval_seconds=1.0))
    cfg.model = ModelConfig(encoder="tiny")
    cfg.run.dir = str(run)
    save_config(cfg, Path(run) / "stage1" / "config.yaml", header="test fixture")
    torch.manual_seed(seed)
    SupConModel(cfg.model).save_pretrained(Path(run) / "stage1" / "best")
    return Path(run)


STAGE2_ARGS = ["--embed.seconds", "1", "--embed.batch_size", "4", "--linear.max_epochs", "30",
               "--linear.patience", "5", "--run.progress", "false"]


def make_stage2_run(root: Path) -> tuple[Path, dict[str, Path]]:
    """Shards under root/shards, a random Stage 1 and a real Stage 2 in root/run."""
    from sccl.train_linear import main as stage2_main

    sets = make_sets(root / "shards")
    run = make_stage1_run(root / "run", sets["train"], sets["dev"])
    assert stage2_main(["--run.dir", str(run), *STAGE2_ARGS]) == 0
    return run, sets


# Synthetic-corpus eval sets: name -> (sccl-shards build --format, protocol, audio dir)
CORPUS_SETS = {
    "la19": ("asvspoof2019", "LA/ASVspoof2019_LA_cm_protocols/ASVspoof2019.LA.cm.eval.trl.txt",
             "LA/ASVspoof2019_LA_eval"),
    "la21": ("asvspoof2021", "keys/LA/CM/trial_metadata.txt", "ASVspoof2021_LA_eval"),
    "as5_train": ("asvspoof5", "ASVspoof5_protocols/ASVspoof5.train.tsv", "flac_T"),
    "as5_dev": ("asvspoof5", "ASVspoof5_protocols/ASVspoof5.dev.track_1.tsv", "flac_D"),
    "as5": ("asvspoof5", "ASVspoof5_protocols/ASVspoof5.eval.track_1.tsv", "flac_E_eval"),
}
LA19_ASV = "LA/ASVspoof2019_LA_asv_scores/ASVspoof2019.LA.asv.eval.gi.trl.scores.txt"
LA21_ASV = "keys/LA/ASV"


def corpus_sets(root: Path, names, **build) -> tuple[Path, dict[str, Path]]:
    """(corpus dir, {name: shard dir}): the tiny synthetic corpus under root/corpus and the
    CORPUS_SETS ``names`` built from it (both steps skipped when already done). ``build``:
    extra ``sccl-shards build`` flags, e.g. split_by_label=True."""
    from shards.synth import generate

    corpus = Path(root) / "corpus"
    generate(corpus, size="tiny", seed=0, workers=1)
    out = {}
    for name in names:
        fmt, protocol, audio = CORPUS_SETS[name]
        out[name] = Path(root) / name
        if not (out[name] / "manifest.json").is_file():
            flags = [f"--{k.replace('_', '-')}" for k, v in build.items() if v]
            subprocess.run([sys.executable, "-m", "shards", "build", "--format", fmt,
                            "--protocol", str(corpus / protocol), "--audio-dir",
                            str(corpus / audio), "--out", str(out[name]), "--shard-size", "4",
                            "--workers", "1", "--no-progress", *flags],
                           check=True, capture_output=True, text=True, cwd=ROOT)
    return corpus, out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(script: Path | str, args: list[str], *, procs: int = 2,
                      timeout: int = 240) -> subprocess.CompletedProcess:
    """Run ``script`` under the accelerate next to this interpreter on ``procs`` CPU processes."""
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    launcher = Path(sys.executable).parent / "accelerate"
    cmd = [str(launcher)] if launcher.is_file() else [sys.executable, "-m",
                                                      "accelerate.commands.launch"]
    cmd += ["launch"] if launcher.is_file() else []
    cmd += ["--multi_gpu", "--num_processes", str(procs), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), str(script), *args]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
