"""The self-checks must pass a right answer, fail wrong ones with a useful message, and never crash."""
import math
import sys

import numpy as np
import pytest
import torch

from labkit import grading
from labkit.grading import core
from labkit.memory import kv_cache_bytes, training_state_bytes


def todo(*args, **kwargs):
    raise NotImplementedError()


def my_cross_entropy(logits, targets):
    m = logits.max(dim=-1, keepdim=True).values
    log_z = m.squeeze(-1) + torch.log(torch.exp(logits - m).sum(dim=-1))
    return (log_z - logits.gather(-1, targets[:, None]).squeeze(-1)).mean()


def my_attention(q, k, v):
    T, d = q.shape
    scores = (q @ k.T / math.sqrt(d)).masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


RIGHT = {
    grading.check_tensor_bytes: lambda shape, dtype: math.prod(shape) * torch.empty((), dtype=dtype).element_size(),
    grading.check_params_that_fit: lambda b, bpp: int(b // bpp),
    grading.check_cross_entropy: my_cross_entropy,
    grading.check_perplexity: lambda x: math.exp(x),
    grading.check_bits_per_char: lambda x: x / math.log(2),
    grading.check_causal_attention: my_attention,
    grading.check_kv_cache_bytes: lambda L, kv, hd, T, B, nbytes: 2 * L * kv * hd * T * B * nbytes,
    grading.check_adam_training_bytes: lambda n, nbytes: 4 * n * nbytes,
    grading.check_model_bytes: lambda m: sum(t.nbytes for t in {id(t): t for t in [*m.parameters(), *m.buffers()]}.values()),
}

WRONG = {  # a typical mistake for each exercise, and the hint it must get
    grading.check_tensor_bytes: (lambda shape, dtype: math.prod(shape), "number of elements"),
    grading.check_params_that_fit: (lambda b, bpp: math.ceil(b / bpp), "round down"),
    grading.check_cross_entropy: (lambda logits, y: -torch.log(torch.exp(logits) / torch.exp(logits).sum(-1, keepdim=True)).gather(1, y[:, None]).mean(), "subtract each row's largest logit"),
    grading.check_perplexity: (lambda x: 2 ** x, "e to its power"),
    grading.check_bits_per_char: (lambda x: x / math.log(10), "divide nats by ln 2"),
    grading.check_causal_attention: (lambda q, k, v: torch.softmax(q @ k.T / math.sqrt(q.size(-1)), -1) @ v, "no mask"),
    grading.check_kv_cache_bytes: (lambda L, kv, hd, T, B, nbytes: L * kv * hd * T * B * nbytes, "BOTH keys and values"),
    grading.check_adam_training_bytes: (lambda n, nbytes: 3 * n * nbytes, "three copies instead of four"),
    grading.check_model_bytes: (lambda m: sum(p.nbytes for p in m.parameters()), "buffers are missing"),
}


@pytest.mark.parametrize("check", list(RIGHT), ids=lambda c: c.__name__)
def test_right_answer_passes(check, capsys):
    result = check(RIGHT[check])
    assert result and result.status == grading.PASS
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("check", list(WRONG), ids=lambda c: c.__name__)
def test_wrong_answer_fails_with_example_and_hint(check, capsys):
    wrong, hint = WRONG[check]
    result = check(wrong)
    assert not result and result.status == grading.FAIL
    out = capsys.readouterr().out
    assert "❌" in out and "on " in out and "hint: " in out and hint in out, out


# every check in labkit.grading, including the ones each lab adds: a stub must read "not yet solved"
ALL_CHECKS = [f for name, f in sorted(vars(grading).items()) if name.startswith("check_") and callable(f)]


def test_all_checks_are_found():
    assert set(RIGHT) <= set(ALL_CHECKS) and len(ALL_CHECKS) >= len(RIGHT) + 5


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda c: c.__name__)
def test_unsolved_says_not_yet_solved(check, capsys):
    result = check(todo)
    assert result.status == grading.TODO and not result
    assert "not yet solved" in capsys.readouterr().out


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda c: c.__name__)
def test_none_return_is_reported_never_raised(check):
    # regression: cross_entropy, causal_attention, ngram_probabilities and split_heads raised TypeError here
    result = check(lambda *args: None, quiet=True)
    assert result.status == grading.FAIL and "returned None — did you forget `return`?" in result.message


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda c: c.__name__)
def test_none_return_falls_back_to_the_reference(check, capsys):
    def reference(*args):
        return 0

    assert grading.use_or_fallback(lambda *args: None, check, reference) is reference
    assert "reference implementation" in capsys.readouterr().out


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda c: c.__name__)
def test_a_crash_is_reported_not_raised(check):
    result = check(lambda *args: 1 / 0, quiet=True)
    assert result.status == grading.FAIL and "raised ZeroDivisionError" in result.message


def test_a_crash_inside_the_check_itself_is_reported(monkeypatch):
    from labkit.grading import checks
    monkeypatch.setattr(checks, "Case", lambda *a: 1 / 0)       # the check's own code breaks, not the learner's
    result = grading.check_perplexity(math.exp, quiet=True)
    assert result.status == grading.FAIL and "the check could not run" in result.message


