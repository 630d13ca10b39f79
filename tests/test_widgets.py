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
    return {"memory (GiB)": widgets.GiB, "memory (MiB)": 2**20}[label]


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
    panel = widgets.memory_calculator_panel("70B class (GQA)")
    panel.controls["optimizer"].value = "none (inference)"
    kv8 = panel.state["bytes"]["kv_cache"]
    panel.controls["n_kv_head"].value = 64
    assert panel.state["bytes"]["kv_cache"] == 8 * kv8


def test_panel_reports_invalid_shape_instead_of_crashing():
    panel = widgets.memory_calculator_panel()
    panel.controls["n_head"].value = 3  # 128 is not divisible by 3
    assert "error" in panel.state
    assert "n_embd" in panel.output.outputs[0]["text"]


def test_preset_dropdown_loads_all_fields_with_one_redraw():
    panel = widgets.memory_calculator_panel()
    panel.controls["preset"].value = "7B class"
    p = widgets.CALCULATOR_PRESETS["7B class"]
    assert panel.state["config"].n_layer == p["n_layer"] and panel.state["config"].n_embd == p["n_embd"]
    assert panel.state["n_params"] > 6e9


def test_baby_preset_counts_the_real_baby_model():
    from labkit.train import build_for_corpus, make_config

    class FakeCorpus:
        vocab_size = 84

    model = build_for_corpus(make_config("gpt", "baby"), FakeCorpus())
    panel = widgets.memory_calculator_panel()
    assert panel.state["n_params"] == model.num_params()
    panel.controls["tie_weights"].value = True
    assert panel.state["n_params"] == model.num_params() - 84 * 128


def test_human_bytes():
    assert widgets.human_bytes(512) == "512 B"
    assert widgets.human_bytes(3 * 2**30) == "3.00 GiB"
