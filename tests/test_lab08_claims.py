"""Lab 08's committed outputs tell the truth about the run that printed them.

Every sentence of the lab that compares numbers or gives a verdict is printed from them; these tests read the
committed outputs and check each verdict against the numbers printed beside it, byte counts against their formulas,
and the sentences the lab's text states without printing (the device asked no more after step 1, greedy by size at
the bound) against the printed numbers. Nothing is compared with values of this machine's data cache: a fresh
clone computes every number again.
"""
import math
import re

import pytest
from lab_outputs import NUMBER, lab_notebook, printed_text
from lab_outputs import to_float as _float

from labkit import paged_kv

PAGE_BYTES = 4096
MiB, GiB = 2 ** 20, 2 ** 30


@pytest.fixture(scope="module")
def nb():
    return lab_notebook("LAB08", "08_memory_pools.ipynb")


@pytest.fixture(scope="module")
def text(nb) -> str:
    return printed_text(nb, "lab 08")


@pytest.fixture(scope="module")
def source(nb) -> str:
    return "\n".join(c.source for c in nb.cells)


def _one(pattern: str, text: str, what: str) -> re.Match:
    found = list(re.finditer(pattern, text))
    assert len(found) == 1, f"lab 08 should print {what} once (found {len(found)})"
    return found[0]


def _bound(text: str) -> int:
    return int(_float(_one(rf"at most ({NUMBER}) bytes \(", text, "the peak of live bytes")[1]))


def test_page_fault_verdict_follows_from_the_printed_means(text):
    stats = {}
    for name in ("glibc's defaults", r"keep_freed_memory_in_process\(\)"):
        m = _one(rf"{name} +minor page faults per step: median ({NUMBER}) \(interquartile range ({NUMBER})\), "
                 rf"mean ({NUMBER}), min ({NUMBER}), max ({NUMBER}) over (\d+) steps \((\d+) without a fault\)", text,
                 f"the faults of {name}")
        median, _, mean, low, high, n, zero = (_float(g) for g in m.groups())
        assert low <= median <= high and low <= mean <= high and n >= 8
        assert zero <= n and (zero > 0) == (low == 0) and (zero == n) == (high == 0)
        stats[name[:4]] = mean
    default, keep = stats["glib"], stats["keep"]
    m = _one(rf"-> (keeping freed memory .+?) \(mean ({NUMBER}) -> ({NUMBER}) faults per step\); with the defaults a "
             rf"step maps ({NUMBER}) MiB", text, "the page-fault verdict")
    verdict = m[1]
    assert (_float(m[2]), _float(m[3])) == (default, keep)
    assert math.isclose(_float(m[4]), default * PAGE_BYTES / MiB, abs_tol=0.006)
    if keep >= default:
        assert "did NOT cut" in verdict
    elif keep == 0:
        assert verdict == "keeping freed memory removed every page fault of the measured steps"
    else:
        ratio = _float(re.search(rf"cut the page faults per step ({NUMBER})× on average", verdict)[1])
        # the means are printed to 0.1 and the ratio to 0.1: it must lie in what those roundings allow
        low, high = (default - 0.05) / (keep + 0.05), (default + 0.05) / max(keep - 0.05, 1e-9)
        assert low - 0.05 <= ratio <= high + 0.05, (ratio, low, high)


