"""Lab 06: the teacher's soft targets at a temperature T, and the validation loss students reached at each (T, alpha).

    contexts = distill.real_contexts(corpus.val, 3, length=64, seed=0)              # (context ids, next id) pairs
    examples = widgets.soft_target_examples(teacher, corpus.tokenizer, contexts)    # the teacher at T = 1, once
    rows = distill.distillation_sweep(cfg, teacher, temperatures=(1, 2, 4), alphas=(0, 0.5, 0.9), seeds=(0, 1, 2))
    widgets.distillation_panel(examples, rows, teacher_loss=score(teacher, eval_set).loss)

teacher_probs (what `soft_target_examples` returns): one dict per context with "context" (its text), "next_char"
(the character that really came next), "chars" (the vocabulary, V characters) and "probs" (the teacher's V
next-character probabilities at T = 1, labkit.distill.next_char_probabilities). The distribution at any other T
follows exactly: softmax(logits / T) = softmax(log p / T), since log p differs from the logits by a constant.

results: the rows labkit.distill.distillation_sweep returns (or their DataFrame): seed, temperature (None for
alpha = 0), alpha, val_loss (nats/char on the lab's evaluation set) and more. alpha = 0 is the labels-only
student (T plays no part in it); every other row is a distilled student of the same shape, steps and batches.

Left: for each context, the teacher's most likely characters at the chosen T (bars; the true next character in
red), the same characters at T = 1 (outlines), and the rest of the vocabulary as one "other" bar: raising T moves
probability from the top characters to the others (the dark knowledge a student can learn from).
Right: validation loss against alpha, one line per T (mean over seeds, each seed a dot, bars ± the seed std), the
labels-only students as a band, the teacher as a line; the chosen student is compared with the labels-only one
seed by seed (paired: same initial weights, same batches), and a gap within the 95% Student's t bound for that
many seeds (t_quantile(n − 1) standard errors, labkit.evaluate) is called noise.
"""
from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass
from typing import Any

import torch
from matplotlib.figure import Figure

from labkit.evaluate import t_quantile
from labkit.widgets.core import Panel, _finite_number, render_into, wire_panel

RESULT_COLUMNS = ("seed", "temperature", "alpha", "val_loss")
#: characters drawn per context (the rest of the vocabulary is one "other" bar)
TOP_CHARS = 12
#: contexts drawn at most
MAX_CONTEXTS = 4
T_COLORS = ("#4C72B0", "#55A868", "#DD8452", "#8172B3", "#DA8BC3", "#937860", "#CCB974", "#64B5CD")
LABELS_COLOR, TRUE_COLOR, OTHER_COLOR = "#8C8C8C", "#C44E52", "#BBBBBB"


# ---------------------------------------------------------------------------------------------
# The teacher's soft targets


def soft_target_examples(teacher: Any, tokenizer: Any, contexts: list[tuple[torch.Tensor, int]]) -> list[dict]:
    """The teacher's next-character probabilities at T = 1 after each (context ids, next id) pair, for the panel."""
    from labkit.distill import next_char_probabilities

    if not contexts:
        raise ValueError("contexts is empty: give (context ids, next id) pairs, e.g. labkit.distill.real_contexts(...)")
    examples = []
    for i, pair in enumerate(contexts):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ValueError(f"contexts[{i}] must be a (context ids, next id) pair, got {type(pair).__name__}")
        ids, next_id = pair
        ids = torch.as_tensor(ids, dtype=torch.long)
        probs = next_char_probabilities(teacher, ids, (1.0,))[0]
        examples.append({"context": tokenizer.decode(ids), "next_char": tokenizer.chars[int(next_id)],
                         "chars": list(tokenizer.chars), "probs": [float(p) for p in probs]})
    return examples


