"""Shard builder: webdataset round trip, determinism, label groups, resume, bad input."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
import soundfile as sf
import webdataset as wds

import shards.build as build_mod
from shards.build import MANIFEST, STATE, BuildOptions, build
from shards.errors import ShardsError
from shards.plan import Item, chunk
from shards.protocols import Record
from shards.verify import verify

CONTRACT_FIELDS = {"utt_id", "label", "attack", "speaker", "dataset", "subset", "sample_rate",
                   "num_samples", "duration", "sha256", "source"}


def opts(corpus, out, **kw) -> BuildOptions:
    kw.setdefault("shard_size", 5)
    kw.setdefault("fmt", "asvspoof2019")
    return BuildOptions(protocol=str(corpus["protocol"]),
                        audio_dir=str(corpus["audio_dir"]), out_dir=str(out), progress=False, **kw)


def read_wds(out: Path, manifest: dict) -> list[dict]:
    urls = [str(out / s["name"]) for s in manifest["shards"]]
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def dir_bytes(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_round_trip_through_webdataset(la19_corpus, tmp_path):
    out = tmp_path / "out"
    m = build(opts(la19_corpus, out))
    assert [s["name"] for s in m["shards"]] == [f"train-00000{i}.tar" for i in range(3)]
    samples = read_wds(out, m)
    assert [s["__key__"] for s in samples] == sorted(r[1] for r in la19_corpus["rows"])
    rows = {r[1]: r for r in la19_corpus["rows"]}
    for s in samples:
        meta = json.loads(s["json"])
        src = la19_corpus["audio_dir"] / "flac" / f"{s['__key__']}.flac"
        assert s["flac"] == src.read_bytes()  # original bytes untouched
        assert CONTRACT_FIELDS <= set(meta)
        speaker, utt, attack, key = rows[s["__key__"]]
        assert (meta["utt_id"], meta["speaker"], meta["label"], meta["attack"]) == \
            (utt, speaker, key, attack)
        assert (meta["dataset"], meta["subset"], meta["source"]) == \
            ("asvspoof2019_la", "train", f"flac/{utt}.flac")
        assert meta["sha256"] == hashlib.sha256(s["flac"]).hexdigest()
        assert meta["num_samples"] == len(sf.read(io.BytesIO(s["flac"]))[0])
    assert m["counts"] == {"bonafide": 4, "spoof": 8} and m["num_samples"] == 12
    assert m["attacks"] == {"-": 4, "A01": 2, "A02": 2, "A03": 1, "A04": 1, "A05": 1, "A06": 1}
    assert m["sample_rates"] == {"16000": 12} and m["missing"] == {"count": 0, "examples": []}
    assert m["total_duration"] == pytest.approx(sum(0.05 + 0.01 * i for i in range(12)), abs=1e-3)
    for s in m["shards"]:
        data = (out / s["name"]).read_bytes()
        assert (s["bytes"], s["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert [s["num_samples"] for s in m["shards"]] == [5, 5, 2]
    assert json.loads((out / MANIFEST).read_text()) == m and not (out / STATE).exists()


def test_split_by_label_names_and_groups(la19_corpus, tmp_path):
    out = tmp_path / "out"
    m = build(opts(la19_corpus, out, shard_size=3, split_by_label=True))
    names = [s["name"] for s in m["shards"]]
    assert names == ["train-bonafide-000000.tar", "train-bonafide-000001.tar",
                     "train-spoof-000000.tar", "train-spoof-000001.tar", "train-spoof-000002.tar"]
    for shard in m["shards"]:
        labels = {json.loads(s["json"])["label"] for s in read_wds(out, {"shards": [shard]})}
        assert labels == {shard["label"]}
        assert shard["counts"][shard["label"]] == shard["num_samples"]


def test_rebuild_is_byte_identical_and_workers_do_not_matter(la19_corpus, tmp_path):
    build(opts(la19_corpus, tmp_path / "a", shard_size=3, split_by_label=True))
    build(opts(la19_corpus, tmp_path / "b", shard_size=3, split_by_label=True, workers=2))
    assert dir_bytes(tmp_path / "a") == dir_bytes(tmp_path / "b")


def test_seeded_shuffle(la19_corpus, tmp_path):
    def keys(name, **kw):
        m = build(opts(la19_corpus, tmp_path / name, **kw))
        return [s["__key__"] for s in read_wds(tmp_path / name, m)]

    first, again, other = (keys("a", shuffle=True, seed=1), keys("b", shuffle=True, seed=1),
                           keys("c", shuffle=True, seed=2))
    assert first == again and first != other and first != sorted(first)
    assert sorted(first) == sorted(other)


def test_chunk_by_count_and_bytes():
    def items(*sizes):
        return [Item(Record(f"u{i}", "spoof", "A01", "s", "t", "p", i), "p", "p", n)
                for i, n in enumerate(sizes)]

    def sizes(shards):
        return [[it.size for it in shard] for shard in shards]

    assert sizes(chunk(items(1, 1, 1, 1, 1), 2, 0)) == [[1, 1], [1, 1], [1]]
    assert sizes(chunk(items(4, 4, 4, 9, 1), 0, 8)) == [[4, 4], [4], [9], [1]]
    assert sizes(chunk(items(1, 1, 1, 5), 2, 6)) == [[1, 1], [1, 5]]


def test_resume_rebuilds_only_the_missing_shard(la19_corpus, tmp_path):
    out = tmp_path / "out"
    build(opts(la19_corpus, out, shard_size=3))
    before = dir_bytes(out)
    inodes = {p.name: p.stat().st_ino for p in out.glob("*.tar")}
    (out / "train-000001.tar").unlink()
    build(opts(la19_corpus, out, shard_size=3))
    assert dir_bytes(out) == before
    changed = {p.name for p in out.glob("*.tar") if p.stat().st_ino != inodes[p.name]}
    assert changed == {"train-000001.tar"}


def test_crash_then_resume(la19_corpus, tmp_path, monkeypatch):
    out, calls = tmp_path / "out", []
    real = build_mod.write_shard

    def failing(plan, *args):
        calls.append(plan.name)
        if plan.name == "train-000002.tar":
            raise ShardsError("disk on fire")
        return real(plan, *args)

    monkeypatch.setattr(build_mod, "write_shard", failing)
    with pytest.raises(ShardsError, match=r"shard train-000002.tar: disk on fire"):
        build(opts(la19_corpus, out, shard_size=3))
    assert not (out / MANIFEST).exists()
    assert sorted(json.loads((out / STATE).read_text())["shards"]) == \
        ["train-000000.tar", "train-000001.tar"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    stale = out / ".train-000002.tar.abcd1234.tmp"  # left by a killed worker
    stale.write_bytes(b"half")
    calls.clear()
    monkeypatch.setattr(build_mod, "write_shard", lambda plan, *a: calls.append(plan.name)
                        or real(plan, *a))
    m = build(opts(la19_corpus, out, shard_size=3))
    assert calls == ["train-000002.tar", "train-000003.tar"] and not stale.exists()
    assert m == build(opts(la19_corpus, tmp_path / "clean", shard_size=3))
    assert dir_bytes(out) == dir_bytes(tmp_path / "clean")


def test_corrupted_shard_is_rebuilt_on_resume(la19_corpus, tmp_path):
    out = tmp_path / "out"
    build(opts(la19_corpus, out))
    before, shard = dir_bytes(out), out / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF
    shard.write_bytes(bytes(data))
    build(opts(la19_corpus, out))
    assert dir_bytes(out) == before


def test_other_build_in_out_dir_needs_overwrite(la19_corpus, tmp_path):
    out = tmp_path / "out"
    build(opts(la19_corpus, out, shard_size=3))
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ShardsError) as err:
        build(opts(la19_corpus, out, shard_size=4))
    assert "holds another build" in str(err.value) and "shard_size: 3 -> 4" in str(err.value)
    assert "--overwrite" in str(err.value)
    m = build(opts(la19_corpus, out, shard_size=4, overwrite=True))
    assert sorted(p.name for p in out.iterdir()) == \
        sorted([MANIFEST, "notes.txt"] + [s["name"] for s in m["shards"]])
    assert len(m["shards"]) == 3 and verify(out, progress=False) == []


def test_unrecorded_tars_are_never_touched(la19_corpus, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "train-000000.tar").write_bytes(b"someone else's")
    for overwrite in (False, True):
        with pytest.raises(ShardsError, match="no sccl-shards build recorded"):
            build(opts(la19_corpus, out, overwrite=overwrite))
    assert (out / "train-000000.tar").read_bytes() == b"someone else's"


def test_missing_files_error_and_skip(la19_corpus, tmp_path):
    gone = [r[1] for r in la19_corpus["rows"][:6]]
    for utt in gone:
        (la19_corpus["audio_dir"] / "flac" / f"{utt}.flac").unlink()
    with pytest.raises(ShardsError) as err:
        build(opts(la19_corpus, tmp_path / "out"))
    msg = str(err.value)
    assert msg.startswith("6 of 12 audio files listed in the protocol are missing")
    assert ", ".join(f"flac/{u}.flac" for u in gone[:5]) in msg and gone[5] not in msg
    assert "--skip-missing" in msg and not (tmp_path / "out").exists()
    m = build(opts(la19_corpus, tmp_path / "out", skip_missing=True))
    assert m["missing"] == {"count": 6, "examples": [f"flac/{u}.flac" for u in gone]}
    assert m["num_samples"] == 6


@pytest.mark.parametrize("workers", [1, 2])
def test_corrupt_audio_is_named_and_nothing_looks_complete(la19_corpus, tmp_path, workers):
    bad = la19_corpus["audio_dir"] / "flac" / "LA_T_6000006.flac"
    bad.write_bytes(b"not audio at all" * 10)
    out = tmp_path / "out"
    with pytest.raises(ShardsError) as err:
        build(opts(la19_corpus, out, shard_size=2, workers=workers))
    assert f"unreadable or corrupt audio: {bad}" in str(err.value)
    assert "shard train-000004.tar" in str(err.value)
    assert not (out / MANIFEST).exists() and (out / STATE).exists()


def test_truncated_flac_caught_by_decode_check_and_verify(la19_corpus, tmp_path):
    src = la19_corpus["audio_dir"] / "flac" / "LA_T_8000008.flac"
    src.write_bytes(src.read_bytes()[:-400])
    with pytest.raises(ShardsError, match=f"corrupt audio.*{src}"):
        build(opts(la19_corpus, tmp_path / "a", decode_check=True))
    build(opts(la19_corpus, tmp_path / "b"))  # header-only probe: passes
    problems = verify(tmp_path / "b", decode=True, progress=False)
    assert len(problems) == 1 and "LA_T_8000008: audio does not decode" in problems[0]


def csv_corpus(tmp_path, write_audio, files: dict[str, dict]) -> tuple[Path, Path]:
    audio = tmp_path / "audio"
    for name, kw in files.items():
        write_audio(audio / name, **kw)
    proto = tmp_path / "list.csv"
    proto.write_text("path,label\n" + "".join(f"{n},spoof\n" for n in files))
    return audio, proto


def test_transcode_flac16k(tmp_path, write_audio):
    audio, proto = csv_corpus(tmp_path, write_audio, {
        "st.wav": {"sample_rate": 8000, "channels": 2, "seconds": 0.25},
        "hi.flac": {"sample_rate": 22050, "seconds": 0.2}})
    o = BuildOptions(fmt="csv", protocol=str(proto), audio_dir=str(audio), out_dir=str(tmp_path /
                     "out"), transcode="flac16k", progress=False)
    m = build(o)
    assert m["sample_rates"] == {"16000": 2} and m["split"] == "list"
    for s in read_wds(tmp_path / "out", m):
        assert set(s) >= {"flac", "json"} and "wav" not in s
        meta = json.loads(s["json"])
        wave, rate = sf.read(io.BytesIO(s["flac"]), always_2d=True)
        assert rate == 16000 and wave.shape[1] == 1 and sf.info(io.BytesIO(s["flac"])).subtype \
            == "PCM_16"
        assert meta["num_samples"] == len(wave) == {"st": 4000, "hi": 3200}[s["__key__"]]
        src = audio / {"st": "st.wav", "hi": "hi.flac"}[s["__key__"]]
        assert meta["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
        assert meta["sha256"] == hashlib.sha256(s["flac"]).hexdigest()


def test_wav_is_kept_as_wav_and_other_containers_need_transcode(tmp_path, write_audio):
    audio, proto = csv_corpus(tmp_path, write_audio, {"0.wav": {}, "1.wav": {"seed": 1}})
    m = build(BuildOptions(fmt="csv", protocol=str(proto), audio_dir=str(audio), split="x",
                           out_dir=str(tmp_path / "out"), progress=False))
    samples = read_wds(tmp_path / "out", m)
    assert [(s["__key__"], s["wav"]) for s in samples] == \
        [(n, (audio / f"{n}.wav").read_bytes()) for n in ("0", "1")]
    audio, proto = csv_corpus(tmp_path, write_audio, {"v.ogg": {"fmt": "OGG"}})
    with pytest.raises(ShardsError, match="container OGG is neither FLAC nor WAV.*--transcode"):
        build(BuildOptions(fmt="csv", protocol=str(proto), audio_dir=str(audio), split="x",
                           out_dir=str(tmp_path / "o2"), progress=False))


def test_asvspoof2021_extras_reach_the_json(tmp_path, write_audio):
    audio = tmp_path / "ASVspoof2021_DF_eval"
    lines = ["LA_0023 DF_E_2000011 nocodec asvspoof A14 spoof notrim eval traditional_vocoder"
             " - - - -", "LA_0024 DF_E_2000012 mp3m4a vcc2018 bonafide bonafide notrim progress"
             " bonafide - - - -"]
    for line in lines:
        write_audio(audio / "flac" / f"{line.split()[1]}.flac")
    proto = tmp_path / "trial_metadata.txt"
    proto.write_text("\n".join(lines) + "\n")
    m = build(BuildOptions(fmt="asvspoof2021", protocol=str(proto), audio_dir=str(audio),
                           out_dir=str(tmp_path / "out"), subset="all", progress=False))
    assert (m["dataset"], m["split"], m["subset"]) == ("asvspoof2021_df", "eval", "all")
    meta = json.loads(read_wds(tmp_path / "out", m)[0]["json"])
    assert {k: meta[k] for k in ("codec", "source_corpus", "vocoder", "trim", "subset")} == {
        "codec": "nocodec", "source_corpus": "asvspoof", "vocoder": "traditional_vocoder",
        "trim": "notrim", "subset": "eval"}


def test_bad_options_are_rejected(la19_corpus, tmp_path):
    for kw, msg in [({"shard_size": 0}, "set --shard-size or --shard-bytes"),
                    ({"transcode": "mp3"}, "--transcode 'mp3'"), ({"workers": 0}, "--workers"),
                    ({"split": "a-b"}, "--split 'a-b'"),
                    ({"subset": "eval"}, "--subset applies to --format asvspoof2021 only"),
                    ({"fmt": "la"}, "unknown format 'la'")]:
        with pytest.raises(ShardsError, match=msg):
            opts(la19_corpus, tmp_path / "o", **kw)
