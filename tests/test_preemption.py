"""Preemption as a cluster delivers it: SIGTERM to the launcher, or to every process of the job
at once (launcher, ranks and their loader workers, as Slurm's scancel / requeue / node drain
do), with 2 loader workers per rank; and Ctrl-C (SIGINT to the foreground process group).
Each interrupted run must checkpoint, and the resumed run must end with the uninterrupted
run's weights. Runs reuse the helpers of tests/test_train_supcon.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.test_train_supcon import (
    ENV,
    REPO,
    check_ok,
    command,
    corpus,  # noqa: F401  (session fixture)
    log_lines,
    run,
    tiny_config,
    weights,
)

pytestmark = pytest.mark.slow


def run_and_signal(cmd: list[str], run_dir: Path, after_step: int, sig: int, group: bool):
    """Start ``cmd`` in its own process group; once ``after_step`` is logged, send ``sig`` to
    the launcher alone or (``group``) to every process of the group at once."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    log = run_dir / "stage1" / "log.jsonl"
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        steps = [json.loads(x).get("global_step", 0) for x in
                 (log.read_text().splitlines() if log.exists() else []) if x.endswith("}")]
        if steps and max(steps) >= after_step:
            (os.killpg if group else os.kill)(proc.pid, sig)
            break
        time.sleep(0.05)
    out, err = proc.communicate(timeout=240)
    return proc.returncode, out, err


def assert_same_weights(a_dir: Path, b_dir: Path) -> None:
    a, b = weights(a_dir), weights(b_dir)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def two_proc_setup(corpus, tmp_path_factory):  # noqa: F811
    """Config (2 loader workers per rank, a queue, 3 epochs) and its uninterrupted run."""
    tmp = tmp_path_factory.mktemp("preempt")
    cfg = tiny_config(tmp, corpus, data={"num_workers": 2},
                      optim={"epochs": 3, "patience": 0},
                      loss={"queue_size": 12, "gather_batch": True})
    full = tmp / "full"
    check_ok(run(command(cfg, full, launch="cpu_2proc.yaml")))
    return tmp, cfg, full


@pytest.mark.dist
@pytest.mark.parametrize(("group", "after_step"), [(True, 2), (False, 3)],
                         ids=["every-process", "launcher-only"])
def test_sigterm_with_loader_workers_checkpoints_and_resumes_exactly(two_proc_setup, group,
                                                                     after_step):
    tmp, cfg, full = two_proc_setup
    cut = tmp / f"cut-{group}"
    cmd = command(cfg, cut, launch="cpu_2proc.yaml")
    code, out, err = run_and_signal(cmd, cut, after_step, signal.SIGTERM, group)
    # The ranks stop cleanly inside the launcher's grace period; the launcher itself reports
    # that it was signalled (torchrun re-raises SignalException: exit 1), see docs/reliability.md.
    assert "stopped by a signal" in out, f"exit {code}\n{out[-2000:]}\n{err[-4000:]}"
    assert "DataLoader worker" not in err and "forcefully" not in err, err[-4000:]
    ckpts = sorted(p.name for p in (cut / "stage1" / "checkpoints").iterdir())
    assert ckpts and ckpts[-1] < "step-00000006", ckpts  # it did stop early, with a checkpoint
    resumed = run(cmd)
    check_ok(resumed)
    assert "resuming from" in resumed.stdout
    assert [s["global_step"] for s in log_lines(cut)[0]] == list(range(1, 7))
    assert_same_weights(full, cut)


def test_ctrl_c_checkpoints_and_exits_0_on_one_process(corpus, tmp_path):  # noqa: F811
    cfg = tiny_config(tmp_path, corpus, data={"num_workers": 2, "batch_size": 4},
                      optim={"epochs": 3, "patience": 0})
    full, cut = tmp_path / "full", tmp_path / "cut"
    check_ok(run(command(cfg, full)))
    code, out, err = run_and_signal(command(cfg, cut), cut, 2, signal.SIGINT, group=True)
    assert code == 0 and "stopped by a signal" in out, f"exit {code}\n{out[-2000:]}\n{err[-3000:]}"
    assert "KeyboardInterrupt" not in err and "DataLoader worker" not in err, err[-3000:]
    check_ok(run(command(cfg, cut)))
    assert_same_weights(full, cut)
