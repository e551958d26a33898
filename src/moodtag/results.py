"""What `moodtag reproduce` measured: every row scored on the test split with 95 % bootstrap intervals, the paper's
claims checked with paired bootstrap intervals of row differences, and the summary over training seeds.

Each row is scored twice: with oracle thresholds (each tag's best F-score on test, as MediaEval and the paper did)
and with thresholds tuned on validation (what a deployed tagger can do). moodtag.report renders all of it.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from . import bootstrap
from . import rundir
from . import evaluate as evaluation
from .errors import DataError

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
# The paper's row order, then the multi-resolution rows beyond it (docs/beyond.md); rows of other names follow in
# their own order.
PAPER_ORDER = [*PAPER_RESULTS, "multires", "multires-recipe"]
TABLE_METRICS = (("roc_auc_macro", "ROC-AUC"), ("pr_auc_macro", "PR-AUC"), ("f1_macro", "F-score"),
                 ("avg_tpr", "avg TPR"), ("avg_tnr", "avg TNR"))
FINDING_METRICS = ("roc_auc_macro", "pr_auc_macro")
EVALUATED_SPLITS = ("validation", "test")


@dataclasses.dataclass(frozen=True)
class Claim:
    """A statement of the paper about two rows: `better` beats `worse` (sign +1) or loses to it (sign -1)."""

    text: str
    better: str
    worse: str
    sign: int = 1


def paper_claims(ensemble_members: tuple[str, str] | None) -> list[Claim]:
    """The paper's findings (sections 3-4) as row comparisons, the ensemble's against its two members, and the
    multi-resolution rows' beyond the paper; a claim is measured only where both its rows ran."""
    claims = [
        Claim("HPCP helps long input", "long-hpcp", "long-normal"),
        Claim("HPCP helps short input", "short-hpcp", "short-normal"),
        Claim("short input beats long input (mel only)", "short-normal", "long-normal"),
        Claim("noisy student helps long input", "long-hpcp-noisy", "long-hpcp"),
        Claim("noisy student hurts short input", "short-hpcp-noisy", "short-hpcp", -1),
    ]
    if ensemble_members:
        claims += [Claim(f"the ensemble beats {member}", "ensemble", member) for member in ensemble_members]
    # Beyond the paper (docs/beyond.md), measured where a config folder has the rows.
    claims += [
        Claim("one multi-resolution model beats the ensemble", "multires", "ensemble"),
        Claim("the recipe knobs help the multi-resolution model", "multires-recipe", "multires"),
    ]
    return claims


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
    oracle_ci: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # metric -> [low, high], 95 %
    tuned_ci: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    per_tag_pr_auc_ci: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    numerics: dict | None = None  # precision, threads and kernels the run trained with (its run.json)
    pool: dict | None = None  # a student's pool (its run.json): size, and whether it held validation/test audio

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["run_dir"] = str(self.run_dir)
        return values


@dataclasses.dataclass
class Finding:
    """A claim measured on one metric: the difference better - worse (mean over seeds), its paired interval."""

    claim: str
    metric: str
    better: str
    worse: str
    sign: int
    difference: float
    low: float
    high: float
    verdict: str
    paper_difference: float | None
    seeds: int


@dataclasses.dataclass
class TestScores:
    """Every row's test probabilities next to the labels, for the report's curves and the paired intervals."""

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
    findings: list[Finding] = dataclasses.field(default_factory=list)
    # Bootstrap values of each row's oracle metrics, on the resamples every row shares (for paired intervals).
    replicates: dict[str, dict] = dataclasses.field(default_factory=dict, repr=False)
    ensemble_members: tuple[str, str] | None = None
    seed: int | None = None

    def row(self, name: str) -> RowResult:
        return next(r for r in self.rows if r.name == name)

    def to_dict(self) -> dict:
        return {
            "config_dir": str(self.config_dir),
            "seed": self.seed,
            "bootstrap": {"resamples": bootstrap.N_RESAMPLES, "level": bootstrap.LEVEL, "seed": bootstrap.SEED},
            "rows": [r.to_dict() for r in self.rows],
            "alpha": self.alpha,
            "findings": [dataclasses.asdict(f) for f in self.findings],
            "failures": self.failures,
        }


@dataclasses.dataclass
class SeedResults:
    """`reproduce --seeds`: one Results per training seed, and every row's metrics and the claims over all seeds."""

    config_dir: Path
    out_dir: Path
    per_seed: dict[int, Results]
    findings: list[Finding]

    @property
    def failures(self) -> dict[str, str]:
        return {f"seed {seed}: {name}": why for seed, r in self.per_seed.items() for name, why in r.failures.items()}

    def summary(self) -> dict[str, dict[str, dict]]:
        """row -> metric -> {"mean", "sd", "values"} of the oracle test metrics over the seeds that finished it."""
        names = list(dict.fromkeys(row.name for r in self.per_seed.values() for row in r.rows))
        table = {}
        for name in names:
            rows = [r.row(name) for r in self.per_seed.values() if any(row.name == name for row in r.rows)]
            table[name] = {}
            for metric, _ in TABLE_METRICS:
                values = [row.oracle.get(metric, math.nan) for row in rows]
                sd = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
                table[name][metric] = {"mean": float(np.mean(values)), "sd": sd, "values": values}
        return table

    def to_dict(self) -> dict:
        return {
            "config_dir": str(self.config_dir),
            "seeds": list(self.per_seed),
            "rows": self.summary(),
            "alpha": {seed: r.alpha["alpha"] if r.alpha else None for seed, r in self.per_seed.items()},
            "findings": [dataclasses.asdict(f) for f in self.findings],
            "failures": self.failures,
        }


