"""labkit.prune: N:M masks, structured pruning into a smaller GPT, iterative pruning and the sensitivity scan."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import prune
from labkit.evaluate import evaluation_set, score
from labkit.memory import gpt_param_count
from labkit.model import GPT, GPTConfig


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def small_gpt(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    fields = {"vocab_size": 30, "block_size": 16, "n_layer": 2, "n_head": 4, "n_embd": 32, "activation": "relu2",
              "tie_weights": False}
    return GPT(GPTConfig(**{**fields, **overrides})).eval()


def same_weights(a: GPT, b: GPT) -> bool:
    """Whether two models hold the same tensors under the same names."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def calib(model: GPT, n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randint(model.config.vocab_size, (n, model.block_size), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- N:M

def test_nm_mask_keeps_the_two_largest_of_every_four():
    w = torch.tensor([[0.1, -0.9, 0.5, 0.2, 3.0, 2.0, -1.0, 0.0]])
    assert prune.nm_mask(w, 2, 4).tolist() == [[False, True, True, False, True, True, False, False]]
    assert prune.nm_mask(w, 1, 2).tolist() == [[False, True, True, False, True, False, True, False]]


@given(rows=st.integers(1, 6), groups=st.integers(1, 6), m=st.integers(1, 8), data=st.data())
@settings(max_examples=60, deadline=None)
def test_nm_mask_keeps_exactly_n_of_every_m_and_the_largest_ones(rows, groups, m, data):
    n = data.draw(st.integers(0, m))
    w = torch.randn(rows, groups * m, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 999))))
    mask = prune.nm_mask(w, n, m)
    per_group = mask.view(rows, groups, m)
    assert (per_group.sum(dim=2) == n).all()
    mags = w.abs().view(rows, groups, m)
    if 0 < n < m:  # within each group every kept |w| >= every removed |w|
        kept_min = mags.masked_fill(~per_group, float("inf")).min(dim=2).values
        removed_max = mags.masked_fill(per_group, -1.0).max(dim=2).values
        assert (kept_min >= removed_max).all()


@pytest.mark.parametrize("n, m, match", [
    (3, 2, "n=3 must be <= m=2"),
    (2, 3, r"m=3 must divide the row length \(in_features=8\)"),
    (-1, 4, "n must be an integer >= 0, got -1"),
    (2, 0, "m must be an integer >= 1, got 0"),
    (2.0, 4, "n must be an integer >= 0, got 2.0"),
])
def test_nm_mask_refuses_impossible_patterns(n, m, match):
    with pytest.raises(ValueError, match=match):
        prune.nm_mask(torch.randn(4, 8), n, m)


def test_nm_mask_needs_a_matrix():
    with pytest.raises(ValueError, match=r"weight must be a 2-D tensor, got shape \(8,\)"):
        prune.nm_mask(torch.randn(8))


def test_nm_layer_masks_cover_every_layer_with_half_the_weights():
    model = small_gpt()
    for method in ("magnitude", "wanda"):
        masks = prune.nm_layer_masks(model, 2, 4, method=method, calibration=calib(model))
        assert set(masks) == set(prune.prunable_layers(model))
        assert prune.sparsity(prune.pruned_copy(model, masks))["all"] == 0.5


# ----------------------------------------------------------------------------- structured: heads

ATTENTION = {"MHA": {}, "GQA": {"n_kv_head": 2}, "MQA": {"n_kv_head": 1}}


def zero_heads(model: GPT, heads: list[list[int]]) -> None:
    """Silence query heads: zero their columns of attn.proj (their output then adds nothing)."""
    hd = model.config.head_dim
    with torch.no_grad():
        for block, removed in zip(model.blocks, heads, strict=True):
            for h in removed:
                block.attn.proj.weight[:, h * hd:(h + 1) * hd] = 0


