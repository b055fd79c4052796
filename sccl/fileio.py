"""File I/O every part shares: atomic writes of files and directories, content hashes,
reading a JSON object, and a failing disk said in one line.

Atomic writes go to a temporary file in the same directory, fsync, rename: a reader (or a
resumed run) sees either the old file or the complete new one, never a half-written file
(``replace_dir`` does the same for a whole directory). ``storage_problem`` words a full disk,
a quota, a read-only or forbidden place as ``PATH: cause``, the one line every entry point
prints for them. Used by every stage that writes into a run directory and by the shard
builder (which imports the library, never the reverse).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path``; on clean exit fsync and rename it over ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    if "w" not in mode:
        raise ValueError(f"atomic_open writes only; got mode {mode!r}")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:  # name the file asked for, not a temporary's random name
        raise OSError(err.errno, err.strerror, str(path)) from err
    # mkstemp creates 0600; give the file the mode a plain open() would (0666 less umask) so
    # shared dataset and run folders stay readable by the group.
    os.fchmod(fd, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno and err.filename in (None, tmp):
            raise OSError(err.errno, err.strerror, str(path)) from err  # a full disk, say
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def replace_dir(src: Path, dst: Path) -> None:
    """Rename directory ``src`` to ``dst``, replacing an existing ``dst`` without a moment
    with none (a reader sees the old directory or the new one, whole)."""
    old = dst.with_name(f".old-{dst.name}")
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)
    with contextlib.suppress(OSError):  # make the renames durable
        fd = os.open(dst.parent, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def file_sha256(path: str | os.PathLike, block: int = 1 << 23) -> str:
    """Hex sha256 of a file's bytes, read in blocks (checkpoints hash gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def read_json_object(path: Path, error: type[Exception], missing: str) -> dict[str, Any]:
    """The JSON object in ``path``, or ``error`` with one line naming the file (with the line
    and column of a syntax error); ``missing`` says what the file is, for when it is absent."""
    if not path.is_file():
        raise error(f"{path}: missing; {missing}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise error(f"{path}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{path}: cannot read: {err}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object")
    return data


# errno -> the cause as a user reads it: failures of the place written to, not of sccl's input
_STORAGE_CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
# Writers outside Python name the cause their own way, so they are judged only where they
# write (``where`` given): safetensors (Rust) puts ``(os error N)`` in its message; torch's zip
# writer and other C++ writers raise a RuntimeError with no errno at all, taken to be a full
# disk when less free space than _NEARLY_FULL is left there.
_OS_ERROR = re.compile(r"\(os error (\d+)\)")
_NEARLY_FULL = 64 << 20


def storage_errno(err: BaseException, where: str | os.PathLike | None = None) -> int | None:
    """The errno of ``err`` when it is a failure of the storage written to (a full disk, a
    quota, a read-only or forbidden place), else None: an ``OSError``'s own, or, at a write
    site that names its place ``where``, a Rust writer's ``(os error N)`` or ENOSPC for a C++
    writer's ``RuntimeError`` on a nearly full disk."""
    code = err.errno if isinstance(err, OSError) else None
    if code is None and where is not None:
        if found := _OS_ERROR.search(str(err)):
            code = int(found[1])
        elif isinstance(err, RuntimeError) and _nearly_full(Path(where)):
            code = errno.ENOSPC
    return code if code in _STORAGE_CAUSES else None


def storage_problem(err: BaseException, where: str | os.PathLike | None = None) -> str | None:
    """``"<path>: <cause>"`` when ``err`` is a failure of the storage written to
    (``storage_errno``), else None. ``where`` names the path when the error does not."""
    code = storage_errno(err, where)
    if code is None:
        return None
    if isinstance(err, OSError) and err.errno == code:
        path = err.filename if err.filename is not None else where
        return f"{path if path is not None else '?'}: {_STORAGE_CAUSES[code]}"
    return f"{where}: {_STORAGE_CAUSES[code]} ({_one_line(err)})"


def _nearly_full(path: Path) -> bool:
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free < _NEARLY_FULL
    except OSError:
        return False


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__
