"""The self-checks of lab 08 (memory pools): a first-fit allocator's two steps, the arena lower bound, KV blocks.

Same pattern as labkit.grading.checks: examples and their expected answers are computed here first
(by the closed forms below, which tests/test_grading_lab08.py compares with labkit.pools, labkit.arena
and labkit.paged_kv), then `run_check` runs the learner's function with every function of those
modules switched off.

A free list is a list of holes `(offset, size)` in bytes, sorted by offset, no two touching (touching
holes are one hole). `first_fit` and `release` return a new free list, and the lab feeds each answer
back into the next call while it replays a real training step, so their checks demand exactly that:
the pair `(offset, new_free_list)` / the new list, holes sorted, whole-byte ints, and the list passed
in left as it was (the allocator still holds it). The learner process can send back only plain values
(labkit.autograde), so the answer is written out as text there (`_shown_*`) and compared as text here.
"""
from __future__ import annotations

import ast
import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from labkit.grading.checks import INT, _choice, _int_eq, _randint
from labkit.grading.core import (
    NONE_RETURNED,
    Case,
    CheckResult,
    Mistake,
    Returns,
    Shown,
    ShownText,
    checks_safely,
    run_check,
    shown_text,
)

#: every function of the lab's reference modules trips while the learner's function runs
POOLS_MODULES = ("labkit.pools.*", "labkit.arena.*", "labkit.paged_kv.*")

Holes = list[tuple[int, int]]


# =============================================================================================
# The references, by their closed forms


def _first_fit(holes: Holes, size: int) -> tuple[int, Holes]:
    """The first hole (lowest offset) of at least `size` bytes: its start is handed out, the rest stays free."""
    for i, (offset, hole) in enumerate(holes):
        if hole >= size:
            rest = [(offset + size, hole - size)] if hole > size else []
            return offset, holes[:i] + rest + holes[i + 1:]
    raise MemoryError(f"no hole of {size} bytes")


def _release(holes: Holes, offset: int, size: int) -> Holes:
    """`holes` with [offset, offset + size) free again, merged with a hole that ends at offset or starts at its end."""
    end = offset + size
    for o, s in holes:
        if o < end and offset < o + s:
            raise ValueError(f"double free: [{offset}, {end}) overlaps the hole [{o}, {o + s})")
    merged: Holes = []
    for o, s in sorted([*holes, (offset, size)]):
        if merged and merged[-1][0] + merged[-1][1] == o:
            merged[-1] = (merged[-1][0], merged[-1][1] + s)
        else:
            merged.append((o, s))
    return merged


def _live_bytes(lifetimes: Sequence[tuple[int, int, int]], last_inclusive: bool = False) -> list[int]:
    """Bytes live at each step; a tensor (size, first, last) is live during [first, last) (or [first, last])."""
    end = max((last for _, _, last in lifetimes), default=0) + 1
    return [sum(size for size, first, last in lifetimes if first <= t and (t <= last if last_inclusive else t < last))
            for t in range(end)]


def _arena_lower_bound(lifetimes: Sequence[tuple[int, int, int]]) -> int:
    """The peak of live bytes: the most bytes live at one step (no arena can be smaller)."""
    return max(_live_bytes(lifetimes), default=0)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _kv_blocks_needed(prompt_len: int, output_len: int, block_size: int, n_sequences: int) -> int:
    """KV blocks for n continuations of one prompt, prefix shared (labkit.paged_kv.kv_blocks_needed's rule).

    The prompt's full blocks are stored once; each sequence owns ceil((prompt_len mod block_size +
    output_len) / block_size) blocks (its copy of the partly filled prompt block, then its own tokens);
    with nothing generated nobody writes, so nothing is copied: ceil(prompt_len / block_size).
    """
    if output_len == 0:
        return _ceil_div(prompt_len, block_size)
    full, partial = divmod(prompt_len, block_size)
    return full + n_sequences * _ceil_div(partial + output_len, block_size)


# =============================================================================================
# Showing a free-list answer as text (what crosses from the learner's process), and comparing it


def _short_repr(x: Any) -> str:
    try:
        text = repr(x)
    except Exception:
        text = f"<{type(x).__name__}>"
    return text if len(text) <= 160 else text[:157] + "..."


