"""Lab 00/03: the memory calculator — bytes by category for training or serving a GPT of any shape."""
from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt

from labkit.memory import gpt_activation_bytes, gpt_param_count, kv_cache_bytes, training_state_bytes
from labkit.model import GPTConfig
from labkit.widgets.core import GiB, Panel, human_bytes, quietly, render_into, wire_panel


# Model shapes for the calculator. Every block is this course's GPT block (4x MLP, LayerNorm), so the
# parameter counts are computed for that block, never quoted. The 7B/70B entries take the published
# layer/width/head counts of LLaMA-2-7B and LLaMA-2-70B ("Llama 2: Open Foundation and Fine-Tuned
# Chat Models"); LLaMA's SwiGLU MLP is wider than 4x, so with this block the 7B shape counts ~6.6 B
# parameters and the 70B shape ~55 B (lab 03 prints both against LLaMA's own MLP).
CALCULATOR_PRESETS: dict[str, dict] = {
    "baby (this course)": dict(n_layer=4, n_embd=128, n_head=4, n_kv_head=4, vocab_size=84, context=64,
                               tie_weights=False),
    "GPT-2 small class": dict(n_layer=12, n_embd=768, n_head=12, n_kv_head=12, vocab_size=50257, context=1024,
                              tie_weights=True),
    "7B class": dict(n_layer=32, n_embd=4096, n_head=32, n_kv_head=32, vocab_size=32000, context=4096,
                     tie_weights=False),
    "70B class (GQA)": dict(n_layer=80, n_embd=8192, n_head=64, n_kv_head=8, vocab_size=32000, context=4096,
                            tie_weights=False),
}
CALCULATOR_DTYPES = ("fp32", "bf16", "fp16")
CALCULATOR_OPTIMIZERS = ("none (inference)", "sgd", "momentum", "adamw", "adam8bit")
CATEGORIES = ("params", "grads", "optimizer_state", "master_weights", "activations", "kv_cache")
CATEGORY_COLORS = dict(zip(CATEGORIES, ("#4C72B0", "#DD8452", "#C44E52", "#937860", "#55A868", "#8172B3")))


def memory_calculator_state(n_layer: int, n_embd: int, n_head: int, n_kv_head: int, vocab_size: int,
                            context: int, batch_size: int, dtype: str = "fp32",
                            optimizer: str = "adamw", mixed_precision: bool = False,
                            tie_weights: bool = True) -> dict[str, Any]:
    """Bytes by category for training (or, with optimizer 'none (inference)', serving) a GPT of this shape.

    Training counts params, grads, optimizer state (and fp32 master weights in mixed precision) plus
    the activations one forward saves for backward; inference counts params plus a KV cache filled to
    `context` tokens for `batch_size` sequences. Every number comes from labkit.memory's formulas.
    """
    if dtype not in CALCULATOR_DTYPES:
        raise ValueError(f"dtype={dtype!r}; allowed: {CALCULATOR_DTYPES}")
    if optimizer not in CALCULATOR_OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r}; allowed: {CALCULATOR_OPTIMIZERS}")
    config = GPTConfig(vocab_size=vocab_size, block_size=context, n_layer=n_layer, n_head=n_head,
                       n_kv_head=n_kv_head, n_embd=n_embd, tie_weights=tie_weights)
    n_params = gpt_param_count(config)
    inference = optimizer.startswith("none")
    bytes_by = dict.fromkeys(CATEGORIES, 0)
    if inference:
        bytes_by["params"] = training_state_bytes(n_params, dtype, "sgd")["params"]
        bytes_by["kv_cache"] = kv_cache_bytes(n_layer, n_kv_head, config.head_dim, context, batch_size, dtype)
    else:
        state = training_state_bytes(n_params, dtype, optimizer, master_weights=mixed_precision and dtype != "fp32")
        for key in ("params", "grads", "optimizer_state", "master_weights"):
            bytes_by[key] = state[key]
        bytes_by["activations"] = gpt_activation_bytes(config, batch_size, context, dtype)["total"]
    total = sum(bytes_by.values())
    return {"config": config, "n_params": n_params, "mode": "inference" if inference else "training",
            "bytes": bytes_by, "total_bytes": total,
            "text": f"{n_params / 1e6:,.1f} M parameters, {'inference' if inference else 'training'} in {dtype}: "
                    f"total {human_bytes(total)} = " +
                    " + ".join(f"{k} {human_bytes(v)}" for k, v in bytes_by.items() if v)}


