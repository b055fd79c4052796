"""Stage 1's resumable state: the trainer state, checkpoints with manifests (save, verify,
choose, load), best/ and last/ weights, the claim on a stage directory, and the one
definition of "Stage 1 finished".

A checkpoint is written to ``checkpoints/.tmp-step-N`` by every rank; the main process then
records every file's size and sha256 and the number of processes in ``manifest.json`` (written
last, atomically) and renames the directory, so a directory named ``step-N`` is complete (the
run directory must be on a file system every rank shares). A save that fails (a full disk, say)
removes its ``.tmp-step-N`` and raises an ``OSError`` naming the place. Before resuming, the
newest checkpoint is checked against its manifest and each of its pickles is read as data only
(``sccl.safeload``: a checkpoint from elsewhere cannot run code); a damaged one is skipped with
a warning naming the file, and one written by another number of processes is refused
(docs/reliability.md).

    python -m sccl.checkpoint finished RUN    # exit 0 when Stage 1 of RUN has finished, else 1
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from sccl import dist, safeload
from sccl.accel import local_shards, params_sharded
from sccl.config import ConfigError
from sccl.fileio import (
    atomic_write_json,
    atomic_write_text,
    file_sha256,
    replace_dir,
    storage_errno,
    storage_problem,
)
from sccl.lock import DirLock, LockHeldError
from sccl.logs import StagePaths

_STEP_DIR = re.compile(r"step-(\d{8})")
MANIFEST = "manifest.json"
CLAIM_PREFIX = ".claim-"  # + a random token: the file by which ranks check the dir is shared
SHARED_WAIT = 5.0  # s a rank retries reading that file before it calls the dir not shared


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps had a NaN/inf loss; the last good checkpoint is kept."""


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

    def start_selection(self, epoch: int) -> bool:
        """Choose best/ from ``epoch`` on (the first epoch that used the queue): forget the
        best dev loss and the patience count; True when an earlier best was forgotten."""
        forgotten, self.selection_from = self.best_epoch, epoch
        self.best_dev_loss, self.best_epoch, self.bad_epochs = None, 0, 0
        return bool(forgotten)

    def weights_info(self, dev_loss: float | None, epoch: int) -> dict[str, Any]:
        """``info.json`` of exported weights (best/, last/)."""
        return {"epoch": epoch, "global_step": self.global_step, "dev_loss": dev_loss,
                "best_dev_loss": self.best_dev_loss, "best_epoch": self.best_epoch,
                "queue_active": self.queue_started, "selection_from": self.selection_from}


# ------------------------------------------------------------------------ saving


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint directories under ``root`` (with a manifest or a trainer state), oldest
    first; whether each is intact is ``checkpoint_damage``'s question."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.fullmatch(p.name)
             and ((p / MANIFEST).is_file() or (p / "trainer_state.json").is_file())]
    return sorted(found, key=lambda p: int(p.name[5:]))


def stage1_finished(run: str | Path) -> bool:
    """Whether Stage 1 of run directory ``run`` has finished (all epochs, early stopping or
    run.max_steps): its newest checkpoint's trainer state says so. The one definition, used
    by slurm/*.sh (through ``python -m sccl.checkpoint finished``) and sccl-demo."""
    found = list_checkpoints(Path(run) / "stage1" / "checkpoints")
    try:
        return bool(found) and json.loads(
            (found[-1] / "trainer_state.json").read_text()).get("finished") is True
    except (OSError, ValueError, AttributeError):
        return False


