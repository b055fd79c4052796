"""Per-GPU memory of one Stage 1 training step, COMPUTED (no GPU involved), by strategy.

    python bench/memory_table.py                                 # README table: 300M/1B/2B,
                                                                 # 4 s and 10 s, batch 16, 2 GPUs
    python bench/memory_table.py --world-sizes 2 8 --json bench/results/memory.json
    python bench/memory_table.py --models tiny --crops 1 --batch 2      # seconds, for a check

Per GPU = model states (computed from the exact parameter count) + the peak of everything else
during forward + backward (measured on fake tensors), or the optimizer step's temporaries when
those are larger (they are alive only once the activations are freed).

Model states, from the parameter count P of the preset (built on the meta device), N GPUs:
  DDP     fp32 weights 4P + fp32 grads 4P + AdamW exp_avg/exp_avg_sq 8P + DDP's gradient
          buckets 4P (a second copy of the grads: Accelerate's default gradient_as_bucket_view
          False). Analytic.
  ZeRO-2  DeepSpeed 0.19's own estimator, estimate_zero2_model_states_mem_needs(P, N,
          cpu_offload=False): bf16 weights 2P + (bf16 and fp32 grads, fp32 master weights,
          Adam) 18P / N.
  ZeRO-3  DeepSpeed 0.19's estimate_zero3_model_states_mem_needs(P, largest module, N,
          cpu_offload=False, zero_init=True): 18P / N + 4 bytes x the largest module's own
          parameters; plus (analytic, from DeepSpeed's coordinator) the gathered bf16 weights
          kept for reuse: a parameter met again within stage3_max_reuse_distance parameters
          of the trace is not released, so at the forward/backward turn the last
          min(P, reuse / 2) parameters stay gathered (2 bytes each; 1e9 in launch/ds_zero3.json).
  FSDP    FSDP2 (Accelerate, one unit per encoder layer, bf16 param/reduce dtype): sharded fp32
          weights, grads and Adam 16P / N; plus, unsharded in bf16, the root unit (everything
          outside the encoder layers, gathered again for all of backward), two layers (current
          and prefetched) and one layer's gradient before its reduce-scatter. Analytic.

Activations and temporaries, measured: the full architecture runs one forward, the projection
head, the SupCon loss (with a queue) and backward at the real batch and crop inside
torch's FakeTensorMode (shapes and dtypes only, no data: seconds on a CPU); a dispatch mode adds
up every storage created and freed and keeps the peak, leaving out the parameters and their
accumulated gradients (those are model states). Each strategy runs the model as it does:
DDP fp32 weights under bf16 autocast (the bf16 weight copies autocast makes are counted),
ZeRO bf16 weights without autocast (DeepSpeed bf16), FSDP bf16 weights under autocast. Three
CUDA behaviours are reproduced because the CPU differs: layer_norm runs in fp32 under autocast
(CUDA's autocast policy; CPU's keeps bf16), dropout keeps a bool mask (CUDA's fused kernel; CPU
keeps a mask of the input's dtype), and attention is the dropout-free fused kernel (CPU's path
with attention dropout materialises the (B, heads, F, F) scores; CUDA's flash/efficient
kernels apply dropout in-kernel and keep only q, k, v, the output and a log-sum-exp). The
input is all valid (no padding mask: the fake tensors cannot follow its data-dependent
lengths; the (B, F, F) mask it would add is < 0.02 GiB at 10 s).

The AdamW step's temporaries are measured the same way (torch.optim.AdamW, foreach, on fake
fp32 tensors) as bytes per parameter element, and applied to what each strategy steps: all P
(DDP) or P / N (ZeRO, FSDP).

Not included (named, not estimated): the CUDA context and kernels' workspaces, the caching
allocator's fragmentation and reserve, NCCL's communication buffers, DeepSpeed's reduce and
all-gather buckets (reduce_bucket_size / allgather_bucket_size in launch/ds_zero*.json), FSDP's
reduce-scatter staging beyond one layer, the gradient-clipping norms, and the data loader.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
import weakref
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from sccl.fileio import atomic_write_json

SAMPLE_RATE = 16_000
GIB = 2**30
STRATEGIES = ("ddp", "zero2", "zero3", "fsdp")
LABELS = {"ddp": "DDP", "zero2": "ZeRO-2", "zero3": "ZeRO-3", "fsdp": "FSDP"}
# How each strategy runs the model: weight dtype, and whether bf16 autocast is on.
REGIMES = {"ddp": (torch.float32, True), "zero2": (torch.bfloat16, False),
           "zero3": (torch.bfloat16, False), "fsdp": (torch.bfloat16, True)}
# Nominal device capacities (decimal GB, as sold); a cell above one is marked.
DEVICES = {"H100 80 GB": 80e9, "H200 141 GB": 141e9}
DEFAULT_MODELS = ("xlsr-300m", "xlsr-1b", "xlsr-2b")
MODEL_LABELS = {"xlsr-300m": "300M", "xlsr-1b": "1B", "xlsr-2b": "2B"}


@dataclasses.dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of one model, the inputs of the model-state formulas."""

    total: int
    """Every parameter once (shared ones once)."""
    largest_module: int
    """Most parameters held directly by one module (DeepSpeed's "largest layer")."""
    layer: int
    """Parameters of the largest encoder layer (one FSDP unit)."""
    root: int
    """Parameters outside the encoder layers (FSDP's root unit)."""