# ---- numbers of any numeric type; integers exactly -------------------------------------------

@pytest.mark.parametrize("wrap", [np.int64, np.int32, int, lambda n: torch.tensor(n), lambda n: np.array(n)],
                         ids=["np.int64", "np.int32", "int", "0-dim tensor", "0-dim ndarray"])
def test_any_integer_type_is_accepted(wrap):
    # regression: np.int64(48) was rejected as wrong
    right = RIGHT[grading.check_tensor_bytes]
    assert grading.check_tensor_bytes(lambda s, d: wrap(right(s, d)), quiet=True)


@pytest.mark.parametrize("wrap", [np.float32, np.float64, float, lambda x: torch.tensor(x), lambda x: torch.tensor(x).double()],
                         ids=["np.float32", "np.float64", "float", "0-dim tensor", "0-dim float64 tensor"])
def test_any_number_type_is_accepted_for_perplexity(wrap):
    assert grading.check_perplexity(lambda x: wrap(math.exp(x)), quiet=True)


def test_integers_are_compared_exactly():
    # regression: an answer off by one passed check_gpt_param_count through rtol=1e-5
    result = grading.check_gpt_param_count(lambda c: _count(c) + 1, quiet=True)
    assert result.status == grading.FAIL and "(+1)" in result.message


def _count(config):
    C, V, hd = config.n_embd, config.vocab_size, config.head_dim
    n = V * C + (config.block_size * C if config.positions == "learned" else 0)
    n += config.n_layer * (2 * C + C * (config.n_head + 2 * config.n_kv_head) * hd + C * C + 8 * C * C) + C
    return n + (0 if config.tie_weights else V * C)


def test_a_float_count_is_refused_with_the_reason():
    result = grading.check_params_that_fit(lambda b, bpp: b / bpp, quiet=True)
    assert result.status == grading.FAIL and "returned 250.0 (a float)" in result.message
    result = grading.check_kv_cache_bytes(lambda *a: float(2 * math.prod(a)), quiet=True)
    assert result.status == grading.FAIL and "return an int" in result.message


def test_use_or_fallback_hands_on_plain_numbers(capsys):
    fn = grading.use_or_fallback(lambda x: torch.tensor(math.exp(x)), grading.check_perplexity, math.exp)
    assert type(fn(1.0)) is float and round(fn(1.0), 2) == 2.72      # round() fails on a tensor (lab 01 cell 16)
    fn = grading.use_or_fallback(lambda s, d: np.int64(math.prod(s) * d.itemsize), grading.check_tensor_bytes, None)
    assert type(fn((2, 3), torch.float32)) is int
    assert capsys.readouterr().out == ""


# ---- where it differs, and meaning instead of raw floats -------------------------------------

def test_mismatch_points_at_the_first_differing_row_and_column():
    # a missing 1/√d: row 0 of causal attention is always v₀, so the first values were identical before
    def no_scale(q, k, v):
        T = len(q)
        s = (q @ k.T).masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
        return torch.softmax(s, -1) @ v

    result = grading.check_causal_attention(no_scale, quiet=True)
    assert result.status == grading.FAIL
    assert "row 1, column" in result.message and "values differ" in result.message
    assert "divide q kᵀ by √d" in result.message


@pytest.mark.parametrize("wrong, hint", [
    (lambda q, k, v: my_attention(q.flip(0), k.flip(0), v.flip(0)).flip(0), "wrong side"),
    (lambda q, k, v: torch.nan_to_num(torch.softmax((q @ k.T / math.sqrt(q.shape[1])).masked_fill(
        torch.triu(torch.ones(len(q), len(q), dtype=torch.bool), 1), float("-inf")), dim=0)) @ v, "wrong dimension"),
], ids=["anti-causal", "softmax over dim 0"])
def test_attention_hints(wrong, hint):
    result = grading.check_causal_attention(wrong, quiet=True)
    assert result.status == grading.FAIL and hint in result.message


def test_messages_show_meaning_not_raw_floats():
    result = grading.check_perplexity(lambda x: 1.0 if x == 0 else 2 ** x, quiet=True)
    assert "exp(ln 84) = 84" in result.message and "83.99999" not in result.message


def test_cross_entropy_in_bits_and_summed_get_hints():
    bits = grading.check_cross_entropy(lambda l, t: my_cross_entropy(l, t) / math.log(2), quiet=True)
    assert "nats" in bits.message and "log base 2" in bits.message
    summed = grading.check_cross_entropy(lambda l, t: my_cross_entropy(l, t) * len(t), quiet=True)
    assert "SUM" in summed.message


# ---- demands what the lab uses next -----------------------------------------------------------

@pytest.mark.parametrize("wrong, words", [
    (lambda l, t: my_cross_entropy(l, t).item(), "returned float 1.38629; expected a torch.Tensor"),  # cell 40: .item()
    (lambda l, t: my_cross_entropy(l, t).double(), "torch.float32"),      # torch.allclose needs equal dtypes
    (lambda l, t: my_cross_entropy(l, t).reshape(1), "shape (1,)"),
], ids=["item", "float64", "shape (1,)"])
def test_cross_entropy_demands_a_0dim_float32_tensor(wrong, words):
    # regression: .item() and float64 answers passed, then lab 01's cell 40 failed
    result = grading.check_cross_entropy(wrong, quiet=True)
    assert result.status == grading.FAIL and words in result.message


