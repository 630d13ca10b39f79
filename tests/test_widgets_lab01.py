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
    front = widgets.pareto_front(POINTS)
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
    vlines = [line for line in ax.lines if len(set(line.get_xdata())) == 1]
    assert vlines and vlines[0].get_xdata()[0] == pytest.approx(500_000, rel=0.03)
    assert update_ms < 2000, f"a slider move took {update_ms:.0f} ms"  # generous: CI machines are shared

    panel.controls["show LSTM"].value = False
    assert panel.state["best"]["name"] == "conv-64"
    assert "LSTM" not in panel.state["families"]
    labels = [t.get_text() for t in panel.figure.axes[0].get_legend().get_texts()]
    assert "LSTM" not in labels and "conv" in labels

    for f in panel.state["all_families"]:
        panel.controls[f"show {f}"].value = False
    assert panel.state["best"] is None and "no model family" in panel.output.outputs[0]["text"]
