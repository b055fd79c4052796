"""Protocol parsers on lines exactly as the datasets release them, and every malformed case."""

from __future__ import annotations

import pytest

from shards.errors import ShardsError
from shards.protocols import check_key, default_split, load_protocol

LA19 = "LA_0079 LA_T_1138215 - - bonafide\nLA_0079 LA_T_1271820 - A01 spoof\n"
LA21 = ("LA_0009 LA_E_9332881 alaw ita_tx A07 spoof notrim eval\n"
        "LA_0020 LA_E_7294490 g722 loc_tx bonafide bonafide notrim eval\n"
        "LA_0021 LA_E_1000003 opus ita_tx A10 spoof notrim progress\n"
        "LA_0022 LA_E_1000004 nocodec nocodec - bonafide notrim hidden_track\n")
DF21 = ("LA_0023 DF_E_2000011 nocodec asvspoof A14 spoof notrim progress traditional_vocoder"
        " - - - -\n"
        "LA_0024 DF_E_2000012 mp3m4a vcc2018 bonafide bonafide notrim eval bonafide - - - -\n")
ITW = "file,speaker,label\n0.wav,Alec Guinness,spoof\n1.wav,Alec Guinness,bona-fide\n"
# ASVspoof 5 as released (the two dev lines of issue 11 plus a coded eval-style line)
AS5 = ("D_4461 D_0000000169 F - - - AC1 A14 spoof -\n"
       "D_0461 D_0000000190 M - - - - bonafide bonafide -\n"
       "D_0462 D_0000000191 F C05 3 D_0000000190 AC2 A11 spoof -\n")
# the Phase 1 pre-release ASVspoof5.train.metadata.txt (6 columns)
AS5_PRE = "T_4850 T_0000000000 F - A05 spoof\nT_4850 T_0000000001 F - bonafide bonafide\n"


def write(tmp_path, text, name="proto.txt", mode="w"):
    p = tmp_path / name
    if mode == "wb":
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return p


def error_of(fmt, path, **kw) -> str:
    kw.setdefault("split", "train")
    with pytest.raises(ShardsError) as info:
        load_protocol(fmt, path, **kw)
    return str(info.value)


def test_asvspoof2019_exact_lines(tmp_path):
    p = load_protocol("asvspoof2019", write(tmp_path, LA19), split="train")
    assert p.dataset == "asvspoof2019_la"
    bona, spoof = p.records
    assert (bona.utt_id, bona.speaker, bona.label, bona.attack) == \
        ("LA_T_1138215", "LA_0079", "bonafide", "-")
    assert (spoof.utt_id, spoof.label, spoof.attack, spoof.subset) == \
        ("LA_T_1271820", "spoof", "A01", "train")
    assert spoof.path == "LA_T_1271820.flac" and spoof.lineno == 2


def test_asvspoof5_released_lines(tmp_path):
    p = load_protocol("asvspoof5", write(tmp_path, AS5, "ASVspoof5.dev.track_1.tsv"),
                      split="dev")
    assert p.dataset == "asvspoof5"
    spoof, bona, coded = p.records
    assert (spoof.speaker, spoof.utt_id, spoof.label, spoof.attack, spoof.subset, spoof.path) \
        == ("D_4461", "D_0000000169", "spoof", "A14", "dev", "D_0000000169.flac")
    assert spoof.extras == {"gender": "F", "codec": "-", "codec_q": "-", "codec_seed": "-",
                            "attack_tag": "AC1"}
    assert (bona.label, bona.attack, bona.extras["gender"], bona.extras["attack_tag"]) == \
        ("bonafide", "-", "M", "-")
    assert coded.extras == {"gender": "F", "codec": "C05", "codec_q": "3",
                            "codec_seed": "D_0000000190", "attack_tag": "AC2"}


def test_asvspoof5_pre_release_six_columns(tmp_path):
    spoof, bona = load_protocol("asvspoof5", write(tmp_path, AS5_PRE), split="train").records
    assert (spoof.utt_id, spoof.attack, spoof.label, spoof.extras) == \
        ("T_0000000000", "A05", "spoof", {"gender": "F", "codec": "-"})
    assert (bona.label, bona.attack) == ("bonafide", "-")


def test_asvspoof2021_la_subsets_and_bonafide_attack_column(tmp_path):
    path = write(tmp_path, LA21)
    p = load_protocol("asvspoof2021", path, split="eval", subset="eval")
    assert p.dataset == "asvspoof2021_la"
    assert [r.utt_id for r in p.records] == ["LA_E_9332881", "LA_E_7294490"]
    spoof, bona = p.records
    assert spoof.extras == {"codec": "alaw", "transmission": "ita_tx", "trim": "notrim"}
    assert (spoof.attack, bona.attack, bona.label) == ("A07", "-", "bonafide")
    assert len(load_protocol("asvspoof2021", path, split="x", subset="all").records) == 4
    progress = load_protocol("asvspoof2021", path, split="x", subset="progress").records
    assert [(r.utt_id, r.subset) for r in progress] == [("LA_E_1000003", "progress")]


