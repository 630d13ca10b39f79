"""Lab 02's check: splitting channels into attention heads."""
import torch

from labkit import grading


def test_split_heads_right_answer_passes(capsys):
    def split_heads(x, n_head):
        B, T, C = x.shape
        return x.view(B, T, n_head, C // n_head).transpose(1, 2)

    result = grading.check_split_heads(split_heads)
    assert result and result.status == grading.PASS
    assert "passed" in capsys.readouterr().out


def test_split_heads_plain_reshape_fails_with_the_example():
    # a typical mistake: reshaping straight to (B, n_head, T, hd) mixes positions and channels
    result = grading.check_split_heads(lambda x, n: x.reshape(x.shape[0], n, x.shape[1], -1), quiet=True)
    assert not result and result.status == grading.FAIL
    assert "into 2 heads" in result.message and "expected" in result.message
    assert "reshaped straight to (B, n_head, T, hd)" in result.message and "transpose(1, 2)" in result.message
    assert "batch 0, head 0, position 1, channel 0: expected" in result.message      # where, in the lab's words


def test_split_heads_wrong_axis_order_fails_on_shape():
    result = grading.check_split_heads(lambda x, n: x.view(x.shape[0], x.shape[1], n, -1), quiet=True)
    assert result.status == grading.FAIL and "returned shape (1, 3, 2, 2), expected shape (1, 2, 3, 2)" in result.message
    assert "the heads must come before time" in result.message


def test_split_heads_channels_in_the_wrong_order_get_a_hint():
    def wrong(x, n):
        B, T, C = x.shape
        return x.view(B, T, C // n, n).permute(0, 3, 1, 2)

    result = grading.check_split_heads(wrong, quiet=True)
    assert result.status == grading.FAIL and "channel c belongs to head c // hd" in result.message


def test_split_heads_returning_none_is_reported():
    # regression: a TypeError escaped the check (the attention example called .transpose on None)
    result = grading.check_split_heads(lambda x, n: None, quiet=True)
    assert result.status == grading.FAIL and "did you forget `return`" in result.message


def test_split_heads_may_not_call_labkits():
    from labkit import model
    result = grading.check_split_heads(lambda x, n: model.split_heads(x, n), quiet=True)
    assert result.status == grading.FAIL and "`labkit.model.split_heads`" in result.message
    result = grading.check_split_heads(lambda x, n: grading.split_heads_reference(x, n), quiet=True)
    assert result.status == grading.FAIL and "split_heads_reference" in result.message


def test_causal_attention_may_not_call_sdpa():
    import torch.nn.functional as F
    result = grading.check_causal_attention(
        lambda q, k, v: F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True)[0], quiet=True)
    assert result.status == grading.FAIL and "scaled_dot_product_attention" in result.message


def test_kv_cache_bytes_hints():
    result = grading.check_kv_cache_bytes(lambda L, h, hd, T, B, a: 16 * L * h * hd * T * B * a, quiet=True)
    assert result.status == grading.FAIL and "bits" in result.message


def test_split_heads_crash_is_reported_not_raised():
    result = grading.check_split_heads(lambda x, n: x.view(-1, n, 7), quiet=True)
    assert result.status == grading.FAIL and "raised RuntimeError" in result.message


def test_split_heads_fallback_returns_reference():
    def split_heads(x, n_head):
        raise NotImplementedError()

    fn = grading.use_or_fallback(split_heads, grading.check_split_heads, grading.split_heads_reference)
    assert fn is grading.split_heads_reference
    x = torch.arange(24.0).view(1, 2, 12)
    assert fn(x, 3).shape == (1, 3, 2, 4)


def test_right_answer_passes_the_hidden_examples_of_many_seeds(monkeypatch):
    from labkit.grading import core
    for seed in range(25):
        monkeypatch.setattr(core, "HIDDEN_SEED", seed)
        result = grading.check_split_heads(lambda x, n: x.view(*x.shape[:2], n, -1).transpose(1, 2), quiet=True)
        assert result, f"seed {seed}: {result.message}"