@pytest.mark.parametrize("kind", sorted(ATTENTION))
def test_removing_silent_heads_leaves_the_logits_unchanged_and_shrinks_the_model(kind):
    model = small_gpt(**ATTENTION[kind])
    silent = {"MHA": [[1, 3], [0, 2]], "GQA": [[1, 2], [0, 3]], "MQA": [[0, 2], [1, 3]]}[kind]
    zero_heads(model, silent)
    x = calib(model, n=3, seed=5)
    importance = prune.head_importance(model, calib(model))
    assert importance.shape == (2, 4)
    for layer, removed in enumerate(silent):  # silent heads score exactly 0, the others more
        assert (importance[layer, removed] == 0).all() and (importance[layer] > 0).sum() == 2
    smaller = prune.prune_heads(model, 2, calib(model))
    c = smaller.config
    assert (c.n_head, c.head_dim, c.n_embd) == (2, 8, 32)
    assert c.n_kv_head == {"MHA": 2, "GQA": 2, "MQA": 1}[kind]
    assert smaller.num_params() == gpt_param_count(c) < model.num_params()
    assert smaller.blocks[0].attn.proj.weight.shape == (32, 16)
    torch.testing.assert_close(smaller(x)[0], model(x)[0], rtol=1e-5, atol=1e-6)
    # the explicit form gives the same model
    explicit = prune.remove_heads(model, silent)
    assert same_weights(explicit, smaller)


def test_mha_head_removal_takes_keys_and_values_with_it():
    model = small_gpt()
    smaller = prune.remove_heads(model, [[0], [3]])
    assert smaller.config.n_kv_head == 3
    hd = 8
    qkv, new = model.blocks[0].attn.qkv.weight, smaller.blocks[0].attn.qkv.weight
    assert new.shape == (3 * 3 * hd, 32)
    torch.testing.assert_close(new[:3 * hd], qkv[hd:4 * hd])                      # q of heads 1, 2, 3
    torch.testing.assert_close(new[3 * hd:6 * hd], qkv[5 * hd:8 * hd])            # k of heads 1, 2, 3
    torch.testing.assert_close(new[6 * hd:], qkv[9 * hd:12 * hd])                 # v of heads 1, 2, 3


def test_gqa_keeps_every_key_value_head_and_removes_query_heads_evenly():
    model = small_gpt(n_head=8, n_embd=32, n_kv_head=2)  # groups of 4 query heads per key/value head
    smaller = prune.prune_heads(model, 4, calib(model))
    assert (smaller.config.n_head, smaller.config.n_kv_head) == (4, 2)
    with pytest.raises(ValueError, match=r"n_remove=3 must be a multiple of n_kv_head=2.*allowed: \[0, 2, 4, 6\]"):
        prune.prune_heads(model, 3, calib(model))
    with pytest.raises(ValueError, match=r"removes \[2, 0\] query heads from the 2 key/value groups"):
        prune.remove_heads(model, [[0, 1], [0, 1]])


@pytest.mark.parametrize("n_remove, match", [
    (4, "n_remove=4 must be smaller than n_head=4"),
    (-1, "n_remove must be an integer >= 0, got -1"),
    (1.5, "n_remove must be an integer >= 0, got 1.5"),
])
def test_prune_heads_refuses_impossible_counts(n_remove, match):
    model = small_gpt()
    with pytest.raises(ValueError, match=match):
        prune.prune_heads(model, n_remove, calib(model))


@pytest.mark.parametrize("heads, match", [
    ([[4], [0]], r"heads\[0\] names heads \[4\] that do not exist; layer 0 has heads 0..3"),
    ([[0], [-1]], r"heads\[1\] names heads \[-1\] that do not exist"),
    ([[0, 1, 2, 3], [0, 1, 2, 3]], "removes all 4 heads of a layer"),
    ([[0], [0, 1]], r"the same number of heads from every layer.*\[1, 2\]"),
    ([[0]], "heads must be a list of 2 lists"),
    ([[1, 1], [0, 2]], r"heads\[0\] names a head twice"),
])
def test_remove_heads_refuses_heads_that_do_not_exist(heads, match):
    with pytest.raises(ValueError, match=match):
        prune.remove_heads(small_gpt(), heads)


def test_zero_heads_removed_gives_a_copy_with_the_same_weights():
    model = small_gpt()
    same = prune.prune_heads(model, 0, calib(model))
    assert same is not model and same.config == model.config
    assert same_weights(same, model)


# ----------------------------------------------------------------------------- structured: MLP channels

