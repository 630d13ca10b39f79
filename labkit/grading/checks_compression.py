"""The self-checks of lab 07 (compression and storage), one per exercise; the pattern of labkit.grading.checks.

Each check builds its examples and their expected answers first (from a closed form, or an independent
construction written here), then runs the learner's function through `run_check` with labkit's lab-07
modules switched off (`LAB07_REFERENCES`: every function of labkit.compress, labkit.deep_compression and
labkit.stream is a tripwire while the learner's function runs). This module is itself one of
core.ALWAYS_FORBIDDEN_MODULES: its helpers trip too.

Huffman code lengths are not unique when frequencies tie, so `check_huffman_code_lengths` accepts ANY optimal
prefix code: right symbols, whole positive lengths, Kraft sum <= 1 and the smallest possible total of
frequency × length bits. An answer that is such a code is shown to the comparison as the check's own optimal
code; any other answer is compared as given, with a hint for the mistake it matches. Answers are written out as
text where the learner's function ran (what the grader's learner process can send back) and shown unquoted, as
the dict they are: `expected {0: 1, 1: 2, 2: 2} (10 bits in all), got {0: 2, 1: 2, 2: 2} (12 bits in all)`.
"""
from __future__ import annotations

import ast
import heapq
import math
import numbers
import re
from fractions import Fraction
from typing import Any, Callable

import torch

from labkit.grading.checks import INT, _choice, _int_eq, _per_case_ratio, _randint
from labkit.grading.core import (
    NONE_RETURNED,
    Case,
    CheckResult,
    Mistake,
    Returns,
    Shown,
    ShownText,
    as_number,
    checks_safely,
    kind_of,
    run_check,
    shown_text,
)

#: What a learner must not call in any lab-07 exercise: labkit's coders, the Deep Compression pipeline and the
#: streaming module (every function defined in them trips while the learner's function runs).
LAB07_REFERENCES = ("labkit.compress.*", "labkit.deep_compression.*", "labkit.stream.*")


# =============================================================================================
# lab 07, exercise 1: Huffman code lengths


#: the longest code length the check computes with exactly (far beyond any optimal code of its examples)
MAX_LENGTH = 1_000


def _merged_lengths(frequencies: dict[int, int], rarest_first: bool = True) -> dict[int, int]:
    """Code lengths (bits) for the symbols of frequency > 0 from merging two subtrees at a time, written here.

    Written independently of labkit.compress: the heap holds (weight, tie-break, the symbols below), each merge
    puts every symbol below the two subtrees it pops one bit deeper — the two rarest (Huffman's merge), or with
    rarest_first=False the two MOST frequent (a max-heap: the mistake). One symbol still gets 1 bit; {} -> {}.
    """
    sign = 1 if rarest_first else -1
    used = sorted(s for s, f in frequencies.items() if f > 0)
    if len(used) <= 1:
        return {s: 1 for s in used}
    depth = dict.fromkeys(used, 0)
    heap = [(sign * frequencies[s], s, (s,)) for s in used]
    heapq.heapify(heap)
    while len(heap) > 1:
        w1, t1, below1 = heapq.heappop(heap)
        w2, t2, below2 = heapq.heappop(heap)
        for s in below1 + below2:
            depth[s] += 1
        heapq.heappush(heap, (w1 + w2, min(t1, t2), below1 + below2))
    return depth


def _optimal_lengths(frequencies: dict[int, int]) -> dict[int, int]:
    """One optimal prefix code's lengths (bits) for the symbols of frequency > 0: Huffman's merge."""
    return _merged_lengths(frequencies, rarest_first=True)


def _largest_first_lengths(frequencies: dict[int, int]) -> dict[int, int]:
    """The mistake of merging the two MOST frequent subtrees each step (a max-heap instead of a min-heap)."""
    return _merged_lengths(frequencies, rarest_first=False)


def _total_bits(lengths: dict[int, int], frequencies: dict[int, int]) -> int:
    """Bits of the whole message coded with these lengths: sum of frequency × length."""
    return sum(frequencies.get(s, 0) * n for s, n in lengths.items())


