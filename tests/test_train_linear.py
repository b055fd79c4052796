"""Stage 2: the linear classifier (pure), embedding hand-off checks, and the stage end to end
on a fixture run (random tiny Stage 1, short fixture shards, one process)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from sccl import linear
from sccl.embed import (
    EmbedError,
    EmbedOptions,
    collect,
    gather_strings,
    make_windows,
    read_shard_metadata,
    window_starts,
)
from sccl.fileio import file_sha256
from sccl.linear import LinearConfig, RunMismatchError, load_stage2, train_classifier
from sccl.train_linear import main as stage2_main
from tests.eval_fixtures import STAGE2_ARGS, make_sets, make_stage1_run, make_stage2_run


def _blobs(n_bona: int, n_spoof: int, shift: float, seed: int):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n_bona + n_spoof, 8)).astype(np.float32)
    y = np.r_[np.ones(n_bona), np.zeros(n_spoof)].astype(np.int64)
    z[:n_bona, 0] += shift  # bona fide shifted along one axis
    return z, y


def test_classifier_learns_separable_and_sets_pos_weight():
    train, dev = _blobs(10, 40, 6.0, 0), _blobs(10, 30, 6.0, 1)
    logs = []
    res = train_classifier(train, dev, LinearConfig(lr=1e-2, max_epochs=40, patience=40),
                           logs.append)
    assert res.pos_weight == pytest.approx(4.0)  # 40 spoof / 10 bona fide
    assert res.dev_eer == 0.0
    s = linear.linear_scores(dev[0], res.weight, res.bias)
    assert (s[dev[1] == 1] > res.threshold).all() and (s[dev[1] == 0] <= res.threshold).all()
    assert [r["epoch"] for r in logs] == list(range(1, len(logs) + 1))
    assert res.best_epoch == min(r["epoch"] for r in logs if r["dev_eer"] == res.dev_eer)


def test_classifier_early_stops_and_is_deterministic():
    train, dev = _blobs(8, 8, 0.0, 2), _blobs(8, 8, 0.0, 3)  # nothing to learn
    cfg = LinearConfig(max_epochs=200, patience=3, seed=7)
    a, b = train_classifier(train, dev, cfg), train_classifier(train, dev, cfg)
    assert a.epochs_run < 200 and a.epochs_run - a.best_epoch == 3
    assert torch.equal(a.weight, b.weight) and a.dev_eer == b.dev_eer


def test_classifier_rejects_one_class():
    z, y = _blobs(5, 5, 1.0, 0)
    with pytest.raises(ValueError, match="one class"):
        train_classifier((z, np.ones_like(y)), (z, y), LinearConfig())


def test_windows_cover_every_sample():
    assert window_starts(10, 4, 2) == [0, 2, 4, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]  # last window aligned to the end
    assert window_starts(3, 4, 2) == [0]
    wave = torch.arange(20, dtype=torch.float32).reshape(2, 10)
    w, m, owner = make_windows(wave, [10, 3], window=4, hop=3)
    assert owner.tolist() == [0, 0, 0, 1]
    assert w[2].tolist() == [6, 7, 8, 9] and w[3].tolist() == [10, 11, 12, 0]
    assert m[3].tolist() == [1, 1, 1, 0]


def test_gather_strings_single_process():
    assert gather_strings(["a", "LA_T_1", ""]) == ["a", "LA_T_1", ""]
    with pytest.raises(ValueError):
        gather_strings(["a\nb"])


def test_collect_dedups_and_checks_counts(tmp_path):
    sets = make_sets(tmp_path)
    _, metas = read_shard_metadata(sets["evalB"])
    keys = [m["utt_id"] for m in metas]
    z = torch.arange(len(keys), dtype=torch.float32)[:, None].repeat(1, 3)
    emb = collect(sets["evalB"], keys[::-1] + keys[:2], torch.cat([z.flip(0), z[:2]]))
    assert emb.keys == keys and emb.z[:, 0].tolist() == list(range(len(keys)))
    with pytest.raises(EmbedError, match="not scored"):
        collect(sets["evalB"], keys[1:], z[1:])
    with pytest.raises(EmbedError, match="do not list"):
        collect(sets["evalB"], [*keys, "ghost"], torch.cat([z, z[:1]]))


def test_embed_options_checked():
    with pytest.raises(ValueError, match="crop"):
        EmbedOptions(crop="middle")
    with pytest.raises(ValueError, match="hop"):
        EmbedOptions(crop="windows", seconds=2, hop_seconds=3)


@pytest.fixture(scope="module")
def stage2_run(tmp_path_factory):
    return make_stage2_run(tmp_path_factory.mktemp("stage2"))


def test_stage2_writes_run_directory(stage2_run):
    run, sets = stage2_run
    s2 = run / "stage2"
    for name in ("config.yaml", "classifier.safetensors", "threshold.json", "meta.json",
                 "log.jsonl", "embeddings/train.safetensors", "embeddings/dev.safetensors"):
        assert (s2 / name).is_file(), name
    meta = json.loads((s2 / "meta.json").read_text())
    assert meta["train_counts"] == {"bonafide": 6, "spoof": 10}
    assert meta["pos_weight"] == pytest.approx(10 / 6)
    assert meta["stage1_weights_sha256"] == file_sha256(run / "stage1/best/model.safetensors")
    thr = json.loads((s2 / "threshold.json").read_text())
    assert thr["threshold"] == meta["threshold"] and 0.0 <= thr["dev_eer"] <= 1.0
    log = [json.loads(x) for x in (s2 / "log.jsonl").read_text().splitlines()]
    assert min(r["dev_eer"] for r in log) == thr["dev_eer"]
    assert (run / "export" / "config.json").is_file()
    assert "train_shards: " + str(sets["train"]) in (s2 / "config.yaml").read_text()


def test_stage2_reuses_cache(stage2_run, capsys):
    run, _ = stage2_run
    before = (run / "stage2/embeddings/train.safetensors").stat().st_mtime_ns
    assert stage2_main(["--run.dir", str(run), *STAGE2_ARGS, "--run.export", "false"]) == 0
    assert "cached embeddings" in capsys.readouterr().out
    assert (run / "stage2/embeddings/train.safetensors").stat().st_mtime_ns == before


def test_stage2_mismatch_with_stage1_is_detected(stage2_run, tmp_path):
    import shutil

    run, sets = stage2_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    load_stage2(copy)  # intact: fine
    make_stage1_run(copy, sets["train"], sets["dev"], seed=1)  # new Stage 1 weights
    with pytest.raises(RunMismatchError, match="does not match its Stage 1"):
        load_stage2(copy)


def test_stage2_clear_errors(tmp_path, capsys):
    assert stage2_main(["--run.dir", str(tmp_path / "nothing")]) == 2
    assert "error:" in capsys.readouterr().err
    assert stage2_main([]) == 2
    assert "run.dir is required" in capsys.readouterr().err


def test_stage2_from_another_directory_and_relative_paths(tmp_path, monkeypatch, capsys):
    sets = make_sets(tmp_path / "shards")
    monkeypatch.chdir(tmp_path)
    # A Stage 1 config of older versions held paths relative to where Stage 1 ran: from
    # elsewhere the error names the file the value came from.
    make_stage1_run(tmp_path / "old", "shards/train", "shards/dev")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert stage2_main(["--run.dir", "../old", *STAGE2_ARGS]) == 2
    err = capsys.readouterr().err
    assert f"data.train_shards in {tmp_path / 'old/stage1/config.yaml'}: 'shards/train' is not" \
        in err, err
    assert not (tmp_path / "old" / "stage2").exists()  # nothing created for bad input
    # Stage 1 now saves absolute paths: Stage 2 works from any directory, and saves its own
    # paths absolute too.
    make_stage1_run(tmp_path / "new", sets["train"], sets["dev"])
    assert stage2_main(["--run.dir", "../new", *STAGE2_ARGS, "--run.export", "false"]) == 0
    saved = (tmp_path / "new" / "stage2" / "config.yaml").read_text()
    assert f"dir: {tmp_path / 'new'}\n" in saved


def test_stage2_refuses_a_stage_dir_in_use(stage2_run, capsys):
    from sccl.lock import DirLock

    run, _ = stage2_run
    with DirLock(run / "stage2"):
        assert stage2_main(["--run.dir", str(run), *STAGE2_ARGS]) == 2
    err = capsys.readouterr().err
    assert "Stage 2" in err and "is in use" in err and f"pid {os.getpid()}" in err, err


def test_stage2_stopped_by_sigterm_releases_its_lock(stage2_run, monkeypatch):
    # A requeued job may restart on another node, which could not take over a lock left behind.
    import signal

    import sccl.train_linear as tl

    def stopped(*args, **kwargs):  # the signal arrives once the stage holds its directory
        assert (run / "stage2" / ".lock").is_file()
        os.kill(os.getpid(), signal.SIGTERM)

    run, _ = stage2_run
    monkeypatch.setattr(tl, "record_run", stopped)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stop:
        stage2_main(["--run.dir", str(run), *STAGE2_ARGS])
    assert stop.value.code == 128 + signal.SIGTERM
    assert not (run / "stage2" / ".lock").exists()
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back


def test_stage2_rerun_with_other_settings_is_refused_unless_asked(stage2_run, tmp_path,
                                                                  capsys):
    import shutil

    run, sets = stage2_run
    run = shutil.copytree(run, tmp_path / "run")
    s2 = run / "stage2"
    args = ["--run.dir", str(run), *STAGE2_ARGS, "--run.export", "false"]

    def kept() -> dict[str, bytes]:
        return {n: (s2 / n).read_bytes() for n in ("config.yaml", "config_history.jsonl",
                                                    "classifier.safetensors", "meta.json")}

    before = kept()
    capsys.readouterr()
    assert stage2_main([*args, "--linear.seed", "7", "--embed.batch_size", "2"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert "rerunning a finished Stage 2" in lines[0] and "allow_config_change" in lines[0]
    assert lines[1:] == ["  linear.seed: 42 -> 7"]  # embed.batch_size changes no embedding
    assert kept() == before
    assert stage2_main([*args, "--linear.seed", "7", "--run.allow_config_change", "true"]) == 0
    history = [json.loads(x) for x in (s2 / "config_history.jsonl").read_text().splitlines()]
    assert len(history) == before["config_history.jsonl"].count(b"\n") + 1
    assert "linear.seed: 42 -> 7" in history[-1]["changes"]
    # Stage 1 trained again: the old classifier no longer counts and is replaced freely
    make_stage1_run(run, sets["train"], sets["dev"], seed=1)
    assert stage2_main([*args, "--linear.seed", "8"]) == 0


def test_stage2_on_a_read_only_run_exits_2_with_one_line(stage2_run, capsys):
    from tests.mounts import read_only

    run, _ = stage2_run
    with read_only(run):
        code = stage2_main(["--run.dir", str(run), *STAGE2_ARGS])
    err = capsys.readouterr().err
    errors = [x for x in err.splitlines() if x.startswith("error")]
    assert code == 2 and "Traceback" not in err and len(errors) == 1, err
    assert errors[0].startswith(f"error: {run}") and "read-only file system" in errors[0], err


def test_logit_minus_prior_log_odds_is_the_llr():
    # Classes N(+1, 1) (bona fide) and N(-1, 1): the true LLR is 2x. A logistic fit with
    # pos_weight 3 on 2000 bona fide / 8000 spoof learns 2x + log(3 * 2000 / 8000).
    rng = np.random.default_rng(0)
    x = torch.tensor(np.r_[rng.normal(1, 1, 2000), rng.normal(-1, 1, 8000)], dtype=torch.float64)
    y = torch.tensor(np.r_[np.ones(2000), np.zeros(8000)], dtype=torch.float64)
    theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(3.0, dtype=torch.float64))
    opt = torch.optim.LBFGS([theta], max_iter=200, tolerance_grad=1e-12)

    def closure():
        opt.zero_grad()
        loss = loss_fn(theta[0] * x + theta[1], y)
        loss.backward()
        return loss

    opt.step(closure)
    meta = {"pos_weight": 3.0, "train_counts": {"bonafide": 2000, "spoof": 8000}}
    assert linear.prior_log_odds(meta) == pytest.approx(np.log(0.75))
    slope, intercept = theta.detach().numpy()
    assert slope == pytest.approx(2.0, abs=0.1)
    assert intercept - linear.prior_log_odds(meta) == pytest.approx(0.0, abs=0.05)


def test_calibration_repairs_shifted_and_scaled_scores():
    from sccl.dcf import act_dcf, cllr

    rng = np.random.default_rng(1)

    def llrs(n_bona, n_spoof):  # true LLRs of N(+1, 1) vs N(-1, 1)
        return 2 * rng.normal(1, 1, n_bona), 2 * rng.normal(-1, 1, n_spoof)

    (dev_b, dev_s), (ev_b, ev_s) = llrs(300, 900), llrs(400, 1200)
    distort = lambda v: 5.0 * v + 3.0  # noqa: E731  (overconfident and shifted)
    a, b = linear.fit_calibration(distort(dev_b), distort(dev_s))
    assert a == pytest.approx(0.2, rel=0.15) and b == pytest.approx(-0.6, abs=0.2)
    before = cllr(distort(ev_b), distort(ev_s))
    after = cllr(a * distort(ev_b) + b, a * distort(ev_s) + b)
    assert after < 0.6 * before and after == pytest.approx(cllr(ev_b, ev_s), abs=0.03)
    # calibrated scores decide like the true LLRs at the ASVspoof 5 operating point
    assert act_dcf(a * distort(ev_b) + b, a * distort(ev_s) + b) == pytest.approx(
        act_dcf(ev_b, ev_s), abs=0.05)


def test_stage2_window_under_one_frame_is_refused_before_anything_is_recorded(stage2_run,
                                                                              tmp_path, capsys):
    import shutil

    run = shutil.copytree(stage2_run[0], tmp_path / "run")
    shutil.rmtree(run / "stage2")  # an unfinished Stage 2: nothing guards its config
    capsys.readouterr()
    assert stage2_main(["--run.dir", str(run), *STAGE2_ARGS, "--embed.seconds", "0.001"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: embed.seconds 0.001 is under one encoder frame's receptive "
                          "field") and err.count("\n") == 1, err
    assert not (run / "stage2").exists()  # no config.yaml of settings that never ran
