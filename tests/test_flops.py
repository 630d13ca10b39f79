"""labkit.flops: the counting formulas against PyTorch's own FLOP counter and the real model's tensors."""
import random

import pytest
import torch
import torch.nn as nn

from labkit import flops
from labkit.memory import gpt_param_count, kv_cache_bytes
from labkit.model import ACTIVATIONS, GPT, GPTConfig, KVCache

ACTS = list(ACTIVATIONS)   # gelu, relu2 (4x MLP) and swiglu (three matrices)


def random_configs(n: int, seed: int = 0) -> list[GPTConfig]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        n_head = rng.choice([1, 2, 4])
        head_dim = rng.choice([2, 4, 6])
        fields = dict(vocab_size=rng.choice([5, 11, 17]), block_size=rng.choice([8, 16]), n_layer=rng.choice([1, 2]),
                      n_head=n_head, n_kv_head=rng.choice([d for d in (1, 2, 4) if n_head % d == 0]),
                      n_embd=n_head * head_dim, bias=rng.random() < 0.3,
                      positions=rng.choice(["learned", "sinusoidal", "rotary"]),
                      tie_weights=rng.random() < 0.5, activation=rng.choice(ACTS))
        out.append(GPTConfig(**fields))
    return out


CONFIGS = random_configs(24)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"L{c.n_layer}H{c.n_head}kv{c.n_kv_head}C{c.n_embd}"
                         f"{'-bias' if c.bias else ''}-{c.positions}-{c.activation}{'-tied' if c.tie_weights else ''}")
def test_forward_decode_and_training_flops_match_flop_counter(config):
    """Exact: the formulas give what FlopCounterMode counts on the real model (forward, cached step, backward)."""
    torch.manual_seed(0)
    model = GPT(config).eval()
    B, T = 2, config.block_size
    idx = torch.randint(config.vocab_size, (B, T))
    with torch.no_grad():
        assert flops.counted_flops(lambda: model(idx)) == flops.gpt_forward_flops(config, B, T)["total"]
        # decode: prefill part of the context, then one new token per sequence
        for cached in (1, T // 2, T - 1):
            cache = KVCache(config, B)
            model(idx[:, :cached], cache=cache)
            counted = flops.counted_flops(lambda: model(idx[:, cached:cached + 1], cache=cache))
            assert counted == flops.decode_step_flops(config, cached, batch_size=B)
            assert counted == flops.gpt_forward_flops(config, B, 1, cached_tokens=cached)["total"]
        # without a cache the same step runs the whole context again
        assert flops.counted_flops(lambda: model(idx[:, :T])) == flops.uncached_step_flops(config, T, batch_size=B)
    model.train()
    assert flops.counted_flops(lambda: model(idx, idx)[1].backward()) == flops.gpt_training_flops(config, B, T)


def test_forward_flops_terms_by_hand():
    """Every term for a small config, written out; decode at 0 cached tokens = a one-token prefill."""
    c = GPTConfig(vocab_size=10, block_size=8, n_layer=2, n_head=2, n_kv_head=1, n_embd=8)
    f = flops.gpt_forward_flops(c, batch_size=3, seq_len=5, cached_tokens=2)
    N, S = 15, 7
    assert f["attention projections (qkv, proj)"] == 2 * N * 2 * (8 * (2 + 2) * 4 + 8 * 8)
    assert f["attention scores and weighted sum"] == 2 * 3 * 2 * (2 * 5 * 4 * S + 2 * 5 * S * 4)
    assert f["MLP"] == 2 * N * 2 * (2 * 8 * 32)
    assert f["output head (lm_head)"] == 2 * N * 8 * 10
    assert f["total"] == sum(v for k, v in f.items() if k != "total")
    assert flops.decode_step_flops(c, 0) == flops.gpt_forward_flops(c, 1, 1)["total"]


def test_rules_of_thumb_bracket_the_exact_count():
    """2·N per token and 6·N·D are close to the count when the context is short next to the width."""
    c = GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, tie_weights=False)
    n_matmul = sum(flops.gpt_matmul_params(c).values())
    assert n_matmul == gpt_param_count(c) - 65 * 128 - 64 * 128 - 9 * 128   # minus both tables and the 9 LayerNorms
    assert flops.decode_step_flops(c, 0) == flops.approx_decode_flops(n_matmul) + 4 * 4 * 4 * 32  # + attention on 1 key
    assert flops.approx_training_flops(1000, 7) == 42_000
    assert flops.gpt_training_flops(c, 2, 64) == 3 * flops.gpt_forward_flops(c, 2, 64)["total"]


@pytest.mark.parametrize("config", CONFIGS[:12], ids=lambda c: f"{c.positions}-{'bias' if c.bias else 'nobias'}"
                         f"-{'tied' if c.tie_weights else 'untied'}-kv{c.n_kv_head}")
