"""labkit.prune: unstructured masks against torch.nn.utils.prune, calibration and Wanda, masks through fine-tuning."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as torch_prune
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import prune
from labkit.model import GPT, GPTConfig, LSTMConfig, LSTMLM


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def small_gpt(seed: int = 0, **overrides) -> GPT:
    """A 2-layer GPT small enough for many tests, with trained-looking (non-uniform) weights."""
    torch.manual_seed(seed)
    fields = dict(vocab_size=30, block_size=16, n_layer=2, n_head=4, n_embd=32, activation="relu2",
                  tie_weights=False)
    model = GPT(GPTConfig(**{**fields, **overrides}))
    with torch.no_grad():  # vary the scale per input column, so Wanda and magnitude disagree
        for layer in prune.prunable_layers(model).values():
            layer.weight.mul_(torch.rand(layer.weight.size(1)) * 2)
    return model.eval()


def calib(model: GPT, n: int = 6, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(model.config.vocab_size, (n, model.block_size), generator=g)


# ----------------------------------------------------------------------------- which layers

def test_prunable_layers_are_the_block_matrices_in_depth_order():
    names = list(prune.prunable_layers(small_gpt()))
    assert names == [f"blocks.{i}.{n}" for i in range(2) for n in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")]
    swiglu = list(prune.prunable_layers(small_gpt(activation="swiglu")))
    assert swiglu[2:5] == ["blocks.0.mlp.w_gate", "blocks.0.mlp.w_up", "blocks.0.mlp.w_down"]
    assert not any("wte" in n or "lm_head" in n or "wpe" in n for n in names + swiglu)


def test_a_model_that_is_not_a_gpt_is_refused():
    with pytest.raises(TypeError, match="model must be a labkit.model.GPT.*LSTMLM"):
        prune.prunable_layers(LSTMLM(LSTMConfig()))
    with pytest.raises(TypeError, match="model must be a labkit.model.GPT"):
        prune.layer_masks(nn.Linear(4, 4), 0.5)


# ----------------------------------------------------------------------------- masks vs torch.nn.utils.prune

def torch_l1_mask(weight: torch.Tensor, amount: float) -> torch.Tensor:
    layer = nn.Linear(1, 1, bias=False)
    layer.weight = nn.Parameter(weight.clone())
    torch_prune.l1_unstructured(layer, "weight", amount=amount)
    return layer.weight_mask.bool()


@pytest.mark.parametrize("shape", [(64, 32), (7, 13), (3, 5, 4), (1, 1)])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.73, 0.99])
def test_magnitude_mask_is_torch_l1_unstructured(shape, sparsity):
    w = torch.randn(shape)
    mask = prune.magnitude_mask(w, sparsity)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert torch.equal(mask, torch_l1_mask(w, sparsity))
    assert int((~mask).sum()) == round(sparsity * w.numel())
    if mask.any() and (~mask).any():  # every kept weight is at least as large as every removed one
        assert w.abs()[mask].min() >= w.abs()[~mask].max()


def test_ties_fall_as_in_torch_and_the_count_stays_exact():
    """The tie rule: torch.topk decides among equal |w| (the same call as l1_unstructured), count is exact.

    On this CPU an all-equal tensor loses its LAST entries; |w| decides, not the sign.
    """
    w = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    mask = prune.magnitude_mask(w, 0.5)
    assert torch.equal(mask, torch_l1_mask(w, 0.5))
    assert mask.tolist() == [True] * 4 + [False] * 4
    # ties only at the threshold: strictly smaller all go, strictly larger all stay, 3 of the five 2s go
    w = torch.tensor([3.0, 2.0, 1.0, 2.0, -2.0, 0.5, 2.0, 4.0, 2.0, 5.0])
    mask = prune.magnitude_mask(w, 0.5)
    assert torch.equal(mask, torch_l1_mask(w, 0.5))
    assert not mask[[2, 5]].any() and mask[[0, 7, 9]].all()
    assert int((~mask[[1, 3, 4, 6, 8]]).sum()) == 3
    # Python's round (half to even) decides the count, as in torch: 0.5 · 5 = 2.5 -> 2
    assert int((~prune.magnitude_mask(torch.arange(5.0), 0.5)).sum()) == 2 == round(2.5)


@given(rows=st.integers(1, 12), cols=st.integers(1, 12), sparsity=st.floats(0, 0.999), seed=st.integers(0, 10 ** 6))
@settings(max_examples=60, deadline=None)
def test_magnitude_mask_removes_exactly_round_sparsity_times_numel(rows, cols, sparsity, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-3, 4, (rows, cols), generator=g).float()  # small integers: many ties
    mask = prune.magnitude_mask(w, sparsity)
    assert int((~mask).sum()) == round(sparsity * w.numel())
    assert torch.equal(mask, torch_l1_mask(w, sparsity))
    assert prune.magnitude_mask(w, 0.0).all()


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9])
def test_row_mask_is_torch_ln_structured_on_rows(sparsity):
    w = torch.randn(24, 10)
    w[3] = w[5].flip(0)  # two rows with the same L1 norm
    layer = nn.Linear(10, 24, bias=False)
    layer.weight = nn.Parameter(w.clone())
    torch_prune.ln_structured(layer, "weight", amount=sparsity, n=1, dim=0)
    mask = prune.row_mask(w, sparsity)
    assert torch.equal(mask, layer.weight_mask.bool())
    assert int((~mask.all(dim=1)).sum()) == round(sparsity * 24)
    assert ((mask.all(dim=1)) | (~mask.any(dim=1))).all()  # whole rows only


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.8])
def test_per_layer_magnitude_masks_are_torch_l1_unstructured_of_each_layer(sparsity):
    model = small_gpt()
    masks = prune.layer_masks(model, sparsity, "magnitude", "layer")
    for name, layer in prune.prunable_layers(model).items():
        assert torch.equal(masks[name], torch_l1_mask(layer.weight.detach(), sparsity)), name


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.8])
def test_global_magnitude_masks_are_torch_global_unstructured(sparsity):
    model = small_gpt()
    masks = prune.layer_masks(model, sparsity, "magnitude", "global")
    reference = copy.deepcopy(model)
    layers = prune.prunable_layers(reference)
    torch_prune.global_unstructured([(layer, "weight") for layer in layers.values()],
                                    pruning_method=torch_prune.L1Unstructured, amount=sparsity)
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(sparsity * total)
    for name, layer in layers.items():
        assert torch.equal(masks[name], layer.weight_mask.bool()), name
    # global ranking lets the layers end at different sparsities
    per_layer = [float((~m).float().mean()) for m in masks.values()]
    assert max(per_layer) - min(per_layer) > 0.05


# ----------------------------------------------------------------------------- random baseline

@pytest.mark.parametrize("scope", prune.SCOPES)
def test_random_masks_remove_the_exact_count_and_depend_on_the_seed(scope):
    model = small_gpt()
    a = prune.layer_masks(model, 0.4, "random", scope, seed=3)
    b = prune.layer_masks(model, 0.4, "random", scope, seed=3)
    c = prune.layer_masks(model, 0.4, "random", scope, seed=4)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)
    if scope == "layer":
        assert all(int((~m).sum()) == round(0.4 * m.numel()) for m in a.values())
    if scope == "row":
        assert all(((~m).sum(dim=1) == round(0.4 * m.size(1))).all() for m in a.values())
    if scope == "global":
        total = sum(m.numel() for m in a.values())
        assert sum(int((~m).sum()) for m in a.values()) == round(0.4 * total)


# ----------------------------------------------------------------------------- calibration and Wanda

def test_calibration_batches_are_seeded_windows_of_the_training_split(corpus):
    batch = prune.calibration_batches(corpus, n_sequences=5, seq_len=20, seed=7)
    assert batch.shape == (5, 20) and batch.dtype == torch.int64
    assert torch.equal(batch, prune.calibration_batches(corpus, 5, 20, seed=7))
    assert not torch.equal(batch, prune.calibration_batches(corpus, 5, 20, seed=8))
    train = torch.from_numpy(corpus.train.astype("int64"))
    windows = train.unfold(0, 20, 1)
    for row in batch:  # every row is a contiguous window of the TRAINING tokens
        assert (windows == row).all(dim=1).any()
    assert torch.equal(prune.calibration_batches(train, 5, 20, seed=7), batch)  # a tensor of tokens works too


def test_calibration_batches_refuse_bad_arguments():
    with pytest.raises(ValueError, match="n_sequences must be an integer >= 1, got 0"):
        prune.calibration_batches(torch.arange(100), 0, 10)
    with pytest.raises(ValueError, match="seq_len=200 is longer than the 100 tokens"):
        prune.calibration_batches(torch.arange(100), 2, 200)
    with pytest.raises(ValueError, match="tokens must be a 1-D sequence of integer token ids"):
        prune.calibration_batches(torch.rand(100), 2, 10)


def test_input_norms_are_the_l2_norms_of_each_layers_input_features():
    model = small_gpt()
    cal = calib(model)
    norms = prune.input_norms(model, cal)
    assert set(norms) == set(prune.prunable_layers(model))
    with torch.no_grad():  # the first layer reads ln_1(token + position embeddings)
        x0 = model.wte(cal) + model.wpe.weight[:cal.size(1)]
        expected = model.blocks[0].ln_1(x0).reshape(-1, 32).norm(dim=0)
        torch.testing.assert_close(norms["blocks.0.attn.qkv"], expected)
        # the MLP's second matrix reads relu(fc(ln_2(x)))², x after the attention
        x1 = x0 + model.blocks[0].attn(model.blocks[0].ln_1(x0))
        hidden = torch.relu(model.blocks[0].mlp.fc(model.blocks[0].ln_2(x1))).square()
        torch.testing.assert_close(norms["blocks.0.mlp.proj"], hidden.reshape(-1, 128).norm(dim=0))


def test_wanda_masks_keep_the_same_count_in_every_row_by_weight_times_input_norm():
    model = small_gpt()
    cal = calib(model)
    masks = prune.layer_masks(model, 0.5, "wanda", "layer", calibration=cal)
    norms = prune.input_norms(model, cal)
    differs = 0
    for name, layer in prune.prunable_layers(model).items():
        mask, w = masks[name], layer.weight.detach()
        assert ((~mask).sum(dim=1) == round(0.5 * w.size(1))).all(), name
        score = w.abs() * norms[name]
        for row in range(w.size(0)):  # within a row, every kept score >= every removed score
            assert score[row][mask[row]].min() >= score[row][~mask[row]].max()
        differs += int((mask != prune.layer_masks(model, 0.5)[name]).sum())
    assert differs > 0  # the input norms change the choice


def test_an_input_feature_that_is_never_active_is_pruned_first_by_wanda():
    w = torch.ones(3, 4) + torch.rand(3, 4)
    norms = torch.tensor([1.0, 0.0, 2.0, 3.0])
    scores = prune.wanda_scores(w, norms)
    assert torch.equal(scores[:, 1], torch.zeros(3))
    mask = prune.nm_mask(w, 3, 4, scores=scores)
    assert not mask[:, 1].any() and mask.sum() == 9


def test_global_wanda_ranks_all_scores_together():
    model = small_gpt()
    cal = calib(model)
    masks = prune.layer_masks(model, 0.6, "wanda", "global", calibration=cal)
    norms = prune.input_norms(model, cal)
    scores = torch.cat([(l.weight.detach().abs() * norms[n]).reshape(-1)
                        for n, l in prune.prunable_layers(model).items()])
    flat = torch.cat([m.reshape(-1) for m in masks.values()])
    assert int((~flat).sum()) == round(0.6 * flat.numel())
    assert scores[flat].min() >= scores[~flat].max()


@pytest.mark.parametrize("bad, error, match", [
    (None, ValueError, "calibration is None"),
    (torch.rand(4, 8), TypeError, "calibration must hold integer token ids.*float32"),
    (torch.zeros(4, 8, dtype=torch.bool), TypeError, "calibration must hold integer token ids.*bool"),
    (torch.zeros(32, dtype=torch.long), ValueError, r"shape \(n_sequences, seq_len\).*\(32,\)"),
    (torch.zeros(2, 17, dtype=torch.long), ValueError, "17 tokens; the model reads at most block_size=16"),
    (torch.full((2, 8), 30), ValueError, r"token ids in \[30, 30\]; allowed: 0 .. vocab_size-1 = 29"),
    (torch.full((2, 8), -1), ValueError, r"token ids in \[-1, -1\]"),
    ([[1, 2]], TypeError, "calibration must be a torch.Tensor"),
])
def test_bad_calibration_is_refused_with_what_is_allowed(bad, error, match):
    model = small_gpt()
    with pytest.raises(error, match=match):
        prune.layer_masks(model, 0.5, "wanda", calibration=bad)
    with pytest.raises(error, match=match):
        prune.head_importance(model, bad)


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5, float("nan"), True, "0.5", None])
def test_sparsity_outside_zero_to_one_is_refused(value):
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        prune.magnitude_mask(torch.randn(4, 4), value)
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        prune.layer_masks(small_gpt(), value)


def test_unknown_method_or_scope_is_refused():
    model = small_gpt()
    with pytest.raises(ValueError, match=r"method='l2'; allowed: \('magnitude', 'wanda', 'random'\)"):
        prune.layer_masks(model, 0.5, method="l2")
    with pytest.raises(ValueError, match=r"scope='matrix'; allowed: \('layer', 'row', 'global'\)"):
        prune.layer_masks(model, 0.5, scope="matrix")


def test_weights_that_have_no_order_are_refused():
    with pytest.raises(TypeError, match="weight must be a floating-point torch.Tensor"):
        prune.magnitude_mask(torch.arange(6), 0.5)
    with pytest.raises(ValueError, match="NaN or infinite"):
        prune.magnitude_mask(torch.tensor([1.0, float("nan")]), 0.5)


# ----------------------------------------------------------------------------- applying masks

def test_apply_masks_zeroes_exactly_the_removed_weights_and_pruned_copy_leaves_the_original():
    model = small_gpt()
    before = {n: l.weight.detach().clone() for n, l in prune.prunable_layers(model).items()}
    masks = prune.layer_masks(model, 0.5)
    pruned = prune.pruned_copy(model, masks)
    for name, layer in prune.prunable_layers(model).items():
        assert torch.equal(layer.weight, before[name])  # untouched
    for name, layer in prune.prunable_layers(pruned).items():
        assert torch.equal(layer.weight[masks[name]], before[name][masks[name]])
        assert (layer.weight[~masks[name]] == 0).all()
    report = prune.sparsity(pruned)
    assert report["blocks.0.attn.qkv"] == round(0.5 * 96 * 32) / (96 * 32)
    assert report["all"] == pytest.approx(0.5, abs=1e-3)
    assert prune.sparsity(model)["all"] == 0.0
    assert prune.apply_masks(model, masks) is model and prune.sparsity(model)["all"] == report["all"]


def test_masks_that_do_not_fit_the_model_are_refused():
    model = small_gpt()
    masks = prune.layer_masks(model, 0.5)
    with pytest.raises(ValueError, match="masks has a layer 'lm_head' the model does not have"):
        prune.apply_masks(model, {"lm_head": torch.ones(30, 32, dtype=torch.bool)})
    with pytest.raises(TypeError, match=r"masks\['blocks.0.mlp.fc'\] must be a bool tensor.*float32"):
        prune.apply_masks(model, {"blocks.0.mlp.fc": masks["blocks.0.mlp.fc"].float()})
    with pytest.raises(ValueError, match=r"masks\['blocks.0.mlp.fc'\] has shape \(128, 31\)"):
        prune.apply_masks(model, {"blocks.0.mlp.fc": masks["blocks.0.mlp.fc"][:, :31]})


# ----------------------------------------------------------------------------- masks through fine-tuning

def tiny_gpt_for(corpus, **overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=corpus.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32,
                         activation="relu2", tie_weights=False, **overrides))


def test_fine_tune_keeps_pruned_weights_exactly_zero_through_adamw_with_weight_decay(corpus):
    model = tiny_gpt_for(corpus)
    masks = prune.layer_masks(model, 0.6)
    start = {n: l.weight.detach().clone() for n, l in prune.prunable_layers(model).items()}
    tuned, result = prune.fine_tune(model, masks, steps=6, lr=1e-2, corpus=corpus, progress=False,
                                    batch_size=4, eval_iters=1, weight_decay=0.1, log=lambda *a: None)
    assert tuned is model and result["iters"] == 6
    for name, layer in prune.prunable_layers(tuned).items():
        w = layer.weight.detach()
        assert (w[~masks[name]] == 0).all(), name                       # pruned: exactly zero
        assert not torch.equal(w[masks[name]], start[name][masks[name]])  # kept: trained
    assert prune.sparsity(tuned)["all"] == pytest.approx(0.6, abs=1e-3)


def test_without_keep_masks_adamw_revives_the_pruned_weights(corpus):
    """The reason keep_masks exists (and proof the test above can fail)."""
    from labkit.train import make_config, train
    model = prune.pruned_copy(tiny_gpt_for(corpus), prune.layer_masks(tiny_gpt_for(corpus), 0.6))
    cfg = make_config("gpt", "baby", max_iters=3, lr=1e-2, warmup_iters=0, eval_interval=0, progress=False,
                      block_size=16, batch_size=4, eval_iters=1)
    train(cfg, model=model, corpus=corpus, log=lambda *a: None)
    assert prune.sparsity(model)["all"] < 0.01


def test_keep_masks_is_an_after_step_hook_that_re_zeroes():
    model = small_gpt()
    masks = prune.layer_masks(model, 0.3)
    hook = prune.keep_masks(masks)
    hook(model)
    assert prune.sparsity(model)["all"] == pytest.approx(0.3, abs=1e-3)
    with pytest.raises(TypeError, match="masks must be a dict"):
        prune.keep_masks([masks])


# ----------------------------------------------------------------------------- one-shot sweep

def test_one_shot_sweep_scores_every_method_scope_and_sparsity(corpus):
    from labkit.evaluate import evaluation_set, score
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=corpus.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16,
                          activation="relu2", tie_weights=False)).eval()
    eval_set = evaluation_set(corpus.val, window=16, every=16)
    cal = prune.calibration_batches(corpus, 4, 16)
    rows = prune.one_shot_sweep(model, eval_set, [0.0, 0.5], calibration=cal, progress=False,
                                measure=lambda m: {"zeros": sum(int((l.weight == 0).sum())
                                                                for l in prune.prunable_layers(m).values())})
    assert [(r["method"], r["scope"], r["sparsity"]) for r in rows] == [
        (m, sc, s) for m in prune.METHODS for sc in ("layer", "global") for s in (0.0, 0.5)]
    dense = score(model, eval_set)
    for r in rows:
        assert r["measured_sparsity"] == pytest.approx(r["sparsity"], abs=1e-3)
        assert r["perplexity"] == pytest.approx(torch.tensor(r["loss"]).exp().item())
        assert r["zeros"] == round(r["measured_sparsity"] * 12 * 16 * 16)  # qkv 48·16 + proj 16·16 + MLP 2·64·16
        assert r["increase"] == pytest.approx(r["loss"] - dense.loss) and r["increase_se"] >= 0
        if r["sparsity"] == 0:
            assert r["loss"] == dense.loss and r["loss_se"] == dense.standard_error and r["increase"] == 0
    wanda = next(r for r in rows if (r["method"], r["scope"], r["sparsity"]) == ("wanda", "layer", 0.5))
    masks = prune.layer_masks(model, 0.5, "wanda", calibration=cal)
    assert wanda["loss"] == score(prune.pruned_copy(model, masks), eval_set).loss
    with pytest.raises(ValueError, match=r"methods='obd'; allowed"):
        prune.one_shot_sweep(model, eval_set, [0.5], methods=["obd"])


def test_precomputed_norms_give_the_same_wanda_masks():
    model = small_gpt()
    cal = calib(model)
    a = prune.layer_masks(model, 0.5, "wanda", calibration=cal)
    b = prune.layer_masks(model, 0.5, "wanda", norms=prune.input_norms(model, cal))
    assert all(torch.equal(a[n], b[n]) for n in a)
    with pytest.raises(ValueError, match="norms must be input_norms"):
        prune.layer_masks(model, 0.5, "wanda", norms={"blocks.0.attn.qkv": torch.ones(32)})


def test_fine_tune_refuses_bad_steps_and_masks_of_another_model(corpus):
    model = tiny_gpt_for(corpus)
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        prune.fine_tune(model, {}, steps=0, corpus=corpus)
    with pytest.raises(ValueError, match=r"masks\['blocks.0.mlp.fc'\] has shape \(64, 32\)"):
        prune.fine_tune(model, {"blocks.0.mlp.fc": torch.ones(64, 32, dtype=torch.bool)}, steps=1, corpus=corpus)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        prune.fine_tune(model, {}, steps=1, lr=-1.0, corpus=corpus)


NEEDS_A_GPT = {
    "input_norms": lambda m: prune.input_norms(m, torch.zeros(1, 4, dtype=torch.long)),
    "apply_masks": lambda m: prune.apply_masks(m, {}),
    "pruned_copy": lambda m: prune.pruned_copy(m, {}),
    "keep_masks": lambda m: prune.keep_masks({})(m),
    "sparsity": lambda m: prune.sparsity(m),
    "head_importance": lambda m: prune.head_importance(m, torch.zeros(1, 4, dtype=torch.long)),
    "channel_importance": lambda m: prune.channel_importance(m, torch.zeros(1, 4, dtype=torch.long)),
    "prune_heads": lambda m: prune.prune_heads(m, 1, torch.zeros(1, 4, dtype=torch.long)),
    "prune_mlp_channels": lambda m: prune.prune_mlp_channels(m, 0.5, torch.zeros(1, 4, dtype=torch.long)),
    "remove_heads": lambda m: prune.remove_heads(m, [[0]]),
    "fine_tune": lambda m: prune.fine_tune(m, {}, steps=1),
    "iterative_prune": lambda m: prune.iterative_prune(m, 0.5, 2, 1),
    "sensitivity_scan": lambda m: prune.sensitivity_scan(m, None, [0.5]),
    "one_shot_sweep": lambda m: prune.one_shot_sweep(m, None, [0.5]),
}


@pytest.mark.parametrize("name", sorted(NEEDS_A_GPT))
def test_every_function_that_needs_a_gpt_says_so(name):
    with pytest.raises(TypeError, match="model must be a labkit.model.GPT.*got LSTMLM"):
        NEEDS_A_GPT[name](LSTMLM(LSTMConfig()))


@given(sparsity=st.floats(0, 0.999), method=st.sampled_from(prune.METHODS), seed=st.integers(0, 100))
@settings(max_examples=25, deadline=None)
def test_global_masks_remove_exactly_round_sparsity_times_all_prunable_weights(sparsity, method, seed):
    model = small_gpt()
    cal = calib(model, n=2)
    masks = prune.layer_masks(model, sparsity, method, "global", calibration=cal, seed=seed)
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(sparsity * total)


def test_row_scope_compares_within_each_output_row_for_every_method():
    model = small_gpt()
    cal = calib(model)
    wanda_layer = prune.layer_masks(model, 0.5, "wanda", "layer", calibration=cal)
    wanda_row = prune.layer_masks(model, 0.5, "wanda", "row", calibration=cal)
    assert all(torch.equal(wanda_layer[n], wanda_row[n]) for n in wanda_layer)  # Wanda's "layer" is per row
    magnitude_row = prune.layer_masks(model, 0.5, "magnitude", "row")
    for name, layer in prune.prunable_layers(model).items():
        w, mask = layer.weight.detach().abs(), magnitude_row[name]
        for row in range(w.size(0)):
            assert int((~mask[row]).sum()) == round(0.5 * w.size(1))
            assert torch.equal(mask[row], prune.magnitude_mask(layer.weight[row], 0.5))
