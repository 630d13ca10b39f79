"""Widgets are tested without a browser: set a control's value, read what the panel computed and drew."""
import time

import matplotlib

matplotlib.use("Agg")

import pytest

from labkit import widgets
from labkit.memory import gpt_activation_bytes, gpt_param_count, kv_cache_bytes, training_state_bytes
from labkit.model import GPTConfig


def bar_unit_bytes(panel):
    """Bytes per x-axis unit of the panel's figure, read from its axis label."""
    label = panel.figure.axes[0].get_xlabel()
    return {"memory (TiB)": 2**40, "memory (GiB)": widgets.GiB, "memory (MiB)": 2**20, "memory (KiB)": 2**10}[label]


def bar_widths(panel):
    """Widths (in the axis unit) of the stacked bars the panel last drew (and check it was displayed)."""
    shown = panel.output.outputs[-1]
    assert "image/png" in shown["data"], "the panel should have displayed its figure as a PNG"
    ax = panel.figure.axes[0]
    return [patch.get_width() for patch in ax.patches]


def test_state_matches_formulas():
    s = widgets.memory_calculator_state(n_layer=4, n_embd=128, n_head=4, n_kv_head=4, vocab_size=84,
                                        context=64, batch_size=12, dtype="fp32", optimizer="adamw")
    cfg = GPTConfig(vocab_size=84, block_size=64, n_layer=4, n_head=4, n_embd=128)
    n = gpt_param_count(cfg)
    t = training_state_bytes(n, "fp32", "adamw")
    assert s["n_params"] == n
    assert s["bytes"]["params"] == t["params"] and s["bytes"]["optimizer_state"] == t["optimizer_state"]
    assert s["bytes"]["activations"] == gpt_activation_bytes(cfg, 12, 64)["total"]
    assert s["total_bytes"] == sum(s["bytes"].values())
    inf = widgets.memory_calculator_state(4, 128, 4, 4, 84, 64, 12, "bf16", "none (inference)")
    assert inf["bytes"]["kv_cache"] == kv_cache_bytes(4, 4, 32, 64, 12, "bf16")
    assert inf["bytes"]["grads"] == 0 and inf["mode"] == "inference"


def test_state_rejects_bad_choices():
    with pytest.raises(ValueError, match="dtype"):
        widgets.memory_calculator_state(4, 128, 4, 4, 84, 64, 1, dtype="fp8")
    with pytest.raises(ValueError, match="optimizer"):
        widgets.memory_calculator_state(4, 128, 4, 4, 84, 64, 1, optimizer="lion")


def test_panel_redraws_when_a_slider_moves():
    panel = widgets.memory_calculator_panel()
    before_total, before_text = panel.state["total_bytes"], panel.output.outputs[0]["text"]
    before_bars = bar_widths(panel)
    assert sum(before_bars) == pytest.approx(before_total / bar_unit_bytes(panel))
    t0 = time.perf_counter()
    panel.controls["n_layer"].value = 8
    update_ms = (time.perf_counter() - t0) * 1000
    assert panel.state["total_bytes"] > before_total
    assert panel.output.outputs[0]["text"] != before_text
    assert len(panel.output.outputs) == 2  # replaced, not appended: one text + one figure
    after_bars = bar_widths(panel)
    assert sum(after_bars) == pytest.approx(panel.state["total_bytes"] / bar_unit_bytes(panel))
    assert after_bars[0] > before_bars[0]  # the params bar grew with the layers
    assert update_ms < 2000, f"a slider move took {update_ms:.0f} ms"  # generous: CI machines are shared


def test_panel_gqa_shrinks_kv_cache_and_inference_mode():
    panel = widgets.memory_calculator_panel("LLaMA-2-70B")
    panel.controls["optimizer"].value = "none (inference)"
    kv8 = panel.state["bytes"]["kv_cache"]
    panel.controls["n_kv_head"].value = 64
    assert panel.state["bytes"]["kv_cache"] == 8 * kv8


