"""Counted work of a GPT: FLOPs and bytes read per token, for training, prefill and decode.

Why count at all? A timing on a shared laptop moves with whatever else the machine is doing;
the number of multiply-adds and the bytes that must come from memory do not. The labs state
conclusions from counted work and show timings beside them as (noisy) evidence.

Conventions:
- A FLOP is one multiply or one add: a matmul (m × k) @ (k × n) costs 2·m·k·n FLOPs.
- Counted: matrix multiplications only, which is what `torch.utils.flop_counter.FlopCounterMode`
  counts and where nearly all the work of a Transformer is. Elementwise work (LayerNorm, softmax,
  the MLP nonlinearity, residual adds) is a few FLOPs per element and is left out.
- Attention scores q·kᵀ and the weighted sum of values are counted over the whole score matrix
  (T queries × S keys), masked entries included: that is what a plain matmul implementation (and
  the counter, under PyTorch's "math" attention) does. A fused causal kernel can skip about half.
- Bytes read: the least a forward must fetch from memory — every weight once, plus the keys and
  values attention reads from the KV cache. Activations are left out (they are small next to the
  weights when only a few tokens go through, and stay in the CPU's caches).

    from labkit.flops import gpt_forward_flops, decode_step_flops, decode_step_bytes_read
    decode_step_flops(config, cached_tokens=63)            # FLOPs of one new token with a KV cache
    decode_step_bytes_read(config, cached_tokens=63)        # bytes it must read (weights + cache)

The rules of thumb these refine: training costs ≈ 6·N·D FLOPs for N parameters and D tokens
(2·N·D forward, 4·N·D backward), and generating one token costs ≈ 2·N FLOPs while reading all
N weights — 2 FLOPs per weight read (0.5 per byte in fp32, 1 in bf16), less than a CPU or GPU can
do in the time it fetches a byte: decoding waits for memory (lab 02 measures this machine's ratio).
"""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from labkit.memory import dtype_bytes
from labkit.model import GPTConfig

__all__ = [
    "matmul_flops", "gpt_matmul_params", "gpt_forward_flops", "gpt_training_flops", "decode_step_flops",
    "uncached_step_flops", "approx_training_flops", "approx_decode_flops", "forward_bytes_read",
    "decode_step_bytes_read", "arithmetic_intensity", "counted_flops", "time_calls_ms",
    "measure_matmul_flops_per_s", "measure_read_bytes_per_s", "torch_threads", "human_flops",
]


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _mlp_matrices(config: GPTConfig) -> int:
    """Matrices of size n_embd × mlp_hidden in one MLP: 2 (fc, proj) or 3 for the gated SwiGLU."""
    return 3 if config.activation == "swiglu" else 2


def matmul_flops(m: int, k: int, n: int) -> int:
    """FLOPs of an (m × k) @ (k × n) matrix product: m·n dot products of length k, 2·k FLOPs each."""
    return 2 * m * k * n


def gpt_matmul_params(config: GPTConfig) -> dict[str, int]:
    """Weights (elements) one token is multiplied with, per part of the model; every Linear matrix.

    The embedding tables are looked up, not multiplied: no FLOPs (but a tied output head *is* the
    token embedding, used as a matrix). LayerNorm scales and biases are elementwise: not here.
    """
    C, V, H, KV, hd = config.n_embd, config.vocab_size, config.n_head, config.n_kv_head, config.head_dim
    L = config.n_layer
    return {
        "attention projections (qkv, proj)": L * (C * (H + 2 * KV) * hd + H * hd * C),
        "MLP": L * _mlp_matrices(config) * C * config.mlp_hidden,
        "output head (lm_head)": C * V,
    }


