"""Memory pools: allocators simulated over a byte arena, so we can watch where every byte goes.

    pool = FirstFitAllocator(4096)            # one arena of 4096 bytes, holes kept sorted by offset
    a = pool.alloc(100)                       # a handle (not an address: see CompactingArena)
    pool.free(a)
    pool.stats()["external_fragmentation"]    # 1 - largest hole / free bytes
    rows = replay(CachingAllocator(), training_step_trace(model))   # a real step's tensors (labkit.arena)
    summarize_replay(rows)["reserved_over_peak"]                     # what the allocator held / peak live

Four allocators, from the simplest to the one PyTorch runs on every GPU:

1. `FixedBlockPool`: n blocks of one size and a free list (a stack). Alloc and free are O(1) and any
   free block fits any request the pool accepts, but every request pays for a whole block.
2. `FirstFitAllocator`: one arena, a sorted list of holes. Alloc takes the first hole that fits
   (or the smallest, policy="best") and splits it; free puts the hole back and merges it with the
   holes that touch it. The two steps are pure functions, `first_fit` and `release` (lab 08,
   exercise 1). Holes left between live blocks are *external fragmentation*.
3. `CachingAllocator`: PyTorch's CUDA caching allocator's policy (see its docstring). Memory comes
   from the device in big *segments* that are kept ("cached") after their tensors are freed, so the
   next training step finds them again without asking the device.
4. `CompactingArena`: first fit plus compaction: live blocks slide down to close the holes. Callers
   hold handles, and the handle table is updated, so nothing they hold goes stale.

Every allocator answers `alloc(size) -> handle`, `free(handle)`, `blocks()` (the memory map) and
`stats()`, whose byte counts always satisfy

    allocated_bytes + overhead_bytes + free_bytes == arena_bytes     (in_use = allocated + overhead)

where allocated_bytes is what callers asked for, overhead_bytes the rounding/unsplit padding inside
blocks handed out, free_bytes the holes. Nothing here allocates real tensors: only sizes and offsets
move (plus a bytearray when you `write`/`read` contents, to show compaction keeps them).
"""
from __future__ import annotations

import bisect
import numbers
from collections.abc import Iterable
from dataclasses import dataclass

POLICIES = ("first", "best")

__all__ = [
    "POLICIES", "Block", "CachingAllocator", "CompactingArena", "FirstFitAllocator", "FixedBlockPool",
    "InvalidHandle", "OutOfMemory", "out_of_memory", "best_fit", "caching_round_size", "caching_segment_bytes", "first_fit",
    "release", "replay", "summarize_replay",
]


# ---------------------------------------------------------------------------------------------
# Blocks and errors
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Block:
    """One stretch of the arena: `size` bytes at `offset`; handle None = a free hole.

    `segment` is the caching allocator's segment id (None for single-arena allocators), and
    `requested` the bytes the caller asked for (0 for a hole): size - requested is padding.
    """
    offset: int
    size: int
    handle: int | None = None
    segment: int | None = None
    requested: int = 0

    @property
    def end(self) -> int:
        """First byte after the block (offset + size)."""
        return self.offset + self.size

    @property
    def is_free(self) -> bool:
        """True for a hole."""
        return self.handle is None


class OutOfMemory(MemoryError):
    """No hole (or new segment) can hold the request; says how big the largest free block was.

    Made by `out_of_memory(...)`, which fills in requested_bytes, largest_free_block and free_bytes. The
    class itself has no Python __init__, so a learner's function may raise it (or plain MemoryError)
    without running any of this module's code inside a graded check.
    """
    requested_bytes: int | None = None
    largest_free_block: int | None = None
    free_bytes: int | None = None


def out_of_memory(requested_bytes: int, largest_free_block: int, free_bytes: int | None = None,
                  detail: str = "") -> OutOfMemory:
    """An OutOfMemory error naming the request and the largest free block (and the free total, if given)."""
    message = (f"out of memory: requested {requested_bytes} bytes, "
               f"the largest free block is {largest_free_block} bytes")
    if free_bytes is not None:
        message += f" ({free_bytes} bytes free in total)"
    if detail:
        message += f"; {detail}"
    error = OutOfMemory(message)
    error.requested_bytes, error.largest_free_block, error.free_bytes = requested_bytes, largest_free_block, free_bytes
    return error


