"""labkit.distill's references for lab 06's exercises: teacher_targets_bytes is cache_bytes' formula and the bytes of
real arrays; bad input is named."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from labkit import distill as D


@pytest.mark.parametrize("vocab_size", [84, 300, 50_257])
@pytest.mark.parametrize("top_k", [None, 1, 8, "V"])
@pytest.mark.parametrize("value_dtype", ["fp16", "fp32"])
def test_teacher_targets_bytes_is_what_a_drop_cache_stores(vocab_size, top_k, value_dtype):
    top_k = vocab_size if top_k == "V" else top_k
    steps, batch, block = 7, 3, 16
    value_bytes = np.dtype(D.VALUE_DTYPES[value_dtype]).itemsize
    index_bytes = D.index_dtype(vocab_size).itemsize
    expected = D.cache_bytes(steps, batch, block, vocab_size, top_k, value_dtype, tail="drop")["targets"]
    assert D.teacher_targets_bytes(steps * batch * block, vocab_size, top_k, value_bytes, index_bytes) == expected


@pytest.mark.parametrize("top_k", [None, 4, 84])
def test_teacher_targets_bytes_counts_the_arrays_a_cache_would_hold(top_k):
    # measured: the nbytes of the values (fp16) and token ids (uint8 for 84 tokens) of real teacher logits
    logits = torch.randn(50, 84, generator=torch.Generator().manual_seed(0))
    if top_k is None:
        arrays = [logits.numpy().astype(np.float16)]
    else:
        values, indices = D.top_k_logits(logits, top_k)
        arrays = [values.numpy().astype(np.float16), indices.numpy().astype(D.index_dtype(84))]
    assert D.teacher_targets_bytes(50, 84, top_k, 2, 1) == sum(a.nbytes for a in arrays)


def test_teacher_targets_bytes_full_logits_need_no_ids_and_top_k_is_cheaper_below_the_break_even():
    assert D.teacher_targets_bytes(10, 84, None, 2, 1) == 10 * 84 * 2
    assert D.teacher_targets_bytes(10, 84, 8, 2, 1) == 10 * 8 * 3
    assert D.teacher_targets_bytes(0, 84, 8, 2, 1) == 0
    # top k beats full logits while k · (v + i) < V · v: here up to k = 55 of 84; at k = 56 they are equal
    full = D.teacher_targets_bytes(10, 84, None, 2, 1)
    assert D.teacher_targets_bytes(10, 84, 55, 2, 1) < full == D.teacher_targets_bytes(10, 84, 56, 2, 1)


@pytest.mark.parametrize("kwargs, words", [
    (dict(n_tokens=-1), "n_tokens must be an integer >= 0, got -1"),
    (dict(n_tokens=2.5), "n_tokens must be an integer >= 0, got 2.5"),
    (dict(vocab_size=0), "vocab_size must be an integer >= 1, got 0"),
    (dict(top_k=0), "top_k must be None (keep all 84 logits) or an integer in [1, 84]"),
    (dict(top_k=85), "got 85"),
    (dict(value_bytes=0), "value_bytes must be an integer >= 1, got 0"),
    (dict(index_bytes=True), "index_bytes must be an integer >= 1, got True"),
])
def test_teacher_targets_bytes_names_bad_input(kwargs, words):
    args = dict(n_tokens=10, vocab_size=84, top_k=8, value_bytes=2, index_bytes=1) | kwargs
    with pytest.raises(ValueError) as e:
        D.teacher_targets_bytes(**args)
    assert words in str(e.value)
