"""Interactive panels for the labs: pure functions compute, thin ipywidgets wiring displays.

Each panel is two layers:
- a `*_state(...)` function: plain arguments in, numbers and a matplotlib Figure out. Tests call
  it directly, and it is fast enough (a few ms) to re-run on every slider move;
- a `*_panel(...)` function that builds sliders and an Output, and on every change writes the
  state's figure and text into the Output with `outputs = ()` + `append_display_data` /
  `append_stdout`, which renders in JupyterLab, under nbval, and with no frontend at all.
Tests drive a panel by setting a slider's `.value` and reading `panel.state` / the Output.
"""
from labkit.widgets.core import GiB, Panel, figure_png, human_bytes, quietly, render_into, wire_panel  # noqa: F401
from labkit.widgets.calculator import (CALCULATOR_DTYPES, CALCULATOR_OPTIMIZERS, CALCULATOR_PRESETS,  # noqa: F401
                                       CATEGORIES, CATEGORY_COLORS, memory_calculator_figure, memory_calculator_panel,
                                       memory_calculator_state)
from labkit.widgets.lm import (LM_FAMILY_STYLES, LM_OTHER_STYLES, lm_memory_loss_figure,  # noqa: F401
                               lm_memory_loss_panel, lm_memory_loss_state, pareto_front)
from labkit.widgets.kv_cache import (KV_TRADEOFF_CONTEXTS, KV_TRADEOFF_PRESETS, kv_cache_tradeoff_figure,  # noqa: F401
                                     kv_cache_tradeoff_panel, kv_cache_tradeoff_state)
