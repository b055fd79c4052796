"""Equal error rate with the ASVspoof 2021 evaluation package's convention, plus its DET
curve and a bootstrap confidence interval.

Convention (docs/study.md, evaluation; higher score = bona fide): concatenate
bona fide then spoof scores, stable-sort them (mergesort, so bona fide comes first among
equal scores), and walk the sorted list: after k trials, FRR = bona fide among the first k
/ #bona fide, FAR = spoof among the rest / #spoof (k = 0 included: FRR 0, FAR 1).
EER = mean(FRR, FAR) at the first argmin |FRR - FAR|; its threshold is the k-th sorted
score (the lowest score minus 0.001 for k = 0). Ties are therefore resolved pessimistically:
all-equal scores give EER 1.0, as the official package does.
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


def _det_rows(scores: np.ndarray, n_bona: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DET curves of R score sets at once.

    scores (R, N): each row holds n_bona bona fide scores then N - n_bona spoof scores.
    Returns frr, far (R, N + 1) and thresholds (R, N + 1)."""
    rows, n = scores.shape
    n_spoof = n - n_bona
    order = np.argsort(scores, axis=1, kind="mergesort")  # stable: bona fide first on ties
    is_bona = order < n_bona  # (R, N) class of each sorted trial
    bona_below = np.cumsum(is_bona, axis=1)  # (R, N) bona fide among the first k
    spoof_above = n_spoof - (np.arange(1, n + 1) - bona_below)  # spoof among the rest
    frr = np.concatenate([np.zeros((rows, 1)), bona_below / n_bona], axis=1)
    far = np.concatenate([np.ones((rows, 1)), spoof_above / n_spoof], axis=1)
    sorted_scores = np.take_along_axis(scores, order, axis=1)
    thresholds = np.concatenate([sorted_scores[:, :1] - 0.001, sorted_scores], axis=1)
    return frr, far, thresholds


def _eer_rows(scores: np.ndarray, n_bona: int) -> tuple[np.ndarray, np.ndarray]:
    """EER and threshold of each row of ``scores`` (R, N) laid out as in ``_det_rows``."""
    frr, far, thresholds = _det_rows(scores, n_bona)
    best = np.argmin(np.abs(frr - far), axis=1)[:, None]  # (R, 1) first minimum, as np.argmin
    eer = (np.take_along_axis(frr, best, 1) + np.take_along_axis(far, best, 1)) / 2
    return eer[:, 0], np.take_along_axis(thresholds, best, 1)[:, 0]


def compute_det_curve(bonafide_scores, spoof_scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frr, far, thresholds), each (N + 1,), N = number of trials: the DET curve as the
    official package computes it (module docstring)."""
    bona = _as_scores(bonafide_scores, "bona fide")
    spoof = _as_scores(spoof_scores, "spoof")
    frr, far, thr = _det_rows(np.concatenate([bona, spoof])[None, :], bona.size)
    return frr[0], far[0], thr[0]


def compute_eer(bonafide_scores, spoof_scores) -> tuple[float, float]:
    """(eer as a fraction, threshold): ASVspoof 2021 package convention, ties included."""
    bona = _as_scores(bonafide_scores, "bona fide")
    spoof = _as_scores(spoof_scores, "spoof")
    eer, thr = _eer_rows(np.concatenate([bona, spoof])[None, :], bona.size)
    return float(eer[0]), float(thr[0])


def _resample(bona: np.ndarray, spoof: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One bootstrap replicate (N,): bona fide then spoof, each drawn with replacement."""
    return np.concatenate(
        [
            bona[rng.integers(0, bona.size, bona.size)],
            spoof[rng.integers(0, spoof.size, spoof.size)],
        ]
    )


def bootstrap_eer_ci(
    bonafide_scores,
    spoof_scores,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    max_elements: int = 4_000_000,
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of the EER -> (low, high).

    Each replicate resamples bona fide and spoof trials separately with replacement (class
    sizes kept), from its own generator spawned from ``seed``; the EERs are computed in
    blocks of at most ``max_elements`` scores, so the result depends only on the inputs, n,
    seed and alpha."""
    bona = _as_scores(bonafide_scores, "bona fide")
    spoof = _as_scores(spoof_scores, "spoof")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    # One generator per replicate: results do not depend on the block size.
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]
    block = max(1, max_elements // (bona.size + spoof.size))
    eers = np.empty(n)
    for start in range(0, n, block):
        scores = np.stack([_resample(bona, spoof, g) for g in rngs[start : start + block]])
        eers[start : start + block] = _eer_rows(scores, bona.size)[0]
    low, high = np.quantile(eers, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)
