"""Run-time helpers shared by the training stages: run directory, checkpoints, logging,
preemption, seeding, non-finite loss guard.

Run directory of a stage (``StagePaths``; Stage 1 = ``<run>/stage1``):

    <run>/<stage>/config.yaml        resolved config (loadable with --config), git revision on top
    <run>/<stage>/run_info.json      git revision, command line, world size, versions, start time
    <run>/<stage>/log.jsonl          one JSON object per logging step (and one per epoch)
    <run>/<stage>/tb/                TensorBoard event files (Accelerate tracker)
    <run>/<stage>/checkpoints/step-NNNNNNNN/   resumable state: Accelerate state (model,
                                     optimizer, RNG, scaler), trainer_state.json, queue.pt
    <run>/<stage>/best/, last/       weights only: model_config.json + model.safetensors + info.json

A checkpoint is written to ``checkpoints/.tmp-step-N`` by every rank; the main process then
records every file's size and sha256 in ``manifest.json`` (written last, atomically) and
renames the directory, so a directory named ``step-N`` is complete (the run directory must be
on a file system every rank shares). Before resuming, the newest checkpoint is checked against
its manifest; a damaged one is skipped with a warning naming the file (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sccl import dist
from sccl.fileio import atomic_write_json, file_sha256

_STEP_DIR = re.compile(r"step-(\d{8})")


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps had a NaN/inf loss; the last good checkpoint is kept."""


# ------------------------------------------------------------------------ run directory


@dataclass(frozen=True)
class StagePaths:
    """Paths inside ``<run>/<stage>``."""

    root: Path
    stage: str

    @property
    def dir(self) -> Path:
        return self.root / self.stage

    @property
    def config(self) -> Path:
        return self.dir / "config.yaml"

    @property
    def info(self) -> Path:
        return self.dir / "run_info.json"

    @property
    def log(self) -> Path:
        return self.dir / "log.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def best(self) -> Path:
        return self.dir / "best"

    @property
    def last(self) -> Path:
        return self.dir / "last"


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
    import accelerate
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
        from sccl.fileio import atomic_write_text
        atomic_write_text(path, "".join(line + "\n" for line in kept))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")


