"""labkit.distill: the loss equals a direct torch computation, the teacher cache reproduces live targets exactly
and refuses (or rebuilds) a damaged file, bad input is named. Synthetic corpus and tiny models only."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labkit import distill as D
from labkit.model import build_model
from labkit.train import make_config, train, training_batches

pytestmark = pytest.mark.usefixtures("data_dir")   # every cache goes to a fresh folder, never data/cache/


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def teacher(synthetic_root):
    """A tiny GPT trained 40 steps on the synthetic corpus: confident enough that its soft targets are not uniform."""
    from labkit import data as data_mod
    corpus = data_mod.load_corpus("synthetic", synthetic_root)
    cfg = make_config("gpt", "tiny", max_iters=40, progress=False, seed=7)
    model, _ = train(cfg, corpus=corpus, log=quiet)
    return model.eval()


def student_cfg(**overrides):
    """A smaller student than the teacher (1 layer, 16 dims), few steps."""
    settings = {"max_iters": 6, "eval_interval": 0, "eval_iters": 2, "progress": False, "seed": 0, "batch_size": 4,
                "block_size": 16, "model_args": {"n_layer": 1, "n_head": 2, "n_embd": 16}}
    settings.update(overrides)
    return make_config("gpt", "tiny", **settings)


# ----------------------------------------------------------------------------- the loss, against torch

@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_step_loss_equals_kl_div_and_cross_entropy(teacher, corpus, temperature, alpha):
    """The loss train() sees for a real batch = α·T²·kl_div(log_softmax) + (1−α)·cross_entropy, computed by torch."""
    cfg = student_cfg()
    student = build_model("gpt", vocab_size=corpus.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    x, y = next(training_batches(cfg, corpus))
    loss = D.distillation_step_loss(D.LiveTeacher(teacher), temperature, alpha)(student, x, y, 0)
    s, t = student(x)[0], teacher(x)[0].detach()
    V = s.size(-1)
    soft = F.kl_div(F.log_softmax(s / temperature, -1).view(-1, V), F.log_softmax(t / temperature, -1).view(-1, V),
                    reduction="batchmean", log_target=True) * temperature ** 2
    hard = F.cross_entropy(s.reshape(-1, V), y.reshape(-1))
    torch.testing.assert_close(loss, alpha * soft + (1 - alpha) * hard)
    if alpha == 0.0:   # the limit: ordinary training on the labels, exactly the model's own loss
        torch.testing.assert_close(loss, student(x, y)[1])


@pytest.mark.parametrize("temperature", [1.0, 3.0, 10.0])
def test_soft_gradient_is_T_times_probability_gap(temperature):
    """d(T²·KL)/dz = T·(softmax(z/T) − softmax(v/T)) / N: the T² factor turns the 1/T of the chain rule into T."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(6, 20, generator=g, dtype=torch.float64)
    v = 3 * torch.randn(6, 20, generator=g, dtype=torch.float64)
    rows = D.soft_gradient_norms(z, v, temperatures=(temperature,))
    expected = temperature * (torch.softmax(z / temperature, -1) - torch.softmax(v / temperature, -1)) / 6
    assert rows[0]["grad_norm_t2"] == pytest.approx(expected.norm().item(), rel=1e-9)
    assert rows[0]["grad_norm"] == pytest.approx(expected.norm().item() / temperature ** 2, rel=1e-9)


