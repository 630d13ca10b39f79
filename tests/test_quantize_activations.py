"""labkit.quantize beyond weights: int8 activations and outliers (LLM.int8's decomposition, SmoothQuant),
quantization-aware training with a straight-through estimator, and torch.ao's dynamic int8 as the reference."""
from __future__ import annotations

import pytest
import torch

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
    assert torch.allclose(Q.int8_matmul(x, w), expected, rtol=1e-5, atol=1e-6)
    assert relative_error(Q.int8_matmul(x, w), x @ w.T) < 0.02


def test_one_outlier_feature_blows_up_int8_error_and_the_decomposition_or_smoothing_fixes_it():
    x, w = inputs_and_weight()
    reference = x @ w.T
    plain = relative_error(Q.int8_matmul(x, w), reference)
    xo, wo = Q.inject_outlier(x, w, feature=3, factor=60.0)
    assert torch.allclose(xo @ wo.T, reference, rtol=1e-4, atol=1e-5)           # the float product is unchanged
    assert Q.outlier_features(xo).tolist() == [3] and Q.outlier_features(x).numel() == 0
    blown = relative_error(Q.int8_matmul(xo, wo), reference)
    assert blown > 5 * plain
    assert relative_error(Q.mixed_precision_matmul(xo, wo), reference) < 1.2 * plain
    xs, ws, s = Q.smooth(xo, wo, alpha=0.5)
    assert torch.allclose(xs @ ws.T, reference, rtol=1e-4, atol=1e-5) and s.shape == (64,)
    assert relative_error(Q.int8_matmul(xs, ws), reference) < 2 * plain


def test_activation_functions_name_bad_input():
    x, w = inputs_and_weight()
    with pytest.raises(ValueError, match=r"x must have shape \(tokens >= 1, in_features=64\), got \(256, 32\)"):
        Q.int8_matmul(x[:, :32], w)
    x2 = x.clone()
    x2[0, 0] = float("nan")
    with pytest.raises(ValueError, match="x holds NaN"):
        Q.mixed_precision_matmul(x2, w)
    with pytest.raises(ValueError, match="threshold must be a number > 0"):
        Q.outlier_features(x, 0)
    with pytest.raises(ValueError, match="feature must be an integer in 0 .. 63"):
        Q.inject_outlier(x, w, 64, 10.0)
    with pytest.raises(ValueError, match="alpha must be a number in \\[0, 1\\]"):
        Q.smooth(x, w, 1.5)


def small_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{"vocab_size": 17, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32,
                            "activation": "relu2", "tie_weights": False, **overrides})).eval()


def test_layer_inputs_are_what_the_layer_reads():
    model = small_gpt()
    calibration = torch.randint(0, 17, (3, 16), generator=torch.Generator().manual_seed(0))
    x = Q.layer_inputs(model, calibration, "blocks.1.mlp.proj")
    assert x.shape == (48, 128) and (x >= 0).all()                   # relu² outputs are never negative
    with pytest.raises(ValueError, match="name='blocks.9.mlp.fc' is not a quantizable layer; allowed"):
        Q.layer_inputs(model, calibration, "blocks.9.mlp.fc")
    with pytest.raises(ValueError, match=r"calibration must have shape \(n_sequences, seq_len\)"):
        Q.layer_inputs(model, calibration[0], "blocks.1.mlp.proj")


# ---------------------------------------------------------------------------------------------
# QAT


def test_straight_through_gradient_is_one_inside_the_grid_and_zero_where_clipped():
    w = torch.randn(8, 32, generator=torch.Generator().manual_seed(1)) * 0.05
    w[0, 0] = 1.0                                                  # clip="search" clips this one
    weight = w.clone().requires_grad_(True)
    out = Q.fake_quant_ste(weight, "int3-g16-clip")
    assert torch.equal(out.detach(), Q.quantize_tensor(w, "int3-g16-clip").dequantize())
    upstream = torch.randn(8, 32)
    out.backward(upstream)
    q = Q.quantize_tensor(w, "int3-g16-clip")
    top = ((7 - q.zero) * q.scale.float()).repeat_interleave(16, dim=1)
    bottom = ((0 - q.zero) * q.scale.float()).repeat_interleave(16, dim=1)
    inside = (w >= bottom) & (w <= top)
    assert not inside[0, 0] and 0.5 < inside.float().mean() < 1    # some clipped, most not
    assert torch.equal(weight.grad, upstream * inside)


def test_qat_model_computes_what_the_quantized_model_computes_and_strips_back_to_linears():
    model = small_gpt()
    fq = Q.qat_model(model, "int2-g16")
    assert isinstance(fq.blocks[0].attn.qkv, Q.FakeQuantLinear) and set(fq.state_dict()) == set(model.state_dict())
    x = torch.randint(0, 17, (2, 16))
    quantized, _ = Q.quantize_model(model, "int2-g16")
    assert torch.equal(fq(x)[0], quantized(x)[0])
    plain = Q.strip_fake_quant(fq)
    assert type(plain.blocks[0].attn.qkv) is torch.nn.Linear and torch.equal(plain(x)[0], model(x)[0])
    with pytest.raises(ValueError, match="QAT fake-quantizes with round to nearest on an int grid"):
        Q.qat_model(model, "nf4-g16")


def test_qat_fine_tune_trains_through_the_one_loop_and_lowers_the_quantized_loss(corpus):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=corpus.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32,
                          activation="relu2", tie_weights=False))
    tuned, result = Q.qat_fine_tune(model, "int2-g16", steps=30, lr=1e-2, corpus=corpus, progress=False,
                                    batch_size=8, eval_iters=2, log=lambda *a: None)
    assert result["iters"] == 30 and type(tuned.blocks[0].mlp.fc) is torch.nn.Linear
    x = torch.from_numpy(corpus.val[:8 * 17].astype("int64")).view(8, 17)
    before = Q.quantize_model(model, "int2-g16")[0](x[:, :16], x[:, 1:])[1]
    after = Q.quantize_model(tuned, "int2-g16")[0](x[:, :16], x[:, 1:])[1]
    assert after < before
    control, _ = Q.qat_fine_tune(model, "int2-g16", steps=30, lr=1e-2, corpus=corpus, progress=False,
                                 batch_size=8, eval_iters=2, log=lambda *a: None, fake_quant=False)
    # the control trains the same float copy on the same batches without rounding: different weights, a plain GPT.
    # (Whether QAT beats it is measured on the zoo model; a 1-layer model trained from scratch shows no gap.)
    assert type(control.blocks[0].mlp.fc) is torch.nn.Linear
    assert not torch.equal(control.blocks[0].mlp.fc.weight, tuned.blocks[0].mlp.fc.weight)
    assert not torch.equal(control.blocks[0].mlp.fc.weight, model.blocks[0].mlp.fc.weight)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        Q.qat_fine_tune(model, "int2-g16", steps=0, corpus=corpus)


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
