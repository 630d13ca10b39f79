"""Lab 01 check: n-gram counts → add-k smoothed probabilities."""

from labkit import grading


def reference(counts, k):
    smoothed = counts.double() + k
    return smoothed / smoothed.sum(dim=-1, keepdim=True)


def test_right_answer_passes(capsys):
    assert grading.check_ngram_probabilities(reference)
    assert "passed" in capsys.readouterr().out


def test_float32_answers_pass():
    assert grading.check_ngram_probabilities(lambda c, k: reference(c, k).float(), quiet=True)


def test_a_numpy_answer_is_refused_with_the_reason():
    # regression: a numpy array passed, then lab 01's cell 26 failed calling .float() on it
    result = grading.check_ngram_probabilities(lambda c, k: reference(c, k).numpy(), quiet=True)
    assert result.status == grading.FAIL and "numpy array" in result.message and "torch.Tensor" in result.message


def test_integer_division_is_recognised():
    result = grading.check_ngram_probabilities(lambda c, k: (c + int(k)) // (c + int(k)).sum(-1, keepdim=True),
                                               quiet=True)
    assert result.status == grading.FAIL and "floating-point" in result.message and "counts.double()" in result.message


def test_normalising_over_the_wrong_dimension_fails_with_an_example(capsys):
    def wrong(counts, k):
        smoothed = counts.double() + k
        return smoothed / smoothed.sum(dim=0, keepdim=True)   # columns, not rows

    result = grading.check_ngram_probabilities(wrong)
    assert not result and result.status == grading.FAIL
    out = capsys.readouterr().out
    assert "❌" in out and "row 0, column 0: expected" in out and "got" in out
    assert "normalise over the LAST dimension" in out


def test_forgetting_k_in_the_denominator_fails():
    def wrong(counts, k):
        return (counts.double() + k) / counts.double().sum(dim=-1, keepdim=True)

    result = grading.check_ngram_probabilities(wrong, quiet=True)
    assert result.status == grading.FAIL and "k=1" in result.message and "denominator" in result.message


def test_a_crash_is_reported_not_raised():
    result = grading.check_ngram_probabilities(lambda c, k: c.sum(dim=5), quiet=True)
    assert result.status == grading.FAIL and "raised" in result.message


def test_calling_labkits_ngram_probabilities_fails():
    from labkit import ngram
    result = grading.check_ngram_probabilities(lambda c, k: ngram.ngram_probabilities(c, k), quiet=True)
    assert result.status == grading.FAIL and "`labkit.ngram.ngram_probabilities`" in result.message


def test_perplexity_and_bits_per_char_may_not_delegate():
    from labkit import losses
    assert not grading.check_perplexity(losses.perplexity, quiet=True)
    assert "labkit.losses.bits_per_char" in grading.check_bits_per_char(
        lambda x: losses.bits_per_char(x), quiet=True).message


def test_right_answer_passes_the_hidden_examples_of_many_seeds(monkeypatch):
    from labkit.grading import core
    for seed in range(25):
        monkeypatch.setattr(core, "HIDDEN_SEED", seed)
        result = grading.check_ngram_probabilities(reference, quiet=True)
        assert result, f"seed {seed}: {result.message}"
