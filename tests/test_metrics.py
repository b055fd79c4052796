from __future__ import annotations

import numpy as np
import pytest
import torch

from sccl.metrics import bootstrap_eer_ci, compute_det_curve, compute_eer


def brute_force_det(bona, spoof):
    """The official walk written as loops: order trials by score with bona fide first on
    ties, then for every cut k count errors trial by trial."""
    trials = [(float(s), 0) for s in bona] + [(float(s), 1) for s in spoof]
    trials.sort(key=lambda tr: (tr[0], tr[1]))  # class 0 (bona fide) before 1 on equal scores
    frr, far, thr = [], [], []
    for k in range(len(trials) + 1):
        rejected_bona = sum(1 for s, c in trials[:k] if c == 0)
        accepted_spoof = sum(1 for s, c in trials[k:] if c == 1)
        frr.append(rejected_bona / len(bona))
        far.append(accepted_spoof / len(spoof))
        thr.append(trials[k - 1][0] if k else trials[0][0] - 0.001)
    return frr, far, thr


def brute_force_eer(bona, spoof):
    frr, far, thr = brute_force_det(bona, spoof)
    best = 0
    for k in range(1, len(frr)):
        if abs(frr[k] - far[k]) < abs(frr[best] - far[best]):  # first minimum wins
            best = k
    return (frr[best] + far[best]) / 2, thr[best]


def _cases():
    rng = np.random.default_rng(0)
    yield "gaussian", rng.normal(1, 1, 40), rng.normal(-1, 1, 70)
    yield "ties", rng.integers(0, 5, 30).astype(float), rng.integers(0, 4, 50).astype(float)
    yield (
        "ties_unbalanced",
        rng.integers(0, 3, 7).astype(float),
        rng.integers(0, 3, 90).astype(float),
    )
    yield "all_equal", np.full(5, 0.5), np.full(9, 0.5)
    yield "one_each_ordered", np.array([2.0]), np.array([1.0])
    yield "one_each_reversed", np.array([1.0]), np.array([2.0])
    yield "one_each_tied", np.array([1.0]), np.array([1.0])
    yield "separated", np.array([3.0, 4.0, 5.0]), np.array([-1.0, 0.0, 1.0, 2.0])
    yield "inverted", np.array([-3.0, -2.0]), np.array([1.0, 2.0, 3.0])


CASES = {name: (b, s) for name, b, s in _cases()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_eer_matches_brute_force(name):
    bona, spoof = CASES[name]
    eer, thr = compute_eer(bona, spoof)
    ref_eer, ref_thr = brute_force_eer(bona, spoof)
    assert eer == pytest.approx(ref_eer, abs=1e-12)
    assert thr == pytest.approx(ref_thr, abs=1e-12)
    frr, far, thresholds = compute_det_curve(bona, spoof)
    ref = brute_force_det(bona, spoof)
    for ours, theirs in zip((frr, far, thresholds), ref, strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-12)


def test_known_values():
    assert compute_eer(CASES["separated"][0], CASES["separated"][1]) == (0.0, 2.0)
    # ties are resolved with bona fide first (pessimistic): the official package gives 1.0
    assert compute_eer([0.5] * 5, [0.5] * 9)[0] == 1.0
    assert compute_eer([1.0], [2.0])[0] == 1.0
    assert compute_eer([0.9, 0.8, 0.3], [0.1, 0.4, 0.2, 0.85])[0] == pytest.approx(
        (1 / 3 + 1 / 4) / 2
    )


def test_input_types_agree():
    bona, spoof = CASES["gaussian"]
    ref = compute_eer(bona, spoof)
    assert compute_eer(list(bona), list(spoof)) == ref
    assert compute_eer(torch.tensor(bona), torch.tensor(spoof)) == ref
    f32 = compute_eer(bona.astype(np.float32), torch.tensor(spoof, dtype=torch.float32))
    assert f32[0] == ref[0]


@pytest.mark.parametrize(
    "bona, spoof, match",
    [
        ([], [1.0], "no bona fide"),
        ([1.0], [], "no spoof"),
        ([1.0, float("nan")], [0.0], "NaN"),
        ([1.0], [0.0, float("nan")], "spoof scores are NaN"),
        ([[1.0, 2.0]], [0.0], "1-D"),
    ],
)
def test_errors(bona, spoof, match):
    with pytest.raises(ValueError, match=match):
        compute_eer(bona, spoof)


def test_bootstrap_reproducible_and_sane():
    rng = np.random.default_rng(1)
    bona, spoof = rng.normal(1, 1, 200), rng.normal(-1, 1, 300)
    a = bootstrap_eer_ci(bona, spoof, n=200, seed=3)
    assert a == bootstrap_eer_ci(bona, spoof, n=200, seed=3)
    assert a != bootstrap_eer_ci(bona, spoof, n=200, seed=4)
    eer = compute_eer(bona, spoof)[0]
    assert a[0] < eer < a[1] and a[1] - a[0] < 0.1


@pytest.mark.parametrize("seed", range(4))
def test_bootstrap_equals_explicit_resamples_with_ties(seed):
    # Independent reference: draw each replicate's resample explicitly (bona fide draws, then
    # spoof draws, from the replicate's own spawned generator) and sort it with compute_eer.
    rng = np.random.default_rng(seed)
    bona = rng.integers(0, 8, int(rng.integers(2, 30))).astype(float)  # ties across classes
    spoof = rng.integers(-2, 6, int(rng.integers(2, 50))).astype(float)
    eers = []
    for s in np.random.SeedSequence(seed).spawn(60):
        g = np.random.default_rng(s)
        b = bona[g.integers(0, bona.size, bona.size)]
        eers.append(compute_eer(b, spoof[g.integers(0, spoof.size, spoof.size)])[0])
    expect = tuple(float(x) for x in np.quantile(eers, [0.025, 0.975]))
    assert bootstrap_eer_ci(bona, spoof, n=60, seed=seed) == expect


def test_bootstrap_argument_checks():
    with pytest.raises(ValueError, match="n must"):
        bootstrap_eer_ci([1.0], [0.0], n=0)
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_eer_ci([1.0], [0.0], alpha=1.0)
    with pytest.raises(ValueError, match="no spoof"):
        bootstrap_eer_ci([1.0], [])
