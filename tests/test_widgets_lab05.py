"""Lab 05's quantization panel, driven without a browser: a real sweep of a tiny random GPT (quantization_sweep on a
tiny evaluation set, no zoo model), synthetic sweeps for the wording and the front, and the per-layer weight errors."""
import itertools
import math

import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest
import torch

from labkit import quantize as Q
from labkit import widgets
from labkit.evaluate import evaluation_set
from labkit.model import GPT, GPTConfig
from labkit.widgets.quantization import BAND_SE, ERROR_BINS, SWEEP_COLUMNS

SCHEMES = ("int8-channel", "int8-channel-sym", "int4-channel", "int4-g16", "int2-g16", "int4-g16-gptq", "nf4-g16",
           "kmeans4", "fp8-channel")
LAYERS = ["blocks.0.attn.qkv", "blocks.1.mlp.fc"]


def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=17, block_size=16, n_layer=2, n_head=2, n_embd=32, activation="relu2",
                         tie_weights=False)).eval()


@pytest.fixture(scope="module")
def real():
    """A real sweep (every row measured) and the weight errors of two layers, on a tiny random GPT."""
    model = tiny_gpt()
    tokens = torch.randint(0, 17, (4000,), generator=torch.Generator().manual_seed(0))
    eval_set = evaluation_set(tokens, window=16)
    calibration = torch.randint(0, 17, (4, 16), generator=torch.Generator().manual_seed(1))
    rows = Q.quantization_sweep(model, eval_set, SCHEMES, calibration=calibration)
    errors = widgets.layer_weight_errors(model, [r["scheme"] for r in rows], LAYERS, calibration=calibration)
    return {"model": model, "rows": rows, "sweep": pd.DataFrame(rows), "errors": errors, "calibration": calibration}


def synthetic_row(scheme: str, diff: float, diff_se: float, base_loss: float = 1.5) -> dict:
    """A row with exactly quantization_sweep's columns; bytes from the scheme's bits per weight (1000 weights)."""
    s = Q.get_scheme(scheme)
    bpw = s.bits + (0.5 if s.granularity == "group" else 0.1)
    loss = base_loss + diff
    return {"scheme": s.name, "format": s.format, "bits": s.bits, "granularity": s.granularity,
            "group_size": s.group_size, "method": s.method, "bits_per_weight": bpw, "weight_mse": 1e-4 / s.bits,
            "quantized_bytes": round(1000 * bpw / 8), "total_bytes": round(1000 * bpw / 8) + 400, "loss": loss,
            "loss_se": 0.02, "perplexity": math.exp(loss), "loss_minus_float": diff, "diff_se": diff_se}


def synthetic_sweep(rows=(("int8-channel", 0.0001, 0.0005), ("int4-g32", 0.010, 0.001), ("int4-g32-gptq", 0.004, 0.001),
                          ("int2-g32", 0.2, 0.01), ("nf4-g32", -0.003, 0.001))) -> pd.DataFrame:
    float32 = {"scheme": "float32", "format": "float", "bits": 32, "granularity": None, "group_size": None,
               "method": None, "bits_per_weight": 32.0, "weight_mse": 0.0, "quantized_bytes": 0,
               "total_bytes": 4400, "loss": 1.5, "loss_se": 0.02, "perplexity": math.exp(1.5),
               "loss_minus_float": 0.0, "diff_se": 0.0}
    return pd.DataFrame([float32] + [synthetic_row(*r) for r in rows])


# ---- the sweep, as quantization_sweep makes it ------------------------------------------------

