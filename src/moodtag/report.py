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
from .results import TABLE_METRICS

if TYPE_CHECKING:
    from .results import Finding, Results, SeedResults

N_CURVE_TAGS = 4

# Every summary metric of moodtag.evaluate.evaluate, as `moodtag evaluate` names it.
METRIC_LABELS = {
    "roc_auc_macro": "ROC-AUC (macro)",
    "pr_auc_macro": "PR-AUC (macro)",
    "roc_auc_micro": "ROC-AUC (micro)",
    "pr_auc_micro": "PR-AUC (micro)",
    "precision_macro": "precision (macro)",
    "recall_macro": "recall (macro)",
    "f1_macro": "F-score (macro)",
    "precision_micro": "precision (micro)",
    "recall_micro": "recall (micro)",
    "f1_micro": "F-score (micro)",
    "avg_tpr": "avg TPR",
    "avg_tnr": "avg TNR",
}


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
    """One bar panel per row: test PR-AUC of every tag with its 95 % bootstrap interval, tags in the same order."""
    plt = _pyplot()
    tags = list(results.rows[0].per_tag_pr_auc)
    figure, axes = plt.subplots(len(results.rows), 1, figsize=(max(8, 0.28 * len(tags)), 1.6 * len(results.rows) + 1),
                                sharex=True, squeeze=False, layout="constrained")
    for ax, row in zip(axes[:, 0], results.rows):
        values = np.nan_to_num([row.per_tag_pr_auc.get(tag, math.nan) for tag in tags])
        bounds = np.nan_to_num([row.per_tag_pr_auc_ci.get(tag, [math.nan, math.nan]) for tag in tags]).reshape(-1, 2)
        whiskers = np.clip([values - bounds[:, 0], bounds[:, 1] - values], 0, None) if row.per_tag_pr_auc_ci else None
        ax.bar(range(len(tags)), values, yerr=whiskers, error_kw={"elinewidth": 0.8, "capsize": 1.5},
               color="tab:blue" if row.kind == "teacher" else "tab:orange")
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


# ---------------------------------------------------------------------------------------------------------------
# Results tables (results.md, the report's opening, what `reproduce` and `demo` print)


def _number(value) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.4f}"


def _bounds(pair) -> str:
    if not pair or any(v is None or not math.isfinite(v) for v in pair):
        return ""
    return f" [{pair[0]:.3f}, {pair[1]:.3f}]"


def summary_table(columns: list[str], summaries: list[dict]) -> str:
    """Every METRIC_LABELS metric (rows) of each summary (columns), as `moodtag evaluate` prints them."""
    width = max(len(label) for label in METRIC_LABELS.values())
    widths = [max(len(column), 6) for column in columns]
    lines = ["  ".join([" " * width] + [column.rjust(w) for column, w in zip(columns, widths)])]
    for key, label in METRIC_LABELS.items():
        values = [f"{summary[key]:.4f}".rjust(w) for summary, w in zip(summaries, widths)]
        lines.append("  ".join([label.ljust(width)] + values))
    return "\n".join(lines)


def _metrics_header() -> list[str]:
    return ["| model | " + " | ".join(title for _, title in TABLE_METRICS) + " |", "|---" * (len(TABLE_METRICS) + 1) + "|"]


