"""Synthetic corpus: layouts and protocol formats as released, determinism, attacks, resume."""

from __future__ import annotations

import csv
import importlib.util
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sccl.asv import read_asv_scores
from shards.errors import ShardsError
from shards.synth import MARKER, generate
from shards.synth_attacks import ATTACKS, EVAL_ATTACKS, TRAIN_ATTACKS, Utterance, apply_attack
from shards.synth_channel import DF_CODECS, LA21_CODECS, df_compression, la21_channel
from shards.synth_dsp import SR, stft
from shards.synth_layout import PART_BY_KEY
from shards.synth_speech import make_speaker, plan_utterance, record, render

LA19_PROTOCOLS = {
    "train": "LA/ASVspoof2019_LA_cm_protocols/ASVspoof2019.LA.cm.train.trn.txt",
    "dev": "LA/ASVspoof2019_LA_cm_protocols/ASVspoof2019.LA.cm.dev.trl.txt",
    "eval": "LA/ASVspoof2019_LA_cm_protocols/ASVspoof2019.LA.cm.eval.trl.txt",
}
LA21_KEYS = "keys/LA/CM/trial_metadata.txt"
DF21_KEYS = "keys/DF/CM/trial_metadata.txt"
ITW_META = "release_in_the_wild/meta.csv"
AS5_PROTOCOLS = {"as5_train": ("ASVspoof5.train.tsv", "flac_T"),
                 "as5_dev": ("ASVspoof5.dev.track_1.tsv", "flac_D"),
                 "as5_eval": ("ASVspoof5.eval.track_1.tsv", "flac_E_eval")}
LA19_ASV = "LA/ASVspoof2019_LA_asv_scores/ASVspoof2019.LA.asv.{}.gi.trl.scores.txt"


def _lines(path: Path) -> list[list[str]]:
    text = path.read_text()
    assert text.endswith("\n") and "\r" not in text and "  " not in text
    return [ln.split(" ") for ln in text.splitlines()]


def _itw_rows(root: Path) -> list[dict]:
    with open(root / ITW_META, newline="") as f:
        return list(csv.DictReader(f))


def _listed(root: Path) -> dict[str, tuple[str, str, str]]:
    """Every listed audio file -> (dataset key, label, attack as in its protocol)."""
    out = {}
    for split, rel in LA19_PROTOCOLS.items():
        for _spk, utt, _dash, system, key in _lines(root / rel):
            out[f"LA/ASVspoof2019_LA_{split}/flac/{utt}.flac"] = (f"la19_{split}", key, system)
    for cols in _lines(root / LA21_KEYS):
        out[f"ASVspoof2021_LA_eval/flac/{cols[1]}.flac"] = ("la21", cols[5], cols[4])
    for cols in _lines(root / DF21_KEYS):
        out[f"ASVspoof2021_DF_eval/flac/{cols[1]}.flac"] = ("df21", cols[5], cols[4])
    for r in _itw_rows(root):
        out[f"release_in_the_wild/{r['file']}"] = ("itw", r["label"], "-")
    for key, (name, audio) in AS5_PROTOCOLS.items():
        for cols in _lines(root / "ASVspoof5_protocols" / name):
            out[f"{audio}/{cols[1]}.flac"] = (key, cols[8], "-" if cols[8] == "bonafide" else cols[7])
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth") / "corpus"
    return root, generate(root, size="tiny", seed=0, workers=1)