def check_teacher_probs(teacher_probs: Any) -> list[dict]:
    """The examples as a list, or a TypeError/ValueError naming what is wrong (keys, lengths, probabilities)."""
    if isinstance(teacher_probs, dict):
        teacher_probs = [teacher_probs]
    if not isinstance(teacher_probs, (list, tuple)) or not teacher_probs:
        raise TypeError(f"teacher_probs must be a non-empty list of dicts (widgets.soft_target_examples), got "
                        f"{type(teacher_probs).__name__}")
    for i, ex in enumerate(teacher_probs):
        if not isinstance(ex, dict):
            raise TypeError(f"teacher_probs[{i}] must be a dict, got {type(ex).__name__}")
        missing = [k for k in ("context", "next_char", "chars", "probs") if k not in ex]
        if missing:
            raise ValueError(f"teacher_probs[{i}] lacks {missing}; each example needs 'context', 'next_char', "
                             "'chars' and 'probs' (widgets.soft_target_examples makes them)")
        probs = [float(p) for p in ex["probs"]]
        if len(probs) != len(ex["chars"]) or len(probs) < 2:
            raise ValueError(f"teacher_probs[{i}] has {len(probs)} probabilities for {len(ex['chars'])} characters; "
                             "allowed: one per character, at least 2")
        if any(not (math.isfinite(p) and p >= 0) for p in probs) or not math.isclose(sum(probs), 1.0, abs_tol=1e-3):
            raise ValueError(f"teacher_probs[{i}]['probs'] must be probabilities (>= 0, summing to 1), "
                             f"got a sum of {sum(probs):.6g}")
        if ex["next_char"] not in ex["chars"]:
            raise ValueError(f"teacher_probs[{i}]['next_char']={ex['next_char']!r} is not one of its characters")
    return list(teacher_probs)


def soft_targets_at(probs: list[float], temperature: float) -> list[float]:
    """softmax(log p / T) in float64: the distribution at temperature T from the one at T = 1 (0 stays 0)."""
    from labkit.distill import check_temperature

    temperature = check_temperature(temperature)
    p = torch.tensor(probs, dtype=torch.float64)
    return torch.softmax(torch.log(p) / temperature, dim=0).tolist()


def _shown(char: str) -> str:
    """A character as a readable label: space and newline made visible, '$' escaped (matplotlib reads $...$ as math)."""
    return {" ": "␣", "\n": "↵", "\t": "⇥", "$": r"\$"}.get(char, char)


def _plain(text: str) -> str:
    """Text for a figure: newlines shown as ↵, every '$' escaped so that two of them never start mathtext."""
    return _one_line(text).replace("$", r"\$")


def _one_line(text: str) -> str:
    """A context's text on one line: each newline shown as ↵."""
    return text.replace("\n", "↵")


def _example_state(ex: dict, temperature: float, top: int) -> dict:
    """One context at T: its `top` most likely characters (the same at every T), the rest's mass, the true one's rank."""
    p1 = [float(p) for p in ex["probs"]]
    pt = soft_targets_at(p1, temperature)
    order = sorted(range(len(p1)), key=lambda j: (-p1[j], j))     # softmax(log p / T) keeps this order at every T
    keep = order[:top]
    true_id = ex["chars"].index(ex["next_char"])
    rank = order.index(true_id) + 1
    return {"context": ex["context"], "next_char": ex["next_char"], "chars": [ex["chars"][j] for j in keep],
            "probs": [pt[j] for j in keep], "probs_t1": [p1[j] for j in keep],
            "other_mass": max(0.0, 1.0 - sum(pt[j] for j in keep)), "other_mass_t1": max(0.0, 1.0 - sum(p1[j] for j in keep)),
            "n_other": len(p1) - len(keep), "true_rank": rank, "true_prob": pt[true_id], "true_prob_t1": p1[true_id],
            "true_shown": true_id in keep, "top_prob": pt[order[0]]}


# ---------------------------------------------------------------------------------------------
# The students' results


