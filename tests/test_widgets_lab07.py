"""Lab 07's Deep Compression panel, driven without a browser (a small sweep built here with the contract's columns)."""
import math
import time

import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest
import torch

from labkit import widgets

STAGES = ("fp32", "pruned", "pruned + fine-tuned", "weight sharing (k-means)", "relative index", "Huffman")
FP32_BYTES = 817_280 * 4                       # the baby GPT's parameters in fp32
PAPER = {"prune": 9.0, "prune + quantize": 27.0, "prune + quantize + Huffman": 35.0}


def stage_bytes(stage: str, sparsity: float, bits: int) -> int:
    """A plausible size per stage: fp32 values + 4-bit gaps for the kept weights, then bits-bit codes, then ~15% less."""
    kept = round((1 - sparsity) * 817_280)
    return {"fp32": FP32_BYTES, "pruned": kept * 4 + kept // 2, "pruned + fine-tuned": kept * 4 + kept // 2,
            "weight sharing (k-means)": math.ceil(kept * (bits + 4) / 8) + 4 * 2 ** bits,
            "relative index": math.ceil(kept * (bits + 4) / 8) + 4 * 2 ** bits,
            "Huffman": round(0.85 * math.ceil(kept * (bits + 4) / 8)) + 4 * 2 ** bits}[stage]


def make_sweep(sparsities=(0.5, 0.7, 0.9), bits=(3, 4, 5), se=0.004) -> pd.DataFrame:
    """A sweep shaped like deep_compression.pipeline_sweep's: loss rises with sparsity and with fewer bits."""
    rows = []
    for s in sparsities:
        for b in bits:
            for i, stage in enumerate(STAGES):
                increase = 0.0 if stage == "fp32" else 0.002 * i + 0.05 * s ** 3 + 0.02 / b
                if stage == "pruned + fine-tuned":
                    increase /= 3
                loss = 1.50 + increase
                n = stage_bytes(stage, s, b)
                weights = 817_280 if stage == "fp32" else round((1 - s) * 800_000) + 17_280
                rows.append({"sparsity": s, "bits": b, "stage": stage, "bytes": n, "ratio": FP32_BYTES / n,
                             "weights": weights,
                             "loss": loss, "loss_se": 0.01, "perplexity": math.exp(loss), "increase": increase,
                             "increase_se": 0.0 if stage == "fp32" else se})
    return pd.DataFrame(rows)


def test_state_reads_the_chosen_setting_fp32_first_and_says_what_it_means():
    sweep = make_sweep()
    # settings in any order, and the fp32 rows last: fp32 is still drawn first, the stages in the sweep's order
    reordered = sweep.sort_values(["sparsity", "bits"], ascending=False, kind="stable")
    reordered = pd.concat([reordered[reordered.stage != "fp32"], reordered[reordered.stage == "fp32"]])
    state = widgets.compression_state(reordered, 0.9, 4, paper_ratios=PAPER)
    assert [s["stage"] for s in state["stages"]] == list(STAGES)
    final = sweep[(sweep.sparsity == 0.9) & (sweep.bits == 4) & (sweep.stage == "Huffman")].iloc[0]
    assert state["final_bytes"] == final["bytes"] and state["ratio"] == pytest.approx(FP32_BYTES / final["bytes"])
    assert state["perplexity_rise"] == pytest.approx(final["perplexity"] / math.exp(1.5) - 1)
    text = state["text"]
    assert f"{state['ratio']:.1f}× smaller than fp32" in text and "3.12 MiB" in text
    assert f"perplexity {final['perplexity']:.3f} vs {math.exp(1.5):.3f}" in text
    assert f"({100 * state['perplexity_rise']:+.1f}%)" in text and "The paper's file was 35× smaller on AlexNet." in text
    # measurable: its paired increase is beyond 2·SE; the verdict on the lab's target follows from the numbers
    assert state["measurable_rise"] and "a measurable rise" in text
    meets = state["ratio"] >= 12 and math.exp(final["increase"] + 2 * final["increase_se"]) - 1 <= 0.05
    assert state["meets_target"] == meets and ("It meets" if meets else "It misses") in text


