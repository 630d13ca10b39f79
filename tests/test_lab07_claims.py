"""Lab 07's committed outputs tell the truth about the run that printed them (issue 12).

Every sentence of the lab that compares two numbers, or states a verdict, is printed from them; these tests read the
committed outputs and check that each verdict follows from the numbers printed beside it, and that the byte counts
agree with each other and with the formulas. Nothing here compares a machine-specific number with this machine's
cache: only the relations the lab's text asserts.
"""
import math
import re

import pytest
from lab_outputs import NUMBER, lab_notebook, printed_text
from lab_outputs import to_float as _float

PAPER_TITLE = ("Deep Compression: Compressing Deep Neural Networks with Pruning, Trained Quantization and Huffman "
               "Coding")


@pytest.fixture(scope="module")
def nb():
    return lab_notebook("LAB07", "07_compression_and_storage.ipynb")


@pytest.fixture(scope="module")
def text(nb) -> str:
    return printed_text(nb, "lab 07")


def code_of(nb) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


def test_entropy_line_converts_the_loss_to_bits(text):
    m = re.search(rf"order-0 entropy ({NUMBER}) bits/char = ({NUMBER})% of a byte; the baby GPT's loss ({NUMBER}) ± "
                  rf"({NUMBER}) nats/char = ({NUMBER}) bits/char, ({NUMBER})× fewer bits than the order-0 bound", text)
    assert m, "lab 07 should set the corpus's entropy beside the model's loss in bits"
    h, share, loss, _, bits, ratio = (_float(g) for g in m.groups())
    assert 0 < h < 8 and math.isclose(share, 100 * h / 8, abs_tol=0.06)
    assert math.isclose(bits, loss / math.log(2), abs_tol=0.002)
    assert math.isclose(ratio, h / bits, abs_tol=0.006)


def test_small_huffman_example_is_within_a_bit_of_its_entropy(text):
    m = re.search(rf"(\d+) characters, (\d+) distinct, coded with (your|labkit's reference) lengths: (\d+) bits = "
                  rf"({NUMBER}) bits/char; entropy ({NUMBER}); fixed width ⌈log₂ (\d+)⌉ = (\d+); decoded back (\w+)", text)
    assert m, "lab 07 should code a short line with the learner's lengths"
    n, distinct, who, n_bits, per_char, h, k, fixed, back = m.groups()
    assert who == "your", "the committed run's solution passes, so the lab uses the learner's lengths"
    assert int(k) == int(distinct) and int(fixed) == math.ceil(math.log2(int(distinct)))
    assert math.isclose(_float(per_char), int(n_bits) / int(n), abs_tol=0.0006)
    assert back == "exactly"
    bound = re.search(rf"H ≤ L < H \+ 1: ({NUMBER}) ≤ ({NUMBER}) < ({NUMBER}) -> (\w+)", text)
    assert bound
    lo, mid, hi, verdict = _float(bound[1]), _float(bound[2]), _float(bound[3]), bound[4]
    assert (verdict == "holds") == (lo <= mid < hi) and verdict == "holds"


def test_weight_codes_huffman_bytes_against_the_entropy_bound(text):
    fixed = re.search(rf"fixed 4-bit packing: +({NUMBER}) bytes", text)
    huff = re.search(rf"Huffman \(bits \+ length table\): ({NUMBER}) bytes \(({NUMBER}) bits/weight; the table (\d+) bytes\)",
                     text)
    bound = re.search(rf"entropy bound: +({NUMBER}) bytes \(({NUMBER}) bits/weight\)", text)
    n = re.search(rf"({NUMBER}) 4-bit weight codes, Huffman-coded with (your|labkit's reference) code lengths", text)
    verdict = re.search(rf"Huffman takes ({NUMBER})× the entropy bound and ({NUMBER})× the fixed-width bytes; decoded "
                        r"back (\w+)", text)
    assert fixed and huff and bound and n and verdict
    n_w = int(_float(n[1]))
    assert n[2] == "your"
    assert int(_float(fixed[1])) == math.ceil(4 * n_w / 8)
    h_bytes, b_bytes = _float(huff[1]), _float(bound[1])
    assert math.isclose(_float(verdict[1]), h_bytes / b_bytes, abs_tol=0.00006)
    assert math.isclose(_float(verdict[2]), h_bytes / _float(fixed[1]), abs_tol=0.0006)
    # Huffman never beats the entropy, and stays within a bit of it (plus the table)
    assert b_bytes <= h_bytes <= b_bytes + n_w / 8 + int(huff[3]) + 1
    assert verdict[3] == "exactly"


