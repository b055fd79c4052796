"""sccl.data: balanced equal-length epochs, exact resumption, corrupt samples, eval partition."""

from __future__ import annotations

import collections
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sccl import audio, codec_aug
from sccl.codec_aug import CodecConfig
from sccl.config import ConfigError
from sccl.data import (
    CorruptDataError,
    DataConfig,
    ShardDirError,
    build_dev_loader,
    build_eval_loader,
    build_train_loader,
)
from tests.data_fixtures import write_shards

CROP = 0.05  # seconds: 800 samples keep decoding cheap
CODEC_MIX = CodecConfig(mp3_p=0.3, mulaw_p=0.3, telephone_p=0.5)


@pytest.fixture(scope="module")
def shard_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    return {
        # 3 bona fide and 5 spoof shards of uneven sizes: nothing divides evenly
        "split": write_shards(root / "split", n_bonafide=16, n_spoof=30, n_shards=(3, 5)) and
        str(root / "split"),
        "mixed": write_shards(root / "mixed", n_bonafide=16, n_spoof=30, split_by_label=False,
                              n_shards=3) and str(root / "mixed"),
        "mixed_counts": write_shards(root / "mixed_counts", n_bonafide=16, n_spoof=30,
                                     split_by_label=False, n_shards=3, shard_counts=True) and
        str(root / "mixed_counts"),
        "corrupt": write_shards(root / "corrupt", n_bonafide=8, n_spoof=8, n_shards=(2, 2),
                                corrupt=("train_bona_0003",)) and str(root / "corrupt"),
        "eval": write_shards(root / "eval", n_bonafide=9, n_spoof=14, n_shards=(2, 3),
                             split="eval", attacks=("A07", "A08")) and str(root / "eval"),
    }


def _cfg(train="", **kw):
    base = dict(train_shards=train, batch_size=4, crop_seconds=CROP, num_workers=0,
                shuffle_buffer=4, eval_seconds=0.1, rawboost=False, train_crop="random")
    return DataConfig(**{**base, **kw})


def _ids(batches):
    return [b["utt_id"] for b in batches]


def _same(a, b) -> bool:
    """Same batches: ids, labels and waves."""
    return len(a) == len(b) and all(
        x["utt_id"] == y["utt_id"] and torch.equal(x["label"], y["label"])
        and torch.equal(x["wave"], y["wave"]) for x, y in zip(a, b, strict=True))


def test_bad_directories_are_named(tmp_path, shard_dirs):
    with pytest.raises(ShardDirError, match="does not exist"):
        build_train_loader(_cfg(str(tmp_path / "nope")), rank=0, world_size=1, epoch=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardDirError, match="manifest.json is missing"):
        build_train_loader(_cfg(str(tmp_path / "empty")), rank=0, world_size=1, epoch=0)
    with pytest.raises(ShardDirError, match="train_shards is empty"):
        build_train_loader(_cfg(""), rank=0, world_size=1, epoch=0)
    bad = tmp_path / "bad"
    write_shards(bad, n_bonafide=2, n_spoof=2, n_shards=(1, 1))
    os.remove(bad / "train-spoof-000000.tar")
    with pytest.raises(ShardDirError, match="train-spoof-000000.tar is listed"):
        build_eval_loader(str(bad), _cfg(), rank=0, world_size=1, batch_size=2)
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(ShardDirError, match="unreadable manifest"):
        build_eval_loader(str(bad), _cfg(), rank=0, world_size=1, batch_size=2)


def test_bad_config_values():
    with pytest.raises(ValueError, match="label_mode"):
        DataConfig(label_mode="multi")
    with pytest.raises(ValueError, match="bonafide_share"):
        DataConfig(bonafide_share=1.0)
    with pytest.raises(ConfigError, match="must be divisible by the number of processes"):
        build_train_loader(_cfg("x", batch_size=5), rank=0, world_size=2, epoch=0)


def test_unsatisfiable_bonafide_share_is_a_config_error_before_reading(tmp_path):
    cfg = _cfg(str(tmp_path / "never_read"), batch_size=8, bonafide_share=0.1)
    assert cfg.rank_rows(1) == (1, 7)  # 8 rows: one bona fide
    with pytest.raises(ConfigError) as err:
        cfg.rank_rows(2)  # 4 rows per rank: round(0.4) = 0 bona fide
    assert str(err.value).startswith("data.bonafide_share=0.1 gives 0 bona fide of 4 rows")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="data.bonafide_share=0.1"):  # before the shards
        build_train_loader(cfg, rank=0, world_size=2, epoch=0)


