"""Lab 05: memory against perplexity for every quantization scheme of a sweep, and one layer's rounding errors.

    rows = quantize.quantization_sweep(model, eval_set, schemes, calibration=calibration)
    errors = widgets.layer_weight_errors(model, [r["scheme"] for r in rows], ["blocks.0.mlp.fc"], calibration)
    widgets.quantization_panel(rows, errors)           # or pd.DataFrame(rows); quantization_state(rows, "int4-g32")

A sweep is what labkit.quantize.quantization_sweep returns (its list of rows, or the DataFrame made from it):
one row per scheme, float32 first, with the columns scheme, format, bits, granularity, group_size, method,
bits_per_weight, quantized_bytes, total_bytes (the whole model as stored), loss and loss_se (nats/char on the
lab's evaluation set), perplexity (exp(loss)), loss_minus_float and diff_se (the scheme's loss minus float32's,
paired on the same windows, and its standard error).

The panel picks a scheme with three controls, each offering the values the sweep holds:
- bits (8, 4, 3, 2 ...);
- group: "per tensor" (one scale, or k-means' one codebook, per matrix), "per channel" (one scale per output
  row) or "group N" (one scale per N consecutive input weights of a row);
- format/method: "int RTN" (uniform grid, round to nearest), "int RTN (symmetric)", "int GPTQ", "NF4",
  "k-means", "fp8 e4m3" (`scheme_family`).
A combination the sweep did not measure is shown as "not in the sweep", with what it did measure.

Left: bytes against perplexity for every scheme, bars ± 2·diff_se (the paired noise against float32), the
float32 model as a star, and the memory-vs-quality front (`core.pareto_front` with ses=diff_se): every row is paired
with float32 on the same windows, so two rows p and q are ranked only when their losses differ by more than
BAND_SE·(diff_se_p + diff_se_q), a bound on BAND_SE standard errors of their own paired difference; the front never
ranks differences inside that noise.
Right: a histogram of (dequantized − original) weights of one layer for the chosen scheme, in units of that
layer's weight standard deviation, from `layer_weight_errors` (computed once, before the panel). A GPTQ scheme is
drawn over its round-to-nearest twin: GPTQ moves the weights not yet rounded to cancel the error of those already
rounded, so its weight error can be larger than RTN's while the layer's output error is smaller
(labkit.gptq.output_errors measures that).
"""
from __future__ import annotations

import copy
import math
import numbers
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import matplotlib.ticker
import torch
from matplotlib.figure import Figure
from torch import Tensor

from labkit.gptq import gptq_quantize_layers
from labkit.model import GPT
from labkit.quantize import Scheme, get_scheme, quantizable_layers, quantize_tensor
from labkit.widgets.core import (Panel, _bytes_axis, _finite_number, human_bytes, pareto_beats, pareto_front,
                                 render_into, wire_panel)

SWEEP_COLUMNS = ("scheme", "format", "bits", "granularity", "group_size", "method", "bits_per_weight",
                 "quantized_bytes", "total_bytes", "loss", "loss_se", "perplexity", "loss_minus_float", "diff_se")
#: the noise band: ± this many (paired) standard errors
BAND_SE = 2.0
#: bins of the weight-error histogram (odd, so that 0 is the middle of a bin)
ERROR_BINS = 61
FAMILY_STYLES = {"int RTN": ("#4C72B0", "o"), "int RTN (symmetric)": ("#64B5CD", "o"),
                 "int RTN (clip search)": ("#937860", "P"), "int GPTQ": ("#55A868", "s"), "NF4": ("#DD8452", "D"),
                 "k-means": ("#8172B3", "^"), "fp8 e4m3": ("#C44E52", "v")}
OTHER_STYLES = (("#DA8BC3", "X"), ("#CCB974", "h"), ("#8C8C8C", "p"), ("#2F4F4F", "*"))
DEFAULT_SCHEME = "int4-g32"
#: the perplexity-increase axis is linear within ± this many percent (symlog's linthresh), logarithmic beyond
LINEAR_PCT = 0.01


# ---------------------------------------------------------------------------------------------
# Naming a scheme by its three controls


