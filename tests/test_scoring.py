"""sccl-score and the exported detector: inputs of any format / rate / channel count,
directories and shard dirs, windows for long files, identical scores after export, errors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from sccl.embed import EmbedOptions
from sccl.scoring import SpoofDetector, load_detector
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


def _read_tsv(path) -> list[tuple[str, float, str]]:
    lines = path.read_text().splitlines()
    assert lines[0] == "path\tscore\tdecision"
    rows = [line.split("\t") for line in lines[1:]]
    return [(p, float(s), d) for p, s, d in rows]


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
        assert score_main(["--run", str(run_dir), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err
    assert score_main(["--run", str(tmp_path), str(bad)]) == 2  # not a run
    assert "stage2" in capsys.readouterr().err
