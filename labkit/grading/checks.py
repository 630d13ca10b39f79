"""The self-checks the labs call, one per exercise, grouped by lab.

Each check builds small examples and their expected answers from labkit's reference (or a closed
form) first, then runs the learner's function through `run_check`. Each one states:
- what the lab's next cells need back (`Returns`): a whole number, a number, or a tensor of a shape/dtype;
- the typical mistakes it recognises (`Mistake`), so a wrong answer gets a hint, not just a number;
- the reference implementations the learner must not call (`forbid`): they become tripwires while
  the learner's function runs.
"""
from __future__ import annotations

import math
from dataclasses import replace
from fractions import Fraction
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from labkit.grading.core import Case, CheckResult, Mistake, Returns, as_number, checks_safely, run_check, same_as
from labkit.model import split_heads as model_split_heads


def _int_eq(got: Any, value: int) -> bool:
    """True when the learner returned a whole number equal to `value` (a float never matches)."""
    number, problem = as_number(got, integer=True)
    return problem is None and number == value


def _per_case_ratio(k: float, expected_of: Callable[..., int]) -> Callable[..., bool]:
    """True when the learner's answer is k × the right answer for these arguments."""
    def matches(got: Any, *args: Any) -> bool:
        value, problem = as_number(got, integer=False)
        right = expected_of(*args)
        return problem is None and right != 0 and math.isclose(value, right * k, rel_tol=1e-9)
    return matches


INT = Returns("int", why="it is a count, printed with thousands separators")


# random examples for the grader's hidden cases (see core.HIDDEN_SEED)
def _randint(g: torch.Generator, low: int, high: int) -> int:
    """A random int in [low, high], both included."""
    return int(torch.randint(low, high + 1, (1,), generator=g))


def _choice(g: torch.Generator, options: Sequence[Any]) -> Any:
    return options[_randint(g, 0, len(options) - 1)]


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


# =============================================================================================
# lab 00 (start here)


@checks_safely("tensor_bytes")
def check_tensor_bytes(fn: Callable[[tuple, torch.dtype], int], quiet: bool = False) -> CheckResult:
    """Exercise: bytes (int) a dense tensor of `shape` and `dtype` occupies."""
    from labkit.memory import tensor_bytes
    cases = []
    for shape, dtype in [((3, 4), torch.float32), ((128, 128), torch.float16), ((10,), torch.int8),
                         ((2, 3, 5), torch.float64), ((), torch.float32), ((0, 7), torch.float32),
                         ((4096, 11008), torch.bfloat16), ((3,), torch.bool)]:
        cases.append(Case(f"tensor_bytes({shape}, {dtype})", (shape, dtype), {}, tensor_bytes(shape, dtype)))
    mistakes = [
        Mistake("that is the number of elements; multiply by the bytes per element "
                "(torch.empty((), dtype=dtype).element_size())", lambda got, shape, dtype: _int_eq(got, math.prod(shape))
                and dtype.itemsize != 1),
        Mistake("that is bits: a byte is 8 bits",
                lambda got, shape, dtype: _int_eq(got, 8 * math.prod(shape) * dtype.itemsize)),
        Mistake("a 0-dim tensor (shape ()) holds ONE element: math.prod(()) is 1", lambda got, shape, dtype: shape == ()),
        Mistake("a shape with a 0 in it holds no elements: 0 bytes", lambda got, shape, dtype: 0 in shape),
        Mistake("that is the size of one element; multiply by the number of elements",
                lambda got, shape, dtype: _int_eq(got, dtype.itemsize)),
    ]
    def hidden(g: torch.Generator) -> Case:
        shape = tuple(_randint(g, 0, 40) for _ in range(_randint(g, 0, 4)))
        dtype = _choice(g, [torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.int64, torch.float64])
        return Case(f"tensor_bytes({shape}, {dtype})", (shape, dtype), {}, tensor_bytes(shape, dtype))

    return run_check("tensor_bytes", fn, cases, returns=INT, mistakes=mistakes, quiet=quiet, hidden=hidden,
                     forbid=("labkit.memory.tensor_bytes", "torch.Tensor.nbytes", "torch.Tensor.untyped_storage"),
                     reference="labkit.memory.tensor_bytes")


@checks_safely("params_that_fit")
def check_params_that_fit(fn: Callable[[int, float], int], quiet: bool = False) -> CheckResult:
    """Exercise: how many whole parameters (int) fit in `budget_bytes` at `bytes_per_param` each."""
    from labkit.memory import params_that_fit
    cases = [Case(f"params_that_fit({b:,}, {bpp})", (b, bpp), {}, params_that_fit(b, bpp))
             for b, bpp in [(1000, 4), (1023, 4), (24 * 2**30, 16), (10, 0.5), (3, 4), (0, 2), (80 * 2**30 + 1, 2)]]
    mistakes = [
        Mistake("you rounded up: a parameter that only partly fits does not fit — round down (//)",
                lambda got, b, bpp: _int_eq(got, math.ceil(Fraction(b) / Fraction(bpp)))),
        Mistake("multiply → divide: the number of parameters is budget / bytes per parameter",
                lambda got, b, bpp: _int_eq(got, b * bpp)),
    ]
    def hidden(g: torch.Generator) -> Case:
        b, bpp = _randint(g, 0, 2**40), _choice(g, [0.5, 1, 2, 4, 8, 12, 16])
        return Case(f"params_that_fit({b:,}, {bpp})", (b, bpp), {}, params_that_fit(b, bpp))

    return run_check("params_that_fit", fn, cases, returns=INT, mistakes=mistakes, quiet=quiet, hidden=hidden,
                     forbid=("labkit.memory.params_that_fit",), reference="labkit.memory.params_that_fit")


def _module_examples() -> list[tuple[str, Any]]:
    """Small modules whose byte counts test what a model's memory is made of (buffers, dtypes, tied weights)."""
    import torch.nn as nn

    from labkit.model import GPT, GPTConfig
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    tied = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8, positions="sinusoidal",
                         tie_weights=True))
    untied = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8, tie_weights=False))
    return [
        ("nn.Linear(3, 4): a 4×3 weight and a bias of 4, float32", nn.Linear(3, 4)),
        ("nn.Linear(3, 4, bias=False) in float16", nn.Linear(3, 4, bias=False).half()),
        ("nn.Embedding(10, 8) then nn.LayerNorm(8)", nn.Sequential(nn.Embedding(10, 8), nn.LayerNorm(8))),
        ("nn.BatchNorm1d(5): 2 parameters of 5, and buffers: running mean and variance (float32) and a step count "
         "(int64)", nn.BatchNorm1d(5)),
        ("one nn.Linear(4, 4) used twice in an nn.ModuleList (one tensor each, counted once)",
         nn.ModuleList([shared, shared])),
        ("a small GPT with a TIED output head (lm_head.weight is wte.weight) and sinusoidal positions (a buffer)", tied),
        ("the same GPT untied with learned positions, in bfloat16", untied.to(torch.bfloat16)),
    ]


@checks_safely("model_bytes")
def check_model_bytes(fn: Callable[[Any], int], quiet: bool = False) -> CheckResult:
    """Exercise: bytes (int) of a model's parameters and buffers, each tensor counted once."""
    from labkit.memory import model_bytes

    def params_only(m: Any) -> int:
        return sum(p.numel() * p.element_size() for p in m.parameters())

    def state_dict_bytes(m: Any) -> int:
        return sum(t.numel() * t.element_size() for t in m.state_dict().values())

    def elements(m: Any) -> int:
        return sum(t.numel() for t in {id(t): t for t in [*m.parameters(), *m.buffers()]}.values())

    cases = [Case(what, (m,), {}, model_bytes(m)) for what, m in _module_examples()]
    mistakes = [
        Mistake("a tied weight was counted twice: model.state_dict() lists it under both names (wte.weight and "
                "lm_head.weight), but it is ONE tensor in memory — model.parameters() yields it once",
                lambda got, m: state_dict_bytes(m) != model_bytes(m) and _int_eq(got, state_dict_bytes(m))),
        Mistake("the buffers are missing: a model's memory also holds tensors that are not trained "
                "(model.buffers(): running statistics, fixed position tables)",
                lambda got, m: params_only(m) != model_bytes(m) and _int_eq(got, params_only(m))),
        Mistake("that is the number of elements; multiply each tensor's by its bytes per element (t.element_size())",
                lambda got, m: _int_eq(got, elements(m))),
        Mistake("every element was charged 4 bytes: each tensor has its own dtype (float16, bfloat16 and int64 "
                "take 2, 2 and 8 bytes) — use t.element_size() or your tensor_bytes",
                lambda got, m: 4 * elements(m) != model_bytes(m) and _int_eq(got, 4 * elements(m))),
    ]

    def hidden(g: torch.Generator) -> Case:
        from labkit.model import GPT
        config = _random_config(g)
        config.block_size, config.vocab_size = min(config.block_size, 32), min(config.vocab_size, 64)
        torch.manual_seed(_randint(g, 0, 2**31))
        model = GPT(config).to(_choice(g, [torch.float32, torch.bfloat16, torch.float16]))
        return Case(f"GPT({config})", (model,), {}, model_bytes(model))

    return run_check("model_bytes", fn, cases, returns=INT, mistakes=mistakes, quiet=quiet, hidden=hidden,
                     forbid=("labkit.memory.model_bytes",), reference="labkit.memory.model_bytes")


# =============================================================================================
# lab 01 (language models)

@checks_safely("perplexity")
def check_perplexity(fn: Callable[[float], float], quiet: bool = False) -> CheckResult:
    """Exercise: perplexity (a number) from a mean loss in nats."""
    cases = [Case("perplexity(0.0)", (0.0,), {}, 1.0, "exp(0) = 1"),
             Case("perplexity(ln 84)", (math.log(84),), {}, 84.0, "exp(ln 84) = 84 (a uniform guess over 84 characters)"),
             Case("perplexity(1.5)", (1.5,), {}, math.exp(1.5), f"exp(1.5) = {math.exp(1.5):.6g}")]
    mistakes = [
        Mistake("that is 2 to the power of the loss; the loss is in nats, so perplexity is e to its power (math.exp)",
                same_as(lambda x: 2.0 ** x)),
        Mistake("that is 10 to the power of the loss; the loss is in nats, so perplexity is math.exp(loss)",
                same_as(lambda x: 10.0 ** x)),
        Mistake("you returned the loss itself: perplexity = exp(loss)", same_as(lambda x: x)),
        Mistake("that is exp(−loss), a probability: perplexity is exp(+loss)", same_as(lambda x: math.exp(-x))),
    ]
    def hidden(g: torch.Generator) -> Case:
        x = _uniform(g, 0.0, 6.0)
        return Case(f"perplexity({x!r})", (x,), {}, math.exp(x), f"exp({x:.6g}) = {math.exp(x):.6g}")

    return run_check("perplexity", fn, cases, returns="float", mistakes=mistakes, quiet=quiet, hidden=hidden,
                     forbid=("labkit.losses.perplexity",), reference="labkit.losses.perplexity")


@checks_safely("bits_per_char")
def check_bits_per_char(fn: Callable[[float], float], quiet: bool = False) -> CheckResult:
    """Exercise: bits per character (a number) from a mean loss in nats per character."""
    cases = [Case("bits_per_char(ln 2)", (math.log(2),), {}, 1.0, "ln 2 nats = 1 bit"),
             Case("bits_per_char(0.0)", (0.0,), {}, 0.0, "0"),
             Case("bits_per_char(1.5)", (1.5,), {}, 1.5 / math.log(2), f"1.5 / ln 2 = {1.5 / math.log(2):.6g}")]
    mistakes = [
        Mistake("you divided by ln 10: bits are base 2, so divide nats by ln 2", same_as(lambda x: x / math.log(10))),
        Mistake("you multiplied by ln 2: one bit is ln 2 ≈ 0.693 nats, so divide by ln 2",
                same_as(lambda x: x * math.log(2))),
        Mistake("that is log2 of the loss; convert units instead: nats / ln 2",
                lambda got, x: x > 0 and same_as(lambda x: math.log2(x))(got, x)),
    ]
    def hidden(g: torch.Generator) -> Case:
        x = _uniform(g, 0.0, 6.0)
        return Case(f"bits_per_char({x!r})", (x,), {}, x / math.log(2), f"{x:.6g} / ln 2 = {x / math.log(2):.6g}")

    return run_check("bits_per_char", fn, cases, returns="float", mistakes=mistakes, quiet=quiet, hidden=hidden,
                     forbid=("labkit.losses.bits_per_char",), reference="labkit.losses.bits_per_char")


def _ngram_wrong_dim(counts: torch.Tensor, k: float) -> torch.Tensor:
    smoothed = counts.double() + k
    return smoothed / smoothed.sum(dim=0, keepdim=True)