def scheme_family(scheme: str | Scheme) -> str:
    """The format/method menu's label for a scheme: 'int RTN', 'int GPTQ (symmetric)', 'NF4', 'k-means', 'fp8 e4m3'."""
    s = get_scheme(scheme)
    if s.format != "int":
        return {"nf4": "NF4", "kmeans": "k-means", "fp8": "fp8 e4m3"}[s.format]
    extras = (["symmetric"] if s.symmetric else []) + (["clip search"] if s.clip == "search" else [])
    return f"int {'GPTQ' if s.method == 'gptq' else 'RTN'}" + (f" ({', '.join(extras)})" if extras else "")


def scheme_group(scheme: str | Scheme) -> str:
    """The group control's label: 'per tensor' (k-means: one codebook per matrix), 'per channel' or 'group N'."""
    s = get_scheme(scheme)
    if s.format == "kmeans" or s.granularity == "tensor":
        return "per tensor"
    return "per channel" if s.granularity == "channel" else f"group {s.group_size}"


def _group_order(group: str) -> tuple[int, int]:
    """Coarse to fine: per tensor, per channel, then groups from the largest to the smallest."""
    if group == "per tensor":
        return (0, 0)
    if group == "per channel":
        return (1, 0)
    return (2, -int(group.split()[1]))


def _none(v):
    """None for a missing value (None or NaN, as pandas stores None in a number column)."""
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _whole(v):
    """An integral number as int (pandas stores a column with None in it as floats: 32.0); anything else unchanged."""
    v = _none(v)
    return int(v) if _finite_number(v) and float(v).is_integer() else v


# ---------------------------------------------------------------------------------------------
# The sweep, checked and indexed once


def _sweep_records(sweep: Any) -> list[dict]:
    import pandas as pd

    if isinstance(sweep, pd.DataFrame):
        return sweep.to_dict("records")
    if isinstance(sweep, list) and all(isinstance(r, dict) for r in sweep):
        return [dict(r) for r in sweep]
    raise TypeError(f"sweep must be labkit.quantize.quantization_sweep's rows (a list of dicts) or a pandas "
                    f"DataFrame of them, got {type(sweep).__name__}")


def check_quantization_sweep(sweep: Any) -> list[dict]:
    """The sweep's rows as dicts, or a TypeError/ValueError naming what is wrong (columns, values, the float32 row)."""
    records = _sweep_records(sweep)
    if not records:
        raise ValueError("sweep has no rows")
    missing = [c for c in SWEEP_COLUMNS if c not in records[0]]
    if missing:
        raise ValueError(f"sweep lacks the column(s) {missing}; a sweep needs {list(SWEEP_COLUMNS)} "
                         "(what labkit.quantize.quantization_sweep returns)")
    floats = [i for i, r in enumerate(records) if r["scheme"] == "float32"]
    if len(floats) != 1:
        raise ValueError(f"sweep must have exactly one 'float32' row (the unquantized model), found {len(floats)}")
    if len(records) == 1:
        raise ValueError("sweep has only the float32 row: there is no quantized scheme to show")
    for column, ok, allowed in (("bits_per_weight", lambda v: v > 0, "> 0"),
                                ("quantized_bytes", lambda v: v >= 0, ">= 0 (bytes)"),
                                ("total_bytes", lambda v: v > 0, "> 0 (bytes)"),
                                ("loss", lambda v: v >= 0, ">= 0 (nats/char)"),
                                ("loss_se", lambda v: v >= 0, ">= 0 (nats/char)"),
                                ("perplexity", lambda v: v >= 1, ">= 1"),
                                ("loss_minus_float", lambda v: True, "(nats/char)"),
                                ("diff_se", lambda v: v >= 0, ">= 0 (nats/char)")):
        for i, r in enumerate(records):
            v = r[column]
            if not (_finite_number(v) and ok(float(v))):
                raise ValueError(f"sweep[{column!r}] at row {i} ({r['scheme']!r}) is {v!r}; "
                                 f"allowed: a finite number {allowed}")
    base = records[floats[0]]
    for i, r in enumerate(records):
        if not math.isclose(float(r["perplexity"]), math.exp(float(r["loss"])), rel_tol=1e-3):
            raise ValueError(f"sweep row {i} ({r['scheme']!r}): perplexity {r['perplexity']!r} is not "
                             f"exp(loss) = {math.exp(float(r['loss'])):.6g}")
        if not math.isclose(float(r["loss_minus_float"]), float(r["loss"]) - float(base["loss"]), abs_tol=1e-4):
            raise ValueError(f"sweep row {i} ({r['scheme']!r}): loss_minus_float {r['loss_minus_float']!r} is not "
                             f"its loss minus float32's ({float(r['loss']) - float(base['loss']):.6g})")
        if r["scheme"] == "float32":
            continue
        if not isinstance(r["scheme"], str):
            raise TypeError(f"sweep['scheme'] at row {i} is {r['scheme']!r}; allowed: a scheme name like 'int4-g32'")
        s = get_scheme(r["scheme"])          # a ValueError names the allowed scheme names
        stated = (r["format"], _whole(r["bits"]), _none(r["granularity"]), _whole(r["group_size"]), _none(r["method"]))
        named = (s.format, s.bits, s.granularity, s.group_size, s.method)
        if stated != named:
            raise ValueError(f"sweep row {i}: scheme {r['scheme']!r} means (format, bits, granularity, group_size, "
                             f"method) = {named}, but the row says {stated}")
    return records


