"""Lab 05's committed outputs tell the truth about the run that printed them (issue 10).

Every sentence of the lab that compares two numbers is printed from them; these tests read the committed outputs
and check that each verdict follows from the numbers printed beside it, that the byte counts match the formulas,
and that the literature it cites is named by title next to the figures it quotes.
"""
import math
import re

import pytest
from lab_outputs import NUMBER, assert_rankings_follow, lab_notebook, printed_text
from lab_outputs import to_float as _float


@pytest.fixture(scope="module")
def nb():
    return lab_notebook("LAB05", "05_quantization.ipynb")


@pytest.fixture(scope="module")
def text(nb) -> str:
    return printed_text(nb, "lab 05")


def test_every_ranking_follows_from_its_paired_difference(text):
    """'A beats B by d ± s' needs d > 2s; 'within the noise (d ± s)' needs |d| <= 2s."""
    assert_rankings_follow(text, 15, "lab 05", paired_marker=True)


def test_claim_verdicts_follow_from_their_numbers(text):
    """int8 per channel within 0.5% of float32, int4-g32 within 5%: each verdict from its ±2 s.e. interval."""
    found = re.findall(rf"claim — (\S+) within ({NUMBER})%: perplexity ×({NUMBER}) of float32 \(±2 s\.e\.: "
                       rf"×({NUMBER}) to ×({NUMBER})\) -> (.+)", text)
    assert {f[0] for f in found} == {"int8-channel-sym", "int8-channel", "int4-g32"}
    for scheme, pct, ratio, low, high, verdict in found:
        limit, ratio, low, high = 1 + _float(pct) / 100, _float(ratio), _float(low), _float(high)
        assert low <= ratio <= high
        if high <= limit:
            assert verdict.startswith("WITHIN"), scheme
        elif ratio <= limit:
            assert verdict.startswith("within") and "noise" in verdict, scheme
        else:
            assert verdict.startswith("NOT within"), scheme


def test_gptq_verdict_follows_from_its_paired_difference(text):
    m = re.search(rf"claim — GPTQ no worse than RTN at int4-g32: GPTQ − RTN = ({NUMBER}) ± ({NUMBER}) nats/char "
                  rf"\(paired\) -> (.+)", text)
    assert m, "lab 05 prints no verdict on GPTQ against RTN"
    d, s, verdict = _float(m[1]), _float(m[2]), m[3]
    assert verdict.startswith("GPTQ is NO WORSE than RTN") == (d <= 2 * s)
    assert ("better beyond the noise" in verdict) == (d < -2 * s)
    layers = re.findall(r"(\S+): GPTQ's output error / RTN's per layer: median", text)
    assert layers == ["int4-channel", "int4-g32", "int3-g32"], "lab 05 should say which layers GPTQ improves"


def test_literature_is_cited_by_title_next_to_its_figures(nb, text):
    source = "\n".join(c.source for c in nb.cells)
    for title in ("GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers",
                  "QLoRA: Efficient Finetuning of Quantized LLMs",
                  "LLM.int8(): 8-bit Matrix Multiplication for Transformers at Scale"):
        assert title in source, title
    assert all(f in source for f in ('"fp16": 5.68', '"4-bit RTN": 6.29', '"4-bit GPTQ": 6.09', "QLORA_BITS = 4.127",
                                     "6.7B"))
    double = 4 + 8 / 64 + 32 / (64 * 256)            # QLoRA's double quantization, from its definition
    assert f"NF4 + double quantization (8-bit constants, one fp32 per 256): {double:.4f} bits per parameter; " \
           "QLoRA reports 4.127 -> the same" in text
    m = re.search(rf"RTN's 4-bit cost, perplexity ratio to float: LLaMA-7B ({NUMBER})", text)
    assert m and math.isclose(_float(m[1]), 6.29 / 5.68, abs_tol=0.0005)


def test_byte_counts_printed_match_the_formulas(text):
    m = re.search(rf"\((\d+) × (\d+)\), 4-bit codes, one fp16 scale per 32 weights: your count ({NUMBER}) bytes; "
                  rf"labkit stores ({NUMBER}) bytes", text)
    assert m, "lab 05 prints no group-quantized byte count"
    rows, cols = int(m[1]), int(m[2])
    expected = math.ceil(rows * cols * 4 / 8) + rows * cols // 32 * 2
    assert _float(m[3]) == _float(m[4]) == expected
    assert re.search(r"group 32\s+8\.500\s+4\.500\s+3\.500\s+2\.500", text)
    assert "4.625 bits per weight = 4 + 16/32 + 4/32" in text


def test_saved_file_is_the_computed_bytes_plus_a_small_overhead(text):
    m = re.search(rf"int4-g32 file: ({NUMBER}) bytes = computed ({NUMBER}) bytes \(quantize_model's total ({NUMBER})\) "
                  rf"\+ container overhead ({NUMBER}) bytes for (\d+) tensors", text)
    assert m, "lab 05 prints no saved-file account"
    file_bytes, computed, total, overhead, n = (_float(g) for g in m.groups())
    assert file_bytes == computed + overhead and computed == total
    assert 0 < overhead / n < 1000, "the container's overhead should be a small fixed cost per tensor"
    assert "logits identical to the quantized model's" in text


