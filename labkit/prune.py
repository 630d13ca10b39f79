"""Pruning: remove weights (or whole heads and channels) from a trained GPT and measure what it costs.

    layers = prunable_layers(model)                          # {"blocks.0.attn.qkv": Linear, ...}
    masks = layer_masks(model, 0.5, method="wanda", calibration=calibration_batches(corpus, 32, 64))
    pruned = pruned_copy(model, masks)                       # the same model with half of each matrix zeroed
    pruned, result = fine_tune(pruned, masks, steps=200)     # train on; pruned weights stay exactly zero

Three ideas, from the cheapest to the one that really shrinks the model:

1. **Unstructured**: a boolean mask per weight matrix (True = kept). Magnitude pruning keeps the
   largest |w| (per matrix, or over all matrices at once: "global"). Wanda ("A Simple and Effective
   Pruning Approach for Large Language Models", Sun et al. 2023) scores each weight by |W_ij| · ‖x_j‖₂,
   the size of the input feature it multiplies over some calibration text, and compares weights within
   each output row. A random mask is the baseline both must beat. The matrix keeps its shape: zeros
   save memory only in a sparse storage format (labkit.sparse).
2. **N:M** (2:4): n kept out of every m consecutive weights of a row, the pattern sparse tensor cores run.
3. **Structured**: whole attention heads or MLP hidden channels go, and `prune_heads` /
   `prune_mlp_channels` return a genuinely smaller GPT (fewer heads, a narrower MLP).

Then recovery and measurement: `fine_tune` trains on with the masks re-applied after every optimizer
step, `iterative_prune` reaches a sparsity in rounds (Zhu & Gupta's cubic schedule), `one_shot_sweep`
scores every method at every sparsity, `sensitivity_scan` prunes one layer at a time, and
`compare_forward_time` times a smaller model against the original, interleaved, on one thread.

Only the matrices inside the Transformer blocks are pruned, not the embeddings or the output head
(Wanda and SparseGPT make the same choice). Masks from torch.nn.utils.prune are the reference the
tests compare with: magnitude_mask = l1_unstructured, scope="global" = global_unstructured,
row_mask = ln_structured(n=1, dim=0).

Ties: which of several equal |w| go is decided exactly as torch.nn.utils.prune decides it, by
torch.topk over the flattened scores (so the masks are identical, tie for tie). PyTorch does not
promise an order among equal values; on this CPU an all-equal tensor loses its *last* entries first.
The count never depends on ties: exactly round(sparsity · numel) weights go (Python's round, half to even).
"""
from __future__ import annotations

import copy
import math
import numbers
import statistics
import time
from dataclasses import asdict
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from labkit.model import GPT, GPTConfig

METHODS = ("magnitude", "wanda", "random")
SCOPES = ("layer", "row", "global")
SCHEDULES = ("cubic", "linear")

__all__ = [
    "METHODS", "SCOPES", "SCHEDULES", "prunable_layers", "magnitude_mask", "row_mask", "nm_mask", "random_mask",
    "check_calibration", "calibration_batches", "input_norms", "wanda_scores", "layer_masks", "nm_layer_masks",
    "one_shot_sweep", "apply_masks", "pruned_copy", "keep_masks", "sparsity", "head_importance",
    "channel_importance", "remove_heads", "remove_mlp_channels", "least_important_heads", "prune_heads",
    "prune_mlp_channels", "compare_forward_time", "fine_tune", "sparsity_schedule", "iterative_prune",
    "sensitivity_scan",
]


# ---------------------------------------------------------------------------------------------
# Checking what callers pass


