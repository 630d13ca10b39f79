"""Lab 07 self-checks: a right answer passes, each typical wrong one fails with its hint, nothing raises.

(That a stub reads 'not yet solved', and None / a crash is reported, is tested for every check at once in
test_grading.py.)"""
import heapq
import math

import numpy as np
import pytest
import torch
from grading_helpers import assert_fails, assert_hidden_examples_defeat_a_table, examples_of, grade_cell

from labkit import compress as C
from labkit import deep_compression as D
from labkit import grading
from labkit import stream as S
from labkit.grading import checks_compression as CC

# ---- the learner's answers, written here by hand ----------------------------------------------


def heap_huffman(frequencies, sign=1):
    """A min-heap of (weight, counter, symbols below); each merge makes the symbols below one bit deeper.
    (sign=-1: a max-heap, merging the two MOST frequent subtrees — the mistake.)"""
    used = {s: f for s, f in frequencies.items() if f > 0}
    if len(used) == 1:
        return {s: 1 for s in used}
    heap = [(sign * f, i, [s]) for i, (s, f) in enumerate(sorted(used.items()))]
    heapq.heapify(heap)
    depth, counter = dict.fromkeys(used, 0), len(heap)
    while len(heap) > 1:
        w1, _, a = heapq.heappop(heap)
        w2, _, b = heapq.heappop(heap)
        for s in a + b:
            depth[s] += 1
        counter += 1
        heapq.heappush(heap, (w1 + w2, counter, a + b))
    return depth


def my_huffman_code_lengths(frequencies):
    return heap_huffman(frequencies)


def two_queue_huffman(frequencies):
    """Van Leeuwen's two queues (leaves sorted once, merged nodes in order of creation) and a tree walk: no heap."""
    leaves = sorted((f, s) for s, f in frequencies.items() if f > 0)
    if not leaves:
        return {}
    if len(leaves) == 1:
        return {leaves[0][1]: 1}
    first = [(f, ("leaf", s)) for f, s in leaves]
    merged = []

    def take():
        if merged and (not first or merged[0][0] < first[0][0]):
            return merged.pop(0)
        return first.pop(0)

    while len(first) + len(merged) > 1:
        a, b = take(), take()
        merged.append((a[0] + b[0], ("node", a[1], b[1])))
    lengths, todo = {}, [(merged[0][1], 0)]
    while todo:
        node, d = todo.pop()
        if node[0] == "leaf":
            lengths[node[1]] = d
        else:
            todo += [(node[1], d + 1), (node[2], d + 1)]
    return lengths