def test_a_rise_inside_the_noise_is_called_noise():
    state = widgets.compression_state(make_sweep(se=0.05), 0.7, 5, paper_ratios=PAPER)
    assert not state["measurable_rise"] and "within the noise" in state["text"]


@pytest.mark.parametrize("se, meets", [(0.004, True), (0.01, False)])
def test_the_target_is_met_only_when_the_rise_stays_within_5_percent_at_plus_2_se(se, meets):
    # at 70% and 5 bits the measured rise is +3.2% either way; with SE 0.01 its upper end, +5.25%, passes 5%:
    # the notebook's rule (rise + 2·SE ≤ 5%), so the panel and the notebook never disagree
    state = widgets.compression_state(make_sweep(se=se), 0.7, 5, paper_ratios=PAPER)
    assert state["ratio"] >= 12 and state["perplexity_rise"] < 0.05
    assert state["perplexity_rise_hi"] == pytest.approx(math.exp(state["increase"] + 2 * se) - 1)
    assert state["meets_target"] is meets
    assert (f"It {'meets' if meets else 'misses'} the lab's target (≥ 12× with the perplexity rise ≤ 5% even at "
            f"+2·SE: here {100 * state['perplexity_rise_hi']:+.1f}%)") in state["text"]


def test_the_papers_figures_sit_beside_what_they_count():
    state = widgets.compression_state(make_sweep(), 0.5, 3, paper_ratios=PAPER)
    beside = {s["stage"]: s["paper_ratio"] for s in state["stages"] if s["paper_ratio"] is not None}
    # 27× includes the paper's relative index: beside "relative index", not the k-means row
    assert beside == {"pruned": 9.0, "relative index": 27.0, "Huffman": 35.0}
    for s in state["stages"]:
        if s["stage"] == "pruned":      # 9× fewer weights: compared with this run's weights, never drawn as bytes
            assert s["paper_counts"] == "weights" and s["paper_bytes"] is None
            assert s["weight_ratio"] == pytest.approx(817_280 / (400_000 + 17_280))
        elif s["paper_ratio"]:
            assert s["paper_counts"] == "bytes" and s["paper_bytes"] == pytest.approx(FP32_BYTES / s["paper_ratio"])
    assert ("Pruning stores 2.0× fewer weights (AlexNet in the paper: 9×) but only 1.8× fewer bytes: their indices "
            "cost bytes too.") in state["text"]
    # the keys may come in any order and spelling of the paper's figures; by default labkit's PAPER_RATIOS
    for ratios in ({"+ Huffman": 35, "+ quantization": 27, "pruning": 9}, None):
        state = widgets.compression_state(make_sweep(), 0.5, 3, paper_ratios=ratios)
        assert {s["stage"]: s["paper_ratio"] for s in state["stages"] if s["paper_ratio"]} == beside
    # the figure writes the weight figure above the pruned bar and marks only the byte figures
    fig = widgets.compression_figure(state)
    texts = [t.get_text() for axes in fig.axes for t in axes.texts]
    assert "AlexNet:\n9× fewer\nweights\nhere 2.0×" in texts and "27×" in texts and "35×" in texts
    assert not any(t == "9×" for t in texts)
    # a sweep without the weights column still draws; the weight figure then stands alone
    state = widgets.compression_state(make_sweep().drop(columns=["weights"]), 0.5, 3, paper_ratios=PAPER)
    assert state["stages"][1]["weight_ratio"] is None and "fewer weights" not in state["text"]
    assert "AlexNet:\n9× fewer\nweights" in [t.get_text() for axes in widgets.compression_figure(state).axes
                                               for t in axes.texts]


