"""The multi-resolution model beyond the paper (issue #15): its views against the short model they reproduce, its
independence of trailing padding (what data.trim_padding and the tagger rely on), ONNX, training and tagging."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from moodtag.bundle import export, load_bundle
from moodtag.config import RunConfig
from moodtag.errors import ConfigError
from moodtag.features import FeatureParams
from moodtag.models import (MODEL_PRESETS, MoodCRNN, MultiResConfig, MultiResCRNN, build_model, model_config_from_dict,
                            resolve_model_config)
from moodtag.tagging import Tagger
from moodtag.training.aggregate import chunk_mean_logits
from tagged_corpus import TAGS, write_tagged_corpus

pytestmark = pytest.mark.usefixtures("one_thread")
PARAMS = FeatureParams()


def demo_model(n_tags: int = 3, **overrides) -> MultiResCRNN:
    torch.manual_seed(0)
    return build_model(resolve_model_config({"preset": "multires-demo", **overrides}), n_tags).eval()


def features(steps: int, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 128, steps, generator=generator),
            torch.rand(batch, 12, round(steps * PARAMS.hpcp_frames_per_mel_step), generator=generator))


def padded(x: torch.Tensor, length: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, length - x.shape[-1]))


def test_configs_round_trip_and_dispatch_on_their_family():
    for name, config in MODEL_PRESETS.items():
        data = json.loads(json.dumps(config.to_dict()))
        assert model_config_from_dict(data) == config, name
        assert isinstance(build_model(data, 3), MultiResCRNN if name.startswith("multires") else MoodCRNN)
    with pytest.raises(ConfigError, match="family"):
        model_config_from_dict({**MODEL_PRESETS["multires"].to_dict(), "family": "transformer"})
    with pytest.raises(ConfigError, match="unknown key"):
        MultiResConfig.from_dict({"gru_pool": "last"})
    with pytest.raises(ConfigError, match="even"):
        MultiResConfig(chunk_steps=81)
    with pytest.raises(ConfigError, match="aux_weight"):
        MultiResConfig(aux_weight=-1)


def test_short_view_is_the_short_model_evaluated_on_the_tracks_chunks():
    """A track of whole chunks: the short view is MoodCRNN's mean chunk logits (the paper's short evaluation) of the
    model's own short CRNN, and each window's logits are that CRNN's on the chunk."""
    model = demo_model()
    mel, hpcp = features(3 * 80)
    views = model.views(mel, hpcp)
    chunks_mel = mel[0].reshape(128, 3, 80).permute(1, 0, 2)
    chunks_hpcp = hpcp[0].reshape(12, 3, 200).permute(1, 0, 2)
    with torch.no_grad():
        expected = chunk_mean_logits(model.short, chunks_mel, chunks_hpcp, None, 1, 32)
        torch.testing.assert_close(views["short"], expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(views["windows"][0], model.short(chunks_mel, chunks_hpcp), rtol=0, atol=1e-5)
    torch.testing.assert_close(views["window_share"], torch.ones(1, 3))


def test_fused_logits_are_the_views_weighted_by_their_learnt_softmax_weights():
    model = demo_model()
    with torch.no_grad():
        model.fusion.copy_(torch.randn(3, 3))
    views = model.views(*features(170))
    weights = torch.softmax(model.fusion, dim=0)
    expected = weights[0] * views["long"] + weights[1] * views["short"] + weights[2] * views["fine"]
    torch.testing.assert_close(views["fused"], expected)
    assert np.allclose(np.sum(list(model.fusion_weights().values()), axis=0), 1.0)


@pytest.mark.parametrize("preset", ["multires-demo", "multires"])
def test_output_does_not_depend_on_trailing_zero_padding(preset):
    """What lets data.trim_padding cut batches and the tagger cut tracks: every view is the same padded or not
    (and a window of only padding does not count)."""
    torch.manual_seed(0)
    model = build_model(resolve_model_config(preset), 3).eval()
    mel, hpcp = features(150)
    with torch.no_grad():
        alone = model.views(mel, hpcp)
        for length in (160, 400):
            longer = model.views(padded(mel, length), padded(hpcp, round(length * 2.5)))
            for name in ("long", "short", "fine", "fused"):
                torch.testing.assert_close(longer[name], alone[name], rtol=0, atol=1e-5)
        # Batched with a longer track, the shorter one's logits are its own.
        other, other_hpcp = features(400, seed=1)
        both = model(torch.cat([padded(mel, 400), other]), torch.cat([padded(hpcp, 1000), other_hpcp]))
        torch.testing.assert_close(both[:1], alone["fused"], rtol=0, atol=1e-5)


def test_padding_matters_to_the_paper_model():
    """The property above is the multi-resolution model's, not every model's (so trim_padding is refused for
    MoodCRNN)."""
    torch.manual_seed(0)
    crnn = MoodCRNN(MODEL_PRESETS["demo"], 3).eval()
    mel, hpcp = features(150)
    with torch.no_grad():
        assert not torch.allclose(crnn(mel, hpcp), crnn(padded(mel, 400), padded(hpcp, 1000)), atol=1e-4)


def test_each_config_field_changes_the_model():
    mel, hpcp = features(170)
    base = demo_model()
    with torch.no_grad():
        reference = base.views(mel, hpcp)
    changes = {"gru_hidden": 8, "head_hidden": 8, "short_hidden": 8, "embed_dim": 8, "fusion_hidden": 8,
               "fine_dim": 8, "fine_layers": 1, "chunk_steps": 40, "mel_channels": [4, 8], "hpcp_channels": [4, 4, 8, 8],
               "mel_pooling": [[4, 2], [4, 2]], "hpcp_pooling": [[1, 2], [1, 2], [1, 4], [12, 1]],
               "hpcp_circular": False, "gem_p": 2.0, "gem_learnable": False, "dropout": 0.5, "use_hpcp": False}
    for key, value in changes.items():
        model = demo_model(**{key: value})
        model.train(key == "dropout")
        torch.manual_seed(1)
        with torch.no_grad():
            out = model.views(mel, hpcp)
        learnt = sum(p.numel() for p in model.parameters()) != sum(p.numel() for p in base.parameters())
        assert learnt or not torch.allclose(out["fused"], reference["fused"]), key
    # aux_weight acts in training: test_aux_weight_weighs_the_views_losses.


def test_onnx_export_matches_pytorch_at_any_length(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from moodtag.onnx_export import export_features_model

    model = demo_model()
    export_features_model(model, PARAMS, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    for steps in (1, 80, 257, 1600):
        mel, hpcp = features(steps, batch=2, seed=steps)
        mel[1, :, steps // 2:] = 0
        with torch.no_grad():
            expected = model(mel, hpcp).numpy()
        got = session.run(["logits"], {"mel": mel.numpy(), "hpcp": hpcp.numpy()})[0]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


# --- training and tagging ----------------------------------------------------------------------------------------

def multires_config(root: Path, run_dir: Path, **data) -> RunConfig:
    return RunConfig.from_dict({
        "name": "multires", "run_dir": str(run_dir),
        "data": {"root": str(root), "mode": "long", "long_steps": 320, "batch_size": 6, "trim_padding": True, **data},
        "model": {"preset": "multires-demo"},
        "train": {"max_epochs": 2, "lr": 3e-3, "accelerator": "cpu", "num_threads": 1},
    })


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_tagged_corpus(tmp_path_factory.mktemp("corpus"), {"train": 14, "validation": 10, "test": 6},
                               steps=(50, 300), id_digits=2)


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory) -> Path:
    from moodtag.training import train

    return train(multires_config(corpus, tmp_path_factory.mktemp("runs") / "multires"), quiet=True)


def test_trim_padding_needs_long_mode_and_a_model_that_ignores_padding(tmp_path):
    with pytest.raises(ConfigError, match="trim_padding"):
        RunConfig.from_dict({"name": "x", "data": {"trim_padding": True}, "model": {"preset": "demo"}})
    with pytest.raises(ConfigError, match="trim_padding"):
        RunConfig.from_dict({"name": "x", "data": {"trim_padding": True, "mode": "short"},
                             "model": {"preset": "multires-demo"}})


def test_trimmed_batches_are_cut_after_their_longest_track_and_change_no_prediction(corpus, run, tmp_path):
    from moodtag.data.datamodule import MoodDataModule, evaluation_loader
    from moodtag.training import predict

    config = multires_config(corpus, tmp_path / "unused")
    module = MoodDataModule(config)
    module.setup("fit")
    loader = evaluation_loader(module.val_tracks, config.data, use_hpcp=True, hpcp_frames_per_step=2.5, batch_size=4)
    for batch in loader:
        audio = (batch["mel"] != 0).any(dim=1).any(dim=0).nonzero()
        assert batch["mel"].shape[-1] == min(320, -(-(int(audio[-1]) + 1) // 80) * 80)
        assert batch["hpcp"].shape[-1] == round(batch["mel"].shape[-1] * 2.5)
    track_ids, trimmed = predict(run, corpus / "splits" / "validation.tsv")
    # The same run's model with every crop padded to long_steps.
    from moodtag.training.run import load_run

    model, *_ = load_run(run)
    padded_config = dataclasses.replace(config.data, trim_padding=False)
    loader = evaluation_loader(module.val_tracks, padded_config, use_hpcp=True, hpcp_frames_per_step=2.5)
    with torch.no_grad():
        full = torch.cat([model(b["mel"], b["hpcp"]) for b in loader]).numpy()
    assert next(iter(loader))["mel"].shape[-1] == 320
    np.testing.assert_allclose(trimmed, full, rtol=0, atol=2e-5)
    assert track_ids == module.val_tracks.track_ids


def test_length_grouped_batches_hold_every_track_once_in_batches_of_similar_length():
    from moodtag.data.datamodule import LengthGroupedBatchSampler

    lengths = list(np.random.default_rng(0).integers(10, 1000, 100))
    sampler = LengthGroupedBatchSampler(lengths, batch_size=8)
    torch.manual_seed(0)
    first = list(sampler)
    assert sorted(i for batch in first for i in batch) == list(range(100)) and len(first) == len(sampler) == 13
    spread = np.mean([np.ptp([lengths[i] for i in batch]) for batch in first])
    assert spread < 0.5 * np.mean([np.ptp(lengths[i: i + 8]) for i in range(0, 100, 8)])
    torch.manual_seed(0)
    assert list(sampler) == first
    assert list(sampler) != first


def test_aux_weight_weighs_the_views_losses(corpus, tmp_path):
    from moodtag.training.module import TaggingModule

    losses = []
    for aux_weight in (0.0, 1.0):
        config = RunConfig.from_dict({**multires_config(corpus, tmp_path).to_dict(),
                                      "model": {"preset": "multires-demo", "aux_weight": aux_weight}})
        torch.manual_seed(0)
        module = TaggingModule(config.to_dict(), TAGS, config.model.build_config().to_dict(), {}, 2.5).eval()
        mel, hpcp = features(240, batch=2)
        targets = torch.tensor([[1.0, 0.0, float("nan")], [0.0, 1.0, 1.0]])
        loss, _ = module._training_loss(mel, hpcp, targets)
        views = module.model.views(mel, hpcp)
        fused, _ = module.loss(views["fused"], targets)
        losses.append((float(loss.detach()), float(fused.detach())))
    (without, fused0), (with_views, fused1) = losses
    assert without == pytest.approx(fused0) and fused1 == pytest.approx(fused0)
    assert with_views > without + 1e-3


def test_a_multires_run_exports_and_tags_what_it_predicted_with_onnx_and_a_timeline(corpus, run, tmp_path):
    pytest.importorskip("onnxruntime")
    from moodtag.ensemble import ensure_predictions, read_predictions
    from moodtag.store import FeatureStore

    ensure_predictions(run, "validation", quiet=True)
    bundle_dir = export(run, tmp_path / "model", onnx=True, quiet=True)
    bundle = load_bundle(bundle_dir)
    assert bundle.members[0].mode == "long" and bundle.members[0].ignores_padding
    predicted_ids, _, expected = read_predictions(run, "validation")
    store = FeatureStore(corpus / "features")
    for backend in ("torch", "onnx"):
        tagger = Tagger.load(bundle_dir, backend=backend)
        got = np.array([[tagger.tag_features(store.load(t)).probabilities[tag] for tag in TAGS] for t in predicted_ids])
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)
    result = Tagger.load(bundle_dir).tag_features(store.load(predicted_ids[0]), timeline=True)
    assert result.timeline and result.timeline[-1].end == pytest.approx(result.duration)


def test_init_from_starts_the_short_view_as_the_named_run_and_orders_the_rows(corpus, tmp_path):
    from moodtag.reproduce import plan_rows
    from moodtag.training import train
    from moodtag.training.module import TaggingModule
    from moodtag.training.run import _start_from_run, load_model

    runs = tmp_path / "runs"
    short = RunConfig.from_dict({
        "name": "short-hpcp", "run_dir": str(runs / "short-hpcp"),
        "data": {"root": str(corpus), "mode": "short", "batch_size": 6}, "model": {"preset": "demo"},
        "train": {"max_epochs": 1, "lr": 3e-3, "accelerator": "cpu", "num_threads": 1},
    })
    train(short, quiet=True)
    config = RunConfig.from_dict({**multires_config(corpus, runs / "multires").to_dict(),
                                  "train": {"init_from": "short-hpcp", "accelerator": "cpu"}})
    fresh = TaggingModule(config.to_dict(), TAGS, config.model.build_config().to_dict(), {}, 2.5)
    source, _, _ = load_model(runs / "short-hpcp")
    assert not torch.equal(fresh.model.short.head[0].weight, source.head[0].weight)
    _start_from_run(fresh, config)
    for name, value in source.state_dict().items():
        torch.testing.assert_close(fresh.model.short.state_dict()[name], value, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="student"):
        RunConfig.from_dict({"name": "x", "train": {"init_from": "a"}, "student": {"teacher": "a"}})
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "short-hpcp.yaml").write_text("data: {mode: short}\nmodel: {preset: demo}\n")
    (folder / "multires.yaml").write_text("data: {mode: long, trim_padding: true}\nmodel: {preset: multires-demo}\n"
                                          "train: {init_from: short-hpcp}\n")
    rows = plan_rows(folder, tmp_path / "out", data_root=corpus)
    assert [(row.name, row.depends) for row in rows] == [("short-hpcp", ()), ("multires", ("short-hpcp",))]
