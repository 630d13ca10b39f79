"""labkit.model: shapes, loss, causality, KV-cache generation, parameter accounting and config errors."""
from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from labkit import model as model_mod
from labkit.model import (GPT, ConvConfig, ConvLM, GPTConfig, KVCache, LSTMConfig, LSTMLM, SwiGLU, build_model,
                          model_config_dict, sample_next, sinusoidal_positions, split_heads)

pytestmark = pytest.mark.usefixtures("data_dir")

V, BLOCK = 11, 16
GPT_BASE = dict(vocab_size=V, block_size=BLOCK, n_layer=2, n_head=4, n_embd=32)
GPT_VARIANTS = {
    f"{pos}-{'tied' if tied else 'untied'}-{name}": dict(GPT_BASE, positions=pos, tie_weights=tied, n_kv_head=kv)
    for pos, tied, (name, kv) in itertools.product(("learned", "sinusoidal"), (True, False),
                                                   (("mha", None), ("gqa", 2), ("mqa", 1)))
}
GPT_VARIANTS["learned-tied-gqa-bias"] = dict(GPT_BASE, n_kv_head=2, bias=True)
# position kinds / activations added to labkit.model later get the same invariants checked
for _pos in sorted(set(model_mod.POSITION_KINDS) - {"learned", "sinusoidal"}):  # sorted: xdist workers must collect the same order
    GPT_VARIANTS[f"{_pos}-tied-mha"] = dict(GPT_BASE, positions=_pos)
    GPT_VARIANTS[f"{_pos}-untied-gqa"] = dict(GPT_BASE, positions=_pos, tie_weights=False, n_kv_head=2)
for _act in sorted(set(getattr(model_mod, "ACTIVATIONS", ())) - {"gelu"}):
    GPT_VARIANTS[f"learned-tied-mqa-{_act}"] = dict(GPT_BASE, n_kv_head=1, activation=_act)
