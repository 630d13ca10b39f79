"""GPTQ: quantize a weight matrix one column at a time, letting the columns not yet quantized absorb the error.

    calibration = labkit.prune.calibration_batches(corpus, 128, 64)     # token ids from the TRAINING split
    model_q, info = labkit.quantize.quantize_model(model, "int4-g32-gptq", calibration=calibration)

From "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers" (Frantar, Ashkboos,
Hoefler and Alistarh, ICLR 2023). A Linear layer computes y = x Wᵀ. Round-to-nearest (RTN) makes each weight as
close as possible to its float value; GPTQ instead keeps the layer's *outputs* close on real inputs X:

    minimise ‖X Wᵀ − X Ŵᵀ‖²   over quantized Ŵ,   a quadratic with Hessian H = 2 XᵀX / n   (in_features²)

Rows of W are independent, and for one row the "Optimal Brain Surgeon" step says: after rounding column i,
the best change to the columns not yet rounded is −err_i · H⁻¹[i, i+1:] / H⁻¹[i, i] (computed on the inverse
Hessian with columns < i removed). GPTQ rounds the columns in order 0, 1, 2, ... for all rows at once, and gets
every one of those inverse-Hessian rows from ONE Cholesky factor: with H⁻¹ = Uᵀ U (U upper triangular), row i of U
is row i of the inverse Hessian left after columns 0 .. i−1 are eliminated, divided by the square root of its
diagonal entry. So for column i:

    q_i = round(w_i)                          (the usual RTN grid: the group's scale and zero point)
    e_i = (w_i − q_i) / U[i, i]
    w_j −= e_i · U[i, j]    for every j > i   (the later columns absorb the error)

Details as in the paper: H gets λ = 1% of its mean diagonal added ("dampening") so it can be inverted; an input
feature that is always zero (H_jj = 0) gets H_jj = 1 and weight 0. With groups, a group's scale and zero point
come from its columns *as updated so far*, when the first column of the group is reached. The paper's lazy batch
updates only reorder the same arithmetic for speed on a GPU; they are not needed at this size.

Layers are quantized one after another in depth order, each from the inputs it sees when every earlier layer is
already quantized (so later layers also correct for the earlier layers' errors).
"""
from __future__ import annotations

import numbers

import torch
from torch import Tensor, nn

from labkit.quantize import (
    QuantizedTensor,
    Scheme,
    _check_bits,
    _check_group,
    _check_weight,
    _codes,
    _scale_and_zero,
    _scale_dtype,
    _search_clip,
    get_scheme,
)

__all__ = ["DAMP", "gptq_quantize", "gptq_quantize_layers", "input_hessians", "output_errors"]

DAMP = 0.01      # λ = DAMP · mean(diag H), the paper's default


def _check_hessian(hessian, n_cols: int) -> Tensor:
    if not isinstance(hessian, Tensor) or not hessian.is_floating_point():
        raise TypeError(f"hessian must be a floating-point torch.Tensor (2·XᵀX/n), got "
                        f"{hessian.dtype if isinstance(hessian, Tensor) else type(hessian).__name__}")
    if hessian.shape != (n_cols, n_cols):
        raise ValueError(f"hessian must have shape (in_features, in_features) = ({n_cols}, {n_cols}), "
                         f"got {tuple(hessian.shape)}")
    if not torch.isfinite(hessian).all():
        raise ValueError("hessian holds NaN or infinite values")
    return hessian.double()


