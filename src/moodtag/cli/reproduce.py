"""`moodtag reproduce CONFIG_DIR`: train, pseudo-label, ensemble and evaluate every Table 1 row, then report."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import add_command
from ..errors import ConfigError


def register(subparsers) -> None:
    parser = add_command(
        subparsers, "reproduce", run=run,
        help="run every Table 1 row of a config folder in dependency order and write results.md, results.json and a report",
    )
    parser.add_argument("config_dir", metavar="CONFIG_DIR",
                        help="folder of row configs, or the name of a shipped one: demo, paper")
    parser.add_argument("--data-root", metavar="DIR", help="corpus folder the configs' data paths are relative to")
    parser.add_argument("--out", metavar="DIR", default="reproduce",
                        help="where runs, results and the report go (default: ./reproduce)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override applied to every row, e.g. --set train.max_epochs=2 (repeatable)")
    parser.add_argument("--ensemble", metavar="SHORT,LONG", default="short-hpcp,long-hpcp-noisy",
                        help="the two rows to ensemble (default: short-hpcp,long-hpcp-noisy, as the paper's "
                             "released ensemble); 'none' to skip")
    parser.add_argument("--seeds", metavar="S,S,...", type=_seeds,
                        help="repeat every row with these training seeds (train.seed), each under OUT/seed-S, and "
                             "write the mean ± sd table and the claims over all seeds to OUT/results.md")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="rows trained at once, each in its own process (default: 1); the results do not "
                             "depend on it")
    parser.add_argument("--alpha-metric", choices=("roc_auc", "pr_auc"), default="roc_auc",
                        help="validation metric of the alpha search (default: roc_auc)")


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: a seed appears twice")
    return seeds


def run(args) -> int:
    from ..report import findings_table, results_table, seeds_table
    from ..reproduce import EnsembleSpec, reproduce

    spec = None
    if args.ensemble != "none":
        members = args.ensemble.split(",")
        if len(members) != 2 or not all(members):
            raise ConfigError(f"--ensemble {args.ensemble!r}: expected SHORT,LONG row names or 'none'")
        spec = EnsembleSpec(short=members[0], long=members[1], metric=args.alpha_metric)
    results = reproduce(args.config_dir, data_root=args.data_root, out_dir=Path(args.out), overrides=args.overrides,
                        ensemble=spec, seeds=args.seeds, jobs=args.jobs, quiet=args.quiet)
    print(seeds_table(results) if args.seeds else results_table(results))
    print("\n" + findings_table(results.findings))
    print(f"\nresults: {results.out_dir / 'results.md'}")
    for name, why in results.failures.items():
        print(f"moodtag: error: {name}: {why}", file=sys.stderr)
    return 1 if results.failures else 0
