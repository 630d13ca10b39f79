"""Lab 08: memory maps (where each block lives, over time) and the serving panel (paged vs contiguous KV cache).

- `memory_map_figure(blocks)`: offset in the arena against time, one rectangle per block — the picture the
  lab draws for every allocator's replay of the training step and for the static arena plans.
  A block is `(offset, size, start, end)`: bytes [offset, offset + size) held during steps [start, end)
  (`plan_blocks` turns labkit.arena's lifetimes + Plan into these).
- `serving_state` / `serving_figure` / `serving_panel`: one request trace served in a fixed KV budget under
  each policy of labkit.paged_kv.simulate_serving (contiguous max-context reservation, paged, paged with
  the prompt shared); memory reserved vs used over time, sequences running, and the waste per policy.
  The simulations are precomputed once for every control setting (`serving_sweep`, cached by the notebook
  with labkit.data.cached_results), so a redraw only looks them up and draws.
"""
from __future__ import annotations

import functools
import math
import numbers
import time
from collections.abc import Iterable, Sequence
from typing import Any

import matplotlib
import matplotlib.ticker
import numpy as np
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

from labkit import paged_kv
from labkit.widgets.core import (
    GiB,
    Panel,
    binary_unit,
    human_bytes,
    render_into,
    wire_panel,
)

SERVING_MIXES = paged_kv.MIXES
SERVING_POLICIES = paged_kv.POLICIES
SERVING_BLOCK_SIZES = (8, 16, 32, 64, 128)          # tokens per KV block (vLLM's default is 16)
SERVING_BUDGETS_GIB = (8, 16, 32)                   # KV memory of the server, GiB
SERVING_REQUESTS = 200
SERVING_SEED = 0
TIMELINE_POINTS = 300                               # a timeline is kept as this many bin means (for drawing)
POLICY_COLORS = {"contiguous": "#C44E52", "paged": "#4C72B0", "paged+sharing": "#55A868"}


# =============================================================================================
# Memory maps: offset vs time, a rectangle per block


def _as_block(item: Any, i: int) -> tuple[int, int, int, int | None]:
    """(offset, size, start, end) from a 4-tuple or an object with those attributes (end None: never freed)."""
    if all(hasattr(item, a) for a in ("offset", "size", "start", "end")):
        item = (item.offset, item.size, item.start, item.end)
    try:
        offset, size, start, end = item
    except (TypeError, ValueError):
        raise TypeError(f"blocks[{i}] must be (offset, size, start, end), got {item!r}") from None
    ints = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (offset, size, start))
    if not ints or offset < 0 or size <= 0 or start < 0 or not (end is None or (isinstance(end, numbers.Integral)
                                                                                 and end > start)):
        raise ValueError(f"blocks[{i}] = {item!r}: need integers offset >= 0, size > 0, start >= 0 and end > start "
                         "(or None: still held at the end)")
    return int(offset), int(size), int(start), None if end is None else int(end)


def plan_blocks(lifetimes: Sequence, plan: Any) -> list[tuple[int, int, int, int]]:
    """The blocks of a static arena plan: (offset, size, first, last) per tensor (labkit.arena.Plan + lifetimes)."""
    sizes = getattr(plan, "sizes", None) or [lv[0] for lv in lifetimes]
    if len(plan.offsets) != len(lifetimes) or len(sizes) != len(lifetimes):
        raise ValueError(f"the plan places {len(plan.offsets)} tensors but lifetimes has {len(lifetimes)}")
    return [(int(o), int(s), int(lv[1]), int(lv[2])) for o, s, lv in zip(plan.offsets, sizes, lifetimes)]


