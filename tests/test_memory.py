"""Tests for labkit.memory: every formula against the thing it predicts."""
import json
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from labkit.memory import (
    DTYPE_BYTES, AllocationTracer, SavedTensorMeter, current_rss_mb, dtype_bytes, explain_report,
    gpt_activation_bytes, gpt_param_count, kv_cache_bytes, largest_batch_that_fits, megatron_activation_bytes,
    memory_report, mlp_activation_bytes, params_that_fit, peak_rss_mb, saved_tensor_bytes, tensor_bytes,
    training_state_bytes,
)
from labkit.model import GPT, GPTConfig, KVCache, LSTMConfig, LSTMLM

BABY = dict(vocab_size=84, block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False)


def measure_saved(config: GPTConfig, batch: int, seq: int, dtype=torch.float32) -> int:
    """Saved-for-backward bytes of one forward + loss of GPT(config), via the meter."""
    torch.manual_seed(0)
    model = GPT(config).to(dtype)
    idx = torch.randint(0, config.vocab_size, (batch, seq))
    targets = torch.randint(0, config.vocab_size, (batch, seq))
    return saved_tensor_bytes(lambda: model(idx, targets), model)["total_bytes"]


# ----------------------------------------------------------------------------- dtypes

def test_dtype_bytes_names_and_torch_dtypes():
    assert dtype_bytes("fp32") == dtype_bytes("float32") == dtype_bytes(torch.float32) == 4
    assert dtype_bytes("bf16") == dtype_bytes(torch.bfloat16) == dtype_bytes("fp16") == 2
    assert dtype_bytes("int8") == 1 and dtype_bytes("int4") == 0.5
    assert dtype_bytes("torch.float16") == 2 and dtype_bytes("FP32") == 4


def test_bad_dtype_raises_naming_argument_and_allowed():
    with pytest.raises(ValueError, match=r"dtype='fp33'.*fp32"):
        dtype_bytes("fp33")
    with pytest.raises(ValueError, match="param_dtype"):
        training_state_bytes(10, param_dtype="float17")
    with pytest.raises(ValueError, match="grad_dtype"):
        training_state_bytes(10, grad_dtype="nope")
    with pytest.raises(ValueError, match="dtype"):
        kv_cache_bytes(1, 1, 1, 1, dtype="int3")
    assert "int4" in DTYPE_BYTES


# ----------------------------------------------------------------------------- parameters

@st.composite
def gpt_configs(draw, positions=("learned", "sinusoidal"), activations=("gelu",)):
    n_kv_head = draw(st.integers(1, 3))
    n_head = n_kv_head * draw(st.integers(1, 3))
    pos = draw(st.sampled_from(positions))
    # rotary needs an even head_dim (head_dim 2 with RoPE takes PyTorch's math attention path)
    head_dim = 2 * draw(st.integers(1, 3)) if pos == "rotary" else draw(st.integers(1, 4))
    # a head-pruned model: fewer heads of the same width, so n_head·head_dim < n_embd (head_dim explicit)
    pruned_width = draw(st.sampled_from([0, 0, 1, 3]))
    return GPTConfig(
        vocab_size=draw(st.integers(1, 40)), block_size=draw(st.integers(1, 12)),
        n_layer=draw(st.integers(1, 3)), n_head=n_head, n_kv_head=n_kv_head,
        head_dim=head_dim if pruned_width else None,
        n_embd=n_head * head_dim + pruned_width, bias=draw(st.booleans()), positions=pos,
        tie_weights=draw(st.booleans()),
        activation=draw(st.sampled_from(activations)), mlp_hidden=draw(st.one_of(st.none(), st.integers(1, 20))))


ALL_KINDS = dict(positions=("learned", "sinusoidal", "rotary"), activations=("gelu", "relu2", "swiglu"))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(gpt_configs(**ALL_KINDS))
def test_gpt_param_count_equals_model(config):
    assert gpt_param_count(config) == sum(p.numel() for p in GPT(config).parameters())


