"""Self-checks for the exercises, the fallback that keeps a student copy running, and the release tool.

In a lab, an exercise is a function the learner writes between nbgrader markers. The cell after
it runs a check on *the learner's function* (never on labkit's reference: a check of the
reference would pass everyone):

    check_cross_entropy(my_cross_entropy)        # prints "passed" or what is wrong, on a small example

and the lab continues with

    cross_entropy_fn = use_or_fallback(my_cross_entropy, check_cross_entropy, labkit.losses.cross_entropy)

which returns the learner's function if it passes, else labkit's reference with a note saying so:
a student copy with unsolved exercises still runs top to bottom and still draws every plot.

    python -m labkit.grading release notebooks/ student/   # student copies: solutions and hidden tests removed
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

PASS, FAIL, TODO = "passed", "failed", "not yet solved"


@dataclass
class CheckResult:
    """What a self-check found; truthy when the learner's function passed."""

    name: str
    status: str          # PASS, FAIL or TODO
    message: str

    def __bool__(self) -> bool:
        return self.status == PASS

    def __repr__(self) -> str:  # what a notebook shows if the result is the cell's last value
        return self.message


def _fmt(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor(shape={tuple(x.shape)}, {x.flatten()[:6].tolist()}{'…' if x.numel() > 6 else ''})"
    return repr(x)


def _close(got: Any, expected: Any, rtol: float, atol: float) -> bool:
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            got = torch.as_tensor(got, dtype=expected.dtype)
        return got.shape == expected.shape and torch.allclose(got.to(expected.dtype), expected, rtol=rtol, atol=atol)
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        return isinstance(got, (int, float)) and math.isclose(got, expected, rel_tol=rtol, abs_tol=atol)
    return got == expected


def run_check(name: str, fn: Callable, cases: list[tuple[str, tuple, dict, Any]],
              rtol: float = 1e-5, atol: float = 1e-6, quiet: bool = False) -> CheckResult:
    """Call `fn(*args, **kwargs)` for each (description, args, kwargs, expected); stop at the first mismatch.

    The expected values are computed by the caller from labkit's reference or a closed form.
    Prints one line: passed, not yet solved (NotImplementedError), or the failing example.
    """
    for description, args, kwargs, expected in cases:
        try:
            got = fn(*args, **kwargs)
        except NotImplementedError:
            result = CheckResult(name, TODO, f"⏳ {name}: not yet solved — write the function above, then run this cell again.")
            break
        except Exception as e:  # the learner's code crashed: say where, not a traceback wall
            result = CheckResult(name, FAIL, f"❌ {name}: {description} raised {type(e).__name__}: {e}")
            break
        if not _close(got, expected, rtol, atol):
            result = CheckResult(name, FAIL, f"❌ {name}: {description}\n   expected {_fmt(expected)}\n   got      {_fmt(got)}")
            break
    else:
        result = CheckResult(name, PASS, f"✅ {name}: passed ({len(cases)} examples).")
    if not quiet:
        print(result.message)
    return result


def use_or_fallback(student_fn: Callable, check: Callable[..., CheckResult], reference: Callable) -> Callable:
    """The learner's function if its check passes, else the reference (and say so), so later cells still run."""
    with contextlib.redirect_stdout(io.StringIO()):
        result = check(student_fn)
    if result:
        return student_fn
    print(f"ℹ️ {result.name} is {result.status}: the cells below use the reference implementation instead, "
          "so the rest of the lab still runs.")
    return reference


# ---------------------------------------------------------------------------------------------
# Checks used by the labs. Each builds small examples and their expected answers from labkit's
# reference implementation or a closed form, then tests the learner's function on them.


def check_tensor_bytes(fn: Callable[[tuple, torch.dtype], int], quiet: bool = False) -> CheckResult:
    """Exercise: bytes a dense tensor of `shape` and `dtype` occupies."""
    cases = []
    for shape, dtype in [((3, 4), torch.float32), ((128, 128), torch.float16), ((10,), torch.int8),
                         ((2, 3, 5), torch.float64), ((), torch.float32), ((0, 7), torch.float32)]:
        expected = torch.empty(shape, dtype=dtype).nbytes
        cases.append((f"tensor_bytes({shape}, {dtype})", (shape, dtype), {}, expected))
    return run_check("tensor_bytes", fn, cases, quiet=quiet)


def check_params_that_fit(fn: Callable[[int, float], int], quiet: bool = False) -> CheckResult:
    """Exercise: how many whole parameters fit in `budget_bytes` at `bytes_per_param` each."""
    cases = [(f"params_that_fit({b}, {bpp})", (b, bpp), {}, int(b // bpp))
             for b, bpp in [(1000, 4), (1023, 4), (24 * 2**30, 16), (10, 0.5), (3, 4)]]
    return run_check("params_that_fit", fn, cases, quiet=quiet)


def check_cross_entropy(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], quiet: bool = False) -> CheckResult:
    """Exercise: mean cross-entropy (nats) of logits (N, V) against targets (N,)."""
    g = torch.Generator().manual_seed(0)
    cases = [("uniform logits over 4 classes (answer: ln 4)", (torch.zeros(3, 4), torch.tensor([0, 1, 3])), {},
              torch.tensor(math.log(4)))]
    logits = torch.randn(5, 7, generator=g)
    targets = torch.randint(7, (5,), generator=g)
    cases.append(("random logits (5, 7)", (logits, targets), {}, torch.nn.functional.cross_entropy(logits, targets)))
    big = torch.tensor([[1000.0, 0.0, -1000.0], [0.0, 1000.0, 0.0]])
    cases.append(("huge logits (subtract the max before exp)", (big, torch.tensor([0, 2])), {},
                  torch.nn.functional.cross_entropy(big, torch.tensor([0, 2]))))
    return run_check("cross_entropy", fn, cases, rtol=1e-4, atol=1e-4, quiet=quiet)


def check_perplexity(fn: Callable[[float], float], quiet: bool = False) -> CheckResult:
    """Exercise: perplexity from a mean loss in nats."""
    cases = [(f"perplexity({x})", (x,), {}, math.exp(x)) for x in (0.0, math.log(84), 1.5)]
    return run_check("perplexity", fn, cases, quiet=quiet)


def check_bits_per_char(fn: Callable[[float], float], quiet: bool = False) -> CheckResult:
    """Exercise: bits per character from a mean loss in nats per character."""
    cases = [(f"bits_per_char({x})", (x,), {}, x / math.log(2)) for x in (math.log(2), 0.0, 1.5)]
    return run_check("bits_per_char", fn, cases, quiet=quiet)


def check_causal_attention(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                           quiet: bool = False) -> CheckResult:
    """Exercise: one head of causal self-attention, softmax(q kᵀ/√d + mask) v for (T, d) inputs."""
    g = torch.Generator().manual_seed(1)
    cases = []
    for T, d in [(1, 4), (5, 8), (7, 3)]:
        q, k, v = (torch.randn(T, d, generator=g) for _ in range(3))
        expected = torch.nn.functional.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True)[0]
        cases.append((f"q, k, v of shape ({T}, {d})", (q, k, v), {}, expected))
    return run_check("causal_attention", fn, cases, rtol=1e-4, atol=1e-5, quiet=quiet)


def check_kv_cache_bytes(fn: Callable[..., int], quiet: bool = False) -> CheckResult:
    """Exercise: KV-cache bytes for n_layer, n_kv_head, head_dim, seq_len, batch_size, bytes_per_element."""
    from labkit.memory import kv_cache_bytes
    cases = []
    for args in [(4, 4, 32, 64, 1, 4), (32, 32, 128, 4096, 1, 2), (80, 8, 128, 4096, 8, 2), (2, 1, 16, 10, 3, 4)]:
        n_layer, n_kv_head, head_dim, seq_len, batch, nbytes = args
        expected = kv_cache_bytes(n_layer, n_kv_head, head_dim, seq_len, batch, {4: "fp32", 2: "fp16"}[nbytes])
        cases.append((f"kv_cache_bytes(n_layer={n_layer}, n_kv_head={n_kv_head}, head_dim={head_dim}, "
                       f"seq_len={seq_len}, batch_size={batch}, bytes_per_element={nbytes})", args, {}, expected))
    return run_check("kv_cache_bytes", fn, cases, quiet=quiet)


def check_adam_training_bytes(fn: Callable[[int, int], int], quiet: bool = False) -> CheckResult:
    """Exercise: bytes for params + grads + Adam's two moment buffers, all in one dtype."""
    from labkit.memory import training_state_bytes
    cases = []
    for n_params, nbytes in [(1, 4), (806_528, 4), (7_000_000_000, 2)]:
        dtype = {4: "fp32", 2: "bf16"}[nbytes]
        expected = training_state_bytes(n_params, param_dtype=dtype, optimizer="adam")["total"]
        cases.append((f"adam_training_bytes(n_params={n_params}, bytes_per_element={nbytes})",
                      (n_params, nbytes), {}, expected))
    return run_check("adam_training_bytes", fn, cases, quiet=quiet)


# --- lab 01 checks (language models) ---

def check_ngram_probabilities(fn: Callable[[torch.Tensor, float], torch.Tensor], quiet: bool = False) -> CheckResult:
    """Exercise: add-k smoothed next-token probabilities from n-gram counts (normalised over the last dim)."""
    from labkit.ngram import ngram_probabilities  # the reference: P(next | context) = (c + k) / Σ_next (c + k)
    g = torch.Generator().manual_seed(0)
    examples = [
        ("2×2 bigram counts [[2, 0], [1, 3]], k=0 (each row: counts / row total)", torch.tensor([[2, 0], [1, 3]]), 0.0),
        ("the same counts with k=1 (add 1 to every count first)", torch.tensor([[2, 0], [1, 3]]), 1.0),
        ("a context never seen in training (row of zeros), k=1: must become uniform",
         torch.tensor([[0, 0, 0], [5, 0, 1], [1, 1, 1]]), 1.0),
        ("random 5×5 bigram counts, k=0.01", torch.randint(0, 20, (5, 5), generator=g), 0.01),
        ("random 4×4×4 trigram counts, k=0.5 (normalise over the LAST dimension)",
         torch.randint(0, 9, (4, 4, 4), generator=g), 0.5),
    ]
    cases = [(description, (counts, k), {}, ngram_probabilities(counts, k)) for description, counts, k in examples]
    return run_check("ngram_probabilities", fn, cases, rtol=1e-5, atol=1e-6, quiet=quiet)


# --- lab 02 checks (inside the Transformer) ---


def split_heads_reference(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """(B, T, C) -> (B, n_head, T, C // n_head): what CausalSelfAttention does to q, k and v."""
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)


def check_split_heads(fn: Callable[[torch.Tensor, int], torch.Tensor], quiet: bool = False) -> CheckResult:
    """Exercise: split the channels of (B, T, C) into n_head heads of C // n_head, giving (B, n_head, T, C // n_head).

    The last example runs labkit's CausalSelfAttention on heads split by the learner's function and
    compares with the module's own output.
    """
    from labkit.model import CausalSelfAttention, GPTConfig
    g = torch.Generator().manual_seed(2)
    cases = []
    for B, T, C, n_head in [(1, 3, 4, 2), (2, 5, 12, 3), (1, 4, 8, 1), (2, 6, 16, 16)]:
        x = torch.randn(B, T, C, generator=g)
        cases.append((f"x of shape ({B}, {T}, {C}) into {n_head} heads", ("split", x, n_head), {},
                      split_heads_reference(x, n_head)))
    attn = CausalSelfAttention(GPTConfig(vocab_size=1, block_size=5, n_layer=1, n_head=2, n_embd=8)).eval()
    with torch.no_grad():
        for w in (attn.qkv.weight, attn.proj.weight):
            w.copy_(torch.randn(w.shape, generator=g) / math.sqrt(8))
        x = torch.randn(1, 5, 8, generator=g)
        q, k, v = attn.qkv(x).split(8, dim=2)
        expected = attn(x)

    def run(kind, *args):
        if kind == "split":
            return fn(*args)
        q, k, v = args
        with torch.no_grad():
            heads = torch.nn.functional.scaled_dot_product_attention(fn(q, 2), fn(k, 2), fn(v, 2), is_causal=True)
            return attn.proj(heads.transpose(1, 2).reshape(1, 5, 8))

    cases.append(("labkit's CausalSelfAttention (2 heads, T=5, C=8) run on heads split by your function",
                  ("attention", q, k, v), {}, expected))
    return run_check("split_heads", run, cases, rtol=1e-4, atol=1e-5, quiet=quiet)


# --- lab 03 checks (where memory goes) ---

def check_gpt_param_count(fn: Callable[[Any], int], quiet: bool = False) -> CheckResult:
    """Exercise: parameters of `GPT(config)` by formula (bias=False; tying, positions and GQA vary)."""
    from labkit.memory import gpt_param_count
    from labkit.model import GPTConfig
    configs = [
        ("the baby GPT (untied head, learned positions)",
         GPTConfig(vocab_size=84, block_size=64, n_layer=4, n_head=4, n_embd=128, tie_weights=False)),
        ("tied embedding and head", GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)),
        ("sinusoidal positions (a buffer, not a parameter)",
         GPTConfig(vocab_size=65, block_size=256, n_layer=2, n_head=2, n_embd=64, positions="sinusoidal")),
        ("grouped-query attention (n_kv_head=2 of 8 heads)",
         GPTConfig(vocab_size=100, block_size=32, n_layer=3, n_head=8, n_kv_head=2, n_embd=64, tie_weights=False)),
        ("multi-query attention, rotary positions",
         GPTConfig(vocab_size=84, block_size=128, n_layer=6, n_head=6, n_kv_head=1, n_embd=192, positions="rotary")),
    ]
    cases = [(f"{what}: {c}", (c,), {}, gpt_param_count(c)) for what, c in configs]
    return run_check("gpt_param_count", fn, cases, quiet=quiet)


