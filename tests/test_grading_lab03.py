"""Lab 03 self-checks: a right answer passes, a typical wrong one fails with a message.

(That a stub reads 'not yet solved' is tested for every check at once in test_grading.py.)"""
import pytest
import torch

from labkit import grading
from labkit.memory import SavedTensorMeter, gpt_activation_bytes, gpt_param_count
from labkit.model import GPT, MLP, GPTConfig


# ---- gpt_param_count ------------------------------------------------------------------------

def param_count_by_hand(config):
    C, V, hd, F = config.n_embd, config.vocab_size, config.head_dim, config.mlp_hidden
    count = V * C + (config.block_size * C if config.positions == "learned" else 0)
    mlp = (3 if config.activation == "swiglu" else 2) * C * F
    per_layer = 2 * C + C * (config.n_head + 2 * config.n_kv_head) * hd + C * C + mlp
    return count + config.n_layer * per_layer + C + (0 if config.tie_weights else V * C)


def test_param_count_right_answer_passes():
    assert grading.check_gpt_param_count(param_count_by_hand, quiet=True)
    # handing in labkit's own function is not an answer (regression: it passed)
    assert "labkit.memory.gpt_param_count" in grading.check_gpt_param_count(gpt_param_count, quiet=True).message


def test_param_count_matches_a_real_model():
    # the check's reference is gpt_param_count: make sure that is what GPT really holds on its configs
    cfg = GPTConfig(vocab_size=100, block_size=32, n_layer=3, n_head=8, n_kv_head=2, n_embd=64, tie_weights=False)
    assert param_count_by_hand(cfg) == GPT(cfg).num_params()


def test_param_count_wrong_answers_fail_with_message(capsys):
    def ignores_gqa(config):   # k and v as wide as q
        return param_count_by_hand(GPTConfig(**{**config.__dict__, "n_kv_head": config.n_head}))

    def counts_tied_twice(config):
        extra = config.vocab_size * config.n_embd if config.tie_weights else 0
        return param_count_by_hand(config) + extra

    for wrong in (ignores_gqa, counts_tied_twice):
        result = grading.check_gpt_param_count(wrong)
        assert not result and result.status == grading.FAIL
        assert "expected" in capsys.readouterr().out


# ---- mlp_activation_bytes -------------------------------------------------------------------

