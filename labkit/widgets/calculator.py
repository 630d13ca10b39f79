"""Lab 00/03: the memory calculator — bytes by category for training or serving a GPT of any shape."""
from __future__ import annotations

import numbers
import time
from typing import Any

from matplotlib.figure import Figure

from labkit.memory import (gpt_activation_bytes, gpt_param_count, kv_cache_bytes, megatron_activation_bytes,
                           training_state_bytes)
from labkit.model import ACTIVATIONS, POSITION_KINDS, GPTConfig
from labkit.widgets.core import GiB, Panel, binary_unit, human_bytes, human_count, quietly, render_into, wire_panel

# Model shapes for the calculator: every field of the real model that changes its memory. Each entry's
# keys are arguments of `memory_calculator_state`, so `memory_calculator_state(**CALCULATOR_PRESETS[name],
# batch_size=..., dtype=...)` works; `context` is the context the model was trained for.
# - LLaMA-2 ("Llama 2: Open Foundation and Fine-Tuned Chat Models", Touvron et al. 2023): SwiGLU MLP of
#   width 11008 (7B) / 28672 (70B), rotary positions, no biases, untied output head, vocabulary 32000,
#   70B with 8 KV heads (GQA). gpt_param_count gives exactly 6,738,415,616 and 68,976,648,192. (LLaMA
#   normalizes with RMSNorm, this block with a bias-free LayerNorm: the same C weights per norm.)
# - GPT-2 small (Radford et al. 2019): learned positions, biases, tied head: 124,439,808 parameters.
# - the baby: the zoo's baby-gpt (labkit.train PRESETS["baby"]): ReLU², untied head.
CALCULATOR_PRESETS: dict[str, dict] = {
    "baby (this course)": dict(n_layer=4, n_embd=128, n_head=4, n_kv_head=4, vocab_size=84, context=64,
                               tie_weights=False, activation="relu2", mlp_hidden=512, positions="learned",
                               bias=False),
    "GPT-2 small shape": dict(n_layer=12, n_embd=768, n_head=12, n_kv_head=12, vocab_size=50257, context=1024,
                              tie_weights=True, activation="gelu", mlp_hidden=3072, positions="learned", bias=True),
    "LLaMA-2-7B": dict(n_layer=32, n_embd=4096, n_head=32, n_kv_head=32, vocab_size=32000, context=4096,
                       tie_weights=False, activation="swiglu", mlp_hidden=11008, positions="rotary", bias=False),
    "LLaMA-2-70B": dict(n_layer=80, n_embd=8192, n_head=64, n_kv_head=8, vocab_size=32000, context=4096,
                        tie_weights=False, activation="swiglu", mlp_hidden=28672, positions="rotary", bias=False),
}
# What choosing a preset also sets: how such a model is typically trained on one machine. The big ones in
# bf16 with fp32 master weights (mixed precision) at batch 1; the baby as the course trains it.
CALCULATOR_PRESET_SETTINGS: dict[str, dict] = {
    "baby (this course)": dict(batch_size=12, dtype="fp32", mixed_precision=False),
    "GPT-2 small shape": dict(batch_size=12, dtype="bf16", mixed_precision=True),
    "LLaMA-2-7B": dict(batch_size=1, dtype="bf16", mixed_precision=True),
    "LLaMA-2-70B": dict(batch_size=1, dtype="bf16", mixed_precision=True),
}
CALCULATOR_DTYPES = ("fp32", "bf16", "fp16")
CALCULATOR_OPTIMIZERS = ("none (inference)", "sgd", "momentum", "adamw", "adam8bit")
#: how training activations are counted: what PyTorch saves on this CPU (`gpt_activation_bytes`: fused
#: attention, no dropout, the real MLP) or the GPU formula of Korthikanti et al. 2022
#: (`megatron_activation_bytes`: 16-bit, dropout masks, s×s attention scores stored, a 4h GELU MLP)
ACTIVATION_FORMULAS = ("this CPU (saved tensors)", "GPU, Korthikanti et al. 2022")
CATEGORIES = ("params", "grads", "optimizer_state", "master_weights", "activations", "kv_cache")
CATEGORY_COLORS = dict(zip(CATEGORIES, ("#4C72B0", "#DD8452", "#C44E52", "#937860", "#55A868", "#8172B3")))
SHAPE_KEYS = ("n_layer", "n_embd", "n_head", "n_kv_head", "vocab_size", "tie_weights", "activation",
              "mlp_hidden", "positions", "bias")
