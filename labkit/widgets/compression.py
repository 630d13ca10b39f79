"""Lab 07: the bytes and the perplexity of each Deep Compression stage, for a chosen sparsity and bit width.

    sweep = deep_compression.pipeline_sweep(model, sparsities=(0.5, 0.7, 0.9), bits=(3, 4, 5), ...)
    widgets.compression_panel(sweep)

A sweep is a pandas DataFrame (labkit.deep_compression.pipeline_sweep) with one row per (sparsity, bits, stage):
- sparsity (fraction of the prunable weights removed, 0 ≤ s < 1), bits (of the shared-weight code indices);
- stage: the pipeline's stages in order, "fp32" first (the model before compression), then pruning, weight
  sharing, the relative index and Huffman coding (the sweep's own order is kept; "fp32" is drawn first);
- bytes (what that stage's storage really takes), ratio (fp32 bytes / bytes);
- loss and loss_se (nats/char on the lab's evaluation set), perplexity (exp(loss));
- increase and increase_se: the paired loss rise over the fp32 model on the same windows (nats/char) and its SE.

- weights (optional): the parameters the stage stores (all but the pruned zeros).

The panel draws the bytes of each stage as bars (log scale, fp32 first) with perplexity on a second axis, and
sets the paper's AlexNet figures (`labkit.deep_compression.PAPER_RATIOS`) beside the stages they describe. The
paper's pruning figure (9×, "9× fewer connections") counts WEIGHTS: it is written above the pruned bars beside this
model's own weight ratio (when the sweep has `weights`), not drawn as bytes. Its later figures count bytes: 27×
(quantized, stored with the relative index) beside "relative index", 35× beside "Huffman", drawn as markers at
the bytes that ratio would give this model. A perplexity rise is called measurable only beyond 2·SE of its paired
increase. The lab's target is one rule, the notebook's too: at least TARGET_RATIO× smaller with the perplexity
rise at most 5% even at the upper end of ±2·SE, exp(increase + 2·SE) − 1 ≤ 5%.
"""
from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure

from labkit.widgets.core import Panel, _bytes_axis, _finite_number, check_sweep_frame, human_bytes, render_into, wire_panel

SWEEP_COLUMNS = ("sparsity", "bits", "stage", "bytes", "ratio", "loss", "loss_se", "perplexity", "increase",
                 "increase_se")
NUMBER_COLUMNS = ("sparsity", "bytes", "ratio", "loss", "loss_se", "perplexity", "increase", "increase_se")
FP32 = "fp32"
#: a perplexity rise is "measurable" beyond this many standard errors of its paired increase
BAND_SE = 2.0
#: the lab's target ("what must hold"): at least this many times smaller than fp32 ...
TARGET_RATIO = 12.0
#: ... at most this much perplexity rise (a fraction)
TARGET_PERPLEXITY_RISE = 0.05
#: which of the paper's figures sits beside which of our stages, when their names are not the same: (a word in our
#: stage's name, words one of which the paper's figure's name has, words it must not have: "prune + quantize" is
#: not the pruning figure). The paper's quantization figure (27×) includes its relative index, so it sits beside
#: "relative index", not beside the k-means row
PAPER_STAGE_WORDS = (("prun", ("prun",), ("quant", "shar", "k-means", "index", "huffman")),
                     ("index", ("index", "quant", "shar", "k-means"), ("huffman",)),
                     ("huffman", ("huffman",), ()))
BAR_COLOR, FP32_COLOR, PPL_COLOR, PAPER_COLOR = "#4C72B0", "#8C8C8C", "#C44E52", "#DD8452"


