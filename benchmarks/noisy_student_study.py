"""When does noisy student training help on the synthetic corpus? A sweep of labelled-set size x pool size x
pseudo-label rule, over training seeds, drawn as one figure of student - teacher test ROC-AUC with paired intervals.

    python benchmarks/noisy_student_study.py CORPUS --out DIR [--labelled 104,208] [--pool 200,600]
        [--variants derived,precision,soft,none] [--pool-variant soft] [--seeds 0,1,2] [--jobs 2]
        [--set KEY=VALUE ...] [--reuse-teachers SIZE=PATTERN] [--reuse-students SIZE=PATTERN]

CORPUS is an extracted synthetic corpus (`moodtag synth` + `moodtag extract`, or a demo's `corpus/`). For every
labelled size L (a seeded subset of splits/train.tsv, the same for every seed; the validation and test splits stay
whole) and training seed, the teacher (--teacher, default the demo's long-hpcp row) is trained and labels the whole
pool once per threshold rule, and students (--student, default the demo's long-hpcp-noisy row, plus the --set
overrides) of each variant train on the first P pool tracks (`student.pool_size`):

    derived    hard labels, the paper's percentile rule (per tag)
    precision  hard labels, the precision rule (docs/noisy-student.md, "Levers")
    soft       the teacher's probabilities for the tags above the precision rule's floor (the demo's student)
    none       the control: no pseudo-labels at all (every pool entry unknown), so the student gets the same start,
               noise, steps and batches with no information from the pool: what more training alone adds

The --pool-variant runs at every pool size, the others at the largest. Each cell gives the mean over seeds of student
- teacher test macro ROC-AUC (and PR-AUC) and, for the pseudo-label variants, of student - control (what the
pseudo-labels add), each with the percentile interval of the per-resample mean difference (the same test resamples in
every seed, as `moodtag reproduce --seeds` pools its claims).

Runs live under DIR/L<L>/seed-<s>/ and are resumed: a rerun only does what is missing. --reuse-teachers
208=/runs/seed-{seed}/runs/long-hpcp takes the teachers of that size from finished runs of the same config and
corpus (a `moodtag reproduce demo --seeds` run) instead of training them again; --reuse-students
208=/runs/seed-{seed}/runs/long-hpcp-noisy scores those as the pool variant's students at the largest pool.
Written: DIR/study.json, DIR/study.md and DIR/study.png.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from moodtag import bootstrap, ensemble as ens
from moodtag.config import load_config
from moodtag.evaluate import evaluate
from moodtag.numerics import pin_cpu_kernels

ROOT = Path(__file__).resolve().parent.parent
METRICS = ("roc_auc_macro", "pr_auc_macro")
# Student config overrides of each variant, and the pseudo-labelling (rule and floor) it reads.
VARIANTS = {
    "derived": ["student.threshold_rule=derived", "student.targets=hard"],
    "precision": ["student.threshold_rule=precision", "student.targets=hard"],
    "soft": ["student.threshold_rule=precision", "student.targets=soft"],
    "none": ["student.threshold_rule=precision", "student.min_teacher_auc=1.0", "student.targets=hard"],
}
TEACHER = "long-hpcp"
log = logging.getLogger("noisy_student_study")


@dataclasses.dataclass(frozen=True)
class Cell:
    labelled: int
    pool: int
    variant: str


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--labelled", default="104,208", help="labelled training-set sizes (default: 104,208)")
    parser.add_argument("--pool", default="200,600", help="pool sizes (default: 200,600)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"of {', '.join(VARIANTS)} (default: all)")
    parser.add_argument("--pool-variant", default="soft", help="the variant run at every pool size (default: soft)")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds (default: 0,1,2)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="runs at once (default: 2)")
    parser.add_argument("--teacher", type=Path, default=ROOT / "configs/demo/long-hpcp.yaml")
    parser.add_argument("--student", type=Path, default=ROOT / "configs/demo/long-hpcp-noisy.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a student config value (repeatable)")
    parser.add_argument("--reuse-teachers", action="append", default=[], metavar="SIZE=PATTERN")
    parser.add_argument("--reuse-students", action="append", default=[], metavar="SIZE=PATTERN")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    labelled, pools, seeds = _ints(args.labelled), _ints(args.pool), _ints(args.seeds)
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    corpus, out = args.corpus.resolve(), args.out.resolve()
    reused_teachers, reused_students = _patterns(args.reuse_teachers), _patterns(args.reuse_students)
    cells = [Cell(size, pool, variant) for size in labelled for variant in variants
             for pool in (pools if variant == args.pool_variant else pools[-1:])]

    pin_cpu_kernels()  # before any worker starts: every run uses the same kernels, whatever --jobs is
    teachers, students = {}, {}
    for size in labelled:
        for seed in seeds:
            teachers[size, seed] = _teacher_config(args.teacher, corpus, out, size, seed, reused_teachers.get(size))
    for cell in cells:
        for seed in seeds:
            reused = reused_students.get(cell.labelled) if (cell.variant, cell.pool) == (args.pool_variant, pools[-1]) \
                else None
            students[cell, seed] = reused.format(seed=seed) if reused else _student_config(
                args.student, corpus, out, cell, seed, args.overrides)
    trained = [config for config in students.values() if not isinstance(config, str)]
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker) as workers:
        list(workers.map(_train_and_predict, teachers.values()))
        # One labelling per teacher and rule, shared by the students that read it (they differ in pool size or targets).
        labelling = {config.student.pseudo_labels: config for config in trained}
        list(workers.map(_pseudo_label, labelling.values()))
        list(workers.map(_train_and_predict, trained))

    summary = _summarise(cells, teachers, students, seeds)
    (out / "study.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "study.md").write_text(_markdown(summary, args) + "\n")
    _figure(summary, out / "study.png")
    print(_markdown(summary, args))


def _ints(text: str) -> list[int]:
    return [int(value) for value in text.split(",")]


def _patterns(values: list[str]) -> dict[int, str]:
    return {int(size): pattern for size, pattern in (value.split("=", 1) for value in values)}


def _train_split(corpus: Path, out: Path, size: int) -> str:
    """splits/train.tsv when `size` is all of it, else the first `size` tracks of a seeded shuffle of it."""
    lines = (corpus / "splits" / "train.tsv").read_text().splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    if size == len(rows):
        return "splits/train.tsv"
    if size > len(rows):
        raise SystemExit(f"--labelled {size}: the corpus has only {len(rows)} training tracks")
    path = out / f"L{size}" / "train.tsv"
    if not path.is_file():
        keep = sorted(np.random.default_rng(0).permutation(len(rows))[:size])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + "".join(rows[i] for i in keep))
    return str(path)


def _run_dir(out: Path, size: int, seed: int, name: str) -> Path:
    return out / f"L{size}" / f"seed-{seed}" / name


def _teacher_config(path: Path, corpus: Path, out: Path, size: int, seed: int, reused: str | None):
    run_dir = _run_dir(out, size, seed, TEACHER)
    if reused and not run_dir.exists():
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        run_dir.symlink_to(Path(reused.format(seed=seed)).resolve(), target_is_directory=True)
    return load_config(path, data_root=corpus, run_dir=run_dir,
                       overrides=[f"data.train_split={_train_split(corpus, out, size)}", f"train.seed={seed}"])


def _student_config(path: Path, corpus: Path, out: Path, cell: Cell, seed: int, overrides: list[str]):
    variant = VARIANTS[cell.variant]
    labels = "none" if cell.variant == "none" else variant[0].split("=")[1]
    teacher = _run_dir(out, cell.labelled, seed, TEACHER)
    return load_config(path, data_root=corpus, run_dir=_run_dir(out, cell.labelled, seed, f"{cell.variant}-P{cell.pool}"),
                       overrides=[*overrides, *variant, f"data.train_split={_train_split(corpus, out, cell.labelled)}",
                                  f"train.seed={seed}", f"student.teacher={TEACHER}", f"student.pool_size={cell.pool}",
                                  f"student.pseudo_labels={teacher / f'pseudo-labels-{labels}' / 'labels.npz'}"])


def _init_worker() -> None:
    import torch

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(1)


def _train_and_predict(config) -> None:
    from moodtag.training import train

    run_dir = train(config, resume=True, quiet=True)
    ens.ensure_predictions(run_dir, "test", quiet=True)
    log.warning("done: %s", run_dir)


def _pseudo_label(student) -> None:
    """The student's teacher labels the whole pool with the student's rule (its pool size is applied in training)."""
    from moodtag.training.pseudo_label import pseudo_label, student_pool_settings

    labels = Path(student.student.pseudo_labels)
    pseudo_label(labels.parent.parent, out_dir=labels.parent, quiet=True, **student_pool_settings(student))


def _summarise(cells: list[Cell], teachers: dict, students: dict, seeds: list[int]) -> dict:
    """Per cell: each seed's teacher and student scores and the pooled paired differences with their intervals,
    student - teacher and (where the control ran) student - the control of the same labelled size."""
    values, rows = {}, []
    for cell in cells:
        scores = []
        for seed in seeds:
            teacher_dir = Path(teachers[cell.labelled, seed].run_dir)
            student = students[cell, seed]
            student_dir = Path(student if isinstance(student, str) else student.run_dir)
            ids, tags, teacher_scores = ens.read_predictions(teacher_dir, "test")
            student_ids, _, student_scores = ens.read_predictions(student_dir, "test")
            if student_ids != ids:
                raise SystemExit(f"{student_dir}: test predictions are not of the teacher's tracks")
            labels = ens.split_labels(teacher_dir, "test", ids, tags)
            weights = bootstrap.resample_weights(len(ids))
            points = [evaluate(labels, s, thresholds=None) for s in (teacher_scores, student_scores)]
            values["teacher", cell.labelled, seed], values[cell, seed] = (
                (bootstrap.replicates(labels, s, weights), point) for s, point in zip((teacher_scores, student_scores),
                                                                                      points))
            pool = json.loads((student_dir / "run.json").read_text())["pool"]
            scores.append({"seed": seed, "student_run": str(student_dir), "pool_tracks": pool["tracks"],
                           **{f"{who}_{m}": point[m] for who, point in zip(("teacher", "student"), points)
                              for m in METRICS}})
        rows.append({**dataclasses.asdict(cell), "seeds": scores,
                     "vs_teacher": _pooled(values, [(cell, seed) for seed in seeds],
                                           [("teacher", cell.labelled, seed) for seed in seeds])})
    controls = {cell.labelled: cell for cell in cells if cell.variant == "none"}
    for cell, row in zip(cells, rows):
        control = controls.get(cell.labelled)
        if control is not None and control != cell:
            row["vs_control"] = _pooled(values, [(cell, seed) for seed in seeds], [(control, seed) for seed in seeds])
    return {"seeds": seeds, "cells": rows}


def _pooled(values: dict, better: list, worse: list) -> dict:
    """Mean over seeds of a paired difference and the interval of its per-resample mean (the same resamples);
    `values` maps a run's key to (bootstrap replicates, metrics on the whole test split)."""
    out = {}
    for metric in METRICS:
        replicates = np.mean([values[b][0][metric] - values[w][0][metric] for b, w in zip(better, worse)], axis=0)
        point = np.mean([values[b][1][metric] - values[w][1][metric] for b, w in zip(better, worse)])
        low, high = bootstrap.interval(replicates)
        out[metric] = {"difference": float(point), "interval": [low, high]}
    return out


