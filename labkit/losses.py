"""The losses the course trains with, written out by hand so each one can be read line by line.

    cross_entropy(logits, targets)             # next-token loss of a language model (nats)
    perplexity(nll), bits_per_char(nll)        # the same number in friendlier units
    mse(pred, target)                          # regression / reconstruction
    kl_divergence(p_logits, q_logits)          # how far distribution q is from p (nats)
    distillation_loss(student, teacher, y)     # Hinton et al. 2015: learn from a teacher's soft targets
    vae_elbo(recon_x, x, mu, logvar)           # the variational autoencoder's loss (negative ELBO)

Conventions: logits have the vocabulary / class dimension last, shape (..., V), and any
leading dimensions (batch, time, ...) are "positions" that the losses average over.
A "nat" is the unit of information when logarithms are natural (base e); 1 bit = ln 2 nats.
Every result here matches its torch.nn.functional counterpart (see tests/test_losses.py).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

RECON_KINDS = ("mse", "bce")


# ----------------------------------------------------------------------------- helpers

def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Log-probabilities (nats, all <= 0) of softmax(logits) over the last dimension."""
    # log softmax(x)_i = x_i - log sum_j exp(x_j). Computing exp(x_j) directly overflows to inf
    # for logits around 90 (float32), so we use the "logsumexp trick": subtract the largest logit
    # m first. Then every exp(x_j - m) is in (0, 1] and the sum is at least 1, so nothing
    # overflows and the log never sees 0:   log softmax(x)_i = (x_i - m) - log sum_j exp(x_j - m).
    # Subtract m from the logits first, never add it to the log-sum: at logits ~1e4 in float32,
    # m + log(2) rounds to 1e4 + 0.0007 (float32 has ~3 decimal places left there), so x_i - (m + ...)
    # would be off by that much; (x_i - m) is exact and small, and so is everything after it.
    m = logits.amax(dim=-1, keepdim=True).detach()  # m cancels out exactly, so it needs no gradient
    shifted = logits - m  # (..., V), all <= 0, the largest is exactly 0
    return shifted - torch.log(torch.exp(shifted).sum(dim=-1, keepdim=True))


def _check_temperature(temperature: float) -> float:
    temperature = float(temperature)
    if not (temperature > 0 and math.isfinite(temperature)):  # also rejects nan
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return temperature


def _check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")