@checks_safely("ngram_probabilities")
def check_ngram_probabilities(fn: Callable[[torch.Tensor, float], torch.Tensor], quiet: bool = False) -> CheckResult:
    """Exercise: add-k smoothed P(next | context), a float tensor shaped like counts, normalised over the last dim."""
    from labkit.ngram import ngram_probabilities  # the reference: P(next | context) = (c + k) / Σ_next (c + k)
    g = torch.Generator().manual_seed(0)
    examples = [
        ("2×2 bigram counts [[2, 0], [1, 3]], k=0 (each row: counts / row total)", torch.tensor([[2, 0], [1, 3]]), 0.0),
        ("the same counts with k=1 (add 1 to every count first)", torch.tensor([[2, 0], [1, 3]]), 1.0),
        ("a context never seen in training (row of zeros), k=1: must become uniform",
         torch.tensor([[0, 0, 0], [5, 0, 1], [1, 1, 1]]), 1.0),
        ("random 5×5 bigram counts, k=0.01", torch.randint(0, 20, (5, 5), generator=g), 0.01),
        ("random 4×4×4 trigram counts, k=0.5 (normalise over the LAST dimension)",
         torch.randint(0, 9, (4, 4, 4), generator=g), 0.5),
    ]
    cases = [Case(description, (counts, k), {}, ngram_probabilities(counts, k)) for description, counts, k in examples]
    mistakes = [
        Mistake("each column sums to 1, not each row: normalise over the LAST dimension "
                "(.sum(dim=-1, keepdim=True)) — the last index is the next token", same_as(_ngram_wrong_dim)),
        Mistake("add k to the counts in the denominator too: Σ_next (c + k) = row total + V·k",
                same_as(lambda c, k: (c.double() + k) / c.double().sum(dim=-1, keepdim=True))),
        Mistake("k is missing: add k to every count before normalising",
                same_as(lambda c, k: c.double() / c.double().sum(dim=-1, keepdim=True))),
        Mistake("integer division: convert the counts to float first (counts.double() or .float())",
                lambda got, c, k: isinstance(got, torch.Tensor) and not got.dtype.is_floating_point),
    ]
    returns = Returns("tensor", why="the next cells index it, call .float() on it and take its log")

    def hidden(g: torch.Generator) -> Case:
        V, n, k = _randint(g, 2, 6), _randint(g, 2, 3), _choice(g, [1.0, 0.5, 0.1, 0.01])
        counts = torch.randint(0, 30, (V,) * n, generator=g)
        return Case(f"random {'×'.join([str(V)] * n)} counts, k={k}", (counts, k), {}, ngram_probabilities(counts, k))

    return run_check("ngram_probabilities", fn, cases, rtol=1e-5, atol=1e-6, returns=returns, mistakes=mistakes,
                     hidden=hidden,
                     quiet=quiet, forbid=("labkit.ngram.ngram_probabilities", "labkit.ngram.NGramModel"),
                     reference="labkit.ngram.ngram_probabilities")


CROSS_ENTROPY_REFERENCES = (
    "labkit.losses.cross_entropy", "labkit.losses.log_softmax",
    "torch.nn.functional.cross_entropy", "torch.nn.functional.log_softmax", "torch.log_softmax",
    "torch.special.log_softmax", "torch.Tensor.log_softmax", "torch._C._nn.cross_entropy_loss",
    "torch.nn.CrossEntropyLoss", "torch.nn.LogSoftmax",
)


def _ce_overflowing(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    p = torch.exp(logits) / torch.exp(logits).sum(-1, keepdim=True)
    return -torch.log(p.gather(1, targets[:, None])).mean()


@checks_safely("cross_entropy")
def check_cross_entropy(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], quiet: bool = False) -> CheckResult:
    """Exercise: mean cross-entropy (nats) of logits (N, V) against targets (N,), as a 0-dim float32 tensor."""
    g = torch.Generator().manual_seed(0)
    cases = [Case("uniform logits over 4 classes", (torch.zeros(3, 4), torch.tensor([0, 1, 3])), {},
                  torch.tensor(math.log(4)), "ln 4 = 1.38629")]
    logits = torch.randn(5, 7, generator=g)
    targets = torch.randint(7, (5,), generator=g)
    cases.append(Case("random logits (5, 7)", (logits, targets), {}, F.cross_entropy(logits, targets)))
    big = torch.tensor([[1000.0, 0.0, -1000.0], [0.0, 1000.0, 0.0]])
    cases.append(Case("huge logits [[1000, 0, -1000], [0, 1000, 0]]", (big, torch.tensor([0, 2])), {},
                      F.cross_entropy(big, torch.tensor([0, 2]))))
    mistakes = [
        Mistake("exp overflowed to inf (e^1000 does not fit in a float): subtract each row's largest logit "
                "before exp, and add it back after the log (the log-sum-exp trick)",
                lambda got, logits, targets: isinstance(got, torch.Tensor) and not bool(torch.isfinite(got).all())),
        Mistake("that is in bits (log base 2); cross-entropy here is in nats: use the natural log (torch.log)",
                same_as(lambda x, t: F.cross_entropy(x, t) / math.log(2))),
        Mistake("that is the SUM over the examples; take the mean",
                same_as(lambda x, t: F.cross_entropy(x, t) * len(t))),
        Mistake("the sign is flipped: the loss is −log p(target), a positive number",
                same_as(lambda x, t: -F.cross_entropy(x, t))),
        Mistake("you subtracted the max but did not add it back: log Σ exp(x) = m + log Σ exp(x − m)",
                same_as(lambda x, t: (torch.log(torch.exp(x - x.max(-1, keepdim=True).values).sum(-1))
                                      - x.gather(1, t[:, None]).squeeze(1)).mean())),
    ]
    returns = Returns("tensor", dtypes=(torch.float32,),
                      why="the lab calls .item() on it and compares it with torch's float32 loss; don't call "
                          ".item() or .double() — return the 0-dim tensor from .mean()")

    def hidden(g: torch.Generator) -> Case:
        N, V, scale = _randint(g, 1, 9), _randint(g, 2, 30), _choice(g, [1.0, 5.0, 50.0])
        logits, targets = torch.randn(N, V, generator=g) * scale, torch.randint(V, (N,), generator=g)
        return Case(f"random logits ({N}, {V}) × {scale}", (logits, targets), {}, F.cross_entropy(logits, targets))

    return run_check("cross_entropy", fn, cases, rtol=1e-4, atol=1e-4, returns=returns, mistakes=mistakes,
                     hidden=hidden,
                     quiet=quiet, forbid=CROSS_ENTROPY_REFERENCES, reference="labkit.losses.cross_entropy")


# =============================================================================================
# lab 02 (inside the Transformer)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
               mask: str = "causal", dim: int = -1) -> torch.Tensor:
    """Single-head attention with the knobs a learner gets wrong (for recognising mistakes)."""
    T, d = q.shape
    scores = q @ k.T * (1 / math.sqrt(d) if scale is None else scale)
    if mask == "causal":
        scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    elif mask == "anti":
        scores = scores.masked_fill(torch.tril(torch.ones(T, T, dtype=torch.bool), -1), float("-inf"))
    return torch.softmax(scores, dim=dim) @ v


@checks_safely("causal_attention")
def check_causal_attention(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                           quiet: bool = False) -> CheckResult:
    """Exercise: one head of causal self-attention, softmax(q kᵀ/√d + mask) v for (T, d) inputs."""
    g = torch.Generator().manual_seed(1)
    cases = []
    for T, d in [(1, 4), (5, 8), (7, 3)]:
        q, k, v = (torch.randn(T, d, generator=g) for _ in range(3))
        expected = F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True)[0]
        cases.append(Case(f"q, k, v of shape ({T}, {d})", (q, k, v), {}, expected))
    mistakes = [
        Mistake("the scores are not scaled: divide q kᵀ by √d (d = q.shape[-1])",
                same_as(lambda q, k, v: _attention(q, k, v, 1.0))),
        Mistake("you divided by d; the scale is 1/√d", same_as(lambda q, k, v: _attention(q, k, v, 1 / q.shape[-1]))),
        Mistake("no mask: token i must not see tokens after it — set scores[i, j] = -inf where j > i",
                same_as(lambda q, k, v: _attention(q, k, v, mask="none"))),
        Mistake("the mask is on the wrong side: it must hide the FUTURE (j > i, above the diagonal: "
                "torch.triu(..., diagonal=1)), not the past", same_as(lambda q, k, v: _attention(q, k, v, mask="anti"))),
        Mistake("softmax over the wrong dimension: each ROW (one query) must sum to 1 — softmax(dim=-1)",
                same_as(lambda q, k, v: torch.nan_to_num(_attention(q, k, v, dim=0)))),
        Mistake("softmax over the wrong dimension: each ROW (one query) must sum to 1 — softmax(dim=-1)",
                lambda got, q, k, v: isinstance(got, torch.Tensor) and bool(torch.isnan(got).any())),
        Mistake("scores are q kᵀ (row i = query i against every key), not k qᵀ",
                same_as(lambda q, k, v: _attention(k, q, v))),
    ]
    returns = Returns("tensor", dtypes=None, why="one output vector per position, (T, d)")

    def hidden(g: torch.Generator) -> Case:
        T, d = _randint(g, 1, 9), _randint(g, 1, 9)
        q, k, v = (torch.randn(T, d, generator=g) for _ in range(3))
        expected = F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True)[0]
        return Case(f"q, k, v of shape ({T}, {d})", (q, k, v), {}, expected)

    return run_check("causal_attention", fn, cases, rtol=1e-4, atol=1e-5, returns=returns, mistakes=mistakes,
                     hidden=hidden,
                     quiet=quiet, reference="torch.nn.functional.scaled_dot_product_attention",
                     forbid=("torch.nn.functional.scaled_dot_product_attention",
                             "torch._C._nn.scaled_dot_product_attention", "torch.nn.MultiheadAttention",
                             "torch.nn.functional.multi_head_attention_forward", "labkit.model.CausalSelfAttention"))


#: kept for notebooks that name it; it IS labkit.model.split_heads (so the fallback note names that)
split_heads_reference = model_split_heads