def _kraft(lengths: dict[int, int]) -> Fraction:
    """Kraft's sum, sum of 2^-length, exactly: a prefix code with these lengths exists iff it is <= 1.

    (Lengths beyond MAX_LENGTH count as MAX_LENGTH: a few such terms cannot move the sum across 1, and 2**n of a
    learner's absurd length would take forever.) A length <= 0 counts as 1 each (0 bits: no prefix code)."""
    return sum((Fraction(1, 2 ** min(n, MAX_LENGTH)) if n > 0 else Fraction(1) for n in lengths.values()),
               Fraction(0))


def _is_optimal_code(lengths: dict[int, int], frequencies: dict[int, int]) -> bool:
    """True when `lengths` (int symbols -> int bits) is an optimal prefix code for `frequencies`."""
    used = {s for s, f in frequencies.items() if f > 0}
    if set(lengths) != used or any(n < 1 for n in lengths.values()):
        return False
    return _kraft(lengths) <= 1 and _total_bits(lengths, frequencies) == _total_bits(
        _optimal_lengths(frequencies), frequencies)


def _shown_lengths(lengths: dict[int, int], frequencies: dict[int, int]) -> str:
    """'{0: 1, 1: 2, 2: 2} (10 bits in all)': the lengths by symbol, the total when every used symbol has one, and
    the symbols of frequency > 0 that have no codeword."""
    text = "{" + ", ".join(f"{s}: {n}" for s, n in sorted(lengths.items())) + "}"
    used = sorted(s for s, f in frequencies.items() if f > 0)
    missing = [s for s in used if lengths.get(s, 0) == 0]
    if missing:
        return text + f" — no codeword for symbol{'s' if len(missing) > 1 else ''} " + ", ".join(map(str, missing))
    if used:
        text += f" ({_total_bits(lengths, frequencies):,} bits in all)"
    return text


class NotLengths(Exception):
    """The learner's answer is not a dict of code lengths: what it is instead, said as a message."""


def _as_lengths(got: Any, frequencies: dict[int, int]) -> dict[int, int]:
    """The learner's answer as {int symbol: int length}, or NotLengths saying what the lab needs instead."""
    if not isinstance(got, dict):
        raise NotLengths(f"{kind_of(got)} — the lab needs a dict {{symbol: code length in bits}} (it builds the "
                         "canonical codes from it)")
    out = {}
    for s, n in list(dict.items(got)):
        if isinstance(s, bool) or not isinstance(s, numbers.Integral):
            raise NotLengths(f"a dict with the key {s!r} — its keys must be the symbols of `frequencies` (ints)")
        if s not in frequencies:
            raise NotLengths(f"a dict with a length for symbol {s}, which is not in `frequencies` — only symbols "
                             "with a frequency > 0 get a codeword")
        if isinstance(n, str) or (isinstance(n, (tuple, list)) and len(n) == 2):
            raise NotLengths(f"a dict mapping symbol {s} to {n!r} — that looks like the codeword itself; return "
                             "each codeword's LENGTH in bits (an int), e.g. {0: 1, 1: 2, 2: 2}")
        value, problem = as_number(n, integer=True)     # ints, numpy ints, 0-dim int tensors
        if problem:
            raise NotLengths(f"a dict mapping symbol {s} to {kind_of(n)} — a code length is a whole number of "
                             "bits (an int)")
        if abs(value) > 2 ** 31:
            raise NotLengths(f"a dict giving symbol {s} a length of {value} bits — no code for "
                             f"{len(frequencies)} symbols needs more than {max(len(frequencies) - 1, 1)}")
        out[int(s)] = int(value)
    return out


