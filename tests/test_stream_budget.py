"""labkit.stream's two ways of keeping lab 07's cold run short: one process per source for several file sizes (each
from a reset peak RSS), and the forgetting experiment's seeds in two fresh processes (the same rows)."""
import os

import pytest

from labkit import stream


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="Linux: the peak RSS cannot be reset")
def test_one_process_per_source_measures_each_file_from_its_own_peak(monkeypatch):
    calls = []
    original = stream._measure_in_fresh_process

    def counting(source, files, *args, **kwargs):
        calls.append((source, len(files)))
        return original(source, files, *args, **kwargs)

    monkeypatch.setattr(stream, "_measure_in_fresh_process", counting)
    rows = stream.rss_vs_corpus_size(sizes_mb=(40, 4), sources=("in_ram", "memmap"), steps=3, progress=False)
    assert calls == [("in_ram", 2), ("memmap", 2)]                 # one process per source, both files in it
    assert [(r["corpus_mb"], r["source"]) for r in rows] == [(4, "in_ram"), (4, "memmap"), (40, "in_ram"),
                                                             (40, "memmap")]  # size by size, smallest first
    peak = {(r["source"], r["corpus_mb"]): r["peak_rss_mb"] for r in rows}
    # the in-RAM peak grows by about the 36 MiB between the files; the memmap's stays within a few MiB (each peak
    # is its own file's: reset after the previous file's data was freed)
    assert peak["in_ram", 40] - peak["in_ram", 4] > 0.7 * 36, rows
    assert abs(peak["memmap", 40] - peak["memmap", 4]) < 0.15 * 36, rows
    with pytest.raises(ValueError, match="sizes_mb holds 'big'"):
        stream.rss_vs_corpus_size(sizes_mb=(4, "big"), progress=False)


def test_forgetting_seeds_in_two_processes_give_the_same_rows():
    settings = dict(replay_sizes=[0, 8], steps_per_phase=3, replay_per_batch=2, chunk_tokens=4096, shuffle_buffer=16,
                    n_eval=4, threads=1)
    args = list(settings.values())
    one = stream._forgetting_rows([0, 1, 2], *args, progress=False, workers=1)
    two = stream._forgetting_rows([0, 1, 2], *args, progress=False, workers=2)
    timing = "ms_per_step"
    assert [{k: v for k, v in r.items() if k != timing} for r in one] == \
        [{k: v for k, v in r.items() if k != timing} for r in two]
    assert [r["seed"] for r in two] == [0] * 5 + [1] * 5 + [2] * 5       # in the order of the seeds
    with pytest.raises(ValueError, match="workers"):
        stream.forgetting_experiment(workers=0)
