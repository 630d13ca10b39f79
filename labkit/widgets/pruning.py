"""Lab 04: perplexity against sparsity for each pruning method, and bytes against perplexity for each storage format.

A sweep is a pandas DataFrame with one row per pruned model, measured in the lab's run:
- method ("magnitude", "wanda", "random"...), scope ("layer" or "global"), sparsity (fraction removed, 0 ≤ s < 1);
- loss (mean nats/char on the lab's evaluation set), loss_se (its standard error, nats/char) and
  perplexity (exp(loss));
- one `<fmt>_bytes` column per labkit.sparse.FORMATS entry: the bytes with the pruned matrices stored in `fmt`
  (of those matrices alone, or of the whole model with the rest dense: the panel shows whichever it is given);
- optionally increase_se: the standard error of the row's paired loss difference to the dense model on the same
  windows (labkit.evaluate.paired_difference; 0 for the dense row). Given, the front's noise is built from it.
The dense model is the row with sparsity 0 (pruning nothing gives the same model with any method).

The panel draws perplexity with its ± 2·SE band, exp(loss ± 2·loss_se), and a memory-vs-quality front that
does not rank points whose losses differ by less than the noise. With increase_se (every row scored on the
same windows) two rows p and q are ranked only when their losses differ by more than 2·(se_p + se_q), a bound on
2·SE of their own paired difference (`core.pareto_front` with ses=increase_se): near the dense model that is several
times smaller than loss_se, far from it larger. Without it: `core.pareto_front` with y_tolerance 2·max(loss_se).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import matplotlib.ticker
from matplotlib.figure import Figure

from labkit.sparse import FORMATS
from labkit.widgets.core import (Panel, _bytes_axis, _finite_number, check_sweep_frame, human_bytes, pareto_front, quietly, render_into,
                                 wire_panel)

SWEEP_COLUMNS = ("method", "scope", "sparsity", "loss", "loss_se", "perplexity")
NUMBER_COLUMNS = ("sparsity", "loss", "loss_se", "perplexity", "increase_se", *(f"{fmt}_bytes" for fmt in FORMATS))
PAIRED_SE = "increase_se"   # optional column: SE of the paired loss difference to the dense model (nats/char)
SCOPES = ("layer", "global")
METHOD_COLORS = {"magnitude": "#4C72B0", "wanda": "#55A868", "random": "#8C8C8C"}
OTHER_COLORS = ("#8172B3", "#DA8BC3", "#937860", "#CCB974")
FORMAT_STYLES = {"dense": ("#4C72B0", "s"), "coo": ("#DD8452", "v"), "csr": ("#C44E52", "o"),
                 "bitmap": ("#55A868", "D"), "relative": ("#8172B3", "^")}
#: the noise band: ± this many standard errors of the loss
BAND_SE = 2.0


def _bytes_column(fmt: str) -> str:
    return f"{fmt}_bytes"


def check_pruning_sweep(sweep: Any) -> None:
    """Raise a TypeError/ValueError naming what is wrong with a sweep DataFrame (columns, values, the dense row)."""
    check_sweep_frame(sweep, list(SWEEP_COLUMNS) + [_bytes_column(f) for f in FORMATS], (
        ("sparsity", lambda v: 0 <= v < 1, "in [0, 1)"),
        ("loss", lambda v: v >= 0, ">= 0 (nats/char)"),
        ("loss_se", lambda v: v >= 0, ">= 0 (nats/char)"),
        ("perplexity", lambda v: v >= 1, ">= 1"),
        *((_bytes_column(f), lambda v: v > 0, "> 0 (bytes)") for f in FORMATS)),
        optional=((PAIRED_SE, lambda v: v >= 0, ">= 0 (nats/char)"),))
    bad_scopes = sorted(set(sweep["scope"]) - set(SCOPES), key=str)
    if bad_scopes:
        raise ValueError(f"sweep['scope'] holds {bad_scopes}; allowed: {SCOPES}")
    if not (sweep["sparsity"] == 0).any():
        raise ValueError("sweep has no dense model: add a row with sparsity 0.0 (pruning nothing, any method)")


@dataclass(frozen=True)
class SweepTable:
    """A checked sweep as plain Python: the rows by (method, scope, sparsity), in the sweep's method order."""

    rows: dict[tuple[str, str, float], dict]
    methods: list[str]
    dense: dict                              # the dense model's row (sparsity 0)

    def scopes(self, method: str | None = None) -> list[str]:
        present = {sc for m, sc, _ in self.rows if method is None or m == method}
        return [sc for sc in SCOPES if sc in present]

    def sparsities(self, method: str, scope: str) -> list[float]:
        return sorted(s for m, sc, s in self.rows if m == method and sc == scope)