LLAMA_2_7B = GPTConfig(vocab_size=32000, block_size=4096, n_layer=32, n_head=32, n_embd=4096, positions="rotary",
                       tie_weights=False, activation="swiglu", mlp_hidden=11008)
LLAMA_2_70B = GPTConfig(vocab_size=32000, block_size=4096, n_layer=80, n_head=64, n_kv_head=8, n_embd=8192,
                        positions="rotary", tie_weights=False, activation="swiglu", mlp_hidden=28672)


def test_gpt_param_count_is_llama_2_exactly():
    """The published sizes of LLaMA-2-7B and -70B (what the model cards and the checkpoints hold)."""
    assert gpt_param_count(LLAMA_2_7B) == 6_738_415_616
    assert gpt_param_count(LLAMA_2_70B) == 68_976_648_192
    # the same block with the course's 4x GELU MLP (two C×4C matrices instead of three C×28672) is ~55.6 B:
    # the label "70B" needs the SwiGLU MLP
    gelu_70b = GPTConfig(**{**LLAMA_2_70B.__dict__, "activation": "gelu", "mlp_hidden": None})
    C = 8192
    assert gpt_param_count(LLAMA_2_70B) - gpt_param_count(gelu_70b) == 80 * (3 * C * 28672 - 2 * C * 4 * C)
    assert round(gpt_param_count(gelu_70b) / 1e9, 1) == 55.6


def test_gpt_param_count_gpt2_small_with_biases():
    gpt2 = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, bias=True)
    assert gpt_param_count(gpt2) == 124_439_808       # the Hugging Face "gpt2" checkpoint


def test_gpt_param_count_baby():
    # 84·128 wte + 64·128 wpe + 4 · (2·128 LN + 128·384 qkv + 128·128 proj + 2·128·512 MLP) + 128 ln_f
    assert gpt_param_count(GPTConfig(**BABY)) == 806_528


# ----------------------------------------------------------------------------- training state

def test_adam_fp32_is_16_bytes_per_param():
    s = training_state_bytes(1000, "fp32", "adam")
    assert (s["params"], s["grads"], s["optimizer_state"], s["master_weights"]) == (4000, 4000, 8000, 0)
    assert s["total"] == 16_000 and s["bytes_per_param"] == 16


def test_zero_mixed_precision_is_16_bytes_per_param():
    s = training_state_bytes(1000, "fp16", "adamw", master_weights=True)
    assert s["params"] == 2000 and s["grads"] == 2000
    assert s["master_weights"] + s["optimizer_state"] == 12_000   # ZeRO's K = 12
    assert s["total"] == 16_000


@pytest.mark.parametrize("optimizer, per_param", [("sgd", 8), ("momentum", 12), ("adam8bit", 10)])
def test_other_optimizers(optimizer, per_param):
    assert training_state_bytes(500, "fp32", optimizer)["total"] == 500 * per_param


def test_bf16_adam_without_master_keeps_state_in_bf16():
    assert training_state_bytes(100, "bf16", "adam")["total"] == 100 * (2 + 2 + 4)


def test_bad_optimizer_raises_naming_argument():
    with pytest.raises(ValueError, match=r"optimizer='lion'.*adamw"):
        training_state_bytes(10, optimizer="lion")


# ----------------------------------------------------------------------------- activations

@pytest.mark.parametrize("name, fields, batch, seq, dtype", [
    ("baby 12x64", BABY, 12, 64, torch.float32),
    ("2 layers, C=64, T=32", dict(BABY, n_layer=2, n_embd=64), 12, 32, torch.float32),
    ("MQA n_kv_head=1", dict(BABY, n_kv_head=1), 4, 64, torch.float32),
    ("GQA 8q/2kv, bias, sinusoidal, untied", dict(BABY, n_layer=2, n_head=8, n_kv_head=2, bias=True,
                                                   positions="sinusoidal", tie_weights=False), 4, 48, torch.float32),
    ("dropout (math attention)", dict(BABY, n_layer=2, n_embd=64, dropout=0.1), 4, 64, torch.float32),
    ("bf16", dict(BABY, n_layer=2, n_embd=64), 4, 32, torch.bfloat16),
    ("bf16 + dropout + MQA (fp32 math attention)", dict(BABY, n_layer=2, n_embd=64, n_kv_head=1, dropout=0.2),
     3, 20, torch.bfloat16),
])
def test_activation_formula_matches_measurement(name, fields, batch, seq, dtype):
    config = GPTConfig(**fields)
    measured = measure_saved(config, batch, seq, dtype)
    formula = gpt_activation_bytes(config, batch, seq, dtype)["total"]
    assert abs(formula / measured - 1) < 0.10, (name, formula, measured)
    assert abs(formula / measured - 1) < 0.01, (name, formula, measured)  # derived term by term: near exact