def _check_sparsity(value, name: str = "sparsity") -> float:
    """`value` as a float if it is a fraction in [0, 1), else ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a number in [0, 1) (the fraction removed), got {value!r}")
    return float(value)


def _check_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_choice(value, name: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name}={value!r}; allowed: {allowed}")
    return value


def _check_gpt(model) -> GPT:
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a labkit.model.GPT (e.g. labkit.zoo.load('baby-gpt')[0]), "
                        f"got {type(model).__name__}")
    return model


def _check_weight(weight, name: str = "weight", dims: int | None = None) -> Tensor:
    if not isinstance(weight, Tensor) or not weight.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got "
                        f"{weight.dtype if isinstance(weight, Tensor) else type(weight).__name__}")
    if dims is not None and weight.dim() != dims:
        raise ValueError(f"{name} must be a {dims}-D tensor, got shape {tuple(weight.shape)}")
    if not torch.isfinite(weight).all():
        raise ValueError(f"{name} holds NaN or infinite values: no magnitude order exists")
    return weight


def _check_eval_set(eval_set, model: GPT):
    from labkit.evaluate import EvalSet

    if not isinstance(eval_set, EvalSet):
        raise TypeError(f"eval_set must be a labkit.evaluate.EvalSet (e.g. evaluation_set(corpus.val, window=64, "
                        f"every=16)), got {type(eval_set).__name__}")
    if eval_set.window > model.block_size:
        raise ValueError(f"eval_set.window={eval_set.window} is longer than the model's block_size={model.block_size}")
    return eval_set


def check_calibration(model: GPT, calibration) -> Tensor:
    """`calibration` if it is a (n_sequences, seq_len) integer tensor of token ids the model can read."""
    if calibration is None:
        raise ValueError("calibration is None: this method needs calibration batches, e.g. "
                         "calibration_batches(corpus, n_sequences=32, seq_len=64)")
    if not isinstance(calibration, Tensor):
        raise TypeError(f"calibration must be a torch.Tensor of token ids, got {type(calibration).__name__}")
    if calibration.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"calibration must hold integer token ids (torch.int64), got dtype {calibration.dtype}")
    if calibration.dim() != 2 or calibration.numel() == 0:
        raise ValueError(f"calibration must have shape (n_sequences, seq_len) with both >= 1, "
                         f"got shape {tuple(calibration.shape)}")
    if calibration.size(1) > model.block_size:
        raise ValueError(f"calibration sequences have {calibration.size(1)} tokens; the model reads at most "
                         f"block_size={model.block_size}")
    lo, hi = int(calibration.min()), int(calibration.max())
    if lo < 0 or hi >= model.config.vocab_size:
        raise ValueError(f"calibration holds token ids in [{lo}, {hi}]; allowed: 0 .. vocab_size-1 = "
                         f"{model.config.vocab_size - 1}")
    return calibration.long()


# ---------------------------------------------------------------------------------------------
# 1. Masks from the weights alone: magnitude (per matrix or per row), random, N:M


def prunable_layers(model: GPT) -> dict[str, nn.Linear]:
    """Every weight matrix inside the Transformer blocks, by name ("blocks.0.attn.qkv", ...), in depth order."""
    _check_gpt(model)
    return {name: module for name, module in model.named_modules()
            if name.startswith("blocks.") and isinstance(module, nn.Linear)}


def _remove_smallest(scores: Tensor, n_remove: int) -> Tensor:
    """Mask (True = kept) of scores' shape without the n_remove smallest entries (torch.topk's tie order)."""
    mask = torch.ones_like(scores, dtype=torch.bool)
    if n_remove > 0:
        # the same call as torch.nn.utils.prune.L1Unstructured, so ties fall the same way
        smallest = torch.topk(scores.reshape(-1), k=n_remove, largest=False).indices
        mask.view(-1)[smallest] = False
    return mask


def magnitude_mask(weight: Tensor, sparsity: float) -> Tensor:
    """Bool mask (True = kept) removing the round(sparsity · numel) entries of smallest |w|."""
    _check_weight(weight)
    sparsity = _check_sparsity(sparsity)
    return _remove_smallest(weight.detach().abs(), round(sparsity * weight.numel()))


def row_mask(weight: Tensor, sparsity: float) -> Tensor:
    """Bool mask of weight's shape removing whole rows: the round(sparsity · rows) rows of smallest L1 norm."""
    _check_weight(weight, dims=2)
    sparsity = _check_sparsity(sparsity)
    n_rows = weight.size(0)
    row_norms = torch.linalg.vector_norm(weight.detach(), ord=1, dim=1)  # L1 norm, as ln_structured(n=1)
    keep = torch.topk(row_norms, k=n_rows - round(sparsity * n_rows), largest=True).indices
    mask = torch.zeros_like(weight, dtype=torch.bool)
    mask[keep] = True
    return mask


def random_mask(shape: tuple[int, ...] | torch.Size, sparsity: float, generator: torch.Generator) -> Tensor:
    """Bool mask of `shape` removing exactly round(sparsity · numel) entries chosen uniformly at random."""
    sparsity = _check_sparsity(sparsity)
    numel = math.prod(shape)
    mask = torch.ones(numel, dtype=torch.bool)
    mask[torch.randperm(numel, generator=generator)[:round(sparsity * numel)]] = False
    return mask.view(*shape)


def nm_mask(weight: Tensor, n: int = 2, m: int = 4, scores: Tensor | None = None) -> Tensor:
    """Bool mask keeping the n largest |w| (or `scores`) of every m consecutive inputs in each row (N:M sparsity)."""
    _check_weight(weight, dims=2)
    m = _check_int(m, "m")
    n = _check_int(n, "n", minimum=0)
    if n > m:
        raise ValueError(f"n={n} must be <= m={m} (n weights are kept out of every m)")
    if weight.size(1) % m:
        raise ValueError(f"m={m} must divide the row length (in_features={weight.size(1)}) of the weight of shape "
                         f"{tuple(weight.shape)}; allowed m: divisors of {weight.size(1)}")
    if scores is None:
        scores = weight.detach().abs()
    elif scores.shape != weight.shape:
        raise ValueError(f"scores must have the weight's shape {tuple(weight.shape)}, got {tuple(scores.shape)}")
    groups = scores.reshape(weight.size(0), weight.size(1) // m, m)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, torch.topk(groups, k=n, dim=2, largest=True).indices, True)
    return mask.view_as(weight)


# ---------------------------------------------------------------------------------------------
# 2. Calibration: what the layers' inputs look like on real text (Wanda and the structured scores),
#    masks for a whole model, applying them


def calibration_batches(tokens, n_sequences: int, seq_len: int, seed: int = 0) -> Tensor:
    """(n_sequences, seq_len) int64 windows at random places of the TRAINING tokens (a Corpus uses .train)."""
    n_sequences, seq_len = _check_int(n_sequences, "n_sequences"), _check_int(seq_len, "seq_len")
    seed = _check_int(seed, "seed", minimum=0)
    if hasattr(tokens, "train") and hasattr(tokens, "val"):  # a labkit Corpus: never calibrate on validation text
        tokens = tokens.train
    if isinstance(tokens, Tensor):
        is_ids = not (tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool)
        dims, dtype = tokens.dim(), tokens.dtype
    else:  # a numpy array or memmap (np.asarray does not copy a memmap)
        tokens = np.asarray(tokens)
        is_ids, dims, dtype = np.issubdtype(tokens.dtype, np.integer), tokens.ndim, tokens.dtype
    if dims != 1 or not is_ids:
        raise ValueError(f"tokens must be a 1-D sequence of integer token ids (the training split), "
                         f"got dtype {dtype}, shape {tuple(tokens.shape)}")
    if len(tokens) < seq_len:
        raise ValueError(f"seq_len={seq_len} is longer than the {len(tokens)} tokens given")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(tokens) - seq_len + 1, (n_sequences,), generator=g).tolist()
    if isinstance(tokens, Tensor):
        return torch.stack([tokens[s:s + seq_len] for s in starts]).long()
    # slicing a memmap reads only these windows, never the whole file
    return torch.from_numpy(np.stack([tokens[s:s + seq_len] for s in starts]).astype(np.int64))


