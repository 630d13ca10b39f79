"""Lab 01: validation loss against memory for the lab's models, with error bars, a budget and a noise-aware Pareto front.

A "point" is a dict with name, family, param_bytes (bytes the model's parameters or tables occupy),
val_loss (nats per character on the lab's evaluation set) and optionally val_loss_err (its noise,
nats/char, drawn as an error bar). Two models whose losses differ by less than `tolerance` (the
noise the lab measured) are treated as tied: neither is said to beat the other.
"""
from __future__ import annotations

import math
from typing import Any

import matplotlib.pyplot as plt

from labkit.widgets.core import Panel, _bytes_axis, human_bytes, pareto_front, render_into

LM_FAMILY_STYLES = {"n-gram": ("#937860", "s"), "n-gram (dense)": ("#937860", "s"),
                    "n-gram (sparse)": ("#C9A66B", "s"), "LSTM": ("#DD8452", "^"), "conv": ("#55A868", "D"),
                    "GPT": ("#4C72B0", "o")}
LM_OTHER_STYLES = (("#8172B3", "*"), ("#DA8BC3", "P"), ("#8C8C8C", "X"))  # red is kept for the budget


def pareto_points(points: list[dict], x: str = "param_bytes", y: str = "val_loss", tolerance: float = 0.0) -> list[dict]:
    """The point dicts on the Pareto front (`core.pareto_front` on their x and y), sorted by x.

    With tolerance 0 this is the usual front (smaller is better on both axes). With the noise as
    tolerance, a model whose loss is within the noise of a smaller model's stays on the front: the
    data cannot say that the smaller one is better.
    """
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise ValueError(f"tolerance must be a finite number >= 0 (nats/char), got {tolerance}")
    front = pareto_front([p[x] for p in points], [p[y] for p in points], y_tolerance=tolerance)
    return [points[i] for i in front]


def _check_points(points: list[dict]) -> None:
    for p in points:
        missing = {"name", "family", "param_bytes", "val_loss"} - set(p)
        if missing:
            raise ValueError(f"each point needs name, family, param_bytes and val_loss; {p!r} lacks {sorted(missing)}")
        if not p["param_bytes"] > 0:
            raise ValueError(f"param_bytes must be > 0 (the axis is logarithmic), got {p['param_bytes']!r} for {p['name']!r}")


def lm_memory_loss_state(points: list[dict], families: list[str] | tuple[str, ...] | None = None,
                         budget_bytes: float | None = None, tolerance: float = 0.0,
                         references: list[dict] | None = None) -> dict[str, Any]:
    """Which models are shown, their noise-aware Pareto front, and the best model within `budget_bytes` (with ties).

    `tolerance` (nats/char) is the noise below which two losses count as tied; `references` are
    horizontal lines drawn for comparison (dicts with name and val_loss, e.g. a compressor's rate).
    """
    _check_points(points)
    known = list(dict.fromkeys(p["family"] for p in points))
    families = known if families is None else list(families)
    unknown = sorted(set(families) - set(known))
    if unknown:
        raise ValueError(f"families={unknown} are not among the points' families; allowed: {known}")
    shown = [p for p in points if p["family"] in families]
    affordable = [p for p in shown if budget_bytes is None or p["param_bytes"] <= budget_bytes]
    best = min(affordable, key=lambda p: (p["val_loss"], p["param_bytes"])) if affordable else None
    tied = [p for p in affordable if best is not None and p is not best and p["val_loss"] <= best["val_loss"] + tolerance]
    budget_text = "no budget" if budget_bytes is None else f"a budget of {human_bytes(budget_bytes)}"
    if not shown:
        text = "no model family selected"
    elif best is None:
        text = f"with {budget_text}, none of the {len(shown)} models shown fits"
    else:
        text = (f"with {budget_text}: lowest loss {best['name']} ({best['family']}), {best['val_loss']:.3f} "
                f"nats/char, {human_bytes(best['param_bytes'])}; {len(affordable)} of {len(shown)} models fit")
        if tied:
            text += (f"; tied with it (within ±{tolerance:.3f} nats/char, the noise): "
                     + ", ".join(p["name"] for p in sorted(tied, key=lambda p: p["val_loss"])))
    return {"families": families, "all_families": known, "shown": shown, "affordable": affordable,
            "front": pareto_points(shown, tolerance=tolerance), "strict_front": pareto_points(shown),
            "best": best, "tied": tied, "tolerance": tolerance, "budget_bytes": budget_bytes,
            "references": list(references or []), "text": text}


