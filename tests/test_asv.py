"""sccl.asv: the official ASV score files read on lines in their released layouts."""

from __future__ import annotations

import numpy as np
import pytest

from sccl.asv import AsvScoreError, read_asv2019, read_asv_scores

LA19 = "bonafide target 2.5\nbonafide nontarget -3.0\nA07 spoof 0.4\nA08 spoof -0.2\n"
LA21_SCORES = "LA_0009 LA_E_9332881 0.61\nLA_0020 LA_E_7294490 3.20\nLA_0031 LA_E_7294490 -2.9\n"
LA21_META = ("LA_0009 LA_E_9332881 alaw ita_tx A07 spoof notrim eval\n"
             "LA_0020 LA_E_7294490 g722 loc_tx bonafide target notrim eval\n"
             "LA_0031 LA_E_7294490 g722 loc_tx bonafide nontarget notrim progress\n")


def la21_dir(tmp_path, scores=LA21_SCORES, meta=LA21_META):
    d = tmp_path / "keys" / "LA" / "ASV"
    (d / "ASVTorch_Kaldi").mkdir(parents=True)
    (d / "ASVTorch_Kaldi" / "score.txt").write_text(scores)
    (d / "trial_metadata.txt").write_text(meta)
    return d


def test_la19_score_file(tmp_path):
    path = tmp_path / "ASVspoof2019.LA.asv.eval.gi.trl.scores.txt"
    path.write_text(LA19)
    asv = read_asv_scores(path)
    tar, non, spoof = asv.trials()
    assert (tar.tolist(), non.tolist(), spoof.tolist()) == ([2.5], [-3.0], [0.4, -0.2])
    assert asv.trials(attack="A08")[2].tolist() == [-0.2]
    assert asv.trials(attack="A08")[0].tolist() == [2.5]  # an attack selects spoof trials only
    path.write_text("LA_0069 bonafide target 1.5\nLA_0069 A07 spoof 0.5\n")  # speaker first
    assert read_asv2019(path).scores.tolist() == [1.5, 0.5]


def test_la21_directory_conditions(tmp_path):
    d = la21_dir(tmp_path)
    for path in (d, d.parent):  # keys/LA/ASV or keys/LA
        asv = read_asv_scores(path)
        assert list(asv.codecs) == ["alaw", "g722", "g722"]
    tar, non, spoof = asv.trials(subset="eval")
    assert (tar.tolist(), non.tolist(), spoof.tolist()) == ([3.2], [], [0.61])
    assert [a.tolist() for a in asv.trials(codec="g722")] == [[3.2], [-2.9], []]
    assert np.array_equal(asv.trials(attack="A07")[2], [0.61])


@pytest.mark.parametrize("text,lineno,why", [
    ("bonafide target 2.5\nbonafide impostor 1.0\n", 2, "unknown key 'impostor'"),
    ("bonafide target x\n", 1, "score 'x' is not a number"),
    ("bonafide target nan\n", 1, "score is NaN"),
    ("target 2.5\n", 1, "expected 3 columns"),
])
def test_la19_malformed_lines(tmp_path, text, lineno, why):
    path = tmp_path / "s.txt"
    path.write_text(text)
    with pytest.raises(AsvScoreError) as info:
        read_asv_scores(path)
    assert str(info.value).startswith(f"{path}:{lineno}: ") and why in str(info.value)


def test_la21_mismatches(tmp_path):
    d = la21_dir(tmp_path / "a", scores=LA21_SCORES.replace("LA_E_9332881", "LA_E_1"))
    with pytest.raises(AsvScoreError, match="(?s)score.txt:1: .*trial 'LA_E_1' but .*:1 lists"):
        read_asv_scores(d)
    d = la21_dir(tmp_path / "b", scores=LA21_SCORES + "LA_0040 LA_E_4 1.0\n")
    with pytest.raises(AsvScoreError, match="has 4 trials but .* has 3"):
        read_asv_scores(d)
    with pytest.raises(AsvScoreError, match="no ASVTorch_Kaldi/score.txt"):
        read_asv_scores(tmp_path)
    with pytest.raises(AsvScoreError, match="not found"):
        read_asv_scores(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(AsvScoreError, match="no ASV trials"):
        read_asv_scores(empty)