@dataclass(frozen=True)
class SchemeTable:
    """A checked sweep as plain Python: rows by (format/method, bits, group), float32, the control values, the front."""

    rows: dict[tuple[str, int, str], dict]
    float32: dict
    families: list[str]                    # format/method labels, in the sweep's order
    bits: list[int]                        # quantized bit widths, widest first
    groups: list[str]                      # coarse to fine
    points: list[dict]                     # every row (float32 first), for the plot
    front: list[dict]                      # the rows on the memory-vs-quality front, by bytes
    front_tolerance_nats: float            # the largest gap left unranked: BAND_SE · 2 · the largest diff_se

    def names(self) -> list[str]:
        """The quantized schemes' names, in the sweep's order."""
        return [r["scheme"] for r in self.rows.values()]

    def key(self, scheme: str) -> tuple[str, int, str]:
        """The (family, bits, group) of a scheme named in the sweep."""
        for k, r in self.rows.items():
            if r["scheme"] == scheme:
                return k
        raise ValueError(f"scheme={scheme!r} is not in the sweep; allowed: {self.names()}")


def scheme_table(sweep: Any) -> SchemeTable:
    """Check a sweep (`check_quantization_sweep`), index its rows and compute its front, once per panel."""
    if isinstance(sweep, SchemeTable):
        return sweep
    records = check_quantization_sweep(sweep)
    rows: dict[tuple[str, int, str], dict] = {}
    points = []
    for r in records:
        point = {"scheme": r["scheme"], "bits": int(r["bits"]),
                 **{c: float(r[c]) for c in ("bits_per_weight", "quantized_bytes", "total_bytes", "loss", "loss_se",
                                              "perplexity", "loss_minus_float", "diff_se")}}
        # perplexity above float32's in %: exp(loss − float32's loss) − 1, and its ± BAND_SE·diff_se band
        point["increase_pct"] = 100 * math.expm1(point["loss_minus_float"])
        point["low_pct"] = 100 * math.expm1(point["loss_minus_float"] - BAND_SE * point["diff_se"])
        point["high_pct"] = 100 * math.expm1(point["loss_minus_float"] + BAND_SE * point["diff_se"])
        if r["scheme"] == "float32":
            point.update(family="float32", group="", name="float32")
            float32 = point
        else:
            s = get_scheme(r["scheme"])
            point.update(family=scheme_family(s), group=scheme_group(s), name=s.name, symmetric=s.symmetric,
                         clip=s.clip, method=s.method)
            key = (point["family"], point["bits"], point["group"])
            if key in rows:
                raise ValueError(f"sweep has two schemes for format/method {key[0]!r}, {key[1]} bits, {key[2]}: "
                                 f"{rows[key]['scheme']!r} and {r['scheme']!r}; allowed: one row per combination")
            rows[key] = point
        points.append(point)
    points.sort(key=lambda p: p["scheme"] != "float32")
    tolerance = BAND_SE * 2 * max(p["diff_se"] for p in points)
    front = [points[i] for i in pareto_front([p["total_bytes"] for p in points], [p["loss"] for p in points],
                                             ses=[p["diff_se"] for p in points], n_se=BAND_SE)]
    return SchemeTable(rows=rows, float32=float32, families=list(dict.fromkeys(k[0] for k in rows)),
                       bits=sorted({k[1] for k in rows}, reverse=True),
                       groups=sorted({k[2] for k in rows}, key=_group_order), points=points, front=front,
                       front_tolerance_nats=tolerance)