def check_mlp_activation_bytes(fn: Callable[[int, int, int, int], int], quiet: bool = False) -> CheckResult:
    """Exercise: bytes one block's MLP saves for backward, for batch_size, seq_len, n_embd, bytes_per_element.

    The expected value is the closed form 9·B·T·C·a (fc input, fc/activation output, proj input),
    which is what SavedTensorMeter measures on labkit.model.MLP (tests/test_grading_lab03.py checks that).
    """
    cases = [(f"mlp_activation_bytes(batch_size={B}, seq_len={T}, n_embd={C}, bytes_per_element={a})",
              (B, T, C, a), {}, 9 * B * T * C * a)
             for B, T, C, a in [(12, 64, 128, 4), (1, 1, 8, 4), (8, 4096, 4096, 2), (3, 10, 48, 2)]]
    return run_check("mlp_activation_bytes", fn, cases, quiet=quiet)


# ---------------------------------------------------------------------------------------------
# Release: solved notebooks -> student copies

SOLUTION_RE = re.compile(r"^([ \t]*)### BEGIN SOLUTION[^\n]*\n.*?^[ \t]*### END SOLUTION[^\n]*\n?", re.S | re.M)
HIDDEN_RE = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS[^\n]*\n.*?^[ \t]*### END HIDDEN TESTS[^\n]*\n?", re.S | re.M)
STUDENT_STUB = "{indent}# YOUR CODE HERE\n{indent}raise NotImplementedError()\n"


