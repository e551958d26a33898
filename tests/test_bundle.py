"""Model bundles: export from real (tiny) training runs and an ensemble, identical predictions after loading,
refusal of incompatible bundles, and ONNX parity with PyTorch."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from moodtag.bundle import BundleError, ExportMember, export, load_bundle, versions_compatible, write_bundle
from moodtag.config import RunConfig
from moodtag.features import FeatureParams, TrackFeatures
from moodtag.models import MODEL_PRESETS, MoodCRNN
from moodtag.store import FeatureStore
from moodtag.tagging import Tagger
from moodtag.writers import read_records
from tagged_corpus import TAGS, write_tagged_corpus

pytestmark = pytest.mark.usefixtures("one_thread")

PARAMS = FeatureParams()


def make_corpus(root: Path) -> Path:
    """Tracks shorter than a chunk and with tails, tags visible in the features (see tagged_corpus)."""
    return write_tagged_corpus(root, {"train": 12, "validation": 10, "test": 6}, steps=(50, 230), id_digits=2)


def train_tiny(root: Path, run_dir: Path, mode: str) -> Path:
    from moodtag.training import train

    config = RunConfig.from_dict({
        "name": f"tiny-{mode}", "run_dir": str(run_dir),
        "data": {"root": str(root), "mode": mode, "long_steps": 160, "batch_size": 6},
        "model": {"preset": "tiny"},
        "train": {"max_epochs": 2, "lr": 3e-3, "accelerator": "cpu"},
    })
    return train(config, quiet=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A long run, a short run and their ensemble, each with validation and test predictions."""
    from moodtag.ensemble import build_ensemble, ensure_predictions

    base = tmp_path_factory.mktemp("runs")
    root = make_corpus(base / "corpus")
    out = {mode: train_tiny(root, base / mode, mode) for mode in ("long", "short")}
    for run in out.values():
        for split in ("validation", "test"):
            ensure_predictions(run, split, quiet=True)
    build_ensemble(out["short"], out["long"], base / "ensemble")
    out["ensemble"], out["corpus"] = base / "ensemble", root
    return out


def stored_validation(root: Path) -> tuple[list[str], list[TrackFeatures]]:
    store = FeatureStore(root / "features")
    track_ids = [line.split("\t")[0] for line in (root / "splits" / "validation.tsv").read_text().splitlines()[1:]]
    return track_ids, [store.load(track_id) for track_id in track_ids]


@pytest.mark.slow
@pytest.mark.parametrize("source", ["long", "short", "ensemble"])
def test_exported_bundle_predicts_what_the_run_predicted(runs, tmp_path, source):
    from moodtag.evaluate import tune_thresholds
    from moodtag.ensemble import read_predictions, split_labels

    bundle_dir = export(runs[source], tmp_path / "model", quiet=True)
    bundle = load_bundle(bundle_dir)
    assert bundle.tags == TAGS and bundle.feature_params == PARAMS
    assert [m.mode for m in bundle.members] == (["short", "long"] if source == "ensemble" else [source])
    track_ids, features = stored_validation(runs["corpus"])
    predicted_ids, _, expected = read_predictions(runs[source], "validation")
    assert predicted_ids == track_ids
    tagger = Tagger(bundle)
    got = np.array([[tagger.tag_features(f).probabilities[t] for t in TAGS] for f in features])
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)
    labels = split_labels(runs["long"], "validation", track_ids, TAGS)
    np.testing.assert_array_equal(bundle.thresholds, tune_thresholds(labels, expected))
    assert set(bundle.metrics) >= {"validation", "test", "runs"}
    assert 0 <= bundle.metrics["test"]["roc_auc_macro"] <= 1
    if source == "ensemble":
        assert bundle.alpha == json.loads((runs["ensemble"] / "alpha.json").read_text())["alpha"]


def test_export_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(BundleError, match="neither a training run"):
        export(tmp_path, tmp_path / "model")


