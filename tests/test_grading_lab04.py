"""Lab 04 self-checks: a right answer passes, each typical wrong one fails with its hint, nothing raises.

(That a stub reads 'not yet solved' is tested for every check at once in test_grading.py.)"""
import functools
import math

import numpy as np
import pytest
import torch
from grading_helpers import assert_fails, assert_hidden_examples_defeat_a_table, examples_of, grade_cell

from labkit import grading, prune, sparse
from labkit.grading.checks import _is_magnitude_mask

# ---- the learner's answers, written here by hand ----------------------------------------------

def my_magnitude_mask(weight, sparsity):
    """Sort |w| and remove the first round(sparsity · numel) positions."""
    n_remove = round(sparsity * weight.numel())
    order = torch.argsort(weight.abs().flatten())
    mask = torch.ones(weight.numel(), dtype=torch.bool)
    mask[order[:n_remove]] = False
    return mask.view_as(weight)


def topk_magnitude_mask(weight, sparsity):
    """The same with torch.topk, whose order among ties is its own: the check accepts any tie order."""
    n_remove = round(sparsity * weight.numel())
    mask = torch.ones(weight.numel(), dtype=torch.bool)
    if n_remove:
        mask[torch.topk(weight.abs().flatten(), n_remove, largest=False).indices] = False
    return mask.view_as(weight)


def reverse_ties_mask(weight, sparsity):
    """Among equal |w| at the cut, remove the LAST positions first (the opposite of a stable sort)."""
    flipped = weight.flatten().flip(0)
    return my_magnitude_mask(flipped, sparsity).flip(0).view_as(weight)


def threshold_mask(weight, sparsity, keep_ties=False):
    """t = the k-th smallest |w|; keep |w| > t (or >= t): right without ties, wrong count with them."""
    k = round(sparsity * weight.numel())
    if k == 0:
        return torch.ones_like(weight, dtype=torch.bool)
    t = weight.abs().flatten().kthvalue(k).values
    return weight.abs() >= t if keep_ties else weight.abs() > t


def my_csr_bytes(n_rows, nnz, value_bytes, index_bytes):
    return nnz * (value_bytes + index_bytes) + (n_rows + 1) * index_bytes


def my_csr_break_even(n_rows, n_cols, value_bytes, index_bytes):
    cells = n_rows * n_cols
    return max(0.0, (cells * value_bytes - (n_rows + 1) * index_bytes) / (cells * (value_bytes + index_bytes)))


# ---- magnitude_mask ---------------------------------------------------------------------------

@pytest.mark.parametrize("right", [my_magnitude_mask, topk_magnitude_mask, reverse_ties_mask])
def test_magnitude_right_answers_pass_whatever_their_tie_order(right, capsys):
    result = grading.check_magnitude_mask(right)
    assert result and result.status == grading.PASS
    assert "passed (7 examples)" in capsys.readouterr().out


def test_magnitude_check_matches_torch_prune_on_its_examples():
    # the check's closed form agrees with torch.nn.utils.prune.l1_unstructured on every tie-free example
    seen = []

    def spy(weight, sparsity):
        seen.append((weight.clone(), sparsity))
        return my_magnitude_mask(weight, sparsity)

    assert grading.check_magnitude_mask(spy, quiet=True)
    tie_free = [(w, s) for w, s in seen if w.abs().unique().numel() == w.numel()]
    assert len(tie_free) >= 5
    for w, s in tie_free:
        linear = torch.nn.Linear(1, 1, bias=False)
        linear.weight = torch.nn.Parameter(w.clone())
        torch.nn.utils.prune.l1_unstructured(linear, "weight", amount=s)
        assert torch.equal(linear.weight_mask.bool(), my_magnitude_mask(w, s))
    assert any(s == 0.0 for _, s in seen) and any(w.dim() == 1 for w, _ in seen)


@pytest.mark.parametrize("wrong, hint", [
    (lambda w, s: my_magnitude_mask(w.abs().max() + 1 - w.abs(), s), "kept the smallest |w|"),
    (lambda w, s: my_magnitude_mask(w.abs().max() + 1 + w, s), "signed value w"),
    (lambda w, s: ~my_magnitude_mask(w, s), "inverted"),
    (lambda w, s: my_magnitude_mask(w, s).float(), "0/1 numbers"),
    (lambda w, s: w * my_magnitude_mask(w, s), "pruned weight itself"),
    (lambda w, s: my_magnitude_mask(w, s).flatten(), "not flattened"),
    (lambda w, s: threshold_mask(w, s), "ALL removed (|w| > t)"),
    (lambda w, s: threshold_mask(w, s, keep_ties=True), "one weight too few"),
    (lambda w, s: my_magnitude_mask(w, math.floor(s * w.numel()) / w.numel()), "rounded the count down"),
    (lambda w, s: my_magnitude_mask(w, math.ceil(s * w.numel() - 1e-9) / w.numel()), "rounded the count up"),
], ids=["keeps smallest", "signed", "inverted", "float mask", "pruned weight", "flattened", "> with ties",
        ">= off by one", "floor", "ceil"])