def test_crops_shorter_than_the_receptive_field_are_refused():
    DataConfig().check_encoder(400)
    DataConfig(crop_seconds=0.025, eval_seconds=0).check_encoder(400)  # exactly 400 samples
    for kw, needle in [({"crop_seconds": 0.02}, "data.crop_seconds=0.02 gives 320 samples"),
                       ({"eval_seconds": 0.01}, "data.eval_seconds=0.01 gives 160 samples"),
                       ({"min_clip_samples": 399}, "data.min_clip_samples=399 gives 399")]:
        with pytest.raises(ConfigError, match=needle):
            DataConfig(**kw).check_encoder(400)


@pytest.mark.parametrize("kind", ["split", "mixed", "mixed_counts"])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_equal_steps_and_balanced_batches(shard_dirs, kind, world):
    cfg = _cfg(shard_dirs[kind], batch_size=2 * world, num_workers=2 if world == 2 else 0)
    steps = 16 * 2 // (2 * world)  # n_b * (1 + spoof_per_bonafide) / (world * B)
    for rank in range(world):
        loader = build_train_loader(cfg, rank=rank, world_size=world, epoch=1)
        batches = list(loader)
        assert len(loader) == len(batches) == steps
        for b in batches:
            assert b["wave"].shape == (2, round(CROP * 16000)) and b["wave"].dtype == torch.float32
            assert b["attention_mask"].dtype == torch.bool and b["attention_mask"].any(dim=1).all()
            assert sorted(b["label"].tolist()) == [0, 1]  # 1 bona fide + 1 spoof per rank batch
            for utt, lab in zip(b["utt_id"], b["label"].tolist(), strict=True):
                assert ("_bona_" in utt) == (lab == 1)
            assert not any(k.startswith("_") for k in b)


@pytest.mark.parametrize(("kind", "workers"),
                         [("split", 0), ("split", 2), ("mixed_counts", 0), ("mixed_counts", 2)])
def test_epoch_reads_each_bonafide_once_and_spoof_in_turn(shard_dirs, kind, workers):
    # Exact with split-by-label shards, and with mixed shards whose manifest has per-shard
    # counts. 2 ranks x (1 bona fide + 1 spoof) per step.
    cfg = _cfg(shard_dirs[kind], num_workers=workers)
    spoof_seen = []
    for epoch in range(3):
        bona = []
        for rank in range(2):
            for b in build_train_loader(cfg, rank=rank, world_size=2, epoch=epoch):
                bona += [u for u in b["utt_id"] if "_bona_" in u]
                spoof_seen += [u for u in b["utt_id"] if "_spoof_" in u]
        assert sorted(bona) == [f"train_bona_{i:04d}" for i in range(16)]  # all, exactly once
    # 48 spoof draws over 30 spoof samples, continuing from epoch to epoch: positions 0..23
    # (epochs 0 and 1 minus rank 1's last slot) come from the first pass, so are distinct;
    # after 32 draws every spoof sample has been used; none is used a third time.
    assert len(set(spoof_seen[:24])) == 24
    assert len(set(spoof_seen[:32])) == 30
    assert max(collections.Counter(spoof_seen).values()) == 2


def test_bonafide_left_over_differs_between_epochs(tmp_path):
    d = tmp_path / "odd"  # 19 bona fide: 2 ranks x 1 per batch x 9 steps = 18 per epoch
    write_shards(d, n_bonafide=19, n_spoof=10, n_shards=(2, 2))
    left_out = set()
    for epoch in range(4):
        bona = [u for rank in range(2)
                for b in build_train_loader(_cfg(str(d)), rank=rank, world_size=2, epoch=epoch)
                for u in b["utt_id"] if "_bona_" in u]
        assert len(bona) == len(set(bona)) == 18  # never twice within an epoch
        left_out |= {f"train_bona_{i:04d}" for i in range(19)} - set(bona)
    assert len(left_out) > 1  # not always the same sample


