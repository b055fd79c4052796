"""Equal error rate with the ASVspoof 2021 evaluation package's convention, its DET curve,
and the bootstrap of it: the one place where the EER arithmetic lives.

Convention (docs/study.md, evaluation; higher score = bona fide): concatenate
bona fide then spoof scores, stable-sort them (mergesort, so bona fide comes first among
equal scores), and walk the sorted list: after k trials, FRR = bona fide among the first k
/ #bona fide, FAR = spoof among the rest / #spoof (k = 0 included: FRR 0, FAR 1).
EER = mean(FRR, FAR) at the first argmin |FRR - FAR|; its threshold is the k-th sorted
score (the lowest score minus 0.001 for k = 0). Ties are therefore resolved pessimistically:
all-equal scores give EER 1.0, as the official package does.

The walk needs only the classes in walk order, so a bootstrap replicate (each class resampled
with replacement) is the walk order with every trial repeated by its draw count: copies of a
trial are adjacent and ties keep bona fide first, so the replicate costs O(N), not a sort.
"""

from __future__ import annotations

import numpy as np


def _as_scores(scores, name: str) -> np.ndarray:
    """1-D float64 array from a list / numpy array / torch tensor, with loud checks."""
    if hasattr(scores, "detach"):  # torch tensor, without importing torch here
        scores = scores.detach().cpu().numpy()
    try:
        arr = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} scores must be numbers: {err}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} scores must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"no {name} scores: EER is undefined without both classes")
    n_nan = int(np.isnan(arr).sum())
    if n_nan:
        raise ValueError(f"{n_nan} of {arr.size} {name} scores are NaN")
    return arr


def walk_order(scores: np.ndarray, bonafide: np.ndarray) -> np.ndarray:
    """Trial indices (N,) in walk order: bona fide then spoof, stably sorted by score."""
    idx = np.r_[np.flatnonzero(bonafide), np.flatnonzero(~bonafide)]
    return idx[np.argsort(scores[idx], kind="mergesort")]


def walk_rates(is_bona: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FRR, FAR), each (N + 1,), of trials in walk order given their classes (N,) bool."""
    n, n_bona = is_bona.size, int(is_bona.sum())
    bona_below = np.cumsum(is_bona)  # bona fide among the first k
    spoof_above = n - n_bona - (np.arange(1, n + 1) - bona_below)  # spoof among the rest
    return np.r_[0.0, bona_below / n_bona], np.r_[1.0, spoof_above / (n - n_bona)]


def walk_eer(is_bona: np.ndarray) -> tuple[float, int]:
    """(EER, cut k) of trials in walk order given their classes (N,) bool."""
    frr, far = walk_rates(is_bona)
    k = int(np.argmin(np.abs(frr - far)))  # the first minimum, as the package
    return float((frr[k] + far[k]) / 2), k


def compute_det_curve(bonafide_scores, spoof_scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frr, far, thresholds), each (N + 1,), N = number of trials: the DET curve as the
    official package computes it (module docstring)."""
    bona = _as_scores(bonafide_scores, "bona fide")
    spoof = _as_scores(spoof_scores, "spoof")
    scores = np.concatenate([bona, spoof])
    order = np.argsort(scores, kind="mergesort")  # stable: bona fide first on ties
    frr, far = walk_rates(order < bona.size)
    return frr, far, np.r_[scores[order[0]] - 0.001, scores[order]]


def compute_eer(bonafide_scores, spoof_scores) -> tuple[float, float]:
    """(eer as a fraction, threshold): ASVspoof 2021 package convention, ties included."""
    bona = _as_scores(bonafide_scores, "bona fide")
    spoof = _as_scores(spoof_scores, "spoof")
    scores = np.concatenate([bona, spoof])
    order = np.argsort(scores, kind="mergesort")
    eer, k = walk_eer(order < bona.size)
    return eer, float(scores[order[k - 1]] if k else scores[order[0]] - 0.001)


def class_counts(bonafide: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """How often each trial (N,) is drawn when each class is resampled with replacement
    (bona fide first, then spoof: one ``rng.integers`` call per class)."""
    counts = np.zeros(bonafide.size, dtype=np.int64)
    for members in (np.flatnonzero(bonafide), np.flatnonzero(~bonafide)):
        counts[members] = np.bincount(rng.integers(0, members.size, members.size),
                                      minlength=members.size)
    return counts


def replicate_eer(bona_in_order: np.ndarray, counts_in_order: np.ndarray) -> float:
    """EER of one bootstrap replicate: classes and draw counts (N,) of the trials in walk order."""
    return walk_eer(np.repeat(bona_in_order, counts_in_order))[0]


def bootstrap_eer_ci(bonafide_scores, spoof_scores, n: int = 1000, seed: int = 0,
                     alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of the EER -> (low, high).

    Each replicate resamples bona fide and spoof trials separately with replacement (class
    sizes kept), from its own generator spawned from ``seed``."""
    bona = _as_scores(bonafide_scores, "bona fide")
    spoof = _as_scores(spoof_scores, "spoof")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    labels = np.r_[np.ones(bona.size, bool), np.zeros(spoof.size, bool)]
    order = walk_order(np.r_[bona, spoof], labels)
    eers = [replicate_eer(labels[order], class_counts(labels, np.random.default_rng(s))[order])
            for s in np.random.SeedSequence(seed).spawn(n)]
    low, high = np.quantile(eers, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)