def test_magnitude_mistakes_get_their_hints(wrong, hint):
    assert_fails(grading.check_magnitude_mask, wrong, hint=hint)


def test_magnitude_float_mask_says_the_lab_needs_bool():
    assert_fails(grading.check_magnitude_mask, lambda w, s: my_magnitude_mask(w, s).float(),
                 "dtype torch.float32; the lab needs torch.bool")


def test_magnitude_ties_kept_by_greater_equal_get_the_tie_hint():
    # `>=` keeps every weight tied at the cut: on the tie example that is the tie hint, not "one too few"
    def ge_only_on_ties(w, s):
        return threshold_mask(w, s, keep_ties=True) if w.numel() == 8 else my_magnitude_mask(w, s)
    assert_fails(grading.check_magnitude_mask, ge_only_on_ties, "ALL kept (|w| >= t)", "a tie at the cut")


@pytest.mark.parametrize("answer, words", [
    (lambda w, s: None, "returned None — did you forget `return`?"),
    (lambda w, s: my_magnitude_mask(w, s).numpy(), "numpy array"),
    (lambda w, s: np.bool_(True), "expected a torch.Tensor"),
    (lambda w, s: w.abs().kthvalue(0), "your function raised"),
])
def test_magnitude_none_numpy_and_crash_are_reported_not_raised(answer, words):
    assert_fails(grading.check_magnitude_mask, answer, words)


def test_magnitude_mask_may_not_delegate():
    def via_torch(w, s):
        m = torch.nn.Linear(1, 1, bias=False)
        m.weight = torch.nn.Parameter(w.clone())
        torch.nn.utils.prune.l1_unstructured(m, "weight", amount=s)
        return m.weight_mask.bool()

    assert_fails(grading.check_magnitude_mask, via_torch, "torch.nn.utils.prune.l1_unstructured")

    def via_global(w, s):
        m = torch.nn.Linear(1, 1, bias=False)
        m.weight = torch.nn.Parameter(w.clone())
        torch.nn.utils.prune.global_unstructured([(m, "weight")], torch.nn.utils.prune.L1Unstructured, amount=s)
        return m.weight_mask.bool()

    assert_fails(grading.check_magnitude_mask, via_global, "torch.nn.utils.prune")


def test_magnitude_mask_may_not_call_labkit_prune():
    assert_fails(grading.check_magnitude_mask, lambda w, s: prune.magnitude_mask(w, s), "labkit.prune.magnitude_mask")
    assert_fails(grading.check_magnitude_mask, prune.magnitude_mask, "labkit.prune.magnitude_mask")  # handed in
    assert_fails(grading.check_magnitude_mask, lambda w, s: prune.layer_masks(w, s), "labkit.prune.layer_masks")


def test_magnitude_hidden_examples_pass_a_right_answer_and_catch_a_table():
    assert_hidden_examples_defeat_a_table(grading.check_magnitude_mask, my_magnitude_mask,
                                          also_right=[topk_magnitude_mask, reverse_ties_mask],
                                          otherwise=lambda w, s: torch.ones_like(w, dtype=torch.bool))


# ---- csr_bytes --------------------------------------------------------------------------------

