"""What the synthetic corpus holds and how it is laid out on disk.

Mirrors the released datasets (their protocol formats are described in shards/protocols.py;
docs/study.md names the datasets): ASVspoof 2019 LA train/dev/eval FLAC with 5-column CM protocols, ASVspoof 2021
LA (8-column) and DF (13-column) trial_metadata keys, In-the-Wild ``<n>.wav`` + meta.csv,
ASVspoof 5 train/dev/eval (10-column ``ASVspoof5.*.tsv``, flac_T/flac_D/flac_E_eval), and ASV
score files for the LA19 and LA21 sets in the official layouts (``asv_score_files``).
Every decision here (ids, speakers, labels, attacks, codecs, durations) is drawn from a
generator seeded by ``(seed, part)`` only, so the plan is identical however many workers
render the audio.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np

from shards.synth_attacks import EVAL_ATTACKS, TRAIN_ATTACKS
from shards.synth_channel import DF_CODECS, LA21_CODECS, LA21_TRANSMISSIONS


@dataclass(frozen=True)
class Part:
    """One generated split of one dataset."""

    key: str  # short name, also the seed stream selector
    code: int  # seed stream id (never reuse: it decides every random draw of the part)
    dataset: str  # dataset name used by the shard builder
    split: str
    attacks: tuple[str, ...]  # systems that make its spoofs
    channel: str  # post-processing: "clean" | "la21" | "df21" | "wild"


PARTS = (
    Part("la19_train", 1, "asvspoof2019_la", "train", TRAIN_ATTACKS, "clean"),
    Part("la19_dev", 2, "asvspoof2019_la", "dev", TRAIN_ATTACKS, "clean"),
    Part("la19_eval", 3, "asvspoof2019_la", "eval", EVAL_ATTACKS, "clean"),
    Part("la21", 4, "asvspoof2021_la", "eval", EVAL_ATTACKS, "la21"),
    Part("df21", 5, "asvspoof2021_df", "eval", EVAL_ATTACKS, "df21"),
    Part("itw", 6, "itw", "eval", EVAL_ATTACKS, "wild"),
    # ASVspoof 5 names its attacks A01-A08 (train), A09-A16 (dev), A17-A32 (eval); each
    # label is rendered by one synthetic system (AS5_SYSTEMS), unseen ones on eval.
    Part("as5_train", 7, "asvspoof5", "train", ("A01", "A02", "A03", "A04"), "as5"),
    Part("as5_dev", 8, "asvspoof5", "dev", ("A09", "A10", "A11", "A12"), "as5"),
    Part("as5_eval", 9, "asvspoof5", "eval", ("A17", "A18", "A19", "A20", "A21", "A22"), "as5"),
)
AS5_SYSTEMS = {"A01": "A01", "A02": "A02", "A03": "A03", "A04": "A04", "A09": "A05",
               "A10": "A06", "A11": "A01", "A12": "A03", "A17": "A07", "A18": "A09",
               "A19": "A11", "A20": "A13", "A21": "A15", "A22": "A17"}
# ASVspoof 5 codec conditions used here -> the synthetic channel that imitates them
# (C01 Opus, C02 AMR, C05 MP3, C06 M4A in the database; "-" uncoded).
AS5_CODECS = {"C01": ("la21", "opus"), "C02": ("la21", "gsm"), "C05": ("df21", "high_mp3"),
              "C06": ("df21", "high_m4a")}
PART_BY_KEY = {p.key: p for p in PARTS}

# (bona fide, spoof, speakers) per part; spoof is the majority as in ASVspoof, bona fide in ITW.
SIZES: dict[str, dict] = {
    "default": {"seconds": (1.0, 4.0), "la19_train": (200, 600, 20), "la19_dev": (100, 300, 10),
                "la19_eval": (150, 585, 20), "la21": (60, 240, 20), "df21": (50, 250, 20),
                "itw": (190, 110, 12), "as5_train": (24, 72, 6), "as5_dev": (12, 36, 4),
                "as5_eval": (20, 60, 6)},
    "tiny": {"seconds": (1.0, 2.0), "la19_train": (4, 6, 2), "la19_dev": (2, 4, 2),
             "la19_eval": (3, 13, 3), "la21": (3, 7, 3), "df21": (3, 9, 3), "itw": (6, 4, 3),
             "as5_train": (2, 3, 2), "as5_dev": (1, 3, 1), "as5_eval": (2, 4, 2)},
}
# First speaker number of each part, as in the real sets (train LA_0079.., dev LA_0069..,
# eval LA_0001..; the 2021 sets reuse the 2019 eval speakers). ITW numbers are internal.
_SPEAKER_BASE = {"la19_train": 79, "la19_dev": 69, "la19_eval": 1, "la21": 1, "df21": 1,
                 "itw": 1001, "as5_train": 4001, "as5_dev": 4101, "as5_eval": 4201}
# ASVspoof 5 ids are <T|D|E>_ + 10 digits: "000" + the 7 drawn digits.
_ID_PREFIX = {"la19_train": "LA_T_", "la19_dev": "LA_D_", "la19_eval": "LA_E_", "la21": "LA_E_",
              "df21": "DF_E_", "as5_train": "T_000", "as5_dev": "D_000", "as5_eval": "E_000"}
_AS5_AUDIO = {"as5_train": "flac_T", "as5_dev": "flac_D", "as5_eval": "flac_E_eval"}
_AS5_PROTOCOL = {"as5_train": "ASVspoof5.train.tsv", "as5_dev": "ASVspoof5.dev.track_1.tsv",
                 "as5_eval": "ASVspoof5.eval.track_1.tsv"}
_LA19_PROTOCOL = {"train": "train.trn", "dev": "dev.trl", "eval": "eval.trl"}
SUBSETS = ("progress", "eval", "hidden_track")
DF_SOURCES = ("asvspoof", "vcc2018", "vcc2020")
VOCODERS = {  # DF key "vocoder" column per system
    "A07": "neural_vocoder_nonautoregressive", "A08": "traditional_vocoder",
    "A09": "traditional_vocoder", "A10": "neural_vocoder_autoregressive", "A11": "unknown",
    "A12": "neural_vocoder_autoregressive", "A13": "waveform_concatenation",
    "A14": "traditional_vocoder", "A15": "neural_vocoder_autoregressive",
    "A16": "waveform_concatenation", "A17": "unknown", "A18": "traditional_vocoder",
    "A19": "unknown",
}


@dataclass(frozen=True)
class Row:
    """One utterance to render and list in its protocol."""

    part: str
    index: int  # position in the part; with (seed, part) it seeds the audio
    utt_id: str
    speaker: str
    speaker_num: int  # seeds the speaker's voice
    label: str  # "bonafide" | "spoof"
    system: str  # attack that renders it ("-" for bona fide)
    path: str  # audio file relative to the corpus root
    seconds: float
    codec: str = "-"
    transmission: str = "-"
    source: str = "-"
    subset: str = "-"
    trim: str = "notrim"
    attack: str = ""  # the protocol's attack name where it differs from ``system`` (ASVspoof 5)
    codec_q: str = "-"
    codec_seed: str = "-"
    attack_tag: str = "-"

    @property
    def named_attack(self) -> str:
        """The attack as the protocol names it."""
        return self.attack or self.system


def _speaker_name(part: str, num: int) -> str:
    if part.startswith("as5"):
        return f"{_ID_PREFIX[part][0]}_{num:04d}"
    return f"Speaker {num - 1000:02d}" if part == "itw" else f"LA_{num:04d}"


def _audio_path(part: str, split: str, utt: str) -> str:
    if part.startswith("la19"):
        return f"LA/ASVspoof2019_LA_{split}/flac/{utt}.flac"
    if part == "la21":
        return f"ASVspoof2021_LA_eval/flac/{utt}.flac"
    if part == "df21":
        return f"ASVspoof2021_DF_eval/flac/{utt}.flac"
    if part in _AS5_AUDIO:
        return f"{_AS5_AUDIO[part]}/{utt}.flac"
    return f"release_in_the_wild/{utt}.wav"


def _draw_ids(rng: np.random.Generator, prefix: str, n: int, taken: set[str]) -> list[str]:
    """``n`` fresh 7-digit ids ``<prefix>NNNNNNN`` not in ``taken`` (which is updated)."""
    out: list[str] = []
    while len(out) < n:
        for num in rng.choice(9_000_000, size=n - len(out), replace=False) + 1_000_000:
            uid = f"{prefix}{num}"
            if uid not in taken:
                taken.add(uid)
                out.append(uid)
    return out


def plan_part(part: Part, size: str, seed: int, taken: set[str]) -> list[Row]:
    """Every row of ``part`` for corpus ``size`` and ``seed`` (ids unique against ``taken``)."""
    n_bona, n_spoof, n_spk = SIZES[size][part.key]
    rng = np.random.default_rng(np.random.SeedSequence([seed, part.code, 0]))
    base = _SPEAKER_BASE[part.key]
    spk_nums = np.r_[np.arange(n_bona) % n_spk, np.arange(n_spoof) % n_spk] + base
    labels = ["bonafide"] * n_bona + ["spoof"] * n_spoof
    systems = ["-"] * n_bona + [part.attacks[i % len(part.attacks)] for i in range(n_spoof)]
    named = list(systems)
    if part.channel == "as5":  # render each ASVspoof 5 label with its synthetic system
        systems = [AS5_SYSTEMS.get(a, a) for a in named]
    order = rng.permutation(n_bona + n_spoof)
    n = len(order)
    if part.key == "itw":
        ids = [str(i) for i in range(n)]
    else:
        ids = _draw_ids(rng, _ID_PREFIX[part.key], n, taken)
    lo, hi = SIZES[size]["seconds"]
    seconds = np.round(rng.uniform(lo, hi, n), 3)
    extras = _extras(part, rng, n)
    rows = [
        Row(part=part.key, index=i, utt_id=ids[i],
            speaker=_speaker_name(part.key, int(spk_nums[j])), speaker_num=int(spk_nums[j]),
            label=labels[j], system=systems[j],
            attack=named[j] if named[j] != systems[j] else "",
            path=_audio_path(part.key, part.split, ids[i]), seconds=float(seconds[i]), **extras[i])
        for i, j in enumerate(order)
    ]
    return _as5_columns(part, rows, rng) if part.channel == "as5" else rows


def _as5_columns(part: Part, rows: list[Row], rng: np.random.Generator) -> list[Row]:
    """ASVspoof 5 codec / codec quality / codec seed / attack tag columns. Train is uncoded
    (as released); on dev and eval every other row is coded, its CODEC_SEED naming an
    uncoded row of the same class (metadata only: the audio is rendered independently)."""
    out = []
    for i, r in enumerate(rows):
        tag = f"AC{1 + rng.integers(3)}" if r.label == "spoof" else "-"
        codec, q, seed_id = "-", "-", "-"
        if part.split != "train" and i % 2:
            codec = tuple(AS5_CODECS)[(i // 2) % len(AS5_CODECS)]
            q = str(1 + rng.integers(5))
            same = [o.utt_id for k, o in enumerate(rows) if k % 2 == 0 and o.label == r.label]
            seed_id = same[rng.integers(len(same))] if same else "-"
        out.append(replace(r, codec=codec, codec_q=q, codec_seed=seed_id, attack_tag=tag))
    return out


def _extras(part: Part, rng: np.random.Generator, n: int) -> list[dict]:
    """Per-row codec/transmission/source/subset/trim columns of the 2021 keys."""
    if part.channel not in ("la21", "df21"):
        return [{}] * n
    codecs = LA21_CODECS if part.channel == "la21" else DF_CODECS
    subsets = rng.choice(len(SUBSETS), size=n, p=[0.15, 0.75, 0.10])
    subsets[: len(SUBSETS)] = np.arange(min(n, len(SUBSETS)))  # every subset present, even tiny
    out = []
    for i in range(n):
        codec = codecs[i % len(codecs)]  # rows are already shuffled: codec is label-blind
        row = {"codec": codec, "subset": SUBSETS[subsets[i]],
               "trim": "trim" if SUBSETS[subsets[i]] == "hidden_track" else "notrim"}
        if part.channel == "la21":
            tx = LA21_TRANSMISSIONS[rng.integers(len(LA21_TRANSMISSIONS))]
            row["transmission"] = "-" if codec == "none" else tx
        else:
            row["source"] = DF_SOURCES[rng.choice(3, p=[0.6, 0.2, 0.2])]
        out.append(row)
    return out


def plan_corpus(size: str, seed: int) -> dict[str, list[Row]]:
    """All parts of the corpus, in PARTS order (the order matters for id uniqueness)."""
    if size not in SIZES:
        raise ValueError(f"unknown synthetic corpus size {size!r}; choose from {sorted(SIZES)}")
    taken: set[str] = set()
    return {p.key: plan_part(p, size, seed, taken) for p in PARTS}


def protocol_files(parts: dict[str, list[Row]]) -> dict[str, str]:
    """Protocol/key/meta files of the corpus: relative path -> file text."""
    files = {}
    for split, name in _LA19_PROTOCOL.items():
        rows = parts[f"la19_{split}"]
        files[f"LA/ASVspoof2019_LA_cm_protocols/ASVspoof2019.LA.cm.{name}.txt"] = "".join(
            f"{r.speaker} {r.utt_id} - {r.system} {r.label}\n" for r in rows)
    files["keys/LA/CM/trial_metadata.txt"] = "".join(
        f"{r.speaker} {r.utt_id} {r.codec} {r.transmission} "
        f"{'bonafide' if r.label == 'bonafide' else r.system} {r.label} {r.trim} {r.subset}\n"
        for r in parts["la21"])
    files["keys/DF/CM/trial_metadata.txt"] = "".join(
        f"{r.speaker} {r.utt_id} {r.codec} {r.source} {r.system} {r.label} {r.trim} {r.subset} "
        f"{VOCODERS.get(r.system, 'bonafide')} - - - -\n" for r in parts["df21"])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "speaker", "label"])
    for r in parts["itw"]:
        label = "bona-fide" if r.label == "bonafide" else "spoof"
        writer.writerow([f"{r.utt_id}.wav", r.speaker, label])
    files["release_in_the_wild/meta.csv"] = buf.getvalue()
    for key, name in _AS5_PROTOCOL.items():
        files[f"ASVspoof5_protocols/{name}"] = "".join(
            f"{r.speaker} {r.utt_id} {'F' if r.speaker_num % 2 else 'M'} {r.codec} {r.codec_q} "
            f"{r.codec_seed} {r.attack_tag} {r.named_attack if r.label == 'spoof' else 'bonafide'}"
            f" {r.label} -\n" for r in parts[key])
    return files


def part_counts(rows: list[Row]) -> dict:
    """Label/attack (as the protocol names it), for 2021 subset/codec and for ASVspoof 5 codec
    counts of a part."""
    itw = bool(rows) and rows[0].part == "itw"
    attacks = Counter("unknown" if itw and r.label == "spoof" else r.named_attack for r in rows)
    out = {"num_files": len(rows), "bonafide": sum(r.label == "bonafide" for r in rows),
           "spoof": sum(r.label == "spoof" for r in rows), "attacks": dict(sorted(attacks.items()))}
    if rows and rows[0].part.startswith("as5"):
        out["codecs"] = dict(sorted(Counter(r.codec for r in rows).items()))
    elif rows and rows[0].codec != "-":
        out["subsets"] = dict(sorted(Counter(r.subset for r in rows).items()))
        out["codecs"] = dict(sorted(Counter(r.codec for r in rows).items()))
    return out


# ASV score model: (mean, sd) of target and nontarget scores; spoof means spread per attack
# between these (strong attacks fool the ASV). A 2021 codec costs the target scores 0.8.
_ASV_TARGET, _ASV_NONTARGET, _ASV_SPOOF_MEANS = (3.0, 1.2), (-3.0, 1.2), (-1.0, 2.5)


def _asv_trials(part: Part, rows: list[Row], rng: np.random.Generator) -> list[tuple]:
    """(claimed speaker, row, key, score) ASV trials of a CM set: each bona fide utterance once
    against its own speaker (target) and once against another (nontarget), each spoof
    against its speaker."""
    speakers = sorted({r.speaker for r in rows})
    attacks = sorted({r.system for r in rows if r.label == "spoof"})
    lo, hi = _ASV_SPOOF_MEANS
    spoof_mean = {a: lo + (hi - lo) * i / max(1, len(attacks) - 1) for i, a in enumerate(attacks)}
    out = []
    for r in rows:
        coded = 0.8 if r.codec not in ("-", "none") else 0.0
        if r.label == "spoof":
            out.append((r.speaker, r, "spoof", rng.normal(spoof_mean[r.system] - coded, 1.5)))
            continue
        other = [s for s in speakers if s != r.speaker] or speakers
        out.append((r.speaker, r, "target", rng.normal(_ASV_TARGET[0] - coded, _ASV_TARGET[1])))
        out.append((other[rng.integers(len(other))], r, "nontarget",
                    rng.normal(*_ASV_NONTARGET)))
    return out


def asv_score_files(parts: dict[str, list[Row]], seed: int) -> dict[str, str]:
    """Synthetic ASV score files in the official layouts (sccl.asv reads them): ASVspoof 2019 LA
    ``ASVspoof2019.LA.asv.{dev,eval}.gi.trl.scores.txt`` and the ASVspoof 2021 LA
    ``keys/LA/ASV`` score.txt + trial_metadata.txt. Relative path -> file text."""
    files = {}
    for key in ("la19_dev", "la19_eval", "la21"):
        part = PART_BY_KEY[key]
        rng = np.random.default_rng(np.random.SeedSequence([seed, part.code, 100]))
        trials = _asv_trials(part, parts[key], rng)
        if key.startswith("la19"):
            files[f"LA/ASVspoof2019_LA_asv_scores/ASVspoof2019.LA.asv.{part.split}.gi.trl"
                  ".scores.txt"] = "".join(
                f"{r.system if k == 'spoof' else 'bonafide'} {k} {s:.5f}\n"
                for _, r, k, s in trials)
            continue
        files["keys/LA/ASV/ASVTorch_Kaldi/score.txt"] = "".join(
            f"{spk} {r.utt_id} {s:.5f}\n" for spk, r, _, s in trials)
        files["keys/LA/ASV/trial_metadata.txt"] = "".join(
            f"{spk} {r.utt_id} {r.codec} {r.transmission} "
            f"{r.system if k == 'spoof' else 'bonafide'} {k} {r.trim} {r.subset}\n"
            for spk, r, k, _ in trials)
    return files
