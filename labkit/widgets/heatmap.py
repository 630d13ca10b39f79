"""Heatmaps of attention weights (and any other matrix) with a colour bar and readable tick labels.

    fig, ax = plt.subplots()
    heatmap(ax, weights, row_labels=list("To be"), title="layer 0, head 1", colorbar_label="attention weight")

Rows and columns are labelled with the characters of the prompt, made visible ("␣" for a space,
"↵" for a newline), at a font size chosen from the room each label has. Entries that are -inf
(the masked future of a causal score matrix) are drawn as blank grey cells and, if annotated, "-inf".
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥"}
MIN_LABEL_PT, MAX_LABEL_PT = 7.0, 11.0


def visible_token(token: str) -> str:
    """A tick label for a token (or any label): whitespace and control characters shown as visible symbols."""
    return "".join(VISIBLE.get(ch, ch if ch.isprintable() else repr(ch)[1:-1]) for ch in token)


def label_font_size(ax: plt.Axes, n_labels: int, axis: str = "y") -> float:
    """Font size (points) that fits `n_labels` tick labels along `axis` of `ax`, kept within 7–11 pt."""
    if axis not in ("x", "y"):
        raise ValueError(f"axis={axis!r}; allowed: 'x', 'y'")
    box = ax.get_position()
    w_in, h_in = ax.figure.get_size_inches()
    length_pt = (box.height * h_in if axis == "y" else box.width * w_in) * 72
    return float(np.clip(0.9 * length_pt / max(n_labels, 1), MIN_LABEL_PT, MAX_LABEL_PT))


def heatmap(ax: plt.Axes, matrix: torch.Tensor | np.ndarray, row_labels: Sequence[str],
            col_labels: Sequence[str] | None = None, title: str = "", cmap: str = "viridis",
            vmin: float | None = None, vmax: float | None = None, colorbar: bool = True,
            colorbar_label: str = "", annotate: bool = False, fmt: str = "{:.2f}",
            xlabel: str = "key position s (attended to)", ylabel: str = "query position t (reading)"):
    """Draw a (rows, cols) matrix on `ax` with visible-character tick labels and a colour bar; returns the image."""
    m = matrix.detach().float().cpu().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix, float)
    if m.ndim != 2:
        raise ValueError(f"matrix must be 2-D (rows, cols), got shape {tuple(m.shape)}")
    col_labels = row_labels if col_labels is None else col_labels
    if len(row_labels) != m.shape[0] or len(col_labels) != m.shape[1]:
        raise ValueError(f"labels must match the matrix shape {tuple(m.shape)}: got {len(row_labels)} row_labels "
                         f"and {len(col_labels)} col_labels")
    masked = np.isneginf(m)
    shown = np.ma.masked_where(~np.isfinite(m), m)
    colormap = plt.get_cmap(cmap).with_extremes(bad="#e6e6e6")      # masked cells: light grey
    im = ax.imshow(shown, cmap=colormap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks(range(m.shape[1]), [visible_token(c) for c in col_labels], rotation=0,
                  fontsize=label_font_size(ax, m.shape[1], "x"))
    ax.set_yticks(range(m.shape[0]), [visible_token(c) for c in row_labels],
                  fontsize=label_font_size(ax, m.shape[0], "y"))
    ax.tick_params(length=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(False)
    if annotate:
        finite = m[np.isfinite(m)]
        middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if masked[i, j]:
                    ax.text(j, i, "-inf", ha="center", va="center", fontsize=7, color="grey")
                else:
                    ax.text(j, i, fmt.format(m[i, j]), ha="center", va="center", fontsize=7,
                            color="k" if m[i, j] > middle else "w")
    if colorbar:
        bar = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        bar.ax.tick_params(labelsize=8)
        if colorbar_label:
            bar.set_label(colorbar_label, fontsize=9)
    return im
