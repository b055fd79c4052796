"""sccl.checkpoint: trainer state, checkpoint lookup, manifests, "Stage 1 finished"; and, end
to end, damaged checkpoints: a truncated file in the newest checkpoint makes the resume fall back to
the newest intact one, with a warning naming the file, and the run still ends with the
uninterrupted run's weights (so nothing continued from a partial load); with every checkpoint
damaged the stage exits 2 with one line; so does a stage whose checkpoints hold pickles that
would run code, with or without a (forged) manifest (tests/test_safeload.py: the unit tests).
Checkpoints of older sccl versions (no manifest) still resume, checked by parsing their files.
A checkpoint written by another number of processes is refused. A full disk or a read-only
directory while saving raises an OSError naming the place and leaves the last checkpoint
intact, nothing half-written. A run directory that one rank does not share (its own mount
over it) is refused on every rank with the same line."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sccl import checkpoint as ck
from sccl.config import ConfigError
from sccl.fileio import storage_problem
from sccl.logs import StagePaths
from tests.eval_fixtures import accelerate_launch
from tests.mounts import fill, read_only, small_disk
from tests.test_safeload import RunsCode, trainer  # noqa: F401  (module fixture)
from tests.test_train_supcon import (
    check_ok,
    command,
    corpus,  # noqa: F401  (session fixture)
    run,
    tiny_config,
    weights,
)


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):  # noqa: F811
    """(config, uninterrupted run, run stopped after step 3 holding step-2 and step-3)."""
    tmp = tmp_path_factory.mktemp("ckpt")
    cfg = tiny_config(tmp, corpus, optim={"epochs": 2, "patience": 0})
    full, cut = tmp / "full", tmp / "cut"
    check_ok(run(command(cfg, full)))
    check_ok(run(command(cfg, cut, "--run.stop_after_steps", "3")))
    names = sorted(p.name for p in (cut / "stage1" / "checkpoints").iterdir())
    assert names == ["step-00000002", "step-00000003"]
    return cfg, full, cut


def damaged_copy(cut: Path, dst: Path, steps: tuple[int, ...], name: str) -> Path:
    shutil.copytree(cut, dst)
    for step in steps:
        path = dst / "stage1" / "checkpoints" / f"step-{step:08d}" / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return dst


def same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["random_states_0.pkl", "model.safetensors", "optimizer.bin",
                                  "queue.pt", "trainer_state.json"])
def test_truncated_file_in_newest_checkpoint_falls_back(runs, tmp_path, name):
    cfg, full, cut = runs
    run_dir = damaged_copy(cut, tmp_path / "run", (3,), name)
    proc = run(command(cfg, run_dir))
    check_ok(proc)
    warning = [x for x in proc.stderr.splitlines() if x.startswith("warning: damaged checkpoint")]
    assert len(warning) == 1 and f"step-00000003/{name}" in warning[0], proc.stderr[-3000:]
    assert "resuming from" in proc.stdout and "step-00000002" in proc.stdout
    same_weights(full, run_dir)


@pytest.mark.slow
def test_every_checkpoint_damaged_exits_2_with_one_line(runs, tmp_path):
    cfg, _, cut = runs
    run_dir = damaged_copy(cut, tmp_path / "run", (2, 3), "optimizer.bin")
    proc = run(command(cfg, run_dir))
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "no intact checkpoint" in errors[0], proc.stderr[-3000:]
    assert "step-00000002/optimizer.bin" in errors[0] and "Traceback" not in proc.stderr
    assert "Did the model" not in errors[0]  # not the advice for a changed config


@pytest.mark.slow
def test_checkpoints_without_manifest_still_resume(runs, tmp_path):
    cfg, full, cut = runs
    run_dir = tmp_path / "old"
    shutil.copytree(cut, run_dir)
    for manifest in (run_dir / "stage1" / "checkpoints").glob("*/manifest.json"):
        manifest.unlink()  # as written before manifests existed
    assert ck.checkpoint_damage(run_dir / "stage1" / "checkpoints" / "step-00000003") is None
    damaged = damaged_copy(run_dir, tmp_path / "old-damaged", (3,), "random_states_0.pkl")
    proc = run(command(cfg, damaged))
    check_ok(proc)
    assert "step-00000003/random_states_0.pkl: unreadable" in proc.stderr
    same_weights(full, damaged)
    check_ok(run(command(cfg, run_dir)))
    same_weights(full, run_dir)


@pytest.mark.slow
def test_checkpoints_that_would_run_code_are_damage_and_never_run(runs, tmp_path):
    cfg, _, cut = runs
    run_dir, marker = tmp_path / "run", tmp_path / "ran"
    shutil.copytree(cut, run_dir)
    root = run_dir / "stage1" / "checkpoints"
    for step in (2, 3):
        rng = root / f"step-{step:08d}" / "random_states_0.pkl"
        torch.save({"random_state": RunsCode(marker)}, rng)
    ck.write_manifest(root / "step-00000003", 1)  # a forged manifest that matches
    (root / "step-00000002" / "manifest.json").unlink()  # as older sccl wrote it
    proc = run(command(cfg, run_dir))
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "no intact checkpoint" in errors[0], proc.stderr[-3000:]
    for step in (3, 2):
        assert f"step-{step:08d}/random_states_0.pkl: holds posix.mkdir" in errors[0]
    assert not marker.exists() and "Traceback" not in proc.stderr


def test_manifest_records_sizes_and_hashes(tmp_path):
    ckpt = tmp_path / "step-00000001"
    ckpt.mkdir()
    (ckpt / "a.safetensors").write_bytes(b"x" * 10)
    (ckpt / "sub").mkdir()
    (ckpt / "sub" / "b.json").write_bytes(b"y" * 3)
    ck.write_manifest(ckpt, 1)  # files that are no pickles: only their hashes are checked
    assert ck.checkpoint_damage(ckpt) is None
    assert json.loads((ckpt / "manifest.json").read_text())["processes"] == 1
    (ckpt / "sub" / "b.json").write_bytes(b"z" * 3)  # same size, other content
    assert "sub/b.json: content differs" in ck.checkpoint_damage(ckpt)
    (ckpt / "a.safetensors").write_bytes(b"x" * 4)
    assert "a.safetensors: 4 bytes, 10 when saved" in ck.checkpoint_damage(ckpt)
    (ckpt / "a.safetensors").unlink()
    assert "a.safetensors: missing" in ck.checkpoint_damage(ckpt)
    (ckpt / "manifest.json").write_text('{"files": ')
    assert "manifest.json: unreadable" in ck.checkpoint_damage(ckpt)


def test_trainer_state_early_stopping_and_nonfinite_guard():
    state = ck.TrainerState()
    assert state.record_dev_loss(1.0, 1) and not state.record_dev_loss(1.5, 2)
    assert not state.record_dev_loss(float("nan"), 3)
    assert (state.best_dev_loss, state.best_epoch, state.bad_epochs) == (1.0, 1, 2)
    assert state.record_dev_loss(0.5, 4) and state.bad_epochs == 0
    assert ck.TrainerState(**json.loads(json.dumps(asdict(state)))) == state
    state.record_step(False, 3)
    state.record_step(True, 3)  # a good step resets the run of bad ones
    state.record_step(False, 3)
    state.record_step(False, 3)
    with pytest.raises(ck.NonFiniteLossError, match="3 consecutive steps"):
        state.record_step(False, 3)
    assert state.nonfinite_total == 4
    assert state.start_selection(5) and (state.best_dev_loss, state.bad_epochs) == (None, 0)
    assert state.selection_from == 5 and not state.start_selection(6)


def test_checkpoint_lookup_and_resume_modes(tmp_path):
    root = tmp_path / "checkpoints"
    assert ck.choose_checkpoint("auto", root) is None
    for step in (5, 12):
        (root / f"step-{step:08d}").mkdir(parents=True)
        (root / f"step-{step:08d}" / "trainer_state.json").write_text("{}")
        ck.write_manifest(root / f"step-{step:08d}", 1)
    (root / "step-00000020").mkdir()  # incomplete: no trainer_state.json
    (root / ".tmp-step-00000030").mkdir()
    assert [p.name for p in ck.list_checkpoints(root)] == ["step-00000005", "step-00000012"]
    assert ck.choose_checkpoint("auto", root).name == "step-00000012"
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        ck.choose_checkpoint("never", root)
    assert ck.choose_checkpoint(str(root / "step-00000005"), root).name == "step-00000005"
    with pytest.raises(ConfigError, match="not a checkpoint directory"):
        ck.choose_checkpoint(str(root / "step-00000020"), root)


def test_stage1_finished_reads_the_newest_checkpoint_and_is_one_command(tmp_path):
    run = tmp_path / "run dir"
    root = run / "stage1" / "checkpoints"

    def checkpoint(step: int, **state) -> None:
        (root / f"step-{step:08d}").mkdir(parents=True)
        (root / f"step-{step:08d}" / "trainer_state.json").write_text(json.dumps(state))

    def command() -> int:
        return subprocess.run([sys.executable, "-m", "sccl.checkpoint", "finished", str(run)],
                              capture_output=True, timeout=120).returncode

    assert not ck.stage1_finished(run) and command() == 1  # no checkpoint yet
    checkpoint(3, finished=True)
    checkpoint(10, finished=False)  # step 10 sorts after step 3 (numbers, not names)
    assert not ck.stage1_finished(run)
    checkpoint(11, finished=True)
    (root / ".tmp-step-00000012").mkdir()  # a save in progress does not count
    assert ck.stage1_finished(run) and command() == 0
    (root / "step-00000011" / "trainer_state.json").write_text('{"finished": tr')  # torn
    assert not ck.stage1_finished(run)
    assert ck.main(["finished"]) == 2


def rng_file(path: Path) -> None:
    """A random state as Accelerate writes it (random_states_<rank>.pkl)."""
    torch.save({"step": 0, "random_state": random.getstate(),
                "numpy_random_seed": np.random.get_state(),
                "torch_manual_seed": torch.get_rng_state()}, path)


def hand_made(root: Path, ranks: int, manifest: bool) -> Path:
    ckpt = root / "step-00000004"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    for rank in range(ranks):
        rng_file(ckpt / f"random_states_{rank}.pkl")
    if manifest:
        ck.write_manifest(ckpt, ranks)
    return ckpt


@pytest.mark.parametrize("manifest", [True, False], ids=["recorded", "inferred"])
@pytest.mark.parametrize(("written", "now"), [(2, 1), (1, 2)])
def test_a_resume_with_another_number_of_processes_is_refused(tmp_path, manifest, written, now):
    paths = StagePaths(tmp_path / "run", "stage1")
    ckpt = hand_made(paths.checkpoints, written, manifest)
    with pytest.raises(ConfigError) as refused:
        ck.StageClaim(SimpleNamespace(is_main_process=True, num_processes=now), paths,
                      "Stage 1", "auto")
    processes = "1 process" if written == 1 else f"{written} processes"
    assert str(refused.value) == (
        f"checkpoint {ckpt} was written by {processes}, this run has {now}: resume with "
        f"{processes} (accelerate launch --num_processes {written} ...), or start a new "
        "--run.dir")
    assert not (paths.dir / ".lock").exists()  # released: the same command may run again
    with ck.StageClaim(SimpleNamespace(is_main_process=True, num_processes=written), paths,
                       "Stage 1", "auto") as claim:
        assert claim.resume_from == ckpt


def test_a_checkpoint_without_a_random_state_for_a_process_is_refused(tmp_path):
    ckpt = hand_made(tmp_path, 0, manifest=False)
    with pytest.raises(ConfigError, match="holds no random state for process 0"):
        ck.check_processes(ckpt, 1)
    rng_file(ckpt / "random_states_0.pkl")
    ck.check_processes(ckpt, 1)


@pytest.mark.parametrize(("leave", "writer"), [(0, "SafetensorError"), (300_000, "RuntimeError")],
                         ids=["model (safetensors)", "optimizer (torch zip writer)"])
def test_a_full_disk_while_saving_says_so_and_keeps_the_last_checkpoint(
        trainer, tmp_path, leave, writer):  # noqa: F811
    acc, _, queue = trainer
    with small_disk(tmp_path / "disk", "2m") as disk:
        root = disk / "checkpoints"
        ck.save_checkpoint(acc, root, ck.TrainerState(global_step=1), queue.state_dict(), 2)
        fill(disk, leave)  # the model's weights take 185 kB, its AdamW state 411 kB
        with pytest.raises(OSError) as failed:
            ck.save_checkpoint(acc, root, ck.TrainerState(global_step=2), queue.state_dict(), 2)
        assert storage_problem(failed.value) == f"{root}: no space left on the device"
        assert type(failed.value.__cause__).__name__ == writer
        del failed  # its traceback holds the failed writer's file open
        assert [p.name for p in root.iterdir()] == ["step-00000001"]  # no .tmp-step-2 left
        assert ck.choose_checkpoint("auto", root) == root / "step-00000001"  # intact
        (disk / ".filler").unlink()  # space freed: the same save now succeeds
        ck.save_checkpoint(acc, root, ck.TrainerState(global_step=2), queue.state_dict(), 2)
        assert ck.choose_checkpoint("auto", root) == root / "step-00000002"


def test_a_full_disk_while_exporting_keeps_the_previous_weights(trainer, tmp_path):  # noqa: F811
    acc, model, _ = trainer
    with small_disk(tmp_path / "disk", "2m") as disk:
        out = disk / "best"
        ck.export_weights(acc, model, out, {"epoch": 1})
        fill(disk)
        with pytest.raises(OSError) as failed:
            ck.export_weights(acc, model, out, {"epoch": 2})
        assert storage_problem(failed.value) == f"{out}: no space left on the device"
        assert sorted(p.name for p in disk.iterdir()) == [".filler", "best"]
        assert json.loads((out / "info.json").read_text()) == {"epoch": 1}


def test_a_read_only_checkpoint_directory_is_named(trainer, tmp_path):  # noqa: F811
    acc, _, queue = trainer
    root = tmp_path / "checkpoints"
    root.mkdir()
    with read_only(root), pytest.raises(OSError) as failed:
        ck.save_checkpoint(acc, root, ck.TrainerState(global_step=1), queue.state_dict(), 2)
    assert storage_problem(failed.value) == f"{root}: read-only file system"


def test_a_claim_removes_the_tokens_of_claims_killed_before_release(tmp_path):
    paths = StagePaths(tmp_path / "run", "stage1")
    paths.dir.mkdir(parents=True)
    left = [paths.dir / ".claim-0123abcd", paths.dir / "..claim-0123abcd.x1y2.tmp"]  # kill -9
    for path in left:
        path.write_text("0123abcd")
    with ck.StageClaim(SimpleNamespace(is_main_process=True, num_processes=1), paths,
                       "Stage 1", "auto"):
        assert sorted(p.name for p in paths.dir.iterdir()) == [".lock"]  # one process: none


def test_a_run_directory_one_rank_does_not_share_is_refused_on_every_rank(tmp_path):
    """Rank 1 runs in its own mount namespace with a tmpfs over ``local``: the node-local
    disk of another node. A shared directory still works, and leaves no token behind."""
    probe = ["unshare", "--mount", "--propagation", "private", "true"]
    if os.geteuid() != 0 or not shutil.which("unshare") or subprocess.run(probe).returncode:
        pytest.skip("a mount namespace of its own needs root and unshare(1)")
    shared, local = tmp_path / "shared", tmp_path / "local"
    local.mkdir()
    script = Path(__file__).parent / "dist_scripts" / "shared_dir_check.py"
    done = accelerate_launch(script, [str(tmp_path), str(shared), str(local)], timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert seen[0]["shared"] == seen[1]["shared"] == [".lock"]  # rank 1 sees rank 0's lock
    assert seen[0]["local"] == seen[1]["local"] is not None  # one line, the same everywhere
    assert re.fullmatch(
        rf"{local / 'stage1'}: rank 1 on host \S+ cannot read \.claim-[0-9a-f]{{32}}, which "
        r"rank 0 on host \S+ wrote there \(No such file or directory\); rank 1 sees tmpfs at "
        rf"{local}, rank 0 \S+ at /\S*\. The run directory must be on a file system every "
        r"node shares \(NFS, Lustre, GPFS\), not a node-local disk: pass such a --run\.dir",
        seen[0]["local"]), seen[0]["local"]
    assert seen[0]["left"] == seen[1]["left"] == []  # no lock, token or directory left
