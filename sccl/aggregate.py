"""EER aggregation over scored trials: per set, per attack, per condition, pooled and mean.

Pure functions of numpy arrays (no model, no process group). The EER arithmetic lives only in
``sccl.metrics`` (``compute_eer`` and the bootstrap's ``replicate_eer`` share its DET walk;
ASVspoof convention, higher score = bona fide); this module only decides *which* scores go
into each EER and how sets are combined:

- per set: every trial of the set (after the subset filter chosen by the caller);
- per attack: the spoof trials of one attack against *all* bona fide trials of the set
  (the ASVspoof convention: bona fide speech carries no attack label);
- per condition (e.g. LA21/DF21 codec): bona fide and spoof trials sharing the condition;
- pooled EER: one EER over all sets' scores concatenated;
- mean EER: the arithmetic mean of the per-set EERs.
The study's text does not define "pooled EER", so both are reported, named as such.

Detection costs (``sccl.dcf``; ASVspoof 5 and ASVspoof 2019/2021 conventions): min DCF of the
scores, act DCF and Cllr of the scores mapped to log-likelihood ratios, and the min t-DCF table
of a set in tandem with the official ASV scores (``min_tdcf_table``: which CM and ASV trials
enter each cell, as the ASVspoof 2021 package selects them).

Bootstrap CIs resample trials with replacement within each class (class counts kept): per
set with ``sccl.metrics.bootstrap_eer_ci``; for the pooled and mean EERs every set is resampled
independently in the same way and both numbers are recomputed from the same replicate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sccl.asv import AsvScores
from sccl.dcf import act_dcf, cllr, min_dcf, min_tdcf
from sccl.metrics import bootstrap_eer_ci, class_counts, compute_eer, replicate_eer, walk_order


class TrialError(ValueError):
    """A scored set cannot yield an EER (NaN scores, one class only, ...)."""


@dataclass
class Trials:
    """One scored eval set; every array has one row per trial, shape (N,)."""

    name: str
    keys: list[str]
    scores: np.ndarray  # float64 (N,), higher = bona fide
    bonafide: np.ndarray  # bool (N,)
    attacks: np.ndarray  # str (N,), "-" (or "bonafide") for bona fide
    conditions: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. codec (N,)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.bonafide = np.asarray(self.bonafide, dtype=bool)
        self.attacks = np.asarray(self.attacks, dtype=object)
        n = len(self.keys)
        shapes = {"scores": self.scores.shape, "bonafide": self.bonafide.shape,
                  "attacks": self.attacks.shape}
        shapes.update({f"conditions[{k}]": np.shape(v) for k, v in self.conditions.items()})
        for what, shape in shapes.items():
            if shape != (n,):
                raise TrialError(f"set {self.name!r}: {what} has shape {shape}, expected ({n},)")

    def subset(self, mask: np.ndarray) -> Trials:
        """The trials where ``mask`` (bool (N,)) is true, same name."""
        idx = np.flatnonzero(mask)
        return Trials(self.name, [self.keys[i] for i in idx], self.scores[idx],
                      self.bonafide[idx], self.attacks[idx],
                      {k: np.asarray(v, dtype=object)[idx] for k, v in self.conditions.items()})


def check_trials(t: Trials) -> None:
    """Raise TrialError unless ``t`` has finite scores and both classes."""
    bad = np.flatnonzero(~np.isfinite(t.scores))
    if bad.size:
        raise TrialError(f"set {t.name!r}: {bad.size} non-finite score(s), e.g. trial "
                         f"{t.keys[bad[0]]!r} = {t.scores[bad[0]]}")
    n_bona = int(t.bonafide.sum())
    if n_bona == 0 or n_bona == len(t.keys):
        only = "bona fide" if n_bona else "spoof"
        raise TrialError(f"set {t.name!r}: only {only} trials ({len(t.keys)}); "
                         "the EER needs both classes")


def eer_of(scores: np.ndarray, bonafide: np.ndarray) -> tuple[float, float]:
    """(eer, threshold) of scores (N,) with class mask bonafide (N,) via compute_eer."""
    eer, thr = compute_eer(scores[bonafide], scores[~bonafide])
    return float(eer), float(thr)


def per_attack_eer(t: Trials) -> dict[str, dict]:
    """{attack: {"eer", "spoof"}}: each attack's spoof trials vs all bona fide trials."""
    bona = t.scores[t.bonafide]
    out: dict[str, dict] = {}
    spoof_attacks = t.attacks[~t.bonafide]
    spoof_scores = t.scores[~t.bonafide]
    for attack in sorted(set(spoof_attacks.tolist())):
        sel = spoof_scores[spoof_attacks == attack]
        out[str(attack)] = {"eer": float(compute_eer(bona, sel)[0]), "spoof": int(sel.size)}
    return out