def test_malloc_demo_sentence_reads_its_own_rounds(text):
    m = _one(rf"one (\d+) MiB buffer \(({NUMBER}) pages\), faults per round:\n  without keeping: \[([\d, ]+)\]\n"
             rf"  with    keeping: \[([\d, ]+)\]", text, "the malloc demo's rounds")
    size_mb, pages = int(m[1]), int(_float(m[2]))
    assert pages == size_mb * MiB // PAGE_BYTES
    without = [int(x) for x in m[3].split(",")]
    kept = [int(x) for x in m[4].split(",")]
    v = _one(rf"every later round: with the defaults at least ({NUMBER}) faults for the buffer's ({NUMBER}) pages "
             rf"\((all of it faulted in again|({NUMBER})% of its pages: fewer faults than pages, as when the kernel "
             rf"maps 2 MiB huge pages)\), with keeping at most ({NUMBER}); transparent huge pages on this machine: "
             rf"(\w[\w ]*)", text, "the malloc demo's verdict")
    again = int(_float(v[1]))
    assert again == min(without[1:]) and int(_float(v[5])) == max(kept[1:]) and int(_float(v[2])) == pages
    if v[3] == "all of it faulted in again":       # must be true of every later round
        assert again >= pages
    else:                                          # the share is the printed count over the pages
        assert again < pages and math.isclose(_float(v[4]), 100 * again / pages, abs_tol=0.6)


def test_trace_totals_and_their_ratio(text):
    m = _one(rf"their sizes add up to ({NUMBER}) bytes", text, "the no-reuse bytes")
    no_reuse, bound = int(_float(m[1])), _bound(text)
    r = _one(rf"the lower bound of any arena, ({NUMBER})× below no reuse", text, "the no-reuse ratio")
    assert math.isclose(_float(r[1]), no_reuse / bound, abs_tol=0.006)
    assert bound < no_reuse


def test_fixed_block_pool_bytes_and_fragmentation(text):
    m = _one(rf"(\d+) blocks of ({NUMBER}) bytes \(the largest tensor\) = ({NUMBER}) bytes: ({NUMBER})× the peak",
             text, "the fixed-block pool")
    n, block, arena_bytes, ratio = int(m[1]), int(_float(m[2])), int(_float(m[3])), _float(m[4])
    assert n * block == arena_bytes
    assert math.isclose(ratio, arena_bytes / _bound(text), abs_tol=0.006)
    f = _one(rf"hands out ({NUMBER}) bytes in blocks for ({NUMBER}) bytes asked for: internal fragmentation "
             rf"({NUMBER})%", text, "the pool's internal fragmentation")
    handed, asked = _float(f[1]), _float(f[2])
    assert math.isclose(_float(f[3]), 100 * (1 - asked / handed), abs_tol=0.06)
    assert asked < handed / 2, "the lab's text says the pool wastes most of its arena on this trace"


def test_first_fit_runs_out_at_the_bound_and_needs_more(text):
    """The text says first fit comes close to the bound but does not reach it: the printed numbers must agree."""
    m = _one(rf"in an arena of exactly the lower bound \(({NUMBER}) bytes\): out of memory: requested (\d+) bytes, "
             rf"the largest free block is (\d+) bytes \((\d+) bytes free in total\)", text, "first fit's out of memory")
    requested, largest, free = int(m[2]), int(m[3]), int(m[4])
    assert largest < requested <= free, "the message should show the bytes are there but not in one piece"
    n = _one(rf"first fit \((?:your|labkit's reference) functions\) needed an arena of ({NUMBER}) bytes: "
             rf"({NUMBER})× the lower bound", text, "first fit's arena")
    high, ratio = int(_float(n[1])), _float(n[2])
    assert high > _float(m[1]) and math.isclose(ratio, high / _bound(text), abs_tol=6e-5)
    assert "the two memory maps are identical at every op step" in text
    assert f"pools.FirstFitAllocator on the same trace reaches {high:,} bytes" in text


