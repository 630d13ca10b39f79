"""Lab 06's distillation panel, driven without a browser: a real (tiny) distillation_sweep on the synthetic corpus
with a small trained teacher, synthetic results for the wording, and the soft targets at any T from those at T = 1."""
import math

import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest
import torch

from labkit import data as data_mod
from labkit import distill as D
from labkit import widgets
from labkit.evaluate import evaluation_set
from labkit.train import make_config, train
from labkit.evaluate import t_quantile
from labkit.widgets.distillation import MAX_CONTEXTS, TOP_CHARS


@pytest.fixture(scope="module")
def real(synthetic_root, tmp_path_factory):
    """A teacher trained 40 steps, three real contexts, and a distillation_sweep: T ∈ {1, 4}, α ∈ {0, 0.5}, 2 seeds."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LABKIT_DATA_DIR", str(tmp_path_factory.mktemp("labkit-data")))   # never data/cache/
        corpus = data_mod.load_corpus("synthetic", synthetic_root)
        teacher, _ = train(make_config("gpt", "tiny", max_iters=40, progress=False, seed=7), corpus=corpus,
                           log=lambda *_: None)
        teacher.eval()
        cfg = make_config("gpt", "tiny", max_iters=3, eval_interval=0, eval_iters=2, progress=False, batch_size=4,
                          block_size=16, model_args={"n_layer": 1, "n_head": 2, "n_embd": 16})
        ev = evaluation_set(corpus.val, window=16, every=8, n_chars=20_000)
        rows = D.distillation_sweep(cfg, teacher, temperatures=(1.0, 4.0), alphas=(0.0, 0.5), seeds=(0, 1),
                                    eval_set=ev, corpus=corpus)
        contexts = D.real_contexts(corpus.val, 3, length=16, seed=0)
        examples = widgets.soft_target_examples(teacher, corpus.tokenizer, contexts)
    return {"teacher": teacher, "corpus": corpus, "rows": rows, "contexts": contexts, "examples": examples}


def synthetic_rows(gaps=((1.0, 0.5, -0.02), (2.0, 0.5, -0.01), (1.0, 0.9, 0.0005), (2.0, 0.9, 0.03)),
                   seeds=(0, 1, 2), noise=0.002, base=2.6) -> list[dict]:
    """distillation_sweep-shaped rows: per seed, a labels-only loss and each (T, α) at base + gap ± a seed wobble."""
    rows = []
    for i, seed in enumerate(seeds):
        wobble = noise * (i - 1)                         # the same for every student of one seed: pairing removes it
        rows.append({"seed": seed, "temperature": None, "alpha": 0.0, "val_loss": base + wobble})
        for t, a, gap in gaps:
            rows.append({"seed": seed, "temperature": t, "alpha": a,
                         "val_loss": base + wobble + gap + 0.0005 * ((i * 7 + int(10 * a)) % 3 - 1)})
    return rows


def example(probs=(0.5, 0.3, 0.15, 0.05), chars="abcd", next_char="b", context="the context") -> dict:
    return {"context": context, "next_char": next_char, "chars": list(chars), "probs": list(probs)}


# ---- soft targets ----------------------------------------------------------------------------

def test_soft_target_examples_are_the_teachers_probabilities_at_T1(real):
    tok = real["corpus"].tokenizer
    assert len(real["examples"]) == 3
    for ex, (ids, next_id) in zip(real["examples"], real["contexts"]):
        assert ex["context"] == tok.decode(ids) and ex["next_char"] == tok.chars[next_id]
        assert ex["chars"] == list(tok.chars)
        expected = D.next_char_probabilities(real["teacher"], ids, (1.0,))[0]
        assert torch.allclose(torch.tensor(ex["probs"]), expected, atol=0, rtol=0)


@pytest.mark.parametrize("T", [0.5, 2.0, 4.0, 8.0])
def test_soft_targets_at_T_equal_the_teachers_softmax_of_logits_over_T(real, T):
    # softmax(log p / T) = softmax(logits / T): the panel needs the T = 1 probabilities only
    for ex, (ids, _) in zip(real["examples"], real["contexts"]):
        at_t = torch.tensor(widgets.soft_targets_at(ex["probs"], T), dtype=torch.float64)
        direct = D.next_char_probabilities(real["teacher"], ids, (T,))[0].double()
        assert torch.allclose(at_t, direct, atol=2e-6, rtol=1e-4)
        assert at_t.sum().item() == pytest.approx(1.0, abs=1e-12)


def test_example_state_keeps_the_top_characters_and_moves_mass_to_the_rest_as_T_rises(real):
    ex = real["examples"][0]
    states = [widgets.distillation_state([ex], real["rows"], t, 0.5)["examples"][0] for t in (1.0, 4.0)]
    assert states[0]["chars"] == states[1]["chars"] and len(states[0]["chars"]) == TOP_CHARS
    for s in states:
        assert sum(s["probs"]) + s["other_mass"] == pytest.approx(1.0)
        assert s["n_other"] == len(ex["chars"]) - TOP_CHARS
        assert s["probs"] == sorted(s["probs"], reverse=True)         # the T = 1 order holds at every T
    assert states[1]["other_mass"] > states[0]["other_mass"] and states[1]["top_prob"] < states[0]["top_prob"]
    true_id = ex["chars"].index(ex["next_char"])
    rank = sorted(ex["probs"], reverse=True).index(ex["probs"][true_id]) + 1
    assert states[0]["true_rank"] == rank and states[0]["true_prob"] == pytest.approx(ex["probs"][true_id])


def test_soft_targets_at_refuses_a_bad_temperature():
    for bad in (0, -1.0, float("nan"), "2"):
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            widgets.soft_targets_at([0.5, 0.5], bad)


def test_small_vocabularies_and_the_true_char_outside_the_top():
    s = widgets.distillation_state([example(next_char="d")], synthetic_rows(), 2.0, 0.5, top=2)
    e = s["examples"][0]
    assert e["chars"] == ["a", "b"] and not e["true_shown"] and e["true_rank"] == 4 and e["n_other"] == 2
    expected = widgets.soft_targets_at([0.5, 0.3, 0.15, 0.05], 2.0)
    assert e["other_mass"] == pytest.approx(expected[2] + expected[3])
    labels = [t.get_text() for t in widgets.distillation_figure(s).axes[0].get_xticklabels()]
    assert labels == ["a", "b", "+2"]


# ---- the students ----------------------------------------------------------------------------

def test_state_reads_the_real_sweep_and_pairs_by_seed(real):
    rows = real["rows"]
    s = widgets.distillation_state(real["examples"], pd.DataFrame(rows), 4.0, 0.5)
    mine = {r["seed"]: r["val_loss"] for r in rows if r["temperature"] == 4.0 and r["alpha"] == 0.5}
    labels = {r["seed"]: r["val_loss"] for r in rows if r["alpha"] == 0.0}
    assert s["chosen"]["mean"] == pytest.approx(sum(mine.values()) / 2)
    assert s["labels_only"]["mean"] == pytest.approx(sum(labels.values()) / 2)
    assert s["gap"]["per_seed"] == pytest.approx([mine[0] - labels[0], mine[1] - labels[1]])
    assert s["temperatures"] == [1.0, 4.0] and s["alphas"] == [0.0, 0.5]
    assert f"{s['chosen']['mean']:.4f}" in s["text"] and f"{s['gap']['mean']:+.4f}" in s["text"]
    # the rows and their DataFrame give the same state
    assert widgets.distillation_state(real["examples"], rows, 4.0, 0.5)["text"] == s["text"]


def test_summary_agrees_with_distills_own_paired_summary():
    rows = synthetic_rows()
    s = widgets.distillation_state([example()], rows, 1.0, 0.5)
    as_compare = [{"seed": r["seed"], "student": "labels only" if r["alpha"] == 0 else "distilled",
                   "val_loss": r["val_loss"]} for r in rows if r["alpha"] == 0 or (r["temperature"], r["alpha"]) == (1.0, 0.5)]
    summary = D.summarize_comparison(as_compare)
    assert s["gap"]["mean"] == pytest.approx(summary["gap"]["mean"])
    assert s["gap"]["se"] == pytest.approx(summary["gap"]["standard_error"])
    assert s["gap"]["beyond_noise"] == summary["gain_beyond_noise"] is True
    assert s["chosen"]["std"] == pytest.approx(summary["distilled"]["std"])


@pytest.mark.parametrize("T, alpha, words", [
    (1.0, 0.5, "better than labels only by more than 4.30 standard errors (the 95% t bound for 3 seeds)"),
    (2.0, 0.9, "worse than labels only by more than 4.30 standard errors (the 95% t bound for 3 seeds)"),
    (1.0, 0.9, "within 4.30 standard errors of 0 (the 95% t bound for 3 seeds), so the data cannot tell them apart"),
    (2.0, 0.0, "α = 0 trains on the labels alone (T plays no part)"),
])
def test_the_text_judges_each_gap_against_the_paired_noise(T, alpha, words):
    s = widgets.distillation_state([example()], synthetic_rows(), T, alpha)
    assert words in s["text"], s["text"]
    if alpha > 0:
        gap = s["gap"]
        assert gap["beyond_noise"] == (abs(gap["mean"]) > t_quantile(gap["n_seeds"] - 1) * gap["se"])
        assert f"{gap['mean']:+.4f} ± {gap['se']:.4f} nats/char (standard error over 3 seeds)" in s["text"]
    assert "At T = " in s["text"] and "the teacher gives the true next character 'b' " in s["text"]


def test_one_seed_is_shown_but_not_ranked_and_a_missing_setting_is_named():
    s = widgets.distillation_state([example()], synthetic_rows(seeds=(0,)), 1.0, 0.5)
    assert s["gap"]["se"] is None and "with one seed the seed-to-seed noise is not measured" in s["text"]
    assert s["chosen"]["std"] is None and "(1 seed)" in s["text"]
    widgets.distillation_figure(s)                                   # draws without error bars
    partial = synthetic_rows(gaps=((1.0, 0.5, -0.02), (2.0, 0.9, 0.01)))
    s = widgets.distillation_state([example()], partial, 2.0, 0.5)
    assert not s["in_sweep"] and s["chosen"] is None
    assert "T = 2, α = 0.5 is not in the sweep (measured: T = 1: α = 0.5; T = 2: α = 0.9)" in s["text"]
    widgets.distillation_figure(s)


def test_the_teacher_is_a_line_when_near_and_named_when_far_below():
    near = widgets.distillation_state([example()], synthetic_rows(), 1.0, 0.5, teacher_loss=2.55)
    ax = widgets.distillation_figure(near).axes[1]
    line = next(l for l in ax.lines if l.get_label().startswith("teacher"))
    assert line.get_ydata()[0] == 2.55 and ax.get_ylim()[0] < 2.55
    assert "The teacher: 2.5500 nats/char." in near["text"]
    far = widgets.distillation_state([example()], synthetic_rows(), 1.0, 0.5, teacher_loss=1.2)
    ax = widgets.distillation_figure(far).axes[1]
    assert not any(l.get_label().startswith("teacher") for l in ax.lines)
    assert any("the teacher: 1.2000 nats/char, far below this axis" in t.get_text() for t in ax.texts)
    assert ax.get_ylim()[0] > 2.5                                    # the students' differences stay readable


# ---- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("probs, error, words", [
    ("not a list", TypeError, "teacher_probs must be a non-empty list of dicts"),
    ([], TypeError, "teacher_probs must be a non-empty list"),
    ([{"context": "x"}], ValueError, "lacks ['next_char', 'chars', 'probs']"),
    ([example(probs=(0.5, 0.5))], ValueError, "has 2 probabilities for 4 characters"),
    ([example(probs=(0.5, 0.3, 0.3, 0.1))], ValueError, "summing to 1), got a sum of 1.2"),
    ([example(probs=(0.5, 0.6, -0.1, 0.0))], ValueError, "must be probabilities"),
    ([example(next_char="z")], ValueError, "['next_char']='z' is not one of its characters"),
])
def test_bad_teacher_probs_are_refused_by_name(probs, error, words):
    with pytest.raises(error) as e:
        widgets.distillation_state(probs, synthetic_rows(), 1.0, 0.5)
    assert words in str(e.value)


def bad_rows(change):
    rows = synthetic_rows()
    change(rows)
    return rows


@pytest.mark.parametrize("results, error, words", [
    ("rows", TypeError, "results must be the rows labkit.distill.distillation_sweep returns"),
    ([], TypeError, "a non-empty list of dicts"),
    (bad_rows(lambda r: r[1].pop("val_loss")), ValueError, "results row 1 lacks ['val_loss']"),
    (bad_rows(lambda r: r[1].update(alpha=1.5)), ValueError, "results row 1: alpha=1.5; allowed: a number in [0, 1]"),
    (bad_rows(lambda r: r[1].update(val_loss=float("nan"))), ValueError, "val_loss=nan"),
    (bad_rows(lambda r: r[1].update(temperature=None)), ValueError, "temperature=None with alpha=0.5"),
    (bad_rows(lambda r: r[1].update(seed=0.5)), ValueError, "seed=0.5; allowed: an integer"),
    (bad_rows(lambda r: r.append(dict(r[1]))), ValueError, "two rows for temperature=1.0, alpha=0.5, seed=0"),
    ([r for r in synthetic_rows() if r["alpha"] > 0], ValueError, "no labels-only students (rows with alpha = 0)"),
    ([r for r in synthetic_rows() if r["alpha"] == 0], ValueError, "no distilled students"),
])
def test_bad_results_are_refused_by_name(results, error, words):
    with pytest.raises(error) as e:
        widgets.distillation_state([example()], results, 1.0, 0.5)
    assert words in str(e.value)


@pytest.mark.parametrize("kwargs, words", [
    ({"temperature": 3.0}, "temperature=3.0 was not in the sweep; allowed: [1.0, 2.0]"),
    ({"alpha": 0.7}, "alpha=0.7 was not in the sweep; allowed: [0.0, 0.5, 0.9]"),
    ({"alpha": "0.5"}, "alpha='0.5' was not in the sweep"),
    ({"teacher_loss": -1.0}, "teacher_loss=-1.0; allowed: None or a finite number >= 0"),
    ({"top": 0}, "top=0; allowed: an integer >= 1"),
])
def test_bad_choices_are_refused(kwargs, words):
    args = {"temperature": 1.0, "alpha": 0.5} | kwargs
    with pytest.raises(ValueError) as e:
        widgets.distillation_state([example()], synthetic_rows(), **args)
    assert words in str(e.value)


# ---- the figure and the panel ------------------------------------------------------------------

def test_figure_axes_say_what_and_in_which_unit_with_plain_tick_labels():
    exs = [example(chars="a $\n", probs=(0.4, 0.3, 0.2, 0.1), next_char="$", context="line one\nline two")]
    fig = widgets.distillation_figure(widgets.distillation_state(exs, synthetic_rows(), 2.0, 0.5))
    left, right = fig.axes
    assert "probability" in left.get_ylabel() and "next character" in left.get_xlabel()
    assert "nats/char" in right.get_ylabel() and "α" in right.get_xlabel()
    assert [t.get_text() for t in left.get_xticklabels()] == ["a", "␣", r"\$", "↵", "+0"]
    assert any("one↵line two" in t.get_text() and "→ \\$" in t.get_text() for t in left.texts)
    assert "the true next character '$'" in widgets.distillation_state(exs, synthetic_rows(), 2.0, 0.5)["text"]
    fig.canvas.draw()                                               # '$' alone does not start mathtext
    for ax in (left, right):
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert labels and not any(t.startswith("$") and t.endswith("$") and len(t) > 2 for t in labels)


def test_figure_marks_the_chosen_student_and_draws_every_seed():
    rows = synthetic_rows()
    s = widgets.distillation_state([example()] * 2, rows, 2.0, 0.5)
    right = widgets.distillation_figure(s).axes[1]
    chosen = next(l for l in right.lines if l.get_label().startswith("chosen"))
    assert (chosen.get_xdata()[0], chosen.get_ydata()[0]) == pytest.approx((0.5, s["chosen"]["mean"]))
    dots = [v for l in right.lines if l.get_marker() == "." for v in l.get_ydata()]
    assert sorted(dots) == pytest.approx(sorted(r["val_loss"] for r in rows if r["alpha"] > 0))
    curves = {l.get_label(): l for l in right.lines if l.get_label().startswith("distilled")}
    assert set(curves) == {"distilled, T = 1", "distilled, T = 2"}
    assert curves["distilled, T = 2"].get_linewidth() > curves["distilled, T = 1"].get_linewidth()
    assert list(curves["distilled, T = 2"].get_xdata()) == [0.0, 0.5, 0.9]


def test_only_the_first_contexts_are_drawn():
    s = widgets.distillation_state([example()] * (MAX_CONTEXTS + 2), synthetic_rows(), 1.0, 0.5)
    assert len(s["examples"]) == MAX_CONTEXTS and s["n_contexts"] == MAX_CONTEXTS + 2


def test_panel_follows_its_sliders_with_one_redraw_each(real):
    panel = widgets.distillation_panel(real["examples"], real["rows"], teacher_loss=1.0)
    assert set(panel.controls) == {"temperature", "alpha"}
    assert (panel.state["temperature"], panel.state["alpha"]) == (4.0, 0.5)        # the second T and α: distilled
    bundle = panel._repr_mimebundle_()
    assert "image/png" in bundle and bundle["text/plain"].startswith("At T = 4, after")
    assert panel.png and panel.png.startswith(b"\x89PNG")                          # what a viewer shows
    changes = []
    panel.output.observe(lambda change: changes.append(change), "outputs")
    panel.controls["temperature"].value = 1.0
    assert len(changes) == 1 and len(panel.output.outputs) == 2      # text and figure, replaced not appended
    assert panel.state["temperature"] == 1.0 and "At T = 1, " in panel.output.outputs[0]["text"]
    panel.controls["alpha"].value = 0.0
    assert len(changes) == 2 and "α = 0 trains on the labels alone" in panel.output.outputs[0]["text"]
    assert panel.render_ms < 3000, f"a redraw took {panel.render_ms:.0f} ms"     # generous: the machine is shared


def test_panel_starts_where_asked_and_names_a_bad_start():
    panel = widgets.distillation_panel([example()], pd.DataFrame(synthetic_rows()), temperature=2.0, alpha=0.9)
    assert (panel.state["temperature"], panel.state["alpha"]) == (2.0, 0.9)
    with pytest.raises(ValueError, match=r"alpha=0.3 was not in the sweep"):
        widgets.distillation_panel([example()], synthetic_rows(), alpha=0.3)


def test_every_slider_combination_draws(real):
    table = widgets.result_table(real["rows"])
    for t in table.temperatures:
        for a in table.alphas:
            s = widgets.distillation_state(real["examples"], table, t, a)
            assert s["in_sweep"] and math.isfinite(s["chosen"]["mean"])
