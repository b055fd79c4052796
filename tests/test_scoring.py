"""sccl-score and the exported detector: inputs of any format / rate / channel count,
directories and shard dirs, windows for long files, identical scores after export, errors,
every check of a loaded export (hash, keys, shapes, config, finite values), unreadable
inputs among good ones, and the Python calls score_array / score_file."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file

from sccl.embed import EmbedOptions
from sccl.scoring import ScoringError, SpoofDetector, load_detector
from sccl.scoring import main as score_main
from tests.eval_fixtures import make_stage2_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_stage2_run(tmp_path_factory.mktemp("scoring"))


def _signal(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * 310 * t) + 0.05 * rng.standard_normal(t.size)
    return x.astype(np.float32)


def _read_tsv(path, llr=False) -> list[tuple]:
    lines = path.read_text().splitlines()
    assert lines[0] == "path\tscore\tdecision\tllr"
    rows = [line.split("\t") for line in lines[1:]]
    return [(p, float(s), d) + ((float(x),) if llr else ()) for p, s, d, x in rows]


def test_cli_scores_files_dirs_and_shards(run, tmp_path):
    run_dir, sets = run
    x = _signal(0.8, 16000)
    audio = tmp_path / "audio"
    (audio / "sub").mkdir(parents=True)
    sf.write(audio / "mono.wav", x, 16000)
    sf.write(audio / "sub" / "mono.flac", x, 16000)
    sf.write(audio / "stereo.wav", np.stack([x, x], axis=1), 16000)
    sf.write(audio / "rate44k.wav", _signal(0.8, 44100), 44100, subtype="FLOAT")
    (audio / "notes.txt").write_text("not audio: skipped in directories")
    out = tmp_path / "scores.tsv"
    assert score_main(["--run", str(run_dir), str(audio), str(sets["evalC"]), "--out",
                       str(out)]) == 0
    rows = _read_tsv(out)
    names = [r[0] for r in rows]
    assert names[:4] == [str(audio / n) for n in ("mono.wav", "rate44k.wav", "stereo.wav",
                                                   "sub/mono.flac")]
    assert len(rows) == 4 + 5 and all(".tar/" in n for n in names[4:])  # evalC: 5 trials
    by_name = {n: s for n, s, _ in rows}
    # downmixed identical channels = the mono file; FLAC decodes to the same 16-bit samples
    assert by_name[str(audio / "stereo.wav")] == by_name[str(audio / "mono.wav")]
    thr = load_detector(run_dir).threshold
    for _, score, decision in rows:
        assert np.isfinite(score) and decision == ("bonafide" if score > thr else "spoof")


def test_long_file_is_mean_of_windows(run):
    det = load_detector(run[0])
    x = torch.from_numpy(_signal(3.3, 16000, seed=1))[None]  # (1, T)
    mask = torch.ones_like(x, dtype=torch.long)
    windowed = det.score(x, mask, EmbedOptions(crop="windows", seconds=1.0, hop_seconds=0.5))
    starts = [0, 8000, 16000, 24000, 32000, 52800 - 16000]  # the last aligned to the end
    parts = [det.score(x[:, int(s): int(s) + 16000], mask[:, :16000],
                       EmbedOptions(crop="full")) for s in starts]
    assert windowed[0] == pytest.approx(float(np.mean(parts)), abs=1e-5)
    first = det.score(x, mask, EmbedOptions(crop="first", seconds=1.0))
    assert first[0] == pytest.approx(parts[0][0], abs=1e-5) and first[0] != windowed[0]


def test_export_round_trip_gives_identical_scores(run, tmp_path):
    run_dir, _ = run
    det = SpoofDetector.from_run(run_dir)
    exported = SpoofDetector.from_pretrained(det.save_pretrained(tmp_path / "export"))
    assert (tmp_path / "export" / "config.json").is_file()
    assert exported.threshold == det.threshold and exported.seconds == det.seconds
    x = torch.randn(3, 24000) * 0.1
    mask = torch.ones_like(x, dtype=torch.long)
    mask[1, 15000:] = 0
    for crop in ("first", "windows"):
        opts = EmbedOptions(crop=crop, seconds=1.0)
        assert np.array_equal(det.score(x, mask, opts), exported.score(x, mask, opts))
    # the CLI reads either a run directory or an export directory, with the same result
    wav = tmp_path / "a.wav"
    sf.write(wav, _signal(1.7, 22050), 22050)
    outs = []
    for src in (run_dir, run_dir / "export", tmp_path / "export"):
        out = tmp_path / f"{len(outs)}.tsv"
        assert score_main(["--run", str(src), str(wav), "--out", str(out)]) == 0
        outs.append(out.read_text())
    assert outs[0] == outs[1] == outs[2]


def test_cli_errors(run, tmp_path, capsys):
    run_dir, _ = run
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....not really audio")
    for args, message in (([str(tmp_path / "missing.wav")], "no such file"),
                          ([str(bad)], "bad.wav")):
        assert score_main(["--run", str(run_dir), *args]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err
    assert score_main(["--run", str(tmp_path), str(bad)]) == 2  # not a run
    assert "stage2" in capsys.readouterr().err


def test_unreadable_inputs_are_reported_and_the_rest_scored(run, tmp_path, capsys):
    run_dir, _ = run
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "a_good.wav", _signal(0.5, 16000), 16000)
    (audio / "b_bad.wav").write_bytes(b"RIFF....not really audio")
    sf.write(audio / "c_good.flac", _signal(0.6, 16000, seed=2), 16000)
    (audio / "d_empty.wav").write_bytes(b"")
    out = tmp_path / "scores.tsv"
    missing = tmp_path / "nowhere.wav"
    assert score_main(["--run", str(run_dir), str(audio), str(missing), "--out", str(out)]) == 1
    names = [r[0] for r in _read_tsv(out)]
    assert names == [str(audio / "a_good.wav"), str(audio / "c_good.flac")]
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4 and all(x.startswith("error: ") for x in lines)
    for name, line in zip(("b_bad.wav", "d_empty.wav", "nowhere.wav"), lines, strict=False):
        assert name in line and "Traceback" not in line and " object at 0x" not in line
    assert "3 input(s) could not be scored" in lines[-1] and "2 scored" in lines[-1]
    # --strict: stops at the first failure, writes nothing
    strict_out = tmp_path / "strict.tsv"
    assert score_main(["--run", str(run_dir), str(audio), "--strict", "--out",
                       str(strict_out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "b_bad.wav" in err and "--strict" in err
    assert not strict_out.exists()


# ------------------------------------------------------------------- export validation


@pytest.fixture()
def export(run, tmp_path):
    """A private copy of the run's export directory, free to damage."""
    return shutil.copytree(run[0] / "export", tmp_path / "export")


