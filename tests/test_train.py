"""labkit.train: schedule, configs, optimizer groups, the loop, the CLI and checkpoints."""
from __future__ import annotations

import copy
from dataclasses import replace

import json
import math
import os
import stat

import pytest
import torch

from labkit import train as train_mod
from labkit.model import build_model
from labkit.train import (PRESETS, SETTING_RULES, TrainConfig, json_line, load_checkpoint, lr_at, main, make_config,
                          make_optimizer, save_checkpoint, train, training_batches)

from conftest import Evil  # a pickle that runs code when unpickled

pytestmark = pytest.mark.usefixtures("data_dir")

RESULT_KEYS = {"val_loss", "iters", "tokens_per_s", "peak_rss_mb", "params"}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _denormals_back_on():
    """train() flushes denormal floats to zero for the whole process; put it back so later tests in this
    process (hypothesis' float strategies refuse to run without subnormals) see the default."""
    yield
    torch.set_flush_denormal(False)


def quiet(*a, **k):
    pass


# ----------------------------------------------------------------------------- learning-rate schedule

def sched(**kw) -> TrainConfig:
    return make_config("gpt", **{**dict(lr=1.0, min_lr=0.1, warmup_iters=10, max_iters=110), **kw})


def test_lr_warmup_rises_linearly_to_lr():
    cfg = sched()
    warm = [lr_at(i, cfg) for i in range(10)]
    assert warm == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert warm[-1] == pytest.approx(cfg.lr)
    assert lr_at(10, cfg) == pytest.approx(cfg.lr)  # decay starts from the peak


@pytest.mark.parametrize("decay", ["linear", "cosine"])
def test_lr_decays_monotonically_to_min_lr(decay):
    cfg = sched(decay=decay)
    after = [lr_at(i, cfg) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(after, after[1:]))
    assert after[-1] == pytest.approx(cfg.min_lr)          # lr_at(max_iters)
    assert lr_at(500, cfg) == pytest.approx(cfg.min_lr)    # and it stays there


def test_lr_linear_and_cosine_shapes():
    lin, cos = sched(decay="linear"), sched(decay="cosine")
    span = range(lin.warmup_iters, lin.max_iters)
    lin_lr = [lr_at(i, lin) for i in span]
    steps = [a - b for a, b in zip(lin_lr, lin_lr[1:])]
    assert min(steps) > 0 and max(steps) == pytest.approx(min(steps))  # linear: a constant step down
    for i, lr_lin in zip(span, lin_lr):  # cosine at the same progress p = 1 - (lr_lin - min_lr)/(lr - min_lr)
        p = 1 - (lr_lin - 0.1) / 0.9
        assert lr_at(i, cos) == pytest.approx(0.1 + 0.5 * (1 + math.cos(math.pi * p)) * 0.9)
    mid = lin.warmup_iters + (lin.max_iters - lin.warmup_iters) // 2
    assert lr_at(mid, lin) == pytest.approx(0.55, abs=0.01) and lr_at(mid, cos) == pytest.approx(0.55, abs=0.02)
    assert lr_at(35, cos) > lr_at(35, lin)  # cosine stays high longer
    assert lr_at(85, cos) < lr_at(85, lin)  # and drops lower near the end


@pytest.mark.parametrize("decay", ["linear", "cosine"])
def test_lr_at_last_iteration_is_min_lr(decay):
    cfg = sched(decay=decay)
    assert lr_at(cfg.max_iters - 1, cfg) == pytest.approx(cfg.min_lr)


def test_lr_bad_decay_raises():
    # caught when the config is made, not only once warmup ends
    with pytest.raises(ValueError, match="decay='exponential'"):
        make_config("gpt", "tiny", decay="exponential")
    cfg = replace(make_config("gpt", "tiny"), decay="exponential")
    with pytest.raises(ValueError, match="decay='exponential'"):
        lr_at(cfg.warmup_iters, cfg)


# ----------------------------------------------------------------------------- configs

