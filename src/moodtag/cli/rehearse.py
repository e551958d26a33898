"""`moodtag rehearse --out DIR [--tracks N]`: `reproduce paper` at paper size on an MTG-Jamendo-shaped synthetic root."""
from __future__ import annotations

import sys

from . import add_command


def register(subparsers) -> None:
    from ..rehearse import DEFAULT_TRACKS

    parser = add_command(
        subparsers, "rehearse", run=run,
        help="write an MTG-Jamendo-shaped synthetic data root, extract it, run `reproduce paper` on it with a step "
             "budget, and print each row's status, size, memory and speed and each student's pool check",
    )
    parser.add_argument("--out", metavar="DIR", default="rehearsal", help="output folder (default: ./rehearsal)")
    parser.add_argument("--tracks", type=int, default=DEFAULT_TRACKS, metavar="N",
                        help=f"labelled tracks; the pool has N // 2 more (default: {DEFAULT_TRACKS})")


def run(args) -> int:
    from ..errors import ConfigError
    from ..rehearse import rehearsal_table, rehearse

    if args.tracks < 6:
        raise ConfigError(f"--tracks {args.tracks}: at least 6 labelled tracks (two per split)")
    summary = rehearse(args.out, tracks=args.tracks, quiet=args.quiet)
    print(rehearsal_table(summary))
    print(f"\n{summary['tracks']} labelled + {summary['pool_tracks']} pool tracks ({summary['audio_hours']} h), "
          f"{summary['wall_seconds']:.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in summary["seconds"].items()))
    failed = [row["row"] for row in summary["rows"] if row["status"] != "completed"
              or not row.get("pool_check", {"passed": True})["passed"]]
    for name in failed:
        print(f"moodtag: error: rehearsal row {name} failed or its pool check did not pass", file=sys.stderr)
    return 1 if failed else 0
