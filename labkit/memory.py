"""Where a language model's memory goes: accounting by formula, next to measurement.

Two halves, meant to be read side by side in the labs:

A. **Accounting by formula** (pure arithmetic, nothing is allocated):
   `dtype_bytes`, `tensor_bytes`, `gpt_param_count`, `training_state_bytes`, `params_that_fit`,
   `gpt_activation_bytes` (this CPU's saved tensors), `mlp_activation_bytes`, `megatron_activation_bytes`
   (the GPU training formula of Korthikanti et al. 2022), `largest_batch_that_fits`, `kv_cache_bytes`.

B. **Measurement** (run real PyTorch code and look at what it keeps):
   `peak_rss_mb`, `current_rss_mb`, `SavedTensorMeter` / `saved_tensor_bytes`
   (what autograd saves for the backward pass), `AllocationTracer` (every tensor each op
   allocates, with its birth and death), and `memory_report` / `explain_report`, which put
   the formula and the measurement in one table and explain every row where they differ.

Units: every `*_bytes` value is in bytes; every `*_mb` value is in MiB (2**20 bytes).
"""
from __future__ import annotations

import copy
import math
import numbers
import os
import resource
import sys
import weakref
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from labkit.model import GPT, GPTConfig, KVCache

__all__ = [
    "DTYPE_BYTES", "OPTIMIZERS", "dtype_bytes", "gpt_param_count", "training_state_bytes",
    "gpt_activation_bytes", "kv_cache_bytes", "tensor_bytes", "params_that_fit", "mlp_activation_bytes",
    "largest_batch_that_fits", "megatron_activation_bytes", "peak_rss_mb", "current_rss_mb",
    "SavedTensorRecord", "SavedTensorMeter", "saved_tensor_bytes", "TensorEvent",
    "AllocationTracer", "memory_report", "explain_report",
]

MiB = 2 ** 20

# ---------------------------------------------------------------------------------------------
# A. Accounting by formula
# ---------------------------------------------------------------------------------------------

#: Bytes per element for the number formats the course talks about. int4/nf4 pack two
#: numbers into one byte, hence 0.5.
DTYPE_BYTES: dict[str, float] = {
    "fp64": 8, "float64": 8, "double": 8,
    "fp32": 4, "float32": 4, "float": 4,
    "fp16": 2, "float16": 2, "half": 2,
    "bf16": 2, "bfloat16": 2,
    "fp8": 1, "float8": 1,
    "int64": 8, "long": 8,
    "int32": 4, "int": 4,
    "int16": 2,
    "int8": 1, "uint8": 1,
    "int4": 0.5, "nf4": 0.5,
}


def dtype_bytes(dtype: str | torch.dtype, arg_name: str = "dtype") -> float:
    """Bytes per element of `dtype` (a name from DTYPE_BYTES or a torch.dtype)."""
    if isinstance(dtype, torch.dtype):
        return dtype.itemsize
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.")
        if key in DTYPE_BYTES:
            return DTYPE_BYTES[key]
    raise ValueError(f"{arg_name}={dtype!r} is not a known number format; "
                     f"allowed: a torch.dtype or one of {sorted(DTYPE_BYTES)}")


def _nbytes(count: int, bytes_per_element: float) -> int:
    """Bytes (int) that `count` elements take; packed formats (0.5 bytes) round up to whole bytes."""
    return int(math.ceil(count * bytes_per_element))


def gpt_param_count(config: GPTConfig) -> int:
    """Number of parameters (elements, not bytes) of `GPT(config)`; a tied weight counts once."""
    C, V = config.n_embd, config.vocab_size
    nh, nkv, hd = config.n_head, config.n_kv_head, config.head_dim
    b = 1 if config.bias else 0  # each bias adds one number per output feature

    count = V * C                                 # wte: one C-vector per token id
    if config.positions == "learned":
        count += config.block_size * C            # wpe: one C-vector per position
    # (sinusoidal positions are a fixed buffer: memory, but not a parameter)

    qkv_out = (nh + 2 * nkv) * hd                 # q for every head, k and v for each kv head
    F = config.mlp_hidden                         # MLP hidden width (4C in GPT-2, 11008 in LLaMA-2-7B)
    if config.activation == "swiglu":             # gated: w_gate and w_up (C -> F), w_down (F -> C)
        mlp = 2 * (C * F + b * F) + F * C + b * C
    else:                                         # fc (C -> F), proj (F -> C)
        mlp = C * F + b * F + F * C + b * C
    per_layer = (
        C + b * C                                 # ln_1: weight (and bias)
        + C * qkv_out + b * qkv_out               # attn.qkv
        + nh * hd * C + b * C                     # attn.proj (n_head·head_dim = C unless heads were pruned)
        + C + b * C                               # ln_2
        + mlp
    )
    count += config.n_layer * per_layer
    count += C + b * C                            # ln_f
    if not config.tie_weights:
        count += V * C                            # lm_head (no bias); tied = the wte matrix again
    return count


