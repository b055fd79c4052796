"""sccl.accel: the stop signals of a training run, and the one Accelerator factory in a
single process (its multi-process paths run in every 2-process stage test)."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sccl import accel
from sccl.config import ConfigError


def test_stop_signal_sets_the_flag_and_restores_handlers():
    before = signal.getsignal(signal.SIGUSR1)
    stop = accel.StopSignal()
    try:
        assert not stop.agreed(torch.device("cpu"))
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.received == signal.SIGUSR1 and stop.agreed(torch.device("cpu"))
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C asks for a stop too: no KeyboardInterrupt
        assert stop.received == signal.SIGINT
    finally:
        stop.close()
    assert signal.getsignal(signal.SIGUSR1) == before


def test_stop_signals_deferred_while_workers_may_fork():
    stop = accel.StopSignal()
    try:
        with accel.stop_signals_deferred():  # blocked in this thread (a forked worker inherits it)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
            assert stop.received is None  # pending, not lost
        assert stop.received == signal.SIGTERM
    finally:
        stop.close()


def test_one_factory_for_every_stage_in_a_single_process(monkeypatch):
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    try:
        acc = accel.build_accelerator()  # the inference stages' call
        assert acc.distributed_type == DistributedType.NO and acc.num_processes == 1
        assert acc.gradient_accumulation_steps == 1 and not acc.log_with
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def _with_deepspeed_config(name: str) -> SimpleNamespace:
    """What fill_deepspeed_auto reads of an Accelerator: the plugin's config, from launch/."""
    config = json.loads((Path(__file__).resolve().parents[1] / "launch" / name).read_text())
    return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(
        deepspeed_config=config)))


def test_fill_deepspeed_auto_from_the_training_config_and_the_encoder_width():
    acc = _with_deepspeed_config("ds_zero3.json")
    accel.fill_deepspeed_auto(acc, micro_batch=8, grad_clip=5.0, hidden_size=1024)
    ds = acc.state.deepspeed_plugin.deepspeed_config
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_clipping"]) == (8, 5.0)
    zero = ds["zero_optimization"]
    # Accelerate's rule (it needs model.config.hidden_size, which SupConModel has not)
    assert (zero["reduce_bucket_size"], zero["stage3_prefetch_bucket_size"],
            zero["stage3_param_persistence_threshold"]) == (1024**2, int(0.9 * 1024**2), 10240)
    # left "auto" only where Accelerate fills them from the Accelerator itself
    autos = {k for k, v in ds.items() if v == "auto"} | {
        f"{k}.enabled" for k in ("bf16", "fp16") if ds[k]["enabled"] == "auto"}
    assert autos == {"train_batch_size", "gradient_accumulation_steps", "bf16.enabled",
                     "fp16.enabled"}
    assert "auto" not in zero.values()

    zero2 = _with_deepspeed_config("ds_zero2.json")  # its numbers stay as written
    accel.fill_deepspeed_auto(zero2, micro_batch=8, grad_clip=5.0, hidden_size=1024)
    assert zero2.state.deepspeed_plugin.deepspeed_config["zero_optimization"][
        "reduce_bucket_size"] == 50000000


def test_params_sharded_under_zero3_and_fsdp_only():
    # export_weights: every rank joins the gathering then; otherwise only the main process
    # asks for the weights (under ZeRO-2 every other rank would copy them for nothing)
    for name, sharded in (("ds_zero2.json", False), ("ds_zero3.json", True)):
        acc = _with_deepspeed_config(name)
        acc.distributed_type = "DEEPSPEED"
        assert accel.params_sharded(acc) is sharded
    for kind, sharded in (("FSDP", True), ("MULTI_GPU", False), ("NO", False)):
        acc = SimpleNamespace(distributed_type=kind, state=SimpleNamespace(deepspeed_plugin=None))
        assert accel.params_sharded(acc) is sharded


def test_zero3_config_that_cannot_gather_the_export_is_refused():
    acc = _with_deepspeed_config("ds_zero3.json")
    del acc.state.deepspeed_plugin.deepspeed_config["zero_optimization"][
        "stage3_gather_16bit_weights_on_model_save"]
    with pytest.raises(ConfigError, match="stage3_gather_16bit_weights_on_model_save true"):
        accel.fill_deepspeed_auto(acc, micro_batch=8, grad_clip=5.0, hidden_size=32)