def _resign(export_dir, state=None, **config):
    """Rewrite the export with ``state`` / config changes and a matching hash, so the checks
    after the hash are the ones tested."""
    weights, cfg_path = export_dir / "model.safetensors", export_dir / "config.json"
    if state is not None:
        save_file(state, weights, metadata={"format": "pt"})
    cfg = json.loads(cfg_path.read_text())
    cfg.update(config)
    cfg["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    cfg_path.write_text(json.dumps(cfg))


def _load_error(export_dir) -> str:
    with pytest.raises(ScoringError) as info:
        SpoofDetector.from_pretrained(export_dir)
    message = str(info.value)
    assert "\n" not in message and " object at 0x" not in message and len(message) < 400
    return message


def test_export_flipped_weights_are_caught_by_the_hash(export):
    weights = export / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x10  # one bit of one float: still a valid file
    weights.write_bytes(bytes(data))
    message = _load_error(export)
    assert "model.safetensors" in message and "sha256" in message and "changed" in message


def _edit_state(export, edit):
    state = load_file(export / "model.safetensors")
    edit(state)
    _resign(export, state)


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda s: s["classifier.weight"].__setitem__((0, 0), math.nan),
     "'classifier.weight' holds 1 non-finite"),
    (lambda s: s.pop("classifier.bias"), "missing 1 tensor(s), e.g. 'classifier.bias'"),
    (lambda s: s.__setitem__("extra.weight", s["classifier.bias"].clone()),
     "1 unexpected tensor(s), e.g. 'extra.weight'"),
    (lambda s: s.__setitem__("classifier.weight", s["classifier.weight"][:, :-1].clone()),
     "'classifier.weight' has shape"),
], ids=["nan-weight", "missing-key", "extra-key", "wrong-shape"])
def test_export_bad_tensors_are_refused(export, edit, expected):
    _edit_state(export, edit)
    message = _load_error(export)
    assert "model.safetensors" in message and expected in message


