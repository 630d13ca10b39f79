"""What every lab does first and last: seed everything and say so; report its own time and memory.

    from labkit.lab import start, finish
    start(seed=0)      # first code cell: seeds, prints seed / torch version / threads
    ...
    finish()           # last code cell: wall time since start() and peak RSS of this kernel
"""
from __future__ import annotations

import os
import random
import time

import numpy as np
import torch

from labkit.memory import peak_rss_mb

_started_at: float | None = None
# Budgets every lab is held to on a 2-core laptop CPU (see the course plan).
LAB_TIME_BUDGET_S = 180
LAB_RSS_BUDGET_MB = 1536


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch so a lab gives the same numbers on every run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def start(seed: int = 0, threads: int | None = None) -> None:
    """Seed everything, fix the thread count if asked, use a non-interactive-safe plot style, and print it all."""
    global _started_at
    _started_at = time.perf_counter()
    seed_everything(seed)
    if threads is not None:
        torch.set_num_threads(threads)
    import matplotlib.pyplot as plt
    plt.rcParams.update({"figure.dpi": 90, "axes.grid": True, "grid.alpha": 0.3})
    print(f"seed {seed} · torch {torch.__version__} · {torch.get_num_threads()} threads "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}) · {os.cpu_count()} CPUs")


def finish() -> dict:
    """Print and return this lab's wall time (s, since start()) and the kernel's peak RSS (MiB) vs the budgets."""
    elapsed = time.perf_counter() - _started_at if _started_at is not None else float("nan")
    rss = peak_rss_mb()
    print(f"this lab ran in {elapsed:.1f} s (budget {LAB_TIME_BUDGET_S} s) with peak RSS {rss:.0f} MiB "
          f"(budget {LAB_RSS_BUDGET_MB} MiB)")
    return {"elapsed_s": elapsed, "peak_rss_mb": rss}


def machine_memory_mb() -> dict[str, float]:
    """Total and currently available physical memory of this machine, in MiB."""
    MiB = 2 ** 20
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / MiB
    available = total
    try:  # Linux: what the kernel could hand out now without swapping
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: line.split()[1] for line in f}
        available = int(info["MemAvailable"]) / 1024
    except (OSError, KeyError, ValueError):
        pass
    return {"total_mb": total, "available_mb": available}


def import_cost_mb(module: str = "torch") -> dict[str, float]:
    """Resident memory (MiB) of a fresh Python before and after `import module`, measured in a subprocess."""
    import json
    import subprocess
    import sys

    # current RSS from /proc (peak RSS would be wrong here: Linux carries ru_maxrss across fork + exec)
    probe = ("import json, os; "
             "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20; "
             f"before = rss(); import {module}; "
             "print(json.dumps({'before_mb': before, 'after_mb': rss()}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    result["import_mb"] = result["after_mb"] - result["before_mb"]
    return result
