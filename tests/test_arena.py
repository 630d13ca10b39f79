"""labkit.arena: traces of real steps, lifetimes, the lower bound and the two static planners."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from labkit import arena
from labkit.memory import AllocationTracer, TensorEvent
from labkit.model import GPT, GPTConfig



def small_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=17, block_size=16, n_layer=2, n_head=2, n_embd=16, mlp_hidden=32))


# ---- lifetimes and the bounds, by hand ----------------------------------------------------------------

def test_lifetimes_are_half_open_and_a_tensor_that_never_died_lives_to_the_end():
    events = [TensorEvent(0, 100, (25,), "float32", "aten.mm", born=0, died=3),
              TensorEvent(1, 40, (10,), "float32", "aten.relu", born=2, died=None),
              TensorEvent(2, 8, (2,), "float32", "aten.add", born=5, died=6)]
    assert arena.lifetimes(events) == [(100, 0, 3), (40, 2, 6), (8, 5, 6)]
    assert arena.lifetimes(events, end=9)[1] == arena.Lifetime(40, 2, 9)
    with pytest.raises(ValueError, match="end=2"):
        arena.lifetimes(events, end=2)            # the tensor that never died was born at step 2
    with pytest.raises(TypeError, match=r"events\[0\]"):
        arena.lifetimes([(1, 0, 1)])


def test_the_lower_bound_counts_only_tensors_live_at_the_same_step():
    # [0, 3) and [3, 5) never meet: the bound is the larger pair that does meet, 100 + 40 at step 2
    lives = [(100, 0, 3), (40, 2, 4), (90, 3, 5), (8, 4, 5)]
    assert arena.live_bytes_timeline(lives) == [100, 100, 140, 130, 98]
    assert arena.peak_live_bytes(lives) == 140
    assert arena.no_reuse_bytes(lives) == 238
    assert arena.peak_live_bytes(lives, alignment=64) == 128 + 64        # 100 -> 128, 40 -> 64
    assert arena.peak_live_bytes([]) == 0 and arena.no_reuse_bytes([]) == 0


@pytest.mark.parametrize("bad, match", [
    ([(0, 0, 1)], "size > 0"), ([(4, 2, 2)], "first < last"), ([(4, -1, 2)], "first < last"),
    ([(4.0, 0, 1)], "integers"), ([(True, 0, 1)], "integers"), ([(4, 0)], r"lifetimes\[0\]"),
])
def test_bad_lifetimes_are_rejected_with_the_offending_entry(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        arena.plan_greedy_by_size(bad)


@pytest.mark.parametrize("alignment", [0, 3, 48, True, 64.0])
def test_alignment_must_be_a_power_of_two(alignment):
    with pytest.raises(ValueError, match="alignment"):
        arena.plan_first_fit_by_time([(4, 0, 1)], alignment=alignment)


# ---- the planners on hand-made lifetimes --------------------------------------------------------------

def test_greedy_by_size_fills_the_hole_first_fit_by_time_cannot():
    # A (64 B) is born first, then B (128 B); A dies when C (128 B) comes, while B lives. First fit by time
    # put A at 0 and B at 64, so C cannot use A's 64-byte hole and goes on top: 320 B. Greedy by size
    # places the 128s first (B at 0, C above it) and A above B, where C only arrives after A died: 256 B.
    lives = [(64, 0, 2), (128, 1, 4), (128, 2, 4)]
    assert arena.peak_live_bytes(lives) == 256
    greedy, by_time = arena.plan_greedy_by_size(lives), arena.plan_first_fit_by_time(lives)
    assert greedy.arena_bytes == 256 and by_time.arena_bytes == 320
    assert by_time.offsets == [0, 64, 192]
    for plan in (greedy, by_time):
        arena.check_plan(lives, plan)


def test_smallest_gap_and_lowest_gap_differ_as_named():
    lives = [(64, 0, 10), (64, 0, 10), (32, 0, 10)]
    plan = arena.plan_greedy_by_size(lives, alignment=32)
    assert plan.offsets == [0, 64, 128] and plan.arena_bytes == 160
    # a 256-byte tensor at 0 and a 32-byte one at 320 die at step 2; the 64 at 256 and the 32 at 352 live on.
    # The last tensor (32 bytes from step 2) sees two holes: [0, 256) and [320, 352).
    lives = [(256, 1, 2), (64, 1, 6), (32, 1, 2), (32, 1, 6), (32, 2, 6)]
    best = arena.plan_greedy_by_size(lives, alignment=32, gap="smallest")
    low = arena.plan_greedy_by_size(lives, alignment=32, gap="lowest")
    for plan in (best, low):
        arena.check_plan(lives, plan)
        assert plan.offsets[:4] == [0, 256, 320, 352] and plan.arena_bytes == 384
    assert best.offsets[4] == 320          # the smallest hole that fits: exactly 32 bytes
    assert low.offsets[4] == 0             # the lowest free bytes: inside the big dead tensor's 256
    with pytest.raises(ValueError, match="gap='middle'"):
        arena.plan_greedy_by_size(lives, gap="middle")


def test_check_plan_names_the_two_tensors_that_overlap():
    lives = [(64, 0, 3), (64, 2, 5), (64, 3, 6)]
    good = arena.Plan([0, 64, 0], 128, 64, "by hand")
    arena.check_plan(lives, good)          # 0 and 2 share bytes but never a step
    with pytest.raises(ValueError, match="tensors 0 and 1 overlap"):
        arena.check_plan(lives, arena.Plan([0, 32, 128], 192, 32, "by hand"))
    with pytest.raises(ValueError, match="not a non-negative multiple of alignment 64"):
        arena.check_plan(lives, arena.Plan([0, 96, 0], 192, 64, "by hand"))
    with pytest.raises(ValueError, match="past the arena"):
        arena.check_plan(lives, arena.Plan([0, 64, 0], 100, 64, "by hand"))
    with pytest.raises(ValueError, match="2 offsets for 3"):
        arena.check_plan(lives, arena.Plan([0, 64], 128, 64, "by hand"))


# ---- property tests: any lifetimes -----------------------------------------------------------------------

lifetime = st.tuples(st.integers(1, 5000), st.integers(0, 40), st.integers(1, 12)).map(
    lambda t: (t[0], t[1], t[1] + t[2]))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(lives=st.lists(lifetime, max_size=40), alignment=st.sampled_from([1, 8, 64]))
def test_every_plan_is_valid_and_between_the_bound_and_no_reuse(lives, alignment):
    bound = arena.peak_live_bytes(lives, alignment)
    no_reuse = arena.no_reuse_bytes(lives, alignment)
    for plan in (arena.plan_greedy_by_size(lives, alignment), arena.plan_greedy_by_size(lives, alignment, "lowest"),
                 arena.plan_first_fit_by_time(lives, alignment)):
        arena.check_plan(lives, plan)
        assert len(plan) == len(lives)
        assert bound <= plan.arena_bytes <= no_reuse
        assert all(o % alignment == 0 for o in plan.offsets)
    assert arena.peak_live_bytes(lives) <= bound


@settings(max_examples=200, deadline=None, derandomize=True)
@given(lives=st.lists(lifetime, min_size=2, max_size=20), data=st.data())
def test_check_plan_rejects_a_plan_with_two_tensors_moved_onto_each_other(lives, data):
    plan = arena.plan_greedy_by_size(lives, alignment=1)
    meeting = [(i, j) for i in range(len(lives)) for j in range(i + 1, len(lives))
               if lives[i][1] < lives[j][2] and lives[j][1] < lives[i][2]]
    if not meeting:
        return
    i, j = data.draw(st.sampled_from(meeting))
    offsets = list(plan.offsets)
    offsets[j] = offsets[i]                                # now both start at the same byte, both live
    with pytest.raises(ValueError, match="overlap"):
        arena.check_plan(lives, arena.Plan(offsets, 2 * arena.no_reuse_bytes(lives), 1, "broken"))


# ---- real traces ------------------------------------------------------------------------------------------

def test_the_bound_is_the_tracers_own_peak():
    model = small_gpt()
    x = torch.randint(0, 17, (3, 16), generator=torch.Generator().manual_seed(0))
    with AllocationTracer() as tracer:
        model(x, x)[1].backward()
    lives = arena.lifetimes(tracer.events, end=tracer.n_steps)
    assert arena.peak_live_bytes(lives) == tracer.peak_live_bytes() > 0
    assert arena.live_bytes_timeline(lives) == tracer.live_bytes_timeline()


def test_a_training_step_trace_leaves_the_model_and_the_rng_alone_and_frees_what_it_allocates():
    model = small_gpt()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    events = arena.training_step_trace(model, batch_size=2, seq_len=8, steps=2)
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert events and all(e.died is not None for e in events)         # the steady-state step is closed
    # without the warm-up step, the optimizer's moments are created inside the trace and never die
    first = arena.training_step_trace(model, batch_size=2, seq_len=8, warmup_steps=0)
    n_params = sum(p.numel() for p in model.parameters())
    forever = sum(e.size_bytes for e in first if e.died is None)
    assert forever >= 2 * 4 * n_params                                   # exp_avg and exp_avg_sq, fp32
    # the same seed gives the same trace
    again = arena.training_step_trace(model, batch_size=2, seq_len=8, steps=2)
    assert [(e.size_bytes, e.born, e.died) for e in again] == [(e.size_bytes, e.born, e.died) for e in events]


def test_trace_arguments_are_checked():
    model = small_gpt()
    with pytest.raises(ValueError, match="optimizer='lion'"):
        arena.training_step_trace(model, optimizer="lion")
    with pytest.raises(ValueError, match="seq_len=17"):
        arena.training_step_trace(model, seq_len=17)
    with pytest.raises(ValueError, match="batch_size"):
        arena.inference_trace(model, batch_size=0)
    with pytest.raises(TypeError, match="model"):
        arena.training_step_trace("gpt")


def test_greedy_by_size_is_within_5_percent_of_the_bound_on_the_zoo_models_training_step(baby):
    """Lab 08's claim: the planned arena is within 1.05x of the peak of live bytes (and well under no reuse)."""
    lives = arena.lifetimes(arena.training_step_trace(baby))
    bound = arena.peak_live_bytes(lives)
    greedy = arena.plan_greedy_by_size(lives)
    by_time = arena.plan_first_fit_by_time(lives)
    arena.check_plan(lives, greedy)
    arena.check_plan(lives, by_time)
    assert bound <= greedy.arena_bytes <= 1.05 * bound
    assert bound <= by_time.arena_bytes
    assert arena.no_reuse_bytes(lives) > 2 * greedy.arena_bytes
    # the baby GPT's largest activation, (12·64 tokens, 512 MLP features) fp32, is in the trace
    assert max(lv.size for lv in lives) == 12 * 64 * 512 * 4


