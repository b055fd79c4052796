"""sccl.dcf against implementations written here from the official formulas (loops over
every operating point, trial by trial), on random scores, ties, tiny sets and degenerate
inputs, plus small cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sccl.dcf import act_dcf, asv_error_rates, cllr, llr_threshold, min_dcf, min_tdcf

P_SPOOF = 0.05
P_TAR, P_NON = 0.95 * 0.99, 0.95 * 0.01


def ref_det(bona, spoof):
    """Every operating point of the packages' DET walk: trials ordered by score, bona fide
    first on ties; after k trials the first k are rejected."""
    trials = sorted([(float(s), 0) for s in bona] + [(float(s), 1) for s in spoof])
    points = []
    for k in range(len(trials) + 1):
        miss = sum(1 for _, c in trials[:k] if c == 0) / len(bona)
        fa = sum(1 for _, c in trials[k:] if c == 1) / len(spoof)
        thr = trials[k - 1][0] if k else trials[0][0] - 0.001
        points.append((miss, fa, thr))
    return points


def ref_asv_rates(tar, non, spoof):
    points = ref_det(tar, non)
    best = min(range(len(points)), key=lambda k: (abs(points[k][0] - points[k][1]), k))
    t = points[best][2]
    pfa = sum(s >= t for s in non) / len(non)
    pmiss = sum(s < t for s in tar) / len(tar)
    pfa_spoof = sum(s >= t for s in spoof) / len(spoof)
    return pfa, pmiss, pfa_spoof


def ref_min_tdcf(bona, spoof, tar, non, asv_spoof, legacy):
    pfa, pmiss, pfa_spoof = ref_asv_rates(tar, non, asv_spoof)
    costs = []
    for miss_cm, fa_cm, _ in ref_det(bona, spoof):
        if legacy:  # Kinnunen et al. 2018 / ASVspoof 2019 plan: costs of CM and ASV errors
            c1 = P_TAR * (1 - 1 * pmiss) - P_NON * 10 * pfa
            c2 = 10 * P_SPOOF * pfa_spoof
            costs.append((c1 * miss_cm + c2 * fa_cm) / min(c1, c2))
        else:  # Kinnunen et al. 2020 / ASVspoof 2021 plan: tandem costs
            c0 = P_TAR * 1 * pmiss + P_NON * 10 * pfa
            c1, c2 = P_TAR * 1 - c0, P_SPOOF * 10 * pfa_spoof
            costs.append((c0 + c1 * miss_cm + c2 * fa_cm) / (c0 + min(c1, c2)))
    # a zero normaliser (an ASV that rejects every spoof) makes 0/0 points: the package's
    # np.argmin then picks the first NaN
    return float("nan") if any(math.isnan(c) for c in costs) else min(costs)


def ref_min_dcf(bona, spoof, p=P_SPOOF, cm=1.0, cf=10.0):
    best = min(cm * miss * (1 - p) + cf * fa * p for miss, fa, _ in ref_det(bona, spoof))
    return best / min(cm * (1 - p), cf * p)


def ref_act_dcf(bona, spoof, p=P_SPOOF, cm=1.0, cf=10.0):
    t = math.log(cf * p / (cm * (1 - p)))  # Bayes threshold on LLRs
    miss = sum(s < t for s in bona) / len(bona)
    fa = sum(s >= t for s in spoof) / len(spoof)
    return (cm * (1 - p) * miss + cf * p * fa) / min(cm * (1 - p), cf * p)


def ref_cllr(bona, spoof):
    tb = sum(math.log2(1 + math.exp(-s)) for s in bona) / len(bona)
    ts = sum(math.log2(1 + math.exp(s)) for s in spoof) / len(spoof)
    return (tb + ts) / 2


def _cm_cases():
    rng = np.random.default_rng(1)
    yield "gaussian", rng.normal(2, 1.5, 60), rng.normal(-1, 1.5, 140)
    yield "ties", rng.integers(-3, 4, 40).astype(float), rng.integers(-4, 2, 70).astype(float)
    yield "ties_few_bona", rng.integers(0, 3, 4).astype(float), rng.integers(0, 3, 50) * 1.0
    yield "one_each", np.array([1.0]), np.array([-2.0])
    yield "one_each_reversed", np.array([-2.0]), np.array([1.0])
    yield "tiny", np.array([0.3, -1.0]), np.array([0.2, 0.3, 5.0])
    yield "separated", np.array([3.0, 4.0, 5.0]), np.array([-1.0, 0.0, 1.0])
    yield "inverted", np.array([-3.0, -2.0, -1.5]), np.array([1.0, 2.0, 3.0, 4.0])
    yield "all_bona_above_threshold", np.array([0.0, 1.0]), np.array([2.0, 3.0])


CM = {name: (b, s) for name, b, s in _cm_cases()}
# t-DCF refuses fewer than 3 distinct CM scores (test_refused_inputs)
CM_SOFT = sorted(n for n, (b, s) in CM.items() if np.unique(np.r_[b, s]).size >= 3)


def _asv_cases():
    rng = np.random.default_rng(2)
    yield "gaussian", rng.normal(4, 2, 50), rng.normal(-4, 2, 80), rng.normal(2, 2.5, 60)
    yield "ties", rng.integers(0, 6, 30) * 1.0, rng.integers(-3, 3, 30) * 1.0, \
        rng.integers(-1, 5, 20) * 1.0
    yield "tiny", np.array([2.0]), np.array([-1.0, 1.0]), np.array([0.5])
    yield "separated", np.array([2.0, 3.0]), np.array([0.0, 1.0]), np.array([1.5, 2.5])


ASV = {name: (t, n, s) for name, t, n, s in _asv_cases()}


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("asv", sorted(ASV))
@pytest.mark.parametrize("cm", CM_SOFT)
def test_min_tdcf_matches_formula(cm, asv, legacy):
    bona, spoof = CM[cm]
    tar, non, asv_spoof = ASV[asv]
    ours = min_tdcf(bona, spoof, tar, non, asv_spoof, legacy=legacy)
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = ref_min_tdcf(bona, spoof, tar, non, asv_spoof, legacy)
    assert ours == pytest.approx(ref, abs=1e-9, nan_ok=True)


@pytest.mark.parametrize("cm", sorted(CM))
def test_dcf_and_cllr_match_formulas(cm):
    bona, spoof = CM[cm]
    assert min_dcf(bona, spoof) == pytest.approx(ref_min_dcf(bona, spoof), abs=1e-9)
    assert act_dcf(bona, spoof) == pytest.approx(ref_act_dcf(bona, spoof), abs=1e-9)
    assert cllr(bona, spoof) == pytest.approx(ref_cllr(bona, spoof), abs=1e-9)
    for p, cmiss, cfa in ((0.5, 1.0, 1.0), (0.01, 2.0, 3.0)):
        kw = dict(p_spoof=p, c_miss=cmiss, c_fa=cfa)
        assert min_dcf(bona, spoof, **kw) == pytest.approx(
            ref_min_dcf(bona, spoof, p, cmiss, cfa), abs=1e-9)
        assert act_dcf(bona, spoof, **kw) == pytest.approx(
            ref_act_dcf(bona, spoof, p, cmiss, cfa), abs=1e-9)


def test_asv_operating_point_by_hand():
    # tar {2,3} vs non {0,1}: EER 0 after rejecting {0,1}; the package's threshold is the last
    # rejected score (1), and ">=" then counts that nontarget as accepted.
    r = asv_error_rates([2.0, 3.0], [0.0, 1.0], [1.5, 2.5])
    assert (r.threshold, r.pfa, r.pmiss, r.pfa_spoof, r.pmiss_spoof) == (1.0, 0.5, 0.0, 1.0, 0.0)


def test_min_tdcf_by_hand():
    tar, non, asv_spoof = ASV["separated"]  # Pfa_asv 0.5, Pmiss_asv 0, Pfa_spoof_asv 1
    bona, spoof = CM["separated"]  # a perfect CM: Pmiss_cm = Pfa_cm = 0 at one cut
    c0 = P_NON * 10 * 0.5
    assert min_tdcf(bona, spoof, tar, non, asv_spoof) == pytest.approx(
        c0 / (c0 + min(P_TAR - c0, P_SPOOF * 10)), abs=1e-12)
    assert min_tdcf(bona, spoof, tar, non, asv_spoof, legacy=True) == 0.0
    # an inverted CM can do no better than passing everything (1.0) or blocking everything
    bona, spoof = CM["inverted"]
    assert min_tdcf(bona, spoof, tar, non, asv_spoof) == pytest.approx(1.0, abs=1e-12)
    assert min_tdcf(bona, spoof, tar, non, asv_spoof, legacy=True) == pytest.approx(1.0)


def test_dcf_by_hand():
    # defaults: beta = 0.95 / 0.5, act threshold -log(1.9) = -0.642; normaliser 0.5
    assert llr_threshold() == pytest.approx(-math.log(1.9))
    bona, spoof = [0.3, -1.0], [0.2, 0.3, 5.0]
    # min DCF: reject everything: 0.95 * 1 / 0.5 = 1.9; accept everything: 0.5 / 0.5 = 1.0;
    # reject {-1.0}: (0.95 * 0.5 + 0.5 * 1) / 0.5 = 1.95 -> min is 1.0
    assert min_dcf(bona, spoof) == pytest.approx(1.0)
    # act DCF at -0.642: bona -1.0 missed (1/2), all spoof accepted: (0.475 + 0.5) / 0.5
    assert act_dcf(bona, spoof) == pytest.approx(1.95)
    assert min_dcf([3.0, 4.0], [1.0, 2.0]) == 0.0
    assert act_dcf([llr_threshold()], [llr_threshold() - 1e-9]) == 0.0  # bona fide at s* passes


def test_cllr_by_hand():
    assert cllr([0.0, 0.0], [0.0]) == pytest.approx(1.0)  # uninformative LLRs cost 1 bit
    assert cllr([50.0], [-50.0]) == pytest.approx(0.0, abs=1e-20)
    assert cllr([math.log(3)], [-math.log(3)]) == pytest.approx(math.log2(4 / 3))
    # far beyond exp's range the package's log1p(exp(x)) is inf; logaddexp stays exact
    assert cllr([-1000.0], [1000.0]) == pytest.approx(1000 / math.log(2))


def test_empty_class_gives_nan():
    some = np.array([0.0, 1.0, 2.0])
    for fn in (min_dcf, act_dcf, cllr):
        assert math.isnan(fn([], some)) and math.isnan(fn(some, []))
    for empty in range(5):
        args = [some] * 5
        args[empty] = np.array([])
        assert math.isnan(min_tdcf(*args))


def test_refused_inputs():
    tar, non, asv_spoof = ASV["gaussian"]
    with pytest.raises(ValueError, match="soft scores"):
        min_tdcf([1.0, 1.0], [0.0, 0.0], tar, non, asv_spoof)  # binary decisions
    with pytest.raises(ValueError, match="inf"):
        min_tdcf([1.0, np.inf], [0.0, 0.5], tar, non, asv_spoof)
    for fn in (min_dcf, act_dcf, cllr):
        with pytest.raises(ValueError, match="NaN"):
            fn([1.0, np.nan], [0.0])
    with pytest.raises(ValueError, match="NaN"):
        min_tdcf([1.0, 2.0], [0.0], tar, [np.nan], asv_spoof)
    with pytest.raises(ValueError, match="p_spoof"):
        min_dcf([1.0], [0.0], p_spoof=1.0)
    with pytest.raises(ValueError, match="costs"):
        act_dcf([1.0], [0.0], c_fa=0.0)
    with pytest.raises(ValueError, match="1-D"):
        cllr([[1.0]], [0.0])


def test_negative_weight_is_refused():
    # an inverted ASV (targets below nontargets) misses 95 % of targets at its EER threshold
    # (the highest target): C1 < 0 in both formulations; the package stops, so do we
    bona, spoof = CM["gaussian"]
    tar = [-5.0] * 19 + [-4.0]
    for legacy in (False, True):
        with pytest.raises(ValueError, match="negative t-DCF weights"):
            min_tdcf(bona, spoof, tar, [4.0, 5.0, 6.0], [0.0], legacy=legacy)


def test_large_random_sets_agree_with_a_vectorised_reference():
    """1e4 scores with heavy ties: a numpy transcription of the formulas (not the module's)."""
    rng = np.random.default_rng(3)
    bona = np.round(rng.normal(1, 1, 2000), 1)
    spoof = np.round(rng.normal(-1, 1, 8000), 1)
    order = np.lexsort((np.r_[np.zeros(bona.size), np.ones(spoof.size)], np.r_[bona, spoof]))
    is_bona = order < bona.size
    miss = np.r_[0, np.cumsum(is_bona)] / bona.size
    fa = 1 - np.r_[0, np.cumsum(~is_bona)] / spoof.size
    assert min_dcf(bona, spoof) == pytest.approx(
        np.min(0.95 * miss + 0.5 * fa) / 0.5, abs=1e-9)
