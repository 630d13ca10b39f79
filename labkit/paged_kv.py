"""Paged KV cache: keys and values stored in fixed-size blocks with a block table per sequence, as vLLM does.

    cache = PagedKVCache.for_model(model, n_blocks=64)               # block_size=16 tokens per block
    out = paged_generate(model, prompt, n_sequences=4, max_new_tokens=30)   # == GPT.generate, token for token
    kv_blocks_needed(prompt_len=40, output_len=20, block_size=16, n_sequences=4)   # 10 blocks (16 without sharing)
    stats = simulate_serving(request_trace(200, seed=0), "paged", budget_tokens=65536)

`labkit.model.KVCache` (and every server before vLLM) gives each sequence one contiguous slab sized for
the longest context it might reach. Most of that slab is never written: the sequence stops early, and the
slots for tokens it has not generated yet are reserved all the time it runs. A paged cache instead cuts
the storage into blocks of `block_size` tokens (all blocks of one big tensor per layer) and gives a
sequence a block only when its last one is full, like an operating system giving a process pages of
memory. A per-sequence *block table* maps the sequence's logical block i to a physical block; attention
gathers the sequence's keys and values through it. The only waste left is the unfilled tail of each
sequence's last block: fewer than block_size slots per sequence.

What this module takes from vLLM ("Efficient Memory Management for Large Language Model Serving with
PagedAttention", Kwon et al. 2023, and the design of vLLM's block manager: its block allocator, block
tables and copy-on-write tracking, read as documentation; no code copied):
- blocks of 16 tokens (vLLM's default block size), taken from a free list and returned to it;
- a reference count per physical block: several sequences' tables may point at one block, and a block is
  free again only when its count drops to 0;
- forking a sequence (parallel sampling: n continuations of one prompt) copies the block *table* and adds 1
  to each block's count, so the prompt is prefilled and stored once;
- copy on write: appending to a last block that other sequences still share first copies it to a fresh
  block (the writer's count moves to the copy); a writer that finds a count of 1 writes in place, so the
  last of n sharers keeps the original. Full blocks are never written again and stay shared for good.
- (not modelled: vLLM's hashing of full blocks to share prefixes *between* requests, swapping to CPU.)

The request simulator measures the claim of that paper on a synthetic trace: a contiguous cache that
reserves the maximum context per request wastes most of what it reserves (the paper: 60–80%), a paged
one under 4%, and so the same budget holds many more sequences at once.
"""
from __future__ import annotations

import bisect
import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from labkit.memory import kv_cache_bytes
from labkit.model import GPT, apply_rotary, sample_next, split_heads

__all__ = ["kv_blocks_needed", "OutOfBlocks", "PagedKVCache", "paged_generate", "Request", "MIXES", "POLICIES",
           "LLAMA2_7B_KV_BYTES_PER_TOKEN", "request_trace", "simulate_serving", "request_blocks"]


class OutOfBlocks(MemoryError):
    """The paged cache has fewer free blocks than a request needs."""


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