def gptq_quantize(weight: Tensor, hessian: Tensor, bits: int = 4, symmetric: bool = False,
                  granularity: str = "channel", group_size: int | None = None, clip: str | float = 1.0,
                  damp: float = DAMP, scale_dtype: str = "fp16") -> QuantizedTensor:
    """GPTQ of one (out_features, in_features) weight given its input Hessian 2·XᵀX/n: a QuantizedTensor."""
    w0 = _check_weight(weight)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    bits = _check_bits(bits)
    rows, cols = w0.shape
    group_size = _check_group(granularity, group_size, cols)
    dtype = _scale_dtype(scale_dtype)
    H = _check_hessian(hessian, cols).clone()
    if isinstance(damp, bool) or not isinstance(damp, numbers.Real) or not 0 <= damp < 1:
        raise ValueError(f"damp must be a number in [0, 1) (a fraction of H's mean diagonal), got {damp!r}")
    if not (clip == "search" or (not isinstance(clip, bool) and isinstance(clip, numbers.Real) and 0 < clip <= 1)):
        raise ValueError(f"clip must be a ratio in (0, 1] or 'search', got {clip!r}")

    W = w0.clone()
    dead = torch.diag(H) == 0                        # an input that is always 0: its weights never matter
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.diag(H).mean() * torch.eye(cols, dtype=H.dtype)
    try:
        U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True).float()
    except torch.linalg.LinAlgError:
        raise ValueError("hessian is not positive definite even after dampening; pass 2·XᵀX/n of real inputs "
                         "or a larger damp") from None

    def params(columns: Tensor) -> tuple[Tensor, Tensor]:
        x = columns[:, None, :] if granularity != "tensor" else columns.reshape(1, 1, -1)
        if clip == "search":
            return _search_clip(x, bits, symmetric, dtype)
        return _scale_and_zero(clip * x.amin(-1, keepdim=True), clip * x.amax(-1, keepdim=True), bits, symmetric,
                               dtype)

    n_groups = 1 if granularity == "tensor" else cols // group_size
    scales = torch.zeros(1 if granularity == "tensor" else rows, n_groups)
    zeros = torch.zeros_like(scales)
    codes = torch.zeros(rows, cols, dtype=torch.uint8)
    if granularity != "group":                       # one scale per row (or matrix), from the original weights
        scale, zero = params(W)
        scales[:, 0], zeros[:, 0] = scale[:, 0, 0], zero[:, 0, 0]
    for i in range(cols):
        g = i // group_size if granularity == "group" else 0
        if granularity == "group" and i % group_size == 0:   # this group's grid, from its columns as updated so far
            scale, zero = params(W[:, i:i + group_size])
            scales[:, g], zeros[:, g] = scale[:, 0, 0], zero[:, 0, 0]
        scale, zero = scales[:, g], zeros[:, g]
        q = _codes(W[:, i], scale, zero, bits, symmetric)
        codes[:, i] = q.to(torch.uint8)
        error = (W[:, i] - (q - zero) * scale) / U[i, i]
        W[:, i + 1:] -= error[:, None] * U[i, i + 1:][None, :]
    return QuantizedTensor(codes=codes, scale=scales.to(dtype),
                           zero_point=None if symmetric else zeros.to(torch.uint8), bits=bits,
                           granularity=granularity, group_size=group_size, shape=tuple(weight.shape),
                           symmetric=symmetric)


@torch.no_grad()
def input_hessians(model: nn.Module, calibration: Tensor, layers: dict[str, nn.Linear],
                   batch_sequences: int = 16) -> dict[str, Tensor]:
    """2·XᵀX/n (float64, in_features²) of every layer's inputs X over all calibration tokens (n of them)."""
    from labkit.prune import _run_with_input_hooks

    sums = {name: torch.zeros(layer.in_features, layer.in_features, dtype=torch.float64)
            for name, layer in layers.items()}
    counts = dict.fromkeys(layers, 0)

    def seen(name: str, x: Tensor) -> None:
        x = x.reshape(-1, x.size(-1)).double()
        sums[name] += x.T @ x
        counts[name] += x.size(0)

    _run_with_input_hooks(model, calibration, layers, seen, batch_sequences)
    return {name: 2 * s / counts[name] for name, s in sums.items()}


def gptq_quantize_layers(model: nn.Module, layers: dict[str, nn.Linear], scheme: str | Scheme, calibration,
                         progress: bool = False) -> dict[str, QuantizedTensor]:
    """GPTQ of `layers` of `model` IN PLACE, in order, each from inputs with the earlier ones already quantized."""
    from labkit.prune import check_calibration

    s = get_scheme(scheme)
    if s.format != "int":
        raise ValueError(f"GPTQ rounds to a uniform integer grid; scheme {s.name!r} has format {s.format!r}; "
                         "allowed: an int scheme, e.g. 'int4-g32-gptq'")
    calibration = check_calibration(model, calibration)
    names = list(layers)
    if progress:
        from tqdm.auto import tqdm
        names = tqdm(names, desc=f"GPTQ {s.name}", mininterval=1.0)
    quantized = {}
    for name in names:
        layer = layers[name]
        H = input_hessians(model, calibration, {name: layer})[name]
        quantized[name] = gptq_quantize(layer.weight, H, s.bits, s.symmetric, s.granularity, s.group_size, s.clip,
                                        scale_dtype=s.scale_dtype)
        with torch.no_grad():
            layer.weight.copy_(quantized[name].dequantize())
    return quantized


def output_errors(model: nn.Module, quantized: dict, calibration: Tensor) -> dict[str, float]:
    """Per layer, ‖X Wᵀ − X Ŵᵀ‖² / ‖X Wᵀ‖² with X the FLOAT model's inputs to it on the calibration text."""
    from labkit.prune import check_calibration, prunable_layers

    calibration = check_calibration(model, calibration)
    layers = dict(prunable_layers(model))
    if "lm_head" in quantized:
        layers["lm_head"] = model.lm_head
    unknown = sorted(set(quantized) - set(layers))
    if unknown:
        raise ValueError(f"quantized names layers the model does not have: {unknown}; allowed: {sorted(layers)}")
    layers = {name: layers[name] for name in quantized}
    hessians = input_hessians(model, calibration, layers)
    out = {}
    for name, q in quantized.items():
        W = layers[name].weight.detach().double()
        delta = W - q.dequantize().double()
        H = hessians[name]
        out[name] = (((delta @ H) * delta).sum() / ((W @ H) * W).sum()).item()   # tr(Δ H Δᵀ) / tr(W H Wᵀ)
    return out
