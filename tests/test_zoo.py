"""labkit.zoo: trained once, cached with a checksum, retrained when the checkpoint is damaged."""
from __future__ import annotations

import errno
import json
import os
import stat

import filelock
import pytest
import torch

from labkit import zoo
from labkit.model import GPT

from conftest import Evil, set_read_only, tree_snapshot

pytestmark = pytest.mark.usefixtures("data_dir")

TINY = {"tiny-gpt": ("gpt", "tiny", {"corpus": "synthetic", "max_iters": 20, "eval_iters": 2})}


@pytest.fixture(autouse=True)
def _denormals_back_on():
    """train() flushes denormal floats to zero for the whole process; put it back so later tests in this
    process (hypothesis' float strategies refuse to run without subnormals) see the default."""
    yield
    torch.set_flush_denormal(False)


@pytest.fixture
def tiny_zoo(monkeypatch, data_dir):
    """ZOO holds one tiny model; zoo.train is wrapped to count the trainings."""
    monkeypatch.setattr(zoo, "ZOO", TINY)
    calls = []
    real_train = zoo.train

    def counting_train(cfg, *args, **kwargs):
        calls.append(cfg)
        return real_train(cfg, *args, **kwargs)

    monkeypatch.setattr(zoo, "train", counting_train)
    return calls


def _refuse_training(*args, **kwargs):
    raise AssertionError("the zoo retrained a model that is cached and valid")


def test_build_trains_once_then_reuses(tiny_zoo, data_dir, monkeypatch):
    assert not zoo.is_built("tiny-gpt")
    record = zoo.build("tiny-gpt", progress=False)
    assert zoo.is_built("tiny-gpt")
    assert len(tiny_zoo) == 1 and tiny_zoo[0].max_iters == 20 and tiny_zoo[0].corpus == "synthetic"
    ckpt, rec_path = data_dir / "zoo" / "tiny-gpt.pt", data_dir / "zoo" / "tiny-gpt.json"
    assert zoo._paths("tiny-gpt") == (ckpt, rec_path)
    assert record["name"] == "tiny-gpt" and record["iters"] == 20
    assert record["sha256"] == zoo.data_mod.sha256_file(ckpt)
    assert json.loads(rec_path.read_text()) == record
    assert {"val_loss", "params", "history"} <= set(record)

    monkeypatch.setattr(zoo, "train", _refuse_training)
    assert zoo.build("tiny-gpt", progress=False) == record