def test_gradient_scale_with_T_on_a_teacher_s_logits(teacher, corpus):
    """On real logits: without T² the soft gradient falls like 1/T² at large T; with it, it levels off."""
    x, y = next(training_batches(student_cfg(), corpus))
    student = build_model("gpt", vocab_size=corpus.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    rows = D.soft_gradient_norms(student(x)[0].detach().double(), teacher(x)[0].detach().double(),
                                 temperatures=(8.0, 16.0, 32.0), targets=y)
    plain = [r["grad_norm"] for r in rows]
    scaled = [r["grad_norm_t2"] for r in rows]
    assert plain[0] / plain[1] == pytest.approx(4.0, rel=0.1) and plain[1] / plain[2] == pytest.approx(4.0, rel=0.05)
    assert scaled[0] / scaled[1] == pytest.approx(1.0, rel=0.1) and scaled[1] / scaled[2] == pytest.approx(1.0, rel=0.05)
    assert rows[0]["hard_grad_norm"] > 0


# ----------------------------------------------------------------------------- top-k targets

def test_top_k_targets_are_the_teacher_s_distribution_renormalised_over_the_k():
    g = torch.Generator().manual_seed(2)
    logits = 2 * torch.randn(3, 5, 30, generator=g)
    for T in (1.0, 4.0):
        p = torch.softmax(logits / T, -1)
        for k in (1, 5, 30):
            values, ids = D.top_k_logits(logits, k)
            q = torch.softmax(D.dense_logits(values, ids, 30) / T, -1)
            kept = torch.zeros_like(p, dtype=torch.bool).scatter_(-1, ids, True)
            assert torch.all(q[~kept] == 0)                                    # the dropped mass is gone...
            expected = torch.where(kept, p, 0) / torch.where(kept, p, 0).sum(-1, keepdim=True)
            torch.testing.assert_close(q, expected)                            # ...the k kept are scaled to sum to 1
    values, ids = D.top_k_logits(logits, 30)
    torch.testing.assert_close(D.dense_logits(values, ids, 30), logits)       # k = V is the full distribution


def test_uniform_tail_keeps_the_teacher_s_mass_outside_the_top_k():
    """tail="uniform": at T = 1 the top-k probabilities are exactly the teacher's (no renormalisation) and the rest
    keeps its total mass, split evenly; at T > 1 the even split holds at least the true tail mass (Jensen)."""
    g = torch.Generator().manual_seed(3)
    logits = 3 * torch.randn(4, 7, 30, generator=g, dtype=torch.float64)
    k = 5
    values, ids = D.top_k_logits(logits, k)
    dense = D.dense_logits(values, ids, 30, D.tail_logits(logits, ids))
    kept = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, ids, True)
    p, q = torch.softmax(logits, -1), torch.softmax(dense.double(), -1)
    torch.testing.assert_close(q[kept], p[kept], rtol=1e-6, atol=0)
    rest_q = q.masked_fill(kept, 0)
    torch.testing.assert_close(rest_q.sum(-1), p.masked_fill(kept, 0).sum(-1), rtol=1e-6, atol=0)
    assert torch.allclose(rest_q.amax(-1), rest_q.sum(-1) / (30 - k))             # spread evenly
    for T in (2.0, 4.0):
        true_tail = torch.softmax(logits / T, -1).masked_fill(kept, 0).sum(-1)
        assert torch.all(torch.softmax(dense.double() / T, -1).masked_fill(kept, 0).sum(-1) >= true_tail - 1e-6)
    full = D.top_k_logits(logits, 30)
    assert torch.all(D.tail_logits(logits, full.indices) == float("-inf"))      # k = V: no tail


def test_top_k_loss_matches_kl_over_the_renormalised_k(teacher, corpus):
    """KL with −inf outside the top k equals the sum over the k kept tokens only (no nan, finite gradient)."""
    x, y = next(training_batches(student_cfg(), corpus))
    student = build_model("gpt", vocab_size=corpus.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    T, k = 2.0, 4
    loss = D.distillation_step_loss(D.LiveTeacher(teacher, top_k=k), T, alpha=1.0)(student, x, y, 0)
    values, ids = torch.topk(teacher(x)[0].detach(), k)
    p = torch.softmax(values / T, -1)
    log_q = F.log_softmax(student(x)[0] / T, -1).gather(-1, ids)
    torch.testing.assert_close(loss, T ** 2 * (p * (p.log() - log_q)).sum(-1).mean())
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in student.parameters())


def test_top_k_mass_grows_with_k_and_falls_with_T(teacher, corpus):
    x, _ = next(training_batches(student_cfg(), corpus))
    logits = teacher(x)[0].detach()
    m4 = [r["kept_mass"] for r in D.top_k_mass(logits, 4, (1.0, 4.0))]
    m8 = [r["kept_mass"] for r in D.top_k_mass(logits, 8, (1.0, 4.0))]
    assert m8[0] > m4[0] and m4[0] > m4[1] and m8[0] > m8[1]
    assert D.top_k_mass(logits, corpus.vocab_size, (1.0,))[0]["kept_mass"] == pytest.approx(1.0, abs=1e-5)