def save_checkpoint(accelerator, root: Path, state: TrainerState, queue_state: dict | None,
                    keep: int) -> Path:
    """Save the full training state atomically as ``root/step-<global_step>`` with a manifest
    of its files; keep the newest ``keep`` checkpoints. Every rank must call it."""
    final = root / f"step-{state.global_step:08d}"
    tmp = root / f".tmp-{final.name}"
    main = accelerator.is_main_process
    if main:
        remove_debris(root)
    accelerator.wait_for_everyone()
    # One process removes what it wrote at once; with several, the others may still be
    # writing their shards into tmp: the next claim or save removes it.
    with _removed_on_failure(tmp, root, remove=main and accelerator.num_processes == 1):
        accelerator.save_state(str(tmp))
        if main:
            torch.save(queue_state, tmp / "queue.pt")
            atomic_write_json(tmp / "trainer_state.json", asdict(state))
    accelerator.wait_for_everyone()  # every rank's files are in tmp
    if main:
        with _removed_on_failure(tmp, root):
            write_manifest(tmp, accelerator.num_processes)
            replace_dir(tmp, final)
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def remove_debris(root: Path) -> None:
    """Remove the ``.tmp-step-*`` directories of saves that a kill or a full disk cut short
    (main process, under the stage lock: nobody else writes there then)."""
    for debris in root.glob(".tmp-step-*"):
        shutil.rmtree(debris, ignore_errors=True)


@contextlib.contextmanager
def _removed_on_failure(tmp: Path, where: Path, remove: bool = True) -> Iterator[None]:
    """Remove ``tmp`` (a save's directory) when the block fails, freeing its space; a failure
    of the storage is raised as an ``OSError`` naming ``where``, whatever writer failed
    (torch's zip writer says only "unexpected pos ..." or "PytorchStreamWriter failed writing
    file"). A failed rank does not wait for the others: torchrun ends the job, and the next
    save removes what they wrote."""
    try:
        yield
    except Exception as err:
        problem = _storage_error(err, where)  # before the removal frees space
        if remove:
            shutil.rmtree(tmp, ignore_errors=True)
        if problem is None:
            raise
        raise problem from err


def _storage_error(err: Exception, where: Path) -> OSError | None:
    """``err`` as an ``OSError`` of ``where`` when the storage failed, whatever writer
    failed (``fileio.storage_errno``), else None."""
    code = storage_errno(err, where)
    return None if code is None else OSError(code, os.strerror(code), str(where))


def write_manifest(ckpt: Path, processes: int) -> None:
    """``manifest.json``: size and sha256 of every file of ``ckpt`` (written last) and the
    number of processes that wrote it."""
    files = {p.relative_to(ckpt).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)}
             for p in sorted(ckpt.rglob("*")) if p.is_file() and p.name != MANIFEST}
    atomic_write_json(ckpt / MANIFEST, {"format": 1, "processes": processes, "files": files})


def check_finite_weights(model, device: torch.device, state: TrainerState) -> None:
    """Raise ``NonFiniteLossError`` when any parameter holds NaN/inf on any rank (a finite
    loss can still produce a diverging update), so no such checkpoint is ever written. Each
    rank checks the shards it holds (ZeRO-3's parameters are empty placeholders)."""
    bad = any(not bool(torch.isfinite(p).all()) for p in local_shards(model))
    if dist.all_reduce_sum(torch.tensor([float(bad)], device=device)).item() > 0:
        raise NonFiniteLossError(
            f"the weights hold NaN/inf after optimizer step {state.global_step}; nothing was "
            "saved and the last checkpoint is intact: lower the learning rate and resume")


def export_weights(accelerator, model, out: Path, info: dict[str, Any]) -> None:
    """``save_pretrained`` of the full weights into ``out`` atomically (main process), plus
    ``info.json`` (epoch, step, dev loss). All ranks must call it: under ZeRO-3 and FSDP2
    ``get_state_dict`` gathers every rank's shards into one full state dict on the main
    process (ZeRO-3 needs ``stage3_gather_16bit_weights_on_model_save``; the weights come in
    the dtype they train in, as under ZeRO-2). Otherwise only the main process asks for it
    (under ZeRO-2 it is a copy of the weights: none is made on the other ranks)."""
    state = (accelerator.get_state_dict(model)  # a collective when the parameters are sharded
             if params_sharded(accelerator) or accelerator.is_main_process else None)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tmp = out.with_name(f".tmp-{out.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        with _removed_on_failure(tmp, out):
            accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=state)
            atomic_write_json(tmp / "info.json", info)
            replace_dir(tmp, out)
    accelerator.wait_for_everyone()