def _markdown(summary: dict, args) -> str:
    lines = [f"Test split, mean over seeds {summary['seeds']} with the paired 95 % interval over test tracks (student "
             f"config {args.student.name}, overrides: {' '.join(args.overrides) or 'none'}); Δ = student − teacher, "
             "and − control = student − the control (no pseudo-labels) of the same labelled size.", "",
             "| labelled | pool | variant | teacher ROC-AUC | student ROC-AUC | Δ ROC-AUC | Δ PR-AUC | − control ROC-AUC |"
             " − control PR-AUC |", "|---|---|---|---|---|---|---|---|---|"]
    for row in summary["cells"]:
        teacher = np.mean([s["teacher_roc_auc_macro"] for s in row["seeds"]])
        student = np.mean([s["student_roc_auc_macro"] for s in row["seeds"]])
        variant = "none (control)" if row["variant"] == "none" else row["variant"]
        against = [_difference(row["vs_control"][m]) if "vs_control" in row else "—" for m in METRICS]
        lines.append(f"| {row['labelled']} | {row['pool']} | {variant} | {teacher:.4f} | {student:.4f} | "
                     + " | ".join([_difference(row["vs_teacher"][m]) for m in METRICS] + against) + " |")
    return "\n".join(lines)


def _difference(value: dict) -> str:
    low, high = value["interval"]
    return f"{value['difference']:+.4f} [{low:+.4f}, {high:+.4f}]"


