"""Quantization: store each weight in a few bits instead of 32, and measure what it costs the model.

    q = quantize(layer.weight, bits=4, symmetric=False, granularity="group", group_size=32)
    q.dequantize()                  # float32 again, every weight rounded to one of 2**4 levels of its group
    q.nbytes                        # exact bytes of q.arrays(): packed 4-bit codes + fp16 scales + 4-bit zero points
    model_q, info = quantize_model(model, "int4-g32")     # every Linear of the blocks; info["total_bytes"], ...
    validation_perplexity(model_q)                        # the lab's yardstick: loss, SE, perplexity
    save_quantized(model_q, info, "q.pt")                 # the packed arrays on disk; load_quantized reads them

**Affine (uniform) quantization.** A weight w becomes an integer code q with w ≈ scale · (q − zero_point):

    symmetric ("absmax")   scale = max|w| / (2**(b-1) − 1),  zero_point = 2**(b-1)   (fixed, so never stored)
    asymmetric             scale = (max w − min w) / (2**b − 1),  zero_point = round(−min w / scale)   (stored)
    q = clamp(round(w / scale) + zero_point, q_min, q_max)        "round to nearest" (RTN), then clip

Codes are unsigned, 0 .. 2**b − 1. The symmetric scheme uses the codes 1 .. 2**b − 1 only, so that +max|w|
and −max|w| are both levels (at 2 bits that is 3 levels: −scale, 0, +scale — one code of four is wasted; the
asymmetric scheme uses all four). The asymmetric range always includes 0 (min ≤ 0 ≤ max), so 0 is exact.
One scale (and zero point) is shared by a *group* of weights:

    granularity "tensor"   one scale for the whole matrix
                "channel"  one per output row of a Linear weight (out_features scales)
                "group"    one per `group_size` consecutive weights of a row, along the input dimension

Rounding: `torch.round` rounds halves to the nearest EVEN integer (0.5 → 0, 1.5 → 2, 2.5 → 2), and so do
torch.fake_quantize_per_channel_affine and torch.quantize_per_channel; the results here are identical to
theirs given the same scales (tested). Scales are rounded to their storage dtype (`scale_dtype`, fp16 by
default) *before* the codes are computed, so `dequantize` reproduces exactly what a reader of the stored bytes gets.

`clip="search"` shrinks each group's range by the ratio r (from CLIP_RATIOS) that minimises that group's
squared error: clipping a few large weights buys a finer step for all the others.

**Storage.** `pack_codes` writes b-bit codes as one little-endian bit stream into uint8 bytes: code i occupies
bits i·b .. i·b + b − 1 of the stream (2 codes per byte at 4 bits, 4 at 2 bits; at 3 bits 8 codes fill 3 bytes,
a code may straddle two bytes). So n codes take exactly ceil(n·b / 8) bytes, at every bit width.

**Codebooks at equal bits.** Instead of evenly spaced levels, a table of 2**b values: k-means weight sharing
("Deep Compression", Han, Mao and Dally 2016: a per-matrix codebook learned by k-means), NF4 ("QLoRA: Efficient
Finetuning of Quantized LLMs", Dettmers et al. 2023: the quantiles of a normal distribution, scaled per block
by absmax), and float8 e4m3 (torch.float8_e4m3fn: 1 sign, 4 exponent, 3 mantissa bits, scaled per row).

**Models.** `quantize_model` quantizes every Linear inside the Transformer blocks (attention qkv and proj, the
MLP's matrices) and optionally lm_head. The token and position embeddings and the LayerNorms stay float32:
an embedding is a table lookup (each step reads one row) and the norms are tiny.

**Lab 05's exercises.** `absmax_quantize(w, bits)` (one absmax scale, dequantized), `group_scales(w,
group_size, bits)` and `group_quantized_bytes(n_rows, n_cols, bits, group_size, scale_bytes)` write the
three formulas plainly; they give the same numbers as quantize() and quantized_bytes (tested).

**Elsewhere.** GPTQ lives in labkit.gptq, int8 activations and outlier features in labkit.outliers,
quantization-aware training in labkit.qat. `torch_dynamic_int8` is the library reference
(torch.ao.quantization.quantize_dynamic).
"""
from __future__ import annotations

import copy
import io
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from labkit.model import GPT, build_model, model_config_dict

BITS = (2, 3, 4, 8)
GRANULARITIES = ("tensor", "channel", "group")
SCALE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# the clipping ratios `clip="search"` tries: 1.0 (no clipping) down to 0.5 in steps of 0.025
CLIP_RATIOS = tuple(round(1.0 - 0.025 * i, 3) for i in range(21))
FP8_MAX = torch.finfo(torch.float8_e4m3fn).max      # 448.0, the largest finite float8 e4m3 value

__all__ = [
    "BITS", "CLIP_RATIOS", "EXERCISE_BITS", "FP8_MAX", "GRANULARITIES", "NF4_PAPER_TABLE", "SCALE_DTYPES",
    "SCHEMES", "CodebookTensor", "Float8Tensor", "QuantizedTensor", "Scheme", "StoredWeight", "absmax_quantize",
    "code_range", "default_eval_set", "dequantize", "fake_quantize", "float8_quantize", "get_scheme",
    "group_quantized_bytes", "group_scales", "kmeans_quantize", "load_quantized", "nf4_codebook", "nf4_quantize",
    "pack_codes", "packed_bytes", "quantizable_layers", "quantization_sweep", "quantize", "quantize_model",
    "quantize_tensor", "quantized_bytes", "save_quantized", "saved_state_bytes", "torch_dynamic_int8",
    "unpack_codes", "validation_perplexity", "weight_mse",
]


# ---------------------------------------------------------------------------------------------
# Checking what callers pass


def _check_bits(bits, allowed: tuple[int, ...] = BITS) -> int:
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or bits not in allowed:
        raise ValueError(f"bits={bits!r} is not supported; allowed: {allowed}")
    return int(bits)