def test_library_references_agree_with_the_hand_computations(text):
    assert "torch.fake_quantize_per_channel_affine's are identical" in text
    assert re.search(rf"largest rounding error {NUMBER} <= half a step {NUMBER}: True", text)
    for hand, searched in re.findall(rf"best r by hand ({NUMBER}) .*?picks r = ({NUMBER})", text):
        assert math.isclose(_float(hand), _float(searched), abs_tol=5e-4)
    m = re.search(rf"your scales vs labkit's quantize\(.*?\): max \|difference\| ({NUMBER})", text)
    assert m and _float(m[1]) == 0.0


def test_qat_is_read_against_a_float_control_trained_as_long(text):
    assert re.search(r"what QAT recovers beyond the extra steps: (QAT|the control).+(beats|within the noise)", text)
    assert "the extra steps alone, float: " in text and "the extra steps alone, at 2 bits: " in text
    assert re.search(r"QAT closed -?\d+% in \d+ steps; the control", text)
    m = re.search(r"QAT with (\d+) steps closed -?\d+%; (.+?) -> (more steps closed more|doubling the steps did not)",
                  text)
    assert m, "lab 05 should set its QAT run against one with half the steps"
    more = re.match(rf"(\d+) steps beats (\d+) steps by ({NUMBER}) ± ({NUMBER})", m[2])
    assert (m[3] == "more steps closed more") == bool(more and int(more[1]) == 2 * int(m[1]))


def test_qat_control_clause_follows_from_its_paired_difference(text):
    """The control's share of the gap is worded from its paired difference with the zoo model, both quantized."""
    m = re.search(rf"QAT closed -?\d+% in \d+ steps; (.+?) \(?(?:[-+]?\d+% of the gap; )?control quantized − zoo model "
                  rf"quantized: ({NUMBER}) ± ({NUMBER}) nats/char, paired\)", text)
    assert m, "lab 05 should word the control's share of the gap from its paired difference"
    clause, d, s = m[1], _float(m[2]), _float(m[3])
    if abs(d) <= 2 * s:
        assert clause.startswith("the control's change is within the noise"), clause
    elif d < 0:
        assert clause.startswith("the control closed") and "beyond the noise" in clause, clause
    else:
        assert clause.startswith("the control ended further from float32, beyond the noise"), clause
    at_2_bits = re.search(r"the extra steps alone, at 2 bits: (.+)", text)[1]
    assert ("within the noise" in at_2_bits) == (abs(d) <= 2 * s), "the two lines on the control disagree"


def test_model_shape_and_widths_are_printed_from_the_model(nb, text):
    """No typed-in shape: the config line and the widths beside LLaMA-7B's match the zoo model's real layers."""
    from labkit import quantize, zoo
    model, _ = zoo.load("baby-gpt")
    cfg = model.config
    assert (f"baby GPT: {cfg.n_layer} layers, {cfg.n_head} heads, width {cfg.n_embd}, {cfg.activation} MLP of width "
            f"{cfg.mlp_hidden}") in text
    sizes = {size for layer in quantize.quantizable_layers(model).values() for size in layer.weight.shape}
    m = re.search(rf"widths of the quantized matrices \(their input and output sizes\): baby GPT ({NUMBER}) to "
                  rf"({NUMBER}), LLaMA-7B 4,096 to 11,008", text)
    assert m and (_float(m[1]), _float(m[2])) == (min(sizes), max(sizes))
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for typed in (f"{min(sizes)} to {max(sizes)} wide", f"width {cfg.n_embd}", f"width {cfg.mlp_hidden}"):
        assert typed not in markdown, f"typed-in model shape in the lab's text: {typed!r}"
    assert "LLaMA: Open and Efficient Foundation Language Models" in "\n".join(c.source for c in nb.cells)


def test_timing_verdict_follows_from_its_quartiles(text):
    m = re.search(rf"torch\.ao int8 / float32 = ({NUMBER}) \(medians ({NUMBER}) \[({NUMBER})–({NUMBER})\] vs "
                  rf"({NUMBER}) \[({NUMBER})–({NUMBER})\] ms\) -> (faster|slower|no difference)", text)
    assert m, "lab 05 prints no timing of torch.ao's int8 model"
    ratio, b_med, b_q1, b_q3, a_med, a_q1, a_q3 = (_float(g) for g in m.groups()[:7])
    assert b_q1 <= b_med <= b_q3 and a_q1 <= a_med <= a_q3
    assert math.isclose(ratio, b_med / a_med, rel_tol=0.01)
    expected = "faster" if b_q3 < a_q1 else "slower" if b_q1 > a_q3 else "no difference"
    assert m[8] == expected


def test_your_quantizer_is_measured_on_the_model(text):
    found = re.findall(rf"your absmax, (\d) bits, one scale per row, all 16 matrices: perplexity ({NUMBER}) vs float32 "
                       rf"({NUMBER}) \(({NUMBER})%\)", text)
    assert [f[0] for f in found] == ["8", "4"]
    for _, mine, base, pct in found:
        assert math.isclose(_float(mine) / _float(base) - 1, _float(pct) / 100, abs_tol=6e-5)


def test_no_exercise_answer_spelled_in_a_fallback(nb):
    for cell in nb.cells:
        if cell.cell_type == "code" and "use_or_fallback" in cell.source:
            assert "torch.round" not in cell.source and "2 ** (bits - 1)" not in cell.source
            assert "// 8" not in cell.source and "reshape(n_rows" not in cell.source


def test_lab_ran_within_its_budgets(text):
    m = re.search(rf"this lab ran in ({NUMBER}) s \(budget (\d+) s\) with peak RSS ({NUMBER}) MiB \(budget (\d+) MiB\)",
                  text)
    assert m
    assert _float(m[1]) <= int(m[2]) and _float(m[3]) <= int(m[4])