def test_the_panel_reads_every_column_quantization_sweep_returns(real):
    assert set(SWEEP_COLUMNS) <= set(real["rows"][0])                 # in step with labkit.quantize
    table = widgets.scheme_table(real["rows"])                        # the list of rows works as well as a DataFrame
    assert widgets.scheme_table(table) is table
    assert table.names() == widgets.scheme_table(real["sweep"]).names() == list(SCHEMES)
    assert table.families == ["int RTN", "int RTN (symmetric)", "int GPTQ", "NF4", "k-means", "fp8 e4m3"]
    assert table.bits == [8, 4, 2] and table.groups == ["per tensor", "per channel", "group 16"]
    for row in real["rows"][1:]:
        s = widgets.quantization_state(real["sweep"], row["scheme"])
        assert s["in_sweep"] and s["scheme"] == row["scheme"]
        assert s["total_bytes"] == row["total_bytes"] and s["perplexity"] == pytest.approx(row["perplexity"])
        assert s["ratio_vs_float32"] == pytest.approx(row["total_bytes"] / real["rows"][0]["total_bytes"])
        assert s["increase_pct"] == pytest.approx(100 * (row["perplexity"] / real["rows"][0]["perplexity"] - 1))
        again = widgets.quantization_state(real["sweep"], bits=s["bits"], group=s["group"], family=s["family"])
        assert again["scheme"] == row["scheme"]                        # the three controls name one row
    assert widgets.quantization_state(real["sweep"], "kmeans4")["group"] == "per tensor"      # one codebook per matrix
    assert widgets.quantization_state(real["sweep"], bits=4, group=16, family="int RTN")["scheme"] == "int4-g16"


def test_scheme_labels():
    assert [widgets.scheme_family(n) for n in ("int4-g32", "int8-channel-sym", "int3-g32-clip-gptq", "nf4-g64",
                                               "kmeans3", "fp8-channel")] == [
        "int RTN", "int RTN (symmetric)", "int GPTQ (clip search)", "NF4", "k-means", "fp8 e4m3"]
    assert [widgets.scheme_group(n) for n in ("int8-tensor", "int8-channel", "int4-g128", "kmeans4", "fp8-channel")] == [
        "per tensor", "per channel", "group 128", "per tensor", "per channel"]


# ---- wording, from the numbers --------------------------------------------------------------

def test_the_text_says_what_the_numbers_say():
    sweep = synthetic_sweep()
    s = widgets.quantization_state(sweep, "int4-g32")
    row = sweep.set_index("scheme").loc["int4-g32"]
    assert s["ratio_vs_float32"] == pytest.approx(row["total_bytes"] / 4400)
    text = s["text"]
    assert text.startswith("int4-g32 = int RTN at 4 bits, group 32: 4.500 bits per quantized weight")
    assert f"({s['increase_pct']:+.2f}%)" in text and s["increase_pct"] == pytest.approx(100 * math.expm1(0.01))
    assert f"{s['ratio_vs_float32']:.3f}× float32's" in text and widgets.human_bytes(row["total_bytes"]) in text
    assert f"Perplexity {row['perplexity']:.3f} vs float32's {math.exp(1.5):.3f}" in text
    assert "loss +0.0100 ± 0.0010 nats/char" in text and "worse than float32 beyond the noise" in text
    assert "within the noise" in widgets.quantization_state(sweep, "int8-channel")["text"]       # 0.0001 < 2·0.0005
    assert "better than float32 beyond the noise" in widgets.quantization_state(sweep, "nf4-g32")["text"]


def beats(q, p):
    """The documented rule of core.pareto_front with the sweep's paired SEs, written out again: q beats p."""
    noise = BAND_SE * (q["diff_se"] + p["diff_se"])
    return q["total_bytes"] <= p["total_bytes"] and (q["loss"] < p["loss"] - noise or
                                                     (q["loss"] == p["loss"] and q["total_bytes"] < p["total_bytes"]))


