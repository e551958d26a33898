"""`moodtag demo`: the synthetic corpus through every stage of the paper, ending with its Table 1."""
from __future__ import annotations

import sys

from . import add_command


def register(subparsers) -> None:
    from ..demo import DEMO_PRESETS

    parser = add_command(
        subparsers, "demo", run=run,
        help="generate the synthetic corpus, extract features, train every Table 1 row, ensemble, evaluate, "
             "export a tagger and tag a few tracks",
    )
    parser.add_argument("--out", metavar="DIR", default="moodtag-demo", help="output folder (default: ./moodtag-demo)")
    parser.add_argument("--preset", choices=tuple(DEMO_PRESETS), default="demo",
                        help="tiny: about a minute; demo: about twelve minutes on 2 CPU cores (default: demo)")
    parser.add_argument("--workers", type=int, metavar="N", help="processes for synthesis, extraction and training rows side by side (default: 2); "
                             "the results do not depend on it")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed (default: 0)")


def run(args) -> int:
    from ..demo import run_demo

    result = run_demo(args.out, preset=args.preset, workers=args.workers, seed=args.seed, quiet=args.quiet)
    print(result.table)
    print()
    for stage, seconds in result.timings.items():
        print(f"{stage:>10}  {seconds:7.1f} s")
    print(f"\nreport: {result.report}\nmodel:  {result.bundle}\ntags:   {result.tags}")
    print(f"tag your own music: moodtag tag PATH... --model {result.bundle}")
    for name, why in result.failures.items():
        print(f"moodtag: error: {name}: {why}", file=sys.stderr)
    return 1 if result.failures else 0