@pytest.mark.parametrize(("config", "expected"), [
    ({"threshold": math.nan}, "threshold must be a finite number"),
    ({"threshold": "0.5"}, "threshold must be a finite number"),
    ({"sample_rate": 0}, "sample_rate must be a positive integer"),
    ({"proj_dim": 7}, "proj_dim 7 differs from model_config.proj_dim"),
    ({"model_config": {"aggregation": "median"}}, "aggregation"),
    ({"model_config": {"proj_dim": "many"}}, "model_config: proj_dim: expected an integer"),
    ({"model_config": {"colour": "red"}}, "unknown key"),
    ({"encoder_config": {"hidden_size": -4}}, "encoder_config: cannot build the encoder"),
    ({"surprise": 1}, "unknown key 'surprise'"),
    ({"format_version": 1}, "records no weights hash"),
    ({"llr": {"scale": -1.0, "offset": 0.0, "calibrated": True}}, "llr must be an object"),
    ({"llr": {"scale": 1.0, "offset": 0.0}}, "llr must be an object"),
], ids=["nan-threshold", "str-threshold", "rate", "proj-dim", "aggregation", "type",
        "model-key", "encoder", "extra-key", "old-format", "llr-scale", "llr-keys"])
def test_export_bad_config_is_refused(export, config, expected):
    cfg = json.loads((export / "config.json").read_text())
    for key in ("model_config", "encoder_config"):  # nested edits change one field only
        if key in config:
            config[key] = {**cfg[key], **config[key]}
    _resign(export, **config)
    message = _load_error(export)
    assert "config.json" in message and expected in message


