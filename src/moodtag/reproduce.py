"""`moodtag reproduce`: every Table 1 row of a config folder, in dependency order, evaluated as the paper did.

A config folder (configs/demo, configs/paper) holds one YAML file per row; files starting with `_` are bases that
rows `extend`. Rows with a `student` section are noisy students of the row their `student.teacher` names; a row
with `train.init_from` starts from that row's weights, so it runs after it. The run of
each row lives at `<out>/runs/<row>`; the steps are

    teachers (train, predict validation + test)
    -> pseudo-labels of the unlabelled pool by each student's teacher (in <teacher run>/pseudo-labels)
    -> students (train on labelled + pseudo-labelled tracks, predict) for `student.iterations` rounds, round k
       taught by round k-1 (round k > 1 runs at <out>/runs/<row>-iter<k>; the row reports the last round)
    -> the ensemble of two rows (the paper's: short-hpcp and long-hpcp-noisy, alpha searched on validation).

Each step is skipped when its output exists, so a rerun does no work and a killed run resumes. Rows run in worker
processes, up to `jobs` at once, each as soon as the rows it depends on are done; a row's numbers do not depend on
`jobs` (moodtag.numerics). Every row is then scored on the test split with 95 % bootstrap intervals, and the paper's
claims are checked with paired intervals (moodtag.results); `results.json` / `results.md` and the report hold them.

`seeds=[0, 1, 2]` repeats everything per training seed under `<out>/seed-<N>/` (the corpus stays the same) and
writes the mean ± sd of every row and the claims over all seeds to `<out>/results.{json,md}`.
"""
from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Sequence

from . import ensemble as ens
from . import rundir
from .atomic import atomic_write_json, atomic_write_text
from .config import RunConfig, load_config
from .errors import ConfigError, DataError, MoodtagError
from .numerics import pin_cpu_kernels
from .results import EVALUATED_SPLITS, Results, SeedResults, measure_claims, paper_claims, score_rows

log = logging.getLogger(__name__)

PACKAGED_CONFIGS = Path(__file__).parent / "configs"


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

    @property
    def dependency_dirs(self) -> list[Path]:
        """Run directories of the rows this one needs: siblings of its own."""
        return [self.run_dir.with_name(name) for name in self.depends]

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
        start = (config.train.init_from,) if config.train.init_from is not None else ()
        rows[config.name] = Row(config.name, "student" if teacher else "teacher", Path(config.run_dir), config,
                                teacher + start)
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
    seeds: Sequence[int] | None = None,
    jobs: int = 1,
    quiet: bool = False,
) -> Results | SeedResults:
    """Run every row of `config_dir` that is not finished yet, evaluate all rows, write results and the report.

    seeds: training seeds (`train.seed`) to repeat the whole table with, each under <out>/seed-<N>; returns
    SeedResults then, else Results. jobs: rows trained at once, each in its own worker process.
    """
    config_dir = resolve_config_dir(config_dir)
    out_dir = Path(out_dir).resolve()
    if jobs < 1:
        raise ConfigError(f"jobs must be at least 1, got {jobs}")
    plan_dirs = {None: out_dir} if seeds is None else {seed: out_dir / f"seed-{seed}" for seed in seeds}
    plans = {
        seed: plan_rows(config_dir, folder, data_root=data_root, ensemble=ensemble,
                        overrides=[*overrides] + ([] if seed is None else [f"train.seed={seed}"]))
        for seed, folder in plan_dirs.items()
    }
    steps, failures = run_rows([row for rows in plans.values() for row in rows], ensemble, jobs=jobs, quiet=quiet)
    paper = config_dir.name == "paper"
    per_seed = {seed: _score_and_write(config_dir, plan_dirs[seed], rows, steps, failures, ensemble, seed, paper)
                for seed, rows in plans.items()}
    if seeds is None:
        return per_seed[None]
    members = next(iter(per_seed.values())).ensemble_members
    summary = SeedResults(config_dir, out_dir, per_seed, measure_claims(list(per_seed.values()), paper_claims(members)))
    from .report import seeds_markdown

    atomic_write_json(out_dir / "results.json", summary.to_dict())
    atomic_write_text(out_dir / "results.md", seeds_markdown(summary))
    return summary


def run_rows(rows: list[Row], spec: EnsembleSpec | None, *, jobs: int = 1, quiet: bool = False):
    """Run `rows` (in dependency order), each once the rows it depends on are done, up to `jobs` at a time.

    Teachers and students run in worker processes started with the pinned CPU kernels (moodtag.numerics), so their
    numbers are the same whatever `jobs` is and whatever this process loaded before; ensembles (numpy only) run here.
    Returns ({run_dir: steps that did work}, {run_dir: why the row failed}); one row's failure stops only its dependants.
    """
    pin_cpu_kernels()
    done: dict[Path, list[str]] = {}
    failures: dict[Path, str] = {}
    by_dir = {row.run_dir: row for row in rows}
    chain = _chain_length(rows)
    pending, running = sorted(rows, key=lambda row: chain[row.run_dir], reverse=True), {}
    # With several rows at once, each gets its share of the cores unless its config fixes train.num_threads.
    threads = None if jobs == 1 else max(1, (os.cpu_count() or 1) // jobs)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker,
                             initargs=(logging.getLogger().getEffectiveLevel(), threads)) as pool:
        while pending or running:
            for row in _ready(pending, done, failures):
                pending.remove(row)
                if row.kind == "ensemble":
                    _record(row, _guarded(_run_ensemble, row, spec), done, failures)
                elif len(running) < jobs:
                    teacher = by_dir[row.dependency_dirs[0]] if row.kind == "student" else None
                    running[pool.submit(_run_in_worker, row, teacher, quiet or jobs > 1)] = row
                    log.info("reproduce: %s (%s) started", row.name, row.kind)
                else:
                    pending.insert(0, row)
                    break
            if running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    _record(running.pop(future), future.result(), done, failures)
    return done, failures


