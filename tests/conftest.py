"""Shared fixtures for the labkit tests: an isolated data cache and a prepared synthetic corpus.

No test may touch the real cache (data/cache/) or the network: `data_dir` points LABKIT_DATA_DIR
at a fresh empty folder for the test that asks for it (test_data, test_model, test_train and
test_zoo request it for every test through `pytestmark`).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from labkit import data as data_mod


@pytest.fixture
def data_dir(tmp_path_factory, monkeypatch):
    """A fresh, empty LABKIT_DATA_DIR for this test (so `cache_dir()` never reaches data/cache/).

    It is not inside `tmp_path`, so tests can still list tmp_path and find only their own files.
    """
    d = tmp_path_factory.mktemp("labkit-data")
    monkeypatch.setenv("LABKIT_DATA_DIR", str(d))
    assert data_mod.cache_dir() == d
    return d


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A data root holding the default synthetic corpus (200k characters, seed 0). Read-only: never modify."""
    root = tmp_path_factory.mktemp("synthetic-root")
    data_mod.prepare_synthetic(root)
    return root


@pytest.fixture(scope="session")
def corpus(synthetic_root) -> data_mod.Corpus:
    """The default synthetic corpus, loaded (memory-mapped read-only)."""
    return data_mod.load_corpus("synthetic", synthetic_root)


@pytest.fixture(autouse=True)
def _no_flush_denormal_leak():
    """train() and the thread benchmark flush denormals process-wide; reset after each test so float
    property tests see IEEE behaviour whatever ran before them on this worker."""
    import torch
    yield
    torch.set_flush_denormal(False)


def _leave_mark(path: str):
    """What unpickling an `Evil` runs: proof that arbitrary code executed."""
    Path(path).write_text("pwned")
    return "unpickled"


class Evil:
    """A pickle payload that runs `_leave_mark(marker)` when unpickled (weights_only loading must refuse it)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (_leave_mark, (self.marker,))


def tree_snapshot(root: Path) -> dict:
    """Every path under root with its size and modification time: what writing would change."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def set_read_only(root: Path, read_only: bool) -> None:
    """chmod a whole tree read-only (dirs 555, files 444) or back (755 / 644)."""
    for p in [root, *root.rglob("*")]:
        p.chmod((0o555 if p.is_dir() else 0o444) if read_only else (0o755 if p.is_dir() else 0o644))


@pytest.fixture(scope="module")
def baby():
    """The zoo's real baby GPT, read from the cache (trained first on a fresh clone: CI's run builds it once, under the
    zoo's lock), one thread while a module's tests use it. Tests that need the model ask for this fixture instead of
    skipping when it is not built yet — a skip decided at collection time skipped them in every fresh-clone CI run."""
    import torch

    from labkit import zoo
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield zoo.load("baby-gpt", progress=False)[0]
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shakespeare():
    """The real course corpus from the cache."""
    return data_mod.load_corpus()

