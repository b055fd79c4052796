"""A stage's run directory and what it records: paths, the resolved config with the git
revision, run_info.json, the JSON-lines log and the numbers of a training log line.

Run directory of a stage (``StagePaths``; Stage 1 = ``<run>/stage1``):

    <run>/<stage>/config.yaml        resolved config the stage runs with now (loadable with
                                     --config), git revision on top
    <run>/<stage>/config_history.jsonl   one line per start or resume: time, git revision,
                                     world size, checkpoint resumed from, changed keys, config
    <run>/<stage>/run_info.json      git revision, command line, world size, versions
    <run>/<stage>/log.jsonl          one JSON object per logging step (and one per epoch)
    <run>/<stage>/tb/                TensorBoard event files (Accelerate tracker)
    <run>/<stage>/checkpoints/step-NNNNNNNN/   resumable state (sccl/checkpoint.py)
    <run>/<stage>/best/, last/       weights only: model_config.json + model.safetensors +
                                     integrity.json + info.json
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from sccl import dist
from sccl.config import (
    ConfigError,
    flatten,
    format_config,
    read_config_file,
    save_config,
    to_dict,
)
from sccl.fileio import atomic_write_json, atomic_write_text


class StagePaths:
    """Paths inside ``<run>/<stage>`` (the layout above)."""

    def __init__(self, root: Path, stage: str) -> None:
        self.root, self.stage, self.dir = root, stage, root / stage
        self.config, self.info, self.log, self.checkpoints, self.best, self.last = (
            self.dir / name for name in ("config.yaml", "run_info.json", "log.jsonl",
                                         "checkpoints", "best", "last"))
        self.history = self.dir / "config_history.jsonl"


def git_revision(path: str | Path | None = None) -> str:
    """``<commit sha>`` (+ ``-dirty`` with uncommitted changes) of the repo holding ``path``
    (default: this package); ``"unknown"`` outside a git checkout or without git."""
    where = str(path or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", where, "status", "--porcelain", "-uno"],
                               capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty.strip() else sha or "unknown"


def run_info(accelerator, revision: str) -> dict[str, Any]:
    import accelerate  # here, so that --help does not import them
    import transformers

    return {
        "git_revision": revision,
        "command": sys.argv,
        "world_size": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "mixed_precision": accelerator.mixed_precision,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "cuda": torch.cuda.is_available(),
    }


_ABSENT = object()


def config_changes(old: dict[str, Any], new: dict[str, Any], ignore: tuple[str, ...] = (),
                   both: bool = False) -> list[str]:
    """``key: old -> new`` for every flattened key whose value differs, keys starting with an
    entry of ``ignore`` skipped. A key only one side has (an sccl version added or removed it)
    shows as ``<absent>``, or is skipped with ``both``."""
    a, b = flatten(old), flatten(new)
    keys = set(a) & set(b) if both else set(a) | set(b)
    return [f"{k}: {_shown(a, k)} -> {_shown(b, k)}" for k in sorted(keys)
            if a.get(k, _ABSENT) != b.get(k, _ABSENT) and not k.startswith(ignore)]


def _shown(values: dict[str, Any], key: str) -> str:
    return repr(values[key]) if key in values else "<absent>"


def refuse_changes(accelerator, cfg: Any, paths: StagePaths, free: tuple[str, ...],
                   allow: bool, why: str, guarded: bool = True) -> None:
    """Refuse to go on, with one ``ConfigError`` on every rank (exit 2, no rank left waiting),
    when ``cfg`` differs from config.yaml, the settings that trained what the stage dir holds,
    in a key outside ``free`` (keys or prefixes that cannot change the training); ``why``
    opens the message, which lists each changed key on a line of its own. ``allow``
    (run.allow_config_change) goes on with a warning each. Keys config.yaml lacks are not
    compared: a later sccl version added them, and refusing them would refuse every resume
    across an upgrade (the history records them). ``guarded``: whether the stage dir holds
    anything to protect (read on the main process)."""
    changes, problem = [], None
    if accelerator.is_main_process and guarded and paths.config.is_file():
        try:
            old = read_config_file(paths.config)[0]
        except (ConfigError, OSError) as e:
            first = str(e).splitlines()[0]  # YAML's own message spans lines
            problem = f"{first}; it records what {paths.dir} was trained with"
        else:
            changes = config_changes(old, to_dict(cfg), free, both=True)
            changes += _launcher_changes(accelerator, paths)
    changes, problem = dist.broadcast_object((changes, problem))
    if problem and not allow:
        raise ConfigError(f"{problem}: restore it, or pass --run.allow_config_change true")
    if changes and not allow:
        lines = "".join(f"\n  {change}" for change in changes)
        raise ConfigError(
            f"{paths.config}: {why} with {len(changes)} changed setting(s) that change the "
            "training: pass --run.allow_config_change true to accept them (each run's settings "
            f"stay in {paths.history.name}), or use a new --run.dir:{lines}")
    if not accelerator.is_main_process:
        return
    for warning in [f"not compared: {problem}"] if problem else changes:
        print(f"warning: run.allow_config_change: {warning}", file=sys.stderr, flush=True)


def _launcher_changes(accelerator, paths: StagePaths) -> list[str]:
    """The mixed precision the launcher chose (``run.mixed_precision: null`` leaves it to the
    Accelerate config), compared with run_info.json's: bf16 weights resumed in fp32 train
    differently, yet no key of config.yaml changed."""
    try:
        before = json.loads(paths.info.read_text(encoding="utf-8")).get("mixed_precision")
    except (OSError, ValueError, AttributeError):
        return []  # an older stage dir, or none: nothing recorded to compare with
    now = accelerator.mixed_precision
    return [] if before in (None, now) else [f"mixed precision (launcher): {before!r} -> {now!r}"]


def record_run(accelerator, cfg: Any, paths: StagePaths, resume_from: Path | None,
               stage: str, step: int | None = None) -> None:
    """Print the resolved config and git revision once (main process) and record them in the
    stage dir: config.yaml becomes the settings the stage runs with now, and a line appended
    to config_history.jsonl keeps them with the world size, the checkpoint resumed from (at
    optimizer step ``step``) and the keys changed since the line before, so that what trained
    earlier is never lost. Call it once the run goes on (nothing else refused it)."""
    if not accelerator.is_main_process:
        return
    revision = git_revision()
    info = run_info(accelerator, revision)
    append_history(paths, {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "stage": stage,
        "git_revision": revision, "world_size": info["world_size"],
        "distributed_type": info["distributed_type"], "mixed_precision": info["mixed_precision"],
        "resumed_from": None if resume_from is None else str(resume_from),
        "global_step": step, "config": to_dict(cfg)})
    save_config(cfg, paths.config, header=f"sccl {stage} config; git {revision}")
    atomic_write_json(paths.info, info)
    print(f"sccl {stage}  git {revision}  world size {accelerator.num_processes}  "
          f"device {accelerator.device}\n{format_config(cfg).rstrip()}")
    print(f"resuming from {resume_from}" if resume_from else f"writing {paths.dir}", flush=True)


def append_history(paths: StagePaths, entry: dict[str, Any]) -> None:
    """Add ``entry`` to config_history.jsonl with ``changes`` against the previous line's
    config (the whole file rewritten atomically: it is never left with a partial line). A
    stage dir written before the history existed gets its config.yaml as the first line."""
    text = paths.history.read_text(encoding="utf-8") if paths.history.is_file() else ""
    if not text and paths.config.is_file():
        with contextlib.suppress(ConfigError, OSError):
            text = json.dumps({"from": paths.config.name,
                               "config": read_config_file(paths.config)[0]}) + "\n"
    previous = _last_config(text)
    changes = None if previous is None else config_changes(previous, entry["config"])
    line = json.dumps({**entry, "changes": changes}, allow_nan=True)
    atomic_write_text(paths.history, text + line + "\n")


def _last_config(text: str) -> dict[str, Any] | None:
    """The config of the last line of a history, or None (no line, or not readable)."""
    lines = text.splitlines()
    try:
        config = json.loads(lines[-1])["config"] if lines else None
    except (ValueError, KeyError, TypeError):
        return None
    return config if isinstance(config, dict) else None


def tracker_config(cfg: Any) -> dict[str, Any]:
    """Flattened config with values TensorBoard's hparams accept (None and lists as text)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v)
            for k, v in flatten(to_dict(cfg)).items()}


