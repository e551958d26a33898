"""`moodtag extract`: compute mel + HPCP features of audio files into a feature store.

Exit status: 0 when every track was extracted or already present, 1 when any file failed (they are listed in
the store's failures.tsv), 2 on a usage or input error that stopped the run before it started.
"""
from __future__ import annotations

import logging
import sys

from . import add_command

logger = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = add_command(subparsers, "extract", help="extract mel + HPCP features into a feature store", run=run)
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="audio folder (recursive), list file (one path per line), split TSV (with "
                             "--audio-root) or audio file")
    parser.add_argument("--out", required=True, metavar="STORE", help="feature store folder (created if needed)")
    parser.add_argument("--audio-root", metavar="DIR",
                        help="folder a split TSV's PATH column (or a list file's relative paths) is relative to")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="processes decoding and computing features in parallel (default: 1)")
    parser.add_argument("--shard", default="0/1", metavar="I/N",
                        help="extract only shard I of N (stable hash of the track id), e.g. "
                             "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT; 'auto' reads RANK/WORLD_SIZE or SLURM's "
                             "variables (default: 0/1, everything)")
    parser.add_argument("--device", default="cpu", help="torch device for the mel front end (default: cpu)")


def run(args) -> int:
    from ..errors import ConfigError
    from ..extract import extract
    from ..pool import parse_shard

    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: expected at least 1")
    summary = extract(
        args.inputs,
        args.out,
        audio_root=args.audio_root,
        workers=args.workers,
        shard=parse_shard(args.shard),
        device=args.device,
        quiet=args.quiet,
    )
    print(f"moodtag extract: {summary.line()}")
    if summary.failed:
        logger.warning("%d files failed; see %s", summary.failed, summary.failures_path)
        return 1
    return 0