def _chain_length(rows: list[Row]) -> dict[Path, int]:
    """How many rows wait on each row in a chain (itself included): teachers of students first, so the longest
    chain of dependent rows starts early and the cores are not left with one long chain at the end."""
    length: dict[Path, int] = {}
    for row in reversed(rows):  # dependants come after their dependencies in `rows`
        dependants = [length[other.run_dir] for other in rows if row.run_dir in other.dependency_dirs]
        length[row.run_dir] = 1 + max(dependants, default=0)
    return length


def _ready(pending: list[Row], done: dict, failures: dict) -> list[Row]:
    """Pending rows whose dependencies are all done; rows depending on a failed one are failed here, not run."""
    ready = []
    for row in list(pending):
        blocked = [path.name for path in row.dependency_dirs if path in failures]
        if blocked:
            pending.remove(row)
            failures[row.run_dir] = f"not run because {', '.join(blocked)} failed"
        elif all(path in done for path in row.dependency_dirs):
            ready.append(row)
    return ready


def _record(row: Row, outcome: tuple[str, object], done: dict, failures: dict) -> None:
    status, value = outcome
    if status == "ok":
        done[row.run_dir] = value
        log.info("reproduce: %s done%s", row.name, "" if value else " (nothing to do)")
    else:
        # One row's bad data or config must not cost the rows that do not depend on it.
        log.error("%s: %s", row.name, value)
        failures[row.run_dir] = value


def _init_worker(level: int, threads: int | None) -> None:
    logging.basicConfig(level=level, format="%(levelname)s %(message)s", stream=sys.stderr)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _run_in_worker(row: Row, teacher: Row | None, quiet: bool) -> tuple[str, object]:
    """A teacher or student row in a worker process: ("ok", steps) or ("failed", message)."""
    if row.kind == "teacher":
        return _guarded(_train_and_predict, row.config, quiet)
    return _guarded(_run_student, row, teacher, quiet)


def _guarded(step, *args) -> tuple[str, object]:
    # Only the message crosses the process boundary: moodtag's errors need not be picklable.
    try:
        return "ok", step(*args)
    except MoodtagError as err:
        return "failed", str(err)


def _train_and_predict(config: RunConfig, quiet: bool) -> list[str]:
    from .training import train

    done = []
    run_dir = Path(config.run_dir)
    was_completed = rundir.is_completed(run_dir)
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
        labels_dir = rundir.pseudo_labels_dir(teacher_dir)
        if not rundir.is_completed(run_dir):
            if pseudo_label(teacher_dir, out_dir=labels_dir, quiet=quiet, **student_pool_settings(row.config)).ran:
                done.append(f"pseudo-label {teacher_dir.name}")
        config = dataclasses.replace(
            row.config, name=run_dir.name, run_dir=str(run_dir),
            student=dataclasses.replace(student, teacher=teacher_dir.name,
                                        pseudo_labels=str(rundir.pseudo_labels_file(teacher_dir))),
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


def _run_ensemble(row: Row, spec: EnsembleSpec) -> list[str]:
    short_run, long_run = row.dependency_dirs
    if rundir.is_finished(row.run_dir):
        return []
    ens.build_ensemble(short_run, long_run, row.run_dir, metric=spec.metric, step=spec.step)
    return [f"ensemble {row.name}"]


# ---------------------------------------------------------------------------------------------------------------
# Scoring and output


def _score_and_write(config_dir: Path, out_dir: Path, rows: list[Row], steps: dict, failures: dict,
                     spec: EnsembleSpec | None, seed: int | None, paper: bool) -> Results:
    """Score the finished rows of one plan, write results.json, results.md and the report."""
    from .report import results_markdown

    finished = [row for row in rows if row.run_dir not in failures]
    failed = {row.name: failures[row.run_dir] for row in rows if row.run_dir in failures}
    if not any(row.kind == "teacher" for row in finished):
        raise DataError(f"{config_dir}: no teacher row finished: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    members = (spec.short, spec.long) if any(row.kind == "ensemble" for row in finished) else None
    steps_run = [step for row in rows for step in steps.get(row.run_dir, [])]
    results = score_rows(finished, config_dir, out_dir, steps_run, paper=paper, ensemble_members=members, seed=seed)
    results.failures = failed
    atomic_write_json(out_dir / "results.json", results.to_dict())
    atomic_write_text(out_dir / "results.md", results_markdown(results))
    _write_report(results, finished)
    return results


def _write_report(results: Results, rows: list[Row]) -> Path:
    from .report import write_report

    by_name = {row.name: row for row in rows}
    pseudo_labels = {
        row.name: rundir.pseudo_labels_dir(_teacher_dirs(row, by_name[row.depends[0]])[-1])
        for row in rows if row.kind == "student"
    }
    return write_report(
        results, test_scores=results.test.scores, test_labels=results.test.labels, tags=results.test.tags,
        runs={row.name: row.run_dir for row in rows if row.kind != "ensemble"}, pseudo_labels=pseudo_labels,
    )

