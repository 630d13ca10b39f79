"""Lab 02: KV-cache bytes against context, batch, KV heads and dtype, beside the measured speed-up of caching."""
from __future__ import annotations

import math
import time
from typing import Any

import matplotlib.ticker
from matplotlib.figure import Figure

from labkit.memory import gpt_param_count, kv_cache_bytes, training_state_bytes
from labkit.widgets.calculator import CALCULATOR_DTYPES, CALCULATOR_PRESETS, preset_config
from labkit.widgets.core import Panel, _bytes_axis, human_bytes, quietly, render_into, wire_panel

KV_TRADEOFF_PRESETS = ("baby (this course)", "LLaMA-2-7B", "LLaMA-2-70B")
KV_TRADEOFF_CONTEXTS = tuple(2 ** i for i in range(4, 18))     # 16 … 131072 tokens


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def kv_cache_tradeoff_state(preset: str, context: int, batch_size: int, n_kv_head: int | None = None,
                            dtype: str = "fp32", timings: dict | None = None) -> dict[str, Any]:
    """KV-cache bytes of a preset's shape at `context` tokens × `batch_size` sequences, against its weights.

    Returns the cache bytes at the chosen point, the curve of cache bytes over KV_TRADEOFF_CONTEXTS
    (and the same curve with one KV head per query head, i.e. plain multi-head attention), the bytes
    of the weights in `dtype`, and the context where the cache outgrows the weights. `timings`
    (measured once in the notebook: {"context": [...], "cached_ms": [...], "uncached_ms": [...],
    "cache_bytes": [...]}, optionally "cached_q1"/"cached_q3"/"uncached_q1"/"uncached_q3" quartiles drawn as
    error bars and "counted_ratio", the recompute/cached FLOPs ratio) is passed through for the figure; the
    state says what the measurement shows at the nearest measured context, without claiming more.
    """
    if preset not in CALCULATOR_PRESETS:
        raise ValueError(f"preset={preset!r}; allowed: {list(CALCULATOR_PRESETS)}")
    if dtype not in CALCULATOR_DTYPES:
        raise ValueError(f"dtype={dtype!r}; allowed: {CALCULATOR_DTYPES}")
    p = CALCULATOR_PRESETS[preset]
    n_head = p["n_head"]
    n_kv_head = p["n_kv_head"] if n_kv_head is None else n_kv_head
    if n_kv_head not in _divisors(n_head):
        raise ValueError(f"n_kv_head={n_kv_head} must divide n_head={n_head}; allowed: {_divisors(n_head)}")
    if context < 1 or batch_size < 1:
        raise ValueError(f"context and batch_size must be >= 1, got context={context}, batch_size={batch_size}")
    config = preset_config(preset, n_kv_head=n_kv_head)   # the real model, with the KV heads chosen here
    head_dim = config.head_dim

    def cache(tokens: int, kv_heads: int) -> int:
        return kv_cache_bytes(p["n_layer"], kv_heads, head_dim, tokens, batch_size, dtype)

    weight_bytes = training_state_bytes(gpt_param_count(config), dtype, "sgd")["params"]
    cache_bytes = cache(context, n_kv_head)
    per_token = cache(1, n_kv_head)                  # bytes one more token adds (for the whole batch)
    crossover = -(-weight_bytes // per_token)        # first context where cache >= weights
    state = {
        "preset": preset, "context": context, "batch_size": batch_size, "n_head": n_head, "n_kv_head": n_kv_head,
        "dtype": dtype, "head_dim": head_dim, "n_layer": p["n_layer"], "trained_context": p["context"],
        "cache_bytes": cache_bytes, "cache_bytes_per_token": per_token, "weight_bytes": weight_bytes,
        "mha_cache_bytes": cache(context, n_head), "crossover_context": crossover,
        "contexts": list(KV_TRADEOFF_CONTEXTS),
        "curve_bytes": [cache(c, n_kv_head) for c in KV_TRADEOFF_CONTEXTS],
        "mha_curve_bytes": [cache(c, n_head) for c in KV_TRADEOFF_CONTEXTS],
        "timings": timings, "measured": None,
    }
    kind = "MHA" if n_kv_head == n_head else ("MQA" if n_kv_head == 1 else "GQA")
    text = (f"{preset}: {p['n_layer']} layers × {n_kv_head} KV heads ({kind}) × head dim {head_dim}, {dtype}, "
            f"batch {batch_size}, context {context:,}"
            + (f" (beyond the {p['context']:,} it was trained for)" if context > p["context"] else "")
            + f": KV cache {human_bytes(cache_bytes)} "
            f"({human_bytes(per_token)} per token) vs weights {human_bytes(weight_bytes)}; "
            f"the cache outgrows the weights from context {crossover:,}")
    if n_kv_head != n_head:
        text += f"; {n_head // n_kv_head}× smaller than MHA's {human_bytes(state['mha_cache_bytes'])}"
    if timings:
        i = min(range(len(timings["context"])), key=lambda j: abs(math.log2(timings["context"][j] / context)))
        c, tc, tu = timings["context"][i], timings["cached_ms"][i], timings["uncached_ms"][i]
        state["measured"] = {"context": c, "cached_ms": tc, "uncached_ms": tu, "speedup": tu / tc}
        verdict = "" if tu > tc else "; in this measurement the cached step was not faster (timing noise?)"
        text += (f".\nMeasured on the baby model (batch 1, fp32) at context {c}: {tc:.2f} ms/token with the cache "
                 f"vs {tu:.2f} ms/token recomputing: recomputing took {tu / tc:.1f}× the cached time, for "
                 f"{human_bytes(timings['cache_bytes'][i])} of cache{verdict}")
    state["text"] = text
    return state


def _context_axis(ax, contexts: list[int]) -> None:
    """Log2 context axis with plain labels (16, 256, 4K, 64K): no mathtext, which is slow to lay out."""
    ax.set_xscale("log", base=2)
    ticks = [c for c in contexts if math.log2(c) % 2 == 0]
    ax.set_xticks(ticks, [f"{c // 1024}K" if c >= 1024 else str(c) for c in ticks])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def kv_cache_tradeoff_figure(state: dict) -> Figure:
    """Left: cache bytes vs context (chosen config, MHA, weights). Right: measured ms/token with vs without cache."""
    timings = state["timings"]
    fig = Figure(figsize=(11 if timings else 6, 3.8))
    fig.subplots_adjust(left=0.09 if timings else 0.16, right=0.98, bottom=0.14, top=0.91, wspace=0.3)
    axes = fig.subplots(1, 2 if timings else 1, squeeze=False)
    ax = axes[0, 0]
    ax.plot(state["contexts"], state["curve_bytes"], "-", color="#8172B3", lw=2,
            label=f"KV cache, {state['n_kv_head']} KV heads")
    if state["n_kv_head"] != state["n_head"]:
        ax.plot(state["contexts"], state["mha_curve_bytes"], "--", color="#8172B3", alpha=0.5,
                label=f"KV cache, MHA ({state['n_head']} KV heads)")
    ax.axhline(state["weight_bytes"], color="#4C72B0", ls=":", lw=1.5,
               label=f"weights ({human_bytes(state['weight_bytes'])})")
    if state.get("trained_context"):
        ax.axvline(state["trained_context"], color="grey", lw=1, ls="-.",
                   label=f"trained context ({state['trained_context']:,})")
    ax.plot([state["context"]], [state["cache_bytes"]], "o", color="k", ms=7,
            label=f"context {state['context']:,}: {human_bytes(state['cache_bytes'])}")
    _context_axis(ax, state["contexts"])
    _bytes_axis(ax, "y", state["curve_bytes"] + state["mha_curve_bytes"] + [state["weight_bytes"]])
    ax.set_xlabel("context (tokens, log scale)")
    ax.set_ylabel(f"memory (bytes, {state['dtype']}, batch {state['batch_size']})")
    ax.set_title(f"{state['preset']}: KV cache grows linearly with context", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    if timings:
        ax = axes[0, 1]
        speedup = [u / c for u, c in zip(timings["uncached_ms"], timings["cached_ms"])]
        if all(k in timings for k in ("cached_q1", "cached_q3", "uncached_q1", "uncached_q3")):
            # the spread: slowest-quartile recompute over fastest-quartile cached, and the other way round
            low = [u1 / c3 for u1, c3 in zip(timings["uncached_q1"], timings["cached_q3"])]
            high = [u3 / c1 for u3, c1 in zip(timings["uncached_q3"], timings["cached_q1"])]
            ax.errorbar(timings["cache_bytes"], speedup, yerr=[[m - lo for m, lo in zip(speedup, low)],
                                                               [h - m for h, m in zip(high, speedup)]],
                        fmt="o-", color="#55A868", capsize=3,
                        label="measured: recompute time / cached time (median; bars: quartiles)")
        else:
            ax.plot(timings["cache_bytes"], speedup, "o-", color="#55A868", label="measured: recompute time / cached time")
        if "counted_ratio" in timings:
            ax.plot(timings["cache_bytes"], timings["counted_ratio"], "s--", color="#4C72B0",
                    label="counted: recompute FLOPs / cached FLOPs")
        for x, y, c in zip(timings["cache_bytes"], speedup, timings["context"]):
            ax.annotate(f"context {c}", (x, y), textcoords="offset points", xytext=(0, -13), ha="center", fontsize=7)
        if state["measured"]:
            i = timings["context"].index(state["measured"]["context"])
            ax.plot([timings["cache_bytes"][i]], [speedup[i]], "o", color="k", ms=8, label="nearest to chosen context")
        ax.axhline(1.0, color="grey", lw=1, ls=":")
        _bytes_axis(ax, "x", timings["cache_bytes"])
        ax.set_xlabel("KV cache held (bytes; baby model, batch 1, fp32)")
        ax.set_ylabel("recompute / cached, per new token (×)")
        ax.set_title("baby model: what the cache saves per new token", fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
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
        t0 = time.perf_counter()
        args = {k: c.value for k, c in controls.items()}
        panel.state = kv_cache_tradeoff_state(**args, timings=timings)
        panel.figure = kv_cache_tradeoff_figure(panel.state)
        render_into(output, panel.figure, panel.state["text"], panel=panel, tight=False)
        panel.render_ms = (time.perf_counter() - t0) * 1000

    def load_preset(change):
        q = CALCULATOR_PRESETS[change["new"]]
        with quietly(controls, refresh, ("context", "n_kv_head")):
            controls["n_kv_head"].options = _divisors(q["n_head"])
            controls["n_kv_head"].value = q["n_kv_head"]
            controls["context"].value = q["context"]
        refresh()

    return wire_panel(panel, refresh, load_preset, n_left=3)