def test_asvspoof2021_df_13_columns(tmp_path):
    p = load_protocol("asvspoof2021", write(tmp_path, DF21), split="eval", subset="all")
    assert p.dataset == "asvspoof2021_df"
    spoof, bona = p.records
    assert spoof.extras == {"codec": "nocodec", "source_corpus": "asvspoof", "trim": "notrim",
                            "vocoder": "traditional_vocoder"}
    assert (spoof.attack, spoof.subset, bona.attack) == ("A14", "progress", "-")


def test_asvspoof2021_dataset_flag_must_match_columns(tmp_path):
    msg = error_of("asvspoof2021", write(tmp_path, LA21), dataset="df", subset="all")
    assert "proto.txt:1: LA_0009" in msg and "expected 13 columns for 2021 DF, found 8" in msg


def test_itw_meta_csv(tmp_path):
    p = load_protocol("itw", write(tmp_path, ITW, "meta.csv"), split="eval")
    assert p.dataset == "itw"
    spoof, bona = p.records
    assert (spoof.utt_id, spoof.speaker, spoof.label, spoof.attack, spoof.path) == \
        ("0", "Alec Guinness", "spoof", "unknown", "0.wav")
    assert (bona.label, bona.attack, bona.subset) == ("bonafide", "-", "eval")


def test_itw_header_and_exact_labels(tmp_path):
    msg = error_of("itw", write(tmp_path, "path,speaker,label\n0.wav,A,spoof\n", "meta.csv"))
    assert "meta.csv:1: path,speaker,label" in msg and "file,speaker,label" in msg
    msg = error_of("itw", write(tmp_path, "file,speaker,label\n0.wav,A,bonafide\n", "m.csv"))
    assert "m.csv:2: 0.wav,A,bonafide" in msg and "unknown label 'bonafide'" in msg


def test_csv_positional_header_and_tsv(tmp_path):
    recs = load_protocol("csv", write(tmp_path, "a/x1.wav,BonaFide\nb/x2.flac,SPOOF,tts9,spk\n"),
                         split="train").records
    assert [(r.utt_id, r.label, r.attack, r.speaker, r.path) for r in recs] == [
        ("x1", "bonafide", "-", "unknown", "a/x1.wav"), ("x2", "spoof", "tts9", "spk", "b/x2.flac")]
    text = "speaker\tlabel\tpath\tutt_id\nS1\tbona-fide\tclip 1.wav\tu1\nS2\tspoof\tc2.wav\t\n"
    recs = load_protocol("csv", write(tmp_path, text, "x.tsv"), split="dev").records
    assert [(r.utt_id, r.label, r.attack, r.speaker) for r in recs] == [
        ("u1", "bonafide", "-", "S1"), ("c2", "spoof", "unknown", "S2")]
    assert recs[0].subset == "dev"


def test_csv_crlf_and_bom_accepted(tmp_path):
    data = "\ufeffpath,label\r\nx1.wav,spoof\r\n\r\n".encode()
    recs = load_protocol("csv", write(tmp_path, data, mode="wb"), split="t").records
    assert [(r.utt_id, r.label, r.lineno) for r in recs] == [("x1", "spoof", 2)]


@pytest.mark.parametrize("fmt,text", [("asvspoof2019", LA19), ("asvspoof2021", LA21),
                                      ("asvspoof2021", DF21), ("asvspoof5", AS5), ("itw", ITW)])
def test_a_leading_bom_is_dropped_in_every_format(tmp_path, fmt, text):
    """Saved by a spreadsheet or a Windows editor, the first speaker read '\ufeffLA_0079'."""
    plain = load_protocol(fmt, write(tmp_path, text, "plain.txt"), split="t", subset="all")
    bom = load_protocol(fmt, write(tmp_path, ("\ufeff" + text).encode(), "bom.txt", "wb"),
                        split="t", subset="all")
    assert [r.speaker for r in bom.records] == [r.speaker for r in plain.records]
    assert [(r.utt_id, r.lineno) for r in bom.records] == \
        [(r.utt_id, r.lineno) for r in plain.records]
    assert not any("\ufeff" in r.speaker + r.utt_id + r.path for r in bom.records)


def test_csv_unknown_column(tmp_path):
    msg = error_of("csv", write(tmp_path, "path,label,gender\nx.wav,spoof,f\n"))
    assert "proto.txt:1: path,label,gender" in msg and "unknown column(s) ['gender']" in msg