class PagedKVCache:
    """Keys and values of many sequences in `n_blocks` blocks of `block_size` token slots each.

    Storage per layer, for k and for v: (n_blocks, block_size, n_kv_head, head_dim). A sequence is a block
    table (list of physical block numbers) and a length in tokens; `ref_counts[b]` counts the tables that
    point at block b. Bytes of the storage = 2 · n_layer · n_blocks · block_size · n_kv_head · head_dim ·
    element size, the formula `labkit.memory.kv_cache_bytes` evaluates for n_blocks · block_size tokens.
    """

    def __init__(self, n_layer: int, n_kv_head: int, head_dim: int, block_size: int = 16, *, n_blocks: int,
                 dtype: torch.dtype = torch.float32):
        self.n_layer = _check_count("n_layer", n_layer, minimum=1)
        self.n_kv_head = _check_count("n_kv_head", n_kv_head, minimum=1)
        self.head_dim = _check_count("head_dim", head_dim, minimum=1)
        self.block_size = _check_count("block_size", block_size, minimum=1)
        self.n_blocks = _check_count("n_blocks", n_blocks, minimum=1)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        shape = (self.n_layer, self.n_blocks, self.block_size, self.n_kv_head, self.head_dim)
        self.k = torch.zeros(shape, dtype=dtype)
        self.v = torch.zeros(shape, dtype=dtype)
        self.free_blocks: list[int] = list(range(self.n_blocks - 1, -1, -1))  # pop() hands out block 0 first
        self.ref_counts: list[int] = [0] * self.n_blocks
        self.block_tables: dict[int, list[int]] = {}
        self.lengths: dict[int, int] = {}   # tokens stored per sequence
        self.n_copies = 0                   # blocks copied on write so far
        self._next_seq = 0

    @classmethod
    def for_model(cls, model: GPT, n_blocks: int, block_size: int = 16) -> "PagedKVCache":
        """A paged cache shaped for `model`'s layers and key/value heads, in its weights' dtype."""
        if not isinstance(model, GPT):
            raise TypeError(f"model must be a labkit.model.GPT (it has the KV cache), got {type(model).__name__}")
        c = model.config
        return cls(c.n_layer, c.n_kv_head, c.head_dim, block_size, n_blocks=n_blocks, dtype=model.wte.weight.dtype)

    # ---- sequences -------------------------------------------------------------------------------------
    def add_sequence(self) -> int:
        """A new empty sequence (no blocks yet); returns its id."""
        seq = self._next_seq
        self._next_seq += 1
        self.block_tables[seq], self.lengths[seq] = [], 0
        return seq

    def fork(self, seq: int) -> int:
        """A new sequence sharing all of `seq`'s blocks (each block's reference count + 1); returns its id."""
        table = self._table(seq)
        child = self.add_sequence()
        self.block_tables[child], self.lengths[child] = list(table), self.lengths[seq]
        for block in table:
            self.ref_counts[block] += 1
        return child

    def free(self, seq: int) -> None:
        """Drop a sequence: each of its blocks loses a reference; blocks nobody references go back to the free list."""
        table = self._table(seq)
        for block in reversed(table):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                self.free_blocks.append(block)
        del self.block_tables[seq], self.lengths[seq]

    def block_table(self, seq: int) -> list[int]:
        """The physical block numbers of `seq`'s logical blocks 0, 1, ... (a copy)."""
        return list(self._table(seq))

    def _table(self, seq: int) -> list[int]:
        if seq not in self.block_tables:
            raise ValueError(f"seq={seq!r} is not a live sequence of this cache; live: {sorted(self.block_tables)}")
        return self.block_tables[seq]

    # ---- writing ---------------------------------------------------------------------------------------
    def blocks_to_append(self, seq: int, n_tokens: int) -> int:
        """Free blocks that appending n_tokens to `seq` takes (new blocks plus a copy-on-write copy)."""
        table, length = self._table(seq), self.lengths[seq]
        n_tokens = _check_count("n_tokens", n_tokens)
        if n_tokens == 0:
            return 0
        new = _ceil_div(length + n_tokens, self.block_size) - len(table)
        shared_tail = length % self.block_size != 0 and self.ref_counts[table[-1]] > 1
        return new + int(shared_tail)

    def append_slots(self, seq: int, n_tokens: int) -> tuple[Tensor, Tensor]:
        """Make room for n_tokens more tokens of `seq`; returns their (block numbers, offsets in the block).

        Takes new blocks from the free list as the last one fills, and copies a shared, partly filled last
        block first (copy on write). All or nothing: OutOfBlocks, and nothing changes, if blocks run out.
        """
        needed = self.blocks_to_append(seq, n_tokens)
        if needed > len(self.free_blocks):
            raise OutOfBlocks(f"appending {n_tokens} tokens to sequence {seq} needs {needed} free blocks of "
                              f"{self.block_size} tokens; {len(self.free_blocks)} of {self.n_blocks} are free")
        table, length = self.block_tables[seq], self.lengths[seq]
        if n_tokens and length % self.block_size and self.ref_counts[table[-1]] > 1:
            old = table[-1]                               # shared and not full: copy it before writing
            new = self.free_blocks.pop()
            self.k[:, new], self.v[:, new] = self.k[:, old], self.v[:, old]
            self.ref_counts[old] -= 1
            self.ref_counts[new] = 1
            table[-1] = new
            self.n_copies += 1
        while len(table) * self.block_size < length + n_tokens:
            block = self.free_blocks.pop()
            self.ref_counts[block] = 1
            table.append(block)
        positions = torch.arange(length, length + n_tokens)
        self.lengths[seq] = length + n_tokens
        blocks = torch.tensor(table, dtype=torch.long)[positions // self.block_size]
        return blocks, positions % self.block_size

    def write(self, layer: int, slots: tuple[Tensor, Tensor], k: Tensor, v: Tensor) -> None:
        """Store one layer's keys and values, k and v (n_tokens, n_kv_head, head_dim), in `slots` from append_slots."""
        self._check_layer(layer)
        blocks, offsets = slots
        expected = (len(blocks), self.n_kv_head, self.head_dim)
        for name, x in (("k", k), ("v", v)):
            if not isinstance(x, Tensor) or tuple(x.shape) != expected:
                raise ValueError(f"{name} must be a tensor of shape (n_tokens, n_kv_head, head_dim) = {expected}, "
                                 f"got {tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        self.k[layer, blocks, offsets] = k.to(self.k.dtype)
        self.v[layer, blocks, offsets] = v.to(self.v.dtype)

    def append(self, seq: int, k: Tensor, v: Tensor) -> None:
        """Append tokens with keys and values of every layer, k and v (n_layer, n_tokens, n_kv_head, head_dim)."""
        if not isinstance(k, Tensor) or k.dim() != 4 or k.size(0) != self.n_layer:
            raise ValueError(f"k must be a tensor (n_layer={self.n_layer}, n_tokens, n_kv_head, head_dim), got "
                             f"{tuple(k.shape) if isinstance(k, Tensor) else type(k).__name__}")
        slots = self.append_slots(seq, k.size(1))
        for layer in range(self.n_layer):
            self.write(layer, slots, k[layer], v[layer])

    # ---- reading ---------------------------------------------------------------------------------------
    def keys_values(self, seq: int, layer: int) -> tuple[Tensor, Tensor]:
        """`seq`'s keys and values of `layer`, gathered through its block table: each (n_kv_head, length, head_dim)."""
        table, length = self._table(seq), self.lengths[seq]
        self._check_layer(layer)
        index = torch.tensor(table, dtype=torch.long)
        k = self.k[layer, index].reshape(-1, self.n_kv_head, self.head_dim)[:length]
        v = self.v[layer, index].reshape(-1, self.n_kv_head, self.head_dim)[:length]
        return k.transpose(0, 1), v.transpose(0, 1)

    def _check_layer(self, layer: int) -> None:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.n_layer:
            raise ValueError(f"layer must be an int in [0, {self.n_layer}), got {layer!r}")

    # ---- accounting ------------------------------------------------------------------------------------
    @property
    def bytes_per_block(self) -> int:
        """Bytes one block takes: k and v of every layer for block_size tokens."""
        return 2 * self.k[:, 0].nbytes

    @property
    def nbytes(self) -> int:
        """Bytes of the whole block storage (k and v, all blocks, used or not)."""
        return self.k.nbytes + self.v.nbytes

    def filled_slots(self) -> int:
        """Token slots holding a key/value (a slot shared by several tables counts once)."""
        return sum(entry["filled"] for entry in self.block_map())

    def block_map(self) -> list[dict]:
        """Every physical block in storage order: its reference count, filled slots and the sequences using it."""
        owners: dict[int, list[int]] = {}
        filled: dict[int, int] = {}
        for seq, table in self.block_tables.items():
            for i, block in enumerate(table):
                owners.setdefault(block, []).append(seq)
                tokens = min(self.block_size, self.lengths[seq] - i * self.block_size)
                filled[block] = max(filled.get(block, 0), tokens)
        return [{"block": b, "ref_count": self.ref_counts[b], "filled": filled.get(b, 0),
                 "sequences": owners.get(b, [])} for b in range(self.n_blocks)]

    def stats(self) -> dict:
        """Blocks used and free, tokens stored, reserved-but-empty slots ("waste") and bytes."""
        used = self.n_blocks - len(self.free_blocks)
        filled = self.filled_slots()
        reserved = used * self.block_size
        return {
            "n_blocks": self.n_blocks, "block_size": self.block_size, "blocks_used": used,
            "blocks_free": len(self.free_blocks), "n_sequences": len(self.block_tables),
            "tokens_stored": filled,                                  # physical slots written
            "sequence_tokens": sum(self.lengths.values()),            # what per-sequence caches would store
            "slots_reserved": reserved, "waste_slots": reserved - filled,
            "waste_fraction": (reserved - filled) / reserved if reserved else 0.0,
            "bytes_per_block": self.bytes_per_block, "reserved_bytes": used * self.bytes_per_block,
            "storage_bytes": self.nbytes, "copies_on_write": self.n_copies,
        }


def _attention_through_cache(block, x: Tensor, cache: PagedKVCache, slots: dict[int, tuple[Tensor, Tensor]],
                             layer: int, rope: tuple[Tensor, Tensor] | None) -> Tensor:
    """block.attn's forward with keys/values written to and read from the paged cache, x (n_seqs, T, C).

    The same operations as labkit.model.CausalSelfAttention.forward with its KVCache: qkv, split heads,
    rotate (rotary), store this step's k/v (in the `slots` append_slots made, one entry per sequence, in x's
    row order), attend over all stored ones, proj. The sequences have equal lengths, so their gathered
    keys and values stack into one batch, the shape GPT.generate's batched cache has.
    """
    attn = block.attn
    B, T, C = x.shape
    q, k, v = attn.qkv(x).split([attn.n_head * attn.head_dim, attn.n_kv_head * attn.head_dim,
                                 attn.n_kv_head * attn.head_dim], dim=2)
    q = split_heads(q, attn.n_head)
    k, v = split_heads(k, attn.n_kv_head), split_heads(v, attn.n_kv_head)   # (B, nkv, T, hd)
    if rope is not None:
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
    keys, values = [], []
    for i, (seq, seq_slots) in enumerate(slots.items()):
        cache.write(layer, seq_slots, k[i].transpose(0, 1), v[i].transpose(0, 1))
        seq_k, seq_v = cache.keys_values(seq, layer)                  # (nkv, length, hd)
        keys.append(seq_k), values.append(seq_v)
    k, v = torch.stack(keys), torch.stack(values)                    # (B, nkv, length, hd)
    groups = attn.n_head // attn.n_kv_head
    if groups > 1:  # GQA/MQA: each key/value head serves `groups` query heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    # a prefill (T > 1, empty cache) is causal; one new token may look at every stored one
    y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
    return attn.proj(y.transpose(1, 2).reshape(B, T, attn.n_head * attn.head_dim))


def _forward_through_cache(model: GPT, idx: Tensor, cache: PagedKVCache, seqs: list[int]) -> Tensor:
    """Last-position logits (len(seqs), V) of `idx` (len(seqs), T): the GPT's forward reading the paged cache."""
    T = idx.size(1)
    start = cache.lengths[seqs[0]]
    if T > 1 and start > 0:
        raise ValueError("multi-token chunks are only supported into an empty sequence (a prefill)")
    slots = {seq: cache.append_slots(seq, T) for seq in seqs}
    x, rope = model.embed(idx, start)       # no dropout: generation runs in eval mode
    for layer, block in enumerate(model.blocks):
        x = x + _attention_through_cache(block, block.ln_1(x), cache, slots, layer, rope)
        x = x + block.mlp(block.ln_2(x))
    return model.lm_head(model.ln_f(x))[:, -1, :]


@torch.no_grad()
def paged_generate(model: GPT, prompt: Tensor, n_sequences: int, max_new_tokens: int, temperature: float = 0.0,
                   generator: torch.Generator | None = None, block_size: int = 16, top_k: int | None = None,
                   cache: PagedKVCache | None = None) -> Tensor:
    """n_sequences continuations of one prompt (T,) through a paged KV cache: (n_sequences, T + max_new_tokens).

    The prompt is prefilled once into one sequence, which is forked n_sequences − 1 times (its blocks shared);
    then every step feeds each sequence's newest token and samples all of them at once. The tokens equal
    GPT.generate(prompt.repeat(n, 1), max_new_tokens, temperature, top_k, generator=...) with its normal cache:
    greedy exactly; sampled too, because the draws happen in the same order (one torch.multinomial over the
    (n, V) probabilities per step, from the same generator) — as long as the logits agree bit for bit, which
    holds on this CPU (the test checks it) but is not promised by floating point across kernels.
    The cache keeps P + max_new_tokens − 1 tokens per sequence (the last sampled token is never fed back):
    without `cache`, one of exactly kv_blocks_needed(P, max_new_tokens − 1, block_size, n) blocks is made;
    the cache (with its sequences still live) is left in `paged_generate.last_cache` for measurement.
    """
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a labkit.model.GPT, got {type(model).__name__}")
    if not isinstance(prompt, Tensor) or prompt.dim() != 1 or prompt.numel() == 0 or prompt.is_floating_point():
        raise ValueError(f"prompt must be a non-empty 1-D tensor of token ids (T,), got "
                         f"{tuple(prompt.shape) if isinstance(prompt, Tensor) else type(prompt).__name__}")
    n_sequences = _check_count("n_sequences", n_sequences, minimum=1)
    max_new_tokens = _check_count("max_new_tokens", max_new_tokens)
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    T = prompt.numel()
    if T + max(max_new_tokens - 1, 0) > model.block_size:
        raise ValueError(f"prompt of {T} tokens + max_new_tokens={max_new_tokens} needs {T + max_new_tokens - 1} "
                         f"positions; the model has block_size={model.block_size} (GPT.generate would slide a window "
                         "and recompute, which a paged cache does not model); allowed: T + max_new_tokens - 1 <= "
                         f"{model.block_size}")
    if cache is None:
        n_blocks = max(kv_blocks_needed(T, max(max_new_tokens - 1, 0), block_size, n_sequences), 1)
        cache = PagedKVCache.for_model(model, n_blocks=n_blocks, block_size=block_size)
    was_training = model.training
    model.eval()
    try:
        idx = prompt.reshape(1, T).repeat(n_sequences, 1)
        if max_new_tokens > 0:
            first = cache.add_sequence()
            logits = _forward_through_cache(model, prompt.reshape(1, T), cache, [first])
            seqs = [first] + [cache.fork(first) for _ in range(n_sequences - 1)]
            logits = logits.expand(n_sequences, -1)
            for step in range(max_new_tokens):
                if step > 0:
                    logits = _forward_through_cache(model, idx[:, -1:], cache, seqs)
                idx = torch.cat([idx, sample_next(logits, temperature, top_k, generator)], dim=1)
    finally:
        model.train(was_training)
    paged_generate.last_cache = cache
    return idx


# ---- serving simulator ----------------------------------------------------------------------------------
MIXES = ("chat", "long", "mixed")
POLICIES = ("contiguous", "paged", "paged+sharing")
# keys and values of one token in a LLaMA-2-7B-shaped model in fp16: 2 · 32 layers · 32 heads · 128 · 2 bytes
LLAMA2_7B_KV_BYTES_PER_TOKEN = kv_cache_bytes(n_layer=32, n_kv_head=32, head_dim=128, seq_len=1, dtype="fp16")


@dataclass(frozen=True)
class Request:
    """One request of a serving trace: n_samples continuations of one prompt (lengths in tokens, time in steps)."""
    id: int
    arrival_step: int
    prompt_len: int
    output_len: int   # generated tokens per sample whose keys/values are stored
    n_samples: int = 1


def _lognormal_lengths(rng: np.random.Generator, n: int, median: float, sigma: float) -> np.ndarray:
    return np.maximum(1, np.round(rng.lognormal(math.log(median), sigma, n))).astype(int)


def request_trace(n_requests: int, seed: int = 0, mix: str = "chat", max_context: int = 2048,
                  arrivals_per_step: float = 1.0, parallel_fraction: float = 0.25) -> list[Request]:
    """A synthetic serving trace: Poisson arrivals (per decoding step), prompt/output lengths of a mix.

    Lengths are log-normal, clipped so prompt + output <= max_context:
    - "chat": prompts of median 120 tokens, answers of median 250 (means ≈ 165 and ≈ 340, close to the
      ShareGPT conversations of the vLLM paper: 161 and 338 on average);
    - "long": documents to summarise or question, prompts of median 1000 tokens, answers of median 150;
    - "mixed": each request is "long" with probability 0.3, else "chat".
    A `parallel_fraction` of the requests ask for 2 or 4 samples of one prompt (parallel sampling), whose
    prompt a "paged+sharing" cache stores once. Deterministic for a given seed.
    """
    n_requests = _check_count("n_requests", n_requests, minimum=1)
    seed = _check_count("seed", seed)
    max_context = _check_count("max_context", max_context, minimum=2)
    if mix not in MIXES:
        raise ValueError(f"mix={mix!r}; allowed: {MIXES}")
    if isinstance(arrivals_per_step, bool) or not isinstance(arrivals_per_step, numbers.Real) \
            or not 0 < arrivals_per_step < math.inf:
        raise ValueError(f"arrivals_per_step must be a number > 0, got {arrivals_per_step!r}")
    if isinstance(parallel_fraction, bool) or not isinstance(parallel_fraction, numbers.Real) \
            or not 0 <= parallel_fraction <= 1:
        raise ValueError(f"parallel_fraction must be in [0, 1], got {parallel_fraction!r}")
    rng = np.random.default_rng(seed)
    arrivals = np.floor(np.cumsum(rng.exponential(1 / arrivals_per_step, n_requests))).astype(int)
    long = rng.random(n_requests) < {"chat": 0.0, "long": 1.0, "mixed": 0.3}[mix]
    prompt = np.where(long, _lognormal_lengths(rng, n_requests, 1000, 0.4),
                      _lognormal_lengths(rng, n_requests, 120, 0.8))
    output = np.where(long, _lognormal_lengths(rng, n_requests, 150, 0.6),
                      _lognormal_lengths(rng, n_requests, 250, 0.8))
    prompt = np.minimum(prompt, max_context - 1)
    output = np.minimum(output, max_context - prompt)
    samples = np.where(rng.random(n_requests) < parallel_fraction, rng.choice([2, 4], n_requests), 1)
    return [Request(i, int(a), int(p), int(o), int(s))
            for i, (a, p, o, s) in enumerate(zip(arrivals, prompt, output, samples))]


def request_blocks(policy: str, prompt_len: np.ndarray, generated: np.ndarray, n_samples: np.ndarray,
                   block_size: int, max_context: int) -> tuple[np.ndarray, np.ndarray]:
    """(reserved, filled) token slots of requests with `generated` tokens per sample stored, under `policy`.

    contiguous: every sample reserves max_context slots at admission (what servers before vLLM did);
    paged: every sample holds ceil((prompt + generated) / block_size) blocks of its own;
    paged+sharing: kv_blocks_needed(prompt, generated, block_size, n_samples) blocks: the prompt's full
    blocks once, the partial prompt block copied by each sample once it writes. Filled slots count a
    shared slot once and a copied one again (the copy is real storage).
    """
    own_tokens = n_samples * (prompt_len + generated)
    if policy == "contiguous":
        return n_samples * max_context, own_tokens
    if policy == "paged":
        return n_samples * -(-(prompt_len + generated) // block_size) * block_size, own_tokens
    full, partial = np.divmod(prompt_len, block_size)
    writing = generated > 0
    blocks = np.where(writing, full + n_samples * -(-(partial + generated) // block_size),
                      -(-prompt_len // block_size))
    filled = np.where(writing, full * block_size + n_samples * (partial + generated), prompt_len)
    return blocks * block_size, filled


def simulate_serving(trace: list[Request], policy: str = "paged", budget_bytes: int | None = None,
                     budget_tokens: int | None = None, block_size: int = 16,
                     kv_bytes_per_token: int = LLAMA2_7B_KV_BYTES_PER_TOKEN, max_context: int = 2048,
                     watermark: float = 0.01, fast_forward: bool = True) -> dict:
    """Serve `trace` one decoding step at a time in a fixed KV budget; the memory timeline and its waste.

    Each step (iteration-level scheduling, as Orca and vLLM do): every running sample stores one more
    token; a paged cache that no longer fits preempts the most recently arrived request: its blocks are
    freed and it is restarted from its prompt later, decoding its tokens again one step each (vLLM's recompute
    preemption keeps the tokens and rebuilds their KV in one prefill, so this simulation is pessimistic for
    the paged policies' step counts and latencies; contiguous never preempts); waiting requests are admitted
    first come first served while their admission memory fits (contiguous: max_context slots per sample;
    paged: the prompt's blocks, keeping `watermark` of the blocks free, vLLM's default 1%); the step is
    recorded; requests whose samples have all output_len tokens finish and free their memory. A request
    that could never run is rejected: it needs more than the whole budget at its end, or its admission memory
    is above the budget less the watermark. Give the budget as budget_bytes or budget_tokens.
    Stretches of steps where only growth happens are computed at once (fast_forward=False: one step at a
    time, the same timeline, slower: the tests compare the two).
    Returns the per-step timeline (reserved and used bytes, running sequences and requests, waiting
    requests) and its summary: waste_fraction = Σ(reserved − used) / Σ reserved over the steps, the
    maximum and mean number of sequences running at once (the mean over the recorded steps: idle gaps
    before an arrival are skipped; and over the steps where arrived requests wait, when memory and not
    demand is the limit: None if none waited), finished/rejected requests, preemptions, latency in steps.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy={policy!r}; allowed: {POLICIES}")
    block_size = _check_count("block_size", block_size, minimum=1)
    kv_bytes_per_token = _check_count("kv_bytes_per_token", kv_bytes_per_token, minimum=1)
    max_context = _check_count("max_context", max_context, minimum=1)
    if (budget_bytes is None) == (budget_tokens is None):
        raise ValueError(f"give exactly one of budget_bytes and budget_tokens, got budget_bytes={budget_bytes!r}, "
                         f"budget_tokens={budget_tokens!r}")
    if budget_tokens is None:
        budget_tokens = _check_count("budget_bytes", budget_bytes, minimum=1) // kv_bytes_per_token
    budget_tokens = _check_count("budget_tokens", budget_tokens, minimum=1)
    if isinstance(watermark, bool) or not isinstance(watermark, numbers.Real) or not 0 <= watermark < 1:
        raise ValueError(f"watermark must be a fraction in [0, 1), got {watermark!r}")
    if not isinstance(trace, (list, tuple)) or not trace or not all(isinstance(r, Request) for r in trace):
        raise TypeError("trace must be a non-empty list of Request (see request_trace)")
    for r in trace:
        if r.prompt_len < 1 or r.output_len < 1 or r.n_samples < 1 or r.arrival_step < 0 \
                or r.prompt_len + r.output_len > max_context:
            raise ValueError(f"request {r} needs prompt_len, output_len, n_samples >= 1, arrival_step >= 0 and "
                             f"prompt_len + output_len <= max_context={max_context}")

    # capacity in token slots: a paged cache has whole blocks only
    capacity = budget_tokens if policy == "contiguous" else budget_tokens // block_size * block_size
    kept_free = 0 if policy == "contiguous" else math.ceil(watermark * capacity / block_size) * block_size
    admit_limit = capacity - kept_free
    order = sorted(range(len(trace)), key=lambda i: (trace[i].arrival_step, trace[i].id))
    prompt = np.array([trace[i].prompt_len for i in order])
    output = np.array([trace[i].output_len for i in order])
    samples = np.array([trace[i].n_samples for i in order])
    arrival = np.array([trace[i].arrival_step for i in order])
    generated = np.zeros(len(order), dtype=int)
    final, _ = request_blocks(policy, prompt, output, samples, block_size, max_context)
    start, start_filled = request_blocks(policy, prompt, np.zeros_like(prompt), samples, block_size, max_context)
    # could not run even alone: its final memory exceeds the budget, or its prompt alone is above what admission
    # allows (the budget less the watermark) — it would wait forever
    never = (final > capacity) | (start > admit_limit)
    rejected_before = np.concatenate([[0], np.cumsum(never)])   # rejected among the first k arrivals
    waiting = [i for i in range(len(order)) if not never[i]]   # request positions, in arrival order
    running = np.zeros(0, dtype=int)
    finish_step = np.full(len(order), -1)
    timeline = {"step": [], "reserved_bytes": [], "used_bytes": [], "running_sequences": [],
                "running_requests": [], "waiting_requests": []}
    preemptions, n_finished, step = 0, 0, 0
    # every recorded step either adds a token to the oldest running request (never preempted: it fits alone) or
    # starts from an empty cache, so the simulation ends within this many steps; more would be a bug, not a wait
    max_steps = int(output[~never].sum()) + len(order)

    def record(steps, reserved_slots, used_slots) -> None:
        arrived = np.searchsorted(arrival, steps, side="right")
        n_waiting = arrived - rejected_before[arrived] - len(running) - n_finished
        columns = (steps, reserved_slots * kv_bytes_per_token, used_slots * kv_bytes_per_token,
                   np.full(len(steps), samples[running].sum()), np.full(len(steps), len(running)), n_waiting)
        for key, column in zip(timeline, columns):
            timeline[key].extend(np.asarray(column, dtype=np.int64).tolist())

    while waiting or len(running):
        if len(timeline["step"]) > max_steps:
            raise RuntimeError(f"simulate_serving made no progress: {len(timeline['step'])} steps recorded, more than "
                               f"the {max_steps} this trace can take ({len(waiting)} requests waiting, "
                               f"{len(running)} running)")
        if not len(running) and arrival[waiting[0]] > step:
            step = int(arrival[waiting[0]])        # idle until the next request arrives
        # fast-forward the steps in which nothing but growth happens (no finish, admission or preemption):
        # the same rules as the step below, evaluated for many steps at once
        quiet = int((output[running] - generated[running]).min()) - 1 if len(running) and fast_forward else 0
        if quiet > 0:
            ahead = np.arange(1, min(quiet, 512) + 1)
            grown = generated[running][:, None] + ahead[None, :]
            reserved, used = request_blocks(policy, prompt[running][:, None], grown, samples[running][:, None],
                                            block_size, max_context)
            reserved_sum = np.broadcast_to(reserved, grown.shape).sum(axis=0)
            steps = step + ahead - 1
            event = reserved_sum > capacity
            if waiting:
                event |= (arrival[waiting[0]] <= steps) & (reserved_sum + start[waiting[0]] <= admit_limit)
            n_quiet = int(np.argmax(event)) if event.any() else len(ahead)
            if n_quiet:
                record(steps[:n_quiet], reserved_sum[:n_quiet], used.sum(axis=0)[:n_quiet])
                generated[running] += n_quiet
                step += n_quiet
        generated[running] += 1
        reserved, used = request_blocks(policy, prompt[running], generated[running], samples[running],
                                        block_size, max_context)
        total = int(reserved.sum())
        preempted = total > capacity
        while total > capacity:                    # paged caches grow: preempt the latest arrival
            victim = int(np.argmax(running))
            total -= int(reserved[victim])
            generated[running[victim]] = 0
            bisect.insort(waiting, int(running[victim]))
            running = np.delete(running, victim)
            reserved, used = np.delete(reserved, victim), np.delete(used, victim)
            preemptions += 1
        used_total = int(used.sum())
        admitted = []
        # no admissions in a step that had to preempt (as vLLM's scheduler): memory is short right now
        while not preempted and waiting and arrival[waiting[0]] <= step and total + start[waiting[0]] <= admit_limit:
            i = waiting.pop(0)
            admitted.append(i)
            total += int(start[i])
            used_total += int(start_filled[i])
        if admitted:
            running = np.concatenate([running, admitted])
        record(np.array([step]), np.array([total]), np.array([used_total]))
        done = generated[running] >= output[running]
        if done.any():
            finish_step[running[done]] = step
            n_finished += int(done.sum())
            running = running[~done]
        step += 1
    finish_step = finish_step[np.argsort(order)]   # back to the trace's order
    reserved_sum = sum(timeline["reserved_bytes"])
    running_seqs, queued = np.array(timeline["running_sequences"]), np.array(timeline["waiting_requests"]) > 0
    finished = finish_step >= 0
    latency = finish_step[finished] - np.array([r.arrival_step for r in trace])[finished]
    return {
        "policy": policy, "block_size": block_size, "budget_tokens": budget_tokens,
        "budget_bytes": budget_tokens * kv_bytes_per_token, "kv_bytes_per_token": kv_bytes_per_token,
        "max_context": max_context, "timeline": timeline, "n_steps": len(timeline["step"]),
        "waste_fraction": (reserved_sum - sum(timeline["used_bytes"])) / reserved_sum if reserved_sum else 0.0,
        "peak_reserved_bytes": max(timeline["reserved_bytes"], default=0),
        "max_concurrent_sequences": max(timeline["running_sequences"], default=0),
        "mean_concurrent_sequences": float(np.mean(timeline["running_sequences"])) if timeline["step"] else 0.0,
        # while requests wait (memory, not demand, is the limit): how many sequences the budget holds
        "mean_concurrent_sequences_queued": float(np.mean(running_seqs[queued])) if queued.any() else None,
        "max_concurrent_requests": max(timeline["running_requests"], default=0),
        "finished_requests": int(finished.sum()), "rejected_requests": int(never.sum()),
        "preemptions": preemptions, "last_step": int(finish_step.max()) if finished.any() else -1,
        "mean_latency_steps": float(latency.mean()) if len(latency) else 0.0,
    }