def test_protocol_formats_and_ids(tiny):
    root, _ = tiny
    ids = []
    for split, rel in LA19_PROTOCOLS.items():
        prefix = {"train": "LA_T_", "dev": "LA_D_", "eval": "LA_E_"}[split]
        for cols in _lines(root / rel):
            assert len(cols) == 5 and cols[2] == "-", cols
            assert re.fullmatch(r"LA_\d{4}", cols[0]) and re.fullmatch(prefix + r"\d{7}", cols[1])
            assert (cols[3], cols[4]) == ("-", "bonafide") or (
                re.fullmatch(r"A\d\d", cols[3]) and cols[4] == "spoof"), cols
            ids.append(cols[1])
    for cols in _lines(root / LA21_KEYS):
        assert len(cols) == 8 and re.fullmatch(r"LA_E_\d{7}", cols[1]), cols
        assert cols[2] in LA21_CODECS and cols[6] in ("trim", "notrim")
        assert (cols[3] == "-") == (cols[2] == "none")
        assert cols[4] == "bonafide" if cols[5] == "bonafide" else re.fullmatch(r"A\d\d", cols[4])
        ids.append(cols[1])
    for cols in _lines(root / DF21_KEYS):
        assert len(cols) == 13 and re.fullmatch(r"DF_E_\d{7}", cols[1]) and cols[9:] == ["-"] * 4
        assert cols[2] in DF_CODECS and cols[3] in ("asvspoof", "vcc2018", "vcc2020")
        assert (cols[4], cols[8]) == ("-", "bonafide") if cols[5] == "bonafide" else cols[8] != "bonafide"
        ids.append(cols[1])
    assert len(ids) == len(set(ids)), "utterance ids must be unique across all sets"
    for rel in (LA21_KEYS, DF21_KEYS):
        assert {c[7] for c in _lines(root / rel)} == {"progress", "eval", "hidden_track"}
    assert (root / ITW_META).read_text().startswith("file,speaker,label\n")
    rows = _itw_rows(root)
    assert [r["file"] for r in rows] == [f"{i}.wav" for i in range(len(rows))]
    assert {r["label"] for r in rows} == {"bona-fide", "spoof"}
    assert all(re.fullmatch(r"Speaker \d\d", r["speaker"]) for r in rows)
    for key, (name, _) in AS5_PROTOCOLS.items():  # the released 10-column layout
        letter = name.split(".")[1][0].upper()
        for cols in _lines(root / "ASVspoof5_protocols" / name):
            assert len(cols) == 10 and cols[9] == "-", cols
            assert re.fullmatch(letter + r"_\d{4}", cols[0]), cols
            assert re.fullmatch(letter + r"_\d{10}", cols[1]) and cols[2] in ("F", "M"), cols
            assert (cols[7], cols[6]) == ("bonafide", "-") if cols[8] == "bonafide" else (
                re.fullmatch(r"A\d\d", cols[7]) and re.fullmatch(r"AC\d", cols[6])), cols
            assert (cols[3] == "-") == (cols[4] == "-") == (cols[5] == "-"), cols
            assert key != "as5_train" or cols[3] == "-", "train is uncoded, as released"
            ids.append(cols[1])
    assert len(ids) == len(set(ids))
    assert {c[3] for c in _lines(root / "ASVspoof5_protocols/ASVspoof5.eval.track_1.tsv")} > {"-"}


def test_asv_score_files_in_official_layouts(tiny):
    """LA19 dev/eval and LA21 ASV scores: a target and a nontarget trial per bona fide
    utterance, a spoof trial per spoof, read back by sccl.asv; targets score above the rest."""
    root, _ = tiny
    listed = _listed(root)
    for split in ("dev", "eval"):
        asv = read_asv_scores(root / LA19_ASV.format(split))
        cm = [v for v in listed.values() if v[0] == f"la19_{split}"]
        assert Counter(asv.keys) == {"target": sum(v[1] == "bonafide" for v in cm),
                                     "nontarget": sum(v[1] == "bonafide" for v in cm),
                                     "spoof": sum(v[1] == "spoof" for v in cm)}
        assert Counter(asv.attacks[asv.keys == "spoof"]) == Counter(
            v[2] for v in cm if v[1] == "spoof")
    asv = read_asv_scores(root / "keys/LA/ASV")
    cm = {cols[1]: cols for cols in _lines(root / LA21_KEYS)}
    meta = _lines(root / "keys/LA/ASV/trial_metadata.txt")
    assert all(m[2:5] == cm[m[1]][2:5] or m[4] == "bonafide" for m in meta)
    assert {m[1] for m in meta} == set(cm) and set(asv.subsets) == {"progress", "eval",
                                                                     "hidden_track"}
    tar, non, spoof = asv.trials()
    assert tar.mean() > spoof.mean() > non.mean()


