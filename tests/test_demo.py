"""sccl-demo end to end at test size (tiny corpus, 2 Stage 1 epochs, 2 processes per stage),
then a rerun that must skip every finished step; plus the demo's packaged config."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sccl import demo
from sccl.config import load_config
from tests.eval_fixtures import ROOT, free_port


def test_packaged_stage1_config_loads():
    from sccl.train_supcon import TrainConfig

    cfg = load_config(TrainConfig, demo.stage1_config())
    assert cfg.model.encoder == "tiny" and cfg.data.batch_size % 2 == 0
    assert cfg.run.dir == "" and cfg.data.train_shards == ""  # given by the demo


def test_plan_lists_every_step(tmp_path):
    args = demo.parse_args(["--out", str(tmp_path), "--size", "tiny"])
    names = [name for name, _, _ in demo.plan(args)]
    assert names == ["synth", *[f"build_{s}" for s in demo.SETS], "stage1", "stage2", "evaluate"]
    stage1 = next(cmd for name, cmd, _ in demo.plan(args) if name == "stage1")
    assert "--num_processes" in stage1 and stage1[stage1.index("--num_processes") + 1] == "2"


@pytest.mark.slow
@pytest.mark.dist
@pytest.mark.timeout(600)
def test_demo_end_to_end_tiny(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "sccl.demo", "--out", str(out), "--size", "tiny",
           "--port", str(free_port())]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=580)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "| run | LA19 | ITW | LA21 | DF21 | pooled | mean |" in proc.stdout
    assert "demo finished" in proc.stdout and "tsne.png" in proc.stdout
    run = out / "run"
    res = json.loads((run / "eval" / "results.json").read_text())
    assert list(res["sets"]) == ["la19", "itw", "la21", "df21"]
    assert all(0.0 <= s["eer"] <= 1.0 for s in res["sets"].values())
    for name in ("la19", "itw", "la21", "df21"):
        lines = (run / "eval" / "scores" / f"{name}.txt").read_text().splitlines()
        manifest = json.loads((out / "shards" / demo.EVAL_SETS[name] / "manifest.json").read_text())
        assert len(lines) == len({x.split()[0] for x in lines}) == manifest["num_samples"]
    assert (run / "export" / "config.json").is_file()
    # a rerun skips every finished step and prints the table again
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    skipped = [line for line in proc.stdout.splitlines() if "already done, skipped" in line]
    assert len(skipped) == 1 + len(demo.SETS) + 3
    assert "| run | LA19 | ITW | LA21 | DF21 | pooled | mean |" in proc.stdout
