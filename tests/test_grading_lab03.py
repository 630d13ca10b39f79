"""Lab 03 self-checks: a right answer passes, a typical wrong one fails with a message.

(That a stub reads 'not yet solved' is tested for every check at once in test_grading.py.)"""
import pytest
import torch

from labkit import grading
from labkit.memory import SavedTensorMeter, gpt_activation_bytes, gpt_param_count
from labkit.model import GPT, MLP, GPTConfig


# ---- gpt_param_count ------------------------------------------------------------------------

def param_count_by_hand(config):
    C, V, hd = config.n_embd, config.vocab_size, config.head_dim
    count = V * C + (config.block_size * C if config.positions == "learned" else 0)
    per_layer = 2 * C + C * (config.n_head + 2 * config.n_kv_head) * hd + C * C + 8 * C * C
    return count + config.n_layer * per_layer + C + (0 if config.tie_weights else V * C)


def test_param_count_right_answer_passes():
    assert grading.check_gpt_param_count(param_count_by_hand, quiet=True)
    assert grading.check_gpt_param_count(gpt_param_count, quiet=True)


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


