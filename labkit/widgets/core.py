"""What every panel shares: the Panel record, PNG rendering into an Output, batched control changes,
two-column wiring, and byte / count formatting. See labkit/widgets/__init__.py for the pattern.

Two things every panel gets from here:
- a redraw replaces the Output's text and image in ONE step (`render_into` sets `output.outputs` to the
  complete new tuple), so the plot never vanishes while a slider moves, and sliders report only where a
  drag ends (`continuous_update=False`, set by `wire_panel`), so a drag costs one redraw, not twenty;
- a panel displays as the live widget AND, in the same output, as a PNG of its current figure plus a line
  of text (`Panel._repr_mimebundle_`). A live JupyterLab shows the widget (it ranks the widget view
  first); a notebook viewer that has no widget state (GitHub, nbviewer, `jupyter nbconvert --to html`)
  shows the PNG, so a lab read before it is run still shows its plots.
"""
from __future__ import annotations

import base64
import contextlib
import io
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import matplotlib

matplotlib.use(matplotlib.get_backend() if matplotlib.get_backend().lower() != "macosx" else "Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

GiB = 2 ** 30
#: dots per inch of every panel PNG: sharp enough to read 8-pt labels, small enough to redraw fast
PANEL_DPI = 90


def binary_unit(n_bytes: float) -> tuple[str, int]:
    """The binary unit (name, bytes) that shows `n_bytes` as a number between 1 and 1024 ('bytes', 1 below 1 KiB)."""
    for unit, size in (("TiB", 2 ** 40), ("GiB", GiB), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if abs(n_bytes) >= size:
            return unit, size
    return "bytes", 1


def human_bytes(n: float) -> str:
    """'1.50 GiB'-style text for a byte count (binary units; below 1 KiB: '512 bytes')."""
    unit, size = binary_unit(n)
    return f"{int(n)} bytes" if size == 1 else f"{n / size:.2f} {unit}"


def human_count(n: float) -> str:
    """'6.74 billion'-style text for a count (of parameters, tokens...): words, never a bare 'B' or 'M'."""
    for word, size in (("trillion", 1e12), ("billion", 1e9), ("million", 1e6), ("thousand", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {word}" if abs(n) < 100 * size else f"{n / size:,.0f} {word}"
    return f"{int(n):,}"


def _png_base64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


@dataclass
class Panel:
    """A displayed panel: its widget tree, its Output, the controls by name, and the last state drawn.

    `png` and `text` hold what the Output shows now. Displaying a panel sends one output with the widget
    view, the PNG and the text (see `_repr_mimebundle_`).
    """

    widget: Any
    output: Any
    controls: dict[str, Any]
    state: dict = field(default_factory=dict)
    figure: Any = None            # the last Figure drawn (closed, but its artists can be inspected)
    refresh: Callable[[], None] | None = None
    png: bytes | None = None      # the last figure as PNG bytes
    text: str = ""                # the last line of text shown above the figure
    render_ms: float = 0.0        # how long the last redraw took (state + figure + PNG), in milliseconds

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        """The widget view for a live frontend, plus the Output's current PNG and text for everything else.

        JupyterLab ranks the widget view above image/png, so a live notebook shows only the widget (whose
        Output holds the same picture); nbconvert, nbviewer and GitHub have no live widget without saved
        widget state, and show the PNG and the text instead of "VBox(children=(...".
        """
        bundle = dict(self.widget._repr_mimebundle_(include=include, exclude=exclude) or {})
        png, text = None, []
        for out in self.output.outputs:
            if out.get("output_type") == "stream":
                text.append(out.get("text", ""))
            elif "image/png" in out.get("data", {}):
                png = out["data"]["image/png"]
        if png is not None:
            bundle["image/png"] = png
        bundle["text/plain"] = "".join(text).strip() or self.text or "(an interactive panel: run the cell to use it)"
        return bundle


def figure_png(fig: plt.Figure, dpi: int = PANEL_DPI, tight: bool = True) -> bytes:
    """The figure rendered to PNG bytes by Agg at `dpi`.

    tight=True crops to the drawn artists (bbox_inches="tight"), which costs a second layout pass; a figure
    laid out once with fixed margins (subplots_adjust, as the calculator and KV panels do) passes
    tight=False and is drawn once.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, **({"bbox_inches": "tight"} if tight else {}))
    return buf.getvalue()


def render_into(output, fig: plt.Figure | None, text: str | None = None, panel: Panel | None = None,
                tight: bool = True) -> None:
    """Replace what an Output shows with a line of text and a PNG of the figure, in one step.

    The new outputs are built first and assigned as one tuple, so a frontend swaps the old text and image
    for the new ones at once (clearing first and then appending made the plot vanish during a drag). The
    figure goes in as an explicit PNG, so it renders the same in JupyterLab, under nbval, in a saved
    notebook and with no frontend at all. With `panel`, its `png` and `text` are updated too; `tight` is
    passed to `figure_png`.
    """
    outputs = []
    if text:
        outputs.append({"output_type": "stream", "name": "stdout", "text": text + "\n"})
    png = None
    if fig is not None:
        png = figure_png(fig, tight=tight)
        plt.close(fig)
        outputs.append({"output_type": "display_data", "metadata": {},
                        "data": {"image/png": _png_base64(png), "text/plain": text or "figure"}})
    output.outputs = tuple(outputs)
    if panel is not None:
        panel.png, panel.text = png, text or ""


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
    two columns (the first n_left on the left) above the Output, and draw once.

    Sliders get `continuous_update=False`: a drag reports its end value only, so it costs one redraw.
    """
    import ipywidgets as W

    controls = panel.controls
    if on_preset is not None:
        controls["preset"].observe(on_preset, "value")
    for key, c in controls.items():
        if isinstance(c, (W.IntSlider, W.FloatSlider, W.FloatLogSlider, W.SelectionSlider)):
            c.continuous_update = False
        if key != "preset":
            c.observe(refresh, "value")
    widgets_ = list(controls.values())
    panel.widget = W.VBox([W.HBox([W.VBox(widgets_[:n_left]), W.VBox(widgets_[n_left:])]), panel.output])
    panel.refresh = refresh
    refresh()
    return panel


def _bytes_axis(ax, axis: str, values: list[float]) -> None:
    """Log2 byte axis over `values` with at most ~8 ticks labelled in binary units (KiB, MiB, GiB)."""
    lo, hi = math.floor(math.log2(min(values))), math.ceil(math.log2(max(values)))
    step = max(1, math.ceil((hi - lo) / 7))
    ticks = [2.0 ** e for e in range(lo, hi + 1, step)]
    getattr(ax, f"set_{axis}scale")("log", base=2)
    getattr(ax, f"set_{axis}ticks")(ticks, [human_bytes(t).replace(".00", "") for t in ticks])
    getattr(ax, f"set_{axis}lim")(2.0 ** lo / 1.3, 2.0 ** hi * 1.3)
    getattr(ax, f"{axis}axis").set_minor_locator(matplotlib.ticker.NullLocator())


def pareto_beats(q: tuple, p: tuple, y_tolerance: float = 0.0, n_se: float = 2.0) -> bool:
    """Whether point q = (x, y[, se]) beats point p (smaller x and smaller y are better) beyond the noise.

    q beats p when q.x <= p.x and either q.y < p.y − (y_tolerance + n_se·(se_p + se_q)) (better by more than
    the noise of the pair) or q.y == p.y and q.x < p.x (the same quality for fewer bytes). A missing se is 0.
    The rule of `pareto_front`, for one pair; it checks nothing (pareto_front checks its inputs).
    """
    gap = y_tolerance + n_se * ((p[2] if len(p) > 2 else 0.0) + (q[2] if len(q) > 2 else 0.0))
    return q[0] <= p[0] and (q[1] < p[1] - gap or (q[1] == p[1] and q[0] < p[0]))


def pareto_front(xs, ys, y_tolerance: float = 0.0, ses=None, n_se: float = 2.0) -> list[int]:
    """Indices of the points no other point beats (smaller x and smaller y are better), sorted by x.

    Point q beats point p when q.x <= p.x and either q.y < p.y − (y_tolerance + n_se·(se_p + se_q)) (better
    by more than the noise) or q.y == p.y and q.x < p.x (the same quality for fewer bytes, e.g. one model in
    two storage formats); `pareto_beats` is that rule for one pair. With y_tolerance = 0 and no ses this is the
    usual front. The noise comes in two forms, which add:
    - y_tolerance (units of ys): one gap for every pair, e.g. 2·the largest standard error of the ys;
    - ses (one per point, units of ys; None = all 0) with n_se: each point's standard error of its PAIRED
      difference to one common reference, measured on the same examples. Since p − q = (p − ref) − (q − ref),
      SE(p − q) ≤ se_p + se_q whatever their correlation, so n_se·(se_p + se_q) bounds n_se SEs of the pair's
      own difference: near the reference it is far smaller than an unpaired SE.
    A point whose y is within the noise of a cheaper point's stays on the front: the data cannot rank them.
    Of exact duplicates (same x and y) only the first index is kept. Ties in x are listed by y, then by index.
    """
    xs, ys = list(xs), list(ys)
    if len(xs) != len(ys):
        raise ValueError(f"xs and ys must have the same length, got {len(xs)} and {len(ys)}")
    for name, values in (("xs", xs), ("ys", ys)):
        for i, v in enumerate(values):
            if not _finite_number(v):
                raise ValueError(f"{name}[{i}]={v!r}: every coordinate must be a finite number")
    if not (_finite_number(y_tolerance) and y_tolerance >= 0):
        raise ValueError(f"y_tolerance={y_tolerance!r} must be a finite number >= 0 (in the units of ys)")
    ses = [0.0] * len(xs) if ses is None else list(ses)
    if len(ses) != len(xs):
        raise ValueError(f"ses must have one entry per point: got {len(ses)} for {len(xs)} points")
    for i, v in enumerate(ses):
        if not (_finite_number(v) and v >= 0):
            raise ValueError(f"ses[{i}]={v!r}: every standard error must be a finite number >= 0 (in the units of ys)")
    if not (_finite_number(n_se) and n_se >= 0):
        raise ValueError(f"n_se={n_se!r} must be a finite number >= 0 (standard errors)")
    y_tolerance, n_se = float(y_tolerance), float(n_se)
    pts = [(float(x), float(y), float(se)) for x, y, se in zip(xs, ys, ses)]
    keys = [(x, y) for x, y, _ in pts]

    front = [i for i, p in enumerate(pts)
             if not any(pareto_beats(q, p, y_tolerance, n_se) for q in pts)
             and keys.index(keys[i]) == i]                                    # keys.index: first of duplicates
    return sorted(front, key=lambda i: (pts[i][0], pts[i][1], i))


def _finite_number(v) -> bool:
    """True for a finite int or float (numpy scalars too); False for bools, strings, NaN and infinities."""
    if isinstance(v, (bool, str, bytes)):
        return False
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def check_sweep_frame(sweep: Any, needed: list[str], rules, made_by: str = "", optional=()) -> None:
    """The checks every panel's sweep DataFrame shares: a DataFrame, the `needed` columns, rows, each rule's
    column a finite number it allows ((column, ok, allowed words) triples; `optional` rules only where the sweep
    has that column), perplexity = exp(loss). Raises TypeError/ValueError naming the column, the row and what is
    allowed."""
    import pandas as pd

    if not isinstance(sweep, pd.DataFrame):
        raise TypeError(f"sweep must be a pandas DataFrame{made_by}, got {type(sweep).__name__}")
    missing = [c for c in needed if c not in sweep.columns]
    if missing:
        raise ValueError(f"sweep lacks the column(s) {missing}; a sweep needs {needed}")
    if len(sweep) == 0:
        raise ValueError("sweep has no rows")
    for column, ok, allowed in (*rules, *(rule for rule in optional if rule[0] in sweep.columns)):
        for i, v in zip(sweep.index, sweep[column]):
            if not (_finite_number(v) and ok(float(v))):
                raise ValueError(f"sweep[{column!r}] at row {i!r} is {v!r}; allowed: a finite number {allowed}")
    for i, loss, ppl in zip(sweep.index, sweep["loss"], sweep["perplexity"]):
        if not math.isclose(float(ppl), math.exp(float(loss)), rel_tol=1e-3):
            raise ValueError(f"sweep row {i!r}: perplexity {ppl!r} is not exp(loss) = {math.exp(float(loss)):.6g}")