OTHER_MODELS = {
    "lstm": ("lstm", dict(vocab_size=V, block_size=BLOCK, n_embd=16, n_hidden=24, n_layer=2)),
    "lstm-tied": ("lstm", dict(vocab_size=V, block_size=BLOCK, n_embd=16, n_hidden=24, n_layer=1, tie_weights=True)),
    "conv": ("conv", dict(vocab_size=V, block_size=BLOCK, n_embd=16, n_layer=3, kernel_size=3)),
}
ALL_MODELS = {**{k: ("gpt", v) for k, v in GPT_VARIANTS.items()}, **OTHER_MODELS}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def spread(model: nn.Module, std: float = 0.3) -> nn.Module:
    """Re-initialise every parameter with a wider normal so logits are far from uniform (greedy decoding
    then produces varied tokens, and near-ties that float noise could flip are vanishingly unlikely)."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def make(name: str) -> nn.Module:
    kind, cfg = ALL_MODELS[name]
    return spread(build_model(kind, **cfg))


# ----------------------------------------------------------------------------- forward and loss

@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_shapes_and_loss_is_cross_entropy(name):
    model = make(name)
    x = torch.randint(V, (3, BLOCK))
    y = torch.randint(V, (3, BLOCK))
    logits, loss = model(x, y)
    assert logits.shape == (3, BLOCK, V) and logits.dtype == torch.float32
    assert loss.dim() == 0
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, V), y.reshape(-1)), rtol=0, atol=1e-6)
    logits2, none = model(x)
    assert none is None and torch.equal(logits, logits2)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ALL_MODELS)
def test_causality_future_tokens_do_not_change_earlier_logits(name):
    model = make(name)
    x = torch.randint(V, (2, BLOCK))
    t = 7
    x2 = x.clone()
    x2[:, t] = (x2[:, t] + 1) % V
    x2[:, t + 3:] = (x2[:, t + 3:] + 5) % V
    a, _ = model(x)
    b, _ = model(x2)
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-6)
    assert (a[:, t] - b[:, t]).abs().max() > 1e-3  # the changed position itself does matter


def test_gpt_forward_longer_than_block_size_raises():
    model = GPT(GPTConfig(**GPT_BASE))
    with pytest.raises(ValueError, match=f"block_size={BLOCK}"):
        model(torch.zeros(1, BLOCK + 1, dtype=torch.long))
    cache = KVCache(model.config, 1)
    model(torch.zeros(1, BLOCK - 1, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 2, dtype=torch.long), cache=cache)


# ----------------------------------------------------------------------------- KV cache

@pytest.mark.parametrize("name", GPT_VARIANTS)
def test_cached_step_logits_match_full_forward(name):
    model = make(name)
    x = torch.randint(V, (2, BLOCK))
    full, _ = model(x)
    cache = KVCache(model.config, 2)
    parts = [model(x[:, :5], cache=cache)[0]]
    for t in range(5, BLOCK):
        parts.append(model(x[:, t:t + 1], cache=cache)[0])
    assert cache.length == BLOCK
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=0, atol=1e-4)


def test_kv_cache_rejects_multi_token_chunk_into_nonempty_cache():
    model = GPT(GPTConfig(**GPT_BASE))
    cache = KVCache(model.config, 1)
    model(torch.zeros(1, 3, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="multi-token"):
        model(torch.zeros(1, 2, dtype=torch.long), cache=cache)


@pytest.mark.parametrize("prompt_len, new", [(3, 8), (BLOCK - 2, BLOCK + 9), (BLOCK, 5), (BLOCK + 4, 6)],
                         ids=["short", "past-block-size", "full-prompt", "prompt-longer-than-block"])
@pytest.mark.parametrize("temperature, top_k", [(0.0, None), (1.0, None), (0.7, 4)], ids=["greedy", "sample", "topk"])
@pytest.mark.parametrize("name", ["learned-tied-mha", "sinusoidal-untied-gqa", "learned-untied-mqa",
                                  "sinusoidal-tied-mqa", "learned-tied-gqa-bias",
                                  *sorted(n for n in GPT_VARIANTS if not n.startswith(("learned-", "sinusoidal-")))])
def test_kv_cache_generation_equals_uncached(name, temperature, top_k, prompt_len, new):
    model = make(name)
    idx = torch.randint(V, (2, prompt_len))
    cached = model.generate(idx, new, temperature, top_k, use_cache=True, generator=torch.Generator().manual_seed(5))
    plain = model.generate(idx, new, temperature, top_k, use_cache=False, generator=torch.Generator().manual_seed(5))
    assert cached.shape == (2, prompt_len + new)
    assert torch.equal(cached[:, :prompt_len], idx)
    assert torch.equal(cached, plain)
    assert model.last_cache.max_tokens == BLOCK and model.last_cache.length <= BLOCK


def test_greedy_generation_is_not_degenerate():
    """Guards the test above: with `spread` weights greedy decoding does vary, so equality means something."""
    model = make("learned-tied-mha")
    out = model.generate(torch.randint(V, (2, 4)), 30, temperature=0)
    assert len(set(out[0, 4:].tolist())) > 2


@pytest.mark.parametrize("name", ALL_MODELS)
def test_generate_shapes_determinism_and_training_mode(name):
    model = make(name)
    model.train()
    idx = torch.randint(V, (2, 5))
    a = model.generate(idx, BLOCK + 3, temperature=1.0, generator=torch.Generator().manual_seed(9))
    b = model.generate(idx, BLOCK + 3, temperature=1.0, generator=torch.Generator().manual_seed(9))
    assert a.shape == (2, 5 + BLOCK + 3) and a.dtype == torch.long
    assert torch.equal(a[:, :5], idx) and torch.equal(a, b)
    assert int(a.min()) >= 0 and int(a.max()) < V
    assert model.training  # generate restores the mode it found


@pytest.mark.parametrize("name", ["learned-tied-mha", "sinusoidal-untied-gqa", "lstm", "conv"])
def test_top_k_1_equals_greedy(name):
    model = make(name)
    idx = torch.randint(V, (3, 4))
    greedy = model.generate(idx, 20, temperature=0)
    top1 = model.generate(idx, 20, temperature=1.3, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(greedy, top1)


def test_sample_next_top_k_only_picks_from_the_top_k():
    logits = torch.tensor([[0.0, 5.0, 4.9, -1.0, 4.8]]).repeat(200, 1)
    picks = sample_next(logits, 1.0, 2, torch.Generator().manual_seed(0))
    assert picks.shape == (200, 1)
    assert set(picks.flatten().tolist()) == {1, 2}
    assert torch.equal(sample_next(logits[:1], 0, None), torch.tensor([[1]]))


@pytest.mark.parametrize("kwargs, field", [(dict(temperature=-0.5), "temperature"), (dict(top_k=0), "top_k"),
                                           (dict(top_k=-3), "top_k")])
def test_generate_bad_arguments_raise(kwargs, field):
    model = make("learned-tied-mha")
    with pytest.raises(ValueError, match=field):
        model.generate(torch.zeros(1, 2, dtype=torch.long), 3, **kwargs)


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
@pytest.mark.parametrize("batch, max_tokens", [(1, None), (3, 10)])
def test_kv_cache_nbytes(n_kv_head, batch, max_tokens):
    cfg = GPTConfig(**dict(GPT_BASE, n_layer=3, n_kv_head=n_kv_head))
    cache = KVCache(cfg, batch, max_tokens)
    tokens = max_tokens or cfg.block_size
    assert cache.nbytes == 2 * 3 * batch * n_kv_head * tokens * cfg.head_dim * 4
    half = KVCache(cfg, batch, max_tokens, dtype=torch.float16)
    assert half.nbytes * 2 == cache.nbytes
    assert cache.k.shape == (3, batch, n_kv_head, tokens, cfg.head_dim)


def test_generation_leaves_a_cache_of_the_expected_size():
    model = make("sinusoidal-untied-gqa")
    model.generate(torch.zeros(3, 2, dtype=torch.long), 4)
    c = model.config
    assert model.last_cache.nbytes == 2 * c.n_layer * 3 * c.n_kv_head * c.block_size * c.head_dim * 4


# ----------------------------------------------------------------------------- parameters

@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("n_kv_head", [2, 1])
def test_gqa_saves_exactly_the_smaller_kv_projection(n_kv_head, bias):
    mha = GPT(GPTConfig(**dict(GPT_BASE, bias=bias)))
    fewer = GPT(GPTConfig(**dict(GPT_BASE, bias=bias, n_kv_head=n_kv_head)))
    c = mha.config
    per_layer = 2 * (c.n_head - n_kv_head) * c.head_dim * (c.n_embd + (1 if bias else 0))
    assert mha.num_params() - fewer.num_params() == c.n_layer * per_layer
    assert fewer.blocks[0].attn.qkv.weight.shape == ((c.n_head + 2 * n_kv_head) * c.head_dim, c.n_embd)


def test_gpt_param_count_closed_form():
    c = GPTConfig(**GPT_BASE)
    C, L = c.n_embd, c.n_layer
    per_block = 2 * C + 3 * C * C + C * C + 2 * 4 * C * C  # 2 LayerNorms (no bias), qkv, proj, MLP
    expected = V * C + BLOCK * C + L * per_block + C      # wte (tied head), wpe, blocks, ln_f
    assert GPT(c).num_params() == expected


def test_tied_weights_share_storage_and_count_once():
    tied = GPT(GPTConfig(**GPT_BASE))
    untied = GPT(GPTConfig(**dict(GPT_BASE, tie_weights=False)))
    assert tied.lm_head.weight is tied.wte.weight
    assert tied.lm_head.weight.data_ptr() == tied.wte.weight.data_ptr()
    assert untied.lm_head.weight.data_ptr() != untied.wte.weight.data_ptr()
    assert untied.num_params() - tied.num_params() == V * GPT_BASE["n_embd"]
    with torch.no_grad():
        tied.wte.weight[0, 0] = 42.0
    assert tied.lm_head.weight[0, 0] == 42.0
    lstm = build_model("lstm", vocab_size=V, n_embd=16, n_hidden=24, tie_weights=True)
    assert lstm.lm_head.weight is lstm.wte.weight


def test_sinusoidal_positions_values():
    table = sinusoidal_positions(8, 6)
    assert table.shape == (8, 6)
    assert torch.equal(table[0, 0::2], torch.zeros(3)) and torch.equal(table[0, 1::2], torch.ones(3))
    torch.testing.assert_close(table[3, 0], torch.tensor(math.sin(3.0)))
    torch.testing.assert_close(table[3, 1], torch.tensor(math.cos(3.0)))
    w = 10000 ** (-2 / 6)
    torch.testing.assert_close(table[5, 2], torch.tensor(math.sin(5 * w)))
    torch.testing.assert_close(table[5, 3], torch.tensor(math.cos(5 * w)))
    w = 10000 ** (-4 / 6)
    torch.testing.assert_close(table[7, 4], torch.tensor(math.sin(7 * w)))
    torch.testing.assert_close(table[7, 5], torch.tensor(math.cos(7 * w)))
    odd = sinusoidal_positions(4, 5)
    assert odd.shape == (4, 5) and torch.equal(odd[0], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0]))


def test_sinusoidal_positions_are_a_buffer_not_a_parameter():
    sin = GPT(GPTConfig(**dict(GPT_BASE, positions="sinusoidal")))
    learned = GPT(GPTConfig(**GPT_BASE))
    assert not any("wpe" in n for n, _ in sin.named_parameters())
    assert "wpe_table" in dict(sin.named_buffers())
    assert "wpe_table" not in sin.state_dict()
    assert torch.equal(sin.wpe_table, sinusoidal_positions(BLOCK, GPT_BASE["n_embd"]))
    assert learned.num_params() - sin.num_params() == BLOCK * GPT_BASE["n_embd"]


# ----------------------------------------------------------------------------- ConvLM receptive field

@pytest.mark.parametrize("n_layer, kernel_size", [(3, 3), (4, 2), (2, 4), (1, 3)])
def test_conv_receptive_field_matches_empirical(n_layer, kernel_size):
    model = spread(ConvLM(ConvConfig(vocab_size=V, block_size=32, n_embd=8, n_layer=n_layer,
                                     kernel_size=kernel_size)))
    rf = model.receptive_field
    assert rf == 1 + (kernel_size - 1) * (2 ** n_layer - 1)
    T = rf + 6
    x = torch.randint(V, (1, T))
    base = model(x)[0][0, -1]
    influences = []
    for j in range(T):
        x2 = x.clone()
        x2[0, j] = (x2[0, j] + 1) % V
        influences.append(not torch.equal(model(x2)[0][0, -1], base))
    assert influences.index(True) == T - rf  # the earliest position that still influences the last output
    assert all(influences[T - rf:])        # and every position inside the field does


# ----------------------------------------------------------------------------- configs

@pytest.mark.parametrize("kwargs, field", [
    (dict(n_embd=30, n_head=4), "n_embd"),
    (dict(n_head=4, n_kv_head=3), "n_kv_head"),
    (dict(positions="bogus"), "positions"),
    (dict(n_layer=0), "n_layer"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(dropout=1.0), "dropout"),
    (dict(mlp_hidden=0), "mlp_hidden"),
    (dict(activation="swish"), "activation"),
    # rotary positions rotate channel pairs: an odd head_dim used to pass the config and crash in the forward
    (dict(positions="rotary", n_embd=12, n_head=4), "head_dim"),
    (dict(positions="rotary", n_embd=5, n_head=1), "head_dim"),
])
def test_gpt_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        GPTConfig(**kwargs)


def test_gpt_config_defaults_n_kv_head_to_n_head():
    assert GPTConfig(n_head=8, n_embd=64).n_kv_head == 8
    assert GPTConfig(n_head=8, n_embd=64).head_dim == 8


def test_build_model_and_config_dict():
    for kind, cls in (("gpt", GPT), ("lstm", LSTMLM), ("conv", ConvLM)):
        m = build_model(kind, vocab_size=V, block_size=BLOCK)
        assert type(m) is cls and m.block_size == BLOCK
        d = model_config_dict(m)
        assert d["kind"] == kind and d["vocab_size"] == V
    assert model_config_dict(build_model("gpt", n_head=4, n_kv_head=1, n_embd=32))["n_kv_head"] == 1
    assert isinstance(build_model("lstm").config, LSTMConfig)


def test_build_model_unknown_kind_or_field_raises():
    with pytest.raises(ValueError, match="'rnn'"):
        build_model("rnn")
    with pytest.raises(ValueError, match="n_layers"):
        build_model("gpt", n_layers=3)
    with pytest.raises(ValueError, match="n_head"):
        build_model("conv", n_head=2)


@pytest.mark.parametrize("n_kv_head", [2, 1])
def test_gqa_equals_mha_with_each_kv_head_copied_to_its_query_group(n_kv_head):
    """Query head h must use key/value head h // (n_head / n_kv_head): build the equivalent MHA and compare."""
    gqa = make(f"learned-untied-{'gqa' if n_kv_head == 2 else 'mqa'}")
    mha = GPT(GPTConfig(**dict(GPT_BASE, tie_weights=False))).eval()
    c = gqa.config
    groups, hd = c.n_head // n_kv_head, c.head_dim
    state = dict(gqa.state_dict())
    for i in range(c.n_layer):
        w = state[f"blocks.{i}.attn.qkv.weight"]
        q, k, v = w.split([c.n_head * hd, n_kv_head * hd, n_kv_head * hd])
        expand = lambda t: t.view(n_kv_head, hd, c.n_embd).repeat_interleave(groups, 0).reshape(-1, c.n_embd)
        state[f"blocks.{i}.attn.qkv.weight"] = torch.cat([q, expand(k), expand(v)])
    mha.load_state_dict(state)
    x = torch.randint(V, (2, BLOCK))
    torch.testing.assert_close(mha(x)[0], gqa(x)[0], rtol=0, atol=1e-5)


