"""Lab 02's KV-cache panel, driven without a browser: set a control, read the state, the figure and the text."""
import time

import matplotlib

matplotlib.use("Agg")

import pytest

from labkit import widgets
from labkit.memory import gpt_param_count, kv_cache_bytes
from labkit.model import GPTConfig

TIMINGS = {"context": [16, 64, 256], "cached_ms": [1.0, 1.1, 1.3], "uncached_ms": [2.0, 5.5, 26.0],
           "cache_bytes": [kv_cache_bytes(4, 4, 32, c, 1, "fp32") for c in (16, 64, 256)]}


def test_state_matches_formulas():
    s = widgets.kv_cache_tradeoff_state("LLaMA-2-7B", context=4096, batch_size=2, n_kv_head=8, dtype="fp16")
    assert s["cache_bytes"] == kv_cache_bytes(32, 8, 128, 4096, 2, "fp16") == 2 * 32 * 8 * 128 * 4096 * 2 * 2
    assert s["mha_cache_bytes"] == 4 * s["cache_bytes"]
    cfg = GPTConfig(vocab_size=32000, block_size=4096, n_layer=32, n_head=32, n_kv_head=8, n_embd=4096, tie_weights=False,
                    positions="rotary", activation="swiglu", mlp_hidden=11008)  # LLaMA-2-7B's block with 8 KV heads
    assert s["weight_bytes"] == 2 * gpt_param_count(cfg)
    real = widgets.kv_cache_tradeoff_state("LLaMA-2-7B", context=4096, batch_size=1, dtype="fp16")
    assert real["weight_bytes"] == 2 * 6_738_415_616 and real["n_kv_head"] == 32
    # the crossover context is the first one where the cache is at least the weights
    per_token = s["cache_bytes_per_token"]
    assert (s["crossover_context"] - 1) * per_token < s["weight_bytes"] <= s["crossover_context"] * per_token
    assert s["curve_bytes"] == [kv_cache_bytes(32, 8, 128, c, 2, "fp16") for c in widgets.KV_TRADEOFF_CONTEXTS]
    assert "GQA" in s["text"] and "4× smaller than MHA" in s["text"]


def test_state_defaults_and_measured_point():
    s = widgets.kv_cache_tradeoff_state("baby (this course)", context=200, batch_size=1, timings=TIMINGS)
    # the weights are those of the zoo's baby-gpt (untied output head): 817,280 fp32 parameters
    zoo_cfg = GPTConfig(vocab_size=84, block_size=64, n_layer=4, n_head=4, n_embd=128, tie_weights=False)
    assert s["weight_bytes"] == 4 * gpt_param_count(zoo_cfg) == 4 * 817_280
    assert s["n_kv_head"] == 4 and "MHA" in s["text"]
    assert s["measured"] == {"context": 256, "cached_ms": 1.3, "uncached_ms": 26.0, "speedup": 20.0}
    assert "recomputing took 20.0× the cached time" in s["text"] and "not faster" not in s["text"]


def test_a_slower_cache_measurement_is_not_called_faster():
    """Lab 02 once printed "the cache is 0.8× faster" on a busy machine: say what was measured instead."""
    slow = dict(TIMINGS, cached_ms=[1.0, 1.1, 1.3], uncached_ms=[0.8, 5.5, 26.0])
    s = widgets.kv_cache_tradeoff_state("baby (this course)", context=16, batch_size=1, timings=slow)
    assert "0.8× the cached time" in s["text"] and "was not faster" in s["text"] and "faster for" not in s["text"]


def test_quartiles_and_counted_ratio_are_drawn_when_given():
    t = dict(TIMINGS, cached_q1=[0.9, 1.0, 1.2], cached_q3=[1.1, 1.2, 1.4], uncached_q1=[1.8, 5.0, 25.0],
             uncached_q3=[2.2, 6.0, 27.0], counted_ratio=[3.0, 9.0, 33.0])
    fig = widgets.kv_cache_tradeoff_figure(widgets.kv_cache_tradeoff_state("baby (this course)", 64, 1, timings=t))
    ax = fig.axes[1]
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert any("bars: quartiles" in label for label in labels) and any("counted" in label for label in labels)
    assert ax.containers and ax.containers[0].has_yerr