def test_live_teacher_runs_in_eval_mode_and_restores_the_mode(corpus):
    """A teacher with dropout, left in training mode, still gives one fixed target per batch (dropout off)."""
    noisy = build_model("gpt", vocab_size=corpus.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16,
                        dropout=0.5).train()
    x, _ = next(training_batches(student_cfg(), corpus))
    live = D.LiveTeacher(noisy)
    a, b = live.logits(x, 0), live.logits(x, 1)
    assert torch.equal(a, b) and noisy.training
    assert not torch.equal(noisy(x)[0], noisy(x)[0])   # the same model in training mode is random


# ----------------------------------------------------------------------------- the cache

@pytest.mark.parametrize("top_k,value_dtype,tail", [(None, "fp32", "drop"), (None, "fp16", "drop"), (5, "fp16", "drop"),
                                                    (5, "fp32", "drop"), (5, "fp16", "uniform")])
def test_cache_reproduces_live_targets_exactly_and_bytes_match_the_formula(teacher, corpus, top_k, value_dtype, tail):
    cfg = student_cfg(max_iters=5)
    cache = D.teacher_cache(teacher, cfg, corpus, top_k=top_k, value_dtype=value_dtype, tail=tail, progress=False)
    live = D.LiveTeacher(teacher, top_k=top_k, value_dtype=value_dtype, tail=tail)
    for it, (x, _) in enumerate(training_batches(cfg, corpus)):
        assert torch.equal(cache.logits(x, it), live.logits(x, it))
    if (top_k, value_dtype) == (None, "fp32"):   # full fp32: exactly what the teacher computes in training
        x, _ = next(training_batches(cfg, corpus))
        assert torch.equal(cache.logits(x, 0), teacher(x)[0].detach())
    formula = D.cache_bytes(5, cfg.batch_size, cfg.block_size, corpus.vocab_size, top_k, value_dtype, tail)
    assert cache.file_bytes == formula["total"] and cache.target_nbytes == formula["targets"]
    V, vb = corpus.vocab_size, {"fp32": 4, "fp16": 2}[value_dtype]
    expected = V * vb if top_k is None else top_k * (vb + 1) + (vb if tail == "uniform" else 0)
    assert D.target_bytes_per_token(V, top_k, value_dtype, tail) == expected
    assert formula["targets"] == 5 * cfg.batch_size * cfg.block_size * expected


def test_training_from_the_cache_equals_training_live(teacher, corpus):
    """Same student weights, bit for bit, whether the teacher runs every step or is read from the cache."""
    cfg = student_cfg(max_iters=4)
    live, _ = D.distill(cfg, teacher, 2.0, 0.5, corpus=corpus, log=quiet)
    cache = D.teacher_cache(teacher, cfg, corpus, value_dtype="fp32", progress=False)
    cached, result = D.distill(cfg, teacher, 2.0, 0.5, targets=cache, corpus=corpus, log=quiet)
    assert all(torch.equal(a, b) for a, b in zip(live.state_dict().values(), cached.state_dict().values()))
    assert "cached teacher" in result["targets"]


def test_cache_is_built_once_then_only_read(teacher, corpus):
    cfg = student_cfg(max_iters=3)
    first = D.teacher_cache(teacher, cfg, corpus, top_k=3, progress=False)
    mtime = first.path.stat().st_mtime_ns
    again = D.teacher_cache(teacher, cfg, corpus, top_k=3, progress=False)
    assert again.path == first.path and again.path.stat().st_mtime_ns == mtime
    record = json.loads(first.path.with_suffix(".json").read_text())
    assert record["sha256"] == D.data_mod.sha256_file(first.path) and record["top_k"] == 3
    assert not list(first.path.parent.glob(".*.tmp"))   # no temporary file left behind


