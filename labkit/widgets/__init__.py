"""Interactive panels for the labs: pure functions compute, thin ipywidgets wiring displays.

Each panel is two layers:
- a `*_state(...)` function: plain arguments in, numbers and a matplotlib Figure out. Tests call
  it directly, and it is fast enough (a few ms) to re-run on every slider move;
- a `*_panel(...)` function that builds sliders and an Output, and on every change replaces the
  Output's text and PNG in one step (`core.render_into`), which renders in JupyterLab, under nbval,
  and with no frontend at all. A panel displays as the live widget plus a PNG of its figure, so a
  notebook viewer without widget state still shows the plot (`core.Panel._repr_mimebundle_`).
Tests drive a panel by setting a slider's `.value` and reading `panel.state` / the Output.
"""
from labkit.widgets.core import (GiB, PANEL_DPI, Panel, figure_png, human_bytes, human_count, pareto_front,  # noqa: F401
                                 quietly, render_into, wire_panel)
from labkit.widgets.calculator import (ACTIVATION_FORMULAS, CALCULATOR_DTYPES, CALCULATOR_OPTIMIZERS, CALCULATOR_PRESET_SETTINGS,  # noqa: F401
                                       CALCULATOR_PRESETS, CATEGORIES, CATEGORY_COLORS, matching_preset,
                                       memory_calculator_figure, memory_calculator_panel, memory_calculator_state,
                                       preset_config)
from labkit.widgets.lm import (LM_FAMILY_STYLES, LM_OTHER_STYLES, lm_memory_loss_figure,  # noqa: F401
                               lm_memory_loss_panel, lm_memory_loss_state, pareto_points)
from labkit.widgets.kv_cache import (KV_TRADEOFF_CONTEXTS, KV_TRADEOFF_PRESETS, kv_cache_tradeoff_figure,  # noqa: F401
                                     kv_cache_tradeoff_panel, kv_cache_tradeoff_state)
from labkit.widgets.pruning import (FORMAT_STYLES, METHOD_COLORS, SWEEP_COLUMNS, SweepTable,  # noqa: F401
                                    check_pruning_sweep, pruning_figure, pruning_panel, pruning_state, sweep_table)
from labkit.widgets.quantization import (FAMILY_STYLES, SchemeTable, check_quantization_sweep,  # noqa: F401
                                         layer_weight_errors, quantization_figure, quantization_panel,
                                         quantization_state, scheme_family, scheme_group, scheme_table)
from labkit.widgets.distillation import (ResultTable, check_distillation_results, check_teacher_probs,  # noqa: F401
                                         distillation_figure, distillation_panel, distillation_state, result_table,
                                         soft_target_examples, soft_targets_at)
from labkit.widgets.compression import (CompressionTable, check_compression_sweep, compression_figure,  # noqa: F401
                                        compression_panel, compression_state, compression_table)
from labkit.widgets.pools import (POLICY_COLORS, SERVING_BLOCK_SIZES, SERVING_BUDGETS_GIB,  # noqa: F401
                                  SERVING_MIXES, SERVING_POLICIES, memory_map_figure, plan_blocks, replay_blocks,
                                  serving_figure, serving_panel, serving_row, serving_state, serving_sweep)