def lm_memory_loss_figure(state: dict) -> plt.Figure:
    """Validation loss (nats/char) against memory (bytes, log scale): error bars, Pareto front ± noise, budget."""
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    others = iter(LM_OTHER_STYLES * 4)
    styles = {f: LM_FAMILY_STYLES.get(f) or next(others) for f in state["all_families"]}
    front_names = {p["name"] for p in state["front"]}
    for family in state["families"]:
        pts = [p for p in state["shown"] if p["family"] == family]
        color, marker = styles[family]
        xs, ys = [p["param_bytes"] for p in pts], [p["val_loss"] for p in pts]
        errs = [p.get("val_loss_err", 0.0) or 0.0 for p in pts]
        ax.errorbar(xs, ys, yerr=errs, fmt="none", ecolor=color, elinewidth=1, capsize=3, zorder=3)
        ax.scatter(xs, ys, color=color, marker=marker, s=110 if marker == "*" else 45, label=family, zorder=4,
                   edgecolors=["k" if p["name"] in front_names else color for p in pts], linewidths=1)
        for p in pts:
            ax.annotate(p["name"], (p["param_bytes"], p["val_loss"]), textcoords="offset points", xytext=(5, 4),
                        fontsize=7, color=color)
    strict = state["strict_front"]
    if strict:
        fx, fy = [p["param_bytes"] for p in strict], [p["val_loss"] for p in strict]
        ax.step(fx, fy, where="post", color="k", lw=1, ls="--", zorder=2,
                label="Pareto front (black-edged points: on it or tied with it)")
        tol = state["tolerance"]
        if tol > 0:
            ax.fill_between(fx, [v - tol for v in fy], [v + tol for v in fy], step="post", color="0.6", alpha=0.25,
                            zorder=1, label=f"± {tol:.3f} nats/char: differences inside are noise")
    for ref, ls in zip(state["references"], (":", "-.", (0, (1, 3)))):
        ax.axhline(ref["val_loss"], color="0.35", lw=1, ls=ls, zorder=1, label=ref["name"])
    values = [p["param_bytes"] for p in state["shown"]] or [1.0]
    if state["budget_bytes"] is not None:
        values = values + [state["budget_bytes"]]
    _bytes_axis(ax, "x", values)
    if state["budget_bytes"] is not None:
        b = state["budget_bytes"]
        ax.axvline(b, color="#C44E52", lw=1.5, label=f"budget {human_bytes(b)}")
        ax.axvspan(b, ax.get_xlim()[1], color="0.85", alpha=0.5, zorder=0)   # what the budget cannot afford
    best = state["best"]
    if best is not None:
        ax.scatter([best["param_bytes"]], [best["val_loss"]], s=260, facecolors="none", edgecolors="#C44E52",
                   linewidths=2, zorder=5, label=f"lowest loss within budget: {best['name']}")
    ax.set_xlabel("memory of the parameters or count tables (bytes, log scale)")
    ax.set_ylabel("loss on the evaluation set (nats/char)")
    ax.set_title("Quality vs memory: lower-left is better")
    ax.legend(fontsize=7, loc="upper right")
    return fig  # no tight_layout: render_into saves with bbox_inches="tight", and each layout pass costs a redraw


def lm_memory_loss_panel(points: list[dict], budget_bytes: float | None = None, tolerance: float = 0.0,
                         references: list[dict] | None = None) -> Panel:
    """Checkboxes for model families and a log slider for the memory budget → the trade-off plot."""
    import ipywidgets as W

    if not points:
        raise ValueError("points must hold at least one model")
    state0 = lm_memory_loss_state(points, tolerance=tolerance, references=references)  # validates the input
    sizes = [p["param_bytes"] for p in points]
    lo, hi = math.log10(min(sizes)) - 0.2, math.log10(max(sizes)) + 0.2
    budget = budget_bytes if budget_bytes is not None else 10 ** ((lo + hi) / 2)
    controls: dict[str, Any] = {f"show {f}": W.Checkbox(value=True, description=f, indent=False)
                                for f in state0["all_families"]}
    # the slider's own readout would print raw bytes ("5.24e+5"): a label beside it shows KiB/MiB instead
    controls["budget_bytes"] = W.FloatLogSlider(value=min(max(budget, 10 ** lo), 10 ** hi), base=10, min=lo, max=hi,
                                                step=0.01, description="budget", readout=False,
                                                continuous_update=False, style={"description_width": "60px"},
                                                layout=W.Layout(width="460px"))
    budget_label = W.Label()
    output = W.Output()
    panel = Panel(widget=None, output=output, controls=controls)

    def refresh(*_):
        families = [f for f in state0["all_families"] if controls[f"show {f}"].value]
        budget_label.value = human_bytes(controls["budget_bytes"].value)
        panel.state = lm_memory_loss_state(points, families, controls["budget_bytes"].value, tolerance, references)
        panel.figure = lm_memory_loss_figure(panel.state)
        render_into(output, panel.figure, panel.state["text"])

    for c in controls.values():
        c.observe(refresh, "value")
    boxes = [controls[f"show {f}"] for f in state0["all_families"]]
    panel.widget = W.VBox([W.HBox(boxes), W.HBox([controls["budget_bytes"], budget_label]), output])
    panel.budget_label = budget_label
    panel.refresh = refresh
    refresh()
    return panel
