"""One yardstick for every language model of the course: a fixed evaluation set and how noisy it is.

    ev = evaluation_set(corpus.val, window=64, every=4)  # a quarter of the validation split, spread evenly
    res = score(model, ev)                                # any course model: GPT, LSTM, conv, or an n-gram
    res.loss, res.standard_error                          # mean nats/char, and its noise from resampling windows
    paired_difference(res_a, res_b)                       # is A really better than B on this text?

What is scored, exactly. The evaluation text is `tokens` (e.g. the validation split). Its first
`lead` characters are only read as context, never scored. The rest is cut into non-overlapping
windows of `window` characters, and every `every`-th window is scored (every = 1: all of them):

- a neural model (GPT, LSTM, conv) reads each window as one sequence, so the k-th character of a
  window (k = 1..window) is predicted from the k characters before it that lie in the same window
  (its own input position and earlier ones) — the view the model was trained with: random windows of
  `block_size` characters. No state or cache carries over from one window to the next.
- an n-gram model predicts every scored character from the n − 1 characters right before it
  (it never needs more; `lead` ≥ n − 1 guarantees they exist).

Every model is scored on the same characters, in the same order, with no randomness, so two runs
(and two models) are compared on identical text. Per-window losses are kept so that the noise of the
yardstick can be shown: how much the mean would move on other text of the same kind (resampling
blocks of windows), and whether a gap between two models is larger than that noise (paired
differences on the same windows). Training noise (seed to seed) is a separate, usually larger, spread.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from labkit.model import LanguageModel
from labkit.ngram import NGramModel, SparseNGramModel

DEFAULT_WINDOW = 64          # the context every model of lab 01 is trained with
DEFAULT_LEAD = 8             # characters read but not scored: n-grams up to order 9 have their whole context
BLOCK_WINDOWS = 16           # windows per resampling block (1,024 characters at window 64): neighbours are correlated


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class EvalSet:
    """A fixed, named evaluation text and which of its characters are scored: windows of `window` characters."""

    name: str
    tokens: Tensor = field(repr=False)          # (N,) int64, the text that is read
    window: int
    lead: int                                   # characters before the first window: context only
    window_starts: Tensor = field(repr=False)   # (n_windows,) int64, position in `tokens` of each window's first scored character

    @property
    def n_windows(self) -> int:
        return len(self.window_starts)

    @property
    def n_scored(self) -> int:
        """How many characters are scored (the same for every model)."""
        return self.n_windows * self.window

    @property
    def positions(self) -> Tensor:
        """(n_scored,) int64: the position in `tokens` of every scored character, window by window."""
        return (self.window_starts[:, None] + torch.arange(self.window)).reshape(-1)

    @property
    def scored_tokens(self) -> Tensor:
        """The scored characters, in order."""
        return self.tokens[self.positions]

    def describe(self) -> str:
        """One sentence saying exactly what is scored."""
        return (f"{self.name}: {self.n_scored:,} characters scored, in {self.n_windows:,} windows of {self.window} "
                f"characters; a neural model predicts each one from the 1–{self.window} characters before it "
                f"inside its window, an n-gram from its n − 1 previous characters")


def evaluation_set(tokens: np.ndarray | Tensor, window: int = DEFAULT_WINDOW, every: int = 1,
                   n_chars: int | None = None, lead: int = DEFAULT_LEAD, name: str = "val") -> EvalSet:
    """A fixed evaluation set: tokens[lead:] cut into non-overlapping windows of `window`, every `every`-th kept.

    `n_chars` first cuts the text to its first n_chars characters (None: all of it). `every` = 4 scores
    a quarter of the windows, spread evenly over the whole text (every scene contributes), at a quarter
    of the cost. `name` says where the tokens come from (e.g. "val"); the set's name records the rest.
    """
    window = _positive_int("window", window)
    every = _positive_int("every", every)
    lead = _positive_int("lead", lead, minimum=0)
    ids = tokens if isinstance(tokens, Tensor) else torch.from_numpy(np.asarray(tokens).astype(np.int64))
    if ids.dim() != 1 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"tokens must be a 1-D sequence of integer ids, got dtype {ids.dtype}, shape {tuple(ids.shape)}")
    ids = ids.to(torch.int64)
    if n_chars is not None:
        n_chars = _positive_int("n_chars", n_chars)
        if n_chars > len(ids):
            raise ValueError(f"n_chars={n_chars:,} is more than the {len(ids):,} tokens given")
        ids = ids[:n_chars]
    if len(ids) < lead + window:
        raise ValueError(f"an evaluation set needs at least lead + window = {lead + window} tokens, got {len(ids)}")
    all_windows = (len(ids) - lead) // window          # an incomplete last window is dropped
    starts = lead + window * torch.arange(0, all_windows, every)
    text = f"{name}[0:{len(ids):,}]"
    which = "every window" if every == 1 else f"1 in every {every} of its {all_windows:,} windows"
    return EvalSet(name=f"{text}, {which} of {window} after the first {lead} characters",
                   tokens=ids.clone(), window=window, lead=lead, window_starts=starts)


@dataclass
class EvalResult:
    """A model's score on an EvalSet: mean nats/char, per-character and per-window losses, noise."""

    eval_set: str
    loss: float                        # mean nats per scored character
    token_losses: Tensor = field(repr=False)   # (n_scored,) float64, nats, in text order
    window: int
    seconds: float

    @property
    def window_losses(self) -> Tensor:
        """(n_windows,) mean nats/char of each window."""
        return self.token_losses.view(-1, self.window).mean(dim=1)

    @property
    def bits_per_char(self) -> float:
        return self.loss / math.log(2)

    @property
    def standard_error(self) -> float:
        """Standard error (nats/char) of `loss` from resampling blocks of windows (see block_standard_error)."""
        return block_standard_error(self.window_losses)


