"""`moodtag ensemble SHORT_RUN LONG_RUN`: search alpha on validation and write the long/short ensemble's predictions."""
from __future__ import annotations

from pathlib import Path

from . import add_command


def register(subparsers) -> None:
    parser = add_command(
        subparsers, "ensemble", run=run,
        help="combine a short and a long run as alpha * short + (1 - alpha) * long, alpha searched on validation",
    )
    parser.add_argument("short_run", metavar="SHORT_RUN", help="run directory of the short-input model")
    parser.add_argument("long_run", metavar="LONG_RUN", help="run directory of the long-input model")
    parser.add_argument("--metric", choices=("roc_auc", "pr_auc"), default="roc_auc",
                        help="macro validation metric the alpha search maximises (default: roc_auc, as the paper)")
    parser.add_argument("--step", type=float, default=0.05, help="alpha grid step; must divide 1 (default: 0.05)")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: ensemble next to LONG_RUN)")


def run(args) -> int:
    from .. import ensemble

    short_run, long_run = Path(args.short_run), Path(args.long_run)
    out = Path(args.out) if args.out else long_run.parent / "ensemble"
    for member in (short_run, long_run):
        for split in ("validation", "test"):
            ensemble.ensure_predictions(member, split, quiet=args.quiet)
    search = ensemble.build_ensemble(short_run, long_run, out, metric=args.metric, step=args.step)
    for alpha, score in zip(search.grid, search.scores):
        marker = "  <- chosen" if alpha == search.alpha else ""
        print(f"alpha {alpha:.2f}  validation {search.metric} {score:.4f}{marker}")
    print(f"alpha = {search.alpha:.2f}; predictions in {out / 'predictions'}")
    return 0
