"""Shard builder under the field's failures: two builds at once, kill -9 of a parallel build,
--overwrite next to user files, --out that is a file, broken and too-short audio."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
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


def one_file_corpus(tmp_path: Path, wave: np.ndarray, rate: int = 16000,
                    subtype: str = "FLOAT") -> tuple[Path, list[str]]:
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "x.wav", wave, rate, subtype=subtype)
    (tmp_path / "list.csv").write_text("path,label\nx.wav,spoof\n")
    return audio / "x.wav", ["build", "--format", "csv", "--protocol", str(tmp_path / "list.csv"),
                             "--audio-dir", str(audio), "--no-progress"]


@pytest.mark.parametrize("flag", ["--transcode=flac16k", "--decode-check"])
def test_nan_audio_is_named_exit_2(tmp_path, capsys, flag):
    wave = np.full(1600, 0.1, np.float32)
    wave[7] = np.nan
    src, args = one_file_corpus(tmp_path, wave)
    assert main([*args, "--out", str(tmp_path / "o"), flag]) == 2
    err = capsys.readouterr().err
    assert f"corrupt audio: {src} holds non-finite samples" in err and "Traceback" not in err


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
