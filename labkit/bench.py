"""Benchmarks that print their own run's numbers (never timed assertions in tests).

    python -m labkit.bench train                 # the baby GPT: tokens/s and validation loss
    python -m labkit.bench train --iters 300     # a quicker throughput check
    python -m labkit.bench train --nanogpt ~/nanoGPT   # ... and nanoGPT's train.py, same config, same data
    python -m labkit.bench ablation              # what each choice of the baby preset buys (4 trainings)
    python -m labkit.bench optimizer             # fused vs per-tensor AdamW, side by side
    python -m labkit.bench sparse                # torch.sparse CSR vs dense matmul per density; 2:4 on a CPU
    python -m labkit.bench sparse --shape 512x2048 --batch 16 --repeats 31
    python -m labkit.bench quantize              # the zoo GPT per quantization scheme: bytes, perplexity; GPTQ vs
                                                 # RTN; torch.ao dynamic int8's bytes, perplexity and latency ratio
    python -m labkit.bench compress              # labkit.compress's Huffman / LZ77 vs zlib, lzma, bz2 on 100 kB of
                                                 # the corpus: ratio, encode/decode MB/s, entropy vs Huffman length

Absolute timings on a shared 2-core machine are noisy; compare the ratios printed by one run. A
ratio to nanoGPT is printed only when nanoGPT ran in the same run (--nanogpt), on this machine.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from labkit import data as data_mod
from labkit.train import OneLineErrorParser, build_for_corpus, json_line, make_config, setting_type, train

NANOGPT_BABY_ARGS = ["config/train_shakespeare_char.py", "--dataset=course_char", "--device=cpu", "--compile=False",
                     "--eval_iters=20", "--log_interval=100", "--block_size=64", "--batch_size=12", "--n_layer=4",
                     "--n_head=4", "--n_embd=128", "--dropout=0.0", "--always_save_checkpoint=False"]


def bench_train(iters: int = 2000, seed: int = 1337, threads: int | None = None) -> dict:
    """Train the baby GPT for `iters` iterations; returns the training result (tokens/s, val loss, ...)."""
    cfg = make_config("gpt", "baby", max_iters=iters, seed=seed, threads=threads)
    _, result = train(cfg)
    result.pop("history")
    return result


def check_nanogpt_dir(nanogpt_dir: Path | str) -> Path:
    """The nanoGPT checkout as a Path; ValueError naming it unless it holds train.py and the char config."""
    path = Path(nanogpt_dir).expanduser()
    if not (path / "train.py").is_file() or not (path / "config" / "train_shakespeare_char.py").is_file():
        raise ValueError(f"--nanogpt={str(nanogpt_dir)!r} is not a nanoGPT checkout (needs train.py and "
                         "config/train_shakespeare_char.py), e.g. git clone https://github.com/karpathy/nanoGPT")
    return path


def write_nanogpt_dataset(nanogpt_dir: Path) -> Path:
    """The course corpus in nanoGPT's char format (uint16 train/val.bin + meta.pkl) under data/course_char."""
    import pickle

    import numpy as np

    corpus = data_mod.load_corpus()
    out = Path(nanogpt_dir) / "data" / "course_char"
    for split in ("train", "val"):
        data_mod.atomic_write_bytes(out / f"{split}.bin", np.asarray(corpus.split(split), dtype=np.uint16).tobytes())
    tok = corpus.tokenizer
    meta = {"vocab_size": tok.vocab_size, "itos": dict(enumerate(tok.chars)), "stoi": dict(tok.stoi)}
    data_mod.atomic_write_bytes(out / "meta.pkl", pickle.dumps(meta))
    return out


