"""Activations and outliers: one input feature far larger than the rest ruins int8 activations, and two fixes.

    x, w = layer_inputs(model, calibration, "blocks.0.mlp.fc"), model.blocks[0].mlp.fc.weight
    xo, wo = inject_outlier(x, w, feature=3, factor=60.0)   # same x·Wᵀ, one large feature
    int8_matmul(xo, wo)                  # x per token, W per row in int8 absmax codes, int32 sums: large error
    mixed_precision_matmul(xo, wo)       # LLM.int8: the outlier features in float, the rest in int8
    xs, ws, s = smooth(xo, wo)           # SmoothQuant: the outlier's range moved into the weight

`int8_matmul` quantizes a layer's input per token and its weight per row (labkit.quantize's symmetric absmax,
fp32 scales), multiplies the int8 codes with int32 sums and rescales. One input feature far larger than the
rest (an "outlier feature", as in "LLM.int8(): 8-bit Matrix Multiplication for Transformers at Scale",
Dettmers et al. 2022, which finds them beyond ~6.7B parameters) sets every token's scale and flattens the
others: `mixed_precision_matmul` keeps those features in float (LLM.int8's decomposition), `smooth` moves
their range into the weights ("SmoothQuant", Xiao et al. 2023).
"""
from __future__ import annotations

import numbers

import torch
from torch import Tensor

from labkit.model import GPT
from labkit.quantize import _check_weight, quantizable_layers, quantize

__all__ = ["inject_outlier", "int8_matmul", "layer_inputs", "mixed_precision_matmul", "outlier_features", "smooth"]


def _check_matmul(x, weight) -> tuple[Tensor, Tensor]:
    w = _check_weight(weight)
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 2:
        raise ValueError(f"x must be a 2-D float tensor (tokens, in_features), got "
                         f"{(x.dtype, tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__}")
    if x.size(1) != w.size(1) or x.numel() == 0:
        raise ValueError(f"x must have shape (tokens >= 1, in_features={w.size(1)}), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("x holds NaN or infinite values")
    return x.detach().float(), w


def int8_matmul(x: Tensor, weight: Tensor) -> Tensor:
    """x @ weightᵀ with both in int8 absmax codes (x per token, weight per output row), summed in int32, rescaled.

    This is what an int8 kernel computes: one integer matmul, then each output scaled by the token's and
    the row's scales. A single large feature of x sets its token's scale and flattens all other features.
    """
    x, w = _check_matmul(x, weight)
    qx, qw = quantize(x, 8, True, "channel", scale_dtype="fp32"), quantize(w, 8, True, "channel", scale_dtype="fp32")
    cx, cw = qx.codes.int() - 128, qw.codes.int() - 128                   # signed codes −127 .. 127
    return (cx @ cw.T).float() * qx.scale.float() * qw.scale.float().T   # int32 accumulation: exact


def outlier_features(x: Tensor, threshold: float = 6.0) -> Tensor:
    """Indices (int64) of the input features where some token has |x| >= threshold (LLM.int8's criterion)."""
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise ValueError(f"x must be a 2-D tensor (tokens, in_features), got {getattr(x, 'shape', type(x))}")
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not threshold > 0:
        raise ValueError(f"threshold must be a number > 0, got {threshold!r}")
    return torch.nonzero(x.abs().amax(dim=0) >= threshold).reshape(-1)


def mixed_precision_matmul(x: Tensor, weight: Tensor, threshold: float = 6.0) -> Tensor:
    """LLM.int8's decomposition: the outlier features (|x| >= threshold) in float32, all the rest through int8_matmul."""
    x, w = _check_matmul(x, weight)
    outliers = outlier_features(x, threshold)
    regular = torch.ones(x.size(1), dtype=torch.bool)
    regular[outliers] = False
    y = x[:, outliers] @ w[:, outliers].T
    if regular.any():
        y = y + int8_matmul(x[:, regular], w[:, regular])
    return y


def smooth(x: Tensor, weight: Tensor, alpha: float = 0.5) -> tuple[Tensor, Tensor, Tensor]:
    """SmoothQuant's scale migration: (x / s, weight · s, s) with s_j = max|x_j|^α / max|W_:j|^(1−α); same product.

    From "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language Models" (Xiao et
    al. 2023): dividing an input feature by s_j and multiplying its weight column by s_j leaves x Wᵀ unchanged
    but moves the outlier's range from the activation (hard to quantize per token) into the weight.
    """
    x, w = _check_matmul(x, weight)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1] (how much range moves to the weights), got {alpha!r}")
    s = (x.abs().amax(dim=0).clamp(min=1e-5) ** alpha) / (w.abs().amax(dim=0).clamp(min=1e-5) ** (1 - alpha))
    return x / s, w * s, s


def inject_outlier(x: Tensor, weight: Tensor, feature: int, factor: float) -> tuple[Tensor, Tensor]:
    """(x with feature j times `factor`, weight with column j divided by it): x Wᵀ unchanged, one large feature."""
    x, w = _check_matmul(x, weight)
    if isinstance(feature, bool) or not isinstance(feature, numbers.Integral) or not 0 <= feature < x.size(1):
        raise ValueError(f"feature must be an integer in 0 .. {x.size(1) - 1}, got {feature!r}")
    if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not factor > 0:
        raise ValueError(f"factor must be a number > 0, got {factor!r}")
    x, w = x.clone(), w.clone()
    x[:, feature] *= factor
    w[:, feature] /= factor
    return x, w


def layer_inputs(model: GPT, calibration: Tensor, name: str) -> Tensor:
    """(tokens, in_features) float32: what layer `name` of `model` reads on the calibration text."""
    from labkit.prune import _run_with_input_hooks, check_calibration

    layers = quantizable_layers(model, include_head=model.lm_head.weight is not model.wte.weight)
    if name not in layers:
        raise ValueError(f"name={name!r} is not a quantizable layer; allowed: {list(layers)}")
    calibration = check_calibration(model, calibration)
    seen = []
    _run_with_input_hooks(model, calibration, {name: layers[name]},
                          lambda _, x: seen.append(x.reshape(-1, x.size(-1)).float()))
    return torch.cat(seen)
