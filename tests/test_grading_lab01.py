"""Lab 01 check: n-gram counts → add-k smoothed probabilities."""
import torch

from labkit import grading


def reference(counts, k):
    smoothed = counts.double() + k
    return smoothed / smoothed.sum(dim=-1, keepdim=True)


def test_right_answer_passes(capsys):
    assert grading.check_ngram_probabilities(reference)
    assert "passed" in capsys.readouterr().out


def test_float32_and_numpy_answers_pass():
    assert grading.check_ngram_probabilities(lambda c, k: reference(c, k).float(), quiet=True)
    assert grading.check_ngram_probabilities(lambda c, k: reference(c, k).numpy(), quiet=True)


def test_normalising_over_the_wrong_dimension_fails_with_an_example(capsys):
    def wrong(counts, k):
        smoothed = counts.double() + k
        return smoothed / smoothed.sum(dim=0, keepdim=True)   # columns, not rows

    result = grading.check_ngram_probabilities(wrong)
    assert not result and result.status == grading.FAIL
    out = capsys.readouterr().out
    assert "❌" in out and "expected" in out and "got" in out


def test_forgetting_k_in_the_denominator_fails():
    def wrong(counts, k):
        return (counts.double() + k) / counts.double().sum(dim=-1, keepdim=True)

    result = grading.check_ngram_probabilities(wrong, quiet=True)
    assert result.status == grading.FAIL and "k=1" in result.message


def test_a_crash_is_reported_not_raised():
    result = grading.check_ngram_probabilities(lambda c, k: c.sum(dim=5), quiet=True)
    assert result.status == grading.FAIL and "raised" in result.message