def test_the_front_ranks_each_pair_by_its_own_paired_noise():
    sweep = synthetic_sweep()
    table = widgets.scheme_table(sweep)
    assert table.front_tolerance_nats == pytest.approx(BAND_SE * 2 * 0.01)        # the widest pair: int2's SE twice
    names = [p["scheme"] for p in table.front]
    for p in table.points:                                                      # the rule, point by point
        assert (p["scheme"] in names) == (not any(beats(q, p) for q in table.points))
    # int4-g32 (+0.010 ± 0.001), its GPTQ (+0.004 ± 0.001) and nf4-g32 (−0.003 ± 0.001) take the same bytes: nf4
    # is lower by more than 2·(0.001 + 0.001) nats, so it beats both, although int2's noise (2·0.01) is wider; it
    # beats int8-channel (0.0031 > 2·0.0015) and float32 (0.003 > 2·0.001) too
    assert names == ["int2-g32", "nf4-g32"]
    one_tolerance = widgets.pareto_front(sweep.total_bytes, sweep.loss, BAND_SE * sweep.diff_se.max())
    assert {"int4-g32", "int4-g32-gptq"} <= set(sweep.scheme.iloc[one_tolerance])  # the old rule could not rank them
    s = widgets.quantization_state(sweep, "int4-g32")
    assert not s["on_front"] and "It is not on the memory-vs-quality front: nf4-g32 takes" in s["text"]
    assert ("its loss is lower by 0.0130 nats/char, more than the pair's noise 2·(0.0010 + 0.0010) = 0.0040 "
            "nats/char") in s["text"]                                           # 0.010 − (−0.003)
    on = widgets.quantization_state(sweep, "nf4-g32")
    assert on["on_front"] and "No scheme of at most its bytes is better by more than the pair's noise" in on["text"]
    # the same losses, but int4-g32's own paired SE is 0.006: 2·(0.006 + 0.001) > 0.013, so it is not ranked
    noisy = synthetic_sweep(rows=(("int4-g32", 0.010, 0.006), ("nf4-g32", -0.003, 0.001)))
    assert widgets.quantization_state(noisy, "int4-g32")["on_front"]
    twins = synthetic_sweep(rows=(("int8-channel", 0.001, 0.0005), ("fp8-channel", 0.001, 0.0005)))
    s = widgets.quantization_state(twins, "fp8-channel")                        # same bytes, same loss
    assert not s["on_front"] and "the same loss as int8-channel, which stands for both" in s["text"]


# ---- missing combinations, bad sweeps, bad choices ------------------------------------------

def test_a_combination_the_sweep_did_not_measure_is_shown_not_raised(real):
    s = widgets.quantization_state(real["sweep"], bits=8, group="group 16", family="NF4", layer_errors=real["errors"])
    assert not s["in_sweep"] and s["scheme"] is None and s["histogram"] is None
    assert s["text"] == "NF4 at 8 bits, group 16: not in the sweep. The sweep measured NF4 at 4 bits group 16."
    fig = widgets.quantization_figure(s)
    left, right = fig.axes
    assert not any(line.get_label().startswith("chosen") for line in left.lines)
    assert any("not in the sweep" in t.get_text() for t in right.texts)
    listed = widgets.quantization_state(real["sweep"], bits=2, group="per channel", family="int RTN")["text"]
    assert "The sweep measured int RTN at 8 bits per channel, 4 bits per channel, 4 bits group 16, 2 bits group 16." \
        in listed


def test_every_combination_of_the_controls_gives_a_state(real):
    table = widgets.scheme_table(real["sweep"])
    seen, missing = set(), []
    for family, bits, group in itertools.product(table.families, table.bits, table.groups):
        s = widgets.quantization_state(table, bits=bits, group=group, family=family, layer_errors=real["errors"])
        if s["in_sweep"]:
            seen.add(s["scheme"])
            assert s["histogram"]["n_weights"] == real["errors"]["errors"][s["scheme"]][LAYERS[0]].numel()
        else:
            missing.append(s)
            assert s["text"].startswith(f"{family} at {bits} bits, {group}: not in the sweep.")
    assert seen == set(SCHEMES)                                         # every scheme reachable from the menus
    assert len(missing) == len(table.families) * len(table.bits) * len(table.groups) - len(SCHEMES)
    for s in missing[::10]:
        widgets.quantization_figure(s)
    # a Scheme or a longer name for the same scheme works too
    assert widgets.quantization_state(table, Q.get_scheme("int4-g16"))["scheme"] == "int4-g16"