def check_compression_sweep(sweep: Any) -> None:
    """Raise a TypeError/ValueError naming what is wrong with a pipeline sweep (columns, values, the fp32 rows)."""
    check_sweep_frame(sweep, list(SWEEP_COLUMNS), (
        ("sparsity", lambda v: 0 <= v < 1, "in [0, 1)"),
        ("bytes", lambda v: v > 0, "> 0 (bytes)"),
        ("ratio", lambda v: v > 0, "> 0"),
        ("loss", lambda v: v >= 0, ">= 0 (nats/char)"),
        ("loss_se", lambda v: v >= 0, ">= 0 (nats/char)"),
        ("perplexity", lambda v: v >= 1, ">= 1"),
        ("increase", lambda v: True, "(nats/char)"),
        ("increase_se", lambda v: v >= 0, ">= 0 (nats/char)")), made_by=" (deep_compression.pipeline_sweep)")
    for i, b in zip(sweep.index, sweep["bits"]):
        if isinstance(b, bool) or not isinstance(b, numbers.Integral) or not 1 <= b <= 16:
            raise ValueError(f"sweep['bits'] at row {i!r} is {b!r}; allowed: an int from 1 to 16")


@dataclass(frozen=True)
class CompressionTable:
    """A checked sweep as plain Python: each (sparsity, bits) setting's stage rows, fp32 first."""

    settings: dict[tuple[float, int], list[dict]]

    @property
    def sparsities(self) -> list[float]:
        return sorted({s for s, _ in self.settings})

    def bits_for(self, sparsity: float) -> list[int]:
        return sorted(b for s, b in self.settings if s == sparsity)

    @property
    def bits(self) -> list[int]:
        return sorted({b for _, b in self.settings})


def compression_table(sweep: Any) -> CompressionTable:
    """Check a sweep DataFrame (`check_compression_sweep`) and index its rows once, so a redraw does no pandas work."""
    if isinstance(sweep, CompressionTable):
        return sweep
    check_compression_sweep(sweep)
    settings: dict[tuple[float, int], list[dict]] = {}
    for record in sweep.to_dict("records"):
        record = {k: (float(v) if k in NUMBER_COLUMNS else v) for k, v in record.items()}
        record["bits"] = int(record["bits"])
        weights = record.get("weights")
        record["weights"] = float(weights) if _finite_number(weights) and weights > 0 else None
        key = (record["sparsity"], record["bits"])
        rows = settings.setdefault(key, [])
        if any(r["stage"] == record["stage"] for r in rows):
            raise ValueError(f"sweep has two rows for sparsity={key[0]!r}, bits={key[1]!r}, stage="
                             f"{record['stage']!r}; allowed: one row per (sparsity, bits, stage)")
        rows.append(record)
    for (s, b), rows in settings.items():
        fp32 = [r for r in rows if r["stage"] == FP32]
        if not fp32:
            raise ValueError(f"sweep has no {FP32!r} row for sparsity={s!r}, bits={b!r}: every setting needs the "
                             "uncompressed model's row, the ratios' reference")
        if len(rows) < 2:
            raise ValueError(f"sweep has only the {FP32!r} row for sparsity={s!r}, bits={b!r}: no compressed stage")
        for r in rows:
            expected = fp32[0]["bytes"] / r["bytes"]
            if not math.isclose(r["ratio"], expected, rel_tol=1e-3):
                raise ValueError(f"sweep row sparsity={s!r}, bits={b!r}, stage={r['stage']!r}: ratio {r['ratio']!r} "
                                 f"is not fp32 bytes / bytes = {expected:.6g}")
        settings[s, b] = fp32 + [r for r in rows if r["stage"] != FP32]      # fp32 first, then the sweep's order
    return CompressionTable(settings)


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.3g}%"


def _paper_ratios(paper_ratios: Any) -> dict[str, float]:
    """The paper's ratios as {name: ratio}; by default labkit.deep_compression.PAPER_RATIOS."""
    if paper_ratios is None:
        from labkit.deep_compression import PAPER_RATIOS
        paper_ratios = PAPER_RATIOS
    ratios = {}
    for name, value in dict(paper_ratios).items():
        if isinstance(value, dict):               # {"prune": {"ratio": 9, ...}} is read too
            value = value.get("ratio")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            ratios[str(name)] = float(value)
    return ratios


def _counts_weights(key: str) -> bool:
    """True for the paper's pruning figure (a count of weights: "9× fewer connections"); its others count bytes."""
    name = key.lower()
    return "prun" in name and not any(w in name for w in ("quant", "shar", "k-means", "index", "huffman"))


