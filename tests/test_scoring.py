"""sccl-score and the exported detector: inputs of any format / rate / channel count,
directories and shard dirs, windows for long files, identical scores after export, errors,
every check of a loaded export (the integrity record over every file, keys, shapes, config,
finite values), unreadable inputs among good ones, hostile file names, option limits, a
read-only or full --out, and the Python calls score_array / score_file."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
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
from tests.mounts import fill, read_only, small_disk


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


def _reseal(export_dir, names=("config.json", "model.safetensors")):
    """Rewrite integrity.json to match ``names`` as they are now."""
    files = {n: {"size": (export_dir / n).stat().st_size,
                 "sha256": hashlib.sha256((export_dir / n).read_bytes()).hexdigest()}
             for n in names}
    (export_dir / "integrity.json").write_text(json.dumps({"format": 1, "files": files}))


def _resign(export_dir, state=None, **config):
    """Rewrite the export with ``state`` / config changes and a matching integrity record, so
    the checks after the record are the ones tested."""
    weights, cfg_path = export_dir / "model.safetensors", export_dir / "config.json"
    if state is not None:
        save_file(state, weights, metadata={"format": "pt"})
    cfg = json.loads(cfg_path.read_text())
    cfg.update(config)
    cfg_path.write_text(json.dumps(cfg))
    _reseal(export_dir)


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
    ({"format_version": 1}, "export format 1 is no longer read; export it again"),
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
    _reseal(export)
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
                              (b"\xff\xfe{", "config.json: cannot read")):
        path.unlink()
        path.write_bytes(damaged) if isinstance(damaged, bytes) else path.write_text(damaged)
        _reseal(export)
        assert re.search(expected, _load_error(export)), _load_error(export)
    path.unlink()
    assert "config.json: missing, but listed in integrity.json" in _load_error(export)


def test_export_refuses_non_finite_weights_and_threshold(run, tmp_path):
    det = SpoofDetector.from_run(run[0])
    with torch.no_grad():
        det.classifier.bias.fill_(math.inf)
    with pytest.raises(ScoringError, match="'classifier.bias' holds 1 non-finite"):
        det.save_pretrained(tmp_path / "export")
    assert not (tmp_path / "export" / "config.json").exists()
    with pytest.raises(ScoringError, match="finite threshold"):
        SpoofDetector(det.model, det.classifier.weight, det.classifier.bias, threshold=math.nan)


@pytest.mark.parametrize(("old", "new"), [
    ('"threshold": {t}', '"threshold": {t2}'),  # one digit: every decision flips
    ('"normalize_wave": false', '"normalize_wave": true '),
    ('"seconds": 1.0', '"seconds": 9.0'),
], ids=["threshold-digit", "normalize-wave", "window"])
def test_export_config_is_covered_by_the_record(export, tmp_path, capsys, old, new):
    """A same-size edit of config.json that still loads is refused by from_pretrained and
    sccl-score, one line naming config.json (format 2 loaded it silently)."""
    path = export / "config.json"
    text = path.read_text()
    t = re.search(r'"threshold": (-?[0-9.e-]+)', text).group(1)
    t2 = t[:-1] + ("1" if t[-1] != "1" else "2")
    old, new = old.format(t=t, t2=t2), new.format(t=t, t2=t2)
    assert old in text and len(old) == len(new)
    path.write_text(text.replace(old, new))
    message = _load_error(export)
    assert message.startswith(f"{path}: sha256 differs from the one recorded in integrity.json")
    assert "export it again from its run" in message
    wav = tmp_path / "a.wav"
    sf.write(wav, _signal(0.5, 16000), 16000)
    assert score_main(["--run", str(export), str(wav)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"error: {message}\n"


def test_export_record_covers_files_added_later_and_ignores_unlisted(export):
    """A model card added to the record is checked like the rest; files the record does not
    list (a hub download's .gitattributes) are never read and do not stop loading."""
    (export / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    (export / "README.md").write_text("# detector\n")
    _reseal(export, ("config.json", "model.safetensors", "README.md"))
    assert SpoofDetector.from_pretrained(export).threshold is not None
    (export / "README.md").write_text("# detector, threshold 0\n")
    assert _load_error(export).startswith(f"{export / 'README.md'}: ")


@pytest.mark.parametrize("case", ["format-2", "no-record", "config-unlisted"])
def test_export_without_a_record_over_config_is_refused(export, case):
    record = export / "integrity.json"
    if case == "config-unlisted":
        _reseal(export, ("model.safetensors",))
        expected = f"{record}: does not list config.json; export it again from its run"
    elif case == "no-record":
        record.unlink()
        expected = f"{record}: missing; an export directory holds integrity.json"
    else:  # as sccl wrote it before integrity.json: the weights' hash inside config.json
        cfg = json.loads((export / "config.json").read_text())
        cfg.update(format_version=2, weights_sha256="0" * 64)
        (export / "config.json").write_text(json.dumps(cfg))
        record.unlink()
        expected = (f"{export / 'config.json'}: export format 2 has no integrity.json covering "
                    "config.json; export it again from its run: python -c \"from sccl.scoring "
                    "import export_run; export_run('RUN')\"")
    assert _load_error(export).startswith(expected)


class _Touch:
    """Unpickling this creates ``path``: proof that a pickle was loaded."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (type(self.path).touch, (self.path,))


def test_export_is_data_only_and_runs_no_code(export, tmp_path):
    """A pickle in place of the weights is refused unread (safetensors only), and an encoder
    config asking for code of its own (auto_map, an unknown model_type) builds nothing."""
    marker = tmp_path / "code-ran"
    torch.save({"w": _Touch(marker)}, export / "model.safetensors")
    _reseal(export)
    assert "model.safetensors: corrupt or truncated safetensors file" in _load_error(export)
    assert not marker.exists()
    cfg = json.loads((export / "config.json").read_text())
    cfg["encoder_config"].update(model_type="evil", auto_map={"AutoModel": "evil.Model"})
    _resign(export, **cfg)
    assert "model_type 'evil' is not a supported encoder family" in _load_error(export)


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


# ------------------------------------------------------------------- hostile input, --out


def test_tsv_quotes_names_a_tab_or_line_break_would_split(run, tmp_path):
    """Names with a tab, line breaks, a double quote or bytes that are not UTF-8 come back
    from the TSV exactly (csv reader, tab delimiter); plain names are written as before."""
    audio = tmp_path / "audio"
    audio.mkdir()
    names = ["plain.wav", "tab\there.wav", "new\nline.wav", "cr\rlf.wav", '"quoted".wav',
             os.fsdecode(b"latin1-\xe9.wav")]
    for name in names:
        sf.write(tmp_path / "x.wav", _signal(0.3, 16000), 16000)
        os.rename(tmp_path / "x.wav", audio / name)  # soundfile cannot open non-UTF-8 names
    out = tmp_path / "scores.tsv"
    assert score_main(["--run", str(run[0]), str(audio), "--out", str(out)]) == 0
    data = out.read_bytes()
    assert f"\n{audio}/plain.wav\t".encode() in data and b"\xe9.wav\t" in data
    text = data.decode("utf-8", "surrogateescape")
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t"))
    assert rows[0] == ["path", "score", "decision", "llr"] and len(rows) == 1 + len(names)
    assert sorted(r[0] for r in rows[1:]) == sorted(str(audio / n) for n in names)


def test_window_and_hop_under_one_frame_are_one_line(run, tmp_path, capsys):
    wav = tmp_path / "a.wav"
    sf.write(wav, _signal(3.0, 16000), 16000)
    for flags, expected in ((["--seconds", "0.001"], "--seconds) 0.001 is under one encoder "
                             "frame's receptive field: use >= 0.025 (400 samples at 16000 Hz)"),
                            (["--hop-seconds", "1e-5"], "--hop-seconds) 1e-05 is under one "
                             "encoder frame: use >= 0.02 (320 samples at 16000 Hz)"),
                            (["--seconds", "inf"], "seconds must be a finite number")):
        assert score_main(["--run", str(run[0]), str(wav), *flags]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1
        assert captured.err.startswith("error: ") and expected in captured.err
    det = load_detector(run[0] / "export")
    with pytest.raises(ValueError, match="use >= 0.025"):
        det.score_array(_signal(1.0, 16000), 16000, seconds=0.01)
    assert np.isfinite(det.score_array(_signal(1.0, 16000), 16000, seconds=0.025).score)


def test_score_array_pcm_types_and_integer_rates(run):
    det = load_detector(run[0] / "export")
    x = _signal(0.6, 16000, seed=4)
    ref = det.score_array(x, 16000).score
    u8 = np.clip(np.round(x * 128 + 128), 0, 255).astype(np.uint8)  # 8-bit WAV: offset binary
    assert det.score_array(u8, 16000).score == pytest.approx(ref, abs=0.02)
    i32 = np.round(x * 2**31).astype(np.int32)
    assert det.score_array(i32, np.int64(16000)).score == pytest.approx(ref, abs=1e-4)
    assert det.score_array(x, np.uint16(16000)).score == ref
    with pytest.raises(ValueError, match="wave dtype uint16 is not supported"):
        det.score_array(u8.astype(np.uint16), 16000)
    with pytest.raises(ValueError, match="sample_rate must be a positive integer, got True"):
        det.score_array(x, True)


def test_clip_far_shorter_than_the_window_warns(run, tmp_path, capsys):
    """Window 1 s (the fixture's Stage 2 crop): a 0.05 s clip is named with a warning, on
    stderr from sccl-score and as warnings.warn from Python; a 0.3 s clip is not."""
    short, fine = tmp_path / "short.wav", tmp_path / "fine.wav"
    sf.write(short, _signal(0.05, 16000), 16000)
    sf.write(fine, _signal(0.3, 16000), 16000)
    assert score_main(["--run", str(run[0]), str(short), str(fine)]) == 0
    captured = capsys.readouterr()
    assert captured.err == (f"warning: {short}: 0.05 s, under a tenth of the 1 s window: its "
                            "score rests on little audio\n")
    assert len(captured.out.splitlines()) == 3  # both scored
    det = load_detector(run[0] / "export")
    with pytest.warns(UserWarning, match=r"the wave: 0\.05 s, under a tenth of the 1 s window"):
        det.score_array(_signal(0.05, 16000), 16000)
    with pytest.warns(UserWarning, match="short.wav: 0.05 s"):
        det.score_file(short)


def test_out_on_a_read_only_place_stops_before_scoring(run, tmp_path, capsys, monkeypatch):
    wav = tmp_path / "a.wav"
    sf.write(wav, _signal(0.3, 16000), 16000)
    monkeypatch.setattr("sccl.scoring.score_paths", lambda *a, **k: pytest.fail("scored"))
    place = tmp_path / "ro"
    place.mkdir()
    with read_only(place):
        assert score_main(["--run", str(run[0]), str(wav), "--out", str(place / "s.tsv")]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: --out {place / 's.tsv'}: read-only file system\n"
    assert not list(place.iterdir())


def test_out_on_a_full_disk_sends_the_scores_to_stdout(run, tmp_path, capsys):
    wav = tmp_path / "a.wav"
    sf.write(wav, _signal(0.3, 16000), 16000)
    with small_disk(tmp_path / "disk", "64k") as disk:
        fill(disk)
        out = disk / "s.tsv"
        assert score_main(["--run", str(run[0]), str(wav), "--out", str(out)]) == 3
        assert not out.exists() and not [p for p in disk.iterdir() if p.name != ".filler"]
    captured = capsys.readouterr()
    assert captured.err == (f"error: --out {out}: no space left on the device; the scores "
                            "follow on stdout instead\n")
    lines = captured.out.splitlines()
    assert lines[0] == "path\tscore\tdecision\tllr" and lines[1].startswith(f"{wav}\t")


def test_shard_dir_inputs_never_open_a_tar_outside_the_dir(tmp_path, write_audio):
    import tarfile

    from sccl.scoring import ScoringError, iter_inputs

    outside = tmp_path / "outside.tar"
    clip = write_audio(tmp_path / "clip.flac").read_bytes()
    with tarfile.open(outside, "w") as tar:
        info = tarfile.TarInfo("secret.flac")
        info.size = len(clip)
        tar.addfile(info, io.BytesIO(clip))
    shard_dir = tmp_path / "set"
    shard_dir.mkdir()
    names = ["../outside.tar", str(outside)]
    (shard_dir / "manifest.json").write_text(json.dumps({"shards": [{"name": n} for n in names]}))
    found = list(iter_inputs([str(shard_dir)]))
    assert len(found) == 2 and all(isinstance(x, ScoringError) for _, x in found), found
    assert all("is not a file name inside the directory" in str(x) for _, x in found)
