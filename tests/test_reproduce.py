"""`moodtag reproduce` end to end on a tiny feature-level corpus, plus its planning and tables."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from moodtag import ensemble
from moodtag.data.splits import Split, write_split
from moodtag.errors import ConfigError, DataError
from moodtag.features import FeatureParams, TrackFeatures
from moodtag.reproduce import EnsembleSpec, plan_rows, reproduce, resolve_config_dir
from moodtag.results import PAPER_RESULTS, TABLE_METRICS
from moodtag.store import FeatureStore
from moodtag.training.pseudo_label import fixed_thresholds, hard_labels

TAGS = ["mood/theme---calm", "mood/theme---dark", "mood/theme---happy"]
SPLIT_SIZES = {"train": 16, "validation": 9, "test": 9, "unlabelled": 8}
MEL_STEPS = 64

BASE = """
data: {long_steps: 64, chunk_steps: 32, batch_size: 8, eval_batch_size: 16}
model: {preset: tiny}
train: {max_epochs: 1, patience: 1, lr: 1.0e-3}
"""
STUDENT = """
extends: {teacher}.yaml
augment: {{mask_max_range: [30, 90], input_noise: 0.01}}
model: {{stochastic_blocks: 3}}
student: {{teacher: {teacher}, threshold_rule: derived}}
"""


def write_corpus(root, rng) -> None:
    """Splits, tag list and a feature store whose mel bands and HPCP bins carry each track's tags (no audio needed)."""
    params = FeatureParams()
    store = FeatureStore.create(root / "features", params)
    (root / "tags.txt").write_text("\n".join(TAGS) + "\n")
    number = 0
    for split, size in SPLIT_SIZES.items():
        ids, tags = [], []
        for _ in range(size):
            number += 1
            track_id = f"track_{number:04d}"
            active = rng.uniform(size=len(TAGS)) < 0.4
            active[number % len(TAGS)] = True  # every split holds every tag
            mel = rng.uniform(0.0, 0.3, (params.n_mels, MEL_STEPS))
            hpcp = rng.uniform(0.0, 0.3, (params.hpcp_size, round(MEL_STEPS * params.hpcp_frames_per_mel_step)))
            for j in np.flatnonzero(active):
                mel[32 * j : 32 * j + 32] += 0.5
                hpcp[4 * j : 4 * j + 4] += 0.5
            store.write(track_id, TrackFeatures(mel, hpcp, MEL_STEPS * params.mel_step_seconds, params.sample_rate, params.hash))
            ids.append(track_id)
            tags.append([] if split == "unlabelled" else [t for t, on in zip(TAGS, active) if on])
        n = len(ids)
        write_split(root / "splits" / f"{split}.tsv", Split(ids, ["a"] * n, ["b"] * n, [f"{i}.ogg" for i in ids], [11.1] * n, tags))


def write_configs(folder) -> None:
    folder.mkdir()
    (folder / "_base.yaml").write_text(BASE)
    for mode in ("long", "short"):
        (folder / f"{mode}-normal.yaml").write_text(f"extends: _base.yaml\ndata: {{mode: {mode}}}\nmodel: {{use_hpcp: false}}\n")
        (folder / f"{mode}-hpcp.yaml").write_text(f"extends: _base.yaml\ndata: {{mode: {mode}}}\nmodel: {{use_hpcp: true}}\n")
        (folder / f"{mode}-hpcp-noisy.yaml").write_text(STUDENT.format(teacher=f"{mode}-hpcp"))