@settings(max_examples=40, deadline=None, derandomize=True)
@given(gpt_configs(**ALL_KINDS), st.integers(1, 3), st.one_of(st.just(1), st.integers(1, 12)),
       st.sampled_from([0.0, 0.1]), st.sampled_from([torch.float32, torch.bfloat16]))
def test_activation_formula_on_random_small_configs(config, batch, seq, dropout, dtype):
    """Exact (to the byte) on random configs: every position kind and MLP, MHA/GQA/MQA, T = 1, one head."""
    config.dropout = dropout
    seq = min(seq, config.block_size)
    measured = measure_saved(config, batch, seq, dtype)
    assert gpt_activation_bytes(config, batch, seq, dtype)["total"] == measured


@pytest.mark.parametrize("n_head, seq_len", [(1, 8), (4, 1), (1, 1)])
@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_activation_formula_exact_for_rotary_with_one_head_or_one_token(n_head, seq_len, activation):
    """With one head or one token the transpose before attn.proj is a view, not a copy: no extra B·T·C term."""
    cfg = GPTConfig(vocab_size=20, block_size=8, n_layer=2, n_head=n_head, n_embd=16, positions="rotary",
                    activation=activation)
    assert gpt_activation_bytes(cfg, 3, seq_len)["total"] == measure_saved(cfg, 3, seq_len)


@pytest.mark.parametrize("n_head, batch_size, seq_len", [(4, 2, 6), (4, 1, 1), (1, 2, 6), (2, 3, 2)])
def test_activation_formula_exact_for_rotary_head_dim_2(n_head, batch_size, seq_len):
    """RoPE on one channel pair per head makes a non-contiguous q: PyTorch's math attention path (H, T > 1)."""
    cfg = GPTConfig(vocab_size=20, block_size=8, n_layer=2, n_head=n_head, n_embd=2 * n_head, positions="rotary")
    terms = gpt_activation_bytes(cfg, batch_size, seq_len)["per_layer_terms"]
    assert ("attention probs" in terms) == (n_head > 1 and seq_len > 1)
    assert gpt_activation_bytes(cfg, batch_size, seq_len)["total"] == measure_saved(cfg, batch_size, seq_len)


def test_swiglu_activation_terms():
    cfg = GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16, activation="swiglu", mlp_hidden=40)
    terms = gpt_activation_bytes(cfg, 2, 8)["per_layer_terms"]
    # gate output, up output, silu output and the product: four N·F tensors (N = 16 tokens, F = 40, fp32)
    assert sum(v for k, v in terms.items() if k.startswith(("silu", "w_up output", "w_down"))) == 4 * 16 * 40 * 4
    assert gpt_activation_bytes(cfg, 2, 8)["total"] == measure_saved(cfg, 2, 8)


def test_activation_formula_structure_and_scaling():
    config = GPTConfig(**BABY)
    a = gpt_activation_bytes(config, 12, 64)
    assert a["total"] == 4 * a["per_layer"] + a["outside_layers"]
    assert a["per_layer"] == sum(a["per_layer_terms"].values())
    # per token, per layer: 16 C floats + 2 LN stats ×2 + one logsumexp per head, in fp32
    assert a["per_layer"] == 12 * 64 * (16 * 128 + 4 + 4) * 4
    # no T×T term without dropout: doubling the batch doubles everything but the loss's 4-byte scalar
    assert gpt_activation_bytes(config, 24, 64)["total"] == 2 * a["total"] - 4
    assert gpt_activation_bytes(config, 12, 64, "bf16")["total"] < a["total"]
    with pytest.raises(ValueError, match="block_size"):
        gpt_activation_bytes(config, 1, 65)