def block_standard_error(window_losses: Tensor, block_windows: int = BLOCK_WINDOWS) -> float:
    """Standard error (same unit as the input) of the mean of `window_losses`, from blocks of neighbouring windows.

    Neighbouring windows come from the same scene, so they are not independent; treating blocks of
    `block_windows` consecutive windows as the independent units gives an honest (larger) error.
    Equal to the bootstrap's standard error over blocks for many resamples; an incomplete last block is dropped.
    """
    block_windows = _positive_int("block_windows", block_windows)
    n_blocks = len(window_losses) // block_windows
    if n_blocks < 2:
        raise ValueError(f"need at least 2 blocks of {block_windows} windows, got {len(window_losses)} windows")
    blocks = window_losses[:n_blocks * block_windows].double().view(n_blocks, block_windows).mean(dim=1)
    return (blocks.std(unbiased=True) / math.sqrt(n_blocks)).item()


def paired_difference(a: EvalResult, b: EvalResult, block_windows: int = BLOCK_WINDOWS) -> dict[str, float]:
    """Mean loss of `a` minus `b` (nats/char) on the same windows, and its standard error from blocks of windows."""
    if a.eval_set != b.eval_set or a.token_losses.shape != b.token_losses.shape or a.window != b.window:
        raise ValueError(f"a and b must be scored on the same evaluation set, got {a.eval_set!r} and {b.eval_set!r}")
    diff = a.window_losses - b.window_losses
    return {"difference": a.loss - b.loss, "standard_error": block_standard_error(diff, block_windows)}


# ----------------------------------------------------------------------------- scoring

def ngram_token_losses(model: NGramModel | SparseNGramModel, eval_set: EvalSet) -> Tensor:
    """-ln P(c | previous n-1 characters) in nats (float64) for each scored character of `eval_set`."""
    if eval_set.lead < model.n - 1:
        raise ValueError(f"a {model.n}-gram needs {model.n - 1} characters of context before the first scored one; "
                         f"this evaluation set has lead={eval_set.lead}")
    first = eval_set.lead - (model.n - 1)
    last = int(eval_set.window_starts[-1]) + eval_set.window           # one past the last scored character
    every_char = model.token_losses(eval_set.tokens[first:last])      # entry j predicts tokens[first + n - 1 + j]
    return every_char[eval_set.positions - eval_set.lead]


@torch.no_grad()
def neural_token_losses(model: LanguageModel, eval_set: EvalSet, batch_windows: int = 128,
                        progress: bool | str = False) -> Tensor:
    """-ln p(c | the characters before it in its window) in nats (float64) for each scored character."""
    if eval_set.window > model.block_size:
        raise ValueError(f"window={eval_set.window} is longer than the model's block_size={model.block_size}")
    batch_windows = _positive_int("batch_windows", batch_windows)
    was_training = model.training
    model.eval()
    T, W = eval_set.window, eval_set.n_windows
    # window i reads tokens[s_i - 1 : s_i - 1 + T] and predicts tokens[s_i : s_i + T] (s_i = its first scored position)
    reads = eval_set.window_starts[:, None] - 1 + torch.arange(T)
    x_all, y_all = eval_set.tokens[reads], eval_set.tokens[reads + 1]
    out = torch.empty(W, T, dtype=torch.float64)
    starts = range(0, W, batch_windows)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc=progress if isinstance(progress, str) else "score", mininterval=1.0)
    for s in starts:
        x, y = x_all[s:s + batch_windows], y_all[s:s + batch_windows]
        logits, _ = model(x)
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none")
        out[s:s + batch_windows] = nll.view(y.shape).double()
    model.train(was_training)
    return out.view(-1)