def test_caching_allocator_reuses_its_segments(text):
    m = _one(r"segments asked from the device \(cudaMalloc calls\): (\d+) in step 1, (\d+) in step 2, (\d+) in step 3",
             text, "the segment counts")
    assert int(m[1]) > 0 and int(m[2]) == 0 and int(m[3]) == 0     # the lab's text: "never asked again"
    p = _one(rf"peak allocated ({NUMBER}) bytes \((equal to|NOT equal to) the lower bound\); peak reserved ({NUMBER}) "
             rf"bytes = ({NUMBER})× the peak allocated", text, "reserved vs allocated")
    allocated, reserved = _float(p[1]), _float(p[3])
    assert (p[2] == "equal to") == (allocated == _bound(text))
    seg = _one(rf"after the third step (no tensor is alive|({NUMBER}) bytes are in use), yet all (\d+) segments "
               rf"\(({NUMBER}) bytes\) stay reserved", text, "the segments after the last step")
    assert _float(seg[4]) == reserved, "segments are never given back: the reserved bytes at the end are the peak"
    assert math.isclose(_float(p[4]), reserved / allocated, abs_tol=0.006) and reserved > allocated
    assert reserved % (2 * MiB) == 0, "segments are multiples of 2 MiB"


def test_compaction_keeps_contents_and_closes_every_hole(text):
    m = _one(rf"op step (\d+): (\d+) live blocks, ({NUMBER}) bytes in use\ncompact\(\) moved (\d+) blocks, ({NUMBER}) "
             rf"bytes \(({NUMBER})% of the bytes in use\)", text, "the compaction")
    in_use, moved = _float(m[3]), _float(m[5])
    assert int(m[4]) <= int(m[2]) and moved <= in_use
    assert math.isclose(_float(m[6]), 100 * moved / in_use, abs_tol=0.6)
    h = _one(rf"holes between live blocks: (\d+) holes of ({NUMBER}) bytes -> (\d+) holes of ({NUMBER}) bytes",
             text, "the holes before and after")
    assert int(h[3]) == 0 and _float(h[4]) == 0
    f = _one(rf"the largest free block ({NUMBER}) -> ({NUMBER}) bytes \(the arena is ({NUMBER}) bytes\); external "
             rf"fragmentation \(1 − largest free block / free bytes, whole arena\) ({NUMBER})% -> ({NUMBER})%", text,
             "the fragmentation before and after")
    largest_after, arena_bytes = _float(f[2]), _float(f[3])
    assert largest_after == arena_bytes - in_use and _float(f[5]) == 0      # one hole: everything free, in one piece
    assert _float(f[1]) < largest_after and _float(f[4]) > 0
    assert f"the same {m[2]} handles are valid and all blocks read back unchanged" in text
    a = _one(rf"the compacting arena served all (\d+) tensors in ({NUMBER}) bytes \(the lower bound, 64-byte sizes\) "
             rf"with (\d+) compaction\(s\) moving ({NUMBER}) bytes", text, "the compacting arena in the bound")
    first_fit_tight = re.search(rf"exactly the lower bound \(({NUMBER}) bytes\)", text)
    assert _float(a[2]) == _float(first_fit_tight[1]) and int(a[3]) >= 1 and _float(a[4]) > 0


def test_arena_must_hold_verdict_follows_from_its_ratio(text):
    m = _one(rf"MUST HOLD — greedy by size within 1\.05× the lower bound: ({NUMBER}) / ({NUMBER}) bytes = "
             rf"({NUMBER})× -> (HOLDS|DOES NOT HOLD)", text, "the arena planner's verdict")
    greedy, bound, ratio, verdict = _float(m[1]), _float(m[2]), _float(m[3]), m[4]
    assert bound == _bound(text)
    assert math.isclose(ratio, greedy / bound, abs_tol=6e-5)
    assert verdict == ("HOLDS" if greedy / bound <= 1.05 else "DOES NOT HOLD")
    assert greedy / bound <= 1.0001, "the lab's text says greedy by size reaches the bound here"
    p = _one(rf"first fit by time uses nothing from the future .+?: (the same arena as|({NUMBER})× the arena of) online "
             rf"first fit \(({NUMBER}) vs ({NUMBER}) bytes\); greedy by size needs every size and lifetime in advance "
             rf"and saves ({NUMBER}) MiB over it", text, "the planners against online first fit")
    by_time, online = _float(p[3]), _float(p[4])
    assert (p[1] == "the same arena as") == (by_time == online)
    if p[2]:
        assert math.isclose(_float(p[2]), by_time / online, abs_tol=6e-5)
    assert math.isclose(_float(p[5]), (online - greedy) / MiB, abs_tol=0.006) and _float(p[5]) > 0
    first_fit = _one(rf"first fit \((?:your|labkit's reference) functions\) needed an arena of ({NUMBER}) bytes", text,
                     "first fit's arena")
    assert _float(first_fit[1]) == online
    r = _one(rf"greedy by size needs ({NUMBER})% of the no-reuse bytes \(({NUMBER})× less\)", text, "the reduction")
    no_reuse = _float(_one(rf"their sizes add up to ({NUMBER}) bytes", text, "the no-reuse bytes")[1])
    assert math.isclose(_float(r[1]), 100 * greedy / no_reuse, abs_tol=0.06)
    assert math.isclose(_float(r[2]), no_reuse / greedy, abs_tol=0.006)


