"""sccl.lock.DirLock: one holder at a time, named in the refusal; stale locks (dead pid on this
host, silent holder on another host, torn file) taken over; only the owner releases."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from sccl.lock import DirLock, LockHeldError

HOLD = ("import sys, time; from sccl.lock import DirLock; DirLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); time.sleep(60)")


def holder_process(directory):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_live_holder_is_refused_by_name_and_dead_one_taken_over(tmp_path, capsys):
    proc = holder_process(tmp_path)
    try:
        with pytest.raises(LockHeldError, match=f"held by pid {proc.pid} on host "
                                                f"{socket.gethostname()}"):
            DirLock(tmp_path, what="Stage 1").acquire()
    finally:
        proc.kill()  # SIGKILL: the lock file stays behind
        proc.wait()
    assert (tmp_path / ".lock").is_file()
    with DirLock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert "took over the stale lock" in capsys.readouterr().err
    assert not (tmp_path / ".lock").exists()


def test_other_host_is_stale_only_without_heartbeat(tmp_path):
    path = tmp_path / ".lock"
    path.write_text(json.dumps({"host": "node-gone", "pid": 1, "started": time.time()}))
    with pytest.raises(LockHeldError, match="host node-gone"):
        DirLock(tmp_path, stale_after=60).acquire()
    old = time.time() - 120
    os.utime(path, (old, old))  # no heartbeat for 2 minutes
    lock = DirLock(tmp_path, stale_after=60).acquire()
    lock.release()


def test_heartbeat_keeps_a_held_lock_fresh(tmp_path):
    lock = DirLock(tmp_path, stale_after=0.4).acquire()
    try:
        old = time.time() - 100
        os.utime(lock.path, (old, old))
        time.sleep(0.3)
        assert time.time() - lock.path.stat().st_mtime < 1
    finally:
        lock.release()


def test_torn_lock_file_is_taken_over_once_old(tmp_path):
    path = tmp_path / ".lock"
    path.write_text('{"host": "x", "pi')  # writer died mid-write
    with pytest.raises(LockHeldError):  # a writer may still be at it
        DirLock(tmp_path).acquire()
    old = time.time() - 60
    os.utime(path, (old, old))
    DirLock(tmp_path).acquire().release()


def test_release_only_removes_our_own_lock(tmp_path):
    lock = DirLock(tmp_path).acquire()
    other = {"host": socket.gethostname(), "pid": os.getpid() + 1, "started": time.time()}
    lock.path.write_text(json.dumps(other))  # someone took it over meanwhile
    lock.release()
    assert json.loads((tmp_path / ".lock").read_text()) == other
