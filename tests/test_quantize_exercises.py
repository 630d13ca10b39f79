"""labkit.quantize's references for lab 05's exercises (absmax_quantize, group_scales, group_quantized_bytes):
the same numbers as quantize() / quantized_bytes / a QuantizedTensor's real bytes on the same symmetric settings,
and as torch.fake_quantize_per_tensor_affine given the same scale."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labkit import quantize as Q


def weights(rows=6, cols=32, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, cols, generator=g) * 0.05).to(dtype)


# ---- absmax_quantize ----------------------------------------------------------------------------

@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bits=st.sampled_from(Q.BITS), rows=st.integers(1, 9), cols=st.integers(1, 40), seed=st.integers(0, 2 ** 16))
def test_absmax_quantize_is_quantize_per_tensor_symmetric(bits, rows, cols, seed):
    w = weights(rows, cols, seed)
    expected = Q.quantize(w, bits, symmetric=True, granularity="tensor", scale_dtype="fp32").dequantize()
    assert torch.equal(Q.absmax_quantize(w, bits), expected)


@pytest.mark.parametrize("bits", Q.EXERCISE_BITS)
def test_absmax_quantize_is_torch_fake_quantize_with_the_same_scale(bits):
    w = weights(seed=bits)
    levels = 2 ** (bits - 1) - 1
    scale = (w.abs().max() / levels).item()
    reference = torch.fake_quantize_per_tensor_affine(w, scale, 0, -levels, levels)
    got = Q.absmax_quantize(w, bits)
    assert torch.allclose(got, reference, rtol=0, atol=1e-7)
    assert (got / scale - torch.round(got / scale)).abs().max() < 1e-4       # every value is a level k · scale
    assert torch.round(got / scale).unique().numel() <= 2 * levels + 1
    assert (got - w).abs().max() <= scale / 2 + 1e-7                          # rounding error at most half a step
    assert torch.isclose(got.abs().max(), w.abs().max())                      # ±max|w| is a level


def test_absmax_quantize_rounds_halves_to_even_and_keeps_shape_and_dtype():
    w = torch.tensor([3.0, 0.5, 1.5, 2.5, -0.5, -1.5, 0.2, -2.7])            # 3 bits: scale = 3 / 3 = 1 exactly
    assert Q.absmax_quantize(w, 3).tolist() == [3.0, 0.0, 2.0, 2.0, -0.0, -2.0, 0.0, -3.0]
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        x = weights(dtype=dtype).view(2, 3, 32)
        got = Q.absmax_quantize(x, 4)
        assert got.dtype == dtype and got.shape == x.shape
        assert torch.allclose(got.float(), Q.absmax_quantize(x.float(), 4), atol=1e-2 * x.abs().max().item())
    zero = torch.zeros(2, 3)
    assert torch.equal(Q.absmax_quantize(zero, 8), zero)


@pytest.mark.parametrize("args, error, words", [
    ((torch.ones(3), 1), ValueError, r"bits=1 is not supported; allowed: \(2, 3, 4, 5, 6, 7, 8\)"),
    ((torch.ones(3), 9), ValueError, "bits=9 is not supported"),
    ((torch.ones(3), 4.0), ValueError, "bits=4.0 is not supported"),
    ((torch.ones(3), True), ValueError, "bits=True is not supported"),
    ((torch.ones(3, dtype=torch.int64), 4), TypeError, "w must be a floating-point torch.Tensor, got torch.int64"),
    (([0.5, 1.0], 4), TypeError, "w must be a floating-point torch.Tensor, got list"),
    ((torch.ones(0, 4), 4), ValueError, r"w is empty \(shape \(0, 4\)\)"),
    ((torch.tensor([1.0, float("nan")]), 4), ValueError, "w holds NaN or infinite values"),
])
def test_absmax_quantize_names_bad_input(args, error, words):
    with pytest.raises(error, match=words):
        Q.absmax_quantize(*args)


# ---- group_scales -------------------------------------------------------------------------------

@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bits=st.sampled_from(Q.BITS), rows=st.integers(1, 9), groups=st.integers(1, 5),
       group_size=st.sampled_from([1, 3, 8, 32]), seed=st.integers(0, 2 ** 16))
def test_group_scales_are_quantizes_scales(bits, rows, groups, group_size, seed):
    w = weights(rows, groups * group_size, seed)
    scales = Q.group_scales(w, group_size, bits)
    q = Q.quantize(w, bits, symmetric=True, granularity="group", group_size=group_size, scale_dtype="fp32")
    assert scales.shape == (rows, groups) and scales.dtype == torch.float32
    assert torch.equal(scales, q.scale)


def test_group_scales_by_hand_and_an_all_zero_group():
    w = torch.tensor([[1.0, -4.0, 0.5, 0.25], [0.0, 0.0, -2.0, 1.0]])
    # groups of 2 at 4 bits (7 levels per sign): max|w| / 7 of [1, -4], [0.5, 0.25] / [0, 0], [-2, 1]
    assert torch.equal(Q.group_scales(w, 2, 4), torch.tensor([[4 / 7, 0.5 / 7], [0.0, 2 / 7]]))
    assert Q.group_scales(w.double(), 4, 8).dtype == torch.float64
    dequantized = Q.quantize(w, 4, granularity="group", group_size=2, scale_dtype="fp32").dequantize()
    assert torch.equal(dequantized[1, :2], torch.zeros(2))          # quantize still decodes that group to 0


@pytest.mark.parametrize("args, error, words", [
    ((torch.ones(2, 6), 4, 4), ValueError, r"group_size=4 does not divide the input dimension 6 .*\[1, 2, 3, 6\]"),
    ((torch.ones(2, 6), 0, 4), ValueError, "group_size must be an integer >= 1"),
    ((torch.ones(2, 6), 3, 1), ValueError, "bits=1 is not supported"),
    ((torch.ones(6), 3, 4), TypeError, r"w must be a 2-D floating-point torch.Tensor \(n_rows, n_cols\)"),
    ((torch.ones(2, 6, dtype=torch.int32), 3, 4), TypeError, "w must be a 2-D floating-point"),
    ((torch.full((2, 6), float("inf")), 3, 4), ValueError, "NaN or infinite"),
])
def test_group_scales_names_bad_input(args, error, words):
    with pytest.raises(error, match=words):
        Q.group_scales(*args)


# ---- group_quantized_bytes ----------------------------------------------------------------------

@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bits=st.sampled_from(Q.BITS), rows=st.integers(1, 50), groups=st.integers(1, 9),
       group_size=st.sampled_from([1, 3, 5, 8, 12, 32, 128]), scale_bytes=st.sampled_from([1, 2, 4]))
def test_group_quantized_bytes_is_quantized_bytes(bits, rows, groups, group_size, scale_bytes):
    cols = groups * group_size
    expected = Q.quantized_bytes((rows, cols), bits, "group", group_size, symmetric=True, scale_bytes=scale_bytes)
    got = Q.group_quantized_bytes(rows, cols, bits, group_size, scale_bytes)
    assert type(got) is int and got == expected


@pytest.mark.parametrize("bits", Q.BITS)
@pytest.mark.parametrize("scale_dtype, scale_bytes", [("fp16", 2), ("fp32", 4)])
def test_group_quantized_bytes_are_the_bytes_quantize_stores(bits, scale_dtype, scale_bytes):
    w = weights(5, 36, seed=bits)                        # 5 · 36 · 3 bits = 540 bits = 67.5 bytes: rows end mid-byte
    q = Q.quantize(w, bits, granularity="group", group_size=12, scale_dtype=scale_dtype)
    assert q.nbytes == Q.group_quantized_bytes(5, 36, bits, 12, scale_bytes)


def test_group_quantized_bytes_packs_over_the_whole_matrix():
    # 3 × 36 at 3 bits: 324 bits = 40.5 → 41 bytes of codes (per row rounded up would be 3 · 14 = 42), 9 fp32 scales
    assert Q.group_quantized_bytes(3, 36, 3, 12, 4) == 41 + 9 * 4
    assert Q.group_quantized_bytes(512, 128, 4, 32, 2) == 512 * 128 // 2 + 512 * 4 * 2     # baby GPT's mlp.fc


@pytest.mark.parametrize("args, words", [
    ((0, 8, 4, 8, 2), "n_rows must be an integer >= 1, got 0"),
    ((4, 8.0, 4, 8, 2), "n_cols must be an integer >= 1, got 8.0"),
    ((4, 8, 16, 8, 2), "bits=16 is not supported"),
    ((4, 8, 4, 3, 2), "group_size=3 does not divide the input dimension 8"),
    ((4, 8, 4, 8, 0), "scale_bytes must be an integer >= 1, got 0"),
])
def test_group_quantized_bytes_names_bad_input(args, words):
    with pytest.raises(ValueError, match=words):
        Q.group_quantized_bytes(*args)
