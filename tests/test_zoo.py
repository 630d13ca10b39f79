"""labkit.zoo: trained once, cached with a checksum, retrained when the checkpoint is damaged."""
from __future__ import annotations

import json

import pytest
import torch

from labkit import zoo
from labkit.model import GPT

pytestmark = pytest.mark.usefixtures("data_dir")

TINY = {"tiny-gpt": ("gpt", "tiny", {"corpus": "synthetic", "max_iters": 20, "eval_iters": 2})}


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
    record = zoo.build("tiny-gpt", progress=False)
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
    assert zoo._valid_record("tiny-gpt") is None
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