def test_corrupted_cache_is_refused_or_rebuilt_never_used(teacher, corpus):
    cfg = student_cfg(max_iters=3)
    cache = D.teacher_cache(teacher, cfg, corpus, value_dtype="fp32", progress=False)
    path = cache.path
    del cache
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF                    # one flipped byte in the middle of the logits
    path.write_bytes(bytes(raw))
    with pytest.raises(D.CacheCorrupt, match="sha256"):
        D.teacher_cache(teacher, cfg, corpus, value_dtype="fp32", on_corrupt="error", progress=False)
    rebuilt = D.teacher_cache(teacher, cfg, corpus, value_dtype="fp32", progress=False)
    live = D.LiveTeacher(teacher)
    for it, (x, _) in enumerate(training_batches(cfg, corpus)):
        assert torch.equal(rebuilt.logits(x, it), live.logits(x, it))
    path.with_suffix(".json").write_text("{not json")   # a damaged record: also rebuilt
    with pytest.raises(ValueError, match="unreadable"):
        D.teacher_cache(teacher, cfg, corpus, value_dtype="fp32", on_corrupt="error", progress=False)
    assert D.teacher_cache(teacher, cfg, corpus, value_dtype="fp32", progress=False).n_steps == 3


def test_cache_refuses_batches_it_was_not_built_for(teacher, corpus):
    cache = D.teacher_cache(teacher, student_cfg(max_iters=3, seed=0), corpus, progress=False)
    with pytest.raises(ValueError, match="not the one this teacher cache was built for"):
        D.distill(student_cfg(max_iters=3, seed=1), teacher, targets=cache, corpus=corpus, log=quiet)
    with pytest.raises(ValueError, match="outside this cache"):
        D.distill(student_cfg(max_iters=4, seed=0), teacher, targets=cache, corpus=corpus, log=quiet)


def test_cache_of_another_teacher_is_another_file(teacher, corpus):
    cfg = student_cfg(max_iters=2)
    other = build_model("gpt", **teacher.config.__dict__)
    a = D.teacher_cache(teacher, cfg, corpus, progress=False)
    b = D.teacher_cache(other, cfg, corpus, progress=False)
    assert a.path != b.path
    with pytest.raises(ValueError, match="another teacher"):
        D.distill(cfg, teacher, targets=b, corpus=corpus, log=quiet)
    with pytest.raises(ValueError, match="another model"):
        D.distill(cfg, teacher, targets=D.LiveTeacher(other), corpus=corpus, log=quiet)


# ----------------------------------------------------------------------------- students

@pytest.mark.parametrize("kind", ["lstm", "conv"])
def test_any_course_model_can_be_the_student(teacher, corpus, kind):
    cfg = make_config(kind, "tiny", max_iters=3, eval_interval=0, eval_iters=2, progress=False, block_size=16)
    student, result = D.distill(cfg, teacher, temperature=2.0, alpha=0.7, corpus=corpus, log=quiet)
    assert type(student).__name__ in ("LSTMLM", "ConvLM") and math.isfinite(result["val_loss"])
    assert result["temperature"] == 2.0 and result["alpha"] == 0.7


def test_compare_students_same_init_same_batches_only_the_loss_differs(teacher, corpus):
    from labkit.evaluate import evaluation_set
    cfg = student_cfg(max_iters=5)
    ev = evaluation_set(corpus.val, window=16, every=8, n_chars=20_000)
    rows = D.compare_students(cfg, teacher, seeds=(0, 1), temperature=2.0, alpha=0.5, eval_set=ev, corpus=corpus,
                              train_fraction=0.1)
    assert [(r["seed"], r["student"]) for r in rows] == [(0, "labels only"), (0, "distilled"),
                                                          (1, "labels only"), (1, "distilled")]
    assert len({r["params"] for r in rows}) == 1 and all(r["train_chars"] == round(0.1 * len(corpus.train))
                                                         for r in rows)
    assert rows[0]["val_loss"] != rows[1]["val_loss"]
    summary = D.summarize_comparison(rows)
    assert summary["gap"]["per_seed"] == pytest.approx([rows[1]["val_loss"] - rows[0]["val_loss"],
                                                        rows[3]["val_loss"] - rows[2]["val_loss"]])
    # alpha = 0 is labels-only training: the same numbers up to float rounding (labkit's hand-written cross-entropy
    # against F.cross_entropy), a thousand times closer than the alpha = 0.5 student
    same = D.compare_students(cfg, teacher, seeds=(0,), alpha=0.0, eval_set=ev, corpus=corpus, train_fraction=0.1)
    assert abs(same[0]["val_loss"] - same[1]["val_loss"]) < 1e-6
    assert abs(rows[0]["val_loss"] - rows[1]["val_loss"]) > 1e-3