def _shown_int(v: Any) -> str:
    """'256' for an int (numpy's too: it behaves as one); anything else (256.0, tensor(256), True) as its repr."""
    if isinstance(v, int) and not isinstance(v, bool):
        return str(int.__int__(v))
    if isinstance(v, np.integer):
        return str(int(v))
    return _short_repr(v)


def _items(x: Any) -> list | None:
    """The items of a list or tuple — a subclass's too (a namedtuple Hole(offset, size)), read with the base class's
    own methods — else None."""
    if isinstance(x, list):
        return list(list.__iter__(x))
    if isinstance(x, tuple):
        return list(tuple.__iter__(x))
    return None


def _shown_holes(holes: Any) -> str:
    """'[(0, 64), (128, 32)]' for a list (or tuple) of (offset, size) pairs (tuples, lists or namedtuples)."""
    items = _items(holes)
    if items is None:
        return _short_repr(holes)
    shown = []
    for hole in items:
        pair = _items(hole)
        if pair is not None and len(pair) == 2:
            shown.append(f"({_shown_int(pair[0])}, {_shown_int(pair[1])})")
        else:
            shown.append(_short_repr(hole))
    return "[" + ", ".join(shown) + "]"


def _shown_first_fit(got: Any) -> str:
    """'(256, [(0, 64), (304, 720)])' for a well-formed (offset, free list) answer."""
    if got is None:
        return "None"
    if isinstance(got, (int, np.integer)):
        return _shown_int(got)
    pair = _items(got)
    if pair is not None and len(pair) == 2:
        return f"({_shown_int(pair[0])}, {_shown_holes(pair[1])})"
    return _short_repr(got)


def _shown_release(got: Any) -> str:
    return "None" if got is None else _shown_holes(got)


CHANGED = " — but the free list passed in was changed"


def _on_text(matches: Callable[..., bool]) -> Callable[..., bool]:
    """A mistake's matcher applied to the answer's text."""
    return lambda got, *args: matches(shown_text(got), *args)


def _free_list_call(fn: Callable, args: tuple, kwargs: dict, shown: Callable[[Any], str], raises: type) -> str:
    """Call the learner's first_fit/release; its answer as text, 'raises X: ...' for the allowed error, and
    a note when it changed the free list it was given (the lab's allocator still holds that list)."""
    holes = args[0]
    before = copy.deepcopy(holes)
    try:
        text = shown(fn(*args, **kwargs))
    except raises as e:
        text = f"raises {raises.__name__}: {e}"[:200]
    if holes != before:
        text += CHANGED
    return ShownText(text)


def _first_fit_call(fn: Callable, args: tuple, kwargs: dict) -> str:
    return _free_list_call(fn, args, kwargs, _shown_first_fit, MemoryError)


def _release_call(fn: Callable, args: tuple, kwargs: dict) -> str:
    return _free_list_call(fn, args, kwargs, _shown_release, ValueError)


class Raises:
    """The expected answer 'raises MemoryError': any text starting so matches (the error's message is free)."""

    def __init__(self, error: type):
        self.text = f"raises {error.__name__}"

    def __eq__(self, other: object) -> bool:
        text = shown_text(other)
        return text is not None and (text == self.text or text.startswith(self.text + ":"))

    __hash__ = None

    def __repr__(self) -> str:
        return self.text


def _parsed(got: Any) -> Any:
    """The learner's answer read back from its text (None if it is not a plain literal, or a note was added)."""
    got = shown_text(got)
    if got is None or got.endswith(CHANGED):
        return None
    try:
        return ast.literal_eval(got)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _gives(wrong: Callable[..., Any], shown: Callable[[Any], str]) -> Callable[..., bool]:
    """A matcher: the learner's text equals what `wrong(*args)` shows (or raises), and that is not the right answer."""
    def matches(got: Any, *args: Any) -> bool:
        got = shown_text(got)
        try:
            text = shown(wrong(*copy.deepcopy(args)))
        except MemoryError:
            text = "raises MemoryError"
        except ValueError:
            text = "raises ValueError"
        if not isinstance(got, str):
            return False
        if text.startswith("raises "):
            return got == text or got.startswith(text + ":")
        return got == text
    return matches