# ---- tripwires: the learner's own code ----------------------------------------------------------

def test_calling_the_reference_fails_with_the_tripwire_message():
    import torch.nn.functional as F
    result = grading.check_cross_entropy(lambda l, t: F.cross_entropy(l, t), quiet=True)
    assert result.status == grading.FAIL
    assert "your function calls `torch.nn.functional.cross_entropy`" in result.message and "yourself" in result.message


def test_a_reference_imported_by_name_is_caught_too():
    from labkit.losses import cross_entropy as ce
    ns = {"ce": ce}
    exec("def mine(logits, targets):\n    return ce(logits, targets)\n", ns)
    result = grading.check_cross_entropy(ns["mine"], quiet=True)
    assert result.status == grading.FAIL and "labkit.losses.cross_entropy" in result.message
    assert ns["ce"] is ce                       # restored afterwards


def test_swallowing_the_tripwire_does_not_help():
    from labkit import memory

    def sneaky(L, kv, hd, T, B, nbytes):
        try:
            return memory.kv_cache_bytes(L, kv, hd, T, B, {4: "fp32", 2: "fp16", 1: "int8"}[nbytes])
        except BaseException:
            return 2 * L * kv * hd * T * B * nbytes

    result = grading.check_kv_cache_bytes(sneaky, quiet=True)
    assert result.status == grading.FAIL and "labkit.memory.kv_cache_bytes" in result.message


def test_tripwires_are_restored_after_the_check():
    import torch.nn.functional as F
    from labkit import losses
    before = (F.cross_entropy, losses.cross_entropy, torch.Tensor.log_softmax, F.scaled_dot_product_attention)
    grading.check_cross_entropy(lambda l, t: F.cross_entropy(l, t), quiet=True)
    grading.check_causal_attention(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), quiet=True)
    assert (F.cross_entropy, losses.cross_entropy, torch.Tensor.log_softmax, F.scaled_dot_product_attention) == before
    assert "log_softmax" not in vars(torch.Tensor)


def test_legitimate_building_blocks_are_allowed():
    # element_size() is what the tensor_bytes exercise needs; softmax is what attention needs
    assert grading.check_tensor_bytes(RIGHT[grading.check_tensor_bytes], quiet=True)
    assert grading.check_causal_attention(my_attention, quiet=True)


def test_nbytes_is_a_tripwire_for_tensor_bytes():
    result = grading.check_tensor_bytes(lambda s, d: torch.empty(s, dtype=d).nbytes, quiet=True)
    assert result.status == grading.FAIL and "torch.Tensor.nbytes" in result.message
    assert torch.empty(3).nbytes == 12


def test_inputs_edited_in_place_are_reported():
    """The labs pass the model's own tensors: a function that writes into its input would damage the model for
    every later cell (lab 04's weights), so the check reports it, even when the answer is right."""
    def right_then_zeroes_its_input(counts, k):
        smoothed = counts.double() + k
        out = smoothed / smoothed.sum(dim=-1, keepdim=True)
        counts.zero_()
        return out

    result = grading.check_ngram_probabilities(right_then_zeroes_its_input, quiet=True)
    assert result.status == grading.FAIL and "changed argument 1 in place" in result.message, result.message
    model = torch.nn.Linear(2, 2)

    def halves_the_model(m):
        m.half()
        return sum(p.nbytes for p in m.parameters())

    result = grading.check_model_bytes(halves_the_model, quiet=True)
    assert result.status == grading.FAIL and "changed argument 1 (weight) in place" in result.message, result.message
    assert model.weight.dtype == torch.float32


def test_a_private_helper_of_the_reference_module_is_a_tripwire_too():
    """Swapping module attributes misses a reference reached another way (a private helper, an alias, gc):
    every function of a module named 'module.*' in a check's forbid list trips, and the checks' own helpers."""
    import gc
    import types

    from labkit import prune
    from labkit.grading import checks
    for fn in (lambda w, s: checks._magnitude_mask(w, s) if hasattr(checks, "_magnitude_mask") else None,
               lambda w, s: prune._remove_smallest(w.abs(), s) if hasattr(prune, "_remove_smallest") else None,
               lambda w, s: next(f for f in gc.get_objects() if type(f) is types.FunctionType
                                 and f.__qualname__ == "magnitude_mask" and f.__module__ == "labkit.prune")(w, s)):
        result = grading.check_magnitude_mask(fn, quiet=True)
        assert result.status == grading.FAIL and "your function calls" in result.message, result.message


def test_the_guard_cannot_be_switched_off_from_inside():
    import sys

    from labkit import prune

    def off_then_delegate(w, s):
        sys.setprofile(None)
        return prune.magnitude_mask(w, s)
    result = grading.check_magnitude_mask(off_then_delegate, quiet=True)
    assert result.status == grading.FAIL and "sys.setprofile" in result.message, result.message


KV_NAMES = {4: "fp32", 2: "fp16", 1: "int8"}
REFERENCE = {"kv": kv_cache_bytes}    # held in a dict, which the tripwires do not rebind: only the guard sees it