def _paper_key(stage: str, ratios: dict[str, float]) -> str | None:
    """The paper's figure that belongs beside `stage`: the one of the same name, else one matched by words
    ('prun', 'index' or 'quant', 'huffman'); None for stages the paper gives no figure for (fine-tuning, k-means
    without its index)."""
    if stage in ratios:
        return stage
    name = stage.lower()
    if "fine-tun" in name:
        return None
    for ours, theirs, not_theirs in PAPER_STAGE_WORDS:
        if ours in name:
            found = [k for k in ratios if any(w in k.lower() for w in theirs)
                     and not any(w in k.lower() for w in not_theirs)]
            if found:
                return found[0]
    return None


def compression_state(sweep: Any, sparsity: float, bits: int, paper_ratios: Any = None) -> dict[str, Any]:
    """The stages of one (sparsity, bits) setting: bytes, ratio vs fp32, perplexity and its paired rise, in words.

    `sweep` is the DataFrame (or its `compression_table`). `paper_ratios` ({name: ratio}) defaults to
    labkit.deep_compression.PAPER_RATIOS; each is placed beside the stage it describes (pruning, weight sharing
    / quantization, Huffman) as the bytes that ratio would give this model.
    """
    table = compression_table(sweep)
    if not _finite_number(sparsity) or not any(abs(sparsity - s) < 1e-9 for s in table.sparsities):
        raise ValueError(f"sparsity={sparsity!r} is not in the sweep; allowed: {table.sparsities}")
    sparsity = min(table.sparsities, key=lambda s: abs(s - sparsity))
    allowed_bits = table.bits_for(sparsity)
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or bits not in allowed_bits:
        raise ValueError(f"bits={bits!r} is not in the sweep at sparsity {sparsity!r}; allowed: {allowed_bits}")
    bits = int(bits)
    ratios = _paper_ratios(paper_ratios)
    rows = table.settings[sparsity, bits]
    fp32, final = rows[0], rows[-1]
    stages = []
    for r in rows:
        key = _paper_key(r["stage"], ratios)
        counts = None if key is None else "weights" if _counts_weights(key) else "bytes"
        measurable = r["increase"] > BAND_SE * r["increase_se"]
        weight_ratio = (fp32["weights"] / r["weights"] if fp32["weights"] is not None and r["weights"] is not None
                        else None)
        stages.append({"stage": r["stage"], "bytes": r["bytes"], "ratio": r["ratio"], "perplexity": r["perplexity"],
                       "loss": r["loss"], "increase": r["increase"], "increase_se": r["increase_se"],
                       "perplexity_rise": r["perplexity"] / fp32["perplexity"] - 1,
                       "measurable_rise": r["stage"] != FP32 and measurable,
                       "weights": r["weights"], "weight_ratio": weight_ratio,
                       "paper_key": key, "paper_ratio": ratios.get(key) if key else None, "paper_counts": counts,
                       "paper_bytes": fp32["bytes"] / ratios[key] if counts == "bytes" else None})
    rise = final["perplexity"] / fp32["perplexity"] - 1
    rise_hi = math.exp(final["increase"] + BAND_SE * final["increase_se"]) - 1
    meets = final["ratio"] >= TARGET_RATIO and rise_hi <= TARGET_PERPLEXITY_RISE
    state = {"sparsity": sparsity, "bits": bits, "sparsities": table.sparsities, "bits_options": allowed_bits,
             "stages": stages, "fp32_bytes": fp32["bytes"], "final_bytes": final["bytes"],
             "final_stage": final["stage"], "ratio": final["ratio"], "perplexity": final["perplexity"],
             "fp32_perplexity": fp32["perplexity"], "perplexity_rise": rise, "perplexity_rise_hi": rise_hi,
             "increase": final["increase"], "increase_se": final["increase_se"],
             "measurable_rise": stages[-1]["measurable_rise"], "meets_target": meets, "paper_ratios": ratios}

    if state["measurable_rise"]:
        noise = (f"a measurable rise: {final['increase']:.4f} nats/char, more than {BAND_SE:g}·SE "
                 f"({BAND_SE * final['increase_se']:.4f})")
    else:
        noise = (f"within the noise: its paired increase {final['increase']:+.4f} nats/char is inside "
                 f"{BAND_SE:g}·SE ({BAND_SE * final['increase_se']:.4f})")
    paper = max((v for k, v in ratios.items() if not _counts_weights(k)), default=None)
    pruned = [s for s in stages if s["paper_counts"] == "weights" and s["weight_ratio"] is not None]
    weights_text = (f" Pruning stores {pruned[-1]['weight_ratio']:.1f}× fewer weights (AlexNet in the paper: "
                    f"{pruned[-1]['paper_ratio']:g}×) but only {pruned[-1]['ratio']:.1f}× fewer bytes: their indices "
                    "cost bytes too." if pruned else "")
    state["text"] = (
        f"Sparsity {_percent(sparsity)}, {bits}-bit shared weights: after '{final['stage']}' the model takes "
        f"{human_bytes(final['bytes'])}, {final['ratio']:.1f}× smaller than fp32 ({human_bytes(fp32['bytes'])}); "
        f"perplexity {final['perplexity']:.3f} vs {fp32['perplexity']:.3f} ({100 * rise:+.1f}%), {noise}. "
        + (f"It {'meets' if meets else 'misses'} the lab's target (≥ {TARGET_RATIO:g}× with the perplexity rise ≤ "
           f"{_percent(TARGET_PERPLEXITY_RISE)} even at +{BAND_SE:g}·SE: here {100 * rise_hi:+.1f}%)."
           + weights_text + (f" The paper's file was {paper:g}× smaller on AlexNet." if paper else "")))
    return state