@torch.no_grad()
def _run_with_input_hooks(model: GPT, calibration: Tensor, modules: dict[str, nn.Module],
                          seen: Callable[[str, Tensor], None], batch_sequences: int = 16) -> None:
    """Run the calibration text through the model; call seen(name, input) for every module's input."""
    handles = [module.register_forward_pre_hook(lambda mod, args, name=name: seen(name, args[0].detach()))
               for name, module in modules.items()]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, calibration.size(0), batch_sequences):
            model(calibration[start:start + batch_sequences])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def input_norms(model: GPT, calibration: Tensor) -> dict[str, Tensor]:
    """‖x_j‖₂ of every input feature j of every prunable layer, over all calibration tokens (float32)."""
    _check_gpt(model)
    calibration = check_calibration(model, calibration)
    layers = prunable_layers(model)
    sums = {name: torch.zeros(layer.in_features, dtype=torch.float64) for name, layer in layers.items()}

    def seen(name: str, x: Tensor) -> None:
        sums[name] += x.reshape(-1, x.size(-1)).double().square().sum(dim=0)

    _run_with_input_hooks(model, calibration, layers, seen)
    return {name: s.sqrt().float() for name, s in sums.items()}


def wanda_scores(weight: Tensor, norms: Tensor) -> Tensor:
    """|W_ij| · ‖x_j‖₂: how much weight ij moves its output on the calibration text."""
    if norms.shape != (weight.size(1),):
        raise ValueError(f"norms must have shape (in_features,) = ({weight.size(1)},), got {tuple(norms.shape)}")
    return weight.detach().abs() * norms[None, :]