def test_make_config_preset_and_overrides():
    before = json.dumps(PRESETS, sort_keys=True)
    cfg = make_config("gpt", "tiny", max_iters=7, lr=0.5, model_args={"n_layer": 3, "positions": "sinusoidal"})
    assert (cfg.model, cfg.batch_size, cfg.block_size, cfg.max_iters, cfg.lr) == ("gpt", 8, 32, 7, 0.5)
    assert cfg.warmup_iters == 10 and cfg.eval_iters == 5
    assert cfg.model_args == {"n_layer": 3, "n_head": 2, "n_embd": 32, "positions": "sinusoidal"}
    assert make_config("lstm", "tiny").model_args == {"n_embd": 32, "n_hidden": 64, "n_layer": 1}
    assert make_config("conv", "baby").max_iters == 2000
    plain = make_config("conv", batch_size=3)
    assert plain.batch_size == 3 and plain.model_args == {} and plain.max_iters == TrainConfig().max_iters
    assert json.dumps(PRESETS, sort_keys=True) == before  # presets are not mutated


def test_make_config_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="preset='huge'"):
        make_config("gpt", "huge")
    with pytest.raises(ValueError, match="max_iter"):
        make_config("gpt", "tiny", max_iter=5)
    with pytest.raises(ValueError, match="model='transformer'"):
        make_config("transformer")


BAD_SETTINGS = [  # (field, value): each was accepted before and trained nothing, printed NaN or crashed later
    ("max_iters", -5), ("max_iters", 0), ("lr", math.inf), ("lr", math.nan), ("lr", 0.0), ("lr", -1e-3),
    ("grad_clip", -1.0), ("grad_clip", math.inf), ("eval_iters", 0), ("threads", 0), ("batch_size", 0),
    ("block_size", 0), ("warmup_iters", -1), ("eval_interval", -1), ("weight_decay", -0.1), ("beta1", 1.0),
    ("beta2", -0.5), ("min_lr", -1.0), ("seed", -1), ("batch_size", 2.5), ("max_iters", True),
]


@pytest.mark.parametrize("name, value", BAD_SETTINGS, ids=[f"{n}={v}" for n, v in BAD_SETTINGS])
def test_bad_training_settings_are_refused_naming_the_field(name, value):
    allowed = SETTING_RULES[name][2]
    with pytest.raises(ValueError, match=f"^{name} must be ") as err:
        make_config("gpt", "tiny", **{name: value})
    assert allowed in str(err.value) and repr(value) in str(err.value)
    with pytest.raises(ValueError, match=f"^{name} must be "):
        replace(make_config("gpt", "tiny"), **{name: value})  # a TrainConfig made any way is checked


def test_boundary_settings_are_allowed():
    cfg = make_config("gpt", "tiny", grad_clip=0.0, eval_interval=0, warmup_iters=0, min_lr=0.0, weight_decay=0.0,
                      beta1=0.0, threads=None, seed=0, max_iters=1, eval_iters=1)
    assert cfg.grad_clip == 0.0 and cfg.eval_interval == 0  # 0 = off, as the loop reads them
    with pytest.raises(ValueError, match=r"min_lr=0.5 must be <= lr=0.1"):
        make_config("gpt", "tiny", lr=0.1, min_lr=0.5)


def test_train_rechecks_a_config_edited_after_it_was_made(corpus):
    cfg = make_config("gpt", "tiny", progress=False)
    cfg.max_iters = -5
    with pytest.raises(ValueError, match="max_iters must be an integer >= 1"):
        train(cfg, corpus=corpus, log=quiet)


def test_json_line_prints_null_for_nan_and_infinity():
    line = json_line({"val_loss": math.nan, "tokens_per_s": math.inf, "x": [1.5, -math.inf], "ok": 2.0})

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    assert json.loads(line, parse_constant=refuse) == {"val_loss": None, "tokens_per_s": None, "x": [1.5, None],
                                                       "ok": 2.0}


