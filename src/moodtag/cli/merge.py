"""`moodtag merge PARTS... --out OUT [--split TSV]`: join the outputs of `--shard i/N` runs, each track exactly once.

Parts are tag outputs (`moodtag tag --shard`), prediction / pseudo-label row files, or feature stores.

Exit status: 0 when merged; 2 when the parts do not cover the tracks exactly once (every offending track is listed on
stderr, nothing is written) or cannot be read.
"""
from __future__ import annotations

import logging

from . import add_command

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = add_command(
        subparsers, "merge", run=run,
        help="merge sharded outputs (tag outputs, prediction / pseudo-label row files, or feature stores) checking "
             "every track appears exactly once",
    )
    parser.add_argument("parts", nargs="+", metavar="PART",
                        help="tag outputs (.jsonl / .csv from `moodtag tag --shard`, with their .shard.json), row files "
                             "(.npz from `moodtag predict --shard`, pseudo-label parts/*.npz) or feature store folders "
                             "(from `moodtag extract --shard` onto separate disks)")
    parser.add_argument("--out", required=True, metavar="OUT",
                        help="merged file: for tag outputs, the parts' format (failures in OUT.failures.tsv); .npy "
                             "(predictions layout: OUT.npy probabilities, .logits.npy, .csv), .npz or .csv; or a "
                             "feature store folder when the parts are stores")
    parser.add_argument("--split", metavar="TSV",
                        help="split TSV: every track of it must be in exactly one part, none outside it, and rows "
                             "follow its order")


def run(args) -> int:
    from ..merge import MergeError, merge

    try:
        summary = merge(args.parts, args.out, split=args.split)
    except MergeError as err:
        for track, parts in err.duplicates.items():
            log.error("duplicate: %s in %s", track, ", ".join(parts))
        for track in err.missing:
            log.error("missing: %s", track)
        for track in err.unexpected:
            log.error("not in %s: %s", err.expected_from, track)
        for problem in err.shard_problems:
            log.error("%s", problem)
        raise
    if summary["kind"] == "tags":
        for track, reason in summary["failed"].items():
            log.warning("failed in its shard: %s (%s)", track, reason)
        log.info("merged %d tagged tracks%s", summary["tracks"],
                 "" if summary["checked"] else " (without manifests: only duplicates were checked)")
    elif summary["kind"] == "stores":
        for track, reason in summary["failed"].items():
            log.warning("not merged, extraction failed: %s (%s)", track, reason)
        log.info("merged %d tracks into %s (%d linked or copied)", summary["tracks"], args.out, summary["copied"])
    else:
        if summary["missing"]:
            log.warning("%d tracks have no features in their shard's store; listed in the output's missing list",
                        len(summary["missing"]))
        log.info("merged %d tracks", summary["tracks"])
    print(args.out)
    return 0
