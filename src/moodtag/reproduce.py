"""`moodtag reproduce`: every Table 1 row of a config folder, in dependency order, evaluated as the paper did.

A config folder (configs/demo, configs/paper) holds one YAML file per row; files starting with `_` are bases that
rows `extend`. Rows with a `student` section are noisy students of the row their `student.teacher` names. The run of
each row lives at `<out>/runs/<row>`; the steps are

    teachers (train, predict validation + test)
    -> pseudo-labels of the unlabelled pool by each student's teacher (in <teacher run>/pseudo-labels)
    -> students (train on labelled + pseudo-labelled tracks, predict) for `student.iterations` rounds, round k
       taught by round k-1 (round k > 1 runs at <out>/runs/<row>-iter<k>; the row reports the last round)
    -> the ensemble of two rows (the paper's: short-hpcp and long-hpcp-noisy, alpha searched on validation).

Each step is skipped when its output exists, so a rerun does no work and a killed run resumes. Every row is then
scored on the test split twice: with oracle thresholds (each tag's best F-score on test, as MediaEval and the paper
did) and with thresholds tuned on validation (what a deployed tagger can do). `results.json` / `results.md` hold the
columns of Table 1 (ROC-AUC, PR-AUC, F-score) and Table 2 (average TPR and TNR), with the paper's values beside ours
for the paper's configs.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from . import ensemble as ens
from . import evaluate as evaluation
from .atomic import atomic_write_text
from .config import RunConfig, load_config
from .errors import ConfigError, DataError, MoodtagError

log = logging.getLogger(__name__)

PACKAGED_CONFIGS = Path(__file__).parent / "configs"

# Table 1 and Table 2 of the paper (test set of MTG-Jamendo split 0). The paper prints its Table 2 short-model row as
# "short-normal", but those are the numbers of the released short-hpcp predictions (shared reference README), so
# they sit with short-hpcp here.
PAPER_RESULTS = {
    "baseline": {"roc_auc_macro": 0.7258, "pr_auc_macro": 0.1077, "f1_macro": 0.1656},
    "long-normal": {"roc_auc_macro": 0.7256, "pr_auc_macro": 0.1024, "f1_macro": 0.1578},
    "long-hpcp": {"roc_auc_macro": 0.7587, "pr_auc_macro": 0.1220, "f1_macro": 0.1854},
    "long-hpcp-noisy": {"roc_auc_macro": 0.7614, "pr_auc_macro": 0.1235, "f1_macro": 0.1833, "avg_tpr": 0.3645, "avg_tnr": 0.8851},
    "short-normal": {"roc_auc_macro": 0.7477, "pr_auc_macro": 0.1234, "f1_macro": 0.1855},
    "short-hpcp": {"roc_auc_macro": 0.7541, "pr_auc_macro": 0.1275, "f1_macro": 0.1864, "avg_tpr": 0.3842, "avg_tnr": 0.8737},
    "short-hpcp-noisy": {"roc_auc_macro": 0.7488, "pr_auc_macro": 0.1226, "f1_macro": 0.1804},
    "ensemble": {"roc_auc_macro": 0.7687, "pr_auc_macro": 0.1356, "f1_macro": 0.1978, "avg_tpr": 0.4099, "avg_tnr": 0.8671},
}
# The paper's row order; rows of other names follow in their own order.
PAPER_ORDER = list(PAPER_RESULTS)
TABLE_METRICS = (("roc_auc_macro", "ROC-AUC"), ("pr_auc_macro", "PR-AUC"), ("f1_macro", "F-score"),
                 ("avg_tpr", "avg TPR"), ("avg_tnr", "avg TNR"))
EVALUATED_SPLITS = ("validation", "test")


@dataclasses.dataclass
class EnsembleSpec:
    """Which two rows the ensemble combines, and how alpha is searched (section 2.6)."""

    name: str = "ensemble"
    short: str = "short-hpcp"
    long: str = "long-hpcp-noisy"
    metric: str = "roc_auc"
    step: float = ens.DEFAULT_STEP


@dataclasses.dataclass
class Row:
    """One Table 1 row: its config (None for the ensemble), its run directory, and what it depends on."""

    name: str
    kind: str  # "teacher", "student" or "ensemble"
    run_dir: Path
    config: RunConfig | None = None
    depends: tuple[str, ...] = ()


@dataclasses.dataclass
class RowResult:
    name: str
    kind: str
    run_dir: Path
    oracle: dict  # test metrics, per-tag thresholds that are best on test (the paper's protocol)
    tuned: dict  # test metrics, thresholds tuned on validation
    validation: dict  # ranking metrics on validation
    per_tag_pr_auc: dict[str, float]
    paper: dict | None

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["run_dir"] = str(self.run_dir)
        return values


@dataclasses.dataclass
class TestScores:
    """Every row's test probabilities next to the labels, for the report's curves."""

    tags: list[str]
    labels: np.ndarray
    scores: dict[str, np.ndarray]


@dataclasses.dataclass
class Results:
    """Every row's scores, and which steps did work in this invocation (none on a finished rerun)."""

    config_dir: Path
    out_dir: Path
    rows: list[RowResult]
    steps_run: list[str]
    alpha: dict | None = None
    test: TestScores | None = dataclasses.field(default=None, repr=False)
    failures: dict[str, str] = dataclasses.field(default_factory=dict)

    def row(self, name: str) -> RowResult:
        return next(r for r in self.rows if r.name == name)

    def to_dict(self) -> dict:
        return {
            "config_dir": str(self.config_dir),
            "rows": [r.to_dict() for r in self.rows],
            "alpha": self.alpha,
            "failures": self.failures,
        }

    def table(self, *, thresholds: str = "oracle", paper: bool = True) -> str:
        """Markdown table of Table 1 + 2 columns; `thresholds` is "oracle" or "tuned"; paper values in parentheses."""
        header = "| model | " + " | ".join(title for _, title in TABLE_METRICS) + " |"
        lines = [header, "|---" * (len(TABLE_METRICS) + 1) + "|"]
        for row in self.rows:
            metrics = getattr(row, thresholds)
            cells = []
            for key, _ in TABLE_METRICS:
                cell = _number(metrics.get(key))
                if paper and row.paper and key in row.paper:
                    cell += f" ({row.paper[key]:.4f})"
                cells.append(cell)
            lines.append(f"| {row.name} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _number(value) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.4f}"


# ---------------------------------------------------------------------------------------------------------------
# Planning


def resolve_config_dir(config_dir: str | os.PathLike) -> Path:
    """A folder of row configs, or the name of one shipped with moodtag (`demo`, `paper`)."""
    path = Path(config_dir)
    if path.is_dir():
        return path
    packaged = PACKAGED_CONFIGS / str(config_dir)
    if packaged.is_dir() and not path.parent.name:
        return packaged
    shipped = ", ".join(sorted(p.name for p in PACKAGED_CONFIGS.iterdir() if p.is_dir()))
    raise ConfigError(f"{config_dir}: no such config folder (shipped: {shipped})")


def plan_rows(
    config_dir: Path,
    out_dir: Path,
    *,
    data_root: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    ensemble: EnsembleSpec | None = EnsembleSpec(),
) -> list[Row]:
    """Every row of `config_dir` in dependency order (teachers before their students), then the ensemble."""
    rows: dict[str, Row] = {}
    for path in sorted(config_dir.glob("*.yaml")):
        if path.name.startswith("_"):
            continue
        config = load_config(path, overrides=overrides, data_root=data_root, run_dir=out_dir / "runs" / path.stem)
        if config.data.root is None:
            raise ConfigError(f"{path}: data.root is not set; pass --data-root DIR (the corpus folder)")
        if config.name in rows:
            raise ConfigError(f"{path}: a second row named {config.name!r}")
        teacher = (config.student.teacher,) if config.student is not None else ()
        rows[config.name] = Row(config.name, "student" if teacher else "teacher", Path(config.run_dir), config, teacher)
    if not rows:
        raise ConfigError(f"{config_dir}: no row configs (*.yaml)")
    if ensemble is not None and ensemble.name not in rows:
        members = (ensemble.short, ensemble.long)
        absent = [m for m in members if m not in rows]
        if absent:
            log.warning("ensemble skipped: %s has no row %s", config_dir, ", ".join(absent))
        else:
            rows[ensemble.name] = Row(ensemble.name, "ensemble", out_dir / "runs" / ensemble.name, None, members)
    return _dependency_order(rows)


def _dependency_order(rows: dict[str, Row]) -> list[Row]:
    ordered: list[Row] = []
    state: dict[str, str] = {}

    def visit(name: str, needed_by: str) -> None:
        if name not in rows:
            raise ConfigError(f"row {needed_by!r} depends on {name!r}, which has no config")
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise ConfigError(f"rows depend on each other in a cycle through {name!r}")
        state[name] = "visiting"
        for dependency in rows[name].depends:
            visit(dependency, name)
        state[name] = "done"
        ordered.append(rows[name])

    for name in rows:
        visit(name, name)
    return ordered


# ---------------------------------------------------------------------------------------------------------------
# Running the steps


def reproduce(
    config_dir: str | os.PathLike,
    *,
    data_root: str | os.PathLike | None = None,
    out_dir: str | os.PathLike = "reproduce",
    overrides: Sequence[str] = (),
    ensemble: EnsembleSpec | None = EnsembleSpec(),
    quiet: bool = False,
) -> Results:
    """Run every row of `config_dir` that is not finished yet, evaluate all rows, write results and the report."""
    config_dir = resolve_config_dir(config_dir)
    out_dir = Path(out_dir).resolve()
    rows = plan_rows(config_dir, out_dir, data_root=data_root, overrides=overrides, ensemble=ensemble)
    steps_run: list[str] = []
    failures: dict[str, str] = {}
    for row in rows:
        blocked = [name for name in row.depends if name in failures]
        if blocked:
            failures[row.name] = f"not run because {', '.join(blocked)} failed"
            continue
        log.info("reproduce: %s (%s)", row.name, row.kind)
        try:
            steps_run += _run_row(row, {r.name: r for r in rows}, ensemble, quiet)
        except MoodtagError as err:
            # One row's bad data or config must not cost the rows that do not depend on it.
            log.error("%s: %s", row.name, err)
            failures[row.name] = str(err)
    finished = [row for row in rows if row.name not in failures]
    if not any(row.kind == "teacher" for row in finished):
        raise DataError(f"{config_dir}: no teacher row finished: " + "; ".join(f"{k}: {v}" for k, v in failures.items()))
    results = evaluate_rows(finished, config_dir, out_dir, steps_run, paper=config_dir.name == "paper")
    results.failures = failures
    write_results(results)
    _write_report(results, finished)
    return results


def _run_row(row: Row, by_name: dict[str, Row], spec: EnsembleSpec | None, quiet: bool) -> list[str]:
    if row.kind == "teacher":
        return _train_and_predict(row.config, quiet)
    if row.kind == "student":
        return _run_student(row, by_name[row.depends[0]], quiet)
    return _run_ensemble(row, by_name, spec)


def _completed(run_dir: Path) -> bool:
    info = run_dir / "run.json"
    return info.is_file() and json.loads(info.read_text()).get("status") == "completed"


def _train_and_predict(config: RunConfig, quiet: bool) -> list[str]:
    from .training import train

    done = []
    run_dir = Path(config.run_dir)
    was_completed = _completed(run_dir)
    # Called for finished runs too: it refuses a run made with other settings instead of reusing it silently.
    train(config, resume=True, quiet=quiet)
    if not was_completed:
        done.append(f"train {config.name}")
    for split in EVALUATED_SPLITS:
        if ens.ensure_predictions(run_dir, split, quiet=quiet):
            done.append(f"predict {run_dir.name} {split}")
    return done


def _run_student(row: Row, teacher: Row, quiet: bool) -> list[str]:
    """`student.iterations` rounds of pseudo-labelling and training; round k is taught by round k - 1."""
    from .training.pseudo_label import pseudo_label, student_pool_settings

    student = row.config.student
    done: list[str] = []
    rounds = _round_dirs(row)
    for run_dir, teacher_dir in zip(rounds, _teacher_dirs(row, teacher)):
        labels_dir = teacher_dir / "pseudo-labels"
        if not _completed(run_dir):
            if pseudo_label(teacher_dir, out_dir=labels_dir, quiet=quiet, **student_pool_settings(row.config)).ran:
                done.append(f"pseudo-label {teacher_dir.name}")
        config = dataclasses.replace(
            row.config, name=run_dir.name, run_dir=str(run_dir),
            student=dataclasses.replace(student, pseudo_labels=str(labels_dir / "labels.npz")),
        )
        done += _train_and_predict(config, quiet)
    return done


def _round_dirs(row: Row) -> list[Path]:
    """Run directories of a student's rounds; the last one is the row's own."""
    rounds = row.config.student.iterations
    return [row.run_dir.with_name(f"{row.name}-iter{k}") for k in range(1, rounds)] + [row.run_dir]


def _teacher_dirs(row: Row, teacher: Row) -> list[Path]:
    """The teacher of each round: the teacher row, then the previous round."""
    return [teacher.run_dir] + _round_dirs(row)[:-1]


def _run_ensemble(row: Row, by_name: dict[str, Row], spec: EnsembleSpec) -> list[str]:
    short_run, long_run = (by_name[name].run_dir for name in row.depends)
    if ens.is_finished(row.run_dir):
        return []
    ens.build_ensemble(short_run, long_run, row.run_dir, metric=spec.metric, step=spec.step)
    return [f"ensemble {row.name}"]


# ---------------------------------------------------------------------------------------------------------------
# Evaluation and output


def evaluate_row(row: Row, label_run: Path, *, paper: bool) -> tuple[RowResult, list[str], np.ndarray, np.ndarray]:
    """Score one row on test (oracle and validation-tuned thresholds); returns the result, tags, labels and scores."""
    splits = {}
    for split in EVALUATED_SPLITS:
        track_ids, tags, scores = ens.read_predictions(row.run_dir, split)
        splits[split] = (tags, ens.split_labels(label_run, split, track_ids, tags), scores)
    tags, y_val, s_val = splits["validation"]
    _, y_test, s_test = splits["test"]
    tuned_thresholds = evaluation.tune_thresholds(y_val, s_val)
    per_tag = evaluation.per_tag_metrics(y_test, s_test, thresholds=None, tags=tags)
    result = RowResult(
        name=row.name,
        kind=row.kind,
        run_dir=row.run_dir,
        oracle=_summary(evaluation.evaluate(y_test, s_test, thresholds="oracle", tags=tags)),
        tuned=_summary(evaluation.evaluate(y_test, s_test, thresholds=tuned_thresholds, tags=tags)),
        validation=_summary(evaluation.evaluate(y_val, s_val, thresholds=None, tags=tags)),
        per_tag_pr_auc={tag: float(v) for tag, v in zip(tags, per_tag["pr_auc"])},
        paper=PAPER_RESULTS.get(row.name) if paper else None,
    )
    return result, tags, y_test, s_test


def _summary(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if key in evaluation.SUMMARY_METRICS or key == "n_tracks"}


def evaluate_rows(rows: list[Row], config_dir: Path, out_dir: Path, steps_run: list[str], *, paper: bool) -> Results:
    """Score every row, in the paper's row order; the labels come from the first teacher's saved config."""
    label_run = next(row.run_dir for row in rows if row.kind == "teacher")
    order = {name: i for i, name in enumerate(PAPER_ORDER)}
    ranked = sorted(rows, key=lambda r: (order.get(r.name, len(order)), rows.index(r)))
    test: TestScores | None = None
    results = []
    for row in ranked:
        result, tags, labels, scores = evaluate_row(row, label_run, paper=paper)
        test = test or TestScores(tags, labels, {})
        test.scores[row.name] = scores
        results.append(result)
    alpha = next((json.loads((r.run_dir / "alpha.json").read_text()) for r in rows if r.kind == "ensemble"), None)
    return Results(config_dir, out_dir, results, steps_run, alpha, test)


def results_markdown(results: Results) -> str:
    lines = [
        f"# Table 1 and 2 on {results.config_dir.name}",
        "",
        "Test split, macro averages over tags. Oracle thresholds (each tag's best F-score on test, the protocol of "
        "MediaEval and the paper)" + ("; the paper's values in parentheses." if any(r.paper for r in results.rows) else "."),
        "",
        results.table(thresholds="oracle"),
        "",
        "Thresholds tuned on validation (ROC-AUC and PR-AUC do not depend on thresholds):",
        "",
        results.table(thresholds="tuned", paper=False),
        "",
    ]
    if results.alpha:
        lines.append(f"Ensemble alpha = {results.alpha['alpha']:.2f} (validation {results.alpha['metric']}).")
    if results.failures:
        lines += ["", "Rows that did not finish:", ""] + [f"- {name}: {why}" for name, why in results.failures.items()]
    return "\n".join(lines) + "\n"


def write_results(results: Results) -> None:
    atomic_write_text(results.out_dir / "results.json", json.dumps(_finite(results.to_dict()), indent=2) + "\n")
    atomic_write_text(results.out_dir / "results.md", results_markdown(results))


def _finite(value):
    """JSON has no NaN: undefined metrics become null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_report(results: Results, rows: list[Row]) -> Path:
    from .report import write_report

    by_name = {row.name: row for row in rows}
    pseudo_labels = {
        row.name: _teacher_dirs(row, by_name[row.depends[0]])[-1] / "pseudo-labels" for row in rows if row.kind == "student"
    }
    return write_report(
        results, test_scores=results.test.scores, test_labels=results.test.labels, tags=results.test.tags,
        runs={row.name: row.run_dir for row in rows if row.kind != "ensemble"}, pseudo_labels=pseudo_labels,
    )