def _lengths_call(fn: Callable, args: tuple, kwargs: dict) -> Any:
    """Call the learner's huffman_code_lengths; its answer written out as text (ShownText) for the comparison.

    Any optimal prefix code is right (ties make several), so an optimal answer is written as the check's own
    optimal code; anything else as given, or as what it is instead of a dict of lengths. A dict edited in place
    is refused: the lab passes the weights' own counts, which later cells use.
    """
    frequencies = args[0] if args else kwargs["frequencies"]
    before = dict(frequencies)
    try:
        got = fn(*args, **kwargs)
    except TypeError as e:
        kinds = re.search(r"not supported between instances of '([^']+)' and '([^']+)'", str(e))
        if kinds is None or kinds[1] != kinds[2]:    # a tie compares two trees of one kind; anything else is a crash
            raise
        # the commonest heapq bug (tuples of (weight, tree) that tie): an answer the hints can speak to, not a crash
        return ShownText(f"no answer: your function raised TypeError: {e}")
    if got is None:
        text = "None"
    else:
        try:
            lengths = _as_lengths(got, before)
        except NotLengths as e:
            text = str(e)
        else:
            if _is_optimal_code(lengths, before):
                lengths = _optimal_lengths(before)
            text = _shown_lengths(lengths, before)
    if dict(frequencies) != before:
        text += (" — but huffman_code_lengths changed its `frequencies` dict in place (the lab passes the weights' "
                 "own counts, which later cells use): read it, don't pop or edit it — work on a copy, e.g. "
                 "dict(frequencies)")
    return ShownText(text)


def _lengths_case(description: str, frequencies: dict[int, int]) -> Case:
    best = _optimal_lengths(frequencies)
    used = len(best)
    about = (f"{used} symbol{'s' if used != 1 else ''} with frequency > 0, an optimal code takes "
             f"{_total_bits(best, frequencies):,} bits in all (Σ frequency × length)" if used else "no symbol to code")
    return Case(f"huffman_code_lengths({frequencies}): {description} — {about}", (dict(frequencies),), {},
                Shown(_shown_lengths(best, frequencies)))


def _lengths_of(got: Any) -> dict[int, int] | None:
    """The learner's answer back as {symbol: length} from its text (symbols of length 0 left out), else None."""
    text = shown_text(got)
    if text is None or not text.startswith("{"):
        return None
    try:
        lengths = ast.literal_eval(text[:text.index("}") + 1])
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(lengths, dict) or not all(type(n) is int for n in lengths.values()):
        return None
    return {s: n for s, n in lengths.items() if n != 0}


