"""sccl.optim: the lr schedule, clip_scope, and the guarded optimizer step."""

from __future__ import annotations

import pytest
import torch

from sccl.logs import StepMeter
from sccl.model import ModelConfig, SupConModel
from sccl.optim import OptimConfig, build_optimizer, clip_gradients, optimizer_step


@pytest.fixture
def accelerator():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(reset_partial_state=True)


def tiny_model(accelerator):
    torch.manual_seed(0)
    return accelerator.prepare(SupConModel(ModelConfig(encoder="tiny", proj_dim=8,
                                                       head_dropout=0.0)))


def test_build_optimizer_schedules():
    p = torch.nn.Parameter(torch.zeros(2))
    groups = [{"params": [p], "lr": 1.0, "weight_decay": 0.0, "name": "head"}]
    opt, sched = build_optimizer(groups, OptimConfig(scheduler="cosine", warmup_steps=2),
                                 total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0]) and lrs[-1] < 0.2
    assert build_optimizer(groups, OptimConfig(scheduler="none"), 6)[1] is None


@pytest.mark.parametrize("scope", ["head", "all"])
def test_clip_scope_head_leaves_encoder_gradients_alone(accelerator, scope):
    model = tiny_model(accelerator)
    z = model(torch.randn(4, 8000), torch.ones(4, 8000, dtype=torch.bool))
    (z * torch.randn_like(z)).sum().backward()
    head = {id(p) for p in model.head.parameters()}
    before = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    norm = clip_gradients(accelerator, model, OptimConfig(grad_clip=1e-3, clip_scope=scope))
    after = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    enc = [n for n in before if n.startswith("encoder.")]
    assert enc and norm > 1e-3
    same = all(torch.equal(before[n], after[n]) for n in enc)
    assert same == (scope == "head")
    head_norm = torch.linalg.vector_norm(torch.stack([
        torch.linalg.vector_norm(p.grad) for p in model.parameters() if id(p) in head]))
    assert head_norm <= 1e-3 * 1.01


def test_optimizer_step_skips_a_window_with_a_nonfinite_loss(accelerator):
    model = tiny_model(accelerator)
    optimizer = accelerator.prepare(torch.optim.AdamW(model.parameters(), lr=1e-2))
    meter, cfg = StepMeter(), OptimConfig()
    weights = [p.detach().clone() for p in model.parameters()]
    for loss in (1.0, None):  # one micro-batch of the window had a NaN/inf loss
        meter.add(loss, 4)
        model(torch.randn(4, 8000), torch.ones(4, 8000, dtype=torch.bool)).sum().backward()
    assert optimizer_step(accelerator, model, optimizer, None, meter, cfg) is False
    assert all(torch.equal(w, p) for w, p in zip(weights, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())  # zeroed for the next window
    meter.add(1.0, 4)
    model(torch.randn(4, 8000), torch.ones(4, 8000, dtype=torch.bool)).sum().backward()
    assert optimizer_step(accelerator, model, optimizer, None, meter, cfg) is True
    assert not all(torch.equal(w, p) for w, p in zip(weights, model.parameters(), strict=True))