def test_coder_comparison_names_the_best_and_its_savings(text):
    found = re.findall(rf"(corpus text|fp32 weights): order-0 entropy ({NUMBER}) bits/byte \(a byte-by-byte code's "
                       rf"limit: ({NUMBER})×\); Huffman ({NUMBER})×, LZ77 ({NUMBER})×, LZ77 \+ Huffman ({NUMBER})×, "
                       rf"zlib -9 ({NUMBER})×; best: (.+?) ({NUMBER})×", text)
    assert len(found) == 2, "lab 07 should compare the coders on text and on fp32 weights"
    zlib = {}
    for what, h, limit, huffman, lz77, lzh, z, best, best_ratio in found:
        assert math.isclose(_float(limit), 8 / _float(h), abs_tol=0.002)
        named = {"huffman": huffman, "lz77": lz77, "lz77 + huffman": lzh, "zlib -9": z}
        assert all(_float(best_ratio) >= _float(v) for v in named.values()), f"{what}: 'best' is not the largest"
        zlib[what] = _float(z)
    m = re.search(rf"zlib -9 on fp32 weights saves ({NUMBER})% of the bytes, on text ({NUMBER})%", text)
    assert m
    assert math.isclose(_float(m[1]), 100 * (1 - 1 / zlib["fp32 weights"]), abs_tol=0.15)
    assert math.isclose(_float(m[2]), 100 * (1 - 1 / zlib["corpus text"]), abs_tol=0.15)
    assert "WRONGLY" not in text


def test_file_is_the_last_row_and_decodes_to_identical_logits(text):
    m = re.search(rf"file: ({NUMBER}) bytes on disk; the table's last row: ({NUMBER}) bytes -> (\w+)", text)
    assert m and m[1] == m[2] and m[3] == "equal"
    assert "identical to the compressed model's (torch.equal)" in text


def test_loaded_model_is_dense_fp32_in_memory(text):
    """The answer key says the decoded model takes the fp32 model's bytes in RAM: the run must print that."""
    from labkit.model import GPTConfig
    from labkit import memory

    m = re.search(rf"in memory the loaded model holds ({NUMBER}) bytes of parameters \(torch.float32, dense\), "
                  rf"({NUMBER})× the zoo model's", text)
    assert m and _float(m[2]) == 1.0
    baby = memory.gpt_param_count(GPTConfig(vocab_size=84, block_size=64, n_layer=4, n_head=4, n_embd=128,
                                            tie_weights=False, activation="relu2"))
    assert int(_float(m[1])) == 4 * baby


def test_answer_key_matches_the_coders_numbers(nb, text):
    """The key says zlib saves only a few percent of fp32 weights against roughly half of text."""
    m = re.search(rf"zlib -9 on fp32 weights saves ({NUMBER})% of the bytes, on text ({NUMBER})%", text)
    assert m and _float(m[1]) < 15 and 40 < _float(m[2]) < 70
    key = next(c.source for c in nb.cells if "Model answer" in c.source)
    assert "saves only a few percent of fp32 weight bytes" in key and "roughly half of text" in key
    assert "dense fp32 matrices" in key


def test_key_claim_verdict_follows_from_its_numbers(text):
    m = re.search(rf"key claim — the file is ({NUMBER})× smaller than the fp32 file \(({NUMBER}) -> ({NUMBER}) bytes\) "
                  rf"at a perplexity rise of ({NUMBER})% \(±2 s\.e\.: ({NUMBER})% to ({NUMBER})%\) -> (.+)", text)
    assert m, "lab 07 prints no verdict on its key claim (>= 12x at <= 5% perplexity rise)"
    ratio, fp32, file = _float(m[1]), _float(m[2]), _float(m[3])
    rise, low, high, verdict = _float(m[4]), _float(m[5]), _float(m[6]), m[7]
    assert math.isclose(ratio, fp32 / file, abs_tol=0.006)
    assert low <= rise <= high
    if ratio >= 12 and high <= 5:
        assert verdict.startswith("HOLDS")
    elif ratio >= 12 and rise <= 5:
        assert verdict.startswith("holds at the measured value")
    else:
        assert verdict.startswith("does NOT hold")
    file_line = re.search(rf"file: ({NUMBER}) bytes on disk", text)
    assert _float(file_line[1]) == file


