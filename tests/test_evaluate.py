"""labkit.evaluate: one fixed yardstick for n-grams and neural models, its noise, and the compressor baseline."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labkit import evaluate
from labkit.model import LanguageModel, build_model
from labkit.ngram import NGramModel, SparseNGramModel

V = 5
TEXT = torch.randint(0, V, (403,), generator=torch.Generator().manual_seed(0))


class FixedLogits(LanguageModel):
    """A model whose logits for every position are one fixed row: its loss is known by hand."""

    def __init__(self, logits_row: torch.Tensor, block_size: int = 16):
        super().__init__()
        self.block_size = block_size
        self.row = torch.nn.Parameter(logits_row.clone())

    def forward(self, idx, targets=None):
        logits = self.row.expand(*idx.shape, -1)
        return logits, self._loss(logits, targets)


def test_what_is_scored_is_exact():
    ev = evaluate.evaluation_set(TEXT, window=10, lead=3)
    assert ev.n_windows == (403 - 3) // 10 == 40 and ev.n_scored == 400
    assert ev.positions.tolist() == list(range(3, 403))
    assert torch.equal(ev.scored_tokens, TEXT[3:403])
    quarter = evaluate.evaluation_set(TEXT, window=10, lead=3, every=4)
    assert quarter.window_starts.tolist() == [3 + 40 * i for i in range(10)]
    assert quarter.positions[:12].tolist() == list(range(3, 13)) + [43, 44]
    assert "1 in every 4 of its 40 windows" in quarter.name and "100 characters scored" in quarter.describe()
    short = evaluate.evaluation_set(TEXT, window=10, lead=3, n_chars=58)   # 55 characters after the lead: 5 windows
    assert short.n_windows == 5 and short.name.startswith("val[0:58]")


def test_fixed_logits_model_scores_its_hand_computed_loss():
    row = torch.tensor([2.0, 0.0, -1.0, 0.5, 1.0])
    ev = evaluate.evaluation_set(TEXT, window=8, lead=1)
    res = evaluate.score(FixedLogits(row), ev)
    log_p = torch.log_softmax(row, dim=0)                  # the model's one distribution, by hand
    per_char = (-log_p[TEXT[1:1 + ev.n_scored]]).double()  # every scored character: characters 1 .. n_scored
    assert torch.equal(res.token_losses, per_char) and res.loss == per_char.mean().item()   # exactly
    counts = torch.bincount(TEXT[1:1 + ev.n_scored], minlength=V).double()   # the same, from character counts
    assert res.loss == pytest.approx(-(counts * log_p.double()).sum().item() / ev.n_scored, abs=1e-7)
    assert res.token_losses.dtype == torch.float64 and res.token_losses.shape == (ev.n_scored,)
    assert res.window_losses.shape == (ev.n_windows,)


def test_gpt_windows_are_scored_one_by_one_as_by_hand():
    torch.manual_seed(0)
    model = build_model("gpt", vocab_size=V, block_size=8, n_layer=1, n_head=2, n_embd=8)
    ev = evaluate.evaluation_set(TEXT, window=8, lead=2, every=3)
    res = evaluate.score(model, ev, batch_windows=5)
    by_hand = []
    with torch.no_grad():
        for s in ev.window_starts.tolist():      # window reads tokens[s-1 : s+7], predicts tokens[s : s+8]
            logits, _ = model(TEXT[s - 1:s + 7][None])
            by_hand.append(F.cross_entropy(logits[0], TEXT[s:s + 8], reduction="none"))
    by_hand = torch.cat(by_hand).double()
    torch.testing.assert_close(res.token_losses, by_hand, rtol=0, atol=1e-6)
    assert res.loss == pytest.approx(by_hand.mean().item(), abs=1e-7)


def test_scoring_is_deterministic_and_restores_training_mode():
    torch.manual_seed(0)
    model = build_model("lstm", vocab_size=V, block_size=16, n_embd=8, n_hidden=8, n_layer=1)
    model.train()
    ev = evaluate.evaluation_set(TEXT, window=16, every=2)
    a, b = evaluate.score(model, ev), evaluate.score(model, ev, batch_windows=3)
    assert torch.equal(a.token_losses, b.token_losses) and a.loss == b.loss
    assert model.training


def test_ngram_scored_by_the_yardstick_equals_its_own_cross_entropy():
    train = torch.randint(0, V, (2000,), generator=torch.Generator().manual_seed(1))
    for n in (1, 2, 3):
        model = NGramModel.fit(train, n, V, k=0.1)
        ev = evaluate.evaluation_set(TEXT, window=10, lead=4)
        first = ev.lead - (n - 1)
        assert evaluate.score(model, ev).loss == model.cross_entropy(TEXT[first:ev.lead + ev.n_scored])  # exactly
    model = NGramModel.fit(train, 3, V, k=0.1)
    sub = evaluate.evaluation_set(TEXT, window=10, lead=4, every=3)
    windows = [model.cross_entropy(TEXT[s - 2:s + 10]) for s in sub.window_starts.tolist()]
    assert evaluate.score(model, sub).loss == pytest.approx(sum(windows) / len(windows), abs=1e-12)


def test_sparse_and_dense_ngram_agree_on_the_yardstick():
    train = torch.randint(0, V, (3000,), generator=torch.Generator().manual_seed(2))
    ev = evaluate.evaluation_set(TEXT, window=10, lead=4)
    dense = NGramModel.fit(train, 3, V, k=0.05, dtype=torch.float64)
    sparse = SparseNGramModel.fit(train, 3, V, k=0.05)
    torch.testing.assert_close(evaluate.score(sparse, ev).token_losses, evaluate.score(dense, ev).token_losses,
                               rtol=1e-12, atol=1e-12)


def test_noise_estimates():
    w = torch.tensor([1.0, 3.0] * 16, dtype=torch.float64)      # blocks of 2 windows all have mean 2: no noise
    assert evaluate.block_standard_error(w, 2) == 0.0
    blocks = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    w = blocks.repeat_interleave(4)                              # 4 blocks of 4 equal windows
    assert evaluate.block_standard_error(w, 4) == pytest.approx(blocks.std().item() / 2)
    with pytest.raises(ValueError, match="at least 2 blocks"):
        evaluate.block_standard_error(w, 16)
    s = evaluate.seed_spread([2.0, 2.1, 2.2])
    assert s["mean"] == pytest.approx(2.1) and s["std"] == pytest.approx(0.1) and s["range"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        evaluate.seed_spread([2.0])


def test_paired_difference_of_a_model_with_itself_is_zero():
    ev = evaluate.evaluation_set(TEXT, window=4, lead=1)
    a = evaluate.score(FixedLogits(torch.zeros(V)), ev)
    b = evaluate.score(FixedLogits(torch.tensor([1.0, 0, 0, 0, 0])), ev)
    assert evaluate.paired_difference(a, a) == {"difference": 0.0, "standard_error": 0.0}
    d = evaluate.paired_difference(b, a)
    assert d["difference"] == pytest.approx(b.loss - a.loss) and d["standard_error"] > 0
    other = evaluate.score(FixedLogits(torch.zeros(V)), evaluate.evaluation_set(TEXT, window=4, lead=1, every=2))
    with pytest.raises(ValueError, match="same evaluation set"):
        evaluate.paired_difference(a, other)
    assert a.loss == pytest.approx(math.log(V), abs=1e-6) and a.bits_per_char == pytest.approx(math.log2(V), abs=1e-6)


def test_compressor_bits_per_char():
    text = "to be or not to be " * 200
    out = evaluate.compressor_bits_per_char(text)
    assert set(out) == {"bz2 (level 9)", "lzma (preset 9)"}
    import bz2
    assert out["bz2 (level 9)"]["bytes"] == len(bz2.compress(text.encode(), 9))
    assert out["bz2 (level 9)"]["bits_per_char"] == 8 * out["bz2 (level 9)"]["bytes"] / len(text) < 1
    with pytest.raises(ValueError, match="text"):
        evaluate.compressor_bits_per_char("")


@pytest.mark.parametrize("kwargs, match", [
    ({"window": 0}, "window"), ({"every": 0}, "every"), ({"lead": -1}, "lead"),
    ({"n_chars": 10_000}, "n_chars"), ({"window": 500}, "at least"),
])
def test_bad_evaluation_sets(kwargs, match):
    with pytest.raises(ValueError, match=match):
        evaluate.evaluation_set(TEXT, **kwargs)


def test_bad_models_and_contexts():
    ev = evaluate.evaluation_set(TEXT, window=10, lead=1)
    with pytest.raises(TypeError, match="model must be"):
        evaluate.score(object(), ev)
    with pytest.raises(ValueError, match="lead=1"):
        evaluate.score(NGramModel.fit(TEXT, 3, V, k=0.1), ev)
    with pytest.raises(ValueError, match="block_size=4"):
        evaluate.score(FixedLogits(torch.zeros(V), block_size=4), ev)
    with pytest.raises(ValueError, match="tokens"):
        evaluate.evaluation_set(np.zeros(20, dtype=np.float32))
    with pytest.raises(ValueError, match="lead must be >= 1"):
        evaluate.score(FixedLogits(torch.zeros(V)), evaluate.evaluation_set(TEXT, window=10, lead=0))


def test_tie_tolerance_pools_the_seed_variances():
    t = evaluate.tie_tolerance([[1.0, 1.2], [2.0, 2.0, 2.0]])       # variances 0.02 and 0
    assert t["pooled_std"] == pytest.approx(math.sqrt(0.01))
    assert t["tolerance"] == pytest.approx(2 * math.sqrt(2) * 0.1) and t["n_models"] == 2
    assert evaluate.tie_tolerance([[1.0, 1.2]], z=1)["tolerance"] == pytest.approx(math.sqrt(2) * math.sqrt(0.02))
    with pytest.raises(ValueError, match="at least 2 seeds"):
        evaluate.tie_tolerance([[1.0]])
    with pytest.raises(ValueError, match="z must be"):
        evaluate.tie_tolerance([[1.0, 2.0]], z=0)


@pytest.mark.parametrize("dof, p, table", [(1, 0.975, 12.706), (4, 0.975, 2.776), (9, 0.975, 2.262),
                                           (30, 0.975, 2.042), (4, 0.995, 4.604), (1e6, 0.975, 1.960)])
def test_t_quantile_matches_the_printed_t_table(dof, p, table):
    from labkit.evaluate import t_quantile
    assert t_quantile(dof, p) == pytest.approx(table, abs=5e-4)


def test_t_quantile_rejects_bad_input():
    from labkit.evaluate import t_quantile
    for dof in (0, -1, float("nan"), float("inf"), True, "4"):
        with pytest.raises(ValueError, match="dof"):
            t_quantile(dof)
    for p in (0.4, 1.0, 1.5):
        with pytest.raises(ValueError, match="p must"):
            t_quantile(4, p)