def layer_masks(model: GPT, sparsity: float, method: str = "magnitude", scope: str = "layer",
                calibration: Tensor | None = None, seed: int = 0,
                norms: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """A bool mask (True = kept) for every prunable layer removing `sparsity` of its weights.

    scope="layer": each matrix loses round(sparsity · numel) weights; Wanda compares within each output
    row instead (the paper's choice), so each row loses round(sparsity · in_features).
    scope="row": every method compares within each output row (so magnitude "row" vs Wanda "layer"
    separates what the input norms add from what the per-row comparison adds).
    scope="global": one ranking over all prunable weights together (torch's global_unstructured);
    matrices then end at different sparsities. Wanda needs `calibration` (or `norms`, the result of
    input_norms(model, calibration), so a sweep runs the calibration text once); random uses `seed`.
    """
    _check_gpt(model)
    sparsity = _check_sparsity(sparsity)
    _check_choice(method, "method", METHODS)
    _check_choice(scope, "scope", SCOPES)
    layers = prunable_layers(model)
    if method == "random":
        g = torch.Generator().manual_seed(_check_int(seed, "seed", minimum=0))
        if scope == "layer":
            return {name: random_mask(layer.weight.shape, sparsity, g) for name, layer in layers.items()}
        scores = {name: torch.rand(layer.weight.shape, generator=g) for name, layer in layers.items()}
    elif method == "wanda":
        if norms is None:
            norms = input_norms(model, calibration)
        elif not isinstance(norms, dict) or set(norms) != set(layers):
            raise ValueError("norms must be input_norms(model, calibration): one tensor per prunable layer")
        scores = {name: wanda_scores(layer.weight, norms[name]) for name, layer in layers.items()}
        if scope == "layer":
            scope = "row"  # per output row: every output keeps the same number of its inputs
    else:
        scores = {name: layer.weight.detach().abs() for name, layer in layers.items()}
        if scope == "layer":
            return {name: _remove_smallest(s, round(sparsity * s.numel())) for name, s in scores.items()}
    if scope == "row":
        return {name: _remove_smallest_per_row(s, round(sparsity * s.size(1))) for name, s in scores.items()}
    # global: rank every score of every layer together, as torch's global_unstructured does
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    keep = _remove_smallest(flat, round(sparsity * flat.numel()))
    masks, start = {}, 0
    for name, s in scores.items():
        masks[name] = keep[start:start + s.numel()].view_as(s)
        start += s.numel()
    return masks


def _remove_smallest_per_row(scores: Tensor, n_remove: int) -> Tensor:
    mask = torch.ones_like(scores, dtype=torch.bool)
    if n_remove > 0:
        mask.scatter_(1, torch.topk(scores, k=n_remove, dim=1, largest=False).indices, False)
    return mask


def one_shot_sweep(model: GPT, eval_set, sparsities, methods=METHODS, scopes=("layer", "global"),
                   calibration: Tensor | None = None, seed: int = 0,
                   measure: Callable[[GPT], dict] | None = None, progress: bool = True) -> list[dict]:
    """Prune a copy of `model` once for every (method, scope, sparsity) and score it on `eval_set`.

    Rows: method, scope, sparsity (asked), measured_sparsity (zeros / prunable weights), loss and loss_se
    (nats/char, labkit.evaluate.score), perplexity (e^loss), and increase / increase_se: loss minus the
    dense model's on the same windows, with the (much smaller) standard error of that paired difference.
    `measure(pruned_model)` may add columns (e.g. the bytes of each storage format). Wanda's input norms
    are computed once, on the dense model.
    """
    from tqdm.auto import tqdm

    from labkit.evaluate import paired_difference, score

    _check_gpt(model)
    _check_eval_set(eval_set, model)
    sparsities = [_check_sparsity(s, "sparsities") for s in sparsities]
    methods = [_check_choice(m, "methods", METHODS) for m in methods]
    scopes = [_check_choice(s, "scopes", SCOPES) for s in scopes]
    if not (sparsities and methods and scopes):
        raise ValueError("sparsities, methods and scopes must each name at least one value")
    norms = input_norms(model, calibration) if "wanda" in methods else None
    dense = score(model, eval_set)
    rows = []
    jobs = [(m, sc, s) for m in methods for sc in scopes for s in sparsities]
    for method, scope, s in tqdm(jobs, desc="one-shot pruning", disable=not progress, mininterval=1.0):
        pruned = pruned_copy(model, layer_masks(model, s, method, scope, seed=seed, norms=norms))
        result = score(pruned, eval_set)
        increase = paired_difference(result, dense)
        row = {"method": method, "scope": scope, "sparsity": s, "measured_sparsity": sparsity(pruned)["all"],
               "loss": result.loss, "loss_se": result.standard_error, "perplexity": math.exp(result.loss),
               "increase": increase["difference"], "increase_se": increase["standard_error"]}
        if measure is not None:
            row.update(measure(pruned))
        rows.append(row)
    return rows


def nm_layer_masks(model: GPT, n: int = 2, m: int = 4, method: str = "magnitude",
                   calibration: Tensor | None = None) -> dict[str, Tensor]:
    """An N:M mask for every prunable layer, scored by |w| ("magnitude") or |w|·‖x‖ ("wanda")."""
    _check_gpt(model)
    _check_choice(method, "method", ("magnitude", "wanda"))
    layers = prunable_layers(model)
    norms = input_norms(model, calibration) if method == "wanda" else None
    return {name: nm_mask(layer.weight, n, m, None if norms is None else wanda_scores(layer.weight, norms[name]))
            for name, layer in layers.items()}


def _check_masks(model: GPT, masks: dict[str, Tensor]) -> dict[str, nn.Linear]:
    layers = prunable_layers(model)
    if not isinstance(masks, dict):
        raise TypeError(f"masks must be a dict {{layer name: bool tensor}} (see layer_masks), "
                        f"got {type(masks).__name__}")
    for name, mask in masks.items():
        if name not in layers:
            raise ValueError(f"masks has a layer {name!r} the model does not have; allowed: {list(layers)}")
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"masks[{name!r}] must be a bool tensor (True = kept), got "
                            f"{mask.dtype if isinstance(mask, Tensor) else type(mask).__name__}")
        if mask.shape != layers[name].weight.shape:
            raise ValueError(f"masks[{name!r}] has shape {tuple(mask.shape)}; the layer's weight has "
                             f"{tuple(layers[name].weight.shape)}")
    return layers


@torch.no_grad()
def apply_masks(model: GPT, masks: dict[str, Tensor]) -> GPT:
    """Zero every weight whose mask entry is False, in place; returns the same model."""
    _check_gpt(model)
    layers = _check_masks(model, masks)
    for name, mask in masks.items():
        layers[name].weight.masked_fill_(~mask, 0.0)
    return model


def pruned_copy(model: GPT, masks: dict[str, Tensor]) -> GPT:
    """A deep copy of `model` with the masks applied (the original is untouched)."""
    _check_gpt(model)
    _check_masks(model, masks)
    return apply_masks(copy.deepcopy(model), masks)


def keep_masks(masks: dict[str, Tensor]) -> Callable[[GPT], None]:
    """A function for labkit.train.train(after_step=...) that re-zeroes the pruned weights after every step.

    The gradient of a zeroed weight is not zero, so AdamW moves it again; zeroing it after each step
    keeps the model exactly as sparse as the masks say.
    """
    if not isinstance(masks, dict):
        raise TypeError(f"masks must be a dict {{layer name: bool tensor}} (see layer_masks), "
                        f"got {type(masks).__name__}")

    def after_step(model: GPT) -> None:
        apply_masks(model, masks)

    return after_step


