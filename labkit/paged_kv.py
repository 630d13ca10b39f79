"""Paged KV cache: keys and values stored in fixed-size blocks, as vLLM stores them.

    kv_blocks_needed(prompt_len=40, output_len=20, block_size=16, n_sequences=4)   # blocks for 4 samples of one prompt

(The cache, the generation through it and the request simulator follow below as they land.)
"""
from __future__ import annotations

import numbers

__all__ = ["kv_blocks_needed"]


def _check_count(name: str, value, minimum: int = 0) -> int:
    """`value` as an int if it is an integer (numpy's too) >= minimum, else a ValueError naming it."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum:
        return int(value)
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def kv_blocks_needed(prompt_len: int, output_len: int, block_size: int, n_sequences: int = 1,
                     shared_prefix: bool = True) -> int:
    """KV blocks (of `block_size` tokens each) that n_sequences continuations of one prompt hold at the end.

    `output_len` counts the generated tokens whose keys and values are in the cache (each sequence stores
    prompt_len + output_len tokens). The rule, which a real `PagedKVCache` reproduces block for block:

    - without sharing every sequence has its own table: n_sequences · ceil((prompt_len + output_len) / block_size);
    - with a shared prefix the prompt is prefilled once and every sequence's table points at its blocks.
      The prompt's FULL blocks are never written again, so they are stored once: prompt_len // block_size.
      The partly filled last prompt block (prompt_len mod block_size tokens) is copied on write by every
      sequence that appends to it while others still share it; the last writer finds a reference count of 1
      and keeps the original, so each sequence ends up owning ceil((prompt_len mod block_size + output_len)
      / block_size) blocks (0 when the prompt fills its blocks exactly and nothing is generated).
    - one refinement of the plain formula: with output_len == 0 nobody writes, nothing is copied, and the
      partial block stays shared: ceil(prompt_len / block_size) blocks in all.
    """
    prompt_len = _check_count("prompt_len", prompt_len)
    output_len = _check_count("output_len", output_len)
    block_size = _check_count("block_size", block_size, minimum=1)
    n_sequences = _check_count("n_sequences", n_sequences, minimum=1)
    if not isinstance(shared_prefix, bool):
        raise TypeError(f"shared_prefix must be True or False, got {shared_prefix!r}")
    if not shared_prefix:
        return n_sequences * _ceil_div(prompt_len + output_len, block_size)
    if output_len == 0:
        return _ceil_div(prompt_len, block_size)
    full_prompt_blocks, partial = divmod(prompt_len, block_size)
    return full_prompt_blocks + n_sequences * _ceil_div(partial + output_len, block_size)
