"""sccl.accel: the stop signals of a training run, and the one Accelerator factory in a
single process (its multi-process paths run in every 2-process stage test)."""

from __future__ import annotations

import os
import signal
import threading

import torch

from sccl import accel


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
