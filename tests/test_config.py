"""sccl.config: typed nested configs from YAML/JSON files plus command-line overrides."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from sccl.config import (
    ConfigError,
    RunConfig,
    config_help,
    field_docs,
    format_config,
    leaf_keys,
    parse_config,
    report_input_error,
    report_storage_error,
    resolve_key,
    save_config,
    to_dict,
)


@dataclass
class Inner:
    """A test section."""

    lr: float = 1e-3
    """Learning rate."""
    steps: int = 10
    """Optimizer steps."""
    name: str = "x"  # a comment is not documentation
    mode: Literal["cosine", "angular"] = "cosine"
    """How similarities are
    computed."""
    flag: bool = False
    maybe: int | None = None
    tags: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    clip: float | None = None

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")


@dataclass
class Other:
    seed: int = 1
    path: str = ""


@dataclass
class Top:
    inner: Inner = field(default_factory=Inner)
    other: Other = field(default_factory=Other)
    run: RunConfig = field(default_factory=RunConfig)


def write(tmp_path, text: str, name: str = "c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_without_arguments():
    cfg = parse_config(Top, [])
    assert cfg == Top()
    assert cfg.inner.lr == 1e-3 and cfg.run.resume == "auto"


def test_file_then_overrides_in_all_spellings(tmp_path):
    path = write(tmp_path, "inner:\n  lr: 1e-4\n  steps: 5\nother:\n  path: a\n")
    cfg = parse_config(Top, ["--config", path, "--inner.steps", "7", "--name=abc",
                             "--inner.flag", "--other.seed=-3", "--tags", "a,b",
                             "--maybe", "none", "--run.max-steps", "4"])
    assert cfg.inner.lr == pytest.approx(1e-4)  # YAML 1.1 reads 1e-4 as a string
    assert cfg.inner.steps == 7 and cfg.inner.name == "abc" and cfg.inner.flag is True
    assert cfg.other.seed == -3 and cfg.other.path == "a" and cfg.inner.tags == ["a", "b"]
    assert cfg.inner.maybe is None and cfg.run.max_steps == 4
    cfg = parse_config(Top, ["--inner.flag", "false", "--maybe", "3", "--mode", "angular"])
    assert cfg.inner.flag is False and cfg.inner.maybe == 3 and cfg.inner.mode == "angular"


def test_json_file(tmp_path):
    path = write(tmp_path, json.dumps({"inner": {"steps": 3, "flag": True}}), "c.json")
    assert parse_config(Top, ["--config", path]).inner.steps == 3


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--inner.lrr", "1"], "did you mean '--inner.lr'"),
        (["--temperatur", "1"], "unknown option --temperatur"),
        (["--inner", "1"], "is a section"),
        (["--seed", "1"], "ambiguous"),  # other.seed and run.seed
        (["--inner.flag", "yes"], "--inner.flag: expected a boolean"),
        (["--inner.flag", "1"], "expected a boolean"),
        (["--inner.steps", "1.5"], "--inner.steps: expected an integer"),
        (["--inner.lr", "fast"], "--inner.lr: expected a number"),
        (["--inner.mode", "dot"], "must be one of ['cosine', 'angular']"),
        (["--inner.steps"], "needs a value"),
        (["--inner.steps", "-2"], "steps must be >= 0"),
        (["stray"], "unexpected argument 'stray'"),
        (["--config"], "--config needs a file path"),
        (["--config", "/nonexistent/c.yaml"], "does not exist"),
    ],
)
def test_command_line_errors_name_the_key(argv, needle):
    with pytest.raises(ConfigError, match=None) as err:
        parse_config(Top, argv)
    assert needle in str(err.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("inner:\n  lr: 1\n  stpes: 3\n", "c.yaml:3: inner.stpes: unknown key; did you mean 'inner.steps'"),
        ("inner:\n  flag: 'true'\n", "c.yaml:2: inner.flag: expected a boolean"),
        ("inner:\n  steps: 2.0\n", "inner.steps: expected an integer"),
        ("inner:\n  name: 2019\n", "expected a string"),
        ("inner:\n  mode: dot\n", "must be one of"),
        ("inner: 3\n", "inner: expected a mapping"),
        ("bogus: {}\n", "bogus: unknown key"),
        ("inner:\n  tags: a\n", "expected a list"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("inner: [unclosed\n", "cannot parse"),
        ("run:\n  log_every: 0\n", "run: log_every"),
    ],
)
def test_file_errors_name_file_line_and_key(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        parse_config(Top, ["--config", path])
    assert needle in str(err.value)


def test_key_written_twice_is_refused_with_both_lines(tmp_path):
    # A repeated section: YAML would keep only the second (the run silently used it).
    text = "inner:\n  mode: angular\n  lr: 0.07\nother:\n  seed: 2\ninner:\n  lr: 0.3\n"
    with pytest.raises(ConfigError) as err:
        parse_config(Top, ["--config", write(tmp_path, text)])
    assert "c.yaml:6: inner: written twice (lines 1 and 6)" in str(err.value)
    nested = "inner:\n  lr: 0.1\n  steps: 2\n  lr: 0.2\n"
    with pytest.raises(ConfigError, match=r"c.yaml:4: inner.lr: written twice \(lines 2 and 4\)"):
        parse_config(Top, ["--config", write(tmp_path, nested)])
    as_json = '{"inner": {"steps": 1}, "inner": {"steps": 2}}'
    with pytest.raises(ConfigError, match="key 'inner' written twice"):
        parse_config(Top, ["--config", write(tmp_path, as_json, "c.json")])


@pytest.mark.parametrize("text", ["nan", ".nan", ".inf", "-.inf", "inf", "-inf", "'NaN'"])
def test_non_finite_floats_refused_in_files(tmp_path, text):
    for yaml_text in (f"inner:\n  lr: {text}\n", f"inner:\n  clip: {text}\n",
                      f"inner:\n  weights: [1.0, {text}]\n"):
        with pytest.raises(ConfigError, match=r"c.yaml:2: inner\.\w+(\[1\])?: expected a finite"):
            parse_config(Top, ["--config", write(tmp_path, yaml_text)])


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "Infinity"])
def test_non_finite_floats_refused_on_the_command_line(text):
    for key in ("--inner.lr", "--clip", "--weights"):
        with pytest.raises(ConfigError, match=f"{key}(\\[0\\])?: expected a finite number"):
            parse_config(Top, [key, text])
    assert parse_config(Top, ["--clip", "1e3", "--weights", "0.5,2"]).inner.weights == [0.5, 2.0]


def test_override_replaces_a_bad_file_value_and_unknown_extension(tmp_path):
    path = write(tmp_path, "inner:\n  steps: lots\n")
    assert parse_config(Top, ["--config", path, "--inner.steps", "2"]).inner.steps == 2
    with pytest.raises(ConfigError, match="use a .yaml"):
        parse_config(Top, ["--config", write(tmp_path, "", "c.toml")])


def test_save_load_round_trip(tmp_path):
    cfg = parse_config(Top, ["--inner.lr", "0.5", "--tags", "p,q", "--maybe", "4"])
    save_config(cfg, tmp_path / "out.yaml", header="git abc\nline two")
    text = (tmp_path / "out.yaml").read_text()
    assert text.startswith("# git abc\n# line two\n")
    assert parse_config(Top, ["--config", str(tmp_path / "out.yaml")]) == cfg
    save_config(cfg, tmp_path / "out.json")
    assert parse_config(Top, ["--config", str(tmp_path / "out.json")]) == cfg
    assert yaml.safe_load(format_config(cfg)) == to_dict(cfg)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_help_lists_keys_types_defaults_and_docs(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_config(Top, ["--help"], prog="prog")
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage: prog" in out
    assert "--inner.lr float (default 0.001)" in out and "Learning rate." in out
    assert "--inner.mode {cosine,angular}" in out and "How similarities are computed." in out
    assert "--run.mixed_precision {no,fp16,bf16} | null (default None)" in out
    assert field_docs(Inner)["steps"] == "Optimizer steps."
    assert "name" not in field_docs(Inner)
    assert "--run.dir str" in config_help(Top)


def test_every_field_of_every_stage_config_has_a_docstring():
    # --help shows each key's docstring; a key without one would be listed bare
    from dataclasses import fields
    from typing import get_type_hints

    from sccl.evaluate import EvalConfig
    from sccl.train_linear import Stage2Config
    from sccl.train_supcon import TrainConfig

    for stage in (TrainConfig, Stage2Config, EvalConfig):
        for section in get_type_hints(stage).values():
            docs = field_docs(section)
            missing = [f.name for f in fields(section) if not docs.get(f.name)]
            assert missing == [], f"{stage.__name__}.{section.__name__}: {missing}"


def test_resolve_key_prefers_exact_and_unique_names():
    assert resolve_key(Top, "inner.lr") == "inner.lr"
    assert resolve_key(Top, "lr") == "inner.lr"
    assert resolve_key(Top, "keep-checkpoints") == "run.keep_checkpoints"


def test_shipped_stage1_configs_load():
    from pathlib import Path

    from sccl.train_supcon import TrainConfig

    shipped = sorted((Path(__file__).resolve().parents[1] / "sccl" / "configs").glob("*stage1*.yaml"))
    if not shipped:
        pytest.skip("no Stage 1 config shipped in sccl/configs")
    for path in shipped:
        cfg = parse_config(TrainConfig, ["--config", str(path), "--run.dir", "x"])
        assert cfg.run.dir == "x" and cfg.model.encoder


def test_keys_a_rerun_may_change_are_keys_of_their_stage():
    # a renamed key left in these lists would silently become one a rerun may not change
    from sccl.train_linear import STAGE2_FREE, Stage2Config
    from sccl.train_supcon import RESUME_FREE, TrainConfig

    for free, cls in ((RESUME_FREE, TrainConfig), (STAGE2_FREE, Stage2Config)):
        assert set(free) <= set(leaf_keys(cls)), set(free) - set(leaf_keys(cls))


@pytest.mark.parametrize(("rank", "prefix"), [(None, "error: "), ("0", "error: "),
                                               ("3", "error (rank 3): ")])
def test_input_error_line_names_the_rank_that_prints_it(monkeypatch, capsys, rank, prefix):
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    assert report_input_error(ConfigError("c.yaml:3: data.batch_size: bad"), code=3) == 3
    assert capsys.readouterr().err == prefix + "c.yaml:3: data.batch_size: bad\n"


@pytest.mark.dist
def test_input_error_reaches_the_log_whichever_rank_exits_first():
    # rank 1 exits first, torchrun SIGTERMs rank 0 before it reports, rank 2 never meets the
    # error: with rank 0 alone printing, the log held no error line at all
    from tests.eval_fixtures import ROOT, accelerate_launch

    proc = accelerate_launch(ROOT / "tests" / "dist_scripts" / "dist_error_check.py", [],
                             procs=3, timeout=120)
    assert proc.returncode != 0
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error")]
    assert "error (rank 1): bad.yaml:3: loss.temperature: expected a number, got 'x' (str)" \
        in lines, proc.stderr[-3000:]
    assert len(lines) == len(set(lines)) <= 2  # once per rank that met it


def test_storage_failures_become_one_line_and_other_errors_raise(monkeypatch, capsys, tmp_path):
    import errno

    monkeypatch.delenv("RANK", raising=False)
    read_only = OSError(errno.EROFS, "Read-only file system", "/runs/x/stage1")
    assert report_storage_error(read_only, "/runs/x") == 2
    assert capsys.readouterr().err == "error: /runs/x/stage1: read-only file system\n"
    assert report_storage_error(OSError(errno.ENOSPC, "No space left"), "/runs/x") == 2
    assert capsys.readouterr().err == "error: /runs/x: no space left on the device\n"
    with pytest.raises(OSError, match="I/O"):  # not the storage's fault as far as we know
        report_storage_error(OSError(errno.EIO, "I/O error", "/runs/x"), "/runs/x")
    with pytest.raises(RuntimeError, match="bug"):  # with free space left: a bug
        report_storage_error(RuntimeError("a bug"), tmp_path)
