"""`moodtag pseudo-label TEACHER_RUN --pool POOL_TSV`: the teacher's soft and hard labels for an unlabelled pool."""
from __future__ import annotations

from . import add_command
from ..training.pseudo_label import (
    CHUNK_TRACKS,
    MIN_TEACHER_AUC,
    PAPER_T_NEG,
    PAPER_T_POS,
    TARGET_NPV,
    TARGET_PRECISION,
)


def register(subparsers) -> None:
    parser = add_command(
        subparsers, "pseudo-label", run=run,
        help="predict an unlabelled pool with a teacher run and write pseudo-labels (1 / 0 / unknown) for a student",
    )
    parser.add_argument("teacher_run", metavar="TEACHER_RUN", help="run directory of the teacher")
    parser.add_argument("--pool", required=True, metavar="POOL_TSV", help="split TSV of the unlabelled tracks")
    parser.add_argument("--features", metavar="STORE", help="feature store of the pool (default: the teacher's)")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: TEACHER_RUN/pseudo-labels)")
    parser.add_argument("--shard", metavar="i/N",
                        help="predict only every N-th chunk of the pool starting at chunk i; the run that completes "
                             "the pool writes the labels")
    parser.add_argument("--chunk-tracks", type=int, default=CHUNK_TRACKS, metavar="N",
                        help=f"tracks per prediction chunk, the unit of resumption and sharding (default {CHUNK_TRACKS})")
    parser.add_argument("--thresholds", choices=("derived", "fixed", "precision"), default="derived",
                        help="derived: the paper's rule on the teacher's train + validation scores (default); "
                             "fixed: --t-pos / --t-neg; precision: per tag, the lowest t_pos whose validation "
                             "precision reaches --target-precision and the highest t_neg whose negative predictive "
                             "value reaches --target-npv")
    parser.add_argument("--scope", choices=("per-tag", "global"), default="per-tag",
                        help="derived thresholds per tag (default) or one pooled pair as the paper")
    parser.add_argument("--t-pos", type=float, default=PAPER_T_POS, help=f"fixed positive threshold (default {PAPER_T_POS})")
    parser.add_argument("--t-neg", type=float, default=PAPER_T_NEG, help=f"fixed negative threshold (default {PAPER_T_NEG})")
    parser.add_argument("--target-precision", type=float, default=TARGET_PRECISION,
                        help=f"precision rule: target precision (default {TARGET_PRECISION})")
    parser.add_argument("--target-npv", type=float, default=TARGET_NPV,
                        help=f"precision rule: target negative predictive value (default {TARGET_NPV})")
    parser.add_argument("--min-teacher-auc", type=float, default=MIN_TEACHER_AUC,
                        help=f"precision rule: tags whose teacher ROC-AUC on validation is lower get no labels "
                             f"(default {MIN_TEACHER_AUC})")


def run(args) -> int:
    from ..pool import parse_shard
    from ..training import pseudo_label as pl

    result = pl.pseudo_label(
        args.teacher_run, args.pool, store=args.features, out_dir=args.out, shard=parse_shard(args.shard),
        rule=args.thresholds, scope=args.scope, t_pos=args.t_pos, t_neg=args.t_neg,
        target_precision=args.target_precision, target_npv=args.target_npv, min_teacher_auc=args.min_teacher_auc,
        chunk_tracks=args.chunk_tracks, quiet=args.quiet,
    )
    if result is None:
        print(f"shard {args.shard} done; the labels are written once every chunk of the pool is predicted")
        return 0
    print(pl.format_counts(result.thresholds, result.targets))
    print(f"labels: {result.labels_path}")
    return 0