class InvalidHandle(ValueError):
    """free/read/write of a handle that was never handed out, or was already freed."""


def _check_size(size, name: str = "size") -> int:
    """size as a positive int (any integer type, not bool), else a ValueError naming it."""
    if isinstance(size, numbers.Integral) and not isinstance(size, bool) and size > 0:
        return int(size)
    raise ValueError(f"{name} must be a positive int (bytes), got {size!r} of type {type(size).__name__}")


def _round_up(n: int, multiple: int) -> int:
    """n rounded up to a multiple of `multiple` (ceiling division, in integers)."""
    return -(-n // multiple) * multiple


def _fragmentation(requested: int, in_use: int, largest_free: int, free: int) -> tuple[float, float]:
    """(internal, external) fragmentation: 1 - requested/in-use, 1 - largest hole/free bytes (0 when empty)."""
    internal = 1.0 - requested / in_use if in_use else 0.0
    external = 1.0 - largest_free / free if free else 0.0
    return internal, external


# ---------------------------------------------------------------------------------------------
# The two steps of a first-fit allocator, as pure functions over a sorted list of holes
# ---------------------------------------------------------------------------------------------

Holes = list[tuple[int, int]]   # (offset, size) of each free hole, sorted by offset, none touching


def _take(free_blocks: Holes, index: int, size: int) -> tuple[int, Holes]:
    """Carve `size` bytes off the front of hole `index`: (its offset, a new hole list)."""
    offset, hole = free_blocks[index]
    rest = [(offset + size, hole - size)] if hole > size else []   # split: the tail stays a hole
    return offset, free_blocks[:index] + rest + free_blocks[index + 1:]


def first_fit(free_blocks: Holes, size: int) -> tuple[int, Holes]:
    """Take `size` bytes from the FIRST hole (lowest offset) big enough: (offset taken, new holes list).

    The input list is not changed. Raises OutOfMemory (naming the largest hole) when none fits.
    """
    size = _check_size(size)
    for index, (_, hole) in enumerate(free_blocks):
        if hole >= size:
            return _take(free_blocks, index, size)
    raise out_of_memory(size, max((h for _, h in free_blocks), default=0), sum(h for _, h in free_blocks))


def best_fit(free_blocks: Holes, size: int) -> tuple[int, Holes]:
    """Take `size` bytes from the SMALLEST hole big enough (lowest offset among equals): (offset, new holes)."""
    size = _check_size(size)
    fitting = [(hole, index) for index, (_, hole) in enumerate(free_blocks) if hole >= size]
    if not fitting:
        raise out_of_memory(size, max((h for _, h in free_blocks), default=0), sum(h for _, h in free_blocks))
    _, index = min(fitting)
    return _take(free_blocks, index, size)


def release(free_blocks: Holes, offset: int, size: int) -> Holes:
    """Give [offset, offset + size) back: a new sorted holes list with touching neighbours merged.

    Overlapping an existing hole means the bytes were already free: ValueError "double free".
    """
    size = _check_size(size)
    if isinstance(offset, bool) or not isinstance(offset, numbers.Integral) or offset < 0:
        raise ValueError(f"offset must be an int >= 0 (bytes), got {offset!r}")
    i = bisect.bisect_left(free_blocks, (offset, 0))          # holes before i start before `offset`
    before = free_blocks[i - 1] if i > 0 else None
    after = free_blocks[i] if i < len(free_blocks) else None
    end = offset + size
    if (before and before[0] + before[1] > offset) or (after and after[0] < end):
        raise ValueError(f"double free: bytes [{offset}, {end}) overlap a hole that is already free")
    start, merged_end, lo, hi = offset, end, i, i
    if before and before[0] + before[1] == offset:            # the hole on the left touches: merge
        start, lo = before[0], i - 1
    if after and after[0] == end:                              # the hole on the right touches: merge
        merged_end, hi = after[0] + after[1], i + 1
    return free_blocks[:lo] + [(start, merged_end - start)] + free_blocks[hi:]


# ---------------------------------------------------------------------------------------------
# Shared bookkeeping: handles, contents
# ---------------------------------------------------------------------------------------------

class _ArenaAllocator:
    """What every single-arena allocator shares: a handle table, the running sums, contents."""

    def __init__(self, arena_bytes: int):
        self.arena_bytes = arena_bytes
        self._live: dict[int, tuple[int, int, int]] = {}   # handle -> (offset, size in use, requested)
        self._next_handle = 1                               # handles are never reused, so a stale one is caught
        self._requested = 0
        self._in_use = 0
        self._high_water = 0
        self._memory: bytearray | None = None               # created on the first write()

    def _new_handle(self, offset: int, size: int, requested: int) -> int:
        handle = self._next_handle
        self._next_handle += 1
        self._live[handle] = (offset, size, requested)
        self._requested += requested
        self._in_use += size
        self._high_water = max(self._high_water, self._in_use)
        return handle

    def _lookup(self, handle) -> tuple[int, int, int]:
        """(offset, size in use, requested) of a live handle, or InvalidHandle saying what is wrong with it."""
        if isinstance(handle, bool) or not isinstance(handle, numbers.Integral) or handle not in self._live:
            state = "already freed" if isinstance(handle, int) and 0 < handle < self._next_handle else "never allocated"
            raise InvalidHandle(f"invalid handle {handle!r}: {state} (live handles: {len(self._live)})")
        return self._live[handle]

    def _drop_handle(self, handle) -> tuple[int, int, int]:
        self._lookup(handle)
        offset, size, requested = self._live.pop(handle)
        self._requested -= requested
        self._in_use -= size
        return offset, size, requested

    def address(self, handle: int) -> int:
        """Where the handle's block currently starts (byte offset in the arena)."""
        return self._lookup(handle)[0]

    def write(self, handle: int, data: bytes) -> None:
        """Store `data` (at most the requested size) at the start of the handle's block."""
        offset, _, requested = self._lookup(handle)
        if len(data) > requested:
            raise ValueError(f"data is {len(data)} bytes but handle {handle} holds only {requested} bytes")
        if self._memory is None:
            self._memory = bytearray(self.arena_bytes)
        self._memory[offset:offset + len(data)] = data

    def read(self, handle: int) -> bytes:
        """The handle's `requested` bytes as stored (zeros where nothing was written)."""
        offset, _, requested = self._lookup(handle)
        if self._memory is None:
            return bytes(requested)
        return bytes(self._memory[offset:offset + requested])

    def _stats(self, free_bytes: int, largest_free: int) -> dict:
        internal, external = _fragmentation(self._requested, self._in_use, largest_free, free_bytes)
        return {"arena_bytes": self.arena_bytes, "allocated_bytes": self._requested, "in_use_bytes": self._in_use,
                "free_bytes": free_bytes, "overhead_bytes": self._in_use - self._requested,
                "high_water_bytes": self._high_water, "largest_free_block": largest_free,
                "n_live": len(self._live), "internal_fragmentation": internal,
                "external_fragmentation": external}


# ---------------------------------------------------------------------------------------------
# 1. Fixed-size blocks
# ---------------------------------------------------------------------------------------------

class FixedBlockPool(_ArenaAllocator):
    """n_blocks blocks of block_bytes each; a free list makes alloc and free O(1).

    Any request up to block_bytes gets a whole block (the rest is internal fragmentation);
    a bigger request is a ValueError, since no block can ever hold it. Free blocks are never merged,
    so the stats' external fragmentation (1 - one block / free bytes) is high, and harmless here:
    no request this pool accepts fails while one block is free.
    """

    def __init__(self, block_bytes: int, n_blocks: int):
        block_bytes = _check_size(block_bytes, "block_bytes")
        n_blocks = _check_size(n_blocks, "n_blocks")
        super().__init__(block_bytes * n_blocks)
        self.block_bytes = block_bytes
        self.n_blocks = n_blocks
        # A stack of free block indices: popping from the end is O(1). Reversed so that the first
        # allocations take blocks 0, 1, 2... (a tidy memory map, nothing more).
        self._free_list = list(range(n_blocks - 1, -1, -1))

    def alloc(self, size: int) -> int:
        """A handle to one whole block for a request of `size` ≤ block_bytes bytes."""
        size = _check_size(size)
        if size > self.block_bytes:
            raise ValueError(f"size {size} bytes is larger than this pool's block_bytes={self.block_bytes}")
        if not self._free_list:
            raise out_of_memory(size, 0, 0, f"all {self.n_blocks} blocks of {self.block_bytes} bytes are in use")
        index = self._free_list.pop()
        return self._new_handle(index * self.block_bytes, self.block_bytes, size)

    def free(self, handle: int) -> None:
        """Put the handle's block back on the free list."""
        offset, _, _ = self._drop_handle(handle)
        self._free_list.append(offset // self.block_bytes)

    def blocks(self) -> list[Block]:
        """Every block, live or free, sorted by offset (bytes)."""
        live = {offset: (h, req) for h, (offset, _, req) in self._live.items()}
        out = []
        for i in range(self.n_blocks):
            h, req = live.get(i * self.block_bytes, (None, 0))
            out.append(Block(i * self.block_bytes, self.block_bytes, h, requested=req))
        return out

    def stats(self) -> dict:
        """Byte counts (see the module docstring) and fragmentation of the pool."""
        free = len(self._free_list) * self.block_bytes
        return self._stats(free, self.block_bytes if self._free_list else 0)


# ---------------------------------------------------------------------------------------------
# 2. First fit (and best fit) over one arena
# ---------------------------------------------------------------------------------------------

class FirstFitAllocator(_ArenaAllocator):
    """One arena of arena_bytes; holes sorted by offset; split on alloc, merge neighbours on free.

    Sizes are rounded up to a multiple of `alignment` (so every block starts aligned; the rounding
    is counted as overhead). policy="first" takes the lowest hole that fits (fast, and keeps the
    top of the arena free), "best" the smallest (leaves the big holes for big requests).
    """

    def __init__(self, arena_bytes: int, alignment: int = 8, policy: str = "first"):
        arena_bytes = _check_size(arena_bytes, "arena_bytes")
        alignment = _check_size(alignment, "alignment")
        if alignment & (alignment - 1):
            raise ValueError(f"alignment must be a power of two, got {alignment}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        super().__init__(arena_bytes)
        self.alignment = alignment
        self.policy = policy
        self._holes: Holes = [(0, arena_bytes)]
        self._high_water_offset = 0

    def alloc(self, size: int) -> int:
        """A handle to a block of at least `size` bytes (rounded up to the alignment)."""
        size = _check_size(size)
        rounded = _round_up(size, self.alignment)
        find = first_fit if self.policy == "first" else best_fit
        try:
            offset, self._holes = find(self._holes, rounded)
        except OutOfMemory as e:   # re-raise naming the caller's size, not the rounded one
            raise out_of_memory(size, e.largest_free_block, e.free_bytes,
                              f"{rounded} bytes after rounding to {self.alignment}-byte alignment") from None
        self._high_water_offset = max(self._high_water_offset, offset + rounded)
        return self._new_handle(offset, rounded, size)

    def free(self, handle: int) -> None:
        """Return the handle's block to the holes, merged with any hole it touches."""
        offset, size, _ = self._drop_handle(handle)
        self._holes = release(self._holes, offset, size)

    def holes(self) -> Holes:
        """The free list: (offset, size) of each hole, sorted by offset (a copy)."""
        return list(self._holes)

    def blocks(self) -> list[Block]:
        """Live blocks and holes, sorted by offset (bytes)."""
        out = [Block(o, s, h, requested=r) for h, (o, s, r) in self._live.items()]
        out += [Block(o, s) for o, s in self._holes]
        return sorted(out, key=lambda b: b.offset)

    def stats(self) -> dict:
        """Byte counts, fragmentation, and high_water_offset: the highest byte ever used (the arena it needed)."""
        out = self._stats(sum(s for _, s in self._holes), max((s for _, s in self._holes), default=0))
        out["high_water_offset"] = self._high_water_offset
        out["n_holes"] = len(self._holes)
        return out


# ---------------------------------------------------------------------------------------------
# 3. PyTorch's CUDA caching allocator, simulated
# ---------------------------------------------------------------------------------------------

MiB = 1024 * 1024
MIN_BLOCK_BYTES = 512           # every size is rounded up to a multiple of 512 B
SMALL_REQUEST_BYTES = 1 * MiB   # requests up to 1 MiB go to the small pool...
SMALL_SEGMENT_BYTES = 2 * MiB   # ...whose segments are 2 MiB
LARGE_SEGMENT_BYTES = 20 * MiB  # requests of 1-10 MiB share 20 MiB segments
MIN_LARGE_ALLOC = 10 * MiB      # from 10 MiB up, a segment of the request's size...
ROUND_LARGE_BYTES = 2 * MiB     # ...rounded up to a multiple of 2 MiB


def caching_round_size(size: int) -> int:
    """The block size the caching allocator hands out for a request of `size` bytes (512-B multiple)."""
    return _round_up(_check_size(size), MIN_BLOCK_BYTES)


def caching_segment_bytes(rounded: int) -> int:
    """Bytes of the new segment ("cudaMalloc") the caching allocator makes for a rounded request."""
    if rounded <= SMALL_REQUEST_BYTES:
        return SMALL_SEGMENT_BYTES
    if rounded < MIN_LARGE_ALLOC:
        return LARGE_SEGMENT_BYTES
    return _round_up(rounded, ROUND_LARGE_BYTES)


class _Segment:
    """One device allocation: its blocks tile [base, base + size) in address order."""

    def __init__(self, segment_id: int, base: int, size: int, small: bool):
        self.id, self.base, self.size, self.small = segment_id, base, size, small
        self.blocks: list[list] = [[base, size, None, 0]]   # [offset, size, handle or None, requested]

    def is_empty(self) -> bool:
        return len(self.blocks) == 1 and self.blocks[0][2] is None


class CachingAllocator:
    """PyTorch's CUDA caching allocator's policy, over a simulated device of capacity_bytes.

    Sources read (no code copied): the comment block and size constants at the top of PyTorch's
    c10/cuda/CUDACachingAllocator.cpp, and the torch.cuda.memory_stats documentation (field meanings).
    Names: PyTorch's reserved_bytes is our reserved_bytes (= arena_bytes), its "segment" count our
    n_segments; its allocated_bytes counts whole blocks handed out (our in_use_bytes) and its
    requested_bytes what callers asked for (our allocated_bytes). The policy:

    - Every request is rounded up to a multiple of 512 B (so tiny tensors cost 512 B).
    - Requests ≤ 1 MiB come from the *small pool*, larger ones from the *large pool*. Small and large
      blocks never share a segment, so many small long-lived tensors cannot pin down a large segment.
    - The allocator first looks for the smallest cached free block of the right pool that fits
      (best fit). Only if none exists does it ask the device for a new segment ("cudaMalloc"): 2 MiB
      for the small pool; 20 MiB for requests of 1-10 MiB (so several of them share one); the request
      rounded up to 2 MiB from 10 MiB up.
    - A block bigger than the request is split when the remainder is worth keeping: ≥ 512 B in the
      small pool, > 1 MiB in the large pool (a smaller tail stays inside the block as padding).
    - free() never returns memory to the device: the block is cached (merged with free neighbours in
      its segment) for the next request. That is why `reserved` stays above `allocated`.
    - When a new segment would not fit in the device, the allocator releases every cached segment
      that is entirely free (`empty_cache`) and tries once more; then OutOfMemory. (PyTorch first tries
      releasing a single large-enough free segment, then all of them; we go straight to all.)
    Not modelled: streams and events, max_split_size_mb, expandable segments, CUDA graph pools.

    Offsets are simulated device addresses: each new segment starts where the last one ended.
    """

    def __init__(self, capacity_bytes: int = 1024 * MiB):
        self.capacity_bytes = _check_size(capacity_bytes, "capacity_bytes")
        self._segments: dict[int, _Segment] = {}
        self._where: dict[int, _Segment] = {}       # handle -> its segment
        self._next_handle = 1
        self._next_address = 0
        self._next_segment = 0
        self.n_segment_allocs = 0   # the "cudaMalloc" count
        self.n_segment_frees = 0    # the "cudaFree" count
        self._requested = self._in_use = self._reserved = 0
        self._high_water = self._peak_reserved = 0

    # -- alloc --
    def alloc(self, size: int) -> int:
        """A handle to a block of at least `size` bytes; may reserve a new segment from the device."""
        size = _check_size(size)
        rounded = caching_round_size(size)
        small = rounded <= SMALL_REQUEST_BYTES
        found = self._best_cached_block(rounded, small)
        if found is None:
            segment = self._new_segment(size, rounded, small)
            found = (segment, 0)
        segment, index = found
        return self._hand_out(segment, index, size, rounded)

    def _best_cached_block(self, rounded: int, small: bool) -> tuple[_Segment, int] | None:
        """(segment, block index) of the smallest free cached block of the pool that fits, lowest address on ties."""
        best, best_key = None, None
        for segment in self._segments.values():
            if segment.small != small:
                continue
            for i, (offset, bsize, handle, _) in enumerate(segment.blocks):
                if handle is None and bsize >= rounded and (best_key is None or (bsize, offset) < best_key):
                    best, best_key = (segment, i), (bsize, offset)
        return best

    def _new_segment(self, size: int, rounded: int, small: bool) -> _Segment:
        segment_bytes = caching_segment_bytes(rounded)
        if self._reserved + segment_bytes > self.capacity_bytes:
            self.empty_cache()              # give back cached segments nobody uses, then retry once
        if self._reserved + segment_bytes > self.capacity_bytes:
            s = self.stats()
            raise out_of_memory(size, s["largest_free_block"], s["free_bytes"],
                              f"a new {segment_bytes}-byte segment does not fit: {self._reserved} of "
                              f"{self.capacity_bytes} bytes reserved, none of it in an entirely free segment")
        segment = _Segment(self._next_segment, self._next_address, segment_bytes, small)
        self._segments[segment.id] = segment
        self._next_segment += 1
        self._next_address += segment_bytes
        self._reserved += segment_bytes
        self._peak_reserved = max(self._peak_reserved, self._reserved)
        self.n_segment_allocs += 1
        return segment

    def _hand_out(self, segment: _Segment, index: int, size: int, rounded: int) -> int:
        offset, bsize, _, _ = segment.blocks[index]
        remainder = bsize - rounded
        # Split only when the tail is worth keeping as a cached block of its own.
        worth_keeping = remainder >= MIN_BLOCK_BYTES if segment.small else remainder > SMALL_REQUEST_BYTES
        if worth_keeping:
            segment.blocks[index:index + 1] = [[offset, rounded, None, 0], [offset + rounded, remainder, None, 0]]
            bsize = rounded
        handle = self._next_handle
        self._next_handle += 1
        segment.blocks[index] = [offset, bsize, handle, size]
        self._where[handle] = segment
        self._requested += size
        self._in_use += bsize
        self._high_water = max(self._high_water, self._in_use)
        return handle

    # -- free --
    def free(self, handle: int) -> None:
        """Cache the handle's block again (merged with free neighbours); the segment stays reserved."""
        if isinstance(handle, bool) or not isinstance(handle, numbers.Integral) or handle not in self._where:
            state = "already freed" if isinstance(handle, int) and 0 < handle < self._next_handle else "never allocated"
            raise InvalidHandle(f"invalid handle {handle!r}: {state} (live handles: {len(self._where)})")
        segment = self._where.pop(handle)
        blocks = segment.blocks
        i = next(k for k, b in enumerate(blocks) if b[2] == handle)
        self._requested -= blocks[i][3]
        self._in_use -= blocks[i][1]
        blocks[i][2:] = [None, 0]
        if i + 1 < len(blocks) and blocks[i + 1][2] is None:     # merge the free block on the right
            blocks[i][1] += blocks.pop(i + 1)[1]
        if i > 0 and blocks[i - 1][2] is None:                    # merge into the free block on the left
            blocks[i - 1][1] += blocks.pop(i)[1]

    def empty_cache(self) -> int:
        """Return every entirely free segment to the device (torch.cuda.empty_cache): bytes released."""
        released = 0
        for sid in [sid for sid, seg in self._segments.items() if seg.is_empty()]:
            released += self._segments.pop(sid).size
            self.n_segment_frees += 1
        self._reserved -= released
        return released

    # -- looking at it --
    def address(self, handle: int) -> int:
        """The simulated device address of the handle's block (bytes)."""
        if handle not in self._where:
            raise InvalidHandle(f"invalid handle {handle!r}: not live")
        return next(b[0] for b in self._where[handle].blocks if b[2] == handle)

    def segments(self) -> list[dict]:
        """One row per reserved segment: id, pool, base address, size, bytes in use, blocks."""
        return [{"segment": s.id, "pool": "small" if s.small else "large", "base": s.base, "size": s.size,
                 "in_use_bytes": sum(b[1] for b in s.blocks if b[2] is not None), "n_blocks": len(s.blocks)}
                for s in sorted(self._segments.values(), key=lambda s: s.base)]

    def blocks(self) -> list[Block]:
        """Every block of every reserved segment, sorted by (simulated) address."""
        out = [Block(o, s, h, seg.id, r) for seg in self._segments.values() for o, s, h, r in seg.blocks]
        return sorted(out, key=lambda b: b.offset)

    def stats(self) -> dict:
        """Reserved vs allocated bytes, segment counts and fragmentation (arena_bytes = reserved)."""
        free_sizes = [b[1] for seg in self._segments.values() for b in seg.blocks if b[2] is None]
        free, largest = sum(free_sizes), max(free_sizes, default=0)
        internal, external = _fragmentation(self._requested, self._in_use, largest, free)
        return {"arena_bytes": self._reserved, "reserved_bytes": self._reserved,
                "allocated_bytes": self._requested, "in_use_bytes": self._in_use, "free_bytes": free,
                "overhead_bytes": self._in_use - self._requested, "high_water_bytes": self._high_water,
                "peak_reserved_bytes": self._peak_reserved, "largest_free_block": largest,
                "n_live": len(self._where), "n_segments": len(self._segments),
                "n_segment_allocs": self.n_segment_allocs, "n_segment_frees": self.n_segment_frees,
                "internal_fragmentation": internal, "external_fragmentation": external,
                "capacity_bytes": self.capacity_bytes}


# ---------------------------------------------------------------------------------------------
# 4. Compaction behind a handle table
# ---------------------------------------------------------------------------------------------

class CompactingArena(FirstFitAllocator):
    """First fit plus `compact()`: live blocks slide to the bottom of the arena, closing every hole.

    This works only because callers hold handles, never addresses: the handle table is the one place
    that knows where a block lives, so moving a block means copying its bytes and updating one entry.
    (Python's and PyTorch's allocators hand out raw pointers, which is why they cannot compact.)
    With auto_compact=True, an alloc that finds no hole big enough compacts first when the free bytes
    add up to enough, so only a truly full arena runs out; the price is the bytes copied (`bytes_moved`).
    """

    def __init__(self, arena_bytes: int, alignment: int = 8, auto_compact: bool = False):
        super().__init__(arena_bytes, alignment=alignment, policy="first")
        if not isinstance(auto_compact, bool):
            raise TypeError(f"auto_compact must be True or False, got {auto_compact!r}")
        self.auto_compact = auto_compact
        self.bytes_moved = 0      # over all compactions so far
        self.n_compactions = 0

    def alloc(self, size: int) -> int:
        """First fit; with auto_compact, compact and retry when the holes together could hold the request."""
        try:
            return super().alloc(size)
        except OutOfMemory as e:
            rounded = _round_up(size, self.alignment)
            if not self.auto_compact or (e.free_bytes or 0) < rounded:
                raise
        self.compact()
        return super().alloc(size)

    def stats(self) -> dict:
        """FirstFitAllocator's stats plus bytes_moved and n_compactions so far."""
        return {**super().stats(), "bytes_moved": self.bytes_moved, "n_compactions": self.n_compactions}

    def compact(self) -> int:
        """Slide live blocks toward offset 0 in offset order, keeping contents: bytes moved."""
        moved, cursor = 0, 0
        for handle, (offset, size, requested) in sorted(self._live.items(), key=lambda kv: kv[1][0]):
            if offset != cursor:
                if self._memory is not None:   # the copy a real compactor pays for (memmove: ranges may overlap)
                    self._memory[cursor:cursor + size] = self._memory[offset:offset + size]
                self._live[handle] = (cursor, size, requested)
                moved += size
            cursor += size
        # Everything above the last live block is now one hole.
        self._holes = [(cursor, self.arena_bytes - cursor)] if cursor < self.arena_bytes else []
        self.bytes_moved += moved
        self.n_compactions += 1
        return moved


# ---------------------------------------------------------------------------------------------
# Replaying a real trace
# ---------------------------------------------------------------------------------------------

def replay(allocator, events: Iterable, progress: bool = False, record_blocks: bool = False) -> list[dict]:
    """Drive `allocator` with TensorEvent records (size_bytes, born, died): one row of stats per op step.

    At each step the tensors that died there are freed first, then the ones born there are allocated
    (a TensorEvent is live for the steps [born, died); died=None lives to the end and is never freed).
    A row is kept only for steps where something happened: step, the allocator's stats() (with
    reserved_bytes = arena_bytes for a single arena) and, with record_blocks, its memory map (`blocks`). An allocation that fails raises OutOfMemory.
    """
    from tqdm.auto import tqdm

    events = list(events)
    for e in events:
        _check_size(e.size_bytes, f"size_bytes of event {getattr(e, 'id', '?')}")
        if e.died is not None and e.died <= e.born:
            raise ValueError(f"event {getattr(e, 'id', '?')} dies at step {e.died}, not after its birth {e.born}")
    # (step, 0 = free before 1 = alloc, event index): frees at a step make room for that step's allocations.
    actions = [(e.born, 1, k) for k, e in enumerate(events)]
    actions += [(e.died, 0, k) for k, e in enumerate(events) if e.died is not None]
    actions.sort()
    handles: dict[int, int] = {}
    rows: list[dict] = []
    start = 0
    with tqdm(total=len(actions), desc=f"replay {type(allocator).__name__}", disable=not progress) as bar:
        while start < len(actions):
            step = actions[start][0]
            end = start
            while end < len(actions) and actions[end][0] == step:
                _, kind, k = actions[end]
                if kind == 0:
                    allocator.free(handles.pop(k))
                else:
                    handles[k] = allocator.alloc(events[k].size_bytes)
                end += 1
            row = {"step": step, **allocator.stats()}
            row.setdefault("reserved_bytes", row["arena_bytes"])   # a single arena reserves all of itself
            if record_blocks:
                row["blocks"] = allocator.blocks()
            rows.append(row)
            bar.update(end - start)
            start = end
    return rows


def summarize_replay(rows: list[dict]) -> dict:
    """The numbers that compare allocators on one trace (bytes and fractions), from replay()'s rows.

    reserved_bytes is what the allocator had to hold: the caching allocator's peak reserved segments,
    a first-fit arena's high-water offset (the smallest arena that replay fits in), else arena_bytes.
    Fragmentation is read at the step of peak allocated bytes, where it decides whether the trace fits.
    """
    if not rows:
        raise ValueError("rows is empty: replay a trace with at least one event first")
    peak = max(rows, key=lambda r: r["allocated_bytes"])
    last = rows[-1]
    reserved = last.get("peak_reserved_bytes", last.get("high_water_offset", last["arena_bytes"]))
    out = {"peak_allocated_bytes": peak["allocated_bytes"], "peak_in_use_bytes": max(r["in_use_bytes"] for r in rows),
           "reserved_bytes": reserved, "reserved_over_peak": reserved / peak["allocated_bytes"],
           "internal_fragmentation_at_peak": peak["internal_fragmentation"],
           "external_fragmentation_at_peak": peak["external_fragmentation"],
           "mean_external_fragmentation": sum(r["external_fragmentation"] for r in rows) / len(rows),
           "n_segment_allocs": last.get("n_segment_allocs", 1), "n_steps": len(rows)}
    return out