#: optimizer name -> number of per-parameter buffers it keeps (momentum, second moment, ...)
OPTIMIZERS: dict[str, int] = {"sgd": 0, "momentum": 1, "adam": 2, "adamw": 2, "adam8bit": 2}


def training_state_bytes(n_params: int, param_dtype: str | torch.dtype = "fp32",
                         optimizer: str = "adamw", grad_dtype: str | torch.dtype | None = None,
                         master_weights: bool = False) -> dict[str, int]:
    """Bytes of parameters, gradients, master weights and optimizer state for `n_params` numbers.

    - params: one copy in `param_dtype`.
    - grads: one gradient per parameter, in `grad_dtype` (default: same as the params).
    - master_weights: mixed-precision training keeps an fp32 copy that the optimizer updates
      (4 bytes/param) and casts down to `param_dtype` for the next forward.
    - optimizer_state: "sgd" keeps nothing, "momentum" one buffer, "adam"/"adamw" two
      (exp_avg and exp_avg_sq); each in fp32 when there are master weights, else in
      `param_dtype` (what torch.optim does). "adam8bit" quantizes both moments to one byte
      each: 2 bytes/param (the small per-block scale factors are left out).

    Mixed precision Adam (fp16 params and grads + fp32 master weights and moments) gives
    2 + 2 + 4 + 4 + 4 = 16 bytes/param: the "K = 12" of ZeRO (Rajbhandari et al., 2020,
    "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models") plus 2 + 2.
    Plain fp32 Adam is also 16 bytes/param: 4 params + 4 grads + 8 state.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r} is not known; allowed: {sorted(OPTIMIZERS)}")
    if int(n_params) != n_params or n_params < 0:
        raise ValueError(f"n_params must be a non-negative integer, got {n_params!r}")
    p_bytes = dtype_bytes(param_dtype, "param_dtype")
    g_bytes = p_bytes if grad_dtype is None else dtype_bytes(grad_dtype, "grad_dtype")
    state_dtype_bytes = 4 if master_weights else p_bytes   # moments live next to the weights they update
    if optimizer == "adam8bit":
        state_per_param = 2                                  # two 8-bit moments
    else:
        state_per_param = OPTIMIZERS[optimizer] * state_dtype_bytes

    out = {
        "params": _nbytes(n_params, p_bytes),
        "grads": _nbytes(n_params, g_bytes),
        "master_weights": _nbytes(n_params, 4) if master_weights else 0,
        "optimizer_state": _nbytes(n_params, state_per_param),
    }
    out["total"] = sum(out.values())
    out["bytes_per_param"] = out["total"] / n_params if n_params else 0.0
    return out


def gpt_activation_bytes(config: GPTConfig, batch_size: int, seq_len: int,
                         dtype: str | torch.dtype = "fp32") -> dict[str, Any]:
    """Bytes autograd saves for backward in one training forward (with the loss) of `GPT(config)`.

    Derived for THIS implementation on CPU by recording every saved tensor
    (`SavedTensorMeter`) and writing each one as a formula of the shapes. Parameters
    (and views of them, like the transposed weight a Linear saves) are not activations and
    are left out, as is anything freed during the forward (those count for the *peak*, see
    `AllocationTracer`, but are not kept until backward).

    Notation: N = batch_size · seq_len tokens, C = n_embd, F = mlp_hidden, V = vocab_size, H = n_head,
    a = bytes per activation element (`dtype`: the model runs in that dtype; no autocast).

    Two attention paths, chosen by PyTorch's scaled_dot_product_attention on CPU:
    - dropout == 0: the fused "flash" kernel. It saves q, k, v (views of the single qkv
      matmul output), its output and a logsumexp per (batch, head, query): no T×T matrix.
    - dropout > 0 (or RoPE with head_dim 2, see below): the "math" path. It materializes the T×T
      attention probabilities and saves them, plus (with dropout) the dropout mask and the dropped
      probabilities (3 · B·H·T·T elements), and copies of q·scale, k·scale and (usually) v. Every
      nn.Dropout also saves its mask (same dtype).
      For fp16/bf16 models the CPU math path computes attention in fp32, so those six
      tensors are fp32 (the logsumexp of the flash path is fp32 as well).

    Returns {"per_layer", "per_layer_terms", "outside_layers", "outside_terms", "total"}.
    The terms dicts name each saved tensor; the formula matches the measurement to the byte
    (tests/test_memory.py checks random small configs: MHA/GQA/MQA, bias, every position kind,
    GELU/ReLU²/SwiGLU and any mlp_hidden, tying, dropout, fp32/bf16, B and T down to 1, one head,
    head_dim 2). It assumes
    `targets` is a tensor of its own: pass the same tensor as idx and targets and the meter
    (rightly) counts that storage once, 8·N bytes less.
    """
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be positive, got {batch_size}, {seq_len}")
    if seq_len > config.block_size:
        raise ValueError(f"seq_len={seq_len} is longer than block_size={config.block_size}")
    a = dtype_bytes(dtype)
    acc = max(4, a)          # fp16/bf16 attention accumulates in fp32 on CPU (logsumexp; the math path)
    ids = 8                  # token ids and targets are int64
    B, T, C, V = batch_size, seq_len, config.n_embd, config.vocab_size
    H, KV, hd = config.n_head, config.n_kv_head, config.head_dim
    N = B * T                # tokens in the batch
    dropout = config.dropout > 0
    rotary = config.positions == "rotary"
    # PyTorch takes the "math" attention path when dropout is on, and also for RoPE with head_dim 2 (more
    # than one head and one token): the rotated q and k are then concatenated from two (B, H, T, 1) halves
    # into a tensor whose last dimension is not contiguous, which the fused kernel refuses
    math_path = dropout or (rotary and hd == 2 and H > 1 and T > 1)
    ln_stats = 2 * N * a     # LayerNorm saves mean and 1/std per token (in the activation dtype on CPU)

    L: dict[str, int] = {}   # one transformer block
    L["ln_1 input (residual stream)"] = N * C * a
    L["ln_1 mean, rstd"] = ln_stats
    L["attn.qkv input (ln_1 output)"] = N * C * a
    if not math_path:
        if not rotary:
            # q, k and v are three views of ONE matmul output: its whole storage stays alive
            L["q, k, v (the qkv matmul output)"] = N * (H + 2 * KV) * hd * a
        elif H == KV:
            # RoPE makes new q and k tensors (rotated copies) for the kernel to save; v is still a
            # view of the qkv output, so that whole output stays alive as well
            L["rotated q, k (RoPE)"] = N * (H + KV) * hd * a
            L["v (a view: keeps the qkv matmul output alive)"] = N * (H + 2 * KV) * hd * a
        else:
            # RoPE + GQA: the kernel saves the rotated q and the repeated k, v (counted below); the
            # rotated k and the qkv output are freed during the forward
            L["rotated q (RoPE)"] = N * H * hd * a
        if H > KV:  # GQA/MQA: repeat_interleave makes full-size copies of k and v for the kernel
            L["k, v repeated to n_head heads"] = 2 * B * H * T * hd * a
        if rotary and H > 1 and T > 1:
            # with a fresh contiguous q, the kernel's output is (B, H, T, hd)-ordered: the transpose +
            # reshape feeding attn.proj is then a copy, a second tensor
            L["attention output"] = N * H * hd * a
            L["attn.proj input (transposed copy)"] = N * H * hd * a
        elif rotary:
            # ... except with one head or one token, where swapping the H and T axes moves no element:
            # the reshape is a view and one tensor serves as attention output and proj input
            L["attention output = attn.proj input (a view: H = 1 or T = 1)"] = N * H * hd * a
        else:
            # the kernel writes its output in (B, T, H, hd) order, so the transpose+reshape feeding
            # attn.proj is a view: one tensor serves as attention output and proj input
            L["attention output = attn.proj input"] = N * H * hd * a
        L["attention logsumexp (fp32)"] = B * H * T * acc
    else:  # the math path upcasts fp16/bf16 q, k, v to fp32 first, so all of these are fp32 then
        L["q·scale, k·scale copies (math attention)"] = 2 * B * H * T * hd * acc
        # the final probs @ v matmul saves v reshaped to (B·H, T, hd). That reshape is a copy,
        # except when v is an fp32 view of the qkv output (no GQA repeat, no upcast) that can be
        # reshaped without copying (B == 1 or H == 1): then v keeps the whole qkv output alive
        if H == KV and a >= 4 and (B == 1 or H == 1):
            L["v (a view: keeps the qkv matmul output alive)"] = N * (H + 2 * KV) * hd * a
        else:
            L["v copy (math attention)"] = B * H * T * hd * acc
        if dropout:
            L["attention probs, dropout mask, dropped probs"] = 3 * B * H * T * T * acc
        else:
            L["attention probs"] = B * H * T * T * acc
        L["attn.proj input (transposed copy of attention output)"] = N * H * hd * a
        if dropout:
            L["dropout masks after attn and after mlp"] = 2 * N * C * a
    L["ln_2 input (residual stream)"] = N * C * a
    L["ln_2 mean, rstd"] = ln_stats
    F = config.mlp_hidden
    if config.activation == "swiglu":
        L["w_gate, w_up input (ln_2 output)"] = N * C * a
        # silu saves its input; the product silu(g) * u saves both factors; w_down saves the product
        L["silu input (w_gate output)"] = N * F * a
        L["w_up output (a factor of the product)"] = N * F * a
        L["silu output (the other factor)"] = N * F * a
        L["w_down input (the gated product)"] = N * F * a
    else:
        L["mlp.fc input (ln_2 output)"] = N * C * a
        act = "ReLU²" if config.activation == "relu2" else "GELU"
        # GELU saves its input; relu(h)² saves relu(h) (what both the relu and the square need): same size
        L[f"{act} input (mlp.fc output)" if act == "GELU" else f"{act}: relu(mlp.fc output)"] = N * F * a
        L[f"mlp.proj input ({act} output)"] = N * F * a

    O: dict[str, int] = {}   # once per model, outside the blocks
    O["token ids (embedding backward needs them)"] = N * ids
    if rotary:  # the cos and sin rows are views of the whole tables (block_size rows), shared by all layers
        O["RoPE cos, sin tables"] = 2 * config.block_size * (hd // 2) * a
    if dropout:
        O["embedding dropout mask"] = N * C * a
    O["ln_f input (residual stream)"] = N * C * a
    O["ln_f mean, rstd"] = ln_stats
    O["lm_head input (ln_f output)"] = N * C * a
    # cross_entropy = log_softmax + nll_loss; the logits themselves are NOT saved, only the
    # log-probabilities (same size), the targets and a scalar normalizer
    O["log-probabilities (log_softmax output)"] = N * V * a
    O["targets"] = N * ids
    O["loss normalizer (total_weight scalar)"] = a

    L = {k: int(v) for k, v in L.items()}
    O = {k: int(v) for k, v in O.items()}
    per_layer, outside = sum(L.values()), sum(O.values())
    return {"per_layer": per_layer, "per_layer_terms": L, "outside_layers": outside,
            "outside_terms": O, "total": config.n_layer * per_layer + outside}


def kv_cache_bytes(n_layer: int, n_kv_head: int, head_dim: int, seq_len: int,
                   batch_size: int = 1, dtype: str | torch.dtype = "fp32") -> int:
    """Bytes of a KV cache: 2 (k and v) · layers · kv_heads · head_dim · bytes · tokens · batch."""
    elements = 2 * n_layer * n_kv_head * head_dim * seq_len * batch_size
    return _nbytes(elements, dtype_bytes(dtype))


def _check_count(name: str, value, minimum: int = 0) -> int:
    """`value` as an int if it is an integer (any integer type, e.g. numpy's) >= minimum, else ValueError."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum:
        return int(value)
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_amount(name: str, value, positive: bool = False) -> float:
    """`value` if it is a finite real number >= 0 (> 0 with positive=True), else a ValueError naming it."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and (value > 0 if positive else value >= 0):
        return value
    raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")


def tensor_bytes(shape: tuple[int, ...] | list[int] | torch.Size, dtype: str | torch.dtype = "fp32") -> int:
    """Bytes a dense tensor of `shape` takes in `dtype`: product of the sizes × bytes per element."""
    if isinstance(shape, (int, str)) or not hasattr(shape, "__iter__"):
        raise ValueError(f"shape={shape!r} must be a sequence of sizes, e.g. (B, T, C)")
    count = 1
    for i, size in enumerate(shape):
        count *= _check_count(f"shape[{i}]", size)
    return _nbytes(count, dtype_bytes(dtype))


def model_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers, each tensor once (a tied weight is one tensor, counted once)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def params_that_fit(budget_bytes: float, bytes_per_param: float) -> int:
    """How many parameters fit in `budget_bytes` at `bytes_per_param` bytes each (rounded down)."""
    budget_bytes = _check_amount("budget_bytes", budget_bytes)
    bytes_per_param = _check_amount("bytes_per_param", bytes_per_param, positive=True)
    return int(budget_bytes // bytes_per_param)


def mlp_activation_bytes(batch_size: int, seq_len: int, n_embd: int, bytes_per_element: float) -> int:
    """Bytes the course's 4x MLP saves for backward: 9·B·T·C·a (its input C, the 4C pre- and post-activation)."""
    B = _check_count("batch_size", batch_size)
    T = _check_count("seq_len", seq_len)
    C = _check_count("n_embd", n_embd)
    a = _check_amount("bytes_per_element", bytes_per_element, positive=True)
    return _nbytes(B * T * (C + 4 * C + 4 * C), a)


def megatron_activation_bytes(n_layer: int, n_embd: int, n_head: int, seq_len: int, batch_size: int) -> int:
    """Activation bytes of GPU training by Korthikanti et al. 2022: n_layer · s·b·h·(34 + 5·a·s/h).

    From "Reducing Activation Recomputation in Large Transformer Models" (eq. 1, no tensor or sequence
    parallelism, no recomputation), with s = seq_len, b = batch_size, h = n_embd, a = n_head. Its
    assumptions, which differ from `gpt_activation_bytes` (this CPU's saved tensors, measured):
    - every activation is 16-bit (2 bytes) and every dropout mask 1 byte (dropout after attention
      probabilities, after attention and after the MLP);
    - attention is NOT fused: the a·s×s scores, softmax output and dropout mask are stored, which is
      the 5·a·s/h term (2 + 2 + 1 bytes per score). A flash-attention kernel removes it;
    - the MLP is GPT's 4h GELU MLP, LayerNorm saves its input, keys and values have n_head heads (no
      GQA repeat copies, which the CPU path makes), and the embedding, final LayerNorm and loss are
      left out (they are not per layer).
    `gpt_activation_bytes` instead counts what PyTorch on this CPU keeps: a fused attention kernel
    (no s×s term), no dropout, the real MLP (SwiGLU where configured), and the outside-the-layers terms.
    """
    L = _check_count("n_layer", n_layer, 1)
    h = _check_count("n_embd", n_embd, 1)
    a = _check_count("n_head", n_head, 1)
    s = _check_count("seq_len", seq_len, 1)
    b = _check_count("batch_size", batch_size, 1)
    # s·b·h·(34 + 5·a·s/h) = 34·s·b·h + 5·a·s²·b: an exact integer
    return L * (34 * s * b * h + 5 * a * s * s * b)


def largest_batch_that_fits(config: GPTConfig, seq_len: int, budget_bytes: float, dtype: str | torch.dtype = "fp32",
                            optimizer: str = "adamw") -> int:
    """Largest batch B >= 0 whose training step fits: weights + grads + optimizer state + activations <= budget.

    Training state is `training_state_bytes(gpt_param_count(config), dtype, optimizer)["total"]`; activations
    are `gpt_activation_bytes(config, B, seq_len, dtype)["total"]`. Returns 0 if even batch 1 does not fit.
    """
    budget_bytes = _check_amount("budget_bytes", budget_bytes)
    seq_len = _check_count("seq_len", seq_len, 1)
    state = training_state_bytes(gpt_param_count(config), dtype, optimizer)["total"]

    def fits(B: int) -> bool:
        return state + gpt_activation_bytes(config, B, seq_len, dtype)["total"] <= budget_bytes

    if not fits(1):
        return 0
    lo, hi = 1, 2                      # fits(lo) holds; grow hi until it does not (bytes grow with B)
    while fits(hi):
        lo, hi = hi, 2 * hi
    while hi - lo > 1:                 # binary search: fits(lo) and not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


# ---------------------------------------------------------------------------------------------
# B. Measurement
# ---------------------------------------------------------------------------------------------

def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (never goes down, never below the current RSS).

    Linux: VmHWM ("high water mark") of /proc/self/status. Not getrusage's ru_maxrss there: Linux carries
    it across exec, so a program started by a big parent (a notebook kernel, pytest) reports the parent's
    RSS at the fork as its own peak, while VmHWM belongs to the new program's memory only. Elsewhere
    (macOS) ru_maxrss. The kernel updates either counter lazily, so it can trail the current RSS by a few
    hundred KiB: the larger of the two is returned.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):             # "VmHWM:   123456 kB"
                    return max(int(line.split()[1]) / 1024, current_rss_mb())
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS reports bytes
    return peak / MiB if sys.platform == "darwin" else peak / 1024


