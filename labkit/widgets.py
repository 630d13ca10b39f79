"""Interactive panels for the labs: pure functions compute, thin ipywidgets wiring displays.

Each panel is two layers:
- a `*_state(...)` function: plain arguments in, numbers and a matplotlib Figure out. Tests call
  it directly, and it is fast enough (a few ms) to re-run on every slider move;
- a `*_panel(...)` function that builds sliders and an Output, and on every change writes the
  state's figure and text into the Output with `outputs = ()` + `append_display_data` /
  `append_stdout`, which renders in JupyterLab, under nbval, and with no frontend at all.
Tests drive a panel by setting a slider's `.value` and reading `panel.state` / the Output.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import matplotlib

matplotlib.use(matplotlib.get_backend() if matplotlib.get_backend().lower() != "macosx" else "Agg")
import matplotlib.pyplot as plt  # noqa: E402

from labkit.memory import gpt_activation_bytes, gpt_param_count, kv_cache_bytes, training_state_bytes  # noqa: E402
from labkit.model import GPTConfig  # noqa: E402

GiB = 2 ** 30

# Model shapes for the calculator: GPT-2-style blocks (4x MLP, LayerNorm), sized like well-known
# model classes. The 7B/70B entries use the published layer/width/head counts of LLaMA-2-7B and
# LLaMA-2-70B ("Llama 2: Open Foundation and Fine-Tuned Chat Models"); with a 4x GELU MLP instead
# of LLaMA's SwiGLU the parameter count differs by a few percent, and is computed, not quoted.
CALCULATOR_PRESETS: dict[str, dict] = {
    "baby (this course)": dict(n_layer=4, n_embd=128, n_head=4, n_kv_head=4, vocab_size=84, context=64),
    "GPT-2 small class": dict(n_layer=12, n_embd=768, n_head=12, n_kv_head=12, vocab_size=50257, context=1024),
    "7B class": dict(n_layer=32, n_embd=4096, n_head=32, n_kv_head=32, vocab_size=32000, context=4096),
    "70B class (GQA)": dict(n_layer=80, n_embd=8192, n_head=64, n_kv_head=8, vocab_size=32000, context=4096),
}
CALCULATOR_DTYPES = ("fp32", "bf16", "fp16")
CALCULATOR_OPTIMIZERS = ("none (inference)", "sgd", "momentum", "adamw", "adam8bit")
CATEGORIES = ("params", "grads", "optimizer_state", "master_weights", "activations", "kv_cache")
CATEGORY_COLORS = dict(zip(CATEGORIES, ("#4C72B0", "#DD8452", "#C44E52", "#937860", "#55A868", "#8172B3")))


def human_bytes(n: float) -> str:
    """'1.50 GiB'-style text for a byte count (binary units)."""
    for unit, size in (("TiB", 2 ** 40), ("GiB", GiB), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def memory_calculator_state(n_layer: int, n_embd: int, n_head: int, n_kv_head: int, vocab_size: int,
                            context: int, batch_size: int, dtype: str = "fp32",
                            optimizer: str = "adamw", mixed_precision: bool = False) -> dict[str, Any]:
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
                       n_kv_head=n_kv_head, n_embd=n_embd)
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
    """One stacked horizontal bar of where the bytes go, in GiB, with an optional budget line."""
    fig, ax = plt.subplots(figsize=(8, 2.4))
    left = 0.0
    for cat in CATEGORIES:
        gib = state["bytes"][cat] / GiB
        if gib > 0:
            ax.barh([0], [gib], left=left, color=CATEGORY_COLORS[cat], label=f"{cat} ({human_bytes(state['bytes'][cat])})")
            left += gib
    if budget_bytes:
        ax.axvline(budget_bytes / GiB, color="k", ls="--", lw=1.5, label=f"budget {human_bytes(budget_bytes)}")
    ax.set_yticks([])
    ax.set_xlabel("memory (GiB)")
    ax.set_title(f"{state['n_params'] / 1e6:,.1f} M params, {state['mode']}: {human_bytes(state['total_bytes'])}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


@dataclass
class Panel:
    """A displayed panel: its widget tree, its Output, the controls by name, and the last state."""

    widget: Any
    output: Any
    controls: dict[str, Any]
    state: dict = field(default_factory=dict)
    figure: Any = None            # the last Figure drawn (closed, but its artists can be inspected)
    refresh: Callable[[], None] | None = None

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)


def figure_png(fig: plt.Figure) -> bytes:
    """The figure rendered to PNG bytes (what a notebook stores, and what a test can look at)."""
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def render_into(output, fig: plt.Figure | None, text: str | None = None) -> None:
    """Replace what an Output shows with a line of text and a PNG of the figure.

    The figure goes in as an explicit PNG image, so it renders the same in JupyterLab, under
    nbval, in a saved notebook and with no frontend at all.
    """
    from IPython.display import Image

    output.outputs = ()
    if text:
        output.append_stdout(text + "\n")
    if fig is not None:
        output.append_display_data(Image(data=figure_png(fig), format="png"))
        plt.close(fig)


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
        "mixed_precision": W.Checkbox(value=False, description="fp32 master weights (mixed precision)"),
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
        for key in ("n_layer", "n_embd", "n_head", "n_kv_head", "vocab_size", "context"):
            controls[key].unobserve(refresh, "value")  # one redraw for the whole preset, not six
            controls[key].value = q[key]
            controls[key].observe(refresh, "value")
        refresh()

    controls["preset"].observe(load_preset, "value")
    for key, c in controls.items():
        if key != "preset":
            c.observe(refresh, "value")
    panel.widget = W.VBox([W.HBox([W.VBox(list(controls.values())[:6]), W.VBox(list(controls.values())[6:])]), output])
    panel.refresh = refresh
    refresh()
    return panel



# --- lab 01 widgets (language models) ---

# --- lab 02 widgets (inside the Transformer) ---
import math  # noqa: E402

import matplotlib.ticker  # noqa: E402

KV_TRADEOFF_PRESETS = ("baby (this course)", "7B class", "70B class (GQA)")
KV_TRADEOFF_CONTEXTS = tuple(2 ** i for i in range(4, 18))     # 16 … 131072 tokens


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def kv_cache_tradeoff_state(preset: str, context: int, batch_size: int, n_kv_head: int | None = None,
                            dtype: str = "fp32", timings: dict | None = None) -> dict[str, Any]:
    """KV-cache bytes of a preset's shape at `context` tokens × `batch_size` sequences, against its weights.

    Returns the cache bytes at the chosen point, the curve of cache bytes over KV_TRADEOFF_CONTEXTS
    (and the same curve with one KV head per query head, i.e. plain multi-head attention), the bytes
    of the weights in `dtype`, and the context where the cache outgrows the weights. `timings`
    (measured once in the notebook: {"context": [...], "cached_ms": [...], "uncached_ms": [...]}) is
    passed through for the figure; the state says what caching buys at the nearest measured context.
    """
    if preset not in CALCULATOR_PRESETS:
        raise ValueError(f"preset={preset!r}; allowed: {sorted(CALCULATOR_PRESETS)}")
    if dtype not in CALCULATOR_DTYPES:
        raise ValueError(f"dtype={dtype!r}; allowed: {CALCULATOR_DTYPES}")
    p = CALCULATOR_PRESETS[preset]
    n_head = p["n_head"]
    n_kv_head = p["n_kv_head"] if n_kv_head is None else n_kv_head
    if n_kv_head not in _divisors(n_head):
        raise ValueError(f"n_kv_head={n_kv_head} must divide n_head={n_head}; allowed: {_divisors(n_head)}")
    if context < 1 or batch_size < 1:
        raise ValueError(f"context and batch_size must be >= 1, got context={context}, batch_size={batch_size}")
    config = GPTConfig(vocab_size=p["vocab_size"], block_size=p["context"], n_layer=p["n_layer"], n_head=n_head,
                       n_kv_head=n_kv_head, n_embd=p["n_embd"])
    head_dim = config.head_dim

    def cache(tokens: int, kv_heads: int) -> int:
        return kv_cache_bytes(p["n_layer"], kv_heads, head_dim, tokens, batch_size, dtype)

    weight_bytes = training_state_bytes(gpt_param_count(config), dtype, "sgd")["params"]
    cache_bytes = cache(context, n_kv_head)
    per_token = cache(1, n_kv_head)                  # bytes one more token adds (for the whole batch)
    crossover = -(-weight_bytes // per_token)        # first context where cache >= weights
    state = {
        "preset": preset, "context": context, "batch_size": batch_size, "n_head": n_head, "n_kv_head": n_kv_head,
        "dtype": dtype, "head_dim": head_dim, "n_layer": p["n_layer"],
        "cache_bytes": cache_bytes, "cache_bytes_per_token": per_token, "weight_bytes": weight_bytes,
        "mha_cache_bytes": cache(context, n_head), "crossover_context": crossover,
        "contexts": list(KV_TRADEOFF_CONTEXTS),
        "curve_bytes": [cache(c, n_kv_head) for c in KV_TRADEOFF_CONTEXTS],
        "mha_curve_bytes": [cache(c, n_head) for c in KV_TRADEOFF_CONTEXTS],
        "timings": timings, "measured": None,
    }
    kind = "MHA" if n_kv_head == n_head else ("MQA" if n_kv_head == 1 else "GQA")
    text = (f"{preset}: {p['n_layer']} layers × {n_kv_head} KV heads ({kind}) × head dim {head_dim}, {dtype}, "
            f"batch {batch_size}, context {context:,}: KV cache {human_bytes(cache_bytes)} "
            f"({human_bytes(per_token)} per token) vs weights {human_bytes(weight_bytes)}; "
            f"the cache outgrows the weights from context {crossover:,}")
    if n_kv_head != n_head:
        text += f"; {n_head // n_kv_head}× smaller than MHA's {human_bytes(state['mha_cache_bytes'])}"
    if timings:
        i = min(range(len(timings["context"])), key=lambda j: abs(math.log2(timings["context"][j] / context)))
        c, tc, tu = timings["context"][i], timings["cached_ms"][i], timings["uncached_ms"][i]
        state["measured"] = {"context": c, "cached_ms": tc, "uncached_ms": tu, "speedup": tu / tc}
        text += (f".\nMeasured on the baby model (batch 1, fp32) at context {c}: {tc:.2f} ms/token with the cache "
                 f"vs {tu:.2f} ms/token recomputing ({tu / tc:.1f}× faster for {human_bytes(timings['cache_bytes'][i])} "
                 "of cache)")
    state["text"] = text
    return state


def _bytes_axis(ax, axis: str, values: list[float]) -> None:
    """Log2 byte axis over `values` with at most ~8 ticks labelled in binary units (KiB, MiB, GiB)."""
    lo, hi = math.floor(math.log2(min(values))), math.ceil(math.log2(max(values)))
    step = max(1, math.ceil((hi - lo) / 7))
    ticks = [2.0 ** e for e in range(lo, hi + 1, step)]
    getattr(ax, f"set_{axis}scale")("log", base=2)
    getattr(ax, f"set_{axis}ticks")(ticks, [human_bytes(t).replace(".00", "") for t in ticks])
    getattr(ax, f"set_{axis}lim")(2.0 ** lo / 1.3, 2.0 ** hi * 1.3)
    getattr(ax, f"{axis}axis").set_minor_locator(matplotlib.ticker.NullLocator())


def kv_cache_tradeoff_figure(state: dict) -> plt.Figure:
    """Left: cache bytes vs context (chosen config, MHA, weights). Right: measured ms/token with vs without cache."""
    timings = state["timings"]
    fig, axes = plt.subplots(1, 2 if timings else 1, figsize=(11 if timings else 6, 3.8), squeeze=False)
    ax = axes[0, 0]
    ax.plot(state["contexts"], state["curve_bytes"], "-", color="#8172B3", lw=2,
            label=f"KV cache, {state['n_kv_head']} KV heads")
    if state["n_kv_head"] != state["n_head"]:
        ax.plot(state["contexts"], state["mha_curve_bytes"], "--", color="#8172B3", alpha=0.5,
                label=f"KV cache, MHA ({state['n_head']} KV heads)")
    ax.axhline(state["weight_bytes"], color="#4C72B0", ls=":", lw=1.5, label=f"weights ({human_bytes(state['weight_bytes'])})")
    ax.plot([state["context"]], [state["cache_bytes"]], "o", color="k", ms=7,
            label=f"context {state['context']:,}: {human_bytes(state['cache_bytes'])}")
    ax.set_xscale("log", base=2)
    _bytes_axis(ax, "y", state["curve_bytes"] + state["mha_curve_bytes"] + [state["weight_bytes"]])
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel(f"memory (bytes, {state['dtype']}, batch {state['batch_size']})")
    ax.set_title(f"{state['preset']}: KV cache grows linearly with context", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    if timings:
        ax = axes[0, 1]
        speedup = [u / c for u, c in zip(timings["uncached_ms"], timings["cached_ms"])]
        ax.plot(timings["cache_bytes"], speedup, "o-", color="#55A868", label="recompute time / cached time")
        for x, y, c in zip(timings["cache_bytes"], speedup, timings["context"]):
            ax.annotate(f"context {c}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
        if state["measured"]:
            i = timings["context"].index(state["measured"]["context"])
            ax.plot([timings["cache_bytes"][i]], [speedup[i]], "o", color="k", ms=8, label="nearest to chosen context")
        ax.axhline(1.0, color="grey", lw=1, ls=":")
        _bytes_axis(ax, "x", timings["cache_bytes"])
        ax.set_xlabel("KV cache held (bytes; baby model, batch 1, fp32)")
        ax.set_ylabel("speed-up per new token (×)")
        ax.set_title("baby model, measured: more cache held, more time saved", fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def kv_cache_tradeoff_panel(timings: dict | None = None, preset: str = "baby (this course)") -> Panel:
    """Dropdowns and sliders for model shape, context, batch, KV heads and dtype → KV-cache bytes and measured speed."""
    import ipywidgets as W

    if preset not in KV_TRADEOFF_PRESETS:
        raise ValueError(f"preset={preset!r}; allowed: {KV_TRADEOFF_PRESETS}")
    p = CALCULATOR_PRESETS[preset]
    style = {"description_width": "110px"}
    controls = {
        "preset": W.Dropdown(options=KV_TRADEOFF_PRESETS, value=preset, description="model shape", style=style),
        "context": W.SelectionSlider(options=list(KV_TRADEOFF_CONTEXTS), value=p["context"] if p["context"] in
                                     KV_TRADEOFF_CONTEXTS else 1024, description="context (tokens)", style=style),
        "batch_size": W.IntSlider(value=1, min=1, max=64, description="batch", style=style),
        "n_kv_head": W.Dropdown(options=_divisors(p["n_head"]), value=p["n_kv_head"], description="KV heads", style=style),
        "dtype": W.Dropdown(options=CALCULATOR_DTYPES, value="fp32", description="dtype", style=style),
    }
    output = W.Output()
    panel = Panel(widget=None, output=output, controls=controls)

    def refresh(*_):
        args = {k: c.value for k, c in controls.items()}
        panel.state = kv_cache_tradeoff_state(**args, timings=timings)
        panel.figure = kv_cache_tradeoff_figure(panel.state)
        render_into(output, panel.figure, panel.state["text"])

    def load_preset(change):
        q = CALCULATOR_PRESETS[change["new"]]
        for key in ("context", "n_kv_head"):
            controls[key].unobserve(refresh, "value")
        controls["n_kv_head"].options = _divisors(q["n_head"])
        controls["n_kv_head"].value = q["n_kv_head"]
        controls["context"].value = q["context"]
        for key in ("context", "n_kv_head"):
            controls[key].observe(refresh, "value")
        refresh()

    controls["preset"].observe(load_preset, "value")
    for key, c in controls.items():
        if key != "preset":
            c.observe(refresh, "value")
    panel.widget = W.VBox([W.HBox([W.VBox(list(controls.values())[:3]), W.VBox(list(controls.values())[3:])]), output])
    panel.refresh = refresh
    refresh()
    return panel

# --- lab 03 widgets (where memory goes) ---
