"""sccl.runtime pieces that need no process group and no model: run-dir helpers, git
revision, JSON-lines log, stop signal, early stopping / NaN guard, checkpoint lookup."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import sccl
from sccl import runtime as rt
from sccl.config import ConfigError
from sccl.memory import EmbeddingQueue


def test_stage_paths_layout(tmp_path):
    p = rt.StagePaths(tmp_path, "stage1")
    assert p.dir == tmp_path / "stage1"
    assert (p.config.name, p.log.name, p.best.name, p.last.name) == (
        "config.yaml", "log.jsonl", "best", "last")
    assert p.checkpoints == tmp_path / "stage1" / "checkpoints"


def test_git_revision_inside_and_outside_a_repository(tmp_path):
    assert rt.git_revision(tmp_path) == "unknown"
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("x")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["add", "f"], ["commit", "-qm", "m"]):
        subprocess.run(["git", "-C", str(tmp_path), *cmd], check=True, env=env)
    rev = rt.git_revision(tmp_path)
    assert len(rev) == 40 and all(c in "0123456789abcdef" for c in rev)
    (tmp_path / "f").write_text("y")
    assert rt.git_revision(tmp_path) == rev + "-dirty"


def test_jsonl_logger_appends_and_drops_lines_after_the_resumed_step(tmp_path):
    path = tmp_path / "log.jsonl"
    log = rt.JsonlLogger(path, enabled=True)
    for step in (1, 2, 3):
        log.log({"global_step": step, "loss": float("nan") if step == 3 else 1.0})
    rt.JsonlLogger(tmp_path / "other.jsonl", enabled=False).log({"x": 1})
    assert not (tmp_path / "other.jsonl").exists()  # non-main ranks write nothing
    rt.JsonlLogger(path, enabled=True, resume_step=2).log({"global_step": 3, "loss": 0.5})
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["global_step"] for x in lines] == [1, 2, 3] and lines[-1]["loss"] == 0.5
    # A process killed mid-write leaves a partial last line: resuming drops it.
    with open(path, "a") as f:
        f.write('{"global_step": 4, "lo')
    rt.JsonlLogger(path, enabled=True, resume_step=3)
    assert [json.loads(x)["global_step"] for x in path.read_text().splitlines()] == [1, 2, 3]


def test_stop_signal_sets_the_flag_and_restores_handlers():
    before = signal.getsignal(signal.SIGUSR1)
    stop = rt.StopSignal()
    try:
        assert not stop.agreed(torch.device("cpu"))
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.received == signal.SIGUSR1 and stop.agreed(torch.device("cpu"))
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C asks for a stop too: no KeyboardInterrupt
        assert stop.received == signal.SIGINT
    finally:
        stop.close()
    assert signal.getsignal(signal.SIGUSR1) == before


def test_stop_signals_deferred_while_workers_may_fork():
    stop = rt.StopSignal()
    try:
        with rt.stop_signals_deferred():  # blocked in this thread (a forked worker inherits it)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
            assert stop.received is None  # pending, not lost
        assert stop.received == signal.SIGTERM
    finally:
        stop.close()


def test_trainer_state_early_stopping_and_nonfinite_guard():
    state = rt.TrainerState()
    assert state.record_dev_loss(1.0, 1) and not state.record_dev_loss(1.5, 2)
    assert not state.record_dev_loss(float("nan"), 3)
    assert (state.best_dev_loss, state.best_epoch, state.bad_epochs) == (1.0, 1, 2)
    assert state.record_dev_loss(0.5, 4) and state.bad_epochs == 0
    assert rt.TrainerState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    state.record_step(False, 3)
    state.record_step(True, 3)  # a good step resets the run of bad ones
    state.record_step(False, 3)
    state.record_step(False, 3)
    with pytest.raises(rt.NonFiniteLossError, match="3 consecutive steps"):
        state.record_step(False, 3)
    assert state.nonfinite_total == 4


def test_checkpoint_lookup_and_resume_modes(tmp_path):
    root = tmp_path / "checkpoints"
    assert rt.choose_checkpoint("auto", root) is None
    for step in (5, 12):
        (root / f"step-{step:08d}").mkdir(parents=True)
        (root / f"step-{step:08d}" / "trainer_state.json").write_text("{}")
        rt.write_manifest(root / f"step-{step:08d}")
    (root / "step-00000020").mkdir()  # incomplete: no trainer_state.json
    (root / ".tmp-step-00000030").mkdir()
    assert [p.name for p in rt.list_checkpoints(root)] == ["step-00000005", "step-00000012"]
    assert rt.choose_checkpoint("auto", root).name == "step-00000012"
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        rt.choose_checkpoint("never", root)
    assert rt.choose_checkpoint(str(root / "step-00000005"), root).name == "step-00000005"
    with pytest.raises(ConfigError, match="not a checkpoint directory"):
        rt.choose_checkpoint(str(root / "step-00000020"), root)


def test_config_changes_ignores_run_keys():
    old = {"loss": {"temperature": 0.3}, "run": {"dir": "a"}}
    new = {"loss": {"temperature": 0.1}, "run": {"dir": "b"}}
    assert rt.config_changes(old, new, ("run.",)) == ["loss.temperature: 0.3 -> 0.1"]


def test_queue_checksum_tracks_content_and_pointer():
    q = EmbeddingQueue(4, 2)
    empty = rt.queue_checksum(q.state_dict())
    q.enqueue(torch.ones(1, 2), torch.tensor([1]))
    one = rt.queue_checksum(q.state_dict())
    assert empty != one and rt.queue_checksum(None) == "none"
    q2 = EmbeddingQueue(4, 2)
    q2.enqueue(torch.ones(1, 2), torch.tensor([1]))
    assert rt.queue_checksum(q2.state_dict()) == one


def test_build_optimizer_schedules():
    p = torch.nn.Parameter(torch.zeros(2))

    class Optim:
        beta1, beta2, eps, warmup_steps = 0.9, 0.999, 1e-8, 2
        scheduler = "cosine"

    groups = [{"params": [p], "lr": 1.0, "weight_decay": 0.0, "name": "head"}]
    opt, sched = rt.build_optimizer(groups, Optim, total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0]) and lrs[-1] < 0.2
    Optim.scheduler = "none"
    assert rt.build_optimizer(groups, Optim, 6)[1] is None


def test_no_library_module_shadows_the_standard_library():
    # `accelerate launch sccl/train_supcon.py` puts sccl/ first on sys.path, where a module
    # named like a standard one (queue.py once) would replace it for every library.
    names = {p.stem for p in Path(sccl.__file__).parent.glob("*.py")}
    assert not names & set(sys.stdlib_module_names)


def test_train_supcon_runs_as_a_file():
    out = subprocess.run([sys.executable, "sccl/train_supcon.py", "--help"], capture_output=True,
                         text=True, cwd=os.path.dirname(os.path.dirname(__file__)), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--loss.queue_size int (default 0)" in out.stdout