def replay_blocks(rows: Sequence[dict]) -> list[tuple[int, int, int, int | None]]:
    """The blocks of an allocator's replay (labkit.pools.replay(..., record_blocks=True)): (offset, size, start, end).

    A handle's block runs from the first step it appears at until the step it is gone or moved (a
    compaction ends one rectangle and starts another); still held at the end: end None.
    """
    open_blocks: dict[Any, tuple[int, int, int]] = {}
    out: list[tuple[int, int, int, int | None]] = []
    for i, row in enumerate(rows):
        if "blocks" not in row:
            raise ValueError(f"rows[{i}] has no 'blocks': replay with record_blocks=True")
        step = row["step"]
        now = {b.handle: (b.offset, b.size) for b in row["blocks"] if b.handle is not None}
        for handle, (offset, size, start) in list(open_blocks.items()):
            if now.get(handle) != (offset, size):
                out.append((offset, size, start, step))
                del open_blocks[handle]
        for handle, (offset, size) in now.items():
            if handle not in open_blocks:
                open_blocks[handle] = (offset, size, step)
    out.extend((offset, size, start, None) for offset, size, start in open_blocks.values())
    return sorted(out, key=lambda b: (b[2], b[0]))


def memory_map_figure(blocks: Iterable, arena_bytes: int | None = None, lower_bound_bytes: int | None = None,
                      title: str = "", time_label: str = "op step of the training step", ax: Any = None,
                      color_by: str = "block") -> Figure:
    """Offset (bytes, y) against time (x): a rectangle per block; the arena's top dashed, the lower bound dotted.

    `blocks`: (offset, size, start, end) each — bytes [offset, offset + size) held during steps [start, end);
    end None means still held when the trace ends. `arena_bytes` draws the arena's top (reserved bytes),
    `lower_bound_bytes` the peak of live bytes (no arena can be lower). Draws into `ax` if given.
    color_by: "block" (each block its own colour) or "size" (a log-size colour scale).
    """
    if color_by not in ("block", "size"):
        raise ValueError(f"color_by={color_by!r}; allowed: ['block', 'size']")
    items = [_as_block(b, i) for i, b in enumerate(blocks)]
    if ax is None:
        fig = Figure(figsize=(7.5, 3.6))
        fig.subplots_adjust(left=0.11, right=0.97, bottom=0.14, top=0.9)
        ax = fig.subplots()
    else:
        fig = ax.figure
    t_end = max([e for *_, e in items if e is not None] + [s + 1 for _, _, s, _ in items], default=1)
    top = max([o + s for o, s, _, _ in items] + [arena_bytes or 0, lower_bound_bytes or 0, 1])
    unit, scale = binary_unit(top)
    if items:
        a = np.array([(o, s, st, t_end if e is None else e) for o, s, st, e in items], dtype=np.float64)
        x0, x1, y0, y1 = a[:, 2], a[:, 3], a[:, 0] / scale, (a[:, 0] + a[:, 1]) / scale
        verts = np.stack([np.stack([x0, y0], 1), np.stack([x1, y0], 1), np.stack([x1, y1], 1),
                          np.stack([x0, y1], 1)], axis=1)
        if color_by == "size":     # log scale: the big activations and the small biases told apart at a glance
            sizes = np.log2(a[:, 1])
            norm = matplotlib.colors.Normalize(vmin=sizes.min(), vmax=max(sizes.max(), sizes.min() + 1))
            colors = matplotlib.colormaps["viridis"](norm(sizes))
        else:                      # neighbouring blocks in distinct colours, so each rectangle reads as one block
            colors = matplotlib.colormaps["tab20"](np.arange(len(a)) % 20)
        ax.add_collection(PolyCollection(verts, facecolors=colors, edgecolors="white", linewidths=0.2))
    if arena_bytes is not None:
        ax.axhline(arena_bytes / scale, color="k", ls="--", lw=1, label=f"arena: {human_bytes(arena_bytes)}")
    if lower_bound_bytes is not None:
        ax.axhline(lower_bound_bytes / scale, color="#C44E52", ls=":", lw=1.2,
                   label=f"peak of live bytes (lower bound): {human_bytes(lower_bound_bytes)}")
    ax.set_xlim(0, t_end)
    ax.set_ylim(0, top / scale * 1.18)             # a strip above the arena's top for the legend
    ax.set_xlabel(time_label)
    ax.set_ylabel(f"offset in the arena ({unit})")
    ax.set_title(title or f"{len(items):,} blocks", fontsize=10)
    if arena_bytes is not None or lower_bound_bytes is not None:
        ax.legend(fontsize=7, loc="upper right", ncol=2)
    return fig