def _unsorted(expected_holes: Callable[..., Holes]) -> Callable[..., bool]:
    """A matcher: the right holes, in some other order than by offset."""
    def matches(got: Any, *args: Any) -> bool:
        holes = _parsed(shown_text(got))
        if isinstance(holes, tuple) and len(holes) == 2:
            holes = holes[1]
        try:
            right = expected_holes(*copy.deepcopy(args))
        except (MemoryError, ValueError):
            return False
        return isinstance(holes, list) and holes != right and sorted(holes) == right
    return matches


def _common_free_list_mistakes(what: str) -> list[Mistake]:
    """The mistakes first_fit and release share: None, a changed input, non-int numbers."""
    return [
        Mistake(f"your function {NONE_RETURNED}", lambda got, *a: got == "None"),
        Mistake(f"don't change the free list you are given: the allocator still holds it (and the lab replays the "
                f"same list through other allocators). Build the new list — e.g. holes = list(free_blocks), then "
                f"edit `holes` — and return it; {what}", lambda got, *a: isinstance(got, str) and got.endswith(CHANGED)),
        Mistake("offsets and sizes are whole bytes: return Python ints (a float, a tensor or a bool shows up in the "
                "memory map as nonsense) — e.g. int(...) around them",
                lambda got, *a: _not_ints(got)),
    ]


def _not_ints(got: Any) -> bool:
    """True when the answer's text holds a float, a bool, a tensor or a numpy float where ints belong."""
    if not isinstance(got, str) or got.startswith("raises"):
        return False
    parsed = _parsed(got)
    if parsed is None:
        return any(marker in got for marker in ("tensor(", "np.float", "array("))

    def odd(x: Any) -> bool:
        if isinstance(x, (list, tuple)):
            return any(odd(v) for v in x)
        return isinstance(x, (bool, float))
    return odd(parsed)


# =============================================================================================
# Exercise 1: a first-fit allocator's alloc (first_fit) and free (release)


def _random_free_list(g: torch.Generator, n_holes: int, unit: int = 8) -> Holes:
    """Sorted holes with a used gap (≥ 1 unit) between each two: a free list as an allocator keeps it."""
    holes, offset = [], unit * _randint(g, 0, 4)
    for _ in range(n_holes):
        size = unit * _randint(g, 1, 24)
        holes.append((offset, size))
        offset += size + unit * _randint(g, 1, 12)
    return holes