def test_sweep_reads_one_cache_per_seed_and_trains_labels_only_once(teacher, corpus, monkeypatch):
    from labkit.evaluate import evaluation_set
    built = []
    real = D._write_cache
    monkeypatch.setattr(D, "_write_cache", lambda *a, **k: built.append(a[1].seed) or real(*a, **k))
    ev = evaluation_set(corpus.val, window=16, every=8, n_chars=20_000)
    rows = D.distillation_sweep(student_cfg(max_iters=3), teacher, temperatures=(1.0, 4.0), alphas=(0.0, 0.5),
                                seeds=(0, 1), top_k=4, eval_set=ev, corpus=corpus)
    assert built == [0, 1]
    assert [(r["seed"], r["temperature"], r["alpha"]) for r in rows] == [
        (0, None, 0.0), (0, 1.0, 0.5), (0, 4.0, 0.5), (1, None, 0.0), (1, 1.0, 0.5), (1, 4.0, 0.5)]
    assert len({round(r["val_loss"], 9) for r in rows}) == 6


def test_cached_results_computed_once_and_recomputed_when_edited(data_dir):
    calls = []

    def compute():
        calls.append(1)
        return [{"seed": 0, "val_loss": 2.5}]

    settings = {"steps": 3, "seeds": [0]}
    assert D.cached_results("sweep", settings, compute) == [{"seed": 0, "val_loss": 2.5}]
    assert D.cached_results("sweep", settings, compute) == [{"seed": 0, "val_loss": 2.5}] and len(calls) == 1
    D.cached_results("sweep", {"steps": 4, "seeds": [0]}, compute)             # other settings: computed again
    assert len(calls) == 2
    (path,) = [p for p in D.cache_folder().glob("results-sweep-*.json")
               if json.loads(json.loads(p.read_text())["key"])["settings"] == settings]
    path.write_text(path.read_text().replace("2.5", "1.5"))                     # an edited number
    assert D.cached_results("sweep", settings, compute) == [{"seed": 0, "val_loss": 2.5}] and len(calls) == 3
    with pytest.raises(ValueError, match="name"):
        D.cached_results("../x", settings, compute)
    with pytest.raises(TypeError, match="JSON"):
        D.cached_results("sweep", {"model": object()}, compute)


# ----------------------------------------------------------------------------- what soft targets carry

def test_soft_targets_and_dark_knowledge(teacher, corpus):
    tok = corpus.tokenizer
    val_bytes = np.asarray(corpus.val).tobytes()
    pairs = D.real_contexts(corpus.val, n=3, length=20, seed=1)
    for ids, nxt in pairs:   # each context is followed by its next character somewhere in the text
        assert len(ids) == 20 and np.append(ids.numpy(), nxt).astype(np.uint8).tobytes() in val_bytes
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(pairs, D.real_contexts(corpus.val, 3, 20, seed=1)))
    text = tok.decode(np.asarray(corpus.val[:40]).tolist())
    table = D.soft_targets(teacher, tok, text[:-1], temperatures=(1.0, 4.0))
    np.testing.assert_allclose(table.sum().to_numpy(), 1.0, rtol=1e-5)
    entropy = -(table * np.log(table)).sum()
    assert entropy["T=4"] > entropy["T=1"]                    # a higher T spreads the mass
    rows = D.dark_knowledge(teacher, tok, text[:-1], text[-1], n=3)
    assert [r["rank"] for r in rows] == [1, 2, 3] and text[-1] not in [r["char"] for r in rows]
    probs = [r["probability"] for r in rows]
    assert probs == sorted(probs, reverse=True)
    assert probs[0] == pytest.approx(table.drop(index=text[-1])["T=1"].max(), rel=1e-5)