def test_an_answer_computed_after_the_guard_is_off_does_not_pass():
    """An int subclass whose __int__ asks the reference, read only when the check compares (review item 3): what the
    function returned is turned into plain data while the guard is on, so the reference runs guarded, or not at all."""
    def late_int(L, kv, hd, T, B, nbytes):
        class Late(int):
            def __int__(self):
                return REFERENCE["kv"](L, kv, hd, T, B, KV_NAMES[nbytes])
        return Late(0)
    result = grading.check_kv_cache_bytes(late_int, quiet=True)
    assert result.status == grading.FAIL and "got 0" in result.message, result.message

    def late_tensor(logits, targets):       # a tensor subclass whose every operation runs the reference
        import torch.nn.functional as F

        class Late(torch.Tensor):
            @classmethod
            def __torch_function__(cls, func, types, args=(), kwargs=None):
                real = F.cross_entropy(logits, targets)
                with torch._C.DisableTorchFunctionSubclass():
                    return func(*(real if isinstance(a, Late) else a for a in args), **(kwargs or {}))
        return torch.zeros(()).as_subclass(Late)
    result = grading.check_cross_entropy(late_tensor, quiet=True)
    assert result.status == grading.FAIL and "got 0" in result.message, result.message


def test_a_lazy_container_or_repr_runs_guarded():
    """Lab 07/08's adapters read a dict's items() and an answer's repr: a subclass computing there is caught."""
    from labkit import compress, pools

    def lazy_lengths(frequencies):
        class Lazy(dict):
            def items(self):
                return compress.huffman_code_lengths(frequencies).items()
        return Lazy()
    result = grading.check_huffman_code_lengths(lazy_lengths, quiet=True)
    # read as a plain (empty) dict while guarded: the lazy items() never runs, so no code lengths come back
    assert result.status == grading.FAIL and "no codeword for symbols" in result.message, result.message

    def lazy_repr(free_blocks, size):
        class Lazy:
            def __repr__(self):
                return repr(pools.first_fit(free_blocks, size))
        return Lazy()
    result = grading.check_first_fit(lazy_repr, quiet=True)
    assert result.status == grading.FAIL and "labkit.pools" in result.message, result.message


def test_plain_keeps_right_answers_and_nested_structures():
    from collections import OrderedDict, namedtuple
    Hole = namedtuple("Hole", "offset size")
    got = core._plain((np.int64(0), [Hole(48, 16), (128, 32)]))
    assert got == (0, [(48, 16), (128, 32)]) and type(got[1][0]) is tuple and type(got[0]) is np.int64
    assert type(core._plain(OrderedDict(a=1))) is dict and type(core._plain(True)) is bool
    t = torch.nn.Parameter(torch.ones(2))
    assert core._plain(t) is t and core._plain(np.float32(1.5)) == 1.5

    class Shouty:
        def __repr__(self):
            return "LOUD"
    stand_in = core._plain(Shouty())
    assert repr(stand_in) == "LOUD" and type(stand_in).__name__ == "Shouty" and stand_in != "LOUD"


def test_plain_does_not_use_names_rebound_in_the_module(monkeypatch):
    # a function could rebind core._plain_tensor mid-call and restore it from a __repr__ that _plain calls later
    class Sub(torch.Tensor):
        pass
    monkeypatch.setattr(core, "_plain_tensor", lambda x: x)
    monkeypatch.setattr(core, "_stand_in", lambda x: x)
    got = core._plain([torch.zeros(2).as_subclass(Sub), object()])
    assert type(got[0]) is torch.Tensor and isinstance(got[1], core._StandIn)


def test_no_module_attribute_holds_the_profile_switches():
    # review item 5A: `core._SETPROFILE(None)` switched the guard off
    assert not [k for k, v in vars(core).items() if v is sys.setprofile or v is sys.settrace]


def test_the_real_switch_found_in_the_guards_frame_trips():
    def off_by_frame(L, kv, hd, T, B, nbytes):     # the original setprofile, from the guard's own frame
        sys._getframe(1).f_locals["setprofile"](None)
        return REFERENCE["kv"](L, kv, hd, T, B, KV_NAMES[nbytes])
    result = grading.check_kv_cache_bytes(off_by_frame, quiet=True)
    assert result.status == grading.FAIL and "grading guard was switched off" in result.message, result.message

    def off_from_c(L, kv, hd, T, B, nbytes):       # called from C (map), so the hook sees no call of it
        list(map(sys._getframe(1).f_locals["setprofile"], [None]))
        return REFERENCE["kv"](L, kv, hd, T, B, KV_NAMES[nbytes])
    result = grading.check_kv_cache_bytes(off_from_c, quiet=True)
    assert result.status == grading.FAIL and "grading guard was switched off" in result.message, result.message
    assert sys.getprofile() is None


