"""Lab 06's committed outputs tell the truth about the run that printed them (issue 11).

Every sentence of the lab that compares two numbers is printed from them; these tests read the committed outputs
and check that each verdict follows from the numbers printed beside it, and that the byte counts match the formulas.
"""
import os
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(os.environ.get("LAB06", Path(__file__).resolve().parent.parent / "notebooks"
                               / "06_knowledge_distillation.ipynb"))
NUMBER = r"[-+]?\d[\d,]*\.?\d*(?:e[-+]?\d+)?"


def _float(text: str) -> float:
    return float(text.replace(",", ""))


@pytest.fixture(scope="module")
def nb():
    return nbformat.read(NOTEBOOK, as_version=4)


@pytest.fixture(scope="module")
def text(nb) -> str:
    out = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                    if o.get("output_type") == "stream" and o.get("name") == "stdout")
    assert "this lab ran in" in out, "lab 06 has no committed outputs: build it with python -m labkit.lab build"
    return out


def test_hinton_et_al_is_cited(nb):
    source = "\n".join(c.source for c in nb.cells)
    assert "Distilling the Knowledge in a Neural Network" in source


def test_no_error_outputs(nb):
    errors = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"cells {errors} raised"


def test_every_paired_ranking_follows_from_its_numbers(text):
    """'A beats B by d ± s' needs d > 2s; 'within the noise (d ± s)' needs |d| <= 2s."""
    beats = re.findall(rf"beats .+? by ({NUMBER}) ± ({NUMBER}) nats/char", text)
    ties = re.findall(rf"within the noise of this evaluation set \(({NUMBER}) ± ({NUMBER}) nats/char", text)
    assert len(beats) + len(ties) >= 1, "lab 06 should rank the learner's student by its paired difference"
    for d, s in beats:
        assert _float(d) > 2 * _float(s), f"'beats by {d} ± {s}' is inside the noise"
    for d, s in ties:
        assert abs(_float(d)) <= 2 * _float(s), f"'within the noise ({d} ± {s})' is outside it"


def test_seed_gap_verdicts_follow_from_mean_and_standard_error(text):
    found = re.findall(rf"paired by seed: ({NUMBER}) ± ({NUMBER}) nats/char \(mean ± standard error over (\d+) "
                       rf"seeds; per seed ([^)]*)\) -> (.+)", text)
    assert len(found) == 2, "lab 06 should give a verdict for all the data and for the small fraction"
    for mean, se, n, per_seed, verdict in found:
        mean, se = _float(mean), _float(se)
        gaps = [_float(g) for g in per_seed.split(",")]
        assert len(gaps) == int(n) >= 2
        assert abs(sum(gaps) / len(gaps) - mean) < 1e-3
        favour = re.search(r"; (\d+) of (\d+) seeds favour the distilled student", verdict)
        assert favour and int(favour[2]) == len(gaps) and int(favour[1]) == sum(g < 0 for g in gaps)
        if mean < -2 * se:
            assert verdict.startswith("the distilled student is better by more than 2 standard errors")
        elif mean > 2 * se:
            assert verdict.startswith("the distilled student is WORSE")
        else:
            assert verdict.startswith("within the noise")


def test_small_data_comparison_follows_from_its_numbers(text):
    m = re.search(rf"gap with .+? of the data minus gap with all of it: ({NUMBER}) ± ({NUMBER}) -> (.+)", text)
    assert m, "lab 06 should compare the gain with little data against the gain with all of it"
    d, se, verdict = _float(m[1]), _float(m[2]), m[3]
    if d < -2 * se:
        assert verdict.startswith("the gain is LARGER")
    elif d > 2 * se:
        assert verdict.startswith("the gain is SMALLER")
    else:
        assert verdict.startswith("the two gains are within the noise")


def test_t_squared_undoes_the_gradient_shrinkage(text):
    m = re.search(rf"from T=({NUMBER}) to T=({NUMBER}): the plain KL's gradient falls ({NUMBER})× \(T² grew "
                  rf"({NUMBER})×\); with the T² factor it changes by ×({NUMBER})", text)
    assert m, "lab 06 should print the gradient norms' ratio across temperatures"
    t0, t1, falls, grew, scaled = (_float(g) for g in m.groups())
    assert grew == pytest.approx((t1 / t0) ** 2)
    # the claim of section 3: the plain gradient shrinks like 1/T², and the factor T² puts it back
    assert 0.5 * grew <= falls <= 2 * grew
    assert 0.5 <= scaled <= 2


def test_learners_loss_matches_kl_div(text):
    lines = re.findall(r"T=\S+, α=\S+: your loss and F\.kl_div's agree|T=\S+, α=\S+: they differ", text)
    assert len(lines) == 3 and all("agree" in line for line in lines)


def test_learners_byte_counts_equal_the_measured_arrays(text):
    found = re.findall(rf"your count +({NUMBER}) bytes, measured arrays +({NUMBER}) \((equal|DIFFERENT)\)", text)
    assert len(found) == 5
    for mine, measured, word in found:
        assert (_float(mine) == _float(measured)) == (word == "equal")
        assert word == "equal"
    assert "every file's measured size equals its formula" in text


def test_bytes_per_position_follow_the_formula(text):
    m = re.search(r"full fp32 / full fp16 / top-8 fp16\s+(\d+) bytes / (\d+) bytes / (\d+) bytes", text)
    assert m, "lab 06's summary should give the cache's bytes per position"
    fp32, fp16, top8 = (int(g) for g in m.groups())
    vocab = fp32 // 4
    assert fp32 == 4 * vocab and fp16 == 2 * vocab
    assert top8 == 8 * (2 + 1)                      # fp16 value + uint8 token id (vocab <= 256)
    assert vocab <= 256


def test_single_seed_verdicts_respect_the_noise(text):
    m = re.search(rf"noise for one seed's paired gap: 2 × ({NUMBER}) .+? = ({NUMBER}) nats/char", text)
    assert m, "lab 06 should print the noise it ranks single-seed students by"
    noise = _float(m[2])
    assert noise == pytest.approx(2 * _float(m[1]), abs=2e-4)
    sizes = re.findall(rf"gap ({NUMBER}) -> (distilled better|labels only better|within the noise)", text)
    assert len(sizes) == 5, "three GPT sizes, an LSTM and a conv student"
    for gap, verdict in sizes:
        gap = _float(gap)
        expected = ("distilled better" if gap < -noise else "labels only better" if gap > noise
                    else "within the noise")
        assert verdict == expected, f"gap {gap} with noise {noise}: printed {verdict!r}"
    topk = re.findall(rf"top-\d+ minus full = ({NUMBER}) nats/char -> (\S+ \S+)", text)
    assert len(topk) == 2
    for cost, verdict in topk:
        cost = _float(cost)
        expected = ("costs quality" if cost > noise else "gains beyond" if cost < -noise else "within the")
        assert verdict == expected


def test_grid_verdict_follows_from_its_spread(text):
    m = re.search(rf"the grid's settings span ({NUMBER}) nats/char, (more than|within) the noise of one seed's gap "
                  rf"\(({NUMBER})\)", text)
    assert m, "lab 06 should say whether the T × α grid's differences exceed the noise"
    spread, word, noise = _float(m[1]), m[2], _float(m[3])
    assert (word == "more than") == (spread > noise)
