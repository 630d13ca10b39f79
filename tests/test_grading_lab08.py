"""Lab 08 self-checks: a right answer passes, each typical wrong one fails with its hint, nothing raises,
the input lists are left alone, the references can't be called, and hidden examples beat a table of answers.

(That a stub reads 'not yet solved' is tested for every check at once in test_grading.py.)"""
import math
from collections import namedtuple

import numpy as np
import pytest
import torch
from grading_helpers import assert_fails, assert_hidden_examples_defeat_a_table, examples_of, grade_cell, hidden_seed

from labkit import arena, grading, paged_kv
from labkit.grading.checks_pools import (
    check_arena_lower_bound,
    check_first_fit,
    check_kv_blocks_needed,
    check_release,
)

# ---- the learner's answers, written here by hand ----------------------------------------------

def my_first_fit(free_blocks, size):
    for i, (offset, hole) in enumerate(free_blocks):
        if hole >= size:
            rest = [(offset + size, hole - size)] if hole > size else []
            return offset, free_blocks[:i] + rest + free_blocks[i + 1:]
    raise MemoryError(f"no hole of {size} bytes")


def my_release(free_blocks, offset, size):
    for o, s in free_blocks:
        if o < offset + size and offset < o + s:
            raise ValueError("double free")
    holes = []
    for o, s in sorted(free_blocks + [(offset, size)]):
        if holes and holes[-1][0] + holes[-1][1] == o:
            holes[-1] = (holes[-1][0], holes[-1][1] + s)
        else:
            holes.append((o, s))
    return holes


def my_arena_lower_bound(lifetimes):
    steps = sorted({first for _, first, _ in lifetimes})       # the peak comes at some tensor's first step
    return max((sum(size for size, f, l in lifetimes if f <= t < l) for t in steps), default=0)


