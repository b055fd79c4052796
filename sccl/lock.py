"""Exclusive directory locks that hold on a shared file system (NFS, Lustre, GPFS).

    with DirLock(stage_dir, what="Stage 1"):    # raises LockHeldError if another run holds it
        ...

The lock is a file ``<dir>/.lock`` created with ``O_CREAT | O_EXCL`` (atomic on every
file system a cluster shares, unlike ``flock``, which NFS may not honour across hosts). It
names its holder (host, pid, start time, command, and a random token that tells this lock
from any later one) in JSON. A lock is *stale*, and is taken over, when:

- its holder ran on this host and that pid is gone (or is now another process: the start
  time recorded from ``/proc/<pid>/stat`` differs), or
- its holder ran on another host and the file has not been touched for ``stale_after``
  seconds: a live holder refreshes the file's mtime every ``stale_after / 4`` seconds from
  a daemon thread, so only a holder whose node died stops doing so, or
- the file is empty or half-written (its writer died between creating and writing it) and
  was last written over 30 s ago; until then the refusal says it is being written.

Exactly one process takes over a stale lock. Renaming it aside is not enough: a process that
judged it stale a moment later renamed away the lock its winner had just created, and both
held it (8 processes at once: 1 to 17 trials in 100 here, every trial when judging takes
3 ms, as on a slow NFS). So a breaker first creates ``<dir>/.lock.break`` with ``O_EXCL``,
re-reads ``.lock`` under it, and removes it only if it is still the very file judged stale
(same inode, mtime and bytes: a heartbeat or a new holder changes them); then it competes
for ``.lock`` with ``O_EXCL`` like everyone else. Only the owner of ``.lock`` (or of
``.lock.break``), whose token is in it, removes it otherwise. The break lock is held for
milliseconds (a whole takeover took 15 ms here, median, a free lock 5 ms) and has the same
staleness rules, with 30 s for a silent one. POSIX has no "remove this file if unchanged",
so every removal renames the file to a name of its own, checks it there, and links it back
if it was not the one judged stale. A double holder would need a breaker to die (or stall
30 s) inside its millisecond section, two others to clear its break lock at the same
moment, *and* a fourth process to create a file in the microseconds a name is free.

A holder can tell whether the lock is still its own (``held()``): its heartbeat stops, with a
warning, once it is not, and ``release()`` leaves a lock that is not its own alone. When the
holder record cannot be written (a full disk, a quota, a read-only directory) ``acquire()``
removes what it created and raises an ``OSError`` naming ``.lock``, which
``sccl.fileio.storage_problem`` turns into one line; an empty ``.lock`` left behind would block
every rerun for 30 s and puzzle whoever reads it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

LOCK_NAME = ".lock"
BREAK_NAME = ".lock.break"
TORN_STALE_AFTER = 30.0  # s: an empty lock file, or a silent break lock, counts as stale
_BUSY_WAIT = 5.0  # s to wait for another process's takeover (milliseconds when it is alive)


class LockHeldError(RuntimeError):
    """Another live process holds the lock; the message names it."""


class _Seen(NamedTuple):
    """One look at a lock file: what tells it from a later file of the same name (inode
    numbers are reused at once on ext4 and tmpfs; a heartbeat changes the mtime)."""

    ino: int
    mtime_ns: int
    data: bytes

    @property
    def age(self) -> float:
        return time.time() - self.mtime_ns / 1e9

    def record(self) -> dict[str, Any]:
        """The holder record, ``{}`` for an empty or half-written file."""
        try:
            data = json.loads(self.data)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}


def _look(path: Path) -> _Seen | None:
    """``path`` as it is now, None when there is none."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            return _Seen(st.st_ino, st.st_mtime_ns, f.read())
    except FileNotFoundError:
        return None


def _remove_if_unchanged(path: Path, seen: _Seen) -> bool:
    """Remove ``path`` if it is still the file ``seen`` describes; True when removed. It is
    renamed to a name of our own first and checked there; a file that was not the one seen
    is linked back (a link never replaces a file created in between)."""
    if _look(path) != seen:
        return False
    aside = path.with_name(f"{path.name}.gone-{uuid.uuid4().hex[:12]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    if _look(aside) == seen:
        aside.unlink()
        return True
    with contextlib.suppress(FileExistsError):
        os.link(aside, path)
    aside.unlink()
    return False


def _proc_start(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat); None
    when the process does not exist or /proc is not readable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe(holder: dict[str, Any]) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
            f"(since {when}: {holder.get('command', '?')})")