@torch.no_grad()
def sparsity(model: GPT) -> dict[str, float]:
    """Fraction of exactly-zero weights in each prunable layer, and over all of them ("all")."""
    zeros = total = 0
    out = {}
    for name, layer in prunable_layers(model).items():
        z = int((layer.weight == 0).sum())
        out[name] = z / layer.weight.numel()
        zeros, total = zeros + z, total + layer.weight.numel()
    out["all"] = zeros / total
    return out


# ---------------------------------------------------------------------------------------------
# 3. Structured pruning: remove whole heads and MLP channels, and build the smaller GPT


def _layer_inputs_sum(model: GPT, calibration: Tensor, modules: dict[str, nn.Module],
                      reduce: Callable[[str, Tensor], Tensor]) -> dict[str, Tensor]:
    """Sum over calibration batches of reduce(name, input) for each module (float64)."""
    totals: dict[str, Tensor] = {}

    def seen(name: str, x: Tensor) -> None:
        value = reduce(name, x).double()
        totals[name] = totals[name] + value if name in totals else value

    _run_with_input_hooks(model, calibration, modules, seen)
    return totals


def head_importance(model: GPT, calibration: Tensor) -> Tensor:
    """(n_layer, n_head) float32: ‖what each query head adds to the residual stream‖₂ over the calibration text.

    Head h of a layer adds y_h · W_hᵀ to the residual stream, where y_h (tokens, head_dim) is its
    attention output and W_h (n_embd, head_dim) its columns of attn.proj. The score is the L2 norm of
    that addition over every calibration token: a head whose output (or whose proj columns) is zero
    scores exactly 0, and removing it changes nothing.
    """
    _check_gpt(model)
    calibration = check_calibration(model, calibration)
    c = model.config
    projs = {str(i): block.attn.proj for i, block in enumerate(model.blocks)}

    def per_head_square_norm(name: str, y: Tensor) -> Tensor:
        w = projs[name].weight.detach().view(c.n_embd, c.n_head, c.head_dim)          # (C, nh, hd)
        y = y.reshape(-1, c.n_head, c.head_dim)                                        # (tokens, nh, hd)
        return torch.einsum("nhd,chd->nhc", y, w).square().sum(dim=(0, 2))            # (nh,)

    sums = _layer_inputs_sum(model, calibration, projs, per_head_square_norm)
    return torch.stack([sums[str(i)] for i in range(c.n_layer)]).sqrt().float()


def _mlp_out(block) -> nn.Linear:
    """The MLP matrix that reads the hidden channels: proj (GELU/ReLU²) or w_down (SwiGLU)."""
    return block.mlp.w_down if hasattr(block.mlp, "w_down") else block.mlp.proj


def channel_importance(model: GPT, calibration: Tensor) -> list[Tensor]:
    """Per layer, (mlp_hidden,) float32: ‖what each MLP hidden channel writes into the residual stream‖₂.

    Channel k adds a_k · W[:, k] (its activation times its column of proj / w_down), so the L2 norm
    of that addition over all calibration tokens is exactly ‖a_k‖₂ · ‖W[:, k]‖₂.
    """
    _check_gpt(model)
    calibration = check_calibration(model, calibration)
    outs = {str(i): _mlp_out(block) for i, block in enumerate(model.blocks)}
    sums = _layer_inputs_sum(model, calibration, outs,
                             lambda name, a: a.reshape(-1, a.size(-1)).double().square().sum(dim=0))
    return [(sums[str(i)].sqrt() * outs[str(i)].weight.detach().double().norm(dim=0)).float()
            for i in range(model.config.n_layer)]


def _check_removals(removals, n_layer: int, n_units: int, what: str, argument: str) -> list[list[int]]:
    """removals as a list of sorted, distinct index lists, one per layer, all of the same length."""
    if not isinstance(removals, (list, tuple)) or len(removals) != n_layer:
        raise ValueError(f"{argument} must be a list of {n_layer} lists (the {what} to remove in each layer), "
                         f"got {removals!r}")
    out = []
    for layer, units in enumerate(removals):
        units = [int(u) for u in units]
        bad = [u for u in units if not 0 <= u < n_units]
        if bad:
            raise ValueError(f"{argument}[{layer}] names {what} {bad} that do not exist; layer {layer} has "
                             f"{what} 0..{n_units - 1}")
        if len(set(units)) != len(units):
            raise ValueError(f"{argument}[{layer}] names a {what[:-1]} twice: {units}")
        out.append(sorted(units))
    counts = {len(u) for u in out}
    if len(counts) > 1:
        raise ValueError(f"{argument} must remove the same number of {what} from every layer (the config is "
                         f"uniform), got {[len(u) for u in out]}")
    if counts and counts.pop() >= n_units:
        raise ValueError(f"{argument} removes all {n_units} {what} of a layer; at least one must stay")
    return out


def _rows(indices: list[int], width: int, offset: int = 0) -> Tensor:
    """Row numbers of the `width`-row slices `indices` (e.g. heads) starting at `offset`."""
    return torch.tensor([offset + i * width + j for i in indices for j in range(width)], dtype=torch.long)


