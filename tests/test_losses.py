"""labkit.losses against torch.nn.functional, closed forms and the properties each loss must have."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.losses import (ELBO, bits_per_char, cross_entropy, distillation_loss, kl_divergence, log_softmax,
                           mse, perplexity, vae_elbo)

# derandomize: the same examples on every run, so the suite is deterministic
PROPERTY = settings(max_examples=40, deadline=None, derandomize=True, database=None)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    # labkit.train.train and labkit.lab's benchmark flush denormal floats to zero for the whole process;
    # hypothesis' float strategies refuse to run then, so start every test here from torch's default
    torch.set_flush_denormal(False)


def logits_strategy(max_rows=4, max_vocab=8, scale=30.0):
    """Hypothesis: a (rows, vocab) float64 logits tensor with moderate values."""
    return st.tuples(st.integers(1, max_rows), st.integers(1, max_vocab)).flatmap(
        lambda shape: st.lists(st.floats(-scale, scale, allow_nan=False), min_size=shape[0] * shape[1],
                               max_size=shape[0] * shape[1]).map(
            lambda xs: torch.tensor(xs, dtype=torch.float64).view(*shape)))


# ----------------------------------------------------------------------------- log_softmax / cross_entropy

def test_log_softmax_matches_torch_and_survives_huge_logits():
    x = torch.randn(3, 5, 7)
    torch.testing.assert_close(log_softmax(x), F.log_softmax(x, dim=-1))
    huge = torch.tensor([1e4, 0.0, -1e4])
    out = log_softmax(huge)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.tensor([0.0, -1e4, -2e4]))


@pytest.mark.parametrize("shape", [(7,), (6, 7), (2, 5, 7)])
def test_cross_entropy_matches_torch_value_and_gradient(shape):
    logits = (3 * torch.randn(*shape)).requires_grad_()
    targets = torch.randint(0, shape[-1], shape[:-1])
    ours = cross_entropy(logits, targets)
    (g_ours,) = torch.autograd.grad(ours, logits)
    ref = F.cross_entropy(logits.reshape(-1, shape[-1]), targets.reshape(-1))
    (g_ref,) = torch.autograd.grad(ref, logits)
    assert ours.dim() == 0
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, g_ref)


@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_cross_entropy_ignore_index_matches_torch(ignore_index):
    logits = torch.randn(4, 6, 5)
    targets = torch.randint(0, 5, (4, 6))
    targets[0, :3] = ignore_index
    targets[2, -1] = ignore_index
    ours = cross_entropy(logits, targets, ignore_index=ignore_index)
    ref = F.cross_entropy(logits.view(-1, 5), targets.view(-1), ignore_index=ignore_index)
    torch.testing.assert_close(ours, ref)
    # the ignored positions really are left out: changing their logits changes nothing
    logits2 = logits.clone()
    logits2[targets == ignore_index] += 100 * torch.randn(5)
    torch.testing.assert_close(cross_entropy(logits2, targets, ignore_index=ignore_index), ours)


def test_cross_entropy_all_ignored_is_nan_like_torch():
    logits = torch.randn(3, 4)
    targets = torch.full((3,), -100)
    assert torch.isnan(cross_entropy(logits, targets))
    assert torch.isnan(F.cross_entropy(logits, targets))


def test_cross_entropy_huge_logits_are_finite_and_exact():
    logits = torch.tensor([[1e4, 0.0, -1e4], [-1e4, 1e4, 0.0]], requires_grad=True)
    targets = torch.tensor([1, 1])
    loss = cross_entropy(logits, targets)
    loss.backward()
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, torch.tensor(5e3))  # (1e4 + 0) / 2
    assert torch.isfinite(logits.grad).all()
    torch.testing.assert_close(loss, F.cross_entropy(logits, targets))


def test_cross_entropy_accepts_int32_targets():
    logits = torch.randn(5, 3)
    targets = torch.randint(0, 3, (5,))
    torch.testing.assert_close(cross_entropy(logits, targets.int()), F.cross_entropy(logits, targets))


@PROPERTY
@given(logits=logits_strategy(), data=st.data())
def test_cross_entropy_property_matches_torch_and_is_nonnegative(logits, data):
    rows, vocab = logits.shape
    targets = torch.tensor(data.draw(st.lists(st.integers(0, vocab - 1), min_size=rows, max_size=rows)))
    ours = cross_entropy(logits, targets)
    assert ours.item() >= 0.0
    torch.testing.assert_close(ours, F.cross_entropy(logits, targets))


# logits around +-1e4 in float32 whose differences are O(1), so every loss is O(1) and rounding shows:
# log_softmax must subtract the max from the logits first, (x - m) - log sum exp(x - m). The old
# x - (m + log sum exp(x - m)) rounds m + ln 2 at 1e4 (float32 spacing there is ~0.001).
HUGE_STUDENT = torch.tensor([[1e4, 1e4, 0.0], [1e4 + 1, 1e4, -1e4], [-1e4, -1e4 + 2, -1e4 + 1]])
HUGE_TEACHER = torch.tensor([[1e4 + 1, 1e4, -1e4], [1e4, 1e4 + 2, 0.0], [-1e4 + 1, -1e4, -1e4 + 3]])
HUGE_TARGETS = torch.tensor([0, 1, 2])


def test_cross_entropy_at_1e4_float32_is_ln2_exactly():
    # the example: two tied logits at 1e4 → p = 1/2. The old code gave 0.693359
    loss = cross_entropy(torch.tensor([[1e4, 1e4, 0.0]]), torch.tensor([0]))
    torch.testing.assert_close(loss, torch.tensor(math.log(2)))
    torch.testing.assert_close(cross_entropy(HUGE_STUDENT, HUGE_TARGETS), F.cross_entropy(HUGE_STUDENT, HUGE_TARGETS))
    torch.testing.assert_close(log_softmax(HUGE_STUDENT), F.log_softmax(HUGE_STUDENT, dim=-1))


@pytest.mark.parametrize("temperature", [1.0, 10.0])
def test_kl_and_distillation_at_1e4_float32_match_torch(temperature):
    T = temperature
    ref_kl = F.kl_div(F.log_softmax(HUGE_STUDENT / T, -1), F.log_softmax(HUGE_TEACHER / T, -1),
                      reduction="batchmean", log_target=True)
    torch.testing.assert_close(kl_divergence(HUGE_TEACHER, HUGE_STUDENT, T), ref_kl)
    ref = 0.5 * T ** 2 * ref_kl + 0.5 * F.cross_entropy(HUGE_STUDENT, HUGE_TARGETS)
    torch.testing.assert_close(distillation_loss(HUGE_STUDENT, HUGE_TEACHER, HUGE_TARGETS, T, alpha=0.5), ref)


# ----------------------------------------------------------------------------- perplexity / bits_per_char

@pytest.mark.parametrize("vocab_size", [2, 65, 50257])
def test_uniform_model_has_perplexity_vocab_size(vocab_size):
    logits = torch.zeros(2, 3, vocab_size)  # every token equally likely
    targets = torch.randint(0, vocab_size, (2, 3))
    nll = cross_entropy(logits, targets)
    ppl = perplexity(nll)
    assert isinstance(ppl, float)
    assert ppl == pytest.approx(vocab_size, rel=1e-5)


def test_perplexity_accepts_float_and_0d_tensors_with_grad():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(7.0)) == pytest.approx(7.0)
    assert perplexity(torch.tensor(math.log(7.0), requires_grad=True)) == pytest.approx(7.0)
    assert perplexity(torch.tensor([math.log(3.0)])) == pytest.approx(3.0)  # one element is fine
    assert perplexity(709.0) == pytest.approx(math.exp(709.0))  # still a finite float
    assert perplexity(1000.0) == math.inf  # would overflow math.exp
    assert math.isnan(perplexity(float("nan")))  # a diverged run stays visible, not an exception


def test_bits_per_char():
    assert bits_per_char(math.log(2)) == pytest.approx(1.0)
    assert bits_per_char(torch.tensor(math.log(256))) == pytest.approx(8.0)  # uniform over bytes
    assert isinstance(bits_per_char(torch.tensor(1.0)), float)
    assert bits_per_char(1.0) == pytest.approx(1.0 / math.log(2))
    # a uniform model over 2 characters costs exactly 1 bit per character
    nll = cross_entropy(torch.zeros(10, 2), torch.randint(0, 2, (10,)))
    assert bits_per_char(nll) == pytest.approx(1.0, rel=1e-6)


# ----------------------------------------------------------------------------- mse

@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 4)])
def test_mse_matches_torch(shape):
    pred, target = torch.randn(*shape, requires_grad=True), torch.randn(*shape)
    ours, ref = mse(pred, target), F.mse_loss(pred, target)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(torch.autograd.grad(ours, pred)[0], torch.autograd.grad(ref, pred)[0])
    assert mse(target, target).item() == 0.0


# ----------------------------------------------------------------------------- kl_divergence

@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_kl_matches_torch_kl_div_batchmean(temperature):
    p, q = 3 * torch.randn(6, 10), 3 * torch.randn(6, 10)
    ours = kl_divergence(p, q, temperature)
    # F.kl_div(input, target) computes KL(target || input) with input given as log-probabilities
    ref = F.kl_div(F.log_softmax(q / temperature, -1), F.log_softmax(p / temperature, -1),
                   reduction="batchmean", log_target=True)
    torch.testing.assert_close(ours, ref)


def test_kl_averages_over_all_leading_dims():
    p, q = torch.randn(2, 3, 10), torch.randn(2, 3, 10)
    ref = F.kl_div(F.log_softmax(q, -1), F.log_softmax(p, -1), reduction="sum", log_target=True) / 6
    torch.testing.assert_close(kl_divergence(p, q), ref)
    torch.testing.assert_close(kl_divergence(p, q), kl_divergence(p.view(6, 10), q.view(6, 10)))


def test_kl_closed_form_and_direction():
    p = torch.tensor([0.9, 0.1]).log()  # logits = log-probabilities
    q = torch.tensor([0.5, 0.5]).log()
    expected_pq = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    expected_qp = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert kl_divergence(p, q).item() == pytest.approx(expected_pq, rel=1e-5)
    assert kl_divergence(q, p).item() == pytest.approx(expected_qp, rel=1e-5)  # KL is not symmetric


def test_kl_huge_logits_finite():
    p = torch.tensor([[1e4, 0.0, -1e4]], requires_grad=True)
    q = torch.tensor([[0.0, 1e4, -1e4]], requires_grad=True)
    kl = kl_divergence(p, q)
    kl.backward()
    assert torch.isfinite(kl)
    torch.testing.assert_close(kl, torch.tensor(1e4))  # p is one-hot on class 0, where log q = -1e4
    assert torch.isfinite(p.grad).all() and torch.isfinite(q.grad).all()


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_kl_with_minus_inf_teacher_logits_matches_kl_div(temperature):
    # a teacher masked to its top k: the other classes get -inf, probability 0, and add 0·log 0 = 0
    teacher = torch.tensor([[2.0, -math.inf, 1.0, -math.inf], [0.5, 0.1, -math.inf, 3.0]])
    student = torch.randn(2, 4, requires_grad=True)
    ours = kl_divergence(teacher, student, temperature)
    ref = F.kl_div(F.log_softmax(student / temperature, -1), F.softmax(teacher / temperature, -1),
                   reduction="batchmean")  # probability targets: F.kl_div uses 0·log 0 = 0
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, ref)
    (g_ours,) = torch.autograd.grad(ours, student)
    (g_ref,) = torch.autograd.grad(ref, student)
    torch.testing.assert_close(g_ours, g_ref)
    targets = torch.tensor([0, 3])
    loss = distillation_loss(student, teacher, targets, temperature, alpha=0.5)
    torch.testing.assert_close(loss, 0.5 * temperature ** 2 * ref + 0.5 * F.cross_entropy(student, targets))
    # the other way round a class the student rules out but the teacher does not costs infinitely many nats
    assert kl_divergence(student.detach(), teacher).item() == math.inf


@PROPERTY
@given(logits=logits_strategy(), data=st.data(), temperature=st.floats(0.1, 10.0))
def test_kl_property_nonnegative_and_zero_on_itself(logits, data, temperature):
    other = torch.tensor(data.draw(st.lists(st.floats(-30, 30), min_size=logits.numel(),
                                            max_size=logits.numel())), dtype=torch.float64).view_as(logits)
    assert kl_divergence(logits, other, temperature).item() >= -1e-12
    assert kl_divergence(logits, logits, temperature).item() == 0.0
    # softmax ignores a constant added to all logits, so KL does too
    shifted = kl_divergence(logits + 5.0, other - 3.0, temperature)
    torch.testing.assert_close(shifted, kl_divergence(logits, other, temperature))


# ----------------------------------------------------------------------------- distillation_loss

def test_distillation_alpha_endpoints_and_mix():
    student, teacher = torch.randn(4, 5, 11), torch.randn(4, 5, 11)
    targets = torch.randint(0, 11, (4, 5))
    T = 3.0
    hard = F.cross_entropy(student.view(-1, 11), targets.view(-1))
    soft = F.kl_div(F.log_softmax(student / T, -1).view(-1, 11), F.log_softmax(teacher / T, -1).view(-1, 11),
                    reduction="batchmean", log_target=True) * T ** 2
    torch.testing.assert_close(distillation_loss(student, teacher, targets, T, alpha=0.0), hard)
    torch.testing.assert_close(distillation_loss(student, teacher, targets, T, alpha=1.0), soft)
    torch.testing.assert_close(distillation_loss(student, teacher, targets, T, alpha=0.3), 0.3 * soft + 0.7 * hard)


def test_distillation_student_equal_to_teacher_leaves_only_hard_term():
    logits, targets = torch.randn(8, 6), torch.randint(0, 6, (8,))
    loss = distillation_loss(logits, logits.clone(), targets, temperature=5.0, alpha=0.5)
    torch.testing.assert_close(loss, 0.5 * F.cross_entropy(logits, targets))


def test_distillation_teacher_gets_no_gradient():
    student = torch.randn(3, 4, requires_grad=True)
    teacher = torch.randn(3, 4, requires_grad=True)
    distillation_loss(student, teacher, torch.tensor([0, 1, 2])).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_distillation_T_squared_keeps_soft_gradient_scale():
    g = torch.Generator().manual_seed(0)
    student0 = torch.randn(8, 50, generator=g, dtype=torch.float64)
    teacher = 2 * torch.randn(8, 50, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 50, (8,), generator=g)

    def grad_norm(T, scaled):
        student = student0.clone().requires_grad_()
        if scaled:  # alpha = 1: the soft term only, with its T² factor
            loss = distillation_loss(student, teacher, targets, temperature=T, alpha=1.0)
        else:
            loss = kl_divergence(teacher, student, temperature=T)
        (grad,) = torch.autograd.grad(loss, student)
        return grad.norm().item()

    for T in (10.0, 20.0):
        # without T² doubling T divides the gradient by about 4 = 2²
        assert grad_norm(T, scaled=False) / grad_norm(2 * T, scaled=False) == pytest.approx(4.0, rel=0.05)
        # with T² the gradient stays about the same size
        assert grad_norm(T, scaled=True) / grad_norm(2 * T, scaled=True) == pytest.approx(1.0, rel=0.05)


# ----------------------------------------------------------------------------- vae_elbo

def _encoder_outputs(batch=16, latent=4):
    return torch.randn(batch, latent), torch.randn(batch, latent)  # mu, logvar


def test_vae_elbo_mse_matches_torch_and_kl_matches_distributions():
    x, recon_x = torch.randn(16, 1, 6, 6), torch.randn(16, 1, 6, 6)
    mu, logvar = _encoder_outputs()
    out = vae_elbo(recon_x, x, mu, logvar, recon="mse")
    assert isinstance(out, ELBO)
    torch.testing.assert_close(out.reconstruction, F.mse_loss(recon_x, x, reduction="sum") / 16)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    prior = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected_kl = torch.distributions.kl_divergence(q, prior).sum(-1).mean()
    torch.testing.assert_close(out.kl, expected_kl)
    torch.testing.assert_close(out.total, out.reconstruction + out.kl)
    assert out.kl.item() > 0  # the sign: a KL divergence is never negative


def test_vae_elbo_bce_matches_torch():
    x = torch.rand(8, 20)
    x[0] = (x[0] > 0.5).float()  # binary and soft targets both allowed
    recon_x = torch.rand(8, 20)
    recon_x[1, :3] = torch.tensor([0.0, 1.0, 0.0])  # log(0) must be clamped, not -inf
    x[1, :3] = torch.tensor([1.0, 0.0, 0.0])
    mu, logvar = _encoder_outputs(8)
    out = vae_elbo(recon_x, x, mu, logvar, recon="bce")
    torch.testing.assert_close(out.reconstruction, F.binary_cross_entropy(recon_x, x, reduction="sum") / 8)
    assert torch.isfinite(out.total)


def test_vae_kl_matches_monte_carlo():
    mu = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    logvar = torch.tensor([[0.3, -0.7, 1.2]], dtype=torch.float64)
    x = torch.zeros(1, 2, dtype=torch.float64)
    kl = vae_elbo(x, x, mu, logvar).kl.item()
    # KL(q || p) = E_{z~q}[log q(z) - log p(z)], estimated from samples
    g = torch.Generator().manual_seed(0)
    std = (0.5 * logvar).exp()
    z = mu + std * torch.randn(200_000, 3, generator=g, dtype=torch.float64)
    log_q = torch.distributions.Normal(mu, std).log_prob(z).sum(-1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    assert kl == pytest.approx((log_q - log_p).mean().item(), rel=0.02)


def test_vae_kl_is_zero_at_the_prior():
    x = torch.randn(5, 3)
    out = vae_elbo(x, x, torch.zeros(5, 4), torch.zeros(5, 4))
    assert out.kl.item() == 0.0 and out.reconstruction.item() == 0.0 and out.total.item() == 0.0


@PROPERTY
@given(mu=st.lists(st.floats(-5, 5), min_size=3, max_size=3), logvar=st.lists(st.floats(-5, 5), min_size=3,
                                                                                 max_size=3))
def test_vae_kl_property_nonnegative(mu, logvar):
    x = torch.zeros(1, 2, dtype=torch.float64)
    kl = vae_elbo(x, x, torch.tensor([mu], dtype=torch.float64), torch.tensor([logvar], dtype=torch.float64)).kl
    assert kl.item() >= -1e-12


# ----------------------------------------------------------------------------- input validation

def test_errors_cross_entropy():
    with pytest.raises(ValueError, match=r"targets must have the shape of logits .* got \(4, 2\)"):
        cross_entropy(torch.randn(4, 3, 5), torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="targets must be integer class ids.*float32"):
        cross_entropy(torch.randn(4, 5), torch.zeros(4))
    with pytest.raises(ValueError, match=r"targets must be in \[0, 5\).*got 5"):
        cross_entropy(torch.randn(2, 5), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"targets must be in \[0, 5\).*got -1"):
        cross_entropy(torch.randn(2, 5), torch.tensor([-1, 0]))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_errors_temperature(bad):
    logits, targets = torch.randn(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        kl_divergence(logits, logits, temperature=bad)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        distillation_loss(logits, logits, targets, temperature=bad)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_errors_alpha(bad):
    logits = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        distillation_loss(logits, logits, torch.tensor([0, 1]), alpha=bad)


def test_errors_shape_mismatches():
    with pytest.raises(ValueError, match="p_logits and q_logits must have the same shape"):
        kl_divergence(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="student_logits and teacher_logits must have the same shape"):
        distillation_loss(torch.randn(2, 3), torch.randn(3, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="targets must have the shape"):
        distillation_loss(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="pred and target must have the same shape"):
        mse(torch.randn(3, 1), torch.randn(3))


def test_errors_vae():
    x, mu, logvar = torch.rand(4, 6), torch.randn(4, 2), torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"recon='l1' is not a known .*allowed: \('mse', 'bce'\)"):
        vae_elbo(x, x, mu, logvar, recon="l1")
    with pytest.raises(ValueError, match="recon_x and x must have the same shape"):
        vae_elbo(x[:, :5], x, mu, logvar)
    with pytest.raises(ValueError, match="mu and logvar must have the same shape"):
        vae_elbo(x, x, mu, logvar[:, :1])
    with pytest.raises(ValueError, match="x and mu must share the batch"):
        vae_elbo(x, x, mu[:3], logvar[:3])
    with pytest.raises(ValueError, match=r"needs recon_x to be probabilities in \[0, 1\]"):
        vae_elbo(torch.randn(4, 6) * 3, x, mu, logvar, recon="bce")
    with pytest.raises(ValueError, match=r"needs x in \[0, 1\]"):
        vae_elbo(x, x + 2, mu, logvar, recon="bce")


def test_errors_perplexity_and_bits():
    for fn in (perplexity, bits_per_char):
        with pytest.raises(ValueError, match="mean_nll_nats must be a float or a 0-d tensor"):
            fn(torch.tensor([1.0, 2.0]))
        with pytest.raises(ValueError, match="mean_nll_nats must be >= 0"):
            fn(-0.5)
