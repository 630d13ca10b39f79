"""Benchmarks that print their own run's numbers (never timed assertions in tests).

    python -m labkit.bench train                 # the baby GPT: tokens/s and validation loss
    python -m labkit.bench train --iters 300     # a quicker throughput check
    python -m labkit.bench optimizer             # fused vs per-tensor AdamW, side by side

Absolute timings on a shared 2-core machine are noisy; compare the ratios printed by one run.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from labkit import data as data_mod
from labkit.train import build_for_corpus, make_config, train

# Measured for nanoGPT's train.py with the same baby config on the same corpus, on this machine
# class (2 cores, default threads): the figures this course's loop is compared against.
NANOGPT_REFERENCE = {"val_loss": 1.906, "tokens_per_s": 25_000, "ms_per_iter": 31.0}


def bench_train(iters: int = 2000, seed: int = 1337, threads: int | None = None) -> dict:
    """Train the baby GPT for `iters` iterations; returns the training result plus ratios to nanoGPT."""
    cfg = make_config("gpt", "baby", max_iters=iters, seed=seed, threads=threads)
    _, result = train(cfg)
    result.pop("history")
    result["speedup_vs_nanogpt_reference"] = round(result["tokens_per_s"] / NANOGPT_REFERENCE["tokens_per_s"], 3)
    if iters == 2000:
        result["val_loss_minus_nanogpt_reference"] = round(result["val_loss"] - NANOGPT_REFERENCE["val_loss"], 4)
    return result


def _steps_per_s(model, opt, corpus, cfg, steps: int) -> float:
    gen = torch.Generator().manual_seed(0)
    for i in range(steps + 5):
        if i == 5:
            t0 = time.perf_counter()
        x, y = data_mod.get_batch(corpus.train, cfg.batch_size, cfg.block_size, gen)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - t0)


def bench_optimizer(steps: int = 100) -> dict:
    """Training steps per second of the baby GPT with AdamW fused, foreach and per-tensor, interleaved."""
    cfg = make_config("gpt", "baby")
    corpus = data_mod.load_corpus()
    torch.manual_seed(0)
    model = build_for_corpus(cfg, corpus)
    variants = {"fused": dict(fused=True), "foreach": dict(foreach=True), "per_tensor": dict(foreach=False)}
    rates = {name: [] for name in variants}
    for _ in range(2):  # interleave rounds so a burst of background load hits every variant
        for name, kw in variants.items():
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **kw)
            rates[name].append(_steps_per_s(model, opt, corpus, cfg, steps))
    best = {name: max(r) for name, r in rates.items()}
    return {"steps_per_s": {k: round(v, 2) for k, v in best.items()},
            "fused_speedup_vs_per_tensor": round(best["fused"] / best["per_tensor"], 3),
            "fused_speedup_vs_foreach": round(best["fused"] / best["foreach"], 3)}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m labkit.bench", description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["train", "optimizer"])
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.what == "train":
        out = bench_train(args.iters, args.seed, args.threads)
        print(f"baby GPT, {out['iters']} iters: val loss {out['val_loss']:.4f}, {out['tokens_per_s']:.0f} tokens/s "
              f"({out['ms_per_iter']:.1f} ms/iter, {out['threads']} threads); nanoGPT reference "
              f"{NANOGPT_REFERENCE['val_loss']} / {NANOGPT_REFERENCE['tokens_per_s']} tokens/s")
    else:
        out = bench_optimizer()
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