# ----------------------------------------------------------------------------- KV cache

@pytest.mark.parametrize("n_head, n_kv_head, dtype, name", [
    (4, None, torch.float32, "fp32"), (4, 2, torch.float32, "fp32"), (4, 1, torch.float32, "fp32"),
    (8, 1, torch.float16, "fp16"), (8, 4, torch.bfloat16, "bf16"),
])
@pytest.mark.parametrize("batch, tokens", [(1, 64), (3, 17)])
def test_kv_cache_bytes_equals_kvcache(n_head, n_kv_head, dtype, name, batch, tokens):
    config = GPTConfig(**dict(BABY, n_head=n_head, n_kv_head=n_kv_head))
    cache = KVCache(config, batch, tokens, dtype=dtype)
    assert kv_cache_bytes(config.n_layer, config.n_kv_head, config.head_dim, tokens, batch, name) == cache.nbytes
    assert kv_cache_bytes(config.n_layer, config.n_kv_head, config.head_dim, tokens, batch, dtype) == cache.nbytes


def test_kv_cache_mqa_is_n_head_times_smaller():
    mha = kv_cache_bytes(4, 8, 16, 64, 2)
    assert mha == 2 * 4 * 8 * 16 * 4 * 64 * 2
    assert kv_cache_bytes(4, 1, 16, 64, 2) * 8 == mha
    assert kv_cache_bytes(4, 8, 16, 64, 2, "int4") * 8 == mha


# ----------------------------------------------------------------------------- saved-tensor meter

def test_meter_dedups_storages_and_skips_parameters():
    x = torch.randn(1000, requires_grad=True)    # a leaf that requires grad: a "parameter"
    with SavedTensorMeter() as meter:
        y = x.sin()          # saves x -> parameter, not counted
        z = y * y            # saves y twice -> one storage, 4000 bytes
        w = z[:10].exp()     # exp saves its result: a new 40-byte storage
    assert meter.total_bytes == 4000 + 40
    kinds = [r.kind for r in meter.records]
    assert kinds == ["parameter", "activation", "duplicate", "activation"]
    assert [r.op for r in meter.records][:3] == ["sin", "mul", "mul"]
    del y, z, w


def test_meter_counts_two_live_graphs_twice():
    config = GPTConfig(**dict(BABY, n_layer=1, n_embd=32))
    one = measure_saved(config, 2, 16)
    torch.manual_seed(0)
    model = GPT(config)
    idx = torch.randint(0, config.vocab_size, (2, 16))
    tgt = torch.randint(0, config.vocab_size, (2, 16))
    with SavedTensorMeter(model) as meter:
        loss_a = model(idx, tgt)[1]
        loss_b = model(idx, tgt)[1]
    # two graphs, but both saved the SAME idx and targets tensors: those storages count once
    assert meter.total_bytes == 2 * one - (idx.nbytes + tgt.nbytes)
    by_op = meter.by("op")
    assert {"linear", "layer_norm", "scaled_dot_product_attention", "cross_entropy"} <= set(by_op.index)
    assert by_op["bytes"].sum() == meter.total_bytes
    assert "blocks.0.attn.qkv" in set(meter.table()["module"])
    del loss_a, loss_b


# ----------------------------------------------------------------------------- allocation tracer

