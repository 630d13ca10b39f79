"""What every lab does first and last, and the two commands that keep the labs honest.

    from labkit.lab import start, finish
    start(seed=0)      # first code cell: seeds, sets the thread count, prints seed / torch version / threads
    ...
    finish()           # last code cell: wall time since start() and peak RSS of this kernel

    python -m labkit.lab threads                      # time 1 vs 2 threads, quiet and beside a busy process
    python -m labkit.lab build notebooks/00_*.ipynb   # re-execute notebooks in place, print each one's time

Threads. PyTorch uses one thread per core by default. On a 2-core machine where something else also
runs (a browser, a class server's other kernels, a test worker), two PyTorch threads must wait for
each other at every parallel operation, and one of them keeps losing its core: steps get many times
slower. One thread does not wait for anyone. `python -m labkit.lab threads` measures this, and
`start()` uses its answer (DEFAULT_THREADS) unless you ask for another count with
`start(threads=N)` or the environment variable LABKIT_THREADS=N. Results are reproducible at a
given thread count; a different count may change the last digits (sums are added in another order).
"""
from __future__ import annotations

import argparse
import html
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from labkit.memory import peak_rss_mb

_started_at: float | None = None
# Budgets every lab is held to on a 2-core laptop CPU (see the course plan).
LAB_TIME_BUDGET_S = 180
LAB_RSS_BUDGET_MB = 1536

# The thread count start() sets, chosen by measurement (`python -m labkit.lab threads` prints it): on the
# course's 2-core machine, whenever anything else used a core, 2 threads were several times slower than 1
# for both a training step and a generation step of the baby GPT; on a quiet machine the two were about
# equally fast when the course was tried (issue 7). One thread costs little on an idle machine and avoids
# the collapse on a busy one.
DEFAULT_THREADS = 1
THREADS_ENV = "LABKIT_THREADS"
THREADS_REASON = ("2 threads collapse when another process shares the cores; "
                  "see python -m labkit.lab threads")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch so a lab gives the same numbers on every run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _check_threads(value, name: str) -> int:
    """`value` as a positive thread count, or ValueError naming `name`, the value and what is allowed."""
    try:
        n = int(value) if not isinstance(value, (bool, float)) else None
    except (TypeError, ValueError):
        n = None
    if n is None or n < 1 or (isinstance(value, str) and value.strip() != str(n)):
        raise ValueError(f"{name}={value!r}; allowed: a whole number of threads >= 1 "
                         f"(this machine has {os.cpu_count()} CPUs)")
    return n


def choose_threads(threads: int | None = None) -> tuple[int, str]:
    """The intra-op thread count a lab should use and why: the argument, else $LABKIT_THREADS, else the default."""
    if threads is not None:
        if isinstance(threads, str):  # an int in code; strings come only from the environment
            raise ValueError(f"threads={threads!r}; allowed: a whole number of threads >= 1 (an int, not a string)")
        return _check_threads(threads, "threads"), "asked for in start(threads=...)"
    env = os.environ.get(THREADS_ENV)
    if env is not None and env.strip():
        return _check_threads(env.strip(), THREADS_ENV), f"from {THREADS_ENV}={env.strip()}"
    return DEFAULT_THREADS, f"chosen: {THREADS_REASON}"


