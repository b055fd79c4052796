"""Typed configs: nested dataclasses filled from a YAML/JSON file plus command-line overrides.

Every stage describes its config as one dataclass whose fields are sections (dataclasses
themselves, one per concern) holding plain values, and calls ``parse_config``:

    cfg = parse_config(TrainConfig, sys.argv[1:])
    # argv: [--config FILE] [--section.key VALUE | --section.key=VALUE | --key VALUE ...]

Rules (all violations raise ``ConfigError`` naming the file, line or flag, and the key):
- the file is a (partial) nested mapping; missing keys keep their defaults;
- unknown keys are errors, with a "did you mean" suggestion;
- values must have the field's type: bool fields take true/false only (YAML booleans, or the
  words ``true``/``false`` on the command line; a bare ``--flag`` means true), int fields
  whole numbers, float fields finite numbers (``1e-5`` is accepted although YAML 1.1 reads it
  as a string; ``nan``/``inf`` are refused: a NaN compares false with every bound, so it would
  pass range checks and silently disable what it sets), str fields strings (quote
  numbers-as-names in YAML), ``Literal`` fields one of their choices, ``Optional`` fields also
  ``null``/``none``; lists are YAML lists or comma-separated on the command line;
- ``--key`` without a section is accepted when exactly one section has a field of that name;
- a key written twice in one mapping of a file (a section repeated, say) is an error naming
  the key and both lines: YAML would silently keep the second;
- command-line values override the file; sections validate themselves in ``__post_init__``.

Every field is documented by a string literal right after it (an attribute docstring), which
``--help`` reads from the source. Choices are typed ``Literal``. Why this parser is
hand-written rather than a library's: docs/config.md.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import functools
import inspect
import itertools
import json
import math
import os
import re
import sys
import textwrap
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from sccl.fileio import atomic_write_text, storage_problem

T = TypeVar("T")
_INT_RE = re.compile(r"[+-]?\d+")
_NONE_WORDS = ("none", "null")


class ConfigError(ValueError):
    """Bad config file or override: the message names where (file:line or --flag) and the key."""


def report_input_error(error: BaseException | str, code: int = 2) -> int:
    """Print ``error: <message>`` on stderr and return ``code`` (the caller exits with it).

    Every entry point turns bad input into this line (no traceback) and exits 2. Under
    ``accelerate launch``/``torchrun`` every rank prints it, global rank k > 0 as
    ``error (rank k): <message>``: the first rank to exit makes torchrun SIGTERM the others,
    so a line left to rank 0 alone was lost whenever another rank exited first or met the
    error alone (tests/dist_scripts/dist_error_check.py forces both). The rank is ``RANK``,
    which torchrun sets before the process starts: this holds before any process group
    exists. One write, so that the lines of ranks sharing a log do not interleave."""
    rank = os.environ.get("RANK", "")
    label = "error" if rank in ("", "0") else f"error (rank {rank})"
    sys.stderr.write(f"{label}: {error}\n")
    sys.stderr.flush()
    return code


def report_storage_error(error: BaseException, where: str | Path | None) -> int:
    """``report_input_error`` (exit 2) of a failure of the storage a stage writes to or
    reads from, as ``sccl.fileio.storage_problem`` describes it (full disk, quota, read-only,
    permission): ``PATH: cause``, with ``where`` (the run directory) as the path when the
    error names none. Any other error is raised again: it is a bug, and its traceback says
    where."""
    problem = storage_problem(error, where or None)
    if problem is None:
        raise error
    return report_input_error(problem)


# ---------------------------------------------------------------------------- type helpers


@functools.cache
def _fields(cls: type) -> dict[str, Any]:
    """Init fields of a config dataclass -> resolved type."""
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _split_optional(tp: Any) -> tuple[Any, bool]:
    """(inner type, whether None is allowed) for ``X | None`` / ``Optional[X]``."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) != len(get_args(tp)) and len(args) == 1:
            return args[0], True
    return tp, False


def _section_type(tp: Any) -> type | None:
    inner, _ = _split_optional(tp)
    return inner if dataclasses.is_dataclass(inner) and isinstance(inner, type) else None


def _type_name(tp: Any) -> str:
    inner, optional = _split_optional(tp)
    if get_origin(inner) is Literal:
        name = "{" + ",".join(str(c) for c in get_args(inner)) + "}"
    elif get_origin(inner) in (list, tuple):
        name = f"list[{_type_name(get_args(inner)[0])}]"
    else:
        name = getattr(inner, "__name__", str(inner))
    return f"{name} | null" if optional else name