# ---------------------------------------------------------------------------------------------------------------
# Scoring


def evaluate_row(name: str, kind: str, run_dir: Path, label_run: Path, weights: np.ndarray, *, paper: bool):
    """Score one row on test (oracle and validation-tuned thresholds) with intervals.

    Returns the result, the tags, the test labels and scores, and the row's oracle bootstrap values.
    """
    splits = {}
    for split in EVALUATED_SPLITS:
        track_ids, tags, scores = rundir.read_predictions(run_dir, split)
        splits[split] = (track_ids, rundir.split_labels(label_run, split, track_ids, tags), scores)
    _, y_val, s_val = splits["validation"]
    _, y_test, s_test = splits["test"]
    tuned_thresholds = evaluation.tune_thresholds(y_val, s_val)
    per_tag = evaluation.per_tag_metrics(y_test, s_test, thresholds=None, tags=tags)
    oracle_values = bootstrap.replicates(y_test, s_test, weights)
    tuned_values = bootstrap.replicates(y_test, s_test, weights, thresholds=tuned_thresholds)
    result = RowResult(
        name=name, kind=kind, run_dir=run_dir,
        oracle=_summary(evaluation.evaluate(y_test, s_test, thresholds="oracle", tags=tags)),
        tuned=_summary(evaluation.evaluate(y_test, s_test, thresholds=tuned_thresholds, tags=tags)),
        validation=_summary(evaluation.evaluate(y_val, s_val, thresholds=None, tags=tags)),
        per_tag_pr_auc={tag: float(v) for tag, v in zip(tags, per_tag["pr_auc"])},
        paper=PAPER_RESULTS.get(name) if paper else None,
        oracle_ci=_intervals(oracle_values), tuned_ci=_intervals(tuned_values),
        per_tag_pr_auc_ci={tag: list(bootstrap.interval(oracle_values["per_tag_pr_auc"][:, j]))
                           for j, tag in enumerate(tags)},
        **_run_info(run_dir),
    )
    return result, tags, splits["test"], oracle_values


def _summary(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if key in evaluation.SUMMARY_METRICS or key == "n_tracks"}


def _intervals(values: dict) -> dict[str, list[float]]:
    return {metric: list(bootstrap.interval(values[metric])) for metric in bootstrap.METRICS}


def _run_info(run_dir: Path) -> dict:
    info = rundir.run_info_or_empty(run_dir)
    return {"numerics": info.get("numerics"), "pool": info.get("pool")}


def score_rows(rows, config_dir: Path, out_dir: Path, steps_run: list[str], *, paper: bool,
               ensemble_members: tuple[str, str] | None, seed: int | None = None) -> Results:
    """Score every finished row (objects with name, kind, run_dir), in the paper's row order, on shared resamples.

    The labels come from the first teacher's saved config; every row must have predicted the same test tracks.
    """
    label_run = next(row.run_dir for row in rows if row.kind == "teacher")
    order = {name: i for i, name in enumerate(PAPER_ORDER)}
    ranked = sorted(rows, key=lambda r: (order.get(r.name, len(order)), rows.index(r)))
    test_ids, _ = rundir.read_predictions(label_run, "test")[:2]
    weights = bootstrap.resample_weights(len(test_ids))
    results = Results(config_dir, out_dir, [], steps_run, ensemble_members=ensemble_members, seed=seed)
    for row in ranked:
        result, tags, (track_ids, labels, scores), values = evaluate_row(
            row.name, row.kind, row.run_dir, label_run, weights, paper=paper)
        if track_ids != test_ids:
            raise DataError(f"{row.run_dir}: test predictions are not of the same tracks as {label_run}")
        results.test = results.test or TestScores(tags, labels, {})
        results.test.scores[row.name] = scores
        results.rows.append(result)
        results.replicates[row.name] = values
    results.alpha = next((rundir.read_alpha(r.run_dir) for r in rows if r.kind == "ensemble"), None)
    results.findings = measure_claims([results], paper_claims(ensemble_members))
    return results


def measure_claims(per_seed: list[Results], claims: list[Claim]) -> list[Finding]:
    """Each claim whose two rows finished in every seed, on each FINDING_METRIC: the mean difference over seeds and
    the percentile interval of the per-resample mean difference (the same test resamples in every seed)."""
    findings = []
    for claim in claims:
        if not all(claim.better in r.replicates and claim.worse in r.replicates for r in per_seed):
            continue
        for metric in FINDING_METRICS:
            point = np.mean([r.row(claim.better).oracle[metric] - r.row(claim.worse).oracle[metric] for r in per_seed])
            values = np.mean([r.replicates[claim.better][metric] - r.replicates[claim.worse][metric] for r in per_seed],
                             axis=0)
            low, high = bootstrap.interval(values)
            paper_values = [PAPER_RESULTS.get(name, {}).get(metric) for name in (claim.better, claim.worse)]
            paper_difference = None if None in paper_values else round(paper_values[0] - paper_values[1], 4)
            findings.append(Finding(claim.text, metric, claim.better, claim.worse, claim.sign, float(point), low, high,
                                    bootstrap.verdict(low, high, claim.sign), paper_difference, len(per_seed)))
    return findings
