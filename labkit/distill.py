"""Knowledge distillation (lab 06): a small student learns from a big teacher's soft targets.

    teacher, _ = zoo.load("baby-gpt")                                   # 4 layers, 128 dims, 817k parameters
    cfg = make_config("gpt", "baby", max_iters=300, model_args=dict(n_layer=2, n_head=4, n_embd=64))
    student, result = distill(cfg, teacher, temperature=2.0, alpha=0.5)  # teacher run on the fly, every step
    cache = teacher_cache(teacher, cfg, top_k=8)                         # or: its logits cached once, top 8 only,
    student, result = distill(cfg, teacher, targets=cache)               # and read back from a memory-mapped file
    table = compare_students(cfg, teacher, seeds=(0, 1, 2))              # labels only vs distilled, same steps/seeds

The loss (Hinton, Vinyals and Dean 2015, "Distilling the Knowledge in a Neural Network") is
labkit.losses.distillation_loss:

    loss = alpha · T² · KL(softmax(teacher / T) || softmax(student / T))  +  (1 − alpha) · CE(student, labels)

so alpha is the weight of the SOFT (teacher) term: alpha = 0 is ordinary training on the labels, alpha = 1
learns from the teacher alone. The paper writes the same mix as a weighted average of the two objectives
and found a much lower weight on the hard (label) term worked best; its soft term is the cross-entropy
with the soft targets, which differs from this KL by the teacher's entropy, a constant: same gradient. T > 1 softens both distributions so
the small probabilities the teacher gives to wrong characters (its "dark knowledge") carry weight; the
soft term's gradient shrinks like 1/T², and the T² factor puts it back.

There is ONE training loop, labkit.train.train: distillation is only a different per-step loss
(`loss_fn`), so the student sees exactly the batches, schedule and evaluation a labels-only student sees.
Because train's batches are a deterministic function of the corpus, cfg.seed, batch_size and block_size,
the teacher's logits for a whole run can be computed once and cached (full logits in fp32 or fp16, or
only the top k per position: renormalised over the k, or with the rest of the mass kept as one "tail"
logit) in labkit's data cache with a sha256 beside them; every step checks that the batch it trains on
is the one the cache was built for. One cache serves every T and alpha (the logits do not depend on them).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from labkit import data as data_mod
from labkit.losses import distillation_loss, kl_divergence
from labkit.model import LanguageModel, model_config_dict
from labkit.train import TrainConfig, train, training_batches

CACHE_FORMAT = 1
VALUE_DTYPES = {"fp32": np.float32, "fp16": np.float16}   # how a cached logit is stored
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
TAILS = ("drop", "uniform")   # what a top-k target does with the teacher's probability outside its k
STUDENT_KINDS = ("labels only", "distilled")


# ---------------------------------------------------------------------------------------------
# Checking inputs: each bad value is named, with what is allowed


def check_temperature(temperature) -> float:
    """`temperature` as a float if it is a finite number > 0, else ValueError."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) \
            or not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0 (T = 1 is the plain softmax), got {temperature!r}")
    return float(temperature)