def _coerce(value: Any, tp: Any, where: str, text: bool) -> Any:
    """``value`` checked/converted to ``tp``; ``text`` = it came from the command line."""
    inner, optional = _split_optional(tp)
    if value is None or (text and optional and value.lower() in _NONE_WORDS):
        if optional:
            return None
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got null")
    got = f"got {value!r} ({type(value).__name__})"
    origin = get_origin(inner)
    if origin is Literal:
        for choice in get_args(inner):
            if value == choice or (text and str(choice) == value):
                return choice
        raise ConfigError(f"{where}: must be one of {list(get_args(inner))}, {got}")
    if inner is bool:
        if isinstance(value, bool):
            return value
        if text and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{where}: expected a boolean (true or false), {got}")
    if inner is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
            return int(value)
        raise ConfigError(f"{where}: expected an integer, {got}")
    if inner is float:
        return _coerce_float(value, where, got)
    if inner is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, {got} (quote it in YAML)")
    if origin in (list, tuple):
        return _coerce_list(value, inner, where, text)
    if inner is Any:
        return value
    raise TypeError(f"{where}: config fields of type {tp!r} are not supported")


def _coerce_float(value: Any, where: str, got: str) -> float:
    number = None
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        with contextlib.suppress(ValueError):  # YAML 1.1 reads 1e-5 (no dot) as a string
            number = float(value)
    if number is None:
        raise ConfigError(f"{where}: expected a number, {got}")
    if not math.isfinite(number):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return number


def _coerce_list(value: Any, tp: Any, where: str, text: bool) -> list | tuple:
    if text:
        items = [v.strip() for v in value.split(",")] if value.strip() else []
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    elem = get_args(tp)[0] if get_args(tp) else Any
    out = [_coerce(v, elem, f"{where}[{i}]", text) for i, v in enumerate(items)]
    return tuple(out) if get_origin(tp) is tuple else out


# ----------------------------------------------------------------------- keys and docs


def leaf_keys(cls: type, prefix: str = "") -> dict[str, Any]:
    """Every settable key of a config class as ``"section.field" -> type`` (recursively)."""
    out: dict[str, Any] = {}
    for name, tp in _fields(cls).items():
        section = _section_type(tp)
        if section is not None:
            out.update(leaf_keys(section, f"{prefix}{name}."))
        else:
            out[prefix + name] = tp
    return out


def _suggest(key: str, known: list[str], dashes: str = "") -> str:
    """"; did you mean 'x.y'?" for the closest known key (full or last part), else ""."""
    tails = {k.rsplit(".", 1)[-1]: k for k in known}
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    tail = key.rsplit(".", 1)[-1]
    close = close or [tails[t] for t in difflib.get_close_matches(tail, tails, n=1)]
    return f"; did you mean '{dashes}{close[0]}'?" if close else ""