def _check_choice(value, name: str, allowed) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}={value!r}; allowed: {tuple(allowed)}")
    return value


def _check_weight(weight, name: str = "weight") -> Tensor:
    """`weight` as a 2-D float32 tensor (a 1-D one is one row); clear errors for anything else."""
    if not isinstance(weight, Tensor) or not weight.is_floating_point():
        got = weight.dtype if isinstance(weight, Tensor) else type(weight).__name__
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got {got}")
    if weight.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(weight.shape)}): there is nothing to quantize")
    if weight.dim() not in (1, 2):
        raise ValueError(f"{name} must be 2-D (out_features, in_features) like a Linear weight, or 1-D (one row); "
                         f"got shape {tuple(weight.shape)}")
    if not torch.isfinite(weight).all():
        raise ValueError(f"{name} holds NaN or infinite values: no finite scale can represent them")
    w = weight.detach().float()
    return w.reshape(1, -1) if w.dim() == 1 else w


def _check_group(granularity: str, group_size, n_cols: int) -> int:
    """How many consecutive weights of a row share a scale (n_cols for "channel"); checks group_size."""
    _check_choice(granularity, "granularity", GRANULARITIES)
    if granularity != "group":
        if group_size is not None:
            raise ValueError(f"group_size={group_size!r} is only used with granularity='group', got {granularity!r}")
        return n_cols
    if isinstance(group_size, bool) or not isinstance(group_size, numbers.Integral) or group_size < 1:
        raise ValueError(f"group_size must be an integer >= 1 with granularity='group', got {group_size!r}")
    if n_cols % group_size:
        divisors = [d for d in range(1, n_cols + 1) if n_cols % d == 0]
        raise ValueError(f"group_size={group_size} does not divide the input dimension {n_cols} (no padding is "
                         f"done); allowed: {divisors}")
    return int(group_size)


def _scale_dtype(scale_dtype) -> torch.dtype:
    if isinstance(scale_dtype, torch.dtype) and scale_dtype in SCALE_DTYPES.values():
        return scale_dtype
    _check_choice(scale_dtype, "scale_dtype", tuple(SCALE_DTYPES))
    return SCALE_DTYPES[scale_dtype]


def _grouped(w: Tensor, granularity: str, group_size: int) -> Tensor:
    """A (rows, n_groups, group) view of the 2-D weight: the weights in [r, g, :] share one scale."""
    if granularity == "tensor":
        return w.reshape(1, 1, -1)
    return w.reshape(w.size(0), -1, group_size)


# ---------------------------------------------------------------------------------------------
# 1. Affine quantization by hand


def code_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """The smallest and largest unsigned code used: (1, 2**b − 1) symmetric, (0, 2**b − 1) asymmetric."""
    bits = _check_bits(bits)
    return (1 if symmetric else 0), 2 ** bits - 1


def _stored_scale(scale: Tensor, dtype: torch.dtype) -> Tensor:
    """`scale` rounded to its storage dtype (back as float32); a scale of 0 (an all-zero group) becomes the dtype's
    smallest positive value, so every code still decodes (to exactly 0 there)."""
    stored = scale.to(dtype)
    if torch.isinf(stored).any():
        raise ValueError(f"a scale of {scale.max().item():.3g} is beyond the range of scale_dtype {dtype} "
                         f"(max {torch.finfo(dtype).max:.3g}); allowed: a wider scale_dtype ('fp32' or 'bf16')")
    smallest = torch.finfo(dtype).tiny * torch.finfo(dtype).eps    # the smallest positive (subnormal) value
    return torch.where(stored > 0, stored.float(), torch.tensor(smallest, dtype=torch.float32))


def _scale_and_zero(lo: Tensor, hi: Tensor, bits: int, symmetric: bool, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Per-group scale (float32, already rounded to `dtype`) and zero point (float, an integer value) from a range."""
    if symmetric:
        scale = _stored_scale(torch.maximum(lo.abs(), hi.abs()) / (2 ** (bits - 1) - 1), dtype)
        return scale, torch.full_like(scale, 2 ** (bits - 1))
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)           # the range always holds 0, so 0 is exact
    scale = _stored_scale((hi - lo) / (2 ** bits - 1), dtype)
    zero = torch.round(-lo / scale).clamp(0, 2 ** bits - 1)
    return scale, zero


def _codes(x: Tensor, scale: Tensor, zero: Tensor, bits: int, symmetric: bool) -> Tensor:
    """Round to nearest (halves to even), shift by the zero point, clip to the code range: float codes."""
    q_min, q_max = code_range(bits, symmetric)
    return (torch.round(x / scale) + zero).clamp(q_min, q_max)


def _search_clip(x: Tensor, bits: int, symmetric: bool, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Per group, the scale and zero point of the clipping ratio in CLIP_RATIOS with the smallest squared error."""
    lo, hi = x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True)
    best = None
    for ratio in CLIP_RATIOS:
        scale, zero = _scale_and_zero(ratio * lo, ratio * hi, bits, symmetric, dtype)
        error = ((_codes(x, scale, zero, bits, symmetric) - zero) * scale - x).square().sum(dim=-1, keepdim=True)
        if best is None:
            best = (error, scale, zero)
        else:
            better = error < best[0]                     # ties keep the larger ratio (less clipping)
            best = (torch.where(better, error, best[0]), torch.where(better, scale, best[1]),
                    torch.where(better, zero, best[2]))
    return best[1], best[2]


