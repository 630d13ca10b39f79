"""Lab 06 self-checks: a right answer passes, each typical wrong one fails with its hint, nothing raises.

(That a stub reads 'not yet solved' is tested for every check at once in test_grading.py.)"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from grading_helpers import assert_fails, assert_hidden_examples_defeat_a_table, examples_of, grade_cell

from labkit import distill as D
from labkit import grading
from labkit import losses as L

# ---- the learner's answers, written here by hand ----------------------------------------------


def my_distillation_loss(student_logits, teacher_logits, targets, T, alpha):
    log_q = torch.log_softmax(student_logits / T, dim=-1)
    log_p = torch.log_softmax(teacher_logits.detach() / T, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean()
    return alpha * T ** 2 * kl + (1 - alpha) * F.cross_entropy(student_logits, targets)


def distillation_with_xlogy(s, t, y, T, alpha):
    """The KL as Σ p log p − Σ p log q (xlogy: 0 · log 0 = 0), the label term written out by hand."""
    p = torch.softmax(t.detach() / T, dim=-1)
    kl = (torch.special.xlogy(p, p) - p * torch.log_softmax(s / T, dim=-1)).sum(-1).mean()
    ce = -torch.log_softmax(s, dim=-1).gather(1, y[:, None]).mean()
    return alpha * T * T * kl + (1 - alpha) * ce


def my_teacher_targets_bytes(n_tokens, vocab_size, top_k, value_bytes, index_bytes):
    if top_k is None:
        return n_tokens * vocab_size * value_bytes
    return n_tokens * top_k * (value_bytes + index_bytes)


# ---- distillation_loss --------------------------------------------------------------------------

@pytest.mark.parametrize("right", [my_distillation_loss, distillation_with_xlogy])
def test_distillation_right_answers_pass(right, capsys):
    result = grading.check_distillation_loss(right)
    assert result and result.status == grading.PASS
    assert "passed (11 examples)" in capsys.readouterr().out


def test_distillation_check_agrees_with_labkit_and_torch_kl_div_in_value_and_gradient():
    # the check's expected values are labkit.losses.distillation_loss, and a direct F.kl_div computation
    seen = examples_of(grading.check_distillation_loss, my_distillation_loss)
    assert {T for *_, T, a in seen} >= {1.0, 2.0, 4.0, 8.0} and {a for *_, a in seen} >= {0.0, 0.5, 1.0}
    for s, t, y, T, alpha in seen:
        direct = alpha * T ** 2 * F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True,
                                           reduction="batchmean") + (1 - alpha) * F.cross_entropy(s, y)
        s1, s2 = s.clone().requires_grad_(), s.clone().requires_grad_()
        mine, ref = my_distillation_loss(s1, t, y, T, alpha), L.distillation_loss(s2, t, y, T, alpha)
        assert torch.allclose(mine, ref, rtol=1e-5, atol=1e-6) and torch.allclose(mine, direct, rtol=1e-5, atol=1e-6)
        mine.backward()
        ref.backward()
        assert torch.allclose(s1.grad, s2.grad, rtol=1e-4, atol=1e-7)


def test_distillation_checks_the_gradient_scale_with_T():
    # the same values with a gradient that is off by a factor would pass a value-only check; this one does not
    def right_value_wrong_gradient(s, t, y, T, alpha):
        loss = my_distillation_loss(s, t, y, T, alpha)
        return loss.detach() + (loss - loss.detach()) / T ** 2      # value unchanged, gradient / T²

    assert_fails(grading.check_distillation_loss, right_value_wrong_gradient,
                 "gradient loss.backward() gives the STUDENT's logits at T=2", "position 0, character 0: expected")


def teacher_not_detached(s, t, y, T, alpha):
    log_q, log_p = torch.log_softmax(s / T, -1), torch.log_softmax(t / T, -1)
    return alpha * T ** 2 * (log_p.exp() * (log_p - log_q)).sum(-1).mean() + (1 - alpha) * F.cross_entropy(s, y)


def kl_with(s, t, T, sT=None, tT=None, reverse=False, probs=False, cross=False, reduce="mean"):
    """A learner's KL term with one thing changed."""
    log_q = torch.log_softmax(s / (T if sT is None else sT), -1)
    log_p = torch.log_softmax(t.detach() / (T if tT is None else tT), -1)
    p, q = log_p.exp(), log_q.exp()
    if reverse:
        per = q * (log_q - log_p)
    elif probs:
        per = p * (log_p - q)
    elif cross:
        per = -p * log_q
    else:
        per = p * (log_p - log_q)
    return {"mean": per.sum(-1).mean(), "sum": per.sum(), "all": per.mean()}[reduce]