def test_paper_is_cited_and_its_ratios_come_from_the_module(nb, text):
    from labkit.deep_compression import PAPER_RATIOS

    source = " ".join("\n".join(c.source for c in nb.cells).split())      # the title may wrap across lines
    assert PAPER_TITLE in source and PAPER_TITLE in PAPER_RATIOS["source"]
    assert "dc.PAPER_RATIOS" in code_of(nb)
    m = re.search(rf"Huffman coding's own factor: ({NUMBER})× here \(relative index -> file\), ({NUMBER})× in the paper",
                  text)
    assert m and math.isclose(_float(m[2]), PAPER_RATIOS["Huffman"] / PAPER_RATIOS["relative index"],
                              abs_tol=0.0006)


def test_learner_counts_equal_the_real_arrays(text):
    m = re.search(rf"layer_storage_bytes sums to ({NUMBER}) bytes; their packed arrays take ({NUMBER}) -> (\w+)", text)
    assert m and m[1] == m[2] and m[3] == "equal"
    whole = re.search(rf"= ({NUMBER}) bytes; the table's relative-index row: ({NUMBER}) -> (\w+)", text)
    assert whole and whole[1] == whole[2] and whole[3] == "equal"
    replay = re.findall(rf"(your|labkit's reference) replay_buffer_bytes ({NUMBER}) bytes; a real ReplayBuffer's "
                        rf"\.nbytes ({NUMBER}); the experiment's buffer ({NUMBER}) -> (\w+)", text)
    assert len(replay) == 2
    for who, a, b, c, verdict in replay:
        assert who == "your" and a == b == c and verdict == "equal"


def test_rss_verdicts_follow_from_the_printed_peaks(text):
    found = re.findall(rf"(in_ram|memmap|stream) *: peak RSS ([\d .>-]+) MiB for ([\d .>-]+) MiB files: ({NUMBER}) "
                       r"MiB of RSS per MiB of file -> (.+)", text)
    assert len(found) == 3, "lab 07 should measure in-RAM, memmap and streaming training"
    for source, peaks, sizes, growth, verdict in found:
        peaks = [_float(v) for v in peaks.split(" -> ")]
        sizes = [_float(v) for v in sizes.split(" -> ")]
        slope = (peaks[-1] - peaks[0]) / (sizes[-1] - sizes[0])
        assert math.isclose(_float(growth), slope, abs_tol=0.02)     # the peaks are printed rounded to 1 MiB
        g = _float(growth)
        expected = ("grows with the file" if g > 0.5 else "stays flat (less than 0.1 MiB per MiB)" if g < 0.1
                    else "grows, but by less than half the file")
        assert verdict == expected


def test_seed_verdicts_follow_from_students_t(text):
    from scipy import stats

    found = re.findall(rf": ({NUMBER}) ± ({NUMBER}) nats/char \(paired over (\d+) seeds\) -> (.+?)(?:;|$)", text,
                       re.MULTILINE)
    assert len(found) >= 5, "lab 07 should compare forgetting, replay and shuffled training over seeds"
    for d, se, n, verdict in found:
        d, se, n = _float(d), _float(se), int(n)
        t_se = stats.t.ppf(0.975, n - 1) * se
        if abs(d) > t_se + 1e-4:
            assert re.match(r".+ is (lower|higher) \(\|d\| > t·SE", verdict), verdict
            assert ("is lower" in verdict) == (d < 0)
        elif abs(d) > 2 * se + 1e-4 and abs(d) < t_se - 1e-4:
            assert verdict.startswith("suggestive, not established")
        elif abs(d) < 2 * se - 1e-4:
            assert verdict == "within the seeds' noise"


