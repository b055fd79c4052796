"""Damaged checkpoints: a truncated file in the newest checkpoint makes the resume fall back to
the newest intact one, with a warning naming the file, and the run still ends with the
uninterrupted run's weights (so nothing continued from a partial load); with every checkpoint
damaged the stage exits 2 with one line. Checkpoints of older sccl versions (no manifest)
still resume, checked by parsing their files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from sccl import runtime as rt
from tests.test_train_supcon import (
    check_ok,
    command,
    corpus,  # noqa: F401  (session fixture)
    run,
    tiny_config,
    weights,
)

pytestmark = pytest.mark.slow


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


def test_every_checkpoint_damaged_exits_2_with_one_line(runs, tmp_path):
    cfg, _, cut = runs
    run_dir = damaged_copy(cut, tmp_path / "run", (2, 3), "optimizer.bin")
    proc = run(command(cfg, run_dir))
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "no intact checkpoint" in errors[0], proc.stderr[-3000:]
    assert "step-00000002/optimizer.bin" in errors[0] and "Traceback" not in proc.stderr
    assert "Did the model" not in errors[0]  # not the advice for a changed config


def test_checkpoints_without_manifest_still_resume(runs, tmp_path):
    cfg, full, cut = runs
    run_dir = tmp_path / "old"
    shutil.copytree(cut, run_dir)
    for manifest in (run_dir / "stage1" / "checkpoints").glob("*/manifest.json"):
        manifest.unlink()  # as written before manifests existed
    assert rt.checkpoint_damage(run_dir / "stage1" / "checkpoints" / "step-00000003") is None
    damaged = damaged_copy(run_dir, tmp_path / "old-damaged", (3,), "random_states_0.pkl")
    proc = run(command(cfg, damaged))
    check_ok(proc)
    assert "step-00000003/random_states_0.pkl: unreadable" in proc.stderr
    same_weights(full, damaged)
    check_ok(run(command(cfg, run_dir)))
    same_weights(full, run_dir)


def test_manifest_records_sizes_and_hashes(tmp_path):
    ckpt = tmp_path / "step-00000001"
    ckpt.mkdir()
    (ckpt / "a.bin").write_bytes(b"x" * 10)
    (ckpt / "sub").mkdir()
    (ckpt / "sub" / "b.pt").write_bytes(b"y" * 3)
    rt.write_manifest(ckpt)
    assert rt.checkpoint_damage(ckpt) is None
    (ckpt / "sub" / "b.pt").write_bytes(b"z" * 3)  # same size, other content
    assert "sub/b.pt: content differs" in rt.checkpoint_damage(ckpt)
    (ckpt / "a.bin").write_bytes(b"x" * 4)
    assert "a.bin: 4 bytes, 10 when saved" in rt.checkpoint_damage(ckpt)
    (ckpt / "a.bin").unlink()
    assert "a.bin: missing" in rt.checkpoint_damage(ckpt)
    (ckpt / "manifest.json").write_text('{"files": ')
    assert "manifest.json: unreadable" in rt.checkpoint_damage(ckpt)