def test_panel_reports_invalid_shape_instead_of_crashing():
    panel = widgets.memory_calculator_panel()
    panel.controls["n_head"].value = 3  # 128 is not divisible by 3
    assert "error" in panel.state
    assert "n_embd" in panel.output.outputs[0]["text"]


def test_panel_reports_an_odd_rotary_head_dim_instead_of_crashing():
    panel = widgets.memory_calculator_panel("LLaMA-2-7B")
    panel.controls["n_embd"].value = 128
    panel.controls["n_head"].value = 128           # head_dim 1: RoPE rotates pairs of channels
    assert "error" in panel.state and "head_dim" in panel.output.outputs[0]["text"]
    panel.controls["n_head"].value = 64            # head_dim 2: allowed, and its bytes are derived
    assert "error" not in panel.state and panel.state["bytes"]["activations"] > 0


def test_preset_dropdown_loads_all_fields_with_one_redraw():
    panel = widgets.memory_calculator_panel()
    redraws = []
    panel.output.observe(lambda change: redraws.append(change), "outputs")
    panel.controls["preset"].value = "LLaMA-2-7B"
    assert len(redraws) == 1
    p = widgets.CALCULATOR_PRESETS["LLaMA-2-7B"]
    assert panel.state["config"].n_layer == p["n_layer"] and panel.state["config"].n_embd == p["n_embd"]
    assert panel.state["n_params"] == 6_738_415_616 and panel.state["preset"] == "LLaMA-2-7B"


def test_baby_preset_counts_the_real_baby_model():
    from labkit.train import build_for_corpus, make_config

    class FakeCorpus:
        vocab_size = 84

    model = build_for_corpus(make_config("gpt", "baby"), FakeCorpus())
    panel = widgets.memory_calculator_panel()
    assert panel.state["n_params"] == model.num_params()
    panel.controls["tie_weights"].value = True
    assert panel.state["n_params"] == model.num_params() - 84 * 128


def test_human_bytes_and_counts_never_say_a_bare_b():
    assert widgets.human_bytes(512) == "512 bytes"
    assert widgets.human_bytes(3 * 2**30) == "3.00 GiB"
    assert widgets.human_count(6_738_415_616) == "6.74 billion"
    assert widgets.human_count(68_976_648_192) == "69 billion"
    assert widgets.human_count(817_280) == "817 thousand" and widgets.human_count(124_439_808) == "124 million"
    assert widgets.human_count(512) == "512"


# ----------------------------------------------------------------------------- presets are the real models

@pytest.mark.parametrize("name, n_params", [("LLaMA-2-7B", 6_738_415_616), ("LLaMA-2-70B", 68_976_648_192),
                                            ("GPT-2 small shape", 124_439_808), ("baby (this course)", 817_280)])
def test_presets_count_the_real_models(name, n_params):
    s = widgets.memory_calculator_state(**widgets.CALCULATOR_PRESETS[name], batch_size=1)
    assert s["n_params"] == n_params == gpt_param_count(widgets.preset_config(name))
    assert s["preset"] == name and f"{n_params:,} parameters" in s["text"]


def test_other_shapes_are_labelled_with_their_real_count():
    p = dict(widgets.CALCULATOR_PRESETS["LLaMA-2-70B"], activation="gelu", mlp_hidden=None)
    s = widgets.memory_calculator_state(**p, batch_size=1)
    assert s["preset"] is None and "LLaMA" not in s["text"]
    assert f"custom shape ({widgets.human_count(s['n_params'])} parameters)" in s["text"]
    assert "55.6 billion" in s["text"]          # the old "70B class" was this: 55.6 billion, not 70