#: a budget more than this many times the total is drawn as an off-scale arrow, not on the axis
OFF_SCALE = 3.0


def preset_config(preset: str, **overrides) -> GPTConfig:
    """The GPTConfig of a calculator preset (block_size = its context), with any field overridden."""
    if preset not in CALCULATOR_PRESETS:
        raise ValueError(f"preset={preset!r}; allowed: {list(CALCULATOR_PRESETS)}")
    fields = dict(CALCULATOR_PRESETS[preset])
    fields["block_size"] = fields.pop("context")
    return GPTConfig(**{**fields, **overrides})


def matching_preset(**shape) -> str | None:
    """The name of the preset whose shape (every SHAPE_KEYS field) equals `shape`, or None."""
    for name, p in CALCULATOR_PRESETS.items():
        if all(shape.get(k) == p[k] for k in SHAPE_KEYS):
            return name
    return None


def memory_calculator_state(n_layer: int, n_embd: int, n_head: int, n_kv_head: int, vocab_size: int,
                            context: int, batch_size: int, dtype: str = "fp32",
                            optimizer: str = "adamw", mixed_precision: bool = False,
                            tie_weights: bool = True, activation: str = "gelu", mlp_hidden: int | None = None,
                            positions: str = "learned", bias: bool = False,
                            trained_context: int | None = None,
                            activation_formula: str = ACTIVATION_FORMULAS[0]) -> dict[str, Any]:
    """Bytes by category for training (or, with optimizer 'none (inference)', serving) a GPT of this shape.

    Training counts params, grads, optimizer state (and fp32 master weights when `mixed_precision` and the
    dtype is 16-bit) plus the activations one forward saves for backward (`gpt_activation_bytes`: this
    CPU's saved tensors); inference counts params plus a KV cache filled to `context` tokens for
    `batch_size` sequences. Every number comes from labkit.memory's formulas. A shape equal to a preset is
    named after it; `context` beyond the model's trained context (a preset's, or `trained_context`) is
    marked in the text. `activation_formula` picks how training activations are counted (ACTIVATION_FORMULAS).
    """
    if dtype not in CALCULATOR_DTYPES:
        raise ValueError(f"dtype={dtype!r}; allowed: {CALCULATOR_DTYPES}")
    if optimizer not in CALCULATOR_OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r}; allowed: {CALCULATOR_OPTIMIZERS}")
    if activation_formula not in ACTIVATION_FORMULAS:
        raise ValueError(f"activation_formula={activation_formula!r}; allowed: {ACTIVATION_FORMULAS}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    config = GPTConfig(vocab_size=vocab_size, block_size=context, n_layer=n_layer, n_head=n_head,
                       n_kv_head=n_kv_head, n_embd=n_embd, tie_weights=tie_weights, activation=activation,
                       mlp_hidden=mlp_hidden, positions=positions, bias=bias)
    n_params = gpt_param_count(config)
    preset = matching_preset(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_kv_head=n_kv_head,
                             vocab_size=vocab_size, tie_weights=tie_weights, activation=activation,
                             mlp_hidden=config.mlp_hidden, positions=positions, bias=bias)
    if trained_context is None and preset is not None:
        trained_context = CALCULATOR_PRESETS[preset]["context"]
    inference = optimizer.startswith("none")
    master = mixed_precision and dtype != "fp32" and not inference
    bytes_by = dict.fromkeys(CATEGORIES, 0)
    if inference:
        bytes_by["params"] = training_state_bytes(n_params, dtype, "sgd")["params"]
        bytes_by["kv_cache"] = kv_cache_bytes(n_layer, n_kv_head, config.head_dim, context, batch_size, dtype)
    else:
        state = training_state_bytes(n_params, dtype, optimizer, master_weights=master)
        for key in ("params", "grads", "optimizer_state", "master_weights"):
            bytes_by[key] = state[key]
        if activation_formula == ACTIVATION_FORMULAS[0]:
            bytes_by["activations"] = gpt_activation_bytes(config, batch_size, context, dtype)["total"]
        else:  # the paper's per-layer count, always 16-bit, whatever dtype is chosen here
            bytes_by["activations"] = megatron_activation_bytes(n_layer, n_embd, n_head, context, batch_size)
    total = sum(bytes_by.values())
    if preset is None:
        label = f"custom shape ({human_count(n_params)} parameters)"
    elif positions == "learned" and context != CALCULATOR_PRESETS[preset]["context"]:
        # a learned position table has one row per position: another context is another parameter count
        label = f"{preset} with a {context:,}-position table ({human_count(n_params)} parameters)"
    else:
        label = f"{preset} ({n_params:,} parameters)"
    precision = f"{dtype} + fp32 master weights" if master else dtype
    how = "inference" if inference else f"training with {optimizer}"
    beyond = trained_context is not None and context > trained_context
    how_counted = "" if inference or activation_formula == ACTIVATION_FORMULAS[0] else \
        " (activations by Korthikanti et al. 2022: 16-bit, dropout, s×s scores stored)"
    text = (f"{label}, {how} in {precision}, batch {batch_size} × context {context:,} tokens"
            + (f" (beyond the {trained_context:,} it was trained for)" if beyond else "") + how_counted + ": "
            f"total {human_bytes(total)} = " + " + ".join(f"{k} {human_bytes(v)}" for k, v in bytes_by.items() if v))
    return {"config": config, "n_params": n_params, "preset": preset, "label": label,
            "mode": "inference" if inference else "training", "precision": precision,
            "master_weights": master, "batch_size": batch_size, "context": context,
            "trained_context": trained_context, "beyond_trained_context": beyond,
            "activation_formula": activation_formula,
            "bytes": bytes_by, "total_bytes": total, "text": text}