def test_ctypes_trips():
    """Review item 5B: the C library's system() through ctypes started a process the guard did not see."""
    def through_ctypes(L, kv, hd, T, B, nbytes):
        import ctypes
        ctypes.CDLL(None).system(b"true")
        return 2 * L * kv * hd * T * B * nbytes
    result = grading.check_kv_cache_bytes(through_ctypes, quiet=True)
    assert result.status == grading.FAIL and "through ctypes (`ctypes.CDLL" in result.message, result.message

    def through_dlopen(L, kv, hd, T, B, nbytes):
        import _ctypes
        _ctypes.dlopen(None)
        return 2 * L * kv * hd * T * B * nbytes
    result = grading.check_kv_cache_bytes(through_dlopen, quiet=True)
    assert result.status == grading.FAIL and "through ctypes (`_ctypes.dlopen`)" in result.message, result.message


def test_an_unwatched_thread_trips():
    import _thread
    import threading

    def in_a_raw_thread(L, kv, hd, T, B, nbytes):
        out, done = [], threading.Event()
        _thread.start_new_thread(lambda: (out.append(REFERENCE["kv"](L, kv, hd, T, B, KV_NAMES[nbytes])),
                                          done.set()), ())
        done.wait(10)
        return out[0]
    result = grading.check_kv_cache_bytes(in_a_raw_thread, quiet=True)
    assert result.status == grading.FAIL and "starts another thread" in result.message, result.message

    def hook_removed(L, kv, hd, T, B, nbytes):
        threading._profile_hook = None
        out = []
        t = threading.Thread(target=lambda: out.append(REFERENCE["kv"](L, kv, hd, T, B, KV_NAMES[nbytes])))
        t.start()
        t.join()
        return out[0]
    result = grading.check_kv_cache_bytes(hook_removed, quiet=True)
    assert result.status == grading.FAIL and "starts another thread" in result.message, result.message



def test_swapping_the_grading_machinery_fails():
    """Review item 5C: call 1 swapped core._guarded and core.tripwires, later calls used the reference freely."""
    import contextlib

    saved = {name: vars(core)[name] for name in ("_guarded", "tripwires")}

    def swaps_then_delegates(L, kv, hd, T, B, nbytes):
        core._guarded = lambda f, files, called: f
        core.tripwires = lambda forbid, fn: contextlib.nullcontext([])
        return 2 * L * kv * hd * T * B * nbytes if L == 2 else REFERENCE["kv"](L, kv, hd, T, B, KV_NAMES[nbytes])
    try:
        result = grading.check_kv_cache_bytes(swaps_then_delegates, quiet=True)
    finally:
        vars(core).update(saved)
    assert result.status == grading.FAIL and "core._guarded" in result.message, result.message
    assert grading.check_kv_cache_bytes(RIGHT[grading.check_kv_cache_bytes], quiet=True)


def test_a_fraction_is_refused_where_the_lab_formats_a_float():
    from fractions import Fraction
    result = grading.check_perplexity(lambda x: Fraction(math.exp(x)), quiet=True)
    assert result.status == grading.FAIL and "return a float" in result.message, result.message


# ---- wording ---------------------------------------------------------------------------------

def test_fallback_names_the_reference_in_plain_english(capsys):
    from labkit import losses
    assert grading.use_or_fallback(todo, grading.check_perplexity, losses.perplexity) is losses.perplexity
    out = capsys.readouterr().out
    assert "is failed" not in out and "is not yet solved" not in out
    assert "perplexity is not solved yet: the cells below use the reference implementation " \
           "`labkit.losses.perplexity` instead" in out


def test_fallback_after_a_wrong_answer(capsys):
    grading.use_or_fallback(lambda x: 2 ** x, grading.check_perplexity, math.exp)
    out = capsys.readouterr().out
    assert "does not pass its check yet" in out and "reference implementation" in out


def test_checks_compare_against_labkit_formulas():
    # the expected values inside the checks come from labkit; spot-check that they are what we think
    assert kv_cache_bytes(4, 4, 32, 64, 1, "fp32") == 2 * 4 * 4 * 32 * 64 * 4
    assert training_state_bytes(10, "fp32", "adam")["total"] == 160


def test_use_or_fallback(capsys):
    ref = RIGHT[grading.check_perplexity]
    assert grading.use_or_fallback(ref, grading.check_perplexity, math.exp)(1.0) == math.exp(1.0)
    assert grading.use_or_fallback(todo, grading.check_perplexity, math.exp) is math.exp
    assert "reference" in capsys.readouterr().out
    split = RIGHT[grading.check_causal_attention]
    assert grading.use_or_fallback(split, grading.check_causal_attention, None) is split   # tensors: as written


# ---- release -----------------------------------------------------------------------------------

import os
import subprocess
from pathlib import Path

import nbformat


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


def solved_notebook(solution="def f():\n    ### BEGIN SOLUTION\n    return 42\n    ### END SOLUTION",
                    hidden="### BEGIN HIDDEN TESTS\nassert f() == 42\n### END HIDDEN TESTS"):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# a lab"),
        nbformat.v4.new_code_cell(solution, metadata={"nbgrader": {"solution": True, "grade": False, "locked": False,
                                                                    "grade_id": "ex"}}),
        nbformat.v4.new_code_cell(hidden, metadata={"nbgrader": {"grade": True, "locked": True, "points": 1,
                                                                  "grade_id": "ex-test"}}),
        nbformat.v4.new_code_cell("print('read only')", metadata={"nbgrader": {"locked": True, "grade": False}}),
    ])
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="x")]
    nb.cells[1].execution_count = 3
    nb.cells[1].metadata["execution"] = {"iopub.execute_input": "2026-11-25T10:00:00Z"}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"m": "KV cache 256.00 KiB"}}}
    return nb