def test_rotary_odd_head_dim_error_says_what_is_allowed():
    with pytest.raises(ValueError, match=r"positions='rotary'.*n_embd=12, n_head=4 -> head_dim=3.*even"):
        GPTConfig(positions="rotary", n_embd=12, n_head=4)
    GPTConfig(positions="learned", n_embd=12, n_head=4)   # odd head_dim is fine without rotation
    GPT(GPTConfig(positions="rotary", n_embd=16, n_head=4, n_layer=1))(torch.zeros(1, 3, dtype=torch.long))


# ----------------------------------------------------------------------------- split_heads, MLP widths, SwiGLU

def test_split_heads_is_a_view_with_head_h_holding_its_channels():
    x = torch.arange(2 * 3 * 12, dtype=torch.float32).view(2, 3, 12)
    heads = split_heads(x, 4)
    assert heads.shape == (2, 4, 3, 3) and heads.data_ptr() == x.data_ptr()
    for h in range(4):
        assert torch.equal(heads[:, h], x[:, :, 3 * h:3 * h + 3])


def test_mlp_hidden_defaults_and_explicit_width():
    assert GPTConfig(n_embd=64, n_head=4).mlp_hidden == 256                       # GPT-2's 4x
    assert GPTConfig(n_embd=64, n_head=4, activation="relu2").mlp_hidden == 256
    assert GPTConfig(n_embd=96, n_head=4, activation="swiglu").mlp_hidden == 256  # 8·96/3: same params as 4x
    cfg = GPTConfig(n_embd=32, n_head=4, n_layer=1, mlp_hidden=48)
    model = GPT(cfg)
    assert model.blocks[0].mlp.fc.weight.shape == (48, 32) and model.blocks[0].mlp.proj.weight.shape == (32, 48)