def change_column(column, value):
    return lambda d: d.assign(**{column: [value if i == 2 else v for i, v in enumerate(d[column])]})


@pytest.mark.parametrize("change, error, words", [
    (lambda d: d.drop(columns=["diff_se"]), ValueError, r"lacks the column\(s\) \['diff_se'\]"),
    (lambda d: d.iloc[1:], ValueError, "exactly one 'float32' row .* found 0"),
    (lambda d: pd.concat([d, d.iloc[:1]]), ValueError, "exactly one 'float32' row .* found 2"),
    (lambda d: d.iloc[:1], ValueError, "only the float32 row"),
    (lambda d: d.iloc[:0], ValueError, "no rows"),
    (change_column("loss", float("nan")), ValueError, r"sweep\['loss'\] at row 2 \('int4-g32'\) is nan"),
    (change_column("total_bytes", 0), ValueError, r"total_bytes.*allowed: a finite number > 0 \(bytes\)"),
    (change_column("diff_se", -0.1), ValueError, "diff_se"),
    (change_column("perplexity", 2.0), ValueError, r"is not exp\(loss\)"),
    (change_column("loss_minus_float", 0.5), ValueError, "is not its loss minus float32's"),
    (change_column("bits", 3), ValueError,
     r"scheme 'int4-g32' means .* \('int', 4, 'group', 32, 'rtn'\), but the row says \('int', 3, 'group', 32, 'rtn'\)"),
    (change_column("scheme", "int5-g32"), ValueError, "scheme='int5-g32' is not a scheme name"),
    (lambda d: pd.concat([d, d.iloc[1:2]]), ValueError, r"two schemes for format/method 'int RTN', 8 bits, per channel"),
    (lambda d: d.to_dict("list"), TypeError, "got dict"),
    (lambda d: "int4-g32", TypeError, "got str"),
])
def test_a_bad_sweep_is_refused_with_a_clear_error(change, error, words):
    bad = change(synthetic_sweep())
    with pytest.raises(error, match=words):
        widgets.quantization_state(bad, "int4-g32")
    with pytest.raises(error, match=words):
        widgets.quantization_panel(bad)


@pytest.mark.parametrize("kwargs, words", [
    ({"scheme": "int3-g32"}, r"scheme='int3-g32' is not in the sweep; allowed: \['int8-channel', 'int4-g32'"),
    ({"scheme": "int4-g33x"}, "is not a scheme name"),
    ({"scheme": "float32"}, "float32' is the reference"),
    ({"scheme": "int4-g32", "bits": 4}, "either scheme or bits/group/family"),
    ({}, "choose a scheme by name"),
    ({"bits": 5, "group": "group 32", "family": "int RTN"}, r"bits=5 is not in the sweep; allowed: \[8, 4, 2\]"),
    ({"bits": True, "group": "group 32", "family": "int RTN"}, "bits=True"),
    ({"bits": 4, "group": 64, "family": "int RTN"},
     r"group='group 64' is not in the sweep; allowed: \['per channel', 'group 32'\]"),
    ({"bits": 4, "group": "group 32", "family": "int9"}, "family='int9' is not in the sweep; allowed: \\['int RTN'"),
])
def test_bad_choices_are_refused(kwargs, words):
    with pytest.raises(ValueError, match=words):
        widgets.quantization_state(synthetic_sweep(), **kwargs)