def test_export_missing_key_and_cli_message(export, tmp_path, capsys):
    cfg = json.loads((export / "config.json").read_text())
    del cfg["seconds"]
    (export / "config.json").write_text(json.dumps(cfg))
    assert "key 'seconds' missing" in _load_error(export)
    wav = tmp_path / "a.wav"
    sf.write(wav, _signal(0.5, 16000), 16000)
    assert score_main(["--run", str(export), str(wav)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "seconds" in err


def test_export_unreadable_config_is_one_line_naming_file_and_place(export):
    path = export / "config.json"
    text = path.read_text()
    for damaged, expected in ((text[: len(text) // 2], r"config.json:\d+:\d+: invalid JSON"),
                              ("[1, 2]", "config.json: expected a JSON object"),
                              (None, "config.json: missing; an export directory holds")):
        path.unlink()
        if damaged is not None:
            path.write_text(damaged)
        assert re.search(expected, _load_error(export)), _load_error(export)
    path.write_bytes(b"\xff\xfe{")
    assert "config.json: cannot read" in _load_error(export)


def test_export_refuses_non_finite_weights_and_threshold(run, tmp_path):
    det = SpoofDetector.from_run(run[0])
    with torch.no_grad():
        det.classifier.bias.fill_(math.inf)
    with pytest.raises(ScoringError, match="'classifier.bias' holds 1 non-finite"):
        det.save_pretrained(tmp_path / "export")
    assert not (tmp_path / "export" / "config.json").exists()
    with pytest.raises(ScoringError, match="finite threshold"):
        SpoofDetector(det.model, det.classifier.weight, det.classifier.bias, threshold=math.nan)


# ------------------------------------------------------------------------ Python calls


def test_score_file_and_score_array_match_the_cli(run, tmp_path):
    run_dir, _ = run
    det = load_detector(run_dir / "export")
    x44 = _signal(1.3, 44100, seed=3)
    wav = tmp_path / "clip.wav"
    sf.write(wav, x44, 44100, subtype="FLOAT")
    out = tmp_path / "scores.tsv"
    assert score_main(["--run", str(run_dir / "export"), str(wav), "--out", str(out)]) == 0
    (_, cli_score, cli_decision), = _read_tsv(out)
    from_file = det.score_file(wav)
    assert from_file.score == pytest.approx(cli_score, abs=1e-5)
    assert from_file.decision == cli_decision
    assert from_file.probability == pytest.approx(1 / (1 + math.exp(-from_file.score)))
    from_array = det.score_array(x44, 44100)  # resampled like the file
    assert from_array.score == pytest.approx(from_file.score, abs=1e-6)
    stereo = det.score_array(np.stack([x44, x44], axis=1), 44100)  # (T, C): downmixed
    assert stereo.score == pytest.approx(from_array.score, abs=1e-6)
    pcm = (np.clip(x44, -1, 1 - 2 ** -15) * 32768).astype(np.int16)
    assert det.score_array(pcm, 44100).score == pytest.approx(from_array.score, abs=1e-3)
    first = det.score_array(x44, 44100, crop="first", seconds=0.5)
    assert first.score != from_array.score
    with pytest.raises(ValueError, match="channels-first"):
        det.score_array(np.stack([x44, x44]), 44100)
    with pytest.raises(ValueError, match="NaN"):
        det.score_array(np.full(1000, np.nan), 16000)
    with pytest.raises(ScoringError, match="nothing.wav: cannot read"):
        det.score_file(tmp_path / "nothing.wav")


def test_help_is_plain_text(capsys):
    with pytest.raises(SystemExit):
        score_main(["--help"])
    out = capsys.readouterr().out
    assert "``" not in out and "Exit codes: 0 all scored, 1 some input unreadable" in out


def test_sccl_score_and_the_export_use_the_stored_calibration(run, tmp_path, capsys):
    from sccl.linear import calibrate_on_dev, load_stage2, prior_log_odds
    from sccl.scoring import export_run

    run_dir = shutil.copytree(run[0], tmp_path / "run")
    wav = tmp_path / "a.wav"
    sf.write(wav, _signal(0.8, 16000), 16000)
    out = tmp_path / "s.tsv"
    meta, weight, bias, _ = load_stage2(run_dir)
    assert score_main(["--run", str(run_dir), str(wav), "--out", str(out)]) == 0
    ((_, score, _, llr),) = _read_tsv(out, llr=True)
    assert llr == pytest.approx(score - prior_log_odds(meta), abs=2e-6)  # no calibration yet
    cal = calibrate_on_dev(run_dir, meta, weight, bias)
    assert cal["dev_cllr"]["after"] <= cal["dev_cllr"]["before"]
    a, b = cal["scale"], cal["offset"] - cal["scale"] * prior_log_odds(meta)
    assert score_main(["--run", str(run_dir), str(wav), "--out", str(out)]) == 0
    ((_, score, _, llr),) = _read_tsv(out, llr=True)
    assert llr == pytest.approx(a * score + b, abs=1e-5) and a != pytest.approx(1.0)
    det = SpoofDetector.from_pretrained(export_run(run_dir))  # the export carries it
    assert det.calibrated and det.llr_map == pytest.approx((a, b))
    assert det.score_file(wav).llr == pytest.approx(llr, abs=1e-5)
    clf = run_dir / "stage2" / "classifier.safetensors"
    state = load_file(clf)
    save_file({"weight": state["weight"] * 2, "bias": state["bias"]}, clf)
    assert score_main(["--run", str(run_dir), str(wav)]) == 2
    assert "fitted to another classifier" in capsys.readouterr().err
