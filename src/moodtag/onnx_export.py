"""ONNX export of a bundle member: over features, and over raw 44.1 kHz audio with the mel front end inside.

`model.onnx`: inputs `mel` (batch, n_mels, steps) and, for HPCP models, `hpcp` (batch, 12, frames); output `logits`
(batch, n_tags). Batch and time are dynamic, so the same file serves long (1600 steps) and short (80) inputs.

`model-audio.onnx`: input `audio` (batch, samples) mono float32 at the feature sample rate (at least 2048 samples),
plus `hpcp` for HPCP models; output `logits`. The mel front end (`moodtag.features.mel_torch.MelFrontEnd`: STFT, mel bank,
pooling, log1p) is inside. HPCP stays outside: its spectral peak picking keeps a data-dependent number of peaks per
frame (Essentia's PeakDetection: up to 100 interpolated maxima above a threshold, then per-peak pitch-class
weighting), which ONNX's static graph cannot express without a fixed-size reformulation that would no longer
match the Essentia-exact features the model was trained on. Callers compute HPCP with `moodtag.features.hpcpgram`.

The model graph uses torch's TorchScript exporter (its GRU export is mature); the front end needs the dynamo
exporter (complex STFT); the two graphs are joined with `onnx.compose.merge_models`.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

from .features.params import FeatureParams

log = logging.getLogger(__name__)

OPSET = 18
# Example input lengths for tracing; the exported axes are dynamic.
_EXAMPLE_STEPS = 80
_EXAMPLE_SECONDS = 2


def export_onnx(model, params: FeatureParams, root: Path, folder: str = "") -> tuple[str, str | None]:
    """Write `<folder>model.onnx` and, when the front end exports, `<folder>model-audio.onnx` under `root`.

    Returns their paths relative to `root` (None for the audio model when it could not be exported; the reason
    is logged).
    """
    features_name = f"{folder}model.onnx"
    export_features_model(model, params, root / features_name)
    audio_name = f"{folder}model-audio.onnx"
    try:
        export_audio_model(model, params, root / audio_name, features_model=root / features_name)
    except (ImportError, RuntimeError, ValueError) as err:
        log.warning("raw-audio ONNX model not written: %s: %s", type(err).__name__, str(err).splitlines()[0])
        return features_name, None
    return features_name, audio_name


def export_features_model(model, params: FeatureParams, path: Path) -> None:
    """ONNX of `model(mel, hpcp) -> logits` with dynamic batch and time axes."""
    import torch

    model = model.eval()
    mel = torch.zeros(2, model.config.n_mels, _EXAMPLE_STEPS)
    inputs, names = (mel,), ["mel"]
    axes = {"mel": {0: "batch", 2: "steps"}, "logits": {0: "batch"}}
    if model.config.use_hpcp:
        frames = round(_EXAMPLE_STEPS * params.hpcp_frames_per_mel_step)
        inputs, names = (mel, torch.zeros(2, model.config.hpcp_bins, frames)), ["mel", "hpcp"]
        axes["hpcp"] = {0: "batch", 2: "frames"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter warns about GRU batch sizes it handles correctly
        torch.onnx.export(model, inputs, str(path), input_names=names, output_names=["logits"], dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False)


def export_audio_model(model, params: FeatureParams, path: Path, *, features_model: Path) -> None:
    """ONNX of audio (+ hpcp) -> logits: the exported mel front end joined to the features model."""
    import onnx
    import torch
    from onnx import compose

    from .features.mel_torch import MelFrontEnd

    front_end = MelFrontEnd(params).eval()
    example = torch.zeros(2, _EXAMPLE_SECONDS * params.sample_rate)
    example[:, ::97] = 0.1  # not silence: keeps every op on the traced path
    samples = torch.export.Dim("samples", min=params.n_fft, max=params.sample_rate * 4 * 3600)
    dims = ({0: torch.export.Dim("batch"), 1: samples},)
    front_path = path.with_name(path.name + ".front.onnx")
    quiet = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [logger.level for logger in quiet]
    try:
        for logger in quiet:  # the dynamo exporter narrates every optimisation pass at INFO
            logger.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(front_end, (example,), input_names=["audio"], output_names=["mel"],
                                        dynamic_shapes=dims, opset_version=OPSET, dynamo=True, verbose=False)
        program.save(str(front_path))
        front = compose.add_prefix(onnx.load(str(front_path)), "frontend/", rename_inputs=False, rename_outputs=True)
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
        front_path.unlink(missing_ok=True)
    body = onnx.load(str(features_model))
    body.ir_version = max(body.ir_version, front.ir_version)
    front.ir_version = body.ir_version
    merged = compose.merge_models(front, body, io_map=[("frontend/mel", "mel")])
    onnx.checker.check_model(merged)
    onnx.save(merged, str(path))