def sweep_table(sweep: Any) -> SweepTable:
    """Check a sweep DataFrame (`check_pruning_sweep`) and index its rows once, so a redraw does no pandas work."""
    if isinstance(sweep, SweepTable):
        return sweep
    check_pruning_sweep(sweep)
    rows: dict[tuple[str, str, float], dict] = {}
    for record in sweep.to_dict("records"):
        record = {k: (float(v) if k in NUMBER_COLUMNS else v) for k, v in record.items()}
        key = (record["method"], record["scope"], record["sparsity"])
        if key in rows:
            raise ValueError(f"sweep has two rows for method={key[0]!r}, scope={key[1]!r}, sparsity={key[2]!r}; "
                             "allowed: one row per (method, scope, sparsity)")
        rows[key] = record
    zero = [r for r in rows.values() if r["sparsity"] == 0]
    return SweepTable(rows=rows, methods=list(dict.fromkeys(m for m, _, _ in rows)), dense=zero[0])


def _percent(sparsity: float) -> str:
    """'50%', '12.5%': a sparsity as the percentage of weights removed."""
    return f"{100 * sparsity:.3g}%"


def paired_pareto_front(xs, losses, ses, n_se: float = BAND_SE) -> list[int]:
    """`core.pareto_front(xs, losses, ses=ses, n_se=n_se)`: the course's one front rule, by lab 04 notebook's name."""
    return pareto_front(xs, losses, ses=ses, n_se=n_se)


def _band(loss: float, se: float) -> tuple[float, float]:
    """Perplexity at loss ∓ BAND_SE·se: the ± 2·SE band on the perplexity axis."""
    return math.exp(loss - BAND_SE * se), math.exp(loss + BAND_SE * se)