def test_tracer_hand_written_computation():
    x = torch.ones(256)                           # made before the trace: not recorded
    with AllocationTracer() as tr:
        a = x * 2                                 # step 0: 1024 B
        b = a + 1                                 # step 1: 1024 B
        del a                                     # a freed before step 2
        c = b.view(16, 16)                        # step 2: a view, no allocation
        d = torch.cat([b, b])                     # step 3: 2048 B
        del b, c                                  # b's storage freed (the view held it) before step 4
        e = d.sum()                               # step 4: 4 B
    got = [(ev.size_bytes, ev.born, ev.died, ev.op) for ev in tr.events]
    assert got == [(1024, 0, 2, "aten.mul.Tensor"), (1024, 1, 4, "aten.add.Tensor"),
                   (2048, 3, None, "aten.cat.default"), (4, 4, None, "aten.sum.default")]
    assert tr.n_steps == 5 and tr.ops[2] == "aten.view.default"
    assert tr.live_bytes_timeline() == [1024, 2048, 1024, 3072, 2052]
    assert tr.peak_live_bytes() == 3072
    assert tr.tensors is tr.events
    del d, e
    assert tr.events[2].died is None              # frees after the trace are not recorded


def test_tracer_gpt_peak_covers_saved_activations():
    config = GPTConfig(**dict(BABY, n_layer=2, n_embd=64))
    torch.manual_seed(0)
    model = GPT(config)
    idx = torch.randint(0, config.vocab_size, (4, 32))
    tgt = torch.randint(0, config.vocab_size, (4, 32))
    with AllocationTracer() as tr:
        with SavedTensorMeter(model) as meter:
            _, loss = model(idx, tgt)
        loss.backward()
    saved = meter.total_bytes
    assert saved == gpt_activation_bytes(config, 4, 32)["total"]
    assert tr.peak_live_bytes() >= saved
    assert any(ev.died is not None for ev in tr.events)          # backward frees the saved tensors
    assert any("convolution" in op or "mm" in op for op in tr.ops)


# ----------------------------------------------------------------------------- report

def test_memory_report_gpt_adamw():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**BABY))
    before = model.wte.weight.detach().clone()
    df = memory_report(model, batch_size=4, seq_len=32, optimizer="adamw")
    assert list(df.columns) == ["formula_bytes", "measured_bytes", "ratio", "how_measured"]
    assert list(df.index) == ["params", "grads", "optimizer state", "activations", "kv cache"]
    for row in ("params", "grads", "optimizer state"):
        assert abs(df.loc[row, "ratio"] - 1) < 0.01, row
    assert df.loc["params", "measured_bytes"] == 4 * 806_528
    # AdamW's 0-d float32 `step` per parameter tensor: 27 tensors x 4 B beyond the formula
    assert df.loc["optimizer state", "measured_bytes"] - df.loc["optimizer state", "formula_bytes"] == 27 * 4
    assert abs(df.loc["activations", "ratio"] - 1) < 0.10
    assert df.loc["kv cache", "ratio"] == 1.0
    text = explain_report(df)
    assert "step" in text and "27 tensors" in text and "counted once" in text
    assert torch.equal(model.wte.weight, before) and model.wte.weight.grad is None  # caller's model untouched


def test_memory_report_sgd_and_lstm():
    torch.manual_seed(0)
    df = memory_report(GPT(GPTConfig(**dict(BABY, n_layer=1))), 2, 16, optimizer="sgd")
    assert df.loc["optimizer state", "measured_bytes"] == 0 and df.loc["optimizer state", "ratio"] == 1.0
    assert "match" in explain_report(df)
    df = memory_report(LSTMLM(LSTMConfig(vocab_size=20, n_embd=16, n_hidden=32)), 2, 8, optimizer="momentum")
    assert df.loc["grads", "ratio"] == 1.0 and df.loc["optimizer state", "ratio"] == 1.0
    assert math.isnan(df.loc["activations", "formula_bytes"]) and df.loc["activations", "measured_bytes"] > 0
    assert "no closed formula" in explain_report(df)
    with pytest.raises(ValueError, match="optimizer"):
        memory_report(LSTMLM(LSTMConfig(vocab_size=20)), 2, 8, optimizer="adagrad")


# ----------------------------------------------------------------------------- process memory

