"""Shard builder under the field's failures: two builds at once, kill -9 of a parallel build,
--overwrite next to user files or edited records, --out that is a file, read-only or full,
broken, non-finite and too-short audio; a shard directory from someone else."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import shards.build as build_mod
from shards.build import MANIFEST, STATE, build
from shards.cli import main
from shards.errors import ShardsError
from shards.verify import verify
from shards.writer import add_member
from tests.mounts import fill, read_only, small_disk
from tests.test_build import dir_bytes, opts

REPO = Path(__file__).resolve().parents[1]

# Run the CLI with shards.build.write_shard replaced by HOOK.write_shard (a module in
# argv[1], importable by pool workers because its folder is on PYTHONPATH).
RUNNER = ("import sys, importlib, shards.build as b; b.write_shard = "
          "importlib.import_module('hook').write_shard; from shards.cli import main; "
          "sys.exit(main(sys.argv[1:]))")


def start_hooked_build(tmp_path: Path, hook: str, args: list[str]) -> subprocess.Popen:
    (tmp_path / "hook.py").write_text(hook)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    return subprocess.Popen([sys.executable, "-c", RUNNER, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"build exited ({proc.returncode}) before {what}: {proc.stderr.read()}")
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def build_args(corpus, out, *extra) -> list[str]:
    return ["build", *corpus["args"], "--out", str(out), "--no-progress", *extra]


HOLD = """
import time
from pathlib import Path
from shards.writer import write_shard as real

def write_shard(plan, out_dir, opts):
    Path(out_dir, "..", "started").touch()
    while not Path(out_dir, "..", "go").exists():
        time.sleep(0.05)
    return real(plan, out_dir, opts)
"""


def test_second_build_into_the_same_out_is_refused_naming_the_first(la19_corpus, tmp_path,
                                                                    capsys):
    out = tmp_path / "out"
    first = start_hooked_build(tmp_path, HOLD, build_args(la19_corpus, out, "--shard-size", "3"))
    try:
        wait_for((tmp_path / "started").exists, first, "the first build started a shard")
        before = dir_bytes(out)
        for extra in ([], ["--overwrite"], ["--shard-size", "4", "--overwrite"]):
            t0 = time.monotonic()
            assert main(build_args(la19_corpus, out, "--shard-size", "3", *extra)) == 2
            err = capsys.readouterr().err
            assert time.monotonic() - t0 < 10 and len(err.strip().splitlines()) == 1
            assert "is in use" in err and f"pid {first.pid} " in err, err
            assert dir_bytes(out) == before  # the refused build touched nothing
        (tmp_path / "go").touch()
        assert first.wait(timeout=120) == 0, first.stderr.read()
    finally:
        first.kill()
        first.wait()
    assert verify(out, progress=False) == [] and not (out / ".lock").exists()


def four_recorded_two_written(out: Path) -> bool:
    """Shards 0-3 recorded by the parent, 4 and 5 written by the workers (SLOW_AFTER_FOUR)."""
    try:
        recorded = json.loads((out / STATE).read_text())["shards"]
    except FileNotFoundError:
        return False
    return len(recorded) >= 4 and all((out / f"train-{i:06d}.tar").exists() for i in (4, 5))


SLOW_AFTER_FOUR = """
import time
from shards.writer import write_shard as real

def write_shard(plan, out_dir, opts):
    entry = real(plan, out_dir, opts)
    if int(plan.name[-10:-4]) >= 4:  # written, but killed before the parent records it
        time.sleep(600)
    return entry
