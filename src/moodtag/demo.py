"""`moodtag demo`: the whole paper on the embedded synthetic corpus, from nothing to tags, on a CPU.

Stages (each skipped when its output exists, so a rerun or a resumed kill does no repeated work):
    synth      a synthetic mood corpus            <out>/corpus/{audio,splits,tags.txt,...}
    extract    mel + HPCP for every track         <out>/corpus/features
    reproduce  every Table 1 row (teachers, pseudo-labels, noisy students, ensemble), evaluated
                                                  <out>/runs/<row>, <out>/results.{md,json}, <out>/report/
    export     the ensemble as a tagger bundle    <out>/model
    tag        a few test tracks with a timeline  <out>/tags.jsonl
Seconds per stage go to <out>/timings.json.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

from .atomic import atomic_write_text
from .errors import ConfigError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DemoPreset:
    """How big the demo is: the corpus preset (its unlabelled pool cut to `n_unlabelled` when set) and the overrides
    applied to every configs/demo row."""

    corpus: str
    overrides: tuple[str, ...] = ()
    n_unlabelled: int | None = None


DEMO_PRESETS = {
    # About a minute on 2 cores: a tiny corpus and a few epochs, enough to show every stage working end to end.
    "tiny": DemoPreset("tiny", ("train.max_epochs=4", "train.patience=2")),
    # About twelve minutes on 2 cores: the configs/demo rows as written, on ~210 training tracks, >= 400 validation and
    # test tracks each, and the corpus preset's 600-track pool (a student's steps do not grow with it: each takes a
    # labelled batch and a pool batch, student.batching: streams).
    "demo": DemoPreset("demo"),
}
TAGGED_TRACKS = 5


@dataclasses.dataclass
class DemoResult:
    out_dir: Path
    table: str
    timings: dict[str, float]
    report: Path
    bundle: Path
    tags: Path
    failures: dict[str, str]


def run_demo(out_dir: str | os.PathLike = "moodtag-demo", *, preset: str = "demo", workers: int | None = None,
             seed: int = 0, quiet: bool = False) -> DemoResult:
    """Run every stage of the demo under `out_dir` and return the Table 1 it produced."""
    from .bundle import export
    from .extract import extract
    from .report import findings_table, results_table
    from .reproduce import reproduce
    from .synth import generate_corpus

    if preset not in DEMO_PRESETS:
        raise ConfigError(f"unknown demo preset {preset!r}; choose from {', '.join(DEMO_PRESETS)}")
    settings = DEMO_PRESETS[preset]
    out_dir = Path(out_dir).resolve()
    corpus = out_dir / "corpus"
    workers = workers or min(2, os.cpu_count() or 1)
    timings: dict[str, float] = {}

    with _timed("synth", timings):
        generate_corpus(corpus, preset=settings.corpus, seed=seed, workers=workers, n_unlabelled=settings.n_unlabelled,
                        audio_format="flac", quiet=quiet)
    with _timed("extract", timings):
        splits = sorted((corpus / "splits").glob("*.tsv"))
        extract(splits, corpus / "features", audio_root=corpus / "audio", workers=workers, quiet=quiet)
    with _timed("reproduce", timings):
        results = reproduce("demo", data_root=corpus, out_dir=out_dir, overrides=settings.overrides, jobs=workers,
                            quiet=quiet)
    bundle = out_dir / "model"
    with _timed("export", timings):
        if not (bundle / "bundle.json").is_file():
            export(_bundle_source(results), bundle, quiet=quiet)
    tags_path = out_dir / "tags.jsonl"
    with _timed("tag", timings):
        if not tags_path.is_file():
            _tag_examples(bundle, corpus, tags_path)
    timings["total"] = sum(timings.values())
    atomic_write_text(out_dir / "timings.json", json.dumps(timings, indent=2) + "\n")
    table = results_table(results) + "\n\n" + findings_table(results.findings)
    return DemoResult(out_dir, table, timings, out_dir / "report" / "report.md", bundle, tags_path,
                      results.failures)


def _bundle_source(results) -> Path:
    """The ensemble when it finished, else the best row on validation ROC-AUC."""
    by_name = {row.name: row for row in results.rows}
    if "ensemble" in by_name:
        return by_name["ensemble"].run_dir
    best = max(results.rows, key=lambda row: row.validation.get("roc_auc_macro", float("-inf")))
    log.warning("demo: no ensemble row; exporting %s", best.name)
    return best.run_dir


def _tag_examples(bundle: Path, corpus: Path, output: Path) -> None:
    """Tag the first few test tracks, as a user would tag their own files."""
    from .data.splits import read_split
    from .tagging import Tagger
    from .writers import Formatter, ResultWriter

    test = read_split(corpus / "splits" / "test.tsv")
    paths = [corpus / "audio" / path for path in test.paths[:TAGGED_TRACKS]]
    tagger = Tagger.load(bundle)
    formatter = Formatter("jsonl", tagger.tags, timeline=True)
    with ResultWriter(formatter, output) as writer:
        for result in tagger.tag_many(paths, timeline=True):
            writer.write(result.to_dict())


class _timed:
    """Adds the seconds a stage took to `timings[name]` and logs them."""

    def __init__(self, name: str, timings: dict[str, float]):
        self.name, self.timings = name, timings

    def __enter__(self) -> None:
        log.info("demo: %s", self.name)
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.timings[self.name] = round(time.perf_counter() - self.start, 2)
        log.info("demo: %s took %.1f s", self.name, self.timings[self.name])