def tracker_config(flat: dict[str, Any]) -> dict[str, Any]:
    """Flattened config with values TensorBoard's hparams accept (None and lists as text)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()}


# ------------------------------------------------------------------------ preemption


class StopSignal:
    """SIGTERM / SIGINT / SIGUSR1 set a flag; the trainer polls it at step boundaries (and
    between dev batches).

    The handler only records the signal (nothing unsafe runs inside it). ``agreed`` sums the
    flag over ranks so that every rank stops at the same step even when only some ranks (or
    only the launcher's first child) received the signal. SIGINT (Ctrl-C; torchrun forwards it
    to the ranks, which it starts in sessions of their own) is a stop request too, not an
    abort: SIGKILL aborts. Previous handlers come back on ``close``."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def agreed(self, device: torch.device) -> bool:
        """True on every rank when any rank got a signal (one small all_reduce)."""
        flag = torch.tensor([1.0 if self.received is not None else 0.0], device=device)
        return bool(dist.all_reduce_sum(flag).item() > 0)

    def close(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def stop_signals_deferred():
    """Block the stop signals while a loader may fork its workers (pending ones are handled
    on exit). A forked worker inherits the blocked mask, so a signal sent to every process of
    the job (as Slurm does) cannot kill a worker before its ``worker_init_fn`` ignores it."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, StopSignal.SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def send_stop_to_self() -> None:
    """Debug aid (``run.stop_after_steps``): behave as if the scheduler preempted us."""
    os.kill(os.getpid(), signal.SIGTERM)


# ------------------------------------------------------------------------ seeds, guards


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class TrainerState:
    """Everything besides model/optimizer/RNG/queue that a resumed run needs."""

    epoch: int = 1  # 1-based epoch to run (or running)
    step_in_epoch: int = 0  # micro-batches of ``epoch`` already consumed
    global_step: int = 0  # optimizer steps taken (skipped non-finite steps not counted)
    samples_seen: int = 0  # global training samples consumed
    best_dev_loss: float | None = None  # lowest dev SupCon loss so far
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best one (early stopping)
    nonfinite_total: int = 0  # skipped steps with a NaN/inf loss or gradient norm
    nonfinite_consecutive: int = 0
    finished: bool = False  # all epochs ran or early stopping triggered
    queue_started: bool = False  # some optimizer step so far used the queue
    selection_from: int = 0  # epoch from which best/ is chosen (0 = not restarted)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainerState:
        return cls(**d)

    def record_dev_loss(self, loss: float, epoch: int) -> bool:
        """Update early-stopping state; True when ``loss`` is a new best."""
        if math.isfinite(loss) and (self.best_dev_loss is None or loss < self.best_dev_loss):
            self.best_dev_loss, self.best_epoch, self.bad_epochs = loss, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    def record_step(self, finite: bool, max_consecutive: int) -> None:
        """Count a (non-)finite step; raise ``NonFiniteLossError`` after too many in a row."""
        if finite:
            self.nonfinite_consecutive = 0
            return
        self.nonfinite_total += 1
        self.nonfinite_consecutive += 1
        if self.nonfinite_consecutive >= max_consecutive:
            raise NonFiniteLossError(
                f"{self.nonfinite_consecutive} consecutive steps had a NaN/inf loss or gradient "
                f"norm (last at optimizer step {self.global_step + 1}); stopping. The last "
                "checkpoint is intact: lower the learning rate or use bf16/fp32 and resume.")


# ------------------------------------------------------------------------ checkpoints


MANIFEST = "manifest.json"


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint directories under ``root`` (with a manifest or a trainer state), oldest
    first; whether each is intact is ``checkpoint_damage``'s question."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.fullmatch(p.name)
             and ((p / MANIFEST).is_file() or (p / "trainer_state.json").is_file())]
    return sorted(found, key=lambda p: int(p.name[5:]))


def save_checkpoint(accelerator, root: Path, state: TrainerState, queue_state: dict | None,
                    keep: int) -> Path:
    """Save the full training state atomically as ``root/step-<global_step>`` with a manifest
    of its files; keep the newest ``keep`` checkpoints. Every rank must call it."""
    final = root / f"step-{state.global_step:08d}"
    tmp = root / f".tmp-{final.name}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)  # debris of a run killed while saving
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        torch.save(queue_state, tmp / "queue.pt")
        atomic_write_json(tmp / "trainer_state.json", state.to_dict())
    accelerator.wait_for_everyone()  # every rank's files are in tmp
    if accelerator.is_main_process:
        write_manifest(tmp)
        _replace_dir(tmp, final)
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, replacing an existing ``dst`` without a moment with none."""
    old = dst.with_name(f".old-{dst.name}")
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)
    with contextlib.suppress(OSError):  # make the renames durable
        fd = os.open(dst.parent, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def write_manifest(ckpt: Path) -> None:
    """``manifest.json``: size and sha256 of every file of ``ckpt`` (written last)."""
    files = {p.relative_to(ckpt).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)}
             for p in sorted(ckpt.rglob("*")) if p.is_file() and p.name != MANIFEST}
    atomic_write_json(ckpt / MANIFEST, {"format": 1, "files": files})


