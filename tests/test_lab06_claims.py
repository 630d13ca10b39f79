"""Lab 06's committed outputs tell the truth about the run that printed them (issue 11).

Every sentence of the lab that compares two numbers is printed from them; these tests read the committed outputs
and check that each verdict follows from the numbers printed beside it, and that the byte counts match the formulas.
"""
import math
import re

import pytest
from lab_outputs import NUMBER, assert_rankings_follow, lab_notebook, printed_text
from lab_outputs import to_float as _float

WHO = r"(?:your|labkit's reference)"


def _t_quantile(dof: float, p: float = 0.975) -> float:
    """Student's t quantile by Simpson integration of its density and bisection (independent of the notebook's)."""
    log_c = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)

    def cdf(x: float) -> float:
        n = 4000
        h = x / n
        f = [math.exp(log_c - (dof + 1) / 2 * math.log1p((i * h) ** 2 / dof)) for i in range(n + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    lo, hi = 0.0, 200.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def test_t_quantile_reference():
    # closed form for 2 degrees of freedom: t = (2p − 1) · sqrt(2 / (4p(1 − p)))
    assert _t_quantile(2) == pytest.approx(0.95 * math.sqrt(2 / (4 * 0.975 * 0.025)), abs=1e-3)
    assert _t_quantile(5) == pytest.approx(2.5706, abs=1e-3)


@pytest.fixture(scope="module")
def nb():
    return lab_notebook("LAB06", "06_knowledge_distillation.ipynb")


@pytest.fixture(scope="module")
def source(nb) -> str:
    return "\n".join(c.source for c in nb.cells)


@pytest.fixture(scope="module")
def text(nb) -> str:
    return printed_text(nb, "lab 06")


def test_hinton_et_al_is_cited(nb):
    source = "\n".join(c.source for c in nb.cells)
    assert "Distilling the Knowledge in a Neural Network" in source


def test_no_error_outputs(nb):
    errors = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"cells {errors} raised"


def test_every_paired_ranking_follows_from_its_numbers(text):
    """'A beats B by d ± s' needs d > 2s; 'within the noise (d ± s)' needs |d| <= 2s."""
    assert_rankings_follow(text, 1, "lab 06")


def _seed_verdicts(text):
    return re.findall(rf"paired by seed: ({NUMBER}) ± ({NUMBER}) nats/char \(mean ± standard error over (\d+) "
                      rf"seeds; per seed ([^;]*); t = ({NUMBER}) for (\d+) d\.o\.f\.\) -> (.+)", text)


def test_seed_gap_verdicts_follow_from_mean_and_standard_error(text):
    """Better/WORSE needs |mean| > t·SE with t for n − 1 d.o.f.; between 2 SE and t·SE is 'suggestive'."""
    found = _seed_verdicts(text)
    assert len(found) == 2, "lab 06 should give a verdict for all the data and for the small fraction"
    for mean, se, n, per_seed, t, dof, verdict in found:
        mean, se, t = _float(mean), _float(se), _float(t)
        gaps = [_float(g) for g in per_seed.split(",")]
        assert len(gaps) == int(n) >= 2 and int(dof) == int(n) - 1
        assert t == pytest.approx(_t_quantile(int(dof)), abs=0.01)
        assert abs(sum(gaps) / len(gaps) - mean) < 1e-3
        std = math.sqrt(sum((g - sum(gaps) / len(gaps)) ** 2 for g in gaps) / (len(gaps) - 1))
        assert se == pytest.approx(std / math.sqrt(len(gaps)), abs=2e-4)
        favour = re.search(r"; (\d+) of (\d+) seeds favour the distilled student", verdict)
        assert favour and int(favour[2]) == len(gaps) and int(favour[1]) == sum(g < 0 for g in gaps)
        if mean < -t * se:
            assert verdict.startswith("the distilled student is better by more than t standard errors")
        elif mean > t * se:
            assert verdict.startswith("the distilled student is WORSE")
        elif abs(mean) > 2 * se:
            assert verdict.startswith("suggestive, not established")
        else:
            assert verdict.startswith("within the noise")


def test_small_data_uses_more_seeds(text):
    full, small = _seed_verdicts(text)
    assert int(small[2]) >= 5, "the 1% comparison's gain is noisier: it should use 5–6 seeds"
    assert int(full[2]) >= 3


def test_small_data_comparison_follows_from_its_numbers(text):
    """The difference of the two gaps is judged by Welch's t at 95%, recomputed here from the printed gaps."""
    m = re.search(rf"gap with .+? of the data minus gap with all of it: ({NUMBER}) ± ({NUMBER}) \(({NUMBER}) "
                  rf"standard errors; t = ({NUMBER}) for Welch's ({NUMBER}) d\.o\.f\.\) -> (.+)", text)
    assert m, "lab 06 should compare the gain with little data against the gain with all of it"
    d, se, z, t, dof, verdict = _float(m[1]), _float(m[2]), _float(m[3]), _float(m[4]), _float(m[5]), m[6]
    (full_mean, full_se, full_n, *_), (small_mean, small_se, small_n, *_) = _seed_verdicts(text)
    assert d == pytest.approx(_float(small_mean) - _float(full_mean), abs=2e-4)
    assert se == pytest.approx(math.hypot(_float(small_se), _float(full_se)), abs=2e-4)
    welch = se ** 4 / (_float(small_se) ** 4 / (int(small_n) - 1) + _float(full_se) ** 4 / (int(full_n) - 1))
    assert dof == pytest.approx(welch, rel=0.1)
    assert t == pytest.approx(_t_quantile(dof), abs=0.02)
    assert z == pytest.approx(d / se, abs=0.1)
    if z < -t:
        assert verdict.startswith("the gain is LARGER with little data, beyond the 95% t threshold")
    elif z > t:
        assert verdict.startswith("the gain is SMALLER")
    elif abs(z) > 2:
        assert verdict.startswith("suggestive, not established")
    else:
        assert verdict.startswith("the two gains are within the noise")


def test_summary_t_test_words_match_the_verdicts(text):
    rows = re.findall(rf"paired gap +{NUMBER} ± {NUMBER} over (\d+) seeds \((passes|does not pass) the 95% t test\)",
                      text)
    verdicts = _seed_verdicts(text)
    assert len(rows) == len(verdicts) == 2
    for (n, word), v in zip(rows, verdicts):
        assert int(n) == int(v[2])
        assert (word == "passes") == v[6].startswith("the distilled student is better by more than t")


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
    lines = re.findall(rf"T=\S+, α=\S+: ({WHO}) loss and F\.kl_div's agree|T=\S+, α=\S+: they differ", text)
    assert len(lines) == 3 and all(lines)


def test_whose_loss_is_named_consistently(text):
    """The lab names the loss it used — the learner's only when use_or_fallback returned it."""
    fallback = bool(re.search(r"distillation_loss .*: the cells below use the reference implementation", text))
    whos = set(re.findall(rf"({WHO}) loss and F\.kl_div's agree", text))
    whos |= set(re.findall(rf"^({WHO}) loss \(T=", text, flags=re.MULTILINE))
    whos |= set(re.findall(rf"the student trained with ({WHO}) loss", text))
    whos |= set(re.findall(rf"^({WHO}) loss vs labels only", text, flags=re.MULTILINE))
    assert len(whos) == 1, f"the lab names the loss inconsistently: {whos}"
    assert whos == ({"labkit's reference"} if fallback else {"your"})


def test_learners_byte_counts_equal_the_measured_arrays(text):
    found = re.findall(rf"{WHO} count +({NUMBER}) bytes, measured arrays +({NUMBER}) \((equal|DIFFERENT)\)", text)
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


def test_no_single_run_speed_ratio(text, source):
    """One timed run per student cannot rank speeds under load: the cost is stated from counted work instead."""
    assert "time per step: labels only" not in text
    assert "ms per step: labels only / distilled" not in text
    m = re.search(rf"reading one step from the full fp16 cache took ({NUMBER}) ms \(median\), running the teacher "
                  rf"({NUMBER}) ms: ×({NUMBER})", text)
    assert m
    read, live, ratio = _float(m[1]), _float(m[2]), _float(m[3])
    assert ratio == pytest.approx(live / read, rel=0.3)
    row = re.search(rf"live forward / read from the cache +({NUMBER}) ms / ({NUMBER}) ms", text)
    assert row and (_float(row[1]), _float(row[2])) == (live, read)
    assert "section 4 printed the time per step" not in source


def test_dark_knowledge_context_is_predicted_right(text):
    m = re.search(r"the first whose top-1 prediction at T=1 is the true next character; (\d+) of (\d+) qualify, "
                  r"context #(\d+) is picked", text)
    assert m and 1 <= int(m[1]) <= int(m[2]) and int(m[3]) < int(m[2])
    assert re.search(r"the next character was .+, the teacher's top choice", text)
    r = re.search(rf"ratios to the top ({NUMBER})–({NUMBER})\); at T=4 .+? \(ratios ({NUMBER})–({NUMBER})\)", text)
    assert r
    lo1, hi1, lo4, hi4 = (_float(g) for g in r.groups())
    assert 0 < lo1 <= hi1 <= 1 and 0 < lo4 <= hi4 <= 1
    assert lo4 >= lo1 and hi4 >= hi1, "a higher temperature must raise every ratio to the top character"


def test_other_architectures_sizes_are_printed(text, source):
    found = re.findall(rf"(LSTM|conv) student: ({NUMBER}) parameters = ({NUMBER})× the main student's ({NUMBER})", text)
    assert len(found) == 2
    for _, n, ratio, main in found:
        assert _float(ratio) == pytest.approx(_float(n) / _float(main), abs=0.006)
    assert "about the main student's size" not in source


def test_cache_files_counted_and_summed(text):
    m = re.search(rf"this lab's (\d+) full fp16 caches of the students' runs \((\d+) seeds on all the data, (\d+) on "
                  rf".+? of it\) take ({NUMBER}) MiB", text)
    assert m
    n, full, small, mib = int(m[1]), int(m[2]), int(m[3]), _float(m[4])
    assert n == full + small
    (full_n, small_n) = (int(v[2]) for v in _seed_verdicts(text))
    assert (full, small) == (full_n, small_n)
    one = _float(re.search(rf"cached teacher \(full logits, fp16, ({NUMBER}) bytes\)", text)[1])
    assert mib == pytest.approx(n * one / 2 ** 20, abs=0.06)     # every run has the same steps, so the same file size
    row = re.search(rf"this lab's full fp16 cache files +(\d+), ({NUMBER}) MiB", text)
    assert row and int(row[1]) == n and _float(row[2]) == mib


def test_answer_key_does_not_split_size_from_training(source):
    assert "a tenth of the teacher's steps" not in source
    assert "Much of it is training" not in source
    assert "cannot split" in source


def test_gradient_table_has_no_duplicate_column(source):
    assert "grad_norm × T²" not in source