# ---------------------------------------------------------------------------------------------
# Per-layer weight errors, computed once


def layer_weight_errors(model: GPT, schemes: Iterable[str], layers: str | Iterable[str],
                        calibration: Tensor | None = None, progress: bool = False) -> dict:
    """(dequantized − original) weights of `layers` under each scheme: {"errors": {scheme: {layer: Tensor}},
    "weight_std": {layer: the original weights' standard deviation}} (float32, weight units).

    Each scheme quantizes the model exactly as labkit.quantize.quantize_model does in the sweep (GPTQ quantizes
    the layers in depth order from `calibration`, so a layer sees the inputs it saw there); "float32" among
    `schemes` is skipped (it has no rounding error). `layers` are names from labkit.quantize.quantizable_layers.
    """
    available = quantizable_layers(model)                  # TypeError for anything but a labkit GPT
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise ValueError(f"layers is empty; allowed: names from {list(available)}")
    for name in names:
        if name not in available:
            raise ValueError(f"layers holds {name!r}, which is not a quantizable layer; allowed: {list(available)}")
    if isinstance(schemes, str):
        schemes = [schemes]
    wanted = [get_scheme(s) for s in schemes if s != "float32"]
    if not wanted:
        raise ValueError("schemes has no quantized scheme; allowed: names like 'int4-g32' (e.g. the sweep's 'scheme' "
                         "column)")
    gptq = [s.name for s in wanted if s.method == "gptq"]
    if gptq and calibration is None:
        raise ValueError(f"schemes {gptq} use GPTQ, which needs calibration token ids (the sweep's, e.g. "
                         "labkit.prune.calibration_batches(corpus, 32, 64)); got calibration=None")
    originals = {name: available[name].weight.detach().float().clone() for name in names}
    if progress:
        from tqdm.auto import tqdm
        wanted = tqdm(wanted, desc="weight errors", mininterval=1.0)
    errors: dict[str, dict[str, Tensor]] = {}
    for s in wanted:
        if s.method == "gptq":
            # as quantize_model does it, but only up to the deepest layer asked for: GPTQ runs in depth order and a
            # layer's inputs depend on the layers before it only, so the layers after it need not be quantized
            copied = copy.deepcopy(model).eval()
            in_depth_order = list(quantizable_layers(copied).items())
            deepest = max(i for i, (name, _) in enumerate(in_depth_order) if name in names)
            stored = gptq_quantize_layers(copied, dict(in_depth_order[:deepest + 1]), s, calibration)
        else:
            stored = {name: quantize_tensor(originals[name], s) for name in names}
        errors[s.name] = {name: stored[name].dequantize() - originals[name] for name in names}
    return {"errors": errors, "weight_std": {name: originals[name].std().item() for name in names}}


def _check_layer_errors(layer_errors: Any) -> dict:
    if not (isinstance(layer_errors, dict) and isinstance(layer_errors.get("errors"), dict)
            and isinstance(layer_errors.get("weight_std"), dict)):
        raise TypeError("layer_errors must be what labkit.widgets.layer_weight_errors returns: a dict with "
                        f"'errors' and 'weight_std', got {type(layer_errors).__name__}"
                        + (f" with keys {sorted(map(str, layer_errors))}" if isinstance(layer_errors, dict) else ""))
    stds = layer_errors["weight_std"]
    if not stds:
        raise ValueError("layer_errors['weight_std'] is empty: no layer was measured")
    for layer, std in stds.items():
        if not (_finite_number(std) and std > 0):
            raise ValueError(f"layer_errors['weight_std'][{layer!r}] is {std!r}; allowed: a finite number > 0")
    for scheme, by_layer in layer_errors["errors"].items():
        if not isinstance(by_layer, dict) or set(by_layer) != set(stds):
            raise ValueError(f"layer_errors['errors'][{scheme!r}] must hold one tensor for each layer "
                             f"{list(stds)}, got {list(by_layer) if isinstance(by_layer, dict) else by_layer!r}")
        for layer, e in by_layer.items():
            if not (isinstance(e, Tensor) and e.is_floating_point() and e.numel() > 0 and torch.isfinite(e).all()):
                raise ValueError(f"layer_errors['errors'][{scheme!r}][{layer!r}] must be a non-empty finite float "
                                 "tensor (dequantized − original weights)")
    return layer_errors


