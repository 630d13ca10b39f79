"""Static arena planning: give every tensor of a training step a fixed offset in one buffer, before it runs.

    events = training_step_trace(model)                 # every tensor a real training step allocates
    lives = lifetimes(events)                            # (size, first, last) per tensor
    peak_live_bytes(lives)                               # the lower bound: most bytes live at one op step
    plan = plan_greedy_by_size(lives)                    # largest first, each in the best gap (TFLite)
    check_plan(lives, plan)                              # raises if two tensors share bytes while both live
    plan.arena_bytes / peak_live_bytes(lives)            # how close to the bound (1.0 = perfect)

An allocator (labkit.pools) decides where a tensor goes when it is asked, knowing nothing of the
future. A training step is the same sequence of ops every time, so its whole allocation pattern is
known after tracing one step: a planner can then lay all tensors out in one arena ahead of time, and
two tensors may share bytes whenever their lifetimes do not overlap. This is what inference runtimes
(TFLite, ONNX Runtime, XLA) do with activation memory.

Three numbers frame every plan:
- no reuse: every tensor its own bytes (`no_reuse_bytes`, the sum of the sizes);
- the lower bound: the most bytes that are live at one op step (`peak_live_bytes`). No plan can be
  smaller, because those tensors all exist at once. A plan may be larger: bytes are one-dimensional,
  and a hole left by a freed tensor may be too small for the next one (fragmentation);
- a plan's `arena_bytes`: the end of the highest-placed tensor.

Two classic heuristics (described in Pisarchyk & Lee, "Efficient Memory Management for Deep Neural Net
Inference", 2020, and in the comments of TensorFlow Lite's arena planner, ArenaPlanner and
SimpleMemoryArena, which we read):
- **greedy by size**: place tensors from the largest to the smallest (equal sizes: the one used first
  first; TFLite puts tensors that live through the whole run before all others); each goes into the
  smallest gap, among the tensors already placed *that are live at the same time*, that fits it (or on
  top of them). Big tensors first means the small ones fill the holes between them.
- **first fit by time**: place tensors in the order they are created (what a malloc would see), each at
  the lowest offset free of tensors live at the same time.

Lifetimes are half-open, like labkit.memory.TensorEvent's [born, died): a tensor with first=3, last=7
is live during op steps 3, 4, 5 and 6, and may share bytes with a tensor whose first step is 7.
"""
from __future__ import annotations

import copy
import numbers
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn as nn

from labkit.memory import AllocationTracer, TensorEvent

__all__ = [
    "Lifetime", "Plan", "OPTIMIZERS", "training_step_trace", "inference_trace", "lifetimes", "peak_live_bytes",
    "no_reuse_bytes", "live_bytes_timeline", "plan_greedy_by_size", "plan_first_fit_by_time", "check_plan",
    "plan_summary",
]


class Lifetime(NamedTuple):
    """A tensor's `size` in bytes, live during op steps [first, last): `last` is the first step it is gone."""
    size: int
    first: int
    last: int


@dataclass
class Plan:
    """Where each tensor lives in the arena: offsets[i] (bytes) for lifetimes[i], and the arena's size in bytes."""
    offsets: list[int]
    arena_bytes: int
    alignment: int
    method: str
    sizes: list[int] = field(default_factory=list)   # the sizes placed, rounded up to `alignment` (bytes)

    def __len__(self) -> int:
        return len(self.offsets)


# ---------------------------------------------------------------------------------------------
# Traces of real steps
# ---------------------------------------------------------------------------------------------

def _make_optimizer(name: str, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer `name` stands for; "adamw" is the course's training loop's (fused AdamW)."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-3, fused=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=1e-3)
    if name == "momentum":
        return torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    return torch.optim.SGD(params, lr=1e-3)


#: optimizers training_step_trace knows
OPTIMIZERS = ("adamw", "adam", "momentum", "sgd")


def _check_int(name: str, value, minimum: int) -> int:
    """`value` as an int if it is an integer >= minimum, else a ValueError naming it."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum:
        return int(value)
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _batch(model: nn.Module, batch_size: int, seq_len: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Random token ids and targets (B, T) for `model` (seeded), and T. Values do not change any size."""
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"model must be a labkit language model (an nn.Module with .config), got {type(model).__name__}")
    batch_size = _check_int("batch_size", batch_size, 1)
    block = model.config.block_size
    seq_len = block if seq_len is None else _check_int("seq_len", seq_len, 1)
    if seq_len > block:
        raise ValueError(f"seq_len={seq_len} is longer than the model's block_size={block}")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), generator=gen)
    y = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), generator=gen)
    return x, y, seq_len


