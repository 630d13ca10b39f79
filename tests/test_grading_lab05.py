"""Lab 05 self-checks: a right answer passes, each typical wrong one fails with its hint, nothing raises.

(That a stub reads 'not yet solved' is tested for every check at once in test_grading.py.)"""
import math

import numpy as np
import pytest
import torch
from grading_helpers import assert_fails, assert_hidden_examples_defeat_a_table, examples_of, grade_cell

from labkit import grading
from labkit import quantize as Q

# ---- the learner's answers, written here by hand ----------------------------------------------


def my_absmax_quantize(w, bits):
    levels = 2 ** (bits - 1) - 1
    scale = w.abs().max() / levels
    if scale == 0:
        return torch.zeros_like(w)
    return torch.round(w / scale).clamp(-levels, levels) * scale


def absmax_via_python_floats(w, bits):
    """The same with a Python-float scale and no clamp (with this scale it never binds)."""
    levels = 2 ** (bits - 1) - 1
    scale = w.abs().max().item() / levels
    return torch.zeros_like(w) if scale == 0 else torch.round(w / scale) * scale


def my_group_scales(w, group_size, bits):
    return w.abs().reshape(w.shape[0], -1, group_size).amax(dim=-1) / (2 ** (bits - 1) - 1)


def group_scales_by_loops(w, group_size, bits):
    rows, cols = w.shape
    out = torch.empty(rows, cols // group_size)
    for r in range(rows):
        for j in range(cols // group_size):
            out[r, j] = w[r, j * group_size:(j + 1) * group_size].abs().max() / (2 ** (bits - 1) - 1)
    return out


def my_group_quantized_bytes(n_rows, n_cols, bits, group_size, scale_bytes):
    return math.ceil(n_rows * n_cols * bits / 8) + n_rows * (n_cols // group_size) * scale_bytes


# ---- absmax_quantize ----------------------------------------------------------------------------

@pytest.mark.parametrize("right", [my_absmax_quantize, absmax_via_python_floats])
def test_absmax_right_answers_pass(right, capsys):
    result = grading.check_absmax_quantize(right)
    assert result and result.status == grading.PASS
    assert "passed (8 examples)" in capsys.readouterr().out


def test_absmax_check_agrees_with_torch_fake_quantize_on_its_examples():
    # the check's closed form is torch.fake_quantize_per_tensor_affine with scale = max|w| / (2^(b−1) − 1)
    seen = []

    def spy(w, bits):
        seen.append((w.clone(), bits))
        return my_absmax_quantize(w, bits)

    assert grading.check_absmax_quantize(spy, quiet=True)
    for w, bits in seen:
        levels = 2 ** (bits - 1) - 1
        scale = (w.abs().max() / levels).item()
        if scale == 0:
            continue
        reference = torch.fake_quantize_per_tensor_affine(w.float(), scale, 0, -levels, levels)
        assert torch.allclose(my_absmax_quantize(w, bits).float(), reference, rtol=0, atol=1e-6)
    assert {b for _, b in seen} >= {2, 3, 4, 8} and any(w.dtype == torch.float64 for w, _ in seen)


def absmax_with(levels_of, clamp=True, rounding=torch.round, dim=None):
    """A learner's absmax with one thing changed."""
    def fn(w, bits):
        levels = levels_of(bits)
        amax = w.abs().max() if dim is None else w.abs().amax(dim=dim, keepdim=True)
        q = rounding(w / (amax / levels))
        if clamp:
            q = q.clamp(-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)
        return q * (amax / levels)
    return fn


RIGHT_LEVELS = lambda b: 2 ** (b - 1) - 1


@pytest.mark.parametrize("wrong, hint", [
    (lambda w, b: torch.round(w / (w.abs().max() / (2 ** (b - 1) - 1))), "those are the integer codes"),
    (lambda w, b: torch.round(w / (w.abs().max() / (2 ** (b - 1) - 1))).to(torch.int8), "those are the integer codes"),
    (lambda w, b: torch.round(w / (w.abs().max() / (2 ** (b - 1) - 1))) + 2 ** (b - 1), "those are the integer codes"),
    (absmax_with(lambda b: 2 ** (b - 1), clamp=False), "nothing clamps"),
    (absmax_with(lambda b: 2 ** (b - 1)), "the largest weights are clipped"),
    (absmax_with(lambda b: 2 ** b - 1), "(2^bits − 1) is the asymmetric step"),
    (absmax_with(lambda b: 2 ** b - 1, clamp=False), "(2^bits − 1) is the asymmetric step"),
    (absmax_with(RIGHT_LEVELS, dim=-1), "one scale per row"),
    (absmax_with(RIGHT_LEVELS, rounding=torch.floor), "rounded down (floor)"),
    (lambda w, b: (w / (w.abs().max() / (2 ** (b - 1) - 1))).to(torch.int8) * (w.abs().max() / (2 ** (b - 1) - 1)),
     "toward zero"),
    (absmax_with(RIGHT_LEVELS, rounding=lambda x: torch.floor(x + 0.5)), "halves must round to EVEN"),
    (absmax_with(RIGHT_LEVELS), "0 / 0"),
    (lambda w, b: my_absmax_quantize(w, b).float(), "return w's dtype"),
], ids=["codes", "int8 codes", "unsigned codes", "2^(b-1) no clamp", "2^(b-1) clamped", "2^b-1", "2^b-1 no clamp",
        "per row", "floor", "trunc", "half up", "NaN on zeros", "float32 for float64"])
def test_absmax_mistakes_get_their_hints(wrong, hint):
    assert_fails(grading.check_absmax_quantize, wrong, hint=hint)


def test_absmax_float32_for_float64_says_the_lab_needs_the_input_dtype():
    assert_fails(grading.check_absmax_quantize, lambda w, b: my_absmax_quantize(w, b).float(),
                 "dtype torch.float32; the lab needs torch.float64", "float64 5×5 weight")


def test_absmax_nan_on_zeros_fails_only_on_the_all_zero_example():
    assert_fails(grading.check_absmax_quantize, absmax_with(RIGHT_LEVELS), "an all-zero 2×4 weight",
                 "expected 0, got nan")


@pytest.mark.parametrize("answer, words", [
    (lambda w, b: None, "returned None — did you forget `return`?"),
    (lambda w, b: my_absmax_quantize(w, b).numpy(), "numpy array"),
    (lambda w, b: float(w.abs().max()), "expected a torch.Tensor"),
    (lambda w, b: w.reshape(-1, 7), "your function raised RuntimeError"),
])
def test_absmax_none_numpy_and_crash_are_reported_not_raised(answer, words):
    assert_fails(grading.check_absmax_quantize, answer, words)


def absmax_scale(w, b):
    return (w.abs().max() / (2 ** (b - 1) - 1)).item()


@pytest.mark.parametrize("delegate, name", [
    (lambda w, b: Q.absmax_quantize(w, b), "labkit.quantize.absmax_quantize"),
    (Q.absmax_quantize, "labkit.quantize.absmax_quantize"),
    (lambda w, b: Q.quantize(w.reshape(1, -1), b, granularity="tensor", scale_dtype="fp32").dequantize().view_as(w),
     "labkit.quantize.quantize"),
    (lambda w, b: Q.fake_quantize(w, bits=b, granularity="tensor", scale_dtype="fp32"), "labkit.quantize.fake_quantize"),
    (lambda w, b: torch.fake_quantize_per_tensor_affine(w, absmax_scale(w, b), 0, 1 - 2 ** (b - 1), 2 ** (b - 1) - 1),
     "torch.fake_quantize_per_tensor_affine"),
    (lambda w, b: torch.quantize_per_tensor(w, absmax_scale(w, b), 0, torch.qint8).dequantize(),
     "torch.quantize_per_tensor"),
    (lambda w, b: torch.ao.quantization.FakeQuantize(quant_min=1 - 2 ** (b - 1), quant_max=2 ** (b - 1) - 1)(w),
     "torch.ao.quantization.FakeQuantize"),
])
def test_absmax_may_not_delegate(delegate, name):
    assert_fails(grading.check_absmax_quantize, delegate, name)


def test_absmax_torch_round_and_clamp_stay_allowed():
    assert grading.check_absmax_quantize(lambda w, b: my_absmax_quantize(w, b), quiet=True)


def test_absmax_fallback_names_labkits_reference(capsys):
    fn = grading.use_or_fallback(lambda w, b: None, grading.check_absmax_quantize, Q.absmax_quantize)
    assert fn is Q.absmax_quantize and "`labkit.quantize.absmax_quantize`" in capsys.readouterr().out


def test_absmax_hidden_examples_pass_a_right_answer_and_catch_a_table():
    assert_hidden_examples_defeat_a_table(grading.check_absmax_quantize, my_absmax_quantize,
                                          also_right=[absmax_via_python_floats],
                                          otherwise=lambda w, b: torch.zeros_like(w))


# ---- group_scales -------------------------------------------------------------------------------

@pytest.mark.parametrize("right", [my_group_scales, group_scales_by_loops,
                                   lambda w, g, b: my_group_scales(w.double(), g, b)])
def test_group_scales_right_answers_pass(right, capsys):
    assert grading.check_group_scales(right)
    assert "passed (7 examples)" in capsys.readouterr().out


def test_group_scales_check_is_what_quantize_stores():
    seen = []

    def spy(w, g, b):
        seen.append((w.clone(), g, b))
        return my_group_scales(w, g, b)

    assert grading.check_group_scales(spy, quiet=True)
    assert {b for _, _, b in seen} - set(Q.BITS)          # the check also asks for 5-7 bits, which quantize() lacks
    for w, g, b in [x for x in seen if x[2] in Q.BITS]:
        q = Q.quantize(w, b, symmetric=True, granularity="group", group_size=g, scale_dtype="fp32")
        nonzero = my_group_scales(w, g, b) > 0
        assert torch.equal(q.scale[nonzero], my_group_scales(w, g, b)[nonzero])
    assert any(not bool((my_group_scales(w, g, b) > 0).all()) for w, g, b in seen)     # an all-zero group


@pytest.mark.parametrize("wrong, hint", [
    (lambda w, g, b: w.abs().reshape(-1, g, w.shape[1]).amax(dim=1) / (2 ** (b - 1) - 1), "groups run DOWN"),
    (lambda w, g, b: my_group_scales(w, g, b).T, "transposed"),
    (lambda w, g, b: w.reshape(w.shape[0], -1, g).amax(dim=-1) / (2 ** (b - 1) - 1), "max|w|, not max w"),
    (lambda w, g, b: w.abs().reshape(w.shape[0], -1, g).amax(dim=-1) / (2 ** b - 1), "not 2^bits − 1"),
    (lambda w, g, b: w.abs().reshape(w.shape[0], -1, g).amax(dim=-1) / 2 ** (b - 1), "not 2^bits − 1, 2^(bits−1)"),
    (lambda w, g, b: w.abs().reshape(w.shape[0], -1, g).amax(dim=-1), "that is max|w| itself"),
    (lambda w, g, b: w.abs().amax(dim=1) / (2 ** (b - 1) - 1), "one scale per ROW"),
    (lambda w, g, b: w.abs().amax(dim=1, keepdim=True) / (2 ** (b - 1) - 1), "one scale per ROW"),
    (lambda w, g, b: w.abs().max() / (2 ** (b - 1) - 1), "one scale for the whole tensor"),
    (lambda w, g, b: my_group_scales(w, g, b).clamp(min=1e-4), "an all-zero group's scale is 0"),
    (lambda w, g, b: my_group_scales(w, g, b).flatten(), "not flattened"),
], ids=["along rows", "transposed", "signed max", "2^b-1", "2^(b-1)", "no division", "per row", "per row 2-D",
        "per tensor", "zero group clamped", "flattened"])
def test_group_scales_mistakes_get_their_hints(wrong, hint):
    assert_fails(grading.check_group_scales, wrong, hint=hint)


def test_group_scales_names_where_a_value_differs_by_row_and_group():
    assert_fails(grading.check_group_scales, lambda w, g, b: my_group_scales(w, g, b) * 1.5,
                 "row 0, group 0: expected")


@pytest.mark.parametrize("answer, words", [
    (lambda w, g, b: None, "did you forget `return`?"),
    (lambda w, g, b: my_group_scales(w, g, b).numpy(), "numpy array"),
    (lambda w, g, b: my_group_scales(w, g, b).tolist(), "expected a torch.Tensor of shape (2, 2)"),
    (lambda w, g, b: (my_group_scales(w, g, b) * 1000).long(), "expected a floating-point tensor"),
    (lambda w, g, b: w.reshape(w.shape[0], -1, g + 1), "your function raised RuntimeError"),
])
def test_group_scales_none_numpy_and_crash_are_reported(answer, words):
    assert_fails(grading.check_group_scales, answer, words)


@pytest.mark.parametrize("delegate, name", [
    (lambda w, g, b: Q.group_scales(w, g, b), "labkit.quantize.group_scales"),
    (lambda w, g, b: Q.quantize(w, b, granularity="group", group_size=g, scale_dtype="fp32").scale,
     "labkit.quantize.quantize"),
    (lambda w, g, b: Q.quantize_tensor(w, f"int{b}-g{g}").scale.float(), "labkit.quantize.quantize_tensor"),
    (lambda w, g, b: torch.quantize_per_channel(w.reshape(-1, g), my_group_scales(w, g, b).flatten(),
                                                torch.zeros(w.numel() // g, dtype=torch.long), 0, torch.qint8
                                                ).q_per_channel_scales().float().view(w.shape[0], -1),
     "torch.quantize_per_channel"),
    (lambda w, g, b: torch.ao.quantization.PerChannelMinMaxObserver(ch_axis=0)(w.reshape(-1, g)),
     "torch.ao.quantization.PerChannelMinMaxObserver"),
])
def test_group_scales_may_not_delegate(delegate, name):
    assert_fails(grading.check_group_scales, delegate, name)


def test_group_scales_hidden_examples_pass_a_right_answer_and_catch_a_table():
    assert_hidden_examples_defeat_a_table(grading.check_group_scales, my_group_scales,
                                          also_right=[group_scales_by_loops],
                                          otherwise=lambda w, g, b: my_group_scales(w, g, b) + 1, seed=3)


# ---- group_quantized_bytes ----------------------------------------------------------------------

def test_group_quantized_bytes_right_answer_passes(capsys):
    assert grading.check_group_quantized_bytes(my_group_quantized_bytes)
    assert "passed (6 examples)" in capsys.readouterr().out
    # integer-only arithmetic and numpy / tensor integers are fine too
    assert grading.check_group_quantized_bytes(
        lambda r, c, b, g, s: (r * c * b + 7) // 8 + r * c // g * s, quiet=True)
    assert grading.check_group_quantized_bytes(lambda *a: np.int64(my_group_quantized_bytes(*a)), quiet=True)
    fn = grading.use_or_fallback(lambda *a: torch.tensor(my_group_quantized_bytes(*a)),
                                 grading.check_group_quantized_bytes, Q.group_quantized_bytes)
    assert type(fn(512, 128, 4, 32, 2)) is int and fn(512, 128, 4, 32, 2) == 36_864


def test_group_quantized_bytes_check_is_what_quantize_stores():
    # the closed form counts the bytes of a real QuantizedTensor's arrays (packed codes + fp16 or fp32 scales)
    for r, c, b, g, dtype, s in [(3, 36, 3, 12, "fp32", 4), (5, 10, 2, 5, "fp16", 2), (16, 64, 4, 32, "fp16", 2)]:
        q = Q.quantize(torch.randn(r, c), b, granularity="group", group_size=g, scale_dtype=dtype)
        assert q.nbytes == my_group_quantized_bytes(r, c, b, g, s)


def int_when_whole(value: float):
    """A float division turned into an int only when it came out whole (so 40.5 bytes stays 40.5)."""
    return int(value) if value.is_integer() else value


@pytest.mark.parametrize("wrong, hint", [
    (lambda r, c, b, g, s: math.ceil(r * c * b / 8), "the scales are missing"),
    (lambda r, c, b, g, s: r * c * b + r * (c // g) * s, "bits is BITS per weight"),
    (lambda r, c, b, g, s: 8 * my_group_quantized_bytes(r, c, b, g, s), "that is bits"),
    (lambda r, c, b, g, s: r * c * b + 8 * r * (c // g) * s, "that is bits"),
    (lambda r, c, b, g, s: my_group_quantized_bytes(r, c, b, g, s) + r * (c // g) * s, "no zero point"),
    (lambda r, c, b, g, s: my_group_quantized_bytes(r, c, b, g, s) + math.ceil(r * (c // g) * b / 8), "no zero point"),
    (lambda r, c, b, g, s: my_group_quantized_bytes(r, c, b, g, s) + r * (c // g), "no zero point"),
    (lambda r, c, b, g, s: r * math.ceil(c * b / 8) + r * (c // g) * s, "rounded up per row"),
    (lambda r, c, b, g, s: r * (c // g) * math.ceil(g * b / 8) + r * (c // g) * s, "rounded up per row (or per group)"),
    (lambda r, c, b, g, s: r * c * b // 8 + r * (c // g) * s, "round the codes' bytes UP"),
    (lambda r, c, b, g, s: int_when_whole(r * c * b / 8 + r * (c // g) * s), "round the codes' bytes UP"),
    (lambda r, c, b, g, s: math.ceil(r * c * b / 8) + (c // g) * s, "one scale per group of EVERY row"),
    (lambda r, c, b, g, s: math.ceil(r * c * b / 8) + r * (c // g) * s // 8, "don't divide it by 8"),
], ids=["no scales", "bits as bytes", "all in bits", "codes in bits", "zero point scale", "packed zero points",
        "int8 zero points", "per row", "per group", "floor", "float 40.5", "rows forgotten", "scale bytes / 8"])
def test_group_quantized_bytes_mistakes_get_their_hints(wrong, hint):
    assert_fails(grading.check_group_quantized_bytes, wrong, hint=hint)


def test_group_quantized_bytes_per_row_packing_fails_on_the_3_bit_example():
    assert_fails(grading.check_group_quantized_bytes, lambda r, c, b, g, s: r * math.ceil(c * b / 8) + r * (c // g) * s,
                 "3 × 36 at 3 bits", "expected 77, got 78 (+1)")


@pytest.mark.parametrize("answer, words", [
    (lambda *a: None, "did you forget `return`?"),
    (lambda *a: float(my_group_quantized_bytes(*a)), "return an int"),
    (lambda r, c, b, g, s: r // 0, "ZeroDivisionError"),
])
def test_group_quantized_bytes_none_float_and_crash_are_reported(answer, words):
    assert_fails(grading.check_group_quantized_bytes, answer, words)


@pytest.mark.parametrize("delegate, name", [
    (lambda r, c, b, g, s: Q.group_quantized_bytes(r, c, b, g, s), "labkit.quantize.group_quantized_bytes"),
    (Q.group_quantized_bytes, "labkit.quantize."),       # handed in: it trips on the first reference it calls
    (lambda r, c, b, g, s: Q.quantized_bytes((r, c), b, "group", g, scale_bytes=s), "labkit.quantize.quantized_bytes"),
    (lambda r, c, b, g, s: Q.packed_bytes(r * c, b) + r * (c // g) * s, "labkit.quantize.packed_bytes"),
])
def test_group_quantized_bytes_may_not_delegate(delegate, name):
    assert_fails(grading.check_group_quantized_bytes, delegate, name)


def test_group_quantized_bytes_hidden_examples_pass_a_right_answer_and_catch_a_table():
    assert_hidden_examples_defeat_a_table(grading.check_group_quantized_bytes, my_group_quantized_bytes,
                                          otherwise=lambda *a: 0)


# ---- in the grader's fresh process ------------------------------------------------------------

ABSMAX = ("def absmax_quantize(w, bits):\n"
          "    levels = 2 ** (bits - 1) - 1\n"
          "    scale = w.abs().max() / levels\n"
          "    if scale == 0:\n"
          "        return torch.zeros_like(w)\n"
          "    return torch.round(w / scale).clamp(-levels, levels) * scale\n")
SCALES = ("def group_scales(w, group_size, bits):\n"
          "    groups = w.abs().reshape(w.shape[0], -1, group_size)\n"
          "    return groups.amax(dim=-1) / (2 ** (bits - 1) - 1)\n")
BYTES = ("def group_quantized_bytes(n_rows, n_cols, bits, group_size, scale_bytes):\n"
         "    return math.ceil(n_rows * n_cols * bits / 8) + n_rows * (n_cols // group_size) * scale_bytes\n")


def test_graded_cells_pass_right_answers_in_a_fresh_process():
    assert grade_cell("absmax_quantize", ABSMAX) is None
    assert grade_cell("group_scales", SCALES) is None
    assert grade_cell("group_quantized_bytes", BYTES) is None


def test_graded_cells_fail_wrong_answers_with_the_hint():
    with pytest.raises(AssertionError, match="those are the integer codes"):
        grade_cell("absmax_quantize", ABSMAX.replace(".clamp(-levels, levels) * scale", ".clamp(-levels, levels)"))
    with pytest.raises(AssertionError, match="max.w., not max w"):
        grade_cell("group_scales", SCALES.replace("w.abs()", "w"))
    with pytest.raises(AssertionError, match="the scales are missing"):
        grade_cell("group_quantized_bytes", BYTES.replace(" + n_rows * (n_cols // group_size) * scale_bytes", ""))


# ---- labkit's references (the lab's fallbacks) give the checks' answers -------------------------

def test_labkit_references_agree_with_the_checks():
    for w, b in examples_of(grading.check_absmax_quantize, my_absmax_quantize):
        assert torch.equal(Q.absmax_quantize(w, b), my_absmax_quantize(w, b)), (w, b)
    for w, g, b in examples_of(grading.check_group_scales, my_group_scales):
        assert torch.equal(Q.group_scales(w, g, b), my_group_scales(w, g, b)), (w, g, b)
    for args in examples_of(grading.check_group_quantized_bytes, my_group_quantized_bytes):
        assert Q.group_quantized_bytes(*args) == my_group_quantized_bytes(*args), args
