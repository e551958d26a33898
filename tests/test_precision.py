"""Mixed precision: the automatic choice per hardware, and a bf16-mixed training run on CPU."""
from __future__ import annotations

import csv
import json

import lightning as L
import numpy as np
import pytest
import torch

from moodtag.errors import ConfigError
from moodtag.training import precision as P

from scaling_helpers import make_corpus, tiny_config


@pytest.mark.parametrize(("capability", "expected"), [((8, 0), "bf16-mixed"), ((9, 0), "bf16-mixed"),
                                                      ((7, 0), "16-mixed"), ((7, 5), "16-mixed")])
def test_auto_on_gpus_picks_bf16_on_ampere_and_later_else_fp16_with_scaler(monkeypatch, capability, expected):
    # No GPU here: the CUDA queries are answered as an A100 / H100 / V100 / T4 would.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert P.resolve_precision("auto", "gpu") == expected
    assert P.resolve_precision("auto", "auto") == expected


def test_auto_on_cpu_follows_the_bf16_instructions(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with_bf16, without = tmp_path / "bf16", tmp_path / "plain"
    with_bf16.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    without.write_text("flags\t\t: fpu sse2 avx2 avx512f\n")
    assert P.cpu_has_native_bf16(with_bf16) and not P.cpu_has_native_bf16(without)
    assert not P.cpu_has_native_bf16(tmp_path / "absent")
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    assert P.resolve_precision("auto", "cpu") == P.resolve_precision("auto") == "bf16-mixed"
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: False)
    assert P.resolve_precision("auto", "cpu") == "32"


def test_explicit_precisions_pass_and_fp16_on_cpu_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for precision in ("32", "bf16-mixed"):
        assert P.resolve_precision(precision, "cpu") == precision
    with pytest.raises(ConfigError, match="needs a GPU"):
        P.resolve_precision("16-mixed", "cpu")
    with pytest.raises(ConfigError, match="not one of"):
        P.resolve_precision("fp8", "cpu")


@pytest.mark.slow
def test_bf16_mixed_trains_on_cpu_without_nan(tmp_path):
    from moodtag.training.run import train

    root = make_corpus(tmp_path / "corpus", {"train": 8, "validation": 6}, seed=2)
    seen: list[torch.dtype] = []

    class ConvOutputDtype(L.Callback):
        def on_fit_start(self, trainer, module) -> None:
            first_conv = next(m for m in module.model.modules() if isinstance(m, torch.nn.Conv2d))
            first_conv.register_forward_hook(lambda layer, inputs, output: seen.append(output.dtype))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = tiny_config(root, tmp_path / "run", max_epochs=2, precision="bf16-mixed")
        run_dir = train(config, quiet=True, callbacks=[ConvOutputDtype()])
    finally:
        torch.set_num_threads(threads)
    assert seen and set(seen) == {torch.bfloat16}  # the convolutions really ran in bf16
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and info["epochs"] == 2
    assert np.isfinite(info["best"]["val_roc_auc"]) and np.isfinite(info["best"]["val_loss"])
    with open(run_dir / "metrics.csv") as f:
        train_losses = [float(row["train_loss"]) for row in csv.DictReader(f)]
    assert len(train_losses) == 2 and np.isfinite(train_losses).all()
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    weights = [v for k, v in state.items() if v.is_floating_point()]
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights)  # float32 master weights