def strip_solutions(source: str) -> str:
    """A cell's source with every solution block replaced by a stub and every hidden-test block removed."""
    source = SOLUTION_RE.sub(lambda m: STUDENT_STUB.format(indent=m.group(1)), source)
    return HIDDEN_RE.sub("", source)


def release_notebook(src: Path, dst: Path) -> int:
    """Write the student copy of one notebook (outputs cleared); returns how many solution blocks were removed."""
    import nbformat

    from labkit.data import atomic_write_bytes

    nb = nbformat.read(src, as_version=4)
    removed = 0
    for cell in nb.cells:
        if cell.cell_type == "code":
            removed += len(SOLUTION_RE.findall(cell.source))
            cell.source = strip_solutions(cell.source)
            cell.outputs = []
            cell.execution_count = None
        elif cell.cell_type == "markdown":
            cell.source = SOLUTION_RE.sub("", cell.source)
    atomic_write_bytes(dst, nbformat.writes(nb).encode())
    return removed


def release(src_dir: Path | str, dst_dir: Path | str) -> dict[str, int]:
    """Student copies of every notebook in src_dir, written to dst_dir; returns blocks removed per notebook."""
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    if not src_dir.is_dir():
        raise ValueError(f"src_dir={str(src_dir)!r} is not a folder of notebooks")
    if src_dir.resolve() == dst_dir.resolve():
        raise ValueError("dst_dir must differ from src_dir: a release must never overwrite the solved notebooks")
    return {p.name: release_notebook(p, dst_dir / p.name) for p in sorted(src_dir.glob("*.ipynb"))}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m labkit.grading")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("release", help="write student copies (solutions and hidden tests removed)")
    r.add_argument("src_dir")
    r.add_argument("dst_dir")
    args = p.parse_args(argv)
    for name, n in release(args.src_dir, args.dst_dir).items():
        print(f"{name}: {n} solution block(s) removed")


if __name__ == "__main__":
    main()