def test_no_exercise_answer_spelled_in_a_fallback(nb):
    for cell in nb.cells:
        if cell.cell_type == "code" and "use_or_fallback" in cell.source:
            assert "heappop" not in cell.source and "+ 7) // 8" not in cell.source
            assert "(seq_len + 1)" not in cell.source and "(SEQ_LEN + 1)" not in cell.source


def test_who_is_named_from_use_or_fallback(nb, text):
    code = code_of(nb)
    for needle in ('lengths_who = "your" if lengths_fn is not compress.huffman_code_lengths',
                   'storage_who = "your" if storage_fn is not dc.layer_storage_bytes',
                   'replay_who = "your" if replay_fn is not stream.replay_buffer_bytes'):
        assert needle in code, needle
    assert "the cells below use the reference implementation" not in text


def test_summary_repeats_the_key_claim_verdict(nb, text):
    verdict = re.search(r"key claim — .+ -> (.+)", text)[1]
    summary = next(o for c in nb.cells if c.cell_type == "code" and "summary_rows" in c.source for o in c.outputs)
    assert verdict in str(summary.get("data", {}).get("text/plain", "")) + str(summary.get("data", {}).get("text/html", ""))


def test_lab_ran_within_its_budgets(text):
    m = re.search(rf"this lab ran in ({NUMBER}) s \(budget (\d+) s\) with peak RSS ({NUMBER}) MiB \(budget (\d+) MiB\)",
                  text)
    assert m
    assert _float(m[1]) <= int(m[2]) and _float(m[3]) <= int(m[4])


def test_ratios_beside_the_paper_match_the_stage_table_and_the_key(nb, text):
    from labkit.deep_compression import PAPER_RATIOS

    m = re.search(rf"ratios, this run vs AlexNet: .+? ({NUMBER})× vs ({NUMBER})×; .+? ({NUMBER})× vs ({NUMBER})×; .+? "
                  rf"({NUMBER})× vs ({NUMBER})×", text)
    assert m, "lab 07 should print each stage's ratio beside the paper's"
    ours, theirs = [_float(m[i]) for i in (1, 3, 5)], [_float(m[i]) for i in (2, 4, 6)]
    assert theirs == [PAPER_RATIOS[k] for k in ("pruned", "relative index", "Huffman")]
    assert ours == sorted(ours), "each stage keeps the bytes of the one before it or fewer"
    claim = re.search(rf"key claim — the file is ({NUMBER})× smaller", text)
    assert math.isclose(ours[-1], _float(claim[1]), abs_tol=0.006)
    # the answer key: pruning's ratio far below the paper's, Huffman's own factor modest
    assert ours[0] < PAPER_RATIOS["pruned"] / 2
    factor = re.search(rf"Huffman coding's own factor: ({NUMBER})× here", text)
    assert 1 < _float(factor[1]) < 1.5
    key = next(c.source for c in nb.cells if "Model answer" in c.source)
    assert "far below the paper's" in key and "is modest" in key


def test_fp32_weights_barely_compress_as_the_text_says(text):
    found = dict(re.findall(rf"(corpus text|fp32 weights): order-0 entropy .+?; best: .+? ({NUMBER})×", text))
    assert _float(found["fp32 weights"]) < 1.2 < _float(found["corpus text"])