class StoredWeight:
    """What every stored format shares: `arrays()` are the tensors written to disk; nbytes counts them exactly."""

    shape: tuple[int, ...]

    def arrays(self) -> dict[str, Tensor]:
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        """Exact bytes of `arrays()` (packed codes, scales, zero points, codebook: whatever the format stores)."""
        return sum(t.numel() * t.element_size() for t in self.arrays().values())

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per weight, everything the format stores included."""
        return 8 * self.nbytes / math.prod(self.shape)


@dataclass
class QuantizedTensor(StoredWeight):
    """A weight matrix as b-bit codes plus one scale (and zero point) per group: w ≈ scale · (code − zero_point)."""

    codes: Tensor = field(repr=False)          # uint8, the weight's (2-D) shape, values 0 .. 2**bits − 1 (unpacked)
    scale: Tensor = field(repr=False)          # (rows, n_groups) in scale_dtype; rows = 1 for "tensor"
    zero_point: Tensor | None = field(repr=False)   # (rows, n_groups) uint8, None when symmetric (it is 2**(bits−1))
    bits: int
    granularity: str
    group_size: int                            # weights of a row per scale (the row length for "channel")
    shape: tuple[int, ...]                     # the original weight's shape (1-D or 2-D)
    symmetric: bool

    @property
    def zero(self) -> Tensor:
        """The zero point of every group as float32 (the fixed 2**(bits−1) when symmetric)."""
        if self.zero_point is None:
            return torch.full(self.scale.shape, float(2 ** (self.bits - 1)))
        return self.zero_point.float()

    def dequantize(self) -> Tensor:
        """The float32 weight this stands for: scale · (code − zero_point), in the original shape."""
        grouped = _grouped(self.codes.float(), self.granularity, self.group_size)
        w = (grouped - self.zero[..., None]) * self.scale.float()[..., None]
        return w.reshape(self.shape)

    def arrays(self) -> dict[str, Tensor]:
        """The tensors actually stored: packed codes, scales, and (asymmetric) packed zero points."""
        out = {"codes": pack_codes(self.codes, self.bits), "scale": self.scale}
        if self.zero_point is not None:
            out["zero_point"] = pack_codes(self.zero_point, self.bits)
        return out

    def to_state(self) -> dict:
        """Plain tensors, ints and strings (what torch.load(weights_only=True) reads back)."""
        return {"format": "int", **self.arrays(), "bits": self.bits, "granularity": self.granularity,
                "group_size": self.group_size, "shape": list(self.shape), "symmetric": self.symmetric}

    @classmethod
    def from_state(cls, state: dict) -> QuantizedTensor:
        """The inverse of to_state (unpacks the codes and zero points)."""
        shape = tuple(state["shape"])
        rows, cols = (1, shape[0]) if len(shape) == 1 else shape
        bits = int(state["bits"])
        codes = unpack_codes(state["codes"], bits, rows * cols).view(rows, cols)
        zero = state.get("zero_point")
        if zero is not None:
            zero = unpack_codes(zero, bits, state["scale"].numel()).view(state["scale"].shape)
        return cls(codes, state["scale"], zero, bits, state["granularity"], int(state["group_size"]), shape,
                   bool(state["symmetric"]))


def quantize(weight: Tensor, bits: int = 8, symmetric: bool = True, granularity: str = "channel",
             group_size: int | None = None, clip: str | float = 1.0, scale_dtype: str | torch.dtype = "fp16"
             ) -> QuantizedTensor:
    """Round-to-nearest affine quantization of a 2-D weight (or one 1-D row) to `bits`-bit codes.

    `clip` is a clipping ratio in (0, 1] applied to every group's range, or "search" for the
    MSE-optimal ratio of each group over CLIP_RATIOS. Scales are stored (and used) in `scale_dtype`.
    """
    w = _check_weight(weight)
    bits = _check_bits(bits)
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric must be True (absmax) or False (zero point), got {symmetric!r}")
    group_size = _check_group(granularity, group_size, w.size(1))
    dtype = _scale_dtype(scale_dtype)
    x = _grouped(w, granularity, group_size)
    if clip == "search":
        scale, zero = _search_clip(x, bits, symmetric, dtype)
    elif not isinstance(clip, bool) and isinstance(clip, numbers.Real) and 0 < clip <= 1:
        scale, zero = _scale_and_zero(clip * x.amin(dim=-1, keepdim=True), clip * x.amax(dim=-1, keepdim=True),
                                      bits, symmetric, dtype)
    else:
        raise ValueError(f"clip must be a ratio in (0, 1] or 'search', got {clip!r}")
    codes = _codes(x, scale, zero, bits, symmetric).to(torch.uint8).reshape(w.shape)
    return QuantizedTensor(codes=codes, scale=scale[..., 0].to(dtype),
                           zero_point=None if symmetric else zero[..., 0].to(torch.uint8), bits=bits,
                           granularity=granularity, group_size=group_size, shape=tuple(weight.shape),
                           symmetric=symmetric)


def dequantize(q: QuantizedTensor | CodebookTensor | Float8Tensor) -> Tensor:
    """The float32 weight a quantized tensor stands for."""
    return q.dequantize()


def fake_quantize(weight: Tensor, **settings) -> Tensor:
    """quantize then dequantize: the weight as the quantized model sees it (float32, same shape)."""
    return quantize(weight, **settings).dequantize()


def quantized_bytes(shape: tuple[int, int], bits: int, granularity: str = "group", group_size: int | None = None,
                    symmetric: bool = True, scale_bytes: int = 2) -> int:
    """Bytes of a quantized matrix: ceil(n·b/8) packed codes + n_groups·scale_bytes (+ ceil(n_groups·b/8) zeros)."""
    rows, cols = shape
    bits = _check_bits(bits)
    group_size = _check_group(granularity, group_size, cols)
    n_groups = 1 if granularity == "tensor" else rows * (cols // group_size)
    zeros = 0 if symmetric else packed_bytes(n_groups, bits)
    return packed_bytes(rows * cols, bits) + n_groups * scale_bytes + zeros


# ---------------------------------------------------------------------------------------------
# 2. Packing b-bit codes into bytes


def packed_bytes(n_codes: int, bits: int) -> int:
    """Bytes that n codes of `bits` bits take packed as one bit stream: ceil(n·bits / 8)."""
    return (n_codes * bits + 7) // 8


def pack_codes(codes: Tensor, bits: int) -> Tensor:
    """Integer codes (each < 2**bits) as a little-endian bit stream in a 1-D uint8 tensor of ceil(n·bits/8) bytes."""
    bits = _check_bits(bits, tuple(range(1, 9)))
    if not isinstance(codes, Tensor) or codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise TypeError(f"codes must be an integer torch.Tensor, got "
                        f"{codes.dtype if isinstance(codes, Tensor) else type(codes).__name__}")
    flat = codes.reshape(-1).long()
    if flat.numel() and (flat.min() < 0 or flat.max() >= 2 ** bits):
        raise ValueError(f"codes must lie in 0 .. {2 ** bits - 1} for bits={bits}, got {int(flat.min())} .. "
                         f"{int(flat.max())}")
    if bits == 8:
        return flat.to(torch.uint8)
    stream = ((flat[:, None] >> torch.arange(bits)) & 1).reshape(-1)   # bit j of code i at position i·bits + j
    stream = torch.cat([stream, stream.new_zeros(-len(stream) % 8)])  # the last byte is filled with zero bits
    return (stream.view(-1, 8) << torch.arange(8)).sum(dim=1).to(torch.uint8)


def unpack_codes(packed: Tensor, bits: int, n_codes: int) -> Tensor:
    """The first `n_codes` codes of a packed bit stream, as a 1-D uint8 tensor (the inverse of pack_codes)."""
    bits = _check_bits(bits, tuple(range(1, 9)))
    if not isinstance(packed, Tensor) or packed.dtype != torch.uint8 or packed.dim() != 1:
        raise TypeError(f"packed must be a 1-D torch.uint8 tensor (from pack_codes), got "
                        f"{(packed.dtype, tuple(packed.shape)) if isinstance(packed, Tensor) else type(packed)}")
    if isinstance(n_codes, bool) or not isinstance(n_codes, numbers.Integral) or n_codes < 0:
        raise ValueError(f"n_codes must be an integer >= 0, got {n_codes!r}")
    if packed.numel() != packed_bytes(n_codes, bits):
        raise ValueError(f"{n_codes} codes of {bits} bits take {packed_bytes(n_codes, bits)} bytes, "
                         f"got {packed.numel()}")
    if bits == 8:
        return packed.clone()
    stream = (packed.long()[:, None] >> torch.arange(8)) & 1
    stream = stream.reshape(-1)[:n_codes * bits].view(n_codes, bits)
    return (stream << torch.arange(bits)).sum(dim=1).to(torch.uint8)


# ---------------------------------------------------------------------------------------------
# Lab 05's three exercises in their plainest form (the notebook's fallbacks; equal to quantize() and
# quantized_bytes on the same settings, tested). Any bit width 2..8 here, like the exercises.

EXERCISE_BITS = tuple(range(2, 9))


def _check_count(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def absmax_quantize(w: Tensor, bits: int) -> Tensor:
    """w rounded to the 2**(bits−1) − 1 levels per sign of ONE absmax scale, dequantized (w's shape and dtype).

    scale = max|w| / (2**(bits−1) − 1); q = clamp(round(w / scale), ±(2**(bits−1) − 1)) (halves to even, as
    torch.round); returns q · scale. An all-zero w returns zeros. Computed in float32 (float64 if w is), the
    same numbers as quantize(w, bits, granularity="tensor", scale_dtype="fp32").dequantize().
    """
    if not isinstance(w, Tensor) or not w.is_floating_point():
        got = w.dtype if isinstance(w, Tensor) else type(w).__name__
        raise TypeError(f"w must be a floating-point torch.Tensor, got {got}")
    if w.numel() == 0:
        raise ValueError(f"w is empty (shape {tuple(w.shape)}): there is nothing to quantize")
    if not torch.isfinite(w).all():
        raise ValueError("w holds NaN or infinite values: no finite scale can represent them")
    levels = 2 ** (_check_bits(bits, EXERCISE_BITS) - 1) - 1
    x = w.detach().to(torch.promote_types(w.dtype, torch.float32))
    scale = x.abs().max() / levels
    if scale == 0:
        return torch.zeros_like(w)
    return (torch.round(x / scale).clamp(-levels, levels) * scale).to(w.dtype)


def group_scales(w: Tensor, group_size: int, bits: int) -> Tensor:
    """(n_rows, n_cols // group_size): max|w| / (2**(bits−1) − 1) of each `group_size` consecutive weights of a row.

    The symmetric absmax scale of every group along the input dimension (0 for an all-zero group), in
    float32 (float64 if w is): quantize(w, bits, granularity="group", group_size=..., scale_dtype="fp32").scale
    wherever a group is not all zero.
    """
    if not isinstance(w, Tensor) or not w.is_floating_point() or w.dim() != 2:
        got = (w.dtype, tuple(w.shape)) if isinstance(w, Tensor) else type(w).__name__
        raise TypeError(f"w must be a 2-D floating-point torch.Tensor (n_rows, n_cols), got {got}")
    if w.numel() == 0 or not torch.isfinite(w).all():
        raise ValueError(f"w must be non-empty and finite, got shape {tuple(w.shape)}"
                         + ("" if w.numel() == 0 else " with NaN or infinite values"))
    group_size = _check_group("group", group_size, w.size(1))
    levels = 2 ** (_check_bits(bits, EXERCISE_BITS) - 1) - 1
    x = w.detach().to(torch.promote_types(w.dtype, torch.float32))
    return x.abs().reshape(w.size(0), -1, group_size).amax(dim=-1) / levels


def group_quantized_bytes(n_rows: int, n_cols: int, bits: int, group_size: int, scale_bytes: int) -> int:
    """Bytes of a symmetric group-quantized matrix: ceil(n_rows·n_cols·bits / 8) packed codes + one scale per group.

    The codes are packed as ONE bit stream over the whole matrix (pack_codes: a row may end mid-byte), the
    scales take n_rows · (n_cols / group_size) · scale_bytes, and no zero point is stored (it is fixed).
    Equal to quantized_bytes((n_rows, n_cols), bits, "group", group_size, True, scale_bytes).
    """
    n_rows, n_cols = _check_count(n_rows, "n_rows"), _check_count(n_cols, "n_cols")
    bits = _check_bits(bits, EXERCISE_BITS)
    group_size = _check_group("group", group_size, n_cols)
    scale_bytes = _check_count(scale_bytes, "scale_bytes")
    return packed_bytes(n_rows * n_cols, bits) + n_rows * (n_cols // group_size) * scale_bytes


# ---------------------------------------------------------------------------------------------
# 3. Codebooks at equal bits: k-means weight sharing, NF4, float8 e4m3

# The 16 NF4 values as printed in "QLoRA: Efficient Finetuning of Quantized LLMs" (Dettmers et al. 2023,
# appendix "NormalFloat 4-bit data type"): a published fact the test compares nf4_codebook() with.
NF4_PAPER_TABLE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)


def nf4_codebook() -> Tensor:
    """The 16 NF4 levels (float32, sorted, in [−1, 1]) computed from their definition in the QLoRA paper.

    NF4 puts its levels at quantiles of N(0, 1), so each level is equally likely for normally distributed
    weights, made asymmetric so that 0 is a level: 8 positive levels at the quantiles of 8 probabilities
    evenly spaced from 1/2 (excluded) to δ, 7 negative levels mirrored from 7 probabilities evenly spaced
    from 1/2 (excluded) to δ, and 0; then divided by the largest, so ±1 are levels. The extreme
    probability δ = ½·((1 − 1/32) + (1 − 1/30)) keeps the outermost quantile finite (the average of the
    outermost probability for 16 and for 15 levels).
    """
    delta = 0.5 * ((1 - 1 / 32) + (1 - 1 / 30))
    positive = torch.special.ndtri(torch.linspace(delta, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -torch.special.ndtri(torch.linspace(delta, 0.5, 8, dtype=torch.float64)[:-1])
    levels = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return (levels / levels.abs().max()).float()


def _nearest(x: Tensor, sorted_levels: Tensor) -> Tensor:
    """Index (int64) of the nearest level for every x; a tie between two levels goes to the lower one."""
    midpoints = (sorted_levels[1:] + sorted_levels[:-1]) / 2
    return torch.bucketize(x, midpoints)


@dataclass
class CodebookTensor(StoredWeight):
    """A weight matrix as b-bit indices into a table of 2**b values, optionally times a per-group scale."""

    codes: Tensor = field(repr=False)          # uint8, (rows, cols), indices into codebook
    codebook: Tensor = field(repr=False)       # (2**bits,) sorted levels, in their storage dtype
    scale: Tensor | None = field(repr=False)   # (rows, n_groups) absmax per group (NF4), None for k-means
    bits: int
    group_size: int
    shape: tuple[int, ...]
    kind: str                                  # "kmeans" or "nf4"

    def dequantize(self) -> Tensor:
        """The float32 weight: codebook[code] (· the group's scale), in the original shape."""
        w = self.codebook.float()[self.codes.long()]
        if self.scale is not None:
            w = (_grouped(w, "group", self.group_size) * self.scale.float()[..., None]).reshape(self.codes.shape)
        return w.reshape(self.shape)

    def arrays(self) -> dict[str, Tensor]:
        """The stored tensors: packed indices, the codebook (2**bits values) and the scales if any."""
        out = {"codes": pack_codes(self.codes, self.bits), "codebook": self.codebook}
        if self.scale is not None:
            out["scale"] = self.scale
        return out

    def to_state(self) -> dict:
        return {"format": self.kind, **self.arrays(), "bits": self.bits, "group_size": self.group_size,
                "shape": list(self.shape)}

    @classmethod
    def from_state(cls, state: dict) -> CodebookTensor:
        shape = tuple(state["shape"])
        rows, cols = (1, shape[0]) if len(shape) == 1 else shape
        codes = unpack_codes(state["codes"], int(state["bits"]), rows * cols).view(rows, cols)
        return cls(codes, state["codebook"], state.get("scale"), int(state["bits"]), int(state["group_size"]),
                   shape, state["format"])


def kmeans_quantize(weight: Tensor, bits: int = 4, iterations: int = 30, codebook_dtype: str = "fp16"
                    ) -> CodebookTensor:
    """Deep Compression's weight sharing: 2**bits shared values per matrix, found by k-means (Lloyd) on the weights.

    Deterministic: the centroids start evenly spaced over [min w, max w] (the paper's "linear"
    initialisation, which it found best because it keeps the rare large weights); each iteration assigns
    every weight to its nearest centroid and moves each centroid to the mean of its weights.
    """
    w = _check_weight(weight)
    bits = _check_bits(bits)
    if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral) or iterations < 0:
        raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}")
    dtype = _scale_dtype(codebook_dtype)
    flat = w.reshape(-1).double()
    centroids = torch.linspace(flat.min().item(), flat.max().item(), 2 ** bits, dtype=torch.float64)
    for _ in range(iterations):
        assign = _nearest(flat, centroids)
        counts = torch.bincount(assign, minlength=len(centroids)).double()
        sums = torch.zeros_like(centroids).index_add_(0, assign, flat)
        moved = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)   # an empty cluster stays put
        if torch.equal(moved, centroids):
            break
        centroids = moved.sort().values        # 1-D clusters of sorted centroids stay sorted; sort guards ties
    codebook = centroids.to(dtype)             # stored values; assign against them so dequantize is exact
    codes = _nearest(flat, codebook.double()).to(torch.uint8).view(w.shape)
    return CodebookTensor(codes, codebook, None, bits, w.size(1), tuple(weight.shape), "kmeans")