# =============================================================================================
# The serving simulation, precomputed per control setting


@functools.lru_cache(maxsize=8)
def _trace(mix: str, n_requests: int, seed: int) -> tuple:
    return tuple(paged_kv.request_trace(n_requests, seed=seed, mix=mix))


def _binned(values: Sequence[float], n: int) -> list[float]:
    """`values` as at most n means over equal runs of steps (a timeline small enough to store and draw)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) <= n:
        return v.tolist()
    edges = np.linspace(0, len(v), n + 1).astype(int)
    return (np.add.reduceat(v, edges[:-1]) / np.diff(edges)).tolist()


def serving_row(mix: str, block_size: int, policy: str, budget_gib: int, n_requests: int = SERVING_REQUESTS,
                seed: int = SERVING_SEED) -> dict:
    """One simulate_serving run of the mix's trace as JSON data: its summary and a binned timeline (bytes, steps)."""
    result = paged_kv.simulate_serving(list(_trace(mix, n_requests, seed)), policy, budget_bytes=budget_gib * GiB,
                                       block_size=block_size)
    t = result["timeline"]
    n = len(t["step"])
    return {
        "mix": mix, "block_size": block_size, "policy": policy, "budget_gib": budget_gib, "n_requests": n_requests,
        "seed": seed, "budget_bytes": result["budget_bytes"], "kv_bytes_per_token": result["kv_bytes_per_token"],
        "max_context": result["max_context"], "waste_fraction": result["waste_fraction"],
        "max_concurrent_sequences": result["max_concurrent_sequences"],
        "mean_concurrent_sequences": result["mean_concurrent_sequences"],
        "mean_concurrent_sequences_queued": result["mean_concurrent_sequences_queued"],
        "finished_requests": result["finished_requests"], "rejected_requests": result["rejected_requests"],
        "preemptions": result["preemptions"], "last_step": result["last_step"],
        "mean_latency_steps": result["mean_latency_steps"], "peak_reserved_bytes": result["peak_reserved_bytes"],
        "n_steps": n, "bin_steps": max(1, math.ceil(n / TIMELINE_POINTS)),
        "step": _binned(t["step"], TIMELINE_POINTS), "reserved_bytes": _binned(t["reserved_bytes"], TIMELINE_POINTS),
        "used_bytes": _binned(t["used_bytes"], TIMELINE_POINTS),
        "running_sequences": _binned(t["running_sequences"], TIMELINE_POINTS),
    }


def serving_sweep(mixes: Sequence[str] = SERVING_MIXES, block_sizes: Sequence[int] = SERVING_BLOCK_SIZES,
                  budgets_gib: Sequence[int] = SERVING_BUDGETS_GIB, n_requests: int = SERVING_REQUESTS,
                  seed: int = SERVING_SEED, progress: bool = False) -> list[dict]:
    """serving_row for every control setting the panel offers (contiguous once per mix and budget: it has no blocks)."""
    settings = [(m, b, p, g) for m in mixes for g in budgets_gib for p in SERVING_POLICIES
                for b in (block_sizes if p != "contiguous" else block_sizes[:1])]
    if progress:
        from tqdm.auto import tqdm
        settings = tqdm(settings, desc="serving simulations")
    rows = []
    for m, b, p, g in settings:
        row = serving_row(m, b, p, g, n_requests, seed)
        if p == "contiguous":
            row["block_size"] = None
        rows.append(row)
    return rows


@functools.lru_cache(maxsize=64)
def _computed_row(mix: str, block_size: int | None, policy: str, budget_gib: int, n_requests: int, seed: int) -> dict:
    row = serving_row(mix, block_size or SERVING_BLOCK_SIZES[0], policy, budget_gib, n_requests, seed)
    if policy == "contiguous":
        row["block_size"] = None
    return row


