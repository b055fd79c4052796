"""bench/memory_table.py: model-state formulas against hand-computed bytes, the byte tracker,
the fake-tensor activation measurement on the tiny preset, and the Markdown table."""

from __future__ import annotations

import pytest
import torch

from bench.memory_table import (
    DEVICES,
    STRATEGIES,
    ParamCounts,
    PeakBytes,
    activation_peak,
    adamw_temporaries_per_element,
    main,
    markdown,
    model_states,
    per_gpu,
    preset_counts,
)

COUNTS = ParamCounts(total=1000, largest_module=100, layer=120, root=400)


def test_model_states_match_hand_computed_bytes():
    totals = {s: sum(model_states(s, COUNTS, 4, zero3_reuse=1000).values()) for s in STRATEGIES}
    assert totals == {
        "ddp": (4 + 4 + 8 + 4) * 1000,  # fp32 weights, grads, Adam m and v, DDP buckets
        "zero2": 2 * 1000 + 18 * 1000 // 4,  # DeepSpeed: bf16 weights + 18 bytes sharded
        "zero3": 4 * 100 + 18 * 1000 // 4 + 2 * 500,  # + largest module, + reuse window
        "fsdp": 16 * 1000 // 4 + 2 * 400 + 6 * 120,  # sharded + root, 2 layers, 1 layer's grads
    }
    # XLS-R 300M + head (preset_counts("xlsr-300m"), printed by the script's --json).
    big = ParamCounts(total=315_700_096, largest_module=8_388_736, layer=12_596_224,
                      root=13_390_720)
    for world in (2, 8):  # without the reuse window: DeepSpeed's estimators as they are
        states = {s: sum(model_states(s, big, world, zero3_reuse=0).values()) for s in STRATEGIES}
        assert states["zero3"] <= states["zero2"] <= states["ddp"]
        assert states["fsdp"] <= states["zero2"]
    # A 1e9-parameter reuse window holds the whole 300M model gathered at the turn.
    assert model_states("zero3", big, 2)["gathered_for_reuse"] == 2 * big.total
    with pytest.raises(ValueError, match="unknown strategy"):
        model_states("zero1", COUNTS, 2)
    cell = per_gpu("zero2", COUNTS, 4, activations=10, adam_per_element=4.0, zero3_reuse=1e9)
    assert cell["optimizer_step"] == 4 * 250  # 4 bytes per stepped element, a quarter of them
    assert cell["total"] == 6500 + max(10, 1000)


def test_preset_counts_of_tiny_are_the_hand_counted_ones():
    counts = preset_counts("tiny")
    # hidden 32, FFN 64: q/k/v/out 4 x (32*32 + 32), two layer norms 2 x 64, FFN 32*64 + 64 +
    # 64*32 + 32; largest module: the head's Linear(32 -> 256).
    assert counts.layer == 4 * (32 * 32 + 32) + 2 * 64 + (32 * 64 + 64 + 64 * 32 + 32)
    assert counts.largest_module == 32 * 256 + 256
    assert counts.root == counts.total - 2 * counts.layer


def test_peak_bytes_counts_new_storages_until_freed():
    weight = torch.zeros(100)
    with PeakBytes(outside=[weight]) as tracker:
        a = torch.empty(1000)  # 4000 bytes
        b = torch.empty(500, dtype=torch.float64)  # 4000 bytes
        view = a.view(10, 100)  # same storage: nothing new
        weight.view(10, 10)  # a view of an outside tensor: nothing new
        del a, view
        assert (tracker.now, tracker.peak) == (4000, 8000)
        tracker.exclude(b)
        b.view(2, 250)  # an excluded storage stays out
        assert tracker.now == 0
    assert 0 < adamw_temporaries_per_element(numel=1024, tensors=2) <= 8


def test_activation_peak_of_tiny_shrinks_with_checkpointing_and_bf16_weights():
    def peak(strategy, checkpointing, batch=4):
        return activation_peak("tiny", strategy, batch=batch, samples=8000,
                               checkpointing=checkpointing, queue_size=8)

    ddp = peak("ddp", False)
    assert peak("ddp", True) < ddp  # checkpointing frees the layers' activations
    # bf16 weights without autocast (ZeRO): under half of DDP's bytes per clip
    assert peak("zero2", False, batch=8) < 2 * ddp


def test_markdown_marks_cells_over_each_device():
    h100, h200 = DEVICES.values()

    def cell(total):
        return {"total": int(total)}

    row = {"model": "xlsr-1b", "crop_s": 4.0, "batch_per_gpu": 16, "checkpointing": True,
           "per_gpu": {"2": {"ddp": cell(h200 + 1), "zero2": cell(h100 + 1),
                             "zero3": cell(h100 - 1), "fsdp": cell(2**30)}}}
    table = markdown([row], 2)
    assert "| 1B | 4 s | on | 131.3** | 74.5* | 74.5 | 1.0 |" in table
    assert "2 GPUs, batch 16 per GPU" in table
    with pytest.raises(SystemExit) as exc:
        main(["--models", "no-such-preset"])
    assert exc.value.code == 2