def resolve_key(cls: type, key: str) -> str:
    """Full dotted key for ``key`` (``section.field``, or a field name unique across sections)."""
    keys = leaf_keys(cls)
    key = key.replace("-", "_")
    if key in keys:
        return key
    sections = {k.rsplit(".", 1)[0] for k in keys if "." in k}
    if key in sections:
        raise ConfigError(f"--{key} is a section: set its fields, e.g. --{key}.<field> VALUE")
    matches = [k for k in keys if k.rsplit(".", 1)[-1] == key]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        options = ", ".join("--" + m for m in matches)
        raise ConfigError(f"--{key} is ambiguous: use one of {options}")
    raise ConfigError(f"unknown option --{key}{_suggest(key, list(keys), '--')}")


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its docstring (the string literal right after the field)."""
    try:
        body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    except (OSError, TypeError):
        return {}
    return {node.target.id: " ".join(str(after.value.value).split())
            for node, after in itertools.pairwise(body)
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)}


def config_help(cls: type, prog: str = "") -> str:
    """``--help`` text: every key with its type, default and documentation."""
    out = [f"usage: {prog} [--config FILE.yaml|json] [--section.key VALUE ...]".strip(), ""]
    try:
        defaults = flatten(to_dict(cls()))
    except (TypeError, ValueError):  # some field has no default
        defaults = {}
    for key, tp in leaf_keys(cls).items():
        owner = _owner(cls, key)
        doc = field_docs(owner).get(key.rsplit(".", 1)[-1], "")
        default = f" (default {defaults[key]!r})" if key in defaults else " (required)"
        out.append(f"  --{key} {_type_name(tp)}{default}")
        if doc:
            out.extend("      " + line for line in textwrap.wrap(doc, 88))
    return "\n".join(out)


def _owner(cls: type, key: str) -> type:
    for part in key.split(".")[:-1]:
        cls = _section_type(_fields(cls)[part])
    return cls


# ------------------------------------------------------------------------ from mappings


def from_dict(cls: type[T], data: Mapping, *, source: str = "config", lines=None) -> T:
    """Build ``cls`` from a nested mapping, checking every key and value.

    ``source`` names the origin in messages; ``lines`` maps dotted keys to file lines."""
    return _build(cls, data, source, lines or {}, "")


def _where(source: str, lines: Mapping[str, int], key: str) -> str:
    line = lines.get(key)
    return f"{source}:{line}: {key}" if line else f"{source}: {key}"


def _build(cls: type[T], data: Any, source: str, lines: Mapping, prefix: str) -> T:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{_where(source, lines, prefix.rstrip('.') or '<top>')}: "
                          f"expected a mapping of keys, got {type(data).__name__}")
    fields = _fields(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in fields:
            known = [f"{prefix}{k}" for k in leaf_keys(cls)] + [f"{prefix}{k}" for k in fields]
            raise ConfigError(f"{_where(source, lines, key)}: unknown key{_suggest(key, known)}")
        section = _section_type(fields[name])
        if section is not None and value is not None:
            kwargs[name] = _build(section, value, source, lines, key + ".")
        else:
            kwargs[name] = _coerce(value, fields[name], _where(source, lines, key), text=False)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # a required field missing; __post_init__ refused
        raise ConfigError(f"{source}: {prefix.rstrip('.') or cls.__name__}: {e}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain dict (tuples as lists) of a config instance, in field order."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ----------------------------------------------------------------------------- files


def read_config_file(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """(nested mapping, dotted key -> line) from a YAML (.yaml/.yml) or JSON (.json) file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise ConfigError(f"config file {path}: use a .yaml, .yml or .json file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data, lines = _json_load(text, path) if text.strip() else {}, {}
        else:
            data, lines = yaml.safe_load(text) or {}, _yaml_lines(yaml.compose(text), path)
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise ConfigError(f"config file {path}: cannot parse: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of sections")
    return data, lines


def _yaml_lines(node: Any, path: Path, prefix: str = "") -> dict[str, int]:
    """Dotted key -> line of every mapping key; a key written twice in one mapping is an error
    (YAML itself keeps the last one, silently dropping the first)."""
    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            dotted = f"{prefix}{key.value}"
            line = key.start_mark.line + 1
            if dotted in out:
                raise ConfigError(f"{path}:{line}: {dotted}: written twice (lines {out[dotted]} "
                                  f"and {line}); keep one")
            out[dotted] = line
            out.update(_yaml_lines(value, path, dotted + "."))
    return out


def _json_load(text: str, path: Path) -> Any:
    """JSON with duplicate keys refused (json keeps the last one, silently)."""
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in items]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ConfigError(f"config file {path}: key {twice[0]!r} written twice in one object")
        return dict(items)

    return json.loads(text, object_pairs_hook=pairs)


def format_config(cfg: Any) -> str:
    """YAML text of a config (loadable again with ``--config``)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


def save_config(cfg: Any, path: str | Path, header: str = "") -> None:
    """Write the config as YAML (or JSON for a .json path) atomically; ``header`` lines are
    written as YAML comments above it."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        atomic_write_text(path, json.dumps(to_dict(cfg), indent=2) + "\n")
        return
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    atomic_write_text(path, comments + format_config(cfg))


# ------------------------------------------------------------------------ command line


def split_argv(argv: list[str]) -> tuple[str | None, list[tuple[str, str | None]], bool]:
    """(config path, [(key, value text or None for a bare flag)], help asked)."""
    config, pairs, want_help, i = None, [], False, 0
    while i < len(argv):
        token = argv[i]
        if token in ("-h", "--help"):
            want_help, i = True, i + 1
            continue
        if not token.startswith("--") or token == "--":
            raise ConfigError(f"unexpected argument {token!r}: options look like --key VALUE")
        key, eq, value = token[2:].partition("=")
        if not eq:
            has_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
            value = argv[i + 1] if has_value else None
            i += 1 if has_value else 0
        i += 1
        if key == "config":
            if not value:
                raise ConfigError("--config needs a file path")
            config = value
        else:
            pairs.append((key, value))
    return config, pairs, want_help