def _figure(summary: dict, path: Path) -> None:
    """One panel per labelled size: student - teacher test ROC-AUC per cell (filled; green when the interval is above
    0, red below, grey across) and student - control (open squares), with their 95 % intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = summary["cells"]
    sizes = sorted({row["labelled"] for row in cells}, reverse=True)
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 3.8), sharey=True, squeeze=False)
    for ax, size in zip(axes[0], sizes):
        rows = [row for row in cells if row["labelled"] == size]
        for x, row in enumerate(rows):
            for key, shift, marker in (("vs_teacher", -0.1, "o"), ("vs_control", 0.1, "s")):
                if key not in row:
                    continue
                value = row[key]["roc_auc_macro"]
                low, high = value["interval"]
                colour = "tab:green" if low > 0 else "tab:red" if high < 0 else "tab:grey"
                ax.errorbar(x + shift, value["difference"], fmt=marker, color=colour, capsize=3,
                            yerr=[[value["difference"] - low], [high - value["difference"]]],
                            mfc=colour if key == "vs_teacher" else "white")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(rows)), [f"{row['variant']}\nP={row['pool']}" for row in rows], fontsize=8)
        ax.set_title(f"{size} labelled tracks", fontsize=10)
    axes[0][0].set_ylabel("test ROC-AUC difference")
    fig.suptitle(f"Noisy student on the synthetic corpus: student − teacher (●) and student − control (□), "
                 f"{len(summary['seeds'])} seeds, 95 % paired intervals", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
