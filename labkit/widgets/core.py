"""What every panel shares: the Panel record, PNG rendering into an Output, batched control changes,
two-column wiring, and byte formatting. See labkit/widgets/__init__.py for the pattern."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import matplotlib

matplotlib.use(matplotlib.get_backend() if matplotlib.get_backend().lower() != "macosx" else "Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

GiB = 2 ** 30


def human_bytes(n: float) -> str:
    """'1.50 GiB'-style text for a byte count (binary units)."""
    for unit, size in (("TiB", 2 ** 40), ("GiB", GiB), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"



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



def _bytes_axis(ax, axis: str, values: list[float]) -> None:
    """Log2 byte axis over `values` with at most ~8 ticks labelled in binary units (KiB, MiB, GiB)."""
    lo, hi = math.floor(math.log2(min(values))), math.ceil(math.log2(max(values)))
    step = max(1, math.ceil((hi - lo) / 7))
    ticks = [2.0 ** e for e in range(lo, hi + 1, step)]
    getattr(ax, f"set_{axis}scale")("log", base=2)
    getattr(ax, f"set_{axis}ticks")(ticks, [human_bytes(t).replace(".00", "") for t in ticks])
    getattr(ax, f"set_{axis}lim")(2.0 ** lo / 1.3, 2.0 ** hi * 1.3)
    getattr(ax, f"{axis}axis").set_minor_locator(matplotlib.ticker.NullLocator())