def check_alpha(alpha) -> float:
    """`alpha` as a float if it is in [0, 1] (the weight of the soft, teacher term), else ValueError."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not (0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be a number in [0, 1] (the weight of the soft, teacher term; "
                         f"1 - alpha weighs the labels), got {alpha!r}")
    return float(alpha)


def check_top_k(top_k, vocab_size: int) -> int | None:
    """`top_k` if it is None (full logits) or an integer in [1, vocab_size], else ValueError."""
    if top_k is None:
        return None
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or not 1 <= top_k <= vocab_size:
        raise ValueError(f"top_k must be None (keep all {vocab_size} logits) or an integer in [1, {vocab_size}] "
                         f"(the vocabulary size), got {top_k!r}")
    return int(top_k)


def check_value_dtype(value_dtype) -> str:
    if value_dtype not in VALUE_DTYPES:
        raise ValueError(f"value_dtype={value_dtype!r}; allowed: {sorted(VALUE_DTYPES)}")
    return value_dtype


def check_tail(tail) -> str:
    if tail not in TAILS:
        raise ValueError(f"tail={tail!r}; allowed: 'drop' (renormalise over the top k) or 'uniform' (keep the rest "
                         "of the mass, spread evenly over the other tokens)")
    return tail


def vocab_size_of(model: LanguageModel) -> int:
    """The number of tokens `model` predicts over (the size of its output layer)."""
    if not isinstance(model, LanguageModel):
        raise TypeError(f"expected a labkit LanguageModel (GPT, LSTMLM, ConvLM), got {type(model).__name__}")
    return int(model.config.vocab_size)


def check_same_vocabulary(teacher: LanguageModel, student: LanguageModel | None = None,
                          corpus: data_mod.Corpus | None = None) -> int:
    """The shared vocabulary size; ValueError if teacher, student and corpus do not share one vocabulary.

    Compared by size: a model does not record which characters its ids stand for (the corpus does), so two
    alphabets of equal size would pass; every course model is trained on the course corpus's vocabulary.
    """
    v_teacher = vocab_size_of(teacher)
    sizes = {"student": vocab_size_of(student) if student is not None else None,
             "corpus": corpus.vocab_size if corpus is not None else None}
    for who, v in sizes.items():
        if v is not None and v != v_teacher:
            raise ValueError(f"teacher and {who} must share one vocabulary (a soft target is a distribution over "
                             f"the same characters): the teacher predicts {v_teacher} tokens, the {who} has {v}")
    return v_teacher


# ---------------------------------------------------------------------------------------------
# Teacher targets: dense logits (B, T, V) for the loss, computed live or read from a cache


def top_k_logits(logits: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
    """The k largest logits of each position and their token ids: (values (..., k), indices (..., k))."""
    check_top_k(top_k, logits.size(-1))
    return torch.topk(logits, top_k, dim=-1, sorted=True)


def tail_logits(logits: Tensor, indices: Tensor) -> Tensor:
    """One logit (...,) per position that, given to each of the V − k tokens outside the top k, keeps their total mass.

    r = log( mean over the other tokens of exp(logit) ): (V − k)·exp(r) = sum of exp over them, so at T = 1 the
    teacher's probability outside its top k is kept exactly (only its split among those tokens becomes even).
    At T > 1 the even split slightly over-states the tail (the mean of exp(l/T) is at most exp(r/T)).
    """
    V, k = logits.size(-1), indices.size(-1)
    if k == V:
        return torch.full(logits.shape[:-1], float("-inf"))
    rest = logits.float().scatter(-1, indices, float("-inf"))       # the top k removed
    return torch.logsumexp(rest, dim=-1) - math.log(V - k)


def dense_logits(values: Tensor, indices: Tensor | None, vocab_size: int, tail: Tensor | None = None) -> Tensor:
    """Float32 logits (..., vocab_size) from stored ones: top-k values put back at their ids, the rest filled in.

    tail None ("drop"): the other tokens get −inf, so softmax(dense / T) is the teacher's distribution at
    temperature T RENORMALISED over its top k: the probability it puts outside its top k is dropped (those
    tokens get target probability 0, which KL(teacher || student) skips) and the k kept probabilities are
    scaled up to sum to 1. tail (...,) ("uniform"): the other tokens all get that logit (see tail_logits).
    """
    values = values.float()
    if indices is None:
        return values
    if tail is None:
        out = torch.full((*values.shape[:-1], vocab_size), float("-inf"))
    else:
        out = tail.float()[..., None].expand(*values.shape[:-1], vocab_size).clone()
    return out.scatter_(-1, indices.long(), values)


class LiveTeacher:
    """Teacher targets computed on the fly: one forward pass of the teacher (eval mode, no grad) per step.

    With `value_dtype="fp16"` and/or `top_k` (and `tail`), the logits are rounded / cut exactly as a cache of
    that kind would store them, so a cache can be checked against this, value for value.
    """

    def __init__(self, teacher: LanguageModel, top_k: int | None = None, value_dtype: str = "fp32",
                 tail: str = "drop"):
        self.teacher = teacher
        self.vocab_size = vocab_size_of(teacher)
        self.top_k = check_top_k(top_k, self.vocab_size)
        self.value_dtype = check_value_dtype(value_dtype)
        self.tail = check_tail(tail)

    @torch.no_grad()
    def stored(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """What a cache stores for batch x: values (B, T, V or k) in value_dtype, ids (B, T, k) or None, and
        the tail logit (B, T) in value_dtype (top-k with tail="uniform") or None."""
        was_training = self.teacher.training
        self.teacher.eval()  # no dropout: the teacher's targets are a fixed function of x
        logits, _ = self.teacher(x)
        self.teacher.train(was_training)
        dtype = TORCH_DTYPES[self.value_dtype]
        if self.top_k is None:
            return logits.to(dtype), None, None
        values, indices = top_k_logits(logits, self.top_k)
        tail = tail_logits(logits, indices).to(dtype) if self.tail == "uniform" else None
        return values.to(dtype), indices, tail

    def logits(self, x: Tensor, it: int) -> Tensor:
        """Teacher logits (B, T, V) float32 for batch x of step `it` (outside the top k: −inf, or the tail logit)."""
        return _dense(self.stored(x), self.vocab_size)

    def describe(self) -> str:
        return f"live teacher ({_describe_format(self.top_k, self.value_dtype, self.tail)})"


def _dense(stored: tuple[Tensor, Tensor | None, Tensor | None], vocab_size: int) -> Tensor:
    values, indices, tail = stored
    return dense_logits(values, indices, vocab_size, tail)


def _describe_format(top_k: int | None, value_dtype: str, tail: str) -> str:
    if top_k is None:
        return f"full logits, {value_dtype}"
    rest = "renormalised over the k" if tail == "drop" else "the rest of the mass spread evenly"
    return f"top-{top_k} logits, {value_dtype}, {rest}"


# ---------------------------------------------------------------------------------------------
# The batches train() will draw, and a fingerprint of each to check that a cache matches them


def batch_fingerprint(x: Tensor) -> int:
    """A 63-bit hash of a batch of token ids (same ids, same shape → same number)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(np.asarray(x.shape, dtype=np.int64).tobytes())
    h.update(x.to(torch.int64).contiguous().numpy().tobytes())
    return int.from_bytes(h.digest(), "little") >> 1