def check_distillation_results(results: Any) -> list[dict]:
    """The rows as plain dicts, or a TypeError/ValueError naming what is wrong (columns, values, duplicates)."""
    try:
        import pandas as pd
        if isinstance(results, pd.DataFrame):
            results = results.to_dict("records")
    except ImportError:      # pragma: no cover - pandas is a requirement
        pass
    if not isinstance(results, (list, tuple)) or not results or not all(isinstance(r, dict) for r in results):
        raise TypeError("results must be the rows labkit.distill.distillation_sweep returns (a non-empty list of "
                        f"dicts) or their DataFrame, got {type(results).__name__}")
    rows, seen = [], set()
    for i, r in enumerate(results):
        missing = [c for c in RESULT_COLUMNS if c not in r]
        if missing:
            raise ValueError(f"results row {i} lacks {missing}; each row needs {list(RESULT_COLUMNS)}")
        alpha, loss, seed = r["alpha"], r["val_loss"], r["seed"]
        if not (_finite_number(alpha) and 0 <= float(alpha) <= 1):
            raise ValueError(f"results row {i}: alpha={alpha!r}; allowed: a number in [0, 1]")
        if not _finite_number(loss) or float(loss) < 0:
            raise ValueError(f"results row {i}: val_loss={loss!r}; allowed: a finite number >= 0 (nats/char)")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            if not (_finite_number(seed) and float(seed).is_integer()):
                raise ValueError(f"results row {i}: seed={seed!r}; allowed: an integer")
        alpha, seed = float(alpha), int(seed)
        t = r["temperature"]
        if alpha == 0:
            t = None                                    # the labels-only student: T plays no part
        elif not (_finite_number(t) and float(t) > 0):
            raise ValueError(f"results row {i}: temperature={t!r} with alpha={alpha:g}; allowed: a number > 0")
        else:
            t = float(t)
        key = (t, alpha, seed)
        if key in seen:
            raise ValueError(f"results has two rows for temperature={t}, alpha={alpha:g}, seed={seed}; allowed: one "
                             "per (temperature, alpha, seed)")
        seen.add(key)
        rows.append({"temperature": t, "alpha": alpha, "seed": seed, "val_loss": float(loss)})
    if not any(r["alpha"] == 0 for r in rows):
        raise ValueError("results has no labels-only students (rows with alpha = 0): the panel compares every "
                         "distilled student with them — run distillation_sweep with 0.0 among its alphas")
    if not any(r["alpha"] > 0 for r in rows):
        raise ValueError("results has no distilled students (rows with alpha > 0)")
    return rows


@dataclass(frozen=True)
class ResultTable:
    """Checked results indexed once: {seed: val_loss} per (T, alpha) and for the labels-only students."""

    losses: dict[tuple[float, float], dict[int, float]]
    labels_only: dict[int, float]
    temperatures: list[float]
    alphas: list[float]                  # 0 (labels only) first


def result_table(results: Any) -> ResultTable:
    """Check results (`check_distillation_results`) and index them, so a redraw does no pandas work."""
    if isinstance(results, ResultTable):
        return results
    rows = check_distillation_results(results)
    losses: dict[tuple[float, float], dict[int, float]] = {}
    labels: dict[int, float] = {}
    for r in rows:
        if r["alpha"] == 0:
            labels[r["seed"]] = r["val_loss"]
        else:
            losses.setdefault((r["temperature"], r["alpha"]), {})[r["seed"]] = r["val_loss"]
    return ResultTable(losses=losses, labels_only=labels, temperatures=sorted({t for t, _ in losses}),
                       alphas=[0.0] + sorted({a for _, a in losses}))


def _spread(by_seed: dict[int, float]) -> dict:
    """Mean and sample std (nats/char) over seeds; std None with one seed."""
    xs = list(by_seed.values())
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return {"mean": mean, "std": std, "n_seeds": len(xs), "losses": dict(sorted(by_seed.items()))}


def _paired_gap(chosen: dict[int, float], labels: dict[int, float]) -> dict | None:
    """Chosen minus labels-only, seed by seed: mean, std, standard error, and whether it is beyond the noise."""
    seeds = sorted(set(chosen) & set(labels))
    if not seeds:
        return None
    gaps = [chosen[s] - labels[s] for s in seeds]
    mean = sum(gaps) / len(gaps)
    if len(gaps) < 2:
        return {"mean": mean, "std": None, "se": None, "t": None, "n_seeds": 1, "per_seed": gaps, "beyond_noise": None}
    std = math.sqrt(sum((g - mean) ** 2 for g in gaps) / (len(gaps) - 1))
    se = std / math.sqrt(len(gaps))
    t = t_quantile(len(gaps) - 1)        # 95% two-sided: the standard error is estimated from these few seeds
    return {"mean": mean, "std": std, "se": se, "t": t, "n_seeds": len(gaps), "per_seed": gaps,
            "beyond_noise": abs(mean) > t * se}


def _nearest(values: list[float], x: Any, name: str) -> float:
    if not _finite_number(x) or not any(abs(float(x) - v) < 1e-9 for v in values):
        raise ValueError(f"{name}={x!r} was not in the sweep; allowed: {values}")
    return min(values, key=lambda v: abs(v - float(x)))


