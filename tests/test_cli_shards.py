"""``sccl-shards`` command line: build/verify/info/synth wiring, exit codes, error messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import shards
from shards.cli import byte_size, main, make_parser
from tests.mounts import read_only

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "shards", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def build_cli(corpus, out, *extra) -> int:
    return main(["build", *corpus["args"], "--out", str(out), "--no-progress", *extra])


def test_help_works_without_heavy_imports():
    res = run_cli("--help")
    assert res.returncode == 0 and "build" in res.stdout and "verify" in res.stdout
    code = ("import sys; from shards.cli import make_parser; make_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'numpy', 'soundfile', 'webdataset', 'tqdm') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout
    assert out.strip() == "[]"


def test_build_info_verify(la19_corpus, tmp_path, capsys):
    import signal

    out = tmp_path / "shards"
    before = signal.getsignal(signal.SIGTERM)
    assert build_cli(la19_corpus, out, "--shard-size", "3", "--split-by-label") == 0
    assert signal.getsignal(signal.SIGTERM) is before  # in-process: no handler left behind
    assert "12 samples (bonafide 4, spoof 8) in 5 shards" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "samples      12  (bonafide 4, spoof 8)" in text
    assert "shards       5  (bonafide 2, spoof 3)" in text and "16000 Hz: 12" in text
    assert main(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"] == {"bonafide": 4, "spoof": 8}
    assert main(["verify", str(out), "--decode", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip().endswith(": OK")


def test_verify_finds_corruption_missing_and_extra_shards(la19_corpus, tmp_path, capsys):
    out = tmp_path / "shards"
    build_cli(la19_corpus, out, "--shard-size", "3")
    manifest = json.loads((out / "manifest.json").read_text())
    shard = out / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF  # inside the first member's audio bytes
    shard.write_bytes(bytes(data))
    (out / "train-000002.tar").unlink()
    (out / "stray-000000.tar").write_bytes(b"")
    capsys.readouterr()
    assert main(["verify", str(out), "--no-progress"]) == 1
    lines = capsys.readouterr().out.splitlines()
    first_key = sorted(r[1] for r in la19_corpus["rows"])[3]
    assert "train-000001.tar: size/sha256 differ from manifest.json" in lines
    assert f"train-000001.tar: {first_key}: audio sha256 differs from its json" in lines
    assert "train-000002.tar: missing" in lines
    assert "stray-000000.tar: .tar file not listed in manifest.json" in lines
    assert lines[-1].endswith("problem(s)") and len(manifest["shards"]) == 4


def test_verify_never_opens_a_shard_named_outside_the_dir(la19_corpus, tmp_path, capsys):
    out = tmp_path / "shards"
    build_cli(la19_corpus, out, "--shard-size", "6")
    (tmp_path / "victim.tar").write_bytes(b"")
    (tmp_path / "secret.tar").write_bytes(b"")
    m = json.loads((out / "manifest.json").read_text())
    m["shards"][0]["name"] = "../victim.tar"
    m["shards"][1]["name"] = "link.tar"
    (out / "link.tar").symlink_to(tmp_path / "secret.tar")
    (out / "manifest.json").write_text(json.dumps(m))
    capsys.readouterr()
    assert main(["verify", str(out), "--no-progress"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [
        "manifest.json: shards[0] '../victim.tar' is a path, not a bare file name; not opened",
        f"manifest.json: shards[1] 'link.tar' is a symlink leading out of {out} (to "
        f"{tmp_path / 'secret.tar'}); not opened"]
    assert not any("victim" in line or "secret" in line for line in lines[2:])
    from sccl.data_shards import ShardDirError, load_shard_set  # the training loader too

    with pytest.raises(ShardDirError, match=r"shards\[0\] has a bad label, count or name"):
        load_shard_set(str(out))


def test_synth_into_a_read_only_place_is_one_line(tmp_path, capsys):
    pytest.importorskip("shards.synth")
    place = tmp_path / "ro"
    place.mkdir()
    with read_only(place):
        for out in (place, place / "new"):
            assert main(["synth", "--out", str(out), "--size", "tiny"]) == 2
            assert capsys.readouterr().err == \
                f"sccl-shards: error: {out / 'synth.json'}: read-only file system\n"
    assert os.listdir(place) == []


def test_bad_input_is_one_message_exit_2_no_traceback(la19_corpus, tmp_path):
    proto = la19_corpus["protocol"]
    proto.write_text(proto.read_text() + "LA_0079 LA_T_1 -\n")
    res = run_cli("build", *la19_corpus["args"], "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith(f"sccl-shards: error: {proto}:13: LA_0079 LA_T_1 -\n")
    assert "expected 5 columns, found 3" in res.stderr and not (tmp_path / "o").exists()


def test_other_build_and_incomplete_dirs(la19_corpus, tmp_path, capsys):
    out = tmp_path / "o"
    assert build_cli(la19_corpus, out, "--shard-size", "3") == 0
    assert build_cli(la19_corpus, out, "--shuffle", "--seed", "3") == 2
    err = capsys.readouterr().err
    assert "holds another build" in err and "--overwrite" in err and "shuffle: False -> True" in err
    assert build_cli(la19_corpus, out, "--shuffle", "--seed", "3", "--overwrite") == 0
    (out / "manifest.json").rename(out / ".build-state.json")
    assert main(["info", str(out)]) == 2 and "build incomplete" in capsys.readouterr().err
    assert main(["verify", str(tmp_path)]) == 2
    assert "not a shard directory" in capsys.readouterr().err


def test_shard_bytes_flag(la19_corpus, tmp_path, capsys):
    assert byte_size("1000") == 1000 and byte_size("512M") == 512 << 20
    assert byte_size("2GiB") == 2 << 30 and byte_size("3k") == 3 << 10
    with pytest.raises(Exception, match="not a byte size"):
        byte_size("lots")
    out = tmp_path / "o"
    assert build_cli(la19_corpus, out, "--shard-size", "0", "--shard-bytes", "8K") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    flac = la19_corpus["audio_dir"] / "flac"
    sizes = [sum((flac / f"{k}.flac").stat().st_size for k in keys)
             for keys in _shard_keys(out, manifest)]
    assert len(sizes) > 1 and max(sizes) <= 8 << 10


def _shard_keys(out, manifest):
    import webdataset as wds

    return [[s["__key__"] for s in wds.WebDataset(str(out / e["name"]), shardshuffle=False)]
            for e in manifest["shards"]]


def test_synth_subcommand_wiring(tmp_path, monkeypatch, capsys):
    calls = []
    fake = types.ModuleType("shards.synth")
    fake.generate = lambda out, **kw: calls.append((out, kw)) or {"files": 3}
    monkeypatch.setitem(sys.modules, "shards.synth", fake)
    monkeypatch.setattr(shards, "synth", fake, raising=False)
    out = str(tmp_path / "corpus")
    assert main(["synth", "--out", out, "--size", "tiny", "--seed", "3", "--workers", "2"]) == 0
    assert calls == [(out, {"size": "tiny", "seed": 3, "workers": 2})]
    assert json.loads(capsys.readouterr().out) == {"files": 3}


@pytest.mark.slow
def test_synth_corpus_shards_in_every_format(tmp_path, capsys):
    """The synthetic corpus and the builder agree on layouts and protocol formats."""
    pytest.importorskip("shards.synth")
    corpus, out = tmp_path / "synth", tmp_path / "shards"
    assert main(["synth", "--out", str(corpus), "--size", "tiny", "--workers", "2"]) == 0
    la = corpus / "LA"
    proto = la / "ASVspoof2019_LA_cm_protocols"
    builds = {
        "la19_train": ["asvspoof2019", proto / "ASVspoof2019.LA.cm.train.trn.txt",
                       la / "ASVspoof2019_LA_train", "--split-by-label"],
        "la21": ["asvspoof2021", corpus / "keys/LA/CM/trial_metadata.txt",
                 corpus / "ASVspoof2021_LA_eval", "--subset", "all"],
        "df21": ["asvspoof2021", corpus / "keys/DF/CM/trial_metadata.txt",
                 corpus / "ASVspoof2021_DF_eval", "--subset", "all"],
        "itw": ["itw", corpus / "release_in_the_wild/meta.csv", corpus / "release_in_the_wild"],
        "as5_eval": ["asvspoof5", corpus / "ASVspoof5_protocols/ASVspoof5.eval.track_1.tsv",
                     corpus / "flac_E_eval"],
    }
    for name, (fmt, protocol, audio, *extra) in builds.items():
        args = ["build", "--format", fmt, "--protocol", str(protocol), "--audio-dir", str(audio),
                "--out", str(out / name), "--no-progress", "--workers", "2", *extra]
        assert main(args) == 0, capsys.readouterr().err
        assert main(["verify", str(out / name), "--decode", "--no-progress"]) == 0
        manifest = json.loads((out / name / "manifest.json").read_text())
        assert manifest["counts"]["bonafide"] > 0 and manifest["counts"]["spoof"] > 0
    # ASVspoof 5: split from the protocol name, codecs counted like the 2021 sets
    as5 = json.loads((out / "as5_eval" / "manifest.json").read_text())
    assert as5["dataset"] == "asvspoof5" and as5["split"] == "eval"
    assert "-" in as5["codecs"] and len(as5["codecs"]) > 1


LA21_KEYS = ["LA_0009 LA_E_9332881 alaw ita_tx A07 spoof notrim eval",
             "LA_0020 LA_E_7294490 g722 loc_tx bonafide bonafide notrim eval",
             "LA_0021 LA_E_1000003 alaw ita_tx A10 spoof notrim progress",
             "LA_0022 LA_E_1000004 nocodec nocodec bonafide bonafide notrim hidden_track"]


def test_info_shows_2021_subsets_and_codecs(tmp_path, write_audio, capsys):
    audio, proto = tmp_path / "ASVspoof2021_LA_eval", tmp_path / "trial_metadata.txt"
    for line in LA21_KEYS:
        write_audio(audio / "flac" / f"{line.split()[1]}.flac")
    proto.write_text("\n".join(LA21_KEYS) + "\n")
    out = tmp_path / "la21"
    assert main(["build", "--format", "asvspoof2021", "--protocol", str(proto), "--audio-dir",
                 str(audio), "--out", str(out), "--subset", "all", "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["subsets"] == {"eval": {"bonafide": 1, "spoof": 1},
                                   "hidden_track": {"bonafide": 1, "spoof": 0},
                                   "progress": {"bonafide": 0, "spoof": 1}}
    assert manifest["codecs"] == {"alaw": {"bonafide": 0, "spoof": 2},
                                  "g722": {"bonafide": 1, "spoof": 0},
                                  "nocodec": {"bonafide": 1, "spoof": 0}}
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = lines.index("subsets")
    assert lines[at:at + 4] == ["subsets", "  eval         2  (bonafide 1, spoof 1)",
                                "  hidden_track 1  (bonafide 1, spoof 0)",
                                "  progress     1  (bonafide 0, spoof 1)"]
    at = lines.index("codecs")
    assert lines[at + 1] == "  alaw         2  (bonafide 0, spoof 2)"
    assert "short clips  0  (< 400 samples at 16 kHz)" in lines
    for key in ("subsets", "codecs", "short"):  # a manifest of an older builder still reads
        manifest.pop(key)
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "subsets      not recorded (built by an older sccl-shards" in text
    assert "codecs" not in text and "attacks" in text


def test_every_synth_option_is_documented_with_its_default():
    from shards.synth_layout import SIZES

    parser = make_parser()
    synth = parser._subparsers._group_actions[0].choices["synth"]
    options = [a for a in synth._actions if a.dest != "help"]
    assert {a.dest for a in options} == {"out", "size", "seed", "workers"}
    for action in options:
        assert action.help, action.dest
        assert action.required or f"default {action.default}" in action.help \
            or f"default: {action.default}" in action.help, action.help
    text = synth.format_help()
    for size, spec in SIZES.items():
        files = sum(bona + spoof for key, (bona, spoof, *_) in spec.items() if key != "seconds")
        lo, hi = spec["seconds"]
        assert f"'{size}': {files} files of {lo:g}-{hi:g} s" in " ".join(text.split())
