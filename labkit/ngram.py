"""Count-based n-gram language models: count, smooth with add-k, score, sample.

    counts = ngram_counts(train_ids, n=3, vocab_size=V)     # (V, V, V) int64: counts[a, b, c] = times c followed "ab"
    probs = ngram_probabilities(counts, k=0.1)              # (V, V, V) float64, P(next | context), sums to 1 over the last dim
    model = NGramModel.fit(train_ids, n=3, vocab_size=V, k=0.1)   # the same, stored as a float32 table
    model.cross_entropy(val_ids)                           # nats per token on a split
    model.sample(prompt_ids, 200, generator=torch.Generator().manual_seed(0))
    sparse = SparseNGramModel.fit(train_ids, n=5, vocab_size=V, k=0.1)   # only the n-grams seen: no V**n table

An n-gram model predicts token t from the n - 1 tokens before it, so it keeps one row of V
probabilities per context: a dense table of V**n numbers (`ngram_table_bytes`). Most of those
cells were never seen in training, and add-k gives all unseen cells of a row the same value, so
the same model can be stored sparse: the seen n-grams with their counts, and each seen context
with its total (`SparseNGramModel`, whose `nbytes` is what those arrays take). Lab 01 derives all
of this by hand and checks its derivation against this module; lab 04 compares sparse formats.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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
    def from_counts(cls, counts: Tensor, k: float, dtype: torch.dtype = torch.float32) -> NGramModel:
        """Smooth `counts` (V,)*n with add-k and store the table in `dtype` (float32: as a model would be stored)."""
        return cls(ngram_probabilities(counts, k).to(dtype), _check_k(k))

    @classmethod
    def fit(cls, tokens: np.ndarray | Tensor, n: int, vocab_size: int, k: float,
            dtype: torch.dtype = torch.float32) -> NGramModel:
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

    def token_losses(self, tokens: np.ndarray | Tensor) -> Tensor:
        """-ln P(token | previous n-1 tokens) in nats (float64), one per token of tokens[n-1:]."""
        if len(tokens) < self.n:
            raise ValueError(f"a {self.n}-gram model needs at least {self.n} tokens to score one, got {len(tokens)}")
        p = self.probs.reshape(-1)[ngram_ids(tokens, self.n, self.vocab_size)]
        return -torch.log(p.double())

    def cross_entropy(self, tokens: np.ndarray | Tensor) -> float:
        """Mean -ln P(token | previous n-1 tokens) in nats per token, over tokens[n-1:] of a split.

        The first n-1 tokens have no full context: they are only read as context, never scored,
        so a split of N tokens contributes N - n + 1 predictions. Returns inf if any scored
        token has probability 0 (possible only with k = 0). log is taken in float64.
        """
        return self.token_losses(tokens).mean().item()

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


# ----------------------------------------------------------------------------- the same model, stored sparse

def index_dtype(n_values: int) -> np.dtype:
    """The narrowest unsigned integer dtype that holds every index in [0, n_values)."""
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if n_values - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"n_values={n_values} does not fit in 64 bits")


@dataclass
class SparseNGramModel:
    """An add-k n-gram LM that stores only what training saw (coordinate "COO" format, sorted by index).

    - ngram_index / ngram_count: each n-gram seen in training, as its flat id in [0, V**n)
      (first token most significant, as `ngram_ids`), and how often it occurred;
    - context_index / context_total: each (n-1)-token context seen, and how often it was followed by anything.

    P(next | context) = (count + k) / (total + V k), exactly the dense table's value; an unseen context is
    uniform (1/V). Indices use the narrowest unsigned integer that holds them (`index_dtype`), counts int32.
    """

    n: int
    vocab_size: int
    k: float
    ngram_index: np.ndarray
    ngram_count: np.ndarray
    context_index: np.ndarray
    context_total: np.ndarray

    @classmethod
    def fit(cls, tokens: np.ndarray | Tensor | Sequence[int], n: int, vocab_size: int, k: float) -> SparseNGramModel:
        """Count the n-grams of `tokens` without a dense table (sort + unique), so any order fits in memory."""
        n, k = _check_n(n), _check_k(k)
        if vocab_size ** n > 2**63:
            raise ValueError(f"a {n}-gram over {vocab_size} tokens has more than 2**63 cells: its ids overflow int64")
        flat, counts = torch.unique(ngram_ids(tokens, n, vocab_size), sorted=True, return_counts=True)
        contexts, inverse = torch.unique_consecutive(flat // vocab_size, return_inverse=True)  # flat is sorted
        totals = torch.zeros(len(contexts), dtype=torch.int64).index_add_(0, inverse, counts)
        return cls(n, vocab_size, k,
                   flat.numpy().astype(index_dtype(vocab_size ** n)), counts.numpy().astype(np.int32),
                   contexts.numpy().astype(index_dtype(vocab_size ** (n - 1))), totals.numpy().astype(np.int32))

    @classmethod
    def from_counts(cls, counts: Tensor, k: float) -> SparseNGramModel:
        """The sparse form of a dense (V,)*n count table (e.g. from `ngram_counts`)."""
        counts = torch.as_tensor(counts)
        V, n = counts.size(-1), counts.dim()
        flat = counts.reshape(-1).nonzero().squeeze(1)
        rows = counts.reshape(-1, V).sum(dim=1)
        contexts = rows.nonzero().squeeze(1)
        return cls(n, V, _check_k(k), flat.numpy().astype(index_dtype(V ** n)),
                   counts.reshape(-1)[flat].numpy().astype(np.int32),
                   contexts.numpy().astype(index_dtype(V ** (n - 1))), rows[contexts].numpy().astype(np.int32))

    @property
    def nnz(self) -> int:
        """Number of stored (non-zero) n-gram counts."""
        return len(self.ngram_index)

    @property
    def nbytes(self) -> int:
        """Bytes of the four stored arrays (indices in their narrow dtypes, counts int32)."""
        return sum(a.nbytes for a in (self.ngram_index, self.ngram_count, self.context_index, self.context_total))

    def format_description(self) -> str:
        """Which arrays are stored, with their dtypes and lengths."""
        return (f"COO: {self.nnz:,} n-grams × ({self.ngram_index.dtype} index + {self.ngram_count.dtype} count) + "
                f"{len(self.context_index):,} contexts × ({self.context_index.dtype} index + "
                f"{self.context_total.dtype} total)")

    @staticmethod
    def _lookup(index: np.ndarray, values: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """values[i] where index[i] == key, else 0 (index is sorted)."""
        pos = np.searchsorted(index, keys)
        pos_clipped = np.minimum(pos, len(index) - 1)
        found = (pos < len(index)) & (index[pos_clipped] == keys)
        return np.where(found, values[pos_clipped], 0).astype(np.float64)

    def token_losses(self, tokens: np.ndarray | Tensor) -> Tensor:
        """-ln P(token | previous n-1 tokens) in nats (float64), one per token of tokens[n-1:]."""
        if len(tokens) < self.n:
            raise ValueError(f"a {self.n}-gram model needs at least {self.n} tokens to score one, got {len(tokens)}")
        flat = ngram_ids(tokens, self.n, self.vocab_size).numpy().astype(self.ngram_index.dtype)
        count = self._lookup(self.ngram_index, self.ngram_count, flat)
        total = self._lookup(self.context_index, self.context_total,
                             (flat // self.vocab_size).astype(self.context_index.dtype))
        V, k = self.vocab_size, self.k
        denominator = total + V * k
        p = np.where(denominator > 0, (count + k) / np.where(denominator > 0, denominator, 1.0), 1.0 / V)
        with np.errstate(divide="ignore"):  # p = 0 (k = 0, unseen n-gram of a seen context) -> inf, as dense
            return torch.from_numpy(-np.log(p))

    def cross_entropy(self, tokens: np.ndarray | Tensor) -> float:
        """Mean nats per token over tokens[n-1:] (the same convention as NGramModel.cross_entropy)."""
        return self.token_losses(tokens).mean().item()
