"""The official ASV score files that the t-DCF needs, read at evaluation time.

Two layouts, as released (space-separated, one trial per line):

ASVspoof 2019 LA ``ASVspoof2019_LA_asv_scores/ASVspoof2019.LA.asv.{dev,eval}.gi.trl.scores.txt``:
    ``SOURCE KEY SCORE``, e.g. ``bonafide target 1.2968``, ``A07 spoof 0.3314``:
    SOURCE is ``bonafide`` or the attack, KEY ``target`` / ``nontarget`` / ``spoof``
    (the 2019 t-DCF scripts read KEY and SCORE as the last two columns; a leading speaker
    column, ``LA_0069 bonafide target 1.2968``, is accepted too).
ASVspoof 2021 LA ``keys/LA/ASV/``: ``ASVTorch_Kaldi/score.txt`` holds ``SPEAKER TRIAL SCORE``
    and ``trial_metadata.txt`` line for line ``SPEAKER TRIAL CODEC TRANSMISSION ATTACK KEY TRIM
    SUBSET`` (ATTACK ``bonafide`` or ``A07``..; KEY ``target`` / ``nontarget`` / ``spoof``;
    SUBSET ``eval`` / ``progress`` / ``hidden_track``). The 2021 package pairs the two files by
    line number; here the TRIAL columns must agree too.

``read_asv_scores(path)`` takes the 2019 file or the 2021 ``keys/LA/ASV`` directory.
``AsvScores.trials(attack=..., codec=..., subset=...)`` gives the (target, nontarget, spoof)
scores of one condition the way the 2021 package selects them: an attack selects spoof trials
only, a codec and a subset select every trial.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

KEYS = ("target", "nontarget", "spoof")
SCORE_2021 = Path("ASVTorch_Kaldi") / "score.txt"
METADATA_2021 = Path("trial_metadata.txt")


class AsvScoreError(ValueError):
    """A malformed or missing ASV score file (the message names path:line)."""


@dataclass(frozen=True)
class AsvScores:
    """ASV trials, each (N,): score, key (target/nontarget/spoof), attack ("bonafide" for
    target and nontarget trials), codec and subset ("-" where the file has none). ``edition``:
    2019 (its t-DCF is the legacy one) or 2021 (the revised one)."""

    path: str
    edition: int
    scores: np.ndarray
    keys: np.ndarray
    attacks: np.ndarray
    codecs: np.ndarray
    subsets: np.ndarray

    def trials(self, *, attack: str | None = None, codec: str | None = None,
               subset: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(target, nontarget, spoof) scores of one condition; None = pooled."""
        keep = np.ones(self.scores.size, dtype=bool)
        if codec is not None:
            keep &= self.codecs == codec
        if subset is not None:
            keep &= self.subsets == subset
        spoof = keep & (self.keys == "spoof")
        if attack is not None:
            spoof &= self.attacks == attack
        return (self.scores[keep & (self.keys == "target")],
                self.scores[keep & (self.keys == "nontarget")], self.scores[spoof])


def _lines(path: Path):
    """(lineno, columns) of every non-blank line."""
    try:
        text = path.read_text(encoding="utf-8").removeprefix("\ufeff")
    except FileNotFoundError:
        raise AsvScoreError(f"ASV score file not found: {path}") from None
    except UnicodeDecodeError as err:
        raise AsvScoreError(f"{path}: not valid UTF-8 ({err.reason})") from None
    return [(n, line.split()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _bad(path, lineno, cols, why) -> AsvScoreError:
    return AsvScoreError(f"{path}:{lineno}: {' '.join(cols)}\n  {why}")


def _score(path, lineno, cols, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _bad(path, lineno, cols, f"score {text!r} is not a number") from None
    if np.isnan(value):
        raise _bad(path, lineno, cols, "score is NaN")
    return value


def _key(path, lineno, cols, key: str) -> str:
    if key not in KEYS:
        raise _bad(path, lineno, cols, f"unknown key {key!r} (expected {', '.join(KEYS)})")
    return key


def _make(path, edition, scores, keys, attacks, codecs, subsets) -> AsvScores:
    if not scores:
        raise AsvScoreError(f"{path}: no ASV trials")
    obj = lambda v: np.array(v, dtype=object)  # noqa: E731
    return AsvScores(str(path), edition, np.array(scores, dtype=np.float64), obj(keys),
                     obj(attacks), obj(codecs), obj(subsets))


def read_asv2019(path: str | Path) -> AsvScores:
    """ASVspoof 2019 LA ``*.asv.*.gi.trl.scores.txt`` (module docstring)."""
    path = Path(path)
    scores, keys, attacks = [], [], []
    for lineno, cols in _lines(path):
        if len(cols) not in (3, 4):
            raise _bad(path, lineno, cols, f"expected 3 columns (SOURCE KEY SCORE), found "
                       f"{len(cols)}")
        keys.append(_key(path, lineno, cols, cols[-2]))
        attacks.append(cols[-3])
        scores.append(_score(path, lineno, cols, cols[-1]))
    n = len(scores)
    return _make(path, 2019, scores, keys, attacks, ["-"] * n, ["-"] * n)


def read_asv2021(directory: str | Path) -> AsvScores:
    """ASVspoof 2021 LA ``keys/LA/ASV`` directory (module docstring)."""
    directory = Path(directory)
    score_path, meta_path = directory / SCORE_2021, directory / METADATA_2021
    score_lines, meta_lines = _lines(score_path), _lines(meta_path)
    if len(score_lines) != len(meta_lines):
        raise AsvScoreError(f"{score_path} has {len(score_lines)} trials but {meta_path} has "
                            f"{len(meta_lines)}: the files pair line by line")
    out: dict[str, list] = {k: [] for k in ("scores", "keys", "attacks", "codecs", "subsets")}
    for (sn, s), (mn, m) in zip(score_lines, meta_lines, strict=True):
        if len(s) != 3:
            raise _bad(score_path, sn, s, f"expected 3 columns (SPEAKER TRIAL SCORE), found "
                       f"{len(s)}")
        if len(m) != 8:
            raise _bad(meta_path, mn, m, f"expected 8 columns, found {len(m)}")
        if s[1] != m[1]:
            raise _bad(score_path, sn, s, f"trial {s[1]!r} but {meta_path}:{mn} lists {m[1]!r}")
        out["keys"].append(_key(meta_path, mn, m, m[5]))
        out["scores"].append(_score(score_path, sn, s, s[2]))
        out["attacks"].append(m[4])
        out["codecs"].append(m[2])
        out["subsets"].append(m[7])
    return _make(score_path, 2021, **out)


def read_asv_scores(path: str | Path) -> AsvScores:
    """The 2019 score file, or the 2021 ``keys/LA/ASV`` directory (or its ``keys/LA``)."""
    path = Path(path)
    if path.is_dir():
        for d in (path, path / "ASV"):
            if (d / SCORE_2021).is_file():
                return read_asv2021(d)
        raise AsvScoreError(f"{path}: no {SCORE_2021} (expected the ASVspoof 2021 keys/LA/ASV "
                            "directory)")
    return read_asv2019(path)