def gpt_forward_flops(config: GPTConfig, batch_size: int, seq_len: int, cached_tokens: int = 0) -> dict[str, int]:
    """Matmul FLOPs of one forward of `GPT(config)` over `seq_len` new tokens per sequence.

    `cached_tokens` keys and values are already in a KV cache, so each new query attends over
    S = cached_tokens + seq_len keys. A training forward or a prefill has cached_tokens = 0; a decode
    step has seq_len = 1. The output head runs on every new position (as `GPT.forward` does).
    Returns one entry per part and "total".
    """
    _check_count("batch_size", batch_size, 1)
    _check_count("seq_len", seq_len, 1)
    _check_count("cached_tokens", cached_tokens, 0)
    N = batch_size * seq_len                      # new tokens in this forward
    S = cached_tokens + seq_len                   # keys each query is scored against
    params = gpt_matmul_params(config)
    flops = {part: 2 * N * count for part, count in params.items()}   # each weight: one multiply-add per token
    # per layer and query head: scores (T × hd) @ (hd × S), then weights (T × S) @ values (S × hd)
    attention = config.n_layer * batch_size * config.n_head * (
        matmul_flops(seq_len, config.head_dim, S) + matmul_flops(seq_len, S, config.head_dim))
    flops = {"attention projections (qkv, proj)": flops["attention projections (qkv, proj)"],
             "attention scores and weighted sum": attention,
             "MLP": flops["MLP"],
             "output head (lm_head)": flops["output head (lm_head)"]}
    flops["total"] = sum(flops.values())
    return flops


def gpt_training_flops(config: GPTConfig, batch_size: int, seq_len: int) -> int:
    """Matmul FLOPs of one training step (forward + backward) on batch_size × seq_len tokens.

    The backward of every matmul makes two products of the forward's size (the gradient for the
    input and the gradient for the weight), so a step costs 3 × the forward: with the forward's
    ≈ 2·N FLOPs per token that is the familiar 6·N per token.
    """
    return 3 * gpt_forward_flops(config, batch_size, seq_len)["total"]


def decode_step_flops(config: GPTConfig, cached_tokens: int, batch_size: int = 1) -> int:
    """Matmul FLOPs of generating one token per sequence with `cached_tokens` already in the KV cache."""
    return gpt_forward_flops(config, batch_size, 1, cached_tokens)["total"]


def uncached_step_flops(config: GPTConfig, context: int, batch_size: int = 1) -> int:
    """Matmul FLOPs of generating one token per sequence WITHOUT a cache: the whole `context` is run again."""
    return gpt_forward_flops(config, batch_size, context)["total"]


def approx_training_flops(n_params: int, n_tokens: int) -> int:
    """The rule of thumb 6·N·D: FLOPs to train N parameters on D tokens (2·N·D forward + 4·N·D backward)."""
    return 6 * n_params * n_tokens


def approx_decode_flops(n_params: int) -> int:
    """The rule of thumb 2·N: FLOPs to generate one token with N parameters (one multiply-add per weight)."""
    return 2 * n_params


def forward_bytes_read(config: GPTConfig, batch_size: int, seq_len: int, cached_tokens: int = 0,
                       dtype: str | torch.dtype = "fp32", cache_dtype: str | torch.dtype | None = None
                       ) -> dict[str, int]:
    """Least bytes one forward over `seq_len` new tokens must read from memory, per part, and "total".

    - every Linear matrix, once (however many tokens go through: a batched matmul reuses each weight
      for all of them — which is why a prefill or a big batch is cheaper per token than a decode step);
    - LayerNorm scales (and all biases, if the model has them);
    - of the embedding tables, only the rows the new tokens look up (a tied head already reads the
      whole token table as a matrix), and the position rows (or rotary cos/sin rows) of the new positions;
    - the keys and values attention reads: cached_tokens + seq_len positions, every layer and KV head.
    Weights are in `dtype`; the cache in `cache_dtype` (default: the same).
    """
    _check_count("batch_size", batch_size, 1)
    _check_count("seq_len", seq_len, 1)
    _check_count("cached_tokens", cached_tokens, 0)
    a = dtype_bytes(dtype)
    a_cache = a if cache_dtype is None else dtype_bytes(cache_dtype, "cache_dtype")
    C, V, L = config.n_embd, config.vocab_size, config.n_layer
    H, KV, hd, hidden = config.n_head, config.n_kv_head, config.head_dim, config.mlp_hidden
    matrices = sum(gpt_matmul_params(config).values())
    norms = (2 * L + 1) * C                                          # ln_1, ln_2 per layer, ln_f
    biases = 0
    if config.bias:
        norms *= 2                                                   # LayerNorm bias beside each scale
        mlp_out = (_mlp_matrices(config) - 1) * hidden + C          # fc (or gate and up), then proj
        biases = L * ((H + 2 * KV) * hd + C + mlp_out)              # qkv, proj, MLP (lm_head has none)
    rows = 0
    if not config.tie_weights:
        rows += min(batch_size * seq_len, V) * C                     # distinct token rows, at most the table
    if config.positions in ("learned", "sinusoidal"):
        rows += seq_len * C                                          # one position row per new position
    else:
        rows += seq_len * hd                                         # rotary: a cos and a sin half-row each
    S = cached_tokens + seq_len
    out = {
        "Linear weights": int(matrices * a),
        "LayerNorm scales and biases": int((norms + biases) * a),
        "embedding and position rows": int(rows * a),
        "KV cache read": int(2 * L * batch_size * KV * S * hd * a_cache),
    }
    out["total"] = sum(out.values())
    return out


