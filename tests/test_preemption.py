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


def job_processes(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc). torchrun starts every rank in a session
    of its own, so a process group does not hold the job: Slurm signals every process of the
    job step (its cgroup), which this list stands for."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, ppid in parents.items() if ppid in frontier]
        found += frontier
    return found


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def run_and_signal(cmd: list[str], run_dir: Path, after_step: int, sig: int, target: str):
    """Start ``cmd`` in a session of its own; once ``after_step`` is logged, send ``sig`` to
    the "launcher" alone, to every process of the "job" at once (launcher, ranks and loader
    workers), or to the process "group" (what a terminal's Ctrl-C reaches)."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    log = run_dir / "stage1" / "log.jsonl"
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        steps = [json.loads(x).get("global_step", 0) for x in
                 (log.read_text().splitlines() if log.exists() else []) if x.endswith("}")]
        if steps and max(steps) >= after_step:
            if target == "group":
                os.killpg(proc.pid, sig)
                break
            pids = job_processes(proc.pid) if target == "job" else [proc.pid]
            assert target != "job" or len(pids) >= 3, pids  # the launcher and ranks at least
            signal_all(pids, sig)
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
@pytest.mark.parametrize(("target", "after_step"), [("job", 2), ("launcher", 3)],
                         ids=["every-process", "launcher-only"])
def test_sigterm_with_loader_workers_checkpoints_and_resumes_exactly(two_proc_setup, target,
                                                                     after_step):
    tmp, cfg, full = two_proc_setup
    cut = tmp / f"cut-{target}"
    cmd = command(cfg, cut, launch="cpu_2proc.yaml")
    code, out, err = run_and_signal(cmd, cut, after_step, signal.SIGTERM, target)
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
    code, out, err = run_and_signal(command(cfg, cut), cut, 2, signal.SIGINT, "group")
    assert code == 0 and "stopped by a signal" in out, f"exit {code}\n{out[-2000:]}\n{err[-3000:]}"
    assert "KeyboardInterrupt" not in err and "DataLoader worker" not in err, err[-3000:]
    check_ok(run(command(cfg, cut)))
    assert_same_weights(full, cut)