def _histogram(errors: Tensor, std: float, limit: float) -> list[float]:
    """Counts of errors/std in ERROR_BINS equal bins over [−limit, limit]."""
    return torch.histc(errors.float().flatten() / std, bins=ERROR_BINS, min=-limit, max=limit).tolist()


# ---------------------------------------------------------------------------------------------
# State: the chosen scheme's numbers, words and histogram


def _choose(table: SchemeTable, scheme, bits, group, family) -> tuple[str, int, str]:
    """(family, bits, group) from a scheme name or from the three controls, each checked against the sweep."""
    if scheme is not None:
        if any(v is not None for v in (bits, group, family)):
            raise ValueError("give either scheme or bits/group/family, not both")
        if scheme == "float32":
            raise ValueError("scheme='float32' is the reference, always drawn; choose a quantized scheme, allowed: "
                             f"{table.names()}")
        if isinstance(scheme, str) and scheme in table.names():
            return table.key(scheme)
        return table.key(get_scheme(scheme).name)       # "int4-g32-sym" or a Scheme: its canonical name
    if bits is None and group is None and family is None:
        raise ValueError(f"choose a scheme by name (allowed: {table.names()}) or by bits, group and family")
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or int(bits) not in table.bits:
        raise ValueError(f"bits={bits!r} is not in the sweep; allowed: {table.bits}")
    if isinstance(group, numbers.Integral) and not isinstance(group, bool):
        group = f"group {group}"
    if group not in table.groups:
        raise ValueError(f"group={group!r} is not in the sweep; allowed: {table.groups}")
    if family not in table.families:
        raise ValueError(f"family={family!r} is not in the sweep; allowed: {table.families}")
    return family, int(bits), group


def _front_words(table: SchemeTable, row: dict, on_front: bool) -> str:
    """Why the chosen row is or is not on the front, naming the scheme that beats it (core.pareto_front's rule)."""
    rule = (f"by more than the pair's noise, {BAND_SE:g}·(its paired SE + the other's, each the SE of a loss "
            "difference to float32 on the same windows)")
    if on_front:
        return f"No scheme of at most its bytes is better {rule}: it is on the memory-vs-quality front."

    def point(q: dict) -> tuple[float, float, float]:
        return q["total_bytes"], q["loss"], q["diff_se"]

    beaters = [q for q in table.points if q is not row and pareto_beats(point(q), point(row), n_se=BAND_SE)]
    if not beaters:           # the same bytes and loss as a row listed before it: pareto_front keeps the first
        twin = next(q for q in table.points if (q["total_bytes"], q["loss"]) == (row["total_bytes"], row["loss"]))
        return f"It takes the same bytes and has the same loss as {twin['name']}, which stands for both on the front."
    best = min(beaters, key=lambda q: (q["loss"], q["total_bytes"]))
    noise = BAND_SE * (row["diff_se"] + best["diff_se"])
    return (f"It is not on the memory-vs-quality front: {best['name']} takes {human_bytes(best['total_bytes'])} "
            f"(no more) and its loss is lower by {row['loss'] - best['loss']:.4f} nats/char, more than the pair's "
            f"noise {BAND_SE:g}·({row['diff_se']:.4f} + {best['diff_se']:.4f}) = {noise:.4f} nats/char (each a paired "
            "SE against float32).")


def quantization_state(sweep: Any, scheme: str | None = None, *, bits: int | None = None,
                       group: str | int | None = None, family: str | None = None, layer_errors: dict | None = None,
                       layer: str | None = None) -> dict[str, Any]:
    """The chosen scheme's bytes and perplexity against float32, whether it is on the front, and its weight-error
    histogram for `layer` (in units of the layer's weight std), with a line of text worded from those numbers.

    Choose by `scheme` name ("int4-g32"), or by the panel's controls: `bits`, `group` ("per channel",
    "group 32" or 32) and `family` ("int RTN", "NF4" ...). Values outside the sweep's are an error; a
    combination of allowed values that the sweep did not measure gives a state with in_sweep False.
    """
    table = scheme_table(sweep)
    key = _choose(table, scheme, bits, group, family)
    errors = None if layer_errors is None else _check_layer_errors(layer_errors)
    layers = [] if errors is None else list(errors["weight_std"])
    if layer is not None and layer not in layers:
        raise ValueError(f"layer={layer!r} has no weight errors; allowed: {layers}")
    return _state(table, key, errors, layer if layer is not None else (layers[0] if layers else None))