def nf4_quantize(weight: Tensor, group_size: int = 64, scale_dtype: str = "fp16") -> CodebookTensor:
    """NF4: each group of `group_size` weights of a row divided by its absmax, rounded to the nearest NF4 level."""
    w = _check_weight(weight)
    group_size = _check_group("group", group_size, w.size(1))
    x = _grouped(w, "group", group_size)
    scale = _stored_scale(x.abs().amax(dim=-1, keepdim=True), _scale_dtype(scale_dtype))
    codebook = nf4_codebook()
    codes = _nearest(x / scale, codebook).to(torch.uint8).reshape(w.shape)
    return CodebookTensor(codes, codebook, scale[..., 0].to(_scale_dtype(scale_dtype)), 4, group_size,
                          tuple(weight.shape), "nf4")


@dataclass
class Float8Tensor(StoredWeight):
    """A weight matrix in float8 e4m3 (torch.float8_e4m3fn) with one scale per row: w ≈ value · scale."""

    values: Tensor = field(repr=False)         # torch.float8_e4m3fn, (rows, cols)
    scale: Tensor = field(repr=False)          # (rows, 1): the row's absmax / 448, in its storage dtype
    shape: tuple[int, ...]
    bits: int = 8

    def dequantize(self) -> Tensor:
        return (self.values.float() * self.scale.float()).reshape(self.shape)

    def arrays(self) -> dict[str, Tensor]:
        return {"values": self.values, "scale": self.scale}

    def to_state(self) -> dict:
        return {"format": "fp8", **self.arrays(), "shape": list(self.shape)}

    @classmethod
    def from_state(cls, state: dict) -> Float8Tensor:
        return cls(state["values"], state["scale"], tuple(state["shape"]))


