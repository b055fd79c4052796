"""Detection-cost metrics of the ASVspoof evaluation packages: min t-DCF, min/act DCF, Cllr.

Numpy in, float out, higher score = bona fide; each is equal to the official package's value
on the same scores (the ASVspoof 2021 ``eval-package`` for t-DCF, the ASVspoof 5
``evaluation-package`` for DCF and Cllr). Their conventions, stated here once:

DET curve (shared with ``sccl.metrics``' EER): stable-sort bona fide then spoof scores and
walk the list; after k trials Pmiss = bona fide among the first k / #bona fide and
Pfa = spoof among the rest / #spoof, k = 0..N. Minimum costs are taken over these N + 1
points, so among tied scores bona fide counts as rejected before spoof.

ASV operating point (t-DCF): the EER threshold t of the ASV target-vs-nontarget scores as
``sccl.metrics.compute_eer`` returns it (the last rejected score of the EER cut, or the
lowest score - 0.001), then Pfa_asv = P(nontarget >= t), Pmiss_asv = P(target < t),
Pfa_spoof_asv = P(spoof >= t) = 1 - Pmiss_spoof_asv.

min t-DCF, revised (ASVspoof 2021 LA, ``legacy=False``), priors Pspoof = 0.05,
Ptar = 0.95 * 0.99, Pnon = 0.95 * 0.01, costs Cmiss = 1, Cfa = 10, Cfa_spoof = 10:
    C0 = Ptar Cmiss Pmiss_asv + Pnon Cfa Pfa_asv,  C1 = Ptar Cmiss - C0,
    C2 = Pspoof Cfa_spoof Pfa_spoof_asv,
    t-DCF(s) = (C0 + C1 Pmiss_cm(s) + C2 Pfa_cm(s)) / (C0 + min(C1, C2)).
min t-DCF, legacy (ASVspoof 2019, ``legacy=True``), same priors, Cmiss_asv = 1,
Cfa_asv = 10, Cmiss_cm = 1, Cfa_cm = 10:
    C1 = Ptar (Cmiss_cm - Cmiss_asv Pmiss_asv) - Pnon Cfa_asv Pfa_asv,
    C2 = Cfa_cm Pspoof (1 - Pmiss_spoof_asv),
    t-DCF(s) = (C1 Pmiss_cm(s) + C2 Pfa_cm(s)) / min(C1, C2).
min DCF (ASVspoof 5 track 1), defaults Pspoof = 0.05, Cmiss = 1, Cfa = 10:
    DCF(s) = (Cmiss (1 - Pspoof) Pmiss(s) + Cfa Pspoof Pfa(s)) / min(Cmiss (1 - Pspoof), Cfa Pspoof).
act DCF: the same cost at the Bayes threshold for log-likelihood ratios,
    s* = -log(beta), beta = Cmiss (1 - Pspoof) / (Cfa Pspoof), Pmiss = P(bona < s*),
    Pfa = P(spoof >= s*).
Cllr (bits) = (mean log(1 + e^-bona) + mean log(1 + e^spoof)) / (2 log 2), scores read as
    natural-log LLRs; computed as logaddexp so that it stays finite where the package's
    log1p(exp(.)) overflows (|LLR| > ~709), identical elsewhere.

Inputs the packages refuse are ValueErrors here too: NaN scores everywhere, inf CM scores and
fewer than 3 distinct CM scores for t-DCF ("hard decisions, not scores"), negative t-DCF
weights. A class without trials gives NaN, as the 2021 package's per-condition tables and
the ASVspoof 5 ``*_full`` tables do. A zero normaliser (a perfect ASV) gives what numpy
gives the package: NaN or inf.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from sccl.metrics import compute_det_curve, compute_eer

P_SPOOF = 0.05
P_TAR = (1 - P_SPOOF) * 0.99
P_NON = (1 - P_SPOOF) * 0.01
C_MISS, C_FA, C_FA_SPOOF = 1.0, 10.0, 10.0  # revised t-DCF (2021) and DCF (ASVspoof 5)
C_MISS_ASV, C_FA_ASV, C_MISS_CM, C_FA_CM = 1.0, 10.0, 1.0, 10.0  # legacy t-DCF (2019)


class AsvRates(NamedTuple):
    """ASV error rates at its EER threshold (fractions)."""

    threshold: float
    pfa: float  # nontarget accepted
    pmiss: float  # target rejected
    pmiss_spoof: float  # spoof rejected
    pfa_spoof: float  # spoof accepted


def _scores(x, name: str) -> np.ndarray:
    """1-D float64 array, possibly empty; NaN is an error (no package gives it a meaning)."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} scores must be 1-D, got shape {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError(f"{int(np.isnan(arr).sum())} of {arr.size} {name} scores are NaN")
    return arr


def _check_costs(p_spoof: float, c_miss: float, c_fa: float) -> None:
    if not 0.0 < p_spoof < 1.0:
        raise ValueError(f"p_spoof must be in (0, 1), got {p_spoof!r}")
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"costs must be positive, got c_miss={c_miss!r}, c_fa={c_fa!r}")


def asv_error_rates(asv_tar, asv_non, asv_spoof) -> AsvRates:
    """The ASV operating point of the t-DCF (module docstring); all three sets non-empty."""
    tar, non = _scores(asv_tar, "ASV target"), _scores(asv_non, "ASV nontarget")
    spoof = _scores(asv_spoof, "ASV spoof")
    if not (tar.size and non.size and spoof.size):
        raise ValueError("ASV error rates need target, nontarget and spoof scores")
    t = compute_eer(tar, non)[1]
    pmiss_spoof = float(np.mean(spoof < t))
    return AsvRates(t, float(np.mean(non >= t)), float(np.mean(tar < t)), pmiss_spoof,
                    float(np.mean(spoof >= t)))


