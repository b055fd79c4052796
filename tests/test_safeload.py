"""sccl.safeload and the checkpoint checks built on it: a checkpoint's pickles are read as data
only. A real malicious pickle (unpickling it creates a marker directory) is damage whether its
checkpoint has no manifest (older sccl) or a forged one that matches, and it is never
unpickled, not even by Accelerate's own loader when the check is bypassed; an RNG state that
cannot be set is damage too (Accelerate would skip it without a word); what sccl writes
(Accelerate's states, an lr scheduler, the queue, numpy 1.26's names, DCP metadata) reads
back, and a resume from it restores every random stream."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from sccl import checkpoint as ck
from sccl import safeload
from sccl.config import ConfigError
from sccl.memory import EmbeddingQueue
from sccl.model import ModelConfig, SupConModel
from sccl.optim import OptimConfig, build_optimizer


class RunsCode:
    """Unpickling it calls ``os.mkdir(marker)``: what an attacker's pickle would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.fixture(scope="module")
def trainer():
    """(accelerator, model, queue): the tiny model after one AdamW step, with an lr scheduler
    registered for checkpointing (Accelerate saves it as custom_checkpoint_0.pkl and loads it
    with weights_only=False)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = SupConModel(ModelConfig(encoder="tiny", proj_dim=8, head_dropout=0.0))
    optimizer, scheduler = build_optimizer(model.param_groups(1e-3, 1e-3, 0.0),
                                           OptimConfig(scheduler="cosine"), total_steps=10)
    model, optimizer = acc.prepare(model, optimizer)
    acc.register_for_checkpointing(scheduler)
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e-3)
    optimizer.step()
    scheduler.step()
    queue = EmbeddingQueue(4, 8)
    queue.enqueue(torch.randn(3, 8), torch.tensor([0, 1, 0]))
    yield acc, model, queue
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def saved(trainer, tmp_path_factory) -> Path:
    """A checkpoints/ directory holding step-1 and step-2, as save_checkpoint writes them."""
    acc, _, queue = trainer
    root = tmp_path_factory.mktemp("saved") / "checkpoints"
    for step in (1, 2):
        ck.save_checkpoint(acc, root, ck.TrainerState(global_step=step), queue.state_dict(), 2)
    return root


def copy_of(saved: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "checkpoints"))


def test_what_sccl_writes_reads_back_as_data(saved, tmp_path):
    newest = saved / "step-00000002"
    assert sorted(p.name for p in newest.glob("*.*")) == [
        "custom_checkpoint_0.pkl", "manifest.json", "model.safetensors", "optimizer.bin",
        "queue.pt", "random_states_0.pkl", "trainer_state.json"]
    assert ck.checkpoint_damage(newest) is None
    # numpy 1.26 (pyproject allows it) names its array rebuilder numpy.core.multiarray (measured)
    states = safeload.load(newest / "random_states_0.pkl")
    old = tmp_path / "random_states_0.pkl"
    torch.save(states, old, pickle_module=_renaming_pickle(b"numpy._core.", b"numpy.core."))
    assert "numpy.core.multiarray._reconstruct" in (
        torch.serialization.get_unsafe_globals_in_checkpoint(old))
    assert safeload.file_problem(old) is None


def _renaming_pickle(old: bytes, new: bytes) -> types.ModuleType:
    """A pickle module for torch.save that writes the globals ``old...`` as ``new...``
    (protocol 2 names them in text lines), as an older library would have named them."""

    class Pickler(pickle.Pickler):
        def __init__(self, file, protocol):
            self.out, self.buffer = file, io.BytesIO()
            super().__init__(self.buffer, protocol)

        def dump(self, obj):
            super().dump(obj)
            self.out.write(self.buffer.getvalue().replace(b"c" + old, b"c" + new))

    module = types.ModuleType("renaming_pickle")
    module.Pickler = Pickler
    return module


@pytest.mark.parametrize("name", ["random_states_0.pkl", "optimizer.bin",
                                  "custom_checkpoint_0.pkl", "queue.pt"])
@pytest.mark.parametrize("manifest", ["forged", "none"])
def test_a_pickle_that_runs_code_is_damage_and_never_unpickled(saved, tmp_path, capsys,
                                                               name, manifest):
    root, marker = copy_of(saved, tmp_path), tmp_path / "ran"
    newest = root / "step-00000002"
    torch.save({"state": RunsCode(marker)}, newest / name)
    if manifest == "forged":
        ck.write_manifest(newest, 1)  # matches every file: anyone can write one
    else:
        for path in root.glob("*/manifest.json"):
            path.unlink()  # as older sccl wrote them
    problem = ck.checkpoint_damage(newest)
    assert problem.startswith(f"{newest / name}: holds posix.mkdir,"), problem
    assert "could run code" in problem
    assert ck.choose_checkpoint("auto", root) == root / "step-00000001"
    assert f"damaged checkpoint skipped: {newest / name}" in capsys.readouterr().err
    assert not marker.exists()


def test_loading_a_checkpoint_runs_no_code_even_unverified(trainer, saved, tmp_path,
                                                           monkeypatch):
    # The file changed after it was checked: load_checkpoint itself must not run it either,
    # though Accelerate loads a registered object's state with weights_only=False.
    acc, _, queue = trainer
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # must not weaken it either
    root, marker = copy_of(saved, tmp_path), tmp_path / "ran"
    torch.save(RunsCode(marker), root / "step-00000002" / "custom_checkpoint_0.pkl")
    with pytest.raises(ConfigError, match="cannot resume from"):
        ck.load_checkpoint(acc, root / "step-00000002", queue)
    assert not marker.exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # the forcing was scoped
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"
    # an intact checkpoint loads under the forcing, every random stream included
    torch.manual_seed(123)
    np.random.seed(123)
    assert ck.load_checkpoint(acc, root / "step-00000001", queue).global_step == 1
    states = safeload.load(root / "step-00000001" / "random_states_0.pkl")
    assert torch.equal(torch.get_rng_state(), states["torch_manual_seed"])
    assert np.array_equal(np.random.get_state()[1], states["numpy_random_seed"][1])


def _edit(states: dict, **changes) -> dict:
    return {**states, **changes}


@pytest.mark.parametrize(("change", "reason"), [
    (lambda s: {"step": 0}, "not a usable random state (KeyError: 'random_state')"),
    (lambda s: _edit(s, random_state=(3, (1, 2), None)), "not a usable random state (ValueError"),
    (lambda s: _edit(s, torch_manual_seed=torch.zeros(4, dtype=torch.uint8)),
     "not a usable random state (RuntimeError"),
    (lambda s: [s], "not a usable random state (TypeError: a list, not a dict)"),
    (lambda s: b"garbage", "unreadable"),
], ids=["no streams", "bad python state", "bad torch state", "not a dict", "not a pickle"])
def test_a_random_state_that_cannot_be_set_is_damage(saved, tmp_path, change, reason):
    root = copy_of(saved, tmp_path)
    rng = root / "step-00000002" / "random_states_0.pkl"
    content = change(safeload.load(rng))
    if isinstance(content, bytes):
        rng.write_bytes(content)
    else:
        torch.save(content, rng)
    ck.write_manifest(rng.parent, 1)  # its hash matches: only reading it tells
    assert ck.checkpoint_damage(rng.parent).startswith(f"{rng}: {reason}")


@pytest.mark.filterwarnings("ignore::UserWarning")  # DCP without a process group
def test_dcp_metadata_reads_back_and_one_that_runs_code_is_damage(tmp_path):
    import torch.distributed.checkpoint as dcp

    out, marker = tmp_path / "optimizer_0", tmp_path / "ran"
    dcp.save({"exp_avg": torch.zeros(3), "name": "head"}, checkpoint_id=str(out))
    assert safeload.checkpoint_problem(out) is None
    (out / ".metadata").write_bytes(pickle.dumps(RunsCode(marker)))
    assert safeload.checkpoint_problem(out).startswith(f"{out / '.metadata'}: holds posix.mkdir")
    assert not marker.exists()


def test_random_streams_not_restored_after_a_load_are_named(tmp_path):
    import random

    path = tmp_path / "random_states_0.pkl"
    torch.save({"random_state": random.getstate(), "numpy_random_seed": np.random.get_state(),
                "torch_manual_seed": torch.get_rng_state(), "step": 0}, path)
    assert safeload.rng_restored(path) is None  # what Accelerate's load leaves
    random.random(), np.random.rand(), torch.rand(1)  # as if it had skipped the state
    assert safeload.rng_restored(path) == (f"{path}: the Python, torch, numpy random state "
                                           "was not restored")


def test_deepspeed_fp16_loss_scaler_reads_back_as_data(tmp_path):
    # fp16 DeepSpeed runs keep a DynamicLossScaler in their optimizer state (bf16 and fp32
    # ones a LossScaler): a plain record, allowed so that their checkpoints resume.
    loss_scaler = pytest.importorskip("deepspeed.runtime.fp16.loss_scaler")
    scaler = loss_scaler.CreateLossScaler(torch.half, 0, True, {
        "init_scale": 2 ** 16, "scale_window": 1000, "min_scale": 1, "delayed_shift": 2,
        "consecutive_hysteresis": False, "raise_error_at_min_scale": True})
    path = tmp_path / "optimizer.bin"
    torch.save({"loss_scaler": scaler, "overflow": False}, path)
    assert safeload.file_problem(path) is None
    assert safeload.load(path)["loss_scaler"].cur_scale == 2 ** 16