def memory_calculator_figure(state: dict, budget_bytes: float | None = None) -> plt.Figure:
    """One stacked horizontal bar of where the bytes go (MiB or GiB by size), with an optional budget line."""
    unit_name, unit = ("GiB", GiB) if max(state["total_bytes"], budget_bytes or 0) >= GiB else ("MiB", 2 ** 20)
    fig, ax = plt.subplots(figsize=(9, 2.4))
    left = 0.0
    for cat in CATEGORIES:
        width = state["bytes"][cat] / unit
        if width > 0:
            ax.barh([0], [width], left=left, color=CATEGORY_COLORS[cat], label=f"{cat} ({human_bytes(state['bytes'][cat])})")
            left += width
    if budget_bytes:
        ax.axvline(budget_bytes / unit, color="k", ls="--", lw=1.5, label=f"budget {human_bytes(budget_bytes)}")
    ax.set_yticks([])
    ax.set_xlabel(f"memory ({unit_name})")
    ax.set_title(f"{state['n_params'] / 1e6:,.1f} M params, {state['mode']}: {human_bytes(state['total_bytes'])}")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig



def memory_calculator_panel(preset: str = "baby (this course)", budget_gib: float | None = None) -> Panel:
    """Sliders for layers, width, heads, KV heads, context, batch, dtype and optimizer → a stacked bar of bytes."""
    import ipywidgets as W

    if preset not in CALCULATOR_PRESETS:
        raise ValueError(f"preset={preset!r}; allowed: {sorted(CALCULATOR_PRESETS)}")
    p = CALCULATOR_PRESETS[preset]
    style = {"description_width": "110px"}
    controls = {
        "preset": W.Dropdown(options=list(CALCULATOR_PRESETS), value=preset, description="start from", style=style),
        "n_layer": W.IntSlider(value=p["n_layer"], min=1, max=128, description="layers", style=style),
        "n_embd": W.IntSlider(value=p["n_embd"], min=64, max=16384, step=64, description="width (n_embd)", style=style),
        "n_head": W.IntSlider(value=p["n_head"], min=1, max=128, description="heads", style=style),
        "n_kv_head": W.IntSlider(value=p["n_kv_head"], min=1, max=128, description="KV heads", style=style),
        "vocab_size": W.IntText(value=p["vocab_size"], description="vocab size", style=style),
        "context": W.IntSlider(value=p["context"], min=16, max=32768, step=16, description="context (tokens)", style=style),
        "batch_size": W.IntSlider(value=1 if p["context"] > 64 else 12, min=1, max=256, description="batch", style=style),
        "dtype": W.Dropdown(options=CALCULATOR_DTYPES, value="fp32", description="dtype", style=style),
        "optimizer": W.Dropdown(options=CALCULATOR_OPTIMIZERS, value="adamw", description="optimizer", style=style),
        "mixed_precision": W.Checkbox(value=False, description="fp32 master weights (mixed precision)",
                                      indent=False, layout=W.Layout(width="auto")),
        "tie_weights": W.Checkbox(value=p["tie_weights"], description="tied output head (shares the embedding)",
                                  indent=False, layout=W.Layout(width="auto")),
    }
    output = W.Output()
    panel = Panel(widget=None, output=output, controls=controls)

    def refresh(*_):
        args = {k: c.value for k, c in controls.items() if k != "preset"}
        try:
            panel.state = memory_calculator_state(**args)
        except ValueError as e:  # e.g. width not divisible by heads: say so instead of drawing
            panel.state = {"error": str(e)}
            render_into(output, None, f"⚠️ {e}")
            return
        panel.figure = memory_calculator_figure(panel.state, budget_gib * GiB if budget_gib else None)
        render_into(output, panel.figure, panel.state["text"])

    def load_preset(change):
        q = CALCULATOR_PRESETS[change["new"]]
        keys = ("n_layer", "n_embd", "n_head", "n_kv_head", "vocab_size", "context", "tie_weights")
        with quietly(controls, refresh, keys):  # one redraw for the whole preset, not seven
            for key in keys:
                controls[key].value = q[key]
        refresh()

    return wire_panel(panel, refresh, load_preset, n_left=6)