def loss_with(scale=lambda T: T ** 2, hard=lambda s, y, T: F.cross_entropy(s, y), swap=False, **kl):
    def fn(s, t, y, T, alpha):
        a = 1 - alpha if swap else alpha
        return a * scale(T) * kl_with(s, t, T, **kl) + (1 - a) * hard(s, y, T)
    return fn


@pytest.mark.parametrize("wrong, hint", [
    (loss_with(scale=lambda T: 1.0), "the T² factor is missing"),
    (loss_with(scale=lambda T: T), "you used T (or 1/T², or T² on the whole loss)"),
    (loss_with(scale=lambda T: 1 / T ** 2), "you used T (or 1/T², or T² on the whole loss)"),
    (lambda s, t, y, T, a: T ** 2 * my_distillation_loss(s, t, y, T, a), "T² on the whole loss"),
    (loss_with(sT=1.0), "divide BOTH the teacher's and the student's logits by T"),
    (loss_with(tT=1.0), "divide BOTH the teacher's and the student's logits by T"),
    (loss_with(sT=1.0, tT=1.0), "divide BOTH the teacher's and the student's logits by T"),
    (loss_with(hard=lambda s, y, T: F.cross_entropy(s / T, y)), "the labels' cross-entropy is at T = 1"),
    (loss_with(reverse=True), "the KL is the wrong way round"),
    (loss_with(probs=True), "must be LOG-probabilities"),
    (loss_with(cross=True), "cross-entropy with the soft targets"),
    (loss_with(swap=True), "alpha weighs the SOFT (teacher) term"),
    (loss_with(reduce="sum"), "sums over the positions"),
    (loss_with(reduce="sum", hard=lambda s, y, T: F.cross_entropy(s, y, reduction="sum")), "sums over the positions"),
    (loss_with(reduce="all"), "reduction='mean' divides by V too"),
    (lambda s, t, y, T, a: loss_with(reduce="mean")(s, t, y, T, a) * torch.ones(len(y)), "one loss per position"),
    (teacher_not_detached, "the teacher's logits got a gradient: detach them"),
    (lambda s, t, y, T, a: torch.tensor(my_distillation_loss(s, t, y, T, a).item()), "no gradient reaches"),
    (lambda s, t, y, T, a: my_distillation_loss(s, t, y, T, a).detach(), "no gradient reaches"),
    (lambda s, t, y, T, a: a * T ** 2 * (torch.softmax(t / T, -1) * (torch.log(torch.softmax(t / T, -1))
                                                                     - torch.log(torch.softmax(s / T, -1)))
                                         ).sum(-1).mean() + (1 - a) * F.cross_entropy(s, y), "log_softmax"),
], ids=["no T2", "T not T2", "1/T2", "T2 on all", "student not /T", "teacher not /T", "neither /T", "CE at T",
        "reverse KL", "softmax for log_softmax", "soft cross-entropy", "alpha swapped", "KL summed", "both summed",
        "mean over V", "per position", "teacher not detached", "item", "detach", "log of softmax"])
def test_distillation_mistakes_get_their_hints(wrong, hint):
    assert_fails(grading.check_distillation_loss, wrong, hint=hint)


@pytest.mark.parametrize("answer, words", [
    (lambda s, t, y, T, a: None, "returned None — did you forget `return`?"),
    (lambda s, t, y, T, a: my_distillation_loss(s, t, y, T, a).numpy(), "numpy array"),
    (lambda s, t, y, T, a: my_distillation_loss(s, t, y, T, a).item(), "expected a torch.Tensor of shape ()"),
    (lambda s, t, y, T, a: my_distillation_loss(s.double(), t.double(), y, T, a), "the lab needs torch.float32"),
    (lambda s, t, y, T, a: s @ t, "your function raised RuntimeError"),
    (lambda s, t, y, T, a: my_distillation_loss(s, t, y, T, a) + torch.log_softmax(s, dim=2).sum() * 0,
     "your function raised IndexError"),
])
def test_distillation_none_numpy_float_and_crash_are_reported_not_raised(answer, words):
    assert_fails(grading.check_distillation_loss, answer, words)