def checkpoint_damage(ckpt: Path) -> str | None:
    """None when ``ckpt`` is intact, else ``"<file>: <what is wrong>"``. With a manifest every
    file's size and sha256 are checked; a checkpoint of older sccl versions (no manifest) can
    only be checked by parsing each of its files."""
    manifest = ckpt / MANIFEST
    if not manifest.is_file():
        return _legacy_damage(ckpt)
    try:
        files = json.loads(manifest.read_text())["files"]
        items = [(ckpt / rel, int(m["size"]), str(m["sha256"])) for rel, m in files.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{manifest}: unreadable"
    for path, size, digest in items:
        if not path.is_file():
            return f"{path}: missing"
        if path.stat().st_size != size:
            return f"{path}: {path.stat().st_size} bytes, {size} when saved (truncated?)"
        if file_sha256(path) != digest:
            return f"{path}: content differs from the sha256 recorded when saved"
    return None


def _legacy_damage(ckpt: Path) -> str | None:
    from safetensors.torch import load_file

    for path in sorted(p for p in ckpt.rglob("*") if p.is_file()):
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".safetensors":
                load_file(path)
            elif path.suffix in (".pkl", ".bin", ".pt", ".pth"):
                torch.load(path, map_location="cpu", weights_only=False)  # our own files
        except Exception as e:  # any parse failure means damage; the kind is in the message
            return f"{path}: unreadable ({type(e).__name__}; a checkpoint without manifest)"
    state = ckpt / "trainer_state.json"
    return None if state.is_file() else f"{state}: missing"


def load_checkpoint(accelerator, path: Path, queue) -> TrainerState:
    """Restore Accelerate state (model, optimizer, scheduler, every rank's RNG) and the queue
    from ``path`` (verified intact by ``choose_checkpoint``); return the trainer state. A
    checkpoint that does not fit the current config (model, queue size or world size
    changed) is a ``ConfigError``; nothing continues from a partial load."""
    from sccl.config import ConfigError

    advice = (f"cannot resume from {path} (its files are intact): {{}}. Did the model, loss or "
              "number of processes change? Use a new --run.dir (or --run.resume PATH)")
    # Accelerate only logs (at info level) a missing or unreadable RNG file and goes on.
    rng = path / f"random_states_{accelerator.process_index}.pkl"
    missing = torch.tensor([float(not rng.is_file())], device=accelerator.device)
    if dist.all_reduce_sum(missing).item() > 0:
        raise ConfigError(advice.format(f"it holds no random state for {accelerator.num_processes}"
                                        " processes"))
    try:
        accelerator.load_state(str(path))
        state = TrainerState.from_dict(json.loads((path / "trainer_state.json").read_text()))
        queue_state = torch.load(path / "queue.pt", map_location="cpu", weights_only=True)
        if queue_state is not None:
            queue.load_state_dict(queue_state)
    except (RuntimeError, ValueError, KeyError, TypeError, OSError) as e:
        raise ConfigError(advice.format(e)) from e
    return state


def build_optimizer(groups: list[dict], cfg: Any, total_steps: int):
    """AdamW over parameter ``groups`` (each with its lr and weight_decay) from an optim
    config section (beta1, beta2, eps, scheduler, warmup_steps), and the lr schedule:
    None for "none", else linear warm-up then cosine or linear decay to 0 at total_steps."""
    optimizer = torch.optim.AdamW(groups, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if cfg.scheduler == "none":
        return optimizer, None

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        return 0.5 * (1 + math.cos(math.pi * progress)) if cfg.scheduler == "cosine" else 1 - progress

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def check_finite_weights(model, device: torch.device, state: TrainerState) -> None:
    """Raise ``NonFiniteLossError`` when any parameter holds NaN/inf on any rank (a finite
    loss can still produce a diverging update), so no such checkpoint is ever written."""
    bad = any(not bool(torch.isfinite(p).all()) for p in model.parameters())
    if dist.all_reduce_sum(torch.tensor([float(bad)], device=device)).item() > 0:
        raise NonFiniteLossError(
            f"the weights hold NaN/inf after optimizer step {state.global_step}; nothing was "
            "saved and the last checkpoint is intact: lower the learning rate and resume")


def export_weights(accelerator, model, out: Path, info: dict[str, Any]) -> None:
    """``save_pretrained`` of the unwrapped model into ``out`` atomically (main process),
    plus ``info.json`` (epoch, step, dev loss). All ranks must call it."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tmp = out.with_name(f".tmp-{out.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        accelerator.unwrap_model(model).save_pretrained(tmp)
        atomic_write_json(tmp / "info.json", info)
        _replace_dir(tmp, out)
    accelerator.wait_for_everyone()


def queue_checksum(queue_state: dict | None) -> str:
    """Short hash of a queue's content and pointers (to compare queues across ranks)."""
    if queue_state is None:
        return "none"
    h = hashlib.sha256()
    for key in ("ptr", "fill"):
        h.update(str(queue_state[key]).encode())
    h.update(queue_state["z"].numpy().tobytes())
    h.update(queue_state["labels"].numpy().tobytes())
    return h.hexdigest()[:16]


def choose_checkpoint(resume: str, root: Path) -> Path | None:
    """Checkpoint to resume from for ``run.resume``: "auto" = the newest intact one under
    ``root`` (None when there is none; damaged newer ones are skipped with a warning naming
    the damaged file), "never" = None (and ``root`` must hold none), or a path to a
    checkpoint directory (which must be intact). Reads every file it checks: call it on the
    main process only."""
    from sccl.config import ConfigError

    found = list_checkpoints(root)
    if resume == "never":
        if found:
            raise ConfigError(f"run.resume=never but {root} already holds checkpoints; use "
                              "--run.resume auto to continue that run, or a new --run.dir")
        return None
    if resume != "auto":
        path = Path(resume).expanduser()
        if not ((path / "trainer_state.json").is_file() or (path / MANIFEST).is_file()):
            raise ConfigError(f"run.resume: {path} is not a checkpoint directory (no "
                              "trainer_state.json); use auto, never or a checkpoints/step-N dir")
        found = [path]
    damaged = []
    for ckpt in reversed(found):
        problem = checkpoint_damage(ckpt)
        if problem is None:
            for bad in damaged:
                print(f"warning: damaged checkpoint skipped: {bad}; resuming from {ckpt}",
                      file=sys.stderr, flush=True)
            return ckpt
        damaged.append(problem)
    if damaged:
        raise ConfigError(f"no intact checkpoint to resume from: {'; '.join(damaged)}. Restore "
                          "the file, or move the damaged checkpoint directories aside (the run "
                          "then starts over) or resume from another with --run.resume PATH")
    return None


class StageClaim:
    """Exclusive use of a stage directory for one run (``sccl.lock.DirLock``, taken by the
    main process) and the checkpoint it resumes from (``choose_checkpoint``). Every rank
    learns the outcome from one broadcast, so all raise the same ``ConfigError`` (exit 2)
    when the directory is in use or no checkpoint is intact; none hangs. ``release`` also
    removes the directories the claim created if they stayed empty (an input error)."""

    def __init__(self, accelerator, paths: StagePaths, what: str, resume: str | None) -> None:
        """``resume``: ``run.resume`` of a stage with checkpoints, None for one without."""
        from sccl.config import ConfigError
        from sccl.lock import DirLock, LockHeldError

        self.lock, checkpoint, error = None, None, None
        self.created = [d for d in (paths.dir, paths.root) if not d.exists()]
        if accelerator.is_main_process:
            try:
                self.lock = DirLock(paths.dir, what=f"{what} of {paths.root}").acquire()
                if resume is not None:
                    checkpoint = choose_checkpoint(resume, paths.checkpoints)
            except (LockHeldError, ConfigError) as e:
                error = str(e)
        checkpoint, error = dist.broadcast_object((checkpoint, error))
        if error is not None:
            self.release()
            raise ConfigError(error)
        self.resume_from: Path | None = checkpoint

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        for d in self.created:  # only what this claim created, and only when still empty
            with contextlib.suppress(OSError):
                d.rmdir()


def config_changes(old: dict[str, Any], new: dict[str, Any], ignore: tuple[str, ...]) -> list[str]:
    """``key: old -> new`` for every flattened key that differs (keys under ``ignore`` skipped)."""
    from sccl.config import flatten

    a, b = flatten(old), flatten(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not k.startswith(ignore)]


# ------------------------------------------------------------------------ accelerate glue


def build_accelerator(mixed_precision: str | None, grad_accum_steps: int, logging_dir: Path,
                      tensorboard: bool):
    """Accelerator for a training stage.

    Several processes on a machine without CUDA (CI, tests) need two things Accelerate 1.15
    does not do by itself (both measured): CPU mode, without which ranks run undistributed
    (no DDP: silently unsynchronised weights) unless ACCELERATE_USE_CPU=true happens to be set
    (`use_cpu: true` in a multi-GPU config file does not set it); and a gloo process group,
    without which DeepSpeed starts its own and Accelerate reports world size 1 (docs/design.md).
    DeepSpeed must not get CPU mode (Accelerate then turns DeepSpeed off). A plain single
    process gets neither. The scheduler (if any) is stepped by the trainer only after real
    optimizer steps, once per step whatever the world size."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, InitProcessGroupKwargs, ProjectConfiguration

    launched = int(os.environ.get("LOCAL_RANK", -1)) != -1  # torchrun / accelerate launch
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    no_cuda = launched and not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=no_cuda and not deepspeed,
        gradient_accumulation_steps=grad_accum_steps,
        mixed_precision=mixed_precision,
        log_with="tensorboard" if tensorboard else None,
        project_config=ProjectConfiguration(project_dir=str(logging_dir),
                                            logging_dir=str(logging_dir)),
        kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")] if no_cuda else [],
        step_scheduler_with_optimizer=False,
    )
    if dist.get_world_size() > 1 and accelerator.distributed_type == DistributedType.NO:
        from sccl.config import ConfigError

        raise ConfigError(f"{dist.get_world_size()} processes were launched but Accelerate "
                          "does not distribute them; check the accelerate launch config")
    return accelerator


def fill_deepspeed_auto(accelerator, micro_batch: int, grad_clip: float) -> None:
    """Fill the DeepSpeed config's "auto" values that Accelerate cannot infer from our
    (non-DataLoader) loader, from the stage config: the per-rank micro batch and gradient
    clipping (Accelerate would put 1.0 there). Non-"auto" values that disagree are errors:
    the stage config is the one source of truth. No-op without DeepSpeed."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    from sccl.config import ConfigError

    ds = plugin.deepspeed_config
    for key, value in (("train_micro_batch_size_per_gpu", micro_batch),
                       ("gradient_clipping", float(grad_clip))):
        current = ds.get(key, "auto")
        if current == "auto":
            ds[key] = value
        elif float(current) != float(value):
            raise ConfigError(f"DeepSpeed config sets {key}={current} but the training config "
                              f"implies {value}; set it to \"auto\" in the DeepSpeed JSON")


def record_run(accelerator, cfg: Any, paths: StagePaths, resume_from: Path | None,
               stage: str) -> None:
    """Print the resolved config and git revision once (main process) and save them in the
    stage dir; on resume, warn about every config value that changed (run.* excepted)."""
    from sccl.config import format_config, read_config_file, save_config, to_dict

    if not accelerator.is_main_process:
        return
    revision = git_revision()
    if resume_from is not None and paths.config.is_file():
        old = read_config_file(paths.config)[0]
        for change in config_changes(old, to_dict(cfg), ("run.",)):
            print(f"warning: config changed since {resume_from.name}: {change}", file=sys.stderr)
    save_config(cfg, paths.config, header=f"sccl {stage} config; git {revision}")
    atomic_write_json(paths.info, run_info(accelerator, revision))
    print(f"sccl {stage}  git {revision}  world size {accelerator.num_processes}  "
          f"device {accelerator.device}\n{format_config(cfg).rstrip()}")
    print(f"resuming from {resume_from}" if resume_from else f"writing {paths.dir}", flush=True)


# ------------------------------------------------------------------------ metering


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


def train_record(state: TrainerState, meter: StepMeter, queue_fill: int,
                 world_size: int) -> dict[str, Any]:
    """One log.jsonl line for a logging step."""
    return {"global_step": state.global_step, "epoch": state.epoch,
            "step_in_epoch": state.step_in_epoch, **meter.take(), "lr": meter.lrs,
            "grad_norm": meter.grad_norm, "queue_fill": queue_fill,
            "samples_seen": state.samples_seen, "nonfinite_total": state.nonfinite_total,
            "world_size": world_size, "time": time.time()}


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a log record worth plotting (lr per group as lr_<name>)."""
    keys = ("loss", "samples_per_s", "grad_norm", "queue_fill", "nonfinite_total")
    out = {k: float(record[k]) for k in keys if record.get(k) is not None}
    out.update({f"lr_{name}": lr for name, lr in record["lr"].items()})
    return out


def weights_info(state: TrainerState, dev_loss: float | None, epoch: int) -> dict[str, Any]:
    return {"epoch": epoch, "global_step": state.global_step, "dev_loss": dev_loss,
            "best_dev_loss": state.best_dev_loss, "best_epoch": state.best_epoch,
            "queue_active": state.queue_started, "selection_from": state.selection_from}


def rank_checksums(queue, model, device: torch.device) -> dict[str, list[str]]:
    """Every rank's queue hash and weights fingerprint, in rank order (a collective)."""
    digest = int(queue_checksum(queue.state_dict())[:13], 16)  # 52 bits: exact in float64
    weight_sum = sum(float(p.detach().double().sum()) for p in model.parameters())
    mine = torch.tensor([[float(digest), weight_sum]], dtype=torch.float64, device=device)
    rows = dist.all_gather_no_grad(mine).tolist()  # (world, 2)
    return {"queue_checksums": [f"{int(q):013x}" for q, _ in rows],
            "weight_checksums": [f"{w:.17g}" for _, w in rows]}