def test_epochs_differ_and_runs_repeat(shard_dirs):
    cfg = _cfg(shard_dirs["split"], num_workers=0)
    a = list(build_train_loader(cfg, rank=0, world_size=1, epoch=0))
    b = list(build_train_loader(cfg, rank=0, world_size=1, epoch=0))
    c = list(build_train_loader(cfg, rank=0, world_size=1, epoch=1))
    assert _same(a, b)
    assert _ids(a) != _ids(c)
    other = list(build_train_loader(_cfg(shard_dirs["split"], seed=7), rank=0, world_size=1,
                                    epoch=0))
    assert _ids(a) != _ids(other)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_yields_the_same_batches(shard_dirs, workers):
    # 16 * 1.875 / 4 = 7 steps: workers hold 4 and 3 batches, resuming shifts their roles
    cfg = _cfg(shard_dirs["split"], num_workers=workers, rawboost=True, spoof_per_bonafide=0.875,
               codec=CODEC_MIX)
    full = list(build_train_loader(cfg, rank=1, world_size=2, epoch=2))
    assert len(full) == 7
    for k in (1, 3, len(full) - 1, len(full)):
        loader = build_train_loader(cfg, rank=1, world_size=2, epoch=2, start_step=k)
        resumed = list(loader)
        assert len(loader) == len(full) and len(resumed) == len(full) - k
        assert _same(resumed, full[k:])


def test_resume_skips_without_decoding(shard_dirs, monkeypatch):
    calls = []
    real = audio.crop_into
    monkeypatch.setattr(audio, "crop_into", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = _cfg(shard_dirs["split"], batch_size=2)
    loader = build_train_loader(cfg, rank=0, world_size=1, epoch=0, start_step=10)
    assert len(list(loader)) == 6
    assert len(calls) == 6 * 2  # only the batches it yields are decoded


def test_resume_does_not_open_fully_skipped_shards(shard_dirs, monkeypatch):
    import sccl.data_shards as ds

    opened = []
    real = ds.iter_shard
    monkeypatch.setattr(ds, "iter_shard", lambda sh, *a: opened.append(sh.path) or real(sh, *a))
    cfg = _cfg(shard_dirs["split"], batch_size=2, shuffle_buffer=0)
    list(build_train_loader(cfg, rank=0, world_size=1, epoch=0))
    n_full = len(opened)
    opened.clear()
    list(build_train_loader(cfg, rank=0, world_size=1, epoch=0, start_step=15))
    assert n_full >= 6  # all 3 bona fide shards + the 3 spoof shards holding 16 of 30 spoof
    assert len(opened) == 2  # the last batch: one bona fide and one spoof shard


def test_corrupt_sample_is_replaced_counted_and_resume_stays_exact(shard_dirs, caplog):
    cfg = _cfg(shard_dirs["corrupt"], batch_size=2, max_corrupt_share=0.2)
    loader = build_train_loader(cfg, rank=0, world_size=1, epoch=0)
    full = list(loader)
    assert len(full) == 8 and loader.corrupt_count == 1
    assert loader.corrupt_keys == ["train_bona_0003"]
    assert "train_bona_0003" in caplog.text
    assert all("train_bona_0003" not in ids for ids in _ids(full))
    assert all(sorted(b["label"].tolist()) == [0, 1] for b in full)  # still balanced
    for k in range(1, 8):
        resumed = list(build_train_loader(cfg, rank=0, world_size=1, epoch=0, start_step=k))
        assert _ids(resumed) == _ids(full[k:])
    strict = build_train_loader(_cfg(shard_dirs["corrupt"], batch_size=2, max_corrupt_share=0.0),
                                rank=0, world_size=1, epoch=0)
    with pytest.raises(CorruptDataError, match=str(shard_dirs["corrupt"])):
        list(strict)


@pytest.mark.parametrize("workers", [0, 2])
def test_short_clips_are_replaced_counted_and_resume_stays_exact(tmp_path, caplog, workers):
    # 0 samples (a header-only WAV) and 399 are too short for the encoder; 400 is enough.
    lengths = {"train_bona_0002": 0, "train_spoof_0005": 399, "train_spoof_0006": 400}
    write_shards(tmp_path / "s", n_bonafide=8, n_spoof=8, lengths=lengths)
    cfg = _cfg(str(tmp_path / "s"), batch_size=4, num_workers=workers, train_crop="head")
    loader = build_train_loader(cfg, rank=0, world_size=1, epoch=0)
    full = list(loader)
    assert len(full) == 4 and loader.short_count == 2 and loader.corrupt_count == 0
    assert sorted(loader.short_keys) == ["train_bona_0002", "train_spoof_0005"]
    assert "train_bona_0002" in caplog.text and "train_spoof_0005" in caplog.text
    ids = [u for b in full for u in b["utt_id"]]
    assert "train_spoof_0006" in ids and not {"train_bona_0002", "train_spoof_0005"} & set(ids)
    for b in full:  # still balanced, equal-length, and every row long enough for the encoder
        assert sorted(b["label"].tolist()) == [0, 0, 1, 1] and b["wave"].shape == (4, 800)
        assert b["attention_mask"].sum(1).min() >= 400
    for k in range(1, 4):
        resumed = list(build_train_loader(cfg, rank=0, world_size=1, epoch=0, start_step=k))
        assert _ids(resumed) == _ids(full[k:])


@pytest.mark.parametrize("workers", [0, 2])
def test_no_usable_sample_of_a_label_is_one_clear_error(tmp_path, workers):
    spoof = [f"train_spoof_{i:04d}" for i in range(3)]
    write_shards(tmp_path / "s", n_bonafide=4, n_spoof=3, n_shards=(1, 1), corrupt=spoof[:2],
                 lengths={spoof[2]: 10})
    cfg = _cfg(str(tmp_path / "s"), batch_size=2, num_workers=workers, max_corrupt_share=1.0)
    with pytest.raises(CorruptDataError) as err:
        list(build_train_loader(cfg, rank=0, world_size=1, epoch=0))
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 's'}: no usable spoof sample: ") and "\n" not in message