@pytest.mark.parametrize("fmt,text,bad_lineno,why", [
    ("asvspoof2019", LA19 + "LA_0079 LA_T_1 - bonafide\n", 3, "expected 5 columns, found 4"),
    ("asvspoof2019", LA19 + "LA_0079 LA_T_2 - - BONAFIDE\n", 3, "unknown label 'BONAFIDE'"),
    ("asvspoof2019", "LA_0079 LA_T_2 - A01 bonafide\n", 1, "bona fide line names attack 'A01'"),
    ("asvspoof2019", "LA_0079 LA_T_2 - - spoof\n", 1, "spoof line has no attack"),
    ("asvspoof2021", "LA_0009 LA_E_1 alaw ita_tx A07 spoof notrim\n", 1, "8 or 13 columns"),
    ("asvspoof2021", "LA_0009 LA_E_1 alaw ita_tx A07 spoof notrim final\n", 1,
     "unknown subset 'final'"),
    ("asvspoof5", AS5 + "D_0463 D_0000000192 F - - - AC1 A14 spoof\n", 4,
     "expected 10 columns like line 1, found 9"),
    ("asvspoof5", AS5_PRE + AS5, 3, "expected 6 columns like line 1, found 10"),
    ("asvspoof5", "D_1 D_0000000001 F - - - - A14 spoof - extra\n", 1,
     "expected 10 columns (or 6, pre-release), found 11"),
    ("asvspoof5", "D_1 D_0000000001 F - - - - bonafide spoof -\n", 1, "spoof line has no attack"),
    ("asvspoof5", "D_1 D_0000000001 F - - - AC1 A14 bonafide -\n", 1,
     "bona fide line names attack 'A14'"),
    ("asvspoof5", "D_1 D_0000000001 F - - - AC1 A14 fake -\n", 1, "unknown label 'fake'"),
    ("csv", "x.wav,spoof\ny.wav,fake\n", 2, "unknown label 'fake'"),
    ("csv", "x.wav\n", 1, "expected 2 or 3 or 4 fields"),
    ("csv", "clip.v2.wav,spoof\n", 1, "contains a dot: webdataset would mis-split"),
    ("csv", "path,label,utt_id\nx.wav,spoof,a/b\n", 2, "contains a slash"),
])
def test_malformed_lines_name_file_line_and_reason(tmp_path, fmt, text, bad_lineno, why):
    path = write(tmp_path, text)
    line = text.splitlines()[bad_lineno - 1]
    msg = error_of(fmt, path, subset="all") if fmt == "asvspoof2021" else error_of(fmt, path)
    assert msg.startswith(f"{path}:{bad_lineno}: {line}\n")
    assert why in msg


def test_duplicate_utterance_names_both_lines(tmp_path):
    path = write(tmp_path, LA19 + "LA_0080 LA_T_0000001 - A02 spoof\n" + LA19.splitlines()[1])
    msg = error_of("asvspoof2019", path)
    assert f"{path}:4: " in msg and "duplicate utterance id 'LA_T_1271820'" in msg
    assert "first at line 2" in msg


def test_missing_file_non_utf8_and_empty(tmp_path):
    assert "protocol file not found" in error_of("asvspoof2019", tmp_path / "nope.txt")
    bad = write(tmp_path, LA19.encode() + b"LA_0079 LA_T_\xff - - bonafide\n", mode="wb")
    assert f"{bad}:3: not valid UTF-8" in error_of("asvspoof2019", bad)
    empty = write(tmp_path, "\n\n", "e.txt")
    assert "no utterances" in error_of("asvspoof2019", empty)
    only_progress = write(tmp_path, LA21.splitlines()[2] + "\n", "p.txt")
    assert "no utterances to shard in subset 'eval'" in error_of("asvspoof2021", only_progress)


def test_check_key():
    assert check_key("LA_T_1138215") is None and check_key("Alec 0") is None
    for key in ("a.b", "a/b", "a\\b", "", " a", "a\tb"):
        assert check_key(key) is not None, key


def test_default_split(tmp_path):
    assert default_split("asvspoof2019", "p/ASVspoof2019.LA.cm.dev.trl.txt") == "dev"
    assert default_split("asvspoof2019", "ASVspoof2019.LA.cm.train.trn.txt") == "train"
    assert default_split("asvspoof2021", "trial_metadata.txt") == "eval"
    assert default_split("asvspoof5", "p/ASVspoof5.train.tsv") == "train"
    assert default_split("asvspoof5", "ASVspoof5.dev.track_1.tsv") == "dev"
    assert default_split("asvspoof5", "ASVspoof5.eval.track_1.tsv") == "eval"
    assert default_split("asvspoof5", "ASVspoof5.dev.metadata.txt") == "dev"
    assert default_split("itw", "meta.csv") == "eval"
    assert default_split("csv", "dir/my_train.csv") == "my_train"
    with pytest.raises(ShardsError, match="pass --split"):
        default_split("csv", "my-train.csv")
    with pytest.raises(ShardsError, match="pass --split"):
        default_split("asvspoof2019", "protocol.txt")