def test_bad_layer_errors_and_layers_are_refused(real):
    sweep, errors = real["sweep"], real["errors"]
    with pytest.raises(ValueError, match=r"layer='blocks.9.mlp.fc' has no weight errors; allowed: \['blocks.0.attn.qkv'"):
        widgets.quantization_state(sweep, "int4-g16", layer_errors=errors, layer="blocks.9.mlp.fc")
    with pytest.raises(ValueError, match="layer='blocks.0.attn.qkv' has no weight errors; allowed: \\[\\]"):
        widgets.quantization_panel(sweep, layer="blocks.0.attn.qkv")
    with pytest.raises(TypeError, match="what labkit.widgets.layer_weight_errors returns.*got dict with keys"):
        widgets.quantization_state(sweep, "int4-g16", layer_errors=errors["errors"])
    one_layer = {"errors": {k: {LAYERS[0]: v[LAYERS[0]]} for k, v in errors["errors"].items()},
                 "weight_std": errors["weight_std"]}
    with pytest.raises(ValueError, match="must hold one tensor for each layer"):
        widgets.quantization_panel(sweep, one_layer)
    nan = {"errors": {"int4-g16": {LAYERS[0]: torch.full((2, 2), float("nan")), LAYERS[1]: torch.zeros(2)}},
           "weight_std": errors["weight_std"]}
    with pytest.raises(ValueError, match=r"\['int4-g16'\]\['blocks.0.attn.qkv'\] must be a non-empty finite float"):
        widgets.quantization_state(sweep, "int4-g16", layer_errors=nan)
    with pytest.raises(ValueError, match=r"weight_std'\]\['blocks.0.attn.qkv'\] is 0.0"):
        widgets.quantization_state(sweep, "int4-g16",
                                   layer_errors={"errors": {}, "weight_std": {LAYERS[0]: 0.0, LAYERS[1]: 1.0}})


# ---- per-layer weight errors ----------------------------------------------------------------

def test_layer_weight_errors_are_each_schemes_dequantized_minus_original(real):
    model, errors = real["model"], real["errors"]
    assert list(errors["errors"]) == list(SCHEMES)                   # float32 skipped: it has no rounding error
    layers = Q.quantizable_layers(model)
    for name in LAYERS:
        w = layers[name].weight.detach()
        assert errors["weight_std"][name] == pytest.approx(w.std().item())
        for scheme in ("int4-g16", "nf4-g16", "kmeans4", "fp8-channel", "int8-channel-sym"):
            assert torch.equal(errors["errors"][scheme][name], Q.quantize_tensor(w, scheme).dequantize() - w)
    # GPTQ: the layer as quantize_model quantizes it in the sweep (every earlier layer already quantized)
    _, info = Q.quantize_model(model, "int4-g16-gptq", calibration=real["calibration"])
    for name in LAYERS:
        w = layers[name].weight.detach()
        assert torch.equal(errors["errors"]["int4-g16-gptq"][name], info["quantized"][name].dequantize() - w)
        assert not torch.equal(errors["errors"]["int4-g16-gptq"][name], errors["errors"]["int4-g16"][name])
    # only the first layer asked for: GPTQ stops there, and the first layer's errors are the same
    first = widgets.layer_weight_errors(model, ["int4-g16-gptq"], LAYERS[0], calibration=real["calibration"])
    assert torch.equal(first["errors"]["int4-g16-gptq"][LAYERS[0]], errors["errors"]["int4-g16-gptq"][LAYERS[0]])


def test_layer_weight_errors_refuses_bad_input(real):
    model = real["model"]
    with pytest.raises(ValueError, match="layers holds 'blocks.0.attn.c_attn', which is not a quantizable layer"):
        widgets.layer_weight_errors(model, ["int4-g16"], ["blocks.0.attn.c_attn"])
    with pytest.raises(ValueError, match="layers is empty"):
        widgets.layer_weight_errors(model, ["int4-g16"], [])
    with pytest.raises(ValueError, match="schemes has no quantized scheme"):
        widgets.layer_weight_errors(model, ["float32"], LAYERS)
    with pytest.raises(ValueError, match="scheme='int4-g7x' is not a scheme name"):
        widgets.layer_weight_errors(model, ["int4-g7x"], LAYERS)
    with pytest.raises(TypeError, match="model must be a labkit.model.GPT"):
        widgets.layer_weight_errors(torch.nn.Linear(4, 4), ["int4-g16"], LAYERS)
    with pytest.raises(ValueError, match=r"schemes \['int4-g16-gptq'\] use GPTQ, which needs calibration"):
        widgets.layer_weight_errors(model, ["int4-g16", "int4-g16-gptq"], LAYERS)
    one = widgets.layer_weight_errors(model, "int2-g16", LAYERS[1])               # one name for either argument
    assert list(one["errors"]) == ["int2-g16"] and list(one["weight_std"]) == [LAYERS[1]]