def my_kv_blocks_needed(prompt_len, output_len, block_size, n_sequences):
    if output_len == 0:
        return -(-prompt_len // block_size)
    full, partial = divmod(prompt_len, block_size)
    return full + n_sequences * -(-(partial + output_len) // block_size)


def first_fit_lists(free_blocks, size):
    """The same, but holes as [offset, size] lists and numpy ints: they behave the same in the allocator."""
    offset, holes = my_first_fit([tuple(h) for h in free_blocks], size)
    return np.int64(offset), [[o, np.int64(s)] for o, s in holes]


# ---- first_fit ----------------------------------------------------------------------------------

Hole = namedtuple("Hole", "offset size")


class Pair(tuple):
    """A tuple subclass, as a learner's own result type might be."""


def first_fit_namedtuples(free_blocks, size):
    """Holes as namedtuples Hole(offset, size), as a learner who names things might write."""
    offset, holes = my_first_fit([tuple(h) for h in free_blocks], size)
    return offset, [Hole(*h) for h in holes]


def first_fit_tuple_subclass(free_blocks, size):
    """A tuple subclass holding numpy ints."""
    offset, holes = my_first_fit([tuple(h) for h in free_blocks], size)
    return Pair((np.int64(offset), [Hole(np.int64(o), np.int64(s)) for o, s in holes]))


@pytest.mark.parametrize("right", [my_first_fit, first_fit_lists, first_fit_namedtuples, first_fit_tuple_subclass])
def test_first_fit_right_answers_pass(right, capsys):
    result = check_first_fit(right)
    assert result and result.status == grading.PASS
    assert "passed (8 examples)" in capsys.readouterr().out


def _first_index(free, size):
    return next(i for i, (_, s) in enumerate(free) if s >= size)


def best_fit(free, size):
    fits = [h for h in free if h[1] >= size]
    if not fits:
        raise MemoryError
    o, s = min(fits, key=lambda h: h[1])
    i = free.index((o, s))
    return o, free[:i] + ([(o + size, s - size)] if s > size else []) + free[i + 1:]


def strict_first_fit(free, size):
    for i, (o, s) in enumerate(free):
        if s > size:
            return o, free[:i] + [(o + size, s - size)] + free[i + 1:]
    raise MemoryError


def mutating_first_fit(free, size):
    offset, holes = my_first_fit(free, size)
    free[:] = holes
    return offset, free


def appended_first_fit(free, size):
    i = _first_index(free, size)
    o, s = free[i]
    return o, free[:i] + free[i + 1:] + ([(o + size, s - size)] if s > size else [])


def no_memory_error(free, size):
    try:
        return my_first_fit(free, size)
    except MemoryError:
        return -1, free


@pytest.mark.parametrize("wrong, hint", [
    (best_fit, "that is BEST fit"),
    (strict_first_fit, "compare with >=, not >"),
    (lambda f, s: (f[_first_index(f, s)][0], f[:_first_index(f, s)] + f[_first_index(f, s) + 1:]), "vanished"),
    (lambda f, s: (f[_first_index(f, s)][0], list(f)), "still in the free list unchanged"),
    (lambda f, s: (f[_first_index(f, s)][0], [(o + s, h - s) if i == _first_index(f, s) else (o, h)
                                              for i, (o, h) in enumerate(f)]), "a hole of 0 bytes"),
    (lambda f, s: (lambda i: (f[i][0] + f[i][1] - s, f[:i] + ([(f[i][0], f[i][1] - s)] if f[i][1] > s else [])
                              + f[i + 1:]))(_first_index(f, s)), "START of the hole"),
    (lambda f, s: (lambda i: (f[i][0], f[:i] + [(f[i][0] + s, f[i][1])] + f[i + 1:]))(_first_index(f, s)),
     "kept its old size"),
    (appended_first_fit, "not sorted by offset"),
    (mutating_first_fit, "don't change the free list you are given"),
    (no_memory_error, "raise MemoryError"),
    (lambda f, s: my_first_fit(f, s)[0], "return a pair (offset, new_free_blocks)"),
    (lambda f, s: my_first_fit(f, s)[::-1], "return a pair (offset, new_free_blocks)"),
    (lambda f, s: (float(my_first_fit(f, s)[0]), my_first_fit(f, s)[1]), "whole bytes"),
    (lambda f, s: (torch.tensor(my_first_fit(f, s)[0]), my_first_fit(f, s)[1]), "whole bytes"),
], ids=["best fit", "> not >=", "hole dropped", "hole kept", "0-byte hole", "end of hole", "size kept", "unsorted",
        "mutated", "no MemoryError", "offset only", "swapped", "float", "tensor"])
def test_first_fit_mistakes_get_their_hints(wrong, hint):
    assert_fails(check_first_fit, wrong, hint=hint)


def test_first_fit_names_the_example_and_both_answers():
    message = check_first_fit(best_fit, quiet=True).message
    assert "first_fit([(0, 64), (128, 32), (256, 768)], 32)" in message
    # shown as the structure first_fit returns, without quotes (not as a string it should return)
    assert "expected (0, [(32, 32), (128, 32), (256, 768)]), got (128, [(0, 64), (256, 768)])" in message
    message = check_first_fit(no_memory_error, quiet=True).message
    assert "expected raises MemoryError, got (-1, [(0, 64), (128, 32), (256, 768)])" in message, message


def test_free_lists_of_namedtuples_and_tuple_subclasses_are_written_out_as_plain_pairs():
    from labkit.grading.checks_pools import _shown_first_fit, _shown_release
    assert _shown_first_fit(first_fit_tuple_subclass([(0, 64), (128, 32)], 16)) == "(0, [(16, 48), (128, 32)])"
    assert _shown_release([Hole(0, 64), [np.int32(128), 32]]) == "[(0, 64), (128, 32)]"
    assert _shown_first_fit((1.0, [(0, True)])) == "(1.0, [(0, True)])"     # what is not an int stays visible


def test_a_right_answer_that_changes_its_input_still_fails():
    # the allocator keeps the list it passed in: an answer that edits it in place is wrong even when its value is right
    assert_fails(check_first_fit, mutating_first_fit, "the free list passed in was changed")


@pytest.mark.parametrize("answer, words", [
    (lambda f, s: None, "returned None — did you forget `return`?"),
    (lambda f, s: np.int64(3), "return a pair"),
    (lambda f, s: f[5], "your function raised IndexError"),
    (lambda f, s: 1 / 0, "raised ZeroDivisionError"),
])
def test_first_fit_none_numpy_and_crash_are_reported_not_raised(answer, words):
    assert_fails(check_first_fit, answer, words)


# ---- release ------------------------------------------------------------------------------------

def test_release_right_answer_passes(capsys):
    assert check_release(my_release)
    assert "passed (11 examples)" in capsys.readouterr().out
    assert check_release(lambda f, o, s: tuple(Hole(*h) for h in my_release([tuple(h) for h in f], o, s)), quiet=True)


def release_checking(overlaps):
    """my_release with another double-free test: overlaps(hole_offset, hole_size, offset, size)."""
    def release(free, offset, size):
        if any(overlaps(o, s, offset, size) for o, s in free):
            raise ValueError("double free")
        return _merged(free, offset, size)
    return release


def _merged(free, offset, size):
    holes = []
    for o, s in sorted(free + [(offset, size)]):
        if holes and holes[-1][0] + holes[-1][1] == o:
            holes[-1] = (holes[-1][0], holes[-1][1] + s)
        else:
            holes.append((o, s))
    return holes


START_INSIDE = release_checking(lambda o, s, offset, size: o <= offset < o + s)
AN_END_INSIDE = release_checking(lambda o, s, offset, size: o <= offset < o + s or o < offset + size <= o + s)


@pytest.mark.parametrize("wrong, example", [(START_INSIDE, "offset=120, size=16"), (AN_END_INSIDE, "offset=112, size=64")],
                         ids=["start inside", "an end inside"])
def test_a_double_free_test_on_the_block_ends_only_fails_on_a_public_example(wrong, example):
    result = check_release(wrong, quiet=True)
    assert not result and example in result.message and "hint: the block overlaps a hole" in result.message, \
        result.message


def test_hidden_double_frees_start_before_a_hole_and_cover_one():
    """Public answers from a table, otherwise a double-free test on the block's start only: hidden examples that
    start 1–3 units before a hole (and run into it or past it) catch it for many seeds."""
    public = {}

    def recording(*args):
        try:
            public[repr(args)] = my_release(*args)
        except ValueError:
            public[repr(args)] = None
            raise
        return public[repr(args)]

    with hidden_seed(None):
        assert check_release(recording, quiet=True)

    def start_only_with_a_table(*args):
        if repr(args) in public:
            if public[repr(args)] is None:
                raise ValueError("double free")
            return public[repr(args)]
        return START_INSIDE(*args)

    failed = 0
    for seed in range(40):
        with hidden_seed(seed):
            failed += not check_release(start_only_with_a_table, quiet=True)
    assert failed >= 5, failed          # 25 of 100 seeds measured


def merge(free, offset, size, left=True, right=True):
    holes = sorted(free + [(offset, size)])
    i = holes.index((offset, size))
    if right and i + 1 < len(holes) and offset + size == holes[i + 1][0]:
        holes[i:i + 2] = [(offset, size + holes[i + 1][1])]
    if left and i > 0 and sum(holes[i - 1]) == offset:
        holes[i - 1:i + 1] = [(holes[i - 1][0], holes[i - 1][1] + holes[i][1])]
    return holes


def no_double_free_check(free, offset, size):
    try:
        return my_release(free, offset, size)
    except ValueError:
        return sorted(free + [(offset, size)])


def mutating_release(free, offset, size):
    holes = my_release(free, offset, size)
    free.clear()
    free.extend(holes)
    return free


@pytest.mark.parametrize("wrong, hint", [
    (lambda f, o, s: merge(f, o, s, left=False), "not merged with the hole BEFORE it"),
    (lambda f, o, s: merge(f, o, s, right=False), "not merged with the hole AFTER it"),
    (lambda f, o, s: merge(f, o, s, left=False, right=False), "not merged with the hole BEFORE it"),
    (lambda f, o, s: [h for h in my_release(f, o, s) if h[0] > o] + [h for h in my_release(f, o, s) if h[0] <= o],
     "not sorted by offset"),
    (no_double_free_check, "double free"),
    (mutating_release, "don't change the free list you are given"),
    (lambda f, o, s: [(a, float(b)) for a, b in my_release(f, o, s)], "whole bytes"),
], ids=["no left merge", "no right merge", "no merge", "unsorted", "double free", "mutated", "float"])
def test_release_mistakes_get_their_hints(wrong, hint):
    assert_fails(check_release, wrong, hint=hint)


def test_release_with_no_merging_on_a_gap_between_two_holes_gets_the_merge_both_hint():
    def no_merge_only_when_both(f, o, s):
        touches_both = any(a + b == o for a, b in f) and any(a == o + s for a, _ in f)
        return merge(f, o, s, False, False) if touches_both else my_release(f, o, s)
    assert_fails(check_release, no_merge_only_when_both, "holes that touch were not merged")


@pytest.mark.parametrize("answer, words", [
    (lambda f, o, s: None, "returned None — did you forget `return`?"),
    (lambda f, o, s: np.float64(1.5), "whole bytes"),
    (lambda f, o, s: f[7], "your function raised IndexError"),
])
def test_release_none_numpy_and_crash_are_reported_not_raised(answer, words):
    assert_fails(check_release, answer, words)


# ---- arena_lower_bound --------------------------------------------------------------------------

def test_arena_lower_bound_right_answer_passes_and_hands_on_an_int(capsys):
    assert check_arena_lower_bound(my_arena_lower_bound)
    assert "passed (8 examples)" in capsys.readouterr().out
    fn = grading.use_or_fallback(lambda ls: np.int64(my_arena_lower_bound(ls)), check_arena_lower_bound,
                                 arena.peak_live_bytes)
    assert type(fn([(50, 0, 3), (100, 1, 4)])) is int and fn([(50, 0, 3), (100, 1, 4)]) == 150


def inclusive(lifetimes):
    end = max((l for *_, l in lifetimes), default=0)
    return max((sum(s for s, f, l in lifetimes if f <= t <= l) for t in range(end + 1)), default=0)


def sorts_in_place(lifetimes):
    lifetimes.sort()
    return my_arena_lower_bound(lifetimes)


@pytest.mark.parametrize("wrong, hint", [
    (lambda ls: sum(s for s, _, _ in ls), "NO reuse"),
    (inclusive, "half-open"),
    (lambda ls: max((s for s, _, _ in ls), default=0), "largest single tensor"),
    (lambda ls: max((sum(1 for _, f, l in ls if f <= t < l) for t in range(20)), default=0), "counts tensors"),
    (lambda ls: sum(s for s, f, l in ls if f <= 0 < l), "first step"),
], ids=["sum", "inclusive end", "largest", "count", "first step"])
def test_arena_lower_bound_mistakes_get_their_hints(wrong, hint):
    assert_fails(check_arena_lower_bound, wrong, hint=hint)


def sweep_in_given_order(lifetimes):
    # right when the tensors come sorted by start: at each start, add up the ones taken so far still live
    live, peak = [], 0
    for size, first, last in lifetimes:
        live = [(s, l) for s, l in live if l > first] + [(size, last)]
        peak = max(peak, sum(s for s, _ in live))
    return peak


def test_a_sweep_that_does_not_sort_by_time_is_told_to_sort():
    # it passes every example given in time order, and the out-of-order one names sorting (not "sum of all sizes")
    result = assert_fails(check_arena_lower_bound, sweep_in_given_order, "out of time order")
    assert "hint: the tensors come in any order: sort them by start step" in result.message, result.message
    assert "sum of all sizes" not in result.message
    assert check_arena_lower_bound(lambda ls: sweep_in_given_order(sorted(ls, key=lambda lv: lv[1])), quiet=True)


def test_arena_lower_bound_may_not_sort_its_input_in_place():
    # the lab places tensors by their index in that list afterwards: sorting it would mix them up
    assert_fails(check_arena_lower_bound, sorts_in_place, "changed the `lifetimes` list", "sorted(lifetimes)")
    assert check_arena_lower_bound(lambda ls: my_arena_lower_bound(sorted(ls)), quiet=True)


@pytest.mark.parametrize("answer, words", [
    (lambda ls: None, "returned None — did you forget `return`?"),
    (lambda ls: float(my_arena_lower_bound(ls)), "return an int"),
    (lambda ls: max(s for s, _, _ in ls) * 0 + max(ls)[9], "your function raised IndexError"),
])
def test_arena_lower_bound_none_float_and_crash_are_reported(answer, words):
    assert_fails(check_arena_lower_bound, answer, words)


def test_an_empty_lifetimes_list_crashing_max_gets_the_default_0_advice():
    def no_default(lifetimes):
        return max(sum(s for s, f, l in lifetimes if f <= t < l) for _, t, _ in lifetimes)
    result = assert_fails(check_arena_lower_bound, no_default, "arena_lower_bound([])", "raised ValueError")
    assert "max(..., default=0)" in result.message, result.message


def test_arena_lower_bound_accepts_numpy_and_tensor_integers():
    assert check_arena_lower_bound(lambda ls: np.int64(my_arena_lower_bound(ls)), quiet=True)
    assert check_arena_lower_bound(lambda ls: torch.tensor(my_arena_lower_bound(ls)), quiet=True)


# ---- kv_blocks_needed ---------------------------------------------------------------------------

def test_kv_blocks_needed_right_answer_passes(capsys):
    assert check_kv_blocks_needed(my_kv_blocks_needed)
    assert "passed (9 examples)" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, hint", [
    (lambda p, o, b, n: n * math.ceil((p + o) / b), "once PER SEQUENCE"),
    (lambda p, o, b, n: p // b + n * ((p % b + o) // b), "round UP"),
    (lambda p, o, b, n: math.ceil(p / b) + n * math.ceil(o / b), "copy on write"),
    (lambda p, o, b, n: p // b + n * math.ceil(o / b), "partly filled block was left out"),
    (lambda p, o, b, n: p // b + n * math.ceil((p % b + o) / b), "nothing is copied"),
    (lambda p, o, b, n: p + n * o, "tokens, not blocks"),
], ids=["per sequence", "floor", "partial shared", "partial forgotten", "output 0", "tokens"])
def test_kv_blocks_needed_mistakes_get_their_hints(wrong, hint):
    assert_fails(check_kv_blocks_needed, wrong, hint=hint)


def test_the_copy_on_write_hint_says_the_idea_without_the_formula():
    result = check_kv_blocks_needed(lambda p, o, b, n: math.ceil(p / b) + n * math.ceil(o / b), quiet=True)
    hint = result.message.split("hint: ", 1)[1]
    assert "copy on write" in hint and "FULL prompt blocks are shared" in hint, hint
    assert "%" not in hint and "ceil(" not in hint, hint


@pytest.mark.parametrize("answer, words", [
    (lambda p, o, b, n: None, "did you forget `return`?"),
    (lambda p, o, b, n: my_kv_blocks_needed(p, o, b, n) / 1, "this is a whole number, so return an int"),
    (lambda p, o, b, n: [][0], "IndexError"),
])
def test_kv_blocks_needed_none_float_and_crash_are_reported(answer, words):
    assert_fails(check_kv_blocks_needed, answer, words)


# ---- the references can't be called, however they are reached -------------------------------------

def test_arena_lower_bound_may_not_delegate():
    assert_fails(check_arena_lower_bound, lambda ls: arena.peak_live_bytes(ls), "labkit.arena.peak_live_bytes")
    assert_fails(check_arena_lower_bound, arena.peak_live_bytes, "labkit.arena.peak_live_bytes")  # handing it in
    assert_fails(check_arena_lower_bound, lambda ls: max(arena.live_bytes_timeline(ls), default=0), "labkit.arena")


def test_kv_blocks_needed_may_not_delegate():
    assert_fails(check_kv_blocks_needed, lambda p, o, b, n: paged_kv.kv_blocks_needed(p, o, b, n),
                 "labkit.paged_kv.kv_blocks_needed")
    assert_fails(check_kv_blocks_needed, paged_kv.kv_blocks_needed, "labkit.paged_kv.kv_blocks_needed")
    # a private helper of the module trips too (module-wide tripwire)
    result = check_kv_blocks_needed(lambda p, o, b, n: my_kv_blocks_needed(paged_kv._check_count("p", p), o, b, n),
                                    quiet=True)
    assert result.status == grading.FAIL and "labkit.paged_kv" in result.message


def test_first_fit_and_release_may_not_delegate():
    pools = pytest.importorskip("labkit.pools")
    assert_fails(check_first_fit, lambda f, s: pools.first_fit(f, s), "labkit.pools")
    assert_fails(check_first_fit, pools.first_fit, "labkit.pools")
    assert_fails(check_release, lambda f, o, s: pools.release(f, o, s), "labkit.pools")
    assert_fails(check_release, pools.release, "labkit.pools")


def test_the_checks_own_closed_forms_trip_too():
    from labkit.grading import checks_pools
    assert_fails(check_first_fit, checks_pools._first_fit, "labkit.grading.checks_pools")
    assert_fails(check_kv_blocks_needed, lambda *a: checks_pools._kv_blocks_needed(*a),
                 "checks_pools._kv_blocks_needed")


# ---- hidden examples --------------------------------------------------------------------------------

#: the grader's seeds the edge-case tests look through (None: the public examples)
SIX_SEEDS = (None, 1, 2, 3, 4, 5)

CHECKS = [(check_first_fit, my_first_fit), (check_release, my_release),
          (check_arena_lower_bound, my_arena_lower_bound), (check_kv_blocks_needed, my_kv_blocks_needed)]


@pytest.mark.parametrize("check, right", CHECKS, ids=lambda c: getattr(c, "__name__", ""))
def test_hidden_examples_pass_a_right_answer_and_defeat_a_table_of_the_public_ones(check, right):
    assert_hidden_examples_defeat_a_table(check, right, otherwise=lambda *a: None, seeds=range(25), seed=11)


def test_hidden_examples_cover_the_edge_cases():
    ff = examples_of(check_first_fit, my_first_fit, SIX_SEEDS)
    assert any(all(s < size for _, s in free) for free, size in ff)                  # nothing fits
    assert any(any(s == size for _, s in free) for free, size in ff)                 # an exact fit
    rel = examples_of(check_release, my_release, SIX_SEEDS)
    touching = [(f, o, s) for f, o, s in rel if any(a + b == o for a, b in f) and any(a == o + s for a, _ in f)]
    assert touching and any(any(a < o + s and o < a + b for a, b in f) for f, o, s in rel)  # merges both; double free
    hidden = [args for seed in range(20) for args in _hidden_examples(check_release, my_release, seed)]
    double = [(f, o, s) for f, o, s in hidden if any(a < o + s and o < a + b for a, b in f)]
    assert any(any(o < a < o + s <= a + b for a, b in f) for f, o, s in double)    # starts before a hole, ends inside
    assert any(any(o < a and a + b < o + s for a, b in f) for f, o, s in double)    # covers a whole hole
    assert any(any(a <= o < a + b < o + s for a, b in f) for f, o, s in double)     # starts inside, ends after


def _hidden_examples(check, right, seed):
    """The arguments of the hidden examples one grader's seed draws."""
    public, seen = examples_of(check, right, [None]), examples_of(check, right, [seed])
    return seen[len(public):]


# ---- the lab's references give the checks' answers ---------------------------------------------

def test_labkit_arena_and_paged_kv_agree_with_the_checks():
    for (lives,) in examples_of(check_arena_lower_bound, my_arena_lower_bound, SIX_SEEDS):
        assert arena.peak_live_bytes(lives) == my_arena_lower_bound(lives), lives
    for p, o, b, n in examples_of(check_kv_blocks_needed, my_kv_blocks_needed, SIX_SEEDS):
        assert paged_kv.kv_blocks_needed(p, o, b, n, shared_prefix=True) == my_kv_blocks_needed(p, o, b, n)


def test_labkit_pools_agrees_with_the_checks():
    pools = pytest.importorskip("labkit.pools")
    for free, size in examples_of(check_first_fit, my_first_fit, SIX_SEEDS):
        try:
            expected = my_first_fit(list(free), size)
        except MemoryError:
            with pytest.raises(MemoryError):
                pools.first_fit(list(free), size)
            continue
        offset, holes = pools.first_fit(list(free), size)
        assert (offset, [tuple(h) for h in holes]) == expected, (free, size)
    for free, offset, size in examples_of(check_release, my_release, SIX_SEEDS):
        try:
            expected = my_release(list(free), offset, size)
        except ValueError:
            with pytest.raises(ValueError):
                pools.release(list(free), offset, size)
            continue
        assert [tuple(h) for h in pools.release(list(free), offset, size)] == expected, (free, offset, size)


# ---- in the grader's fresh process ------------------------------------------------------------------

FIRST_FIT = ("def first_fit(free_blocks, size):\n"
             "    for i, (offset, hole) in enumerate(free_blocks):\n"
             "        if hole >= size:\n"
             "            rest = [(offset + size, hole - size)] if hole > size else []\n"
             "            return offset, free_blocks[:i] + rest + free_blocks[i + 1:]\n"
             "    raise MemoryError(f'no hole of {size} bytes')\n")
RELEASE = ("def release(free_blocks, offset, size):\n"
           "    if any(o < offset + size and offset < o + s for o, s in free_blocks):\n"
           "        raise ValueError('double free')\n"
           "    holes = []\n"
           "    for o, s in sorted(free_blocks + [(offset, size)]):\n"
           "        if holes and holes[-1][0] + holes[-1][1] == o:\n"
           "            holes[-1] = (holes[-1][0], holes[-1][1] + s)\n"
           "        else:\n"
           "            holes.append((o, s))\n"
           "    return holes\n")
LOWER_BOUND = ("def arena_lower_bound(lifetimes):\n"
               "    steps = {first for _, first, _ in lifetimes}\n"
               "    return max((sum(s for s, f, l in lifetimes if f <= t < l) for t in steps), default=0)\n")
KV_BLOCKS = ("def kv_blocks_needed(prompt_len, output_len, block_size, n_sequences):\n"
             "    if output_len == 0:\n"
             "        return -(-prompt_len // block_size)\n"
             "    full, partial = divmod(prompt_len, block_size)\n"
             "    return full + n_sequences * -(-(partial + output_len) // block_size)\n")


def test_graded_cells_pass_right_answers_in_a_fresh_process():
    assert grade_cell("first_fit", FIRST_FIT) is None
    assert grade_cell("release", RELEASE) is None
    assert grade_cell("arena_lower_bound", LOWER_BOUND) is None
    assert grade_cell("kv_blocks_needed", KV_BLOCKS) is None


def test_graded_cells_fail_wrong_answers_with_the_hint():
    with pytest.raises(AssertionError, match="that is BEST fit"):
        grade_cell("first_fit", FIRST_FIT.replace(
            "    for i, (offset, hole) in enumerate(free_blocks):\n",
            "    for i, (offset, hole) in sorted(enumerate(free_blocks), key=lambda p: p[1][1]):\n"))
    with pytest.raises(AssertionError, match="the free list passed in was changed"):
        grade_cell("first_fit", FIRST_FIT.replace(
            "            return offset,", "            free_blocks.append((0, 0)); return offset,"))
    with pytest.raises(AssertionError, match="double free"):
        grade_cell("release", RELEASE.replace("raise ValueError('double free')", "pass"))
    with pytest.raises(AssertionError, match="half-open"):
        grade_cell("arena_lower_bound", LOWER_BOUND.replace("f <= t < l", "f <= t <= l")
                   .replace("{first for _, first, _ in lifetimes}",
                            "range(max((l for *_, l in lifetimes), default=0) + 1)"))
    with pytest.raises(AssertionError, match="changed the `lifetimes` list"):
        grade_cell("arena_lower_bound", LOWER_BOUND.replace("    steps", "    lifetimes.sort()\n    steps"))
    with pytest.raises(AssertionError, match="once PER SEQUENCE"):
        grade_cell("kv_blocks_needed", "def kv_blocks_needed(p, o, b, n):\n    return n * -(-(p + o) // b)\n")


def test_a_learner_may_raise_labkit_pools_out_of_memory_without_tripping_the_check():
    from labkit import grading
    from labkit.pools import OutOfMemory

    def first_fit(free_blocks, size):
        for i, (offset, hole) in enumerate(free_blocks):
            if hole >= size:
                rest = [(offset + size, hole - size)] if hole > size else []
                return offset, free_blocks[:i] + rest + free_blocks[i + 1:]
        raise OutOfMemory(f"no hole of {size} bytes")

    result = grading.check_first_fit(first_fit, quiet=True)
    assert result.status == grading.PASS, result.message
