"""Stage 2 core: the linear classifier on frozen embeddings, and the run-directory hand-off.

Pure pieces used by ``sccl/train_linear.py`` (training), ``sccl/evaluate.py`` and
``sccl/scoring.py`` (loading): no process group, no data loader.

Scores and LLRs. The classifier's logit s is a log-odds under the training class balance:
BCEWithLogits with pos_weight w on n_b bona fide and n_s spoof embeddings is minimised, per
input x, by sigmoid(s) = w n_b p(x|bona) / (w n_b p(x|bona) + n_s p(x|spoof)), so
    s = log p(x|bona) / p(x|spoof) + log(w n_b / n_s):
the log-likelihood ratio is LLR = s - log(w n_b / n_s) (``prior_log_odds``; 0 for the default
w = n_s / n_b). ``sccl.evaluate --eval.calibrate dev`` fits an affine map a LLR + b on the dev
embeddings' LLRs by prior-weighted logistic regression at the effective prior 0.5 (each class
weighted by 1 / its count, no prior offset: the objective is the dev Cllr, in nats) with a
1e-6 ridge, so that separable dev scores give a large but finite slope
(``fit_calibration``); it is stored as calibration.json with its provenance and used by
evaluation (act DCF / Cllr "calibrated") and by ``sccl-score`` / ``SpoofDetector``.

RUN/stage2/ layout:
    config.yaml              resolved Stage 2 config (loadable with --config), git revision on top
    run_info.json            command line, world size, versions
    embeddings/{train,dev}.safetensors   cache: "z" float32 (N, D), "label" int64 (N,)
                             (1 = bona fide); metadata: keys (JSON list), fingerprint (JSON)
    classifier.safetensors   "weight" (1, D), "bias" (1,) of Linear(D, 1)
    threshold.json           dev EER threshold (bona fide if score > threshold), dev EER, epoch
    calibration.json         (after ``sccl.evaluate --eval.calibrate dev``) LLR map scale,
                             offset, how and on what it was fitted, the classifier's sha256
    meta.json                Stage 1 weights' sha256 (checked by every consumer), counts,
                             pos_weight, embedding options, best epoch
    log.jsonl                one line per epoch: train loss, dev loss, dev EER
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from torch import nn

from sccl.config import ConfigError, from_dict, read_config_file
from sccl.data import DataConfig
from sccl.dcf import cllr
from sccl.embed import EmbedOptions
from sccl.fileio import atomic_write_json, file_sha256
from sccl.metrics import compute_eer
from sccl.model import save_tensors

CLASSIFIER = "classifier.safetensors"
THRESHOLD = "threshold.json"
META = "meta.json"
CALIBRATION = "calibration.json"


class RunMismatchError(RuntimeError):
    """A Stage 2 run does not belong to the Stage 1 weights it sits next to (or is missing)."""


@dataclass
class LinearConfig:
    """Stage 2 classifier training (defaults: the study's code)."""

    lr: float = 1e-4
    """AdamW learning rate."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    batch_size: int = 64
    """Embeddings per step."""
    max_epochs: int = 200
    """Upper bound on epochs."""
    patience: int = 15
    """Stop after this many epochs without a lower dev EER."""
    pos_weight: float = 0.0
    """BCE weight of bona fide (label 1); 0 = #spoof / #bona fide."""
    seed: int = 42
    """Classifier init and batch order."""

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
    (stage2 / CALIBRATION).unlink(missing_ok=True)  # fitted to the classifier replaced now
    save_tensors(stage2 / CLASSIFIER, {"weight": result.weight, "bias": result.bias},
                 {"stage1_weights_sha256": meta["stage1_weights_sha256"]})
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


def stage1_data_config(run: Path, train: str = "", dev: str = "", workers: int = -1,
                       need: tuple[str, ...] = ()) -> DataConfig:
    """Stage 1's DataConfig (RUN/stage1/config.yaml), with shard dirs / workers overridden.
    Each field named in ``need`` must be a shard directory; the error names where its value
    came from (the config file, or the command line)."""
    path = run / "stage1" / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: missing; --run.dir must be a run directory with Stage 1")
    data, lines = read_config_file(path)
    cfg = from_dict(DataConfig, data.get("data") or {}, source=str(path),
                    lines={k[len("data."):]: v for k, v in lines.items()})
    changes = {"train_shards": train or cfg.train_shards, "dev_shards": dev or cfg.dev_shards}
    if workers >= 0:
        changes["num_workers"] = workers
    for name in need:
        value, given = changes[name], {"train_shards": train, "dev_shards": dev}[name]
        if not value or not (Path(value) / "manifest.json").is_file():
            where = f"--data.{name}" if given else f"data.{name} in {path}"
            raise ConfigError(f"{where}: {value!r} is not a shard directory (no manifest.json)")
    return dataclasses.replace(cfg, **changes)


# ------------------------------------------------------------------------ embedding cache


def fingerprint(shard_dir: str, weights_sha: str, opts: EmbedOptions, sample_rate: int) -> dict:
    """What decides a cached embedding file's content (batch size does not)."""
    return {"stage1_weights_sha256": weights_sha, "shard_dir": str(Path(shard_dir).resolve()),
            "manifest_sha256": file_sha256(Path(shard_dir) / "manifest.json"),
            "crop": opts.crop, "seconds": opts.seconds, "hop_seconds": opts.hop_seconds,
            "bf16": opts.bf16, "sample_rate": sample_rate}


def load_cache(path: Path, expect: dict) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """(z (N, D), label (N,), keys) if ``path`` holds embeddings with fingerprint ``expect``."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            if json.loads(meta.get("fingerprint", "{}")) != expect:
                return None
            return f.get_tensor("z"), f.get_tensor("label"), json.loads(meta["keys"])
    except Exception:  # a damaged cache is recomputed, never trusted
        return None


def save_cache(path: Path, z: np.ndarray, label: np.ndarray, keys: list[str], fp: dict) -> None:
    save_tensors(path, {"z": torch.from_numpy(z), "label": torch.from_numpy(label)},
                 {"keys": json.dumps(keys), "fingerprint": json.dumps(fp)})


# ------------------------------------------------------------------------ LLRs, calibration


def prior_log_odds(meta: dict) -> float:
    """log(pos_weight n_bona / n_spoof) of Stage 2's training set: logit - this = LLR."""
    counts = meta["train_counts"]
    return math.log(meta["pos_weight"] * counts["bonafide"] / counts["spoof"])


def fit_calibration(bona: np.ndarray, spoof: np.ndarray, ridge: float = 1e-6
                    ) -> tuple[float, float]:
    """(a, b) minimising the prior-weighted (0.5) logistic loss of a x + b (module docstring)."""
    from scipy.optimize import minimize

    x = np.r_[bona, spoof]
    sign = np.r_[np.ones(bona.size), -np.ones(spoof.size)]  # +1 bona fide: loss log(1+e^-s)
    w = np.r_[np.full(bona.size, 0.5 / bona.size), np.full(spoof.size, 0.5 / spoof.size)]

    def loss(theta):
        m = sign * (theta[0] * x + theta[1])  # (N,) margins
        g = -w * sign / (1.0 + np.exp(np.clip(m, -700, 700)))  # d loss / d s
        value = np.sum(w * np.logaddexp(0.0, -m)) + 0.5 * ridge * theta @ theta
        return value, np.array([g @ x, g.sum()]) + ridge * theta

    fit = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B",
                   options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 500})
    return float(fit.x[0]), float(fit.x[1])


