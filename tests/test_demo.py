"""sccl-demo end to end at test size (tiny corpus, 2 Stage 1 epochs, 2 processes per stage):
one run, then a seeds run that reuses the corpus and shards, then a rerun that must skip every
finished step; plus the demo's packaged config, its plan, --help and the seeds table."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest

from sccl import demo
from sccl.config import parse_config
from tests.eval_fixtures import ROOT, free_port

HEADER = "| run | LA19 | ITW | LA21 | DF21 | AS5 | pooled | mean |"
SEEDS_HEADER = ("| seed | LA19 | ITW | LA21 | DF21 | AS5 | pooled | mean | LA19 min t-DCF "
                "| LA21 min t-DCF | AS5 minDCF |")


def test_packaged_stage1_config_loads():
    from sccl.train_supcon import TrainConfig

    cfg = parse_config(TrainConfig, ["--config", str(demo.stage1_config())])
    assert cfg.model.encoder == "tiny" and cfg.data.batch_size % 2 == 0
    assert cfg.run.dir == "" and cfg.data.train_shards == ""  # given by the demo


def test_packaged_stage1_config_sets_what_the_demo_relies_on():
    """Defaults may move to the study's (XLS-R 300M, its SpecAugment, 10 s crops): the demo's
    file must set its own toy values rather than inherit them."""
    import yaml

    raw = yaml.safe_load(demo.stage1_config().read_text())
    assert raw["model"]["encoder"] == "tiny"
    assert {"mask_time_prob", "mask_feature_prob"} <= set(raw["model"])
    assert {"crop_seconds", "rawboost", "batch_size", "label_mode"} <= set(raw["data"])
    assert raw["optim"]["clip_scope"] == "all" and raw["optim"]["scheduler"] == "cosine"
    assert raw["loss"]["gather_batch"] is True


def test_plan_lists_every_step(tmp_path):
    args = demo.parse_args(["--out", str(tmp_path), "--size", "tiny"])
    names = [name for name, _, _ in demo.plan(args)]
    assert names == ["synth", *[f"build_{s}" for s in demo.SETS], "stage1", "stage2", "evaluate"]
    stage1 = next(cmd for name, cmd, _ in demo.plan(args) if name == "stage1")
    assert "--num_processes" in stage1 and stage1[stage1.index("--num_processes") + 1] == "2"
    assert "--run.seed" not in stage1  # one run keeps the config's seeds


def _value(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def test_seeds_plan_builds_the_data_once_and_seeds_each_run(tmp_path):
    args = demo.parse_args(["--out", str(tmp_path), "--size", "tiny", "--seeds", "3,7"])
    steps = {name: cmd for name, cmd, _ in demo.plan(args)}
    assert list(steps) == ["synth", *[f"build_{s}" for s in demo.SETS],
                           *[f"seed-{s}/{n}" for s in (3, 7)
                             for n in ("stage1", "stage2", "evaluate")]]
    for seed in (3, 7):
        run = str(tmp_path / f"seed-{seed}")
        s1, s2 = steps[f"seed-{seed}/stage1"], steps[f"seed-{seed}/stage2"]
        assert _value(s1, "--run.dir") == _value(s2, "--run.dir") == run
        assert _value(s1, "--run.seed") == _value(s1, "--data.seed") == str(seed)
        assert _value(s2, "--linear.seed") == str(seed)
        assert _value(s1, "--data.train_shards") == str(tmp_path / "shards" / "la19_train")
        assert str(tmp_path / "shards" / "la21") in _value(steps[f"seed-{seed}/evaluate"],
                                                            "--eval.sets")
    ports = [_value(cmd, "--main_process_port") for name, cmd in steps.items() if "/" in name]
    assert len(set(ports)) == len(ports) == 6


@pytest.mark.parametrize(("text", "seeds"), [("0,1,2", [0, 1, 2]), ("3", [0, 1, 2]),
                                             ("5,", [5]), ("42, 1337", [42, 1337])])
def test_parse_seeds(text, seeds):
    assert demo.parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["0", "a,b", "1,1", "-1,2", ","])
def test_bad_seeds_exit_2_with_one_line(text, capsys):
    with pytest.raises(SystemExit) as exc:
        demo.parse_args([f"--seeds={text}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--seeds" in err and repr(text) in err


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        demo.parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for default in ("(default: sccl-demo)", "(default: default)", "(default: 2)",
                    "(default: 29517)", "(default: 0)", "(default: None)", "(default: False)"):
        assert default in out


def _rows() -> dict[int, dict[str, float]]:
    cols = list(demo.COLUMNS)
    return {0: dict(zip(cols, [10.0, 40.0, 30.0, 20.0, 35.0, 25.0, 25.0, 0.25, 0.5, 0.4],
                        strict=True)),
            1: dict(zip(cols, [14.0, 44.0, 36.0, 22.0, 37.0, 29.0, 29.0, 0.35, 0.6, 0.5],
                        strict=True)),
            5: dict(zip(cols, [12.0, 48.0, 33.0, 30.0, 39.0, 24.0, 30.75, 0.3, 0.7, 0.6],
                        strict=True))}


def test_summarise_seeds_mean_sample_std_and_spread():
    s = demo.summarise_seeds(_rows())
    assert s["seeds"] == [0, 1, 5]
    assert s["mean"]["la19"] == pytest.approx(12.0) and s["mean"]["itw"] == pytest.approx(44.0)
    assert s["std"]["la19"] == pytest.approx(2.0)  # sample std: sqrt((4 + 4 + 0) / 2)
    assert s["std"]["pooled"] == pytest.approx(statistics.stdev([25.0, 29.0, 24.0]))
    assert s["spread"]["pooled"] == pytest.approx(5.0) and s["spread"]["df21"] == 10.0
    one = demo.summarise_seeds({3: _rows()[0]})
    assert one["std"]["la19"] is None and one["spread"]["la19"] == 0.0
    with pytest.raises(ValueError):
        demo.summarise_seeds({})


def test_seeds_markdown_rows():
    md = demo.seeds_markdown(demo.summarise_seeds(_rows()))
    lines = md.splitlines()
    assert lines[0] == SEEDS_HEADER
    assert ("| 5 | 12.00 | 48.00 | 33.00 | 30.00 | 39.00 | 24.00 | 30.75 | 0.3000 | 0.7000 "
            "| 0.6000 |") in lines
    assert md.splitlines()[5].endswith("| 0.3000 +- 0.0500 | 0.6000 +- 0.1000 | 0.5000 +- 0.1000 |")
    assert "| mean +- std | 12.00 +- 2.00 | 44.00 +- 4.00 |" in md
    assert lines[6].startswith("| spread (max - min) | 4.00 | 8.00 | 6.00 | 10.00 | 4.00 | 5.00 |")


def test_write_seeds_reads_every_run_and_writes_json_and_md(tmp_path):
    args = demo.parse_args(["--out", str(tmp_path), "--seeds", "0,1,5"])
    for seed, row in _rows().items():
        res = {"sets": {k: {"eer": row[k] / 100} for k in demo.EVAL_SETS},
               "pooled_eer": {"eer": row["pooled"] / 100}, "mean_eer": {"eer": row["mean"] / 100}}
        for k in demo.ASV_SCORES:
            res["sets"][k]["min_tdcf"] = {"pooled": row[f"{k}_tdcf"]}
        res["sets"]["as5"]["min_dcf"] = row["as5_mindcf"]
        (tmp_path / f"seed-{seed}" / "eval").mkdir(parents=True)
        (tmp_path / f"seed-{seed}" / "eval" / "results.json").write_text(json.dumps(res))
    table = demo.write_seeds(args, {0: 60.0, 1: 61.5, 5: 59.0})
    saved = json.loads((tmp_path / "seeds.json").read_text())
    assert saved["mean"]["la21"] == pytest.approx(33.0) and saved["seconds_this_call"]["1"] == 61.5
    assert saved["per_seed"]["5"]["mean"] == pytest.approx(30.75)
    assert table in (tmp_path / "seeds.md").read_text()
    assert not list(tmp_path.glob(".*.tmp"))  # atomic: no temporary file left


def _skipped(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if "already done, skipped" in line]


@pytest.mark.slow
@pytest.mark.dist
@pytest.mark.timeout(900)
def test_demo_end_to_end_tiny(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "sccl.demo", "--out", str(out), "--size", "tiny",
           "--port", str(free_port())]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=580)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert HEADER in proc.stdout
    assert "demo finished" in proc.stdout and "tsne.png" in proc.stdout
    run = out / "run"
    res = json.loads((run / "eval" / "results.json").read_text())
    assert list(res["sets"]) == ["la19", "itw", "la21", "df21", "as5"]
    assert all(0.0 <= s["eer"] <= 1.0 for s in res["sets"].values())
    for name in ("la19", "itw", "la21", "df21"):
        lines = (run / "eval" / "scores" / f"{name}.txt").read_text().splitlines()
        manifest = json.loads((out / "shards" / demo.EVAL_SETS[name] / "manifest.json").read_text())
        assert len(lines) == len({x.split()[0] for x in lines}) == manifest["num_samples"]
    assert (run / "export" / "config.json").is_file()

    # two seeds on the same corpus and shards: the data steps are skipped, not rebuilt
    manifests = {p: p.stat().st_mtime_ns for p in (out / "shards").glob("*/manifest.json")}
    seeds = [*cmd, "--seeds", "0,1"]
    proc = subprocess.run(seeds, cwd=ROOT, capture_output=True, text=True, timeout=580)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert len(_skipped(proc.stdout)) == 1 + len(demo.SETS)
    assert {p: p.stat().st_mtime_ns for p in manifests} == manifests
    assert SEEDS_HEADER in proc.stdout and "| mean +- std |" in proc.stdout
    summary = json.loads((out / "seeds.json").read_text())
    for seed in (0, 1):
        res = json.loads((out / f"seed-{seed}" / "eval" / "results.json").read_text())
        assert summary["per_seed"][str(seed)]["pooled"] == pytest.approx(
            100 * res["pooled_eer"]["eer"])
        assert json.loads((out / f"seed-{seed}" / "stage2" / "meta.json").read_text())
    # a rerun skips every finished step and prints the table again
    proc = subprocess.run(seeds, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert len(_skipped(proc.stdout)) == 1 + len(demo.SETS) + 2 * 3
    assert SEEDS_HEADER in proc.stdout
