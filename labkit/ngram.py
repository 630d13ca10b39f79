"""Count-based n-gram language models: count, smooth with add-k, score, sample.

    counts = ngram_counts(train_ids, n=3, vocab_size=V)     # (V, V, V) int64: counts[a, b, c] = times c followed "ab"
    probs = ngram_probabilities(counts, k=0.1)              # (V, V, V) float64, P(next | context), sums to 1 over the last dim
    model = NGramModel.fit(train_ids, n=3, vocab_size=V, k=0.1)   # the same, stored as a float32 table
    model.cross_entropy(val_ids)                           # nats per token on a split
    model.sample(prompt_ids, 200, generator=torch.Generator().manual_seed(0))

An n-gram model predicts token t from the n - 1 tokens before it, so it keeps one row of V
probabilities per context: a table of V**n numbers (`ngram_table_bytes`). Lab 01 derives all of
this by hand and checks its derivation against this module.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

MAX_TABLE_CELLS = 2**28  # refuse to allocate a count table larger than this (2 GiB of int64)


# ----------------------------------------------------------------------------- validation

def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n (the n-gram order) must be an integer >= 1, got {n!r}")
    return int(n)


def _check_k(k: float) -> float:
    k = float(k)
    if not (k >= 0 and math.isfinite(k)):  # also rejects nan
        raise ValueError(f"k (the add-k smoothing count) must be a finite number >= 0, got {k}")
    return k


def _as_ids(tokens: np.ndarray | Tensor | Sequence[int], vocab_size: int) -> Tensor:
    """Token ids as a 1-D int64 tensor, after checking they are integers in [0, vocab_size)."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
        raise ValueError(f"vocab_size must be an integer >= 1, got {vocab_size!r}")
    if isinstance(tokens, Tensor):
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")
        ids = tokens
    else:  # numpy array (e.g. a read-only uint8 memmap) or a list: copied into a fresh int64 tensor
        arr = np.asarray(tokens)
        if arr.dtype.kind not in "iu" and arr.size:  # (an empty list has no dtype of its own)
            raise ValueError(f"tokens must be integer ids, got dtype {arr.dtype}")
        ids = torch.from_numpy(arr.astype(np.int64))
    if ids.dim() != 1:
        raise ValueError(f"tokens must be a 1-D sequence of ids, got shape {tuple(ids.shape)}")
    ids = ids.to(torch.int64)
    if ids.numel() and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = ids[(ids < 0) | (ids >= vocab_size)][0].item()
        raise ValueError(f"tokens must be ids in [0, {vocab_size}) (the vocabulary), got {bad}")
    return ids


# ----------------------------------------------------------------------------- counting and smoothing