def pruning_state(sweep: Any, method: str, sparsity: float, storage: str, scope: str | None = None) -> dict[str, Any]:
    """The chosen pruned model's perplexity and bytes in `storage`, every method's curve, and the memory-vs-quality front.

    `sweep` is the DataFrame (or its `sweep_table`). `scope` defaults to the method's only scope, or
    "layer" when it has both. Bytes are the sweep's `<storage>_bytes`; `ratio_vs_dense` divides them by
    the dense model's dense bytes. The front (over every storage format and sparsity of the chosen
    method and scope) never ranks differences inside the noise: two rows within BAND_SE·(se_p + se_q) of
    each other's loss, se = increase_se (paired: `core.pareto_front` with ses), or within BAND_SE·max(loss_se)
    when the sweep has no increase_se. `front_noise` names which; `front_tolerance_nats` is the largest
    gap left unranked.
    """
    table = sweep_table(sweep)
    if method not in table.methods:
        raise ValueError(f"method={method!r} is not in the sweep; allowed: {table.methods}")
    scopes = table.scopes(method)
    scope = scopes[0] if scope is None else scope
    if scope not in scopes:
        raise ValueError(f"scope={scope!r} has no rows for method {method!r}; allowed: {scopes}")
    if storage not in FORMATS:
        raise ValueError(f"storage={storage!r}; allowed: {FORMATS}")
    allowed = table.sparsities(method, scope)
    if not _finite_number(sparsity) or not any(abs(sparsity - s) < 1e-9 for s in allowed):
        raise ValueError(f"sparsity={sparsity!r} was not measured for {method} ({scope}); allowed: {allowed}")
    sparsity = min(allowed, key=lambda s: abs(s - sparsity))

    curves = []
    for m in table.methods:
        for sc in table.scopes(m):
            xs = table.sparsities(m, sc)
            rows = [table.rows[m, sc, s] for s in xs]
            bands = [_band(r["loss"], r["loss_se"]) for r in rows]
            curves.append({"method": m, "scope": sc, "sparsity": xs, "perplexity": [r["perplexity"] for r in rows],
                           "low": [b[0] for b in bands], "high": [b[1] for b in bands]})

    own_dense = table.rows.get((method, scope, 0.0))            # pruning nothing: the dense model
    row, dense = table.rows[method, scope, sparsity], own_dense or table.dense
    points = []                                   # every (format, sparsity) of the chosen method and scope
    for fmt in FORMATS:
        for s in allowed:
            r = table.rows[method, scope, s]
            points.append({"format": fmt, "sparsity": s, "bytes": r[_bytes_column(fmt)],
                           "perplexity": r["perplexity"], "loss": r["loss"]})
    paired = all(PAIRED_SE in table.rows[method, scope, s] for s in allowed)
    if paired:
        ses = [table.rows[method, scope, p["sparsity"]][PAIRED_SE] for p in points]
        tolerance = BAND_SE * 2 * max(ses)
        front = [points[i] for i in pareto_front([p["bytes"] for p in points], [p["loss"] for p in points],
                                                 ses=ses, n_se=BAND_SE)]
    else:
        tolerance = BAND_SE * max(table.rows[method, scope, s]["loss_se"] for s in allowed)
        front = [points[i] for i in pareto_front([p["bytes"] for p in points], [p["loss"] for p in points],
                                                 tolerance)]

    chosen_bytes = row[_bytes_column(storage)]
    same_weights_dense = row[_bytes_column("dense")]
    dense_model_bytes = dense[_bytes_column("dense")]
    low, high = _band(row["loss"], row["loss_se"])
    on_front = any(p["format"] == storage and p["sparsity"] == sparsity for p in front)
    state = {
        "method": method, "scope": scope, "sparsity": sparsity, "storage": storage,
        "methods": table.methods, "scopes": scopes, "sparsities": allowed, "formats": list(FORMATS),
        "perplexity": row["perplexity"], "loss": row["loss"], "loss_se": row["loss_se"],
        "perplexity_low": low, "perplexity_high": high,
        "bytes": chosen_bytes, "dense_bytes": same_weights_dense,
        "dense_model": {"perplexity": dense["perplexity"], "bytes": dense_model_bytes, "loss": dense["loss"],
                        "loss_se": dense["loss_se"], "method": dense["method"], "scope": dense["scope"]},
        "ratio_vs_dense": chosen_bytes / dense_model_bytes,
        "saves_bytes": chosen_bytes < same_weights_dense,
        "curves": curves, "points": points, "front": front, "front_tolerance_nats": tolerance,
        "front_noise": ("paired: 2·(se_p + se_q) of the differences to the dense model" if paired
                        else "unpaired: 2·max SE of the loss"),
        "on_front": on_front,
    }

    if storage == "dense":
        verdict = "dense storage keeps every zero, so it saves nothing at any sparsity"
    elif state["saves_bytes"]:
        verdict = (f"{storage} saves {human_bytes(same_weights_dense - chosen_bytes)} against storing the same "
                   f"pruned weights dense")
    else:
        verdict = (f"{storage} takes {human_bytes(chosen_bytes - same_weights_dense)} MORE than storing the same "
                   f"pruned weights dense: at this sparsity its indices cost more than the zeros it drops")
    state["text"] = (
        f"{method} pruning ({scope}) at {_percent(sparsity)} sparsity: perplexity {state['perplexity']:.3f} "
        f"(± 2·SE: {low:.3f}–{high:.3f}) vs the dense model's {state['dense_model']['perplexity']:.3f}. "
        f"Stored as {storage}: {human_bytes(chosen_bytes)}, {state['ratio_vs_dense']:.2f}× the dense model's "
        f"{human_bytes(dense_model_bytes)}; {verdict}. "
        + ("This point is on the memory-vs-quality front." if on_front else
           "This point is not on the memory-vs-quality front: another format or sparsity is smaller and no worse "
           "beyond the noise."))
    return state


