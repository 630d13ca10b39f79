"""labkit.pools: the allocators' invariants under long random alloc/free sequences (hypothesis stateful
tests, ≥ 10,000 operations per allocator, counted), the pure first_fit/release steps, the caching
allocator's documented policy, compaction keeping contents, and replay of a real traced training step.

Every invariant is checked against the memory map (`blocks()`), recomputed here, never against the
allocator's own running sums alone.
"""
from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from labkit.pools import (
    Block,
    CachingAllocator,
    CompactingArena,
    FirstFitAllocator,
    FixedBlockPool,
    InvalidHandle,
    MiB,
    OutOfMemory,
    best_fit,
    caching_round_size,
    caching_segment_bytes,
    first_fit,
    release,
    replay,
    summarize_replay,
)

# 100-150 examples of up to 80 steps, each step a burst of 1-8 allocs or frees: every machine performs
# over 10,000 operations in total (counted; run_machine tops up a run that falls short).
STATEFUL = settings(max_examples=100, stateful_step_count=80, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
MIN_OPERATIONS = 10_000


def contents(handle: int, size: int) -> bytes:
    """Bytes a test writes into a block: different for every handle, so an overlap or a bad move shows."""
    return random.Random(handle).randbytes(size)


def check_map(allocator, requested: dict[int, int]) -> None:
    """The invariants every allocator keeps, recomputed from its memory map."""
    blocks = allocator.blocks()
    stats = allocator.stats()
    assert blocks == sorted(blocks, key=lambda b: b.offset)
    for a, b in itertools.pairwise(blocks):
        assert a.end <= b.offset, f"blocks overlap: {a} and {b}"
    live = [b for b in blocks if b.handle is not None]
    holes = [b for b in blocks if b.handle is None]
    assert {b.handle for b in live} == set(requested)
    assert all(b.requested == requested[b.handle] and b.size >= b.requested for b in live)
    in_use, free = sum(b.size for b in live), sum(b.size for b in holes)
    assert stats["in_use_bytes"] == in_use
    assert stats["free_bytes"] == free
    assert stats["allocated_bytes"] == sum(requested.values())
    assert stats["overhead_bytes"] == in_use - stats["allocated_bytes"] >= 0
    # live + free + overhead == arena bytes (live = what callers asked for)
    assert stats["allocated_bytes"] + stats["free_bytes"] + stats["overhead_bytes"] == stats["arena_bytes"]
    assert in_use + free == stats["arena_bytes"] == sum(b.size for b in blocks)
    assert stats["n_live"] == len(requested)
    assert stats["largest_free_block"] == max((b.size for b in holes), default=0)
    assert stats["high_water_bytes"] >= in_use
    assert stats["internal_fragmentation"] == pytest.approx(1 - stats["allocated_bytes"] / in_use if in_use else 0)
    assert stats["external_fragmentation"] == pytest.approx(
        1 - stats["largest_free_block"] / free if free else 0)


class _AllocatorMachine(RuleBasedStateMachine):
    """alloc/free at random; after each, the map is checked. Subclasses build the allocator and say what must fit."""
    operations = 0
    max_examples = 100     # raised where examples come out short (an OutOfMemory-heavy or 4-rule machine)
    sizes = st.integers(1, 600)

    def __init__(self):
        super().__init__()
        self.allocator = self.make()
        self.requested: dict[int, int] = {}
        self.freed: list[int] = []

    def make(self):
        raise NotImplementedError

    def must_fit(self, size: int) -> bool:
        """Whether a request of `size` bytes has to succeed, decided from the memory map alone."""
        raise NotImplementedError

    # Each rule performs a short burst of operations (hypothesis's own cost per step is larger than an
    # allocator operation's), and the memory map is checked after every single one of them.
    @rule(data=st.data())
    def alloc(self, data):
        for size in data.draw(st.lists(self.sizes, min_size=1, max_size=8), label="sizes"):
            type(self).operations += 1
            if self.must_fit(size):
                handle = self.allocator.alloc(size)
                assert handle not in self.requested and handle not in self.freed
                self.requested[handle] = size
                self.after_alloc(handle, size)
            else:
                with pytest.raises(OutOfMemory) as info:
                    self.allocator.alloc(size)
                largest = self.allocator.stats()["largest_free_block"]   # after any cache release
                assert info.value.requested_bytes == size and info.value.largest_free_block == largest
                assert f"requested {size} bytes, the largest free block is {largest} bytes" in str(info.value)
            check_map(self.allocator, self.requested)

    def after_alloc(self, handle: int, size: int) -> None:
        pass

    @rule(data=st.data())
    def free(self, data):
        for _ in range(data.draw(st.integers(1, 8), label="n_frees")):
            if not self.requested:
                return
            handle = data.draw(st.sampled_from(sorted(self.requested)), label="handle")
            type(self).operations += 1
            self.allocator.free(handle)
            del self.requested[handle]
            self.freed.append(handle)
            check_map(self.allocator, self.requested)

    @rule(data=st.data())
    def bad_free(self, data):
        handle = data.draw(st.sampled_from(self.freed) if self.freed else st.just(10**9), label="stale handle")
        with pytest.raises(InvalidHandle, match="invalid handle"):
            self.allocator.free(handle)


def run_machine(machine: type[_AllocatorMachine]) -> None:
    """Run the machine until it has performed MIN_OPERATIONS allocs/frees in total.

    How many steps an example takes is hypothesis's choice, so a run can fall short; it is then topped
    up with another derandomized run (a different max_examples draws different examples).
    """
    machine.operations = 0
    examples = machine.max_examples
    for _ in range(4):
        run_state_machine_as_test(machine, settings=settings(STATEFUL, max_examples=examples))
        if machine.operations >= MIN_OPERATIONS:
            return
        examples += 40
    pytest.fail(f"{machine.__name__} performed only {machine.operations} operations in 4 runs")


# ------------------------------------------------------------------------------ fixed-block pool

class FixedPoolMachine(_AllocatorMachine):
    sizes = st.integers(1, 64)

    def make(self):
        return FixedBlockPool(block_bytes=64, n_blocks=24)

    def must_fit(self, size):
        return len(self.requested) < 24

    def after_alloc(self, handle, size):
        b = self.allocator.blocks()
        assert all(x.size == 64 and x.offset % 64 == 0 for x in b) and len(b) == 24


def test_fixed_block_pool_invariants_under_random_operations():
    run_machine(FixedPoolMachine)


def test_fixed_block_pool_rejects_requests_larger_than_a_block():
    pool = FixedBlockPool(64, 4)
    with pytest.raises(ValueError, match="block_bytes=64"):
        pool.alloc(65)
    handles = [pool.alloc(1) for _ in range(4)]
    assert pool.stats()["internal_fragmentation"] == pytest.approx(1 - 4 / 256)
    with pytest.raises(OutOfMemory, match="requested 1 bytes, the largest free block is 0 bytes"):
        pool.alloc(1)
    pool.free(handles[2])
    assert pool.address(pool.alloc(64)) == 128   # the freed block is the one reused (LIFO free list)


# ------------------------------------------------------------------------------ first fit / best fit

class _FirstFitMachine(_AllocatorMachine):
    policy = "first"

    def make(self):
        return FirstFitAllocator(4096, alignment=8, policy=self.policy)

    def must_fit(self, size):
        return any(b.handle is None and b.size >= -(-size // 8) * 8 for b in self.allocator.blocks())

    def after_alloc(self, handle, size):
        blocks = self.allocator.blocks()
        block = next(b for b in blocks if b.handle == handle)
        rounded = -(-size // 8) * 8
        assert block.size == rounded and block.offset % 8 == 0
        # The block came from the hole the policy names: rebuild the holes as they were just before.
        holes_before = [(b.offset, b.size) for b in blocks if b.handle is None]
        holes_before = release(holes_before, block.offset, block.size)
        fitting = [(o, s) for o, s in holes_before if s >= rounded]
        chosen = fitting[0] if self.policy == "first" else min(fitting, key=lambda h: (h[1], h[0]))
        assert block.offset == chosen[0]

    @invariant()
    def holes_are_merged_and_tile_the_arena(self):
        blocks = self.allocator.blocks()
        assert blocks[0].offset == 0 and blocks[-1].end == 4096
        assert all(a.end == b.offset for a, b in itertools.pairwise(blocks))
        assert not any(a.handle is None and b.handle is None for a, b in itertools.pairwise(blocks))


class FirstFitMachine(_FirstFitMachine):
    policy = "first"


class BestFitMachine(_FirstFitMachine):
    policy = "best"
    max_examples = 120


def test_first_fit_invariants_under_random_operations():
    run_machine(FirstFitMachine)


def test_best_fit_invariants_under_random_operations():
    run_machine(BestFitMachine)


def test_first_fit_pure_function_edge_cases():
    holes = [(0, 16), (32, 64), (200, 8)]
    frozen = list(holes)
    assert first_fit(holes, 16) == (0, [(32, 64), (200, 8)])           # exact fit: the hole disappears
    assert first_fit(holes, 17) == (32, [(0, 16), (49, 47), (200, 8)])  # split: the tail stays a hole
    assert first_fit(holes, 64) == (32, [(0, 16), (200, 8)])
    assert best_fit(holes, 8) == (200, [(0, 16), (32, 64)])              # best fit takes the smallest hole
    assert first_fit(holes, 8) == (0, [(8, 8), (32, 64), (200, 8)])
    assert holes == frozen                                               # the input list is not mutated
    with pytest.raises(OutOfMemory, match="requested 65 bytes, the largest free block is 64 bytes") as e:
        first_fit(holes, 65)
    assert e.value.largest_free_block == 64 and e.value.free_bytes == 88
    with pytest.raises(OutOfMemory, match="largest free block is 0 bytes"):
        first_fit([], 1)
    for bad in (0, -3, 2.5, True, "8"):
        with pytest.raises(ValueError, match="size"):
            first_fit(holes, bad)


def test_release_pure_function_edge_cases():
    holes = [(0, 16), (32, 16)]
    frozen = list(holes)
    assert release(holes, 16, 16) == [(0, 48)]                  # touches both: three holes become one
    assert release(holes, 16, 8) == [(0, 24), (32, 16)]         # merges left only
    assert release(holes, 24, 8) == [(0, 16), (24, 24)]         # merges right only
    assert release(holes, 64, 8) == [(0, 16), (32, 16), (64, 8)]   # after the last hole, sorted
    assert release([(8, 8)], 0, 4) == [(0, 4), (8, 8)]           # before the first hole, not touching
    assert release([], 5, 3) == [(5, 3)]
    assert holes == frozen
    for offset, size in [(0, 4), (8, 16), (40, 4), (30, 4), (12, 30)]:   # each overlaps a hole
        with pytest.raises(ValueError, match="double free"):
            release(holes, offset, size)
    with pytest.raises(ValueError, match="offset"):
        release(holes, -1, 4)
    with pytest.raises(ValueError, match="size"):
        release(holes, 100, 0)


@given(st.lists(st.tuples(st.booleans(), st.integers(1, 40)), max_size=60))
@settings(max_examples=200, deadline=None, derandomize=True, database=None)
def test_first_fit_and_release_compose_like_a_byte_map(ops):
    """first_fit/release against the plainest model: a list of 512 booleans (True = free)."""
    free = [True] * 512
    holes, live = [(0, 512)], []
    for is_alloc, size in ops:
        if is_alloc or not live:
            runs = [i for i in range(512 - size + 1) if all(free[i:i + size]) and (i == 0 or not free[i - 1])]
            if not runs:
                with pytest.raises(OutOfMemory):
                    first_fit(holes, size)
                continue
            offset, holes = first_fit(holes, size)
            assert offset == runs[0]
            free[offset:offset + size] = [False] * size
            live.append((offset, size))
        else:
            offset, size = live.pop(size % len(live))
            holes = release(holes, offset, size)
            free[offset:offset + size] = [True] * size
        expected, i = [], 0
        while i < 512:
            if free[i]:
                j = i
                while j < 512 and free[j]:
                    j += 1
                expected.append((i, j - i))
                i = j
            else:
                i += 1
        assert holes == expected


def test_first_fit_allocator_rejects_bad_arguments():
    for kwargs, name in [({"arena_bytes": 0}, "arena_bytes"), ({"arena_bytes": 64, "alignment": 12}, "alignment"),
                         ({"arena_bytes": 64, "policy": "worst"}, "policy")]:
        with pytest.raises(ValueError, match=name):
            FirstFitAllocator(**kwargs)
    arena = FirstFitAllocator(64)
    for bad in (0, -1, 1.5, None):
        with pytest.raises(ValueError, match="size"):
            arena.alloc(bad)
    for bad in (1, "a", None, True):
        with pytest.raises(InvalidHandle, match="never allocated"):
            arena.free(bad)
    h = arena.alloc(3)
    arena.free(h)
    with pytest.raises(InvalidHandle, match="already freed"):
        arena.free(h)
    assert issubclass(InvalidHandle, ValueError) and issubclass(OutOfMemory, MemoryError)


def test_external_fragmentation_blocks_a_request_that_total_free_bytes_could_hold():
    arena = FirstFitAllocator(1024)
    handles = [arena.alloc(128) for _ in range(8)]
    for h in handles[::2]:
        arena.free(h)
    s = arena.stats()
    assert s["free_bytes"] == 512 and s["largest_free_block"] == 128
    assert s["external_fragmentation"] == pytest.approx(0.75)
    with pytest.raises(OutOfMemory, match="requested 256 bytes, the largest free block is 128 bytes"):
        arena.alloc(256)


# ------------------------------------------------------------------------------ compaction

class CompactingMachine(_AllocatorMachine):
    max_examples = 150
    def make(self):
        return CompactingArena(4096, alignment=8)

    def must_fit(self, size):
        return self.allocator.stats()["largest_free_block"] >= -(-size // 8) * 8

    def after_alloc(self, handle, size):
        self.allocator.write(handle, contents(handle, size))

    @rule()
    def compact(self):
        before = {h: self.allocator.address(h) for h in self.requested}
        moved = self.allocator.compact()
        blocks = self.allocator.blocks()
        live = [b for b in blocks if b.handle is not None]
        assert moved == sum(b.size for b in live if before[b.handle] != b.offset)
        assert [b.handle for b in live] == sorted(before, key=before.get)   # order kept
        assert all(a.end == b.offset for a, b in itertools.pairwise(live)) and (not live or live[0].offset == 0)
        assert self.allocator.stats()["external_fragmentation"] == 0.0
        assert self.allocator.compact() == 0                                   # nothing left to move

    @invariant()
    def contents_survive(self):
        for handle, size in self.requested.items():
            assert self.allocator.read(handle) == contents(handle, size)


def test_compacting_arena_invariants_and_contents_under_random_operations():
    run_machine(CompactingMachine)


def test_compaction_closes_holes_and_keeps_contents():
    arena = CompactingArena(1024)
    handles = [arena.alloc(100) for _ in range(8)]   # 104 bytes each after alignment
    for h in handles:
        arena.write(h, contents(h, 100))
    for h in handles[1::2]:
        arena.free(h)
    before = arena.stats()
    assert before["external_fragmentation"] > 0.5
    with pytest.raises(OutOfMemory):
        arena.alloc(400)
    moved = arena.compact()
    assert moved == 3 * 104                           # blocks 2, 4, 6 slide down; block 0 stays
    assert [arena.address(h) for h in handles[::2]] == [0, 104, 208, 312]
    assert all(arena.read(h) == contents(h, 100) for h in handles[::2])
    after = arena.stats()
    assert after["external_fragmentation"] == 0.0 and after["largest_free_block"] == 1024 - 416
    assert after["free_bytes"] == before["free_bytes"]
    arena.alloc(400)                                   # fits now


def test_write_and_read_check_their_arguments():
    arena = FirstFitAllocator(64)
    h = arena.alloc(5)
    assert arena.read(h) == bytes(5)
    arena.write(h, b"abc")
    assert arena.read(h) == b"abc\0\0"
    with pytest.raises(ValueError, match="holds only 5 bytes"):
        arena.write(h, b"123456")
    arena.free(h)
    with pytest.raises(InvalidHandle):
        arena.read(h)


# ------------------------------------------------------------------------------ caching allocator

CAPACITY = 64 * MiB
caching_sizes = st.one_of(st.integers(1, 4096), st.integers(4097, MiB + 4096), st.integers(MiB, 12 * MiB),
                          st.integers(10 * MiB, 30 * MiB))


class CachingMachine(_AllocatorMachine):
    sizes = caching_sizes
    max_examples = 70

    def make(self):
        return CachingAllocator(capacity_bytes=CAPACITY)

    def must_fit(self, size):
        rounded = caching_round_size(size)
        small = rounded <= MiB
        segments = self.allocator.segments()
        pool = {s["segment"] for s in segments if (s["pool"] == "small") == small}
        blocks = self.allocator.blocks()
        if any(b.handle is None and b.segment in pool and b.size >= rounded for b in blocks):
            return True
        releasable = sum(s["size"] for s in segments if s["in_use_bytes"] == 0)
        return self.allocator.stats()["reserved_bytes"] - releasable + caching_segment_bytes(rounded) <= CAPACITY

    def after_alloc(self, handle, size):
        rounded = caching_round_size(size)
        block = next(b for b in self.allocator.blocks() if b.handle == handle)
        padding = block.size - rounded
        assert padding >= 0
        small = rounded <= MiB
        # the unsplit tail stays only when it is not worth a block of its own
        assert padding < 512 if small else padding <= MiB

    @invariant()
    def segments_are_tiled_and_merged(self):
        stats = self.allocator.stats()
        segments = self.allocator.segments()
        assert stats["reserved_bytes"] == sum(s["size"] for s in segments) <= CAPACITY
        assert stats["n_segments"] == len(segments) == stats["n_segment_allocs"] - stats["n_segment_frees"]
        blocks = self.allocator.blocks()
        for s in segments:
            own = [b for b in blocks if b.segment == s["segment"]]
            assert own[0].offset == s["base"] and own[-1].end == s["base"] + s["size"]
            assert all(a.end == b.offset for a, b in itertools.pairwise(own))
            assert not any(a.handle is None and b.handle is None for a, b in itertools.pairwise(own))
            assert s["size"] == 2 * MiB if s["pool"] == "small" else s["size"] % (2 * MiB) == 0
            assert all(b.requested <= MiB for b in own if b.handle) if s["pool"] == "small" else True


def test_caching_allocator_invariants_under_random_operations():
    run_machine(CachingMachine)


def test_caching_allocator_follows_pytorchs_documented_sizes():
    assert caching_round_size(1) == 512 and caching_round_size(513) == 1024 and caching_round_size(1024) == 1024
    assert caching_segment_bytes(512) == 2 * MiB and caching_segment_bytes(MiB) == 2 * MiB
    assert caching_segment_bytes(MiB + 512) == 20 * MiB and caching_segment_bytes(10 * MiB - 512) == 20 * MiB
    assert caching_segment_bytes(10 * MiB) == 10 * MiB and caching_segment_bytes(11 * MiB) == 12 * MiB

    cache = CachingAllocator(capacity_bytes=100 * MiB)
    a = cache.alloc(100)                      # small pool: one 2 MiB segment, split
    b = cache.alloc(3 * MiB)                  # large pool: a 20 MiB segment, split (17 MiB tail > 1 MiB)
    c = cache.alloc(3 * MiB)                  # served from that segment's cached tail: no new segment
    s = cache.stats()
    assert s["n_segment_allocs"] == 2 and s["reserved_bytes"] == 22 * MiB
    assert s["allocated_bytes"] == 100 + 6 * MiB and s["in_use_bytes"] == 512 + 6 * MiB
    cache.free(b)
    cache.free(c)                             # cached, not returned: reserved stays
    assert cache.stats()["reserved_bytes"] == 22 * MiB and cache.stats()["n_segments"] == 2
    d = cache.alloc(19 * MiB + 100)          # best fit reuses the merged 20 MiB block; a < 1 MiB tail is not split
    blk = next(x for x in cache.blocks() if x.handle == d)
    assert blk.size == 20 * MiB and cache.stats()["n_segment_allocs"] == 2
    cache.free(d)
    cache.free(a)
    assert cache.empty_cache() == 22 * MiB and cache.stats()["reserved_bytes"] == 0


def test_caching_allocator_releases_cached_segments_before_running_out():
    cache = CachingAllocator(capacity_bytes=40 * MiB)
    big = cache.alloc(30 * MiB)
    small = cache.alloc(100)
    cache.free(big)                               # 30 MiB cached, 32 MiB reserved
    h = cache.alloc(36 * MiB)                     # needs a 36 MiB segment: frees the cached 30 MiB first
    s = cache.stats()
    assert s["n_segment_frees"] == 1 and s["reserved_bytes"] == 38 * MiB and s["peak_reserved_bytes"] == 38 * MiB
    with pytest.raises(OutOfMemory, match=f"requested {4 * MiB} bytes") as e:
        cache.alloc(4 * MiB)                      # 20 MiB segment will not fit beside 38 MiB; nothing to release
    assert e.value.largest_free_block == 2 * MiB - 512
    cache.free(h)
    cache.free(small)
    with pytest.raises(InvalidHandle, match="already freed"):
        cache.free(small)


# ------------------------------------------------------------------------------ replay

class Event:
    def __init__(self, id, size_bytes, born, died):
        self.id, self.size_bytes, self.born, self.died = id, size_bytes, born, died


def test_replay_frees_before_allocating_at_each_step():
    events = [Event(0, 512, 0, 2), Event(1, 512, 1, None), Event(2, 512, 2, 3)]
    rows = replay(FirstFitAllocator(1024), events, record_blocks=True)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert [r["allocated_bytes"] for r in rows] == [512, 1024, 1024, 512]   # event 2 reuses event 0's bytes
    assert all(r["reserved_bytes"] == 1024 for r in rows)
    assert rows[2]["blocks"][0] == Block(0, 512, 3, requested=512)
    with pytest.raises(ValueError, match="dies at step 1"):
        replay(FirstFitAllocator(1024), [Event(0, 8, 1, 1)])


@pytest.fixture(scope="module")
def training_step_events():
    """The tensors of one real forward + backward + AdamW step of a small GPT (AllocationTracer)."""
    torch = pytest.importorskip("torch")
    from labkit.memory import AllocationTracer
    from labkit.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=32, n_layer=2, n_head=2, n_embd=32))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 65, (4, 32))
    with AllocationTracer() as tracer:
        _, loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return tracer.events, tracer.peak_live_bytes()


def test_replay_of_a_real_training_step(training_step_events):
    events, peak_live = training_step_events
    first = replay(FirstFitAllocator(64 * MiB, alignment=1), events)
    cached = replay(CachingAllocator(), events)
    assert max(r["allocated_bytes"] for r in first) == peak_live == max(r["allocated_bytes"] for r in cached)
    # the caching allocator keeps what it reserved; the first-fit arena needed at least the peak
    assert all(r["reserved_bytes"] >= r["in_use_bytes"] >= r["allocated_bytes"] for r in cached)
    assert first[-1]["high_water_offset"] >= peak_live
    assert cached[-1]["reserved_bytes"] == cached[-1]["peak_reserved_bytes"] > 0


@pytest.fixture(scope="module")
def zoo_traces(baby):
    """The zoo baby GPT's real training steps (batch 12, 64 tokens, AdamW, steady state): one step and two."""
    from labkit.arena import training_step_trace
    return {steps: training_step_trace(baby, batch_size=12, seq_len=64, steps=steps, seed=0) for steps in (1, 2)}


def test_replay_of_the_zoo_models_training_step(zoo_traces):
    from labkit.arena import lifetimes, peak_live_bytes
    events = zoo_traces[1]
    lower_bound = peak_live_bytes(lifetimes(events))
    first = summarize_replay(replay(FirstFitAllocator(1 << 30, alignment=64), events))
    rows = replay(CachingAllocator(capacity_bytes=1 << 30), events)
    cached = summarize_replay(rows)
    assert first["peak_allocated_bytes"] == cached["peak_allocated_bytes"] == lower_bound
    assert lower_bound <= first["reserved_bytes"] <= cached["reserved_bytes"]
    assert all(r["reserved_bytes"] >= r["in_use_bytes"] >= r["allocated_bytes"] for r in rows)
    assert cached["reserved_bytes"] % (2 * MiB) == 0 and cached["n_segment_allocs"] >= 2
    # A first-fit arena exactly as big as the high-water offset replays the same trace again.
    exact = summarize_replay(replay(FirstFitAllocator(first["reserved_bytes"], alignment=64), events))
    assert exact["reserved_bytes"] == first["reserved_bytes"]


def test_caching_allocator_reuses_its_segments_on_the_next_training_step(zoo_traces):
    """Why PyTorch caches: the second step finds every segment it needs already reserved."""
    one = summarize_replay(replay(CachingAllocator(), zoo_traces[1]))
    two = summarize_replay(replay(CachingAllocator(), zoo_traces[2]))
    assert two["n_segment_allocs"] == one["n_segment_allocs"] > 0
    assert two["reserved_bytes"] == one["reserved_bytes"]


def test_summarize_replay_needs_rows():
    with pytest.raises(ValueError, match="rows is empty"):
        summarize_replay([])


def test_auto_compaction_serves_the_trace_in_an_arena_of_the_lower_bound(zoo_traces):
    """First fit needs more than the peak of live bytes; compaction on failure makes the peak enough."""
    from labkit.arena import lifetimes, peak_live_bytes
    events = zoo_traces[1]
    lower_bound = peak_live_bytes(lifetimes(events), alignment=64)
    with pytest.raises(OutOfMemory):
        replay(FirstFitAllocator(lower_bound, alignment=64), events)
    arena = CompactingArena(lower_bound, alignment=64, auto_compact=True)
    rows = replay(arena, events)
    assert max(r["in_use_bytes"] for r in rows) == lower_bound
    assert arena.n_compactions >= 1 and arena.bytes_moved == rows[-1]["bytes_moved"] > 0


def test_auto_compaction_only_when_the_holes_add_up():
    arena = CompactingArena(64, alignment=8, auto_compact=True)
    a, b, c, d = (arena.alloc(16) for _ in range(4))
    for h in (a, c):
        arena.write(h, b"x")
        arena.free(h)
    arena.write(d, b"dd")
    e = arena.alloc(32)                              # no 32-byte hole, but 32 bytes free: compacts, then fits
    assert arena.stats()["n_compactions"] == 1 and arena.stats()["bytes_moved"] == 32
    assert arena.address(b) == 0 and arena.address(d) == 16 and arena.address(e) == 32 and arena.read(d)[:2] == b"dd"
    with pytest.raises(OutOfMemory, match="requested 1 bytes"):
        arena.alloc(1)                               # truly full: no compaction helps
    assert arena.n_compactions == 1
    with pytest.raises(TypeError, match="auto_compact"):
        CompactingArena(64, auto_compact="yes")