# ---------------------------------------------------------------------------------------------------------------
# Refusals


@pytest.fixture
def bundle_dir(tmp_path) -> Path:
    torch.manual_seed(0)
    model = MoodCRNN(MODEL_PRESETS["tiny"], len(TAGS))
    return write_bundle(tmp_path / "model", [ExportMember("model", "short", 80, model)], tags=TAGS,
                        thresholds=np.array([0.2, 0.5, 0.9]), feature_params=PARAMS, chunk_steps=80)


def edit_info(bundle_dir: Path, **changes) -> None:
    path = bundle_dir / "bundle.json"
    info = json.loads(path.read_text())
    info.update(changes)
    path.write_text(json.dumps(info))


def test_load_round_trips_weights_and_thresholds(bundle_dir):
    bundle = load_bundle(bundle_dir)
    np.testing.assert_array_equal(bundle.thresholds, [0.2, 0.5, 0.9])
    torch.manual_seed(0)
    original = MoodCRNN(MODEL_PRESETS["tiny"], len(TAGS))
    for name, value in original.state_dict().items():
        torch.testing.assert_close(bundle.build_model(bundle.members[0]).state_dict()[name], value, rtol=0, atol=0)


def test_refuses_a_feature_hash_this_moodtag_does_not_compute(bundle_dir):
    edit_info(bundle_dir, feature_hash="0123456789abcdef")
    with pytest.raises(BundleError, match="hash 0123456789abcdef.*feature code changed"):
        load_bundle(bundle_dir)


