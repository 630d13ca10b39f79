"""labkit.outliers: int8 activations and outlier features (LLM.int8's decomposition, SmoothQuant), and
labkit.quantize's torch.ao dynamic int8 reference."""
from __future__ import annotations

import pytest
import torch

from labkit import outliers as O
from labkit import quantize as Q
from labkit.model import GPT, GPTConfig


def inputs_and_weight(n=256, cols=64, rows=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, cols, generator=g), torch.randn(rows, cols, generator=g) * 0.05


def relative_error(y, reference):
    return ((y - reference).norm() / reference.norm()).item()


def test_int8_matmul_is_the_product_of_the_fake_quantized_operands():
    x, w = inputs_and_weight()
    expected = Q.fake_quantize(x, bits=8, scale_dtype="fp32") @ Q.fake_quantize(w, bits=8, scale_dtype="fp32").T
    assert torch.allclose(O.int8_matmul(x, w), expected, rtol=1e-5, atol=1e-6)
    assert relative_error(O.int8_matmul(x, w), x @ w.T) < 0.02


def test_one_outlier_feature_blows_up_int8_error_and_the_decomposition_or_smoothing_fixes_it():
    x, w = inputs_and_weight()
    reference = x @ w.T
    plain = relative_error(O.int8_matmul(x, w), reference)
    xo, wo = O.inject_outlier(x, w, feature=3, factor=60.0)
    assert torch.allclose(xo @ wo.T, reference, rtol=1e-4, atol=1e-5)           # the float product is unchanged
    assert O.outlier_features(xo).tolist() == [3] and O.outlier_features(x).numel() == 0
    blown = relative_error(O.int8_matmul(xo, wo), reference)
    assert blown > 5 * plain
    assert relative_error(O.mixed_precision_matmul(xo, wo), reference) < 1.2 * plain
    xs, ws, s = O.smooth(xo, wo, alpha=0.5)
    assert torch.allclose(xs @ ws.T, reference, rtol=1e-4, atol=1e-5) and s.shape == (64,)
    assert relative_error(O.int8_matmul(xs, ws), reference) < 2 * plain


def test_activation_functions_name_bad_input():
    x, w = inputs_and_weight()
    with pytest.raises(ValueError, match=r"x must have shape \(tokens >= 1, in_features=64\), got \(256, 32\)"):
        O.int8_matmul(x[:, :32], w)
    x2 = x.clone()
    x2[0, 0] = float("nan")
    with pytest.raises(ValueError, match="x holds NaN"):
        O.mixed_precision_matmul(x2, w)
    with pytest.raises(ValueError, match="threshold must be a number > 0"):
        O.outlier_features(x, 0)
    with pytest.raises(ValueError, match="feature must be an integer in 0 .. 63"):
        O.inject_outlier(x, w, 64, 10.0)
    with pytest.raises(ValueError, match="alpha must be a number in \\[0, 1\\]"):
        O.smooth(x, w, 1.5)


def small_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{"vocab_size": 17, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32,
                            "activation": "relu2", "tie_weights": False, **overrides})).eval()


def test_layer_inputs_are_what_the_layer_reads():
    model = small_gpt()
    calibration = torch.randint(0, 17, (3, 16), generator=torch.Generator().manual_seed(0))
    x = O.layer_inputs(model, calibration, "blocks.1.mlp.proj")
    assert x.shape == (48, 128) and (x >= 0).all()                   # relu² outputs are never negative
    with pytest.raises(ValueError, match="name='blocks.9.mlp.fc' is not a quantizable layer; allowed"):
        O.layer_inputs(model, calibration, "blocks.9.mlp.fc")
    with pytest.raises(ValueError, match=r"calibration must have shape \(n_sequences, seq_len\)"):
        O.layer_inputs(model, calibration[0], "blocks.1.mlp.proj")


# ---------------------------------------------------------------------------------------------
# torch.ao dynamic int8


def test_torch_dynamic_int8_quantizes_the_same_linears_and_shrinks_the_saved_state():
    model = small_gpt(n_embd=64)
    reference = Q.torch_dynamic_int8(model)
    assert type(reference.blocks[0].mlp.fc).__module__.startswith("torch.ao.nn.quantized.dynamic")
    assert type(reference.lm_head) is torch.nn.Linear                       # as quantize_model: blocks only
    assert Q.saved_state_bytes(reference) < 0.6 * Q.saved_state_bytes(model)
    x = torch.randint(0, 17, (2, 16))
    assert relative_error(reference(x)[0], model(x)[0]) < 0.05
    assert type(model.blocks[0].mlp.fc) is torch.nn.Linear                   # the original is untouched


def test_each_idea_lives_in_one_module():
    from labkit import qat

    for name in O.__all__:
        assert hasattr(O, name) and not hasattr(Q, name), name
    for name in qat.__all__:
        assert hasattr(qat, name) and not hasattr(Q, name), name
    assert {"torch_dynamic_int8", "saved_state_bytes"} <= set(Q.__all__)
