"""Shared fixtures: small audio files and a tiny corpus in the ASVspoof 2019 LA layout.

Audio is generated with numpy + soundfile (no dependency on the synthetic corpus generator),
a tenth of a second per file, so a fixture corpus costs milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


def make_audio(path: str | Path, *, seconds: float = 0.1, sample_rate: int = 16000,
               channels: int = 1, seed: int = 0, fmt: str | None = None) -> Path:
    """Write a quiet noise + tone file (container from the suffix unless ``fmt``); return path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    tone = 0.3 * np.sin(2 * np.pi * 220.0 * np.arange(n) / sample_rate)
    wave = tone[:, None] + 0.05 * rng.standard_normal((n, channels))  # (T, C)
    sf.write(path, wave.astype(np.float32), sample_rate, format=fmt)
    return path


@pytest.fixture
def write_audio():
    """``write_audio(path, seconds=0.1, sample_rate=16000, channels=1, seed=0, fmt=None)``."""
    return make_audio


# (speaker, utt, attack, key): 4 bona fide + 8 spoof, deliberately not in sorted order.
LA19_ROWS = [
    ("LA_0079", "LA_T_1138215", "-", "bonafide"),
    ("LA_0079", "LA_T_1271820", "A01", "spoof"),
    ("LA_0080", "LA_T_1004644", "A02", "spoof"),
    ("LA_0080", "LA_T_1056709", "-", "bonafide"),
    ("LA_0081", "LA_T_9000001", "A03", "spoof"),
    ("LA_0081", "LA_T_2000002", "A04", "spoof"),
    ("LA_0082", "LA_T_3000003", "-", "bonafide"),
    ("LA_0082", "LA_T_4000004", "A05", "spoof"),
    ("LA_0083", "LA_T_5000005", "A06", "spoof"),
    ("LA_0083", "LA_T_6000006", "-", "bonafide"),
    ("LA_0084", "LA_T_7000007", "A01", "spoof"),
    ("LA_0084", "LA_T_8000008", "A02", "spoof"),
]


@pytest.fixture
def la19_corpus(tmp_path):
    """A 12-utterance LA19 train set in the released layout.

    Returns a dict: root, protocol (path), audio_dir (``ASVspoof2019_LA_train``, holding
    ``flac/``), rows (LA19_ROWS) and args (the matching ``sccl-shards build`` flags).
    """
    root = tmp_path / "LA"
    audio_dir = root / "ASVspoof2019_LA_train"
    protocol = root / "ASVspoof2019_LA_cm_protocols" / "ASVspoof2019.LA.cm.train.trn.txt"
    protocol.parent.mkdir(parents=True)
    for i, (_, utt, _, _) in enumerate(LA19_ROWS):
        make_audio(audio_dir / "flac" / f"{utt}.flac", seconds=0.05 + 0.01 * i, seed=i)
    protocol.write_text("".join(f"{s} {u} - {a} {k}\n" for s, u, a, k in LA19_ROWS))
    return {
        "root": root, "protocol": protocol, "audio_dir": audio_dir, "rows": LA19_ROWS,
        "args": ["--format", "asvspoof2019", "--protocol", str(protocol),
                 "--audio-dir", str(audio_dir)],
    }