def distillation_state(teacher_probs: Any, results: Any, temperature: float, alpha: float,
                       teacher_loss: float | None = None, top: int = TOP_CHARS) -> dict[str, Any]:
    """The teacher's soft targets at T for each context, and the (T, alpha) students against the labels-only ones.

    Losses are nats/char on the evaluation set the results were scored on; `teacher_loss` (same set) is drawn as a
    line. The gap to the labels-only students is paired by seed; with one seed it is shown but not judged.
    """
    examples = check_teacher_probs(teacher_probs)
    table = result_table(results)
    if isinstance(top, bool) or not isinstance(top, numbers.Integral) or top < 1:
        raise ValueError(f"top={top!r}; allowed: an integer >= 1 (characters drawn per context)")
    if teacher_loss is not None and not (_finite_number(teacher_loss) and teacher_loss >= 0):
        raise ValueError(f"teacher_loss={teacher_loss!r}; allowed: None or a finite number >= 0 (nats/char)")
    temperature = _nearest(table.temperatures, temperature, "temperature")
    alpha = _nearest(table.alphas, alpha, "alpha")

    labels = _spread(table.labels_only)
    curves = []
    for t in table.temperatures:
        points = [{"alpha": 0.0, **labels}]
        points += [{"alpha": a, **_spread(table.losses[t, a])} for a in table.alphas[1:] if (t, a) in table.losses]
        curves.append({"temperature": t, "points": points})
    by_seed = table.labels_only if alpha == 0 else table.losses.get((temperature, alpha))
    chosen = None if by_seed is None else {"temperature": None if alpha == 0 else temperature, "alpha": alpha,
                                           **_spread(by_seed)}
    gap = None if chosen is None or alpha == 0 else _paired_gap(by_seed, table.labels_only)
    state = {
        "temperature": temperature, "alpha": alpha, "temperatures": table.temperatures, "alphas": table.alphas,
        "examples": [_example_state(ex, temperature, top) for ex in examples[:MAX_CONTEXTS]],
        "n_contexts": len(examples), "labels_only": labels, "curves": curves, "chosen": chosen, "gap": gap,
        "in_sweep": chosen is not None, "teacher_loss": None if teacher_loss is None else float(teacher_loss),
    }
    state["text"] = _text(state)
    return state


def _nats(x: float) -> str:
    return f"{x:.4f}"


def _mean_spread(s: dict) -> str:
    """'2.5915 ± 0.0031 (std over 3 seeds)' or '2.5915 (1 seed)'."""
    if s["std"] is None:
        return f"{_nats(s['mean'])} (1 seed)"
    return f"{_nats(s['mean'])} ± {_nats(s['std'])} (std over {s['n_seeds']} seeds)"


def _text(state: dict) -> str:
    """What the figure shows, in words and numbers from the state."""
    T, a = state["temperature"], state["alpha"]
    ex = state["examples"][0]
    soft = (f"At T = {T:g}, after \"…{_one_line(ex['context'][-20:])}\" the teacher gives the true next character "
            f"{ex['next_char']!r} {100 * ex['true_prob']:.1f}% ({100 * ex['true_prob_t1']:.1f}% at T = 1) and the "
            f"{ex['n_other']} characters outside its top {len(ex['chars'])} {100 * ex['other_mass']:.1f}% together "
            f"({100 * ex['other_mass_t1']:.1f}% at T = 1).")
    labels = state["labels_only"]
    if a == 0:
        return (f"{soft} α = 0 trains on the labels alone (T plays no part): validation loss "
                f"{_mean_spread(labels)} nats/char." + _teacher_words(state))
    if state["chosen"] is None:
        measured = "; ".join(f"T = {c['temperature']:g}: α = " + ", ".join(f"{p['alpha']:g}" for p in c["points"][1:])
                             for c in state["curves"])
        return f"{soft} T = {T:g}, α = {a:g} is not in the sweep (measured: {measured})."
    chosen, gap = state["chosen"], state["gap"]
    words = (f"{soft} Distilled at T = {T:g}, α = {a:g}: validation loss {_mean_spread(chosen)} nats/char vs "
             f"labels only {_mean_spread(labels)}.")
    if gap is None:
        words += " No seed was trained both ways, so the two are not compared."
    elif gap["se"] is None:
        words += (f" Distilled minus labels-only: {gap['mean']:+.4f} nats/char on one seed; with one seed the "
                  "seed-to-seed noise is not measured, so this gap is not ranked.")
    else:
        words += (f" Distilled minus labels-only, paired by seed: {gap['mean']:+.4f} ± {gap['se']:.4f} nats/char "
                  f"(standard error over {gap['n_seeds']} seeds)")
        if gap["beyond_noise"]:
            words += (f": {'better' if gap['mean'] < 0 else 'worse'} than labels only by more than "
                      f"{gap['t']:.2f} standard errors (the 95% t bound for {gap['n_seeds']} seeds).")
        else:
            words += (f": within {gap['t']:.2f} standard errors of 0 (the 95% t bound for {gap['n_seeds']} seeds), "
                      "so the data cannot tell them apart.")
    return words + _teacher_words(state)