def current_rss_mb() -> float:
    """Resident set size of this process right now, in MiB (Linux: /proc/self/statm)."""
    try:
        with open("/proc/self/statm") as f:
            resident_pages = int(f.read().split()[1])   # fields: size resident shared ...
        return resident_pages * os.sysconf("SC_PAGE_SIZE") / MiB
    except OSError:
        try:
            import psutil  # not a dependency: only a fallback off Linux
        except ImportError as e:
            raise RuntimeError("current_rss_mb needs /proc/self/statm (Linux) or psutil") from e
        return psutil.Process().memory_info().rss / MiB


def _is_parameter(t: torch.Tensor) -> bool:
    """True for an nn.Parameter, any leaf that requires grad, or a view of one (weight.T)."""
    if isinstance(t, nn.Parameter) or (t.is_leaf and t.requires_grad):
        return True
    base = t._base
    return base is not None and (isinstance(base, nn.Parameter) or (base.is_leaf and base.requires_grad))


@dataclass
class SavedTensorRecord:
    """One tensor autograd saved for backward; `nbytes` is what it adds (bytes), 0 if already counted."""
    shape: tuple[int, ...]
    dtype: str
    nbytes: int            # bytes this record adds to the total (the storage, counted once)
    storage_nbytes: int    # bytes of the storage it keeps alive (views keep the whole storage)
    op: str                # the torch function that saved it ("linear", "layer_norm", ...)
    module: str            # the innermost nn.Module running at the time ("blocks.0.attn.qkv")
    produced_by: str       # grad_fn of the saved tensor: the op that made it ("input" for leaves)
    kind: str              # "activation", "duplicate" (storage already counted) or "parameter"


