"""Page faults of the real process: what glibc's malloc does with the bytes a training step frees.

    page_faults_per_step(keep_freed=False)   # a fresh Python process trains the zoo GPT; faults per step
    page_faults_per_step(keep_freed=True)    # the same, after labkit.train.keep_freed_memory_in_process()
    malloc_fault_demo(size_mb=64)            # malloc, touch and free one big buffer, round after round

The simulated allocators of labkit.pools meet the machine here. PyTorch's CPU tensors get their bytes
from the C library's malloc. glibc serves a big request (above its "mmap threshold") with a fresh
mapping from the kernel and unmaps it on free, and it gives the free top of its heap back too (above
the "trim threshold"). Memory the kernel hands out is not backed by RAM until it is first touched:
each first touch of a 4 KiB page is a *minor page fault*, a trap into the kernel that finds a zeroed
page. So a block returned to the OS costs one fault per page every time it is taken again.
glibc moves its mmap threshold up to the size of the last mmapped block it freed (up to 32 MiB on 64-bit
Linux, see `man mallopt`), so a repeated request of a few MiB stops faulting after a round or two; a
bigger one faults every round. `keep_freed_memory_in_process` raises both thresholds to 1 GiB, which
turns malloc into a caching allocator for these sizes: what PyTorch's CUDA caching allocator does on a
GPU, where asking the driver (cudaMalloc) is far slower than a page fault. Both thresholds are needed:
setting either one also switches glibc's automatic mmap threshold off, so a trim threshold alone leaves
the mmap threshold at its 128 KiB default and every tensor that big is mapped and unmapped each step
(`page_faults_per_step(False, mallopt={"trim_threshold": 2**30})` shows it). A few faults remain with
keep_freed: the heap still grows now and then as it fragments, and Python maps memory of its own.

Counts come from `resource.getrusage(RUSAGE_SELF).ru_minflt` (minor faults of the process so far),
read before and after each step. Each measurement runs in a FRESH Python process because mallopt
settings are process-wide and cannot be undone: a notebook that called keep_freed once would
otherwise measure "with" twice. Glibc on Linux only; elsewhere these functions raise RuntimeError.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["page_faults_per_step", "malloc_fault_demo", "fault_summary", "PAGE_BYTES", "MALLOPT_PARAMS"]

#: bytes per memory page on this machine (4096 on x86-64 Linux)
PAGE_BYTES: int = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
        return value
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    raise TypeError(f"{name} must be True or False, got {value!r}")


def fault_summary(counts: list[int]) -> dict:
    """Median, mean, min, max and interquartile range of per-step (or per-round) fault counts."""
    if not counts:
        raise ValueError("counts is empty: need at least one measured step")
    q = statistics.quantiles(counts, n=4) if len(counts) > 1 else [counts[0]] * 3
    return {"median": statistics.median(counts), "mean": statistics.fmean(counts), "min": min(counts),
            "max": max(counts), "iqr": q[2] - q[0]}


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB."""
    from labkit.memory import current_rss_mb, peak_rss_mb
    return current_rss_mb(), peak_rss_mb()