def test_every_listed_file_decodes_at_16k(tiny):
    root, summary = tiny
    listed = _listed(root)
    assert len(listed) == summary["num_files"] == summary["generated"]
    on_disk = {str(p.relative_to(root)) for p in root.rglob("*") if p.suffix in (".flac", ".wav")}
    assert on_disk == set(listed), "no unlisted or missing audio files"
    for rel in listed:
        x, sr = sf.read(root / rel, dtype="float32")
        assert sr == SR and x.ndim == 1 and 0.5 * SR < len(x) < 4.5 * SR, rel
        assert np.all(np.isfinite(x)) and 1e-3 < np.sqrt(np.mean(x**2)) and np.abs(x).max() <= 1.0
    assert sf.info(root / next(r for r in listed if r.endswith(".flac"))).format == "FLAC"
    assert sf.info(root / "release_in_the_wild/0.wav").format == "WAV"


def test_labels_and_attacks_match_summary(tiny):
    root, summary = tiny
    listed = _listed(root)
    names = {"la19_train": ("asvspoof2019_la", "train"), "la19_dev": ("asvspoof2019_la", "dev"),
             "la19_eval": ("asvspoof2019_la", "eval"), "la21": ("asvspoof2021_la", "eval"),
             "df21": ("asvspoof2021_df", "eval"), "itw": ("itw", "eval"),
             "as5_train": ("asvspoof5", "train"), "as5_dev": ("asvspoof5", "dev"),
             "as5_eval": ("asvspoof5", "eval")}
    for key, (dataset, split) in names.items():
        rows = [v for v in listed.values() if v[0] == key]
        counts = summary["datasets"][dataset][split]
        labels = Counter("bonafide" if lab in ("bonafide", "bona-fide") else lab for _, lab, _ in rows)
        assert (labels["bonafide"], labels["spoof"]) == (counts["bonafide"], counts["spoof"])
        if key != "itw":
            attacks = Counter("-" if lab == "bonafide" else a for _, lab, a in rows)
            assert attacks == Counter(counts["attacks"])
            spoof_attacks = set(attacks) - {"-"}
            allowed = {"la19_train": TRAIN_ATTACKS, "la19_dev": TRAIN_ATTACKS,
                       **{k: p.attacks for k, p in PART_BY_KEY.items() if k.startswith("as5")}
                       }.get(key, EVAL_ATTACKS)
            assert spoof_attacks and spoof_attacks <= set(allowed), key
            assert labels["spoof"] > labels["bonafide"], "spoof is the majority as in ASVspoof"
        else:
            assert labels["bonafide"] > labels["spoof"], "ITW is mostly bona fide"
    eval_attacks = set(summary["datasets"]["asvspoof2019_la"]["eval"]["attacks"]) - {"-"}
    assert eval_attacks == set(EVAL_ATTACKS) and not eval_attacks & set(TRAIN_ATTACKS)


def test_same_seed_same_bytes_any_workers_other_seed_differs(tiny, tmp_path):
    root, summary = tiny
    again = generate(tmp_path / "again", size="tiny", seed=0, workers=2)
    assert again["datasets"] == summary["datasets"]
    for rel in [*_listed(root), *summary["protocols"]]:
        assert (tmp_path / "again" / rel).read_bytes() == (root / rel).read_bytes(), rel
    generate(tmp_path / "other", size="tiny", seed=1)
    for rel in summary["protocols"][:3]:
        assert (tmp_path / "other" / rel).read_bytes() != (root / rel).read_bytes()
    first_itw = "release_in_the_wild/0.wav"
    assert (tmp_path / "other" / first_itw).read_bytes() != (root / first_itw).read_bytes()