def _teacher_words(state: dict) -> str:
    if state["teacher_loss"] is None:
        return ""
    return f" The teacher: {_nats(state['teacher_loss'])} nats/char."


# ---------------------------------------------------------------------------------------------
# The figure


def _t_color(temperatures: list[float], t: float) -> str:
    return T_COLORS[temperatures.index(t) % len(T_COLORS)]


def _bars(xs: list[float], heights: list[float], width: float = 0.8) -> list[list[tuple[float, float]]]:
    """Rectangles (as polygons) of a bar chart: drawn as ONE collection, far cheaper to lay out than a patch per bar."""
    h = width / 2
    return [[(x - h, 0.0), (x - h, y), (x + h, y), (x + h, 0.0)] for x, y in zip(xs, heights)]


def distillation_figure(state: dict) -> Figure:
    """Left: each context's top characters at T (T = 1 outlined). Right: validation loss vs alpha per T, the teacher."""
    from matplotlib.collections import LineCollection, PolyCollection
    from matplotlib.patches import Patch

    fig = Figure(figsize=(12.4, 4.4))
    fig.subplots_adjust(left=0.05, right=0.80, bottom=0.14, top=0.86, wspace=0.2)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": (1.25, 1.0)})
    T, temps = state["temperature"], state["temperatures"]
    t_color = _t_color(temps, T)

    # left: one group of bars per context, side by side
    xs_all, labels_all, now, then, colors = [], [], [], [], []
    for g, ex in enumerate(state["examples"]):
        n = len(ex["chars"])
        x0 = g * (n + 3)
        xs = [x0 + j for j in range(n)] + [x0 + n + 0.6]             # the "other" bar a little apart
        xs_all += xs
        labels_all += [_shown(c) for c in ex["chars"]] + [f"+{ex['n_other']}"]
        now += ex["probs"] + [ex["other_mass"]]
        then += ex["probs_t1"] + [ex["other_mass_t1"]]
        colors += [TRUE_COLOR if c == ex["next_char"] else t_color for c in ex["chars"]] + [OTHER_COLOR]
        where = "" if ex["true_shown"] else f", ranked {ex['true_rank']}"
        left.text(x0 + n / 2, 1.03, f"\"…{_plain(ex['context'][-14:])}\"\n→ {_shown(ex['next_char'])}{where}", ha="center",
                  va="bottom", fontsize=7.5, transform=left.get_xaxis_transform())
    left.add_collection(PolyCollection(_bars(xs_all, now), facecolors=colors, edgecolors="none"))
    left.add_collection(PolyCollection(_bars(xs_all, then), facecolors="none", edgecolors="k", linewidths=0.7))
    left.set_xlim(-0.8, xs_all[-1] + 0.8)
    left.set_ylim(0, 1.0)
    left.set_xticks(xs_all, labels_all, fontsize=6.5)
    left.set_yticks([0, 0.25, 0.5, 0.75, 1.0], ["0", "0.25", "0.5", "0.75", "1"])
    left.set_ylabel("probability of coming next")
    left.set_xlabel(f"next character: the teacher's top {len(state['examples'][0]['chars'])} after each context, "
                    "then all the others", fontsize=9)
    left.legend(handles=[Patch(color=t_color, label=f"T = {T:g}"), Patch(color=TRUE_COLOR, label="true next char"),
                         Patch(facecolor="none", edgecolor="k", label="T = 1")], fontsize=7, loc="upper right")

    # right: validation loss against alpha, one line per T
    labels = state["labels_only"]
    if labels["std"] is not None:
        right.axhspan(labels["mean"] - labels["std"], labels["mean"] + labels["std"], color=LABELS_COLOR, alpha=0.2,
                      lw=0)
    right.axhline(labels["mean"], color=LABELS_COLOR, ls="--", lw=1.2,
                  label=f"labels only (α = 0): {_nats(labels['mean'])}" + (" ± std" if labels["std"] else ""))
    values = list(labels["losses"].values())
    for curve in state["curves"]:
        t, pts = curve["temperature"], curve["points"]
        color, chosen_t = _t_color(temps, t), t == T
        right.plot([p["alpha"] for p in pts], [p["mean"] for p in pts], "-o", ms=4, color=color,
                   lw=2.2 if chosen_t else 1.0, alpha=1.0 if chosen_t else 0.55, label=f"distilled, T = {t:g}")
        spread = [[(p["alpha"], p["mean"] - p["std"]), (p["alpha"], p["mean"] + p["std"])] for p in pts[1:]
                  if p["std"] is not None]
        right.add_collection(LineCollection(spread, colors=color, linewidths=1.0, alpha=1.0 if chosen_t else 0.55))
        seeds = [(p["alpha"], v) for p in pts[1:] for v in p["losses"].values()]
        right.plot([a for a, _ in seeds], [v for _, v in seeds], ".", ms=3, color=color, alpha=0.6)
        values += [v for _, v in seeds]
    chosen = state["chosen"]
    if chosen is not None:
        right.plot([chosen["alpha"]], [chosen["mean"]], "o", ms=12, mfc="none", mec=TRUE_COLOR, mew=2, zorder=5,
                   label="chosen" + ("" if chosen["alpha"] == 0 else f": T = {T:g}, α = {chosen['alpha']:g}"))
    lo, hi = min(values), max(values)
    span = max(hi - lo, 0.01)
    ylo, yhi = lo - 0.15 * span, hi + 0.15 * span
    teacher = state["teacher_loss"]
    if teacher is not None:
        if teacher >= lo - 2 * span:
            ylo = min(ylo, teacher - 0.1 * span)
            right.axhline(teacher, color="k", ls=":", lw=1.2, label=f"teacher: {_nats(teacher)}")
        else:                                          # far below: a line there would flatten every student difference
            right.text(0.5, 0.02, f"↓ the teacher: {_nats(teacher)} nats/char, far below this axis", ha="center",
                       va="bottom", fontsize=8, transform=right.transAxes)
    right.set_ylim(ylo, yhi)
    right.set_xticks(state["alphas"], [f"{a:g}" for a in state["alphas"]])
    right.set_xlim(-0.05, 1.05)
    right.set_xlabel("α (weight of the teacher's soft targets; 0 = labels only)")
    right.set_ylabel("validation loss (nats/char)")
    right.set_title("students, same steps: mean over seeds (dots: seeds, bars: ± std)", fontsize=9)
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.suptitle(f"the teacher's soft targets at T = {T:g}, and the students it taught", x=0.05, y=0.99, ha="left",
                 fontsize=10)
    return fig