def _state(table: SchemeTable, key: tuple[str, int, str], errors: dict | None, layer: str | None) -> dict[str, Any]:
    """quantization_state after its checks (the panel checks once, then calls this on every redraw)."""
    layers = [] if errors is None else list(errors["weight_std"])
    f32 = table.float32
    state: dict[str, Any] = {
        "family": key[0], "bits": key[1], "group": key[2], "layer": layer, "layers": layers,
        "families": table.families, "bits_options": table.bits, "groups": table.groups,
        "points": table.points, "front": table.front, "front_tolerance_nats": table.front_tolerance_nats,
        "float32": f32, "in_sweep": key in table.rows, "row": table.rows.get(key), "histogram": None,
    }
    if key not in table.rows:
        measured = [f"{b} bits {g}" for (fam, b, g) in sorted(table.rows, key=lambda k: (-k[1], _group_order(k[2])))
                    if fam == key[0]]
        state["scheme"] = None
        state["text"] = (f"{key[0]} at {key[1]} bits, {key[2]}: not in the sweep. The sweep measured {key[0]} at "
                         f"{', '.join(measured)}.")
        return state

    row = table.rows[key]
    diff, se = row["loss_minus_float"], row["diff_se"]
    ratio = row["total_bytes"] / f32["total_bytes"]
    on_front = any(p is row for p in table.front)
    state.update(scheme=row["scheme"], perplexity=row["perplexity"], loss_minus_float=diff, diff_se=se,
                 increase_pct=row["increase_pct"],
                 total_bytes=row["total_bytes"], ratio_vs_float32=ratio, on_front=on_front,
                 bits_per_weight=row["bits_per_weight"])
    if abs(diff) <= BAND_SE * se:
        verdict = f"within the noise of float32 (|difference| ≤ {BAND_SE:g}·SE)"
    elif diff > 0:
        verdict = f"worse than float32 beyond the noise ({BAND_SE:g}·SE)"
    else:
        verdict = f"better than float32 beyond the noise ({BAND_SE:g}·SE)"
    text = (f"{row['scheme']} = {key[0]} at {key[1]} bits, {key[2]}: {row['bits_per_weight']:.3f} bits per quantized "
            f"weight, everything it stores included; the model takes {human_bytes(row['total_bytes'])}, {ratio:.3f}× "
            f"float32's {human_bytes(f32['total_bytes'])}. Perplexity {row['perplexity']:.3f} vs float32's "
            f"{f32['perplexity']:.3f} ({row['increase_pct']:+.2f}%): loss {diff:+.4f} ± {se:.4f} nats/char "
            f"(paired SE), {verdict}. "
            + _front_words(table, row, on_front))

    if errors is not None:
        by_scheme = errors["errors"]
        std = float(errors["weight_std"][layer])
        if row["scheme"] not in by_scheme:
            state["histogram"] = {"missing": True, "computed": list(by_scheme)}
            text += (f" No weight errors were computed for {row['scheme']} (layer_weight_errors has "
                     f"{list(by_scheme)}).")
        else:
            e = by_scheme[row["scheme"]][layer]
            reference = None            # GPTQ: round to nearest at the same setting, for comparison
            if row["method"] == "gptq":
                rtn = row["scheme"].removesuffix("-gptq")
                reference = by_scheme.get(rtn, {}).get(layer)
                reference_name = rtn
            largest = max(e.abs().max().item(), 0 if reference is None else reference.abs().max().item()) / std
            limit = largest * 1.02 if largest > 0 else 1e-6
            rms_std = e.float().square().mean().sqrt().item() / std
            hist = {"missing": False, "counts": _histogram(e, std, limit),
                    "edges": torch.linspace(-limit, limit, ERROR_BINS + 1).tolist(), "weight_std": std,
                    "rms_std": rms_std, "max_abs_std": e.abs().max().item() / std, "n_weights": e.numel(),
                    "shape": tuple(e.shape), "reference": None}
            text += (f" {layer}: rounding error RMS {rms_std:.3f}·σ, largest |error| {hist['max_abs_std']:.2f}·σ "
                     f"(σ = {std:.3g}, the layer's weight std)")
            if reference is not None:
                ref_rms = reference.float().square().mean().sqrt().item() / std
                hist["reference"] = {"scheme": reference_name, "counts": _histogram(reference, std, limit),
                                     "rms_std": ref_rms}
                text += f"; {reference_name} (round to nearest, same bits and groups): RMS {ref_rms:.3f}·σ"
            text += "."
            state["histogram"] = hist
    state["text"] = text
    return state


