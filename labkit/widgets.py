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

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import matplotlib

matplotlib.use(matplotlib.get_backend() if matplotlib.get_backend().lower() != "macosx" else "Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

from labkit.memory import gpt_activation_bytes, gpt_param_count, kv_cache_bytes, training_state_bytes  # noqa: E402
from labkit.model import GPTConfig  # noqa: E402

GiB = 2 ** 30

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


def human_bytes(n: float) -> str:
    """'1.50 GiB'-style text for a byte count (binary units)."""
    for unit, size in (("TiB", 2 ** 40), ("GiB", GiB), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


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


@contextlib.contextmanager
def quietly(controls: dict, refresh: Callable, keys) -> Any:
    """Change several controls without a redraw per change (the caller redraws once after)."""
    for key in keys:
        controls[key].unobserve(refresh, "value")
    try:
        yield
    finally:
        for key in keys:
            controls[key].observe(refresh, "value")


def wire_panel(panel: Panel, refresh: Callable, on_preset: Callable | None, n_left: int) -> Panel:
    """Connect the preset menu to on_preset and every other control to refresh, lay the controls out in
    two columns (the first n_left on the left) above the Output, and draw once."""
    import ipywidgets as W

    controls = panel.controls
    if on_preset is not None:
        controls["preset"].observe(on_preset, "value")
    for key, c in controls.items():
        if key != "preset":
            c.observe(refresh, "value")
    widgets_ = list(controls.values())
    panel.widget = W.VBox([W.HBox([W.VBox(widgets_[:n_left]), W.VBox(widgets_[n_left:])]), panel.output])
    panel.refresh = refresh
    refresh()
    return panel


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



# --- lab 01 widgets (language models) ---
# Validation loss against parameter memory for a family of models trained in the lab. A "point" is a
# dict with name, family, param_bytes (bytes the parameters occupy) and val_loss (nats per token).

LM_FAMILY_STYLES = {"n-gram": ("#937860", "s"), "LSTM": ("#DD8452", "^"), "conv": ("#55A868", "D"),
                    "GPT": ("#4C72B0", "o")}
LM_OTHER_STYLES = (("#8172B3", "*"), ("#DA8BC3", "P"), ("#8C8C8C", "X"))  # red is kept for the budget


def pareto_front(points: list[dict], x: str = "param_bytes", y: str = "val_loss") -> list[dict]:
    """The points no other point beats on both x and y (smaller is better on both), sorted by x."""
    front: list[dict] = []
    for p in sorted(points, key=lambda p: (p[x], p[y])):
        if not front or p[y] < front[-1][y]:
            front.append(p)
    return front


def lm_memory_loss_state(points: list[dict], families: list[str] | tuple[str, ...] | None = None,
                         budget_bytes: float | None = None) -> dict[str, Any]:
    """Which models are shown, their Pareto front, and the lowest-loss model within `budget_bytes` of parameters."""
    for p in points:
        missing = {"name", "family", "param_bytes", "val_loss"} - set(p)
        if missing:
            raise ValueError(f"each point needs name, family, param_bytes and val_loss; {p!r} lacks {sorted(missing)}")
    known = list(dict.fromkeys(p["family"] for p in points))
    families = known if families is None else list(families)
    unknown = sorted(set(families) - set(known))
    if unknown:
        raise ValueError(f"families={unknown} are not among the points' families; allowed: {known}")
    shown = [p for p in points if p["family"] in families]
    affordable = [p for p in shown if budget_bytes is None or p["param_bytes"] <= budget_bytes]
    best = min(affordable, key=lambda p: p["val_loss"]) if affordable else None
    budget_text = "no budget" if budget_bytes is None else f"a budget of {human_bytes(budget_bytes)} of parameters"
    if not shown:
        text = "no model family selected"
    elif best is None:
        text = f"with {budget_text}, none of the {len(shown)} models shown fits"
    else:
        text = (f"with {budget_text}: best is {best['name']} ({best['family']}), val loss {best['val_loss']:.3f} "
                f"nats/char, {human_bytes(best['param_bytes'])} of parameters; "
                f"{len(affordable)} of {len(shown)} models fit")
    return {"families": families, "all_families": known, "shown": shown, "affordable": affordable,
            "front": pareto_front(shown), "best": best, "budget_bytes": budget_bytes, "text": text}


def lm_memory_loss_figure(state: dict) -> plt.Figure:
    """Validation loss (nats/char) against parameter memory (bytes, log scale), Pareto front and budget drawn."""
    fig, ax = plt.subplots(figsize=(8, 4.6))
    others = iter(LM_OTHER_STYLES * 4)
    styles = {f: LM_FAMILY_STYLES.get(f) or next(others) for f in state["all_families"]}
    for family in state["families"]:
        pts = [p for p in state["shown"] if p["family"] == family]
        color, marker = styles[family]
        ax.scatter([p["param_bytes"] for p in pts], [p["val_loss"] for p in pts], color=color, marker=marker,
                   s=110 if marker == "*" else 45, label=family, zorder=3)
        for p in pts:
            ax.annotate(p["name"], (p["param_bytes"], p["val_loss"]), textcoords="offset points", xytext=(5, 4),
                        fontsize=7, color=color)
    front = state["front"]
    if front:
        ax.step([p["param_bytes"] for p in front], [p["val_loss"] for p in front], where="post", color="k",
                lw=1, ls="--", label="Pareto front", zorder=2)
    if state["budget_bytes"] is not None:
        ax.axvline(state["budget_bytes"], color="#C44E52", lw=1.5, label=f"budget {human_bytes(state['budget_bytes'])}")
        ax.set_xscale("log")
        x_lo, x_hi = ax.get_xlim()
        if state["budget_bytes"] < x_hi:  # grey out what the budget cannot afford
            ax.axvspan(state["budget_bytes"], x_hi, color="0.85", alpha=0.5, zorder=0)
        ax.set_xlim(min(x_lo, state["budget_bytes"] / 1.5), max(x_hi, state["budget_bytes"] * 1.5))
    best = state["best"]
    if best is not None:
        ax.scatter([best["param_bytes"]], [best["val_loss"]], s=260, facecolors="none", edgecolors="#C44E52",
                   linewidths=2, zorder=4, label=f"best within budget: {best['name']}")
    ax.set_xscale("log")
    ax.set_xlabel("parameter memory (bytes, fp32, log scale)")
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_title("Quality vs parameter memory: lower-left is better")
    ax.legend(fontsize=7, loc="upper right")
    return fig  # no tight_layout: render_into saves with bbox_inches="tight", and each layout pass costs a redraw


def lm_memory_loss_panel(points: list[dict], budget_bytes: float | None = None) -> Panel:
    """Checkboxes for model families and a log slider for the parameter-memory budget → the trade-off plot."""
    import ipywidgets as W

    if not points:
        raise ValueError("points must hold at least one model")
    state0 = lm_memory_loss_state(points)  # validates the points
    sizes = [p["param_bytes"] for p in points]
    lo, hi = math.log10(min(sizes)) - 0.2, math.log10(max(sizes)) + 0.2
    budget = budget_bytes if budget_bytes is not None else 10 ** ((lo + hi) / 2)
    controls: dict[str, Any] = {f"show {f}": W.Checkbox(value=True, description=f, indent=False)
                                for f in state0["all_families"]}
    controls["budget_bytes"] = W.FloatLogSlider(value=min(max(budget, 10 ** lo), 10 ** hi), base=10, min=lo, max=hi,
                                                step=0.01, description="budget (B)", readout_format=".3g",
                                                continuous_update=False, style={"description_width": "80px"},
                                                layout=W.Layout(width="520px"))
    output = W.Output()
    panel = Panel(widget=None, output=output, controls=controls)

    def refresh(*_):
        families = [f for f in state0["all_families"] if controls[f"show {f}"].value]
        panel.state = lm_memory_loss_state(points, families, controls["budget_bytes"].value)
        panel.figure = lm_memory_loss_figure(panel.state)
        render_into(output, panel.figure, panel.state["text"])

    for c in controls.values():
        c.observe(refresh, "value")
    boxes = [controls[f"show {f}"] for f in state0["all_families"]]
    panel.widget = W.VBox([W.HBox(boxes), controls["budget_bytes"], output])
    panel.refresh = refresh
    refresh()
    return panel


# --- lab 02 widgets (inside the Transformer) ---

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
                       n_kv_head=n_kv_head, n_embd=p["n_embd"], tie_weights=p["tie_weights"])
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
                 f"vs {tu:.2f} ms/token recomputing ({tu / tc:.1f}× faster for "
                 f"{human_bytes(timings['cache_bytes'][i])} of cache)")
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
    ax.axhline(state["weight_bytes"], color="#4C72B0", ls=":", lw=1.5,
               label=f"weights ({human_bytes(state['weight_bytes'])})")
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
    """Controls for model shape, context, batch, KV heads and dtype → KV-cache bytes and the measured speed-up."""
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
        "n_kv_head": W.Dropdown(options=_divisors(p["n_head"]), value=p["n_kv_head"], description="KV heads",
                                style=style),
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
        with quietly(controls, refresh, ("context", "n_kv_head")):
            controls["n_kv_head"].options = _divisors(q["n_head"])
            controls["n_kv_head"].value = q["n_kv_head"]
            controls["context"].value = q["context"]
        refresh()

    return wire_panel(panel, refresh, load_preset, n_left=3)

# --- lab 03 widgets (where memory goes) ---
