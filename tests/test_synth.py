"""The synthetic corpus: layout, determinism, resume, tag rules, label noise, durations, and the signal it carries."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
from sklearn.metrics import roc_auc_score

from moodtag.audio import SAMPLE_RATE, load_audio
from moodtag.data.splits import read_split, read_tag_list
from moodtag.errors import ConfigError
from moodtag.synth import PRESETS, TAGS, clean_labels, generate_corpus, plan_corpus, render_track
from moodtag.synth import instruments

SMALL = dict(preset="tiny", seed=7, n_labelled=9, n_unlabelled=2, quiet=True)
SPLITS = ("train", "validation", "test", "unlabelled")
PREFIX = "mood/theme---"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "corpus"
    return out, generate_corpus(out, workers=1, **SMALL)


def _records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "parameters.jsonl").read_text().splitlines()]


def _samples(out) -> dict[str, np.ndarray]:
    return {r["track_id"]: sf.read(out / "audio" / r["path"], dtype="float32")[0] for r in _records(out)}


def _plan(preset: str, n_labelled: int, n_unlabelled: int = 0, seed: int = 0, **noise) -> list[dict]:
    rates = {"miss_rate": 0.12, "false_rate": 0.01, **noise}
    return plan_corpus(preset=PRESETS[preset], seed=seed, n_labelled=n_labelled, n_unlabelled=n_unlabelled,
                       extension="ogg", **rates)


def test_layout_splits_are_readable_disjoint_and_artist_disjoint(corpus):
    out, info = corpus
    records = {r["track_id"]: r for r in _records(out)}
    assert read_tag_list(out / "tags.txt") == list(TAGS)
    splits = {name: read_split(out / "splits" / f"{name}.tsv") for name in SPLITS}
    assert {name: len(s) for name, s in splits.items()} == info.split_sizes
    ids = [set(s.track_ids) for s in splits.values()]
    artists = [set(s.artist_ids) for s in splits.values()]
    for i in range(len(SPLITS)):
        for j in range(i + 1, len(SPLITS)):
            assert not ids[i] & ids[j] and not artists[i] & artists[j]
    assert set().union(*ids) == set(records)
    assert all(tags == [] for tags in splits["unlabelled"].tags)
    labelled = read_split(out / "autotagging_moodtheme.tsv")
    assert sorted(labelled.track_ids) == sorted(t for s in SPLITS[:3] for t in splits[s].track_ids)
    for track_id, tags, path, duration in zip(labelled.track_ids, labelled.tags, labelled.paths, labelled.durations):
        assert tags == records[track_id]["tags"] and set(tags) <= set(TAGS)
        assert (out / "audio" / path).is_file() and duration == records[track_id]["duration"]
    summary = json.loads((out / "corpus.json").read_text())
    assert summary["seed"] == 7 and set(summary["tags"]) == set(TAGS)


def test_audio_has_its_written_duration_and_is_finite_loud_and_normalised(corpus):
    out, _ = corpus
    preset = PRESETS["tiny"]
    for record in _records(out):
        path = out / "audio" / record["path"]
        assert sf.info(path).frames == round(record["duration"] * SAMPLE_RATE)
        assert preset.min_duration <= record["duration"] <= preset.max_duration
        audio = load_audio(path)
        assert np.all(np.isfinite(audio))
        assert 0.3 < np.max(np.abs(audio)) < 1.0
        assert np.sqrt(np.mean(audio**2)) > 0.01


@pytest.mark.slow
def test_same_seed_gives_the_same_corpus_for_any_number_of_workers(corpus, tmp_path):
    out, _ = corpus
    again = tmp_path / "again"
    generate_corpus(again, workers=2, **SMALL)
    for name in ("parameters.jsonl", "tags.txt", "corpus.json", "autotagging_moodtheme.tsv",
                 *(f"splits/{s}.tsv" for s in SPLITS)):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
    first, second = _samples(out), _samples(again)
    assert all(np.array_equal(first[t], second[t]) for t in first)
    other = _plan("tiny", 9, 2, seed=8)
    assert [r["seed"] for r in other] != [r["seed"] for r in _records(out)]


def test_killed_run_resumes_without_redoing_finished_tracks(corpus, tmp_path):
    out, _ = corpus
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    records = _records(copy)
    for record in records[:2]:
        (copy / "audio" / record["path"]).unlink()
    (copy / "corpus.json").unlink()
    (copy / "parameters.jsonl").unlink()
    stale = copy / "audio" / (records[0]["path"].replace("track_", ".track_") + ".x.tmp")
    stale.write_bytes(b"half a file")
    info = generate_corpus(copy, workers=1, **SMALL)
    assert (info.rendered, info.already_present) == (2, len(records) - 2)
    assert not stale.exists()
    assert (copy / "corpus.json").read_bytes() == (out / "corpus.json").read_bytes()
    first, second = _samples(out), _samples(copy)
    assert all(np.array_equal(first[t], second[t]) for t in first)


def test_other_settings_and_bad_arguments_are_refused(corpus, tmp_path):
    out, _ = corpus
    with pytest.raises(ConfigError, match="other settings"):
        generate_corpus(out, **{**SMALL, "seed": 8})
    for bad in ({"preset": "huge"}, {"audio_format": "mp3"}, {"workers": 0}, {"miss_rate": 1.5}, {"n_labelled": 2}):
        with pytest.raises(ConfigError):
            generate_corpus(tmp_path / "bad", **{**SMALL, **bad})
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError, match="not a directory"):
        generate_corpus(tmp_path / "file", **SMALL)


def test_cli_writes_a_corpus(tmp_path, capsys):
    from moodtag.cli import main

    assert main(["synth", "--preset", "tiny", "--labelled", "6", "--unlabelled", "1", "--format", "flac",
                 "--out", str(tmp_path / "c"), "--quiet"]) == 0
    assert "7 tracks" in capsys.readouterr().out
    assert len(list((tmp_path / "c" / "audio").rglob("*.flac"))) == 7


def test_clean_labels_follow_the_rules_from_saved_parameters(corpus):
    out, _ = corpus
    for record in _records(out) + _plan("demo", 300, 100):
        saved = json.loads(json.dumps(record))
        assert clean_labels(saved) == record["tags_clean"]
    record = _plan("tiny", 6)[0]
    minor_plain = {**record, "mode": "minor", "tension": "plain", "tempo": 90.0, "percussion": "none",
                   "brightness": 0.2, "modulation": None, "event": {"kind": "climax", "start": 20, "end": 30}}
    assert clean_labels(minor_plain) == [PREFIX + t for t in ("calm", "epic", "sad", "soft")]


def test_label_noise_drops_and_adds_tags_at_the_configured_rates():
    records = _plan("tiny", 3000, miss_rate=0.12, false_rate=0.01)
    positives = sum(len(r["tags_clean"]) for r in records)
    missed = sum(len(set(r["tags_clean"]) - set(r["tags"])) for r in records)
    added = sum(len(set(r["tags"]) - set(r["tags_clean"])) for r in records)
    assert missed / positives == pytest.approx(0.12, abs=0.015)
    assert added / (len(records) * len(TAGS) - positives) == pytest.approx(0.01, abs=0.003)
    assert all(r["tags"] == r["tags_clean"] for r in _plan("tiny", 200, miss_rate=0.0, false_rate=0.0))


def test_demo_durations_prevalence_and_late_partial_events():
    records = _plan("demo", 300, 600)
    durations = np.array([r["duration"] for r in records])
    assert durations.min() >= 4.0 and durations.max() <= 180.0
    assert 20 <= np.median(durations) <= 32
    assert np.mean(durations < 9.3) > 0.03 and np.sum(durations > 120) >= 5
    prevalence = {t: np.mean([t in r["tags_clean"] for r in records]) for t in TAGS}
    assert all(0.03 <= p <= 0.5 for p in prevalence.values())
    assert min(prevalence.values()) < 0.1 and max(prevalence.values()) > 0.3
    assert np.mean([len(r["tags_clean"]) for r in records]) > 1.5  # multi-label
    events = [r for r in records if r["event"]]
    assert len(events) > 50
    for r in events:
        event = r["event"]
        assert 0.5 * r["duration"] <= event["start"] < event["end"] <= r["duration"]
        assert event["end"] - event["start"] <= 0.5 * r["duration"]


@pytest.mark.parametrize("instrument", instruments.PITCHED)
def test_pitched_instruments_sound_at_their_pitch(instrument, rng):
    tone = instruments.note(instrument, 57, SAMPLE_RATE, tuning=440.0, brightness=0.5, rng=rng)  # A3 = 220 Hz
    spectrum = np.abs(np.fft.rfft(tone * np.hanning(len(tone))))  # 1 Hz bins
    peaks = np.argsort(spectrum)[-3:]  # a plucked string's strongest partial need not be the fundamental
    harmonic = peaks / 220
    assert np.all(np.abs(harmonic - np.round(harmonic)) < 0.02) and np.all(np.round(harmonic) >= 1)
    if instrument != "pluck":
        assert np.argmax(spectrum) == pytest.approx(220, abs=2)
    assert np.all(np.isfinite(tone)) and np.max(np.abs(tone)) <= 1.0


def _signal_tracks(n_per_tag: int = 8, seconds: float = 8.0) -> list[dict]:
    """Tracks with enough positives of every harmony and texture tag, cut to `seconds` (their rules ignore
    duration; a key change keeps its relative position)."""
    planned = _plan("tiny", 800, seed=3)
    chosen: dict[str, dict] = {}
    for tag in ("dark", "dramatic", "calm", "energetic", "happy", "sad", "romantic", "soft"):
        for r in [r for r in planned if PREFIX + tag in r["tags_clean"] and r["track_id"] not in chosen][:n_per_tag]:
            chosen[r["track_id"]] = r
    tracks = []
    for r in chosen.values():
        scale = seconds / r["duration"]
        modulation = r["modulation"] and {**r["modulation"], "time": r["modulation"]["time"] * scale}
        tracks.append({**r, "duration": seconds, "modulation": modulation, "event": None, "intro_silence": 0.0})
    return tracks


def _chord_template_scores(hpcp: np.ndarray) -> dict[str, float]:
    """Fraction of HPCP frames whose best-matching chord template (any root) is each chord shape."""
    shapes = {"major": (0, 4, 7), "minor": (0, 3, 7), "dim7": (0, 3, 6, 9), "maj7": (0, 4, 7, 11),
              "min7": (0, 3, 7, 10), "dom7": (0, 4, 7, 10)}
    templates = np.zeros((len(shapes) * 12, 12))
    for s, shape in enumerate(shapes.values()):
        for root in range(12):
            templates[s * 12 + root, [(root + i) % 12 for i in shape]] = 1
    templates -= templates.mean(1, keepdims=True)
    templates /= np.linalg.norm(templates, axis=1, keepdims=True)
    frames = hpcp[:, hpcp.sum(0) > 0.1] - hpcp[:, hpcp.sum(0) > 0.1].mean(0)
    best = np.argmax(templates @ frames, axis=0) // 12
    scores = {name: float(np.mean(best == s)) for s, name in enumerate(shapes)}
    third = len(frames[0]) // 3
    scores["key_change"] = 1 - np.corrcoef(frames[:, :third].mean(1), frames[:, -third:].mean(1))[0, 1]
    return scores


@pytest.mark.slow
def test_trivial_features_separate_harmony_and_texture_tags():
    from moodtag.features.hpcp import hpcpgram
    from moodtag.features.mel import log_mel_spectrogram

    tracks = _signal_tracks()
    rows = []
    for params in tracks:
        audio = render_track(params)
        harmony = _chord_template_scores(hpcpgram(audio))
        mel = log_mel_spectrogram(audio)
        flux = np.mean(np.maximum(np.diff(mel, axis=1), 0)) / (mel.mean() + 1e-3)
        rows.append({**harmony, "flux": flux, "high": mel[90:].mean()})

    def auc(tag: str, feature) -> float:
        labels = [PREFIX + tag in t["tags_clean"] for t in tracks]
        return roc_auc_score(labels, [feature(row) for row in rows])

    # Deterministic numbers (seeded corpus, exact features); the floors sit a few hundredths below them.
    assert auc("sad", lambda r: r["minor"] + r["min7"] - r["major"] - r["maj7"]) >= 0.9
    assert auc("happy", lambda r: r["major"]) >= 0.78
    assert auc("dark", lambda r: r["dim7"]) >= 0.85
    assert auc("romantic", lambda r: r["maj7"] + r["min7"] + r["dom7"]) >= 0.8
    assert auc("dramatic", lambda r: r["key_change"]) >= 0.85
    # Energetic is tempo AND percussion; 16th notes blur in 0.116 s mel steps, so it is the weakest texture tag.
    assert auc("energetic", lambda r: r["flux"]) >= 0.7
    assert auc("calm", lambda r: -r["flux"]) >= 0.85
    assert auc("soft", lambda r: -r["high"]) >= 0.85
