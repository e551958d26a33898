"""Models: GeM against average/max pooling, residual and stochastic blocks, MoodCRNN shapes, presets and export."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from moodtag.errors import ConfigError
from moodtag.models import (MODEL_PRESETS, CRNNConfig, GeM, MoodCRNN, ResidualConvBlock, StochasticConvBlock,
                            build_model, resolve_model_config)

N_TAGS = 7


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Seeded; one thread, because these tiny tensors only pay thread hand-offs on a shared two-core machine."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(**overrides) -> MoodCRNN:
    return MoodCRNN(resolve_model_config({"preset": "tiny", **overrides}), N_TAGS)


def _inputs(batch: int, steps: int, hpcp_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(batch, 128, steps), torch.rand(batch, 12, hpcp_frames)


# --- GeM -------------------------------------------------------------------------------------------------------------

def test_gem_with_p_one_is_average_pooling():
    x = torch.rand(2, 3, 16, 10) + 0.01
    gem = GeM(1.0, kernel=(4, 2))
    torch.testing.assert_close(gem(x), F.avg_pool2d(x, (4, 2)), rtol=1e-5, atol=1e-6)


def test_gem_approaches_max_pooling_as_p_grows():
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64) + 0.1
    max_pooled = F.max_pool2d(x, 2)
    errors = [(GeM(p, kernel=(2, 2)).double()(x) - max_pooled).abs().max().item() for p in (3.0, 20.0, 200.0)]
    assert errors[0] > errors[1] > errors[2]
    # For p -> inf the generalised mean of 4 values is within a factor 4 ** (1/p) of the max.
    assert errors[2] < 0.01
    assert (GeM(200.0, kernel=(2, 2)).double()(x) <= max_pooled + 1e-12).all()


def test_gem_matches_hand_computation_with_partial_window():
    x = torch.tensor([[[[1.0, 2.0, 4.0]]]])       # (1, 1, 1, 3), kernel (1, 2): windows [1, 2] and the cut-off [4]
    out = GeM(3.0, kernel=(1, 2))(x)
    expected = torch.tensor([[[[((1 + 8) / 2) ** (1 / 3), 4.0]]]])
    torch.testing.assert_close(out, expected)


def test_gem_p_is_learnt_or_fixed():
    x = torch.rand(1, 1, 4, 4, requires_grad=True)
    learnt = GeM(3.0)
    learnt(x).sum().backward()
    assert learnt.p.grad is not None and learnt.p.grad.abs().item() > 0
    fixed = GeM(3.0, learnable=False)
    assert not any(True for _ in fixed.parameters())


# --- ResidualConvBlock -----------------------------------------------------------------------------------------------

def test_residual_block_shapes_with_ceil_pooling():
    block = ResidualConvBlock(1, 8, pool=(4, 2))
    assert block(torch.rand(3, 1, 128, 81)).shape == (3, 8, 32, 41)
    assert block(torch.rand(3, 1, 128, 1)).shape == (3, 8, 32, 1)
    assert ResidualConvBlock(8, 8, pool=(1, 1))(torch.rand(2, 8, 5, 7)).shape == (2, 8, 5, 7)


def test_residual_path_alone_when_conv_is_zero():
    x = torch.rand(2, 3, 8, 6) + 0.05
    same = ResidualConvBlock(3, 3, pool=(2, 2), gem_p=1.0)
    torch.nn.init.zeros_(same.conv.weight)          # conv -> BN of zeros -> ReLU gives 0: only the skip remains
    torch.testing.assert_close(same(x), F.avg_pool2d(x, 2))

    projected = ResidualConvBlock(3, 5, pool=(2, 2), gem_p=1.0)
    torch.nn.init.zeros_(projected.conv.weight)
    with torch.no_grad():
        weight = torch.zeros(5, 3, 1, 1)
        weight[torch.arange(5), torch.arange(5) % 3] = 1.0   # output channel c copies input channel c % 3
        projected.project.weight.copy_(weight)
        projected.project.bias.zero_()
    torch.testing.assert_close(projected(x), F.avg_pool2d(x[:, [0, 1, 2, 0, 1]], 2))


# --- StochasticConvBlock ---------------------------------------------------------------------------------------------

def test_stochastic_block_bypass_frequency_in_training():
    block = StochasticConvBlock(4, drop_prob=0.1, dropout=0.1).train()
    x = torch.rand(2, 4, 6, 6)
    calls = 2000
    with torch.no_grad():
        bypassed = sum(torch.equal(block(x), x) for _ in range(calls))
    # Binomial(2000, 0.1): sd ~ 13.4, so +-60 is > 4 sd.
    assert abs(bypassed - 0.1 * calls) < 60


def test_stochastic_block_always_applied_in_eval():
    block = StochasticConvBlock(4, drop_prob=0.5, dropout=0.5)
    with torch.no_grad():
        block.block[1].running_mean.fill_(0.2)       # eval output differs from the input
    block.eval()
    x = torch.rand(2, 4, 6, 6)
    first = block(x)
    assert not torch.equal(first, x)
    assert all(torch.equal(block(x), first) for _ in range(50))
    expected = F.relu(block.block[1](block.block[0](x)))
    torch.testing.assert_close(first, expected)


def test_stochastic_block_choice_is_seeded():
    block = StochasticConvBlock(2, drop_prob=0.5).train()
    x = torch.rand(1, 2, 3, 3)

    def pattern():
        torch.manual_seed(123)
        return [torch.equal(block(x), x) for _ in range(40)]

    assert pattern() == pattern()


# --- CRNNConfig ------------------------------------------------------------------------------------------------------

def test_config_round_trips_through_dict():
    for config in MODEL_PRESETS.values():
        data = config.to_dict()
        assert isinstance(data["mel_pooling"][0], list)
        assert type(config).from_dict(data) == config


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match="unknown key.*gru_size"):
        CRNNConfig.from_dict({"gru_size": 3})
    with pytest.raises(ConfigError, match="mel_pooling"):
        CRNNConfig(mel_channels=(8, 8), mel_pooling=((2, 2),))
    with pytest.raises(ConfigError, match="stochastic_drop_prob"):
        CRNNConfig(stochastic_drop_prob=1.0)
    with pytest.raises(ConfigError, match="gru_pool"):
        CRNNConfig(gru_pool="max")
    with pytest.raises(ConfigError, match="preset"):
        resolve_model_config({"preset": "huge"})
    with pytest.raises(ConfigError, match="n_tags"):
        MoodCRNN(CRNNConfig(), 0)


def test_resolve_model_config_applies_overrides_to_preset():
    config = resolve_model_config({"preset": "tiny", "use_hpcp": False, "stochastic_blocks": 3})
    assert config == dataclasses.replace(MODEL_PRESETS["tiny"], use_hpcp=False, stochastic_blocks=3)
    assert resolve_model_config(None) == resolve_model_config("paper") == CRNNConfig()


# --- MoodCRNN --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("steps", "hpcp_frames"), [(1600, 4000), (80, 200), (5, 12), (1, 1)])
def test_crnn_output_shape_for_long_short_and_tiny_inputs(steps, hpcp_frames):
    model = _tiny()
    logits = model(*_inputs(3, steps, hpcp_frames))
    assert logits.shape == (3, N_TAGS)
    assert torch.isfinite(logits).all()


def test_mel_only_model_has_no_hpcp_branch_and_ignores_hpcp():
    model = _tiny(use_hpcp=False).eval()
    assert model.hpcp_branch is None
    assert model.head[0].in_features == model.config.embed_dim
    mel, hpcp = _inputs(2, 80, 200)
    torch.testing.assert_close(model(mel), model(mel, hpcp))


def test_hpcp_model_requires_hpcp_and_checks_shapes():
    model = _tiny()
    assert model.head[0].in_features == 2 * model.config.embed_dim
    mel, hpcp = _inputs(2, 80, 200)
    with pytest.raises(ValueError, match="hpcp=None"):
        model(mel)
    with pytest.raises(ValueError, match=r"\(batch, 128, time\)"):
        model(torch.rand(2, 64, 80), hpcp)


def test_n_tags_sets_the_output_width():
    mel, hpcp = _inputs(2, 40, 100)
    for n_tags in (1, 56):
        assert MoodCRNN(MODEL_PRESETS["tiny"], n_tags)(mel, hpcp).shape == (2, n_tags)


def test_preset_parameter_counts():
    counts = {name: sum(p.numel() for p in build_model(config, 56).parameters())
              for name, config in MODEL_PRESETS.items()}
    assert 2_500_000 < counts["paper"] < 3_500_000
    assert 300_000 < counts["small"] < 1_000_000
    assert 3_000 < counts["tiny"] < 50_000
    assert counts["tiny"] < counts["demo"] < 100_000
    # The multi-resolution models: their short view is the CRNN of the same scale, plus the long and fine views.
    assert counts["paper"] < counts["multires"] < 3 * counts["paper"]
    assert counts["demo"] < counts["multires-demo"] < 3 * counts["demo"]


def test_circular_hpcp_branch_is_transposition_invariant_and_off_by_default():
    """Circular pitch padding + a last block pooling all 12 bins: rolling the HPCP (a key change) changes nothing."""
    assert CRNNConfig().hpcp_circular is False and MODEL_PRESETS["demo"].hpcp_circular is True
    pooling = {"hpcp_channels": [4, 4, 8], "hpcp_pooling": [[1, 2], [1, 2], [12, 2]]}
    circular = _tiny(**pooling, hpcp_circular=True).eval()
    zero_padded = _tiny(**pooling).eval()
    zero_padded.load_state_dict(circular.state_dict())  # same parameters: only the padding differs
    mel, hpcp = _inputs(2, 80, 200)
    for shift in (1, 5):
        rolled = torch.roll(hpcp, shift, dims=1)
        torch.testing.assert_close(circular(mel, rolled), circular(mel, hpcp), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(zero_padded(mel, rolled), zero_padded(mel, hpcp), rtol=1e-5, atol=1e-6)
    # The mel branch keeps zero padding: the circular option touches only the pitch-class axis of the HPCP branch.
    assert all(conv.padding == (1, 1) for conv in circular.mel_branch.modules() if isinstance(conv, torch.nn.Conv2d)
               and conv.kernel_size == (3, 3))
    with pytest.raises(ConfigError, match="hpcp_circular"):
        CRNNConfig(hpcp_circular="yes")


def test_paper_preset_matches_released_architecture():
    config = MODEL_PRESETS["paper"]
    assert config.mel_channels == (64, 64, 64) and config.mel_pooling == ((2, 2),) * 3
    assert (config.gru_hidden, config.embed_dim, config.fusion_hidden) == (256, 256, 256)
    model = MoodCRNN(config, 56)
    assert model.mel_branch.gru.input_size == 64 * 128 // 8
    assert model.head[0].in_features == 512


def test_gradient_reaches_both_branches():
    model = _tiny()
    model(*_inputs(2, 80, 200)).sum().backward()
    for branch in (model.mel_branch, model.hpcp_branch):
        first_conv = branch.convs[0].conv.weight.grad
        assert first_conv is not None and first_conv.abs().sum() > 0
        assert branch.gru.weight_ih_l0.grad.abs().sum() > 0


def test_mean_gru_pool_and_stacked_gru():
    model = _tiny(gru_pool="mean", gru_layers=2, dropout=0.2)
    assert model(*_inputs(2, 80, 200)).shape == (2, N_TAGS)


def test_student_inserts_stochastic_blocks_after_first_conv_block_of_each_branch():
    model = _tiny(stochastic_blocks=3)
    for branch in (model.mel_branch, model.hpcp_branch):
        kinds = [type(layer).__name__ for layer in branch.convs]
        assert kinds == ["ResidualConvBlock"] + ["StochasticConvBlock"] * 3 + ["ResidualConvBlock"]
    model.eval()
    mel, hpcp = _inputs(2, 80, 200)
    torch.testing.assert_close(model(mel, hpcp), model(mel, hpcp))


def test_eval_output_does_not_depend_on_batch_mates():
    model = _tiny().eval()
    mel, hpcp = _inputs(4, 80, 200)
    together = model(mel, hpcp)
    alone = torch.cat([model(mel[i:i + 1], hpcp[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_channels_last_and_bf16_autocast_match_fp32():
    model = _tiny().eval()
    mel, hpcp = _inputs(2, 80, 200)
    reference = model(mel, hpcp)
    model = model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model(mel, hpcp), reference, rtol=1e-4, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(mel, hpcp)
    assert low.shape == reference.shape
    assert np.corrcoef(low.float().detach().ravel(), reference.detach().ravel())[0, 1] > 0.99


def test_onnx_export_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = _tiny().eval()
    mel, hpcp = _inputs(2, 80, 200)
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(model, (mel, hpcp), str(path), input_names=["mel", "hpcp"], output_names=["logits"],
                      dynamic_axes={"mel": {0: "batch", 2: "steps"}, "hpcp": {0: "batch", 2: "frames"}},
                      dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for steps, frames in [(80, 200), (37, 91)]:
        mel, hpcp = _inputs(3, steps, frames)
        (onnx_logits,) = session.run(None, {"mel": mel.numpy(), "hpcp": hpcp.numpy()})
        np.testing.assert_allclose(onnx_logits, model(mel, hpcp).detach().numpy(), rtol=1e-4, atol=1e-5)
