"""Stage 2 core: the linear classifier on frozen embeddings, and the run-directory hand-off.

Pure pieces used by ``sccl/train_linear.py`` (training), ``sccl/evaluate.py`` and
``sccl/scoring.py`` (loading): no process group, no data loader.

RUN/stage2/ layout:
    config.yaml              resolved Stage 2 config (loadable with --config), git revision on top
    run_info.json            command line, world size, versions
    embeddings/{train,dev}.safetensors   cache: "z" float32 (N, D), "label" int64 (N,)
                             (1 = bona fide); metadata: keys (JSON list), fingerprint (JSON)
    classifier.safetensors   "weight" (1, D), "bias" (1,) of Linear(D, 1)
    threshold.json           dev EER threshold (bona fide if score > threshold), dev EER, epoch
    meta.json                Stage 1 weights' sha256 (checked by every consumer), counts,
                             pos_weight, embedding options, best epoch
    log.jsonl                one line per epoch: train loss, dev loss, dev EER
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_save
from torch import nn

from sccl.fileio import (
    atomic_write_bytes,
    file_sha256,  # noqa: F401  (re-exported: Stage 2 and its tests use it)
)
from sccl.metrics import compute_eer

CLASSIFIER = "classifier.safetensors"
THRESHOLD = "threshold.json"
META = "meta.json"


class RunMismatchError(RuntimeError):
    """A Stage 2 run does not belong to the Stage 1 weights it sits next to (or is missing)."""


@dataclass
class LinearConfig:
    """Stage 2 classifier training (defaults: the study's code)."""

    lr: float = 1e-4  # AdamW learning rate
    weight_decay: float = 1e-4  # AdamW weight decay
    batch_size: int = 64  # embeddings per step
    max_epochs: int = 200  # upper bound on epochs
    patience: int = 15  # stop after this many epochs without a lower dev EER
    pos_weight: float = 0.0  # BCE weight of bona fide (label 1); 0 = #spoof / #bona fide
    seed: int = 42  # classifier init and batch order

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0 or self.pos_weight < 0:
            raise ValueError("lr must be > 0, weight_decay and pos_weight >= 0")
        if self.batch_size < 1 or self.max_epochs < 1 or self.patience < 1:
            raise ValueError("batch_size, max_epochs and patience must be >= 1")


@dataclass
class LinearResult:
    weight: torch.Tensor  # (1, D) best epoch's
    bias: torch.Tensor  # (1,)
    best_epoch: int
    dev_eer: float
    threshold: float
    pos_weight: float
    epochs_run: int


def linear_scores(z: np.ndarray | torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
                  ) -> np.ndarray:
    """Logits (N,) float64 of embeddings z (N, D); the one scoring path every consumer uses."""
    z = torch.as_tensor(np.asarray(z, dtype=np.float32))
    return (z @ weight.float().reshape(-1, 1) + bias.float()).reshape(-1).double().numpy()


def _dev_eval(model: nn.Linear, z: torch.Tensor, y: torch.Tensor, loss_fn
              ) -> tuple[float, float, float]:
    """(dev EER, threshold, dev BCE loss) of ``model`` on z (N, D), y (N,) float."""
    with torch.no_grad():
        logits = model(z).squeeze(1)
        loss = float(loss_fn(logits, y))
    s = logits.double().numpy()
    eer, thr = compute_eer(s[y.numpy() == 1], s[y.numpy() == 0])
    return eer, thr, loss


def train_classifier(train: tuple[np.ndarray, np.ndarray], dev: tuple[np.ndarray, np.ndarray],
                     cfg: LinearConfig, on_epoch=None) -> LinearResult:
    """Linear(D, 1) + BCEWithLogits(pos_weight) on (z (N, D), label (N,) 1 = bona fide).

    Early stopping on the dev EER (the lowest wins; ties keep the earlier epoch). CPU only:
    a few MB of embeddings make a GPU pointless. ``on_epoch(dict)`` receives each epoch's log.
    """
    z_tr, y_tr = torch.as_tensor(train[0], dtype=torch.float32), torch.as_tensor(train[1])
    z_dev, y_dev = torch.as_tensor(dev[0], dtype=torch.float32), torch.as_tensor(dev[1])
    for name, y in (("train", y_tr), ("dev", y_dev)):
        n_bona = int((y == 1).sum())
        if n_bona == 0 or n_bona == len(y):
            raise ValueError(f"{name} embeddings hold one class only ({len(y)} rows)")
    n_bona, n_spoof = int((y_tr == 1).sum()), int((y_tr == 0).sum())
    pos_weight = cfg.pos_weight or n_spoof / n_bona
    gen = torch.Generator().manual_seed(cfg.seed)
    model = nn.Linear(z_tr.shape[1], 1)
    with torch.no_grad():  # seeded init (nn.Linear's own init uses the global RNG)
        bound = 1.0 / math.sqrt(z_tr.shape[1])
        model.weight.uniform_(-bound, bound, generator=gen)
        model.bias.uniform_(-bound, bound, generator=gen)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best, bad, epoch = None, 0, 0
    for epoch in range(1, cfg.max_epochs + 1):
        total = 0.0
        for idx in torch.randperm(len(y_tr), generator=gen).split(cfg.batch_size):
            loss = loss_fn(model(z_tr[idx]).squeeze(1), y_tr[idx].float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        eer, thr, dev_loss = _dev_eval(model, z_dev, y_dev.float(), loss_fn)
        if on_epoch is not None:
            on_epoch({"epoch": epoch, "train_loss": total / len(y_tr), "dev_loss": dev_loss,
                      "dev_eer": eer, "threshold": thr})
        if best is None or eer < best[0]:
            best = (eer, thr, epoch, model.weight.detach().clone(), model.bias.detach().clone())
            bad = 0
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    eer, thr, best_epoch, w, b = best
    return LinearResult(w, b, best_epoch, eer, thr, pos_weight, epoch)


# ------------------------------------------------------------------------ run directory


def save_classifier(stage2: Path, result: LinearResult, meta: dict) -> None:
    """Write classifier.safetensors, threshold.json and meta.json atomically (meta last)."""
    blob = safetensors_save({"weight": result.weight.contiguous(), "bias": result.bias},
                            metadata={"stage1_weights_sha256": meta["stage1_weights_sha256"]})
    atomic_write_bytes(stage2 / CLASSIFIER, blob)
    from sccl.fileio import atomic_write_json

    atomic_write_json(stage2 / THRESHOLD, {
        "threshold": result.threshold, "dev_eer": result.dev_eer, "epoch": result.best_epoch,
        "rule": "bona fide if score > threshold (score = logit, higher = bona fide)"})
    atomic_write_json(stage2 / META, meta)


def stage1_weights(run: Path, which: str = "best") -> Path:
    path = Path(run) / "stage1" / which / "model.safetensors"
    if not path.is_file():
        raise RunMismatchError(f"{path}: missing; is {run} a run directory with a finished "
                               "Stage 1 (stage1/best/)?")
    return path


def load_stage2(run: Path) -> tuple[dict, torch.Tensor, torch.Tensor, dict]:
    """(meta, weight (1, D), bias (1,), threshold info) of RUN/stage2, checked against the
    Stage 1 weights it was trained on (sha256)."""
    stage2 = Path(run) / "stage2"
    for name in (META, CLASSIFIER, THRESHOLD):
        if not (stage2 / name).is_file():
            raise RunMismatchError(f"{stage2 / name}: missing; run Stage 2 first "
                                   "(accelerate launch sccl/train_linear.py --run.dir RUN)")
    meta = json.loads((stage2 / META).read_text(encoding="utf-8"))
    weights = stage1_weights(run, meta.get("stage1_which", "best"))
    actual = file_sha256(weights)
    if actual != meta.get("stage1_weights_sha256"):
        raise RunMismatchError(
            f"{stage2} does not match its Stage 1: it was trained on weights with sha256 "
            f"{meta.get('stage1_weights_sha256')}, but {weights} now has {actual}; rerun "
            "Stage 2 (sccl/train_linear.py) on this Stage 1")
    with safe_open(str(stage2 / CLASSIFIER), framework="pt") as f:
        weight, bias = f.get_tensor("weight"), f.get_tensor("bias")
    thr = json.loads((stage2 / THRESHOLD).read_text(encoding="utf-8"))
    return meta, weight, bias, thr
