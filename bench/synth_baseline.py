"""How hard is the synthetic corpus? A simple baseline, trained on LA19 train, scored everywhere.

    OMP_NUM_THREADS=1 python bench/synth_baseline.py                 # generates the default corpus
    python bench/synth_baseline.py --corpus DIR [--json out.json]    # reuses a generated corpus

Features: per band of a 48-band log-mel spectrogram, the mean, standard deviation, 10th and
90th percentile over time and the standard deviation of the deltas (240 values per file,
numpy only); classifiers on standardised features: logistic regression (balanced class
weights) and a one-hidden-layer MLP (64 units), both from scikit-learn.
Reports EER (ASVspoof DET convention: FRR(t) = share of bona fide below t, FAR(t) = share
of spoof at or above t, EER at argmin |FRR - FAR|) on LA19 dev/eval, 2021 LA/DF and ITW,
overall and per attack. The corpus is meant to be learnable but not trivial: clearly better than
chance on LA19 eval, worse on the channel-degraded 2021/ITW-like sets.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shards.synth import generate  # noqa: E402
from shards.synth_dsp import band_matrix, stft  # noqa: E402

LA19 = "LA/ASVspoof2019_LA_cm_protocols/ASVspoof2019.LA.cm.{}.txt"
SETS = {  # name -> (protocol, audio dir, utt column, key column)
    "la19_train": (LA19.format("train.trn"), "LA/ASVspoof2019_LA_train/flac", 1, 4),
    "la19_dev": (LA19.format("dev.trl"), "LA/ASVspoof2019_LA_dev/flac", 1, 4),
    "la19_eval": (LA19.format("eval.trl"), "LA/ASVspoof2019_LA_eval/flac", 1, 4),
    "la21": ("keys/LA/CM/trial_metadata.txt", "ASVspoof2021_LA_eval/flac", 1, 5),
    "df21": ("keys/DF/CM/trial_metadata.txt", "ASVspoof2021_DF_eval/flac", 1, 5),
}
MEL = band_matrix(48)  # (48, 257)


def read_set(root: Path, name: str) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """Audio paths, labels (1 = bona fide) and attacks ("-" for bona fide, "unknown" for
    ITW spoofs) of one set, from its protocol file."""
    if name == "itw":
        with open(root / "release_in_the_wild/meta.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        labels = np.array([r["label"] == "bona-fide" for r in rows], dtype=int)
        return ([root / "release_in_the_wild" / r["file"] for r in rows], labels,
                np.where(labels == 1, "-", "unknown"))
    protocol, audio, utt_col, key_col = SETS[name]
    lines = [ln.split() for ln in (root / protocol).read_text().splitlines() if ln.strip()]
    labels = np.array([p[key_col] == "bonafide" for p in lines], dtype=int)
    attacks = np.array([p[key_col - 1] for p in lines])
    paths = [root / audio / f"{p[utt_col]}.flac" for p in lines]
    return paths, labels, np.where(labels == 1, "-", attacks)


def features(path: Path) -> np.ndarray:
    """Statistics over frames of log-mel energies -> (240,)."""
    x, sr = sf.read(str(path), dtype="float64")
    if sr != 16000:
        raise ValueError(f"{path}: sample rate {sr}, expected 16000")
    logmel = np.log(np.abs(stft(x, 512, 128)) ** 2 @ MEL.T + 1e-8)  # (T, 48)
    pct = np.percentile(logmel, [10, 90], axis=0).ravel()  # floor (pauses) and peaks
    return np.concatenate([logmel.mean(0), logmel.std(0), np.diff(logmel, axis=0).std(0), pct])


def eer(bonafide: np.ndarray, spoof: np.ndarray) -> float:
    """EER (fraction) with the ASVspoof DET convention; higher score = bona fide."""
    scores = np.concatenate([bonafide, spoof])
    is_bona = np.concatenate([np.ones(len(bonafide)), np.zeros(len(spoof))])
    order = np.argsort(scores, kind="mergesort")
    is_bona = is_bona[order]
    # Threshold just above the k-th lowest score (k = 0..n): bona fide below it are rejected,
    # spoofs at or above it are accepted.
    frr = np.r_[0.0, np.cumsum(is_bona)] / len(bonafide)
    far = np.r_[len(spoof), len(spoof) - np.cumsum(1 - is_bona)] / len(spoof)
    k = np.argmin(np.abs(frr - far))
    return float((frr[k] + far[k]) / 2)


def classifiers() -> dict:
    """The two baselines: linear and a small non-linear one (bona fide is often *between*
    attacks in feature space, e.g. band energy too high for one attack, too low for another)."""
    return {
        "logreg": make_pipeline(StandardScaler(), LogisticRegression(
            C=0.3, class_weight="balanced", max_iter=5000)),
        "mlp": make_pipeline(StandardScaler(), MLPClassifier(
            (64,), alpha=1e-2, max_iter=1000, random_state=0)),
    }


def score_sets(clf, data: dict) -> tuple[dict, dict]:
    """EER (%) per held-out set and per attack within it; prints one line per set."""
    overall, per_attack_all = {}, {}
    for name, (feats, labels, attacks) in data.items():
        if name == "la19_train":
            continue
        proba = np.clip(clf.predict_proba(feats)[:, 1], 1e-12, 1 - 1e-12)
        scores = np.log(proba) - np.log1p(-proba)  # log-odds of bona fide
        bona = scores[labels == 1]
        overall[name] = round(100 * eer(bona, scores[labels == 0]), 2)
        per_attack_all[name] = {a: round(100 * eer(bona, scores[attacks == a]), 1)
                                for a in sorted(set(attacks) - {"-", "unknown"})}
        print(f"{name:10s} n={len(labels):4d} bona={labels.sum():4d}  EER {overall[name]:6.2f} %"
              + "".join(f"  {a}:{e:.0f}" for a, e in per_attack_all[name].items()))
    return overall, per_attack_all


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", help="existing synthetic corpus (default: generate one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.corpus) if args.corpus else Path(tmp) / "corpus"
        if not args.corpus:
            summary = generate(root, size="default", seed=args.seed, workers=args.workers)
            results["generate_seconds"] = summary["seconds"]
            print(f"generated {summary['num_files']} files in {summary['seconds']:.1f} s")
        start = time.perf_counter()
        data = {}
        for name in [*SETS, "itw"]:
            paths, labels, attacks = read_set(root, name)
            data[name] = (np.stack([features(p) for p in paths]), labels, attacks)
        results["feature_seconds"] = round(time.perf_counter() - start, 1)
    results["eer_percent"], results["eer_percent_per_attack"] = {}, {}
    for clf_name, clf in classifiers().items():
        clf.fit(*data["la19_train"][:2])
        print(f"-- {clf_name}")
        overall, per_attack = score_sets(clf, data)
        results["eer_percent"][clf_name] = overall
        results["eer_percent_per_attack"][clf_name] = per_attack
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
