"""Lab 01: validation loss against parameter memory for the lab's models, with a budget and the Pareto front."""
from __future__ import annotations

import math
from typing import Any

import matplotlib.pyplot as plt

from labkit.widgets.core import Panel, human_bytes, render_into

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