# ---------------------------------------------------------------------------------------------
# Figure and panel


def _style(families: list[str], family: str) -> tuple[str, str]:
    if family in FAMILY_STYLES:
        return FAMILY_STYLES[family]
    others = [f for f in families if f not in FAMILY_STYLES]
    return OTHER_STYLES[others.index(family) % len(OTHER_STYLES)]


def _increase_axis(ax, values: list[float]) -> None:
    """Symmetric-log y axis for 'perplexity above float32 (%)': linear within ±LINEAR_PCT, logarithmic beyond, so
    0.01% and 10% are both readable; plain tick labels (0, 0.01%, 0.1%, 1%, 10% ...), no mathtext."""
    lo, hi = min(min(values), 0.0), max(max(values), LINEAR_PCT)     # at least 0 and 0.01% on the axis
    ax.set_yscale("symlog", linthresh=LINEAR_PCT, linscale=0.5)
    decades = [10.0 ** e for e in range(-2, 7)]
    ticks = sorted([-d for d in decades if -d >= lo * 1.5] + [0.0] + [d for d in decades if d <= hi * 1.5])
    ax.set_yticks(ticks, ["0" if t == 0 else f"{t:g}%" for t in ticks])
    ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_ylim(lo * 1.8 if lo < 0 else -LINEAR_PCT / 2, hi * 1.8 if hi > 0 else LINEAR_PCT)


def _name_points(ax, points: list[dict], chosen: dict | None) -> None:
    """Write the scheme's name beside the chosen point (in red) and each front point, skipping a name that would
    overlap one already written (positions in display pixels: call after the axis limits are set)."""
    placed: list[tuple[float, float]] = []
    for p in ([chosen] if chosen is not None else []) + points:
        x, y = ax.transData.transform((p["total_bytes"], p["increase_pct"]))
        if any(abs(x - u) < 55 and abs(y - v) < 10 for u, v in placed):
            continue
        placed.append((x, y))
        ax.annotate(p["name"], (p["total_bytes"], p["increase_pct"]), xytext=(5, 3), textcoords="offset points",
                    fontsize=6.5, color="#C44E52" if p is chosen else "#333333")