@pytest.mark.slow
def test_reproduce_runs_every_row_and_a_rerun_does_nothing(tmp_path, rng, capsys):
    write_corpus(tmp_path / "corpus", rng)
    write_configs(tmp_path / "configs")
    out = tmp_path / "out"
    results = reproduce(tmp_path / "configs", data_root=tmp_path / "corpus", out_dir=out, quiet=True)

    names = ["long-normal", "long-hpcp", "long-hpcp-noisy", "short-normal", "short-hpcp", "short-hpcp-noisy", "ensemble"]
    saved = json.loads((out / "results.json").read_text())
    assert [row["name"] for row in saved["rows"]] == names
    for row in saved["rows"]:
        for thresholds in ("oracle", "tuned"):
            values = [row[thresholds][key] for key, _ in TABLE_METRICS]
            assert all(isinstance(v, float) and math.isfinite(v) for v in values), (row["name"], thresholds)
    assert "train long-hpcp-noisy" in results.steps_run and "pseudo-label long-hpcp" in results.steps_run

    # The students learnt from their teachers' pseudo-labels: the paper's 3-valued targets, one row per pool track.
    for teacher in ("long-hpcp", "short-hpcp"):
        with np.load(out / "runs" / teacher / "pseudo-labels" / "labels.npz") as labels:
            assert len(labels["track_ids"]) == SPLIT_SIZES["unlabelled"] and list(labels["tags"]) == TAGS
            assert np.isin(labels["targets"][~np.isnan(labels["targets"])], (0.0, 1.0)).all()

    # The ensemble's test predictions are alpha * short-hpcp + (1 - alpha) * long-hpcp-noisy of the members' files.
    alpha = json.loads((out / "runs" / "ensemble" / "alpha.json").read_text())["alpha"]
    _, _, short = ensemble.read_predictions(out / "runs" / "short-hpcp", "test")
    _, _, long = ensemble.read_predictions(out / "runs" / "long-hpcp-noisy", "test")
    _, _, combined = ensemble.read_predictions(out / "runs" / "ensemble", "test")
    np.testing.assert_allclose(combined, ensemble.combine(short, long, alpha), atol=1e-7)
    assert ensemble.load_members(out / "runs" / "ensemble").alpha == alpha

    report = (out / "report" / "report.md").read_text()
    for png in ("per_tag_pr_auc.png", "pr_curves.png", "alpha.png", "training_curves.png", "pseudo_labels.png"):
        assert f"]({png})" in report and (out / "report" / png).stat().st_size > 0

    # A rerun through the command line finds every step done: no file under runs/ is written again.
    from moodtag.cli import main

    def run_files():
        return {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}

    before, results_before = run_files(), (out / "results.json").read_text()
    check_sharded_pseudo_labels(main, out / "runs" / "long-hpcp", tmp_path)
    assert main(["reproduce", str(tmp_path / "configs"), "--data-root", str(tmp_path / "corpus"), "--out", str(out), "-q"]) == 0
    assert run_files() == before
    assert (out / "results.json").read_text() == results_before
    assert "| ensemble |" in capsys.readouterr().out

    # Finished runs made with other settings are refused, not silently reused.
    with pytest.raises(DataError, match="config differs"):
        reproduce(tmp_path / "configs", data_root=tmp_path / "corpus", out_dir=out, overrides=["train.lr=0.5"], quiet=True)
    assert run_files() == before


def check_sharded_pseudo_labels(main, teacher, tmp_path) -> None:
    """`moodtag pseudo-label` in two shards of 3-track chunks gives the teacher's logits of the one-go run."""
    pool, folder = tmp_path / "corpus" / "splits" / "unlabelled.tsv", tmp_path / "sharded"
    args = ["pseudo-label", str(teacher), "--pool", str(pool), "--out", str(folder), "--thresholds", "fixed",
            "--t-pos", "0.5", "--t-neg", "0.45", "--chunk-tracks", "3", "-q"]
    assert main(args + ["--shard", "1/2"]) == 0 and not (folder / "labels.npz").exists()
    assert main(args + ["--shard", "0/2"]) == 0
    with np.load(folder / "predictions.npz") as sharded, np.load(teacher / "pseudo-labels" / "predictions.npz") as whole:
        assert list(sharded["track_ids"]) == list(whole["track_ids"])
        np.testing.assert_allclose(sharded["logits"], whole["logits"], atol=1e-5)
        expected = hard_labels(sharded["probabilities"], fixed_thresholds(TAGS, t_pos=0.5, t_neg=0.45))
    with np.load(folder / "labels.npz") as labels:
        np.testing.assert_array_equal(labels["targets"], expected)


def test_plan_orders_teachers_before_students_and_finds_packaged_configs(tmp_path):
    write_configs(tmp_path / "configs")
    rows = plan_rows(tmp_path / "configs", tmp_path / "out", data_root=tmp_path)
    order = [row.name for row in rows]
    assert order.index("long-hpcp") < order.index("long-hpcp-noisy") and order[-1] == "ensemble"
    assert rows[-1].depends == ("short-hpcp", "long-hpcp-noisy")
    assert {row.name: row.kind for row in rows}["short-hpcp-noisy"] == "student"
    assert all(row.run_dir == tmp_path / "out" / "runs" / row.name for row in rows)
    assert resolve_config_dir("demo").name == "demo" and resolve_config_dir("paper").name == "paper"
    with pytest.raises(ConfigError):
        resolve_config_dir(tmp_path / "missing")


def test_plan_rejects_unknown_teachers_and_skips_an_impossible_ensemble(tmp_path):
    write_configs(tmp_path / "configs")
    (tmp_path / "configs" / "short-hpcp-noisy.yaml").write_text(STUDENT.format(teacher="short-hpcp").replace(
        "student: {teacher: short-hpcp", "student: {teacher: nobody"))
    with pytest.raises(ConfigError, match="nobody"):
        plan_rows(tmp_path / "configs", tmp_path / "out", data_root=tmp_path)
    (tmp_path / "configs" / "short-hpcp-noisy.yaml").unlink()
    rows = plan_rows(tmp_path / "configs", tmp_path / "out", data_root=tmp_path, ensemble=EnsembleSpec(short="short-hpcp-noisy"))
    assert "ensemble" not in [row.name for row in rows]
    with pytest.raises(ConfigError, match="--data-root"):
        plan_rows(tmp_path / "configs", tmp_path / "out")