class _OpNameMode(TorchFunctionMode):
    """Remembers which top-level torch function is running (to name what saves a tensor)."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func)).strip("_") or str(func)
        self.stack.append(name)
        try:
            return func(*args, **(kwargs or {}))
        finally:
            self.stack.pop()


class SavedTensorMeter:
    """Context manager recording every tensor saved for backward inside it (bytes, deduplicated).

    Usage::

        with SavedTensorMeter(model) as meter:
            logits, loss = model(idx, targets)
        meter.total_bytes, meter.table(), meter.by("op")

    Counting rules:
    - A storage is counted once: q, k and v are views of one matmul output, and one tensor is
      often saved by two ops; later sightings are kept as kind="duplicate" with nbytes=0.
      (Deduplication is by `untyped_storage().data_ptr()` among storages still alive.)
    - Parameters are not activations: nn.Parameters, leaves that require grad and views of
      them (a Linear saves `weight.T`) are recorded as kind="parameter" and not counted;
      they are already in the parameter memory. Inputs such as token ids ARE counted.
    - A view keeps its whole storage alive, so the storage's bytes are counted.
    - `total_bytes` sums every distinct storage saved while the meter was active;
      `peak_live_bytes` is the most of them alive at once (smaller if a graph was freed
      inside the block, e.g. a forward AND backward).
    """

    def __init__(self, model: nn.Module | None = None):
        self.model = model
        self.records: list[SavedTensorRecord] = []
        self.total_bytes = 0
        self.live_bytes = 0
        self.peak_live_bytes = 0
        self._live: dict[int, int] = {}  # storage data_ptr -> bytes, for storages still alive
        self._names: dict[int, str] = {}
        self._modules: list[str] = []
        self._handles: list[Any] = []
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ops = _OpNameMode()

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        op = self._ops.stack[-1] if self._ops.stack else "?"
        module = self._modules[-1] if self._modules else ""
        produced_by = t.grad_fn.name() if t.grad_fn is not None else "input"
        storage = t.untyped_storage()
        ptr, size = storage.data_ptr(), storage.nbytes()
        if _is_parameter(t):
            kind, counted = "parameter", 0
        elif ptr in self._live or size == 0:
            kind, counted = "duplicate", 0
        else:
            kind, counted = "activation", size
            self._live[ptr] = size
            self.total_bytes += size
            self.live_bytes += size
            self.peak_live_bytes = max(self.peak_live_bytes, self.live_bytes)
            weakref.finalize(storage, self._freed, ptr, size)
        self.records.append(SavedTensorRecord(tuple(t.shape), str(t.dtype).removeprefix("torch."),
                                              counted, size, op, module, produced_by, kind))
        # Hand autograd a detached alias (same storage, no grad_fn), not `t` itself: when an op saves
        # its own output (relu, attention, log_softmax), returning `t` would make a reference cycle
        # output -> grad_fn -> saved output that Python's gc cannot see, so a forward that is never
        # run backward would keep all its activations alive. (Double backward is not supported here.)
        return t.detach()

    def _freed(self, ptr: int, size: int) -> None:
        if self._live.pop(ptr, None) is not None:
            self.live_bytes -= size

    def __enter__(self) -> "SavedTensorMeter":
        if self.model is not None:
            self._names = {id(m): (name or type(m).__name__) for name, m in self.model.named_modules()}

        def pre(module, args):
            self._modules.append(self._names.get(id(module), type(module).__name__))

        def post(module, args, output):
            if self._modules:
                self._modules.pop()

        self._handles = [nn.modules.module.register_module_forward_pre_hook(pre),
                         nn.modules.module.register_module_forward_hook(post, always_call=True)]
        self._ops.__enter__()
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        self._ops.__exit__(*exc)
        for h in self._handles:
            h.remove()
        self._handles, self._modules = [], []

    def table(self):
        """Every saved tensor as a pandas DataFrame (one row per save; bytes in `nbytes`)."""
        import pandas as pd
        cols = list(SavedTensorRecord.__dataclass_fields__)
        return pd.DataFrame([asdict(r) for r in self.records], columns=cols)

    def by(self, key: str = "op"):
        """Bytes and counts grouped by a record field ("op", "module", "shape", ...), biggest first."""
        df = self.table()
        df = df[df["kind"] != "parameter"].copy()
        df[key] = df[key].astype(str)
        out = df.groupby(key).agg(saves=("nbytes", "size"), bytes=("nbytes", "sum"))
        out["MiB"] = out["bytes"] / MiB
        out["share"] = out["bytes"] / max(1, self.total_bytes)
        return out.sort_values("bytes", ascending=False)


def saved_tensor_bytes(fn: Callable[[], Any], model: nn.Module | None = None) -> dict[str, Any]:
    """Run `fn()` under a SavedTensorMeter; bytes saved for backward (see SavedTensorMeter)."""
    with SavedTensorMeter(model) as meter:
        result = fn()
    by_op: dict[str, int] = defaultdict(int)
    by_shape: dict[tuple[int, ...], int] = defaultdict(int)
    for r in meter.records:
        if r.kind != "parameter":
            by_op[r.op] += r.nbytes
            by_shape[r.shape] += r.nbytes
    return {"total_bytes": meter.total_bytes,
            "n_saved": sum(r.kind != "parameter" for r in meter.records),
            "n_storages": sum(r.kind == "activation" for r in meter.records),
            "by_op": dict(by_op), "by_shape": dict(by_shape),
            "table": meter.table(), "meter": meter, "result": result}


@dataclass
class TensorEvent:
    """One allocation: `size_bytes` bytes live during op steps [born, died); died=None = still alive."""
    id: int
    size_bytes: int
    shape: tuple[int, ...]
    dtype: str
    op: str
    born: int
    died: int | None = None

    @property
    def nbytes(self) -> int:
        """Same as size_bytes (bytes)."""
        return self.size_bytes


class AllocationTracer(TorchDispatchMode):
    """Records every new tensor storage an ATen op produces, with the op step it was born and freed at.

    Steps count ATen ops seen inside the `with` block: op number k runs at step k. A tensor
    made by op k has born=k; when its storage is freed, died = the number of ops started so
    far, so it was live for the steps [born, died). Views and in-place results share an
    existing storage and are not new allocations. Tensors still alive when the block exits keep
    died=None (they live to the end of the trace). Allocations inside a kernel that never
    become tensors (scratch space) are invisible here.

    The records (`events`, alias `tensors`) are what an arena planner needs: sizes and lifetimes.
    """

    def __init__(self):
        super().__init__()
        self.events: list[TensorEvent] = []
        self.ops: list[str] = []
        self._step = 0
        self._live: dict[int, TensorEvent] = {}       # storage data_ptr -> its event
        self._finalizers: dict[int, weakref.finalize] = {}

    @property
    def tensors(self) -> list[TensorEvent]:
        """The allocation records (same list as `events`)."""
        return self.events

    @property
    def n_steps(self) -> int:
        """Number of ATen ops traced so far (steps)."""
        return self._step

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        step = self._step
        self._step += 1
        self.ops.append(str(func))
        out = func(*args, **(kwargs or {}))
        inputs = {_storage_ptr(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            ptr, size = storage.data_ptr(), storage.nbytes()
            if size == 0 or ptr in inputs or ptr in self._live:
                continue   # a view, an in-place result or an empty tensor: nothing new allocated
            event = TensorEvent(len(self.events), size, tuple(t.shape), str(t.dtype).removeprefix("torch."),
                                str(func), born=step)
            self.events.append(event)
            self._live[ptr] = event
            self._finalizers[event.id] = weakref.finalize(storage, self._freed, ptr, event)
        return out

    def _freed(self, ptr: int, event: TensorEvent) -> None:
        event.died = self._step
        if self._live.get(ptr) is event:
            del self._live[ptr]
        self._finalizers.pop(event.id, None)

    def __exit__(self, *exc):
        result = super().__exit__(*exc)
        for fin in self._finalizers.values():   # freezing the trace: later frees are not recorded
            fin.detach()
        self._finalizers.clear()
        self._live.clear()
        return result

    def live_bytes_timeline(self) -> list[int]:
        """Bytes held by traced tensors during each op step (index = step)."""
        delta = [0] * (self._step + 1)
        for e in self.events:
            delta[e.born] += e.size_bytes
            delta[self._step if e.died is None else e.died] -= e.size_bytes
        live, timeline = 0, []
        for k in range(self._step):
            live += delta[k]
            timeline.append(live)
        return timeline

    def peak_live_bytes(self) -> int:
        """Most bytes held at once by tensors allocated inside the trace (bytes)."""
        return max(self.live_bytes_timeline(), default=0)


def _storage_ptr(t: torch.Tensor) -> int:
    """data_ptr of a tensor's storage, or -1 where there is none (meta, sparse...)."""
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return -1