def test_histogram_counts_every_weight_in_units_of_the_weight_std(real):
    s = widgets.quantization_state(real["sweep"], "int2-g16", layer_errors=real["errors"], layer=LAYERS[1])
    h, e = s["histogram"], real["errors"]["errors"]["int2-g16"][LAYERS[1]]
    std = real["errors"]["weight_std"][LAYERS[1]]
    assert len(h["counts"]) == ERROR_BINS and sum(h["counts"]) == e.numel() == h["n_weights"]
    assert h["edges"][0] == pytest.approx(-h["edges"][-1]) and h["edges"][-1] >= h["max_abs_std"]
    assert h["max_abs_std"] == pytest.approx(e.abs().max().item() / std)
    assert h["rms_std"] == pytest.approx(e.square().mean().sqrt().item() / std)
    assert f"{LAYERS[1]}: rounding error RMS {h['rms_std']:.3f}·σ" in s["text"]
    # in units of the weight std: errors and std both doubled give the same histogram
    doubled = {"errors": {k: {n: 2 * t for n, t in v.items()} for k, v in real["errors"]["errors"].items()},
               "weight_std": {n: 2 * v for n, v in real["errors"]["weight_std"].items()}}
    s2 = widgets.quantization_state(real["sweep"], "int2-g16", layer_errors=doubled, layer=LAYERS[1])
    assert s2["histogram"]["counts"] == h["counts"]
    assert s2["histogram"]["rms_std"] == pytest.approx(h["rms_std"])
    # fewer bits, larger errors (the same layer, the same grid shape)
    s8 = widgets.quantization_state(real["sweep"], "int8-channel", layer_errors=real["errors"], layer=LAYERS[1])
    assert s8["histogram"]["rms_std"] < h["rms_std"] / 10


def test_gptq_is_drawn_against_round_to_nearest_on_the_same_grid(real):
    s = widgets.quantization_state(real["sweep"], "int4-g16-gptq", layer_errors=real["errors"])
    ref = s["histogram"]["reference"]
    assert ref["scheme"] == "int4-g16" and sum(ref["counts"]) == s["histogram"]["n_weights"]
    assert f"int4-g16 (round to nearest, same bits and groups): RMS {ref['rms_std']:.3f}·σ" in s["text"]
    labels = [p.get_label() for p in widgets.quantization_figure(s).axes[1].patches]
    assert any(label.startswith("int4-g16, round to nearest") for label in labels)
    assert widgets.quantization_state(real["sweep"], "int4-g16", layer_errors=real["errors"])["histogram"]["reference"] \
        is None


def test_a_scheme_without_weight_errors_says_so(real):
    only = {"errors": {"int8-channel": real["errors"]["errors"]["int8-channel"]},
            "weight_std": real["errors"]["weight_std"]}
    s = widgets.quantization_state(real["sweep"], "nf4-g16", layer_errors=only)
    assert s["histogram"]["missing"] and "No weight errors were computed for nf4-g16" in s["text"]
    right = widgets.quantization_figure(s).axes[1]
    assert any("no weight errors computed" in t.get_text() for t in right.texts)


# ---- the panel ------------------------------------------------------------------------------

def lines_by_label(ax):
    return {line.get_label(): line for line in ax.lines}