def float8_quantize(weight: Tensor, scale_dtype: str = "fp16") -> Float8Tensor:
    """Each row scaled so its absmax is e4m3's largest value (448), then cast by torch (round to nearest even)."""
    w = _check_weight(weight)
    scale = _stored_scale(w.abs().amax(dim=1, keepdim=True) / FP8_MAX, _scale_dtype(scale_dtype))
    values = (w / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return Float8Tensor(values, scale.to(_scale_dtype(scale_dtype)), tuple(weight.shape))


def weight_mse(weight: Tensor, quantized) -> float:
    """Mean squared error between a weight and what its quantized form stands for (weight units²)."""
    return (weight.detach().float() - quantized.dequantize()).square().mean().item()


def _from_state(state: dict):
    kind = state["format"]
    if kind == "int":
        return QuantizedTensor.from_state(state)
    if kind == "fp8":
        return Float8Tensor.from_state(state)
    return CodebookTensor.from_state(state)


# ---------------------------------------------------------------------------------------------
# 4. Whole models: a named scheme for every Linear of the blocks


FORMATS = ("int", "nf4", "kmeans", "fp8")
METHODS = ("rtn", "gptq")


@dataclass(frozen=True)
class Scheme:
    """How every quantized matrix of a model is stored; `name` is the short form get_scheme reads back."""

    format: str = "int"                # "int" (affine), "nf4", "kmeans" or "fp8"
    bits: int = 8
    granularity: str = "channel"       # int: "tensor", "channel" or "group"; nf4: "group"; kmeans: one codebook
    group_size: int | None = None
    symmetric: bool = False
    clip: str | float = 1.0            # int only: a ratio in (0, 1] or "search"
    scale_dtype: str = "fp16"
    method: str = "rtn"                # "rtn" (round to nearest) or "gptq" (labkit.gptq; int only)

    @property
    def name(self) -> str:
        if self.format == "kmeans":
            return f"kmeans{self.bits}"
        if self.format == "fp8":
            return "fp8-channel"
        where = {"tensor": "tensor", "channel": "channel"}.get(self.granularity, f"g{self.group_size}")
        base = f"nf4-{where}" if self.format == "nf4" else f"int{self.bits}-{where}"
        suffix = ("-sym" if self.symmetric and self.format == "int" else "") + \
                 ("-clip" if self.clip == "search" else "") + ("-gptq" if self.method == "gptq" else "")
        return base + suffix


# the schemes lab 05 compares (any name get_scheme understands works too)
SCHEMES = ("int8-channel-sym", "int8-channel", "int4-channel", "int4-g128", "int4-g32", "int3-g32", "int2-g32",
           "nf4-g64", "kmeans4", "fp8-channel")


def get_scheme(scheme: str | Scheme) -> Scheme:
    """A Scheme from a name like "int4-g32", "int8-channel-sym", "int3-g32-clip", "int4-g128-gptq", "nf4-g64",
    "kmeans4", "fp8-channel" (int: asymmetric unless "-sym"; scales fp16)."""
    if isinstance(scheme, Scheme):
        return scheme
    allowed = ("int{2,3,4,8}-{tensor,channel,g<N>}[-sym][-clip][-gptq]", "nf4-g<N>", "kmeans{2,3,4,8}",
               "fp8-channel")
    if not isinstance(scheme, str):
        raise TypeError(f"scheme must be a Scheme or a name, got {type(scheme).__name__}; allowed names: {allowed}")
    parts = scheme.split("-")
    try:
        if parts[0].startswith("kmeans") and len(parts) == 1:
            return Scheme("kmeans", _check_bits(int(parts[0][6:])), "channel")
        if parts == ["fp8", "channel"]:
            return Scheme("fp8", 8, "channel")
        fmt = "nf4" if parts[0] == "nf4" else "int"
        bits = 4 if fmt == "nf4" else _check_bits(int(parts[0][3:]) if parts[0].startswith("int") else -1)
        where, options = parts[1], parts[2:]
        if where in ("tensor", "channel"):
            granularity, group_size = where, None
        elif where.startswith("g") and where[1:].isdigit() and int(where[1:]) >= 1:
            granularity, group_size = "group", int(where[1:])
        else:
            raise ValueError(where)
        if fmt == "nf4" and (granularity != "group" or options):
            raise ValueError(scheme)
        if len(set(options)) != len(options) or not set(options) <= {"sym", "clip", "gptq"}:
            raise ValueError(options)
        return Scheme(fmt, bits, granularity, group_size, symmetric="sym" in options,
                      clip="search" if "clip" in options else 1.0, method="gptq" if "gptq" in options else "rtn")
    except (ValueError, IndexError):
        raise ValueError(f"scheme={scheme!r} is not a scheme name; allowed: {allowed}") from None


def quantize_tensor(weight: Tensor, scheme: str | Scheme):
    """One weight matrix quantized (round to nearest) to `scheme`: a QuantizedTensor, CodebookTensor or Float8Tensor."""
    s = get_scheme(scheme)
    if s.format == "int":
        return quantize(weight, s.bits, s.symmetric, s.granularity, s.group_size, s.clip, s.scale_dtype)
    if s.format == "nf4":
        return nf4_quantize(weight, s.group_size, s.scale_dtype)
    if s.format == "kmeans":
        return kmeans_quantize(weight, s.bits, codebook_dtype=s.scale_dtype)
    return float8_quantize(weight, s.scale_dtype)


def _check_gpt(model) -> GPT:
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a labkit.model.GPT (e.g. labkit.zoo.load('baby-gpt')[0]), "
                        f"got {type(model).__name__}")
    return model