def test_exercises_are_graded_in_the_tamper_proof_form(nb):
    graded = {c.metadata["nbgrader"]["grade_id"]: c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")}
    points = {gid: c.metadata["nbgrader"]["points"] for gid, c in graded.items()}
    assert points == {"ex07-1-huffman-code-lengths-test": 2, "ex07-2-layer-storage-bytes-test": 2,
                      "ex07-3-replay-buffer-bytes-test": 1, "ex07-w1-disk-or-memory": 2}
    for name in ("huffman_code_lengths", "layer_storage_bytes", "replay_buffer_bytes"):
        cell = next(c for gid, c in graded.items() if name.replace("_", "-") in gid)
        assert cell.metadata["nbgrader"]["locked"] and f'grade("{name}", {name})' in cell.source
        assert 'sys.modules.pop("labkit.autograde", None)' in cell.source
    written = graded["ex07-w1-disk-or-memory"]
    assert written.cell_type == "markdown" and "Marking guide" in written.source


def test_largest_stage_factor_is_named_from_the_factors(text):
    m = re.search(r"each stage's own factor \(bytes of the row above / its bytes\): (.+); the largest: (.+)", text)
    assert m
    factors = {stage: _float(f) for stage, f in re.findall(rf"([\w +()-]+?) ({NUMBER})×(?:, |$)", m[1])}
    assert len(factors) >= 5 and max(factors, key=factors.get).strip() == m[2].strip()
    assert factors["pruned + fine-tuned"] == 1.0          # fine-tuning changes values, not storage


def test_the_papers_pruning_figure_is_set_beside_a_count_of_weights(text):
    """The paper's 9× counts weights ("9× fewer connections"): the run sets it beside its own weight ratio, which
    is 1 / (1 − the printed share of all parameters pruned), and says what its bytes ratio is instead."""
    from labkit.deep_compression import PAPER_COUNTS, PAPER_RATIOS

    assert PAPER_COUNTS["pruned"] == "weights"
    m = re.search(rf"= ({NUMBER})% of all ({NUMBER}) parameters \(embeddings, positions and output head stay dense\): "
                  rf"({NUMBER})× fewer weights vs the paper's ({NUMBER})× fewer on AlexNet; in bytes \(CSR, with its "
                  rf"column indices\) ({NUMBER})×", text)
    assert m, "lab 07 should set the paper's 9x beside this run's weight ratio"
    assert math.isclose(_float(m[3]), 1 / (1 - _float(m[1]) / 100), rel_tol=0.003)
    assert _float(m[4]) == PAPER_RATIOS["pruned"] and _float(m[5]) < _float(m[3])
    ratios = re.search(rf"ratios, this run vs AlexNet: .+? ({NUMBER})× vs", text)
    assert math.isclose(_float(ratios[1]), _float(m[3]), abs_tol=0.006)


def test_the_factors_on_the_block_matrices_alone_name_their_largest(text):
    m = re.search(rf"the rest of the model: ({NUMBER}) bytes in fp32, ({NUMBER}) from weight sharing on .+?: "
                  rf"({NUMBER})% of the weight-sharing row's drop", text)
    assert m and _float(m[2]) < _float(m[1]) and 0 < _float(m[3]) < 100
    m = re.search(r"on the block matrices alone \(their bytes: the row's bytes minus the rest's\): (.+); the largest: "
                  r"(.+)", text)
    assert m
    factors = {stage.strip(): _float(f) for stage, f in re.findall(rf"([\w +()-]+?) ({NUMBER})×(?:, |$)", m[1])}
    assert set(factors) == {"weight sharing (k-means)", "relative index"}
    assert max(factors, key=factors.get) == m[2].strip()


def test_the_panel_and_the_notebook_use_one_rule_for_the_target(text):
    m = re.search(r"the panel's verdict at its first setting: (meets|misses) the target; the same rule on the table "
                  r"above: (meets|misses)", text)
    assert m and m[1] == m[2]
    panel = re.search(rf"It (meets|misses) the lab's target \(≥ 12× with the perplexity rise ≤ 5% even at \+2·SE: here "
                      rf"({NUMBER})%\)", text)
    assert panel and panel[1] == m[1] and (panel[1] == "meets") == (_float(panel[2]) <= 5)


def test_the_sweep_starts_from_section_4s_model_and_says_what_centroid_training_did(text):
    m = re.search(rf"the same pruned and fine-tuned model: the sweep's file \(k-means values\) ({NUMBER})× at "
                  rf"({NUMBER})%, section 4's \(centroids trained \d+ steps\) ({NUMBER})× at ({NUMBER})%: training the "
                  rf"shared values moved the rise by ({NUMBER}) percentage points", text)
    assert m
    claim = re.search(rf"key claim — the file is ({NUMBER})× smaller .+? at a perplexity rise of ({NUMBER})%", text)
    assert math.isclose(_float(m[3]), _float(claim[1]), abs_tol=0.006) and _float(m[4]) == _float(claim[2])
    assert math.isclose(_float(m[5]), _float(m[4]) - _float(m[2]), abs_tol=0.011)
