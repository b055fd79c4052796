"""Reading back a checkpoint's pickles without running code any of them may carry.

A pickle can name any Python callable to be called while it loads, and a run directory may
come from elsewhere (a colleague's copy, a download, an older sccl): a checkpoint must be
data, never code. A manifest proves nothing here (anyone can write a matching one). So every
pickle of a checkpoint is read with an allow-list before anything loads it for real:

- torch archives (``*.pkl``, ``*.bin``, ``*.pt``, ``*.pth``: Accelerate's RNG, optimizer,
  scheduler and sampler states, DeepSpeed's shards, the queue) with torch's weights-only
  unpickler (tensors, containers, numbers, strings) plus ``TORCH_GLOBALS``, the few other
  names these states hold (measured on the files sccl writes: numpy's RNG state, DeepSpeed's
  optimizer shards);
- the ``.metadata`` of torch.distributed.checkpoint (FSDP2), which DCP reads with plain
  ``pickle.load`` and which the weights-only unpickler cannot parse (protocol 4+), with an
  unpickler whose ``find_class`` knows only DCP's own record classes (``DCP_GLOBALS``).

A file that cannot be read so is damaged (``checkpoint_problem``). While Accelerate then
loads the states (``weights_only_loads``), every ``torch.load`` is forced weights-only too,
including the ones Accelerate and DeepSpeed make with ``weights_only=False`` (registered
objects such as the lr scheduler, DeepSpeed's shards).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import random
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

PICKLE_SUFFIXES = (".pkl", ".bin", ".pt", ".pth")  # what torch.save writes in a checkpoint
_RNG_FILE = re.compile(r"random_states_\d+\.pkl")

# name in a pickle -> (module, attribute) it stands for
TORCH_GLOBALS = {
    # Accelerate's random_states_N.pkl: numpy's RNG state (numpy 2 and numpy 1.26 names)
    "numpy.ndarray": ("numpy", "ndarray"),
    "numpy.dtype": ("numpy", "dtype"),
    "numpy._core.multiarray._reconstruct": ("numpy._core.multiarray", "_reconstruct"),
    "numpy.core.multiarray._reconstruct": ("numpy._core.multiarray", "_reconstruct"),
    # DeepSpeed's optimizer shards (ZeRO-2, ZeRO-3): plain records
    "deepspeed.runtime.fp16.loss_scaler.LossScaler":
        ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler":  # fp16 runs (not measured: GPU)
        ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
    "deepspeed.runtime.zero.config.ZeroStageEnum": ("deepspeed.runtime.zero.config",
                                                    "ZeroStageEnum"),
    "deepspeed.utils.tensor_fragment.fragment_address": ("deepspeed.utils.tensor_fragment",
                                                         "fragment_address"),
}
_DCP = "torch.distributed.checkpoint"
DCP_GLOBALS = {
    ("pathlib", "PosixPath"), ("pathlib._local", "PosixPath"), ("torch", "Size"),
    ("torch.serialization", "_get_layout"), (f"{_DCP}.filesystem", "_StorageInfo"),
    *((f"{_DCP}.metadata", name) for name in (
        "Metadata", "StorageMeta", "MetadataIndex", "TensorProperties", "TensorStorageMetadata",
        "ChunkStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING")),
}


class UnsafeFileError(ValueError):
    """A pickle names a global outside the allow-list: loading it could run code."""


def _foreign(path: Path, names: list[str]) -> UnsafeFileError:
    return UnsafeFileError(f"{path}: holds {', '.join(names)}, which no checkpoint of sccl "
                           "holds; not loaded, as loading it could run code")


def _resolve(names: list[str]) -> list[tuple[Any, str]]:
    """(object, name as written in the pickle) for allowed ``names``, for torch's safe_globals
    (imports DeepSpeed only for a file that names it)."""
    found = []
    for name in names:
        module, attr = TORCH_GLOBALS[name]
        found.append((getattr(importlib.import_module(module), attr), name))
    if "numpy.dtype" in names:  # torch sets a dtype's state only if its class is allowed too:
        found.append((type(np.dtype(np.uint32)), "numpy.dtypes.UInt32DType"))  # MT19937's key
    return found


def load(path: Path, mmap: bool = False) -> Any:
    """``torch.load`` of the torch archive ``path`` (to the CPU), weights only plus
    ``TORCH_GLOBALS``; ``UnsafeFileError`` when it names anything else. ``mmap`` maps the
    tensor data instead of reading it (a check of a multi-GB optimizer state)."""
    names = torch.serialization.get_unsafe_globals_in_checkpoint(path)  # reads data.pkl only
    if foreign := sorted(n for n in names if n not in TORCH_GLOBALS):
        raise _foreign(path, foreign)
    with torch.serialization.safe_globals(_resolve(names)):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


class _DcpMetadataUnpickler(pickle.Unpickler):
    """Unpickler of DCP's ``.metadata``: globals from ``DCP_GLOBALS`` and torch's dtypes only
    (the pickle calls nothing else; what these are called with is data)."""

    def __init__(self, file, path: Path) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in DCP_GLOBALS or (  # no getattr: torch imports lazily by name
                module == "torch" and isinstance(vars(torch).get(name), torch.dtype)):
            return super().find_class(module, name)
        raise _foreign(self.path, [f"{module}.{name}"])


def load_dcp_metadata(path: Path) -> Any:
    with open(path, "rb") as f:
        return _DcpMetadataUnpickler(f, path).load()


def check_rng_states(states: Any) -> None:
    """Raise unless every random stream of Accelerate's ``states`` can be set from it: a state
    Accelerate cannot set it skips with a log line at info level, and the run goes on with
    other random numbers. Sets fresh generators, never the process's."""
    if not isinstance(states, dict):
        raise TypeError(f"a {type(states).__name__}, not a dict")
    random.Random().setstate(states["random_state"])
    np.random.RandomState().set_state(states["numpy_random_seed"])
    torch.Generator().set_state(states["torch_manual_seed"])
    for key, value in states.items():  # device streams (CUDA): one uint8 state per device
        if key.endswith("_manual_seed") and key != "torch_manual_seed":
            values = value if isinstance(value, list | tuple) else [value]
            if not all(isinstance(v, torch.Tensor) and v.dtype == torch.uint8 for v in values):
                raise TypeError(f"{key} is not a generator state")
    if not isinstance(states.get("step", 0), int):
        raise TypeError("step is not an int")