def test_csr_bytes_right_answer_passes(capsys):
    assert grading.check_csr_bytes(my_csr_bytes)
    assert "passed" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_csr_bytes_closed_form_is_what_torch_stores():
    # the check's formula counts what a torch.sparse_csr_tensor really holds (int64 indices: index_bytes 8)
    w = torch.tensor([[0.0, 1.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [2.0, 0.0, -3.0, 0.0]])
    csr = w.to_sparse_csr()
    held = sum(t.numel() * t.element_size() for t in (csr.values(), csr.col_indices(), csr.crow_indices()))
    assert csr.col_indices().dtype == torch.int64
    assert held == my_csr_bytes(3, 3, 4, 8)


@pytest.mark.parametrize("wrong, hint", [
    (lambda r, z, v, i: z * (v + i) + r * i, "one too few"),
    (lambda r, z, v, i: z * (v + i), "row pointers are missing"),
    (lambda r, z, v, i: z * (v + 2 * i), "that is COO"),
    (lambda r, z, v, i: z * (v + i) + (r + 1) * v, "index_bytes each, not value_bytes"),
    (lambda r, z, v, i: 8 * my_csr_bytes(r, z, v, i), "that is bits"),
    (lambda r, z, v, i: my_csr_bytes(r, z, v, i) // 8, "don't divide by 8"),
    (lambda r, z, v, i: z * v + (r + 1) * i, "its value AND its column index"),
], ids=["n_rows pointers", "no pointers", "coo", "pointer width", "bits", "divided by 8", "no column index"])
def test_csr_bytes_mistakes_get_their_hints(wrong, hint):
    assert_fails(grading.check_csr_bytes, wrong, hint=hint)


@pytest.mark.parametrize("answer, words", [
    (lambda r, z, v, i: None, "did you forget `return`?"),
    (lambda r, z, v, i: float(my_csr_bytes(r, z, v, i)), "return an int"),
    (lambda r, z, v, i: 1 / 0, "ZeroDivisionError"),
])
def test_csr_bytes_none_float_and_crash_are_reported(answer, words):
    assert_fails(grading.check_csr_bytes, answer, words)


def test_csr_bytes_accepts_numpy_and_tensor_integers():
    assert grading.check_csr_bytes(lambda *a: np.int64(my_csr_bytes(*a)), quiet=True)
    assert grading.check_csr_bytes(lambda *a: torch.tensor(my_csr_bytes(*a)), quiet=True)
    fn = grading.use_or_fallback(lambda *a: np.int64(my_csr_bytes(*a)), grading.check_csr_bytes, my_csr_bytes)
    assert type(fn(4, 6, 4, 4)) is int and fn(4, 6, 4, 4) == 68


def test_csr_bytes_may_not_delegate():
    assert_fails(grading.check_csr_bytes, lambda r, z, v, i: sparse.csr_bytes(r, z, v, i), "labkit.sparse.csr_bytes")
    assert_fails(grading.check_csr_bytes, lambda r, z, v, i: sparse.format_bytes("csr", (r, 1 + z // r), z),
                 "labkit.sparse.format_bytes")


def test_csr_bytes_hidden_examples_pass_a_right_answer_and_catch_a_table():
    assert_hidden_examples_defeat_a_table(grading.check_csr_bytes, my_csr_bytes, otherwise=lambda *a: 0)


# ---- csr_break_even ---------------------------------------------------------------------------

def test_csr_break_even_right_answer_passes(capsys):
    assert grading.check_csr_break_even(my_csr_break_even)
    assert "passed" in capsys.readouterr().out


def test_csr_break_even_is_where_the_bytes_cross():
    # at the check's density, CSR bytes equal dense bytes (up to the one nonzero a whole count rounds to)
    for r, c, v, i in [(512, 128, 4, 4), (4096, 4096, 2, 4), (1000, 1000, 4, 2)]:
        d = my_csr_break_even(r, c, v, i)
        below, above = math.floor(d * r * c), math.ceil(d * r * c) + 1
        assert my_csr_bytes(r, below, v, i) <= r * c * v < my_csr_bytes(r, above, v, i)


@pytest.mark.parametrize("wrong, hint", [
    (lambda r, c, v, i: v / (v + i), "ignores the n_rows + 1 row pointers"),
    (lambda r, c, v, i: v / i, "v / i compares a value with an index"),
    (lambda r, c, v, i: 1 - my_csr_break_even(r, c, v, i), "the sparsity at break-even"),
    (lambda r, c, v, i: i / (v + i), "that is the sparsity of v / (v + i)"),
    (lambda r, c, v, i: 100 * my_csr_break_even(r, c, v, i), "percentage"),
    (lambda r, c, v, i: (r * c * v - (r + 1) * i) / (r * c * (v + i)), "return 0.0"),
    (lambda r, c, v, i: max(0.0, (r * c * v - (c + 1) * i) / (r * c * (v + i))), "CSC"),
    (lambda r, c, v, i: max(0.0, (r * c * v - r * i) / (r * c * (v + i))), "n_rows pointers, one too few"),
], ids=["no row pointers", "v/i", "1 - d", "i/(v+i)", "percent", "not clamped", "csc", "n_rows pointers"])
def test_csr_break_even_mistakes_get_their_hints(wrong, hint):
    assert_fails(grading.check_csr_break_even, wrong, hint=hint)


@pytest.mark.parametrize("answer, words", [
    (lambda r, c, v, i: None, "did you forget `return`?"),
    (lambda r, c, v, i: torch.tensor([0.5]), "expected one number"),
    (lambda r, c, v, i: [][0], "IndexError"),
])
def test_csr_break_even_none_tensor_and_crash_are_reported(answer, words):
    assert_fails(grading.check_csr_break_even, answer, words)


def test_csr_break_even_accepts_numpy_scalars_and_hands_on_a_float():
    assert grading.check_csr_break_even(lambda *a: np.float32(my_csr_break_even(*a)), quiet=True)
    fn = grading.use_or_fallback(lambda *a: np.float64(my_csr_break_even(*a)), grading.check_csr_break_even,
                                 my_csr_break_even)
    assert type(fn(512, 128, 4, 4)) is float


def test_csr_break_even_may_not_delegate():
    assert_fails(grading.check_csr_break_even, lambda r, c, v, i: sparse.break_even_density("csr", r, c, v, i),
                 "labkit.sparse.break_even_density")
    handed_in = functools.partial(sparse.break_even_density, "csr")     # what the lab's fallback hands on
    assert_fails(grading.check_csr_break_even, handed_in, "labkit.sparse.break_even_density")


def test_csr_break_even_hidden_examples_pass_a_right_answer_and_catch_a_table():
    assert_hidden_examples_defeat_a_table(grading.check_csr_break_even, my_csr_break_even, otherwise=lambda *a: 0.5)


# ---- in the grader's fresh process ------------------------------------------------------------

MASK = ("def magnitude_mask(weight, sparsity):\n"
        "    n_remove = round(sparsity * weight.numel())\n"
        "    mask = torch.ones(weight.numel(), dtype=torch.bool)\n"
        "    if n_remove:\n"
        "        mask[torch.topk(weight.abs().flatten(), n_remove, largest=False).indices] = False\n"
        "    return mask.view_as(weight)\n")
CSR = ("def csr_bytes(n_rows, nnz, value_bytes, index_bytes):\n"
       "    return nnz * (value_bytes + index_bytes) + (n_rows + 1) * index_bytes\n")
BREAK_EVEN = ("def csr_break_even(n_rows, n_cols, value_bytes, index_bytes):\n"
              "    cells = n_rows * n_cols\n"
              "    return max(0.0, (cells * value_bytes - (n_rows + 1) * index_bytes)"
              " / (cells * (value_bytes + index_bytes)))\n")


def test_graded_cells_pass_right_answers_in_a_fresh_process():
    assert grade_cell("magnitude_mask", MASK) is None
    assert grade_cell("csr_bytes", CSR) is None
    assert grade_cell("csr_break_even", BREAK_EVEN) is None


def test_graded_cells_fail_wrong_answers_with_the_hint():
    with pytest.raises(AssertionError, match="inverted"):
        grade_cell("magnitude_mask", MASK.replace("return mask", "return ~mask"))
    with pytest.raises(AssertionError, match="dtype torch.float32; the lab needs torch.bool"):
        grade_cell("magnitude_mask", MASK.replace("view_as(weight)", "view_as(weight).float()"))
    with pytest.raises(AssertionError, match="one too few"):
        grade_cell("csr_bytes", CSR.replace("(n_rows + 1)", "n_rows"))
    with pytest.raises(AssertionError, match="ignores the n_rows . 1 row pointers"):
        grade_cell("csr_break_even", "def csr_break_even(r, c, v, i):\n    return v / (v + i)\n")


# ---- the fallbacks the lab hands on when a check fails give the check's answers -----------------

def test_labkit_references_agree_with_the_checks():
    for w, s in examples_of(grading.check_magnitude_mask, my_magnitude_mask):
        assert _is_magnitude_mask(prune.magnitude_mask(w, s), w, round(s * w.numel())), (w, s)
    for args in examples_of(grading.check_csr_bytes, my_csr_bytes):
        assert sparse.csr_bytes(*args) == my_csr_bytes(*args)
    for r, c, v, i in examples_of(grading.check_csr_break_even, my_csr_break_even):
        assert sparse.break_even_density("csr", r, c, v, i) == pytest.approx(my_csr_break_even(r, c, v, i),
                                                                             rel=1e-9, abs=1e-12)


def test_magnitude_per_row_pruning_gets_its_hint():
    def per_row(w, s):
        if w.dim() == 1:
            return my_magnitude_mask(w, s)
        return torch.stack([my_magnitude_mask(row, s) for row in w])
    assert_fails(grading.check_magnitude_mask, per_row, "each row separately")


@pytest.mark.parametrize("check, wrong, hint", [
    ("magnitude_mask", lambda w, s: w.abs() > w.abs().flatten().kthvalue(max(1, round(s * w.numel()))).values,
     "at sparsity 0 nothing is removed"),
    ("csr_bytes", lambda r, z, v, i: z * (v + i) + (r + 1) * 8, "8 bytes each"),
    ("csr_break_even", lambda r, c, v, i: max(0, (r * c * v - (r + 1) * i) // (r * c * (v + i))), "integer division"),
])
def test_hints_found_by_the_review(check, wrong, hint):
    assert_fails(getattr(grading, f"check_{check}"), wrong, hint=hint)