def _method_color(methods: list[str], method: str) -> str:
    others = [m for m in methods if m not in METHOD_COLORS]
    return METHOD_COLORS.get(method) or OTHER_COLORS[others.index(method) % len(OTHER_COLORS)]


def _perplexity_axis(ax, values: list[float]) -> None:
    """Log perplexity axis with plain number labels (1, 2, 5, 10, 20 ...): no mathtext, which is slow to lay out."""
    lo, hi = min(values), max(values)
    ax.set_yscale("log")
    nice = [m * 10 ** e for e in range(6) for m in (1, 1.5, 2, 3, 5, 7)]
    ticks = [t for t in nice if lo / 1.15 <= t <= hi * 1.15]
    if len(ticks) > 7:
        ticks = ticks[::math.ceil(len(ticks) / 7)]
    if len(ticks) < 2:
        ticks = [round(lo, 2), round(hi, 2)] if hi > lo else [round(lo, 2)]
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_ylim(lo / 1.15, hi * 1.15)


def pruning_figure(state: dict) -> Figure:
    """Left: perplexity vs sparsity per method (± 2·SE bands). Right: bytes vs perplexity per storage format, the front."""
    fig = Figure(figsize=(12.4, 4.2))
    fig.subplots_adjust(left=0.06, right=0.865, bottom=0.13, top=0.91, wspace=0.25)
    left, right = fig.subplots(1, 2)

    ppl_values = [state["dense_model"]["perplexity"]]
    for c in state["curves"]:
        chosen_scope = c["scope"] == state["scope"]
        color = _method_color(state["methods"], c["method"])
        xs = [100 * s for s in c["sparsity"]]
        is_chosen = c["method"] == state["method"] and chosen_scope
        left.plot(xs, c["perplexity"], "-" if chosen_scope else "--", marker="o", ms=3, color=color,
                  lw=2.2 if is_chosen else 1.2, alpha=1.0 if chosen_scope else 0.6,
                  label=f"{c['method']} ({c['scope']})")
        if chosen_scope:
            left.fill_between(xs, c["low"], c["high"], color=color, alpha=0.18, lw=0)
            ppl_values += c["low"] + c["high"]
        ppl_values += c["perplexity"]
    left.axhline(state["dense_model"]["perplexity"], color="k", lw=1, ls=":",
                 label=f"dense model ({state['dense_model']['perplexity']:.2f})")
    left.plot([100 * state["sparsity"]], [state["perplexity"]], "o", ms=11, mfc="none", mec="#C44E52", mew=2,
              label=f"chosen: {state['method']} at {_percent(state['sparsity'])}")
    _perplexity_axis(left, ppl_values)
    left.set_xlabel("sparsity (% of the prunable weights removed)")
    left.set_ylabel("validation perplexity (log scale)")
    left.set_title(f"perplexity vs sparsity (bands: ± {BAND_SE:g}·SE; solid: {state['scope']} scope)", fontsize=10)
    left.legend(fontsize=7, loc="upper left")

    points = state["points"]
    for fmt in state["formats"]:
        pts = [p for p in points if p["format"] == fmt]
        color, marker = FORMAT_STYLES.get(fmt, ("#8C8C8C", "x"))
        right.plot([p["bytes"] for p in pts], [p["perplexity"] for p in pts], "-", marker=marker, ms=4,
                   color=color, lw=1.2 if fmt != state["storage"] else 2.2, alpha=0.85, label=fmt)
    front = state["front"]
    right.step([p["bytes"] for p in front], [p["perplexity"] for p in front], where="post", color="k", lw=1,
               ls="--", zorder=1, label=f"Pareto front\n(gaps < {BAND_SE:g}·SE\nnot ranked)")
    dense = state["dense_model"]
    right.plot([dense["bytes"]], [dense["perplexity"]], "*", ms=14, color="k", zorder=4,
               label=f"dense model ({human_bytes(dense['bytes'])})")
    right.plot([state["bytes"]], [state["perplexity"]], "o", ms=12, mfc="none", mec="#C44E52", mew=2, zorder=5,
               label=f"chosen: {state['storage']} at {_percent(state['sparsity'])}")
    _bytes_axis(right, "x", [p["bytes"] for p in points] + [dense["bytes"]])
    _perplexity_axis(right, [p["perplexity"] for p in points] + [dense["perplexity"]])
    right.set_xlabel("model bytes, pruned matrices stored in each format (log scale)")
    right.set_ylabel("validation perplexity (log scale)")
    right.set_title(f"{state['method']} ({state['scope']}): memory vs quality, lower-left is better", fontsize=10)
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)   # beside: no data hidden
    return fig