def _to_float(value: float | torch.Tensor, name: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a float or a 0-d tensor, "
                             f"got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    return float(value)


# ----------------------------------------------------------------------------- language modelling

def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean negative log-likelihood of `targets` under softmax(logits), in nats (0-d tensor)."""
    # logits: (..., V) unnormalised scores; targets: (...) class ids in [0, V), or ignore_index
    # for positions that should not count (e.g. padding). Same result as F.cross_entropy.
    if logits.dim() < 1:
        raise ValueError("logits must have at least one dimension (the vocabulary, last)")
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets must have the shape of logits without its last (vocabulary) dimension: "
                         f"logits {tuple(logits.shape)} needs targets {tuple(logits.shape[:-1])}, "
                         f"got {tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer class ids (torch.int64), got dtype {targets.dtype}")
    vocab_size = logits.size(-1)
    keep = targets != ignore_index  # (...) True where the position counts
    bad = keep & ((targets < 0) | (targets >= vocab_size))
    if bad.any():
        raise ValueError(f"targets must be in [0, {vocab_size}) (vocabulary size) or equal "
                         f"ignore_index={ignore_index}, got {targets[bad][0].item()}")

    logp = log_softmax(logits)  # (..., V)
    safe_targets = torch.where(keep, targets, 0).long()  # any valid id; these positions are masked below
    target_logp = logp.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)  # (...) log p(correct token)
    nll = torch.where(keep, -target_logp, 0.0)  # zero where ignored
    return nll.sum() / keep.sum()  # 0/0 = nan if every position is ignored, like F.cross_entropy


def perplexity(mean_nll_nats: float | torch.Tensor) -> float:
    """exp(mean NLL in nats): the effective number of tokens the model is choosing between (unitless)."""
    # A model that spreads its probability uniformly over V tokens has NLL = ln V, perplexity = V.
    nll = _to_float(mean_nll_nats, "mean_nll_nats")
    if nll < 0:
        raise ValueError(f"mean_nll_nats must be >= 0 (a negative log-likelihood in nats), got {nll}")
    try:
        return math.exp(nll)
    except OverflowError:  # nll > ~709.78: too big for a float
        return math.inf


def bits_per_char(mean_nll_nats: float | torch.Tensor) -> float:
    """Mean NLL converted from nats to bits (nats / ln 2): bits per character for a char-level model."""
    # With a character-level tokenizer every token is one character, so bits per token = bits per char.
    # For a subword tokenizer this is bits per *token*; divide by characters-per-token to compare.
    nll = _to_float(mean_nll_nats, "mean_nll_nats")
    if nll < 0:
        raise ValueError(f"mean_nll_nats must be >= 0 (a negative log-likelihood in nats), got {nll}")
    return nll / math.log(2)


# ----------------------------------------------------------------------------- regression

def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements (0-d tensor, in the squared units of the inputs)."""
    _check_same_shape("pred", pred, "target", target)  # F.mse_loss would silently broadcast
    return ((pred - target) ** 2).mean()


# ----------------------------------------------------------------------------- comparing distributions

def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p || q) between softmax(p_logits / T) and softmax(q_logits / T), mean over positions, in nats."""
    # KL(p || q) = sum_i p_i (log p_i - log q_i): the extra nats paid for coding samples of p with a
    # code built for q. It is >= 0, zero only when p == q, and not symmetric: p is the "true" one.
    temperature = _check_temperature(temperature)
    _check_same_shape("p_logits", p_logits, "q_logits", q_logits)
    if p_logits.dim() < 1:
        raise ValueError("p_logits and q_logits must have at least one dimension (the classes, last)")
    log_p = log_softmax(p_logits / temperature)
    log_q = log_softmax(q_logits / temperature)
    p = log_p.exp()
    # A class p never picks (a -inf logit, e.g. a teacher masked to its top k) adds p_i log p_i = 0·(-inf):
    # its limit is 0, as in F.kl_div, so those classes contribute nothing (computed as nan otherwise).
    # The where() sits before the multiplication so no nan reaches the gradient either.
    log_ratio = torch.where(p > 0, log_p - log_q, torch.zeros_like(log_p))
    kl_per_position = (p * log_ratio).sum(dim=-1)  # (...) sum over the classes
    return kl_per_position.mean()  # "batchmean": average over every leading dimension


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      temperature: float = 2.0, alpha: float = 0.5) -> torch.Tensor:
    """Hinton et al. (2015) distillation loss in nats: alpha*T²*KL(teacher||student) + (1-alpha)*CE."""
    # The student learns from two signals:
    #   soft: match the teacher's whole distribution, both softened by temperature T > 1, which
    #         reveals which wrong answers the teacher finds "nearly right" (the dark knowledge);
    #   hard: the usual cross-entropy with the true targets, at T = 1.
    # Why multiply the soft term by T²? Its gradient w.r.t. a student logit z_i is
    #     (1/T) * (q_i - p_i),  q = softmax(z/T), p = softmax(v/T)   (v = teacher logits)
    # and for large T both q_i and p_i are close to 1/V with q_i - p_i ~ (z_i - v_i) / (V*T), so the
    # gradient shrinks like 1/T². Scaling by T² undoes that, so the soft term keeps the same weight
    # relative to the hard one whatever T is, and alpha means the same thing at every temperature.
    temperature = _check_temperature(temperature)
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:  # also rejects nan
        raise ValueError(f"alpha must be in [0, 1] (weight of the soft, teacher term), got {alpha}")
    _check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    teacher_logits = teacher_logits.detach()  # the teacher is fixed: only the student learns
    soft = kl_divergence(teacher_logits, student_logits, temperature) * temperature ** 2
    hard = cross_entropy(student_logits, targets)
    return alpha * soft + (1.0 - alpha) * hard


# ----------------------------------------------------------------------------- variational autoencoder

class ELBO(NamedTuple):
    reconstruction: torch.Tensor  # mean over the batch of the per-example reconstruction loss
    kl: torch.Tensor              # mean over the batch of KL(q(z|x) || N(0, I)), nats
    total: torch.Tensor           # reconstruction + kl = the negative ELBO, the quantity to minimise


def vae_elbo(recon_x: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             recon: str = "mse") -> ELBO:
    """Negative ELBO of a VAE as ELBO(reconstruction, kl, total): per-example sums, batch means.

    recon="bce": Bernoulli decoder, recon_x are probabilities in [0, 1]; reconstruction is in nats.
    recon="mse": squared error summed over the features (a Gaussian decoder up to scale and a
    constant), in the squared units of x.

    The encoder outputs q(z|x) = N(mu, diag(exp(logvar))) with shapes (B, latent_dim); its KL
    to the standard-normal prior, in nats, summed over the latent dimensions, is

        KL = -1/2 * sum(1 + logvar - mu² - exp(logvar))     (note the leading minus: KL >= 0)

    and is 0 exactly when mu = 0 and logvar = 0. total = reconstruction + KL = -ELBO.
    """
    if recon not in RECON_KINDS:
        raise ValueError(f"recon={recon!r} is not a known reconstruction loss; allowed: {RECON_KINDS}")
    _check_same_shape("recon_x", recon_x, "x", x)
    _check_same_shape("mu", mu, "logvar", logvar)
    if x.dim() < 1 or mu.dim() < 1 or mu.size(0) != x.size(0):
        raise ValueError(f"x and mu must share the batch (first) dimension, "
                         f"got x {tuple(x.shape)} and mu {tuple(mu.shape)}")
    batch_size = x.size(0)

    if recon == "mse":
        reconstruction = ((recon_x - x) ** 2).sum() / batch_size
    else:  # "bce": -[x log r + (1 - x) log(1 - r)], the NLL of x under a Bernoulli with mean r
        if recon_x.min() < 0 or recon_x.max() > 1:
            raise ValueError("recon='bce' needs recon_x to be probabilities in [0, 1] (apply a sigmoid), "
                             f"got values in [{recon_x.min().item():.3g}, {recon_x.max().item():.3g}]")
        if x.min() < 0 or x.max() > 1:
            raise ValueError("recon='bce' needs x in [0, 1], "
                             f"got values in [{x.min().item():.3g}, {x.max().item():.3g}]")
        # log(0) = -inf; clamp at -100 as F.binary_cross_entropy does so a confident mistake stays finite
        log_r = torch.log(recon_x).clamp(min=-100)
        log_1mr = torch.log(1 - recon_x).clamp(min=-100)
        reconstruction = -(x * log_r + (1 - x) * log_1mr).sum() / batch_size

    kl = -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum() / batch_size
    return ELBO(reconstruction=reconstruction, kl=kl, total=reconstruction + kl)