def compression_figure(state: dict) -> Figure:
    """Bars: bytes per stage (log scale, fp32 first), the paper's ratios as markers; a second axis: perplexity."""
    import matplotlib.ticker

    fig = Figure(figsize=(10.5, 4.4))
    fig.subplots_adjust(left=0.09, right=0.68, bottom=0.27, top=0.9)
    ax = fig.subplots()
    stages = state["stages"]
    xs = list(range(len(stages)))
    ax.bar(xs, [s["bytes"] for s in stages], color=[FP32_COLOR] + [BAR_COLOR] * (len(stages) - 1), width=0.6,
           label="bytes of the stored model\n(its ratio to fp32 under its name)")
    paper = [(x, s) for x, s in zip(xs, stages) if s["paper_bytes"] is not None]
    _bytes_axis(ax, "y", [s["bytes"] for s in stages] + [s["paper_bytes"] for _, s in paper])
    ax.set_xticks(xs, [f"{s['stage']}\n{s['ratio']:.1f}×" for s in stages], rotation=20, ha="right", fontsize=8)
    ax.set_xlabel("pipeline stage (and its bytes' ratio to fp32)")
    ax.set_ylabel("bytes of the stored model (log scale)")
    ax.set_title(f"Deep Compression at sparsity {_percent(state['sparsity'])}, {state['bits']}-bit shared weights",
                 fontsize=10)

    right = ax.twinx()
    ppl = [s["perplexity"] for s in stages]
    right.plot(xs, ppl, "o-", color=PPL_COLOR, lw=1.5, ms=6, label="validation perplexity")
    rises = [(x, s["perplexity"]) for x, s in zip(xs, stages) if s["measurable_rise"]]
    if rises:
        right.plot([x for x, _ in rises], [y for _, y in rises], "o", ms=11, mfc="none", mec=PPL_COLOR, mew=1.5,
                   label=f"a rise beyond {BAND_SE:g}·SE (paired)")
    limit = state["fp32_perplexity"] * (1 + TARGET_PERPLEXITY_RISE)
    right.axhline(limit, color=PPL_COLOR, lw=1, ls=":", label=f"fp32 perplexity + {_percent(TARGET_PERPLEXITY_RISE)}")
    lo, hi = min(ppl), max(max(ppl), limit)
    pad = max(0.02 * lo, 0.25 * (hi - lo))
    right.set_ylim(lo - pad, hi + pad)
    right.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5))
    right.set_ylabel("validation perplexity", color=PPL_COLOR)
    right.tick_params(axis="y", colors=PPL_COLOR)
    # the paper's figures, in the bars' coordinates but drawn over the perplexity line (the right axes are on top)
    if paper:
        right.plot([x for x, _ in paper], [s["paper_bytes"] for _, s in paper], "_", ms=26, mew=2.5,
                   color=PAPER_COLOR, transform=ax.transData, zorder=5,
                   label="the paper's AlexNet ratio (bytes)\napplied to this fp32 size")
        for x, s in paper:
            right.text(x + 0.33, s["paper_bytes"], f"{s['paper_ratio']:g}×", color=PAPER_COLOR, fontsize=7,
                       va="center", transform=ax.transData, zorder=5,
                       bbox=dict(facecolor="white", edgecolor="none", alpha=0.85, pad=0.5))
    bottom = ax.get_ylim()[0]
    for x, s in zip(xs, stages):         # a count of weights, not bytes: written inside the bar, not drawn as bytes
        if s["paper_counts"] == "weights":
            here = f"\nhere {s['weight_ratio']:.1f}×" if s["weight_ratio"] is not None else ""
            right.text(x, bottom * 1.4, f"AlexNet:\n{s['paper_ratio']:g}× fewer\nweights{here}", color="white",
                       fontsize=7, ha="center", va="bottom", fontweight="bold", transform=ax.transData, zorder=5)
    handles, labels = ax.get_legend_handles_labels()
    more, more_labels = right.get_legend_handles_labels()
    ax.legend(handles + more, labels + more_labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.13, 1.0),
              borderaxespad=0)
    return fig