@pytest.mark.parametrize("damage", ["cut_in_member", "bad_header"])
def test_damaged_tar_keeps_samples_before_the_damage_and_names_the_rest(tmp_path, damage):
    from sccl.data_shards import iter_shard, load_shard_set

    write_shards(tmp_path / "s", n_bonafide=4, n_spoof=2, n_shards=(1, 1))
    (shard,) = [s for s in load_shard_set(str(tmp_path / "s")).shards if s.label == "bonafide"]
    first_two = [item.key for _, item in iter_shard(shard)][:2]
    tar = tmp_path / "s" / "train-bonafide-000000.tar"
    raw = bytearray(tar.read_bytes())
    headers = [i for i in range(0, len(raw), 512) if raw[i + 257 : i + 262] == b"ustar"]
    if damage == "cut_in_member":  # ends inside sample 3's audio (sample 2 is lost with it:
        raw = raw[: headers[6] + 600]  # group_by_keys yields a sample when the next one starts)
    else:  # sample 2's first header fails its checksum
        raw[headers[4] + 3] ^= 0xFF
    tar.write_bytes(bytes(raw))
    items = [item for _, item in iter_shard(shard)]
    assert [it.key for it in items[:2]] == first_two and not any(it.error for it in items[:2])
    if damage == "cut_in_member":  # then one Item saying why, in one line
        assert len(items) == 3 and items[2].truncated
        assert items[2].error.startswith("tar read error: ReadError: unexpected end of data")
        assert "\n" not in items[2].error and "BufferedReader" not in items[2].error
    else:  # tarfile ends a stream at a bad header: the manifest's count tells what is missing
        assert len(items) == 2
    loader = build_train_loader(_cfg(str(tmp_path / "s"), batch_size=2, max_corrupt_share=1.0),
                                rank=0, world_size=1, epoch=0)
    assert len(list(loader)) == 4 and loader.corrupt_count >= 1  # missing ones replaced


def test_attack_labels_follow_sorted_manifest_attacks(shard_dirs):
    cfg = _cfg(shard_dirs["split"], label_mode="attack", batch_size=8)
    manifest = json.loads((Path(shard_dirs["split"]) / "manifest.json").read_text())
    for b in build_train_loader(cfg, rank=0, world_size=1, epoch=0):
        for utt, lab in zip(b["utt_id"], b["label"].tolist(), strict=True):
            if "_bona_" in utt:
                assert lab == 0
            else:  # fixture: spoof i has attack A0(1 + i % 3)
                assert lab == 1 + int(utt.rsplit("_", 1)[1]) % 3
    assert sorted(manifest["attacks"]) == ["-", "A01", "A02", "A03"]


