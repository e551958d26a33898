"""The reproduction report: `report.md` with PNG figures (matplotlib, Agg backend), each file written atomically.

Figures: per-tag test PR-AUC of every row, test PR curves of a few tags, the ensemble's alpha curve on validation,
training curves from each run's metrics.csv, and the pseudo-label counts of each student.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .atomic import atomic_path, atomic_write_text

if TYPE_CHECKING:
    from .reproduce import Results

N_CURVE_TAGS = 4


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> str:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(figure)
    return path.name


def _short(tag: str) -> str:
    return tag.rsplit("---", 1)[-1]


def per_tag_pr_auc_figure(results: "Results", path: Path) -> str:
    """One bar panel per row: test PR-AUC of every tag, tags in the same order in every panel."""
    plt = _pyplot()
    tags = list(results.rows[0].per_tag_pr_auc)
    figure, axes = plt.subplots(len(results.rows), 1, figsize=(max(8, 0.28 * len(tags)), 1.6 * len(results.rows) + 1),
                                sharex=True, squeeze=False, layout="constrained")
    for ax, row in zip(axes[:, 0], results.rows):
        values = [row.per_tag_pr_auc.get(tag, math.nan) for tag in tags]
        ax.bar(range(len(tags)), np.nan_to_num(values), color="tab:blue" if row.kind == "teacher" else "tab:orange")
        ax.set_ylim(0, 1)
        ax.set_ylabel("PR-AUC")
        ax.set_title(f"{row.name}  (macro {row.oracle['pr_auc_macro']:.3f})", fontsize=9, loc="left")
    axes[-1, 0].set_xticks(range(len(tags)), [_short(t) for t in tags], rotation=90, fontsize=7)
    return _save(figure, path)


def pr_curves_figure(results: "Results", curves: dict[str, tuple[np.ndarray, np.ndarray]], labels: np.ndarray,
                     tags: list[str], path: Path) -> str:
    """Test precision-recall curves of every row for the N_CURVE_TAGS most frequent tags."""
    from sklearn.metrics import precision_recall_curve

    plt = _pyplot()
    positives = labels.sum(axis=0).astype(np.int64)  # uint8 labels sum to an unsigned type that negation would wrap
    chosen = [tag for tag in np.argsort(-positives, kind="stable")[:N_CURVE_TAGS] if positives[tag] > 0]
    figure, axes = plt.subplots(1, len(chosen), figsize=(3.2 * len(chosen), 3.2), squeeze=False)
    for ax, tag in zip(axes[0], chosen):
        for name, scores in curves.items():
            precision, recall, _ = precision_recall_curve(labels[:, tag], scores[:, tag])
            ax.plot(recall, precision, label=name, linewidth=1)
        ax.set_title(_short(tags[tag]), fontsize=9)
        ax.set_xlabel("recall")
        ax.set_ylim(0, 1.02)
    axes[0, 0].set_ylabel("precision")
    axes[0, -1].legend(fontsize=6, loc="upper right")
    return _save(figure, path)


def alpha_figure(alpha: dict, path: Path) -> str:
    plt = _pyplot()
    grid = [point["alpha"] for point in alpha["curve"]]
    scores = [point["score"] for point in alpha["curve"]]
    figure, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(grid, scores, marker="o", markersize=3)
    ax.axvline(alpha["alpha"], color="tab:red", linestyle="--", label=f"alpha = {alpha['alpha']:.2f}")
    ax.set_xlabel("alpha (weight of the short model)")
    ax.set_ylabel(f"validation {alpha['metric']}")
    ax.legend(fontsize=8)
    return _save(figure, path)


def read_metrics_csv(path: Path) -> dict[str, list[tuple[float, float]]]:
    """Numeric columns of a metrics.csv as (epoch, value) points; empty cells are skipped."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    series: dict[str, list[tuple[float, float]]] = {}
    for number, row in enumerate(rows):
        epoch = _float(row.get("epoch"))
        epoch = number if epoch is None else epoch
        for key, value in row.items():
            number_value = _float(value)
            if key not in ("epoch", "step") and number_value is not None:
                series.setdefault(key, []).append((epoch, number_value))
    return series