# ---------------------------------------------------------------------------------------------
# The panel


def distillation_panel(teacher_probs: Any, results: Any, teacher_loss: float | None = None,
                       temperature: float | None = None, alpha: float | None = None) -> Panel:
    """T and α sliders → the teacher's soft targets at T and the precomputed students' validation loss."""
    import ipywidgets as W

    examples = check_teacher_probs(teacher_probs)
    table = result_table(results)                 # checked and indexed once: a redraw does no pandas work
    temperature = table.temperatures[min(1, len(table.temperatures) - 1)] if temperature is None else temperature
    alpha = table.alphas[min(1, len(table.alphas) - 1)] if alpha is None else alpha
    first = distillation_state(examples, table, temperature, alpha, teacher_loss)   # names a bad start value
    style = {"description_width": "90px"}
    controls = {
        "temperature": W.SelectionSlider(options=[(f"{t:g}", t) for t in table.temperatures],
                                         value=first["temperature"], description="temperature T", style=style),
        "alpha": W.SelectionSlider(options=[(f"{a:g}", a) for a in table.alphas], value=first["alpha"],
                                   description="α (soft weight)", style=style),
    }
    output = W.Output()
    panel = Panel(widget=None, output=output, controls=controls)

    def refresh(*_):
        t0 = time.perf_counter()
        panel.state = distillation_state(examples, table, controls["temperature"].value, controls["alpha"].value,
                                         teacher_loss)
        panel.figure = distillation_figure(panel.state)
        render_into(output, panel.figure, panel.state["text"], panel=panel, tight=False)
        panel.render_ms = (time.perf_counter() - t0) * 1000

    return wire_panel(panel, refresh, None, n_left=1)