@pytest.mark.parametrize("delegate, name", [
    (lambda s, t, y, T, a: L.distillation_loss(s, t, y, T, a), "labkit.losses.distillation_loss"),
    (L.distillation_loss, "labkit.losses.distillation_loss"),
    (lambda s, t, y, T, a: D.distillation_loss(s, t, y, T, a), "labkit.distill.distillation_loss"),
    (lambda s, t, y, T, a: a * T ** 2 * L.kl_divergence(t, s, T) + (1 - a) * F.cross_entropy(s, y),
     "labkit.losses.kl_divergence"),
    (lambda s, t, y, T, a: a * T ** 2 * F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1),
                                                 reduction="batchmean") + (1 - a) * F.cross_entropy(s, y),
     "torch.nn.functional.kl_div"),
    (lambda s, t, y, T, a: a * T ** 2 * torch.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1)).sum() / len(y)
     + (1 - a) * F.cross_entropy(s, y), "torch.kl_div"),
    (lambda s, t, y, T, a: a * T ** 2 * torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(s / T, -1),
                                                                                  F.softmax(t / T, -1))
     + (1 - a) * F.cross_entropy(s, y), "torch.nn.KLDivLoss"),
])
def test_distillation_may_not_delegate(delegate, name):
    assert_fails(grading.check_distillation_loss, delegate, f"`{name}`")


def test_distillation_logits_edited_in_place_work_as_they_would_on_a_models_output():
    # the lab's logits come out of the student model (not leaves): an in-place shift by the max is fine there
    def shifted_in_place(s, t, y, T, alpha):
        s = s.sub_(s.max(dim=-1, keepdim=True).values.detach())
        return my_distillation_loss(s, t, y, T, alpha)

    assert grading.check_distillation_loss(shifted_in_place, quiet=True)


def test_distillation_log_softmax_softmax_and_cross_entropy_stay_allowed():
    assert grading.check_distillation_loss(lambda *a: my_distillation_loss(*a), quiet=True)
    assert grading.check_distillation_loss(distillation_with_xlogy, quiet=True)


def test_distillation_fallback_names_labkits_reference(capsys):
    fn = grading.use_or_fallback(lambda *a: None, grading.check_distillation_loss, L.distillation_loss)
    assert fn is L.distillation_loss and "`labkit.losses.distillation_loss`" in capsys.readouterr().out
    assert grading.use_or_fallback(my_distillation_loss, grading.check_distillation_loss,
                                   L.distillation_loss) is my_distillation_loss


def test_distillation_hidden_examples_pass_a_right_answer_and_catch_a_table():
    # the table is right on the public examples' inputs (values and gradients), a constant anywhere else
    assert_hidden_examples_defeat_a_table(grading.check_distillation_loss, my_distillation_loss,
                                          also_right=[distillation_with_xlogy],
                                          otherwise=lambda s, *rest: (s * 0).sum())


# ---- teacher_targets_bytes ----------------------------------------------------------------------

def test_teacher_targets_bytes_right_answer_passes(capsys):
    assert grading.check_teacher_targets_bytes(my_teacher_targets_bytes)
    assert "passed (7 examples)" in capsys.readouterr().out
    assert grading.check_teacher_targets_bytes(lambda *a: np.int64(my_teacher_targets_bytes(*a)), quiet=True)
    fn = grading.use_or_fallback(lambda *a: torch.tensor(my_teacher_targets_bytes(*a)),
                                 grading.check_teacher_targets_bytes, D.teacher_targets_bytes)
    assert type(fn(100, 84, 8, 2, 1)) is int and fn(100, 84, 8, 2, 1) == 2_400


def test_teacher_targets_bytes_check_is_what_a_drop_cache_stores():
    # labkit's cache stores the same bytes (fp16/fp32 values, the smallest integer type for the token ids)
    for v in (84, 50_257):
        for top_k in (None, 1, 8):
            for dtype, vb in (("fp16", 2), ("fp32", 4)):
                ib = D.index_dtype(v).itemsize
                assert my_teacher_targets_bytes(5 * 4 * 16, v, top_k, vb, ib) == \
                    D.cache_bytes(5, 4, 16, v, top_k, dtype, tail="drop")["targets"]