def results_table(results: "Results", *, thresholds: str = "oracle", paper: bool = True) -> str:
    """Markdown table of Table 1 + 2 columns with 95 % bootstrap intervals in brackets; `thresholds` is "oracle" or
    "tuned"; the paper's values in parentheses."""
    lines = _metrics_header()
    for row in results.rows:
        metrics, intervals = getattr(row, thresholds), getattr(row, f"{thresholds}_ci")
        cells = []
        for key, _ in TABLE_METRICS:
            cell = _number(metrics.get(key)) + _bounds(intervals.get(key))
            if paper and row.paper and key in row.paper:
                cell += f" ({row.paper[key]:.4f})"
            cells.append(cell)
        lines.append(f"| {row.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def findings_table(findings: list["Finding"]) -> str:
    """Each claim of the paper on each metric: the measured difference, its paired 95 % interval, the verdict."""
    seeds = findings[0].seeds if findings else 1
    lines = ["| claim | metric | difference" + (f" (mean of {seeds} seeds)" if seeds > 1 else "") +
             " | 95 % interval | paper | holds? |", "|---|---|---|---|---|---|"]
    for f in findings:
        metric = dict(TABLE_METRICS)[f.metric]
        paper = "–" if f.paper_difference is None else f"{f.paper_difference:+.4f}"
        lines.append(f"| {f.claim} ({f.better} − {f.worse}) | {metric} | {f.difference:+.4f} | "
                     f"[{f.low:+.4f}, {f.high:+.4f}] | {paper} | {f.verdict} |")
    return "\n".join(lines)


FINDINGS_NOTE = ("Paired bootstrap over test tracks: both rows are scored on the same resamples, and a claim holds "
                 "when the whole 95 % interval of the difference lies on its side of zero (\"reversed\": on the other "
                 "side; \"not separated\": the interval contains zero).")


def results_markdown(results: "Results") -> str:
    paper = any(r.paper for r in results.rows)
    lines = [
        f"# Table 1 and 2 on {results.config_dir.name}" + (f", training seed {results.seed}" if results.seed is not None else ""),
        "",
        f"Test split ({results.rows[0].oracle.get('n_tracks', '?')} tracks), macro averages over tags, each with its "
        "95 % bootstrap interval over test tracks in brackets. Oracle thresholds (each tag's best F-score on test, "
        "the protocol of MediaEval and the paper)" + ("; the paper's values in parentheses." if paper else "."),
        "",
        results_table(results, thresholds="oracle"),
        "",
        "Thresholds tuned on validation (ROC-AUC and PR-AUC do not depend on thresholds):",
        "",
        results_table(results, thresholds="tuned", paper=False),
        "",
    ]
    if results.alpha:
        lines += [f"Ensemble alpha = {results.alpha['alpha']:.2f} (validation {results.alpha['metric']}).", ""]
    if results.findings:
        lines += ["## The paper's claims (and beyond the paper's, docs/beyond.md)", "", FINDINGS_NOTE, "",
                  findings_table(results.findings), ""]
    lines += _numerics_lines(results) + _transductive_lines(results)
    if results.failures:
        lines += ["Rows that did not finish:", ""] + [f"- {name}: {why}" for name, why in results.failures.items()]
    return "\n".join(lines) + "\n"


def _numerics_lines(results: "Results") -> list[str]:
    records = {_describe_numerics(r.numerics) for r in results.rows if r.numerics}
    if not records:
        return []
    described = "; ".join(sorted(records))
    return [f"Numerics of the trained rows: {described}.", ""]


def _describe_numerics(numerics: dict) -> str:
    return (f"precision {numerics.get('precision')}, {numerics.get('threads')} thread(s), "
            f"{numerics.get('cpu_capability')} kernels")


def _transductive_lines(results: "Results") -> list[str]:
    """Rows whose students trained on validation/test audio (`student.pool_includes_evaluation_audio`), and the
    ensemble when one of its members did: their test numbers are not comparable with an inductive pool's."""
    flagged = {r.name: r.pool for r in results.rows if r.pool and r.pool.get("includes_evaluation_audio")}
    if not flagged:
        return []
    lines = ["**Transductive pool** (the released code's setting, `student.pool_includes_evaluation_audio: true`):", ""]
    lines += [f"- {name}: {pool.get('evaluation_tracks', '?')} validation/test tracks were pseudo-labelled and trained on"
              for name, pool in flagged.items()]
    if results.ensemble_members and set(results.ensemble_members) & set(flagged):
        lines.append("- ensemble: through its member " + ", ".join(sorted(set(results.ensemble_members) & set(flagged))))
    return lines + [""]


def seeds_table(seed_results: "SeedResults") -> str:
    """Mean ± sd over seeds of every row's oracle test metrics."""
    summary = seed_results.summary()
    lines = _metrics_header()
    for name, metrics in summary.items():
        cells = [f"{m['mean']:.4f} ± {m['sd']:.4f}" if math.isfinite(m["sd"]) else _number(m["mean"])
                 for m in (metrics[key] for key, _ in TABLE_METRICS)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seeds_markdown(seed_results: "SeedResults") -> str:
    seeds = list(seed_results.per_seed)
    alphas = ", ".join(f"{r.alpha['alpha']:.2f}" for r in seed_results.per_seed.values() if r.alpha)
    lines = [
        f"# Table 1 and 2 on {seed_results.config_dir.name} over training seeds {', '.join(map(str, seeds))}",
        "",
        "Test split, oracle thresholds, mean ± standard deviation over the seeds (the corpus is the same for every "
        "seed; each seed's own table with intervals is in seed-<N>/results.md).",
        "",
        seeds_table(seed_results),
        "",
    ]
    if alphas:
        lines += [f"Ensemble alpha per seed: {alphas}.", ""]
    if seed_results.findings:
        lines += ["## The paper's claims (and beyond the paper's), all seeds", "",
                  FINDINGS_NOTE + " Here the difference of each resample is averaged over the seeds before the "
                  "interval is taken.", "", findings_table(seed_results.findings), ""]
    if seed_results.failures:
        lines += ["Rows that did not finish:", ""] + [f"- {name}: {why}" for name, why in seed_results.failures.items()]
    return "\n".join(lines) + "\n"