def test_the_panel_reads_a_real_pipeline_sweep(corpus):
    # deep_compression.pipeline_sweep on a tiny GPT (1 fine-tuning step, not cached): its DataFrame is drawn as is
    from labkit import deep_compression as D
    from labkit.evaluate import evaluation_set
    from labkit.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=corpus.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32,
                          activation="relu2", tie_weights=False)).eval()
    sweep = D.pipeline_sweep(model, sparsities=(0.5, 0.8), bits=(2, 3), fine_tune_steps=1, corpus=corpus,
                             eval_set=evaluation_set(corpus.val, window=16, every=4), progress=False,
                             log=lambda *a: None, cache=False)
    panel = widgets.compression_panel(sweep)
    state = panel.state
    assert (state["sparsity"], state["bits"]) == (0.8, 3) and state["stages"][0]["stage"] == "fp32"
    assert [s["stage"] for s in state["stages"]] == [st for st in D.STAGES if st in set(sweep.stage)]
    last = sweep[(sweep.sparsity == 0.8) & (sweep.bits == 3)].iloc[-1]
    assert state["final_bytes"] == last["bytes"] and state["final_stage"] == last["stage"] == "Huffman"
    assert {s["stage"]: s["paper_ratio"] for s in state["stages"] if s["paper_ratio"]} == \
        {k: v for k, v in D.PAPER_RATIOS.items() if not isinstance(v, str)}
    assert {s["stage"]: s["paper_counts"] for s in state["stages"] if s["paper_ratio"]} == D.PAPER_COUNTS
    pruned = state["stages"][1]                     # the real sweep's weights: all but the pruned zeros
    assert pruned["stage"] == "pruned" and pruned["weight_ratio"] == pytest.approx(
        last["weights"] and sweep.iloc[0]["weights"] / pruned["weights"])
    assert sweep.iloc[0]["weights"] == sum(p.numel() for p in model.parameters())
    assert panel.png.startswith(b"\x89PNG")


@pytest.mark.parametrize("change, error, words", [
    (lambda d: d.drop(columns=["increase_se"]), ValueError, "lacks the column(s) ['increase_se']"),
    (lambda d: d.assign(bytes=d["bytes"] * 0), ValueError, "sweep['bytes'] at row 0 is 0"),
    (lambda d: d.assign(perplexity=d["perplexity"] * 2), ValueError, "is not exp(loss)"),
    (lambda d: d.assign(ratio=d["ratio"] * 1.5), ValueError, "is not fp32 bytes / bytes"),
    (lambda d: d[d.stage != "fp32"], ValueError, "no 'fp32' row for sparsity=0.5, bits=3"),
    (lambda d: d[d.stage == "fp32"], ValueError, "only the 'fp32' row"),
    (lambda d: pd.concat([d, d.iloc[[3]]]), ValueError, "two rows for sparsity=0.5, bits=3, stage="),
    (lambda d: d.assign(bits=d["bits"].astype(float)), ValueError, "sweep['bits'] at row 0 is 3.0"),
    (lambda d: d.assign(sparsity=1.0), ValueError, "allowed: a finite number in [0, 1)"),
    (lambda d: d.iloc[0:0], ValueError, "sweep has no rows"),
    (lambda d: d.to_dict("records"), TypeError, "must be a pandas DataFrame"),
])
def test_a_bad_sweep_is_refused_with_a_clear_error(change, error, words):
    with pytest.raises(error) as info:
        widgets.compression_table(change(make_sweep()))
    assert words in str(info.value), str(info.value)


@pytest.mark.parametrize("kwargs, words", [
    ({"sparsity": 0.6, "bits": 4}, "sparsity=0.6 is not in the sweep; allowed: [0.5, 0.7, 0.9]"),
    ({"sparsity": 0.5, "bits": 8}, "bits=8 is not in the sweep at sparsity 0.5; allowed: [3, 4, 5]"),
    ({"sparsity": 0.5, "bits": 4.0}, "bits=4.0 is not in the sweep"),
    ({"sparsity": "0.5", "bits": 4}, "sparsity='0.5' is not in the sweep"),
])
def test_bad_choices_are_refused(kwargs, words):
    with pytest.raises(ValueError) as info:
        widgets.compression_state(make_sweep(), paper_ratios=PAPER, **kwargs)
    assert words in str(info.value)


