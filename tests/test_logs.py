"""sccl.logs: run-directory paths, git revision, the JSON-lines log, config changes."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

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


def test_config_changes_show_or_skip_keys_one_side_lacks():
    old = {"data": {"seed": 1}, "run": {"dir": "a"}}
    new = {"data": {"seed": 1, "codec": {"p": 0.5}}, "run": {"dir": "b"}}
    assert logs.config_changes(old, new) == ["data.codec.p: <absent> -> 0.5",
                                             "run.dir: 'a' -> 'b'"]
    assert logs.config_changes(old, new, ("run.dir",), both=True) == []


class _Rank0:
    """The parts of an Accelerator that refuse_changes and record_run use (one process)."""

    is_main_process, num_processes, device = True, 1, "cpu"
    distributed_type, mixed_precision = "DistributedType.NO", "no"


def _stage1_cfg(tmp_path, **loss):
    from sccl.train_supcon import LossConfig, TrainConfig

    cfg = TrainConfig(loss=LossConfig(**loss))
    cfg.run.dir = str(tmp_path)
    return cfg


def test_refuse_changes_lists_each_training_key_and_ignores_free_and_new_keys(tmp_path,
                                                                               capsys):
    from sccl.config import ConfigError, save_config
    from sccl.train_supcon import RESUME_FREE

    paths = logs.StagePaths(tmp_path, "stage1")
    save_config(_stage1_cfg(tmp_path), paths.config)
    text = paths.config.read_text()
    # a config.yaml of an older sccl without data.codec: the key is not compared
    text = text[:text.index("  codec:")] + text[text.index("  spoof_per"):]
    paths.config.write_text(text)
    cfg = _stage1_cfg(tmp_path / "moved", temperature=0.1, queue_size=8)
    cfg.run.log_every, cfg.model.gradient_checkpointing = 5, True  # free keys
    with pytest.raises(ConfigError) as refused:
        logs.refuse_changes(_Rank0(), cfg, paths, RESUME_FREE, False, "resuming from step-1")
    lines = str(refused.value).splitlines()
    assert lines[0].startswith(f"{paths.config}: resuming from step-1 with 2 changed")
    assert "--run.allow_config_change true" in lines[0]
    assert lines[1:] == ["  loss.queue_size: 0 -> 8", "  loss.temperature: 0.3 -> 0.1"]
    logs.refuse_changes(_Rank0(), cfg, paths, RESUME_FREE, False, "x", guarded=False)
    logs.refuse_changes(_Rank0(), cfg, paths, RESUME_FREE, True, "x")  # allowed: warned
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 2 and warnings[1].endswith("loss.temperature: 0.3 -> 0.1")
    assert paths.config.read_text() == text  # the check writes nothing
    paths.config.write_text("loss: [\n")  # damaged: nothing to compare with
    with pytest.raises(ConfigError, match="cannot parse.*restore it, or pass --run.allow_conf"):
        logs.refuse_changes(_Rank0(), cfg, paths, RESUME_FREE, False, "x")
    logs.refuse_changes(_Rank0(), cfg, paths, RESUME_FREE, True, "x")
    assert "warning: run.allow_config_change: not compared: " in capsys.readouterr().err


def test_a_resume_under_another_launcher_precision_is_refused(tmp_path):
    # run.mixed_precision null leaves the precision to the Accelerate config: config.yaml
    # holds no change, run_info.json holds the precision the checkpoint was trained in.
    from sccl.config import ConfigError, save_config
    from sccl.train_supcon import RESUME_FREE

    paths = logs.StagePaths(tmp_path, "stage1")
    cfg = _stage1_cfg(tmp_path)
    save_config(cfg, paths.config)
    paths.info.write_text(json.dumps({"mixed_precision": "bf16"}))
    with pytest.raises(ConfigError) as refused:
        logs.refuse_changes(_Rank0(), cfg, paths, RESUME_FREE, False, "resuming from step-1")
    assert str(refused.value).splitlines()[1:] == [
        "  mixed precision (launcher): 'bf16' -> 'no'"]
    paths.info.write_text(json.dumps({"mixed_precision": "no"}))
    logs.refuse_changes(_Rank0(), cfg, paths, RESUME_FREE, False, "resuming from step-1")


def test_history_keeps_every_start_after_the_config_yaml_it_found(tmp_path):
    from sccl.config import save_config

    paths = logs.StagePaths(tmp_path, "stage1")
    save_config(_stage1_cfg(tmp_path), paths.config)  # written before the history existed
    for step, temperature in ((3, 0.1), (5, 0.2)):
        cfg = _stage1_cfg(tmp_path, temperature=temperature)
        logs.record_run(_Rank0(), cfg, paths, paths.checkpoints / f"step-{step}", "Stage 1",
                        step)
    lines = [json.loads(x) for x in paths.history.read_text().splitlines()]
    assert [x["config"]["loss"]["temperature"] for x in lines] == [0.3, 0.1, 0.2]
    assert lines[0]["from"] == "config.yaml"
    assert [x["changes"] for x in lines[1:]] == [["loss.temperature: 0.3 -> 0.1"],
                                                 ["loss.temperature: 0.1 -> 0.2"]]
    assert (lines[2]["global_step"], lines[2]["world_size"]) == (5, 1)
    assert lines[2]["resumed_from"].endswith("step-5")
    assert "temperature: 0.2" in paths.config.read_text()  # what runs now
    assert sorted(p.name for p in paths.dir.iterdir()) == [
        "config.yaml", "config_history.jsonl", "run_info.json"]  # no temporary left
