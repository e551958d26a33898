"""Work spread over processes and machines: shards of a track list, and a worker pool that survives crashes.

Shards: `shard_of(track_id, N)` is a stable hash, so N independent runs (`--shard i/N`, or `--shard auto` under
torchrun / SLURM) cover every track exactly once, on any machine.

The pool (`pool_map`, used by `moodtag extract` and the tagger): a decoder that segfaults or the out-of-memory killer
takes one worker process down, and with it the whole ProcessPoolExecutor. At most `in_flight` items are submitted at
a time, so the items a dead worker may have held are known: they are retried in a fresh pool, and an item in flight
at MAX_WORKER_CRASHES crashes is given up (`Crashed`), never the run.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Hashable, Iterable, Iterator, TypeVar

from .errors import ConfigError, DataError

Item = TypeVar("Item", bound=Hashable)
# An item in flight when a worker process died this many times is given up.
MAX_WORKER_CRASHES = 2
WORKER_DIED = "worker process died on this file (decoder crash or out of memory)"


class ShardError(ConfigError, DataError):
    """A `--shard` value that is not i/N with 0 <= i < N (a ConfigError; a DataError where callers caught that)."""


def shard_of(track_id: str, count: int) -> int:
    """The shard (0..count-1) a track belongs to: a stable hash of its id, the same on every machine and run."""
    digest = hashlib.sha1(track_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def parse_shard(text: str | None) -> tuple[int, int]:
    """"i/N" -> (i, N); None -> (0, 1), everything; "auto" reads RANK/WORLD_SIZE (torchrun) or
    SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT (or SLURM_PROCID/SLURM_NTASKS)."""
    if text is None:
        return 0, 1
    if text == "auto":
        return _shard_from_environment()
    index, sep, count = text.partition("/")
    try:
        if not sep:
            raise ValueError
        return check_shard((int(index), int(count)))
    except ValueError:
        raise ShardError(f"--shard {text!r}: expected i/N with 0 <= i < N, e.g. 0/4, or 'auto'") from None


def _shard_from_environment() -> tuple[int, int]:
    launchers = (("RANK", "WORLD_SIZE"), ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"),
                 ("SLURM_PROCID", "SLURM_NTASKS"))
    for rank, size in launchers:
        if rank in os.environ and size in os.environ:
            offset = int(os.environ.get("SLURM_ARRAY_TASK_MIN", 0)) if rank == "SLURM_ARRAY_TASK_ID" else 0
            return check_shard((int(os.environ[rank]) - offset, int(os.environ[size])))
    raise ShardError("--shard auto: none of RANK/WORLD_SIZE, SLURM_ARRAY_TASK_ID/COUNT, SLURM_PROCID/NTASKS is set")


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """`shard` itself when 0 <= i < N, else ShardError."""
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise ShardError(f"shard {index}/{count}: expected 0 <= i < N")
    return index, count



@dataclasses.dataclass(frozen=True)
class Crashed:
    """The outcome of an item whose worker process died MAX_WORKER_CRASHES times."""

    reason: str = WORKER_DIED


def pool_map(task: Callable, items: Iterable[Item], *, workers: int, in_flight: int | None = None,
             ordered: bool = False, while_waiting: Callable[[], object] | None = None) -> Iterator[tuple[Item, object]]:
    """(item, task(item) or Crashed) for every item; `workers` > 0 runs the task in that many spawned processes.

    items: read as work is submitted, so a long or lazily planned list starts at once.
    in_flight: items submitted at a time (default `workers`): what a crash can cost, and what may wait in memory.
    ordered: yield in input order (else as tasks finish; after a crash, finished items come before retried ones).
    while_waiting: called once, after the first items went to the workers and before waiting for them (in-process:
    before the first item), e.g. to load a model meanwhile. Workers run one thread each (`_init_worker`): the
    parallelism is the processes'.
    """
    pending = iter(items)
    if workers <= 0:
        for item in pending:
            if while_waiting is not None:
                while_waiting()
                while_waiting = None
            yield item, task(item)
        return
    retry: collections.deque = collections.deque()
    crashes: collections.Counter = collections.Counter()
    context = multiprocessing.get_context("spawn")  # fork after torch has started threads can deadlock
    exhausted = False
    while retry or not exhausted:
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
            running: dict[Future, Item] = {}  # in submission order
            try:
                while True:
                    while len(running) < (in_flight or workers) and (retry or not exhausted):
                        if retry:
                            item = retry.popleft()
                        else:
                            item = next(pending, _END)
                            if item is _END:
                                exhausted = True
                                break
                        running[pool.submit(task, item)] = item
                    if not running:
                        break
                    if while_waiting is not None:
                        while_waiting()
                        while_waiting = None
                    done = [next(iter(running))] if ordered else wait(running, return_when=FIRST_COMPLETED)[0]
                    for future in done:
                        result = future.result()
                        yield running.pop(future), result
            except BrokenProcessPool:
                again = []
                for future, item in running.items():
                    if future.done() and not future.cancelled() and future.exception() is None:
                        yield item, future.result()
                        continue
                    crashes[item] += 1
                    if crashes[item] >= MAX_WORKER_CRASHES:
                        yield item, Crashed()
                    else:
                        again.append(item)
                retry.extendleft(reversed(again))


_END = object()
# Thread pools a worker's libraries would start, one per core each (numpy's BLAS, torch's OpenMP and MKL).
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _init_worker() -> None:
    """One thread per library in each worker: the parallelism comes from the processes, and threads inside each
    would only fight over the same cores. Set in the environment for torch, should a task import it, and applied to
    the libraries already loaded (numpy's BLAS; torch, when the main module the worker re-imported loaded it)."""
    import sys

    from threadpoolctl import threadpool_limits

    for name in _THREAD_VARIABLES:
        os.environ[name] = "1"
    threadpool_limits(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