def test_resampled_stereo_wav_shards(tmp_path):
    d = tmp_path / "wav8k"
    write_shards(d, n_bonafide=4, n_spoof=4, n_shards=(1, 1), fmt="wav", sample_rate=8000,
                 channels=2, seconds=(0.2, 0.3))
    batch = next(iter(build_train_loader(_cfg(str(d)), rank=0, world_size=1, epoch=0)))
    assert batch["wave"].shape == (4, 800) and batch["attention_mask"].all()


def test_rawboost_changes_waves_deterministically(shard_dirs):
    plain = list(build_train_loader(_cfg(shard_dirs["split"]), rank=0, world_size=1, epoch=0))
    cfg = _cfg(shard_dirs["split"], rawboost=True, rawboost_p=1.0)
    a = list(build_train_loader(cfg, rank=0, world_size=1, epoch=0))
    b = list(build_train_loader(cfg, rank=0, world_size=1, epoch=0))
    assert _ids(a) == _ids(plain)
    assert _same(a, b)
    assert all(not torch.equal(x["wave"], y["wave"]) for x, y in zip(a, plain, strict=True))


def test_codecs_augment_training_batches_only_seeded_after_rawboost(shard_dirs, monkeypatch,
                                                                      caplog):
    d = shard_dirs["split"]
    boost = list(build_train_loader(_cfg(d, rawboost=True), rank=0, world_size=1, epoch=0))
    only = list(build_train_loader(_cfg(d, codec=CODEC_MIX), rank=0, world_size=1, epoch=0))
    cfg = _cfg(d, rawboost=True, codec=CODEC_MIX, dev_shards=d)
    a, b = (list(build_train_loader(cfg, rank=0, world_size=1, epoch=0)) for _ in range(2))
    assert _ids(a) == _ids(boost) and _same(a, b)
    rows = [(x["wave"][i], y["wave"][i], z["wave"][i], x["attention_mask"][i])
            for x, y, z in zip(a, boost, only, strict=True) for i in range(4)]
    vs_boost = sum(not torch.equal(w, w_boost) for w, w_boost, _, _ in rows) / len(rows)
    assert 0.5 < vs_boost < 1  # 80 % of rows expected to get a codec or the channel
    assert any(not torch.equal(w, w_only) for w, _, w_only, _ in rows)  # RawBoost came first
    assert all((w[~m] == 0).all() and w.abs().max() <= 1 for w, _, _, m in rows)
    plain_dev = _cfg(d, rawboost=True, dev_shards=d)
    assert _same(list(build_dev_loader(cfg, rank=0, world_size=1)),
                 list(build_dev_loader(plain_dev, rank=0, world_size=1)))

    def broken(x, sr, level=0.0):
        raise RuntimeError("encoder gone")
    monkeypatch.setitem(codec_aug._APPLY, "mulaw", broken)
    loader = build_train_loader(cfg, rank=0, world_size=1, epoch=0)
    with caplog.at_level("WARNING", logger="sccl.data"):
        c = list(loader)
    assert _ids(c) == _ids(a) and loader.codec_failures > 1
    assert len([r for r in caplog.records if "encoder gone" in r.getMessage()]) == 1
    # the rows mu-law failed on kept RawBoost only (the telephone channel drawn with it too)
    assert _rows_equal(c, boost) > _rows_equal(a, boost)


def _rows_equal(a, b) -> int:
    return sum(torch.equal(x["wave"][i], y["wave"][i]) for x, y in zip(a, b, strict=True)
               for i in range(len(x["wave"])))


def test_dev_loader_is_the_same_every_time(shard_dirs):
    cfg = _cfg(shard_dirs["split"], dev_shards=shard_dirs["split"], rawboost=True)
    a, b = (list(build_dev_loader(cfg, rank=0, world_size=2)) for _ in range(2))
    assert _same(a, b) and len(a) == 8


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("world", [1, 2, 4])
def test_eval_every_trial_once_equal_len(shard_dirs, world, workers):
    cfg = _cfg(num_workers=workers)
    seen, lens, padded = [], set(), 0
    for rank in range(world):  # 23 trials in 5 shards; world 4 -> ranks of 5, 6, 6, 6 trials
        loader = build_eval_loader(shard_dirs["eval"], cfg, rank=rank, world_size=world,
                                   batch_size=5)
        batches = list(loader)
        assert len(loader) == len(batches)
        lens.add(len(batches))
        for b in batches:
            assert b["wave"].shape == (len(b["utt_id"]), 1600)  # first 0.1 s, padded
            padded += int(not b["valid"].any())
            seen += [u for u, v in zip(b["utt_id"], b["valid"].tolist(), strict=True) if v]
            rows = zip(b["utt_id"], b["label"].tolist(), b["attack"], b["valid"], strict=True)
            for utt, lab, att, v in rows:
                if v:
                    assert lab == int("_bona_" in utt) and (att == "-") == (lab == 1)
    assert len(lens) == 1
    assert padded == (1 if world == 4 else 0)  # rank 0's 5 trials fill 1 batch, the others 2
    assert sorted(seen) == sorted([f"eval_bona_{i:04d}" for i in range(9)]
                                  + [f"eval_spoof_{i:04d}" for i in range(14)])