def quantizable_layers(model: GPT, include_head: bool = False) -> dict[str, nn.Linear]:
    """Every Linear inside the blocks by name, in depth order (labkit.prune.prunable_layers), then lm_head if asked."""
    from labkit.prune import prunable_layers

    layers = prunable_layers(_check_gpt(model))
    if include_head:
        if model.lm_head.weight is model.wte.weight:
            raise ValueError("include_head=True, but lm_head is tied to the token embedding (tie_weights=True); "
                             "quantizing it would change the embedding too: use include_head=False")
        layers["lm_head"] = model.lm_head
    return layers


def _float_state(model: nn.Module, quantized_names: set[str]) -> dict[str, Tensor]:
    """The state_dict tensors that stay float (each shared tensor once): embeddings, norms, biases, ..."""
    out, seen = {}, set()
    for key, t in model.state_dict().items():
        if key in quantized_names or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        out[key] = t
    return out


def quantize_model(model: GPT, scheme: str | Scheme, include_head: bool = False, calibration: Tensor | None = None,
                   progress: bool = False) -> tuple[GPT, dict]:
    """A copy of `model` whose block Linears (and lm_head if asked) hold their quantized-then-dequantized weights.

    Returns (model, info): info["quantized"] maps each layer name to its stored form; "layers" has per-layer
    bytes and weight MSE; "quantized_bytes" (packed codes + scales + zero points), "float_bytes" (what stays
    float32: embeddings, LayerNorms, biases, lm_head unless included), "total_bytes", "float32_bytes" (the
    original model), "bits_per_weight" and "weight_mse" (weights²) over all the quantized matrices. Method "gptq" needs `calibration`
    (token ids, e.g. labkit.prune.calibration_batches(corpus, 32, 64)).
    """
    s = get_scheme(scheme)
    _check_gpt(model)
    out = copy.deepcopy(model).eval()
    layers = quantizable_layers(out, include_head)
    originals = {name: layer.weight.detach().clone() for name, layer in layers.items()}
    if s.method == "gptq":
        from labkit.gptq import gptq_quantize_layers
        quantized = gptq_quantize_layers(out, layers, s, calibration, progress=progress)
    else:
        if calibration is not None:
            raise ValueError(f"calibration is only used by GPTQ; scheme {s.name!r} rounds to nearest without it")
        quantized = {}
        for name, layer in layers.items():
            quantized[name] = quantize_tensor(layer.weight, s)
            with torch.no_grad():
                layer.weight.copy_(quantized[name].dequantize())
    rows = [{"layer": name, "shape": tuple(layers[name].weight.shape), "bytes": q.nbytes,
             "float32_bytes": 4 * q.dequantize().numel(), "bits_per_weight": q.bits_per_weight,
             "weight_mse": weight_mse(originals[name], q)} for name, q in quantized.items()]
    float_state = _float_state(out, {f"{name}.weight" for name in layers})
    quantized_bytes_ = sum(r["bytes"] for r in rows)
    float_bytes = sum(t.numel() * t.element_size() for t in float_state.values())
    n_weights = sum(q.dequantize().numel() for q in quantized.values())
    info = {"scheme": s.name, "quantized": quantized, "layers": rows, "quantized_bytes": quantized_bytes_,
            "float_bytes": float_bytes, "total_bytes": quantized_bytes_ + float_bytes,
            "float32_bytes": sum(t.numel() * t.element_size() for t in _float_state(model, set()).values()),
            "bits_per_weight": 8 * quantized_bytes_ / n_weights, "include_head": include_head,
            "weight_mse": sum(r["weight_mse"] * math.prod(r["shape"]) for r in rows) / n_weights}
    return out, info