def _model_fingerprint(model: LanguageModel) -> str:
    """sha256 of a model's config and weights: the cache of one teacher never serves another."""
    h = hashlib.sha256(json.dumps(model_config_dict(model), sort_keys=True).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def _corpus_fingerprint(corpus: data_mod.Corpus) -> str:
    return hashlib.sha256(np.ascontiguousarray(corpus.train).tobytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Bytes of each way of storing the teacher's outputs


def index_dtype(vocab_size: int) -> np.dtype:
    """The smallest integer type that holds every token id: uint8 up to 256 tokens, int16 up to 32,768."""
    if vocab_size <= 256:
        return np.dtype(np.uint8)
    if vocab_size <= 32768:
        return np.dtype(np.int16)
    return np.dtype(np.int32)


def target_bytes_per_token(vocab_size: int, top_k: int | None = None, value_dtype: str = "fp16",
                           tail: str = "drop") -> int:
    """Bytes (formula) one position's teacher targets take: V values, or k values + k token ids (+ 1 tail value)."""
    top_k = check_top_k(top_k, vocab_size)
    value_bytes = np.dtype(VALUE_DTYPES[check_value_dtype(value_dtype)]).itemsize
    if top_k is None:
        return vocab_size * value_bytes
    tail_bytes = value_bytes if check_tail(tail) == "uniform" else 0
    return top_k * (value_bytes + index_dtype(vocab_size).itemsize) + tail_bytes


def teacher_targets_bytes(n_tokens: int, vocab_size: int, top_k: int | None, value_bytes: int,
                          index_bytes: int) -> int:
    """Bytes of a teacher's targets for n_tokens positions: all V logits, or the top k values + their token ids.

    Full logits (top_k None): n_tokens · V · value_bytes — no ids needed, position j of a row IS token j.
    Top k: n_tokens · k · (value_bytes + index_bytes) — each kept value must say which token it belongs to.
    (cache_bytes(...)["targets"] for tail="drop", with index_bytes = index_dtype(V).itemsize.)
    """
    for name, value, low in (("n_tokens", n_tokens, 0), ("vocab_size", vocab_size, 1),
                             ("value_bytes", value_bytes, 1), ("index_bytes", index_bytes, 1)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    top_k = check_top_k(top_k, int(vocab_size))
    if top_k is None:
        return int(n_tokens) * int(vocab_size) * int(value_bytes)
    return int(n_tokens) * top_k * (int(value_bytes) + int(index_bytes))


def cache_bytes(n_steps: int, batch_size: int, block_size: int, vocab_size: int, top_k: int | None = None,
                value_dtype: str = "fp16", tail: str = "drop") -> dict[str, int]:
    """Bytes (formula) of a cache for n_steps batches: targets, the 8-byte batch fingerprints, and the total."""
    tokens = n_steps * batch_size * block_size
    targets = tokens * target_bytes_per_token(vocab_size, top_k, value_dtype, tail)
    fingerprints = 8 * n_steps
    return {"tokens": tokens, "targets": targets, "fingerprints": fingerprints, "total": targets + fingerprints}


# ---------------------------------------------------------------------------------------------
# The cache: one memory-mapped file of every step's targets, its sha256 in a JSON record beside it


def cache_folder() -> Path:
    return data_mod.cache_dir() / "distill"


@dataclasses.dataclass
class TeacherCache:
    """A teacher's targets for every batch of one training run, read from one memory-mapped file.

    The arrays are views into the file (nothing is loaded until a step reads its slice):
    fingerprints (steps,) int64, values (steps, B, T, V or k) fp32/fp16, indices (steps, B, T, k) or None,
    tail (steps, B, T) fp32/fp16 or None (top-k with tail="uniform").
    """

    path: Path
    record: dict
    fingerprints: np.ndarray
    values: np.ndarray
    indices: np.ndarray | None
    tail: np.ndarray | None

    @property
    def top_k(self) -> int | None:
        return self.record["top_k"]

    @property
    def vocab_size(self) -> int:
        return self.record["vocab_size"]

    @property
    def n_steps(self) -> int:
        return len(self.fingerprints)

    @property
    def file_bytes(self) -> int:
        """Measured size of the cache file on disk, bytes."""
        return self.path.stat().st_size

    @property
    def target_nbytes(self) -> int:
        """Measured bytes of the stored targets (values, indices, tail arrays), without the fingerprints."""
        return sum(a.nbytes for a in (self.values, self.indices, self.tail) if a is not None)

    def logits(self, x: Tensor, it: int) -> Tensor:
        """Teacher logits (B, T, V) float32 for batch x of step `it`; ValueError if x is not the batch cached."""
        if not 0 <= it < self.n_steps:
            raise ValueError(f"step it={it} is outside this cache, which holds steps 0..{self.n_steps - 1} "
                             f"(build it with cfg.max_iters >= {it + 1})")
        if batch_fingerprint(x) != int(self.fingerprints[it]):
            raise ValueError(f"the batch of step {it} is not the one this teacher cache was built for: train with the "
                             f"cache's settings (seed={self.record['seed']}, batch_size={self.record['batch_size']}, "
                             f"block_size={self.record['block_size']}, the same corpus), or build a cache for yours")
        stored = [torch.from_numpy(np.array(a[it])) if a is not None else None
                  for a in (self.values, self.indices, self.tail)]
        return _dense(tuple(stored), self.vocab_size)

    def describe(self) -> str:
        what = _describe_format(self.top_k, self.record["value_dtype"], self.record["tail"])
        return f"cached teacher ({what}, {self.file_bytes:,} bytes)"


def _cache_key(teacher: LanguageModel, cfg: TrainConfig, corpus: data_mod.Corpus, top_k, value_dtype, tail) -> dict:
    return {"format": CACHE_FORMAT, "teacher": _model_fingerprint(teacher), "corpus": _corpus_fingerprint(corpus),
            "seed": cfg.seed, "batch_size": cfg.batch_size, "block_size": cfg.block_size,
            "n_steps": cfg.max_iters, "vocab_size": vocab_size_of(teacher), "top_k": top_k,
            "value_dtype": value_dtype, "tail": tail if top_k is not None else "drop"}


def _cache_paths(key: dict) -> tuple[Path, Path]:
    name = "teacher-" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_folder() / f"{name}.bin", cache_folder() / f"{name}.json"


def _layout(key: dict) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
    """The arrays of a cache file, in order: (name, dtype, shape)."""
    steps, B, T = key["n_steps"], key["batch_size"], key["block_size"]
    width = key["vocab_size"] if key["top_k"] is None else key["top_k"]
    arrays = [("fingerprints", np.dtype(np.int64), (steps,)),
              ("values", np.dtype(VALUE_DTYPES[key["value_dtype"]]), (steps, B, T, width))]
    if key["top_k"] is not None:
        arrays.append(("indices", index_dtype(key["vocab_size"]), (steps, B, T, key["top_k"])))
        if key["tail"] == "uniform":
            arrays.append(("tail", np.dtype(VALUE_DTYPES[key["value_dtype"]]), (steps, B, T)))
    return arrays


def _open_arrays(path: Path, key: dict, mode: str) -> dict[str, np.ndarray]:
    arrays, offset = {}, 0
    for name, dtype, shape in _layout(key):
        arrays[name] = np.memmap(path, dtype=dtype, mode=mode, offset=offset, shape=shape)
        offset += dtype.itemsize * math.prod(shape)
    return arrays


def _file_size(key: dict) -> int:
    return sum(dtype.itemsize * math.prod(shape) for _, dtype, shape in _layout(key))


class CacheCorrupt(ValueError):
    """A teacher cache file does not match the sha256 recorded beside it (or its record is unreadable)."""


def _load_cache(key: dict) -> TeacherCache:
    """The cache for `key`: FileNotFoundError if it was never built, CacheCorrupt if its checksum fails."""
    bin_path, record_path = _cache_paths(key)
    if not bin_path.exists() and not record_path.exists():
        raise FileNotFoundError(bin_path)
    try:
        record = json.loads(record_path.read_text())
        expected = record["sha256"]
    except PermissionError as e:
        raise data_mod.unreadable_cache_error(e.filename or record_path, e, cache_folder()) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CacheCorrupt(f"teacher cache record {record_path} is missing or unreadable ({type(e).__name__})") from None
    if {k: record.get(k) for k in key} != key:
        raise CacheCorrupt(f"teacher cache record {record_path} describes another cache")
    try:
        actual = data_mod.sha256_file(bin_path)
    except PermissionError as e:
        raise data_mod.unreadable_cache_error(e.filename or bin_path, e, cache_folder()) from None
    except OSError:
        raise CacheCorrupt(f"teacher cache file {bin_path} is missing (its record {record_path} is there)") from None
    if actual != expected or bin_path.stat().st_size != _file_size(key):
        raise CacheCorrupt(f"teacher cache file {bin_path} is damaged: its sha256 is {actual[:16]}…, its record "
                           f"says {expected[:16]}…")
    arrays = _open_arrays(bin_path, key, "r")
    return TeacherCache(bin_path, record, arrays["fingerprints"], arrays["values"], arrays.get("indices"),
                        arrays.get("tail"))


def _write_cache(teacher: LanguageModel, cfg: TrainConfig, corpus: data_mod.Corpus, key: dict,
                 progress: bool) -> None:
    """Compute the targets of every training batch into a temporary file, then rename it and write its record."""
    from tqdm.auto import tqdm

    bin_path, record_path = _cache_paths(key)
    live = LiveTeacher(teacher, key["top_k"], key["value_dtype"], key["tail"])
    fd, tmp = tempfile.mkstemp(dir=bin_path.parent, prefix=f".{bin_path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~data_mod.current_umask())  # readable like any cache file (mkstemp gives 0600)
        os.ftruncate(fd, _file_size(key))
        os.close(fd)
        arrays = _open_arrays(Path(tmp), key, "r+")
        t0 = time.perf_counter()
        batches = training_batches(cfg, corpus)
        # the batch shape of training, one step at a time: the same arithmetic as on the fly, so the same floats
        for it, (x, _) in enumerate(tqdm(batches, total=cfg.max_iters, desc="cache teacher logits",
                                         disable=not progress, mininterval=1.0)):
            values, indices, tail = live.stored(x)
            arrays["fingerprints"][it] = batch_fingerprint(x)
            arrays["values"][it] = values.numpy()
            if indices is not None:
                arrays["indices"][it] = indices.numpy().astype(arrays["indices"].dtype)
            if tail is not None:
                arrays["tail"][it] = tail.numpy()
        seconds = time.perf_counter() - t0
        for a in arrays.values():
            a.flush()
        del arrays
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        sha = data_mod.sha256_file(Path(tmp))
        os.replace(tmp, bin_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    record = {**key, "sha256": sha, "build_seconds": round(seconds, 3), "threads": torch.get_num_threads(),
              "file_bytes": bin_path.stat().st_size}
    data_mod.atomic_write_bytes(record_path, json.dumps(record, indent=1).encode())  # written last


def teacher_cache(teacher: LanguageModel, cfg: TrainConfig, corpus: data_mod.Corpus | None = None,
                  top_k: int | None = None, value_dtype: str = "fp16", tail: str = "drop",
                  on_corrupt: str = "rebuild", progress: bool = True) -> TeacherCache:
    """The teacher's targets for every batch train(cfg, corpus=corpus) will draw, cached once (memory-mapped).

    Built on first use (one teacher forward pass per step) into labkit's data cache, written under a
    temporary name and renamed, with its sha256 in a JSON record beside it; later calls only read it and
    check the sha256. A damaged cache is rebuilt (on_corrupt="rebuild") or refused (on_corrupt="error",
    a CacheCorrupt, which is a ValueError); it is never used. Full logits (top_k=None) or the top k
    per position (values + token ids; tail="drop": renormalised over the k when used, tail="uniform": plus
    one tail logit per position that keeps the rest of the mass, spread evenly), in fp32 or fp16.
    The cache holds exactly what LiveTeacher(teacher, top_k, value_dtype, tail) computes for each step's batch
    (same batch shape, so the same arithmetic; bit for bit at the same torch thread setting).
    """
    if on_corrupt not in ("rebuild", "error"):
        raise ValueError(f"on_corrupt={on_corrupt!r}; allowed: 'rebuild', 'error'")
    corpus = corpus or data_mod.load_corpus(cfg.corpus)
    vocab_size = check_same_vocabulary(teacher, corpus=corpus)
    top_k = check_top_k(top_k, vocab_size)
    check_value_dtype(value_dtype)
    check_tail(tail)
    _check_block_size(teacher, cfg)
    key = _cache_key(teacher, cfg, corpus, top_k, value_dtype, tail)
    try:
        return _load_cache(key)  # a valid cache is only read (the cache folder may be read-only)
    except FileNotFoundError:
        pass
    except CacheCorrupt:
        if on_corrupt == "error":
            raise
    folder = cache_folder()
    with data_mod.writing_cache("a teacher-logit cache", folder):
        folder.mkdir(parents=True, exist_ok=True)
        bin_path, _ = _cache_paths(key)
        with data_mod.cache_lock(bin_path.with_suffix(".lock")):
            try:
                return _load_cache(key)  # another process may have built it while we waited
            except (FileNotFoundError, CacheCorrupt):
                pass
            _write_cache(teacher, cfg, corpus, key, progress)
    return _load_cache(key)


# ---------------------------------------------------------------------------------------------
# Training a student: the one loop, with the distillation loss as its per-step loss


def _check_block_size(teacher: LanguageModel, cfg: TrainConfig) -> None:
    if cfg.block_size > teacher.block_size:
        raise ValueError(f"block_size={cfg.block_size} is longer than the teacher's context "
                         f"(block_size={teacher.block_size}): the teacher could not give targets for every position")


def distillation_step_loss(targets: LiveTeacher | TeacherCache, temperature: float = 2.0,
                           alpha: float = 0.5) -> Callable[[LanguageModel, Tensor, Tensor, int], Tensor]:
    """A `loss_fn(model, x, y, it)` for labkit.train.train: the distillation loss of the student on batch x."""
    temperature, alpha = check_temperature(temperature), check_alpha(alpha)

    def loss_fn(model: LanguageModel, x: Tensor, y: Tensor, it: int) -> Tensor:
        student_logits, _ = model(x)                        # (B, T, V)
        teacher_logits = targets.logits(x, it)              # (B, T, V), no gradient
        return distillation_loss(student_logits, teacher_logits, y, temperature, alpha)

    return loss_fn


def distill(cfg: TrainConfig, teacher: LanguageModel, temperature: float = 2.0, alpha: float = 0.5,
            targets: LiveTeacher | TeacherCache | None = None, model: LanguageModel | None = None,
            corpus: data_mod.Corpus | None = None, log=print, desc: str | None = None) -> tuple[LanguageModel, dict]:
    """Train a student (cfg's model, or `model`) from `teacher` with labkit.train.train; returns (student, result).

    `targets` is where the teacher's logits come from: None = the teacher run live every step (full fp32
    logits), a LiveTeacher (e.g. top-k), or a TeacherCache built for this cfg. The result is train's,
    plus temperature, alpha and the targets' description.
    """
    temperature, alpha = check_temperature(temperature), check_alpha(alpha)
    corpus = corpus or data_mod.load_corpus(cfg.corpus)
    vocab_size = check_same_vocabulary(teacher, model, corpus)
    _check_block_size(teacher, cfg)
    if targets is None:
        targets = LiveTeacher(teacher)
    if not isinstance(targets, (LiveTeacher, TeacherCache)):
        raise TypeError(f"targets must be None, a LiveTeacher or a TeacherCache, got {type(targets).__name__}")
    if targets.vocab_size != vocab_size:
        raise ValueError(f"targets give logits over {targets.vocab_size} tokens, the student predicts {vocab_size}")
    if isinstance(targets, LiveTeacher) and targets.teacher is not teacher:
        raise ValueError("targets is a LiveTeacher of another model than `teacher`: pass LiveTeacher(teacher, ...)")
    if isinstance(targets, TeacherCache) and targets.record["teacher"] != _model_fingerprint(teacher):
        raise ValueError(f"the teacher cache {targets.path.name} was built from another teacher (other weights or "
                         "config): build one with teacher_cache(teacher, cfg, ...)")
    # model None: train builds it for the corpus (whose vocabulary was just checked), from the same seed and in
    # the same order as a labels-only run, so the two students start from identical weights
    student, result = train(cfg, model=model, corpus=corpus, log=log,
                            desc=desc or f"distil {cfg.model} (T={temperature:g}, α={alpha:g})",
                            loss_fn=distillation_step_loss(targets, temperature, alpha))
    return student, {**result, "temperature": temperature, "alpha": alpha, "targets": targets.describe()}


def corpus_fraction(corpus: data_mod.Corpus, fraction: float) -> data_mod.Corpus:
    """The corpus with only the first `fraction` of its training characters (validation unchanged)."""
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be a number in (0, 1] (the share of training characters kept), got {fraction!r}")
    n = round(fraction * len(corpus.train))
    return dataclasses.replace(corpus, train=corpus.train[:n])


def _check_seeds(seeds) -> list[int]:
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise ValueError(f"seeds must be a non-empty sequence of integers, got {seeds!r}")
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty sequence of integers >= 0, got {seeds!r}")
    return [int(s) for s in seeds]


def _experiment_inputs(cfg: TrainConfig, teacher: LanguageModel, corpus: data_mod.Corpus | None, eval_set,
                       log) -> tuple[data_mod.Corpus, object, Callable[[str], None]]:
    """What every student experiment starts from: the corpus (checked against the teacher's vocabulary), the
    evaluation set (default: a quarter of the validation split in windows of cfg.block_size) and the log."""
    from labkit.evaluate import evaluation_set

    corpus = corpus or data_mod.load_corpus(cfg.corpus)
    check_same_vocabulary(teacher, corpus=corpus)
    if eval_set is None:
        eval_set = evaluation_set(corpus.val, window=cfg.block_size, every=4)
    return corpus, eval_set, log or (lambda s: None)


def compare_students(cfg: TrainConfig, teacher: LanguageModel, seeds: tuple[int, ...] = (0, 1, 2),
                     temperature: float = 2.0, alpha: float = 0.5, train_fraction: float = 1.0,
                     eval_set=None, top_k: int | None = None, tail: str = "drop", cached: bool = False,
                     value_dtype: str = "fp16", corpus: data_mod.Corpus | None = None, log=None) -> list[dict]:
    """Train a labels-only and a distilled student of cfg's shape for each seed; one row per student.

    Same steps, same batches, same initial weights per seed (both start from torch.manual_seed(seed)):
    only the loss differs. Each student is scored on `eval_set` (labkit.evaluate; default: a quarter of the
    validation split in windows of cfg.block_size). Rows: seed, student, val_loss (nats/char on the eval
    set), standard_error, params, param_bytes, ms_per_iter, train_chars, ... `cached=True` reads the teacher
    from a TeacherCache (built once per seed) instead of running it every step.
    """
    from labkit.evaluate import score

    check_temperature(temperature)
    check_alpha(alpha)
    seeds = _check_seeds(seeds)
    corpus, eval_set, quiet = _experiment_inputs(cfg, teacher, corpus, eval_set, log)
    train_corpus = corpus_fraction(corpus, train_fraction)
    rows = []
    for seed in seeds:
        run = dataclasses.replace(cfg, seed=int(seed))
        for kind in STUDENT_KINDS:
            if kind == "labels only":
                student, result = train(run, corpus=train_corpus, log=quiet, desc=f"labels only, seed {seed}")
                extra = {}
            else:
                targets = (teacher_cache(teacher, run, train_corpus, top_k, value_dtype, tail, progress=run.progress)
                           if cached else LiveTeacher(teacher, top_k, tail=tail))
                student, result = distill(run, teacher, temperature, alpha, targets, corpus=train_corpus, log=quiet,
                                          desc=f"distilled, seed {seed}")
                extra = {"targets": result["targets"]}
            res = score(student, eval_set)
            rows.append({"seed": int(seed), "student": kind, "val_loss": res.loss,
                         "standard_error": res.standard_error, "params": student.num_params(),
                         "param_bytes": sum(p.numel() * p.element_size() for p in student.parameters()),
                         "iters": run.max_iters, "ms_per_iter": result["ms_per_iter"], "wall_s": result["wall_s"],
                         "train_chars": len(train_corpus.train), "train_fraction": train_fraction,
                         "temperature": temperature if kind == "distilled" else None,
                         "alpha": alpha if kind == "distilled" else None, "eval_set": eval_set.name, **extra})
    return rows


def distillation_sweep(cfg: TrainConfig, teacher: LanguageModel, temperatures=(1.0, 2.0, 4.0),
                       alphas=(0.0, 0.5, 0.9), seeds: tuple[int, ...] = (0,), top_k: int | None = None,
                       value_dtype: str = "fp16", tail: str = "drop", eval_set=None, corpus: data_mod.Corpus | None = None,
                       log=None) -> list[dict]:
    """Distilled students for every (T, alpha, seed), the teacher cached ONCE per seed and read by every run.

    This is where a cache pays: the teacher's logits do not depend on T or alpha, so len(T)·len(alpha)
    students share one teacher pass. alpha = 0 (labels only) is trained once per seed, not once per T.
    Rows: seed, temperature (None for alpha = 0), alpha, val_loss, standard_error (nats/char on eval_set),
    ms_per_iter, params.
    """
    from labkit.evaluate import score

    temperatures = [check_temperature(t) for t in temperatures]
    alphas = [check_alpha(a) for a in alphas]
    seeds = _check_seeds(seeds)
    corpus, eval_set, quiet = _experiment_inputs(cfg, teacher, corpus, eval_set, log)
    rows = []
    for seed in seeds:
        run = dataclasses.replace(cfg, seed=int(seed))
        cache = teacher_cache(teacher, run, corpus, top_k, value_dtype, tail, progress=run.progress)
        settings = [(None, 0.0)] if 0.0 in alphas else []
        settings += [(t, a) for a in alphas if a > 0 for t in temperatures]
        for t, a in settings:
            if a == 0.0:
                student, result = train(run, corpus=corpus, log=quiet, desc=f"labels only, seed {seed}")
            else:
                student, result = distill(run, teacher, t, a, cache, corpus=corpus, log=quiet,
                                          desc=f"T={t:g} α={a:g}, seed {seed}")
            res = score(student, eval_set)
            rows.append({"seed": int(seed), "temperature": t, "alpha": a, "val_loss": res.loss,
                         "standard_error": res.standard_error, "ms_per_iter": result["ms_per_iter"],
                         "params": student.num_params(), "eval_set": eval_set.name})
    return rows


def summarize_comparison(rows: list[dict]) -> dict:
    """Mean ± seed spread of each student kind, and the distilled-minus-labels gap per seed (nats/char).

    The gap is paired by seed (same init, same batches), so its spread is the noise a claim must beat:
    `gain_beyond_noise` is True when the mean gap is further below zero than the 95% two-sided bound for
    n seeds: t_quantile(n − 1) standard errors (std/√n) — Student's t, as the standard error is itself estimated
    from the n seeds (the bound is `gap["t"]`).
    """
    from labkit.evaluate import seed_spread, t_quantile

    by_kind = {k: {r["seed"]: r["val_loss"] for r in rows if r["student"] == k} for k in STUDENT_KINDS}
    seeds = sorted(set(by_kind["labels only"]) & set(by_kind["distilled"]))
    if len(seeds) < 2:
        raise ValueError(f"need both students for at least 2 seeds, got seeds {seeds}")
    gaps = [by_kind["distilled"][s] - by_kind["labels only"][s] for s in seeds]
    gap = seed_spread(gaps)
    se = gap["std"] / math.sqrt(len(gaps))
    t = t_quantile(len(gaps) - 1)
    return {"labels only": seed_spread([by_kind["labels only"][s] for s in seeds]),
            "distilled": seed_spread([by_kind["distilled"][s] for s in seeds]),
            "gap": {**gap, "standard_error": se, "t": t, "per_seed": gaps},
            "gain_beyond_noise": gap["mean"] < -t * se}


def cached_results(name: str, settings: dict, compute: Callable[[], list[dict]]) -> list[dict]:
    """compute()'s rows, computed once per (name, settings): labkit.data.cached_results in the distill cache folder."""
    return data_mod.cached_results(name, settings, compute, folder=cache_folder())


# ---------------------------------------------------------------------------------------------
# What soft targets carry: distributions at several T, dark knowledge, the T² gradient scale


@torch.no_grad()
def next_char_probabilities(model: LanguageModel, context: Tensor, temperatures=(1.0, 2.0, 4.0)) -> Tensor:
    """softmax(logits / T) of the token after `context` (1-D ids) for each T: (len(temperatures), V), sums 1."""
    temps = [check_temperature(t) for t in temperatures]
    if context.dim() != 1 or len(context) < 1:
        raise ValueError(f"context must be a 1-D tensor of at least one token id, got shape {tuple(context.shape)}")
    was_training = model.training
    model.eval()
    logits, _ = model(context[-model.block_size:].long()[None])
    model.train(was_training)
    last = logits[0, -1]                                                  # (V,)
    return torch.stack([torch.softmax(last / t, dim=-1) for t in temps])  # (len(T), V)


def real_contexts(tokens: np.ndarray, n: int, length: int = 64, seed: int = 0) -> list[tuple[Tensor, int]]:
    """`n` (context ids, next id) pairs cut from `tokens` (e.g. corpus.val) at seeded random places."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(tokens) - length - 1, (n,), generator=g).tolist()
    return [(torch.from_numpy(np.asarray(tokens[s:s + length]).astype(np.int64)), int(tokens[s + length]))
            for s in starts]


def soft_targets(teacher: LanguageModel, tokenizer: data_mod.CharTokenizer, context: str,
                 temperatures=(1.0, 2.0, 4.0, 8.0)):
    """A pandas DataFrame: one row per character, one column "T=t" per temperature (probability of it coming next)."""
    import pandas as pd

    ids = torch.tensor(tokenizer.encode(context), dtype=torch.long)
    probs = next_char_probabilities(teacher, ids, temperatures)
    return pd.DataFrame({f"T={t:g}": probs[i].numpy() for i, t in enumerate(temperatures)},
                        index=pd.Index(list(tokenizer.chars), name="char"))


def dark_knowledge(teacher: LanguageModel, tokenizer: data_mod.CharTokenizer, context: str, next_char: str,
                   n: int = 5, temperature: float = 1.0) -> list[dict]:
    """The teacher's `n` most probable WRONG next characters after `context` (next_char is the right one).

    Rows: rank, char, probability, and ratio = probability / probability of the right character.
    """
    if not isinstance(next_char, str) or len(next_char) != 1 or next_char not in tokenizer.stoi:
        raise ValueError(f"next_char must be one character of the vocabulary, got {next_char!r}")
    ids = torch.tensor(tokenizer.encode(context), dtype=torch.long)
    probs = next_char_probabilities(teacher, ids, (temperature,))[0]
    right = tokenizer.stoi[next_char]
    wrong = probs.clone()
    wrong[right] = -1.0
    top = torch.topk(wrong, min(n, len(probs) - 1))
    return [{"rank": r + 1, "char": tokenizer.chars[i], "probability": p,
             "ratio_to_right": p / probs[right].item()}
            for r, (p, i) in enumerate(zip(top.values.tolist(), top.indices.tolist()))]


def soft_gradient_norms(student_logits: Tensor, teacher_logits: Tensor, temperatures=(1.0, 2.0, 4.0, 8.0, 16.0),
                        targets: Tensor | None = None) -> list[dict]:
    """Norm of the soft loss's gradient w.r.t. the student logits at each T, without and with the T² factor.

    Measured by autograd on the logits given. Rows: temperature, grad_norm (of KL at T), grad_norm_t2
    (of T²·KL, what distillation_loss uses), and, with `targets`, hard_grad_norm (of the label
    cross-entropy) for scale.
    """
    from labkit.losses import cross_entropy

    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits and teacher_logits must have the same shape, got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    hard = None
    if targets is not None:
        s = student_logits.detach().clone().requires_grad_()
        (g,) = torch.autograd.grad(cross_entropy(s, targets), s)
        hard = g.norm().item()
    rows = []
    for t in temperatures:
        t = check_temperature(t)
        s = student_logits.detach().clone().requires_grad_()
        (g_plain,) = torch.autograd.grad(kl_divergence(teacher_logits.detach(), s, t), s)
        s2 = student_logits.detach().clone().requires_grad_()
        (g_scaled,) = torch.autograd.grad(t ** 2 * kl_divergence(teacher_logits.detach(), s2, t), s2)
        rows.append({"temperature": t, "grad_norm": g_plain.norm().item(), "grad_norm_t2": g_scaled.norm().item(),
                     **({"hard_grad_norm": hard} if hard is not None else {})})
    return rows


def top_k_mass(logits: Tensor, top_k: int, temperatures=(1.0, 2.0, 4.0)) -> list[dict]:
    """Mean probability (over positions) the teacher's top k tokens hold at each T: what a top-k cache keeps."""
    check_top_k(top_k, logits.size(-1))
    rows = []
    for t in temperatures:
        p = torch.softmax(logits.float() / check_temperature(t), dim=-1)
        kept = torch.topk(p, top_k, dim=-1).values.sum(-1)
        rows.append({"temperature": t, "top_k": top_k, "kept_mass": kept.mean().item(),
                     "min_kept_mass": kept.min().item()})
    return rows


def _median_ms(fn: Callable[[], object], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return float(np.median(times))


def cache_options_table(teacher: LanguageModel, cfg: TrainConfig, corpus: data_mod.Corpus | None = None,
                        options=((None, "fp32"), (None, "fp16"), (16, "fp16"), (8, "fp16"), (8, "fp16", "uniform"),
                                 (4, "fp16")),
                        progress: bool = False) -> list[dict]:
    """Bytes of each way of caching the teacher for cfg's run: formula next to the measured file, and timings.

    `options` are (top_k, value_dtype) or (top_k, value_dtype, tail). Rows: top_k, value_dtype, tail,
    bytes_per_token (formula), formula_bytes and formula_target_bytes, file_bytes and target_nbytes
    (measured: the file's size, the arrays' nbytes), build_s (seconds its build took, from its record),
    read_ms (median ms to turn one step of it into dense logits) and live_ms (median ms of the teacher's
    forward pass on the same batch: what the cache saves each step).
    """
    corpus = corpus or data_mod.load_corpus(cfg.corpus)
    vocab_size = check_same_vocabulary(teacher, corpus=corpus)
    x = next(training_batches(dataclasses.replace(cfg, max_iters=1), corpus))[0]
    live_ms = _median_ms(lambda: LiveTeacher(teacher).logits(x, 0))
    rows = []
    for option in options:
        top_k, value_dtype, tail = (*option, "drop")[:3]
        cache = teacher_cache(teacher, cfg, corpus, top_k, value_dtype, tail, progress=progress)
        formula = cache_bytes(cfg.max_iters, cfg.batch_size, cfg.block_size, vocab_size, top_k, value_dtype, tail)
        rows.append({"top_k": top_k, "value_dtype": value_dtype, "tail": tail if top_k is not None else None,
                     "bytes_per_token": target_bytes_per_token(vocab_size, top_k, value_dtype, tail),
                     "formula_bytes": formula["total"], "file_bytes": cache.file_bytes,
                     "formula_target_bytes": formula["targets"], "target_nbytes": cache.target_nbytes,
                     "build_s": cache.record["build_seconds"], "read_ms": _median_ms(lambda c=cache: c.logits(x, 0)),
                     "live_ms": live_ms})
    return rows