@pytest.mark.parametrize("wrong, hint", [
    (lambda n, v, k, vb, ib: n * v * vb if k is None else n * k * vb, "the token ids are missing"),
    (lambda n, v, k, vb, ib: n * v * (vb + ib) if k is None else n * k * (vb + ib), "full logits need no token ids"),
    (lambda n, v, k, vb, ib: n * v * vb if k is None else n * v * (vb + ib), "a position keeps k values"),
    (lambda n, v, k, vb, ib: 8 * my_teacher_targets_bytes(n, v, k, vb, ib), "that is bits"),
    (lambda n, v, k, vb, ib: my_teacher_targets_bytes(n, v, k, vb, ib) // 8, "don't divide by 8"),
    (lambda n, v, k, vb, ib: my_teacher_targets_bytes(1, v, k, vb, ib), "that is one position's bytes"),
    (lambda n, v, k, vb, ib: n * v * vb if k is None else n * (k * vb + ib), "its OWN token id"),
], ids=["no ids", "ids for full logits", "V for k", "bits", "divided by 8", "one position", "one id per position"])
def test_teacher_targets_bytes_mistakes_get_their_hints(wrong, hint):
    assert_fails(grading.check_teacher_targets_bytes, wrong, hint=hint)


@pytest.mark.parametrize("answer, words", [
    (lambda *a: None, "did you forget `return`?"),
    (lambda *a: float(my_teacher_targets_bytes(*a)), "return an int"),
    (lambda n, v, k, vb, ib: n * k * (vb + ib), "raised TypeError"),        # top_k=None not handled
])
def test_teacher_targets_bytes_none_float_and_crash_are_reported(answer, words):
    assert_fails(grading.check_teacher_targets_bytes, answer, words)


@pytest.mark.parametrize("delegate, name", [
    (lambda *a: D.teacher_targets_bytes(*a), "labkit.distill.teacher_targets_bytes"),
    (D.teacher_targets_bytes, "labkit.distill.teacher_targets_bytes"),
    (lambda n, v, k, vb, ib: n * D.target_bytes_per_token(v, k, "fp16" if vb == 2 else "fp32"),
     "labkit.distill.target_bytes_per_token"),
    (lambda n, v, k, vb, ib: D.cache_bytes(n, 1, 1, v, k)["targets"], "labkit.distill.cache_bytes"),
])
def test_teacher_targets_bytes_may_not_delegate(delegate, name):
    assert_fails(grading.check_teacher_targets_bytes, delegate, name)


def test_teacher_targets_bytes_hidden_examples_pass_a_right_answer_and_catch_a_table():
    assert_hidden_examples_defeat_a_table(grading.check_teacher_targets_bytes, my_teacher_targets_bytes,
                                          otherwise=lambda *a: 0)


# ---- in the grader's fresh process ------------------------------------------------------------

LOSS = ("def distillation_loss(student_logits, teacher_logits, targets, T, alpha):\n"
        "    log_q = torch.log_softmax(student_logits / T, dim=-1)\n"
        "    log_p = torch.log_softmax(teacher_logits.detach() / T, dim=-1)\n"
        "    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean()\n"
        "    return alpha * T ** 2 * kl + (1 - alpha) * F.cross_entropy(student_logits, targets)\n")
BYTES = ("def teacher_targets_bytes(n_tokens, vocab_size, top_k, value_bytes, index_bytes):\n"
         "    if top_k is None:\n"
         "        return n_tokens * vocab_size * value_bytes\n"
         "    return n_tokens * top_k * (value_bytes + index_bytes)\n")


def test_graded_cells_pass_right_answers_in_a_fresh_process():
    assert grade_cell("distillation_loss", LOSS) is None
    assert grade_cell("teacher_targets_bytes", BYTES) is None


def test_graded_cells_fail_wrong_answers_with_the_hint():
    with pytest.raises(AssertionError, match="the T² factor is missing"):
        grade_cell("distillation_loss", LOSS.replace("alpha * T ** 2 * kl", "alpha * kl"))
    with pytest.raises(AssertionError, match="detach them"):             # found by the gradient, over there
        grade_cell("distillation_loss", LOSS.replace("teacher_logits.detach()", "teacher_logits"))
    with pytest.raises(AssertionError, match="the token ids are missing"):
        grade_cell("teacher_targets_bytes", BYTES.replace(" * (value_bytes + index_bytes)", " * value_bytes"))


def test_a_delegating_function_fails_in_the_grader_too():
    source = ("import labkit.losses\n"
              "def distillation_loss(s, t, y, T, alpha):\n"
              "    return labkit.losses.distillation_loss(s, t, y, T, alpha)\n")
    with pytest.raises(AssertionError, match="labkit.losses.distillation_loss"):
        grade_cell("distillation_loss", source)


# ---- labkit's references (the lab's fallbacks) give the checks' answers -------------------------

def test_labkit_references_agree_with_the_checks():
    for s, t, y, T, a in examples_of(grading.check_distillation_loss, my_distillation_loss):
        assert torch.allclose(L.distillation_loss(s, t, y, T, a), my_distillation_loss(s, t, y, T, a),
                              rtol=1e-5, atol=1e-6), (T, a)
    for args in examples_of(grading.check_teacher_targets_bytes, my_teacher_targets_bytes):
        assert D.teacher_targets_bytes(*args) == my_teacher_targets_bytes(*args), args