def test_cli_json_line_of_a_diverged_run_is_strict_json(data_dir, capsys, monkeypatch):
    def diverged(cfg, **kwargs):
        return None, {"model": cfg.model, "iters": cfg.max_iters, "val_loss": math.nan, "train_loss": math.nan,
                      "last_batch_loss": math.inf, "history": []}

    monkeypatch.setattr(train_mod, "train", diverged)
    main(["--corpus", "synthetic", "--preset", "tiny", "--max-iters", "3", "--no-progress"])
    out = capsys.readouterr().out.strip()

    def refuse(constant):
        raise AssertionError(f"printed a bare {constant}, which is not JSON")

    printed = json.loads(out, parse_constant=refuse)
    assert printed["val_loss"] is None and printed["last_batch_loss"] is None and printed["iters"] == 3


# ----------------------------------------------------------------------------- optimizer groups

@pytest.mark.parametrize("kind, args", [
    ("gpt", dict(tie_weights=True)), ("gpt", dict(tie_weights=False, positions="sinusoidal", bias=True)),
    ("lstm", dict(tie_weights=True)), ("lstm", {}), ("conv", {}),
])
def test_make_optimizer_groups(kind, args):
    model = build_model(kind, vocab_size=13, block_size=16, n_embd=16, **args)
    opt = make_optimizer(model, make_config(kind, weight_decay=0.25, lr=0.01))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.25 and no_decay["weight_decay"] == 0.0
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids))                               # no parameter twice (tied counted once)
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == model.num_params()
    assert {id(p) for p in model.parameters()} == set(ids)         # and none forgotten
    no_decay_ids = {id(p) for p in no_decay["params"]}
    assert id(model.wte.weight) in no_decay_ids                    # embeddings are not decayed
    for name, p in model.named_parameters():
        if p.dim() < 2:                                            # norms' gains and every bias
            assert id(p) in no_decay_ids, name
    if kind == "gpt":
        assert id(model.blocks[0].ln_1.weight) in no_decay_ids
        assert id(model.blocks[0].attn.qkv.weight) in {id(p) for p in decay["params"]}
        if model.config.positions == "learned":
            assert id(model.wpe.weight) in no_decay_ids
        if not model.config.tie_weights:
            assert id(model.lm_head.weight) in {id(p) for p in decay["params"]}


# ----------------------------------------------------------------------------- the loop

@pytest.mark.parametrize("kind", ["gpt", "lstm", "conv"])
def test_train_tiny_learns(kind, corpus):
    cfg = make_config(kind, "tiny", max_iters=80, eval_interval=40, progress=False)
    logs = []
    model, result = train(cfg, corpus=corpus, log=logs.append)
    assert logs == [f"seed {cfg.seed}"]
    assert RESULT_KEYS <= set(result)
    assert result["iters"] == 80 and result["model"] == kind and result["params"] == model.num_params()
    assert result["val_loss"] < 0.75 * math.log(corpus.vocab_size)  # ln(V) is the loss of a uniform guess
    assert result["tokens_per_s"] > 0 and result["peak_rss_mb"] > 0
    assert [h["iter"] for h in result["history"]] == [40, 80]
    assert result["history"][-1]["val"] == pytest.approx(result["val_loss"], abs=1e-4)
    assert model.training


def test_train_progress_bar_takes_a_label(corpus, capsys):
    cfg = make_config("gpt", "tiny", max_iters=3, eval_interval=3, progress=True)
    train(cfg, corpus=corpus, log=quiet, desc="train GPT d16×2 (seed 7)")
    assert "train GPT d16×2 (seed 7)" in capsys.readouterr().err
    train(cfg, corpus=corpus, log=quiet)
    assert "train gpt" in capsys.readouterr().err                 # the default label


def test_train_same_seed_is_reproducible(corpus):
    cfg = make_config("gpt", "tiny", max_iters=15, progress=False)
    m1, r1 = train(cfg, corpus=corpus, log=quiet)
    m2, r2 = train(cfg, corpus=corpus, log=quiet)
    assert r1["val_loss"] == r2["val_loss"] and r1["train_loss"] == r2["train_loss"]
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    _, r3 = train(make_config("gpt", "tiny", max_iters=15, progress=False, seed=7), corpus=corpus, log=quiet)
    assert r3["val_loss"] != r1["val_loss"]


