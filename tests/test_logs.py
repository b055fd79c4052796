"""sccl.logs: run-directory paths, git revision, the JSON-lines log, config changes."""

from __future__ import annotations

import json
import os
import subprocess

from sccl import logs


def test_stage_paths_layout(tmp_path):
    p = logs.StagePaths(tmp_path, "stage1")
    assert p.dir == tmp_path / "stage1"
    assert (p.config.name, p.log.name, p.best.name, p.last.name) == (
        "config.yaml", "log.jsonl", "best", "last")
    assert p.checkpoints == tmp_path / "stage1" / "checkpoints"


def test_git_revision_inside_and_outside_a_repository(tmp_path):
    assert logs.git_revision(tmp_path) == "unknown"
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("x")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["add", "f"], ["commit", "-qm", "m"]):
        subprocess.run(["git", "-C", str(tmp_path), *cmd], check=True, env=env)
    rev = logs.git_revision(tmp_path)
    assert len(rev) == 40 and all(c in "0123456789abcdef" for c in rev)
    (tmp_path / "f").write_text("y")
    assert logs.git_revision(tmp_path) == rev + "-dirty"


def test_jsonl_logger_appends_and_drops_lines_after_the_resumed_step(tmp_path):
    path = tmp_path / "log.jsonl"
    log = logs.JsonlLogger(path, enabled=True)
    for step in (1, 2, 3):
        log.log({"global_step": step, "loss": float("nan") if step == 3 else 1.0})
    logs.JsonlLogger(tmp_path / "other.jsonl", enabled=False).log({"x": 1})
    assert not (tmp_path / "other.jsonl").exists()  # non-main ranks write nothing
    logs.JsonlLogger(path, enabled=True, resume_step=2).log({"global_step": 3, "loss": 0.5})
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["global_step"] for x in lines] == [1, 2, 3] and lines[-1]["loss"] == 0.5
    # A process killed mid-write leaves a partial last line: resuming drops it.
    with open(path, "a") as f:
        f.write('{"global_step": 4, "lo')
    logs.JsonlLogger(path, enabled=True, resume_step=3)
    assert [json.loads(x)["global_step"] for x in path.read_text().splitlines()] == [1, 2, 3]


def test_config_changes_ignores_run_keys():
    old = {"loss": {"temperature": 0.3}, "run": {"dir": "a"}}
    new = {"loss": {"temperature": 0.1}, "run": {"dir": "b"}}
    assert logs.config_changes(old, new, ("run.",)) == ["loss.temperature: 0.3 -> 0.1"]