def _lookup(rows: Sequence[dict] | None, mix: str, block_size: int, policy: str, budget_gib: int, n_requests: int,
            seed: int) -> dict:
    """The row of these settings: from `rows` (a serving_sweep) if given, else simulated now (and kept)."""
    want_block = None if policy == "contiguous" else block_size
    if rows is None:
        return _computed_row(mix, want_block, policy, budget_gib, n_requests, seed)
    for row in rows:
        if (row["mix"], row["block_size"], row["policy"], row["budget_gib"]) == (mix, want_block, policy, budget_gib):
            return row
    raise ValueError(f"no precomputed simulation for mix={mix!r}, block_size={want_block}, policy={policy!r}, "
                     f"budget_gib={budget_gib} (serving_sweep with these settings computes it)")


def _check_choice(name: str, value: Any, allowed: Sequence) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r}; allowed: {list(allowed)}")


def serving_state(mix: str = "chat", block_size: int = 16, policy: str = "paged", budget_gib: int = 8,
                  rows: Sequence[dict] | None = None, n_requests: int = SERVING_REQUESTS,
                  seed: int = SERVING_SEED) -> dict[str, Any]:
    """The chosen policy's simulation and the other two on the same trace and budget, with a sentence from the numbers.

    `rows`: a serving_sweep (looked up); without it the simulations run now (and are remembered).
    Waste is Σ(reserved − used) / Σ reserved KV bytes over the steps; concurrency is the mean number of
    sequences running while requests wait for memory (the budget's capacity), else over all steps.
    """
    _check_choice("mix", mix, SERVING_MIXES)
    _check_choice("policy", policy, SERVING_POLICIES)
    if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral) or block_size < 1:
        raise ValueError(f"block_size={block_size!r} must be a whole number of tokens >= 1, e.g. one of "
                         f"{list(SERVING_BLOCK_SIZES)}")
    if isinstance(budget_gib, bool) or not isinstance(budget_gib, numbers.Real) or budget_gib <= 0:
        raise ValueError(f"budget_gib={budget_gib!r} must be a positive number of GiB, e.g. one of "
                         f"{list(SERVING_BUDGETS_GIB)}")
    by_policy = {p: _lookup(rows, mix, int(block_size), p, budget_gib, n_requests, seed) for p in SERVING_POLICIES}
    chosen = by_policy[policy]

    def concurrency(row: dict) -> float:
        q = row["mean_concurrent_sequences_queued"]
        return row["mean_concurrent_sequences"] if q is None else q

    per_token = chosen["kv_bytes_per_token"]
    tokens = chosen["budget_bytes"] // per_token
    contiguous, paged = by_policy["contiguous"], by_policy[policy if policy != "contiguous" else "paged"]
    ratio = concurrency(paged) / concurrency(contiguous) if concurrency(contiguous) else math.inf
    lines = [f"{mix} trace, {chosen['n_requests']} requests (seed {chosen['seed']}), {human_bytes(chosen['budget_bytes'])} "
             f"of KV cache = {tokens:,} tokens at {human_bytes(per_token)} per token (LLaMA-2-7B shape, fp16)"
             + (f", blocks of {block_size} tokens" if policy != "contiguous" else "") + ":"]
    for p in SERVING_POLICIES:
        row = by_policy[p]
        lines.append(f"  {p:<14} waste {100 * row['waste_fraction']:5.1f}% of reserved KV, "
                     f"{concurrency(row):5.1f} sequences at once (max {row['max_concurrent_sequences']}), "
                     f"{row['finished_requests']} requests served in {row['last_step'] + 1:,} steps"
                     + (f", {row['preemptions']} preemptions" if row["preemptions"] else "")
                     + (f", {row['rejected_requests']} rejected" if row["rejected_requests"] else "")
                     + ("   ← shown" if p == policy else ""))
    lines.append(f"In the same budget {paged['policy']} runs {ratio:.1f}× the sequences of contiguous, which reserves "
                 f"max_context = {contiguous['max_context']:,} tokens per sequence at admission.")
    return {"mix": mix, "block_size": int(block_size), "policy": policy, "budget_gib": budget_gib,
            "rows": by_policy, "chosen": chosen, "concurrency": {p: concurrency(r) for p, r in by_policy.items()},
            "paged_vs_contiguous": ratio, "text": "\n".join(lines)}


