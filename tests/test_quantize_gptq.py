"""labkit.gptq: GPTQ reduces a layer's output error below round-to-nearest, equals RTN when inputs are
uncorrelated, and quantizes a model's layers in order from calibration text."""
from __future__ import annotations

import pytest
import torch

from labkit import gptq as G
from labkit import quantize as Q
from labkit.model import GPT, GPTConfig


def correlated_inputs(n=1024, cols=64, rank=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, rank, generator=g) @ torch.randn(rank, cols, generator=g) + 0.1 * torch.randn(n, cols, generator=g)


def hessian(X):
    X = X.double()
    return 2 * X.T @ X / len(X)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric,granularity,group_size", [(False, "group", 16), (True, "channel", None),
                                                              (False, "tensor", None)])
def test_gptq_output_error_is_at_most_rtns_on_a_small_random_layer(bits, symmetric, granularity, group_size):
    g = torch.Generator().manual_seed(bits)
    W = torch.randn(32, 64, generator=g) * 0.05
    X = correlated_inputs(seed=bits)
    settings = {"bits": bits, "symmetric": symmetric, "granularity": granularity, "group_size": group_size}
    gptq = G.gptq_quantize(W, hessian(X), **settings)
    rtn = Q.quantize(W, **settings)
    error = {name: (X @ (W - q.dequantize()).T).norm().item() for name, q in (("gptq", gptq), ("rtn", rtn))}
    assert error["gptq"] <= error["rtn"]
    if bits <= 4:
        assert error["gptq"] < 0.8 * error["rtn"]       # correlated inputs: a real gain, not a tie
    assert int(gptq.codes.max()) < 2 ** bits and gptq.nbytes == rtn.nbytes


@pytest.mark.parametrize("granularity,group_size", [("channel", None), ("group", 16), ("tensor", None)])
def test_uncorrelated_inputs_leave_nothing_to_compensate_gptq_is_rtn(granularity, group_size):
    W = torch.randn(24, 64, generator=torch.Generator().manual_seed(1)) * 0.05
    gptq = G.gptq_quantize(W, torch.eye(64), 3, False, granularity, group_size)
    rtn = Q.quantize(W, 3, False, granularity, group_size)
    assert torch.equal(gptq.codes, rtn.codes) and torch.equal(gptq.scale, rtn.scale)


def test_a_dead_input_gets_weight_zero_and_the_rest_still_works():
    X = correlated_inputs(cols=32)
    X[:, 5] = 0.0
    W = torch.randn(8, 32, generator=torch.Generator().manual_seed(2))
    q = G.gptq_quantize(W, hessian(X), 4, False, "group", 8)
    assert q.dequantize()[:, 5].abs().max() < q.scale.float().max() * 8    # on the grid, finite
    assert torch.isfinite(q.dequantize()).all()


def test_bad_input_is_named():
    W = torch.randn(8, 16)
    with pytest.raises(ValueError, match=r"hessian must have shape \(in_features, in_features\) = \(16, 16\), got \(8, 8\)"):
        G.gptq_quantize(W, torch.eye(8))
    with pytest.raises(ValueError, match="bits=6 is not supported; allowed"):
        G.gptq_quantize(W, torch.eye(16), bits=6)
    with pytest.raises(ValueError, match="group_size=5 does not divide the input dimension 16"):
        G.gptq_quantize(W, torch.eye(16), 4, granularity="group", group_size=5)
    with pytest.raises(ValueError, match="not positive definite"):
        G.gptq_quantize(W, -torch.eye(16), damp=0.0)
    with pytest.raises(ValueError, match="damp must be a number in \\[0, 1\\)"):
        G.gptq_quantize(W, torch.eye(16), damp=2)
    W[0, 0] = float("nan")
    with pytest.raises(ValueError, match="weight holds NaN"):
        G.gptq_quantize(W, torch.eye(16))


def small_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=17, block_size=16, n_layer=2, n_head=2, n_embd=32, activation="relu2")).eval()


def test_model_gptq_quantizes_every_block_linear_and_lowers_each_layers_output_error():
    model = small_gpt()
    g = torch.Generator().manual_seed(0)
    calibration = torch.randint(0, 17, (16, 16), generator=g)
    gptq_model, gptq = Q.quantize_model(model, "int3-g16-gptq", calibration=calibration)
    _, rtn = Q.quantize_model(model, "int3-g16")
    assert set(gptq["quantized"]) == set(rtn["quantized"]) and gptq["total_bytes"] == rtn["total_bytes"]
    for name, layer in Q.quantizable_layers(gptq_model).items():
        assert torch.equal(layer.weight, gptq["quantized"][name].dequantize())
    errors_gptq = G.output_errors(model, gptq["quantized"], calibration)
    errors_rtn = G.output_errors(model, rtn["quantized"], calibration)
    # the first layer sees exactly the float inputs, so GPTQ's guarantee holds there; later ones on these inputs too
    first = next(iter(errors_rtn))
    assert errors_gptq[first] <= errors_rtn[first]
    assert sum(errors_gptq.values()) < sum(errors_rtn.values())


def test_model_gptq_needs_good_calibration_and_an_int_scheme():
    model = small_gpt()
    with pytest.raises(ValueError, match="calibration is None"):
        Q.quantize_model(model, "int4-g16-gptq")
    with pytest.raises(ValueError, match=r"calibration must have shape \(n_sequences, seq_len\)"):
        Q.quantize_model(model, "int4-g16-gptq", calibration=torch.zeros(16, dtype=torch.long))
    with pytest.raises(ValueError, match="calibration sequences have 32 tokens; the model reads at most block_size=16"):
        Q.quantize_model(model, "int4-g16-gptq", calibration=torch.zeros(2, 32, dtype=torch.long))
    with pytest.raises(TypeError, match="calibration must hold integer token ids"):
        Q.quantize_model(model, "int4-g16-gptq", calibration=torch.zeros(2, 8))
    with pytest.raises(ValueError, match="GPTQ rounds to a uniform integer grid"):
        G.gptq_quantize_layers(model, Q.quantizable_layers(model), "nf4-g16", torch.zeros(2, 8, dtype=torch.long))
