"""Exclusive directory locks that hold on a shared file system (NFS, Lustre, GPFS).

    with DirLock(stage_dir, what="Stage 1"):    # raises LockHeldError if another run holds it
        ...

The lock is a file ``<dir>/.lock`` created with ``O_CREAT | O_EXCL`` (atomic on every
file system a cluster shares, unlike ``flock``, which NFS may not honour across hosts). It
names its holder (host, pid, start time, command) in JSON. A lock is *stale*, and is taken
over, when:

- its holder ran on this host and that pid is gone (or is now another process: the start
  time recorded from ``/proc/<pid>/stat`` differs), or
- its holder ran on another host and the file has not been touched for ``stale_after``
  seconds: a live holder refreshes the file's mtime every ``stale_after / 4`` seconds from
  a daemon thread, so only a holder whose node died stops doing so, or
- the file is torn (its writer died between creating and writing it) and older than 30 s.

Taking over a stale lock renames it aside first (one rename wins), so two processes that
both find it stale cannot both take it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

LOCK_NAME = ".lock"


class LockHeldError(RuntimeError):
    """Another live process holds the lock; the message names it."""


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
        self._held = False

    # -------------------------------------------------------------------------- holder

    def _me(self) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(),
                "pid_start": _proc_start(os.getpid()), "started": time.time(),
                "command": " ".join(sys.argv)[:300]}

    def holder(self) -> dict[str, Any] | None:
        """The recorded holder, ``{}`` for an unreadable (torn) file, None without a lock."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError:
            return {}
        try:
            data = json.loads(text)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def _stale(self, holder: dict[str, Any]) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        if not holder:  # torn: its writer died between creating and writing it (a live
            return age > min(30.0, self.stale_after)  # writer takes milliseconds)
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            pid = holder["pid"]
            if not _pid_alive(pid):
                return True
            start = _proc_start(pid)
            return bool(holder.get("pid_start")) and start is not None \
                and start != holder["pid_start"]
        # another host: only a missing heartbeat tells
        return age > self.stale_after

    # -------------------------------------------------------------------------- acquire

    def acquire(self) -> DirLock:
        self.dir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is None:
                    continue  # released between our open and our read
                if not self._stale(holder):
                    raise LockHeldError(
                        f"{self.what} is in use: {self.path} is held by {describe(holder)}; "
                        "wait for it to finish, or remove the lock file if that process is "
                        "certainly gone") from None
                self._break(holder)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._me(), f)
                f.flush()
                os.fsync(f.fileno())
            self._held = True
            self._start_heartbeat()
            return self
        raise LockHeldError(f"{self.what}: could not take {self.path} (another process keeps "
                            "taking it)")

    def _break(self, holder: dict[str, Any]) -> None:
        """Move a stale lock aside; losing the race to another breaker is fine."""
        aside = self.path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.path, aside)
            print(f"warning: took over the stale lock {self.path} of "
                  f"{describe(holder) if holder else 'an unknown holder'}", file=sys.stderr)
            aside.unlink(missing_ok=True)

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(self.stale_after / 4):
                with contextlib.suppress(OSError):
                    os.utime(self.path)

        self._thread = threading.Thread(target=beat, name="sccl-lock-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        if not self._held:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = self.holder()
        if holder and holder.get("pid") == os.getpid() \
                and holder.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)
        self._held = False

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