def test_refuses_bundles_when_the_feature_code_version_changed(bundle_dir, monkeypatch):
    import moodtag.features.params as params_module

    monkeypatch.setattr(params_module, "FEATURE_VERSION", params_module.FEATURE_VERSION + 1)
    with pytest.raises(BundleError, match="feature code changed"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("version", ["99.0.0", "0.0.1", "0.99.0", "garbage"])
def test_refuses_incompatible_moodtag_versions(bundle_dir, version):
    edit_info(bundle_dir, moodtag_version=version)
    with pytest.raises(BundleError, match=f"made by moodtag {version}"):
        load_bundle(bundle_dir)


def test_version_rule():
    assert versions_compatible("0.1.0", "0.1.3") and versions_compatible("1.2.0", "1.4.1")
    assert not versions_compatible("0.1.4", "0.1.3") and not versions_compatible("0.1.0", "0.2.0")
    assert not versions_compatible("1.0.0", "2.0.0")


def test_refuses_other_formats_corrupt_weights_and_non_bundles(bundle_dir, tmp_path):
    with pytest.raises(BundleError, match="not a moodtag model bundle"):
        load_bundle(tmp_path)
    shutil.copytree(bundle_dir, tmp_path / "newer")
    edit_info(tmp_path / "newer", format=2)
    with pytest.raises(BundleError, match="upgrade moodtag"):
        load_bundle(tmp_path / "newer")
    weights = bundle_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_bundle(bundle_dir)


def test_export_never_replaces_a_folder_that_is_not_a_bundle(tmp_path):
    (tmp_path / "music").mkdir()
    (tmp_path / "music" / "song.ogg").write_bytes(b"x")
    model = MoodCRNN(MODEL_PRESETS["tiny"], len(TAGS))
    with pytest.raises(BundleError, match="not a moodtag bundle"):
        write_bundle(tmp_path / "music", [ExportMember("model", "long", 160, model)], tags=TAGS,
                     thresholds=np.zeros(3), feature_params=PARAMS, chunk_steps=80)
    assert (tmp_path / "music" / "song.ogg").exists()


# ---------------------------------------------------------------------------------------------------------------
# ONNX

# float32 graphs evaluated by two runtimes: differences are rounding in different op orders (about 1e-7 here).
ONNX_ATOL = 1e-5


@pytest.mark.slow
def test_onnx_models_match_pytorch(tmp_path, rng):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from moodtag.features.mel_torch import MelFrontEnd

    torch.manual_seed(0)
    model = MoodCRNN(MODEL_PRESETS["tiny"], len(TAGS)).eval()
    bundle_dir = write_bundle(tmp_path / "model", [ExportMember("model", "short", 80, model)], tags=TAGS,
                              thresholds=np.full(3, 0.5), feature_params=PARAMS, chunk_steps=80, onnx=True)
    member = load_bundle(bundle_dir).members[0]
    assert member.onnx == "model.onnx" and member.onnx_audio == "model-audio.onnx"
    session = ort.InferenceSession(str(bundle_dir / member.onnx))
    for batch, steps in ((1, 80), (3, 1600), (2, 37)):  # short chunks, a long window, an odd length
        mel = rng.random((batch, 128, steps), dtype=np.float32)
        hpcp = rng.random((batch, 12, round(steps * 2.5)), dtype=np.float32)
        (onnx_logits,) = session.run(["logits"], {"mel": mel, "hpcp": hpcp})
        with torch.no_grad():
            torch_logits = model(torch.from_numpy(mel), torch.from_numpy(hpcp)).numpy()
        np.testing.assert_allclose(onnx_logits, torch_logits, rtol=0, atol=ONNX_ATOL)
    audio_session = ort.InferenceSession(str(bundle_dir / member.onnx_audio))
    audio = (0.1 * rng.standard_normal((2, 5 * 44100 + 123))).astype(np.float32)
    hpcp = rng.random((2, 12, 110), dtype=np.float32)
    (onnx_logits,) = audio_session.run(["logits"], {"audio": audio, "hpcp": hpcp})
    with torch.no_grad():
        torch_logits = model(MelFrontEnd(PARAMS)(torch.from_numpy(audio)), torch.from_numpy(hpcp)).numpy()
    np.testing.assert_allclose(onnx_logits, torch_logits, rtol=0, atol=ONNX_ATOL)
    # The tagger's ONNX backend gives the PyTorch backend's results.
    features = TrackFeatures(rng.random((128, 200), dtype=np.float32), rng.random((12, 500), dtype=np.float32),
                             23.2, 44100, PARAMS.hash)
    by_torch = Tagger.load(bundle_dir, backend="torch").tag_features(features, timeline=True).to_dict()
    by_onnx = Tagger.load(bundle_dir).tag_features(features, timeline=True).to_dict()  # auto: ONNX when exported
    assert load_bundle(bundle_dir).has_onnx()
    for tag in TAGS:
        assert by_onnx["probabilities"][tag] == pytest.approx(by_torch["probabilities"][tag], abs=ONNX_ATOL)
        assert by_onnx["timeline"][-1]["probabilities"][tag] == pytest.approx(
            by_torch["timeline"][-1]["probabilities"][tag], abs=ONNX_ATOL)
    # `moodtag tag` with an ONNX bundle loads no torch, Lightning or scikit-learn, in its main process or its
    # workers (they run everything but the final combination): each would cost 1-2 s of start-up.
    from moodtag.audio import write_audio

    write_audio(tmp_path / "a.wav", (0.1 * rng.standard_normal(20 * 44100)).astype(np.float32))
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "moodtag", "tag", str(tmp_path / "a.wav"),
                           "--model", str(bundle_dir), "--workers", "1", "--output", str(tmp_path / "tags.jsonl"),
                           "-q"], capture_output=True, text=True, check=True)
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time")}
    assert "moodtag.tagging" in imported and "onnxruntime" in imported
    assert not imported & {"torch", "lightning", "sklearn", "librosa"}
    (record,) = read_records(tmp_path / "tags.jsonl", "jsonl")
    expected = Tagger.load(bundle_dir).tag(tmp_path / "a.wav").probabilities
    assert record["probabilities"] == pytest.approx(expected, abs=1e-6)  # written with 6 digits


# ---------------------------------------------------------------------------------------------------------------
# What the model learnt from

SYNTHETIC_WARNING = "trained on moodtag's synthetic corpus"