def rng_restored(path: Path) -> str | None:
    """None when this process's CPU random streams (Python, numpy, torch) now hold the states
    in ``path`` (Accelerate's ``random_states_<rank>.pkl``, just loaded), else what differs.
    Accelerate skips a state it cannot set with a log line at info level, also when the file
    changed after it was checked: comparing afterwards is what makes that skip loud."""
    states = load(path)
    streams = [("Python", random.getstate() == tuple(states["random_state"])),
               ("torch", torch.equal(torch.get_rng_state(), states["torch_manual_seed"]))]
    mine = np.random.get_state()
    saved = states["numpy_random_seed"]
    streams.append(("numpy", mine[0] == saved[0] and np.array_equal(mine[1], saved[1])
                    and tuple(mine[2:]) == tuple(saved[2:])))
    # CUDA streams are not compared: a requeue may see another number of devices per
    # process (the saved ones are still checked to be generator states, check_rng_states).
    lost = [name for name, ok in streams if not ok]
    return f"{path}: the {', '.join(lost)} random state was not restored" if lost else None


def file_problem(path: Path) -> str | None:
    """None when ``path`` is no pickle or reads back as data (an RNG state: one that can be
    set), else ``"<path>: <what is wrong>"``."""
    if path.name != ".metadata" and path.suffix not in PICKLE_SUFFIXES:
        return None
    try:
        state = load_dcp_metadata(path) if path.name == ".metadata" else load(path, mmap=True)
    except UnsafeFileError as e:
        return str(e)
    except Exception as e:  # any parse failure means damage; the kind is in the message
        return f"{path}: unreadable ({type(e).__name__})"
    if _RNG_FILE.fullmatch(path.name):
        try:
            check_rng_states(state)
        except Exception as e:  # whatever setting it raises, Accelerate would skip the state
            return f"{path}: not a usable random state ({_first_line(e)})"
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def checkpoint_problem(ckpt: Path) -> str | None:
    """The first file of ``ckpt`` that ``file_problem`` finds wrong, or None."""
    for path in sorted(p for p in ckpt.rglob("*") if p.is_file()):
        if problem := file_problem(path):
            return problem
    return None


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Within the block every ``torch.load`` is weights-only with ``TORCH_GLOBALS`` (those of
    modules already imported), whatever its caller asks: torch reads
    ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` at each call (torch 2.11), and it overrides an explicit
    ``weights_only=False``. The environment is restored on exit."""
    names = [n for n, (module, _) in TORCH_GLOBALS.items() if module.split(".")[0] in sys.modules]
    saved = {k: os.environ.pop(k, None)
             for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(_resolve(names)):
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