def save_training(accelerator, model, queue, state: TrainerState, paths: StagePaths, keep: int,
                  exports: tuple[Path, ...] = (), info: dict | None = None) -> bool:
    """Export the weights to each path in ``exports``, then checkpoint (keeping ``keep``).
    Never writes non-finite weights, and no checkpoint right after a skipped (NaN/inf) step:
    the newest checkpoint is always one taken after a good step. True if one was written."""
    check_finite_weights(model, accelerator.device, state)
    for path in exports:
        export_weights(accelerator, model, path, info)
    if state.nonfinite_consecutive:
        accelerator.print("warning: no checkpoint after a skipped non-finite step")
        return False
    save_checkpoint(accelerator, paths.checkpoints, state,
                    queue.state_dict() if queue.size else None, keep)
    return True


# ------------------------------------------------------------------------ resuming


def checkpoint_damage(ckpt: Path) -> str | None:
    """None when ``ckpt`` is intact, else ``"<file>: <what is wrong>"``. With a manifest every
    file's size and sha256 are checked; a checkpoint of older sccl versions (no manifest) can
    only be checked by parsing each of its files. Either way every pickle must read back as
    data (``safeload``): a manifest, which anyone can write, proves nothing about that."""
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
    return safeload.checkpoint_problem(ckpt)


def _legacy_damage(ckpt: Path) -> str | None:
    from safetensors.torch import load_file

    for path in sorted(p for p in ckpt.rglob("*") if p.is_file()):
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".safetensors":
                load_file(path)
        except Exception as e:  # any parse failure means damage; the kind is in the message
            return f"{path}: unreadable ({type(e).__name__}; a checkpoint without manifest)"
    state = ckpt / "trainer_state.json"
    if not state.is_file():
        return f"{state}: missing"
    problem = safeload.checkpoint_problem(ckpt)
    return problem and f"{problem} (a checkpoint without manifest)"


def choose_checkpoint(resume: str, root: Path) -> Path | None:
    """Checkpoint to resume from for ``run.resume``: "auto" = the newest intact one under
    ``root`` (None when there is none; damaged newer ones are skipped with a warning naming
    the damaged file), "never" = None (and ``root`` must hold none), or a path to a
    checkpoint directory (which must be intact). Reads every file it checks: call it on the
    main process only."""
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


