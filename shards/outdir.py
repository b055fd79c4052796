"""The output directory of a build: what an earlier build left there, and what may go.

Every file a build puts in ``--out`` is recorded before it is written: ``.build-state.json``
lists the plan's shard names ("planned") before the first shard is started, then one entry
per finished shard; ``manifest.json`` (written last) lists the shards of the complete build.
Those records, never name patterns, decide what ``--overwrite`` deletes and which
temporaries a resume clears (``atomic_open``'s ``.<recorded name>.XXXXXXXX.tmp``). A record is
ours when its ``"builder"`` field starts with ``sccl-shards``; a ``manifest.json`` another
tool wrote, or a torn one, is never deleted: the build stops and names it. ``.tar`` files no
record names are never deleted either, and a build refuses to finish next to them (a
shard directory's ``*.tar`` are exactly its manifest's shards, which verify checks).

A record is text anyone can edit, so every name in it is checked (``name_problem``) before
any file is deleted: only a ``.tar`` file name directly inside ``--out`` passes, never
``../x``, an absolute path or a symlink leading out of ``--out``; one bad name stops the
build with nothing deleted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from shards import __version__
from shards.errors import ShardsError

MANIFEST = "manifest.json"
STATE = ".build-state.json"
BUILDER = f"sccl-shards {__version__}"


def make_out_dir(out: Path) -> None:
    """Create ``out`` (and parents); a ShardsError naming it when that is impossible."""
    if out.exists() and not out.is_dir():
        raise ShardsError(f"--out {out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ShardsError(f"--out {out}: cannot create the directory ({err.strerror})") from None


def _is_ours(record: object) -> bool:
    if not isinstance(record, dict):
        return False
    return str(record.get("builder", "")).startswith("sccl-shards")


def read_record(path: Path) -> dict | None:
    """An earlier build's manifest or state file; None when absent. A file sccl-shards did
    not write (or cannot read) is left alone and stops the build."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ShardsError(f"{path}: unreadable ({err}); left alone (sccl-shards writes it "
                          "atomically, so no build leaves it half-written): remove it yourself "
                          "or choose another --out") from None
    if not _is_ours(record):
        raise ShardsError(f"{path}: not written by sccl-shards (no \"builder\": \"sccl-shards "
                          "...\" field); it is left alone: choose another --out")
    return record


def name_problem(out: Path, name: object) -> str | None:
    """Why ``name`` (read from a record) is not a shard file directly inside ``out``; None
    when it is. sccl-shards records only ``<split>[-<label>]-NNNNNN.tar``, so a name with a
    path in it (``../victim.txt``, ``/etc/x``, ``sub/x.tar``) or a symlink whose target lies
    outside ``out`` can only come from an edited or foreign record."""
    if not isinstance(name, str):
        return "is not a file name"
    if os.sep in name or (os.altsep and os.altsep in name):
        return "is a path, not a bare file name"
    if not name.endswith(".tar") or "\0" in name:
        return "is not a .tar file name"
    path = out / name
    if path.is_symlink():
        target, root = os.path.realpath(path), os.path.realpath(out)
        if os.path.commonpath([target, root]) != root:
            return f"is a symlink leading out of {out} (to {target})"
    elif path.exists() and not path.is_file():
        return "is not a regular file"
    return None


def _listed(record: dict | None, where: Path) -> list[object]:
    """The shard names in one record: a manifest's ``shards[].name``, a state file's
    ``shards`` keys (and their entries' names) and ``planned``."""
    if record is None:
        return []
    try:
        if where.name == MANIFEST:
            return [s["name"] for s in record.get("shards", [])]
        finished = record.get("shards", {})
        return [*finished, *(e["name"] for e in finished.values()),
                *record.get("planned", [])]
    except (TypeError, KeyError, AttributeError) as err:
        raise ShardsError(f"{where}: malformed shard list ({type(err).__name__}: {err}); "
                          "nothing was deleted: remove it yourself or choose another "
                          "--out") from None


def recorded_names(out: Path, manifest: dict | None, state: dict | None) -> set[str]:
    """Every shard file name the earlier build recorded (finished or planned), all checked
    (``name_problem``) before the caller deletes any: one bad name stops the build."""
    names: set[str] = set()
    for record, file in ((manifest, MANIFEST), (state, STATE)):
        for name in _listed(record, out / file):
            why = name_problem(out, name)
            if why:
                raise ShardsError(f"{out / file}: recorded shard name {name!r} {why}; "
                                  "nothing was deleted: remove the record yourself or "
                                  "choose another --out")
            names.add(name)
    return names


def temporary_of(name: str, recorded: set[str]) -> bool:
    """Whether ``name`` is an ``atomic_open`` temporary of a recorded file."""
    if not (name.startswith(".") and name.endswith(".tmp")):
        return False
    base, _, rand = name[1:-4].rpartition(".")
    return len(rand) == 8 and base in recorded


def clear_temporaries(out: Path, recorded: set[str]) -> None:
    """Remove temporaries a killed build left (its workers' half-written shards)."""
    for name in os.listdir(out):
        if temporary_of(name, recorded | {MANIFEST, STATE}):
            (out / name).unlink(missing_ok=True)


def remove_build(out: Path, recorded: set[str]) -> None:
    """Delete one earlier build: its recorded shards, their temporaries, then its records
    (the state last, so an interrupted removal can be repeated)."""
    clear_temporaries(out, recorded)
    for name in sorted(recorded):
        (out / name).unlink(missing_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    (out / STATE).unlink(missing_ok=True)


def refuse_foreign_tars(out: Path, recorded: set[str]) -> None:
    foreign = sorted(n for n in os.listdir(out) if n.endswith(".tar") and n not in recorded)
    if foreign:
        raise ShardsError(
            f"output dir {out} holds .tar files that no sccl-shards build recorded "
            f"(e.g. {foreign[0]}); they are left alone: move them away or choose another --out")