def score(model: LanguageModel | NGramModel | SparseNGramModel, eval_set: EvalSet, batch_windows: int = 128,
          progress: bool | str = False) -> EvalResult:
    """Score any course model on `eval_set`: mean nats per scored character, with per-character losses kept."""
    if eval_set.lead < 1:
        raise ValueError("eval_set.lead must be >= 1: every scored character needs at least one character before it")
    t0 = time.perf_counter()
    if isinstance(model, (NGramModel, SparseNGramModel)):
        losses = ngram_token_losses(model, eval_set)
    elif isinstance(model, LanguageModel):
        losses = neural_token_losses(model, eval_set, batch_windows, progress)
    else:
        raise TypeError(f"model must be a labkit LanguageModel (GPT, LSTMLM, ConvLM), an NGramModel or a "
                         f"SparseNGramModel, got {type(model).__name__}")
    return EvalResult(eval_set=eval_set.name, loss=losses.mean().item(), token_losses=losses,
                      window=eval_set.window, seconds=time.perf_counter() - t0)


def seed_spread(losses: list[float] | Tensor) -> dict[str, float]:
    """Mean, sample standard deviation and range (nats/char) of one model trained with several seeds."""
    x = torch.as_tensor(list(losses), dtype=torch.float64)
    if len(x) < 2:
        raise ValueError(f"seed_spread needs the losses of at least 2 seeds, got {len(x)}")
    return {"mean": x.mean().item(), "std": x.std(unbiased=True).item(), "range": (x.max() - x.min()).item(),
            "n_seeds": len(x)}


def t_quantile(dof: float, p: float = 0.975) -> float:
    """The p-quantile of Student's t with `dof` degrees of freedom (dof may be fractional, as Welch's is).

    A mean of n paired differences is "beyond the noise" at 95% (two-sided) when it is more than
    t_quantile(n - 1) standard errors from 0: 2.78 for 5 seeds, not the normal 1.96 (or the 2 often used),
    because the standard error itself is estimated from those few seeds. Computed from t's density,
    integrated on a fine grid with x = tan(θ) (so the heavy tail is finite), and bisection.
    """
    if isinstance(dof, bool) or not isinstance(dof, (int, float)) or not (dof > 0 and math.isfinite(dof)):
        raise ValueError(f"dof must be a finite number > 0, got {dof!r}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.5 <= p < 1:
        raise ValueError(f"p must be a probability in [0.5, 1), got {p!r}")
    dof = float(dof)
    log_c = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)

    def cdf(x: float) -> float:   # P(T <= x) for x >= 0: 1/2 + the density's integral over [0, x] (Simpson)
        theta = np.linspace(0.0, math.atan(x), 4_001)
        t = np.tan(theta)
        f = np.exp(log_c - (dof + 1) / 2 * np.log1p(t ** 2 / dof)) / np.cos(theta) ** 2
        h = theta[1] - theta[0]
        return 0.5 + float(h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum()))

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def tie_tolerance(losses_by_model: list[list[float]], z: float = 2.0) -> dict[str, float]:
    """Gap (nats/char) below which two models trained with one seed each count as tied: z · √2 · σ.

    σ is the seed-to-seed standard deviation pooled over the models given (each a list of the losses
    of one model trained with several seeds): the mean of their sample variances, square-rooted. The
    difference of two independent single-seed runs has standard deviation √2 · σ; z = 2 keeps about
    95% of the gaps that pure training noise would produce inside the tolerance.
    """
    if not losses_by_model or any(len(v) < 2 for v in losses_by_model):
        raise ValueError("losses_by_model must hold, for at least one model, the losses of at least 2 seeds")
    if not (z > 0 and math.isfinite(z)):
        raise ValueError(f"z must be a finite number > 0, got {z}")
    variances = [torch.as_tensor(list(v), dtype=torch.float64).var(unbiased=True).item() for v in losses_by_model]
    sigma = math.sqrt(sum(variances) / len(variances))
    return {"pooled_std": sigma, "tolerance": z * math.sqrt(2) * sigma, "z": z, "n_models": len(variances)}


# ----------------------------------------------------------------------------- a real compressor on the same text

def compressor_bits_per_char(text: str) -> dict[str, dict[str, float]]:
    """Bits per character that bz2 and lzma (Python's standard library, strongest settings) reach on `text`."""
    import bz2
    import lzma

    raw = text.encode("utf-8")
    if not raw:
        raise ValueError("text must not be empty")
    out = {}
    for name, compress in (("bz2 (level 9)", lambda b: bz2.compress(b, 9)),
                           ("lzma (preset 9)", lambda b: lzma.compress(b, preset=9))):
        t0 = time.perf_counter()
        n_bytes = len(compress(raw))
        out[name] = {"bytes": n_bytes, "bits_per_char": 8 * n_bytes / len(text), "seconds": time.perf_counter() - t0}
    return out