def test_train_loads_the_corpus_named_in_the_config(data_dir):
    cfg = make_config("conv", "tiny", max_iters=2, eval_iters=1, corpus="synthetic", progress=False)
    _, result = train(cfg, log=quiet)
    assert (data_dir / "synthetic-200000-0" / "meta.json").exists()
    assert result["iters"] == 2


def test_train_block_size_larger_than_the_model_raises(corpus):
    model = build_model("gpt", vocab_size=corpus.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    cfg = make_config("gpt", "tiny", max_iters=1, block_size=32, progress=False)
    with pytest.raises(ValueError, match="block_size=32.*block_size=16"):
        train(cfg, model=model, corpus=corpus, log=quiet)


# ----------------------------------------------------------------------------- CLI

def test_cli_prints_one_json_line_and_writes_a_checkpoint(data_dir, tmp_path, capsys):
    out = tmp_path / "ck.pt"
    result = main(["--corpus", "synthetic", "--preset", "tiny", "--max-iters", "20", "--no-progress",
                   "--set", "n_layer=1", "--set", "positions=sinusoidal", "--out", str(out)])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1
    printed = json.loads(lines[0])
    assert RESULT_KEYS <= set(printed)
    assert printed["iters"] == 20 and printed["checkpoint"] == str(out) and "history" not in printed
    assert printed["val_loss"] == result["val_loss"]
    assert "seed 1337" in captured.err
    model = load_checkpoint(out)
    assert model.num_params() == printed["params"]
    assert model.config.n_layer == 1 and model.config.positions == "sinusoidal"
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["train_config"]["max_iters"] == 20 and ckpt["extra"]["val_loss"] == printed["val_loss"]


@pytest.mark.parametrize("argv, needle", [
    (["--set", "n_layers=2"], "n_layers"),
    (["--set", "n_layer"], "--set 'n_layer'"),
    (["--set", "positions=bogus"], "positions"),
])
def test_cli_bad_set_exits_2_naming_the_argument(data_dir, capsys, argv, needle):
    with pytest.raises(SystemExit) as exc:
        main(["--corpus", "synthetic", "--preset", "tiny", "--max-iters", "1", "--no-progress", *argv])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert needle in captured.err and captured.out == ""


def test_cli_corpus_folder_without_a_corpus_exits_2(tmp_path, capsys):
    empty = tmp_path / "no-corpus-here"
    empty.mkdir()
    with pytest.raises(SystemExit) as exc:
        main(["--corpus", str(empty), "--preset", "tiny", "--max-iters", "1", "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--corpus" in err and str(empty) in err
    assert len(err.strip().splitlines()) == 1 and "seed" not in err  # refused before training started


# ----------------------------------------------------------------------------- checkpoints

@pytest.fixture
def small_gpt():
    torch.manual_seed(3)
    return build_model("gpt", vocab_size=13, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=16).eval()


@pytest.mark.parametrize("kind, args", [("gpt", dict(n_head=4, n_kv_head=2, positions="sinusoidal")),
                                        ("gpt", dict(tie_weights=False)), ("lstm", {}), ("conv", {})])
def test_checkpoint_round_trip_gives_identical_logits(tmp_path, kind, args):
    model = build_model(kind, vocab_size=13, block_size=16, n_embd=16, **args).eval()
    cfg = make_config(kind, "tiny")
    save_checkpoint(model, tmp_path / "m.pt", cfg, extra={"note": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # written atomically: no temp file left
    x = torch.randint(13, (2, 16))
    fresh = load_checkpoint(tmp_path / "m.pt").eval()
    assert type(fresh) is type(model) and fresh.config == model.config
    assert torch.equal(fresh(x)[0], model(x)[0])
    torch.manual_seed(99)
    other = build_model(kind, vocab_size=13, block_size=16, n_embd=16, **args).eval()
    assert not torch.equal(other(x)[0], model(x)[0])
    assert load_checkpoint(tmp_path / "m.pt", other) is other
    assert torch.equal(other(x)[0], model(x)[0])
    if kind == "gpt" and model.config.tie_weights:
        assert fresh.lm_head.weight is fresh.wte.weight


def test_checkpoint_into_a_different_config_lists_the_differences(tmp_path, small_gpt):
    save_checkpoint(small_gpt, tmp_path / "m.pt")
    other = build_model("gpt", vocab_size=13, block_size=16, n_layer=3, n_head=4, n_kv_head=1, n_embd=16)
    with pytest.raises(ValueError, match="different model config") as err:
        load_checkpoint(tmp_path / "m.pt", other)
    msg = str(err.value)
    assert "n_layer" in msg and "n_kv_head" in msg and "(3, 2)" in msg and "(1, 2)" in msg
    assert "n_embd" not in msg and "vocab_size" not in msg
    with pytest.raises(ValueError, match="kind"):
        load_checkpoint(tmp_path / "m.pt", build_model("lstm", vocab_size=13, block_size=16))


def test_checkpoint_saved_before_a_config_field_existed_loads_into_a_model(tmp_path, small_gpt):
    """A checkpoint written before GPTConfig gained mlp_hidden (the zoo's baby-gpt.pt) loads into a model."""
    save_checkpoint(small_gpt, tmp_path / "m.pt")
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    del ckpt["model_config"]["mlp_hidden"]                   # as an older labkit wrote it
    torch.save(ckpt, tmp_path / "old.pt")
    other = build_model("gpt", vocab_size=13, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=16).eval()
    assert load_checkpoint(tmp_path / "old.pt", other) is other
    x = torch.randint(13, (2, 16))
    assert torch.equal(other(x)[0], small_gpt(x)[0])


def test_checkpoint_is_readable_by_others_under_umask_022(tmp_path, small_gpt):
    old = os.umask(0o022)
    try:
        save_checkpoint(small_gpt, tmp_path / "m.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.pt").stat().st_mode) == 0o644  # not mkstemp's 0600


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "not-our-dict"])
def test_corrupt_checkpoint_raises_value_error(tmp_path, small_gpt, damage):
    path = tmp_path / "m.pt"
    save_checkpoint(small_gpt, path)
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"this is not a checkpoint" * 100)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="corrupt") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "delete it and the zoo retrains it" in str(err.value)
    assert "weights_only" not in str(err.value)


