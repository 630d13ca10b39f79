"""The grading tests' shared assertions can fail: each is tried on a toy check built on run_check."""
import pytest
import torch
from grading_helpers import (assert_fails, assert_hidden_examples_defeat_a_table, examples_of, hashable,
                             hidden_seed)

from labkit.grading import core
from labkit.grading.core import Case, Mistake, run_check

PUBLIC = [Case("double(2)", (2,), {}, 4), Case("double(3)", (3,), {}, 6)]


def drawn(g: torch.Generator) -> Case:
    x = int(torch.randint(10, 1000, (1,), generator=g))
    return Case(f"double({x})", (x,), {}, 2 * x)


def check_double(fn, quiet=False, hidden=drawn):
    """A toy check: fn(x) must return 2x; a hint for x + x + 1."""
    return run_check("double", fn, PUBLIC, quiet=quiet, returns="int", hidden=hidden,
                     mistakes=[Mistake("one too many", lambda got, x: got == 2 * x + 1)])


def check_double_hidden_public(fn, quiet=False):
    """The mutation: a check whose 'hidden' examples are its public ones."""
    return check_double(fn, quiet=quiet, hidden=lambda g: Case("double(2)", (2,), {}, 4))


def double(x):
    return 2 * x


def test_the_toy_check_passes_a_right_answer_and_draws_hidden_examples():
    assert check_double(double, quiet=True)
    with hidden_seed(3):
        assert "passed (5 examples)" in check_double(double, quiet=True).message
    assert core.HIDDEN_SEED is None          # put back


def test_hidden_examples_helper_passes_a_check_with_real_hidden_examples():
    result = assert_hidden_examples_defeat_a_table(check_double, double, otherwise=lambda x: 0)
    assert "hidden example (grader's seed 7)" in result.message


def test_hidden_examples_helper_fails_when_the_hidden_examples_are_the_public_ones():
    with pytest.raises(AssertionError, match="passed"):
        assert_hidden_examples_defeat_a_table(check_double_hidden_public, double, otherwise=lambda x: 0)


def test_hidden_examples_helper_fails_without_hidden_examples(monkeypatch):
    monkeypatch.setattr(core, "HIDDEN_EXAMPLES", 0)
    with pytest.raises(AssertionError):
        assert_hidden_examples_defeat_a_table(check_double, double, otherwise=lambda x: 0)


def test_hidden_examples_helper_fails_when_a_right_answer_fails_a_hidden_seed():
    picky = lambda x: 2 * x if x < 500 else 0       # right on the public examples, wrong on large hidden ones
    with pytest.raises(AssertionError):
        assert_hidden_examples_defeat_a_table(check_double, picky, otherwise=lambda x: 0)


def test_hidden_examples_helper_fails_when_the_table_is_wrong_on_the_public_examples_too():
    # a 'table' that fails for another reason proves nothing about the hidden examples
    with pytest.raises(AssertionError, match="the table should pass the public examples"):
        assert_hidden_examples_defeat_a_table(check_double, double, key=lambda x: object(), otherwise=lambda x: 0)


def test_assert_fails_fails_on_a_passing_answer_a_missing_word_or_a_hint_not_given_as_one():
    with pytest.raises(AssertionError):
        assert_fails(check_double, double)
    assert_fails(check_double, lambda x: 2 * x + 1, "expected 4, got 5", hint="one too many")
    with pytest.raises(AssertionError):
        assert_fails(check_double, lambda x: 2 * x + 1, "expected 4, got 6")
    with pytest.raises(AssertionError):       # the words are there, but not after 'hint: '
        assert_fails(check_double, lambda x: 2 * x + 1, hint="double(2)")
    with pytest.raises(AssertionError):       # no hint at all
        assert_fails(check_double, lambda x: 3 * x, hint="")


def test_examples_of_records_public_and_hidden_arguments_as_passed():
    seen = examples_of(check_double, double)
    assert seen[:2] == [(2,), (3,)] and len(seen) == 4 * 2 + 3 * core.HIDDEN_EXAMPLES   # 4 runs, 3 with hidden
    w = torch.ones(3)

    def check_calls_once(fn, quiet=False):
        fn(w)
        return True

    recorded = examples_of(check_calls_once, lambda t: t.add_(1), seeds=[None])
    assert torch.equal(recorded[0][0], torch.ones(3)) and torch.equal(w, torch.full((3,), 2.0))  # copied first


def test_hashable_tells_dtypes_shapes_and_values_apart():
    a = torch.tensor([1.0, 2.0])
    assert hashable(a) == hashable(a.clone())
    assert len({hashable(a), hashable(a.double()), hashable(a.view(2, 1)), hashable(a + 1)}) == 4
    assert hashable({1: [a]}) == hashable({1: [a.clone()]})