def compression_panel(sweep: Any, sparsity: float | None = None, bits: int | None = None,
                      paper_ratios: Any = None) -> Panel:
    """Sparsity and bits sliders → bytes and perplexity of each pipeline stage, from a precomputed sweep."""
    import ipywidgets as W

    table = compression_table(sweep)                 # checked and indexed once: a redraw does no pandas work
    ratios = _paper_ratios(paper_ratios)
    sparsities = table.sparsities
    start = sparsities[-1] if sparsity is None else sparsity
    if not _finite_number(start) or not any(abs(start - s) < 1e-9 for s in sparsities):
        raise ValueError(f"sparsity={sparsity!r} is not in the sweep; allowed: {sparsities}")
    start = min(sparsities, key=lambda s: abs(s - start))
    options = table.bits_for(start)
    start_bits = options[len(options) // 2] if bits is None else bits
    if start_bits not in options:
        raise ValueError(f"bits={bits!r} is not in the sweep at sparsity {start!r}; allowed: {options}")
    style = {"description_width": "70px"}
    controls = {
        "sparsity": W.SelectionSlider(options=[(_percent(s), s) for s in sparsities], value=start,
                                      description="sparsity", style=style),
        "bits": W.SelectionSlider(options=[(f"{b} bits", b) for b in options], value=start_bits,
                                  description="bits", style=style),
    }
    output = W.Output()
    panel = Panel(widget=None, output=output, controls=controls)

    def refresh(*_):
        t0 = time.perf_counter()
        s = controls["sparsity"].value
        allowed = table.bits_for(s)
        if [v for _, v in controls["bits"].options] != allowed:        # a sparsity swept at other bit widths
            controls["bits"].unobserve(refresh, "value")
            keep = controls["bits"].value
            controls["bits"].options = [(f"{b} bits", b) for b in allowed]
            controls["bits"].value = min(allowed, key=lambda b: abs(b - keep))
            controls["bits"].observe(refresh, "value")
        panel.state = compression_state(table, s, controls["bits"].value, paper_ratios=ratios)
        panel.figure = compression_figure(panel.state)
        render_into(output, panel.figure, panel.state["text"], panel=panel, tight=False)
        panel.render_ms = (time.perf_counter() - t0) * 1000

    return wire_panel(panel, refresh, None, n_left=1)