@pytest.fixture(scope="module")
def synthetic_bundle(tmp_path_factory) -> tuple[Path, Path]:
    """A bundle exported from a tiny run trained on a (small) corpus generated by `moodtag synth`: (bundle, corpus)."""
    from moodtag.extract import extract
    from moodtag.synth import generate_corpus
    from moodtag.training import train

    base = tmp_path_factory.mktemp("synthetic")
    corpus = base / "corpus"
    generate_corpus(corpus, preset="tiny", seed=3, n_labelled=9, n_unlabelled=0, workers=1, quiet=True)
    extract(sorted((corpus / "splits").glob("*.tsv")), corpus / "features", audio_root=corpus / "audio", quiet=True)
    config = RunConfig.from_dict({
        "name": "synthetic", "run_dir": str(base / "run"), "data": {"root": str(corpus), "mode": "short"},
        "model": {"preset": "tiny"}, "train": {"max_epochs": 1, "accelerator": "cpu"},
    })
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return export(train(config, quiet=True), base / "model", quiet=True), corpus
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_a_bundle_trained_on_the_synthetic_corpus_says_so_once(synthetic_bundle, tmp_path, capsys):
    import subprocess
    import sys

    from moodtag.cli import main

    bundle_dir, corpus = synthetic_bundle
    bundle = load_bundle(bundle_dir)
    assert bundle.synthetic and bundle.training_data["root"] == str(corpus.resolve())
    assert bundle.training_data["corpus"]["preset"] == "tiny" and bundle.training_data["corpus"]["seed"] == 3
    track = next((corpus / "audio").rglob("*.ogg"))
    done = subprocess.run([sys.executable, "-m", "moodtag", "tag", str(track), "--model", str(bundle_dir),
                           "--workers", "0", "-q"], capture_output=True, text=True, check=True)
    warnings = [line for line in done.stderr.splitlines() if SYNTHETIC_WARNING in line]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING ") and "docs/tagging.md" in warnings[0]
    assert json.loads(done.stdout)["path"] == str(track)
    assert main(["export", bundle.members[0].source, "--out", str(tmp_path / "again"), "-q"]) == 0
    assert "trained on the synthetic corpus" in capsys.readouterr().out


@pytest.mark.slow
def test_a_bundle_from_another_data_root_does_not_warn(runs, tmp_path, caplog):
    bundle_dir = export(runs["ensemble"], tmp_path / "model", quiet=True)
    bundle = load_bundle(bundle_dir)
    assert bundle.training_data == {"kind": "unknown", "root": str(runs["corpus"].resolve())}
    with caplog.at_level("WARNING"):
        Tagger.load(bundle_dir)
    assert not bundle.synthetic and SYNTHETIC_WARNING not in caplog.text


def test_bundles_from_before_the_training_data_field_load_without_a_warning(bundle_dir, caplog):
    path = bundle_dir / "bundle.json"
    info = json.loads(path.read_text())
    assert info.pop("training_data") == {"kind": "unknown"}  # write_bundle without training_data
    path.write_text(json.dumps(info))
    with caplog.at_level("WARNING"):
        tagger = Tagger.load(bundle_dir)
    assert tagger.bundle.training_data == {"kind": "unknown"} and not tagger.bundle.synthetic
    assert SYNTHETIC_WARNING not in caplog.text


@pytest.mark.slow
def test_members_from_different_data_roots_are_recorded_each(synthetic_bundle, runs):
    from moodtag.bundle import _training_data

    corpus = synthetic_bundle[1]
    mixed = _training_data({"short": str(corpus), "long": str(runs["corpus"])})
    assert mixed["kind"] == "synthetic"  # any synthetic member makes the bundle's tags untrustworthy
    assert mixed["members"]["short"]["kind"] == "synthetic" and mixed["members"]["long"]["kind"] == "unknown"
    assert _training_data({"short": str(corpus), "long": str(corpus)})["root"] == str(corpus)