def _serving_axes() -> tuple[Figure, dict[str, Any]]:
    """The serving figure's axes and every artist a redraw changes (drawn empty; `_draw_serving` fills them)."""
    fig = Figure(figsize=(13, 3.7))
    fig.subplots_adjust(left=0.06, right=0.985, bottom=0.15, top=0.88, wspace=0.32)
    ax_mem, ax_seq, ax_waste = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.25, 1.25, 0.8]})
    ax_seq.sharex(ax_mem)               # one time axis: how long each policy takes to serve the trace shows too
    a: dict[str, Any] = {"mem": ax_mem, "seq": ax_seq, "waste": ax_waste}
    a["used"] = ax_mem.fill_between([0, 1], 0, 0, alpha=0.85, lw=0, label="used: keys/values stored")
    a["empty"] = ax_mem.fill_between([0, 1], 0, 0, alpha=0.25, lw=0, label="reserved but empty (waste)")
    a["budget"] = ax_mem.axhline(1, color="k", ls="--", lw=1, label="budget")
    ax_mem.set_xlabel("decoding step")
    ax_mem.set_ylabel("KV cache (GiB)")
    a["mem_title"] = ax_mem.set_title("", fontsize=10, y=1.0, pad=8)
    a["mem_legend"] = ax_mem.legend(fontsize=7, loc="upper right", ncol=3, columnspacing=0.8, handlelength=1.2)
    a["lines"] = {p: ax_seq.plot([], [], color=POLICY_COLORS[p], label=p)[0] for p in SERVING_POLICIES}
    ax_seq.set_xlabel("decoding step")
    ax_seq.set_ylabel("sequences running")
    ax_seq.set_title("sequences running at once, same trace and budget", fontsize=10, y=1.0, pad=8)
    a["seq_legend"] = ax_seq.legend(fontsize=7, loc="upper right")
    n = len(SERVING_POLICIES)
    a["bars"] = ax_waste.bar(range(n), [0] * n, color=[POLICY_COLORS[p] for p in SERVING_POLICIES], linewidth=1.5)
    a["bar_labels"] = [ax_waste.annotate("", (bar.get_x() + 0.4, 0), textcoords="offset points", xytext=(0, 2),
                                         ha="center", fontsize=7) for bar in a["bars"]]
    ax_waste.set_xticks(range(n), list(SERVING_POLICIES), fontsize=8)
    ax_waste.set_ylim(0, 100)
    ax_waste.set_ylabel("waste (% of reserved KV bytes)")
    ax_waste.set_title("waste per policy", fontsize=10, y=1.0, pad=8)
    for ax in (ax_mem, ax_seq, ax_waste):      # few ticks: laying out tick labels is most of a redraw's time
        ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5))
    ax_mem.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5))
    ax_mem.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:,.0f}"))
    fig._labkit_serving = a
    return fig, a


