"""Run one task per shard, in a process pool or in-process, with a progress bar.

A failing task stops the run: the workers are ended and the first error is
re-raised naming its shard (a pool that swallows worker exceptions hides broken data).
``ShardsError`` and ``OSError`` stay user-facing ``ShardsError``s (a full or read-only disk
as ``sccl.fileio.storage_problem``'s line, which names the file); anything else is a bug
and keeps its traceback chained. Workers die with their parent: a pool worker orphaned by a
kill -9 of the build would otherwise wait forever and could still rename a stale shard
into the directory while a later build works there.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import active_children
from typing import Any

from tqdm import tqdm

from sccl.fileio import storage_problem
from shards.errors import ShardsError

# A task: (shard name, positional args for fn, weight for the progress bar).
Task = tuple[str, tuple, int]


def _named_error(name: str, err: BaseException) -> Exception:
    storage = storage_problem(err)
    if storage:
        return ShardsError(storage)
    if isinstance(err, (ShardsError, OSError)):
        return ShardsError(f"shard {name}: {err}")
    return RuntimeError(f"shard {name} failed: {err!r}")


def run_tasks(fn: Callable[..., Any], tasks: list[Task], *, workers: int = 1,
              desc: str = "shards", unit: str = "file",
              progress: bool = True) -> Iterator[tuple[str, Any]]:
    """Yield (name, fn(*args)) for each task as soon as it finishes (completion order).

    ``workers`` <= 1 runs in this process (no pickling, plain tracebacks). ``progress``
    False hides the bar; True shows it only on a terminal (tqdm's ``disable=None``).
    """
    bar = tqdm(total=sum(t[2] for t in tasks), desc=desc, unit=unit,
               disable=None if progress else True, dynamic_ncols=True)
    try:
        if workers <= 1 or len(tasks) <= 1:
            for name, args, weight in tasks:
                try:
                    result = fn(*args)
                except Exception as err:
                    raise _named_error(name, err) from err
                bar.update(weight)
                yield name, result
        else:
            yield from _run_pool(fn, tasks, workers, bar)
    finally:
        bar.close()


def _die_with_parent(parent: int) -> None:
    """Pool initializer: exit when the parent process dies, and quietly on SIGTERM/SIGINT
    (a job's stop reaches every process; the parent records what finished and unwinds)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: watch from a thread instead
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _run_pool(fn, tasks: list[Task], workers: int, bar) -> Iterator[tuple[str, Any]]:
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), initializer=_die_with_parent,
                             initargs=(os.getpid(),)) as pool:
        pending = {pool.submit(fn, *args): (name, weight) for name, args, weight in tasks}
        try:
            while pending:
                # FIRST_COMPLETED: each result reaches the caller (who records it) as soon
                # as it exists; FIRST_EXCEPTION would hold every success until all finish.
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                # Report finished successes before any failure, so the caller records them.
                for fut in sorted(done, key=lambda f: f.exception() is not None):
                    name, weight = pending.pop(fut)
                    if fut.exception() is not None:
                        err = fut.exception()
                        raise _named_error(name, err) from err
                    bar.update(weight)
                    yield name, fut.result()
        except BaseException:
            # A failed shard, Ctrl-C or SIGTERM (shards.cli), or the caller stopping: end the
            # workers now rather than after their queued shards (their writes are atomic;
            # a resume clears the temporaries). Futures are not cancelled: the broken pool
            # fails them itself, and cancelling races with that inside concurrent.futures.
            for child in active_children():
                child.terminate()
            raise