def test_rss_grows_with_a_touched_allocation():
    before = current_rss_mb()
    big = torch.ones(16 * 2 ** 20)                # 64 MiB, every page written
    after = current_rss_mb()
    assert after - before > 32
    assert peak_rss_mb() >= after * 0.95
    del big


def test_a_child_of_a_big_parent_reports_its_own_peak_rss():
    """peak_rss_mb in a fresh process started while this one holds 512 MiB: the child's peak, not ours.

    getrusage's ru_maxrss would report at least our RSS (Linux carries it across exec); VmHWM does not."""
    import subprocess
    import sys

    big = torch.ones(128 * 2 ** 20)               # 512 MiB, every page written
    parent_rss = current_rss_mb()
    child = ("import json, resource, sys; from labkit.memory import current_rss_mb, peak_rss_mb; "
             "to_mib = 1024 ** 2 if sys.platform == 'darwin' else 1024; "
             "print(json.dumps([peak_rss_mb(), current_rss_mb(), "
             "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / to_mib]))")
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120, check=True)
    child_peak, child_now, child_ru_maxrss = json.loads(out.stdout.strip().splitlines()[-1])
    del big
    assert child_now <= child_peak < parent_rss - 256, (child_peak, parent_rss)
    if sys.platform.startswith("linux"):  # the inheritance the function avoids, seen by the child
        assert child_ru_maxrss > parent_rss - 256, (child_ru_maxrss, parent_rss)


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
@pytest.mark.parametrize("batch_size, seq_len", [(12, 64), (1, 17)])
def test_activation_formula_exact_for_rotary_relu2_untied(n_kv_head, batch_size, seq_len):
    """The baby preset's choices (ReLU², untied head) and RoPE, with MHA/GQA/MQA: formula == measurement."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=84, positions="rotary", n_kv_head=n_kv_head, activation="relu2", tie_weights=False)
    model = GPT(cfg)
    x, y = torch.randint(84, (batch_size, seq_len)), torch.randint(84, (batch_size, seq_len))
    measured = saved_tensor_bytes(lambda: model(x, y)[1], model=model)["total_bytes"]
    assert measured == gpt_activation_bytes(cfg, batch_size, seq_len)["total"]


@pytest.mark.parametrize("n_kv_head, batch_size, seq_len, n_embd", [(4, 2, 8, 32), (2, 1, 8, 32), (4, 3, 1, 32),
                                                                    (4, 2, 8, 8)])
def test_activation_formula_exact_for_rotary_with_dropout(n_kv_head, batch_size, seq_len, n_embd):
    """Rotary + dropout runs the math attention path (head_dim 2 included): once refused, now derived and exact."""
    cfg = GPTConfig(vocab_size=20, block_size=8, n_layer=2, n_head=4, n_kv_head=n_kv_head, n_embd=n_embd,
                    positions="rotary", dropout=0.1, activation="swiglu")
    assert gpt_activation_bytes(cfg, batch_size, seq_len)["total"] == measure_saved(cfg, batch_size, seq_len)


def test_saved_tensor_meter_does_not_keep_activations_alive_without_backward():
    """Measuring a forward that is never run backward must not leak its saved tensors.

    relu saves its own output; if the meter handed that very tensor back to autograd, the output would
    reference itself through its grad_fn, a cycle gc cannot break, and it would never be freed.
    """
    import gc
    import weakref

    a = torch.randn(1000, requires_grad=True)
    refs = []

    def forward():
        y = torch.relu(a * 2)
        refs.append(weakref.ref(y))
        return y.sum()

    result = saved_tensor_bytes(forward)
    assert result["total_bytes"] >= 4000
    del result
    gc.collect()
    assert refs[0]() is None, "the relu output saved for backward should be freed with its graph"


# ----------------------------------------------------------------------------- contract helpers

def test_tensor_bytes():
    assert tensor_bytes((12, 64, 128), "fp32") == 12 * 64 * 128 * 4 == torch.zeros(12, 64, 128).nbytes
    assert tensor_bytes(torch.Size([3, 5]), torch.bfloat16) == 30
    assert tensor_bytes((3,), "int4") == 2 and tensor_bytes((), "fp32") == 4
    import numpy as np
    assert tensor_bytes((np.int64(2), 3), "fp16") == 12
    with pytest.raises(ValueError, match=r"shape\[1\] must be an integer >= 0, got -1"):
        tensor_bytes((2, -1))
    with pytest.raises(ValueError, match="shape=5"):
        tensor_bytes(5)


def test_params_that_fit():
    assert params_that_fit(16_000, 16) == 1000 and params_that_fit(16_015, 16) == 1000
    assert params_that_fit(10, 0.5) == 20 and params_that_fit(0, 4) == 0
    assert params_that_fit(80 * 2**30, 2) == 42_949_672_960
    with pytest.raises(ValueError, match="bytes_per_param must be a finite number > 0, got 0"):
        params_that_fit(100, 0)
    with pytest.raises(ValueError, match="budget_bytes"):
        params_that_fit(-1, 4)


def test_mlp_activation_bytes_is_the_4x_mlps_terms():
    cfg = GPTConfig(**BABY)
    terms = gpt_activation_bytes(cfg, 12, 64)["per_layer_terms"]
    mlp_terms = sum(v for k, v in terms.items() if "mlp" in k or "GELU" in k)
    assert mlp_activation_bytes(12, 64, 128, 4) == mlp_terms == 9 * 12 * 64 * 128 * 4
    assert mlp_activation_bytes(1, 1, 1, 0.5) == 5
    with pytest.raises(ValueError, match="n_embd"):
        mlp_activation_bytes(1, 1, 0.5, 4)


def test_megatron_activation_bytes_is_the_papers_formula():
    # Korthikanti et al. 2022, eq. 1: per layer s·b·h·(34 + 5·a·s/h) bytes
    for L, h, a, s, b in [(32, 4096, 32, 4096, 1), (96, 12288, 96, 2048, 1), (2, 64, 4, 16, 3)]:
        expected = L * s * b * h * (34 + 5 * a * s / h)
        assert megatron_activation_bytes(L, h, a, s, b) == pytest.approx(expected, rel=1e-12)
        assert isinstance(megatron_activation_bytes(L, h, a, s, b), int)
    assert megatron_activation_bytes(1, 4096, 32, 4096, 1) == 4096 * 4096 * 194   # 34 + 5·32·4096/4096
    with pytest.raises(ValueError, match="n_head must be an integer >= 1"):
        megatron_activation_bytes(1, 64, 0, 16, 1)


def test_megatron_vs_this_cpu_at_llama_7b():
    """The two formulas' assumptions differ most in attention: the paper stores s×s scores, the CPU kernel not."""
    paper = megatron_activation_bytes(32, 4096, 32, 4096, 1)
    cpu = gpt_activation_bytes(LLAMA_2_7B, 1, 4096, "bf16")["total"]
    assert 3 < paper / cpu < 8


def test_largest_batch_that_fits_is_the_boundary():
    cfg = GPTConfig(**BABY)
    state = training_state_bytes(gpt_param_count(cfg), "fp32", "adamw")["total"]
    need = lambda B: state + gpt_activation_bytes(cfg, B, 64)["total"]   # noqa: E731
    for budget in (need(1) - 1, need(1), need(7) + 5, need(300) - 1, 2 * 2**30):
        B = largest_batch_that_fits(cfg, 64, budget)
        assert B == 0 or need(B) <= budget
        assert need(B + 1) > budget
    assert largest_batch_that_fits(cfg, 64, need(1) - 1) == 0
    assert largest_batch_that_fits(cfg, 64, need(7) + 5) == 7
    assert largest_batch_that_fits(cfg, 32, 2**30, dtype="bf16", optimizer="sgd") > \
        largest_batch_that_fits(cfg, 32, 2**30)
    with pytest.raises(ValueError, match="budget_bytes"):
        largest_batch_that_fits(cfg, 64, -5)
    with pytest.raises(ValueError, match="seq_len"):
        largest_batch_that_fits(cfg, 0, 2**30)