@torch.no_grad()
def _smaller_gpt(model: GPT, keep_heads: list[list[int]] | None = None,
                 keep_channels: list[list[int]] | None = None) -> GPT:
    """A new GPT from a smaller config holding only the kept query heads / MLP channels of `model`."""
    c = model.config
    hd, nh, nkv = c.head_dim, c.n_head, c.n_kv_head
    new_nh = len(keep_heads[0]) if keep_heads else nh
    mha = nkv == nh
    new_nkv = new_nh if mha else nkv  # GQA/MQA keep every key/value head (see prune_heads)
    new_hidden = len(keep_channels[0]) if keep_channels else c.mlp_hidden
    config = GPTConfig(**{**asdict(c), "n_head": new_nh, "n_kv_head": new_nkv, "head_dim": hd,
                          "mlp_hidden": new_hidden})
    state = dict(model.state_dict())
    for i in range(c.n_layer):
        p = f"blocks.{i}."
        if keep_heads:
            kept = keep_heads[i]
            kv = kept if mha else list(range(nkv))
            rows = torch.cat([_rows(kept, hd), _rows(kv, hd, nh * hd), _rows(kv, hd, (nh + nkv) * hd)])
            for name in ("attn.qkv.weight", "attn.qkv.bias"):
                if p + name in state:
                    state[p + name] = state[p + name][rows]
            state[p + "attn.proj.weight"] = state[p + "attn.proj.weight"][:, _rows(kept, hd)]
        if keep_channels:
            kept = torch.tensor(keep_channels[i], dtype=torch.long)
            into = ("mlp.w_gate", "mlp.w_up") if c.activation == "swiglu" else ("mlp.fc",)
            for name in into:
                for suffix in (".weight", ".bias"):
                    if p + name + suffix in state:
                        state[p + name + suffix] = state[p + name + suffix][kept]
            out = "mlp.w_down.weight" if c.activation == "swiglu" else "mlp.proj.weight"
            state[p + out] = state[p + out][:, kept]
    smaller = GPT(config)
    smaller.load_state_dict({k: v.clone() for k, v in state.items()})
    smaller.train(model.training)
    return smaller