def test_bytes_read_match_the_real_tensors(config):
    """Weights: every Linear/LayerNorm tensor of the model once, plus only the looked-up rows; cache: KVCache bytes."""
    model = GPT(config)
    B, T, cached = 2, 3, 4
    expected_weights = 0
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.LayerNorm)):
            expected_weights += sum(p.numel() for p in module.parameters(recurse=False))
    rows = 0 if config.tie_weights else min(B * T, config.vocab_size) * config.n_embd
    if config.positions == "learned":
        rows += model.wpe.weight[:T].numel()
    elif config.positions == "sinusoidal":
        rows += model.wpe_table[:T].numel()
    else:
        rows += model.rope_cos[:T].numel() + model.rope_sin[:T].numel()
    got = flops.forward_bytes_read(config, B, T, cached_tokens=cached, dtype="fp32")
    assert got["Linear weights"] + got["LayerNorm scales and biases"] == 4 * expected_weights
    assert got["embedding and position rows"] == 4 * rows
    cache = KVCache(config, B, max_tokens=cached + T)
    assert got["KV cache read"] == cache.nbytes == kv_cache_bytes(config.n_layer, config.n_kv_head, config.head_dim,
                                                                  cached + T, B, "fp32")
    assert got["total"] == sum(v for k, v in got.items() if k != "total")


def test_decode_bytes_dtype_and_cache_dtype():
    c = GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
    fp32 = flops.forward_bytes_read(c, 1, 1, cached_tokens=63)
    bf16 = flops.forward_bytes_read(c, 1, 1, cached_tokens=63, dtype="bf16", cache_dtype="int8")
    assert bf16["Linear weights"] * 2 == fp32["Linear weights"]
    assert bf16["KV cache read"] * 4 == fp32["KV cache read"] == 2 * 4 * 4 * 64 * 32 * 4
    assert flops.decode_step_bytes_read(c, 63) == fp32["total"]
    # a decode step does ~2 FLOPs per weight read: intensity ~0.5 FLOP/byte in fp32, ~1 in bf16
    intensity = flops.arithmetic_intensity(flops.decode_step_flops(c, 63), flops.decode_step_bytes_read(c, 63))
    assert 0.4 < intensity < 0.6


def test_bad_arguments_are_named():
    c = GPTConfig()
    with pytest.raises(ValueError, match=r"seq_len must be an integer >= 1, got 0"):
        flops.gpt_forward_flops(c, 1, 0)
    with pytest.raises(ValueError, match=r"cached_tokens must be an integer >= 0, got -1"):
        flops.decode_step_flops(c, -1)
    with pytest.raises(ValueError, match=r"batch_size must be an integer >= 1, got 1.5"):
        flops.decode_step_bytes_read(c, 3, batch_size=1.5)
    with pytest.raises(ValueError, match="cache_dtype='int3'"):
        flops.forward_bytes_read(c, 1, 1, cache_dtype="int3")
    with pytest.raises(ValueError, match="bytes_read must be > 0"):
        flops.arithmetic_intensity(10, 0)
    with pytest.raises(ValueError, match="repeats must be an integer >= 3"):
        flops.time_calls_ms({"x": lambda: None}, repeats=1)


def test_time_calls_ms_reports_spread_and_restores_threads():
    before = torch.get_num_threads()
    seen = []
    t = flops.time_calls_ms({"a": lambda: seen.append(torch.get_num_threads()), "b": lambda: sum(range(2000))},
                            repeats=5, warmup=1, threads=1)
    assert torch.get_num_threads() == before
    assert set(seen) == {1} and len(seen) == 6
    for stats in t.values():
        assert len(stats["samples_ms"]) == 5
        assert stats["min_ms"] <= stats["q1_ms"] <= stats["median_ms"] <= stats["q3_ms"]
    assert flops.measure_matmul_flops_per_s(n=64, repeats=3) > 0
    assert flops.measure_read_bytes_per_s(n_bytes=2 ** 20, repeats=3) > 0


def test_human_flops():
    assert flops.human_flops(1_627_136) == "1.63 MFLOP"
    assert flops.human_flops(13.5e9) == "13.50 GFLOP"
    assert flops.human_flops(999) == "999 FLOP"


def test_llama2_7b_decode_counts_against_its_parameter_count():
    """At LLaMA-2-7B's real shape: a decode step reads every parameter but the unused token-table rows."""
    c = GPTConfig(vocab_size=32000, block_size=4096, n_layer=32, n_head=32, n_embd=4096, activation="swiglu",
                  mlp_hidden=11008, positions="rotary", tie_weights=False)
    N = gpt_param_count(c)
    assert N == 6_738_415_616
    V, C, hd = 32000, 4096, 128
    got = flops.forward_bytes_read(c, 1, 1, cached_tokens=0, dtype="bf16")
    # all parameters once, except the token table, of which one row is looked up; one rotary cos/sin row
    assert got["total"] == 2 * (N - V * C + C) + 2 * hd + kv_cache_bytes(32, 32, 128, 1, 1, "bf16")
    norms = 65 * C
    assert flops.decode_step_flops(c, 0) == 2 * (N - V * C - norms) + 32 * 32 * 4 * hd   # + attention on one key