def count_params(model: torch.nn.Module, layers: list[torch.nn.Module]) -> ParamCounts:
    """ParamCounts of ``model`` whose FSDP units are ``layers`` (works on the meta device)."""
    unique = {id(p): p.numel() for p in model.parameters()}
    per_module = [sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()]
    per_layer = [sum(p.numel() for p in layer.parameters()) for layer in layers]
    total = sum(unique.values())
    return ParamCounts(total, max(per_module), max(per_layer, default=0), total - sum(per_layer))


def model_states(strategy: str, counts: ParamCounts, world: int,
                 zero3_reuse: float = 1e9) -> dict[str, int]:
    """Bytes per GPU of weights, gradients, optimizer states and the buffers tied to them, by
    part (formulas: module docstring). The ZeRO parts come from DeepSpeed's estimators."""
    if world < 1:
        raise ValueError(f"world size must be >= 1, got {world}")
    p = counts.total
    if strategy == "ddp":
        return {"weights_fp32": 4 * p, "grads_fp32": 4 * p, "adam_fp32": 8 * p,
                "ddp_buckets": 4 * p}
    if strategy == "zero2":
        with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed logs its accelerator there
            from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
        _, gpu = estimate_zero2_model_states_mem_needs(p, num_gpus_per_node=world,
                                                       cpu_offload=False)
        return {"deepspeed_estimate": gpu}
    if strategy == "zero3":
        with contextlib.redirect_stdout(sys.stderr):
            from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        _, gpu, _ = estimate_zero3_model_states_mem_needs(
            p, counts.largest_module, num_gpus_per_node=world, cpu_offload=False, zero_init=True)
        return {"deepspeed_estimate": gpu, "gathered_for_reuse": 2 * min(p, int(zero3_reuse // 2))}
    if strategy == "fsdp":
        return {"sharded_fp32": 16 * p // world,
                "unsharded_bf16": 2 * counts.root + 2 * 2 * counts.layer + 2 * counts.layer}
    raise ValueError(f"unknown strategy {strategy!r}; one of {STRATEGIES}")


def stepped_elements(strategy: str, counts: ParamCounts, world: int) -> int:
    """Parameter elements the optimizer steps on one GPU: all (DDP) or this GPU's shard."""
    return counts.total if strategy == "ddp" else -(-counts.total // world)


def step_peak(states: int, activations: int, step_temporaries: int) -> int:
    """Per-GPU peak: model states plus the larger of the forward/backward peak and the optimizer
    step's temporaries (the activations are freed before the step)."""
    return states + max(activations, step_temporaries)


class PeakBytes(TorchDispatchMode):
    """Counts the bytes of every storage an op creates while active, until it is freed, and
    keeps the peak. The storages of ``outside`` (the parameters: a view of one, such as a
    transposed weight, is not new memory) are never counted; a gradient stops counting once
    ``exclude`` is called on it (it is a model state)."""

    def __init__(self, outside=()) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.ignored = {t.untyped_storage()._cdata for t in outside}
        self.now = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._add(t.untyped_storage())
        return out

    def _add(self, storage) -> None:
        key = storage._cdata  # one id per storage for its lifetime (views, in-place ops share it)
        if key in self.live or key in self.ignored:
            return
        self.live[key] = storage.nbytes()
        self.now += self.live[key]
        self.peak = max(self.peak, self.now)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.now -= self.live.pop(key, 0)

    def exclude(self, tensor: torch.Tensor) -> None:
        key = tensor.untyped_storage()._cdata
        self.ignored.add(key)
        self._free(key)


@contextlib.contextmanager
def cuda_like_kernels():
    """What a CUDA step keeps that CPU kernels would not (module docstring): layer_norm in fp32
    under autocast, bool dropout masks. Attention dropout is set to 0 by the caller."""
    layer_norm = F.layer_norm

    def layer_norm_fp32(x, shape, weight=None, bias=None, eps=1e-5):
        if not torch.is_autocast_enabled("cpu"):
            return layer_norm(x, shape, weight, bias, eps)
        with torch.autocast("cpu", enabled=False):
            return layer_norm(x.float(), shape, None if weight is None else weight.float(),
                              None if bias is None else bias.float(), eps)

    def fused_dropout(x, p=0.5, training=True, inplace=False):
        return torch.native_dropout(x, p, True)[0] if training and p > 0 else x

    with mock.patch.object(F, "layer_norm", layer_norm_fp32), \
            mock.patch.object(F, "dropout", fused_dropout):
        yield


def build_fake_model(name: str, weight_dtype: torch.dtype, checkpointing: bool):
    """SupConModel of preset ``name`` with fake weights of ``weight_dtype`` (call inside a
    FakeTensorMode), attention dropout 0 (see cuda_like_kernels), in train mode."""
    from sccl.model import ModelConfig, SupConModel, encoder_config

    cfg = ModelConfig(encoder=name, gradient_checkpointing=checkpointing)
    conf = encoder_config(cfg)
    conf.attention_dropout = 0.0
    default = torch.get_default_dtype()
    torch.set_default_dtype(weight_dtype)  # module.to(dtype) cannot swap fake parameters
    try:
        model = SupConModel(cfg, encoder_config=conf.to_dict())
    finally:
        torch.set_default_dtype(default)
    return model.train()


def activation_peak(name: str, strategy: str, *, batch: int, samples: int, checkpointing: bool,
                    queue_size: int) -> int:
    """Peak bytes besides weights and gradients over one forward + loss + backward of preset
    ``name`` as ``strategy`` runs it (REGIMES), measured on fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from sccl.losses import supcon_loss

    weight_dtype, autocast = REGIMES[strategy]
    with FakeTensorMode(), cuda_like_kernels():
        model = build_fake_model(name, weight_dtype, checkpointing)
        tracker = PeakBytes(outside=model.parameters())
        for p in model.parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(lambda q: tracker.exclude(q.grad))
        with tracker:
            wave = torch.randn(batch, samples)
            labels = torch.arange(batch) % 2
            queue_z = F.normalize(torch.randn(queue_size, model.cfg.proj_dim), dim=1)
            queue_labels = torch.arange(queue_size) % 2
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                z = model(wave, None)
            loss = supcon_loss(z.float(), labels, temperature=0.3, queue_z=queue_z,
                               queue_labels=queue_labels)
            loss.backward()
        return tracker.peak


def adamw_temporaries_per_element(numel: int = 1 << 20, tensors: int = 4) -> float:
    """Peak temporary bytes of one torch.optim.AdamW step (foreach, as on CUDA) per fp32
    parameter element, measured on fake tensors (its state, created lazily, is excluded)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        params = [torch.nn.Parameter(torch.zeros(numel)) for _ in range(tensors)]
        for p in params:
            p.grad = torch.zeros(numel)
        opt = torch.optim.AdamW(params, foreach=True)
        opt.step()  # first step creates exp_avg / exp_avg_sq: not temporaries
        tracker = PeakBytes(outside=[*params, *(t for p in params for t in opt.state[p].values())])
        with tracker:
            opt.step()
        return tracker.peak / (numel * tensors)


def preset_counts(name: str) -> ParamCounts:
    """ParamCounts of preset ``name``'s SupConModel, built on the meta device."""
    from sccl.model import ModelConfig, SupConModel

    with torch.device("meta"):
        model = SupConModel(ModelConfig(encoder=name))
    return count_params(model, list(model.encoder.encoder.layers))


def table_rows(models, crops, *, batch: int, worlds, queue_size: int, zero3_reuse: float,
               log=print) -> list[dict]:
    """One row per model x crop x activation checkpointing, with every strategy's bytes per
    GPU at every world size (parts and total)."""
    adam = adamw_temporaries_per_element()
    rows = []
    for name in models:
        counts = preset_counts(name)
        for crop in crops:
            for checkpointing in (False, True):
                start = time.perf_counter()
                measured: dict[tuple, int] = {}  # ZeRO-2 and ZeRO-3 run the model alike
                for strategy in STRATEGIES:
                    if REGIMES[strategy] not in measured:
                        measured[REGIMES[strategy]] = activation_peak(
                            name, strategy, batch=batch, samples=round(crop * SAMPLE_RATE),
                            checkpointing=checkpointing, queue_size=queue_size)
                acts = {s: measured[REGIMES[s]] for s in STRATEGIES}
                log(f"{name} {crop:g} s checkpointing={checkpointing}: measured in "
                    f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
                rows.append({
                    "model": name, "params": dataclasses.asdict(counts), "crop_s": crop,
                    "batch_per_gpu": batch, "checkpointing": checkpointing, "activations": acts,
                    "per_gpu": {str(w): {s: per_gpu(s, counts, w, acts[s], adam, zero3_reuse)
                                         for s in STRATEGIES} for w in worlds}})
    return rows


def per_gpu(strategy: str, counts: ParamCounts, world: int, activations: int,
            adam_per_element: float, zero3_reuse: float) -> dict[str, Any]:
    """One cell: model states by part, activations, optimizer-step temporaries, total bytes."""
    states = model_states(strategy, counts, world, zero3_reuse)
    step = round(adam_per_element * stepped_elements(strategy, counts, world))
    return {"model_states": states, "activations": activations, "optimizer_step": step,
            "total": step_peak(sum(states.values()), activations, step)}


def markdown(rows: list[dict], world: int) -> str:
    """The README table for one world size: GiB per GPU, cells over each device marked."""
    marks = "".join(f" {'*' * (i + 1)}: over {name} ({cap / GIB:.1f} GiB)."
                    for i, (name, cap) in enumerate(DEVICES.items()))
    lines = [f"Per-GPU GiB, {world} GPUs, batch {rows[0]['batch_per_gpu']} per GPU, bf16 "
             f"(computed).{marks}", "",
             "| model | crop | act. ckpt | " + " | ".join(LABELS[s] for s in STRATEGIES) + " |",
             "| --- | --- | --- |" + " ---: |" * len(STRATEGIES)]
    for row in rows:
        cells = []
        for s in STRATEGIES:
            total = row["per_gpu"][str(world)][s]["total"]
            over = sum(total > cap for cap in DEVICES.values())
            cells.append(f"{total / GIB:.1f}{'*' * over}")
        model = MODEL_LABELS.get(row["model"], row["model"])
        lines.append(f"| {model} | {row['crop_s']:g} s | {'on' if row['checkpointing'] else 'off'}"
                     f" | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                        help="sccl.model presets (default: %(default)s)")
    parser.add_argument("--crops", nargs="+", type=float, default=[4.0, 10.0],
                        help="crop lengths in seconds at 16 kHz (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=16, help="clips per GPU (default: 16)")
    parser.add_argument("--world-sizes", nargs="+", type=int, default=[2],
                        help="GPUs the states are sharded over (default: 2)")
    parser.add_argument("--queue-size", type=int, default=4096,
                        help="SupCon queue entries in the loss (default: 4096)")
    parser.add_argument("--zero3-max-reuse", type=float, default=1e9,
                        help="stage3_max_reuse_distance of launch/ds_zero3.json (default: 1e9)")
    parser.add_argument("--json", help="also write every part of every cell here")
    args = parser.parse_args(argv)
    from sccl.model import PRESETS

    unknown = [m for m in args.models if m not in PRESETS]
    if unknown or args.batch < 1 or min(args.world_sizes) < 1 or min(args.crops) <= 0:
        parser.error(f"unknown presets {unknown}" if unknown else
                     "--batch and --world-sizes must be >= 1 and --crops > 0")
    start = time.perf_counter()
    rows = table_rows(args.models, args.crops, batch=args.batch, worlds=args.world_sizes,
                      queue_size=args.queue_size, zero3_reuse=args.zero3_max_reuse)
    print("\n\n".join(markdown(rows, w) for w in args.world_sizes))
    print(f"\ncomputed in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    if args.json:
        atomic_write_json(args.json, {"method": __doc__, "devices_bytes": DEVICES, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