@pytest.mark.parametrize("activation", ["gelu", "relu2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mlp_closed_form_is_what_the_meter_measures(activation, dtype):
    B, T, C = 3, 10, 48
    mlp = MLP(GPTConfig(n_embd=C, n_head=4, activation=activation)).to(dtype)
    x = torch.randn(B, T, C, dtype=dtype)
    with SavedTensorMeter(mlp) as meter:
        mlp(x)
    assert meter.total_bytes == 9 * B * T * C * dtype.itemsize
    # and it is the MLP's share of labkit's whole-model formula
    terms = gpt_activation_bytes(GPTConfig(n_embd=C, n_head=4, block_size=T), B, T, dtype)["per_layer_terms"]
    mlp_terms = [v for k, v in terms.items() if "mlp" in k]   # fc input, fc/activation output, proj input
    assert len(mlp_terms) == 3 and sum(mlp_terms) == meter.total_bytes


def test_mlp_right_answer_passes():
    assert grading.check_mlp_activation_bytes(lambda B, T, C, a: 9 * B * T * C * a, quiet=True)


def test_mlp_wrong_answer_fails_with_message(capsys):
    result = grading.check_mlp_activation_bytes(lambda B, T, C, a: 8 * B * T * C * a)  # forgot the fc input
    assert not result and result.status == grading.FAIL
    out = capsys.readouterr().out
    assert "expected" in out and "mlp_activation_bytes(batch_size=" in out




def test_param_count_off_by_one_fails():
    # regression: rtol=1e-5 let an answer off by one (or by ln_f's 128) pass
    result = grading.check_gpt_param_count(lambda c: param_count_by_hand(c) - c.n_embd, quiet=True)
    assert result.status == grading.FAIL and "ln_f" in result.message
    assert not grading.check_gpt_param_count(lambda c: param_count_by_hand(c) + 1, quiet=True)


def test_param_count_hints():
    tied_twice = grading.check_gpt_param_count(
        lambda c: param_count_by_hand(c) + (c.vocab_size * c.n_embd if c.tie_weights else 0), quiet=True)
    assert "count it once" in tied_twice.message
    from dataclasses import replace
    no_gqa = grading.check_gpt_param_count(lambda c: param_count_by_hand(replace(c, n_kv_head=c.n_head)), quiet=True)
    assert "n_kv_head" in no_gqa.message


def test_param_count_may_not_delegate():
    from labkit import memory
    result = grading.check_gpt_param_count(lambda c: memory.gpt_param_count(c), quiet=True)
    assert result.status == grading.FAIL and "labkit.memory.gpt_param_count" in result.message
    result = grading.check_gpt_param_count(lambda c: GPT(c).num_params(), quiet=True)
    assert result.status == grading.FAIL and "labkit.model.GPT" in result.message


# ---- largest_batch_that_fits ----------------------------------------------------------------

def largest_batch_by_search(config, seq_len, budget_bytes):
    state = 16 * gpt_param_count(config)                      # fp32 weights + grads + AdamW's two moments
    batch = 0
    while state + gpt_activation_bytes(config, batch + 1, seq_len, "fp32")["total"] <= budget_bytes:
        batch += 1
    return batch


def test_largest_batch_right_answer_passes(capsys):
    assert grading.check_largest_batch_that_fits(largest_batch_by_search)
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, hint", [
    (lambda c, T, b: largest_batch_by_search(c, T, b) + 1, "first batch that does NOT fit"),
    (lambda c, T, b: max(largest_batch_by_search(c, T, b - 1) if b > 0 else 0, 0)
     if largest_batch_by_search(c, T, b) == largest_batch_by_search(c, T, b - 1) + 1 else largest_batch_by_search(c, T, b),
     "use ≤, not <"),
    (lambda c, T, b: max(1, largest_batch_by_search(c, T, b)), "return 0"),
    (lambda c, T, b: b // gpt_activation_bytes(c, 1, T, "fp32")["total"], "training state is missing"),
], ids=["< instead of stop", "< instead of <=", "never 0", "no training state"])
def test_largest_batch_mistakes_get_hints(wrong, hint):
    result = grading.check_largest_batch_that_fits(wrong, quiet=True)
    assert result.status == grading.FAIL and hint in result.message, result.message


def test_largest_batch_cases_cover_the_boundaries():
    # the check's own examples: an exact-fit budget, one byte less, two budgets with answer 0, GQA and rotary
    seen = []
    def spy(config, seq_len, budget):
        seen.append((config, seq_len, budget, largest_batch_by_search(config, seq_len, budget)))
        return seen[-1][-1]
    assert grading.check_largest_batch_that_fits(spy, quiet=True)
    answers = [s[-1] for s in seen]
    assert answers.count(0) >= 2 and 12 in answers and 11 in answers
    assert any(c.n_kv_head < c.n_head and c.positions == "rotary" for c, *_ in seen)


def test_largest_batch_may_not_delegate():
    from labkit import memory
    if not hasattr(memory, "largest_batch_that_fits"):
        pytest.skip("labkit.memory.largest_batch_that_fits is not in this labkit yet")
    result = grading.check_largest_batch_that_fits(lambda c, T, b: memory.largest_batch_that_fits(c, T, b), quiet=True)
    assert result.status == grading.FAIL and "largest_batch_that_fits" in result.message


def test_mlp_hints():
    result = grading.check_mlp_activation_bytes(lambda B, T, C, a: 8 * B * T * C * a, quiet=True)
    assert "fc layer's input" in result.message


def test_param_count_demands_swiglu_because_the_lab_counts_llama_with_it():
    def two_matrices(config):
        C, V, hd, F = config.n_embd, config.vocab_size, config.head_dim, config.mlp_hidden
        count = V * C + (config.block_size * C if config.positions == "learned" else 0)
        count += config.n_layer * (2 * C + C * (config.n_head + 2 * config.n_kv_head) * hd + C * C + 2 * C * F) + C
        return count + (0 if config.tie_weights else V * C)

    result = grading.check_gpt_param_count(two_matrices, quiet=True)
    assert result.status == grading.FAIL and "SwiGLU has THREE matrices" in result.message
    # and the 8·C² of GPT-2's 4× MLP is recognised as ignoring mlp_hidden
    result = grading.check_gpt_param_count(lambda c: param_count_by_hand(c) - c.n_layer * 3 * c.n_embd * c.mlp_hidden
                                           + c.n_layer * 8 * c.n_embd ** 2 if c.activation == "swiglu"
                                           else param_count_by_hand(c), quiet=True)
    assert result.status == grading.FAIL and "config.mlp_hidden" in result.message


def test_right_answers_pass_the_hidden_examples_of_many_seeds(monkeypatch):
    from labkit.grading import core
    for seed in range(15):
        monkeypatch.setattr(core, "HIDDEN_SEED", seed)
        for check, right in [(grading.check_gpt_param_count, param_count_by_hand),
                             (grading.check_largest_batch_that_fits, largest_batch_by_search),
                             (grading.check_mlp_activation_bytes, lambda B, T, C, a: 9 * B * T * C * a)]:
            result = check(right, quiet=True)
            assert result, f"seed {seed}: {result.message}"