def per_condition_eer(t: Trials, key: str) -> dict[str, dict]:
    """{value: {"eer", "bonafide", "spoof"}} over trials sharing condition ``key``.

    A value with only one class gets ``"eer": None`` (undefined) rather than an error: a
    condition breakdown is informative, not the headline number.
    """
    if key not in t.conditions:
        raise TrialError(f"set {t.name!r}: no condition {key!r} (have {sorted(t.conditions)})")
    values = np.asarray(t.conditions[key], dtype=object)
    out: dict[str, dict] = {}
    for value in sorted(set(values.tolist()), key=str):
        m = values == value
        nb, ns = int((m & t.bonafide).sum()), int((m & ~t.bonafide).sum())
        eer = eer_of(t.scores[m], t.bonafide[m])[0] if nb and ns else None
        out[str(value)] = {"eer": eer, "bonafide": nb, "spoof": ns}
    return out


def pooled_eer(sets: list[Trials]) -> float:
    """EER over all sets' scores concatenated (one threshold for every set)."""
    scores = np.concatenate([t.scores for t in sets])
    bona = np.concatenate([t.bonafide for t in sets])
    return eer_of(scores, bona)[0]


def bootstrap_cis(sets: list[Trials], *, n_boot: int = 1000, seed: int = 0,
                  level: float = 0.95) -> dict:
    """Percentile CIs: {"sets": {name: [lo, hi]}, "pooled": [lo, hi], "mean": [lo, hi]}.

    Fractions; ``n_boot`` = 0 gives None for every interval. Reproducible for a given seed.
    A replicate is a vector of draw counts per trial (``sccl.metrics.class_counts``), its EER
    ``sccl.metrics.replicate_eer`` (O(N), no sort).
    """
    if n_boot < 0 or not 0.0 < level < 1.0:
        raise ValueError(f"need n_boot >= 0 and 0 < level < 1; got {n_boot}, {level}")
    if n_boot == 0:
        return {"sets": {t.name: None for t in sets}, "pooled": None, "mean": None}
    alpha = 1.0 - level
    per_set = {t.name: list(bootstrap_eer_ci(t.scores[t.bonafide], t.scores[~t.bonafide],
                                             n=n_boot, seed=seed, alpha=alpha)) for t in sets}
    orders = [walk_order(t.scores, t.bonafide) for t in sets]
    all_scores = np.concatenate([t.scores for t in sets])
    all_bona = np.concatenate([t.bonafide for t in sets])
    pooled_order = walk_order(all_scores, all_bona)
    rng = np.random.default_rng(seed)
    pooled, mean = np.empty(n_boot), np.empty(n_boot)
    for b in range(n_boot):
        counts = [class_counts(t.bonafide, rng) for t in sets]
        mean[b] = np.mean([replicate_eer(t.bonafide[o], c[o])
                           for t, o, c in zip(sets, orders, counts, strict=True)])
        c = np.concatenate(counts)
        pooled[b] = replicate_eer(all_bona[pooled_order], c[pooled_order])
    q = [alpha / 2, 1.0 - alpha / 2]
    return {"sets": per_set, "pooled": [float(x) for x in np.quantile(pooled, q)],
            "mean": [float(x) for x in np.quantile(mean, q)]}


