"""`moodtag train CONFIG.yaml`: train one Table 1 row into its run directory."""
from __future__ import annotations

import logging

from . import add_command

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = add_command(subparsers, "train", help="train a teacher or student from a config YAML", run=run)
    parser.add_argument("config", metavar="CONFIG", help="config YAML, e.g. configs/demo/long-hpcp.yaml")
    parser.add_argument("--data-root", metavar="DIR", help="data root (splits, tag list, feature store); overrides data.root")
    parser.add_argument("--run-dir", metavar="DIR", help="run directory (default: the config's run_dir or runs/<name>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.max_epochs=3 (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from checkpoints/last.ckpt (a finished run is left alone)")
    parser.add_argument("--accelerator", choices=("auto", "cpu", "gpu", "cuda", "mps"), help="overrides train.accelerator")
    parser.add_argument("--devices", help="devices per node, a number or 'auto' (overrides train.devices)")
    parser.add_argument("--num-nodes", type=int, help="overrides train.num_nodes")
    parser.add_argument("--strategy", help="Lightning strategy, e.g. ddp (overrides train.strategy)")
    parser.add_argument("--precision", choices=("auto", "32", "bf16-mixed", "16-mixed"),
                        help="overrides train.precision; auto = bf16-mixed where the hardware has bf16, 16-mixed on "
                             "older GPUs, else 32")


def run(args) -> int:
    from ..config import load_config
    from ..training.run import global_rank, read_run_info, train

    hardware = {"accelerator": args.accelerator, "devices": args.devices, "num_nodes": args.num_nodes,
                "strategy": args.strategy, "precision": args.precision}
    overrides = list(args.overrides) + [f"train.{key}={value}" for key, value in hardware.items() if value is not None]
    config = load_config(args.config, overrides=overrides, data_root=args.data_root, run_dir=args.run_dir)
    run_dir = train(config, resume=args.resume, quiet=args.quiet)
    if global_rank() != 0:
        return 0  # the other DDP processes leave the report to rank 0
    info = read_run_info(run_dir)
    best = info.get("best") or {}
    log.info("%s: %s after %s epochs; best epoch %s, validation ROC-AUC %s, PR-AUC %s", config.name,
             info.get("status"), info.get("epochs"), info.get("best_epoch"), _fmt(best.get("val_roc_auc")),
             _fmt(best.get("val_pr_auc")))
    print(run_dir)
    return 0


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