def test_eval_rank_without_trials_gets_padding(tmp_path):
    d = tmp_path / "tiny"
    write_shards(d, n_bonafide=1, n_spoof=2, n_shards=(1, 1), split="eval")
    out = []
    for rank in range(4):
        batches = list(build_eval_loader(str(d), _cfg(), rank=rank, world_size=4, batch_size=2))
        assert len(batches) == 1
        out += [u for b in batches
                for u, v in zip(b["utt_id"], b["valid"].tolist(), strict=True) if v]
    assert sorted(out) == ["eval_bona_0000", "eval_spoof_0000", "eval_spoof_0001"]


def test_eval_full_length_and_corrupt_trial(shard_dirs):
    loader = build_eval_loader(shard_dirs["corrupt"], _cfg(max_corrupt_share=0.5), rank=0,
                               world_size=1, batch_size=4, seconds=0)
    batches = list(loader)
    rows = {u: v for b in batches for u, v in zip(b["utt_id"], b["valid"].tolist(), strict=True)}
    assert len(rows) == 16 and [u for u, v in rows.items() if not v] == ["train_bona_0003"]
    assert loader.corrupt_count == 1
    lengths = {b["wave"].shape[1] for b in batches}
    assert len(lengths) > 1 and min(lengths) > 0.15 * 16000  # whole clips, batch-max padding


@pytest.mark.parametrize("seconds", [0, 0.1])
def test_eval_short_trial_is_padded_and_scored_empty_one_invalid(tmp_path, seconds):
    lengths = {"eval_spoof_0002": 100, "eval_bona_0001": 0}
    write_shards(tmp_path / "e", n_bonafide=3, n_spoof=4, split="eval", lengths=lengths)
    loader = build_eval_loader(str(tmp_path / "e"), _cfg(max_corrupt_share=0.5), rank=0,
                               world_size=1, batch_size=8, seconds=seconds)
    (batch,) = list(loader)
    row = {u: i for i, u in enumerate(batch["utt_id"])}
    short, empty = row["eval_spoof_0002"], row["eval_bona_0001"]
    assert batch["valid"][short] and not batch["valid"][empty]
    assert batch["attention_mask"][short].sum() == 400 and batch["wave"].shape[1] >= 400
    assert torch.all(batch["wave"][short, 100:400] == 0)  # silence after the real samples
    assert loader.short_keys == ["eval_spoof_0002"] and loader.corrupt_keys == ["eval_bona_0001"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.dist
def test_two_processes_equal_steps_and_eval_partition(shard_dirs, tmp_path):
    accelerate = Path(sys.executable).parent / "accelerate"
    script = Path(__file__).parent / "dist_scripts" / "dist_data_check.py"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
           "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(_free_port()), str(script), shard_dirs["split"], shard_dirs["eval"], str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [o["world_size"] for o in out] == [2, 2] and [o["rank"] for o in out] == [0, 1]
    assert out[0]["train_len"] == out[1]["train_len"] == len(out[0]["train_ids"]) == 8
    assert len(out[1]["train_ids"]) == 8
    bona = [u for o in out for ids in o["train_ids"] for u in ids if "_bona_" in u]
    assert sorted(bona) == [f"train_bona_{i:04d}" for i in range(16)]
    assert out[0]["eval_len"] == out[1]["eval_len"] == out[0]["eval_batches"] == \
        out[1]["eval_batches"]
    valid = out[0]["eval_valid"] + out[1]["eval_valid"]
    assert len(valid) == len(set(valid)) == 23