def summarise(sets: list[Trials], *, conditions: dict[str, list[str]] | None = None,
              n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Every number results.json reports for ``sets`` (fractions, not %).

    ``conditions`` maps a set name to the condition keys broken down for it (e.g.
    {"la21": ["codec"]}). Raises TrialError on NaN scores or a one-class set.
    """
    if not sets:
        raise TrialError("no eval sets to summarise")
    names = [t.name for t in sets]
    if len(set(names)) != len(names):
        raise TrialError(f"duplicate set names: {names}")
    for t in sets:
        check_trials(t)
    cis = bootstrap_cis(sets, n_boot=n_boot, seed=seed, level=level)
    out_sets = {}
    for t in sets:
        eer, thr = eer_of(t.scores, t.bonafide)
        entry = {"eer": eer, "threshold": thr, "ci": cis["sets"][t.name],
                 "trials": len(t.keys), "bonafide": int(t.bonafide.sum()),
                 "spoof": int((~t.bonafide).sum()), "per_attack": per_attack_eer(t)}
        for key in (conditions or {}).get(t.name, []):
            entry[f"per_{key}"] = per_condition_eer(t, key)
        out_sets[t.name] = entry
    return {
        "sets": out_sets,
        "pooled_eer": {"eer": pooled_eer(sets), "ci": cis["pooled"],
                       "definition": "EER over all sets' scores concatenated"},
        "mean_eer": {"eer": float(np.mean([s["eer"] for s in out_sets.values()])),
                     "ci": cis["mean"], "definition": "mean of the per-set EERs"},
        "bootstrap": {"replicates": n_boot, "seed": seed, "level": level,
                      "scheme": "resampled within each class of each set"},
    }


POOLED = "Pooled"  # the official packages' name for the row / column over every condition


def detection_costs(t: Trials, llr_maps: dict[str, tuple[float, float]]) -> dict:
    """{"min_dcf": .., "act_dcf<suffix>": .., "cllr<suffix>": ..} of a checked set; each
    ``llr_maps`` item suffix -> (scale, offset) maps scores to LLRs, scale * score + offset."""
    bona, spoof = t.scores[t.bonafide], t.scores[~t.bonafide]
    out = {"min_dcf": min_dcf(bona, spoof)}
    for suffix, (a, b) in llr_maps.items():
        out[f"act_dcf{suffix}"] = act_dcf(a * bona + b, a * spoof + b)
        out[f"cllr{suffix}"] = cllr(a * bona + b, a * spoof + b)
    return out


def min_tdcf_table(t: Trials, asv: AsvScores, subset: str | None) -> dict:
    """Normalised min t-DCF of a set with the ASV scores ``asv``, tabulated like the official
    package: a row per attack (its spoof trials; the ASV spoof trials of that attack) and
    Pooled; for a 2021 file a column per codec (CM and ASV trials of that codec) and Pooled,
    for a 2019 file (legacy t-DCF) the Pooled column only. ``subset`` selects the 2021 ASV
    trials (None = all). A cell without trials of some class is None; the Pooled cell must be
    defined (TrialError otherwise)."""
    legacy = asv.edition == 2019
    codec = None if legacy else t.conditions.get("codec")
    every = np.ones(len(t.keys), dtype=bool)
    columns = ([] if codec is None else sorted(set(codec.tolist()), key=str)) + [POOLED]
    table: dict[str, dict] = {}
    for attack in [*sorted(set(t.attacks[~t.bonafide].tolist())), POOLED]:
        is_attack = every if attack == POOLED else t.attacks == attack
        table[attack] = {}
        for c in columns:
            in_c = every if c == POOLED else codec == c
            rates = asv.trials(attack=None if attack == POOLED else attack,
                               codec=None if c == POOLED else c, subset=subset)
            bona, spoof = t.bonafide & in_c, ~t.bonafide & is_attack & in_c
            try:
                value = min_tdcf(t.scores[bona], t.scores[spoof], *rates, legacy=legacy)
            except ValueError as err:
                if attack == c == POOLED:
                    raise TrialError(f"set {t.name!r}, ASV scores {asv.path}: {err}") from None
                value = float("nan")
            table[attack][c] = None if np.isnan(value) else value
    if table[POOLED][POOLED] is None:
        raise TrialError(f"set {t.name!r}: no min t-DCF with {asv.path} (subset {subset}): "
                         "it lacks target, nontarget or spoof trials")
    return {"pooled": table[POOLED][POOLED], "asv_scores": asv.path, "asv_subset": subset,
            "formulation": "ASVspoof 2019 (legacy)" if legacy else "ASVspoof 2021 (revised)",
            "table": table}