def _tdcf_weights(r: AsvRates, legacy: bool) -> tuple[float, float, float, float]:
    """(C0, C1, C2, normaliser) of the normalised t-DCF curve (C0 + C1 Pmiss + C2 Pfa) / norm."""
    if legacy:
        c0 = 0.0
        c1 = P_TAR * (C_MISS_CM - C_MISS_ASV * r.pmiss) - P_NON * C_FA_ASV * r.pfa
        c2 = C_FA_CM * P_SPOOF * (1 - r.pmiss_spoof)
        norm = min(c1, c2)
    else:
        c0 = P_TAR * C_MISS * r.pmiss + P_NON * C_FA * r.pfa
        c1 = P_TAR * C_MISS - c0
        c2 = P_SPOOF * C_FA_SPOOF * r.pfa_spoof
        norm = c0 + min(c1, c2)
    if min(c0, c1, c2) < 0:
        raise ValueError(f"negative t-DCF weights (C0={c0}, C1={c1}, C2={c2}): "
                         f"check the ASV scores ({r})")
    return c0, c1, c2, norm


def min_tdcf(bona_cm, spoof_cm, asv_tar, asv_non, asv_spoof, *, legacy: bool = False) -> float:
    """Normalised minimum t-DCF of a CM in tandem with the ASV whose scores are given.

    legacy=False: the revised t-DCF of the ASVspoof 2021 package; legacy=True: the ASVspoof
    2019 one (formulas and costs in the module docstring). NaN when any of the five sets is
    empty."""
    bona, spoof = _scores(bona_cm, "bona fide"), _scores(spoof_cm, "spoof")
    asv = [_scores(a, n) for a, n in ((asv_tar, "ASV target"), (asv_non, "ASV nontarget"),
                                      (asv_spoof, "ASV spoof"))]
    if not (bona.size and spoof.size and all(a.size for a in asv)):
        return float("nan")
    cm = np.concatenate([bona, spoof])
    if not np.isfinite(cm).all():
        raise ValueError("CM scores contain inf: t-DCF needs finite scores")
    pmiss, pfa, thresholds = compute_det_curve(bona, spoof)  # thresholds[1:]: sorted scores
    if np.count_nonzero(np.diff(thresholds[1:])) + 1 < 3:
        raise ValueError("fewer than 3 distinct CM scores: t-DCF needs soft scores, "
                         "not hard decisions")
    c0, c1, c2, norm = _tdcf_weights(asv_error_rates(*asv), legacy)
    with np.errstate(divide="ignore", invalid="ignore"):
        curve = (c0 + c1 * pmiss + c2 * pfa) / norm  # (N + 1,)
    return float(curve[np.argmin(curve)])  # argmin returns the first NaN, like the package


def min_dcf(bona, spoof, *, p_spoof: float = P_SPOOF, c_miss: float = C_MISS,
            c_fa: float = C_FA) -> float:
    """Normalised minimum DCF of ASVspoof 5 (module docstring); NaN without both classes."""
    _check_costs(p_spoof, c_miss, c_fa)
    bona, spoof = _scores(bona, "bona fide"), _scores(spoof, "spoof")
    if not (bona.size and spoof.size):
        return float("nan")
    pmiss, pfa, _ = compute_det_curve(bona, spoof)
    cost = c_miss * (1 - p_spoof) * pmiss + c_fa * p_spoof * pfa  # (N + 1,)
    return float(cost.min() / min(c_miss * (1 - p_spoof), c_fa * p_spoof))


def llr_threshold(*, p_spoof: float = P_SPOOF, c_miss: float = C_MISS,
                  c_fa: float = C_FA) -> float:
    """Bayes decision threshold on LLRs for the costs: -log(Cmiss (1-Pspoof) / (Cfa Pspoof))."""
    _check_costs(p_spoof, c_miss, c_fa)
    return float(-np.log(c_miss * (1 - p_spoof) / (c_fa * p_spoof)))


def act_dcf(bona, spoof, *, p_spoof: float = P_SPOOF, c_miss: float = C_MISS,
            c_fa: float = C_FA) -> float:
    """Normalised actual DCF: scores read as LLRs, decided at ``llr_threshold``; bona fide
    at the threshold is accepted, as in the package. NaN without both classes."""
    t = llr_threshold(p_spoof=p_spoof, c_miss=c_miss, c_fa=c_fa)
    bona, spoof = _scores(bona, "bona fide"), _scores(spoof, "spoof")
    if not (bona.size and spoof.size):
        return float("nan")
    cost = c_miss * (1 - p_spoof) * np.mean(bona < t) + c_fa * p_spoof * np.mean(spoof >= t)
    return float(cost / min(c_miss * (1 - p_spoof), c_fa * p_spoof))


def cllr(bona, spoof) -> float:
    """Log-likelihood-ratio cost in bits (module docstring); NaN without both classes.
    1.0 for an uninformative system that outputs 0, 0 for a perfect, confident one."""
    bona, spoof = _scores(bona, "bona fide"), _scores(spoof, "spoof")
    if not (bona.size and spoof.size):
        return float("nan")
    bits = np.mean(np.logaddexp(0.0, -bona)) + np.mean(np.logaddexp(0.0, spoof))
    return float(bits / (2 * np.log(2)))