@checks_safely("split_heads")
def check_split_heads(fn: Callable[[torch.Tensor, int], torch.Tensor], quiet: bool = False) -> CheckResult:
    """Exercise: split the channels of (B, T, C) into n_head heads of C // n_head, giving (B, n_head, T, C // n_head).

    The last example runs labkit's CausalSelfAttention on heads split by the learner's function and
    compares with the module's own output.
    """
    from labkit.model import CausalSelfAttention, GPTConfig, split_heads
    g = torch.Generator().manual_seed(2)
    cases = []
    for B, T, C, n_head in [(1, 3, 4, 2), (2, 5, 12, 3), (1, 4, 8, 1), (2, 6, 16, 16)]:
        x = torch.randn(B, T, C, generator=g)
        cases.append(Case(f"x of shape ({B}, {T}, {C}) into {n_head} heads", ("split", x, n_head), {},
                          split_heads(x, n_head)))
    attn = CausalSelfAttention(GPTConfig(vocab_size=1, block_size=5, n_layer=1, n_head=2, n_embd=8)).eval()
    with torch.no_grad():
        for w in (attn.qkv.weight, attn.proj.weight):
            w.copy_(torch.randn(w.shape, generator=g) / math.sqrt(8))
        x = torch.randn(1, 5, 8, generator=g)
        q, k, v = attn.qkv(x).split(8, dim=2)
        expected = attn(x)
    sdpa, proj = F.scaled_dot_product_attention, attn.proj   # bound now: the learner's tripwires can't touch them

    def call(fn: Callable, args: tuple, kwargs: dict) -> Any:
        kind, *args = args
        if kind == "split":
            return fn(*args)
        q, k, v = args
        with torch.no_grad():
            heads = sdpa(fn(q, 2), fn(k, 2), fn(v, 2), is_causal=True)
            return proj(heads.transpose(1, 2).reshape(1, 5, 8))

    cases.append(Case("labkit's CausalSelfAttention (2 heads, T=5, C=8) run on heads split by your function",
                      ("attention", q, k, v), {}, expected))

    def shaped(wrong: Callable) -> Callable[..., bool]:
        return lambda got, kind, x, *rest: kind == "split" and same_as(wrong)(got, x, *rest)

    B_T_n_hd = lambda x, n: x.view(x.shape[0], x.shape[1], n, x.shape[2] // n)
    mistakes = [
        Mistake("you reshaped straight to (B, n_head, T, hd), which mixes positions and channels: view as "
                "(B, T, n_head, hd) first, then swap dims 1 and 2 (.transpose(1, 2))",
                shaped(lambda x, n: x.reshape(x.shape[0], n, x.shape[1], x.shape[2] // n))),
        Mistake("that is (B, T, n_head, hd): the heads must come before time — .transpose(1, 2)",
                lambda got, kind, x, *rest: kind == "split" and isinstance(got, torch.Tensor)
                and got.shape == B_T_n_hd(x, rest[0]).shape),
        Mistake("the channels are split as (hd, n_head), but channel c belongs to head c // hd: "
                "view as (B, T, n_head, hd), then transpose",
                shaped(lambda x, n: x.view(x.shape[0], x.shape[1], x.shape[2] // n, n).transpose(2, 3).transpose(1, 2))),
        Mistake("the channels are split as (hd, n_head), but channel c belongs to head c // hd: "
                "view as (B, T, n_head, hd), then transpose",
                shaped(lambda x, n: x.view(x.shape[0], x.shape[1], x.shape[2] // n, n).permute(0, 3, 1, 2))),
    ]
    returns = Returns("tensor", why="it feeds scaled_dot_product_attention, one head per slice",
                      axes=("batch", "head", "position", "channel"))

    def hidden(g: torch.Generator) -> Case:
        B, T, n_head, hd = _randint(g, 1, 3), _randint(g, 1, 6), _randint(g, 1, 6), _randint(g, 1, 5)
        x = torch.randn(B, T, n_head * hd, generator=g)
        return Case(f"x of shape ({B}, {T}, {n_head * hd}) into {n_head} heads", ("split", x, n_head), {},
                    split_heads(x, n_head))

    return run_check("split_heads", fn, cases, rtol=1e-4, atol=1e-5, returns=returns, hidden=hidden, mistakes=mistakes,
                     quiet=quiet, call=call, reference="labkit.model.split_heads",
                     forbid=("labkit.model.split_heads", "labkit.grading.split_heads_reference",
                             "labkit.grading.checks.split_heads_reference"))


@checks_safely("kv_cache_bytes")
def check_kv_cache_bytes(fn: Callable[..., int], quiet: bool = False) -> CheckResult:
    """Exercise: KV-cache bytes (int) for n_layer, n_kv_head, head_dim, seq_len, batch_size, bytes_per_element."""
    from labkit.memory import kv_cache_bytes
    names = {4: "fp32", 2: "fp16", 1: "int8"}
    cases = []
    for args in [(4, 4, 32, 64, 1, 4), (32, 32, 128, 4096, 1, 2), (80, 8, 128, 4096, 8, 2), (2, 1, 16, 10, 3, 4),
                 (3, 2, 8, 5, 7, 1)]:
        n_layer, n_kv_head, head_dim, seq_len, batch, nbytes = args
        expected = kv_cache_bytes(n_layer, n_kv_head, head_dim, seq_len, batch, names[nbytes])
        cases.append(Case(f"kv_cache_bytes(n_layer={n_layer}, n_kv_head={n_kv_head}, head_dim={head_dim}, "
                          f"seq_len={seq_len:,}, batch_size={batch}, bytes_per_element={nbytes})", args, {}, expected))
    right = lambda L, h, hd, T, B, a: 2 * L * h * hd * T * B * a
    mistakes = [
        Mistake("half the right answer: the cache holds BOTH keys and values (the factor 2)",
                _per_case_ratio(0.5, right)),
        Mistake("that is bits: a byte is 8 bits", _per_case_ratio(8, right)),
        Mistake("the batch is missing: every sequence in the batch has its own cache",
                lambda got, L, h, hd, T, B, a: B > 1 and _per_case_ratio(1 / B, right)(got, L, h, hd, T, B, a)),
        Mistake("bytes per element are missing: that is the number of elements",
                lambda got, L, h, hd, T, B, a: a > 1 and _per_case_ratio(1 / a, right)(got, L, h, hd, T, B, a)),
    ]
    def hidden(g: torch.Generator) -> Case:
        args = (_randint(g, 1, 96), _randint(g, 1, 64), _choice(g, [16, 64, 80, 128]), _randint(g, 1, 32768),
                _randint(g, 1, 64), _choice(g, [4, 2, 1]))
        return Case(f"kv_cache_bytes{args}", args, {}, kv_cache_bytes(*args[:5], names[args[5]]))

    return run_check("kv_cache_bytes", fn, cases, returns=INT, mistakes=mistakes, quiet=quiet, hidden=hidden,
                     forbid=("labkit.memory.kv_cache_bytes",), reference="labkit.memory.kv_cache_bytes")


# =============================================================================================
# lab 03 (where memory goes)


@checks_safely("adam_training_bytes")
def check_adam_training_bytes(fn: Callable[[int, int], int], quiet: bool = False) -> CheckResult:
    """Exercise: bytes (int) for params + grads + Adam's two moment buffers, all in one dtype."""
    from labkit.memory import training_state_bytes
    cases = []
    for n_params, nbytes in [(1, 4), (806_528, 4), (7_000_000_000, 2)]:
        dtype = {4: "fp32", 2: "bf16"}[nbytes]
        expected = training_state_bytes(n_params, param_dtype=dtype, optimizer="adam")["total"]
        cases.append(Case(f"adam_training_bytes(n_params={n_params:,}, bytes_per_element={nbytes})",
                          (n_params, nbytes), {}, expected))
    right = lambda n, a: 4 * n * a
    mistakes = [
        Mistake("three copies instead of four: params, grads AND Adam's two moments (exp_avg, exp_avg_sq)",
                _per_case_ratio(0.75, right)),
        Mistake("two copies instead of four: don't forget Adam's two moments (exp_avg, exp_avg_sq)",
                _per_case_ratio(0.5, right)),
        Mistake("that counts elements, not bytes: multiply by bytes_per_element", _per_case_ratio(0.25, right)),
    ]
    def hidden(g: torch.Generator) -> Case:
        n_params, nbytes = _randint(g, 0, 10**11), _choice(g, [4, 2])
        return Case(f"adam_training_bytes(n_params={n_params:,}, bytes_per_element={nbytes})", (n_params, nbytes), {},
                    training_state_bytes(n_params, {4: "fp32", 2: "bf16"}[nbytes], optimizer="adam")["total"])

    return run_check("adam_training_bytes", fn, cases, returns=INT, mistakes=mistakes, quiet=quiet, hidden=hidden,
                     forbid=("labkit.memory.training_state_bytes",), reference="labkit.memory.training_state_bytes")


def _random_config(g: torch.Generator) -> Any:
    """A small random GPTConfig (no biases): positions, tying, GQA and the MLP kind all vary."""
    from labkit.model import GPTConfig
    n_kv_head = _randint(g, 1, 4)
    n_head = n_kv_head * _randint(g, 1, 3)
    head_dim = 2 * _randint(g, 2, 8)          # even (rotary needs it), ≥ 4 (where the activation formula is derived)
    activation = _choice(g, ["gelu", "relu2", "swiglu"])
    return GPTConfig(vocab_size=_randint(g, 2, 300), block_size=_randint(g, 1, 256), n_layer=_randint(g, 1, 4),
                     n_head=n_head, n_kv_head=n_kv_head, n_embd=n_head * head_dim,
                     positions=_choice(g, ["learned", "sinusoidal", "rotary"]), tie_weights=_choice(g, [True, False]),
                     activation=activation, mlp_hidden=_choice(g, [None, _randint(g, 1, 300)]))


@checks_safely("gpt_param_count")
def check_gpt_param_count(fn: Callable[[Any], int], quiet: bool = False) -> CheckResult:
    """Exercise: parameters (int, exact) of `GPT(config)` by formula (bias=False; tying, positions and GQA vary)."""
    from labkit.memory import gpt_param_count
    from labkit.model import GPTConfig
    configs = [
        ("the baby GPT (untied head, learned positions)",
         GPTConfig(vocab_size=84, block_size=64, n_layer=4, n_head=4, n_embd=128, tie_weights=False)),
        ("tied embedding and head", GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)),
        ("sinusoidal positions (a buffer, not a parameter)",
         GPTConfig(vocab_size=65, block_size=256, n_layer=2, n_head=2, n_embd=64, positions="sinusoidal")),
        ("grouped-query attention (n_kv_head=2 of 8 heads)",
         GPTConfig(vocab_size=100, block_size=32, n_layer=3, n_head=8, n_kv_head=2, n_embd=64, tie_weights=False)),
        ("multi-query attention, rotary positions",
         GPTConfig(vocab_size=84, block_size=128, n_layer=6, n_head=6, n_kv_head=1, n_embd=192, positions="rotary")),
        ("a LLaMA-style block: SwiGLU MLP (3 matrices, hidden 172), GQA, rotary, untied",
         GPTConfig(vocab_size=100, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, activation="swiglu",
                   mlp_hidden=172, positions="rotary", tie_weights=False)),
    ]
    cases = [Case(f"{what}: {c}", (c,), {}, gpt_param_count(c)) for what, c in configs]
    mistakes = [
        Mistake("a tied head is the embedding matrix again: count it once",
                lambda got, c: c.tie_weights and _int_eq(got, gpt_param_count(c) + c.vocab_size * c.n_embd)),
        Mistake("k and v have n_kv_head heads, not n_head: (n_head + 2·n_kv_head)·head_dim outputs",
                lambda got, c: c.n_kv_head != c.n_head and _int_eq(got, gpt_param_count(replace(c, n_kv_head=c.n_head)))),
        Mistake("sinusoidal (and rotary) positions are a fixed buffer, not parameters: only learned positions count",
                lambda got, c: c.positions != "learned" and _int_eq(got, gpt_param_count(c) + c.block_size * c.n_embd)),
        Mistake("the untied output head (vocab_size × n_embd) is missing",
                lambda got, c: not c.tie_weights and _int_eq(got, gpt_param_count(c) - c.vocab_size * c.n_embd)),
        Mistake("SwiGLU has THREE matrices (w_gate and w_up: C → mlp_hidden, w_down: mlp_hidden → C)",
                lambda got, c: c.activation == "swiglu"
                and _int_eq(got, gpt_param_count(c) - c.n_layer * c.n_embd * c.mlp_hidden)),
        Mistake("the MLP is not GPT-2's 8·C² here: its hidden width is config.mlp_hidden "
                "(and SwiGLU has three matrices)",
                lambda got, c: _int_eq(got, gpt_param_count(c) + c.n_layer * (8 * c.n_embd ** 2 - c.n_embd * c.mlp_hidden
                                       * (3 if c.activation == "swiglu" else 2))) and c.mlp_hidden != 4 * c.n_embd
                or c.activation == "swiglu" and _int_eq(got, gpt_param_count(c) + c.n_layer * (
                    8 * c.n_embd ** 2 - 3 * c.n_embd * c.mlp_hidden))),
        Mistake("the final LayerNorm ln_f (n_embd weights) is missing",
                lambda got, c: _int_eq(got, gpt_param_count(c) - c.n_embd)),
        Mistake("the LayerNorms are missing: 2 per block (n_embd each) and ln_f",
                lambda got, c: _int_eq(got, gpt_param_count(c) - (2 * c.n_layer + 1) * c.n_embd)),
    ]
    def hidden(g: torch.Generator) -> Case:
        c = _random_config(g)
        return Case(f"{c}", (c,), {}, gpt_param_count(c))

    return run_check("gpt_param_count", fn, cases, returns=INT, mistakes=mistakes, quiet=quiet, hidden=hidden,
                     forbid=("labkit.memory.gpt_param_count", "labkit.model.GPT", "labkit.model.build_model"),
                     reference="labkit.memory.gpt_param_count")


@checks_safely("mlp_activation_bytes")
def check_mlp_activation_bytes(fn: Callable[[int, int, int, int], int], quiet: bool = False) -> CheckResult:
    """Exercise: bytes (int) one block's MLP saves for backward, for batch_size, seq_len, n_embd, bytes_per_element.

    The expected value is the course's 4× MLP, 9·B·T·C·a (fc input, fc/activation output, proj input),
    which is what SavedTensorMeter measures on labkit.model.MLP (tests/test_grading_lab03.py checks that).
    """
    from labkit.memory import mlp_activation_bytes
    cases = [Case(f"mlp_activation_bytes(batch_size={B}, seq_len={T}, n_embd={C}, bytes_per_element={a})",
                  (B, T, C, a), {}, mlp_activation_bytes(B, T, C, a))
             for B, T, C, a in [(12, 64, 128, 4), (1, 1, 8, 4), (8, 4096, 4096, 2), (3, 10, 48, 2)]]
    right = lambda B, T, C, a: 9 * B * T * C * a
    mistakes = [
        Mistake("8·B·T·C·a: the fc layer's input x (C per token) is saved too", _per_case_ratio(8 / 9, right)),
        Mistake("5·B·T·C·a: the activation saves its own output (4C) AND proj saves its input (another 4C)",
                _per_case_ratio(5 / 9, right)),
        Mistake("those are elements: multiply by bytes_per_element",
                lambda got, B, T, C, a: a > 1 and _per_case_ratio(1 / a, right)(got, B, T, C, a)),
    ]
    def hidden(g: torch.Generator) -> Case:
        B, T, C, a = _randint(g, 1, 64), _randint(g, 1, 8192), _randint(g, 1, 8192), _choice(g, [4, 2, 1])
        return Case(f"mlp_activation_bytes(batch_size={B}, seq_len={T}, n_embd={C}, bytes_per_element={a})",
                    (B, T, C, a), {}, mlp_activation_bytes(B, T, C, a))

    return run_check("mlp_activation_bytes", fn, cases, returns=INT, mistakes=mistakes, quiet=quiet, hidden=hidden,
                     forbid=("labkit.memory.mlp_activation_bytes", "labkit.memory.gpt_activation_bytes",
                             "labkit.memory.SavedTensorMeter"),
                     reference="labkit.memory.mlp_activation_bytes")


def _training_bytes(config: Any, seq_len: int, batch_size: int) -> int:
    """fp32 weights + grads + AdamW state, plus the activations of one training step at batch_size."""
    from labkit.memory import gpt_activation_bytes, gpt_param_count, training_state_bytes
    state = training_state_bytes(gpt_param_count(config), "fp32", "adamw")["total"]
    return state + (gpt_activation_bytes(config, batch_size, seq_len, "fp32")["total"] if batch_size else 0)


def _largest_batch(config: Any, seq_len: int, budget_bytes: int) -> int:
    """Largest B ≥ 0 whose training step fits in budget_bytes: labkit's reference."""
    from labkit.memory import largest_batch_that_fits
    return largest_batch_that_fits(config, seq_len, budget_bytes)


@checks_safely("largest_batch_that_fits")
def check_largest_batch_that_fits(fn: Callable[[Any, int, int], int], quiet: bool = False) -> CheckResult:
    """Exercise: the largest batch size (int ≥ 0) whose fp32 + AdamW training step fits in budget_bytes.

    Cases include a budget exactly equal to the bytes at some batch (it fits), one byte less (it
    doesn't), a budget where even batch 1 doesn't fit (answer 0), and GQA / rotary configs.
    """
    from labkit.memory import gpt_activation_bytes, gpt_param_count
    from labkit.model import GPTConfig
    baby = GPTConfig(vocab_size=84, block_size=64, n_layer=4, n_head=4, n_embd=128, tie_weights=False)
    gqa = GPTConfig(vocab_size=100, block_size=128, n_layer=3, n_head=8, n_kv_head=2, n_embd=64, positions="rotary")
    mqa = GPTConfig(vocab_size=84, block_size=256, n_layer=2, n_head=4, n_kv_head=1, n_embd=96, positions="rotary",
                    tie_weights=False)
    GiB, MiB = 2**30, 2**20
    examples = [
        ("the baby GPT, T=64, 1 GiB", baby, 64, 1 * GiB),
        ("the baby GPT, T=64, a budget of exactly the bytes at batch 12 (it fits: ≤)", baby, 64,
         _training_bytes(baby, 64, 12)),
        ("the baby GPT, T=64, one byte less than the bytes at batch 12", baby, 64, _training_bytes(baby, 64, 12) - 1),
        ("the baby GPT, T=64, a budget smaller than the weights and Adam state alone (answer 0)", baby, 64, 4 * MiB),
        ("the baby GPT, T=64, room for the state but not one sequence (answer 0)", baby, 64,
         _training_bytes(baby, 64, 1) - 1),
        ("GQA (2 KV heads of 8), rotary positions, T=128, 256 MiB", gqa, 128, 256 * MiB),
        ("MQA (1 KV head), rotary, untied, T=200, 100 MiB", mqa, 200, 100 * MiB),
    ]
    cases = [Case(f"{what}: budget {budget:,} bytes", (c, T, budget), {}, _largest_batch(c, T, budget))
             for what, c, T, budget in examples]

    def activations_only(c: Any, T: int, budget: int) -> int:
        per_b = gpt_activation_bytes(c, 1, T, "fp32")["total"]
        return budget // per_b

    def weights_only(c: Any, T: int, budget: int) -> int:
        rest = budget - 4 * gpt_param_count(c)
        per_b = gpt_activation_bytes(c, 1, T, "fp32")["total"]
        return max(rest // per_b, 0)

    right = lambda c, T, b: _largest_batch(c, T, b)
    mistakes = [
        Mistake("even batch 1 does not fit here: return 0", lambda got, c, T, b: right(c, T, b) == 0 and _int_eq(got, 1)),
        Mistake("one too many: that is the first batch that does NOT fit (stop before it; bytes ≤ budget fits)",
                lambda got, c, T, b: _int_eq(got, right(c, T, b) + 1)),
        Mistake("one too few: a budget exactly equal to the bytes needed still fits (use ≤, not <)",
                lambda got, c, T, b: _int_eq(got, right(c, T, b) - 1)),
        Mistake("the training state is missing: weights, grads and AdamW's two moments (16 bytes/param in fp32) "
                "take their share of the budget before any activation",
                lambda got, c, T, b: activations_only(c, T, b) != right(c, T, b)
                and _int_eq(got, activations_only(c, T, b))),
        Mistake("only the weights are charged: add the gradients and AdamW's two moments too (16 bytes/param in fp32)",
                lambda got, c, T, b: weights_only(c, T, b) != right(c, T, b) and _int_eq(got, weights_only(c, T, b))),
    ]
    def hidden(g: torch.Generator) -> Case:
        c = _random_config(g)
        T = _randint(g, 1, c.block_size)
        state_and_one = _training_bytes(c, T, 1)
        budget = _randint(g, state_and_one // 2, state_and_one * 40)
        return Case(f"{c}, T={T}: budget {budget:,} bytes", (c, T, budget), {}, _largest_batch(c, T, budget))

    return run_check("largest_batch_that_fits", fn, cases, returns=INT, mistakes=mistakes, quiet=quiet, hidden=hidden,
                     forbid=("labkit.memory.largest_batch_that_fits",), reference="labkit.memory.largest_batch_that_fits")


# =============================================================================================
# lab 04 (pruning and sparse storage)


def _magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The mask (bool, True = kept) that removes round(sparsity · numel) weights of smallest |w|.

    Among equal |w| at the cut, the earlier positions (in weight.flatten() order) go first; the check
    accepts any choice among such ties (see `_magnitude_call`).
    """
    n_remove = round(sparsity * weight.numel())
    order = weight.detach().abs().flatten().argsort(stable=True)
    keep = torch.ones(weight.numel(), dtype=torch.bool)
    keep[order[:n_remove]] = False
    return keep.view(weight.shape)


def _is_magnitude_mask(mask: Any, weight: torch.Tensor, n_remove: int, signed: bool = False) -> bool:
    """True when `mask` is a bool tensor shaped like weight that removes n_remove weights, none larger than a kept one.

    With signed=True the order is by w itself rather than |w| (the mistake of forgetting abs).
    """
    if not (isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and mask.shape == weight.shape):
        return False
    score = weight.detach().double() if signed else weight.detach().double().abs()
    removed, kept = score[~mask], score[mask]
    if removed.numel() != n_remove:
        return False
    return removed.numel() == 0 or kept.numel() == 0 or bool(removed.max() <= kept.min())


def _magnitude_call(fn: Callable, args: tuple, kwargs: dict) -> Any:
    """Call the learner's magnitude_mask; a right mask that breaks a tie differently is shown as the check's choice.

    When several weights share the |w| at the cut, which of them are removed is the learner's choice:
    any mask that removes exactly round(sparsity · numel) weights, none of larger |w| than a kept one, is
    right, and is replaced here by the check's own tie order so the comparison is exact.
    """
    weight, sparsity = args[0].clone(), args[1]      # a copy: the learner's function may edit its input
    got = fn(*args, **kwargs)
    if _is_magnitude_mask(got, weight, round(sparsity * weight.numel())):
        return _magnitude_mask(weight, sparsity)
    return got


def _removes(got: Any, weight: torch.Tensor) -> int | None:
    """How many weights a bool mask shaped like weight removes; None for anything else."""
    ok = isinstance(got, torch.Tensor) and got.dtype == torch.bool and got.shape == weight.shape
    return int((~got).sum()) if ok else None


def _threshold_counts(weight: torch.Tensor, sparsity: float) -> tuple[int, int]:
    """(#|w| < t, #|w| <= t) for t the n_remove-th smallest |w|: what `>=` and `>` against t remove."""
    n_remove = round(sparsity * weight.numel())
    if n_remove == 0:
        return 0, 0
    a = weight.detach().double().abs().flatten()
    t = a.sort().values[n_remove - 1]
    return int((a < t).sum()), int((a <= t).sum())


def _has_tie_at_cut(weight: torch.Tensor, sparsity: float) -> bool:
    below, at_or_below = _threshold_counts(weight, sparsity)
    return at_or_below - below > 1


@checks_safely("magnitude_mask")
def check_magnitude_mask(fn: Callable[[torch.Tensor, float], torch.Tensor], quiet: bool = False) -> CheckResult:
    """Exercise: a bool mask shaped like weight (True = kept) removing the round(sparsity · numel) smallest |w|.

    Ties: when several weights share the |w| at the cut, remove only as many of them as the count
    needs; which ones is the learner's choice (any is accepted).
    """
    g = torch.Generator().manual_seed(4)

    def distinct(*shape: int) -> torch.Tensor:
        """Random weights with no two |w| equal (the main examples avoid ties on purpose)."""
        while True:
            w = torch.randn(*shape, generator=g)
            if w.abs().unique().numel() == w.numel():
                return w

    half_zero = distinct(4, 6)
    half_zero[torch.rand(4, 6, generator=g) < 0.5] = 0.0     # a weight pruned before: its zeros tie at |w| = 0
    examples = [
        ("weight [0.5, -2.0, 0.1, 3.0, -0.3], sparsity 0.4 (remove 2: the two smallest |w|, 0.1 and -0.3)",
         torch.tensor([0.5, -2.0, 0.1, 3.0, -0.3]), 0.4),
        ("a random 4×5 weight, sparsity 0.5 (remove 10)", distinct(4, 5), 0.5),
        ("a random 3×4 weight, sparsity 0.3 (remove round(0.3 · 12) = round(3.6) = 4)", distinct(3, 4), 0.3),
        ("a random 2×3 weight, sparsity 0.0 (remove nothing)", distinct(2, 3), 0.0),
        ("a random 10×1 weight (one column), sparsity 0.83 (remove round(8.3) = 8)", distinct(10, 1), 0.83),
        (f"a 4×6 weight already {int((half_zero == 0).sum())} zeros (pruned before), sparsity 0.75 (remove 18)",
         half_zero, 0.75),
        ("weight [0.5, -0.2, 0.2, 0.9, -0.2, 0.7, 0.1, -1.0], sparsity 0.25 (remove 2: 0.1 and ONE of the three "
         "|w| = 0.2 — a tie at the cut)", torch.tensor([0.5, -0.2, 0.2, 0.9, -0.2, 0.7, 0.1, -1.0]), 0.25),
    ]
    cases = [Case(what, (w, s), {}, _magnitude_mask(w, s)) for what, w, s in examples]

    def count(w: torch.Tensor, s: float) -> int:
        return round(s * w.numel())

    def removes_smallest(n_of: Callable[[torch.Tensor, float], int]) -> Callable[..., bool]:
        """A matcher: a mask removing the n_of(w, s) smallest |w|, when that is not the right count."""
        return lambda got, w, s: n_of(w, s) != count(w, s) and _is_magnitude_mask(got, w, n_of(w, s))

    def per_row(got: Any, w: torch.Tensor, s: float) -> bool:
        """The same fraction removed from each row separately (Wanda's comparison group), not from the whole matrix."""
        return (w.dim() == 2 and w.shape[0] > 1 and _removes(got, w) is not None
                and not _is_magnitude_mask(got, w, count(w, s))
                and all(_is_magnitude_mask(got[r], w[r], round(s * w.shape[1])) for r in range(w.shape[0])))

    def keeps_smallest(got: Any, w: torch.Tensor, s: float) -> bool:
        if _removes(got, w) != count(w, s) or count(w, s) in (0, w.numel()):
            return False
        a = w.detach().double().abs()
        return bool(a[got].max() <= a[~got].min())

    def inverted(got: Any, w: torch.Tensor, s: float) -> bool:
        """True = pruned instead of kept: ~got is the right mask."""
        return _removes(got, w) is not None and 0 < count(w, s) < w.numel() and _is_magnitude_mask(~got, w, count(w, s))

    def numbers_01(got: Any, w: torch.Tensor, s: float) -> bool:
        return (isinstance(got, torch.Tensor) and got.dtype != torch.bool and got.shape == w.shape
                and bool(((got == 0) | (got == 1)).all()))

    def pruned_weights(got: Any, w: torch.Tensor, s: float) -> bool:
        return (isinstance(got, torch.Tensor) and got.dtype != torch.bool and got.shape == w.shape
                and not numbers_01(got, w, s))

    def flattened(got: Any, w: torch.Tensor, s: float) -> bool:
        return isinstance(got, torch.Tensor) and got.numel() == w.numel() and got.shape != w.shape

    mistakes = [
        Mistake("you returned 0/1 numbers, not True/False: the lab needs a bool mask (True = kept) — a comparison "
                "such as `weight.abs() > ...` gives one, or call .bool() on yours", numbers_01),
        Mistake("that looks like the pruned weight itself; return the mask (bool, True where the weight is kept), "
                "the lab multiplies by it", pruned_weights),
        Mistake("return the mask in the weight's shape (e.g. mask.view_as(weight)), not flattened", flattened),
        Mistake("the mask is inverted: True must mean KEPT (the lab computes weight * mask); yours is True at the "
                "weights to remove — flip it with ~", inverted),
        Mistake("you kept the smallest |w| and removed the largest: magnitude pruning removes the SMALLEST |w| "
                "(they change the layer's output least)", keeps_smallest),
        Mistake("you pruned each row separately (the same fraction per row): this exercise removes the smallest |w| "
                "of the WHOLE matrix — flatten it first (weight.abs().flatten())", per_row),
        Mistake("you ranked by the signed value w, so large NEGATIVE weights were removed: rank by magnitude, "
                "weight.abs()", lambda got, w, s: bool((w < 0).any()) and not _is_magnitude_mask(got, w, count(w, s))
                and _is_magnitude_mask(got, w, count(w, s), signed=True)),
        Mistake("the weights tied at the threshold were ALL removed (|w| > t): when several share the |w| at the cut, "
                "remove only as many as the count needs — any of them; e.g. sort |w| and remove the first "
                "round(sparsity · numel) positions",
                lambda got, w, s: _has_tie_at_cut(w, s) and _removes(got, w) == _threshold_counts(w, s)[1]),
        Mistake("the weights tied at the threshold were ALL kept (|w| >= t): when several share the |w| at the cut, "
                "remove only as many as the count needs — any of them; e.g. sort |w| and remove the first "
                "round(sparsity · numel) positions",
                lambda got, w, s: _has_tie_at_cut(w, s) and _removes(got, w) == _threshold_counts(w, s)[0]),
        Mistake("at sparsity 0 nothing is removed: k = round(0 · numel) = 0 has no k-th smallest |w| to use as a "
                "threshold — return an all-True mask when k is 0",
                lambda got, w, s: count(w, s) == 0 and (_removes(got, w) or 0) > 0),
        Mistake("you rounded the count down (int or //): remove round(sparsity · numel) weights, as "
                "torch.nn.utils.prune does (round(3.6) = 4)",
                removes_smallest(lambda w, s: math.floor(s * w.numel()))),
        Mistake("you rounded the count up (ceil): remove round(sparsity · numel) weights",
                removes_smallest(lambda w, s: math.ceil(s * w.numel()))),
        Mistake("one weight too few was removed: with t the k-th smallest |w| (k = round(sparsity · numel)), "
                "keep |w| > t, not |w| >= t", removes_smallest(lambda w, s: count(w, s) - 1)),
        Mistake("one weight too many was removed: t must be the k-th smallest |w| (k = round(sparsity · numel)), "
                "and the mask keeps |w| > t", removes_smallest(lambda w, s: count(w, s) + 1)),
    ]
    returns = Returns("tensor", dtypes=(torch.bool,),
                      why="the lab prunes with weight * mask and counts the removed weights with (~mask).sum()")

    def hidden(g: torch.Generator) -> Case:
        rows, cols = _randint(g, 1, 12), _randint(g, 1, 12)
        w = torch.randn(rows, cols, generator=g)
        if _randint(g, 0, 2) == 0:
            w[torch.rand(rows, cols, generator=g) < _uniform(g, 0.1, 0.6)] = 0.0     # ties at zero, as after pruning
        n = rows * cols
        n_remove = _randint(g, 0, n - 1)
        s = round((n_remove + _uniform(g, -0.3, 0.3)) / n, 4)          # never a half-way count: round() is clear
        s = min(max(s, 0.0), 0.9999)
        return Case(f"a random {rows}×{cols} weight, sparsity {s}", (w, s), {}, _magnitude_mask(w, s))

    return run_check("magnitude_mask", fn, cases, returns=returns, mistakes=mistakes, quiet=quiet, hidden=hidden,
                     call=_magnitude_call, reference="labkit.prune.magnitude_mask",
                     forbid=("labkit.prune.magnitude_mask", "labkit.prune.layer_masks",
                             "torch.nn.utils.prune.l1_unstructured", "torch.nn.utils.prune.global_unstructured",
                             "torch.nn.utils.prune.L1Unstructured", "labkit.prune.*", "labkit.sparse.*",
                             "torch.nn.utils.prune.*"))


def _csr_bytes(n_rows: int, nnz: int, value_bytes: int, index_bytes: int) -> int:
    """CSR bytes by its closed form: a value and a column index per nonzero, plus n_rows + 1 row pointers."""
    return nnz * (value_bytes + index_bytes) + (n_rows + 1) * index_bytes


@checks_safely("csr_bytes")
def check_csr_bytes(fn: Callable[[int, int, int, int], int], quiet: bool = False) -> CheckResult:
    """Exercise: bytes (int) of a CSR matrix with n_rows rows and nnz nonzeros at value_bytes / index_bytes each."""
    examples = [
        ("a 4-row matrix with 6 nonzeros, float32 values and int32 indices", (4, 6, 4, 4)),
        ("an empty 3-row matrix (no nonzeros: only the row pointers remain)", (3, 0, 4, 4)),
        ("the baby GPT's mlp.fc weight (512 rows × 128) at 50% sparsity: 32,768 nonzeros", (512, 32_768, 4, 4)),
        ("3 rows with 5 nonzeros, float32 values and int64 indices (what torch.sparse_csr_tensor uses)",
         (3, 5, 4, 8)),
        ("128 rows, 8,192 nonzeros, float16 values and int32 indices", (128, 8_192, 2, 4)),
        ("a LLaMA-2-7B MLP matrix (11,008 rows × 4,096) at 50%: 22,544,384 nonzeros, bf16 values, int16 indices",
         (11_008, 22_544_384, 2, 2)),
    ]
    cases = [Case(f"csr_bytes(n_rows={r:,}, nnz={z:,}, value_bytes={v}, index_bytes={i}): {what}", (r, z, v, i), {},
                  _csr_bytes(r, z, v, i)) for what, (r, z, v, i) in examples]
    mistakes = [
        Mistake("n_rows row pointers, one too few: CSR stores n_rows + 1 (row r's nonzeros sit between row_ptr[r] "
                "and row_ptr[r + 1], so the last row needs an end too)",
                lambda got, r, z, v, i: _int_eq(got, z * (v + i) + r * i)),
        Mistake("the row pointers are missing: besides a value and a column index per nonzero, CSR stores "
                "n_rows + 1 row pointers of index_bytes each",
                lambda got, r, z, v, i: _int_eq(got, z * (v + i))),
        Mistake("that is COO (a row AND a column index per nonzero); CSR keeps one column index per nonzero and "
                "replaces the row indices by n_rows + 1 row pointers",
                lambda got, r, z, v, i: _int_eq(got, z * (v + 2 * i))),
        Mistake("the row pointers are indices: index_bytes each, not value_bytes",
                lambda got, r, z, v, i: v != i and _int_eq(got, z * (v + i) + (r + 1) * v)),
        Mistake("that is bits: a byte is 8 bits (value_bytes and index_bytes are already in bytes)",
                lambda got, r, z, v, i: _int_eq(got, 8 * _csr_bytes(r, z, v, i))),
        Mistake("value_bytes and index_bytes are already bytes: don't divide by 8",
                lambda got, r, z, v, i: _per_case_ratio(1 / 8, _csr_bytes)(got, r, z, v, i)
                or _int_eq(got, _csr_bytes(r, z, v, i) // 8)),
        Mistake("the row pointers were given 8 bytes each (torch's int64): here they take index_bytes each, like the "
                "column indices", lambda got, r, z, v, i: i != 8 and _int_eq(got, z * (v + i) + (r + 1) * 8)),
        Mistake("each nonzero costs its value AND its column index: nnz · (value_bytes + index_bytes)",
                lambda got, r, z, v, i: z > 0 and (_int_eq(got, z * v + (r + 1) * i)
                                                   or _int_eq(got, z * i + (r + 1) * i))),
    ]

    def hidden(g: torch.Generator) -> Case:
        r, c = _randint(g, 1, 20_000), _randint(g, 1, 20_000)
        z, v, i = _randint(g, 0, r * c), _choice(g, [1, 2, 4]), _choice(g, [1, 2, 4, 8])
        return Case(f"csr_bytes(n_rows={r:,}, nnz={z:,}, value_bytes={v}, index_bytes={i})", (r, z, v, i), {},
                    _csr_bytes(r, z, v, i))

    return run_check("csr_bytes", fn, cases, returns=INT, mistakes=mistakes, quiet=quiet, hidden=hidden,
                     forbid=("labkit.sparse.csr_bytes", "labkit.sparse.format_bytes", "labkit.sparse.*",
                             "labkit.prune.*"),
                     reference="labkit.sparse.csr_bytes")


def _csr_break_even(n_rows: int, n_cols: int, value_bytes: int, index_bytes: int) -> float:
    """The density (0–1) where CSR bytes equal dense bytes; 0.0 when the row pointers alone outweigh dense.

    CSR at density d: d·R·C·(v + i) + (R + 1)·i; dense: R·C·v. Equal at
    d = (R·C·v − (R + 1)·i) / (R·C·(v + i)), computed exactly (Fraction) and rounded once.
    """
    cells = n_rows * n_cols
    d = Fraction(cells * value_bytes - (n_rows + 1) * index_bytes, cells * (value_bytes + index_bytes))
    return float(max(d, Fraction(0)))


@checks_safely("csr_break_even")
def check_csr_break_even(fn: Callable[[int, int, int, int], float], quiet: bool = False) -> CheckResult:
    """Exercise: the density (fraction of nonzeros, 0–1) below which CSR takes fewer bytes than dense.

    When even an empty CSR matrix (its n_rows + 1 row pointers) takes more bytes than the dense one,
    CSR never saves and the answer is 0.0 (never negative).
    """
    examples = [
        ("4,096 × 4,096, float16 values, int32 indices", (4096, 4096, 2, 4)),
        ("the baby GPT's mlp.fc weight: 512 rows × 128 columns, float32 values, int32 indices", (512, 128, 4, 4)),
        ("its mlp.proj weight: 128 rows × 512 columns, float32, int32", (128, 512, 4, 4)),
        ("a small 3 × 2 matrix, float32, int32: the row pointers matter a lot here", (3, 2, 4, 4)),
        ("1,000 × 1,000, float32 values, int16 indices", (1000, 1000, 4, 2)),
        ("a single column of 10 rows, int8 values, int32 indices: the 11 row pointers alone (44 bytes) outweigh "
         "the dense 10 bytes, so CSR never saves (answer 0.0)", (10, 1, 1, 4)),
    ]
    cases = []
    for what, (r, c, v, i) in examples:
        d = _csr_break_even(r, c, v, i)
        cases.append(Case(f"csr_break_even(n_rows={r:,}, n_cols={c:,}, value_bytes={v}, index_bytes={i}): {what}",
                          (r, c, v, i), {}, d, f"{d:.6g}"))

    def matches(wrong: Callable[[int, int, int, int], float]) -> Callable[..., bool]:
        """A matcher: the learner's answer equals wrong(r, c, v, i), and that differs from the right answer."""
        def m(got: Any, r: int, c: int, v: int, i: int) -> bool:
            bad, right = wrong(r, c, v, i), _csr_break_even(r, c, v, i)
            value, problem = as_number(got, integer=False)
            return (problem is None and abs(bad - right) > 1e-9
                    and math.isclose(value, bad, rel_tol=1e-6, abs_tol=1e-9))
        return m

    raw = lambda r, c, v, i: (r * c * v - (r + 1) * i) / (r * c * (v + i))
    mistakes = [
        Mistake("integer division (//) rounds the density down to a whole number: divide with /",
                matches(lambda r, c, v, i: max(0, (r * c * v - (r + 1) * i) // (r * c * (v + i))))),
        Mistake("a negative density: when the row pointers alone take more bytes than the dense matrix, CSR never "
                "saves bytes — return 0.0 (clamp with max(0.0, ...))", matches(raw)),
        Mistake("v / (v + i) ignores the n_rows + 1 row pointers: they cost (n_rows + 1) · index_bytes even with "
                "no nonzeros, which lowers the break-even density",
                matches(lambda r, c, v, i: v / (v + i))),
        Mistake("v / i compares a value with an index: each stored nonzero costs value_bytes + index_bytes, each "
                "dense entry value_bytes", matches(lambda r, c, v, i: v / i)),
        Mistake("that is the sparsity at break-even (the fraction REMOVED); return the density, the fraction kept "
                "(1 − that)", matches(lambda r, c, v, i: 1 - _csr_break_even(r, c, v, i))),
        Mistake("that is the sparsity of v / (v + i), and it ignores the row pointers: return the density "
                "(fraction kept), counting n_rows + 1 row pointers", matches(lambda r, c, v, i: i / (v + i))),
        Mistake("that is a percentage: return a fraction between 0 and 1",
                matches(lambda r, c, v, i: 100 * _csr_break_even(r, c, v, i))),
        Mistake("n_cols + 1 pointers is CSC (compressed columns); CSR has n_rows + 1 row pointers",
                matches(lambda r, c, v, i: max(0.0, (r * c * v - (c + 1) * i) / (r * c * (v + i))))),
        Mistake("n_rows pointers, one too few: CSR stores n_rows + 1 row pointers",
                matches(lambda r, c, v, i: max(0.0, (r * c * v - r * i) / (r * c * (v + i))))),
    ]
    returns = Returns("float", why="the lab marks it on the memory-vs-quality plot as a density between 0 and 1")

    def hidden(g: torch.Generator) -> Case:
        r, c = _randint(g, 1, 5000), _randint(g, 1, 5000)
        v, i = _choice(g, [1, 2, 4]), _choice(g, [1, 2, 4, 8])
        d = _csr_break_even(r, c, v, i)
        return Case(f"csr_break_even(n_rows={r:,}, n_cols={c:,}, value_bytes={v}, index_bytes={i})", (r, c, v, i),
                    {}, d, f"{d:.6g}")

    return run_check("csr_break_even", fn, cases, rtol=1e-6, atol=1e-9, returns=returns, mistakes=mistakes,
                     quiet=quiet, hidden=hidden,
                     forbid=("labkit.sparse.break_even_density", "labkit.sparse.*", "labkit.prune.*"),
                     reference="labkit.sparse.break_even_density")


# =============================================================================================
# lab 05 (quantization)

# What a learner must not call to quantize: labkit's own quantizers and references, and torch's (the
# quantized-tensor functions, fake quantization and torch.ao's observers and modules). torch.round and
# torch.clamp are the exercise's tools and stay allowed.
TORCH_QUANTIZERS = (
    "torch.quantize_per_tensor", "torch.quantize_per_channel", "torch.quantize_per_tensor_dynamic",
    "torch.fake_quantize_per_tensor_affine", "torch.fake_quantize_per_channel_affine",
    "torch.ao.quantization.quantize_dynamic", "torch.ao.quantization.FakeQuantize",
    "torch.ao.quantization.MinMaxObserver", "torch.ao.quantization.PerChannelMinMaxObserver",
    "torch.ao.quantization.*",
)
LABKIT_QUANTIZERS = ("labkit.quantize.quantize", "labkit.quantize.fake_quantize", "labkit.quantize.quantize_tensor",
                     "labkit.quantize.*", "labkit.gptq.*", "labkit.qat.*", "labkit.outliers.*")


def _absmax_quantize(w: torch.Tensor, bits: int, levels: int | None = None, clamp: float | None = None,
                     rounding: Callable[[torch.Tensor], torch.Tensor] = torch.round, amax_dim: int | None = None,
                     codes: bool = False) -> torch.Tensor:
    """Symmetric absmax: q = clamp(round(w / scale), ±(2^(b−1) − 1)) with scale = max|w| / (2^(b−1) − 1); q · scale.

    Computed in w's dtype; an all-zero w (scale 0) gives zeros. The keywords build the typical mistakes:
    another level count, another clamp (math.inf: none), another rounding, a scale per row/column
    (amax_dim), or the integer codes themselves.
    """
    top = 2 ** (bits - 1) - 1
    levels = top if levels is None else levels
    clamp = top if clamp is None else clamp
    amax = w.abs().max() if amax_dim is None else w.abs().amax(dim=amax_dim, keepdim=True)
    scale = amax / levels
    q = rounding(w / scale).clamp(-clamp, clamp)
    if codes:
        return q
    return torch.where(scale > 0, q * scale, torch.zeros_like(w))


def _half_away(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _half_up(x: torch.Tensor) -> torch.Tensor:
    return torch.floor(x + 0.5)


@checks_safely("absmax_quantize")
def check_absmax_quantize(fn: Callable[[torch.Tensor, int], torch.Tensor], quiet: bool = False) -> CheckResult:
    """Exercise: w quantized to `bits` with ONE symmetric absmax scale, returned dequantized (w's shape and dtype).

    scale = max|w| / (2^(bits−1) − 1); q = round(w / scale) (torch.round: halves to even), clamped to
    ±(2^(bits−1) − 1); return q · scale. An all-zero w returns zeros.
    """
    g = torch.Generator().manual_seed(5)

    def randn(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * 0.05).to(dtype)

    examples = [
        ("w = [0.9, -0.3, 0.05, -1.2, 0.7, 0.4] at 2 bits: scale = 1.2 / 1, every weight becomes −1.2, 0 or +1.2 "
         "(expected [1.2, 0, 0, −1.2, 1.2, 0])", torch.tensor([0.9, -0.3, 0.05, -1.2, 0.7, 0.4]), 2),
        ("a random 4×8 weight at 8 bits (scale = max|w| / 127)", randn(4, 8), 8),
        ("a random 3×16 weight at 4 bits (7 levels on each side of 0)", randn(3, 16), 4),
        ("w = [3.0, 0.5, 1.5, 2.5, -0.5, -1.5, 0.2, -2.7] at 3 bits: scale = 3 / 3 = 1, and the halves round to even "
         "as torch.round does: 0.5 → 0, 1.5 → 2, 2.5 → 2 (expected [3, 0, 2, 2, −0, −2, 0, −3])",
         torch.tensor([3.0, 0.5, 1.5, 2.5, -0.5, -1.5, 0.2, -2.7]), 3),
        ("a random 1-D tensor of 10 weights at 5 bits (15 levels on each side)", randn(10), 5),
        ("a random 2×3×4 tensor at 6 bits (any shape: one scale for the whole tensor)", randn(2, 3, 4), 6),
        ("a random float64 5×5 weight at 8 bits (return float64, the input's dtype)", randn(5, 5, dtype=torch.float64),
         8),
        ("an all-zero 2×4 weight at 4 bits (max|w| = 0, so scale = 0: return zeros, not NaN)", torch.zeros(2, 4), 4),
    ]
    cases = [Case(what, (w, b), {}, _absmax_quantize(w, b)) for what, w, b in examples]

    def like(**wrong: Any) -> Callable[..., bool]:
        """A matcher: the answer is _absmax_quantize(w, bits, **wrong) (`levels` and `clamp` may use bits)."""
        def matches(got: Any, w: torch.Tensor, bits: int) -> bool:
            settings = {k: (v(bits) if callable(v) and k in ("levels", "clamp") else v) for k, v in wrong.items()}
            variant = _absmax_quantize(w, bits, **settings)
            if same_as(_absmax_quantize)(variant, w, bits):     # the same as the right answer here: not this mistake
                return False
            return same_as(lambda w, b: variant)(got, w, bits)
        return matches

    def any_of(*matchers: Callable[..., bool]) -> Callable[..., bool]:
        return lambda got, *args: any(m(got, *args) for m in matchers)

    def per_row_or_column(got: Any, w: torch.Tensor, bits: int) -> bool:
        return w.dim() >= 2 and any(like(amax_dim=d)(got, w, bits) for d in range(w.dim()))

    def unsigned_codes(got: Any, w: torch.Tensor, bits: int) -> bool:
        return same_as(lambda w, b: _absmax_quantize(w, b, codes=True) + 2 ** (b - 1))(got, w, bits)

    def nan_on_zero(got: Any, w: torch.Tensor, bits: int) -> bool:
        return isinstance(got, torch.Tensor) and bool((w == 0).all()) and bool(torch.isnan(got).any())

    def other_dtype(got: Any, w: torch.Tensor, bits: int) -> bool:
        return (isinstance(got, torch.Tensor) and got.dtype != w.dtype and got.is_floating_point()
                and same_as(_absmax_quantize)(got, w, bits))

    top, pow2 = (lambda b: 2 ** (b - 1) - 1), (lambda b: 2 ** (b - 1))
    mistakes = [
        Mistake("an all-zero w has max|w| = 0, so w / scale is 0 / 0 = NaN; when the scale is 0, "
                "return zeros (e.g. `if scale == 0: return torch.zeros_like(w)`)", nan_on_zero),
        Mistake("right values in another dtype: return w's dtype (e.g. .to(w.dtype)) — the lab copies the result "
                "into weights of that dtype", other_dtype),
        Mistake("those are the integer codes q = round(w / scale); return them DEQUANTIZED, q · scale (floats in w's "
                "shape and dtype): the lab puts them back into the model's weights",
                any_of(like(codes=True), unsigned_codes)),
        Mistake("scale = max|w| / 2^(bits−1) and nothing clamps: the largest |w| becomes the code ±2^(bits−1) "
                "(±128 at 8 bits), which the symmetric range −(2^(bits−1) − 1) .. 2^(bits−1) − 1 cannot hold — divide "
                "by 2^(bits−1) − 1 (then max|w| lands exactly on the top code) and clamp to ±(2^(bits−1) − 1)",
                like(levels=pow2, clamp=math.inf)),
        Mistake("scale = max|w| / 2^(bits−1): the top code 2^(bits−1) − 1 then stands for less than max|w|, so the "
                "largest weights are clipped — divide by 2^(bits−1) − 1, the number of levels on each side of 0",
                like(levels=pow2)),
        Mistake("scale = max|w| / (2^bits − 1) is the asymmetric step (from min to max over 2^bits − 1 steps); "
                "symmetric absmax spends half the codes on each sign: scale = max|w| / (2^(bits−1) − 1)",
                any_of(*(like(levels=lv, clamp=c) for lv in (lambda b: 2 ** b - 1, lambda b: 2 ** b)
                         for c in (top, math.inf)))),
        Mistake("one scale per row (or column): this exercise uses ONE scale for the whole tensor, max|w| over all "
                "of it — the lab applies your function to each row itself", per_row_or_column),
        Mistake("you rounded down (floor) or toward zero (trunc, int(), .long(), .to(torch.int8)): quantization "
                "rounds to the NEAREST level — torch.round(w / scale)",
                any_of(like(rounding=torch.floor), like(rounding=torch.trunc), like(rounding=torch.ceil))),
        Mistake("halves must round to EVEN as torch.round does (0.5 → 0, 1.5 → 2, 2.5 → 2, −0.5 → −0); yours rounds "
                "them up or away from zero (floor(x + 0.5)?) — use torch.round",
                any_of(like(rounding=_half_away), like(rounding=_half_up))),
    ]
    returns = Returns("tensor", dtypes="input",
                      why="the lab copies it into the model's weights, same shape and dtype as w, and measures "
                          "perplexity")

    def hidden(g: torch.Generator) -> Case:
        bits = _randint(g, 2, 8)
        shape = (_randint(g, 1, 40),) if _randint(g, 0, 2) == 0 else (_randint(g, 1, 12), _randint(g, 1, 40))
        w = torch.randn(*shape, generator=g) * _uniform(g, 0.01, 2.0)
        return Case(f"a random {'×'.join(map(str, shape))} weight at {bits} bits", (w, bits), {},
                    _absmax_quantize(w, bits))

    return run_check("absmax_quantize", fn, cases, returns=returns, mistakes=mistakes, quiet=quiet, hidden=hidden,
                     forbid=("labkit.quantize.absmax_quantize",) + LABKIT_QUANTIZERS + TORCH_QUANTIZERS,
                     reference="labkit.quantize.absmax_quantize")


def _group_scales(w: torch.Tensor, group_size: int, bits: int, levels: int | None = None,
                  signed: bool = False) -> torch.Tensor:
    """(n_rows, n_cols // group_size): max|w| of each group_size consecutive weights of a row, / (2^(b−1) − 1).

    signed=True takes max w instead of max|w| (a mistake); `levels` replaces 2^(b−1) − 1 (another).
    """
    levels = 2 ** (bits - 1) - 1 if levels is None else levels
    x = w if signed else w.abs()
    return x.reshape(w.shape[0], -1, group_size).amax(dim=-1) / levels


@checks_safely("group_scales")
def check_group_scales(fn: Callable[[torch.Tensor, int, int], torch.Tensor], quiet: bool = False) -> CheckResult:
    """Exercise: the symmetric absmax scale of each group of `group_size` consecutive weights of each row.

    Returns a float tensor of shape (n_rows, n_cols // group_size): scales[r, j] = max|w[r, j·g:(j+1)·g]| /
    (2^(bits−1) − 1) (0 for an all-zero group).
    """
    g = torch.Generator().manual_seed(6)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.05

    pruned = randn(2, 8)
    pruned[0, :4] = 0.0
    examples = [
        ("w = [[0.5, -2.0, 0.25, 1.0], [-0.75, 0.5, 1.5, -3.0]], groups of 2 at 4 bits (7 levels per sign): "
         "expected [[2/7, 1/7], [0.75/7, 3/7]]", torch.tensor([[0.5, -2.0, 0.25, 1.0], [-0.75, 0.5, 1.5, -3.0]]), 2,
         4),
        ("a random 4×32 weight, groups of 8 at 4 bits: shape (4, 4)", randn(4, 32), 8, 4),
        ("a random 6×64 weight, groups of 32 at 8 bits: shape (6, 2)", randn(6, 64), 32, 8),
        ("a random 8×12 weight, groups of 4 at 3 bits: shape (8, 3)", randn(8, 12), 4, 3),
        ("a random 3×20 weight, groups of 5 at 2 bits (one level per sign: the scale is max|w| itself)",
         randn(3, 20), 5, 2),
        ("a random 3×16 weight, ONE group per row (group_size 16) at 6 bits: shape (3, 1)", randn(3, 16), 16, 6),
        ("a 2×8 weight whose first group of row 0 is all zeros (pruned), groups of 4 at 4 bits: that scale is 0",
         pruned, 4, 4),
    ]
    cases = [Case(f"group_scales(w, group_size={gs}, bits={b}) with {what}", (w, gs, b), {}, _group_scales(w, gs, b))
             for what, w, gs, b in examples]

    def shape_of(got: Any) -> tuple[int, ...] | None:
        """The shape of a tensor or numpy array; None for anything else."""
        shape = getattr(got, "shape", None)
        return tuple(shape) if isinstance(shape, tuple) else None

    def values_close(got: Any, expected: torch.Tensor) -> bool:
        return same_as(lambda: expected)(torch.as_tensor(got))

    def along_rows(got: Any, w: torch.Tensor, gs: int, bits: int) -> bool:
        """Groups of gs consecutive weights DOWN each column: (n_rows // gs, n_cols), or its transpose."""
        if w.shape[0] % gs or shape_of(got) is None:
            return False
        down = w.abs().reshape(w.shape[0] // gs, gs, w.shape[1]).amax(dim=1) / (2 ** (bits - 1) - 1)
        return any(shape_of(got) == tuple(d.shape) and values_close(got, d) for d in (down, down.T))

    def transposed(got: Any, w: torch.Tensor, gs: int, bits: int) -> bool:
        right = _group_scales(w, gs, bits)
        return shape_of(got) == tuple(right.T.shape) and values_close(got, right.T)

    def level_count(got: Any, w: torch.Tensor, gs: int, bits: int) -> bool:
        return any(same_as(lambda w, gs, b, lv=lv: _group_scales(w, gs, b, levels=lv(b)))(got, w, gs, bits)
                   for lv in (lambda b: 2 ** b - 1, lambda b: 2 ** (b - 1), lambda b: 2 ** b))

    def per_row(got: Any, w: torch.Tensor, gs: int, bits: int) -> bool:
        row = w.abs().amax(dim=1) / (2 ** (bits - 1) - 1)
        return gs != w.shape[1] and shape_of(got) in ((w.shape[0],), (w.shape[0], 1)) and \
            values_close(got, row.reshape(shape_of(got)))

    def one_scale(got: Any, w: torch.Tensor, gs: int, bits: int) -> bool:
        return shape_of(got) in ((), (1,), (1, 1)) and values_close(got, (w.abs().max() / (2 ** (bits - 1) - 1))
                                                                  .reshape(shape_of(got)))

    def zero_group_filled(got: Any, w: torch.Tensor, gs: int, bits: int) -> bool:
        right = _group_scales(w, gs, bits)
        if not isinstance(got, torch.Tensor) or got.shape != right.shape or not bool((right == 0).any()):
            return False
        nonzero = right != 0
        return bool((got[~nonzero] > 0).all()) and same_as(lambda: right[nonzero])(got[nonzero])

    mistakes = [
        Mistake("your groups run DOWN the columns: a group is group_size consecutive weights of one ROW, "
                "w[r, j·group_size:(j+1)·group_size] — along the input dimension, the weights one output sums over",
                along_rows),
        Mistake("rows first: scales[r, j] is row r's j-th group, shape (n_rows, n_cols // group_size); yours is "
                "transposed", transposed),
        Mistake("max|w|, not max w: a group whose largest magnitude is negative (−2.0 in [0.5, −2.0]) needs the "
                "scale 2.0 / levels, or −2.0 cannot be represented — use .abs() before .amax",
                same_as(lambda w, gs, b: _group_scales(w, gs, b, signed=True))),
        Mistake("divide by the number of levels on each side of 0, 2^(bits−1) − 1 (7 at 4 bits, 127 at 8), not "
                "2^bits − 1, 2^(bits−1) or 2^bits", level_count),
        Mistake("that is max|w| itself: the scale is max|w| / (2^(bits−1) − 1), the step between two levels",
                same_as(lambda w, gs, b: _group_scales(w, gs, b, levels=1))),
        Mistake("one scale per ROW (per channel): this exercise wants one per GROUP of group_size consecutive "
                "weights of a row — reshape to (n_rows, n_cols // group_size, group_size) and take max|w| over the "
                "last dimension", per_row),
        Mistake("one scale for the whole tensor: this exercise wants one per group of group_size consecutive "
                "weights of each row", one_scale),
        Mistake("an all-zero group's scale is 0 (its max|w| is 0); return 0 there, not a small positive number",
                zero_group_filled),
        Mistake("keep the two dimensions: shape (n_rows, n_cols // group_size), not flattened",
                lambda got, w, gs, b: shape_of(got) is not None and len(shape_of(got)) != 2
                and math.prod(shape_of(got)) == w.numel() // gs),
    ]
    returns = Returns("tensor", dtypes=None, axes=("row", "group"),
                      why="the lab dequantizes group j of row r as code · scales[r, j]")

    def hidden(g: torch.Generator) -> Case:
        gs, bits = _choice(g, [2, 4, 8, 16, 32]), _randint(g, 2, 8)
        rows, cols = _randint(g, 1, 16), gs * _randint(g, 1, 6)
        w = torch.randn(rows, cols, generator=g) * _uniform(g, 0.01, 2.0)
        return Case(f"group_scales(w, group_size={gs}, bits={bits}) with a random {rows}×{cols} weight",
                    (w, gs, bits), {}, _group_scales(w, gs, bits))

    return run_check("group_scales", fn, cases, returns=returns, mistakes=mistakes, quiet=quiet, hidden=hidden,
                     forbid=("labkit.quantize.group_scales",) + LABKIT_QUANTIZERS + TORCH_QUANTIZERS,
                     reference="labkit.quantize.group_scales")


def _group_quantized_bytes(n_rows: int, n_cols: int, bits: int, group_size: int, scale_bytes: int) -> int:
    """Codes packed as one bit stream over the whole matrix, ceil(R·C·b / 8), plus R · C/g scales; no zero point."""
    return (n_rows * n_cols * bits + 7) // 8 + n_rows * (n_cols // group_size) * scale_bytes


@checks_safely("group_quantized_bytes")
def check_group_quantized_bytes(fn: Callable[[int, int, int, int, int], int], quiet: bool = False) -> CheckResult:
    """Exercise: bytes (int) of a symmetric group-quantized matrix: its packed codes plus one scale per group.

    Convention (labkit.quantize.pack_codes): the n_rows · n_cols codes are ONE bit stream, so they take
    ceil(n_rows · n_cols · bits / 8) bytes — a row may end in the middle of a byte. Each of the
    n_rows · n_cols / group_size groups stores one scale of scale_bytes; symmetric: no zero point.
    """
    examples = [
        ("the baby GPT's mlp.fc weight (512 × 128) at 4 bits, groups of 32, fp16 scales", (512, 128, 4, 32, 2)),
        ("a 2 × 8 matrix at 4 bits, one group per row, fp32 scales: 8 bytes of codes + 2 scales", (2, 8, 4, 8, 4)),
        ("a LLaMA-7B-sized 4,096 × 4,096 matrix at 4 bits, groups of 128, fp16 scales", (4096, 4096, 4, 128, 2)),
        ("3 × 36 at 3 bits, groups of 12, fp32 scales: 3 · 36 · 3 = 324 bits = 40.5 bytes → 41 bytes of codes, "
         "packed over the whole matrix (labkit's convention), + 9 scales", (3, 36, 3, 12, 4)),
        ("5 × 10 at 2 bits, groups of 5, fp16 scales: 100 bits = 12.5 → 13 bytes of codes", (5, 10, 2, 5, 2)),
        ("128 × 512 at 8 bits, groups of 64, bf16 scales", (128, 512, 8, 64, 2)),
    ]
    cases = [Case(f"group_quantized_bytes(n_rows={r:,}, n_cols={c:,}, bits={b}, group_size={g}, scale_bytes={s}): "
                  f"{what}", (r, c, b, g, s), {}, _group_quantized_bytes(r, c, b, g, s))
             for what, (r, c, b, g, s) in examples]

    def groups(r: int, c: int, g: int) -> int:
        return r * (c // g)

    def is_any(*values_of: Callable[..., int]) -> Callable[..., bool]:
        """A matcher: the answer equals one of these wrong formulas (each different from the right answer)."""
        def m(got: Any, r: int, c: int, b: int, g: int, s: int) -> bool:
            right = _group_quantized_bytes(r, c, b, g, s)
            return any(v(r, c, b, g, s) != right and _int_eq(got, v(r, c, b, g, s)) for v in values_of)
        return m

    codes = lambda r, c, b, g, s: (r * c * b + 7) // 8
    scales = lambda r, c, b, g, s: groups(r, c, g) * s
    right = _group_quantized_bytes
    mistakes = [
        Mistake("the scales are missing: each group of group_size weights stores one scale of scale_bytes, "
                "n_rows · n_cols / group_size of them", is_any(codes)),
        Mistake("bits is BITS per weight: the codes take n_rows · n_cols · bits / 8 bytes (rounded up), not "
                "n_rows · n_cols · bits bytes",
                is_any(lambda r, c, b, g, s: r * c * b + scales(r, c, b, g, s), lambda r, c, b, g, s: r * c * b)),
        Mistake("that is bits: return bytes (8 bits each); scale_bytes is already in bytes",
                is_any(lambda *a: 8 * right(*a), lambda r, c, b, g, s: r * c * b + 8 * scales(r, c, b, g, s))),
        Mistake("scale_bytes is already in bytes: don't divide it by 8",
                is_any(lambda r, c, b, g, s: codes(r, c, b, g, s) + scales(r, c, b, g, s) // 8,
                       lambda r, c, b, g, s: codes(r, c, b, g, s) + (scales(r, c, b, g, s) + 7) // 8)),
        Mistake("you rounded up per row (or per group): labkit packs the codes as ONE bit stream over the whole "
                "matrix (labkit.quantize.pack_codes), so they take ceil(n_rows · n_cols · bits / 8) bytes and a row "
                "may end mid-byte",
                is_any(lambda r, c, b, g, s: r * ((c * b + 7) // 8) + scales(r, c, b, g, s),
                       lambda r, c, b, g, s: groups(r, c, g) * ((g * b + 7) // 8) + scales(r, c, b, g, s))),
        Mistake("symmetric quantization stores no zero point (it is fixed, the code for 0): only the packed codes "
                "and one scale per group",
                is_any(*(lambda r, c, b, g, s, z=z: right(r, c, b, g, s) + z(r, c, b, g, s) for z in
                         (lambda r, c, b, g, s: (groups(r, c, g) * b + 7) // 8, lambda r, c, b, g, s: groups(r, c, g),
                          lambda r, c, b, g, s: groups(r, c, g) * s, lambda r, c, b, g, s: groups(r, c, g) * b)))),
        Mistake("round the codes' bytes UP: a partly used byte is still stored — ceil(n_rows · n_cols · bits / 8), "
                "e.g. (n_rows * n_cols * bits + 7) // 8",
                lambda got, r, c, b, g, s: (r * c * b) % 8 != 0 and (
                    _int_eq(got, (r * c * b) // 8 + scales(r, c, b, g, s))
                    or (isinstance(got, float) and math.isclose(got, r * c * b / 8 + scales(r, c, b, g, s))))),
        Mistake("count one scale per group of EVERY row: n_rows · (n_cols / group_size) groups",
                is_any(lambda r, c, b, g, s: codes(r, c, b, g, s) + (c // g) * s,
                       lambda r, c, b, g, s: codes(r, c, b, g, s) + r * g * s,
                       lambda r, c, b, g, s: codes(r, c, b, g, s) + r * c * s)),
    ]

    def hidden(g: torch.Generator) -> Case:
        gs, b, s = _choice(g, [5, 8, 12, 16, 32, 64, 128]), _randint(g, 2, 8), _choice(g, [1, 2, 4])
        r, c = _randint(g, 1, 8192), gs * _randint(g, 1, 64)
        return Case(f"group_quantized_bytes(n_rows={r:,}, n_cols={c:,}, bits={b}, group_size={gs}, scale_bytes={s})",
                    (r, c, b, gs, s), {}, _group_quantized_bytes(r, c, b, gs, s))

    return run_check("group_quantized_bytes", fn, cases, returns=INT, mistakes=mistakes, quiet=quiet, hidden=hidden,
                     forbid=("labkit.quantize.group_quantized_bytes", "labkit.quantize.quantized_bytes",
                             "labkit.quantize.packed_bytes") + LABKIT_QUANTIZERS,
                     reference="labkit.quantize.group_quantized_bytes")


# =============================================================================================
# lab 06 (knowledge distillation)

# What a learner must not call for the distillation loss: labkit's loss and KL, and torch's KL divergence.
# log_softmax, softmax and cross_entropy are the exercise's tools and stay allowed (the KL is the exercise).
DISTILLATION_REFERENCES = (
    "labkit.distill.distillation_loss", "labkit.distill.kl_divergence", "labkit.distill.distillation_step_loss",
    "labkit.losses.distillation_loss", "labkit.losses.kl_divergence",
    "torch.nn.functional.kl_div", "torch.kl_div", "torch.nn.KLDivLoss", "labkit.distill.*",
)


def _distillation_loss(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, T: float, alpha: float,
                       soft: str = "kl", hard_T: float = 1.0, soft_scale: float | None = None,
                       soft_weight: float | None = None, soft_reduce: str = "mean", hard_reduce: str = "mean",
                       student_T: float | None = None, teacher_T: float | None = None) -> torch.Tensor:
    """alpha·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1 − alpha)·CE(s, y), mean over the N positions (torch's own ops).

    The keywords build the typical mistakes: another soft term ("reverse": KL(student ‖ teacher); "probs": the
    student's probabilities where its log-probabilities belong; "cross": cross-entropy with the soft targets),
    another factor than T², the label term at temperature hard_T, alpha on the other term, sums instead of means
    ("sum" over positions, "all" = mean over N·V elements), or only one side divided by T.
    """
    st, tt = (T if student_T is None else student_T), (T if teacher_T is None else teacher_T)
    log_q = F.log_softmax(s / st, dim=-1)                       # the student at T
    log_p = F.log_softmax(t.detach() / tt, dim=-1)              # the teacher at T
    p = log_p.exp()
    if soft == "kl":
        per_class = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    elif soft == "reverse":
        per_class = log_q.exp() * (log_q - log_p)
    elif soft == "probs":
        per_class = torch.where(p > 0, p * (log_p - log_q.exp()), torch.zeros_like(p))
    else:                                                       # "cross"
        per_class = -p * log_q
    kl = per_class.sum(-1)
    kl = {"mean": kl.mean(), "sum": kl.sum(), "all": per_class.mean()}[soft_reduce]
    ce = F.cross_entropy(s / hard_T, y, reduction=hard_reduce)
    scale = T ** 2 if soft_scale is None else soft_scale
    w = alpha if soft_weight is None else soft_weight
    return w * scale * kl + (1 - w) * ce


def _distillation_call(fn: Callable, args: tuple, kwargs: dict) -> Any:
    """Call the learner's loss: its value, or (measure=...) the gradient autograd gives the student's or teacher's logits.

    For a gradient, both logits come from tensors that require grad and loss.backward() runs as in training;
    a loss cut off from the student (no grad_fn) gives a zero gradient, a detached teacher gets none (zeros).
    """
    measure = kwargs.pop("measure", "value")
    if measure == "value":   # copies: the lab's logits are a fresh model output each step, free to edit in place
        return fn(*(a.clone() if isinstance(a, torch.Tensor) else a for a in args), **kwargs)
    student, teacher = (a.detach().clone().requires_grad_(True) for a in args[:2])
    loss = fn(student * 1, teacher * 1, *args[2:], **kwargs)   # not leaves: like logits coming out of a model
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        return loss                  # the value examples already said what is wrong with it
    if loss.requires_grad:
        loss.reshape(()).backward()
    leaf = student if measure == "student_grad" else teacher
    return leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)


@checks_safely("distillation_loss")
def check_distillation_loss(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float, float], torch.Tensor],
                            quiet: bool = False) -> CheckResult:
    """Exercise: alpha·T²·KL(teacher ‖ student at T) + (1 − alpha)·CE(student, targets), a 0-dim float32 tensor.

    Called as fn(student_logits (N, V), teacher_logits (N, V), targets (N,) int64, T, alpha); nats, the mean
    over the N positions, the teacher detached. Checked on its values, then on the gradient loss.backward()
    gives the student's logits (what training uses), and that the teacher's logits get none.
    """
    g = torch.Generator().manual_seed(6)

    def logits(n: int, v: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(n, v, generator=g) * scale

    def labels(n: int, v: int) -> torch.Tensor:
        return torch.randint(v, (n,), generator=g)

    same = logits(3, 5)
    confident = logits(4, 6)
    confident[torch.arange(4), labels(4, 6)] += 120.0     # the teacher is sure: the others' softmax underflows to 0
    examples = [
        ("student = teacher (identical logits, 3 positions × 5 characters): the KL is 0, so the loss is "
         "(1 − alpha) · CE", (same, same.clone(), labels(3, 5), 2.0, 0.5)),
        ("random logits (4 positions × 5 characters)", (logits(4, 5), logits(4, 5, 2.0), labels(4, 5), 2.0, 0.5)),
        ("random logits (6 × 7): the teacher's term alone, at T = 1", (logits(6, 7), logits(6, 7, 2.0), labels(6, 7),
                                                                      1.0, 1.0)),
        ("random logits (5 × 8): T² = 16", (logits(5, 8), logits(5, 8, 3.0), labels(5, 8), 4.0, 0.9)),
        ("random logits (3 × 6): the labels alone, plain cross-entropy", (logits(3, 6), logits(3, 6), labels(3, 6),
                                                                          2.0, 0.0)),
        ("one position over 84 characters (the course's vocabulary)", (logits(1, 84, 2.0), logits(1, 84, 4.0),
                                                                       labels(1, 84), 8.0, 0.3)),
        ("a confident teacher (one logit 120 above the rest in each row): its other probabilities underflow to 0 "
         "in float32", (logits(4, 6), confident, labels(4, 6), 1.0, 0.5)),
    ]

    def value_case(what: str, args: tuple) -> Case:
        return Case(f"distillation_loss(student_logits, teacher_logits, targets, T={args[3]:g}, alpha={args[4]:g}) "
                    f"with {what}", args, {}, _distillation_loss(*args))

    def grad_case(what: str, args: tuple, measure: str) -> Case:
        s = args[0].detach().clone().requires_grad_(True)
        _distillation_loss(s, *args[1:]).backward()
        if measure == "student_grad":
            return Case(f"the gradient loss.backward() gives the STUDENT's logits at T={args[3]:g}, "
                        f"alpha={args[4]:g}, with {what}", args, {"measure": measure}, s.grad)
        return Case(f"the gradient loss.backward() gives the TEACHER's logits (none: the teacher is fixed) at "
                    f"T={args[3]:g}, alpha={args[4]:g}, with {what}", args, {"measure": measure},
                    torch.zeros_like(args[1]))

    cases = [value_case(w, a) for w, a in examples]
    cases += [grad_case(w, a, "student_grad") for w, a in examples[1:4]]
    cases += [grad_case(examples[1][0], examples[1][1], "teacher_grad")]

    def like(measure_ok: tuple[str, ...] = ("value",), **mistake: Any) -> Callable[..., bool]:
        """A matcher: the learner's answer is _distillation_loss with this mistake (and it differs from the right one)."""
        def m(got: Any, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, T: float, alpha: float,
              measure: str = "value") -> bool:
            if measure not in measure_ok:
                return False
            wrong, right = _distillation_loss(s, t, y, T, alpha, **mistake), _distillation_loss(s, t, y, T, alpha)
            if torch.allclose(wrong, right, rtol=1e-4, atol=1e-5):
                return False
            return same_as(lambda: wrong.float())(got)
        return m

    def any_like(*variants: dict) -> Callable[..., bool]:
        return lambda got, *a, **k: any(like(**v)(got, *a, **k) for v in variants)

    def no_gradient(got: Any, s: torch.Tensor, *rest: Any, measure: str = "value") -> bool:
        return measure == "student_grad" and isinstance(got, torch.Tensor) and not bool(got.any())

    def teacher_gets_gradient(got: Any, *args: Any, measure: str = "value") -> bool:
        return measure == "teacher_grad" and isinstance(got, torch.Tensor) and bool(got.any())

    def not_finite(got: Any, *args: Any, measure: str = "value") -> bool:
        return isinstance(got, torch.Tensor) and got.dtype.is_floating_point and not bool(torch.isfinite(got).all())

    def per_position(got: Any, s: torch.Tensor, *args: Any, measure: str = "value") -> bool:
        return measure == "value" and isinstance(got, torch.Tensor) and got.numel() == s.shape[0] > 1

    mistakes = [
        Mistake("not a number (nan or inf): log(softmax(...)) is log 0 = −inf where a probability underflows, and "
                "0 · (−inf) = nan — take log-probabilities with log_softmax (it never computes log 0)", not_finite),
        Mistake("no gradient reaches the student's logits: the loss was cut off from them (.item(), .detach(), "
                "float(...), torch.tensor(a number), torch.no_grad()) — build it from torch operations on "
                "student_logits; the lab trains the student with loss.backward()", no_gradient),
        Mistake("the teacher's logits got a gradient: detach them (teacher_logits.detach()) — the teacher is fixed, "
                "only the student learns", teacher_gets_gradient),
        Mistake("one loss per position: return their mean over the N positions, a 0-dim tensor", per_position),
        Mistake("the T² factor is missing: the soft term's gradient shrinks like 1/T², and multiplying it by T² keeps "
                "its weight the same at every temperature (Hinton et al. 2015)", like(soft_scale=1.0)),
        Mistake("T² goes on the soft term as a factor: you used T (or 1/T², or T² on the whole loss)",
                lambda got, s, t, y, T, a, measure="value": measure == "value" and (
                    any(like(soft_scale=k)(got, s, t, y, T, a) for k in (T, 1 / T, 1 / T ** 2))
                    or same_as(lambda: (T ** 2 * _distillation_loss(s, t, y, T, a)).float())(got))),
        Mistake("divide BOTH the teacher's and the student's logits by T before the softmax (softmax(logits / T)); "
                "yours softens only one of them, or neither",
                any_like({"student_T": 1.0}, {"teacher_T": 1.0}, {"student_T": 1.0, "teacher_T": 1.0})),
        Mistake("the labels' cross-entropy is at T = 1 (the student's real prediction); only the teacher term is "
                "softened", lambda got, s, t, y, T, a, measure="value": like(hard_T=T)(got, s, t, y, T, a, measure)),
        Mistake("the KL is the wrong way round: KL(teacher ‖ student) = Σ p_teacher · (log p_teacher − log "
                "p_student), weighted by the TEACHER's probabilities", like(soft="reverse")),
        Mistake("the student's term must be LOG-probabilities: Σ p_teacher · (log p_teacher − log p_student); "
                "yours subtracts p_student itself (F.kl_div's input is log-probabilities, a classic slip)",
                like(soft="probs")),
        Mistake("that is the cross-entropy with the soft targets, −Σ p_teacher · log p_student; the KL subtracts the "
                "teacher's own entropy from it (same gradient, different value): Σ p_teacher · (log p_teacher − "
                "log p_student)", like(soft="cross")),
        Mistake("alpha weighs the SOFT (teacher) term: alpha · T² · KL + (1 − alpha) · CE; yours has them swapped",
                lambda got, s, t, y, T, a, measure="value": like(soft_weight=1 - a)(got, s, t, y, T, a, measure)),
        Mistake("that sums over the positions: take the MEAN over the N positions (of both terms)",
                any_like({"soft_reduce": "sum"}, {"hard_reduce": "sum"}, {"soft_reduce": "sum", "hard_reduce": "sum"})),
        Mistake("the KL is summed over the characters and averaged over the positions (torch's 'batchmean'); yours "
                "averages over positions × characters (reduction='mean' divides by V too)", like(soft_reduce="all")),
    ]
    returns = Returns("tensor", dtypes=(torch.float32,), axes=("position", "character"),
                      why="the lab trains a student with it: loss.backward(), then .item() for the log — return the "
                          "0-dim tensor from .mean(), in the logits' dtype")

    def hidden(g: torch.Generator) -> Case:
        n, v = _randint(g, 1, 8), _randint(g, 2, 90)
        T, alpha = _choice(g, [0.5, 1.0, 2.0, 3.0, 5.0, 10.0]), _choice(g, [0.0, 0.1, 0.5, 0.7, 1.0])
        args = (torch.randn(n, v, generator=g) * _uniform(g, 0.5, 4.0), torch.randn(n, v, generator=g) * 3,
                torch.randint(v, (n,), generator=g), T, alpha)
        if _randint(g, 0, 1):
            return grad_case(f"random logits ({n} × {v})", args, "student_grad")
        return value_case(f"random logits ({n} × {v})", args)

    return run_check("distillation_loss", fn, cases, rtol=1e-4, atol=1e-5, returns=returns, mistakes=mistakes,
                     quiet=quiet, hidden=hidden, call=_distillation_call, forbid=DISTILLATION_REFERENCES,
                     reference="labkit.losses.distillation_loss")


def _teacher_targets_bytes(n_tokens: int, vocab_size: int, top_k: int | None, value_bytes: int,
                           index_bytes: int) -> int:
    """Full logits: n · V · value_bytes; top k: n · k · (value_bytes + index_bytes) (a value and its token id)."""
    if top_k is None:
        return n_tokens * vocab_size * value_bytes
    return n_tokens * top_k * (value_bytes + index_bytes)


@checks_safely("teacher_targets_bytes")
def check_teacher_targets_bytes(fn: Callable[[int, int, int | None, int, int], int], quiet: bool = False) -> CheckResult:
    """Exercise: bytes (int) of a teacher's targets for n_tokens positions: all V logits, or top k values + token ids."""
    run_tokens = 300 * 12 * 64        # a 300-step run of the baby preset: 12 sequences of 64 characters per step
    examples = [
        (f"a 300-step run of 12 × 64 characters ({run_tokens:,} positions), the course's 84 characters, full "
         "fp32 logits (top_k=None)", (run_tokens, 84, None, 4, 1)),
        ("the same run, top 8 logits in fp16 with uint8 token ids", (run_tokens, 84, 8, 2, 1)),
        ("the same run, full logits in fp16 (top_k=None: no token ids needed)", (run_tokens, 84, None, 2, 1)),
        ("one position, top 1 (fp32 value, int32 id)", (1, 84, 1, 4, 4)),
        ("1,000,000 positions of GPT-2's 50,257-token vocabulary, top 20 in fp16 with int32 ids",
         (1_000_000, 50_257, 20, 2, 4)),
        ("2,048 positions of LLaMA's 32,000 tokens, full bf16 logits", (2_048, 32_000, None, 2, 2)),
        ("no positions at all (n_tokens=0), top 4", (0, 84, 4, 2, 1)),
    ]
    cases = [Case(f"teacher_targets_bytes(n_tokens={n:,}, vocab_size={v:,}, top_k={k}, value_bytes={vb}, "
                  f"index_bytes={ib}): {what}", (n, v, k, vb, ib), {}, _teacher_targets_bytes(n, v, k, vb, ib))
             for what, (n, v, k, vb, ib) in examples]

    def is_any(*values_of: Callable[..., int], full: bool | None = None) -> Callable[..., bool]:
        """A matcher: the answer equals one of these wrong formulas (and differs from the right one)."""
        def m(got: Any, n: int, v: int, k: int | None, vb: int, ib: int) -> bool:
            if full is not None and full != (k is None):
                return False
            right = _teacher_targets_bytes(n, v, k, vb, ib)
            return any(f(n, v, k, vb, ib) != right and _int_eq(got, f(n, v, k, vb, ib)) for f in values_of)
        return m

    mistakes = [
        Mistake("the token ids are missing: a top-k value alone doesn't say WHICH token it belongs to, so each of "
                "the k kept values stores its id too — k · (value_bytes + index_bytes) per position",
                is_any(lambda n, v, k, vb, ib: n * k * vb, full=False)),
        Mistake("full logits need no token ids: the j-th of the V values IS token j's logit, so a position takes "
                "V · value_bytes", is_any(lambda n, v, k, vb, ib: n * v * (vb + ib), full=True)),
        Mistake("with top_k set, a position keeps k values (and their ids), not V: n_tokens · k · (value_bytes + "
                "index_bytes)", is_any(lambda n, v, k, vb, ib: n * v * (vb + ib), lambda n, v, k, vb, ib: n * v * vb,
                                       full=False)),
        Mistake("that is bits: value_bytes and index_bytes are already bytes — don't multiply by 8",
                is_any(lambda *a: 8 * _teacher_targets_bytes(*a))),
        Mistake("value_bytes and index_bytes are already bytes: don't divide by 8",
                lambda got, *a: _per_case_ratio(1 / 8, _teacher_targets_bytes)(got, *a)
                or is_any(lambda *b: _teacher_targets_bytes(*b) // 8)(got, *a)),
        Mistake("that is one position's bytes: multiply by n_tokens, the number of positions",
                is_any(lambda n, v, k, vb, ib: _teacher_targets_bytes(1, v, k, vb, ib))),
        Mistake("each kept value needs its OWN token id: k ids per position, not one",
                is_any(lambda n, v, k, vb, ib: n * (k * vb + ib), full=False)),
    ]

    def hidden(g: torch.Generator) -> Case:
        v = _choice(g, [65, 84, 256, 1_000, 32_000, 50_257])
        k = None if _randint(g, 0, 2) == 0 else _randint(g, 1, min(v, 64))
        n, vb, ib = _randint(g, 0, 10_000_000), _choice(g, [1, 2, 4]), _choice(g, [1, 2, 4, 8])
        return Case(f"teacher_targets_bytes(n_tokens={n:,}, vocab_size={v:,}, top_k={k}, value_bytes={vb}, "
                    f"index_bytes={ib})", (n, v, k, vb, ib), {}, _teacher_targets_bytes(n, v, k, vb, ib))

    return run_check("teacher_targets_bytes", fn, cases, returns=INT, mistakes=mistakes, quiet=quiet, hidden=hidden,
                     forbid=("labkit.distill.teacher_targets_bytes", "labkit.distill.target_bytes_per_token",
                             "labkit.distill.cache_bytes", "labkit.distill.*"),
                     reference="labkit.distill.teacher_targets_bytes")