@pytest.mark.parametrize("activation", ["relu2", "gelu", "swiglu"])
@pytest.mark.parametrize("bias", [False, True])
def test_removing_silent_channels_leaves_the_logits_unchanged(activation, bias):
    model = small_gpt(activation=activation, bias=bias, tie_weights=True, mlp_hidden=96)
    hidden = model.config.mlp_hidden
    silent = [list(range(0, hidden, 4)), list(range(1, hidden, 4))]  # a quarter of each layer
    with torch.no_grad():
        for block, removed in zip(model.blocks, silent, strict=True):
            (block.mlp.w_down if activation == "swiglu" else block.mlp.proj).weight[:, removed] = 0
    importance = prune.channel_importance(model, calib(model))
    assert [imp.shape for imp in importance] == [(hidden,), (hidden,)]
    for imp, removed in zip(importance, silent, strict=True):
        assert (imp[removed] == 0).all() and (imp > 0).sum() == hidden - len(removed)
    smaller = prune.prune_mlp_channels(model, 0.25, calib(model))
    assert smaller.config.mlp_hidden == hidden - len(silent[0])
    assert smaller.num_params() == gpt_param_count(smaller.config) < model.num_params()
    x = calib(model, n=3, seed=5)
    torch.testing.assert_close(smaller(x)[0], model(x)[0], rtol=1e-5, atol=1e-6)
    explicit = prune.remove_mlp_channels(model, silent)
    assert same_weights(explicit, smaller)


def test_channel_importance_is_activation_norm_times_column_norm():
    model = small_gpt()
    cal = calib(model)
    hidden = prune.input_norms(model, cal)["blocks.1.mlp.proj"]
    expected = hidden * model.blocks[1].mlp.proj.weight.detach().norm(dim=0)
    torch.testing.assert_close(prune.channel_importance(model, cal)[1], expected)


def test_prune_mlp_channels_refuses_removing_everything():
    model = small_gpt()
    with pytest.raises(ValueError, match=r"fraction must be a number in \[0, 1\)"):
        prune.prune_mlp_channels(model, 1.0, calib(model))
    with pytest.raises(ValueError, match="removes all 128 MLP channels"):
        prune.prune_mlp_channels(model, 0.999, calib(model))
    with pytest.raises(ValueError, match=r"channels\[0\] names channels \[128\] that do not exist"):
        prune.remove_mlp_channels(model, [[128], [0]])


def test_heads_and_channels_together_count_as_the_formula_says():
    model = small_gpt(positions="rotary", n_kv_head=2)
    smaller = prune.prune_mlp_channels(prune.prune_heads(model, 2, calib(model)), 0.5, calib(model))
    assert (smaller.config.n_head, smaller.config.mlp_hidden, smaller.config.head_dim) == (2, 64, 8)
    assert smaller.num_params() == gpt_param_count(smaller.config)
    smaller(calib(model))  # and it runs


def test_compare_forward_time_reports_both_models_and_restores_threads():
    a, b = small_gpt(), prune.prune_heads(small_gpt(), 2, calib(small_gpt()))
    before = torch.get_num_threads()
    timing = prune.compare_forward_time(a, b, calib(a), repeats=5)
    assert torch.get_num_threads() == before
    assert timing["repeats"] == 5 and timing["threads"] == 1
    for key in ("a", "b"):
        assert 0 < timing[key]["q1_ms"] <= timing[key]["median_ms"] <= timing[key]["q3_ms"]
    assert timing["b_over_a"] == pytest.approx(timing["b"]["median_ms"] / timing["a"]["median_ms"])
    with pytest.raises(ValueError, match="repeats must be an integer >= 1, got 0"):
        prune.compare_forward_time(a, b, calib(a), repeats=0)


# ----------------------------------------------------------------------------- iterative pruning, sensitivity

def test_cubic_schedule_of_zhu_and_gupta_ends_at_the_target():
    cubic = prune.sparsity_schedule(0.8, 4)
    assert cubic == pytest.approx([0.8 * (1 - (1 - r / 4) ** 3) for r in (1, 2, 3, 4)])
    assert cubic[-1] == pytest.approx(0.8) and cubic[0] > 0.8 / 4  # front-loaded
    assert prune.sparsity_schedule(0.8, 4, "linear") == pytest.approx([0.2, 0.4, 0.6, 0.8])
    with pytest.raises(ValueError, match=r"schedule='exp'; allowed: \('cubic', 'linear'\)"):
        prune.sparsity_schedule(0.8, 4, "exp")
    with pytest.raises(ValueError, match=r"target must be a number in \[0, 1\)"):
        prune.sparsity_schedule(1.0, 4)


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_iterative_prune_reaches_the_target_and_never_revives_a_weight(corpus, method):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=corpus.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16,
                          activation="relu2", tie_weights=False))
    original = {k: v.clone() for k, v in model.state_dict().items()}
    cal = prune.calibration_batches(corpus, 4, 16)
    eval_set = evaluation_set(corpus.val, window=16, every=16, name="val")
    pruned, masks, history = prune.iterative_prune(model, 0.5, rounds=3, steps_per_round=2, method=method,
                                                   calibration=cal, corpus=corpus, eval_set=eval_set,
                                                   progress=False, log=lambda *a: None)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in original.items())  # the original is untouched
    assert [row["round"] for row in history] == [1, 2, 3] and history[-1]["steps"] == 6
    assert [row["target_sparsity"] for row in history] == pytest.approx(prune.sparsity_schedule(0.5, 3))
    assert [row["sparsity"] for row in history] == sorted(row["sparsity"] for row in history)
    assert prune.sparsity(pruned)["all"] == pytest.approx(0.5, abs=0.01)
    for name, layer in prune.prunable_layers(pruned).items():
        assert (layer.weight[~masks[name]] == 0).all()
    assert history[-1]["loss"] == pytest.approx(score(pruned, eval_set).loss)
    assert history[-1]["loss_se"] > 0


