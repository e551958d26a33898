"""Work spread over processes and machines: shards of a track list, and a worker pool that survives crashes.

Shards: `shard_of(track_id, N)` is a stable hash, so N independent runs (`--shard i/N`, or `--shard auto` under
torchrun / SLURM) cover every track exactly once, on any machine.
"""
from __future__ import annotations

import hashlib
import os

from .errors import ConfigError, DataError


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
