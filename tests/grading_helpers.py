"""What the grading tests share: a function defined the way a notebook cell defines it, the grader's hidden seed,
the examples a check runs, and the assertions every lab's check tests make (a wrong answer fails with its words,
hidden examples defeat a table of the public answers, a graded cell in the grader's fresh process)."""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F

from labkit import grading
from labkit.autograde import grade


def notebook_function(source: str, name: str, **names):
    """Define a function the way a notebook cell does (module __main__), so cloudpickle sends it by value.

    The cell sees math, torch, F (torch.nn.functional), grading and any `names` given."""
    ns = {"__name__": "__main__", "math": math, "torch": torch, "F": F, "grading": grading, **names}
    exec(source, ns)  # noqa: S102  (the test defines the function as a notebook cell would)
    return ns[name]


def grade_cell(name: str, source: str, **names) -> None:
    """Grade the function `name` defined by a cell's `source` as the course's grader does (a fresh process):
    None when it passes, AssertionError with the check's message when it fails."""
    return grade(name, notebook_function(source, name, **names))


@contextlib.contextmanager
def hidden_seed(seed: int | None) -> Iterator[None]:
    """Run the checks as the grader does with this seed (None: the public examples only), then put it back."""
    from labkit.grading import core
    old, core.HIDDEN_SEED = core.HIDDEN_SEED, seed
    try:
        yield
    finally:
        core.HIDDEN_SEED = old


def snapshot(x: Any) -> Any:
    """A copy of an example's argument as the check passed it (tensors detached and cloned, containers copied)."""
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if type(x) is dict:
        return {k: snapshot(v) for k, v in x.items()}
    if type(x) in (list, tuple):
        return type(x)(snapshot(v) for v in x)
    return x


def hashable(x: Any) -> Any:
    """An example's argument as a dict key: tensors by dtype, shape and values; containers as tuples."""
    if isinstance(x, torch.Tensor):
        return ("tensor", x.dtype, tuple(x.shape), tuple(x.detach().flatten().tolist()))
    if isinstance(x, dict):
        return ("dict", tuple((hashable(k), hashable(v)) for k, v in x.items()))
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, tuple(hashable(v) for v in x))
    return x


def examples_of(check: Callable, right: Callable, seeds: Iterable[int | None] = (None, 1, 2, 3)) -> list[tuple]:
    """The arguments of every example `check` runs (public and three hidden seeds' worth), via a spy."""
    seen = []

    def spy(*args):
        seen.append(tuple(snapshot(a) for a in args))
        return right(*args)

    for seed in seeds:
        with hidden_seed(seed):
            assert check(spy, quiet=True), seed
    return seen


def assert_fails(check: Callable, answer: Callable, *words: str, hint: str | None = None):
    """`check` fails `answer` (without raising) and its message holds every one of `words`, and `hint` after
    'hint: ' when given. Returns the result."""
    result = check(answer, quiet=True)
    assert result.status == grading.FAIL, result.message
    for word in words:
        assert word in result.message, result.message
    if hint is not None:
        assert "hint: " in result.message and hint in result.message.split("hint: ", 1)[1], result.message
    return result


def assert_hidden_examples_defeat_a_table(check: Callable, right: Callable, *, otherwise: Callable,
                                          key: Callable[..., Any] = lambda *a: hashable(a),
                                          also_right: Iterable[Callable] = (), seeds: Iterable[int] = range(20),
                                          seed: int = 7):
    """A right answer passes the hidden examples of every grader's seed in `seeds`; a table of the public
    answers (right on the public examples' inputs, `otherwise(*args)` elsewhere) passes the public examples and
    fails a hidden one at `seed`. `key(*args)` is how the table recognises an input. Returns the failing result."""
    for s in seeds:
        with hidden_seed(s):
            for fn in (right, *also_right):
                assert check(fn, quiet=True), (getattr(fn, "__name__", fn), s)
    public = set()
    with hidden_seed(None):
        assert check(lambda *a: public.add(key(*a)) or right(*a), quiet=True)
    assert public, "the check ran no example"

    def table(*args):
        return right(*args) if key(*args) in public else otherwise(*args)

    with hidden_seed(None):
        result = check(table, quiet=True)
        assert result, f"the table should pass the public examples: {result.message}"
    with hidden_seed(seed):
        result = check(table, quiet=True)
    assert not result and f"hidden example (grader's seed {seed})" in result.message, result.message
    return result
