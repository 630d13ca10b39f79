"""The self-checks must pass a right answer, fail wrong ones with a useful message, and never crash."""
import math

import nbformat
import pytest
import torch
import torch.nn.functional as F

from labkit import grading
from labkit.memory import kv_cache_bytes, training_state_bytes


def todo(*args, **kwargs):
    raise NotImplementedError()


RIGHT = {
    grading.check_tensor_bytes: lambda shape, dtype: math.prod(shape) * torch.empty((), dtype=dtype).element_size(),
    grading.check_params_that_fit: lambda b, bpp: int(b // bpp),
    grading.check_cross_entropy: lambda logits, y: F.cross_entropy(logits, y),
    grading.check_perplexity: lambda x: math.exp(x),
    grading.check_bits_per_char: lambda x: x / math.log(2),
    grading.check_causal_attention: lambda q, k, v: torch.softmax(
        (q @ k.T / math.sqrt(q.size(-1))).masked_fill(torch.triu(torch.ones(len(q), len(q), dtype=torch.bool), 1),
                                                      float("-inf")), -1) @ v,
    grading.check_kv_cache_bytes: lambda L, kv, hd, T, B, nbytes: 2 * L * kv * hd * T * B * nbytes,
    grading.check_adam_training_bytes: lambda n, nbytes: 4 * n * nbytes,
}

WRONG = {  # a typical mistake for each exercise
    grading.check_tensor_bytes: lambda shape, dtype: math.prod(shape),                   # forgot element size
    grading.check_params_that_fit: lambda b, bpp: b / bpp,                                # not whole params
    grading.check_cross_entropy: lambda logits, y: -torch.log(torch.exp(logits) / torch.exp(logits).sum(-1, keepdim=True)).gather(1, y[:, None]).mean(),  # overflows
    grading.check_perplexity: lambda x: 2 ** x,                                           # wrong base
    grading.check_bits_per_char: lambda x: x / math.log(10),
    grading.check_causal_attention: lambda q, k, v: torch.softmax(q @ k.T / math.sqrt(q.size(-1)), -1) @ v,  # no mask
    grading.check_kv_cache_bytes: lambda L, kv, hd, T, B, nbytes: L * kv * hd * T * B * nbytes,  # forgot k AND v
    grading.check_adam_training_bytes: lambda n, nbytes: 3 * n * nbytes,                 # forgot a moment
}


@pytest.mark.parametrize("check", list(RIGHT), ids=lambda c: c.__name__)
def test_right_answer_passes(check, capsys):
    result = check(RIGHT[check])
    assert result and result.status == grading.PASS
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("check", list(WRONG), ids=lambda c: c.__name__)
def test_wrong_answer_fails_with_example(check, capsys):
    result = check(WRONG[check])
    assert not result and result.status == grading.FAIL
    out = capsys.readouterr().out
    assert "❌" in out and ("expected" in out or "raised" in out)


# every check in labkit.grading, including the ones each lab adds: a stub must read "not yet solved"
ALL_CHECKS = [f for name, f in sorted(vars(grading).items()) if name.startswith("check_") and callable(f)]


def test_all_checks_are_found():
    assert set(RIGHT) <= set(ALL_CHECKS) and len(ALL_CHECKS) >= len(RIGHT) + 4


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda c: c.__name__)
def test_unsolved_says_not_yet_solved(check, capsys):
    result = check(todo)
    assert result.status == grading.TODO and not result
    assert "not yet solved" in capsys.readouterr().out


def test_crashing_function_is_reported_not_raised():
    result = grading.check_perplexity(lambda x: 1 / 0, quiet=True)
    assert result.status == grading.FAIL and "ZeroDivisionError" in result.message


def test_checks_compare_against_labkit_formulas():
    # the expected values inside the checks come from labkit; spot-check that they are what we think
    assert kv_cache_bytes(4, 4, 32, 64, 1, "fp32") == 2 * 4 * 4 * 32 * 64 * 4
    assert training_state_bytes(10, "fp32", "adam")["total"] == 160


def test_use_or_fallback(capsys):
    ref = RIGHT[grading.check_perplexity]
    assert grading.use_or_fallback(ref, grading.check_perplexity, math.exp) is ref
    assert grading.use_or_fallback(todo, grading.check_perplexity, math.exp) is math.exp
    assert "reference" in capsys.readouterr().out


def test_strip_solutions_keeps_indent_and_removes_hidden_tests():
    src = ("def f(x):\n    \"\"\"doc\"\"\"\n    ### BEGIN SOLUTION\n    y = x + 1\n    return y\n    ### END SOLUTION\n"
           "### BEGIN HIDDEN TESTS\nassert f(1) == 2\n### END HIDDEN TESTS\nprint('kept')\n")
    out = grading.strip_solutions(src)
    assert "y = x + 1" not in out and "assert f(1)" not in out and "print('kept')" in out
    assert "    raise NotImplementedError()" in out
    ns = {}
    exec(out, ns)
    with pytest.raises(NotImplementedError):
        ns["f"](1)


def test_release_writes_student_copies(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("def f():\n    ### BEGIN SOLUTION\n    return 42\n    ### END SOLUTION"),
        nbformat.v4.new_code_cell("### BEGIN HIDDEN TESTS\nassert f() == 42\n### END HIDDEN TESTS"),
    ])
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", text="x")]
    nb.cells[0].execution_count = 3
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    nbformat.write(nb, src / "a.ipynb")
    assert grading.release(src, dst) == {"a.ipynb": 1}
    student = nbformat.read(dst / "a.ipynb", as_version=4)
    assert "return 42" not in student.cells[0].source and student.cells[0].outputs == []
    assert student.cells[0].execution_count is None
    assert "assert" not in student.cells[1].source
    with pytest.raises(ValueError, match="dst_dir"):
        grading.release(src, src)
    with pytest.raises(ValueError, match="src_dir"):
        grading.release(tmp_path / "missing", dst)