"""


def test_kill9_of_a_two_worker_build_resumes_only_unfinished_shards(la19_corpus, tmp_path,
                                                                    capsys):
    out = tmp_path / "out"
    proc = start_hooked_build(tmp_path, SLOW_AFTER_FOUR, build_args(
        la19_corpus, out, "--shard-size", "1", "--workers", "2"))

    try:
        wait_for(lambda: four_recorded_two_written(out), proc, "4 shards recorded, 2 more written")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole job, as a node failure or scancel does
        proc.wait()
    recorded = sorted(json.loads((out / STATE).read_text())["shards"])
    assert recorded == [f"train-{i:06d}.tar" for i in range(4)]
    kept = {n: (out / n).stat().st_ino for n in recorded}
    capsys.readouterr()
    m = build(opts(la19_corpus, out, shard_size=1, workers=2))
    err = capsys.readouterr().err
    assert "resuming" in err and "4 of 12 shards already built, building 8" in err
    assert {n: (out / n).stat().st_ino for n in recorded} == kept  # finished shards untouched
    assert m == build(opts(la19_corpus, tmp_path / "clean", shard_size=1))
    assert dir_bytes(out) == dir_bytes(tmp_path / "clean")


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_pool_workers_die_with_a_killed_parent(la19_corpus, tmp_path):
    out = tmp_path / "out"
    proc = start_hooked_build(tmp_path, SLOW_AFTER_FOUR, build_args(
        la19_corpus, out, "--shard-size", "1", "--workers", "2"))
    try:
        wait_for(lambda: (out / "train-000005.tar").exists(), proc, "shard 5 written")
        os.kill(proc.pid, signal.SIGKILL)  # the parent only: its workers are orphaned
        proc.wait()
        end = time.monotonic() + 10
        while group_members(proc.pid) and time.monotonic() < end:
            time.sleep(0.1)
        assert group_members(proc.pid) == []  # no orphan left to write into --out
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize("to_group", [True, False], ids=["job", "parent"])
def test_sigterm_stops_a_two_worker_build_at_once_and_frees_the_lock(la19_corpus, tmp_path,
                                                                     to_group):
    out = tmp_path / "out"
    proc = start_hooked_build(tmp_path, SLOW_AFTER_FOUR, build_args(
        la19_corpus, out, "--shard-size", "1", "--workers", "2"))
    try:
        wait_for(lambda: four_recorded_two_written(out), proc, "4 shards recorded, 2 written")
        (os.killpg if to_group else os.kill)(proc.pid, signal.SIGTERM)  # scancel / kill PID
        assert proc.wait(timeout=20) == 130  # not after the 600 s the running shards take
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.stderr.read() == "sccl-shards: interrupted\n"
    assert not (out / ".lock").exists() and group_members(proc.pid) == []
    assert len(json.loads((out / STATE).read_text())["shards"]) == 4
    build(opts(la19_corpus, out, shard_size=1))
    build(opts(la19_corpus, tmp_path / "clean", shard_size=1))
    assert dir_bytes(out) == dir_bytes(tmp_path / "clean")


def test_overwrite_never_deletes_what_no_build_recorded(la19_corpus, tmp_path):
    out = tmp_path / "out"
    build(opts(la19_corpus, out, shard_size=3))
    mine = {"holiday-000001.tar": b"photos", "train-000009.tar": b"not a shard of this build",
            "notes.txt": b"mine", ".manifest.json.backup.tmp": b"mine too"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    before = dir_bytes(out)
    with pytest.raises(ShardsError, match="holiday-000001.tar.*left alone"):
        build(opts(la19_corpus, out, shard_size=4, overwrite=True))
    assert dir_bytes(out) == before
    for name in ("holiday-000001.tar", "train-000009.tar"):
        (out / name).unlink()
    m = build(opts(la19_corpus, out, shard_size=4, overwrite=True))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MANIFEST, "notes.txt", ".manifest.json.backup.tmp"] + [s["name"] for s in m["shards"]])
    assert all((out / n).read_bytes() == mine[n] for n in ("notes.txt",
                                                           ".manifest.json.backup.tmp"))


@pytest.mark.parametrize("text", ['{"tool": "other", "files": ["a.wav"]}', '{"builder": "sc'])
def test_a_manifest_sccl_shards_did_not_write_is_left_alone(la19_corpus, tmp_path, text):
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST).write_text(text)
    for overwrite in (False, True):
        with pytest.raises(ShardsError, match=f"{MANIFEST}: (not written by|unreadable)"):
            build(opts(la19_corpus, out, overwrite=overwrite))
    assert sorted(os.listdir(out)) == [MANIFEST] and (out / MANIFEST).read_text() == text


def _record_names(out: Path, record: str, name: str) -> None:
    """Put ``name`` last among the shard names of ``record`` (a complete or a killed build)."""
    if record == MANIFEST:
        m = json.loads((out / MANIFEST).read_text())
        m["shards"].append({**m["shards"][-1], "name": name})
        (out / MANIFEST).write_text(json.dumps(m))
    else:  # the state a killed build leaves, naming the victim among its planned shards
        state = json.loads((out / MANIFEST).read_text())
        state["planned"] = [s["name"] for s in state.pop("shards")] + [name]
        state["shards"] = {}
        (out / STATE).write_text(json.dumps(state))
        (out / MANIFEST).unlink()


@pytest.mark.parametrize(("record", "victim"), [
    (MANIFEST, "../victim.txt"), (MANIFEST, "absolute"), (MANIFEST, "symlink"),
    (STATE, "../victim.txt"), (STATE, "absolute")])
def test_recorded_names_leading_out_of_out_stop_the_build_deleting_nothing(
        la19_corpus, tmp_path, capsys, record, victim):
    out, target = tmp_path / "out", tmp_path / "victim.txt"
    target.write_text("not yours")
    build(opts(la19_corpus, out, shard_size=3))
    name = {"../victim.txt": "../victim.txt", "absolute": str(target)}.get(victim)
    if victim == "symlink":  # a recorded shard replaced by a link to a file outside --out
        name = "train-000000.tar"
        (out / name).unlink()
        (out / name).symlink_to(target)
    else:
        _record_names(out, record, name)
    before = dir_bytes(out)
    for extra in (["--overwrite", "--shard-size", "4"], ["--shard-size", "3"]):
        assert main(build_args(la19_corpus, out, *extra)) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"sccl-shards: error: {out / record}: recorded shard name "
                              f"{name!r} ") and len(err.strip().splitlines()) == 1, err
        assert "nothing was deleted" in err
        assert target.read_text() == "not yours" and dir_bytes(out) == before


def test_out_naming_a_file_is_one_line_exit_2(la19_corpus, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep")
    for out, why in ((afile, "exists and is not a directory"),
                     (afile / "sub", "cannot create the directory")):
        assert main(build_args(la19_corpus, out)) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"sccl-shards: error: --out {out}: {why}")
        assert len(err.strip().splitlines()) == 1
    assert afile.read_text() == "keep"


def test_read_only_out_is_one_line_exit_2_and_verify_still_reads_it(la19_corpus, tmp_path,
                                                                     capsys):
    out = tmp_path / "out"
    build(opts(la19_corpus, out, shard_size=3))
    before = dir_bytes(out)
    with read_only(out):
        for extra in ([], ["--overwrite", "--shard-size", "4"]):
            assert main(build_args(la19_corpus, out, *extra)) == 2
            assert capsys.readouterr().err == \
                f"sccl-shards: error: {out / '.lock'}: read-only file system\n"
        assert verify(out, decode=True, progress=False) == []
    assert dir_bytes(out) == before


def test_full_disk_mid_build_is_one_line_and_a_rerun_resumes(la19_corpus, tmp_path, capsys):
    clean = tmp_path / "clean"
    build(opts(la19_corpus, clean, shard_size=1))
    with small_disk(tmp_path / "disk", "1m") as disk:
        out = disk / "out"
        # Room for a few shards (a worker's write fails), then for the lock alone (the
        # parent's write of the build state fails).
        for leave, failing in ((sum(map(len, dir_bytes(clean).values())) // 2, ".tar"),
                               (4096, STATE)):
            fill(disk, leave)
            assert main(build_args(la19_corpus, out, "--shard-size", "1")) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"sccl-shards: error: {out}/") and len(err.splitlines()) == 1
            assert err.endswith(f"{failing}: no space left on the device\n"), err
            assert not (out / MANIFEST).exists() and not (out / ".lock").exists()
            assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
            (disk / ".filler").unlink()
        kept = {n: (out / n).stat().st_ino for n in json.loads((out / STATE).read_text())
                ["shards"]}
        assert kept and all((out / n).read_bytes() == (clean / n).read_bytes()
                            for n in os.listdir(out) if n.endswith(".tar"))  # none half-written
        assert main(build_args(la19_corpus, out, "--shard-size", "1")) == 0
        assert f"{len(kept)} of 12 shards already built" in capsys.readouterr().err
        assert {n: (out / n).stat().st_ino for n in kept} == kept
        assert dir_bytes(out) == dir_bytes(clean)


def one_file_corpus(tmp_path: Path, wave: np.ndarray, rate: int = 16000,
                    subtype: str = "FLOAT") -> tuple[Path, list[str]]:
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "x.wav", wave, rate, subtype=subtype)
    (tmp_path / "list.csv").write_text("path,label\nx.wav,spoof\n")
    return audio / "x.wav", ["build", "--format", "csv", "--protocol", str(tmp_path / "list.csv"),
                             "--audio-dir", str(audio), "--no-progress"]


@pytest.mark.parametrize("flags", [[], ["--transcode=flac16k"], ["--decode-check"],
                                   ["--transcode=flac16k", "--no-finite-check"]])
@pytest.mark.parametrize("bad", [np.nan, -np.inf])
def test_non_finite_audio_is_named_exit_2(tmp_path, capsys, flags, bad):
    wave = np.full(1600, 0.1, np.float32)
    wave[7] = bad
    src, args = one_file_corpus(tmp_path, wave)
    assert main([*args, "--out", str(tmp_path / "o"), *flags]) == 2
    err = capsys.readouterr().err
    assert err == f"sccl-shards: error: shard list-000000.tar: corrupt audio: {src} holds " \
        "non-finite samples (NaN or inf)\n"
    assert not (tmp_path / "o" / MANIFEST).exists()


def test_no_finite_check_keeps_nan_audio_and_verify_decode_counts_it(tmp_path, capsys):
    wave = np.full(1600, 0.1, np.float32)
    wave[[3, 7]] = np.nan, np.inf
    _, args = one_file_corpus(tmp_path, wave)
    out = tmp_path / "o"
    assert main([*args, "--out", str(out), "--no-finite-check"]) == 0
    assert main(["verify", str(out), "--no-progress"]) == 0  # hashes only: nothing decoded
    capsys.readouterr()
    assert main(["verify", str(out), "--decode", "--no-progress"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "list-000000.tar: x.wav: decoded audio holds 2 non-finite value(s) (NaN or inf)",
        f"{out}: 1 problem(s)"]


def test_empty_audio_is_rejected_at_build_time(tmp_path, capsys):
    src, args = one_file_corpus(tmp_path, np.zeros(0, np.float32), subtype="PCM_16")
    assert main([*args, "--out", str(tmp_path / "o")]) == 2
    assert f"empty audio (0 samples): {src}" in capsys.readouterr().err
    assert not (tmp_path / "o" / MANIFEST).exists()


@pytest.mark.parametrize(("frames", "rate", "short"), [(399, 16000, True), (400, 16000, False),
                                                       (199, 8000, True), (200, 8000, False)])
def test_clips_below_the_receptive_field_are_kept_counted_and_warned(tmp_path, capsys, frames,
                                                                      rate, short):
    _, args = one_file_corpus(tmp_path, np.full(frames, 0.1, np.float32), rate, "PCM_16")
    assert main([*args, "--out", str(tmp_path / "o")]) == 0
    m = json.loads((tmp_path / "o" / MANIFEST).read_text())
    assert m["num_samples"] == 1
    assert m["short"] == ({"count": 1, "examples": ["x"]} if short else
                          {"count": 0, "examples": []})
    assert ("1 clip(s) shorter than 400 samples" in capsys.readouterr().err) == short


def test_entries_of_an_older_builder_are_rebuilt_not_trusted(la19_corpus, tmp_path, monkeypatch):
    out = tmp_path / "out"
    build(opts(la19_corpus, out, shard_size=5))
    manifest = json.loads((out / MANIFEST).read_text())
    for e in manifest["shards"][1:]:  # as written before subsets/codecs/short were counted
        for key in ("subsets", "codecs", "short"):
            e.pop(key)
    (out / MANIFEST).write_text(json.dumps(manifest))
    calls, real = [], build_mod.write_shard
    monkeypatch.setattr(build_mod, "write_shard",
                        lambda plan, *a: calls.append(plan.name) or real(plan, *a))
    m = build(opts(la19_corpus, out, shard_size=5))
    assert calls == ["train-000001.tar", "train-000002.tar"]
    assert m["subsets"] == {"train": {"bonafide": 4, "spoof": 8}}


class _CreatesAFile:
    """Unpickling this calls open(path, "w"): a pickle member that would run code."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_hostile_tar_members_are_read_as_bytes_never_written_or_unpickled(la19_corpus,
                                                                          tmp_path):
    from sccl.data_shards import iter_shard, load_shard_set

    out = tmp_path / "out"
    build(opts(la19_corpus, out, shard_size=6))
    shard, ran = out / "train-000000.tar", tmp_path / "unpickled"
    with tarfile.open(shard) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    key = members[0][0].split(".")[0]
    members[2:2] = [(f"{key}.pyd", pickle.dumps(_CreatesAFile(ran))),
                    ("../escaped.flac", members[0][1])]
    with tarfile.open(shard, "w") as tar:
        for name, data in members:
            add_member(tar, name, data)
        link = tarfile.TarInfo("linked.flac")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    problems = verify(out, decode=True, progress=False)
    assert f"train-000000.tar: {key}: expected one audio member and one .json, found " \
        "['flac', 'json', 'pyd']" in problems
    assert "train-000000.tar: size/sha256 differ from manifest.json" in problems
    items = [it for s in load_shard_set(str(out)).shards for _, it in iter_shard(s)]
    assert [it.key for it in items if it.error] == ["../escaped"]  # no .json with it
    assert len([it for it in items if it.audio and it.meta]) == 12  # the .pyd is ignored
    assert not ran.exists() and not (tmp_path / "escaped.flac").exists()
