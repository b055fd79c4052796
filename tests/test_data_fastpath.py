"""The loader's fast paths give what the reference readers give.

sccl.data_tar reads tar shards without webdataset's per-member machinery, and sccl.audio reads
crops with libsndfile's read call directly; both must agree exactly with webdataset
(tariterators.tar_file_expander + group_by_keys) and soundfile.SoundFile.read.
"""

from __future__ import annotations

import gzip
import io
import tarfile

import numpy as np
import pytest
import soundfile as sf
import torch
import webdataset as wds

from sccl import audio, data_tar
from shards.writer import add_member
from tests.data_fixtures import encode, make_wave, write_shards


def _webdataset(path: str) -> list:
    """Samples as webdataset yields them, then the error it raises (type and message)."""
    out: list = []
    try:
        with open(path, "rb", buffering=1 << 20) as stream:
            files = wds.tariterators.tar_file_expander([{"url": path, "stream": stream}])
            out.extend(wds.tariterators.group_by_keys(files))
    except Exception as err:
        out.append(f"{type(err).__name__}: {err}")
    return out


def _ours(path: str, first: int = 0) -> list:
    out: list = []
    try:
        out.extend(data_tar.iter_samples(path, first))
    except Exception as err:
        out.append(f"{type(err).__name__}: {err}")
    return out


def _tar(path, members, fmt=tarfile.USTAR_FORMAT) -> bytes:
    """Write (name, bytes | None for a directory) members; returns the tar's bytes."""
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            if data is None:
                info = tarfile.TarInfo(name)
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                add_member(tar, name, data)
    return path.read_bytes()


MEMBERS = [(f"utt_{i}.{ext}", bytes([i]) * (100 * i + 7 * len(ext)))
           for i in range(1, 6) for ext in ("flac", "json")]


def test_standard_shards_take_the_lean_path_and_match_webdataset(tmp_path, monkeypatch):
    write_shards(tmp_path / "fix", n_bonafide=5, n_spoof=6, n_shards=(1, 2))
    _tar(tmp_path / "pax.tar", MEMBERS, fmt=tarfile.PAX_FORMAT)  # what sccl-shards writes
    paths = [str(p) for p in sorted((tmp_path / "fix").glob("*.tar"))] + [
        str(tmp_path / "pax.tar")]
    expected = {p: _webdataset(p) for p in paths}
    assert all(len(v) >= 2 and isinstance(v[0], dict) for v in expected.values())

    def no_webdataset(*a, **k):
        raise AssertionError("fell back to webdataset")

    monkeypatch.setattr(wds.tariterators, "tar_file_expander", no_webdataset)
    for p in paths:
        assert _ours(p) == expected[p]
        got = _ours(p, first=2)  # samples before `first` are None, the rest unchanged
        assert got[:2] == [None, None] and got[2:] == expected[p][2:]


@pytest.mark.parametrize("case", ["long_name", "directory", "meta", "gzip", "duplicate",
                                  "cut_in_member", "cut_at_member", "bad_header", "empty",
                                  "no_extension"])
def test_other_tars_read_exactly_as_webdataset_reads_them(tmp_path, case):
    path = tmp_path / "shard.tar"
    members = list(MEMBERS)
    if case == "long_name":
        members.insert(4, ("k" * 120 + ".flac", b"x" * 30))
    elif case == "directory":
        members.insert(2, ("sub/", None))
    elif case == "meta":
        members.insert(2, ("__info__", b"meta"))
    elif case == "duplicate":
        members.insert(5, members[4])
    elif case == "no_extension":
        members.insert(3, ("README", b"text"))
    raw = _tar(path, members, fmt=tarfile.PAX_FORMAT)
    if case == "gzip":
        path.write_bytes(gzip.compress(raw))
    elif case == "cut_in_member":
        path.write_bytes(raw[: 512 * 9 + 100])
    elif case == "cut_at_member":
        path.write_bytes(raw[: 512 * 8])  # ends after 4 members, with no end-of-archive blocks
    elif case == "bad_header":
        data = bytearray(raw)
        data[512 * 6 + 3] ^= 0xFF  # a name byte of the 4th header: its checksum fails
        path.write_bytes(bytes(data))
    elif case == "empty":
        path.write_bytes(b"")
    expected = _webdataset(str(path))
    assert _ours(str(path)) == expected
    assert _ours(str(path), first=1)[1:] == expected[1:]


@pytest.mark.parametrize("binding", [True, False])
def test_crop_read_equals_soundfile_read(monkeypatch, binding):
    if not binding:  # a soundfile without the cffi binding: SoundFile.read is used
        monkeypatch.setattr(audio, "_LIBSNDFILE", (None, None))
    rng = np.random.default_rng(0)
    for fmt in ("flac", "wav"):
        data = encode(make_wave(rng, 1.3, 16000), 16000, fmt)  # 20800 frames
        for u, length in ((0.0, 4000), (0.4, 4000), (0.9, 4000), (0.5, 30000)):
            offset = int(u * (20800 - length + 1)) if length < 20800 else 0
            with sf.SoundFile(io.BytesIO(data)) as f:
                f.seek(offset)
                ref = torch.from_numpy(f.read(length, dtype="float32"))
            out = torch.full((length,), 5.0)
            n = audio.crop_into(data, out, sample_rate=16000, u=u)
            assert n == len(ref) and torch.equal(out[:n], ref) and not out[n:].any()


def test_read_into_falls_back_for_buffers_it_cannot_fill_directly():
    data = encode(make_wave(np.random.default_rng(1), 0.5, 16000), 16000, "flac")
    with sf.SoundFile(io.BytesIO(data)) as f:
        ref = f.read(dtype="float64")
    buf = np.zeros(len(ref) + 10)  # float64: sf_readf_float would not fit it
    with sf.SoundFile(io.BytesIO(data)) as f:
        assert audio._read_into(f, buf) == len(ref)
    assert np.array_equal(buf[: len(ref)], ref)