def run_nanogpt(nanogpt_dir: Path, iters: int, threads: int | None = None) -> dict:
    """Run nanoGPT's train.py (baby config, course corpus, `threads` torch threads) and parse its val loss and times."""
    import os
    import re
    import statistics
    import subprocess
    import sys
    import tempfile

    nanogpt_dir = check_nanogpt_dir(nanogpt_dir)
    write_nanogpt_dataset(nanogpt_dir)
    with tempfile.TemporaryDirectory() as out_dir:
        args = NANOGPT_BABY_ARGS + [f"--max_iters={iters}", f"--lr_decay_iters={iters}", f"--eval_interval={iters}",
                                    f"--out_dir={out_dir}"]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads or torch.get_num_threads()))  # as many threads as labkit had
        proc = subprocess.run([sys.executable, "train.py", *args], cwd=nanogpt_dir, capture_output=True, text=True,
                              env=env)
    if proc.returncode:
        raise RuntimeError(f"nanoGPT's train.py failed (exit status {proc.returncode}); its last lines:\n"
                           f"{data_mod.last_lines(proc.stderr, 20)}")
    times = {int(i): float(ms) for i, ms in re.findall(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms", proc.stdout)}
    vals = re.findall(r"step (\d+): train loss [\d.]+, val loss ([\d.]+)", proc.stdout)
    # leave out the first and last logged iterations: their times include an evaluation
    steady = [ms for i, ms in sorted(times.items())[1:-1]] or list(times.values())
    ms = statistics.mean(steady)
    return {"val_loss": float(vals[-1][1]), "ms_per_iter": round(ms, 2), "tokens_per_s": round(12 * 64 / ms * 1000, 1)}


BABY_ABLATION = {  # GPT-2's choices first, then the baby preset's, one change at a time
    "gpt2-style: tied head, GELU": dict(tie_weights=True, activation="gelu"),
    "untied head, GELU": dict(tie_weights=False, activation="gelu"),
    "tied head, ReLU²": dict(tie_weights=True, activation="relu2"),
    "baby preset: untied head, ReLU²": dict(tie_weights=False, activation="relu2"),
}


def bench_ablation(iters: int = 2000, seed: int = 1337) -> list[dict]:
    """Train the baby GPT once per BABY_ABLATION variant; validation loss (20 and 200 batches) and ms/iter."""
    from dataclasses import replace

    from labkit.train import estimate_loss

    corpus = data_mod.load_corpus()
    rows = []
    for name, model_args in BABY_ABLATION.items():
        cfg = make_config("gpt", "baby", max_iters=iters, seed=seed, model_args=model_args)
        model, result = train(cfg, corpus=corpus)
        precise = estimate_loss(model, corpus, replace(cfg, eval_iters=200), torch.Generator().manual_seed(seed + 2),
                                splits=("val",))["val"]
        rows.append({"variant": name, "params": result["params"], "val_loss_20_batches": result["val_loss"],
                     "val_loss_200_batches": round(precise, 4), "ms_per_iter": result["ms_per_iter"]})
        print(json_line(rows[-1]))
    return rows


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


def bench_sparse(shape: tuple[int, int] = (1024, 1024), batch: int = 64, repeats: int = 15, threads: int = 1,
                 seed: int = 0, densities=(0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)) -> dict:
    """Sparse vs dense matmul time ratios on this CPU (labkit.sparse.matmul_speed) and what 2:4 does here."""
    from labkit import sparse

    rows = sparse.matmul_speed(densities, shape=shape, batch=batch, repeats=repeats, threads=threads, seed=seed)
    semi = sparse.semi_structured_speed(shape=shape, batch=batch, repeats=repeats, threads=threads, seed=seed)
    return {"shape": list(shape), "batch": batch, "repeats": repeats, "threads": threads, "rows": rows,
            "sparse_faster_below_density": sparse.sparse_faster_below(rows), "semi_structured_2_4": semi}


def print_sparse(out: dict) -> None:
    """The sparse benchmark as a table of medians and quartiles, and one sentence per finding."""
    n_rows, n_cols = out["shape"]
    print(f"w: {n_rows}x{n_cols} float32, x: {out['batch']} rows, {out['threads']} thread(s), {out['repeats']} "
          "interleaved repeats; ratio = torch.sparse CSR time / dense time (median [quartiles] of per-repeat ratios)")
    print(f"{'density':>8} {'dense ms':>9} {'CSR ms':>9} {'ratio':>7} {'quartiles':>15} {'nnz/numel':>9}")
    for r in out["rows"]:
        print(f"{r['density']:>8g} {r['dense_ms']:>9.3f} {r['sparse_ms']:>9.3f} {r['ratio']:>7.3f} "
              f"[{r['ratio_q1']:.3f}, {r['ratio_q3']:.3f}] {r['flop_ratio']:>9.3f}")
    below = out["sparse_faster_below_density"]
    print("torch.sparse CSR was never faster than dense here" if below is None else
          f"torch.sparse CSR was faster than dense (in 3 of 4 repeats or more) at every measured density up to "
          f"{below:g}")
    semi = out["semi_structured_2_4"]
    print(f"2:4-masked dense / dense: {semi['ratio']:.3f} [{semi['ratio_q1']:.3f}, {semi['ratio_q3']:.3f}] "
          f"(a dense kernel multiplies the zeros too); the 2:4 matrix as CSR / dense: {semi['csr_ratio']:.3f}")
    print(f"torch.sparse.to_sparse_semi_structured here: {semi['to_sparse_semi_structured']}")


QUANTIZE_SCHEMES = ("int8-channel-sym", "int8-channel", "fp8-channel", "int4-channel", "int4-g128", "int4-g32",
                    "nf4-g64", "kmeans4", "int3-g32", "int3-g32-clip", "int2-g32", "int2-g32-clip")
GPTQ_SCHEMES = ("int4-g128", "int4-g32", "int3-g32", "int2-g32")


def bench_quantize(model=None, corpus=None, schemes=QUANTIZE_SCHEMES, gptq_schemes=GPTQ_SCHEMES,
                   calibration_sequences: int = 128, repeats: int = 20, threads: int = 1, seed: int = 0,
                   progress: bool = True, eval_set=None) -> dict:
    """Every scheme on one model (default: the zoo's baby GPT) and lab 05's yardstick: bytes and perplexity.

    Perplexities are paired with float32's on the same windows (difference ± standard error, nats/char). GPTQ
    uses `calibration_sequences` windows of 64 characters of the training split (seed `seed`). torch.ao's dynamic
    int8 is timed against float32 on one batch, interleaved, `threads` thread(s): only the ratio is meaningful.
    """
    import tempfile

    from tqdm.auto import tqdm

    from labkit import gptq, prune, zoo
    from labkit import quantize as Q
    from labkit.evaluate import paired_difference

    if model is None:
        model = zoo.load("baby-gpt", progress=progress)[0]
    corpus = corpus if corpus is not None else data_mod.load_corpus()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        eval_set = eval_set if eval_set is not None else Q.default_eval_set(corpus)
        rows = Q.quantization_sweep(model, eval_set, schemes, progress=progress)   # float32 first, then RTN
        base = {"perplexity": rows[0]["perplexity"], "result": Q.validation_perplexity(model, eval_set)["result"]}
        calibration = prune.calibration_batches(corpus, calibration_sequences, min(64, model.block_size), seed=seed)
        held_out = prune.calibration_batches(corpus, 32, min(64, model.block_size), seed=seed + 1)
        gptq_rows = []
        for s in tqdm(gptq_schemes, desc="GPTQ", disable=not progress):
            rtn_model, rtn = Q.quantize_model(model, s)
            gptq_model, info = Q.quantize_model(model, f"{s}-gptq", calibration=calibration)
            ppl = Q.validation_perplexity(gptq_model, eval_set)
            diff = paired_difference(ppl["result"], base["result"])
            r = {"scheme": info["scheme"], "bits_per_weight": info["bits_per_weight"],
                 "quantized_bytes": info["quantized_bytes"], "total_bytes": info["total_bytes"],
                 "perplexity": ppl["perplexity"], "loss_minus_float": diff["difference"],
                 "diff_se": diff["standard_error"]}
            gain = paired_difference(Q.validation_perplexity(rtn_model, eval_set)["result"],
                                     Q.validation_perplexity(gptq_model, eval_set)["result"])
            e_rtn = gptq.output_errors(model, rtn["quantized"], held_out)
            e_gptq = gptq.output_errors(model, info["quantized"], held_out)
            r.update({"rtn_minus_gptq": round(gain["difference"], 5), "gain_se": round(gain["standard_error"], 5),
                      "layers_gptq_better": [n for n in e_rtn if e_gptq[n] < e_rtn[n]], "n_layers": len(e_rtn)})
            gptq_rows.append(r)
        dynamic = Q.torch_dynamic_int8(model)
        x = torch.randint(0, model.config.vocab_size, (16, min(64, model.block_size)),
                          generator=torch.Generator().manual_seed(seed))
        timing = prune.compare_forward_time(model, dynamic, x, repeats=repeats, threads=threads)
        dyn_ppl = Q.validation_perplexity(dynamic, eval_set)
        with tempfile.TemporaryDirectory() as folder:
            saved = Q.save_quantized(*Q.quantize_model(model, "int4-g32"), f"{folder}/int4-g32.pt")
    finally:
        torch.set_num_threads(before)
    return {"eval_set": eval_set.name, "float32": {"perplexity": base["perplexity"],
                                                   "saved_state_bytes": Q.saved_state_bytes(model),
                                                   "float32_bytes": rows[0]["total_bytes"]},
            "rtn": rows[1:], "gptq": gptq_rows, "saved_int4_g32": saved,
            "torch_dynamic_int8": {"saved_state_bytes": Q.saved_state_bytes(dynamic),
                                   "perplexity": round(dyn_ppl["perplexity"], 4),
                                   "ppl_ratio": round(dyn_ppl["perplexity"] / base["perplexity"], 5),
                                   "time_ratio_vs_float32": round(timing["b_over_a"], 3),
                                   "float32_ms": timing["a"], "int8_ms": timing["b"], "repeats": repeats,
                                   "threads": threads}}


def print_quantize(out: dict) -> None:
    """The quantization benchmark as tables: RTN schemes, GPTQ vs RTN, torch.ao's dynamic int8."""
    f = out["float32"]
    print(f"yardstick: {out['eval_set']}\nfloat32: perplexity {f['perplexity']:.4f}, {f['float32_bytes']:,} bytes")
    print(f"{'scheme':<18} {'bits/w':>7} {'total bytes':>12} {'perplexity':>10} {'ratio':>8} {'Δ nats ± SE':>20}")
    for r in out["rtn"] + out["gptq"]:
        print(f"{r['scheme']:<18} {r['bits_per_weight']:>7.3f} {r['total_bytes']:>12,} {r['perplexity']:>10.4f} "
              f"{r['perplexity'] / f['perplexity']:>8.4f} {r['loss_minus_float']:>+10.5f} ± {r['diff_se']:.5f}")
    for r in out["gptq"]:
        print(f"{r['scheme']}: RTN − GPTQ = {r['rtn_minus_gptq']:+.5f} ± {r['gain_se']:.5f} nats/char; output error "
              f"lower with GPTQ in {len(r['layers_gptq_better'])} of {r['n_layers']} layers")
    s = out["saved_int4_g32"]
    print(f"int4-g32 saved: file {s['file_bytes']:,} bytes = computed {s['tensor_bytes']:,} + container overhead "
          f"{s['overhead_bytes']:,} ({s['n_tensors']} tensors)")
    d = out["torch_dynamic_int8"]
    print(f"torch.ao dynamic int8: saved state {d['saved_state_bytes']:,} bytes (float32 {f['saved_state_bytes']:,}), "
          f"perplexity {d['perplexity']:.4f} (ratio {d['ppl_ratio']:.4f}), forward time / float32 "
          f"{d['time_ratio_vs_float32']:.3f} (medians of {d['repeats']} interleaved repeats, {d['threads']} thread)")


def bench_compress(n_bytes: int = 100_000, repeats: int = 3, progress: bool = True) -> dict:
    """labkit.compress's coders and the standard library's on the first `n_bytes` characters of the training split:
    bytes, ratio, and the median encode/decode time of `repeats` runs (MB/s of raw data)."""
    from collections import Counter
    from statistics import median

    import numpy as np

    from labkit import compress

    tokens = data_mod.load_corpus().split("train")[:n_bytes]
    data = np.asarray(tokens, dtype=np.uint8).tobytes()  # character ids: the vocabulary has < 256 characters
    runs = [compress.compare_coders(data, progress=progress) for _ in range(repeats)]
    rows = []
    for k, row in enumerate(runs[0]):
        encode_ms = median(run[k]["encode_ms"] for run in runs)
        decode_ms = median(run[k]["decode_ms"] for run in runs)
        timed = row["coder"] != "raw" and encode_ms > 0 and decode_ms > 0  # "raw" is a copy: no speed to speak of
        rows.append({**row, "encode_ms": round(encode_ms, 2), "decode_ms": round(decode_ms, 2),
                     "encode_mb_per_s": round(len(data) / 1e3 / encode_ms, 3) if timed else None,
                     "decode_mb_per_s": round(len(data) / 1e3 / decode_ms, 3) if timed else None,
                     "roundtrip_ok": all(run[k]["roundtrip_ok"] for run in runs)})
    counts = dict(Counter(data))
    return {"n_bytes": len(data), "repeats": repeats, "entropy_bits": round(compress.entropy_bits(counts), 5),
            "huffman_average_bits": round(compress.HuffmanCode.from_frequencies(counts).average_length(counts), 5),
            "coders": rows}


def print_compress(out: dict) -> None:
    """The coder comparison as a table."""
    print(f"{out['n_bytes']:,} bytes of the training split (character ids); medians of {out['repeats']} runs")
    print(f"entropy {out['entropy_bits']:.4f} bits/char; Huffman average length {out['huffman_average_bits']:.4f}")
    print(f"{'coder':<16} {'bytes':>8} {'ratio':>7} {'bits/byte':>9} {'encode MB/s':>12} {'decode MB/s':>12} ok")
    for r in out["coders"]:
        if r["coder"] == "raw":
            continue
        print(f"{r['coder']:<16} {r['bytes']:>8,} {r['ratio']:>7.3f} {r['bits_per_byte']:>9.3f} "
              f"{r['encode_mb_per_s']:>12.3f} {r['decode_mb_per_s']:>12.3f} {r['roundtrip_ok']}")


def sparse_shape_type(text: str) -> tuple[int, int]:
    """An argparse type for --shape: ROWSxCOLS, both >= 1, COLS a multiple of 4 (for 2:4)."""
    import argparse

    parts = text.lower().split("x")
    if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        n_rows, n_cols = int(parts[0]), int(parts[1])
        if n_rows >= 1 and n_cols >= 4 and n_cols % 4 == 0:
            return n_rows, n_cols
    raise argparse.ArgumentTypeError(f"must be ROWSxCOLS with ROWS >= 1 and COLS a multiple of 4, got {text!r}")


def positive_int_type(text: str) -> int:
    """An argparse type for a whole number >= 1."""
    import argparse

    if text.strip().isdigit() and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")


positive_int_type.__name__ = "int"


def main(argv=None):
    p = OneLineErrorParser(prog="python -m labkit.bench", description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["train", "ablation", "optimizer", "sparse", "quantize", "compress"])
    p.add_argument("--nanogpt", default=None, help="a nanoGPT checkout to run side by side (train only)")
    p.add_argument("--iters", type=setting_type("max_iters"), default=None,
                   help="training steps, >= 1 (default 2000; 'optimizer': 100); "
                        "not for 'sparse', 'quantize' or 'compress', which train nothing")
    p.add_argument("--seed", type=setting_type("seed"), default=1337)
    p.add_argument("--threads", type=setting_type("threads"), default=None, help=">= 1; default: torch's")
    p.add_argument("--shape", type=sparse_shape_type, default=None,
                   help="sparse only: ROWSxCOLS (default 1024x1024)")
    p.add_argument("--batch", type=positive_int_type, default=None, help="sparse only: rows of x (default 64)")
    p.add_argument("--repeats", type=positive_int_type, default=None,
                   help="sparse and compress only: timings each (default 15; compress: 3)")
    args = p.parse_args(argv)
    if args.iters is not None and args.what in ("sparse", "quantize", "compress"):
        p.error(f"argument --iters: {args.what!r} trains nothing, so it takes no --iters")
    optimizer_steps = 100 if args.iters is None else args.iters     # 'optimizer' times 100 steps by default
    args.iters = 2000 if args.iters is None else args.iters
    for option in ("shape", "batch", "repeats"):
        takers = ("sparse", "compress") if option == "repeats" else ("sparse",)
        if getattr(args, option) is not None and args.what not in takers:
            takes = "'sparse' and 'compress' take" if option == "repeats" else "'sparse' takes"
            p.error(f"argument --{option}: only {takes} it, not {args.what!r}")
    if args.nanogpt is not None:  # before any training, not after it
        if args.what != "train":
            p.error(f"argument --nanogpt: only 'train' runs nanoGPT side by side, not {args.what!r}")
        try:
            check_nanogpt_dir(args.nanogpt)
        except ValueError as e:
            p.error(str(e))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.what == "train":
        out = bench_train(args.iters, args.seed, args.threads)
        print(f"labkit baby GPT, {out['iters']} iters: val loss {out['val_loss']:.4f}, {out['tokens_per_s']:.0f} tokens/s "
              f"({out['ms_per_iter']:.1f} ms/iter, {out['threads']} threads)")
        if args.nanogpt:
            ref = run_nanogpt(Path(args.nanogpt), args.iters, out["threads"])
            out["nanogpt_side_by_side"] = ref
            out["speedup_vs_nanogpt"] = round(out["tokens_per_s"] / ref["tokens_per_s"], 3)
            out["val_loss_minus_nanogpt"] = round(out["val_loss"] - ref["val_loss"], 4)
            print(f"nanoGPT train.py,  same config and data: val loss {ref['val_loss']:.4f}, "
                  f"{ref['tokens_per_s']:.0f} tokens/s ({ref['ms_per_iter']:.1f} ms/iter) -> labkit is "
                  f"{out['speedup_vs_nanogpt']:.2f}x the throughput, {out['val_loss_minus_nanogpt']:+.4f} nats")
        else:
            print("(pass --nanogpt DIR to run nanoGPT's train.py here too, same config and data, and compare)")
    elif args.what == "ablation":
        out = bench_ablation(args.iters, args.seed)
    elif args.what == "sparse":
        out = bench_sparse(args.shape or (1024, 1024), args.batch or 64, args.repeats or 15, args.threads or 1,
                           args.seed)
        print_sparse(out)
    elif args.what == "quantize":
        out = bench_quantize(threads=args.threads or 1, seed=args.seed)
        print_quantize(out)
    elif args.what == "compress":
        out = bench_compress(repeats=args.repeats or 3)
        print_compress(out)
    else:
        out = bench_optimizer(optimizer_steps)
    print(json_line(out))
    return out


if __name__ == "__main__":
    main()