def test_figure_axes_say_what_and_in_which_unit_and_fp32_comes_first():
    state = widgets.compression_state(make_sweep(), 0.9, 4, paper_ratios=PAPER)
    fig = widgets.compression_figure(state)
    bars_ax, ppl_ax = fig.axes
    assert "bytes" in bars_ax.get_ylabel() and "log" in bars_ax.get_ylabel() and bars_ax.get_yscale() == "log"
    assert "perplexity" in ppl_ax.get_ylabel() and "stage" in bars_ax.get_xlabel()
    labels = [t.get_text() for t in bars_ax.get_xticklabels()]
    assert labels[0].startswith("fp32\n1.0×") and labels[-1].startswith("Huffman\n")
    heights = [p.get_height() for p in bars_ax.patches]
    assert heights == [s["bytes"] for s in state["stages"]]
    assert all("$" not in t.get_text() for t in bars_ax.get_yticklabels())      # plain 'KiB' labels, no mathtext
    legend = [t.get_text() for t in bars_ax.get_legend().get_texts()]
    assert any("paper's AlexNet ratio" in t for t in legend) and any("rise beyond 2·SE" in t for t in legend)


def test_panel_follows_its_sliders_with_one_redraw_each():
    sweep = make_sweep()
    panel = widgets.compression_panel(sweep, paper_ratios=PAPER)
    assert set(panel.controls) == {"sparsity", "bits"}
    assert (panel.state["sparsity"], panel.state["bits"]) == (0.9, 4)        # the largest sparsity, the middle bits
    bundle = panel._repr_mimebundle_()
    assert "image/png" in bundle and bundle["text/plain"].startswith("Sparsity 90%, 4-bit shared weights")
    assert panel.png and panel.png.startswith(b"\x89PNG")                      # what a viewer shows
    changes = []
    panel.output.observe(lambda change: changes.append(change), "outputs")
    panel.controls["sparsity"].value = 0.5
    assert len(changes) == 1 and len(panel.output.outputs) == 2               # text and figure, replaced not appended
    assert panel.state["sparsity"] == 0.5 and "Sparsity 50%" in panel.output.outputs[0]["text"]
    panel.controls["bits"].value = 3
    assert len(changes) == 2 and panel.state["bits"] == 3
    assert panel.render_ms < 3000, f"a redraw took {panel.render_ms:.0f} ms"   # generous: the machine is shared


def test_panel_bits_follow_a_sparsity_swept_at_other_widths():
    sweep = pd.concat([make_sweep(sparsities=(0.5,), bits=(3, 4)), make_sweep(sparsities=(0.9,), bits=(4, 5, 6))])
    panel = widgets.compression_panel(sweep, sparsity=0.5, bits=3, paper_ratios=PAPER)
    assert [v for _, v in panel.controls["bits"].options] == [3, 4]
    panel.controls["sparsity"].value = 0.9
    assert [v for _, v in panel.controls["bits"].options] == [4, 5, 6] and panel.state["bits"] == 4
    with pytest.raises(ValueError, match=r"bits=5 is not in the sweep at sparsity 0.5; allowed: \[3, 4\]"):
        widgets.compression_panel(sweep, sparsity=0.5, bits=5, paper_ratios=PAPER)


def test_every_setting_draws_and_the_redraw_time_is_printed(capsys):
    table = widgets.compression_table(make_sweep())
    for s in table.sparsities:
        for b in table.bits_for(s):
            state = widgets.compression_state(table, s, b, paper_ratios=PAPER)
            assert state["stages"][0]["stage"] == "fp32" and math.isfinite(state["ratio"])
    # redraw time (state + figure + PNG), median of 5 — printed, not asserted: the machine is shared
    panel = widgets.compression_panel(table, paper_ratios=PAPER)
    times = []
    for s in (0.5, 0.7, 0.9, 0.7, 0.5):
        t0 = time.perf_counter()
        panel.controls["sparsity"].value = s
        times.append((time.perf_counter() - t0) * 1000)
    with capsys.disabled():
        print(f"\nlab 07 compression panel: redraw median {sorted(times)[2]:.0f} ms "
              f"(min {min(times):.0f}, max {max(times):.0f}; target ≤ 300 ms on an idle machine)")