def test_choosing_a_preset_sets_representative_settings():
    panel = widgets.memory_calculator_panel(budget_gib=22)
    c = panel.controls
    c["batch_size"].value, c["context"].value = 40, 256
    c["preset"].value = "LLaMA-2-7B"
    assert (c["batch_size"].value, c["dtype"].value, c["mixed_precision"].value, c["context"].value) == \
        (1, "bf16", True, 4096)
    assert panel.state["master_weights"] and "bf16 + fp32 master weights" in panel.state["text"]
    assert panel.state["bytes"]["master_weights"] == 4 * 6_738_415_616
    c["preset"].value = "baby (this course)"
    assert (c["batch_size"].value, c["dtype"].value, c["context"].value) == (12, "fp32", 64)
    assert c["mixed_precision"].disabled            # fp32: no master weights to keep
    c["dtype"].value = "bf16"
    assert not c["mixed_precision"].disabled
    c["optimizer"].value = "none (inference)"
    assert c["mixed_precision"].disabled and not panel.state["master_weights"]
    assert c["activation_formula"].disabled and panel.state["bytes"]["activations"] == 0


def test_context_beyond_the_trained_one_is_marked():
    p = widgets.CALCULATOR_PRESETS["LLaMA-2-7B"]
    at = widgets.memory_calculator_state(**p, batch_size=1)
    assert not at["beyond_trained_context"] and "beyond" not in at["text"]
    past = widgets.memory_calculator_state(**{**p, "context": 8192}, batch_size=1)
    assert past["beyond_trained_context"] and "beyond the 4,096 it was trained for" in past["text"]
    custom = widgets.memory_calculator_state(**{**p, "context": 128, "n_layer": 2}, batch_size=1, trained_context=64)
    assert "beyond the 64" in custom["text"]
    # GPT-2's learned position table has 1,024 rows: at 2,048 tokens it is no longer GPT-2 small's count
    gpt2 = widgets.memory_calculator_state(**{**widgets.CALCULATOR_PRESETS["GPT-2 small shape"], "context": 2048},
                                           batch_size=1)
    assert gpt2["n_params"] == 124_439_808 + 1024 * 768
    assert gpt2["text"].startswith("GPT-2 small shape with a 2,048-position table (125 million parameters)")
    assert "124,439,808" not in gpt2["text"] and "beyond the 1,024" in gpt2["text"]


def test_small_model_is_a_readable_bar_and_a_far_budget_an_arrow():
    """Lab 00 opens the baby (≈38 MiB) with this machine's ≈21 GiB budget: the axis must fit the bar."""
    panel = widgets.memory_calculator_panel(budget_gib=21)
    ax = panel.figure.axes[0]
    unit = bar_unit_bytes(panel)
    assert unit == 2**20
    assert ax.get_xlim()[1] * unit < 2 * panel.state["total_bytes"]        # the bar fills most of the axis
    assert not ax.lines                                                   # no budget line squeezed in
    arrow = [t for t in ax.texts if "budget 21.00 GiB" in t.get_text()]
    assert arrow and "off scale" in arrow[0].get_text()
    assert "fits in 21.00 GiB" in ax.get_title()
    panel.controls["preset"].value = "LLaMA-2-7B"
    panel.controls["optimizer"].value = "none (inference)"   # 14.55 GiB: the budget is on the axis now
    assert bar_unit_bytes(panel) == widgets.GiB and ax is not panel.figure.axes[0]
    budget_line = panel.figure.axes[0].lines[0]
    assert budget_line.get_xdata()[0] == pytest.approx(21)
    assert len(panel.figure.axes[0].texts) == 0


def test_redraw_replaces_the_outputs_in_one_step():
    """Clearing and then appending made the plot vanish during a drag: one assignment, one change."""
    panel = widgets.memory_calculator_panel()
    changes = []
    panel.output.observe(lambda change: changes.append(change["new"]), "outputs")
    panel.controls["n_layer"].value = 5
    assert len(changes) == 1
    (text, image), = changes
    assert text["output_type"] == "stream" and "total" in text["text"]
    assert image["output_type"] == "display_data" and image["data"]["image/png"]