def test_cache_options_table_formula_equals_measured(teacher, corpus):
    rows = D.cache_options_table(teacher, student_cfg(max_iters=2), corpus,
                                 options=((None, "fp32"), (None, "fp16"), (4, "fp16"), (4, "fp16", "uniform")))
    V = corpus.vocab_size
    assert [r["bytes_per_token"] for r in rows] == [4 * V, 2 * V, 4 * 3, 4 * 3 + 2]
    assert all(r["formula_bytes"] == r["file_bytes"] and r["formula_target_bytes"] == r["target_nbytes"]
               for r in rows)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "2", True])
def test_bad_temperature(teacher, corpus, bad):
    with pytest.raises(ValueError, match="temperature"):
        D.distillation_step_loss(D.LiveTeacher(teacher), temperature=bad)
    with pytest.raises(ValueError, match="temperature"):
        D.distill(student_cfg(), teacher, temperature=bad, corpus=corpus, log=quiet)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), None])
def test_bad_alpha(teacher, corpus, bad):
    with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\]"):
        D.distill(student_cfg(), teacher, alpha=bad, corpus=corpus, log=quiet)


@pytest.mark.parametrize("bad", [0, -3, 10_000, 2.5, True])
def test_bad_top_k(teacher, corpus, bad):
    with pytest.raises(ValueError, match="top_k"):
        D.teacher_cache(teacher, student_cfg(), corpus, top_k=bad, progress=False)
    with pytest.raises(ValueError, match="top_k"):
        D.LiveTeacher(teacher, top_k=bad)


def test_different_vocabularies_are_refused(teacher, corpus):
    other = build_model("gpt", vocab_size=corpus.vocab_size + 1, block_size=16, n_layer=1, n_head=2, n_embd=16)
    with pytest.raises(ValueError, match="share one vocabulary.*43.*44|share one vocabulary"):
        D.distill(student_cfg(), teacher, model=other, corpus=corpus, log=quiet)
    with pytest.raises(ValueError, match="share one vocabulary"):
        D.distill(student_cfg(), other, corpus=corpus, log=quiet)   # a teacher over another alphabet than the corpus
    with pytest.raises(ValueError, match="share one vocabulary"):
        D.teacher_cache(other, student_cfg(), corpus, progress=False)


def test_other_bad_input(teacher, corpus):
    with pytest.raises(ValueError, match="value_dtype"):
        D.teacher_cache(teacher, student_cfg(), corpus, value_dtype="int8", progress=False)
    with pytest.raises(ValueError, match="tail"):
        D.teacher_cache(teacher, student_cfg(), corpus, top_k=4, tail="spread", progress=False)
    with pytest.raises(ValueError, match="tail"):
        D.LiveTeacher(teacher, top_k=4, tail=None)
    with pytest.raises(ValueError, match="on_corrupt"):
        D.teacher_cache(teacher, student_cfg(), corpus, on_corrupt="ignore", progress=False)
    with pytest.raises(ValueError, match="longer than the teacher's context"):
        D.distill(student_cfg(block_size=64, model_args={"n_layer": 1, "n_head": 2, "n_embd": 16}), teacher,
                  corpus=corpus, log=quiet)
    with pytest.raises(ValueError, match="fraction"):
        D.corpus_fraction(corpus, 0.0)
    with pytest.raises(TypeError, match="targets"):
        D.distill(student_cfg(), teacher, targets="cache", corpus=corpus, log=quiet)
    for bad_seeds in ((), 3, ("0",), (-1,)):
        with pytest.raises(ValueError, match="seeds"):
            D.compare_students(student_cfg(), teacher, seeds=bad_seeds, corpus=corpus)
    with pytest.raises(ValueError, match="seeds"):
        D.distillation_sweep(student_cfg(), teacher, seeds=[], corpus=corpus)
    with pytest.raises(ValueError, match="alpha"):
        D.distillation_sweep(student_cfg(), teacher, alphas=(0.5, 2.0), corpus=corpus)
    with pytest.raises(ValueError, match="next_char"):
        D.dark_knowledge(teacher, corpus.tokenizer, "abc", "xy")