def default_eval_set(corpus=None):
    """Lab 05's yardstick: 1 window in 16 of the validation split, windows of 64 characters."""
    from labkit import data as data_mod
    from labkit.evaluate import evaluation_set

    corpus = corpus if corpus is not None else data_mod.load_corpus()
    return evaluation_set(corpus.val, window=64, every=16)


def validation_perplexity(model, eval_set=None, corpus=None) -> dict:
    """Validation loss (nats/char), its standard error and perplexity (exp(loss)) on `eval_set` (default_eval_set)."""
    from labkit.evaluate import EvalSet, score

    if eval_set is None:
        eval_set = default_eval_set(corpus)
    if not isinstance(eval_set, EvalSet):
        raise TypeError(f"eval_set must be a labkit.evaluate.EvalSet, got {type(eval_set).__name__}")
    result = score(model, eval_set)
    return {"loss": result.loss, "loss_se": result.standard_error, "perplexity": math.exp(result.loss),
            "eval_set": eval_set.name, "result": result}


def quantization_sweep(model: GPT, eval_set, schemes=SCHEMES, calibration: Tensor | None = None,
                       include_head: bool = False, progress: bool = False) -> list[dict]:
    """One row per scheme (float32 first): bytes and perplexity on `eval_set`, paired with float32 on its windows.

    Columns: scheme, format, bits, granularity, group_size, method, bits_per_weight and weight_mse (over the
    quantized matrices), quantized_bytes, total_bytes (the whole model as stored), loss, loss_se, perplexity, loss_minus_float and
    its standard error diff_se (nats/char, same windows). "-gptq" schemes need `calibration`.
    """
    from labkit.evaluate import paired_difference

    base = validation_perplexity(model, eval_set)
    n_float = sum(t.numel() * t.element_size() for t in _float_state(model, set()).values())
    rows = [{"scheme": "float32", "format": "float", "bits": 32, "granularity": None, "group_size": None,
             "method": None, "bits_per_weight": 32.0, "weight_mse": 0.0, "quantized_bytes": 0, "total_bytes": n_float,
             "loss": base["loss"], "loss_se": base["loss_se"], "perplexity": base["perplexity"],
             "loss_minus_float": 0.0, "diff_se": 0.0}]
    names = list(schemes)
    if progress:
        from tqdm.auto import tqdm
        names = tqdm(names, desc="schemes", mininterval=1.0)
    for name in names:
        s = get_scheme(name)
        quantized, info = quantize_model(model, s, include_head,
                                         calibration=calibration if s.method == "gptq" else None)
        ppl = validation_perplexity(quantized, eval_set)
        diff = paired_difference(ppl["result"], base["result"])
        rows.append({"scheme": s.name, "format": s.format, "bits": s.bits, "granularity": s.granularity,
                     "group_size": s.group_size, "method": s.method, "bits_per_weight": info["bits_per_weight"],
                     "weight_mse": info["weight_mse"],
                     "quantized_bytes": info["quantized_bytes"], "total_bytes": info["total_bytes"],
                     "loss": ppl["loss"], "loss_se": ppl["loss_se"], "perplexity": ppl["perplexity"],
                     "loss_minus_float": diff["difference"], "diff_se": diff["standard_error"]})
    return rows