def test_sliders_report_only_where_a_drag_ends():
    panel = widgets.memory_calculator_panel()
    sliders = [c for c in panel.controls.values() if type(c).__name__.endswith("Slider")]
    assert len(sliders) >= 6 and all(c.continuous_update is False for c in sliders)


def test_panel_displays_as_widget_plus_png_and_text():
    """Read before run: a viewer without widget state shows the PNG; a live frontend shows the widget."""
    import base64

    panel = widgets.memory_calculator_panel()
    bundle = panel._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == panel.widget.model_id
    png = base64.b64decode(bundle["image/png"])
    assert png.startswith(b"\x89PNG") and png == panel.png
    assert bundle["text/plain"].startswith("baby (this course)") and "total" in bundle["text/plain"]
    assert "VBox" not in bundle["text/plain"]
    panel.controls["n_layer"].value = 6                    # the bundle follows the current figure
    assert base64.b64decode(panel._repr_mimebundle_()["image/png"]) == panel.png != png
    # what IPython itself sends for `display(panel)` / a panel as a cell's last expression
    from IPython.core.formatters import DisplayFormatter
    data, _ = DisplayFormatter().format(panel)
    assert {"application/vnd.jupyter.widget-view+json", "image/png", "text/plain"} <= set(data)


def test_render_time_is_measured_and_reasonable():
    panel = widgets.memory_calculator_panel(budget_gib=21)
    times = []
    for n in range(5, 10):
        panel.controls["n_layer"].value = n
        times.append(panel.render_ms)
    assert all(t > 0 for t in times)
    assert sorted(times)[len(times) // 2] < 1500, times    # generous: CI machines are shared


def test_a_notebook_viewer_without_widget_state_shows_the_png():
    """What `jupyter nbconvert --to html` (and nbviewer) does with a committed panel output."""
    import re

    import nbformat
    from nbconvert import HTMLExporter

    panel = widgets.memory_calculator_panel(budget_gib=21)
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("widgets.memory_calculator_panel(budget_gib=21)", execution_count=1)
    cell.outputs = [nbformat.v4.new_output("execute_result", data=panel._repr_mimebundle_(), execution_count=1)]
    nb.cells = [cell]
    html, _ = HTMLExporter().from_notebook_node(nb)
    images = re.findall(r'<img[^>]*src="data:image/png;base64,([^"]+)"', html)
    assert images and images[0] == panel._repr_mimebundle_()["image/png"]
    assert "VBox(" not in html


def test_activations_by_the_gpu_formula_of_korthikanti_et_al():
    from labkit.memory import megatron_activation_bytes

    p = dict(widgets.CALCULATOR_PRESETS["LLaMA-2-7B"], batch_size=1, dtype="bf16", mixed_precision=True)
    cpu = widgets.memory_calculator_state(**p)
    gpu = widgets.memory_calculator_state(**p, activation_formula=widgets.ACTIVATION_FORMULAS[1])
    assert gpu["bytes"]["activations"] == megatron_activation_bytes(32, 4096, 32, 4096, 1)
    assert cpu["bytes"]["activations"] == gpt_activation_bytes(widgets.preset_config("LLaMA-2-7B"), 1, 4096,
                                                              "bf16")["total"]
    assert {k: v for k, v in gpu["bytes"].items() if k != "activations"} == \
        {k: v for k, v in cpu["bytes"].items() if k != "activations"}
    assert "Korthikanti" in gpu["text"] and "Korthikanti" not in cpu["text"]
    panel = widgets.memory_calculator_panel("LLaMA-2-7B")
    panel.controls["activation_formula"].value = widgets.ACTIVATION_FORMULAS[1]
    assert panel.state["bytes"]["activations"] == gpu["bytes"]["activations"]
    with pytest.raises(ValueError, match="activation_formula"):
        widgets.memory_calculator_state(**p, activation_formula="guess")
