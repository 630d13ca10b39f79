"""The command lines (python -m labkit.train / bench / zoo): every bad argument fails at once.

Each must fail before any data is loaded: one line on stderr naming the argument and what is
allowed, exit status 2, nothing on stdout, nothing written to the cache. The cases the issue
reported run as a learner runs them, in a subprocess (about a second each, mostly importing
torch); the full lists also run in-process through the same main(), which takes milliseconds.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from labkit import bench, train, zoo

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_cli(module: str, *args: str, data_dir: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, LABKIT_DATA_DIR=str(data_dir), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO_ROOT,
                          env=env, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(err.splitlines()) == 1, err  # one line, no traceback, no usage block
    assert "error:" in err and "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    assert proc.stdout == ""
    return err


def run_main_in_process(main, argv, capsys, monkeypatch, data_dir: Path) -> subprocess.CompletedProcess:
    """main(argv) as the subprocess would run it: its exit status and what it printed."""
    monkeypatch.setenv("LABKIT_DATA_DIR", str(data_dir))
    with pytest.raises(SystemExit) as exc:
        main(argv)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(argv, exc.value.code, captured.out, captured.err)


# what the issue found: each exited 0 with NaN, reversed gradients, or crashed with a traceback
TRAIN_REPORTED = ["--max-iters -5", "--lr inf", "--grad-clip -1", "--eval-iters 0", "--threads 0", "--batch-size 0"]
BENCH_REPORTED = ["train --iters 0", "train --iters -3", "train --threads 0", "train --nanogpt /nonexistent/nanoGPT"]


TRAIN_BAD = [  # (arguments, the option the message must name, words of what is allowed)
    (["--max-iters", "-5"], "--max-iters", "integer >= 1"),
    (["--lr", "inf"], "--lr", "finite number > 0"),
    (["--lr", "nan"], "--lr", "finite number > 0"),
    (["--lr", "0"], "--lr", "finite number > 0"),
    (["--grad-clip", "-1"], "--grad-clip", "(0 = no clipping)"),
    (["--eval-iters", "0"], "--eval-iters", "integer >= 1"),
    (["--threads", "0"], "--threads", "integer >= 1"),
    (["--batch-size", "0"], "--batch-size", "integer >= 1"),
    (["--block-size", "-1"], "--block-size", "integer >= 1"),
    (["--warmup-iters", "-1"], "--warmup-iters", "integer >= 0"),
    (["--eval-interval", "-2"], "--eval-interval", "integer >= 0"),
    (["--weight-decay", "-0.1"], "--weight-decay", ">= 0"),
    (["--beta2", "1"], "--beta2", "[0, 1)"),
    (["--seed", "-1"], "--seed", "[0, 2**63)"),
    (["--min-lr", "1", "--lr", "0.1"], "min_lr", "<= lr"),
    (["--max-iters", "ten"], "--max-iters", "'ten'"),
    (["--decay", "exponential"], "--decay", "'cosine'"),
    (["--set", "n_layer=0"], "--set", "n_layer"),
    (["--corpus", "/nonexistent/corpus"], "--corpus", "'shakespeare'"),
]


@pytest.mark.parametrize("args, option, allowed", TRAIN_BAD, ids=[" ".join(a) for a, _, _ in TRAIN_BAD])
def test_train_cli_bad_argument_is_one_line_exit_2_before_any_data(tmp_path, capsys, monkeypatch, args, option,
                                                                   allowed):
    proc = run_main_in_process(train.main, args, capsys, monkeypatch, tmp_path / "cache")
    assert_one_line_error(proc, option, allowed)
    assert "seed" not in proc.stderr.split("error:")[0]  # training never started...
    assert not (tmp_path / "cache").exists()  # ...and no corpus was loaded or fetched
    if " ".join(args) in TRAIN_REPORTED:
        proc = run_cli("labkit.train", *args, data_dir=tmp_path / "cache")
        assert_one_line_error(proc, option, allowed)
        assert not (tmp_path / "cache").exists()


def test_train_cli_out_that_cannot_be_written_fails_before_training(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    proc = run_main_in_process(train.main, ["--out", str(blocker / "model.pt")], capsys, monkeypatch,
                               tmp_path / "cache")
    assert_one_line_error(proc, "--out", str(blocker))
    proc = run_main_in_process(train.main, ["--out", str(tmp_path)], capsys, monkeypatch, tmp_path / "cache")
    assert_one_line_error(proc, "--out", "is a folder")
    assert not (tmp_path / "cache").exists()


def test_train_cli_good_run_prints_strict_json(tmp_path):
    proc = run_cli("labkit.train", "--corpus", "synthetic", "--preset", "tiny", "--max-iters", "3", "--eval-iters", "1",
                   "--no-progress", data_dir=tmp_path / "cache", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]

    def refuse(constant):
        raise AssertionError(f"printed a bare {constant}, which is not JSON")

    printed = json.loads(proc.stdout, parse_constant=refuse)
    assert printed["iters"] == 3 and printed["seed"] == 1337 and "seed 1337" in proc.stderr


BENCH_BAD = [
    (["train", "--iters", "0"], "--iters", "integer >= 1"),
    (["train", "--iters", "-3"], "--iters", "integer >= 1"),
    (["train", "--threads", "0"], "--threads", "integer >= 1"),
    (["train", "--seed", "-1"], "--seed", "[0, 2**63)"),
    (["ablation", "--iters", "0"], "--iters", "integer >= 1"),
    (["train", "--nanogpt", "/nonexistent/nanoGPT"], "--nanogpt", "train.py"),
    (["optimizer", "--nanogpt", "/nonexistent/nanoGPT"], "--nanogpt", "only 'train'"),
]


@pytest.mark.parametrize("args, option, allowed", BENCH_BAD, ids=[" ".join(a) for a, _, _ in BENCH_BAD])
def test_bench_cli_bad_argument_is_one_line_exit_2_before_any_training(tmp_path, capsys, monkeypatch, args, option,
                                                                       allowed):
    monkeypatch.setattr(bench, "train", lambda *a, **k: pytest.fail("trained before checking its arguments"))
    proc = run_main_in_process(bench.main, args, capsys, monkeypatch, tmp_path / "cache")
    assert_one_line_error(proc, option, allowed)
    assert not (tmp_path / "cache").exists()  # failed before loading the corpus, let alone training
    if " ".join(args) in BENCH_REPORTED:
        # before the fix --nanogpt was checked only after a whole training run: the timeout catches that
        proc = run_cli("labkit.bench", *args, data_dir=tmp_path / "cache", timeout=90)
        assert_one_line_error(proc, option, allowed)
        assert not (tmp_path / "cache").exists()


def test_bench_nanogpt_folder_without_train_py_fails_at_once(tmp_path, capsys, monkeypatch):
    (tmp_path / "nanoGPT" / "config").mkdir(parents=True)  # a checkout missing train.py
    (tmp_path / "nanoGPT" / "config" / "train_shakespeare_char.py").write_text("")
    monkeypatch.setattr(bench, "train", lambda *a, **k: pytest.fail("trained before checking --nanogpt"))
    proc = run_main_in_process(bench.main, ["train", "--nanogpt", str(tmp_path / "nanoGPT")], capsys, monkeypatch,
                               tmp_path / "cache")
    assert_one_line_error(proc, str(tmp_path / "nanoGPT"), "train.py")
    assert not (tmp_path / "cache").exists()


def test_bench_train_without_nanogpt_prints_no_ratio_to_another_machine(monkeypatch, capsys):
    # a ratio is printed only when both ran in this run: no figure from the machine the course was built on
    def fake_train(cfg, **kwargs):
        return None, {"model": "gpt", "iters": cfg.max_iters, "val_loss": 2.5, "tokens_per_s": 1000.0,
                      "ms_per_iter": 768.0, "threads": 1, "history": []}

    monkeypatch.setattr(bench, "train", fake_train)
    out = bench.main(["train", "--iters", "2"])
    printed = capsys.readouterr().out
    assert not [k for k in out if "nanogpt" in k.lower()]
    assert "speedup" not in printed and "nanogpt_reference" not in printed and "that machine" not in printed
    assert json.loads(printed.strip().splitlines()[-1]) == out


def test_zoo_cli_unknown_name_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    proc = run_main_in_process(zoo.main, ["build", "no-such-model"], capsys, monkeypatch, tmp_path / "cache")
    assert_one_line_error(proc, "'no-such-model'", "baby-gpt")
    assert not (tmp_path / "cache").exists()


def _fake_nanogpt(root: Path, script: str) -> Path:
    """A folder shaped like a nanoGPT checkout whose train.py is `script`."""
    (root / "config").mkdir(parents=True)
    (root / "config" / "train_shakespeare_char.py").write_text("")
    (root / "train.py").write_text(script)
    return root


def test_bench_quotes_a_failed_nanogpt_run_as_whole_lines(tmp_path, monkeypatch):
    words = " ".join(f"word{i}" for i in range(40))
    script = ("import sys\n"
              f"for i in range(60):\n    print(f'line {{i}}: {words}', file=sys.stderr)\n"
              "sys.exit(3)\n")
    nanogpt = _fake_nanogpt(tmp_path / "nanoGPT", script)
    monkeypatch.setattr(bench, "write_nanogpt_dataset", lambda d: d)  # no corpus needed
    with pytest.raises(RuntimeError) as err:
        bench.run_nanogpt(nanogpt, iters=5)
    lines = str(err.value).splitlines()
    assert "exit status 3" in lines[0]
    assert lines[1:] == [f"line {i}: {words}" for i in range(40, 60)]  # the last lines, none cut mid-word


def test_bench_with_nanogpt_compares_runs_of_this_machine_at_the_same_threads(tmp_path, monkeypatch, capsys):
    script = ("import os\n"
              "ms = 10.0 * int(os.environ['OMP_NUM_THREADS'])  # 'slower' with more threads: shows what it got\n"
              "for i in range(0, 5):\n    print(f'iter {i}: loss 2.5000, time {ms}ms, mfu 0.00%')\n"
              "print('step 5: train loss 2.4000, val loss 2.4500')\n")
    nanogpt = _fake_nanogpt(tmp_path / "nanoGPT", script)
    monkeypatch.setattr(bench, "write_nanogpt_dataset", lambda d: d)

    def fake_train(cfg, **kwargs):
        return None, {"model": "gpt", "iters": cfg.max_iters, "val_loss": 2.5, "tokens_per_s": 38400.0,
                      "ms_per_iter": 20.0, "threads": cfg.threads, "history": []}

    monkeypatch.setattr(bench, "train", fake_train)
    monkeypatch.setattr(bench.torch, "set_num_threads", lambda n: None)  # leave this test process's threads alone
    out = bench.main(["train", "--iters", "5", "--threads", "2", "--nanogpt", str(nanogpt)])
    ref = out["nanogpt_side_by_side"]
    assert ref["ms_per_iter"] == 20.0  # nanoGPT ran with labkit's 2 threads
    assert ref["val_loss"] == 2.45 and ref["tokens_per_s"] == pytest.approx(12 * 64 / 0.020)
    assert out["speedup_vs_nanogpt"] == pytest.approx(38400.0 / ref["tokens_per_s"], abs=1e-3)
    assert out["val_loss_minus_nanogpt"] == pytest.approx(0.05)
    assert "labkit is 1.00x the throughput" in capsys.readouterr().out


def test_bench_passes_iters_to_optimizer_and_seed_to_quantize(monkeypatch, capsys):
    """Options a subcommand takes reach it (they were silently dropped: optimizer always ran 100 steps, quantize
    always used seed 0)."""
    seen = {}
    monkeypatch.setattr(bench, "bench_optimizer", lambda steps=100: seen.setdefault("steps", steps) and {"ok": 1})
    monkeypatch.setattr(bench, "bench_quantize", lambda **kw: seen.setdefault("quantize", kw) and {"ok": 1})
    monkeypatch.setattr(bench, "print_quantize", lambda out: None)
    bench.main(["optimizer", "--iters", "7"])
    bench.main(["quantize", "--seed", "42"])
    assert seen["steps"] == 7 and seen["quantize"]["seed"] == 42
    seen.clear()
    bench.main(["optimizer"])
    assert seen["steps"] == 100