@checks_safely("first_fit")
def check_first_fit(fn: Callable[[Holes, int], tuple[int, Holes]], quiet: bool = False) -> CheckResult:
    """Exercise: (offset, new_free_blocks) — the start of the FIRST hole of at least `size` bytes, and the free
    list without those bytes (the rest of that hole stays free; a hole used up disappears). MemoryError if none fits."""
    holes = [(0, 64), (128, 32), (256, 768)]
    examples = [
        ("the first hole, 64 bytes at offset 0, fits 48 bytes", holes, 48),
        ("96 bytes: only the third hole (768 bytes at offset 256) is big enough", holes, 96),
        ("32 bytes: the FIRST hole that fits is the one at offset 0, although the 32-byte hole at 128 fits exactly",
         holes, 32),
        ("64 bytes: the hole at offset 0 is exactly 64 bytes, so it is used up and leaves the free list", holes, 64),
        ("the whole arena free (one hole of 1,024 bytes), 1 byte", [(0, 1024)], 1),
        ("the last hole fits exactly (768 bytes at offset 256)", holes, 768),
        ("800 bytes: no hole is big enough (the largest is 768), so it raises MemoryError", holes, 800),
        ("an empty free list (the arena is full), 8 bytes", [], 8),
    ]

    def case(what: str, free: Holes, size: int) -> Case:
        try:
            expected: Any = Shown(_shown_first_fit(_first_fit(free, size)))
        except MemoryError:
            expected = Raises(MemoryError)
        return Case(f"first_fit({_shown_holes(free)}, {size}) — {what}", (list(free), size), {}, expected)

    cases = [case(*e) for e in examples]

    def best_fit(free: Holes, size: int) -> tuple[int, Holes]:
        fits = [i for i, (_, s) in enumerate(free) if s >= size]
        if not fits:
            raise MemoryError
        i = min(fits, key=lambda j: free[j][1])
        return _first_fit(free[i:i + 1], size)[0], free[:i] + _first_fit(free[i:i + 1], size)[1] + free[i + 1:]

    def strictly_larger(free: Holes, size: int) -> tuple[int, Holes]:
        i = next((i for i, (_, s) in enumerate(free) if s > size), None)
        if i is None:
            raise MemoryError
        return free[i][0], free[:i] + [(free[i][0] + size, free[i][1] - size)] + free[i + 1:]

    def first_index(free: Holes, size: int) -> int:
        i = next((i for i, (_, s) in enumerate(free) if s >= size), None)
        if i is None:
            raise MemoryError
        return i

    def hole_dropped(free: Holes, size: int) -> tuple[int, Holes]:
        i = first_index(free, size)
        return free[i][0], free[:i] + free[i + 1:]

    def hole_kept(free: Holes, size: int) -> tuple[int, Holes]:
        return free[first_index(free, size)][0], list(free)

    def empty_hole_kept(free: Holes, size: int) -> tuple[int, Holes]:
        i = first_index(free, size)
        o, s = free[i]
        return o, free[:i] + [(o + size, s - size)] + free[i + 1:]

    def from_the_end(free: Holes, size: int) -> tuple[int, Holes]:
        i = first_index(free, size)
        o, s = free[i]
        return o + s - size, free[:i] + ([(o, s - size)] if s > size else []) + free[i + 1:]

    def size_unchanged(free: Holes, size: int) -> tuple[int, Holes]:
        i = first_index(free, size)
        o, s = free[i]
        return o, free[:i] + [(o + size, s)] + free[i + 1:]

    def no_memory_error(got: Any, free: Holes, size: int) -> bool:
        return all(s < size for _, s in free) and isinstance(got, str) and not got.startswith("raises")

    shown = _shown_first_fit
    mistakes = [
        *_common_free_list_mistakes("first_fit returns (offset, new_free_blocks)"),
        Mistake("no hole is big enough here: raise MemoryError (e.g. raise MemoryError(f'no hole of {size} bytes')) "
                "— the allocator turns it into its out-of-memory error; don't return a made-up offset", no_memory_error),
        Mistake("that is BEST fit (the smallest hole that fits); first fit takes the FIRST hole, in offset order, "
                "that is big enough", _gives(best_fit, shown)),
        Mistake("a hole of exactly `size` bytes fits too: compare with >=, not >", _gives(strictly_larger, shown)),
        Mistake("the hole you used vanished from the free list: split it — the bytes after the block, "
                "(offset + size, hole_size - size), stay free", _gives(hole_dropped, shown)),
        Mistake("the hole you used is still in the free list unchanged: the block's bytes are no longer free — "
                "the hole becomes (offset + size, hole_size - size)", _gives(hole_kept, shown)),
        Mistake("a hole of 0 bytes was left in the free list: when the block uses the whole hole, remove the hole",
                _gives(empty_hole_kept, shown)),
        Mistake("the block goes at the START of the hole (the hole's offset) and the rest of the hole after it",
                _gives(from_the_end, shown)),
        Mistake("the rest of the hole is hole_size - size bytes: you moved its offset but kept its old size",
                _gives(size_unchanged, shown)),
        Mistake("the holes are right but not sorted by offset: put the rest of the hole where the hole was "
                "(free lists stay sorted, so the next first fit finds the lowest hole first)",
                _unsorted(lambda free, size: _first_fit(free, size)[1])),
        Mistake("return a pair (offset, new_free_blocks): the offset of the block, then the new free list",
                lambda got, *a: isinstance(_parsed(got), (int, list)) or (
                    isinstance(_parsed(got), tuple) and len(_parsed(got)) == 2 and isinstance(_parsed(got)[0], list))),
    ]

    def hidden(g: torch.Generator) -> Case:
        free = _random_free_list(g, _randint(g, 1, 6))
        kind = _randint(g, 0, 9)
        if kind == 0:        # nothing fits
            size = max(s for _, s in free) + 8 * _randint(g, 1, 4)
        elif kind <= 3:      # exactly one hole's size
            size = _choice(g, [s for _, s in free])
        else:
            size = _randint(g, 1, max(s for _, s in free))
        return case("a random free list", free, size)

    mistakes = [Mistake(m.hint, _on_text(m.matches)) for m in mistakes]
    return run_check("first_fit", fn, cases, returns=Returns("any"), mistakes=mistakes, quiet=quiet, hidden=hidden,
                     call=_first_fit_call, reference="labkit.pools.first_fit",
                     forbid=("labkit.pools.first_fit", "labkit.pools.release", *POOLS_MODULES))


