"""Lab 01 widget: validation loss vs parameter memory, driven without a browser."""
import time

import matplotlib

matplotlib.use("Agg")

import pytest

from labkit import widgets

POINTS = [
    {"name": "bigram", "family": "n-gram", "param_bytes": 28_224, "val_loss": 2.50},
    {"name": "trigram", "family": "n-gram", "param_bytes": 2_370_816, "val_loss": 2.20},
    {"name": "gpt-16", "family": "GPT", "param_bytes": 40_000, "val_loss": 2.60},
    {"name": "gpt-64", "family": "GPT", "param_bytes": 440_000, "val_loss": 2.05},
    {"name": "lstm-128", "family": "LSTM", "param_bytes": 470_000, "val_loss": 1.90},
    {"name": "conv-64", "family": "conv", "param_bytes": 300_000, "val_loss": 1.95},
    {"name": "baby-gpt", "family": "GPT (course reference)", "param_bytes": 3_269_120, "val_loss": 1.75},
]


def names(points):
    return [p["name"] for p in points]


def test_pareto_front_keeps_only_undominated_points():
    front = widgets.pareto_points(POINTS)
    assert names(front) == ["bigram", "conv-64", "lstm-128", "baby-gpt"]
    # gpt-16 costs more than the bigram and is worse; the trigram costs more than the LSTM and is worse
    xs = [p["param_bytes"] for p in front]
    ys = [p["val_loss"] for p in front]
    assert xs == sorted(xs) and ys == sorted(ys, reverse=True)


def test_state_picks_the_best_model_within_the_budget():
    s = widgets.lm_memory_loss_state(POINTS, budget_bytes=450_000)
    assert s["best"]["name"] == "conv-64"
    assert set(names(s["affordable"])) == {"bigram", "gpt-16", "gpt-64", "conv-64"}
    s = widgets.lm_memory_loss_state(POINTS, families=["GPT"], budget_bytes=450_000)
    assert s["best"]["name"] == "gpt-64" and names(s["front"]) == ["gpt-16", "gpt-64"]
    s = widgets.lm_memory_loss_state(POINTS, budget_bytes=1_000)
    assert s["best"] is None and "none of the 7 models" in s["text"]
    assert widgets.lm_memory_loss_state(POINTS)["best"]["name"] == "baby-gpt"  # no budget: the best overall


def test_state_rejects_bad_input():
    with pytest.raises(ValueError, match="families"):
        widgets.lm_memory_loss_state(POINTS, families=["RNN"])
    with pytest.raises(ValueError, match="val_loss"):
        widgets.lm_memory_loss_state([{"name": "x", "family": "GPT", "param_bytes": 1}])


def test_panel_follows_the_budget_slider_and_family_boxes():
    panel = widgets.lm_memory_loss_panel(POINTS, budget_bytes=50_000)
    assert panel.state["best"]["name"] == "bigram"
    assert "image/png" in panel.output.outputs[-1]["data"]
    first_text = panel.output.outputs[0]["text"]
    assert "bigram" in first_text

    t0 = time.perf_counter()
    panel.controls["budget_bytes"].value = 500_000
    update_ms = (time.perf_counter() - t0) * 1000
    assert panel.state["best"]["name"] == "lstm-128"
    assert len(panel.output.outputs) == 2  # replaced, not appended: one text + one figure
    assert "lstm-128" in panel.output.outputs[0]["text"]
    ax = panel.figure.axes[0]
    assert ax.get_xscale() == "log" and "bytes" in ax.get_xlabel() and "nats" in ax.get_ylabel()
    # the budget line sits where the slider is
    vlines = [line for line in ax.lines if line.get_label().startswith("budget")]
    assert len(vlines) == 1 and vlines[0].get_xdata()[0] == pytest.approx(500_000, rel=0.03)
    assert vlines[0].get_label() == "budget 488.28 KiB"
    assert update_ms < 2000, f"a slider move took {update_ms:.0f} ms"  # generous: CI machines are shared

    panel.controls["show LSTM"].value = False
    assert panel.state["best"]["name"] == "conv-64"
    assert "LSTM" not in panel.state["families"]
    labels = [t.get_text() for t in panel.figure.axes[0].get_legend().get_texts()]
    assert "LSTM" not in labels and "conv" in labels

    for f in panel.state["all_families"]:
        panel.controls[f"show {f}"].value = False
    assert panel.state["best"] is None and "no model family" in panel.output.outputs[0]["text"]


def test_front_with_a_tolerance_keeps_models_tied_within_the_noise():
    pts = [{"name": "small", "family": "A", "param_bytes": 100, "val_loss": 2.000},
           {"name": "big-tied", "family": "A", "param_bytes": 200, "val_loss": 2.003},
           {"name": "big-worse", "family": "B", "param_bytes": 300, "val_loss": 2.050},
           {"name": "bigger-better", "family": "B", "param_bytes": 400, "val_loss": 1.900}]
    assert names(widgets.pareto_points(pts)) == ["small", "bigger-better"]
    assert names(widgets.pareto_points(pts, tolerance=0.005)) == ["small", "big-tied", "bigger-better"]
    s = widgets.lm_memory_loss_state(pts, budget_bytes=250, tolerance=0.005)
    assert s["best"]["name"] == "small" and names(s["tied"]) == ["big-tied"]
    assert "tied with it (within ±0.005 nats/char, the noise): big-tied" in s["text"]
    assert widgets.lm_memory_loss_state(pts, budget_bytes=250)["tied"] == []
    with pytest.raises(ValueError, match="tolerance"):
        widgets.pareto_points(pts, tolerance=-1)


def test_figure_draws_error_bars_noise_band_and_reference_lines():
    pts = [dict(p, val_loss_err=0.01) for p in POINTS]
    refs = [{"name": "bz2 -9: 2.39 bits/char", "val_loss": 1.66}]
    s = widgets.lm_memory_loss_state(pts, budget_bytes=500_000, tolerance=0.02, references=refs)
    fig = widgets.lm_memory_loss_figure(s)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "bz2 -9: 2.39 bits/char" in labels and any("± 0.020" in t for t in labels)
    bars = [c for c in ax.collections if type(c).__name__ == "LineCollection"]
    segs = [seg for c in bars for seg in c.get_segments()]
    assert len(segs) == len(pts) and all(abs(seg[1][1] - seg[0][1] - 0.02) < 1e-9 for seg in segs)
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert any("KiB" in t for t in ticks) and any("MiB" in t for t in ticks)   # byte units, not 1e5
    with pytest.raises(ValueError, match="param_bytes must be > 0"):
        widgets.lm_memory_loss_state([{"name": "uniform", "family": "x", "param_bytes": 0, "val_loss": 4.4}])


def test_budget_is_shown_in_binary_units_not_raw_bytes():
    panel = widgets.lm_memory_loss_panel(POINTS, budget_bytes=2 ** 19)
    slider = panel.controls["budget_bytes"]
    assert slider.readout is False and "(B)" not in slider.description
    assert panel.budget_label.value == "512.00 KiB"
    slider.value = 3 * 2 ** 20
    assert panel.budget_label.value == "3.00 MiB"