def ngram_table_bytes(vocab_size: int, n: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of a dense n-gram probability table: vocab_size**n entries of `dtype` (nothing is allocated)."""
    return vocab_size ** _check_n(n) * torch.empty((), dtype=dtype).element_size()


def ngram_ids(tokens: np.ndarray | Tensor | Sequence[int], n: int, vocab_size: int) -> Tensor:
    """Each of the len(tokens) - n + 1 n-grams as one int64 in [0, V**n); the first token is the most significant digit."""
    n, ids = _check_n(n), _as_ids(tokens, vocab_size)
    m = max(len(ids) - n + 1, 0)  # number of complete n-grams
    flat = torch.zeros(m, dtype=torch.int64)
    for j in range(n):  # base-V number: flat = ids[t] * V**(n-1) + ... + ids[t+n-1]
        flat = flat * vocab_size + ids[j:j + m]
    return flat


def ngram_counts(tokens: np.ndarray | Tensor | Sequence[int], n: int, vocab_size: int) -> Tensor:
    """How often each n-gram occurs in `tokens`: int64 tensor of shape (V,)*n, counts[a, b] = times b followed a (n=2)."""
    n = _check_n(n)
    cells = vocab_size ** n
    if cells > MAX_TABLE_CELLS:
        raise ValueError(f"a {n}-gram table over {vocab_size} tokens has {cells:,} cells "
                         f"(> {MAX_TABLE_CELLS:,}, {ngram_table_bytes(vocab_size, n, torch.int64):,} bytes of counts): "
                         "too large to count densely")
    return torch.bincount(ngram_ids(tokens, n, vocab_size), minlength=cells).reshape((vocab_size,) * n)


def ngram_probabilities(counts: Tensor | np.ndarray, k: float) -> Tensor:
    """Add-k smoothed P(next | context) = (c + k) / sum_next (c + k), float64, normalised over the last dim."""
    # A context never seen (a row of zero counts) comes out uniform for every k > 0: (0 + k) / (V k) = 1/V.
    # For k = 0 that row would be 0/0; we return the same uniform row (the limit k -> 0+), so every
    # row is a distribution. Unseen n-grams of a SEEN context still get probability 0 when k = 0.
    k = _check_k(k)
    counts = torch.as_tensor(counts)
    if counts.dim() < 1 or counts.dtype.is_complex or counts.dtype == torch.bool:
        raise ValueError(f"counts must be a real tensor with at least one dimension (the next token, last), "
                         f"got dtype {counts.dtype} and shape {tuple(counts.shape)}")
    if (counts < 0).any():
        raise ValueError("counts must be >= 0")
    smoothed = counts.double() + k
    total = smoothed.sum(dim=-1, keepdim=True)  # (..., 1) how often each context was followed by anything (+ V k)
    return torch.where(total > 0, smoothed / total, 1.0 / counts.size(-1))


# ----------------------------------------------------------------------------- the model

@dataclass
class NGramModel:
    """A count-based n-gram LM: probs[context..., next] = P(next | previous n-1 tokens), shape (V,)*n."""

    probs: Tensor
    k: float

    @classmethod
    def from_counts(cls, counts: Tensor, k: float, dtype: torch.dtype = torch.float32) -> "NGramModel":
        """Smooth `counts` (V,)*n with add-k and store the table in `dtype` (float32: as a model would be stored)."""
        return cls(ngram_probabilities(counts, k).to(dtype), _check_k(k))

    @classmethod
    def fit(cls, tokens: np.ndarray | Tensor, n: int, vocab_size: int, k: float,
            dtype: torch.dtype = torch.float32) -> "NGramModel":
        """Count the n-grams of `tokens` (a training split) and smooth them with add-k."""
        return cls.from_counts(ngram_counts(tokens, n, vocab_size), k, dtype)

    @property
    def n(self) -> int:
        return self.probs.dim()

    @property
    def vocab_size(self) -> int:
        return self.probs.size(-1)

    @property
    def table_bytes(self) -> int:
        """Bytes the probability table occupies (V**n entries of its dtype)."""
        return self.probs.numel() * self.probs.element_size()

    def cross_entropy(self, tokens: np.ndarray | Tensor) -> float:
        """Mean -ln P(token | previous n-1 tokens) in nats per token, over tokens[n-1:] of a split.

        The first n-1 tokens have no full context: they are only read as context, never scored,
        so a split of N tokens contributes N - n + 1 predictions. Returns inf if any scored
        token has probability 0 (possible only with k = 0). log is taken in float64.
        """
        if len(tokens) < self.n:
            raise ValueError(f"a {self.n}-gram model needs at least {self.n} tokens to score one, got {len(tokens)}")
        p = self.probs.reshape(-1)[ngram_ids(tokens, self.n, self.vocab_size)]
        return -torch.log(p.double()).mean().item()

    def sample(self, prompt: Sequence[int], max_new_tokens: int,
               generator: torch.Generator | None = None) -> list[int]:
        """Prompt ids followed by `max_new_tokens` ids, each drawn from P(. | previous n-1) (temperature 1)."""
        ids = _as_ids(list(prompt), self.vocab_size).tolist()
        if len(ids) < self.n - 1:
            raise ValueError(f"a {self.n}-gram model needs a prompt of at least {self.n - 1} tokens, got {len(ids)}")
        for _ in range(max_new_tokens):
            row = self.probs[tuple(ids[len(ids) - (self.n - 1):])]  # (V,) the distribution after this context
            ids.append(torch.multinomial(row, 1, generator=generator).item())
        return ids