def test_rerun_resumes_and_foreign_dirs_are_refused(tmp_path):
    out = tmp_path / "c"
    first = generate(out, size="tiny", seed=3)
    victim = out / "release_in_the_wild/1.wav"
    original = victim.read_bytes()
    victim.unlink()
    (out / "keys/DF/CM/trial_metadata.txt").unlink()
    second = generate(out, size="tiny", seed=3)
    assert (second["generated"], second["skipped"]) == (1, first["num_files"] - 1)
    assert victim.read_bytes() == original and (out / "keys/DF/CM/trial_metadata.txt").is_file()
    assert second["datasets"] == first["datasets"]
    with pytest.raises(ShardsError, match="seed"):
        generate(out, size="tiny", seed=4)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ShardsError, match="notes.txt"):
        generate(foreign, size="tiny")
    (tmp_path / "bad_marker").mkdir()
    (tmp_path / "bad_marker" / MARKER).write_text("{not json")
    with pytest.raises(ShardsError, match="unreadable"):
        generate(tmp_path / "bad_marker", size="tiny")
    assert (foreign / "notes.txt").read_text() == "mine" and len(list(foreign.iterdir())) == 1


@pytest.mark.parametrize("kwargs, match", [
    ({"size": "huge"}, "size"), ({"seed": -1}, "seed"), ({"workers": 0}, "workers"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def utterance() -> Utterance:
    rng = np.random.default_rng(7)
    spk = make_speaker(rng, female=False)
    plan = plan_utterance(spk, 1.5, rng)
    return Utterance(plan, spk, record(render(plan, spk, rng), spk, rng))


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_changes_the_signal(utterance, name):
    y = apply_attack(name, utterance, np.random.default_rng(0))
    x = utterance.wave
    assert np.all(np.isfinite(y)) and 0.8 * len(x) < len(y) < 1.2 * len(x)
    assert np.sqrt(np.mean(y**2)) > 1e-3 * np.sqrt(np.mean(x**2))
    n = min(len(x), len(y))
    assert np.mean((y[:n] - x[:n]) ** 2) > 1e-4 * np.mean(x[:n] ** 2), "attack left no trace"


def test_reused_attacks_and_unknown_attack(utterance):
    for same, orig in (("A16", "A04"), ("A19", "A06")):
        a = apply_attack(same, utterance, np.random.default_rng(1))
        b = apply_attack(orig, utterance, np.random.default_rng(1))
        assert np.array_equal(a, b)
    with pytest.raises(KeyError, match="A99"):
        apply_attack("A99", utterance, np.random.default_rng(0))


def _band_db(x: np.ndarray, lo: float, hi: float) -> float:
    power = np.abs(stft(x)) ** 2
    freqs = np.linspace(0, SR / 2, power.shape[1])
    band = power[:, (freqs >= lo) & (freqs < hi)].sum()
    return float(10 * np.log10(band / power.sum()))


def test_artefacts_are_measurable(utterance):
    """Spoof differs from bona fide where its attack says: band limits leave an empty top."""
    bona = _band_db(utterance.wave, 6500, 8000)
    assert _band_db(apply_attack("A05", utterance, np.random.default_rng(0)), 6500, 8000) < bona - 10
    tts = apply_attack("A01", utterance, np.random.default_rng(0))
    assert _band_db(tts, 7700, 8000) < _band_db(utterance.wave, 7700, 8000) - 10


@pytest.mark.parametrize("codec", LA21_CODECS + DF_CODECS)
def test_channels_keep_length_and_degrade(utterance, codec):
    rng = np.random.default_rng(0)
    x = utterance.wave
    y = la21_channel(x, codec, "ita_tx", rng) if codec in LA21_CODECS else df_compression(x, codec, rng)
    assert len(y) == len(x) and np.all(np.isfinite(y))
    assert np.array_equal(y, x) == (codec in ("none", "nocodec"))


def test_baseline_bench_runs_on_tiny(tiny):
    path = Path(__file__).resolve().parents[1] / "bench" / "synth_baseline.py"
    spec = importlib.util.spec_from_file_location("synth_baseline", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.eer(np.array([1.0, 2.0]), np.array([-1.0, 0.0])) == 0.0
    assert bench.eer(np.array([0.0, 1.0]), np.array([0.5, 2.0])) == 0.5
    results = bench.main(["--corpus", str(tiny[0])])
    assert set(results["eer_percent"]["mlp"]) == {"la19_dev", "la19_eval", "la21", "df21", "itw"}