def test_inference_needs_a_far_smaller_arena_than_training(baby):
    inference = arena.lifetimes(arena.inference_trace(baby, batch_size=12, seq_len=64))
    training = arena.lifetimes(arena.training_step_trace(baby))
    plan = arena.plan_greedy_by_size(inference)
    arena.check_plan(inference, plan)
    assert plan.arena_bytes < arena.peak_live_bytes(training) / 4


def test_plan_summary_puts_the_three_numbers_side_by_side():
    lives = [(64, 0, 2), (128, 1, 4), (128, 2, 4)]
    summary = arena.plan_summary(lives)
    assert summary["lower_bound_bytes"] == 256 and summary["no_reuse_bytes"] == 320
    assert summary["greedy_by_size_bytes"] == 256 and summary["first_fit_by_time_bytes"] == 320
    assert summary["greedy_by_size_ratio"] == 1.0 and summary["first_fit_by_time_ratio"] == 1.25
    assert summary["n_tensors"] == 3 and summary["alignment"] == 64
    assert arena.plan_summary([])["greedy_by_size_ratio"] == 1.0


def test_tensors_live_for_the_whole_trace_are_placed_first_as_in_tflite():
    # the small tensor lives from step 0 to the end: it goes to offset 0 although it is the smallest
    lives = [(512, 1, 3), (64, 0, 5), (256, 3, 5)]
    plan = arena.plan_greedy_by_size(lives)
    assert plan.offsets[1] == 0 and plan.offsets[0] == plan.offsets[2] == 64
    arena.check_plan(lives, plan)