def test_corrupted_checkpoint_is_detected_and_retrained(tiny_zoo, data_dir):
    first = zoo.build("tiny-gpt", progress=False)
    ckpt = data_dir / "zoo" / "tiny-gpt.pt"
    raw = bytearray(ckpt.read_bytes())
    for i in (100, len(raw) // 2, len(raw) - 10):
        raw[i] ^= 0xFF
    ckpt.write_bytes(bytes(raw))
    assert zoo._valid_record("tiny-gpt") is None and not zoo.is_built("tiny-gpt")
    second = zoo.build("tiny-gpt", progress=False)
    assert len(tiny_zoo) == 2
    assert second["sha256"] == zoo.data_mod.sha256_file(ckpt)
    assert second["val_loss"] == first["val_loss"]  # same seed: the same model again
    model, _ = zoo.load("tiny-gpt", progress=False)
    assert isinstance(model, GPT)


def test_missing_or_garbled_record_is_retrained(tiny_zoo, data_dir):
    zoo.build("tiny-gpt", progress=False)
    (data_dir / "zoo" / "tiny-gpt.json").write_text("{not json")
    assert zoo._valid_record("tiny-gpt") is None
    zoo.build("tiny-gpt", progress=False)
    (data_dir / "zoo" / "tiny-gpt.json").unlink()
    zoo.build("tiny-gpt", progress=False)
    assert len(tiny_zoo) == 3


@pytest.mark.parametrize("record_text", ["null", "[]"])
def test_record_of_the_wrong_shape_is_retrained(tiny_zoo, data_dir, record_text):
    zoo.build("tiny-gpt", progress=False)
    (data_dir / "zoo" / "tiny-gpt.json").write_text(record_text)
    assert zoo._valid_record("tiny-gpt") is None
    zoo.build("tiny-gpt", progress=False)  # retrained, not a crash
    assert len(tiny_zoo) == 2 and zoo._valid_record("tiny-gpt") is not None


def test_unknown_name_raises(tiny_zoo, data_dir):
    with pytest.raises(ValueError, match="'baby-gpt'.*tiny-gpt"):
        zoo.build("baby-gpt")
    with pytest.raises(ValueError, match="nope"):
        zoo.load("nope")
    with pytest.raises(ValueError, match="nope"):
        zoo.is_built("nope")
    assert tiny_zoo == [] and not (data_dir / "zoo").exists()


def test_load_returns_the_cached_model_in_eval_mode(tiny_zoo, data_dir, monkeypatch):
    record = zoo.build("tiny-gpt", progress=False)
    monkeypatch.setattr(zoo, "train", _refuse_training)
    model, rec = zoo.load("tiny-gpt", progress=False)
    assert rec == record
    assert isinstance(model, GPT) and not model.training
    assert all(not m.training for m in model.modules())
    assert model.num_params() == record["params"]
    assert model.config.n_layer == 2 and model.config.n_embd == 32  # the "tiny" preset
    out = model.generate(torch.zeros(1, 1, dtype=torch.long), 5, temperature=0)
    assert out.shape == (1, 6)


def test_zoo_cli_list_and_build(tiny_zoo, capsys):
    zoo.main(["list"])
    assert capsys.readouterr().out.strip() == "tiny-gpt: not built"
    zoo.main(["build", "tiny-gpt"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last)["name"] == "tiny-gpt"
    zoo.main(["list"])
    assert capsys.readouterr().out.strip().startswith("tiny-gpt: cached, val_loss ")


# ----------------------------------------------------------------------------- shared, read-only and damaged caches

def _refuse(*args, **kwargs):
    raise AssertionError("a valid zoo must be used without locking or writing anything")


def test_zoo_files_are_readable_by_others_under_umask_022(tiny_zoo, data_dir):
    old = os.umask(0o022)
    try:
        zoo.build("tiny-gpt", progress=False)
    finally:
        os.umask(old)
    for path in zoo._paths("tiny-gpt"):  # checkpoint and record: 0644, not mkstemp's 0600
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_a_valid_read_only_zoo_loads_without_locking_or_writing(tiny_zoo, data_dir, monkeypatch):
    # a teacher built the zoo for the class; students only read it
    record = zoo.build("tiny-gpt", progress=False)
    before = tree_snapshot(data_dir)
    monkeypatch.setattr(filelock, "FileLock", _refuse)
    monkeypatch.setattr(zoo, "train", _refuse)
    monkeypatch.setattr(zoo.data_mod, "atomic_write_bytes", _refuse)
    set_read_only(data_dir, True)  # really read-only for a non-root account
    try:
        model, rec = zoo.load("tiny-gpt", progress=False)
    finally:
        set_read_only(data_dir, False)
    assert rec == record and isinstance(model, GPT)
    assert tree_snapshot(data_dir) == before


def test_a_zoo_that_must_be_built_in_a_read_only_folder_says_what_to_do(tiny_zoo, data_dir, monkeypatch):
    (data_dir / "zoo").mkdir()

    class DeniedLock:  # what an account without write access to the folder meets
        def __init__(self, path, *args, **kwargs):
            self.path = str(path)

        def __enter__(self):
            raise PermissionError(errno.EACCES, "Permission denied", self.path)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(filelock, "FileLock", DeniedLock)
    with pytest.raises(zoo.data_mod.CacheNotAccessible) as err:
        zoo.load("tiny-gpt", progress=False)
    msg = str(err.value)
    assert str(data_dir / "zoo" / ".tiny-gpt.lock") in msg and "'tiny-gpt'" in msg
    assert "python -m labkit.zoo build" in msg and "LABKIT_DATA_DIR" in msg
    assert tiny_zoo == []  # nothing was trained


def test_an_unreadable_zoo_checkpoint_is_a_clear_error(tiny_zoo, data_dir, monkeypatch):
    zoo.build("tiny-gpt", progress=False)
    ckpt = data_dir / "zoo" / "tiny-gpt.pt"
    real_sha256 = zoo.data_mod.sha256_file

    def denied(path):  # chmod cannot stop root, so deny the read here
        if path == ckpt:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_sha256(path)

    monkeypatch.setattr(zoo.data_mod, "sha256_file", denied)
    monkeypatch.setattr(zoo, "train", _refuse)
    with pytest.raises(zoo.data_mod.CacheNotAccessible, match="cannot read") as err:
        zoo.load("tiny-gpt", progress=False)
    assert str(ckpt) in str(err.value) and "chmod -R a+rX" in str(err.value)


def test_a_zoo_checkpoint_weights_only_refuses_says_delete_it_and_it_is_retrained(tiny_zoo, data_dir):
    record = zoo.build("tiny-gpt", progress=False)
    ckpt, record_path = zoo._paths("tiny-gpt")
    marker = data_dir / "marker.txt"
    good = torch.load(ckpt, weights_only=True)
    torch.save({**good, "extra": {"payload": Evil(marker)}}, ckpt)  # record updated to match: checksum passes
    record_path.write_text(json.dumps({**record, "sha256": zoo.data_mod.sha256_file(ckpt)}))
    with pytest.raises(ValueError) as err:
        zoo.load("tiny-gpt", progress=False)
    msg = str(err.value)
    assert not marker.exists()
    assert "'tiny-gpt'" in msg and str(ckpt) in msg and "not a plain weights checkpoint" in msg
    assert "delete it and the zoo retrains it" in msg
    assert "weights_only=False" not in msg and "`weights_only` set to `False`" not in msg
    ckpt.unlink()  # doing what the message says works
    model, rec = zoo.load("tiny-gpt", progress=False)
    assert len(tiny_zoo) == 2 and rec["val_loss"] == record["val_loss"] and isinstance(model, GPT)


def test_zoo_cli_unknown_name_is_one_line_exit_2(tiny_zoo, capsys):
    with pytest.raises(SystemExit) as exc:
        zoo.main(["build", "nope"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'nope'" in err and "tiny-gpt" in err
    assert tiny_zoo == []
