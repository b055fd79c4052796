"""bench/gpu.py: the --smoke run on CPU end to end, plus its search, OOM and goal logic."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import Wav2Vec2Config

import sccl.model as model_module
from bench.gpu import SECTIONS, main, peak_for_name
from bench.gpu_data import workers_needed
from bench.gpu_report import judge
from bench.gpu_step import Ctx, Setting, Timing, compile_model, largest_fitting, measure_setting

REPO = Path(__file__).resolve().parents[1]


def _finite_numbers(obj, path="report"):
    """Every int/float in a JSON tree (bool excluded) must be finite."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _finite_numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _finite_numbers(v, f"{path}[{i}]")
    elif isinstance(obj, float):
        assert math.isfinite(obj), f"{path} = {obj}"


@pytest.mark.slow
def test_smoke_report_has_every_section(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("OUT", None)
    proc = subprocess.run([sys.executable, "-m", "bench.gpu", "--smoke", "--out", str(tmp_path),
                           "--device", "cpu"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_report.json").read_text())
    _finite_numbers(report)
    meta, sec = report["meta"], report["sections"]
    assert meta["device_type"] == "cpu" and meta["device_label"].startswith("cpu:")
    assert meta["torch"] == torch.__version__ and meta["transformers"] and meta["smoke"]
    assert meta["peak_tflops"] is None and meta["preset"] == "tiny"
    assert list(sec) == list(SECTIONS)
    for name in ("train", "queue", "eval", "rawboost", "options", "max_batch", "profile"):
        assert sec[name]["status"] == "ok", (name, sec[name])
    assert sec["zero2"]["status"].startswith("skipped: DeepSpeed on CPU")
    big = sec["sharded"]  # the 1B step's code paths, on the tiny preset
    assert big["status"] == "ok" and big["preset"] == "tiny" and big["parameters"] > 0
    assert [r["setting"]["name"] for r in big["results"]] == [
        "plain", "fsdp2", "zero3", "plain + act. ckpt", "fsdp2 + act. ckpt", "zero3 + act. ckpt"]
    for r in big["results"]:
        if r["setting"]["name"].startswith("zero3"):
            assert r["status"].startswith("skipped: DeepSpeed on CPU")
        else:
            assert r["status"] == "ok" and r["samples_per_s"] > 0, r
            assert r["setting"]["checkpointing"] == r["setting"]["name"].endswith("ckpt")
    assert big["results"][1]["speed_vs_plain"] > 0
    assert sec["compile"]["status"] == "ok" or sec["compile"]["status"].startswith(
        ("skipped: compile did not finish", "skipped: time budget")), sec["compile"]  # load
    _check_sections(sec)
    assert [g["status"][:4] for g in report["goals"]] == ["n/a:"] * 5
    assert "## Goals (issue 6)" in (tmp_path / "gpu_report.md").read_text()


def _check_sections(sec: dict) -> None:
    train = sec["train"]["results"]
    assert [(r["setting"]["name"], r["setting"]["crop_s"]) for r in train] == [
        ("best", 0.5), ("naive", 0.5), ("best", 1.0), ("naive", 1.0)]
    for r in train + sec["options"]["results"]:
        assert r["status"] == "ok" and r["samples_per_s"] > 0 and r["step_s"]["n"] == 2
        assert r["mfu"] is None and r["train_flops_per_sample"] > 0
    assert set(sec["train"]["speedup_vs_naive"]) == {"0.5", "1.0"}
    assert all("speed_vs_best" in r for r in sec["options"]["results"])
    queue = sec["queue"]["results"]
    assert [r["queue_size"] for r in queue] == [0, 64, 256]
    assert queue[0]["isolated_overhead_pct"] == 0 and queue[2]["isolated_ms"] > 0
    assert set(sec["eval"]["best"]) == {"0.5", "1.0"}
    for r in sec["rawboost"]["results"]:
        assert r["device_samples_per_s"] > 0 and r["cpu_decode_s_per_sample"] > 0
        assert (r["workers_rawboost_codecs_in_workers"] >= r["workers_rawboost_in_workers"]
                >= r["workers_no_rawboost"] >= 1)
        assert r["cpu_codec_mix_s_per_sample"] > 0
    for r in sec["max_batch"]["results"].values():
        assert r["largest"] == 8 and r["capped"]  # a CPU never runs out of memory here
    assert sec["profile"]["top"] and 0 < sec["profile"]["top"][0]["share"] <= 1
    if sec["compile"]["status"] == "ok":
        row = sec["compile"]["results"][0]
        assert row["status"] == "ok" and row["setting"]["compile"] == "regional"
        assert row["compile_s"] > 0


def test_largest_fitting_doubles_then_bisects():
    fits_up_to = 77
    found = largest_fitting(lambda b: b <= fits_up_to, start=32, cap=4096,
                            deadline=time.monotonic() + 60)
    assert (found["largest"], found["smallest_oom"], found["exact"]) == (76, 78, True)
    assert [p["batch"] for p in found["probes"]][:3] == [32, 64, 128]
    low = largest_fitting(lambda b: b <= 9, start=32, cap=64, deadline=time.monotonic() + 60)
    assert (low["largest"], low["smallest_oom"]) == (8, 10)
    capped = largest_fitting(lambda b: True, start=4, cap=24, deadline=time.monotonic() + 60)
    assert capped["largest"] == 24 and capped["capped"] and capped["smallest_oom"] is None
    late = largest_fitting(lambda b: True, start=4, cap=24, deadline=time.monotonic() - 1)
    assert late["largest"] is None and late["timed_out"] and not late["probes"]
    with pytest.raises(ValueError, match="quantum"):
        largest_fitting(lambda b: True, start=3, cap=8, deadline=0)


def test_measure_setting_halves_the_batch_on_oom():
    ctx = Ctx(torch.device("cpu"), "tiny", time.monotonic() + 60, Timing(1, 2, 2, 0.0, 5.0))
    config = Wav2Vec2Config(**model_module._TINY)
    seen = []

    def builder(ctx, s):
        seen.append(s.batch)
        if s.batch > 2:
            raise torch.OutOfMemoryError("fake")
        return (lambda: 1.0), config

    row = measure_setting(ctx, Setting("best", 0.5, 8), builder=builder)
    assert seen == [8, 4, 2] and row["oom_at"] == [8, 4] and row["setting"]["batch"] == 2
    assert row["samples_per_s"] > 0 and row["mfu"] is None


def test_peak_table():
    assert peak_for_name("NVIDIA H100 80GB HBM3")[0] == 989.0
    assert peak_for_name("NVIDIA H100 PCIe")[0] == 756.0
    assert peak_for_name("NVIDIA H200")[0] == 989.0
    assert peak_for_name("Tesla T4")[0] is None


def test_workers_needed():
    row = {"cpu_decode_s_per_sample": 0.002, "cpu_rawboost_s_per_sample": 0.010,
           "cpu_codec_mix_s_per_sample": 0.0075, "device_samples_per_s": 10_000.0}
    w = workers_needed(1000.0, row)
    assert w["workers_rawboost_in_workers"] == 12 and w["workers_no_rawboost"] == 2
    assert w["workers_rawboost_codecs_in_workers"] == 20  # ceil(1000 x 19.5 ms)
    assert w["train_samples_per_s_with_device_rawboost"] == pytest.approx(1000 / 1.1)
    assert w["workers_rawboost_on_device"] == 2
    assert "workers_note" in workers_needed(None, row)


def test_goals_met_and_missed():
    best = {"setting": {"name": "best", "crop_s": 4.0}, "status": "ok", "mfu": 0.30}
    report = {"meta": {"crops": [4.0, 10.0], "device_type": "cuda",
                       "preset": "xlsr-300m-random"},
              "sections": {"train": {"results": [best], "speedup_vs_naive": {"4.0": 3.5}},
                           "queue": {"results": [{"queue_size": 8192,
                                                  "isolated_overhead_pct": 0.4}]},
                           "eval": {"best": {"4.0": {"utt_per_s": 1500.0}}}}}
    status = [g["status"] for g in judge(report)]
    assert status[0].startswith("missed by 15 %") and status[1] == "met" and status[2] == "met"
    assert status[3].startswith("missed by 500 utt/s (25 % of the goal)")
    assert status[4] == "not measured"


def test_compile_model_modes():
    model = torch.nn.Module()
    assert compile_model(model, "none", "eager") is model
    with pytest.raises(ValueError, match="compile mode"):
        compile_model(model, "everything", "eager")


def test_gpu_sh_parses():
    assert subprocess.run(["bash", "-n", str(REPO / "bench" / "gpu.sh")]).returncode == 0


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as err:
        main(["--box", "nope=3"])
    assert err.value.code == 2 and "--box" in capsys.readouterr().err


def test_zero3_config_is_the_one_stage1_runs():
    from bench.gpu_engines import zero2_config
    from sccl.accel import zero_bucket_sizes

    config = zero2_config(16, "ds_zero3.json", hidden_size=1280)  # xlsr-1b's width
    zero = config["zero_optimization"]
    assert zero["stage"] == 3 and "auto" not in zero.values()
    assert {k: zero[k] for k in zero_bucket_sizes(1280)} == zero_bucket_sizes(1280)
    assert zero["reduce_bucket_size"] == 1280 * 1280
    assert config["train_micro_batch_size_per_gpu"] == 16 and config["bf16"]["enabled"]