def test_state_rejects_bad_choices():
    with pytest.raises(ValueError, match="n_kv_head=3 must divide n_head=4"):
        widgets.kv_cache_tradeoff_state("baby (this course)", 64, 1, n_kv_head=3)
    with pytest.raises(ValueError, match="dtype"):
        widgets.kv_cache_tradeoff_state("baby (this course)", 64, 1, dtype="int3")
    with pytest.raises(ValueError, match="preset"):
        widgets.kv_cache_tradeoff_state("7B class", 64, 1)
    with pytest.raises(ValueError, match="context"):
        widgets.kv_cache_tradeoff_state("baby (this course)", 0, 1)


def test_panel_redraws_when_controls_move():
    panel = widgets.kv_cache_tradeoff_panel(TIMINGS)
    assert len(panel.output.outputs) == 2 and "image/png" in panel.output.outputs[1]["data"]
    before = panel.state["cache_bytes"]
    line = panel.figure.axes[0].lines[0]
    assert list(line.get_ydata()) == panel.state["curve_bytes"]
    assert panel.figure.axes[0].get_ylabel().startswith("memory (bytes")
    t0 = time.perf_counter()
    panel.controls["batch_size"].value = 8
    update_ms = (time.perf_counter() - t0) * 1000
    assert panel.state["cache_bytes"] == 8 * before
    assert "batch 8" in panel.output.outputs[0]["text"]
    assert len(panel.output.outputs) == 2  # replaced, not appended
    panel.controls["n_kv_head"].value = 1
    assert panel.state["cache_bytes"] == 8 * before // 4 and "MQA" in panel.output.outputs[0]["text"]
    panel.controls["context"].value = 1024
    assert panel.state["cache_bytes"] == kv_cache_bytes(4, 1, 32, 1024, 8, "fp32")
    assert panel.state["measured"]["context"] == 256  # nearest measured context
    assert update_ms < 2000, f"a slider move took {update_ms:.0f} ms"  # generous: CI machines are shared


def test_panel_preset_switch_updates_kv_head_choices():
    panel = widgets.kv_cache_tradeoff_panel(TIMINGS)
    panel.controls["preset"].value = "LLaMA-2-70B"
    assert tuple(panel.controls["n_kv_head"].options) == (1, 2, 4, 8, 16, 32, 64)
    assert panel.state["n_kv_head"] == 8 and panel.state["context"] == 4096
    assert panel.state["cache_bytes"] == kv_cache_bytes(80, 8, 128, 4096, 1, "fp32")
    panel.controls["dtype"].value = "bf16"
    assert panel.state["cache_bytes"] == kv_cache_bytes(80, 8, 128, 4096, 1, "bf16")


def test_panel_without_timings_draws_one_plot():
    panel = widgets.kv_cache_tradeoff_panel()
    assert len(panel.figure.axes) == 1 and panel.state["measured"] is None


def test_context_beyond_training_is_marked_and_drawn():
    s = widgets.kv_cache_tradeoff_state("LLaMA-2-7B", context=16384, batch_size=1, dtype="bf16")
    assert "beyond the 4,096 it was trained for" in s["text"]
    assert "beyond" not in widgets.kv_cache_tradeoff_state("LLaMA-2-7B", 4096, 1)["text"]
    fig = widgets.kv_cache_tradeoff_figure(s)
    assert any("trained context (4,096)" in t.get_text() for t in fig.axes[0].get_legend().get_texts())


def test_kv_panel_redraw_is_one_step_with_no_slow_tick_labels():
    panel = widgets.kv_cache_tradeoff_panel(TIMINGS)
    changes = []
    panel.output.observe(lambda change: changes.append(change), "outputs")
    panel.controls["batch_size"].value = 3
    assert len(changes) == 1 and panel.render_ms > 0
    assert panel.controls["batch_size"].continuous_update is False
    labels = [t.get_text() for t in panel.figure.axes[0].get_xticklabels()]
    assert labels[:3] == ["16", "64", "256"] and "$" not in "".join(labels)   # plain text, not mathtext
    assert panel._repr_mimebundle_()["image/png"]