def test_a_plain_pickle_that_weights_only_refuses_names_the_file(tmp_path):
    import pickle

    path, marker = tmp_path / "old.pt", tmp_path / "marker.txt"
    path.write_bytes(pickle.dumps({"model_config": {"kind": "gpt"}, "payload": Evil(marker)}, protocol=2))  # no zip
    with pytest.raises(ValueError, match="not a plain weights checkpoint") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "weights_only=False" not in str(err.value) and not marker.exists()


def test_checkpoint_without_model_kind_is_reported_as_corrupt(tmp_path, small_gpt):
    path = tmp_path / "m.pt"
    torch.save({"model_config": {"vocab_size": 13}, "state_dict": small_gpt.state_dict()}, path)
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(path)


def test_missing_checkpoint_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")


def test_checkpoint_loader_uses_weights_only(tmp_path, small_gpt):
    path, marker = tmp_path / "evil.pt", tmp_path / "marker.txt"
    torch.save({"model_config": {"kind": "gpt", "vocab_size": 13}, "state_dict": small_gpt.state_dict(),
                "train_config": None, "extra": {"payload": Evil(marker)}}, path)
    with pytest.raises(ValueError, match="not a plain weights checkpoint") as err:
        load_checkpoint(path)
    assert not marker.exists()
    msg = str(err.value)
    # which file, what it holds, and what to do; never torch's advice to load it with weights_only=False
    assert str(path) in msg and "_leave_mark" in msg and "delete it and the zoo retrains it" in msg
    assert "weights_only=False" not in msg and "weights_only` set to `False" not in msg
    # the payload is real: a loader without weights_only would have run it
    assert torch.load(path, weights_only=False)["extra"]["payload"] == "unpickled"
    assert marker.read_text() == "pwned"