def _float(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def training_curves_figure(runs: dict[str, Path], path: Path) -> str | None:
    """Losses (left) and validation ROC-AUC / PR-AUC (right) per epoch; one colour per run, one line style per metric."""
    plt = _pyplot()
    found = {name: run / "metrics.csv" for name, run in runs.items() if (run / "metrics.csv").is_file()}
    if not found:
        return None
    figure, (loss_ax, score_ax) = plt.subplots(1, 2, figsize=(11, 3.8))
    styles = {"train_loss": "-", "val_loss": "--", "val_roc_auc": "-", "val_pr_auc": "--"}
    for colour, (name, csv_path) in enumerate(found.items()):
        for key, points in read_metrics_csv(csv_path).items():
            if key not in styles:
                continue
            epochs, values = zip(*points)
            ax = loss_ax if key.endswith("loss") else score_ax
            ax.plot(epochs, values, styles[key], color=f"C{colour}", marker=".", linewidth=1,
                    label=name if key in ("train_loss", "val_roc_auc") else None)
    loss_ax.set_title("loss (solid: train, dashed: validation)", fontsize=9)
    score_ax.set_title("validation (solid: ROC-AUC, dashed: PR-AUC)", fontsize=9)
    for ax in (loss_ax, score_ax):
        ax.set_xlabel("epoch")
    score_ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(figure, path)


def pseudo_label_figure(stats: dict[str, dict], path: Path) -> str | None:
    """Confident positives and negatives per tag for each student's pseudo-labels."""
    if not stats:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(len(stats), 1, figsize=(10, 2.6 * len(stats) + 0.6), squeeze=False, layout="constrained")
    for ax, (name, counts) in zip(axes[:, 0], stats.items()):
        tags = counts["tags"]
        x = np.arange(len(tags))
        total = counts["positives"] + counts["negatives"] + counts["unknown"]
        ax.bar(x, counts["negatives"] / total, color="tab:gray", label="negative")
        ax.bar(x, counts["positives"] / total, bottom=counts["negatives"] / total, color="tab:green", label="positive")
        ax.set_ylim(0, 1)
        ax.set_ylabel("share of pool")
        ax.set_title(f"{name}: pseudo-labels", fontsize=9, loc="left")
        ax.set_xticks(x, [_short(t) for t in tags], rotation=90, fontsize=7)
    axes[0, 0].legend(fontsize=7)
    return _save(figure, path)


def read_counts(counts_tsv: Path) -> dict:
    """counts.tsv of a pseudo-labelling as arrays: tags, t_pos, t_neg, positives, negatives, unknown."""
    with open(counts_tsv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    values = {"tags": [r["tag"] for r in rows]}
    for key in ("t_pos", "t_neg"):
        values[key] = np.array([float(r[key]) for r in rows])
    for key in ("positives", "negatives", "unknown"):
        values[key] = np.array([int(r[key]) for r in rows])
    return values


def write_report(
    results: "Results",
    *,
    test_scores: dict[str, np.ndarray],
    test_labels: np.ndarray,
    tags: list[str],
    runs: dict[str, Path],
    pseudo_labels: dict[str, Path],
) -> Path:
    """Write `<out>/report/report.md` and its PNGs; returns the path of report.md.

    `test_scores` maps row name -> (n_test, n_tags) probabilities aligned with `test_labels`; `runs` maps row name ->
    run directory (for metrics.csv); `pseudo_labels` maps student row -> its pseudo-label folder (for counts.tsv).
    """
    # reproduce imports this module, so its table writer is imported here.
    from .reproduce import results_markdown

    folder = results.out_dir / "report"
    stats = {name: read_counts(p / "counts.tsv") for name, p in pseudo_labels.items() if (p / "counts.tsv").is_file()}
    figures = {
        "Per-tag test PR-AUC": per_tag_pr_auc_figure(results, folder / "per_tag_pr_auc.png"),
        "Test precision-recall curves of the most frequent tags":
            pr_curves_figure(results, test_scores, test_labels, tags, folder / "pr_curves.png"),
        "Ensemble: alpha on validation": alpha_figure(results.alpha, folder / "alpha.png") if results.alpha else None,
        "Training curves": training_curves_figure(runs, folder / "training_curves.png"),
        "Pseudo-labels per tag": pseudo_label_figure(stats, folder / "pseudo_labels.png"),
    }
    lines = [results_markdown(results)]
    lines += _pseudo_label_lines(stats)
    for title, name in figures.items():
        if name:
            lines += [f"## {title}", "", f"![{title}]({name})", ""]
    report = folder / "report.md"
    atomic_write_text(report, "\n".join(lines))
    return report


def _pseudo_label_lines(stats: dict[str, dict]) -> list[str]:
    if not stats:
        return []
    lines = ["## Pseudo-labels", "", "| student | tracks | positives | negatives | unknown | tags without labels |",
             "|---|---|---|---|---|---|"]
    for name, counts in stats.items():
        total = counts["positives"] + counts["negatives"] + counts["unknown"]
        n_tracks = int(total[0]) if len(total) else 0
        cells = [int(counts["positives"].sum()), int(counts["negatives"].sum()), int(counts["unknown"].sum())]
        share = [f"{c} ({100 * c / max(1, total.sum()):.1f} %)" for c in cells]
        silent = int(np.sum(counts["positives"] + counts["negatives"] == 0))
        lines.append(f"| {name} | {n_tracks} | " + " | ".join(share) + f" | {silent} |")
    return lines + [""]