def _run_child(task: str, args: dict, timeout_s: float) -> dict:
    """Run `task` with `args` in a fresh Python process (one thread) and return the JSON it prints."""
    if not sys.platform.startswith("linux"):
        raise RuntimeError(f"page-fault measurements need Linux with glibc; this is {sys.platform}")
    root = str(Path(__file__).resolve().parent.parent)            # the folder holding the labkit package
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])]))
    cmd = [sys.executable, "-m", "labkit.faults", task, json.dumps(args)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        raise RuntimeError(f"the measuring process ({task}) failed with exit code {done.returncode}:\n{tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


#: the glibc mallopt parameters `page_faults_per_step(mallopt=...)` can set (their numbers in <malloc.h>)
MALLOPT_PARAMS: dict[str, int] = {"trim_threshold": -1, "mmap_threshold": -3}


def _check_mallopt(mallopt) -> dict[str, int]:
    if mallopt is None:
        return {}
    if not isinstance(mallopt, dict):
        raise TypeError(f"mallopt must be a dict like {{'mmap_threshold': 2**30}} or None, got {mallopt!r}")
    for key, value in mallopt.items():
        if key not in MALLOPT_PARAMS:
            raise ValueError(f"mallopt key {key!r} is not known; allowed: {sorted(MALLOPT_PARAMS)}")
        _check_int(f"mallopt[{key!r}]", value, 0)
    return dict(mallopt)


def page_faults_per_step(keep_freed: bool, steps: int = 20, warmup_steps: int = 5, batch_size: int = 12,
                         seq_len: int = 64, seed: int = 0, model: str = "baby-gpt", mallopt: dict | None = None,
                         timeout_s: float = 300.0) -> dict:
    """Minor page faults per training step of zoo model `model`, measured in a fresh process (counts, MiB, ms).

    The child process calls labkit.train.keep_freed_memory_in_process() first if `keep_freed`, loads the
    model, builds the course's optimizer (fused AdamW, labkit.train.make_optimizer), runs `warmup_steps`
    unmeasured steps (the first steps fault in the optimizer state and malloc's heap whatever the
    setting), then `steps` measured ones on seeded random batches (B, T) = (batch_size, seq_len).
    Returns faults (one count per measured step), its summary (median, mean, min, max, iqr), whether
    mallopt was applied, current and peak RSS (MiB) after the steps and the median step time (ms, on a
    shared machine: compare only side by side).

    `mallopt` sets single glibc thresholds instead (bytes; keys "mmap_threshold", "trim_threshold"), to see
    why keep_freed raises both: setting either one also switches off glibc's automatic mmap threshold.
    """
    keep_freed = _check_bool("keep_freed", keep_freed)
    if keep_freed and mallopt:
        raise ValueError(f"pass keep_freed=True or mallopt={mallopt!r}, not both: keep_freed sets both thresholds")
    args = {"mallopt": _check_mallopt(mallopt), "keep_freed": keep_freed, "steps": _check_int("steps", steps, 1),
            "warmup_steps": _check_int("warmup_steps", warmup_steps, 0),
            "batch_size": _check_int("batch_size", batch_size, 1), "seq_len": _check_int("seq_len", seq_len, 1),
            "seed": _check_int("seed", seed, 0), "model": model}
    if not isinstance(model, str):
        raise TypeError(f"model must be a zoo model's name (str), got {type(model).__name__}")
    out = _run_child("train", args, timeout_s)
    out.update(fault_summary(out["faults"]))
    return out


def malloc_fault_demo(size_mb: float = 64, repeats: int = 8, timeout_s: float = 120.0) -> dict:
    """Faults per round of malloc + touch every byte + free of a `size_mb` MiB buffer, without and with keeping.

    Each variant runs in its own fresh process (C malloc/free through ctypes, no PyTorch). Returns
    {"pages": pages one round touches, "without": {...}, "with": {...}}, each variant with its per-round
    fault counts ("faults") and their summary. Expect about one fault per page in the first round of both;
    afterwards "with" keeps the block and stops faulting, while "without" faults every round for buffers
    above glibc's largest automatic mmap threshold (32 MiB) and only in the first round or two below it.
    """
    if isinstance(size_mb, bool) or not isinstance(size_mb, (int, float)) or not 0 < size_mb <= 1024:
        raise ValueError(f"size_mb must be a number in (0, 1024] MiB, got {size_mb!r}")
    repeats = _check_int("repeats", repeats, 1)
    nbytes = int(size_mb * 2 ** 20)
    out = {"size_mb": size_mb, "pages": -(-nbytes // PAGE_BYTES)}
    for name, keep in (("without", False), ("with", True)):
        result = _run_child("malloc", {"keep_freed": keep, "nbytes": nbytes, "repeats": repeats}, timeout_s)
        result.update(fault_summary(result["faults"]))
        out[name] = result
    return out


# ---------------------------------------------------------------------------------------------
# What the fresh process runs
# ---------------------------------------------------------------------------------------------

def _apply_mallopt(settings: dict[str, int]) -> bool:
    """Set glibc malloc parameters by name; True if every one was accepted."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    return all(libc.mallopt(MALLOPT_PARAMS[key], value) == 1 for key, value in settings.items())


def _child_train(keep_freed: bool, steps: int, warmup_steps: int, batch_size: int, seq_len: int, seed: int,
                 model: str, mallopt: dict[str, int]) -> dict:
    applied = _apply_mallopt(mallopt) if mallopt else False          # before any big allocation
    import torch

    from labkit import train as train_mod
    from labkit import zoo

    if keep_freed:
        applied = train_mod.keep_freed_memory_in_process()
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    net, _ = zoo.load(model, progress=False)
    if seq_len > net.config.block_size:
        raise ValueError(f"seq_len={seq_len} is longer than the model's block_size={net.config.block_size}")
    net.train()
    opt = train_mod.make_optimizer(net, train_mod.make_config("gpt", "baby"))
    gen = torch.Generator().manual_seed(seed)
    V = net.config.vocab_size

    def step() -> None:
        x = torch.randint(0, V, (batch_size, seq_len), generator=gen)   # a new batch each step, as in training
        y = torch.randint(0, V, (batch_size, seq_len), generator=gen)
        _, loss = net(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup_steps):
        step()
    faults, times = [], []
    for _ in range(steps):
        f0, t0 = _minor_faults(), time.perf_counter()
        step()
        times.append(1000 * (time.perf_counter() - t0))
        faults.append(_minor_faults() - f0)
    rss, peak = _rss_mb()
    return {"keep_freed": keep_freed, "mallopt": mallopt, "mallopt_applied": applied, "faults": faults, "rss_mb": rss,
            "peak_rss_mb": peak, "step_ms_median": statistics.median(times), "steps": steps,
            "warmup_steps": warmup_steps, "batch_size": batch_size, "seq_len": seq_len, "model": model}


def _child_malloc(keep_freed: bool, nbytes: int, repeats: int) -> dict:
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    applied = False
    if keep_freed:
        from labkit.train import keep_freed_memory_in_process
        applied = keep_freed_memory_in_process()
    faults = []
    for _ in range(repeats):
        f0 = _minor_faults()
        ptr = libc.malloc(nbytes)
        if not ptr:
            raise MemoryError(f"malloc({nbytes}) failed")
        ctypes.memset(ptr, 1, nbytes)          # touch every page: this is where faults happen
        libc.free(ptr)
        faults.append(_minor_faults() - f0)
    return {"keep_freed": keep_freed, "mallopt_applied": applied, "faults": faults, "nbytes": nbytes}


def _main(argv: list[str]) -> None:
    task, args = argv[0], json.loads(argv[1])
    result = _child_train(**args) if task == "train" else _child_malloc(**args)
    print(json.dumps(result))


if __name__ == "__main__":
    _main(sys.argv[1:])