def memory_calculator_figure(state: dict, budget_bytes: float | None = None) -> Figure:
    """One stacked horizontal bar of where the bytes go, on an axis scaled to the bar, and the budget.

    The budget is a dashed line when it is within OFF_SCALE× the total (the axis then reaches it); a
    budget far beyond the bar is an arrow at the right edge saying how far off it is, so a 40 MiB model
    beside a 22 GiB budget is still a readable bar and not a sliver.
    """
    total = state["total_bytes"]
    on_scale = budget_bytes is not None and budget_bytes <= OFF_SCALE * total
    unit_name, unit = binary_unit(max(total, budget_bytes if on_scale else 0))
    fig = Figure(figsize=(9, 2.3))
    fig.subplots_adjust(left=0.03, right=0.97, top=0.76, bottom=0.38)
    ax = fig.add_subplot()
    left = 0.0
    handles = []
    for cat in CATEGORIES:
        width = state["bytes"][cat] / unit
        if width > 0:
            handles.append(ax.barh([0], [width], left=left, height=0.6, color=CATEGORY_COLORS[cat],
                                   label=f"{cat.replace('_', ' ')} {human_bytes(state['bytes'][cat])}"))
            left += width
    # off scale, the axis leaves room right of the bar for the budget's arrow and its words
    x_max = (1.12 * max(total, budget_bytes) if on_scale else (1.12 if budget_bytes is None else 1.5) * total) / unit
    ax.set_xlim(0, x_max)
    ax.set_ylim(-0.5, 0.5)
    if budget_bytes is not None:
        fits = total <= budget_bytes
        verdict = f"fits in {human_bytes(budget_bytes)}" if fits else f"does NOT fit in {human_bytes(budget_bytes)}"
        if on_scale:
            handles.append(ax.axvline(budget_bytes / unit, color="k", ls="--", lw=1.5,
                                      label=f"budget {human_bytes(budget_bytes)}"))
        else:
            ax.annotate(f"budget {human_bytes(budget_bytes)}:\n{budget_bytes / total:,.0f}× this total,\noff scale",
                        xy=(x_max, 0), xytext=(1.04 * total / unit, 0), ha="left", va="center", fontsize=8,
                        arrowprops=dict(arrowstyle="-|>", color="k", lw=1.5))
    else:
        verdict = ""
    ax.set_yticks([])
    ax.set_xlabel(f"memory ({unit_name})", labelpad=2)
    ax.tick_params(labelsize=8)
    mode = "inference" if state["mode"] == "inference" else "training"
    ax.set_title(f"{state['label']}: {mode}, {state.get('precision', '')}, "
                 f"batch {state.get('batch_size', '?')} × {state.get('context', 0):,} tokens\n"
                 f"total {human_bytes(total)}" + (f" — {verdict}" if verdict else ""), fontsize=9)
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.36), ncol=4, fontsize=8,
              frameon=False, handlelength=1.2, columnspacing=1.2)
    return fig