# ---------------------------------------------------------------------------------------------
# Saving a quantized model: the packed arrays on disk, loaded back with weights_only=True


def save_quantized(model: GPT, info: dict, path: Path | str) -> dict:
    """Write the quantized model (packed arrays + the float tensors + config) atomically; returns the byte account.

    {"file_bytes": the file's size, "tensor_bytes": the computed bytes of every stored tensor
    (info["total_bytes"]), "overhead_bytes": the difference — the zip container's headers and the
    pickled structure (names, shapes, dtypes), a fixed cost per tensor that does not grow with its size}.
    """
    from labkit.data import atomic_write_bytes

    _check_gpt(model)
    quantized = info["quantized"]
    layers = quantizable_layers(model, include_head="lm_head" in quantized)
    for name, q in quantized.items():   # the file must reproduce this model, so its weights must be the stored ones
        if name not in layers or not torch.equal(layers[name].weight.detach(), q.dequantize()):
            raise ValueError(f"info['quantized'][{name!r}] is not what model holds there: pass the model and info "
                             "that the same quantize_model call returned")
    names = {f"{name}.weight" for name in quantized}
    state = {"format": "labkit.quantize/1", "scheme": info["scheme"], "model_config": model_config_dict(model),
             "float": _float_state(model, names), "quantized": {name: q.to_state() for name, q in quantized.items()}}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    tensor_bytes = sum(q.nbytes for q in quantized.values()) + \
        sum(t.numel() * t.element_size() for t in state["float"].values())
    file_bytes = path.stat().st_size
    return {"file_bytes": file_bytes, "tensor_bytes": tensor_bytes, "overhead_bytes": file_bytes - tensor_bytes,
            "n_tensors": len(state["float"]) + sum(len(q.arrays()) for q in quantized.values())}


def load_quantized(path: Path | str) -> tuple[GPT, dict]:
    """A file from save_quantized read with torch.load(weights_only=True): (the dequantized GPT, {name: quantized})."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path={str(path)!r} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != "labkit.quantize/1":
        raise ValueError(f"path={str(path)!r} is not a file written by labkit.quantize.save_quantized")
    config = dict(state["model_config"])
    model = build_model(config.pop("kind"), **config)
    quantized = {name: _from_state(s) for name, s in state["quantized"].items()}
    weights = dict(state["float"])
    weights.update({f"{name}.weight": q.dequantize() for name, q in quantized.items()})
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {"lm_head.weight"} if model.lm_head.weight is model.wte.weight else set()
    if unexpected or set(missing) - tied:
        raise ValueError(f"path={str(path)!r} does not match its model config: missing {missing}, "
                         f"unexpected {unexpected}")
    return model.eval(), quantized


# ---------------------------------------------------------------------------------------------
# 5. The library reference: torch.ao's dynamic int8 quantization


def saved_state_bytes(model: nn.Module) -> int:
    """Bytes of torch.save(model.state_dict()) (what the model takes on disk)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def torch_dynamic_int8(model: GPT, include_head: bool = False) -> GPT:
    """A copy with the same Linears as quantize_model (blocks, lm_head if asked) as torch.ao dynamic int8 Linears.

    torch.ao.quantization.quantize_dynamic stores each weight as int8 per tensor (one scale) and quantizes
    the activations per batch on the fly, then runs an int8 matmul (fbgemm/qnnpack kernels).
    """
    import warnings

    from torch.ao.quantization import quantize_dynamic

    names = set(quantizable_layers(_check_gpt(model), include_head))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao; still the reference
        return quantize_dynamic(copy.deepcopy(model).eval(), names, dtype=torch.qint8)