@checks_safely("huffman_code_lengths")
def check_huffman_code_lengths(fn: Callable[[dict[int, int]], dict[int, int]], quiet: bool = False) -> CheckResult:
    """Exercise: {symbol: length in bits} of an optimal prefix (Huffman) code for the symbols of frequency > 0.

    Ties make several optimal codes: any is accepted (right symbols, lengths >= 1, Kraft sum <= 1, the least
    total bits). One symbol gets length 1 (a codeword needs a bit); {} gives {}.
    """
    examples = [
        ("a, b, c, d as 0..3 with counts 5, 2, 1, 1", {0: 5, 1: 2, 2: 1, 3: 1}),
        ("four equal frequencies: every symbol gets 2 bits", {0: 1, 1: 1, 2: 1, 3: 1}),
        ("ties: two different optimal codes exist (all 2 bits, or 1, 2, 3, 3 bits): either passes",
         {0: 2, 1: 1, 2: 1, 3: 2}),
        ("symbols 1 and 3 never occur: they get no codeword", {0: 10, 1: 0, 2: 3, 3: 0, 4: 3}),
        ("one symbol only: it still needs a 1-bit codeword", {7: 42}),
        ("two symbols, very unequal: one bit each whatever the counts", {0: 1, 1: 1000}),
        ("Fibonacci frequencies: the most lopsided tree, 6 bits deep", {0: 1, 1: 1, 2: 2, 3: 3, 4: 5, 5: 8, 6: 13}),
        ("the bytes of b'abracadabra' (a = 97 ... r = 114)", {97: 5, 98: 2, 99: 1, 100: 1, 114: 2}),
        ("splitting the symbols into two halves of equal weight, top down (Shannon–Fano), gives 2, 2, 2, 3, 3 bits "
         "= 89 in all; Huffman's merges, bottom up, do better", {0: 15, 1: 7, 2: 6, 3: 6, 4: 5}),
        ("no symbols at all: an empty dict", {}),
    ]
    cases = [_lengths_case(what, f) for what, f in examples]

    def got_is(wrong: Callable[[dict[int, int]], dict[int, int]]) -> Callable[..., bool]:
        """A matcher: the answer is exactly wrong(frequencies), and that is not an optimal code."""
        def m(got: Any, frequencies: dict[int, int]) -> bool:
            lengths, bad = _lengths_of(got), wrong(frequencies)
            return lengths == {s: n for s, n in bad.items() if n != 0} and not _is_optimal_code(bad, frequencies)
        return m

    def used(frequencies: dict[int, int]) -> list[int]:
        return sorted(s for s, f in frequencies.items() if f > 0)

    def balanced(frequencies: dict[int, int]) -> dict[int, int]:
        n = len(used(frequencies))
        return {s: max(1, math.ceil(math.log2(n))) for s in used(frequencies)}

    def shannon(frequencies: dict[int, int]) -> dict[int, int]:
        total = sum(frequencies.values())
        return {s: max(1, math.ceil(math.log2(total / frequencies[s]))) for s in used(frequencies)}

    def one_deeper(frequencies: dict[int, int]) -> dict[int, int]:
        return {s: n + 1 for s, n in _optimal_lengths(frequencies).items()}

    def codes_as_ints(frequencies: dict[int, int]) -> dict[int, int]:
        """The canonical codewords of the optimal lengths, as ints (what canonical codes are, not their lengths)."""
        best, codes, code, previous = _optimal_lengths(frequencies), {}, 0, 0
        for s in sorted(best, key=lambda s: (best[s], s)):
            code <<= best[s] - previous
            codes[s], code, previous = code, code + 1, best[s]
        return codes

    def zero_frequency_included(got: Any, frequencies: dict[int, int]) -> bool:
        lengths = _lengths_of(got)
        return lengths is not None and any(frequencies.get(s, 0) == 0 for s in lengths)

    def single_symbol_zero(got: Any, frequencies: dict[int, int]) -> bool:
        lengths = _lengths_of(got)
        return lengths == {} and len(used(frequencies)) == 1

    def symbol_missing(got: Any, frequencies: dict[int, int]) -> bool:
        lengths = _lengths_of(got)
        return lengths is not None and any(s not in lengths for s in used(frequencies))

    def not_prefix(got: Any, frequencies: dict[int, int]) -> bool:
        lengths = _lengths_of(got)
        return lengths is not None and any(n > 0 for n in lengths.values()) and all(
            n > 0 for n in lengths.values()) and _kraft(lengths) > 1

    def not_optimal(got: Any, frequencies: dict[int, int]) -> bool:
        lengths = _lengths_of(got)
        return (lengths is not None and set(lengths) == set(used(frequencies))
                and all(n > 0 for n in lengths.values()) and _kraft(lengths) <= 1
                and not _is_optimal_code(lengths, frequencies))

    mistakes = [
        Mistake("a symbol that never occurs (frequency 0) gets no codeword: leave it out of the dict",
                zero_frequency_included),
        Mistake("a single symbol still needs a 1-bit codeword ({symbol: 1}): with 0 bits the coded stream would be "
                "empty and could not say how many symbols it holds", single_symbol_zero),
        Mistake("those look like the canonical codewords as ints, not their lengths: return how many BITS each "
                "codeword has", got_is(codes_as_ints)),
        Mistake("every symbol with a frequency > 0 needs a codeword of at least 1 bit: one is missing from your "
                "dict (or got length 0)", symbol_missing),
        Mistake("these are the lengths of a balanced code (⌈log2 n⌉ bits for every symbol): Huffman gives frequent "
                "symbols SHORTER codes — merge the two least frequent subtrees, again and again", got_is(balanced)),
        Mistake("you merged the two MOST frequent subtrees: Huffman merges the two LEAST frequent ones each step "
                "(a min-heap: heapq.heappop twice, push their sum)", got_is(_largest_first_lengths)),
        Mistake("these are Shannon's lengths ⌈log2(total / frequency)⌉: a valid prefix code, but Huffman's merge "
                "finds shorter ones", got_is(shannon)),
        Mistake("every length is one too long: a codeword's length is the number of merges above its symbol (edges "
                "from the root), not the number of nodes on the path", got_is(one_deeper)),
        Mistake("these lengths cannot form a prefix code: Σ 2^(−length) over the symbols exceeds 1 (Kraft's "
                "inequality) — some codeword would have to be the start of another", not_prefix),
        Mistake("a prefix code, but not an optimal one: its Σ frequency × length is larger than Huffman's — merge "
                "the two LEAST frequent subtrees each step, and count each symbol's depth", not_optimal),
    ]
    def unordered_tie(got: Any, frequencies: dict[int, int]) -> bool:
        text = shown_text(got)
        return text is not None and text.startswith("no answer: your function raised TypeError")

    mistakes = [
        Mistake(f"your function {NONE_RETURNED}", lambda got, frequencies: shown_text(got) == "None"),
        Mistake("two subtrees had the same weight, so heapq compared the NEXT item of their tuples — your trees, "
                "which Python cannot order. Put a tie-breaker between the weight and the tree: (weight, "
                "next(counter), tree) with counter = itertools.count(), or (weight, smallest symbol, tree)",
                unordered_tie),
        *(Mistake(m.hint, m.matches) for m in mistakes),
    ]
    returns = Returns("any", why="the lab builds canonical codes from your lengths and codes the model's weights "
                                 "with them")

    def hidden(g: torch.Generator) -> Case:
        n = _randint(g, 1, 10)
        symbols = sorted({_randint(g, 0, 15) for _ in range(n)})
        frequencies = {s: (0 if _randint(g, 0, 5) == 0 else _randint(g, 1, _choice(g, [4, 30, 1000])))
                       for s in symbols}
        if not any(frequencies.values()):
            frequencies[symbols[-1]] = 1
        return _lengths_case("random frequencies", frequencies)

    return run_check("huffman_code_lengths", fn, cases, returns=returns, mistakes=mistakes, quiet=quiet,
                     hidden=hidden, call=_lengths_call, forbid=LAB07_REFERENCES,
                     reference="labkit.compress.huffman_code_lengths")