def test_rows_that_cannot_run_are_reported_and_their_dependents_skipped(tmp_path, rng):
    write_corpus(tmp_path / "corpus", rng)
    write_configs(tmp_path / "configs")
    (tmp_path / "corpus" / "tags.txt").write_text("mood/theme---calm\n")  # the splits use tags it lacks
    with pytest.raises(DataError, match="no teacher row finished") as caught:
        reproduce(tmp_path / "configs", data_root=tmp_path / "corpus", out_dir=tmp_path / "out", quiet=True)
    assert "long-hpcp-noisy: not run because long-hpcp failed" in str(caught.value)


def test_paper_numbers_match_the_released_predictions(shared_dir):
    """The stored Table 1/2 values are what the paper's released files score (to the paper's rounding)."""
    from moodtag.evaluate import evaluate

    folder = shared_dir / "reference" / "mirable"
    truth = np.load(folder / "candidate-ground-truth.npy")
    for name, file in (("short-hpcp", "candidate-short-chunk.npy"), ("long-hpcp-noisy", "candidate-noisy-student.npy"),
                       ("ensemble", "candidate-ensemble.npy")):
        scores = evaluate(truth, np.load(folder / file))
        for key, value in PAPER_RESULTS[name].items():
            assert scores[key] == pytest.approx(value, abs=1.5e-4), (name, key)


@pytest.mark.slow
def test_seeds_repeat_every_row_and_summarise_mean_sd_and_claims(tmp_path, rng, capsys):
    write_corpus(tmp_path / "corpus", rng)
    write_configs(tmp_path / "configs")
    for name in ("short-normal", "short-hpcp", "short-hpcp-noisy"):  # the long rows are enough here
        (tmp_path / "configs" / f"{name}.yaml").unlink()
    out = tmp_path / "out"
    from moodtag.cli import main

    assert main(["reproduce", str(tmp_path / "configs"), "--data-root", str(tmp_path / "corpus"), "--out", str(out),
                 "--seeds", "3,5", "--jobs", "2", "--ensemble", "none", "-q"]) == 0
    per_seed = {seed: json.loads((out / f"seed-{seed}" / "results.json").read_text()) for seed in (3, 5)}
    for seed, saved in per_seed.items():
        assert saved["seed"] == seed
        assert json.loads((out / f"seed-{seed}" / "runs" / "long-hpcp" / "run.json").read_text())["seed"] == seed
    summary = json.loads((out / "results.json").read_text())
    assert summary["seeds"] == [3, 5]
    for row in ("long-normal", "long-hpcp", "long-hpcp-noisy"):
        values = [next(r for r in per_seed[s]["rows"] if r["name"] == row)["oracle"]["roc_auc_macro"] for s in (3, 5)]
        cell = summary["rows"][row]["roc_auc_macro"]
        assert cell["values"] == values
        assert cell["mean"] == pytest.approx(np.mean(values)) and cell["sd"] == pytest.approx(np.std(values, ddof=1))
    # The claims over seeds: the mean of the per-seed differences, with an interval around it.
    claim = next(f for f in summary["findings"] if f["better"] == "long-hpcp" and f["metric"] == "roc_auc_macro")
    differences = []
    for s in (3, 5):
        rows = {r["name"]: r["oracle"]["roc_auc_macro"] for r in per_seed[s]["rows"]}
        differences.append(rows["long-hpcp"] - rows["long-normal"])
    assert claim["difference"] == pytest.approx(np.mean(differences)) and claim["seeds"] == 2
    assert claim["low"] <= claim["high"] and claim["verdict"] in ("holds", "reversed", "not separated")
    printed = capsys.readouterr().out
    assert "| long-hpcp |" in printed and " ± " in printed and "HPCP helps long input" in printed
    assert "mean ± standard deviation" in (out / "results.md").read_text()


def test_results_md_flags_a_transductive_pool_and_states_the_numerics(tmp_path):
    from moodtag.report import results_markdown
    from moodtag.results import Results, RowResult

    metrics = {key: 0.5 for key, _ in TABLE_METRICS} | {"n_tracks": 9}
    numerics = {"precision": "32", "threads": 1, "cpu_capability": "AVX2"}

    def row(name, kind, pool=None):
        return RowResult(name, kind, tmp_path / name, metrics, metrics, metrics, {}, None, numerics=numerics, pool=pool)

    rows = [row("long-hpcp", "teacher"), row("short-hpcp", "teacher"),
            row("long-hpcp-noisy", "student", {"tracks": 20, "includes_evaluation_audio": True, "evaluation_tracks": 12}),
            row("ensemble", "ensemble")]
    text = results_markdown(Results(tmp_path, tmp_path, rows, [], ensemble_members=("short-hpcp", "long-hpcp-noisy")))
    assert "Transductive pool" in text and "- long-hpcp-noisy: 12 validation/test tracks" in text
    assert "- ensemble: through its member long-hpcp-noisy" in text
    assert "precision 32, 1 thread(s), AVX2 kernels" in text
    rows[2].pool["includes_evaluation_audio"] = False
    assert "Transductive" not in results_markdown(Results(tmp_path, tmp_path, rows, []))