def memory_calculator_panel(preset: str = "baby (this course)", budget_gib: float | None = None) -> Panel:
    """Sliders for the model's shape, context, batch, dtype and optimizer → a stacked bar of bytes.

    Choosing a preset loads its shape and its representative settings (CALCULATOR_PRESET_SETTINGS) in
    one redraw. `panel.render_ms` is the time the last redraw took (state, figure and PNG).
    """
    import ipywidgets as W

    if preset not in CALCULATOR_PRESETS:
        raise ValueError(f"preset={preset!r}; allowed: {list(CALCULATOR_PRESETS)}")
    p, s = CALCULATOR_PRESETS[preset], CALCULATOR_PRESET_SETTINGS[preset]
    style = {"description_width": "110px"}
    wide = W.Layout(width="auto")
    controls = {
        "preset": W.Dropdown(options=list(CALCULATOR_PRESETS), value=preset, description="start from", style=style),
        "n_layer": W.IntSlider(value=p["n_layer"], min=1, max=128, description="layers", style=style),
        "n_embd": W.IntSlider(value=p["n_embd"], min=64, max=16384, step=64, description="width (n_embd)",
                              style=style),
        "n_head": W.IntSlider(value=p["n_head"], min=1, max=128, description="heads", style=style),
        "n_kv_head": W.IntSlider(value=p["n_kv_head"], min=1, max=128, description="KV heads", style=style),
        "context": W.IntSlider(value=p["context"], min=16, max=32768, step=16, description="context (tokens)",
                               style=style),
        "batch_size": W.IntSlider(value=s["batch_size"], min=1, max=256, description="batch", style=style),
        "mlp_hidden": W.BoundedIntText(value=p["mlp_hidden"], min=1, max=262144, description="MLP width",
                                       style=style),
        "vocab_size": W.BoundedIntText(value=p["vocab_size"], min=1, max=1_000_000, description="vocab size",
                                       style=style),
        "activation": W.Dropdown(options=ACTIVATIONS, value=p["activation"], description="MLP", style=style),
        "positions": W.Dropdown(options=POSITION_KINDS, value=p["positions"], description="positions", style=style),
        "dtype": W.Dropdown(options=CALCULATOR_DTYPES, value=s["dtype"], description="dtype", style=style),
        "optimizer": W.Dropdown(options=CALCULATOR_OPTIMIZERS, value="adamw", description="optimizer", style=style),
        "activation_formula": W.Dropdown(options=ACTIVATION_FORMULAS, value=ACTIVATION_FORMULAS[0],
                                         description="activations by", style=style),
        "mixed_precision": W.Checkbox(value=s["mixed_precision"], description="fp32 master weights (mixed precision)",
                                      indent=False, layout=wide),
        "tie_weights": W.Checkbox(value=p["tie_weights"], description="tied output head (shares the embedding)",
                                  indent=False, layout=wide),
        "bias": W.Checkbox(value=p["bias"], description="biases in Linear and LayerNorm", indent=False, layout=wide),
    }
    output = W.Output()
    panel = Panel(widget=None, output=output, controls=controls)

    def refresh(*_):
        t0 = time.perf_counter()
        args = {k: c.value for k, c in controls.items() if k != "preset"}
        # master weights only exist when training in 16 bits: the checkbox is greyed out otherwise
        inference = args["optimizer"].startswith("none")
        controls["mixed_precision"].disabled = args["dtype"] == "fp32" or inference
        controls["activation_formula"].disabled = inference   # no activations are kept when serving
        try:
            panel.state = memory_calculator_state(**args)
        except ValueError as e:  # e.g. width not divisible by heads: say so instead of drawing
            panel.state = {"error": str(e)}
            render_into(output, None, f"⚠️ {e}", panel=panel)
            return
        panel.figure = memory_calculator_figure(panel.state, budget_gib * GiB if budget_gib else None)
        render_into(output, panel.figure, panel.state["text"], panel=panel, tight=False)
        panel.render_ms = (time.perf_counter() - t0) * 1000

    def load_preset(change):
        values = {**CALCULATOR_PRESETS[change["new"]], **CALCULATOR_PRESET_SETTINGS[change["new"]]}
        with quietly(controls, refresh, values):  # one redraw for the whole preset, not ten
            for key, value in values.items():
                controls[key].value = value
        refresh()

    return wire_panel(panel, refresh, load_preset, n_left=8)


__all__ = ["ACTIVATION_FORMULAS", "CALCULATOR_PRESETS", "CALCULATOR_PRESET_SETTINGS", "CALCULATOR_DTYPES", "CALCULATOR_OPTIMIZERS",
           "CATEGORIES", "CATEGORY_COLORS", "SHAPE_KEYS", "preset_config", "matching_preset",
           "memory_calculator_state", "memory_calculator_figure", "memory_calculator_panel"]