def test_sensitivity_scan_prunes_one_layer_at_a_time_and_restores_it(corpus):
    model = small_gpt(vocab_size=corpus.vocab_size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    eval_set = evaluation_set(corpus.val, window=16, every=16, name="val")
    layers = ["blocks.0.attn.qkv", "blocks.1.mlp.fc"]
    rows = prune.sensitivity_scan(model, eval_set, [0.0, 0.5, 0.9], layers=layers, progress=False)
    assert [(r["layer"], r["sparsity"]) for r in rows] == [(n, s) for n in layers for s in (0.0, 0.5, 0.9)]
    dense = score(model, eval_set).loss
    assert rows[0]["loss"] == dense and rows[3]["loss"] == dense  # sparsity 0 is the dense model
    one_layer = prune.pruned_copy(model, {"blocks.1.mlp.fc": prune.magnitude_mask(model.blocks[1].mlp.fc.weight, 0.9)})
    assert rows[5]["loss"] == score(one_layer, eval_set).loss
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert rows[5]["increase"] == pytest.approx(rows[5]["loss"] - dense)
    assert rows[0]["increase"] == 0 and rows[0]["increase_se"] == 0
    assert 0 < rows[5]["increase_se"] < rows[5]["loss_se"]  # paired: the windows' own difficulty cancels
    with pytest.raises(ValueError, match=r"layers \['lm_head'\] are not prunable layers"):
        prune.sensitivity_scan(model, eval_set, [0.5], layers=["lm_head"])
    with pytest.raises(ValueError, match=r"sparsities must be a number in \[0, 1\)"):
        prune.sensitivity_scan(model, eval_set, [0.5, 1.0])


def test_scans_refuse_something_that_is_not_an_evaluation_set():
    model = small_gpt()
    for call in (lambda: prune.sensitivity_scan(model, [1, 2, 3], [0.5]),
                 lambda: prune.one_shot_sweep(model, "val", [0.5]),
                 lambda: prune.iterative_prune(model, 0.5, 2, 1, eval_set=object())):
        with pytest.raises(TypeError, match="eval_set must be a labkit.evaluate.EvalSet"):
            call()
    too_long = evaluation_set(torch.arange(200) % 30, window=32, every=1)
    with pytest.raises(ValueError, match="eval_set.window=32 is longer than the model's block_size=16"):
        prune.sensitivity_scan(model, too_long, [0.5])
    with pytest.raises(TypeError, match="b must be a torch.nn.Module"):
        prune.compare_forward_time(model, None, calib(model))


def test_iterative_prune_hands_its_settings_to_every_rounds_fine_tune(corpus, monkeypatch):
    """eval_iters (or any TrainConfig field) reaches each round's train(); an unknown one is refused by name."""
    model = GPT(GPTConfig(vocab_size=corpus.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16,
                          activation="relu2", tie_weights=False))
    seen, real = [], prune.fine_tune

    def recording(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(prune, "fine_tune", recording)
    prune.iterative_prune(model, 0.5, rounds=2, steps_per_round=1, corpus=corpus, eval_iters=1, batch_size=2,
                          progress=False, log=lambda *a: None)
    assert len(seen) == 2 and all(k["eval_iters"] == 1 and k["batch_size"] == 2 for k in seen)
    monkeypatch.setattr(prune, "fine_tune", real)
    with pytest.raises((TypeError, ValueError), match="no_such_setting"):
        prune.iterative_prune(model, 0.5, rounds=2, steps_per_round=1, corpus=corpus, no_such_setting=3,
                              progress=False, log=lambda *a: None)
