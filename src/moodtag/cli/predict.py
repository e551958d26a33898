"""`moodtag predict RUN --split test`: the run's best model's predictions for a split, written under RUN/predictions."""
from __future__ import annotations

import logging

from . import add_command

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = add_command(subparsers, "predict", help="predict a split with a trained run's best checkpoint", run=run)
    parser.add_argument("run_dir", metavar="RUN", help="run directory written by `moodtag train`")
    parser.add_argument("--split", action="append", required=True, metavar="SPLIT",
                        help="train, validation, test (the run's splits) or a split TSV path (repeatable)")
    parser.add_argument("--features", metavar="STORE", help="feature store (default: the run's training store)")
    parser.add_argument("--data-root", metavar="DIR", help="where the run's splits and store live now, if moved")
    parser.add_argument("--batch-size", type=int, metavar="N", help="tracks per batch (default: data.eval_batch_size)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (default: cpu)")
    parser.add_argument("--num-workers", type=int, default=0, metavar="N", help="data loader workers (default: 0)")
    parser.add_argument("--shard", metavar="I/N",
                        help="predict only shard I of N of each split (stable hash of the track id; 'auto' reads "
                             "RANK/WORLD_SIZE or SLURM's variables) into predictions/<split>.shard-I-of-N.npz; "
                             "`moodtag merge` joins the shards")


def run(args) -> int:
    from ..pool import parse_shard
    from ..training.run import predict_split

    shard = parse_shard(args.shard) if args.shard else (0, 1)
    status = 0
    for split in args.split:
        summary = predict_split(
            args.run_dir, split, store=args.features, data_root=args.data_root, batch_size=args.batch_size,
            device=args.device, num_workers=args.num_workers, progress=not args.quiet, shard=shard,
        )
        written = summary.get("part") or summary["probabilities"]
        if summary["missing"]:
            log.warning("%s: %d tracks have no features; listed in %s", split, len(summary["missing"]),
                        written if "part" in summary else written.with_name(f"{summary['split']}.missing.txt"))
            status = 1
        log.info("%s: %d tracks predicted", split, summary["tracks"])
        print(written)
    return status