def written_by(ckpt: Path) -> int:
    """Number of processes that wrote ``ckpt``: recorded in its manifest, or for older sccl
    the number of Accelerate's ``random_states_<rank>.pkl`` (one per process; 0 if none)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        recorded = json.loads((ckpt / MANIFEST).read_text()).get("processes")
        if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded > 0:
            return recorded
    count = 0
    while (ckpt / f"random_states_{count}.pkl").is_file():
        count += 1
    return count


def check_processes(ckpt: Path, processes: int) -> None:
    """``ConfigError`` unless ``ckpt`` was written by ``processes`` processes and holds a random
    state for each: resumed by fewer, the other ranks' states would be dropped without a word
    (their random streams; under ZeRO or FSDP their shards); by more, the new ranks have none
    (Accelerate only logs a missing random state, at info level, and goes on)."""
    written = written_by(ckpt)
    if written and written != processes:
        raise ConfigError(
            f"checkpoint {ckpt} was written by {_processes(written)}, this run has "
            f"{processes}: resume with {_processes(written)} (accelerate launch "
            f"--num_processes {written} ...), or start a new --run.dir")
    for rank in range(processes):
        if not (ckpt / f"random_states_{rank}.pkl").is_file():
            raise ConfigError(
                f"cannot resume from {ckpt}: it holds no random state for process {rank} "
                f"(random_states_{rank}.pkl); resume from another checkpoint with --run.resume "
                "PATH, or start a new --run.dir")


def _processes(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


def load_checkpoint(accelerator, path: Path, queue) -> TrainerState:
    """Restore Accelerate state (model, optimizer, scheduler, every rank's RNG) and the queue
    from ``path`` (verified intact and written by as many processes by ``StageClaim``);
    return the trainer state. Every ``torch.load`` meanwhile is weights-only
    (``safeload.weights_only_loads``), so a file changed since it was verified runs no code
    either (except DCP's ``.metadata``, which DCP unpickles itself: a change in the moments
    since its check is not covered). Every rank checks that its random streams now hold
    the saved states. A checkpoint that does not fit the current config (model, queue size
    changed) is a ``ConfigError`` on every rank; nothing continues from a partial load."""
    advice = (f"cannot resume from {path} (its files are intact): {{}}. Did the model or the "
              "loss change? Use a new --run.dir (or --run.resume PATH)")
    try:
        with safeload.weights_only_loads():
            accelerator.load_state(str(path))
        queue_state = safeload.load(path / "queue.pt")
        state = TrainerState(**json.loads((path / "trainer_state.json").read_text()))
        if queue_state is not None:
            queue.load_state_dict(queue_state)
        rng = safeload.rng_restored(path / f"random_states_{accelerator.process_index}.pkl")
    except (RuntimeError, ValueError, KeyError, TypeError, OSError, pickle.UnpicklingError) as e:
        raise ConfigError(advice.format(e)) from e
    lost = torch.tensor([float(rng is not None)], device=accelerator.device)
    if dist.all_reduce_sum(lost).item() > 0:  # every rank stops, none waits in a collective
        raise ConfigError(f"cannot resume from {path}: "
                          f"{rng or 'the random state of another process was not restored'}"
                          "; the file changed since it was checked, or is damaged")
    return state


class StageClaim:
    """Exclusive use of a stage directory for one run (``sccl.lock.DirLock``, taken by the
    main process) and the checkpoint it resumes from (``choose_checkpoint``). Every rank
    learns the outcome from one broadcast, so all raise the same ``ConfigError`` (exit 2)
    when the directory is in use, no checkpoint is intact, the one chosen was written by
    another number of processes (``check_processes``) or some rank does not see the
    directory the main process writes (``_check_shared``); none hangs. ``release`` (or the
    end of a ``with`` block) also removes the directories the claim created if they stayed
    empty (an input error)."""

    def __init__(self, accelerator, paths: StagePaths, what: str, resume: str | None) -> None:
        """``resume``: ``run.resume`` of a stage with checkpoints, None for one without."""
        self.lock, self.token_file, checkpoint, error, sent = None, None, None, None, None
        # Only the main process creates (and so removes) directories. Another rank does not
        # look at them before ``_check_shared``: an NFS client may trust a "no such entry" it
        # cached then for a while after the main process created the directory.
        self.created = [d for d in (paths.dir, paths.root)
                        if accelerator.is_main_process and not d.exists()]
        if accelerator.is_main_process:
            try:
                self.lock = DirLock(paths.dir, what=f"{what} of {paths.root}").acquire()
                remove_debris(paths.checkpoints)  # frees the space a failed save held
                remove_tokens(paths.dir)
                if resume is not None:
                    checkpoint = choose_checkpoint(resume, paths.checkpoints)
                if checkpoint is not None:
                    check_processes(checkpoint, accelerator.num_processes)
                if dist.is_dist():  # one process sees what it writes: nothing to check
                    sent = self._write_token(paths.dir)
            except (LockHeldError, ConfigError) as e:
                error = str(e)
            except OSError as e:  # a read-only or full run directory: every rank must hear it
                error = storage_problem(e, paths.dir) or f"{paths.dir}: {e}"
        checkpoint, error, sent = dist.broadcast_object((checkpoint, error, sent))
        if error is None and sent is not None:
            error = self._check_shared(accelerator, paths.dir, sent)
        if error is not None:
            self.release()
            raise ConfigError(error)
        self.resume_from: Path | None = checkpoint

    def _write_token(self, directory: Path) -> tuple[str, str, str]:
        """Write ``<directory>/.claim-<token>`` holding a fresh random token (atomically, so
        a reader sees all of it or nothing); return (token, host, file system) for the other
        ranks. The random name never meets another run's (the lock refuses a second run
        anyway), and one left by a kill -9 goes at the next claim (``remove_tokens``)."""
        token = uuid.uuid4().hex
        self.token_file = directory / f"{CLAIM_PREFIX}{token}"
        atomic_write_text(self.token_file, token)
        return token, socket.gethostname(), _file_system(directory)

    def _check_shared(self, accelerator, directory: Path, sent: tuple[str, ...]) -> str | None:
        """None when every rank reads the main process's token in its own view of
        ``directory``, else the one line that every rank raises: written by the first rank
        that cannot, naming the file system each side sees (a node-local run directory
        would otherwise surface later as a checkpoint missing some ranks' files, or a resume
        that cannot find one). Costs one all_reduce, plus a broadcast on failure."""
        token, host, where = sent
        path = directory / f"{CLAIM_PREFIX}{token}"
        problem = None if accelerator.is_main_process else _unreadable(path, token)
        blind = torch.zeros(dist.get_world_size(), device=accelerator.device)
        blind[dist.get_rank()] = float(problem is not None)
        blind = dist.all_reduce_sum(blind)  # every rank has read (or given up) after this
        self._drop_token()
        if not blind.any():
            return None
        first = int(blind.nonzero()[0])
        line = None
        if dist.get_rank() == first:
            line = (f"{directory}: rank {first} on host {socket.gethostname()} cannot read "
                    f"{path.name}, which rank 0 on host {host} wrote there ({problem}); rank "
                    f"{first} sees {_file_system(directory)}, rank 0 {where}. The run "
                    "directory must be on a file system every node shares (NFS, Lustre, "
                    "GPFS), not a node-local disk: pass such a --run.dir")
        return dist.broadcast_object(line, src=first)

    def _drop_token(self) -> None:
        if self.token_file is not None:
            with contextlib.suppress(OSError):
                self.token_file.unlink(missing_ok=True)
            self.token_file = None

    def release(self) -> None:
        self._drop_token()
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        for d in self.created:  # only what this claim created, and only when still empty
            with contextlib.suppress(OSError):
                d.rmdir()

    def __enter__(self) -> StageClaim:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def remove_tokens(directory: Path) -> None:
    """Remove the token files (and half-written ones) of claims killed before their release
    (main process, under the stage lock: no live claim has one here then)."""
    for pattern in (f"{CLAIM_PREFIX}*", f".{CLAIM_PREFIX}*"):  # the second: atomic_open's
        for stale in directory.glob(pattern):
            stale.unlink(missing_ok=True)


def _unreadable(path: Path, token: str) -> str | None:
    """None when ``path`` holds ``token``, else why not, after retrying for ``SHARED_WAIT``
    seconds. Between tries the nearest existing directory above ``path`` is listed: that
    makes an NFS client re-read it rather than trust a "no such entry" it cached (for up to
    its attribute cache time, acdirmin = 30 s by default). On a shared file system the
    first read succeeds: the wait is spent only when refusing. Never raises: the caller's
    collective must be reached."""
    deadline = time.monotonic() + SHARED_WAIT
    while True:
        try:
            problem = None if path.read_text() == token else "it holds another token"
        except (OSError, ValueError) as e:  # ValueError: bytes that are not text
            problem = getattr(e, "strerror", None) or str(e)
        if problem is None or time.monotonic() > deadline:
            return problem
        with contextlib.suppress(OSError):
            os.listdir(_nearest_existing(path))
        time.sleep(0.1)


def _nearest_existing(path: Path) -> Path:
    return next(p for p in (path, *path.parents) if p.exists())


def _file_system(path: Path) -> str:
    """The file system holding ``path`` (or its nearest existing parent) as this process
    sees it, e.g. "nfs4 at /shared": the deepest mount point above it in
    /proc/self/mountinfo (of mounts at one place, the last listed is the one in view)."""
    where = os.path.realpath(_nearest_existing(path))
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return "an unknown file system"
    best = ("", "an unknown file system")
    for line in lines:
        fields, _, rest = line.partition(" - ")
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields.split()[4])
        inside = where == point or where.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]) and rest:
            best = (point, rest.split()[0])
    return f"{best[1]} at {best[0]}" if best[0] else best[1]


def main(argv: list[str] | None = None) -> int:
    """``finished RUN``: exit 0 when Stage 1 of RUN has finished, 1 when not, 2 on bad usage."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "finished":
        print("usage: python -m sccl.checkpoint finished RUN", file=sys.stderr)
        return 2
    return 0 if stage1_finished(args[1]) else 1


if __name__ == "__main__":
    sys.exit(main())