def pruning_panel(sweep: Any, method: str | None = None, sparsity: float | None = None,
                  storage: str = "csr") -> Panel:
    """Sparsity slider, method (and scope) and storage-format menus → perplexity and bytes from a precomputed sweep."""
    import ipywidgets as W

    table = sweep_table(sweep)                    # checked and indexed once: a redraw does no pandas work
    method = table.methods[0] if method is None else method
    if method not in table.methods:
        raise ValueError(f"method={method!r} is not in the sweep; allowed: {table.methods}")
    if storage not in FORMATS:
        raise ValueError(f"storage={storage!r}; allowed: {FORMATS}")
    scope = table.scopes(method)[0]
    allowed = table.sparsities(method, scope)
    start = min(allowed, key=lambda s: abs(s - (0.5 if sparsity is None else sparsity)))
    style = {"description_width": "70px"}

    def slider_options(values: list[float]) -> list[tuple[str, float]]:
        return [(_percent(s), s) for s in values]

    controls: dict[str, Any] = {"method": W.Dropdown(options=table.methods, value=method, description="method",
                                                     style=style)}
    if len(table.scopes()) > 1:                    # the sweep pruned per layer AND globally
        controls["scope"] = W.Dropdown(options=table.scopes(method), value=scope, description="scope", style=style)
    controls["sparsity"] = W.SelectionSlider(options=slider_options(allowed), value=start, description="sparsity",
                                             style=style)
    controls["storage"] = W.Dropdown(options=list(FORMATS), value=storage, description="storage", style=style)
    output = W.Output()
    panel = Panel(widget=None, output=output, controls=controls)

    def refresh(*_):
        t0 = time.perf_counter()
        m = controls["method"].value
        with quietly(controls, refresh, [k for k in ("scope", "sparsity") if k in controls]):
            scopes = table.scopes(m)               # a method may have been run in one scope only
            if "scope" in controls and list(controls["scope"].options) != scopes:
                keep = controls["scope"].value
                controls["scope"].options = scopes
                controls["scope"].value = keep if keep in scopes else scopes[0]
            sc = controls["scope"].value if "scope" in controls else scopes[0]
            values = table.sparsities(m, sc)
            if [v for _, v in controls["sparsity"].options] != values:
                keep = controls["sparsity"].value
                controls["sparsity"].options = slider_options(values)
                controls["sparsity"].value = min(values, key=lambda s: abs(s - keep))
        panel.state = pruning_state(table, m, controls["sparsity"].value, controls["storage"].value, scope=sc)
        panel.figure = pruning_figure(panel.state)
        render_into(output, panel.figure, panel.state["text"], panel=panel, tight=False)
        panel.render_ms = (time.perf_counter() - t0) * 1000

    return wire_panel(panel, refresh, None, n_left=2)
