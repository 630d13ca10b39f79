"""`python -m labkit.bench sparse` and labkit.sparse's speed functions: they run and return well-formed rows.

A benchmark, not a timed assertion: nothing here says which is faster, only that the measurement is complete,
consistent and printed (tiny sizes, a few repeats)."""
from __future__ import annotations

import json

import pytest
import torch

from labkit import bench, sparse

TIMES = ("dense_ms", "dense_ms_q1", "dense_ms_q3", "sparse_ms", "sparse_ms_q1", "sparse_ms_q3")


def test_matmul_speed_rows_are_well_formed():
    before = torch.get_num_threads()
    rows = sparse.matmul_speed([0.1, 1.0], shape=(16, 24), batch=3, repeats=3, threads=1)
    assert torch.get_num_threads() == before                       # the thread setting is restored
    assert [r["density"] for r in rows] == [0.1, 1.0]
    for r in rows:
        assert set(r) == {"density", "nnz", "flop_ratio", *TIMES, "ratio", "ratio_q1", "ratio_q3"}
        assert all(r[k] > 0 for k in TIMES)
        assert r["dense_ms_q1"] <= r["dense_ms"] <= r["dense_ms_q3"]
        assert r["sparse_ms_q1"] <= r["sparse_ms"] <= r["sparse_ms_q3"]
        assert 0 < r["ratio_q1"] <= r["ratio"] <= r["ratio_q3"]
        assert r["flop_ratio"] == round(r["nnz"] / (16 * 24), 4)
    assert rows[1]["nnz"] == 16 * 24


def test_sparse_faster_below_needs_three_of_four_repeats():
    def row(d, q3):
        return {"density": d, "ratio": q3 - 0.1, "ratio_q3": q3}
    assert sparse.sparse_faster_below([row(0.5, 1.2), row(0.1, 0.5), row(0.2, 0.9), row(0.3, 1.01)]) == 0.2
    assert sparse.sparse_faster_below([row(0.1, 1.0)]) is None


def test_semi_structured_speed_reports_what_torch_does_on_cpu():
    out = sparse.semi_structured_speed(shape=(8, 16), batch=2, repeats=3)
    assert out["density"] == 0.5
    assert 0 < out["ratio_q1"] <= out["ratio"] <= out["ratio_q3"]
    assert 0 < out["csr_ratio_q1"] <= out["csr_ratio"] <= out["csr_ratio_q3"]
    assert out["masked_2_4_ms"] > 0 and out["csr_2_4_ms"] > 0 and out["dense_ms"] > 0
    assert isinstance(out["to_sparse_semi_structured"], str) and out["to_sparse_semi_structured"]
    if not torch.cuda.is_available():
        assert "CUDA" in out["to_sparse_semi_structured"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(densities=[0.0]), "density"), (dict(densities=[1.5]), "density"), (dict(shape=(0, 4)), "n_rows"),
    (dict(batch=0), "batch"), (dict(repeats=0), "repeats"), (dict(threads=0), "threads")])
def test_matmul_speed_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sparse.matmul_speed(**{"shape": (4, 4), "repeats": 1, **kwargs})


def test_bench_sparse_cli_prints_a_table_and_strict_json(capsys):
    out = bench.main(["sparse", "--shape", "16x32", "--batch", "2", "--repeats", "3"])
    printed = capsys.readouterr().out
    assert json.loads(printed.strip().splitlines()[-1]) == out
    assert out["shape"] == [16, 32] and out["batch"] == 2 and out["threads"] == 1
    assert [r["density"] for r in out["rows"]] == [0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]
    assert "ratio = torch.sparse CSR time / dense time" in printed and "to_sparse_semi_structured" in printed
    below = out["sparse_faster_below_density"]
    assert below is None or below in [r["density"] for r in out["rows"]]


@pytest.mark.parametrize("args, option", [(["sparse", "--shape", "16x30"], "--shape"),
                                          (["sparse", "--shape", "0x8"], "--shape"),
                                          (["sparse", "--repeats", "0"], "--repeats"),
                                          (["train", "--shape", "16x32"], "--shape")])
def test_bench_sparse_cli_bad_arguments_exit_2(capsys, args, option):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(args)
    assert exit_info.value.code == 2
    assert option in capsys.readouterr().err