@checks_safely("release")
def check_release(fn: Callable[[Holes, int, int], Holes], quiet: bool = False) -> CheckResult:
    """Exercise: the free list with the block [offset, offset + size) free again: inserted in offset order and
    merged with the hole that ends where it starts and the hole that starts where it ends. ValueError when
    the block overlaps a hole (a double free)."""
    holes = [(0, 64), (128, 32), (256, 768)]
    examples = [
        ("the block [96, 112) touches no hole: a new hole between the first two", holes, 96, 16),
        ("the block [64, 96) starts where the hole [0, 64) ends: merge with the LEFT neighbour", holes, 64, 32),
        ("the block [112, 128) ends where the hole [128, 160) starts: merge with the RIGHT neighbour", holes, 112, 16),
        ("the block [160, 256) fills the gap between [128, 160) and [256, 1024): merge with BOTH", holes, 160, 96),
        ("the block [64, 128) fills the gap between the first two holes: all three become one", holes, 64, 64),
        ("an empty free list (the arena was full): the block is the only hole", [], 512, 64),
        ("a block before every hole, touching the first", [(64, 64), (256, 64)], 0, 64),
        ("a block after every hole, touching the last", [(0, 64), (256, 64)], 320, 16),
        ("the block [136, 152) lies inside the hole [128, 160), which is already free: a double free, so it raises "
         "ValueError", holes, 136, 16),
        ("the block [120, 136) starts before the hole [128, 160) but runs into it: its last 8 bytes are already "
         "free, so this is a double free too (compare both ends: hole_offset < offset + size and offset < hole_end)",
         holes, 120, 16),
        ("the block [112, 176) covers the whole hole [128, 160): a double free (neither of its ends is inside "
         "the hole)", holes, 112, 64),
    ]

    def case(what: str, free: Holes, offset: int, size: int) -> Case:
        try:
            expected: Any = Shown(_shown_release(_release(free, offset, size)))
        except ValueError:
            expected = Raises(ValueError)
        return Case(f"release({_shown_holes(free)}, offset={offset}, size={size}) — {what}", (list(free), offset, size),
                    {}, expected)

    cases = [case(*e) for e in examples]

    def merged(free: Holes, offset: int, size: int, left: bool, right: bool) -> Holes:
        out = sorted([*free, (offset, size)])
        i = out.index((offset, size))
        if right and i + 1 < len(out) and offset + size == out[i + 1][0]:
            out[i:i + 2] = [(offset, size + out[i + 1][1])]
        if left and i > 0 and out[i - 1][0] + out[i - 1][1] == offset:
            out[i - 1:i + 1] = [(out[i - 1][0], out[i - 1][1] + out[i][1])]
        return out

    def touches(free: Holes, offset: int, size: int) -> tuple[bool, bool]:
        return (any(o + s == offset for o, s in free), any(o == offset + size for o, _ in free))

    shown = _shown_release
    mistakes = [
        *_common_free_list_mistakes("release returns the new free list"),
        Mistake("the block overlaps a hole that is already free: freeing it again is a double free — raise "
                "ValueError (e.g. raise ValueError('double free')); merging it would hand the same bytes out twice",
                lambda got, free, offset, size: any(o < offset + size and offset < o + s for o, s in free)
                and isinstance(got, str) and not got.startswith("raises")),
        Mistake("holes that touch were not merged: a hole ending at `offset` and the block are one hole, and so are "
                "the block and a hole starting at offset + size (unmerged holes split the arena into pieces too "
                "small for big requests)",
                lambda got, *a: all(touches(*a)) and _gives(lambda *b: merged(*b, False, False), shown)(got, *a)),
        Mistake("the block was not merged with the hole BEFORE it: a hole that ends exactly at `offset` "
                "(hole_offset + hole_size == offset) joins the block", _gives(lambda *b: merged(*b, False, True), shown)),
        Mistake("the block was not merged with the hole AFTER it: a hole that starts exactly at offset + size "
                "joins the block", _gives(lambda *b: merged(*b, True, False), shown)),
        Mistake("the holes are right but not sorted by offset: insert the block where it belongs (or sort the list)",
                _unsorted(_release)),
    ]

    def hidden(g: torch.Generator) -> Case:
        unit = 8
        free = _random_free_list(g, _randint(g, 1, 6), unit)
        kind = _randint(g, 0, 9)
        if kind <= 1:                      # a double free: inside a hole, running into one, or covering one
            o, s = _choice(g, free)
            variant = _randint(g, 0, 3)
            inside = o + unit * _randint(g, 0, s // unit - 1)
            before = max(0, o - unit * _randint(g, 1, 3))  # 1–3 units before the hole (its start, if at offset 0)
            if variant == 0:                               # starts inside, ends inside or at the hole's end
                start, end = inside, inside + unit * _randint(g, 1, max(1, (o + s - inside) // unit))
            elif variant == 1:                             # starts before, ends inside the hole
                start, end = before, o + unit * _randint(g, 1, s // unit)
            elif variant == 2:                             # starts inside, ends after the hole
                start, end = inside, o + s + unit * _randint(g, 1, 3)
            else:                                          # starts before and ends after: covers the whole hole
                start, end = before, o + s + unit * _randint(g, 1, 3)
            return case("a random free list", free, start, end - start)
        gaps = [(o + s, (free[i + 1][0] if i + 1 < len(free) else o + s + unit * _randint(g, 1, 16)))
                for i, (o, s) in enumerate(free)]
        if free[0][0] > 0:
            gaps.append((0, free[0][0]))
        start, end = _choice(g, gaps)                      # a used stretch between holes: free a block of it
        n = (end - start) // unit
        a = _randint(g, 0, n - 1)
        b = _randint(g, a + 1, n)
        if kind <= 4:                                      # often the whole stretch or one end of it: merges
            a, b = _choice(g, [(0, n), (0, b), (a, n)])
        return case("a random free list", free, start + unit * a, unit * (b - a))

    mistakes = [Mistake(m.hint, _on_text(m.matches)) for m in mistakes]
    return run_check("release", fn, cases, returns=Returns("any"), mistakes=mistakes, quiet=quiet, hidden=hidden,
                     call=_release_call, reference="labkit.pools.release",
                     forbid=("labkit.pools.release", "labkit.pools.first_fit", *POOLS_MODULES))


# =============================================================================================
# Exercise 2: the arena lower bound (the peak of live bytes)


class InputChanged(Exception):
    """The learner's function changed (e.g. sorted) the list it was given."""


def _lifetimes_call(fn: Callable, args: tuple, kwargs: dict) -> Any:
    """Call the learner's arena_lower_bound; raise InputChanged if it changed the list (the lab reuses it)."""
    lifetimes = args[0]
    before = copy.deepcopy(lifetimes)
    got = fn(*args, **kwargs)
    if lifetimes != before:
        raise InputChanged("it changed the `lifetimes` list it was given (sorted it in place?). The lab uses that "
                           "list afterwards, in the order of the trace, to place tensors: work on a copy, e.g. "
                           "sorted(lifetimes), and leave the argument as it was")
    return got


@checks_safely("arena_lower_bound")
def check_arena_lower_bound(fn: Callable[[list[tuple[int, int, int]]], int], quiet: bool = False) -> CheckResult:
    """Exercise: the most bytes (int) live at one step, for tensors (size, first, last) live during steps [first, last)."""
    examples = [
        ("two tensors that overlap in time: 50 bytes [0, 3) and 100 bytes [1, 4)", [(50, 0, 3), (100, 1, 4)]),
        ("100 bytes [0, 2) ends at step 2, where 80 bytes [2, 5) starts — they are never live together; 30 bytes "
         "[4, 6) overlaps the 80", [(100, 0, 2), (80, 2, 5), (30, 4, 6)]),
        ("a big tensor alone beats two small ones together", [(500, 0, 1), (200, 1, 3), (200, 2, 4)]),
        ("activations stacking up in a forward pass and freed in the backward pass",
         [(64, 0, 10), (128, 1, 9), (128, 2, 8), (256, 3, 7), (32, 4, 6), (16, 5, 6)]),
        ("one tensor", [(4096, 3, 4)]),
        ("no tensors at all: the arena needs 0 bytes (max() of an empty list raises ValueError: use "
         "max(..., default=0))", []),
        ("the peak is not at the first step: a gradient born at step 6 meets the weights and an activation",
         [(1000, 0, 10), (300, 2, 7), (700, 6, 9), (50, 8, 10)]),
        ("given out of time order (as a trace sorted by size would be)",
         [(10, 5, 8), (30, 0, 6), (20, 3, 4), (40, 6, 9)]),
    ]
    cases = [Case(f"arena_lower_bound({lives}) — {what}", (list(lives),), {}, _arena_lower_bound(lives))
             for what, lives in examples]

    def different(wrong: Callable[[list], int]) -> Callable[..., bool]:
        return lambda got, lives: wrong(lives) != _arena_lower_bound(lives) and _int_eq(got, wrong(lives))

    def in_given_order(lives: list) -> int:
        """The peak a sweep finds that takes the tensors in the order given: at each one's start, the bytes of the
        ones taken so far that have not ended yet (right only if they come sorted by start)."""
        live, peak = [], 0
        for size, first, last in lives:
            live = [(s, l) for s, l in live if l > first] + [(size, last)]
            peak = max(peak, sum(s for s, _ in live))
        return peak

    def out_of_order(got: Any, lives: list) -> bool:
        starts = [first for _, first, _ in lives]
        return starts != sorted(starts) and different(in_given_order)(got, lives)

    mistakes = [
        Mistake("the tensors come in any order: sort them by start step (or sort the start and end events by "
                "step) first — a sweep over them in the order given misses which tensors are live together",
                out_of_order),
        Mistake("that is the sum of all sizes, the arena with NO reuse: tensors whose lifetimes don't overlap can "
                "share bytes, so count only the ones live at the same step", different(lambda ls: sum(s for s, _, _ in ls))),
        Mistake("`last` is the first step the tensor is GONE ([first, last) is half-open, like range): a tensor that "
                "ends at step t and one that starts at t are never live together",
                different(lambda ls: max(_live_bytes(ls, last_inclusive=True), default=0))),
        Mistake("that is the largest single tensor: tensors live at the same step all need bytes at once — add up "
                "the sizes of every tensor live at each step, then take the largest sum",
                different(lambda ls: max((s for s, _, _ in ls), default=0))),
        Mistake("that counts tensors, not bytes: add up their sizes",
                different(lambda ls: max([sum(1 for _, f, l in ls if f <= t < l) for t in range(max((l for *_, l in ls),
                                                                                                    default=0))],
                                         default=0))),
        Mistake("that is the bytes live at the first step (or the last) only: the peak may come at any step — "
                "check every step (or every step where a tensor starts)",
                lambda got, ls: any(different(lambda ls2, t=t: _live_bytes(ls2)[t])(got, ls)
                                    for t in (0, max((l for *_, l in ls), default=1) - 1) if ls)),
        Mistake("an arena of no tensors needs 0 bytes: max() of an empty list raises — use max(..., default=0)",
                lambda got, ls: not ls),
    ]

    def hidden(g: torch.Generator) -> Case:
        n, steps = _randint(g, 1, 12), _randint(g, 2, 16)
        lives = []
        for _ in range(n):
            first = _randint(g, 0, steps - 1)
            lives.append((_choice(g, [1, 8, 64, 512, 4096]) * _randint(g, 1, 40), first, _randint(g, first + 1, steps)))
        return Case(f"arena_lower_bound({lives}) — random lifetimes", (lives,), {}, _arena_lower_bound(lives))

    return run_check("arena_lower_bound", fn, cases, returns=INT, mistakes=mistakes, quiet=quiet, hidden=hidden,
                     call=_lifetimes_call, reference="labkit.arena.peak_live_bytes",
                     forbid=("labkit.arena.peak_live_bytes", "labkit.arena.live_bytes_timeline", *POOLS_MODULES))


# =============================================================================================
# Exercise 3: KV blocks for n continuations of one prompt, its prefix shared


@checks_safely("kv_blocks_needed")
def check_kv_blocks_needed(fn: Callable[[int, int, int, int], int], quiet: bool = False) -> CheckResult:
    """Exercise: KV blocks (int) n_sequences continuations of one prompt hold, the prompt's blocks shared
    (labkit.paged_kv.kv_blocks_needed(..., shared_prefix=True))."""
    examples = [
        ("a 40-token prompt in 16-token blocks (2 full blocks + 8 tokens), 4 samples of 20 tokens each", (40, 20, 16, 4)),
        ("the same prompt, 4 samples of 30 tokens: each writes 8 copied prompt tokens + 30 of its own",
         (40, 30, 16, 4)),
        ("one sequence: no sharing possible, ceil((40 + 20) / 16) blocks", (40, 20, 16, 1)),
        ("a 32-token prompt fills 2 blocks exactly; 3 samples of 1 token each open a block each", (32, 1, 16, 3)),
        ("no prompt at all: 2 sequences of 17 tokens", (0, 17, 16, 2)),
        ("a 33-token prompt and nothing generated yet: nobody writes, so the partly filled block stays shared",
         (33, 0, 16, 3)),
        ("a 100-token prompt, block size 8 (12 full blocks + 4 tokens), 5 samples of 4 tokens: each copy of the "
         "partial block has room for them", (100, 4, 8, 5)),
        ("a 1,000-token prompt, 16-token blocks, 8 samples of 200 tokens", (1000, 200, 16, 8)),
        ("block size 1: every token its own block", (10, 5, 1, 3)),
    ]
    cases = [Case(f"kv_blocks_needed(prompt_len={p}, output_len={o}, block_size={b}, n_sequences={n}) — {what}",
                  (p, o, b, n), {}, _kv_blocks_needed(p, o, b, n)) for what, (p, o, b, n) in examples]

    def different(wrong: Callable[[int, int, int, int], int]) -> Callable[..., bool]:
        return lambda got, *a: wrong(*a) != _kv_blocks_needed(*a) and _int_eq(got, wrong(*a))

    mistakes = [
        Mistake("that counts the prompt once PER SEQUENCE (no sharing): with a shared prefix the prompt's full "
                "blocks are stored once and every sequence's block table points at them",
                different(lambda p, o, b, n: n * _ceil_div(p + o, b))),
        Mistake("the prompt's last, partly filled block was left out: its prompt_len % block_size tokens are "
                "copied into each sequence's own first block",
                lambda got, p, o, b, n: o > 0 and different(lambda p, o, b, n: p // b + n * _ceil_div(o, b))(got, p, o, b, n)),
        Mistake("a partly filled block is still a whole block: round UP (ceil), e.g. -(-tokens // block_size)",
                different(lambda p, o, b, n: p // b + n * ((p % b + o) // b))),
        Mistake("a partly filled block is still a whole block: round UP (ceil), e.g. -(-tokens // block_size)",
                different(lambda p, o, b, n: (p + n * o) // b)),
        Mistake("the prompt's partly filled last block can't stay shared once sequences write into it: each "
                "sequence copies it (copy on write) and its own tokens fill that copy first, so the copied prompt "
                "tokens and the new ones share that sequence's blocks; only the FULL prompt blocks are shared",
                different(lambda p, o, b, n: _ceil_div(p, b) + n * _ceil_div(o, b))),
        Mistake("with nothing generated (output_len 0) no sequence writes, so nothing is copied: the prompt's "
                "ceil(prompt_len / block_size) blocks, shared by all",
                lambda got, p, o, b, n: o == 0 and not _int_eq(got, _kv_blocks_needed(p, o, b, n))),
        Mistake("that is tokens, not blocks: divide by block_size (rounding up)",
                different(lambda p, o, b, n: p + n * o)),
    ]

    def hidden(g: torch.Generator) -> Case:
        b = _choice(g, [1, 4, 8, 16, 32])
        p, o, n = _randint(g, 0, 300), _randint(g, 0 if _randint(g, 0, 5) == 0 else 1, 200), _randint(g, 1, 8)
        return Case(f"kv_blocks_needed(prompt_len={p}, output_len={o}, block_size={b}, n_sequences={n})",
                    (p, o, b, n), {}, _kv_blocks_needed(p, o, b, n))

    return run_check("kv_blocks_needed", fn, cases, returns=INT, mistakes=mistakes, quiet=quiet, hidden=hidden,
                     reference="labkit.paged_kv.kv_blocks_needed",
                     forbid=("labkit.paged_kv.kv_blocks_needed", *POOLS_MODULES))


__all__ = [
    "InputChanged",
    "Raises",
    "check_arena_lower_bound",
    "check_first_fit",
    "check_kv_blocks_needed",
    "check_release",
]