def calibrate_on_dev(run: Path, meta: dict, weight: torch.Tensor, bias: torch.Tensor) -> dict:
    """Fit the LLR calibration on RUN/stage2's cached dev embeddings; write calibration.json."""
    stage2 = Path(run) / "stage2"
    cache = stage2 / "embeddings" / "dev.safetensors"
    expect = fingerprint(meta["dev_shards"], meta["stage1_weights_sha256"],
                         EmbedOptions(**meta["embed"]), meta["sample_rate"])
    found = load_cache(cache, expect)
    if found is None:
        raise RunMismatchError(f"{cache}: missing or not the dev embeddings of this Stage 2 "
                               "(eval.calibrate dev needs them); rerun Stage 2")
    z, label, _ = found
    llr = linear_scores(z, weight, bias) - prior_log_odds(meta)
    bona, spoof = llr[label == 1], llr[label == 0]
    scale, offset = fit_calibration(bona, spoof)
    cal = {"scale": scale, "offset": offset, "prior_log_odds": prior_log_odds(meta),
           "map": "calibrated LLR = scale * (logit - prior_log_odds) + offset",
           "method": "prior-weighted logistic regression, effective prior 0.5, ridge 1e-6",
           "fitted_on": {"embeddings": str(cache), "sha256": file_sha256(cache),
                         "dev_shards": meta["dev_shards"], "bonafide": int(bona.size),
                         "spoof": int(spoof.size)},
           "dev_cllr": {"before": cllr(bona, spoof),
                        "after": cllr(scale * bona + offset, scale * spoof + offset)},
           "classifier_sha256": file_sha256(stage2 / CLASSIFIER),
           "stage1_weights_sha256": meta["stage1_weights_sha256"]}
    atomic_write_json(stage2 / CALIBRATION, cal)
    return cal


def llr_map(run: Path, meta: dict) -> tuple[tuple[float, float], tuple[float, float] | None]:
    """((1, -prior log-odds), calibrated (scale, offset) or None): affine maps from the
    logit to the LLR, the second from RUN/stage2/calibration.json when it belongs to the
    classifier (RunMismatchError when it does not)."""
    stage2 = Path(run) / "stage2"
    raw = (1.0, -prior_log_odds(meta))
    if not (stage2 / CALIBRATION).is_file():
        return raw, None
    cal = json.loads((stage2 / CALIBRATION).read_text(encoding="utf-8"))
    if cal.get("classifier_sha256") != file_sha256(stage2 / CLASSIFIER):
        raise RunMismatchError(f"{stage2 / CALIBRATION} was fitted to another classifier; "
                               "refit it (sccl.evaluate --eval.calibrate dev) or delete it")
    a, b = float(cal["scale"]), float(cal["offset"])
    return raw, (a, b - a * cal["prior_log_odds"])