def test_learners_lower_bound_is_compared_truthfully(text):
    m = _one(rf"(?:your|labkit's reference) arena_lower_bound of the training step: ({NUMBER}) bytes; "
             rf"arena\.peak_live_bytes: ({NUMBER}) bytes — (equal|DIFFERENT)", text, "the lower bound comparison")
    assert (m[3] == "equal") == (_float(m[1]) == _float(m[2]))


def test_paged_generation_gives_the_same_tokens(text):
    for temperature in ("0.0", "0.8"):
        assert f"temperature {temperature}: the same tokens as GPT.generate with its contiguous cache" in text
    assert "DIFFERENT tokens" not in text


def test_paged_cache_accounting_and_the_block_count(text):
    m = _one(rf"(\d+) blocks of ({NUMBER}) bytes = ({NUMBER}) bytes for (\d+) sequence tokens stored in (\d+) slots "
             rf"\((\d+) copies on write\); empty slots (\d+) of (\d+) \(({NUMBER})%\)", text, "the paged cache's stats")
    blocks, per_block, total = int(m[1]), int(_float(m[2])), int(_float(m[3]))
    stored, reserved, empty = int(m[5]), int(m[8]), int(m[7])
    assert blocks * per_block == total and reserved == 16 * blocks and empty == reserved - stored
    assert math.isclose(_float(m[9]), 100 * empty / reserved, abs_tol=0.06)
    k = _one(r"(?:your|labkit's reference) kv_blocks_needed\((\d+), (\d+), (\d+), (\d+)\) = (\d+); the paged cache "
             r"above holds (\d+) blocks; without sharing (\d+)", text, "the block count against the cache")
    p, o, b, n, counted, held, alone = (int(g) for g in k.groups())
    assert counted == held == blocks == paged_kv.kv_blocks_needed(p, o, b, n)
    assert alone == n * math.ceil((p + o) / b)
    tables = re.findall(r"  sequence (\d+): \[([\d, ]+)\]", text)
    assert len(tables) == n, "one block table per sequence"
    shared = p // b                   # the prompt's full blocks: the same physical blocks in every table (the text)
    firsts = {tuple(int(x) for x in t.split(",")[:shared]) for _, t in tables}
    assert len(firsts) == 1 and all(len(t.split(",")) == math.ceil((p + o) / b) for _, t in tables)
    assert int(m[6]) == n - 1, "each sequence but the last writer copies the shared partial block"
    c = _one(rf"reserves the model's whole context \((\d+) tokens\) for each: ({NUMBER}) bytes, ({NUMBER})× the paged",
             text, "the contiguous cache's bytes")
    assert math.isclose(_float(c[3]), _float(c[2]) / total, abs_tol=0.006)