# =============================================================================================
# lab 07, exercise 3: bytes of a replay buffer


def _replay_buffer_bytes(capacity_sequences: int, seq_len: int, token_bytes: int) -> int:
    """capacity windows of seq_len + 1 tokens (the inputs and, shifted by one, their next tokens) of token_bytes each."""
    return capacity_sequences * (seq_len + 1) * token_bytes


@checks_safely("replay_buffer_bytes")
def check_replay_buffer_bytes(fn: Callable[[int, int, int], int], quiet: bool = False) -> CheckResult:
    """Exercise: bytes (int) of a replay buffer holding capacity_sequences training windows of seq_len + 1 tokens.

    A window of seq_len + 1 tokens gives seq_len inputs and their seq_len next tokens (the targets are the
    inputs shifted by one), so it stores seq_len + 1 token ids of token_bytes each (labkit.stream.ReplayBuffer).
    """
    examples = [
        ("the lab's buffer: 256 windows of 64 characters, uint8 token ids", (256, 64, 1)),
        ("one window of 8 tokens, uint8 ids: 9 tokens (8 inputs + the last target)", (1, 8, 1)),
        ("an empty buffer (capacity 0)", (0, 64, 1)),
        ("1,000 windows of 128 tokens with GPT-2's 50,257-token vocabulary: uint16 ids", (1_000, 128, 2)),
        ("10,000 windows of 2,048 tokens, int32 ids", (10_000, 2_048, 4)),
        ("64 windows of 256 tokens stored as torch's default int64", (64, 256, 8)),
    ]
    cases = [Case(f"replay_buffer_bytes(capacity_sequences={c:,}, seq_len={t:,}, token_bytes={b}): {what}",
                  (c, t, b), {}, _replay_buffer_bytes(c, t, b)) for what, (c, t, b) in examples]

    def is_any(*values_of: Callable[[int, int, int], int]) -> Callable[..., bool]:
        """A matcher: the answer equals one of these wrong formulas (each different from the right answer)."""
        def m(got: Any, c: int, t: int, b: int) -> bool:
            right = _replay_buffer_bytes(c, t, b)
            return any(v(c, t, b) != right and _int_eq(got, v(c, t, b)) for v in values_of)
        return m

    mistakes = [
        Mistake("a window holds seq_len + 1 tokens: seq_len inputs, and the targets are the same tokens shifted by "
                "one, which needs one more token at the end", is_any(lambda c, t, b: c * t * b)),
        Mistake("the targets are the inputs shifted by one: store one window of seq_len + 1 tokens, not the inputs "
                "and the targets as two arrays of seq_len",
                is_any(lambda c, t, b: 2 * c * t * b, lambda c, t, b: 2 * c * (t + 1) * b)),
        Mistake("that is 8× too many: token_bytes is already in bytes — don't multiply by 8 (that is bits), nor "
                "count each id as torch's 8-byte int64",
                is_any(lambda c, t, b: 8 * _replay_buffer_bytes(c, t, b), lambda c, t, b: 8 * c * t * b)),
        Mistake("token_bytes is already in bytes: don't divide by 8",
                lambda got, c, t, b: _per_case_ratio(1 / 8, _replay_buffer_bytes)(got, c, t, b)
                or is_any(lambda *a: _replay_buffer_bytes(*a) // 8)(got, c, t, b)),
        Mistake("that counts tokens: multiply by token_bytes, the bytes of one token id",
                is_any(lambda c, t, b: c * (t + 1), lambda c, t, b: c * t)),
        Mistake("that is one window's bytes: the buffer holds capacity_sequences windows",
                is_any(lambda c, t, b: (t + 1) * b, lambda c, t, b: t * b)),
        Mistake("the ids were counted as torch's int64 (8 bytes): each token takes token_bytes",
                is_any(lambda c, t, b: 8 * c * (t + 1))),
    ]

    def hidden(g: torch.Generator) -> Case:
        c, t, b = _randint(g, 0, 100_000), _randint(g, 1, 4_096), _choice(g, [1, 2, 4, 8])
        return Case(f"replay_buffer_bytes(capacity_sequences={c:,}, seq_len={t:,}, token_bytes={b})", (c, t, b), {},
                    _replay_buffer_bytes(c, t, b))

    return run_check("replay_buffer_bytes", fn, cases, returns=INT, mistakes=mistakes, quiet=quiet, hidden=hidden,
                     forbid=("labkit.stream.replay_buffer_bytes", "labkit.stream.ReplayBuffer") + LAB07_REFERENCES,
                     reference="labkit.stream.replay_buffer_bytes")


# =============================================================================================
# lab 07, exercise 2: the bytes of one matrix in the "relative index" stage


def _layer_storage_bytes(n_nonzero: int, n_fillers: int, code_bits: int, gap_bits: int, codebook_entries: int,
                         codebook_value_bytes: int) -> int:
    """Every entry (nonzero or filler) has a code and a gap, each kind packed as ONE bit stream rounded up to whole
    bytes, plus the codebook: ceil(n·code_bits / 8) + ceil(n·gap_bits / 8) + entries · value bytes, n = nnz + fillers."""
    n = n_nonzero + n_fillers
    return (n * code_bits + 7) // 8 + (n * gap_bits + 7) // 8 + codebook_entries * codebook_value_bytes


@checks_safely("layer_storage_bytes")
def check_layer_storage_bytes(fn: Callable[[int, int, int, int, int, int], int], quiet: bool = False) -> CheckResult:
    """Exercise: bytes (int) of one pruned, weight-shared matrix in Deep Compression's relative-index storage.

    Convention (labkit.deep_compression, the "relative index" row): each of the n_nonzero + n_fillers entries
    stores a code_bits code (a filler's code is 0, zero) and a gap_bits gap; the codes are ONE packed bit stream
    and the gaps another, each rounded up to whole bytes; the codebook stores codebook_entries values of
    codebook_value_bytes each.
    """
    kept = 65_536 - round(0.7 * 65_536)
    examples = [
        ("10 nonzeros, no fillers, 2-bit codes, 4-bit gaps, 4 shared values in fp32: 3 + 5 + 16 bytes",
         (10, 0, 2, 4, 4, 4)),
        ("3 nonzeros, 3-bit codes, 4-bit gaps: the codes take 9 bits → 2 bytes and the gaps 12 bits → 2 bytes, two "
         "streams (one stream of 21 bits would be 3 bytes)", (3, 0, 3, 4, 7, 2)),
        (f"the baby GPT's mlp.fc weight (512 × 128) at 70% sparsity: {kept:,} nonzeros, 12 fillers, 4-bit codes, "
         "4-bit gaps, 15 shared values in fp16", (kept, 12, 4, 4, 15, 2)),
        ("a very sparse matrix: 40 nonzeros and 25 fillers (runs of zeros longer than 15), 4-bit codes and gaps, "
         "10 shared values in fp16", (40, 25, 4, 4, 10, 2)),
        ("the paper's fully connected layers: 5-bit codes, 8-bit gaps (labkit.sparse's other gap width), fp32 "
         "codebook of 31 values; 1,000 nonzeros, 3 fillers", (1_000, 3, 5, 8, 31, 4)),
        ("a LLaMA-7B-sized 4,096 × 4,096 matrix at 90% sparsity: 1,677,722 nonzeros, 2,041 fillers, 5-bit codes, "
         "4-bit gaps, 31 fp16 values", (1_677_722, 2_041, 5, 4, 31, 2)),
        ("an all-zero matrix: no entries, an empty codebook", (0, 0, 4, 4, 0, 2)),
    ]
    cases = [Case(f"layer_storage_bytes(n_nonzero={z:,}, n_fillers={f:,}, code_bits={c}, gap_bits={g}, "
                  f"codebook_entries={e}, codebook_value_bytes={v}): {what}", (z, f, c, g, e, v), {},
                  _layer_storage_bytes(z, f, c, g, e, v)) for what, (z, f, c, g, e, v) in examples]

    def is_any(*values_of: Callable[..., int]) -> Callable[..., bool]:
        """A matcher: the answer equals one of these wrong formulas (each different from the right answer)."""
        def m(got: Any, *a: int) -> bool:
            right = _layer_storage_bytes(*a)
            return any(v(*a) != right and _int_eq(got, v(*a)) for v in values_of)
        return m

    up = lambda bits: (bits + 7) // 8
    codebook = lambda z, f, c, g, e, v: e * v
    mistakes = [
        Mistake("the codebook is missing: the shared values themselves are stored too, codebook_entries of "
                "codebook_value_bytes each", is_any(lambda z, f, c, g, e, v: up((z + f) * c) + up((z + f) * g))),
        Mistake("the fillers are missing: a filler is an entry like any other (a gap and a code, code 0), so every "
                "stream has n_nonzero + n_fillers entries",
                is_any(lambda z, f, c, g, e, v: up(z * c) + up(z * g) + codebook(z, f, c, g, e, v))),
        Mistake("a filler stores a code too (code 0, meaning zero), not only a gap: the codes stream has "
                "n_nonzero + n_fillers entries",
                is_any(lambda z, f, c, g, e, v: up(z * c) + up((z + f) * g) + codebook(z, f, c, g, e, v))),
        Mistake("the gaps are missing: a relative index stores, per entry, how many zeros were skipped (gap_bits "
                "each) besides the code", is_any(lambda z, f, c, g, e, v: up((z + f) * c) + codebook(z, f, c, g, e, v),
                                                 lambda z, f, c, g, e, v: up((z + f) * c))),
        Mistake("code_bits and gap_bits are BITS: divide the streams' bits by 8 to get bytes",
                is_any(lambda z, f, c, g, e, v: (z + f) * (c + g) + codebook(z, f, c, g, e, v),
                       lambda z, f, c, g, e, v: (z + f) * (c + g))),
        Mistake("the codebook was counted in bits: codebook_value_bytes is already in bytes, so the codebook takes "
                "codebook_entries × codebook_value_bytes bytes (no × 8)",
                is_any(lambda z, f, c, g, e, v: up((z + f) * c) + up((z + f) * g) + 8 * e * v)),
        Mistake("that is bits: return bytes (8 bits each); codebook_value_bytes is already in bytes",
                is_any(lambda *a: 8 * _layer_storage_bytes(*a),
                       lambda z, f, c, g, e, v: (z + f) * (c + g) + 8 * codebook(z, f, c, g, e, v))),
        Mistake("codebook_value_bytes is already in bytes: don't divide it by 8",
                is_any(lambda z, f, c, g, e, v: up((z + f) * c) + up((z + f) * g) + (e * v) // 8,
                       lambda z, f, c, g, e, v: up((z + f) * c) + up((z + f) * g) + up(e * v))),
        Mistake("the codes and the gaps are two separate packed streams (labkit.quantize.pack_codes on each), each "
                "rounded up to whole bytes on its own: ceil(n·code_bits / 8) + ceil(n·gap_bits / 8)",
                is_any(lambda z, f, c, g, e, v: up((z + f) * (c + g)) + codebook(z, f, c, g, e, v))),
        Mistake("round each stream's bytes UP: a partly used byte is still stored — (bits + 7) // 8",
                lambda got, z, f, c, g, e, v: (((z + f) * c) % 8 or ((z + f) * g) % 8) and (
                    _int_eq(got, (z + f) * c // 8 + (z + f) * g // 8 + e * v)
                    or (isinstance(got, float) and math.isclose(got, (z + f) * (c + g) / 8 + e * v)))),
        Mistake("the codebook holds codebook_entries values (given), not 2**code_bits",
                is_any(lambda z, f, c, g, e, v: up((z + f) * c) + up((z + f) * g) + 2 ** c * v)),
        Mistake("each codebook value takes codebook_value_bytes (e.g. 2 for fp16), not 4",
                lambda got, z, f, c, g, e, v: v != 4 and is_any(
                    lambda *a: up((z + f) * c) + up((z + f) * g) + 4 * e)(got, z, f, c, g, e, v)),
    ]

    def hidden(g: torch.Generator) -> Case:
        z, c, gb = _randint(g, 0, 5_000_000), _randint(g, 1, 8), _choice(g, [4, 5, 8])
        f = _randint(g, 0, max(0, z // 10))
        e, v = _randint(g, 0, 2 ** c - 1), _choice(g, [2, 4])
        return Case(f"layer_storage_bytes(n_nonzero={z:,}, n_fillers={f:,}, code_bits={c}, gap_bits={gb}, "
                    f"codebook_entries={e}, codebook_value_bytes={v})", (z, f, c, gb, e, v), {},
                    _layer_storage_bytes(z, f, c, gb, e, v))

    return run_check("layer_storage_bytes", fn, cases, returns=INT, mistakes=mistakes, quiet=quiet, hidden=hidden,
                     forbid=("labkit.deep_compression.layer_storage_bytes", "labkit.sparse.relative_bytes",
                             "labkit.sparse.format_bytes", "labkit.quantize.pack_codes", "labkit.sparse.*")
                     + LAB07_REFERENCES,
                     reference="labkit.deep_compression.layer_storage_bytes")