def parse_config(cls: type[T], argv: list[str] | None = None, *, prog: str = "") -> T:
    """Config from ``[--config FILE] [--key VALUE ...]`` (default: ``sys.argv[1:]``).

    ``--help`` prints every key and exits 0. Errors raise ``ConfigError``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    path, pairs, want_help = split_argv(argv)
    if want_help:
        print(config_help(cls, prog))
        raise SystemExit(0)
    data, lines = read_config_file(path) if path else ({}, {})
    keys = leaf_keys(cls)
    for key, text in pairs:
        dotted = resolve_key(cls, key)
        tp = keys[dotted]
        if text is None and _split_optional(tp)[0] is not bool:
            raise ConfigError(f"--{key} needs a value ({_type_name(tp)})")
        value = True if text is None else _coerce(text, tp, f"--{key}", text=True)
        _set_nested(data, dotted, value, path or "config")
        lines.pop(dotted, None)
    return from_dict(cls, data, source=path or "command line", lines=lines)


def _set_nested(data: dict, dotted: str, value: Any, source: str) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: {part}: expected a mapping of keys, got {node!r}")
    node[parts[-1]] = value


# ------------------------------------------------------------------ shared sections


@dataclass
class RunConfig:
    """Where a training stage writes, how it resumes, logs and checkpoints."""

    dir: str = ""
    """Run directory (required); the stage writes into <dir>/<stage>/ (e.g. runs/x/stage1)."""
    resume: str = "auto"
    """"auto": continue from the newest checkpoint in the run dir if there is one (rerunning
    the same command after a preemption resumes); "never": start fresh, refusing a run dir
    that holds checkpoints; or a path to a checkpoints/step-N directory."""
    seed: int = 42
    """Seeds model initialisation and dropout (data order and crops follow data.seed)."""
    mixed_precision: Literal["no", "fp16", "bf16"] | None = None
    """Autocast precision; null = what `accelerate launch` / its config file says."""
    log_every: int = 10
    """Optimizer steps between log lines (log.jsonl, TensorBoard, progress bar)."""
    save_every_steps: int = 0
    """Also checkpoint every N optimizer steps (0 = at epoch ends and on a stop signal only)."""
    keep_checkpoints: int = 2
    """Resumable checkpoints kept (newest first); best/ and last/ weights are always kept."""
    max_consecutive_nonfinite: int = 20
    """Abort (exit 3) after this many optimizer steps in a row with a NaN/inf loss or grad norm."""
    max_steps: int = 0
    """Stop after this many optimizer steps in total (0 = no limit; smoke tests, benchmarks)."""
    tensorboard: bool = True
    """Write TensorBoard event files to <dir>/<stage>/tb through Accelerate's tracker."""
    progress: bool = True
    """Show a tqdm progress bar on the main process."""
    stop_after_steps: int = 0
    """Debug: rank 0 sends itself SIGTERM after this optimizer step, as a preemption would
    (0 = off). Used by the resume tests."""
    collective_timeout_s: float = 600.0
    """Seconds a rank waits in one collective for the others before it raises and the job
    ends (a hung or lost peer). 600 = torch's NCCL default, now for gloo too (torch: 1800);
    far above the longest legitimate wait (rank 0's checkpoint save and hashing, a slower
    rank's share of the dev evaluation: tens of seconds for XLS-R 300M)."""
    rank_checksums: bool = False
    """Debug: log every rank's queue checksum, weights checksum (the sum of the parameter
    elements it holds) and count of those elements with each log line (the queue's gather
    keeps the queues equal, DDP the weights; under ZeRO-3 / FSDP2 the counts show the
    sharding; the distributed tests check it)."""

    allow_config_change: bool = False
    """Resume with settings that change the training (every key but where the run lives and
    how it resumes, logs, checkpoints and stops: docs/config.md lists them). Without it such a
    resume is refused (exit 2) listing each changed key; with it the run goes on with them.
    Each start's settings stay in <dir>/<stage>/config_history.jsonl."""

    def __post_init__(self) -> None:
        if self.log_every < 1 or self.keep_checkpoints < 1 or self.max_consecutive_nonfinite < 1:
            raise ValueError("log_every, keep_checkpoints and max_consecutive_nonfinite must be >= 1")
        if min(self.save_every_steps, self.max_steps, self.stop_after_steps) < 0:
            raise ValueError("save_every_steps, max_steps and stop_after_steps must be >= 0")
        if not self.collective_timeout_s > 0:
            raise ValueError("collective_timeout_s must be > 0 (seconds)")