# ---------------------------------------------------------------------------------------------
# Formula next to measurement
# ---------------------------------------------------------------------------------------------

def _make_optimizer(name: str, params: list[nn.Parameter]) -> torch.optim.Optimizer | None:
    """The torch.optim optimizer a name in OPTIMIZERS stands for (None for adam8bit: needs bitsandbytes)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-3)
    if name == "momentum":
        return torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(params, lr=1e-3)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-3)
    return None


def _ratio(measured: float, formula: float) -> float:
    """measured / formula (1.0 when both are 0, NaN when either is unknown)."""
    if measured != measured or formula != formula:  # NaN
        return math.nan
    if formula == 0:
        return 1.0 if measured == 0 else math.inf
    return measured / formula


def memory_report(model: nn.Module, batch_size: int, seq_len: int | None = None,
                  optimizer: str = "adamw", seed: int = 0):
    """Formula vs measured bytes for params, grads, optimizer state, activations (and a GPT's KV cache).

    Works on a deep copy of `model` (and a forked RNG), so the caller's weights, grads and
    random state are untouched. Measured: sum of p.nbytes; grads after a real backward; the real optimizer's
    state after one step; saved-tensor bytes of a forward + loss (`SavedTensorMeter`);
    `KVCache(config, batch_size).nbytes` at block_size tokens. Returns a pandas DataFrame
    indexed by row name with columns formula_bytes, measured_bytes, ratio, how_measured;
    `df.attrs` carries the facts `explain_report` uses.
    """
    import pandas as pd

    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r} is not known; allowed: {sorted(OPTIMIZERS)}")
    m = copy.deepcopy(model)
    m.train()
    config = m.config
    seq_len = seq_len or config.block_size
    params = list(m.parameters())             # distinct tensors: a tied weight appears once
    dtype = params[0].dtype
    is_gpt = isinstance(m, GPT)
    n_params = gpt_param_count(config) if is_gpt else sum(p.numel() for p in params)
    state = training_state_bytes(n_params, dtype, optimizer)

    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=gen)
    targets = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=gen)
    with torch.random.fork_rng(devices=[]):    # dropout draws random masks: leave the caller's RNG alone
        with SavedTensorMeter(m) as meter:
            _, loss = m(idx, targets)
        loss.backward()
    opt = _make_optimizer(optimizer, params)
    if opt is not None:
        opt.step()
        # every tensor the optimizer keeps per parameter (AdamW: exp_avg, exp_avg_sq and a 0-d `step`)
        state_measured = sum(v.nbytes for s in opt.state.values() for v in s.values() if torch.is_tensor(v))
    else:
        state_measured = math.nan

    rows = {
        "params": (state["params"], sum(p.nbytes for p in params),
                   "sum of p.nbytes over model.parameters()"),
        "grads": (state["grads"], sum(p.grad.nbytes for p in params if p.grad is not None),
                  "sum of p.grad.nbytes after loss.backward()"),
        "optimizer state": (state["optimizer_state"], state_measured,
                            f"sum of tensor nbytes in torch.optim state after one {optimizer} step"
                            if opt is not None else f"not measured: {optimizer} needs bitsandbytes"),
        "activations": (gpt_activation_bytes(config, batch_size, seq_len, dtype)["total"] if is_gpt else math.nan,
                        meter.total_bytes, "SavedTensorMeter over forward + cross-entropy loss"),
    }
    if is_gpt:
        rows["kv cache"] = (kv_cache_bytes(config.n_layer, config.n_kv_head, config.head_dim,
                                           config.block_size, batch_size, dtype),
                            KVCache(config, batch_size, dtype=dtype).nbytes,
                            f"KVCache(config, batch_size={batch_size}).nbytes at block_size={config.block_size}")
    df = pd.DataFrame([(name, f, mm, _ratio(mm, f), how) for name, (f, mm, how) in rows.items()],
                      columns=["row", "formula_bytes", "measured_bytes", "ratio", "how_measured"]).set_index("row")
    df.attrs.update({
        "model": type(m).__name__, "optimizer": optimizer, "dtype": str(dtype).removeprefix("torch."),
        "n_params": n_params, "n_param_tensors": len(params),
        "tied": bool(getattr(config, "tie_weights", False)),
        "tied_elements": config.vocab_size * config.n_embd if getattr(config, "tie_weights", False) else 0,
        "buffer_bytes": sum(b.nbytes for b in m.buffers()),
        "dropout": float(getattr(config, "dropout", 0.0)),
        "batch_size": batch_size, "seq_len": seq_len,
    })
    return df


def explain_report(df) -> str:
    """Plain-language notes on a `memory_report` table: why each row's ratio is (or is not) 1."""
    a = df.attrs
    lines: list[str] = []
    for name, row in df.iterrows():
        f, mm, r = row["formula_bytes"], row["measured_bytes"], row["ratio"]
        if r != r:  # NaN
            if f != f:
                lines.append(f"- {name}: no closed formula for {a.get('model', 'this model')} here; "
                             f"measured {mm:,.0f} bytes.")
            else:
                lines.append(f"- {name}: formula {f:,.0f} bytes; {row['how_measured']}.")
            continue
        if abs(r - 1) < 1e-12:
            continue
        diff = mm - f
        if name == "optimizer state" and a.get("optimizer") in ("adam", "adamw"):
            n_t = a.get("n_param_tensors", 0)
            lines.append(
                f"- {name}: measured is {diff:,.0f} bytes more than 2 moments × params. torch's Adam(W) also "
                f"keeps a `step` counter per parameter *tensor* as a 0-d float32 tensor: {n_t} tensors "
                f"× 4 bytes = {4 * n_t:,} bytes. The formula counts per-parameter buffers only (ratio {r:.6f}).")
        elif name == "activations":
            lines.append(
                f"- {name}: measured {mm:,.0f} bytes vs formula {f:,.0f} bytes (ratio {r:.4f}). The formula lists "
                "the tensors this GPT saves on CPU (see gpt_activation_bytes terms); it leaves out autocast, "
                "other attention kernels (CUDA flash/efficient), and anything a changed model.py saves.")
        elif name in ("params", "grads") and a.get("tied"):
            lines.append(f"- {name}: differs by {diff:,.0f} bytes. A tied weight is one tensor: it must be "
                         "counted once on both sides.")
        else:
            lines.append(f"- {name}: measured {mm:,.0f} bytes vs formula {f:,.0f} bytes (ratio {r:.6f}); "
                         f"check dtypes ({a.get('dtype')}) and sizes.")
    if not lines:
        lines.append("- every row matches its formula exactly (ratio 1).")
    notes = []
    if a.get("tied"):
        notes.append(f"The token embedding and lm_head share one matrix ({a['tied_elements']:,} numbers): "
                     "it is counted once in params, grads and optimizer state, and on both sides.")
    if a.get("buffer_bytes"):
        notes.append(f"Buffers ({a['buffer_bytes']:,} bytes, e.g. the sinusoidal position table) use memory "
                     "but are not parameters: no gradient, no optimizer state, not in the params row.")
    if "activations" in df.index:
        notes.append("Activations are what autograd keeps until backward; the logits are not among them "
                     "(cross_entropy saves the log-probabilities instead), and temporaries freed during "
                     "the forward count toward the peak (AllocationTracer), not here.")
    return "\n".join(lines + [""] + notes if notes else lines)
