"""`moodtag evaluate`: score prediction files against ground truth the way MediaEval does."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np

from . import add_command
from ..errors import ConfigError, MoodtagError

logger = logging.getLogger(__name__)

def register(subparsers) -> None:
    parser = add_command(
        subparsers, "evaluate", help="score predictions with the MediaEval Emotions and Themes metrics", run=run
    )
    parser.add_argument("--ground-truth", required=True, metavar="GT",
                        help="split TSV (MTG-Jamendo format) or 0/1 .npy matrix (tracks x tags)")
    parser.add_argument("--predictions", required=True, nargs="+", metavar="PRED",
                        help=".npy probabilities (rows in ground-truth order) or CSV/TSV with a track_id column")
    parser.add_argument("--tags", metavar="TAGFILE",
                        help="tag list, one per line, giving the column order (default: the TSV's tags, sorted)")
    parser.add_argument("--thresholds", default="oracle", metavar="oracle|FILE",
                        help="'oracle' tunes each tag's threshold on the evaluated set (the task's way); "
                             "FILE applies thresholds saved earlier (default: oracle)")
    parser.add_argument("--save-thresholds", metavar="FILE",
                        help="tune thresholds on this set and save them (use with validation predictions)")
    parser.add_argument("--logits", action="store_true", help="predictions are logits; apply a sigmoid first")
    parser.add_argument("--per-tag", action="store_true", help="also print a table per tag")
    parser.add_argument("--json", action="store_true", help="print one JSON object per predictions file")


def run(args) -> int:
    from .. import evaluate as ev
    from ..data.splits import read_tag_list

    if args.save_thresholds and args.thresholds != "oracle":
        raise ConfigError("--save-thresholds tunes thresholds on the evaluated set; it cannot be used with --thresholds FILE")
    if args.save_thresholds and len(args.predictions) > 1:
        raise ConfigError("--save-thresholds needs exactly one predictions file")
    tags = read_tag_list(args.tags) if args.tags else None
    ground_truth = ev.load_ground_truth(args.ground_truth, tags=tags)
    if args.save_thresholds and ground_truth.tags is None:
        raise ConfigError("--save-thresholds needs tag names: give --tags with a .npy ground truth")
    thresholds = _thresholds(args, ground_truth)
    results, failures = [], 0
    for path in args.predictions:
        try:
            labels, scores = ev.validate(ground_truth.labels, ev.load_predictions(path, ground_truth),
                                         logits=args.logits)
            per_tag = ev.per_tag_metrics(labels, scores, thresholds=thresholds, tags=ground_truth.tags)
            summary = ev.summarize(labels, scores, per_tag, tags=ground_truth.tags)
        except MoodtagError as err:
            message = str(err)
            print(f"moodtag: error: {message if message.startswith(str(path)) else f'{path}: {message}'}",
                  file=sys.stderr)
            failures += 1
            continue
        results.append((path, summary, per_tag))
    if args.save_thresholds and results:
        ev.save_thresholds(args.save_thresholds, ground_truth.tags, results[0][2]["threshold"])
        logger.info("saved %d thresholds to %s", len(ground_truth.tags), args.save_thresholds)
    _report(args, ground_truth, results)
    return 1 if failures else 0


def _thresholds(args, ground_truth):
    from .. import evaluate as ev

    if args.thresholds == "oracle":
        return "oracle"
    if ground_truth.tags is None:
        raise ConfigError("--thresholds FILE needs tag names: give --tags with a .npy ground truth")
    return ev.load_thresholds(args.thresholds, ground_truth.tags)


def _names(ground_truth) -> list[str]:
    n_tags = ground_truth.labels.shape[1]
    return ground_truth.tags if ground_truth.tags is not None else [f"column_{i}" for i in range(n_tags)]


def _report(args, ground_truth, results) -> None:
    for path, summary, per_tag in results:
        if args.json:
            record = {"predictions": str(path), "ground_truth": str(args.ground_truth),
                      "thresholds": args.thresholds, **summary}
            if args.per_tag:
                record["per_tag"] = _per_tag_records(_names(ground_truth), per_tag)
            print(json.dumps(record, allow_nan=False))
    if args.json or not results:
        return
    from ..report import summary_table

    print(summary_table([Path(path).name for path, _, _ in results], [summary for _, summary, _ in results]))
    for path, summary, per_tag in results:
        if summary["skipped_tags"]:
            print(f"\n{path}: {len(summary['skipped_tags'])} tags not scored (no positives or no negatives): "
                  + ", ".join(summary["skipped_tags"]))
        if args.per_tag:
            print(f"\n{path} (thresholds: {args.thresholds})")
            print(_per_tag_table(_names(ground_truth), per_tag))


def _per_tag_records(names, per_tag) -> list[dict]:
    def number(value):
        return None if np.isnan(value) else round(float(value), 6)

    return [
        {"tag": name, "positives": int(per_tag["positives"][i]), "roc_auc": number(per_tag["roc_auc"][i]),
         "pr_auc": number(per_tag["pr_auc"][i]), "f1": number(per_tag["f1"][i]),
         "threshold": float(per_tag["threshold"][i])}
        for i, name in enumerate(names)
    ]


def _per_tag_table(names, per_tag) -> str:
    width = max(len("tag"), *(len(name) for name in names))
    lines = [f"{'tag'.ljust(width)}  positives  ROC-AUC   PR-AUC        F  threshold"]
    for i, name in enumerate(names):
        cells = [f"{per_tag[key][i]:.4f}" if not np.isnan(per_tag[key][i]) else "-" for key in ("roc_auc", "pr_auc", "f1")]
        lines.append(f"{name.ljust(width)}  {per_tag['positives'][i]:9d}  {cells[0]:>7}  {cells[1]:>7}  {cells[2]:>7}"
                     f"  {per_tag['threshold'][i]:9.6f}")
    return "\n".join(lines)