def training_step_trace(model: nn.Module, batch_size: int = 12, seq_len: int | None = 64, optimizer: str = "adamw",
                        steps: int = 1, seed: int = 0, warmup_steps: int = 1) -> list[TensorEvent]:
    """Every tensor `steps` real training steps allocate (forward, loss, backward, optimizer step, zero_grad).

    Runs on a deep copy of `model` (the caller's weights, grads and RNG are untouched). The defaults are
    the baby GPT's training shape (batch 12, 64 tokens). Optimizer state: `warmup_steps` untraced steps
    run first, so the optimizer's moments (AdamW: exp_avg, exp_avg_sq) already exist and the trace is the
    steady state of training, the step that repeats thousands of times. With warmup_steps=0 the first
    step's state creation is in the trace, as tensors that never die (died=None).
    Each traced step ends with `zero_grad(set_to_none=True)` and drops the loss, so gradients and
    activations die inside the trace: what the step allocates, it frees.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r} is not known; allowed: {list(OPTIMIZERS)}")
    steps = _check_int("steps", steps, 1)
    warmup_steps = _check_int("warmup_steps", warmup_steps, 0)
    x, y, _ = _batch(model, batch_size, seq_len, seed)
    m = copy.deepcopy(model)
    m.train()
    opt = _make_optimizer(optimizer, list(m.parameters()))

    def step() -> None:
        _, loss = m(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with torch.random.fork_rng(devices=[]):     # dropout (if any) draws masks: leave the caller's RNG alone
        torch.manual_seed(seed)
        for _ in range(warmup_steps):
            step()
        with AllocationTracer() as tracer:
            for _ in range(steps):
                step()
    return tracer.events


def inference_trace(model: nn.Module, batch_size: int = 1, seq_len: int | None = None, seed: int = 0) -> list[TensorEvent]:
    """Every tensor one forward pass (no grad, eval mode, logits of every position) allocates."""
    x, _, _ = _batch(model, batch_size, seq_len, seed)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), AllocationTracer() as tracer:
            logits, _ = model(x, x)   # with targets, the model returns logits for every position
            del logits
    finally:
        model.train(was_training)
    return tracer.events


# ---------------------------------------------------------------------------------------------
# Lifetimes and the bounds
# ---------------------------------------------------------------------------------------------

def lifetimes(events: Sequence[TensorEvent], end: int | None = None) -> list[Lifetime]:
    """Lifetime(size, first, last) of each event, in event order; a tensor that never died lives until `end`.

    `end` defaults to the trace's last step + 1 (the largest born + 1 or died seen).
    """
    events = list(events)
    for i, e in enumerate(events):
        if not isinstance(e, TensorEvent):
            raise TypeError(f"events[{i}] must be a labkit.memory.TensorEvent, got {type(e).__name__}")
    if end is None:
        end = max([e.born + 1 for e in events] + [e.died for e in events if e.died is not None], default=0)
    end = _check_int("end", end, 0)
    out = []
    for e in events:
        last = end if e.died is None else e.died
        if last <= e.born:
            raise ValueError(f"event {e.id} ({e.op}) is born at step {e.born} but ends at {last}: "
                             f"end={end} must be after every tensor's birth")
        out.append(Lifetime(e.size_bytes, e.born, last))
    return out


def _as_lifetimes(lives: Iterable, name: str = "lifetimes") -> list[Lifetime]:
    """`lives` checked: each a Lifetime or a (size, first, last) tuple of ints with size > 0, 0 <= first < last."""
    out = []
    for i, item in enumerate(lives):
        try:
            size, first, last = item
        except (TypeError, ValueError):
            raise TypeError(f"{name}[{i}] must be a (size, first, last) triple, got {item!r}") from None
        ints = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (size, first, last))
        if not ints or size <= 0 or first < 0 or last <= first:
            raise ValueError(f"{name}[{i}] = {tuple(item)!r}: need integers size > 0 and 0 <= first < last "
                             f"(live during steps [first, last))")
        out.append(Lifetime(int(size), int(first), int(last)))
    return out


def _align(size: int, alignment: int) -> int:
    """`size` rounded up to a multiple of `alignment` bytes."""
    return -(-size // alignment) * alignment


def _check_alignment(alignment) -> int:
    alignment = _check_int("alignment", alignment, 1)
    if alignment & (alignment - 1):
        raise ValueError(f"alignment must be a power of two (bytes), got {alignment}")
    return alignment


def live_bytes_timeline(lives: Iterable, alignment: int = 1) -> list[int]:
    """Bytes live during each op step 0 .. max(last) - 1 (sizes rounded up to `alignment`)."""
    lives = _as_lifetimes(lives)
    alignment = _check_alignment(alignment)
    end = max((lv.last for lv in lives), default=0)
    delta = np.zeros(end + 1, dtype=np.int64)
    for lv in lives:
        s = _align(lv.size, alignment)
        delta[lv.first] += s
        delta[lv.last] -= s
    return np.cumsum(delta[:end]).tolist()


def peak_live_bytes(lives: Iterable, alignment: int = 1) -> int:
    """The lower bound on any arena: the most bytes live at one op step (sizes rounded up to `alignment`)."""
    return max(live_bytes_timeline(lives, alignment), default=0)


def no_reuse_bytes(lives: Iterable, alignment: int = 1) -> int:
    """Arena bytes when no two tensors share memory: the sum of the sizes (each rounded up to `alignment`)."""
    alignment = _check_alignment(alignment)
    return sum(_align(lv.size, alignment) for lv in _as_lifetimes(lives))


# ---------------------------------------------------------------------------------------------
# Planners
# ---------------------------------------------------------------------------------------------

def _place(order: list[int], lives: list[Lifetime], sizes: list[int], gap: str) -> list[int]:
    """Offsets for tensors placed in `order`: each in a gap among the placed tensors live at the same time.

    gap="smallest": the smallest gap that fits (best fit; on top of everything if none does);
    gap="lowest": the lowest offset that fits (first fit).
    """
    n = len(lives)
    first = np.array([lv.first for lv in lives], dtype=np.int64)
    last = np.array([lv.last for lv in lives], dtype=np.int64)
    offsets = np.full(n, -1, dtype=np.int64)
    ends = np.zeros(n, dtype=np.int64)
    placed = np.zeros(n, dtype=bool)
    for i in order:
        size = sizes[i]
        # placed tensors that share at least one step with tensor i: their bytes are taken
        others = np.flatnonzero(placed & (first < last[i]) & (first[i] < last))
        best_offset, best_gap = None, None
        cursor = 0                                  # lowest byte not yet known to be taken
        for j in others[np.argsort(offsets[others], kind="stable")]:
            hole = int(offsets[j]) - cursor
            if hole >= size:
                if gap == "lowest":
                    best_offset = cursor
                    break
                if best_gap is None or hole < best_gap:
                    best_offset, best_gap = cursor, hole
            cursor = max(cursor, int(ends[j]))
        if best_offset is None:
            best_offset = cursor                    # on top of every tensor it overlaps in time
        offsets[i] = best_offset
        ends[i] = best_offset + size
        placed[i] = True
    return offsets.tolist()


def _plan(lives: Iterable, alignment: int, order_key, gap: str, method: str) -> Plan:
    lives = _as_lifetimes(lives)
    alignment = _check_alignment(alignment)
    if gap not in ("smallest", "lowest"):
        raise ValueError(f"gap={gap!r}; allowed: 'smallest' (best fit, TFLite's), 'lowest' (first fit)")
    sizes = [_align(lv.size, alignment) for lv in lives]
    order = sorted(range(len(lives)), key=lambda i: order_key(i, lives[i], sizes[i]))
    offsets = _place(order, lives, sizes, gap)
    arena = max((o + s for o, s in zip(offsets, sizes)), default=0)
    return Plan(offsets, arena, alignment, method, sizes)


def plan_greedy_by_size(lives: Iterable, alignment: int = 64, gap: str = "smallest") -> Plan:
    """TFLite's greedy by size: largest tensor first (ties: earlier first use), each in the smallest gap that fits.

    As in TFLite, tensors live for the whole trace (from step 0 to the last step) are placed before all
    others. Sizes are rounded up to `alignment` bytes, so every offset is a multiple of it.
    gap="lowest" takes the lowest offset that fits instead of the smallest gap.
    """
    lives = _as_lifetimes(lives)
    end = max((lv.last for lv in lives), default=0)

    def order(i: int, lv: Lifetime, size: int) -> tuple:
        whole_run = lv.first == 0 and lv.last == end
        return (not whole_run, -size, lv.first, i)

    return _plan(lives, alignment, order, gap, f"greedy by size ({gap} gap)")


def plan_first_fit_by_time(lives: Iterable, alignment: int = 64) -> Plan:
    """First fit by time: tensors in order of first use (ties: larger first), each at the lowest free offset."""
    return _plan(lives, alignment, lambda i, lv, s: (lv.first, -s, i), "lowest", "first fit by time")


def check_plan(lives: Iterable, plan: Plan) -> None:
    """Raise ValueError if `plan` is not valid for `lives`: overlap in time and space, misalignment, out of arena."""
    lives = _as_lifetimes(lives)
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be a labkit.arena.Plan, got {type(plan).__name__}")
    n = len(lives)
    if len(plan.offsets) != n:
        raise ValueError(f"the plan has {len(plan.offsets)} offsets for {n} lifetimes")
    a = plan.alignment
    size = np.array([lv.size for lv in lives], dtype=np.int64)
    first = np.array([lv.first for lv in lives], dtype=np.int64)
    last = np.array([lv.last for lv in lives], dtype=np.int64)
    off = np.array(plan.offsets, dtype=np.int64)
    end = off + size
    for i in range(n):
        if off[i] < 0 or off[i] % a:
            raise ValueError(f"tensor {i}: offset {off[i]} is not a non-negative multiple of alignment {a}")
        if end[i] > plan.arena_bytes:
            raise ValueError(f"tensor {i}: bytes [{off[i]}, {end[i]}) go past the arena's {plan.arena_bytes} bytes")
    for i in range(n):
        later = np.arange(i + 1, n)
        clash = later[(first[later] < last[i]) & (first[i] < last[later])
                      & (off[later] < end[i]) & (off[i] < end[later])]
        if clash.size:
            j = int(clash[0])
            raise ValueError(f"tensors {i} and {j} overlap: bytes [{off[i]}, {end[i]}) and [{off[j]}, {end[j]}) "
                             f"while both live (steps [{first[i]}, {last[i]}) and [{first[j]}, {last[j]}))")


def plan_summary(lives: Iterable, alignment: int = 64) -> dict:
    """Lower bound, no reuse and both planners' arena bytes, with each one's ratio to the bound, for `lives`.

    Keys: n_tensors, alignment, lower_bound_bytes, lower_bound_aligned_bytes (sizes rounded up to
    `alignment`: the bound an aligned plan can reach), no_reuse_bytes, greedy_by_size_bytes,
    first_fit_by_time_bytes, and *_ratio = bytes / lower_bound_bytes. Both plans are checked.
    """
    lives = _as_lifetimes(lives)
    bound = peak_live_bytes(lives)
    out = {"n_tensors": len(lives), "alignment": _check_alignment(alignment), "lower_bound_bytes": bound,
           "lower_bound_aligned_bytes": peak_live_bytes(lives, alignment), "no_reuse_bytes": no_reuse_bytes(lives)}
    for name, planner in (("greedy_by_size", plan_greedy_by_size), ("first_fit_by_time", plan_first_fit_by_time)):
        plan = planner(lives, alignment)
        check_plan(lives, plan)
        out[f"{name}_bytes"] = plan.arena_bytes
    for name in ("lower_bound_aligned", "no_reuse", "greedy_by_size", "first_fit_by_time"):
        out[f"{name}_ratio"] = out[f"{name}_bytes"] / bound if bound else 1.0
    return out