def decode_step_bytes_read(config: GPTConfig, cached_tokens: int, batch_size: int = 1,
                           dtype: str | torch.dtype = "fp32", cache_dtype: str | torch.dtype | None = None) -> int:
    """Least bytes one decode step reads: all the weights once + the whole KV cache (cached_tokens + 1)."""
    return forward_bytes_read(config, batch_size, 1, cached_tokens, dtype, cache_dtype)["total"]


def human_flops(n: float) -> str:
    """'1.63 MFLOP'-style text for a FLOP count (decimal units: k = 10³, M = 10⁶, G = 10⁹, T = 10¹²)."""
    for unit, size in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if abs(n) >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n:,.0f} FLOP"


def arithmetic_intensity(flops: float, bytes_read: float) -> float:
    """FLOPs done per byte read from memory: low means the memory, not the arithmetic, sets the pace."""
    if bytes_read <= 0:
        raise ValueError(f"bytes_read must be > 0, got {bytes_read!r}")
    return flops / bytes_read


# ---------------------------------------------------------------------------------------------
# Measurement beside the counts: what PyTorch counts, and what this machine does per second
# ---------------------------------------------------------------------------------------------

def counted_flops(fn: Callable[[], object]) -> int:
    """Matmul FLOPs PyTorch's FlopCounterMode counts while fn() runs.

    Attention runs on PyTorch's "math" backend here: its matmuls are visible to the counter
    (the fused CPU kernel is not counted by it at all), and it computes what the formulas count.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with torch using `n` threads, then restore the previous setting."""
    _check_count("n", n, 1)
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def time_calls_ms(calls: dict[str, Callable[[], object]], repeats: int = 21, warmup: int = 2,
                  threads: int = 1) -> dict[str, dict[str, float]]:
    """Milliseconds per call of each function: median, quartiles and min over `repeats` rounds.

    The functions take turns inside every round, so a burst of load from another process hits all
    of them alike and their ratio is fairer than timings taken one after the other. Runs with
    `threads` torch threads (1 by default: steady on a shared machine).
    """
    _check_count("repeats", repeats, 3)
    _check_count("warmup", warmup, 0)
    samples: dict[str, list[float]] = {name: [] for name in calls}
    with torch_threads(threads):
        for _ in range(warmup):
            for fn in calls.values():
                fn()
        for _ in range(repeats):
            for name, fn in calls.items():
                t0 = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t0) * 1000)
    out = {}
    for name, s in samples.items():
        q1, median, q3 = statistics.quantiles(s, n=4, method="inclusive")
        out[name] = {"median_ms": median, "q1_ms": q1, "q3_ms": q3, "min_ms": min(s), "samples_ms": s}
    return out


def measure_matmul_flops_per_s(n: int = 512, repeats: int = 7, threads: int = 1) -> float:
    """FLOP/s of this machine on an fp32 (n × n) @ (n × n) matmul: the median of `repeats` timings."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    t = time_calls_ms({"matmul": lambda: a @ b}, repeats=repeats, warmup=1, threads=threads)["matmul"]
    return matmul_flops(n, n, n) / (t["median_ms"] / 1000)


def measure_read_bytes_per_s(n_bytes: int = 128 * 2 ** 20, repeats: int = 7, threads: int = 1) -> float:
    """Bytes/s this machine reads from main memory: summing an fp32 tensor of `n_bytes` (median of `repeats`).

    Take n_bytes well above the CPU's last-level cache (tens of MiB), or the cache is what is measured.
    """
    x = torch.ones(n_bytes // 4)
    t = time_calls_ms({"sum": lambda: x.sum()}, repeats=repeats, warmup=1, threads=threads)["sum"]
    return x.nbytes / (t["median_ms"] / 1000)
