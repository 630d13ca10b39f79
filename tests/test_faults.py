"""labkit.faults: page faults of fresh processes, with and without keeping freed memory (glibc Linux only).

Counts, not times: every comparison is a ratio of fault counts measured in this run.
"""
from __future__ import annotations

import platform
import sys

import pytest

from labkit import arena, faults

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="page-fault behaviour measured here is glibc malloc's on Linux")


@pytest.fixture(scope="module")
def steps(baby):
    """One fresh process per setting, 20 measured steps after 6 warm-up steps each (lab 08's setting), shared by the
    tests below (baby: the zoo model is built first — the children load it)."""
    return {"default": faults.page_faults_per_step(False, steps=20, warmup_steps=6),
            "keep": faults.page_faults_per_step(True, steps=20, warmup_steps=6),
            "trim only": faults.page_faults_per_step(False, steps=20, warmup_steps=6,
                                                     mallopt={"trim_threshold": 2 ** 30})}


def test_keeping_freed_memory_cuts_the_faults_of_a_training_step(steps):
    default, keep = steps["default"], steps["keep"]
    assert keep["mallopt_applied"] and not default["mallopt_applied"]
    assert len(default["faults"]) == len(keep["faults"]) == 20
    assert all(isinstance(f, int) and f >= 0 for f in default["faults"] + keep["faults"])
    assert default["mean"] > 100                      # hundreds of pages handed back and faulted in again per step
    # The ratio is a measurement, not a constant: 3.8x-44.6x between quiet runs, 2.5x in a CI run beside other tests
    # (bursts of a few hundred faults in 1-2 steps). The test asserts the direction and prints the ratio.
    assert keep["mean"] < default["mean"]
    print(f"faults per step, mean: default {default['mean']:.1f}, keep {keep['mean']:.1f} "
          f"({default['mean'] / max(keep['mean'], 1e-9):.1f}x fewer)")
    assert default["min"] <= default["median"] <= default["max"]
    assert keep["peak_rss_mb"] < 2 * default["peak_rss_mb"]    # keeping costs no more than the step needed anyway


def test_a_trim_threshold_alone_turns_off_glibcs_adaptive_mmap_threshold(steps, baby):
    """Setting one threshold pins the mmap threshold at 128 KiB: every tensor of 128 KiB or more is then mapped
    and unmapped each step, so a step faults in about the pages of all those tensors in the traced step."""
    trim = steps["trim only"]
    assert trim["mallopt_applied"] and trim["mean"] > 5 * steps["default"]["mean"]
    big_pages = sum(-(-e.size_bytes // faults.PAGE_BYTES) for e in arena.training_step_trace(baby)
                    if e.size_bytes >= 128 * 1024)
    assert 0.8 * big_pages <= trim["median"] <= 1.05 * big_pages


def test_a_big_buffer_faults_every_round_unless_freed_memory_is_kept():
    demo = faults.malloc_fault_demo(size_mb=48, repeats=5)
    pages = demo["pages"]
    assert pages == 48 * 2 ** 20 // faults.PAGE_BYTES
    without, kept = demo["without"]["faults"], demo["with"]["faults"]
    assert all(f >= 0.95 * pages for f in without)          # above 32 MiB glibc maps and unmaps every round
    assert kept[0] >= 0.95 * pages                          # the first touch faults whatever the setting
    assert all(f < 0.01 * pages for f in kept[1:])          # then the kept block is reused
    assert demo["with"]["mallopt_applied"] and not demo["without"]["mallopt_applied"]


def test_below_32_mib_glibc_learns_to_keep_the_block_after_the_first_rounds():
    demo = faults.malloc_fault_demo(size_mb=4, repeats=5)
    without = demo["without"]["faults"]
    assert without[0] >= 0.95 * demo["pages"]
    assert all(f < 0.01 * demo["pages"] for f in without[2:])


def test_fault_summary():
    assert faults.fault_summary([3, 1, 2]) == {"median": 2, "mean": 2.0, "min": 1, "max": 3, "iqr": 2.0}
    assert faults.fault_summary([5])["iqr"] == 0
    with pytest.raises(ValueError, match="counts is empty"):
        faults.fault_summary([])


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(keep_freed="yes"), TypeError, "keep_freed"),
    (dict(keep_freed=False, steps=0), ValueError, "steps"),
    (dict(keep_freed=False, batch_size=1.5), ValueError, "batch_size"),
    (dict(keep_freed=False, mallopt={"arena_max": 1}), ValueError, "arena_max"),
    (dict(keep_freed=False, mallopt={"trim_threshold": -1}), ValueError, "trim_threshold"),
    (dict(keep_freed=True, mallopt={"trim_threshold": 1}), ValueError, "not both"),
])
def test_bad_arguments_are_named_before_any_process_starts(kwargs, error, match):
    with pytest.raises(error, match=match):
        faults.page_faults_per_step(**kwargs)


@pytest.mark.parametrize("size_mb", [0, -1, 2000, True, "8"])
def test_malloc_demo_size_is_checked(size_mb):
    with pytest.raises(ValueError, match="size_mb"):
        faults.malloc_fault_demo(size_mb=size_mb)


def test_a_failing_child_process_is_reported_with_its_error(baby):   # baby: the zoo model is built first
    with pytest.raises(RuntimeError, match="seq_len=999"):
        faults.page_faults_per_step(False, steps=1, warmup_steps=0, seq_len=999)