def start(seed: int = 0, threads: int | None = None) -> None:
    """Seed everything, set PyTorch's thread count (default DEFAULT_THREADS), set the plot style; print all of it.

    Returns None, so `lab.start(seed=0)` as a cell's last line shows only the printed line.
    """
    global _started_at
    n_threads, why = choose_threads(threads)
    _started_at = time.perf_counter()
    seed_everything(seed)
    torch.set_num_threads(n_threads)
    import matplotlib.pyplot as plt
    plt.rcParams.update({"figure.dpi": 90, "axes.grid": True, "grid.alpha": 0.3})
    print(f"seed {seed} · torch {torch.__version__} · {torch.get_num_threads()} "
          f"thread{'s' if torch.get_num_threads() != 1 else ''} ({why}; override: "
          f"start(threads=N) or {THREADS_ENV}=N) · {os.cpu_count()} CPUs")


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

    # current RSS from /proc (peak RSS would be wrong here: Linux carries ru_maxrss across fork + exec)
    probe = ("import json, os; "
             "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20; "
             f"before = rss(); import {module}; "
             "print(json.dumps({'before_mb': before, 'after_mb': rss()}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    result["import_mb"] = result["after_mb"] - result["before_mb"]
    return result


# ---------------------------------------------------------------------------------------------
# python -m labkit.lab threads: 1 vs 2 threads, quiet and with one competing CPU-bound process

# A process that keeps one core busy and does nothing else (what a browser tab, another kernel or a
# test worker does to a lab, at its worst).
_SPINNER = "while True:\n    pass\n"


def _baby_gpt_workload(seed: int = 0):
    """The baby GPT of the course (labkit.train's "baby" preset, vocabulary 84) and its AdamW optimizer."""
    from labkit.model import build_model
    from labkit.train import keep_freed_memory_in_process, make_config, make_optimizer

    keep_freed_memory_in_process()
    torch.set_flush_denormal(True)
    cfg = make_config("gpt", "baby")
    torch.manual_seed(seed)
    model = build_model("gpt", vocab_size=84, block_size=cfg.block_size, **cfg.model_args)
    return model, make_optimizer(model, cfg), cfg


def time_training_step_ms(model, opt, cfg, steps: int, generator: torch.Generator) -> float:
    """Mean wall time (ms) of one training step (forward, backward, clip, AdamW) of `model` on random tokens."""
    model.train()
    x = torch.randint(0, model.config.vocab_size, (steps, cfg.batch_size, cfg.block_size + 1), generator=generator)
    t0 = time.perf_counter()
    for i in range(steps):
        _, loss = model(x[i, :, :-1], x[i, :, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=True)
        opt.step()
    return 1000 * (time.perf_counter() - t0) / steps


def time_generation_step_ms(model, tokens: int, generator: torch.Generator) -> float:
    """Mean wall time (ms) per generated token: `tokens` tokens sampled with the KV cache after a 1-token prompt."""
    prompt = torch.zeros((1, 1), dtype=torch.long)
    t0 = time.perf_counter()
    with torch.no_grad():
        model.generate(prompt, max_new_tokens=tokens, generator=generator)
    return 1000 * (time.perf_counter() - t0) / tokens


def _summary(times_ms: list[float]) -> dict:
    q = statistics.quantiles(times_ms, n=4) if len(times_ms) >= 2 else [times_ms[0]] * 3
    return {"median_ms": statistics.median(times_ms), "min_ms": min(times_ms), "max_ms": max(times_ms),
            "q1_ms": q[0], "q3_ms": q[2], "repeats": len(times_ms)}


def thread_benchmark(thread_counts: tuple[int, ...] = (1, 2), repeats: int = 7, train_steps: int = 5,
                     gen_tokens: int = 63, conditions: tuple[str, ...] = ("quiet", "one competing process"),
                     progress: bool = True) -> dict:
    """Median and spread (ms) of a baby-GPT training step and generation step for each thread count and load.

    "one competing process" starts a CPU-bound Python loop (one core busy) for the duration of that
    condition and stops it afterwards. Thread counts are interleaved within every repeat, so a burst of
    outside load hits each of them alike; the first round of each condition is a warm-up and not kept.
    All counts run in this one process: after a 2-thread step, the idle pool thread may spin briefly,
    which can only slow the next 1-thread timing, so the printed advantage of 1 thread is not flattered.
    Returns {condition: {task: {threads: summary}}} plus the 2-vs-1 ratios of the medians.
    """
    for name, value in (("repeats", repeats), ("train_steps", train_steps), ("gen_tokens", gen_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}; allowed: a whole number >= 1")
    counts = tuple(_check_threads(t, "thread_counts") for t in thread_counts)
    allowed = ("quiet", "one competing process")
    for c in conditions:
        if c not in allowed:
            raise ValueError(f"conditions contains {c!r}; allowed: {allowed}")
    from tqdm.auto import tqdm

    model, opt, cfg = _baby_gpt_workload()
    before = torch.get_num_threads()
    results: dict = {"threads": list(counts), "cpus": os.cpu_count(), "repeats": repeats,
                     "train_steps": train_steps, "gen_tokens": gen_tokens, "conditions": {}}
    try:
        for condition in conditions:
            spinner = None
            if condition == "one competing process":
                spinner = subprocess.Popen([sys.executable, "-c", _SPINNER], stdin=subprocess.DEVNULL)
                time.sleep(0.5)  # let it reach full speed
            try:
                times = {task: {n: [] for n in counts} for task in ("training step", "generation step")}
                gen = torch.Generator().manual_seed(0)
                for r in tqdm(range(repeats + 1), desc=f"threads: {condition}", disable=not progress):
                    for n in counts:
                        torch.set_num_threads(n)
                        t_train = time_training_step_ms(model, opt, cfg, train_steps, gen)
                        t_gen = time_generation_step_ms(model, gen_tokens, gen)
                        if r > 0:  # round 0 warms up allocator, caches and thread pools
                            times["training step"][n].append(t_train)
                            times["generation step"][n].append(t_gen)
            finally:
                if spinner is not None:
                    spinner.kill()
                    spinner.wait()
            results["conditions"][condition] = {task: {n: _summary(ts) for n, ts in by_n.items()}
                                                for task, by_n in times.items()}
    finally:
        torch.set_num_threads(before)
    results["ratios"] = {  # median time with n threads / median time with the first count (1)
        condition: {task: {n: by_n[n]["median_ms"] / by_n[counts[0]]["median_ms"] for n in counts[1:]}
                    for task, by_n in tasks.items()}
        for condition, tasks in results["conditions"].items()}
    return results


def format_thread_benchmark(results: dict) -> str:
    """The benchmark as a table: median [min–max] ms per step, and each count's time relative to the first."""
    counts = results["threads"]
    lines = [(f"baby GPT on {results['cpus']} CPUs; median [min–max] of {results['repeats']} repeats "
              f"(training: {results['train_steps']} steps each; generation: {results['gen_tokens']} tokens each)")]
    header = f"{'load':24s} {'task':16s}" + "".join(f"{f'{n} thread' + ('s' if n > 1 else ''):>26s}" for n in counts)
    header += "".join(f"{f'{n} vs {counts[0]}':>10s}" for n in counts[1:])
    lines.append(header)
    for condition, tasks in results["conditions"].items():
        for task, by_n in tasks.items():
            row = f"{condition:24s} {task:16s}"
            for n in counts:
                s = by_n[n]
                row += f"{s['median_ms']:>10.2f} ms [{s['min_ms']:.2f}–{s['max_ms']:.2f}]".rjust(26)
            row += "".join(f"{results['ratios'][condition][task][n]:>9.2f}×" for n in counts[1:])
            lines.append(row)
    lines.append("(a ratio above 1 means slower than with one thread)")
    return "\n".join(lines)


def recommend_threads(results: dict) -> int:
    """The thread count whose worst median-time ratio over every load and task is smallest (ties go to fewer)."""
    counts = results["threads"]

    def worst(n: int) -> float:
        return max(by_n[n]["median_ms"] / by_n[counts[0]]["median_ms"]
                   for tasks in results["conditions"].values() for by_n in tasks.values())
    return min(counts, key=lambda n: (round(worst(n), 2), n))


# ---------------------------------------------------------------------------------------------
# python -m labkit.lab build NOTEBOOK...: execute notebooks in place

BUILD_TIMEOUT_S = 1800     # per cell; a cold cache trains the zoo inside a lab
_BAR_WIDTH = 10


def _widget_state(nb) -> dict:
    return (nb.get("metadata", {}).get("widgets", {})
            .get("application/vnd.jupyter.widget-state+json", {}).get("state", {}))


def finished_progress_text(state: dict, model_id: str) -> str | None:
    """The final text line of a tqdm.notebook bar from saved widget state, e.g. 'train: 100%|██████████| 20/20 [...]'.

    tqdm.auto's Jupyter bar is an HBox(HTML left text, IntProgress, HTML right text); its text/plain
    fallback is a snapshot taken when the bar was first displayed (0%). The saved widget state holds
    the bar's last values, from which the finished line is rebuilt. None if `model_id` is not such a bar.
    """
    box = state.get(model_id)
    if not box or box.get("model_name") != "HBoxModel":
        return None
    children = [c.removeprefix("IPY_MODEL_") for c in box.get("state", {}).get("children", [])]
    if len(children) != 3 or not all(c in state for c in children):
        return None
    left, bar, right = (state[c] for c in children)
    if (left.get("model_name"), bar.get("model_name"), right.get("model_name")) != \
            ("HTMLModel", "FloatProgressModel", "HTMLModel"):
        return None
    value, top = bar["state"].get("value", 0), bar["state"].get("max", 0)
    filled = int(_BAR_WIDTH * value / top) if top else 0
    bar_text = "█" * filled + " " * (_BAR_WIDTH - filled)
    text = (html.unescape(left["state"].get("value", "")) + "|" + bar_text + "|"
            + html.unescape(right["state"].get("value", "")))
    return text.replace("\u2007", " ").replace("\u2002", " ")


def finish_progress_bars(nb) -> int:
    """Rewrite every saved tqdm bar's text/plain to its finished line (from saved widget state); returns how many."""
    state = _widget_state(nb)
    fixed = 0
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            view = out.get("data", {}).get("application/vnd.jupyter.widget-view+json")
            if out.get("output_type") not in ("display_data", "execute_result") or not view:
                continue
            text = finished_progress_text(state, view.get("model_id", ""))
            if text is not None and out["data"].get("text/plain") != text:
                out["data"]["text/plain"] = text
                fixed += 1
    return fixed


def _referenced_models(obj, found: set[str]) -> None:
    """Add to `found` every widget model id `obj` refers to: "IPY_MODEL_<id>" strings and widget-view outputs."""
    if isinstance(obj, str):
        if obj.startswith("IPY_MODEL_"):
            found.add(obj.removeprefix("IPY_MODEL_"))
    elif isinstance(obj, dict):
        view = obj.get("application/vnd.jupyter.widget-view+json")
        if isinstance(view, dict) and isinstance(view.get("model_id"), str):
            found.add(view["model_id"])
        for value in obj.values():
            _referenced_models(value, found)
    elif isinstance(obj, list):
        for value in obj:
            _referenced_models(value, found)


def prune_widget_state(nb) -> int:
    """Keep only the saved widget models a displayed widget needs (its children, layouts, styles); returns how many went.

    A lab may build widgets it never shows (e.g. a second copy of a panel driven by code to print what
    a learner's clicks give); their state would only make the file bigger.
    """
    state = _widget_state(nb)
    if not state:
        return 0
    keep: set[str] = set()
    _referenced_models([c.get("outputs", []) for c in nb.get("cells", [])], keep)
    todo = list(keep)
    while todo:  # everything a kept model refers to is kept too
        found: set[str] = set()
        _referenced_models(state.get(todo.pop(), {}), found)
        todo.extend(found - keep)
        keep |= found
    dropped = [k for k in state if k not in keep]
    for k in dropped:
        del state[k]
    return len(dropped)


def _write_notebook_atomically(nb, path: Path) -> None:
    """nbformat.write to a temporary file beside `path` (same permissions as the old file), then rename."""
    import nbformat

    tmp = path.with_name(f".{path.stem}.build.tmp.ipynb")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            nbformat.write(nb, f)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class NotebookBuildError(RuntimeError):
    """A notebook did not run to the end; the message names the cell (index in the file) and the error."""


def build_notebook(path: Path | str, timeout_s: int = BUILD_TIMEOUT_S, kernel_name: str = "python3") -> dict:
    """Execute a notebook top to bottom in its own folder (1 thread) and rewrite it in place; returns time (s) and counts.

    The kernel gets OMP_NUM_THREADS=1, the state of the widgets the notebook shows is stored in it (so
    JupyterLab shows them before the kernel runs; widgets never displayed are left out), finished
    progress bars replace their 0% text snapshots, and the file is replaced
    only after a complete, error-free run (temporary file, then rename).
    """
    import nbformat
    from nbclient import NotebookClient

    path = Path(path).resolve()
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # per-cell execution timestamps only make every rebuild a diff
        cell.metadata.pop("execution", None)
    env_before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"   # the kernel inherits this environment
    t0 = time.perf_counter()
    try:
        client = NotebookClient(nb, timeout=timeout_s, kernel_name=kernel_name, store_widget_state=True,
                                record_timing=False, resources={"metadata": {"path": str(path.parent)}})
        client.execute()
    except Exception as e:
        failed = [i for i, c in enumerate(nb.cells) if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
        where = f"cell {failed[0]}" if failed else "the run"
        what = (f"{e.ename}: {e.evalue}" if getattr(e, "ename", None)
                else (str(e).strip().splitlines() or [type(e).__name__])[-1])
        raise NotebookBuildError(f"{where} raised {what}") from e
    finally:
        if env_before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env_before
    elapsed = time.perf_counter() - t0
    bars = finish_progress_bars(nb)
    dropped = prune_widget_state(nb)
    _write_notebook_atomically(nb, path)
    finish_lines = [line for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "stream"
                    for line in o.get("text", "").splitlines() if line.startswith("this lab ran in")]
    return {"notebook": str(path), "elapsed_s": elapsed, "progress_bars_finished": bars,
            "widget_models": len(_widget_state(nb)), "widget_models_not_shown": dropped,
            "lab_finish": finish_lines[-1] if finish_lines else None}


# ---------------------------------------------------------------------------------------------
# Command line

def _existing_notebook(value: str) -> Path:
    path = Path(value)
    if path.suffix != ".ipynb":
        raise argparse.ArgumentTypeError(f"NOTEBOOK={value!r} is not a .ipynb file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"NOTEBOOK={value!r} does not exist")
    return path


def _positive_int(value: str) -> int:
    try:
        return _check_threads(value, "value")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number >= 1") from None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m labkit.lab", description="Thread benchmark and notebook build.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("threads", help="time a baby-GPT training and generation step with 1 and 2 threads, "
                                       "quiet and beside one CPU-bound process; print medians and ratios")
    t.add_argument("--repeats", type=_positive_int, default=7, help="timed rounds per setting (default 7)")
    t.add_argument("--threads", type=_positive_int, nargs="+", default=[1, 2], help="thread counts (default 1 2)")
    t.add_argument("--quiet-only", action="store_true", help="skip the run beside a competing process")
    b = sub.add_parser("build", help="execute notebooks in place (1 thread, widget state kept), print each one's time")
    b.add_argument("notebooks", nargs="+", type=_existing_notebook, metavar="NOTEBOOK")
    b.add_argument("--timeout", type=_positive_int, default=BUILD_TIMEOUT_S, help="seconds per cell")
    args = p.parse_args(argv)

    if args.command == "threads":
        conditions = ("quiet",) if args.quiet_only else ("quiet", "one competing process")
        print(f"load on this machine before starting (1-min load average): {os.getloadavg()[0]:.2f} "
              f"on {os.cpu_count()} CPUs — 'quiet' means no process started by this benchmark, not an idle machine")
        results = thread_benchmark(tuple(args.threads), repeats=args.repeats, conditions=conditions)
        print(format_thread_benchmark(results))
        best = recommend_threads(results)
        print(f"fewest slow-downs: {best} thread{'s' if best > 1 else ''} "
              f"(labkit.lab.DEFAULT_THREADS = {DEFAULT_THREADS}; override with start(threads=N) or {THREADS_ENV}=N)")
        return 0

    failed = []
    for path in args.notebooks:
        print(f"building {path} ...", flush=True)
        try:
            info = build_notebook(path, timeout_s=args.timeout)
        except Exception as e:  # noqa: BLE001 - report, leave the file untouched, go on with the next one
            failed.append(str(path))
            print(f"FAILED {path}: {e} (the file was left unchanged)", flush=True)
            continue
        print(f"built {path} in {info['elapsed_s']:.1f} s ({info['widget_models']} widget models saved, "
              f"{info['widget_models_not_shown']} never shown left out; "
              f"{info['progress_bars_finished']} progress bars shown finished)", flush=True)
        if info["lab_finish"]:
            print(f"  its last cell: {info['lab_finish']}", flush=True)
    if failed:
        print(f"{len(failed)} of {len(args.notebooks)} notebooks failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