def test_after_step_runs_after_every_optimizer_step(corpus):
    """The hook pruning relies on: called once per step, after the update (a weight zeroed there stays zero)."""
    cfg = make_config("gpt", "tiny", max_iters=6, progress=False)
    calls = []

    def zero_first_row(model):
        calls.append(1)
        with torch.no_grad():
            model.blocks[0].mlp.fc.weight[0].zero_()

    model, _ = train(cfg, corpus=corpus, log=quiet, after_step=zero_first_row)
    assert len(calls) == 6
    assert torch.count_nonzero(model.blocks[0].mlp.fc.weight[0]) == 0
    plain, _ = train(cfg, corpus=corpus, log=quiet)
    assert torch.count_nonzero(plain.blocks[0].mlp.fc.weight[0]) > 0


def test_loss_fn_replaces_the_training_loss_and_sees_every_step(corpus):
    """The hook distillation relies on: called once per step with the batch and the step number; the model's own
    cross-entropy is what loss_fn = None trains, so a loss_fn returning it trains the same weights."""
    cfg = make_config("gpt", "tiny", max_iters=5, progress=False)
    steps = []

    def own_loss(model, x, y, it):
        steps.append(it)
        assert x.shape == y.shape == (cfg.batch_size, cfg.block_size)
        return model(x, y)[1]

    m1, r1 = train(cfg, corpus=corpus, log=quiet, loss_fn=own_loss)
    m2, r2 = train(cfg, corpus=corpus, log=quiet)
    assert steps == list(range(5)) and r1["val_loss"] == r2["val_loss"]
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    ascent, _ = train(cfg, corpus=corpus, log=quiet, loss_fn=lambda model, x, y, it: -model(x, y)[1])
    assert not torch.equal(ascent.blocks[0].mlp.fc.weight, m2.blocks[0].mlp.fc.weight)   # its loss is what trains


def test_training_batches_are_the_batches_train_sees(corpus):
    """train() draws its batches from training_batches(cfg, corpus): a teacher's outputs cached for them match."""
    cfg = make_config("gpt", "tiny", max_iters=4, progress=False)
    seen = []
    train(cfg, corpus=corpus, log=quiet, loss_fn=lambda model, x, y, it: seen.append((x, y)) or model(x, y)[1])
    expected = list(training_batches(cfg, corpus))
    assert len(expected) == len(seen) == 4
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(seen, expected))


# ----------------------------------------------------------------------------- batches=, optimizer=, first_step=

def weights(model) -> list[torch.Tensor]:
    return [t.detach().clone() for t in model.state_dict().values()]


def test_given_batches_train_exactly_like_the_default_ones(corpus):
    """batches=training_batches(cfg, corpus) is what train() draws itself: the same weights and losses."""
    cfg = make_config("gpt", "tiny", max_iters=6, progress=False)
    torch.manual_seed(0)
    m1, r1 = train(cfg, corpus=corpus, log=quiet)
    torch.manual_seed(0)
    m2, r2 = train(cfg, corpus=corpus, log=quiet, batches=training_batches(cfg, corpus))
    assert all(torch.equal(a, b) for a, b in zip(weights(m1), weights(m2), strict=True))
    assert r1["val_loss"] == r2["val_loss"] and r1["iters"] == r2["iters"] == 6
    assert r1["tokens"] == r2["tokens"] == 6 * cfg.batch_size * cfg.block_size