def _draw_serving(a: dict[str, Any], state: dict) -> None:
    """Put one state's numbers into the serving figure's artists (data, colours, limits, titles, labels)."""
    chosen, policy = state["chosen"], state["policy"]
    if list(state["rows"]) != list(SERVING_POLICIES):
        raise ValueError(f"state['rows'] must hold the policies {list(SERVING_POLICIES)} in this order, "
                         f"got {list(state['rows'])}")
    color = POLICY_COLORS[policy]
    steps = np.asarray(chosen["step"], dtype=np.float64)
    reserved = np.asarray(chosen["reserved_bytes"]) / GiB
    used = np.asarray(chosen["used_bytes"]) / GiB
    budget = chosen["budget_bytes"] / GiB
    a["used"].set_data(steps, 0, used)
    a["empty"].set_data(steps, used, reserved)
    for artist, handle in zip((a["used"], a["empty"]), a["mem_legend"].legend_handles):
        artist.set_facecolor(color)
        handle.set_facecolor(matplotlib.colors.to_rgba(color, artist.get_alpha()))   # a legend keeps copies
    a["budget"].set_ydata([budget, budget])
    a["mem"].set_ylim(0, budget * 1.25)
    a["mem_title"].set_text(f"{policy}: KV memory over time" + (f" (means of {chosen['bin_steps']} steps)"
                                                                 if chosen["bin_steps"] > 1 else ""))
    last = max([row["step"][-1] for row in state["rows"].values() if row["step"]] + [1])
    a["mem"].set_xlim(0, last * 1.02)                          # shared with the middle axes
    top = max([max(row["running_sequences"], default=0) for row in state["rows"].values()] + [1])
    a["seq"].set_ylim(0, top * 1.08)
    for (p, row), handle in zip(state["rows"].items(), a["seq_legend"].legend_handles):
        width, alpha = (2.2, 1.0) if p == policy else (1.0, 0.7)
        for line in (a["lines"][p], handle):
            line.set_linewidth(width)
            line.set_alpha(alpha)
        a["lines"][p].set_data(row["step"], row["running_sequences"])
    for bar, label, (p, row) in zip(a["bars"], a["bar_labels"], state["rows"].items()):
        height = 100 * row["waste_fraction"]
        bar.set_height(height)
        bar.set_edgecolor("k" if p == policy else "none")
        label.xy = (bar.get_x() + 0.4, height)
        label.set_text(f"{height:.1f}%\n{state['concurrency'][p]:.1f} seq.")


def serving_figure(state: dict, figure: Figure | None = None) -> Figure:
    """Left: KV reserved vs used over time (the chosen policy). Middle: sequences running, per policy.
    Right: waste (% of reserved KV) per policy, with the sequences each runs at once.

    Given a `figure` this function drew before, its artists are updated in place (a panel's redraw: making
    the axes, ticks and legends again cost about as much as drawing them); else a new figure is made.
    """
    if figure is not None and not hasattr(figure, "_labkit_serving"):
        raise ValueError("figure must be one serving_figure made (or None for a new one)")
    fig, artists = (figure, figure._labkit_serving) if figure is not None else _serving_axes()
    _draw_serving(artists, state)
    return fig


def serving_panel(rows: Sequence[dict] | None = None, mix: str = "chat", block_size: int = 16, policy: str = "paged",
                  budget_gib: int = 8) -> Panel:
    """Request mix / block size / policy / budget controls → memory over time, sequences served and waste per policy.

    `rows`: a serving_sweep (the notebook computes it once, cached); without it each new setting simulates.
    """
    import ipywidgets as W

    serving_state(mix, block_size, policy, budget_gib, rows)           # a bad start is named before any widget
    style = {"description_width": "90px"}
    block_options = sorted({r["block_size"] for r in rows if r["block_size"]}) if rows else list(SERVING_BLOCK_SIZES)
    budget_options = sorted({r["budget_gib"] for r in rows}) if rows else list(SERVING_BUDGETS_GIB)
    controls = {
        "mix": W.Dropdown(options=list(SERVING_MIXES), value=mix, description="request mix", style=style),
        "policy": W.Dropdown(options=list(SERVING_POLICIES), value=policy, description="policy", style=style),
        "block_size": W.SelectionSlider(options=block_options, value=block_size, description="block (tokens)",
                                        style=style),
        "budget_gib": W.SelectionSlider(options=budget_options, value=budget_gib, description="budget (GiB)",
                                        style=style),
    }
    output = W.Output()
    panel = Panel(widget=None, output=output, controls=controls)

    def refresh(*_):
        t0 = time.perf_counter()
        panel.state = serving_state(**{k: c.value for k, c in controls.items()}, rows=rows)
        panel.figure = serving_figure(panel.state, panel.figure)      # the same figure, its artists updated
        render_into(output, panel.figure, panel.state["text"], panel=panel, tight=False)
        panel.render_ms = (time.perf_counter() - t0) * 1000

    return wire_panel(panel, refresh, None, n_left=2)
