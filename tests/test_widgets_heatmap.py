"""labkit.widgets.heatmap: colour bar, visible-character tick labels, masked -inf cells, clear errors."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from labkit.widgets.heatmap import MAX_LABEL_PT, MIN_LABEL_PT, heatmap, label_font_size, visible_token


def test_visible_token():
    assert [visible_token(c) for c in "a ,\n\t"] == ["a", "␣", ",", "↵", "⇥"]
    assert visible_token("\x07") == "\\x07"
    assert visible_token("2: ") == "2:␣"          # a label such as f"{i}:{char}" keeps its space visible


def test_heatmap_has_colorbar_labels_and_masks_future():
    chars = list("To be,\n")
    T = len(chars)
    scores = torch.randn(T, T).masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    fig, ax = plt.subplots(figsize=(4, 4))
    im = heatmap(ax, scores, chars, title="scores", colorbar_label="score", annotate=True)
    assert len(fig.axes) == 2, "a colour bar axis next to the heatmap"
    assert fig.axes[1].get_ylabel() == "score"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["T", "o", "␣", "b", "e", ",", "↵"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["T", "o", "␣", "b", "e", ",", "↵"]
    assert all(t.get_fontsize() >= MIN_LABEL_PT for t in ax.get_xticklabels())
    data = im.get_array()
    assert data.mask[0, 1] and not data.mask[1, 0]            # the future is masked (drawn blank), the past is not
    assert sum(t.get_text() == "-inf" for t in ax.texts) == T * (T - 1) // 2
    assert ax.get_xlabel() and ax.get_ylabel()
    plt.close(fig)


def test_font_size_shrinks_with_more_labels_but_stays_legible():
    fig, ax = plt.subplots(figsize=(4, 4))
    few, many, lots = (label_font_size(ax, n) for n in (5, 45, 500))
    assert few == MAX_LABEL_PT and MIN_LABEL_PT <= many <= few and lots == MIN_LABEL_PT
    plt.close(fig)


def test_bad_input_is_named():
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match=r"labels must match the matrix shape \(2, 3\)"):
        heatmap(ax, np.zeros((2, 3)), ["a", "b"])
    with pytest.raises(ValueError, match="matrix must be 2-D"):
        heatmap(ax, np.zeros(3), ["a", "b", "c"])
    with pytest.raises(ValueError, match="axis='z'"):
        label_font_size(ax, 3, "z")
    plt.close(fig)