@pytest.fixture
def solved(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    nbformat.write(solved_notebook(), src / "a.ipynb")
    return src


def test_release_writes_student_copies(solved, tmp_path):
    dst = tmp_path / "dst"
    assert grading.release(solved, dst) == {"a.ipynb": 1}
    student = nbformat.read(dst / "a.ipynb", as_version=4)
    assert "return 42" not in student.cells[1].source and student.cells[1].outputs == []
    assert student.cells[1].execution_count is None
    assert "assert" not in student.cells[2].source


def test_student_copy_drops_widget_state_and_timestamps(solved, tmp_path):
    # regression: widget state kept rendered answers, cells kept execution timestamps
    grading.release(solved, tmp_path / "dst")
    text = (tmp_path / "dst" / "a.ipynb").read_text()
    student = nbformat.read(tmp_path / "dst" / "a.ipynb", as_version=4)
    assert "widgets" not in student.metadata and "256.00 KiB" not in text
    assert all("execution" not in c.metadata for c in student.cells)


def test_student_copy_locks_graded_and_locked_cells(solved, tmp_path):
    # regression: JupyterLab let students edit and delete graded cells (no editable/deletable: false)
    grading.release(solved, tmp_path / "dst")
    cells = nbformat.read(tmp_path / "dst" / "a.ipynb", as_version=4).cells
    assert cells[2].metadata["editable"] is False and cells[2].metadata["deletable"] is False
    assert cells[3].metadata["editable"] is False and cells[3].metadata["deletable"] is False
    assert cells[1].metadata.get("editable", True) is True           # the answer cell stays editable


def test_release_respects_the_umask(solved, tmp_path):
    # regression: student notebooks were written 0600 (mkstemp), unreadable to a class
    old = os.umask(0o022)
    try:
        grading.release(solved, tmp_path / "dst")
    finally:
        os.umask(old)
    assert (tmp_path / "dst" / "a.ipynb").stat().st_mode & 0o777 == 0o644


def test_swapped_arguments_are_refused_and_nothing_is_overwritten(solved, tmp_path):
    # regression: `release student/ notebooks/` overwrote the solved notebooks with stubs
    student = tmp_path / "student"
    grading.release(solved, student)
    before = (solved / "a.ipynb").read_bytes()
    for force in (False, True):
        with pytest.raises(grading.ReleaseError, match="no `### BEGIN SOLUTION` blocks.*swapped"):
            grading.release(student, solved, force=force)
    assert (solved / "a.ipynb").read_bytes() == before


def test_existing_copies_need_force(solved, tmp_path):
    grading.release(solved, tmp_path / "dst")
    with pytest.raises(grading.ReleaseError, match="already exists; pass --force"):
        grading.release(solved, tmp_path / "dst")
    assert grading.release(solved, tmp_path / "dst", force=True) == {"a.ipynb": 1}


def test_force_never_overwrites_a_solved_notebook(solved, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    nbformat.write(solved_notebook(), other / "a.ipynb")
    with pytest.raises(grading.ReleaseError, match="holds solutions"):
        grading.release(solved, other, force=True)


@pytest.mark.parametrize("solution, hidden, words", [
    ("def f():\n    ### BEGIN SOLUTION\n    return 42\n", "pass", "cell 1, line 2: `### BEGIN SOLUTION` has no matching"),
    ("def f():\n    ### BEGIN SOLUTION\n    return 42\n    ### END SOLUTON\n", "pass", "cell 1, line 4"),
    ("def f():\n    ### BEGIN SOLUTION\n    return 42\n    ### END SOLUTION", "### BEGIN HIDDEN TESTS\nassert f() == 42\n",
     "cell 2, line 1: `### BEGIN HIDDEN TESTS` has no matching"),
    ("def f():\n    ### BEGIN SOLUTION\n    return 42\n    ### END SOLUTION",
     "### BEGIN HIDDEN TESTS\nassert f() == 42\n## END HIDDEN TESTS", "cell 2, line 3"),
    ("x = 1\n### END SOLUTION", "pass", "with no `### BEGIN SOLUTION`"),
], ids=["no END", "misspelt END", "hidden tests without END", "END with two #", "END without BEGIN"])
def test_unmatched_markers_are_refused_naming_notebook_cell_and_line(tmp_path, solution, hidden, words):
    # regression: these leaked the answer into the student copy with exit 0
    src = tmp_path / "src"
    src.mkdir()
    nbformat.write(solved_notebook(solution, hidden), src / "lab.ipynb")
    nbformat.write(solved_notebook(), src / "b.ipynb")
    with pytest.raises(grading.ReleaseError) as e:
        grading.release(src, tmp_path / "dst")
    assert "lab.ipynb" in str(e.value) and words in str(e.value)
    assert not (tmp_path / "dst").exists()          # refused before writing anything


def test_bad_folders_are_one_line_errors(solved, tmp_path):
    with pytest.raises(grading.ReleaseError, match="does not exist"):
        grading.release(tmp_path / "missing", tmp_path / "dst")
    (tmp_path / "empty").mkdir()
    with pytest.raises(grading.ReleaseError, match="holds no .ipynb"):
        grading.release(tmp_path / "empty", tmp_path / "dst")
    with pytest.raises(grading.ReleaseError, match="dst_dir"):
        grading.release(solved, solved)


@pytest.mark.parametrize("args", [["missing", "dst"], ["empty", "dst"], ["src", "src"], ["dst", "src"]],
                         ids=["missing", "empty", "same", "swapped"])
def test_release_command_line_errors_exit_2_with_one_line(solved, tmp_path, args, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    grading.release(solved, tmp_path / "dst")
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    assert grading.main(["release", *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "release: error:" in err


def test_release_command_line_exit_code(tmp_path):
    run = subprocess.run([sys.executable, "-m", "labkit.grading", "release", str(tmp_path / "no"), str(tmp_path / "d")],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 2 and "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_release_command_line_works(solved, tmp_path):
    run = subprocess.run([sys.executable, "-m", "labkit.grading", "release", str(solved), str(tmp_path / "dst")],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0 and "a.ipynb: 1 solution block(s) removed" in run.stdout


def test_upgrade_graded_cells_rewrites_hidden_tests():
    nb = solved_notebook(hidden="# graded cell\n### BEGIN HIDDEN TESTS\nassert grading.check_tensor_bytes(tensor_bytes, "
                                "quiet=True)\n### END HIDDEN TESTS")
    assert grading.upgrade_graded_cells(nb) == 1
    source = nb.cells[2].source
    assert 'grade("tensor_bytes", tensor_bytes)' in source and "assert grading" not in source
    assert 'sys.modules.pop("labkit.autograde", None)' in source and source.startswith("# graded cell\n### BEGIN")
    assert grading.upgrade_graded_cells(nb) == 0            # idempotent
    compile(source, "cell", "exec")


def test_an_answer_that_cannot_be_compared_is_about_the_answer():
    class Weird:
        def __eq__(self, other):
            raise RuntimeError("no")

        def __repr__(self):
            raise RuntimeError("no repr either")

    result = grading.check_causal_attention(lambda q, k, v: Weird(), quiet=True)
    assert result.status == grading.FAIL and "labkit" not in result.message and "Weird" in result.message


# ---- hidden examples (the grader's fresh process sets a seed) ----------------------------------

@pytest.mark.parametrize("check", list(RIGHT), ids=lambda c: c.__name__)
def test_right_answers_pass_the_hidden_examples_of_many_seeds(check, monkeypatch):
    for seed in range(25):
        monkeypatch.setattr(core, "HIDDEN_SEED", seed)
        result = check(RIGHT[check], quiet=True)
        assert result, f"seed {seed}: {result.message}"


def test_a_table_of_the_public_answers_fails_the_hidden_examples(monkeypatch):
    table = {}

    def spy(L, kv, hd, T, B, a):
        table[(L, kv, hd, T, B, a)] = 2 * L * kv * hd * T * B * a
        return table[(L, kv, hd, T, B, a)]

    assert grading.check_kv_cache_bytes(spy, quiet=True)
    lookup = lambda *args: table.get(args, 0)        # passes every public example ...
    assert grading.check_kv_cache_bytes(lookup, quiet=True)
    monkeypatch.setattr(core, "HIDDEN_SEED", 1234)   # ... but not the grader's hidden ones
    result = grading.check_kv_cache_bytes(lookup, quiet=True)
    assert result.status == grading.FAIL and "a hidden example (grader's seed 1234)" in result.message


def test_upgrade_command_rewrites_a_notebook_in_place(tmp_path, capsys):
    path = tmp_path / "lab.ipynb"
    nbformat.write(solved_notebook(hidden="### BEGIN HIDDEN TESTS\nassert grading.check_tensor_bytes(tensor_bytes, "
                                          "quiet=True)\n### END HIDDEN TESTS"), path)
    assert grading.main(["upgrade-graded-cells", str(path)]) == 0
    assert "1 graded cell(s) upgraded" in capsys.readouterr().out
    assert 'grade("tensor_bytes", tensor_bytes)' in nbformat.read(path, as_version=4).cells[2].source


def test_use_or_fallback_survives_a_replaced_check(capsys):
    # regression: after `grading.check_x = lambda fn, quiet=False: True` in a notebook, use_or_fallback raised
    # AttributeError: 'bool' object has no attribute 'returns' (found running lab 00 with that trick)
    fn = grading.use_or_fallback(math.exp, lambda fn, quiet=False: True, math.exp)
    assert fn(0.0) == 1.0
    assert grading.use_or_fallback(math.exp, lambda fn, quiet=False: False, math.log) is math.log


def test_a_written_answer_cell_is_replaced_as_nbgrader_does(tmp_path):
    # a manually graded written question: the whole markdown cell is the instructor's answer
    src = tmp_path / "src"
    src.mkdir()
    nb = solved_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell("Activations grow with B·T; weights don't.", metadata={
        "nbgrader": {"solution": True, "grade": True, "locked": False, "points": 1, "grade_id": "written"}}))
    nb.cells.append(nbformat.v4.new_code_cell("answer = 42", metadata={"nbgrader": {"solution": True}}))
    nbformat.write(nb, src / "a.ipynb")
    assert grading.release(src, tmp_path / "dst") == {"a.ipynb": 3}
    student = nbformat.read(tmp_path / "dst" / "a.ipynb", as_version=4)
    assert "42" not in student.cells[-1].source and "raise NotImplementedError()" in student.cells[-1].source
    assert student.cells[-2].source == "YOUR ANSWER HERE"
    assert student.cells[-2].metadata.get("editable", True) is True and student.cells[-2].metadata["deletable"] is False


def test_a_written_answer_inside_a_question_cell_becomes_the_stub_as_nbgrader_does():
    # regression: a markdown cell with a BEGIN/END SOLUTION block lost the block without a trace, where
    # nbgrader generate_assignment puts "YOUR ANSWER HERE" in its place (the learner saw no place to answer)
    nb = solved_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell(
        "**Question.** Why?\n\n  ### BEGIN SOLUTION\n  Because the master copy is fp32.\n  ### END SOLUTION\nThanks.",
        metadata={"nbgrader": {"solution": True, "grade": True, "locked": False, "points": 1, "grade_id": "w"}}))
    student = grading.student_copy(nb, "a.ipynb")
    assert student.cells[-1].source == "**Question.** Why?\n\n  YOUR ANSWER HERE\nThanks."


def test_written_answers_of_the_labs_never_reach_a_student_copy(tmp_path):
    """Every lab's answer keys (manual-graded markdown cells) are replaced whole; none of their lines survives."""
    notebooks = Path(__file__).resolve().parent.parent / "notebooks"
    grading.release(notebooks, tmp_path)
    for path in sorted(notebooks.glob("[0-9][0-9]_*.ipynb")):
        keys = {c.metadata["nbgrader"]["grade_id"]: c.source for c in nbformat.read(path, as_version=4).cells
                if c.cell_type == "markdown" and c.metadata.get("nbgrader", {}).get("solution")}
        assert keys, f"{path.name}: no written question"
        student = nbformat.read(tmp_path / path.name, as_version=4)
        text = "\n".join(c.source for c in student.cells)
        for grade_id, key in keys.items():
            cell = next(c for c in student.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)
            assert cell.source == "YOUR ANSWER HERE", f"{path.name}: {grade_id} was not replaced"
            leaked = [line for line in key.splitlines() if len(line.strip()) > 20 and line in text]
            assert not leaked, f"{path.name}: the answer key of {grade_id} leaked: {leaked[0]!r}"


@pytest.mark.parametrize("wrong, hint", [
    (lambda m: sum(t.nbytes for t in m.state_dict().values()), "counted twice"),
    (lambda m: sum(p.nbytes for p in m.parameters()), "buffers are missing"),
    (lambda m: sum(t.numel() for t in [*m.parameters(), *m.buffers()]), "number of elements"),
    (lambda m: sum(4 * t.numel() for t in [*m.parameters(), *m.buffers()]), "charged 4 bytes"),
    (lambda m: sum(t.nbytes for _, t in m.named_parameters(remove_duplicate=False))
     + sum(b.nbytes for b in m.buffers()), "counted twice"),
])
def test_model_bytes_hints(wrong, hint):
    """Lab 00's implement-then-measure exercise: each way of miscounting a model's bytes gets its own hint."""
    result = grading.check_model_bytes(wrong, quiet=True)
    assert not result and hint in result.message, result.message


def test_model_bytes_reference_counts_a_tied_weight_once_and_the_buffers():
    from labkit.memory import model_bytes
    from labkit.model import GPT, GPTConfig
    tied = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8, positions="sinusoidal"))
    params = sum(p.numel() for p in tied.parameters())             # parameters() yields the tied weight once
    buffers = sum(b.numel() for b in tied.buffers())
    assert buffers > 0 and model_bytes(tied) == 4 * (params + buffers)
    assert model_bytes(tied.to(torch.bfloat16)) == 2 * (params + buffers)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        model_bytes("baby-gpt")


def test_a_reference_in_a_keyword_only_default_is_caught():
    """`lambda *a, f=reference: f(*a)` hides the reference in __kwdefaults__: swapped like positional defaults."""
    from labkit.losses import cross_entropy
    sneaky = lambda logits, targets, *, f=cross_entropy: f(logits, targets)   # noqa: E731
    result = grading.check_cross_entropy(sneaky, quiet=True)
    assert result.status == grading.FAIL and "labkit.losses.cross_entropy" in result.message, result.message
    assert sneaky.__kwdefaults__["f"] is cross_entropy                        # restored afterwards


def test_a_reference_handed_in_is_named_not_what_it_calls_inside():
    """Handing in labkit's reference names that reference, even when it stops at a forbidden function it calls."""
    from labkit import quantize
    result = grading.check_group_quantized_bytes(quantize.group_quantized_bytes, quiet=True)
    assert result.status == grading.FAIL and "labkit.quantize.group_quantized_bytes" in result.message, result.message