def test_train_stops_when_the_batches_run_out_and_counts_the_steps_that_ran(corpus):
    cfg = make_config("gpt", "tiny", max_iters=10, eval_interval=2, progress=False)
    steps = []
    three = list(training_batches(cfg, corpus))[:3]
    model, result = train(cfg, corpus=corpus, log=quiet, batches=iter(three), after_step=lambda m: steps.append(1))
    assert result["iters"] == 3 and len(steps) == 3
    assert result["tokens"] == 3 * cfg.batch_size * cfg.block_size
    assert [h["iter"] for h in result["history"]] == [2, 3]       # evaluated at step 2, then once at the end
    # a batch of another shape counts its own tokens
    odd = [(x[:2], y[:2]) for x, y in three[:2]]
    _, result = train(cfg, corpus=corpus, log=quiet, batches=odd)
    assert result["iters"] == 2 and result["tokens"] == 2 * 2 * cfg.block_size


def test_two_phases_with_the_optimizer_and_first_step_equal_one_run(corpus):
    """optimizer= carries AdamW's moments and first_step= the schedule: 4 + 6 steps == 10 steps, bit for bit."""
    cfg = make_config("gpt", "tiny", max_iters=10, warmup_iters=3, progress=False)
    batches = list(training_batches(cfg, corpus))
    torch.manual_seed(0)
    start = build_model("gpt", vocab_size=corpus.vocab_size, block_size=cfg.block_size, **cfg.model_args)
    one = copy.deepcopy(start)
    one, r_one = train(cfg, model=one, corpus=corpus, log=quiet, batches=batches)
    two = copy.deepcopy(start)
    opt = make_optimizer(two, cfg)
    lrs = []

    def record_lr(model):
        lrs.append(opt.param_groups[0]["lr"])

    two, r1 = train(cfg, model=two, corpus=corpus, log=quiet, batches=batches[:4], optimizer=opt,
                    after_step=record_lr)
    two, r2 = train(cfg, model=two, corpus=corpus, log=quiet, batches=batches[4:], optimizer=opt, first_step=4,
                    after_step=record_lr)
    assert (r1["iters"], r2["iters"], r_one["iters"]) == (4, 6, 10)
    assert lrs == [lr_at(it, cfg) for it in range(10)]                # the schedule went on, not back to warmup
    assert all(torch.equal(a, b) for a, b in zip(weights(one), weights(two), strict=True))
    # without the optimizer and first_step the second phase restarts AdamW and the warmup: other weights
    three = copy.deepcopy(start)
    three, _ = train(cfg, model=three, corpus=corpus, log=quiet, batches=batches[:4])
    three, _ = train(cfg, model=three, corpus=corpus, log=quiet, batches=batches[4:])
    assert any(not torch.equal(a, b) for a, b in zip(weights(one), weights(three), strict=True))


def test_batches_without_a_corpus_evaluate_nothing_and_load_no_corpus(corpus, monkeypatch):
    cfg = make_config("gpt", "tiny", max_iters=3, progress=False)
    batches = list(training_batches(cfg, corpus))
    model = build_model("gpt", vocab_size=corpus.vocab_size, block_size=cfg.block_size, **cfg.model_args)

    def no_corpus(*a, **k):
        raise AssertionError("train() loaded a corpus it was not asked to evaluate on")

    monkeypatch.setattr(train_mod.data_mod, "load_corpus", no_corpus)
    _, result = train(cfg, model=model, log=quiet, batches=batches)
    assert result["iters"] == 3 and result["val_loss"] is None and result["train_loss"] is None
    assert result["history"] == [] and math.isfinite(result["last_batch_loss"])


@pytest.mark.parametrize("kwargs, error, needle", [
    (dict(first_step=-1), ValueError, "first_step must be an integer >= 0"),
    (dict(first_step=1.5), ValueError, "first_step must be an integer >= 0"),
    (dict(first_step=True), ValueError, "first_step must be an integer >= 0"),
    (dict(optimizer="adamw"), TypeError, "optimizer must be a torch.optim.Optimizer"),
])
def test_bad_first_step_or_optimizer_is_refused_naming_it(corpus, kwargs, error, needle):
    cfg = make_config("gpt", "tiny", max_iters=2, progress=False)
    with pytest.raises(error, match=needle):
        train(cfg, corpus=corpus, log=quiet, **kwargs)
