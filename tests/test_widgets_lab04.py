"""Lab 04's pruning panel, driven without a browser, and the Pareto front it draws (a synthetic sweep: no pruning run)."""
import itertools
import math

import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import widgets
from labkit.sparse import FORMATS
from labkit.widgets.core import pareto_front

SPARSITIES = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9)
N_WEIGHTS, N_ROWS = 786_432, 4 * (3 * 128 + 128 + 512 + 128)       # the baby GPT's prunable matrices


def storage_bytes(sparsity: float) -> dict[str, int]:
    """Bytes of N_WEIGHTS float32 weights at `sparsity` in each format (closed forms; int32 indices, 1-bit bitmap)."""
    nnz = N_WEIGHTS - round(sparsity * N_WEIGHTS)
    return {"dense_bytes": 4 * N_WEIGHTS, "coo_bytes": 12 * nnz, "csr_bytes": 8 * nnz + 4 * (N_ROWS + 4),
            "bitmap_bytes": 4 * nnz + N_WEIGHTS // 8, "relative_bytes": 5 * nnz}


def make_sweep(methods=(("magnitude", 1.0, ("layer", "global")), ("wanda", 0.5, ("layer", "global")),
                        ("random", 4.0, ("layer",))), se: float = 0.01) -> pd.DataFrame:
    """A sweep shaped like the lab's: loss rises with sparsity, fastest for random, slowest for Wanda."""
    rows = []
    for method, steepness, scopes in methods:
        for scope in scopes:
            for s in SPARSITIES:
                loss = 1.5 + steepness * s ** 3 * (1.25 if scope == "global" else 1.0)
                rows.append({"method": method, "scope": scope, "sparsity": s, "loss": loss, "loss_se": se,
                             "perplexity": math.exp(loss), **storage_bytes(s)})
    return pd.DataFrame(rows)


# ---- pareto_front ---------------------------------------------------------------------------

def beats(q, p, tol):
    """The documented rule, written out again: q beats p."""
    return q[0] <= p[0] and (q[1] < p[1] - tol or (q[1] == p[1] and q[0] < p[0]))


def test_pareto_front_examples():
    assert pareto_front([1, 2, 3, 4], [5, 5, 3, 4]) == [0, 2]        # (2, 5) costs more for the same y
    assert pareto_front([3, 1, 2], [1, 3, 2]) == [1, 2, 0]            # sorted by x, not by index
    assert pareto_front([1, 1, 2], [2, 2, 1]) == [0, 2]               # an exact duplicate once
    # a bigger point within the tolerance of a cheaper one is not ranked below it; beyond it, it is
    xs, ys = [100, 200, 300, 400], [2.000, 2.003, 2.050, 1.900]
    assert pareto_front(xs, ys) == [0, 3]
    assert pareto_front(xs, ys, y_tolerance=0.005) == [0, 1, 3]
    # one model in two formats (same y): the cheaper format wins whatever the tolerance
    assert pareto_front([10, 20], [3.0, 3.0], y_tolerance=0.5) == [0]
    assert pareto_front([], []) == []


@pytest.mark.parametrize("args, words", [
    (([1, 2], [1]), "same length"),
    (([1, float("nan")], [1, 2]), "xs[1]=nan"),
    (([1], ["2"]), "ys[0]='2'"),
    (([1], [True]), "finite number"),
    (([1], [1], -0.1), "y_tolerance=-0.1"),
    (([1], [1], float("inf")), "y_tolerance=inf"),
])
def test_pareto_front_rejects_bad_input(args, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        pareto_front(*args)


coordinate = st.integers(0, 12).map(float)          # few distinct values: ties and duplicates are common
points = st.lists(st.tuples(coordinate, coordinate), max_size=25)
tolerance = st.sampled_from([0.0, 0.5, 1.0, 2.5])


@settings(max_examples=300, deadline=None)
@given(points, tolerance)
def test_pareto_front_properties(pts, tol):
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    front = pareto_front(xs, ys, y_tolerance=tol)
    on = [pts[i] for i in front]
    assert [p[0] for p in on] == sorted(p[0] for p in on)                       # sorted by x
    assert len(set(on)) == len(on)                                              # duplicates once
    for i in front:                                                             # nobody beats a front point
        assert not any(beats(q, pts[i], tol) for q in pts)
    for j, p in enumerate(pts):                                                 # everyone else is beaten by
        if j not in front:                                                      # the front or duplicates it
            assert p in on and front[on.index(p)] < j or any(beats(q, p, tol) for q in on)


@settings(max_examples=200, deadline=None)
@given(points)
def test_pareto_front_without_tolerance_is_the_usual_front(pts):
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    dominated = {i for i, p in enumerate(pts)
                 if any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in pts)}
    first = {i for i, p in enumerate(pts) if pts.index(p) == i}
    assert set(pareto_front(xs, ys)) == first - dominated


@settings(max_examples=200, deadline=None)
@given(points, tolerance, tolerance, st.randoms(use_true_random=False))
def test_pareto_front_grows_with_tolerance_and_ignores_order(pts, a, b, rnd):
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    small, large = sorted((a, b))
    assert {pts[i] for i in pareto_front(xs, ys, small)} <= {pts[i] for i in pareto_front(xs, ys, large)}
    shuffled = pts[:]
    rnd.shuffle(shuffled)
    front = [pts[i] for i in pareto_front(xs, ys, large)]
    assert [shuffled[i] for i in pareto_front([p[0] for p in shuffled], [p[1] for p in shuffled], large)] == front


def test_one_pareto_rule_for_indices_and_for_lab_01s_point_dicts():
    assert widgets.pareto_front([1, 2, 3], [3, 1, 2]) == [0, 1]                 # lab 04: indices
    pts = [{"name": "a", "family": "A", "param_bytes": 1, "val_loss": 2.0},
           {"name": "b", "family": "A", "param_bytes": 2, "val_loss": 3.0},
           {"name": "c", "family": "B", "param_bytes": 3, "val_loss": 2.0}]     # same loss, more bytes: beaten
    assert [p["name"] for p in widgets.pareto_points(pts)] == ["a"]            # lab 01: the point dicts
    xs, ys = [p["param_bytes"] for p in pts], [p["val_loss"] for p in pts]
    assert widgets.pareto_points(pts, tolerance=1.5) == [pts[i] for i in widgets.pareto_front(xs, ys, 1.5)]


# ---- pruning_state --------------------------------------------------------------------------

def test_state_reads_the_chosen_row_and_says_what_it_means():
    sweep = make_sweep()
    s = widgets.pruning_state(sweep, "magnitude", 0.7, "csr")
    assert s["scope"] == "layer"                                    # the default when a method has both
    loss = 1.5 + 0.7 ** 3
    assert s["perplexity"] == pytest.approx(math.exp(loss))
    assert (s["perplexity_low"], s["perplexity_high"]) == pytest.approx((math.exp(loss - 0.02), math.exp(loss + 0.02)))
    b = storage_bytes(0.7)
    assert s["bytes"] == b["csr_bytes"] and s["dense_bytes"] == b["dense_bytes"] == s["dense_model"]["bytes"]
    assert s["ratio_vs_dense"] == pytest.approx(b["csr_bytes"] / b["dense_bytes"])
    assert s["saves_bytes"] and s["dense_model"]["perplexity"] == pytest.approx(math.exp(1.5))
    text = s["text"]
    assert f"perplexity {math.exp(loss):.3f}" in text and f"{s['ratio_vs_dense']:.2f}×" in text
    assert "csr saves" in text and "MORE" not in text

    # at 10% CSR's indices cost more than the zeros it drops: said so, from the numbers
    low = widgets.pruning_state(sweep, "magnitude", 0.1, "csr")
    assert not low["saves_bytes"] and "MORE than storing the same pruned weights dense" in low["text"]
    assert "saves nothing" in widgets.pruning_state(sweep, "wanda", 0.5, "dense", scope="global")["text"]


def test_state_curves_bands_and_front():
    sweep = make_sweep()
    s = widgets.pruning_state(sweep, "wanda", 0.5, "bitmap", scope="global")
    assert [(c["method"], c["scope"]) for c in s["curves"]] == [
        ("magnitude", "layer"), ("magnitude", "global"), ("wanda", "layer"), ("wanda", "global"), ("random", "layer")]
    random = s["curves"][-1]
    assert random["sparsity"] == list(SPARSITIES)
    assert random["high"] == pytest.approx([math.exp(1.5 + 4.0 * x ** 3 + 0.02) for x in SPARSITIES])
    # the front: every format and sparsity of the chosen method, none beaten beyond the noise (2·SE = 0.02 nats)
    assert len(s["points"]) == len(FORMATS) * len(SPARSITIES) and s["front_tolerance_nats"] == pytest.approx(0.02)
    front = s["front"]
    assert [p["bytes"] for p in front] == sorted(p["bytes"] for p in front)
    for p in s["points"]:
        if p not in front:
            assert any(q["bytes"] <= p["bytes"] and (q["loss"] < p["loss"] - 0.02 or q["loss"] == p["loss"])
                       for q in front)
    assert all(p["format"] in ("relative", "bitmap", "dense") for p in front)    # COO and CSR never win here


def test_a_method_run_in_one_scope_and_a_dense_row_elsewhere():
    sweep = make_sweep()
    sweep = sweep[~((sweep["method"] == "random") & (sweep["sparsity"] == 0))]   # random has no 0% row of its own
    s = widgets.pruning_state(sweep, "random", 0.3, "relative")
    assert s["scope"] == "layer" and s["scopes"] == ["layer"] and s["sparsities"] == list(SPARSITIES[1:])
    assert s["dense_model"]["perplexity"] == pytest.approx(math.exp(1.5))       # taken from another method's 0% row


@pytest.mark.parametrize("change, error, words", [
    (lambda d: d.drop(columns=["loss_se"]), ValueError, r"lacks the column\(s\) \['loss_se'\]"),
    (lambda d: d.drop(columns=["relative_bytes"]), ValueError, "relative_bytes"),
    (lambda d: d[d["sparsity"] > 0], ValueError, "no dense model: add a row with sparsity 0.0"),
    (lambda d: pd.concat([d, d.iloc[:1]]), ValueError, "two rows for method='magnitude'"),
    (lambda d: d.assign(sparsity=d["sparsity"].replace(0.9, 1.0)), ValueError, "sparsity.*allowed: a finite number in \\[0, 1\\)"),
    (lambda d: d.assign(loss_se=float("nan")), ValueError, "loss_se"),
    (lambda d: d.assign(perplexity=d["loss"]), ValueError, "is not exp\\(loss\\)"),
    (lambda d: d.assign(scope="row"), ValueError, "scope.*allowed: \\('layer', 'global'\\)"),
    (lambda d: d.to_dict("records"), TypeError, "sweep must be a pandas DataFrame, got list"),
])
def test_a_bad_sweep_is_refused_with_a_clear_error(change, error, words):
    bad = change(make_sweep())
    with pytest.raises(error, match=words):
        widgets.pruning_state(bad, "magnitude", 0.5, "csr")
    with pytest.raises(error, match=words):
        widgets.pruning_panel(bad)


@pytest.mark.parametrize("kwargs, words", [
    ({"method": "sparsegpt"}, "method='sparsegpt' is not in the sweep; allowed: \\['magnitude', 'wanda', 'random'\\]"),
    ({"storage": "csc"}, "storage='csc'; allowed"),
    ({"sparsity": 0.4}, "sparsity=0.4 was not measured for magnitude \\(layer\\); allowed: \\[0.0, 0.1"),
    ({"sparsity": "half"}, "sparsity='half'"),
    ({"method": "random", "scope": "global"}, "scope='global' has no rows for method 'random'; allowed: \\['layer'\\]"),
])
def test_bad_choices_are_refused(kwargs, words):
    args = {"method": "magnitude", "sparsity": 0.5, "storage": "csr", **kwargs}
    with pytest.raises(ValueError, match=words):
        widgets.pruning_state(make_sweep(), **args)


# ---- the panel ------------------------------------------------------------------------------

def lines_by_label(ax):
    return {line.get_label(): line for line in ax.lines}


def test_panel_follows_its_controls():
    sweep = make_sweep()
    panel = widgets.pruning_panel(sweep)
    assert set(panel.controls) == {"method", "scope", "sparsity", "storage"}
    assert panel.state["method"] == "magnitude" and panel.state["sparsity"] == 0.5 and panel.state["storage"] == "csr"
    assert [v for _, v in panel.controls["sparsity"].options] == list(SPARSITIES)
    assert list(panel.controls["storage"].options) == list(FORMATS)
    bundle = panel._repr_mimebundle_()
    assert "image/png" in bundle and "magnitude pruning (layer) at 50% sparsity" in bundle["text/plain"]

    panel.controls["sparsity"].value = 0.9
    panel.controls["storage"].value = "relative"
    panel.controls["method"].value = "wanda"
    panel.controls["scope"].value = "global"
    s = panel.state
    assert (s["method"], s["scope"], s["sparsity"], s["storage"]) == ("wanda", "global", 0.9, "relative")
    loss = 1.5 + 0.5 * 1.25 * 0.9 ** 3
    assert len(panel.output.outputs) == 2                                # text and figure, replaced not appended
    assert f"wanda pruning (global) at 90% sparsity: perplexity {math.exp(loss):.3f}" in panel.output.outputs[0]["text"]

    left, right = panel.figure.axes
    wanda = lines_by_label(left)["wanda (global)"]
    assert list(wanda.get_xdata()) == pytest.approx([100 * x for x in SPARSITIES])
    assert list(wanda.get_ydata()) == pytest.approx([math.exp(1.5 + 0.5 * 1.25 * x ** 3) for x in SPARSITIES])
    chosen = lines_by_label(left)["chosen: wanda at 90%"]
    assert (chosen.get_xdata()[0], chosen.get_ydata()[0]) == pytest.approx((90, math.exp(loss)))
    assert "sparsity" in left.get_xlabel() and "%" in left.get_xlabel() and "perplexity" in left.get_ylabel()

    lines = lines_by_label(right)
    relative = lines["relative"]
    assert list(relative.get_xdata()) == [storage_bytes(x)["relative_bytes"] for x in SPARSITIES]
    chosen = lines["chosen: relative at 90%"]
    assert (chosen.get_xdata()[0], chosen.get_ydata()[0]) == pytest.approx((storage_bytes(0.9)["relative_bytes"],
                                                                            math.exp(loss)))
    front = next(line for label, line in lines.items() if label.startswith("Pareto front"))
    assert list(front.get_xdata()) == [p["bytes"] for p in s["front"]]
    dense = next(line for label, line in lines.items() if label.startswith("dense model"))
    assert (dense.get_xdata()[0], dense.get_ydata()[0]) == pytest.approx((4 * N_WEIGHTS, math.exp(1.5)))
    assert right.get_xlabel().startswith("model bytes, pruned matrices stored in each format") and right.get_xscale() == "log"
    assert any("KiB" in t.get_text() or "MiB" in t.get_text() for t in right.get_xticklabels())


def test_panel_scope_menu_follows_the_method():
    panel = widgets.pruning_panel(make_sweep(), method="wanda", sparsity=0.3)
    panel.controls["scope"].value = "global"
    panel.controls["method"].value = "random"                 # run per layer only
    assert list(panel.controls["scope"].options) == ["layer"] and panel.state["scope"] == "layer"
    assert panel.state["sparsity"] == 0.3
    panel.controls["method"].value = "magnitude"
    assert list(panel.controls["scope"].options) == ["layer", "global"]


def test_panel_without_two_scopes_has_no_scope_menu_and_redraws_quickly():
    sweep = make_sweep(methods=(("magnitude", 1.0, ("layer",)), ("random", 4.0, ("layer",))))
    panel = widgets.pruning_panel(sweep, storage="bitmap")
    assert "scope" not in panel.controls
    for value in (0.1, 0.7, 0.9):
        panel.controls["sparsity"].value = value
        assert panel.state["sparsity"] == value
        # generous: the machine running the tests is shared (the lab's own figure is ≤ 300 ms quiet)
        assert panel.render_ms < 3000, f"a redraw took {panel.render_ms:.0f} ms"


def test_sweep_table_is_reused_and_every_control_combination_draws():
    table = widgets.sweep_table(make_sweep())
    assert widgets.sweep_table(table) is table
    for method, storage in itertools.product(("magnitude", "random"), ("dense", "coo")):
        s = widgets.pruning_state(table, method, 0.3, storage)
        assert s["storage"] == storage and s["method"] == method


def test_a_control_change_is_one_redraw_with_plain_tick_labels():
    panel = widgets.pruning_panel(make_sweep())
    changes = []
    panel.output.observe(lambda change: changes.append(change), "outputs")
    panel.controls["scope"].value = "global"
    panel.controls["method"].value = "random"              # also resets the scope menu: still one redraw
    assert len(changes) == 2 and panel.state["scope"] == "layer"
    assert panel.controls["sparsity"].continuous_update is False
    for ax in panel.figure.axes:
        labels = [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
        assert labels and "$" not in "".join(labels)       # plain text, not mathtext (slow to lay out)



def test_front_uses_the_paired_noise_when_the_sweep_has_it():
    """Rows scored on the same windows: p and q are ranked only beyond 2·(se_p + se_q) of their paired SEs."""
    sweep = make_sweep(se=0.2)
    unpaired = widgets.pruning_state(sweep, "magnitude", 0.5, "csr")
    assert unpaired["front_tolerance_nats"] == pytest.approx(0.4) and unpaired["front_noise"].startswith("unpaired")
    sweep["increase_se"] = [0.0 if s == 0 else 0.001 * (1 + s) for s in sweep["sparsity"]]
    paired = widgets.pruning_state(sweep, "magnitude", 0.5, "csr")
    assert paired["front_noise"].startswith("paired")
    assert paired["front_tolerance_nats"] == pytest.approx(4 * max(0.001 * (1 + s) for s in SPARSITIES))
    se = {s: 0.0 if s == 0 else 0.001 * (1 + s) for s in sweep["sparsity"]}
    front = paired["front"]
    for p in paired["points"]:                       # the rule, written out again
        beaten = any(q["bytes"] <= p["bytes"] and (q["loss"] < p["loss"] - 2 * (se[p["sparsity"]] + se[q["sparsity"]])
                                                   or (q["loss"] == p["loss"] and q["bytes"] < p["bytes"]))
                     for q in paired["points"])
        assert (p in front) == (not beaten and p == next(q for q in paired["points"]
                                                         if (q["bytes"], q["loss"]) == (p["bytes"], p["loss"])))
    # every pair's paired bound (< 0.008 nats) is inside the unpaired 0.4: the paired front can only be smaller
    assert {(p["format"], p["sparsity"]) for p in front} <= {(p["format"], p["sparsity"]) for p in unpaired["front"]}
    bad = sweep.copy()
    bad.loc[3, "increase_se"] = -1.0
    with pytest.raises(ValueError, match=r"sweep\['increase_se'\] at row 3 is -1.0"):
        widgets.pruning_state(bad, "magnitude", 0.5, "csr")


def test_pareto_front_with_paired_ses_examples_and_bad_input():
    front = pareto_front
    assert front([1, 2, 3, 4], [5, 5, 3, 4], ses=[0, 0, 0, 0]) == front([1, 2, 3, 4], [5, 5, 3, 4])
    # 0.1 apart: ranked when both SEs are small, not when one point's own SE is large
    assert front([1, 2], [1.1, 1.0], ses=[0.01, 0.01]) == [0, 1]
    assert front([1, 2], [1.0, 1.1], ses=[0.01, 0.01]) == [0]
    assert front([1, 2], [1.0, 1.1], ses=[0.01, 0.05]) == [0, 1]
    assert front([1, 2], [1.0, 1.1], ses=[0.01, 0.05], n_se=1.0) == [0]        # 1·0.06 < 0.1: ranked
    # the two forms of noise add: 0.05 + 2·(0.01 + 0.01) = 0.09 < 0.1 ranks them, 0.07 + 0.04 does not
    assert front([1, 2], [1.0, 1.1], 0.05, ses=[0.01, 0.01]) == [0]
    assert front([1, 2], [1.0, 1.1], 0.07, ses=[0.01, 0.01]) == [0, 1]
    assert widgets.pruning.paired_pareto_front([1, 2], [1.0, 1.1], [0.01, 0.05]) == [0, 1]     # lab 04's name
    for args, kwargs, words in ((([1], [1]), {"ses": [-0.1]}, r"ses\[0\]=-0.1"),
                                (([1, 2], [1, 2]), {"ses": [0.0]}, "one entry per point"),
                                (([1], [1]), {"ses": [float("nan")]}, r"ses\[0\]=nan"),
                                (([1], [1]), {"ses": [0.0], "n_se": -1}, "n_se=-1"),
                                (([1], [1]), {"n_se": float("inf")}, "n_se=inf"),
                                (([float("nan")], [1]), {"ses": [0.0]}, r"xs\[0\]=nan")):
        with pytest.raises(ValueError, match=words):
            front(*args, **kwargs)


def old_tolerance_front(xs, ys, y_tolerance=0.0):
    """The oracle: core.pareto_front's rule before ses existed (one tolerance for every pair), checks left out."""
    pts = [(float(x), float(y)) for x, y in zip(xs, ys)]

    def beats(q, p):
        return q[0] <= p[0] and (q[1] < p[1] - y_tolerance or (q[1] == p[1] and q[0] < p[0]))

    front = [i for i, p in enumerate(pts) if not any(beats(q, p) for q in pts) and pts.index(p) == i]
    return sorted(front, key=lambda i: (pts[i][0], pts[i][1], i))


def old_paired_front(xs, losses, ses, n_se=2.0):
    """The oracle: lab 04's former widgets.pruning.paired_pareto_front (n_se·(se_p + se_q)), checks left out."""
    pts = list(zip((float(x) for x in xs), (float(y) for y in losses), (float(v) for v in ses)))

    def beats(q, p):
        return q[0] <= p[0] and (q[1] < p[1] - n_se * (p[2] + q[2]) or (q[1] == p[1] and q[0] < p[0]))

    keys = [(x, y) for x, y, _ in pts]
    front = [i for i, p in enumerate(pts) if not any(beats(q, p) for q in pts) and keys.index(keys[i]) == i]
    return sorted(front, key=lambda i: (pts[i][0], pts[i][1], i))


standard_errors = st.lists(st.sampled_from([0.0, 0.05, 0.1, 0.5, 1.25]), min_size=25, max_size=25)


@settings(max_examples=300, deadline=None)
@given(points, tolerance, standard_errors, st.sampled_from([0.0, 1.0, 2.0, 3.0]))
def test_the_one_rule_equals_both_old_rules(pts, tol, ses, n_se):
    xs, ys, ses = [p[0] for p in pts], [p[1] for p in pts], ses[:len(pts)]
    zeros = [0.0] * len(pts)
    old = old_tolerance_front(xs, ys, tol)
    assert pareto_front(xs, ys, tol) == pareto_front(xs, ys, tol, ses=zeros, n_se=n_se) == old        # lab 01, 05
    paired = old_paired_front(xs, ys, ses, n_se)
    assert pareto_front(xs, ys, ses=ses, n_se=n_se) == paired                                            # lab 04
    assert widgets.pruning.paired_pareto_front(xs, ys, ses, n_se) == paired
    # both forms of noise at once: never a smaller front than either alone
    both = {pts[i] for i in pareto_front(xs, ys, tol, ses=ses, n_se=n_se)}
    assert {pts[i] for i in old} <= both and {pts[i] for i in paired} <= both