def _logged_step(line: str, unreadable: int) -> int:
    """The global_step of one log line; ``unreadable`` for a line that is not a JSON object
    (a process killed mid-write leaves a partial last line)."""
    try:
        record = json.loads(line)
    except ValueError:
        return unreadable
    return record.get("global_step", 0) if isinstance(record, dict) else unreadable


class JsonlLogger:
    """Appends one JSON object per line to ``path`` (main process only; others no-op).

    On resume, lines logged after the checkpoint's step (``global_step`` > ``resume_step``)
    are dropped first, so the file reads like the uninterrupted run's; a fresh run
    (``resume_step`` None) starts the file afresh."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None = None) -> None:
        self.path, self.enabled = path, enabled
        if not (enabled and path.exists()):
            return
        kept = [] if resume_step is None else [
            line for line in path.read_text().splitlines()
            if _logged_step(line, resume_step + 1) <= resume_step]
        atomic_write_text(path, "".join(line + "\n" for line in kept))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")


class StepMeter:
    """Losses, samples and time since the last log line; NaN bookkeeping of the current
    accumulation window."""

    def __init__(self) -> None:
        self.grad_norm: float | None = None
        self.lrs: dict[str, float] = {}  # learning rate of each group in the last step
        self.window_ok = True
        self.reset()

    def reset(self) -> None:
        self.loss_sum, self.loss_n, self.samples = 0.0, 0, 0
        self.t0 = time.perf_counter()

    def add(self, loss: float | None, samples: int) -> None:
        """One micro-batch: its global loss (None = non-finite) and global sample count."""
        self.samples += samples
        if loss is None:
            self.window_ok = False
        else:
            self.loss_sum, self.loss_n = self.loss_sum + loss, self.loss_n + 1

    def end_window(self, grad_norm: float | None, optimizer) -> bool:
        """Close an accumulation window (before its optimizer step, whose learning rates are
        recorded); True when all its losses were finite."""
        ok, self.window_ok, self.grad_norm = self.window_ok, True, grad_norm
        self.lrs = {str(g.get("name", i)): float(g["lr"])
                    for i, g in enumerate(optimizer.param_groups)}
        return ok

    def take(self) -> dict[str, float]:
        """Mean loss and samples/s since the last call (then restart)."""
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        out = {"loss": self.loss_sum / max(self.loss_n, 1), "samples_per_s": self.samples / elapsed}
        self.reset()
        return out


def progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True,
                leave=False)


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a log record worth plotting (lr per group as lr_<name>)."""
    keys = ("loss", "samples_per_s", "grad_norm", "queue_fill", "nonfinite_total")
    out = {k: float(record[k]) for k in keys if record.get(k) is not None}
    out.update({f"lr_{name}": lr for name, lr in record["lr"].items()})
    return out