def _create(path: Path, record: dict[str, Any]) -> bool:
    """Create ``path`` holding ``record``; False when it exists. A record that cannot be
    written (full disk, quota) takes the file with it, and the error names ``path``."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        with open(fd, "wb") as f:
            f.write(json.dumps(record).encode())
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        path.unlink(missing_ok=True)  # nobody else removes a file this young
        raise OSError(err.errno, err.strerror, str(path)) from err
    return True


def _remove_own(path: Path, token: str) -> None:
    """Remove ``path`` if it holds the record with ``token`` (ours, not a taker's)."""
    seen = _look(path)
    if seen is not None and seen.record().get("token") == token:
        _remove_if_unchanged(path, seen)


class DirLock:
    """Exclusive lock on a directory (created if missing). Use as a context manager, or
    ``acquire()`` / ``release()``. ``what`` names the guarded thing in the error."""

    def __init__(self, directory: str | Path, what: str = "this directory",
                 stale_after: float = 600.0) -> None:
        self.dir = Path(directory)
        self.path = self.dir / LOCK_NAME
        self.what, self.stale_after = what, stale_after
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._token = uuid.uuid4().hex
        self._held = False

    def _me(self, token: str) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(),
                "pid_start": _proc_start(os.getpid()), "started": time.time(),
                "command": " ".join(sys.argv)[:300], "token": token}

    def held(self) -> bool:
        """Whether ``.lock`` is still this lock's (False once released or taken over)."""
        seen = _look(self.path) if self._held else None
        return seen is not None and seen.record().get("token") == self._token

    def _stale(self, seen: _Seen, silent_after: float) -> bool:
        """Whether the holder of ``seen`` is gone; ``silent_after``: seconds without a
        heartbeat after which a holder on another host counts as gone."""
        holder = seen.record()
        if not holder:  # its writer died between creating and writing it (a live one
            return seen.age > min(TORN_STALE_AFTER, self.stale_after)  # takes milliseconds)
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            pid = holder["pid"]
            if not _pid_alive(pid):
                return True
            start = _proc_start(pid)
            return bool(holder.get("pid_start")) and start is not None \
                and start != holder["pid_start"]
        return seen.age > silent_after  # another host: only a missing heartbeat tells

    def _in_use(self, seen: _Seen) -> LockHeldError:
        holder = seen.record()
        if holder:
            return LockHeldError(
                f"{self.what} is in use: {self.path} is held by {describe(holder)}; wait for "
                "it to finish, or remove the lock file if that process is certainly gone")
        limit = min(TORN_STALE_AFTER, self.stale_after)
        return LockHeldError(
            f"{self.what} is in use: {self.path} is empty or half-written: a process is "
            f"writing it, or died doing so; it counts as stale {limit:.0f} s after it was "
            f"last written, in {max(limit - seen.age, 0):.0f} s: rerun then")

    # -------------------------------------------------------------------------- acquire

    def acquire(self) -> DirLock:
        """Take the lock, taking over a stale one; LockHeldError when a live process holds
        it, OSError (naming the file) when the directory cannot be written."""
        self.dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + _BUSY_WAIT
        while not _create(self.path, self._me(self._token)):
            seen = _look(self.path)
            if seen is not None and not self._stale(seen, self.stale_after):
                raise self._in_use(seen)
            if seen is None or self._break(seen):
                continue  # released meanwhile, or a takeover done: try again
            if time.monotonic() > deadline:
                raise LockHeldError(
                    f"{self.what}: could not take over the stale lock {self.path}: another "
                    f"process keeps taking it, or holds {self.dir / BREAK_NAME} (stale once "
                    f"{TORN_STALE_AFTER:.0f} s old); rerun")
            time.sleep(random.uniform(0.002, 0.02))  # a breaker at work takes milliseconds
        self._held = True
        self._start_heartbeat()
        return self

    def _break(self, seen: _Seen) -> bool:
        """Remove the stale lock ``seen`` if it is still there, under the break lock; False
        when another process holds that (it is breaking the lock itself)."""
        brk, token = self.dir / BREAK_NAME, uuid.uuid4().hex
        if not _create(brk, self._me(token)):
            other = _look(brk)
            if other is not None and self._stale(other, TORN_STALE_AFTER):
                _remove_if_unchanged(brk, other)  # its breaker died inside
            return False
        try:
            if _remove_if_unchanged(self.path, seen):
                holder = seen.record()
                print(f"warning: took over the stale lock {self.path} of "
                      f"{describe(holder) if holder else 'an unfinished writer'}",
                      file=sys.stderr)
        finally:
            _remove_own(brk, token)
        return True

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="sccl-lock-heartbeat",
                                        daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        """Refresh the lock's mtime while it is ours. One taken over is left alone (with a
        warning): refreshing it would keep a stranger's lock alive after its holder died."""
        while not self._stop.wait(self.stale_after / 4):
            try:
                if not self.held():
                    print(f"warning: {self.what}: lost the lock {self.path} to another "
                          "process", file=sys.stderr)
                    return
                os.utime(self.path)
            except OSError:
                continue  # a passing file-system hiccup: the next beat tries again

    def release(self) -> None:
        """Remove the lock if it is still ours; a lock taken over stays with its new owner."""
        if not self._held:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        _remove_own(self.path, self._token)
        self._held = False

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