def test_serving_verdicts_follow_from_the_printed_waste(text, source):
    m = _one(rf"MUST HOLD on the chat trace — paged waste at most 4% of reserved KV: ({NUMBER})% -> (HOLDS|DOES NOT HOLD)",
             text, "the paged waste verdict")
    assert m[2] == ("HOLDS" if _float(m[1]) <= 4.0 else "DOES NOT HOLD")
    c = _one(rf"MUST HOLD on the chat trace — contiguous waste at least 50%: ({NUMBER})% -> (HOLDS|DOES NOT HOLD)",
             text, "the contiguous waste verdict")
    assert c[2] == ("HOLDS" if _float(c[1]) >= 50.0 else "DOES NOT HOLD")
    v = _one(rf"this simulation: ({NUMBER})% and ({NUMBER})%", text, "the side-by-side with vLLM")
    assert (_float(v[1]), _float(v[2])) == (_float(c[1]), _float(m[1]))
    s = _one(rf"contiguous runs ({NUMBER}) sequences at once, paged ({NUMBER}) \(({NUMBER})×\)", text, "concurrency")
    assert math.isclose(_float(s[3]), _float(s[2]) / _float(s[1]), rel_tol=0.02)
    long = _one(rf"on the 'long' trace \(median prompt ({NUMBER}) of the ({NUMBER}) tokens of a slab\) contiguous "
                rf"wastes ({NUMBER})%: (still at least half|less than half)", text, "the long trace's sentence")
    assert (long[4] == "still at least half") == (_float(long[3]) >= 50.0)
    prompts = sorted(r.prompt_len for r in paged_kv.request_trace(200, seed=0, mix="long"))
    assert _float(long[1]) == (prompts[99] + prompts[100]) / 2 and _float(long[2]) == 2048
    steps = _one(rf"the chat trace is served in ({NUMBER}) vs ({NUMBER}) steps( \(paged's count is pessimistic: after "
                 rf"each of its ({NUMBER}) preemptions the request decodes its tokens again)?", text,
                 "the steps to serve the chat trace")
    if steps[3]:                                   # printed only when paged preempted
        assert _float(steps[4]) > 0
        # the panel's first picture is the same chat trace, 8 GiB, blocks of 16: its text counts the same preemptions
        shown = re.search(r"chat trace, 200 requests \(seed 0\), 8\.00 GiB .+?, blocks of 16 tokens:\n.*\n  paged +waste "
                          r".+? steps, ([\d,]+) preemptions", text)
        if shown:
            assert _float(shown[1]) == _float(steps[4])
    assert "restarted from its prompt" in source and "pessimistic" in source
    assert "Efficient Memory Management for Large Language Model Serving with PagedAttention" in source
    assert "vLLM paper: 60%–80% of the KV memory" in text and "under 4% with paging" in text
    assert "60–80%" not in source and "under 4%\"" not in source   # the summary formats LITERATURE, types nothing


def test_llama_kv_bytes_per_token_is_the_formula(text):
    m = _one(rf"2 \(k, v\) × (\d+) layers × (\d+) heads × (\d+) × (\d+) bytes = ({NUMBER}) bytes per token "
             rf"\(memory\.kv_cache_bytes\); (\d+) GiB hold ({NUMBER}) tokens", text, "the KV bytes per token")
    layers, heads, head_dim, nbytes = (int(m[i]) for i in range(1, 5))
    per_token = int(_float(m[5]))
    assert (layers, heads, head_dim, nbytes) == (32, 32, 128, 2), "LLaMA-2-7B: 32 layers of 32 heads of 128, fp16"
    assert per_token == 2 * layers * heads * head_dim * nbytes == paged_kv.LLAMA2_7B_KV_BYTES_PER_TOKEN
    assert int(_float(m[7])) == int(m[6]) * GiB // per_token


def test_panel_text_is_shown_for_its_settings(text):
    m = _one(r"settings: mix=(\w+), policy=([\w+]+), block_size=(\d+), budget_gib=(\d+)", text, "the panel settings")
    assert f"{m[1]} trace, 200 requests" in text and f"blocks of {m[3]} tokens" in text
    assert re.search(r"← shown", text)