def quantization_figure(state: dict) -> Figure:
    """Left: whole-model bytes vs perplexity for every scheme, the front, float32, the choice. Right: weight errors."""
    fig = Figure(figsize=(12.4, 4.4))
    fig.subplots_adjust(left=0.06, right=0.975, bottom=0.13, top=0.91, wspace=0.2)
    left, right = fig.subplots(1, 2)

    points, f32 = state["points"], state["float32"]
    quantized = [p for p in points if p["scheme"] != "float32"]
    for family in state["families"]:
        color, marker = _style(state["families"], family)
        mine = [p for p in quantized if p["family"] == family]
        for group in sorted({p["group"] for p in mine}, key=_group_order):   # a thin line per group across bits
            line = sorted((p for p in mine if p["group"] == group), key=lambda p: p["total_bytes"])
            if len(line) > 1:
                left.plot([p["total_bytes"] for p in line], [p["increase_pct"] for p in line], "-", color=color,
                          lw=0.8, alpha=0.5)
        left.plot([p["total_bytes"] for p in mine], [p["increase_pct"] for p in mine], marker, ls="none", ms=5,
                  color=color, label=family)
    left.vlines([p["total_bytes"] for p in points], [p["low_pct"] for p in points], [p["high_pct"] for p in points],
                color="#555555", lw=1)
    front = state["front"]
    left.step([p["total_bytes"] for p in front], [p["increase_pct"] for p in front], where="post", color="k", lw=1,
              ls="--", zorder=1, label=f"Pareto front (gaps < {BAND_SE:g}·(SE$_p$ + SE$_q$) not ranked)")
    left.plot([f32["total_bytes"]], [0.0], "*", ms=13, color="k", zorder=4,
              label=f"float32 ({human_bytes(f32['total_bytes'])}, perplexity {f32['perplexity']:.3f})")
    if state["in_sweep"]:
        row = state["row"]
        left.plot([row["total_bytes"]], [row["increase_pct"]], "o", ms=13, mfc="none", mec="#C44E52", mew=2, zorder=5,
                  label=f"chosen: {row['scheme']}")
    _bytes_axis(left, "x", [p["total_bytes"] for p in points])
    _increase_axis(left, [p["low_pct"] for p in points] + [p["high_pct"] for p in points])
    _name_points(left, front, state["row"])
    left.set_xlabel("memory: the whole model as stored (bytes, log scale)")
    left.set_ylabel("perplexity above float32 (%, symlog scale)")
    left.set_title(f"every scheme: memory vs quality (bars: ± {BAND_SE:g}·SE paired with float32)", fontsize=10)
    left.legend(fontsize=7, loc="upper right")

    hist = state["histogram"]
    right.set_xlabel("dequantized − original weight (units of σ, the layer's weight std)")
    right.set_ylabel("count (weights per bin)")
    if not state["in_sweep"]:
        message = f"{state['family']} at {state['bits']} bits, {state['group']}:\nnot in the sweep"
    elif hist is None:
        message = "no layer errors given\n(pass layer_weight_errors(...) to see them)"
    elif hist["missing"]:
        message = f"no weight errors computed\nfor {state['scheme']}"
    else:
        message = None
        color = _style(state["families"], state["family"])[0]
        right.stairs(hist["counts"], hist["edges"], fill=True, color=color, alpha=0.75,
                     label=f"{state['scheme']} (RMS {hist['rms_std']:.3f}·σ)")
        if hist["reference"] is not None:
            ref = hist["reference"]
            right.stairs(ref["counts"], hist["edges"], color="k", lw=1.2,
                         label=f"{ref['scheme']}, round to nearest (RMS {ref['rms_std']:.3f}·σ)")
        for x in (-hist["rms_std"], hist["rms_std"]):
            right.axvline(x, color="k", lw=0.8, ls=":")
        right.set_xlim(hist["edges"][0], hist["edges"][-1])
        right.legend(fontsize=7, loc="upper right")
        right.set_title(f"{state['layer']} ({'×'.join(map(str, hist['shape']))}), {state['scheme']}: "
                        "weight errors (dotted: ± RMS)", fontsize=10)
    if message is not None:
        right.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, color="#C44E52",
                   transform=right.transAxes)
        right.set_title("weight errors of the chosen scheme", fontsize=10)
        right.set_xticks([])
        right.set_yticks([])
    return fig


def quantization_panel(sweep: Any, layer_errors: dict | None = None, scheme: str | None = None,
                       layer: str | None = None) -> Panel:
    """Bits, group and format/method menus (and a layer menu) → the chosen scheme on the memory-vs-quality plot
    and its weight-error histogram, from a precomputed sweep and `layer_weight_errors`."""
    import ipywidgets as W

    table = scheme_table(sweep)                      # checked and indexed once: a redraw does no pandas work
    errors = None if layer_errors is None else _check_layer_errors(layer_errors)
    if scheme is None:
        scheme = DEFAULT_SCHEME if DEFAULT_SCHEME in table.names() else next(iter(table.rows.values()))["scheme"]
    family, bits, group = _choose(table, scheme, None, None, None)
    layers = [] if errors is None else list(errors["weight_std"])
    if layer is not None and layer not in layers:
        raise ValueError(f"layer={layer!r} has no weight errors; allowed: {layers}")
    style = {"description_width": "90px"}
    controls: dict[str, Any] = {
        "family": W.Dropdown(options=table.families, value=family, description="format/method", style=style),
        "bits": W.Dropdown(options=table.bits, value=bits, description="bits", style=style),
        "group": W.Dropdown(options=table.groups, value=group, description="group", style=style),
    }
    if len(layers) > 1:
        controls["layer"] = W.Dropdown(options=layers, value=layer or layers[0], description="layer", style=style)
    output = W.Output()
    panel = Panel(widget=None, output=output, controls=controls)

    def refresh(*_):
        t0 = time.perf_counter()
        chosen_layer = controls["layer"].value if "layer" in controls else (layers[0] if layers else None)
        key = (controls["family"].value, controls["bits"].value, controls["group"].value)
        panel.state = _state(table, key, errors, chosen_layer)
        panel.figure = quantization_figure(panel.state)
        render_into(output, panel.figure, panel.state["text"], panel=panel, tight=False)
        panel.render_ms = (time.perf_counter() - t0) * 1000

    return wire_panel(panel, refresh, None, n_left=2)