def test_swiglu_is_down_of_silu_gate_times_up():
    cfg = GPTConfig(vocab_size=V, block_size=BLOCK, n_embd=32, n_head=4, n_layer=1, activation="swiglu",
                    mlp_hidden=40, bias=True)
    model = spread(GPT(cfg))
    mlp = model.blocks[0].mlp
    assert isinstance(mlp, SwiGLU)
    assert [m.weight.shape for m in (mlp.w_gate, mlp.w_up, mlp.w_down)] == [(40, 32), (40, 32), (32, 40)]
    x = torch.randn(2, 5, 32)
    gate, up = x @ mlp.w_gate.weight.T + mlp.w_gate.bias, x @ mlp.w_up.weight.T + mlp.w_up.bias
    by_hand = (gate * torch.sigmoid(gate) * up) @ mlp.w_down.weight.T + mlp.w_down.bias
    torch.testing.assert_close(mlp(x), by_hand, rtol=1e-5, atol=1e-5)
    # the projection into the residual stream gets GPT-2's depth-scaled init, like attn.proj
    fresh = GPT(dataclasses.replace(cfg, n_layer=8))
    assert abs(fresh.blocks[0].mlp.w_down.weight.std() - 0.02 / 4) < 0.0015   # 0.02 / sqrt(2 · 8 layers)
    assert abs(fresh.blocks[0].mlp.w_up.weight.std() - 0.02) < 0.002


def test_explicit_head_dim_makes_attention_narrower_than_the_residual_stream():
    """A head-pruned model keeps head_dim and has fewer heads: attention width n_head·head_dim < n_embd."""
    cfg = GPTConfig(vocab_size=V, block_size=BLOCK, n_layer=2, n_head=3, n_kv_head=1, n_embd=32, head_dim=8,
                    positions="rotary")
    assert cfg.attn_width == 24
    model = GPT(cfg).eval()
    assert model.blocks[0].attn.proj.weight.shape == (32, 24)
    assert model.blocks[0].attn.qkv.weight.shape == ((3 + 2) * 8, 32)
    x = torch.randint(V, (2, BLOCK))
    full, _ = model(x)
    cache = KVCache(cfg, 2)
    steps = [model(x[:, :1], cache=cache)[0]] + [model(x[:, t:t + 1], cache=cache)[0] for t in range(1, BLOCK)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-4)
    assert GPTConfig(n_embd=30, n_head=4, head_dim=8).head_dim == 8   # n_embd need not divide by n_head then
    with pytest.raises(ValueError, match="head_dim"):
        GPTConfig(n_embd=32, n_head=4, head_dim=0)
