"""python -m labkit.bench quantize: the table's numbers come from the model it is given (a tiny GPT here)."""
from __future__ import annotations

import pytest
import torch

from labkit import bench
from labkit.evaluate import evaluation_set
from labkit.model import GPT, GPTConfig


def test_bench_quantize_reports_every_scheme_gptq_and_torchs_dynamic_int8(corpus, capsys):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=corpus.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=32,
                          activation="relu2", tie_weights=False)).eval()
    out = bench.bench_quantize(model, corpus, schemes=("int8-channel", "int2-g16"), gptq_schemes=("int2-g16",),
                               calibration_sequences=4, repeats=3, progress=False,
                               eval_set=evaluation_set(corpus.val, window=64))
    assert [r["scheme"] for r in out["rtn"]] == ["int8-channel", "int2-g16"]
    assert out["gptq"][0]["scheme"] == "int2-g16-gptq" and out["gptq"][0]["n_layers"] == 4
    assert out["rtn"][0]["total_bytes"] > out["rtn"][1]["total_bytes"] == out["gptq"][0]["total_bytes"]
    assert out["float32"]["float32_bytes"] == 4 * sum(p.numel() for p in model.parameters())
    s = out["saved_int4_g32"]
    assert s["file_bytes"] == s["tensor_bytes"] + s["overhead_bytes"] and s["overhead_bytes"] > 0
    d = out["torch_dynamic_int8"]
    assert d["saved_state_bytes"] < out["float32"]["saved_state_bytes"] and d["time_ratio_vs_float32"] > 0
    bench.print_quantize(out)
    printed = capsys.readouterr().out
    assert "int2-g16-gptq" in printed and "container overhead" in printed and "torch.ao dynamic int8" in printed


@pytest.mark.parametrize("what", ["quantize", "sparse"])
def test_bench_refuses_iters_where_nothing_trains(capsys, what):
    # `sparse` and `quantize` train nothing: an --iters there would be silently ignored, so it is an error
    with pytest.raises(SystemExit) as exit_info:
        bench.main([what, "--iters", "300"])
    assert exit_info.value.code == 2
    assert f"argument --iters: {what!r} trains nothing, so it takes no --iters" in capsys.readouterr().err


def test_bench_iters_still_defaults_to_2000_for_training(monkeypatch):
    seen = []
    monkeypatch.setattr(bench, "bench_ablation", lambda iters, seed: seen.append(iters) or {})
    bench.main(["ablation"])
    bench.main(["ablation", "--iters", "7"])
    assert seen == [2000, 7]