def remove_heads(model: GPT, heads: list[list[int]]) -> GPT:
    """A smaller GPT without the query heads heads[layer] (the same number in every layer; see prune_heads)."""
    _check_gpt(model)
    c = model.config
    heads = _check_removals(heads, c.n_layer, c.n_head, "heads", "heads")
    groups = c.n_head // c.n_kv_head
    if groups > 1:  # GQA/MQA: every group of query heads sharing a key/value head must lose as many
        for layer, removed in enumerate(heads):
            per_group = [sum(h // groups == g for h in removed) for g in range(c.n_kv_head)]
            if len(set(per_group)) > 1:
                raise ValueError(f"heads[{layer}]={removed} removes {per_group} query heads from the {c.n_kv_head} "
                                 f"key/value groups (of {groups} heads each); allowed: the same number from every "
                                 "group, so each key/value head still serves equally many query heads")
    keep = [[h for h in range(c.n_head) if h not in removed] for removed in heads]
    return _smaller_gpt(model, keep_heads=keep)


def remove_mlp_channels(model: GPT, channels: list[list[int]]) -> GPT:
    """A smaller GPT without the MLP hidden channels channels[layer] (the same number in every layer)."""
    _check_gpt(model)
    c = model.config
    channels = _check_removals(channels, c.n_layer, c.mlp_hidden, "channels", "channels")
    keep = [sorted(set(range(c.mlp_hidden)) - set(removed)) for removed in channels]
    return _smaller_gpt(model, keep_channels=keep)


def least_important_heads(importance: Tensor, n_remove: int, n_kv_head: int) -> list[list[int]]:
    """Per layer, the n_remove query heads of lowest importance (GQA/MQA: n_remove / n_kv_head from each group)."""
    n_head = importance.size(1)
    n_remove = _check_int(n_remove, "n_remove", minimum=0)
    if n_remove >= n_head:
        raise ValueError(f"n_remove={n_remove} must be smaller than n_head={n_head} (at least one head must stay)")
    if n_kv_head == n_head:  # multi-head: each head has its own key/value, any head can go
        return [sorted(torch.topk(row, k=n_remove, largest=False).indices.tolist()) for row in importance]
    if n_remove % n_kv_head:
        raise ValueError(f"n_remove={n_remove} must be a multiple of n_kv_head={n_kv_head}: the same number of "
                         f"query heads leaves every key/value group; allowed: "
                         f"{list(range(0, n_head, n_kv_head))}")
    groups, per_group = n_head // n_kv_head, n_remove // n_kv_head
    out = []
    for row in importance:
        removed = []
        for g in range(n_kv_head):
            local = torch.topk(row[g * groups:(g + 1) * groups], k=per_group, largest=False).indices
            removed += (g * groups + local).tolist()
        out.append(sorted(removed))
    return out


def prune_heads(model: GPT, n_remove: int, calibration: Tensor) -> GPT:
    """A smaller GPT without the n_remove least important query heads of every layer (head_importance).

    Every layer loses the same number of heads, so the new config stays uniform (n_head - n_remove
    heads of the same head_dim; attn.proj becomes (n_head - n_remove)·head_dim -> n_embd).
    Multi-head attention: a removed head takes its key and value with it (the KV cache shrinks too).
    GQA/MQA (n_kv_head < n_head): a key/value head serves a whole group of query heads, so we remove
    the same number of *query* heads from every group and keep all key/value heads. The choice keeps
    each group's shared keys/values (useful to the heads that stay) and keeps n_head a multiple of
    n_kv_head; the price is that n_remove must be a multiple of n_kv_head and the KV cache does not shrink.
    (The other choice, removing whole groups, would shrink the cache but cost many heads at once.)
    """
    _check_gpt(model)
    importance = head_importance(model, calibration)
    heads = least_important_heads(importance, n_remove, model.config.n_kv_head)
    return remove_heads(model, heads)


def prune_mlp_channels(model: GPT, fraction: float, calibration: Tensor) -> GPT:
    """A smaller GPT whose MLPs lose the round(fraction · mlp_hidden) least important channels (channel_importance).

    GELU/ReLU² MLP: rows of fc and columns of proj go. SwiGLU: rows of w_gate and w_up, columns of w_down.
    """
    _check_gpt(model)
    fraction = _check_sparsity(fraction, "fraction")
    n_remove = round(fraction * model.config.mlp_hidden)
    if n_remove >= model.config.mlp_hidden:
        raise ValueError(f"fraction={fraction} removes all {model.config.mlp_hidden} MLP channels; "
                         "at least one must stay")
    importance = channel_importance(model, calibration)
    channels = [sorted(torch.topk(imp, k=n_remove, largest=False).indices.tolist()) if n_remove else []
                for imp in importance]
    return remove_mlp_channels(model, channels)


def _quartiles_ms(times_ms: list[float]) -> dict[str, float]:
    q1, _, q3 = statistics.quantiles(times_ms, n=4) if len(times_ms) > 1 else (times_ms[0],) * 3
    return {"median_ms": statistics.median(times_ms), "q1_ms": q1, "q3_ms": q3}


@torch.no_grad()
def compare_forward_time(a: nn.Module, b: nn.Module, x: Tensor, repeats: int = 20, warmup: int = 2,
                         threads: int = 1) -> dict:
    """Forward time (ms) of models a and b on the same input, interleaved (a, b, b, a, ...), with `threads` threads.

    Returns each model's median and quartiles and b's median / a's median. Interleaving means a burst
    of outside load hits both alike; the order alternates so neither always runs second (warm caches).
    """
    for name, value in (("a", a), ("b", b)):
        if not isinstance(value, nn.Module):
            raise TypeError(f"{name} must be a torch.nn.Module (a model), got {type(value).__name__}")
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor (the input both models read), got {type(x).__name__}")
    repeats, threads = _check_int(repeats, "repeats"), _check_int(threads, "threads")
    warmup = _check_int(warmup, "warmup", minimum=0)
    before = torch.get_num_threads()
    modes = (a.training, b.training)
    a.eval()
    b.eval()
    times = {"a": [], "b": []}
    try:
        torch.set_num_threads(threads)
        for r in range(warmup + repeats):
            order = (("a", a), ("b", b)) if r % 2 == 0 else (("b", b), ("a", a))
            for key, model in order:
                t0 = time.perf_counter()
                model(x)
                elapsed = 1000 * (time.perf_counter() - t0)
                if r >= warmup:
                    times[key].append(elapsed)
    finally:
        torch.set_num_threads(before)
        a.train(modes[0])
        b.train(modes[1])
    out = {"a": _quartiles_ms(times["a"]), "b": _quartiles_ms(times["b"]), "repeats": repeats, "threads": threads}
    out["b_over_a"] = out["b"]["median_ms"] / out["a"]["median_ms"]
    return out


# ---------------------------------------------------------------------------------------------
# 4. Keeping masks through fine-tuning; iterative pruning; per-layer sensitivity


def fine_tune(model: GPT, masks: dict[str, Tensor], steps: int, lr: float = 3e-4, seed: int = 0, corpus=None,
              progress: bool = True, warmup_iters: int | None = None, log=print, **settings) -> tuple[GPT, dict]:
    """Train `model` in place for `steps` AdamW steps of the baby preset, pruned weights re-zeroed after each.

    The one training loop (labkit.train.train) with after_step=keep_masks(masks): the weights the
    masks removed are exactly zero before and after every step. `corpus` defaults to Shakespeare;
    `settings` override other TrainConfig fields (batch_size, weight_decay, ...). Returns (model, result).
    """
    from labkit import data as data_mod
    from labkit.train import make_config, train

    _check_gpt(model)
    _check_masks(model, masks)
    steps = _check_int(steps, "steps")
    if warmup_iters is None:
        warmup_iters = min(20, steps // 10)
    settings.setdefault("block_size", min(64, model.block_size))
    cfg = make_config("gpt", "baby", max_iters=steps, lr=lr, min_lr=0.0, warmup_iters=warmup_iters,
                      eval_interval=0, seed=seed, progress=progress, **settings)
    if corpus is None:
        corpus = data_mod.load_corpus(cfg.corpus)
    apply_masks(model, masks)
    model, result = train(cfg, model=model, corpus=corpus, log=log, desc=f"fine-tune {steps} steps",
                          after_step=keep_masks(masks))
    model.eval()
    return model, result


def sparsity_schedule(target: float, rounds: int, schedule: str = "cubic") -> list[float]:
    """The sparsity after each of `rounds` pruning rounds, ending at `target`.

    "cubic": s_r = target · (1 - (1 - r/rounds)³), Zhu & Gupta's gradual schedule ("To prune, or not
    to prune: exploring the efficacy of pruning for model compression", 2017): prune fast while many
    weights are redundant, gently near the end. "linear": s_r = target · r/rounds.
    """
    target = _check_sparsity(target, "target")
    rounds = _check_int(rounds, "rounds")
    _check_choice(schedule, "schedule", SCHEDULES)
    if schedule == "cubic":
        return [target * (1 - (1 - r / rounds) ** 3) for r in range(1, rounds + 1)]
    return [target * r / rounds for r in range(1, rounds + 1)]


def iterative_prune(model: GPT, target: float, rounds: int, steps_per_round: int, method: str = "magnitude",
                    scope: str = "layer", calibration: Tensor | None = None, schedule: str = "cubic",
                    lr: float = 3e-4, seed: int = 0, corpus=None, eval_set=None,
                    progress: bool = True, log=print, **settings) -> tuple[GPT, dict[str, Tensor], list[dict]]:
    """Prune a copy of `model` to `target` in `rounds` rounds (sparsity_schedule), fine-tuning after each.

    The total is rounds · steps_per_round training steps: compare with a one-shot prune followed by
    fine_tune(steps=rounds · steps_per_round). A weight pruned in one round stays pruned in later ones.
    Round r trains with seed + r (fresh batches). With `eval_set`, each round's model is scored on it.
    `settings` go to every round's fine_tune (e.g. eval_iters=1 when nothing reads train()'s own scores).
    Each round is its own fine_tune: a fresh AdamW with its own warm-up and decay, not one schedule cut in pieces.
    Returns (pruned model, final masks, history: one dict per round).
    """
    from labkit.evaluate import score

    _check_gpt(model)
    steps_per_round = _check_int(steps_per_round, "steps_per_round")
    _check_choice(method, "method", METHODS)
    _check_choice(scope, "scope", SCOPES)
    targets = sparsity_schedule(target, rounds, schedule)
    if eval_set is not None:
        _check_eval_set(eval_set, model)
    if method == "wanda":
        calibration = check_calibration(model, calibration)
    pruned = copy.deepcopy(model)
    masks: dict[str, Tensor] | None = None
    history = []
    for r, s in enumerate(targets, start=1):
        new = layer_masks(pruned, s, method, scope, calibration, seed=seed + r)
        masks = new if masks is None else {name: new[name] & masks[name] for name in new}
        pruned, result = fine_tune(pruned, masks, steps_per_round, lr=lr, seed=seed + r, corpus=corpus,
                                   progress=progress, log=log, **settings)
        row = {"round": r, "target_sparsity": s, "sparsity": sparsity(pruned)["all"], "steps": r * steps_per_round,
               "val_loss_batches": result["val_loss"]}
        if eval_set is not None:
            scored = score(pruned, eval_set)
            row.update(loss=scored.loss, loss_se=scored.standard_error)
        history.append(row)
    return pruned, masks, history


@torch.no_grad()
def sensitivity_scan(model: GPT, eval_set, sparsities, method: str = "magnitude", calibration: Tensor | None = None,
                     layers: list[str] | None = None, seed: int = 0, progress: bool = True) -> list[dict]:
    """Prune ONE layer at a time to each sparsity and score the model: rows {layer, sparsity, loss, loss_se,
    increase, increase_se}.

    Losses are mean nats/char on `eval_set` (labkit.evaluate.score); increase is the loss minus the dense
    model's on the same windows, increase_se the standard error of that paired difference (rank layers
    by it, not by loss_se). The other layers stay dense, so a layer's row says how much that layer alone
    can lose. Wanda's input norms come from the dense model (exact: the layers before it are unchanged).
    """
    from tqdm.auto import tqdm

    from labkit.evaluate import paired_difference, score

    _check_gpt(model)
    _check_eval_set(eval_set, model)
    _check_choice(method, "method", METHODS)
    sparsities = [_check_sparsity(s, "sparsities") for s in sparsities]
    if not sparsities:
        raise ValueError("sparsities must name at least one sparsity in [0, 1)")
    all_layers = prunable_layers(model)
    if layers is None:
        layers = list(all_layers)
    unknown = [name for name in layers if name not in all_layers]
    if unknown:
        raise ValueError(f"layers {unknown} are not prunable layers of the model; allowed: {list(all_layers)}")
    norms = input_norms(model, calibration) if method == "wanda" else None
    work = copy.deepcopy(model)
    work_layers = prunable_layers(work)
    g = torch.Generator().manual_seed(_check_int(seed, "seed", minimum=0))
    dense = score(model, eval_set)
    rows = []
    jobs = [(name, s) for name in layers for s in sparsities]
    for name, s in tqdm(jobs, desc=f"sensitivity ({method})", disable=not progress, mininterval=1.0):
        weight = work_layers[name].weight
        original = weight.clone()
        if method == "magnitude":
            mask = magnitude_mask(original, s)
        elif method == "random":
            mask = random_mask(original.shape, s, g)
        else:
            mask = _remove_smallest_per_row(wanda_scores(original, norms[name]), round(s * original.size(1)))
        weight.masked_fill_(~mask, 0.0)
        result = score(work, eval_set)
        weight.copy_(original)
        increase = paired_difference(result, dense)
        rows.append({"layer": name, "sparsity": s, "loss": result.loss, "loss_se": result.standard_error,
                     "increase": increase["difference"], "increase_se": increase["standard_error"]})
    return rows