def test_panel_follows_its_controls_with_one_redraw_each(real):
    sweep, rows = real["sweep"], real["rows"]
    panel = widgets.quantization_panel(sweep, real["errors"], scheme="int4-g16")
    assert set(panel.controls) == {"family", "bits", "group", "layer"}
    assert panel.state["scheme"] == "int4-g16" and panel.state["layer"] == LAYERS[0]
    bundle = panel._repr_mimebundle_()
    assert "image/png" in bundle and bundle["text/plain"].startswith("int4-g16 = int RTN at 4 bits, group 16: ")
    changes = []
    panel.output.observe(lambda change: changes.append(change), "outputs")

    panel.controls["family"].value = "int GPTQ"
    panel.controls["layer"].value = LAYERS[1]
    assert len(changes) == 2 and len(panel.output.outputs) == 2       # text and figure, replaced not appended
    s = panel.state
    assert (s["scheme"], s["layer"]) == ("int4-g16-gptq", LAYERS[1])
    gptq = next(r for r in rows if r["scheme"] == "int4-g16-gptq")
    assert f"Perplexity {gptq['perplexity']:.3f}" in panel.output.outputs[0]["text"]
    left, right = panel.figure.axes
    chosen = lines_by_label(left)["chosen: int4-g16-gptq"]
    assert (chosen.get_xdata()[0], chosen.get_ydata()[0]) == pytest.approx(
        (gptq["total_bytes"], 100 * math.expm1(gptq["loss_minus_float"])))
    f32 = next(label for label in lines_by_label(left) if label.startswith("float32"))
    assert lines_by_label(left)[f32].get_ydata()[0] == 0
    front = next(line for label, line in lines_by_label(left).items() if label.startswith("Pareto front"))
    assert list(front.get_xdata()) == [p["total_bytes"] for p in s["front"]]
    assert "bytes" in left.get_xlabel() and left.get_xscale() == "log" and "%" in left.get_ylabel()
    assert any("KiB" in t.get_text() for t in left.get_xticklabels())
    assert "σ" in right.get_xlabel() and "count" in right.get_ylabel()
    for ax in (left, right):
        labels = [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
        assert labels and "$" not in "".join(labels)                # plain text, not mathtext (slow to lay out)

    panel.controls["bits"].value = 8                                 # int GPTQ at 8 bits: not measured
    assert len(changes) == 3 and not panel.state["in_sweep"]
    assert "not in the sweep" in panel.output.outputs[0]["text"]
    panel.controls["family"].value = "int RTN"
    panel.controls["group"].value = "per channel"
    assert panel.state["scheme"] == "int8-channel" and len(changes) == 5
    assert panel.render_ms < 3000, f"a redraw took {panel.render_ms:.0f} ms"   # generous: the machine is shared


def test_panel_without_layer_errors_or_with_one_layer(real):
    panel = widgets.quantization_panel(real["sweep"])
    assert set(panel.controls) == {"family", "bits", "group"} and panel.state["scheme"] == "int8-channel"
    assert panel.state["histogram"] is None
    assert any("no layer errors given" in t.get_text() for t in panel.figure.axes[1].texts)
    one = widgets.layer_weight_errors(real["model"], ["int4-g16"], LAYERS[0])
    panel = widgets.quantization_panel(synthetic_sweep(), one, scheme="int2-g32")
    assert "layer" not in panel.controls and panel.state["layer"] == LAYERS[0]
    assert panel.state["histogram"]["missing"]                      # the synthetic sweep's schemes were not computed
    with pytest.raises(ValueError, match="scheme='int3-g16' is not in the sweep"):
        widgets.quantization_panel(real["sweep"], scheme="int3-g16")


@pytest.mark.parametrize("diffs", [(0.00001, 0.00002), (-0.0005, 0.002), (0.5, 2.5)])
def test_the_quality_axis_is_readable_for_tiny_negative_and_huge_differences(diffs):
    sweep = synthetic_sweep(rows=(("int8-channel", diffs[0], 0.00001), ("int4-g32", diffs[1], 0.0001)))
    left = widgets.quantization_figure(widgets.quantization_state(sweep, "int4-g32")).axes[0]
    labels = [t.get_text() for t in left.get_yticklabels()]
    assert "0" in labels and len(labels) >= 2 and all(t == "0" or t.endswith("%") for t in labels)
    lo, hi = left.get_ylim()
    for d in diffs:                                                     # every point inside the axis
        assert lo < 100 * math.expm1(d) < hi