def my_layer_storage_bytes(n_nonzero, n_fillers, code_bits, gap_bits, codebook_entries, codebook_value_bytes):
    entries = n_nonzero + n_fillers
    return -(-entries * code_bits // 8) + -(-entries * gap_bits // 8) + codebook_entries * codebook_value_bytes


def my_replay_buffer_bytes(capacity_sequences, seq_len, token_bytes):
    return capacity_sequences * (seq_len + 1) * token_bytes


def kraft(lengths):
    return sum(2.0 ** -n for n in lengths.values())


# ---- huffman_code_lengths -----------------------------------------------------------------------

@pytest.mark.parametrize("right", [my_huffman_code_lengths, two_queue_huffman])
def test_huffman_right_answers_pass(right, capsys):
    result = grading.check_huffman_code_lengths(right)
    assert result and result.status == grading.PASS
    assert "passed (10 examples)" in capsys.readouterr().out


def shannon_fano(frequencies):
    """Top down: sort by frequency, split into two halves of (nearly) equal weight, recurse — not always optimal."""
    lengths = {}

    def split(symbols, depth):
        if len(symbols) == 1:
            lengths[symbols[0]] = max(depth, 1)
            return
        total, running, best, cut = sum(frequencies[s] for s in symbols), 0, None, 1
        for i in range(1, len(symbols)):
            running += frequencies[symbols[i - 1]]
            if best is None or abs(total - 2 * running) < best:
                best, cut = abs(total - 2 * running), i
        split(symbols[:cut], depth + 1)
        split(symbols[cut:], depth + 1)

    used = sorted((s for s, f in frequencies.items() if f > 0), key=lambda s: (-frequencies[s], s))
    if used:
        split(used, 0)
    return lengths


def test_shannon_fano_fails_on_a_public_example_with_the_not_optimal_hint():
    freqs = {0: 15, 1: 7, 2: 6, 3: 6, 4: 5}
    assert shannon_fano(freqs) == {0: 2, 1: 2, 2: 2, 3: 3, 4: 3}        # 89 bits; Huffman's 1, 3, 3, 3, 3: 87
    result = assert_fails(grading.check_huffman_code_lengths, shannon_fano, f"huffman_code_lengths({freqs})")
    assert "expected {0: 1, 1: 3, 2: 3, 3: 3, 4: 3} (87 bits in all), got {0: 2, 1: 2, 2: 2, 3: 3, 4: 3} (89 bits in all)" \
        in result.message, result.message
    assert "hint: a prefix code, but not an optimal one" in result.message


def test_huffman_accepts_any_optimal_code_when_frequencies_tie():
    ties = {0: 2, 1: 1, 2: 1, 3: 2}
    a, b = {0: 2, 1: 2, 2: 2, 3: 2}, {0: 2, 1: 3, 2: 3, 3: 1}        # both 12 bits, both Kraft sums 1
    assert sum(ties[s] * n for s, n in a.items()) == sum(ties[s] * n for s, n in b.items()) == 12
    for code in (a, b):
        answer = lambda f, code=code: dict(code) if f == ties else my_huffman_code_lengths(f)
        assert grading.check_huffman_code_lengths(answer, quiet=True), code
    # numpy ints are ints to canonical_codes too: accepted, and the lab can use them
    assert grading.check_huffman_code_lengths(lambda f: {np.int64(s): np.int32(n) for s, n in
                                                         my_huffman_code_lengths(f).items()}, quiet=True)
    # and 0-dim int tensors, as every INT check accepts them
    assert grading.check_huffman_code_lengths(lambda f: {s: torch.tensor(n) for s, n in
                                                         my_huffman_code_lengths(f).items()}, quiet=True)


def test_huffman_check_agrees_with_labkit_and_with_the_entropy_bound():
    # every example (public and hidden): labkit's reference is an optimal code of the same total bits as ours,
    # a prefix code (Kraft sum <= 1, = 1 with two or more symbols) within 1 bit/symbol of the entropy
    for (frequencies,) in examples_of(grading.check_huffman_code_lengths, my_huffman_code_lengths):
        ref, mine = C.huffman_code_lengths(frequencies), my_huffman_code_lengths(frequencies)
        total = sum(frequencies.values())
        assert set(ref) == set(mine) == {s for s, f in frequencies.items() if f > 0}
        assert sum(frequencies[s] * n for s, n in ref.items()) == sum(frequencies[s] * n for s, n in mine.items())
        if len(ref) >= 2:
            assert math.isclose(kraft(ref), 1.0) and math.isclose(kraft(mine), 1.0)
            h = C.entropy_bits(frequencies)
            average = sum(frequencies[s] * n for s, n in ref.items()) / total
            assert h <= average < h + 1
        assert CC._is_optimal_code(ref, frequencies)


def largest_first(frequencies):
    return heap_huffman(frequencies, sign=-1)


def canonical_code_ints(frequencies):
    """The canonical codewords of the Huffman lengths, as ints (sorted by (length, symbol), counting up)."""
    lengths, codes, code, previous = my_huffman_code_lengths(frequencies), {}, 0, 0
    for s in sorted(lengths, key=lambda s: (lengths[s], s)):
        code <<= lengths[s] - previous
        codes[s], code, previous = code, code + 1, lengths[s]
    return codes


def with_first(frequencies, wrong):
    """Right everywhere except on the first public example, where `wrong` answers (to reach one hint)."""
    return wrong if frequencies == {0: 5, 1: 2, 2: 1, 3: 1} else my_huffman_code_lengths(frequencies)


@pytest.mark.parametrize("wrong, hint", [
    (lambda f: {s: max(1, math.ceil(math.log2(sum(1 for v in f.values() if v)))) for s, v in f.items() if v},
     "lengths of a balanced code"),
    (largest_first, "you merged the two MOST frequent subtrees"),
    (lambda f: {s: (n if n else 1) for s, n in {**dict.fromkeys(f, 0), **my_huffman_code_lengths(f)}.items()},
     "frequency 0) gets no codeword"),
    (lambda f: {s: n for s, n in my_huffman_code_lengths(f).items() if s != max(my_huffman_code_lengths(f))},
     "one is missing from your dict"),
    (lambda f: {s: 0 for s in my_huffman_code_lengths(f)} if len(my_huffman_code_lengths(f)) == 1
     else my_huffman_code_lengths(f), "a single symbol still needs a 1-bit codeword"),
    (lambda f: {s: max(1, math.ceil(math.log2(sum(f.values()) / f[s]))) for s in my_huffman_code_lengths(f)},
     "Shannon's lengths"),
    (lambda f: {s: n + 1 for s, n in my_huffman_code_lengths(f).items()}, "every length is one too long"),
    (canonical_code_ints, "canonical codewords as ints"),
    (lambda f: {s: 1 for s in my_huffman_code_lengths(f)}, "cannot form a prefix code"),
    (lambda f: with_first(f, {0: 2, 1: 2, 2: 2, 3: 3}), "a prefix code, but not an optimal one"),
], ids=["balanced", "largest merged", "zero frequency", "symbol missing", "one symbol 0 bits", "Shannon",
        "one deeper", "codes as ints", "Kraft > 1", "not optimal"])
def test_huffman_mistakes_get_their_hints(wrong, hint):
    assert_fails(grading.check_huffman_code_lengths, wrong, hint=hint)


class Node:
    """A tree node without an order: what a learner's (weight, Node) heap entries hold."""

    def __init__(self, symbol=None, left=None, right=None):
        self.symbol, self.left, self.right = symbol, left, right


def heap_of_weight_and_node(frequencies):
    """The commonest heapq bug: (weight, Node) entries; on a tie heapq compares the Nodes -> TypeError."""
    used = {s: f for s, f in frequencies.items() if f > 0}
    if len(used) <= 1:
        return {s: 1 for s in used}
    heap = [(f, Node(s)) for s, f in used.items()]
    heapq.heapify(heap)
    while len(heap) > 1:
        w1, a = heapq.heappop(heap)
        w2, b = heapq.heappop(heap)
        heapq.heappush(heap, (w1 + w2, Node(None, a, b)))
    lengths, todo = {}, [(heap[0][1], 0)]
    while todo:
        node, depth = todo.pop()
        if node.symbol is not None:
            lengths[node.symbol] = depth
        else:
            todo += [(node.left, depth + 1), (node.right, depth + 1)]
    return lengths


def test_huffman_tied_weights_with_unordered_trees_get_the_tie_breaker_hint():
    result = grading.check_huffman_code_lengths(heap_of_weight_and_node, quiet=True)
    assert result.status == grading.FAIL, result.message
    assert "got no answer: your function raised TypeError: '<' not supported between instances of 'Node' and " \
           "'Node'" in result.message, result.message
    assert "hint: two subtrees had the same weight, so heapq compared the NEXT item" in result.message
    assert "(weight, next(counter), tree)" in result.message
    # the same in the grader's fresh process, and any other TypeError is still a crash, reported as one
    with pytest.raises(AssertionError, match="heapq compared the NEXT item"):
        grade_cell("huffman_code_lengths", HUFFMAN.replace("(f, i, [s])", "(f, {s: 1})")
                   .replace("w1, _, a", "w1, a").replace("w2, _, b", "w2, b")
                   .replace("(w1 + w2, counter, a + b)", "(w1 + w2, {**a, **b})")
                   .replace("for s in a + b", "for s in {**a, **b}"))
    result = grading.check_huffman_code_lengths(lambda f: sorted([1, "a"]), quiet=True)
    assert "raised TypeError: '<' not supported between instances of 'str' and 'int'" in result.message
    assert "hint" not in result.message                 # two kinds of objects: not a tie of trees
    result = grading.check_huffman_code_lengths(lambda f: len(5), quiet=True)
    assert "your function raised TypeError: object of type 'int' has no len()" in result.message, result.message


def test_huffman_a_wrong_answer_is_shown_as_the_dict_it_is_without_quotes():
    result = assert_fails(grading.check_huffman_code_lengths, lambda f: with_first(f, {0: 1, 1: 2, 2: 2, 3: 3}),
                          "an optimal code takes 15 bits in all")
    assert "expected {0: 1, 1: 2, 2: 3, 3: 3} (15 bits in all), got {0: 1, 1: 2, 2: 2, 3: 3} (14 bits in all)" \
        in result.message, result.message


def test_huffman_a_missing_codeword_is_named_and_no_padding_is_counted():
    result = grading.check_huffman_code_lengths(lambda f: {s: 0 for s in f} if f == {7: 42}
                                                else my_huffman_code_lengths(f), quiet=True)
    assert "expected {7: 1} (42 bits in all), got {7: 0} — no codeword for symbol 7" in result.message, result.message
    assert "values differ" not in result.message
    # a zero-frequency symbol is not shown as 'expected 0': the expected dict leaves it out
    result = grading.check_huffman_code_lengths(lambda f: {**my_huffman_code_lengths(f), 2: 1}
                                                if f == {0: 10, 1: 0, 2: 3, 3: 0, 4: 3} else my_huffman_code_lengths(f),
                                                quiet=True)
    assert "expected {0: 1, 2: 2, 4: 2} (22 bits in all), got {0: 1, 2: 1, 4: 2}" in result.message, result.message


def test_huffman_an_answer_of_the_wrong_shape_is_not_reported_as_a_crash():
    # the check's own reading of the answer: no "your function raised" (the learner raised nothing)
    for answer in (lambda f: {s: str(n) for s, n in my_huffman_code_lengths(f).items()},
                   lambda f: list(my_huffman_code_lengths(f).values())):
        result = grading.check_huffman_code_lengths(answer, quiet=True)
        assert not result and "raised" not in result.message, result.message


@pytest.mark.parametrize("answer, words", [
    (lambda f: None, "returned None — did you forget `return`?"),
    (lambda f: sorted(my_huffman_code_lengths(f).values()), "got list [1, 2, 3, 3] — the lab needs a dict"),
    (lambda f: {s: float(n) for s, n in my_huffman_code_lengths(f).items()}, "a whole number of bits (an int)"),
    (lambda f: {s: torch.tensor(float(n)) for s, n in my_huffman_code_lengths(f).items()}, "a whole number of bits"),
    (lambda f: {s: "0" * n for s, n in my_huffman_code_lengths(f).items()}, "looks like the codeword itself"),
    (lambda f: {chr(s): n for s, n in my_huffman_code_lengths(f).items()}, "its keys must be the symbols"),
    (lambda f: {**my_huffman_code_lengths(f), 99: 9}, "symbol 99, which is not in `frequencies`"),
    (lambda f: max(f.values()) and my_huffman_code_lengths(f), "raised ValueError: max() arg is an empty"),
])
def test_huffman_none_wrong_types_and_crash_are_reported_not_raised(answer, words):
    assert_fails(grading.check_huffman_code_lengths, answer, words)


def test_huffman_codeword_pairs_are_named():
    pairs = lambda f: {s: (0, n) for s, n in my_huffman_code_lengths(f).items()}      # canonical_codes' shape
    assert_fails(grading.check_huffman_code_lengths, pairs, "looks like the codeword itself")


def test_huffman_editing_the_frequencies_in_place_is_refused():
    def pops_zeros(frequencies):
        for s in [s for s, f in frequencies.items() if f == 0]:
            del frequencies[s]
        return my_huffman_code_lengths(frequencies)

    assert_fails(grading.check_huffman_code_lengths, pops_zeros, "changed its `frequencies` dict in place")
    assert grading.check_huffman_code_lengths(lambda f: my_huffman_code_lengths(dict(f)), quiet=True)


@pytest.mark.parametrize("delegate, name", [
    (C.huffman_code_lengths, "labkit.compress.huffman_code_lengths"),
    (lambda f: C.huffman_code_lengths(f), "labkit.compress.huffman_code_lengths"),
    (lambda f: dict(C.HuffmanCode.from_frequencies(f).lengths) if f else {}, "labkit.compress"),
    (lambda f: C._check_frequencies(f) and my_huffman_code_lengths(f), "labkit.compress._check_frequencies"),
    (lambda f: CC._optimal_lengths(f), "labkit.grading.checks_compression._optimal_lengths"),
])
def test_huffman_may_not_delegate(delegate, name):
    result = grading.check_huffman_code_lengths(delegate, quiet=True)
    assert result.status == grading.FAIL and name in result.message and "reference" in result.message, \
        result.message


def test_huffman_heapq_and_collections_stay_allowed():
    from collections import Counter
    assert grading.check_huffman_code_lengths(lambda f: my_huffman_code_lengths(Counter(f)), quiet=True)


def test_huffman_fallback_names_labkits_reference(capsys):
    fn = grading.use_or_fallback(lambda f: None, grading.check_huffman_code_lengths, C.huffman_code_lengths)
    assert fn is C.huffman_code_lengths and "`labkit.compress.huffman_code_lengths`" in capsys.readouterr().out
    assert grading.use_or_fallback(my_huffman_code_lengths, grading.check_huffman_code_lengths,
                                   C.huffman_code_lengths) is my_huffman_code_lengths


def test_huffman_hidden_examples_pass_a_right_answer_and_catch_a_table():
    # the table is right on the public examples, every symbol 4 bits anywhere else
    assert_hidden_examples_defeat_a_table(grading.check_huffman_code_lengths, my_huffman_code_lengths,
                                          also_right=[two_queue_huffman],
                                          otherwise=lambda f: {s: 4 for s, v in f.items() if v})


# ---- layer_storage_bytes -----------------------------------------------------------------------

def test_layer_storage_bytes_right_answer_passes(capsys):
    assert grading.check_layer_storage_bytes(my_layer_storage_bytes)
    assert "passed (7 examples)" in capsys.readouterr().out
    assert grading.check_layer_storage_bytes(lambda *a: np.int64(my_layer_storage_bytes(*a)), quiet=True)
    fn = grading.use_or_fallback(lambda *a: torch.tensor(my_layer_storage_bytes(*a)),
                                 grading.check_layer_storage_bytes, D.layer_storage_bytes)
    assert type(fn(10, 0, 2, 4, 3, 2)) is int and fn(10, 0, 2, 4, 3, 2) == 14


@pytest.mark.parametrize("wrong", [lambda z, f, c, g, e, v: (z + f) * (c + g) + e * v,
                                   lambda z, f, c, g, e, v: my_layer_storage_bytes(z, f, c, g, e, v) - e * v,
                                   lambda z, f, c, g, e, v: (z + f) * c // 8 + (z + f) * g // 8 + e * v])
def test_layer_storage_bytes_mistakes_show_on_the_small_worked_example_first(wrong):
    # 3 + 5 + 16 bytes can be checked by hand; the 19,661-nonzero matrix comes after it
    result = grading.check_layer_storage_bytes(wrong, quiet=True)
    assert "layer_storage_bytes(n_nonzero=10, n_fillers=0, code_bits=2" in result.message, result.message
    assert "expected 24" in result.message


def shared_gpt(bits: int, sparsity: float, seed: int = 0):
    """A tiny GPT whose block matrices hold at most 2**bits - 1 distinct fp16 values and zeros (weight-shared and
    pruned, as the pipeline leaves them), outer matrices at most 256 distinct values, fp16-exact vectors."""
    from labkit.model import GPT, GPTConfig
    from labkit.prune import prunable_layers

    g = torch.Generator().manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=32, activation="relu2",
                          tie_weights=False)).eval()
    blocks = {f"{name}.weight" for name in prunable_layers(model)}
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name in blocks:
                codebook = torch.linspace(-0.5, 0.5, 2 ** bits - 1).half().float()
                w = codebook[torch.randint(len(codebook), t.shape, generator=g)]
                w[torch.rand(t.shape, generator=g) < sparsity] = 0.0
                w.view(-1)[40:90] = 0.0                   # a run of 50 zeros: fillers at 4-bit gaps
            elif t.dim() == 2:
                w = torch.linspace(-1, 1, 256).half().float()[torch.randint(256, t.shape, generator=g)]
            else:
                w = t.half().float()
            t.copy_(w)
    return model, blocks


@pytest.mark.parametrize("bits, sparsity", [(2, 0.5), (3, 0.7), (4, 0.9), (5, 0.3)])
def test_layer_storage_bytes_is_what_the_relative_index_stage_stores(bits, sparsity):
    # the "relative index" row of the pipeline, counted on real packed arrays, is this formula over the block
    # matrices plus the outer matrices' uint8 codes and fp16 codebooks and the fp16 vectors
    from labkit.sparse import relative_fillers

    model, blocks = shared_gpt(bits, sparsity)
    state = model.state_dict()
    expected = 0
    for name, t in state.items():
        if name in blocks:
            nonzero = t[t != 0]
            assert relative_fillers(t, 4) > 0 or sparsity < 0.5
            expected += my_layer_storage_bytes(nonzero.numel(), relative_fillers(t, 4), bits, 4,
                                               torch.unique(nonzero).numel(), 2)
        elif t.dim() == 2:
            expected += t.numel() + 2 * torch.unique(t).numel()
        else:
            expected += 2 * t.numel()
    assert D.stage_bytes(model, "relative index", bits=bits, gap_bits=4) == expected


def test_layer_storage_bytes_check_agrees_with_labkit():
    for args in examples_of(grading.check_layer_storage_bytes, my_layer_storage_bytes):
        assert D.layer_storage_bytes(*args) == my_layer_storage_bytes(*args), args


@pytest.mark.parametrize("wrong, hint", [
    (lambda z, f, c, g, e, v: my_layer_storage_bytes(z, f, c, g, 0, v), "the codebook is missing"),
    (lambda z, f, c, g, e, v: my_layer_storage_bytes(z, 0, c, g, e, v), "the fillers are missing"),
    (lambda z, f, c, g, e, v: -(-z * c // 8) + -(-(z + f) * g // 8) + e * v, "a filler stores a code too"),
    (lambda z, f, c, g, e, v: -(-(z + f) * c // 8) + e * v, "the gaps are missing"),
    (lambda z, f, c, g, e, v: (z + f) * (c + g) + e * v, "code_bits and gap_bits are BITS"),
    (lambda *a: 8 * my_layer_storage_bytes(*a), "that is bits"),
    (lambda z, f, c, g, e, v: -(-(z + f) * c // 8) + -(-(z + f) * g // 8) + e * v // 8, "don't divide it by 8"),
    (lambda z, f, c, g, e, v: -(-(z + f) * (c + g) // 8) + e * v, "two separate packed streams"),
    (lambda z, f, c, g, e, v: (z + f) * c // 8 + (z + f) * g // 8 + e * v, "round each stream's bytes UP"),
    (lambda z, f, c, g, e, v: my_layer_storage_bytes(z, f, c, g, 2 ** c, v), "not 2**code_bits"),
    (lambda z, f, c, g, e, v: my_layer_storage_bytes(z, f, c, g, e, v) + 7 * e * v, "the codebook was counted in bits"),
    (lambda z, f, c, g, e, v: my_layer_storage_bytes(z, f, c, g, e, 4), "not 4"),
], ids=["no codebook", "no fillers", "fillers without code", "no gaps", "bits as bytes", "bits", "codebook / 8",
        "one stream", "floor", "2**bits entries", "codebook in bits", "fp32 codebook"])
def test_layer_storage_bytes_mistakes_get_their_hints(wrong, hint):
    assert_fails(grading.check_layer_storage_bytes, wrong, hint=hint)


@pytest.mark.parametrize("answer, words", [
    (lambda *a: None, "did you forget `return`?"),
    (lambda z, f, c, g, e, v: (z + f) * (c + g) / 8 + e * v, "so return an int"),
    (lambda *a: str(my_layer_storage_bytes(*a)), "expected a number"),
    (lambda z, f, c, g, e, v: my_layer_storage_bytes(z, f, c, g, e, v) // (e - e), "raised ZeroDivisionError"),
])
def test_layer_storage_bytes_none_float_and_crash_are_reported(answer, words):
    assert_fails(grading.check_layer_storage_bytes, answer, words)


@pytest.mark.parametrize("delegate, name", [
    (lambda *a: D.layer_storage_bytes(*a), "labkit.deep_compression.layer_storage_bytes"),
    (D.layer_storage_bytes, "labkit.deep_compression.layer_storage_bytes"),
    (lambda z, f, c, g, e, v: len(__import__("labkit.quantize", fromlist=["pack_codes"]).pack_codes(
        torch.zeros(z + f, dtype=torch.uint8), c)) * 0 + my_layer_storage_bytes(z, f, c, g, e, v),
     "labkit.quantize.pack_codes"),
    (lambda z, f, c, g, e, v: __import__("labkit.sparse", fromlist=["relative_bytes"]).relative_bytes(z + f, 1, 4),
     "labkit.sparse.relative_bytes"),
])
def test_layer_storage_bytes_may_not_delegate(delegate, name):
    assert_fails(grading.check_layer_storage_bytes, delegate, name)


def test_layer_storage_bytes_hidden_examples_pass_a_right_answer_and_catch_a_table():
    assert_hidden_examples_defeat_a_table(grading.check_layer_storage_bytes, my_layer_storage_bytes,
                                          otherwise=lambda *a: 0)


# ---- replay_buffer_bytes ------------------------------------------------------------------------

def test_replay_buffer_bytes_right_answer_passes(capsys):
    assert grading.check_replay_buffer_bytes(my_replay_buffer_bytes)
    assert "passed (6 examples)" in capsys.readouterr().out
    assert grading.check_replay_buffer_bytes(lambda *a: np.int64(my_replay_buffer_bytes(*a)), quiet=True)
    fn = grading.use_or_fallback(lambda *a: torch.tensor(my_replay_buffer_bytes(*a)),
                                 grading.check_replay_buffer_bytes, S.replay_buffer_bytes)
    assert type(fn(256, 64, 1)) is int and fn(256, 64, 1) == 16_640


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
def test_replay_buffer_bytes_is_what_a_real_buffer_stores(dtype):
    token_bytes = np.dtype(dtype).itemsize
    for capacity, seq_len in ((1, 8), (16, 64), (5, 3)):
        buffer = S.ReplayBuffer(capacity, seq_len, seed=0, dtype=dtype)
        for i in range(3 * capacity):                   # past its capacity: the storage does not grow
            buffer.add(np.full(seq_len + 1, i % 7, dtype=dtype))
        assert buffer.nbytes == my_replay_buffer_bytes(capacity, seq_len, token_bytes) \
            == S.replay_buffer_bytes(capacity, seq_len, token_bytes)


@pytest.mark.parametrize("wrong, hint", [
    (lambda c, t, b: c * t * b, "a window holds seq_len + 1 tokens"),
    (lambda c, t, b: 2 * c * t * b, "not the inputs and the targets as two arrays"),
    (lambda c, t, b: 8 * my_replay_buffer_bytes(c, t, b), "don't multiply by 8 (that is bits)"),
    (lambda c, t, b: my_replay_buffer_bytes(c, t, b) // 8, "don't divide by 8"),
    (lambda c, t, b: c * (t + 1), "that counts tokens"),
    (lambda c, t, b: (t + 1) * b, "that is one window's bytes"),
    (lambda c, t, b: 8 * c * (t + 1), "int64"),
], ids=["no +1", "x and y", "bits", "divided by 8", "tokens", "one window", "int64"])
def test_replay_buffer_bytes_mistakes_get_their_hints(wrong, hint):
    assert_fails(grading.check_replay_buffer_bytes, wrong, hint=hint)


@pytest.mark.parametrize("answer, words", [
    (lambda *a: None, "did you forget `return`?"),
    (lambda *a: float(my_replay_buffer_bytes(*a)), "return an int"),
    (lambda c, t, b: c * (t + 1) * b / 1, "return an int"),
    (lambda c, t, b: [c, t, b], "returned list [256, 64, 1]; expected a number"),
    (lambda c, t, b: my_replay_buffer_bytes(c, t, b) // (c - c), "raised ZeroDivisionError"),
])
def test_replay_buffer_bytes_none_float_and_crash_are_reported(answer, words):
    assert_fails(grading.check_replay_buffer_bytes, answer, words)


@pytest.mark.parametrize("delegate, name", [
    (lambda *a: S.replay_buffer_bytes(*a), "labkit.stream.replay_buffer_bytes"),
    (S.replay_buffer_bytes, "labkit.stream.replay_buffer_bytes"),
    (lambda c, t, b: S.ReplayBuffer(max(c, 1), t, dtype={1: np.uint8, 2: np.uint16, 4: np.int32,
                                                           8: np.int64}[b]).nbytes * c // max(c, 1),
     "labkit.stream.ReplayBuffer"),
])
def test_replay_buffer_bytes_may_not_delegate(delegate, name):
    assert_fails(grading.check_replay_buffer_bytes, delegate, name)


def test_replay_buffer_bytes_hidden_examples_pass_a_right_answer_and_catch_a_table():
    assert_hidden_examples_defeat_a_table(grading.check_replay_buffer_bytes, my_replay_buffer_bytes,
                                          otherwise=lambda *a: 0)


# ---- in the grader's fresh process ------------------------------------------------------------

HUFFMAN = ("import heapq\n"
           "def huffman_code_lengths(frequencies):\n"
           "    used = {s: f for s, f in frequencies.items() if f > 0}\n"
           "    if len(used) == 1:\n"
           "        return {s: 1 for s in used}\n"
           "    heap = [(f, i, [s]) for i, (s, f) in enumerate(sorted(used.items()))]\n"
           "    heapq.heapify(heap)\n"
           "    depth, counter = dict.fromkeys(used, 0), len(heap)\n"
           "    while len(heap) > 1:\n"
           "        w1, _, a = heapq.heappop(heap)\n"
           "        w2, _, b = heapq.heappop(heap)\n"
           "        for s in a + b:\n"
           "            depth[s] += 1\n"
           "        counter += 1\n"
           "        heapq.heappush(heap, (w1 + w2, counter, a + b))\n"
           "    return depth\n")
LAYER = ("def layer_storage_bytes(n_nonzero, n_fillers, code_bits, gap_bits, codebook_entries, codebook_value_bytes):\n"
         "    entries = n_nonzero + n_fillers\n"
         "    return (entries * code_bits + 7) // 8 + (entries * gap_bits + 7) // 8 + codebook_entries * codebook_value_bytes\n")
REPLAY = ("def replay_buffer_bytes(capacity_sequences, seq_len, token_bytes):\n"
          "    return capacity_sequences * (seq_len + 1) * token_bytes\n")


def test_graded_cells_pass_right_answers_in_a_fresh_process():
    assert grade_cell("huffman_code_lengths", HUFFMAN) is None
    assert grade_cell("replay_buffer_bytes", REPLAY) is None
    assert grade_cell("layer_storage_bytes", LAYER) is None


def test_graded_cells_fail_wrong_answers_with_the_hint():
    with pytest.raises(AssertionError, match="you merged the two MOST frequent subtrees"):
        grade_cell("huffman_code_lengths", HUFFMAN.replace("(f, i, [s])", "(-f, i, [s])"))
    with pytest.raises(AssertionError, match="a single symbol still needs a 1-bit codeword"):
        grade_cell("huffman_code_lengths", HUFFMAN.replace("{s: 1 for s in used}", "{s: 0 for s in used}"))
    with pytest.raises(AssertionError, match="got list"):       # the type is named over there too
        grade_cell("huffman_code_lengths", HUFFMAN.replace("    return depth", "    return list(depth)"))
    with pytest.raises(AssertionError, match="the codebook is missing"):
        grade_cell("layer_storage_bytes", LAYER.replace(" + codebook_entries * codebook_value_bytes", ""))
    with pytest.raises(AssertionError, match="a window holds seq_len \\+ 1 tokens"):
        grade_cell("replay_buffer_bytes", REPLAY.replace("(seq_len + 1)", "seq_len"))


def test_a_delegating_function_fails_in_the_grader_too():
    source = ("import labkit.compress\n"
              "def huffman_code_lengths(frequencies):\n"
              "    return labkit.compress.huffman_code_lengths(frequencies)\n")
    with pytest.raises(AssertionError, match="labkit.compress.huffman_code_lengths"):
        grade_cell("huffman_code_lengths", source)


# ---- labkit's references (the lab's fallbacks) give the checks' answers -------------------------

def test_labkit_references_agree_with_the_checks():
    for args in examples_of(grading.check_replay_buffer_bytes, my_replay_buffer_bytes):
        assert S.replay_buffer_bytes(*args) == my_replay_buffer_bytes(*args), args
